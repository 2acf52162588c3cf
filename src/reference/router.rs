//! Reference of [`crate::ops::router`]: the pool, the two projections and their activations,
//! one after the other.

use super::elementwise::activation_forward;
use super::{linear, pool};
use crate::ops::activation::Activation;
use crate::ops::router::RouterGate;

/// The pooled means, hidden units and gate of `r` over `x` with fc1 (`w1`, `b1`) and fc2
/// (`w2`, `b2`).
pub fn forward(r: &RouterGate, x: &[f64], [w1, b1, w2, b2]: [&[f64]; 4]) -> [Vec<f64>; 3] {
    let pooled = pool::global_avgpool_forward(x, r.spatial);
    let hidden = activation_forward(Activation::Relu, &linear::forward(&r.fc1(), &pooled, w1, Some(b1)));
    let gate = activation_forward(Activation::Sigmoid, &linear::forward(&r.fc2(), &hidden, w2, Some(b2)));
    [pooled, hidden, gate]
}
