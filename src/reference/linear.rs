//! Reference of [`crate::ops::linear`].

use crate::ops::linear::Linear;

pub fn forward(l: &Linear, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let mut y = Vec::with_capacity(l.batch * l.out_features);
    for n in 0..l.batch {
        for o in 0..l.out_features {
            let dot: f64 = (0..l.in_features).map(|k| x[n * l.in_features + k] * w[o * l.in_features + k]).sum();
            y.push(dot + bias.map_or(0.0, |b| b[o]));
        }
    }
    y
}

/// Gradients (input, weight, bias).
pub fn backward(l: &Linear, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; l.out_features];
    for n in 0..l.batch {
        for o in 0..l.out_features {
            let g = dy[n * l.out_features + o];
            db[o] += g;
            for k in 0..l.in_features {
                dx[n * l.in_features + k] += g * w[o * l.in_features + k];
                dw[o * l.in_features + k] += g * x[n * l.in_features + k];
            }
        }
    }
    (dx, dw, db)
}
