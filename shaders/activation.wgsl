// Element-wise activations, residual add and gradient accumulation. The `_quads` kernels take
// four elements per invocation (vec4 loads and stores; lengths that are multiples of four):
// on software adapters elementwise passes are bound by memory accesses, which vec4s halve.

struct ElementwiseParams {
    len: u32,
    // 0: relu, 1: relu6, 2: sigmoid, 3: gelu (src/ops/activation.rs `Activation`).
    kind: u32,
    accumulate: u32,
    // add_forward*: whether the sum goes through `kind` (relu or relu6).
    activated: u32,
}

@group(0) @binding(0) var<uniform> p: ElementwiseParams;

const RELU: u32 = 0u;
const RELU6: u32 = 1u;
const SIGMOID: u32 = 2u;
const GELU: u32 = 3u;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;

@compute @workgroup_size(64)
fn activation_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    let x = fwd_x[i];
    var y: f32;
    switch p.kind {
        case RELU: { y = max(x, 0.0); }
        case RELU6: { y = clamp(x, 0.0, 6.0); }
        case GELU: { y = gelu(x); }
        default: { y = 1.0 / (1.0 + exp_accurate(-x)); }
    }
    fwd_y[i] = y;
}

@group(0) @binding(1) var<storage, read> fwd_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> fwd_y4: array<vec4<f32>>;

// Relu or (any other kind) relu6 of four values, and where their gradients pass (relu: x > 0,
// relu6: 0 < x < 6, as torch defines them at the kinks). The four-wide kernels take these two
// kinds alone.
fn rectified(x: vec4<f32>) -> vec4<f32> {
    if (p.kind == RELU) { return max(x, vec4<f32>(0.0)); }
    return clamp(x, vec4<f32>(0.0), vec4<f32>(6.0));
}

fn passes(x: vec4<f32>) -> vec4<bool> {
    let zero = vec4<f32>(0.0);
    if (p.kind == RELU) { return x > zero; }
    return x > zero & x < vec4<f32>(6.0);
}

// relu and relu6 (sigmoid, on a router's few gates, stays scalar).
@compute @workgroup_size(64)
fn activation_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    fwd_y4[i] = rectified(fwd_x4[i]);
}

@group(0) @binding(1) var<storage, read> bwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_y: array<f32>;
@group(0) @binding(3) var<storage, read> bwd_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> bwd_dx: array<f32>;

// Gradients as torch defines them at the kinks: relu passes where x > 0, relu6 where 0 < x < 6.
@compute @workgroup_size(64)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    let x = bwd_x[i];
    let dy = bwd_dy[i];
    var dx: f32;
    switch p.kind {
        case RELU: { dx = select(0.0, dy, x > 0.0); }
        case RELU6: { dx = select(0.0, dy, x > 0.0 && x < 6.0); }
        case GELU: { dx = gelu_gradient(x, dy); }
        default: { let y = bwd_y[i]; dx = dy * y * (1.0 - y); }
    }
    bwd_dx[i] = accumulated(bwd_dx[i], dx, p.accumulate);
}

@group(0) @binding(1) var<storage, read> bwd_x4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bwd_dy4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> bwd_dx4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn activation_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    var dx = select(vec4<f32>(0.0), bwd_dy4[i], passes(bwd_x4[i]));
    // dx is read only to add to it: software adapters pay for every access.
    if (p.accumulate != 0u) { dx = bwd_dx4[i] + dx; }
    bwd_dx4[i] = dx;
}

// GELU and its gradient, one value at a time: x Phi(x), and dy (Phi(x) + x phi(x)).
fn gelu(x: f32) -> f32 {
    return x * normal_cdf(x);
}

fn gelu_gradient(x: f32, dy: f32) -> f32 {
    return dy * (normal_cdf(x) + x * 0.39894228 * exp_accurate(-0.5 * x * x));
}

// GELU four at a time (lengths in fours: ConvNeXt's), the values of activation_forward and
// activation_backward without their switch on the kind, every case of which software adapters
// compute, a sigmoid's exponential included.
@compute @workgroup_size(64)
fn gelu_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    let x = fwd_x4[i];
    fwd_y4[i] = vec4<f32>(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w));
}

@compute @workgroup_size(64)
fn gelu_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    let x = bwd_x4[i];
    let dy = bwd_dy4[i];
    var dx = vec4<f32>(gelu_gradient(x.x, dy.x), gelu_gradient(x.y, dy.y), gelu_gradient(x.z, dy.z), gelu_gradient(x.w, dy.w));
    // dx is read only to add to it: software adapters pay for every access.
    if (p.accumulate != 0u) { dx = bwd_dx4[i] + dx; }
    bwd_dx4[i] = dx;
}

@group(0) @binding(1) var<storage, read> add_a: array<f32>;
@group(0) @binding(2) var<storage, read> add_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> add_y: array<f32>;

// y = a + b (residual connections), through relu or relu6 where `activated`: the values the
// add and activation ops store one after the other.
fn activated_sum(v: vec4<f32>) -> vec4<f32> {
    return select(v, rectified(v), p.activated != 0u);
}

@compute @workgroup_size(64)
fn add_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    add_y[i] = activated_sum(vec4<f32>(add_a[i] + add_b[i])).x;
}

@group(0) @binding(1) var<storage, read> pass_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> pass_dx: array<f32>;

// dx (+)= dy: the gradient of an identity path, such as either input of a residual add.
@compute @workgroup_size(64)
fn pass_gradient(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    pass_dx[i] = accumulated(pass_dx[i], pass_dy[i], p.accumulate);
}

@group(0) @binding(1) var<storage, read> add_a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> add_b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> add_y4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn add_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    add_y4[i] = activated_sum(add_a4[i] + add_b4[i]);
}

// add_forward_quads reading a and b from textures that hold copies of bindings 1 and 2
// (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`): software adapters gather a texel
// fetch's lanes in registers, where a storage load whose address differs per lane loops over
// the lanes. The same values.
@group(0) @binding(15) var add_a_texels: texture_2d<f32>;
@group(0) @binding(14) var add_b_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn add_forward_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    add_y4[i] = activated_sum(buffer_texel(add_a_texels, i) + buffer_texel(add_b_texels, i));
}

// The gradient of y = act(a + b) to both inputs: dy where y's activation passes it (`passes`
// of y, the mask activation_backward takes from a + b), each added to what is there where
// `accumulate` says (bit 0: da, bit 1: db).
@group(0) @binding(1) var<storage, read> masked_y: array<f32>;
@group(0) @binding(2) var<storage, read> masked_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> masked_da: array<f32>;
@group(0) @binding(4) var<storage, read_write> masked_db: array<f32>;

@compute @workgroup_size(64)
fn add_backward_masked(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len) { return; }
    let g = select(0.0, masked_dy[i], passes(vec4<f32>(masked_y[i])).x);
    masked_da[i] = accumulated(masked_da[i], g, p.accumulate & 1u);
    masked_db[i] = accumulated(masked_db[i], g, p.accumulate >> 1u);
}

@group(0) @binding(1) var<storage, read> masked_y4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> masked_dy4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> masked_da4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> masked_db4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn add_backward_masked_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    store_masked_quads(i, select(vec4<f32>(0.0), masked_dy4[i], passes(masked_y4[i])));
}

// add_backward_masked_quads reading y and dy from textures that hold copies of bindings 1 and
// 2 (as add_forward_quads_textured). The same values.
@group(0) @binding(15) var masked_y_texels: texture_2d<f32>;
@group(0) @binding(14) var masked_dy_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn add_backward_masked_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    let dy = buffer_texel(masked_dy_texels, i);
    store_masked_quads(i, select(vec4<f32>(0.0), dy, passes(buffer_texel(masked_y_texels, i))));
}

// The masked gradient g of vec4 i to both inputs.
fn store_masked_quads(i: u32, g: vec4<f32>) {
    // The targets are read only to add to them: software adapters pay for every access.
    var da = g;
    if ((p.accumulate & 1u) != 0u) { da = masked_da4[i] + g; }
    masked_da4[i] = da;
    var db = g;
    if ((p.accumulate & 2u) != 0u) { db = masked_db4[i] + g; }
    masked_db4[i] = db;
}

@group(0) @binding(1) var<storage, read> pass_dy4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> pass_dx4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pass_gradient_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.len / 4u) { return; }
    var dx = pass_dy4[i];
    if (p.accumulate != 0u) { dx = pass_dx4[i] + dx; }
    pass_dx4[i] = dx;
}
