// Optimizer steps over the whole parameter arena in one dispatch.

struct SgdParams {
    len: u32,
    // 1 on the first step: the momentum buffer starts as the gradient, as in torch.
    first_step: u32,
    nesterov: u32,
    _pad: u32,
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> p: SgdParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;
// The same buffers four elements at a time (for ranges of a multiple of four).
@group(0) @binding(1) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> velocity4: array<vec4<f32>>;

// torch.optim.SGD: d = g + wd * w; v = first ? d : momentum * v + (1 - dampening) * d;
// w -= lr * (nesterov ? d + momentum * v : v). Returns (new w, new v) as columns.
fn sgd_update(w: vec4<f32>, g: vec4<f32>, v_old: vec4<f32>) -> mat2x4<f32> {
    var d = g + p.weight_decay * w;
    var v = v_old;
    if (p.momentum != 0.0) {
        v = d;
        if (p.first_step == 0u) {
            v = p.momentum * v_old + (1.0 - p.dampening) * d;
        }
        d = select(v, d + p.momentum * v, p.nesterov != 0u);
    }
    return mat2x4<f32>(w - p.lr * d, v);
}

// Invocations: every parameter element.
@compute @workgroup_size(64)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    let r = sgd_update(vec4<f32>(param[i]), vec4<f32>(grad[i]), vec4<f32>(velocity[i]));
    param[i] = r[0].x;
    if (p.momentum != 0.0) { velocity[i] = r[1].x; }
}

// Invocations: every four parameter elements (len a multiple of four).
@compute @workgroup_size(64)
fn sgd_step_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    let r = sgd_update(param4[i], grad4[i], velocity4[i]);
    param4[i] = r[0];
    if (p.momentum != 0.0) { velocity4[i] = r[1]; }
}
