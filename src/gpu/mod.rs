//! The GPU runtime: one device and queue, a pipeline cache over the WGSL kernels in `shaders/`,
//! and the few buffer helpers every op needs.
//!
//! Every GPU buffer and every queue submission goes through [`Gpu`], which counts them, so tests
//! can prove the executor's steady state allocates nothing and submits once per step.

pub mod adapter;
mod async_read;
pub mod conv_tiles;
mod entry;
mod kernel;
pub mod shaders;

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

pub use adapter::AdapterSummary;
pub use async_read::AsyncRead;
pub use entry::{Entry, OutputActivation, Stores};
pub use kernel::{Dispatch, TEXTURE_BINDINGS, copying_each_source_once, grid, grid_of, record_all, texture_width};

/// Workgroup size of every one-dimensional kernel (see `shaders/common.wgsl`).
pub const WORKGROUP: u32 = 64;

/// A byte range of a storage buffer holding f32 (or u32) values. Equal slices are the same
/// range of the same buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSlice {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl GpuSlice {
    pub fn whole(buffer: wgpu::Buffer) -> Self {
        let size = buffer.size();
        GpuSlice { buffer, offset: 0, size }
    }

    /// Number of 4-byte elements.
    pub fn len(&self) -> usize {
        (self.size / 4) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// `len` elements from element `start` on (a byte offset the binding alignment allows).
    pub fn range(&self, start: usize, len: usize) -> GpuSlice {
        assert!(4 * (start + len) as u64 <= self.size, "range {start}+{len} past a slice of {} elements", self.len());
        GpuSlice { buffer: self.buffer.clone(), offset: self.offset + 4 * start as u64, size: 4 * len as u64 }
    }

    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

/// The device kdna computes on.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: AdapterSummary,
    /// Whether kernels may use subgroups (of at least eight lanes) on this device.
    pub subgroups: bool,
    /// Whether convolutions stage their tiles in workgroup memory (real GPUs) rather than
    /// holding large register tiles per invocation (software adapters).
    pub workgroup_tiles: bool,
    /// Whether depthwise convolutions slide windows along rows (software adapters, whose lanes
    /// pay a loop for every storage access) rather than give each invocation 8 consecutive
    /// pixels (real GPUs, whose neighbouring lanes' loads coalesce). Their weight gradients sum
    /// in different orders, so the choice is recorded in checkpoints.
    pub depthwise_rows: bool,
    /// Whether kernels that stream through activation-sized buffers (the optimizer's step,
    /// BatchNorm's vec4 kernels, the weight gradient's strided reduction, the channels-last
    /// copies, the residual add, the stem's max pool, the router's linear layers, gate
    /// gradients and average pool) read them through textures, copied before the dispatch
    /// ([`Gpu::dispatch_streaming`]; software adapters: a storage load whose address differs
    /// per lane loops over the lanes through memory, where a texel fetch gathers them in
    /// registers). Values and their order are the same either way.
    pub texture_reads: bool,
    /// Whether the forward-style tiles (storage weights) whose output pixels come in fours side
    /// by side store each channel's four as one vec4 rather than as four values (software
    /// adapters pay each storage access whose address differs per lane as a loop over the
    /// lanes). Values are the same either way.
    pub quad_stores: bool,
    /// Invocations per workgroup of the weight-gradient tiles and the lanes tiles, whose lanes
    /// take (tap, input tile) pairs or channel tiles: on a software adapter its vector width in
    /// lanes (its subgroup size: 8 at 256 bits, 16 at 512; a workgroup runs as whole vectors,
    /// so a narrower one leaves lanes idle), else 8. Each invocation's work is the same
    /// whatever the value, so values are too.
    pub tile_lanes: u32,
    kernels: kernel::KernelCache,
    buffers_created: AtomicU64,
    submissions: AtomicU64,
}

impl Gpu {
    /// Opens the adapter chosen by [`adapter::choose`]; `filter` is the `--adapter` substring.
    pub fn new(filter: Option<&str>) -> Result<Gpu> {
        let instance = adapter::instance();
        let chosen = adapter::choose(adapter::enumerate(&instance), filter)?;
        let info = AdapterSummary::of(&chosen);
        // Subgroups of at least eight lanes let kernels share loads (conv_tile_subgroup);
        // KDNA_SUBGROUPS=0 turns them off (to compare, or to get round a driver's bug).
        let subgroups = info.subgroup_min_size >= 8 && std::env::var("KDNA_SUBGROUPS").map_or(true, |v| v != "0");
        // Workgroup-memory tiles are essential on real GPUs and never win on software adapters,
        // whose large per-invocation register tiles they would replace; KDNA_WORKGROUP_TILES=0
        // or 1 overrides the choice (to compare, or to test both kernels on one adapter).
        let workgroup_tiles = match std::env::var("KDNA_WORKGROUP_TILES").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => info.device_type != wgpu::DeviceType::Cpu,
        };
        let depthwise_rows = match std::env::var("KDNA_DEPTHWISE_ROWS").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => info.device_type == wgpu::DeviceType::Cpu,
        };
        // KDNA_TEXTURE_READS=0 or 1 overrides the choice (to compare, or to test both ways).
        let texture_reads = match std::env::var("KDNA_TEXTURE_READS").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => info.device_type == wgpu::DeviceType::Cpu,
        };
        // KDNA_QUAD_STORES=0 stores the tiles' outputs one value at a time (to compare).
        let quad_stores = std::env::var("KDNA_QUAD_STORES").map_or(true, |v| v != "0");
        // KDNA_TILE_LANES overrides the choice (to compare, or to test both on one adapter).
        let tile_lanes = match std::env::var("KDNA_TILE_LANES") {
            Ok(v) => match v.parse::<u32>() {
                Ok(n) if n.is_power_of_two() && (4..=64).contains(&n) => n,
                _ => anyhow::bail!("KDNA_TILE_LANES={v:?}: expected a power of two from 4 to 64"),
            },
            Err(_) if info.device_type == wgpu::DeviceType::Cpu && subgroups => info.subgroup_min_size.clamp(8, 16),
            Err(_) => 8,
        };
        let (device, queue) = pollster::block_on(chosen.request_device(&wgpu::DeviceDescriptor {
            label: Some("kdna"),
            required_features: if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() },
            // Ask for everything the adapter offers: big networks need big storage bindings.
            required_limits: chosen.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .with_context(|| format!("opening device on adapter {:?}", info.name))?;
        Ok(Gpu {
            device,
            queue,
            info,
            subgroups,
            workgroup_tiles,
            depthwise_rows,
            texture_reads,
            quad_stores,
            tile_lanes,
            kernels: kernel::KernelCache::default(),
            buffers_created: AtomicU64::new(0),
            submissions: AtomicU64::new(0),
        })
    }

    /// How many buffers this device has created so far (for allocation tests).
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// How many command buffers batches this device has submitted so far.
    pub fn submissions(&self) -> u64 {
        self.submissions.load(Ordering::Relaxed)
    }

    pub fn create_buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        // Zero-sized bindings are invalid; keep at least one element.
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }

    /// A zero-filled storage buffer of `len` f32 (or u32) elements. It may also be bound as a
    /// uniform buffer (in ranges of at most 64 KiB): kernels read packed weights that way, since
    /// software adapters load a uniform buffer's workgroup-uniform values once per workgroup.
    pub fn storage(&self, label: &str, len: usize) -> GpuSlice {
        let buffer = self.create_buffer(
            label,
            4 * len as u64,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        );
        GpuSlice { buffer, offset: 0, size: 4 * len.max(1) as u64 }
    }

    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> GpuSlice {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let slice = self.storage(label, bytes.len().div_ceil(4));
        self.write(&slice, data);
        slice
    }

    pub fn write<T: bytemuck::Pod>(&self, slice: &GpuSlice, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        assert!(bytes.len() as u64 <= slice.size, "write of {} bytes into a {}-byte slice", bytes.len(), slice.size);
        if !bytes.is_empty() {
            self.queue.write_buffer(&slice.buffer, slice.offset, bytes);
        }
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.queue.submit([encoder.finish()])
    }

    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Records `dispatches` into one encoder and submits them.
    pub fn run(&self, dispatches: &[Dispatch]) {
        let mut encoder = self.encoder("kdna.run");
        record_all(&mut encoder, dispatches);
        self.submit(encoder);
    }

    /// Blocking read of a slice (tests, tools; never the training hot loop).
    pub fn read<T: bytemuck::Pod>(&self, slice: &GpuSlice) -> Result<Vec<T>> {
        let staging = self.create_buffer(
            "kdna.readback",
            slice.size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut encoder = self.encoder("kdna.read");
        encoder.copy_buffer_to_buffer(&slice.buffer, slice.offset, &staging, 0, slice.size);
        self.submit(encoder);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).context("waiting for the GPU")?;
        rx.recv()?.context("mapping a readback buffer")?;
        let data = bytemuck::cast_slice(&staging.get_mapped_range(..)?).to_vec();
        staging.unmap();
        Ok(data)
    }

    /// Runs `allocate`, turning an out-of-memory error of the device into an error that
    /// names `what` (instead of wgpu's default, a panic).
    pub fn allocation<T>(&self, what: &str, allocate: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = allocate();
        match pollster::block_on(scope.pop()) {
            None => Ok(value),
            Some(e) => anyhow::bail!("out of GPU memory for {what} on {}: {e}", self.info.name),
        }
    }

    /// Blocks until every submitted command has finished.
    pub fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).context("waiting for the GPU")?;
        Ok(())
    }
}
