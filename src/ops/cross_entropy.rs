//! Softmax cross-entropy, mean over the batch, optional label smoothing (`shaders/loss.wgsl`).
//! Its output is `[mean loss, correct top-1 count]`: the two numbers a training step reads back.

use anyhow::{Result, bail};

use super::{Bound, Grads, Mode, Op, accumulate_flag};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, Role, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct CrossEntropy {
    pub batch: usize,
    pub classes: usize,
    pub smoothing: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LossParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    accumulate: u32,
}

impl CrossEntropy {
    fn params(&self, accumulate: u32) -> LossParams {
        LossParams { batch: self.batch as u32, classes: self.classes as u32, smoothing: self.smoothing, accumulate }
    }
}

// Inputs: logits [N, classes], labels [N] (u32). Output: [loss, correct]. Scratch: per sample.
impl Op for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }

    fn scratch(&self, _backward: bool) -> Vec<usize> {
        vec![2 * self.batch]
    }

    fn differentiable(&self, input: usize) -> bool {
        input == 0
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let p = self.params(0);
        let per_sample = b.scratch[0];
        vec![
            gpu.dispatch(
                "loss",
                "cross_entropy_per_sample",
                &p,
                &[b.inputs[0], b.inputs[1], per_sample],
                grid(self.batch),
            ),
            gpu.dispatch("loss", "cross_entropy_reduce", &p, &[per_sample, b.outputs[0]], [1, 1, 1]),
        ]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let Some(dlogits) = grads.inputs[0] else { return vec![] };
        let p = self.params(accumulate_flag(&dlogits));
        let buffers = [b.inputs[0], b.inputs[1], grads.outputs[0], dlogits.slice];
        vec![gpu.dispatch("loss", "cross_entropy_backward", &p, &buffers, grid(self.batch * self.classes))]
    }
}

impl Graph {
    /// Mean cross-entropy of `logits` [N, classes] against `labels`; output [loss, correct].
    pub fn cross_entropy(&mut self, logits: TensorId, labels: TensorId, smoothing: f32) -> Result<TensorId> {
        let &[batch, classes] = self.shape(logits) else {
            return Err(shape_error("cross_entropy", "logits", self.shape(logits), "[N, classes]"));
        };
        if self.info(labels).role != Role::Labels || self.shape(labels) != [batch] {
            bail!("cross_entropy: labels must be a labels tensor of shape [{batch}]");
        }
        if !(0.0..1.0).contains(&smoothing) {
            bail!("cross_entropy: label smoothing {smoothing} must be in [0, 1)");
        }
        Ok(self.push(CrossEntropy { batch, classes, smoothing }, &[logits, labels], &[vec![2]])[0])
    }
}
