//! `Tape::backward_with`: every parameter with a gradient is reported once, when its gradient is
//! already final, in reverse order of use; the gradients are those of `Tape::backward`.

use mote::{ConvConfig, Cpu, Rng, Tape, Var};
use proptest::prelude::*;

type T<'a> = Tape<Cpu<'a, f64>, 64>;

/// Runs `build` twice (same seed): once with `backward`, once with `backward_with`. Returns the
/// reports (parameter, its gradient when reported) and the final gradients of both runs.
#[allow(clippy::type_complexity)]
fn both(
    build: impl Fn(&mut T<'_>, &mut Rng) -> (Vec<Var>, Var),
) -> (Vec<(Var, Vec<f64>)>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let grads = |t: &T<'_>, ps: &[Var]| -> Vec<Vec<f64>> {
        ps.iter()
            .map(|&p| {
                let mut g = vec![0.0; p.numel()];
                t.read_grad(p, &mut g).unwrap();
                g
            })
            .collect()
    };
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (ps, loss) = build(&mut t, &mut Rng::new(3));
    t.backward(loss).unwrap();
    let plain = grads(&t, &ps);

    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (ps, loss) = build(&mut t, &mut Rng::new(3));
    let reports = record(&mut t, loss);
    let hooked = grads(&t, &ps);
    (reports, plain, hooked)
}

/// `backward_with` on `loss`: each reported parameter with its gradient at that moment.
fn record(t: &mut T<'_>, loss: Var) -> Vec<(Var, Vec<f64>)> {
    let mut reports = Vec::new();
    t.backward_with(loss, |t, p| {
        let mut g = vec![0.0; p.numel()];
        t.read_grad(p, &mut g)?;
        reports.push((p, g));
        Ok(())
    })
    .unwrap();
    reports
}

fn param(t: &mut T<'_>, rng: &mut Rng, dims: &[usize]) -> Var {
    t.param_with(dims, || rng.uniform(-1.0, 1.0)).unwrap()
}

/// Each reported gradient equals the final one, every graded parameter is reported exactly
/// once, and the hook changes no gradient.
fn check(reports: &[(Var, Vec<f64>)], plain: &[Vec<f64>], hooked: &[Vec<f64>], ps: &[Var]) {
    assert_eq!(plain, hooked, "backward_with changed a gradient");
    assert_eq!(reports.len(), ps.len(), "one report per parameter");
    for (p, g) in reports {
        let k = ps.iter().position(|q| q == p).expect("a known parameter");
        assert_eq!(
            &hooked[k], g,
            "parameter {k} reported before its gradient was final"
        );
    }
    for p in ps {
        assert_eq!(reports.iter().filter(|(q, _)| q == p).count(), 1);
    }
}

#[test]
fn tricky_graph_reports_each_parameter_once_with_its_final_gradient() {
    // A conv, a linear with bias, a weight read twice (tied), a parameter squared (read twice by
    // one node), a parameter nothing reads, and one created after the loss.
    let build = |t: &mut T<'_>, rng: &mut Rng| {
        let x = t
            .input_with(&[2, 1, 4, 4], || rng.uniform(-1.0, 1.0))
            .unwrap();
        let wc = param(t, rng, &[2, 1, 3, 3]);
        let unused = param(t, rng, &[3]);
        let w = param(t, rng, &[4, 8]);
        let b = param(t, rng, &[4]);
        let s = param(t, rng, &[4]);
        let h = t.conv2d(x, wc, None, ConvConfig::default()).unwrap();
        let h = t.reshape(h, &[2, 8]).unwrap();
        let h = t.tanh(h).unwrap();
        let y = t.linear(h, w, Some(b)).unwrap();
        let ss = t.mul(s, s).unwrap();
        let y = t.mul(y, ss).unwrap();
        // The tied use: w again, after the first, on a fresh input.
        let z = t.input_with(&[2, 8], || rng.uniform(-1.0, 1.0)).unwrap();
        let y2 = t.linear(z, w, None).unwrap();
        let y = t.add(y, y2).unwrap();
        let y = t.mul(y, y).unwrap();
        let loss = t.mean(y).unwrap();
        let late = param(t, rng, &[2]);
        (vec![wc, unused, w, b, s, late], loss)
    };
    let (reports, plain, hooked) = both(build);
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (ps, _) = build(&mut t, &mut Rng::new(3));
    check(&reports, &plain, &hooked, &ps);
    // The conv weight is read first, so it is final last among the used ones; the unused and
    // the late parameter come at the end, in creation order.
    let order: Vec<usize> = reports
        .iter()
        .map(|(p, _)| ps.iter().position(|q| q == p).unwrap())
        .collect();
    assert_eq!(order.len(), 6);
    assert_eq!(&order[3..], &[0, 1, 5], "order {order:?}");
    // `w`'s first use comes before `s`'s, so `s` comes before `w`; `b`, read by the same node
    // as `w`, comes right after it.
    let at = |k: usize| order.iter().position(|&o| o == k).unwrap();
    assert!(at(4) < at(2), "order {order:?}");
    assert_eq!(at(3), at(2) + 1, "order {order:?}");
}

/// A lookup table, a concatenated parameter, a loss whose target is a parameter, and a
/// second backward that accumulates into the first's gradients: each report still carries the
/// final (accumulated) gradient.
#[test]
fn gather_concat_loss_target_and_accumulation() {
    let build = |t: &mut T<'_>, rng: &mut Rng| {
        let table = param(t, rng, &[5, 3]);
        let c = param(t, rng, &[2, 2]);
        let w = param(t, rng, &[1, 5]);
        let target = param(t, rng, &[2, 1]);
        let idx = t.labels(&[4, 1]).unwrap();
        let e = t.embedding(table, idx).unwrap();
        let h = t.concat(e, c, 1).unwrap();
        let h = t.tanh(h).unwrap();
        let y = t.linear(h, w, None).unwrap();
        (vec![table, c, w, target], t.mse(y, target).unwrap())
    };
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (ps, loss) = build(&mut t, &mut Rng::new(9));
    t.backward(loss).unwrap();
    let reports = record(&mut t, loss);
    let read = |t: &T<'_>| -> Vec<Vec<f64>> {
        ps.iter()
            .map(|&p| {
                let mut g = vec![0.0; p.numel()];
                t.read_grad(p, &mut g).unwrap();
                g
            })
            .collect()
    };
    let finals = read(&t);
    // Two plain backwards accumulate the same gradients.
    let mut mem2 = vec![0.0f64; 1 << 14];
    let mut t2 = T::new(&mut mem2);
    let (_, loss2) = build(&mut t2, &mut Rng::new(9));
    t2.backward(loss2).unwrap();
    t2.backward(loss2).unwrap();
    check(&reports, &read(&t2), &finals, &ps);
    // The same graph, one backward: the accumulated gradients are twice its.
    let (_, once, _) = both(build_once(build));
    for (a, b) in finals.iter().flatten().zip(once.iter().flatten()) {
        assert!((a - 2.0 * b).abs() < 1e-12, "{a} vs 2 x {b}");
    }
    // The loss's target is read by the loss node, the last: it is reported first.
    assert_eq!(reports[0].0, ps[3]);
}

/// `build` with the seed `both` uses replaced by the one above.
fn build_once(
    build: impl Fn(&mut T<'_>, &mut Rng) -> (Vec<Var>, Var),
) -> impl Fn(&mut T<'_>, &mut Rng) -> (Vec<Var>, Var) {
    move |t, _| build(t, &mut Rng::new(9))
}

#[test]
fn a_failing_hook_stops_the_backward_with_its_error() {
    let mut mem = vec![0.0f64; 1 << 12];
    let mut t = T::new(&mut mem);
    let mut rng = Rng::new(1);
    let w = param(&mut t, &mut rng, &[3, 3]);
    let x = t.input(&[1, 3], &[1.0, 2.0, 3.0]).unwrap();
    let y = t.linear(x, w, None).unwrap();
    let loss = t.sum(y).unwrap();
    let e = t
        .backward_with(loss, |_, _| {
            Err(mote::Error::InvalidArgument { what: "stop" })
        })
        .unwrap_err();
    assert_eq!(e, mote::Error::InvalidArgument { what: "stop" });
}

/// An MLP: `widths`, layer `i > 0` reusing layer 0's weight where `tie[i]` and the shapes
/// allow, parameter `frozen` (if any) frozen after creation. Returns the parameters (weights
/// and biases in creation order), the biases (by layer) and the loss.
fn mlp(
    t: &mut T<'_>,
    rng: &mut Rng,
    widths: &[usize],
    tie: &[bool],
    frozen: usize,
) -> (Vec<Var>, Vec<Var>, Var) {
    let (mut ps, mut ws, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..widths.len() - 1 {
        let (o, n) = (widths[i + 1], widths[i]);
        let w = if i > 0 && tie[i] && (o, n) == (widths[1], widths[0]) {
            ws[0]
        } else {
            let w = param(t, rng, &[o, n]);
            ps.push(w);
            w
        };
        let b = param(t, rng, &[o]);
        ps.push(b);
        ws.push(w);
        bs.push(b);
    }
    // Freezing after creation keeps the gradient region: still reported.
    if let Some(&p) = ps.get(frozen) {
        t.freeze(p).unwrap();
    }
    let mut h = t
        .input_with(&[3, widths[0]], || rng.uniform(-1.0, 1.0))
        .unwrap();
    for (&w, &b) in ws.iter().zip(&bs) {
        h = t.linear(h, w, Some(b)).unwrap();
        h = t.tanh(h).unwrap();
    }
    let loss = t.mean(h).unwrap();
    (ps, bs, loss)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// An MLP of random depth and widths, some layers sharing the first layer's weight, one
    /// parameter frozen: each report carries the final gradient, and the biases come in reverse
    /// layer order (each is final right after its layer's backward).
    #[test]
    fn mlp_reports_in_reverse_layer_order(
        widths in proptest::collection::vec(1usize..4, 2..7),
        tie in proptest::collection::vec(any::<bool>(), 6),
        frozen in 0usize..12,
    ) {
        let build = |t: &mut T<'_>, rng: &mut Rng| {
            let (ps, _, loss) = mlp(t, rng, &widths, &tie, frozen);
            (ps, loss)
        };
        let (reports, plain, hooked) = both(build);
        let mut mem = vec![0.0f64; 1 << 14];
        let mut t = T::new(&mut mem);
        let (ps, bs, _) = mlp(&mut t, &mut Rng::new(3), &widths, &tie, frozen);
        check(&reports, &plain, &hooked, &ps);
        let at: Vec<usize> = bs
            .iter()
            .map(|b| reports.iter().position(|(p, _)| p == b).unwrap())
            .collect();
        for pair in at.windows(2) {
            prop_assert!(pair[0] > pair[1], "bias reports {at:?}");
        }
    }
}
