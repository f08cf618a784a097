//! Learning-rate schedules, as a function of the global step (so that a resumed run continues
//! the same curve), and of the validation loss for [`Schedule::Plateau`] (whose state,
//! [`Plateau`], a checkpoint keeps).

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
    /// The rate times `factor` whenever the validation loss has not improved for more than
    /// `patience` epochs, never below `min_lr` (PyTorch's `ReduceLROnPlateau` on the
    /// validation loss: mode `min`, relative threshold 1e-4, no cool-down).
    Plateau {
        /// The factor, in (0, 1).
        factor: f64,
        /// Epochs without improvement that are tolerated.
        patience: usize,
        /// The lowest rate.
        min_lr: f64,
    },
}

/// The state of [`Schedule::Plateau`]: what a resumed run goes on from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// The lowest validation loss so far.
    pub best: Option<f64>,
    /// Epochs since it improved.
    pub wait: usize,
    /// Reductions so far.
    pub reductions: u32,
}

impl Plateau {
    /// Whether this is the state of a run that never used the schedule.
    pub fn is_unused(&self) -> bool {
        *self == Plateau::default()
    }

    /// Takes an epoch's validation loss; returns whether the rate is reduced from the next
    /// epoch on. An improvement is a loss below `best x (1 - 1e-4)`; a NaN loss is none.
    pub fn observe(&mut self, loss: f64, patience: usize) -> bool {
        // As PyTorch's, the best starts at infinity; a NaN loss improves on nothing.
        if loss < self.best.unwrap_or(f64::INFINITY) * (1.0 - 1e-4) {
            self.best = Some(loss);
            self.wait = 0;
            return false;
        }
        self.wait = self.wait.saturating_add(1);
        if self.wait > patience {
            self.wait = 0;
            self.reductions = self.reductions.saturating_add(1);
            return true;
        }
        false
    }
}

impl Schedule {
    /// The rate at global step `step` (0-based) of a run of `epochs` epochs of
    /// `steps_per_epoch` steps, from the base rate `base`, after `plateau` (what
    /// [`Schedule::Plateau`] observed; the others ignore it).
    pub fn lr(
        &self,
        base: f64,
        step: u64,
        steps_per_epoch: usize,
        epochs: usize,
        plateau: &Plateau,
    ) -> f64 {
        let spe = steps_per_epoch.max(1) as f64;
        match *self {
            Schedule::Constant => base,
            Schedule::Plateau { factor, min_lr, .. } => {
                let n = plateau.reductions.min(i32::MAX as u32) as i32;
                (base * factor.powi(n)).max(min_lr.min(base))
            }
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
            Schedule::Plateau {
                factor,
                patience,
                min_lr,
            } => format!(
                "plateau (x{factor} after {} without a lower validation loss, down to {min_lr})",
                match patience.saturating_add(1) {
                    1 => "an epoch".to_string(),
                    n => format!("{n} epochs"),
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As PyTorch's `ReduceLROnPlateau(factor=0.5, patience=1)` stepped with these losses:
    /// reductions after the 4th and the 7th epochs (two epochs each without a new best; a NaN
    /// is none).
    #[test]
    fn plateau_reduces_after_patience_epochs_without_improvement() {
        let mut p = Plateau::default();
        let s = Schedule::Plateau {
            factor: 0.5,
            patience: 1,
            min_lr: 0.2,
        };
        let mut lrs = Vec::new();
        for loss in [1.0, 0.8, 0.8, 0.9, 0.7, f64::NAN, 0.75, 0.69999] {
            p.observe(loss, 1);
            lrs.push(s.lr(1.0, 0, 1, 1, &p));
        }
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]);
        assert_eq!((p.best, p.reductions), (Some(0.7), 2));
        // The floor.
        p.reductions = 10;
        assert_eq!(s.lr(1.0, 0, 1, 1, &p), 0.2);
    }

    #[test]
    fn shapes_of_the_curves() {
        let p = &Plateau::default();
        assert_eq!(Schedule::Constant.lr(0.1, 500, 10, 5, p), 0.1);
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 19, 10, 10, p), 1.0);
        assert_eq!(s.lr(1.0, 20, 10, 10, p), 0.5);
        assert_eq!(s.lr(1.0, 45, 10, 10, p), 0.25);
        let c = Schedule::Cosine {
            warmup: 1,
            min_lr: 0.0,
        };
        assert!((c.lr(1.0, 0, 10, 11, p) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 9, 10, 11, p) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10, 11, p) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 60, 10, 11, p) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 110, 10, 11, p).abs() < 1e-12);
    }
}
