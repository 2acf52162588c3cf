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

// Each invocation computes a 4 x 4 block of results, so a step's 8 loads serve 16
// multiply-adds (software adapters pay a per-lane loop for every load); every result still
// sums its terms in order with one fma each. Indices past the end are clamped for loading and
// never stored.
fn quad(first: u32, count: u32) -> vec4<u32> {
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(count - 1u));
}

// The first (row, column) of invocation t's block, columns fastest.
fn block(t: u32, cols: u32) -> vec2<u32> {
    let col_blocks = (cols + 3u) / 4u;
    return vec2<u32>((t / col_blocks) * 4u, (t % col_blocks) * 4u);
}

fn blocks(rows: u32, cols: u32) -> u32 {
    return ((rows + 3u) / 4u) * ((cols + 3u) / 4u);
}

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

// y[n, o] = bias[o] + sum_k x[n, k] w[o, k]. Invocations: 4 x 4 blocks of (sample, output).
@compute @workgroup_size(64)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    if (t >= blocks(p.batch, p.out_features)) { return; }
    let at = block(t, p.out_features);
    let n = quad(at.x, p.batch);
    let o = quad(at.y, p.out_features);
    let has = p.has_bias != 0u;
    // a_j: output o_j of the four samples.
    var a0 = vec4<f32>(select(0.0, fwd_bias[o.x], has));
    var a1 = vec4<f32>(select(0.0, fwd_bias[o.y], has));
    var a2 = vec4<f32>(select(0.0, fwd_bias[o.z], has));
    var a3 = vec4<f32>(select(0.0, fwd_bias[o.w], has));
    let f = p.in_features;
    for (var k = 0u; k < f; k++) {
        let x = vec4<f32>(fwd_x[n.x * f + k], fwd_x[n.y * f + k], fwd_x[n.z * f + k], fwd_x[n.w * f + k]);
        a0 = fma(x, vec4<f32>(fwd_w[o.x * f + k]), a0);
        a1 = fma(x, vec4<f32>(fwd_w[o.y * f + k]), a1);
        a2 = fma(x, vec4<f32>(fwd_w[o.z * f + k]), a2);
        a3 = fma(x, vec4<f32>(fwd_w[o.w * f + k]), a3);
    }
    let out = p.out_features;
    for (var s = 0u; s < 4u; s++) {
        if (at.x + s >= p.batch) { break; }
        let row = (at.x + s) * out + at.y;
        if (at.y < out) { fwd_y[row] = a0[s]; }
        if (at.y + 1u < out) { fwd_y[row + 1u] = a1[s]; }
        if (at.y + 2u < out) { fwd_y[row + 2u] = a2[s]; }
        if (at.y + 3u < out) { fwd_y[row + 3u] = a3[s]; }
    }
}

// The input and weight gradients' output, [rows][cols], written (or added to) in 4 x 4 blocks.
@group(0) @binding(3) var<storage, read_write> grad_out: array<f32>;

// Block at (row0, col0) of a [rows][cols] gradient; a_j holds column col0 + j of four rows.
fn store_gradient_block(row0: u32, col0: u32, rows: u32, cols: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) {
    for (var s = 0u; s < 4u; s++) {
        if (row0 + s >= rows) { break; }
        let at = (row0 + s) * cols + col0;
        if (col0 < cols) { grad_out[at] = accumulated(grad_out[at], a0[s], p.accumulate); }
        if (col0 + 1u < cols) { grad_out[at + 1u] = accumulated(grad_out[at + 1u], a1[s], p.accumulate); }
        if (col0 + 2u < cols) { grad_out[at + 2u] = accumulated(grad_out[at + 2u], a2[s], p.accumulate); }
        if (col0 + 3u < cols) { grad_out[at + 3u] = accumulated(grad_out[at + 3u], a3[s], p.accumulate); }
    }
}

@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;

// dx[n, k] = sum_o dy[n, o] w[o, k]. Invocations: 4 x 4 blocks of (sample, input).
@compute @workgroup_size(64)
fn linear_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    if (t >= blocks(p.batch, p.in_features)) { return; }
    let at = block(t, p.in_features);
    let n = quad(at.x, p.batch);
    let k = quad(at.y, p.in_features);
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let f = p.in_features;
    let out = p.out_features;
    for (var o = 0u; o < out; o++) {
        let dy = vec4<f32>(bi_dy[n.x * out + o], bi_dy[n.y * out + o], bi_dy[n.z * out + o], bi_dy[n.w * out + o]);
        a0 = fma(dy, vec4<f32>(bi_w[o * f + k.x]), a0);
        a1 = fma(dy, vec4<f32>(bi_w[o * f + k.y]), a1);
        a2 = fma(dy, vec4<f32>(bi_w[o * f + k.z]), a2);
        a3 = fma(dy, vec4<f32>(bi_w[o * f + k.w]), a3);
    }
    store_gradient_block(at.x, at.y, p.batch, f, a0, a1, a2, a3);
}

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;

// dw[o, k] = sum_n dy[n, o] x[n, k]. Invocations: 4 x 4 blocks of (output, input).
@compute @workgroup_size(64)
fn linear_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    if (t >= blocks(p.out_features, p.in_features)) { return; }
    let at = block(t, p.in_features);
    let o = quad(at.x, p.out_features);
    let k = quad(at.y, p.in_features);
    var a0 = vec4<f32>();
    var a1 = vec4<f32>();
    var a2 = vec4<f32>();
    var a3 = vec4<f32>();
    let f = p.in_features;
    let out = p.out_features;
    for (var n = 0u; n < p.batch; n++) {
        let dy = vec4<f32>(bw_dy[n * out + o.x], bw_dy[n * out + o.y], bw_dy[n * out + o.z], bw_dy[n * out + o.w]);
        a0 = fma(dy, vec4<f32>(bw_x[n * f + k.x]), a0);
        a1 = fma(dy, vec4<f32>(bw_x[n * f + k.y]), a1);
        a2 = fma(dy, vec4<f32>(bw_x[n * f + k.z]), a2);
        a3 = fma(dy, vec4<f32>(bw_x[n * f + k.w]), a3);
    }
    store_gradient_block(at.x, at.y, out, f, a0, a1, a2, a3);
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
