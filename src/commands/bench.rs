//! `kdna bench`: what a network costs — its size (`--params`) and its speed on an adapter
//! (`--latency`, `--train`), measured as metrics.py does: warm-up, then timed iterations with
//! a device sync each.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::gpu::Gpu;
use crate::graph::fold::fold;
use crate::graph::{DispatchTime, Executor, Plan, Weights};
use crate::io::StateDict;
use crate::models::{Arch, ModelSpec, Network, build, macs_per_image, parameter_count};
use crate::ops::sgd::Sgd;

/// Parameters and multiply-accumulates of one network at one resolution.
#[derive(Clone, Debug, Serialize)]
pub struct ParamsReport {
    pub arch: String,
    pub baseline: bool,
    pub classes: usize,
    pub res: usize,
    pub params: usize,
    /// Per image, convolutions and fully connected layers (router projections included).
    pub macs: u64,
}

pub fn params(spec: ModelSpec, res: usize) -> Result<ParamsReport> {
    let net = build(spec, 1, res, 0.0)?;
    Ok(ParamsReport {
        arch: spec.arch.name().to_string(),
        baseline: !spec.kdna,
        classes: spec.classes,
        res,
        params: parameter_count(&net.graph),
        macs: macs_per_image(&net),
    })
}

/// How to time a network.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub batch: usize,
    pub res: usize,
    /// Timed iterations (each waits for the device).
    pub iters: usize,
    /// Untimed iterations first: pipeline compilation, caches, clocks.
    pub warmup: usize,
    /// Time training steps (forward, backward, SGD) as well as eval.
    pub train: bool,
}

/// Mean and standard deviation of a set of samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        let n = samples.len().max(1) as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Spread { mean, std: var.sqrt() }
    }
}

/// What `kdna bench --latency [--train] --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub arch: String,
    pub baseline: bool,
    pub adapter: String,
    pub batch: usize,
    pub res: usize,
    pub classes: usize,
    pub params: usize,
    pub macs: u64,
    pub iters: usize,
    /// Eval throughput on the folded network (children and BatchNorms folded at load).
    pub eval_img_s: f64,
    pub eval_img_s_std: f64,
    /// Wall time of one eval batch.
    pub latency_ms: f64,
    pub latency_ms_std: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step_s_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_img_s: Option<f64>,
}

/// Times eval (and, with `timing.train`, training steps) of `spec` on random weights and
/// images. `progress` hears what is being measured.
pub fn latency(gpu: Arc<Gpu>, spec: ModelSpec, timing: Timing, progress: &dyn Fn(&str)) -> Result<LatencyReport> {
    let net = build(spec, timing.batch, timing.res, 0.0)?;
    let mut rng = StdRng::seed_from_u64(0);
    let images: Vec<f32> = (0..net.graph.info(net.images).numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<u32> = (0..timing.batch).map(|_| rng.random_range(0..spec.classes as u32)).collect();

    let mut train = Executor::new(gpu.clone(), &net.graph, Plan::train(net.loss, Sgd { lr: 1e-3, ..Sgd::default() }))?;
    train.weights().initialise(&gpu, &net.graph, 0);
    train.write(net.images, &images)?;
    train.write_labels(net.labels, &labels)?;

    let mut train_times = None;
    if timing.train {
        progress("training steps");
        train_times = Some(time(&gpu, timing, || {
            train.step()?;
            Ok(())
        })?);
        train.finish()?;
    }

    progress("eval (folded)");
    let weights = train.weights().export(&gpu)?;
    drop(train);
    let mut eval = folded_eval(&gpu, &net, &weights, &images)?;
    let eval_times = time(&gpu, timing, || eval.run())?;

    let batch = timing.batch as f64;
    let throughput: Vec<f64> = eval_times.iter().map(|t| batch / t).collect();
    let latency_ms: Vec<f64> = eval_times.iter().map(|t| t * 1e3).collect();
    let (throughput, latency_ms) = (Spread::of(&throughput), Spread::of(&latency_ms));
    let train = train_times.as_deref().map(Spread::of);
    Ok(LatencyReport {
        arch: spec.arch.name().to_string(),
        baseline: !spec.kdna,
        adapter: gpu.info.name.clone(),
        batch: timing.batch,
        res: timing.res,
        classes: spec.classes,
        params: parameter_count(&net.graph),
        macs: macs_per_image(&net),
        iters: timing.iters,
        eval_img_s: throughput.mean,
        eval_img_s_std: throughput.std,
        latency_ms: latency_ms.mean,
        latency_ms_std: latency_ms.std,
        train_step_s: train.map(|s| s.mean),
        train_step_s_std: train.map(|s| s.std),
        train_img_s: train.map(|s| batch / s.mean),
    })
}

/// Wall time of `timing.iters` runs of `work`, each followed by a device sync, after
/// `timing.warmup` untimed ones.
fn time(gpu: &Gpu, timing: Timing, mut work: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..timing.warmup {
        work()?;
        gpu.wait()?;
    }
    let mut times = Vec::with_capacity(timing.iters);
    for _ in 0..timing.iters {
        let start = Instant::now();
        work()?;
        gpu.wait()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// KernelDNA's eval overhead beyond its extra multiply-adds, measured side by side.
#[derive(Clone, Debug, Serialize)]
pub struct OverheadReport {
    pub arch: String,
    pub adapter: String,
    pub batch: usize,
    pub res: usize,
    pub iters: usize,
    /// Median wall time of one eval batch of the folded baseline and KernelDNA networks.
    pub baseline_ms: f64,
    pub kdna_ms: f64,
    /// (KernelDNA eval images/s / baseline eval images/s) x (KernelDNA MACs / baseline MACs),
    /// from the medians: 1 is no overhead.
    pub overhead: f64,
}

/// [`OverheadReport`] for `arch`: the folded baseline and KernelDNA networks (random weights)
/// run in turn, batch for batch, so that a busy machine slows both alike, and each side's
/// median batch time stands for it. Throughputs measured one network after the other swing
/// with whatever else the machine runs meanwhile.
pub fn paired_overhead(gpu: Arc<Gpu>, arch: Arch, classes: usize, timing: Timing) -> Result<OverheadReport> {
    let mut sides = Vec::new();
    for kdna in [false, true] {
        let net = build(ModelSpec { arch, kdna, classes, drop_path: 0.0 }, timing.batch, timing.res, 0.0)?;
        let weights = Weights::new(&gpu, &net.graph);
        weights.initialise(&gpu, &net.graph, 0);
        let mut rng = StdRng::seed_from_u64(0);
        let images: Vec<f32> = (0..net.graph.info(net.images).numel()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let eval = folded_eval(&gpu, &net, &weights.export(&gpu)?, &images)?;
        sides.push((eval, macs_per_image(&net), Vec::with_capacity(timing.iters)));
    }
    for round in 0..timing.warmup + timing.iters {
        for (eval, _, times) in &mut sides {
            let start = Instant::now();
            eval.run()?;
            gpu.wait()?;
            if round >= timing.warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let [baseline, kdna] = [0, 1].map(|i| median(&sides[i].2));
    let macs = sides[1].1 as f64 / sides[0].1 as f64;
    Ok(OverheadReport {
        arch: arch.name().to_string(),
        adapter: gpu.info.name.clone(),
        batch: timing.batch,
        res: timing.res,
        iters: timing.iters,
        baseline_ms: baseline * 1e3,
        kdna_ms: kdna * 1e3,
        overhead: baseline / kdna * macs,
    })
}

/// The median of `samples` (the mean of the middle two of an even count).
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The folded eval network of `net` over `weights`, with `images` written.
fn folded_eval(gpu: &Arc<Gpu>, net: &Network, weights: &StateDict, images: &[f32]) -> Result<Executor> {
    let folded = fold(&net.graph, weights)?;
    let eval = Executor::new(gpu.clone(), &folded.graph, Plan::eval())?;
    eval.weights().import(gpu, &folded.weights)?;
    eval.write(folded.tensors[&net.images], images)?;
    Ok(eval)
}

/// What [`profile`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profiled {
    /// A training step (forward, backward, SGD).
    TrainingStep,
    /// A run of the folded eval network over unchanged weights.
    Eval,
}

/// Every dispatch of one run, in order, each run alone and waited for; with `rounds` above one,
/// each dispatch's least time over that many runs (a shared machine's noise only adds time).
pub fn profile(
    gpu: Arc<Gpu>,
    spec: ModelSpec,
    batch: usize,
    res: usize,
    what: Profiled,
    rounds: usize,
) -> Result<Vec<DispatchTime>> {
    let net = build(spec, batch, res, 0.0)?;
    let mut exe = match what {
        Profiled::TrainingStep => {
            let exe = Executor::new(gpu.clone(), &net.graph, Plan::train(net.loss, Sgd::default()))?;
            exe.weights().initialise(&gpu, &net.graph, 0);
            exe.write_labels(net.labels, &vec![0; batch])?;
            exe
        }
        Profiled::Eval => {
            let weights = Weights::new(&gpu, &net.graph);
            weights.initialise(&gpu, &net.graph, 0);
            let images = vec![0.5; net.graph.info(net.images).numel()];
            folded_eval(&gpu, &net, &weights.export(&gpu)?, &images)?
        }
    };
    exe.profile()?; // compiles every pipeline (and prepares what eval prepares once)
    let mut least = exe.profile()?;
    for _ in 1..rounds {
        for (best, run) in least.iter_mut().zip(exe.profile()?) {
            best.seconds = best.seconds.min(run.seconds);
        }
    }
    Ok(least)
}

/// A profile's dispatches of one kernel entry point, summed ([`by_kernel`]).
pub struct KernelTotal {
    pub kernel: &'static str,
    pub dispatches: usize,
    pub seconds: f64,
    /// Bytes copied into textures before its dispatches (timed with them).
    pub copied_bytes: u64,
}

/// A profile summed by kernel entry point, largest first.
pub fn by_kernel(dispatches: &[DispatchTime]) -> Vec<KernelTotal> {
    let mut rows: Vec<KernelTotal> = Vec::new();
    for d in dispatches {
        let at = match rows.iter().position(|row| row.kernel == d.kernel) {
            Some(at) => at,
            None => {
                rows.push(KernelTotal { kernel: d.kernel, dispatches: 0, seconds: 0.0, copied_bytes: 0 });
                rows.len() - 1
            }
        };
        let row = &mut rows[at];
        row.dispatches += 1;
        row.seconds += d.seconds;
        row.copied_bytes += d.copied_bytes;
    }
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_takes_the_middle_sample_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }
}
