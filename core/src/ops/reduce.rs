//! Reductions over one axis or over all elements: sum, mean, max, min; composed of them,
//! `logsumexp`, `var` and `std` (with a correction), `normalize` and `cosine_similarity`.
//!
//! A reduction sees its input as `(outer, n, inner)`: `n` elements along the reduced axis, `outer`
//! blocks before it and `inner` elements after (all elements: `(1, numel, 1)`).
//!
//! | op | y | dx |
//! | --- | --- | --- |
//! | `Sum` | sum_j x_j | dy |
//! | `Mean` | sum_j x_j / n | dy / n |
//! | `Max` | max_j x_j | dy at the first maximal position, 0 elsewhere (PyTorch's `amax` splits ties evenly; `max(dim)` picks one: mote picks the first) |
//! | `Min` | min_j x_j | dy at the first minimal position, 0 elsewhere (as `Max`) |
//!
//! `Max` and `Min` propagate NaN, as PyTorch's.

use crate::float::Float;

/// A reduction op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl ReduceOp {
    /// Every op: for tests and tools that go over all of them.
    pub const EVERY: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    /// The op's code: its place in [`ReduceOp::EVERY`], as replay lists and the CUDA kernels
    /// (`cuda/kernels/reduce.cu`) store it.
    pub fn code(self) -> u8 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        }
    }

    /// The op of a [`ReduceOp::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<ReduceOp> {
        ReduceOp::EVERY.get(usize::from(code)).copied()
    }

    /// Whether the op picks one element (`Max`, `Min`) rather than summing.
    pub fn picks(self) -> bool {
        matches!(self, ReduceOp::Max | ReduceOp::Min)
    }

    /// The op's name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

/// The `(outer, n, inner)` view of a reduction or a softmax (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis3 {
    /// Blocks before the axis.
    pub outer: usize,
    /// Length of the axis.
    pub n: usize,
    /// Elements after the axis.
    pub inner: usize,
}

impl Axis3 {
    /// Whether a kernel has anything to do: every extent non-zero and `n * inner` (a block)
    /// representable. Kernels do nothing for a degenerate view instead of panicking.
    pub fn is_degenerate(&self) -> bool {
        self.n == 0 || self.inner == 0 || self.n.checked_mul(self.inner).is_none()
    }

    /// Elements of the input, `outer * n * inner` (saturating: an impossible size fails the
    /// backend's range check instead of overflowing).
    pub fn input_len(&self) -> usize {
        self.outer.saturating_mul(self.n).saturating_mul(self.inner)
    }

    /// Elements of a reduction's output, `outer * inner` (saturating).
    pub fn output_len(&self) -> usize {
        self.outer.saturating_mul(self.inner)
    }
}

/// Reference forward kernel: `x` has `outer * n * inner` elements, `y` has `outer * inner`.
pub fn forward<T: Float>(op: ReduceOp, r: Axis3, x: &[T], y: &mut [T]) {
    let Axis3 { n, inner, .. } = r;
    if r.is_degenerate() {
        return;
    }
    for (yb, xb) in y.chunks_exact_mut(inner).zip(x.chunks_exact(n * inner)) {
        match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                yb.fill(T::ZERO);
                for row in xb.chunks_exact(inner) {
                    for (y, &x) in yb.iter_mut().zip(row) {
                        *y += x;
                    }
                }
                if op == ReduceOp::Mean {
                    let inv = T::ONE / T::from_usize(n);
                    for y in yb.iter_mut() {
                        *y *= inv;
                    }
                }
            }
            ReduceOp::Max | ReduceOp::Min => {
                let max = op == ReduceOp::Max;
                yb.copy_from_slice(xb.get(..inner).unwrap_or(&[]));
                for row in xb.chunks_exact(inner).skip(1) {
                    for (y, &x) in yb.iter_mut().zip(row) {
                        // NOTE: NaN propagates (as in PyTorch): once y is NaN it stays NaN.
                        let better = if max { x > *y } else { x < *y };
                        if better || x.is_nan() {
                            *y = x;
                        }
                    }
                }
            }
        }
    }
}

/// Reference backward kernel: accumulates into `dx` (shaped like `x`).
pub fn backward<T: Float>(op: ReduceOp, r: Axis3, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    let Axis3 { n, inner, .. } = r;
    let scale = if op == ReduceOp::Mean {
        T::ONE / T::from_usize(n)
    } else {
        T::ONE
    };
    if r.is_degenerate() {
        return;
    }
    let blocks = dx
        .chunks_exact_mut(n * inner)
        .zip(x.chunks_exact(n * inner));
    for ((dxb, xb), (yb, dyb)) in blocks.zip(y.chunks_exact(inner).zip(dy.chunks_exact(inner))) {
        match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                for row in dxb.chunks_exact_mut(inner) {
                    for (d, &g) in row.iter_mut().zip(dyb) {
                        *d += g * scale;
                    }
                }
            }
            ReduceOp::Max | ReduceOp::Min => {
                for (i, (&ym, &g)) in yb.iter().zip(dyb).enumerate() {
                    // The first position along the axis that holds the maximum (minimum).
                    let hit = (0..n).find(|&j| {
                        xb.get(j * inner + i)
                            .is_some_and(|&v| v == ym || (v.is_nan() && ym.is_nan()))
                    });
                    if let Some(d) = hit.and_then(|j| dxb.get_mut(j * inner + i)) {
                        *d += g;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PyTorch's `F.normalize([[3, 4], [0, 0]], dim=1)` is [[0.6, 0.8], [0, 0]] (the zero row
    // divided by eps), with a finite gradient for the zero row; `F.cosine_similarity` of
    // [[3, 4], [1, 0]] and [[4, 3], [0, 2]] along dim 1 is [24 / 25, 0].
    #[test]
    fn normalize_and_cosine_by_hand() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 256];
        let mut t = Tape::<Cpu<f64>, 32>::new(&mut mem);
        let x = t.param(&[2, 2], &[3.0, 4.0, 0.0, 0.0]).unwrap();
        let y = t.normalize(x, 1, 1e-12).unwrap();
        assert_eq!(t.data(y).unwrap(), &[0.6, 0.8, 0.0, 0.0]);
        let s = t.sum(y).unwrap();
        t.backward(s).unwrap();
        let mut g = [1.0; 4];
        t.read_grad(x, &mut g).unwrap();
        assert!(g[2..].iter().all(|v| v.is_finite()), "{g:?}");
        let a = t.input(&[2, 2], &[3.0, 4.0, 1.0, 0.0]).unwrap();
        let b = t.input(&[2, 2], &[4.0, 3.0, 0.0, 2.0]).unwrap();
        let c = t.cosine_similarity(a, b, 1, 1e-8).unwrap();
        let got = t.data(c).unwrap();
        assert!((got[0] - 0.96).abs() < 1e-15 && got[1] == 0.0, "{got:?}");
        assert!(t.normalize(x, 1, 0.0).is_err() && t.normalize(x, 2, 1e-12).is_err());
    }

    // torch.logsumexp([[1, 2, 3], [1000, 1000, 0]], dim=1) = [3.4076059644443806,
    // 1000.6931471805599], its gradient the softmax of each row; torch.var of
    // [[1, 2, 4], [3, 3, 3]] over dim 1 is [7/3, 0] (correction 1) and [14/9, 0]
    // (correction 0); over everything (correction 1) 1.0666666666666667.
    #[test]
    fn logsumexp_var_and_std_by_hand() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 1024];
        let mut t = Tape::<Cpu<f64>, 128>::new(&mut mem);
        let x = t
            .param(&[2, 3], &[1.0, 2.0, 3.0, 1000.0, 1000.0, 0.0])
            .unwrap();
        let before = t.nodes_used();
        let l = t.logsumexp(x, 1).unwrap();
        assert_eq!(t.nodes_used() - before, 7, "logsumexp's nodes");
        let got = t.data(l).unwrap();
        assert!((got[0] - 3.407_605_964_444_380_6).abs() < 1e-14, "{got:?}");
        assert!((got[1] - 1_000.693_147_180_559_9).abs() < 1e-12, "{got:?}");
        let s = t.sum(l).unwrap();
        t.backward(s).unwrap();
        let mut g = [0.0; 6];
        t.read_grad(x, &mut g).unwrap();
        let e: f64 = 1.0 + 1f64.exp() + 2f64.exp();
        let want = [1.0 / e, 1f64.exp() / e, 2f64.exp() / e, 0.5, 0.5, 0.0];
        for (g, w) in g.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        // Infinities as PyTorch's: a row of minus infinities gives minus infinity, a row
        // holding plus infinity plus infinity.
        let inf = f64::INFINITY;
        let z = t.input(&[2, 2], &[-inf, -inf, 1.0, inf]).unwrap();
        let lz = t.logsumexp(z, 1).unwrap();
        assert_eq!(t.data(lz).unwrap(), &[-inf, inf]);
        let y = t.input(&[2, 3], &[1.0, 2.0, 4.0, 3.0, 3.0, 3.0]).unwrap();
        let close = |got: &[f64], want: &[f64]| {
            let ok = got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-15);
            assert!(ok && got.len() == want.len(), "{got:?} vs {want:?}");
        };
        let before = t.nodes_used();
        let v1 = t.var_axis(y, 1, 1).unwrap();
        assert_eq!(t.nodes_used() - before, 7, "var_axis's nodes");
        close(t.data(v1).unwrap(), &[7.0 / 3.0, 0.0]);
        let v0 = t.var_axis(y, 1, 0).unwrap();
        close(t.data(v0).unwrap(), &[14.0 / 9.0, 0.0]);
        let before = t.nodes_used();
        let all = t.var(y, 1).unwrap();
        assert_eq!(t.nodes_used() - before, 8, "var's nodes");
        close(t.data(all).unwrap(), &[1.066_666_666_666_666_7]);
        let sd = t.std_axis(y, 1, 1).unwrap();
        close(t.data(sd).unwrap(), &[(7.0f64 / 3.0).sqrt(), 0.0]);
        let sd = t.std(y, 0).unwrap();
        let v = t.var(y, 0).unwrap();
        assert_eq!(t.item(sd).unwrap(), t.item(v).unwrap().sqrt());
        // Not more elements than the correction, or no such axis: refused, nothing recorded.
        let used = t.nodes_used();
        assert!(t.var_axis(y, 1, 3).is_err() && t.std(y, 6).is_err());
        assert!(t.logsumexp(y, 2).is_err() && t.var_axis(y, 2, 0).is_err());
        assert_eq!(t.nodes_used(), used);
    }

    #[test]
    fn codes_are_places_in_every() {
        for (i, op) in ReduceOp::EVERY.into_iter().enumerate() {
            assert_eq!(usize::from(op.code()), i);
            assert_eq!(ReduceOp::from_code(op.code()), Some(op));
        }
        assert_eq!(ReduceOp::from_code(4), None);
    }

    // By hand, x = [[1, 5, 2], [7, 3, 7]] (2x3).
    #[test]
    fn values_over_each_axis() {
        let x = [1.0f64, 5.0, 2.0, 7.0, 3.0, 7.0];
        let mut y = [0.0; 3];
        forward(
            ReduceOp::Sum,
            Axis3 {
                outer: 1,
                n: 2,
                inner: 3,
            },
            &x,
            &mut y,
        );
        assert_eq!(y, [8.0, 8.0, 9.0]);
        let mut y = [0.0; 2];
        forward(
            ReduceOp::Mean,
            Axis3 {
                outer: 2,
                n: 3,
                inner: 1,
            },
            &x,
            &mut y,
        );
        assert!((y[0] - 8.0 / 3.0).abs() < 1e-12 && (y[1] - 17.0 / 3.0).abs() < 1e-12);
        forward(
            ReduceOp::Max,
            Axis3 {
                outer: 2,
                n: 3,
                inner: 1,
            },
            &x,
            &mut y,
        );
        assert_eq!(y, [5.0, 7.0]);
        let rows = Axis3 {
            outer: 2,
            n: 3,
            inner: 1,
        };
        forward(ReduceOp::Min, rows, &x, &mut y);
        assert_eq!(y, [1.0, 3.0]);
        // the gradient goes to the first minimum; NaN propagates
        let mut dx = [0.0; 6];
        backward(
            ReduceOp::Min,
            rows,
            &[2.0, 1.0, 1.0, 4.0, 3.0, 9.0],
            &[1.0, 3.0],
            &[10.0, 20.0],
            &mut dx,
        );
        assert_eq!(dx, [0.0, 10.0, 0.0, 0.0, 20.0, 0.0]);
        forward(
            ReduceOp::Min,
            rows,
            &[1.0, f64::NAN, 0.0, 2.0, 3.0, 4.0],
            &mut y,
        );
        assert!(y[0].is_nan() && y[1] == 2.0);
        forward(ReduceOp::Max, rows, &x, &mut y);
        // Ties: the gradient goes to the first maximum only.
        let mut dx = [0.0; 6];
        backward(
            ReduceOp::Max,
            Axis3 {
                outer: 2,
                n: 3,
                inner: 1,
            },
            &x,
            &y,
            &[1.0, 1.0],
            &mut dx,
        );
        assert_eq!(dx, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    }
}

mod tape_ops {
    use super::{Axis3, ReduceOp};
    use crate::backend::{Backend, View};
    use crate::error::{Error, Result};
    use crate::shape::Shape;
    use crate::tape::{Op, Tape, Var};

    /// `x`'s dims with `axis` set to 1 (PyTorch's `keepdim=True` shape), and the rank.
    fn kept(x: Shape, axis: usize) -> ([usize; 4], usize) {
        let mut dims = [1usize; 4];
        for (o, &v) in dims.iter_mut().zip(x.dims()) {
            *o = v as usize;
        }
        if let Some(d) = dims.get_mut(axis) {
            *d = 1;
        }
        (dims, x.rank())
    }

    /// `(outer, n, inner)` and the output shape of a reduction over `axis` (`None`: all).
    pub(crate) fn plan(op: &'static str, x: Shape, axis: Option<usize>) -> Result<(Axis3, Shape)> {
        match axis {
            None => Ok((
                Axis3 {
                    outer: 1,
                    n: x.numel(),
                    inner: 1,
                },
                Shape::SCALAR,
            )),
            Some(ax) => {
                x.check_axis(op, ax)?;
                let (outer, n, inner) = x.split_at_axis(ax);
                Ok((Axis3 { outer, n, inner }, x.without(ax)))
            }
        }
    }

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// A reduction over `axis` (removed from the shape, as PyTorch's `keepdim=False`) or,
        /// with `None`, over all elements (a scalar).
        ///
        /// # Errors
        /// [`crate::Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn reduce(&mut self, op: ReduceOp, x: Var, axis: Option<usize>) -> Result<Var> {
            let (r, shape) = plan(op.name(), x.shape, axis)?;
            let axis = axis.map_or(u8::MAX, |a| a as u8);
            self.record(
                Op::Reduce { op, axis },
                Self::bw_reduce,
                &[x],
                shape,
                |b, y| b.reduce(op, r, x.offset as usize, y.offset),
            )
        }

        /// The sum of all elements.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn sum(&mut self, x: Var) -> Result<Var> {
            self.reduce(ReduceOp::Sum, x, None)
        }

        /// The sum over `axis`.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn sum_axis(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.reduce(ReduceOp::Sum, x, Some(axis))
        }

        /// `x` divided by its Euclidean norm along `axis`, the norm at least `eps` (PyTorch's
        /// `F.normalize(x, p=2, dim=axis, eps=eps)`; PyTorch's default `eps` is 1e-12).
        /// Composed of six nodes, all or nothing: the sum of squares along `axis`, raised to
        /// `eps^2` (so that a zero vector's gradient is finite, `1 / eps` times the upstream
        /// one as PyTorch's, not NaN),
        /// its square root, and the division, broadcast along `axis`.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `eps` is positive, finite and its square above
        /// zero in `f32`; [`Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn normalize(&mut self, x: Var, axis: usize, eps: f32) -> Result<Var> {
            if !(eps > 0.0 && eps.is_finite() && eps * eps > 0.0) {
                return Err(Error::InvalidArgument {
                    what: "normalize: eps must be positive and finite, and its square above 0",
                });
            }
            x.shape.check_axis("normalize", axis)?;
            let (dims, rank) = kept(x.shape, axis);
            self.all_or_nothing(|t| {
                let sq = t.square(x)?;
                let ss = t.sum_axis(sq, axis)?;
                let ss = t.clamp_min(ss, eps * eps)?;
                let norm = t.sqrt(ss)?;
                let norm = t.reshape(norm, dims.get(..rank).unwrap_or(&[]))?;
                t.div(x, norm)
            })
        }

        /// Cosine similarity along `axis` (PyTorch's `F.cosine_similarity(a, b, dim=axis,
        /// eps=eps)`, default `eps` 1e-8): `sum(a * b) / (max(|a|, eps) max(|b|, eps))`, the
        /// operands broadcast together first; `axis` is removed. Composed as
        /// [`Tape::normalize`] of each, their product and its sum along `axis`, all or nothing.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] when the shapes do not broadcast; as [`Tape::normalize`].
        pub fn cosine_similarity(&mut self, a: Var, b: Var, axis: usize, eps: f32) -> Result<Var> {
            let shape = Shape::broadcast("cosine_similarity", a.shape, b.shape)?;
            shape.check_axis("cosine_similarity", axis)?;
            let dims: [usize; 4] =
                core::array::from_fn(|i| shape.dims().get(i).map_or(1, |&d| d as usize));
            let full = dims.get(..shape.rank()).unwrap_or(&[]);
            self.all_or_nothing(|t| {
                let a = if a.shape == shape {
                    a
                } else {
                    t.broadcast_to(a, full)?
                };
                let b = if b.shape == shape {
                    b
                } else {
                    t.broadcast_to(b, full)?
                };
                let na = t.normalize(a, axis, eps)?;
                let nb = t.normalize(b, axis, eps)?;
                let p = t.mul(na, nb)?;
                t.sum_axis(p, axis)
            })
        }

        /// The log of the sum of the exponentials over `axis`, computed stably (PyTorch's
        /// `torch.logsumexp(x, dim=axis)`): `m + log(sum(exp(x - m)))` with `m` the maximum
        /// over `axis` taken without a gradient, so that the gradient is the softmax over
        /// `axis`. Seven nodes, all or nothing; `axis` is removed. The shift `m` is held within
        /// `f32`'s finite range, so that a slice of minus infinities gives minus infinity and
        /// one holding plus infinity gives plus infinity (as PyTorch's).
        ///
        /// # Errors
        /// [`Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn logsumexp(&mut self, x: Var, axis: usize) -> Result<Var> {
            x.shape.check_axis("logsumexp", axis)?;
            let (dims, rank) = kept(x.shape, axis);
            self.all_or_nothing(|t| {
                let m = t.no_grad(|t| {
                    let m = t.max_axis(x, axis)?;
                    t.clamp(m, f32::MIN, f32::MAX)
                })?;
                let m = t.registered(m)?;
                let mk = t.reshape(m, dims.get(..rank).unwrap_or(&[]))?;
                let d = t.sub(x, mk)?;
                let e = t.exp(d)?;
                let s = t.sum_axis(e, axis)?;
                let l = t.log(s)?;
                t.add(l, m)
            })
        }

        /// The variance over `axis` with `correction` (PyTorch's `torch.var(x, dim=axis,
        /// correction=c)`: 1 is Bessel's, the default there; 0 the population variance): the
        /// sum of squared deviations from the mean over `axis`, divided by `n - correction`.
        /// Composed of seven nodes, all or nothing; `axis` is removed.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `axis` holds more than `correction` elements
        /// (PyTorch returns infinity or NaN there); [`Error::AxisOutOfRange`]; and as
        /// [`Tape::unary`].
        pub fn var_axis(&mut self, x: Var, axis: usize, correction: usize) -> Result<Var> {
            x.shape.check_axis("var", axis)?;
            let n = x.shape.dim(axis);
            if n <= correction {
                return Err(Error::InvalidArgument {
                    what: "var and std: the axis needs more elements than the correction",
                });
            }
            let (dims, rank) = kept(x.shape, axis);
            self.all_or_nothing(|t| {
                let m = t.mean_axis(x, axis)?;
                let m = t.reshape(m, dims.get(..rank).unwrap_or(&[]))?;
                let d = t.sub(x, m)?;
                let sq = t.square(d)?;
                let s = t.sum_axis(sq, axis)?;
                // Divided by a constant of the element type: exact in f64 as in f32.
                let dof = t.full(&[], crate::Float::from_f64((n - correction) as f64))?;
                t.div(s, dof)
            })
        }

        /// The variance of all elements with `correction` (see [`Tape::var_axis`]), a scalar
        /// (eight nodes).
        ///
        /// # Errors
        /// As [`Tape::var_axis`].
        pub fn var(&mut self, x: Var, correction: usize) -> Result<Var> {
            self.all_or_nothing(|t| {
                let flat = t.reshape(x, &[x.numel()])?;
                t.var_axis(flat, 0, correction)
            })
        }

        /// The standard deviation over `axis` (the square root of [`Tape::var_axis`];
        /// PyTorch's `torch.std(x, dim=axis, correction=c)`). Its gradient is infinite, and
        /// so NaN, where every element of a slice is equal (as PyTorch's).
        ///
        /// # Errors
        /// As [`Tape::var_axis`].
        pub fn std_axis(&mut self, x: Var, axis: usize, correction: usize) -> Result<Var> {
            self.all_or_nothing(|t| {
                let v = t.var_axis(x, axis, correction)?;
                t.sqrt(v)
            })
        }

        /// The standard deviation of all elements (see [`Tape::std_axis`]), a scalar.
        ///
        /// # Errors
        /// As [`Tape::var_axis`].
        pub fn std(&mut self, x: Var, correction: usize) -> Result<Var> {
            self.all_or_nothing(|t| {
                let v = t.var(x, correction)?;
                t.sqrt(v)
            })
        }

        /// The mean of all elements.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn mean(&mut self, x: Var) -> Result<Var> {
            self.reduce(ReduceOp::Mean, x, None)
        }

        /// The mean over `axis`.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn mean_axis(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.reduce(ReduceOp::Mean, x, Some(axis))
        }

        /// The largest element. Its gradient goes to the first largest element only, where
        /// PyTorch's `torch.max(x)` (over every element) splits it evenly between ties: where
        /// ties matter, `maximum` of two tensors splits them.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn max(&mut self, x: Var) -> Result<Var> {
            self.reduce(ReduceOp::Max, x, None)
        }

        /// The maximum over `axis`.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn max_axis(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.reduce(ReduceOp::Max, x, Some(axis))
        }

        /// The smallest element (its gradient to the first smallest element only, as
        /// [`Tape::max`]).
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn min(&mut self, x: Var) -> Result<Var> {
            self.reduce(ReduceOp::Min, x, None)
        }

        /// The minimum over `axis`.
        ///
        /// # Errors
        /// As [`Tape::reduce`].
        pub fn min_axis(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.reduce(ReduceOp::Min, x, Some(axis))
        }

        pub(crate) fn reduce_backward(
            &mut self,
            op: ReduceOp,
            axis: u8,
            a: u32,
            y: View,
            dy: View,
        ) -> Result<()> {
            if let Some((x, dx)) = self.input_grad(a)? {
                let axis = (axis != u8::MAX).then_some(axis as usize);
                let (r, _) = plan(op.name(), x.shape, axis)?;
                self.backend
                    .reduce_backward(op, r, x.offset, y.offset, dy.offset, dx)?;
            }
            Ok(())
        }
    }
}
