//! Fully connected layer (`shaders/linear.wgsl`): `y = x w^T + b` on [N, in] rows. Also the
//! router's 1x1 projections, whose torch weights are [out, in, 1, 1] with the same layout.

use anyhow::Result;

use super::{Bound, Grads, Mode, Op, accumulate_flag, placeholder};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub has_bias: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LinearParams {
    batch: u32,
    in_features: u32,
    out_features: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

impl Linear {
    fn params(&self, accumulate: u32) -> LinearParams {
        LinearParams {
            batch: self.batch as u32,
            in_features: self.in_features as u32,
            out_features: self.out_features as u32,
            has_bias: self.has_bias as u32,
            accumulate,
            _pad: [0; 3],
        }
    }
}

/// Invocations of the matrix kernels: one per 4 x 4 block of results (`blocks` in linear.wgsl).
fn blocks(rows: usize, cols: usize) -> usize {
    rows.div_ceil(4) * cols.div_ceil(4)
}

// Inputs: x, weight[, bias]. Output: y.
impl Op for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn macs(&self) -> u64 {
        (self.batch * self.in_features * self.out_features) as u64
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let none = placeholder(gpu);
        let bias = if self.has_bias { b.inputs[2] } else { &none };
        let buffers = [b.inputs[0], b.inputs[1], bias, b.outputs[0]];
        let blocks = blocks(self.batch, self.out_features);
        vec![gpu.dispatch("linear", "linear_forward", &self.params(0), &buffers, grid(blocks))]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let dy = grads.outputs[0];
        let mut out = Vec::new();
        if let Some(dx) = grads.inputs[0] {
            let p = self.params(accumulate_flag(&dx));
            let n = blocks(self.batch, self.in_features);
            out.push(gpu.dispatch("linear", "linear_backward_input", &p, &[dy, b.inputs[1], dx.slice], grid(n)));
        }
        if let Some(dw) = grads.inputs[1] {
            let p = self.params(accumulate_flag(&dw));
            let n = blocks(self.out_features, self.in_features);
            out.push(gpu.dispatch("linear", "linear_backward_weight", &p, &[b.inputs[0], dy, dw.slice], grid(n)));
        }
        if let Some(Some(db)) = grads.inputs.get(2) {
            let p = self.params(accumulate_flag(db));
            out.push(gpu.dispatch("linear", "linear_backward_bias", &p, &[dy, db.slice], grid(self.out_features)));
        }
        out
    }
}

impl Graph {
    /// `x` [N, in] times `weight` [out, in] (or [out, in, 1, 1]) plus `bias` [out].
    pub fn linear(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
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
        let op = Linear { batch, in_features, out_features, has_bias: bias.is_some() };
        Ok(self.push(op, &inputs, &[vec![batch, out_features]])[0])
    }
}
