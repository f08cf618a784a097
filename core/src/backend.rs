//! The backend boundary: one trait that owns the arena's storage and runs every kernel, and the
//! reference CPU backend over a caller's slice.
//!
//! Kernels receive arena offsets (and shapes where they need them); the tape has checked every
//! shape and every range before it calls a kernel. Backward kernels accumulate (`dx += ...`).

use core::ops::Range;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::binary::{self, BinaryOp, Side};
use crate::ops::conv::{ConvCall, PoolCall};
use crate::ops::loss::{self, LossOp};
use crate::ops::matmul::{self, Gemm};
use crate::ops::movement::{self, Strided};
use crate::ops::reduce::{self, Axis3, ReduceOp};
use crate::ops::softmax;
use crate::ops::unary::{self, UnaryOp};
use crate::optim::{self, AdamUpdate, RmsUpdate, SgdUpdate};
use crate::shape::Shape;

/// A tensor's place in the arena: offset and shape (contiguous, row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Arena offset of the first element.
    pub offset: usize,
    /// Shape.
    pub shape: Shape,
}

impl View {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.numel()
    }

    /// Always false: shapes have at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The arena range it covers.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset.saturating_add(self.len())
    }
}

/// Storage plus kernels: what a tape runs on.
///
/// One method (or one pair, forward and backward) per op family. Offsets address the backend's
/// own storage, which has [`Backend::capacity`] elements.
pub trait Backend {
    /// The element type.
    type Elem: Float;

    /// Whether the backend computes values (`false` for [`Meter`], whose dry runs only
    /// allocate). Ops whose work is driven from the host, one small step per element (the
    /// rows of an embedding lookup), skip that work when it is `false`.
    fn computes(&self) -> bool {
        true
    }

    /// Called before an op does work that a recording of backend calls cannot hold: it reads
    /// the arena back to decide its calls (an embedding's indices), or keeps state on the
    /// host (batch norm's running statistics), or writes values it drew on the host (a
    /// dropout mask). A backend that records calls to run them again later without the host
    /// ([`crate::replay::Replay`], a CUDA graph capture) refuses such a step; the others
    /// ignore it (the default). `what` names the op and why.
    ///
    /// # Errors
    /// A recording backend's refusal ([`crate::Error::InvalidArgument`]).
    fn host_dependent(&mut self, what: &'static str) -> Result<()> {
        let _ = what;
        Ok(())
    }

    /// The alignment, in elements, at which the tape starts each allocation: 1 (none) by
    /// default. A GPU backend asks for more, so that its library's products and its wide loads
    /// see aligned operands (cuBLAS picks slower kernels for operands aligned to less than 16
    /// bytes). Its arena then needs room for the padding: up to `align() - 1` elements per
    /// allocation. A value that is not a power of two is taken as the next one.
    fn align(&self) -> usize {
        1
    }

    /// Elements of storage.
    fn capacity(&self) -> usize;

    /// Copies host data into the arena at `offset`.
    ///
    /// # Errors
    /// When the range lies outside the storage.
    fn write(&mut self, offset: usize, src: &[Self::Elem]) -> Result<()>;

    /// Copies arena data at `offset` out to the host.
    ///
    /// # Errors
    /// When the range lies outside the storage.
    fn read(&self, offset: usize, dst: &mut [Self::Elem]) -> Result<()>;

    /// Sets `len` elements at `offset` to `value`.
    ///
    /// # Errors
    /// When the range lies outside the storage.
    fn fill(&mut self, offset: usize, len: usize, value: Self::Elem) -> Result<()>;

    /// `y = op(x)` elementwise over `len` elements.
    ///
    /// # Errors
    /// When a range lies outside the storage or a write overlaps a read.
    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()>;

    /// `dx += op'(x) * dy`.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    ) -> Result<()>;

    /// `y = a (op) b` with broadcasting.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()>;

    /// Accumulates the gradient of operand `side` into `dx`.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn binary_backward(
        &mut self,
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()>;

    /// A (batched) matrix product.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn gemm(&mut self, g: &Gemm) -> Result<()>;

    /// One pass of a convolution over a whole batch with the backend's own kernel, where it
    /// has one for this geometry. Returns `Ok(false)`, having done nothing, when it has none:
    /// the tape then runs the pass as im2col copies and matrix products (see
    /// [`crate::ops::conv`]), which is what the default does for every call (and what a
    /// [`Replay`](crate::Replay) records).
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn conv(&mut self, call: &ConvCall) -> Result<bool> {
        let _ = call;
        Ok(false)
    }

    /// Elements of im2col buffer a convolution that the tape runs as copies and products may
    /// fill per pass on this backend, where the arena has room beyond the planned buffer
    /// (`None`, the default: the planned one, a few images per pass). A GPU, whose launches
    /// cost more than the copies, does the whole batch in one pass when it can. The results
    /// differ only in rounding (the weight's gradient is summed in another order, and larger
    /// products may run on other kernels).
    fn conv_scratch(&self) -> Option<usize> {
        None
    }

    /// One pass of a 2-D pooling over a whole batch with the backend's own kernel, where it
    /// has one. Returns `Ok(false)`, having done nothing, when it has none: the tape then runs
    /// the pass as im2col copies and a reduction (see [`crate::ops::conv`]), which is what the
    /// default does for every call.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn pool(&mut self, call: &PoolCall) -> Result<bool> {
        let _ = call;
        Ok(false)
    }

    /// A strided copy over index space `space` (see [`crate::ops::movement`]).
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()>;

    /// A reduction.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()>;

    /// A reduction's backward.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn reduce_backward(
        &mut self,
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()>;

    /// Softmax (or log-softmax) along an axis.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()>;

    /// Softmax's backward, from its output.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn softmax_backward(
        &mut self,
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()>;

    /// A loss of predictions `p` against targets `t` into the scalar at `y`.
    ///
    /// # Errors
    /// As [`Backend::unary`], and a bad cross-entropy label.
    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()>;

    /// A loss's backward for predictions (`lhs`) or targets, scaled by the scalar at `dy`.
    ///
    /// # Errors
    /// As [`Backend::loss`].
    #[allow(clippy::too_many_arguments)]
    fn loss_backward(
        &mut self,
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()>;

    /// One SGD update of one parameter.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn sgd(&mut self, u: &SgdUpdate) -> Result<()>;

    /// One Adam or AdamW update of one parameter.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn adam(&mut self, u: &AdamUpdate) -> Result<()>;

    /// One RMSprop or Adagrad update of one parameter.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn rms(&mut self, u: &RmsUpdate) -> Result<()>;

    /// The sum of squares of `len` elements at `offset` (for gradient clipping), in f64.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64>;

    /// Multiplies `len` elements at `offset` by `factor`.
    ///
    /// # Errors
    /// As [`Backend::unary`].
    fn scale(&mut self, offset: usize, len: usize, factor: Self::Elem) -> Result<()>;
}

/// A backend whose storage is host memory: gives slices without copying.
pub trait HostBackend: Backend {
    /// The whole storage.
    fn storage(&self) -> &[Self::Elem];
    /// The whole storage, mutably.
    fn storage_mut(&mut self) -> &mut [Self::Elem];
}

fn out_of_range(end: usize, len: usize) -> Error {
    Error::IndexOutOfRange {
        op: "arena",
        index: end,
        bound: len,
    }
}

/// Splits `buf` into one writable range and `K` readable ranges (which may overlap each other,
/// but not the writable one).
///
/// # Errors
/// [`Error::Aliasing`] when a read overlaps the write; [`Error::IndexOutOfRange`] past the end.
#[inline]
pub fn split<T, const K: usize>(
    buf: &mut [T],
    w: Range<usize>,
    reads: [Range<usize>; K],
) -> Result<(&mut [T], [&[T]; K])> {
    let len = buf.len();
    if w.end < w.start {
        return Err(out_of_range(w.start, w.end));
    }
    let (lo, rest) = buf
        .split_at_mut_checked(w.start)
        .ok_or(out_of_range(w.start, len))?;
    let (wr, hi) = rest
        .split_at_mut_checked(w.len())
        .ok_or(out_of_range(w.end, len))?;
    let (lo, hi): (&[T], &[T]) = (lo, hi);
    let mut out: [&[T]; K] = [&[]; K];
    for (slot, r) in out.iter_mut().zip(reads) {
        *slot = if r.is_empty() {
            &[]
        } else if r.end <= w.start {
            lo.get(r.clone()).ok_or(out_of_range(r.end, len))?
        } else if r.start >= w.end {
            hi.get(r.start - w.end..r.end - w.end)
                .ok_or(out_of_range(r.end, len))?
        } else {
            return Err(Error::Aliasing);
        };
    }
    Ok((wr, out))
}

/// The slices of an RMSprop or Adagrad update ([`split_rms`]): the parameter, its gradient,
/// the squares, and the gradient's average and the momentum buffer where the update has them.
pub type RmsSlices<'a, T> = (
    &'a mut [T],
    &'a [T],
    &'a mut [T],
    Option<&'a mut [T]>,
    Option<&'a mut [T]>,
);

/// Splits `buf` into the disjoint slices that `u` names ([`split_mut`]'s checks).
///
/// # Errors
/// [`Error::IndexOutOfRange`]; [`Error::Aliasing`] for overlapping buffers.
pub fn split_rms<'a, T>(buf: &'a mut [T], u: &RmsUpdate) -> Result<RmsSlices<'a, T>> {
    let end = buf.len();
    let r = |o: usize| o..o.saturating_add(u.len);
    // An absent buffer: an empty range at the end, which nothing can overlap.
    let opt = |o: Option<usize>| o.map_or(end..end, r);
    let [p, g, sq, avg, mb] = split_mut(
        buf,
        [
            r(u.param),
            r(u.grad),
            r(u.sq),
            opt(u.avg),
            opt(u.momentum_buf),
        ],
    )?;
    Ok((p, g, sq, u.avg.map(|_| avg), u.momentum_buf.map(|_| mb)))
}

/// Splits `buf` into `K` pairwise disjoint writable ranges.
///
/// # Errors
/// [`Error::Aliasing`] when two ranges overlap; [`Error::IndexOutOfRange`] past the end.
pub fn split_mut<T, const K: usize>(
    buf: &mut [T],
    ranges: [Range<usize>; K],
) -> Result<[&mut [T]; K]> {
    let len = buf.len();
    let mut order: [usize; K] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges.get(i).map_or(0, |r| r.start));
    let mut out: [&mut [T]; K] = core::array::from_fn(|_| -> &mut [T] { &mut [] });
    let mut rest = buf;
    let mut consumed = 0;
    for &i in &order {
        let r = ranges.get(i).cloned().unwrap_or(0..0);
        if r.start < consumed {
            return Err(Error::Aliasing);
        }
        let tail = core::mem::take(&mut rest);
        let (_, tail) = tail
            .split_at_mut_checked(r.start - consumed)
            .ok_or(out_of_range(r.start, len))?;
        let (mid, tail) = tail
            .split_at_mut_checked(r.len())
            .ok_or(out_of_range(r.end, len))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = mid;
        }
        rest = tail;
        consumed = r.end;
    }
    Ok(out)
}

/// The reference backend: plain loops over the caller's slice, generic over the float type.
/// Runs anywhere, a Cortex-M4F included.
pub struct Cpu<'a, T: Float> {
    buf: &'a mut [T],
    align: usize,
}

impl<'a, T: Float> Cpu<'a, T> {
    /// A backend over `buf` (a `static` on a microcontroller, a `Vec` on a host).
    pub fn new(buf: &'a mut [T]) -> Self {
        Cpu { buf, align: 1 }
    }

    /// A backend over `buf` whose tape starts every allocation at a multiple of `align`
    /// elements ([`Backend::align`]), as a GPU backend's does: the same results, with the
    /// padding a GPU arena has (measured by [`Meter::aligned`]).
    pub fn aligned(buf: &'a mut [T], align: usize) -> Self {
        Cpu { buf, align }
    }
}

// Saturating: a range past `usize::MAX` is simply out of range, never an overflow.
fn r(o: usize, n: usize) -> Range<usize> {
    o..o.saturating_add(n)
}

impl<T: Float> HostBackend for Cpu<'_, T> {
    fn storage(&self) -> &[T] {
        self.buf
    }
    fn storage_mut(&mut self) -> &mut [T] {
        self.buf
    }
}

impl<T: Float> Backend for Cpu<'_, T> {
    type Elem = T;

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn align(&self) -> usize {
        self.align
    }

    fn write(&mut self, offset: usize, src: &[T]) -> Result<()> {
        let len = self.buf.len();
        let dst = self
            .buf
            .get_mut(r(offset, src.len()))
            .ok_or(out_of_range(offset.saturating_add(src.len()), len))?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn read(&self, offset: usize, dst: &mut [T]) -> Result<()> {
        let src = self.buf.get(r(offset, dst.len())).ok_or(out_of_range(
            offset.saturating_add(dst.len()),
            self.buf.len(),
        ))?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn fill(&mut self, offset: usize, len: usize, value: T) -> Result<()> {
        let n = self.buf.len();
        self.buf
            .get_mut(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?
            .fill(value);
        Ok(())
    }

    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        let (y, [x]) = split(self.buf, r(y, len), [r(x, len)])?;
        unary::forward(op, x, y);
        Ok(())
    }

    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    ) -> Result<()> {
        let (dx, [x, y, dy]) = split(self.buf, r(dx, len), [r(x, len), r(y, len), r(dy, len)])?;
        unary::backward(op, x, y, dy, dx);
        Ok(())
    }

    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        let (yv, [av, bv]) = split(self.buf, y.range(), [a.range(), b.range()])?;
        binary::forward(op, av, &a.shape, bv, &b.shape, yv, &y.shape);
        Ok(())
    }

    fn binary_backward(
        &mut self,
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        let n = match side {
            Side::Lhs => a.len(),
            Side::Rhs => b.len(),
        };
        let (d, [av, bv, g]) = split(self.buf, r(dx, n), [a.range(), b.range(), dy.range()])?;
        binary::backward(op, side, av, &a.shape, bv, &b.shape, g, &dy.shape, d);
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        let (sa, sb, sc) = g.spans();
        let (c, [a, b]) = split(self.buf, r(g.c, sc), [r(g.a, sa), r(g.b, sb)])?;
        matmul::gemm(g, a, b, c);
        Ok(())
    }

    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        let (d, [s]) = split(
            self.buf,
            r(dst.offset, dst.span(space)),
            [r(src.offset, src.span(space))],
        )?;
        movement::copy(space, s, src.strides, d, dst.strides, accumulate);
        Ok(())
    }

    fn reduce(&mut self, op: ReduceOp, a: Axis3, x: usize, y: usize) -> Result<()> {
        let (yv, [xv]) = split(self.buf, r(y, a.output_len()), [r(x, a.input_len())])?;
        reduce::forward(op, a, xv, yv);
        Ok(())
    }

    fn reduce_backward(
        &mut self,
        op: ReduceOp,
        a: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        let (nx, ny) = (a.input_len(), a.output_len());
        let (d, [xv, yv, g]) = split(self.buf, r(dx, nx), [r(x, nx), r(y, ny), r(dy, ny)])?;
        reduce::backward(op, a, xv, yv, g, d);
        Ok(())
    }

    fn softmax(&mut self, log: bool, a: Axis3, x: usize, y: usize) -> Result<()> {
        let n = a.input_len();
        let (yv, [xv]) = split(self.buf, r(y, n), [r(x, n)])?;
        softmax::forward(log, a, xv, yv);
        Ok(())
    }

    fn softmax_backward(
        &mut self,
        log: bool,
        a: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        let n = a.input_len();
        let (d, [yv, g]) = split(self.buf, r(dx, n), [r(y, n), r(dy, n)])?;
        softmax::backward(log, a, yv, g, d);
        Ok(())
    }

    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        let (yv, [pv, tv]) = split(self.buf, r(y, 1), [p.range(), t.range()])?;
        let v = loss::forward(op, classes, pv, tv)?;
        if let Some(s) = yv.first_mut() {
            *s = v;
        }
        Ok(())
    }

    fn loss_backward(
        &mut self,
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        let n = if lhs { p.len() } else { t.len() };
        let (d, [pv, tv, g]) = split(self.buf, r(dx, n), [p.range(), t.range(), r(dy, 1)])?;
        let g = g.first().copied().unwrap_or(T::ZERO);
        loss::backward(op, lhs, classes, pv, tv, g, d)
    }

    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        let n = u.len;
        match u.momentum_buf {
            Some(m) => {
                let [p, g, buf] = split_mut(self.buf, [r(u.param, n), r(u.grad, n), r(m, n)])?;
                optim::sgd_kernel(u, p, g, Some(buf));
            }
            None => {
                let [p, g] = split_mut(self.buf, [r(u.param, n), r(u.grad, n)])?;
                optim::sgd_kernel(u, p, g, None);
            }
        }
        Ok(())
    }

    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        let n = u.len;
        match u.vmax {
            Some(vm) => {
                let [p, g, m, v, vm] = split_mut(
                    self.buf,
                    [r(u.param, n), r(u.grad, n), r(u.m, n), r(u.v, n), r(vm, n)],
                )?;
                optim::amsgrad_kernel(u, p, g, m, v, vm);
            }
            None => {
                let [p, g, m, v] = split_mut(
                    self.buf,
                    [r(u.param, n), r(u.grad, n), r(u.m, n), r(u.v, n)],
                )?;
                optim::adam_kernel(u, p, g, m, v);
            }
        }
        Ok(())
    }

    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        let (p, g, sq, avg, buf) = split_rms(self.buf, u)?;
        optim::rms_kernel(u, p, g, sq, avg, buf);
        Ok(())
    }

    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        let n = self.buf.len();
        let s = self
            .buf
            .get(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?;
        Ok(s.iter().map(|&v| v.to_f64() * v.to_f64()).sum())
    }

    fn scale(&mut self, offset: usize, len: usize, factor: T) -> Result<()> {
        let n = self.buf.len();
        for v in self
            .buf
            .get_mut(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?
        {
            *v *= factor;
        }
        Ok(())
    }
}

/// A backend that stores nothing and computes nothing: a dry run of a step on it measures the
/// arena a step needs ([`crate::plan::measure`]).
pub struct Meter<T: Float> {
    align: usize,
    _t: core::marker::PhantomData<T>,
}

impl<T: Float> Default for Meter<T> {
    fn default() -> Self {
        Meter::aligned(1)
    }
}

impl<T: Float> Meter<T> {
    /// A meter whose allocations start at multiples of `align` elements, as a backend with
    /// that [`Backend::align`] places them: its dry runs measure that backend's arena, padding
    /// included.
    pub fn aligned(align: usize) -> Self {
        Meter {
            align,
            _t: core::marker::PhantomData,
        }
    }
}

impl<T: Float> Backend for Meter<T> {
    type Elem = T;

    fn computes(&self) -> bool {
        false
    }

    fn align(&self) -> usize {
        self.align
    }

    fn capacity(&self) -> usize {
        u32::MAX as usize
    }
    fn write(&mut self, _: usize, _: &[T]) -> Result<()> {
        Ok(())
    }
    fn read(&self, _: usize, dst: &mut [T]) -> Result<()> {
        dst.fill(T::ZERO);
        Ok(())
    }
    fn fill(&mut self, _: usize, _: usize, _: T) -> Result<()> {
        Ok(())
    }
    fn unary(&mut self, _: UnaryOp, _: usize, _: usize, _: usize) -> Result<()> {
        Ok(())
    }
    fn unary_backward(
        &mut self,
        _: UnaryOp,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn binary(&mut self, _: BinaryOp, _: View, _: View, _: View) -> Result<()> {
        Ok(())
    }
    fn binary_backward(
        &mut self,
        _: BinaryOp,
        _: Side,
        _: View,
        _: View,
        _: View,
        _: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn gemm(&mut self, _: &Gemm) -> Result<()> {
        Ok(())
    }
    fn copy_strided(&mut self, _: &Shape, _: Strided, _: Strided, _: bool) -> Result<()> {
        Ok(())
    }
    fn reduce(&mut self, _: ReduceOp, _: Axis3, _: usize, _: usize) -> Result<()> {
        Ok(())
    }
    fn reduce_backward(
        &mut self,
        _: ReduceOp,
        _: Axis3,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn softmax(&mut self, _: bool, _: Axis3, _: usize, _: usize) -> Result<()> {
        Ok(())
    }
    fn softmax_backward(&mut self, _: bool, _: Axis3, _: usize, _: usize, _: usize) -> Result<()> {
        Ok(())
    }
    fn loss(&mut self, _: LossOp, _: usize, _: View, _: View, _: usize) -> Result<()> {
        Ok(())
    }
    fn loss_backward(
        &mut self,
        _: LossOp,
        _: bool,
        _: usize,
        _: View,
        _: View,
        _: usize,
        _: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn sgd(&mut self, _: &SgdUpdate) -> Result<()> {
        Ok(())
    }
    fn adam(&mut self, _: &AdamUpdate) -> Result<()> {
        Ok(())
    }
    fn rms(&mut self, _: &RmsUpdate) -> Result<()> {
        Ok(())
    }
    fn sum_squares(&mut self, _: usize, _: usize) -> Result<f64> {
        Ok(0.0)
    }
    fn scale(&mut self, _: usize, _: usize, _: T) -> Result<()> {
        Ok(())
    }
}
