// BatchNorm2d over NCHW activations, as torch.nn.BatchNorm2d.
//
// Train mode normalises with the batch mean and biased variance and moves the running
// statistics by `momentum` towards the batch mean and the *unbiased* variance. Eval mode
// normalises with the running statistics. Per-channel reductions run in one workgroup per
// channel with a fixed tree order, so results are deterministic.
//
// Precision: the input gradient in train mode, dx = w * invstd * ((dy - mean(dy)) - c * beta)
// with c = x - mean and beta = sum(dy * c) / (count * (var + eps)), cancels almost completely
// when few values share a channel (a router's BatchNorm sees one per sample: at batch 2 the
// true result is ~eps / var of either term). f32 leaves it with a few percent of error, so the
// statistics, the sums and that difference are carried as double-float pairs (hi + lo, ~44
// bits), the way torch's CPU kernels accumulate in double.
//
// The double-float helpers come from double_float.wgsl.
//
// `saved` (8 x C): mean.hi, invstd, mean.lo, (var + eps) as a pair, spare, and what the apply
// kernels normalise with: invstd * weight and the bias. `sums` (4 x C): mean(dy) and beta, as
// pairs.
//
// A relu or relu6 may follow in the same node (STORED_ACTIVATION, common.wgsl): the apply
// kernels store its output, and the backward kernels take dy through its gradient, which they
// find by normalising x again exactly as the apply kernels did (`normalised`).

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
    // Always 1.0; see `opaque`.
    one: f32,
    // Reductions over a channel's batch x spatial elements in `chunks` chunks of `chunk_len`,
    // one workgroup each, whose partial sums the per-channel kernels add in chunk order; one
    // chunk: the per-channel kernels walk the elements themselves.
    chunks: u32,
    chunk_len: u32,
}

@group(0) @binding(0) var<uniform> p: NormParams;

// A lane's walk over one channel's elements (batch x spatial, flat index lane, lane + REDUCE,
// ...) by (sample, position), stepped without divisions: integer division is a scalar loop
// per lane on software adapters, and costs more than the arithmetic around it.
struct Walk {
    n: u32,
    s: u32,
}

fn walk_start(i: u32) -> Walk {
    return walk_start_over(i, p.spatial);
}

// The same walks over vec4s (`plane` of them per (sample, channel) plane).
fn walk_start_over(i: u32, plane: u32) -> Walk {
    return Walk(i / plane, i % plane);
}

// The elements of chunk k of a channel: [start, end).
fn chunk_range(k: u32) -> vec2<u32> {
    let count = p.batch * p.spatial;
    return vec2<u32>(k * p.chunk_len, min(count, (k + 1u) * p.chunk_len));
}

fn walk_next(w: Walk) -> Walk {
    return walk_next_over(w, p.spatial);
}

fn walk_next_over(w: Walk, plane: u32) -> Walk {
    var next = Walk(w.n + REDUCE / plane, w.s + REDUCE % plane);
    if (next.s >= plane) {
        next.s -= plane;
        next.n += 1u;
    }
    return next;
}

fn walk_offset(w: Walk, c: u32) -> u32 {
    return walk_offset_over(w, c, p.spatial);
}

fn walk_offset_over(w: Walk, c: u32, plane: u32) -> u32 {
    return (w.n * p.channels + c) * plane + w.s;
}

// Elementwise kernels take runs of up to ELEMENT_RUN elements of one (sample, channel) plane
// per invocation, loading the channel's statistics once per run.
const ELEMENT_RUN: u32 = 32u;

// The run of invocation r: (first offset, elements, channel), or elements 0 past the end.
fn element_run(r: u32) -> vec3<u32> {
    let runs = (p.spatial + ELEMENT_RUN - 1u) / ELEMENT_RUN;
    let plane = r / runs;
    if (plane >= p.batch * p.channels) { return vec3<u32>(0u); }
    let first = (r % runs) * ELEMENT_RUN;
    return vec3<u32>(plane * p.spatial + first, min(ELEMENT_RUN, p.spatial - first), plane % p.channels);
}

// ---------------------------------------------------------------- statistics
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_running_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> st_saved: array<f32>;
@group(0) @binding(5) var<storage, read> st_weight: array<f32>;
@group(0) @binding(6) var<storage, read> st_bias: array<f32>;

// Partial sums [stage][channel][chunk]: of x - shift and (x - shift)^2 (batchnorm_chunk_sums), or
// of the backward pass's dy and dy * (x - mean) (batchnorm_backward_chunks). Binding 7 in every
// kernel that reads or writes them.
@group(0) @binding(7) var<storage, read_write> chunk_part: array<vec2<f32>>;

// The partial sums of stage `stage` of channel c, added in chunk order.
fn chunk_total(stage: u32, c: u32) -> vec2<f32> {
    var sum = df(0.0);
    let first = (stage * p.channels + c) * p.chunks;
    for (var k = 0u; k < p.chunks; k++) {
        sum = df_add(sum, chunk_part[first + k]);
    }
    return sum;
}

// The statistics come from one pass over x: sums of d = x - shift and of d^2, with the shift
// the channel's first element (`channel_shift`), in double-float. Then the mean is
// shift + sum(d) / n and the sum of squared deviations sum(d^2) - sum(d) * mean(d). The shift
// keeps that difference from cancelling: no element lies further than sqrt(n - 1) standard
// deviations from the mean, so the difference keeps all but log2(n) of double-float's ~48 bits
// (34 at n = 16384), far beyond f32's 24. One load of each element rather than two.
fn add_shifted(sums: array<vec2<f32>, 2>, x: f32, shift: f32) -> array<vec2<f32>, 2> {
    let d = two_sum(x, -shift);
    return array<vec2<f32>, 2>(df_add(sums[0], d), df_add(sums[1], df_mul(d, d)));
}

// Channel c's shift: its first element (the vec4 kernels read it through their own view).
fn channel_shift(c: u32) -> f32 {
    return st_x[c * p.spatial];
}

// (mean, sum of squared deviations) of a channel's `count` elements from its shifted sums.
fn shifted_moments(sums: array<vec2<f32>, 2>, shift: f32, count: u32) -> array<vec2<f32>, 2> {
    let mean_d = df_div(sums[0], df(f32(count)));
    let sq = df_add(sums[1], df_neg(df_mul(sums[0], mean_d)));
    return array<vec2<f32>, 2>(df_add(df(shift), mean_d), sq);
}

// One chunk's shifted sums (chunk partials 0 and 1; see add_shifted). Workgroups: channels (x) x
// chunks (y).
@compute @workgroup_size(64)
fn batchnorm_chunk_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let range = chunk_range(wid.y);
    let shift = channel_shift(c);
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start(range.x + lane);
    for (var i = range.x + lane; i < range.y; i += REDUCE) {
        sums = add_shifted(sums, st_x[walk_offset(w, c)], shift);
        w = walk_next(w);
    }
    let sum = workgroup_sum(lane, sums[0]);
    let sq = workgroup_sum(lane, sums[1]);
    if (lane == 0u) {
        chunk_part[c * p.chunks + wid.y] = sum;
        chunk_part[(p.channels + c) * p.chunks + wid.y] = sq;
    }
}

// Batch statistics (from the chunks' sums when there are several), then the running-statistics
// update. Workgroups: channels.
@compute @workgroup_size(64)
fn batchnorm_stats_train(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let count = p.batch * p.spatial;
    let shift = channel_shift(c);
    if (p.chunks > 1u) {
        let moments = shifted_moments(array<vec2<f32>, 2>(chunk_total(0u, c), chunk_total(1u, c)), shift, count);
        _ = stats_finish(lane, c, moments[0], moments[1]);
        return;
    }
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start(lane);
    for (var i = lane; i < count; i += REDUCE) {
        sums = add_shifted(sums, st_x[walk_offset(w, c)], shift);
        w = walk_next(w);
    }
    let totals = array<vec2<f32>, 2>(workgroup_sum(lane, sums[0]), workgroup_sum(lane, sums[1]));
    let moments = shifted_moments(totals, shift, count);
    _ = stats_finish(lane, c, moments[0], moments[1]);
}

// Channels of few elements (src/ops/batchnorm.rs `SERIAL_MAX`): one invocation per channel sums
// them in order, without the workgroup's barriers, which cost software adapters more than a
// small channel's sums. Invocations: channels.
@compute @workgroup_size(64)
fn batchnorm_stats_train_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    _ = serial_stats(c);
}

fn serial_stats(c: u32) -> ApplyStats {
    let shift = channel_shift(c);
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * p.spatial;
        for (var s = 0u; s < p.spatial; s++) {
            sums = add_shifted(sums, st_x[plane + s], shift);
        }
    }
    let moments = shifted_moments(sums, shift, p.batch * p.spatial);
    return stats_finish(0u, c, moments[0], moments[1]);
}

// The statistics kernels over vec4 views, for planes whose elements come in fours (and one
// chunk): a quarter of the loads (software adapters pay a lane loop for each, whatever its
// width). The serial kernel adds the same terms in the same order as batchnorm_stats_train_serial;
// the workgroup kernel's lanes walk vec4s, so its sums group differently from
// batchnorm_stats_train's (still exact double-float sums, and fixed by shape).
@group(0) @binding(1) var<storage, read> st_x4: array<vec4<f32>>;

// add_shifted over v.x, v.y, v.z, v.w, in that order.
fn add_shifted4(sums: array<vec2<f32>, 2>, v: vec4<f32>, shift: f32) -> array<vec2<f32>, 2> {
    var out = sums;
    for (var k = 0u; k < 4u; k++) {
        out = add_shifted(out, v[k], shift);
    }
    return out;
}

@compute @workgroup_size(64)
fn batchnorm_stats_train_serial_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let quads = p.spatial / 4u;
    let shift = st_x4[c * quads].x;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var s = 0u; s < quads; s++) {
            sums = add_shifted4(sums, st_x4[plane + s], shift);
        }
    }
    let moments = shifted_moments(sums, shift, p.batch * p.spatial);
    _ = stats_finish(0u, c, moments[0], moments[1]);
}

@compute @workgroup_size(64)
fn batchnorm_stats_train_quads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let quads = p.spatial / 4u;
    let count = p.batch * quads;
    let shift = st_x4[c * quads].x;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < count; i += REDUCE) {
        sums = add_shifted4(sums, st_x4[walk_offset_over(w, c, quads)], shift);
        w = walk_next_over(w, quads);
    }
    let totals = array<vec2<f32>, 2>(workgroup_sum(lane, sums[0]), workgroup_sum(lane, sums[1]));
    let moments = shifted_moments(totals, shift, p.batch * p.spatial);
    _ = stats_finish(lane, c, moments[0], moments[1]);
}

// The statistics kernels over vec4s with x read from a texture (binding 15, a copy of
// binding 1; src/gpu/mod.rs `Gpu::texture_reads`): the same sums in the same order. These
// `_textured` twins repeat their storage kernels' loops with other loads: a pipeline binds
// every resource its entry point's code can reach, so one body that chose its loads by a flag
// would make the storage kernels bind (and copy) textures too.
@group(0) @binding(15) var st_x_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn batchnorm_stats_train_serial_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    _ = serial_texel_stats(c);
}

fn serial_texel_stats(c: u32) -> ApplyStats {
    let quads = p.spatial / 4u;
    let shift = buffer_texel(st_x_texels, c * quads).x;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var s = 0u; s < quads; s++) {
            sums = add_shifted4(sums, buffer_texel(st_x_texels, plane + s), shift);
        }
    }
    let moments = shifted_moments(sums, shift, p.batch * p.spatial);
    return stats_finish(0u, c, moments[0], moments[1]);
}

@compute @workgroup_size(64)
fn batchnorm_stats_train_quads_textured(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    _ = workgroup_texel_stats(wid.x, lane);
}

fn workgroup_texel_stats(c: u32, lane: u32) -> ApplyStats {
    let quads = p.spatial / 4u;
    let count = p.batch * quads;
    let shift = buffer_texel(st_x_texels, c * quads).x;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < count; i += REDUCE) {
        sums = add_shifted4(sums, buffer_texel(st_x_texels, walk_offset_over(w, c, quads)), shift);
        w = walk_next_over(w, quads);
    }
    let totals = array<vec2<f32>, 2>(workgroup_sum(lane, sums[0]), workgroup_sum(lane, sums[1]));
    let moments = shifted_moments(totals, shift, p.batch * p.spatial);
    return stats_finish(lane, c, moments[0], moments[1]);
}

// Train mode's statistics and normalisation in one dispatch, where the device reads streams
// through textures (software adapters, which pay tens of microseconds a dispatch in thread
// hand-offs): each channel's invocation (serial) or workgroup sums its statistics as the
// statistics kernels above do, then normalises the channel as batchnorm_apply_quads_textured
// does, with the values stats_finish stores: the same output bit for bit, one dispatch where
// there were two. The output: binding 8.
@group(0) @binding(8) var<storage, read_write> st_y4: array<vec4<f32>>;

fn store_normalised4(at: u32, s: ApplyStats) {
    st_y4[at] = stored_activation4(normalised4(buffer_texel(st_x_texels, at), s));
}

@compute @workgroup_size(64)
fn batchnorm_train_serial_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let s = serial_texel_stats(c);
    let quads = p.spatial / 4u;
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var q = 0u; q < quads; q++) {
            store_normalised4(plane + q, s);
        }
    }
}

// The same for channels whose planes do not come in fours (a router's BatchNorm over [N, C]),
// reading storage.
@group(0) @binding(8) var<storage, read_write> st_y: array<f32>;

@compute @workgroup_size(64)
fn batchnorm_train_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let s = serial_stats(c);
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * p.spatial;
        for (var i = plane; i < plane + p.spatial; i++) {
            st_y[i] = stored_activation(normalised(st_x[i], s));
        }
    }
}

@compute @workgroup_size(64)
fn batchnorm_train_quads_textured(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let s = workgroup_texel_stats(c, lane);
    let quads = p.spatial / 4u;
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < p.batch * quads; i += REDUCE) {
        store_normalised4(walk_offset_over(w, c, quads), s);
        w = walk_next_over(w, quads);
    }
}

// The saved and running statistics of channel c from its mean and sum of squared deviations,
// stored by lane 0; every lane gets what normalising takes, the values stored.
fn stats_finish(lane: u32, c: u32, mean: vec2<f32>, sq: vec2<f32>) -> ApplyStats {
    let count = p.batch * p.spatial;
    let var_biased = df_div(sq, df(f32(count)));
    let var_eps = df_add(var_biased, df(p.eps));
    let invstd = 1.0 / sqrt(var_eps.x);
    let applied = ApplyStats(invstd * st_weight[c], mean, st_bias[c]);
    if (lane == 0u) {
        let ch = p.channels;
        st_saved[c] = mean.x;
        st_saved[ch + c] = invstd;
        st_saved[2u * ch + c] = mean.y;
        st_saved[3u * ch + c] = var_eps.x;
        st_saved[4u * ch + c] = var_eps.y;
        st_saved[6u * ch + c] = applied.scale;
        st_saved[7u * ch + c] = applied.bias;
        let unbiased = var_biased.x * f32(count) / f32(max(count, 2u) - 1u);
        st_running_mean[c] = (1.0 - p.momentum) * st_running_mean[c] + p.momentum * mean.x;
        st_running_var[c] = (1.0 - p.momentum) * st_running_var[c] + p.momentum * unbiased;
    }
    return applied;
}

@group(0) @binding(1) var<storage, read> ev_running_mean: array<f32>;
@group(0) @binding(2) var<storage, read> ev_running_var: array<f32>;
@group(0) @binding(3) var<storage, read_write> ev_saved: array<f32>;
@group(0) @binding(4) var<storage, read> ev_weight: array<f32>;
@group(0) @binding(5) var<storage, read> ev_bias: array<f32>;

// Eval mode: the saved statistics are the running ones. Invocations: channels.
@compute @workgroup_size(64)
fn batchnorm_stats_eval(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    let ch = p.channels;
    if (c >= ch) { return; }
    let var_eps = df_add(df(ev_running_var[c]), df(p.eps));
    let invstd = 1.0 / sqrt(var_eps.x);
    ev_saved[c] = ev_running_mean[c];
    ev_saved[ch + c] = invstd;
    ev_saved[2u * ch + c] = 0.0;
    ev_saved[3u * ch + c] = var_eps.x;
    ev_saved[4u * ch + c] = var_eps.y;
    ev_saved[6u * ch + c] = invstd * ev_weight[c];
    ev_saved[7u * ch + c] = ev_bias[c];
}

// ---------------------------------------------------------------- normalise
@group(0) @binding(1) var<storage, read> ap_x: array<f32>;
@group(0) @binding(4) var<storage, read> ap_saved: array<f32>;
@group(0) @binding(5) var<storage, read_write> ap_y: array<f32>;

// What normalising channel c needs: invstd * weight, the mean (both parts) and the bias.
struct ApplyStats {
    scale: f32,
    mean: vec2<f32>,
    bias: f32,
}

fn apply_stats(c: u32) -> ApplyStats {
    let ch = p.channels;
    return ApplyStats(ap_saved[6u * ch + c], vec2<f32>(ap_saved[c], ap_saved[2u * ch + c]), ap_saved[7u * ch + c]);
}

// (x - mean) * invstd * weight + bias, centring with both parts of the mean (values of a
// nearly constant channel sit within a few ulps of it). The product is rounded before the
// bias is added (`opaque`: no fused multiply-add), so every kernel that normalises gets the
// same value, and the backward kernels the sign the apply kernels stored.
fn normalised(x: f32, s: ApplyStats) -> f32 {
    return opaque(((x - s.mean.x) - s.mean.y) * s.scale) + s.bias;
}

fn normalised4(x: vec4<f32>, s: ApplyStats) -> vec4<f32> {
    return opaque4(((x - s.mean.x) - s.mean.y) * s.scale) + s.bias;
}

// Invocations: every element run.
@compute @workgroup_size(64)
fn batchnorm_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = apply_stats(run.z);
    for (var i = run.x; i < run.x + run.y; i++) {
        ap_y[i] = stored_activation(normalised(ap_x[i], s));
    }
}

// dy through the following activation's gradient at x's normalised value z, as
// activation_backward has it: relu passes where z > 0, relu6 where 0 < z < 6.
fn through_activation(dy: f32, x: f32, s: ApplyStats) -> f32 {
    if (STORED_ACTIVATION == 0u) { return dy; }
    let z = normalised(x, s);
    return select(0.0, dy, z > 0.0 && (STORED_ACTIVATION == 1u || z < 6.0));
}

fn through_activation4(dy: vec4<f32>, x: vec4<f32>, s: ApplyStats) -> vec4<f32> {
    if (STORED_ACTIVATION == 0u) { return dy; }
    let z = normalised4(x, s);
    return select(vec4<f32>(0.0), dy, z > vec4<f32>(0.0) & (vec4<bool>(STORED_ACTIVATION == 1u) | z < vec4<f32>(6.0)));
}

// The elementwise kernels' vec4 views, for planes whose elements come in fours (spatial % 4
// == 0, so every run is whole vec4s): the same arithmetic per element, with a quarter of the
// storage accesses (software adapters pay a lane loop for each, whatever its width).
@group(0) @binding(1) var<storage, read> ap_x4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> ap_y4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn batchnorm_apply_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = apply_stats(run.z);
    for (var i = run.x / 4u; i < (run.x + run.y) / 4u; i++) {
        ap_y4[i] = stored_activation4(normalised4(ap_x4[i], s));
    }
}

// batchnorm_apply_quads with x read from a texture (binding 15, a copy of binding 1).
@group(0) @binding(15) var ap_x_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn batchnorm_apply_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = apply_stats(run.z);
    for (var i = run.x / 4u; i < (run.x + run.y) / 4u; i++) {
        ap_y4[i] = stored_activation4(normalised4(buffer_texel(ap_x_texels, i), s));
    }
}

// ---------------------------------------------------------------- backward
@group(0) @binding(1) var<storage, read> br_x: array<f32>;
@group(0) @binding(2) var<storage, read> br_dy: array<f32>;
@group(0) @binding(3) var<storage, read> br_saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_dweight: array<f32>;
@group(0) @binding(5) var<storage, read_write> br_dbias: array<f32>;
@group(0) @binding(6) var<storage, read_write> br_sums: array<f32>;

// apply_stats, read from the backward kernels' binding.
fn reduce_stats(c: u32) -> ApplyStats {
    let ch = p.channels;
    return ApplyStats(br_saved[6u * ch + c], vec2<f32>(br_saved[c], br_saved[2u * ch + c]), br_saved[7u * ch + c]);
}

// One chunk's sum(dy) and sum(dy * (x - mean)), as stages 0 and 1 of the partial sums.
// Workgroups: channels (x) x chunks (y).
@compute @workgroup_size(64)
fn batchnorm_backward_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let range = chunk_range(wid.y);
    let sums = backward_sums(lane, c, range.x, range.y);
    if (lane == 0u) {
        chunk_part[c * p.chunks + wid.y] = sums[0];
        chunk_part[(p.channels + c) * p.chunks + wid.y] = sums[1];
    }
}

// sum(dy) and sum(dy * (x - mean)) over elements [start, end) of channel c, whole workgroup.
fn backward_sums(lane: u32, c: u32, start: u32, end: u32) -> array<vec2<f32>, 2> {
    let s = reduce_stats(c);
    let mean = s.mean;
    var sum_dy = df(0.0);
    var sum_dy_c = df(0.0);
    var w = walk_start(start + lane);
    for (var i = start + lane; i < end; i += REDUCE) {
        let at = walk_offset(w, c);
        let x = br_x[at];
        let dy = through_activation(br_dy[at], x, s);
        sum_dy = df_add_f32(sum_dy, dy);
        sum_dy_c = add_centred(sum_dy_c, x, dy, mean);
        w = walk_next(w);
    }
    sum_dy = workgroup_sum(lane, sum_dy);
    sum_dy_c = workgroup_sum(lane, sum_dy_c);
    return array<vec2<f32>, 2>(sum_dy, sum_dy_c);
}

// dbias = sum(dy), dweight = sum(dy * c) * invstd; mean(dy) and beta kept for the input
// gradient. Workgroups: channels.
@compute @workgroup_size(64)
fn batchnorm_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let count = p.batch * p.spatial;
    var sum_dy: vec2<f32>;
    var sum_dy_c: vec2<f32>;
    if (p.chunks > 1u) {
        sum_dy = chunk_total(0u, c);
        sum_dy_c = chunk_total(1u, c);
    } else {
        let sums = backward_sums(lane, c, 0u, count);
        sum_dy = sums[0];
        sum_dy_c = sums[1];
    }
    _ = backward_finish(lane, c, sum_dy, sum_dy_c);
}

// batchnorm_backward_reduce for channels of few elements, as batchnorm_stats_train_serial.
// Invocations: channels.
@compute @workgroup_size(64)
fn batchnorm_backward_reduce_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    _ = serial_backward(c, reduce_stats(c));
}

fn serial_backward(c: u32, stats: ApplyStats) -> InputGradientStats {
    let mean = stats.mean;
    var sum_dy = df(0.0);
    var sum_dy_c = df(0.0);
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * p.spatial;
        for (var s = 0u; s < p.spatial; s++) {
            let x = br_x[plane + s];
            let dy = through_activation(br_dy[plane + s], x, stats);
            sum_dy = df_add_f32(sum_dy, dy);
            sum_dy_c = add_centred(sum_dy_c, x, dy, mean);
        }
    }
    return backward_finish(0u, c, sum_dy, sum_dy_c);
}

// sum + dy * (x - mean).
fn add_centred(sum: vec2<f32>, x: f32, dy: f32, mean: vec2<f32>) -> vec2<f32> {
    return df_add(sum, df_mul_f32(dy, df_add_f32(df_neg(mean), x)));
}

// The backward reductions over vec4 views, as the statistics kernels' (serial: the same sums
// in the same order; workgroup: lanes walk vec4s). One chunk.
@group(0) @binding(1) var<storage, read> br_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> br_dy4: array<vec4<f32>>;

// sum(dy) and sum(dy * (x - mean)) plus four elements' terms, in order.
fn add_backward_terms(sums: array<vec2<f32>, 2>, x: vec4<f32>, dy: vec4<f32>, mean: vec2<f32>) -> array<vec2<f32>, 2> {
    var out = sums;
    for (var k = 0u; k < 4u; k++) {
        out[0] = df_add_f32(out[0], dy[k]);
        out[1] = add_centred(out[1], x[k], dy[k], mean);
    }
    return out;
}

@compute @workgroup_size(64)
fn batchnorm_backward_reduce_serial_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let stats = reduce_stats(c);
    let quads = p.spatial / 4u;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var s = 0u; s < quads; s++) {
            let x = br_x4[plane + s];
            let dy = through_activation4(br_dy4[plane + s], x, stats);
            sums = add_backward_terms(sums, x, dy, stats.mean);
        }
    }
    _ = backward_finish(0u, c, sums[0], sums[1]);
}

@compute @workgroup_size(64)
fn batchnorm_backward_reduce_quads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let stats = reduce_stats(c);
    let quads = p.spatial / 4u;
    let count = p.batch * quads;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < count; i += REDUCE) {
        let at = walk_offset_over(w, c, quads);
        let x = br_x4[at];
        sums = add_backward_terms(sums, x, through_activation4(br_dy4[at], x, stats), stats.mean);
        w = walk_next_over(w, quads);
    }
    let sum_dy = workgroup_sum(lane, sums[0]);
    let sum_dy_c = workgroup_sum(lane, sums[1]);
    _ = backward_finish(lane, c, sum_dy, sum_dy_c);
}

// The backward reductions over vec4s with x and dy read from textures (bindings 15 and 14,
// copies of bindings 1 and 2): the same sums in the same order.
@group(0) @binding(15) var br_x_texels: texture_2d<f32>;
@group(0) @binding(14) var br_dy_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn batchnorm_backward_reduce_serial_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    _ = serial_texel_backward(c, reduce_stats(c));
}

fn serial_texel_backward(c: u32, stats: ApplyStats) -> InputGradientStats {
    let quads = p.spatial / 4u;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var s = 0u; s < quads; s++) {
            let x = buffer_texel(br_x_texels, plane + s);
            let dy = through_activation4(buffer_texel(br_dy_texels, plane + s), x, stats);
            sums = add_backward_terms(sums, x, dy, stats.mean);
        }
    }
    return backward_finish(0u, c, sums[0], sums[1]);
}

@compute @workgroup_size(64)
fn batchnorm_backward_reduce_quads_textured(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    _ = workgroup_texel_backward(wid.x, lane, reduce_stats(wid.x));
}

fn workgroup_texel_backward(c: u32, lane: u32, stats: ApplyStats) -> InputGradientStats {
    let quads = p.spatial / 4u;
    let count = p.batch * quads;
    var sums = array<vec2<f32>, 2>(df(0.0), df(0.0));
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < count; i += REDUCE) {
        let at = walk_offset_over(w, c, quads);
        let x = buffer_texel(br_x_texels, at);
        let dy = through_activation4(buffer_texel(br_dy_texels, at), x, stats);
        sums = add_backward_terms(sums, x, dy, stats.mean);
        w = walk_next_over(w, quads);
    }
    let sum_dy = workgroup_sum(lane, sums[0]);
    let sum_dy_c = workgroup_sum(lane, sums[1]);
    return backward_finish(lane, c, sum_dy, sum_dy_c);
}

// The backward reduction and the input gradient in one dispatch, as train mode's forward
// kernels above: each channel's invocation (serial) or workgroup takes its sums as the
// reductions do, then the input gradient of its elements as
// batchnorm_backward_input_quads_textured does, with the values backward_finish stores: dx
// bit for bit, one dispatch where there were two. dx: binding 8.
@group(0) @binding(8) var<storage, read_write> br_dx4: array<vec4<f32>>;

fn store_input_gradient_texels(at: u32, s: InputGradientStats, applied: ApplyStats) {
    var v = input_gradient4(buffer_texel(br_dy_texels, at), buffer_texel(br_x_texels, at), s, applied);
    if (p.accumulate_input != 0u) { v = br_dx4[at] + v; }
    br_dx4[at] = v;
}

@compute @workgroup_size(64)
fn batchnorm_backward_serial_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let applied = reduce_stats(c);
    let s = serial_texel_backward(c, applied);
    let quads = p.spatial / 4u;
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * quads;
        for (var q = 0u; q < quads; q++) {
            store_input_gradient_texels(plane + q, s, applied);
        }
    }
}

// The same for channels whose planes do not come in fours, reading storage.
@group(0) @binding(8) var<storage, read_write> br_dx: array<f32>;

@compute @workgroup_size(64)
fn batchnorm_backward_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.channels) { return; }
    let applied = reduce_stats(c);
    let s = serial_backward(c, applied);
    for (var n = 0u; n < p.batch; n++) {
        let plane = (n * p.channels + c) * p.spatial;
        for (var i = plane; i < plane + p.spatial; i++) {
            let x = br_x[i];
            let g = centred_gradient(x, through_activation(br_dy[i], x, applied), s);
            br_dx[i] = accumulated(br_dx[i], applied.scale * g, p.accumulate_input);
        }
    }
}

@compute @workgroup_size(64)
fn batchnorm_backward_quads_textured(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x;
    let applied = reduce_stats(c);
    let s = workgroup_texel_backward(c, lane, applied);
    let quads = p.spatial / 4u;
    var w = walk_start_over(lane, quads);
    for (var i = lane; i < p.batch * quads; i += REDUCE) {
        store_input_gradient_texels(walk_offset_over(w, c, quads), s, applied);
        w = walk_next_over(w, quads);
    }
}

// Channel c's parameter gradients, and mean(dy) and beta for the input gradient, from its sums,
// stored by lane 0; every lane gets what the input gradient takes, the values stored.
fn backward_finish(lane: u32, c: u32, sum_dy: vec2<f32>, sum_dy_c: vec2<f32>) -> InputGradientStats {
    let ch = p.channels;
    let count = p.batch * p.spatial;
    let var_eps = vec2<f32>(br_saved[3u * ch + c], br_saved[4u * ch + c]);
    let mean_dy = df_div(sum_dy, df(f32(count)));
    let beta = df_div(sum_dy_c, df_mul(df(f32(count)), var_eps));
    if (lane == 0u) {
        let invstd = br_saved[ch + c];
        br_dbias[c] = accumulated(br_dbias[c], sum_dy.x, p.accumulate_bias);
        br_dweight[c] = accumulated(br_dweight[c], sum_dy_c.x * invstd, p.accumulate_weight);
        br_sums[c] = mean_dy.x;
        br_sums[ch + c] = mean_dy.y;
        br_sums[2u * ch + c] = beta.x;
        br_sums[3u * ch + c] = beta.y;
    }
    return InputGradientStats(vec2<f32>(br_saved[c], br_saved[2u * ch + c]), mean_dy, beta);
}

@group(0) @binding(1) var<storage, read> bi_x: array<f32>;
@group(0) @binding(2) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bi_saved: array<f32>;
@group(0) @binding(4) var<storage, read> bi_sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> bi_dx: array<f32>;

// Train: dx = weight * invstd * ((dy - mean(dy)) - (x - mean) * beta), in double-float.
// Eval (statistics are constants): dx = weight * invstd * dy. Invocations: every element run.
@compute @workgroup_size(64)
fn batchnorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = input_gradient_stats(run.z);
    let applied = input_apply_stats(run.z);
    for (var i = run.x; i < run.x + run.y; i++) {
        var g = bi_dy[i];
        // x is read only where it is used (train mode, or an activation's mask): software
        // adapters pay for every access.
        if (p.training != 0u || STORED_ACTIVATION != 0u) {
            let x = bi_x[i];
            g = through_activation(g, x, applied);
            if (p.training != 0u) { g = centred_gradient(x, g, s); }
        }
        bi_dx[i] = accumulated(bi_dx[i], applied.scale * g, p.accumulate_input);
    }
}

// What the train-mode input gradient needs of channel c besides apply's statistics, in
// double-float: the mean, mean(dy) and beta.
struct InputGradientStats {
    mean: vec2<f32>,
    mean_dy: vec2<f32>,
    beta: vec2<f32>,
}

// apply_stats, read from the input gradient's binding.
fn input_apply_stats(c: u32) -> ApplyStats {
    let ch = p.channels;
    return ApplyStats(bi_saved[6u * ch + c], vec2<f32>(bi_saved[c], bi_saved[2u * ch + c]), bi_saved[7u * ch + c]);
}

fn input_gradient_stats(c: u32) -> InputGradientStats {
    let ch = p.channels;
    return InputGradientStats(
        vec2<f32>(bi_saved[c], bi_saved[2u * ch + c]),
        vec2<f32>(bi_sums[c], bi_sums[ch + c]),
        vec2<f32>(bi_sums[2u * ch + c], bi_sums[3u * ch + c]),
    );
}

// (dy - mean(dy)) - (x - mean) * beta, in double-float, rounded to f32.
fn centred_gradient(x: f32, dy: f32, s: InputGradientStats) -> f32 {
    let centred = df_add_f32(df_neg(s.mean), x);
    let r = df_add(df_add_f32(df_neg(s.mean_dy), dy), df_neg(df_mul(centred, s.beta)));
    return r.x + r.y;
}

@group(0) @binding(1) var<storage, read> bi_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bi_dy4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bi_dx4: array<vec4<f32>>;

// batchnorm_backward_input on vec4 views, as batchnorm_apply_quads.
@compute @workgroup_size(64)
fn batchnorm_backward_input_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = input_gradient_stats(run.z);
    let applied = input_apply_stats(run.z);
    for (var i = run.x / 4u; i < (run.x + run.y) / 4u; i++) {
        var x = vec4<f32>();
        if (p.training != 0u || STORED_ACTIVATION != 0u) { x = bi_x4[i]; }
        store_input_gradient4(i, bi_dy4[i], x, s, applied);
    }
}

// dx for vec4 i from its dy and (train mode, or before an activation) x.
fn store_input_gradient4(i: u32, dy: vec4<f32>, x: vec4<f32>, s: InputGradientStats, applied: ApplyStats) {
    var v = input_gradient4(dy, x, s, applied);
    if (p.accumulate_input != 0u) { v = bi_dx4[i] + v; }
    bi_dx4[i] = v;
}

// dx's vec4 before it adds to what dx holds.
fn input_gradient4(dy: vec4<f32>, x: vec4<f32>, s: InputGradientStats, applied: ApplyStats) -> vec4<f32> {
    var g = dy;
    if (p.training != 0u || STORED_ACTIVATION != 0u) {
        g = through_activation4(g, x, applied);
        if (p.training != 0u) {
            g = vec4<f32>(
                centred_gradient(x.x, g.x, s),
                centred_gradient(x.y, g.y, s),
                centred_gradient(x.z, g.z, s),
                centred_gradient(x.w, g.w, s),
            );
        }
    }
    return applied.scale * g;
}

// batchnorm_backward_input_quads with x and dy read from textures (bindings 15 and 14,
// copies of bindings 1 and 2), for train mode or before an activation (where x is read).
@group(0) @binding(15) var bi_x_texels: texture_2d<f32>;
@group(0) @binding(14) var bi_dy_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn batchnorm_backward_input_quads_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let run = element_run(flat_index(gid, nwg));
    let s = input_gradient_stats(run.z);
    let applied = input_apply_stats(run.z);
    for (var i = run.x / 4u; i < (run.x + run.y) / 4u; i++) {
        store_input_gradient4(i, buffer_texel(bi_dy_texels, i), buffer_texel(bi_x_texels, i), s, applied);
    }
}
