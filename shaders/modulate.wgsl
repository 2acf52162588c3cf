// KernelDNA static modulation: K child kernels from one parent kernel,
//     child[k, co, f] = parent[co, f] * (1 + spatial[k, f % taps]) * (1 + filter[k, co])
// where f runs over one output channel's weights (c_in_per_group x kh x kw, taps = kh * kw).
// The children use rows first_child .. first_child + children of the attention tensors, so
// one attention tensor can serve children of several parents. Without a spatial attention
// (MobileNetV2, ConvNeXt) its factor is 1.
//
// Taps no consumer reads (a 3x3 kernel's outer ring on a 1x1 map, which the conv leaves out)
// need not be computed: `live_taps` has a bit per tap (row-major) that some consumer reads.
// The `_live` kernels and the fused attention gradient skip the others; a child's unread taps
// are left as they are, and their gradients, which the consumers write as zeros, add nothing.

struct ModulateParams {
    children: u32,
    first_child: u32,
    c_out: u32,
    fan: u32,
    taps: u32,
    has_spatial: u32,
    accumulate: u32,
    // Always 1.0, for double_float.wgsl.
    one: f32,
    live_taps: u32,
    // modulate_backward_3x3_serial: whether the parent's gradient adds to what is there.
    parent_accumulate: u32,
    // modulate_backward_3x3_serial_pair: where the second child's partial sums begin (pairs).
    next_partials: u32,
    // modulate_backward_3x3_serial(_pair): nonzero where dchild arrives as its conv's weight
    // gradient left it, [c_out][tap][input quad] vec4s from output channel to output channel
    // and tap to tap dchild_co_stride and dchild_tap_stride vec4s apart (src/graph/fuse.rs),
    // rather than in the weight's own layout.
    dchild_tap_major: u32,
    dchild_co_stride: u32,
    dchild_tap_stride: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: ModulateParams;

// Every kernel reads the attentions at bindings 2 and 3 (spatial: [rows][taps]; filter:
// [rows][c_out]).
@group(0) @binding(2) var<storage, read> spatial_attention: array<f32>;
@group(0) @binding(3) var<storage, read> filter_attention: array<f32>;

fn spatial_factor(spatial_value: f32) -> f32 {
    return select(1.0, 1.0 + spatial_value, p.has_spatial != 0u);
}

fn live(tap: u32) -> bool {
    return ((p.live_taps >> tap) & 1u) != 0u;
}

// ---------------------------------------------------------------- forward
@group(0) @binding(1) var<storage, read> fwd_parent: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_children: array<f32>;

// Invocations: children x c_out x fan.
@compute @workgroup_size(64)
fn modulate_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let per_child = p.c_out * p.fan;
    if (i >= p.children * per_child) { return; }
    let k = p.first_child + i / per_child;
    let e = i % per_child;
    let co = e / p.fan;
    let tap = (e % p.fan) % p.taps;
    let s = spatial_factor(spatial_attention[select(0u, k * p.taps + tap, p.has_spatial != 0u)]);
    fwd_children[i] = fwd_parent[e] * s * (1.0 + filter_attention[k * p.c_out + co]);
}

// The same, four consecutive weights per invocation (when fan is a multiple of four, so the
// four share an output channel); their taps are consecutive modulo taps.
@group(0) @binding(1) var<storage, read> fwd_parent4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> fwd_children4: array<vec4<f32>>;

// The spatial factors of weights f .. f + 3 of one output channel of child k.
fn spatial_factors(k: u32, f: u32) -> vec4<f32> {
    var s = vec4<f32>(1.0);
    if (p.has_spatial != 0u) {
        for (var j = 0u; j < 4u; j++) { s[j] = 1.0 + spatial_attention[k * p.taps + (f + j) % p.taps]; }
    }
    return s;
}

// Invocations: c_out x fan / 4 (one child per dispatch).
@compute @workgroup_size(64)
fn modulate_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_out * p.fan / 4u) { return; }
    let k = p.first_child;
    let s = spatial_factors(k, (4u * i) % p.fan);
    fwd_children4[i] = fwd_parent4[i] * s * (1.0 + filter_attention[k * p.c_out + 4u * i / p.fan]);
}

// 3x3 children with a spatial attention and input channels in fours (fan a multiple of 36):
// 36 consecutive weights (four rows of nine taps, one output channel) per invocation, as
// nine vec4s whose taps follow a fixed pattern, so the nine spatial factors are loaded once
// for all of them rather than four per vec4. The products are modulate_forward_quads'.
const TAPS_3X3: u32 = 9u;

// The taps of a 36-weight block's vec4s: component l of vec4 j is tap (4j + l) % 9.
const BLOCK_TAPS = array<vec4<u32>, TAPS_3X3>(
    vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(8u, 0u, 1u, 2u),
    vec4<u32>(3u, 4u, 5u, 6u), vec4<u32>(7u, 8u, 0u, 1u), vec4<u32>(2u, 3u, 4u, 5u),
    vec4<u32>(6u, 7u, 8u, 0u), vec4<u32>(1u, 2u, 3u, 4u), vec4<u32>(5u, 6u, 7u, 8u),
);

// The spatial factors of child k's 36-weight block, laid out as BLOCK_TAPS.
fn spatial_block(k: u32) -> array<vec4<f32>, TAPS_3X3> {
    var s: array<f32, TAPS_3X3>;
    for (var t = 0u; t < TAPS_3X3; t++) { s[t] = 1.0 + spatial_attention[k * TAPS_3X3 + t]; }
    var block: array<vec4<f32>, TAPS_3X3>;
    for (var j = 0u; j < TAPS_3X3; j++) {
        let t = BLOCK_TAPS[j];
        block[j] = vec4<f32>(s[t.x], s[t.y], s[t.z], s[t.w]);
    }
    return block;
}

// Invocations: c_out x fan / 36 (one child per dispatch).
@compute @workgroup_size(64)
fn modulate_forward_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_out * p.fan / (4u * TAPS_3X3)) { return; }
    let k = p.first_child;
    let s = spatial_block(k);
    let filter_factor = 1.0 + filter_attention[k * p.c_out + 4u * TAPS_3X3 * i / p.fan];
    for (var j = 0u; j < TAPS_3X3; j++) {
        let at = TAPS_3X3 * i + j;
        fwd_children4[at] = fwd_parent4[at] * s[j] * filter_factor;
    }
}

// The same products at the live taps only. Invocations: c_out x fan / taps (one row of taps
// each; one child per dispatch).
@compute @workgroup_size(64)
fn modulate_forward_live(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg);
    if (r >= p.c_out * p.fan / p.taps) { return; }
    let k = p.first_child;
    let filter_factor = 1.0 + filter_attention[k * p.c_out + r * p.taps / p.fan];
    for (var t = 0u; t < p.taps; t++) {
        if (live(t)) {
            let e = r * p.taps + t;
            let s = spatial_factor(spatial_attention[select(0u, k * p.taps + t, p.has_spatial != 0u)]);
            fwd_children[e] = fwd_parent[e] * s * filter_factor;
        }
    }
}

// ---------------------------------------------------------------- backward
@group(0) @binding(1) var<storage, read> bwd_parent: array<f32>;
@group(0) @binding(4) var<storage, read> bwd_dchildren: array<f32>;
@group(0) @binding(5) var<storage, read_write> bwd_out: array<f32>;

// dparent[co, f] = sum_k dchild[k, co, f] * (1 + spatial[k, tap]) * (1 + filter[k, co]).
// Invocations: c_out x fan.
@compute @workgroup_size(64)
fn modulate_backward_parent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    let per_child = p.c_out * p.fan;
    if (e >= per_child) { return; }
    let co = e / p.fan;
    let tap = (e % p.fan) % p.taps;
    var sum = 0.0;
    for (var c = 0u; c < p.children; c++) {
        let k = p.first_child + c;
        let s = spatial_factor(spatial_attention[select(0u, k * p.taps + tap, p.has_spatial != 0u)]);
        sum += bwd_dchildren[c * per_child + e] * s * (1.0 + filter_attention[k * p.c_out + co]);
    }
    bwd_out[e] = accumulated(bwd_out[e], sum, p.accumulate);
}

@group(0) @binding(4) var<storage, read> bwd_dchildren4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bwd_out4: array<vec4<f32>>;

// The same, four consecutive weights per invocation (fan a multiple of four).
// Invocations: c_out x fan / 4.
@compute @workgroup_size(64)
fn modulate_backward_parent_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let per_child = p.c_out * p.fan / 4u;
    if (i >= per_child) { return; }
    let co = 4u * i / p.fan;
    let f = (4u * i) % p.fan;
    var sum = vec4<f32>();
    for (var c = 0u; c < p.children; c++) {
        let k = p.first_child + c;
        sum += bwd_dchildren4[c * per_child + i] * spatial_factors(k, f) * (1.0 + filter_attention[k * p.c_out + co]);
    }
    bwd_out4[i] = select(sum, bwd_out4[i] + sum, p.accumulate != 0u);
}

// The same in 36-weight blocks (modulate_forward_3x3's case and layout).
// Invocations: c_out x fan / 36.
@compute @workgroup_size(64)
fn modulate_backward_parent_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let per_child = p.c_out * p.fan / 4u;
    if (TAPS_3X3 * i >= per_child) { return; }
    let co = 4u * TAPS_3X3 * i / p.fan;
    var sum: array<vec4<f32>, TAPS_3X3>;
    for (var c = 0u; c < p.children; c++) {
        let k = p.first_child + c;
        let s = spatial_block(k);
        let filter_factor = 1.0 + filter_attention[k * p.c_out + co];
        for (var j = 0u; j < TAPS_3X3; j++) {
            sum[j] += bwd_dchildren4[c * per_child + TAPS_3X3 * i + j] * s[j] * filter_factor;
        }
    }
    for (var j = 0u; j < TAPS_3X3; j++) {
        let at = TAPS_3X3 * i + j;
        bwd_out4[at] = select(sum[j], bwd_out4[at] + sum[j], p.accumulate != 0u);
    }
}

// The same at the live taps; the others' gradient is zero (written when not accumulating).
// Invocations: c_out x fan / taps (one row of taps each).
@compute @workgroup_size(64)
fn modulate_backward_parent_live(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_index(gid, nwg);
    if (r >= p.c_out * p.fan / p.taps) { return; }
    let co = r * p.taps / p.fan;
    let per_child = p.c_out * p.fan;
    for (var t = 0u; t < p.taps; t++) {
        let e = r * p.taps + t;
        var sum = 0.0;
        if (live(t)) {
            for (var c = 0u; c < p.children; c++) {
                let k = p.first_child + c;
                let s = spatial_factor(spatial_attention[select(0u, k * p.taps + t, p.has_spatial != 0u)]);
                sum += bwd_dchildren[c * per_child + e] * s * (1.0 + filter_attention[k * p.c_out + co]);
            }
            bwd_out[e] = accumulated(bwd_out[e], sum, p.accumulate);
        } else if (p.accumulate == 0u) {
            bwd_out[e] = 0.0;
        }
    }
}

// The attention gradients sum over a whole kernel (c_out x c_in x taps terms, 262144 per
// tap in ResNet18's layer4) and come out far smaller than the terms: each reduction runs in a
// workgroup, in double-float, in a fixed order.

// dspatial[k, tap] = sum_{co, f with f % taps == tap} dchild[k, co, f] * parent[co, f] * (1 + filter[k, co]).
// Workgroups: children x taps; writes rows first_child .. of the spatial gradient.
@compute @workgroup_size(64)
fn modulate_backward_spatial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x / p.taps;
    let tap = wid.x % p.taps;
    let k = p.first_child + c;
    let per_child = p.c_out * p.fan;
    let rows = p.fan / p.taps;
    var sum = df(0.0);
    // Element j = co * rows + row, stepped by REDUCE without divisions (a scalar loop per lane
    // on software adapters).
    var co = lane / rows;
    var row = lane % rows;
    for (var j = lane; j < p.c_out * rows; j += REDUCE) {
        let e = co * p.fan + row * p.taps + tap;
        let term = two_prod(bwd_dchildren[c * per_child + e], bwd_parent[e]);
        sum = df_add(sum, df_mul(term, df(1.0 + filter_attention[k * p.c_out + co])));
        co += REDUCE / rows;
        row += REDUCE % rows;
        if (row >= rows) {
            row -= rows;
            co += 1u;
        }
    }
    sum = workgroup_sum(lane, sum);
    if (lane == 0u) {
        let at = k * p.taps + tap;
        bwd_out[at] = accumulated(bwd_out[at], sum.x + sum.y, p.accumulate);
    }
}

// dfilter[k, co] = sum_f dchild[k, co, f] * parent[co, f] * (1 + spatial[k, f % taps]).
// Workgroups: children x c_out; writes rows first_child .. of the filter gradient.
@compute @workgroup_size(64)
fn modulate_backward_filter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let c = wid.x / p.c_out;
    let co = wid.x % p.c_out;
    let k = p.first_child + c;
    let per_child = p.c_out * p.fan;
    var sum = df(0.0);
    var tap = lane % p.taps;
    for (var f = lane; f < p.fan; f += REDUCE) {
        let e = co * p.fan + f;
        let s = spatial_factor(spatial_attention[select(0u, k * p.taps + tap, p.has_spatial != 0u)]);
        sum = df_add(sum, df_mul(two_prod(bwd_dchildren[c * per_child + e], bwd_parent[e]), df(s)));
        tap += REDUCE % p.taps;
        if (tap >= p.taps) { tap -= p.taps; }
    }
    sum = workgroup_sum(lane, sum);
    if (lane == 0u) {
        let at = k * p.c_out + co;
        bwd_out[at] = accumulated(bwd_out[at], sum.x + sum.y, p.accumulate);
    }
}

// The same for a child without a spatial attention whose output channels' weights come in
// fours, one invocation per output channel adding its weights in order (src/ops/modulate.rs
// `serial_filter`): the workgroup tree's barriers cost software adapters more than a
// channel's sum, ConvNeXt's and MobileNetV2's pointwise children alike. The factor of the
// missing spatial attention, one, changes no double-float term. Invocations: c_out.
@group(0) @binding(1) var<storage, read> bwd_parent4: array<vec4<f32>>;

// Adds four terms dchild * parent of consecutive weights, in order.
fn add_products4(sum: vec2<f32>, d: vec4<f32>, w: vec4<f32>) -> vec2<f32> {
    var out = sum;
    for (var j = 0u; j < 4u; j++) {
        out = df_add(out, two_prod(d[j], w[j]));
    }
    return out;
}

fn store_filter_gradient(co: u32, sum: vec2<f32>) {
    let at = p.first_child * p.c_out + co;
    bwd_out[at] = accumulated(bwd_out[at], sum.x + sum.y, p.accumulate);
}

@compute @workgroup_size(64)
fn modulate_backward_filter_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let co = flat_index(gid, nwg);
    if (co >= p.c_out) { return; }
    let quads = p.fan / 4u;
    var sum = df(0.0);
    for (var j = 0u; j < quads; j++) {
        let q = co * quads + j;
        sum = add_products4(sum, bwd_dchildren4[q], bwd_parent4[q]);
    }
    store_filter_gradient(co, sum);
}

// Its twin reading the parent (binding 15) and dchild (binding 14) through textures (see the
// serial passes below): the same sums in the same order.
@compute @workgroup_size(64)
fn modulate_backward_filter_serial_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let co = flat_index(gid, nwg);
    if (co >= p.c_out) { return; }
    let quads = p.fan / 4u;
    var sum = df(0.0);
    for (var j = 0u; j < quads; j++) {
        let q = co * quads + j;
        sum = add_products4(sum, buffer_texel(bwd_dchild_texels, q), buffer_texel(bwd_parent_texels, q));
    }
    store_filter_gradient(co, sum);
}

// Both attention gradients of a 3x3 child in one pass over the kernel (ResNet children),
// instead of one pass each: per output channel co, the terms dchild * parent of each tap are
// summed over the input channels (double-float), giving per-tap partial sums that
// modulate_backward_spatial_partials adds over co in order, and dfilter[k, co] from them at
// once: the spatial factor depends on the tap alone, so
// dfilter[k, co] = sum_t (1 + spatial[k, t]) * sum_ci dchild * parent.
// Workgroups: c_out (one child per dispatch). Partials: [c_out][9] double-float pairs.
@group(0) @binding(6) var<storage, read_write> tap_partials: array<vec2<f32>>;
var<workgroup> tap_tree: array<vec2<f32>, TAPS_3X3 * REDUCE>; // [tap][lane]

@compute @workgroup_size(64)
fn modulate_backward_attention_3x3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let co = wid.x;
    let rows = p.fan / TAPS_3X3;
    var tap_sum: array<vec2<f32>, TAPS_3X3>;
    for (var row = lane; row < rows; row += REDUCE) {
        let e = co * p.fan + row * TAPS_3X3;
        for (var t = 0u; t < TAPS_3X3; t++) {
            if (live(t)) { tap_sum[t] = df_add(tap_sum[t], two_prod(bwd_dchildren[e + t], bwd_parent[e + t])); }
        }
    }
    finish_attention(co, lane, tap_sum);
}

// The same when every tap is live and the input channels come in fours (fan a multiple of 36):
// a lane takes four rows at a time, as nine vec4s whose taps are BLOCK_TAPS, loading a
// quarter as often. Each lane's rows differ from the scalar kernel's, so
// the sums may differ in their last bits; one kernel serves a shape, so runs repeat exactly.

// Adds the four terms d * w to the taps t of `sum`.
fn add_terms(sum: ptr<function, array<vec2<f32>, TAPS_3X3>>, d: vec4<f32>, w: vec4<f32>, t: vec4<u32>) {
    (*sum)[t.x] = df_add((*sum)[t.x], two_prod(d.x, w.x));
    (*sum)[t.y] = df_add((*sum)[t.y], two_prod(d.y, w.y));
    (*sum)[t.z] = df_add((*sum)[t.z], two_prod(d.z, w.z));
    (*sum)[t.w] = df_add((*sum)[t.w], two_prod(d.w, w.w));
}

// Adds the 36 terms of the block whose first vec4 is e.
fn add_block(sum: ptr<function, array<vec2<f32>, TAPS_3X3>>, e: u32) {
    // The calls stay unrolled so that every index into the sums is a constant.
    add_terms(sum, bwd_dchildren4[e], bwd_parent4[e], BLOCK_TAPS[0]);
    add_terms(sum, bwd_dchildren4[e + 1u], bwd_parent4[e + 1u], BLOCK_TAPS[1]);
    add_terms(sum, bwd_dchildren4[e + 2u], bwd_parent4[e + 2u], BLOCK_TAPS[2]);
    add_terms(sum, bwd_dchildren4[e + 3u], bwd_parent4[e + 3u], BLOCK_TAPS[3]);
    add_terms(sum, bwd_dchildren4[e + 4u], bwd_parent4[e + 4u], BLOCK_TAPS[4]);
    add_terms(sum, bwd_dchildren4[e + 5u], bwd_parent4[e + 5u], BLOCK_TAPS[5]);
    add_terms(sum, bwd_dchildren4[e + 6u], bwd_parent4[e + 6u], BLOCK_TAPS[6]);
    add_terms(sum, bwd_dchildren4[e + 7u], bwd_parent4[e + 7u], BLOCK_TAPS[7]);
    add_terms(sum, bwd_dchildren4[e + 8u], bwd_parent4[e + 8u], BLOCK_TAPS[8]);
}

@compute @workgroup_size(64)
fn modulate_backward_attention_3x3_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let co = wid.x;
    let blocks = p.fan / (4u * TAPS_3X3);
    var tap_sum: array<vec2<f32>, TAPS_3X3>;
    for (var b = lane; b < blocks; b += REDUCE) {
        add_block(&tap_sum, (co * blocks + b) * TAPS_3X3);
    }
    finish_attention(co, lane, tap_sum);
}

// The same for output channels of few blocks (src/ops/modulate.rs `SERIAL_MAX_BLOCKS`): one
// invocation per output channel adds its blocks in order, without the workgroup tree, whose
// barriers cost software adapters more than a channel's few blocks. Invocations: c_out.
@compute @workgroup_size(64)
fn modulate_backward_attention_3x3_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let co = flat_index(gid, nwg);
    if (co >= p.c_out) { return; }
    let blocks = p.fan / (4u * TAPS_3X3);
    var tap_sum: array<vec2<f32>, TAPS_3X3>;
    for (var b = 0u; b < blocks; b++) {
        add_block(&tap_sum, (co * blocks + b) * TAPS_3X3);
    }
    store_attention(co, tap_sum);
}

// The parent's gradient (modulate_backward_parent_3x3) and both attention gradients
// (modulate_backward_attention_3x3_serial) of one child in one pass, where all are wanted:
// each block's dchild is loaded once for both. Every sum adds the same terms in the same order
// as those two kernels. Invocations: c_out. The parent's gradient: binding 7.
@group(0) @binding(7) var<storage, read_write> bwd_parent_grad4: array<vec4<f32>>;

// The serial passes read what they sum through textures, copied there before the dispatch
// (src/gpu/kernel.rs `Gpu::dispatch_with_textures`; on every adapter, as they are the size of
// a weight): software adapters gather a texel fetch's lanes in registers, where a storage
// load whose address differs per lane loops over the lanes through memory. The parent
// (binding 1's values), the pass's first child's dchild (binding 4's), the parent's gradient so
// far, and the second child's dchild in a pair. The parent's gradient so far is what binding 7
// holds, or in the `_own` passes the parent's own conv's weight gradient, left unreduced in
// the same layout as the children's (src/graph/fuse.rs).
@group(0) @binding(15) var bwd_parent_texels: texture_2d<f32>;
@group(0) @binding(14) var bwd_dchild_texels: texture_2d<f32>;
@group(0) @binding(13) var bwd_parent_grad_texels: texture_2d<f32>;
@group(0) @binding(12) var bwd_next_dchild_texels: texture_2d<f32>;

// Block (co, b) of the gradient in texture `source` (a dchild, or the parent's own conv's
// gradient; its first vec4 at e in the weight's layout) as nine vec4s of the weight's layout,
// wherever it lies (see dchild_tap_major): nine vec4 loads either way, the taps' vec4s over
// four input channels transposed in registers.
fn dchild_block(source: texture_2d<f32>, co: u32, b: u32, e: u32) -> array<vec4<f32>, TAPS_3X3> {
    let tap_major = p.dchild_tap_major != 0u;
    let first = co * p.dchild_co_stride + b;
    let t = p.dchild_tap_stride;
    var v: array<vec4<f32>, TAPS_3X3>;
    for (var j = 0u; j < TAPS_3X3; j++) {
        v[j] = buffer_texel(source, select(e + j, first + j * t, tap_major));
    }
    return block_of(tap_major, v);
}

// Block (co, b) of the parent's gradient so far: its own conv's unreduced gradient (`own`, a
// constant of each entry point) or what binding 7 held before the pass.
fn parent_gradient_block(own: bool, co: u32, b: u32, e: u32) -> array<vec4<f32>, TAPS_3X3> {
    if (own) { return dchild_block(bwd_parent_grad_texels, co, b, e); }
    var v: array<vec4<f32>, TAPS_3X3>;
    for (var j = 0u; j < TAPS_3X3; j++) { v[j] = buffer_texel(bwd_parent_grad_texels, e + j); }
    return v;
}

// Nine loaded vec4s as a block of the weight's layout: as they are, or with `tap_major` the
// nine taps' vec4s over four input channels, transposed (component l of block vec4 j is tap
// (4 j + l) % 9 of input channel (4 j + l) / 9).
fn block_of(tap_major: bool, v: array<vec4<f32>, TAPS_3X3>) -> array<vec4<f32>, TAPS_3X3> {
    return array<vec4<f32>, TAPS_3X3>(
        select(v[0], vec4<f32>(v[0].x, v[1].x, v[2].x, v[3].x), tap_major),
        select(v[1], vec4<f32>(v[4].x, v[5].x, v[6].x, v[7].x), tap_major),
        select(v[2], vec4<f32>(v[8].x, v[0].y, v[1].y, v[2].y), tap_major),
        select(v[3], vec4<f32>(v[3].y, v[4].y, v[5].y, v[6].y), tap_major),
        select(v[4], vec4<f32>(v[7].y, v[8].y, v[0].z, v[1].z), tap_major),
        select(v[5], vec4<f32>(v[2].z, v[3].z, v[4].z, v[5].z), tap_major),
        select(v[6], vec4<f32>(v[6].z, v[7].z, v[8].z, v[0].w), tap_major),
        select(v[7], vec4<f32>(v[1].w, v[2].w, v[3].w, v[4].w), tap_major),
        select(v[8], vec4<f32>(v[5].w, v[6].w, v[7].w, v[8].w), tap_major),
    );
}

// Vec4 j (d) of the block at e: the attention sums' terms, and the parent gradient's term
// d * s * f, added to `old` (the parent's gradient so far) where it accumulates.
fn add_block_vec4(
    sum: ptr<function, array<vec2<f32>, TAPS_3X3>>,
    e: u32,
    j: u32,
    d: vec4<f32>,
    old: vec4<f32>,
    s: vec4<f32>,
    f: f32,
) {
    add_terms(sum, d, buffer_texel(bwd_parent_texels, e + j), BLOCK_TAPS[j]);
    let term = d * s * f;
    bwd_parent_grad4[e + j] = select(term, old + term, p.parent_accumulate != 0u);
}

@compute @workgroup_size(64)
fn modulate_backward_3x3_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    serial_3x3(flat_index(gid, nwg), false);
}

// The same, the parent's gradient starting from its own conv's unreduced gradient.
@compute @workgroup_size(64)
fn modulate_backward_3x3_serial_own(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    serial_3x3(flat_index(gid, nwg), true);
}

fn serial_3x3(co: u32, own: bool) {
    if (co >= p.c_out) { return; }
    let k = p.first_child;
    let s = spatial_block(k);
    let f = 1.0 + filter_attention[k * p.c_out + co];
    let blocks = p.fan / (4u * TAPS_3X3);
    var tap_sum: array<vec2<f32>, TAPS_3X3>;
    for (var b = 0u; b < blocks; b++) {
        let e = (co * blocks + b) * TAPS_3X3;
        let d = dchild_block(bwd_dchild_texels, co, b, e);
        let old = parent_gradient_block(own, co, b, e);
        // Unrolled, so that every index into the sums is a constant.
        add_block_vec4(&tap_sum, e, 0u, d[0], old[0], s[0], f);
        add_block_vec4(&tap_sum, e, 1u, d[1], old[1], s[1], f);
        add_block_vec4(&tap_sum, e, 2u, d[2], old[2], s[2], f);
        add_block_vec4(&tap_sum, e, 3u, d[3], old[3], s[3], f);
        add_block_vec4(&tap_sum, e, 4u, d[4], old[4], s[4], f);
        add_block_vec4(&tap_sum, e, 5u, d[5], old[5], s[5], f);
        add_block_vec4(&tap_sum, e, 6u, d[6], old[6], s[6], f);
        add_block_vec4(&tap_sum, e, 7u, d[7], old[7], s[7], f);
        add_block_vec4(&tap_sum, e, 8u, d[8], old[8], s[8], f);
    }
    store_attention(co, tap_sum);
}

// The same for two children, k and k + 1, of one parent in one pass (ResNet18's stages have
// two children of one kernel): the parent's weights are loaded once for both, and its gradient
// takes both children's terms, in child order, in one store. Every sum adds the terms the two
// one-child passes add, in the same order. Child k + 1's partials from pair p.next_partials
// on (src/ops/modulate.rs `next_partials`).

// Vec4 j of the block at e for both children (add_block_vec4's sums and term for each).
fn add_pair_vec4(
    sum: ptr<function, array<vec2<f32>, TAPS_3X3>>,
    next_sum: ptr<function, array<vec2<f32>, TAPS_3X3>>,
    e: u32,
    j: u32,
    d: vec4<f32>,
    next_d: vec4<f32>,
    old: vec4<f32>,
    s: vec4<f32>,
    next_s: vec4<f32>,
    f: vec2<f32>,
) {
    let at = e + j;
    let w = buffer_texel(bwd_parent_texels, at);
    add_terms(sum, d, w, BLOCK_TAPS[j]);
    add_terms(next_sum, next_d, w, BLOCK_TAPS[j]);
    let term = d * s * f.x;
    let first = select(term, old + term, p.parent_accumulate != 0u);
    bwd_parent_grad4[at] = first + next_d * next_s * f.y;
}

@compute @workgroup_size(64)
fn modulate_backward_3x3_serial_pair(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    serial_pair_3x3(flat_index(gid, nwg), false);
}

// The same, the parent's gradient starting from its own conv's unreduced gradient.
@compute @workgroup_size(64)
fn modulate_backward_3x3_serial_pair_own(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    serial_pair_3x3(flat_index(gid, nwg), true);
}

fn serial_pair_3x3(co: u32, own: bool) {
    if (co >= p.c_out) { return; }
    let k = p.first_child;
    let s = spatial_block(k);
    let next_s = spatial_block(k + 1u);
    let f = vec2<f32>(1.0 + filter_attention[k * p.c_out + co], 1.0 + filter_attention[(k + 1u) * p.c_out + co]);
    let blocks = p.fan / (4u * TAPS_3X3);
    var tap_sum: array<vec2<f32>, TAPS_3X3>;
    var next_sum: array<vec2<f32>, TAPS_3X3>;
    for (var b = 0u; b < blocks; b++) {
        let e = (co * blocks + b) * TAPS_3X3;
        let d = dchild_block(bwd_dchild_texels, co, b, e);
        let next_d = dchild_block(bwd_next_dchild_texels, co, b, e);
        let old = parent_gradient_block(own, co, b, e);
        // Unrolled, so that every index into the sums is a constant.
        add_pair_vec4(&tap_sum, &next_sum, e, 0u, d[0], next_d[0], old[0], s[0], next_s[0], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 1u, d[1], next_d[1], old[1], s[1], next_s[1], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 2u, d[2], next_d[2], old[2], s[2], next_s[2], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 3u, d[3], next_d[3], old[3], s[3], next_s[3], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 4u, d[4], next_d[4], old[4], s[4], next_s[4], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 5u, d[5], next_d[5], old[5], s[5], next_s[5], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 6u, d[6], next_d[6], old[6], s[6], next_s[6], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 7u, d[7], next_d[7], old[7], s[7], next_s[7], f);
        add_pair_vec4(&tap_sum, &next_sum, e, 8u, d[8], next_d[8], old[8], s[8], next_s[8], f);
    }
    store_child_attention(k, co, tap_sum, 0u);
    store_child_attention(k + 1u, co, next_sum, p.next_partials);
}

// Sums each tap's lane sums over the workgroup and stores output channel co's partials and
// filter gradient. The nine taps share one tree (one barrier per level rather than per level
// and tap; each tap's tree is workgroup_sum's). An unread tap's terms are all zero (its
// dchild is); its partial is zero.
fn finish_attention(co: u32, lane: u32, tap_sum: array<vec2<f32>, TAPS_3X3>) {
    for (var t = 0u; t < TAPS_3X3; t++) { tap_tree[t * REDUCE + lane] = tap_sum[t]; }
    workgroupBarrier();
    for (var stride = REDUCE / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            for (var t = 0u; t < TAPS_3X3; t++) {
                let at = t * REDUCE + lane;
                tap_tree[at] = df_add(tap_tree[at], tap_tree[at + stride]);
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        var totals: array<vec2<f32>, TAPS_3X3>;
        for (var t = 0u; t < TAPS_3X3; t++) { totals[t] = tap_tree[t * REDUCE]; }
        store_attention(co, totals);
    }
}

// Stores output channel co's per-tap sums as its partials, and its filter gradient.
fn store_attention(co: u32, totals: array<vec2<f32>, TAPS_3X3>) {
    store_child_attention(p.first_child, co, totals, 0u);
}

// The same for child k, its partials from `first` on.
fn store_child_attention(k: u32, co: u32, totals: array<vec2<f32>, TAPS_3X3>, first: u32) {
    var filter_sum = df(0.0);
    for (var t = 0u; t < TAPS_3X3; t++) {
        tap_partials[first + co * TAPS_3X3 + t] = totals[t];
        filter_sum = df_add(filter_sum, df_mul(totals[t], df(1.0 + spatial_attention[k * TAPS_3X3 + t])));
    }
    let at = k * p.c_out + co;
    bwd_out[at] = accumulated(bwd_out[at], filter_sum.x + filter_sum.y, p.accumulate);
}

// dspatial[k, tap] = sum_co partial[co][tap] * (1 + filter[k, co]), in double-float.
// Workgroups: 9 (one child per dispatch).
@compute @workgroup_size(64)
fn modulate_backward_spatial_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let tap = wid.x;
    let k = p.first_child;
    var sum = df(0.0);
    for (var co = lane; co < p.c_out; co += REDUCE) {
        sum = df_add(sum, df_mul(tap_partials[co * TAPS_3X3 + tap], df(1.0 + filter_attention[k * p.c_out + co])));
    }
    sum = workgroup_sum(lane, sum);
    if (lane == 0u) {
        let at = k * TAPS_3X3 + tap;
        bwd_out[at] = accumulated(bwd_out[at], sum.x + sum.y, p.accumulate);
    }
}
