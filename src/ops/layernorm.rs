//! LayerNorm over the channels of [N, C, ...] (`shaders/layernorm.wgsl`): each sample's values
//! at one position are normalised across channels, with a per-channel weight and bias. This is
//! torch's `nn.LayerNorm(C)` applied to channels-last data (inside ConvNeXt blocks) and
//! torchvision's `LayerNorm2d` (stems, downsamplers, heads), both on kdna's NCHW layout. The
//! same in train and eval mode.

use anyhow::{Result, bail};

use super::{Bound, Grads, Mode, Op};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub batch: usize,
    pub channels: usize,
    /// Positions per sample (H x W).
    pub spatial: usize,
    pub eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LayerNormParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    eps: f32,
    accumulate_input: u32,
    accumulate_weight: u32,
    accumulate_bias: u32,
    _pad: u32,
}

impl LayerNorm {
    fn params(&self) -> LayerNormParams {
        LayerNormParams {
            batch: self.batch as u32,
            channels: self.channels as u32,
            spatial: self.spatial as u32,
            eps: self.eps,
            accumulate_input: 0,
            accumulate_weight: 0,
            accumulate_bias: 0,
            _pad: 0,
        }
    }

    fn positions(&self) -> usize {
        self.batch * self.spatial
    }
}

// Inputs: x, weight, bias. Scratch: (mean, 1 / std) per (sample, position).
impl Op for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }

    fn scratch(&self, _backward: bool) -> Vec<usize> {
        vec![2 * self.positions()]
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let [x, weight, bias] = b.inputs[..] else { unreachable!("layernorm takes 3 inputs") };
        let buffers = [x, weight, bias, b.scratch[0], b.outputs[0]];
        vec![gpu.dispatch("layernorm", "layernorm_forward", &self.params(), &buffers, grid(self.positions()))]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let (x, weight, saved) = (b.inputs[0], b.inputs[1], b.scratch[0]);
        let dy = grads.outputs[0];
        let mut out = Vec::new();
        if let Some(dx) = grads.inputs[0] {
            let params = LayerNormParams { accumulate_input: dx.accumulate as u32, ..self.params() };
            let buffers = [x, dy, weight, saved, dx.slice];
            out.push(gpu.dispatch("layernorm", "layernorm_backward_input", &params, &buffers, grid(self.positions())));
        }
        if grads.inputs[1].is_some() || grads.inputs[2].is_some() {
            // An unwanted parameter gradient still needs somewhere to go.
            let unused = gpu.storage("kdna.layernorm.unused", self.channels);
            let params = LayerNormParams {
                accumulate_weight: grads.inputs[1].is_some_and(|t| t.accumulate) as u32,
                accumulate_bias: grads.inputs[2].is_some_and(|t| t.accumulate) as u32,
                ..self.params()
            };
            let dweight = grads.inputs[1].map_or(&unused, |t| t.slice);
            let dbias = grads.inputs[2].map_or(&unused, |t| t.slice);
            let buffers = [x, dy, saved, dweight, dbias];
            out.push(gpu.dispatch(
                "layernorm",
                "layernorm_backward_params",
                &params,
                &buffers,
                [self.channels as u32, 1, 1],
            ));
        }
        out
    }
}

impl Graph {
    /// LayerNorm of `x` ([N, C, ...]) across its channels, with `weight` and `bias` of [C]
    /// (ConvNeXt uses eps 1e-6).
    pub fn layernorm(&mut self, x: TensorId, weight: TensorId, bias: TensorId, eps: f32) -> Result<TensorId> {
        let shape = self.shape(x).to_vec();
        if shape.len() < 2 {
            return Err(shape_error("layernorm", "input", &shape, "[N, C, ...]"));
        }
        let channels = shape[1];
        for t in [weight, bias] {
            if self.shape(t) != [channels] {
                return Err(shape_error(
                    "layernorm",
                    &self.info(t).name.clone(),
                    self.shape(t),
                    &format!("[{channels}]"),
                ));
            }
        }
        if channels > 65535 {
            bail!("layernorm: {channels} channels exceed the 65535 the kernels dispatch");
        }
        let op = LayerNorm { batch: shape[0], channels, spatial: shape[2..].iter().product(), eps };
        Ok(self.push(op, &[x, weight, bias], &[shape])[0])
    }
}
