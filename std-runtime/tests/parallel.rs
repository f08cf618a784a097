//! The parallel backend against the reference backend: every kernel on random inputs, with the
//! same test body run on both (`both!`), at sizes below and above the parallel threshold; then
//! gradients through a model and a short training run.
//!
//! Most kernels must agree bit for bit (they split the work, not the arithmetic); products and
//! split sums (a loss's value, the sum of squares) to rounding.

use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, SgdUpdate};
use mote::{
    Adam, AdamConfig, Backend, Cpu, Float, HostBackend, Linear, Module, Optimizer, Rng, Sgd,
    SgdConfig, Shape, Tape,
};
use mote_runtime::parallel::{self, ConvKernels, Parallel, PAR_MIN};
use proptest::prelude::*;

/// Three threads (an odd count, so that chunk arithmetic is exercised), set before any test
/// touches the pool.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        parallel::set_threads(3).expect("the pool is set first");
    });
    assert_eq!(parallel::threads(), 3);
}

/// Runs `$body` with `$b` bound to a `Cpu` and then to a `Parallel` backend, each over its own
/// copy of `$mem`; gives both results and both memories.
macro_rules! both {
    ($mem:expr, |$b:ident| $body:expr) => {{
        init();
        let mut m1 = $mem.clone();
        let mut m2 = $mem.clone();
        let r1 = {
            #[allow(unused_mut)]
            let mut $b = Cpu::new(&mut m1);
            #[allow(clippy::redundant_closure_call)]
            (|| $body)()
        };
        let r2 = {
            #[allow(unused_mut)]
            let mut $b = Parallel::new(&mut m2);
            #[allow(clippy::redundant_closure_call)]
            (|| $body)()
        };
        (r1, m1, r2, m2)
    }};
}

fn random<T: Float>(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| T::from_f64(rng.uniform(lo, hi))).collect()
}

/// Bit for bit (NaN equal to NaN).
fn assert_same<T: Float>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same = x.to_f64().to_bits() == y.to_f64().to_bits() || (x.is_nan() && y.is_nan());
        assert!(same, "{what}: element {i}: cpu {x} parallel {y}");
    }
}

/// Within `tol` relative to the larger magnitude (and 1).
fn assert_close<T: Float>(a: &[T], b: &[T], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        if x.is_nan() || y.is_nan() {
            assert!(
                x.is_nan() && y.is_nan(),
                "{what}: element {i}: cpu {x} parallel {y}"
            );
            continue;
        }
        let scale = x.abs().max(y.abs()).max(1.0);
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: cpu {x} parallel {y}"
        );
    }
}

/// Within `rel` of the larger magnitude, or `abs`.
fn assert_near(a: &[f32], b: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let ok = (x - y).abs() <= rel * x.abs().max(y.abs()) + abs || (x.is_nan() && y.is_nan());
        assert!(ok, "{what}: element {i}: cpu {x} parallel {y}");
    }
}

fn shape(d: &[usize]) -> Shape {
    Shape::new(d).unwrap()
}

/// Lengths around the threshold: tiny, just below, above.
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..200,
        (PAR_MIN - 100)..PAR_MIN,
        PAR_MIN..(3 * PAR_MIN)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unary_forward_and_backward(len in lengths(), seed in any::<u64>()) {
        for op in UnaryOp::EVERY {
            // x, y, dy, dx
            let mem: Vec<f32> = random(4 * len, seed, -2.0, 2.0);
            let (r1, m1, r2, m2) = both!(mem, |b| {
                b.unary(op, 0, len, len)?;
                b.unary_backward(op, 0, len, 2 * len, 3 * len, len)
            });
            prop_assert_eq!(r1, r2);
            assert_same(&m1, &m2, op.name());
        }
    }

    #[test]
    fn binary_with_broadcasting(
        rows in prop_oneof![1usize..8, 600usize..1400],
        cols in prop_oneof![1usize..9, 200usize..300],
        batch in 1usize..3,
        form in 0usize..6,
        op in 0usize..BinaryOp::EVERY.len(),
        seed in any::<u64>(),
    ) {
        let op = BinaryOp::EVERY[op];
        let ys = shape(&[batch, rows, cols]);
        let sa = ys;
        let sb = match form {
            0 => ys,
            1 => shape(&[cols]),
            2 => shape(&[rows, 1]),
            3 => shape(&[1, rows, cols]),
            4 => shape(&[batch, 1, cols]),
            _ => Shape::SCALAR,
        };
        // Swap operands half the time so that either side is the broadcast one.
        let (sa, sb) = if seed % 2 == 0 { (sa, sb) } else { (sb, sa) };
        let (na, nb, ny) = (sa.numel(), sb.numel(), ys.numel());
        let a = View { offset: 0, shape: sa };
        let bv = View { offset: na, shape: sb };
        let y = View { offset: na + nb, shape: ys };
        let dy = View { offset: na + nb + ny, shape: ys };
        let (da, db) = (na + nb + 2 * ny, 2 * na + nb + 2 * ny);
        let mem: Vec<f32> = random(2 * (na + nb + ny), seed, 0.5, 2.0);
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.binary(op, a, bv, y)?;
            b.binary_backward(op, Side::Lhs, a, bv, dy, da)?;
            b.binary_backward(op, Side::Rhs, a, bv, dy, db)
        });
        prop_assert_eq!(r1, r2);
        // A broadcast operand's gradient is a sum: serial on both, so still exact.
        assert_same(&m1, &m2, op.name());
    }

    #[test]
    fn gemm_every_layout(
        m in prop_oneof![1usize..6, 7usize..40, 60usize..140],
        n in prop_oneof![1usize..6, 7usize..40, 60usize..140],
        k in prop_oneof![1usize..6, 7usize..40, 60usize..140],
        batch in 1usize..4,
        layout in 0usize..4,
        shared in 0usize..4,
        accumulate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (a_trans, b_trans) = (layout & 1 == 1, layout & 2 == 2);
        // Shared A, shared B, or a shared (summed) C, as the tape's batched products use.
        let a_batch = if shared == 1 { 0 } else { m * k };
        let b_batch = if shared == 2 { 0 } else { k * n };
        let c_batch = if shared == 3 { 0 } else { m * n };
        let g0 = Gemm {
            batch, m, n, k, a: 0, a_trans, a_batch, b: 0, b_trans, b_batch, c: 0, c_batch,
            accumulate,
        };
        let (sa, sb, sc) = g0.spans();
        let g = Gemm { b: sa, c: sa + sb, ..g0 };
        let mut mem: Vec<f64> = random(sa + sb + sc, seed, -1.0, 1.0);
        if !accumulate {
            // An overwritten C must not be read: NaN there must not leak out.
            for v in &mut mem[sa + sb..] {
                *v = f64::NAN;
            }
        }
        let (r1, m1, r2, m2) = both!(mem, |b| b.gemm(&g));
        prop_assert_eq!(r1, r2);
        assert_close(&m1, &m2, 1e-12 * k as f64, "gemm f64");
        // And in f32.
        let mem32: Vec<f32> = mem.iter().map(|&v| v as f32).collect();
        let (r1, m1, r2, m2) = both!(mem32, |b| b.gemm(&g));
        prop_assert_eq!(r1, r2);
        assert_close(&m1, &m2, 1e-5 * (k as f64).sqrt(), "gemm f32");
    }

    // Single products of up to 2^14 multiply-adds, which the backend computes with its own
    // register-blocked kernel in f32 (`parallel/small.rs`): every layout, partial blocks on
    // every side, and memory after C that must stay untouched.
    #[test]
    fn small_products_every_layout(
        m in 1usize..48,
        n in 1usize..48,
        depth in 1usize..4096,
        layout in 0usize..4,
        accumulate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let k = 1 + (depth - 1) % ((1 << 14) / (m * n)).max(1);
        let (a_trans, b_trans) = (layout & 1 == 1, layout & 2 == 2);
        let g0 = Gemm {
            batch: 1, m, n, k, a: 0, a_trans, a_batch: 0, b: 0, b_trans, b_batch: 0, c: 0,
            c_batch: 0, accumulate,
        };
        let (sa, sb, sc) = g0.spans();
        let g = Gemm { b: sa, c: sa + sb, ..g0 };
        let mut mem: Vec<f32> = random(sa + sb + sc + 40, seed, -1.0, 1.0);
        if !accumulate {
            for v in &mut mem[sa + sb..sa + sb + sc] {
                *v = f32::NAN;
            }
        }
        let (r1, m1, r2, m2) = both!(mem, |b| b.gemm(&g));
        prop_assert_eq!(r1, r2);
        assert_close(&m1, &m2, 1e-5 * (k as f64).sqrt(), "small gemm f32");
        // The AVX2 blocks (8 or 16 columns), as on a CPU without AVX-512.
        let mut m3 = mem.clone();
        let r3 = Parallel::new(&mut m3).with_conv_kernels(ConvKernels::Avx2).gemm(&g);
        prop_assert_eq!(r3.is_ok(), r1.is_ok());
        assert_close(&m1, &m3, 1e-5 * (k as f64).sqrt(), "small gemm f32 (AVX2)");
    }

    #[test]
    fn strided_copies(
        rows in prop_oneof![1usize..5, 700usize..1500],
        cols in prop_oneof![1usize..5, 380usize..500],
        form in 0usize..5,
        accumulate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let space = shape(&[rows, cols]);
        let n = rows * cols;
        let contiguous = space.strides();
        // (src strides, dst strides, dst span) for: copy, transpose, bias broadcast,
        // bias gradient (a column sum), a window of a wider destination (concat).
        let (ss, ds, dspan): ([usize; 4], [usize; 4], usize) = match form {
            0 => (contiguous, contiguous, n),
            1 => ([1, rows, 0, 0], contiguous, n),
            2 => ([0, 1, 0, 0], contiguous, n),
            3 => (contiguous, [0, 1, 0, 0], cols),
            _ => (contiguous, [2 * cols, 1, 0, 0], 2 * cols * rows),
        };
        let accumulate = accumulate || form == 3;
        let src = Strided { offset: 0, strides: ss };
        let dst = Strided { offset: n, strides: ds };
        let mem: Vec<f32> = random(n + dspan, seed, -1.0, 1.0);
        let (r1, m1, r2, m2) = both!(mem, |b| b.copy_strided(&space, src, dst, accumulate));
        prop_assert_eq!(r1, r2);
        assert_same(&m1, &m2, "copy_strided");
    }

    #[test]
    fn window_copies(
        n in 1usize..4,
        c in prop_oneof![1usize..4, 20usize..40],
        h in 2usize..20,
        w in 2usize..40,
        tap in 0usize..9,
        to_image in any::<bool>(),
        accumulate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // One tap of a 3x3, padding-1 convolution's im2col (image -> columns) or col2im
        // (columns summed into the image): `[N, C, rows, cols]` windows, rows contiguous.
        let (i, j) = (tap / 3, tap % 3);
        let (rows, cols) = (h - usize::from(i != 1), w - usize::from(j != 1));
        let space = shape(&[n, c, rows, cols]);
        let (ih, iw) = (i.saturating_sub(1), j.saturating_sub(1));
        let (oh, ow) = (usize::from(i == 0), usize::from(j == 0));
        let (img, colsz) = (n * c * h * w, n * c * 9 * h * w);
        let image = Strided { offset: ih * w + iw, strides: [c * h * w, h * w, w, 1] };
        let column = Strided {
            offset: img + tap * h * w + oh * w + ow,
            strides: [c * 9 * h * w, 9 * h * w, w, 1],
        };
        let (src, dst) = if to_image { (column, image) } else { (image, column) };
        let mem: Vec<f32> = random(img + colsz, seed, -1.0, 1.0);
        let (r1, m1, r2, m2) = both!(mem, |b| b.copy_strided(&space, src, dst, accumulate));
        prop_assert_eq!(r1, r2);
        assert_same(&m1, &m2, "window copy");
    }

    #[test]
    fn reductions(
        outer in prop_oneof![Just(1usize), 2usize..5, 200usize..400],
        n in prop_oneof![1usize..5, 100usize..300],
        inner in prop_oneof![Just(1usize), 2usize..5, 64usize..300],
        op in 0usize..ReduceOp::EVERY.len(),
        seed in any::<u64>(),
    ) {
        let op = ReduceOp::EVERY[op];
        let a = Axis3 { outer, n, inner };
        let (nx, ny) = (outer * n * inner, outer * inner);
        // x, y, dy, dx
        let mut mem: Vec<f32> = random(2 * nx + 2 * ny, seed, -1.0, 1.0);
        if op.picks() && nx > 3 {
            // Ties: the gradient goes to the first maximum (minimum) on both.
            mem[1] = mem[0];
            mem[2] = mem[0];
        }
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.reduce(op, a, 0, nx)?;
            b.reduce_backward(op, a, 0, nx, nx + ny, nx + 2 * ny)
        });
        prop_assert_eq!(r1, r2);
        assert_same(&m1, &m2, op.name());
    }

    #[test]
    fn softmax_and_log_softmax(
        outer in prop_oneof![1usize..4, 3000usize..8000],
        n in 1usize..60,
        inner in prop_oneof![Just(1usize), 2usize..4],
        log in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let a = Axis3 { outer, n, inner };
        let len = outer * n * inner;
        let mem: Vec<f32> = random(4 * len, seed, -5.0, 5.0);
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.softmax(log, a, 0, len)?;
            b.softmax_backward(log, a, len, 2 * len, 3 * len)
        });
        prop_assert_eq!(r1, r2);
        assert_same(&m1, &m2, "softmax");
    }

    #[test]
    fn losses(
        rows in prop_oneof![1usize..10, 30_000usize..50_000],
        classes in 1usize..12,
        op in 0usize..4,
        lhs in any::<bool>(),
        bad_label in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let op = [
            LossOp::Mse,
            LossOp::BceWithLogits,
            LossOp::CrossEntropy,
            LossOp::CrossEntropySmoothed(0.1),
        ][op];
        let np = rows * classes;
        let nt = if op.takes_labels() { rows } else { np };
        // p, t, loss, dy, dx
        let mut mem: Vec<f32> = random(np + nt + 2 + np, seed, -3.0, 3.0);
        if op.takes_labels() {
            let mut rng = Rng::new(seed);
            for t in &mut mem[np..np + nt] {
                *t = rng.below(classes as u32) as f32;
            }
            if bad_label {
                mem[np + nt / 2] = classes as f32;
            }
        } else {
            for t in &mut mem[np..np + nt] {
                *t = t.abs() / 3.0;
            }
        }
        let p = View { offset: 0, shape: shape(&[rows, classes]) };
        let t = View {
            offset: np,
            shape: if op.takes_labels() { shape(&[rows]) } else { p.shape },
        };
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.loss(op, classes, p, t, np + nt)?;
            b.loss_backward(op, lhs, classes, p, t, np + nt + 1, np + nt + 2)
        });
        prop_assert_eq!(r1, r2);
        if r1.is_ok() {
            // The serial f32 sum of ~10^5 terms is itself off by ~10^-5 relative.
            assert_close(&m1[np + nt..np + nt + 1], &m2[np + nt..np + nt + 1], 2e-4, "loss");
            if op.takes_labels() {
                // f32 cross-entropy uses a polynomial exp: a few ulp from the library's. Each
                // gradient is k (softmax - onehot) with k = dy / rows: at the label, where the
                // softmax is near 1, the subtraction cancels, so the error is a few ulp of k
                // (absolute), not of the result.
                let k = m1[np + nt + 1].abs() / rows as f32;
                assert_near(&m1[np + nt + 1..], &m2[np + nt + 1..], 1e-5, 1e-6 * k + 1e-9, "ce backward");
            } else {
                assert_same(&m1[np + nt + 1..], &m2[np + nt + 1..], "loss backward");
            }
        }
    }

    #[test]
    fn optimizer_updates(
        len in lengths(),
        momentum in any::<bool>(),
        nesterov in any::<bool>(),
        decoupled in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut mem: Vec<f32> = random(4 * len, seed, -1.0, 1.0);
        // Adam's second moment is never negative.
        for v in &mut mem[3 * len..] {
            *v = v.abs();
        }
        let sgd = SgdUpdate {
            param: 0, grad: len, momentum_buf: momentum.then_some(2 * len), len, lr: 0.1,
            momentum: 0.9, dampening: 0.0, weight_decay: 0.01, nesterov, first: seed % 3 == 0,
        };
        let adam = AdamUpdate {
            param: 0, grad: len, m: 2 * len, v: 3 * len, len, lr: 1e-3, beta1: 0.9,
            beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled, bias1: 0.1, bias2: 0.001,
        };
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.sgd(&sgd)?;
            b.adam(&adam)?;
            b.scale(len, len, 0.5)?;
            b.fill(2 * len, len / 2, 0.25)?;
            b.sum_squares(0, 4 * len)
        });
        let (s1, s2) = (r1.unwrap(), r2.unwrap());
        prop_assert!((s1 - s2).abs() <= 1e-12 * s1.abs().max(1.0), "{} {}", s1, s2);
        assert_same(&m1, &m2, "optimizers");
    }
}

#[test]
fn products_split_into_blocks_over_the_threads() {
    // Over the threshold (2^20 multiply-adds) from which one product is split into blocks of
    // C: with two threads, two column blocks (odd width), two row blocks (too few columns),
    // too small to split either way, and a large product; with `B` transposed, the first and
    // the last are computed as `C^T = B^T A^T` (the last with a copy back split over threads).
    for (m, n, k) in [
        (17, 201, 400),
        (201, 17, 400),
        (20, 20, 3000),
        (300, 400, 300),
        (45, 1030, 260),
    ] {
        for layout in 0..4 {
            for accumulate in [false, true] {
                let g0 = Gemm {
                    batch: 1,
                    m,
                    n,
                    k,
                    a: 0,
                    a_trans: layout & 1 == 1,
                    a_batch: 0,
                    b: m * k,
                    b_trans: layout & 2 == 2,
                    b_batch: 0,
                    c: m * k + k * n,
                    c_batch: 0,
                    accumulate,
                };
                let mem: Vec<f32> = random(m * k + k * n + m * n, layout, -1.0, 1.0);
                let (r1, m1, r2, m2) = both!(mem, |b| b.gemm(&g0));
                assert_eq!(r1, r2);
                let what = format!("{m} x {n} x {k}, layout {layout}, accumulate {accumulate}");
                assert_close(&m1, &m2, 1e-5 * (k as f64).sqrt(), &what);
            }
        }
    }
}

/// Products computed as `C^T = B^T A^T` through the scratch the backend keeps between calls:
/// a large one, then on the same backend a smaller one whose C holds NaN (overwritten, so never
/// read), then a batch summed into a shared C (read, added to): stale scratch must never show.
#[test]
fn the_transposed_products_scratch_is_reused_cleanly() {
    // (batch, m, n, k, shared C, accumulate): wide `A B^T` forwards, then `A^T B^T` summed.
    let cases = [
        (1, 45, 1030, 260, false, false),
        (1, 20, 300, 300, false, false),
        (2, 16, 200, 256, true, true),
    ];
    let mut products = Vec::new();
    let mut at = 0;
    for &(batch, m, n, k, shared, accumulate) in &cases {
        let a_trans = shared;
        let g0 = Gemm {
            batch,
            m,
            n,
            k,
            a: 0,
            a_trans,
            a_batch: m * k,
            b: 0,
            b_trans: true,
            b_batch: k * n,
            c: 0,
            c_batch: if shared { 0 } else { m * n },
            accumulate,
        };
        let (sa, sb, sc) = g0.spans();
        products.push((
            Gemm {
                a: at,
                b: at + sa,
                c: at + sa + sb,
                ..g0
            },
            at + sa + sb..at + sa + sb + sc,
        ));
        at += sa + sb + sc;
    }
    let mut mem: Vec<f32> = random(at, 11, -1.0, 1.0);
    for (g, c) in &products {
        if !g.accumulate {
            mem[c.clone()].fill(f32::NAN);
        }
    }
    let (r1, m1, r2, m2) = both!(mem, |b| {
        for (g, _) in &products {
            b.gemm(g)?;
        }
        Ok::<(), mote::Error>(())
    });
    assert_eq!(r1, r2);
    for (i, (g, c)) in products.iter().enumerate() {
        let tol = 1e-5 * ((g.batch * g.k) as f64).sqrt();
        assert!(
            m2[c.clone()].iter().all(|v| v.is_finite()),
            "product {i}: NaN left"
        );
        assert_close(&m1[c.clone()], &m2[c.clone()], tol, &format!("product {i}"));
    }
}

/// Products large enough for the parallel backend's batched paths: blocks of rows, blocks of
/// columns (too few rows to split), a shared C split by rows, and products computed transposed
/// into scratch (few rows, deep, a transposed operand), in every layout, against the core.
#[test]
fn batched_blocks_and_transposed_products() {
    // (batch, m, n, k, shared C)
    let cases = [
        (3, 200, 140, 100, false),
        (3, 64, 301, 80, false),
        (3, 200, 140, 100, true),
        (1, 32, 160, 300, false),
        (3, 32, 160, 300, false),
        (3, 32, 160, 300, true),
    ];
    for (case, &(batch, m, n, k, shared)) in cases.iter().enumerate() {
        for layout in 0..4 {
            for accumulate in [false, true] {
                let g0 = Gemm {
                    batch,
                    m,
                    n,
                    k,
                    a: 0,
                    a_trans: layout & 1 == 1,
                    a_batch: m * k,
                    b: 0,
                    b_trans: layout & 2 == 2,
                    b_batch: k * n,
                    c: 0,
                    c_batch: if shared { 0 } else { m * n + 7 },
                    accumulate,
                };
                let (sa, sb, sc) = g0.spans();
                let g = Gemm {
                    b: sa,
                    c: sa + sb,
                    ..g0
                };
                let seed = (case * 8 + layout * 2 + accumulate as usize) as u64;
                let mut mem: Vec<f64> = random(sa + sb + sc, seed, -1.0, 1.0);
                if !accumulate {
                    for v in &mut mem[sa + sb..] {
                        *v = f64::NAN;
                    }
                }
                let what = format!("case {case}, layout {layout}, accumulate {accumulate}");
                let (r1, m1, r2, m2) = both!(mem, |b| b.gemm(&g));
                assert_eq!(r1, r2);
                assert_close(&m1, &m2, 1e-12 * (batch * k) as f64, &what);
                let mem32: Vec<f32> = mem.iter().map(|&v| v as f32).collect();
                let (r1, m1, r2, m2) = both!(mem32, |b| b.gemm(&g));
                assert_eq!(r1, r2);
                assert_close(&m1, &m2, 1e-5 * ((batch * k) as f64).sqrt(), &what);
            }
        }
    }
}

#[test]
fn a_length_one_dimension_ignores_its_stride() {
    // The reference never adds the stride of a dimension of length 1; neither may the backend.
    let space = shape(&[2, 1, 3, 4]);
    let src = Strided {
        offset: 0,
        strides: [12, usize::MAX, 4, 1],
    };
    let dst = Strided {
        offset: 24,
        strides: [12, usize::MAX / 2, 4, 1],
    };
    let mem: Vec<f32> = random(48, 5, -1.0, 1.0);
    for accumulate in [false, true] {
        let (r1, m1, r2, m2) = both!(mem, |b| b.copy_strided(&space, src, dst, accumulate));
        assert_eq!(r1, r2);
        assert_same(&m1, &m2, "length-1 stride");
    }
}

/// Length-1 dimensions in the innermost positions, with strides that overflow if ever added
/// (the row loop steps past its last row and element).
#[test]
fn inner_length_one_dimensions_ignore_their_strides() {
    for (dims, s, d) in [
        (vec![2, 1], [1, usize::MAX, 0, 0], [1, usize::MAX / 3, 0, 0]),
        (
            vec![2, 1, 2],
            [2, usize::MAX, 1, 0],
            [2, usize::MAX / 2, 1, 0],
        ),
    ] {
        let space = shape(&dims);
        let src = Strided {
            offset: 0,
            strides: s,
        };
        let dst = Strided {
            offset: 16,
            strides: d,
        };
        let mem: Vec<f32> = random(32, 6, -1.0, 1.0);
        for accumulate in [false, true] {
            let (r1, m1, r2, m2) = both!(mem, |b| b.copy_strided(&space, src, dst, accumulate));
            assert_eq!(r1, Ok(()));
            assert_eq!(r1, r2);
            assert_same(&m1, &m2, "inner length-1 stride");
        }
    }
}

#[test]
fn errors_are_the_same() {
    let mem = vec![0f32; 100];
    let (r1, _, r2, _) = both!(mem, |b| b.unary(UnaryOp::Relu, 0, 10, 20));
    assert_eq!(r1, r2);
    assert!(r1.is_err(), "overlap");
    let (r1, _, r2, _) = both!(mem, |b| b.fill(90, 20, 1.0));
    assert_eq!(r1, r2);
    assert!(r1.is_err(), "out of range");
    let g = Gemm {
        batch: 1,
        m: 10,
        n: 10,
        k: 10,
        a: 0,
        a_trans: false,
        a_batch: 0,
        b: 0,
        b_trans: false,
        b_batch: 0,
        c: 50,
        c_batch: 0,
        accumulate: false,
    };
    let (r1, _, r2, _) = both!(mem, |b| b.gemm(&g));
    assert_eq!(r1, r2);
    assert!(r1.is_err(), "C past the end");
    let huge = Gemm {
        m: usize::MAX / 2,
        ..g
    };
    let (r1, _, r2, _) = both!(mem, |b| b.gemm(&huge));
    assert_eq!(r1, r2);
    let big = vec![0f32; 2 * PAR_MIN];
    let (r1, _, r2, _) = both!(big, |b| b.adam(&AdamUpdate {
        param: 0,
        grad: PAR_MIN / 2,
        m: PAR_MIN,
        v: PAR_MIN + 1,
        len: PAR_MIN,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
        bias1: 0.1,
        bias2: 0.001,
    }));
    assert_eq!(r1, r2);
    assert!(r1.is_err(), "overlapping state");
}

#[test]
fn write_read_fill_large() {
    let n = 5 * PAR_MIN;
    let mem = vec![0f32; 2 * n];
    let data: Vec<f32> = random(n, 7, -1.0, 1.0);
    let (r1, m1, r2, m2) = both!(mem, |b| {
        b.write(n / 3, &data)?;
        b.fill(0, n / 4, 2.5)?;
        let mut out = vec![0f32; n];
        b.read(n / 2, &mut out).map(|_| out)
    });
    assert_eq!(r1, r2);
    assert_same(&m1, &m2, "write/fill");
}

/// A model with most op families: linear, gelu, tanh, a broadcast multiply, softmax, a sum
/// over an axis, transpose and concat; gradients of every parameter after one backward.
fn model_grads<B: HostBackend<Elem = f64>>(backend: B, batch: usize) -> Vec<Vec<f64>> {
    let mut tape = Tape::<B, 64>::with_backend(backend);
    let mut rng = Rng::new(11);
    let l1 = Linear::new(&mut tape, 40, 300, &mut rng).unwrap();
    let l2 = Linear::new(&mut tape, 300, 12, &mut rng).unwrap();
    let scale = tape.param_with(&[300], || rng.uniform(0.5, 1.5)).unwrap();
    let xs: Vec<f64> = (0..batch * 40).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(12) as usize).collect();
    let x = tape.input(&[batch, 40], &xs).unwrap();
    let h = l1.forward(&mut tape, x).unwrap();
    let h = tape.gelu(h).unwrap();
    let h = tape.mul(h, scale).unwrap();
    let h = tape.tanh(h).unwrap();
    let t = tape.transpose(h, 0, 1).unwrap();
    let t = tape.transpose(t, 0, 1).unwrap();
    let h = tape.concat(h, t, 1).unwrap();
    let h = tape.slice(h, 1, 150, 300).unwrap();
    let logits = l2.forward(&mut tape, h).unwrap();
    let sm = tape.log_softmax(logits, 1).unwrap();
    let extra = tape.sum_axis(sm, 0).unwrap();
    let extra = tape.mean(extra).unwrap();
    let y = tape.labels(&labels).unwrap();
    let ce = tape.cross_entropy(logits, y).unwrap();
    let extra = tape.mul_scalar(extra, -1e-3).unwrap();
    let loss = tape.add(ce, extra).unwrap();
    tape.backward(loss).unwrap();
    let params: Vec<_> = tape.params().collect();
    params
        .into_iter()
        .map(|p| tape.grad_data(p).unwrap().unwrap().to_vec())
        .collect()
}

#[test]
fn gradients_through_a_model_agree() {
    init();
    // 1000 rows x 300 units: the big activations go over the threshold.
    for batch in [3, 1000] {
        let mut m1 = vec![0f64; 12_000_000];
        let mut m2 = m1.clone();
        let g1 = model_grads(Cpu::new(&mut m1), batch);
        let g2 = model_grads(Parallel::new(&mut m2), batch);
        assert_eq!(g1.len(), g2.len());
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_close(a, b, 1e-10, &format!("batch {batch}, parameter {i}"));
        }
    }
}

/// Trains a 64-1024-10 MLP on batches of 256 (its hidden activations at the parallel
/// threshold) for `steps` steps; returns the losses and the final parameters.
fn train<B: HostBackend<Elem = f32>>(backend: B, adam: bool, steps: usize) -> (Vec<f32>, Vec<f32>) {
    let mut tape = Tape::<B, 32>::with_backend(backend);
    let mut rng = Rng::new(5);
    let model = (
        Linear::new(&mut tape, 64, 1024, &mut rng).unwrap(),
        mote::Relu,
        Linear::new(&mut tape, 1024, 10, &mut rng).unwrap(),
    );
    if adam {
        let opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
        run_steps(&mut tape, &model, opt, &mut rng, steps)
    } else {
        let config = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..SgdConfig::default()
        };
        let opt = Sgd::new(&mut tape, config).unwrap();
        run_steps(&mut tape, &model, opt, &mut rng, steps)
    }
}

fn run_steps<B: HostBackend<Elem = f32>, M: Module, O: Optimizer>(
    tape: &mut Tape<B, 32>,
    model: &M,
    mut opt: O,
    rng: &mut Rng,
    steps: usize,
) -> (Vec<f32>, Vec<f32>) {
    let batch = 256;
    let xs: Vec<f32> = (0..batch * 64).map(|_| rng.next_f32()).collect();
    let labels: Vec<usize> = (0..batch).map(|i| (i * 7 + i / 3) % 10).collect();
    let start = tape.mark();
    let mut losses = Vec::new();
    for _ in 0..steps {
        tape.rewind(start).unwrap();
        let x = tape.input(&[batch, 64], &xs).unwrap();
        let y = tape.labels(&labels).unwrap();
        let logits = model.forward(tape, x).unwrap();
        let loss = tape.cross_entropy(logits, y).unwrap();
        tape.backward(loss).unwrap();
        opt.step(tape).unwrap();
        losses.push(tape.item(loss).unwrap());
    }
    let params: Vec<_> = tape.params().collect();
    let values = params
        .iter()
        .flat_map(|&p| tape.data(p).unwrap().to_vec())
        .collect();
    (losses, values)
}

#[test]
fn training_matches_the_reference() {
    init();
    for adam in [true, false] {
        let mut m1 = vec![0f32; 2_000_000];
        let mut m2 = m1.clone();
        let (l1, _) = train(Cpu::new(&mut m1), adam, 60);
        let (l2, _) = train(Parallel::new(&mut m2), adam, 60);
        assert!(l1[59] < 0.8 * l1[0], "it learns: {} -> {}", l1[0], l1[59]);
        assert_close(&l1, &l2, 1e-4, "losses");
        // Parameters after 20 steps agree closely (measured: 3e-7 with Adam, 3e-5 with SGD and
        // momentum, whose steps are larger). Later the runs drift apart the way any two
        // summation orders do: where a gradient is ~0, Adam's division by its running scale
        // turns a rounding-sized difference into a step of size lr (after 60 steps the mean
        // difference is ~4e-5).
        let mut m1 = vec![0f32; 2_000_000];
        let mut m2 = m1.clone();
        let (_, p1) = train(Cpu::new(&mut m1), adam, 20);
        let (_, p2) = train(Parallel::new(&mut m2), adam, 20);
        assert_close(&p1, &p2, 1e-4, "parameters after 20 steps");
    }
}

/// A whole-tensor sum or mean on one thread (16 lanes from 4096 values on, one chain below)
/// agrees with the reference to rounding, and exactly below 4096 values.
#[test]
fn whole_sums_on_one_thread() {
    init();
    for (n, op) in [
        (4095, ReduceOp::Sum),
        (4096, ReduceOp::Sum),
        (70_001, ReduceOp::Mean),
    ] {
        let a = Axis3 {
            outer: 1,
            n,
            inner: 1,
        };
        let mut m1: Vec<f32> = random(n + 1, n as u64, -1.0, 1.0);
        let mut m2 = m1.clone();
        Cpu::new(&mut m1).reduce(op, a, 0, n).unwrap();
        Parallel::with_threads(&mut m2, 1)
            .reduce(op, a, 0, n)
            .unwrap();
        if n < 4096 {
            assert_same(&m1[n..], &m2[n..], "short sum");
        } else {
            assert_close(&m1[n..], &m2[n..], 1e-5, "long sum");
        }
    }
}
