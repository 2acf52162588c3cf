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

// torch.optim.SGD: d = g + wd * w; v = first ? d : momentum * v + (1 - dampening) * d;
// w -= lr * (nesterov ? d + momentum * v : v). Invocations: every parameter element.
@compute @workgroup_size(64)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    var d = grad[i] + p.weight_decay * param[i];
    if (p.momentum != 0.0) {
        var v = d;
        if (p.first_step == 0u) {
            v = p.momentum * velocity[i] + (1.0 - p.dampening) * d;
        }
        velocity[i] = v;
        d = select(v, d + p.momentum * v, p.nesterov != 0u);
    }
    param[i] = param[i] - p.lr * d;
}
