//! Data-parallel replicas against intra-op threads on the same workloads (`WORKLOADS.md`):
//! one tape on the multithreaded backend, against N replicas (each a tape on the same backend)
//! on threads, each on a shard of the batch (`mote_runtime::data_parallel`).
//!
//! Run: `cargo run --release -p mote-runtime --example replicas [steps]`

use std::time::Instant;

use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Rng, Tape};
use mote_runtime::data_parallel::{DataParallel, Targets};
use mote_runtime::model::Mlp;
use mote_runtime::parallel::Parallel;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `step` over `steps` steps in samples of `per`; returns the median per step, in us.
fn time(steps: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..steps / 10 + 1 {
        step();
    }
    let per = (steps / 20).max(1);
    let mut samples = Vec::new();
    for _ in 0..steps / per {
        let t = Instant::now();
        for _ in 0..per {
            step();
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6 / per as f64);
    }
    median(samples)
}

/// An MLP of `sizes` (ReLU between layers), the same on every call (fixed seed).
fn mlp<B: mote::Backend, const N: usize>(t: &mut Tape<B, N>, sizes: &[usize]) -> mote::Result<Mlp> {
    let mut r = Rng::new(7);
    let layers = sizes
        .windows(2)
        .map(|w| Linear::new(t, w[0], w[1], &mut r))
        .collect::<mote::Result<_>>()?;
    Ok(Mlp {
        convs: vec![],
        image: vec![],
        layers,
    })
}

fn workload(name: &str, sizes: &[usize], batch: usize, steps: usize) {
    let mut rng = Rng::new(1);
    let (i, o) = (sizes[0], *sizes.last().unwrap());
    let xs: Vec<f32> = (0..batch * i).map(|_| rng.next_f32()).collect();
    let ys: Vec<usize> = (0..batch).map(|k| k % o).collect();
    let floats = 4 * mote::plan::mlp(
        sizes,
        batch,
        mote::plan::Loss::CrossEntropy,
        mote::plan::Opt::Adam,
    );
    let cfg = AdamConfig::default();
    let mut row = format!("{name:<10}");

    // Intra-op threads: one tape on the parallel backend.
    let mut mem = vec![0f32; floats];
    let mut tape = Tape::<Parallel<f32>, 32>::with_backend(Parallel::new(&mut mem));
    let net = mlp(&mut tape, sizes).unwrap();
    let mut opt = Adam::new(&mut tape, cfg).unwrap();
    let start = tape.mark();
    let us = time(steps, || {
        tape.rewind(start).unwrap();
        let x = tape.input(&[batch, i], &xs).unwrap();
        let y = tape.labels(&ys).unwrap();
        let h = net.forward(&mut tape, x).unwrap();
        let loss = tape.cross_entropy(h, y).unwrap();
        tape.backward(loss).unwrap();
        opt.step(&mut tape).unwrap();
    });
    row += &format!(" {us:>12.1}");

    // Replicas, each a tape on the parallel backend.
    for n in [1usize, 2] {
        let mut arenas = vec![vec![0f32; floats]; n];
        let mut dp = DataParallel::<Parallel<f32>, Mlp, Adam, 32>::new(
            &mut arenas,
            Parallel::new,
            |t: &mut Tape<Parallel<'_, f32>, 32>| Ok((mlp(t, sizes)?, Adam::new(t, cfg)?)),
        )
        .unwrap();
        let us = time(steps, || {
            dp.step(&xs, &[i], Targets::Labels(&ys), |t, m, x, y| {
                let p = m.forward(t, x)?;
                t.cross_entropy(p, y)
            })
            .unwrap();
        });
        row += &format!(" {us:>12.1}");
    }
    println!("{row}");
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!(
        "{:<10} {:>12} {:>12} {:>12}   (us per step, median; {} threads)",
        "workload",
        "intra-op",
        "1 replica",
        "2 replicas",
        mote_runtime::parallel::threads()
    );
    workload("W-digits", &[64, 32, 10], 32, steps);
    workload("W-mnist", &[784, 256, 128, 10], 128, (steps / 20).max(20));
}
