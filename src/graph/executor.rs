//! Runs a [`Graph`]: buffers planned once, forward and backward dispatches prepared once, and
//! each step recorded into one command encoder and submitted once.
//!
//! Gradients: a tensor used by several ops (a parent kernel shared by its children) gets the
//! sum of their gradients. The first contributor in backward order overwrites the buffer and
//! the rest add, in a fixed order, so every run gives the same bits. Gradient buffers that no
//! op writes whole are cleared at the start of the step.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};

use super::{Graph, Node, Role, TensorId, Weights, fuse};
use crate::gpu::{Dispatch, Gpu, GpuSlice, copying_each_source_once, record_all};
use crate::ops::{Bound, GradTarget, Grads, Mode, Optimizer};

/// What an executor does each run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// Backpropagate from these tensors. Each gradient starts as [1, 0, ...] (a loss), and
    /// can be set with [`Executor::write_grad`]. The first is the one [`Executor::step`] reads.
    pub backward_from: Vec<TensorId>,
    /// Also compute gradients to `Input` tensors (tests; training does not need them).
    pub input_grads: bool,
    /// Update the parameters after backward.
    pub optimizer: Option<Optimizer>,
    /// Parameters the optimizer leaves alone (their gradients are still computed).
    pub frozen: HashSet<String>,
    /// Let GEMM convolutions compute what they alone read as they load it (KernelDNA children
    /// packed from their parents, routers' gated inputs applied in the input copy; those
    /// tensors never stored), and leave KernelDNA weight gradients unreduced for the
    /// modulation (the same values either way); and let a stem over few channels fold its
    /// kernel's columns into its channels (the same products, summed in another order)
    /// ([`super::fuse`]).
    pub fuse: bool,
}

impl Plan {
    pub fn eval() -> Plan {
        Plan {
            mode: Mode::Eval,
            backward_from: Vec::new(),
            input_grads: false,
            optimizer: None,
            frozen: HashSet::new(),
            fuse: true,
        }
    }

    pub fn train(loss: TensorId, optimizer: impl Into<Optimizer>) -> Plan {
        Plan {
            mode: Mode::Train,
            backward_from: vec![loss],
            input_grads: false,
            optimizer: Some(optimizer.into()),
            frozen: HashSet::new(),
            fuse: true,
        }
    }
}

/// Loss and correct count of one finished training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub step: u64,
    pub loss: f32,
    pub correct: f32,
}

/// Staging buffers the loss is copied into and mapped from, without waiting on the GPU.
const READBACK_RING: usize = 4;

struct Readback {
    source: GpuSlice,
    staging: Vec<wgpu::Buffer>,
    /// (step, ring slot) of steps whose values are on their way.
    in_flight: VecDeque<(u64, usize)>,
    mapped: mpsc::Receiver<usize>,
    notify: mpsc::Sender<usize>,
    done: Vec<StepStats>,
}

pub struct Executor {
    gpu: Arc<Gpu>,
    weights: Arc<Weights>,
    plan: Plan,
    values: Vec<GpuSlice>,
    roles: Vec<Role>,
    grads: Vec<Option<GpuSlice>>,
    clears: Vec<GpuSlice>,
    /// Forward dispatches that depend on parameters alone, run when the parameters changed
    /// since `prepared_for` (a [`Weights::param_version`]).
    prepare: Vec<Dispatch>,
    prepared_for: Option<u64>,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    /// Optimizer dispatches, each with the number of arena elements it updates.
    optimizer: Vec<(Dispatch, usize)>,
    /// The graph node each dispatch of `prepare`, `forward` and `backward` runs, by index into
    /// `node_names`: what a profile names.
    origins: Origins,
    readback: Option<Readback>,
    steps: u64,
    /// Tensors their one consumer computes as it loads them ([`fuse`]): never stored.
    unstored: Vec<TensorId>,
    /// Tensors whose gradients stay in their conv's unreduced layout ([`fuse`]).
    unreduced_grads: Vec<TensorId>,
}

impl Executor {
    /// An executor with weights of its own (zero-filled until written).
    pub fn new(gpu: Arc<Gpu>, graph: &Graph, plan: Plan) -> Result<Executor> {
        // Before the parameter arena exists: an oversized tensor is an error, not an allocation.
        check_sizes(&gpu, graph)?;
        let weights = Arc::new(gpu.allocation("the parameters", || Weights::new(&gpu, graph))?);
        Self::with_weights(gpu, graph, plan, weights)
    }

    /// An executor over shared weights (e.g. an eval graph beside the training graph).
    pub fn with_weights(gpu: Arc<Gpu>, graph: &Graph, plan: Plan, weights: Arc<Weights>) -> Result<Executor> {
        weights.check(graph)?;
        check_sizes(&gpu, graph)?;
        let batch = graph.tensors.iter().find(|t| t.role == Role::Input).map(|t| t.shape.first().copied().unwrap_or(1));
        let what = format!("the activations of a batch of {}", batch.unwrap_or(1));
        let fused = match plan.fuse {
            true => fuse::fuse(graph, &gpu, &plan.backward_from, plan.input_grads),
            false => fuse::Fused { graph: graph.clone(), unstored: Vec::new(), unreduced_grads: Vec::new() },
        };
        let mut exe = gpu.clone().allocation(&what, || Self::plan(gpu, &fused.graph, plan, weights))??;
        (exe.unstored, exe.unreduced_grads) = (fused.unstored, fused.unreduced_grads);
        Ok(exe)
    }

    fn plan(gpu: Arc<Gpu>, graph: &Graph, plan: Plan, weights: Arc<Weights>) -> Result<Executor> {
        let values = graph
            .tensors
            .iter()
            .map(|t| match t.role {
                Role::Param => weights.param(&t.name).expect("checked"),
                Role::State => weights.state(&t.name).expect("checked"),
                _ => gpu.storage(&t.name, t.numel()),
            })
            .collect::<Vec<_>>();
        let backward = !plan.backward_from.is_empty();
        let scratch: Vec<Vec<GpuSlice>> = graph
            .nodes
            .iter()
            .map(|n| n.op.scratch(backward).iter().map(|&len| gpu.storage(n.op.name(), len)).collect())
            .collect();

        let bound = |i: usize| Bound {
            inputs: graph.nodes[i].inputs.iter().map(|t| &values[t.0]).collect(),
            outputs: graph.nodes[i].outputs.iter().map(|t| &values[t.0]).collect(),
            scratch: scratch[i].iter().collect(),
        };
        // Fixed tensors: parameters, and what ops compute from them alone in `prepare`.
        let mut fixed: Vec<bool> = graph.tensors.iter().map(|t| t.role == Role::Param).collect();
        let (mut prepare, mut forward) = (Vec::new(), Vec::new());
        let mut origins =
            Origins { node_names: graph.nodes.iter().map(|n| node_name(graph, n)).collect(), ..Default::default() };
        for (i, node) in graph.nodes.iter().enumerate() {
            let inputs_fixed: Vec<bool> = node.inputs.iter().map(|t| fixed[t.0]).collect();
            let split = node.op.split_forward(&gpu, &bound(i), plan.mode, &inputs_fixed);
            if split.run.is_empty() && inputs_fixed.iter().all(|&f| f) {
                for t in &node.outputs {
                    fixed[t.0] = true;
                }
            }
            origins.prepare.extend(std::iter::repeat_n(i, split.prepare.len()));
            origins.forward.extend(std::iter::repeat_n(i, split.run.len()));
            prepare.extend(split.prepare);
            forward.extend(split.run);
        }
        // The prepare dispatches run one after another, all or none, and write no parameter: one
        // that reads a parameter through a texture the one before it read so (a KernelDNA
        // parent's packings: its own and its children's) reads that texture as it was filled.
        let param = |s: &GpuSlice| graph.tensors.iter().zip(&values).any(|(t, v)| t.role == Role::Param && v == s);
        let mut shared: Vec<Dispatch> = Vec::with_capacity(prepare.len());
        for d in prepare {
            let d = match shared.last() {
                Some(earlier) => d.sharing_textures_of(&gpu, earlier, param),
                None => d,
            };
            shared.push(d);
        }
        let prepare = shared;

        let mut exe = Executor {
            gpu: gpu.clone(),
            weights: weights.clone(),
            plan: plan.clone(),
            values: Vec::new(),
            roles: graph.tensors.iter().map(|t| t.role).collect(),
            grads: vec![None; graph.tensors.len()],
            clears: Vec::new(),
            prepare,
            prepared_for: None,
            forward,
            backward: Vec::new(),
            optimizer: Vec::new(),
            origins,
            readback: None,
            steps: 0,
            unstored: Vec::new(),
            unreduced_grads: Vec::new(),
        };
        if let Some(&first) = plan.backward_from.first() {
            exe.plan_backward(graph, &plan.backward_from, &values, &scratch)?;
            exe.readback = Some(Readback::new(&gpu, values[first.0].clone()));
        }
        if let Some(optimizer) = plan.optimizer {
            if plan.backward_from.is_empty() {
                bail!("an optimizer needs a loss to backpropagate from");
            }
            exe.optimizer = optimizer_dispatches(&gpu, &weights, &optimizer, &plan.frozen);
        }
        // The parameters' textures that prepare dispatches read: they hold the parameters as
        // they are whenever a run starts (a change of them makes the next run prepare again).
        let param_textures = exe
            .prepare
            .iter()
            .flat_map(Dispatch::textures_read)
            .filter(|(source, _)| param(source))
            .map(|(source, texture)| (source.clone(), texture.clone()))
            .collect();
        exe.copy_each_source_once(param_textures);
        exe.values = values;
        Ok(exe)
    }

    /// A run's dispatches (forward, backward, optimizer: always recorded together, in order)
    /// reading each buffer that an earlier one copied into a texture, and none wrote since,
    /// from that texture, and each of `filled`'s sources from its texture
    /// ([`copying_each_source_once`]).
    fn copy_each_source_once(&mut self, filled: Vec<(GpuSlice, wgpu::Texture)>) {
        let (forward, backward) = (self.forward.len(), self.backward.len());
        let lens: Vec<usize> = self.optimizer.iter().map(|(_, len)| *len).collect();
        let run = std::mem::take(&mut self.forward)
            .into_iter()
            .chain(std::mem::take(&mut self.backward))
            .chain(std::mem::take(&mut self.optimizer).into_iter().map(|(d, _)| d));
        let mut run = copying_each_source_once(&self.gpu, filled, run.collect()).into_iter();
        self.forward = run.by_ref().take(forward).collect();
        self.backward = run.by_ref().take(backward).collect();
        self.optimizer = run.zip(lens).collect();
    }

    fn plan_backward(
        &mut self,
        graph: &Graph,
        roots: &[TensorId],
        values: &[GpuSlice],
        scratch: &[Vec<GpuSlice>],
    ) -> Result<()> {
        let gpu = self.gpu.clone();
        // Tensors whose gradient is wanted: parameters, optionally inputs, and activations
        // computed from them.
        let mut requires = vec![false; graph.tensors.len()];
        for (i, t) in graph.tensors.iter().enumerate() {
            requires[i] = t.role == Role::Param || (t.role == Role::Input && self.plan.input_grads);
        }
        for node in &graph.nodes {
            let any = node.inputs.iter().enumerate().any(|(i, t)| node.op.differentiable(i) && requires[t.0]);
            for t in &node.outputs {
                requires[t.0] = any;
            }
        }
        if let Some(root) = roots.iter().find(|r| !requires[r.0]) {
            bail!("nothing that needs a gradient leads to {:?}", graph.info(*root).name);
        }
        // Tensors on a path to a root.
        let mut reaches = vec![false; graph.tensors.len()];
        for root in roots {
            reaches[root.0] = true;
        }
        for node in graph.nodes.iter().rev() {
            if node.outputs.iter().any(|t| reaches[t.0]) {
                for (i, t) in node.inputs.iter().enumerate() {
                    reaches[t.0] |= node.op.differentiable(i);
                }
            }
        }
        let wanted = |t: TensorId| requires[t.0] && reaches[t.0];

        for (i, t) in graph.tensors.iter().enumerate() {
            if !wanted(TensorId(i)) {
                continue;
            }
            self.grads[i] = Some(match t.role {
                Role::Param => self.weights.grad(&t.name).expect("checked"),
                _ => gpu.storage(&format!("grad.{}", t.name), t.numel()),
            });
        }
        // A root's gradient: d(loss)/d(loss) = 1 in its first element.
        for root in roots {
            let mut seed = vec![0f32; graph.info(*root).numel()];
            seed[0] = 1.0;
            gpu.write(self.grads[root.0].as_ref().expect("roots are wanted"), &seed);
        }

        let mut written: HashSet<TensorId> = roots.iter().copied().collect();
        for (n, node) in graph.nodes.iter().enumerate().rev() {
            if !node.outputs.iter().any(|&t| wanted(t)) {
                continue;
            }
            // An output no consumer wrote a gradient to contributes zero.
            for &t in &node.outputs {
                if self.grads[t.0].is_none() {
                    self.grads[t.0] = Some(gpu.storage("grad.unused", graph.info(t).numel()));
                }
                if written.insert(t) {
                    self.clears.push(self.grads[t.0].clone().unwrap());
                }
            }
            let mut targets = Vec::new();
            for (i, &t) in node.inputs.iter().enumerate() {
                if !(node.op.differentiable(i) && wanted(t)) {
                    targets.push(None);
                    continue;
                }
                let slice = self.grads[t.0].clone().unwrap();
                let accumulate = if written.contains(&t) {
                    true
                } else if node.op.covers_input(i) {
                    false
                } else {
                    self.clears.push(slice.clone());
                    true
                };
                written.insert(t);
                targets.push(Some((slice, accumulate)));
            }
            let outputs: Vec<&GpuSlice> = node.outputs.iter().map(|t| self.grads[t.0].as_ref().unwrap()).collect();
            let grads = Grads {
                outputs,
                inputs: targets
                    .iter()
                    .map(|o| o.as_ref().map(|(slice, accumulate)| GradTarget { slice, accumulate: *accumulate }))
                    .collect(),
            };
            let bound = Bound {
                inputs: node.inputs.iter().map(|t| &values[t.0]).collect(),
                outputs: node.outputs.iter().map(|t| &values[t.0]).collect(),
                scratch: scratch[n].iter().collect(),
            };
            let dispatches = node.op.backward(&gpu, &bound, &grads, self.plan.mode);
            self.origins.backward.extend(std::iter::repeat_n(n, dispatches.len()));
            self.backward.extend(dispatches);
        }
        // Parameters off the loss path must not feed stale gradients to the optimizer.
        for (id, t) in graph.params() {
            if !written.contains(&id) {
                self.clears.push(self.weights.grad(&t.name).expect("checked"));
            }
        }
        Ok(())
    }

    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Writes f32 values into a tensor (an input, a parameter or a state).
    pub fn write(&self, t: TensorId, data: &[f32]) -> Result<()> {
        let slice = &self.values[t.0];
        if data.len() != slice.len() {
            bail!("tensor {} holds {} values, got {}", t.0, slice.len(), data.len());
        }
        self.gpu.write(slice, data);
        if self.roles[t.0] == Role::Param {
            self.weights.params_changed();
        }
        Ok(())
    }

    /// Writes class labels.
    pub fn write_labels(&self, t: TensorId, labels: &[u32]) -> Result<()> {
        let slice = &self.values[t.0];
        if labels.len() != slice.len() {
            bail!("labels tensor holds {} values, got {}", slice.len(), labels.len());
        }
        self.gpu.write(slice, labels);
        Ok(())
    }

    /// Sets the gradient a backward pass starts from (only the root's is kept between runs).
    pub fn write_grad(&self, t: TensorId, data: &[f32]) -> Result<()> {
        let slice = self.grads[t.0].as_ref().context("tensor has no gradient in this plan")?;
        if data.len() != slice.len() {
            bail!("gradient of tensor {} holds {} values, got {}", t.0, slice.len(), data.len());
        }
        self.gpu.write(slice, data);
        Ok(())
    }

    /// Where tensor `t` lives (for tools that copy values out themselves).
    pub fn slice(&self, t: TensorId) -> &GpuSlice {
        &self.values[t.0]
    }

    pub fn read(&self, t: TensorId) -> Result<Vec<f32>> {
        if self.unstored.contains(&t) {
            bail!(
                "tensor {} is computed by the convolution that reads it as it loads it, never stored (Plan::fuse)",
                t.0
            );
        }
        self.gpu.read(&self.values[t.0])
    }

    pub fn read_grad(&self, t: TensorId) -> Result<Vec<f32>> {
        if self.unreduced_grads.contains(&t) {
            bail!("the gradient of tensor {} stays in its convolution's unreduced layout (Plan::fuse)", t.0);
        }
        let slice = self.grads[t.0].as_ref().context("tensor has no gradient in this plan")?;
        self.gpu.read(slice)
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f32) {
        if let Some(optimizer) = &mut self.plan.optimizer {
            optimizer.set_lr(lr);
        }
    }

    /// Records the whole run (forward, backward, optimizer) into one encoder and submits it.
    pub fn run(&mut self) -> Result<()> {
        let encoder = self.record();
        self.gpu.submit(encoder);
        Ok(())
    }

    /// The prepare dispatches if the parameters changed since they last ran (and notes that
    /// they will have run).
    fn take_prepare(&mut self) -> &[Dispatch] {
        let version = self.weights.param_version();
        if self.prepared_for == Some(version) {
            return &[];
        }
        self.prepared_for = Some(version);
        &self.prepare
    }

    fn record(&mut self) -> wgpu::CommandEncoder {
        // Before this run's optimizer step changes the version.
        let prepare = self.take_prepare().len();
        if self.plan.mode == Mode::Train {
            self.weights.count_batchnorm_pass();
        }
        if let Some(optimizer) = &self.plan.optimizer {
            let taken = self.weights.optimizer_steps();
            for (d, len) in &self.optimizer {
                match optimizer {
                    Optimizer::Sgd(sgd) => d.set_params(&self.gpu, &sgd.params(*len, taken == 0)),
                    Optimizer::AdamW(adamw) => d.set_params(&self.gpu, &adamw.params(*len, taken + 1)),
                }
            }
            self.weights.count_optimizer_step();
        }
        let mut encoder = self.gpu.encoder("kdna.step");
        if !self.plan.backward_from.is_empty() {
            for c in &self.clears {
                encoder.clear_buffer(&c.buffer, c.offset, Some(c.size));
            }
        }
        let run = self.forward.iter().chain(&self.backward).chain(self.optimizer.iter().map(|(d, _)| d));
        record_all(&mut encoder, self.prepare[..prepare].iter().chain(run));
        encoder
    }

    /// One training step: the run plus an asynchronous readback of the loss tensor. Returns
    /// the step's number; its [`StepStats`] arrive later through [`Executor::poll_stats`].
    pub fn step(&mut self) -> Result<u64> {
        let step = self.steps;
        // A slot first: once recorded, the step's work (and what it prepares) must be submitted.
        let slot = self.readback.as_mut().context("step() needs a plan with a loss")?.free_slot(&self.gpu)?;
        let mut encoder = self.record();
        let readback = self.readback.as_mut().expect("checked above");
        let bytes = readback.source.size.min(8);
        encoder.copy_buffer_to_buffer(
            &readback.source.buffer,
            readback.source.offset,
            &readback.staging[slot],
            0,
            bytes,
        );
        self.gpu.submit(encoder);
        let notify = readback.notify.clone();
        readback.staging[slot].map_async(wgpu::MapMode::Read, .., move |r| {
            if r.is_ok() {
                let _ = notify.send(slot);
            }
        });
        readback.in_flight.push_back((step, slot));
        self.steps += 1;
        Ok(step)
    }

    /// Statistics of steps finished since the last call, without waiting.
    pub fn poll_stats(&mut self) -> Result<Vec<StepStats>> {
        let Some(readback) = self.readback.as_mut() else {
            return Ok(Vec::new());
        };
        self.gpu.device.poll(wgpu::PollType::Poll).context("polling the GPU")?;
        readback.collect();
        Ok(std::mem::take(&mut readback.done))
    }

    /// Waits for every submitted step and returns the statistics not yet returned.
    pub fn finish(&mut self) -> Result<Vec<StepStats>> {
        self.gpu.wait()?;
        if let Some(readback) = self.readback.as_mut() {
            while !readback.in_flight.is_empty() {
                readback.wait_one(&self.gpu)?;
            }
        }
        self.poll_stats()
    }

    /// Wall time of every dispatch of one run, in order, each submitted alone and waited for: a
    /// coarse profile that needs no timestamp queries (software adapters report wall time
    /// anyway). Runs the step's work once, so parameters move if the plan has an optimizer.
    pub fn profile(&mut self) -> Result<Vec<DispatchTime>> {
        let prepare = self.take_prepare().len();
        if self.plan.optimizer.is_some() {
            self.weights.params_changed();
        }
        let o = &self.origins;
        let name = |n: &usize| o.node_names[*n].clone();
        let dispatches =
            (self.prepare[..prepare].iter().zip(o.prepare.iter().map(name)).map(|(d, n)| (Phase::Prepare, n, d)))
                .chain(self.forward.iter().zip(o.forward.iter().map(name)).map(|(d, n)| (Phase::Forward, n, d)))
                .chain(self.backward.iter().zip(o.backward.iter().map(name)).map(|(d, n)| (Phase::Backward, n, d)))
                .chain(self.optimizer.iter().map(|(d, _)| (Phase::Optimizer, "parameters".to_string(), d)))
                .collect::<Vec<_>>();
        let mut times = Vec::with_capacity(dispatches.len());
        for (phase, node, d) in dispatches {
            let start = std::time::Instant::now();
            self.gpu.run(std::slice::from_ref(d));
            self.gpu.wait()?;
            let seconds = start.elapsed().as_secs_f64();
            let (kernel, workgroups, textures, texture_copies, copied_bytes) =
                (d.label, d.workgroups(), d.textures(), d.texture_copies(), d.texture_copy_bytes());
            times.push(DispatchTime {
                phase,
                node,
                kernel,
                workgroups,
                textures,
                texture_copies,
                copied_bytes,
                seconds,
            });
        }
        Ok(times)
    }

    /// Number of dispatches of a run after the parameters changed (forward, with what it
    /// prepares from the parameters; backward; optimizer).
    pub fn dispatch_counts(&self) -> (usize, usize, usize) {
        (self.prepare.len() + self.forward.len(), self.backward.len(), self.optimizer.len())
    }

    /// Dispatches of a run over unchanged parameters (forward, backward, optimizer): an eval
    /// run after the first.
    pub fn steady_dispatch_counts(&self) -> (usize, usize, usize) {
        (self.forward.len(), self.backward.len(), self.optimizer.len())
    }
}

/// Which part of a run a dispatch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Computed from the parameters alone, once per change of them (children, folded weights).
    Prepare,
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }
}

/// One dispatch of a profiled run ([`Executor::profile`]).
#[derive(Clone, Debug)]
pub struct DispatchTime {
    pub phase: Phase,
    /// The graph node it runs: its op and layer (`conv2d layer1.0.conv1`).
    pub node: String,
    /// The kernel's entry point.
    pub kernel: &'static str,
    pub workgroups: [u32; 3],
    /// Buffers it reads through textures.
    pub textures: usize,
    /// How many of those it copies there first (and is timed with); it reads the others as an
    /// earlier dispatch of the run left them.
    pub texture_copies: usize,
    /// Bytes of those copies.
    pub copied_bytes: u64,
    pub seconds: f64,
}

/// The node behind every dispatch, by phase (see [`Executor::profile`]).
#[derive(Default)]
struct Origins {
    node_names: Vec<String>,
    prepare: Vec<usize>,
    forward: Vec<usize>,
    backward: Vec<usize>,
}

/// A node's name in profiles: its op, and the layer its parameters belong to
/// (`conv2d layer1.0.conv1`), or for an op without parameters the tensor it computes.
fn node_name(graph: &Graph, node: &Node) -> String {
    let param = node.inputs.iter().map(|t| graph.info(*t)).find(|t| t.role == Role::Param);
    let what = match (param, node.outputs.first()) {
        (Some(p), _) => p.name.rsplit_once('.').map_or(p.name.as_str(), |(layer, _)| layer),
        (None, Some(t)) => graph.info(*t).name.as_str(),
        (None, None) => return node.op.name().to_string(),
    };
    format!("{} {what}", node.op.name())
}

/// Every tensor must fit one storage binding of this adapter.
fn check_sizes(gpu: &Gpu, graph: &Graph) -> Result<()> {
    let limit = gpu.device.limits().max_storage_buffer_binding_size;
    if let Some(t) = graph.tensors.iter().find(|t| 4 * t.numel() as u64 > limit) {
        bail!(
            "tensor {:?} {:?} needs {} MiB, more than the {} MiB one buffer binding may hold on {}; use a smaller batch",
            t.name,
            t.shape,
            (4 * t.numel() as u64) >> 20,
            limit >> 20,
            gpu.info.name
        );
    }
    Ok(())
}

/// The optimizer over the parameter arena: one dispatch per run of adjacent trainable
/// parameters (SGD: two, four-wide and scalar), in chunks no larger than one storage binding
/// may be.
fn optimizer_dispatches(
    gpu: &Gpu,
    weights: &Weights,
    optimizer: &Optimizer,
    frozen: &HashSet<String>,
) -> Vec<(Dispatch, usize)> {
    let limits = gpu.device.limits();
    let align = limits.min_storage_buffer_offset_alignment as u64;
    let max_chunk = (limits.max_storage_buffer_binding_size / align * align).max(align);
    let [params, grads, velocity] = weights.arenas();
    // Trainable byte ranges, merged where only alignment padding separates them.
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for name in weights.names.iter().filter(|n| !frozen.contains(*n)) {
        let r = weights.byte_range(name).expect("own parameter");
        match ranges.last_mut() {
            Some(last) if r.start <= last.end.next_multiple_of(align) => last.end = r.end,
            _ => ranges.push(r),
        }
    }
    let mut out = Vec::new();
    for range in ranges {
        let mut offset = range.start;
        while offset < range.end {
            let size = max_chunk.min(range.end - offset);
            let part = |s: &GpuSlice| GpuSlice { buffer: s.buffer.clone(), offset, size };
            let (p, g, m) = (part(&params), part(&grads), part(&velocity));
            match optimizer {
                Optimizer::Sgd(sgd) => out.extend(sgd.dispatches(gpu, &p, &g, &m, true)),
                Optimizer::AdamW(adamw) => {
                    let v = part(&weights.second_moment(gpu));
                    out.push((adamw.dispatch(gpu, [&p, &g, &m, &v], 1), p.len()));
                }
            }
            offset += size;
        }
    }
    out
}

impl Readback {
    fn new(gpu: &Gpu, source: GpuSlice) -> Readback {
        let staging = (0..READBACK_RING)
            .map(|_| {
                gpu.create_buffer("kdna.loss.readback", 8, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)
            })
            .collect();
        let (notify, mapped) = mpsc::channel();
        Readback { source, staging, in_flight: VecDeque::new(), mapped, notify, done: Vec::new() }
    }

    /// A ring slot not in flight, waiting for the oldest step if all are.
    fn free_slot(&mut self, gpu: &Gpu) -> Result<usize> {
        if self.in_flight.len() == READBACK_RING {
            self.wait_one(gpu)?;
        }
        let busy: Vec<usize> = self.in_flight.iter().map(|&(_, s)| s).collect();
        Ok((0..READBACK_RING).find(|s| !busy.contains(s)).expect("a free slot"))
    }

    fn wait_one(&mut self, gpu: &Gpu) -> Result<()> {
        let before = self.in_flight.len();
        while self.in_flight.len() == before {
            gpu.device.poll(wgpu::PollType::wait_indefinitely()).context("waiting for the GPU")?;
            self.collect();
        }
        Ok(())
    }

    /// Reads every mapped slot; stats are kept in step order.
    fn collect(&mut self) {
        let mapped: Vec<usize> = self.mapped.try_iter().collect();
        for slot in mapped {
            let Some(pos) = self.in_flight.iter().position(|&(_, s)| s == slot) else {
                continue;
            };
            let (step, _) = self.in_flight.remove(pos).unwrap();
            let values: Vec<f32> = {
                let view = self.staging[slot].get_mapped_range(..).expect("mapped");
                bytemuck::cast_slice(&view).to_vec()
            };
            self.staging[slot].unmap();
            self.done.push(StepStats { step, loss: values[0], correct: values.get(1).copied().unwrap_or(0.0) });
        }
        self.done.sort_by_key(|s| s.step);
    }
}
