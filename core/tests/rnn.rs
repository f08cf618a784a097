//! `nn::rnn`'s LSTM and GRU against PyTorch's equations written out in f64 (`nn.LSTM`,
//! `nn.GRU`, `batch_first=True`), gradient checks through time, and refusals.

use mote::gradcheck::{check, GradCheck};
use mote::nn::rnn::{Gru, Lstm, RecurrentWeights};
use mote::{Cpu, Error, Module, Rng, Tape, Var};
use proptest::prelude::*;

type T<'m> = Tape<Cpu<'m, f64>, 1024>;

fn draw(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W v + b` for one row `v`.
fn affine(w: &[f64], b: Option<&[f64]>, v: &[f64], rows: usize) -> Vec<f64> {
    let cols = v.len();
    (0..rows)
        .map(|r| b.map_or(0.0, |b| b[r]) + (0..cols).map(|c| w[r * cols + c] * v[c]).sum::<f64>())
        .collect()
}

/// The weights read back: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
struct Weights {
    wi: Vec<f64>,
    wh: Vec<f64>,
    bi: Option<Vec<f64>>,
    bh: Option<Vec<f64>>,
}

impl Weights {
    fn read(t: &T<'_>, w: &RecurrentWeights) -> Self {
        let read = |v: Var| t.data(v).unwrap().to_vec();
        Weights {
            wi: read(w.weight_ih),
            wh: read(w.weight_hh),
            bi: w.bias_ih.map(read),
            bh: w.bias_hh.map(read),
        }
    }

    /// The input and hidden projections of one row: `[gates H]` each.
    fn project(&self, x: &[f64], h: &[f64], gates: usize) -> (Vec<f64>, Vec<f64>) {
        let rows = gates * h.len();
        (
            affine(&self.wi, self.bi.as_deref(), x, rows),
            affine(&self.wh, self.bh.as_deref(), h, rows),
        )
    }
}

/// PyTorch's LSTM over `x` `[N, L, In]` from `(h, c)` `[N, H]`: the outputs `[N, L, H]` and
/// the last `(h, c)`.
fn lstm_ref(
    w: &Weights,
    x: &[f64],
    (n, l, i, hh): (usize, usize, usize, usize),
    mut h: Vec<f64>,
    mut c: Vec<f64>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; n * l * hh];
    for b in 0..n {
        for k in 0..l {
            let xs = &x[(b * l + k) * i..(b * l + k + 1) * i];
            let (px, ph) = w.project(xs, &h[b * hh..(b + 1) * hh], 4);
            for j in 0..hh {
                let g = |q: usize| px[q * hh + j] + ph[q * hh + j];
                let (ig, fg, gg, og) = (sigmoid(g(0)), sigmoid(g(1)), g(2).tanh(), sigmoid(g(3)));
                c[b * hh + j] = fg * c[b * hh + j] + ig * gg;
                out[(b * l + k) * hh + j] = og * c[b * hh + j].tanh();
            }
            h[b * hh..(b + 1) * hh].copy_from_slice(&out[(b * l + k) * hh..(b * l + k + 1) * hh]);
        }
    }
    (out, h, c)
}

/// PyTorch's GRU over `x` `[N, L, In]` from `h` `[N, H]`: the outputs and the last `h`.
fn gru_ref(
    w: &Weights,
    x: &[f64],
    (n, l, i, hh): (usize, usize, usize, usize),
    mut h: Vec<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; n * l * hh];
    for b in 0..n {
        for k in 0..l {
            let xs = &x[(b * l + k) * i..(b * l + k + 1) * i];
            let (px, ph) = w.project(xs, &h[b * hh..(b + 1) * hh], 3);
            for j in 0..hh {
                let r = sigmoid(px[j] + ph[j]);
                let z = sigmoid(px[hh + j] + ph[hh + j]);
                let nn = (px[2 * hh + j] + r * ph[2 * hh + j]).tanh();
                out[(b * l + k) * hh + j] = (1.0 - z) * nn + z * h[b * hh + j];
            }
            h[b * hh..(b + 1) * hh].copy_from_slice(&out[(b * l + k) * hh..(b * l + k + 1) * hh]);
        }
    }
    (out, h)
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn lstm_and_gru_match_pytorch() {
    let mut rng = Rng::new(3);
    for case in 0..24 {
        let (n, l, i, hh) = (1 + case % 3, 1 + case % 9, 1 + case % 4, 1 + (case / 2) % 5);
        let bias = case % 5 != 4;
        let given = case % 2 == 0;
        let mut mem = vec![0.0f64; 1 << 17];
        let mut t = T::new(&mut mem);
        let lstm = Lstm::with_bias(&mut t, i, hh, bias, &mut rng).unwrap();
        let gru = Gru::with_bias(&mut t, i, hh, bias, &mut rng).unwrap();
        // PyTorch's initialisation: U(-1/sqrt(H), 1/sqrt(H)).
        let k = 1.0 / (hh as f64).sqrt();
        let mut every = Vec::new();
        lstm.visit_params(&mut |p| every.extend(t.data(p).unwrap().to_vec()));
        gru.visit_params(&mut |p| every.extend(t.data(p).unwrap().to_vec()));
        assert!(every.iter().all(|v| v.abs() <= k));
        // Drawn over the whole range (the extremes near the bound: 28 or more draws each).
        let most = every.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(most > 0.8 * k, "{most} vs {k}");
        assert_eq!(every.len(), (4 + 3) * hh * (i + hh + 2 * usize::from(bias)));
        let x = draw(&mut rng, n * l * i);
        let (h0, c0) = if given {
            (draw(&mut rng, n * hh), draw(&mut rng, n * hh))
        } else {
            (vec![0.0; n * hh], vec![0.0; n * hh])
        };
        let vx = t.input(&[n, l, i], &x).unwrap();
        let state = given.then(|| {
            (
                t.input(&[n, hh], &h0).unwrap(),
                t.input(&[n, hh], &c0).unwrap(),
            )
        });
        let (y, (h, c)) = lstm.run(&mut t, vx, state).unwrap();
        let wl = Weights::read(&t, &lstm.weights);
        let (wy, wh, wc) = lstm_ref(&wl, &x, (n, l, i, hh), h0.clone(), c0);
        close(
            t.data(y).unwrap(),
            &wy,
            &format!("lstm output, case {case}"),
        );
        close(t.data(h).unwrap(), &wh, "lstm h_n");
        close(t.data(c).unwrap(), &wc, "lstm c_n");
        let (gy, gh) = gru.run(&mut t, vx, state.map(|s| s.0)).unwrap();
        let wg = Weights::read(&t, &gru.weights);
        let (wy, wh) = gru_ref(&wg, &x, (n, l, i, hh), h0);
        close(
            t.data(gy).unwrap(),
            &wy,
            &format!("gru output, case {case}"),
        );
        close(t.data(gh).unwrap(), &wh, "gru h_n");
        // Module::forward is run's output; a step is the layer over one step.
        let f = lstm.forward(&mut t, vx).unwrap();
        let r = lstm.run(&mut t, vx, None).unwrap().0;
        assert_eq!(t.data(f).unwrap().to_vec(), t.data(r).unwrap().to_vec());
        // One step from a drawn state (PyTorch's LSTMCell and GRUCell) against the equations
        // over each batch's first row.
        let first = t.slice(vx, 1, 0, 1).unwrap();
        let first = t.reshape(first, &[n, i]).unwrap();
        let (h1, c1) = (draw(&mut rng, n * hh), draw(&mut rng, n * hh));
        let (vh, vc) = (
            t.input(&[n, hh], &h1).unwrap(),
            t.input(&[n, hh], &c1).unwrap(),
        );
        let rows: Vec<f64> = (0..n)
            .flat_map(|b| x[b * l * i..b * l * i + i].to_vec())
            .collect();
        let (sh, sc) = lstm.step(&mut t, first, (vh, vc)).unwrap();
        let (_, wh1, wc1) = lstm_ref(&wl, &rows, (n, 1, i, hh), h1.clone(), c1);
        close(t.data(sh).unwrap(), &wh1, "lstm step h");
        close(t.data(sc).unwrap(), &wc1, "lstm step c");
        let gs = gru.step(&mut t, first, vh).unwrap();
        let (_, wg1) = gru_ref(&wg, &rows, (n, 1, i, hh), h1);
        close(t.data(gs).unwrap(), &wg1, "gru step");
    }
}

#[test]
fn refusals_record_nothing() {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let mut rng = Rng::new(1);
    for (i, h) in [(0, 3), (3, 0)] {
        assert!(matches!(
            Lstm::new(&mut t, i, h, &mut rng),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Gru::new(&mut t, i, h, &mut rng),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert_eq!((t.nodes_used(), t.used()), (0, 0));
    let lstm = Lstm::new(&mut t, 3, 4, &mut rng).unwrap();
    let gru = Gru::new(&mut t, 3, 4, &mut rng).unwrap();
    let wide = t.input(&[2, 5, 4], &[0.0; 40]).unwrap();
    let flat = t.input(&[2, 3], &[0.0; 6]).unwrap();
    let ok = t.input(&[2, 5, 3], &[0.0; 30]).unwrap();
    let bad_state = t.input(&[3, 4], &[0.0; 12]).unwrap();
    let good_state = t.input(&[2, 4], &[0.0; 8]).unwrap();
    let at = (t.nodes_used(), t.used());
    let shape = |r: mote::Result<Var>| matches!(r, Err(Error::ShapeMismatch { .. }));
    assert!(shape(lstm.forward(&mut t, wide)));
    assert!(shape(lstm.forward(&mut t, flat)));
    assert!(shape(gru.forward(&mut t, wide)));
    assert!(shape(
        lstm.run(&mut t, ok, Some((bad_state, good_state)))
            .map(|r| r.0)
    ));
    assert!(shape(
        lstm.run(&mut t, ok, Some((good_state, bad_state)))
            .map(|r| r.0)
    ));
    assert!(shape(gru.run(&mut t, ok, Some(bad_state)).map(|r| r.0)));
    assert!(shape(
        lstm.step(&mut t, ok, (good_state, good_state)).map(|r| r.0)
    ));
    assert!(shape(gru.step(&mut t, flat, bad_state)));
    // A GRU's weights in an LSTM: the gates do not fit.
    let odd = Lstm {
        weights: gru.weights,
    };
    assert!(shape(odd.forward(&mut t, ok)));
    assert_eq!((t.nodes_used(), t.used()), at);
    // A bias of the wrong size, a hidden weight that is not [4H, H]; a cell state of the
    // wrong shape in a step.
    let short_bias = t.param(&[15], &[0.0; 15]).unwrap();
    let wide_hh = t.param(&[16, 5], &[0.0; 80]).unwrap();
    let first = t.slice(ok, 1, 0, 1).unwrap();
    let first = t.reshape(first, &[2, 3]).unwrap();
    let at = (t.nodes_used(), t.used());
    let w = lstm.weights;
    for weights in [
        RecurrentWeights {
            bias_ih: Some(short_bias),
            ..w
        },
        RecurrentWeights {
            bias_hh: Some(short_bias),
            ..w
        },
        RecurrentWeights {
            weight_hh: wide_hh,
            ..w
        },
    ] {
        assert!(Lstm { weights }.forward(&mut t, ok).is_err());
    }
    assert!(shape(
        lstm.step(&mut t, first, (good_state, bad_state))
            .map(|r| r.0)
    ));
    assert_eq!((t.nodes_used(), t.used()), at);
}

/// Nodes a sequence records, as the module docs state: 17 a step for the LSTM, 19 for the GRU,
/// 2 more to join the outputs (a reshape and, but for the first, one join), and the zero
/// state.
#[test]
fn nodes_per_step() {
    let mut mem = vec![0.0f64; 1 << 16];
    let mut t = T::new(&mut mem);
    let mut rng = Rng::new(2);
    let lstm = Lstm::new(&mut t, 3, 4, &mut rng).unwrap();
    let gru = Gru::new(&mut t, 3, 4, &mut rng).unwrap();
    let start = t.mark();
    let mut nodes = |m: &dyn Fn(&mut T<'_>, Var) -> Var, l: usize| {
        t.rewind(start).unwrap();
        let x = t.input(&[2, l, 3], &vec![0.1; 2 * l * 3]).unwrap();
        let before = t.nodes_used();
        m(&mut t, x);
        t.nodes_used() - before
    };
    // Lengths whose joins leave one run and several (7 = 4 + 2 + 1, 13 = 8 + 4 + 1).
    for l in [1usize, 7, 8, 13] {
        assert_eq!(
            nodes(&|t, x| lstm.forward(t, x).unwrap(), l),
            19 * l + 1,
            "lstm, {l}"
        );
        assert_eq!(
            nodes(&|t, x| gru.forward(t, x).unwrap(), l),
            21 * l + 1,
            "gru, {l}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Gradients through time with respect to the inputs, the initial state and every weight.
    #[test]
    fn gradients_through_time(n in 1usize..=2, l in 1usize..=5, i in 1usize..=3, hh in 1usize..=3, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (x, h0, c0) = (draw(&mut rng, n * l * i), draw(&mut rng, n * hh), draw(&mut rng, n * hh));
        for gates in [4usize, 3] {
            let (wi, wh, bi, bh) = (draw(&mut rng, gates * hh * i), draw(&mut rng, gates * hh * hh), draw(&mut rng, gates * hh), draw(&mut rng, gates * hh));
            let inputs: [(&[usize], &[f64]); 7] = [
                (&[n, l, i], &x), (&[gates * hh, i], &wi), (&[gates * hh, hh], &wh), (&[gates * hh], &bi), (&[gates * hh], &bh), (&[n, hh], &h0), (&[n, hh], &c0),
            ];
            let k = if gates == 4 { 7 } else { 6 };
            let mut mem = vec![0.0f64; 1 << 17];
            let report = check::<1024>(&mut mem, &inputs[..k], GradCheck::default(), |t, v| {
                // With biases, or without (their inputs then unused: gradient 0).
                let biased = seed % 2 == 0;
                let weights = RecurrentWeights {
                    weight_ih: v[1],
                    weight_hh: v[2],
                    bias_ih: biased.then_some(v[3]),
                    bias_hh: biased.then_some(v[4]),
                };
                if gates == 4 {
                    let (y, (h, c)) = Lstm { weights }.run(t, v[0], Some((v[5], v[6])))?;
                    // Every output counts: the sequence, the last h and c.
                    let s = t.sum(y)?;
                    let h = t.sum(h)?;
                    let c = t.sum(c)?;
                    let s = t.add(s, h)?;
                    t.add(s, c)
                } else {
                    let (y, h) = Gru { weights }.run(t, v[0], Some(v[5]))?;
                    let s = t.sum(y)?;
                    let h = t.sum(h)?;
                    t.add(s, h)
                }
            }).unwrap();
            prop_assert!(report.passed(), "gates {gates}: {report:?}");
        }
    }
}

/// `x` `[N, L, F]` with each sequence's steps reversed.
fn reversed(x: &[f64], (n, l, f): (usize, usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for k in 0..l {
            let (from, to) = ((b * l + k) * f, (b * l + (l - 1 - k)) * f);
            out[to..to + f].copy_from_slice(&x[from..from + f]);
        }
    }
    out
}

/// The reverse direction (the layer over the reversed sequence, its outputs reversed back) and
/// PyTorch's bidirectional layers (both directions' outputs joined along the features), at
/// every length 1 to 19 (the pairwise joins in reverse order); their gradients.
#[test]
fn bidirectional_layers_match_pytorch() {
    use mote::nn::rnn::Bidirectional;
    let mut rng = Rng::new(23);
    for l in 1..20 {
        let (n, i, hh) = (1 + l % 2, 2 + l % 3, 1 + l % 4);
        let mut mem = vec![0.0f64; 1 << 18];
        let mut t = Tape::<Cpu<f64>, 4096>::new(&mut mem);
        let bl = Bidirectional::<Lstm>::new(&mut t, i, hh, &mut rng).unwrap();
        let bg = Bidirectional::<Gru>::new(&mut t, i, hh, &mut rng).unwrap();
        let x = draw(&mut rng, n * l * i);
        let (h0, c0) = (draw(&mut rng, n * hh), draw(&mut rng, n * hh));
        let vx = t.input(&[n, l, i], &x).unwrap();
        let (vh, vc) = (
            t.input(&[n, hh], &h0).unwrap(),
            t.input(&[n, hh], &c0).unwrap(),
        );
        let zero = vec![0.0; n * hh];
        let rx = reversed(&x, (n, l, i));
        // LSTM: forward from zeros, reverse from (h0, c0).
        let zeros = t.full(&[n, hh], 0.0).unwrap();
        let (y, [(hf, cf), (hr, cr)]) = bl
            .run(&mut t, vx, Some([(zeros, zeros), (vh, vc)]))
            .unwrap();
        let read = |t: &Tape<Cpu<f64>, 4096>, w: &RecurrentWeights| {
            let r = |v: Var| t.data(v).unwrap().to_vec();
            Weights {
                wi: r(w.weight_ih),
                wh: r(w.weight_hh),
                bi: w.bias_ih.map(r),
                bh: w.bias_hh.map(r),
            }
        };
        let (of, hf_w, cf_w) = lstm_ref(
            &read(&t, &bl.forward.weights),
            &x,
            (n, l, i, hh),
            zero.clone(),
            zero.clone(),
        );
        let (or, hr_w, cr_w) = lstm_ref(
            &read(&t, &bl.reverse.weights),
            &rx,
            (n, l, i, hh),
            h0.clone(),
            c0,
        );
        let or = reversed(&or, (n, l, hh));
        let want: Vec<f64> = (0..n * l)
            .flat_map(|r| [&of[r * hh..(r + 1) * hh], &or[r * hh..(r + 1) * hh]].concat())
            .collect();
        close(
            t.data(y).unwrap(),
            &want,
            &format!("bidirectional lstm, l {l}"),
        );
        for (got, want) in [(hf, &hf_w), (cf, &cf_w), (hr, &hr_w), (cr, &cr_w)] {
            close(t.data(got).unwrap(), want, "bidirectional lstm states");
        }
        // GRU, from zeros both ways (Module::forward).
        let y = bg.forward(&mut t, vx).unwrap();
        let (of, _) = gru_ref(
            &read(&t, &bg.forward.weights),
            &x,
            (n, l, i, hh),
            zero.clone(),
        );
        let (or, _) = gru_ref(&read(&t, &bg.reverse.weights), &rx, (n, l, i, hh), zero);
        let or = reversed(&or, (n, l, hh));
        let want: Vec<f64> = (0..n * l)
            .flat_map(|r| [&of[r * hh..(r + 1) * hh], &or[r * hh..(r + 1) * hh]].concat())
            .collect();
        close(
            t.data(y).unwrap(),
            &want,
            &format!("bidirectional gru, l {l}"),
        );
        // Parameters: the forward direction's, then the reverse's.
        let mut seen = Vec::new();
        bl.visit_params(&mut |p| seen.push(p));
        let mut want = Vec::new();
        bl.forward.visit_params(&mut |p| want.push(p));
        bl.reverse.visit_params(&mut |p| want.push(p));
        assert_eq!(seen, want);
    }
    // Gradients through both directions (input, each direction's input weights).
    let (n, l, i, hh) = (2, 4, 3, 2);
    let (x, wf, wr) = (
        draw(&mut rng, n * l * i),
        draw(&mut rng, 4 * hh * i),
        draw(&mut rng, 4 * hh * i),
    );
    let inputs: [(&[usize], &[f64]); 3] =
        [(&[n, l, i], &x), (&[4 * hh, i], &wf), (&[4 * hh, i], &wr)];
    let mut mem = vec![0.0f64; 1 << 17];
    let report = check::<1024>(&mut mem, &inputs, GradCheck::default(), |t, v| {
        let mut layer = Bidirectional::<Lstm>::new(t, i, hh, &mut Rng::new(3))?;
        layer.forward.weights.weight_ih = v[1];
        layer.reverse.weights.weight_ih = v[2];
        let y = layer.forward(t, v[0])?;
        let y = t.square(y)?;
        t.sum(y)
    })
    .unwrap();
    assert!(report.passed(), "{report:?}");
}
