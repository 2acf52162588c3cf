// A KernelDNA router's gate in one dispatch, for eval-only graphs (src/ops/router.rs, made by
// inference folding): gate = sigmoid(fc2(relu(fc1(mean_hw(x)) + b1)) + b2), fc1 with the
// router's BatchNorm folded into its weight and bias. Apart, those are three dispatches (global
// average pool, two row-kernel linear layers), each too small to keep a software adapter busy.
//
// A workgroup takes ROWS samples through the three stages. Each stage sums the same terms in the
// same order as its separate kernel (global_avgpool_forward_quads_textured, then
// linear_forward_quads_textured storing relu, then sigmoid), so fusing changes no bit: the
// pooled means and hidden units go to the node's outputs, and the next stage reads them back
// after a storage barrier. Lanes 0..7 of each subgroup load the eight samples' features and
// broadcast them (subgroups of at least eight lanes); channels, hidden units and pixels come
// in fours, and x and both weights are read through textures that hold copies of them
// (`buffer_texel`).

struct RouterParams {
    batch: u32,
    channels: u32,
    hidden: u32,
    spatial: u32,
}

@group(0) @binding(0) var<uniform> p: RouterParams;

// Bindings 1 (x), 2 (w1) and 4 (w2) are read through the textures below.
@group(0) @binding(3) var<storage, read> router_b1: array<f32>;
@group(0) @binding(5) var<storage, read> router_b2: array<f32>;
@group(0) @binding(6) var<storage, read_write> router_pooled: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> router_hidden: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> router_gate: array<f32>;
@group(0) @binding(15) var router_x_texels: texture_2d<f32>;
@group(0) @binding(14) var router_w1_texels: texture_2d<f32>;
@group(0) @binding(13) var router_w2_texels: texture_2d<f32>;

// Samples per workgroup: one per accumulator of a lane, as in linear.wgsl.
const ROWS: u32 = 8u;

// sum + v.x + v.y + v.z + v.w, added in that order (as the pool's kernels add a quad).
fn add_pixels(sum: f32, v: vec4<f32>) -> f32 {
    return sum + v.x + v.y + v.z + v.w;
}

// Hidden unit o of sample n (one in the batch), its relu stored as linear_forward_quads stores it.
fn store_hidden(n: u32, o: u32, sum: f32) {
    if (n < p.batch) {
        let at = n * p.hidden + o;
        router_hidden[at / 4u][at % 4u] = max(sum + router_b1[o], 0.0);
    }
}

// Channel o of sample n's gate, the sigmoid as stored_activation computes it.
fn store_gate(n: u32, o: u32, sum: f32) {
    if (n < p.batch) {
        router_gate[n * p.channels + o] = 1.0 / (1.0 + exp_accurate(-(sum + router_b2[o])));
    }
}

@compute @workgroup_size(64)
fn router_gate_quads_textured(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = wid.x * ROWS;
    let channel_quads = p.channels / 4u;
    let hidden_quads = p.hidden / 4u;
    let pixel_quads = p.spatial / 4u;
    // Samples past the batch read the last one and store nothing.
    let sample = min(n0 + (lane & 7u), p.batch - 1u);

    // Means over each plane: a lane takes a (sample, channel quad), its four planes side by side.
    for (var i = lid; i < ROWS * channel_quads; i += 64u) {
        let n = n0 + i / channel_quads;
        if (n >= p.batch) { break; }
        let quad = n * channel_quads + i % channel_quads;
        let plane = 4u * quad * pixel_quads;
        var s0 = 0.0; var s1 = 0.0; var s2 = 0.0; var s3 = 0.0;
        for (var q = 0u; q < pixel_quads; q++) {
            s0 = add_pixels(s0, buffer_texel(router_x_texels, plane + q));
            s1 = add_pixels(s1, buffer_texel(router_x_texels, plane + pixel_quads + q));
            s2 = add_pixels(s2, buffer_texel(router_x_texels, plane + 2u * pixel_quads + q));
            s3 = add_pixels(s3, buffer_texel(router_x_texels, plane + 3u * pixel_quads + q));
        }
        let pixels = f32(p.spatial);
        router_pooled[quad] = vec4<f32>(s0 / pixels, s1 / pixels, s2 / pixels, s3 / pixels);
    }
    storageBarrier();

    // Hidden units: a lane takes unit o of the eight samples, 64 units at a time.
    let pooled_at = sample * channel_quads;
    for (var base = 0u; base < p.hidden; base += 64u) {
        let o = min(base + lid, p.hidden - 1u);
        let ws = o * channel_quads;
        var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
        var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
        for (var k = 0u; k < channel_quads; k++) {
            let w = buffer_texel(router_w1_texels, ws + k);
            let x = router_pooled[pooled_at + k];
            a0 = add_products(a0, subgroupBroadcast(x, 0u), w); a1 = add_products(a1, subgroupBroadcast(x, 1u), w);
            a2 = add_products(a2, subgroupBroadcast(x, 2u), w); a3 = add_products(a3, subgroupBroadcast(x, 3u), w);
            a4 = add_products(a4, subgroupBroadcast(x, 4u), w); a5 = add_products(a5, subgroupBroadcast(x, 5u), w);
            a6 = add_products(a6, subgroupBroadcast(x, 6u), w); a7 = add_products(a7, subgroupBroadcast(x, 7u), w);
        }
        if (base + lid < p.hidden) {
            store_hidden(n0, o, a0); store_hidden(n0 + 1u, o, a1); store_hidden(n0 + 2u, o, a2);
            store_hidden(n0 + 3u, o, a3); store_hidden(n0 + 4u, o, a4); store_hidden(n0 + 5u, o, a5);
            store_hidden(n0 + 6u, o, a6); store_hidden(n0 + 7u, o, a7);
        }
    }
    storageBarrier();

    // The gate: a lane takes channel o of the eight samples, 64 channels at a time.
    let hidden_at = sample * hidden_quads;
    for (var base = 0u; base < p.channels; base += 64u) {
        let o = min(base + lid, p.channels - 1u);
        let ws = o * hidden_quads;
        var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
        var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
        for (var k = 0u; k < hidden_quads; k++) {
            let w = buffer_texel(router_w2_texels, ws + k);
            let x = router_hidden[hidden_at + k];
            a0 = add_products(a0, subgroupBroadcast(x, 0u), w); a1 = add_products(a1, subgroupBroadcast(x, 1u), w);
            a2 = add_products(a2, subgroupBroadcast(x, 2u), w); a3 = add_products(a3, subgroupBroadcast(x, 3u), w);
            a4 = add_products(a4, subgroupBroadcast(x, 4u), w); a5 = add_products(a5, subgroupBroadcast(x, 5u), w);
            a6 = add_products(a6, subgroupBroadcast(x, 6u), w); a7 = add_products(a7, subgroupBroadcast(x, 7u), w);
        }
        if (base + lid < p.channels) {
            store_gate(n0, o, a0); store_gate(n0 + 1u, o, a1); store_gate(n0 + 2u, o, a2);
            store_gate(n0 + 3u, o, a3); store_gate(n0 + 4u, o, a4); store_gate(n0 + 5u, o, a5);
            store_gate(n0 + 6u, o, a6); store_gate(n0 + 7u, o, a7);
        }
    }
}
