//! The planner is exact: `plan::mlp` (a const fn), a dry run on the `Meter` backend and a real
//! step on the reference backend agree, for any layer sizes, batch, loss and optimizer.

use mote::plan::{self, Loss, Opt};
use mote::{
    Adagrad, AdagradConfig, Adam, AdamConfig, Backend, Cpu, HostBackend, Linear, Module, Optimizer,
    Relu, Result, RmsProp, RmsPropConfig, Rng, Sgd, SgdConfig, Tape,
};
use proptest::prelude::*;

/// Every optimizer the planner knows, with every setting that changes its state.
const OPTS: [Opt; 9] = [
    Opt::Sgd,
    Opt::SgdMomentum,
    Opt::Adam,
    Opt::AmsGrad,
    Opt::RmsProp {
        momentum: false,
        centered: false,
    },
    Opt::RmsProp {
        momentum: true,
        centered: false,
    },
    Opt::RmsProp {
        momentum: false,
        centered: true,
    },
    Opt::RmsProp {
        momentum: true,
        centered: true,
    },
    Opt::Adagrad,
];

/// One standard training step of an MLP: what `plan::mlp` describes.
fn step<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    sizes: &[usize],
    batch: usize,
    loss: Loss,
    opt: Opt,
) -> Result<f64> {
    let align = tape.backend().align();
    let aligned = |v: mote::Var| assert_eq!(v.offset() % align, 0, "an unaligned allocation");
    let mut rng = Rng::new(5);
    let mut layers = Vec::new();
    for w in sizes.windows(2) {
        layers.push(Linear::new(tape, w[0], w[1], &mut rng)?);
    }
    let (mut adam, mut sgd, mut rms, mut ada) = (None, None, None, None);
    match opt {
        Opt::Adam => adam = Some(Adam::new(tape, AdamConfig::default())?),
        Opt::AmsGrad => {
            let config = AdamConfig {
                amsgrad: true,
                ..AdamConfig::default()
            };
            adam = Some(Adam::new(tape, config)?)
        }
        Opt::Sgd => sgd = Some(Sgd::new(tape, SgdConfig::default())?),
        Opt::SgdMomentum => {
            sgd = Some(Sgd::new(
                tape,
                SgdConfig {
                    momentum: 0.9,
                    ..SgdConfig::default()
                },
            )?)
        }
        Opt::RmsProp { momentum, centered } => {
            let config = RmsPropConfig {
                momentum: if momentum { 0.9 } else { 0.0 },
                centered,
                ..RmsPropConfig::default()
            };
            rms = Some(RmsProp::new(tape, config)?)
        }
        Opt::Adagrad => ada = Some(Adagrad::new(tape, AdagradConfig::default())?),
    }
    let start = tape.mark();
    let mut last = 0.0;
    for _ in 0..2 {
        tape.rewind(start)?;
        let (inp, out) = (sizes[0], *sizes.last().unwrap());
        let x = tape.full(&[batch, inp], B::Elem::from_f64(0.5))?;
        let t = match loss {
            Loss::CrossEntropy => tape.labels(&vec![0; batch])?,
            _ => tape.full(&[batch, out], B::Elem::from_f64(0.25))?,
        };
        let mut h = x;
        aligned(x);
        aligned(t);
        let mut acts = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            h = l.forward(tape, h)?;
            acts.push(h);
            if i + 1 < layers.len() {
                h = Relu.forward(tape, h)?;
                acts.push(h);
            }
        }
        let l = match loss {
            Loss::Mse => tape.mse(h, t)?,
            Loss::BceWithLogits => tape.bce_with_logits(h, t)?,
            Loss::CrossEntropy => tape.cross_entropy(h, t)?,
            Loss::L1 => tape.l1_loss(h, t)?,
            Loss::CrossEntropyProbs => tape.cross_entropy_probs(h, t)?,
            Loss::Huber => tape.huber_loss(h, t, 1.0)?,
            Loss::SmoothL1 => tape.smooth_l1_loss(h, t, 0.5)?,
        };
        aligned(l);
        tape.backward(l)?;
        for &a in &acts {
            aligned(a);
            // The backward's activation gradients (allocated after the loss's scalar).
            if let Some(g) = tape.grad(a)? {
                assert_eq!(g.offset % align, 0, "an unaligned activation gradient");
            }
        }
        for p in tape.params().collect::<Vec<_>>() {
            aligned(p);
            let g = tape.grad(p)?.expect("a trainable parameter has a gradient");
            assert_eq!(g.offset % align, 0, "an unaligned gradient");
            for k in 0..3 {
                if let Some(s) = tape.param_state(p, k)? {
                    assert_eq!(s.offset % align, 0, "an unaligned optimizer buffer");
                }
            }
        }
        if let Some(a) = adam.as_mut() {
            a.step(tape)?;
        }
        if let Some(s) = sgd.as_mut() {
            s.step(tape)?;
        }
        if let Some(o) = rms.as_mut() {
            o.step(tape)?;
        }
        if let Some(o) = ada.as_mut() {
            o.step(tape)?;
        }
        last = tape.item(l)?.to_f64();
    }
    Ok(last)
}

use mote::Float;

/// Every parameter's values, then its optimizer buffers (found through `Tape::param_state`).
fn params_and_state(tape: &Tape<Cpu<f32>, 64>) -> Vec<f32> {
    let mut out = Vec::new();
    for p in tape.params() {
        out.extend_from_slice(tape.data(p).unwrap());
        for k in 0..3 {
            if let Some(v) = tape.param_state(p, k).unwrap() {
                let s = tape.backend().storage();
                out.extend_from_slice(&s[v.offset..v.offset + v.len()]);
            }
        }
        assert_eq!(tape.param_state(p, 3).unwrap(), None);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn plan_dry_run_and_real_step_agree(
        sizes in prop::collection::vec(1usize..=12, 2..=5),
        batch in 1usize..=9,
        loss in prop::sample::select(vec![
            Loss::Mse,
            Loss::BceWithLogits,
            Loss::CrossEntropy,
            Loss::L1,
            Loss::CrossEntropyProbs,
            Loss::Huber,
            Loss::SmoothL1,
        ]),
        opt in prop::sample::select(OPTS.to_vec()),
    ) {
        let planned = plan::mlp(&sizes, batch, loss, opt);
        let measured = plan::measure::<f32, 64>(|t| step(t, &sizes, batch, loss, opt).map(|_| ())).unwrap();
        prop_assert_eq!(planned, measured);
        // The real thing fits in exactly that much, and not in one float less.
        let mut mem = vec![0f32; planned];
        let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
        step(&mut tape, &sizes, batch, loss, opt).unwrap();
        prop_assert_eq!(tape.high_water(), planned);
        let mut mem = vec![0f32; planned - 1];
        let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
        prop_assert!(step(&mut tape, &sizes, batch, loss, opt).is_err());
    }

    /// A backend that aligns its allocations (as the CUDA backend does): every tensor and
    /// gradient starts at a multiple of the alignment, a dry run on an aligned `Meter` still
    /// measures the exact arena (padding included), and the results are the unaligned ones.
    #[test]
    fn aligned_allocations_pad_and_change_no_result(
        sizes in prop::collection::vec(1usize..=12, 2..=4),
        batch in 1usize..=9,
        loss in prop::sample::select(vec![Loss::Mse, Loss::CrossEntropy, Loss::Huber]),
        opt in prop::sample::select(OPTS.to_vec()),
        align in prop::sample::select(vec![2usize, 4, 64]),
    ) {
        let planned = plan::mlp(&sizes, batch, loss, opt);
        let mut mem = vec![0f32; planned];
        let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
        let plain = step(&mut tape, &sizes, batch, loss, opt).unwrap();
        let params = params_and_state(&tape);

        let measured = plan::measure_aligned::<f32, 64>(align, |t| {
            step(t, &sizes, batch, loss, opt).map(|_| ())
        })
        .unwrap();
        prop_assert!(measured >= planned);
        let mut mem = vec![0f32; measured];
        let mut tape = Tape::<Cpu<f32>, 64>::with_backend(Cpu::aligned(&mut mem, align));
        let padded = step(&mut tape, &sizes, batch, loss, opt).unwrap();
        prop_assert_eq!(tape.high_water(), measured);
        prop_assert_eq!(plain.to_bits(), padded.to_bits());
        prop_assert_eq!(params, params_and_state(&tape));
        // One float less fails with a clear error (no panic), padding counted.
        let mut mem = vec![0f32; measured - 1];
        let mut tape = Tape::<Cpu<f32>, 64>::with_backend(Cpu::aligned(&mut mem, align));
        let err = step(&mut tape, &sizes, batch, loss, opt).unwrap_err();
        prop_assert!(matches!(err, mote::Error::ArenaFull { .. }), "{:?}", err);
    }
}

/// A compile-time budget: the arena of the seed model is computed in a const and checked there.
#[test]
fn const_planning_sizes_a_static_arena() {
    const FLOATS: usize = plan::mlp(&[8, 10, 1], 64, Loss::Mse, Opt::Adam);
    const _: () = assert!(FLOATS * 4 < 64 * 1024, "the seed model must fit in 64 KB");
    static_assertions(FLOATS);
    fn static_assertions(n: usize) {
        // params 8*10+10+10*1+1 = 101, x3 for value+grad... (value, grad, m, v) = 4 x 101
        assert_eq!(plan::mlp_params(&[8, 10, 1], Opt::Adam), 404);
        assert_eq!(n, 404 + 64 * 8 + 64 + 2 * (1 + 64 * 10 * 2 + 64));
    }
}

/// A dry run computes nothing: initialisers and input generators are not called on `Meter`,
/// so measuring a large model costs no per-element work, and the arena it measures is the same.
#[test]
fn a_dry_run_calls_no_initialiser() {
    let mut calls = 0usize;
    let mut tape = mote::Tape::<mote::Meter<f32>, 8>::with_backend(mote::Meter::default());
    tape.param_with(&[1 << 20], || {
        calls += 1;
        0.0
    })
    .unwrap();
    tape.input_with(&[3, 5], || {
        calls += 1;
        0.0
    })
    .unwrap();
    assert_eq!(calls, 0);
    assert_eq!(tape.used(), 2 * (1 << 20) + 15);
}
