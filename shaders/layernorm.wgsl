// LayerNorm over the channels of [N, C, S] (S = H x W): each (sample, position) is normalised
// across its C channels, as torch's LayerNorm on channels-last data and torchvision's
// LayerNorm2d do. A position's channels lie S apart, so neighbouring invocations (neighbouring
// positions) read neighbouring addresses.

struct LayerNormParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    eps: f32,
    accumulate_input: u32,
    accumulate_weight: u32,
    accumulate_bias: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: LayerNormParams;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_weight: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
// (mean, 1 / sqrt(var + eps)) per (sample, position).
@group(0) @binding(4) var<storage, read_write> fwd_saved: array<f32>;
@group(0) @binding(5) var<storage, read_write> fwd_y: array<f32>;

// Two passes (mean, then the biased variance about it), then the affine output.
// Invocations: batch x spatial.
@compute @workgroup_size(64)
fn layernorm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.spatial) { return; }
    let base = (i / p.spatial) * p.channels * p.spatial + i % p.spatial;
    var sum = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        sum += fwd_x[base + c * p.spatial];
    }
    let mean = sum / f32(p.channels);
    var sq = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let d = fwd_x[base + c * p.spatial] - mean;
        sq += d * d;
    }
    let rstd = 1.0 / sqrt(sq / f32(p.channels) + p.eps);
    fwd_saved[2u * i] = mean;
    fwd_saved[2u * i + 1u] = rstd;
    for (var c = 0u; c < p.channels; c++) {
        let at = base + c * p.spatial;
        fwd_y[at] = (fwd_x[at] - mean) * rstd * fwd_weight[c] + fwd_bias[c];
    }
}

@group(0) @binding(1) var<storage, read> bi_x: array<f32>;
@group(0) @binding(2) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bi_weight: array<f32>;
@group(0) @binding(4) var<storage, read> bi_saved: array<f32>;
@group(0) @binding(5) var<storage, read_write> bi_dx: array<f32>;

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight, over a position's
// channels. Invocations: batch x spatial.
@compute @workgroup_size(64)
fn layernorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.spatial) { return; }
    let base = (i / p.spatial) * p.channels * p.spatial + i % p.spatial;
    let mean = bi_saved[2u * i];
    let rstd = bi_saved[2u * i + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var c = 0u; c < p.channels; c++) {
        let at = base + c * p.spatial;
        let g = bi_dy[at] * bi_weight[c];
        sum_g += g;
        sum_gx += g * (bi_x[at] - mean) * rstd;
    }
    let mean_g = sum_g / f32(p.channels);
    let mean_gx = sum_gx / f32(p.channels);
    for (var c = 0u; c < p.channels; c++) {
        let at = base + c * p.spatial;
        let xhat = (bi_x[at] - mean) * rstd;
        let dx = rstd * (bi_dy[at] * bi_weight[c] - mean_g - xhat * mean_gx);
        bi_dx[at] = accumulated(bi_dx[at], dx, p.accumulate_input);
    }
}

@group(0) @binding(1) var<storage, read> bp_x: array<f32>;
@group(0) @binding(2) var<storage, read> bp_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bp_saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> bp_dweight: array<f32>;
@group(0) @binding(5) var<storage, read_write> bp_dbias: array<f32>;

const REDUCE: u32 = 64u;
var<workgroup> part_w: array<f32, 64>;
var<workgroup> part_b: array<f32, 64>;

// dweight[c] = sum(dy * xhat), dbias[c] = sum(dy) over samples and positions: each lane sums
// every 64th (sample, position), then a fixed-order tree adds the lanes. Workgroups: channels.
@compute @workgroup_size(64)
fn layernorm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    var sw = 0.0;
    var sb = 0.0;
    for (var i = lane; i < p.batch * p.spatial; i += REDUCE) {
        let at = (i / p.spatial) * p.channels * p.spatial + c * p.spatial + i % p.spatial;
        let dy = bp_dy[at];
        sw += dy * (bp_x[at] - bp_saved[2u * i]) * bp_saved[2u * i + 1u];
        sb += dy;
    }
    part_w[lane] = sw;
    part_b[lane] = sb;
    workgroupBarrier();
    for (var half = REDUCE / 2u; half > 0u; half /= 2u) {
        if (lane < half) {
            part_w[lane] += part_w[lane + half];
            part_b[lane] += part_b[lane + half];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        bp_dweight[c] = accumulated(bp_dweight[c], part_w[0], p.accumulate_weight);
        bp_dbias[c] = accumulated(bp_dbias[c], part_b[0], p.accumulate_bias);
    }
}
