// Max pooling (with the argmax kept for backward) and global average pooling, NCHW.

struct PoolParams {
    planes: u32,      // batch x channels
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: PoolParams;

@group(0) @binding(1) var<storage, read> mf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mf_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> mf_argmax: array<u32>;

// Padding counts as -infinity; the first maximum in scan order wins, as in torch.
// Invocations: planes x out_h x out_w.
@compute @workgroup_size(64)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let out_pixels = p.out_h * p.out_w;
    if (i >= p.planes * out_pixels) { return; }
    let plane = i / out_pixels;
    let oy = (i % out_pixels) / p.out_w;
    let ox = i % p.out_w;
    let base = plane * p.h * p.w;
    var best = -3.4028235e38;
    var best_at = 0u;
    var found = false;
    for (var ky = 0u; ky < p.kernel; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.kernel; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let at = u32(iy) * p.w + u32(ix);
            let v = mf_x[base + at];
            if (!found || v > best) {
                best = v;
                best_at = at;
                found = true;
            }
        }
    }
    mf_y[i] = best;
    mf_argmax[i] = best_at;
}

@group(0) @binding(1) var<storage, read> mb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> mb_argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

// Each input pixel gathers the gradient of every window that chose it (no atomics), in window
// order. An invocation takes one input row, its pixels left to right, so that each pixel's
// windows follow from the previous pixel's without divisions (software adapters pay eight
// scalar divisions for each one on a vector of lanes). Invocations: planes x h.
@compute @workgroup_size(64)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg);
    if (row >= p.planes * p.h) { return; }
    let plane = row / p.h;
    let iy = row % p.h;
    let s = i32(p.stride);
    let k = i32(p.kernel);
    // Windows oy with oy * s <= iy + pad < oy * s + k.
    let yp = i32(iy) + i32(p.pad);
    let oy_lo = max((yp - k + s) / s, 0);
    let oy_hi = min(yp / s, i32(p.out_h) - 1);
    // The same along x, as the pixel moves: windows ox_lo ..= ox_hi.
    var ox_lo = 0;
    var ox_hi = -1;
    for (var ix = 0u; ix < p.w; ix++) {
        let xp = i32(ix) + i32(p.pad);
        while (ox_lo * s + k <= xp) { ox_lo++; }
        while (ox_hi + 1 < i32(p.out_w) && (ox_hi + 1) * s <= xp) { ox_hi++; }
        let at = iy * p.w + ix;
        var sum = 0.0;
        for (var oy = oy_lo; oy <= oy_hi; oy++) {
            for (var ox = ox_lo; ox <= ox_hi; ox++) {
                let o = (plane * p.out_h + u32(oy)) * p.out_w + u32(ox);
                if (mb_argmax[o] == at) {
                    sum += mb_dy[o];
                }
            }
        }
        let i = row * p.w + ix;
        if (p.accumulate != 0u) { sum = mb_dx[i] + sum; }
        mb_dx[i] = sum;
    }
}

@group(0) @binding(1) var<storage, read> af_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> af_y: array<f32>;

// y[plane] = mean over h x w. Invocations: planes.
@compute @workgroup_size(64)
fn global_avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    let pixels = p.h * p.w;
    var sum = 0.0;
    for (var i = 0u; i < pixels; i++) {
        sum += af_x[plane * pixels + i];
    }
    af_y[plane] = sum / f32(pixels);
}

@group(0) @binding(1) var<storage, read> ab_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> ab_dx: array<f32>;

// Invocations: planes x h x w.
@compute @workgroup_size(64)
fn global_avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let pixels = p.h * p.w;
    if (i >= p.planes * pixels) { return; }
    ab_dx[i] = accumulated(ab_dx[i], ab_dy[i / pixels] / f32(pixels), p.accumulate);
}
