//! The training loop: data, steps, schedule, progress, validation and checkpoints.

pub mod checkpoint;
pub mod evaluate;
pub mod run_dir;
pub mod schedule;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::data::loader::LoaderConfig;
use crate::data::{Dataset, DatasetKind, Loader};
use crate::gpu::Gpu;
use crate::graph::{Executor, Graph, Plan, StepStats, Weights};
use crate::io::StateDict;
use crate::models::{Arch, ModelSpec, Network, build, pretrained};
use crate::ops::Optimizer;
use crate::ops::adamw::AdamW;
use crate::ops::conv2d::{Conv2d, ConvKernel};
use crate::ops::sgd::Sgd;
use crate::telemetry::recorder::PROBE_IMAGES;
use crate::telemetry::{RecordKind, Recorder};
use checkpoint::{BEST_FILE, CHECKPOINT_FILE, Checkpoint, CheckpointInfo};
use evaluate::{Accuracy, EvalNet};
use run_dir::RunDir;
use schedule::Schedule;

/// Everything a training run is told.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub arch: Arch,
    pub baseline: bool,
    pub data: Option<PathBuf>,
    pub dataset: Option<DatasetKind>,
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub lr: f64,
    pub eta_min: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// `sgd` or `adamw`.
    pub optimizer: String,
    /// AdamW's moment decays and epsilon.
    pub betas: [f64; 2],
    pub eps: f64,
    pub batch_size: usize,
    pub workers: usize,
    pub print_freq: usize,
    pub steps_per_epoch: Option<usize>,
    pub res: usize,
    pub label_smoothing: f64,
    pub seed: u64,
    pub log_dir: PathBuf,
    pub ckpt_dir: PathBuf,
    pub resume: Option<PathBuf>,
    pub init_from: Option<PathBuf>,
    /// Train only static attentions, routers and BatchNorms.
    pub train_only_adapters: bool,
    pub skip_bad: bool,
    /// Draw progress bars (when stderr is a terminal).
    pub progress: bool,
    /// Steps between telemetry records (0: no telemetry).
    pub telemetry_every: usize,
    /// Stochastic-depth probability of the last block (ConvNeXt).
    pub drop_path: f32,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub epochs: usize,
    pub best_acc1: f64,
    pub last: Option<Accuracy>,
    pub train_img_s: f64,
    /// Share of training time spent waiting for the data loader (0 when it keeps ahead).
    pub data_wait: f64,
    pub seconds: f64,
    pub log_dir: PathBuf,
}

/// The training split's loader for `epoch`: shuffled, augmented, short epochs honoured.
fn train_loader_config(cfg: &TrainConfig, kind: DatasetKind, epoch: usize) -> LoaderConfig {
    LoaderConfig {
        batch: cfg.batch_size,
        seed: cfg.seed,
        epoch: epoch as u64,
        shuffle: true,
        augment: kind.augment(true),
        min_batch: 2,
        max_batches: cfg.steps_per_epoch,
        ..validation_loader_config(kind, cfg.res, cfg.batch_size, cfg.workers, cfg.skip_bad)
    }
}

/// A validation split's loader: in order, every image, the deterministic transform.
fn validation_loader_config(
    kind: DatasetKind,
    res: usize,
    batch: usize,
    workers: usize,
    skip_bad: bool,
) -> LoaderConfig {
    let (mean, std) = kind.normalisation();
    LoaderConfig {
        res,
        batch,
        workers,
        seed: 0,
        epoch: 0,
        shuffle: false,
        augment: kind.augment(false),
        min_batch: 1,
        skip_bad,
        max_batches: None,
        mean,
        std,
    }
}

/// Parameters the optimizer leaves alone: with `--train-only adapters`, all but static
/// attentions, routers and BatchNorms.
fn frozen_params(graph: &Graph, train_only_adapters: bool) -> HashSet<String> {
    if !train_only_adapters {
        return HashSet::new();
    }
    let adapters = adapter_params(graph);
    graph.params().map(|(_, t)| t.name.clone()).filter(|n| !adapters.contains(n)).collect()
}

/// Parameters `--train-only adapters` trains: static attentions, routers, BatchNorms.
pub fn adapter_params(graph: &Graph) -> HashSet<String> {
    let states: HashSet<&str> = graph.tensors.iter().map(|t| t.name.as_str()).collect();
    graph
        .params()
        .map(|(_, t)| t.name.clone())
        .filter(|name| {
            let bn = name
                .rsplit_once('.')
                .is_some_and(|(prefix, _)| states.contains(format!("{prefix}.running_mean").as_str()));
            name.contains("static_") || name.contains(".se.") || bn
        })
        .collect()
}

/// A training executor for one batch size over the shared weights.
struct TrainNet {
    exe: Executor,
    net: Network,
}

struct Trainer {
    gpu: Arc<Gpu>,
    cfg: TrainConfig,
    spec: ModelSpec,
    optimizer: Optimizer,
    nets: Vec<(usize, TrainNet)>,
}

impl Trainer {
    fn net(&mut self, batch: usize) -> Result<&mut TrainNet> {
        if !self.nets.iter().any(|(b, _)| *b == batch) {
            let weights = self.nets.first().map(|(_, n)| n.exe.weights().clone());
            let net = build(self.spec, batch, self.cfg.res, self.cfg.label_smoothing as f32)?;
            let mut plan = Plan::train(net.loss, self.optimizer);
            plan.frozen = frozen_params(&net.graph, self.cfg.train_only_adapters);
            let exe = match weights {
                Some(w) => Executor::with_weights(self.gpu.clone(), &net.graph, plan, w)?,
                None => Executor::new(self.gpu.clone(), &net.graph, plan)?,
            };
            self.nets.push((batch, TrainNet { exe, net }));
        }
        Ok(&mut self.nets.iter_mut().find(|(b, _)| *b == batch).expect("made").1)
    }

    fn main(&self) -> &TrainNet {
        &self.nets[0].1
    }

    fn eval_net(&self, batch: usize) -> Result<EvalNet> {
        let net = build(self.spec, batch, self.cfg.res, self.cfg.label_smoothing as f32)?;
        let exe =
            Executor::with_weights(self.gpu.clone(), &net.graph, Plan::eval(), self.main().exe.weights().clone())?;
        Ok(EvalNet { exe, images: net.images, logits: net.logits })
    }
}

/// Trains as `cfg` says; `dataset` already opened (its class count sizes the classifier).
pub fn train(gpu: Arc<Gpu>, cfg: TrainConfig, dataset: Dataset) -> Result<Summary> {
    if cfg.batch_size < 2 {
        bail!("--batch-size {} is too small: training needs at least 2 (train-mode BatchNorm)", cfg.batch_size);
    }
    if cfg.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let spec = ModelSpec { arch: cfg.arch, kdna: !cfg.baseline, classes: dataset.classes, drop_path: cfg.drop_path };
    let schedule = Schedule { lr: cfg.lr, eta_min: cfg.eta_min, epochs: cfg.epochs, warmup_epochs: cfg.warmup_epochs };
    let optimizer: Optimizer = match cfg.optimizer.as_str() {
        "adamw" => AdamW {
            lr: schedule.lr_at(0) as f32,
            beta1: cfg.betas[0] as f32,
            beta2: cfg.betas[1] as f32,
            eps: cfg.eps as f32,
            weight_decay: cfg.weight_decay as f32,
        }
        .into(),
        "sgd" => Sgd {
            lr: schedule.lr_at(0) as f32,
            momentum: cfg.momentum as f32,
            dampening: 0.0,
            weight_decay: cfg.weight_decay as f32,
            nesterov: false,
        }
        .into(),
        other => bail!("unknown optimizer {other:?}; kdna has sgd and adamw"),
    };
    // Load what a resume needs first: a bad checkpoint fails before any work.
    let resume = cfg.resume.as_deref().map(checkpoint::load).transpose()?;
    if cfg.train_only_adapters && cfg.baseline {
        bail!("--train-only adapters needs a KernelDNA network (drop --baseline)");
    }
    let mut trainer = Trainer { gpu: gpu.clone(), cfg: cfg.clone(), spec, optimizer, nets: Vec::new() };
    trainer.net(cfg.batch_size)?;
    let (start_epoch, mut best_acc1) = initialise(&trainer, &cfg, &resume)?;
    if start_epoch >= cfg.epochs {
        bail!(
            "the checkpoint has already trained {start_epoch} epochs; --epochs {} leaves nothing to do (raise --epochs)",
            cfg.epochs
        );
    }

    let config = json!({
        "kdna_version": env!("CARGO_PKG_VERSION"),
        "adapter": gpu.info.name,
        "backend": format!("{:?}", gpu.info.backend),
        "dataset": dataset.kind.name(),
        "num_classes": dataset.classes,
        "train_images": dataset.train.len(),
        "val_images": dataset.val.len(),
        "args": cfg,
    });
    let mut run = RunDir::create(&cfg.log_dir, &config)?;
    std::fs::create_dir_all(&cfg.ckpt_dir)
        .with_context(|| format!("creating checkpoint directory {}", cfg.ckpt_dir.display()))?;
    let family = if cfg.baseline { "baseline" } else { "KernelDNA" };
    let intro = format!(
        "{} ({family}, {} parameters) on {} ({} classes, {} train / {} val images, {}x{}), adapter {}",
        cfg.arch,
        crate::models::parameter_count(&trainer.main().net.graph),
        dataset.kind,
        dataset.classes,
        dataset.train.len(),
        dataset.val.len(),
        cfg.res,
        cfg.res,
        gpu.info.name
    );
    say(&mut run, &intro)?;
    say(&mut run, &format!("run directory {}", cfg.log_dir.display()))?;

    let train_split = Arc::new(dataset.train.clone());
    let val_split = Arc::new(dataset.val.clone());
    let mut recorder = open_telemetry(&trainer, &run, &val_split, &dataset)?;
    let started = Instant::now();
    let mut trained_images = 0usize;
    let mut train_seconds = 0.0f64;
    let mut data_wait_seconds = 0.0f64;
    let mut last = None;
    for epoch in start_epoch..cfg.epochs {
        let lr = schedule.lr_at(epoch);
        let epoch_start = Instant::now();
        let (images, waited) = train_epoch(&mut trainer, &mut run, &mut recorder, &train_split, &dataset, epoch, lr)?;
        trained_images += images;
        data_wait_seconds += waited;
        train_seconds += epoch_start.elapsed().as_secs_f64();

        let acc = validate(&trainer, &val_split, &dataset)?;
        run.record(&json!({"kind": "val", "epoch": epoch, "acc1": acc.acc1, "acc5": acc.acc5, "loss": acc.loss}))?;
        let improved = acc.acc1 > best_acc1;
        best_acc1 = best_acc1.max(acc.acc1);
        say(
            &mut run,
            &format!(
                "epoch {}/{}: val acc@1 {:.2}% acc@5 {:.2}% loss {:.4} (best {:.2}%), {:.0} s",
                epoch + 1,
                cfg.epochs,
                acc.acc1,
                acc.acc5,
                acc.loss,
                best_acc1,
                epoch_start.elapsed().as_secs_f64()
            ),
        )?;
        last = Some(acc);

        let weights = trainer.main().exe.weights().clone();
        let state = weights.export(&gpu)?;
        let info = CheckpointInfo {
            epoch: epoch + 1,
            best_acc1,
            arch: cfg.arch.name().into(),
            baseline: cfg.baseline,
            num_classes: dataset.classes,
            res: cfg.res,
            dataset: dataset.kind.name().into(),
            data: dataset.root.as_ref().map(|p| p.display().to_string()),
            schedule,
            optimizer_steps: weights.optimizer_steps(),
            args: serde_json::to_value(&cfg)?,
            depthwise_rows: has_depthwise_conv(&trainer.main().net.graph).then_some(gpu.depthwise_rows),
            ..CheckpointInfo::new_v1()
        };
        let moments = [weights.export_momentum(&gpu)?, weights.export_second_moment(&gpu)?];
        checkpoint::save(&cfg.ckpt_dir.join(CHECKPOINT_FILE), &info, &state, &moments)?;
        if improved {
            state.save(&cfg.ckpt_dir.join(BEST_FILE))?;
        }
    }
    if let Some(rec) = &recorder {
        run.log(&format!("telemetry: {} records in {}", rec.written, crate::telemetry::RECORDS_FILE))?;
    }
    Ok(Summary {
        epochs: cfg.epochs,
        best_acc1,
        last,
        train_img_s: trained_images as f64 / train_seconds.max(1e-9),
        data_wait: data_wait_seconds / train_seconds.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
        log_dir: cfg.log_dir.clone(),
    })
}

/// Whether `graph` has a depthwise convolution, whose kernel family a checkpoint records.
fn has_depthwise_conv(graph: &Graph) -> bool {
    graph.nodes.iter().any(|node| {
        node.op.as_any().downcast_ref::<Conv2d>().is_some_and(|conv| conv.shape.kernel() == ConvKernel::Depthwise)
    })
}

/// Sets the weights: from a checkpoint (resume), a baseline (init-from), or the seed.
/// Returns the first epoch to train and the best accuracy so far.
fn initialise(trainer: &Trainer, cfg: &TrainConfig, resume: &Option<Checkpoint>) -> Result<(usize, f64)> {
    let gpu = &trainer.gpu;
    let weights = trainer.main().exe.weights();
    let graph = &trainer.main().net.graph;
    if let Some(ck) = resume {
        let path = cfg.resume.as_deref().expect("resume");
        let family = |b: bool| if b { "baseline" } else { "KernelDNA" };
        weights.import(gpu, &ck.weights).with_context(|| {
            format!(
                "{} holds a {} {} network with {} classes; this run is a {} {} with {}",
                path.display(),
                family(ck.info.baseline),
                ck.info.arch,
                ck.info.num_classes,
                family(cfg.baseline),
                cfg.arch,
                trainer.spec.classes
            )
        })?;
        let saved = ck.info.args.get("optimizer").and_then(|o| o.as_str()).unwrap_or("sgd");
        if saved != cfg.optimizer {
            bail!("{} was trained with --opt {saved}; resume it with the same optimizer", path.display());
        }
        weights
            .import_momentum(gpu, &ck.momentum, ck.info.optimizer_steps)
            .with_context(|| format!("{}: optimizer state", path.display()))?;
        if cfg.optimizer == "adamw" {
            weights
                .import_second_moment(gpu, &ck.second_moment)
                .with_context(|| format!("{}: optimizer state", path.display()))?;
        }
        if let Some(saved) = ck.info.depthwise_rows.filter(|&rows| rows != gpu.depthwise_rows) {
            let kernels = |rows: bool| if rows { "row" } else { "GPU" };
            eprintln!(
                "note: {} was written by a run whose depthwise convolutions ran the {} kernels; this adapter runs the \
                 {} ones, whose weight gradients sum in another order: the run goes on, but not bit for bit as it \
                 would have",
                path.display(),
                kernels(saved),
                kernels(gpu.depthwise_rows),
            );
        }
        return Ok((ck.info.epoch, ck.info.best_acc1));
    }
    weights.initialise(gpu, graph, cfg.seed);
    if let Some(path) = &cfg.init_from {
        if cfg.baseline {
            bail!("--init-from starts a KernelDNA network from a baseline; drop --baseline");
        }
        let mut baseline = StateDict::load(path)?;
        let mut fresh = weights.export(gpu)?;
        // A classifier for another class count starts fresh, as in fine-tuning.
        baseline.floats.retain(|k, t| fresh.floats.get(k).is_none_or(|f| f.shape == t.shape));
        pretrained::init_from_baseline(cfg.arch, &mut fresh, &baseline)
            .with_context(|| format!("--init-from {}", path.display()))?;
        weights.import(gpu, &fresh)?;
    }
    Ok((0, 0.0))
}

/// One epoch of training; returns the images trained on and the seconds spent waiting for
/// the loader.
fn train_epoch(
    trainer: &mut Trainer,
    run: &mut RunDir,
    recorder: &mut Option<Recorder>,
    split: &Arc<crate::data::Split>,
    ds: &Dataset,
    epoch: usize,
    lr: f64,
) -> Result<(usize, f64)> {
    let cfg = trainer.cfg.clone();
    let loader = Loader::new(split.clone(), train_loader_config(&cfg, ds.kind, epoch));
    let steps = loader.len();
    let bar = progress_bar(&cfg, steps, &format!("epoch {}/{}", epoch + 1, cfg.epochs));
    let mut meter = Meter::new(epoch, steps, lr, cfg.print_freq.max(1));
    let started = Instant::now();
    let mut current: Option<usize> = None;
    let mut skipped = 0usize;
    let mut waited = 0.0f64;
    let mut batches = loader;
    loop {
        let wait = Instant::now();
        let Some(batch) = batches.next() else { break };
        waited += wait.elapsed().as_secs_f64();
        let batch = batch?;
        skipped += batch.skipped.len();
        for s in &batch.skipped {
            run.log(&format!("skipped {s}"))?;
        }
        if batch.len() < 2 {
            continue;
        }
        let size = batch.len();
        // Stats arrive per executor; finish the previous one so they stay in step order.
        if let Some(prev) = current.filter(|&p| p != size) {
            let stats = trainer.net(prev)?.exe.finish()?;
            meter.take(stats, run, &bar, started)?;
        }
        current = Some(size);
        let net = trainer.net(size)?;
        net.exe.set_lr(lr as f32);
        write_drop_masks(net, cfg.seed, epoch, meter.done + meter.sizes.len())?;
        net.exe.write(net.net.images, &batch.images)?;
        net.exe.write_labels(net.net.labels, &batch.labels)?;
        net.exe.step()?;
        meter.sizes.push_back(size);
        let stats = net.exe.poll_stats()?;
        meter.take(stats, run, &bar, started)?;
        if let Some(rec) = recorder.as_mut() {
            rec.poll()?;
            // The epoch's last step gets its own record below; the recorder reads the main
            // executor's gates, so steps of other batch sizes are left out.
            let step = trainer.main().exe.weights().optimizer_steps();
            if rec.due(step) && meter.sizes.len() + meter.done < steps && size == cfg.batch_size {
                rec.capture(RecordKind::Step, step, epoch)?;
            }
        }
    }
    if let Some(size) = current {
        let stats = trainer.net(size)?.exe.finish()?;
        meter.take(stats, run, &bar, started)?;
    }
    if let Some(rec) = recorder.as_mut() {
        rec.capture(RecordKind::Epoch, trainer.main().exe.weights().optimizer_steps(), epoch)?;
        rec.finish()?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    run.log(&format!(
        "epoch {}: {} images in {seconds:.1} s, {:.1}% of it waiting for data",
        epoch + 1,
        meter.images,
        100.0 * waited / seconds.max(1e-9)
    ))?;
    if skipped > 0 {
        say(run, &format!("epoch {}: skipped {skipped} unreadable images (see log.txt)", epoch + 1))?;
    }
    Ok((meter.images, waited))
}

/// Draws this step's stochastic-depth masks: sample n of layer l keeps its residual branch with
/// probability 1 - p, seeded by (seed, epoch, step, layer, sample), so a resumed run draws the
/// same.
fn write_drop_masks(net: &TrainNet, seed: u64, epoch: usize, step: usize) -> Result<()> {
    use rand::{Rng, SeedableRng};
    for (layer, &(mask, p)) in net.net.drop_paths.iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(crate::data::loader::mix(&[
            seed,
            0x6472_6f70,
            epoch as u64,
            step as u64,
            layer as u64,
        ]));
        let batch = net.net.graph.shape(mask)[0];
        let keep: Vec<f32> = (0..batch).map(|_| if rng.random::<f32>() < p { 0.0 } else { 1.0 }).collect();
        net.exe.write(mask, &keep)?;
    }
    Ok(())
}

/// Running loss and accuracy of an epoch, logged every `print_freq` steps.
struct Meter {
    epoch: usize,
    steps: usize,
    lr: f64,
    print_freq: usize,
    /// Batch sizes of submitted steps whose statistics have not arrived.
    sizes: VecDeque<usize>,
    done: usize,
    images: usize,
    window: (f64, f64, usize, usize),
}

impl Meter {
    fn new(epoch: usize, steps: usize, lr: f64, print_freq: usize) -> Meter {
        Meter { epoch, steps, lr, print_freq, sizes: VecDeque::new(), done: 0, images: 0, window: (0.0, 0.0, 0, 0) }
    }

    fn take(&mut self, stats: Vec<StepStats>, run: &mut RunDir, bar: &ProgressBar, started: Instant) -> Result<()> {
        for s in stats {
            let size = self.sizes.pop_front().unwrap_or(1);
            if !s.loss.is_finite() {
                bail!(
                    "the loss became {} at epoch {} step {}; stopped. The last good checkpoint (if any) is kept; \
                     try a lower --lr",
                    s.loss,
                    self.epoch + 1,
                    self.done
                );
            }
            self.done += 1;
            self.images += size;
            let w = &mut self.window;
            w.0 += s.loss as f64;
            w.1 += s.correct as f64;
            w.2 += 1;
            w.3 += size;
            let img_s = self.images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let (loss, acc1) = (w.0 / w.2 as f64, 100.0 * w.1 / w.3 as f64);
            bar.set_position(self.done as u64);
            bar.set_message(format!("loss {loss:.4} acc@1 {acc1:5.2}% lr {:.4} {img_s:.0} img/s", self.lr));
            if self.done.is_multiple_of(self.print_freq) || self.done == self.steps {
                let step = self.done - 1;
                run.record(&json!({"kind": "train", "epoch": self.epoch, "step": step, "loss": loss, "acc1": acc1,
                                   "lr": self.lr, "img_s": img_s}))?;
                let line = format!(
                    "epoch {} [{}/{}] loss {loss:.4} acc@1 {acc1:.2}% lr {:.5} {img_s:.1} img/s",
                    self.epoch + 1,
                    self.done,
                    self.steps,
                    self.lr
                );
                run.log(&line)?;
                if bar.is_hidden() {
                    println!("{line}");
                }
                self.window = (0.0, 0.0, 0, 0);
            }
        }
        Ok(())
    }
}

/// The telemetry recorder of a run (`None` when turned off or for networks without routers
/// and children), with its probe batch: the first validation images.
fn open_telemetry(
    trainer: &Trainer,
    run: &RunDir,
    split: &Arc<crate::data::Split>,
    ds: &Dataset,
) -> Result<Option<Recorder>> {
    let cfg = &trainer.cfg;
    if cfg.telemetry_every == 0 || split.is_empty() {
        return Ok(None);
    }
    let size = PROBE_IMAGES.min(split.len());
    let lc = LoaderConfig { max_batches: Some(1), ..validation_loader_config(ds.kind, cfg.res, size, 1, cfg.skip_bad) };
    let Some(batch) = Loader::new(split.clone(), lc).next().transpose()? else { return Ok(None) };
    let main = trainer.main();
    Recorder::open(
        &run.path,
        cfg.telemetry_every,
        trainer.spec,
        cfg.res,
        &main.net.graph,
        &main.exe,
        &batch.images,
        &batch.labels,
        main.exe.weights().optimizer_steps(),
    )
}

fn validate(trainer: &Trainer, split: &Arc<crate::data::Split>, ds: &Dataset) -> Result<Accuracy> {
    let cfg = &trainer.cfg;
    let lc = validation_loader_config(ds.kind, cfg.res, cfg.batch_size, cfg.workers, cfg.skip_bad);
    let bar = progress_bar(cfg, crate::data::loader::batch_count(split.len(), &lc), "validate");
    let acc =
        evaluate::evaluate(split.clone(), lc, cfg.label_smoothing, &mut |b| trainer.eval_net(b), &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(acc)
}

fn progress_bar(cfg: &TrainConfig, len: usize, prefix: &str) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Prints a line and logs it.
fn say(run: &mut RunDir, line: &str) -> Result<()> {
    println!("{line}");
    run.log(line)
}

/// Evaluates the network of checkpoint `path` on `data` (or the dataset it records), folded:
/// children and BatchNorms computed once.
pub fn evaluate_checkpoint(
    gpu: Arc<Gpu>,
    path: &Path,
    data: Option<&Path>,
    dataset: Option<DatasetKind>,
    batch: usize,
    workers: usize,
) -> Result<(CheckpointInfo, Accuracy)> {
    let ck = checkpoint::load(path)?;
    let info = ck.info.clone();
    let arch: Arch = info.arch.parse()?;
    let ds = match (data, dataset) {
        (None, None) => {
            let kind: DatasetKind = info.dataset.parse()?;
            let root = info.data.as_ref().map(PathBuf::from);
            Dataset::open(root.as_deref(), Some(kind))
                .with_context(|| format!("the dataset recorded in {} is gone; give --data", path.display()))?
        }
        (d, k) => Dataset::open(d, k)?,
    };
    if ds.classes != info.num_classes {
        bail!("{} was trained on {} classes; {} has {}", path.display(), info.num_classes, ds.kind, ds.classes);
    }
    let spec = ModelSpec { arch, kdna: !info.baseline, classes: info.num_classes, drop_path: 0.0 };
    let lc = validation_loader_config(ds.kind, info.res, batch, workers, false);
    // Check the weights fit before folding (a clear error naming keys).
    let probe = build(spec, 1, info.res, 0.0)?;
    Weights::new(&gpu, &probe.graph)
        .import(&gpu, &ck.weights)
        .with_context(|| format!("loading {}", path.display()))?;
    let smoothing = info.args.get("label_smoothing").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let mut make = |b: usize| -> Result<EvalNet> {
        let net = build(spec, b, info.res, smoothing as f32)?;
        let folded = crate::graph::fold::fold(&net.graph, &ck.weights)?;
        let exe = Executor::new(gpu.clone(), &folded.graph, Plan::eval())?;
        exe.weights().import(&gpu, &folded.weights)?;
        Ok(EvalNet { exe, images: folded.tensors[&net.images], logits: folded.tensors[&net.logits] })
    };
    let acc = evaluate::evaluate(Arc::new(ds.val.clone()), lc, smoothing, &mut make, &mut |_| {})?;
    Ok((info, acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_record_the_depthwise_family_only_of_networks_with_depthwise_convs() {
        let graph =
            |arch| build(ModelSpec { arch, kdna: true, classes: 10, drop_path: 0.0 }, 1, 32, 0.0).unwrap().graph;
        assert!(!has_depthwise_conv(&graph(Arch::ResNet18)));
        assert!(has_depthwise_conv(&graph(Arch::MobileNetV2)));
        assert!(has_depthwise_conv(&graph(Arch::ConvNeXtTiny)));
    }
}
