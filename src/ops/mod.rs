//! The operator library: one file per op, each pairing with a family in `shaders/`.
//!
//! An op knows its shape rules (checked when it is added to a [`Graph`](crate::graph::Graph)),
//! and prepares its forward and backward dispatches over buffers the executor planned. Every
//! op has a plain-Rust twin in [`crate::reference`] that tests hold it to.

pub mod activation;
pub mod adamw;
pub mod batchnorm;
pub mod channel_scale;
pub mod conv2d;
pub mod conv_gemm;
pub mod cross_entropy;
pub mod drop_path;
pub mod layer_scale;
pub mod layernorm;
pub mod linear;
pub mod modulate;
pub mod pool;
pub mod router;
pub mod sgd;

use crate::gpu::{Dispatch, Gpu, GpuSlice};

/// Whether BatchNorm uses batch statistics (and updates running ones) or running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Buffers of one node, in the order of the node's inputs and outputs.
pub struct Bound<'a> {
    pub inputs: Vec<&'a GpuSlice>,
    pub outputs: Vec<&'a GpuSlice>,
    /// The node's own scratch buffers, sized by [`Op::scratch`].
    pub scratch: Vec<&'a GpuSlice>,
}

/// Where a gradient goes: overwrite the buffer, or add to what earlier contributors wrote.
#[derive(Clone, Copy)]
pub struct GradTarget<'a> {
    pub slice: &'a GpuSlice,
    pub accumulate: bool,
}

/// Gradient buffers of one node: the incoming gradient of each output, and the target of
/// each input's gradient (`None` where no gradient is wanted).
pub struct Grads<'a> {
    pub outputs: Vec<&'a GpuSlice>,
    pub inputs: Vec<Option<GradTarget<'a>>>,
}

/// Copying and inspecting ops behind `dyn Op` (graph rewrites such as inference folding).
/// A forward pass split by what its dispatches read.
#[derive(Default)]
pub struct Forward {
    /// Dispatches that read only fixed inputs (parameters, or values computed from parameters
    /// alone): the executor runs them once after the parameters change, not every run.
    pub prepare: Vec<Dispatch>,
    /// Dispatches of every run.
    pub run: Vec<Dispatch>,
}

pub trait OpObject {
    fn boxed_clone(&self) -> Box<dyn Op>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: Op + Clone + 'static> OpObject for T {
    fn boxed_clone(&self) -> Box<dyn Op> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

pub trait Op: OpObject + Send + Sync {
    fn name(&self) -> &'static str;

    /// Element counts of buffers the op keeps (statistics, argmax, layout copies); `backward`
    /// says whether the graph will also run the op's backward pass.
    fn scratch(&self, _backward: bool) -> Vec<usize> {
        Vec::new()
    }

    /// Whether input `i` can carry a gradient (labels and running statistics cannot).
    fn differentiable(&self, _input: usize) -> bool {
        true
    }

    /// Whether the gradient this op writes to input `i` covers the whole tensor. Ops that
    /// write part of it (a modulation using some rows of a shared attention) need the
    /// executor to clear the buffer first and then always accumulate.
    fn covers_input(&self, _input: usize) -> bool {
        true
    }

    /// The taps of input `i` (a kernel) this op reads, one bit per tap in row-major order,
    /// where it reads fewer than all (a conv leaves out taps that only ever meet padding);
    /// `None`: every element.
    fn taps_read(&self, _input: usize) -> Option<u32> {
        None
    }

    /// Told, as a consumer joins the graph, which taps of output `output` it reads (`None`:
    /// all). An op that can leave unread taps uncomputed (modulation) keeps the union.
    fn read_by(&mut self, _output: usize, _taps: Option<u32>) {}

    /// Multiply-accumulates of the forward pass for the whole batch, counted for convolutions
    /// and fully connected layers only (torchvision's convention for model tables).
    fn macs(&self) -> u64 {
        0
    }

    fn forward(&self, gpu: &Gpu, bound: &Bound, mode: Mode) -> Vec<Dispatch>;

    /// The forward pass with what depends on fixed inputs alone (`fixed[i]`: input `i` is a
    /// parameter or computed from parameters alone) set apart as [`Forward::prepare`], as a
    /// conv's weight packing or a modulation's children. Prepared values must live in the
    /// op's scratch or outputs, which nothing else writes, so they keep between runs. By
    /// default every dispatch runs every time.
    fn split_forward(&self, gpu: &Gpu, bound: &Bound, mode: Mode, _fixed: &[bool]) -> Forward {
        Forward { prepare: Vec::new(), run: self.forward(gpu, bound, mode) }
    }

    fn backward(&self, gpu: &Gpu, bound: &Bound, grads: &Grads, mode: Mode) -> Vec<Dispatch>;
}

/// The optimizer a training plan updates parameters with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(sgd::Sgd),
    AdamW(adamw::AdamW),
}

impl Optimizer {
    pub fn set_lr(&mut self, lr: f32) {
        match self {
            Optimizer::Sgd(o) => o.lr = lr,
            Optimizer::AdamW(o) => o.lr = lr,
        }
    }
}

impl From<sgd::Sgd> for Optimizer {
    fn from(o: sgd::Sgd) -> Self {
        Optimizer::Sgd(o)
    }
}

impl From<adamw::AdamW> for Optimizer {
    fn from(o: adamw::AdamW) -> Self {
        Optimizer::AdamW(o)
    }
}

/// `accumulate` flag of a gradient target, as the kernels take it.
pub(crate) fn accumulate_flag(target: &GradTarget) -> u32 {
    target.accumulate as u32
}

/// A one-element stand-in bound where a kernel's optional input (a bias) is absent.
pub(crate) fn placeholder(gpu: &Gpu) -> GpuSlice {
    gpu.storage("kdna.placeholder", 1)
}
