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
/// `(x - mean) / std` (features with zero spread get `std = 1`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Means.
    pub mean: Vec<f32>,
    /// Standard deviations (population), never zero.
    pub std: Vec<f32>,
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
                .map(|&s| {
                    let sd = (s / n).sqrt();
                    if sd > 1e-6 {
                        sd as f32
                    } else {
                        1.0
                    }
                })
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
