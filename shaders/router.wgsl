// The router's gate applied to its input: y[n, c, :, :] = x[n, c, :, :] * gate[n, c].
// The gate itself is built from ops of their own (global average pool, linear, batch norm,
// relu, linear, sigmoid).

struct ScaleParams {
    planes: u32,     // batch x channels
    spatial: u32,    // h x w
    accumulate: u32,
    _pad: u32,
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
