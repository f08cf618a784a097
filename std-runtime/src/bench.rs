//! The benchmark program behind `mote bench`: the workloads of `benches/WORKLOADS.md` on the CPU
//! backends, timed, next to the numbers other frameworks reach on the same kind of machine.
//!
//! | workload | model | loss | batch |
//! | --- | --- | --- | --- |
//! | `W-seed` | 8 -> 10 -> ReLU -> 1 | MSE | 64 |
//! | `W-digits` | 64 -> 32 -> ReLU -> 10 | softmax cross-entropy | 32 |
//! | `W-mnist` | 784 -> 256 -> ReLU -> 128 -> ReLU -> 10 | softmax cross-entropy | 128 |
//! | `W-large` | 1024 -> 4096 -> ReLU -> 4096 -> ReLU -> 1024 | MSE | 256 |
//! | `gemm` | `C = A B`, square f32, n = 512, 1024, 2048 | | |
//! | `conv2d` | one 3x3 convolution, 32 -> 64 channels, padding 1, 32x32 images, no bias | mean | 64 |
//!
//! `conv2d` is issue 6's layer benchmark: forward, mean, backward (the gradients of the input
//! and of the weight), no optimizer; its peer is PyTorch on the same machine
//! (`benches/peers/conv2d_torch.py`).
//!
//! A step is the whole training step, in f32: rewind (which zeroes the gradients), inputs and
//! targets copied in, forward, loss, backward, Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8).
//! Parameters, inputs and targets are drawn once from a fixed seed. Each workload warms up,
//! then times samples of several steps (at least ~0.2 ms each, so the clock's cost does not
//! count) and reports the median per-step time and the spread (10th to 90th percentile). The
//! training state is put back every few hundred steps: on a long run, Adam's moments of units
//! that stopped learning decay into subnormal floats, which cost a CPU a microcode assist per
//! operation and would measure that instead of the ordinary regime.
//!
//! ```
//! use mote_runtime::bench::{run, BenchOptions};
//!
//! let opts = BenchOptions {
//!     workloads: vec!["W-seed".into()],
//!     backends: vec!["cpu".into()],
//!     json: false,
//!     threads: None,
//!     quick: true,
//! };
//! let table = run(&opts).map_err(|e| e.to_string())?;
//! assert!(table.contains("W-seed"));
//! # Ok::<(), String>(())
//! ```

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mote::ops::matmul::Gemm;
use mote::{Adam, AdamConfig, Cpu, HostBackend, Linear, Module, Optimizer, Rng, Tape, Var};

use crate::parallel::{self, Parallel};

/// What to run: `mote bench [WORKLOAD...] [--backend ...] [--json] [--threads N]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BenchOptions {
    /// Workload names (`W-seed`, `W-digits`, `W-mnist`, `W-large`, `gemm`; any case); empty
    /// means all.
    pub workloads: Vec<String>,
    /// Backend names (`cpu`, the reference; `parallel`; `cuda`, GPU 0: its own benchmark,
    /// `mote_cuda::bench`, eager and CUDA-graph steps, with the GPU batch sizes); empty means
    /// `cpu` and `parallel`.
    pub backends: Vec<String>,
    /// JSON instead of a table.
    pub json: bool,
    /// Threads of the parallel backend (the size of rayon's global pool, which sizes its team;
    /// settable once per process).
    pub threads: Option<usize>,
    /// Short runs (for tests and a first look): few samples, numbers noisier.
    pub quick: bool,
}

/// The loss of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LossKind {
    Mse,
    CrossEntropy,
}

/// A number from `WORKLOADS.md`: who, and the value (seconds per step, or GFLOP/s for GEMM)
/// with 2 threads and with 1 (NaN: not measured).
type Peer = (&'static str, f64, f64);

/// One MLP training workload.
struct Mlp {
    name: &'static str,
    sizes: &'static [usize],
    batch: usize,
    loss: LossKind,
    /// The issue's target (seconds per step, 2 threads).
    target: f64,
    /// Per-step times with 2 threads, from `WORKLOADS.md`.
    peers: &'static [Peer],
}

const MLPS: [Mlp; 4] = [
    Mlp {
        name: "W-seed",
        sizes: &[8, 10, 1],
        batch: 64,
        loss: LossKind::Mse,
        target: 4e-6,
        peers: &[
            ("dfdx", 8.2e-6, 8.0e-6),
            ("candle", 37e-6, 37e-6),
            ("burn", 44e-6, 44e-6),
            ("PyTorch", 275e-6, 267e-6),
        ],
    },
    Mlp {
        name: "W-digits",
        sizes: &[64, 32, 10],
        batch: 32,
        loss: LossKind::CrossEntropy,
        target: 10e-6,
        peers: &[
            ("dfdx", 22.7e-6, 22.7e-6),
            ("burn", 71e-6, 72e-6),
            ("candle", 107e-6, 109e-6),
            ("PyTorch", 292e-6, 278e-6),
        ],
    },
    Mlp {
        name: "W-mnist",
        sizes: &[784, 256, 128, 10],
        batch: 128,
        loss: LossKind::CrossEntropy,
        target: 1.0e-3,
        peers: &[
            ("PyTorch", 1.45e-3, 1.98e-3),
            ("dfdx", 2.55e-3, 3.08e-3),
            ("burn", 4.85e-3, 3.51e-3),
            ("candle", 11.0e-3, 11.1e-3),
        ],
    },
    Mlp {
        name: "W-large",
        sizes: &[1024, 4096, 4096, 1024],
        batch: 256,
        loss: LossKind::Mse,
        target: 230e-3,
        peers: &[
            ("PyTorch", 287e-3, 487e-3),
            ("dfdx", 379e-3, 633e-3),
            ("burn", 596e-3, 739e-3),
            ("candle", 1220e-3, 1596e-3),
        ],
    },
];

/// GEMM sizes and the GFLOP/s of `WORKLOADS.md` (2 threads, and 1).
const GEMMS: [(usize, &[Peer]); 3] = [
    (
        512,
        &[
            ("gemm x86-v4", 208.0, 109.0),
            ("OpenBLAS", 194.0, 102.0),
            ("PyTorch", 198.0, 98.0),
        ],
    ),
    (
        1024,
        &[
            ("gemm x86-v4", 198.0, 101.0),
            ("OpenBLAS", 188.0, 98.0),
            ("PyTorch", 184.0, 90.0),
        ],
    ),
    (
        2048,
        &[
            ("gemm x86-v4", 196.0, 99.0),
            ("OpenBLAS", 189.0, 100.0),
            ("PyTorch", 177.0, 92.0),
        ],
    ),
];

/// The issue's GEMM target, GFLOP/s at n = 1024 and 2048.
const GEMM_TARGET: f64 = 210.0;
/// The measured FMA peak of the reference machine (2 threads, and 1).
const FMA_PEAK: (f64, f64) = (234.0, 117.0);

const WORKLOAD_NAMES: [&str; 6] = ["W-seed", "W-digits", "W-mnist", "W-large", "gemm", "conv2d"];

/// The conv2d workload: batch, input channels, output channels, image side (3x3, padding 1).
const CONV: (usize, usize, usize, usize) = (64, 32, 64, 32);
/// PyTorch 2.15 with 2 threads on one of this project's development machines
/// (`benches/peers/conv2d_torch.py`, 2026-11-27, about 41 ms; not a WORKLOADS.md number): the
/// time to beat. Rerun the script on the machine that runs mote to compare.
const CONV_PEERS: [Peer; 1] = [("PyTorch 2.15", 41.0e-3, f64::NAN)];
const BACKEND_NAMES: [&str; 3] = ["cpu", "parallel", "cuda"];

/// Tape capacity: the deepest workload (W-large) records 14 nodes.
const NODES: usize = 32;

/// Steps between restores of the training state (see the module docs).
const RESTORE_EVERY: u64 = 500;

/// How long to measure.
#[derive(Clone, Copy, Debug)]
struct Budget {
    warmup: Duration,
    time: Duration,
    min_samples: usize,
    /// Smallest duration of one sample (several steps are timed together below it).
    sample: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                warmup: Duration::from_millis(5),
                time: Duration::from_millis(20),
                min_samples: 2,
                sample: Duration::from_micros(100),
            }
        } else {
            Budget {
                warmup: Duration::from_millis(300),
                time: Duration::from_secs(2),
                min_samples: 7,
                sample: Duration::from_micros(200),
            }
        }
    }
}

/// Per-step seconds of every sample, summarised.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stats {
    samples: usize,
    steps: u64,
    median: f64,
    p10: f64,
    p90: f64,
    min: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>, steps: u64) -> Stats {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
            v.get(i).copied().unwrap_or(f64::NAN)
        };
        Stats {
            samples: v.len(),
            steps,
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            min: v.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Times `step` (which returns the steps it ran): warm-up, then samples of `per` calls until
/// the budget is spent. `reset` runs between samples, untimed, every [`RESTORE_EVERY`] steps.
fn measure(
    budget: Budget,
    mut step: impl FnMut() -> Result<(), String>,
    mut reset: impl FnMut() -> Result<(), String>,
) -> Result<Stats, String> {
    // Warm-up, and an estimate of one step.
    let start = Instant::now();
    let mut warm = 0u32;
    while warm < 2 || start.elapsed() < budget.warmup {
        step()?;
        warm += 1;
    }
    let one = start.elapsed().as_secs_f64() / f64::from(warm);
    let per = ((budget.sample.as_secs_f64() / one).ceil() as u64).clamp(1, RESTORE_EVERY);
    reset()?;
    let mut since_reset = 0;
    let mut samples = Vec::new();
    let mut steps = 0;
    let start = Instant::now();
    loop {
        if since_reset + per > RESTORE_EVERY {
            reset()?;
            since_reset = 0;
        }
        let t = Instant::now();
        for _ in 0..per {
            step()?;
        }
        samples.push(t.elapsed().as_secs_f64() / per as f64);
        since_reset += per;
        steps += per;
        let spent = start.elapsed();
        let enough = samples.len() >= budget.min_samples && spent >= budget.time;
        // Slow steps: a few samples are enough once three budgets are spent.
        let slow = samples.len() >= 3.min(budget.min_samples) && spent >= budget.time * 3;
        if enough || slow || samples.len() >= 20_000 {
            break;
        }
    }
    Ok(Stats::of(samples, steps))
}

/// One result line.
struct Row {
    workload: String,
    backend: &'static str,
    threads: usize,
    stats: Stats,
    /// Floating-point operations of one step (the matrix products).
    flops: f64,
    gemm: bool,
    target: f64,
    peers: &'static [Peer],
}

impl Row {
    /// The peers' numbers with as many threads as this row (the 2-thread ones for more),
    /// those measured.
    fn peers(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.peers
            .iter()
            .map(|p| (p.0, if self.threads == 1 { p.2 } else { p.1 }))
            .filter(|(_, v)| v.is_finite())
    }

    /// The target this row is held to: the targets are for 2 threads, so none for 1.
    fn shown_target(&self) -> Option<f64> {
        (self.threads != 1).then_some(self.target)
    }
}

fn err(e: mote::Error) -> String {
    format!("benchmark step failed: {e:?}")
}

/// Floating-point operations of the matrix products of one training step of `w`: forward and
/// the two products of backward, `6 batch sum(in out)`, less the first layer's input gradient,
/// which no step computes (its input is data): `- 2 batch in_0 out_0`.
fn mlp_flops(w: &Mlp) -> f64 {
    let pairs: usize = w
        .sizes
        .windows(2)
        .map(|p| p.iter().product::<usize>())
        .sum();
    let first: usize = w.sizes.iter().take(2).product();
    2.0 * w.batch as f64 * (3.0 * pairs as f64 - first as f64)
}

/// Sets up `w` on `backend` and times its training step.
fn time_mlp<B: HostBackend<Elem = f32>>(
    w: &Mlp,
    backend: B,
    budget: Budget,
) -> Result<Stats, String> {
    let mut tape = Tape::<B, NODES>::with_backend(backend);
    let mut rng = Rng::new(0x5EED);
    let mut layers = Vec::new();
    for p in w.sizes.windows(2) {
        if let [i, o] = *p {
            layers.push(Linear::new(&mut tape, i, o, &mut rng).map_err(err)?);
        }
    }
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).map_err(err)?;
    let mark = tape.mark();
    let (inp, out) = (
        w.sizes.first().copied().unwrap_or(1),
        w.sizes.last().copied().unwrap_or(1),
    );
    let xs: Vec<f32> = (0..w.batch * inp)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let ys: Vec<f32> = (0..w.batch * out)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let labels: Vec<usize> = (0..w.batch)
        .map(|_| rng.below(out as u32) as usize)
        .collect();
    let saved: Vec<f32> = tape
        .backend()
        .storage()
        .get(..mark.floats())
        .unwrap_or(&[])
        .to_vec();
    let step = |tape: &mut Tape<B, NODES>, opt: &mut Adam| -> mote::Result<Var> {
        tape.rewind(mark)?;
        let x = tape.input(&[w.batch, inp], &xs)?;
        let target = match w.loss {
            LossKind::Mse => tape.input(&[w.batch, out], &ys)?,
            LossKind::CrossEntropy => tape.labels(&labels)?,
        };
        let mut h = x;
        for (i, layer) in layers.iter().enumerate() {
            h = layer.forward(tape, h)?;
            if i + 1 < layers.len() {
                h = tape.relu(h)?;
            }
        }
        let loss = match w.loss {
            LossKind::Mse => tape.mse(h, target)?,
            LossKind::CrossEntropy => tape.cross_entropy(h, target)?,
        };
        tape.backward(loss)?;
        opt.step(tape)?;
        Ok(loss)
    };
    // The first step must train: a finite loss.
    let loss = step(&mut tape, &mut opt).map_err(err)?;
    let first = tape.item(loss).map_err(err)?;
    if !first.is_finite() {
        return Err(format!("{}: the loss is not finite ({first})", w.name));
    }
    let tape = std::cell::RefCell::new(tape);
    let opt = std::cell::RefCell::new(opt);
    measure(
        budget,
        || {
            step(&mut tape.borrow_mut(), &mut opt.borrow_mut())
                .map(|_| ())
                .map_err(err)
        },
        || {
            let mut t = tape.borrow_mut();
            if let Some(dst) = t.backend_mut().storage_mut().get_mut(..saved.len()) {
                dst.copy_from_slice(&saved);
            }
            opt.borrow_mut().set_steps(0);
            Ok(())
        },
    )
}

/// Times the conv2d layer ([`CONV`]): forward, mean, backward, through `backend`.
fn time_conv<B: HostBackend<Elem = f32>>(backend: B, budget: Budget) -> Result<Stats, String> {
    let (n, ci, co, hw) = CONV;
    let mut rng = Rng::new(0x5EED);
    let x: Vec<f32> = (0..n * ci * hw * hw)
        .map(|_| rng.uniform(-0.5, 0.5) as f32)
        .collect();
    let w: Vec<f32> = (0..co * ci * 9)
        .map(|_| rng.uniform(-0.5, 0.5) as f32)
        .collect();
    let mut tape = Tape::<B, NODES>::with_backend(backend);
    let wv = tape.param(&[co, ci, 3, 3], &w).map_err(err)?;
    let start = tape.mark();
    let cfg = mote::ConvConfig {
        padding: [1, 1],
        ..mote::ConvConfig::default()
    };
    let tape = std::cell::RefCell::new(tape);
    measure(
        budget,
        || {
            let t = &mut *tape.borrow_mut();
            let step = |t: &mut Tape<B, NODES>| -> mote::Result<()> {
                t.rewind(start)?;
                // The input as a parameter too, so that backward computes its gradient.
                let xv = t.param(&[n, ci, hw, hw], &x)?;
                let y = t.conv2d(xv, wv, None, cfg)?;
                let loss = t.mean(y)?;
                t.backward(loss)
            };
            step(t).map_err(err)
        },
        || Ok(()),
    )
}

/// Times `C = A B` for square `n x n` f32 matrices through `backend`'s GEMM.
fn time_gemm<B: HostBackend<Elem = f32>>(
    n: usize,
    mut backend: B,
    budget: Budget,
) -> Result<Stats, String> {
    let mut rng = Rng::new(0x5EED);
    let nn = n * n;
    if let Some(ab) = backend.storage_mut().get_mut(..2 * nn) {
        for v in ab {
            *v = rng.uniform(-1.0, 1.0) as f32;
        }
    }
    let g = Gemm {
        batch: 1,
        m: n,
        n,
        k: n,
        a: 0,
        a_trans: false,
        a_batch: 0,
        b: nn,
        b_trans: false,
        b_batch: 0,
        c: 2 * nn,
        c_batch: 0,
        accumulate: false,
    };
    let backend = std::cell::RefCell::new(backend);
    measure(
        Budget {
            warmup: budget.warmup.min(Duration::from_millis(100)),
            min_samples: budget.min_samples.min(5),
            ..budget
        },
        || backend.borrow_mut().gemm(&g).map_err(err),
        || Ok(()),
    )
}

/// Canonical workload names from user input (any case; empty means all).
fn select(
    asked: &[String],
    names: &[&'static str],
    what: &str,
) -> Result<Vec<&'static str>, String> {
    if asked.is_empty() {
        return Ok(names.to_vec());
    }
    let mut out = Vec::new();
    for a in asked {
        let hit = names.iter().find(|n| {
            n.eq_ignore_ascii_case(a) || n.trim_start_matches("W-").eq_ignore_ascii_case(a)
        });
        match hit {
            Some(n) if !out.contains(n) => out.push(*n),
            Some(_) => {}
            None => {
                return Err(format!(
                    "unknown {what} '{a}': expected one of {}",
                    names.join(", ")
                ))
            }
        }
    }
    Ok(out)
}

/// Runs the benchmark and returns what to print: a table, or JSON with `json`.
///
/// # Errors
/// An unknown workload or backend name, a thread count that cannot be set (see
/// [`parallel::set_threads`]), or a failing step (out of memory for the arena included).
pub fn run(opts: &BenchOptions) -> Result<String, String> {
    let workloads = select(&opts.workloads, &WORKLOAD_NAMES, "workload")?;
    let mut backends = select(&opts.backends, &BACKEND_NAMES, "backend")?;
    if opts.backends.is_empty() {
        backends.retain(|b| *b != "cuda");
    }
    if opts.threads.is_some() && !backends.contains(&"parallel") {
        return Err(
            "--threads applies to the parallel backend, which is not among those \
                    chosen (add --backend parallel, or drop --threads)"
                .into(),
        );
    }
    let gpu = backends.contains(&"cuda");
    backends.retain(|b| *b != "cuda");
    let gpu_report = if gpu {
        Some(cuda_report(&workloads)?)
    } else {
        None
    };
    if let Some(n) = opts.threads {
        parallel::set_threads(n)?;
    }
    let budget = Budget::new(opts.quick);
    let threads = parallel::threads();
    let mut rows = Vec::new();
    for name in &workloads {
        if *name == "conv2d" {
            let (n, ci, co, hw) = CONV;
            for &backend in &backends {
                // Input, weight, output and their gradients, and im2col's scratch (9 ci
                // values per output position) for the forward and the backward pass.
                let floats = 2 * (n * ci * hw * hw + co * ci * 9 + n * co * hw * hw)
                    + 2 * 9 * ci * n * hw * hw
                    + (1 << 16);
                let mut mem = alloc(floats)?;
                let stats = match backend {
                    "cpu" => time_conv(Cpu::new(&mut mem), budget)?,
                    _ => time_conv(Parallel::new(&mut mem), budget)?,
                };
                rows.push(Row {
                    workload: "conv2d".to_string(),
                    backend,
                    threads: if backend == "cpu" { 1 } else { threads },
                    stats,
                    flops: 3.0 * 2.0 * (n * co * hw * hw * ci * 9) as f64,
                    gemm: false,
                    target: CONV_PEERS[0].1,
                    peers: &CONV_PEERS,
                });
            }
            continue;
        }
        if *name == "gemm" {
            for &(n, peers) in &GEMMS {
                for &backend in &backends {
                    let mut mem = alloc(3 * n * n)?;
                    let stats = match backend {
                        "cpu" => time_gemm(n, Cpu::new(&mut mem), budget)?,
                        _ => time_gemm(n, Parallel::new(&mut mem), budget)?,
                    };
                    rows.push(Row {
                        workload: format!("gemm n={n}"),
                        backend,
                        threads: if backend == "cpu" { 1 } else { threads },
                        stats,
                        flops: 2.0 * (n as f64).powi(3),
                        gemm: true,
                        target: if n >= 1024 { GEMM_TARGET } else { f64::NAN },
                        peers,
                    });
                }
            }
            continue;
        }
        let Some(w) = MLPS.iter().find(|w| w.name == *name) else {
            continue;
        };
        for &backend in &backends {
            let floats = mote::plan::mlp(
                w.sizes,
                w.batch,
                match w.loss {
                    LossKind::Mse => mote::plan::Loss::Mse,
                    LossKind::CrossEntropy => mote::plan::Loss::CrossEntropy,
                },
                mote::plan::Opt::Adam,
            );
            let mut mem = alloc(floats)?;
            let stats = match backend {
                "cpu" => time_mlp(w, Cpu::new(&mut mem), budget)?,
                _ => time_mlp(w, Parallel::new(&mut mem), budget)?,
            };
            rows.push(Row {
                workload: w.name.to_string(),
                backend,
                threads: if backend == "cpu" { 1 } else { threads },
                stats,
                flops: mlp_flops(w),
                gemm: false,
                target: w.target,
                peers: w.peers,
            });
        }
    }
    let cpu_report = if rows.is_empty() {
        String::new()
    } else if opts.json {
        json(&rows, threads, opts.quick)
    } else {
        table(&rows, threads, opts.quick)
    };
    Ok(match gpu_report {
        Some(g) if opts.json => json_with_gpu(&cpu_report, &g)?,
        Some(g) if cpu_report.is_empty() => g,
        Some(g) => format!("{cpu_report}\n{g}"),
        None => cpu_report,
    })
}

/// One JSON document of the CPU rows (`cpu`, as [`json`] writes them, or none) and the GPU
/// report's rows (`gpu_report`: its JSON lines, and a failed workload's line as an `error`)
/// under `"gpu"`.
fn json_with_gpu(cpu: &str, gpu_report: &str) -> Result<String, String> {
    let mut doc = if cpu.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(cpu).map_err(|e| format!("internal: the CPU JSON: {e}"))?
    };
    let gpu: Vec<serde_json::Value> = gpu_report
        .lines()
        .filter_map(|l| {
            if l.starts_with('{') {
                // A row with a non-finite time is not JSON: kept, as text.
                Some(
                    serde_json::from_str(l)
                        .unwrap_or_else(|_| serde_json::json!({ "error": "not JSON", "row": l })),
                )
            } else {
                l.contains(": failed: ")
                    .then(|| serde_json::json!({ "error": l }))
            }
        })
        .collect();
    if let Some(o) = doc.as_object_mut() {
        o.insert("gpu".into(), serde_json::Value::Array(gpu));
    }
    Ok(doc.to_string())
}

/// The GPU benchmark (`mote_cuda::bench`) of the asked workloads (`gemm` has no GPU version).
#[cfg(feature = "cuda")]
fn cuda_report(workloads: &[&str]) -> Result<String, String> {
    let filter: Vec<String> = workloads
        .iter()
        .filter(|w| **w != "gemm")
        .map(|w| w.to_string())
        .collect();
    if filter.is_empty() {
        return Err("--backend cuda: the GPU benchmark has no gemm workload".into());
    }
    mote_cuda::bench::run(&filter).map_err(|e| format!("--backend cuda: {e}"))
}

/// Without the `cuda` feature: a clear error.
#[cfg(not(feature = "cuda"))]
fn cuda_report(_workloads: &[&str]) -> Result<String, String> {
    Err(
        "--backend cuda: this mote was built without the cuda feature (rebuild with default \
         features)"
            .into(),
    )
}

/// A zeroed arena, or an error instead of an abort when memory runs out.
fn alloc(floats: usize) -> Result<Vec<f32>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(floats).map_err(|_| {
        format!(
            "cannot allocate the arena ({} MB)",
            floats * 4 / (1024 * 1024)
        )
    })?;
    v.resize(floats, 0.0);
    Ok(v)
}

/// A duration in a readable unit.
fn secs(s: f64) -> String {
    if !s.is_finite() {
        "-".to_string()
    } else if s < 1e-3 {
        format!("{:.2} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn table(rows: &[Row], threads: usize, quick: bool) -> String {
    let mut out = String::new();
    // The thread count, where a row ran on the parallel backend.
    let parallel = if rows.iter().any(|r| r.backend == "parallel") {
        format!(
            "; parallel backend on {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "mote bench: f32, median per step (spread: 10th-90th percentile of samples){parallel}{}",
        if quick {
            "; QUICK run: numbers are rough"
        } else {
            ""
        }
    );
    let header = [
        "workload",
        "backend",
        "thr",
        "per step",
        "spread",
        "GFLOP/s",
        "target",
        "peers, as many threads (WORKLOADS.md; conv2d: conv2d_torch.py)",
    ];
    let mut lines: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in rows {
        let s = &r.stats;
        let gflops = r.flops / s.median / 1e9;
        // A 1-thread row is shown against the peers' 1-thread numbers, without a target.
        let (target, peers) = if r.gemm {
            let t = match r.shown_target() {
                Some(t) if t.is_finite() => format!(">= {t:.0}"),
                _ => "-".to_string(),
            };
            let mut p: Vec<String> = r.peers().map(|(n, v)| format!("{n} {v:.0}")).collect();
            let peak = if r.threads == 1 {
                FMA_PEAK.1
            } else {
                FMA_PEAK.0
            };
            p.push(format!("FMA peak {peak:.0} GFLOP/s"));
            (t, p.join(", "))
        } else {
            let p: Vec<String> = r.peers().map(|(n, v)| format!("{n} {}", secs(v))).collect();
            let t = r
                .shown_target()
                .map_or("-".to_string(), |t| format!("<= {}", secs(t)));
            (t, p.join(", "))
        };
        lines.push([
            r.workload.clone(),
            r.backend.to_string(),
            r.threads.to_string(),
            secs(s.median),
            format!("{}-{}", secs(s.p10), secs(s.p90)),
            format!("{gflops:.1}"),
            target,
            peers,
        ]);
    }
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.len());
        }
    }
    for l in &lines {
        let mut line = String::new();
        for (i, (c, w)) in l.iter().zip(widths).enumerate() {
            if i + 1 == l.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "GFLOP/s counts the matrix products only (6 x batch x sum(in x out) per training step, \
         less 2 x batch x in x out for the first layer's input gradient, which is not computed).\n\
         Peers: WORKLOADS.md, measured on 2 cores of an AMD EPYC Zen 4 (conv2d's: \
         benches/peers/conv2d_torch.py on a development machine); compare on the same \
         machine, and rerun when it is quiet (other processes move single runs by +-30%)."
    );
    out
}

/// A JSON number (`null` for NaN or infinity).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:e}")
    } else {
        "null".to_string()
    }
}

fn json(rows: &[Row], threads: usize, quick: bool) -> String {
    let mut out =
        format!("{{\"threads\":{threads},\"quick\":{quick},\"dtype\":\"f32\",\"results\":[");
    for (i, r) in rows.iter().enumerate() {
        let s = &r.stats;
        if i > 0 {
            out.push(',');
        }
        let unit = if r.gemm { "gflops" } else { "seconds" };
        let peers: Vec<String> = r
            .peers()
            .map(|(n, v)| {
                format!(
                    "{{\"name\":\"{n}\",\"threads\":{},\"{unit}\":{}}}",
                    r.threads.min(2),
                    num(v)
                )
            })
            .collect();
        let target = r.shown_target().unwrap_or(f64::NAN);
        let _ = write!(
            out,
            "{{\"workload\":\"{}\",\"backend\":\"{}\",\"threads\":{},\"samples\":{},\"steps\":{},\
             \"median_s\":{},\"p10_s\":{},\"p90_s\":{},\"min_s\":{},\"gflops\":{},\
             \"target_{unit}\":{},\"peers\":[{}]}}",
            r.workload,
            r.backend,
            r.threads,
            s.samples,
            s.steps,
            num(s.median),
            num(s.p10),
            num(s.p90),
            num(s.min),
            num(r.flops / s.median / 1e9),
            num(target),
            peers.join(",")
        );
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_case_blind() {
        let got = select(
            &["w-SEED".into(), "digits".into()],
            &WORKLOAD_NAMES,
            "workload",
        );
        assert_eq!(got, Ok(vec!["W-seed", "W-digits"]));
        let bad = select(&["nope".into()], &WORKLOAD_NAMES, "workload");
        assert!(bad.is_err_and(|e| e.contains("W-large")));
    }

    /// `--json` with `--backend cuda` is one JSON document: the CPU rows as before, and the
    /// GPU report's rows (and failures) under `"gpu"`; its log and table lines are left out.
    #[test]
    fn gpu_rows_join_the_json_document() {
        let gpu = "mote-cuda bench on H200: median per-step time\n\
                   W-seed eager: profile ...\n\
                   {\"workload\":\"W-seed\",\"mode\":\"graph\",\"median_us\":37.30,\"min_us\":37.00,\"max_us\":38.00,\"launches\":1}\n\
                   W-large-tf32: failed: out of memory\n\
                   | workload | mode |\n";
        let cpu = "{\"threads\":2,\"results\":[{\"workload\":\"W-seed\"}]}";
        let doc: serde_json::Value =
            serde_json::from_str(&json_with_gpu(cpu, gpu).unwrap()).unwrap();
        assert_eq!(doc["threads"], 2);
        assert_eq!(doc["results"][0]["workload"], "W-seed");
        assert_eq!(doc["gpu"][0]["median_us"], 37.3);
        assert_eq!(
            doc["gpu"][1]["error"],
            "W-large-tf32: failed: out of memory"
        );
        assert_eq!(doc["gpu"].as_array().unwrap().len(), 2);
        let alone: serde_json::Value =
            serde_json::from_str(&json_with_gpu("", gpu).unwrap()).unwrap();
        assert_eq!(alone["gpu"][0]["mode"], "graph");
    }

    #[test]
    fn stats_take_percentiles() {
        let s = Stats::of((1..=11).map(f64::from).collect(), 11);
        assert_eq!((s.median, s.min, s.p10, s.p90), (6.0, 1.0, 2.0, 10.0));
    }
}
