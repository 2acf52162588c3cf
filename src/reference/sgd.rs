//! Reference of [`crate::ops::sgd`]: one torch.optim.SGD step.

use crate::ops::sgd::Sgd;

/// Updates `param` and `velocity` in place. `first_step` starts the momentum buffer.
pub fn step(opt: &Sgd, param: &mut [f64], grad: &[f64], velocity: &mut [f64], first_step: bool) {
    let m = opt.momentum as f64;
    for i in 0..param.len() {
        let mut d = grad[i] + opt.weight_decay as f64 * param[i];
        if m != 0.0 {
            velocity[i] = if first_step { d } else { m * velocity[i] + (1.0 - opt.dampening as f64) * d };
            d = if opt.nesterov { d + m * velocity[i] } else { velocity[i] };
        }
        param[i] -= opt.lr as f64 * d;
    }
}
