//! Bad input returns its specific error and leaves the tape and the arena as they were.

use mote::ops::unary::UnaryOp;
use mote::{
    Adam, AdamConfig, Cpu, Error, HostBackend, Linear, Module, Optimizer, Rng, Shape, Tape,
};

fn s(d: &[usize]) -> Shape {
    Shape::new(d).unwrap()
}

#[test]
fn full_arena_is_an_error_and_changes_nothing() {
    let mut mem = [0f32; 10];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let x = tape.input(&[2, 3], &[1.0; 6]).unwrap();
    let (used, nodes) = (tape.used(), tape.nodes_used());
    assert_eq!(tape.exp(x), Err(Error::ArenaFull { needed: 6, free: 4 }));
    assert_eq!((tape.used(), tape.nodes_used()), (used, nodes));
    assert_eq!(
        tape.param(&[5], &[0.0; 5]),
        Err(Error::ArenaFull {
            needed: 10,
            free: 4
        })
    );
    // Room for the forward but not for the gradients: backward says so.
    let p = tape.param(&[2], &[1.0, 2.0]).unwrap();
    let loss = tape.sum(p);
    assert!(matches!(loss, Err(Error::ArenaFull { .. })) || tape.backward(loss.unwrap()).is_err());
}

/// On an aligned arena a parameter's error counts the padding before its gradient, so the
/// `needed` it reports is exactly what fits.
#[test]
fn a_parameter_that_does_not_fit_an_aligned_arena_reports_its_padding() {
    // 5 elements, a gradient aligned to 4: 5 + 3 padding + 5.
    let mut mem = [0f32; 12];
    let mut tape = Tape::<Cpu<f32>, 8>::with_backend(Cpu::aligned(&mut mem, 4));
    assert_eq!(
        tape.param(&[5], &[0.0; 5]),
        Err(Error::ArenaFull {
            needed: 13,
            free: 12
        })
    );
    assert_eq!((tape.used(), tape.nodes_used()), (0, 0));
    let mut mem = [0f32; 13];
    let mut tape = Tape::<Cpu<f32>, 8>::with_backend(Cpu::aligned(&mut mem, 4));
    assert!(tape.param(&[5], &[0.0; 5]).is_ok());
    assert_eq!(tape.used(), 13);
}

/// Composite ops (several nodes: the clamp, the L1 and Huber losses) are all or nothing too.
#[test]
fn a_composite_op_that_runs_out_of_arena_changes_nothing() {
    let mut mem = [0f32; 4];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let x = tape.input(&[2], &[1.0, -1.0]).unwrap();
    let (used, nodes) = (tape.used(), tape.nodes_used());
    for r in [
        tape.huber_loss(x, x, 1.0),
        tape.l1_loss(x, x),
        tape.smooth_l1_loss(x, x, 0.5),
        tape.clamp(x, 0.0, 1.0),
    ] {
        assert!(matches!(r, Err(Error::ArenaFull { .. })), "{r:?}");
        assert_eq!((tape.used(), tape.nodes_used()), (used, nodes));
    }
}

/// An optimizer whose state does not fit fails with `ArenaFull` and changes nothing: the
/// parameters still name the state of the optimizer made before it (the first parameter's
/// included, whose new state did fit), and that optimizer steps as before.
#[test]
fn an_optimizer_without_room_for_its_state_changes_nothing() {
    // Parameters of 1 and 3 (value and gradient each: 8) and SGD's momentum (4) leave 7: room
    // for the first parameter's Adam state (2) but not then the second's (6); room for the 6
    // floats of the step below.
    let mut mem = [0f32; 19];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let a = tape.param(&[1], &[1.0]).unwrap();
    let b = tape.param(&[3], &[2.0, 3.0, 4.0]).unwrap();
    let cfg = mote::SgdConfig {
        lr: 0.5,
        momentum: 0.9,
        ..mote::SgdConfig::default()
    };
    let mut sgd = mote::Sgd::new(&mut tape, cfg).unwrap();
    let before = (
        tape.param_state(a, 0).unwrap(),
        tape.param_state(b, 0).unwrap(),
    );
    let used = tape.used();
    let e = Adam::new(&mut tape, AdamConfig::default()).err();
    assert!(matches!(e, Some(Error::ArenaFull { .. })), "{e:?}");
    assert_eq!(tape.used(), used);
    // Centered RMSprop with momentum (3 buffers) likewise.
    let rms = mote::RmsPropConfig {
        momentum: 0.9,
        centered: true,
        ..mote::RmsPropConfig::default()
    };
    let e = mote::RmsProp::new(&mut tape, rms).err();
    assert!(matches!(e, Some(Error::ArenaFull { .. })), "{e:?}");
    assert_eq!(tape.used(), used);
    assert_eq!(
        (
            tape.param_state(a, 0).unwrap(),
            tape.param_state(b, 0).unwrap()
        ),
        before
    );
    assert_eq!(
        tape.param_state(a, 1).unwrap(),
        None,
        "SGD keeps one buffer"
    );
    // The SGD made first still steps: a gradient of ones moves the parameters by lr.
    let (sa, sb) = (tape.sum(a).unwrap(), tape.sum(b).unwrap());
    let loss = tape.add(sa, sb).unwrap();
    tape.backward(loss).unwrap();
    sgd.step(&mut tape).unwrap();
    assert_eq!(tape.data(a).unwrap(), &[0.5]);
    assert_eq!(tape.data(b).unwrap(), &[1.5, 2.5, 3.5]);
    let buf = before.0.unwrap();
    assert_eq!(&tape.backend().storage()[buf.range()], &[1.0]);
}

#[test]
fn full_tape_is_an_error_and_changes_nothing() {
    let mut mem = [0f32; 100];
    let mut tape = Tape::<Cpu<f32>, 2>::new(&mut mem);
    let x = tape.input(&[3], &[1.0; 3]).unwrap();
    let y = tape.exp(x).unwrap();
    let used = tape.used();
    assert_eq!(tape.exp(y), Err(Error::TapeFull { capacity: 2 }));
    assert_eq!(tape.used(), used, "no arena is taken by a failed op");
    assert_eq!(
        tape.param(&[1], &[0.0]),
        Err(Error::TapeFull { capacity: 2 })
    );
    // Inference records nothing, so it still runs on a full tape.
    let z = tape.no_grad(|t| t.exp(y)).unwrap();
    assert!((tape.data(z).unwrap()[0] - 1f32.exp().exp()).abs() < 1e-5);
}

#[test]
fn shape_mismatches_name_the_op_and_shapes() {
    let mut mem = [0f32; 200];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let a = tape.input(&[2, 3], &[1.0; 6]).unwrap();
    let b = tape.input(&[4], &[1.0; 4]).unwrap();
    assert_eq!(
        tape.add(a, b),
        Err(Error::ShapeMismatch {
            op: "add",
            lhs: s(&[2, 3]),
            rhs: s(&[4])
        })
    );
    assert_eq!(
        tape.matmul(a, a),
        Err(Error::ShapeMismatch {
            op: "matmul",
            lhs: s(&[2, 3]),
            rhs: s(&[2, 3])
        })
    );
    assert!(matches!(
        tape.matmul(b, b),
        Err(Error::InvalidShape { op: "matmul", .. })
    ));
    assert_eq!(
        tape.mse(a, b),
        Err(Error::ShapeMismatch {
            op: "mse",
            lhs: s(&[2, 3]),
            rhs: s(&[4])
        })
    );
    for (r, name) in [
        (tape.l1_loss(a, b), "l1_loss"),
        (tape.huber_loss(a, b, 1.0), "huber_loss"),
        (tape.smooth_l1_loss(a, b, 1.0), "smooth_l1_loss"),
        (tape.smooth_l1_loss(a, b, 0.0), "smooth_l1_loss"),
    ] {
        assert!(
            matches!(r, Err(Error::ShapeMismatch { op, .. }) if op == name),
            "{r:?}"
        );
    }
    let labels = tape.labels(&[0, 2]).unwrap();
    assert!(matches!(
        tape.cross_entropy_smoothed(a, b, 0.1),
        Err(Error::ShapeMismatch {
            op: "cross_entropy",
            ..
        })
    ));
    let used = tape.used();
    for r in [
        tape.huber_loss(a, a, 0.0),
        tape.huber_loss(a, a, f32::NAN),
        tape.huber_loss(a, a, f32::INFINITY),
        tape.smooth_l1_loss(a, a, -1.0),
        tape.smooth_l1_loss(a, a, 1e-40),
        tape.clamp(a, 1.0, 0.0),
        tape.clamp(a, f32::NAN, 0.0),
        tape.clamp_min(a, f32::NAN),
        tape.clamp_max(a, f32::NAN),
        tape.unary(UnaryOp::ClampMin(f32::NAN), a),
        tape.cross_entropy_smoothed(a, labels, -0.1),
        tape.cross_entropy_smoothed(a, labels, 1.5),
        tape.cross_entropy_smoothed(a, labels, f32::NAN),
    ] {
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    }
    assert_eq!(tape.used(), used, "a refused call takes no arena");
    assert!(matches!(
        tape.reshape(a, &[5]),
        Err(Error::ShapeMismatch { op: "reshape", .. })
    ));
    assert_eq!(
        tape.sum_axis(a, 2),
        Err(Error::AxisOutOfRange {
            op: "sum",
            axis: 2,
            rank: 2
        })
    );
    assert!(matches!(
        tape.slice(a, 1, 2, 2),
        Err(Error::IndexOutOfRange { op: "slice", .. })
    ));
    assert!(matches!(
        tape.concat(a, b, 0),
        Err(Error::ShapeMismatch { op: "concat", .. })
    ));
    assert!(matches!(
        tape.broadcast_to(a, &[3, 3]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(
        tape.input(&[2, 2], &[1.0; 3]),
        Err(Error::LengthMismatch {
            op: "input",
            expected: 4,
            got: 3
        })
    );
    assert_eq!(
        tape.input(&[1, 1, 1, 1, 1], &[1.0]),
        Err(Error::BadDims { rank: 5 })
    );
    assert_eq!(tape.input(&[0], &[]), Err(Error::BadDims { rank: 1 }));
    let labels = tape.labels(&[0, 5]).unwrap();
    assert_eq!(
        tape.cross_entropy(a, labels),
        Err(Error::IndexOutOfRange {
            op: "cross_entropy label",
            index: 5,
            bound: 3
        })
    );
    let sa = tape.sum(a).unwrap();
    assert_eq!(tape.backward(sa), Err(Error::NoGradient));
    let w = tape.param(&[2, 3], &[0.5; 6]).unwrap();
    let y = tape.mul(a, w).unwrap();
    assert_eq!(
        tape.backward(y),
        Err(Error::NotScalar { shape: s(&[2, 3]) })
    );
    // Every message is one line that says what was wrong.
    let msg = tape.add(a, b).unwrap_err().to_string();
    assert_eq!(msg, "add: shapes [2, 3] and [4] do not fit together");
}

#[test]
fn frozen_parameter_misuse() {
    let mut mem = [0f32; 400];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let frozen = tape.param_frozen(&[2], &[1.0, 2.0]).unwrap();
    let x = tape.input(&[2], &[3.0, 4.0]).unwrap();
    assert_eq!(tape.grad(frozen), Err(Error::FrozenParameter));
    assert_eq!(tape.unfreeze(frozen), Err(Error::FrozenParameter));
    assert_eq!(tape.freeze(x), Err(Error::NotAParameter));
    // Only frozen parameters reach the loss: nothing to differentiate.
    let y = tape.mul(frozen, x).unwrap();
    let loss = tape.sum(y).unwrap();
    assert_eq!(tape.backward(loss), Err(Error::NoGradient));
    // Freezing a trainable parameter stops its gradient; optimizers skip it.
    let w = tape.param(&[2], &[0.5, 0.5]).unwrap();
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    tape.freeze(w).unwrap();
    assert!(!tape.is_trainable(w));
    let y = tape.mul(w, x).unwrap();
    let loss = tape.sum(y).unwrap();
    assert_eq!(tape.backward(loss), Err(Error::NoGradient));
    tape.unfreeze(w).unwrap();
    let y = tape.mul(w, x).unwrap();
    let loss = tape.sum(y).unwrap();
    tape.backward(loss).unwrap();
    assert_eq!(tape.grad_data(w).unwrap().unwrap(), &[3.0, 4.0]);
    opt.step(&mut tape).unwrap();
    // A parameter unfrozen... made trainable after the optimizer existed has no state.
    let late = tape.param(&[1], &[0.0]).unwrap();
    let y = tape.mul(late, late).unwrap();
    let l = tape.sum(y).unwrap();
    tape.backward(l).unwrap();
    assert_eq!(opt.step(&mut tape), Err(Error::MissingOptimizerState));
}

#[test]
fn stale_handles_after_rewind() {
    let mut mem = [0f32; 100];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let mark = tape.mark();
    let x = tape.input(&[4], &[1.0; 4]).unwrap();
    tape.rewind(mark).unwrap();
    assert_eq!(tape.exp(x), Err(Error::StaleHandle));
    let y = tape.input(&[2], &[1.0; 2]).unwrap();
    let _z = tape.input(&[2], &[1.0; 2]).unwrap();
    // A handle whose node id exists but whose offset or shape differ is stale too.
    assert_eq!(tape.exp(x), Err(Error::StaleHandle));
    assert!(tape.exp(y).is_ok());
    let later = tape.mark();
    tape.rewind(mark).unwrap();
    assert_eq!(tape.rewind(later), Err(Error::StaleHandle));
}

#[test]
fn optimizer_settings_are_checked() {
    let mut mem = [0f32; 100];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let _ = Linear::new(&mut tape, 2, 2, &mut Rng::new(0)).unwrap();
    assert!(matches!(
        Adam::new(
            &mut tape,
            AdamConfig {
                lr: -1.0,
                ..AdamConfig::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Adam::new(
            &mut tape,
            AdamConfig {
                beta1: 1.0,
                ..AdamConfig::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Adam::new(
            &mut tape,
            AdamConfig {
                lr: f64::NAN,
                ..AdamConfig::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    let cfg = mote::SgdConfig {
        nesterov: true,
        ..mote::SgdConfig::default()
    };
    assert!(matches!(
        mote::Sgd::new(&mut tape, cfg),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mote::clip_grad_norm(&mut tape, -1.0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn clip_grad_norm_rejects_nan_and_clips() {
    let mut mem = [0f32; 100];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let w = tape.param(&[2], &[3.0, 4.0]).unwrap();
    let sq = tape.square(w).unwrap();
    let l = tape.sum(sq).unwrap();
    tape.backward(l).unwrap(); // grad = (6, 8), norm 10
    let norm = mote::clip_grad_norm(&mut tape, 5.0).unwrap();
    assert!((norm - 10.0).abs() < 1e-6);
    let g = tape.grad_data(w).unwrap().unwrap();
    assert!(
        (g[0] - 3.0).abs() < 1e-4 && (g[1] - 4.0).abs() < 1e-4,
        "{g:?}"
    );
    let m = tape.mark();
    tape.rewind(m).unwrap();
    let bad = tape.input(&[2], &[f32::NAN, 1.0]).unwrap();
    let y = tape.mul(w, bad).unwrap();
    let l = tape.sum(y).unwrap();
    tape.backward(l).unwrap();
    assert_eq!(
        mote::clip_grad_norm(&mut tape, 1.0),
        Err(Error::NonFinite {
            op: "clip_grad_norm"
        })
    );
}

#[test]
fn module_forward_errors_propagate() {
    let mut mem = [0f32; 1000];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let l = Linear::new(&mut tape, 3, 2, &mut Rng::new(1)).unwrap();
    let x = tape.input(&[2, 4], &[0.0; 8]).unwrap();
    assert!(matches!(
        l.forward(&mut tape, x),
        Err(Error::ShapeMismatch { op: "linear", .. })
    ));
}

/// An optimizer step checks every parameter before it updates any: one without state (made
/// trainable after the optimizer) fails the step with every parameter as it was.
#[test]
fn an_optimizer_step_that_fails_updates_nothing() {
    let mut mem = [0f32; 64];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let a = tape.param(&[1], &[1.0]).unwrap();
    let b = tape.param(&[1], &[2.0]).unwrap();
    tape.freeze(b).unwrap();
    let mut sgd = mote::Sgd::new(&mut tape, mote::SgdConfig::default()).unwrap();
    tape.unfreeze(b).unwrap();
    let loss = tape.add(a, b).unwrap();
    tape.backward(loss).unwrap();
    assert_eq!(sgd.step(&mut tape), Err(Error::MissingOptimizerState));
    assert_eq!(tape.data(a).unwrap(), &[1.0]);
    assert_eq!(tape.data(b).unwrap(), &[2.0]);
    assert_eq!(sgd.steps(), 0);
}

/// Optimizer state made above a mark goes with the rewind to it: the parameters then have
/// none (the step says so) instead of naming floats that later allocations reuse.
#[test]
fn optimizer_state_above_a_rewound_mark_is_not_used() {
    let mut mem = [0f32; 64];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let p = tape.param(&[4], &[1.0; 4]).unwrap();
    let m = tape.mark();
    let mut adam = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    assert!(tape.param_state(p, 0).unwrap().is_some());
    tape.rewind(m).unwrap();
    assert_eq!(tape.param_state(p, 0).unwrap(), None);
    let x = tape.input(&[8], &[5.0; 8]).unwrap();
    let loss = tape.sum(p).unwrap();
    tape.backward(loss).unwrap();
    assert_eq!(adam.step(&mut tape), Err(Error::MissingOptimizerState));
    assert_eq!(tape.data(x).unwrap(), &[5.0; 8]);
    assert_eq!(tape.data(p).unwrap(), &[1.0; 4]);
}

/// A failed optimizer construction gives back its floats and nothing else: the activation
/// gradients of the last backward are still there.
#[test]
fn a_failed_optimizer_keeps_the_gradients_of_the_last_backward() {
    let mut mem = [0f32; 12];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let p = tape.param(&[2], &[1.0, 2.0]).unwrap();
    let h = tape.mul_scalar(p, 3.0).unwrap();
    let loss = tape.sum(h).unwrap();
    tape.backward(loss).unwrap();
    let used = tape.used();
    assert!(tape.grad(h).unwrap().is_some());
    assert!(matches!(
        Adam::new(&mut tape, AdamConfig::default()),
        Err(Error::ArenaFull { .. })
    ));
    assert_eq!(tape.used(), used);
    assert!(tape.grad(h).unwrap().is_some());
}

/// A backward that runs out of arena part way gives back what it took.
#[test]
fn a_backward_that_runs_out_of_arena_gives_back_its_floats() {
    // p (2 + 2), q, e (2 each), two sums and their sum (3): 11 floats; the backward needs
    // 1 + 1 + 1 + 2 + 2 more and finds 5.
    let mut mem = [0f32; 16];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let p = tape.param(&[2], &[0.1, 0.2]).unwrap();
    let q = tape.mul_scalar(p, 3.0).unwrap();
    let e = tape.exp(q).unwrap();
    let s2 = tape.sum(e).unwrap();
    let s1 = tape.sum(p).unwrap();
    let l = tape.add(s2, s1).unwrap();
    let used = tape.used();
    assert!(matches!(tape.backward(l), Err(Error::ArenaFull { .. })));
    assert_eq!(tape.used(), used);
    assert_eq!(tape.grad(q).unwrap(), None);
    // Zeroed, the gradients start again from nothing.
    tape.zero_grad().unwrap();
    assert_eq!(tape.grad_data(p).unwrap(), Some(&[0.0, 0.0][..]));
}

/// Layers are made whole or not at all, and a batch-norm forward that fails leaves its
/// running statistics as they were.
#[test]
fn layers_that_fail_change_nothing() {
    let mut mem = [0f32; 64];
    let mut tape = Tape::<Cpu<f32>, 13>::new(&mut mem);
    // A bias of the wrong length: the weight is not left behind.
    let e = Linear::from_weights(&mut tape, 2, 3, &[0.0; 6], Some(&[0.0; 2]));
    assert!(matches!(e, Err(Error::LengthMismatch { .. })), "{e:?}");
    assert_eq!((tape.used(), tape.nodes_used()), (0, 0));
    // Room for 12 more nodes after the layer's 4 parameters and the input: the forward needs
    // more, and fails with the running mean still 0.
    let bn = mote::BatchNorm::new(&mut tape, 1).unwrap();
    let x = tape.input(&[2, 1], &[1.0, 3.0]).unwrap();
    let (used, nodes) = (tape.used(), tape.nodes_used());
    assert!(matches!(
        bn.forward(&mut tape, x),
        Err(Error::TapeFull { .. })
    ));
    assert_eq!((tape.used(), tape.nodes_used()), (used, nodes));
    assert_eq!(tape.data(bn.running_mean).unwrap(), &[0.0]);
    assert_eq!(tape.data(bn.running_var).unwrap(), &[1.0]);
    // A kernel whose weight count overflows is refused, not a panic.
    let e = mote::Conv2d::new(
        &mut tape,
        1,
        1,
        [1 << 40, 1 << 40],
        mote::ConvConfig::default(),
        1,
        true,
        &mut Rng::new(0),
    );
    assert!(matches!(e, Err(Error::BadDims { .. })), "{e:?}");
}

/// Arguments past the representable: broadcasts beyond a shape's element count, a step
/// count at its end, a negative norm.
#[test]
fn limits_are_errors_not_panics() {
    let mut mem = vec![0f32; (1 << 17) + 8];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let a = tape.full(&[65536, 1], 1.0).unwrap();
    let b = tape.full(&[1, 65536], 1.0).unwrap();
    assert!(matches!(tape.add(a, b), Err(Error::ShapeMismatch { .. })));
    let mut sgd = mote::Sgd::detached(mote::SgdConfig::default()).unwrap();
    sgd.set_steps(u64::MAX);
    let _ = sgd.next_update();
    assert_eq!(sgd.steps(), u64::MAX);
    let p = tape.param(&[1], &[1.0]).unwrap();
    let loss = tape.sum(p).unwrap();
    tape.backward(loss).unwrap();
    assert!(matches!(
        mote::clip_grad_norm_to(&mut tape, 1.0, -1.0),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(tape.grad_data(p).unwrap(), Some(&[1.0][..]));
    // Settings set after construction are checked where they are used.
    let mut adam = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    adam.set_lr(f64::NAN);
    assert!(matches!(
        adam.step(&mut tape),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(tape.data(p).unwrap(), &[1.0]);
    let mut drop = mote::Dropout::new(0.5, 1).unwrap();
    drop.p = 1.0;
    assert!(matches!(
        drop.forward(&mut tape, p),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        mote::Sgd::detached(mote::SgdConfig {
            momentum: f64::INFINITY,
            ..mote::SgdConfig::default()
        }),
        Err(Error::InvalidArgument { .. })
    ));
}

/// Freezing a module checks every handle first: one that is not a parameter leaves all of
/// them trainable.
#[test]
fn freezing_a_module_is_all_or_nothing() {
    let mut mem = [0f32; 32];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let w = tape.param(&[1, 2], &[1.0, 2.0]).unwrap();
    let x = tape.input(&[1], &[0.0]).unwrap();
    let bad = Linear {
        weight: w,
        bias: Some(x),
    };
    assert_eq!(mote::nn::freeze(&mut tape, &bad), Err(Error::NotAParameter));
    assert!(tape.is_trainable(w));
}

/// A parameter is checked whole before its value is made: one whose value fits but whose
/// gradient does not never runs its initialiser (on a large tensor that is most of the work).
#[test]
fn a_parameter_that_does_not_fit_runs_no_initialiser() {
    let mut mem = [0f32; 12];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let mut calls = 0;
    let e = tape.param_with(&[8], || {
        calls += 1;
        1.0
    });
    assert_eq!(
        e,
        Err(Error::ArenaFull {
            needed: 16,
            free: 12
        })
    );
    assert_eq!(calls, 0);
    assert_eq!((tape.used(), tape.nodes_used()), (0, 0));
}

/// `BatchNorm`'s public settings are checked at the forward, before any node is recorded.
#[test]
fn batch_norm_settings_are_checked() {
    let mut mem = [0f32; 64];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let mut bn = mote::BatchNorm::new(&mut tape, 1).unwrap();
    let x = tape.input(&[2, 1], &[1.0, 3.0]).unwrap();
    let nodes = tape.nodes_used();
    for (eps, momentum) in [(-1.0, 0.1), (f32::NAN, 0.1), (1e-5, 1.5), (1e-5, -0.1)] {
        bn.eps = eps;
        bn.momentum = momentum;
        assert!(
            matches!(bn.forward(&mut tape, x), Err(Error::InvalidArgument { .. })),
            "eps {eps}, momentum {momentum}"
        );
        assert_eq!(tape.nodes_used(), nodes);
    }
    assert_eq!(tape.data(bn.running_mean).unwrap(), &[0.0]);
}

/// `BatchNorm`'s running statistics are public handles that it writes by offset: one of
/// another size, or one a rewind dropped, is refused before anything is written (before, a
/// training forward wrote the batch's statistics over whatever lay there).
#[test]
fn batch_norm_running_statistics_are_checked() {
    let mut mem = [0f32; 128];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let mut bn = mote::BatchNorm::new(&mut tape, 2).unwrap();
    let neighbour = tape.param(&[3], &[7.0, 8.0, 9.0]).unwrap();
    let start = tape.mark();
    let x = tape.input(&[2, 2], &[1.0, 3.0, 5.0, 7.0]).unwrap();
    let nodes = tape.nodes_used();
    let good = bn.running_mean;
    bn.running_mean = neighbour;
    for training in [true, false] {
        bn.training = training;
        assert!(
            matches!(
                bn.forward(&mut tape, x),
                Err(Error::ShapeMismatch { op, .. }) if op.contains("running")
            ),
            "training {training}"
        );
        assert_eq!(tape.nodes_used(), nodes);
    }
    assert_eq!(tape.data(neighbour).unwrap(), &[7.0, 8.0, 9.0]);
    bn.running_mean = good;
    bn.training = true;
    tape.rewind(start).unwrap();
    let scratch = tape.input(&[2], &[0.0, 0.0]).unwrap();
    tape.rewind(start).unwrap();
    bn.running_var = scratch;
    let x = tape.input(&[2, 2], &[1.0, 3.0, 5.0, 7.0]).unwrap();
    assert_eq!(bn.forward(&mut tape, x), Err(Error::StaleHandle));
}

/// Labels are stored in the tape's element type: one that `f32` would round (above 2^24) is
/// refused, since it would name another class or row; an `f64` tape holds it.
#[test]
fn labels_past_what_the_element_type_holds_are_refused() {
    let mut mem = [0f32; 16];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    tape.labels(&[0, 1 << 24, 3]).unwrap();
    let nodes = tape.nodes_used();
    assert_eq!(
        tape.labels(&[2, (1 << 24) + 1]),
        Err(Error::IndexOutOfRange {
            op: "labels: a label the element type does not hold exactly",
            index: (1 << 24) + 1,
            bound: (1 << 24) + 1,
        })
    );
    assert_eq!(tape.nodes_used(), nodes);
    let mut mem = [0f64; 16];
    let mut tape = Tape::<Cpu<f64>, 8>::new(&mut mem);
    let l = tape.labels(&[(1 << 24) + 1]).unwrap();
    assert_eq!(tape.data(l).unwrap(), &[16_777_217.0]);
    // Signed labels alike, both ways from 0.
    let mut mem = [0f32; 16];
    let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let l = tape.labels_signed(&[-100, 1 << 24, -(1 << 24)]).unwrap();
    assert_eq!(
        tape.data(l).unwrap(),
        &[-100.0, 16_777_216.0, -16_777_216.0]
    );
    let nodes = tape.nodes_used();
    for bad in [(1 << 24) + 1, -(1 << 24) - 1, i64::MAX, i64::MIN + 1] {
        let r = tape.labels_signed(&[0, bad]);
        assert!(
            matches!(r, Err(Error::IndexOutOfRange { .. })),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(tape.nodes_used(), nodes);
}

/// Optimizer settings are public fields: a step checks them again, and an SGD made without
/// momentum (so without momentum buffers) that is given momentum later refuses to step rather
/// than write a buffer it does not have (it wrote one at arena offset 0, over a parameter).
#[test]
fn settings_changed_after_construction_are_checked_at_the_step() {
    let mut mem = [0f32; 200];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let l = Linear::new(&mut tape, 2, 2, &mut Rng::new(0)).unwrap();
    let mut sgd = mote::Sgd::new(&mut tape, mote::SgdConfig::default()).unwrap();
    let start = tape.mark();
    let step = |tape: &mut Tape<Cpu<f32>, 32>| {
        tape.rewind(start).unwrap();
        let x = tape.input(&[1, 2], &[1.0, -2.0]).unwrap();
        let y = l.forward(tape, x).unwrap();
        let loss = tape.sum(y).unwrap();
        tape.backward(loss).unwrap();
    };
    step(&mut tape);
    let before = tape.data(l.weight).unwrap().to_vec();
    sgd.config.momentum = 0.9;
    assert_eq!(sgd.step(&mut tape), Err(Error::MissingOptimizerState));
    assert_eq!(tape.data(l.weight).unwrap(), &before[..]);
    sgd.config.momentum = 0.0;
    sgd.config.nesterov = true;
    assert!(matches!(
        sgd.step(&mut tape),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(tape.data(l.weight).unwrap(), &before[..]);

    let mut adam = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    let start = tape.mark();
    tape.rewind(start).unwrap();
    let x = tape.input(&[1, 2], &[1.0, -2.0]).unwrap();
    let y = l.forward(&mut tape, x).unwrap();
    let loss = tape.sum(y).unwrap();
    tape.backward(loss).unwrap();
    for bad in [
        AdamConfig {
            beta1: 1.0,
            ..AdamConfig::default()
        },
        AdamConfig {
            eps: 0.0,
            ..AdamConfig::default()
        },
    ] {
        adam.config = bad;
        assert!(matches!(
            adam.step(&mut tape),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(tape.data(l.weight).unwrap(), &before[..]);
        assert_eq!(adam.steps(), 0);
    }
    adam.config = AdamConfig::default();
    adam.step(&mut tape).unwrap();
    assert_ne!(tape.data(l.weight).unwrap(), &before[..]);
}

/// Batch norm in training mode over one value per channel is refused, as PyTorch refuses it
/// (there is no spread to normalise by); in evaluation mode it runs.
#[test]
fn batch_norm_needs_two_values_per_channel_to_train() {
    let mut mem = [0f32; 64];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let mut bn = mote::BatchNorm::new(&mut tape, 2).unwrap();
    let x = tape.input(&[1, 2], &[1.0, 3.0]).unwrap();
    let nodes = tape.nodes_used();
    assert!(matches!(
        bn.forward(&mut tape, x),
        Err(Error::InvalidArgument { what }) if what.contains("more than one value")
    ));
    assert_eq!(tape.nodes_used(), nodes);
    bn.training = false;
    bn.forward(&mut tape, x).unwrap();
}
