// Prepended to every kernel file (see src/gpu/shaders.rs).

// One-dimensional kernels run 64 invocations per workgroup over a grid folded into x and y,
// since one grid dimension is limited to 65535 workgroups (src/gpu/kernel.rs `grid`).
const WORKGROUP: u32 = 64u;

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * WORKGROUP;
}

// Gradients either overwrite their buffer (first contributor) or add to it (a tensor used by
// several ops, such as a shared parent kernel). The executor fixes the order, so results are
// deterministic without atomics.
fn accumulated(old: f32, value: f32, accumulate: u32) -> f32 {
    return select(value, old + value, accumulate != 0u);
}
