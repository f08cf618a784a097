//! Gradient checks for every op and loss: proptest draws shapes (size-1 and broadcast
//! dimensions included) and values; the tape's gradients are compared with central finite
//! differences in f64 by the public checker, `mote::gradcheck`.

use mote::gradcheck::{check, GradCheck};
use mote::ops::binary::BinaryOp;
use mote::ops::reduce::ReduceOp;
use mote::ops::unary::UnaryOp;
use mote::{Cpu, Result, Rng, Tape, Var};
use proptest::prelude::*;

const NODES: usize = 128;
type T<'m> = Tape<Cpu<'m, f64>, NODES>;

fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// Values away from zero, either sign (for divisors).
fn nonzero(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed ^ 0xabc);
    (0..n)
        .map(|_| {
            let m = rng.uniform(0.5, 2.0);
            if rng.next_u32() & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// `v` with each value within 0.001 of a kink moved 0.01 away from it: a central difference
/// that straddles a kink measures neither side's slope.
fn away_from(mut v: Vec<f64>, kinks: &[f64]) -> Vec<f64> {
    for x in &mut v {
        for &k in kinks {
            if (*x - k).abs() < 1e-3 {
                *x = k + if *x < k { -0.01 } else { 0.01 };
            }
        }
    }
    v
}

/// `a` with each value within `margin` of any value of `b` moved up past it (again while it
/// lands near another; at most `b.len()` steps, as it only rises): `Maximum` and `Minimum`
/// have a kink wherever the operands tie.
fn apart(mut a: Vec<f64>, b: &[f64], margin: f64) -> Vec<f64> {
    for x in &mut a {
        while let Some(&k) = b.iter().find(|&&k| (*x - k).abs() <= margin) {
            *x = k + 2.0 * margin;
        }
    }
    a
}

/// A shape with `numel` elements, drawn from `pick`: rank 1 to 4 (or 0 for one element), each
/// prime factor of `numel` in a dimension chosen by `pick`, the others 1.
fn factored(numel: usize, pick: u64) -> Vec<usize> {
    let mut rng = Rng::new(pick);
    let rank = if numel == 1 && pick.is_multiple_of(5) {
        0
    } else {
        1 + rng.below(4) as usize
    };
    let mut dims = vec![1usize; rank];
    let (mut n, mut p) = (numel, 2);
    while n > 1 {
        while n % p == 0 {
            let i = rng.below(rank as u32) as usize;
            dims[i] *= p;
            n /= p;
        }
        p += 1;
    }
    dims
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

/// Runs the checker and fails the test with the worst element when it disagrees.
fn assert_grads(
    inputs: &[(&[usize], &[f64])],
    f: impl for<'m> FnMut(&mut T<'m>, &[Var]) -> Result<Var>,
) -> std::result::Result<(), TestCaseError> {
    let mut mem = vec![0.0f64; 1 << 16];
    let report = check::<NODES>(&mut mem, inputs, GradCheck::default(), f)
        .map_err(|e| TestCaseError::fail(format!("op failed: {e}")))?;
    prop_assert!(
        report.passed(),
        "{report:?} for inputs {:?}",
        inputs.iter().map(|i| i.0).collect::<Vec<_>>()
    );
    prop_assert!(report.checked > 0);
    Ok(())
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 1..=3)
}

/// Any rank the core holds, 0 (a scalar) to 4, with small dimensions.
fn any_rank() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=3, 0..=4)
}

/// A shape and another that broadcasts against it (dims set to 1, leading dims dropped, all of
/// them at times: a scalar), in either order.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        prop::collection::vec(1usize..=3, 1..=4),
        any::<u32>(),
        0usize..=4,
        any::<bool>(),
    )
        .prop_map(|(full, ones, drop, swap)| {
            let mut other: Vec<usize> = full
                .iter()
                .enumerate()
                .map(|(i, &d)| if ones >> i & 1 == 1 { 1 } else { d })
                .collect();
            let drop = drop.min(other.len());
            other.drain(..drop);
            if swap {
                (other, full)
            } else {
                (full, other)
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn unary_ops(dims in any_rank(), seed in any::<u64>()) {
        for op in UnaryOp::EVERY {
            // log, sqrt and pow need positive inputs; the masking ops a range that reaches
            // their flat parts (beyond +-3, above 6).
            let x = if op.needs_positive() {
                values(numel(&dims), seed, 0.3, 3.0)
            } else if op.masks() {
                values(numel(&dims), seed, -7.0, 7.0)
            } else {
                values(numel(&dims), seed, -3.0, 3.0)
            };
            let kinks: Vec<f64> = op.kinks().iter().flatten().map(|&k| f64::from(k)).collect();
            let x = away_from(x, &kinks);
            assert_grads(&[(&dims, &x)], |t, v| t.unary(op, v[0]))?;
        }
    }

    /// The unary ops that take an argument, with the argument drawn (the other tests use one
    /// value each): any exponent on positive inputs, any slope, any ELU scale, any scalar to
    /// add or multiply by, any clamp bounds (values kept off them, as off other kinks); and
    /// softplus over its linear branch (above 20) too.
    #[test]
    fn unary_ops_with_drawn_arguments(
        dims in any_rank(),
        (p, slope, scale) in (-2.0f32..3.0, -1.0f32..2.0, 0.1f32..3.0),
        (c, width) in (-3.0f32..3.0, 0.0f32..3.0),
        big in 20.01f64..30.0,
        seed in any::<u64>(),
    ) {
        let pos = values(numel(&dims), seed, 0.3, 3.0);
        assert_grads(&[(&dims, &pos)], |t, v| t.unary(UnaryOp::Pow(p), v[0]))?;
        let x = away_from(values(numel(&dims), seed ^ 1, -3.0, 3.0), &[0.0]);
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::LeakyRelu(slope), v[0]))?;
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::Elu(scale), v[0]))?;
        let x = values(numel(&dims), seed ^ 2, -4.0, 4.0);
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::AddScalar(c), v[0]))?;
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::MulScalar(c), v[0]))?;
        // The bounds as the ops see them (f32), the values off them.
        let (lo, hi) = (c, c + width);
        let x = away_from(x, &[f64::from(lo), f64::from(hi)]);
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::ClampMin(lo), v[0]))?;
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::ClampMax(hi), v[0]))?;
        assert_grads(&[(&dims, &x)], |t, v| t.clamp(v[0], lo, hi))?;
        // Softplus both sides of its threshold (20, where ln(1 + e^x) and x differ by 2e-9,
        // a step a central difference must not straddle): one value above it at least.
        let mut x = away_from(values(numel(&dims), seed ^ 3, -25.0, 30.0), &[20.0]);
        x[0] = big;
        assert_grads(&[(&dims, &x)], |t, v| t.unary(UnaryOp::Softplus, v[0]))?;
        // With PyTorch's beta: the threshold applies to beta x.
        let beta = [0.5f32, 2.0, 3.0][(seed % 3) as usize];
        let x = away_from(values(numel(&dims), seed ^ 4, -8.0, 12.0), &[20.0 / f64::from(beta)]);
        assert_grads(&[(&dims, &x)], |t, v| t.softplus_beta(v[0], beta))?;
    }

    /// `normalize` and `cosine_similarity` along a drawn axis (values kept off a zero norm),
    /// the cosine's second operand broadcast along the first axis when drawn so.
    #[test]
    fn normalize_and_cosine_similarity(dims in prop::collection::vec(1usize..=3, 1..=4), axis in 0usize..4, lead in any::<bool>(), seed in any::<u64>()) {
        let axis = axis % dims.len();
        let x = values(numel(&dims), seed, 0.2, 2.0);
        assert_grads(&[(&dims, &x)], |t, v| t.normalize(v[0], axis, 1e-12))?;
        let mut bd = dims.clone();
        if lead && axis != 0 {
            bd[0] = 1;
        }
        let y = values(numel(&bd), seed ^ 1, -2.0, 2.0);
        let y: Vec<f64> = y.iter().map(|v| if v.abs() < 0.2 { 0.5 } else { *v }).collect();
        assert_grads(&[(&dims, &x), (&bd, &y)], |t, v| t.cosine_similarity(v[0], v[1], axis, 1e-8))?;
    }

    /// `logsumexp`, `var_axis` and `std_axis` (corrections 0 and 1) along a drawn axis, and
    /// `var` and `std` of everything; the drawn values keep every slice's spread away from 0
    /// (where the standard deviation's gradient is infinite).
    #[test]
    fn logsumexp_variance_and_deviation(dims in prop::collection::vec(2usize..=3, 1..=4), axis in 0usize..4, correction in 0usize..2, seed in any::<u64>()) {
        let axis = axis % dims.len();
        let x = values(numel(&dims), seed, -3.0, 3.0);
        assert_grads(&[(&dims, &x)], |t, v| t.logsumexp(v[0], axis))?;
        // Distinct values a slice apart: an arithmetic progression plus noise.
        let x: Vec<f64> = x.iter().enumerate().map(|(i, v)| i as f64 + 0.1 * v).collect();
        assert_grads(&[(&dims, &x)], |t, v| t.var_axis(v[0], axis, correction))?;
        assert_grads(&[(&dims, &x)], |t, v| t.std_axis(v[0], axis, correction))?;
        assert_grads(&[(&dims, &x)], |t, v| t.var(v[0], correction))?;
        assert_grads(&[(&dims, &x)], |t, v| t.std(v[0], correction))?;
    }

    #[test]
    fn binary_ops_broadcast((da, db) in broadcast_pair(), seed in any::<u64>()) {
        let b = nonzero(numel(&db), seed);
        // Off every value of b (a value of a meets several of b's through broadcasting): a
        // tie is a kink of Maximum and Minimum.
        let a = apart(values(numel(&da), seed, -2.0, 2.0), &b, 1e-3);
        for op in BinaryOp::EVERY {
            assert_grads(&[(&da, &a), (&db, &b)], |t, v| t.binary(op, v[0], v[1]))?;
        }
    }

    /// Ties of Maximum and Minimum: the gradient splits in halves (the documented rule, as
    /// PyTorch's), which is also what a central difference measures at a tie. Some elements
    /// tie, the others are apart.
    #[test]
    fn maximum_minimum_ties(dims in shape(), mask in any::<u32>(), seed in any::<u64>()) {
        let n = numel(&dims);
        let a = values(n, seed, -2.0, 2.0);
        let b: Vec<f64> = a.iter().enumerate()
            .map(|(i, &x)| if mask >> (i % 32) & 1 == 1 { x } else { x + if i % 2 == 0 { 0.5 } else { -0.5 } })
            .collect();
        for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
            assert_grads(&[(&dims, &a), (&dims, &b)], |t, v| t.binary(op, v[0], v[1]))?;
            // The rule itself: d sum(op(a, b)) is 1/2 for each operand where they tie.
            let mut mem = vec![0.0f64; 1 << 12];
            let mut t = T::new(&mut mem);
            let (va, vb) = (t.param(&dims, &a).unwrap(), t.param(&dims, &b).unwrap());
            let y = t.binary(op, va, vb).unwrap();
            let l = t.sum(y).unwrap();
            t.backward(l).unwrap();
            let (mut ga, mut gb) = (vec![0.0; n], vec![0.0; n]);
            t.read_grad(va, &mut ga).unwrap();
            t.read_grad(vb, &mut gb).unwrap();
            for i in 0..n {
                let a_wins = if op == BinaryOp::Maximum { a[i] > b[i] } else { a[i] < b[i] };
                let want = if a[i] == b[i] { (0.5, 0.5) } else if a_wins { (1.0, 0.0) } else { (0.0, 1.0) };
                prop_assert_eq!((ga[i], gb[i]), want, "{:?} at {} ({} vs {})", op, i, a[i], b[i]);
            }
            // The same tensor on both sides ties everywhere: the halves add up to 1.
            assert_grads(&[(&dims, &a)], |t, v| t.binary(op, v[0], v[0]))?;
        }
    }

    #[test]
    fn clamp_both_sides(dims in shape(), seed in any::<u64>()) {
        let x = away_from(values(numel(&dims), seed, -3.0, 3.0), &[-1.0, 1.5]);
        assert_grads(&[(&dims, &x)], |t, v| t.clamp(v[0], -1.0, 1.5))?;
    }

    #[test]
    fn a_tensor_used_twice_accumulates(dims in shape(), seed in any::<u64>()) {
        let x = values(numel(&dims), seed, -2.0, 2.0);
        assert_grads(&[(&dims, &x)], |t, v| {
            let sq = t.mul(v[0], v[0])?;
            let e = t.tanh(v[0])?;
            let s = t.add(sq, e)?;
            t.add(s, v[0])
        })?;
    }

    #[test]
    fn matmul_all_layouts(
        (m, n, k, batch) in (1usize..=4, 1usize..=4, 1usize..=4, 1usize..=3),
        (ta, tb) in (any::<bool>(), any::<bool>()),
        ranks in prop::sample::select(vec![(2usize, 2usize), (3, 3), (3, 2), (2, 3)]),
        seed in any::<u64>(),
    ) {
        let dims = |rank: usize, r: usize, c: usize| if rank == 3 { vec![batch, r, c] } else { vec![r, c] };
        let da = if ta { dims(ranks.0, k, m) } else { dims(ranks.0, m, k) };
        let db = if tb { dims(ranks.1, n, k) } else { dims(ranks.1, k, n) };
        let a = values(numel(&da), seed, -2.0, 2.0);
        let b = values(numel(&db), seed + 1, -2.0, 2.0);
        assert_grads(&[(&da, &a), (&db, &b)], |t, v| t.matmul_t(v[0], ta, v[1], tb))?;
    }

    #[test]
    fn linear_with_and_without_bias(
        (inp, out) in (1usize..=4, 1usize..=4),
        lead in prop::collection::vec(1usize..=3, 0..=3),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // `x` of shape [..., in], rank 1 to 4.
        let mut dx = lead;
        dx.push(inp);
        let x = values(numel(&dx), seed, -2.0, 2.0);
        let w = values(out * inp, seed + 1, -2.0, 2.0);
        let b = values(out, seed + 2, -2.0, 2.0);
        if bias {
            assert_grads(&[(&dx, &x), (&[out, inp], &w), (&[out], &b)], |t, v| t.linear(v[0], v[1], Some(v[2])))?;
        } else {
            assert_grads(&[(&dx, &x), (&[out, inp], &w)], |t, v| t.linear(v[0], v[1], None))?;
        }
    }

    #[test]
    fn reductions(dims in any_rank(), axis in 0usize..4, all in any::<bool>(), seed in any::<u64>()) {
        let x = values(numel(&dims), seed, -3.0, 3.0);
        for op in ReduceOp::EVERY {
            // A scalar has no axis: the whole-tensor reduction only.
            let ax = if all || dims.is_empty() { None } else { Some(axis % dims.len()) };
            assert_grads(&[(&dims, &x)], |t, v| t.reduce(op, v[0], ax))?;
        }
    }

    #[test]
    fn softmax_and_log_softmax(dims in prop::collection::vec(1usize..=3, 1..=4), axis in 0usize..4, seed in any::<u64>()) {
        let axis = axis % dims.len();
        let x = values(numel(&dims), seed, -3.0, 3.0);
        assert_grads(&[(&dims, &x)], |t, v| t.softmax(v[0], axis))?;
        assert_grads(&[(&dims, &x)], |t, v| t.log_softmax(v[0], axis))?;
    }

    #[test]
    fn movement_ops(dims in prop::collection::vec(1usize..=4, 2..=4), a0 in 0usize..4, a1 in 0usize..4, seed in any::<u64>()) {
        let (a0, a1) = (a0 % dims.len(), a1 % dims.len());
        let x = values(numel(&dims), seed, -2.0, 2.0);
        let to = factored(numel(&dims), seed ^ 5);
        assert_grads(&[(&dims, &x)], |t, v| t.reshape(v[0], &to))?;
        assert_grads(&[(&dims, &x)], |t, v| t.transpose(v[0], a0, a1))?;
        // slice: a drawn run along a0
        let d = dims[a0];
        let start = (seed >> 8) as usize % d;
        let len = 1 + (seed >> 16) as usize % (d - start);
        assert_grads(&[(&dims, &x)], |t, v| t.slice(v[0], a0, start, len))?;
        // concat with a second tensor that differs along a1
        let mut d2 = dims.clone();
        d2[a1] = 1 + (seed as usize % 3);
        let y = values(numel(&d2), seed + 7, -2.0, 2.0);
        assert_grads(&[(&dims, &x), (&d2, &y)], |t, v| t.concat(v[0], v[1], a1))?;
    }

    #[test]
    fn broadcast_to((small, full) in broadcast_pair(), seed in any::<u64>()) {
        // broadcast the smaller-or-equal shape to the broadcast of both
        let target: Vec<usize> = {
            let r = small.len().max(full.len());
            (0..r).map(|i| {
                let a = if i + small.len() >= r { small[i + small.len() - r] } else { 1 };
                let b = if i + full.len() >= r { full[i + full.len() - r] } else { 1 };
                a.max(b)
            }).collect()
        };
        let x = values(numel(&small), seed, -2.0, 2.0);
        assert_grads(&[(&small, &x)], |t, v| t.broadcast_to(v[0], &target))?;
    }

    /// The elementwise losses at any rank they take (any: same-shaped operands), from a
    /// scalar to rank 4; the cross-entropies on [N, C] logits, which is all they take.
    #[test]
    fn losses(rows in 1usize..=5, classes in 1usize..=5, rank in 0usize..=4, more in (1usize..=3, 1usize..=3), l1_beta in prop::bool::weighted(0.25), seed in any::<u64>()) {
        let edims = [rows, classes, more.0, more.1][..rank].to_vec();
        let n = numel(&edims);
        let p = values(n, seed ^ 3, -3.0, 3.0);
        let t = values(n, seed ^ 4, 0.0, 1.0);
        // Drawn thresholds (beta 0 too: the L1 loss); values within 0.01 of a kink (|p - t| =
        // delta or beta, and 0 for the L1 loss) moved off it.
        let delta = values(1, seed ^ 7, 0.1, 3.0)[0];
        let beta = if l1_beta { 0.0 } else { values(1, seed ^ 9, 0.1, 3.0)[0] };
        let off = |k: f64| -> Vec<f64> {
            let d: Vec<f64> = p.iter().zip(&t).map(|(a, b)| a - b).collect();
            away_from(d, &[-k, k]).iter().zip(&t).map(|(d, b)| d + b).collect()
        };
        let (p1, ph, ps) = (off(0.0), off(delta), off(beta));
        let e = &edims[..];
        assert_grads(&[(e, &p), (e, &t)], |tp, v| tp.mse(v[0], v[1]))?;
        assert_grads(&[(e, &p), (e, &t)], |tp, v| tp.bce_with_logits(v[0], v[1]))?;
        // Probabilities (away from 0 and 1, where the clamped logarithms' kinks are), and a
        // weight of the same shape.
        let probs = values(n, seed ^ 8, 0.05, 0.95);
        let w = values(n, seed ^ 5, 0.5, 2.0);
        assert_grads(&[(e, &probs), (e, &t), (e, &w)], |tp, v| {
            tp.binary_cross_entropy(v[0], v[1], Some(v[2]))
        })?;
        // PyTorch's `weight` (the logits' shape) and `pos_weight` (one per last-axis entry).
        let per_class = &edims[edims.len().saturating_sub(1)..];
        let (w, pw) = (values(n, seed ^ 5, 0.5, 2.0), values(numel(per_class), seed ^ 6, 0.2, 3.0));
        assert_grads(&[(e, &p), (e, &t), (e, &w), (per_class, &pw)], |tp, v| {
            tp.bce_with_logits_weighted(v[0], v[1], Some(v[2]), Some(v[3]))
        })?;
        assert_grads(&[(e, &p), (e, &t), (per_class, &pw)], |tp, v| {
            tp.bce_with_logits_weighted(v[0], v[1], None, Some(v[2]))
        })?;
        assert_grads(&[(e, &p1), (e, &t)], |tp, v| tp.l1_loss(v[0], v[1]))?;
        assert_grads(&[(e, &ph), (e, &t)], |tp, v| tp.huber_loss(v[0], v[1], delta as f32))?;
        assert_grads(&[(e, &ps), (e, &t)], |tp, v| tp.smooth_l1_loss(v[0], v[1], beta as f32))?;
        if l1_beta {
            // beta 0 is the L1 loss (its value; its gradients are checked above).
            let mut mem = vec![0.0f64; 1 << 12];
            let mut tp = T::new(&mut mem);
            let (vp, vt) = (tp.param(e, &ps).unwrap(), tp.input(e, &t).unwrap());
            let s = tp.smooth_l1_loss(vp, vt, 0.0).unwrap();
            let l = tp.l1_loss(vp, vt).unwrap();
            prop_assert_eq!(tp.item(s).unwrap(), tp.item(l).unwrap());
        }
        if rank != 2 {
            // Probability targets need [N, C]: other ranks are refused, not misread.
            let mut mem = vec![0.0f64; 1 << 12];
            let mut tp = T::new(&mut mem);
            let (vp, vt) = (tp.param(e, &p).unwrap(), tp.input(e, &t).unwrap());
            let r = tp.cross_entropy_probs(vp, vt);
            prop_assert!(matches!(r, Err(mote::Error::ShapeMismatch { .. })), "{:?}", r);
        }
        let dims = [rows, classes];
        let p = values(rows * classes, seed, -3.0, 3.0);
        let t = values(rows * classes, seed + 1, 0.0, 1.0);
        let mut rng = Rng::new(seed);
        let labels: Vec<usize> = (0..rows).map(|_| rng.below(classes as u32) as usize).collect();
        assert_grads(&[(&dims, &p)], |tp, v| {
            let l = tp.labels(&labels)?;
            tp.cross_entropy(v[0], l)
        })?;
        // Class-probability targets (any non-negative rows): both inputs get gradients.
        assert_grads(&[(&dims, &p), (&dims, &t)], |tp, v| tp.cross_entropy_probs(v[0], v[1]))?;
        let smoothing = [0.05f32, 0.1, 0.5, 1.0][(seed % 4) as usize];
        assert_grads(&[(&dims, &p)], |tp, v| {
            let l = tp.labels(&labels)?;
            tp.cross_entropy_smoothed(v[0], l, smoothing)
        })?;
        // PyTorch's `ignore_index`: -100, or a class (then every row of that class is
        // ignored); rows after the first drawn to be ignored, the first kept.
        let ignore = match (seed >> 8) % 3 {
            0 => -100,
            _ => ((seed >> 10) % classes as u64) as i32,
        };
        let ignore = if labels[0] as i32 == ignore { -100 } else { ignore };
        let marked: Vec<f64> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i > 0 && (seed >> (16 + i)) & 1 == 1 { f64::from(ignore) } else { l as f64 })
            .collect();
        assert_grads(&[(&dims, &p)], |tp, v| {
            let l = tp.input(&[rows], &marked)?;
            tp.cross_entropy_ignore(v[0], l, ignore, smoothing)
        })?;
        // The negative log-likelihood of the logits' log-softmax, and of the raw logits
        // (unnormalised: the gradient is still -1 / kept at the labels), with the same
        // ignored rows; the KL divergence from the targets' rows (positive, summing to 1 or
        // not) to the log-softmax, both sides getting gradients, and from log targets.
        assert_grads(&[(&dims, &p)], |tp, v| {
            let l = tp.input(&[rows], &marked)?;
            let lp = tp.log_softmax(v[0], 1)?;
            tp.nll_loss(lp, l, ignore)
        })?;
        assert_grads(&[(&dims, &p)], |tp, v| {
            let l = tp.input(&[rows], &marked)?;
            tp.nll_loss(v[0], l, ignore)
        })?;
        assert_grads(&[(&dims, &p), (&dims, &t)], |tp, v| {
            let lq = tp.log_softmax(v[0], 1)?;
            tp.kl_div_batchmean(lq, v[1], false)
        })?;
        assert_grads(&[(&dims, &p), (&dims, &p)], |tp, v| {
            let lq = tp.log_softmax(v[0], 1)?;
            tp.kl_div_batchmean(lq, v[1], true)
        })?;
    }

    /// The loss modules of `mote::nn::loss` at every reduction, with their options drawn:
    /// the element-wise ones at any rank, the class losses on [N, C] with class weights
    /// (which get gradients too), ignored rows and label smoothing.
    #[test]
    fn loss_modules(rows in 1usize..=4, classes in 1usize..=4, rank in 0usize..=3, reduction in 0usize..4, options in any::<u8>(), seed in any::<u64>()) {
        use mote::nn::loss::*;
        let r = [Reduction::None, Reduction::Mean, Reduction::Sum, Reduction::BatchMean][reduction];
        let e = &[rows, classes, 2][..rank];
        let n = numel(e);
        let (p, t) = (values(n, seed ^ 3, -3.0, 3.0), values(n, seed ^ 4, 0.0, 1.0));
        let w = values(n, seed ^ 5, 0.5, 2.0);
        let delta = values(1, seed ^ 7, 0.1, 3.0)[0];
        let ph = {
            let d: Vec<f64> = p.iter().zip(&t).map(|(a, b)| a - b).collect();
            away_from(d, &[-delta, 0.0, delta]).iter().zip(&t).map(|(d, b)| d + b).collect::<Vec<f64>>()
        };
        let probs = values(n, seed ^ 8, 0.05, 0.95);
        assert_grads(&[(e, &p), (e, &probs)], |tp, v| {
            let lq = if rank == 0 { v[0] } else { tp.log_softmax(v[0], rank - 1)? };
            KlDivLoss { reduction: r, log_target: options & 4 != 0 }.forward(tp, lq, v[1])
        })?;
        if r == Reduction::BatchMean {
            // The KL divergence's only: the others refuse it.
            return Ok(());
        }
        assert_grads(&[(e, &p), (e, &t)], |tp, v| MseLoss { reduction: r }.forward(tp, v[0], v[1]))?;
        assert_grads(&[(e, &ph), (e, &t)], |tp, v| L1Loss { reduction: r }.forward(tp, v[0], v[1]))?;
        let (delta, beta) = (delta as f32, [0.0f32, delta as f32][usize::from(options & 1)]);
        assert_grads(&[(e, &ph), (e, &t)], |tp, v| HuberLoss { delta, reduction: r }.forward(tp, v[0], v[1]))?;
        assert_grads(&[(e, &ph), (e, &t)], |tp, v| SmoothL1Loss { beta, reduction: r }.forward(tp, v[0], v[1]))?;
        assert_grads(&[(e, &probs), (e, &t), (e, &w)], |tp, v| {
            BceLoss { weight: Some(v[2]), reduction: r }.forward(tp, v[0], v[1])
        })?;
        // Neither weight, or both (pos_weight one per last-axis entry), each getting gradients.
        let per_class = &e[e.len().saturating_sub(1)..];
        let pw = values(numel(per_class), seed ^ 6, 0.2, 3.0);
        if options & 2 != 0 {
            assert_grads(&[(e, &p), (e, &t), (e, &w), (per_class, &pw)], |tp, v| {
                let (weight, pos_weight) = (Some(v[2]), Some(v[3]));
                BceWithLogitsLoss { weight, pos_weight, reduction: r }.forward(tp, v[0], v[1])
            })?;
        } else {
            assert_grads(&[(e, &p), (e, &t)], |tp, v| {
                BceWithLogitsLoss { reduction: r, ..Default::default() }.forward(tp, v[0], v[1])
            })?;
        }
        let dims = [rows, classes];
        let z = values(rows * classes, seed, -3.0, 3.0);
        let cw = values(classes, seed ^ 9, 0.2, 2.0);
        let targets = values(rows * classes, seed ^ 10, 0.0, 1.0);
        let ignore = (options & 8 != 0).then_some(-100);
        let mut rng = Rng::new(seed);
        // Rows ignored at times (never all: the mean would be NaN).
        let labels: Vec<f64> = (0..rows)
            .map(|i| if ignore.is_some() && i > 0 && rng.below(3) == 0 { -100.0 } else { f64::from(rng.below(classes as u32)) })
            .collect();
        let label_smoothing = [0.0f32, 0.1, 1.0][usize::from(options >> 4) % 3];
        let weighted = options & 64 != 0;
        let w_in: &[(&[usize], &[f64])] = &[(&dims, &z), (&[classes], &cw)];
        let inputs = if weighted { w_in } else { &w_in[..1] };
        assert_grads(inputs, |tp, v| {
            let y = tp.input(&[rows], &labels)?;
            let weight = v.get(1).copied();
            CrossEntropyLoss { weight, ignore_index: ignore, label_smoothing, reduction: r }.forward(tp, v[0], y)
        })?;
        assert_grads(inputs, |tp, v| {
            let y = tp.input(&[rows], &labels)?;
            let lp = tp.log_softmax(v[0], 1)?;
            NllLoss { weight: v.get(1).copied(), ignore_index: ignore, reduction: r }.forward(tp, lp, y)
        })?;
        let with_targets: &[(&[usize], &[f64])] = &[(&dims, &z), (&dims, &targets), (&[classes], &cw)];
        let inputs = if weighted { with_targets } else { &with_targets[..2] };
        assert_grads(inputs, |tp, v| {
            let m = CrossEntropyLoss { weight: v.get(2).copied(), label_smoothing, reduction: r, ..Default::default() };
            m.forward_probs(tp, v[0], v[1])
        })?;
    }
}

/// A whole model (the layers users build) passes the same check.
#[test]
fn a_small_model_end_to_end() {
    let x = values(3 * 4, 1, -1.0, 1.0);
    let w1 = values(5 * 4, 2, -1.0, 1.0);
    let b1 = values(5, 3, -1.0, 1.0);
    let w2 = values(3 * 5, 4, -1.0, 1.0);
    let inputs: [(&[usize], &[f64]); 4] =
        [(&[3, 4], &x), (&[5, 4], &w1), (&[5], &b1), (&[3, 5], &w2)];
    let mut mem = vec![0.0f64; 1 << 14];
    let report = check::<NODES>(&mut mem, &inputs, GradCheck::default(), |t, v| {
        let h = t.linear(v[0], v[1], Some(v[2]))?;
        let h = t.gelu(h)?;
        let o = t.linear(h, v[3], None)?;
        let l = t.labels(&[0, 2, 1])?;
        t.cross_entropy(o, l)
    })
    .unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.checked, 12 + 20 + 5 + 15);
}

/// The checker catches a wrong gradient: it is not a test that passes whatever happens.
#[test]
fn the_checker_catches_a_wrong_gradient() {
    let x = values(4, 9, 0.5, 2.0);
    let mut mem = vec![0.0f64; 1 << 12];
    // d/dx of x * stop_gradient(x) is not 2x; emulate a "wrong backward" by computing
    // x * x through an input copy that does not get a gradient.
    let report = check::<NODES>(&mut mem, &[(&[4], &x)], GradCheck::default(), |t, v| {
        let mut copy = [0.0; 4];
        t.read(v[0], &mut copy)?;
        let c = t.input(&[4], &copy)?;
        t.mul(v[0], c)
    })
    .unwrap();
    // The copy is refreshed each evaluation, so the numeric gradient is 2x while the tape
    // gives x: every element must be reported.
    assert_eq!(report.failed, 4, "{report:?}");
}
