//! Whole networks: eval throughput (the folded network, as `kdna bench --latency`) and training
//! step time (forward, backward, SGD) of every architecture, baseline and KernelDNA, at batch 16
//! on 3x64x64 images with 10 classes, on the adapter kdna picks.
//!
//!     cargo bench --bench networks              # 3 warm-up + 10 timed iterations each
//!     cargo bench --bench networks -- --quick   # 1 + 2 (CI); the overhead 2 + 9 pairs
//!     cargo bench --bench networks -- --json    # one JSON object per line
//!
//! The last column is KernelDNA's overhead beyond its extra multiply-adds: (KernelDNA eval
//! images/s / baseline eval images/s) x (KernelDNA MACs / baseline MACs); 1 is no overhead.
//! It comes from a measurement of its own (`paired_overhead`): the two folded networks run in
//! turn, batch for batch, and each side's median batch time stands for it, so a shared
//! machine's noise (which the eval columns carry) slows both sides alike.

use std::sync::Arc;

use kdna::commands::bench::{Timing, latency, paired_overhead};
use kdna::gpu::Gpu;
use kdna::models::{Arch, ModelSpec};

fn main() {
    // As the kdna binary does, so that the figures are the ones its users get.
    // SAFETY: no other thread has started yet.
    unsafe { kdna::gpu::adapter::set_software_driver_options() };
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let gpu = Arc::new(Gpu::new(None).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    }));
    let (warmup, iters) = if quick { (1, 2) } else { (3, 10) };
    let timing = Timing { batch: 16, res: 64, iters, warmup, train: true };
    if !json {
        println!("adapter: {} ({:?}); batch 16, 3x64x64, 10 classes", gpu.info.name, gpu.info.backend);
        println!("{:<28} {:>12} {:>10} {:>12} {:>10}", "network", "params", "eval img/s", "step s", "overhead");
    }
    for arch in Arch::ALL {
        // Eval batches are cheap beside training steps: even a quick run takes enough pairs
        // for a median that one slow batch does not move.
        let pairs = Timing { train: false, warmup: warmup.max(2), iters: iters.max(9), ..timing };
        let overhead = paired_overhead(gpu.clone(), arch, 10, pairs).unwrap_or_else(|e| {
            eprintln!("error: {} (overhead): {e:#}", arch.name());
            std::process::exit(1)
        });
        if json {
            println!("{}", serde_json::to_string(&overhead).expect("a report serialises"));
        }
        for kdna in [false, true] {
            let spec = ModelSpec { arch, kdna, classes: 10, drop_path: 0.0 };
            let r = latency(gpu.clone(), spec, timing, &|_| {}).unwrap_or_else(|e| {
                eprintln!("error: {} ({}): {e:#}", arch.name(), if kdna { "KernelDNA" } else { "baseline" });
                std::process::exit(1)
            });
            if json {
                println!("{}", serde_json::to_string(&r).expect("a report serialises"));
            } else {
                let overhead = if kdna { format!("{:.3}", overhead.overhead) } else { String::new() };
                let name = format!("{} {}", arch.name(), if kdna { "KernelDNA" } else { "baseline" });
                let step = r.train_step_s.unwrap_or(f64::NAN);
                println!("{name:<28} {:>12} {:>10.1} {step:>12.3} {overhead:>10}", r.params, r.eval_img_s);
            }
        }
    }
}
