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

    /// Precision, recall, F1 and support of each class of the model, from the confusion
    /// matrix (as scikit-learn's `classification_report(..., labels=every class,
    /// zero_division=0)`: a ratio whose denominator is 0, such as the precision of a class
    /// never predicted, is 0; a class absent from the data is listed with support 0).
    pub fn per_class(&self) -> Vec<ClassScores> {
        let k = self.confusion.len();
        (0..k)
            .map(|c| {
                let hit = self.confusion[c].get(c).copied().unwrap_or(0) as f64;
                let support = self.confusion[c].iter().sum::<usize>();
                let predicted: usize = self.confusion.iter().filter_map(|r| r.get(c)).sum();
                let ratio = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
                let precision = ratio(hit, predicted as f64);
                let recall = ratio(hit, support as f64);
                ClassScores {
                    precision,
                    recall,
                    f1: ratio(2.0 * precision * recall, precision + recall),
                    support,
                }
            })
            .collect()
    }

    /// The unweighted mean of [`ClassReport::per_class`] (scikit-learn's "macro avg") and the
    /// mean weighted by support ("weighted avg"); each with the total support.
    pub fn averages(&self) -> (ClassScores, ClassScores) {
        let scores = self.per_class();
        let total: usize = scores.iter().map(|s| s.support).sum();
        let mean = |w: &dyn Fn(&ClassScores) -> f64| {
            let den: f64 = scores.iter().map(w).sum();
            let avg = |f: fn(&ClassScores) -> f64| {
                if den > 0.0 {
                    scores.iter().map(|s| w(s) * f(s)).sum::<f64>() / den
                } else {
                    0.0
                }
            };
            ClassScores {
                precision: avg(|s| s.precision),
                recall: avg(|s| s.recall),
                f1: avg(|s| s.f1),
                support: total,
            }
        };
        (mean(&|_| 1.0), mean(&|s| s.support as f64))
    }
}

/// One class's scores ([`ClassReport::per_class`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    /// Of the rows predicted as the class, the share that are.
    pub precision: f64,
    /// Of the rows of the class, the share predicted as it.
    pub recall: f64,
    /// The harmonic mean of precision and recall.
    pub f1: f64,
    /// Rows of the class.
    pub support: usize,
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

/// Precision, recall, F1 and support per class, then their macro and weighted averages, as
/// text (scikit-learn's `classification_report` layout).
pub fn class_table(report: &ClassReport, classes: &[String]) -> String {
    let (macro_avg, weighted) = report.averages();
    let width = classes
        .iter()
        .map(|c| c.len())
        .max()
        .unwrap_or(0)
        .max("weighted avg".len());
    let line = |name: &str, s: &ClassScores| {
        format!(
            "{name:>width$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
            s.precision, s.recall, s.f1, s.support
        )
    };
    let mut out = format!(
        "{:>width$} {:>9} {:>9} {:>9} {:>9}\n",
        "class", "precision", "recall", "f1-score", "support"
    );
    for (c, s) in classes.iter().zip(report.per_class()) {
        out.push_str(&line(c, &s));
    }
    out.push_str(&line("macro avg", &macro_avg));
    out.push_str(&line("weighted avg", &weighted));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn's `classification_report` example: true [0, 1, 2, 2, 2], predicted
    /// [0, 0, 2, 2, 1] (class 1 is never predicted right: its precision's numerator is 0).
    #[test]
    fn precision_recall_f1_as_scikit_learn() {
        let r = ClassReport {
            loss: 0.0,
            correct: 3,
            total: 5,
            confusion: vec![vec![1, 0, 0], vec![1, 0, 0], vec![0, 1, 2]],
        };
        let s = r.per_class();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let want = [
            (0.5, 1.0, 2.0 / 3.0, 1),
            (0.0, 0.0, 0.0, 1),
            (1.0, 2.0 / 3.0, 0.8, 3),
        ];
        for (s, w) in s.iter().zip(want) {
            assert!(close(s.precision, w.0) && close(s.recall, w.1) && close(s.f1, w.2));
            assert_eq!(s.support, w.3);
        }
        let (m, w) = r.averages();
        assert!(close(m.precision, 0.5) && close(m.recall, 5.0 / 9.0));
        assert!(close(m.f1, (2.0 / 3.0 + 0.8) / 3.0));
        assert!(close(w.precision, 0.7) && close(w.recall, 0.6));
        assert!(close(w.f1, (2.0 / 3.0 + 2.4) / 5.0));
        assert_eq!((m.support, w.support), (5, 5));
        // A class with no rows and no predictions scores 0: 0 in the macro average, no weight
        // in the weighted one.
        let r = ClassReport {
            confusion: vec![vec![2, 0], vec![0, 0]],
            ..r
        };
        let (m, w) = r.averages();
        assert!(close(m.f1, 0.5) && close(w.f1, 1.0));
        let t = class_table(&r, &["a".into(), "b".into()]);
        assert!(
            t.contains("\nweighted avg    1.0000    1.0000    1.0000         2"),
            "{t}"
        );
    }

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
