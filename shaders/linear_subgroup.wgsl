// linear.wgsl's row kernels for adapters whose subgroups have at least eight lanes
// (src/gpu/mod.rs `Gpu::subgroups`), where the summed axis comes in fours. The factor a
// workgroup's lanes share is loaded once per eight lanes, lane m of each eight loading the
// m-th of the eight rows, and reaches the others by broadcast: an eighth of the loads, which
// software adapters pay per lane even when every lane reads the same value. Loads along the
// summed axis are vec4s. Each result adds its terms in the row kernels' order (from the value
// already there when adding to it, then the terms in order, the bias last), so both agree bit
// for bit. (linear.wgsl is prepended.)

@group(0) @binding(1) var<storage, read> fq_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fq_w: array<vec4<f32>>;

// linear_forward over input quads: a lane takes output o (x) for ROWS samples from
// wid.y * ROWS on, lane m of each eight loading sample m's quad. Workgroups: as
// linear_forward's.
@compute @workgroup_size(64)
fn linear_forward_quads(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let o = min(gid.x, p.out_features - 1u);
    let n0 = wid.y * ROWS;
    let quads = p.in_features / 4u;
    // Samples past the batch read the last one and store nothing.
    let xs = min(n0 + (lane & 7u), p.batch - 1u) * quads;
    let ws = o * quads;
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var k = 0u; k < quads; k++) {
        let w = fq_w[ws + k];
        let x = fq_x[xs + k];
        a0 = add_products(a0, subgroupBroadcast(x, 0u), w); a1 = add_products(a1, subgroupBroadcast(x, 1u), w);
        a2 = add_products(a2, subgroupBroadcast(x, 2u), w); a3 = add_products(a3, subgroupBroadcast(x, 3u), w);
        a4 = add_products(a4, subgroupBroadcast(x, 4u), w); a5 = add_products(a5, subgroupBroadcast(x, 5u), w);
        a6 = add_products(a6, subgroupBroadcast(x, 6u), w); a7 = add_products(a7, subgroupBroadcast(x, 7u), w);
    }
    if (gid.x < p.out_features) { store_forward_rows(n0, o, array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7)); }
}

// Output o of samples n0 .. n0 + 7 (those in the batch).
fn store_forward_rows(n0: u32, o: u32, a: array<f32, 8>) {
    store_forward(n0, o, a[0]); store_forward(n0 + 1u, o, a[1]); store_forward(n0 + 2u, o, a[2]);
    store_forward(n0 + 3u, o, a[3]); store_forward(n0 + 4u, o, a[4]); store_forward(n0 + 5u, o, a[5]);
    store_forward(n0 + 6u, o, a[6]); store_forward(n0 + 7u, o, a[7]);
}

@group(0) @binding(1) var<storage, read> bq_dy: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bq_other: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bq_out: array<vec4<f32>>;

// linear_backward_input over output quads: a lane takes input k (x) for ROWS samples from
// wid.y * ROWS on, lane m of each eight loading sample m's quad of dy. Workgroups: as
// linear_backward_input's.
@compute @workgroup_size(64)
fn linear_backward_input_quads(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let k = min(gid.x, p.in_features - 1u);
    let n0 = wid.y * ROWS;
    let quads = p.out_features / 4u;
    let ds = min(n0 + (lane & 7u), p.batch - 1u) * quads;
    let live = gid.x < p.in_features;
    let at = n0 * p.in_features + k;
    let step = p.in_features;
    let start = initial_rows(at, step, n0, live);
    var a0 = start[0]; var a1 = start[1]; var a2 = start[2]; var a3 = start[3];
    var a4 = start[4]; var a5 = start[5]; var a6 = start[6]; var a7 = start[7];
    for (var q = 0u; q < quads; q++) {
        let o = 4u * q * p.in_features + k;
        let w = vec4<f32>(bwd_other[o], bwd_other[o + step], bwd_other[o + 2u * step], bwd_other[o + 3u * step]);
        let d = bq_dy[ds + q];
        a0 = add_products(a0, subgroupBroadcast(d, 0u), w); a1 = add_products(a1, subgroupBroadcast(d, 1u), w);
        a2 = add_products(a2, subgroupBroadcast(d, 2u), w); a3 = add_products(a3, subgroupBroadcast(d, 3u), w);
        a4 = add_products(a4, subgroupBroadcast(d, 4u), w); a5 = add_products(a5, subgroupBroadcast(d, 5u), w);
        a6 = add_products(a6, subgroupBroadcast(d, 6u), w); a7 = add_products(a7, subgroupBroadcast(d, 7u), w);
    }
    store_rows(at, step, n0, live, array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7));
}

// linear_backward_weight over input quads: a lane takes input quad kq (x) for ROWS outputs
// from wid.y * ROWS on, lane m of each eight loading output m's dy. Workgroups:
// ceil(in_features / 4 / 64) x ceil(out_features / ROWS).
@compute @workgroup_size(64)
fn linear_backward_weight_quads(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let quads = p.in_features / 4u;
    let kq = min(gid.x, quads - 1u);
    let o0 = wid.y * ROWS;
    let mine = min(o0 + (lane & 7u), p.out_features - 1u);
    var a0 = vec4<f32>(); var a1 = vec4<f32>(); var a2 = vec4<f32>(); var a3 = vec4<f32>();
    var a4 = vec4<f32>(); var a5 = vec4<f32>(); var a6 = vec4<f32>(); var a7 = vec4<f32>();
    for (var n = 0u; n < p.batch; n++) {
        let x = bq_other[n * quads + kq];
        let d = bwd_dy[n * p.out_features + mine];
        a0 += subgroupBroadcast(d, 0u) * x; a1 += subgroupBroadcast(d, 1u) * x;
        a2 += subgroupBroadcast(d, 2u) * x; a3 += subgroupBroadcast(d, 3u) * x;
        a4 += subgroupBroadcast(d, 4u) * x; a5 += subgroupBroadcast(d, 5u) * x;
        a6 += subgroupBroadcast(d, 6u) * x; a7 += subgroupBroadcast(d, 7u) * x;
    }
    if (gid.x < quads) { store_weight_rows(o0, kq, array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7)); }
}

// Input quad kq's gradients of outputs o0 .. o0 + 7 (those there are).
fn store_weight_rows(o0: u32, kq: u32, sums: array<vec4<f32>, 8>) {
    let quads = p.in_features / 4u;
    for (var j = 0u; j < ROWS; j++) {
        if (o0 + j < p.out_features) {
            let at = (o0 + j) * quads + kq;
            var v = sums[j];
            if (p.accumulate != 0u) { v = bq_out[at] + v; }
            bq_out[at] = v;
        }
    }
}

// The kernels above, each reading its two factors from textures that hold copies of bindings 1
// and 2 (`buffer_texel`; src/gpu/mod.rs `Gpu::texture_reads`): software adapters gather a texel
// fetch's lanes in registers, where a storage load whose address differs per lane loops over
// the lanes. The same loads in the same order, the same values. The loops are repeated, not
// shared: a pipeline binds everything its entry point's code can reach.
@group(0) @binding(15) var first_texels: texture_2d<f32>;
@group(0) @binding(14) var second_texels: texture_2d<f32>;

// Float i of the buffer whose vec4s texture t holds.
fn buffer_scalar(t: texture_2d<f32>, i: u32) -> f32 {
    return buffer_texel(t, i >> 2u)[i & 3u];
}

@compute @workgroup_size(64)
fn linear_forward_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let o = min(gid.x, p.out_features - 1u);
    let n0 = wid.y * ROWS;
    let quads = p.in_features / 4u;
    let xs = min(n0 + (lane & 7u), p.batch - 1u) * quads;
    let ws = o * quads;
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var k = 0u; k < quads; k++) {
        let w = buffer_texel(second_texels, ws + k);
        let x = buffer_texel(first_texels, xs + k);
        a0 = add_products(a0, subgroupBroadcast(x, 0u), w); a1 = add_products(a1, subgroupBroadcast(x, 1u), w);
        a2 = add_products(a2, subgroupBroadcast(x, 2u), w); a3 = add_products(a3, subgroupBroadcast(x, 3u), w);
        a4 = add_products(a4, subgroupBroadcast(x, 4u), w); a5 = add_products(a5, subgroupBroadcast(x, 5u), w);
        a6 = add_products(a6, subgroupBroadcast(x, 6u), w); a7 = add_products(a7, subgroupBroadcast(x, 7u), w);
    }
    if (gid.x < p.out_features) { store_forward_rows(n0, o, array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7)); }
}

@compute @workgroup_size(64)
fn linear_backward_input_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let k = min(gid.x, p.in_features - 1u);
    let n0 = wid.y * ROWS;
    let quads = p.out_features / 4u;
    let ds = min(n0 + (lane & 7u), p.batch - 1u) * quads;
    let live = gid.x < p.in_features;
    let at = n0 * p.in_features + k;
    let step = p.in_features;
    let start = initial_rows(at, step, n0, live);
    var a0 = start[0]; var a1 = start[1]; var a2 = start[2]; var a3 = start[3];
    var a4 = start[4]; var a5 = start[5]; var a6 = start[6]; var a7 = start[7];
    for (var q = 0u; q < quads; q++) {
        let o = 4u * q * p.in_features + k;
        let w = vec4<f32>(
            buffer_scalar(second_texels, o),
            buffer_scalar(second_texels, o + step),
            buffer_scalar(second_texels, o + 2u * step),
            buffer_scalar(second_texels, o + 3u * step),
        );
        let d = buffer_texel(first_texels, ds + q);
        a0 = add_products(a0, subgroupBroadcast(d, 0u), w); a1 = add_products(a1, subgroupBroadcast(d, 1u), w);
        a2 = add_products(a2, subgroupBroadcast(d, 2u), w); a3 = add_products(a3, subgroupBroadcast(d, 3u), w);
        a4 = add_products(a4, subgroupBroadcast(d, 4u), w); a5 = add_products(a5, subgroupBroadcast(d, 5u), w);
        a6 = add_products(a6, subgroupBroadcast(d, 6u), w); a7 = add_products(a7, subgroupBroadcast(d, 7u), w);
    }
    store_rows(at, step, n0, live, array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7));
}

@compute @workgroup_size(64)
fn linear_backward_weight_quads_textured(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let quads = p.in_features / 4u;
    let kq = min(gid.x, quads - 1u);
    let o0 = wid.y * ROWS;
    let mine = min(o0 + (lane & 7u), p.out_features - 1u);
    var a0 = vec4<f32>(); var a1 = vec4<f32>(); var a2 = vec4<f32>(); var a3 = vec4<f32>();
    var a4 = vec4<f32>(); var a5 = vec4<f32>(); var a6 = vec4<f32>(); var a7 = vec4<f32>();
    for (var n = 0u; n < p.batch; n++) {
        let x = buffer_texel(second_texels, n * quads + kq);
        let d = buffer_scalar(first_texels, n * p.out_features + mine);
        a0 += subgroupBroadcast(d, 0u) * x; a1 += subgroupBroadcast(d, 1u) * x;
        a2 += subgroupBroadcast(d, 2u) * x; a3 += subgroupBroadcast(d, 3u) * x;
        a4 += subgroupBroadcast(d, 4u) * x; a5 += subgroupBroadcast(d, 5u) * x;
        a6 += subgroupBroadcast(d, 6u) * x; a7 += subgroupBroadcast(d, 7u) * x;
    }
    if (gid.x < quads) { store_weight_rows(o0, kq, array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7)); }
}
