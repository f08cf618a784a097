//! A standalone fixed-capacity tensor for data outside the tape: inputs, targets, constants.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::Shape;

/// A tensor with inline storage for up to `CAP` elements and a shape of rank 0 to 4. No heap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tensor<T: Float, const CAP: usize> {
    shape: Shape,
    data: [T; CAP],
}

impl<T: Float, const CAP: usize> Tensor<T, CAP> {
    /// A tensor of shape `dims` filled with zeros.
    ///
    /// # Errors
    /// [`Error::BadDims`]; [`Error::LengthMismatch`] when the shape needs more than `CAP`.
    pub fn zeros(dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if shape.numel() > CAP {
            return Err(Error::LengthMismatch {
                op: "Tensor",
                expected: shape.numel(),
                got: CAP,
            });
        }
        Ok(Tensor {
            shape,
            data: [T::ZERO; CAP],
        })
    }

    /// A tensor of shape `dims` holding `values` (row-major).
    ///
    /// # Errors
    /// As [`Tensor::zeros`], and when `values` has the wrong length.
    pub fn from_slice(dims: &[usize], values: &[T]) -> Result<Self> {
        let mut t = Self::zeros(dims)?;
        if values.len() != t.shape.numel() {
            return Err(Error::LengthMismatch {
                op: "Tensor",
                expected: t.shape.numel(),
                got: values.len(),
            });
        }
        t.as_mut_slice().copy_from_slice(values);
        Ok(t)
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The elements, row-major.
    pub fn as_slice(&self) -> &[T] {
        self.data.get(..self.shape.numel()).unwrap_or(&[])
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let n = self.shape.numel();
        self.data.get_mut(..n).unwrap_or(&mut [])
    }

    /// The element at a multi-index (`None` outside the shape).
    pub fn get(&self, index: &[usize]) -> Option<T> {
        if index.len() != self.shape.rank() {
            return None;
        }
        let strides = self.shape.strides();
        let mut at = 0;
        for (i, (&ix, &st)) in index.iter().zip(&strides).enumerate() {
            if ix >= self.shape.dim(i) {
                return None;
            }
            at += ix * st;
        }
        self.data.get(at).copied()
    }

    /// The same elements under another shape with the same element count.
    ///
    /// # Errors
    /// [`Error::BadDims`], [`Error::ShapeMismatch`].
    pub fn reshape(mut self, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if shape.numel() != self.shape.numel() {
            return Err(Error::ShapeMismatch {
                op: "Tensor::reshape",
                lhs: self.shape,
                rhs: shape,
            });
        }
        self.shape = shape;
        Ok(self)
    }
}

mod tape_ops {
    use super::Tensor;
    use crate::backend::Backend;
    use crate::error::Result;
    use crate::tape::{Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// Copies a standalone tensor onto the tape (no gradient).
        ///
        /// # Errors
        /// As [`Tape::input`].
        pub fn tensor<const CAP: usize>(&mut self, t: &Tensor<B::Elem, CAP>) -> Result<Var> {
            self.input_shape(t.shape(), t.as_slice())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_capacity_tensor() {
        let t = Tensor::<f32, 8>::from_slice(&[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(t.get(&[1, 2]), Some(6.0));
        assert_eq!(t.get(&[2, 0]), None);
        assert!(Tensor::<f32, 4>::zeros(&[2, 3]).is_err());
        let r = t.reshape(&[3, 2]).unwrap();
        assert_eq!(r.get(&[2, 1]), Some(6.0));
    }
}
