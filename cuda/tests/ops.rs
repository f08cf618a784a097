//! Every backend call, forward and backward, on the GPU against the reference `mote::Cpu` on
//! random data: both backends start from the same random arena, run the same call, and the
//! whole arenas must agree (so a kernel that writes out of place is caught too).
//!
//! Tolerances (f32): elementwise ops `1e-5 + 1e-5 |x|` (a few ulp: CUDA's libm differs from
//! Rust's by up to 2 ulp, and nvcc contracts to FMA); reductions, softmax, losses
//! `1e-5 + 1e-4 |x|` (summation order differs; a reduction over n terms `n * 5e-7` absolute, a
//! bias gradient over 256 rows `5e-5`); products `1e-4 + 1e-4 |x|` (k up to 129);
//! optimizer updates `1e-6 + 1e-5 |x|`.
//! Without a CUDA driver: on the emulated device (`tests/emu/device.cpp`, one line says so), or
//! one skip line with `MOTE_EMULATE=0`.

mod common;

use common::{close, gpu_with, PROBE_A, PROBE_B, PROBE_DY, PROBE_G, PROBE_R, PROBE_X};
use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Cpu, Rng, Shape};
use mote_cuda::{Cuda, Options, Precision};

const FLOATS: usize = 1 << 16;

/// The two backends over the same arena contents.
struct Pair {
    cpu: Vec<f32>,
    gpu: Cuda,
}

impl Pair {
    /// With `align: 1`: the calls here give offsets directly (no tape, no padding), so the
    /// arena is exactly the reference's `FLOATS` and the range errors agree.
    fn new(test: &str, lo: f64, hi: f64, seed: u64) -> Option<Pair> {
        let options = Options {
            align: 1,
            ..Options::default()
        };
        Pair::with(test, lo, hi, seed, options)
    }

    fn with(test: &str, lo: f64, hi: f64, seed: u64, options: Options) -> Option<Pair> {
        let mut gpu = gpu_with(test, FLOATS, options)?;
        let mut rng = Rng::new(seed);
        let cpu: Vec<f32> = (0..FLOATS).map(|_| rng.uniform(lo, hi) as f32).collect();
        gpu.write(0, &cpu).unwrap();
        Some(Pair { cpu, gpu })
    }

    /// Runs `f` on both and compares the whole arenas.
    fn check(
        &mut self,
        what: &str,
        rtol: f32,
        atol: f32,
        f: impl Fn(&mut dyn Backend<Elem = f32>) -> mote::Result<()>,
    ) {
        f(&mut Cpu::new(&mut self.cpu)).unwrap_or_else(|e| panic!("{what} (cpu): {e}"));
        f(&mut self.gpu)
            .unwrap_or_else(|e| panic!("{what} (gpu): {e} ({})", self.gpu.last_error()));
        let mut got = vec![0f32; FLOATS];
        self.gpu
            .read(0, &mut got)
            .unwrap_or_else(|e| panic!("{what} (gpu read): {e} ({})", self.gpu.last_error()));
        close(what, &got, &self.cpu, rtol, atol);
        // Continue from identical states.
        self.gpu.write(0, &self.cpu).unwrap();
    }
}

fn shape(d: &[usize]) -> Shape {
    Shape::new(d).unwrap()
}

fn view(offset: usize, d: &[usize]) -> View {
    View {
        offset,
        shape: shape(d),
    }
}

#[test]
fn unary_forward_and_backward() {
    for (signed, lo) in [(true, -3.0), (false, 0.1)] {
        let Some(mut p) = Pair::new("unary_forward_and_backward", lo, 3.0, 1) else {
            return;
        };
        for op in UnaryOp::EVERY {
            if signed && op.needs_positive() {
                continue;
            }
            // Aligned (float4 path) and odd offsets and lengths (scalar path).
            for (x, y, dy, dx, n) in [(0, 4096, 8192, 12288, 4000), (1, 4099, 8190, 12301, 1001)] {
                p.check(&format!("{op:?} forward"), 1e-5, 1e-5, |b| {
                    b.unary(op, x, y, n)
                });
                p.check(&format!("{op:?} backward"), 1e-5, 1e-5, |b| {
                    b.unary(op, x, y, n)?;
                    b.unary_backward(op, x, y, dy, dx, n)
                });
            }
        }
    }
    // Fixed points: the flat parts, kinks, thresholds, NaN and infinite inputs and gradients.
    let Some(mut p) = Pair::new("unary_forward_and_backward", -1.0, 1.0, 3) else {
        return;
    };
    for op in UnaryOp::EVERY {
        p.check(&format!("{op:?} at fixed points"), 1e-5, 1e-5, |b| {
            b.write(0, &PROBE_X)?;
            b.write(32, &PROBE_DY)?;
            b.fill(96, PROBE_X.len(), 0.5)?;
            b.unary(op, 0, 64, PROBE_X.len())?;
            b.unary_backward(op, 0, 64, 32, 96, PROBE_X.len())
        });
    }
}

#[test]
fn binary_forward_and_backward_with_broadcasting() {
    let Some(mut p) = Pair::new("binary_forward_and_backward_with_broadcasting", 0.5, 1.5, 2)
    else {
        return;
    };
    // The last two sum a broadcast operand's gradient over >= 64 elements (the split kernel).
    let cases: [(&[usize], &[usize], &[usize]); 8] = [
        (&[3, 5], &[3, 5], &[3, 5]),
        (&[4, 3, 5], &[5], &[4, 3, 5]),
        (&[4, 1, 5], &[3, 1], &[4, 3, 5]),
        (&[1], &[2, 3], &[2, 3]),
        (&[2, 3, 4, 5], &[3, 1, 1], &[2, 3, 4, 5]),
        (&[1000], &[1000], &[1000]),
        (&[100, 20], &[20], &[100, 20]),
        (&[300], &[1], &[300]),
    ];
    for op in BinaryOp::EVERY {
        for (sa, sb, sy) in cases {
            let (a, b, y, dx) = (view(0, sa), view(2000, sb), view(4000, sy), 6000);
            p.check(&format!("{op:?} {sa:?} {sb:?}"), 1e-5, 1e-5, |be| {
                be.binary(op, a, b, y)
            });
            for side in [Side::Lhs, Side::Rhs] {
                p.check(
                    &format!("{op:?} {side:?} {sa:?} {sb:?} backward"),
                    1e-4,
                    1e-5,
                    |be| be.binary_backward(op, side, a, b, y, dx),
                );
            }
        }
        // Fixed points (same shapes): ties, NaN, infinities; NaN gradients where not selected.
        let n = PROBE_A.len();
        let v = |o: usize| view(o, &[n]);
        for side in [Side::Lhs, Side::Rhs] {
            p.check(
                &format!("{op:?} {side:?} at fixed points"),
                1e-6,
                1e-7,
                |be| {
                    be.write(0, &PROBE_A)?;
                    be.write(16, &PROBE_B)?;
                    be.write(32, &PROBE_G)?;
                    be.fill(48, n, 0.5)?;
                    be.binary(op, v(0), v(16), v(64))?;
                    be.binary_backward(op, side, v(0), v(16), v(32), 48)
                },
            );
        }
    }
}

#[test]
fn gemm_every_layout() {
    let Some(mut p) = Pair::new("gemm_every_layout", -1.0, 1.0, 3) else {
        return;
    };
    // k = 0 included: C = 0, or C unchanged when accumulating (cuBLAS needs leading
    // dimensions of at least 1 there).
    for (m, n, k) in [(7, 5, 3), (64, 32, 10), (33, 65, 129), (4, 3, 0)] {
        for at in [false, true] {
            for bt in [false, true] {
                for acc in [false, true] {
                    let g = Gemm {
                        batch: 1,
                        m,
                        n,
                        k,
                        a: 0,
                        a_trans: at,
                        a_batch: 0,
                        b: 20000,
                        b_trans: bt,
                        b_batch: 0,
                        c: 40000,
                        c_batch: 0,
                        accumulate: acc,
                    };
                    p.check(&format!("gemm {g:?}"), 1e-4, 1e-4, |be| be.gemm(&g));
                }
            }
        }
    }
    // Batched, a shared operand, and a shared (summed) output.
    let g = Gemm {
        batch: 3,
        m: 6,
        n: 5,
        k: 4,
        a: 0,
        a_trans: false,
        a_batch: 24,
        b: 1000,
        b_trans: true,
        b_batch: 0,
        c: 2000,
        c_batch: 30,
        accumulate: false,
    };
    p.check("batched gemm", 1e-4, 1e-4, |be| be.gemm(&g));
    let g2 = Gemm {
        c_batch: 0,
        accumulate: true,
        b_batch: 20,
        ..g
    };
    p.check("batched gemm into a shared output", 1e-4, 1e-4, |be| {
        be.gemm(&g2)
    });
    // Every layout batched, with A shared (the tape's `[m, k] x [b, k, n]`), B shared, or
    // neither; accumulate on and off.
    for at in [false, true] {
        for bt in [false, true] {
            for (a_batch, b_batch) in [(0, 20), (24, 0), (24, 20)] {
                for accumulate in [false, true] {
                    let g = Gemm {
                        batch: 3,
                        m: 6,
                        n: 5,
                        k: 4,
                        a: 0,
                        a_trans: at,
                        a_batch,
                        b: 1000,
                        b_trans: bt,
                        b_batch,
                        c: 2000,
                        c_batch: 30,
                        accumulate,
                    };
                    p.check(&format!("batched gemm {g:?}"), 1e-4, 1e-4, |be| be.gemm(&g));
                }
            }
        }
    }
    // Outputs that overlap (stride 7 < 30 elements): the batches in order, as the reference
    // runs them, each overwriting or adding to what the one before left.
    for accumulate in [false, true] {
        let g3 = Gemm {
            c_batch: 7,
            accumulate,
            ..g
        };
        p.check(
            &format!("batched gemm, overlapping outputs, accumulate {accumulate}"),
            1e-4,
            1e-4,
            |be| be.gemm(&g3),
        );
    }
}

/// TF32 products whose operands are not both K-major, with the K-major copies forced
/// (`Options::k_major_from` 0) and without: the same products as the reference within TF32's
/// rounding (`1e-2 + 1e-2 |x|`: inputs to 10-bit mantissas, k up to 129), and a transpose
/// launched for each operand that needs one.
#[test]
fn tf32_products_with_k_major_copies() {
    for from in [0, u64::MAX] {
        let options = Options {
            precision: Precision::Tf32,
            k_major_from: from,
            ..Options::default()
        };
        let test = "tf32_products_with_k_major_copies";
        let Some(mut p) = Pair::with(test, -1.0, 1.0, 5, options) else {
            return;
        };
        for (m, n, k) in [(7, 5, 3), (33, 65, 129), (64, 32, 40)] {
            for at in [false, true] {
                for bt in [false, true] {
                    let g = Gemm {
                        batch: 1,
                        m,
                        n,
                        k,
                        a: 0,
                        a_trans: at,
                        a_batch: 0,
                        b: 20000,
                        b_trans: bt,
                        b_batch: 0,
                        c: 40000,
                        c_batch: 0,
                        accumulate: true,
                    };
                    p.gpu.profile(true);
                    p.check(&format!("tf32 {g:?}, from {from}"), 1e-2, 1e-2, |be| {
                        be.gemm(&g)
                    });
                    let launches = p.gpu.profile_take().unwrap();
                    p.gpu.profile(false);
                    let copies: usize = launches
                        .iter()
                        .filter(|(name, _, _)| *name == "transpose")
                        .map(|(_, n, _)| n)
                        .sum();
                    let want = if from == 0 {
                        usize::from(at) + usize::from(!bt)
                    } else {
                        0
                    };
                    assert_eq!(copies, want, "{g:?}, from {from}: {launches:?}");
                }
            }
        }
    }
}

#[test]
fn strided_copies() {
    let Some(mut p) = Pair::new("strided_copies", -1.0, 1.0, 4) else {
        return;
    };
    let s = shape(&[3, 4, 5]);
    let contiguous = Strided::contiguous(0, &s);
    let transposed = Strided {
        offset: 0,
        strides: [1, 3, 12, 0],
    };
    let bias = Strided {
        offset: 5000,
        strides: [0, 0, 1, 0],
    };
    let out = Strided::contiguous(1000, &s);
    for acc in [false, true] {
        p.check("contiguous copy", 0.0, 0.0, |b| {
            b.copy_strided(&s, contiguous, out, acc)
        });
        p.check("transpose", 1e-6, 0.0, |b| {
            b.copy_strided(&s, transposed, out, acc)
        });
        p.check("broadcast", 1e-6, 0.0, |b| {
            b.copy_strided(&s, bias, out, acc)
        });
    }
    // A broadcast's backward: sum into the stride-0 destination.
    p.check("broadcast backward", 1e-5, 1e-5, |b| {
        b.copy_strided(&s, out, bias, true)
    });
    let big = shape(&[256, 100]);
    let row_bias = Strided {
        offset: 40000,
        strides: [0, 1, 0, 0],
    };
    p.check("bias gradient", 1e-4, 5e-5, |b| {
        b.copy_strided(&big, Strided::contiguous(0, &big), row_bias, true)
    });
    // Windows of a wider tensor, not broadcasts (what slice and concat make): columns 3..8 of
    // a [6, 11] matrix out, and into columns 2..7 of a [6, 9] one; rows 2..5 of a [9, 7]
    // matrix; length-1 dimensions with huge strides (never stepped over).
    let win = shape(&[6, 5]);
    let slice = Strided {
        offset: 3,
        strides: [11, 1, 0, 0],
    };
    let into = Strided {
        offset: 3000 + 2,
        strides: [9, 1, 0, 0],
    };
    let rows = shape(&[3, 7]);
    let row_window = Strided {
        offset: 2 * 7,
        strides: [7, 1, 0, 0],
    };
    let ones = shape(&[1, 4, 1]);
    let huge = Strided {
        offset: 10,
        strides: [usize::MAX / 2, 1, 1 << 40, 0],
    };
    for acc in [false, true] {
        p.check("a slice's columns", 0.0, 0.0, |b| {
            b.copy_strided(&win, slice, Strided::contiguous(1000, &win), acc)
        });
        p.check("a concat's columns", 0.0, 0.0, |b| {
            b.copy_strided(&win, Strided::contiguous(0, &win), into, acc)
        });
        p.check("a slice's rows", 0.0, 0.0, |b| {
            b.copy_strided(&rows, row_window, Strided::contiguous(1000, &rows), acc)
        });
        p.check("length-1 dimensions with huge strides", 0.0, 0.0, |b| {
            b.copy_strided(&ones, huge, Strided::contiguous(1000, &ones), acc)
        });
    }
}

#[test]
fn reductions() {
    let Some(mut p) = Pair::new("reductions", -2.0, 2.0, 5) else {
        return;
    };
    for op in ReduceOp::EVERY {
        for r in [
            Axis3 {
                outer: 1,
                n: 10000,
                inner: 1,
            },
            // A whole tensor on 3 blocks (`reduce_all`).
            Axis3 {
                outer: 1,
                n: 19000,
                inner: 1,
            },
            Axis3 {
                outer: 70,
                n: 33,
                inner: 1,
            },
            Axis3 {
                outer: 3,
                n: 4,
                inner: 5,
            },
            Axis3 {
                outer: 1,
                n: 7,
                inner: 300,
            },
        ] {
            let (x, y, dy, dx) = (0, 20000, 30000, 40000);
            // A sum of n terms in [-2, 2] in another order: absolute error up to ~ n * 5e-7.
            let atol = 1e-5f32.max(5e-7 * r.n as f32);
            p.check(&format!("{op:?} {r:?}"), 1e-4, atol, |b| {
                b.reduce(op, r, x, y)
            });
            p.check(&format!("{op:?} {r:?} backward"), 1e-4, 1e-5, |b| {
                b.reduce(op, r, x, y)?;
                b.reduce_backward(op, r, x, y, dy, dx)
            });
        }
        // Fixed points: NaN, ties, infinities, signed zeros, along a strided and an innermost
        // axis.
        for (outer, inner) in [(2, 2), (4, 1)] {
            let r = Axis3 { outer, n: 4, inner };
            p.check(&format!("{op:?} {r:?} at fixed points"), 1e-6, 1e-7, |b| {
                b.write(0, &PROBE_R)?;
                b.reduce(op, r, 0, 32)?;
                b.reduce_backward(op, r, 0, 32, 48, 64)
            });
        }
    }
}

#[test]
fn softmax_and_log_softmax() {
    let Some(mut p) = Pair::new("softmax_and_log_softmax", -4.0, 4.0, 6) else {
        return;
    };
    for log in [false, true] {
        for r in [
            Axis3 {
                outer: 128,
                n: 10,
                inner: 1,
            },
            Axis3 {
                outer: 3,
                n: 100,
                inner: 1,
            },
            Axis3 {
                outer: 4,
                n: 6,
                inner: 7,
            },
        ] {
            let (x, y, dy, dx) = (0, 10000, 20000, 30000);
            p.check(&format!("softmax log={log} {r:?}"), 1e-4, 1e-6, |b| {
                b.softmax(log, r, x, y)
            });
            p.check(
                &format!("softmax log={log} {r:?} backward"),
                1e-4,
                1e-5,
                |b| {
                    b.softmax(log, r, x, y)?;
                    b.softmax_backward(log, r, y, dy, dx)
                },
            );
        }
    }
}

#[test]
fn losses() {
    let Some(mut p) = Pair::new("losses", -2.0, 2.0, 7) else {
        return;
    };
    // Labels for cross-entropy at 9000..9128: integers in 0..10.
    let labels: Vec<f32> = (0..128).map(|i| ((i * 7) % 10) as f32).collect();
    p.cpu[9000..9128].copy_from_slice(&labels);
    p.gpu.write(9000, &labels).unwrap();
    // The same at 9200..9328 with every fifth row ignored (PyTorch's `ignore_index`, as the
    // core marks it): no loss, no gradient.
    let ignored: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if i % 5 == 2 {
                mote::ops::loss::IGNORED_LABEL
            } else {
                l
            }
        })
        .collect();
    p.cpu[9200..9328].copy_from_slice(&ignored);
    p.gpu.write(9200, &ignored).unwrap();
    // BCE targets in [0, 1].
    for v in &mut p.cpu[12000..13000] {
        *v = v.abs() / 2.0;
    }
    let t01 = p.cpu[12000..13000].to_vec();
    p.gpu.write(12000, &t01).unwrap();
    let (dy, y) = (15000, 15001);
    let cases = [
        (LossOp::Mse, 0, view(0, &[1000]), view(2000, &[1000])),
        (
            LossOp::BceWithLogits,
            0,
            view(0, &[1000]),
            view(12000, &[1000]),
        ),
        (
            LossOp::CrossEntropy,
            10,
            view(0, &[128, 10]),
            view(9000, &[128]),
        ),
        // More classes than a warp has lanes: each lane loops over several.
        (
            LossOp::CrossEntropy,
            70,
            view(0, &[128, 70]),
            view(9000, &[128]),
        ),
        (
            LossOp::CrossEntropySmoothed(0.1),
            10,
            view(0, &[128, 10]),
            view(9000, &[128]),
        ),
        (
            LossOp::CrossEntropySmoothed(0.25),
            70,
            view(0, &[128, 70]),
            view(9000, &[128]),
        ),
        (
            LossOp::CrossEntropy,
            10,
            view(0, &[128, 10]),
            view(9200, &[128]),
        ),
        (
            LossOp::CrossEntropySmoothed(0.25),
            70,
            view(0, &[128, 70]),
            view(9200, &[128]),
        ),
    ];
    for (op, classes, pv, tv) in cases {
        p.check(&format!("{op:?}"), 1e-4, 1e-6, |b| {
            b.loss(op, classes, pv, tv, y)
        });
        for lhs in [true, false] {
            p.check(&format!("{op:?} backward lhs={lhs}"), 1e-4, 1e-6, |b| {
                b.loss_backward(op, lhs, classes, pv, tv, dy, 20000)
            });
        }
    }
    // Elementwise losses over more than one block's share (8192 elements): 2 blocks' partial
    // sums, added by the last block (the cross-entropies above, 128 rows, run on 4 blocks).
    for op in [LossOp::Mse, LossOp::BceWithLogits] {
        let (pv, tv) = (view(30000, &[15000]), view(45000, &[15000]));
        for run in 0..2 {
            // Twice: the last block resets the ticket for the next launch.
            p.check(
                &format!("{op:?} over 2 blocks, run {run}"),
                1e-4,
                1e-6,
                // NaN first on both sides: a launch that does not write the loss fails.
                |b| {
                    b.write(y, &[f32::NAN])?;
                    b.loss(op, 0, pv, tv, y)
                },
            );
        }
    }
    // A bad label: the error comes from the next read.
    p.gpu.write(9005, &[10.0]).unwrap();
    let (pv, tv) = (view(0, &[128, 10]), view(9000, &[128]));
    p.gpu.loss(LossOp::CrossEntropy, 10, pv, tv, y).unwrap();
    let mut out = [0f32];
    assert_eq!(
        p.gpu.read(y, &mut out),
        Err(mote::Error::IndexOutOfRange {
            op: "cross_entropy label",
            index: 10,
            bound: 10
        })
    );
    // Cleared after being reported.
    p.gpu.read(y, &mut out).unwrap();
}

#[test]
fn optimizer_updates_and_helpers() {
    let Some(mut p) = Pair::new("optimizer_updates_and_helpers", -1.0, 1.0, 8) else {
        return;
    };
    for (momentum, dampening, nesterov, first, wd) in [
        (0.0, 0.0, false, false, 0.0),
        (0.9, 0.0, false, true, 0.01),
        (0.9, 0.0, true, false, 0.0),
        (0.8, 0.3, false, false, 0.02),
        (0.8, 0.3, false, true, 0.0),
    ] {
        let u = SgdUpdate {
            param: 0,
            grad: 5000,
            momentum_buf: (momentum > 0.0).then_some(10000),
            len: 4001,
            lr: 0.05,
            momentum,
            dampening,
            weight_decay: wd,
            nesterov,
            first,
        };
        p.check(&format!("sgd {u:?}"), 1e-5, 1e-6, |b| b.sgd(&u));
        // Several tensors in one step (one `sgd_multi` launch on the GPU), aligned and not:
        // params in 0..12096, gradients +13000, momentum +26000.
        let us: Vec<SgdUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| SgdUpdate {
                param,
                grad: param + 13000,
                momentum_buf: (momentum > 0.0).then_some(param + 26000),
                len,
                ..u
            })
            .collect();
        p.check(&format!("sgd of 3 tensors {u:?}"), 1e-5, 1e-6, |b| {
            us.iter().try_for_each(|u| b.sgd(u))
        });
    }
    // Two SGD steps with nothing between them: the second step's updates of the same tensors
    // go to a launch of their own (one launch holding both would update each element twice
    // at once, from different threads).
    let two: Vec<SgdUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
        .iter()
        .map(|&(param, len)| SgdUpdate {
            param,
            grad: param + 13000,
            momentum_buf: Some(param + 26000),
            len,
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            first: false,
        })
        .collect();
    p.gpu.profile(true);
    p.check("two SGD steps back to back", 1e-5, 1e-6, |b| {
        (0..2).try_for_each(|_| two.iter().try_for_each(|u| b.sgd(u)))
    });
    let launches = p.gpu.profile_take().unwrap();
    p.gpu.profile(false);
    let multi = launches
        .iter()
        .find(|l| l.0 == "sgd_multi")
        .map_or(0, |l| l.1);
    assert_eq!(multi, 2, "one sgd_multi launch a step: {launches:?}");
    for (decoupled, ams) in [(false, false), (true, false), (false, true), (true, true)] {
        // Several parameters in one step (one fused launch on the GPU, AMSGrad's too), aligned
        // and not. Disjoint tensors: params in 0..12096,
        // gradients +13000, m +26000, v +39000, AMSGrad's running maximum +52000.
        let us: Vec<AdamUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| AdamUpdate {
                param,
                grad: param + 13000,
                m: param + 26000,
                v: param + 39000,
                len,
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled,
                bias1: 1.0 - 0.9f64.powi(3),
                bias2: 1.0 - 0.999f64.powi(3),
                vmax: ams.then_some(param + 52000),
            })
            .collect();
        // Second moments (and their running maximum) must be >= 0.
        for u in &us {
            for v in &mut p.cpu[u.v..u.v + u.len] {
                *v = v.abs();
            }
            if let Some(vm) = u.vmax {
                for v in &mut p.cpu[vm..vm + u.len] {
                    *v = v.abs();
                }
            }
        }
        let snapshot = p.cpu.clone();
        p.gpu.write(0, &snapshot).unwrap();
        p.check(
            &format!("adam decoupled={decoupled} amsgrad={ams}"),
            1e-5,
            1e-6,
            |b| {
                for u in &us {
                    b.adam(u)?;
                }
                Ok(())
            },
        );
        // One update alone in a step: the single-tensor kernel, not the fused one.
        p.check(
            &format!("adam alone decoupled={decoupled} amsgrad={ams}"),
            1e-5,
            1e-6,
            |b| b.adam(&us[1]),
        );
    }
    // RMSprop plain, with momentum, centered, both; Adagrad with a decaying rate. Several
    // tensors in one step (one fused launch on the GPU), aligned and not, and one alone (the
    // single-tensor kernel). Disjoint tensors: params in 0..12096, gradients +13000, squares
    // +26000 (made >= 0), the gradient's average +39000 (below their root, as a running
    // average is), momentum +52000.
    for (alpha, momentum, centered, lr_decay) in [
        (0.99, 0.0, false, 0.0),
        (0.9, 0.5, false, 0.0),
        (0.9, 0.0, true, 0.0),
        (0.95, 0.9, true, 0.0),
        (1.0, 0.0, false, 0.1),
    ] {
        let us: Vec<RmsUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| RmsUpdate {
                param,
                grad: param + 13000,
                sq: param + 26000,
                avg: centered.then_some(param + 39000),
                momentum_buf: (momentum > 0.0).then_some(param + 52000),
                len,
                lr: 0.01,
                lr_decay,
                step: 3,
                alpha,
                gain: if alpha == 1.0 { 1.0 } else { 1.0 - alpha },
                eps: 1e-8,
                weight_decay: 0.01,
                momentum,
            })
            .collect();
        for u in &us {
            for i in 0..u.len {
                let sq = p.cpu[u.sq + i].abs();
                p.cpu[u.sq + i] = sq;
                // The random value's sign: the average's direction.
                let a = p.cpu[u.param + 39000 + i].signum();
                p.cpu[u.param + 39000 + i] = 0.5 * sq.sqrt() * a;
            }
        }
        let snapshot = p.cpu.clone();
        p.gpu.write(0, &snapshot).unwrap();
        let what = format!("rms alpha={alpha} momentum={momentum} centered={centered}");
        p.check(&what, 1e-5, 1e-6, |b| us.iter().try_for_each(|u| b.rms(u)));
        p.check(&format!("{what} alone"), 1e-5, 1e-6, |b| b.rms(&us[1]));
    }
    p.check("fill", 0.0, 0.0, |b| b.fill(3, 1001, 0.25));
    p.check("scale", 1e-6, 0.0, |b| b.scale(7, 3001, -0.5));
    let c = Cpu::new(&mut p.cpu).sum_squares(5, 10000).unwrap();
    let g = p.gpu.sum_squares(5, 10000).unwrap();
    assert!((c - g).abs() <= 1e-4 * c.abs(), "sum_squares: {g} vs {c}");
}

#[test]
fn range_and_aliasing_errors_match_the_reference() {
    let Some(mut p) = Pair::new("range_and_aliasing_errors_match_the_reference", 0.0, 1.0, 9)
    else {
        return;
    };
    let mut cpu = Cpu::new(&mut p.cpu);
    for (what, c, g) in [
        (
            "out of range",
            cpu.unary(UnaryOp::Neg, 0, FLOATS - 1, 10),
            p.gpu.unary(UnaryOp::Neg, 0, FLOATS - 1, 10),
        ),
        (
            "aliasing",
            cpu.unary(UnaryOp::Neg, 0, 5, 10),
            p.gpu.unary(UnaryOp::Neg, 0, 5, 10),
        ),
    ] {
        assert!(c.is_err(), "{what}");
        assert_eq!(c, g, "{what}");
    }
}

/// Drawn shapes, offsets (aligned to 4 elements or not: the wide loads and their tails) and
/// ops, against the reference: binary ops with broadcasting at ranks 1 to 4, strided copies of
/// permuted (transposed) tensors, reductions and softmax over every axis of a drawn shape, and
/// products of drawn sizes and layouts (batched, an operand shared or not, k = 0 included).
/// What the fixed cases above cannot reach: odd sizes, every broadcast pattern, every axis.
#[test]
fn drawn_shapes_match_the_reference() {
    let Some(mut p) = Pair::new("drawn_shapes_match_the_reference", 0.5, 1.5, 11) else {
        return;
    };
    let mut rng = Rng::new(2026);
    let dims = |rng: &mut Rng, rank: usize| -> Vec<usize> {
        (0..rank).map(|_| 1 + rng.below(9) as usize).collect()
    };
    for case in 0..40 {
        let rank = 1 + rng.below(4) as usize;
        let out = dims(&mut rng, rank);
        // Each operand: the output's shape with some dimensions 1, and some leading ones dropped.
        let operand = |rng: &mut Rng| -> Vec<usize> {
            let drop = rng.below(rank as u32) as usize;
            out[drop..]
                .iter()
                .map(|&d| if rng.below(3) == 0 { 1 } else { d })
                .collect()
        };
        let (sa, sb) = (operand(&mut rng), operand(&mut rng));
        let at = |rng: &mut Rng, base: usize| base + rng.below(4) as usize;
        let (a, b, y, dx) = (
            view(at(&mut rng, 0), &sa),
            view(at(&mut rng, 8000), &sb),
            view(at(&mut rng, 16000), &out),
            at(&mut rng, 24000),
        );
        let op = BinaryOp::EVERY[rng.below(6) as usize];
        let what = format!("case {case}: {op:?} {sa:?} {sb:?} -> {out:?}");
        p.check(&what, 1e-5, 1e-5, |be| be.binary(op, a, b, y));
        for side in [Side::Lhs, Side::Rhs] {
            p.check(&format!("{what} {side:?} backward"), 1e-4, 1e-5, |be| {
                be.binary_backward(op, side, a, b, y, dx)
            });
        }

        // A permuted copy: the source read through the permutation's strides.
        let s = shape(&out);
        let mut perm: Vec<usize> = (0..rank).collect();
        rng.shuffle(&mut perm);
        let contiguous = Strided::contiguous(0, &s);
        let mut strides = [0usize; 4];
        for (i, &j) in perm.iter().enumerate() {
            strides[i] = contiguous.strides[j];
        }
        let src = Strided {
            offset: at(&mut rng, 0),
            strides,
        };
        let dst = Strided::contiguous(at(&mut rng, 16000), &s);
        let acc = rng.below(2) == 1;
        p.check(
            &format!("case {case}: copy {out:?} {perm:?} acc {acc}"),
            1e-6,
            0.0,
            |be| be.copy_strided(&s, src, dst, acc),
        );

        // A reduction and a softmax over a drawn axis.
        let axis = rng.below(rank as u32) as usize;
        let r = Axis3 {
            outer: out[..axis].iter().product(),
            n: out[axis],
            inner: out[axis + 1..].iter().product(),
        };
        let (x, y, dy, dx) = (
            at(&mut rng, 0),
            at(&mut rng, 16000),
            24000,
            at(&mut rng, 32000),
        );
        let op = ReduceOp::EVERY[rng.below(4) as usize];
        p.check(&format!("case {case}: {op:?} {r:?}"), 1e-4, 1e-5, |be| {
            be.reduce(op, r, x, y)
        });
        p.check(
            &format!("case {case}: {op:?} {r:?} backward"),
            1e-4,
            1e-5,
            |be| {
                be.reduce(op, r, x, y)?;
                be.reduce_backward(op, r, x, y, dy, dx)
            },
        );
        let log = rng.below(2) == 1;
        p.check(
            &format!("case {case}: softmax log={log} {r:?}"),
            1e-4,
            1e-6,
            |be| be.softmax(log, r, x, y),
        );
        // A product of drawn sizes and layout, batched or not, at offsets aligned or not.
        let (m, n, k) = (
            1 + rng.below(40) as usize,
            1 + rng.below(40) as usize,
            rng.below(40) as usize,
        );
        let batch = 1 + rng.below(3) as usize;
        let shared = rng.below(3);
        let g = Gemm {
            batch,
            m,
            n,
            k,
            a: at(&mut rng, 0),
            a_trans: rng.below(2) == 1,
            a_batch: if shared == 0 { 0 } else { m * k },
            b: at(&mut rng, 8000),
            b_trans: rng.below(2) == 1,
            b_batch: if shared == 1 { 0 } else { k * n },
            c: at(&mut rng, 16000),
            c_batch: m * n,
            accumulate: rng.below(2) == 1,
        };
        p.check(&format!("case {case}: {g:?}"), 1e-4, 1e-4, |be| be.gemm(&g));
        p.check(
            &format!("case {case}: softmax log={log} {r:?} backward"),
            1e-4,
            1e-5,
            |be| {
                be.softmax(log, r, x, y)?;
                be.softmax_backward(log, r, y, dy, dx)
            },
        );
    }
}
