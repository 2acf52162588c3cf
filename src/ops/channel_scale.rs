//! The router's gate applied to its input (`shaders/router.wgsl`):
//! `y[n, c, h, w] = x[n, c, h, w] * gate[n, c]`.

use anyhow::Result;

use super::{Bound, Grads, Mode, Op, accumulate_flag};
use crate::gpu::{Dispatch, Gpu, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct ChannelScale {
    pub planes: usize,
    pub spatial: usize,
    /// The one consumer, a GEMM convolution, applies the gate as it copies its input
    /// ([`crate::graph::fuse`]): the forward pass leaves y unwritten. The backward pass is as
    /// ever (it reads x, the gate and dy, never y).
    pub applied_by_consumer: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScaleParams {
    planes: u32,
    spatial: u32,
    accumulate: u32,
    accumulate_input: u32,
}

impl ChannelScale {
    fn params(&self, accumulate: u32) -> ScaleParams {
        ScaleParams { planes: self.planes as u32, spatial: self.spatial as u32, accumulate, accumulate_input: 0 }
    }
}

// Inputs: x, gate. Output: y.
impl Op for ChannelScale {
    fn name(&self) -> &'static str {
        "channel_scale"
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, _mode: Mode) -> Vec<Dispatch> {
        if self.applied_by_consumer {
            return Vec::new();
        }
        let buffers = [b.inputs[0], b.inputs[1], b.outputs[0]];
        vec![gpu.dispatch(
            "router",
            "channel_scale_forward",
            &self.params(0),
            &buffers,
            grid(self.planes * self.spatial),
        )]
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        let dy = grads.outputs[0];
        let mut out = Vec::new();
        // Planes whose pixels come in fours take four at a time, reading the streams through
        // textures where the device reads streams so.
        let quads = self.spatial.is_multiple_of(4);
        let [x, gate] = [b.inputs[0], b.inputs[1]];
        // Both gradients from one pass over dy where the device reads textures.
        if let [Some(dx), Some(dgate)] = [grads.inputs[0], grads.inputs[1]]
            && quads
            && [x, dy].iter().all(|s| gpu.reads_through_texture(s))
        {
            let p = ScaleParams { accumulate_input: accumulate_flag(&dx), ..self.params(accumulate_flag(&dgate)) };
            let buffers = [x, dy, dgate.slice, gate, dx.slice];
            let entry = "channel_scale_backward_quads_textured";
            return vec![gpu.dispatch_with_textures("router", entry, &p, &buffers, &[x, dy], grid(self.planes))];
        }
        if let Some(dx) = grads.inputs[0] {
            let p = self.params(accumulate_flag(&dx));
            let n = self.planes * self.spatial;
            let buffers = [dy, gate, dx.slice];
            out.push(match quads {
                true => {
                    let entries = ["channel_scale_backward_input_quads", "channel_scale_backward_input_quads_textured"];
                    gpu.dispatch_streaming(None, "router", entries, &p, &buffers, &[dy], grid(n / 4))
                }
                false => gpu.dispatch("router", "channel_scale_backward_input", &p, &buffers, grid(n)),
            });
        }
        if let Some(dgate) = grads.inputs[1] {
            let p = self.params(accumulate_flag(&dgate));
            let buffers = [x, dy, dgate.slice];
            let workgroups = grid(self.planes);
            out.push(match quads {
                true => {
                    let entries = ["channel_scale_backward_gate_quads", "channel_scale_backward_gate_quads_textured"];
                    gpu.dispatch_streaming(None, "router", entries, &p, &buffers, &[x, dy], workgroups)
                }
                false => gpu.dispatch("router", "channel_scale_backward_gate", &p, &buffers, workgroups),
            });
        }
        out
    }
}

impl Graph {
    /// `x` [N, C, H, W] scaled per (sample, channel) by `gate` [N, C].
    pub fn channel_scale(&mut self, x: TensorId, gate: TensorId) -> Result<TensorId> {
        let shape = self.shape(x).to_vec();
        let &[n, c, h, w] = shape.as_slice() else {
            return Err(shape_error("channel_scale", "input", &shape, "[N, C, H, W]"));
        };
        if self.shape(gate) != [n, c] {
            return Err(shape_error("channel_scale", "gate", self.shape(gate), &format!("[{n}, {c}]")));
        }
        Ok(self.push(ChannelScale { planes: n * c, spatial: h * w, applied_by_consumer: false }, &[x, gate], &[shape])
            [0])
    }
}
