//! PyTorch's loss modules (`nn.MSELoss`, `nn.CrossEntropyLoss`, ...) with their options and
//! their `reduction`: each a small `Copy` struct whose fields are PyTorch's arguments (its
//! [`Default`] is PyTorch's defaults) and whose `forward` records the loss on a tape.
//!
//! | PyTorch | mote | terms |
//! | --- | --- | --- |
//! | `nn.MSELoss` | [`MseLoss`] | `(p - t)^2` |
//! | `nn.L1Loss` | [`L1Loss`] | `abs(p - t)` |
//! | `nn.HuberLoss(delta)` | [`HuberLoss`] | `d^2 / 2` where `abs(d) < delta`, else `delta (abs(d) - delta / 2)` |
//! | `nn.SmoothL1Loss(beta)` | [`SmoothL1Loss`] | the Huber terms / `beta` (L1 for `beta` 0) |
//! | `nn.BCELoss(weight)` | [`BceLoss`] | `-w (t ln p + (1 - t) ln(1 - p))` |
//! | `nn.BCEWithLogitsLoss(weight, pos_weight)` | [`BceWithLogitsLoss`] | `w ((1 - t) x + (1 + (p - 1) t) ln(1 + e^-x))` |
//! | `nn.CrossEntropyLoss(weight, ignore_index, label_smoothing)` | [`CrossEntropyLoss`] | per row, `-sum_c w_c ((1 - e) [c = y] + e / C) ln softmax(z)_c` |
//! | `nn.NLLLoss(weight, ignore_index)` | [`NllLoss`] | per row, `-w_y logp_y` |
//! | `nn.KLDivLoss(log_target)` | [`KlDivLoss`] | `t (ln t - input)` (`e^t (t - input)`) |
//!
//! [`Reduction::Mean`] (the default) averages the terms; for the class losses with labels it
//! divides by the summed class weights of the rows kept (with probability targets, by the
//! rows), as PyTorch's. With `ignore_index: None`, a row labelled
//! [`IGNORED_LABEL`](crate::ops::loss::IGNORED_LABEL) adds nothing, but counts in the mean of
//! the fused path (no class weights) and not in the composed one. [`Reduction::Sum`] adds them,
//! [`Reduction::None`] returns them (one per row for the class losses, 0 for an ignored row),
//! and [`Reduction::BatchMean`] divides their sum by the first dimension (the KL divergence's
//! `"batchmean"`, which the other losses refuse, as PyTorch's do).
//!
//! With the default reduction each module is the tape's own loss: [`Tape::mse`] and
//! [`Tape::bce_with_logits`] are one fused node, [`CrossEntropyLoss`] without class weights is
//! [`Tape::cross_entropy_smoothed`] (fused) or [`Tape::cross_entropy_ignore`]. The other
//! reductions, and class weights, are composed of other ops, so every backend runs them and a
//! recording ([`crate::Replay`], a CUDA graph) holds them; the class losses then gather each
//! row's label through [`Tape::one_hot`], which checks the labels on the device.
//!
//! Unlike PyTorch, [`CrossEntropyLoss`] and [`NllLoss`] take `ignore_index` as an `Option`,
//! `None` by default (every label must be a class); PyTorch's default is `Some(-100)`.
//!
//! ```
//! use mote::nn::loss::{CrossEntropyLoss, MseLoss, Reduction};
//! use mote::{Cpu, Tape};
//!
//! let mut mem = [0f32; 512];
//! let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
//! let z = tape.param(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 1.0, 0.0])?;
//! let y = tape.labels_signed(&[2, -100])?;
//! // F.cross_entropy(z, y, reduction="none"): one loss a row, 0 for the ignored one.
//! let ce = CrossEntropyLoss { ignore_index: Some(-100), reduction: Reduction::None, ..Default::default() };
//! let rows = ce.forward(&mut tape, z, y)?;
//! let got = tape.data(rows)?;
//! assert!((got[0] - 0.407_606).abs() < 1e-6 && got[1] == 0.0);
//! // F.mse_loss(p, t, reduction="sum").
//! let (p, t) = (tape.param(&[2], &[1.0, 2.0])?, tape.input(&[2], &[0.0, 4.0])?);
//! let sum = MseLoss { reduction: Reduction::Sum }.forward(&mut tape, p, t)?;
//! assert_eq!(tape.item(sum)?, 5.0);
//! # Ok::<(), mote::Error>(())
//! ```

pub use crate::ops::loss::Reduction;

use crate::ops::loss::{check_class_weight, check_smoothing};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tape::{Tape, Var};

/// Refuses [`Reduction::BatchMean`], which PyTorch offers for the KL divergence only.
fn no_batchmean(reduction: Reduction) -> Result<()> {
    if reduction == Reduction::BatchMean {
        return Err(Error::InvalidArgument {
            what: "loss: batchmean is the KL divergence's reduction",
        });
    }
    Ok(())
}

/// PyTorch's `nn.MSELoss(reduction=...)`: the terms `(p - t)^2`, for same-shaped predictions
/// and targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MseLoss {
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl MseLoss {
    /// The loss of `pred` against `target`: [`Tape::mse`] (one fused node) for the mean, else
    /// the terms (two nodes) reduced.
    ///
    /// # Errors
    /// As [`Tape::mse`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        pred: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        if self.reduction == Reduction::Mean {
            return tape.mse(pred, target);
        }
        tape.all_or_nothing(|t| {
            let d = t.checked_diff("mse", pred, target)?;
            let terms = t.square(d)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.L1Loss(reduction=...)`: the terms `abs(p - t)` (gradient 0 at a zero
/// difference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L1Loss {
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl L1Loss {
    /// The loss of `pred` against `target` ([`Tape::l1_loss`] for the mean).
    ///
    /// # Errors
    /// As [`Tape::l1_loss`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        pred: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        tape.all_or_nothing(|t| {
            let terms = t.abs_diff("l1_loss", pred, target)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.HuberLoss(delta=..., reduction=...)`: the terms `d^2 / 2` where
/// `abs(d) < delta`, else `delta (abs(d) - delta / 2)`, `d = pred - target`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HuberLoss {
    /// The threshold, positive and finite (PyTorch's default 1).
    pub delta: f32,
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl Default for HuberLoss {
    fn default() -> Self {
        HuberLoss {
            delta: 1.0,
            reduction: Reduction::Mean,
        }
    }
}

impl HuberLoss {
    /// The loss of `pred` against `target` ([`Tape::huber_loss`] for the mean).
    ///
    /// # Errors
    /// As [`Tape::huber_loss`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        pred: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        if self.reduction == Reduction::Mean {
            return tape.huber_loss(pred, target, self.delta);
        }
        // The threshold's check, with its message; nothing is recorded on an error.
        let delta = self.delta;
        if !(delta > 0.0 && delta.is_finite()) {
            return tape.huber_loss(pred, target, delta);
        }
        tape.all_or_nothing(|t| {
            let terms = t.huber_terms("huber_loss", pred, target, delta)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.SmoothL1Loss(beta=..., reduction=...)`: the Huber terms divided by `beta`
/// (multiplied by `1 / beta` in `f32`), the L1 terms when `beta` is 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothL1Loss {
    /// The threshold: 0, or positive and finite with `1 / beta` finite (PyTorch's default 1).
    pub beta: f32,
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl Default for SmoothL1Loss {
    fn default() -> Self {
        SmoothL1Loss {
            beta: 1.0,
            reduction: Reduction::Mean,
        }
    }
}

impl SmoothL1Loss {
    /// The loss of `pred` against `target` ([`Tape::smooth_l1_loss`] for the mean).
    ///
    /// # Errors
    /// As [`Tape::smooth_l1_loss`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        pred: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        let beta = self.beta;
        if beta == 0.0 {
            return L1Loss {
                reduction: self.reduction,
            }
            .forward(tape, pred, target);
        }
        if self.reduction == Reduction::Mean
            || !(beta > 0.0 && beta.is_finite() && (1.0 / beta).is_finite())
        {
            // The mean, or the threshold's refusal with its message.
            return tape.smooth_l1_loss(pred, target, beta);
        }
        tape.all_or_nothing(|t| {
            let terms = t.huber_terms("smooth_l1_loss", pred, target, beta)?;
            let terms = t.mul_scalar(terms, 1.0 / beta)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.BCELoss(weight=..., reduction=...)`: the binary cross-entropy of
/// probabilities, terms `-w (t ln p + (1 - t) ln(1 - p))`, each logarithm's argument raised to
/// `f32::MIN_POSITIVE` (see [`Tape::binary_cross_entropy`]). Prefer [`BceWithLogitsLoss`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BceLoss {
    /// A weight that broadcasts to the probabilities' shape (it gets a gradient).
    pub weight: Option<Var>,
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl BceLoss {
    /// The loss of probabilities `p` against `target` ([`Tape::binary_cross_entropy`] for the
    /// mean).
    ///
    /// # Errors
    /// As [`Tape::binary_cross_entropy`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        p: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        if self.reduction == Reduction::Mean {
            return tape.binary_cross_entropy(p, target, self.weight);
        }
        tape.all_or_nothing(|t| {
            let l = t.bce_log_likelihood(p, target, self.weight)?;
            let terms = t.neg(l)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.BCEWithLogitsLoss(weight=..., pos_weight=..., reduction=...)`: the binary
/// cross-entropy of logits, stable, terms `w ((1 - t) x + (1 + (p - 1) t) ln(1 + e^-x))`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BceWithLogitsLoss {
    /// A weight that broadcasts to the logits' shape (it gets a gradient).
    pub weight: Option<Var>,
    /// The positives' weight `p`, broadcast to the logits' shape (usually one per class of a
    /// multi-label output; it gets a gradient).
    pub pos_weight: Option<Var>,
    /// How the terms are reduced.
    pub reduction: Reduction,
}

impl BceWithLogitsLoss {
    /// The loss of `logits` against `target` ([`Tape::bce_with_logits_weighted`] for the
    /// mean: one fused node without weights).
    ///
    /// # Errors
    /// As [`Tape::bce_with_logits_weighted`]; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        logits: Var,
        target: Var,
    ) -> Result<Var> {
        no_batchmean(self.reduction)?;
        if self.reduction == Reduction::Mean {
            return tape.bce_with_logits_weighted(logits, target, self.weight, self.pos_weight);
        }
        tape.all_or_nothing(|t| {
            let terms = t.bce_logits_terms(logits, target, self.weight, self.pos_weight)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.CrossEntropyLoss(weight=..., ignore_index=..., reduction=...,
/// label_smoothing=...)` for logits `[N, C]` and class labels `[N]` (see [`Tape::labels`]);
/// probability targets: [`CrossEntropyLoss::forward_probs`].
///
/// Row `r`'s loss is `-sum_c w_c ((1 - e) [c = y_r] + e / C) ln softmax(z_r)_c`, 0 for an
/// ignored row; the mean divides the sum by `sum_r w[y_r]` over the rows kept (their count
/// without weights), NaN when that is 0 (as PyTorch's, with a zero gradient).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    /// Class weights `[C]` (they get a gradient).
    pub weight: Option<Var>,
    /// The label of rows to skip (`None`: every label must be a class, or the fused losses'
    /// marker [`IGNORED_LABEL`](crate::ops::loss::IGNORED_LABEL); PyTorch's default is
    /// `Some(-100)`). Within `-2^24..=2^24`.
    pub ignore_index: Option<i32>,
    /// The label smoothing `e`, in `[0, 1]`.
    pub label_smoothing: f32,
    /// How the rows' losses are reduced ([`Reduction::BatchMean`] is refused).
    pub reduction: Reduction,
}

impl CrossEntropyLoss {
    /// The loss of `logits` `[N, C]` against class `labels` `[N]`. Without class weights the
    /// mean is the fused [`Tape::cross_entropy_smoothed`] (one node), or
    /// [`Tape::cross_entropy_ignore`] with an `ignore_index`; otherwise it is composed
    /// (`log_softmax`, then the labels' one-hot rows: see the [module](self) docs).
    ///
    /// # Errors
    /// As [`Tape::cross_entropy_ignore`]; [`Error::ShapeMismatch`] for weights that are not
    /// `[C]`; [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        logits: Var,
        labels: Var,
    ) -> Result<Var> {
        let e = self.label_smoothing;
        if self.reduction == Reduction::Mean && self.weight.is_none() {
            return match self.ignore_index {
                None => tape.cross_entropy_smoothed(logits, labels, e),
                Some(i) => tape.cross_entropy_ignore(logits, labels, i, e),
            };
        }
        if logits.shape.rank() != 2 {
            return Err(Error::ShapeMismatch {
                op: "cross_entropy",
                lhs: logits.shape,
                rhs: labels.shape,
            });
        }
        tape.all_or_nothing(|t| {
            let logp = t.log_softmax(logits, 1)?;
            t.class_loss(
                logp,
                labels,
                self.ignore_index,
                self.weight,
                e,
                self.reduction,
            )
        })
    }

    /// The loss of `logits` `[N, C]` against class probabilities `[N, C]` (PyTorch's
    /// cross-entropy with probability targets): row `r`'s loss is `-sum_c w_c t'_rc ln
    /// softmax(z_r)_c` with `t' = (1 - e) t + e / C`; the mean divides by `N` (weights or
    /// not, as PyTorch's). With neither weights nor smoothing and the mean, this is
    /// [`Tape::cross_entropy_probs`]. `ignore_index` does not apply: a negative one (PyTorch's
    /// default -100) does nothing, another is refused, as PyTorch's. Both inputs get
    /// gradients.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] unless both are `[N, C]` and the weights `[C]`;
    /// [`Error::InvalidArgument`] for an `ignore_index` of 0 or more, a smoothing outside
    /// `[0, 1]` or
    /// [`Reduction::BatchMean`]; and as [`Tape::unary`].
    pub fn forward_probs<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        logits: Var,
        probs: Var,
    ) -> Result<Var> {
        let e = self.label_smoothing;
        if self.ignore_index.is_some_and(|i| i >= 0) {
            return Err(Error::InvalidArgument {
                what: "cross_entropy: ignore_index applies to class labels, not probabilities \
                       (a negative one is accepted and does nothing, as PyTorch's)",
            });
        }
        check_smoothing(e)?;
        no_batchmean(self.reduction)?;
        let ls = logits.shape;
        if ls.rank() != 2 || probs.shape != ls {
            return Err(Error::ShapeMismatch {
                op: "cross_entropy_probs",
                lhs: ls,
                rhs: probs.shape,
            });
        }
        let classes = ls.dim(1);
        check_class_weight(self.weight, ls)?;
        if self.reduction == Reduction::Mean && self.weight.is_none() && e == 0.0 {
            return tape.cross_entropy_probs(logits, probs);
        }
        tape.all_or_nothing(|t| {
            let mut target = probs;
            if e != 0.0 {
                // t - e t + e / C.
                let less = t.mul_scalar(probs, e)?;
                let own = t.sub(probs, less)?;
                let c = t.full(&[], crate::Float::from_f64(classes as f64))?;
                let share = t.full(&[], crate::Float::from_f32(e))?;
                let share = t.div(share, c)?;
                target = t.add(own, share)?;
            }
            if let Some(w) = self.weight {
                target = t.mul(target, w)?;
            }
            let logp = t.log_softmax(logits, 1)?;
            let terms = t.mul(target, logp)?;
            let terms = t.sum_axis(terms, 1)?;
            let terms = t.neg(terms)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}

/// PyTorch's `nn.NLLLoss(weight=..., ignore_index=..., reduction=...)` for log-probabilities
/// `[N, C]` (from [`Tape::log_softmax`]) and class labels `[N]`: row `r`'s loss is
/// `-w[y_r] logp[r, y_r]`, 0 for an ignored row; the mean divides by `sum_r w[y_r]` over the
/// rows kept. Composed: the labels' one-hot rows pick each row's value (see
/// [`Tape::nll_loss`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllLoss {
    /// Class weights `[C]` (they get a gradient).
    pub weight: Option<Var>,
    /// The label of rows to skip (`None`: every label must be a class; PyTorch's default is
    /// `Some(-100)`). Within `-2^24..=2^24`.
    pub ignore_index: Option<i32>,
    /// How the rows' losses are reduced ([`Reduction::BatchMean`] is refused).
    pub reduction: Reduction,
}

impl NllLoss {
    /// The loss of log-probabilities `logp` `[N, C]` against class `labels` `[N]`.
    ///
    /// # Errors
    /// As [`Tape::nll_loss`]; [`Error::ShapeMismatch`] for weights that are not `[C]`;
    /// [`Error::InvalidArgument`] for [`Reduction::BatchMean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        logp: Var,
        labels: Var,
    ) -> Result<Var> {
        tape.class_loss(
            logp,
            labels,
            self.ignore_index,
            self.weight,
            0.0,
            self.reduction,
        )
    }
}

/// PyTorch's `nn.KLDivLoss(reduction=..., log_target=...)`: the terms `t (ln t - input)` of
/// the divergence of `target` from the distribution whose log-probabilities are `input` (`0 ln
/// 0 = 0`), or `e^t (t - input)` with `log_target`. PyTorch's default reduction is the mean
/// over every element, which is not the divergence: [`Reduction::BatchMean`] is
/// ([`Tape::kl_div_batchmean`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KlDivLoss {
    /// How the terms are reduced.
    pub reduction: Reduction,
    /// Whether the targets are log-probabilities.
    pub log_target: bool,
}

impl KlDivLoss {
    /// The divergence's terms for `input` and `target`, reduced. Both get gradients (see
    /// [`Tape::kl_div_batchmean`] for the target's at 0).
    ///
    /// # Errors
    /// As [`Tape::kl_div_batchmean`].
    pub fn forward<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        input: Var,
        target: Var,
    ) -> Result<Var> {
        tape.all_or_nothing(|t| {
            let terms = t.kl_terms(input, target, self.log_target)?;
            t.reduce_terms(terms, self.reduction)
        })
    }
}
