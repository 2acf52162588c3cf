// Fully connected layers small enough (src/ops/linear.rs `ROWS_MAX_MACS`: a router's
// projections at training batch sizes) that one dispatch per pass beats the GEMM's
// channels-last copies and weight packing: y = x w^T + b on [N, in] rows, and the gradients.
// A lane holds ROWS results that share one factor (one weight, or one x value) and a
// workgroup's lanes share the other factor's index. Software adapters still pay a loop over
// lanes for that load: where subgroups allow, linear_subgroup.wgsl loads it once per eight
// lanes and broadcasts it. Each result sums in the order the GEMM kernels sum it (from the
// value already there when adding to it, then the terms in order, the bias last), so the two
// paths agree.

struct LinearParams {
    batch: u32,
    in_features: u32,
    out_features: u32,
    has_bias: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: LinearParams;

// Results per lane (named values, which software adapters keep in registers).
const ROWS: u32 = 8u;

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fwd_y: array<f32>;

fn store_forward(n: u32, o: u32, acc: f32) {
    if (n < p.batch) {
        fwd_y[n * p.out_features + o] = stored_activation(acc + select(0.0, fwd_bias[o], p.has_bias != 0u));
    }
}

// y[n, o] = sum_k x[n, k] w[o, k] + b[o]: a lane takes output o (x) for ROWS samples from
// wid.y * ROWS on. Workgroups: ceil(out_features / 64) x ceil(batch / ROWS).
@compute @workgroup_size(64)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let o = min(gid.x, p.out_features - 1u);
    let n0 = wid.y * ROWS;
    // Samples past the batch read the last one and store nothing.
    let last = p.batch - 1u;
    let x0 = min(n0, last) * p.in_features;
    let x1 = min(n0 + 1u, last) * p.in_features;
    let x2 = min(n0 + 2u, last) * p.in_features;
    let x3 = min(n0 + 3u, last) * p.in_features;
    let x4 = min(n0 + 4u, last) * p.in_features;
    let x5 = min(n0 + 5u, last) * p.in_features;
    let x6 = min(n0 + 6u, last) * p.in_features;
    let x7 = min(n0 + 7u, last) * p.in_features;
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    let w0 = o * p.in_features;
    for (var k = 0u; k < p.in_features; k++) {
        let w = fwd_w[w0 + k];
        a0 += fwd_x[x0 + k] * w; a1 += fwd_x[x1 + k] * w; a2 += fwd_x[x2 + k] * w; a3 += fwd_x[x3 + k] * w;
        a4 += fwd_x[x4 + k] * w; a5 += fwd_x[x5 + k] * w; a6 += fwd_x[x6 + k] * w; a7 += fwd_x[x7 + k] * w;
    }
    if (gid.x < p.out_features) {
        store_forward(n0, o, a0); store_forward(n0 + 1u, o, a1); store_forward(n0 + 2u, o, a2);
        store_forward(n0 + 3u, o, a3); store_forward(n0 + 4u, o, a4); store_forward(n0 + 5u, o, a5);
        store_forward(n0 + 6u, o, a6); store_forward(n0 + 7u, o, a7);
    }
}

@group(0) @binding(1) var<storage, read> bwd_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_other: array<f32>;
@group(0) @binding(3) var<storage, read_write> bwd_out: array<f32>;

// out[at] (+)= the sum; out is read only to add to it (every access costs software adapters
// a loop over lanes). Added first, as the GEMM's input gradient starts from it.
fn initial(at: u32, inside: bool) -> f32 {
    if (p.accumulate != 0u && inside) { return bwd_out[at]; }
    return 0.0;
}

// The starting values of the results at `at`, `at + step`, ... of samples n0 .. n0 + 7
// (zero past the batch, or for a lane that stores nothing).
fn initial_rows(at: u32, step: u32, n0: u32, live: bool) -> array<f32, 8> {
    return array<f32, 8>(
        initial(at, live && n0 < p.batch),
        initial(at + step, live && n0 + 1u < p.batch),
        initial(at + 2u * step, live && n0 + 2u < p.batch),
        initial(at + 3u * step, live && n0 + 3u < p.batch),
        initial(at + 4u * step, live && n0 + 4u < p.batch),
        initial(at + 5u * step, live && n0 + 5u < p.batch),
        initial(at + 6u * step, live && n0 + 6u < p.batch),
        initial(at + 7u * step, live && n0 + 7u < p.batch),
    );
}

// The inverse of initial_rows: each sample's result stored at its place.
fn store_rows(at: u32, step: u32, n0: u32, live: bool, sums: array<f32, 8>) {
    if (!live) { return; }
    for (var j = 0u; j < ROWS; j++) {
        if (n0 + j < p.batch) { bwd_out[at + j * step] = sums[j]; }
    }
}

// dx[n, k] (+)= sum_o dy[n, o] w[o, k]: a lane takes input k (x) for ROWS samples from
// wid.y * ROWS on. Workgroups: ceil(in_features / 64) x ceil(batch / ROWS).
@compute @workgroup_size(64)
fn linear_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = min(gid.x, p.in_features - 1u);
    let n0 = wid.y * ROWS;
    let last = p.batch - 1u;
    let d0 = min(n0, last) * p.out_features;
    let d1 = min(n0 + 1u, last) * p.out_features;
    let d2 = min(n0 + 2u, last) * p.out_features;
    let d3 = min(n0 + 3u, last) * p.out_features;
    let d4 = min(n0 + 4u, last) * p.out_features;
    let d5 = min(n0 + 5u, last) * p.out_features;
    let d6 = min(n0 + 6u, last) * p.out_features;
    let d7 = min(n0 + 7u, last) * p.out_features;
    let live = gid.x < p.in_features;
    let at = n0 * p.in_features + k;
    let step = p.in_features;
    let start = initial_rows(at, step, n0, live);
    var a0 = start[0]; var a1 = start[1]; var a2 = start[2]; var a3 = start[3];
    var a4 = start[4]; var a5 = start[5]; var a6 = start[6]; var a7 = start[7];
    for (var o = 0u; o < p.out_features; o++) {
        let w = bwd_other[o * p.in_features + k];
        a0 += bwd_dy[d0 + o] * w; a1 += bwd_dy[d1 + o] * w; a2 += bwd_dy[d2 + o] * w; a3 += bwd_dy[d3 + o] * w;
        a4 += bwd_dy[d4 + o] * w; a5 += bwd_dy[d5 + o] * w; a6 += bwd_dy[d6 + o] * w; a7 += bwd_dy[d7 + o] * w;
    }
    store_rows(at, step, n0, live, array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7));
}

// dw[o, k] (+)= sum_n dy[n, o] x[n, k]: a lane takes input k (x) for ROWS outputs from
// wid.y * ROWS on. Workgroups: ceil(in_features / 64) x ceil(out_features / ROWS).
@compute @workgroup_size(64)
fn linear_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = min(gid.x, p.in_features - 1u);
    let o0 = wid.y * ROWS;
    let last = p.out_features - 1u;
    let c0 = min(o0, last);
    let c1 = min(o0 + 1u, last);
    let c2 = min(o0 + 2u, last);
    let c3 = min(o0 + 3u, last);
    let c4 = min(o0 + 4u, last);
    let c5 = min(o0 + 5u, last);
    let c6 = min(o0 + 6u, last);
    let c7 = min(o0 + 7u, last);
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        let x = bwd_other[n * p.in_features + k];
        let d = n * p.out_features;
        a0 += bwd_dy[d + c0] * x; a1 += bwd_dy[d + c1] * x; a2 += bwd_dy[d + c2] * x; a3 += bwd_dy[d + c3] * x;
        a4 += bwd_dy[d + c4] * x; a5 += bwd_dy[d + c5] * x; a6 += bwd_dy[d + c6] * x; a7 += bwd_dy[d + c7] * x;
    }
    if (gid.x < p.in_features) {
        let sums = array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
        for (var j = 0u; j < ROWS; j++) {
            if (o0 + j < p.out_features) {
                let at = (o0 + j) * p.in_features + k;
                var v = sums[j];
                if (p.accumulate != 0u) { v = bwd_out[at] + v; }
                bwd_out[at] = v;
            }
        }
    }
}

// db[o] (+)= sum_n dy[n, o]. Invocations: out_features.
@compute @workgroup_size(64)
fn linear_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_index(gid, nwg);
    if (o >= p.out_features) { return; }
    var acc = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        acc += bwd_dy[n * p.out_features + o];
    }
    if (p.accumulate != 0u) { acc = bwd_out[o] + acc; }
    bwd_out[o] = acc;
}
