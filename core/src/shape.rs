//! Shapes of rank 0 to 4, and PyTorch's broadcasting rule.

use core::fmt;

use crate::error::{Error, Result};

/// The largest rank a tensor can have.
pub const MAX_RANK: usize = 4;

/// A tensor shape: rank 0 (a scalar) to 4, every dimension at least 1.
///
/// Dimensions are stored as `u32` so that a shape is 20 bytes and a tape node stays small on a
/// microcontroller.
#[derive(Clone, Copy, Eq)]
pub struct Shape {
    dims: [u32; MAX_RANK],
    rank: u8,
}

// Field by field: the derived comparison of the array calls `memcmp`, which dominates the
// tape's handle checks on a microcontroller.
impl PartialEq for Shape {
    #[inline]
    fn eq(&self, other: &Shape) -> bool {
        let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (self.dims, other.dims);
        self.rank == other.rank && a0 == b0 && a1 == b1 && a2 == b2 && a3 == b3
    }
}

impl core::hash::Hash for Shape {
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        self.rank.hash(h);
        self.dims.hash(h);
    }
}

impl Shape {
    /// The shape of a scalar (rank 0, one element).
    pub const SCALAR: Shape = Shape {
        dims: [1; MAX_RANK],
        rank: 0,
    };

    /// A shape from dimensions that came from a valid shape (a replay list): no checks. An
    /// invalid result is still memory-safe: every kernel checks its ranges.
    pub(crate) fn from_parts(dims: [u32; MAX_RANK], rank: u8) -> Shape {
        Shape { dims, rank }
    }

    /// A shape from its dimensions.
    ///
    /// # Errors
    /// [`Error::BadDims`] when there are more than four dimensions, a dimension is zero, or the
    /// element count overflows `u32`.
    #[inline]
    pub fn new(dims: &[usize]) -> Result<Shape> {
        let rank = dims.len();
        if rank > MAX_RANK {
            return Err(Error::BadDims { rank });
        }
        let mut out = [1u32; MAX_RANK];
        let mut numel: u64 = 1;
        for (o, &d) in out.iter_mut().zip(dims) {
            if d == 0 || d > u32::MAX as usize {
                return Err(Error::BadDims { rank });
            }
            numel = numel.saturating_mul(d as u64);
            *o = d as u32;
        }
        if numel > u32::MAX as u64 {
            return Err(Error::BadDims { rank });
        }
        Ok(Shape {
            dims: out,
            rank: rank as u8,
        })
    }

    /// The number of dimensions.
    pub const fn rank(&self) -> usize {
        self.rank as usize
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[u32] {
        self.dims.get(..self.rank as usize).unwrap_or(&[])
    }

    /// Dimension `axis`, or 1 when `axis >= rank`.
    pub fn dim(&self, axis: usize) -> usize {
        if axis < self.rank() {
            self.dims.get(axis).copied().unwrap_or(1) as usize
        } else {
            1
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.dims().iter().map(|&d| d as usize).product()
    }

    /// Row-major (C order) strides, padded with 1 past the rank.
    pub fn strides(&self) -> [usize; MAX_RANK] {
        let mut s = [1usize; MAX_RANK];
        let mut acc = 1usize;
        for i in (0..self.rank()).rev() {
            if let Some(slot) = s.get_mut(i) {
                *slot = acc;
            }
            acc *= self.dim(i);
        }
        s
    }

    /// The shape with dimension `axis` set to `d`, checked like [`Shape::new`].
    pub(crate) fn with_dim(self, axis: usize, d: usize) -> Result<Shape> {
        let mut dims = [0usize; MAX_RANK];
        for (o, &v) in dims.iter_mut().zip(self.dims()) {
            *o = v as usize;
        }
        if let Some(slot) = dims.get_mut(axis) {
            *slot = d;
        }
        Shape::new(dims.get(..self.rank()).unwrap_or(&[]))
    }

    /// The shape with dimension `axis` removed.
    pub(crate) fn without(self, axis: usize) -> Shape {
        let mut out = Shape::SCALAR;
        let mut r = 0;
        for (i, &d) in self.dims().iter().enumerate() {
            if i != axis {
                if let Some(slot) = out.dims.get_mut(r) {
                    *slot = d;
                }
                r += 1;
            }
        }
        out.rank = r as u8;
        out
    }

    /// `(outer, n, inner)`: the element counts before, along and after `axis`.
    pub(crate) fn split_at_axis(&self, axis: usize) -> (usize, usize, usize) {
        let outer: usize = self.dims().iter().take(axis).map(|&d| d as usize).product();
        let inner: usize = self
            .dims()
            .iter()
            .skip(axis + 1)
            .map(|&d| d as usize)
            .product();
        (outer, self.dim(axis), inner)
    }

    /// Checks that `axis < rank`.
    pub(crate) fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis < self.rank() {
            Ok(())
        } else {
            Err(Error::AxisOutOfRange {
                op,
                axis,
                rank: self.rank(),
            })
        }
    }

    /// The broadcast of two shapes under PyTorch's rule: align trailing dimensions; each pair
    /// must be equal or contain a 1.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not broadcast, or when the broadcast would
    /// hold more elements than a shape can (`u32::MAX`, as [`Shape::new`]).
    pub fn broadcast(op: &'static str, a: Shape, b: Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = Shape {
            dims: [1; MAX_RANK],
            rank: rank as u8,
        };
        let mut numel: u64 = 1;
        for i in 0..rank {
            let da = a.dim_from_right(rank - 1 - i);
            let db = b.dim_from_right(rank - 1 - i);
            let d = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::ShapeMismatch { op, lhs: a, rhs: b });
            };
            numel = numel.saturating_mul(d as u64);
            if let Some(slot) = out.dims.get_mut(i) {
                *slot = d as u32;
            }
        }
        if numel > u32::MAX as u64 {
            return Err(Error::ShapeMismatch { op, lhs: a, rhs: b });
        }
        Ok(out)
    }

    /// Dimension counted from the right (0 = last); 1 past the rank.
    fn dim_from_right(&self, k: usize) -> usize {
        if k < self.rank() {
            self.dim(self.rank() - 1 - k)
        } else {
            1
        }
    }

    /// Strides with which an `out`-shaped index walks this shape broadcast to `out` (0 on
    /// broadcast dimensions). Aligned to `out`'s rank, padded to 4 dims.
    pub(crate) fn broadcast_strides(&self, out: &Shape) -> [usize; MAX_RANK] {
        let own = self.strides();
        let mut s = [0usize; MAX_RANK];
        let shift = out.rank() - self.rank().min(out.rank());
        for i in 0..out.rank() {
            if i >= shift {
                let j = i - shift;
                if self.dim(j) != 1 {
                    if let (Some(slot), Some(&st)) = (s.get_mut(i), own.get(j)) {
                        *slot = st;
                    }
                }
            }
        }
        s
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_pytorch() {
        let s = |d: &[usize]| Shape::new(d).unwrap();
        assert_eq!(
            Shape::broadcast("t", s(&[4, 1, 3]), s(&[5, 1])).unwrap(),
            s(&[4, 5, 3])
        );
        assert_eq!(Shape::broadcast("t", s(&[3]), s(&[])).unwrap(), s(&[3]));
        assert!(Shape::broadcast("t", s(&[3]), s(&[4])).is_err());
        assert_eq!(s(&[2, 3, 4]).strides(), [12, 4, 1, 1]);
        assert_eq!(s(&[3, 1]).broadcast_strides(&s(&[2, 3, 4])), [0, 1, 0, 0]);
    }

    #[test]
    fn bad_dims_are_errors() {
        assert_eq!(
            Shape::new(&[1, 2, 3, 4, 5]),
            Err(Error::BadDims { rank: 5 })
        );
        assert_eq!(Shape::new(&[0]), Err(Error::BadDims { rank: 1 }));
        assert!(Shape::new(&[1 << 20, 1 << 20]).is_err());
    }
}
