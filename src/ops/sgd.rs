//! SGD with momentum and weight decay over the whole parameter arena (`shaders/optim.wgsl`),
//! with torch.optim.SGD's semantics.

use crate::gpu::{Dispatch, Gpu, GpuSlice, grid};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 1e-4, nesterov: false }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SgdParams {
    len: u32,
    first_step: u32,
    nesterov: u32,
    _pad: u32,
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
}

impl Sgd {
    pub(crate) fn params(&self, len: usize, first_step: bool) -> SgdParams {
        SgdParams {
            len: len as u32,
            first_step: first_step as u32,
            nesterov: self.nesterov as u32,
            _pad: 0,
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            weight_decay: self.weight_decay,
        }
    }

    /// One update of `param` from `grad`, keeping momentum in `velocity` (all the same length).
    pub fn dispatch(
        &self,
        gpu: &Gpu,
        param: &GpuSlice,
        grad: &GpuSlice,
        velocity: &GpuSlice,
        first_step: bool,
    ) -> Dispatch {
        let len = param.len();
        gpu.dispatch("optim", "sgd_step", &self.params(len, first_step), &[param, grad, velocity], grid(len))
    }
}
