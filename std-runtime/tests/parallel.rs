//! The parallel backend against the reference backend: every kernel on random inputs, in f32
//! and in f64, with the same test body run on both (`both!`), at sizes below and above the
//! parallel threshold, with edge values mixed in (signed zeros, NaN, infinities, ties, the unary
//! ops' kinks and saturated ranges); then gradients through a model and a short training run.
//!
//! Most kernels must agree bit for bit (they split the work, not the arithmetic); products and
//! split sums (a loss's value, a whole-tensor sum, the sum of squares) to rounding, relative to
//! the result, at tolerances measured on these kernels (noted where set), tight enough that a
//! mean off by one term in its divisor fails.

use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::loss::{self, LossOp};
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{
    Adam, AdamConfig, Backend, Cpu, Float, HostBackend, Linear, Module, Optimizer, Rng, Sgd,
    SgdConfig, Shape, Tape,
};
use mote_runtime::parallel::{self, ConvKernels, Parallel, PAR_MIN};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

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

fn values<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// `n` values: a quarter from `edges`, an eighth from `[-wide, wide]`, three eighths multiples
/// of 1/4 in `[-2, 2]` (so that two draws often tie), the rest from `[-2, 2]`.
fn mixed<T: Float>(n: usize, seed: u64, edges: &[T], wide: f64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| match rng.below(8) {
            0 | 1 => edges[rng.below(edges.len() as u32) as usize],
            2 => T::from_f64(rng.uniform(-wide, wide)),
            3..=5 => T::from_f64(f64::from(rng.below(17)) / 4.0 - 2.0),
            _ => T::from_f64(rng.uniform(-2.0, 2.0)),
        })
        .collect()
}

/// Upstream gradients in `[-2, 2]`, one in sixteen NaN, infinite or zero.
fn upstream<T: Float>(n: usize, seed: u64) -> Vec<T> {
    let edges = values::<T>(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0]);
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| match rng.below(16) {
            0 => edges[rng.below(edges.len() as u32) as usize],
            _ => T::from_f64(rng.uniform(-2.0, 2.0)),
        })
        .collect()
}

/// Bit for bit (NaN equal to NaN).
fn assert_same<T: Float>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same = x.to_f64().to_bits() == y.to_f64().to_bits() || (x.is_nan() && y.is_nan());
        assert!(same, "{what}: element {i}: cpu {x} parallel {y}");
    }
}

/// Within `tol` relative to the larger magnitude (and 1): for products, whose rounding scales
/// with their terms, not with a result that may cancel to near 0.
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

/// Within `rel` of the larger magnitude, or `abs` (NaN equal to NaN, infinities equal).
fn assert_near<T: Float>(a: &[T], b: &[T], rel: f64, abs: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        let ok = x == y
            || (x - y).abs() <= rel * x.abs().max(y.abs()) + abs
            || (x.is_nan() && y.is_nan());
        assert!(ok, "{what}: element {i}: cpu {x} parallel {y}");
    }
}

fn shape(d: &[usize]) -> Shape {
    Shape::new(d).unwrap()
}

fn is_f32<T: Float>() -> bool {
    T::NAME == f32::NAME
}

/// Lengths around the threshold: tiny, just below, above.
fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..200,
        (PAR_MIN - 100)..PAR_MIN,
        PAR_MIN..(3 * PAR_MIN)
    ]
}

/// The points where unary ops change form (kinks, clamp bounds as f32 rounds them, the
/// saturation of hardsigmoid, hardswish and relu6, softplus's threshold, exp's overflow in
/// either type), beyond them, signed zeros, NaN and infinities.
fn unary_edges<T: Float>() -> Vec<T> {
    let mut e = values::<T>(&[
        0.0,
        -0.0,
        3.0,
        -3.0,
        6.0,
        -6.0,
        7.5,
        20.0,
        -20.0,
        20.5,
        -1.5,
        1e-30,
        -1e-30,
        89.0,
        710.0,
        -800.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]);
    e.extend([T::from_f32(-0.5), T::from_f32(0.8)]);
    e
}

fn check_unary<T: Float>(len: usize, seed: u64) -> Result<(), TestCaseError> {
    // x (edges, [-30, 30]: past every saturation, [-2, 2]), y, dy, dx
    let mut mem: Vec<T> = mixed(len, seed, &unary_edges(), 30.0);
    mem.extend(random::<T>(len, seed ^ 1, -2.0, 2.0));
    mem.extend(upstream::<T>(len, seed ^ 2));
    mem.extend(random::<T>(len, seed ^ 3, -2.0, 2.0));
    for op in UnaryOp::EVERY {
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.unary(op, 0, len, len)?;
            b.unary_backward(op, 0, len, 2 * len, 3 * len, len)
        });
        prop_assert_eq!(r1, r2);
        assert_same(&m1, &m2, &format!("{} {}", op.name(), T::NAME));
    }
    Ok(())
}

/// An output shape of rank 1 to 4 of about `total` elements (dimension `free` takes what the
/// others leave) and two operands that broadcast to it: the output's shape, a scalar, the
/// output's trailing dimensions with some set to 1, or (`form` 5) complementary dimensions
/// set to 1 in each (neither has the output's shape).
fn broadcast_shapes() -> impl Strategy<Value = (Shape, Shape, Shape)> {
    (
        prop_oneof![1usize..64, (PAR_MIN - 100)..PAR_MIN, PAR_MIN..(3 * PAR_MIN)],
        1usize..=4,
        0usize..4,
        prop::array::uniform4(1usize..6),
        0usize..6,
        0u32..16,
        0usize..4,
        any::<bool>(),
    )
        .prop_map(|(total, rank, free, dims, form, ones, drop, swap)| {
            let free = free % rank;
            let mut d = dims[..rank].to_vec();
            let others: usize = (0..rank).filter(|&i| i != free).map(|i| d[i]).product();
            d[free] = (total / others).max(1);
            let ys = shape(&d);
            let masked = |mask: u32, drop: usize| {
                let sd: Vec<usize> = (drop..rank)
                    .map(|i| if mask >> i & 1 == 1 { 1 } else { d[i] })
                    .collect();
                shape(&sd)
            };
            let (sa, sb) = match form {
                0 | 1 => (ys, ys),
                2 => (ys, Shape::SCALAR),
                5 => (masked(ones, 0), masked(!ones, 0)),
                _ => (ys, masked(ones, drop.min(rank - 1))),
            };
            // Either side the broadcast one.
            if swap {
                (ys, sb, sa)
            } else {
                (ys, sa, sb)
            }
        })
}

fn check_binary<T: Float>(
    op: BinaryOp,
    ys: Shape,
    sa: Shape,
    sb: Shape,
    seed: u64,
) -> Result<(), TestCaseError> {
    let (na, nb, ny) = (sa.numel(), sb.numel(), ys.numel());
    let a = View {
        offset: 0,
        shape: sa,
    };
    let bv = View {
        offset: na,
        shape: sb,
    };
    let y = View {
        offset: na + nb,
        shape: ys,
    };
    let dy = View {
        offset: na + nb + ny,
        shape: ys,
    };
    let (da, db) = (na + nb + 2 * ny, 2 * na + nb + 2 * ny);
    // a, b (zeros of both signs, NaN, infinities, ties), y, dy (some NaN), da, db
    let edges = values::<T>(&[
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]);
    let mut mem: Vec<T> = mixed(na + nb, seed, &edges, 1e3);
    mem.extend(random::<T>(ny, seed ^ 1, -1.0, 1.0));
    mem.extend(upstream::<T>(ny, seed ^ 2));
    mem.extend(random::<T>(na + nb, seed ^ 3, -1.0, 1.0));
    let (r1, m1, r2, m2) = both!(mem, |b| {
        b.binary(op, a, bv, y)?;
        b.binary_backward(op, Side::Lhs, a, bv, dy, da)?;
        b.binary_backward(op, Side::Rhs, a, bv, dy, db)
    });
    prop_assert_eq!(r1, r2);
    // A broadcast operand's gradient is a sum: serial on both, so still exact.
    assert_same(
        &m1,
        &m2,
        &format!("{} {:?} {:?} {}", op.name(), sa, sb, T::NAME),
    );
    Ok(())
}

fn check_copy<T: Float>(
    space: Shape,
    src: Strided,
    dst: Strided,
    len: usize,
    accumulate: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mem: Vec<T> = random(len, seed, -1.0, 1.0);
    let (r1, m1, r2, m2) = both!(mem, |b| b.copy_strided(&space, src, dst, accumulate));
    prop_assert_eq!(r1, r2);
    assert_same(&m1, &m2, &format!("copy_strided {}", T::NAME));
    Ok(())
}

fn check_reduce<T: Float>(op: ReduceOp, a: Axis3, seed: u64) -> Result<(), TestCaseError> {
    let (nx, ny) = (a.outer * a.n * a.inner, a.outer * a.inner);
    // x, y, dy, dx
    let mut mem: Vec<T> = random(2 * nx + 2 * ny, seed, -1.0, 1.0);
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
    assert_same(&m1, &m2, &format!("{} {}", op.name(), T::NAME));
    Ok(())
}

fn check_softmax<T: Float>(a: Axis3, log: bool, seed: u64) -> Result<(), TestCaseError> {
    let len = a.outer * a.n * a.inner;
    let mem: Vec<T> = random(4 * len, seed, -5.0, 5.0);
    let (r1, m1, r2, m2) = both!(mem, |b| {
        b.softmax(log, a, 0, len)?;
        b.softmax_backward(log, a, len, 2 * len, 3 * len)
    });
    prop_assert_eq!(r1, r2);
    assert_same(&m1, &m2, &format!("softmax {}", T::NAME));
    Ok(())
}

/// What a loss test does between its forward and its backward.
#[derive(Clone, Copy, Debug)]
enum LossMode {
    /// Forward, then backward: f32 cross-entropy's backward reuses the forward's work.
    Both,
    /// The backward alone (f32 cross-entropy's cache misses).
    BackwardOnly,
    /// Forward, the logits scaled, backward (the cache misses: other logits).
    ChangedLogits,
    /// Forward, one target rewritten (`change`), backward (the cache misses: other labels; a
    /// bad label then fails the backward alone).
    ChangedTarget,
}

/// The calls of a loss test: the loss into `at`, its gradient from `dy` at `at + 1` into
/// `at + 2`.
#[allow(clippy::too_many_arguments)]
fn loss_calls<B: Backend>(
    b: &mut B,
    op: LossOp,
    classes: usize,
    p: View,
    t: View,
    at: usize,
    lhs: bool,
    mode: LossMode,
    change: (usize, B::Elem),
) -> mote::Result<()> {
    if !matches!(mode, LossMode::BackwardOnly) {
        b.loss(op, classes, p, t, at)?;
    }
    match mode {
        LossMode::ChangedLogits => b.scale(p.offset, p.len(), B::Elem::from_f64(-0.75))?,
        LossMode::ChangedTarget => b.write(change.0, &[change.1])?,
        _ => {}
    }
    b.loss_backward(op, lhs, classes, p, t, at + 1, at + 2)
}

#[allow(clippy::too_many_arguments)]
fn check_loss<T: Float>(
    op: LossOp,
    rows: usize,
    classes: usize,
    lhs: bool,
    mode: LossMode,
    bad: Option<f64>,
    seed: u64,
) -> Result<bool, TestCaseError> {
    let np = rows * classes;
    let nt = if op.takes_labels() { rows } else { np };
    let at = np + nt;
    // p, t, loss, dy, dx
    let mut mem: Vec<T> = random(np + nt + 2 + np, seed, -3.0, 3.0);
    let mut rng = Rng::new(seed);
    for t in &mut mem[np..np + nt] {
        *t = if op.takes_labels() {
            T::from_f64(f64::from(rng.below(classes as u32)))
        } else {
            T::from_f64(t.to_f64().abs() / 3.0)
        };
    }
    // Rows that PyTorch's `ignore_index` leaves out (`IGNORED_LABEL`), in a third of the cases.
    if op.takes_labels() && seed.is_multiple_of(3) {
        for t in &mut mem[np..np + nt] {
            if rng.below(4) == 0 {
                *t = T::from_f32(mote::ops::loss::IGNORED_LABEL);
            }
        }
    }
    // A bad label, in the data (a second, other one after it: the first is the error) or
    // written between forward and backward; else a changed, valid, label or target.
    let spot = np + nt / 2;
    let mut change = (spot, T::from_f64(mem[spot].to_f64() * 0.5 + 0.25));
    if op.takes_labels() {
        change.1 = T::from_f64(((mem[spot].to_f64() as usize + 1) % classes) as f64);
        if let Some(bad) = bad {
            if matches!(mode, LossMode::ChangedTarget) {
                change.1 = T::from_f64(bad);
            } else {
                mem[spot] = T::from_f64(bad);
                if nt >= 4 {
                    mem[np + nt * 3 / 4] = T::from_f64(classes as f64 + 7.0);
                }
            }
        }
    }
    let p = View {
        offset: 0,
        shape: shape(&[rows, classes]),
    };
    let t = View {
        offset: np,
        shape: if op.takes_labels() {
            shape(&[rows])
        } else {
            p.shape
        },
    };
    let (r1, m1, r2, m2) = both!(mem, |b| loss_calls(
        &mut b, op, classes, p, t, at, lhs, mode, change
    ));
    prop_assert_eq!(r1, r2);
    if r1.is_err() {
        return Ok(false);
    }
    let what = format!("{op:?} {rows} x {classes}, {mode:?}, {}", T::NAME);
    let (v1, v2) = (&m1[at..at + 1], &m2[at..at + 1]);
    if !is_f32::<T>() {
        // Split over threads from PAR_MIN predictions on: measured (1000 cases) within 3e-14
        // of the reference (a divisor off by one: 2e-5 at 50,000 rows, 2e-6 at 600,000).
        assert_near(v1, v2, 1e-13, 0.0, &format!("loss, {what}"));
    } else if !op.takes_labels() && np < PAR_MIN {
        // The reference's kernel on one thread.
        assert_same(v1, v2, &format!("loss, {what}"));
    } else if !matches!(mode, LossMode::BackwardOnly) {
        // The reference's serial f32 sum is itself up to 1e-4 off at 500,000 terms, so the
        // backend's value is checked against the loss in f64. Measured (1000 cases), in
        // units of eps sqrt(terms): cross-entropy's own serial f32 sum over rows within
        // 0.95; the others' chunks of predictions, summed in f64, within 0.06 (so that a
        // divisor off by one fails up to 100,000 predictions).
        let wide: Vec<f64> = mem[..np + nt].iter().map(|v| v.to_f64()).collect();
        let exact = loss::forward(op, classes, &wide[..np], &wide[np..]).unwrap();
        let (terms, k) = if op.takes_labels() {
            (rows, 4.0)
        } else {
            (np, 0.25)
        };
        let rel = k * f64::from(f32::EPSILON) * (terms as f64).sqrt();
        assert_near(
            &[exact],
            &[v2[0].to_f64()],
            rel,
            0.0,
            &format!("loss, {what}"),
        );
    }
    assert_same(&m1[..at], &m2[..at], &format!("inputs, {what}"));
    assert_same(
        &m1[at + 1..at + 2],
        &m2[at + 1..at + 2],
        &format!("dy, {what}"),
    );
    let (g1, g2) = (&m1[at + 2..], &m2[at + 2..]);
    if op.takes_labels() && is_f32::<T>() {
        // f32 cross-entropy uses a polynomial exp: a few ulp from the library's. Each
        // gradient is k (softmax - onehot) with k = dy / rows: at the label, where the
        // softmax is near 1, the subtraction cancels, so the error is ulps of k (absolute),
        // not of the result: measured (600 cases) within 1 eps (|dx| + k).
        let k = m1[at + 1].to_f64().abs() / rows as f64;
        let eps = 4.0 * f64::from(f32::EPSILON);
        assert_near(g1, g2, eps, eps * k, &format!("ce backward, {what}"));
    } else {
        assert_same(g1, g2, &format!("loss backward, {what}"));
    }
    Ok(true)
}

fn check_optimizers<T: Float>(
    len: usize,
    sgd: SgdUpdate,
    adam: AdamUpdate,
    rms: RmsUpdate,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut mem: Vec<T> = random(6 * len, seed, -1.0, 1.0);
    // Adam's second moment (RMSprop's squares), and AMSGrad's running maximum of it, are never
    // negative; centered RMSprop's average (the last buffer) stays below the root of the
    // squares, as a running average does (no NaN from the root of a negative).
    for v in &mut mem[3 * len..5 * len] {
        *v = v.abs();
    }
    let (sq, rest) = mem[3 * len..].split_at_mut(len);
    for (a, &s) in rest[len..].iter_mut().zip(sq.iter()) {
        *a = T::from_f64(0.5) * s.sqrt();
    }
    let (r1, m1, r2, m2) = both!(mem, |b| {
        b.sgd(&sgd)?;
        b.adam(&adam)?;
        b.rms(&rms)?;
        b.scale(len, len, T::from_f64(0.5))?;
        b.fill(2 * len, len / 2, T::from_f64(0.25))?;
        b.sum_squares(0, 6 * len)
    });
    let (s1, s2) = (r1.unwrap(), r2.unwrap());
    // The sum of squares in f64, split over threads: measured within 1.2 eps sqrt(terms).
    let tol = 4.0 * f64::EPSILON * ((6 * len) as f64).sqrt();
    prop_assert!((s1 - s2).abs() <= tol * s1.abs(), "{} {}", s1, s2);
    assert_same(&m1, &m2, &format!("optimizers {}", T::NAME));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unary_forward_and_backward(len in lengths(), seed in any::<u64>()) {
        check_unary::<f32>(len, seed)?;
        check_unary::<f64>(len, seed)?;
    }

    #[test]
    fn binary_with_broadcasting(
        (ys, sa, sb) in broadcast_shapes(),
        op in 0usize..BinaryOp::EVERY.len(),
        seed in any::<u64>(),
    ) {
        let op = BinaryOp::EVERY[op];
        check_binary::<f32>(op, ys, sa, sb, seed)?;
        check_binary::<f64>(op, ys, sa, sb, seed)?;
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
        check_copy::<f32>(space, src, dst, n + dspan, accumulate, seed)?;
        check_copy::<f64>(space, src, dst, n + dspan, accumulate, seed)?;
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
        check_reduce::<f32>(op, a, seed)?;
        // f64 up to 2^21 values (far above the threshold): the largest draws (up to 36 M
        // values) would take most of this file's time in f64.
        if outer * n * inner <= 1 << 21 {
            check_reduce::<f64>(op, a, seed)?;
        }
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
        check_softmax::<f32>(a, log, seed)?;
        check_softmax::<f64>(a, log, seed)?;
    }

    // Every loss in f32 and f64. f64 cross-entropies from PAR_MIN logits on are split over
    // threads (`loss_par`); f32 ones take the backend's own kernel (`xent.rs`) at every size,
    // its backward with and without the forward's work; up to 100 classes (past the
    // reference's 64-class stack buffer), smoothing up to 1; bad labels of every kind.
    #[test]
    fn losses(
        (rows, classes) in prop_oneof![
            (1usize..10, 1usize..100),
            (100usize..2000, 12usize..100),
            (30_000usize..50_000, 1usize..12),
        ],
        op in 0usize..4,
        smoothing in prop_oneof![Just(0.1f32), Just(1.0f32), 0.01f32..1.0],
        lhs in any::<bool>(),
        mode in 0usize..4,
        bad in prop_oneof![
            3 => Just(None),
            1 => (0usize..5).prop_map(Some),
        ],
        seed in any::<u64>(),
    ) {
        let op = [
            LossOp::Mse,
            LossOp::BceWithLogits,
            LossOp::CrossEntropy,
            LossOp::CrossEntropySmoothed(smoothing),
        ][op];
        let mode = [
            LossMode::Both,
            LossMode::BackwardOnly,
            LossMode::ChangedLogits,
            LossMode::ChangedTarget,
        ][mode];
        let c = classes as f64;
        let bad = bad.map(|i| [c, c + 7.0, -1.0, 0.5, f64::NAN][i]);
        check_loss::<f32>(op, rows, classes, lhs, mode, bad, seed)?;
        check_loss::<f64>(op, rows, classes, lhs, mode, bad, seed)?;
    }

    #[test]
    fn optimizer_updates(
        len in lengths(),
        momentum in prop_oneof![Just(0.0f64), 0.0f64..0.99],
        dampening in prop_oneof![Just(0.0f64), 0.0f64..1.0],
        weight_decay in prop_oneof![Just(0.0f64), 0.0f64..0.5],
        lr in -5.0f64..0.0,
        (has_buf, nesterov, decoupled, first) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        amsgrad in any::<bool>(),
        (centered, alpha, lr_decay) in (any::<bool>(), prop_oneof![Just(1.0f64), 0.5f64..0.999], prop_oneof![Just(0.0f64), 0.0f64..1.0]),
        beta1 in prop_oneof![Just(0.0f64), 0.5f64..0.99],
        beta2 in 0.9f64..0.9999,
        eps in -12.0f64..-4.0,
        step in 1i32..10_000,
        seed in any::<u64>(),
    ) {
        let lr = 10f64.powf(lr);
        let sgd = SgdUpdate {
            param: 0, grad: len, momentum_buf: has_buf.then_some(2 * len), len, lr, momentum,
            dampening, weight_decay, nesterov, first,
        };
        let adam = AdamUpdate {
            param: 0, grad: len, m: 2 * len, v: 3 * len, len, lr, beta1, beta2,
            eps: 10f64.powf(eps), weight_decay, decoupled, bias1: 1.0 - beta1.powi(step),
            bias2: 1.0 - beta2.powi(step), vmax: amsgrad.then_some(4 * len),
        };
        // Adagrad (alpha 1, gain 1) is never centered.
        let alpha = if centered && alpha == 1.0 { 0.9 } else { alpha };
        let rms = RmsUpdate {
            param: 0, grad: len, sq: 3 * len, avg: centered.then_some(5 * len),
            momentum_buf: has_buf.then_some(2 * len), len, lr, lr_decay, step: step as u64,
            alpha, gain: if alpha == 1.0 { 1.0 } else { 1.0 - alpha }, eps: 10f64.powf(eps),
            weight_decay, momentum,
        };
        check_optimizers::<f32>(len, sgd, adam, rms, seed)?;
        check_optimizers::<f64>(len, sgd, adam, rms, seed)?;
    }
}

/// Fixed loss cases the property test reaches only by chance: f64 cross-entropies over
/// PAR_MIN logits (split over threads by rows) with every smoothing, a bad label in a later
/// chunk than a good one, and the f32 kernel's backward without its forward, with a label made
/// bad after the forward, past 64 classes and at smoothing 1.
#[test]
fn losses_at_fixed_points() {
    use LossMode::*;
    let ce = LossOp::CrossEntropy;
    let smoothed = LossOp::CrossEntropySmoothed;
    let cases = [
        // (op, rows, classes, mode, bad label)
        (ce, 300, 128, Both, None),
        (smoothed(0.1), 300, 128, ChangedLogits, None),
        (smoothed(1.0), 20_000, 2, Both, None),
        (smoothed(0.37), 700, 70, BackwardOnly, None),
        (ce, 300, 128, Both, Some(f64::NAN)),
        (smoothed(0.25), 300, 128, ChangedTarget, Some(128.0)),
        (ce, 50, 13, BackwardOnly, Some(-1.0)),
        (smoothed(0.6), 50, 13, ChangedTarget, Some(0.5)),
        (smoothed(1.0), 40, 70, ChangedTarget, None),
        (LossOp::Mse, 40_000, 1, ChangedTarget, None),
        (LossOp::BceWithLogits, 4_000, 9, Both, None),
    ];
    for (i, &(op, rows, classes, mode, bad)) in cases.iter().enumerate() {
        for lhs in [true, false] {
            // A bad label fails the forward that sees it, and the backward of the logits (that
            // of the labels, none, reads none).
            let forward_sees = !matches!(mode, BackwardOnly | ChangedTarget);
            let runs = bad.is_none() || (!forward_sees && !lhs);
            let seed = i as u64;
            let ok = check_loss::<f32>(op, rows, classes, lhs, mode, bad, seed).unwrap();
            assert_eq!(ok, runs, "case {i}, lhs {lhs}: f32 ran");
            let ok = check_loss::<f64>(op, rows, classes, lhs, mode, bad, seed).unwrap();
            assert_eq!(ok, runs, "case {i}, lhs {lhs}: f64 ran");
        }
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
        vmax: None,
    }));
    assert_eq!(r1, r2);
    assert!(r1.is_err(), "overlapping state");
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

fn check_write_read_fill<T: Float>() {
    let n = 5 * PAR_MIN;
    let mem = vec![T::ZERO; 2 * n];
    let data: Vec<T> = random(n, 7, -1.0, 1.0);
    let (r1, m1, r2, m2) = both!(mem, |b| {
        b.write(n / 3, &data)?;
        b.fill(0, n / 4, T::from_f64(2.5))?;
        b.fill(n / 4, 3 * PAR_MIN, T::from_f64(-0.0))?;
        let mut out = vec![T::ZERO; n];
        b.read(n / 2, &mut out).map(|_| out)
    });
    assert_eq!(r1, r2);
    assert_same(&m1, &m2, &format!("write/fill {}", T::NAME));
}

#[test]
fn write_read_fill_large() {
    check_write_read_fill::<f32>();
    check_write_read_fill::<f64>();
}

/// The backend's own ReLU backward (a select): nothing added where x is 0 (either sign), NaN or
/// negative, even from a NaN or infinite dy; dy added where x > 0, NaN included; below and
/// above the threshold.
fn check_relu_backward<T: Float>() {
    let xs = values::<T>(&[
        0.0,
        -0.0,
        f64::NAN,
        -f64::NAN,
        -1.0,
        1e-30,
        1.0,
        f64::INFINITY,
    ]);
    let gs = values::<T>(&[f64::NAN, 2.0, f64::INFINITY, -0.0, f64::NEG_INFINITY]);
    for len in [40, 2 * PAR_MIN + 3] {
        // x, y, dy, dx
        let mut mem = vec![T::ZERO; 4 * len];
        for i in 0..len {
            mem[i] = xs[i % xs.len()];
            mem[2 * len + i] = gs[i % gs.len()];
            mem[3 * len + i] = T::from_f64(0.5 + i as f64 % 3.0);
        }
        let (r1, m1, r2, m2) = both!(mem, |b| {
            b.unary(UnaryOp::Relu, 0, len, len)?;
            b.unary_backward(UnaryOp::Relu, 0, len, 2 * len, 3 * len, len)
        });
        assert_eq!(r1, Ok(()));
        assert_eq!(r1, r2);
        assert_same(&m1, &m2, &format!("relu {len} {}", T::NAME));
        for i in 0..len {
            let (x, g, d0, d) = (mem[i], mem[2 * len + i], mem[3 * len + i], m2[3 * len + i]);
            let want = if x > T::ZERO { d0 + g } else { d0 };
            assert!(
                d.to_f64().to_bits() == want.to_f64().to_bits() || (d.is_nan() && want.is_nan()),
                "relu backward at x {x}, dy {g}: {d}"
            );
        }
    }
}

#[test]
fn relu_backward_at_zero_and_nan() {
    check_relu_backward::<f32>();
    check_relu_backward::<f64>();
}

/// A whole-tensor sum or mean (`outer` = `inner` = 1) of `n` values on `threads` threads (one:
/// 16 lanes from 4096 values on, one chain below; more: chunks on the team from PAR_MIN on),
/// forward and backward, against the reference. On multiples of 1/64 in [-1, 1] every partial
/// sum is exact (below 2^18 in magnitude), so the results must be the reference's bit for bit
/// (a term or a divisor off by one shows). On values in [-1, 3] (no cancellation): in f64
/// within 1e-13 of the reference (measured 3e-14); in f32 within 3e-6 of the sum in f64
/// (measured 8e-7 on one thread, 2e-7 on three), where the reference's one f32 chain is up
/// to 2e-5 off. (A divisor off by one: 1.4e-5 at 70,001 values.) The backward (`dx += dy /
/// n`) is exact.
fn check_whole_sum<T: Float>(n: usize, op: ReduceOp, threads: usize) {
    init();
    let a = Axis3 {
        outer: 1,
        n,
        inner: 1,
    };
    for exact in [true, false] {
        // x, y, dy, dx
        let mut m1: Vec<T> = random(2 * n + 2, n as u64, -1.0, 3.0);
        if exact {
            for v in &mut m1[..n] {
                *v = T::from_f64((v.to_f64() * 32.0).round() / 64.0 - 0.5);
            }
        }
        let mut m2 = m1.clone();
        Cpu::new(&mut m1).reduce(op, a, 0, n).unwrap();
        Cpu::new(&mut m1)
            .reduce_backward(op, a, 0, n, n + 1, n + 2)
            .unwrap();
        let mut par = Parallel::with_threads(&mut m2, threads);
        par.reduce(op, a, 0, n).unwrap();
        par.reduce_backward(op, a, 0, n, n + 1, n + 2).unwrap();
        let kind = if exact { "exact" } else { "rounded" };
        let what = format!("{op:?} of {n} ({kind}), {threads} threads, {}", T::NAME);
        if exact || n < 4096 {
            assert_same(&m1[n..n + 1], &m2[n..n + 1], &what);
        } else if is_f32::<T>() {
            let sum: f64 = m1[..n].iter().map(|v| v.to_f64()).sum();
            let want = if op == ReduceOp::Mean {
                sum / n as f64
            } else {
                sum
            };
            assert_near(&[want], &[m2[n].to_f64()], 3e-6, 0.0, &what);
        } else {
            assert_near(&m1[n..n + 1], &m2[n..n + 1], 1e-13, 0.0, &what);
        }
        assert_same(&m1[n + 1..], &m2[n + 1..], &format!("backward, {what}"));
    }
}

#[test]
fn whole_sums_on_one_thread() {
    for (n, op) in [
        (4095, ReduceOp::Sum),
        (4096, ReduceOp::Sum),
        (70_001, ReduceOp::Mean),
    ] {
        check_whole_sum::<f32>(n, op, 1);
        check_whole_sum::<f64>(n, op, 1);
    }
}

/// From PAR_MIN values on, in chunks (of at least 4096) over the three threads.
#[test]
fn whole_sums_over_the_threads() {
    for (n, op) in [
        (PAR_MIN, ReduceOp::Sum),
        (PAR_MIN + 1, ReduceOp::Mean),
        (70_001, ReduceOp::Mean),
        (200_003, ReduceOp::Sum),
    ] {
        check_whole_sum::<f32>(n, op, 3);
        check_whole_sum::<f64>(n, op, 3);
    }
}
