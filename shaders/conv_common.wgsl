// What the convolution families conv.wgsl and depthwise.wgsl share: the parameter struct,
// mirrored by `ConvParams` in src/ops/conv2d.rs, the 8-wide pixel tiles that depthwise holds in
// two vec4s, and the workgroup sum of the reductions over a batch.

struct ConvParams {
    batch: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    groups: u32,
    has_bias: u32,
    accumulate: u32,
    // Reductions over the batch's pixels (a bias gradient) split into `chunks` of `chunk_len`,
    // each summed by one workgroup; with more than one, the chunks' partial sums go to a
    // scratch buffer and a second kernel adds them in order. Depthwise row kernels: parts of
    // `chunk_len` batch-wide rows.
    chunks: u32,
    chunk_len: u32,
    // Depthwise row kernels: the weights turned by 180 degrees (an input gradient).
    flip: u32,
}

// Lanes of the workgroups that reduce one chunk (each dispatched as one workgroup per chunk).
const REDUCE: u32 = 64u;

var<workgroup> partial: array<f32, REDUCE>;

// The sum of every lane's `value`, in a fixed tree order (all lanes must call it).
fn workgroup_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = REDUCE / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// Pixels (or reduction indices) per invocation tile (src/ops/conv2d.rs `GEMM_PIXELS`,
// `DEPTHWISE_PIXELS`).
const PIXELS: u32 = 8u;

// Indices first .. first + 3 and first + 4 .. first + 7 of a tile, clamped to count - 1 so
// that loads past the end stay in bounds (their results are never stored).
fn tile_lo(first: u32, count: u32) -> vec4<u32> {
    return min(vec4<u32>(0u, 1u, 2u, 3u) + first, vec4<u32>(count - 1u));
}

fn tile_hi(first: u32, count: u32) -> vec4<u32> {
    return min(vec4<u32>(4u, 5u, 6u, 7u) + first, vec4<u32>(count - 1u));
}

// The gathered values where `inside`, zero elsewhere (padding).
fn masked(v: vec4<f32>, inside: vec4<bool>) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, inside);
}
