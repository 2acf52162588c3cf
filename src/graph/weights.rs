//! Parameters, their gradients and optimizer state, and BatchNorm running statistics: what
//! persists across steps and is shared by every executor of one network (training at one
//! batch size, evaluating at another).
//!
//! Parameters live in one arena buffer (each tensor aligned for binding), with gradient and
//! momentum arenas of the same layout, so the optimizer updates everything in one dispatch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};

use super::{Graph, Init, Role};
use crate::gpu::{Gpu, GpuSlice};
use crate::io::{HostTensor, StateDict};

#[derive(Clone, Debug)]
pub struct Slot {
    pub shape: Vec<usize>,
    /// Byte offset in the arenas.
    pub offset: u64,
}

pub struct Weights {
    /// Parameter names in graph order.
    pub names: Vec<String>,
    slots: HashMap<String, Slot>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    velocity: wgpu::Buffer,
    /// AdamW's second moment (its first is `velocity`), made when an AdamW plan first needs it.
    second_moment: std::sync::OnceLock<wgpu::Buffer>,
    arena_bytes: u64,
    states: HashMap<String, GpuSlice>,
    state_names: Vec<String>,
    /// BatchNorm's `num_batches_tracked`, by state-dict key: train-mode runs add one.
    batch_counters: Mutex<BTreeMap<String, i64>>,
    optimizer_steps: AtomicU64,
    /// Counts changes to the parameters (writes, optimizer steps), so executors know when
    /// what they prepared from them is stale.
    param_version: AtomicU64,
}

impl Weights {
    /// Zero-filled storage for every parameter and state tensor of `graph`.
    pub fn new(gpu: &Gpu, graph: &Graph) -> Weights {
        let align = gpu.device.limits().min_storage_buffer_offset_alignment as u64;
        let mut names = Vec::new();
        let mut slots = HashMap::new();
        let mut offset = 0u64;
        for (_, t) in graph.params() {
            names.push(t.name.clone());
            slots.insert(t.name.clone(), Slot { shape: t.shape.clone(), offset });
            offset = (offset + 4 * t.numel() as u64).next_multiple_of(align);
        }
        let arena_bytes = offset.max(4);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let mut states = HashMap::new();
        let mut state_names = Vec::new();
        let mut batch_counters = BTreeMap::new();
        for t in graph.tensors.iter().filter(|t| t.role == Role::State) {
            state_names.push(t.name.clone());
            states.insert(t.name.clone(), gpu.storage(&t.name, t.numel()));
            if let Some(bn) = t.name.strip_suffix("running_mean") {
                batch_counters.insert(format!("{bn}num_batches_tracked"), 0);
            }
        }
        Weights {
            names,
            slots,
            params: gpu.create_buffer("kdna.params", arena_bytes, usage),
            grads: gpu.create_buffer("kdna.grads", arena_bytes, usage),
            velocity: gpu.create_buffer("kdna.velocity", arena_bytes, usage),
            second_moment: std::sync::OnceLock::new(),
            arena_bytes,
            states,
            state_names,
            batch_counters: Mutex::new(batch_counters),
            optimizer_steps: AtomicU64::new(0),
            param_version: AtomicU64::new(0),
        }
    }

    /// Draws every parameter and state from the distribution its tensor declares (`Init`).
    /// Each tensor's stream depends only on `seed` and its name, so adding a layer never
    /// changes how the others start.
    pub fn initialise(&self, gpu: &Gpu, graph: &Graph, seed: u64) {
        for t in graph.tensors.iter().filter(|t| matches!(t.role, Role::Param | Role::State)) {
            let values = sample(t.init, t.numel(), seed ^ fnv1a(&t.name));
            let slice = if t.role == Role::Param { self.param(&t.name) } else { self.state(&t.name) };
            gpu.write(&slice.expect("tensor of this graph"), &values);
        }
        self.params_changed();
    }

    /// Every parameter, running statistic and batch counter, under PyTorch's names.
    pub fn export(&self, gpu: &Gpu) -> Result<StateDict> {
        let mut floats = self.read_arena(gpu, &self.params)?;
        for name in &self.state_names {
            let data: Vec<f32> = gpu.read(&self.states[name])?;
            floats.insert(name.clone(), HostTensor { shape: vec![data.len()], data });
        }
        Ok(StateDict { floats, counters: self.batch_counters.lock().unwrap().clone() })
    }

    /// The optimizer's momentum of every parameter, by parameter name.
    pub fn export_momentum(&self, gpu: &Gpu) -> Result<BTreeMap<String, HostTensor>> {
        self.read_arena(gpu, &self.velocity)
    }

    /// One arena (parameters, gradients or momentum) read back, split by parameter.
    fn read_arena(&self, gpu: &Gpu, arena: &wgpu::Buffer) -> Result<BTreeMap<String, HostTensor>> {
        let values: Vec<f32> = gpu.read(&GpuSlice { buffer: arena.clone(), offset: 0, size: self.arena_bytes })?;
        Ok(self
            .names
            .iter()
            .map(|name| {
                let slot = &self.slots[name];
                let start = (slot.offset / 4) as usize;
                let data = values[start..start + slot.shape.iter().product::<usize>()].to_vec();
                (name.clone(), HostTensor { shape: slot.shape.clone(), data })
            })
            .collect())
    }

    /// Restores momentum saved by [`Weights::export_momentum`] (every parameter's, with its
    /// shape) and the number of optimizer steps taken, so the next step is not a first step.
    pub fn import_momentum(&self, gpu: &Gpu, momentum: &BTreeMap<String, HostTensor>, steps: u64) -> Result<()> {
        self.import_arena(gpu, &self.velocity, "momentum", momentum)?;
        self.optimizer_steps.store(steps, Ordering::Relaxed);
        Ok(())
    }

    /// Writes every parameter's `values` into `arena`, after checking each is there with the
    /// parameter's shape (`what` names the values in errors).
    fn import_arena(
        &self,
        gpu: &Gpu,
        arena: &wgpu::Buffer,
        what: &str,
        values: &BTreeMap<String, HostTensor>,
    ) -> Result<()> {
        for name in &self.names {
            let t = values.get(name).ok_or_else(|| anyhow::anyhow!("no {what} for parameter {name:?}"))?;
            if t.shape != self.slots[name].shape {
                bail!("{what} of {name:?} has shape {:?}, the parameter {:?}", t.shape, self.slots[name].shape);
            }
        }
        for name in &self.names {
            gpu.write(&self.slice(arena, name).expect("known"), &values[name].data);
        }
        Ok(())
    }

    /// Byte range of a parameter in the arenas.
    pub fn byte_range(&self, name: &str) -> Option<std::ops::Range<u64>> {
        let slot = self.slots.get(name)?;
        Some(slot.offset..slot.offset + 4 * slot.shape.iter().product::<usize>() as u64)
    }

    /// Loads a state dict holding exactly these tensors (a missing, extra or mis-shaped key is
    /// an error naming it, and nothing is written then).
    pub fn import(&self, gpu: &Gpu, dict: &StateDict) -> Result<()> {
        let counters = self.batch_counters.lock().unwrap().clone();
        let expected = |k: &str| self.slots.contains_key(k) || self.states.contains_key(k);
        let missing: Vec<&str> = (self.names.iter().chain(&self.state_names))
            .map(String::as_str)
            .filter(|k| !dict.floats.contains_key(*k))
            .chain(counters.keys().map(String::as_str).filter(|k| !dict.counters.contains_key(*k)))
            .collect();
        let extra: Vec<&str> = (dict.floats.keys().filter(|k| !expected(k)))
            .chain(dict.counters.keys().filter(|k| !counters.contains_key(*k)))
            .map(String::as_str)
            .collect();
        let mut misshaped = Vec::new();
        for (k, t) in &dict.floats {
            let want = match (self.slots.get(k), self.states.get(k)) {
                (Some(slot), _) => slot.shape.clone(),
                (None, Some(state)) => vec![state.len()],
                _ => continue,
            };
            if t.shape != want && !(self.states.contains_key(k) && t.numel() == want[0]) {
                misshaped.push(format!("{k}: file {:?}, network {want:?}", t.shape));
            }
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("{} missing keys: {}", missing.len(), abbreviated(&missing, ", ")));
        }
        if !extra.is_empty() {
            problems.push(format!("{} unexpected keys: {}", extra.len(), abbreviated(&extra, ", ")));
        }
        if !misshaped.is_empty() {
            let misshaped: Vec<&str> = misshaped.iter().map(String::as_str).collect();
            problems.push(format!("{} shape mismatches: {}", misshaped.len(), abbreviated(&misshaped, "; ")));
        }
        if !problems.is_empty() {
            let hint =
                if missing.len() + extra.len() > 10 { " (is it for another --arch, or --baseline?)" } else { "" };
            bail!("the weights do not fit this network{hint}: {}", problems.join(". "));
        }
        for name in &self.names {
            gpu.write(&self.param(name).expect("known"), &dict.floats[name].data);
        }
        self.params_changed();
        for name in &self.state_names {
            gpu.write(&self.states[name], &dict.floats[name].data);
        }
        let mut own = self.batch_counters.lock().unwrap();
        for (k, v) in own.iter_mut() {
            *v = dict.counters[k];
        }
        Ok(())
    }

    /// One train-mode pass of every BatchNorm (torch counts them in `num_batches_tracked`).
    pub(crate) fn count_batchnorm_pass(&self) {
        for v in self.batch_counters.lock().unwrap().values_mut() {
            *v += 1;
        }
    }

    /// Checks that `graph` has exactly these parameters and states, with the same shapes.
    pub fn check(&self, graph: &Graph) -> Result<()> {
        for t in &graph.tensors {
            let known = match t.role {
                Role::Param => self.slots.get(&t.name).map(|s| s.shape == t.shape),
                Role::State => self.states.get(&t.name).map(|s| s.len() == t.numel().max(1)),
                _ => continue,
            };
            match known {
                None => bail!("the graph's tensor {:?} is not among these weights", t.name),
                Some(false) => bail!("the graph's tensor {:?} has shape {:?}, unlike these weights", t.name, t.shape),
                Some(true) => {}
            }
        }
        Ok(())
    }

    fn slice(&self, buffer: &wgpu::Buffer, name: &str) -> Option<GpuSlice> {
        let slot = self.slots.get(name)?;
        let size = 4 * slot.shape.iter().product::<usize>().max(1) as u64;
        Some(GpuSlice { buffer: buffer.clone(), offset: slot.offset, size })
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.slots.get(name).map(|s| s.shape.as_slice())
    }

    /// Where a parameter lives. A write to it must be followed by [`Weights::params_changed`],
    /// or executors keep using what they prepared from the old values.
    pub fn param(&self, name: &str) -> Option<GpuSlice> {
        self.slice(&self.params, name)
    }

    pub fn grad(&self, name: &str) -> Option<GpuSlice> {
        self.slice(&self.grads, name)
    }

    pub fn state(&self, name: &str) -> Option<GpuSlice> {
        self.states.get(name).cloned()
    }

    pub fn state_names(&self) -> &[String] {
        &self.state_names
    }

    /// The three arenas, whole: parameters, gradients, momentum.
    pub fn arenas(&self) -> [GpuSlice; 3] {
        [&self.params, &self.grads, &self.velocity].map(|b| GpuSlice {
            buffer: b.clone(),
            offset: 0,
            size: self.arena_bytes,
        })
    }

    /// AdamW's second-moment arena (same layout as the parameters), zero when first made.
    pub fn second_moment(&self, gpu: &Gpu) -> GpuSlice {
        let buffer = self.second_moment.get_or_init(|| {
            let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            gpu.create_buffer("kdna.second_moment", self.arena_bytes, usage)
        });
        GpuSlice { buffer: buffer.clone(), offset: 0, size: self.arena_bytes }
    }

    /// AdamW's second moment of every parameter, by name; empty when no AdamW plan ran.
    pub fn export_second_moment(&self, gpu: &Gpu) -> Result<BTreeMap<String, HostTensor>> {
        match self.second_moment.get() {
            Some(buffer) => self.read_arena(gpu, buffer),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Restores a second moment saved by [`Weights::export_second_moment`].
    pub fn import_second_moment(&self, gpu: &Gpu, moment: &BTreeMap<String, HostTensor>) -> Result<()> {
        self.import_arena(gpu, &self.second_moment(gpu).buffer, "second moment", moment)
    }

    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps.load(Ordering::Relaxed)
    }

    /// Counts a step whose optimizer dispatches are recorded (the parameters change).
    pub(crate) fn count_optimizer_step(&self) {
        self.optimizer_steps.fetch_add(1, Ordering::Relaxed);
        self.params_changed();
    }

    /// Which change of the parameters they are at.
    pub fn param_version(&self) -> u64 {
        self.param_version.load(Ordering::Relaxed)
    }

    /// Notes that parameters were written (or will be by work already recorded).
    pub fn params_changed(&self) {
        self.param_version.fetch_add(1, Ordering::Relaxed);
    }
}

/// The first ten items joined by `sep`, and how many more there are.
fn abbreviated(items: &[&str], sep: &str) -> String {
    const SHOWN: usize = 10;
    let head = items[..items.len().min(SHOWN)].join(sep);
    if items.len() > SHOWN { format!("{head} ... and {} more", items.len() - SHOWN) } else { head }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn sample(init: Init, n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Uniform(bound) => (0..n).map(|_| rng.random_range(-bound..=bound)).collect(),
        Init::Constant(v) => vec![v; n],
        Init::Normal(std) => (0..n).map(|_| (std as f64 * standard_normal(&mut rng)) as f32).collect(),
        Init::TruncNormal(std) => (0..n)
            .map(|_| {
                loop {
                    let v = std as f64 * standard_normal(&mut rng);
                    if v.abs() <= 2.0 {
                        break v as f32;
                    }
                }
            })
            .collect(),
    }
}

/// Box-Muller on (0, 1]: no log of zero.
fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
