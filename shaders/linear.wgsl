// Fully connected layer on [batch, in] rows: y = x w^T + bias, w laid out [out, in] as torch's
// nn.Linear (and a 1x1 conv's OIHW weight on pooled [batch, channels, 1, 1] tensors).

struct LinearParams {
    batch: u32,
    in_features: u32,
    out_features: u32,
    has_bias: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: LinearParams;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

// Invocations: batch x out.
@compute @workgroup_size(64)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.out_features) { return; }
    let n = i / p.out_features;
    let o = i % p.out_features;
    var sum = select(0.0, fwd_bias[o], p.has_bias != 0u);
    for (var k = 0u; k < p.in_features; k++) {
        sum = fma(fwd_x[n * p.in_features + k], fwd_w[o * p.in_features + k], sum);
    }
    fwd_y[i] = sum;
}

@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_dx: array<f32>;

// dx[n, k] = sum_o dy[n, o] w[o, k]. Invocations: batch x in.
@compute @workgroup_size(64)
fn linear_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.in_features) { return; }
    let n = i / p.in_features;
    let k = i % p.in_features;
    var sum = 0.0;
    for (var o = 0u; o < p.out_features; o++) {
        sum = fma(bi_dy[n * p.out_features + o], bi_w[o * p.in_features + k], sum);
    }
    bi_dx[i] = accumulated(bi_dx[i], sum, p.accumulate);
}

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_dw: array<f32>;

// dw[o, k] = sum_n dy[n, o] x[n, k]. Invocations: out x in.
@compute @workgroup_size(64)
fn linear_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.out_features * p.in_features) { return; }
    let o = i / p.in_features;
    let k = i % p.in_features;
    var sum = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        sum = fma(bw_dy[n * p.out_features + o], bw_x[n * p.in_features + k], sum);
    }
    bw_dw[i] = accumulated(bw_dw[i], sum, p.accumulate);
}

@group(0) @binding(1) var<storage, read> bb_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> bb_db: array<f32>;

// db[o] = sum_n dy[n, o]. Invocations: out.
@compute @workgroup_size(64)
fn linear_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_index(gid, nwg);
    if (o >= p.out_features) { return; }
    var sum = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        sum += bb_dy[n * p.out_features + o];
    }
    bb_db[o] = accumulated(bb_db[o], sum, p.accumulate);
}
