//! Validation: top-1, top-5 and mean loss over a split, in eval mode (running statistics).

use std::sync::Arc;

use anyhow::Result;

use crate::data::loader::LoaderConfig;
use crate::data::{Loader, Split};
use crate::graph::{Executor, TensorId};

/// An eval executor for one batch size, and where its images and logits are.
pub struct EvalNet {
    pub exe: Executor,
    pub images: TensorId,
    pub logits: TensorId,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Percent, 0-100.
    pub acc1: f64,
    pub acc5: f64,
    pub loss: f64,
    pub images: usize,
}

/// Runs every batch of `split` through the executor made for its size (`make(batch)`; a
/// final smaller batch gets its own).
pub fn evaluate(
    split: Arc<Split>,
    cfg: LoaderConfig,
    label_smoothing: f64,
    make: &mut dyn FnMut(usize) -> Result<EvalNet>,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Accuracy> {
    let mut nets: Vec<(usize, EvalNet)> = Vec::new();
    let (mut top1, mut top5, mut loss_sum, mut n) = (0usize, 0usize, 0.0f64, 0usize);
    for batch in Loader::new(split, cfg) {
        let batch = batch?;
        let size = batch.len();
        if size == 0 {
            continue;
        }
        if !nets.iter().any(|(s, _)| *s == size) {
            nets.push((size, make(size)?));
        }
        let net = &mut nets.iter_mut().find(|(s, _)| *s == size).expect("made").1;
        net.exe.write(net.images, &batch.images)?;
        net.exe.run()?;
        let logits = net.exe.read(net.logits)?;
        let classes = logits.len() / size;
        for (row, &label) in logits.chunks_exact(classes).zip(&batch.labels) {
            let label = label as usize;
            let higher = row.iter().filter(|&&v| v > row[label]).count();
            top1 += usize::from(higher < 1);
            top5 += usize::from(higher < 5);
            loss_sum += cross_entropy(row, label, label_smoothing);
        }
        n += size;
        on_batch(size);
    }
    let pct = |k: usize| if n == 0 { 0.0 } else { 100.0 * k as f64 / n as f64 };
    Ok(Accuracy { acc1: pct(top1), acc5: pct(top5), loss: if n == 0 { 0.0 } else { loss_sum / n as f64 }, images: n })
}

/// Cross-entropy of one row of logits, with label smoothing as torch defines it.
pub fn cross_entropy(logits: &[f32], label: usize, smoothing: f64) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let log_sum = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let nll = log_sum - logits[label] as f64;
    let mean_nll = log_sum - logits.iter().map(|&v| v as f64).sum::<f64>() / logits.len() as f64;
    (1.0 - smoothing) * nll + smoothing * mean_nll
}
