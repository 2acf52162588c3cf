//! Layer scale (`shaders/layer_scale.wgsl`): `y[n, c, ...] = x[n, c, ...] * gamma[c]`, the
//! learned per-channel factor ConvNeXt blocks apply to their residual branch (torchvision's
//! `layer_scale`, shape [C, 1, 1]).

use anyhow::{Result, bail};

use super::{Bound, Grads, Mode, Op};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct LayerScale {
    pub batch: usize,
    pub channels: usize,
    /// Elements per channel per sample (H x W).
    pub spatial: usize,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScaleParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    accumulate: u32,
}

impl LayerScale {
    fn params(&self, accumulate: bool) -> ScaleParams {
        ScaleParams {
            batch: self.batch as u32,
            channels: self.channels as u32,
            spatial: self.spatial as u32,
            accumulate: accumulate as u32,
        }
    }

    fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }
}

// Inputs: x, gamma.
impl Op for LayerScale {
    fn name(&self) -> &'static str {
        "layer_scale"
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let buffers = [b.inputs[0], b.inputs[1], b.outputs[0]];
        vec![gpu.dispatch("layer_scale", "layer_scale_forward", &self.params(false), &buffers, grid(self.len()))]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let (x, gamma, dy) = (b.inputs[0], b.inputs[1], grads.outputs[0]);
        let mut out = Vec::new();
        if let Some(dx) = grads.inputs[0] {
            let params = self.params(dx.accumulate);
            out.push(gpu.dispatch(
                "layer_scale",
                "layer_scale_backward_input",
                &params,
                &[dy, gamma, dx.slice],
                grid(self.len()),
            ));
        }
        if let Some(dgamma) = grads.inputs[1] {
            let params = self.params(dgamma.accumulate);
            out.push(gpu.dispatch(
                "layer_scale",
                "layer_scale_backward_weight",
                &params,
                &[x, dy, dgamma.slice],
                [self.channels as u32, 1, 1],
            ));
        }
        out
    }
}

impl Graph {
    /// `x` ([N, C, ...]) times `gamma` (C values: [C], or torchvision's [C, 1, 1]) per channel.
    pub fn layer_scale(&mut self, x: TensorId, gamma: TensorId) -> Result<TensorId> {
        let shape = self.shape(x).to_vec();
        if shape.len() < 2 {
            return Err(shape_error("layer_scale", "input", &shape, "[N, C, ...]"));
        }
        let channels = shape[1];
        if self.info(gamma).numel() != channels {
            return Err(shape_error("layer_scale", "gamma", self.shape(gamma), &format!("[{channels}, 1, 1]")));
        }
        if channels > 65535 {
            bail!("layer_scale: {channels} channels exceed the 65535 the kernels dispatch");
        }
        let op = LayerScale { batch: shape[0], channels, spatial: shape[2..].iter().product() };
        Ok(self.push(op, &[x, gamma], &[shape])[0])
    }
}
