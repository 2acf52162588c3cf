//! Reference of [`crate::ops::layernorm`].

use crate::ops::layernorm::LayerNorm;

/// The flat indices of one (sample, position)'s channels.
fn position(l: &LayerNorm, n: usize, s: usize) -> impl Iterator<Item = usize> + '_ {
    (0..l.channels).map(move |c| (n * l.channels + c) * l.spatial + s)
}

/// (mean, 1 / sqrt(biased variance + eps)) of every (sample, position).
fn stats(l: &LayerNorm, x: &[f64]) -> Vec<(f64, f64)> {
    let c = l.channels as f64;
    (0..l.batch)
        .flat_map(|n| (0..l.spatial).map(move |s| (n, s)))
        .map(|(n, s)| {
            let mean = position(l, n, s).map(|i| x[i]).sum::<f64>() / c;
            let var = position(l, n, s).map(|i| (x[i] - mean).powi(2)).sum::<f64>() / c;
            (mean, 1.0 / (var + l.eps as f64).sqrt())
        })
        .collect()
}

pub fn forward(l: &LayerNorm, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let stats = stats(l, x);
    let mut y = vec![0.0; x.len()];
    for n in 0..l.batch {
        for s in 0..l.spatial {
            let (mean, rstd) = stats[n * l.spatial + s];
            for (c, i) in position(l, n, s).enumerate() {
                y[i] = (x[i] - mean) * rstd * w[c] + b[c];
            }
        }
    }
    y
}

/// Gradients (input, weight, bias).
pub fn backward(l: &LayerNorm, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stats = stats(l, x);
    let c_count = l.channels as f64;
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; l.channels], vec![0.0; l.channels]);
    for n in 0..l.batch {
        for s in 0..l.spatial {
            let (mean, rstd) = stats[n * l.spatial + s];
            let idx: Vec<usize> = position(l, n, s).collect();
            let xhat: Vec<f64> = idx.iter().map(|&i| (x[i] - mean) * rstd).collect();
            let g: Vec<f64> = idx.iter().enumerate().map(|(c, &i)| dy[i] * w[c]).collect();
            let mean_g = g.iter().sum::<f64>() / c_count;
            let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c_count;
            for (c, &i) in idx.iter().enumerate() {
                dx[i] = rstd * (g[c] - mean_g - xhat[c] * mean_gx);
                dw[c] += dy[i] * xhat[c];
                db[c] += dy[i];
            }
        }
    }
    (dx, dw, db)
}
