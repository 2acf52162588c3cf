// Two-dimensional convolution, NCHW activations and OIHW weights (PyTorch's layouts), with
// stride, zero padding and groups, and its three gradients: the kernels for grouped
// convolutions that are not depthwise (conv_tile.wgsl and depthwise.wgsl take those), the
// bias gradient of every convolution, and the ordered sum of chunked reductions.
//
// Each invocation owns a TILE x TILE block of results so that every loaded value feeds TILE
// multiply-adds: on software adapters every load is a per-lane scalar loop, so arithmetic per
// load decides speed.

// ConvParams comes from conv_common.wgsl.

const TILE: u32 = 8u;

@group(0) @binding(0) var<uniform> p: ConvParams;

// ---------------------------------------------------------------- forward
// y[n, co, oy, ox] = bias[co] + sum_{ci in group, ky, kx} w[co, ci, ky, kx] * x[n, ci, oy*s - pad + ky, ...]
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

// Invocations: batch x groups x ceil(c_out_per_group / TILE) x ceil(out_h * out_w / TILE).
@compute @workgroup_size(64)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cout_g = p.c_out / p.groups;
    let cin_g = p.c_in / p.groups;
    let pixels = p.out_h * p.out_w;
    let pixel_tiles = (pixels + TILE - 1u) / TILE;
    let co_tiles = (cout_g + TILE - 1u) / TILE;
    var t = flat_index(gid, nwg);
    if (t >= p.batch * p.groups * co_tiles * pixel_tiles) { return; }
    let pt = t % pixel_tiles; t = t / pixel_tiles;
    let ct = t % co_tiles; t = t / co_tiles;
    let g = t % p.groups;
    let n = t / p.groups;

    // Top-left input coordinate of each output pixel of the tile (as i32: padding goes negative).
    var iy0: array<i32, TILE>;
    var ix0: array<i32, TILE>;
    for (var i = 0u; i < TILE; i++) {
        let px = min(pt * TILE + i, pixels - 1u);
        iy0[i] = i32((px / p.out_w) * p.stride_h) - i32(p.pad_h);
        ix0[i] = i32((px % p.out_w) * p.stride_w) - i32(p.pad_w);
    }
    var acc: array<f32, 64>;
    let taps = p.kernel_h * p.kernel_w;
    for (var ci = 0u; ci < cin_g; ci++) {
        let x_base = (n * p.c_in + g * cin_g + ci) * p.h * p.w;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                var xv: array<f32, TILE>;
                for (var i = 0u; i < TILE; i++) {
                    let iy = iy0[i] + i32(ky);
                    let ix = ix0[i] + i32(kx);
                    let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
                    xv[i] = select(0.0, fwd_x[x_base + u32(max(iy, 0)) * p.w + u32(max(ix, 0))], inside);
                }
                let tap = ky * p.kernel_w + kx;
                for (var j = 0u; j < TILE; j++) {
                    let co = min(ct * TILE + j, cout_g - 1u) + g * cout_g;
                    let wv = fwd_w[(co * cin_g + ci) * taps + tap];
                    for (var i = 0u; i < TILE; i++) {
                        acc[j * TILE + i] = fma(wv, xv[i], acc[j * TILE + i]);
                    }
                }
            }
        }
    }
    for (var j = 0u; j < TILE; j++) {
        let col = ct * TILE + j;
        if (col >= cout_g) { break; }
        let co = g * cout_g + col;
        let bias = select(0.0, fwd_bias[co], p.has_bias != 0u);
        let y_base = (n * p.c_out + co) * pixels;
        for (var i = 0u; i < TILE; i++) {
            let px = pt * TILE + i;
            if (px < pixels) {
                fwd_y[y_base + px] = stored_activation(acc[j * TILE + i] + bias);
            }
        }
    }
}

// ---------------------------------------------------------------- gradient to the input
// dx[n, ci, iy, ix] = sum_{co in group, ky, kx : iy = oy*s - pad + ky} w[co, ci, ky, kx] * dy[n, co, oy, ox]
@group(0) @binding(1) var<storage, read> bin_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bin_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bin_dx: array<f32>;

// Invocations: batch x groups x ceil(c_in_per_group / TILE) x ceil(h * w / TILE).
@compute @workgroup_size(64)
fn conv2d_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cout_g = p.c_out / p.groups;
    let cin_g = p.c_in / p.groups;
    let pixels = p.h * p.w;
    let pixel_tiles = (pixels + TILE - 1u) / TILE;
    let ci_tiles = (cin_g + TILE - 1u) / TILE;
    var t = flat_index(gid, nwg);
    if (t >= p.batch * p.groups * ci_tiles * pixel_tiles) { return; }
    let pt = t % pixel_tiles; t = t / pixel_tiles;
    let ct = t % ci_tiles; t = t / ci_tiles;
    let g = t % p.groups;
    let n = t / p.groups;

    var iy: array<i32, TILE>;
    var ix: array<i32, TILE>;
    for (var i = 0u; i < TILE; i++) {
        let px = min(pt * TILE + i, pixels - 1u);
        iy[i] = i32(px / p.w) + i32(p.pad_h);
        ix[i] = i32(px % p.w) + i32(p.pad_w);
    }
    var acc: array<f32, 64>;
    let taps = p.kernel_h * p.kernel_w;
    for (var col = 0u; col < cout_g; col++) {
        let co = g * cout_g + col;
        let dy_base = (n * p.c_out + co) * p.out_h * p.out_w;
        for (var ky = 0u; ky < p.kernel_h; ky++) {
            for (var kx = 0u; kx < p.kernel_w; kx++) {
                var dyv: array<f32, TILE>;
                for (var i = 0u; i < TILE; i++) {
                    // The output pixel whose window puts tap (ky, kx) on this input pixel.
                    let sy = iy[i] - i32(ky);
                    let sx = ix[i] - i32(kx);
                    let oy = sy / i32(p.stride_h);
                    let ox = sx / i32(p.stride_w);
                    let hit = sy >= 0 && sx >= 0
                        && sy % i32(p.stride_h) == 0 && sx % i32(p.stride_w) == 0
                        && oy < i32(p.out_h) && ox < i32(p.out_w);
                    dyv[i] = select(0.0, bin_dy[dy_base + u32(max(oy, 0)) * p.out_w + u32(max(ox, 0))], hit);
                }
                let tap = ky * p.kernel_w + kx;
                for (var j = 0u; j < TILE; j++) {
                    let ci = min(ct * TILE + j, cin_g - 1u);
                    let wv = bin_w[(co * cin_g + ci) * taps + tap];
                    for (var i = 0u; i < TILE; i++) {
                        acc[j * TILE + i] = fma(wv, dyv[i], acc[j * TILE + i]);
                    }
                }
            }
        }
    }
    for (var j = 0u; j < TILE; j++) {
        let ci = ct * TILE + j;
        if (ci >= cin_g) { break; }
        let dx_base = (n * p.c_in + g * cin_g + ci) * pixels;
        for (var i = 0u; i < TILE; i++) {
            let px = pt * TILE + i;
            if (px < pixels) {
                bin_dx[dx_base + px] = accumulated(bin_dx[dx_base + px], acc[j * TILE + i], p.accumulate);
            }
        }
    }
}

// ---------------------------------------------------------------- gradient to the weight
// dw[co, ci, ky, kx] = sum_{n, oy, ox} dy[n, co, oy, ox] * x[n, ci, oy*s - pad + ky, ox*s - pad + kx]
@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_dw: array<f32>;

// Invocations: groups x ceil(c_out_per_group / TILE) x ceil(c_in_per_group * kh * kw / TILE);
// each reduces over the whole batch and every output pixel in a fixed order.
@compute @workgroup_size(64)
fn conv2d_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cout_g = p.c_out / p.groups;
    let cin_g = p.c_in / p.groups;
    let taps = p.kernel_h * p.kernel_w;
    let k_len = cin_g * taps;
    let k_tiles = (k_len + TILE - 1u) / TILE;
    let co_tiles = (cout_g + TILE - 1u) / TILE;
    var t = flat_index(gid, nwg);
    if (t >= p.groups * co_tiles * k_tiles) { return; }
    let kt = t % k_tiles; t = t / k_tiles;
    let ct = t % co_tiles;
    let g = t / co_tiles;

    // Input channel and tap offset of each k in the tile.
    var x_chan: array<u32, TILE>;
    var ky: array<i32, TILE>;
    var kx: array<i32, TILE>;
    for (var i = 0u; i < TILE; i++) {
        let k = min(kt * TILE + i, k_len - 1u);
        x_chan[i] = g * cin_g + k / taps;
        ky[i] = i32((k % taps) / p.kernel_w) - i32(p.pad_h);
        kx[i] = i32(k % p.kernel_w) - i32(p.pad_w);
    }
    var acc: array<f32, 64>;
    let out_pixels = p.out_h * p.out_w;
    for (var n = 0u; n < p.batch; n++) {
        for (var oy = 0u; oy < p.out_h; oy++) {
            for (var ox = 0u; ox < p.out_w; ox++) {
                var xv: array<f32, TILE>;
                for (var i = 0u; i < TILE; i++) {
                    let iy = i32(oy * p.stride_h) + ky[i];
                    let ix = i32(ox * p.stride_w) + kx[i];
                    let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
                    let at = ((n * p.c_in + x_chan[i]) * p.h + u32(max(iy, 0))) * p.w + u32(max(ix, 0));
                    xv[i] = select(0.0, bw_x[at], inside);
                }
                let px = oy * p.out_w + ox;
                for (var j = 0u; j < TILE; j++) {
                    let co = g * cout_g + min(ct * TILE + j, cout_g - 1u);
                    let dyv = bw_dy[(n * p.c_out + co) * out_pixels + px];
                    for (var i = 0u; i < TILE; i++) {
                        acc[j * TILE + i] = fma(dyv, xv[i], acc[j * TILE + i]);
                    }
                }
            }
        }
    }
    for (var j = 0u; j < TILE; j++) {
        let col = ct * TILE + j;
        if (col >= cout_g) { break; }
        let co = g * cout_g + col;
        for (var i = 0u; i < TILE; i++) {
            let k = kt * TILE + i;
            if (k < k_len) {
                let at = co * k_len + k;
                bw_dw[at] = accumulated(bw_dw[at], acc[j * TILE + i], p.accumulate);
            }
        }
    }
}

// ---------------------------------------------------------------- gradient to the bias
// db[co] = sum_{n, oy, ox} dy[n, co, oy, ox]
@group(0) @binding(1) var<storage, read> bb_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> bb_db: array<f32>;

// db (or with several chunks, partial sums [channel][chunk]): one workgroup per output channel
// and chunk of batch-wide pixels, lanes striding through the chunk, then a fixed tree order.
// Workgroups: c_out (x) x chunks (y).
@compute @workgroup_size(64)
fn conv2d_backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let co = wid.x;
    let pixels = p.out_h * p.out_w;
    let start = wid.y * p.chunk_len;
    let end = min(p.batch * pixels, start + p.chunk_len);
    var sum = 0.0;
    for (var j = start + lane; j < end; j += REDUCE) {
        sum += bb_dy[((j / pixels) * p.c_out + co) * pixels + j % pixels];
    }
    store_bias_sum(co, wid.y, workgroup_sum(lane, sum), lane);
}

// Lane 0 stores channel co's sum over chunk `chunk`: db itself, or its partial sum.
fn store_bias_sum(co: u32, chunk: u32, total: f32, lane: u32) {
    if (lane == 0u) {
        if (p.chunks == 1u) {
            bb_db[co] = accumulated(bb_db[co], total, p.accumulate);
        } else {
            bb_db[co * p.chunks + chunk] = total;
        }
    }
}

// The same over vec4s, for maps whose pixels come in fours (and chunks of whole vec4s): a
// lane keeps four running sums, a quarter as many loads.
@group(0) @binding(1) var<storage, read> bb_dy4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn conv2d_backward_bias_quads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let co = wid.x;
    let quads = p.out_h * p.out_w / 4u;
    let start = wid.y * p.chunk_len / 4u;
    let end = min(p.batch * quads, start + p.chunk_len / 4u);
    var sum = vec4<f32>();
    for (var j = start + lane; j < end; j += REDUCE) {
        sum += bb_dy4[((j / quads) * p.c_out + co) * quads + j % quads];
    }
    store_bias_sum(co, wid.y, workgroup_sum(lane, (sum.x + sum.y) + (sum.z + sum.w)), lane);
}

// ---------------------------------------------------------------- chunked reductions
@group(0) @binding(1) var<storage, read> rc_part: array<f32>;
@group(0) @binding(2) var<storage, read_write> rc_out: array<f32>;

// out[i] (+)= the `chunks` partial sums [i][chunk], added in chunk order. Invocations: every i.
@compute @workgroup_size(64)
fn reduce_chunks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= arrayLength(&rc_out)) { return; }
    var sum = 0.0;
    for (var k = 0u; k < p.chunks; k++) {
        sum += rc_part[i * p.chunks + k];
    }
    rc_out[i] = accumulated(rc_out[i], sum, p.accumulate);
}
