//! Softmax cross-entropy in f32 with a vectorisable `exp`: on the small classification
//! workloads the loss's exponentials (one library call each, per element, forward and
//! backward) cost a quarter of a step. Values agree with the core's kernel to a few ulp (the
//! polynomial below is accurate to about 1 ulp); labels are checked the same way, in the same
//! order, with the same errors (but all labels are checked before any gradient is written).

use std::any::TypeId;

use mote::ops::loss::label_index;
use mote::{Error, Float, Result};

/// `e^x` for `x <= 0` (the shifted logits), about 1 ulp: Cody-Waite reduction to
/// `|r| <= ln 2 / 2`, a degree-7 Taylor polynomial, and `2^n` built from its bits. NaN stays
/// NaN; below -87 the result is about 1e-38 instead of a subnormal (it is only ever added to a
/// sum of at least 1).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer, without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // t's bits are those of ROUND plus n (n lies in [-126, 0] here): the exponent field of
    // 2^n, in integer operations that vectorise (a float-to-int `as` saturates, which does
    // not). For NaN the bits are garbage, and the NaN in p wins.
    let bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

fn as_f32<T: 'static>(s: &[T]) -> Option<&[f32]> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32 (same type, so same size, alignment and validity).
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
    } else {
        None
    }
}

fn as_f32_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: as in `as_f32`; the borrow is unique and lasts as long as `s`'s.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
    } else {
        None
    }
}

fn no_classes() -> Error {
    Error::InvalidArgument {
        what: "cross_entropy needs at least one class",
    }
}

/// Checks every label (the first bad one, in row order, is the error the core gives), then
/// fills `e` with `e^(z - max of its row)` and `sums` with each row's sum. Flat loops, so that
/// the exponentials vectorise. Returns the labels' classes through `classes_of`.
#[inline(always)]
fn rows(
    classes: usize,
    p: &[f32],
    t: &[f32],
    e: &mut Vec<f32>,
    maxes: &mut Vec<f32>,
    labels: &mut Vec<usize>,
) -> Result<()> {
    if classes == 0 {
        return Err(no_classes());
    }
    labels.clear();
    for &label in t.iter().take(p.len() / classes) {
        labels.push(label_index(label, classes)?);
    }
    let n = labels.len() * classes;
    let p = p.get(..n).unwrap_or(&[]);
    maxes.clear();
    maxes.extend(
        p.chunks_exact(classes)
            .map(|z| z.iter().fold(f32::MIN, |m, &v| Float::max(m, v))),
    );
    e.clear();
    e.resize(n, 0.0);
    for ((er, z), &m) in e
        .chunks_exact_mut(classes)
        .zip(p.chunks_exact(classes))
        .zip(maxes.iter())
    {
        for (e, &v) in er.iter_mut().zip(z) {
            *e = v - m;
        }
    }
    for v in e.iter_mut() {
        *v = exp(*v);
    }
    Ok(())
}

/// Reusable buffers of the fast path.
#[derive(Default)]
pub(super) struct Scratch {
    e: Vec<f32>,
    maxes: Vec<f32>,
    labels: Vec<usize>,
}

/// The mean cross-entropy of logits `p` (`[N, classes]`) against labels `t` (`[N]`), or
/// `None` when the fast path does not apply (not f32).
#[inline(always)]
pub(super) fn forward<T: Float>(
    s: &mut Scratch,
    classes: usize,
    p: &[T],
    t: &[T],
) -> Option<Result<T>> {
    let (p, t) = (as_f32(p)?, as_f32(t)?);
    if let Err(err) = rows(classes, p, t, &mut s.e, &mut s.maxes, &mut s.labels) {
        return Some(Err(err));
    }
    let mut total = 0f32;
    for (((er, z), &m), &c) in
        s.e.chunks_exact(classes)
            .zip(p.chunks_exact(classes))
            .zip(&s.maxes)
            .zip(&s.labels)
    {
        let sum: f32 = er.iter().sum();
        total += (m + sum.ln()) - z.get(c).copied().unwrap_or(0.0);
    }
    Some(Ok(T::from_f32(total / t.len() as f32)))
}

/// Accumulates `dy * (softmax(z) - onehot(label)) / N` into `dx`, or `None` when the fast path
/// does not apply.
#[inline(always)]
pub(super) fn backward<T: Float>(
    s: &mut Scratch,
    classes: usize,
    p: &[T],
    t: &[T],
    dy: T,
    dx: &mut [T],
) -> Option<Result<()>> {
    let (p, t, dx) = (as_f32(p)?, as_f32(t)?, as_f32_mut(dx)?);
    if let Err(err) = rows(classes, p, t, &mut s.e, &mut s.maxes, &mut s.labels) {
        return Some(Err(err));
    }
    let k = dy.to_f32() / t.len() as f32;
    for ((dz, er), &c) in dx
        .chunks_exact_mut(classes)
        .zip(s.e.chunks_exact(classes))
        .zip(&s.labels)
    {
        let inv = 1.0 / er.iter().sum::<f32>();
        for (d, &ej) in dz.iter_mut().zip(er) {
            *d += k * (ej * inv);
        }
        if let Some(d) = dz.get_mut(c) {
            *d -= k;
        }
    }
    Some(Ok(()))
}

/// [`forward`] compiled for AVX2 where the CPU has it (the closure form of
/// [`super::simd`] is not always inlined; these are, being `inline(always)`).
pub(super) fn forward_best<T: Float>(
    s: &mut Scratch,
    classes: usize,
    p: &[T],
    t: &[T],
) -> Option<Result<T>> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Float>(
            s: &mut Scratch,
            classes: usize,
            p: &[T],
            t: &[T],
        ) -> Option<Result<T>> {
            forward(s, classes, p, t)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(s, classes, p, t) };
        }
    }
    forward(s, classes, p, t)
}

/// [`backward`] compiled for AVX2 where the CPU has it.
pub(super) fn backward_best<T: Float>(
    s: &mut Scratch,
    classes: usize,
    p: &[T],
    t: &[T],
    dy: T,
    dx: &mut [T],
) -> Option<Result<()>> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Float>(
            s: &mut Scratch,
            classes: usize,
            p: &[T],
            t: &[T],
            dy: T,
            dx: &mut [T],
        ) -> Option<Result<()>> {
            backward(s, classes, p, t, dy, dx)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(s, classes, p, t, dy, dx) };
        }
    }
    backward(s, classes, p, t, dy, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_to_an_ulp_or_two() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }
}
