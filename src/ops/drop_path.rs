//! Stochastic depth in torchvision's "row" mode (`shaders/layer_scale.wgsl`): in training, each
//! sample's residual branch is dropped whole with probability `p` or kept and scaled by
//! `1 / (1 - p)`; in eval it passes unchanged. The trainer draws the per-sample mask each step
//! (seeded by seed, epoch, step and layer) into the op's mask input.

use super::{Bound, Grads, Mode, Op};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId};

#[derive(Clone, Copy, Debug)]
pub struct DropPath {
    pub batch: usize,
    pub per_sample: usize,
    /// Drop probability, in [0, 1).
    pub p: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DropPathParams {
    batch: u32,
    per_sample: u32,
    training: u32,
    accumulate: u32,
    rescale: f32,
    _pad: [u32; 3],
}

impl DropPath {
    fn params(&self, mode: Mode, accumulate: bool) -> DropPathParams {
        DropPathParams {
            batch: self.batch as u32,
            per_sample: self.per_sample as u32,
            training: (mode == Mode::Train) as u32,
            accumulate: accumulate as u32,
            rescale: 1.0 / (1.0 - self.p),
            _pad: [0; 3],
        }
    }

    fn len(&self) -> usize {
        self.batch * self.per_sample
    }
}

// Inputs: x, mask ([N], 1 keeps a sample, 0 drops it).
impl Op for DropPath {
    fn name(&self) -> &'static str {
        "drop_path"
    }

    fn differentiable(&self, input: usize) -> bool {
        input == 0
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        let buffers = [b.inputs[0], b.inputs[1], b.outputs[0]];
        vec![gpu.dispatch("layer_scale", "drop_path_apply", &self.params(mode, false), &buffers, grid(self.len()))]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, mode: Mode) -> Vec<Dispatch> {
        let Some(dx) = grads.inputs[0] else { return vec![] };
        let buffers = [grads.outputs[0], b.inputs[1], dx.slice];
        vec![gpu.dispatch(
            "layer_scale",
            "drop_path_apply",
            &self.params(mode, dx.accumulate),
            &buffers,
            grid(self.len()),
        )]
    }
}

impl Graph {
    /// Stochastic depth of probability `p` on `x` ([N, ...]), its mask an input named `name`;
    /// `x` itself when `p` is 0 (as torchvision skips it).
    pub fn drop_path(&mut self, x: TensorId, name: &str, p: f32) -> TensorId {
        if p <= 0.0 {
            return x;
        }
        let shape = self.shape(x).to_vec();
        let mask = self.input(name, &[shape[0]]);
        let op = DropPath { batch: shape[0], per_sample: shape[1..].iter().product(), p };
        self.push(op, &[x, mask], &[shape])[0]
    }
}
