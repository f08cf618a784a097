//! Learning-rate schedules, as a function of the global step (so that a resumed run continues
//! the same curve).

use serde::{Deserialize, Serialize};

/// A learning-rate schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// The base rate times `gamma` every `every` epochs (PyTorch's `StepLR`).
    Step {
        /// Epochs between decays.
        every: usize,
        /// The factor.
        gamma: f64,
    },
    /// Linear warm-up from 0 over `warmup` epochs, then half a cosine down to `min_lr` at the
    /// end of the run.
    Cosine {
        /// Epochs of warm-up.
        warmup: usize,
        /// The rate at the end.
        min_lr: f64,
    },
}

impl Schedule {
    /// The rate at global step `step` (0-based) of a run of `epochs` epochs of
    /// `steps_per_epoch` steps, from the base rate `base`.
    pub fn lr(&self, base: f64, step: u64, steps_per_epoch: usize, epochs: usize) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                let epoch = (step as f64 / spe).floor() as u64;
                let k = epoch / every.max(1) as u64;
                base * gamma.powi(k.min(i32::MAX as u64) as i32)
            }
            Schedule::Cosine { warmup, min_lr } => {
                let warm = warmup as f64 * spe;
                let total = (epochs as f64 * spe).max(warm + 1.0);
                let s = step as f64;
                if s < warm {
                    base * (s + 1.0) / warm
                } else {
                    let p = ((s - warm) / (total - warm)).min(1.0);
                    min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
                }
            }
        }
    }

    /// A short description (`constant`, `step(10, 0.5)`, `cosine(warmup 2)`).
    pub fn describe(&self) -> String {
        match *self {
            Schedule::Constant => "constant".into(),
            Schedule::Step { every, gamma } => format!("step (x{gamma} every {every} epochs)"),
            Schedule::Cosine { warmup, min_lr } => {
                format!("cosine (warm-up {warmup} epochs, down to {min_lr})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_curves() {
        assert_eq!(Schedule::Constant.lr(0.1, 500, 10, 5), 0.1);
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 19, 10, 10), 1.0);
        assert_eq!(s.lr(1.0, 20, 10, 10), 0.5);
        assert_eq!(s.lr(1.0, 45, 10, 10), 0.25);
        let c = Schedule::Cosine {
            warmup: 1,
            min_lr: 0.0,
        };
        assert!((c.lr(1.0, 0, 10, 11) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 9, 10, 11) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10, 11) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 60, 10, 11) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 110, 10, 11).abs() < 1e-12);
    }
}
