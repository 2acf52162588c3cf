//! Reading several slices back without waiting: one staging buffer, copies recorded after the
//! work already queued, mapped when the GPU gets there. For tools that watch a run (telemetry)
//! and must not stall it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use super::{Gpu, GpuSlice};

pub struct AsyncRead {
    sources: Vec<GpuSlice>,
    staging: wgpu::Buffer,
    /// Set by the map callback once the staging buffer can be read.
    mapped: Arc<AtomicBool>,
    pending: bool,
}

impl AsyncRead {
    /// A reader of `sources` (f32 slices), with a staging buffer made once and reused.
    pub fn new(gpu: &Gpu, label: &str, sources: Vec<GpuSlice>) -> AsyncRead {
        let size = sources.iter().map(|s| s.size).sum::<u64>().max(4);
        let staging = gpu.create_buffer(label, size, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        AsyncRead { sources, staging, mapped: Arc::new(AtomicBool::new(false)), pending: false }
    }

    /// Queues copies of every source, ordered after all work submitted so far.
    pub fn start(&mut self, gpu: &Gpu) -> Result<()> {
        if self.pending {
            bail!("an asynchronous read was started twice");
        }
        let mut encoder = gpu.encoder("kdna.async_read");
        let mut offset = 0;
        for s in &self.sources {
            encoder.copy_buffer_to_buffer(&s.buffer, s.offset, &self.staging, offset, s.size);
            offset += s.size;
        }
        gpu.submit(encoder);
        self.mapped.store(false, Ordering::Release);
        let mapped = self.mapped.clone();
        self.staging.map_async(wgpu::MapMode::Read, .., move |r| {
            if r.is_ok() {
                mapped.store(true, Ordering::Release);
            }
        });
        self.pending = true;
        Ok(())
    }

    /// The values of each source once they have arrived (`wait`: block until they do);
    /// `None` while they are on their way or when no read was started.
    pub fn take(&mut self, gpu: &Gpu, wait: bool) -> Result<Option<Vec<Vec<f32>>>> {
        if !self.pending {
            return Ok(None);
        }
        let poll = if wait { wgpu::PollType::wait_indefinitely() } else { wgpu::PollType::Poll };
        gpu.device.poll(poll).context("polling the GPU")?;
        if !self.mapped.load(Ordering::Acquire) {
            if wait {
                bail!("an asynchronous read finished without its buffer being mapped");
            }
            return Ok(None);
        }
        let values = {
            let view = self.staging.get_mapped_range(..)?;
            let mut offset = 0usize;
            self.sources
                .iter()
                .map(|s| {
                    let bytes = &view[offset..offset + s.size as usize];
                    offset += s.size as usize;
                    bytemuck::pod_collect_to_vec::<u8, f32>(bytes)
                })
                .collect()
        };
        self.staging.unmap();
        self.pending = false;
        Ok(Some(values))
    }
}
