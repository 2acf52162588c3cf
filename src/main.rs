//! The `kdna` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use kdna::data::{Dataset, DatasetKind};
use kdna::gpu::{AdapterSummary, Gpu, adapter};
use kdna::models::{Arch, ModelSpec};
use kdna::train::TrainConfig;

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
    /// Train a network (KernelDNA by default; --baseline for the plain one). With no --data,
    /// KernelDNA ResNet18 on the Fashion-MNIST subset built into kdna.
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on its dataset (or --data): top-1, top-5 and loss.
    Eval(EvalArgs),
    /// Measure a network: its parameters and multiply-accumulates per image (`--params`), its
    /// eval throughput and latency (`--latency`) and training step time (`--train`).
    Bench(BenchArgs),
    /// Open kdna-viewer on a run directory: router gates and child kernels, live while the
    /// run trains (the run writes them with --telemetry-every).
    Viewer(ViewerArgs),
}

#[derive(Args)]
struct ViewerArgs {
    /// The run directory (kdna train's --log-dir) [default: the newest run under ./runs].
    run_dir: Option<PathBuf>,
    /// Render the main views to this PNG without opening a window, then exit.
    #[arg(long, value_name = "OUT.png", requires = "run_dir")]
    screenshot: Option<PathBuf>,
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
    /// Print the time of one run by kernel entry point, and the megabytes each copies into
    /// textures before it runs (software adapters): a training step's, or with --latency (and
    /// no --train) a run of the folded eval network. Each dispatch runs alone, so each time
    /// also holds a dispatch's fixed cost (tens of microseconds on software adapters).
    #[arg(long)]
    profile: bool,
    /// With --profile: list every dispatch in run order (phase, node, kernel, workgroup grid,
    /// milliseconds, megabytes copied into textures) rather than totals by kernel.
    #[arg(long, requires = "profile")]
    dispatches: bool,
    /// With --profile: profile this many runs and keep each dispatch's least time, which holds
    /// steadier than one run on a busy machine.
    #[arg(long, requires = "profile", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
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
    /// Architecture: resnet18, resnet50, mobilenet_v2, mobilenet_v2_1d2 (MobileNetV2 0.5x),
    /// convnext_tiny (also convNeXt-tiny).
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
    /// Parity always runs without stochastic depth; 0 is accepted so a training command
    /// line's flag can stay.
    #[arg(long, value_name = "0", value_parser = parse_no_drop_path)]
    drop_path: Option<f64>,
}

fn parse_no_drop_path(s: &str) -> Result<f64, String> {
    let zero = s.parse::<f64>().is_ok_and(|p| p == 0.0);
    if zero { Ok(0.0) } else { Err(format!("parity runs without stochastic depth; --drop-path {s} is not 0")) }
}

/// Defaults of `kdna train` for the embedded set (no --data) and, with --data, main.py's.
struct TrainDefaults {
    epochs: usize,
    lr: f64,
    batch_size: usize,
    print_freq: usize,
}

/// The embedded set's defaults: the fewest images that reach 75% reliably. A sweep of the same
/// network and data in PyTorch (epochs 2-3, batch 32-256, lr 0.005-0.1, 3-6 seeds each) put 2
/// epochs at 72-76% whatever the rest, and 3 epochs of batch 128 at lr 0.01 at 74.7-77.8%
/// (mean 76.7); batch 128 also runs faster per image on software adapters than 64.
const EMBEDDED_DEFAULTS: TrainDefaults = TrainDefaults { epochs: 3, lr: 0.01, batch_size: 128, print_freq: 10 };
const DATA_DEFAULTS: TrainDefaults = TrainDefaults { epochs: 90, lr: 0.1, batch_size: 256, print_freq: 10 };

#[derive(Args)]
struct TrainArgs {
    /// Dataset directory: ImageNet layout (train/<class>/*.jpg, val/<class>/...), CIFAR-10/100
    /// binaries, or MNIST/Fashion-MNIST IDX files. Without it: the Fashion-MNIST subset built
    /// into kdna (6,000 train / 1,000 val images).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The dataset's format, when its files do not tell: imagefolder, cifar10, cifar100, mnist,
    /// fashion-mnist, embedded.
    #[arg(long, value_name = "NAME", value_parser = parse_dataset)]
    dataset: Option<DatasetKind>,
    /// Architecture: resnet18, resnet50, mobilenet_v2, mobilenet_v2_1d2, convnext_tiny (also
    /// convNeXt-tiny; inputs of at least 32x32).
    #[arg(short, long, value_parser = parse_arch, default_value = "resnet18")]
    arch: Arch,
    /// Train the torchvision network instead of its KernelDNA version.
    #[arg(long)]
    baseline: bool,
    /// Accepted for the seed's command lines; KernelDNA is already the default.
    #[arg(long, hide_short_help = true)]
    customize: bool,
    /// Stochastic depth of ConvNeXt's last block (torchvision's linear schedule gives earlier
    /// blocks less; each sample drops a block's residual branch whole) [default: 0.1 for
    /// convnext_tiny; the other networks have none].
    #[arg(long, value_name = "P")]
    drop_path: Option<f64>,
    /// Epochs [default: 3 on the embedded set, 90 with --data].
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs of linear learning-rate warm-up before the cosine decay.
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    /// Optimizer: sgd (torch.optim.SGD, the seed's) or adamw (torch.optim.AdamW, ConvNeXt's).
    #[arg(long, value_name = "NAME", value_parser = ["sgd", "adamw"], default_value = "sgd")]
    opt: String,
    /// Peak learning rate [default: 0.01 on the embedded set, 0.1 with --data; 4e-3 with
    /// --opt adamw].
    #[arg(long, visible_alias = "learning-rate")]
    lr: Option<f64>,
    /// Learning rate the cosine decay ends at.
    #[arg(long, default_value_t = 0.0)]
    eta_min: f64,
    /// Weight decay: L2 added to the gradient by SGD (as torch.optim.SGD), decoupled by AdamW
    /// [default: 1e-4; 0.05 with --opt adamw].
    #[arg(long, visible_alias = "weight-decay")]
    wd: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// AdamW's first-moment decay.
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    /// AdamW's second-moment decay.
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    /// AdamW's epsilon.
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Images per step [default: 128 on the embedded set, 256 with --data].
    #[arg(short, long)]
    batch_size: Option<usize>,
    /// Data loading threads [default: the machine's cores, at most 8].
    #[arg(short = 'j', long)]
    workers: Option<usize>,
    /// Log a train record every this many steps.
    #[arg(short, long)]
    print_freq: Option<usize>,
    /// Cut every epoch to this many steps (smoke runs).
    #[arg(long, value_name = "N")]
    steps_per_epoch: Option<usize>,
    /// Input resolution [default: the images' own size for MNIST-like sets (28) and CIFAR (32);
    /// 224 for image folders].
    #[arg(long)]
    res: Option<usize>,
    /// Label smoothing of the cross-entropy loss.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Seed of initialisation, shuffling and augmentation: the same seed on the same adapter
    /// gives the same losses, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory: config.json, log.txt, metrics.jsonl [default: runs/<date>-<arch>].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Where checkpoint.safetensors and model_best.safetensors go [default: the log directory].
    #[arg(long, value_name = "DIR")]
    ckpt_dir: Option<PathBuf>,
    /// Continue from a checkpoint (weights, momentum, epoch, best accuracy); the schedule is
    /// recomputed from this run's arguments, so --epochs may grow.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Only evaluate the --resume checkpoint (as main.py's --evaluate); same as kdna eval.
    #[arg(short, long)]
    evaluate: bool,
    /// Start a KernelDNA network from a pretrained torchvision baseline (safetensors): parents
    /// take the pretrained convs, children start equal to them, routers fresh.
    #[arg(long, value_name = "BASELINE")]
    init_from: Option<PathBuf>,
    /// `adapters`: train only static attentions, routers and BatchNorms (all else frozen).
    #[arg(long, value_name = "WHAT", value_parser = ["adapters"])]
    train_only: Option<String>,
    /// Leave out images that fail to decode (counted and logged) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// No progress bars (log lines instead).
    #[arg(long)]
    no_progress: bool,
    /// Write telemetry for `kdna viewer` (router gates on a fixed probe batch and the training
    /// batch, each child's attentions, energy and similarity to its parent) every N steps and
    /// at each epoch's end; 0 turns it off. A record costs about an eval pass over 16 images
    /// (~0.45 s on a 2-core machine's lavapipe: under 1% of the default run's training time).
    #[arg(long, value_name = "N", default_value_t = 20)]
    telemetry_every: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// The checkpoint to evaluate (checkpoint.safetensors of a kdna run).
    #[arg(long, value_name = "CKPT")]
    resume: PathBuf,
    /// Evaluate on this dataset's validation split instead of the one the checkpoint records.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The dataset's format, when its files do not tell.
    #[arg(long, value_name = "NAME", value_parser = parse_dataset)]
    dataset: Option<DatasetKind>,
    /// Images per batch.
    #[arg(short, long, default_value_t = 100)]
    batch_size: usize,
    /// Data loading threads [default: the machine's cores, at most 8].
    #[arg(short = 'j', long)]
    workers: Option<usize>,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
}

fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).min(8)
}

fn train(adapter: Option<&str>, a: TrainArgs) -> Result<()> {
    if a.evaluate {
        let Some(resume) = a.resume else {
            anyhow::bail!("--evaluate needs --resume CKPT (the checkpoint to evaluate)")
        };
        let args = EvalArgs {
            resume,
            data: a.data,
            dataset: a.dataset,
            batch_size: a.batch_size.unwrap_or(100),
            workers: a.workers,
            json: false,
        };
        return eval(adapter, args);
    }
    let defaults = if a.data.is_some() { &DATA_DEFAULTS } else { &EMBEDDED_DEFAULTS };
    let batch_size = a.batch_size.unwrap_or(defaults.batch_size);
    // Open the data before the GPU: a bad directory fails fast.
    let dataset = Dataset::open(a.data.as_deref(), a.dataset)?;
    let res = a.res.unwrap_or(dataset.kind.native_res());
    if res < 8 {
        anyhow::bail!("--res {res} is too small: the networks downsample by 32 (use at least 8)");
    }
    let drop_path = match (a.arch, a.drop_path) {
        (_, Some(p)) if !(0.0..1.0).contains(&p) => anyhow::bail!("--drop-path {p} must be at least 0 and below 1"),
        (Arch::ConvNeXtTiny, p) => p.unwrap_or(0.1),
        (arch, Some(p)) if p > 0.0 => {
            anyhow::bail!("--drop-path applies to convnext_tiny; {arch} has no stochastic depth")
        }
        _ => 0.0,
    };
    let adamw = a.opt == "adamw";
    for (flag, beta) in [("--beta1", a.beta1), ("--beta2", a.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            anyhow::bail!("{flag} {beta} must be at least 0 and below 1");
        }
    }
    let log_dir = a.log_dir.unwrap_or_else(|| kdna::train::run_dir::default_path(a.arch.name()));
    let cfg = TrainConfig {
        arch: a.arch,
        baseline: a.baseline,
        data: a.data,
        dataset: Some(dataset.kind),
        epochs: a.epochs.unwrap_or(defaults.epochs),
        warmup_epochs: a.warmup_epochs,
        lr: a.lr.unwrap_or(if adamw { 4e-3 } else { defaults.lr }),
        eta_min: a.eta_min,
        weight_decay: a.wd.unwrap_or(if adamw { 0.05 } else { 1e-4 }),
        momentum: a.momentum,
        optimizer: a.opt.clone(),
        betas: [a.beta1, a.beta2],
        eps: a.eps,
        batch_size,
        workers: a.workers.unwrap_or_else(default_workers).max(1),
        print_freq: a.print_freq.unwrap_or(defaults.print_freq).max(1),
        steps_per_epoch: a.steps_per_epoch,
        res,
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        ckpt_dir: a.ckpt_dir.unwrap_or_else(|| log_dir.clone()),
        log_dir,
        resume: a.resume,
        init_from: a.init_from,
        train_only_adapters: a.train_only.is_some(),
        skip_bad: a.skip_bad,
        progress: !a.no_progress,
        telemetry_every: a.telemetry_every,
        drop_path: drop_path as f32,
    };
    let gpu = open_gpu(adapter)?;
    let summary = kdna::train::train(gpu, cfg, dataset)?;
    println!(
        "done: best val acc@1 {:.2}% in {:.0} s ({:.1} training images/s, {:.1}% of training time waiting for data); \
         run directory {}",
        summary.best_acc1,
        summary.seconds,
        summary.train_img_s,
        100.0 * summary.data_wait,
        summary.log_dir.display()
    );
    Ok(())
}

fn eval(adapter: Option<&str>, a: EvalArgs) -> Result<()> {
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let gpu = open_gpu(adapter)?;
    let workers = a.workers.unwrap_or_else(default_workers).max(1);
    let (info, acc) =
        kdna::train::evaluate_checkpoint(gpu, &a.resume, a.data.as_deref(), a.dataset, a.batch_size, workers)?;
    if a.json {
        let v = serde_json::json!({"arch": info.arch, "baseline": info.baseline, "epoch": info.epoch,
            "acc1": acc.acc1, "acc5": acc.acc5, "loss": acc.loss, "images": acc.images});
        println!("{v}");
    } else {
        let family = if info.baseline { "baseline" } else { "KernelDNA" };
        println!("{} ({family}) after {} epochs, {} validation images", info.arch, info.epoch, acc.images);
        println!(" * Acc@1 {:.3} Acc@5 {:.3} Loss {:.4}", acc.acc1, acc.acc5, acc.loss);
    }
    Ok(())
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn main() -> ExitCode {
    // SAFETY: no other thread has started yet.
    unsafe { adapter::set_software_driver_options() };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => devices(cli.adapter.as_deref()),
        Command::Parity(args) => parity(cli.adapter.as_deref(), args),
        Command::Train(args) => train(cli.adapter.as_deref(), *args),
        Command::Eval(args) => eval(cli.adapter.as_deref(), args),
        Command::Bench(args) => bench(cli.adapter.as_deref(), args),
        Command::Viewer(args) => viewer(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs kdna-viewer, found next to this executable or else on PATH, with `args`.
fn viewer(args: ViewerArgs) -> Result<()> {
    let name = format!("kdna-viewer{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name(&name)).filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from(&name));
    let mut command = std::process::Command::new(&program);
    // The viewer draws: lavapipe's drawing does not take the vector width kdna runs it with.
    for variable in adapter::wide_vector_variables() {
        command.env_remove(variable);
    }
    if let Some(out) = &args.screenshot {
        command.arg("--screenshot").arg(out);
    }
    command.args(&args.run_dir);
    let status = match command.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "{name} is neither next to kdna nor on PATH; build it with `cargo build --release -p kdna-viewer` \
             (or `cargo build --release --workspace`, which puts it beside kdna)"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("starting {}", program.display()))),
    };
    if !status.success() {
        anyhow::bail!("kdna-viewer exited with {status}");
    }
    Ok(())
}

/// The device on the adapter kdna picks (`--adapter`), with a warning where it is a slow path
/// that a driver install would avoid ([`adapter::advice`]).
fn open_gpu(adapter: Option<&str>) -> Result<Arc<Gpu>> {
    let gpu = Gpu::new(adapter)?;
    if let Some(advice) = adapter::advice(&gpu.info) {
        eprintln!("warning: {advice}");
    }
    Ok(Arc::new(gpu))
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
    if let Some(advice) = adapter::advice(&chosen) {
        println!("Note: {advice}.");
    }
    Ok(())
}

fn parity(adapter: Option<&str>, args: ParityArgs) -> Result<()> {
    let gpu = open_gpu(adapter)?;
    let m = &args.model;
    let classes = m.num_classes.map(|n| n as usize);
    kdna::commands::parity::run(gpu, m.arch, m.baseline, classes, &args.weights, &args.batch, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn bench(adapter: Option<&str>, args: BenchArgs) -> Result<()> {
    let m = &args.model;
    let spec = ModelSpec {
        arch: m.arch,
        kdna: !m.baseline,
        classes: m.num_classes.map_or(1000, |n| n as usize),
        drop_path: 0.0,
    };
    let family = if m.baseline { "baseline" } else { "KernelDNA" };
    if args.profile {
        let gpu = open_gpu(adapter)?;
        use kdna::commands::bench::{Profiled, by_kernel, profile};
        let what = if args.latency && !args.train { Profiled::Eval } else { Profiled::TrainingStep };
        let rounds = args.rounds as usize;
        let dispatches = profile(gpu, spec, args.batch_size as usize, args.res as usize, what, rounds)?;
        let total: f64 = dispatches.iter().map(|d| d.seconds).sum();
        // Bytes copied into textures (software adapters' streams; timed with their dispatches).
        let copied_mb = dispatches.iter().map(|d| d.copied_bytes).sum::<u64>() as f64 / 1e6;
        if args.dispatches {
            println!(
                "{:>5} {:<9} {:<44} {:<40} {:>17} {:>9} {:>10}",
                "#", "phase", "node", "kernel", "workgroups", "ms", "copied MB"
            );
            for (i, d) in dispatches.iter().enumerate() {
                let [x, y, z] = d.workgroups;
                let grid = format!("{x}x{y}x{z}");
                let (phase, node, kernel) = (d.phase.name(), &d.node, d.kernel);
                let (ms, mb) = (1e3 * d.seconds, d.copied_bytes as f64 / 1e6);
                println!("{i:>5} {phase:<9} {node:<44} {kernel:<40} {grid:>17} {ms:>9.3} {mb:>10.2}");
            }
            println!(
                "{:>5} {:<9} {:<44} {:<40} {:>17} {:>9.3} {copied_mb:>10.2}",
                "",
                "total",
                "",
                "",
                "",
                1e3 * total
            );
            return Ok(());
        }
        println!("{:<36} {:>10} {:>10} {:>7} {:>10}", "kernel", "dispatches", "seconds", "share", "copied MB");
        for row in by_kernel(&dispatches) {
            let (share, mb) = (100.0 * row.seconds / total, row.copied_bytes as f64 / 1e6);
            println!("{:<36} {:>10} {:>10.4} {share:>6.1}% {mb:>10.2}", row.kernel, row.dispatches, row.seconds);
        }
        println!("{:<36} {:>10} {total:>10.4} {:>7} {copied_mb:>10.2}", "total", "", "");
        return Ok(());
    }
    if args.latency || args.train {
        if args.train && args.batch_size < 2 {
            anyhow::bail!("--train needs --batch-size of at least 2 (train-mode BatchNorm)");
        }
        let gpu = open_gpu(adapter)?;
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
