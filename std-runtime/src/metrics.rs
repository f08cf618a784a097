//! Metrics over network outputs: loss, accuracy and per-class precision, recall and F1 (and,
//! for a few classes, a confusion matrix) for classification, RMSE for regression. Computed on
//! the host in f64.
//!
//! Memory is linear in the rows and the classes: the training loop's [`score`] keeps three
//! numbers, [`classify`] three counts per class; only [`confusion`], for `mote eval` on a
//! model of at most [`CONFUSION_MAX_CLASSES`] classes, builds the classes-squared matrix.

use crate::model::{argmax, RegressionLoss};

/// The most classes whose confusion matrix `mote eval` prints (a row of it is a line of about
/// four characters per class; above this the matrix is left out, and its `classes x classes`
/// counts are not built).
pub const CONFUSION_MAX_CLASSES: usize = 30;

/// Loss and accuracy ([`score`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Mean softmax cross-entropy (per row `logsumexp(z) - z_y`, in f64).
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Rows.
    pub total: usize,
}

impl Score {
    /// Accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// Classification results.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassReport {
    /// Mean softmax cross-entropy (per row `logsumexp(z) - z_y`, in f64).
    pub loss: f64,
    /// Correct predictions.
    pub correct: usize,
    /// Rows.
    pub total: usize,
    /// Per class of the model: rows of the class predicted as it (true positives).
    pub hits: Vec<usize>,
    /// Per class of the model: rows predicted as the class.
    pub predicted: Vec<usize>,
    /// Per class of the model: rows of the class (its support).
    pub actual: Vec<usize>,
}

impl ClassReport {
    /// Accuracy in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// The per-class counts of a confusion matrix (`confusion[true][predicted]`), with `loss`
    /// 0 and `correct` its diagonal.
    pub fn from_confusion(confusion: &[Vec<usize>]) -> ClassReport {
        let k = confusion.len();
        let hits: Vec<usize> = (0..k)
            .map(|c| confusion[c].get(c).copied().unwrap_or(0))
            .collect();
        ClassReport {
            loss: 0.0,
            correct: hits.iter().sum(),
            total: confusion.iter().flatten().sum(),
            predicted: (0..k)
                .map(|c| confusion.iter().filter_map(|r| r.get(c)).sum())
                .collect(),
            actual: confusion.iter().map(|r| r.iter().sum()).collect(),
            hits,
        }
    }

    /// Precision, recall, F1 and support of each class of the model, from the per-class
    /// counts (as scikit-learn's `classification_report(..., labels=every class,
    /// zero_division=0)`: a ratio whose denominator is 0, such as the precision of a class
    /// never predicted, is 0; a class absent from the data is listed with support 0).
    pub fn per_class(&self) -> Vec<ClassScores> {
        let count = |v: &[usize], c: usize| v.get(c).copied().unwrap_or(0);
        (0..self.actual.len())
            .map(|c| {
                let hit = count(&self.hits, c) as f64;
                let support = count(&self.actual, c);
                let predicted = count(&self.predicted, c);
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

/// The softmax cross-entropy of `row` (logits) against class `y`: `logsumexp(row) - row[y]`,
/// as PyTorch's `cross_entropy` (through `log_softmax`) computes it, here in f64 with the
/// row's maximum `m` subtracted (`m - z_y + ln(1 + the other terms)`), so that neither a
/// confident wrong answer (a loss of hundreds) is capped nor a confident right one (a loss
/// like `exp(-30)`) rounded to a step of f32. Infinite
/// for a label that is not an entry of `row` (its probability is 0) and where the label's
/// logit is `-inf` among finite ones; NaN, as PyTorch's, for a row with a NaN or a `+inf`
/// logit, or of `-inf` only.
fn cross_entropy(row: &[f32], y: usize) -> f64 {
    let Some(&zy) = row.get(y) else {
        return f64::INFINITY;
    };
    if row.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    // The first maximum: its term of the sum is exactly 1, the rest is summed apart, so that
    // `ln(1 + rest)` keeps a small loss's digits (`ln_1p`).
    let (top, m) =
        row.iter()
            .map(|&v| f64::from(v))
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            );
    if !m.is_finite() {
        return f64::NAN;
    }
    let rest: f64 = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .map(|(_, &v)| (f64::from(v) - m).exp())
        .sum();
    (m - f64::from(zy)) + rest.ln_1p()
}

/// Visits each row of `logits` (`rows x classes`) with its label and predicted class, and
/// returns the loss and accuracy.
fn each_row(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    mut visit: impl FnMut(usize, usize),
) -> Score {
    let mut r = Score::default();
    for (row, &y) in logits.chunks(classes.max(1)).zip(labels) {
        let p = argmax(row);
        r.loss += cross_entropy(row, y);
        r.correct += usize::from(p == y);
        r.total += 1;
        visit(y, p);
    }
    r.loss /= r.total.max(1) as f64;
    r
}

/// Loss and accuracy of `logits` (`rows x classes`) against `labels`, in memory independent of
/// the rows and classes (the training loop's validation).
pub fn score(logits: &[f32], classes: usize, labels: &[usize]) -> Score {
    each_row(logits, classes, labels, |_, _| {})
}

/// Scores `logits` (`rows x classes`) against `labels`: [`score`] and three counts per class
/// (memory linear in the classes).
pub fn classify(logits: &[f32], classes: usize, labels: &[usize]) -> ClassReport {
    let (mut hits, mut predicted, mut actual) =
        (vec![0; classes], vec![0; classes], vec![0; classes]);
    let s = each_row(logits, classes, labels, |y, p| {
        // Rows whose label is not a class of the model are in the loss and accuracy only.
        if y < classes && p < classes {
            actual[y] += 1;
            predicted[p] += 1;
            hits[y] += usize::from(p == y);
        }
    });
    ClassReport {
        loss: s.loss,
        correct: s.correct,
        total: s.total,
        hits,
        predicted,
        actual,
    }
}

/// The confusion matrix of `logits` (`rows x classes`) against `labels`: `[true][predicted]`
/// counts, `classes x classes` of them (for a few classes: see [`CONFUSION_MAX_CLASSES`]).
pub fn confusion(logits: &[f32], classes: usize, labels: &[usize]) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (row, &y) in logits.chunks(classes.max(1)).zip(labels) {
        if let Some(c) = m.get_mut(y).and_then(|r| r.get_mut(argmax(row))) {
            *c += 1;
        }
    }
    m
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
    let classes = &printable(classes);
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

/// Class names for a table, one line each: control characters (a line break in a label
/// quoted across lines) escaped.
fn printable(classes: &[String]) -> Vec<String> {
    classes.iter().map(|c| crate::escape_controls(c)).collect()
}

/// Precision, recall, F1 and support per class, then their macro and weighted averages, as
/// text (scikit-learn's `classification_report` layout).
pub fn class_table(report: &ClassReport, classes: &[String]) -> String {
    let classes = &printable(classes);
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

    /// A class name holding a line break (a label quoted across lines) stays on its row of
    /// each table, escaped.
    #[test]
    fn tables_escape_line_breaks_in_class_names() {
        let classes = vec!["a\nb".to_string(), "c".to_string()];
        let t = confusion_table(&[vec![1, 0], vec![0, 2]], &classes);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.contains("a\\nb"), "{t}");
        let r = ClassReport::from_confusion(&[vec![1, 0], vec![0, 2]]);
        let t = class_table(&r, &classes);
        assert!(t.contains("a\\nb") && !t.contains("a\nb"), "{t}");
    }

    /// scikit-learn's `classification_report` example: true [0, 1, 2, 2, 2], predicted
    /// [0, 0, 2, 2, 1] (class 1 is never predicted right: its precision's numerator is 0).
    #[test]
    fn precision_recall_f1_as_scikit_learn() {
        let r = ClassReport::from_confusion(&[vec![1, 0, 0], vec![1, 0, 0], vec![0, 1, 2]]);
        assert_eq!((r.correct, r.total), (3, 5));
        assert_eq!(
            (
                r.hits.as_slice(),
                r.predicted.as_slice(),
                r.actual.as_slice()
            ),
            (&[1, 0, 2][..], &[2, 1, 2][..], &[1, 1, 3][..])
        );
        // The same counts from logits: rows of true class 0, 1, 2, 2, 2 predicted 0, 0, 2, 2, 1.
        let one_hot = |p: usize| (0..3).map(move |c| if c == p { 3.0 } else { 0.0 });
        let logits: Vec<f32> = [0, 0, 2, 2, 1].into_iter().flat_map(one_hot).collect();
        let from_logits = classify(&logits, 3, &[0, 1, 2, 2, 2]);
        assert_eq!(
            (from_logits.hits, from_logits.predicted, from_logits.actual),
            (r.hits.clone(), r.predicted.clone(), r.actual.clone())
        );
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
        let r = ClassReport::from_confusion(&[vec![2, 0], vec![0, 0]]);
        let (m, w) = r.averages();
        assert!(close(m.f1, 0.5) && close(w.f1, 1.0));
        let t = class_table(&r, &["a".into(), "b".into()]);
        assert!(
            t.contains("\nweighted avg    1.0000    1.0000    1.0000         2"),
            "{t}"
        );
    }

    /// The cross-entropy is PyTorch's `logsumexp(z) - z_y`, uncapped and unquantised: a
    /// wrong answer by 200 costs about 200 (`-ln` of an f32 softmax, clamped at 1e-30, gave
    /// 69), a right one by 30 about `exp(-30)` (an f32 softmax rounds it to 0, or to a step of
    /// 6e-8), and the accuracy is as before.
    #[test]
    fn cross_entropy_is_log_softmax_in_f64() {
        let s = score(&[200.0, 0.0], 2, &[1]);
        // ln(1 + e^-200) is below f64's resolution at 200.
        assert_eq!((s.loss, s.correct, s.total), (200.0, 0, 1));
        let s = score(&[30.0, 0.0, 0.0, 30.0], 2, &[0, 1]);
        let want = (-30f64).exp().ln_1p();
        assert!((s.loss / want - 1.0).abs() < 1e-9, "{} vs {want}", s.loss);
        assert!((s.loss / 9.357622968839737e-14 - 1.0).abs() < 1e-9);
        assert_eq!((s.correct, s.total), (2, 2));
        // Gaps of 20 and 21 give different losses (an f32 softmax gave 0 for both).
        let (a, b) = (
            score(&[20.0, 0.0], 2, &[0]).loss,
            score(&[21.0, 0.0], 2, &[0]).loss,
        );
        assert!(
            a > b && b > 0.0 && (a / b - 1f64.exp()).abs() < 1e-6,
            "{a} {b}"
        );
        // Shifting a row changes nothing (the maximum is subtracted): large logits are fine.
        let near = score(&[1e6, 1e6 - 3.0, 1e6 - 1.0], 3, &[2]).loss;
        let far = score(&[0.0, -3.0, -1.0], 3, &[2]).loss;
        assert_eq!(near, far);
        // Three classes by hand: ln(e^0 + e^-3 + e^-1) + 1.
        let want = (1.0 + (-3f64).exp() + (-1f64).exp()).ln() + 1.0;
        assert!((far - want).abs() < 1e-15);
        // A label outside the row: probability 0, an infinite loss; a NaN logit: NaN.
        assert_eq!(score(&[1.0, 0.0], 2, &[2]).loss, f64::INFINITY);
        assert!(score(&[f32::NAN, 0.0], 2, &[1]).loss.is_nan());
        let r = classify(&[200.0, 0.0, 0.0, 1.0], 2, &[1, 1]);
        assert_eq!((r.correct, r.total, r.hits), (1, 2, vec![0, 1]));
        assert!(
            (r.loss - (200.0 + lse1(1.0)) / 2.0).abs() < 1e-12,
            "{}",
            r.loss
        );
    }

    /// `ln(1 + e^-d)`: the loss of a right answer by a gap `d` between two classes.
    fn lse1(d: f64) -> f64 {
        (-d).exp().ln_1p()
    }

    #[test]
    fn scores() {
        let r = classify(&[2.0, 0.0, 0.0, 1.0, 5.0, 0.0], 2, &[0, 1, 1]);
        assert_eq!((r.correct, r.total), (2, 3));
        assert_eq!(
            confusion(&[2.0, 0.0, 0.0, 1.0, 5.0, 0.0], 2, &[0, 1, 1]),
            vec![vec![1, 0], vec![1, 1]]
        );
        assert_eq!(
            (r.hits, r.predicted, r.actual),
            (vec![1, 1], vec![2, 1], vec![1, 2])
        );
        // `score` is `classify`'s loss and accuracy; the loss is the mean of each row's
        // `logsumexp(z) - z_y` (worked here in f64 by hand).
        let s = score(&[2.0, 0.0, 0.0, 1.0, 5.0, 0.0], 2, &[0, 1, 1]);
        assert_eq!((s.loss, s.correct, s.total), (r.loss, r.correct, r.total));
        let lse = |a: f64, b: f64| a.max(b) + (1.0 + (-(a - b).abs()).exp()).ln();
        let want = ((lse(2.0, 0.0) - 2.0) + (lse(0.0, 1.0) - 1.0) + (lse(5.0, 0.0) - 0.0)) / 3.0;
        assert!((r.loss - want).abs() < 1e-15, "{} vs {want}", r.loss);
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
