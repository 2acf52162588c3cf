//! A KernelDNA router's gate as one op, for eval-only graphs: inference folding
//! ([`crate::graph::fold`]) makes it from the router's global average pool and its two
//! projections, fc1 with the router's BatchNorm folded in:
//! `gate = sigmoid(fc2(relu(fc1(mean_hw(x)) + b1)) + b2)`.
//!
//! Where the device has subgroups and reads streams through textures (software adapters), the
//! whole gate is one dispatch (`shaders/router_subgroup.wgsl`): apart, its three dispatches
//! are each too small to keep the device busy. Elsewhere it runs the three ops it was made
//! from. Both sum the same terms in the same order: the gate's bits do not depend on the path.

use super::conv2d::OutputActivation;
use super::linear::Linear;
use super::pool::GlobalAvgPool;
use super::{Bound, Forward, Grads, Mode, Op};
use crate::gpu::{Dispatch, Gpu, GpuSlice};

/// Samples per workgroup of the fused kernel (`ROWS` in router_subgroup.wgsl).
const ROWS: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct RouterGate {
    pub batch: usize,
    pub channels: usize,
    /// fc1's outputs.
    pub hidden: usize,
    /// Pixels of each plane of x.
    pub spatial: usize,
}

/// Mirrors `RouterParams` in router_subgroup.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RouterParams {
    batch: u32,
    channels: u32,
    hidden: u32,
    spatial: u32,
}

impl RouterGate {
    /// The three ops the gate was made from: the pool, fc1 (relu) and fc2 (sigmoid).
    pub fn pool(&self) -> GlobalAvgPool {
        GlobalAvgPool { planes: self.batch * self.channels, spatial: self.spatial }
    }

    pub fn fc1(&self) -> Linear {
        let (batch, in_features, out_features) = (self.batch, self.channels, self.hidden);
        Linear { batch, in_features, out_features, has_bias: true, activation: OutputActivation::Relu }
    }

    pub fn fc2(&self) -> Linear {
        let (batch, in_features, out_features) = (self.batch, self.hidden, self.channels);
        Linear { batch, in_features, out_features, has_bias: true, activation: OutputActivation::Sigmoid }
    }

    /// Whether the gate runs as one dispatch on `gpu`, over `x`, `w1` and `w2`: its kernel
    /// broadcasts over subgroups, takes channels, hidden units and pixels in fours, and reads
    /// those three through textures.
    pub fn runs_fused(&self, gpu: &Gpu, [x, w1, w2]: [&GpuSlice; 3]) -> bool {
        let quads = [self.channels, self.hidden, self.spatial].iter().all(|n| n.is_multiple_of(4));
        gpu.subgroups && quads && [x, w1, w2].iter().all(|s| gpu.reads_through_texture(s))
    }

    /// The one dispatch of the fused kernel over `b` (see [`RouterGate::runs_fused`]).
    pub fn forward_fused(&self, gpu: &Gpu, b: &Bound) -> Dispatch {
        let u = |v: usize| v as u32;
        let params = RouterParams {
            batch: u(self.batch),
            channels: u(self.channels),
            hidden: u(self.hidden),
            spatial: u(self.spatial),
        };
        let buffers = [b.inputs.as_slice(), b.outputs.as_slice()].concat();
        let workgroups = [self.batch.div_ceil(ROWS) as u32, 1, 1];
        gpu.dispatch_with_textures(
            "router_subgroup",
            "router_gate_quads_textured",
            &params,
            &buffers,
            &Self::texture_sources(b),
            workgroups,
        )
    }

    /// The three ops the gate was made from, each as it runs alone, over `b`: pool into the
    /// pooled output, fc1 into the hidden one, fc2 into the gate.
    pub fn forward_apart(&self, gpu: &Gpu, b: &Bound, mode: Mode, fixed: &[bool]) -> Forward {
        let fc1_scratch = self.fc1().scratch(false).len();
        let (scratch1, scratch2) = b.scratch.split_at(fc1_scratch);
        let [x, w1, b1, w2, b2] = b.inputs[..] else { panic!("a router gate reads x, w1, b1, w2 and b2") };
        let [pooled, hidden, gate] = b.outputs[..] else { panic!("a router gate stores pooled, hidden and gate") };
        fn bound<'a>(inputs: Vec<&'a GpuSlice>, output: &'a GpuSlice, scratch: &[&'a GpuSlice]) -> Bound<'a> {
            Bound { inputs, outputs: vec![output], scratch: scratch.to_vec() }
        }
        let stages: [(&dyn Op, Bound, [bool; 3]); 3] = [
            (&self.pool(), bound(vec![x], pooled, &[]), [fixed[0]; 3]),
            (&self.fc1(), bound(vec![pooled, w1, b1], hidden, scratch1), [false, fixed[1], fixed[2]]),
            (&self.fc2(), bound(vec![hidden, w2, b2], gate, scratch2), [false, fixed[3], fixed[4]]),
        ];
        let mut all = Forward::default();
        for (op, bound, fixed) in stages {
            let Forward { prepare, run } = op.split_forward(gpu, &bound, mode, &fixed);
            all.prepare.extend(prepare);
            all.run.extend(run);
        }
        all
    }

    /// What the fused kernel reads through textures: x, w1 and w2 of `b`.
    fn texture_sources<'a>(b: &Bound<'a>) -> [&'a GpuSlice; 3] {
        [b.inputs[0], b.inputs[1], b.inputs[3]]
    }

    fn fused_on(&self, gpu: &Gpu, b: &Bound) -> bool {
        self.runs_fused(gpu, Self::texture_sources(b))
    }
}

// Inputs: x [N, C, H, W], w1 [hidden, C(, 1, 1)], b1 [hidden], w2 [C, hidden(, 1, 1)], b2 [C].
// Outputs: pooled [N, C], hidden [N, hidden], gate [N, C].
impl Op for RouterGate {
    fn name(&self) -> &'static str {
        "router_gate"
    }

    fn macs(&self) -> u64 {
        self.fc1().macs() + self.fc2().macs()
    }

    fn scratch(&self, _backward: bool) -> Vec<usize> {
        [self.fc1().scratch(false), self.fc2().scratch(false)].concat()
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        let Forward { mut prepare, run } = self.split_forward(gpu, b, mode, &[false; 5]);
        prepare.extend(run);
        prepare
    }

    fn split_forward(&self, gpu: &Gpu, b: &Bound, mode: Mode, fixed: &[bool]) -> Forward {
        if self.fused_on(gpu, b) {
            return Forward { prepare: Vec::new(), run: vec![self.forward_fused(gpu, b)] };
        }
        self.forward_apart(gpu, b, mode, fixed)
    }

    fn backward(&self, _gpu: &Gpu, _b: &Bound, _grads: &Grads, _mode: Mode) -> Vec<Dispatch> {
        panic!("a router gate is eval-only: inference folding makes it, and folded graphs have no backward pass")
    }
}
