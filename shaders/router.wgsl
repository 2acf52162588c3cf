// The router's gate applied to its input: y[n, c, :, :] = x[n, c, :, :] * gate[n, c].
// The gate itself is built from ops of their own (global average pool, linear, batch norm,
// relu, linear, sigmoid).

struct ScaleParams {
    planes: u32,     // batch x channels
    spatial: u32,    // h x w
    // Whether the gradient a kernel stores adds to what its buffer holds (the gate's, in
    // channel_scale_backward_quads_textured)...
    accumulate: u32,
    // ... and whether dx does, in channel_scale_backward_quads_textured.
    accumulate_input: u32,
}

@group(0) @binding(0) var<uniform> p: ScaleParams;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_gate: array<f32>;
@group(0) @binding(3) var<storage, read_write> fwd_y: array<f32>;

// Invocations: every element.
@compute @workgroup_size(64)
fn channel_scale_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.planes * p.spatial) { return; }
    fwd_y[i] = fwd_x[i] * fwd_gate[i / p.spatial];
}

@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_gate: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_dx: array<f32>;

// dx = dy * gate. Invocations: every element.
@compute @workgroup_size(64)
fn channel_scale_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.planes * p.spatial) { return; }
    bi_dx[i] = accumulated(bi_dx[i], bi_dy[i] * bi_gate[i / p.spatial], p.accumulate);
}

@group(0) @binding(1) var<storage, read> bg_x: array<f32>;
@group(0) @binding(2) var<storage, read> bg_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bg_dgate: array<f32>;

// dgate[n, c] = sum_hw dy * x. Invocations: planes.
@compute @workgroup_size(64)
fn channel_scale_backward_gate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    var sum = 0.0;
    let base = plane * p.spatial;
    for (var i = 0u; i < p.spatial; i++) {
        sum += bg_dy[base + i] * bg_x[base + i];
    }
    bg_dgate[plane] = accumulated(bg_dgate[plane], sum, p.accumulate);
}

// The same two kernels four elements at a time, for planes whose pixels come in fours; each
// value is computed as above, and each sum adds its terms in the same order. With the twins
// below, the kernels' source reading is a vec4 load per four elements (software adapters pay a
// lane loop per access, whatever its width) or a texel fetch.
@group(0) @binding(1) var<storage, read> bi_dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bi_dx4: array<vec4<f32>>;

// Invocations: every four elements.
@compute @workgroup_size(64)
fn channel_scale_backward_input_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.planes * p.spatial / 4u) { return; }
    store_input_quad(i, bi_dy4[i]);
}

// dx's vec4 i from dy's (dx read only to add to it).
fn store_input_quad(i: u32, dy: vec4<f32>) {
    let v = dy * bi_gate[4u * i / p.spatial];
    var dx = v;
    if (p.accumulate != 0u) { dx = bi_dx4[i] + v; }
    bi_dx4[i] = dx;
}

@group(0) @binding(1) var<storage, read> bg_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bg_dy4: array<vec4<f32>>;

// Invocations: planes.
@compute @workgroup_size(64)
fn channel_scale_backward_gate_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    var sum = 0.0;
    let base = plane * p.spatial / 4u;
    for (var q = 0u; q < p.spatial / 4u; q++) {
        sum = add_products(sum, bg_dy4[base + q], bg_x4[base + q]);
    }
    bg_dgate[plane] = accumulated(bg_dgate[plane], sum, p.accumulate);
}

// The two reading their sources from textures that hold copies of bindings 1 and 2
// (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`): software adapters gather a texel
// fetch's lanes in registers, where a storage load whose address differs per lane loops over
// the lanes. The same values.
@group(0) @binding(15) var first_texels: texture_2d<f32>;
@group(0) @binding(14) var second_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn channel_scale_backward_input_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(gid, nwg);
    if (i >= p.planes * p.spatial / 4u) { return; }
    store_input_quad(i, buffer_texel(first_texels, i));
}

@compute @workgroup_size(64)
fn channel_scale_backward_gate_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    var sum = 0.0;
    let base = plane * p.spatial / 4u;
    for (var q = 0u; q < p.spatial / 4u; q++) {
        sum = add_products(sum, buffer_texel(second_texels, base + q), buffer_texel(first_texels, base + q));
    }
    bg_dgate[plane] = accumulated(bg_dgate[plane], sum, p.accumulate);
}

// Both gradients in one dispatch where the device reads textures (software adapters, which pay
// tens of microseconds a dispatch): each plane's invocation sums its dgate as
// channel_scale_backward_gate_quads_textured does and stores its dx as
// channel_scale_backward_input_quads_textured does, the same values, with one copy of dy into
// a texture where there were two. Bindings: x (1) and dy (2), read from textures 15 and 14;
// dgate (3); the gate (4); dx (5).
@group(0) @binding(4) var<storage, read> both_gate: array<f32>;
@group(0) @binding(5) var<storage, read_write> both_dx4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn channel_scale_backward_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    let gate = both_gate[plane];
    var sum = 0.0;
    let base = plane * p.spatial / 4u;
    for (var q = base; q < base + p.spatial / 4u; q++) {
        let dy = buffer_texel(second_texels, q);
        sum = add_products(sum, dy, buffer_texel(first_texels, q));
        var dx = dy * gate;
        if (p.accumulate_input != 0u) { dx = both_dx4[q] + dx; }
        both_dx4[q] = dx;
    }
    bg_dgate[plane] = accumulated(bg_dgate[plane], sum, p.accumulate);
}
