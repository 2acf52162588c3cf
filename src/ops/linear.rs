//! Fully connected layer: `y = x w^T + b` on [N, in] rows, run as the 1x1 convolution it is
//! (`conv_gemm.rs`). Also the router's 1x1 projections, whose torch weights are
//! [out, in, 1, 1] with the same layout.

use anyhow::Result;

use super::conv2d::{Conv2d, Conv2dConfig, Conv2dShape, OutputActivation};
use super::{Bound, Forward, Grads, Mode, Op};
use crate::gpu::{Dispatch, Gpu};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub has_bias: bool,
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
        Conv2d { shape, has_bias: self.has_bias, has_residual: false, activation: OutputActivation::None }
    }
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
        self.conv().scratch(backward)
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        self.conv().forward(gpu, b, mode)
    }

    fn split_forward(&self, gpu: &Gpu, b: &Bound, mode: Mode, fixed: &[bool]) -> Forward {
        self.conv().split_forward(gpu, b, mode, fixed)
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, mode: Mode) -> Vec<Dispatch> {
        self.conv().backward(gpu, b, grads, mode)
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
