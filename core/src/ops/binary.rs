//! Elementwise binary ops with PyTorch broadcasting: `y = a (op) b`.
//!
//! | op | y | dy/da | dy/db |
//! | --- | --- | --- | --- |
//! | `Add` | a + b | 1 | 1 |
//! | `Sub` | a - b | 1 | -1 |
//! | `Mul` | a b | b | a |
//! | `Div` | a / b | 1 / b | -a / b^2 |
//! | `Maximum` | max(a, b) | 1 if a > b, 1/2 if a = b, else 0 | 1 if b > a, 1/2 if a = b, else 0 |
//! | `Minimum` | min(a, b) | 1 if a < b, 1/2 if a = b, else 0 | 1 if b < a, 1/2 if a = b, else 0 |
//!
//! `Maximum` and `Minimum` are PyTorch's `torch.maximum` and `torch.minimum`: a NaN in either
//! operand gives NaN, a tie splits the gradient in halves, and where an operand's partial is 0
//! its gradient gets nothing (not `0 * dy`: a NaN `dy` there stays out, as PyTorch's
//! `masked_fill`).
//!
//! Broadcasting aligns trailing dimensions; a dimension of 1 stretches. In backward, the gradient
//! of a broadcast operand is summed over the stretched dimensions.

use crate::float::Float;
use crate::shape::{Shape, MAX_RANK};

/// An elementwise binary op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// max(a, b) (NaN-propagating)
    Maximum,
    /// min(a, b) (NaN-propagating)
    Minimum,
}

/// Which operand a backward call computes the gradient of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The first operand.
    Lhs,
    /// The second operand.
    Rhs,
}

impl BinaryOp {
    /// Every op: for tests and tools that go over all of them.
    pub const EVERY: [BinaryOp; 6] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];

    /// The op's code: its place in [`BinaryOp::EVERY`], as replay lists and the CUDA kernels
    /// (`cuda/kernels/binary.cu`) store it.
    pub fn code(self) -> u8 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::Maximum => 4,
            BinaryOp::Minimum => 5,
        }
    }

    /// The op of a [`BinaryOp::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<BinaryOp> {
        BinaryOp::EVERY.get(usize::from(code)).copied()
    }

    /// The op's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }

    #[inline]
    fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Maximum => {
                if a > b || a.is_nan() {
                    a
                } else {
                    b
                }
            }
            BinaryOp::Minimum => {
                if a < b || a.is_nan() {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// The partial derivative of `y` with respect to `side`, at (a, b).
    #[inline]
    fn partial<T: Float>(self, side: Side, a: T, b: T) -> T {
        match (self, side) {
            (BinaryOp::Add, _) => T::ONE,
            (BinaryOp::Sub, Side::Lhs) => T::ONE,
            (BinaryOp::Sub, Side::Rhs) => -T::ONE,
            (BinaryOp::Mul, Side::Lhs) => b,
            (BinaryOp::Mul, Side::Rhs) => a,
            (BinaryOp::Div, Side::Lhs) => T::ONE / b,
            (BinaryOp::Div, Side::Rhs) => -a / (b * b),
            (BinaryOp::Maximum, Side::Lhs) | (BinaryOp::Minimum, Side::Rhs) => select(b, a),
            (BinaryOp::Maximum, Side::Rhs) | (BinaryOp::Minimum, Side::Lhs) => select(a, b),
        }
    }

    /// What `dy` adds to an operand's gradient through partial `p`: `dy p`, but nothing where
    /// a selecting op (`Maximum`, `Minimum`) did not select the operand.
    #[inline]
    fn term<T: Float>(self, g: T, p: T) -> T {
        if p == T::ZERO && matches!(self, BinaryOp::Maximum | BinaryOp::Minimum) {
            T::ZERO
        } else {
            g * p
        }
    }
}

/// The partial of operand `this` of a maximum against `other` (and of a minimum, with the
/// operands passed the other way round): 0 where `this < other`, 1/2 on a tie, else 1 (NaN
/// included, as PyTorch's).
#[inline]
fn select<T: Float>(other: T, this: T) -> T {
    if this < other {
        T::ZERO
    } else if this == other {
        T::from_f64(0.5)
    } else {
        T::ONE
    }
}

/// Calls `f(out_index, a_index, b_index, n, a_stride, b_stride)` for every innermost row of
/// `out` (in order): `n` elements starting at those indices, the operands advancing by their
/// strides. Strides are aligned with `out`'s dimensions (as [`Shape::broadcast_strides`] gives).
pub(crate) fn rows(
    out: &Shape,
    sa: [usize; MAX_RANK],
    sb: [usize; MAX_RANK],
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize),
) {
    // Right-align: the real last dimension becomes the innermost loop.
    let r = out.rank();
    let shift = MAX_RANK - r;
    let mut d = [1usize; MAX_RANK];
    let (mut a, mut b) = ([0usize; MAX_RANK], [0usize; MAX_RANK]);
    for i in 0..r {
        if let (Some(dd), Some(aa), Some(bb)) = (
            d.get_mut(i + shift),
            a.get_mut(i + shift),
            b.get_mut(i + shift),
        ) {
            *dd = out.dim(i);
            *aa = sa.get(i).copied().unwrap_or(0);
            *bb = sb.get(i).copied().unwrap_or(0);
        }
    }
    let n = d[3];
    let mut o = 0;
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                let ia = i0 * a[0] + i1 * a[1] + i2 * a[2];
                let ib = i0 * b[0] + i1 * b[1] + i2 * b[2];
                f(o, ia, ib, n, a[3], b[3]);
                o += n;
            }
        }
    }
}

/// Calls `f(out_index, a_index, b_index)` for every element of `out`, in order.
pub(crate) fn walk(
    out: &Shape,
    sa: [usize; MAX_RANK],
    sb: [usize; MAX_RANK],
    mut f: impl FnMut(usize, usize, usize),
) {
    rows(out, sa, sb, |o, ia, ib, n, da, db| {
        for k in 0..n {
            f(o + k, ia + k * da, ib + k * db);
        }
    });
}

/// If `small` broadcast to `out` varies along one contiguous run of `out`'s dimensions only (a
/// per-channel `[C, 1, 1]` against `[N, C, H, W]`, a bias row, a scalar), returns `(run,
/// inner)`: the run's length (`small`'s element count) and the number of elements of `out`
/// after it, along which each of `small`'s elements repeats.
fn middle(small: &Shape, out: &Shape) -> Option<(usize, usize)> {
    let (sd, od) = (small.dims(), out.dims());
    let pad = od.len().checked_sub(sd.len())?;
    // `small`'s dimension aligned with `out`'s `d` (1 where it has none).
    let at = |d: usize| {
        d.checked_sub(pad)
            .and_then(|i| sd.get(i))
            .copied()
            .unwrap_or(1)
    };
    let (first, end) = match (0..od.len()).position(|d| at(d) != 1) {
        Some(first) => {
            let last = (0..od.len()).rev().find(|&d| at(d) != 1).unwrap_or(first);
            (first, last + 1)
        }
        // A scalar: one row of the whole output.
        None => (0, 0),
    };
    if (first..end).any(|d| od.get(d) != Some(&at(d))) {
        return None;
    }
    let inner: usize = od
        .get(end..)
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as usize)
        .product();
    let run = small.numel();
    (run != 0 && inner != 0).then_some((run, inner))
}

/// `y = f(full, small)` where `small` varies along a run of `y`'s dimensions ([`middle`]'s
/// `(run, inner)`): each of its values over a row of `full` (rows of one element for a bias
/// row, zipped whole so that they vectorise).
#[inline(always)]
fn along_runs<T: Float>(
    full: &[T],
    small: &[T],
    y: &mut [T],
    (run, inner): (usize, usize),
    f: impl Fn(T, T) -> T,
) {
    for (yc, fc) in y
        .chunks_exact_mut(run * inner)
        .zip(full.chunks_exact(run * inner))
    {
        if inner == 1 {
            for ((y, &v), &s) in yc.iter_mut().zip(fc).zip(small) {
                *y = f(v, s);
            }
            continue;
        }
        let rows = yc.chunks_exact_mut(inner).zip(fc.chunks_exact(inner));
        for ((yr, fr), &s) in rows.zip(small) {
            for (y, &v) in yr.iter_mut().zip(fr) {
                *y = f(v, s);
            }
        }
    }
}

/// Reference forward kernel. Shapes have been checked by the caller: `ys` is the broadcast of
/// `as_` and `bs`, and slices have those lengths.
pub fn forward<T: Float>(
    op: BinaryOp,
    a: &[T],
    sa: &Shape,
    b: &[T],
    sb: &Shape,
    y: &mut [T],
    ys: &Shape,
) {
    let (an, bn) = (sa.numel(), sb.numel());
    let yn = y.len();
    if an == yn && bn == yn {
        // One loop per common op, so that each vectorises (the same values as `apply`).
        match op {
            BinaryOp::Add => zip_into(a, b, y, |a, b| a + b),
            BinaryOp::Sub => zip_into(a, b, y, |a, b| a - b),
            BinaryOp::Mul => zip_into(a, b, y, |a, b| a * b),
            _ => zip_into(a, b, y, |a, b| op.apply(a, b)),
        }
    } else if let (true, Some(run)) = (an == yn, middle(sb, ys)) {
        along_runs(a, b, y, run, |a, b| op.apply(a, b));
    } else if let (true, Some(run)) = (bn == yn, middle(sa, ys)) {
        along_runs(b, a, y, run, |b, a| op.apply(a, b));
    } else {
        let (ta, tb) = (sa.broadcast_strides(ys), sb.broadcast_strides(ys));
        walk(ys, ta, tb, |o, ia, ib| {
            if let (Some(y), Some(&a), Some(&b)) = (y.get_mut(o), a.get(ia), b.get(ib)) {
                *y = op.apply(a, b);
            }
        });
    }
}

/// `y[i] = f(a[i], b[i])`, inlined so that each op's loop is its own.
#[inline(always)]
fn zip_into<T: Float>(a: &[T], b: &[T], y: &mut [T], f: impl Fn(T, T) -> T) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = f(a, b);
    }
}

/// Reference backward kernel: accumulates the gradient of operand `side` into `dx` (shaped like
/// that operand), summing over broadcast dimensions.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    op: BinaryOp,
    side: Side,
    a: &[T],
    sa: &Shape,
    b: &[T],
    sb: &Shape,
    dy: &[T],
    ys: &Shape,
    dx: &mut [T],
) {
    let n = dy.len();
    if sa.numel() == n && sb.numel() == n {
        match (op, side) {
            (BinaryOp::Add, _) | (BinaryOp::Sub, Side::Lhs) => {
                for (dx, &g) in dx.iter_mut().zip(dy) {
                    *dx += g;
                }
            }
            (BinaryOp::Sub, Side::Rhs) => {
                for (dx, &g) in dx.iter_mut().zip(dy) {
                    *dx -= g;
                }
            }
            // A product's partial is the other operand (the same values as `term`).
            (BinaryOp::Mul, _) => {
                let other = match side {
                    Side::Lhs => b,
                    Side::Rhs => a,
                };
                for ((dx, &g), &o) in dx.iter_mut().zip(dy).zip(other) {
                    *dx += g * o;
                }
            }
            _ => {
                for (((dx, &g), &a), &b) in dx.iter_mut().zip(dy).zip(a).zip(b) {
                    *dx += op.term(g, op.partial(side, a, b));
                }
            }
        }
        return;
    }
    let (ta, tb) = (sa.broadcast_strides(ys), sb.broadcast_strides(ys));
    // The operand of the output's shape in a sum or difference takes the gradient element by
    // element: its partial is the constant +1 or -1 (the same products as below, in the same
    // order, without the walk over broadcast indices; the same values, though where both the
    // gradient and `g` are NaN, which NaN payload survives may differ).
    let constant = match (op, side) {
        (BinaryOp::Add, _) | (BinaryOp::Sub, Side::Lhs) => Some(T::ONE),
        (BinaryOp::Sub, Side::Rhs) => Some(-T::ONE),
        _ => None,
    };
    if let Some(p) = constant {
        let full = match side {
            Side::Lhs => sa.numel() == n,
            Side::Rhs => sb.numel() == n,
        };
        if full {
            for (d, &g) in dx.iter_mut().zip(dy) {
                *d += g * p;
            }
            return;
        }
    }
    // The broadcast operand's gradient where the other one has the output's shape and this one
    // varies along a run of middle dimensions (a per-channel value), in a sum, a difference or
    // a product (its partial a constant or the other operand): the walk's sums, in the walk's
    // order (the output's), without its per-element index arithmetic. Two loops in all, so
    // that a firmware links little code for them.
    let (other_full, small_shape, full_v) = match side {
        Side::Lhs => (sb.numel() == n, sa, b),
        Side::Rhs => (sa.numel() == n, sb, a),
    };
    if other_full && (constant.is_some() || op == BinaryOp::Mul) {
        if let Some((run, inner)) = middle(small_shape, ys) {
            let block = run * inner;
            for (gc, fc) in dy.chunks_exact(block).zip(full_v.chunks_exact(block)) {
                let rows = gc.chunks_exact(inner).zip(fc.chunks_exact(inner));
                for ((gr, fr), d) in rows.zip(dx.iter_mut()) {
                    match constant {
                        Some(p) => gr.iter().for_each(|&g| *d += g * p),
                        None => gr.iter().zip(fr).for_each(|(&g, &f)| *d += g * f),
                    }
                }
            }
            return;
        }
    }
    walk(ys, ta, tb, |o, ia, ib| {
        if let (Some(&g), Some(&av), Some(&bv)) = (dy.get(o), a.get(ia), b.get(ib)) {
            let slot = match side {
                Side::Lhs => dx.get_mut(ia),
                Side::Rhs => dx.get_mut(ib),
            };
            if let Some(d) = slot {
                *d += op.term(g, op.partial(side, av, bv));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape::new(d).unwrap()
    }

    #[test]
    fn codes_are_places_in_every() {
        for (i, op) in BinaryOp::EVERY.into_iter().enumerate() {
            assert_eq!(usize::from(op.code()), i);
            assert_eq!(BinaryOp::from_code(op.code()), Some(op));
        }
        assert_eq!(BinaryOp::from_code(6), None);
    }

    // PyTorch's torch.maximum / torch.minimum: values, NaN, ties (the gradient in halves), and
    // a NaN upstream gradient kept out of the operand that was not selected.
    #[test]
    fn maximum_and_minimum_as_pytorch() {
        let sh = s(&[4]);
        let a = [1.0f64, 3.0, 2.0, f64::NAN];
        let b = [2.0f64, 1.0, 2.0, 0.0];
        let mut y = [0.0; 4];
        forward(BinaryOp::Maximum, &a, &sh, &b, &sh, &mut y, &sh);
        assert_eq!(y[..3], [2.0, 3.0, 2.0]);
        assert!(y[3].is_nan());
        forward(BinaryOp::Minimum, &b, &sh, &a, &sh, &mut y, &sh);
        assert_eq!(y[..3], [1.0, 1.0, 2.0]);
        assert!(y[3].is_nan());
        let dy = [f64::NAN, 1.0, 1.0, 1.0];
        for (op, side, want) in [
            (BinaryOp::Maximum, Side::Lhs, [0.0, 1.0, 0.5, 1.0]),
            (BinaryOp::Maximum, Side::Rhs, [f64::NAN, 0.0, 0.5, 1.0]),
            (BinaryOp::Minimum, Side::Lhs, [f64::NAN, 0.0, 0.5, 1.0]),
            (BinaryOp::Minimum, Side::Rhs, [0.0, 1.0, 0.5, 1.0]),
        ] {
            let mut dx = [0.0; 4];
            backward(op, side, &a, &sh, &b, &sh, &dy, &sh, &mut dx);
            for (g, w) in dx.iter().zip(want) {
                assert!(
                    g == &w || (g.is_nan() && w.is_nan()),
                    "{op:?} {side:?}: {dx:?}"
                );
            }
        }
    }

    // Hand-computed: [[1,2,3],[4,5,6]] (op) [10,20,30] and (op) [[100],[200]].
    #[test]
    fn broadcast_forward_values() {
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut y = [0.0; 6];
        forward(
            BinaryOp::Add,
            &a,
            &s(&[2, 3]),
            &[10.0, 20.0, 30.0],
            &s(&[3]),
            &mut y,
            &s(&[2, 3]),
        );
        assert_eq!(y, [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        forward(
            BinaryOp::Sub,
            &a,
            &s(&[2, 3]),
            &[100.0, 200.0],
            &s(&[2, 1]),
            &mut y,
            &s(&[2, 3]),
        );
        assert_eq!(y, [-99.0, -98.0, -97.0, -196.0, -195.0, -194.0]);
        forward(
            BinaryOp::Div,
            &[12.0],
            &s(&[]),
            &a,
            &s(&[2, 3]),
            &mut y,
            &s(&[2, 3]),
        );
        assert_eq!(y, [12.0, 6.0, 4.0, 3.0, 2.4, 2.0]);
        // [2,1] * [1,3] -> outer product [2,3]
        forward(
            BinaryOp::Mul,
            &[2.0, 3.0],
            &s(&[2, 1]),
            &[1.0, 10.0, 100.0],
            &s(&[1, 3]),
            &mut y,
            &s(&[2, 3]),
        );
        assert_eq!(y, [2.0, 20.0, 200.0, 3.0, 30.0, 300.0]);
    }

    /// A per-channel operand (or any run of middle dimensions, a bias row, a scalar) against
    /// a full one, on either side: the run paths give the walk's results bit for bit, forward
    /// and every gradient; other broadcasts are not taken for runs.
    #[test]
    fn middle_runs_match_the_walk() {
        let mut seed = 7u64;
        let mut draw = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
        let bits = |v: &[f64], w: &[f64]| v.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits());
        let (mut runs, mut others) = (0, 0);
        for _ in 0..6000 {
            let rank = 1 + draw(4);
            let mut od = [1usize; 4];
            for d in od.iter_mut().take(rank) {
                *d = if draw(5) == 0 { 1 } else { 2 + draw(3) };
            }
            let od = &od[..rank];
            // The small operand: some of `out`'s dimensions set to 1, maybe leading ones dropped.
            let mut sd = [1usize; 4];
            for (s, &d) in sd.iter_mut().zip(od) {
                *s = if draw(2) == 0 { 1 } else { d };
            }
            let drop = if draw(3) == 0 { draw(rank) } else { 0 };
            let sd = &sd[drop..rank];
            let (ys, small) = (s(od), s(sd));
            // A run: the dimensions where `small` is not 1 are consecutive and equal `out`'s.
            let at = |d: usize| if d < drop { 1 } else { sd[d - drop] };
            let live = |d: usize| at(d) != 1;
            let first = (0..rank).find(|&d| live(d)).unwrap_or(rank);
            let end = (0..rank).rev().find(|&d| live(d)).map_or(rank, |d| d + 1);
            let want_run = (first..end).all(|d| at(d) == od[d]);
            assert_eq!(middle(&small, &ys).is_some(), want_run, "{od:?} {sd:?}");
            if want_run {
                runs += 1;
            } else {
                others += 1;
            }
            let n = ys.numel();
            let full: [f64; 256] = core::array::from_fn(|i| (i as f64 * 0.37).sin() * 3.0);
            let part: [f64; 256] = core::array::from_fn(|i| 1.5 + (i as f64).cos());
            let dy: [f64; 256] = core::array::from_fn(|i| (i as f64 * 0.91).cos());
            let (full, part, dy) = (&full[..n], &part[..small.numel()], &dy[..n]);
            for op in ops {
                for small_left in [false, true] {
                    let (a, sa, b, sb) = if small_left {
                        (part, &small, full, &ys)
                    } else {
                        (full, &ys, part, &small)
                    };
                    let (ta, tb) = (sa.broadcast_strides(&ys), sb.broadcast_strides(&ys));
                    let (mut y, mut want) = ([0.0; 256], [0.0; 256]);
                    forward(op, a, sa, b, sb, &mut y[..n], &ys);
                    walk(&ys, ta, tb, |o, ia, ib| want[o] = op.apply(a[ia], b[ib]));
                    assert!(bits(&y, &want), "{op:?} {od:?} {sd:?} {small_left}");
                    for side in [Side::Lhs, Side::Rhs] {
                        let len = if side == Side::Lhs { a.len() } else { b.len() };
                        let (mut dx, mut want) = ([0.25; 256], [0.25; 256]);
                        backward(op, side, a, sa, b, sb, dy, &ys, &mut dx[..len]);
                        walk(&ys, ta, tb, |o, ia, ib| {
                            let i = if side == Side::Lhs { ia } else { ib };
                            want[i] += dy[o] * op.partial(side, a[ia], b[ib]);
                        });
                        assert!(bits(&dx, &want), "{op:?} {side:?} {od:?} {sd:?}");
                    }
                }
            }
        }
        assert!(runs > 1000 && others > 200, "{runs} runs, {others} others");
    }

    #[test]
    fn broadcast_backward_sums_stretched_dims() {
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [10.0, 20.0, 30.0];
        let dy = [1.0; 6];
        let mut db = [0.0; 3];
        backward(
            BinaryOp::Mul,
            Side::Rhs,
            &a,
            &s(&[2, 3]),
            &b,
            &s(&[3]),
            &dy,
            &s(&[2, 3]),
            &mut db,
        );
        assert_eq!(db, [5.0, 7.0, 9.0]);
    }

    /// The full-size operand of a broadcast sum or difference takes `dx += +-g` element by
    /// element (its own path); the broadcast one still sums over the stretched dimension.
    #[test]
    fn broadcast_sum_and_difference_backward() {
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [10.0, 20.0, 30.0];
        let dy = [0.5, -1.0, 2.0, 0.25, -0.0, 3.0];
        let (sa, sb, ys) = (s(&[2, 3]), s(&[3]), s(&[2, 3]));
        let start = [1.0, -0.0, 0.0, 2.0, -0.0, 1.0];
        // `d + g * 1.0`, as the general path computes it: bits, -0.0 included.
        let mut want = start;
        for (w, g) in want.iter_mut().zip(&dy) {
            *w += g * 1.0;
        }
        for op in [BinaryOp::Add, BinaryOp::Sub] {
            let mut d = start;
            backward(op, Side::Lhs, &a, &sa, &b, &sb, &dy, &ys, &mut d);
            assert_eq!(d.map(f32::to_bits), want.map(f32::to_bits));
        }
        let mut db = [0.0; 3];
        backward(
            BinaryOp::Sub,
            Side::Rhs,
            &a,
            &sa,
            &b,
            &sb,
            &dy,
            &ys,
            &mut db,
        );
        assert_eq!(db, [-(0.5 + 0.25), -(-1.0 + -0.0), -(2.0 + 3.0)]);
        // The right operand full-size (the left one broadcast): `dx += g * +-1`.
        let mut minus = start;
        for (w, g) in minus.iter_mut().zip(&dy) {
            *w += g * -1.0;
        }
        for (op, want) in [(BinaryOp::Add, want), (BinaryOp::Sub, minus)] {
            let mut d = start;
            backward(op, Side::Rhs, &b, &sb, &a, &sa, &dy, &ys, &mut d);
            assert_eq!(d.map(f32::to_bits), want.map(f32::to_bits), "{op:?}");
        }
    }
}

mod tape_ops {
    use super::{BinaryOp, Side};
    use crate::backend::{Backend, View};
    use crate::error::Result;
    use crate::shape::Shape;
    use crate::tape::{Op, Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// Applies an elementwise binary op with broadcasting (see [`BinaryOp`]).
        ///
        /// # Errors
        /// [`crate::Error::ShapeMismatch`] when the shapes do not broadcast; and as
        /// [`Tape::unary`].
        pub fn binary(&mut self, op: BinaryOp, a: Var, b: Var) -> Result<Var> {
            let shape = Shape::broadcast(op.name(), a.shape, b.shape)?;
            self.record(Op::Binary(op), Self::bw_binary, &[a, b], shape, |be, y| {
                be.binary(op, a.view(), b.view(), y)
            })
        }

        /// `a + b`, broadcasting.
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Add, a, b)
        }

        /// `a - b`, broadcasting.
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Sub, a, b)
        }

        /// `a * b` elementwise, broadcasting.
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Mul, a, b)
        }

        /// `a / b` elementwise, broadcasting.
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Div, a, b)
        }

        /// `max(a, b)` elementwise with broadcasting: PyTorch's `torch.maximum` (NaN in either
        /// gives NaN; a tie splits the gradient in halves).
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn maximum(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Maximum, a, b)
        }

        /// `min(a, b)` elementwise with broadcasting: PyTorch's `torch.minimum`.
        ///
        /// # Errors
        /// As [`Tape::binary`].
        pub fn minimum(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Minimum, a, b)
        }

        pub(crate) fn binary_backward(
            &mut self,
            op: BinaryOp,
            a: u32,
            b: u32,
            dy: View,
        ) -> Result<()> {
            let (av, bv) = (self.node_view(a)?, self.node_view(b)?);
            if let Some((_, dx)) = self.input_grad(a)? {
                self.backend
                    .binary_backward(op, Side::Lhs, av, bv, dy, dx)?;
            }
            if let Some((_, dx)) = self.input_grad(b)? {
                self.backend
                    .binary_backward(op, Side::Rhs, av, bv, dy, dx)?;
            }
            Ok(())
        }
    }
}
