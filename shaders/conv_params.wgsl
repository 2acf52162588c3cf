// The parameter struct of every convolution kernel (conv.wgsl, conv_gemm.wgsl), mirrored by
// `ConvParams` in src/ops/conv2d.rs.

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
}
