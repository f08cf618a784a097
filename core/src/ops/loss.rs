//! Losses, each a scalar: reduced by the mean (PyTorch's default `reduction="mean"`), but for
//! the KL divergence, divided by the batch (`"batchmean"`). PyTorch's other reductions
//! (`"none"`, `"sum"`) and class weights: the loss modules of [`crate::nn::loss`], composed
//! from the terms these functions reduce.
//!
//! | loss | value | gradient |
//! | --- | --- | --- |
//! | `Mse` | mean((p - t)^2) | dp = 2 (p - t) / n, dt = -dp |
//! | `CrossEntropy` | `mean_i (logsumexp(z_i) - z_i[label_i])` | dz_i = (softmax(z_i) - onehot(label_i)) / N |
//! | `CrossEntropySmoothed(e)` | `mean_i ((1 - e) (lse_i - z_i[label_i]) + e (lse_i - mean_j z_ij))` | dz_i = (softmax(z_i) - (1 - e) onehot(label_i) - e / C) / N |
//! | `BceWithLogits` | mean(max(x, 0) - x t + ln(1 + e^-abs(x))) | dx = (sigmoid(x) - t) / n, dt = -x / n |
//!
//! Composed of other ops (so every backend runs them as those ops, and the gradient follows):
//! `cross_entropy_probs` = `-sum(t * log_softmax(z)) / N` (class-probability targets);
//! `bce_with_logits_weighted` = mean(w ((1 - t) x + (1 + (p - 1) t) softplus(-x))) (PyTorch's
//! `weight` w and `pos_weight` p); `l1_loss` = mean(|p - t|); `huber_loss(delta)` = mean of `d^2 / 2` where `|d| < delta`,
//! else `delta (|d| - delta / 2)`; `smooth_l1_loss(beta)` = the Huber loss / beta (L1 for
//! beta 0), as PyTorch's; `binary_cross_entropy` of probabilities; `cross_entropy_ignore`;
//! `nll_loss` (each row's value at its label, picked by the labels' one-hot rows);
//! `kl_div_batchmean`.
//!
//! Cross-entropy takes logits `[N, C]` and class labels `[N]` stored as floats (exact integers
//! up to 2^24); a label that is not an integer in `0..C` is an error, but for
//! [`IGNORED_LABEL`], whose row adds nothing (`cross_entropy_ignore`, PyTorch's
//! `ignore_index`, composes the fused loss with the count of the rows kept). The fused form never
//! forms `ln(softmax)`, so it is stable for any logits. With label smoothing `e` (PyTorch's
//! `label_smoothing`) the target of row `i` is `(1 - e) onehot(label_i) + e / C`: the loss is
//! the cross-entropy against that distribution, as PyTorch's.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::unary::sigmoid;
use crate::shape::Shape;
use crate::tape::Var;

/// A loss function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossOp {
    /// Mean squared error.
    Mse,
    /// Softmax cross-entropy with integer class labels.
    CrossEntropy,
    /// Binary cross-entropy on logits.
    BceWithLogits,
    /// Softmax cross-entropy with integer class labels and label smoothing `e` in `(0, 1]`:
    /// the target is `(1 - e) onehot(label) + e / C` (PyTorch's `label_smoothing`).
    CrossEntropySmoothed(f32),
}

impl LossOp {
    /// The loss's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            LossOp::Mse => "mse",
            LossOp::CrossEntropy | LossOp::CrossEntropySmoothed(_) => "cross_entropy",
            LossOp::BceWithLogits => "bce_with_logits",
        }
    }

    /// Whether the targets are class labels (`[N]` against logits `[N, classes]`), without a
    /// gradient: the cross-entropies.
    pub fn takes_labels(self) -> bool {
        matches!(self, LossOp::CrossEntropy | LossOp::CrossEntropySmoothed(_))
    }

    /// The label smoothing: 0 but for [`LossOp::CrossEntropySmoothed`].
    pub fn smoothing(self) -> f32 {
        match self {
            LossOp::CrossEntropySmoothed(e) => e,
            _ => 0.0,
        }
    }

    /// A code (0 MSE, 1 cross-entropy, 2 BCE with logits, 3 smoothed cross-entropy) and the
    /// smoothing: how a tape node and a replay recording store it.
    pub fn pack(self) -> (u8, f32) {
        match self {
            LossOp::Mse => (0, 0.0),
            LossOp::CrossEntropy => (1, 0.0),
            LossOp::BceWithLogits => (2, 0.0),
            LossOp::CrossEntropySmoothed(e) => (3, e),
        }
    }

    /// Whether a [`LossOp::pack`] code carries its argument (the smoothing): what a recording
    /// stores after the code.
    pub fn has_arg(code: u8) -> bool {
        code == 3
    }

    /// The loss [`LossOp::pack`] gave `code` and `arg` for; `None` for an unknown code.
    pub fn unpack(code: u8, arg: f32) -> Option<LossOp> {
        Some(match code {
            0 => LossOp::Mse,
            1 => LossOp::CrossEntropy,
            2 => LossOp::BceWithLogits,
            3 => LossOp::CrossEntropySmoothed(arg),
            _ => return None,
        })
    }
}

/// How a loss reduces its terms (PyTorch's `reduction=`): the `*_loss` modules of
/// [`crate::nn::loss`] take one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The terms themselves (`"none"`): the input's shape for the element-wise losses, one
    /// per row for the class losses (0 for an ignored row).
    None,
    /// Their mean (`"mean"`, PyTorch's default). The class losses divide by the summed
    /// weights of the rows kept (their count, without class weights).
    #[default]
    Mean,
    /// Their sum (`"sum"`).
    Sum,
    /// Their sum divided by the first dimension (`"batchmean"`): the KL divergence's, which
    /// it makes the divergence. The other loss modules refuse it, as PyTorch's do
    /// ([`Tape::reduce_terms`](crate::Tape::reduce_terms) takes it for any terms).
    BatchMean,
}

/// The label of a row that the cross-entropies skip: `-2^24`, exact in `f32` and `f64`. The
/// row adds nothing to the loss's sum and gets no gradient; the mean still divides by every
/// row. [`Tape::cross_entropy_ignore`](crate::Tape::cross_entropy_ignore) maps PyTorch's
/// `ignore_index` to it and divides by the rows kept instead.
pub const IGNORED_LABEL: f32 = -16_777_216.0;

/// Checks a cross-entropy's label smoothing: in `[0, 1]`.
pub(crate) fn check_smoothing(label_smoothing: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::InvalidArgument {
            what: "cross_entropy: label_smoothing must lie in [0, 1]",
        });
    }
    Ok(())
}

/// Checks a cross-entropy's class weights against its logits `[N, C]`: `[C]`, or none.
pub(crate) fn check_class_weight(weight: Option<Var>, logits: Shape) -> Result<()> {
    match weight {
        Some(w) if w.shape.dims() != [logits.dim(1) as u32] => Err(Error::ShapeMismatch {
            op: "cross_entropy weight",
            lhs: logits,
            rhs: w.shape,
        }),
        _ => Ok(()),
    }
}

/// Whether a cross-entropy label is [`IGNORED_LABEL`].
#[inline]
pub fn is_ignored<T: Float>(label: T) -> bool {
    label == T::from_f32(IGNORED_LABEL)
}

/// Checks that a label is an integer class index below `classes`; returns it.
pub fn label_index<T: Float>(label: T, classes: usize) -> Result<usize> {
    let v = label.to_f64();
    if v >= 0.0 && v < classes as f64 && libm::floor(v) == v {
        Ok(v as usize)
    } else {
        let index = if v.is_finite() && v >= 0.0 {
            v as usize
        } else {
            usize::MAX
        };
        Err(Error::IndexOutOfRange {
            op: "cross_entropy label",
            index,
            bound: classes,
        })
    }
}

/// `ln sum_j e^(z_j)`, stable.
fn logsumexp<T: Float>(z: &[T]) -> T {
    let (m, ls) = max_and_log_sum(z);
    m + ls
}

/// `m = max_j z_j` and `ln sum_j e^(z_j - m)` (at least 0): `logsumexp(z) = m + ln s`.
fn max_and_log_sum<T: Float>(z: &[T]) -> (T, T) {
    let m = z.iter().fold(T::MIN, |m, &v| m.max(v));
    let s = z.iter().fold(T::ZERO, |s, &v| s + (v - m).exp());
    (m, s.ln())
}

/// Reference forward kernel. For the cross-entropies, `p` is `[N, classes]` and `t` is `[N]`;
/// for the others `p` and `t` have the same length. Returns the loss.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for a bad cross-entropy label.
pub fn forward<T: Float>(op: LossOp, classes: usize, p: &[T], t: &[T]) -> Result<T> {
    let mut s = T::ZERO;
    let n = match op {
        LossOp::Mse => {
            for (&p, &t) in p.iter().zip(t) {
                let d = p - t;
                s += d * d;
            }
            p.len()
        }
        LossOp::BceWithLogits => {
            for (&x, &t) in p.iter().zip(t) {
                s += x.max(T::ZERO) - x * t + (-x.abs()).exp().ln_1p();
            }
            p.len()
        }
        LossOp::CrossEntropy | LossOp::CrossEntropySmoothed(_) => {
            if classes == 0 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy needs at least one class",
                });
            }
            let e = op.smoothing();
            let (keep, spread) = (T::from_f64(1.0 - f64::from(e)), T::from_f32(e));
            for (z, &label) in p.chunks_exact(classes).zip(t) {
                if is_ignored(label) {
                    continue;
                }
                let c = label_index(label, classes)?;
                let (m, ls) = max_and_log_sum(z);
                let nll = (m + ls) - z.get(c).copied().unwrap_or(T::ZERO);
                s += if e == 0.0 {
                    nll
                } else {
                    // Both terms are cross-entropies, each >= 0, so they do not cancel; the
                    // uniform one, logsumexp(z) - mean z, is ln s - mean (z - m): every term
                    // >= 0, and no sum of raw logits to overflow.
                    let below =
                        z.iter().fold(T::ZERO, |a, &v| a + (v - m)) / T::from_usize(classes);
                    keep * nll + spread * (ls - below)
                };
            }
            t.len()
        }
    };
    Ok(s / T::from_usize(n))
}

/// Reference backward kernel: accumulates `dy * d loss / d p` (side `Lhs`) or `d loss / d t`
/// (`Rhs`) into `dx`. Cross-entropy has no gradient for its labels.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for a bad cross-entropy label.
pub fn backward<T: Float>(
    op: LossOp,
    lhs: bool,
    classes: usize,
    p: &[T],
    t: &[T],
    dy: T,
    dx: &mut [T],
) -> Result<()> {
    match op {
        LossOp::Mse => {
            let k = T::from_f64(2.0) * dy / T::from_usize(p.len());
            let k = if lhs { k } else { -k };
            for ((d, &p), &t) in dx.iter_mut().zip(p).zip(t) {
                *d += k * (p - t);
            }
        }
        LossOp::BceWithLogits => {
            let k = dy / T::from_usize(p.len());
            for ((d, &x), &t) in dx.iter_mut().zip(p).zip(t) {
                *d += if lhs { k * (sigmoid(x) - t) } else { -k * x };
            }
        }
        LossOp::CrossEntropy | LossOp::CrossEntropySmoothed(_) => {
            if !lhs {
                return Ok(());
            }
            if classes == 0 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy needs at least one class",
                });
            }
            let k = dy / T::from_usize(t.len());
            let smoothing = op.smoothing();
            // Smoothing moves `smoothing` of the label's weight to every class evenly.
            let (hit, even) = (
                k * T::from_f64(1.0 - f64::from(smoothing)),
                k * T::from_f32(smoothing) / T::from_usize(classes),
            );
            for ((dz, z), &label) in dx
                .chunks_exact_mut(classes)
                .zip(p.chunks_exact(classes))
                .zip(t)
            {
                if is_ignored(label) {
                    continue;
                }
                let c = label_index(label, classes)?;
                // softmax(z) - onehot(c), with each exponential computed once when the row fits
                // a stack buffer.
                let mut e = [T::ZERO; 64];
                match e.get_mut(..z.len()) {
                    Some(e) => {
                        let m = z.iter().fold(T::MIN, |m, &v| m.max(v));
                        let mut s = T::ZERO;
                        for (e, &zj) in e.iter_mut().zip(z) {
                            *e = (zj - m).exp();
                            s += *e;
                        }
                        let ks = k / s;
                        for (d, &e) in dz.iter_mut().zip(e.iter()) {
                            *d += ks * e;
                        }
                    }
                    None => {
                        let lse = logsumexp(z);
                        for (d, &zj) in dz.iter_mut().zip(z) {
                            *d += k * (zj - lse).exp();
                        }
                    }
                }
                if smoothing != 0.0 {
                    for d in dz.iter_mut() {
                        *d -= even;
                    }
                }
                if let Some(d) = dz.get_mut(c) {
                    *d -= hit;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // torch.nn.functional.cross_entropy(torch.tensor([[1., 2., 3.], [1., 1., 1.]]),
    //     torch.tensor([2, 0])) = 0.7991 (mean of 0.40760596 and 1.09861229).
    // binary_cross_entropy_with_logits(tensor([-1., 0., 3.]), tensor([0., 1., 1.])) = 0.3399...
    //     (by hand: ln(1+e^-1) = 0.31326169, ln 2 = 0.69314718, ln(1+e^-3) = 0.04858735).
    // F.nll_loss(F.log_softmax(z, 1), y) for z = [[1, 2, 3], [0, 1, 0]], y = [2, 0]:
    // 0.9795253391882157; with y = [2, -100] (ignored) 0.4076059644443804; its gradient
    // -1 / kept at each kept label and 0 elsewhere. F.kl_div(q.log(), p, reduction="batchmean")
    // for p = [[0.5, 0.5, 0], [0.2, 0.3, 0.5]], q = [[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]]:
    // 0.43962263719347305, the same from log targets.
    #[test]
    fn nll_and_kl_div_match_pytorch() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 1024];
        let mut t = Tape::<Cpu<f64>, 128>::new(&mut mem);
        let z = t.param(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 1.0, 0.0]).unwrap();
        let start = t.mark();
        for (labels, want, grad) in [
            (
                [2i64, 0],
                0.979_525_339_188_215_7,
                [0.0, 0.0, -0.5, -0.5, 0.0, 0.0],
            ),
            (
                [2, -100],
                0.407_605_964_444_380_4,
                [0.0, 0.0, -1.0, 0.0, 0.0, 0.0],
            ),
            // Every row ignored: the loss is NaN, as PyTorch's; the gradient 0, not NaN.
            ([-100, -100], f64::NAN, [0.0; 6]),
        ] {
            t.rewind(start).unwrap();
            t.zero_grad().unwrap();
            let logp = t.log_softmax(z, 1).unwrap();
            let y = t.labels_signed(&labels).unwrap();
            let l = t.nll_loss(logp, y, -100).unwrap();
            let got = t.item(l).unwrap();
            let same = (got - want).abs() < 1e-14 || (got.is_nan() && want.is_nan());
            assert!(same, "{got} vs {want}");
            // The gradient reaching the log-probabilities: from the loss on them directly.
            let values = t.data(logp).unwrap().to_vec();
            let lp = t.param(&[2, 3], &values).unwrap();
            let l = t.nll_loss(lp, y, -100).unwrap();
            t.backward(l).unwrap();
            let mut g = [9.0; 6];
            t.read_grad(lp, &mut g).unwrap();
            for (g, w) in g.iter().zip(grad) {
                assert!((g - w).abs() < 1e-15, "{g:?} vs {grad:?}");
            }
        }
        t.rewind(start).unwrap();
        let p = [0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
        let q: [f64; 6] = [0.25, 0.25, 0.5, 0.1, 0.6, 0.3];
        let logq = t.input(&[2, 3], &q.map(f64::ln)).unwrap();
        let pv = t.input(&[2, 3], &p).unwrap();
        let kl = t.kl_div_batchmean(logq, pv, false).unwrap();
        let got = t.item(kl).unwrap();
        assert!((got - 0.439_622_637_193_473_05).abs() < 1e-15, "{got}");
        let logp = t.input(&[2, 3], &p.map(|v| v.max(1e-300).ln())).unwrap();
        let kl = t.kl_div_batchmean(logq, logp, true).unwrap();
        let got = t.item(kl).unwrap();
        assert!((got - 0.439_622_637_193_473_05).abs() < 1e-12, "{got}");
        let wrong = t.input(&[3, 2], &p).unwrap();
        assert!(t.kl_div_batchmean(logq, wrong, false).is_err());
    }

    #[test]
    fn values_match_pytorch() {
        let ce = forward(
            LossOp::CrossEntropy,
            3,
            &[1.0f64, 2.0, 3.0, 1.0, 1.0, 1.0],
            &[2.0, 0.0],
        )
        .unwrap();
        assert!((ce - (0.407_605_96 + 1.098_612_29) / 2.0).abs() < 1e-8);
        let bce = forward(
            LossOp::BceWithLogits,
            0,
            &[-1.0f64, 0.0, 3.0],
            &[0.0, 1.0, 1.0],
        )
        .unwrap();
        assert!((bce - (0.313_261_69 + core::f64::consts::LN_2 + 0.048_587_35) / 3.0).abs() < 1e-8);
        let mse = forward(LossOp::Mse, 0, &[1.0f64, 2.0], &[0.0, 4.0]).unwrap();
        assert_eq!(mse, 2.5);
        // cross_entropy(..., label_smoothing=0.1): row 0: 0.9 * 0.40760596 + 0.1 * (lse - 2)
        // with lse = 3.40760596; row 1: ln 3 whatever the smoothing.
        let smoothed = forward(
            LossOp::CrossEntropySmoothed(0.1),
            3,
            &[1.0f64, 2.0, 3.0, 1.0, 1.0, 1.0],
            &[2.0, 0.0],
        )
        .unwrap();
        let row0 = 0.9 * 0.407_605_96 + 0.1 * 1.407_605_96;
        assert!((smoothed - (row0 + 1.098_612_29) / 2.0).abs() < 1e-6);
        // Logits whose sum overflows f32: the uniform term is ln 2 for two equal ones, whole
        // (the cross-entropy term, (m + ln 2) - z, rounds to 0 at this magnitude, as without
        // smoothing).
        let big = forward(
            LossOp::CrossEntropySmoothed(0.1),
            2,
            &[2e38f32, 2e38],
            &[0.0],
        );
        assert!((big.unwrap() - 0.1 * core::f32::consts::LN_2).abs() < 1e-7);
    }

    // The smoothed gradient is softmax - target distribution; at smoothing 1 the target is
    // uniform, so equal logits get no gradient.
    #[test]
    fn smoothed_gradient_is_softmax_minus_the_smoothed_target() {
        let z = [1.0f64, 2.0, 3.0];
        let mut dx = [0.0f64; 3];
        backward(
            LossOp::CrossEntropySmoothed(0.3),
            true,
            3,
            &z,
            &[0.0],
            1.0,
            &mut dx,
        )
        .unwrap();
        let s: f64 = z.iter().map(|v| v.exp()).sum();
        for (j, d) in dx.iter().enumerate() {
            let target = if j == 0 { 0.7 + 0.1 } else { 0.1 };
            assert!((d - (z[j].exp() / s - target)).abs() < 1e-7, "{j}: {d}");
        }
        let mut dx = [0.0f64; 4];
        backward(
            LossOp::CrossEntropySmoothed(1.0),
            true,
            4,
            &[0.5; 4],
            &[3.0],
            1.0,
            &mut dx,
        )
        .unwrap();
        assert!(dx.iter().all(|d| d.abs() < 1e-15), "{dx:?}");
    }

    // d = pred - target = [0.5, -2, 3, 0]: L1 (0.5 + 2 + 3) / 4; Huber (delta 1)
    // (0.125 + 1.5 + 2.5) / 4; smooth L1 (beta 0.5) (0.25 + 1.75 + 2.75) / 4.
    #[test]
    fn composite_losses_by_hand() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 256];
        let mut tape = Tape::<Cpu<f64>, 32>::new(&mut mem);
        let p = tape.input(&[2, 2], &[0.5, -2.0, 3.0, 1.0]).unwrap();
        let t = tape.input(&[2, 2], &[0.0, 0.0, 0.0, 1.0]).unwrap();
        for (loss, want) in [
            (tape.l1_loss(p, t), 1.375),
            (tape.huber_loss(p, t, 1.0), 1.031_25),
            (tape.smooth_l1_loss(p, t, 0.5), 1.1875),
            (tape.smooth_l1_loss(p, t, 0.0), 1.375),
        ] {
            assert_eq!(tape.item(loss.unwrap()).unwrap(), want);
        }
    }

    // Weighted binary cross-entropy against PyTorch's documented form, `-w (p y ln sigmoid(x) +
    // (1 - y) ln(1 - sigmoid(x)))`, evaluated in f64 by a separate script: `pos_weight` [2, 0.5]
    // per column, `weight` [1, 3] per row ([2, 1]), then `pos_weight` alone.
    #[test]
    fn weighted_bce_matches_the_documented_form() {
        use crate::{Cpu, Error, Tape};
        let mut mem = [0f64; 512];
        let mut tape = Tape::<Cpu<f64>, 64>::new(&mut mem);
        let x = tape.input(&[2, 2], &[1.0, -2.0, 0.5, 3.0]).unwrap();
        let t = tape.input(&[2, 2], &[1.0, 0.0, 0.3, 1.0]).unwrap();
        let pw = tape.input(&[2], &[2.0, 0.5]).unwrap();
        let w = tape.input(&[2, 1], &[1.0, 3.0]).unwrap();
        for (weight, pos, want) in [
            (Some(w), Some(pw), 0.931_308_162_935_611_7),
            (None, Some(pw), 0.436_011_285_325_106_9),
        ] {
            let l = tape.bce_with_logits_weighted(x, t, weight, pos).unwrap();
            let got = tape.item(l).unwrap();
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // Neither weight: the fused loss, bit for bit.
        let (a, b) = (
            tape.bce_with_logits_weighted(x, t, None, None).unwrap(),
            tape.bce_with_logits(x, t).unwrap(),
        );
        assert_eq!(tape.item(a).unwrap(), tape.item(b).unwrap());
        // A weight that does not broadcast to the logits, or that would widen them, is refused
        // and takes no arena.
        let used = tape.used();
        let wide = tape.input(&[3, 1, 2], &[1.0; 6]).unwrap();
        let odd = tape.input(&[3], &[1.0; 3]).unwrap();
        let used_inputs = tape.used();
        assert!(used_inputs > used);
        for bad in [wide, odd] {
            for (weight, pos) in [(Some(bad), None), (None, Some(bad))] {
                let r = tape.bce_with_logits_weighted(x, t, weight, pos);
                assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
                assert_eq!(tape.used(), used_inputs);
            }
        }
        let r = tape.bce_with_logits_weighted(x, pw, None, None);
        assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    }

    // Probability targets: one-hot rows give the cross-entropy, smoothed rows the smoothed one,
    // and rows scaled by w_c N / sum_i w_{y_i} PyTorch's weighted mean: with weights [1, 2, 3]
    // and labels [2, 0], (3 * 0.40760596 + 1 * 1.09861229) / (3 + 1).
    #[test]
    fn probability_targets_cover_labels_smoothing_and_weights() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 512];
        let mut tape = Tape::<Cpu<f64>, 32>::new(&mut mem);
        let z = tape
            .input(&[2, 3], &[1.0, 2.0, 3.0, 1.0, 1.0, 1.0])
            .unwrap();
        let labels = tape.labels(&[2, 0]).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let one_hot = tape
            .input(&[2, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
            .unwrap();
        let (a, b) = (
            tape.cross_entropy_probs(z, one_hot).unwrap(),
            tape.cross_entropy(z, labels).unwrap(),
        );
        assert!(close(tape.item(a).unwrap(), tape.item(b).unwrap()));
        let (e, c) = (0.2, 3.0);
        let q = [e / c, e / c, 1.0 - e + e / c, 1.0 - e + e / c, e / c, e / c];
        let smooth = tape.input(&[2, 3], &q).unwrap();
        let (a, b) = (
            tape.cross_entropy_probs(z, smooth).unwrap(),
            tape.cross_entropy_smoothed(z, labels, 0.2).unwrap(),
        );
        assert!((tape.item(a).unwrap() - tape.item(b).unwrap()).abs() < 1e-7);
        let k = 2.0 / (3.0 + 1.0);
        let weighted = tape
            .input(&[2, 3], &[0.0, 0.0, 3.0 * k, 1.0 * k, 0.0, 0.0])
            .unwrap();
        let w = tape.cross_entropy_probs(z, weighted).unwrap();
        let want = (3.0 * 0.407_605_964_445_207_4 + 1.098_612_288_668_11) / 4.0;
        assert!((tape.item(w).unwrap() - want).abs() < 1e-9);
        let used = tape.used();
        assert!(tape.cross_entropy_probs(z, labels).is_err());
        assert_eq!(tape.used(), used, "a refused call takes no arena");
    }

    const WANT_BCE: f64 = 11.228_266_793_530_686;

    // Binary cross-entropy of probabilities against PyTorch's documented form, evaluated in
    // f64 by a separate script: `-w (t ln p + (1 - t) ln(1 - p))`, the mean; the last
    // element's ln(1e-50) is floored at ln(f32::MIN_POSITIVE) = -87.33654 (PyTorch: -100).
    // Then probabilities of exactly 0 and 1, and a sigmoid that rounds to 1 in f32: finite
    // gradients.
    #[test]
    fn binary_cross_entropy_of_probabilities() {
        use crate::{Cpu, Error, Tape};
        let mut mem = [0f64; 512];
        let mut tape = Tape::<Cpu<f64>, 64>::new(&mut mem);
        let p = tape.input(&[4], &[0.9, 0.2, 0.5, 1e-50]).unwrap();
        let t = tape.input(&[4], &[1.0, 0.0, 0.3, 1.0]).unwrap();
        let w = tape.input(&[4], &[1.0, 2.0, 1.0, 0.5]).unwrap();
        let l = tape.binary_cross_entropy(p, t, Some(w)).unwrap();
        let got = tape.item(l).unwrap();
        assert!((got - WANT_BCE).abs() < 1e-12, "{got}");
        let mut mem = [0f32; 256];
        let mut t32 = Tape::<Cpu<f32>, 64>::new(&mut mem);
        let x = t32.param(&[4], &[0.0, 0.0, 20.0, -120.0]).unwrap();
        let edge = t32.param(&[2], &[0.0, 1.0]).unwrap();
        let s = t32.sigmoid(x).unwrap();
        assert_eq!(t32.data(s).unwrap()[2], 1.0);
        let tt = t32.input(&[4], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let te = t32.input(&[2], &[1.0, 0.0]).unwrap();
        let a = t32.binary_cross_entropy(s, tt, None).unwrap();
        let b = t32.binary_cross_entropy(edge, te, None).unwrap();
        let sum = t32.add(a, b).unwrap();
        t32.backward(sum).unwrap();
        for v in [x, edge] {
            let g = t32.grad_data(v).unwrap().unwrap();
            assert!(g.iter().all(|g| g.is_finite()), "{g:?}");
        }
        // Against the logits' form: the same loss at sigmoid(x).
        let x = tape.input(&[3], &[2.0, -1.0, 0.25]).unwrap();
        let tt = tape.input(&[3], &[1.0, 0.0, 0.5]).unwrap();
        let s = tape.sigmoid(x).unwrap();
        let (a, b) = (
            tape.binary_cross_entropy(s, tt, None).unwrap(),
            tape.bce_with_logits(x, tt).unwrap(),
        );
        assert!((tape.item(a).unwrap() - tape.item(b).unwrap()).abs() < 1e-12);
        let r = tape.binary_cross_entropy(p, x, None);
        assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    }

    // PyTorch's `ignore_index`, against its documented form evaluated in f64 by a separate
    // script: the mean over the rows kept of `(1 - e) nll + e (lse - mean z)`.
    #[test]
    fn ignored_rows_add_nothing_and_the_mean_is_over_the_rows_kept() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 1024];
        let mut tape = Tape::<Cpu<f64>, 64>::new(&mut mem);
        let z = tape
            .param(&[3, 3], &[1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 5.0])
            .unwrap();
        let minus = tape.labels_signed(&[2, -100, 0]).unwrap();
        let ones = tape.labels(&[1, 1, 0]).unwrap();
        for (labels, ignore, e, want) in [
            (minus, -100, 0.0, 2.710_495_933_082_915),
            (minus, -100, 0.25, 2.627_162_599_749_581),
            (ones, 1, 0.0, 5.013_385_901_721_449),
        ] {
            let l = tape.cross_entropy_ignore(z, labels, ignore, e).unwrap();
            let got = tape.item(l).unwrap();
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        // A row labelled IGNORED_LABEL is ignored, and not counted, whatever ignore_index is.
        let marked = tape.input(&[3], &[2.0, -16_777_216.0, 0.0]).unwrap();
        let l = tape.cross_entropy_ignore(z, marked, 1, 0.0).unwrap();
        let got = tape.item(l).unwrap();
        assert!((got - 2.710_495_933_082_915).abs() < 1e-12, "{got}");
        // No row ignored: the fused loss's value.
        let (a, b) = (
            tape.cross_entropy_ignore(z, ones, 7, 0.0).unwrap(),
            tape.cross_entropy(z, ones).unwrap(),
        );
        assert!((tape.item(a).unwrap() - tape.item(b).unwrap()).abs() < 1e-12);
        // Every row ignored: NaN (0 / 0) and no gradient.
        let mark = tape.mark();
        let none = tape.input(&[3], &[-100.0; 3]).unwrap();
        let l = tape.cross_entropy_ignore(z, none, -100, 0.0).unwrap();
        assert!(tape.item(l).unwrap().is_nan());
        tape.backward(l).unwrap();
        let mut g = [1.0; 9];
        tape.read_grad(z, &mut g).unwrap();
        assert_eq!(g, [0.0; 9]);
        tape.rewind(mark).unwrap();
        // Labels kept are still checked: out of range, or not whole, is an error.
        for bad in [[2.0, 3.0, 0.0], [2.0, 0.5, 0.0]] {
            let labels = tape.input(&[3], &bad).unwrap();
            let r = tape.cross_entropy_ignore(z, labels, -100, 0.0);
            assert!(matches!(r, Err(Error::IndexOutOfRange { .. })), "{r:?}");
        }
        for bad in [i32::MAX, -(1 << 24) - 1] {
            let r = tape.cross_entropy_ignore(z, minus, bad, 0.0);
            assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        }
    }

    #[test]
    fn bad_labels_are_errors() {
        for bad in [3.0f32, -1.0, 0.5, f32::NAN] {
            assert!(
                forward(LossOp::CrossEntropy, 3, &[0.0f32; 3], &[bad]).is_err(),
                "{bad}"
            );
        }
    }
}

mod tape_ops {
    use super::{check_class_weight, check_smoothing, LossOp, Reduction, IGNORED_LABEL};

    /// The cross-entropies' checks: logits `[N, C]`, labels `[N]`, smoothing in `[0, 1]`.
    fn check_cross_entropy(ls: Shape, ts: Shape, label_smoothing: f32) -> Result<()> {
        check_smoothing(label_smoothing)?;
        if ls.rank() != 2 || ts.rank() != 1 || ts.dim(0) != ls.dim(0) {
            return Err(Error::ShapeMismatch {
                op: "cross_entropy",
                lhs: ls,
                rhs: ts,
            });
        }
        Ok(())
    }
    use crate::backend::{Backend, View};
    use crate::error::{Error, Result};
    use crate::shape::Shape;
    use crate::tape::{Op, Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        // Out of line: its recording frame is then not part of the caller's (a model's loss
        // function), which keeps a microcontroller's peak stack down.
        #[inline(never)]
        fn loss(&mut self, op: LossOp, p: Var, t: Var, classes: usize) -> Result<Var> {
            let (code, arg) = op.pack();
            self.record(
                Op::Loss { code, arg },
                Self::bw_loss,
                &[p, t],
                Shape::SCALAR,
                |b, y| b.loss(op, classes, p.view(), t.view(), y.offset),
            )
        }

        /// Mean squared error between same-shaped predictions and targets.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`]; and as [`Tape::unary`].
        pub fn mse(&mut self, pred: Var, target: Var) -> Result<Var> {
            if pred.shape != target.shape {
                return Err(Error::ShapeMismatch {
                    op: "mse",
                    lhs: pred.shape,
                    rhs: target.shape,
                });
            }
            self.loss(LossOp::Mse, pred, target, 0)
        }

        /// Softmax cross-entropy of logits `[N, C]` against class labels `[N]` (see
        /// [`Tape::labels`]), fused and stable. The mean over the batch. A row labelled
        /// [`IGNORED_LABEL`](crate::ops::loss::IGNORED_LABEL) (-2^24) adds nothing to the sum
        /// but counts in the mean ([`Tape::cross_entropy_ignore`] divides by the rows kept).
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`]; [`Error::IndexOutOfRange`] for a label outside `0..C` (but
        /// for `IGNORED_LABEL`); and as [`Tape::unary`].
        pub fn cross_entropy(&mut self, logits: Var, labels: Var) -> Result<Var> {
            self.cross_entropy_smoothed(logits, labels, 0.0)
        }

        /// [`Tape::cross_entropy`] with label smoothing (PyTorch's `cross_entropy(...,
        /// label_smoothing=e)`): each row's target is `(1 - e) onehot(label) + e / C`, so the
        /// loss is `(1 - e) ce + e mean_j (logsumexp(z) - z_j)` per row, fused and stable.
        /// `e = 0` is [`Tape::cross_entropy`], bit for bit.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `0 <= e <= 1`; as [`Tape::cross_entropy`].
        pub fn cross_entropy_smoothed(
            &mut self,
            logits: Var,
            labels: Var,
            label_smoothing: f32,
        ) -> Result<Var> {
            let ls = logits.shape;
            check_cross_entropy(ls, labels.shape, label_smoothing)?;
            let op = if label_smoothing == 0.0 {
                LossOp::CrossEntropy
            } else {
                LossOp::CrossEntropySmoothed(label_smoothing)
            };
            self.loss(op, logits, labels, ls.dim(1))
        }

        /// [`Tape::cross_entropy_smoothed`] with PyTorch's `ignore_index`
        /// (`F.cross_entropy(z, labels, ignore_index=i, label_smoothing=e)`): rows whose label
        /// is `ignore_index` add nothing and get no gradient, and the mean is over the rows
        /// kept. Labels are floats: [`Tape::labels_signed`] makes them from `i64`s (a negative
        /// `ignore_index` such as PyTorch's default -100), as [`Tape::labels`] does from
        /// unsigned ones. Composed on the
        /// device, so a CUDA graph or a replay can hold it: a mask `min(|label - i|, 1)`, the
        /// labels with [`IGNORED_LABEL`](crate::ops::loss::IGNORED_LABEL) where the mask is 0,
        /// the rows kept (the mask's sum), the fused loss (a mean over all `N` rows) times `N`
        /// over the rows kept; five nodes (the mask and the count are made without recording:
        /// a label equal to `IGNORED_LABEL` is ignored too, and not counted), all or nothing.
        /// When every row is ignored the loss is NaN (0 / 0, as PyTorch's) and the logits'
        /// gradient 0.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `|ignore_index| <= 2^24` and `0 <= e <= 1`; as
        /// [`Tape::cross_entropy`] for the labels kept (a label that is not a whole number is
        /// an error, whatever `ignore_index` is).
        pub fn cross_entropy_ignore(
            &mut self,
            logits: Var,
            labels: Var,
            ignore_index: i32,
            label_smoothing: f32,
        ) -> Result<Var> {
            if ignore_index.unsigned_abs() > 1 << 24 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy_ignore: ignore_index must lie in -2^24..=2^24",
                });
            }
            check_cross_entropy(logits.shape, labels.shape, label_smoothing)?;
            self.all_or_nothing(|t| {
                let (_, marked, kept) = t.no_grad(|t| t.ignore_mask(labels, ignore_index))?;
                t.cross_entropy_kept(logits, marked, kept, label_smoothing)
            })
        }

        /// The fused cross-entropy of `logits` against `marked` labels (the ignored ones
        /// [`IGNORED_LABEL`], which it skips), averaged over the `kept` rows.
        fn cross_entropy_kept(
            &mut self,
            logits: Var,
            marked: Var,
            kept: Var,
            label_smoothing: f32,
        ) -> Result<Var> {
            let rows = logits.shape.dim(0);
            let mean_all = self.cross_entropy_smoothed(logits, marked, label_smoothing)?;
            let total = self.mul_scalar(mean_all, rows as f32)?;
            self.div(total, kept)
        }

        /// The rows of `labels` to keep (1) or ignore (0: the label is `ignore_index`, or the
        /// fused losses' [`IGNORED_LABEL`]), the labels with the ignored ones set to
        /// `IGNORED_LABEL`, and the count of rows kept. Whole labels; no gradient.
        fn ignore_mask(&mut self, labels: Var, ignore_index: i32) -> Result<(Var, Var, Var)> {
            let ignored = ignore_index as f32;
            // 1 where the label is not `v`, 0 where it is (whole labels).
            let unlike = |t: &mut Self, v: f32| {
                let d = t.add_scalar(labels, -v)?;
                let d = t.abs(d)?;
                t.clamp_max(d, 1.0)
            };
            let mut keep = unlike(self, ignored)?;
            if ignored != IGNORED_LABEL {
                // The fused loss skips IGNORED_LABEL rows: not kept either.
                let other = unlike(self, IGNORED_LABEL)?;
                keep = self.mul(keep, other)?;
            }
            // label * keep + IGNORED_LABEL (1 - keep): exact for whole labels.
            let own = self.mul(labels, keep)?;
            let mark = self.mul_scalar(keep, -IGNORED_LABEL)?;
            let mark = self.add_scalar(mark, IGNORED_LABEL)?;
            let marked = self.add(own, mark)?;
            let kept = self.sum(keep)?;
            Ok((keep, marked, kept))
        }

        /// The negative log-likelihood of log-probabilities `[N, C]` at their labels (PyTorch's
        /// `F.nll_loss(logp, y, ignore_index=i)`, `nn.NLLLoss`): `-logp[r, y_r]` averaged over
        /// the rows whose label is not `ignore_index` (PyTorch's default is -100). Composed on
        /// the device, all or nothing: the labels' one-hot rows ([`Tape::one_hot`], which
        /// checks every label on the device, as PyTorch's does), zero for the ignored rows,
        /// pick each row's value (a `-inf` elsewhere in a row adds nothing); the gradient is
        /// `-1 / kept` at each kept row's label and 0 elsewhere. Fourteen nodes, and about
        /// `7 N C` elements of the arena (the fused cross-entropy takes one node and none).
        /// All rows ignored: a NaN loss, as PyTorch's, and a zero gradient. Class weights and
        /// the other reductions: [`crate::nn::loss::NllLoss`].
        ///
        /// # Errors
        /// As [`Tape::cross_entropy_ignore`].
        pub fn nll_loss(&mut self, logp: Var, labels: Var, ignore_index: i32) -> Result<Var> {
            self.class_loss(logp, labels, Some(ignore_index), None, 0.0, Reduction::Mean)
        }

        /// The class losses (the negative log-likelihood of log-probabilities `logp` `[N, C]`
        /// at `labels` `[N]`, with PyTorch's `ignore_index`, `weight` and `label_smoothing`),
        /// reduced: per row `l_r = -sum_c T_rc lp_rc`, where `T_r = w ((1 - e) onehot(y_r) + e /
        /// C)` on the rows kept and 0 on the ignored ones, and `lp` is `logp` raised to
        /// `-f32::MAX` (so that a class of probability 0, `-inf`, adds 0 at `e = 0`, not NaN;
        /// a row whose own label has it, or any row with `e > 0`, gets a loss of about
        /// `f32::MAX` times its target's share where PyTorch's is `inf`). The mean divides by
        /// `sum_r w[y_r]` over the rows kept (their count without weights), as PyTorch's, a
        /// negative sum too: when it is 0, NaN, with every gradient 0. A row labelled
        /// `IGNORED_LABEL` is skipped and not counted, whatever `ignore_index` is (the fused
        /// [`Tape::cross_entropy`] counts it in its mean). All or nothing.
        pub(crate) fn class_loss(
            &mut self,
            logp: Var,
            labels: Var,
            ignore_index: Option<i32>,
            weight: Option<Var>,
            label_smoothing: f32,
            reduction: Reduction,
        ) -> Result<Var> {
            check_cross_entropy(logp.shape, labels.shape, label_smoothing)?;
            let ignore = match ignore_index {
                Some(i) if i.unsigned_abs() > 1 << 24 => {
                    return Err(Error::InvalidArgument {
                        what: "cross_entropy: ignore_index must lie in -2^24..=2^24",
                    })
                }
                Some(i) => i,
                // The fused losses' ignored label: no other label is ignored.
                None => IGNORED_LABEL as i32,
            };
            let (rows, classes) = (logp.shape.dim(0), logp.shape.dim(1));
            check_class_weight(weight, logp.shape)?;
            if reduction == Reduction::BatchMean {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy: batchmean is the KL divergence's reduction",
                });
            }
            self.all_or_nothing(|t| {
                let (target, hot, kept) = t.no_grad(|t| {
                    let (keep, marked, kept) = t.ignore_mask(labels, ignore)?;
                    let hot = t.one_hot(marked, classes)?;
                    if label_smoothing == 0.0 {
                        return Ok::<_, Error>((hot, hot, kept));
                    }
                    // hot - e hot + e keep / C, exact in f64 (e is an f32).
                    let less = t.mul_scalar(hot, label_smoothing)?;
                    let own = t.sub(hot, less)?;
                    let k = t.reshape(keep, &[rows, 1])?;
                    let k = t.mul_scalar(k, label_smoothing)?;
                    let c = t.full(&[], crate::Float::from_f64(classes as f64))?;
                    let k = t.div(k, c)?;
                    Ok((t.add(own, k)?, hot, kept))
                })?;
                let (target, den) = match weight {
                    Some(w) => {
                        let picked = t.mul(hot, w)?;
                        (t.mul(target, w)?, t.sum(picked)?)
                    }
                    None => (target, kept),
                };
                let lp = t.clamp_min(logp, -f32::MAX)?;
                let terms = t.mul(target, lp)?;
                let terms = t.sum_axis(terms, 1)?;
                let terms = t.neg(terms)?;
                match reduction {
                    Reduction::Mean => {
                        // total / den, as PyTorch's (a negative den too). With den 0: NaN,
                        // and every gradient 0: (total z) / (den + 1 - z) + 0 / den, where z
                        // (no gradient) is 1 unless den is 0 (or below 3e-39 in size).
                        let (z, nan) = t.no_grad(|t| {
                            let a = t.abs(den)?;
                            let a = t.mul_scalar(a, f32::MAX)?;
                            let z = t.clamp_max(a, 1.0)?;
                            let zero = t.mul_scalar(den, 0.0)?;
                            Ok::<_, Error>((z, t.div(zero, den)?))
                        })?;
                        let total = t.sum(terms)?;
                        let total = t.mul(total, z)?;
                        let off = t.no_grad(|t| {
                            let n = t.neg(z)?;
                            t.add_scalar(n, 1.0)
                        })?;
                        let safe = t.add(den, off)?;
                        let mean = t.div(total, safe)?;
                        t.add(mean, nan)
                    }
                    r => t.reduce_terms(terms, r),
                }
            })
        }

        /// The Kullback-Leibler divergence of `target` from the distribution whose log-probabilities
        /// are `input`, summed and divided by the batch (PyTorch's `F.kl_div(input, target,
        /// reduction="batchmean", log_target=log_target)`, the reduction that gives the
        /// divergence; PyTorch's default `"mean"` divides by every element instead):
        /// `sum(t (ln t - input)) / N`, with `0 ln 0 = 0` (each logarithm's argument raised to
        /// `f32::MIN_POSITIVE`); with `log_target`, `sum(e^t (t - input)) / N`. `N` is the
        /// first dimension. Composed of seven nodes (six with `log_target`), all or nothing;
        /// both get gradients (the target's is `(ln max(t, f32::MIN_POSITIVE) + 1 - input) / N`,
        /// finite at `t = 0` where PyTorch's is 0).
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] unless both have one shape; and as [`Tape::unary`].
        pub fn kl_div_batchmean(
            &mut self,
            input: Var,
            target: Var,
            log_target: bool,
        ) -> Result<Var> {
            self.all_or_nothing(|t| {
                let terms = t.kl_terms(input, target, log_target)?;
                t.reduce_terms(terms, Reduction::BatchMean)
            })
        }

        /// The KL divergence's terms, `t (ln t - input)` (or `e^t (t - input)`), after the
        /// shape check: four nodes (three with `log_target`).
        pub(crate) fn kl_terms(
            &mut self,
            input: Var,
            target: Var,
            log_target: bool,
        ) -> Result<Var> {
            if input.shape != target.shape {
                return Err(Error::ShapeMismatch {
                    op: "kl_div",
                    lhs: input.shape,
                    rhs: target.shape,
                });
            }
            let (p, lt) = if log_target {
                (self.exp(target)?, target)
            } else {
                let floored = self.clamp_min(target, f32::MIN_POSITIVE)?;
                (target, self.log(floored)?)
            };
            let d = self.sub(lt, input)?;
            self.mul(p, d)
        }

        /// A loss's `terms` reduced as `reduction` says: as they are, their mean, their sum,
        /// or their sum over the first dimension (three nodes: the sum, a constant of the
        /// element type and the division, exact in `f64` as in `f32`). The losses of
        /// [`crate::nn::loss`] end with it; a loss of your own can too.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn reduce_terms(&mut self, terms: Var, reduction: Reduction) -> Result<Var> {
            match reduction {
                Reduction::None => Ok(terms),
                Reduction::Mean => self.mean(terms),
                Reduction::Sum => self.sum(terms),
                Reduction::BatchMean => {
                    let rows = terms.shape.dim(0).max(1);
                    self.all_or_nothing(|t| {
                        let s = t.sum(terms)?;
                        let n = t.full(&[], crate::Float::from_f64(rows as f64))?;
                        t.div(s, n)
                    })
                }
            }
        }

        /// Softmax cross-entropy of logits `[N, C]` against class probabilities `[N, C]`
        /// (PyTorch's `cross_entropy` with probability targets): `-sum_ic t_ic ln softmax(z_i)_c
        /// / N`, composed of five nodes (`log_softmax`, a product, a sum, the constant `-N` and
        /// a division), all or nothing. The targets need not sum to 1 per row: scaled rows give PyTorch's class
        /// `weight`s (row `i` times `w_c N / sum_i w_{y_i}` at its label) or label smoothing.
        /// Both inputs get gradients.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] unless both are `[N, C]`; and as [`Tape::unary`].
        pub fn cross_entropy_probs(&mut self, logits: Var, targets: Var) -> Result<Var> {
            if logits.shape.rank() != 2 || logits.shape != targets.shape {
                return Err(Error::ShapeMismatch {
                    op: "cross_entropy_probs",
                    lhs: logits.shape,
                    rhs: targets.shape,
                });
            }
            let rows = logits.shape.dim(0);
            self.all_or_nothing(|t| {
                let ls = t.log_softmax(logits, 1)?;
                let p = t.mul(ls, targets)?;
                let s = t.sum(p)?;
                // Divided by -N in the element type (exact in f64 as in f32).
                let n = t.full(&[], crate::Float::from_f64(-(rows as f64)))?;
                t.div(s, n)
            })
        }

        /// Binary cross-entropy of logits against same-shaped targets in `[0, 1]`, stable.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`]; and as [`Tape::unary`].
        pub fn bce_with_logits(&mut self, logits: Var, target: Var) -> Result<Var> {
            if logits.shape != target.shape {
                return Err(Error::ShapeMismatch {
                    op: "bce_with_logits",
                    lhs: logits.shape,
                    rhs: target.shape,
                });
            }
            self.loss(LossOp::BceWithLogits, logits, target, 0)
        }

        /// Binary cross-entropy of probabilities (PyTorch's `F.binary_cross_entropy(p, t,
        /// weight)`, `nn.BCELoss`): `-w (t ln p + (1 - t) ln(1 - p))` per element, the mean.
        /// `weight` broadcasts to the shape. Composed of up to fifteen nodes, all or nothing;
        /// the probabilities, the targets and the weight get gradients. Prefer
        /// [`Tape::bce_with_logits`] on logits: stable, and one fused node. Each logarithm's
        /// argument is raised to `f32::MIN_POSITIVE` first (about 1.2e-38), so the logarithms
        /// are at least -87.3 where PyTorch clamps them at -100, and a probability of exactly
        /// 0 or 1 (a sigmoid rounds to 1 in `f32` above about 16.7) gives finite gradients:
        /// the probability's is 0 there. Below `p (1 - p) = 1e-12` PyTorch bounds its
        /// gradient's denominator at 1e-12, where this one follows `1 / p` (or `1 / (1 - p)`).
        /// Unlike PyTorch, probabilities outside `[0, 1]` are not refused (that needs a read
        /// back to the host): they give NaN.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] unless the targets have the probabilities' shape and the
        /// weight broadcasts to it; and as [`Tape::unary`].
        pub fn binary_cross_entropy(
            &mut self,
            p: Var,
            target: Var,
            weight: Option<Var>,
        ) -> Result<Var> {
            self.all_or_nothing(|t| {
                let l = t.bce_log_likelihood(p, target, weight)?;
                let m = t.mean(l)?;
                t.neg(m)
            })
        }

        /// `w (t ln p + (1 - t) ln(1 - p))` per element, after the shape checks: the binary
        /// cross-entropy's terms, negated.
        pub(crate) fn bce_log_likelihood(
            &mut self,
            p: Var,
            target: Var,
            weight: Option<Var>,
        ) -> Result<Var> {
            let op = "binary_cross_entropy";
            let ps = p.shape;
            let mismatch = |rhs| Error::ShapeMismatch { op, lhs: ps, rhs };
            if target.shape != ps {
                return Err(mismatch(target.shape));
            }
            if let Some(w) = weight {
                if Shape::broadcast(op, ps, w.shape)? != ps {
                    return Err(mismatch(w.shape));
                }
            }
            // ln(max(v, f32::MIN_POSITIVE)): finite, and its gradient too (0 below the floor).
            let floor_log = |t: &mut Self, v: Var| {
                let v = t.clamp_min(v, f32::MIN_POSITIVE)?;
                t.log(v)
            };
            // 1 - v.
            let complement = |t: &mut Self, v: Var| {
                let n = t.neg(v)?;
                t.add_scalar(n, 1.0)
            };
            let t = self;
            let lp = floor_log(t, p)?;
            let q = complement(t, p)?;
            let lq = floor_log(t, q)?;
            // t ln p + (1 - t) ln(1 - p) term by term: no cancellation near p = 1.
            let a = t.mul(target, lp)?;
            let not = complement(t, target)?;
            let b = t.mul(not, lq)?;
            let l = t.add(a, b)?;
            match weight {
                Some(w) => t.mul(l, w),
                None => Ok(l),
            }
        }

        /// [`Tape::bce_with_logits`] with PyTorch's `weight` and `pos_weight`
        /// (`F.binary_cross_entropy_with_logits(x, t, weight, pos_weight)`): per element
        /// `w ((1 - t) x + (1 + (p - 1) t) softplus(-x))`, the mean over the elements. `weight`
        /// `w` and `pos_weight` `p` broadcast to the logits' shape (`p` is usually `[C]`, one
        /// weight per class of a multi-label output: above 1 it weighs the positives up). With
        /// neither, [`Tape::bce_with_logits`]. Composed of up to eleven nodes, all or nothing;
        /// the logits, the targets and both weights get gradients.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] unless the targets have the logits' shape and each weight
        /// broadcasts to it; and as [`Tape::unary`].
        pub fn bce_with_logits_weighted(
            &mut self,
            logits: Var,
            target: Var,
            weight: Option<Var>,
            pos_weight: Option<Var>,
        ) -> Result<Var> {
            if weight.is_none() && pos_weight.is_none() {
                // The checks' error names this function.
                self.bce_logits_checked(logits, target, None, None)?;
                return self.bce_with_logits(logits, target);
            }
            self.all_or_nothing(|t| {
                let l = t.bce_logits_terms(logits, target, weight, pos_weight)?;
                t.mean(l)
            })
        }

        /// Checks the shapes of [`Tape::bce_with_logits_weighted`]'s arguments.
        fn bce_logits_checked(
            &mut self,
            logits: Var,
            target: Var,
            weight: Option<Var>,
            pos_weight: Option<Var>,
        ) -> Result<()> {
            let op = "bce_with_logits_weighted";
            let ls = logits.shape;
            let mismatch = |rhs| Error::ShapeMismatch { op, lhs: ls, rhs };
            if target.shape != ls {
                return Err(mismatch(target.shape));
            }
            for w in [weight, pos_weight].into_iter().flatten() {
                if Shape::broadcast(op, ls, w.shape)? != ls {
                    return Err(mismatch(w.shape));
                }
            }
            Ok(())
        }

        /// `w ((1 - t) x + (1 + (p - 1) t) softplus(-x))` per element, after the shape
        /// checks: the terms of the binary cross-entropy on logits, stable (four nodes with
        /// neither weight, up to ten with both).
        pub(crate) fn bce_logits_terms(
            &mut self,
            logits: Var,
            target: Var,
            weight: Option<Var>,
            pos_weight: Option<Var>,
        ) -> Result<Var> {
            self.bce_logits_checked(logits, target, weight, pos_weight)?;
            let t = self;
            // softplus(-x) = ln(1 + e^-x), stable either way.
            let nx = t.neg(logits)?;
            let mut l = t.softplus(nx)?;
            if let Some(p) = pos_weight {
                let k = t.add_scalar(p, -1.0)?;
                let k = t.mul(k, target)?;
                let k = t.add_scalar(k, 1.0)?;
                l = t.mul(k, l)?;
            }
            // (1 - t) x, as x - t x.
            let tx = t.mul(target, logits)?;
            let lin = t.sub(logits, tx)?;
            l = t.add(lin, l)?;
            match weight {
                Some(w) => t.mul(l, w),
                None => Ok(l),
            }
        }

        /// Mean absolute error between same-shaped predictions and targets (PyTorch's
        /// `l1_loss`), composed of three nodes: `mean(|pred - target|)`; the gradient at a zero
        /// difference is 0. Like every op, all or nothing: a failure adds no node.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`]; and as [`Tape::unary`].
        pub fn l1_loss(&mut self, pred: Var, target: Var) -> Result<Var> {
            self.l1("l1_loss", pred, target)
        }

        /// [`Tape::l1_loss`], its shape error naming `op`, all or nothing.
        fn l1(&mut self, op: &'static str, pred: Var, target: Var) -> Result<Var> {
            self.all_or_nothing(|t| {
                let a = t.abs_diff(op, pred, target)?;
                t.mean(a)
            })
        }

        /// Huber loss with threshold `delta` (PyTorch's `huber_loss`): per element `d^2 / 2`
        /// where `|d| < delta`, else `delta (|d| - delta / 2)`, `d = pred - target`; the mean.
        /// Composed of nine nodes (`m = min(|d|, delta)`, then `m^2 / 2 + delta (|d| - m)`).
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `delta` is positive and finite;
        /// [`Error::ShapeMismatch`]; and as [`Tape::unary`].
        pub fn huber_loss(&mut self, pred: Var, target: Var, delta: f32) -> Result<Var> {
            if !(delta > 0.0 && delta.is_finite()) {
                return Err(Error::InvalidArgument {
                    what: "huber_loss: delta must be positive and finite",
                });
            }
            self.huber("huber_loss", pred, target, delta)
        }

        /// [`Tape::huber_loss`], its shape error naming `op`, all or nothing.
        fn huber(&mut self, op: &'static str, pred: Var, target: Var, delta: f32) -> Result<Var> {
            self.all_or_nothing(|t| {
                let s = t.huber_terms(op, pred, target, delta)?;
                t.mean(s)
            })
        }

        /// The Huber loss's terms, `m^2 / 2 + delta (|d| - m)` with `m = min(|d|, delta)`,
        /// after the shape check (its error naming `op`): eight nodes.
        pub(crate) fn huber_terms(
            &mut self,
            op: &'static str,
            pred: Var,
            target: Var,
            delta: f32,
        ) -> Result<Var> {
            let t = self;
            let a = t.abs_diff(op, pred, target)?;
            let m = t.clamp_max(a, delta)?;
            let q = t.square(m)?;
            let q = t.mul_scalar(q, 0.5)?;
            let l = t.sub(a, m)?;
            let l = t.mul_scalar(l, delta)?;
            t.add(q, l)
        }

        /// Smooth L1 loss with threshold `beta` (PyTorch's `smooth_l1_loss`): the Huber loss
        /// divided by `beta` (multiplied by `1 / beta` in f32), and the L1 loss when `beta` is
        /// 0.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `beta` is 0, or positive, finite and not so small
        /// that `1 / beta` overflows f32; [`Error::ShapeMismatch`]; and as [`Tape::unary`].
        pub fn smooth_l1_loss(&mut self, pred: Var, target: Var, beta: f32) -> Result<Var> {
            if beta == 0.0 {
                return self.l1("smooth_l1_loss", pred, target);
            }
            if !(beta > 0.0 && beta.is_finite() && (1.0 / beta).is_finite()) {
                return Err(Error::InvalidArgument {
                    what:
                        "smooth_l1_loss: beta must be 0, or positive and finite (and 1 / beta too)",
                });
            }
            self.all_or_nothing(|t| {
                let h = t.huber("smooth_l1_loss", pred, target, beta)?;
                t.mul_scalar(h, 1.0 / beta)
            })
        }

        /// `|pred - target|`, after checking that the shapes agree.
        pub(crate) fn abs_diff(&mut self, op: &'static str, pred: Var, target: Var) -> Result<Var> {
            let d = self.checked_diff(op, pred, target)?;
            self.abs(d)
        }

        /// `pred - target`, after checking that the shapes agree (the error naming `op`).
        pub(crate) fn checked_diff(
            &mut self,
            op: &'static str,
            pred: Var,
            target: Var,
        ) -> Result<Var> {
            if pred.shape != target.shape {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: pred.shape,
                    rhs: target.shape,
                });
            }
            self.sub(pred, target)
        }

        pub(crate) fn loss_backward(&mut self, op: LossOp, a: u32, b: u32, dy: View) -> Result<()> {
            let (pv, tv) = (self.node_view(a)?, self.node_view(b)?);
            // The classes are the logits' columns (the forward checked the shapes).
            let classes = if op.takes_labels() {
                pv.shape.dim(1)
            } else {
                0
            };
            if let Some((_, dx)) = self.input_grad(a)? {
                self.backend
                    .loss_backward(op, true, classes, pv, tv, dy.offset, dx)?;
            }
            if !op.takes_labels() {
                if let Some((_, dx)) = self.input_grad(b)? {
                    self.backend
                        .loss_backward(op, false, classes, pv, tv, dy.offset, dx)?;
                }
            }
            Ok(())
        }
    }
}
