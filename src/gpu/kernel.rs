//! Pipelines and prepared dispatches.
//!
//! Binding convention shared by every kernel in `shaders/`: binding 0 is the kernel's uniform
//! parameter struct, bindings 1.. are the storage buffers in the order the Rust side passes them.
//! Pipelines use wgpu's derived layout, so each entry point declares exactly what it reads.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Gpu, GpuSlice, WORKGROUP, shaders};

/// A dispatch with everything bound: recorded as often as wanted, allocating nothing.
pub struct Dispatch {
    pub label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    params: wgpu::Buffer,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The workgroup grid (x, y, z).
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// Replaces the parameter struct (same type as at creation), e.g. a new learning rate.
    /// Takes effect from the next submission; allocates nothing.
    pub fn set_params<P: bytemuck::Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }
}

/// Workgroup grid covering `invocations` threads of a one-dimensional kernel with
/// [`WORKGROUP`] threads per group. Large grids fold into y, since a dimension is limited to
/// 65535 groups; kernels rebuild the flat index with `flat_index` in `shaders/common.wgsl`.
pub fn grid(invocations: usize) -> [u32; 3] {
    grid_of(invocations, WORKGROUP)
}

/// [`grid`] for kernels of `workgroup` threads per group.
pub fn grid_of(invocations: usize, workgroup: u32) -> [u32; 3] {
    let groups = invocations.div_ceil(workgroup as usize).max(1);
    let x = groups.min(65535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

#[derive(Default)]
pub(super) struct KernelCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Kernel>>,
}

/// A compiled entry point and the bindings its derived layout holds.
#[derive(Clone)]
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    bindings: Vec<u32>,
}

impl Gpu {
    /// The pipeline for `entry` in `shaders/<shader>.wgsl`, compiled once per device.
    fn kernel(&self, shader: &'static str, entry: &'static str) -> Kernel {
        let mut pipelines = self.kernels.pipelines.lock().unwrap();
        if let Some(p) = pipelines.get(&(shader, entry)) {
            return p.clone();
        }
        let mut modules = self.kernels.modules.lock().unwrap();
        let module = modules.entry(shader).or_insert_with(|| {
            let source = shaders::source(shader);
            let desc =
                wgpu::ShaderModuleDescriptor { label: Some(shader), source: wgpu::ShaderSource::Wgsl(source.into()) };
            // Bounds checks stay; naga's forced loop bounding (a counter stepped and tested in
            // every loop iteration, against loops a driver could take as infinite) goes: on
            // lavapipe it cost 3-5% of a ResNet18 training step.
            let checks =
                wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
            // SAFETY: the modules are kdna's own kernels (`shaders/`), and every loop in them
            // ends: each runs over counts from its dispatch's parameters or constants, stepping
            // towards them.
            unsafe { self.device.create_shader_module_trusted(desc, checks) }
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let kernel = Kernel { pipeline, bindings: shaders::used_bindings(shader, entry) };
        pipelines.insert((shader, entry), kernel.clone());
        kernel
    }

    /// Prepares one dispatch of `shader::entry` with its parameter struct and storage buffers
    /// (bindings 1, 2, ... in order; those the entry leaves unused are left out of the bind
    /// group). The parameter struct gets its own small uniform buffer, written once here.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        shader: &'static str,
        entry: &'static str,
        params: &P,
        buffers: &[&GpuSlice],
        workgroups: [u32; 3],
    ) -> Dispatch {
        let Kernel { pipeline, bindings } = self.kernel(shader, entry);
        assert!(
            bindings.last().is_none_or(|&b| b as usize <= buffers.len()),
            "{shader}::{entry} uses bindings {bindings:?}, but only {} buffers were given",
            buffers.len()
        );
        let bytes = bytemuck::bytes_of(params);
        let uniform = self.create_buffer(
            entry,
            (bytes.len() as u64).next_multiple_of(16),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&uniform, 0, bytes);
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .map(|&binding| wgpu::BindGroupEntry {
                binding,
                resource: match binding {
                    0 => uniform.as_entire_binding(),
                    b => buffers[b as usize - 1].binding(),
                },
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { label: entry, pipeline, bind_group, workgroups, params: uniform }
    }
}
