// BatchNorm2d over NCHW activations, as torch.nn.BatchNorm2d.
//
// Train mode normalises with the batch mean and biased variance and moves the running
// statistics by `momentum` towards the batch mean and the *unbiased* variance. Eval mode
// normalises with the running statistics. Both modes keep `saved` = [mean[C], invstd[C]] for
// the apply and backward kernels. Per-channel reductions run in one workgroup per channel with
// a fixed tree order, so results are deterministic.

struct NormParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    training: u32,
    momentum: f32,
    eps: f32,
    accumulate_weight: u32,
    accumulate_bias: u32,
    accumulate_input: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;

const REDUCE: u32 = 64u;
var<workgroup> partial: array<f32, REDUCE>;

// Sums `value` over the workgroup; every invocation gets the total.
fn workgroup_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = REDUCE / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// Flat offset of the i-th element (over batch x spatial) of channel c.
fn element(c: u32, i: u32) -> u32 {
    return ((i / p.spatial) * p.channels + c) * p.spatial + i % p.spatial;
}

// ---------------------------------------------------------------- statistics
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_running_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> st_saved: array<f32>;

// Batch statistics, then the running-statistics update. Workgroups: channels.
@compute @workgroup_size(64)
fn batchnorm_stats_train(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let count = p.batch * p.spatial;
    var sum = 0.0;
    for (var i = lane; i < count; i += REDUCE) {
        sum += st_x[element(c, i)];
    }
    let mean = workgroup_sum(lane, sum) / f32(count);
    var sq = 0.0;
    for (var i = lane; i < count; i += REDUCE) {
        let d = st_x[element(c, i)] - mean;
        sq += d * d;
    }
    let var_biased = workgroup_sum(lane, sq) / f32(count);
    if (lane == 0u) {
        st_saved[c] = mean;
        st_saved[p.channels + c] = inverseSqrt(var_biased + p.eps);
        let unbiased = var_biased * f32(count) / f32(max(count, 2u) - 1u);
        st_running_mean[c] = (1.0 - p.momentum) * st_running_mean[c] + p.momentum * mean;
        st_running_var[c] = (1.0 - p.momentum) * st_running_var[c] + p.momentum * unbiased;
    }
}

@group(0) @binding(1) var<storage, read> ev_running_mean: array<f32>;
@group(0) @binding(2) var<storage, read> ev_running_var: array<f32>;
@group(0) @binding(3) var<storage, read_write> ev_saved: array<f32>;

// Eval mode: the saved statistics are the running ones. Invocations: channels.
@compute @workgroup_size(64)
fn batchnorm_stats_eval(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    ev_saved[c] = ev_running_mean[c];
    ev_saved[p.channels + c] = inverseSqrt(ev_running_var[c] + p.eps);
}

// ---------------------------------------------------------------- normalise
@group(0) @binding(1) var<storage, read> ap_x: array<f32>;
@group(0) @binding(2) var<storage, read> ap_weight: array<f32>;
@group(0) @binding(3) var<storage, read> ap_bias: array<f32>;
@group(0) @binding(4) var<storage, read> ap_saved: array<f32>;
@group(0) @binding(5) var<storage, read_write> ap_y: array<f32>;

// y = (x - mean) * invstd * weight + bias. Invocations: every element.
@compute @workgroup_size(64)
fn batchnorm_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.channels * p.spatial) { return; }
    let c = (i / p.spatial) % p.channels;
    let scale = ap_saved[p.channels + c] * ap_weight[c];
    ap_y[i] = (ap_x[i] - ap_saved[c]) * scale + ap_bias[c];
}

// ---------------------------------------------------------------- backward
@group(0) @binding(1) var<storage, read> br_x: array<f32>;
@group(0) @binding(2) var<storage, read> br_dy: array<f32>;
@group(0) @binding(3) var<storage, read> br_saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_dweight: array<f32>;
@group(0) @binding(5) var<storage, read_write> br_dbias: array<f32>;
@group(0) @binding(6) var<storage, read_write> br_sums: array<f32>;

// dbias = sum(dy), dweight = sum(dy * xhat); both sums are also kept for the input gradient.
// Workgroups: channels.
@compute @workgroup_size(64)
fn batchnorm_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let count = p.batch * p.spatial;
    let mean = br_saved[c];
    let invstd = br_saved[p.channels + c];
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var i = lane; i < count; i += REDUCE) {
        let at = element(c, i);
        sum_dy += br_dy[at];
        sum_dy_xhat += br_dy[at] * (br_x[at] - mean) * invstd;
    }
    sum_dy = workgroup_sum(lane, sum_dy);
    sum_dy_xhat = workgroup_sum(lane, sum_dy_xhat);
    if (lane == 0u) {
        br_dbias[c] = accumulated(br_dbias[c], sum_dy, p.accumulate_bias);
        br_dweight[c] = accumulated(br_dweight[c], sum_dy_xhat, p.accumulate_weight);
        br_sums[c] = sum_dy;
        br_sums[p.channels + c] = sum_dy_xhat;
    }
}

@group(0) @binding(1) var<storage, read> bi_x: array<f32>;
@group(0) @binding(2) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bi_weight: array<f32>;
@group(0) @binding(4) var<storage, read> bi_saved: array<f32>;
@group(0) @binding(5) var<storage, read> bi_sums: array<f32>;
@group(0) @binding(6) var<storage, read_write> bi_dx: array<f32>;

// Train: dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
// Eval (statistics are constants): dx = weight * invstd * dy. Invocations: every element.
@compute @workgroup_size(64)
fn batchnorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.channels * p.spatial) { return; }
    let c = (i / p.spatial) % p.channels;
    let invstd = bi_saved[p.channels + c];
    var g = bi_dy[i];
    if (p.training != 0u) {
        let count = f32(p.batch * p.spatial);
        let xhat = (bi_x[i] - bi_saved[c]) * invstd;
        g = g - bi_sums[c] / count - xhat * bi_sums[p.channels + c] / count;
    }
    bi_dx[i] = accumulated(bi_dx[i], bi_weight[c] * invstd * g, p.accumulate_input);
}
