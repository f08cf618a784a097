//! Whole-step replay (`mote::replay::Replay`): N steps with the recorded step replayed equal N
//! eager steps bit for bit, on the reference backend; and every refusal.

use mote::replay::Replay;
use mote::{
    clip_grad_norm, Adagrad, AdagradConfig, Adam, AdamConfig, Cpu, Error, Linear, Module,
    Optimizer, Relu, RmsProp, RmsPropConfig, Rng, Sgd, SgdConfig, Sigmoid, Tape, Var,
};

type Be<'a> = Replay<Cpu<'a, f32>, 512>;

/// The seed article's loop (8-10-1, ReLU, MSE) with a new batch written each step. `replay_from`:
/// steps before it run eagerly, that step is recorded, later ones are replayed (`None`: all
/// eager). Returns every step's loss and the final parameters.
/// Which optimizer: Adam with weight decay, SGD with Nesterov momentum, Adam with AMSGrad
/// (three state buffers a parameter, the third's offset recorded with each update), centered
/// RMSprop with momentum (three buffers), or Adagrad with a decaying rate (which the replay
/// recomputes each step).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Opt {
    Adam,
    Sgd,
    AmsGrad,
    RmsProp,
    Adagrad,
}

/// An optimizer of any of those kinds.
enum Made {
    Adam(Adam),
    Sgd(Sgd),
    Rms(RmsProp),
    Ada(Adagrad),
}

impl Made {
    fn new(tape: &mut Tape<Be<'_>, 16>, opt: Opt) -> Made {
        match opt {
            Opt::Sgd => {
                let c = SgdConfig {
                    lr: 1e-2,
                    momentum: 0.9,
                    nesterov: true,
                    ..SgdConfig::default()
                };
                Made::Sgd(Sgd::new(tape, c).unwrap())
            }
            Opt::Adam | Opt::AmsGrad => {
                let c = AdamConfig {
                    lr: 1e-2,
                    weight_decay: 1e-3,
                    amsgrad: opt == Opt::AmsGrad,
                    ..AdamConfig::default()
                };
                Made::Adam(Adam::new(tape, c).unwrap())
            }
            Opt::RmsProp => {
                let c = RmsPropConfig {
                    lr: 1e-3,
                    momentum: 0.5,
                    centered: true,
                    weight_decay: 1e-3,
                    ..RmsPropConfig::default()
                };
                Made::Rms(RmsProp::new(tape, c).unwrap())
            }
            Opt::Adagrad => {
                let c = AdagradConfig {
                    lr: 5e-2,
                    lr_decay: 0.01,
                    initial_accumulator_value: 0.1,
                    ..AdagradConfig::default()
                };
                Made::Ada(Adagrad::new(tape, c).unwrap())
            }
        }
    }

    fn step(&mut self, tape: &mut Tape<Be<'_>, 16>) {
        match self {
            Made::Adam(o) => o.step(tape),
            Made::Sgd(o) => o.step(tape),
            Made::Rms(o) => o.step(tape),
            Made::Ada(o) => o.step(tape),
        }
        .unwrap()
    }

    fn replay(&mut self, be: &mut Be<'_>) {
        match self {
            Made::Adam(o) => be.replay_adam(o),
            Made::Sgd(o) => be.replay_sgd(o),
            Made::Rms(o) => be.replay_rmsprop(o),
            Made::Ada(o) => be.replay_adagrad(o),
        }
        .unwrap()
    }

    fn steps(&self) -> u64 {
        match self {
            Made::Adam(o) => o.steps(),
            Made::Sgd(o) => o.steps(),
            Made::Rms(o) => o.steps(),
            Made::Ada(o) => o.steps(),
        }
    }
}

fn seed(steps: usize, replay_from: Option<usize>, opt: Opt) -> (Vec<f32>, Vec<f32>) {
    let mut mem = vec![0f32; 2048];
    let mut tape = Tape::<Be, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut rng = Rng::new(7);
    let model = (
        Linear::new(&mut tape, 8, 10, &mut rng).unwrap(),
        Relu,
        Linear::new(&mut tape, 10, 1, &mut rng).unwrap(),
    );
    // One optimizer per tape: each keeps its state offsets in the parameters' nodes.
    let mut made = Made::new(&mut tape, opt);
    let start = tape.mark();
    // A different batch every step, drawn from a fixed function of the inputs.
    let batch = |rng: &mut Rng| {
        let xs: Vec<f32> = (0..16 * 8).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let ys: Vec<f32> = xs.chunks(8).map(|r| 0.5 * r[0] - r[1] * r[2]).collect();
        (xs, ys)
    };
    let mut losses = Vec::new();
    let mut handles: Option<(Var, Var, Var)> = None;
    for i in 0..steps {
        let (xs, ys) = batch(&mut rng);
        if replay_from.is_some_and(|r| i > r) {
            let (x, y, loss) = handles.unwrap();
            tape.write(x, &xs).unwrap();
            tape.write(y, &ys).unwrap();
            made.replay(tape.backend_mut());
            losses.push(tape.item(loss).unwrap());
            continue;
        }
        let recording = replay_from == Some(i);
        if recording {
            tape.backend_mut().record();
        }
        tape.rewind(start).unwrap();
        let x = tape.input(&[16, 8], &xs).unwrap();
        let y = tape.input(&[16, 1], &ys).unwrap();
        let pred = model.forward(&mut tape, x).unwrap();
        let loss = tape.mse(pred, y).unwrap();
        tape.backward(loss).unwrap();
        made.step(&mut tape);
        if recording {
            let calls = tape.backend_mut().stop().unwrap();
            assert!(calls > 10, "{calls} calls");
            // A generated step passes AMSGrad's buffer with each update.
            let mut src = String::new();
            tape.backend().write_rust(&mut src, "step").unwrap();
            assert_eq!(src.contains("vmax: Some("), opt == Opt::AmsGrad, "{src}");
            // RMSprop's updates pass its average and momentum buffer; Adagrad's neither.
            let rms = matches!(opt, Opt::RmsProp | Opt::Adagrad);
            assert_eq!(src.contains("rms(&RmsUpdate {"), rms, "{src}");
            assert_eq!(src.contains("avg: Some("), opt == Opt::RmsProp, "{src}");
            handles = Some((x, y, loss));
        }
        losses.push(tape.item(loss).unwrap());
    }
    assert_eq!(made.steps(), steps as u64);
    let params: Vec<f32> = tape
        .params()
        .flat_map(|p| tape.data(p).unwrap().to_vec())
        .collect();
    (losses, params)
}

#[test]
fn seed_loop_replayed_equals_eager_bit_for_bit() {
    for opt in [
        Opt::Adam,
        Opt::Sgd,
        Opt::AmsGrad,
        Opt::RmsProp,
        Opt::Adagrad,
    ] {
        let (eager_l, eager_p) = seed(60, None, opt);
        for from in [1, 5] {
            let (l, p) = seed(60, Some(from), opt);
            assert_eq!(
                l.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                eager_l.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "losses, {opt:?}, recorded step {from}"
            );
            assert_eq!(
                p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                eager_p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "parameters, {opt:?}"
            );
        }
        assert!(eager_l[59] < eager_l[0]);
    }
}

/// XOR-MCU: 100 epochs, the inputs made once below the mark; step 2 recorded, 3..=100 replayed.
fn xor(replay: bool) -> f32 {
    let mut mem = [0f32; 256];
    let mut tape = Tape::<Replay<Cpu<f32>, 256>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let w1 = [0.999, -0.909, 0.981, 0.735, -0.972, 0.517];
    let l1 = Linear::from_weights(&mut tape, 2, 3, &w1, Some(&[0.0; 3])).unwrap();
    let l2 = Linear::from_weights(&mut tape, 3, 1, &[0.416, -0.47, 0.26], Some(&[0.0])).unwrap();
    let model = (l1, Sigmoid, l2, Sigmoid);
    let mut opt = Adam::new(
        &mut tape,
        AdamConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            weight_decay: 0.0,
            amsgrad: false,
        },
    )
    .unwrap();
    let x = tape
        .input(&[4, 2], &[0., 0., 0., 1., 1., 0., 1., 1.])
        .unwrap();
    let t = tape.input(&[4, 1], &[0., 1., 1., 0.]).unwrap();
    let start = tape.mark();
    let step = |tape: &mut Tape<Replay<Cpu<f32>, 256>, 16>, opt: &mut Adam| {
        tape.rewind(start)?;
        let y = model.forward(tape, x)?;
        let mse = tape.mse(y, t)?;
        let loss = tape.mul_scalar(mse, 4.0)?;
        tape.backward(loss)?;
        opt.step(tape)?;
        Ok::<_, Error>(loss)
    };
    let mut loss = step(&mut tape, &mut opt).unwrap();
    if replay {
        tape.backend_mut().record();
        loss = step(&mut tape, &mut opt).unwrap();
        tape.backend_mut().stop().unwrap();
        for _ in 2..100 {
            tape.backend_mut().replay_adam(&mut opt).unwrap();
        }
    } else {
        for _ in 1..100 {
            loss = step(&mut tape, &mut opt).unwrap();
        }
    }
    // The loss of the trained weights.
    let _ = loss;
    tape.rewind(start).unwrap();
    let mse = tape.no_grad(|tape| {
        let y = model.forward(tape, x)?;
        tape.mse(y, t)
    });
    tape.item(mse.unwrap()).unwrap() * 4.0
}

#[test]
fn xor_replayed_equals_eager_and_the_reference() {
    let (eager, replayed) = (xor(false), xor(true));
    assert_eq!(eager.to_bits(), replayed.to_bits());
    assert!((replayed - 0.009_306_9).abs() < 1e-5, "{replayed}");
}

#[test]
fn replay_refusals() {
    let mut mem = vec![0f32; 512];
    let mut tape = Tape::<Replay<Cpu<f32>, 8>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut rng = Rng::new(1);
    let l = Linear::new(&mut tape, 4, 2, &mut rng).unwrap();
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    let start = tape.mark();
    // Nothing recorded.
    assert!(matches!(
        tape.backend_mut().replay(),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        tape.backend_mut().stop(),
        Err(Error::InvalidArgument { .. })
    ));
    // A step that does not fit in 8 bytes.
    let step = |tape: &mut Tape<Replay<Cpu<f32>, 8>, 16>| {
        tape.rewind(start)?;
        let x = tape.input(&[3, 4], &[0.5; 12])?;
        let y = l.forward(tape, x)?;
        let loss = tape.sum(y)?;
        tape.backward(loss)
    };
    tape.backend_mut().record();
    step(&mut tape).unwrap();
    assert!(tape.backend().is_recording());
    assert!(matches!(
        tape.backend_mut().stop(),
        Err(Error::TapeFull { capacity: 8 })
    ));
    assert!(!tape.backend().is_ready());
    // A value read back to the host.
    tape.backend_mut().record();
    clip_grad_norm(&mut tape, 1.0).unwrap();
    assert!(matches!(
        tape.backend_mut().stop(),
        Err(Error::InvalidArgument { .. })
    ));
    // Updates of two parameters (12 bytes) do not fit either.
    tape.backend_mut().record();
    opt.step(&mut tape).unwrap();
    assert!(matches!(
        tape.backend_mut().stop(),
        Err(Error::TapeFull { .. })
    ));
}

type Wide<'a> = Tape<Replay<Cpu<'a, f32>, 4096>, 64>;

/// A step with an op the host drives (an embedding reads its indices, dropout draws its mask,
/// batch norm in training mode keeps its running statistics on the host) runs eagerly while
/// recording, but cannot be replayed: the recording fails at `stop`. Batch norm in evaluation
/// mode records.
#[test]
fn host_driven_ops_cannot_be_recorded() {
    let mut mem = vec![0f32; 1 << 14];
    let mut tape = Wide::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut rng = Rng::new(3);
    let emb = mote::Embedding::new(&mut tape, 5, 4, &mut rng).unwrap();
    let mut bn = mote::BatchNorm::new(&mut tape, 4).unwrap();
    let drop = mote::Dropout::new(0.5, 9).unwrap();
    let start = tape.mark();
    type Step =
        fn(&mut Wide, &mote::Embedding, &mote::BatchNorm, &mote::Dropout) -> Result<Var, Error>;
    let steps: [(&str, Step); 3] = [
        ("embedding", |t, emb, _, _| {
            let i = t.labels(&[0, 4, 2])?;
            let y = emb.forward(t, i)?;
            t.sum(y)
        }),
        ("dropout", |t, emb, _, d| {
            let y = d.forward(t, emb.weight)?;
            t.sum(y)
        }),
        ("batch norm", |t, _, bn, _| {
            let x = t.input(
                &[3, 4],
                &[0.5, 1.0, 2.0, 3.0, 1.5, 0.0, 2.0, 1.0, 0.25, 1.0, 0.0, 2.0],
            )?;
            let y = bn.forward(t, x)?;
            t.sum(y)
        }),
    ];
    for (name, step) in steps {
        tape.rewind(start).unwrap();
        tape.backend_mut().record();
        let loss = step(&mut tape, &emb, &bn, &drop).unwrap();
        tape.backward(loss).unwrap();
        assert!(tape.item(loss).unwrap().is_finite(), "{name}: runs eagerly");
        let e = tape.backend_mut().stop().unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { what } if what.contains("cannot hold it")),
            "{name}: {e}"
        );
        assert!(!tape.backend().is_ready(), "{name}");
    }
    // Evaluation mode: the running statistics are only read by the kernels.
    bn.set_training(false);
    tape.rewind(start).unwrap();
    tape.backend_mut().record();
    let loss = steps[2].1(&mut tape, &emb, &bn, &drop).unwrap();
    tape.backward(loss).unwrap();
    assert!(tape.backend_mut().stop().unwrap() > 0);
    tape.backend_mut().replay().unwrap();
}

/// A recording in which a backend call failed is not replayable; a second `stop` keeps a ready
/// recording; `clear` forgets the optimizer the recording held.
#[test]
fn recording_state_after_failures_and_repeats() {
    let mut mem = vec![0f32; 512];
    let mut tape = Tape::<Replay<Cpu<f32>, 512>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut rng = Rng::new(1);
    let l = Linear::new(&mut tape, 2, 1, &mut rng).unwrap();
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    let start = tape.mark();
    let step = |tape: &mut Tape<Replay<Cpu<f32>, 512>, 16>, opt: &mut Adam| {
        tape.rewind(start).unwrap();
        let x = tape.input(&[1, 2], &[1.0, 2.0]).unwrap();
        let y = l.forward(tape, x).unwrap();
        let loss = tape.sum(y).unwrap();
        tape.backward(loss).unwrap();
        opt.step(tape).unwrap();
    };
    step(&mut tape, &mut opt);
    tape.backend_mut().record();
    step(&mut tape, &mut opt);
    // A call the wrapped backend refuses (past the arena's end).
    let cap = mote::Backend::capacity(tape.backend());
    assert!(mote::Backend::fill(tape.backend_mut(), cap, 1, 0.0).is_err());
    let e = tape.backend_mut().stop().unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { what } if what.contains("failed while recording")),
        "{e}"
    );
    // After that failed stop, nothing is held: not even the Adam updates.
    assert!(matches!(
        tape.backend_mut().replay(),
        Err(Error::InvalidArgument { what }) if what.contains("nothing recorded")
    ));
    tape.backend_mut().record();
    step(&mut tape, &mut opt);
    let calls = tape.backend_mut().stop().unwrap();
    assert!(tape.backend_mut().stop().is_err());
    assert!(
        tape.backend().is_ready(),
        "a second stop keeps the recording"
    );
    assert_eq!(tape.backend().calls(), calls);
    tape.backend_mut().replay_adam(&mut opt).unwrap();
    tape.backend_mut().clear();
    assert!(matches!(
        tape.backend_mut().replay(),
        Err(Error::InvalidArgument { what }) if what.contains("nothing recorded")
    ));
}

#[test]
fn replay_needs_its_optimizer() {
    let mut mem = vec![0f32; 512];
    let mut tape = Tape::<Replay<Cpu<f32>, 128>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut rng = Rng::new(1);
    let l = Linear::new(&mut tape, 2, 1, &mut rng).unwrap();
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    // Never stepped (its state would replace Adam's): only passed to the wrong replay.
    let mut sgd = Sgd::new(
        &mut Tape::<Cpu<f32>, 4>::new(&mut [0f32; 8]),
        SgdConfig::default(),
    )
    .unwrap();
    let start = tape.mark();
    for _ in 0..2 {
        tape.rewind(start).unwrap();
        let x = tape.input(&[1, 2], &[1.0, 2.0]).unwrap();
        let y = l.forward(&mut tape, x).unwrap();
        let loss = tape.sum(y).unwrap();
        if opt.steps() == 1 {
            tape.backend_mut().record();
        }
        tape.backward(loss).unwrap();
        opt.step(&mut tape).unwrap();
    }
    assert!(tape.backend_mut().stop().unwrap() >= 2);
    assert!(matches!(
        tape.backend_mut().replay(),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        tape.backend_mut().replay_sgd(&mut sgd),
        Err(Error::InvalidArgument { .. })
    ));
    // The other adaptive optimizers are refused too, and left at their step count.
    let mut rms = RmsProp::detached(RmsPropConfig::default()).unwrap();
    let mut ada = Adagrad::detached(AdagradConfig::default()).unwrap();
    assert!(matches!(
        tape.backend_mut().replay_rmsprop(&mut rms),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        tape.backend_mut().replay_adagrad(&mut ada),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!((sgd.steps(), rms.steps(), ada.steps()), (0, 0, 0));
    let steps = opt.steps();
    tape.backend_mut().replay_adam(&mut opt).unwrap();
    assert_eq!(opt.steps(), steps + 1);
}

type Small<'a> = Tape<Replay<Cpu<'a, f32>, 256>, 16>;

/// Gradient accumulation: a recorded forward and backward pass without an optimizer, replayed
/// with `replay()`, accumulates into the parameters' gradients as the eager passes do; with
/// each kind of loss head (a smoothed cross-entropy records its smoothing).
#[test]
fn replayed_backward_accumulates_like_eager() {
    type Head = fn(&mut Small, Var) -> Result<Var, Error>;
    let sum: Head = |t, y| {
        let y = t.tanh(y)?;
        t.sum(y)
    };
    let ce: Head = |t, y| {
        let l = t.labels(&[1, 0])?;
        t.cross_entropy(y, l)
    };
    let smoothed: Head = |t, y| {
        let l = t.labels(&[1, 0])?;
        t.cross_entropy_smoothed(y, l, 0.2)
    };
    let grads = |replay: bool, head: Head| {
        let mut mem = vec![0f32; 512];
        let mut tape =
            Tape::<Replay<Cpu<f32>, 256>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
        let mut rng = Rng::new(3);
        let l = Linear::new(&mut tape, 3, 2, &mut rng).unwrap();
        let start = tape.mark();
        let x = [0.5f32, -1.0, 2.0, 1.5, 0.25, -0.75];
        let pass = |tape: &mut Small| {
            tape.rewind_keep_grad(start)?;
            let xv = tape.input(&[2, 3], &x)?;
            let y = l.forward(tape, xv)?;
            let loss = head(tape, y)?;
            tape.backward(loss)
        };
        pass(&mut tape).unwrap();
        if replay {
            tape.backend_mut().record();
            pass(&mut tape).unwrap();
            tape.backend_mut().stop().unwrap();
            tape.backend_mut().replay().unwrap();
            tape.backend_mut().replay().unwrap();
        } else {
            for _ in 0..3 {
                pass(&mut tape).unwrap();
            }
        }
        tape.params()
            .flat_map(|p| tape.grad_data(p).unwrap().unwrap().to_vec())
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    for head in [sum, ce, smoothed] {
        assert_eq!(grads(false, head), grads(true, head));
    }
    assert_ne!(grads(false, ce), grads(false, smoothed));
}

/// A recording of RMSprop's updates replays with an RMSprop only, and one of Adagrad's with an
/// Adagrad only (both run on one kernel: the settings of the other would run on the wrong
/// buffers).
#[test]
fn rmsprop_and_adagrad_recordings_are_not_interchangeable() {
    for adagrad in [false, true] {
        let mut mem = vec![0f32; 512];
        let mut tape =
            Tape::<Replay<Cpu<f32>, 128>, 16>::with_backend(Replay::new(Cpu::new(&mut mem)));
        let mut rng = Rng::new(1);
        let l = Linear::new(&mut tape, 2, 1, &mut rng).unwrap();
        let mut rms = RmsProp::new(&mut tape, RmsPropConfig::default()).unwrap();
        let mut ada = Adagrad::detached(AdagradConfig::default()).unwrap();
        if adagrad {
            ada = Adagrad::new(&mut tape, AdagradConfig::default()).unwrap();
            rms = RmsProp::detached(RmsPropConfig::default()).unwrap();
        }
        tape.backend_mut().record();
        let x = tape.input(&[1, 2], &[1.0, 2.0]).unwrap();
        let y = l.forward(&mut tape, x).unwrap();
        let loss = tape.sum(y).unwrap();
        tape.backward(loss).unwrap();
        if adagrad {
            ada.step(&mut tape).unwrap();
        } else {
            rms.step(&mut tape).unwrap();
        }
        tape.backend_mut().stop().unwrap();
        let (r, a) = (rms.steps(), ada.steps());
        let wrong = if adagrad {
            tape.backend_mut().replay_rmsprop(&mut rms)
        } else {
            tape.backend_mut().replay_adagrad(&mut ada)
        };
        assert!(
            matches!(wrong, Err(Error::InvalidArgument { .. })),
            "{wrong:?}"
        );
        assert_eq!((rms.steps(), ada.steps()), (r, a));
        let right = if adagrad {
            tape.backend_mut().replay_adagrad(&mut ada)
        } else {
            tape.backend_mut().replay_rmsprop(&mut rms)
        };
        right.unwrap();
    }
}

/// Attention and a composed loss (one-hot rows from `arange`, a causal mask made on the
/// device, recorded with the rest): 12 steps with step 1 recorded and the rest replayed equal
/// 12 eager steps bit for bit.
#[test]
fn attention_and_composed_losses_replay_bit_for_bit() {
    use mote::nn::attention::MultiheadAttention;
    use mote::nn::loss::{CrossEntropyLoss, Reduction};
    let run = |replay_from: Option<usize>| -> (Vec<u32>, Vec<u32>) {
        let mut mem = vec![0f32; 1 << 15];
        let be = Replay::<_, 8192>::new(Cpu::new(&mut mem));
        let mut tape = Tape::<_, 512>::with_backend(be);
        let mut rng = Rng::new(3);
        let mha = MultiheadAttention::new(&mut tape, 8, 2, &mut rng).unwrap();
        let head = Linear::new(&mut tape, 8, 3, &mut rng).unwrap();
        let w = tape.param(&[3], &[0.5, 1.0, 2.0]).unwrap();
        tape.freeze(w).unwrap();
        let mut sgd = Sgd::new(
            &mut tape,
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        )
        .unwrap();
        let start = tape.mark();
        let mut losses = Vec::new();
        let mut handles = None;
        for i in 0..12 {
            let xs: Vec<f32> = (0..2 * 4 * 8)
                .map(|_| rng.uniform(-1.0, 1.0) as f32)
                .collect();
            let ys: Vec<f32> = (0..8).map(|k| ((k + i) % 3) as f32).collect();
            if replay_from.is_some_and(|r| i > r) {
                let (x, y, loss) = handles.unwrap();
                tape.write(x, &xs).unwrap();
                tape.write(y, &ys).unwrap();
                tape.backend_mut().replay_sgd(&mut sgd).unwrap();
                losses.push(tape.item(loss).unwrap().to_bits());
                continue;
            }
            let recording = replay_from == Some(i);
            if recording {
                tape.backend_mut().record();
            }
            tape.rewind(start).unwrap();
            let x = tape.input(&[2, 4, 8], &xs).unwrap();
            let y = tape.input(&[8], &ys).unwrap();
            let h = mha.attend(&mut tape, x, x, x, None, None, true).unwrap();
            let h = tape.reshape(h, &[8, 8]).unwrap();
            let logits = head.forward(&mut tape, h).unwrap();
            let ce = CrossEntropyLoss {
                weight: Some(w),
                label_smoothing: 0.1,
                reduction: Reduction::Sum,
                ..Default::default()
            };
            let loss = ce.forward(&mut tape, logits, y).unwrap();
            tape.backward(loss).unwrap();
            sgd.step(&mut tape).unwrap();
            if recording {
                let calls = tape.backend_mut().stop().unwrap();
                eprintln!(
                    "attention step: {calls} calls in {} bytes",
                    tape.backend().bytes_used()
                );
                handles = Some((x, y, loss));
            }
            losses.push(tape.item(loss).unwrap().to_bits());
        }
        let params = tape
            .params()
            .flat_map(|p| tape.data(p).unwrap().to_vec())
            .map(f32::to_bits)
            .collect();
        (losses, params)
    };
    let eager = run(None);
    assert_eq!(run(Some(1)), eager);
    assert_ne!(eager.0[0], eager.0[11]);
}
