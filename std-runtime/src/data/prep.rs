//! Preparing data for training: standardisation and the train/validation split.

use mote::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `(v - mean) / std` in f64: a column spanning most of f32's range (`-3e38` and `3e38`) would
/// overflow `v - mean` in f32. Features and regression targets alike.
pub(crate) fn standardise(v: f32, mean: f32, std: f32) -> f32 {
    ((f64::from(v) - f64::from(mean)) / f64::from(std)) as f32
}

/// Per-feature mean and standard deviation of the training split; applied as
/// `(x - mean) / std`. A constant column gets `std = 1` (it is only centred): one whose
/// standard deviation is 0, within f32's rounding of its values (at most `1e-7 x |mean|`), or
/// below `1e-30` (whose inverse, folded into an export's weights, would overflow f32). Any
/// other column is scaled to unit variance, whatever its units (values around `1e-7`
/// included), as scikit-learn's `StandardScaler` treats only constant columns as constant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Means.
    pub mean: Vec<f32>,
    /// Standard deviations (population), never zero.
    pub std: Vec<f32>,
}

/// A column's standard deviation relative to its mean's magnitude at or below which it counts
/// as constant: f32's resolution (its machine epsilon is `1.19e-7`), so that a constant
/// column whose values differ by rounding alone is not blown up.
const CONSTANT_RELATIVE: f64 = 1e-7;

/// The smallest standard deviation a column is scaled by: `1 / 1e-30` fits f32 (an export folds
/// the inverse into weights).
const SMALLEST_STD: f64 = 1e-30;

/// The scale of a column of standard deviation `sd` and mean `mean`: `sd`, or 1 for a constant
/// column (see [`Standardizer`]; a NaN or infinite `sd` too).
fn scale_of(sd: f64, mean: f64) -> f32 {
    let varies = sd.is_finite() && sd >= SMALLEST_STD && sd > CONSTANT_RELATIVE * mean.abs();
    match sd as f32 {
        s if varies && s.is_finite() && s > 0.0 => s,
        _ => 1.0,
    }
}

impl Standardizer {
    /// The identity for `cols` features.
    pub fn identity(cols: usize) -> Standardizer {
        Standardizer {
            mean: vec![0.0; cols],
            std: vec![1.0; cols],
        }
    }

    /// Statistics over the given rows of `x` (`cols` features per row), in f64.
    pub fn fit(x: &[f32], cols: usize, rows: &[usize]) -> Standardizer {
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0f64; cols];
        for &r in rows {
            for (m, &v) in mean
                .iter_mut()
                .zip(x.get(r * cols..(r + 1) * cols).unwrap_or(&[]))
            {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; cols];
        for &r in rows {
            let row = x.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v as f64 - m) * (v as f64 - m);
            }
        }
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: var
                .iter()
                .zip(&mean)
                .map(|(&s, &m)| scale_of((s / n).sqrt(), m))
                .collect(),
        }
    }

    /// Standardises `x` (rows of `self.mean.len()` features) in place, in f64: a column
    /// spanning most of f32's range (`-3e38` and `3e38`) would overflow `v - mean` in f32.
    pub fn apply(&self, x: &mut [f32]) {
        for row in x.chunks_mut(self.mean.len().max(1)) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = standardise(*v, m, s);
            }
        }
    }
}

/// Splits `0..n` into training and validation indices (both ascending): a `val_fraction`
/// share goes to validation, drawn with `Rng::with_stream(seed, 1)`; stratified by class when
/// `classes` is given (each class keeps its share, rounded).
///
/// # Errors
/// `Invalid` when `val_fraction` is outside `[0, 1)` or leaves no training rows.
pub fn split(
    n: usize,
    val_fraction: f64,
    seed: u64,
    classes: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::invalid(format!(
            "validation fraction {val_fraction} is outside [0, 1)"
        ))
        .with_hint("give --val a value such as 0.2, or 0 for no validation"));
    }
    let mut rng = Rng::with_stream(seed, 1);
    let groups: Vec<Vec<usize>> = match classes {
        Some(c) => {
            let k = c.iter().max().map_or(0, |&m| m + 1);
            let mut g = vec![Vec::new(); k];
            for (i, &y) in c.iter().enumerate() {
                if let Some(v) = g.get_mut(y) {
                    v.push(i);
                }
            }
            g
        }
        None => vec![(0..n).collect()],
    };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut g in groups {
        rng.shuffle(&mut g);
        let k = (g.len() as f64 * val_fraction).round() as usize;
        let k = if k >= g.len() && g.len() > 1 {
            g.len() - 1
        } else {
            k.min(g.len())
        };
        val.extend_from_slice(g.get(..k).unwrap_or(&[]));
        train.extend_from_slice(g.get(k..).unwrap_or(&[]));
    }
    if train.is_empty() {
        return Err(
            Error::invalid("the validation split leaves no training rows")
                .with_hint("lower --val or give more data"),
        );
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The population standard deviation of column `c` of `x` (`cols` per row), in f64.
    fn column_std(x: &[f32], cols: usize, c: usize) -> f64 {
        let v: Vec<f64> = x.chunks(cols).map(|r| f64::from(r[c])).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len() as f64).sqrt()
    }

    /// A column in tiny units is scaled to unit variance like any other; constant columns
    /// (small, large, or varying by f32 rounding alone) keep scale 1 and are only centred.
    #[test]
    fn small_units_are_scaled_and_constants_are_not() {
        let big = 1000.0f32;
        // 1000 and the next f32 above it: rounding, not a spread (its std, 3e-5, is below
        // 1e-7 x 1000).
        let next = f32::from_bits(big.to_bits() + 1);
        let rows: Vec<[f32; 6]> = (0..8)
            .map(|i| {
                let t = i as f32;
                [
                    (1.0 + t) * 1e-7, // about 1e-7: std 2.3e-7, once treated as constant
                    5.0,
                    big,
                    if i % 2 == 0 { big } else { next },
                    t * 1e-36, // a std under 1e-30: too small to scale by in f32
                    t,
                ]
            })
            .collect();
        let mut x: Vec<f32> = rows.iter().flatten().copied().collect();
        let all: Vec<usize> = (0..8).collect();
        let s = Standardizer::fit(&x, 6, &all);
        let sd = (0..6).map(|c| column_std(&x, 6, c)).collect::<Vec<_>>();
        assert!((f64::from(s.std[0]) / sd[0] - 1.0).abs() < 1e-6, "{s:?}");
        assert_eq!(&s.std[1..5], &[1.0; 4], "{s:?}");
        assert!((f64::from(s.std[5]) / sd[5] - 1.0).abs() < 1e-6, "{s:?}");
        assert_eq!((s.mean[1], s.mean[2]), (5.0, big));
        s.apply(&mut x);
        // The small-unit column now has unit std, as the ordinary one; the constants are 0.
        assert!((column_std(&x, 6, 0) - 1.0).abs() < 1e-5, "{x:?}");
        assert!((column_std(&x, 6, 5) - 1.0).abs() < 1e-5, "{x:?}");
        assert!(x.chunks(6).all(|r| r[1] == 0.0 && r[2] == 0.0), "{x:?}");
        // A regression target goes through the same fit: in tiny units, it is standardised.
        let y = [2e-7f32, 4e-7, 6e-7, 8e-7];
        let t = Standardizer::fit(&y, 1, &[0, 1, 2, 3]);
        assert!((f64::from(t.std[0]) / column_std(&y, 1, 0) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn stratified_split_keeps_shares() {
        let ys: Vec<usize> = (0..100).map(|i| i % 4).collect();
        let (tr, va) = split(100, 0.2, 7, Some(&ys)).unwrap();
        assert_eq!((tr.len(), va.len()), (80, 20));
        for c in 0..4 {
            assert_eq!(va.iter().filter(|&&i| ys[i] == c).count(), 5);
        }
        assert_eq!(split(100, 0.2, 7, Some(&ys)).unwrap().1, va);
    }
}
