//! Row lookup (`embedding`): `y[i, :] = W[idx[i], :]` for a table `W` of shape `[V, D]` and
//! integer indices stored as floats (like cross-entropy labels).
//!
//! Backward: `dW[idx[i], :] += dy[i, :]` (rows looked up several times accumulate), except for
//! a padding row, which gets none (PyTorch's `padding_idx`); the indices get no gradient. Built
//! on the backend's strided copy, one row at a time.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::loss::label_index;
use crate::ops::movement::Strided;
use crate::shape::Shape;

/// The index stored at `at`, checked against `rows`.
fn index<B: Backend>(be: &B, at: usize, rows: usize) -> Result<usize> {
    let mut v = [B::Elem::ZERO];
    be.read(at, &mut v)?;
    let [v] = v;
    label_index(v, rows)
}

/// Copies row `idx[i]` of the table to row `i` of `y` (or, with `back`, adds row `i` of `dy`
/// to row `idx[i]` of `dW`, but to no `padding` row), for every index.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows<B: Backend>(
    be: &mut B,
    table: usize,
    (vocab, dim): (usize, usize),
    idx: usize,
    count: usize,
    out: usize,
    back: bool,
    padding: Option<usize>,
) -> Result<()> {
    let space = Shape::new(&[dim])?;
    if !be.computes() {
        return Ok(());
    }
    be.host_dependent(
        "an embedding reads its indices on the host: a recorded or captured step cannot hold it",
    )?;
    for i in 0..count {
        let r = index(be, idx + i, vocab)?;
        if back && Some(r) == padding {
            continue;
        }
        let t = Strided::contiguous(table + r * dim, &space);
        let o = Strided::contiguous(out + i * dim, &space);
        if back {
            be.copy_strided(&space, o, t, true)?;
        } else {
            be.copy_strided(&space, t, o, false)?;
        }
    }
    Ok(())
}

pub(crate) mod tape_ops {
    use super::*;
    use crate::tape::{Op, Tape, Var, NONE};

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// Looks up rows of `table` (`[V, D]`) by `indices` (any shape of rank up to 3, holding
        /// integers in `0..V`, e.g. from [`Tape::labels`]): the result has the indices' shape
        /// followed by `D` (PyTorch's `F.embedding`).
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for a table that is not 2-D or indices of rank 4;
        /// [`Error::IndexOutOfRange`] for an index outside the table; and as [`Tape::unary`].
        pub fn embedding(&mut self, table: Var, indices: Var) -> Result<Var> {
            self.embedding_padded(table, indices, None)
        }

        /// [`Tape::embedding`] whose row `padding_idx` gets no gradient from this lookup
        /// (PyTorch's `F.embedding(..., padding_idx=p)`): a zero row, as
        /// [`crate::Embedding::with_padding`] makes it, stays zeros (weight decay of zero is
        /// zero); another row would still move under weight decay.
        ///
        /// # Errors
        /// As [`Tape::embedding`]; [`Error::IndexOutOfRange`] for a `padding_idx` outside the
        /// table.
        pub fn embedding_padded(
            &mut self,
            table: Var,
            indices: Var,
            padding_idx: Option<usize>,
        ) -> Result<Var> {
            let ts = table.shape;
            if ts.rank() != 2 {
                return Err(Error::InvalidShape {
                    op: "embedding table",
                    shape: ts,
                });
            }
            let is = indices.shape;
            if is.rank() > 3 {
                return Err(Error::InvalidShape {
                    op: "embedding indices",
                    shape: is,
                });
            }
            let (vocab, dim) = (ts.dim(0), ts.dim(1));
            let padding = match padding_idx {
                None => NONE,
                Some(p) if p < vocab => p as u32,
                Some(p) => {
                    return Err(Error::IndexOutOfRange {
                        op: "embedding padding_idx",
                        index: p,
                        bound: vocab,
                    })
                }
            };
            let mut dims = [0usize; 4];
            for (d, &v) in dims.iter_mut().zip(is.dims()) {
                *d = v as usize;
            }
            if let Some(last) = dims.get_mut(is.rank()) {
                *last = dim;
            }
            let shape = Shape::new(dims.get(..is.rank() + 1).unwrap_or(&[]))?;
            let count = is.numel();
            self.record(
                Op::Gather { padding },
                Self::bw_gather,
                &[table, indices],
                shape,
                |be, y| {
                    rows(
                        be,
                        table.offset as usize,
                        (vocab, dim),
                        indices.offset as usize,
                        count,
                        y.offset,
                        false,
                        None,
                    )
                },
            )
        }

        pub(crate) fn gather_backward(
            &mut self,
            table: u32,
            indices: u32,
            dy: usize,
            padding: u32,
        ) -> Result<()> {
            let iv = self.node_view(indices)?;
            let Some((tv, dt)) = self.input_grad(table)? else {
                return Ok(());
            };
            let (vocab, dim) = (tv.shape.dim(0), tv.shape.dim(1));
            rows(
                &mut self.backend,
                dt,
                (vocab, dim),
                iv.offset,
                iv.len(),
                dy,
                true,
                (padding != NONE).then_some(padding as usize),
            )
        }
    }
}
