//! The seed's learning-rate schedule (WarmupCosineAnnealingLR, stepped per epoch): linear
//! warm-up to the peak rate, then a half cosine down to `eta_min` at the last epoch.
//! A pure function of the epoch and the arguments, so a resumed run recomputes it from its own
//! `--epochs` (which may have grown).

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub eta_min: f64,
    pub epochs: usize,
    pub warmup_epochs: usize,
}

impl Schedule {
    /// The rate of every step of 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return self.lr * (epoch + 1) as f64 / self.warmup_epochs as f64;
        }
        let span = self.epochs.saturating_sub(self.warmup_epochs).max(1) as f64;
        let t = (epoch - self.warmup_epochs) as f64;
        self.eta_min + (self.lr - self.eta_min) * (1.0 + (std::f64::consts::PI * t / span).cos()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn warms_up_linearly_then_follows_a_half_cosine() {
        let s = Schedule { lr: 0.1, eta_min: 0.0, epochs: 10, warmup_epochs: 2 };
        assert!((s.lr_at(0) - 0.05).abs() < 1e-12);
        assert!((s.lr_at(1) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(2) - 0.1).abs() < 1e-12);
        // Half way through the cosine part (epoch 2 + 4 of 8): half the peak.
        assert!((s.lr_at(6) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(9) > 0.0 && s.lr_at(9) < s.lr_at(8));
    }

    #[test]
    fn the_first_epoch_rate_does_not_depend_on_the_length_of_the_run() {
        for warmup in [0, 3] {
            let short = Schedule { lr: 0.1, eta_min: 1e-4, epochs: 1, warmup_epochs: warmup };
            let long = Schedule { epochs: 90, ..short };
            assert_eq!(short.lr_at(0), long.lr_at(0));
        }
        let s = Schedule { lr: 0.1, eta_min: 1e-3, epochs: 4, warmup_epochs: 0 };
        assert!((s.lr_at(4) - 1e-3).abs() < 1e-12, "reaches eta_min at the end");
    }
}
