//! Element-wise ops (`shaders/activation.wgsl`): relu, relu6, sigmoid, GELU and the residual add.

use anyhow::Result;

use super::{Bound, Grads, Mode, Op, accumulate_flag};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu = 0,
    Relu6 = 1,
    Sigmoid = 2,
    /// The exact GELU, `x * Phi(x)` with Phi the normal distribution (torch's default,
    /// `approximate="none"`).
    Gelu = 3,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    len: u32,
    kind: u32,
    accumulate: u32,
    _pad: u32,
}

fn params(len: usize, kind: u32, accumulate: u32) -> ElementwiseParams {
    ElementwiseParams { len: len as u32, kind, accumulate, _pad: 0 }
}

/// `entry` or its four-wide `_quads` version where the length allows, and its grid.
fn elementwise(entry: &'static str, quads: &'static str, len: usize, four_wide: bool) -> (&'static str, [u32; 3]) {
    if four_wide && len.is_multiple_of(4) { (quads, grid(len / 4)) } else { (entry, grid(len)) }
}

/// Graph node: `[x] -> [act(x)]`.
#[derive(Clone, Debug)]
pub struct ActivationOp {
    pub kind: Activation,
    pub len: usize,
}

impl Op for ActivationOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "gelu",
        }
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let p = params(self.len, self.kind as u32, 0);
        let (entry, grid) = self.entry("activation_forward", "activation_forward_quads");
        vec![gpu.dispatch("activation", entry, &p, &[b.inputs[0], b.outputs[0]], grid)]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let Some(dx) = grads.inputs[0] else { return vec![] };
        let p = params(self.len, self.kind as u32, accumulate_flag(&dx));
        let buffers = [b.inputs[0], b.outputs[0], grads.outputs[0], dx.slice];
        let (entry, grid) = self.entry("activation_backward", "activation_backward_quads");
        vec![gpu.dispatch("activation", entry, &p, &buffers, grid)]
    }
}

impl ActivationOp {
    /// relu and relu6 run four wide; sigmoid (a router's few gates) and GELU stay scalar.
    fn entry(&self, entry: &'static str, quads: &'static str) -> (&'static str, [u32; 3]) {
        elementwise(entry, quads, self.len, matches!(self.kind, Activation::Relu | Activation::Relu6))
    }
}

/// Graph node: `[a, b] -> [a + b]`.
#[derive(Clone, Debug)]
pub struct Add {
    pub len: usize,
}

impl Op for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let p = params(self.len, 0, 0);
        let (entry, grid) = elementwise("add_forward", "add_forward_quads", self.len, true);
        vec![gpu.dispatch("activation", entry, &p, &[b.inputs[0], b.inputs[1], b.outputs[0]], grid)]
    }

    fn backward(&self, gpu: &Gpu, _b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        grads
            .inputs
            .iter()
            .flatten()
            .map(|dx| {
                let p = params(self.len, 0, accumulate_flag(dx));
                let (entry, grid) = elementwise("pass_gradient", "pass_gradient_quads", self.len, true);
                gpu.dispatch("activation", entry, &p, &[grads.outputs[0], dx.slice], grid)
            })
            .collect()
    }
}

impl Graph {
    pub fn activation(&mut self, x: TensorId, kind: Activation) -> TensorId {
        let shape = self.shape(x).to_vec();
        let len = shape.iter().product();
        self.push(ActivationOp { kind, len }, &[x], &[shape])[0]
    }

    pub fn relu(&mut self, x: TensorId) -> TensorId {
        self.activation(x, Activation::Relu)
    }

    pub fn relu6(&mut self, x: TensorId) -> TensorId {
        self.activation(x, Activation::Relu6)
    }

    pub fn sigmoid(&mut self, x: TensorId) -> TensorId {
        self.activation(x, Activation::Sigmoid)
    }

    pub fn gelu(&mut self, x: TensorId) -> TensorId {
        self.activation(x, Activation::Gelu)
    }

    /// `a + b`, same shapes (residual connections).
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        let shape = self.shape(a).to_vec();
        if self.shape(b) != shape.as_slice() {
            return Err(shape_error("add", "second operand", self.shape(b), &format!("{shape:?}")));
        }
        let len = shape.iter().product();
        Ok(self.push(Add { len }, &[a, b], &[shape])[0])
    }
}
