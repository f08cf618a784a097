//! Softmax cross-entropy in f32 with a vectorisable `exp` and `ln`: on the small classification
//! workloads the loss's exponentials and logarithms (one library call each, per element
//! forward and backward, per row forward) cost a quarter of a step. The backward reuses the
//! forward's exponentials when it gets the same logits and labels (compared bit for bit).
//! Values agree with the core's kernel to a few ulp (the polynomials below are accurate to
//! about 1 ulp); labels are checked the same way, in the same order, with the same errors (but
//! all labels are checked before any gradient is written).

use mote::ops::loss::{is_ignored, label_index};
use mote::{Error, Float, Result};

use super::{as_f32, as_f32_mut};

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

/// `ln x` for `x >= 1` (a row's sum of shifted exponentials, which includes `e^0`), about
/// 1 ulp, in operations that vectorise: `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))`, then
/// `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`, by its series to `s^9` (`|s| <= 0.172`: the
/// next term is below 1e-9 of the result). NaN and infinity come back unchanged.
#[inline(always)]
fn ln_ge1(x: f32) -> f32 {
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    const LN2: f32 = std::f32::consts::LN_2;
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > SQRT2;
    let m = if big { m * 0.5 } else { m };
    let e = (e + i32::from(big)) as f32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 / 9.0))));
    let y = e * LN2 + series;
    if x < f32::INFINITY {
        y
    } else {
        x
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
        // An ignored row (`IGNORED_LABEL`) adds nothing: `usize::MAX` marks it.
        labels.push(if is_ignored(label) {
            usize::MAX
        } else {
            label_index(label, classes)?
        });
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

/// Reusable buffers of the fast path. The forward's exponentials stay for the backward, which
/// reuses them when it gets the very logits and labels the forward had (compared bit for bit:
/// a training step's backward follows its forward with nothing in between that writes them).
#[derive(Default)]
pub(super) struct Scratch {
    e: Vec<f32>,
    maxes: Vec<f32>,
    labels: Vec<usize>,
    /// The logits and labels `e`, `maxes` and `labels` were computed from, when `computed`.
    logits: Vec<f32>,
    targets: Vec<f32>,
    classes: usize,
    computed: bool,
    /// The forward's per-row log-sums.
    logs: Vec<f32>,
}

impl Scratch {
    /// Whether `e`, `maxes` and `labels` hold the results of [`rows`] for these arguments.
    fn holds(&self, classes: usize, p: &[f32], t: &[f32]) -> bool {
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.computed && self.classes == classes && same(&self.logits, p) && same(&self.targets, t)
    }

    /// [`rows`] for these arguments, remembering them for [`Scratch::holds`].
    fn compute(&mut self, classes: usize, p: &[f32], t: &[f32]) -> Result<()> {
        self.computed = false;
        rows(
            classes,
            p,
            t,
            &mut self.e,
            &mut self.maxes,
            &mut self.labels,
        )?;
        self.logits.clear();
        self.logits.extend_from_slice(p);
        self.targets.clear();
        self.targets.extend_from_slice(t);
        self.classes = classes;
        self.computed = true;
        Ok(())
    }
}

/// The mean cross-entropy of logits `p` (`[N, classes]`) against labels `t` (`[N]`) with label
/// `smoothing` (0: none), or `None` when the fast path does not apply (not f32).
#[inline(always)]
pub(super) fn forward<T: Float>(
    s: &mut Scratch,
    smoothing: f32,
    classes: usize,
    p: &[T],
    t: &[T],
) -> Option<Result<T>> {
    let (p, t) = (as_f32(p)?, as_f32(t)?);
    if let Err(err) = s.compute(classes, p, t) {
        return Some(Err(err));
    }
    // Each row's log-sum, in one pass that vectorises (a library `ln` per row cost half the
    // loss on W-digits).
    s.logs.clear();
    s.logs
        .extend(s.e.chunks_exact(classes).map(|er| er.iter().sum::<f32>()));
    for v in s.logs.iter_mut() {
        *v = ln_ge1(*v);
    }
    let mut total = 0f32;
    let (keep, per_class) = ((1.0 - f64::from(smoothing)) as f32, 1.0 / classes as f32);
    for (((&l, z), &m), &c) in s
        .logs
        .iter()
        .zip(p.chunks_exact(classes))
        .zip(&s.maxes)
        .zip(&s.labels)
    {
        if c == usize::MAX {
            continue;
        }
        let nll = (m + l) - z.get(c).copied().unwrap_or(0.0);
        total += if smoothing == 0.0 {
            nll
        } else {
            // As the core's: (1 - e) ce + e (ln s - mean (z - m)), each term >= 0.
            let below = z.iter().map(|&v| v - m).sum::<f32>() * per_class;
            keep * nll + smoothing * (l - below)
        };
    }
    Some(Ok(T::from_f32(total / t.len() as f32)))
}

/// Accumulates `dy * (softmax(z) - (1 - e) onehot(label) - e / classes) / N` into `dx`
/// (`e` the label smoothing), or `None` when the fast path does not apply.
#[inline(always)]
pub(super) fn backward<T: Float>(
    s: &mut Scratch,
    smoothing: f32,
    classes: usize,
    p: &[T],
    t: &[T],
    dy: T,
    dx: &mut [T],
) -> Option<Result<()>> {
    let (p, t, dx) = (as_f32(p)?, as_f32(t)?, as_f32_mut(dx)?);
    if !s.holds(classes, p, t) {
        if let Err(err) = s.compute(classes, p, t) {
            return Some(Err(err));
        }
    }
    let k = dy.to_f32() / t.len() as f32;
    let hit = k * (1.0 - f64::from(smoothing)) as f32;
    let even = k * smoothing / classes as f32;
    for ((dz, er), &c) in dx
        .chunks_exact_mut(classes)
        .zip(s.e.chunks_exact(classes))
        .zip(&s.labels)
    {
        if c == usize::MAX {
            continue;
        }
        let inv = 1.0 / er.iter().sum::<f32>();
        for (d, &ej) in dz.iter_mut().zip(er) {
            *d += k * (ej * inv);
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
    Some(Ok(()))
}

/// [`forward`] compiled for AVX2 where the CPU has it (the closure form of
/// [`super::simd`] is not always inlined; these are, being `inline(always)`).
pub(super) fn forward_best<T: Float>(
    s: &mut Scratch,
    smoothing: f32,
    classes: usize,
    p: &[T],
    t: &[T],
) -> Option<Result<T>> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Float>(
            s: &mut Scratch,
            smoothing: f32,
            classes: usize,
            p: &[T],
            t: &[T],
        ) -> Option<Result<T>> {
            forward(s, smoothing, classes, p, t)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(s, smoothing, classes, p, t) };
        }
    }
    forward(s, smoothing, classes, p, t)
}

/// [`backward`] compiled for AVX2 where the CPU has it.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_best<T: Float>(
    s: &mut Scratch,
    smoothing: f32,
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
            smoothing: f32,
            classes: usize,
            p: &[T],
            t: &[T],
            dy: T,
            dx: &mut [T],
        ) -> Option<Result<()>> {
            backward(s, smoothing, classes, p, t, dy, dx)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(s, smoothing, classes, p, t, dy, dx) };
        }
    }
    backward(s, smoothing, classes, p, t, dy, dx)
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

    #[test]
    fn the_backward_reuses_the_forwards_work_only_for_the_same_inputs() {
        let p1: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let mut p2 = p1.clone();
        p2[17] += 0.5;
        let t1: Vec<f32> = (0..6).map(|i| (i % 10) as f32).collect();
        let mut t2 = t1.clone();
        t2[2] = 7.0;
        let fresh = |p: &[f32], t: &[f32]| {
            let mut dx = vec![0.25f32; 60];
            let r = backward(&mut Scratch::default(), 0.0, 10, p, t, 1.5f32, &mut dx);
            assert!(matches!(r, Some(Ok(()))));
            dx
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // The forward on p1 and t1, then backwards on the same inputs and on changed logits
        // or labels: each as a backward with nothing cached.
        for (p, t) in [(&p1, &t1), (&p2, &t1), (&p1, &t2)] {
            let mut s = Scratch::default();
            assert!(matches!(forward(&mut s, 0.0, 10, &p1, &t1), Some(Ok(_))));
            let mut dx = vec![0.25f32; 60];
            assert!(matches!(
                backward(&mut s, 0.0, 10, p, t, 1.5f32, &mut dx),
                Some(Ok(()))
            ));
            assert_eq!(bits(&dx), bits(&fresh(p, t)));
        }
        // A bad label fails the forward; the backward then checks again.
        let mut s = Scratch::default();
        let bad = vec![0.0f32, 1.0, 12.0, 3.0, 4.0, 5.0];
        assert!(matches!(forward(&mut s, 0.0, 10, &p1, &bad), Some(Err(_))));
        let mut dx = vec![0.0f32; 60];
        assert!(matches!(
            backward(&mut s, 0.0, 10, &p1, &bad, 1.0f32, &mut dx),
            Some(Err(_))
        ));
    }

    #[test]
    fn ln_is_accurate_to_an_ulp_or_two_from_one_up() {
        let mut worst = 0f64;
        let mut x = 1.0f32;
        while x < 1.0e6 {
            let (got, want) = (f64::from(ln_ge1(x)), f64::from(x).ln());
            // Relative to the result, and absolute near x = 1 where the result is near 0.
            worst = worst.max((got - want).abs() / want.max(1.0));
            x = if x < 16.0 { x + 0.000_37 } else { x * 1.000_9 };
        }
        assert!(worst < 2.5e-7, "worst error {worst}");
        assert_eq!(ln_ge1(1.0), 0.0);
        assert!(ln_ge1(f32::NAN).is_nan());
        assert_eq!(ln_ge1(f32::INFINITY), f32::INFINITY);
    }
}
