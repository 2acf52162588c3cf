//! How fast the adapter feeds a conv tile's multiply-adds from each kind of memory. Every
//! variant runs the arithmetic of `conv_tile_forward_storage_64x8` (8 pixels x 64 output
//! channels per invocation; each eight lanes load eight weight vec4s at once and share them by
//! subgroup broadcast) and differs only in where it loads from: pixels from a storage buffer or
//! a sampled texture, weights from a storage buffer, a texture or a uniform buffer.
//!
//! Why it matters: on lavapipe (Mesa 22.3), a storage-buffer load whose address differs per
//! lane becomes a loop over the lanes that inserts each lane's value into the vector through
//! the stack, and on CPUs without AVX-512 every insert waits for a store to forward. Texture
//! fetches and uniform-buffer loads gather their lanes with fixed lane indices instead.
//!
//!     cargo bench --bench tile_reads              # best of ten runs per variant
//!     cargo bench --bench tile_reads -- --quick   # best of three (CI)

use std::time::Instant;

use kdna::gpu::Gpu;
use wgpu::util::DeviceExt;

/// Invocations, and input quads (steps) per invocation.
const INVOCATIONS: u32 = 1024;
const STEPS: u32 = 64;
/// Texels per texture row.
const TEXTURE_WIDTH: u32 = 4096;
/// Weight vec4s: 64 per step, wrapped into one uniform buffer's 64 KiB.
const WEIGHT_VEC4S: u32 = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Storage,
    Texture,
    Uniform,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Storage => "storage",
            Source::Texture => "texture",
            Source::Uniform => "uniform",
        }
    }
}

fn main() {
    // As the kdna binary does, so that the figures are the ones its users get.
    // SAFETY: no other thread has started yet.
    unsafe { kdna::gpu::adapter::set_software_driver_options() };
    let quick = std::env::args().any(|a| a == "--quick");
    let gpu = Gpu::new(None).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    });
    println!("adapter: {} ({:?})", gpu.info.name, gpu.info.backend);
    if !gpu.device.features().contains(wgpu::Features::SUBGROUP) {
        println!("(no subgroups of eight lanes: the tile kernels this measures do not run here)");
        return;
    }
    let variants = [
        (Source::Storage, Source::Storage),
        (Source::Storage, Source::Uniform),
        (Source::Texture, Source::Storage),
        (Source::Texture, Source::Texture),
        (Source::Texture, Source::Uniform),
    ];
    let bench = Bench::new(&gpu, &variants);
    let flops = 2.0 * 4.0 * (INVOCATIONS * 8 * 64 * STEPS) as f64;
    println!("{:<10} {:<10} {:>9} {:>9}", "pixels", "weights", "ms", "GFLOP/s");
    for (i, (x, w)) in variants.iter().enumerate() {
        let secs = bench.best_of(i, if quick { 3 } else { 10 });
        println!("{:<10} {:<10} {:>9.2} {:>9.1}", x.name(), w.name(), secs * 1e3, flops / secs / 1e9);
    }
}

/// The kernel of one variant: the loop of `conv_tile_forward_storage_64x8` with its loads
/// from `x` and `w`.
fn tile_kernel(name: &str, x: Source, w: Source) -> String {
    let mut code = vec![
        "@compute @workgroup_size(16)".to_string(),
        format!(
            "fn {name}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{"
        ),
        "    let base = gid.x * 8u * STEPS;".to_string(),
    ];
    code.extend((0..8).map(|i| (0..16).map(|j| format!("var a{i}_{j} = vec4<f32>(); ")).collect::<String>()));
    code.push("    for (var k = 0u; k < STEPS; k++) {".into());
    code.push("        let w = (k * 64u) % (WEIGHT_VEC4S - 64u);".into());
    let names: Vec<String> = (0..4).flat_map(|k| (0..16).map(move |j| format!("w{k}_{j}"))).collect();
    for (g, group) in names.chunks(8).enumerate() {
        let at = format!("w + {}u + (lane & 7u)", 8 * g);
        let load = match w {
            Source::Storage => format!("ws[{at}]"),
            Source::Texture => format!("texel(wt, {at})"),
            Source::Uniform => format!("wu[{at}]"),
        };
        code.push(format!("        let {}_lanes = {load};", group[0]));
        code.extend(
            group
                .iter()
                .enumerate()
                .map(|(m, n)| format!("        let {n} = subgroupBroadcast({}_lanes, {m}u);", group[0])),
        );
    }
    for i in 0..8 {
        let at = format!("base + {i}u * STEPS + k");
        let load = if x == Source::Texture { format!("texel(xt, {at})") } else { format!("xs[{at}]") };
        code.push(format!("        let x{i} = {load};"));
    }
    for i in 0..8 {
        for j in 0..16 {
            code.push(format!(
                "        a{i}_{j} += x{i}.x * w0_{j}; a{i}_{j} += x{i}.y * w1_{j}; a{i}_{j} += x{i}.z * w2_{j}; a{i}_{j} += x{i}.w * w3_{j};"
            ));
        }
    }
    code.push("    }".into());
    code.push("    var sum = vec4<f32>();".into());
    code.extend((0..8).flat_map(|i| (0..16).map(move |j| format!("    sum += a{i}_{j};"))));
    code.push("    out[gid.x] = sum;".into());
    code.push("}".into());
    code.join("\n")
}

/// Every variant's pipeline over one set of operands.
struct Bench<'a> {
    gpu: &'a Gpu,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
}

impl<'a> Bench<'a> {
    fn new(gpu: &'a Gpu, variants: &[(Source, Source)]) -> Self {
        let d = &gpu.device;
        let mut source = format!(
            "const STEPS: u32 = {STEPS}u;\nconst WEIGHT_VEC4S: u32 = {WEIGHT_VEC4S}u;\n\
             @group(0) @binding(0) var<storage, read> xs: array<vec4<f32>>;\n\
             @group(0) @binding(1) var xt: texture_2d<f32>;\n\
             @group(0) @binding(2) var<storage, read> ws: array<vec4<f32>>;\n\
             @group(0) @binding(3) var wt: texture_2d<f32>;\n\
             @group(0) @binding(4) var<uniform> wu: array<vec4<f32>, WEIGHT_VEC4S>;\n\
             @group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;\n\
             fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {{\n\
             \x20   return textureLoad(t, vec2<u32>(i % {TEXTURE_WIDTH}u, i / {TEXTURE_WIDTH}u), 0);\n}}\n"
        );
        for (i, &(x, w)) in variants.iter().enumerate() {
            source.push_str(&tile_kernel(&format!("variant_{i}"), x, w));
            source.push('\n');
        }
        let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("tile_reads"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });

        let pixels = INVOCATIONS * 8 * STEPS;
        let floats = |n: u32, scale: f32| (0..4 * n).map(|i| (i % 97) as f32 * scale).collect::<Vec<f32>>();
        let (x, w) = (floats(pixels, 0.01), floats(WEIGHT_VEC4S, 0.001));
        let buffer = |data: &[f32], usage| {
            d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage,
            })
        };
        let texture = |data: &[f32]| {
            let rows = (data.len() as u32 / 4).div_ceil(TEXTURE_WIDTH);
            let mut padded = data.to_vec();
            padded.resize((4 * TEXTURE_WIDTH * rows) as usize, 0.0);
            let desc = wgpu::TextureDescriptor {
                label: None,
                size: wgpu::Extent3d { width: TEXTURE_WIDTH, height: rows, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Float,
                usage: wgpu::TextureUsages::TEXTURE_BINDING,
                view_formats: &[],
            };
            let order = wgpu::util::TextureDataOrder::LayerMajor;
            d.create_texture_with_data(&gpu.queue, &desc, order, bytemuck::cast_slice(&padded))
                .create_view(&Default::default())
        };
        let (xt, wt) = (texture(&x), texture(&w));
        let out = d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16 * INVOCATIONS as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let storage = wgpu::BufferUsages::STORAGE;
        let buffers = [buffer(&x, storage), buffer(&w, storage), buffer(&w, wgpu::BufferUsages::UNIFORM)];

        let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty,
            count: None,
        };
        let buffer_type = |ty| wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None };
        let texture_type = wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        };
        let read_only = wgpu::BufferBindingType::Storage { read_only: true };
        let layout = d.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[
                entry(0, buffer_type(read_only)),
                entry(1, texture_type),
                entry(2, buffer_type(read_only)),
                entry(3, texture_type),
                entry(4, buffer_type(wgpu::BufferBindingType::Uniform)),
                entry(5, buffer_type(wgpu::BufferBindingType::Storage { read_only: false })),
            ],
        });
        let bind_group = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: buffers[0].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&xt) },
                wgpu::BindGroupEntry { binding: 2, resource: buffers[1].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: wgpu::BindingResource::TextureView(&wt) },
                wgpu::BindGroupEntry { binding: 4, resource: buffers[2].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 5, resource: out.as_entire_binding() },
            ],
        });
        let pipeline_layout = d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = (0..variants.len())
            .map(|i| {
                d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: None,
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(&format!("variant_{i}")),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();
        Bench { gpu, pipelines, bind_group }
    }

    /// Least wall time of variant `i` over `runs` runs, after one that compiles it.
    fn best_of(&self, i: usize, runs: usize) -> f64 {
        let run = || {
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipelines[i]);
                pass.set_bind_group(0, &self.bind_group, &[]);
                pass.dispatch_workgroups(INVOCATIONS / 16, 1, 1);
            }
            let start = Instant::now();
            self.gpu.queue.submit([encoder.finish()]);
            self.gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("waiting for the GPU");
            start.elapsed().as_secs_f64()
        };
        run();
        (0..runs).map(|_| run()).fold(f64::MAX, f64::min)
    }
}
