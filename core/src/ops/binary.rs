//! Elementwise binary ops with PyTorch broadcasting: `y = a (op) b`.
//!
//! | op | y | dy/da | dy/db |
//! | --- | --- | --- | --- |
//! | `Add` | a + b | 1 | 1 |
//! | `Sub` | a - b | 1 | -1 |
//! | `Mul` | a b | b | a |
//! | `Div` | a / b | 1 / b | -a / b^2 |
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
    /// The op's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    #[inline]
    fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
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
        }
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

/// If `small` broadcast to `out` is a plain repetition of a contiguous block (a trailing
/// suffix of `out`'s dimensions, like a bias row or a scalar), returns the block length.
fn repeats(small: &Shape, out: &Shape) -> Option<usize> {
    let n = small.numel();
    if n == 1 {
        return Some(1);
    }
    // Trailing dims of `small` (after dropping leading 1s) must equal out's trailing dims.
    let dims = small.dims();
    let first = dims.iter().position(|&d| d != 1)?;
    let tail = dims.get(first..)?;
    let od = out.dims();
    if tail.len() > od.len() {
        return None;
    }
    let otail = od.get(od.len() - tail.len()..)?;
    (tail == otail).then_some(n)
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
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = op.apply(a, b);
        }
    } else if an == yn && repeats(sb, ys).is_some() {
        for (yc, ac) in y.chunks_exact_mut(bn).zip(a.chunks_exact(bn)) {
            for ((y, &a), &b) in yc.iter_mut().zip(ac).zip(b) {
                *y = op.apply(a, b);
            }
        }
    } else if bn == yn && repeats(sa, ys).is_some() {
        for (yc, bc) in y.chunks_exact_mut(an).zip(b.chunks_exact(an)) {
            for ((y, &b), &a) in yc.iter_mut().zip(bc).zip(a) {
                *y = op.apply(a, b);
            }
        }
    } else {
        let (ta, tb) = (sa.broadcast_strides(ys), sb.broadcast_strides(ys));
        walk(ys, ta, tb, |o, ia, ib| {
            if let (Some(y), Some(&a), Some(&b)) = (y.get_mut(o), a.get(ia), b.get(ib)) {
                *y = op.apply(a, b);
            }
        });
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
            _ => {
                for (((dx, &g), &a), &b) in dx.iter_mut().zip(dy).zip(a).zip(b) {
                    *dx += g * op.partial(side, a, b);
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
    walk(ys, ta, tb, |o, ia, ib| {
        if let (Some(&g), Some(&av), Some(&bv)) = (dy.get(o), a.get(ia), b.get(ib)) {
            let slot = match side {
                Side::Lhs => dx.get_mut(ia),
                Side::Rhs => dx.get_mut(ib),
            };
            if let Some(d) = slot {
                *d += g * op.partial(side, av, bv);
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
