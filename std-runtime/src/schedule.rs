//! Learning-rate schedules, as a function of the run's place counted in epochs
//! (`completed epochs x steps per epoch + the step within the epoch`, which [`crate::train`]
//! passes), and of the validation loss for [`Schedule::Plateau`] (whose state, [`Plateau`], a
//! checkpoint keeps).
//!
//! Counted so, a run resumed on the same data continues the unbroken run's curve bit for bit;
//! one resumed on data with another number of steps per epoch goes on from the epoch it
//! stopped at (a step schedule at that epoch's rate, as PyTorch's `StepLR` stepped once an
//! epoch), not from where the old step count would land in the new epochs. A cosine schedule
//! spans the epochs the run is given ([`crate::train::TrainConfig::epochs`]): resuming with
//! more epochs than the run had stretches the rest of the curve over the new total.

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
    /// Linear warm-up over `warmup` epochs of `W` steps in all (the rate at its step `s`,
    /// 0-based, is `base x (s + 1) / W`: the first step takes `base / W`, not 0, and the last
    /// the base rate),
    /// then half a cosine from the base rate down to `min_lr` at the end of the run. The
    /// warm-up must be shorter than the run ([`crate::train::TrainConfig::check_run`]).
    Cosine {
        /// Epochs of warm-up.
        warmup: usize,
        /// The rate at the end.
        min_lr: f64,
    },
    /// The rate times `factor` whenever the validation loss has not improved for more than
    /// `patience` epochs, never below `min_lr` (PyTorch's `ReduceLROnPlateau` on the
    /// validation loss: mode `min`, relative threshold 1e-4, no cool-down, `eps` 1e-8: a cut
    /// that would lower the rate by 1e-8 or less is skipped, so with `min_lr` 0 the rate stops
    /// falling once it is `1e-8 / (1 - factor)` or less, rather than going on towards 0).
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
    /// The rate at step `step` (0-based) of the schedule, in a run of `epochs` epochs of
    /// `steps_per_epoch` steps, from the base rate `base`, after `plateau` (what
    /// [`Schedule::Plateau`] observed; the others ignore it). `step` is the run's place
    /// counted in epochs, `completed epochs x steps_per_epoch + the step within the epoch`
    /// (what [`crate::train::fit`] passes; on unchanged data, the global step count).
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
                plateau_lr(base, factor, min_lr, plateau.reductions)
            }
            Schedule::Step { every, gamma } => {
                let epoch = step / steps_per_epoch.max(1) as u64;
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

/// PyTorch's `ReduceLROnPlateau` epsilon: a cut that lowers the rate by this or less is
/// skipped.
pub const PLATEAU_EPS: f64 = 1e-8;

/// The rate after `reductions` cuts of [`Schedule::Plateau`] from `base`, as PyTorch's
/// `ReduceLROnPlateau._reduce_lr` makes them, one by one: `new = max(old x factor, min_lr)`,
/// taken only when `old - new > 1e-8` ([`PLATEAU_EPS`]). Once a cut is skipped every later
/// one is (the same rate gives the same `new`), so the loop stops there.
fn plateau_lr(base: f64, factor: f64, min_lr: f64, reductions: u32) -> f64 {
    let mut lr = base;
    for _ in 0..reductions {
        let new = (lr * factor).max(min_lr);
        if lr - new > PLATEAU_EPS {
            lr = new;
        } else {
            break;
        }
    }
    lr
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

    /// PyTorch's `ReduceLROnPlateau._reduce_lr`, worked by hand: `new = max(old x factor,
    /// min_lr)`, taken only when `old - new > eps` (1e-8); the rates are Python floats, each
    /// the last one times the factor.
    #[test]
    fn plateau_cuts_stop_where_pytorch_eps_skips_them() {
        let rates = |base: f64, factor: f64, min_lr: f64, n: u32| -> Vec<f64> {
            let s = Schedule::Plateau {
                factor,
                patience: 0,
                min_lr,
            };
            (0..=n)
                .map(|r| {
                    let p = Plateau {
                        reductions: r,
                        ..Plateau::default()
                    };
                    s.lr(base, 0, 1, 1, &p)
                })
                .collect()
        };
        // PyTorch's defaults (factor 0.1, min_lr 0) from 1e-6: 1e-7 (a cut of 9e-7), 1e-8 (of
        // 9e-8); the next, to 1e-9, would cut 9e-9 <= 1e-8 and is skipped, as every later one.
        let (a, b) = (1e-6, 1e-6 * 0.1);
        let c = b * 0.1;
        assert_eq!(rates(1e-6, 0.1, 0.0, 5), [a, a * 0.1, c, c, c, c]);
        assert!((c - 1e-8).abs() < 1e-20);
        // From 1e-3 with the defaults: five cuts, then the rate stays near 1e-8.
        let mut want = vec![1e-3];
        for _ in 0..5 {
            want.push(want.last().unwrap() * 0.1);
        }
        let last = *want.last().unwrap();
        want.extend([last; 4]);
        assert_eq!(rates(1e-3, 0.1, 0.0, 9), want);
        assert!((last - 1e-8).abs() < 1e-20, "{last}");
        // A cut of exactly 1e-8 (2e-8 halved: exact in binary) is not more than eps: skipped.
        assert_eq!(rates(2e-8, 0.5, 0.0, 3), [2e-8; 4]);
        // A cut to the floor is taken when it is larger than eps (0.25 to 0.2), then none.
        assert_eq!(
            rates(1.0, 0.5, 0.2, 6),
            [1.0, 0.5, 0.25, 0.2, 0.2, 0.2, 0.2]
        );
        // A floor above the base: PyTorch's `new` is the floor, above `old`: never taken.
        assert_eq!(rates(0.01, 0.5, 0.1, 3), [0.01; 4]);
        // Many cuts recorded (a checkpoint's count) give the same rate.
        assert_eq!(rates(1e-6, 0.1, 0.0, 1000)[1000], c);
    }

    /// The step schedule counts epochs from the place `train::fit` passes
    /// (`epoch x steps_per_epoch + k`), whatever the steps per epoch.
    #[test]
    fn the_step_schedule_counts_epochs() {
        let p = &Plateau::default();
        let s = Schedule::Step {
            every: 1,
            gamma: 0.5,
        };
        for spe in [1usize, 3, 45] {
            for epoch in 0..5u64 {
                for k in [0, spe as u64 - 1] {
                    let place = epoch * spe as u64 + k;
                    assert_eq!(s.lr(1.0, place, spe, 5, p), 0.5f64.powi(epoch as i32));
                }
            }
        }
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
