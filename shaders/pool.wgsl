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
    // One phase of maxpool_backward's windows (which always add to a cleared dx).
    phase_y: u32,
    phase_x: u32,
    _pad0: u32,
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

// maxpool_forward for ResNet's stem pool (3x3, stride 2, padding 1) over rows whose width is
// a multiple of 8: four windows side by side per invocation, whose 9 x 3 inputs are three
// aligned vec4s per row (the last element of the one before the windows, then two), against 36
// scalar loads (software adapters pay a lane loop for each access, whatever its width). The
// same scan order and choices as maxpool_forward. Invocations: planes x out_h x out_w / 4.
@group(0) @binding(1) var<storage, read> mf_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> mf_y4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> mf_argmax4: array<vec4<u32>>;

@compute @workgroup_size(64)
fn maxpool_forward_3x3s2_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let quads = p.out_w / 4u;
    if (i >= p.planes * p.out_h * quads) { return; }
    var w = four_windows(i);
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(2u * w.oy + ky) - 1;
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        let row = (w.plane * p.h + u32(iy)) * p.w / 4u + 2u * w.j;
        let a = select(vec4<f32>(), mf_x4[max(row, 1u) - 1u], w.j > 0u);
        scan_window_row(&w, iy, a, mf_x4[row], mf_x4[row + 1u]);
    }
    mf_y4[i] = w.best;
    mf_argmax4[i] = w.best_at;
}

// maxpool_forward_3x3s2_quads reading x from a texture that holds a copy of binding 1
// (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`): software adapters gather a texel
// fetch's lanes in registers, where a storage load whose address differs per lane loops over
// the lanes. The same values and choices.
@group(0) @binding(15) var mf_x_texels: texture_2d<f32>;

@compute @workgroup_size(64)
fn maxpool_forward_3x3s2_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(gid, nwg);
    let quads = p.out_w / 4u;
    if (i >= p.planes * p.out_h * quads) { return; }
    var w = four_windows(i);
    for (var ky = 0u; ky < 3u; ky++) {
        let iy = i32(2u * w.oy + ky) - 1;
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        let row = (w.plane * p.h + u32(iy)) * p.w / 4u + 2u * w.j;
        let a = select(vec4<f32>(), buffer_texel(mf_x_texels, max(row, 1u) - 1u), w.j > 0u);
        scan_window_row(&w, iy, a, buffer_texel(mf_x_texels, row), buffer_texel(mf_x_texels, row + 1u));
    }
    mf_y4[i] = w.best;
    mf_argmax4[i] = w.best_at;
}

// Invocation i's four windows of the stem pool (output row oy of `plane`, windows 4 j .. 4 j + 3)
// and what they have found so far.
struct FourWindows {
    j: u32,
    oy: u32,
    plane: u32,
    best: vec4<f32>,
    best_at: vec4<u32>,
    found: vec4<bool>,
}

fn four_windows(i: u32) -> FourWindows {
    let quads = p.out_w / 4u;
    let j = i % quads;
    let oy = (i / quads) % p.out_h;
    let plane = i / (quads * p.out_h);
    return FourWindows(j, oy, plane, vec4<f32>(-3.4028235e38), vec4<u32>(), vec4<bool>(false));
}

// The windows' inputs in row iy: the last element of the vec4 before the windows (a), then the
// two under them (b, c). Window k's column kx is input column 8 j + 2 k - 1 + kx.
fn scan_window_row(w: ptr<function, FourWindows>, iy: i32, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>) {
    let x0 = vec4<i32>(i32(8u * (*w).j)) + vec4<i32>(-1, 1, 3, 5);
    let columns = array<vec4<f32>, 3>(
        vec4<f32>(a.w, b.y, b.w, c.y),
        vec4<f32>(b.x, b.z, c.x, c.z),
        vec4<f32>(b.y, b.w, c.y, c.w),
    );
    for (var kx = 0u; kx < 3u; kx++) {
        let ix = x0 + vec4<i32>(i32(kx));
        let v = columns[kx];
        let take = ix >= vec4<i32>(0) & (!(*w).found | v > (*w).best);
        (*w).best = select((*w).best, v, take);
        (*w).best_at = select((*w).best_at, vec4<u32>(u32(iy) * p.w) + vec4<u32>(ix), take);
        (*w).found = (*w).found | ix >= vec4<i32>(0);
    }
}

@group(0) @binding(1) var<storage, read> mb_dy: array<f32>;
@group(0) @binding(2) var<storage, read> mb_argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

// Each window adds its gradient to the input pixel it chose. Windows m = ceil(kernel / stride)
// apart along an axis never overlap, so the windows of one phase (phase_y + m i, phase_x + m j)
// add without atomics, and the phases run one after another; dx is cleared before the first
// (`MaxPool2d::covers_input`). An invocation takes one row of a phase's windows, left to right
// (each window's argmax, dy and the pixel's dx loaded once, with no divisions per window).
// Invocations: planes x the phase's rows.
@compute @workgroup_size(64)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = (p.kernel + p.stride - 1u) / p.stride;
    let rows = (p.out_h - p.phase_y + m - 1u) / m;
    let row = flat_index(gid, nwg);
    if (row >= p.planes * rows) { return; }
    let plane = row / rows;
    let oy = p.phase_y + (row % rows) * m;
    let base = plane * p.h * p.w;
    let first = (plane * p.out_h + oy) * p.out_w;
    for (var o = first + p.phase_x; o < first + p.out_w; o += m) {
        let at = base + mb_argmax[o];
        mb_dx[at] = mb_dx[at] + mb_dy[o];
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

// The same two for planes whose pixels come in fours, four at a time; the same values, the
// forward sum adding its terms in the same order. The forward pass's twin reads x from a
// texture that holds a copy of binding 1 (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`).
@group(0) @binding(1) var<storage, read> af_x4: array<vec4<f32>>;
@group(0) @binding(15) var af_x_texels: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> ab_dx4: array<vec4<f32>>;

// sum + v.x + v.y + v.z + v.w, added in that order.
fn add_quad(sum: f32, v: vec4<f32>) -> f32 {
    return sum + v.x + v.y + v.z + v.w;
}

// Invocations: planes.
@compute @workgroup_size(64)
fn global_avgpool_forward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    let quads = p.h * p.w / 4u;
    var sum = 0.0;
    for (var q = 0u; q < quads; q++) {
        sum = add_quad(sum, af_x4[plane * quads + q]);
    }
    af_y[plane] = sum / f32(p.h * p.w);
}

@compute @workgroup_size(64)
fn global_avgpool_forward_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let plane = flat_index(gid, nwg);
    if (plane >= p.planes) { return; }
    let quads = p.h * p.w / 4u;
    var sum = 0.0;
    for (var q = 0u; q < quads; q++) {
        sum = add_quad(sum, buffer_texel(af_x_texels, plane * quads + q));
    }
    af_y[plane] = sum / f32(p.h * p.w);
}

// Invocations: every four elements (dx read only to add to it).
@compute @workgroup_size(64)
fn global_avgpool_backward_quads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let pixels = p.h * p.w;
    if (i >= p.planes * pixels / 4u) { return; }
    let v = vec4<f32>(ab_dy[4u * i / pixels] / f32(pixels));
    var dx = v;
    if (p.accumulate != 0u) { dx = ab_dx4[i] + v; }
    ab_dx4[i] = dx;
}
