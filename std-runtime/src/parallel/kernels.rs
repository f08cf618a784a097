//! The split-over-threads forms of the core's kernels. Each splits its output into disjoint
//! chunks and runs the core's own kernel (or the same arithmetic in the same order) on each, so
//! that results equal the serial ones except where a sum is split (noted per function).

use super::{simd, team};
use mote::ops::binary::{self, BinaryOp, Side};
use mote::ops::loss::{self, LossOp};
use mote::ops::movement::{self, Strided};
use mote::ops::reduce::{self, Axis3, ReduceOp};
use mote::{Float, Result, Shape, MAX_RANK};

/// `shape` with dimension `axis` replaced by `d`.
fn with_dim(shape: &Shape, axis: usize, d: usize) -> Result<Shape> {
    let mut dims = [1usize; MAX_RANK];
    for (o, &v) in dims.iter_mut().zip(shape.dims()) {
        *o = v as usize;
    }
    if let Some(o) = dims.get_mut(axis) {
        *o = d;
    }
    Shape::new(dims.get(..shape.rank()).unwrap_or(&[]))
}

/// A split of a broadcast op's output along its first dimension, in chunks of whole rows.
pub(super) struct RowSplit {
    y: Shape,
    rows: usize,
    inner: usize,
    per: usize,
}

impl RowSplit {
    /// `None` when the output has fewer than two rows.
    pub(super) fn new(y: &Shape, threads: usize) -> Option<RowSplit> {
        let rows = if y.rank() >= 1 { y.dim(0) } else { 1 };
        if rows < 2 {
            return None;
        }
        Some(RowSplit {
            y: *y,
            rows,
            inner: y.numel() / rows,
            per: rows.div_ceil(threads * 4).max(1),
        })
    }

    /// The part of an operand that rows `start..start + cnt` of the output read: the same
    /// rows when the operand has them, the whole operand when it is broadcast along them.
    fn part<'s, T>(
        &self,
        s: &Shape,
        data: &'s [T],
        start: usize,
        cnt: usize,
    ) -> Result<(&'s [T], Shape)> {
        if s.rank() == self.y.rank() && s.dim(0) == self.rows {
            let inner = s.numel() / self.rows;
            let part = data
                .get(start * inner..(start + cnt) * inner)
                .unwrap_or(&[]);
            Ok((part, with_dim(s, 0, cnt)?))
        } else {
            Ok((data, *s))
        }
    }

    /// [`binary::forward`] chunk by chunk; exact.
    pub(super) fn binary<T: Float>(
        &self,
        op: BinaryOp,
        a: &[T],
        sa: &Shape,
        b: &[T],
        sb: &Shape,
        y: &mut [T],
    ) -> Result<()> {
        first_err(team::map(
            y.chunks_mut(self.per * self.inner).enumerate(),
            |(i, yc)| -> Result<()> {
                let (start, cnt) = (i * self.per, yc.len() / self.inner);
                let (ac, sac) = self.part(sa, a, start, cnt)?;
                let (bc, sbc) = self.part(sb, b, start, cnt)?;
                let ys = with_dim(&self.y, 0, cnt)?;
                simd(|| binary::forward(op, ac, &sac, bc, &sbc, yc, &ys));
                Ok(())
            },
        ))
        .map(drop)
    }

    /// [`binary::backward`] chunk by chunk, for an operand shaped like the output; exact.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn binary_backward<T: Float>(
        &self,
        op: BinaryOp,
        side: Side,
        a: &[T],
        sa: &Shape,
        b: &[T],
        sb: &Shape,
        dy: &[T],
        dx: &mut [T],
    ) -> Result<()> {
        let chunk = self.per * self.inner;
        first_err(team::map(
            dx.chunks_mut(chunk).zip(dy.chunks(chunk)).enumerate(),
            |(i, (dc, gc))| -> Result<()> {
                let (start, cnt) = (i * self.per, gc.len() / self.inner);
                let (ac, sac) = self.part(sa, a, start, cnt)?;
                let (bc, sbc) = self.part(sb, b, start, cnt)?;
                let ys = with_dim(&self.y, 0, cnt)?;
                simd(|| binary::backward(op, side, ac, &sac, bc, &sbc, gc, &ys, dc));
                Ok(())
            },
        ))
        .map(drop)
    }
}

/// [`movement::copy`], with the common two-dimensional layouts (a bias broadcast over rows,
/// its gradient summed over rows, plain and windowed copies: rows contiguous on both sides) as
/// whole-row slice operations. Same values, in the same order.
#[inline(always)]
pub(super) fn copy<T: Float>(
    space: &Shape,
    s: &[T],
    ss: [usize; MAX_RANK],
    d: &mut [T],
    ds: [usize; MAX_RANK],
    accumulate: bool,
) {
    if !copy_rows(space, s, ss, d, ds, accumulate) {
        movement::copy(space, s, ss, d, ds, accumulate);
    }
}

/// One row: `dst (+)= src` (equal lengths).
#[inline(always)]
fn copy_row<T: Float>(src: &[T], dst: &mut [T], accumulate: bool) {
    if accumulate {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d += v;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// The row form of [`copy`]; false (having done nothing) for other layouts.
#[inline(always)]
fn copy_rows<T: Float>(
    space: &Shape,
    s: &[T],
    ss: [usize; MAX_RANK],
    d: &mut [T],
    ds: [usize; MAX_RANK],
    accumulate: bool,
) -> bool {
    if space.rank() != 2 {
        return false;
    }
    let (rows, cols) = (space.dim(0), space.dim(1));
    let ([sr, 1, ..], [dr, 1, ..]) = (ss, ds) else {
        return false;
    };
    let fits = |len: usize, stride: usize| {
        (rows - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(cols))
            .is_some_and(|end| end <= len)
    };
    if !fits(s.len(), sr) || !fits(d.len(), dr) {
        return false;
    }
    let src_row = |i: usize| s.get(i * sr..i * sr + cols).unwrap_or(&[]);
    if dr == 0 {
        // Every row into one: a sum over rows (a broadcast's gradient).
        if !accumulate {
            return false;
        }
        let Some(dst) = d.get_mut(..cols) else {
            return false;
        };
        if let [one] = dst {
            // One column: the same additions, in the same order, in a register.
            let mut acc = *one;
            for i in 0..rows {
                acc += s.get(i * sr).copied().unwrap_or(T::ZERO);
            }
            *one = acc;
            return true;
        }
        for i in 0..rows {
            copy_row(src_row(i), dst, true);
        }
        return true;
    }
    if sr == 0 && dr == cols && !accumulate {
        // One row repeated over contiguous rows (a bias broadcast): a fill for one column,
        // else the row copied once and the copied part doubled (a few `memcpy` calls in place
        // of one per row).
        let Some(dst) = d.get_mut(..rows * cols) else {
            return false;
        };
        if let [v] = src_row(0) {
            dst.fill(*v);
            return true;
        }
        if let Some(first) = dst.get_mut(..cols) {
            first.copy_from_slice(src_row(0));
        }
        let mut done = cols;
        while done < dst.len() {
            let n = done.min(dst.len() - done);
            dst.copy_within(..n, done);
            done += n;
        }
        return true;
    }
    if dr < cols {
        return false;
    }
    for i in 0..rows {
        let Some(dst) = d.get_mut(i * dr..i * dr + cols) else {
            return false;
        };
        copy_row(src_row(i), dst, accumulate);
    }
    true
}

/// [`movement::copy`] split along the outermost dimension whose destination parts are
/// disjoint (a non-zero destination stride at least the span of one part). Exact. Returns
/// false, having done nothing, when no dimension splits.
pub(super) fn copy_par<T: Float>(
    space: &Shape,
    s: &[T],
    ss: [usize; MAX_RANK],
    d: &mut [T],
    ds: [usize; MAX_RANK],
    accumulate: bool,
    threads: usize,
) -> bool {
    let layout = Strided {
        offset: 0,
        strides: ds,
    };
    for dim in 0..space.rank() {
        let (len, step) = (space.dim(dim), ds.get(dim).copied().unwrap_or(0));
        let sstep = ss.get(dim).copied().unwrap_or(0);
        if len < 2 || step == 0 {
            continue;
        }
        let w = len.div_ceil((threads * 4).min(len));
        let Ok(sub) = with_dim(space, dim, w) else {
            continue;
        };
        if step.saturating_mul(w) < layout.span(&sub) {
            continue;
        }
        let mut jobs = Vec::with_capacity(len.div_ceil(w));
        let mut rest = d;
        let mut consumed = 0;
        let mut start = 0;
        while start < len {
            let cnt = w.min(len - start);
            let Ok(sh) = with_dim(space, dim, cnt) else {
                return false;
            };
            let at = start * step;
            let tail = core::mem::take(&mut rest);
            let Some((_, tail)) = at
                .checked_sub(consumed)
                .and_then(|skip| tail.split_at_mut_checked(skip))
            else {
                return false;
            };
            let Some((mine, tail)) = tail.split_at_mut_checked(layout.span(&sh)) else {
                return false;
            };
            rest = tail;
            consumed = at + mine.len();
            let Some(src) = s.get(start * sstep..) else {
                return false;
            };
            jobs.push((mine, src, sh));
            start += cnt;
        }
        team::for_each(jobs, |(d, s, sh)| {
            simd(|| copy(&sh, s, ss, d, ds, accumulate))
        });
        return true;
    }
    false
}

/// [`reduce::forward`] split over blocks (`outer`), each block reduced by the core's kernel;
/// exact. Returns false, having done nothing, for a single block.
pub(super) fn reduce_par<T: Float>(
    op: ReduceOp,
    a: Axis3,
    x: &[T],
    y: &mut [T],
    threads: usize,
) -> bool {
    let Axis3 { outer, n, inner } = a;
    if outer < 2 {
        return false;
    }
    let per = outer.div_ceil(threads * 4);
    team::for_each(
        y.chunks_mut(per * inner).zip(x.chunks(per * n * inner)),
        |(y, x)| {
            let part = Axis3 {
                outer: y.len() / inner,
                ..a
            };
            simd(|| reduce::forward(op, part, x, y));
        },
    );
    true
}

/// The chunk length of [`reduce_all_par`] and its backward, or `None` when `op` over `a` is
/// not a sum or mean of everything (one output, no inner axis).
fn whole_chunk(op: ReduceOp, a: Axis3, threads: usize) -> Option<usize> {
    let whole = a.outer == 1 && a.inner == 1 && !op.picks() && a.n > 0;
    whole.then(|| a.n.div_ceil(threads * 4).max(1 << 12))
}

/// Sum or mean of everything (one output: `outer` and `inner` 1, a loss's `mean`): chunks of
/// `x` summed in parallel, each with 16 lanes, and the chunk sums added in order, so the result
/// depends only on the thread count (not on scheduling). Returns false, having done nothing,
/// for other reductions.
pub(super) fn reduce_all_par<T: Float>(
    op: ReduceOp,
    a: Axis3,
    x: &[T],
    y: &mut [T],
    threads: usize,
) -> bool {
    let (Some(chunk), Some(out)) = (whole_chunk(op, a, threads), y.first_mut()) else {
        return false;
    };
    let parts = team::map(x.chunks(chunk), lane_sum);
    let total = parts.iter().fold(T::ZERO, |acc, &p| acc + p);
    *out = whole_result(op, a.n, total);
    true
}

/// Sum or mean of everything on the calling thread, with 16 lanes (a loss's `mean` of 4 M
/// values took 12 ms in one scalar chain, each add waiting for the last), from 4096 values on;
/// false, having done nothing, for smaller or other reductions (the reference kernel's order).
pub(super) fn reduce_all_serial<T: Float>(op: ReduceOp, a: Axis3, x: &[T], y: &mut [T]) -> bool {
    let whole = a.outer == 1 && a.inner == 1 && !op.picks() && a.n >= 1 << 12;
    let Some(out) = y.first_mut().filter(|_| whole) else {
        return false;
    };
    *out = whole_result(op, a.n, lane_sum(x));
    true
}

/// `total`, or `total / n` for a mean.
fn whole_result<T: Float>(op: ReduceOp, n: usize, total: T) -> T {
    if op == ReduceOp::Mean {
        total * (T::ONE / T::from_usize(n))
    } else {
        total
    }
}

/// The sum of `c` in 16 lanes (then the lanes in order), vectorised.
fn lane_sum<T: Float>(c: &[T]) -> T {
    simd(|| {
        let mut lanes = [T::ZERO; 16];
        let mut it = c.chunks_exact(16);
        for block in &mut it {
            for (l, &v) in lanes.iter_mut().zip(block) {
                *l += v;
            }
        }
        let mut s = T::ZERO;
        for &v in it.remainder() {
            s += v;
        }
        lanes.iter().fold(s, |acc, &l| acc + l)
    })
}

/// The backward of [`reduce_all_par`]'s sum or mean (`dx += dy scale` for every element),
/// over chunks in parallel: exact. Returns false, having done nothing, for other reductions.
pub(super) fn reduce_all_backward_par<T: Float>(
    op: ReduceOp,
    a: Axis3,
    dy: &[T],
    dx: &mut [T],
    threads: usize,
) -> bool {
    let (Some(chunk), Some(&g)) = (whole_chunk(op, a, threads), dy.first()) else {
        return false;
    };
    let n = a.n;
    let scale = if op == ReduceOp::Mean {
        T::ONE / T::from_usize(n)
    } else {
        T::ONE
    };
    let step = g * scale;
    team::for_each(dx.chunks_mut(chunk), |d| {
        simd(|| {
            for v in d {
                *v += step;
            }
        });
    });
    true
}

/// [`reduce::backward`] split over blocks; exact. Returns false, having done nothing, for a
/// single block.
pub(super) fn reduce_backward_par<T: Float>(
    op: ReduceOp,
    a: Axis3,
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
    threads: usize,
) -> bool {
    let Axis3 { outer, n, inner } = a;
    if outer < 2 {
        return false;
    }
    let per = outer.div_ceil(threads * 4);
    team::for_each(
        dx.chunks_mut(per * n * inner)
            .zip(x.chunks(per * n * inner))
            .zip(y.chunks(per * inner).zip(dy.chunks(per * inner))),
        |((dx, x), (y, dy))| {
            let part = Axis3 {
                outer: y.len() / inner,
                ..a
            };
            simd(|| reduce::backward(op, part, x, y, dy, dx));
        },
    );
    true
}

/// The first error of per-chunk results, in chunk order (so the error does not depend on
/// scheduling).
fn first_err<V>(results: Vec<Result<V>>) -> Result<Vec<V>> {
    results.into_iter().collect()
}

/// [`loss::forward`] over chunks, the chunk means combined in f64: rounds differently from
/// the serial sum (usually closer to the exact value).
pub(super) fn loss_par<T: Float>(
    op: LossOp,
    classes: usize,
    p: &[T],
    t: &[T],
    threads: usize,
) -> Result<T> {
    let (rows, width) = match op {
        _ if !op.takes_labels() => (p.len(), 1),
        _ if classes > 0 => (t.len(), classes),
        _ => return simd(|| loss::forward(op, classes, p, t)),
    };
    if rows == 0 {
        return simd(|| loss::forward(op, classes, p, t));
    }
    let per = rows.div_ceil(threads * 4);
    let parts = team::map(p.chunks(per * width).zip(t.chunks(per)), |(pc, tc)| {
        let n = if op.takes_labels() {
            tc.len().min(pc.len() / width)
        } else {
            pc.len()
        };
        simd(|| loss::forward(op, classes, pc, tc)).map(|m| m.to_f64() * n as f64)
    });
    let total: f64 = first_err(parts)?.iter().sum();
    Ok(T::from_f64(total / rows as f64))
}
