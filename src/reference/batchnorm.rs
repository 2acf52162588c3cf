//! Reference of [`crate::ops::batchnorm`].

use crate::ops::batchnorm::BatchNorm;

fn channel_of(b: &BatchNorm, i: usize) -> usize {
    (i / b.spatial) % b.channels
}

/// Per-channel batch mean and biased variance.
pub fn batch_stats(b: &BatchNorm, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let count = (b.batch * b.spatial) as f64;
    let mut mean = vec![0.0; b.channels];
    for (i, v) in x.iter().enumerate() {
        mean[channel_of(b, i)] += v / count;
    }
    let mut var = vec![0.0; b.channels];
    for (i, v) in x.iter().enumerate() {
        let c = channel_of(b, i);
        var[c] += (v - mean[c]).powi(2) / count;
    }
    (mean, var)
}

fn normalise(b: &BatchNorm, x: &[f64], w: &[f64], bias: &[f64], mean: &[f64], var: &[f64]) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let c = channel_of(b, i);
            (v - mean[c]) / (var[c] + b.eps as f64).sqrt() * w[c] + bias[c]
        })
        .collect()
}

/// Train mode: output and the running statistics after the update.
pub fn forward_train(
    b: &BatchNorm,
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = batch_stats(b, x);
    let count = (b.batch * b.spatial) as f64;
    let m = b.momentum as f64;
    let new_mean = (0..b.channels).map(|c| (1.0 - m) * running_mean[c] + m * mean[c]).collect();
    let new_var = (0..b.channels).map(|c| (1.0 - m) * running_var[c] + m * var[c] * count / (count - 1.0)).collect();
    (normalise(b, x, w, bias, &mean, &var), new_mean, new_var)
}

pub fn forward_eval(
    b: &BatchNorm,
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
) -> Vec<f64> {
    normalise(b, x, w, bias, running_mean, running_var)
}

/// Gradients (input, weight, bias). `running` is `Some((mean, var))` in eval mode, where the
/// statistics are constants; train mode differentiates through the batch statistics.
pub fn backward(
    b: &BatchNorm,
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    running: Option<(&[f64], &[f64])>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = match running {
        Some((m, v)) => (m.to_vec(), v.to_vec()),
        None => batch_stats(b, x),
    };
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + b.eps as f64).sqrt()).collect();
    let xhat = |i: usize| (x[i] - mean[channel_of(b, i)]) * invstd[channel_of(b, i)];
    let mut dw = vec![0.0; b.channels];
    let mut db = vec![0.0; b.channels];
    for (i, g) in dy.iter().enumerate() {
        let c = channel_of(b, i);
        db[c] += g;
        dw[c] += g * xhat(i);
    }
    let count = (b.batch * b.spatial) as f64;
    let dx = (0..x.len())
        .map(|i| {
            let c = channel_of(b, i);
            let g = match running {
                Some(_) => dy[i],
                None => dy[i] - db[c] / count - xhat(i) * dw[c] / count,
            };
            w[c] * invstd[c] * g
        })
        .collect();
    (dx, dw, db)
}
