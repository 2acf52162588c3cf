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

// sgd_step_quads with param, grad and velocity read from textures that hold copies of
// bindings 1-3 (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`). The same values in the
// same arithmetic: the results are sgd_step_quads' bit for bit.
@group(0) @binding(15) var sgd_param_texels: texture_2d<f32>;
@group(0) @binding(14) var sgd_grad_texels: texture_2d<f32>;
@group(0) @binding(13) var sgd_velocity_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn sgd_step_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    let r = sgd_update(
        buffer_texel(sgd_param_texels, i),
        buffer_texel(sgd_grad_texels, i),
        buffer_texel(sgd_velocity_texels, i),
    );
    param4[i] = r[0];
    if (p.momentum != 0.0) { velocity4[i] = r[1]; }
}

// torch.optim.AdamW, one step over a range (its own parameter struct; the host computes the
// step's bias corrections in double precision, as torch does in Python floats).
struct AdamWParams {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // lr / (1 - beta1^t) and sqrt(1 - beta2^t).
    step_size: f32,
    bias_correction2_sqrt: f32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> pa: AdamWParams;
@group(0) @binding(1) var<storage, read_write> adam_param: array<f32>;
@group(0) @binding(2) var<storage, read> adam_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> adam_exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> adam_exp_avg_sq: array<f32>;

// w *= 1 - lr wd; m = lerp(m, g, 1 - beta1) (torch's lerp: from the nearer end);
// v = beta2 v + (1 - beta2) g^2; w -= step_size m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
// Invocations: every parameter element.
@compute @workgroup_size(64)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= pa.len) { return; }
    let g = adam_grad[i];
    let w = adam_param[i] * (1.0 - pa.lr * pa.weight_decay);
    let m_old = adam_exp_avg[i];
    let weight = 1.0 - pa.beta1;
    let m = select(g - (g - m_old) * (1.0 - weight), m_old + weight * (g - m_old), weight < 0.5);
    let v = adam_exp_avg_sq[i] * pa.beta2 + (1.0 - pa.beta2) * g * g;
    let denom = sqrt(v) / pa.bias_correction2_sqrt + pa.eps;
    adam_exp_avg[i] = m;
    adam_exp_avg_sq[i] = v;
    adam_param[i] = w - pa.step_size * (m / denom);
}
