//! Convolution throughput: forward, gradient to the input and gradient to the weight, in
//! GFLOP/s on the adapter kdna picks, over ResNet and MobileNetV2 layers at batch 16 (the
//! sizes a 64x64 input gives them).
//!
//!     cargo bench --bench conv              # about a second per kernel
//!     cargo bench --bench conv -- --quick   # one timed run per kernel (CI)
//!     cargo bench --bench conv -- --json    # one JSON object per line

use std::time::{Duration, Instant};

use kdna::gpu::{Dispatch, Gpu};
use kdna::ops::conv_gemm::GemmPlan;
use kdna::ops::conv2d::{Conv2d, Conv2dConfig, Conv2dShape, OutputActivation};
use kdna::ops::{Bound, GradTarget, Grads, Mode, Op};

fn main() {
    // As the kdna binary does, so that the figures are the ones its users get.
    // SAFETY: no other thread has started yet.
    unsafe { kdna::gpu::adapter::set_software_driver_options() };
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let gpu = Gpu::new(None).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    });
    if !json {
        println!("adapter: {} ({:?})", gpu.info.name, gpu.info.backend);
        println!("{:<38} {:>10} {:>10} {:>10}", "layer (N, Cin->Cout, HxW, k/s)", "forward", "grad in", "grad w");
    }
    // (name, batch, c_in, c_out, size, kernel, stride, groups)
    let layers = [
        ("resnet stem 7x7 3->64 64x64 s2", 16, 3, 64, 64, 7, 2, 1),
        ("resnet 3x3 64->64 16x16", 16, 64, 64, 16, 3, 1, 1),
        ("resnet 3x3 128->128 8x8", 16, 128, 128, 8, 3, 1, 1),
        ("resnet 3x3 64->128 16x16 s2", 16, 64, 128, 16, 3, 2, 1),
        ("resnet 3x3 256->256 4x4", 16, 256, 256, 4, 3, 1, 1),
        ("resnet 3x3 512->512 2x2", 16, 512, 512, 2, 3, 1, 1),
        ("resnet 1x1 256->64 16x16", 16, 256, 64, 16, 1, 1, 1),
        ("mobilenet 1x1 24->144 16x16", 16, 24, 144, 16, 1, 1, 1),
        ("mobilenet dw 3x3 144 16x16 s2", 16, 144, 144, 16, 3, 2, 144),
        ("mobilenet 1x1 192->32 8x8", 16, 192, 32, 8, 1, 1, 1),
    ];
    for (name, n, c_in, c_out, size, k, stride, groups) in layers {
        let cfg = Conv2dConfig::new(stride, k / 2).groups(groups);
        let shape = Conv2dShape::new(&[n, c_in, size, size], &[c_out, c_in / groups, k, k], cfg).unwrap();
        report(&gpu, name, bench_layer(&gpu, shape, false, quick), json);
        // A network's stem, whose input has no gradient, runs with its columns folded into its
        // channels: its forward pass and weight gradient that way.
        if GemmPlan::folds_columns(&shape) {
            report(&gpu, &format!("{name} folded"), bench_layer(&gpu, shape, true, quick), json);
        }
    }
    if !json {
        println!("(GFLOP/s, 2 FLOPs per multiply-add; folded: no input gradient)");
    }
}

/// One layer's line: `rates` of the forward, input-gradient and weight-gradient passes, `None`
/// for a pass the layer does not run.
fn report(gpu: &Gpu, name: &str, rates: [Option<f64>; 3], json: bool) {
    if json {
        let field = |r: Option<f64>| r.map_or("null".to_string(), |r| format!("{r:.2}"));
        println!(
            "{{\"bench\":\"conv2d\",\"layer\":\"{name}\",\"adapter\":\"{}\",\"forward_gflops\":{},\"grad_input_gflops\":{},\"grad_weight_gflops\":{}}}",
            gpu.info.name,
            field(rates[0]),
            field(rates[1]),
            field(rates[2])
        );
    } else {
        let cell = |r: Option<f64>| r.map_or(format!("{:>10}", "-"), |r| format!("{r:>10.2}"));
        println!("{name:<38} {} {} {}", cell(rates[0]), cell(rates[1]), cell(rates[2]));
    }
}

/// GFLOP/s of the forward, input-gradient and weight-gradient kernels; with `fold_columns`
/// ([`GemmPlan::folding_columns`]) there is no input gradient.
fn bench_layer(gpu: &Gpu, shape: Conv2dShape, fold_columns: bool, quick: bool) -> [Option<f64>; 3] {
    let op = Conv2d { fold_columns, ..Conv2d::plain(shape, false, OutputActivation::None) };
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let x = gpu.upload("x", &vec![0.5f32; numel(&[shape.batch, shape.c_in, shape.h, shape.w])]);
    let w = gpu.upload("w", &vec![0.25f32; numel(&shape.weight())]);
    let y = gpu.storage("y", numel(&shape.output()));
    let dy = gpu.upload("dy", &vec![1.0f32; numel(&shape.output())]);
    let dx = gpu.storage("dx", x.len());
    let dw = gpu.storage("dw", w.len());
    let scratch: Vec<_> = op.scratch(true).iter().map(|&len| gpu.storage("scratch", len)).collect();
    let bound = Bound { inputs: vec![&x, &w], outputs: vec![&y], scratch: scratch.iter().collect() };
    let forward = op.forward(gpu, &bound, Mode::Train);
    let input_target = GradTarget { slice: &dx, accumulate: false };
    let weight_target = GradTarget { slice: &dw, accumulate: false };
    let grad_input = match fold_columns {
        true => Vec::new(),
        false => {
            let grads = Grads { outputs: vec![&dy], inputs: vec![Some(input_target), None] };
            op.backward(gpu, &bound, &grads, Mode::Train)
        }
    };
    let grad_weight =
        op.backward(gpu, &bound, &Grads { outputs: vec![&dy], inputs: vec![None, Some(weight_target)] }, Mode::Train);
    if std::env::var_os("KDNA_BENCH_DISPATCHES").is_some() {
        for (pass, dispatches) in [("forward", &forward), ("grad in", &grad_input), ("grad w", &grad_weight)] {
            for d in dispatches.iter() {
                let secs = seconds_per_run(gpu, std::slice::from_ref(d), true);
                eprintln!("  {pass:<8} {:<36} {:>9.3} ms", d.label, secs * 1e3);
            }
        }
    }
    [&forward, &grad_input, &grad_weight]
        .map(|d| (!d.is_empty()).then(|| shape.flops() / seconds_per_run(gpu, d, quick) / 1e9))
}

fn seconds_per_run(gpu: &Gpu, dispatches: &[Dispatch], quick: bool) -> f64 {
    // The first run compiles the pipeline (seconds on software adapters); it is not timed.
    let first = Instant::now();
    gpu.run(dispatches);
    gpu.wait().unwrap();
    if std::env::var_os("KDNA_BENCH_FIRST_RUN").is_some() {
        eprintln!(
            "  first run (compile + run) of {}: {:.2} s",
            dispatches.last().unwrap().label,
            first.elapsed().as_secs_f64()
        );
    }
    // A few more untimed runs: the first layer's first runs after compilation read slow.
    for _ in 0..3 {
        gpu.run(dispatches);
        gpu.wait().unwrap();
    }
    let budget = if quick { Duration::ZERO } else { Duration::from_secs(1) };
    let start = Instant::now();
    let mut runs = 0;
    while runs == 0 || start.elapsed() < budget {
        gpu.run(dispatches);
        gpu.wait().unwrap();
        runs += 1;
    }
    start.elapsed().as_secs_f64() / runs as f64
}
