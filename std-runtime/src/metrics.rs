//! Metrics over network outputs: loss, accuracy and a confusion matrix for classification, RMSE
//! for regression. Computed on the host in f64.

use crate::model::{argmax, softmax, RegressionLoss};

/// Classification results.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassReport {
    /// Mean softmax cross-entropy.
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Rows.
    pub total: usize,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl ClassReport {
    /// Accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Scores `logits` (`rows x classes`) against `labels`.
pub fn classify(logits: &[f32], classes: usize, labels: &[usize]) -> ClassReport {
    let mut r = ClassReport {
        loss: 0.0,
        correct: 0,
        total: 0,
        confusion: vec![vec![0; classes]; classes],
    };
    for (row, &y) in logits.chunks(classes.max(1)).zip(labels) {
        let p = argmax(row);
        let prob = softmax(row).get(y).copied().unwrap_or(0.0) as f64;
        r.loss -= prob.max(1e-30).ln();
        r.correct += usize::from(p == y);
        r.total += 1;
        if let Some(c) = r.confusion.get_mut(y).and_then(|row| row.get_mut(p)) {
            *c += 1;
        }
    }
    r.loss /= r.total.max(1) as f64;
    r
}

/// Regression results, in the targets' own units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegressionReport {
    /// The model's loss (the MSE unless it trains with another) of the standardised outputs.
    pub loss: f64,
    /// Root mean squared error, in target units.
    pub rmse: f64,
    /// Mean absolute error, in target units.
    pub mae: f64,
    /// Rows.
    pub total: usize,
}

/// Scores standardised outputs against standardised targets by the model's `loss`; `scale` is
/// the targets' standard deviation (to report in target units).
pub fn regress(
    outputs: &[f32],
    targets: &[f32],
    scale: f32,
    loss: RegressionLoss,
) -> RegressionReport {
    let (mut se, mut ae, mut l, mut n) = (0f64, 0f64, 0f64, 0usize);
    for (&p, &t) in outputs.iter().zip(targets) {
        let d = (p - t) as f64;
        se += d * d;
        ae += d.abs();
        l += loss.of(d);
        n += 1;
    }
    let n1 = n.max(1) as f64;
    RegressionReport {
        loss: l / n1,
        rmse: (se / n1).sqrt() * scale as f64,
        mae: ae / n1 * scale as f64,
        total: n,
    }
}

/// The confusion matrix as text, rows the true class, columns the predicted one.
pub fn confusion_table(confusion: &[Vec<usize>], classes: &[String]) -> String {
    let width = classes
        .iter()
        .map(|c| c.len())
        .chain(confusion.iter().flatten().map(|v| v.to_string().len()))
        .max()
        .unwrap_or(1)
        .max(3);
    let mut s = format!("{:>w$}", "true\\pred", w = width.max(9));
    for c in classes {
        s.push_str(&format!(" {c:>width$}"));
    }
    s.push('\n');
    for (c, row) in classes.iter().zip(confusion) {
        s.push_str(&format!("{c:>w$}", w = width.max(9)));
        for v in row {
            s.push_str(&format!(" {v:>width$}"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        let r = classify(&[2.0, 0.0, 0.0, 1.0, 5.0, 0.0], 2, &[0, 1, 1]);
        assert_eq!((r.correct, r.total), (2, 3));
        assert_eq!(r.confusion, vec![vec![1, 0], vec![1, 1]]);
        let g = regress(&[1.0, -1.0], &[0.0, 0.0], 2.0, RegressionLoss::Mse);
        assert!((g.rmse - 2.0).abs() < 1e-12 && (g.mae - 2.0).abs() < 1e-12);
        assert_eq!(g.loss, 1.0);
        // Differences 0.5 and -3: each loss's mean, as PyTorch computes it.
        let (p, t) = ([0.5f32, -3.0], [0.0f32, 0.0]);
        for (loss, want) in [
            (RegressionLoss::Mse, (0.25 + 9.0) / 2.0),
            (RegressionLoss::L1, 3.5 / 2.0),
            (RegressionLoss::Huber { delta: 1.0 }, (0.125 + 2.5) / 2.0),
            (RegressionLoss::Huber { delta: 4.0 }, (0.125 + 4.5) / 2.0),
            (RegressionLoss::SmoothL1 { beta: 2.0 }, (0.0625 + 2.0) / 2.0),
            (RegressionLoss::SmoothL1 { beta: 0.0 }, 3.5 / 2.0),
        ] {
            let r = regress(&p, &t, 1.0, loss);
            assert!(
                (r.loss - want).abs() < 1e-12,
                "{loss:?}: {} vs {want}",
                r.loss
            );
        }
    }
}
