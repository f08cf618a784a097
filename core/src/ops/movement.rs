//! Movement ops: reshape, transpose, broadcast_to, slice, concat.
//!
//! All are one kernel: a strided copy that walks an index space of up to four dimensions and
//! copies `src[index . src_strides]` to `dst[index . dst_strides]`. Backward is the same copy with
//! the roles swapped, accumulating (a broadcast's backward sums over the stretched dimensions,
//! because the destination stride there is 0).

use crate::float::Float;
use crate::shape::{Shape, MAX_RANK};

/// One side of a strided copy: an arena offset and a stride per dimension of the index space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    /// Arena offset of index (0, 0, 0, 0).
    pub offset: usize,
    /// Stride of each dimension (0 repeats an element).
    pub strides: [usize; MAX_RANK],
}

impl Strided {
    /// A contiguous row-major layout of `shape` at `offset`.
    pub fn contiguous(offset: usize, shape: &Shape) -> Strided {
        Strided {
            offset,
            strides: shape.strides(),
        }
    }

    /// Elements from the first to one past the last element touched over `space`.
    pub fn span(&self, space: &Shape) -> usize {
        // Saturating: see `Gemm::spans`.
        self.strides
            .iter()
            .enumerate()
            .fold(1usize, |acc, (i, &s)| {
                acc.saturating_add(space.dim(i).saturating_sub(1).saturating_mul(s))
            })
    }
}

/// Reference kernel: copies (or with `accumulate`, adds) `src` into `dst` over index space
/// `space`. Slices start at the two layouts' offsets.
pub fn copy<T: Float>(
    space: &Shape,
    src: &[T],
    ss: [usize; MAX_RANK],
    dst: &mut [T],
    ds: [usize; MAX_RANK],
    accumulate: bool,
) {
    if !accumulate && ss == space.strides() && ds == ss {
        let n = space.numel();
        if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        return;
    }
    // Four plain nested loops over the right-aligned dimensions (the last innermost): a
    // generic row iterator's bookkeeping cost more than short rows' copies (on a Cortex-M4 it
    // spilled to the stack: half of a small CNN's step).
    let r = space.rank();
    let (mut n, mut sv, mut dv) = ([1usize; MAX_RANK], [0usize; MAX_RANK], [0usize; MAX_RANK]);
    for i in 0..r.min(MAX_RANK) {
        let k = MAX_RANK - r + i;
        if let (Some(n), Some(s), Some(d)) = (n.get_mut(k), sv.get_mut(k), dv.get_mut(k)) {
            *n = space.dim(i);
            *s = ss.get(i).copied().unwrap_or(0);
            *d = ds.get(i).copied().unwrap_or(0);
        }
    }
    let [n0, n1, n2, len] = n;
    let [s0, s1, s2, s_step] = sv;
    let [d0, d1, d2, d_step] = dv;
    for i0 in 0..n0 {
        for i1 in 0..n1 {
            // Wrapping, as below: out-of-range strides find no element (no panic).
            let (mut is, mut id) = (
                i0.wrapping_mul(s0).wrapping_add(i1.wrapping_mul(s1)),
                i0.wrapping_mul(d0).wrapping_add(i1.wrapping_mul(d1)),
            );
            for _ in 0..n2 {
                copy_row(src, is, s_step, dst, id, d_step, len, accumulate);
                // Wrapping: past the last row the sum is never used, and a length-1
                // dimension's stride may be anything.
                is = is.wrapping_add(s2);
                id = id.wrapping_add(d2);
            }
        }
    }
}

/// One row of [`copy`]: `len` elements from `src[is]` every `s_step` to `dst[id]` every
/// `d_step`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn copy_row<T: Float>(
    src: &[T],
    is: usize,
    s_step: usize,
    dst: &mut [T],
    id: usize,
    d_step: usize,
    len: usize,
    accumulate: bool,
) {
    match (s_step, d_step) {
        // Contiguous rows (bias broadcasts, slices, concat parts): slice operations.
        (1, 1) => {
            if let (Some(s), Some(d)) = (
                src.get(is..is.wrapping_add(len)),
                dst.get_mut(id..id.wrapping_add(len)),
            ) {
                if accumulate {
                    for (d, &v) in d.iter_mut().zip(s) {
                        *d += v;
                    }
                } else {
                    d.copy_from_slice(s);
                }
            }
        }
        // A row summed into one element (a broadcast's backward along the last axis).
        (1, 0) if accumulate => {
            if let (Some(s), Some(d)) = (src.get(is..is.wrapping_add(len)), dst.get_mut(id)) {
                *d += s.iter().fold(T::ZERO, |acc, &v| acc + v);
            }
        }
        _ => {
            let (mut a, mut b) = (is, id);
            for _ in 0..len {
                if let (Some(&v), Some(d)) = (src.get(a), dst.get_mut(b)) {
                    if accumulate {
                        *d += v;
                    } else {
                        *d = v;
                    }
                }
                a = a.wrapping_add(s_step);
                b = b.wrapping_add(d_step);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_by_strides() {
        // [[1,2,3],[4,5,6]]^T = [[1,4],[2,5],[3,6]]: walk the output [3,2] reading the source
        // with strides (1, 3).
        let space = Shape::new(&[3, 2]).unwrap();
        let mut y = [0.0f64; 6];
        copy(
            &space,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            [1, 3, 0, 0],
            &mut y,
            space.strides(),
            false,
        );
        assert_eq!(y, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}

mod tape_ops {
    use super::Strided;
    use crate::backend::{Backend, View};
    use crate::error::{Error, Result};
    use crate::shape::{Shape, MAX_RANK};
    use crate::tape::{Op, Tape, Var};

    /// How each movement op reads its (first) input: the index space (the output's shape, or
    /// for concat's parts the part's shape), the input's strides over it, and the output's
    /// layout. Backward is the same map with source and destination swapped.
    fn layout(
        op: Op,
        x: View,
        y: View,
        second: bool,
    ) -> Result<(Shape, [usize; MAX_RANK], Strided)> {
        let xs = x.shape.strides();
        match op {
            Op::Reshape => Ok((x.shape, xs, Strided::contiguous(y.offset, &x.shape))),
            Op::Transpose { d0, d1 } => {
                let mut s = xs;
                s.swap(d0 as usize, d1 as usize);
                Ok((y.shape, s, Strided::contiguous(y.offset, &y.shape)))
            }
            Op::BroadcastTo => Ok((
                y.shape,
                x.shape.broadcast_strides(&y.shape),
                Strided::contiguous(y.offset, &y.shape),
            )),
            Op::Slice { .. } => Ok((y.shape, xs, Strided::contiguous(y.offset, &y.shape))),
            Op::Concat { axis } => {
                // x is the part (a or b); the destination is a window of y.
                let ys = y.shape.strides();
                let shift = if second {
                    // The first part's extent along the axis: the output's minus this part's.
                    (y.shape.dim(axis as usize) - x.shape.dim(axis as usize))
                        * ys.get(axis as usize).copied().unwrap_or(0)
                } else {
                    0
                };
                Ok((
                    x.shape,
                    xs,
                    Strided {
                        offset: y.offset + shift,
                        strides: ys,
                    },
                ))
            }
            _ => Err(Error::InvalidArgument {
                what: "not a movement op",
            }),
        }
    }

    /// The source offset of a slice's (or another movement's) input.
    fn src_offset(op: Op, x: View) -> usize {
        match op {
            Op::Slice { axis, start } => {
                x.offset
                    + start as usize * x.shape.strides().get(axis as usize).copied().unwrap_or(0)
            }
            _ => x.offset,
        }
    }

    impl<B: Backend, const N: usize> Tape<B, N> {
        fn movement(&mut self, op: Op, x: Var, second: Option<Var>, shape: Shape) -> Result<Var> {
            let inputs = [x, second.unwrap_or(x)];
            let n = if second.is_some() { 2 } else { 1 };
            self.record(
                op,
                Self::bw_movement,
                inputs.get(..n).unwrap_or(&[]),
                shape,
                |b, y| {
                    for (i, part) in inputs.iter().take(n).enumerate() {
                        let (space, ss, dst) = layout(op, part.view(), y, i == 1)?;
                        let src = Strided {
                            offset: src_offset(op, part.view()),
                            strides: ss,
                        };
                        b.copy_strided(&space, src, dst, false)?;
                    }
                    Ok(())
                },
            )
        }

        /// The same elements in a new shape (PyTorch's `reshape`; always a copy here).
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] when the element counts differ; and as [`Tape::unary`].
        pub fn reshape(&mut self, x: Var, dims: &[usize]) -> Result<Var> {
            let shape = Shape::new(dims)?;
            if shape.numel() != x.numel() {
                return Err(Error::ShapeMismatch {
                    op: "reshape",
                    lhs: x.shape,
                    rhs: shape,
                });
            }
            self.movement(Op::Reshape, x, None, shape)
        }

        /// Swaps dimensions `d0` and `d1` (a copy).
        ///
        /// # Errors
        /// [`Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn transpose(&mut self, x: Var, d0: usize, d1: usize) -> Result<Var> {
            x.shape.check_axis("transpose", d0)?;
            x.shape.check_axis("transpose", d1)?;
            let shape = x
                .shape
                .with_dim(d0, x.shape.dim(d1))?
                .with_dim(d1, x.shape.dim(d0))?;
            self.movement(
                Op::Transpose {
                    d0: d0 as u8,
                    d1: d1 as u8,
                },
                x,
                None,
                shape,
            )
        }

        /// Stretches `x` to shape `dims` under PyTorch's broadcasting rule (`expand`, as a copy).
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] when `x` does not broadcast to `dims`; and as [`Tape::unary`].
        pub fn broadcast_to(&mut self, x: Var, dims: &[usize]) -> Result<Var> {
            let shape = Shape::new(dims)?;
            if Shape::broadcast("broadcast_to", x.shape, shape)? != shape {
                return Err(Error::ShapeMismatch {
                    op: "broadcast_to",
                    lhs: x.shape,
                    rhs: shape,
                });
            }
            self.movement(Op::BroadcastTo, x, None, shape)
        }

        /// Elements `start .. start + len` along `axis` (`x.narrow(axis, start, len)`).
        ///
        /// # Errors
        /// [`Error::AxisOutOfRange`], [`Error::IndexOutOfRange`] (also for `len == 0`); and as
        /// [`Tape::unary`].
        pub fn slice(&mut self, x: Var, axis: usize, start: usize, len: usize) -> Result<Var> {
            x.shape.check_axis("slice", axis)?;
            let d = x.shape.dim(axis);
            if len == 0 || start >= d || len > d - start {
                return Err(Error::IndexOutOfRange {
                    op: "slice",
                    index: start.saturating_add(len),
                    bound: d + 1,
                });
            }
            self.movement(
                Op::Slice {
                    axis: axis as u8,
                    start: start as u32,
                },
                x,
                None,
                x.shape.with_dim(axis, len)?,
            )
        }

        /// `a` and `b` joined along `axis` (`torch.cat([a, b], axis)`); other dimensions must
        /// be equal.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`], [`Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn concat(&mut self, a: Var, b: Var, axis: usize) -> Result<Var> {
            a.shape.check_axis("concat", axis)?;
            let fits = a.shape.rank() == b.shape.rank()
                && (0..a.shape.rank()).all(|i| i == axis || a.shape.dim(i) == b.shape.dim(i));
            if !fits {
                return Err(Error::ShapeMismatch {
                    op: "concat",
                    lhs: a.shape,
                    rhs: b.shape,
                });
            }
            let len = a.shape.dim(axis).saturating_add(b.shape.dim(axis));
            let shape = a.shape.with_dim(axis, len)?;
            self.movement(Op::Concat { axis: axis as u8 }, a, Some(b), shape)
        }

        pub(crate) fn movement_backward(&mut self, op: Op, a: u32, b: u32, dy: View) -> Result<()> {
            let parts = [a, b];
            let n = if matches!(op, Op::Concat { .. }) {
                2
            } else {
                1
            };
            for (i, &id) in parts.iter().take(n).enumerate() {
                if let Some((x, dx)) = self.input_grad(id)? {
                    let (space, ss, ylayout) = layout(op, x, dy, i == 1)?;
                    let dst = Strided {
                        offset: src_offset(
                            op,
                            View {
                                offset: dx,
                                shape: x.shape,
                            },
                        ),
                        strides: ss,
                    };
                    self.backend.copy_strided(&space, ylayout, dst, true)?;
                }
            }
            Ok(())
        }
    }
}
