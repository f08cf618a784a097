//! The loss modules of `mote::nn::loss` against PyTorch's formulas, written out here in f64
//! from PyTorch's source (`aten/src/ATen/native/Loss.cpp`, `LossNLL.cpp`), on drawn inputs,
//! for every reduction and option; and their refusals.

use mote::nn::loss::{
    BceLoss, BceWithLogitsLoss, CrossEntropyLoss, HuberLoss, KlDivLoss, L1Loss, MseLoss, NllLoss,
    Reduction, SmoothL1Loss,
};
use mote::{Cpu, Error, Rng, Tape, Var};

type T<'m> = Tape<Cpu<'m, f64>, 256>;

const REDUCTIONS: [Reduction; 4] = [
    Reduction::None,
    Reduction::Mean,
    Reduction::Sum,
    Reduction::BatchMean,
];

fn draw(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// PyTorch's reduction of `terms` whose first dimension is `rows`.
fn reduce(terms: &[f64], rows: usize, r: Reduction) -> Vec<f64> {
    let sum: f64 = terms.iter().sum();
    match r {
        Reduction::None => terms.to_vec(),
        Reduction::Mean => vec![sum / terms.len() as f64],
        Reduction::Sum => vec![sum],
        Reduction::BatchMean => vec![sum / rows as f64],
    }
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        let ok = (g - w).abs() <= 1e-12 * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: {got:?} vs {want:?}");
    }
}

/// ln(1 + e^x), stable.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// PyTorch's class loss (`nll_loss` with `weight` and `ignore_index`, plus its label
/// smoothing term) of log-probabilities `lp` `[rows, c]`.
fn class_loss(
    lp: &[f64],
    c: usize,
    labels: &[i64],
    w: Option<&[f64]>,
    ignore: Option<i64>,
    e: f64,
    r: Reduction,
) -> Vec<f64> {
    let wc = |k: usize| w.map_or(1.0, |w| w[k]);
    let mut rows = vec![];
    let mut den = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        if Some(y) == ignore {
            rows.push(0.0);
            continue;
        }
        let row = &lp[i * c..(i + 1) * c];
        let y = y as usize;
        let nll = -wc(y) * row[y];
        let smooth: f64 = -(0..c).map(|k| wc(k) * row[k]).sum::<f64>();
        rows.push((1.0 - e) * nll + e / c as f64 * smooth);
        den += wc(y);
    }
    match r {
        Reduction::Mean => vec![rows.iter().sum::<f64>() / den],
        r => reduce(&rows, labels.len(), r),
    }
}

/// The module's result on a fresh f64 tape: its values.
fn run(f: impl FnOnce(&mut T<'_>) -> mote::Result<Var>) -> mote::Result<Vec<f64>> {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let v = f(&mut t)?;
    Ok(t.data(v)?.to_vec())
}

#[test]
fn element_wise_losses_match_pytorch_for_every_reduction() {
    let mut rng = Rng::new(7);
    for case in 0..40 {
        let dims = [1 + case % 4, 1 + case % 3, 2];
        let n: usize = dims.iter().product();
        let rows = dims[0];
        let p = draw(&mut rng, n, -3.0, 3.0);
        let t = draw(&mut rng, n, 0.0, 1.0);
        let w = draw(&mut rng, n, 0.5, 2.0);
        let pw = draw(&mut rng, 2, 0.2, 3.0);
        let probs = draw(&mut rng, n, 0.05, 0.95);
        let delta = rng.uniform(0.1, 3.0) as f32;
        let d = f64::from(delta);
        let beta = [0.0f32, 0.5, 2.0][case % 3];
        let b = f64::from(beta);
        let huber = |a: f64, d: f64| {
            if a < d {
                a * a / 2.0
            } else {
                d * (a - d / 2.0)
            }
        };
        let zip = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        // batchmean is the KL divergence's only (refusals below).
        for r in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            let expect: [(&str, Vec<f64>); 7] = [
                ("mse", zip(&|i| (p[i] - t[i]).powi(2))),
                ("l1", zip(&|i| (p[i] - t[i]).abs())),
                ("huber", zip(&|i| huber((p[i] - t[i]).abs(), d))),
                (
                    "smooth_l1",
                    zip(&|i| {
                        let a = (p[i] - t[i]).abs();
                        if b == 0.0 {
                            a
                        } else {
                            huber(a, b) * f64::from(1.0 / beta)
                        }
                    }),
                ),
                (
                    "bce",
                    zip(&|i| -w[i] * (t[i] * probs[i].ln() + (1.0 - t[i]) * (1.0 - probs[i]).ln())),
                ),
                (
                    "bce_with_logits",
                    zip(&|i| {
                        let lw = 1.0 + (pw[i % 2] - 1.0) * t[i];
                        w[i] * ((1.0 - t[i]) * p[i] + lw * softplus(-p[i]))
                    }),
                ),
                (
                    "bce_with_logits_plain",
                    zip(&|i| (1.0 - t[i]) * p[i] + softplus(-p[i])),
                ),
            ];
            for (name, terms) in expect {
                let got = run(|tp| {
                    let (vp, vt) = (tp.param(&dims, &p)?, tp.input(&dims, &t)?);
                    match name {
                        "mse" => MseLoss { reduction: r }.forward(tp, vp, vt),
                        "l1" => L1Loss { reduction: r }.forward(tp, vp, vt),
                        "huber" => HuberLoss {
                            delta,
                            reduction: r,
                        }
                        .forward(tp, vp, vt),
                        "smooth_l1" => SmoothL1Loss { beta, reduction: r }.forward(tp, vp, vt),
                        "bce" => {
                            let (pp, vw) = (tp.param(&dims, &probs)?, tp.input(&dims, &w)?);
                            let weight = Some(vw);
                            BceLoss {
                                weight,
                                reduction: r,
                            }
                            .forward(tp, pp, vt)
                        }
                        "bce_with_logits" => {
                            let (vw, vpw) = (tp.input(&dims, &w)?, tp.input(&[2], &pw)?);
                            let (weight, pos_weight) = (Some(vw), Some(vpw));
                            let m = BceWithLogitsLoss {
                                weight,
                                pos_weight,
                                reduction: r,
                            };
                            m.forward(tp, vp, vt)
                        }
                        _ => BceWithLogitsLoss {
                            reduction: r,
                            ..Default::default()
                        }
                        .forward(tp, vp, vt),
                    }
                })
                .unwrap();
                // mse and bce with logits' means are one fused node each, which sums in a
                // different order: within 1e-12 still.
                assert_close(&got, &reduce(&terms, rows, r), &format!("{name} {r:?}"));
            }
        }
    }
}

#[test]
fn kl_divergence_matches_pytorch_for_every_reduction() {
    let mut rng = Rng::new(11);
    for case in 0..20 {
        let (rows, c) = (1 + case % 4, 2 + case % 3);
        let n = rows * c;
        let q = draw(&mut rng, n, -3.0, 0.0);
        // Targets with exact zeros (0 ln 0 = 0).
        let mut p = draw(&mut rng, n, 0.0, 1.0);
        p[case % n] = 0.0;
        let lt = draw(&mut rng, n, -3.0, 0.5);
        for r in REDUCTIONS {
            for log_target in [false, true] {
                let terms: Vec<f64> = (0..n)
                    .map(|i| {
                        if log_target {
                            lt[i].exp() * (lt[i] - q[i])
                        } else if p[i] == 0.0 {
                            0.0
                        } else {
                            p[i] * (p[i].ln() - q[i])
                        }
                    })
                    .collect();
                let target = if log_target { &lt } else { &p };
                let got = run(|tp| {
                    let (vq, vp) = (tp.param(&[rows, c], &q)?, tp.param(&[rows, c], target)?);
                    KlDivLoss {
                        reduction: r,
                        log_target,
                    }
                    .forward(tp, vq, vp)
                })
                .unwrap();
                assert_close(
                    &got,
                    &reduce(&terms, rows, r),
                    &format!("kl {r:?} {log_target}"),
                );
                if r == Reduction::BatchMean {
                    let fused = run(|tp| {
                        let (vq, vp) = (tp.param(&[rows, c], &q)?, tp.param(&[rows, c], target)?);
                        tp.kl_div_batchmean(vq, vp, log_target)
                    })
                    .unwrap();
                    assert_eq!(got, fused);
                }
            }
        }
    }
}

#[test]
fn class_losses_match_pytorch_for_every_option() {
    let mut rng = Rng::new(5);
    for case in 0..60 {
        let (rows, c) = (1 + case % 5, 1 + (case / 5) % 5);
        let z = draw(&mut rng, rows * c, -3.0, 3.0);
        let w = draw(&mut rng, c, 0.2, 2.0);
        let ignore = [None, Some(-100), Some((case % c) as i64)][case % 3];
        // Rows ignored at times (all of them too: NaN means, as PyTorch's).
        let labels: Vec<i64> = (0..rows)
            .map(|_| match ignore {
                Some(i) if rng.below(3) == 0 => i,
                _ => i64::from(rng.below(c as u32)),
            })
            .collect();
        let lp: Vec<f64> = z.chunks(c).flat_map(log_softmax).collect();
        for r in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            for weighted in [false, true] {
                let weight = weighted.then_some(&w[..]);
                for e in [0.0f32, 0.1, 1.0] {
                    let want = class_loss(&lp, c, &labels, weight, ignore, f64::from(e), r);
                    let got = run(|tp| {
                        let vz = tp.param(&[rows, c], &z)?;
                        let y = tp.labels_signed(&labels)?;
                        let weight = if weighted {
                            Some(tp.param(&[c], &w)?)
                        } else {
                            None
                        };
                        let ignore_index = ignore.map(|i| i as i32);
                        let m = CrossEntropyLoss {
                            weight,
                            ignore_index,
                            label_smoothing: e,
                            reduction: r,
                        };
                        m.forward(tp, vz, y)
                    })
                    .unwrap();
                    let what = format!("ce {r:?} w {weighted} e {e} ignore {ignore:?} {labels:?}");
                    // The fused mean (no weights) sums in its own order: 1e-12 still.
                    assert_close(&got, &want, &what);
                }
                let want = class_loss(&lp, c, &labels, weight, ignore, 0.0, r);
                let got = run(|tp| {
                    let vl = tp.param(&[rows, c], &lp)?;
                    let y = tp.labels_signed(&labels)?;
                    let weight = if weighted {
                        Some(tp.param(&[c], &w)?)
                    } else {
                        None
                    };
                    let ignore_index = ignore.map(|i| i as i32);
                    NllLoss {
                        weight,
                        ignore_index,
                        reduction: r,
                    }
                    .forward(tp, vl, y)
                })
                .unwrap();
                assert_close(&got, &want, &format!("nll {r:?} w {weighted} {ignore:?}"));
            }
        }
        // Probability targets: rows of the drawn labels' one-hot, smoothed, weighted; the mean
        // divides by the rows (PyTorch's `cross_entropy_loss_prob_target`).
        let probs = draw(&mut rng, rows * c, 0.0, 1.0);
        for r in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            for (weighted, e) in [(false, 0.0f32), (true, 0.0), (false, 0.2), (true, 0.5)] {
                let rows_loss: Vec<f64> = (0..rows)
                    .map(|i| {
                        -(0..c)
                            .map(|k| {
                                let t = probs[i * c + k] * (1.0 - f64::from(e))
                                    + f64::from(e) / c as f64;
                                (if weighted { w[k] } else { 1.0 }) * t * lp[i * c + k]
                            })
                            .sum::<f64>()
                    })
                    .collect();
                let got = run(|tp| {
                    let vz = tp.param(&[rows, c], &z)?;
                    let vp = tp.param(&[rows, c], &probs)?;
                    let weight = if weighted {
                        Some(tp.param(&[c], &w)?)
                    } else {
                        None
                    };
                    let m = CrossEntropyLoss {
                        weight,
                        label_smoothing: e,
                        reduction: r,
                        ..Default::default()
                    };
                    m.forward_probs(tp, vz, vp)
                })
                .unwrap();
                let want = match r {
                    Reduction::Mean => vec![rows_loss.iter().sum::<f64>() / rows as f64],
                    r => reduce(&rows_loss, rows, r),
                };
                // (1 - e) t is computed as t - e t: within 1e-12 of PyTorch's form.
                assert_close(&got, &want, &format!("ce probs {r:?} w {weighted} e {e}"));
            }
        }
    }
}

#[test]
fn class_losses_edge_cases() {
    // Every row ignored: NaN, as PyTorch's (0 / 0), with zero gradients; weights of zero at
    // every kept label likewise.
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let z = t.param(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 1.0, 0.0]).unwrap();
    let w = t.param(&[3], &[1.0, 0.0, 2.0]).unwrap();
    let start = t.mark();
    for (labels, weight, e) in [
        ([-100i64, -100], None, 0.0),
        ([-100, -100], Some(w), 0.1),
        ([1, -100], Some(w), 0.0),
        ([1, 1], Some(w), 0.1),
    ] {
        t.rewind(start).unwrap();
        t.zero_grad().unwrap();
        let y = t.labels_signed(&labels).unwrap();
        let m = CrossEntropyLoss {
            weight,
            ignore_index: Some(-100),
            label_smoothing: e,
            ..Default::default()
        };
        let l = m.forward(&mut t, z, y).unwrap();
        assert!(t.item(l).unwrap().is_nan());
        t.backward(l).unwrap();
        let mut g = [9.0; 9];
        t.read_grad(z, &mut g[..6]).unwrap();
        t.read_grad(w, &mut g[6..]).unwrap();
        assert_eq!(g, [0.0; 9], "{labels:?} {e}");
    }
    // Negative class weights: PyTorch divides by their (negative) sum.
    t.rewind(start).unwrap();
    let neg = t.input(&[3], &[1.0, -1.0, 1.0]).unwrap();
    let y = t.labels(&[1, 1]).unwrap();
    let m = CrossEntropyLoss {
        weight: Some(neg),
        ..Default::default()
    };
    let l = m.forward(&mut t, z, y).unwrap();
    let lp: Vec<f64> = [1.0, 2.0, 3.0, 0.0, 1.0, 0.0]
        .chunks(3)
        .flat_map(log_softmax)
        .collect();
    let want = class_loss(
        &lp,
        3,
        &[1, 1],
        Some(&[1.0, -1.0, 1.0]),
        None,
        0.0,
        Reduction::Mean,
    );
    assert_close(&[t.item(l).unwrap()], &want, "negative weights");
    // A class of probability 0 (a masked logit, -inf) adds 0 to the others' rows, not NaN; the
    // row whose label it is gets a loss of about f32::MAX, where PyTorch's is inf.
    t.rewind(start).unwrap();
    let lp = t
        .input(&[2, 2], &[f64::NEG_INFINITY, 0.0, -0.5, f64::NEG_INFINITY])
        .unwrap();
    let y = t.labels(&[1, 1]).unwrap();
    let m = NllLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let l = m.forward(&mut t, lp, y).unwrap();
    let got = t.data(l).unwrap().to_vec();
    assert_eq!(got[0], 0.0);
    assert_eq!(got[1], f64::from(f32::MAX));
    // Masked logits through the cross-entropy: finite, and the mean of the row losses.
    let z = t
        .param(
            &[2, 3],
            &[f64::NEG_INFINITY, 1.0, 2.0, 0.5, f64::NEG_INFINITY, 0.0],
        )
        .unwrap();
    let y = t.labels(&[2, 0]).unwrap();
    let m = CrossEntropyLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let rows = m.forward(&mut t, z, y).unwrap();
    let rows = t.data(rows).unwrap().to_vec();
    let want = [
        -(-(1.0f64.exp() + 2.0f64.exp()).ln() + 2.0),
        (0.5f64.exp() + 1.0).ln() - 0.5,
    ];
    assert_close(&rows, &want, "masked logits");
}

#[test]
fn refusals_name_the_problem_and_record_nothing() {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let z = t.param(&[2, 3], &[0.0; 6]).unwrap();
    let y = t.labels(&[0, 2]).unwrap();
    let p = t.param(&[2, 2], &[0.5; 4]).unwrap();
    let q = t.param(&[4], &[0.5; 4]).unwrap();
    let w2 = t.param(&[2], &[1.0; 2]).unwrap();
    let bad_label = t.labels(&[0, 3]).unwrap();
    let fraction = t.input(&[2], &[0.0, 1.5]).unwrap();
    let (nodes, used) = (t.nodes_used(), t.used());
    let ce = |reduction, weight| CrossEntropyLoss {
        weight,
        reduction,
        ..Default::default()
    };
    let shape = |e: Error| matches!(e, Error::ShapeMismatch { .. });
    let invalid =
        |e: Error, word: &str| matches!(e, Error::InvalidArgument { what } if what.contains(word));
    for r in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        // Weights not [C], labels outside the classes or not whole.
        let e = ce(r, Some(w2)).forward(&mut t, z, y).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "cross_entropy weight",
                    ..
                }
            ),
            "{e:?}"
        );
        for labels in [bad_label, fraction] {
            let e = ce(r, None).forward(&mut t, z, labels).unwrap_err();
            assert!(matches!(e, Error::IndexOutOfRange { .. }), "{r:?} {e:?}");
            let e = NllLoss {
                reduction: r,
                ..Default::default()
            }
            .forward(&mut t, z, labels)
            .unwrap_err();
            assert!(matches!(e, Error::IndexOutOfRange { .. }), "{r:?} {e:?}");
        }
        // Shapes that disagree.
        for e in [
            MseLoss { reduction: r }.forward(&mut t, p, q).unwrap_err(),
            L1Loss { reduction: r }.forward(&mut t, p, q).unwrap_err(),
            HuberLoss {
                reduction: r,
                ..Default::default()
            }
            .forward(&mut t, p, q)
            .unwrap_err(),
            SmoothL1Loss {
                reduction: r,
                ..Default::default()
            }
            .forward(&mut t, p, q)
            .unwrap_err(),
            BceLoss {
                reduction: r,
                ..Default::default()
            }
            .forward(&mut t, p, q)
            .unwrap_err(),
            BceWithLogitsLoss {
                reduction: r,
                ..Default::default()
            }
            .forward(&mut t, p, q)
            .unwrap_err(),
            KlDivLoss {
                reduction: r,
                log_target: false,
            }
            .forward(&mut t, p, q)
            .unwrap_err(),
            ce(r, None).forward_probs(&mut t, z, p).unwrap_err(),
        ] {
            assert!(shape(e), "{r:?} {e:?}");
        }
        // Thresholds.
        for delta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = HuberLoss {
                delta,
                reduction: r,
            }
            .forward(&mut t, p, p)
            .unwrap_err();
            assert!(invalid(e, "delta"), "{e:?}");
        }
        for beta in [-1.0, f32::NAN, 1e-40] {
            let e = SmoothL1Loss { beta, reduction: r }
                .forward(&mut t, p, p)
                .unwrap_err();
            assert!(invalid(e, "beta"), "{e:?}");
        }
        // Smoothing outside [0, 1]; an ignore_index of a class with probabilities.
        let m = CrossEntropyLoss {
            label_smoothing: 1.5,
            reduction: r,
            ..Default::default()
        };
        assert!(invalid(
            m.forward(&mut t, z, y).unwrap_err(),
            "label_smoothing"
        ));
        assert!(invalid(
            m.forward_probs(&mut t, z, z).unwrap_err(),
            "label_smoothing"
        ));
        for ignore_index in [0, 7] {
            let m = CrossEntropyLoss {
                ignore_index: Some(ignore_index),
                reduction: r,
                ..Default::default()
            };
            assert!(invalid(
                m.forward_probs(&mut t, z, z).unwrap_err(),
                "ignore_index"
            ));
        }
        assert_eq!((t.nodes_used(), t.used()), (nodes, used), "{r:?}");
    }
    // batchmean: the KL divergence's only, as PyTorch's (valid inputs otherwise).
    let r = Reduction::BatchMean;
    for e in [
        MseLoss { reduction: r }.forward(&mut t, p, p).unwrap_err(),
        L1Loss { reduction: r }.forward(&mut t, p, p).unwrap_err(),
        HuberLoss {
            reduction: r,
            ..Default::default()
        }
        .forward(&mut t, p, p)
        .unwrap_err(),
        SmoothL1Loss {
            reduction: r,
            ..Default::default()
        }
        .forward(&mut t, p, p)
        .unwrap_err(),
        SmoothL1Loss {
            reduction: r,
            beta: 0.0,
        }
        .forward(&mut t, p, p)
        .unwrap_err(),
        BceLoss {
            reduction: r,
            ..Default::default()
        }
        .forward(&mut t, p, p)
        .unwrap_err(),
        BceWithLogitsLoss {
            reduction: r,
            ..Default::default()
        }
        .forward(&mut t, p, p)
        .unwrap_err(),
        ce(r, None).forward(&mut t, z, y).unwrap_err(),
        ce(r, None).forward_probs(&mut t, z, z).unwrap_err(),
        NllLoss {
            reduction: r,
            ..Default::default()
        }
        .forward(&mut t, z, y)
        .unwrap_err(),
    ] {
        assert!(invalid(e, "batchmean"), "{e:?}");
    }
    assert_eq!((t.nodes_used(), t.used()), (nodes, used));
    // A negative ignore_index with probabilities does nothing, as PyTorch's default -100.
    let with = CrossEntropyLoss {
        ignore_index: Some(-100),
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let a = with.forward_probs(&mut t, z, z).unwrap();
    let b = ce(Reduction::Sum, None)
        .forward_probs(&mut t, z, z)
        .unwrap();
    assert_eq!(t.item(a).unwrap(), t.item(b).unwrap());
}

#[test]
fn one_hot_and_arange() {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let nodes = t.nodes_used();
    for n in [1usize, 2, 3, 5, 8, 13, 64, 100] {
        let a = t.arange(n).unwrap();
        let want: Vec<f64> = (0..n).map(|i| i as f64).collect();
        assert_eq!(t.data(a).unwrap(), &want[..]);
    }
    assert!(t.arange(0).is_err());
    assert!(t.arange((1 << 24) + 1).is_err());
    // Labels of rank 2 (and an ignored one) to rank 3.
    let y = t.input(&[2, 2], &[0.0, 2.0, -16_777_216.0, 1.0]).unwrap();
    assert_eq!(t.nodes_used(), nodes + 1);
    let h = t.one_hot(y, 3).unwrap();
    assert_eq!(h.shape().dims(), &[2, 2, 3]);
    let want = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    assert_eq!(t.data(h).unwrap(), &want[..]);
    // No node: nothing to differentiate.
    assert_eq!(t.nodes_used(), nodes + 1);
    // A scalar label gives one row of [C]; labels of rank 3 give rank 4; rank 4 is refused.
    let one = t.input(&[], &[2.0]).unwrap();
    let h = t.one_hot(one, 4).unwrap();
    assert_eq!(
        (h.shape().dims(), t.data(h).unwrap()),
        (&[4u32][..], &[0.0, 0.0, 1.0, 0.0][..])
    );
    let cube = t.input(&[2, 1, 2], &[1.0, 0.0, 0.0, 1.0]).unwrap();
    let h = t.one_hot(cube, 2).unwrap();
    assert_eq!(h.shape().dims(), &[2, 1, 2, 2]);
    assert_eq!(
        t.data(h).unwrap(),
        &[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0][..]
    );
    let four = t.input(&[1, 1, 1, 1], &[0.0]).unwrap();
    assert!(matches!(
        t.one_hot(four, 2),
        Err(Error::InvalidShape { .. })
    ));
    let bad = t.input(&[2], &[0.0, 3.0]).unwrap();
    let used = t.used();
    assert!(matches!(
        t.one_hot(bad, 3),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert_eq!(t.used(), used);
}

/// The node counts the docs state, and `arange`'s arena.
#[test]
fn node_counts_as_documented() {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let z = t.param(&[2, 3], &[0.0; 6]).unwrap();
    let y = t.labels(&[0, 2]).unwrap();
    let nodes = |t: &mut T<'_>, f: &dyn Fn(&mut T<'_>) -> mote::Result<Var>| {
        let n = t.nodes_used();
        f(t).unwrap();
        t.nodes_used() - n
    };
    assert_eq!(nodes(&mut t, &|t| t.nll_loss(z, y, -100)), 14);
    assert_eq!(
        nodes(&mut t, &|t| t.cross_entropy_ignore(z, y, -100, 0.1)),
        5
    );
    assert_eq!(
        nodes(&mut t, &|t| t.reduce_terms(z, Reduction::BatchMean)),
        3
    );
    assert_eq!(nodes(&mut t, &|t| t.kl_div_batchmean(z, z, false)), 7);
    assert_eq!(nodes(&mut t, &|t| t.kl_div_batchmean(z, z, true)), 6);
    assert_eq!(nodes(&mut t, &|t| t.cross_entropy_probs(z, z)), 5);
    assert_eq!(nodes(&mut t, &|t| t.arange(5)), 0);
    assert_eq!(nodes(&mut t, &|t| t.one_hot(y, 3)), 0);
    // arange(n): 3 m - 2 floats for m the power of two at or above n, n more when n is not
    // one (its final cut): under 7 n.
    for n in [1usize, 2, 3, 4, 5, 8, 9, 100, 1000] {
        let u = t.used();
        t.arange(n).unwrap();
        let m = n.next_power_of_two();
        let cut = if m == n { 0 } else { n };
        assert_eq!(t.used() - u, 3 * m - 2 + cut, "arange({n})");
        assert!(t.used() - u < 7 * n);
    }
}
