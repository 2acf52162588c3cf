// Layer scale (ConvNeXt): y[n, c, s] = x[n, c, s] * gamma[c], one learned factor per channel
// shared by the batch.

struct ScaleParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: ScaleParams;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> fwd_y: array<f32>;

// Invocations: every element.
@compute @workgroup_size(64)
fn layer_scale_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.channels * p.spatial) { return; }
    fwd_y[i] = fwd_x[i] * fwd_gamma[(i / p.spatial) % p.channels];
}

@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_dx: array<f32>;

// dx = dy * gamma[c]. Invocations: every element.
@compute @workgroup_size(64)
fn layer_scale_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.channels * p.spatial) { return; }
    bi_dx[i] = accumulated(bi_dx[i], bi_dy[i] * bi_gamma[(i / p.spatial) % p.channels], p.accumulate);
}

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_dgamma: array<f32>;

const REDUCE: u32 = 64u;
var<workgroup> part: array<f32, 64>;

// dgamma[c] = sum over samples and positions of dy * x: each lane sums every 64th, then a
// fixed-order tree adds the lanes. Workgroups: channels.
@compute @workgroup_size(64)
fn layer_scale_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    var sum = 0.0;
    for (var i = lane; i < p.batch * p.spatial; i += REDUCE) {
        let at = ((i / p.spatial) * p.channels + c) * p.spatial + i % p.spatial;
        sum += bw_dy[at] * bw_x[at];
    }
    part[lane] = sum;
    workgroupBarrier();
    for (var half = REDUCE / 2u; half > 0u; half /= 2u) {
        if (lane < half) {
            part[lane] += part[lane + half];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        bw_dgamma[c] = accumulated(bw_dgamma[c], part[0], p.accumulate);
    }
}

// Stochastic depth, torchvision's "row" mode: in training each sample's residual branch is
// kept (scaled by 1 / keep) or dropped whole, as `mask` (1 or 0 per sample, drawn by the
// trainer) says; in eval it passes unchanged.
struct DropPathParams {
    batch: u32,
    // Elements per sample.
    per_sample: u32,
    training: u32,
    accumulate: u32,
    // 1 / keep probability.
    rescale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> dp: DropPathParams;
@group(0) @binding(1) var<storage, read> dp_in: array<f32>;
@group(0) @binding(2) var<storage, read> dp_mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> dp_out: array<f32>;

fn drop_path_factor(i: u32) -> f32 {
    return select(1.0, dp_mask[i / dp.per_sample] * dp.rescale, dp.training != 0u);
}

// y = x * factor (forward, from x) or dx (+)= dy * factor (backward, from dy): the same map.
// Invocations: every element.
@compute @workgroup_size(64)
fn drop_path_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= dp.batch * dp.per_sample) { return; }
    dp_out[i] = accumulated(dp_out[i], dp_in[i] * drop_path_factor(i), dp.accumulate);
}
