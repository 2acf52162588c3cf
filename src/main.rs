//! The `kdna` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use kdna::gpu::{AdapterSummary, Gpu, adapter};
use kdna::models::{Arch, ModelSpec};

#[derive(Parser)]
#[command(
    name = "kdna",
    version,
    about = "Train KernelDNA convolutional networks on any GPU (WGSL kernels through wgpu)"
)]
struct Cli {
    /// Run on the first adapter whose name contains this text (case-insensitive); see
    /// `kdna devices`. WGPU_ADAPTER_NAME does the same; WGPU_BACKEND limits the backends
    /// searched (vulkan, metal, dx12, gl).
    #[arg(long, global = true, value_name = "SUBSTRING")]
    adapter: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu can reach, with the features and limits kdna uses.
    Devices,
    /// Run one batch through a network in eval and train mode and write its logits, loss and
    /// every gradient under PyTorch's names, to compare a port with torch tensor by tensor.
    Parity(ParityArgs),
    /// Measure a network: its parameters and multiply-accumulates per image (`--params`), its
    /// eval throughput and latency (`--latency`) and training step time (`--train`).
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Count parameters and multiply-accumulates of every conv and linear layer, router
    /// projections included (torchvision's convention). The default when nothing else is asked.
    #[arg(long)]
    params: bool,
    /// Time eval as metrics.py does: the folded network (children and BatchNorms computed at
    /// load), warm-up, then timed batches with a device sync each; throughput and latency as
    /// mean ± std.
    #[arg(long)]
    latency: bool,
    /// Also time whole training steps (forward, backward, SGD), in the same call.
    #[arg(long)]
    train: bool,
    /// Print the time of one training step by kernel entry point (each dispatch run alone).
    #[arg(long)]
    profile: bool,
    /// Timed iterations.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    iter: u32,
    /// Untimed iterations before timing (pipeline compilation happens in the first).
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Images per batch when timing.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Input resolution (square images).
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(1..))]
    res: u32,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
}

/// Which network: `--arch`, `--baseline`, `--num-classes` (and the seed's `--customize`).
#[derive(Args)]
struct ModelArgs {
    /// Architecture: resnet18, resnet50, mobilenet_v2, mobilenet_v2_1d2 (MobileNetV2 0.5x).
    #[arg(long, value_parser = parse_arch)]
    arch: Arch,
    /// The torchvision network instead of its KernelDNA version (KernelDNA is the default).
    #[arg(long)]
    baseline: bool,
    /// Accepted for the seed's command lines; KernelDNA is already the default.
    #[arg(long, hide_short_help = true)]
    customize: bool,
    /// Classes of the classifier [default: for parity the classifier's rows in the weights;
    /// otherwise 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    num_classes: Option<u32>,
}

#[derive(Args)]
struct ParityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The network's state dict (safetensors, PyTorch names and layouts).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// safetensors with `images` [N, 3, H, W] (f32) and `labels` [N] (i64 or i32).
    #[arg(long, value_name = "FILE")]
    batch: PathBuf,
    /// Where to write `logits.eval`, `logits`, `loss` and `grad.<param>` (safetensors).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(cli.adapter.as_deref()),
        Command::Parity(args) => parity(cli.adapter.as_deref(), args),
        Command::Bench(args) => bench(cli.adapter.as_deref(), args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn devices(filter: Option<&str>) -> Result<()> {
    let instance = adapter::instance();
    let adapters = adapter::enumerate(&instance);
    let summaries: Vec<AdapterSummary> = adapters.iter().map(AdapterSummary::of).collect();
    let chosen = AdapterSummary::of(&adapter::choose(adapters, filter)?);
    for s in &summaries {
        let mark = if s.name == chosen.name && s.backend == chosen.backend { "*" } else { " " };
        println!("{mark} {} ({:?}, {:?})", s.name, s.backend, s.device_type);
        println!("    driver: {} {}", s.driver, s.driver_info);
        println!(
            "    features: timestamps {}, f16 {}, subgroups {}",
            yes_no(s.timestamps),
            yes_no(s.shader_f16),
            yes_no(s.subgroups)
        );
        println!(
            "    limits: storage binding {}, buffer {}, workgroup storage {}, invocations/workgroup {}",
            bytes(s.max_storage_buffer_binding),
            bytes(s.max_buffer_size),
            bytes(s.max_workgroup_storage as u64),
            s.max_invocations_per_workgroup
        );
    }
    println!("The adapter marked * is the one kdna uses; choose another with --adapter SUBSTRING.");
    Ok(())
}

fn parity(adapter: Option<&str>, args: ParityArgs) -> Result<()> {
    let gpu = Arc::new(Gpu::new(adapter)?);
    let m = &args.model;
    let classes = m.num_classes.map(|n| n as usize);
    kdna::commands::parity::run(gpu, m.arch, m.baseline, classes, &args.weights, &args.batch, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn bench(adapter: Option<&str>, args: BenchArgs) -> Result<()> {
    let m = &args.model;
    let spec = ModelSpec { arch: m.arch, kdna: !m.baseline, classes: m.num_classes.map_or(1000, |n| n as usize) };
    let family = if m.baseline { "baseline" } else { "KernelDNA" };
    if args.profile {
        let gpu = Arc::new(Gpu::new(adapter)?);
        let rows = kdna::commands::bench::profile(gpu, spec, args.batch_size as usize, args.res as usize)?;
        let total: f64 = rows.iter().map(|r| r.2).sum();
        println!("{:<36} {:>10} {:>10} {:>7}", "kernel", "dispatches", "seconds", "share");
        for (entry, n, secs) in rows {
            println!("{entry:<36} {n:>10} {secs:>10.4} {:>6.1}%", 100.0 * secs / total);
        }
        println!("{:<36} {:>10} {total:>10.4}", "total", "");
        return Ok(());
    }
    if args.latency || args.train {
        if args.train && args.batch_size < 2 {
            anyhow::bail!("--train needs --batch-size of at least 2 (train-mode BatchNorm)");
        }
        let gpu = Arc::new(Gpu::new(adapter)?);
        let timing = kdna::commands::bench::Timing {
            batch: args.batch_size as usize,
            res: args.res as usize,
            iters: args.iter as usize,
            warmup: args.warmup as usize,
            train: args.train,
        };
        let quiet = args.json;
        let r = kdna::commands::bench::latency(gpu, spec, timing, &|what| {
            if !quiet {
                eprintln!("timing {what}: {} warm-up + {} iterations", timing.warmup, timing.iters);
            }
        })?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!(
            "{} ({family}, {} classes), batch {}, {}x{}, on {}",
            r.arch, r.classes, r.batch, r.res, r.res, r.adapter
        );
        println!("  parameters        {:>14}", group_digits(r.params as u64));
        println!("  multiply-adds     {:>14}  ({:.3} G per image)", group_digits(r.macs), r.macs as f64 / 1e9);
        println!("  eval throughput   {:>10.1} ± {:.1} images/s", r.eval_img_s, r.eval_img_s_std);
        println!("  eval latency      {:>10.2} ± {:.2} ms per batch", r.latency_ms, r.latency_ms_std);
        if let (Some(step), Some(std), Some(img_s)) = (r.train_step_s, r.train_step_s_std, r.train_img_s) {
            println!("  training step     {:>10.4} ± {:.4} s  ({img_s:.1} images/s)", step, std);
        }
        return Ok(());
    }
    let report = kdna::commands::bench::params(spec, args.res as usize)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{} ({family}, {} classes, {}x{})", report.arch, report.classes, report.res, report.res);
        println!("  parameters        {:>14}", group_digits(report.params as u64));
        println!(
            "  multiply-adds     {:>14}  ({:.3} G per image)",
            group_digits(report.macs),
            report.macs as f64 / 1e9
        );
    }
    Ok(())
}

/// 11689512 -> "11,689,512".
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
