//! BatchNorm over dimension 1 of [N, C, ...] (`shaders/norm.wgsl`), as torch's BatchNorm2d
//! (and BatchNorm1d on [N, C]): train mode uses batch statistics and updates the running ones,
//! eval mode uses the running ones. A relu or relu6 that follows may go in the same node
//! (`Graph::batchnorm_activated`): one pass fewer each way.

use anyhow::{Result, bail};

use super::conv2d::OutputActivation;
use super::{Bound, Grads, Mode, Op};
use crate::gpu::{Dispatch, Entry, Gpu, GpuSlice, grid};
use crate::graph::{Graph, TensorId, shape_error};

#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    pub batch: usize,
    pub channels: usize,
    /// Elements per channel per sample (H x W).
    pub spatial: usize,
    pub eps: f32,
    pub momentum: f32,
    /// None, relu or relu6, applied as the output is stored; the backward kernels mask dy by
    /// normalising x again exactly as the forward pass did (norm.wgsl `normalised`).
    pub activation: OutputActivation,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    training: u32,
    momentum: f32,
    eps: f32,
    accumulate_weight: u32,
    accumulate_bias: u32,
    accumulate_input: u32,
    /// Always 1.0: `opaque` (shaders/double_float.wgsl) cancels its bits, unseen by compilers.
    one: f32,
    chunks: u32,
    chunk_len: u32,
}

impl BatchNorm {
    fn params(&self, mode: Mode) -> NormParams {
        NormParams {
            batch: self.batch as u32,
            channels: self.channels as u32,
            spatial: self.spatial as u32,
            training: (mode == Mode::Train) as u32,
            momentum: self.momentum,
            eps: self.eps,
            accumulate_weight: 0,
            accumulate_bias: 0,
            accumulate_input: 0,
            one: 1.0,
            chunks: self.chunks() as u32,
            chunk_len: STATS_CHUNK as u32,
        }
    }

    /// Chunks of a channel's batch x spatial elements that the train-mode reductions split
    /// into (one: each channel's workgroup walks them all).
    fn chunks(&self) -> usize {
        (self.batch * self.spatial).div_ceil(STATS_CHUNK).max(1)
    }

    /// Whether the train-mode reductions run one invocation per channel (by shape alone, so
    /// the order of every sum is fixed).
    fn serial(&self) -> bool {
        self.batch * self.spatial <= SERIAL_MAX
    }

    /// Invocations of the elementwise kernels: runs of up to `ELEMENT_RUN` (norm.wgsl)
    /// elements of one (sample, channel) plane.
    fn element_runs(&self) -> usize {
        self.batch * self.channels * self.spatial.div_ceil(ELEMENT_RUN)
    }

    /// The kernel that runs a train-mode reduction and the elementwise pass after it as one
    /// dispatch, and whether it reads `streams` through textures: where the device reads
    /// streams so (software adapters, which pay tens of microseconds a dispatch) and a channel
    /// is one chunk, over vec4s where its elements come in fours (`entries[0]`: a workgroup
    /// per channel, `entries[1]`: serial), else where its reduction is serial (`entries[2]`,
    /// reading storage). `None`: two dispatches. Values are the same either way.
    fn one_pass(
        &self,
        gpu: &Gpu,
        mode: Mode,
        streams: &[&GpuSlice],
        entries: [&'static str; 3],
    ) -> Option<(Entry, bool)> {
        if mode != Mode::Train || self.chunks() > 1 || !gpu.texture_reads {
            return None;
        }
        let entry = |name| Entry::activating(name, self.activation);
        if self.spatial.is_multiple_of(4) && streams.iter().all(|s| gpu.reads_through_texture(s)) {
            return Some((entry(entries[usize::from(self.serial())]), true));
        }
        self.serial().then(|| (entry(entries[2]), false))
    }

    /// A [`BatchNorm::one_pass`] dispatch.
    fn one_pass_dispatch(
        &self,
        gpu: &Gpu,
        (entry, textured): (Entry, bool),
        params: &NormParams,
        buffers: &[&GpuSlice],
        streams: &[&GpuSlice],
    ) -> Dispatch {
        match textured {
            true => gpu.dispatch_with_textures("norm", entry, params, buffers, streams, self.reduction_grid()),
            false => gpu.dispatch("norm", entry, params, buffers, self.reduction_grid()),
        }
    }

    /// The grid of a train-mode reduction: an invocation (serial) or a workgroup per channel.
    fn reduction_grid(&self) -> [u32; 3] {
        if self.serial() { grid(self.channels) } else { [self.channels as u32, 1, 1] }
    }

    /// A train-mode reduction's dispatch: one invocation per channel (serial) or one workgroup
    /// per channel, each over vec4s where planes' elements come in fours and the channel is
    /// one chunk, the vec4 kernels reading `streams` through textures where the device does
    /// ([`Gpu::dispatch_streaming`]). `entries`: serial, then serial over vec4s and its twin
    /// that reads textures; the same for the workgroup kernels. `activation`: the one whose
    /// gradient the backward kernels take dy through (none for the statistics kernels).
    fn reduction(
        &self,
        gpu: &Gpu,
        entries: [[&'static str; 3]; 2],
        activation: Option<OutputActivation>,
        params: &NormParams,
        buffers: &[&GpuSlice],
        streams: &[&GpuSlice],
    ) -> Dispatch {
        let quads = self.spatial.is_multiple_of(4) && params.chunks == 1;
        let entry = |name| match activation {
            Some(activation) => Entry::activating(name, activation),
            None => Entry::from(name),
        };
        let [scalar, vec4s, textured] = entries[usize::from(!self.serial())].map(entry);
        let grid = self.reduction_grid();
        match quads {
            true => gpu.dispatch_streaming(None, "norm", [vec4s, textured], params, buffers, streams, grid),
            false => gpu.dispatch("norm", scalar, params, buffers, grid),
        }
    }
}

/// Most elements of a channel that the train-mode reductions sum in one invocation (in order),
/// not in a workgroup: small maps and routers, whose channels' workgroups would spend more on
/// barriers than on sums.
const SERIAL_MAX: usize = 1024;

/// Elements per invocation of the elementwise kernels (`ELEMENT_RUN` in norm.wgsl).
const ELEMENT_RUN: usize = 32;
/// Elements of a channel per chunk of the train-mode reductions: a channel with more runs them
/// as one workgroup per chunk (so few channels of large maps still spread over a GPU), then adds
/// the chunks' sums in order.
const STATS_CHUNK: usize = 65536;

// Inputs: x, weight, bias, running_mean, running_var. Scratch: saved statistics, backward sums,
// the chunks' partial sums.
impl Op for BatchNorm {
    fn name(&self) -> &'static str {
        match self.activation {
            OutputActivation::Relu => "batchnorm_relu",
            OutputActivation::Relu6 => "batchnorm_relu6",
            _ => "batchnorm",
        }
    }

    fn scratch(&self, _backward: bool) -> Vec<usize> {
        // Saved statistics and backward sums, laid out as norm.wgsl describes; partial sums of
        // two stages, double-float pairs.
        vec![8 * self.channels, 4 * self.channels, 2 * self.channels * self.chunks() * 2]
    }

    fn differentiable(&self, input: usize) -> bool {
        input < 3
    }

    fn forward(&self, gpu: &Gpu, b: &Bound, mode: Mode) -> Vec<Dispatch> {
        let [x, weight, bias, mean, var] = b.inputs[..] else { unreachable!("batchnorm takes 5 inputs") };
        // The statistics kernels keep what the apply kernels normalise with (weight and bias:
        // bindings 5 and 6 in train mode, 4 and 5 in eval mode).
        let (saved, partials) = (b.scratch[0], b.scratch[2]);
        let params = self.params(mode);
        let channels = self.channels as u32;
        let mut out = Vec::new();
        let entries =
            ["batchnorm_train_quads_textured", "batchnorm_train_serial_quads_textured", "batchnorm_train_serial"];
        if let Some(kernel) = self.one_pass(gpu, mode, &[x], entries) {
            // Bindings 1 to 6 as the statistics kernels', the output at 8.
            let buffers = [x, mean, var, saved, weight, bias, partials, b.outputs[0]];
            out.push(self.one_pass_dispatch(gpu, kernel, &params, &buffers, &[x]));
            return out;
        }
        match mode {
            Mode::Train => {
                if params.chunks > 1 {
                    let grid = [channels, params.chunks, 1];
                    // Bindings 1 and 7 (buffers go by position; the unused ones are left out).
                    let buffers = [x, x, x, x, x, x, partials];
                    out.push(gpu.dispatch("norm", "batchnorm_chunk_sums", &params, &buffers, grid));
                }
                let buffers = [x, mean, var, saved, weight, bias, partials];
                let entries = [
                    [
                        "batchnorm_stats_train_serial",
                        "batchnorm_stats_train_serial_quads",
                        "batchnorm_stats_train_serial_quads_textured",
                    ],
                    ["batchnorm_stats_train", "batchnorm_stats_train_quads", "batchnorm_stats_train_quads_textured"],
                ];
                out.push(self.reduction(gpu, entries, None, &params, &buffers, &[x]));
            }
            Mode::Eval => out.push(gpu.dispatch(
                "norm",
                "batchnorm_stats_eval",
                &params,
                &[mean, var, saved, weight, bias],
                grid(self.channels),
            )),
        }
        let buffers = [x, weight, bias, saved, b.outputs[0]];
        let grid = grid(self.element_runs());
        // The statistics kernel before it writes only statistics: it leaves x's texture as the
        // apply kernel reads it.
        let stats = out.last();
        let entry = |name| Entry::activating(name, self.activation);
        let apply = match self.spatial.is_multiple_of(4) {
            true => {
                let entries = [entry("batchnorm_apply_quads"), entry("batchnorm_apply_quads_textured")];
                gpu.dispatch_streaming(stats, "norm", entries, &params, &buffers, &[x], grid)
            }
            false => gpu.dispatch("norm", entry("batchnorm_apply"), &params, &buffers, grid),
        };
        out.push(apply);
        out
    }

    fn backward(&self, gpu: &Gpu, b: &Bound, grads: &Grads, mode: Mode) -> Vec<Dispatch> {
        let x = b.inputs[0];
        let (saved, sums, partials) = (b.scratch[0], b.scratch[1], b.scratch[2]);
        let dy = grads.outputs[0];
        let mut params = self.params(mode);
        // Unwanted parameter gradients still need somewhere to go.
        let unused = gpu.storage("kdna.batchnorm.unused", self.channels);
        let dweight = grads.inputs[1].map_or(&unused, |t| t.slice);
        let dbias = grads.inputs[2].map_or(&unused, |t| t.slice);
        params.accumulate_weight = grads.inputs[1].is_some_and(|t| t.accumulate) as u32;
        params.accumulate_bias = grads.inputs[2].is_some_and(|t| t.accumulate) as u32;
        let channels = self.channels as u32;
        let mut out = Vec::new();
        let entries = [
            "batchnorm_backward_quads_textured",
            "batchnorm_backward_serial_quads_textured",
            "batchnorm_backward_serial",
        ];
        if let (Some(dx), Some(kernel)) = (grads.inputs[0], self.one_pass(gpu, mode, &[x, dy], entries)) {
            params.accumulate_input = dx.accumulate as u32;
            // Bindings 1 to 6 as the reductions', dx at 8.
            let buffers = [x, dy, saved, dweight, dbias, sums, partials, dx.slice];
            out.push(self.one_pass_dispatch(gpu, kernel, &params, &buffers, &[x, dy]));
            return out;
        }
        if params.chunks > 1 {
            // Bindings 1, 2, 3 and 7.
            let buffers = [x, dy, saved, x, x, x, partials];
            out.push(gpu.dispatch(
                "norm",
                Entry::activating("batchnorm_backward_chunks", self.activation),
                &params,
                &buffers,
                [channels, params.chunks, 1],
            ));
        }
        let buffers = [x, dy, saved, dweight, dbias, sums, partials];
        let entries = [
            [
                "batchnorm_backward_reduce_serial",
                "batchnorm_backward_reduce_serial_quads",
                "batchnorm_backward_reduce_serial_quads_textured",
            ],
            [
                "batchnorm_backward_reduce",
                "batchnorm_backward_reduce_quads",
                "batchnorm_backward_reduce_quads_textured",
            ],
        ];
        out.push(self.reduction(gpu, entries, Some(self.activation), &params, &buffers, &[x, dy]));
        if let Some(dx) = grads.inputs[0] {
            params.accumulate_input = dx.accumulate as u32;
            let buffers = [x, dy, saved, sums, dx.slice];
            let grid = grid(self.element_runs());
            // The twin that reads textures reads x, which eval mode without an activation
            // leaves alone.
            let reads_x = mode == Mode::Train || self.activation != OutputActivation::None;
            // The reduction before it writes only sums: it leaves the textures of x and dy as
            // this kernel reads them.
            let reduce = out.last();
            let entry = |name| Entry::activating(name, self.activation);
            let quads = entry("batchnorm_backward_input_quads");
            let input = match (self.spatial.is_multiple_of(4), reads_x) {
                (true, true) => {
                    let entries = [quads, entry("batchnorm_backward_input_quads_textured")];
                    gpu.dispatch_streaming(reduce, "norm", entries, &params, &buffers, &[x, dy], grid)
                }
                (true, false) => gpu.dispatch("norm", quads, &params, &buffers, grid),
                (false, _) => gpu.dispatch("norm", entry("batchnorm_backward_input"), &params, &buffers, grid),
            };
            out.push(input);
        }
        out
    }
}

impl Graph {
    /// BatchNorm of `x` ([N, C, ...]) with torch's defaults passed in (eps 1e-5, momentum 0.1).
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm(
        &mut self,
        x: TensorId,
        weight: TensorId,
        bias: TensorId,
        running_mean: TensorId,
        running_var: TensorId,
        eps: f32,
        momentum: f32,
    ) -> Result<TensorId> {
        let stats = [weight, bias, running_mean, running_var];
        self.batchnorm_activated(x, stats, eps, momentum, OutputActivation::None)
    }

    /// `activation` (none, relu or relu6) of BatchNorm of `x`, in one node; `stats`: weight,
    /// bias, running mean, running variance.
    pub fn batchnorm_activated(
        &mut self,
        x: TensorId,
        stats: [TensorId; 4],
        eps: f32,
        momentum: f32,
        activation: OutputActivation,
    ) -> Result<TensorId> {
        let [weight, bias, running_mean, running_var] = stats;
        if !matches!(activation, OutputActivation::None | OutputActivation::Relu | OutputActivation::Relu6) {
            bail!("batchnorm: a {activation:?} cannot follow in the same node (relu or relu6 can)");
        }
        let shape = self.shape(x).to_vec();
        if shape.len() < 2 {
            return Err(shape_error("batchnorm", "input", &shape, "[N, C, ...]"));
        }
        let channels = shape[1];
        for t in [weight, bias, running_mean, running_var] {
            if self.shape(t) != [channels] {
                return Err(shape_error(
                    "batchnorm",
                    &self.info(t).name.clone(),
                    self.shape(t),
                    &format!("[{channels}]"),
                ));
            }
        }
        if channels > 65535 {
            bail!("batchnorm: {channels} channels exceed the 65535 the kernels dispatch");
        }
        let spatial = shape[2..].iter().product();
        let op = BatchNorm { batch: shape[0], channels, spatial, eps, momentum, activation };
        Ok(self.push(op, &[x, weight, bias, running_mean, running_var], &[shape])[0])
    }
}
