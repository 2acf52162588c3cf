// Ungrouped convolution as implicit GEMM over channels-last copies, with register tiles.
//
// The activations are first copied to a zero-padded channels-last buffer
// [batch][in_h][in_w][in_quads] of vec4s (channels padded to a multiple of 4), so the inner
// loop has no bounds checks and loads four input channels per access. Software adapters run
// invocations in SIMD lanes and pay a scalar loop per lane for every storage load, but load a
// uniform buffer's value once for the whole workgroup when its index is the same in every
// invocation. So the forward kernel reads its weights from a uniform buffer — in blocks
// of at most STEPS (tap, input quad) steps and 64 KiB, one dispatch per block and output-channel
// tile, later blocks adding to the output — and each invocation holds a large block of
// results (P pixels x C channels, P * C = 512) per input load.
//
// The `@template` entry points below are instantiated per tile size by src/gpu/conv_tiles.rs:
// the name's size suffix is filled in, and each marker comment becomes the unrolled code
// for that size (named values only: software adapters keep a block in registers only when
// every access is static). Every result sums its terms in the same order whatever the tile
// size, so the choice of size never changes a result.
//
// The input gradient is the forward kernel run over dy (dilated by the stride and padded by
// kernel - 1 - pad) with the weights flipped and transposed; the weight gradient splits its
// reduction over batch-wide pixels into `chunks` partial sums that a second kernel adds in a
// fixed order.

struct TileParams {
    // Channels-last input: batch x in_h x in_w x in_quads vec4s.
    batch: u32,
    in_h: u32,
    in_w: u32,
    in_quads: u32,
    // Output: [batch][c_out][out_h][out_w]; weights rows padded to out_pad channels.
    c_out: u32,
    out_h: u32,
    out_w: u32,
    out_pad: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    // Copies: the source [batch][channels][src_h][src_w], placed at (top, left) of the
    // destination with dilation - 1 zeros between neighbours.
    channels: u32,
    src_h: u32,
    src_w: u32,
    dilation_h: u32,
    dilation_w: u32,
    top: i32,
    left: i32,
    // Weight-gradient reduction split: chunks of chunk_len batch-wide pixels.
    chunks: u32,
    chunk_len: u32,
    accumulate: u32,
    // Weight packing: the weight's [c_out][c_in][kernel_h][kernel_w] sizes.
    weight_out: u32,
    weight_in: u32,
    // Forward-style kernels: output channels per tile (packing) and, per dispatch, the first
    // output channel and the (tap, input quad) steps of its weight block.
    tile: u32,
    c0: u32,
    tap0: u32,
    tap1: u32,
    quad0: u32,
    quad1: u32,
    // The weight's own kernel: kernel_h x kernel_w above are its used taps, from (ky0, kx0) on
    // (taps that only ever meet padding are skipped).
    ky0: u32,
    kx0: u32,
    full_kernel_w: u32,
    full_taps: u32,
    // One phase of a strided input gradient (zero: a dense output and a plain flip). Outputs
    // go to every store_stride-th pixel of [batch][c_out][store_h][store_w] from (store_y0,
    // store_x0); the kernel's tap (a, b) is tap (tap0 + tap_step * (a, b)) of the used taps
    // (flip_h x flip_w), flipped.
    store_h: u32,
    store_w: u32,
    store_stride_h: u32,
    store_stride_w: u32,
    store_y0: u32,
    store_x0: u32,
    flip_h: u32,
    flip_w: u32,
    tap_step_h: u32,
    tap_step_w: u32,
    tap0_h: u32,
    tap0_w: u32,
    // Where the first output's window starts in the input copy (one band of a convolution
    // split by the taps its outputs read; zero otherwise).
    window_y0: u32,
    window_x0: u32,
    // The input copy multiplies each (sample, channel) by copy_gate[sample][channel].
    gate: u32,
    // A band reading weights packed once for its whole pass (see packed_block): the pass's
    // taps, taps to a row, and the band's first tap (row, column) among them; zero when the
    // weights were packed for the band's taps alone.
    pack_taps: u32,
    pack_kernel_w: u32,
    pack_y0: u32,
    pack_x0: u32,
    // The weight-gradient reduction's passes (see reduce_weight_partials).
    band_count: u32,
    pass_per_tap: u32,
    // reduce_weight_partials_3x3_strided and _1x1: where (chunk, output channel, tap)'s sums lie.
    co_stride: u32,
    tap_stride: u32,
    chunk_stride: u32,
    // pack_weight_forward_quads, where it also packs the input gradient's weights (back_tile
    // nonzero): that packing's tile width, blocks per tile and input quads (the weight's
    // output quads).
    back_tile: u32,
    back_blocks: u32,
    back_quads: u32,
    // pack_weight_forward_quads: nonzero where the weight bound is a KernelDNA parent and the
    // packing is of its child `child_row` (see child_spatial). The `_child` tiles, which run
    // child `child_row` over its parent's packing: 1 for its forward pass (each output
    // channel's filter factor), 2 for its input gradient (each input lane's).
    child_modulated: u32,
    child_row: u32,
    // Kernels that read textures (family conv_tile_subgroup's forward tiles): log2 of their
    // texels per row.
    texture_shift: u32,
    bands: array<vec4<u32>, 9>,
    // pack_weight_forward_quads: where weight tap t's rows begin among a tile's packed blocks
    // (vec4s), ~0 for a tap the pass does not read; back_tap_rows: the same in the input
    // gradient's packing.
    tap_rows: array<vec4<u32>, 3>,
    back_tap_rows: array<vec4<u32>, 3>,
    // The `_child` tiles: the weight's own tap (row-major in its full kernel) that each tap of
    // the pass reads, for its spatial factor.
    child_taps: array<vec4<u32>, 3>,
    // A convolution computed with its kernel's columns folded into its input channels
    // (fold_channels nonzero; see to_channels_last_folded): the source's channels, the
    // kernel's columns, and the column stride and padding.
    fold_channels: u32,
    fold_kernel_w: u32,
    fold_stride: u32,
    fold_left: u32,
}

@group(0) @binding(0) var<uniform> p: TileParams;

// Invocations per workgroup of the kernels here but the lanes kernel (src/gpu/conv_tiles.rs `TILE_WORKGROUP`):
// small, so that the few large tiles of a late-stage layer still spread over every core.
const TILE_WORKGROUP: u32 = 16u;
// Invocations per workgroup of the weight-gradient tiles and the lanes kernel, whose lanes take
// (tap, input tile) pairs or channel tiles, of which small passes have few: one vector of a
// software adapter (8 lanes at 256 bits, 16 at 512), which runs a workgroup as whole vectors
// (src/gpu/mod.rs `Gpu::tile_lanes`, a pipeline constant). Each invocation's work and sums
// are the same whatever the value.
override TILE_LANES: u32 = 8u;
// Output channels per weight-gradient tile.
const WEIGHT_TILE_OUT: u32 = 32u;

fn tile_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * TILE_WORKGROUP;
}

// ---------------------------------------------------------------- copies and packing
@group(0) @binding(1) var<storage, read> copy_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> copy_dst: array<vec4<f32>>;
// A router's gate [batch][channels] (`p.gate`): the copy holds x * gate, the product the
// separate channel_scale op would have stored.
@group(0) @binding(3) var<storage, read> copy_gate: array<f32>;

// Where input channel ci's tap t lies among one output channel's weights: ci * full_taps + t,
// or with columns folded into channels (ci = kx * fold_channels + c, taps the kernel's rows)
// the source weight's [c][t][kx].
fn weight_offset(ci: u32, t: u32) -> u32 {
    if (p.fold_channels == 0u) { return ci * p.full_taps + t; }
    let c = ci % p.fold_channels;
    let kx = ci / p.fold_channels;
    return (c * p.full_taps + t) * p.fold_kernel_w + kx;
}

// [batch][channels][src_h][src_w] -> [batch][in_h][in_w][in_quads] vec4s, zero outside the
// placed (and dilated) source and in the padding channels. Invocations: every destination vec4.
@compute @workgroup_size(64)
fn to_channels_last(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.in_h * p.in_w * p.in_quads) { return; }
    let quad = i % p.in_quads;
    let xd = i32((i / p.in_quads) % p.in_w) - p.left;
    let yd = i32((i / (p.in_quads * p.in_w)) % p.in_h) - p.top;
    let n = i / (p.in_quads * p.in_w * p.in_h);
    let dh = i32(p.dilation_h);
    let dw = i32(p.dilation_w);
    let sx = xd / dw;
    let sy = yd / dh;
    let inside = xd >= 0 && yd >= 0 && xd % dw == 0 && yd % dh == 0 && sx < i32(p.src_w) && sy < i32(p.src_h);
    var v = vec4<f32>();
    if (inside) {
        let plane = p.src_h * p.src_w;
        let at = ((n * p.channels + quad * 4u) * p.src_h + u32(sy)) * p.src_w + u32(sx);
        for (var k = 0u; k < 4u; k++) {
            let c = quad * 4u + k;
            if (c < p.channels) {
                v[k] = copy_src[at + k * plane];
                if (p.gate != 0u) { v[k] *= copy_gate[n * p.channels + c]; }
            }
        }
    }
    copy_dst[i] = v;
}

// The copy of a convolution whose kernel columns are folded into its input channels: column
// ox's channel kx * fold_channels + c holds source channel c at column
// ox * fold_stride + kx - fold_left (zero outside the source), so that a kernel_h x 1
// convolution at column stride 1 over those channels computes the kh x kw one. A stem's three
// channels then fill whole quads, and each tap's loop runs over several. Rows are placed as
// to_channels_last places them. Invocations: every destination vec4.
@compute @workgroup_size(64)
fn to_channels_last_folded(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.batch * p.in_h * p.in_w * p.in_quads) { return; }
    let quad = i % p.in_quads;
    let ox = (i / p.in_quads) % p.in_w;
    let yd = i32((i / (p.in_quads * p.in_w)) % p.in_h) - p.top;
    let n = i / (p.in_quads * p.in_w * p.in_h);
    var v = vec4<f32>();
    if (yd >= 0 && yd < i32(p.src_h)) {
        // Channel d = quad * 4 + k is (kx, c); stepped rather than divided per k (software
        // adapters divide lane by lane).
        var kx = quad * 4u / p.fold_channels;
        var c = quad * 4u - kx * p.fold_channels;
        let x0 = i32(ox * p.fold_stride) - i32(p.fold_left);
        let plane = p.src_h * p.src_w;
        let row = (n * p.fold_channels * p.src_h + u32(yd)) * p.src_w;
        for (var k = 0u; k < 4u; k++) {
            let sx = x0 + i32(kx);
            if (quad * 4u + k < p.channels && sx >= 0 && sx < i32(p.src_w)) {
                v[k] = copy_src[row + c * plane + u32(sx)];
            }
            c++;
            if (c == p.fold_channels) {
                c = 0u;
                kx++;
            }
        }
    }
    copy_dst[i] = v;
}

// The same copy four source columns at a time, for sources whose rows come in fours
// (src_w % 4 == 0) placed without dilation: four vec4 loads (a row segment of each of four
// channels) and four vec4 stores (the segment's pixels), against sixteen scalar loads and four
// stores, software adapters paying a lane loop per access. It writes only destination pixels
// a source pixel lands on, so the rest of the destination (the padding) must already be zero:
// a buffer only this copy writes, with the same placement every time.
// Invocations: batch x src_h x src_w / 4 x in_quads, quads fastest.
@group(0) @binding(1) var<storage, read> copy_src4: array<vec4<f32>>;

// Invocation i's segment of to_channels_last_rows: sample n, source row sy, the segment in
// the row and the channel quad, its vec4 in each source plane (`at`), and the destination row
// (`row`) and first column (`x0`); not `live` past the last or where the row lands outside the
// destination.
struct RowSegment {
    n: u32,
    quad: u32,
    at: u32,
    row: u32,
    x0: i32,
    live: bool,
}

fn row_segment(i: u32) -> RowSegment {
    let segments = p.src_w / 4u;
    let quad = i % p.in_quads;
    let segment = (i / p.in_quads) % segments;
    let sy = (i / (p.in_quads * segments)) % p.src_h;
    let n = i / (p.in_quads * segments * p.src_h);
    let yd = i32(sy) + p.top;
    let live = i < p.batch * p.src_h * segments * p.in_quads && yd >= 0 && yd < i32(p.in_h);
    let row = (n * p.in_h + u32(max(yd, 0))) * p.in_w;
    return RowSegment(n, quad, sy * segments + segment, row, i32(segment * 4u) + p.left, live);
}

// The segment's four channels' vec4s stored as its four pixels: pixel j is component j of
// each.
fn store_row_segment(s: RowSegment, r: array<vec4<f32>, 4>) {
    store_copied(s.row, s.x0, vec4<f32>(r[0].x, r[1].x, r[2].x, r[3].x), s.quad);
    store_copied(s.row, s.x0 + 1, vec4<f32>(r[0].y, r[1].y, r[2].y, r[3].y), s.quad);
    store_copied(s.row, s.x0 + 2, vec4<f32>(r[0].z, r[1].z, r[2].z, r[3].z), s.quad);
    store_copied(s.row, s.x0 + 3, vec4<f32>(r[0].w, r[1].w, r[2].w, r[3].w), s.quad);
}

@compute @workgroup_size(64)
fn to_channels_last_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = row_segment(flat_index(gid, nwg));
    if (s.live) { store_row_segment(s, channel_quads(s.n, s.quad * 4u, s.at)); }
}

// The copies' twins read the source from a texture that holds a copy of binding 1
// (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`): software adapters gather a texel
// fetch's lanes in registers, where a storage load whose address differs per lane loops over
// the lanes. The `_gated_` twins, for a gate whose channels come in fours, read it from a
// second texture, a copy of binding 3: a quad's four gates in one fetch, not four storage
// loads. The same values in the same places.
@group(0) @binding(15) var copy_src_texels: texture_2d<f32>;
@group(0) @binding(14) var copy_gate_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn to_channels_last_rows_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = row_segment(flat_index(gid, nwg));
    if (s.live) { store_row_segment(s, channel_texels(s.n, s.quad * 4u, s.at)); }
}

@compute @workgroup_size(64)
fn to_channels_last_rows_gated_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let s = row_segment(flat_index(gid, nwg));
    if (s.live) { store_row_segment(s, gated_channel_texels(s.n, s.quad * 4u, s.at)); }
}

// Vec4 `at` (four source pixels) of sample n's channels c .. c + 3 (c a multiple of four),
// each times the gate where there is one; zero for a padding channel.
fn channel_quads(n: u32, c: u32, at: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        source_quad(n, c, at),
        source_quad(n, c + 1u, at),
        source_quad(n, c + 2u, at),
        source_quad(n, c + 3u, at),
    );
}

// The same read from the texture (the gate from storage).
fn channel_texels(n: u32, c: u32, at: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        source_texel(n, c, at),
        source_texel(n, c + 1u, at),
        source_texel(n, c + 2u, at),
        source_texel(n, c + 3u, at),
    );
}

// The same with the gate read from its texture too (channels in fours).
fn gated_channel_texels(n: u32, c: u32, at: u32) -> array<vec4<f32>, 4> {
    let g = quad_gates(n, c);
    return array<vec4<f32>, 4>(
        ungated_texel(n, c, at) * g.x,
        ungated_texel(n, c + 1u, at) * g.y,
        ungated_texel(n, c + 2u, at) * g.z,
        ungated_texel(n, c + 3u, at) * g.w,
    );
}

// Vec4 `at` of sample n's channel c (four source pixels), times the gate where there is one;
// zero for a padding channel.
fn source_quad(n: u32, c: u32, at: u32) -> vec4<f32> {
    if (c >= p.channels) { return vec4<f32>(); }
    let v = copy_src4[(n * p.channels + c) * (p.src_h * p.src_w / 4u) + at];
    if (p.gate != 0u) { return v * copy_gate[n * p.channels + c]; }
    return v;
}

// source_quad read from the texture.
fn source_texel(n: u32, c: u32, at: u32) -> vec4<f32> {
    let v = ungated_texel(n, c, at);
    if (p.gate != 0u && c < p.channels) { return v * copy_gate[n * p.channels + c]; }
    return v;
}

// The same without the gate.
fn ungated_texel(n: u32, c: u32, at: u32) -> vec4<f32> {
    if (c >= p.channels) { return vec4<f32>(); }
    return buffer_texel(copy_src_texels, (n * p.channels + c) * (p.src_h * p.src_w / 4u) + at);
}

// The gates of sample n's channels c .. c + 3 (c a multiple of four); zero past the channels.
fn quad_gates(n: u32, c: u32) -> vec4<f32> {
    if (c >= p.channels) { return vec4<f32>(); }
    return buffer_texel(copy_gate_texels, (n * p.channels + c) / 4u);
}

// Destination pixel (row start `row`, column xd), skipped outside the destination.
fn store_copied(row: u32, xd: i32, v: vec4<f32>, quad: u32) {
    if (xd >= 0 && xd < i32(p.in_w)) { copy_dst[(row + u32(xd)) * p.in_quads + quad] = v; }
}

// to_channels_last_rows for sources two columns wide with rows in pairs (a 2x2 map: ResNet's
// last stage on small images), two rows at a time: segment s is rows 2 s and 2 s + 1, one vec4
// of each channel. Writes only where the source lands, as the rows kernel.
// Invocations: batch x src_h / 2 x in_quads, quads fastest.

// Invocation i's segment: sample n, the channel quad and the segment; not `live` past the last.
struct PairSegment {
    n: u32,
    quad: u32,
    segment: u32,
    live: bool,
}

fn pair_segment(i: u32) -> PairSegment {
    let segments = p.src_h / 2u;
    let live = i < p.batch * segments * p.in_quads;
    return PairSegment(i / (p.in_quads * segments), i % p.in_quads, (i / p.in_quads) % segments, live);
}

@compute @workgroup_size(64)
fn to_channels_last_pairs(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = pair_segment(flat_index(gid, nwg));
    if (s.live) { store_pair_segment(s, channel_quads(s.n, s.quad * 4u, s.segment)); }
}

@compute @workgroup_size(64)
fn to_channels_last_pairs_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = pair_segment(flat_index(gid, nwg));
    if (s.live) { store_pair_segment(s, channel_texels(s.n, s.quad * 4u, s.segment)); }
}

@compute @workgroup_size(64)
fn to_channels_last_pairs_gated_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let s = pair_segment(flat_index(gid, nwg));
    if (s.live) { store_pair_segment(s, gated_channel_texels(s.n, s.quad * 4u, s.segment)); }
}

// The segment's four channels' vec4s stored as its four pixels: pixel j (row j / 2, column
// j % 2) is component j of each.
fn store_pair_segment(s: PairSegment, r: array<vec4<f32>, 4>) {
    let y0 = i32(s.segment * 2u) + p.top;
    store_pixel(s.n, y0, p.left, vec4<f32>(r[0].x, r[1].x, r[2].x, r[3].x), s.quad);
    store_pixel(s.n, y0, p.left + 1, vec4<f32>(r[0].y, r[1].y, r[2].y, r[3].y), s.quad);
    store_pixel(s.n, y0 + 1, p.left, vec4<f32>(r[0].z, r[1].z, r[2].z, r[3].z), s.quad);
    store_pixel(s.n, y0 + 1, p.left + 1, vec4<f32>(r[0].w, r[1].w, r[2].w, r[3].w), s.quad);
}

// Destination pixel (yd, xd) of sample n, skipped outside the destination.
fn store_pixel(n: u32, yd: i32, xd: i32, v: vec4<f32>, quad: u32) {
    if (yd >= 0 && yd < i32(p.in_h)) { store_copied((n * p.in_h + u32(yd)) * p.in_w, xd, v, quad); }
}

// dy [batch][c_out][out_h][out_w] -> [batch * out_h * out_w][out_pad / 4] vec4s, for the weight
// gradient. Invocations: every destination vec4.
@compute @workgroup_size(64)
fn gradient_channels_last(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let pixels = p.out_h * p.out_w;
    let quads = p.out_pad / 4u;
    if (i >= p.batch * pixels * quads) { return; }
    let c = (i % quads) * 4u;
    let q = i / quads;
    let at = ((q / pixels) * p.c_out + c) * pixels + q % pixels;
    var v = vec4<f32>();
    for (var k = 0u; k < 4u; k++) {
        if (c + k < p.c_out) { v[k] = copy_src[at + k * pixels]; }
    }
    copy_dst[i] = v;
}

// The same four pixels at a time, for maps whose pixels come in fours: four vec4 loads (four
// pixels of each of four channels) and four vec4 stores. Invocations: batch x pixels / 4 x
// out_pad / 4, quads fastest.

// Invocation i's group of four pixels (sample n's `group`-th) and channel quad; not `live` past
// the last.
struct GradientGroup {
    n: u32,
    group: u32,
    quad: u32,
    live: bool,
}

fn gradient_group(i: u32) -> GradientGroup {
    let groups = p.out_h * p.out_w / 4u;
    let quads = p.out_pad / 4u;
    let q = i / quads;
    return GradientGroup(q / groups, q % groups, i % quads, i < p.batch * groups * quads);
}

@compute @workgroup_size(64)
fn gradient_channels_last_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gradient_group(flat_index(gid, nwg));
    if (!g.live) { return; }
    let c = g.quad * 4u;
    let r = array<vec4<f32>, 4>(
        gradient_pixels(g.n, c, g.group),
        gradient_pixels(g.n, c + 1u, g.group),
        gradient_pixels(g.n, c + 2u, g.group),
        gradient_pixels(g.n, c + 3u, g.group),
    );
    store_gradient_group(g, r);
}

// gradient_channels_last_quads reading dy from the texture that holds a copy of binding 1.
@compute @workgroup_size(64)
fn gradient_channels_last_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = gradient_group(flat_index(gid, nwg));
    if (!g.live) { return; }
    let c = g.quad * 4u;
    let r = array<vec4<f32>, 4>(
        gradient_texel(g.n, c, g.group),
        gradient_texel(g.n, c + 1u, g.group),
        gradient_texel(g.n, c + 2u, g.group),
        gradient_texel(g.n, c + 3u, g.group),
    );
    store_gradient_group(g, r);
}

// Pixels 4 group .. 4 group + 3 of sample n's channel c of dy, zero for a padding channel.
fn gradient_pixels(n: u32, c: u32, group: u32) -> vec4<f32> {
    if (c >= p.c_out) { return vec4<f32>(); }
    return copy_src4[(n * p.c_out + c) * (p.out_h * p.out_w / 4u) + group];
}

// gradient_pixels read from the texture.
fn gradient_texel(n: u32, c: u32, group: u32) -> vec4<f32> {
    if (c >= p.c_out) { return vec4<f32>(); }
    return buffer_texel(copy_src_texels, (n * p.c_out + c) * (p.out_h * p.out_w / 4u) + group);
}

// The group's four channels' vec4s stored as its pixels' quad: pixel j is component j of each.
fn store_gradient_group(g: GradientGroup, r: array<vec4<f32>, 4>) {
    let quads = p.out_pad / 4u;
    let first = (g.n * (p.out_h * p.out_w / 4u) + g.group) * 4u;
    copy_dst[first * quads + g.quad] = vec4<f32>(r[0].x, r[1].x, r[2].x, r[3].x);
    copy_dst[(first + 1u) * quads + g.quad] = vec4<f32>(r[0].y, r[1].y, r[2].y, r[3].y);
    copy_dst[(first + 2u) * quads + g.quad] = vec4<f32>(r[0].z, r[1].z, r[2].z, r[3].z);
    copy_dst[(first + 3u) * quads + g.quad] = vec4<f32>(r[0].w, r[1].w, r[2].w, r[3].w);
}

// (tap, input quad) steps per weight block. A block of the widest tile (64 channels) fills
// 64 KiB, the most a uniform binding may hold (UNIFORM_BLOCK_VEC4S, what the uniform-block
// kernels bind whatever the tile); narrower tiles' blocks are as dense, so that a texture
// copied from them holds no padding.
const STEPS: u32 = 64u;
const UNIFORM_BLOCK_VEC4S: u32 = 4096u;

// The vec4s of one block of `tile`-wide tiles: STEPS steps x 4 input lanes x tile / 4.
fn block_vec4s(tile: u32) -> u32 {
    return STEPS * tile;
}

// Weight blocks per output-channel tile: whole taps per block while a tap has at most STEPS
// quads, else each tap split into ceil(in_quads / STEPS) blocks (src/ops/conv_gemm.rs mirrors this).
fn weight_blocks() -> u32 {
    let taps = p.kernel_h * p.kernel_w;
    if (p.in_quads <= STEPS) {
        let per = STEPS / p.in_quads;
        return (taps + per - 1u) / per;
    }
    return taps * ((p.in_quads + STEPS - 1u) / STEPS);
}

// Block b's steps: taps tap0 .. tap1 x quads quad0 .. quad1, in that order.
fn block_steps(b: u32) -> vec4<u32> {
    let taps = p.kernel_h * p.kernel_w;
    if (p.in_quads <= STEPS) {
        let per = STEPS / p.in_quads;
        return vec4<u32>(b * per, min(taps, (b + 1u) * per), 0u, p.in_quads);
    }
    let split = (p.in_quads + STEPS - 1u) / STEPS;
    let quad0 = (b % split) * STEPS;
    return vec4<u32>(b / split, b / split + 1u, quad0, min(p.in_quads, quad0 + STEPS));
}

// Where block b of output-channel tile t lies in the packed weights, in blocks. A band of a
// pass whose blocks hold one tap each (more than STEPS / 2 input quads) may read weights
// packed once for the whole pass (p.pack_taps): its tap (a, c) is the pass's tap
// (pack_y0 + a, pack_x0 + c), and the blocks of the pass's taps lie tap by tap.
fn packed_block(t: u32, b: u32) -> u32 {
    if (p.pack_taps == 0u) { return t * weight_blocks() + b; }
    let split = (p.in_quads + STEPS - 1u) / STEPS;
    let tap = b / split;
    let pass_tap = (tap / p.kernel_w + p.pack_y0) * p.pack_kernel_w + tap % p.kernel_w + p.pack_x0;
    return (t * p.pack_taps + pass_tap) * split + b % split;
}

// Row `row` of block `block` of the packed weights: the tile's output channels at one input
// channel and tap, as (first output channel, input channel, tap), or none (vec3(~0)) past the
// block's steps. Blocks of block_vec4s(tile) vec4s, tile-major, each [step][input lane][tile
// channels]: 4 * STEPS rows.
fn packed_row(block: u32, row: u32) -> vec3<u32> {
    let none = vec3<u32>(0xffffffffu);
    let k = row / 4u;
    if (k >= STEPS) { return none; }
    let blocks = weight_blocks();
    let steps = block_steps(block % blocks);
    let nq = steps.w - steps.z;
    let tap = steps.x + k / nq;
    if (tap >= steps.y) { return none; }
    return vec3<u32>((block / blocks) * p.tile, (steps.z + k % nq) * 4u + row % 4u, tap);
}

// The weight's own tap index of the used tap at row ky, column kx.
fn full_tap(ky: u32, kx: u32) -> u32 {
    return (ky + p.ky0) * p.full_kernel_w + kx + p.kx0;
}

// The packing kernels run one invocation per row: (x) rows of (y) one block. A row's index
// arithmetic — divisions, which software adapters pay per lane — is done once for its
// tile / 4 vec4s.

// Forward weights from w [weight_out][weight_in][kh][kw] (read through weight_offset, which
// folds columns into channels where the convolution does): the kernel's outputs are the
// weight's outputs.
@compute @workgroup_size(64)
fn pack_weight_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= 4u * STEPS) { return; }
    let src = packed_row(gid.y, gid.x);
    let first = gid.y * block_vec4s(p.tile) + gid.x * (p.tile / 4u);
    let inside = src.y < p.weight_in;
    let tap = select(0u, full_tap(src.z / p.kernel_w, src.z % p.kernel_w), inside);
    let out_stride = p.weight_in * p.full_taps;
    for (var cq = 0u; cq < p.tile / 4u; cq++) {
        let c = src.x + 4u * cq;
        var v = vec4<f32>();
        if (inside) {
            let at = c * out_stride + weight_offset(src.y, tap);
            for (var k = 0u; k < 4u; k++) {
                if (c + k < p.weight_out) { v[k] = copy_src[at + k * out_stride]; }
            }
        }
        copy_dst[first + cq] = v;
    }
}

// Input-gradient weights: the kernel's outputs are the weight's input channels, its inputs
// the weight's output channels, and the taps are flipped (and, for one phase of a strided
// input gradient, every tap_step-th).
@compute @workgroup_size(64)
fn pack_weight_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= 4u * STEPS) { return; }
    let src = packed_row(gid.y, gid.x);
    let first = gid.y * block_vec4s(p.tile) + gid.x * (p.tile / 4u);
    let inside = src.y < p.weight_out;
    var tap = 0u;
    if (inside) {
        let flip_h = select(p.kernel_h, p.flip_h, p.flip_h != 0u);
        let flip_w = select(p.kernel_w, p.flip_w, p.flip_w != 0u);
        let ty = flip_h - 1u - (p.tap0_h + max(p.tap_step_h, 1u) * (src.z / p.kernel_w));
        let tx = flip_w - 1u - (p.tap0_w + max(p.tap_step_w, 1u) * (src.z % p.kernel_w));
        tap = full_tap(ty, tx);
    }
    for (var cq = 0u; cq < p.tile / 4u; cq++) {
        let c = src.x + 4u * cq;
        var v = vec4<f32>();
        if (inside) {
            let at = (src.y * p.weight_in + c) * p.full_taps + tap;
            for (var k = 0u; k < 4u; k++) {
                if (c + k < p.weight_in) { v[k] = copy_src[at + k * p.full_taps]; }
            }
        }
        copy_dst[first + cq] = v;
    }
}

// pack_weight_forward for 3x3 weights whose input channels come in fours reads the weight as
// vec4s: an output channel's weights for four input channels are 36 contiguous floats
// ([input lane][tap]). One invocation per (output channel quad, input quad) loads four output
// channels' nine vec4s and transposes them into the rows of the pass's taps, the values
// pack_weight_forward writes. Where a row lies is the host's sum per weight tap (p.tap_rows)
// plus the invocation's own, so no store divides (software adapters divide lane by lane).
// Where the input gradient reads one packing of every tap (src/ops/conv_gemm.rs
// `GemmPlan::backward_packed_by_forward`), the same loads also give its rows, the values
// pack_weight_backward writes (p.back_tap_rows): on lavapipe, a third of what the row kernel
// takes to gather them again.
// (1x1 weights keep the row kernel: read by quads, their rows of thousands of input channels
// lie kilobytes apart, and on lavapipe ResNet50's packing took half as long again.)

// The weight's vec4s, copied into a texture before the dispatch (src/gpu/kernel.rs
// `Gpu::dispatch_with_textures`; on every adapter, as a weight is small beside the
// activations): software adapters gather a texel fetch's lanes in registers, where a storage
// load whose address differs per lane loops over the lanes through memory.
@group(0) @binding(15) var pack_weight_texels: texture_2d<f32>;

// Output channel co's weights for input channels 4 iq .. 4 iq + 3, vec4 j of their 36
// floats; zero past the weight's outputs.
fn weight_vec4(co: u32, iq: u32, j: u32) -> vec4<f32> {
    if (co >= p.weight_out) { return vec4<f32>(); }
    return buffer_texel(pack_weight_texels, (co * (p.weight_in / 4u) + iq) * 9u + j);
}

// A KernelDNA child packed straight from its parent (binding 1; `child_modulated`), so that
// its kernel is never stored on its own: child `child_row`'s attentions, torch's shapes
// ([R, 1, 1, 3, 3] and [R, C_out, 1, 1, 1]). The products are modulate_forward_3x3's,
// rounded the same way: (parent * spatial factor) * filter factor.
@group(0) @binding(5) var<storage, read> pack_spatial_attention: array<f32>;
@group(0) @binding(6) var<storage, read> pack_filter_attention: array<f32>;

// The child's nine spatial factors (1 + attention), tap by tap; ones for a plain weight.
fn child_spatial_factors() -> array<f32, 9> {
    var s = array<f32, 9>(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0);
    if (p.child_modulated != 0u) {
        for (var t = 0u; t < 9u; t++) { s[t] = 1.0 + pack_spatial_attention[p.child_row * 9u + t]; }
    }
    return s;
}

// The filter factor (1 + attention) of output channel co; one for a plain weight.
fn child_filter_factor(co: u32) -> f32 {
    if (p.child_modulated == 0u || co >= p.weight_out) { return 1.0; }
    return 1.0 + pack_filter_attention[p.child_row * p.weight_out + co];
}

// A weight vec4 of a child, its components' taps' spatial factors `s` and its output
// channel's filter factor `f` applied; a plain weight's as loaded.
fn child_vec4(w: vec4<f32>, s: vec4<f32>, f: f32) -> vec4<f32> {
    return select(w, w * s * f, p.child_modulated != 0u);
}

// Stores v in lane `lane`'s row of weight tap t from `base`, where the pass reads tap t.
fn store_packed_tap(base: u32, lane: u32, t: u32, v: vec4<f32>) {
    let rows = p.tap_rows[t / 4u][t % 4u];
    if (rows != 0xffffffffu) { copy_dst[base + rows + lane * (p.tile / 4u)] = v; }
}

// The input gradient's packed weights (binding 4), where pack_weight_forward_quads writes them.
@group(0) @binding(4) var<storage, read_write> copy_dst_backward: array<vec4<f32>>;

// The same in the input gradient's packing.
fn store_backward_tap(base: u32, lane: u32, t: u32, v: vec4<f32>) {
    let rows = p.back_tap_rows[t / 4u][t % 4u];
    if (rows != 0xffffffffu) { copy_dst_backward[base + rows + lane * (p.back_tile / 4u)] = v; }
}

// Where the vec4 of output quad `out_quad` in the row of input quad `in_quad`'s lane 0 lies in
// a packing of `tile`-wide tiles of `blocks` blocks over `quads` input quads, before the tap's
// rows: the tile's first block, the step's place in it, and the quad's place in the row.
fn packed_quad_base(tile: u32, blocks: u32, quads: u32, out_quad: u32, in_quad: u32) -> u32 {
    let tile_quads = tile / 4u;
    let base = (out_quad / tile_quads) * blocks * block_vec4s(tile) + out_quad % tile_quads;
    if (quads <= STEPS) {
        return base + in_quad * 4u * tile_quads;
    }
    return base + (in_quad / STEPS) * block_vec4s(tile) + (in_quad % STEPS) * 4u * tile_quads;
}

// Invocations: (output channel quad, input quad), output quads fastest, over the tiles the
// binding holds.
@compute @workgroup_size(64)
fn pack_weight_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let tile_quads = p.tile / 4u;
    let out_quads = arrayLength(&copy_dst) / (weight_blocks() * block_vec4s(p.tile)) * tile_quads;
    if (i >= out_quads * p.in_quads) { return; }
    let cq = i % out_quads;
    let iq = i / out_quads;
    let co = 4u * cq;
    let base = packed_quad_base(p.tile, weight_blocks(), p.in_quads, cq, iq);
    // Lane k's tap t is float 9 k + t of each output channel's 36: component l of vec4 j is
    // tap (4 j + l) % 9. A child's factors load once for all of them.
    let s = child_spatial_factors();
    let fa = child_filter_factor(co + 0u);
    let fb = child_filter_factor(co + 1u);
    let fc = child_filter_factor(co + 2u);
    let fd = child_filter_factor(co + 3u);
    let wa0 = child_vec4(weight_vec4(co + 0u, iq, 0u), vec4<f32>(s[0], s[1], s[2], s[3]), fa);
    let wa1 = child_vec4(weight_vec4(co + 0u, iq, 1u), vec4<f32>(s[4], s[5], s[6], s[7]), fa);
    let wa2 = child_vec4(weight_vec4(co + 0u, iq, 2u), vec4<f32>(s[8], s[0], s[1], s[2]), fa);
    let wa3 = child_vec4(weight_vec4(co + 0u, iq, 3u), vec4<f32>(s[3], s[4], s[5], s[6]), fa);
    let wa4 = child_vec4(weight_vec4(co + 0u, iq, 4u), vec4<f32>(s[7], s[8], s[0], s[1]), fa);
    let wa5 = child_vec4(weight_vec4(co + 0u, iq, 5u), vec4<f32>(s[2], s[3], s[4], s[5]), fa);
    let wa6 = child_vec4(weight_vec4(co + 0u, iq, 6u), vec4<f32>(s[6], s[7], s[8], s[0]), fa);
    let wa7 = child_vec4(weight_vec4(co + 0u, iq, 7u), vec4<f32>(s[1], s[2], s[3], s[4]), fa);
    let wa8 = child_vec4(weight_vec4(co + 0u, iq, 8u), vec4<f32>(s[5], s[6], s[7], s[8]), fa);
    let wb0 = child_vec4(weight_vec4(co + 1u, iq, 0u), vec4<f32>(s[0], s[1], s[2], s[3]), fb);
    let wb1 = child_vec4(weight_vec4(co + 1u, iq, 1u), vec4<f32>(s[4], s[5], s[6], s[7]), fb);
    let wb2 = child_vec4(weight_vec4(co + 1u, iq, 2u), vec4<f32>(s[8], s[0], s[1], s[2]), fb);
    let wb3 = child_vec4(weight_vec4(co + 1u, iq, 3u), vec4<f32>(s[3], s[4], s[5], s[6]), fb);
    let wb4 = child_vec4(weight_vec4(co + 1u, iq, 4u), vec4<f32>(s[7], s[8], s[0], s[1]), fb);
    let wb5 = child_vec4(weight_vec4(co + 1u, iq, 5u), vec4<f32>(s[2], s[3], s[4], s[5]), fb);
    let wb6 = child_vec4(weight_vec4(co + 1u, iq, 6u), vec4<f32>(s[6], s[7], s[8], s[0]), fb);
    let wb7 = child_vec4(weight_vec4(co + 1u, iq, 7u), vec4<f32>(s[1], s[2], s[3], s[4]), fb);
    let wb8 = child_vec4(weight_vec4(co + 1u, iq, 8u), vec4<f32>(s[5], s[6], s[7], s[8]), fb);
    let wc0 = child_vec4(weight_vec4(co + 2u, iq, 0u), vec4<f32>(s[0], s[1], s[2], s[3]), fc);
    let wc1 = child_vec4(weight_vec4(co + 2u, iq, 1u), vec4<f32>(s[4], s[5], s[6], s[7]), fc);
    let wc2 = child_vec4(weight_vec4(co + 2u, iq, 2u), vec4<f32>(s[8], s[0], s[1], s[2]), fc);
    let wc3 = child_vec4(weight_vec4(co + 2u, iq, 3u), vec4<f32>(s[3], s[4], s[5], s[6]), fc);
    let wc4 = child_vec4(weight_vec4(co + 2u, iq, 4u), vec4<f32>(s[7], s[8], s[0], s[1]), fc);
    let wc5 = child_vec4(weight_vec4(co + 2u, iq, 5u), vec4<f32>(s[2], s[3], s[4], s[5]), fc);
    let wc6 = child_vec4(weight_vec4(co + 2u, iq, 6u), vec4<f32>(s[6], s[7], s[8], s[0]), fc);
    let wc7 = child_vec4(weight_vec4(co + 2u, iq, 7u), vec4<f32>(s[1], s[2], s[3], s[4]), fc);
    let wc8 = child_vec4(weight_vec4(co + 2u, iq, 8u), vec4<f32>(s[5], s[6], s[7], s[8]), fc);
    let wd0 = child_vec4(weight_vec4(co + 3u, iq, 0u), vec4<f32>(s[0], s[1], s[2], s[3]), fd);
    let wd1 = child_vec4(weight_vec4(co + 3u, iq, 1u), vec4<f32>(s[4], s[5], s[6], s[7]), fd);
    let wd2 = child_vec4(weight_vec4(co + 3u, iq, 2u), vec4<f32>(s[8], s[0], s[1], s[2]), fd);
    let wd3 = child_vec4(weight_vec4(co + 3u, iq, 3u), vec4<f32>(s[3], s[4], s[5], s[6]), fd);
    let wd4 = child_vec4(weight_vec4(co + 3u, iq, 4u), vec4<f32>(s[7], s[8], s[0], s[1]), fd);
    let wd5 = child_vec4(weight_vec4(co + 3u, iq, 5u), vec4<f32>(s[2], s[3], s[4], s[5]), fd);
    let wd6 = child_vec4(weight_vec4(co + 3u, iq, 6u), vec4<f32>(s[6], s[7], s[8], s[0]), fd);
    let wd7 = child_vec4(weight_vec4(co + 3u, iq, 7u), vec4<f32>(s[1], s[2], s[3], s[4]), fd);
    let wd8 = child_vec4(weight_vec4(co + 3u, iq, 8u), vec4<f32>(s[5], s[6], s[7], s[8]), fd);
    store_packed_tap(base, 0u, 0u, vec4<f32>(wa0.x, wb0.x, wc0.x, wd0.x));
    store_packed_tap(base, 1u, 0u, vec4<f32>(wa2.y, wb2.y, wc2.y, wd2.y));
    store_packed_tap(base, 2u, 0u, vec4<f32>(wa4.z, wb4.z, wc4.z, wd4.z));
    store_packed_tap(base, 3u, 0u, vec4<f32>(wa6.w, wb6.w, wc6.w, wd6.w));
    store_packed_tap(base, 0u, 1u, vec4<f32>(wa0.y, wb0.y, wc0.y, wd0.y));
    store_packed_tap(base, 1u, 1u, vec4<f32>(wa2.z, wb2.z, wc2.z, wd2.z));
    store_packed_tap(base, 2u, 1u, vec4<f32>(wa4.w, wb4.w, wc4.w, wd4.w));
    store_packed_tap(base, 3u, 1u, vec4<f32>(wa7.x, wb7.x, wc7.x, wd7.x));
    store_packed_tap(base, 0u, 2u, vec4<f32>(wa0.z, wb0.z, wc0.z, wd0.z));
    store_packed_tap(base, 1u, 2u, vec4<f32>(wa2.w, wb2.w, wc2.w, wd2.w));
    store_packed_tap(base, 2u, 2u, vec4<f32>(wa5.x, wb5.x, wc5.x, wd5.x));
    store_packed_tap(base, 3u, 2u, vec4<f32>(wa7.y, wb7.y, wc7.y, wd7.y));
    store_packed_tap(base, 0u, 3u, vec4<f32>(wa0.w, wb0.w, wc0.w, wd0.w));
    store_packed_tap(base, 1u, 3u, vec4<f32>(wa3.x, wb3.x, wc3.x, wd3.x));
    store_packed_tap(base, 2u, 3u, vec4<f32>(wa5.y, wb5.y, wc5.y, wd5.y));
    store_packed_tap(base, 3u, 3u, vec4<f32>(wa7.z, wb7.z, wc7.z, wd7.z));
    store_packed_tap(base, 0u, 4u, vec4<f32>(wa1.x, wb1.x, wc1.x, wd1.x));
    store_packed_tap(base, 1u, 4u, vec4<f32>(wa3.y, wb3.y, wc3.y, wd3.y));
    store_packed_tap(base, 2u, 4u, vec4<f32>(wa5.z, wb5.z, wc5.z, wd5.z));
    store_packed_tap(base, 3u, 4u, vec4<f32>(wa7.w, wb7.w, wc7.w, wd7.w));
    store_packed_tap(base, 0u, 5u, vec4<f32>(wa1.y, wb1.y, wc1.y, wd1.y));
    store_packed_tap(base, 1u, 5u, vec4<f32>(wa3.z, wb3.z, wc3.z, wd3.z));
    store_packed_tap(base, 2u, 5u, vec4<f32>(wa5.w, wb5.w, wc5.w, wd5.w));
    store_packed_tap(base, 3u, 5u, vec4<f32>(wa8.x, wb8.x, wc8.x, wd8.x));
    store_packed_tap(base, 0u, 6u, vec4<f32>(wa1.z, wb1.z, wc1.z, wd1.z));
    store_packed_tap(base, 1u, 6u, vec4<f32>(wa3.w, wb3.w, wc3.w, wd3.w));
    store_packed_tap(base, 2u, 6u, vec4<f32>(wa6.x, wb6.x, wc6.x, wd6.x));
    store_packed_tap(base, 3u, 6u, vec4<f32>(wa8.y, wb8.y, wc8.y, wd8.y));
    store_packed_tap(base, 0u, 7u, vec4<f32>(wa1.w, wb1.w, wc1.w, wd1.w));
    store_packed_tap(base, 1u, 7u, vec4<f32>(wa4.x, wb4.x, wc4.x, wd4.x));
    store_packed_tap(base, 2u, 7u, vec4<f32>(wa6.y, wb6.y, wc6.y, wd6.y));
    store_packed_tap(base, 3u, 7u, vec4<f32>(wa8.z, wb8.z, wc8.z, wd8.z));
    store_packed_tap(base, 0u, 8u, vec4<f32>(wa2.x, wb2.x, wc2.x, wd2.x));
    store_packed_tap(base, 1u, 8u, vec4<f32>(wa4.y, wb4.y, wc4.y, wd4.y));
    store_packed_tap(base, 2u, 8u, vec4<f32>(wa6.z, wb6.z, wc6.z, wd6.z));
    store_packed_tap(base, 3u, 8u, vec4<f32>(wa8.w, wb8.w, wc8.w, wd8.w));
    // The input gradient's rows: output channel co + l is its input lane l, the four input
    // channels its outputs; lane l's tap t is float 9 k + t of channel k (its outputs).
    if (p.back_tile == 0u || co >= p.weight_out) { return; }
    let back = packed_quad_base(p.back_tile, p.back_blocks, p.back_quads, iq, cq);
    store_backward_tap(back, 0u, 0u, vec4<f32>(wa0.x, wa2.y, wa4.z, wa6.w));
    store_backward_tap(back, 0u, 1u, vec4<f32>(wa0.y, wa2.z, wa4.w, wa7.x));
    store_backward_tap(back, 0u, 2u, vec4<f32>(wa0.z, wa2.w, wa5.x, wa7.y));
    store_backward_tap(back, 0u, 3u, vec4<f32>(wa0.w, wa3.x, wa5.y, wa7.z));
    store_backward_tap(back, 0u, 4u, vec4<f32>(wa1.x, wa3.y, wa5.z, wa7.w));
    store_backward_tap(back, 0u, 5u, vec4<f32>(wa1.y, wa3.z, wa5.w, wa8.x));
    store_backward_tap(back, 0u, 6u, vec4<f32>(wa1.z, wa3.w, wa6.x, wa8.y));
    store_backward_tap(back, 0u, 7u, vec4<f32>(wa1.w, wa4.x, wa6.y, wa8.z));
    store_backward_tap(back, 0u, 8u, vec4<f32>(wa2.x, wa4.y, wa6.z, wa8.w));
    store_backward_tap(back, 1u, 0u, vec4<f32>(wb0.x, wb2.y, wb4.z, wb6.w));
    store_backward_tap(back, 1u, 1u, vec4<f32>(wb0.y, wb2.z, wb4.w, wb7.x));
    store_backward_tap(back, 1u, 2u, vec4<f32>(wb0.z, wb2.w, wb5.x, wb7.y));
    store_backward_tap(back, 1u, 3u, vec4<f32>(wb0.w, wb3.x, wb5.y, wb7.z));
    store_backward_tap(back, 1u, 4u, vec4<f32>(wb1.x, wb3.y, wb5.z, wb7.w));
    store_backward_tap(back, 1u, 5u, vec4<f32>(wb1.y, wb3.z, wb5.w, wb8.x));
    store_backward_tap(back, 1u, 6u, vec4<f32>(wb1.z, wb3.w, wb6.x, wb8.y));
    store_backward_tap(back, 1u, 7u, vec4<f32>(wb1.w, wb4.x, wb6.y, wb8.z));
    store_backward_tap(back, 1u, 8u, vec4<f32>(wb2.x, wb4.y, wb6.z, wb8.w));
    store_backward_tap(back, 2u, 0u, vec4<f32>(wc0.x, wc2.y, wc4.z, wc6.w));
    store_backward_tap(back, 2u, 1u, vec4<f32>(wc0.y, wc2.z, wc4.w, wc7.x));
    store_backward_tap(back, 2u, 2u, vec4<f32>(wc0.z, wc2.w, wc5.x, wc7.y));
    store_backward_tap(back, 2u, 3u, vec4<f32>(wc0.w, wc3.x, wc5.y, wc7.z));
    store_backward_tap(back, 2u, 4u, vec4<f32>(wc1.x, wc3.y, wc5.z, wc7.w));
    store_backward_tap(back, 2u, 5u, vec4<f32>(wc1.y, wc3.z, wc5.w, wc8.x));
    store_backward_tap(back, 2u, 6u, vec4<f32>(wc1.z, wc3.w, wc6.x, wc8.y));
    store_backward_tap(back, 2u, 7u, vec4<f32>(wc1.w, wc4.x, wc6.y, wc8.z));
    store_backward_tap(back, 2u, 8u, vec4<f32>(wc2.x, wc4.y, wc6.z, wc8.w));
    store_backward_tap(back, 3u, 0u, vec4<f32>(wd0.x, wd2.y, wd4.z, wd6.w));
    store_backward_tap(back, 3u, 1u, vec4<f32>(wd0.y, wd2.z, wd4.w, wd7.x));
    store_backward_tap(back, 3u, 2u, vec4<f32>(wd0.z, wd2.w, wd5.x, wd7.y));
    store_backward_tap(back, 3u, 3u, vec4<f32>(wd0.w, wd3.x, wd5.y, wd7.z));
    store_backward_tap(back, 3u, 4u, vec4<f32>(wd1.x, wd3.y, wd5.z, wd7.w));
    store_backward_tap(back, 3u, 5u, vec4<f32>(wd1.y, wd3.z, wd5.w, wd8.x));
    store_backward_tap(back, 3u, 6u, vec4<f32>(wd1.z, wd3.w, wd6.x, wd8.y));
    store_backward_tap(back, 3u, 7u, vec4<f32>(wd1.w, wd4.x, wd6.y, wd8.z));
    store_backward_tap(back, 3u, 8u, vec4<f32>(wd2.x, wd4.y, wd6.z, wd8.w));
}

// ---------------------------------------------------------------- forward (and input gradient)
@group(0) @binding(1) var<storage, read> tf_x: array<vec4<f32>>;
// One weight block (pack_weight_forward / pack_weight_backward), or all of them.
@group(0) @binding(2) var<uniform> tf_w: array<vec4<f32>, UNIFORM_BLOCK_VEC4S>;
@group(0) @binding(2) var<storage, read> ts_w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> tf_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> tf_y: array<f32>;
// A residual added to the output as it is stored (`p.residual`), laid out as the output.
@group(0) @binding(5) var<storage, read> tf_residual: array<f32>;

// Two operands' vec4s as rows of textures, which the family conv_tile_subgroup's tiles read:
// the forward tiles' input copy (texel_x) and packed weights (texel_w), the weight gradient's x
// (texel_x) and dy (texel_w). Software adapters gather a texture fetch's lanes in registers,
// where a storage load whose address differs per lane loops over the lanes through memory.
@group(0) @binding(15) var tf_xt: texture_2d<f32>;
@group(0) @binding(14) var tf_wt: texture_2d<f32>;

// Vec4 i at texel (i mod width, i / width), by shifts: a division per lane is eight scalar
// divisions on software adapters.
fn texel_at(i: u32) -> vec2<u32> {
    return vec2<u32>(i & ((1u << p.texture_shift) - 1u), i >> p.texture_shift);
}

fn texel_x(i: u32) -> vec4<f32> {
    return textureLoad(tf_xt, texel_at(i), 0);
}

fn texel_w(i: u32) -> vec4<f32> {
    return textureLoad(tf_wt, texel_at(i), 0);
}

// Index (in vec4s) of the top-left corner of output pixel q's window in the input copy.
fn window(q: u32) -> u32 {
    let pixels = p.out_h * p.out_w;
    let r = q % pixels;
    let y = (r / p.out_w) * p.stride_h + p.window_y0;
    let x = (r % p.out_w) * p.stride_w + p.window_x0;
    return (((q / pixels) * p.in_h + y) * p.in_w + x) * p.in_quads;
}

// Where batch-wide output pixel q lies in the output (output_offset), or NO_OUTPUT past the
// last pixel. A tile finds it once per pixel for all of the pixel's channels: its divisions
// are scalar loops over the lanes on software adapters.
const NO_OUTPUT: u32 = 0xffffffffu;

fn output_at(q: u32) -> vec2<u32> {
    let total = p.batch * p.out_h * p.out_w;
    return select(output_offset(min(q, total - 1u)), vec2<u32>(NO_OUTPUT), q >= total);
}

// A result block's starting value at output place `at` (output_at): the output already there
// when adding to it (a gradient with several contributors, or a later weight block), else
// zero. Starting from it, rather than adding it at the end, makes every variant sum in the
// same order.
fn initial_forward(at: vec2<u32>, c: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if (p.accumulate == 0u || at.x == NO_OUTPUT) { return v; }
    for (var k = 0u; k < 4u; k++) {
        if (c + k < p.c_out) { v[k] = tf_y[at.x + (c + k) * at.y]; }
    }
    return v;
}

// (height, width) of the maps a pass's outputs are stored in (and the weight gradient's dy read
// from): the whole output where the pass is a band or phase of it (store_h, store_w), else its own.
fn stored_size() -> vec2<u32> {
    return vec2<u32>(select(p.out_h, p.store_h, p.store_h != 0u), select(p.out_w, p.store_w, p.store_w != 0u));
}

// Where batch-wide output pixel q's channel 0 lies in the output, and the distance between
// channels: a dense [batch][c_out][out_h][out_w], or one phase of a strided input gradient.
fn output_offset(q: u32) -> vec2<u32> {
    let pixels = p.out_h * p.out_w;
    let r = q % pixels;
    let y = (r / p.out_w) * max(p.store_stride_h, 1u) + p.store_y0;
    let x = (r % p.out_w) * max(p.store_stride_w, 1u) + p.store_x0;
    let size = stored_size();
    return vec2<u32>(((q / pixels) * p.c_out * size.x + y) * size.y + x, size.x * size.y);
}

// Four output channels c .. c + 3 of the pixel at output place `at` (output_at), plus the
// bias, plus the residual, through the output activation (each step rounded as the separate
// ops round it); nothing outside.
fn store_forward(at: vec2<u32>, c: u32, v: vec4<f32>) {
    if (at.x == NO_OUTPUT) { return; }
    for (var k = 0u; k < 4u; k++) {
        let co = c + k;
        if (co < p.c_out) {
            let o = at.x + co * at.y;
            // Without a bias it adds 0.0 (a -0.0 result stores as +0.0 either way). The bias is
            // loaded only where there is one: select would load it regardless, a lane loop
            // per value on software adapters.
            var bias = 0.0;
            if (STORES_BIAS) { bias = tf_bias[co]; }
            var r = v[k] + bias;
            if (STORES_RESIDUAL) { r += tf_residual[o]; }
            tf_y[o] = stored_activation(r);
        }
    }
}

// The output and the residual as vec4s, each four pixels of one channel side by side: for the
// tiles that store pixel quads (`_quads`), which use these and never tf_y, tf_residual.
@group(0) @binding(4) var<storage, read_write> tf_y4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> tf_residual4: array<vec4<f32>>;

// initial_forward for the four pixels from output place `at` (output_at of the first), whose
// places follow it in every channel: column m is pixel m's four channels c .. c + 3.
fn initial_forward_quads(at: vec2<u32>, c: u32) -> mat4x4<f32> {
    var by_channel = mat4x4<f32>();
    if (p.accumulate == 0u || at.x == NO_OUTPUT) { return by_channel; }
    for (var k = 0u; k < 4u; k++) {
        if (c + k < p.c_out) { by_channel[k] = tf_y4[(at.x + (c + k) * at.y) / 4u]; }
    }
    return transpose(by_channel);
}

// store_forward for the four pixels from output place `at`, column m of `pixels` holding pixel
// m's four channels: one vec4 per channel, each value rounded as store_forward rounds it.
fn store_forward_quads(at: vec2<u32>, c: u32, pixels: mat4x4<f32>) {
    if (at.x == NO_OUTPUT) { return; }
    var by_channel = transpose(pixels);
    for (var k = 0u; k < 4u; k++) {
        let co = c + k;
        if (co < p.c_out) {
            let o = (at.x + co * at.y) / 4u;
            var bias = 0.0;
            if (STORES_BIAS) { bias = tf_bias[co]; }
            var r = by_channel[k] + bias;
            if (STORES_RESIDUAL) { r += tf_residual4[o]; }
            tf_y4[o] = stored_activation4(r);
        }
    }
}

// A KernelDNA child run over its parent's packing (the `_child` tiles, family
// conv_tile_subgroup; src/ops/conv_gemm.rs `ChildPacking::parent_packed`), so that its kernel
// is never packed on its own: each weight vec4 loaded is multiplied by its tap's spatial
// factor, then by its output channels' filter factors, the products pack_weight_forward_quads
// makes as it packs a child, rounded alike. Child child_row's attentions, torch's shapes
// ([R, 1, 1, 3, 3] and [R, C_out, 1, 1, 1]).
@group(0) @binding(6) var<storage, read> tile_spatial_attention: array<f32>;
@group(0) @binding(7) var<storage, read> tile_filter_attention: array<f32>;

// The spatial factor (1 + attention) of the pass's tap `tap`.
fn tile_spatial_factor(tap: u32) -> f32 {
    return 1.0 + tile_spatial_attention[p.child_row * 9u + p.child_taps[tap / 4u][tap % 4u]];
}

// The filter factors of the weight's output channels co .. co + 3 where the pass's mode is
// `mode` (p.child_modulated), ones otherwise and past the weight's outputs.
fn tile_filter_factors(co: u32, mode: u32) -> vec4<f32> {
    var f = vec4<f32>(1.0);
    if (p.child_modulated == mode) {
        for (var k = 0u; k < 4u; k++) {
            if (co + k < p.weight_out) { f[k] = 1.0 + tile_filter_attention[p.child_row * p.weight_out + co + k]; }
        }
    }
    return f;
}

// Component k of f, in every component: the factor of a weight vec4 of input lane k.
fn lane_factor(f: vec4<f32>, k: u32) -> vec4<f32> {
    return vec4<f32>(select(select(f.x, f.y, k == 1u), select(f.z, f.w, k == 3u), k >= 2u));
}

// One invocation: P batch-wide pixels x C output channels over one weight block. Per step (one
// tap, four input channels) it loads P input vec4s (per invocation) and C weight vec4s (per
// workgroup) for 4 * P * C multiply-adds. Invocations: ceil(batch * out_h * out_w / P).
//@template forward
@compute @workgroup_size(16)
fn conv_tile_forward_C(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    //@sizes
    let total = p.batch * p.out_h * p.out_w;
    // No early return for the tiles past the end (their pixels clamp to the last and are not
    // stored): software adapters run everything after a divergent return under a lane mask.
    let q0 = tile_index(gid, nwg) * P;
    let c0 = p.c0;
    let last = total - 1u;
    //@pixels
    //@declare
    let row = p.in_w * p.in_quads;
    var k = 0u;
    for (var tap = p.tap0; tap < p.tap1; tap++) {
        let tap_offset = (tap / p.kernel_w) * row + (tap % p.kernel_w) * p.in_quads;
        //@tap
        for (var quad = p.quad0; quad < p.quad1; quad++) {
            let off = tap_offset + quad;
            let w = k * C;
            //@step
            k++;
        }
    }
    //@store
}
//@end

// The same result tile with the weights read from storage, every block in one dispatch. Sums
// in the same order as the uniform variant. With subgroups (family conv_tile_subgroup) each
// lane loads one of eight weight vec4s and the subgroup shares them by broadcast: an eighth of
// the loads, which software adapters pay per lane even when every lane reads the same value.
// Invocations: ceil(batch * out_h * out_w / P) (x, y) x out_pad / C (z): a workgroup's lanes
// share their output channels, and tiles past the end compute (clamped) but store nothing, so
// every lane of a subgroup takes part in the broadcasts.
//@template forward_storage
@compute @workgroup_size(16)
fn conv_tile_forward_storage_C(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    //@lane
) {
    //@sizes
    let total = p.batch * p.out_h * p.out_w;
    let q0 = tile_index(gid, nwg) * P;
    let c0 = gid.z * C;
    let last = total - 1u;
    //@pixels
    //@declare
    let row = p.in_w * p.in_quads;
    let blocks = weight_blocks();
    for (var b = 0u; b < blocks; b++) {
        let steps = block_steps(b);
        var w = packed_block(c0 / C, b) * block_vec4s(C);
        for (var tap = steps.x; tap < steps.y; tap++) {
            let tap_offset = (tap / p.kernel_w) * row + (tap % p.kernel_w) * p.in_quads;
            //@tap
            for (var quad = steps.z; quad < steps.w; quad++) {
                let off = tap_offset + quad;
                //@step
                w += C;
            }
        }
    }
    //@store
}
//@end

// Passes over few pixels (src/ops/conv_gemm.rs `WeightReads::SubgroupInputs`): lanes take
// output channels rather than pixels, P pixels x C channels each, so a pass of fewer than 16
// pixel tiles still fills every lane. A workgroup's lanes share their pixels (each eight lanes
// of a subgroup load them once and broadcast them) and load their own weights. Sums in the
// same order as the kernels above. Invocations: out_pad / C channel tiles, rounded up to whole
// workgroups (x; lanes past the last tile compute it, clamped, and store nothing), by pixel
// tiles (y, folded into z past 65535). Workgroups of TILE_LANES lanes.
//@template forward_lanes
@compute @workgroup_size(TILE_LANES)
fn conv_tile_forward_lanes_C(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    //@lane
) {
    //@sizes
    let total = p.batch * p.out_h * p.out_w;
    let q0 = (wid.y + wid.z * nwg.y) * P;
    let tiles = p.out_pad / C;
    let c0 = min(gid.x, tiles - 1u) * C;
    let last = total - 1u;
    //@pixels
    //@declare
    let row = p.in_w * p.in_quads;
    let blocks = weight_blocks();
    for (var b = 0u; b < blocks; b++) {
        let steps = block_steps(b);
        var w = packed_block(c0 / C, b) * block_vec4s(C);
        for (var tap = steps.x; tap < steps.y; tap++) {
            let tap_offset = (tap / p.kernel_w) * row + (tap % p.kernel_w) * p.in_quads;
            //@tap
            for (var quad = steps.z; quad < steps.w; quad++) {
                let off = tap_offset + quad;
                //@step
                w += C;
            }
        }
    }
    if (gid.x < tiles) {
        //@store
    }
}
//@end

// ---------------------------------------------------------------- weight gradient
// (With subgroups, x and dy are read from their textures instead: texel_x, texel_w.)
@group(0) @binding(1) var<storage, read> tw_x: array<vec4<f32>>;
// dy channels-last (gradient_channels_last).
@group(0) @binding(2) var<storage, read> tw_dy: array<vec4<f32>>;
// Partial sums [chunk][out_pad][tap][in_quads * 4].
@group(0) @binding(3) var<storage, read_write> tw_part: array<vec4<f32>>;

fn outer(x: vec4<f32>, d: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(x * d.x, x * d.y, x * d.z, x * d.w);
}

// Columns k of m: output channel c + k, four input channels from quad on.
fn store_weight_partial(chunk: u32, tap: u32, c: u32, quad: u32, m: mat4x4<f32>) {
    let taps = p.kernel_h * p.kernel_w;
    for (var k = 0u; k < 4u; k++) {
        tw_part[((chunk * p.out_pad + c + k) * taps + tap) * p.in_quads + quad] = m[k];
    }
}

// A weight-gradient invocation's walk over its chunk's batch-wide pixels: the pixel's (image,
// row, column), the first of its window's vec4s in the input copy (`xq`, with the tap's offset
// `col0` added) and its place in dy (whose outputs a band of a split convolution places from
// (store_y0, store_x0) of the whole output), stepped without divisions (they cost a scalar loop
// per lane on software adapters).
struct PixelWalk {
    n: u32,
    oy: u32,
    ox: u32,
    xq: u32,
    dp: u32,
    col0: u32,
}

// The walk with its places (xq, dp) found from its (image, row, column).
fn walk_placed(w: PixelWalk) -> PixelWalk {
    let dy = stored_size();
    var out = w;
    out.xq = ((w.n * p.in_h + w.oy * p.stride_h + p.window_y0) * p.in_w + w.ox * p.stride_w) * p.in_quads + w.col0;
    out.dp = (w.n * dy.x + w.oy + p.store_y0) * dy.y + w.ox + p.store_x0;
    return out;
}

// The walk at batch-wide pixel q.
fn pixel_walk(q: u32, col0: u32) -> PixelWalk {
    let pixels = p.out_h * p.out_w;
    return walk_placed(PixelWalk(q / pixels, (q % pixels) / p.out_w, q % p.out_w, 0u, 0u, col0));
}

// The walk one pixel on.
fn next_pixel(w: ptr<function, PixelWalk>) {
    (*w).ox++;
    (*w).xq += p.stride_w * p.in_quads;
    (*w).dp++;
    if ((*w).ox == p.out_w) {
        (*w).ox = 0u;
        (*w).oy++;
        if ((*w).oy == p.out_h) {
            (*w).oy = 0u;
            (*w).n++;
        }
        // Only the places are assigned: assigning the whole walk ran 2-3% slower on lavapipe.
        let placed = walk_placed(*w);
        (*w).xq = placed.xq;
        (*w).dp = placed.dp;
    }
}

// One invocation: 32 output channels x I input channels of one tap, summed over one chunk of
// batch-wide pixels; per pixel 8 + I / 4 vec4 loads for 32 * I multiply-adds. The output tile
// and chunk are the workgroup's (y, z), invocations differ by tap and input tile (x).
// With subgroups, the dy loads every lane shares are broadcast as in the forward kernel (and
// lanes past the end compute a clamped tile but store nothing).
// Workgroups: ceil(taps * in_quads * 4 / I / TILE_LANES) x (out_pad / 32) x chunks.
//@template weight
@compute @workgroup_size(TILE_LANES)
fn conv_tile_weight_I(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    //@lane
) {
    //@sizes
    let taps = p.kernel_h * p.kernel_w;
    let in_tiles = p.in_quads * 4u / I;
    let lane_tile = min(gid.x, taps * in_tiles - 1u);
    let quad0 = (lane_tile % in_tiles) * (I / 4u);
    let tap = lane_tile / in_tiles;
    let c0 = wid.y * WEIGHT_TILE_OUT;
    let chunk = wid.z;
    let tap_offset = ((tap / p.kernel_w) * p.in_w + tap % p.kernel_w) * p.in_quads + quad0;
    let total = p.batch * p.out_h * p.out_w;
    let start = chunk * p.chunk_len;
    let end = min(total, start + p.chunk_len);
    var walk = pixel_walk(start, p.window_x0 * p.in_quads + tap_offset);
    //@declare
    // PIXELS_PER_STEP pixels per iteration, each result adding them in order: software adapters
    // store a loop's running sums under the lane mask once per iteration, however many terms
    // each takes in it. A pixel past the chunk's end adds -0.0, which changes no sum.
    for (var q = start; q < end; q += PIXELS_PER_STEP) {
        //@step
    }
    if (gid.x < taps * in_tiles) {
        //@store
    }
}
//@end

@group(0) @binding(1) var<storage, read> tr_part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> tr_dw: array<f32>;
// The same dw as vec4s (weights whose input channels come in fours).
@group(0) @binding(2) var<storage, read_write> tr_dw4: array<vec4<f32>>;

// The reduction adds the partial sums of every pass of the weight gradient (the bands of a
// split convolution, or the one pass), each in a region of its own: pass b is p.bands[b] =
// (its used taps: ky0 | rows << 8 | kx0 << 16 | columns << 24, in the weight's own kernel;
// its region's first vec4; its chunks). An invocation takes one (output channel, input quad)
// over every tap, so its index arithmetic — divisions, which software adapters pay per lane —
// is done once per quad. Invocations: weight_out x in_quads, quads fastest.

// Whether pass b reads full tap (ky, kx).
fn pass_reads(b: u32, ky: u32, kx: u32) -> bool {
    let taps = p.bands[b].x;
    let ky0 = taps & 0xffu;
    let kx0 = (taps >> 16u) & 0xffu;
    return ky >= ky0 && ky < ky0 + ((taps >> 8u) & 0xffu) && kx >= kx0 && kx < kx0 + (taps >> 24u);
}

// Pass b's partial sums of (output channel co, full tap (ky, kx), input quad), over its chunks in
// order; zero for a tap it does not read.
fn pass_sum(b: u32, co: u32, ky: u32, kx: u32, quad: u32) -> vec4<f32> {
    var sum = vec4<f32>();
    if (!pass_reads(b, ky, kx)) { return sum; }
    let band = p.bands[b];
    let rows = (band.x >> 8u) & 0xffu;
    let cols = band.x >> 24u;
    let tap = (ky - (band.x & 0xffu)) * cols + kx - ((band.x >> 16u) & 0xffu);
    for (var s = 0u; s < band.z; s++) {
        sum += tr_part[band.y + ((s * p.out_pad + co) * rows * cols + tap) * p.in_quads + quad];
    }
    return sum;
}

// Full tap (ky, kx)'s gradient: where pass t reads full tap t alone (p.pass_per_tap: a 2x2
// map's tap bands), that pass's sum; else the first pass's sum, then each later pass's sum
// where it reads the tap, in pass order. Either is added to `old`, dw's values, when
// accumulating.
fn tap_gradient(co: u32, ky: u32, kx: u32, quad: u32, old: vec4<f32>) -> vec4<f32> {
    if (p.pass_per_tap != 0u) {
        let v = pass_sum(ky * p.full_kernel_w + kx, co, ky, kx, quad);
        return select(v, old + v, p.accumulate != 0u);
    }
    var v = pass_sum(0u, co, ky, kx, quad);
    if (p.accumulate != 0u) { v = old + v; }
    for (var b = 1u; b < p.band_count; b++) {
        if (pass_reads(b, ky, kx)) { v += pass_sum(b, co, ky, kx, quad); }
    }
    return v;
}

// dw [weight_out][weight_in][kh][kw] = (or +=) the passes' sums, four input channels at a time
// (placed by weight_offset: columns folded into channels go back to the weight's own layout).
@compute @workgroup_size(64)
fn reduce_weight_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let quad = i % p.in_quads;
    let co = i / p.in_quads;
    let full_kernel_h = p.full_taps / p.full_kernel_w;
    let out_stride = p.weight_in * p.full_taps;
    var t = 0u;
    for (var ky = 0u; ky < full_kernel_h; ky++) {
        for (var kx = 0u; kx < p.full_kernel_w; kx++) {
            var old = vec4<f32>();
            // Read dw only to add to it: every access costs software adapters a lane loop.
            if (p.accumulate != 0u) {
                for (var k = 0u; k < 4u; k++) {
                    if (quad * 4u + k < p.weight_in) { old[k] = tr_dw[co * out_stride + weight_offset(quad * 4u + k, t)]; }
                }
            }
            let v = tap_gradient(co, ky, kx, quad, old);
            for (var k = 0u; k < 4u; k++) {
                if (quad * 4u + k < p.weight_in) { tr_dw[co * out_stride + weight_offset(quad * 4u + k, t)] = v[k]; }
            }
            t++;
        }
    }
}

// The same for weights whose input channels come in fours, with 1x1 or 3x3 kernels: an
// invocation's values are 4 * full_taps consecutive ones of dw, loaded and stored as vec4s
// (software adapters pay a lane loop for every storage access, whatever its width).

// 1x1: the four values are vec4 i of dw, the sum of the one pass's chunks, chunk c's at
// c * chunk_stride + co * co_stride + quad (no pass table to look up). The same values added in
// the same order as tap_gradient adds them.
@compute @workgroup_size(64)
fn reduce_weight_partials_1x1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let at = (i / p.in_quads) * p.co_stride + i % p.in_quads;
    var sum = vec4<f32>();
    for (var c = 0u; c < p.chunks; c++) {
        sum += tr_part[at + c * p.chunk_stride];
    }
    store_sum_1x1(i, sum);
}

// The same, reading the partial sums through a texture (tr_part_texels, declared below with
// the 3x3 twin's), as the same loads in the same order.
@compute @workgroup_size(64)
fn reduce_weight_partials_1x1_textured(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let at = (i / p.in_quads) * p.co_stride + i % p.in_quads;
    var sum = vec4<f32>();
    for (var c = 0u; c < p.chunks; c++) {
        sum += buffer_texel(tr_part_texels, at + c * p.chunk_stride);
    }
    store_sum_1x1(i, sum);
}

// Invocation i's sum into dw, added to what is there when accumulating.
fn store_sum_1x1(i: u32, sum: vec4<f32>) {
    if (p.accumulate != 0u) {
        tr_dw4[i] = tr_dw4[i] + sum;
    } else {
        tr_dw4[i] = sum;
    }
}

// 3x3: 36 values, value 9 k + t being input channel 4 quad + k's tap t, vec4 j holding values
// 4 j .. 4 j + 3. The kernels hold tap t's four-channel vector as element t of a constant-indexed
// array, which software adapters keep in registers.

// The four-channel vectors of taps 0 .. 8 of the 36 values of dw from vec4 `first` on.
fn dw_taps_3x3(first: u32) -> array<vec4<f32>, 9> {
    let a0 = tr_dw4[first];
    let a1 = tr_dw4[first + 1u];
    let a2 = tr_dw4[first + 2u];
    let a3 = tr_dw4[first + 3u];
    let a4 = tr_dw4[first + 4u];
    let a5 = tr_dw4[first + 5u];
    let a6 = tr_dw4[first + 6u];
    let a7 = tr_dw4[first + 7u];
    let a8 = tr_dw4[first + 8u];
    return array<vec4<f32>, 9>(
        vec4<f32>(a0.x, a2.y, a4.z, a6.w),
        vec4<f32>(a0.y, a2.z, a4.w, a7.x),
        vec4<f32>(a0.z, a2.w, a5.x, a7.y),
        vec4<f32>(a0.w, a3.x, a5.y, a7.z),
        vec4<f32>(a1.x, a3.y, a5.z, a7.w),
        vec4<f32>(a1.y, a3.z, a5.w, a8.x),
        vec4<f32>(a1.z, a3.w, a6.x, a8.y),
        vec4<f32>(a1.w, a4.x, a6.y, a8.z),
        vec4<f32>(a2.x, a4.y, a6.z, a8.w),
    );
}

// The inverse: taps' four-channel vectors stored as the 36 values from vec4 `first` on.
fn store_dw_taps_3x3(first: u32, s: array<vec4<f32>, 9>) {
    tr_dw4[first] = vec4<f32>(s[0].x, s[1].x, s[2].x, s[3].x);
    tr_dw4[first + 1u] = vec4<f32>(s[4].x, s[5].x, s[6].x, s[7].x);
    tr_dw4[first + 2u] = vec4<f32>(s[8].x, s[0].y, s[1].y, s[2].y);
    tr_dw4[first + 3u] = vec4<f32>(s[3].y, s[4].y, s[5].y, s[6].y);
    tr_dw4[first + 4u] = vec4<f32>(s[7].y, s[8].y, s[0].z, s[1].z);
    tr_dw4[first + 5u] = vec4<f32>(s[2].z, s[3].z, s[4].z, s[5].z);
    tr_dw4[first + 6u] = vec4<f32>(s[6].z, s[7].z, s[8].z, s[0].w);
    tr_dw4[first + 7u] = vec4<f32>(s[1].w, s[2].w, s[3].w, s[4].w);
    tr_dw4[first + 8u] = vec4<f32>(s[5].w, s[6].w, s[7].w, s[8].w);
}

@compute @workgroup_size(64)
fn reduce_weight_partials_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let quad = i % p.in_quads;
    let co = i / p.in_quads;
    var old: array<vec4<f32>, 9>;
    if (p.accumulate != 0u) { old = dw_taps_3x3(i * 9u); }
    store_dw_taps_3x3(i * 9u, array<vec4<f32>, 9>(
        tap_gradient(co, 0u, 0u, quad, old[0]),
        tap_gradient(co, 0u, 1u, quad, old[1]),
        tap_gradient(co, 0u, 2u, quad, old[2]),
        tap_gradient(co, 1u, 0u, quad, old[3]),
        tap_gradient(co, 1u, 1u, quad, old[4]),
        tap_gradient(co, 1u, 2u, quad, old[5]),
        tap_gradient(co, 2u, 0u, quad, old[6]),
        tap_gradient(co, 2u, 1u, quad, old[7]),
        tap_gradient(co, 2u, 2u, quad, old[8]),
    ));
}

// reduce_weight_partials_3x3 where each tap's sums come from one pass: one pass over the whole
// kernel, or one pass of one chunk per tap. Chunk c's four-channel vector of tap t and output
// channel co lies at c * chunk_stride + co * co_stride + t * tap_stride + quad, with no pass
// table to look up. Adds the same values in the same order.
@compute @workgroup_size(64)
fn reduce_weight_partials_3x3_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let t = p.tap_stride;
    var s: array<vec4<f32>, 9>;
    for (var c = 0u; c < p.chunks; c++) {
        let at = c * p.chunk_stride + (i / p.in_quads) * p.co_stride + i % p.in_quads;
        s[0] += tr_part[at];
        s[1] += tr_part[at + t];
        s[2] += tr_part[at + 2u * t];
        s[3] += tr_part[at + 3u * t];
        s[4] += tr_part[at + 4u * t];
        s[5] += tr_part[at + 5u * t];
        s[6] += tr_part[at + 6u * t];
        s[7] += tr_part[at + 7u * t];
        s[8] += tr_part[at + 8u * t];
    }
    store_strided_sums(i, s);
}

// The same, reading the partial sums through a texture (src/gpu/kernel.rs
// `Gpu::dispatch_streaming`), as the same loads in the same order. The loop is repeated, not
// shared: a pipeline binds everything its entry point's code can reach.
@group(0) @binding(15) var tr_part_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn reduce_weight_partials_3x3_strided_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(gid, nwg);
    if (i >= p.weight_out * p.in_quads) { return; }
    let t = p.tap_stride;
    var s: array<vec4<f32>, 9>;
    for (var c = 0u; c < p.chunks; c++) {
        let at = c * p.chunk_stride + (i / p.in_quads) * p.co_stride + i % p.in_quads;
        s[0] += buffer_texel(tr_part_texels, at);
        s[1] += buffer_texel(tr_part_texels, at + t);
        s[2] += buffer_texel(tr_part_texels, at + 2u * t);
        s[3] += buffer_texel(tr_part_texels, at + 3u * t);
        s[4] += buffer_texel(tr_part_texels, at + 4u * t);
        s[5] += buffer_texel(tr_part_texels, at + 5u * t);
        s[6] += buffer_texel(tr_part_texels, at + 6u * t);
        s[7] += buffer_texel(tr_part_texels, at + 7u * t);
        s[8] += buffer_texel(tr_part_texels, at + 8u * t);
    }
    store_strided_sums(i, s);
}

// Invocation i's nine tap sums into dw, added to what is there when accumulating.
fn store_strided_sums(i: u32, sums: array<vec4<f32>, 9>) {
    var s = sums;
    if (p.accumulate != 0u) {
        let old = dw_taps_3x3(i * 9u);
        s = array<vec4<f32>, 9>(
            old[0] + s[0], old[1] + s[1], old[2] + s[2], old[3] + s[3], old[4] + s[4],
            old[5] + s[5], old[6] + s[6], old[7] + s[7], old[8] + s[8],
        );
    }
    store_dw_taps_3x3(i * 9u, s);
}

// ---------------------------------------------------------------- workgroup-memory tiles
// Real GPUs: a workgroup of 256 invocations computes SHARED_PIXELS batch-wide pixels x T
// packed weight tiles of 64 output channels (pack_weight_forward / pack_weight_backward with
// tile = 64), staging SHARED_STEPS (tap, input quad) steps of inputs and weights at a time in
// workgroup memory, so each input and weight vec4 is loaded from memory once per workgroup
// rather than once per invocation. An invocation holds 8 pixels (16 apart) x 4 channels of each
// tile, as named values (the template's markers, src/gpu/conv_tiles.rs): a local array indexed
// in a loop may be kept in memory rather than registers. Every result sums its terms in the same
// order as the register-tile kernels above (steps in tap, quad order; lanes x, y, z, w).
const SHARED_PIXELS: u32 = 128u;
const SHARED_STEPS: u32 = 8u;
const SHARED_CHANNELS: u32 = 64u;
var<workgroup> shared_x: array<vec4<f32>, 1024>; // [step][pixel]
var<workgroup> shared_w: array<vec4<f32>, 1024>; // [step][tile][input lane][channel quad]

// The first of the 64 vec4s (4 input lanes x 64 channels) of step s of weight tile t, in
// pack_weight_forward's layout (the inverse of packed_source).
fn packed_step(t: u32, s: u32) -> u32 {
    let tap = s / p.in_quads;
    let quad = s % p.in_quads;
    var b: u32;
    var k: u32;
    if (p.in_quads <= STEPS) {
        let per = STEPS / p.in_quads;
        b = tap / per;
        k = (tap % per) * p.in_quads + quad;
    } else {
        b = tap * ((p.in_quads + STEPS - 1u) / STEPS) + quad / STEPS;
        k = quad % STEPS;
    }
    return packed_block(t, b) * block_vec4s(SHARED_CHANNELS) + k * SHARED_CHANNELS;
}

// Where step s reads in the input copy, relative to a pixel's window.
fn step_offset(s: u32) -> u32 {
    let tap = s / p.in_quads;
    return ((tap / p.kernel_w) * p.in_w + tap % p.kernel_w) * p.in_quads + s % p.in_quads;
}

// Workgroups: ceil(batch * out_h * out_w / 128) (x, y) x ceil(out_pad / (64 T)) (z); tiles past
// out_pad (the last workgroup's second, when the count is odd) read zeros and store nothing.
//@template shared
@compute @workgroup_size(256)
fn conv_shared_forward_T(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    //@sizes
    let total = p.batch * p.out_h * p.out_w;
    let last = total - 1u;
    let q0 = (wid.x + wid.y * nwg.x) * SHARED_PIXELS;
    let tiles = p.out_pad / SHARED_CHANNELS;
    let t0 = T * wid.z;
    // Loading: this invocation's step within a stage and its four pixels, 32 apart.
    let load_step = lid % SHARED_STEPS;
    let load_px = lid / SHARED_STEPS;
    var windows: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        windows[r] = window(min(q0 + load_px + 32u * r, last));
    }
    // Computing: channel quad cq of each tile, pixels tp + 16 i.
    let cq = lid % 16u;
    let tp = lid / 16u;
    let q = q0 + tp;
    let c0 = t0 * SHARED_CHANNELS + 4u * cq;
    //@declare
    let steps = p.kernel_h * p.kernel_w * p.in_quads;
    for (var s0 = 0u; s0 < steps; s0 += SHARED_STEPS) {
        let s = s0 + load_step;
        let inside = s < steps;
        let off = select(0u, step_offset(s), inside);
        for (var r = 0u; r < 4u; r++) {
            shared_x[load_step * SHARED_PIXELS + load_px + 32u * r] = select(vec4<f32>(), tf_x[windows[r] + off], inside);
        }
        for (var r = 0u; r < 2u * T; r++) {
            let e = lid + 256u * r;
            let ws = s0 + e / (64u * T);
            let t = t0 + (e % (64u * T)) / 64u;
            var w = vec4<f32>();
            if (ws < steps && t < tiles) {
                w = ts_w[packed_step(t, ws) + e % 64u];
            }
            shared_w[e] = w;
        }
        workgroupBarrier();
        // Whole stages in a loop of constant length (unrolled by GPU compilers), the last
        // partial one step by step.
        if (steps - s0 >= SHARED_STEPS) {
            for (var k = 0u; k < SHARED_STEPS; k++) {
                //@step
            }
        } else {
            for (var k = 0u; k < steps - s0; k++) {
                //@step
            }
        }
        workgroupBarrier();
    }
    //@store
}
//@end

var<workgroup> shared_dy: array<vec4<f32>, 256>; // [pixel][output quad]
var<workgroup> shared_xw: array<vec4<f32>, 256>; // [pixel][input quad]

// The weight gradient's partial sums with workgroup-memory tiles (real GPUs): a workgroup sums
// 64 output x 64 input channels of one tap over one chunk of pixels, staging 16 pixels of dy and
// x at a time; an invocation holds one 4 x 4 block. Same chunks, same order (pixels in order,
// `outer` per pixel) as conv_tile_weight_I, so the same partial sums.
// Workgroups: taps * ceil(in_quads / 16) (x) x ceil(out_pad / 64) (y) x chunks (z).
@compute @workgroup_size(256)
fn conv_shared_weight(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let in_tiles = (p.in_quads + 15u) / 16u;
    let tap = wid.x / in_tiles;
    let iq0 = (wid.x % in_tiles) * 16u;
    let oq0 = wid.y * 16u;
    let chunk = wid.z;
    let total = p.batch * p.out_h * p.out_w;
    let start = chunk * p.chunk_len;
    let end = min(total, start + p.chunk_len);
    let pixels = p.out_h * p.out_w;
    let tap_offset = ((tap / p.kernel_w) * p.in_w + tap % p.kernel_w) * p.in_quads;
    let dy_size = stored_size();
    let out_quads = p.out_pad / 4u;
    // Loading: pixel j of a stage, quad u of its x and dy tiles.
    let j = lid / 16u;
    let u = lid % 16u;
    let load_x = iq0 + u < p.in_quads;
    let load_dy = oq0 + u < out_quads;
    // Computing: output quad oq, input quad iq.
    let oq = lid / 16u;
    let iq = lid % 16u;
    var m = mat4x4<f32>();
    for (var q0 = start; q0 < end; q0 += 16u) {
        let q = q0 + j;
        var x = vec4<f32>();
        var d = vec4<f32>();
        if (q < end) {
            let n = q / pixels;
            let oy = (q % pixels) / p.out_w;
            let ox = q % p.out_w;
            let y = oy * p.stride_h + p.window_y0;
            let col = ox * p.stride_w + p.window_x0;
            if (load_x) { x = tw_x[((n * p.in_h + y) * p.in_w + col) * p.in_quads + tap_offset + iq0 + u]; }
            let dp = (n * dy_size.x + oy + p.store_y0) * dy_size.y + ox + p.store_x0;
            if (load_dy) { d = tw_dy[dp * out_quads + oq0 + u]; }
        }
        shared_xw[lid] = x;
        shared_dy[lid] = d;
        workgroupBarrier();
        let n = min(16u, end - q0);
        for (var k = 0u; k < n; k++) {
            m += outer(shared_xw[k * 16u + iq], shared_dy[k * 16u + oq]);
        }
        workgroupBarrier();
    }
    if (oq0 + oq < out_quads && iq0 + iq < p.in_quads) {
        store_weight_partial(chunk, tap, 4u * (oq0 + oq), iq0 + iq, m);
    }
}
