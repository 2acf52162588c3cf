//! Fully connected layer: `y = x w^T + b` on [N, in] rows, run as the 1x1 convolution it is
//! (`conv_gemm.rs`), or when small by kernels of its own (`shaders/linear.wgsl`). Also the
//! router's 1x1 projections, whose torch weights are [out, in, 1, 1] with the same layout.

use anyhow::Result;

use super::conv2d::{Conv2d, Conv2dConfig, Conv2dShape, OutputActivation};
use super::{Bound, Forward, GradTarget, Grads, Mode, Op, accumulate_flag};
use crate::gpu::{Dispatch, Entry, Gpu, GpuSlice, grid};
use crate::graph::{Graph, TensorId, shape_error};

/// Multiply-adds up to which a layer runs the row kernels of `linear.wgsl`, one dispatch per
/// pass and `ROWS` results per invocation: below it the GEMM's channels-last copies, weight packing
/// and partial sums cost more than the product itself (a router's projections at training
/// batch sizes take eleven dispatches that way).
pub const ROWS_MAX_MACS: usize = 1 << 20;
/// The same for the row kernels' subgroup forms (`linear_subgroup.wgsl`: features in fours on
/// an adapter with subgroups), whose loads cost an eighth as much: on lavapipe they run a
/// ConvNeXt router's 3072 -> 128 projection at batch 16 (6.3 M multiply-adds) in less time
/// than the GEMM's copies and dispatches take.
pub const SHARED_ROWS_MAX_MACS: usize = 8 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub has_bias: bool,
    /// Applied as results are stored (eval-only: such a layer has no backward pass).
    pub activation: OutputActivation,
}

impl Linear {
    /// The same product as a 1x1 convolution over [N, in, 1, 1]: x, weight, bias and y have
    /// the same layout either way, so the layer runs the convolution's GEMM kernels (register
    /// tiles with shared weight loads) instead of kernels of its own.
    fn conv(&self) -> Conv2d {
        let shape = Conv2dShape::new(
            &[self.batch, self.in_features, 1, 1],
            &[self.out_features, self.in_features, 1, 1],
            Conv2dConfig::new(1, 0),
        )
        .expect("a 1x1 convolution fits any [N, in] x [out, in] product");
        Conv2d::plain(shape, self.has_bias, self.activation)
    }

    /// Whether the layer runs the row kernels rather than the GEMM on an adapter with or without
    /// `subgroups` ([`ROWS_MAX_MACS`], [`SHARED_ROWS_MAX_MACS`]).
    pub fn runs_rows(&self, subgroups: bool) -> bool {
        let shared = subgroups && self.in_features.is_multiple_of(4) && self.out_features.is_multiple_of(4);
        let limit = if shared { SHARED_ROWS_MAX_MACS } else { ROWS_MAX_MACS };
        // (A block of ROWS rows per workgroup along y, which holds at most 65535.)
        self.batch * self.in_features * self.out_features <= limit && self.batch.max(self.out_features) <= ROWS * 65535
    }

    fn params(&self, accumulate: u32) -> LinearParams {
        let u = |v: usize| v as u32;
        LinearParams {
            batch: u(self.batch),
            in_features: u(self.in_features),
            out_features: u(self.out_features),
            has_bias: self.has_bias as u32,
            accumulate,
        }
    }
}

/// Results per invocation of the row kernels (`ROWS` in linear.wgsl), and their lanes per
/// workgroup.
const ROWS: usize = 8;
const ROWS_WORKGROUP: usize = 64;

/// Workgroups of the row kernels: lanes along `lanes` (x) by blocks of `ROWS` along `rows` (y).
fn rows_grid(lanes: usize, rows: usize) -> [u32; 3] {
    [lanes.div_ceil(ROWS_WORKGROUP) as u32, rows.div_ceil(ROWS) as u32, 1]
}

/// Mirrors `LinearParams` in linear.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearParams {
    batch: u32,
    in_features: u32,
    out_features: u32,
    has_bias: u32,
    accumulate: u32,
}

// Inputs: x, weight[, bias]. Output: y.
impl Op for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn macs(&self) -> u64 {
        (self.batch * self.in_features * self.out_features) as u64
    }

    fn scratch(&self, backward: bool) -> Vec<usize> {
        // Sized before the adapter is known: the GEMM's wherever some adapter runs it.
        if self.runs_rows(false) { Vec::new() } else { self.conv().scratch(backward) }
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        if !self.runs_rows(gpu.subgroups) {
            return self.conv().forward(gpu, b, mode);
        }
        // Without a bias the binding is not read: any buffer does.
        let buffers = [b.inputs[0], b.inputs[1], b.inputs[b.inputs.len() - 1], b.outputs[0]];
        vec![self.forward_rows(gpu, buffers, gpu.subgroups)]
    }

    fn split_forward(&self, gpu: &Gpu, b: &Bound, mode: Mode, fixed: &[bool]) -> Forward {
        if self.runs_rows(gpu.subgroups) {
            // Nothing to prepare: the row kernels read the weight as it is.
            return Forward { prepare: Vec::new(), run: self.forward(gpu, b, mode) };
        }
        self.conv().split_forward(gpu, b, mode, fixed)
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, mode: Mode) -> Vec<Dispatch> {
        assert_eq!(self.activation, OutputActivation::None, "a linear layer with a fused activation is eval-only");
        if !self.runs_rows(gpu.subgroups) {
            return self.conv().backward(gpu, b, grads, mode);
        }
        let targets = [0, 1, 2].map(|i| grads.inputs.get(i).copied().flatten());
        self.backward_rows(gpu, [b.inputs[0], b.inputs[1], grads.outputs[0]], targets, gpu.subgroups)
    }
}

impl Linear {
    /// The row kernels' forward pass over [x, weight, bias, y]. With `subgroups` (an adapter
    /// whose subgroups have at least eight lanes), a layer whose inputs come in fours runs
    /// linear_subgroup.wgsl's kernel, which shares the samples' loads by broadcast and sums
    /// the same terms in the same order.
    pub fn forward_rows(&self, gpu: &Gpu, buffers: [&GpuSlice; 4], subgroups: bool) -> Dispatch {
        let workgroups = rows_grid(self.out_features, self.batch);
        let entry = |name| Entry::activating(name, self.activation);
        if subgroups && self.in_features.is_multiple_of(4) {
            // x and the weight through textures where the device reads streams so.
            let entries = ["linear_forward_quads", "linear_forward_quads_textured"].map(entry);
            let sources = [buffers[0], buffers[1]];
            return gpu.dispatch_streaming(
                None,
                "linear_subgroup",
                entries,
                &self.params(0),
                &buffers,
                &sources,
                workgroups,
            );
        }
        gpu.dispatch("linear", entry("linear_forward"), &self.params(0), &buffers, workgroups)
    }

    /// The row kernels' backward pass from [x, weight, dy] into the targets of dx, dweight and
    /// dbias (each where wanted), with linear_subgroup.wgsl's kernels where `subgroups` and
    /// the summed axis comes in fours ([`Linear::forward_rows`]).
    pub fn backward_rows(
        &self,
        gpu: &Gpu,
        [x, w, dy]: [&GpuSlice; 3],
        [dx, dw, db]: [Option<GradTarget>; 3],
        subgroups: bool,
    ) -> Vec<Dispatch> {
        let input_quads = subgroups && self.out_features.is_multiple_of(4);
        let weight_quads = subgroups && self.in_features.is_multiple_of(4);
        // The subgroup kernels read their factors through textures where the device reads
        // streams so ([`Gpu::dispatch_streaming`]: `[storage entry, textured twin]`); the row
        // kernels have no twin and read no textures.
        let input_kernel = match input_quads {
            true => ("linear_subgroup", ["linear_backward_input_quads", "linear_backward_input_quads_textured"]),
            false => ("linear", ["linear_backward_input"; 2]),
        };
        let (weight_kernel, weight_lanes) = match weight_quads {
            true => (
                ("linear_subgroup", ["linear_backward_weight_quads", "linear_backward_weight_quads_textured"]),
                self.in_features / 4,
            ),
            false => (("linear", ["linear_backward_weight"; 2]), self.in_features),
        };
        // (target, the other factor, (family, entries), workgroups)
        let passes = [
            (dx, w, input_kernel, rows_grid(self.in_features, self.batch)),
            (dw, x, weight_kernel, rows_grid(weight_lanes, self.out_features)),
            (db, dy, ("linear", ["linear_backward_bias"; 2]), grid(self.out_features)),
        ];
        passes
            .into_iter()
            .filter_map(|(target, other, (family, entries), workgroups)| {
                let target = target?;
                let params = self.params(accumulate_flag(&target));
                let sources: &[&GpuSlice] = if entries[0] == entries[1] { &[] } else { &[dy, other] };
                let buffers = [dy, other, target.slice];
                Some(gpu.dispatch_streaming(None, family, entries, &params, &buffers, sources, workgroups))
            })
            .collect()
    }
}

impl Graph {
    /// `x` [N, in] times `weight` [out, in] (or [out, in, 1, 1]) plus `bias` [out].
    pub fn linear(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        self.linear_fused(x, weight, bias, OutputActivation::None)
    }

    /// `activation(linear(x, weight, bias))` in one op, for eval-only graphs.
    pub fn linear_fused(
        &mut self,
        x: TensorId,
        weight: TensorId,
        bias: Option<TensorId>,
        activation: OutputActivation,
    ) -> Result<TensorId> {
        let &[batch, in_features] = self.shape(x) else {
            return Err(shape_error("linear", "input", self.shape(x), "[N, in]"));
        };
        let wshape = self.shape(weight);
        let out_features = wshape[0];
        if wshape.len() < 2 || wshape[1] != in_features || wshape[2..].iter().any(|&d| d != 1) {
            return Err(shape_error("linear", "weight", wshape, &format!("[out, {in_features}]")));
        }
        let mut inputs = vec![x, weight];
        if let Some(b) = bias {
            if self.shape(b) != [out_features] {
                return Err(shape_error("linear", "bias", self.shape(b), &format!("[{out_features}]")));
            }
            inputs.push(b);
        }
        let op = Linear { batch, in_features, out_features, has_bias: bias.is_some(), activation };
        Ok(self.push(op, &inputs, &[vec![batch, out_features]])[0])
    }
}
