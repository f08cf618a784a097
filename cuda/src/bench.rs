//! GPU benchmark of whole training steps (`../shared/WORKLOADS.md`): W-seed, W-digits,
//! W-mnist, W-large (fp32 with and without aligned allocations, TF32 with and without K-major
//! operand copies, bf16), each eager and
//! replayed from a captured CUDA graph;
//! and issue 6's conv2d layer, eager.
//!
//! `cargo run --release -p mote-cuda --example gpu_bench [-- WORKLOAD...]`, or
//! `mote bench --backend cuda [WORKLOAD...]`: both call [`run`].
//!
//! Per-step time: the median over 7 timed chunks of N back-to-back steps (chunk wall time / N,
//! after a synchronisation), after a warm-up; the spread is the min and max chunk. The batch is
//! drawn once and stays on the device (PyTorch's protocol in WORKLOADS.md); the "+write" modes
//! copy it in from the host before every step, as training does. Then, for
//! each workload, one profiled eager step: launches per step and GPU time per kernel family
//! (CUDA events around every launch). Prints a table and one JSON line per row.

use std::fmt::Write as _;
use std::time::Instant;

use crate::{Cuda, CudaError, Graph, Options, Precision};
use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Rng, Tape, Var};

const NODES: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Loss {
    Mse,
    CrossEntropy,
}

struct Workload {
    name: &'static str,
    dims: &'static [usize],
    loss: Loss,
    batch: usize,
    precision: Precision,
    /// Steps per timed chunk.
    steps: usize,
    /// PyTorch on the H200 (CUDA graph; for W-large, TF32 and bf16 their best mode, fp32 its
    /// eager time, the reference, where torch.compile's 3,163 us is best), and the
    /// issue's target.
    torch_us: f64,
    target_us: f64,
    /// [`Options::k_major_from`].
    k_major_from: u64,
    /// [`Options::align`].
    align: usize,
}

/// [`Options::k_major_from`]'s default.
const K_MAJOR: u64 = 1 << 28;
/// [`Options::align`]'s default.
const ALIGN: usize = 64;

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "W-seed",
        dims: &[8, 10, 1],
        loss: Loss::Mse,
        batch: 64,
        precision: Precision::F32,
        steps: 200,
        torch_us: 66.6,
        target_us: 33.0,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
    Workload {
        name: "W-digits",
        dims: &[64, 32, 10],
        loss: Loss::CrossEntropy,
        batch: 32,
        precision: Precision::F32,
        steps: 200,
        torch_us: 84.4,
        target_us: 42.0,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
    Workload {
        name: "W-mnist",
        dims: &[784, 256, 128, 10],
        loss: Loss::CrossEntropy,
        batch: 128,
        precision: Precision::F32,
        steps: 200,
        torch_us: 234.8,
        target_us: 117.0,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
    Workload {
        name: "W-large-fp32",
        dims: &[1024, 4096, 4096, 1024],
        loss: Loss::Mse,
        batch: 1024,
        precision: Precision::F32,
        steps: 10,
        torch_us: 3633.0,
        target_us: 3633.0 * 1.05,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
    // The same with allocations unaligned: the backward's activation gradients start 8 bytes
    // past a 16-byte boundary (what the row above gains by aligning them).
    Workload {
        name: "W-large-fp32-unaligned",
        dims: &[1024, 4096, 4096, 1024],
        loss: Loss::Mse,
        batch: 1024,
        precision: Precision::F32,
        steps: 10,
        torch_us: 3633.0,
        target_us: 3633.0 * 1.05,
        k_major_from: K_MAJOR,
        align: 1,
    },
    Workload {
        name: "W-large-tf32",
        dims: &[1024, 4096, 4096, 1024],
        loss: Loss::Mse,
        batch: 1024,
        precision: Precision::Tf32,
        steps: 20,
        torch_us: 1209.0,
        target_us: 800.0,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
    // The same without K-major copies of the backward's operands: cuBLAS reads them as
    // they lie (what the row above gains by its transposes).
    Workload {
        name: "W-large-tf32-in-place",
        dims: &[1024, 4096, 4096, 1024],
        loss: Loss::Mse,
        batch: 1024,
        precision: Precision::Tf32,
        steps: 20,
        torch_us: 1209.0,
        target_us: 800.0,
        k_major_from: u64::MAX,
        align: ALIGN,
    },
    Workload {
        name: "W-large-bf16",
        dims: &[1024, 4096, 4096, 1024],
        loss: Loss::Mse,
        batch: 1024,
        precision: Precision::Bf16,
        steps: 20,
        torch_us: 1096.0,
        target_us: f64::NAN,
        k_major_from: K_MAJOR,
        align: ALIGN,
    },
];

struct Mlp(Vec<Linear>);

impl Mlp {
    fn forward<const N: usize>(&self, t: &mut Tape<Cuda, N>, mut x: Var) -> mote::Result<Var> {
        let last = self.0.len() - 1;
        for (i, l) in self.0.iter().enumerate() {
            x = l.forward(t, x)?;
            if i < last {
                x = t.relu(x)?;
            }
        }
        Ok(x)
    }
}

/// Arena floats: parameters with gradients and Adam state (4x), activations and their
/// gradients (generously 4x per layer output), inputs.
fn floats(w: &Workload) -> usize {
    let params: usize = w.dims.windows(2).map(|d| d[0] * d[1] + d[1]).sum();
    let acts: usize = w.dims.iter().map(|&d| d * w.batch).sum();
    4 * params + 6 * acts + (1 << 10)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

struct Row {
    name: &'static str,
    mode: &'static str,
    median_us: f64,
    min_us: f64,
    max_us: f64,
    launches: usize,
}

/// Per-step microseconds over 7 chunks of `steps` calls of `step` (the queue drained after each
/// chunk): the median, the smallest and the largest.
fn time_steps(
    tape: &mut Tape<Cuda, NODES>,
    steps: usize,
    mut step: impl FnMut(&mut Tape<Cuda, NODES>) -> mote::Result<()>,
) -> mote::Result<(f64, f64, f64)> {
    let mut chunks = Vec::new();
    for _ in 0..7 {
        let t0 = Instant::now();
        for _ in 0..steps {
            step(tape)?;
        }
        tape.backend().sync()?;
        chunks.push(t0.elapsed().as_secs_f64() * 1e6 / steps.max(1) as f64);
    }
    Ok(median(chunks))
}

fn run_one(w: &Workload, log: &mut String) -> Result<Vec<Row>, CudaError> {
    let cuda = Cuda::with_options(
        floats(w),
        Options {
            precision: w.precision,
            k_major_from: w.k_major_from,
            align: w.align,
            ..Options::default()
        },
    )?;
    let mut tape = Tape::<Cuda, NODES>::with_backend(cuda);
    let mut rng = Rng::new(0);
    let layers = w
        .dims
        .windows(2)
        .map(|d| Linear::new(&mut tape, d[0], d[1], &mut rng))
        .collect::<mote::Result<Vec<_>>>()?;
    let model = Mlp(layers);
    let mut opt = Adam::new(
        &mut tape,
        AdamConfig {
            lr: 1e-3,
            ..AdamConfig::default()
        },
    )?;
    let (din, dout) = (w.dims[0], *w.dims.last().unwrap_or(&1));
    let xs: Vec<f32> = (0..w.batch * din)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let labels: Vec<usize> = (0..w.batch)
        .map(|_| rng.below(dout as u32) as usize)
        .collect();
    let ys: Vec<f32> = match w.loss {
        Loss::Mse => (0..w.batch * dout)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect(),
        Loss::CrossEntropy => labels.iter().map(|&l| l as f32).collect(),
    };
    // The batch lives below the step's mark: "drawn once" and left on the device, as PyTorch's
    // peers keep theirs; the "+write" modes copy it in again before every step, as training
    // does.
    let x = tape.input(&[w.batch, din], &xs)?;
    let y = match w.loss {
        Loss::Mse => tape.input(&[w.batch, dout], &ys)?,
        Loss::CrossEntropy => tape.labels(&labels)?,
    };
    let start = tape.mark();
    let step = |t: &mut Tape<Cuda, NODES>, opt: &mut Adam| -> mote::Result<Var> {
        let p = model.forward(t, x)?;
        let loss = match w.loss {
            Loss::Mse => t.mse(p, y)?,
            Loss::CrossEntropy => t.cross_entropy(p, y)?,
        };
        t.backward(loss)?;
        opt.step(t)?;
        Ok(loss)
    };
    let write = |tape: &mut Tape<Cuda, NODES>| -> mote::Result<()> {
        tape.write(x, &xs)?;
        tape.write(y, &ys)
    };
    let mut rows = Vec::new();

    // Eager: the host records and launches every op each step.
    let eager = |tape: &mut Tape<Cuda, NODES>, opt: &mut Adam| -> mote::Result<()> {
        tape.rewind(start)?;
        step(tape, opt).map(|_| ())
    };
    for _ in 0..w.steps.min(20) {
        eager(&mut tape, &mut opt)?;
    }
    tape.backend().sync()?;
    for (mode, with_write) in [("eager", false), ("eager+write", true)] {
        let (m, lo, hi) = time_steps(&mut tape, w.steps, |t| {
            if with_write {
                write(t)?;
            }
            eager(t, &mut opt)
        })?;
        rows.push(Row {
            name: w.name,
            mode,
            median_us: m,
            min_us: lo,
            max_us: hi,
            launches: 0,
        });
    }
    // One profiled step: launches and time per kernel family.
    tape.backend_mut().profile(true);
    eager(&mut tape, &mut opt)?;
    let prof = tape.backend_mut().profile_take()?;
    tape.backend_mut().profile(false);
    let launches: usize = prof.iter().map(|p| p.1).sum();
    for r in &mut rows {
        r.launches = launches;
    }
    let total: f64 = prof.iter().map(|p| p.2).sum();
    let fams: Vec<String> = prof
        .iter()
        .map(|(k, n, ms)| {
            format!(
                "{k} x{n} {:.1} us ({:.0}%)",
                ms * 1e3,
                100.0 * ms / total.max(1e-12)
            )
        })
        .collect();
    let _ = writeln!(
        log,
        "  {} eager step, GPU time by kernel: {:.1} us in {launches} launches: {}",
        w.name,
        total * 1e3,
        fams.join(", ")
    );

    // Graph: captured once, replayed (with the batch rewritten before each replay in
    // "graph+write").
    let mut graph = Graph::capture(&mut tape, start, |t| step(t, &mut opt))?;
    let loss = *graph.output();
    for _ in 0..w.steps.min(20) {
        graph.replay(&mut tape)?;
    }
    tape.backend().sync()?;
    for (mode, with_write) in [("graph", false), ("graph+write", true)] {
        let (m, lo, hi) = time_steps(&mut tape, w.steps, |t| {
            if with_write {
                write(t)?;
            }
            graph.replay(t)
        })?;
        rows.push(Row {
            name: w.name,
            mode,
            median_us: m,
            min_us: lo,
            max_us: hi,
            launches: graph.nodes(),
        });
    }
    let l = tape.item(loss)?;
    let _ = writeln!(
        log,
        "  {} final loss {l:.5} (finite: {})",
        w.name,
        l.is_finite()
    );
    Ok(rows)
}

/// Issue 6's conv2d layer (batch 64, 32 -> 64 channels, 3x3, padding 1, 32x32, no bias):
/// forward, mean, backward (input and weight gradients), eager, 7 chunks of 20 steps.
fn conv_one(log: &mut String) -> Result<Row, CudaError> {
    let (n, ci, co, hw) = (64, 32, 64, 32);
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..n * ci * hw * hw)
        .map(|_| rng.uniform(-0.5, 0.5) as f32)
        .collect();
    let w: Vec<f32> = (0..co * ci * 9)
        .map(|_| rng.uniform(-0.5, 0.5) as f32)
        .collect();
    // Input, weight and output with their gradients, the columns of a pass, and room.
    // With the room a GPU run leaves for whole-batch im2col passes (`CONV_SCRATCH`), used where
    // the backend's own convolution scratch is turned off.
    let floats =
        2 * (x.len() + w.len() + n * co * hw * hw) + (2 << 20) + (1 << 20) + crate::CONV_SCRATCH;
    let mut tape = Tape::<Cuda, NODES>::with_backend(Cuda::new(floats)?);
    // The input stays on the device, as PyTorch's peer keeps it (a parameter, so that the
    // backward computes its gradient); both gradients are cleared each step, as `x.grad =
    // None` does there.
    let xv = tape.param(&[n, ci, hw, hw], &x)?;
    let wv = tape.param(&[co, ci, 3, 3], &w)?;
    let start = tape.mark();
    let cfg = mote::ConvConfig {
        padding: [1, 1],
        ..mote::ConvConfig::default()
    };
    let step = |t: &mut Tape<Cuda, NODES>| -> mote::Result<Var> {
        t.rewind(start)?;
        t.zero_grad()?;
        let y = t.conv2d(xv, wv, None, cfg)?;
        let loss = t.mean(y)?;
        t.backward(loss)?;
        Ok(loss)
    };
    for _ in 0..5 {
        step(&mut tape)?;
    }
    tape.backend().sync()?;
    let (m, lo, hi) = time_steps(&mut tape, 20, |t| step(t).map(|_| ()))?;
    tape.backend_mut().profile(true);
    let loss = step(&mut tape)?;
    let prof = tape.backend_mut().profile_take()?;
    tape.backend_mut().profile(false);
    let launches: usize = prof.iter().map(|p| p.1).sum();
    let l = tape.item(loss)?;
    let total: f64 = prof.iter().map(|p| p.2).sum();
    let fams: Vec<String> = prof
        .iter()
        .map(|(k, c, ms)| format!("{k} x{c} {:.1} us", ms * 1e3))
        .collect();
    let _ = writeln!(
        log,
        "  conv2d: {launches} launches per step ({:.1} us of GPU time: {}), loss {l:.5} (finite: {})",
        total * 1e3,
        fams.join(", "),
        l.is_finite()
    );
    Ok(Row {
        name: "conv2d",
        mode: "eager",
        median_us: m,
        min_us: lo,
        max_us: hi,
        launches,
    })
}

/// Whether `filter` (empty: every workload) selects the workload `name`: an argument that is a
/// workload's whole name selects that one alone (`W-large-fp32`, not `W-large-fp32-unaligned`),
/// another every workload whose name starts with it (`W-large`).
fn selected(filter: &[String], name: &str) -> bool {
    let whole = |a: &str| a == "conv2d" || WORKLOADS.iter().any(|w| w.name == a);
    filter.is_empty()
        || filter
            .iter()
            .any(|a| a == name || (!whole(a) && name.starts_with(a.as_str())))
}

/// Runs the workloads that `filter` selects (by whole name, or by the start of their names;
/// all when empty) and returns the report: per workload, the profiled eager step and the final
/// loss, one JSON line per row, then a Markdown table against PyTorch on the H200 and the
/// targets.
///
/// # Errors
/// [`CudaError`] when there is no usable GPU (no driver, no device); a failing workload is
/// reported in the text and the others still run.
pub fn run(filter: &[String]) -> Result<String, CudaError> {
    Cuda::available()?;
    // The driver loaded and reports a device: asking its name is safe.
    let device = cudarc::driver::result::device::get(0)
        .and_then(cudarc::driver::result::device::get_name)
        .unwrap_or_else(|e| format!("device 0 ({e})"));
    let mut out = format!(
        "mote-cuda bench on {device}: median per-step time over 7 chunks (min..max); the batch \
         stays on the device (\"+write\": copied in before every step)\n",
    );
    let mut table = Vec::new();
    for w in WORKLOADS {
        if !selected(filter, w.name) {
            continue;
        }
        match run_one(w, &mut out) {
            Ok(rows) => {
                for r in rows {
                    let _ = writeln!(
                        out,
                        "{{\"workload\":\"{}\",\"mode\":\"{}\",\"median_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2},\"launches\":{}}}",
                        r.name, r.mode, r.median_us, r.min_us, r.max_us, r.launches
                    );
                    table.push((r, w.torch_us, w.target_us));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "{}: failed: {e}", w.name);
            }
        }
    }
    if selected(filter, "conv2d") {
        match conv_one(&mut out) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "{{\"workload\":\"conv2d\",\"mode\":\"eager\",\"median_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2},\"launches\":{}}}",
                    r.median_us, r.min_us, r.max_us, r.launches
                );
                // PyTorch on the H200: run benches/peers/conv2d_torch.py --device cuda there.
                table.push((r, f64::NAN, f64::NAN));
            }
            Err(e) => {
                let _ = writeln!(out, "conv2d: failed: {e}");
            }
        }
    }
    out.push_str("\n| workload | mode | median us/step | min..max | launches/step | PyTorch best (H200; W-large fp32: eager) | target |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (r, torch, target) in table {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1}..{:.1} | {} | {} | {} |",
            r.name,
            r.mode,
            r.median_us,
            r.min_us,
            r.max_us,
            r.launches,
            if torch.is_nan() {
                "(conv2d_torch.py)".to_string()
            } else {
                format!("{torch:.1}")
            },
            if target.is_nan() {
                "-".to_string()
            } else {
                format!("<= {target:.0}")
            }
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn a_whole_name_selects_one_workload_and_a_prefix_several() {
        let f = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selected(&[], "W-large-bf16"));
        assert!(selected(&f(&["W-large-fp32"]), "W-large-fp32"));
        assert!(!selected(&f(&["W-large-fp32"]), "W-large-fp32-unaligned"));
        assert!(!selected(&f(&["W-large-tf32"]), "W-large-tf32-in-place"));
        assert!(selected(&f(&["W-large"]), "W-large-tf32-in-place"));
        assert!(selected(&f(&["W-large-fp"]), "W-large-fp32-unaligned"));
        assert!(selected(&f(&["conv"]), "conv2d"));
        assert!(!selected(&f(&["W-seed"]), "conv2d"));
    }
}
