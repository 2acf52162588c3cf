//! Parameters, their gradients and optimizer state, and BatchNorm running statistics: what
//! persists across steps and is shared by every executor of one network (training at one
//! batch size, evaluating at another).
//!
//! Parameters live in one arena buffer (each tensor aligned for binding), with gradient and
//! momentum arenas of the same layout, so the optimizer updates everything in one dispatch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};

use super::{Graph, Role};
use crate::gpu::{Gpu, GpuSlice};

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
    arena_bytes: u64,
    states: HashMap<String, GpuSlice>,
    state_names: Vec<String>,
    optimizer_steps: AtomicU64,
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
        for t in graph.tensors.iter().filter(|t| t.role == Role::State) {
            state_names.push(t.name.clone());
            states.insert(t.name.clone(), gpu.storage(&t.name, t.numel()));
        }
        Weights {
            names,
            slots,
            params: gpu.create_buffer("kdna.params", arena_bytes, usage),
            grads: gpu.create_buffer("kdna.grads", arena_bytes, usage),
            velocity: gpu.create_buffer("kdna.velocity", arena_bytes, usage),
            arena_bytes,
            states,
            state_names,
            optimizer_steps: AtomicU64::new(0),
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

    pub fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps.load(Ordering::Relaxed)
    }

    pub(crate) fn count_optimizer_step(&self) {
        self.optimizer_steps.fetch_add(1, Ordering::Relaxed);
    }
}
