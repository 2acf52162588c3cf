//! Reference of [`crate::ops::activation`], [`crate::ops::channel_scale`] and
//! [`crate::ops::layer_scale`] and [`crate::ops::drop_path`].

use crate::ops::activation::Activation;

pub fn activation_forward(kind: Activation, x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| match kind {
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Activation::Gelu => v * normal_cdf(v),
        })
        .collect()
}

/// torch's gradients: relu passes where x > 0, relu6 where 0 < x < 6.
pub fn activation_backward(kind: Activation, x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| match kind {
            Activation::Relu => {
                if v > 0.0 {
                    g
                } else {
                    0.0
                }
            }
            Activation::Relu6 => {
                if v > 0.0 && v < 6.0 {
                    g
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + (-v).exp());
                g * s * (1.0 - s)
            }
            Activation::Gelu => g * (normal_cdf(v) + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()),
        })
        .collect()
}

/// The standard normal distribution, `erfc(-x / sqrt 2) / 2`.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// `x[n, c, :]` times `gate[n, c]`, with `spatial` elements per (n, c).
pub fn channel_scale_forward(x: &[f64], gate: &[f64], spatial: usize) -> Vec<f64> {
    x.iter().enumerate().map(|(i, v)| v * gate[i / spatial]).collect()
}

/// Gradients (input, gate).
pub fn channel_scale_backward(x: &[f64], gate: &[f64], dy: &[f64], spatial: usize) -> (Vec<f64>, Vec<f64>) {
    let dx = dy.iter().enumerate().map(|(i, g)| g * gate[i / spatial]).collect();
    let mut dgate = vec![0.0; gate.len()];
    for (i, g) in dy.iter().enumerate() {
        dgate[i / spatial] += g * x[i];
    }
    (dx, dgate)
}

/// `x[n, c, :]` times `gamma[c]`, with `spatial` elements per (n, c).
pub fn layer_scale_forward(x: &[f64], gamma: &[f64], spatial: usize) -> Vec<f64> {
    x.iter().enumerate().map(|(i, v)| v * gamma[(i / spatial) % gamma.len()]).collect()
}

/// Gradients (input, gamma).
pub fn layer_scale_backward(x: &[f64], gamma: &[f64], dy: &[f64], spatial: usize) -> (Vec<f64>, Vec<f64>) {
    let c = |i: usize| (i / spatial) % gamma.len();
    let dx = dy.iter().enumerate().map(|(i, g)| g * gamma[c(i)]).collect();
    let mut dgamma = vec![0.0; gamma.len()];
    for (i, g) in dy.iter().enumerate() {
        dgamma[c(i)] += g * x[i];
    }
    (dx, dgamma)
}

/// Stochastic depth: in training `x[n, ...] * mask[n] / (1 - p)`, in eval `x`. Its gradient is
/// the same map of dy.
pub fn drop_path(x: &[f64], mask: &[f64], p: f64, train: bool) -> Vec<f64> {
    let per_sample = x.len() / mask.len();
    x.iter().enumerate().map(|(i, v)| if train { v * mask[i / per_sample] / (1.0 - p) } else { *v }).collect()
}
