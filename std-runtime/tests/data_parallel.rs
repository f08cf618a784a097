//! Data-parallel equivalence: a step over N replicas (each on a shard of the batch) equals a
//! single-tape step on the whole batch, within f32 tolerance, and the replicas stay identical.

use mote::{Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};
use mote_runtime::data_parallel::{DataParallel, Targets};

type Mlp = (Linear, Relu, Linear);

fn build(tape: &mut Tape<Cpu<'_, f32>, 32>) -> mote::Result<(Mlp, Adam)> {
    let mut rng = Rng::new(11);
    let model = (
        Linear::new(tape, 6, 16, &mut rng)?,
        Relu,
        Linear::new(tape, 16, 4, &mut rng)?,
    );
    let opt = Adam::new(
        tape,
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
    )?;
    Ok((model, opt))
}

fn batch(step: u64, rows: usize) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
    let mut rng = Rng::new(100 + step);
    let xs: Vec<f32> = (0..rows * 6).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    let labels: Vec<usize> = (0..rows).map(|_| (rng.next_u32() % 4) as usize).collect();
    let values: Vec<f32> = (0..rows * 4).map(|_| rng.next_f32()).collect();
    (xs, labels, values)
}

/// Runs `steps` steps of classification (or regression) on a single tape, returning the losses
/// and the final parameters.
fn single(steps: u64, rows: usize, classify: bool) -> (Vec<f32>, Vec<f32>) {
    let mut mem = vec![0f32; 1 << 16];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let (model, mut opt) = build(&mut tape).unwrap();
    let start = tape.mark();
    let mut losses = Vec::new();
    for s in 0..steps {
        let (xs, labels, values) = batch(s, rows);
        tape.rewind(start).unwrap();
        let x = tape.input(&[rows, 6], &xs).unwrap();
        let p = model.forward(&mut tape, x).unwrap();
        let l = if classify {
            let y = tape.labels(&labels).unwrap();
            tape.cross_entropy(p, y).unwrap()
        } else {
            let y = tape.input(&[rows, 4], &values).unwrap();
            tape.mse(p, y).unwrap()
        };
        tape.backward(l).unwrap();
        opt.step(&mut tape).unwrap();
        losses.push(tape.item(l).unwrap());
    }
    let params = tape
        .params()
        .flat_map(|p| tape.data(p).unwrap().to_vec())
        .collect();
    (losses, params)
}

fn parallel(replicas: usize, steps: u64, rows: usize, classify: bool) -> (Vec<f32>, Vec<f32>) {
    parallel_with(replicas, steps, rows, classify, None)
}

/// As [`parallel`], with the all-reduce in buckets of `floats` during the backward
/// (`Some(Some(floats))`), or after it (`Some(None)`), or the default (`None`).
fn parallel_with(
    replicas: usize,
    steps: u64,
    rows: usize,
    classify: bool,
    buckets: Option<Option<usize>>,
) -> (Vec<f32>, Vec<f32>) {
    let mut arenas = DataParallel::<Cpu<f32>, Mlp, Adam, 32>::arenas(replicas, 1 << 16);
    let mut dp = DataParallel::new(&mut arenas, Cpu::new, build).unwrap();
    if let Some(b) = buckets {
        dp.set_buckets(b).unwrap();
    }
    let mut losses = Vec::new();
    for s in 0..steps {
        let (xs, labels, values) = batch(s, rows);
        let targets = if classify {
            Targets::Labels(&labels)
        } else {
            Targets::Values(&values, &[4])
        };
        let l = dp
            .step(&xs, &[6], targets, |t, m, x, y| {
                let p = m.forward(t, x)?;
                if classify {
                    t.cross_entropy(p, y)
                } else {
                    t.mse(p, y)
                }
            })
            .unwrap();
        losses.push(l);
        assert_eq!(dp.divergence().unwrap(), 0.0, "replicas out of step");
    }
    let (tape, _) = dp.primary();
    let params = tape
        .params()
        .flat_map(|p| tape.data(p).unwrap().to_vec())
        .collect();
    (losses, params)
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn replicas_match_one_tape_on_the_whole_batch() {
    for classify in [true, false] {
        // 30 rows: shards of 30, 15/15, and 7/8/7/8.
        let (want_l, want_p) = single(10, 30, classify);
        for n in [1, 2, 4] {
            let (l, p) = parallel(n, 10, 30, classify);
            close(&l, &want_l, 1e-5, &format!("loss, {n} replicas"));
            close(&p, &want_p, 1e-5, &format!("params, {n} replicas"));
        }
    }
}

/// The all-reduce overlapped with the backward, in buckets of any size (one per parameter up
/// to one for all), gives the same sums as the one after the backward, bit for bit.
#[test]
fn bucketed_all_reduce_equals_the_one_after_the_backward() {
    for classify in [true, false] {
        for n in [2, 3, 4] {
            // 30 rows, and 3 (some replicas without rows when n = 4).
            for rows in [30, 3] {
                let want = parallel_with(n, 6, rows, classify, Some(None));
                for floats in [1, 20, 64, 1 << 20] {
                    let got = parallel_with(n, 6, rows, classify, Some(Some(floats)));
                    assert_eq!(got, want, "{n} replicas, {rows} rows, buckets of {floats}");
                }
            }
        }
    }
}

#[test]
fn more_replicas_than_rows_still_train() {
    let (want_l, want_p) = single(3, 3, true);
    let (l, p) = parallel(4, 3, 3, true);
    close(&l, &want_l, 1e-5, "loss");
    close(&p, &want_p, 1e-5, "params");
}

#[test]
fn bad_batches_are_errors() {
    let mut arenas = DataParallel::<Cpu<f32>, Mlp, Adam, 32>::arenas(2, 1 << 16);
    let mut dp = DataParallel::new(&mut arenas, Cpu::new, build).unwrap();
    let f = |t: &mut Tape<Cpu<'_, f32>, 32>, m: &Mlp, x, y| {
        let p = m.forward(t, x)?;
        t.cross_entropy(p, y)
    };
    assert!(dp.step(&[0.0; 7], &[6], Targets::Labels(&[0]), f).is_err());
    assert!(dp.step(&[0.0; 12], &[6], Targets::Labels(&[0]), f).is_err());
    assert!(dp
        .step(&[0.0; 12], &[6], Targets::Labels(&[0, 9]), f)
        .is_err());
    // An empty batch has no mean loss: refused, and nothing moves.
    let params = |dp: &mut DataParallel<Cpu<f32>, Mlp, Adam, 32>| {
        let (t, _) = dp.primary();
        let ps: Vec<_> = t.params().collect();
        ps.iter()
            .flat_map(|&p| t.data(p).unwrap().to_vec())
            .collect::<Vec<f32>>()
    };
    let before = params(&mut dp);
    assert!(matches!(
        dp.step(&[], &[6], Targets::Labels(&[]), f),
        Err(mote::Error::LengthMismatch { .. })
    ));
    assert_eq!(params(&mut dp), before);
    assert_eq!(dp.divergence().unwrap(), 0.0);
}

// The shared-memory all-reduce checks its arguments before it sums anything.
#[test]
fn all_reduce_gradients_refuses_mismatched_arguments() {
    use mote_runtime::data_parallel::all_reduce_gradients;
    let (mut a, mut b, mut c) = (
        vec![0f32; 1 << 14],
        vec![0f32; 1 << 14],
        vec![0f32; 1 << 14],
    );
    let mut ta = Tape::<Cpu<f32>, 32>::new(&mut a);
    let mut tb = Tape::<Cpu<f32>, 32>::new(&mut b);
    let mut tc = Tape::<Cpu<f32>, 32>::new(&mut c);
    build(&mut ta).unwrap();
    build(&mut tb).unwrap();
    // Another model: 6 -> 8 -> 4.
    let mut rng = Rng::new(11);
    Linear::new(&mut tc, 6, 8, &mut rng).unwrap();
    Linear::new(&mut tc, 8, 4, &mut rng).unwrap();
    let grads = |t: &Tape<Cpu<f32>, 32>| -> Vec<f32> {
        let ps: Vec<_> = t.params().collect();
        ps.iter()
            .flat_map(|&p| t.grad_data(p).unwrap().unwrap().to_vec())
            .collect()
    };
    // Fewer weights than tapes.
    let e = all_reduce_gradients(&mut [&mut ta, &mut tb], &[1.0], 64).unwrap_err();
    assert!(matches!(e, mote::Error::LengthMismatch { .. }), "{e}");
    // Tapes whose parameters differ.
    let (ga, gc) = (grads(&ta), grads(&tc));
    let e = all_reduce_gradients(&mut [&mut ta, &mut tc], &[0.5, 0.5], 64).unwrap_err();
    assert!(matches!(e, mote::Error::LengthMismatch { .. }), "{e}");
    assert_eq!((grads(&ta), grads(&tc)), (ga, gc));
}

#[test]
fn replicas_that_start_different_are_refused() {
    let mut arenas = DataParallel::<Cpu<f32>, Mlp, Adam, 32>::arenas(2, 1 << 16);
    let mut seed = 0;
    let res = DataParallel::new(
        &mut arenas,
        Cpu::new,
        |tape: &mut Tape<Cpu<'_, f32>, 32>| {
            seed += 1;
            let mut rng = Rng::new(seed);
            let model = (
                Linear::new(tape, 6, 16, &mut rng)?,
                Relu,
                Linear::new(tape, 16, 4, &mut rng)?,
            );
            Ok((model, Adam::new(tape, AdamConfig::default())?))
        },
    );
    assert!(res.is_err());
}

type BnNet = (Linear, mote::BatchNorm, Relu, Linear);

fn build_bn(tape: &mut Tape<Cpu<'_, f32>, 64>) -> mote::Result<(BnNet, Adam)> {
    let mut rng = Rng::new(5);
    let model = (
        Linear::new(tape, 6, 8, &mut rng)?,
        mote::BatchNorm::new(tape, 8)?,
        Relu,
        Linear::new(tape, 8, 4, &mut rng)?,
    );
    Ok((model, Adam::new(tape, AdamConfig::default())?))
}

/// Batch normalisation's running statistics are parameters created frozen (no gradient): each
/// replica updates them from its own shard, and replica 0's are copied to the others after
/// every step (PyTorch's buffer broadcast), so the replicas stay identical; one replica works
/// too.
#[test]
fn replicas_with_batch_norm_stay_identical() {
    for n in [1, 2, 3] {
        let mut arenas = DataParallel::<Cpu<f32>, BnNet, Adam, 64>::arenas(n, 1 << 16);
        let mut dp = DataParallel::new(&mut arenas, Cpu::new, build_bn).unwrap();
        for s in 0..5 {
            let (xs, labels, _) = batch(s, 12);
            let l = dp
                .step(&xs, &[6], Targets::Labels(&labels), |t, m, x, y| {
                    let p = m.forward(t, x)?;
                    t.cross_entropy(p, y)
                })
                .unwrap();
            assert!(l.is_finite());
            assert_eq!(dp.divergence().unwrap(), 0.0, "{n} replicas, step {s}");
        }
        let (tape, model) = dp.primary();
        let mut rm = vec![0.0; 8];
        tape.read(model.1.running_mean, &mut rm).unwrap();
        assert!(rm.iter().any(|&v| v != 0.0), "running mean moved: {rm:?}");
    }
}
