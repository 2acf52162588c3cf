//! 2-D convolution: stride, zero padding, groups, optional bias.
//!
//! Three kernel families, chosen by shape alone (so the choice never changes within a run):
//! ungrouped convolutions run as implicit GEMM with register tiles over channels-last copies
//! (`shaders/conv_tile.wgsl`, planned in `conv_gemm.rs`), depthwise ones (one filter per
//! channel) run `shaders/depthwise.wgsl`, other grouped ones the direct kernels of
//! `shaders/conv.wgsl`.

use anyhow::{Result, bail};

use super::conv_gemm::{ChildPacking, GemmPlan};
use super::{Bound, Forward, Grads, Mode, Op, accumulate_flag, placeholder};
pub use crate::gpu::OutputActivation;
use crate::gpu::{Dispatch, Entry, Gpu, GpuSlice, grid};
use crate::graph::{Graph, TensorId, shape_error};

/// Results per invocation along each tile side (`TILE` in conv.wgsl).
const TILE: usize = 8;
/// Pixels per invocation of the depthwise kernels (depthwise.wgsl).
const DEPTHWISE_PIXELS: usize = 8;
/// Batch-wide pixels per chunk of the reduction over a batch of a bias gradient: one workgroup
/// sums each chunk, so a large batch of large maps still spreads over a GPU, and a small one
/// (up to this many) is one workgroup's sum with no second pass.
const REDUCTION_CHUNK: usize = 16384;
/// The widest kernel side of a depthwise convolution on its own kernels (`MAX_KERNEL` in
/// depthwise.wgsl: the row kernels keep a window of the kernel's inputs per lane).
const DEPTHWISE_MAX_KERNEL: usize = 7;
/// Invocations to aim for in a depthwise row kernel (channels x parts of the batch's rows),
/// so that a layer with few channels still spreads over the adapter.
const DEPTHWISE_TARGET_INVOCATIONS: usize = 8192;
/// Most floats the row weight gradient's partial sums may take.
const DEPTHWISE_MAX_PARTIAL_FLOATS: usize = 16 << 20;

/// What a GEMM convolution's forward pass fuses: a gate on its input channels ([N, C_in], a
/// router's `channel_scale`) applied as the input is copied, and, as results are stored, a
/// residual add (laid out as the output), then an activation. Inference folding fuses a gate,
/// an add and a relu next to a conv this way; the values are those of the separate ops. `T`
/// is a graph's `TensorId` (`Graph::conv2d_fused`, eval-only) or the bound buffers.
#[derive(Clone, Copy, Debug)]
pub struct Fusion<T> {
    pub gate: Option<T>,
    pub residual: Option<T>,
    pub activation: OutputActivation,
}

impl<T> Default for Fusion<T> {
    fn default() -> Self {
        Fusion { gate: None, residual: None, activation: OutputActivation::None }
    }
}

/// Which kernels compute a convolution (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    Gemm,
    Depthwise,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub groups: usize,
}

impl Conv2dConfig {
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dConfig { stride: (stride, stride), padding: (padding, padding), groups: 1 }
    }

    pub fn groups(self, groups: usize) -> Self {
        Conv2dConfig { groups, ..self }
    }
}

/// Every size a convolution needs, checked once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cfg: Conv2dConfig,
}

impl Conv2dShape {
    /// `x`: [N, C_in, H, W]; `weight`: [C_out, C_in / groups, kh, kw], or a linear layer's
    /// [C_out, C_in] as a 1x1 kernel (the same values in the same order: a pointwise layer
    /// applied to every position, as ConvNeXt's channels-last Linear layers are).
    pub fn new(x: &[usize], weight: &[usize], cfg: Conv2dConfig) -> Result<Self> {
        let &[batch, c_in, h, w] = x else {
            return Err(shape_error("conv2d", "input", x, "[N, C, H, W]"));
        };
        let (c_out, cin_g, kernel_h, kernel_w) = match *weight {
            [o, i, kh, kw] => (o, i, kh, kw),
            [o, i] => (o, i, 1, 1),
            _ => return Err(shape_error("conv2d", "weight", weight, "[C_out, C_in/groups, kh, kw]")),
        };
        let g = cfg.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 || cin_g != c_in / g {
            bail!("conv2d: groups {g} do not fit input channels {c_in}, weight {weight:?}");
        }
        if cfg.stride.0 == 0 || cfg.stride.1 == 0 {
            bail!("conv2d: stride must be at least 1");
        }
        let (ph, pw) = cfg.padding;
        if h + 2 * ph < kernel_h || w + 2 * pw < kernel_w {
            bail!("conv2d: kernel {kernel_h}x{kernel_w} is larger than the padded input {h}x{w} (+{ph},{pw})");
        }
        let out_h = (h + 2 * ph - kernel_h) / cfg.stride.0 + 1;
        let out_w = (w + 2 * pw - kernel_w) / cfg.stride.1 + 1;
        Ok(Conv2dShape { batch, c_in, h, w, c_out, kernel_h, kernel_w, out_h, out_w, cfg })
    }

    pub fn output(&self) -> Vec<usize> {
        vec![self.batch, self.c_out, self.out_h, self.out_w]
    }

    pub fn weight(&self) -> Vec<usize> {
        vec![self.c_out, self.c_in / self.cfg.groups, self.kernel_h, self.kernel_w]
    }

    /// The kernel family that runs this shape.
    pub fn kernel(&self) -> ConvKernel {
        if self.cfg.groups == 1 {
            ConvKernel::Gemm
        } else if self.cfg.groups == self.c_in
            && self.c_in == self.c_out
            && self.kernel_h.max(self.kernel_w) <= DEPTHWISE_MAX_KERNEL
            // A GPU's weight gradient runs a workgroup per (channel, tap) along one grid axis.
            && self.c_out * self.kernel_h * self.kernel_w <= 65535
        {
            ConvKernel::Depthwise
        } else {
            ConvKernel::Direct
        }
    }

    /// Weights per output channel (the GEMM reduction length).
    fn k_len(&self) -> usize {
        self.c_in / self.cfg.groups * self.kernel_h * self.kernel_w
    }

    /// Floating-point operations of the forward pass (2 per multiply-add).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.c_out * self.out_h * self.out_w) as f64
            * (self.c_in / self.cfg.groups * self.kernel_h * self.kernel_w) as f64
    }

    fn params(&self, has_bias: bool, accumulate: u32) -> ConvParams {
        let u = |v: usize| v as u32;
        ConvParams {
            batch: u(self.batch),
            c_in: u(self.c_in),
            h: u(self.h),
            w: u(self.w),
            c_out: u(self.c_out),
            out_h: u(self.out_h),
            out_w: u(self.out_w),
            kernel_h: u(self.kernel_h),
            kernel_w: u(self.kernel_w),
            stride_h: u(self.cfg.stride.0),
            stride_w: u(self.cfg.stride.1),
            pad_h: u(self.cfg.padding.0),
            pad_w: u(self.cfg.padding.1),
            groups: u(self.cfg.groups),
            has_bias: has_bias as u32,
            accumulate,
            chunks: u(self.reduction_chunks()),
            chunk_len: u(REDUCTION_CHUNK),
            flip: 0,
        }
    }

    /// Chunks of the reductions over the batch's output pixels (shape alone decides them, so
    /// the order of every sum is fixed).
    fn reduction_chunks(&self) -> usize {
        (self.batch * self.out_h * self.out_w).div_ceil(REDUCTION_CHUNK).max(1)
    }

    /// A depthwise weight gradient's split of the batch's output rows: (parts, rows per part).
    fn depthwise_weight_parts(&self) -> (usize, usize) {
        let max_parts = DEPTHWISE_MAX_PARTIAL_FLOATS / (self.c_out * self.kernel_h * self.kernel_w);
        depthwise_parts(self.batch * self.out_h, self.c_out, max_parts)
    }

    /// Whether the depthwise row kernels run their 3x3 versions (`depthwise_rows_3x3`,
    /// `depthwise_weight_rows_3x3`): 3x3 kernels with column strides of 1 or 2 (the input
    /// gradient runs at stride 1).
    fn depthwise_rows_3x3(&self) -> bool {
        matches!((self.kernel_h, self.kernel_w, self.cfg.stride.1), (3, 3, 1 | 2))
    }

    /// The row kernel of a depthwise forward pass or stride-1 input gradient (`params`, over
    /// `[input, weight, bias, output]`; `activation` applied as it stores). 7x7 kernels at
    /// column stride 1 (ConvNeXt's) take `depthwise_rows_7x7` (or its flipped twin for an input
    /// gradient), whose window is named values rather than an array. On a device that
    /// reads streams through textures, 3x3 rows that come in fours (widths in and out multiples
    /// of four, column padding 1) take
    /// `depthwise_rows_3x3_*quads_textured` (one per column stride, and one for the flipped
    /// weights of an input gradient): the input through a texture, four outputs at once.
    fn depthwise_rows_dispatch(
        &self,
        gpu: &Gpu,
        params: &ConvParams,
        activation: OutputActivation,
        buffers: [&GpuSlice; 4],
        invocations: [u32; 3],
    ) -> Dispatch {
        let p = params;
        let entry = |name| Entry::activating(name, activation);
        if (self.kernel_h, self.kernel_w, p.stride_w) == (7, 7, 1) {
            let name = if p.flip != 0 { "depthwise_rows_7x7_flipped" } else { "depthwise_rows_7x7" };
            return gpu.dispatch("depthwise", entry(name), p, &buffers, invocations);
        }
        if !self.depthwise_rows_3x3() {
            return gpu.dispatch("depthwise", entry("depthwise_rows"), p, &buffers, invocations);
        }
        let quads = p.pad_w == 1 && p.w.is_multiple_of(4) && p.out_w.is_multiple_of(4);
        if !quads {
            return gpu.dispatch("depthwise", entry("depthwise_rows_3x3"), p, &buffers, invocations);
        }
        let textured = match (p.stride_w, p.flip != 0) {
            (1, false) => "depthwise_rows_3x3_quads_textured",
            (2, false) => "depthwise_rows_3x3_s2_quads_textured",
            (1, true) => "depthwise_rows_3x3_flipped_quads_textured",
            _ => return gpu.dispatch("depthwise", entry("depthwise_rows_3x3"), p, &buffers, invocations),
        };
        let entries = [entry("depthwise_rows_3x3"), entry(textured)];
        gpu.dispatch_streaming(None, "depthwise", entries, p, &buffers, &[buffers[0]], invocations)
    }

    /// Whether `depthwise_backward_input_s2` computes the input gradient: a 3x3 kernel at
    /// stride 2 with padding 1.
    fn depthwise_input_s2(&self) -> bool {
        (self.kernel_h, self.kernel_w, self.cfg.stride, self.cfg.padding) == (3, 3, (2, 2), (1, 1))
    }

    /// The parameters of `depthwise_rows` for the forward pass.
    fn depthwise_forward_params(&self, has_bias: bool) -> ConvParams {
        let (parts, per_part) = depthwise_parts(self.batch * self.out_h, self.c_out, usize::MAX);
        ConvParams { chunks: parts as u32, chunk_len: per_part as u32, ..self.params(has_bias, 0) }
    }

    /// The parameters of `depthwise_rows` for the input gradient: a stride-1 convolution of dy
    /// padded by kernel - 1 - pad with the weights turned, or `None` where that does not hold.
    fn depthwise_input_params(&self, accumulate: u32) -> Option<ConvParams> {
        let (pad, k) = (self.cfg.padding, (self.kernel_h, self.kernel_w));
        if self.cfg.stride != (1, 1) || pad.0 >= k.0 || pad.1 >= k.1 {
            return None;
        }
        let (parts, per_part) = depthwise_parts(self.batch * self.h, self.c_in, usize::MAX);
        let u = |v: usize| v as u32;
        Some(ConvParams {
            h: u(self.out_h),
            w: u(self.out_w),
            out_h: u(self.h),
            out_w: u(self.w),
            pad_h: u(k.0 - 1 - pad.0),
            pad_w: u(k.1 - 1 - pad.1),
            chunks: u(parts),
            chunk_len: u(per_part),
            flip: 1,
            ..self.params(false, accumulate)
        })
    }
}

/// `rows` batch-wide rows of `channels` channels split in parts for one invocation each (at
/// most `max_parts`): (parts, rows per part), from the shape alone.
fn depthwise_parts(rows: usize, channels: usize, max_parts: usize) -> (usize, usize) {
    let parts = DEPTHWISE_TARGET_INVOCATIONS.div_ceil(channels).min(max_parts).clamp(1, rows);
    let per_part = rows.div_ceil(parts);
    (rows.div_ceil(per_part), per_part)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
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
    chunks: u32,
    chunk_len: u32,
    flip: u32,
}

/// Graph node: inputs `[x, weight]`, then `bias`, `residual` and `gate` where present, then
/// with `child` the child's parent and attentions, then with `gates_input` the router's input
/// and gate, then with `shared_packing` the buffer of a KernelDNA parent's packings, then with
/// `dw_to_buffer` the buffer its weight gradient goes to; output `[y]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub shape: Conv2dShape,
    pub has_bias: bool,
    /// A residual input added to the output as it is stored (GEMM convolutions), then the
    /// activation applied. Eval only: such a conv has no backward pass.
    pub has_residual: bool,
    /// A gate [N, C_in] on the input's channels (eval-only), the input after bias and residual.
    pub has_gate: bool,
    pub activation: OutputActivation,
    /// The weight is KernelDNA child `row` (an attention row), which the forward pass packs
    /// straight from its parent, read from the inputs that follow the others: parent, spatial
    /// attention, filter attention ([`crate::graph::fuse`]; GEMM convolutions whose plan
    /// [`GemmPlan::packs_child`]). The weight input is still the child: its gradient goes
    /// there, and the modulation's backward pass takes it on to the parent and attentions.
    pub child: Option<usize>,
    /// Input x is a router's `channel_scale` output, which the forward pass computes as it
    /// copies the input, from the router's input and gate (the last two inputs;
    /// [`crate::graph::fuse`]). Unlike `has_gate` it trains: x stays the input whose gradient
    /// this conv writes, and the router's backward pass takes it from there.
    pub gates_input: bool,
    /// The weight gradient is left as the GEMM's passes sum it, unreduced, for a consumer that
    /// reads that layout (a KernelDNA child's modulation: [`GemmPlan::unreduced_weight_gradient`],
    /// [`crate::graph::fuse`]).
    pub dw_unreduced: bool,
    /// The weight gradient goes, unreduced, into the last input (a buffer that the weight's
    /// modulation reads as the start of the parent's gradient: [`crate::graph::fuse`]) rather
    /// than into the weight's gradient, which the modulation then writes whole.
    pub dw_to_buffer: bool,
    /// The kernel's columns are folded into the input channels ([`GemmPlan::folding_columns`]:
    /// a stem over 3 channels; [`crate::graph::fuse`]). Only where x has no gradient.
    pub fold_columns: bool,
    /// A KernelDNA parent's packings, shared by its own convolution and its children's
    /// ([`crate::graph::fuse`]; [`GemmPlan::runs_child_over_parent_packing`]), in an input
    /// buffer rather than the scratch.
    pub shared_packing: Option<SharedPacking>,
}

/// What a convolution does with the packings it shares ([`Conv2d::shared_packing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedPacking {
    /// The parent's own convolution packs its weight there.
    Writes,
    /// A child's convolution (with `child`) runs over them, packing nothing
    /// ([`ChildPacking::parent_packed`]).
    Reads,
}

impl Conv2d {
    /// The convolution of `shape` alone: a bias where `has_bias`, `activation` applied as it
    /// stores, and nothing else fused or left for a consumer.
    pub fn plain(shape: Conv2dShape, has_bias: bool, activation: OutputActivation) -> Conv2d {
        Conv2d {
            shape,
            has_bias,
            has_residual: false,
            has_gate: false,
            activation,
            child: None,
            gates_input: false,
            dw_unreduced: false,
            dw_to_buffer: false,
            fold_columns: false,
            shared_packing: None,
        }
    }

    /// Where the child's parent, spatial and filter attentions begin among the inputs.
    pub(crate) fn child_inputs(&self) -> usize {
        2 + self.has_bias as usize + self.has_residual as usize + self.has_gate as usize
    }

    /// The GEMM plan on `gpu`.
    fn plan(&self, gpu: &Gpu) -> GemmPlan {
        match self.fold_columns {
            true => GemmPlan::folding_columns(&self.shape, gpu),
            false => GemmPlan::for_device(&self.shape, gpu),
        }
    }

    /// Where the router's input and gate are among the inputs (with `gates_input`).
    fn router_inputs(&self) -> usize {
        self.child_inputs() + 3 * self.child.is_some() as usize
    }

    /// Where the shared packings' buffer is among the inputs (with `shared_packing`).
    pub fn shared_packing_input(&self) -> usize {
        self.router_inputs() + 2 * self.gates_input as usize
    }

    /// The GEMM plan's scratch as this convolution binds it: with `shared_packing`, the
    /// packings those in the shared buffer.
    fn gemm_scratch<'a>(&self, b: &Bound<'a>) -> Vec<GpuSlice> {
        match self.shared_packing {
            Some(_) => GemmPlan::with_shared_packing(&self.shape, &b.scratch, b.inputs[self.shared_packing_input()]),
            None => b.scratch.iter().map(|&s| s.clone()).collect(),
        }
    }

    /// The child's attentions (with `child`), read from the inputs.
    fn child_packing<'a>(&self, b: &Bound<'a>) -> Option<ChildPacking<'a>> {
        let first = self.child_inputs();
        self.child.map(|row| ChildPacking {
            spatial: b.inputs[first + 1],
            filter: b.inputs[first + 2],
            row,
            parent_packed: self.shared_packing == Some(SharedPacking::Reads),
        })
    }
}

impl Op for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn macs(&self) -> u64 {
        (self.shape.flops() / 2.0) as u64
    }

    /// A child's parent and attentions are differentiated by the modulation, a router's input
    /// and gate by the router, not here.
    fn differentiable(&self, input: usize) -> bool {
        input < self.child_inputs()
    }

    fn taps_read(&self, input: usize) -> Option<u32> {
        (input == 1 && self.shape.kernel() == ConvKernel::Gemm)
            .then(|| GemmPlan::new(&self.shape).taps_read())
            .flatten()
    }

    /// The GEMM plan's buffers; with a backward pass, then the partial sums of a depthwise
    /// weight gradient, then those of the bias gradient.
    fn scratch(&self, backward: bool) -> Vec<usize> {
        let s = &self.shape;
        let mut sizes = match s.kernel() {
            ConvKernel::Gemm => {
                let folded = GemmPlan::folded_shape(s).filter(|_| self.fold_columns);
                let sizes = GemmPlan::scratch_for_any_device(&folded.unwrap_or(*s), backward);
                // Shared packings are bound from their buffer instead.
                if self.shared_packing.is_some() { GemmPlan::without_packings(sizes) } else { sizes }
            }
            _ => Vec::new(),
        };
        if backward {
            let chunks = s.reduction_chunks();
            if s.kernel() == ConvKernel::Depthwise {
                // Either family's partial sums (the device is not known yet).
                let parts = s.depthwise_weight_parts().0.max(chunks);
                sizes.push(s.c_out * s.kernel_h * s.kernel_w * parts);
            }
            if self.has_bias {
                sizes.push(s.c_out * chunks);
            }
        }
        sizes
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        let Forward { prepare, run } = self.split_forward(gpu, b, mode, &[]);
        prepare.into_iter().chain(run).collect()
    }

    /// A GEMM convolution over a fixed weight packs it once (its blocks stay in the scratch).
    fn split_forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode, fixed: &[bool]) -> Forward {
        let s = &self.shape;
        let g = s.cfg.groups;
        let none = placeholder(gpu);
        let bias = if self.has_bias { b.inputs[2] } else { &none };
        let params = s.params(self.has_bias, 0);
        let pixels = s.out_h * s.out_w;
        let buffers = [b.inputs[0], b.inputs[1], bias, b.outputs[0]];
        let run = match s.kernel() {
            ConvKernel::Gemm => {
                let plan = self.plan(gpu);
                let residual = self.has_residual.then(|| b.inputs[2 + self.has_bias as usize]);
                let mut gate = self.has_gate.then(|| b.inputs[self.child_inputs() - 1]);
                let mut buffers = buffers;
                if self.gates_input {
                    // The copy gates the router's input itself.
                    let router = self.router_inputs();
                    (buffers[0], gate) = (b.inputs[router], Some(b.inputs[router + 1]));
                }
                let fusion = Fusion { gate, residual, activation: self.activation };
                let first = self.child_inputs();
                let child = self.child_packing(b);
                // A child is packed from its parent, bound as the weight.
                if child.is_some() {
                    buffers[1] = b.inputs[first];
                }
                let scratch = self.gemm_scratch(b);
                let scratch: Vec<&GpuSlice> = scratch.iter().collect();
                let Forward { prepare, run } = plan.forward(gpu, buffers, self.has_bias, fusion, child, &scratch);
                let packed_from = if child.is_some() { first..first + 3 } else { 1..2 };
                if fixed.get(packed_from).is_some_and(|f| f.iter().all(|&f| f)) {
                    return Forward { prepare, run };
                }
                // A weight that changes between runs is packed in every run.
                prepare.into_iter().chain(run).collect()
            }
            ConvKernel::Depthwise if gpu.depthwise_rows => {
                let params = s.depthwise_forward_params(self.has_bias);
                let invocations = grid((s.c_out * params.chunks as usize).max(1));
                vec![s.depthwise_rows_dispatch(gpu, &params, self.activation, buffers, invocations)]
            }
            ConvKernel::Depthwise => {
                let tiles = s.batch * s.c_out * pixels.div_ceil(DEPTHWISE_PIXELS);
                let entry = Entry::activating("depthwise_forward", self.activation);
                vec![gpu.dispatch("depthwise", entry, &params, &buffers, grid(tiles))]
            }
            ConvKernel::Direct => {
                let tiles = s.batch * g * (s.c_out / g).div_ceil(TILE) * pixels.div_ceil(TILE);
                let entry = Entry::activating("conv2d_forward", self.activation);
                vec![gpu.dispatch("conv", entry, &params, &buffers, grid(tiles))]
            }
        };
        Forward { prepare: Vec::new(), run }
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let fused = self.has_gate || self.has_residual || self.activation != OutputActivation::None;
        assert!(!fused, "a conv with a fused gate, residual or activation is eval-only");
        let s = &self.shape;
        let g = s.cfg.groups;
        let dy = grads.outputs[0];
        let mut out = Vec::new();
        if let Some(dx) = grads.inputs[0] {
            let params = s.params(self.has_bias, accumulate_flag(&dx));
            let pixels = s.h * s.w;
            match s.kernel() {
                ConvKernel::Gemm => {
                    let buffers = [dy, b.inputs[1], dx.slice];
                    let scratch = self.gemm_scratch(b);
                    let scratch: Vec<&GpuSlice> = scratch.iter().collect();
                    let child = self.child_packing(b);
                    out.extend(self.plan(gpu).backward_input(gpu, buffers, dx.accumulate, child, &scratch));
                }
                ConvKernel::Depthwise => match s
                    .depthwise_input_params(params.accumulate)
                    .filter(|_| gpu.depthwise_rows)
                {
                    Some(rows) => {
                        // The bias binding is read only with a bias: any buffer does.
                        let buffers = [dy, b.inputs[1], dy, dx.slice];
                        let invocations = grid(s.c_in * rows.chunks as usize);
                        let none = OutputActivation::None;
                        out.push(s.depthwise_rows_dispatch(gpu, &rows, none, buffers, invocations));
                    }
                    None if gpu.depthwise_rows && s.depthwise_input_s2() => {
                        let (parts, per_part) = depthwise_parts(s.batch * s.h, s.c_in, usize::MAX);
                        let params = ConvParams { chunks: parts as u32, chunk_len: per_part as u32, ..params };
                        let buffers = [dy, b.inputs[1], dx.slice];
                        let invocations = grid(s.c_in * parts);
                        out.push(gpu.dispatch(
                            "depthwise",
                            "depthwise_backward_input_s2",
                            &params,
                            &buffers,
                            invocations,
                        ));
                    }
                    None => {
                        let tiles = s.batch * s.c_in * pixels.div_ceil(DEPTHWISE_PIXELS);
                        let buffers = [dy, b.inputs[1], dx.slice];
                        out.push(gpu.dispatch("depthwise", "depthwise_backward_input", &params, &buffers, grid(tiles)));
                    }
                },
                ConvKernel::Direct => {
                    let tiles = s.batch * g * (s.c_in / g).div_ceil(TILE) * pixels.div_ceil(TILE);
                    let buffers = [dy, b.inputs[1], dx.slice];
                    out.push(gpu.dispatch("conv", "conv2d_backward_input", &params, &buffers, grid(tiles)));
                }
            }
        }
        if let Some(dw) = grads.inputs[1] {
            let params = s.params(self.has_bias, accumulate_flag(&dw));
            let buffers = [b.inputs[0], dy, dw.slice];
            match s.kernel() {
                ConvKernel::Gemm => {
                    let plan = self.plan(gpu);
                    let unreduced = self.dw_unreduced || self.dw_to_buffer;
                    let target = if self.dw_to_buffer { b.inputs[b.inputs.len() - 1] } else { dw.slice };
                    // The input gradient above copied dy, where there is one.
                    let dy_copied = grads.inputs[0].is_some();
                    let buffers = [dy, target];
                    out.extend(plan.backward_weight(gpu, buffers, dw.accumulate, unreduced, dy_copied, &b.scratch));
                }
                ConvKernel::Depthwise => {
                    let partials = b.scratch[b.scratch.len() - 1 - self.has_bias as usize];
                    out.extend(if gpu.depthwise_rows {
                        // One invocation per (part of the batch's rows, channel).
                        let (parts, per_part) = s.depthwise_weight_parts();
                        let params = ConvParams { chunks: parts as u32, chunk_len: per_part as u32, ..params };
                        let entry = match (s.kernel_h, s.kernel_w, s.cfg.stride.1) {
                            (7, 7, 1) => "depthwise_weight_rows_7x7",
                            _ if s.depthwise_rows_3x3() => "depthwise_weight_rows_3x3",
                            _ => "depthwise_weight_rows",
                        };
                        let invocations = grid(s.c_out * parts);
                        chunked_sum(gpu, &params, "depthwise", entry, buffers, partials, invocations)
                    } else {
                        // One workgroup per (channel, tap) and chunk.
                        let workgroups = [(s.c_out * s.kernel_h * s.kernel_w) as u32, params.chunks, 1];
                        let entry = "depthwise_backward_weight";
                        chunked_sum(gpu, &params, "depthwise", entry, buffers, partials, workgroups)
                    });
                }
                ConvKernel::Direct => {
                    let tiles = g * (s.c_out / g).div_ceil(TILE) * s.k_len().div_ceil(TILE);
                    out.push(gpu.dispatch("conv", "conv2d_backward_weight", &params, &buffers, grid(tiles)));
                }
            }
        }
        if let Some(Some(db)) = grads.inputs.get(2) {
            let params = s.params(self.has_bias, accumulate_flag(db));
            let partials = b.scratch[b.scratch.len() - 1];
            let workgroups = [s.c_out as u32, params.chunks, 1];
            // Maps whose pixels come in fours sum dy as vec4s (chunks hold whole vec4s).
            let quads = (s.out_h * s.out_w).is_multiple_of(4) && params.chunk_len.is_multiple_of(4);
            let entry = if quads { "conv2d_backward_bias_quads" } else { "conv2d_backward_bias" };
            out.extend(chunked_sum(gpu, &params, "conv", entry, [dy, db.slice], partials, workgroups));
        }
        out
    }
}

/// A reduction over the batch by `entry` (whose last buffer is its result), split in
/// `params.chunks`: written straight to the result when it is one chunk, else as partial sums
/// that `reduce_chunks` adds in chunk order.
fn chunked_sum<const N: usize>(
    gpu: &Gpu,
    params: &ConvParams,
    family: &'static str,
    entry: &'static str,
    buffers: [&GpuSlice; N],
    partials: &GpuSlice,
    workgroups: [u32; 3],
) -> Vec<Dispatch> {
    if params.chunks == 1 {
        return vec![gpu.dispatch(family, entry, params, &buffers, workgroups)];
    }
    let result = buffers[N - 1];
    let mut first = buffers;
    first[N - 1] = partials;
    vec![
        gpu.dispatch(family, entry, params, &first, workgroups),
        gpu.dispatch("conv", "reduce_chunks", params, &[partials, result], grid(result.len())),
    ]
}

impl Graph {
    /// `conv2d(x, weight, bias)` as torch.nn.functional.conv2d.
    pub fn conv2d(
        &mut self,
        x: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
        cfg: Conv2dConfig,
    ) -> Result<TensorId> {
        self.conv2d_fused(x, weight, bias, cfg, Fusion::default())
    }

    /// `activation(conv2d(x * gate, weight, bias) + residual)` in one op, for eval-only graphs
    /// (a gate and a residual only where the convolution runs as GEMM).
    pub fn conv2d_fused(
        &mut self,
        x: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
        cfg: Conv2dConfig,
        fused: Fusion<TensorId>,
    ) -> Result<TensorId> {
        let Fusion { gate, residual, activation } = fused;
        let shape = Conv2dShape::new(self.shape(x), self.shape(weight), cfg)?;
        let mut inputs = vec![x, weight];
        if let Some(b) = bias {
            if self.shape(b) != [shape.c_out] {
                return Err(shape_error("conv2d", "bias", self.shape(b), &format!("[{}]", shape.c_out)));
            }
            inputs.push(b);
        }
        let out = shape.output();
        if let Some(r) = residual {
            if self.shape(r) != out.as_slice() {
                return Err(shape_error("conv2d", "residual", self.shape(r), &format!("{out:?}")));
            }
            if shape.kernel() != ConvKernel::Gemm {
                bail!("conv2d: a fused residual needs an ungrouped convolution, not {} groups", cfg.groups);
            }
            inputs.push(r);
        }
        if let Some(gate) = gate {
            if self.shape(gate) != [shape.batch, shape.c_in] {
                let want = format!("[{}, {}]", shape.batch, shape.c_in);
                return Err(shape_error("conv2d", "gate", self.shape(gate), &want));
            }
            if shape.kernel() != ConvKernel::Gemm {
                bail!("conv2d: a fused gate needs an ungrouped convolution, not {} groups", cfg.groups);
            }
            inputs.push(gate);
        }
        let op = Conv2d {
            has_residual: residual.is_some(),
            has_gate: gate.is_some(),
            ..Conv2d::plain(shape, bias.is_some(), activation)
        };
        Ok(self.push(op, &inputs, &[out])[0])
    }
}
