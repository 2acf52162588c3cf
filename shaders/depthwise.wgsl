// Depthwise convolution (groups == channels, one filter per channel), NCHW / OIHW, and its
// gradients, in two families that src/ops/conv2d.rs chooses per adapter (`Gpu::depthwise_rows`).
// Real GPUs give each invocation 8 consecutive pixels of one channel, held in two vec4s, so
// that neighbouring lanes' loads coalesce. Software adapters pay a loop over lanes for every
// storage access, so there each invocation slides a window of the kernel's inputs along rows
// of one channel (the forward pass, stride-1 input gradients, the weight gradient), loading
// each input about once per kernel row rather than once per tap. The forward pass and the input
// gradient sum the same terms in the same order in both, each term an explicit fma: a driver
// may fuse `acc += w * x` in one kernel and not in another, and NVIDIA's did, which made the
// families' results differ in their last bits.

@group(0) @binding(0) var<uniform> p: ConvParams;


// ---------------------------------------------------------------- forward
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

fn gather_fwd_x(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(fwd_x[at.x], fwd_x[at.y], fwd_x[at.z], fwd_x[at.w]), inside);
}

// Invocations: batch x channels x ceil(out_h * out_w / 8).
@compute @workgroup_size(64)
fn depthwise_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.out_h * p.out_w;
    let tiles = (pixels + PIXELS - 1u) / PIXELS;
    let t = flat_index(gid, nwg);
    if (t >= p.batch * p.c_out * tiles) { return; }
    let pt = t % tiles;
    let plane = t / tiles;          // n * channels + c
    let c = plane % p.c_out;
    let pa = tile_lo(pt * PIXELS, pixels);
    let pb = tile_hi(pt * PIXELS, pixels);
    let y0a = vec4<i32>((pa / p.out_w) * p.stride_h) - i32(p.pad_h);
    let x0a = vec4<i32>((pa % p.out_w) * p.stride_w) - i32(p.pad_w);
    let y0b = vec4<i32>((pb / p.out_w) * p.stride_h) - i32(p.pad_h);
    let x0b = vec4<i32>((pb % p.out_w) * p.stride_w) - i32(p.pad_w);
    let hi = vec4<i32>(i32(p.h) - 1);
    let wi = vec4<i32>(i32(p.w) - 1);
    let zero = vec4<i32>(0);
    let base = plane * p.h * p.w;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        let iya = y0a + i32(ky);
        let iyb = y0b + i32(ky);
        let rowa = vec4<u32>(clamp(iya, zero, hi)) * p.w + base;
        let rowb = vec4<u32>(clamp(iyb, zero, hi)) * p.w + base;
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let ixa = x0a + i32(kx);
            let ixb = x0b + i32(kx);
            let w = fwd_w[(c * p.kernel_h + ky) * p.kernel_w + kx];
            acc_a = fma(vec4<f32>(w), gather_fwd_x(rowa + vec4<u32>(clamp(ixa, zero, wi)), iya >= zero & iya <= hi & ixa >= zero & ixa <= wi), acc_a);
            acc_b = fma(vec4<f32>(w), gather_fwd_x(rowb + vec4<u32>(clamp(ixb, zero, wi)), iyb >= zero & iyb <= hi & ixb >= zero & ixb <= wi), acc_b);
        }
    }
    let bias = select(0.0, fwd_bias[c], p.has_bias != 0u);
    let out = plane * pixels + pt * PIXELS;
    for (var i = 0u; i < 4u; i++) {
        if (pt * PIXELS + i < pixels) { fwd_y[out + i] = stored_activation(acc_a[i] + bias); }
        if (pt * PIXELS + 4u + i < pixels) { fwd_y[out + 4u + i] = stored_activation(acc_b[i] + bias); }
    }
}

// ---------------------------------------------------------------- rows
@group(0) @binding(1) var<storage, read> row_in: array<f32>;
@group(0) @binding(2) var<storage, read> row_w: array<f32>;
@group(0) @binding(3) var<storage, read> row_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_out: array<f32>;

// The widest kernel side of the row kernels here (ConvNeXt's 7x7; src/ops/conv2d.rs
// `DEPTHWISE_MAX_KERNEL`): a lane keeps its weights, its window of inputs and its sums in
// arrays of KERNEL_TAPS, at [kernel row * MAX_KERNEL + kernel column].
const MAX_KERNEL: u32 = 7u;
const KERNEL_TAPS: u32 = MAX_KERNEL * MAX_KERNEL;

// The kernel's inputs for output column ox of a row whose window starts at input row iy0, at
// [kernel row * MAX_KERNEL + kernel column], read from row_in's plane at in_plane (zero outside
// it), given the window of column ox - 1: the columns both read are shifted by the stride and
// only the new ones loaded.
fn slide_window(window: ptr<function, array<f32, KERNEL_TAPS>>, in_plane: u32, iy0: i32, ox: u32) {
    let ix0 = i32(ox * p.stride_w) - i32(p.pad_w);
    let kept = select(0u, p.kernel_w - min(p.stride_w, p.kernel_w), ox > 0u);
    for (var a = 0u; a < p.kernel_h; a++) {
        let iy = iy0 + i32(a);
        let row_inside = iy >= 0 && iy < i32(p.h);
        for (var b = 0u; b < p.kernel_w; b++) {
            let t = a * MAX_KERNEL + b;
            if (b < kept) {
                (*window)[t] = (*window)[t + p.stride_w];
            } else {
                let ix = ix0 + i32(b);
                var v = 0.0;
                if (row_inside && ix >= 0 && ix < i32(p.w)) { v = row_in[in_plane + u32(iy) * p.w + u32(ix)]; }
                (*window)[t] = v;
            }
        }
    }
}

// out[n, c, oy, ox] (+)= sum_{a, b} k[c, a, b] * in[n, c, oy*s - pad + a, ox*s - pad + b] (+ bias),
// terms in (a, b) order: the forward pass (in = x, k = w), or with `flip` a stride-1 input
// gradient (in = dy, padded by kernel - 1 - pad, k = w turned by 180 degrees). One invocation
// per (channel, part of chunk_len batch-wide output rows). Along a row the lane slides a window
// of the kernel's inputs, loading only the columns the stride brings in: storage loads cost
// software adapters a loop over lanes, and so each input is loaded about once per kernel row
// rather than once per tap. Invocations: parts (`chunks`, fastest: neighbouring lanes read
// neighbouring rows of one plane) x channels.
@compute @workgroup_size(64)
fn depthwise_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_out * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    let taps = p.kernel_h * p.kernel_w;
    var k: array<f32, KERNEL_TAPS>;
    for (var a = 0u; a < p.kernel_h; a++) {
        for (var b = 0u; b < p.kernel_w; b++) {
            let tap = a * p.kernel_w + b;
            k[a * MAX_KERNEL + b] = row_w[c * taps + select(tap, taps - 1u - tap, p.flip != 0u)];
        }
    }
    let bias = select(0.0, row_bias[c], p.has_bias != 0u);
    var window: array<f32, KERNEL_TAPS>;
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_out + c;
        let in_plane = plane * p.h * p.w;
        let out_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        for (var ox = 0u; ox < p.out_w; ox++) {
            slide_window(&window, in_plane, iy0, ox);
            // Flipped, the terms run over the weight's own taps in order, as in
            // depthwise_backward_input.
            var acc = 0.0;
            for (var ja = 0u; ja < p.kernel_h; ja++) {
                let a = select(ja, p.kernel_h - 1u - ja, p.flip != 0u);
                for (var jb = 0u; jb < p.kernel_w; jb++) {
                    let t = a * MAX_KERNEL + select(jb, p.kernel_w - 1u - jb, p.flip != 0u);
                    acc = fma(k[t], window[t], acc);
                }
            }
            // Read the output only to add to it (each access costs software adapters a loop).
            let at = out_row + ox;
            if (p.accumulate != 0u) {
                row_out[at] += acc + bias;
            } else {
                row_out[at] = stored_activation(acc + bias);
            }
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
}

// Three rows of input column ix (rows iy0 .. iy0 + 2) of a plane: one window column of a 3x3
// kernel, zero outside the plane.
fn window_column(in_plane: u32, iy0: i32, ix: i32) -> vec3<f32> {
    var v = vec3<f32>();
    if (ix < 0 || ix >= i32(p.w)) { return v; }
    for (var a = 0; a < 3; a++) {
        let iy = iy0 + a;
        if (iy >= 0 && iy < i32(p.h)) { v[a] = row_in[in_plane + u32(iy) * p.w + u32(ix)]; }
    }
    return v;
}

// The three window columns of a 3x3 kernel (each rows 0, 1, 2) for output column ox of a row
// whose window starts at input row iy0, given those of column ox - 1: a column stride of 1
// keeps two columns, a stride of 2 one, and only the new ones are loaded.
struct Columns3 {
    c0: vec3<f32>,
    c1: vec3<f32>,
    c2: vec3<f32>,
}

fn slide_columns(prev: Columns3, in_plane: u32, iy0: i32, ox: u32) -> Columns3 {
    let ix0 = i32(ox * p.stride_w) - i32(p.pad_w);
    var w = prev;
    if (ox == 0u) {
        w.c0 = window_column(in_plane, iy0, ix0);
        w.c1 = window_column(in_plane, iy0, ix0 + 1);
    } else if (p.stride_w == 1u) {
        w.c0 = prev.c1;
        w.c1 = prev.c2;
    } else {
        w.c0 = prev.c2;
        w.c1 = window_column(in_plane, iy0, ix0 + 1);
    }
    w.c2 = window_column(in_plane, iy0, ix0 + 2);
    return w;
}

// depthwise_rows for 3x3 kernels and column strides of 1 or 2 (MobileNetV2's), with the
// window and weights as named values rather than arrays indexed in loops, which software
// adapters keep in memory. The same terms in the same order as depthwise_rows, so the same
// results. Invocations: as depthwise_rows.
@compute @workgroup_size(64)
fn depthwise_rows_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_out * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    // The weight's own taps in order; depthwise_rows pairs tap j with window tap j, or flipped
    // with window tap 8 - j.
    let w0 = row_w[c * 9u]; let w1 = row_w[c * 9u + 1u]; let w2 = row_w[c * 9u + 2u];
    let w3 = row_w[c * 9u + 3u]; let w4 = row_w[c * 9u + 4u]; let w5 = row_w[c * 9u + 5u];
    let w6 = row_w[c * 9u + 6u]; let w7 = row_w[c * 9u + 7u]; let w8 = row_w[c * 9u + 8u];
    let bias = select(0.0, row_bias[c], p.has_bias != 0u);
    let flip = p.flip != 0u;
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_out + c;
        let in_plane = plane * p.h * p.w;
        let out_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        var window = Columns3();
        for (var ox = 0u; ox < p.out_w; ox++) {
            window = slide_columns(window, in_plane, iy0, ox);
            let c0 = window.c0;
            let c1 = window.c1;
            let c2 = window.c2;
            var acc = 0.0;
            if (flip) {
                acc = fma(w0, c2.z, acc); acc = fma(w1, c1.z, acc); acc = fma(w2, c0.z, acc);
                acc = fma(w3, c2.y, acc); acc = fma(w4, c1.y, acc); acc = fma(w5, c0.y, acc);
                acc = fma(w6, c2.x, acc); acc = fma(w7, c1.x, acc); acc = fma(w8, c0.x, acc);
            } else {
                acc = fma(w0, c0.x, acc); acc = fma(w1, c1.x, acc); acc = fma(w2, c2.x, acc);
                acc = fma(w3, c0.y, acc); acc = fma(w4, c1.y, acc); acc = fma(w5, c2.y, acc);
                acc = fma(w6, c0.z, acc); acc = fma(w7, c1.z, acc); acc = fma(w8, c2.z, acc);
            }
            // Read the output only to add to it (each access costs software adapters a loop).
            let at = out_row + ox;
            if (p.accumulate != 0u) {
                row_out[at] += acc + bias;
            } else {
                row_out[at] = stored_activation(acc + bias);
            }
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
}

// depthwise_rows_3x3 over rows whose pixels come in fours (input and output widths multiples
// of four, column padding 1), reading the input through a texture that holds a copy of
// binding 1 (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`) and computing four outputs
// of a row at once: one texel fetch of each kernel row brings in the next four inputs (two at
// column stride 2), where depthwise_rows_3x3 makes a storage load per input, and one vec4
// store holds the four sums. Software adapters pay a loop over lanes for each storage access
// and gather a texel fetch's lanes in registers. The same terms in the same order as
// depthwise_rows_3x3, so the same values. Invocations: as depthwise_rows.
@group(0) @binding(15) var row_in_texels: texture_2d<f32>;
@group(0) @binding(4) var<storage, read_write> row_out4: array<vec4<f32>>;

// Texel t of input row iy of the plane whose first texel is plane4: the row's inputs 4t ..
// 4t + 3, zero outside the plane.
fn input_texel(plane4: u32, iy: i32, t: i32) -> vec4<f32> {
    let row = i32(p.w / 4u);
    let inside = iy >= 0 && iy < i32(p.h) && t >= 0 && t < row;
    let at = plane4 + u32(clamp(iy, 0, i32(p.h) - 1) * row + clamp(t, 0, row - 1));
    return select(vec4<f32>(0.0), buffer_texel(row_in_texels, at), inside);
}

// One kernel row's three inputs (columns b = 0, 1, 2) for each of four outputs (column j of
// the result), from that row's texels before (prev), at (cur) and after (next) the inputs of
// the first output's middle column, at column stride 1 or 2 and padding 1.
fn row_taps(prev: vec4<f32>, cur: vec4<f32>, next: vec4<f32>, stride_two: bool) -> mat4x3<f32> {
    if (stride_two) {
        return mat4x3<f32>(
            vec3<f32>(prev.w, cur.x, cur.y),
            vec3<f32>(cur.y, cur.z, cur.w),
            vec3<f32>(cur.w, next.x, next.y),
            vec3<f32>(next.y, next.z, next.w),
        );
    }
    return mat4x3<f32>(
        vec3<f32>(prev.w, cur.x, cur.y),
        vec3<f32>(cur.x, cur.y, cur.z),
        vec3<f32>(cur.y, cur.z, cur.w),
        vec3<f32>(cur.z, cur.w, next.x),
    );
}

// One output of depthwise_rows_3x3: weights k (column a: kernel row a's taps), window rows r0,
// r1, r2 (each columns 0, 1, 2); flipped, tap t pairs with window tap 8 - t. Terms in tap order.
fn window_sum(k: mat3x3<f32>, r0: vec3<f32>, r1: vec3<f32>, r2: vec3<f32>, flip: bool) -> f32 {
    var acc = 0.0;
    if (flip) {
        acc = fma(k[0].x, r2.z, acc); acc = fma(k[0].y, r2.y, acc); acc = fma(k[0].z, r2.x, acc);
        acc = fma(k[1].x, r1.z, acc); acc = fma(k[1].y, r1.y, acc); acc = fma(k[1].z, r1.x, acc);
        acc = fma(k[2].x, r0.z, acc); acc = fma(k[2].y, r0.y, acc); acc = fma(k[2].z, r0.x, acc);
    } else {
        acc = fma(k[0].x, r0.x, acc); acc = fma(k[0].y, r0.y, acc); acc = fma(k[0].z, r0.z, acc);
        acc = fma(k[1].x, r1.x, acc); acc = fma(k[1].y, r1.y, acc); acc = fma(k[1].z, r1.z, acc);
        acc = fma(k[2].x, r2.x, acc); acc = fma(k[2].y, r2.y, acc); acc = fma(k[2].z, r2.z, acc);
    }
    return acc;
}

// One entry point per column stride and flip, each passing constants: software adapters run
// both sides of a branch on a uniform's value under a lane mask (the inlined constants fold).
@compute @workgroup_size(64)
fn depthwise_rows_3x3_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    depthwise_rows_3x3_quads(flat_index(gid, nwg), false, false);
}

@compute @workgroup_size(64)
fn depthwise_rows_3x3_s2_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    depthwise_rows_3x3_quads(flat_index(gid, nwg), true, false);
}

@compute @workgroup_size(64)
fn depthwise_rows_3x3_flipped_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    depthwise_rows_3x3_quads(flat_index(gid, nwg), false, true);
}

// Invocation i of the kernels above: column stride 2 (`stride_two`, else 1), the weights
// turned (`flip`, a stride-1 input gradient).
fn depthwise_rows_3x3_quads(i: u32, stride_two: bool, flip: bool) {
    if (i >= p.c_out * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    let k = mat3x3<f32>(
        vec3<f32>(row_w[c * 9u], row_w[c * 9u + 1u], row_w[c * 9u + 2u]),
        vec3<f32>(row_w[c * 9u + 3u], row_w[c * 9u + 4u], row_w[c * 9u + 5u]),
        vec3<f32>(row_w[c * 9u + 6u], row_w[c * 9u + 7u], row_w[c * 9u + 8u]),
    );
    var bias = 0.0;
    if (p.has_bias != 0u) { bias = row_bias[c]; }
    let quads = p.out_w / 4u;
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_out + c;
        let plane4 = plane * p.h * (p.w / 4u);
        let out_row4 = (plane * p.out_h + oy) * quads;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        // Each kernel row's texels before, at and after the first quad's inputs.
        var prev0 = vec4<f32>(0.0);
        var prev1 = vec4<f32>(0.0);
        var prev2 = vec4<f32>(0.0);
        var cur0 = input_texel(plane4, iy0, 0);
        var cur1 = input_texel(plane4, iy0 + 1, 0);
        var cur2 = input_texel(plane4, iy0 + 2, 0);
        var next0 = input_texel(plane4, iy0, 1);
        var next1 = input_texel(plane4, iy0 + 1, 1);
        var next2 = input_texel(plane4, iy0 + 2, 1);
        for (var q = 0u; q < quads; q++) {
            let t0 = row_taps(prev0, cur0, next0, stride_two);
            let t1 = row_taps(prev1, cur1, next1, stride_two);
            let t2 = row_taps(prev2, cur2, next2, stride_two);
            let sums = vec4<f32>(
                window_sum(k, t0[0], t1[0], t2[0], flip),
                window_sum(k, t0[1], t1[1], t2[1], flip),
                window_sum(k, t0[2], t1[2], t2[2], flip),
                window_sum(k, t0[3], t1[3], t2[3], flip),
            );
            // Read the output only to add to it (each access costs software adapters a loop).
            let at = out_row4 + q;
            if (p.accumulate != 0u) {
                row_out4[at] += sums + bias;
            } else {
                row_out4[at] = stored_activation4(sums + bias);
            }
            // The next quad's texels: four inputs on (stride 1) or eight (stride 2).
            if (stride_two) {
                let t = i32(2u * q + 2u);
                prev0 = next0; prev1 = next1; prev2 = next2;
                cur0 = input_texel(plane4, iy0, t);
                cur1 = input_texel(plane4, iy0 + 1, t);
                cur2 = input_texel(plane4, iy0 + 2, t);
                next0 = input_texel(plane4, iy0, t + 1);
                next1 = input_texel(plane4, iy0 + 1, t + 1);
                next2 = input_texel(plane4, iy0 + 2, t + 1);
            } else {
                let t = i32(q + 2u);
                prev0 = cur0; prev1 = cur1; prev2 = cur2;
                cur0 = next0; cur1 = next1; cur2 = next2;
                next0 = input_texel(plane4, iy0, t);
                next1 = input_texel(plane4, iy0 + 1, t);
                next2 = input_texel(plane4, iy0 + 2, t);
            }
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
}

// depthwise_rows for 7x7 kernels at column stride 1 (ConvNeXt's, forward and input gradient),
// with the window and weights as named values rather than arrays indexed in loops, which
// software adapters keep in memory: a lane holds its channel's seven weight rows and seven
// window columns, and along a row loads one new column per output. The same terms in the same
// order as depthwise_rows, so the same results. Invocations: as depthwise_rows.

// Seven values: a weight row (its columns in order) or a window column (its rows in order).
struct Seven {
    lo: vec4<f32>,
    hi: vec3<f32>,
}

// acc plus a weight row's seven products with x0 .. x6, added in order.
fn add_row7(acc: f32, k: Seven, x0: f32, x1: f32, x2: f32, x3: f32, x4: f32, x5: f32, x6: f32) -> f32 {
    var s = acc;
    s = fma(k.lo.x, x0, s); s = fma(k.lo.y, x1, s); s = fma(k.lo.z, x2, s); s = fma(k.lo.w, x3, s);
    s = fma(k.hi.x, x4, s); s = fma(k.hi.y, x5, s); s = fma(k.hi.z, x6, s);
    return s;
}

// row_in's value at (iy, ix) of the plane at in_plane; zero outside it.
fn input_at(in_plane: u32, iy: i32, ix: i32) -> f32 {
    if (iy < 0 || iy >= i32(p.h) || ix < 0 || ix >= i32(p.w)) { return 0.0; }
    return row_in[in_plane + u32(iy) * p.w + u32(ix)];
}

// Input column ix, rows iy0 .. iy0 + 6.
fn column7(in_plane: u32, iy0: i32, ix: i32) -> Seven {
    let lo = vec4<f32>(input_at(in_plane, iy0, ix), input_at(in_plane, iy0 + 1, ix), input_at(in_plane, iy0 + 2, ix), input_at(in_plane, iy0 + 3, ix));
    return Seven(lo, vec3<f32>(input_at(in_plane, iy0 + 4, ix), input_at(in_plane, iy0 + 5, ix), input_at(in_plane, iy0 + 6, ix)));
}

// Row a of channel c's weights (their own taps, a * 7 .. a * 7 + 6).
fn weight_row7(c: u32, a: u32) -> Seven {
    let t = c * 49u + a * 7u;
    let lo = vec4<f32>(row_w[t], row_w[t + 1u], row_w[t + 2u], row_w[t + 3u]);
    return Seven(lo, vec3<f32>(row_w[t + 4u], row_w[t + 5u], row_w[t + 6u]));
}

// Flipped (`flip`, a literal in each entry point, so the branch folds away), the terms run over
// the weight's own taps in order, tap (a, b) against window (6 - a, 6 - b), as depthwise_rows
// pairs them.
fn rows_7x7(i: u32, flip: bool) {
    if (i >= p.c_out * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    let k0 = weight_row7(c, 0u); let k1 = weight_row7(c, 1u); let k2 = weight_row7(c, 2u);
    let k3 = weight_row7(c, 3u); let k4 = weight_row7(c, 4u); let k5 = weight_row7(c, 5u);
    let k6 = weight_row7(c, 6u);
    let bias = select(0.0, row_bias[c], p.has_bias != 0u);
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_out + c;
        let in_plane = plane * p.h * p.w;
        let out_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        let ix0 = -i32(p.pad_w);
        // The window of output column 0; each later column drops column 0 and loads one.
        var c0 = column7(in_plane, iy0, ix0); var c1 = column7(in_plane, iy0, ix0 + 1);
        var c2 = column7(in_plane, iy0, ix0 + 2); var c3 = column7(in_plane, iy0, ix0 + 3);
        var c4 = column7(in_plane, iy0, ix0 + 4); var c5 = column7(in_plane, iy0, ix0 + 5);
        var c6 = column7(in_plane, iy0, ix0 + 6);
        for (var ox = 0u; ox < p.out_w; ox++) {
            if (ox > 0u) {
                c0 = c1; c1 = c2; c2 = c3; c3 = c4; c4 = c5; c5 = c6;
                c6 = column7(in_plane, iy0, ix0 + i32(ox) + 6);
            }
            var acc = 0.0;
            if (flip) {
            acc = add_row7(acc, k0, c6.hi.z, c5.hi.z, c4.hi.z, c3.hi.z, c2.hi.z, c1.hi.z, c0.hi.z);
            acc = add_row7(acc, k1, c6.hi.y, c5.hi.y, c4.hi.y, c3.hi.y, c2.hi.y, c1.hi.y, c0.hi.y);
            acc = add_row7(acc, k2, c6.hi.x, c5.hi.x, c4.hi.x, c3.hi.x, c2.hi.x, c1.hi.x, c0.hi.x);
            acc = add_row7(acc, k3, c6.lo.w, c5.lo.w, c4.lo.w, c3.lo.w, c2.lo.w, c1.lo.w, c0.lo.w);
            acc = add_row7(acc, k4, c6.lo.z, c5.lo.z, c4.lo.z, c3.lo.z, c2.lo.z, c1.lo.z, c0.lo.z);
            acc = add_row7(acc, k5, c6.lo.y, c5.lo.y, c4.lo.y, c3.lo.y, c2.lo.y, c1.lo.y, c0.lo.y);
            acc = add_row7(acc, k6, c6.lo.x, c5.lo.x, c4.lo.x, c3.lo.x, c2.lo.x, c1.lo.x, c0.lo.x);
            } else {
            acc = add_row7(acc, k0, c0.lo.x, c1.lo.x, c2.lo.x, c3.lo.x, c4.lo.x, c5.lo.x, c6.lo.x);
            acc = add_row7(acc, k1, c0.lo.y, c1.lo.y, c2.lo.y, c3.lo.y, c4.lo.y, c5.lo.y, c6.lo.y);
            acc = add_row7(acc, k2, c0.lo.z, c1.lo.z, c2.lo.z, c3.lo.z, c4.lo.z, c5.lo.z, c6.lo.z);
            acc = add_row7(acc, k3, c0.lo.w, c1.lo.w, c2.lo.w, c3.lo.w, c4.lo.w, c5.lo.w, c6.lo.w);
            acc = add_row7(acc, k4, c0.hi.x, c1.hi.x, c2.hi.x, c3.hi.x, c4.hi.x, c5.hi.x, c6.hi.x);
            acc = add_row7(acc, k5, c0.hi.y, c1.hi.y, c2.hi.y, c3.hi.y, c4.hi.y, c5.hi.y, c6.hi.y);
            acc = add_row7(acc, k6, c0.hi.z, c1.hi.z, c2.hi.z, c3.hi.z, c4.hi.z, c5.hi.z, c6.hi.z);
            }
            // Read the output only to add to it (each access costs software adapters a loop).
            let at = out_row + ox;
            if (p.accumulate != 0u) {
                row_out[at] += acc + bias;
            } else {
                row_out[at] = stored_activation(acc + bias);
            }
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
}

@compute @workgroup_size(64)
fn depthwise_rows_7x7(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rows_7x7(flat_index(gid, nwg), false);
}

@compute @workgroup_size(64)
fn depthwise_rows_7x7_flipped(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    rows_7x7(flat_index(gid, nwg), true);
}

// ---------------------------------------------------------------- gradient to the input
@group(0) @binding(1) var<storage, read> bin_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bin_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bin_dx: array<f32>;

fn gather_bin_dy(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(bin_dy[at.x], bin_dy[at.y], bin_dy[at.z], bin_dy[at.w]), inside);
}

// v / s, and whether v is a multiple of s (callers mask negative v): a shift and a mask for
// strides that are powers of two (every depthwise stride of the networks here), since integer
// division costs software adapters a scalar loop per lane.
struct StrideQuotient {
    q: vec4<i32>,
    exact: vec4<bool>,
}

fn divide_by_stride(v: vec4<i32>, s: u32) -> StrideQuotient {
    if ((s & (s - 1u)) == 0u) {
        return StrideQuotient(v >> vec4<u32>(firstTrailingBit(s)), (v & vec4<i32>(i32(s) - 1)) == vec4<i32>(0));
    }
    let sv = vec4<i32>(i32(s));
    return StrideQuotient(v / sv, v % sv == vec4<i32>(0));
}

// dx[n, c, iy, ix] = sum_{ky, kx} w[c, ky, kx] * dy[n, c, (iy + pad - ky) / s, (ix + pad - kx) / s]
// where the divisions are exact. Invocations: batch x channels x ceil(h * w / 8).
@compute @workgroup_size(64)
fn depthwise_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pixels = p.h * p.w;
    let tiles = (pixels + PIXELS - 1u) / PIXELS;
    let t = flat_index(gid, nwg);
    if (t >= p.batch * p.c_in * tiles) { return; }
    let pt = t % tiles;
    let plane = t / tiles;
    let c = plane % p.c_in;
    let pa = tile_lo(pt * PIXELS, pixels);
    let pb = tile_hi(pt * PIXELS, pixels);
    let ya = vec4<i32>(pa / p.w) + i32(p.pad_h);
    let xa = vec4<i32>(pa % p.w) + i32(p.pad_w);
    let yb = vec4<i32>(pb / p.w) + i32(p.pad_h);
    let xb = vec4<i32>(pb % p.w) + i32(p.pad_w);
    let oh = vec4<i32>(i32(p.out_h));
    let ow = vec4<i32>(i32(p.out_w));
    let zero = vec4<i32>(0);
    let base = plane * p.out_h * p.out_w;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        let sya = ya - i32(ky);
        let syb = yb - i32(ky);
        let oya = divide_by_stride(sya, p.stride_h);
        let oyb = divide_by_stride(syb, p.stride_h);
        let ya_hit = sya >= zero & oya.exact & oya.q < oh;
        let yb_hit = syb >= zero & oyb.exact & oyb.q < oh;
        let rowa = vec4<u32>(clamp(oya.q, zero, oh - 1)) * p.out_w + base;
        let rowb = vec4<u32>(clamp(oyb.q, zero, oh - 1)) * p.out_w + base;
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let sxa = xa - i32(kx);
            let sxb = xb - i32(kx);
            let oxa = divide_by_stride(sxa, p.stride_w);
            let oxb = divide_by_stride(sxb, p.stride_w);
            let w = bin_w[(c * p.kernel_h + ky) * p.kernel_w + kx];
            acc_a = fma(vec4<f32>(w), gather_bin_dy(rowa + vec4<u32>(clamp(oxa.q, zero, ow - 1)), ya_hit & sxa >= zero & oxa.exact & oxa.q < ow), acc_a);
            acc_b = fma(vec4<f32>(w), gather_bin_dy(rowb + vec4<u32>(clamp(oxb.q, zero, ow - 1)), yb_hit & sxb >= zero & oxb.exact & oxb.q < ow), acc_b);
        }
    }
    let out = plane * pixels + pt * PIXELS;
    for (var i = 0u; i < 4u; i++) {
        if (pt * PIXELS + i < pixels) { bin_dx[out + i] = accumulated(bin_dx[out + i], acc_a[i], p.accumulate); }
        if (pt * PIXELS + 4u + i < pixels) {
            bin_dx[out + 4u + i] = accumulated(bin_dx[out + 4u + i], acc_b[i], p.accumulate);
        }
    }
}

// dx of a 3x3 depthwise convolution at stride 2 with padding 1 (MobileNetV2's downsampling) on
// software adapters: the terms of depthwise_backward_input in the same (ky, kx) order, without
// those the stride leaves out. Dx row iy meets dy through kernel row 1 (even iy: dy row iy / 2)
// or rows 0 and 2 (odd iy: dy rows (iy + 1) / 2, if there is one, and (iy - 1) / 2); dx column
// 2m through kernel column 1 (dy column m), column 2m + 1 through columns 0 and 2 (dy columns
// m + 1, if there is one, and m). So each dy value a row reads is loaded once, and used for
// two dx columns. One invocation per (part of chunk_len batch-wide dx rows, channel), parts
// fastest. Invocations: parts x channels.
@compute @workgroup_size(64)
fn depthwise_backward_input_s2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_in * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    let w0 = bin_w[c * 9u]; let w1 = bin_w[c * 9u + 1u]; let w2 = bin_w[c * 9u + 2u];
    let w3 = bin_w[c * 9u + 3u]; let w4 = bin_w[c * 9u + 4u]; let w5 = bin_w[c * 9u + 5u];
    let w6 = bin_w[c * 9u + 6u]; let w7 = bin_w[c * 9u + 7u]; let w8 = bin_w[c * 9u + 8u];
    let first = part * p.chunk_len;
    let end = min(p.batch * p.h, first + p.chunk_len);
    var n = first / p.h;
    var iy = first % p.h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_in + c;
        let dy_plane = plane * p.out_h * p.out_w;
        let dx_row = (plane * p.h + iy) * p.w;
        // The dy rows through kernel rows 0, 1, 2 (t, m, b), and whether each is a term.
        let odd = (iy & 1u) == 1u;
        let t_ok = odd && (iy + 1u) / 2u < p.out_h;
        let m_ok = !odd;
        let b_ok = odd;
        let t_row = dy_plane + min((iy + 1u) / 2u, p.out_h - 1u) * p.out_w;
        let m_row = dy_plane + (iy / 2u) * p.out_w;
        let b_row = dy_plane + (max(iy, 1u) - 1u) / 2u * p.out_w;
        // Dy column m of each row (cur), then column m + 1 (next).
        var t_cur = 0.0;
        var m_cur = 0.0;
        var b_cur = 0.0;
        if (t_ok) { t_cur = bin_dy[t_row]; }
        if (m_ok) { m_cur = bin_dy[m_row]; }
        if (b_ok) { b_cur = bin_dy[b_row]; }
        for (var m = 0u; 2u * m < p.w; m++) {
            let more = m + 1u < p.out_w;
            var t_next = 0.0;
            var m_next = 0.0;
            var b_next = 0.0;
            if (more && t_ok) { t_next = bin_dy[t_row + m + 1u]; }
            if (more && m_ok) { m_next = bin_dy[m_row + m + 1u]; }
            if (more && b_ok) { b_next = bin_dy[b_row + m + 1u]; }
            // dx column 2m: kernel column 1.
            var even = 0.0;
            if (t_ok) { even = fma(w1, t_cur, even); }
            if (m_ok) { even = fma(w4, m_cur, even); }
            if (b_ok) { even = fma(w7, b_cur, even); }
            store_input_gradient(dx_row + 2u * m, even);
            // dx column 2m + 1: kernel columns 0 (dy column m + 1) and 2 (dy column m).
            if (2u * m + 1u < p.w) {
                var odd_sum = 0.0;
                if (t_ok) {
                    if (more) { odd_sum = fma(w0, t_next, odd_sum); }
                    odd_sum = fma(w2, t_cur, odd_sum);
                }
                if (m_ok) {
                    if (more) { odd_sum = fma(w3, m_next, odd_sum); }
                    odd_sum = fma(w5, m_cur, odd_sum);
                }
                if (b_ok) {
                    if (more) { odd_sum = fma(w6, b_next, odd_sum); }
                    odd_sum = fma(w8, b_cur, odd_sum);
                }
                store_input_gradient(dx_row + 2u * m + 1u, odd_sum);
            }
            t_cur = t_next;
            m_cur = m_next;
            b_cur = b_next;
        }
        iy += 1u;
        if (iy == p.h) {
            iy = 0u;
            n += 1u;
        }
    }
}

// dx (+)= v, dx read only to add to it (each access costs software adapters a loop over lanes).
fn store_input_gradient(at: u32, v: f32) {
    if (p.accumulate != 0u) {
        bin_dx[at] += v;
    } else {
        bin_dx[at] = v;
    }
}

// ---------------------------------------------------------------- gradient to the weight
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
// dw, or with several parts (rows) or chunks (GPUs) their partial sums [channel * taps + tap][part].
@group(0) @binding(3) var<storage, read_write> bw_dw: array<f32>;

// dw[c, ky, kx] = sum_{n, oy, ox} dy[n, c, oy, ox] * x[n, c, oy*s - pad + ky, ox*s - pad + kx].
// One invocation per (channel, part), a part being chunk_len consecutive batch-wide output rows
// (n, oy), its window of x values (row_in, binding 1 as bw_x) slid along each row as in
// depthwise_rows. The sums of each
// tap run over the part's pixels in order; `reduce_chunks` adds the parts in order.
// Invocations: parts (`chunks`, fastest) x channels.
@compute @workgroup_size(64)
fn depthwise_weight_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_in * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    var sums: array<f32, KERNEL_TAPS>;
    var window: array<f32, KERNEL_TAPS>;
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_in + c;
        let x_plane = plane * p.h * p.w;
        let dy_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        for (var ox = 0u; ox < p.out_w; ox++) {
            slide_window(&window, x_plane, iy0, ox);
            let d = bw_dy[dy_row + ox];
            for (var ky = 0u; ky < p.kernel_h; ky++) {
                for (var kx = 0u; kx < p.kernel_w; kx++) {
                    let t = ky * MAX_KERNEL + kx;
                    sums[t] = fma(d, window[t], sums[t]);
                }
            }
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
    let taps = p.kernel_h * p.kernel_w;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let tap = ky * p.kernel_w + kx;
            let v = sums[ky * MAX_KERNEL + kx];
            if (p.chunks == 1u) {
                let at = c * taps + tap;
                bw_dw[at] = accumulated(bw_dw[at], v, p.accumulate);
            } else {
                bw_dw[(c * taps + tap) * p.chunks + part] = v;
            }
        }
    }
}

// depthwise_weight_rows for 3x3 kernels and column strides of 1 or 2, with the window and the
// sums as named values (see depthwise_rows_3x3). Each sum adds the same terms in the same
// order, so the results are depthwise_weight_rows'. Invocations: as depthwise_weight_rows.
@compute @workgroup_size(64)
fn depthwise_weight_rows_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_in * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    // Sums of tap (row a, column b): sa_b.
    var s0_0 = 0.0; var s0_1 = 0.0; var s0_2 = 0.0;
    var s1_0 = 0.0; var s1_1 = 0.0; var s1_2 = 0.0;
    var s2_0 = 0.0; var s2_1 = 0.0; var s2_2 = 0.0;
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_in + c;
        let x_plane = plane * p.h * p.w;
        let dy_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        var window = Columns3();
        for (var ox = 0u; ox < p.out_w; ox++) {
            window = slide_columns(window, x_plane, iy0, ox);
            let c0 = window.c0;
            let c1 = window.c1;
            let c2 = window.c2;
            let d = bw_dy[dy_row + ox];
            s0_0 = fma(d, c0.x, s0_0); s0_1 = fma(d, c1.x, s0_1); s0_2 = fma(d, c2.x, s0_2);
            s1_0 = fma(d, c0.y, s1_0); s1_1 = fma(d, c1.y, s1_1); s1_2 = fma(d, c2.y, s1_2);
            s2_0 = fma(d, c0.z, s2_0); s2_1 = fma(d, c1.z, s2_1); s2_2 = fma(d, c2.z, s2_2);
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
    let sums = array<f32, 9>(s0_0, s0_1, s0_2, s1_0, s1_1, s1_2, s2_0, s2_1, s2_2);
    for (var tap = 0u; tap < 9u; tap++) {
        if (p.chunks == 1u) {
            let at = c * 9u + tap;
            bw_dw[at] = accumulated(bw_dw[at], sums[tap], p.accumulate);
        } else {
            bw_dw[(c * 9u + tap) * p.chunks + part] = sums[tap];
        }
    }
}

// The same on real GPUs: one workgroup per (channel, tap) and chunk of batch-wide pixels, lanes
// striding through the chunk (each lane's (image, row, column) stepped without divisions), then
// a fixed tree order. Workgroups: channels * taps (x) x chunks (y).
@compute @workgroup_size(64)
fn depthwise_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let taps = p.kernel_h * p.kernel_w;
    let c = wid.x / taps;
    let tap = wid.x % taps;
    let ky = i32(tap / p.kernel_w) - i32(p.pad_h);
    let kx = i32(tap % p.kernel_w) - i32(p.pad_w);
    let out_pixels = p.out_h * p.out_w;
    let start = wid.y * p.chunk_len;
    let end = min(p.batch * out_pixels, start + p.chunk_len);
    // A lane's step of REDUCE pixels: step_n images, step_y rows and step_x columns.
    let step_n = REDUCE / out_pixels;
    let step_y = (REDUCE % out_pixels) / p.out_w;
    let step_x = REDUCE % p.out_w;
    let first = start + lane;
    var n = first / out_pixels;
    var oy = (first % out_pixels) / p.out_w;
    var ox = first % p.out_w;
    var sum = 0.0;
    for (var j = first; j < end; j += REDUCE) {
        let iy = i32(oy * p.stride_h) + ky;
        let ix = i32(ox * p.stride_w) + kx;
        if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
            let plane = n * p.c_in + c;
            sum = fma(bw_dy[(plane * p.out_h + oy) * p.out_w + ox], bw_x[(plane * p.h + u32(iy)) * p.w + u32(ix)], sum);
        }
        ox += step_x;
        if (ox >= p.out_w) {
            ox -= p.out_w;
            oy += 1u;
        }
        oy += step_y;
        if (oy >= p.out_h) {
            oy -= p.out_h;
            n += 1u;
        }
        n += step_n;
    }
    let total = workgroup_sum(lane, sum);
    if (lane == 0u) {
        if (p.chunks == 1u) {
            let at = c * taps + tap;
            bw_dw[at] = accumulated(bw_dw[at], total, p.accumulate);
        } else {
            bw_dw[wid.x * p.chunks + wid.y] = total;
        }
    }
}

// depthwise_weight_rows for 7x7 kernels at column stride 1 (ConvNeXt's), its 49 sums and the
// window as named values (seven rows of sums, seven window columns of x, read as row_in, as
// depthwise_weight_rows reads it) rather than arrays indexed in loops: the same sums in the same
// order. Invocations: as depthwise_weight_rows.

// A row of sums plus d times x0 .. x6, each as depthwise_weight_rows adds it.
fn add_scaled_row7(s: Seven, d: f32, x0: f32, x1: f32, x2: f32, x3: f32, x4: f32, x5: f32, x6: f32) -> Seven {
    return Seven(fma(vec4<f32>(d), vec4<f32>(x0, x1, x2, x3), s.lo), fma(vec3<f32>(d), vec3<f32>(x4, x5, x6), s.hi));
}

// Stores tap (a, b) of channel c's sums, as depthwise_weight_rows does.
fn store_weight_tap7(c: u32, part: u32, tap: u32, v: f32) {
    if (p.chunks == 1u) {
        let at = c * 49u + tap;
        bw_dw[at] = accumulated(bw_dw[at], v, p.accumulate);
    } else {
        bw_dw[(c * 49u + tap) * p.chunks + part] = v;
    }
}

// Stores row a of channel c's sums.
fn store_weight_row7(c: u32, part: u32, a: u32, s: Seven) {
    store_weight_tap7(c, part, a * 7u, s.lo.x); store_weight_tap7(c, part, a * 7u + 1u, s.lo.y);
    store_weight_tap7(c, part, a * 7u + 2u, s.lo.z); store_weight_tap7(c, part, a * 7u + 3u, s.lo.w);
    store_weight_tap7(c, part, a * 7u + 4u, s.hi.x); store_weight_tap7(c, part, a * 7u + 5u, s.hi.y);
    store_weight_tap7(c, part, a * 7u + 6u, s.hi.z);
}

@compute @workgroup_size(64)
fn depthwise_weight_rows_7x7(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.c_in * p.chunks) { return; }
    let part = i % p.chunks;
    let c = i / p.chunks;
    var s0 = Seven(); var s1 = Seven(); var s2 = Seven(); var s3 = Seven();
    var s4 = Seven(); var s5 = Seven(); var s6 = Seven();
    let first = part * p.chunk_len;
    let end = min(p.batch * p.out_h, first + p.chunk_len);
    var n = first / p.out_h;
    var oy = first % p.out_h;
    for (var r = first; r < end; r++) {
        let plane = n * p.c_in + c;
        let x_plane = plane * p.h * p.w;
        let dy_row = (plane * p.out_h + oy) * p.out_w;
        let iy0 = i32(oy * p.stride_h) - i32(p.pad_h);
        let ix0 = -i32(p.pad_w);
        var c0 = column7(x_plane, iy0, ix0); var c1 = column7(x_plane, iy0, ix0 + 1);
        var c2 = column7(x_plane, iy0, ix0 + 2); var c3 = column7(x_plane, iy0, ix0 + 3);
        var c4 = column7(x_plane, iy0, ix0 + 4); var c5 = column7(x_plane, iy0, ix0 + 5);
        var c6 = column7(x_plane, iy0, ix0 + 6);
        for (var ox = 0u; ox < p.out_w; ox++) {
            if (ox > 0u) {
                c0 = c1; c1 = c2; c2 = c3; c3 = c4; c4 = c5; c5 = c6;
                c6 = column7(x_plane, iy0, ix0 + i32(ox) + 6);
            }
            let d = bw_dy[dy_row + ox];
            s0 = add_scaled_row7(s0, d, c0.lo.x, c1.lo.x, c2.lo.x, c3.lo.x, c4.lo.x, c5.lo.x, c6.lo.x);
            s1 = add_scaled_row7(s1, d, c0.lo.y, c1.lo.y, c2.lo.y, c3.lo.y, c4.lo.y, c5.lo.y, c6.lo.y);
            s2 = add_scaled_row7(s2, d, c0.lo.z, c1.lo.z, c2.lo.z, c3.lo.z, c4.lo.z, c5.lo.z, c6.lo.z);
            s3 = add_scaled_row7(s3, d, c0.lo.w, c1.lo.w, c2.lo.w, c3.lo.w, c4.lo.w, c5.lo.w, c6.lo.w);
            s4 = add_scaled_row7(s4, d, c0.hi.x, c1.hi.x, c2.hi.x, c3.hi.x, c4.hi.x, c5.hi.x, c6.hi.x);
            s5 = add_scaled_row7(s5, d, c0.hi.y, c1.hi.y, c2.hi.y, c3.hi.y, c4.hi.y, c5.hi.y, c6.hi.y);
            s6 = add_scaled_row7(s6, d, c0.hi.z, c1.hi.z, c2.hi.z, c3.hi.z, c4.hi.z, c5.hi.z, c6.hi.z);
        }
        oy += 1u;
        if (oy == p.out_h) {
            oy = 0u;
            n += 1u;
        }
    }
    store_weight_row7(c, part, 0u, s0); store_weight_row7(c, part, 1u, s1); store_weight_row7(c, part, 2u, s2);
    store_weight_row7(c, part, 3u, s3); store_weight_row7(c, part, 4u, s4); store_weight_row7(c, part, 5u, s5);
    store_weight_row7(c, part, 6u, s6);
}
