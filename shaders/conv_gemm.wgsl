// Convolution as implicit GEMM with register tiles, for ungrouped convolutions (NCHW
// activations, OIHW weights). Forward and input-gradient invocations own 32 channels x 8
// pixels of results, held in sixteen 4x4 matrices (two `Tile`s) rather than an array: software
// adapters keep them in registers only when every access is static. Per reduction step they
// load 8 activations (gathers) and 32 weights (eight vec4 loads from a weight copy packed
// channel-minor), for 256 multiply-adds. The weight gradient tiles 16 channels x 8 taps.
//
// Kernels that `conv.wgsl` also has give the same results up to float rounding order; which
// family runs is fixed per shape (src/ops/conv2d.rs), so a run never switches between them.

// ConvParams comes from conv_common.wgsl.

@group(0) @binding(0) var<uniform> p: ConvParams;

// Channels per invocation tile of the forward and input-gradient kernels (two Tiles), and
// the padding of the packed weights; the weight-gradient kernel tiles 16 (one Tile).
const CHANNELS: u32 = 32u;
const WEIGHT_CHANNELS: u32 = 16u;

// Results for channels 4c..4c+3 (matrix columns) of pixels 0..3 (`a`) and 4..7 (`b`).
struct Tile {
    a0: mat4x4<f32>, a1: mat4x4<f32>, a2: mat4x4<f32>, a3: mat4x4<f32>,
    b0: mat4x4<f32>, b1: mat4x4<f32>, b2: mat4x4<f32>, b3: mat4x4<f32>,
}

fn outer(px: vec4<f32>, ch: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(px * ch.x, px * ch.y, px * ch.z, px * ch.w);
}

// tile += pixels (xa, xb) x channels (c0..c3), an outer product of 8 by 16 values.
fn tile_fma(t: ptr<function, Tile>, xa: vec4<f32>, xb: vec4<f32>, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>) {
    (*t).a0 += outer(xa, c0); (*t).a1 += outer(xa, c1); (*t).a2 += outer(xa, c2); (*t).a3 += outer(xa, c3);
    (*t).b0 += outer(xb, c0); (*t).b1 += outer(xb, c1); (*t).b2 += outer(xb, c2); (*t).b3 += outer(xb, c3);
}

fn padded(n: u32) -> u32 {
    return (n + CHANNELS - 1u) / CHANNELS * CHANNELS;
}

// ---------------------------------------------------------------- weight packing
@group(0) @binding(1) var<storage, read> pack_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> pack_out: array<f32>;

// Forward copy: packed[k][c_out padded to 32], k = (ci, ky, kx). Invocations: k x padded c_out.
@compute @workgroup_size(64)
fn pack_weight_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let cpad = padded(p.c_out);
    let k_len = p.c_in * p.kernel_h * p.kernel_w;
    if (i >= k_len * cpad) { return; }
    let k = i / cpad;
    let co = i % cpad;
    pack_out[i] = select(0.0, pack_w[min(co, p.c_out - 1u) * k_len + k], co < p.c_out);
}

// Input-gradient copy: packed[co][tap][c_in padded to 32]. Invocations: c_out x taps x padded c_in.
@compute @workgroup_size(64)
fn pack_weight_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let cpad = padded(p.c_in);
    let taps = p.kernel_h * p.kernel_w;
    if (i >= p.c_out * taps * cpad) { return; }
    let ci = i % cpad;
    let tap = (i / cpad) % taps;
    let co = i / (cpad * taps);
    pack_out[i] = select(0.0, pack_w[(co * p.c_in + min(ci, p.c_in - 1u)) * taps + tap], ci < p.c_in);
}

// Output-gradient copy for the weight gradient: dy [n][c_out][pixel] to channels-last
// [n * pixels][c_out padded to 16], so a tile's 16 channels load as four vec4s.
// Invocations: batch * out_h * out_w x padded c_out.
@compute @workgroup_size(64)
fn pack_gradient_channels_last(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let cpad = (p.c_out + WEIGHT_CHANNELS - 1u) / WEIGHT_CHANNELS * WEIGHT_CHANNELS;
    let pixels = p.out_h * p.out_w;
    if (i >= p.batch * pixels * cpad) { return; }
    let co = i % cpad;
    let q = i / cpad;
    let at = ((q / pixels) * p.c_out + min(co, p.c_out - 1u)) * pixels + q % pixels;
    pack_out[i] = select(0.0, pack_w[at], co < p.c_out);
}

// ---------------------------------------------------------------- forward
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_wp: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

// Each buffer has its gather (WGSL passes no storage pointers to functions).
fn gather_fwd_x(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(fwd_x[at.x], fwd_x[at.y], fwd_x[at.z], fwd_x[at.w]), inside);
}

// Pixel tiles run over the whole batch (pixel q = n * out_h * out_w + oy * out_w + ox), so
// small late-stage maps (2x2, 1x1) still fill every tile.
// Invocations: ceil(c_out / 16) x ceil(batch * out_h * out_w / 8), pixel tiles fastest.
@compute @workgroup_size(64)
fn conv_gemm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.out_h * p.out_w;
    let total = p.batch * pixels;
    let pixel_tiles = (total + PIXELS - 1u) / PIXELS;
    let channel_tiles = (p.c_out + CHANNELS - 1u) / CHANNELS;
    let t = flat_index(gid, nwg);
    if (t >= channel_tiles * pixel_tiles) { return; }
    let pt = t % pixel_tiles;
    let ct = t / pixel_tiles;

    let qa = tile_lo(pt * PIXELS, total);
    let qb = tile_hi(pt * PIXELS, total);
    let pa = qa % pixels;
    let pb = qb % pixels;
    let plane = p.h * p.w;
    let na = (qa / pixels) * p.c_in * plane;
    let nb = (qb / pixels) * p.c_in * plane;
    let y0a = vec4<i32>((pa / p.out_w) * p.stride_h) - i32(p.pad_h);
    let x0a = vec4<i32>((pa % p.out_w) * p.stride_w) - i32(p.pad_w);
    let y0b = vec4<i32>((pb / p.out_w) * p.stride_h) - i32(p.pad_h);
    let x0b = vec4<i32>((pb % p.out_w) * p.stride_w) - i32(p.pad_w);
    let hi = vec4<i32>(i32(p.h) - 1);
    let wi = vec4<i32>(i32(p.w) - 1);
    let zero = vec4<i32>(0);

    // Channels c0 .. c0 + 15 in `tile`, c0 + 16 .. c0 + 31 in `upper`.
    var tile: Tile;
    var upper: Tile;
    let quads = padded(p.c_out) / 4u;
    var k = 0u;
    for (var ci = 0u; ci < p.c_in; ci++) {
        let base_a = na + ci * plane;
        let base_b = nb + ci * plane;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            let iya = y0a + i32(ky);
            let iyb = y0b + i32(ky);
            let rowa = vec4<u32>(clamp(iya, zero, hi)) * p.w + base_a;
            let rowb = vec4<u32>(clamp(iyb, zero, hi)) * p.w + base_b;
            let ya_in = iya >= zero & iya <= hi;
            let yb_in = iyb >= zero & iyb <= hi;
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let ixa = x0a + i32(kx);
                let ixb = x0b + i32(kx);
                let xa = gather_fwd_x(rowa + vec4<u32>(clamp(ixa, zero, wi)), ya_in & ixa >= zero & ixa <= wi);
                let xb = gather_fwd_x(rowb + vec4<u32>(clamp(ixb, zero, wi)), yb_in & ixb >= zero & ixb <= wi);
                let wq = k * quads + ct * 8u;
                tile_fma(&tile, xa, xb, fwd_wp[wq], fwd_wp[wq + 1u], fwd_wp[wq + 2u], fwd_wp[wq + 3u]);
                tile_fma(&upper, xa, xb, fwd_wp[wq + 4u], fwd_wp[wq + 5u], fwd_wp[wq + 6u], fwd_wp[wq + 7u]);
                k++;
            }
        }
    }
    let c0 = ct * CHANNELS;
    let q0 = pt * PIXELS;
    store_fwd(tile.a0, c0, q0); store_fwd(tile.a1, c0 + 4u, q0);
    store_fwd(tile.a2, c0 + 8u, q0); store_fwd(tile.a3, c0 + 12u, q0);
    store_fwd(tile.b0, c0, q0 + 4u); store_fwd(tile.b1, c0 + 4u, q0 + 4u);
    store_fwd(tile.b2, c0 + 8u, q0 + 4u); store_fwd(tile.b3, c0 + 12u, q0 + 4u);
    store_fwd(upper.a0, c0 + 16u, q0); store_fwd(upper.a1, c0 + 20u, q0);
    store_fwd(upper.a2, c0 + 24u, q0); store_fwd(upper.a3, c0 + 28u, q0);
    store_fwd(upper.b0, c0 + 16u, q0 + 4u); store_fwd(upper.b1, c0 + 20u, q0 + 4u);
    store_fwd(upper.b2, c0 + 24u, q0 + 4u); store_fwd(upper.b3, c0 + 28u, q0 + 4u);
}

// Stores one 4-channel x 4-pixel block of output (plus bias), skipping what lies outside.
fn store_fwd(m: mat4x4<f32>, c0: u32, q0: u32) {
    store_fwd_column(m[0], c0, q0);
    store_fwd_column(m[1], c0 + 1u, q0);
    store_fwd_column(m[2], c0 + 2u, q0);
    store_fwd_column(m[3], c0 + 3u, q0);
}

// Output index of channel `co` at batch-wide pixel `q`.
fn fwd_at(co: u32, q: u32) -> u32 {
    let pixels = p.out_h * p.out_w;
    return ((q / pixels) * p.c_out + co) * pixels + q % pixels;
}

fn store_fwd_column(v: vec4<f32>, co: u32, q0: u32) {
    if (co >= p.c_out) { return; }
    let total = p.batch * p.out_h * p.out_w;
    let v_b = v + select(0.0, fwd_bias[co], p.has_bias != 0u);
    if (q0 < total) { fwd_y[fwd_at(co, q0)] = v_b.x; }
    if (q0 + 1u < total) { fwd_y[fwd_at(co, q0 + 1u)] = v_b.y; }
    if (q0 + 2u < total) { fwd_y[fwd_at(co, q0 + 2u)] = v_b.z; }
    if (q0 + 3u < total) { fwd_y[fwd_at(co, q0 + 3u)] = v_b.w; }
}

// ---------------------------------------------------------------- gradient to the input
@group(0) @binding(1) var<storage, read> bin_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bin_wp: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bin_dx: array<f32>;

fn gather_bin_dy(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(bin_dy[at.x], bin_dy[at.y], bin_dy[at.z], bin_dy[at.w]), inside);
}

// dx[n, ci, iy, ix] = sum_{co, ky, kx} w[co, ci, ky, kx] * dy[n, co, (iy + pad - ky) / s, ...]
// where the division is exact. Pixel tiles run over the whole batch, as in the forward.
// Invocations: ceil(c_in / 16) x ceil(batch * h * w / 8).
@compute @workgroup_size(64)
fn conv_gemm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.h * p.w;
    let total = p.batch * pixels;
    let pixel_tiles = (total + PIXELS - 1u) / PIXELS;
    let channel_tiles = (p.c_in + CHANNELS - 1u) / CHANNELS;
    let t = flat_index(gid, nwg);
    if (t >= channel_tiles * pixel_tiles) { return; }
    let pt = t % pixel_tiles;
    let ct = t / pixel_tiles;

    let qa = tile_lo(pt * PIXELS, total);
    let qb = tile_hi(pt * PIXELS, total);
    let pa = qa % pixels;
    let pb = qb % pixels;
    let out_plane = p.out_h * p.out_w;
    let na = (qa / pixels) * p.c_out * out_plane;
    let nb = (qb / pixels) * p.c_out * out_plane;
    let ya = vec4<i32>(pa / p.w) + i32(p.pad_h);
    let xa = vec4<i32>(pa % p.w) + i32(p.pad_w);
    let yb = vec4<i32>(pb / p.w) + i32(p.pad_h);
    let xb = vec4<i32>(pb % p.w) + i32(p.pad_w);
    let sh = vec4<i32>(i32(p.stride_h));
    let sw = vec4<i32>(i32(p.stride_w));
    let oh = vec4<i32>(i32(p.out_h));
    let ow = vec4<i32>(i32(p.out_w));
    let zero = vec4<i32>(0);

    var tile: Tile;
    var upper: Tile;
    let taps = p.kernel_h * p.kernel_w;
    let quads = padded(p.c_in) / 4u;
    for (var co = 0u; co < p.c_out; co++) {
        let base_a = na + co * out_plane;
        let base_b = nb + co * out_plane;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            // Output rows whose window puts tap ky on these input rows.
            let sya = ya - i32(ky);
            let syb = yb - i32(ky);
            let oya = sya / sh;
            let oyb = syb / sh;
            let ya_hit = sya >= zero & sya % sh == zero & oya < oh;
            let yb_hit = syb >= zero & syb % sh == zero & oyb < oh;
            let rowa = vec4<u32>(clamp(oya, zero, oh - 1)) * p.out_w + base_a;
            let rowb = vec4<u32>(clamp(oyb, zero, oh - 1)) * p.out_w + base_b;
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                let sxa = xa - i32(kx);
                let sxb = xb - i32(kx);
                let oxa = sxa / sw;
                let oxb = sxb / sw;
                let hit_a = ya_hit & sxa >= zero & sxa % sw == zero & oxa < ow;
                let hit_b = yb_hit & sxb >= zero & sxb % sw == zero & oxb < ow;
                let ga = gather_bin_dy(rowa + vec4<u32>(clamp(oxa, zero, ow - 1)), hit_a);
                let gb = gather_bin_dy(rowb + vec4<u32>(clamp(oxb, zero, ow - 1)), hit_b);
                let wq = (co * taps + ky * p.kernel_w + kx) * quads + ct * 8u;
                tile_fma(&tile, ga, gb, bin_wp[wq], bin_wp[wq + 1u], bin_wp[wq + 2u], bin_wp[wq + 3u]);
                tile_fma(&upper, ga, gb, bin_wp[wq + 4u], bin_wp[wq + 5u], bin_wp[wq + 6u], bin_wp[wq + 7u]);
            }
        }
    }
    let c0 = ct * CHANNELS;
    let q0 = pt * PIXELS;
    store_bin(tile.a0, c0, q0); store_bin(tile.a1, c0 + 4u, q0);
    store_bin(tile.a2, c0 + 8u, q0); store_bin(tile.a3, c0 + 12u, q0);
    store_bin(tile.b0, c0, q0 + 4u); store_bin(tile.b1, c0 + 4u, q0 + 4u);
    store_bin(tile.b2, c0 + 8u, q0 + 4u); store_bin(tile.b3, c0 + 12u, q0 + 4u);
    store_bin(upper.a0, c0 + 16u, q0); store_bin(upper.a1, c0 + 20u, q0);
    store_bin(upper.a2, c0 + 24u, q0); store_bin(upper.a3, c0 + 28u, q0);
    store_bin(upper.b0, c0 + 16u, q0 + 4u); store_bin(upper.b1, c0 + 20u, q0 + 4u);
    store_bin(upper.b2, c0 + 24u, q0 + 4u); store_bin(upper.b3, c0 + 28u, q0 + 4u);
}

fn store_bin(m: mat4x4<f32>, c0: u32, q0: u32) {
    store_bin_column(m[0], c0, q0);
    store_bin_column(m[1], c0 + 1u, q0);
    store_bin_column(m[2], c0 + 2u, q0);
    store_bin_column(m[3], c0 + 3u, q0);
}

fn store_bin_one(ci: u32, q: u32, v: f32) {
    let pixels = p.h * p.w;
    let at = ((q / pixels) * p.c_in + ci) * pixels + q % pixels;
    bin_dx[at] = accumulated(bin_dx[at], v, p.accumulate);
}

fn store_bin_column(v: vec4<f32>, ci: u32, q0: u32) {
    if (ci >= p.c_in) { return; }
    let total = p.batch * p.h * p.w;
    if (q0 < total) { store_bin_one(ci, q0, v.x); }
    if (q0 + 1u < total) { store_bin_one(ci, q0 + 1u, v.y); }
    if (q0 + 2u < total) { store_bin_one(ci, q0 + 2u, v.z); }
    if (q0 + 3u < total) { store_bin_one(ci, q0 + 3u, v.w); }
}

// ---------------------------------------------------------------- gradient to the weight
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
// dy channels-last (pack_gradient_channels_last).
@group(0) @binding(2) var<storage, read> bw_dy_last: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bw_dw: array<f32>;

fn gather_bw_x(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(bw_x[at.x], bw_x[at.y], bw_x[at.z], bw_x[at.w]), inside);
}

// dw[co, k] = sum_{n, oy, ox} dy[n, co, oy, ox] * x[n, ci(k), oy*s - pad + ky(k), ox*s - pad + kx(k)].
// Tiles: 16 output channels x 8 values of k = (ci, ky, kx); each reduces over the batch and
// every output pixel in a fixed order. Invocations: ceil(c_out / 16) x ceil(c_in * kh * kw / 8).
@compute @workgroup_size(64)
fn conv_gemm_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let taps = p.kernel_h * p.kernel_w;
    let k_len = p.c_in * taps;
    let k_tiles = (k_len + PIXELS - 1u) / PIXELS;
    let channel_tiles = (p.c_out + WEIGHT_CHANNELS - 1u) / WEIGHT_CHANNELS;
    var t = flat_index(gid, nwg);
    if (t >= channel_tiles * k_tiles) { return; }
    let kt = t % k_tiles;
    let ct = t / k_tiles;

    let ka = tile_lo(kt * PIXELS, k_len);
    let kb = tile_hi(kt * PIXELS, k_len);
    let plane = p.h * p.w;
    let chan_a = (ka / taps) * plane;
    let chan_b = (kb / taps) * plane;
    let kya = vec4<i32>((ka % taps) / p.kernel_w) - i32(p.pad_h);
    let kyb = vec4<i32>((kb % taps) / p.kernel_w) - i32(p.pad_h);
    let kxa = vec4<i32>(ka % p.kernel_w) - i32(p.pad_w);
    let kxb = vec4<i32>(kb % p.kernel_w) - i32(p.pad_w);
    let hi = vec4<i32>(i32(p.h) - 1);
    let wi = vec4<i32>(i32(p.w) - 1);
    let zero = vec4<i32>(0);
    let out_pixels = p.out_h * p.out_w;
    let quads = (p.c_out + WEIGHT_CHANNELS - 1u) / WEIGHT_CHANNELS * 4u;

    var tile: Tile;
    for (var n = 0u; n < p.batch; n++) {
        let x_base = n * p.c_in * plane;
        let dy_base = n * out_pixels * quads + ct * 4u;
        for (var oy = 0u; oy < p.out_h; oy++) {
            let iya = kya + i32(oy * p.stride_h);
            let iyb = kyb + i32(oy * p.stride_h);
            let rowa = vec4<u32>(clamp(iya, zero, hi)) * p.w + chan_a + x_base;
            let rowb = vec4<u32>(clamp(iyb, zero, hi)) * p.w + chan_b + x_base;
            let ya_in = iya >= zero & iya <= hi;
            let yb_in = iyb >= zero & iyb <= hi;
            for (var ox = 0u; ox < p.out_w; ox++) {
                let ixa = kxa + i32(ox * p.stride_w);
                let ixb = kxb + i32(ox * p.stride_w);
                let xa = gather_bw_x(rowa + vec4<u32>(clamp(ixa, zero, wi)), ya_in & ixa >= zero & ixa <= wi);
                let xb = gather_bw_x(rowb + vec4<u32>(clamp(ixb, zero, wi)), yb_in & ixb >= zero & ixb <= wi);
                let g = dy_base + (oy * p.out_w + ox) * quads;
                tile_fma(&tile, xa, xb, bw_dy_last[g], bw_dy_last[g + 1u], bw_dy_last[g + 2u], bw_dy_last[g + 3u]);
            }
        }
    }
    let c0 = ct * WEIGHT_CHANNELS;
    let k0 = kt * PIXELS;
    store_bw(tile.a0, c0, k0); store_bw(tile.a1, c0 + 4u, k0);
    store_bw(tile.a2, c0 + 8u, k0); store_bw(tile.a3, c0 + 12u, k0);
    store_bw(tile.b0, c0, k0 + 4u); store_bw(tile.b1, c0 + 4u, k0 + 4u);
    store_bw(tile.b2, c0 + 8u, k0 + 4u); store_bw(tile.b3, c0 + 12u, k0 + 4u);
}

fn store_bw(m: mat4x4<f32>, c0: u32, k0: u32) {
    store_bw_column(m[0], c0, k0);
    store_bw_column(m[1], c0 + 1u, k0);
    store_bw_column(m[2], c0 + 2u, k0);
    store_bw_column(m[3], c0 + 3u, k0);
}

fn store_bw_column(v: vec4<f32>, co: u32, k0: u32) {
    let k_len = p.c_in * p.kernel_h * p.kernel_w;
    if (co >= p.c_out) { return; }
    let at = co * k_len + k0;
    if (k0 < k_len) { bw_dw[at] = accumulated(bw_dw[at], v.x, p.accumulate); }
    if (k0 + 1u < k_len) { bw_dw[at + 1u] = accumulated(bw_dw[at + 1u], v.y, p.accumulate); }
    if (k0 + 2u < k_len) { bw_dw[at + 2u] = accumulated(bw_dw[at + 2u], v.z, p.accumulate); }
    if (k0 + 3u < k_len) { bw_dw[at + 3u] = accumulated(bw_dw[at + 3u], v.w, p.accumulate); }
}
