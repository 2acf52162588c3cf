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

    /// One update of `param` from `grad`, keeping momentum in `velocity` (all the same length):
    /// four elements per invocation over the longest prefix that a binding may end and the
    /// next begin at, then one per invocation over the rest. Each with its element count.
    /// Where the device reads streams through textures ([`Gpu::texture_reads`]), the quads
    /// read their operands from copies in textures (the same results, bit for bit).
    pub fn dispatches(
        &self,
        gpu: &Gpu,
        param: &GpuSlice,
        grad: &GpuSlice,
        velocity: &GpuSlice,
        first_step: bool,
    ) -> Vec<(Dispatch, usize)> {
        // Elements a binding's offset must be a multiple of (and a multiple of four).
        let align = (gpu.device.limits().min_storage_buffer_offset_alignment.max(16) / 4) as usize;
        let quads = param.len() / align * align;
        let mut out = Vec::new();
        // The scalar rest has no twin that reads textures: it reads none either way.
        for (entries, start, len, per_invocation) in [
            (["sgd_step_quads", "sgd_step_quads_textured"], 0, quads, 4),
            (["sgd_step", "sgd_step"], quads, param.len() - quads, 1),
        ] {
            if len == 0 {
                continue;
            }
            let buffers = [param, grad, velocity].map(|s| s.range(start, len));
            let buffers = [&buffers[0], &buffers[1], &buffers[2]];
            let sources: &[&GpuSlice] = if per_invocation == 4 { &buffers } else { &[] };
            let params = self.params(len, first_step);
            let grid = grid(len / per_invocation);
            let dispatch = gpu.dispatch_streaming(None, "optim", entries, &params, &buffers, sources, grid);
            out.push((dispatch, len));
        }
        out
    }
}
