//! Element-wise ops (`shaders/activation.wgsl`): relu, relu6, sigmoid, GELU and the residual add.

use anyhow::Result;

use super::{Bound, GradTarget, Grads, Mode, Op, accumulate_flag};
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
    /// `add_forward*`: whether `kind` is applied to the sum.
    activated: u32,
}

fn params(len: usize, kind: u32, accumulate: u32) -> ElementwiseParams {
    ElementwiseParams { len: len as u32, kind, accumulate, activated: 0 }
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
        let (entry, grid) = self.entry("activation_forward", "activation_forward_quads", "gelu_forward_quads");
        vec![gpu.dispatch("activation", entry, &p, &[b.inputs[0], b.outputs[0]], grid)]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let Some(dx) = grads.inputs[0] else { return vec![] };
        let p = params(self.len, self.kind as u32, accumulate_flag(&dx));
        let buffers = [b.inputs[0], b.outputs[0], grads.outputs[0], dx.slice];
        let (entry, grid) = self.entry("activation_backward", "activation_backward_quads", "gelu_backward_quads");
        vec![gpu.dispatch("activation", entry, &p, &buffers, grid)]
    }
}

impl ActivationOp {
    /// relu and relu6 run four wide, GELU four wide on kernels of its own (`gelu_quads`);
    /// sigmoid (a router's few gates) stays scalar.
    fn entry(&self, entry: &'static str, quads: &'static str, gelu_quads: &'static str) -> (&'static str, [u32; 3]) {
        match self.kind {
            Activation::Relu | Activation::Relu6 => elementwise(entry, quads, self.len, true),
            Activation::Gelu => elementwise(entry, gelu_quads, self.len, true),
            Activation::Sigmoid => elementwise(entry, quads, self.len, false),
        }
    }
}

/// Graph node: `[a, b] -> [a + b]`, or `[act(a + b)]` for a relu or relu6 (a residual block's
/// last activation, one pass instead of two each way).
#[derive(Clone, Debug)]
pub struct Add {
    pub len: usize,
    /// Relu or relu6, whose gradient mask the sum's output gives: y > 0 exactly where a + b > 0
    /// (and y < 6 where a + b < 6).
    pub activation: Option<Activation>,
}

impl Op for Add {
    fn name(&self) -> &'static str {
        match self.activation {
            None => "add",
            Some(Activation::Relu) => "add_relu",
            Some(_) => "add_relu6",
        }
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let p = ElementwiseParams {
            activated: self.activation.is_some() as u32,
            ..params(self.len, self.activation.map_or(0, |a| a as u32), 0)
        };
        let [x, y, out] = [b.inputs[0], b.inputs[1], b.outputs[0]];
        let (entry, grid) = elementwise("add_forward", "add_forward_quads", self.len, true);
        if entry == "add_forward_quads" {
            let entries = ["add_forward_quads", "add_forward_quads_textured"];
            return vec![gpu.dispatch_streaming(None, "activation", entries, &p, &[x, y, out], &[x, y], grid)];
        }
        vec![gpu.dispatch("activation", entry, &p, &[x, y, out], grid)]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let dy = grads.outputs[0];
        let Some(kind) = self.activation else {
            let pass = |dx: &GradTarget| {
                let p = params(self.len, 0, accumulate_flag(dx));
                let (entry, grid) = elementwise("pass_gradient", "pass_gradient_quads", self.len, true);
                gpu.dispatch("activation", entry, &p, &[dy, dx.slice], grid)
            };
            return grads.inputs.iter().flatten().map(pass).collect();
        };
        // The activation's gradient, masked by the output, goes to both inputs in one pass (to
        // one where only one wants it: the activation's own kernel, reading y as its input).
        let y = b.outputs[0];
        match grads.inputs[..] {
            [Some(da), Some(db)] => {
                let accumulate = accumulate_flag(&da) | accumulate_flag(&db) << 1;
                let p = params(self.len, kind as u32, accumulate);
                let (entry, grid) = elementwise("add_backward_masked", "add_backward_masked_quads", self.len, true);
                let buffers = [y, dy, da.slice, db.slice];
                if entry == "add_backward_masked_quads" {
                    let entries = ["add_backward_masked_quads", "add_backward_masked_quads_textured"];
                    return vec![gpu.dispatch_streaming(None, "activation", entries, &p, &buffers, &[y, dy], grid)];
                }
                vec![gpu.dispatch("activation", entry, &p, &buffers, grid)]
            }
            [Some(dx), None] | [None, Some(dx)] => {
                let p = params(self.len, kind as u32, accumulate_flag(&dx));
                let (entry, grid) = elementwise("activation_backward", "activation_backward_quads", self.len, true);
                vec![gpu.dispatch("activation", entry, &p, &[y, y, dy, dx.slice], grid)]
            }
            _ => Vec::new(),
        }
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
        self.add_activated(a, b, None)
    }

    /// `relu(a + b)` in one node (a residual block's output).
    pub fn add_relu(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.add_activated(a, b, Some(Activation::Relu))
    }

    fn add_activated(&mut self, a: TensorId, b: TensorId, activation: Option<Activation>) -> Result<TensorId> {
        let shape = self.shape(a).to_vec();
        if self.shape(b) != shape.as_slice() {
            return Err(shape_error("add", "second operand", self.shape(b), &format!("{shape:?}")));
        }
        if let Some(kind) = activation
            && a == b
        {
            // The fused gradient writes each input once: a sum of one tensor with itself stays
            // two nodes.
            let sum = self.add(a, b)?;
            return Ok(self.activation(sum, kind));
        }
        let len = shape.iter().product();
        Ok(self.push(Add { len, activation }, &[a, b], &[shape])[0])
    }
}
