//! Reference of [`crate::ops::adamw`]: one torch.optim.AdamW step.

use crate::ops::adamw::AdamW;

/// Step `step` (1-based), updating `param` and the moments in place.
pub fn step(opt: &AdamW, param: &mut [f64], grad: &[f64], exp_avg: &mut [f64], exp_avg_sq: &mut [f64], step: u64) {
    let (b1, b2) = (opt.beta1 as f64, opt.beta2 as f64);
    let t = step as i32;
    let step_size = opt.lr as f64 / (1.0 - b1.powi(t));
    let correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
    for i in 0..param.len() {
        param[i] *= 1.0 - opt.lr as f64 * opt.weight_decay as f64;
        exp_avg[i] = b1 * exp_avg[i] + (1.0 - b1) * grad[i];
        exp_avg_sq[i] = b2 * exp_avg_sq[i] + (1.0 - b2) * grad[i] * grad[i];
        param[i] -= step_size * exp_avg[i] / (exp_avg_sq[i].sqrt() / correction2_sqrt + opt.eps as f64);
    }
}
