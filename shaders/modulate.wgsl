// KernelDNA static modulation: K child kernels from one parent kernel,
//     child[k, co, f] = parent[co, f] * (1 + spatial[k, f % taps]) * (1 + filter[k, co])
// where f runs over one output channel's weights (c_in_per_group x kh x kw, taps = kh * kw).
// The children use rows first_child .. first_child + children of the attention tensors, so
// one attention tensor can serve children of several parents. Without a spatial attention
// (MobileNetV2, ConvNeXt) its factor is 1.

struct ModulateParams {
    children: u32,
    first_child: u32,
    c_out: u32,
    fan: u32,
    taps: u32,
    has_spatial: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: ModulateParams;

fn spatial_factor(spatial_value: f32) -> f32 {
    return select(1.0, 1.0 + spatial_value, p.has_spatial != 0u);
}

// ---------------------------------------------------------------- forward
@group(0) @binding(1) var<storage, read> fwd_parent: array<f32>;
@group(0) @binding(2) var<storage, read> fwd_spatial: array<f32>;
@group(0) @binding(3) var<storage, read> fwd_filter: array<f32>;
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
    let s = spatial_factor(fwd_spatial[select(0u, k * p.taps + tap, p.has_spatial != 0u)]);
    fwd_children[i] = fwd_parent[e] * s * (1.0 + fwd_filter[k * p.c_out + co]);
}

// ---------------------------------------------------------------- backward
@group(0) @binding(1) var<storage, read> bwd_parent: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_spatial: array<f32>;
@group(0) @binding(3) var<storage, read> bwd_filter: array<f32>;
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
        let s = spatial_factor(bwd_spatial[select(0u, k * p.taps + tap, p.has_spatial != 0u)]);
        sum += bwd_dchildren[c * per_child + e] * s * (1.0 + bwd_filter[k * p.c_out + co]);
    }
    bwd_out[e] = accumulated(bwd_out[e], sum, p.accumulate);
}

// dspatial[k, tap] = sum_{co, f with f % taps == tap} dchild[k, co, f] * parent[co, f] * (1 + filter[k, co]).
// Invocations: children x taps; writes rows first_child .. of the spatial gradient.
@compute @workgroup_size(64)
fn modulate_backward_spatial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.children * p.taps) { return; }
    let c = i / p.taps;
    let tap = i % p.taps;
    let k = p.first_child + c;
    let per_child = p.c_out * p.fan;
    var sum = 0.0;
    for (var co = 0u; co < p.c_out; co++) {
        var row = 0.0;
        for (var f = tap; f < p.fan; f += p.taps) {
            let e = co * p.fan + f;
            row += bwd_dchildren[c * per_child + e] * bwd_parent[e];
        }
        sum += row * (1.0 + bwd_filter[k * p.c_out + co]);
    }
    let at = k * p.taps + tap;
    bwd_out[at] = accumulated(bwd_out[at], sum, p.accumulate);
}

// dfilter[k, co] = sum_f dchild[k, co, f] * parent[co, f] * (1 + spatial[k, f % taps]).
// Invocations: children x c_out; writes rows first_child .. of the filter gradient.
@compute @workgroup_size(64)
fn modulate_backward_filter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.children * p.c_out) { return; }
    let c = i / p.c_out;
    let co = i % p.c_out;
    let k = p.first_child + c;
    let per_child = p.c_out * p.fan;
    var sum = 0.0;
    for (var f = 0u; f < p.fan; f++) {
        let e = co * p.fan + f;
        let s = spatial_factor(bwd_spatial[select(0u, k * p.taps + f % p.taps, p.has_spatial != 0u)]);
        sum += bwd_dchildren[c * per_child + e] * bwd_parent[e] * s;
    }
    let at = k * p.c_out + co;
    bwd_out[at] = accumulated(bwd_out[at], sum, p.accumulate);
}
