//! Row lookup (`embedding`): `y[i, :] = W[idx[i], :]` for a table `W` of shape `[V, D]` and
//! integer indices stored as floats (like cross-entropy labels); and `arange` and `one_hot`,
//! made on the device without a node.
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

        /// `[0, 1, ..., n - 1]` as a tensor of shape `[n]` (PyTorch's `torch.arange(n)`),
        /// made on the device from a fill, shifted copies and joins (doubling its length each
        /// time, then cut to `n`), so that a recording ([`crate::Replay`], a CUDA graph) holds
        /// it: no value is written from the host. Records no node (it has no gradient); it
        /// takes `3 m - 2` elements of the arena for `m` the power of two at or above `n`, and
        /// `n` more when `n` is not one: under `7 n`.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `1 <= n <= 2^24` (whole numbers exact in `f32`);
        /// and as [`Tape::unary`].
        pub fn arange(&mut self, n: usize) -> Result<Var> {
            if n == 0 || n > 1 << 24 {
                return Err(Error::InvalidArgument {
                    what: "arange: n must lie in 1..=2^24",
                });
            }
            self.all_or_nothing(|t| {
                t.no_grad(|t| {
                    let mut v = t.full(&[1], B::Elem::ZERO)?;
                    let mut len = 1;
                    while len < n {
                        let shifted = t.add_scalar(v, len as f32)?;
                        v = t.concat(v, shifted, 0)?;
                        len *= 2;
                    }
                    if len > n {
                        v = t.slice(v, 0, 0, n)?;
                    }
                    Ok(v)
                })
            })
        }

        /// The one-hot encoding of class labels (PyTorch's `F.one_hot(labels, classes)`, as
        /// floats): `labels` of any shape up to rank 3, holding integers in `0..classes` (from
        /// [`Tape::labels`]), give the labels' shape followed by `classes`, 1 at each label
        /// and 0 elsewhere. A label [`IGNORED_LABEL`](crate::ops::loss::IGNORED_LABEL) gives a
        /// row of zeros. Made on the device (`1 - min(|arange - label|, 1)`, broadcast), so
        /// that a recording holds it; the labels are checked on the device as the fused
        /// cross-entropy checks them. Records no node (it has no gradient).
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for labels of rank 4; [`Error::IndexOutOfRange`] for a
        /// label that is not a whole number in `0..classes` (but for `IGNORED_LABEL`); as
        /// [`Tape::arange`] for `classes`; and as [`Tape::unary`].
        pub fn one_hot(&mut self, labels: Var, classes: usize) -> Result<Var> {
            let ls = labels.shape;
            if ls.rank() > 3 {
                return Err(Error::InvalidShape {
                    op: "one_hot labels",
                    shape: ls,
                });
            }
            // The labels as a column (their shape and a 1), against `0..classes` as a row.
            let mut dims = [1usize; 4];
            for (d, &v) in dims.iter_mut().zip(ls.dims()) {
                *d = v as usize;
            }
            let column = dims.get(..ls.rank() + 1).unwrap_or(&[]);
            let count = ls.numel();
            self.all_or_nothing(|t| {
                t.no_grad(|t| {
                    let c = t.arange(classes)?;
                    let col = t.reshape(labels, column)?;
                    let d = t.sub(col, c)?;
                    let d = t.abs(d)?;
                    let d = t.clamp_max(d, 1.0)?;
                    let d = t.neg(d)?;
                    let hot = t.add_scalar(d, 1.0)?;
                    // The labels' check: the fused cross-entropy's, on the encoding itself as
                    // logits `[count, classes]` against the labels `[count]`.
                    let (logits, flat) = if ls.rank() == 1 {
                        (hot, labels)
                    } else {
                        (
                            t.reshape(hot, &[count, classes])?,
                            t.reshape(labels, &[count])?,
                        )
                    };
                    t.cross_entropy(logits, flat)?;
                    Ok(hot)
                })
            })
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
