//! Data-parallel replicas against intra-op threads on the same workloads (`WORKLOADS.md`):
//! one tape on the multithreaded backend, against N replicas on threads, each on a shard of
//! the batch (`mote_runtime::data_parallel`), each replica's tape on the multithreaded backend
//! or on the serial one (what `mote train --replicas N` runs). Replicas run on rayon's threads,
//! where the multithreaded backend keeps its work on the calling thread (the replicas already
//! occupy the cores), so its column measures its kernels on one thread per replica.
//!
//! Run: `cargo run --release -p mote-runtime --example replicas [steps]`

use std::time::Instant;

use mote::{Adam, AdamConfig, Cpu, HostBackend, Linear, Module, Optimizer, Rng, Tape};
use mote_runtime::data_parallel::{default_buckets, DataParallel, Targets, BUCKET_FLOATS};
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

/// The default all-reduce of replicas of an MLP of `sizes`.
fn buckets_for(sizes: &[usize]) -> Option<usize> {
    default_buckets(sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum())
}

/// An MLP of `sizes` (ReLU between layers), the same on every call (fixed seed).
fn mlp<B: mote::Backend, const N: usize>(t: &mut Tape<B, N>, sizes: &[usize]) -> mote::Result<Mlp> {
    let mut r = Rng::new(7);
    let layers = sizes
        .windows(2)
        .map(|w| Linear::new(t, w[0], w[1], &mut r))
        .collect::<mote::Result<_>>()?;
    Ok(Mlp {
        activation: Default::default(),
        convs: vec![],
        image: vec![],
        layers,
        dropout: 0.0,
        masks: None,
    })
}

/// Median us per step of `n` replicas, each a tape on the backend `make` builds over an arena.
fn replicas<'a, B: HostBackend<Elem = f32> + Send + 'a>(
    arenas: &'a mut [Vec<f32>],
    make: impl Fn(&'a mut [f32]) -> B,
    sizes: &[usize],
    (xs, ys, vs): (&[f32], &[usize], &[f32]),
    mse: bool,
    steps: usize,
    buckets: Option<usize>,
) -> f64 {
    let cfg = AdamConfig::default();
    let mut dp = DataParallel::<B, Mlp, Adam, 32>::new(arenas, make, |t: &mut Tape<B, 32>| {
        Ok((mlp(t, sizes)?, Adam::new(t, cfg)?))
    })
    .unwrap();
    dp.set_buckets(buckets).unwrap();
    let (i, o) = (sizes[0], *sizes.last().unwrap());
    let targets = if mse {
        Targets::Values(vs, &[o])
    } else {
        Targets::Labels(ys)
    };
    time(steps, || {
        dp.step(xs, &[i], targets, |t, m, x, y| {
            let p = m.forward(t, x)?;
            if mse {
                t.mse(p, y)
            } else {
                t.cross_entropy(p, y)
            }
        })
        .unwrap();
    })
}

fn workload(name: &str, sizes: &[usize], batch: usize, mse: bool, steps: usize) {
    let mut rng = Rng::new(1);
    let (i, o) = (sizes[0], *sizes.last().unwrap());
    let xs: Vec<f32> = (0..batch * i).map(|_| rng.next_f32()).collect();
    let ys: Vec<usize> = (0..batch).map(|k| k % o).collect();
    let vs: Vec<f32> = (0..batch * o).map(|_| rng.next_f32()).collect();
    let loss = if mse {
        mote::plan::Loss::Mse
    } else {
        mote::plan::Loss::CrossEntropy
    };
    let floats = 2 * mote::plan::mlp(sizes, batch, loss, mote::plan::Opt::Adam);
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
        let h = net.forward(&mut tape, x).unwrap();
        let loss = if mse {
            let y = tape.input(&[batch, o], &vs).unwrap();
            tape.mse(h, y).unwrap()
        } else {
            let y = tape.labels(&ys).unwrap();
            tape.cross_entropy(h, y).unwrap()
        };
        tape.backward(loss).unwrap();
        opt.step(&mut tape).unwrap();
    });
    drop(tape);
    drop(mem);
    row += &format!(" {us:>12.1}");
    let data = (&xs[..], &ys[..], &vs[..]);
    for n in [1usize, 2] {
        let mut arenas = vec![vec![0f32; floats]; n];
        let us = replicas(
            &mut arenas,
            Parallel::new,
            sizes,
            data,
            mse,
            steps,
            buckets_for(sizes),
        );
        row += &format!(" {us:>12.1}");
    }
    // The serial reference backend in each replica, then `mote train --replicas 2`: the
    // multithreaded backend's kernels on one thread in each replica.
    let mut arenas = vec![vec![0f32; floats]; 2];
    let us = replicas(
        &mut arenas,
        Cpu::new,
        sizes,
        data,
        mse,
        steps,
        buckets_for(sizes),
    );
    row += &format!(" {us:>12.1}");
    // ... with the all-reduce after the backward, then overlapped with it (the default),
    // alternated.
    let mut after = Vec::new();
    let mut during = Vec::new();
    for _ in 0..3 {
        for (buckets, out) in [(None, &mut after), (Some(BUCKET_FLOATS), &mut during)] {
            let mut arenas = vec![vec![0f32; floats]; 2];
            out.push(replicas(
                &mut arenas,
                |m| Parallel::with_threads(m, 1),
                sizes,
                data,
                mse,
                steps,
                buckets,
            ));
        }
    }
    row += &format!(" {:>12.1} {:>12.1}", median(after), median(during));
    println!("{row}");
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}   (us per step, median; {} threads; \
         replicas: each replica's backend; 1-thread: all-reduce after the backward, then \
         overlapped in buckets)",
        "workload",
        "intra-op",
        "1 x parallel",
        "2 x parallel",
        "2 x cpu",
        "1-thr after",
        "1-thr overlap",
        mote_runtime::parallel::threads()
    );
    workload("W-digits", &[64, 32, 10], 32, false, steps);
    workload(
        "W-mnist",
        &[784, 256, 128, 10],
        128,
        false,
        (steps / 20).max(20),
    );
    workload(
        "W-large",
        &[1024, 4096, 4096, 1024],
        256,
        true,
        (steps / 400).max(5),
    );
}
