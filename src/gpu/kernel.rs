//! Pipelines and prepared dispatches.
//!
//! Binding convention shared by every kernel in `shaders/`: binding 0 is the kernel's uniform
//! parameter struct, bindings 1.. are the storage buffers in the order the Rust side passes them,
//! and [`TEXTURE_BINDINGS`] are textures that hold copies of them
//! ([`Gpu::dispatch_with_textures`]). Pipelines use wgpu's derived layout, so each entry point
//! declares exactly what it reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{Entry, Gpu, GpuSlice, WORKGROUP, shaders};

/// The bindings of a kernel's texture inputs, in the order they are given (e.g.
/// `shaders/conv_tile.wgsl`'s `tf_xt`, `tf_wt`).
pub const TEXTURE_BINDINGS: [u32; 4] = [15, 14, 13, 12];

/// Texels per row of a texture that holds a buffer's vec4s in order: the device's widest 2D
/// texture (so that the most vec4s fit), rounded down to a power of two (so that kernels find
/// a texel by shifts, `texel_at` in `shaders/conv_tile.wgsl`).
pub fn texture_width(gpu: &Gpu) -> u32 {
    let widest = gpu.device.limits().max_texture_dimension_2d;
    1 << (31 - widest.leading_zeros())
}

/// Whether `source` is whole vec4s (a texel each: the copy would drop a partial last one) that
/// fit one texture of [`texture_width`]-wide rows.
fn texture_holds(gpu: &Gpu, source: &GpuSlice) -> bool {
    let width = u64::from(texture_width(gpu));
    let whole = source.offset.is_multiple_of(16) && source.size.is_multiple_of(16);
    whole && (source.size / 16).div_ceil(width) <= width
}

/// A buffer's vec4s copied into the rows of an rgba32float texture, before the dispatch that
/// reads them. On software adapters a texture fetch gathers its lanes in registers, where a
/// storage load whose address differs per lane loops over the lanes through memory.
struct TextureUpload {
    source: GpuSlice,
    texture: wgpu::Texture,
    /// Whether the dispatch copies the source in before it runs; else it reads the texture as
    /// an earlier dispatch filled it ([`Gpu::dispatch_with_textures_after`]).
    copies: bool,
}

impl TextureUpload {
    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        if !self.copies {
            return;
        }
        let width = self.texture.width();
        let texels = (self.source.size / 16) as u32;
        // Whole rows, then what is left of the last.
        let (rows, rest) = (texels / width, texels % width);
        for (row, height, columns) in [(0, rows, width), (rows, 1, rest)] {
            if height == 0 || columns == 0 {
                continue;
            }
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.source.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: self.source.offset + 16 * u64::from(row) * u64::from(width),
                        bytes_per_row: Some(16 * width),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: row, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d { width: columns, height, depth_or_array_layers: 1 },
            );
        }
    }
}

/// A dispatch with everything bound: recorded as often as wanted, allocating nothing.
pub struct Dispatch {
    pub label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    params: wgpu::Buffer,
    /// Copied into their textures before the dispatch runs.
    uploads: Vec<TextureUpload>,
    /// What `bind_group` binds, to bind it again to other textures ([`Dispatch::sharing_textures_of`]).
    bindings: Vec<u32>,
    /// The bindings it writes.
    written: Vec<u32>,
    buffers: Vec<GpuSlice>,
}

/// Records `dispatches` into `encoder`: compute passes, broken where a dispatch's texture
/// input is copied first.
pub fn record_all<'a>(encoder: &mut wgpu::CommandEncoder, dispatches: impl IntoIterator<Item = &'a Dispatch>) {
    let mut pass: Option<wgpu::ComputePass<'static>> = None;
    for d in dispatches {
        if d.uploads.iter().any(|u| u.copies) {
            pass = None;
            for upload in &d.uploads {
                upload.record(encoder);
            }
        }
        let pass = pass.get_or_insert_with(|| {
            let desc = wgpu::ComputePassDescriptor { label: Some("kdna"), timestamp_writes: None };
            encoder.begin_compute_pass(&desc).forget_lifetime()
        });
        d.record(pass);
    }
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// How many buffers the dispatch reads through textures ([`Gpu::dispatch_with_textures`]).
    pub fn textures(&self) -> usize {
        self.uploads.len()
    }

    /// How many of those it copies into their textures itself (the rest it reads as an earlier
    /// dispatch left them: [`Gpu::dispatch_with_textures_after`]).
    pub fn texture_copies(&self) -> usize {
        self.uploads.iter().filter(|u| u.copies).count()
    }

    /// The sources it reads through textures, and the textures that hold them as it runs.
    pub fn textures_read(&self) -> impl Iterator<Item = (&GpuSlice, &wgpu::Texture)> {
        self.uploads.iter().map(|u| (&u.source, &u.texture))
    }

    /// Bytes of those copies.
    pub fn texture_copy_bytes(&self) -> u64 {
        self.uploads.iter().filter(|u| u.copies).map(|u| u.source.size).sum()
    }

    /// The workgroup grid (x, y, z).
    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }

    /// This dispatch reading each source that `earlier` also reads through a texture, where
    /// `shareable` allows it, from `earlier`'s texture as `earlier` leaves it, without copying
    /// it again ([`Gpu::dispatch_with_textures_after`] for dispatches made apart): for a
    /// dispatch recorded right after `earlier`, which must not write those sources.
    pub fn sharing_textures_of(self, gpu: &Gpu, earlier: &Dispatch, shareable: impl Fn(&GpuSlice) -> bool) -> Dispatch {
        let held = |u: &TextureUpload| earlier.uploads.iter().find(|e| e.source == u.source).map(|e| e.texture.clone());
        let textures =
            self.uploads.iter().map(|u| (u.copies && shareable(&u.source)).then(|| held(u)).flatten()).collect();
        self.retextured(gpu, textures)
    }

    /// This dispatch reading upload i's source from `textures[i]` where that is given, as an
    /// earlier dispatch left it, without copying it.
    fn retextured(self, gpu: &Gpu, textures: Vec<Option<wgpu::Texture>>) -> Dispatch {
        if textures.iter().all(Option::is_none) {
            return self;
        }
        let uploads = self
            .uploads
            .into_iter()
            .zip(textures)
            .map(|(u, texture)| match texture {
                Some(texture) => TextureUpload { source: u.source, texture, copies: false },
                None => u,
            })
            .collect::<Vec<_>>();
        let buffers: Vec<&GpuSlice> = self.buffers.iter().collect();
        let bind_group = gpu.bind_group(self.label, &self.pipeline, &self.bindings, &self.params, &buffers, &uploads);
        Dispatch { bind_group, uploads, ..self }
    }

    /// Whether the dispatch may write any byte of `slice`.
    fn writes_into(&self, slice: &GpuSlice) -> bool {
        self.written.iter().map(|&b| &self.buffers[b as usize - 1]).any(|w| {
            w.buffer == slice.buffer && w.offset < slice.offset + slice.size && slice.offset < w.offset + w.size
        })
    }

    /// Replaces the parameter struct (same type as at creation), e.g. a new learning rate.
    /// Takes effect from the next submission; allocates nothing.
    pub fn set_params<P: bytemuck::Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(params));
    }
}

/// `dispatches`, recorded in this order, each reading a source that an earlier one copied into
/// a texture from that texture, where no dispatch between them writes the source: every
/// unchanged buffer is copied once (software adapters copy on one thread while the others
/// wait). For dispatches that are always recorded together, in order, from the first;
/// `filled`: textures that hold their sources whenever the first runs (source, texture).
pub fn copying_each_source_once(
    gpu: &Gpu,
    mut filled: Vec<(GpuSlice, wgpu::Texture)>,
    dispatches: Vec<Dispatch>,
) -> Vec<Dispatch> {
    // Textures no longer filled, and those that hold what they would have: dispatches that
    // read one uncopied, after the dispatch that would have filled it, read the other.
    let mut moved: Vec<(wgpu::Texture, wgpu::Texture)> = Vec::new();
    let mut out = Vec::with_capacity(dispatches.len());
    for d in dispatches {
        let textures: Vec<Option<wgpu::Texture>> = d
            .uploads
            .iter()
            .map(|u| {
                let new = match u.copies {
                    true => filled.iter().find(|(source, _)| *source == u.source).map(|(_, t)| t.clone()),
                    false => moved.iter().find(|(from, _)| *from == u.texture).map(|(_, to)| to.clone()),
                };
                if let (true, Some(to)) = (u.copies, &new) {
                    moved.push((u.texture.clone(), to.clone()));
                }
                new
            })
            .collect();
        let d = d.retextured(gpu, textures);
        for u in d.uploads.iter().filter(|u| u.copies) {
            filled.push((u.source.clone(), u.texture.clone()));
        }
        filled.retain(|(source, _)| !d.writes_into(source));
        out.push(d);
    }
    out
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

/// Modules and pipelines, each created once per device. The maps are locked only to find or
/// add a slot: the compile itself runs outside them, so that threads building different
/// pipelines compile them side by side (software adapters compile each pipeline as it is
/// created, seconds for the large tiles), while a second thread asking for the same one waits
/// for it.
#[derive(Default)]
pub(super) struct KernelCache {
    modules: Slots<&'static str, wgpu::ShaderModule>,
    pipelines: Slots<(&'static str, Entry), Kernel>,
}

/// Values by key, each made once: a slot is added under the lock, filled outside it.
type Slots<K, V> = Mutex<HashMap<K, Arc<OnceLock<V>>>>;

/// The slot for `key` in `map`, added empty if it has none.
fn slot<K: std::hash::Hash + Eq, V>(map: &Slots<K, V>, key: K) -> Arc<OnceLock<V>> {
    map.lock().unwrap().entry(key).or_default().clone()
}

/// A compiled entry point, the bindings its derived layout holds, and those it writes.
#[derive(Clone)]
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    bindings: Vec<u32>,
    written: Vec<u32>,
}

impl Gpu {
    /// The pipeline for `entry` in `shaders/<shader>.wgsl`, compiled once per device (and per
    /// set of pipeline constants).
    fn kernel(&self, shader: &'static str, entry: Entry) -> Kernel {
        slot(&self.kernels.pipelines, (shader, entry)).get_or_init(|| self.compile(shader, entry)).clone()
    }

    fn compile(&self, shader: &'static str, entry: Entry) -> Kernel {
        let uses = shaders::entry_use(shader, entry.name);
        let reads = uses.reads_store_constants;
        assert_eq!(
            reads,
            entry.stores.is_some(),
            "{shader}::{} {} the store constants ({}): dispatch it {}",
            entry.name,
            if reads { "reads" } else { "does not read" },
            shaders::STORE_CONSTANTS.join(", "),
            if reads { "with them (Entry::storing)" } else { "by its name" },
        );
        let module = slot(&self.kernels.modules, shader);
        let module = module.get_or_init(|| {
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
        let mut constants = entry.constants();
        if uses.sized_by_tile_lanes {
            constants.push((shaders::TILE_LANES, f64::from(self.tile_lanes)));
        }
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry.name),
            layout: None,
            module,
            entry_point: Some(entry.name),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        });
        Kernel { pipeline, bindings: uses.bindings, written: uses.written }
    }

    /// Prepares one dispatch of `shader::entry` with its parameter struct and storage buffers
    /// (bindings 1, 2, ... in order; those the entry leaves unused are left out of the bind
    /// group). The parameter struct gets its own small uniform buffer, written once here.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        shader: &'static str,
        entry: impl Into<Entry>,
        params: &P,
        buffers: &[&GpuSlice],
        workgroups: [u32; 3],
    ) -> Dispatch {
        self.dispatch_with(shader, entry, params, buffers, Vec::new(), workgroups)
    }

    /// Whether [`Gpu::dispatch_with_textures`] can read `source` through a texture on this
    /// device: it reads streams so, and `source` is whole vec4s that fit one texture.
    pub fn reads_through_texture(&self, source: &GpuSlice) -> bool {
        self.texture_reads && texture_holds(self, source)
    }

    /// [`Gpu::dispatch`] for an entry that also reads buffers' vec4s from textures, the i-th at
    /// binding [`TEXTURE_BINDINGS`]\[i\], in rows of [`texture_width`]: each run copies them
    /// there first.
    pub fn dispatch_with_textures<P: bytemuck::Pod>(
        &self,
        shader: &'static str,
        entry: impl Into<Entry>,
        params: &P,
        buffers: &[&GpuSlice],
        texture_sources: &[&GpuSlice],
        workgroups: [u32; 3],
    ) -> Dispatch {
        self.dispatch_with_textures_after(None, shader, entry, params, buffers, texture_sources, workgroups)
    }

    /// [`Gpu::dispatch_with_textures`], reading each source that `earlier` also reads through a
    /// texture from that texture as `earlier` left it, without copying it again: for
    /// dispatches recorded right after `earlier`, or after others that write none of those
    /// sources (the bands of one convolution pass, which share its input and weights). On
    /// software adapters a copy costs as much as a memcpy of the source on one core.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_with_textures_after<P: bytemuck::Pod>(
        &self,
        earlier: Option<&Dispatch>,
        shader: &'static str,
        entry: impl Into<Entry>,
        params: &P,
        buffers: &[&GpuSlice],
        texture_sources: &[&GpuSlice],
        workgroups: [u32; 3],
    ) -> Dispatch {
        let entry = entry.into();
        let width = texture_width(self);
        let filled = |source: &GpuSlice| earlier?.uploads.iter().find(|u| u.source == *source);
        let uploads = texture_sources
            .iter()
            .map(|&source| {
                if let Some(upload) = filled(source) {
                    return TextureUpload { source: source.clone(), texture: upload.texture.clone(), copies: false };
                }
                assert!(
                    texture_holds(self, source),
                    "{}: {} bytes are not whole vec4s in one texture",
                    entry.name,
                    source.size
                );
                let rows = (source.size / 16).div_ceil(u64::from(width)).max(1);
                let texture = self.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(entry.name),
                    size: wgpu::Extent3d { width, height: rows as u32, depth_or_array_layers: 1 },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                TextureUpload { source: source.clone(), texture, copies: true }
            })
            .collect();
        self.dispatch_with(shader, entry, params, buffers, uploads, workgroups)
    }

    /// `entries[0]` of `shader`, or on a device that reads streams through textures
    /// ([`Gpu::texture_reads`]) its twin `entries[1]`, which reads `sources` from textures
    /// ([`Gpu::dispatch_with_textures_after`], with `earlier`) where each is whole vec4s that
    /// fit one. Twins compute the same values.
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch_streaming<P: bytemuck::Pod>(
        &self,
        earlier: Option<&Dispatch>,
        shader: &'static str,
        entries: [impl Into<Entry>; 2],
        params: &P,
        buffers: &[&GpuSlice],
        sources: &[&GpuSlice],
        workgroups: [u32; 3],
    ) -> Dispatch {
        let [plain, textured] = entries;
        if self.texture_reads && sources.iter().all(|s| self.reads_through_texture(s)) {
            self.dispatch_with_textures_after(earlier, shader, textured, params, buffers, sources, workgroups)
        } else {
            self.dispatch(shader, plain, params, buffers, workgroups)
        }
    }

    fn dispatch_with<P: bytemuck::Pod>(
        &self,
        shader: &'static str,
        entry: impl Into<Entry>,
        params: &P,
        buffers: &[&GpuSlice],
        uploads: Vec<TextureUpload>,
        workgroups: [u32; 3],
    ) -> Dispatch {
        let entry = entry.into();
        let Kernel { pipeline, bindings, written } = self.kernel(shader, entry);
        let textures = TEXTURE_BINDINGS.iter().filter(|b| bindings.contains(b)).count();
        assert_eq!(textures, uploads.len(), "{shader}::{} reads {textures} textures", entry.name);
        let buffer_bindings = bindings.iter().filter(|b| !TEXTURE_BINDINGS.contains(b));
        assert!(
            buffer_bindings.max().is_none_or(|&b| b as usize <= buffers.len()),
            "{shader}::{} uses bindings {bindings:?}, but only {} buffers were given",
            entry.name,
            buffers.len()
        );
        let bytes = bytemuck::bytes_of(params);
        let uniform = self.create_buffer(
            entry.name,
            (bytes.len() as u64).next_multiple_of(16),
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&uniform, 0, bytes);
        let bind_group = self.bind_group(entry.name, &pipeline, &bindings, &uniform, buffers, &uploads);
        let buffers = buffers.iter().map(|&b| b.clone()).collect();
        Dispatch {
            label: entry.name,
            pipeline,
            bind_group,
            workgroups,
            params: uniform,
            uploads,
            bindings,
            written,
            buffers,
        }
    }

    /// The bind group of a dispatch of `pipeline` that uses `bindings`: the parameters at
    /// binding 0, the textures of `uploads` at [`TEXTURE_BINDINGS`], and buffer i at binding
    /// i + 1.
    fn bind_group(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        bindings: &[u32],
        uniform: &wgpu::Buffer,
        buffers: &[&GpuSlice],
        uploads: &[TextureUpload],
    ) -> wgpu::BindGroup {
        let views: Vec<wgpu::TextureView> =
            uploads.iter().map(|u| u.texture.create_view(&Default::default())).collect();
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .map(|&binding| wgpu::BindGroupEntry {
                binding,
                resource: match binding {
                    0 => uniform.as_entire_binding(),
                    b if TEXTURE_BINDINGS.contains(&b) => {
                        let i = TEXTURE_BINDINGS.iter().position(|&t| t == b).expect("checked");
                        wgpu::BindingResource::TextureView(&views[i])
                    }
                    b => buffers[b as usize - 1].binding(),
                },
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }
}
