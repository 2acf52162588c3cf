use kdna::gpu::Gpu;
use std::time::Instant;
fn main() {
    let gpu = Gpu::new(None).unwrap();
    let src = "@group(0) @binding(0) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < arrayLength(&b)) { b[g.x] = b[g.x] + 1.0; } }";
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipe = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    for (n_elems, groups) in [(64usize, 1u32), (64 * 16, 16), (64 * 256, 256)] {
        let bufs: Vec<_> = (0..4).map(|_| gpu.storage("b", n_elems)).collect();
        let bgs: Vec<_> = bufs
            .iter()
            .map(|s| {
                gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipe.get_bind_group_layout(0),
                    entries: &[wgpu::BindGroupEntry { binding: 0, resource: s.binding() }],
                })
            })
            .collect();
        for n in [1usize, 500] {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let mut enc = gpu.encoder("e");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipe);
                    for i in 0..n {
                        pass.set_bind_group(0, &bgs[i % 4], &[]);
                        pass.dispatch_workgroups(groups, 1, 1);
                    }
                }
                let t = Instant::now();
                gpu.submit(enc);
                gpu.wait().unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "groups {groups} dispatches {n}: {:.3} ms total, {:.1} us each",
                best * 1e3,
                best * 1e6 / n as f64
            );
        }
    }
}
