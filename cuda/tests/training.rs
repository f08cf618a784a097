//! Whole training on the GPU against the reference backend (W-digits: 64 -> 32 -> ReLU -> 10,
//! softmax cross-entropy, Adam, batch 32), and CUDA-graph replay against eager execution.
//!
//! Tolerances: one step, the loss within `1e-5` relative and every parameter within
//! `2e-4 + 1e-4 |x|` (Adam's first update is `lr g / (|g| + eps)`: a gradient entry at rounding
//! level, ~1e-9, can change sign between backends, moving that parameter by up to
//! `2 lr |g| / (|g| + eps)` ~ 2e-4); 100 steps, every
//! step's loss within `1e-3` relative and the final parameters within `1e-3 + 1e-2 |x|` (f32
//! summation order differs between cuBLAS and the reference GEMM, and Adam amplifies tiny
//! gradient differences where v is near 0); graph replay against eager on the same GPU: every
//! loss within `1e-5` relative, parameters within `2e-4 + 1e-4 |x|` (the same kernels in the
//! same order with bit-identical optimizer scalars, so normally exact; the margin allows cuBLAS
//! to pick another algorithm under capture, which can flip a rounding-level gradient's sign and
//! move Adam's update as in the one-step comparison).

mod common;

use common::{close, digits, gpu};
use mote::{
    Adagrad, AdagradConfig, Adam, AdamConfig, Backend, Cpu, Linear, Module, Optimizer, Relu,
    RmsProp, RmsPropConfig, Rng, Sgd, SgdConfig, Tape, Var,
};
use mote_cuda::{Cuda, Graph, Options};

const FLOATS: usize = 1 << 18;
const BATCH: usize = 32;

type Model = (Linear, Relu, Linear);

fn model<B: Backend<Elem = f32>, const N: usize>(tape: &mut Tape<B, N>) -> Model {
    let mut rng = Rng::new(42);
    (
        Linear::new(tape, 64, 32, &mut rng).unwrap(),
        Relu,
        Linear::new(tape, 32, 10, &mut rng).unwrap(),
    )
}

/// Batch `i` of the digits (fixed order).
fn batch(xs: &[f32], ys: &[usize], i: usize) -> (Vec<f32>, Vec<usize>) {
    let n = ys.len();
    let idx: Vec<usize> = (0..BATCH).map(|k| (i * BATCH + k) % n).collect();
    let bx = idx
        .iter()
        .flat_map(|&j| xs[j * 64..(j + 1) * 64].iter().copied())
        .collect();
    let by = idx.iter().map(|&j| ys[j]).collect();
    (bx, by)
}

/// One eager step; returns the loss.
fn step<B: Backend<Elem = f32>, const N: usize, O: Optimizer>(
    tape: &mut Tape<B, N>,
    m: &Model,
    opt: &mut O,
    start: mote::Mark,
    bx: &[f32],
    by: &[usize],
) -> f32 {
    tape.rewind(start).unwrap();
    let x = tape.input(&[BATCH, 64], bx).unwrap();
    let y = tape.labels(by).unwrap();
    let logits = m.forward(tape, x).unwrap();
    let loss = tape.cross_entropy(logits, y).unwrap();
    tape.backward(loss).unwrap();
    opt.step(tape).unwrap();
    tape.item(loss).unwrap()
}

/// The step a graph captures: the batch in, forward, loss, backward, optimizer; returns the
/// input, label and loss handles.
fn captured_step<O: Optimizer>(
    t: &mut Tape<Cuda, 64>,
    m: &Model,
    opt: &mut O,
    bx: &[f32],
    by: &[usize],
) -> mote::Result<(Var, Var, Var)> {
    let x = t.input(&[BATCH, 64], bx)?;
    let y = t.labels(by)?;
    let logits = m.forward(t, x)?;
    let loss = t.cross_entropy(logits, y)?;
    t.backward(loss)?;
    opt.step(t)?;
    Ok((x, y, loss))
}

fn params<B: Backend<Elem = f32>, const N: usize>(tape: &Tape<B, N>) -> Vec<f32> {
    let ps: Vec<Var> = tape.params().collect();
    let mut out = Vec::new();
    for p in ps {
        let mut v = vec![0f32; p.numel()];
        tape.read(p, &mut v).unwrap();
        out.extend(v);
    }
    out
}

/// Both Adam buffers of every parameter, read through `Tape::param_state`.
fn adam_state<B: Backend<Elem = f32>, const N: usize>(tape: &Tape<B, N>) -> Vec<f32> {
    let mut out = Vec::new();
    for p in tape.params() {
        for k in 0..2 {
            let v = tape.param_state(p, k).unwrap().expect("an Adam buffer");
            let mut buf = vec![0f32; v.len()];
            tape.backend().read(v.offset, &mut buf).unwrap();
            out.extend(buf);
        }
    }
    out
}

/// The model and its Adam on `tape`, and the mark a step rewinds to.
fn with_adam<B: Backend<Elem = f32>, const N: usize>(
    tape: &mut Tape<B, N>,
) -> (Model, Adam, mote::Mark) {
    let m = model(tape);
    let opt = Adam::new(tape, AdamConfig::default()).unwrap();
    (m, opt, tape.mark())
}

fn compare_training(test: &str, steps: usize, rtol_loss: f32, rtol: f32, atol: f32) {
    let Some(cuda) = gpu(test, FLOATS) else {
        return;
    };
    let (xs, ys) = digits();
    let mut mem = vec![0f32; FLOATS];
    let mut ct = Tape::<Cpu<f32>, 64>::new(&mut mem);
    let mut gt = Tape::<Cuda, 64>::with_backend(cuda);
    let (cm, mut co, cs) = with_adam(&mut ct);
    let (gm, mut go, gs) = with_adam(&mut gt);
    close("initial parameters", &params(&gt), &params(&ct), 0.0, 0.0);
    for i in 0..steps {
        let (bx, by) = batch(&xs, &ys, i);
        let lc = step(&mut ct, &cm, &mut co, cs, &bx, &by);
        let lg = step(&mut gt, &gm, &mut go, gs, &bx, &by);
        assert!(
            (lc - lg).abs() <= rtol_loss * lc.abs().max(1.0),
            "{test}: step {i}: loss gpu {lg} vs cpu {lc}"
        );
    }
    close(test, &params(&gt), &params(&ct), rtol, atol);
}

#[test]
fn one_training_step_matches_the_reference() {
    compare_training(
        "one_training_step_matches_the_reference",
        1,
        1e-5,
        1e-4,
        2e-4,
    );
}

#[test]
fn digits_100_steps_match_the_reference() {
    compare_training(
        "digits_100_steps_match_the_reference",
        100,
        1e-3,
        1e-2,
        1e-3,
    );
}

fn graph_vs_eager<O: Optimizer>(test: &str, make: impl Fn(&mut Tape<Cuda, 64>) -> O) {
    let (Some(a), Some(b)) = (gpu(test, FLOATS), gpu(test, FLOATS)) else {
        return;
    };
    let (xs, ys) = digits();
    let mut eager = Tape::<Cuda, 64>::with_backend(a);
    let mut graphed = Tape::<Cuda, 64>::with_backend(b);
    let (em, gm) = (model(&mut eager), model(&mut graphed));
    let (mut eo, mut go) = (make(&mut eager), make(&mut graphed));
    let (es, gs) = (eager.mark(), graphed.mark());
    let (bx, by) = batch(&xs, &ys, 0);
    let mut graph = Graph::capture(&mut graphed, gs, |t| {
        captured_step(t, &gm, &mut go, &bx, &by)
    })
    .unwrap_or_else(|e| panic!("{test}: capture: {e}"));
    eprintln!("{test}: {} graph nodes per step", graph.nodes());
    let (x, y, loss) = *graph.output();
    for i in 0..20 {
        let (bx, by) = batch(&xs, &ys, i);
        let le = step(&mut eager, &em, &mut eo, es, &bx, &by);
        let by_f: Vec<f32> = by.iter().map(|&v| v as f32).collect();
        graph.write(&mut graphed, x, &bx).unwrap();
        graph.write(&mut graphed, y, &by_f).unwrap();
        graph.replay(&mut graphed).unwrap();
        let lg = graphed.item(loss).unwrap();
        assert!(
            (le - lg).abs() <= 1e-5 * le.abs().max(1.0),
            "{test}: step {i}: graph {lg} vs eager {le}"
        );
    }
    close(test, &params(&graphed), &params(&eager), 1e-4, 2e-4);
    // The graph addresses the captured tape's arena: replaying it on another tape is refused.
    let before = params(&eager);
    assert!(matches!(
        graph.replay(&mut eager),
        Err(mote::Error::InvalidArgument { .. })
    ));
    assert_eq!(params(&eager), before);
    // A bad label in a replayed batch is an error at the next read, as after an eager step.
    let (_, by) = batch(&xs, &ys, 20);
    let mut bad: Vec<f32> = by.iter().map(|&v| v as f32).collect();
    bad[3] = 99.0;
    graph.write(&mut graphed, y, &bad).unwrap();
    graph.replay(&mut graphed).unwrap();
    let read = graphed.item(loss);
    assert!(
        matches!(read, Err(mote::Error::IndexOutOfRange { index: 99, .. })),
        "{test}: a bad label in a replay: {read:?}"
    );
}

#[test]
fn graph_replay_equals_eager_adam() {
    graph_vs_eager("graph_replay_equals_eager_adam", |t| {
        Adam::new(t, AdamConfig::default()).unwrap()
    });
}

/// AMSGrad: the step's one `adam_multi` launch, with each tensor's running maximum, advancing
/// its own step scalars as Adam's does.
#[test]
fn graph_replay_equals_eager_amsgrad() {
    graph_vs_eager("graph_replay_equals_eager_amsgrad", |t| {
        let config = AdamConfig {
            amsgrad: true,
            ..AdamConfig::default()
        };
        Adam::new(t, config).unwrap()
    });
}

/// Centered RMSprop with momentum: three buffers a parameter, every scalar constant.
#[test]
fn graph_replay_equals_eager_rmsprop() {
    graph_vs_eager("graph_replay_equals_eager_rmsprop", |t| {
        let config = RmsPropConfig {
            lr: 1e-3,
            momentum: 0.5,
            centered: true,
            ..RmsPropConfig::default()
        };
        RmsProp::new(t, config).unwrap()
    });
}

/// Adagrad with a decaying rate: the rate is a step scalar that `graph_tick` advances on the
/// device each replay.
#[test]
fn graph_replay_equals_eager_adagrad() {
    graph_vs_eager("graph_replay_equals_eager_adagrad", |t| {
        let config = AdagradConfig {
            lr: 0.05,
            lr_decay: 0.1,
            ..AdagradConfig::default()
        };
        Adagrad::new(t, config).unwrap()
    });
}

#[test]
fn graph_replay_equals_eager_sgd_momentum() {
    graph_vs_eager("graph_replay_equals_eager_sgd_momentum", |t| {
        Sgd::new(
            t,
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        )
        .unwrap()
    });
}

/// Held-back fills and bias broadcasts (`Options::fuse`, on by default) against launching every
/// call as it comes: the same losses and parameters over 20 eager steps and 20 replays (within
/// the graph test's margin: cuBLAS may pick another algorithm for `beta = 0`), and fewer
/// launches per captured step.
#[test]
fn fused_steps_equal_unfused_ones() {
    let test = "fused_steps_equal_unfused_ones";
    if gpu(test, 1).is_none() {
        return;
    }
    let (xs, ys) = digits();
    let run = |fuse: bool| -> (Vec<f32>, Vec<f32>, usize) {
        let cuda = Cuda::with_options(
            FLOATS,
            Options {
                fuse,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("{test}: {e}"));
        let mut t = Tape::<Cuda, 64>::with_backend(cuda);
        let m = model(&mut t);
        let mut opt = Adam::new(&mut t, AdamConfig::default()).unwrap();
        let start = t.mark();
        let mut losses = Vec::new();
        for i in 0..20 {
            let (bx, by) = batch(&xs, &ys, i);
            losses.push(step(&mut t, &m, &mut opt, start, &bx, &by));
        }
        let (bx, by) = batch(&xs, &ys, 20);
        let mut graph = Graph::capture(&mut t, start, |t| captured_step(t, &m, &mut opt, &bx, &by))
            .unwrap_or_else(|e| panic!("{test}: capture: {e}"));
        let (x, y, loss) = *graph.output();
        for i in 20..40 {
            let (bx, by) = batch(&xs, &ys, i);
            let by_f: Vec<f32> = by.iter().map(|&v| v as f32).collect();
            graph.write(&mut t, x, &bx).unwrap();
            graph.write(&mut t, y, &by_f).unwrap();
            graph.replay(&mut t).unwrap();
            losses.push(t.item(loss).unwrap());
        }
        (losses, params(&t), graph.nodes())
    };
    let (lf, pf, nf) = run(true);
    let (lu, pu, nu) = run(false);
    eprintln!("{test}: graph nodes per step: {nf} fused, {nu} unfused");
    for (i, (a, b)) in lf.iter().zip(&lu).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{test}: step {i}: fused {a} vs unfused {b}"
        );
    }
    close(test, &pf, &pu, 1e-4, 2e-4);
    assert!(nf < nu, "{test}: {nf} launches fused, {nu} without");
}

/// A capture whose step fails runs nothing of it: the work it held back (the step's last
/// gradient kernel, its queued Adam updates) is dropped, not launched by the next eager call;
/// the parameters are as before it, and a capture after it works.
#[test]
fn failed_capture_runs_nothing() {
    let test = "failed_capture_runs_nothing";
    let Some(cuda) = gpu(test, FLOATS) else {
        return;
    };
    let (xs, ys) = digits();
    let mut t = Tape::<Cuda, 64>::with_backend(cuda);
    let m = model(&mut t);
    let mut opt = Adam::new(&mut t, AdamConfig::default()).unwrap();
    let start = t.mark();
    let (bx, by) = batch(&xs, &ys, 0);
    step(&mut t, &m, &mut opt, start, &bx, &by);
    let before = params(&t);
    let failed = Graph::capture(&mut t, start, |t| {
        captured_step(t, &m, &mut opt, &bx, &by)?;
        Err::<(), _>(mote::Error::InvalidArgument {
            what: "the step gave up",
        })
    });
    assert!(failed.is_err(), "{test}: the capture succeeded");
    let after = params(&t);
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{test}: parameters changed by a failed capture"
    );
    let mut graph = Graph::capture(&mut t, start, |t| captured_step(t, &m, &mut opt, &bx, &by))
        .unwrap_or_else(|e| panic!("{test}: capture after a failed one: {e}"));
    graph.replay(&mut t).unwrap();
    let (_, _, loss) = *graph.output();
    assert!(t.item(loss).unwrap().is_finite(), "{test}");
}

/// A step with an op the host drives (dropout draws its mask on the host) cannot be captured:
/// every replay would reuse the capture's mask. The capture is refused, and the same step
/// runs eagerly.
#[test]
fn host_driven_ops_are_refused_in_a_capture() {
    let test = "host_driven_ops_are_refused_in_a_capture";
    let Some(cuda) = gpu(test, FLOATS) else {
        return;
    };
    let (xs, ys) = digits();
    let mut t = Tape::<Cuda, 64>::with_backend(cuda);
    let m = model(&mut t);
    let drop = mote::Dropout::new(0.25, 7).unwrap();
    let mut opt = Adam::new(&mut t, AdamConfig::default()).unwrap();
    let start = t.mark();
    let (bx, by) = batch(&xs, &ys, 0);
    let dropped = |t: &mut Tape<Cuda, 64>, opt: &mut Adam| -> mote::Result<Var> {
        let x = t.input(&[BATCH, 64], &bx)?;
        let y = t.labels(&by)?;
        let h = drop.forward(t, x)?;
        let out = m.forward(t, h)?;
        let loss = t.cross_entropy(out, y)?;
        t.backward(loss)?;
        opt.step(t)?;
        Ok(loss)
    };
    let e = Graph::capture(&mut t, start, |t| dropped(t, &mut opt))
        .err()
        .unwrap_or_else(|| panic!("{test}: the capture succeeded"));
    assert!(
        matches!(e, mote_cuda::CudaError::Mote(mote::Error::InvalidArgument { what }) if what.contains("dropout")),
        "{test}: {e}"
    );
    t.rewind(start).unwrap();
    let loss = dropped(&mut t, &mut opt).unwrap();
    assert!(t.item(loss).unwrap().is_finite(), "{test}");
}

/// A step that launches nothing captures no graph: an error, not a graph that replays as a
/// no-op. Synchronising the device inside a capture is refused (it would invalidate it), and
/// the backend works eagerly afterwards.
#[test]
fn an_empty_step_and_a_sync_are_refused_in_a_capture() {
    let test = "an_empty_step_and_a_sync_are_refused_in_a_capture";
    let Some(cuda) = gpu(test, FLOATS) else {
        return;
    };
    let mut t = Tape::<Cuda, 64>::with_backend(cuda);
    let start = t.mark();
    let e = Graph::capture(&mut t, start, |_| Ok(()))
        .err()
        .unwrap_or_else(|| panic!("{test}: an empty capture succeeded"));
    assert!(e.to_string().contains("launched nothing"), "{test}: {e}");
    let m = model(&mut t);
    let start = t.mark();
    let (xs, _) = digits();
    let e = Graph::capture(&mut t, start, |t| {
        let x = t.input(&[BATCH, 64], &xs[..BATCH * 64])?;
        m.forward(t, x)?;
        t.backend().sync()
    })
    .err()
    .unwrap_or_else(|| panic!("{test}: a sync was captured"));
    assert!(
        matches!(
            e,
            mote_cuda::CudaError::Mote(mote::Error::Device { what: "sync" })
        ),
        "{test}: {e}"
    );
    t.rewind(start).unwrap();
    let x = t.input(&[BATCH, 64], &xs[..BATCH * 64]).unwrap();
    let out = m.forward(&mut t, x).unwrap();
    t.backend().sync().unwrap();
    let mut o = vec![f32::NAN; out.numel()];
    t.read(out, &mut o).unwrap();
    assert!(o.iter().all(|v| v.is_finite()), "{test}: {o:?}");
}

/// Every allocation of a step starts at a multiple of `Options::align` (64 elements, 256
/// bytes): inputs, activations, the loss, parameters, their gradients and both Adam buffers,
/// where the unaligned reference places the activation gradients of the backward 8 bytes past
/// a 16-byte boundary (after the loss's scalar). The Adam state reads back as the reference's.
#[test]
fn allocations_are_aligned() {
    let test = "allocations_are_aligned";
    let Some(cuda) = gpu(test, FLOATS) else {
        return;
    };
    let align = Options::default().align;
    assert!(align > 1, "{test}: the default alignment checks nothing");
    assert_eq!(cuda.align(), align);
    let (xs, ys) = digits();
    let mut mem = vec![0f32; FLOATS];
    let mut ct = Tape::<Cpu<f32>, 64>::new(&mut mem);
    let mut gt = Tape::<Cuda, 64>::with_backend(cuda);
    let (cm, mut co, cs) = with_adam(&mut ct);
    let (gm, mut go, gs) = with_adam(&mut gt);
    let (bx, by) = batch(&xs, &ys, 0);
    step(&mut ct, &cm, &mut co, cs, &bx, &by);
    step(&mut gt, &gm, &mut go, gs, &bx, &by);
    let at = |what: &str, offset: usize| {
        assert_eq!(offset % align, 0, "{test}: {what} starts at {offset}");
    };
    for (i, p) in gt.params().collect::<Vec<_>>().into_iter().enumerate() {
        at(&format!("parameter {i}"), p.offset());
        at(
            &format!("gradient {i}"),
            gt.grad(p).unwrap().unwrap().offset,
        );
        for k in 0..2 {
            let v = gt.param_state(p, k).unwrap().unwrap();
            at(&format!("Adam buffer {k} of parameter {i}"), v.offset);
        }
        assert_eq!(gt.param_state(p, 2).unwrap(), None, "{test}");
    }
    // The reference (unaligned) and the GPU keep the same Adam state.
    close(test, &adam_state(&gt), &adam_state(&ct), 1e-4, 1e-6);
    // Then a step's activations.
    gt.rewind(gs).unwrap();
    let x = gt.input(&[BATCH, 64], &bx).unwrap();
    let y = gt.labels(&by).unwrap();
    let logits = gm.forward(&mut gt, x).unwrap();
    let loss = gt.cross_entropy(logits, y).unwrap();
    gt.backward(loss).unwrap();
    for (what, v) in [
        ("input", x),
        ("labels", y),
        ("logits", logits),
        ("loss", loss),
    ] {
        at(what, v.offset());
    }
    at(
        "the logits' gradient",
        gt.grad(logits).unwrap().unwrap().offset,
    );
}

/// An alignment that is not a power of two, or past `MAX_ALIGN`, is refused with a clear error
/// (before any device is looked for).
#[test]
fn bad_alignment_is_refused() {
    for align in [0, 3, 96, mote_cuda::MAX_ALIGN * 2] {
        let e = Cuda::with_options(
            16,
            Options {
                align,
                ..Options::default()
            },
        )
        .expect_err("a bad alignment was accepted");
        assert!(e.to_string().contains("power of two"), "align {align}: {e}");
    }
}

/// A GPU number past the machine's says so (and which ones there are), rather than "no CUDA
/// device".
#[test]
fn a_missing_gpu_number_is_named() {
    let Some(be) = gpu("a_missing_gpu_number_is_named", 16) else {
        return;
    };
    drop(be);
    let e = Cuda::with_options(
        16,
        Options {
            device: 4096,
            ..Options::default()
        },
    )
    .expect_err("GPU 4096 was found");
    assert!(
        e.to_string()
            .contains("GPU 4096 asked for, but this machine has"),
        "{e}"
    );
}

/// The tape of `a_captured_step_updates_hundreds_of_tensors`, and its optimizer's step.
type Big = Tape<Cuda, 2048>;
type Stepper = Box<dyn FnMut(&mut Big) -> mote::Result<()>>;

/// A captured step that updates 300 tensors, past the 256 optimizer slots a graph holds: the
/// per-tensor launches of SGD and of Adagrad share their step's one slot, so the capture
/// succeeds, and 5 replays equal 5 eager steps (Adagrad's rate decaying on the device).
#[test]
fn a_captured_step_updates_hundreds_of_tensors() {
    let test = "a_captured_step_updates_hundreds_of_tensors";
    for adagrad in [false, true] {
        let (Some(a), Some(b)) = (gpu(test, 1 << 16), gpu(test, 1 << 16)) else {
            return;
        };
        let make = |t: &mut Tape<Cuda, 2048>| -> (Vec<Var>, Stepper) {
            let ps: Vec<Var> = (0..300)
                .map(|i| t.param(&[2], &[0.5 + i as f32 * 1e-3, -0.5]).unwrap())
                .collect();
            if adagrad {
                let config = AdagradConfig {
                    lr: 0.05,
                    lr_decay: 0.2,
                    ..AdagradConfig::default()
                };
                let mut o = Adagrad::new(t, config).unwrap();
                (ps, Box::new(move |t| o.step(t)))
            } else {
                let config = SgdConfig {
                    lr: 0.05,
                    momentum: 0.9,
                    ..SgdConfig::default()
                };
                let mut o = Sgd::new(t, config).unwrap();
                (ps, Box::new(move |t| o.step(t)))
            }
        };
        // The loss: the sum of every parameter's squares (gradient 2 p).
        let step = |t: &mut Tape<Cuda, 2048>,
                    ps: &[Var],
                    opt: &mut dyn FnMut(&mut Big) -> mote::Result<()>|
         -> mote::Result<Var> {
            let mut total = None;
            for &p in ps {
                let s = t.square(p)?;
                let s = t.sum(s)?;
                total = Some(match total {
                    None => s,
                    Some(acc) => t.add(acc, s)?,
                });
            }
            let loss = total.expect("parameters");
            t.backward(loss)?;
            opt(t)?;
            Ok(loss)
        };
        let mut eager = Tape::<Cuda, 2048>::with_backend(a);
        let mut graphed = Tape::<Cuda, 2048>::with_backend(b);
        let (ep, mut eo) = make(&mut eager);
        let (gp, mut go) = make(&mut graphed);
        let (es, gs) = (eager.mark(), graphed.mark());
        let graph = Graph::capture(&mut graphed, gs, |t| step(t, &gp, &mut *go));
        let mut graph = graph.unwrap_or_else(|e| panic!("{test} (adagrad {adagrad}): {e}"));
        for _ in 0..5 {
            eager.rewind(es).unwrap();
            step(&mut eager, &ep, &mut *eo).unwrap();
            graph.replay(&mut graphed).unwrap();
        }
        close(test, &params(&graphed), &params(&eager), 1e-5, 1e-6);
    }
}

/// The step of `a_composed_class_loss_trains_in_a_graph`: PyTorch's
/// `nn.CrossEntropyLoss(weight=w, ignore_index=3, label_smoothing=0.1, reduction="sum")`,
/// composed on the device (its one-hot rows made from `arange`, concatenations and a fused
/// label check), divided by the batch; SGD. Returns the input, label and loss handles.
fn composed_step<B: Backend<Elem = f32>, const N: usize>(
    t: &mut Tape<B, N>,
    m: &Model,
    opt: &mut Sgd,
    bx: &[f32],
    by: &[usize],
) -> mote::Result<(Var, Var, Var)> {
    use mote::nn::loss::{CrossEntropyLoss, Reduction};
    let x = t.input(&[BATCH, 64], bx)?;
    let y = t.labels(by)?;
    let w: Vec<f32> = (0..10).map(|c| 0.5 + c as f32 / 10.0).collect();
    let weight = Some(t.input(&[10], &w)?);
    let logits = m.forward(t, x)?;
    let ce = CrossEntropyLoss {
        weight,
        ignore_index: Some(3),
        label_smoothing: 0.1,
        reduction: Reduction::Sum,
    };
    let total = ce.forward(t, logits, y)?;
    let loss = t.mul_scalar(total, 1.0 / BATCH as f32)?;
    t.backward(loss)?;
    opt.step(t)?;
    Ok((x, y, loss))
}

/// A loss composed of many small ops (`mote::nn::loss`'s weighted, smoothed sum with ignored
/// rows) trains the same on the reference backend, eagerly on the GPU and in a captured graph:
/// 10 steps, every loss within `1e-4` relative, the parameters within `1e-4 + 1e-3 |x|`.
#[test]
fn a_composed_class_loss_trains_in_a_graph() {
    let test = "a_composed_class_loss_trains_in_a_graph";
    let (Some(a), Some(b)) = (gpu(test, FLOATS), gpu(test, FLOATS)) else {
        return;
    };
    let (xs, ys) = digits();
    let mut mem = vec![0f32; FLOATS];
    let mut cpu = Tape::<Cpu<f32>, 64>::new(&mut mem);
    let mut eager = Tape::<Cuda, 64>::with_backend(a);
    let mut graphed = Tape::<Cuda, 64>::with_backend(b);
    let sgd = SgdConfig {
        lr: 0.05,
        ..SgdConfig::default()
    };
    let (cm, em, gm) = (model(&mut cpu), model(&mut eager), model(&mut graphed));
    let mut co = Sgd::new(&mut cpu, sgd).unwrap();
    let mut eo = Sgd::new(&mut eager, sgd).unwrap();
    let mut go = Sgd::new(&mut graphed, sgd).unwrap();
    let (cs, es, gs) = (cpu.mark(), eager.mark(), graphed.mark());
    let (bx, by) = batch(&xs, &ys, 0);
    let mut graph = Graph::capture(&mut graphed, gs, |t| {
        composed_step(t, &gm, &mut go, &bx, &by)
    })
    .unwrap_or_else(|e| panic!("{test}: capture: {e}"));
    let (x, y, loss) = *graph.output();
    for i in 0..10 {
        let (bx, by) = batch(&xs, &ys, i);
        cpu.rewind(cs).unwrap();
        let (_, _, lc) = composed_step(&mut cpu, &cm, &mut co, &bx, &by).unwrap();
        let lc = cpu.item(lc).unwrap();
        eager.rewind(es).unwrap();
        let (_, _, le) = composed_step(&mut eager, &em, &mut eo, &bx, &by).unwrap();
        let le = eager.item(le).unwrap();
        let by_f: Vec<f32> = by.iter().map(|&v| v as f32).collect();
        graph.write(&mut graphed, x, &bx).unwrap();
        graph.write(&mut graphed, y, &by_f).unwrap();
        graph.replay(&mut graphed).unwrap();
        let lg = graphed.item(loss).unwrap();
        for (what, l) in [("eager", le), ("graph", lg)] {
            assert!(
                (l - lc).abs() <= 1e-4 * lc.abs(),
                "{test}: step {i}: {what} {l} vs reference {lc}"
            );
        }
    }
    close(test, &params(&eager), &params(&cpu), 1e-3, 1e-4);
    close(test, &params(&graphed), &params(&cpu), 1e-3, 1e-4);
}

/// The arena of `sequence_models_train_in_a_graph`'s tapes.
const SEQ_FLOATS: usize = 1 << 20;

/// The sequence model of `sequence_models_train_in_a_graph`: the digits' rows as 8 tokens, a
/// linear embedding, causal multi-head self-attention, an LSTM over the tokens, its last state
/// into a linear classifier.
struct SeqModel {
    embed: Linear,
    attention: mote::nn::attention::MultiheadAttention,
    lstm: mote::nn::rnn::Lstm,
    head: Linear,
}

impl SeqModel {
    fn new<B: Backend<Elem = f32>, const N: usize>(t: &mut Tape<B, N>) -> Self {
        let mut rng = Rng::new(11);
        SeqModel {
            embed: Linear::new(t, 8, 16, &mut rng).unwrap(),
            attention: mote::nn::attention::MultiheadAttention::new(t, 16, 4, &mut rng).unwrap(),
            lstm: mote::nn::rnn::Lstm::new(t, 16, 16, &mut rng).unwrap(),
            head: Linear::new(t, 16, 10, &mut rng).unwrap(),
        }
    }

    /// One training step on a batch; returns the input, label and loss handles.
    fn step<B: Backend<Elem = f32>, const N: usize>(
        &self,
        t: &mut Tape<B, N>,
        opt: &mut Adam,
        bx: &[f32],
        by: &[usize],
    ) -> mote::Result<(Var, Var, Var)> {
        let x = t.input(&[BATCH, 8, 8], bx)?;
        let y = t.labels(by)?;
        let h = self.embed.forward(t, x)?;
        let a = self.attention.attend(t, h, h, h, None, None, true)?;
        let h = t.add(h, a)?;
        let (_, (last, _)) = self.lstm.run(t, h, None)?;
        let logits = self.head.forward(t, last)?;
        let loss = t.cross_entropy(logits, y)?;
        t.backward(loss)?;
        opt.step(t)?;
        Ok((x, y, loss))
    }
}

/// Attention (its causal mask made on the device) and an LSTM unrolled over 8 steps, captured
/// as one CUDA graph: 8 replays equal 8 eager steps on the GPU and 8 steps on the reference
/// backend (losses within `1e-4` relative, parameters within `1e-4 + 1e-3 |x|`).
#[test]
fn sequence_models_train_in_a_graph() {
    let test = "sequence_models_train_in_a_graph";
    let (Some(a), Some(b)) = (gpu(test, SEQ_FLOATS), gpu(test, SEQ_FLOATS)) else {
        return;
    };
    let (xs, ys) = digits();
    let mut mem = vec![0f32; SEQ_FLOATS];
    let mut cpu = Tape::<Cpu<f32>, 1024>::new(&mut mem);
    let mut eager = Tape::<Cuda, 1024>::with_backend(a);
    let mut graphed = Tape::<Cuda, 1024>::with_backend(b);
    let (cm, em, gm) = (
        SeqModel::new(&mut cpu),
        SeqModel::new(&mut eager),
        SeqModel::new(&mut graphed),
    );
    let config = AdamConfig {
        lr: 3e-3,
        ..AdamConfig::default()
    };
    let mut co = Adam::new(&mut cpu, config).unwrap();
    let mut eo = Adam::new(&mut eager, config).unwrap();
    let mut go = Adam::new(&mut graphed, config).unwrap();
    let (cs, es, gs) = (cpu.mark(), eager.mark(), graphed.mark());
    let (bx, by) = batch(&xs, &ys, 0);
    let mut graph = Graph::capture(&mut graphed, gs, |t| gm.step(t, &mut go, &bx, &by))
        .unwrap_or_else(|e| panic!("{test}: capture: {e}"));
    eprintln!("{test}: {} graph nodes per step", graph.nodes());
    let (x, y, loss) = *graph.output();
    for i in 0..8 {
        let (bx, by) = batch(&xs, &ys, i);
        cpu.rewind(cs).unwrap();
        let (_, _, lc) = cm.step(&mut cpu, &mut co, &bx, &by).unwrap();
        let lc = cpu.item(lc).unwrap();
        eager.rewind(es).unwrap();
        let (_, _, le) = em.step(&mut eager, &mut eo, &bx, &by).unwrap();
        let le = eager.item(le).unwrap();
        let by_f: Vec<f32> = by.iter().map(|&v| v as f32).collect();
        graph.write(&mut graphed, x, &bx).unwrap();
        graph.write(&mut graphed, y, &by_f).unwrap();
        graph.replay(&mut graphed).unwrap();
        let lg = graphed.item(loss).unwrap();
        for (what, l) in [("eager", le), ("graph", lg)] {
            assert!(
                (l - lc).abs() <= 1e-4 * lc.abs(),
                "{test}: step {i}: {what} {l} vs reference {lc}"
            );
        }
    }
    close(test, &params(&eager), &params(&cpu), 1e-3, 1e-4);
    close(test, &params(&graphed), &params(&cpu), 1e-3, 1e-4);
}
