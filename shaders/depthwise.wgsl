// Depthwise convolution (groups == channels, one filter per channel), NCHW / OIHW, and its
// gradients. Each invocation owns 8 consecutive pixels of one channel, held in two vec4s;
// the weight gradient reduces each (channel, tap) over the batch in one workgroup.

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
            acc_a += w * gather_fwd_x(rowa + vec4<u32>(clamp(ixa, zero, wi)), iya >= zero & iya <= hi & ixa >= zero & ixa <= wi);
            acc_b += w * gather_fwd_x(rowb + vec4<u32>(clamp(ixb, zero, wi)), iyb >= zero & iyb <= hi & ixb >= zero & ixb <= wi);
        }
    }
    let bias = select(0.0, fwd_bias[c], p.has_bias != 0u);
    let out = plane * pixels + pt * PIXELS;
    for (var i = 0u; i < 4u; i++) {
        if (pt * PIXELS + i < pixels) { fwd_y[out + i] = acc_a[i] + bias; }
        if (pt * PIXELS + 4u + i < pixels) { fwd_y[out + 4u + i] = acc_b[i] + bias; }
    }
}

// ---------------------------------------------------------------- gradient to the input
@group(0) @binding(1) var<storage, read> bin_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bin_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bin_dx: array<f32>;

fn gather_bin_dy(at: vec4<u32>, inside: vec4<bool>) -> vec4<f32> {
    return masked(vec4<f32>(bin_dy[at.x], bin_dy[at.y], bin_dy[at.z], bin_dy[at.w]), inside);
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
    let sh = vec4<i32>(i32(p.stride_h));
    let sw = vec4<i32>(i32(p.stride_w));
    let oh = vec4<i32>(i32(p.out_h));
    let ow = vec4<i32>(i32(p.out_w));
    let zero = vec4<i32>(0);
    let base = plane * p.out_h * p.out_w;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        let sya = ya - i32(ky);
        let syb = yb - i32(ky);
        let oya = sya / sh;
        let oyb = syb / sh;
        let ya_hit = sya >= zero & sya % sh == zero & oya < oh;
        let yb_hit = syb >= zero & syb % sh == zero & oyb < oh;
        let rowa = vec4<u32>(clamp(oya, zero, oh - 1)) * p.out_w + base;
        let rowb = vec4<u32>(clamp(oyb, zero, oh - 1)) * p.out_w + base;
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let sxa = xa - i32(kx);
            let sxb = xb - i32(kx);
            let oxa = sxa / sw;
            let oxb = sxb / sw;
            let w = bin_w[(c * p.kernel_h + ky) * p.kernel_w + kx];
            acc_a += w * gather_bin_dy(rowa + vec4<u32>(clamp(oxa, zero, ow - 1)), ya_hit & sxa >= zero & sxa % sw == zero & oxa < ow);
            acc_b += w * gather_bin_dy(rowb + vec4<u32>(clamp(oxb, zero, ow - 1)), yb_hit & sxb >= zero & sxb % sw == zero & oxb < ow);
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

// ---------------------------------------------------------------- gradient to the weight
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
// dw, or with several chunks their partial sums [channel * taps + tap][chunk].
@group(0) @binding(3) var<storage, read_write> bw_dw: array<f32>;

// dw[c, ky, kx] = sum_{n, oy, ox} dy[n, c, oy, ox] * x[n, c, oy*s - pad + ky, ox*s - pad + kx],
// one workgroup per (channel, tap) and chunk of batch-wide pixels, lanes striding through the
// chunk, then a fixed tree order. Workgroups: channels * taps (x) x chunks (y).
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
    var sum = 0.0;
    for (var j = start + lane; j < end; j += REDUCE) {
        let n = j / out_pixels;
        let px = j % out_pixels;
        let iy = i32((px / p.out_w) * p.stride_h) + ky;
        let ix = i32((px % p.out_w) * p.stride_w) + kx;
        if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
            let plane = n * p.c_in + c;
            sum += bw_dy[plane * out_pixels + px] * bw_x[(plane * p.h + u32(iy)) * p.w + u32(ix)];
        }
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
