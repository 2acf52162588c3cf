//! Pooling (`shaders/pool.wgsl`): max pooling with a square window, and global average
//! pooling [N, C, H, W] -> [N, C].

use anyhow::{Result, bail};

use super::{Bound, Grads, Mode, Op, accumulate_flag};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolParams {
    planes: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    accumulate: u32,
    phase_y: u32,
    phase_x: u32,
    _pad: u32,
}

/// Graph node: `[x] -> [y]`, keeping the argmax of each window as scratch.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool2d {
    fn params(&self) -> PoolParams {
        let u = |v: usize| v as u32;
        PoolParams {
            planes: u(self.planes),
            h: u(self.h),
            w: u(self.w),
            out_h: u(self.out_h),
            out_w: u(self.out_w),
            kernel: u(self.kernel),
            stride: u(self.stride),
            pad: u(self.pad),
            ..Default::default()
        }
    }
}

impl Op for MaxPool2d {
    fn name(&self) -> &'static str {
        "maxpool2d"
    }

    fn scratch(&self, _backward: bool) -> Vec<usize> {
        vec![self.planes * self.out_h * self.out_w]
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let outputs = self.planes * self.out_h * self.out_w;
        let buffers = [b.inputs[0], b.outputs[0], b.scratch[0]];
        // ResNet's stem pool over rows in eights reads its rows as vec4s, four windows at once.
        // It reads x through a texture where the device reads streams so.
        if (self.kernel, self.stride, self.pad, self.w % 8) == (3, 2, 1, 0) {
            let entries = ["maxpool_forward_3x3s2_quads", "maxpool_forward_3x3s2_quads_textured"];
            let workgroups = grid(outputs / 4);
            return vec![gpu.dispatch_streaming(
                None,
                "pool",
                entries,
                &self.params(),
                &buffers,
                &[buffers[0]],
                workgroups,
            )];
        }
        vec![gpu.dispatch("pool", "maxpool_forward", &self.params(), &buffers, grid(outputs))]
    }

    /// Windows add to the pixels they chose, so dx starts cleared.
    fn covers_input(&self, _input: usize) -> bool {
        false
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let Some(dx) = grads.inputs[0] else { return vec![] };
        let buffers = [grads.outputs[0], b.scratch[0], dx.slice];
        // Windows this far apart never overlap: each phase's windows add without atomics.
        let m = self.kernel.div_ceil(self.stride);
        let phases = |outputs: usize| 0..m.min(outputs);
        let mut out = Vec::new();
        for phase_y in phases(self.out_h) {
            for phase_x in phases(self.out_w) {
                let params = PoolParams { phase_y: phase_y as u32, phase_x: phase_x as u32, ..self.params() };
                // One invocation per row of the phase's windows.
                let rows = self.planes * (self.out_h - phase_y).div_ceil(m);
                out.push(gpu.dispatch("pool", "maxpool_backward", &params, &buffers, grid(rows)));
            }
        }
        out
    }
}

/// Graph node: `[x: N, C, H, W] -> [y: N, C]`.
#[derive(Clone, Copy, Debug)]
pub struct GlobalAvgPool {
    pub planes: usize,
    pub spatial: usize,
}

impl GlobalAvgPool {
    fn params(&self, accumulate: u32) -> PoolParams {
        PoolParams { planes: self.planes as u32, h: self.spatial as u32, w: 1, accumulate, ..Default::default() }
    }
}

impl Op for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "global_avgpool"
    }

    /// Planes whose pixels come in fours take four at a time (the forward pass reading x
    /// through a texture where the device reads streams so).
    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        let buffers = [b.inputs[0], b.outputs[0]];
        let workgroups = grid(self.planes);
        if self.spatial.is_multiple_of(4) {
            let entries = ["global_avgpool_forward_quads", "global_avgpool_forward_quads_textured"];
            return vec![gpu.dispatch_streaming(
                None,
                "pool",
                entries,
                &self.params(0),
                &buffers,
                &[buffers[0]],
                workgroups,
            )];
        }
        vec![gpu.dispatch("pool", "global_avgpool_forward", &self.params(0), &buffers, workgroups)]
    }

    fn backward(&self, gpu: &Gpu, _b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let Some(dx) = grads.inputs[0] else { return vec![] };
        let buffers = [grads.outputs[0], dx.slice];
        let p = self.params(accumulate_flag(&dx));
        let elements = self.planes * self.spatial;
        let (entry, invocations) = match self.spatial.is_multiple_of(4) {
            true => ("global_avgpool_backward_quads", elements / 4),
            false => ("global_avgpool_backward", elements),
        };
        vec![gpu.dispatch("pool", entry, &p, &buffers, grid(invocations))]
    }
}

fn nchw(op: &str, shape: &[usize]) -> Result<[usize; 4]> {
    shape.try_into().map_err(|_| shape_error(op, "input", shape, "[N, C, H, W]"))
}

impl Graph {
    /// Max pooling with a `kernel` x `kernel` window (ResNet's stem: 3, stride 2, padding 1).
    pub fn maxpool2d(&mut self, x: TensorId, kernel: usize, stride: usize, pad: usize) -> Result<TensorId> {
        let [n, c, h, w] = nchw("maxpool2d", self.shape(x))?;
        if kernel == 0 || stride == 0 || pad * 2 > kernel || h + 2 * pad < kernel || w + 2 * pad < kernel {
            bail!("maxpool2d: window {kernel} stride {stride} padding {pad} does not fit a {h}x{w} input");
        }
        let out_h = (h + 2 * pad - kernel) / stride + 1;
        let out_w = (w + 2 * pad - kernel) / stride + 1;
        let op = MaxPool2d { planes: n * c, h, w, out_h, out_w, kernel, stride, pad };
        Ok(self.push(op, &[x], &[vec![n, c, out_h, out_w]])[0])
    }

    /// Mean over H and W: [N, C, H, W] -> [N, C].
    pub fn global_avgpool(&mut self, x: TensorId) -> Result<TensorId> {
        let [n, c, h, w] = nchw("global_avgpool", self.shape(x))?;
        Ok(self.push(GlobalAvgPool { planes: n * c, spatial: h * w }, &[x], &[vec![n, c]])[0])
    }
}
