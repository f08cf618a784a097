//! Criterion benches of the reference backend ([`mote::Cpu`], one thread):
//!
//! - `matmul/<n>`: a square `n x n` product through the tape (`tape.matmul` under `no_grad`,
//!   so through `Backend::gemm`), throughput in flops (criterion prints them as "elem/s":
//!   read Gelem/s as GFLOP/s);
//! - `gemm_layout/<layout>/128`: the bare kernel [`mote::ops::matmul::gemm`] in each operand
//!   layout that forward and backward passes use;
//! - `step/W-seed`, `step/W-digits`: one whole training step (`WORKLOADS.md`), steps running
//!   on from each other for the whole run (hundreds of thousands of them);
//! - `step_restart/...`: the same steps, but the training state is put back to its start
//!   every [`RESTART`] steps (outside the timing), so that the number does not depend on how
//!   long criterion has been training: on W-digits, Adam moments of dead ReLU units decay into
//!   subnormals after ~700 steps and make later steps slower (see `mote_benches::Snapshot`).
//!
//! - `conv2d/fwd_bwd`: the conv layer of issue 6's benchmark (batch 64, 32 -> 64 channels,
//!   3x3, padding 1, 32x32 images), forward and backward (input and weight gradients).
//!
//! Run: `cargo bench -p mote-benches` (one group: `cargo bench -p mote-benches -- step`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mote::{Cpu, Tape};
use mote_benches::{square_matmul_floats, Kind, SquareGemm, SquareMatmul, Workload, NODES, SEED};

const MATMUL_SIZES: [usize; 6] = [16, 32, 64, 128, 256, 512];

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    for n in MATMUL_SIZES {
        // The big ones take milliseconds each: fewer samples keep the run short.
        group.sample_size(if n >= 256 { 20 } else { 100 });
        let mut mem = vec![0f32; square_matmul_floats(n)];
        let mut tape = Tape::<Cpu<f32>, 4>::new(&mut mem);
        let mm = SquareMatmul::new(&mut tape, n, SEED).expect("operands fit");
        group.throughput(Throughput::Elements(mm.flops()));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(mm.run(&mut tape).expect("matmul")));
        });
    }
    group.finish();
}

fn gemm_layout(c: &mut Criterion) {
    let n = 128;
    let mut group = c.benchmark_group("gemm_layout");
    for (name, at, bt) in [
        ("nn", false, false),
        ("tn", true, false),
        ("nt", false, true),
        ("tt", true, true),
    ] {
        let mut g = SquareGemm::<f32>::with_layout(n, SEED, at, bt);
        group.throughput(Throughput::Elements(g.flops()));
        group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            b.iter(|| {
                black_box(g.run());
            });
        });
    }
    group.finish();
}

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("step");
    group.measurement_time(Duration::from_secs(5));
    for kind in Kind::ALL {
        let mut mem = vec![0f32; kind.floats()];
        let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
        let mut w = Workload::new(kind, &mut tape, SEED).expect("the plan fits");
        group.bench_function(kind.name(), |b| {
            b.iter(|| black_box(w.step(&mut tape).expect("step")));
        });
    }
    group.finish();
}

/// Steps between restarts in `step_restart`: before the first subnormal moment on W-digits.
const RESTART: u64 = 500;

fn step_restart(c: &mut Criterion) {
    let mut group = c.benchmark_group("step_restart");
    group.measurement_time(Duration::from_secs(5));
    for kind in Kind::ALL {
        let mut mem = vec![0f32; kind.floats()];
        let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
        let mut w = Workload::new(kind, &mut tape, SEED).expect("the plan fits");
        let start = w.snapshot(&tape);
        group.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    w.restore(&mut tape, &start);
                    let run = left.min(RESTART);
                    let t = Instant::now();
                    for _ in 0..run {
                        black_box(w.step(&mut tape).expect("step"));
                    }
                    timed += t.elapsed();
                    left -= run;
                }
                timed
            });
        });
    }
    group.finish();
}

fn conv2d(c: &mut Criterion) {
    use mote::{ConvConfig, Rng};
    let (n, ci, co, hw) = (64, 32, 64, 32);
    let mut rng = Rng::new(SEED);
    let x: Vec<f32> = (0..n * ci * hw * hw)
        .map(|_| rng.next_f32() - 0.5)
        .collect();
    let w: Vec<f32> = (0..co * ci * 9).map(|_| rng.next_f32() - 0.5).collect();
    let mut mem = vec![0f32; 40 << 20];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let wv = tape.param(&[co, ci, 3, 3], &w).expect("fits");
    let start = tape.mark();
    let cfg = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10);
    group.throughput(Throughput::Elements(
        (3 * 2 * n * co * hw * hw * ci * 9) as u64,
    ));
    group.bench_function("fwd_bwd", |b| {
        b.iter(|| {
            tape.rewind(start).expect("rewind");
            // The input as a parameter too, so that backward computes its gradient.
            let xv = tape.param(&[n, ci, hw, hw], &x).expect("fits");
            let y = tape.conv2d(xv, wv, None, cfg).expect("conv");
            let loss = tape.mean(y).expect("mean");
            tape.backward(loss).expect("backward");
            black_box(loss)
        });
    });
    group.finish();
}

criterion_group!(benches, matmul, gemm_layout, step, step_restart, conv2d);
criterion_main!(benches);
