//! AdamW over a parameter range (`shaders/optim.wgsl`), with torch.optim.AdamW's semantics
//! (decoupled weight decay, bias-corrected moments, no amsgrad).

use crate::gpu::{Dispatch, Gpu, GpuSlice, grid};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// ConvNeXt's recipe: lr 4e-3, weight decay 0.05; torch's betas and eps.
    fn default() -> Self {
        AdamW { lr: 4e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamWParams {
    len: u32,
    _pad0: [u32; 3],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    _pad1: u32,
}

impl AdamW {
    /// The uniform of step `step` (1-based, as torch counts): bias corrections in f64.
    pub(crate) fn params(&self, len: usize, step: u64) -> AdamWParams {
        let t = step.max(1) as i32;
        let correction1 = 1.0 - (self.beta1 as f64).powi(t);
        let correction2 = 1.0 - (self.beta2 as f64).powi(t);
        AdamWParams {
            len: len as u32,
            _pad0: [0; 3],
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step_size: (self.lr as f64 / correction1) as f32,
            bias_correction2_sqrt: correction2.sqrt() as f32,
            _pad1: 0,
        }
    }

    /// Step `step` (1-based) of `param` from `grad`, with the moments in `exp_avg` and
    /// `exp_avg_sq` (all the same length; the moments start at zero).
    pub fn dispatch(&self, gpu: &Gpu, [param, grad, exp_avg, exp_avg_sq]: [&GpuSlice; 4], step: u64) -> Dispatch {
        let len = param.len();
        gpu.dispatch("optim", "adamw_step", &self.params(len, step), &[param, grad, exp_avg, exp_avg_sq], grid(len))
    }
}
