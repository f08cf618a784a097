//! The multithreaded CPU backend: [`Parallel`].
//!
//! Same storage as the core's reference backend [`mote::Cpu`] (a caller's `&mut [T]`), same
//! checks, same errors; different kernels where they pay:
//!
//! - matrix products go through the `gemm` crate (packed, AVX2 or AVX-512 micro-kernels),
//!   split into blocks of C over the threads from about a million multiply-adds; small f32
//!   products (up to 2^14 multiply-adds: W-seed's, most of W-digits') run a register-blocked
//!   kernel of this crate with no per-call allocation (`small.rs`), tiny ones (below 2^9) the
//!   core's reference kernel, whose call costs nothing;
//! - convolutions in f32, on CPUs with AVX-512 or AVX2, run direct kernels over zero-padded
//!   image planes, with no im2col buffer (see `conv.rs`); in f64 they are im2col copies and
//!   products, as on `Cpu`;
//! - max and average pooling read each window in place (no im2col buffer; `pool.rs`), planes
//!   split over the threads, with `Cpu`'s results bit for bit;
//! - elementwise ops, reductions, softmax, losses, optimizer updates, fills and strided copies
//!   are split over the threads above a size threshold ([`PAR_MIN`] elements), in chunks
//!   that each run the core's own kernel, so that most results are bit for bit those of `Cpu`;
//!   below the threshold they call the core's kernels directly, with no thread hand-off (the
//!   small workloads are pure per-op overhead).
//!
//! Results equal `Cpu`'s exactly except for sums that are split over threads (a loss's value,
//! [`Backend::sum_squares`]), matrix products and direct convolutions (another summation
//! order), which agree to rounding. Reductions and softmax split over their independent blocks
//! only; loss gradients stay serial (one cheap pass).
//!
//! The threads are a team whose idle workers spin for a couple of milliseconds before they
//! sleep (`team.rs`), as OpenMP's do: a training step is a chain of short operations, and
//! waking a sleeping thread for each cost as much as splitting it saved. The team has one
//! worker fewer than rayon's global pool has threads ([`set_threads`]), the caller being the
//! last, and no more threads than the machine has cores (a spinning thread without a core of
//! its own would hold up the one it waits for).
//!
//! ```
//! use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Relu, Rng, Tape};
//! use mote_runtime::parallel::Parallel;
//!
//! let mut mem = vec![0f32; 4096];
//! let mut tape = Tape::<Parallel<f32>, 16>::with_backend(Parallel::new(&mut mem));
//! let mut rng = Rng::new(0);
//! let model = (Linear::new(&mut tape, 4, 8, &mut rng)?, Relu, Linear::new(&mut tape, 8, 1, &mut rng)?);
//! let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
//! let start = tape.mark();
//! for _ in 0..3 {
//!     tape.rewind(start)?;
//!     let x = tape.input(&[2, 4], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])?;
//!     let y = tape.input(&[2, 1], &[1.0, 0.0])?;
//!     let pred = model.forward(&mut tape, x)?;
//!     let loss = tape.mse(pred, y)?;
//!     tape.backward(loss)?;
//!     opt.step(&mut tape)?;
//! }
//! # Ok::<(), mote::Error>(())
//! ```

/// The `c`-element chunks of an optional buffer, each as `Some`; `None` for ever without one
/// (so that zipping with the chunks of the buffers that are there gives them all).
fn opt_chunks<T>(s: Option<&mut [T]>, c: usize) -> impl Iterator<Item = Option<&mut [T]>> {
    let mut it = s.map(|s| s.chunks_mut(c));
    std::iter::from_fn(move || match it.as_mut() {
        Some(chunks) => chunks.next().map(Some),
        None => Some(None),
    })
}

#[cfg(target_arch = "x86_64")]
mod conv;
mod gemm;
#[cfg(target_arch = "x86_64")]
mod isa;
mod kernels;
mod pool;
#[cfg(target_arch = "x86_64")]
mod small;
mod team;
mod xent;

use std::ops::Range;

use mote::backend::{split, split_mut, split_rms, View};
use mote::ops::binary::{self, BinaryOp, Side};
#[cfg(target_arch = "x86_64")]
use mote::ops::conv::ConvCall;
use mote::ops::conv::PoolCall;
use mote::ops::loss::{self, LossOp};
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{self, Axis3, ReduceOp};
use mote::ops::softmax;
use mote::ops::unary::{self, UnaryOp};
use mote::optim::{self, AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Error, Float, HostBackend, Result, Shape};

/// Runs `f` with AVX2 and FMA enabled where the CPU has them: the core's kernels are generic,
/// so they are compiled in this crate and inlined here, where the compiler may then use 256-bit
/// vectors (the default x86-64 target allows only SSE2). Results are unchanged: vector and
/// scalar IEEE arithmetic round the same, and Rust never fuses a multiply and an add by itself.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `s` as f32s, when `T` is f32.
fn as_f32<T: 'static>(s: &[T]) -> Option<&[f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (same type, so same size, alignment and validity).
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
    } else {
        None
    }
}

/// `s` as f32s, when `T` is f32.
fn as_f32_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: as in `as_f32`; the borrow is unique and lasts as long as `s`'s.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
    } else {
        None
    }
}

/// Elements below which an op runs serially on the calling thread. Handing work to the team's
/// spinning workers costs about a microsecond, about what a memory-bound pass over a few
/// thousand floats takes; waking a sleeping thread costs 30-100 us on the 2-core virtual
/// machines measured.
pub const PAR_MIN: usize = 1 << 15;

/// The most threads [`set_threads`] starts: far more than any machine's cores (more threads
/// than cores only share them), and few enough that a mistyped count does not stall the
/// machine starting them.
pub const MAX_THREADS: usize = 1024;

/// Sets the number of threads of rayon's global pool, which data-parallel replicas run on and
/// which sizes [`Parallel`]'s team (one worker fewer: the caller is the last).
///
/// The pool can be configured once per process, before its first use (a [`Parallel::new`] or
/// a [`threads`] call starts it with one thread per core); asking again for the count it
/// already has is fine.
///
/// # Errors
/// When `n` is 0 or above [`MAX_THREADS`], or the pool already runs with another count.
pub fn set_threads(n: usize) -> std::result::Result<(), String> {
    if n == 0 {
        return Err("the thread count must be at least 1".to_string());
    }
    if n > MAX_THREADS {
        return Err(format!(
            "at most {MAX_THREADS} threads (this machine has {} cores)",
            std::thread::available_parallelism().map_or(1, |c| c.get())
        ));
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(_) => Err(format!(
            "the thread pool already runs with {} threads and cannot be resized to {n}: set \
             the thread count before any parallel work",
            rayon::current_num_threads()
        )),
    }
}

/// The number of threads parallel work uses (rayon's current pool, the global one outside any
/// pool; starts the global pool with its default size if nothing has yet).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Which kernels [`Parallel`]'s convolutions run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvKernels {
    /// Direct kernels with the widest vectors the CPU has (AVX-512, else AVX2 and FMA) where
    /// they apply (f32; a weight gradient with at least 8 output channels per group), im2col
    /// copies and matrix products elsewhere.
    #[default]
    Best,
    /// Direct kernels with at most AVX2 and FMA, as on a CPU without AVX-512; the small f32
    /// matrix products (`small.rs`) too.
    Avx2,
    /// im2col copies and matrix products everywhere, as on the reference backend.
    Im2col,
}

/// The multithreaded CPU backend over a caller's slice (see the [module docs](self)).
pub struct Parallel<'a, T: Float> {
    buf: &'a mut [T],
    threads: usize,
    scratch: xent::Scratch,
    /// Products computed transposed (`gemm.rs`) write `C^T` here: kept between calls, so that
    /// a training step's products do not allocate (and fault in) fresh pages every time.
    gemm_scratch: Vec<T>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    conv: ConvKernels,
}

impl<'a, T: Float> Parallel<'a, T> {
    /// A backend over `buf`, splitting work into chunks for as many threads as rayon's current
    /// pool has (the global one outside any pool), run over the team of the global pool's size.
    /// Called on one of rayon's own threads (where data-parallel replicas run), the chunks run
    /// on that thread alone: the pool's threads already occupy the cores.
    pub fn new(buf: &'a mut [T]) -> Self {
        Parallel {
            buf,
            threads: threads(),
            scratch: xent::Scratch::default(),
            gemm_scratch: Vec::new(),
            conv: ConvKernels::Best,
        }
    }

    /// The backend with its convolutions computed by `kernels` (to compare them, or to test
    /// the AVX2 kernels on a CPU with AVX-512; [`ConvKernels::Avx2`] holds the small matrix
    /// products to AVX2 as well).
    pub fn with_conv_kernels(self, kernels: ConvKernels) -> Self {
        Parallel {
            conv: kernels,
            ..self
        }
    }

    /// A backend over `buf` that splits no work over threads (`threads` 1) or at most over
    /// `threads`: its SIMD kernels on the calling thread, for example one per data-parallel
    /// replica, where the replicas are the threads.
    pub fn with_threads(buf: &'a mut [T], threads: usize) -> Self {
        Parallel {
            threads: threads.clamp(1, self::threads().max(1)),
            ..Parallel::new(buf)
        }
    }

    /// The number of threads this backend splits work over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The chunk length to split `len` elements into, or `None` to stay serial. `min` is the
    /// size below which splitting does not pay for this op.
    fn grain(&self, len: usize, min: usize) -> Option<usize> {
        if self.threads < 2 || len < min {
            return None;
        }
        // A few chunks per thread so that a thread slowed by another process is helped out.
        let chunk = len.div_ceil(self.threads * 4).max(min / 4).max(1);
        Some(chunk.next_multiple_of(16))
    }
}

/// [`unary::backward`], with ReLU's written as a select instead of a conditional add: the
/// same values (`dx + dy` where `x > 0`, `dx` elsewhere), but no branch to mispredict on every
/// other element, and the compiler vectorises it.
#[inline(always)]
fn unary_backward<T: Float>(op: UnaryOp, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    match op {
        UnaryOp::Relu => {
            for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                let sum = *d + g;
                *d = if x > T::ZERO { sum } else { *d };
            }
        }
        _ => unary::backward(op, x, y, dy, dx),
    }
}

fn r(o: usize, n: usize) -> Range<usize> {
    o..o.saturating_add(n)
}

fn out_of_range(end: usize, len: usize) -> Error {
    Error::IndexOutOfRange {
        op: "arena",
        index: end,
        bound: len,
    }
}

/// How much a unary op costs per element, as a threshold: transcendental ones pay for threads
/// sooner.
fn unary_min(op: UnaryOp) -> usize {
    match op {
        UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Pow(_)
        | UnaryOp::Sigmoid
        | UnaryOp::Tanh
        | UnaryOp::Gelu
        | UnaryOp::Silu
        | UnaryOp::Elu(_)
        | UnaryOp::Softplus
        | UnaryOp::GeluErf => PAR_MIN / 8,
        _ => PAR_MIN,
    }
}

impl<T: Float> HostBackend for Parallel<'_, T> {
    fn storage(&self) -> &[T] {
        self.buf
    }
    fn storage_mut(&mut self) -> &mut [T] {
        self.buf
    }
}

impl<T: Float> Backend for Parallel<'_, T> {
    type Elem = T;

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn write(&mut self, offset: usize, src: &[T]) -> Result<()> {
        let len = self.buf.len();
        let grain = self.grain(src.len(), PAR_MIN);
        let dst = self
            .buf
            .get_mut(r(offset, src.len()))
            .ok_or(out_of_range(offset.saturating_add(src.len()), len))?;
        match grain {
            Some(c) => team::for_each(dst.chunks_mut(c).zip(src.chunks(c)), |(d, s)| {
                d.copy_from_slice(s)
            }),
            None => dst.copy_from_slice(src),
        }
        Ok(())
    }

    fn read(&self, offset: usize, dst: &mut [T]) -> Result<()> {
        let src = self.buf.get(r(offset, dst.len())).ok_or(out_of_range(
            offset.saturating_add(dst.len()),
            self.buf.len(),
        ))?;
        match self.grain(dst.len(), PAR_MIN) {
            Some(c) => team::for_each(dst.chunks_mut(c).zip(src.chunks(c)), |(d, s)| {
                d.copy_from_slice(s)
            }),
            None => dst.copy_from_slice(src),
        }
        Ok(())
    }

    fn fill(&mut self, offset: usize, len: usize, value: T) -> Result<()> {
        let n = self.buf.len();
        let grain = self.grain(len, PAR_MIN * 2);
        let dst = self
            .buf
            .get_mut(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?;
        // A constant +0.0 lets the compiler call memset (gradients are zeroed every step).
        let zero = value == T::ZERO && value.to_f64().is_sign_positive();
        let fill = |d: &mut [T]| {
            if zero {
                d.fill(T::ZERO);
            } else {
                d.fill(value);
            }
        };
        match grain {
            Some(c) => team::for_each(dst.chunks_mut(c), fill),
            None => fill(dst),
        }
        Ok(())
    }

    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        let grain = self.grain(len, unary_min(op));
        let (y, [x]) = split(self.buf, r(y, len), [r(x, len)])?;
        match grain {
            Some(c) => team::for_each(y.chunks_mut(c).zip(x.chunks(c)), |(y, x)| {
                simd(|| unary::forward(op, x, y))
            }),
            None => simd(|| unary::forward(op, x, y)),
        }
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
        let grain = self.grain(len, unary_min(op));
        let (dx, [x, y, dy]) = split(self.buf, r(dx, len), [r(x, len), r(y, len), r(dy, len)])?;
        match grain {
            Some(c) => team::for_each(
                dx.chunks_mut(c)
                    .zip(x.chunks(c))
                    .zip(y.chunks(c).zip(dy.chunks(c))),
                |((dx, x), (y, dy))| simd(|| unary_backward(op, x, y, dy, dx)),
            ),
            None => simd(|| unary_backward(op, x, y, dy, dx)),
        }
        Ok(())
    }

    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        let par = self.grain(y.len(), PAR_MIN).is_some();
        let threads = self.threads;
        let (yv, [av, bv]) = split(self.buf, y.range(), [a.range(), b.range()])?;
        if par {
            if let Some(rows) = kernels::RowSplit::new(&y.shape, threads) {
                return rows.binary(op, av, &a.shape, bv, &b.shape, yv);
            }
        }
        simd(|| binary::forward(op, av, &a.shape, bv, &b.shape, yv, &y.shape));
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
        // Parallel only when the operand is not broadcast (its gradient is then elementwise).
        let par = n == dy.len() && self.grain(dy.len(), PAR_MIN).is_some();
        let threads = self.threads;
        let (d, [av, bv, g]) = split(self.buf, r(dx, n), [a.range(), b.range(), dy.range()])?;
        if par {
            if let Some(rows) = kernels::RowSplit::new(&dy.shape, threads) {
                return rows.binary_backward(op, side, av, &a.shape, bv, &b.shape, g, d);
            }
        }
        simd(|| binary::backward(op, side, av, &a.shape, bv, &b.shape, g, &dy.shape, d));
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        let (sa, sb, sc) = g.spans();
        let threads = self.threads;
        let (c, [a, b]) = split(self.buf, r(g.c, sc), [r(g.a, sa), r(g.b, sb)])?;
        let avx512 = self.conv != ConvKernels::Avx2;
        gemm::gemm(g, a, b, c, threads, &mut self.gemm_scratch, avx512);
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    fn conv(&mut self, call: &ConvCall) -> Result<bool> {
        match self.conv {
            ConvKernels::Best => conv::run(self.buf, call, self.threads, true),
            ConvKernels::Avx2 => conv::run(self.buf, call, self.threads, false),
            ConvKernels::Im2col => Ok(false),
        }
    }

    fn pool(&mut self, call: &PoolCall) -> Result<bool> {
        let [xl, _] = call.lens()?;
        // Only what the tape asks for (windows, strides and padding up to 31, padding up to
        // half the window): the work grows with the window, not with the tensors, and a call
        // beyond those bounds is left to the core's path, whose buffer the arena bounds.
        let tape_sized = (0..2).all(|d| {
            call.kernel[d] <= 31 && call.stride[d] <= 31 && call.padding[d] * 2 <= call.kernel[d]
        });
        if !tape_sized {
            return Ok(false);
        }
        let tasks = match self.grain(xl, PAR_MIN) {
            Some(_) => self.threads * 4,
            None => 1,
        };
        pool::run(self.buf, call, tasks)
    }

    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        let par = self.grain(space.numel(), PAR_MIN * 8).is_some();
        let threads = self.threads;
        let (d, [s]) = split(
            self.buf,
            r(dst.offset, dst.span(space)),
            [r(src.offset, src.span(space))],
        )?;
        if par && kernels::copy_par(space, s, src.strides, d, dst.strides, accumulate, threads) {
            return Ok(());
        }
        simd(|| kernels::copy(space, s, src.strides, d, dst.strides, accumulate));
        Ok(())
    }

    fn reduce(&mut self, op: ReduceOp, a: Axis3, x: usize, y: usize) -> Result<()> {
        let par = self.grain(a.input_len(), PAR_MIN).is_some() && !a.is_degenerate();
        let threads = self.threads;
        let (yv, [xv]) = split(self.buf, r(y, a.output_len()), [r(x, a.input_len())])?;
        let done = if par {
            kernels::reduce_par(op, a, xv, yv, threads)
                || kernels::reduce_all_par(op, a, xv, yv, threads)
        } else {
            kernels::reduce_all_serial(op, a, xv, yv)
        };
        if !done {
            simd(|| reduce::forward(op, a, xv, yv));
        }
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
        let par = self.grain(a.input_len(), PAR_MIN).is_some() && !a.is_degenerate();
        let threads = self.threads;
        let (nx, ny) = (a.input_len(), a.output_len());
        let (d, [xv, yv, g]) = split(self.buf, r(dx, nx), [r(x, nx), r(y, ny), r(dy, ny)])?;
        let done = par
            && (kernels::reduce_backward_par(op, a, xv, yv, g, d, threads)
                || kernels::reduce_all_backward_par(op, a, g, d, threads));
        if !done {
            simd(|| reduce::backward(op, a, xv, yv, g, d));
        }
        Ok(())
    }

    fn softmax(&mut self, log: bool, a: Axis3, x: usize, y: usize) -> Result<()> {
        let n = a.input_len();
        let par = self.grain(n, PAR_MIN / 8).is_some() && a.outer > 1 && !a.is_degenerate();
        let threads = self.threads;
        let (yv, [xv]) = split(self.buf, r(y, n), [r(x, n)])?;
        if par {
            let block = a.n * a.inner;
            let per = a.outer.div_ceil(threads * 4) * block;
            team::for_each(yv.chunks_mut(per).zip(xv.chunks(per)), |(y, x)| {
                let part = Axis3 {
                    outer: y.len() / block,
                    ..a
                };
                simd(|| softmax::forward(log, part, x, y));
            });
        } else {
            simd(|| softmax::forward(log, a, xv, yv));
        }
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
        let par = self.grain(n, PAR_MIN / 8).is_some() && a.outer > 1 && !a.is_degenerate();
        let threads = self.threads;
        let (d, [yv, g]) = split(self.buf, r(dx, n), [r(y, n), r(dy, n)])?;
        if par {
            let block = a.n * a.inner;
            let per = a.outer.div_ceil(threads * 4) * block;
            team::for_each(
                d.chunks_mut(per).zip(yv.chunks(per).zip(g.chunks(per))),
                |(d, (y, g))| {
                    let part = Axis3 {
                        outer: d.len() / block,
                        ..a
                    };
                    simd(|| softmax::backward(log, part, y, g, d));
                },
            );
        } else {
            simd(|| softmax::backward(log, a, yv, g, d));
        }
        Ok(())
    }

    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        let par = self.grain(p.len(), PAR_MIN).is_some();
        let threads = self.threads;
        let (yv, [pv, tv]) = split(self.buf, r(y, 1), [p.range(), t.range()])?;
        let scratch = &mut self.scratch;
        let fast = if op.takes_labels() {
            xent::forward_best(scratch, op.smoothing(), classes, pv, tv)
        } else {
            None
        };
        let v = if let Some(v) = fast {
            v?
        } else if par {
            kernels::loss_par(op, classes, pv, tv, threads)?
        } else {
            simd(|| loss::forward(op, classes, pv, tv))?
        };
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
        // Serial: a loss's gradient is one pass over the predictions (a fraction of a percent
        // of any workload's step), and its scale comes from the whole length.
        let n = if lhs { p.len() } else { t.len() };
        let (d, [pv, tv, g]) = split(self.buf, r(dx, n), [p.range(), t.range(), r(dy, 1)])?;
        let g = g.first().copied().unwrap_or(T::ZERO);
        if op.takes_labels() && lhs {
            let scratch = &mut self.scratch;
            if let Some(r) = xent::backward_best(scratch, op.smoothing(), classes, pv, tv, g, d) {
                return r;
            }
        }
        simd(|| loss::backward(op, lhs, classes, pv, tv, g, d))
    }

    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        let n = u.len;
        let grain = self.grain(n, PAR_MIN);
        match u.momentum_buf {
            Some(m) => {
                let [p, g, buf] = split_mut(self.buf, [r(u.param, n), r(u.grad, n), r(m, n)])?;
                match grain {
                    Some(c) => team::for_each(
                        p.chunks_mut(c).zip(g.chunks(c)).zip(buf.chunks_mut(c)),
                        |((p, g), b)| simd(|| optim::sgd_kernel(u, p, g, Some(b))),
                    ),
                    None => simd(|| optim::sgd_kernel(u, p, g, Some(buf))),
                }
            }
            None => {
                let [p, g] = split_mut(self.buf, [r(u.param, n), r(u.grad, n)])?;
                match grain {
                    Some(c) => team::for_each(p.chunks_mut(c).zip(g.chunks(c)), |(p, g)| {
                        simd(|| optim::sgd_kernel(u, p, g, None))
                    }),
                    None => simd(|| optim::sgd_kernel(u, p, g, None)),
                }
            }
        }
        Ok(())
    }

    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        let n = u.len;
        let grain = self.grain(n, PAR_MIN);
        if let Some(vm) = u.vmax {
            // AMSGrad: the reference kernel, split over the team as Adam's.
            let [p, g, m, v, vm] = split_mut(
                self.buf,
                [r(u.param, n), r(u.grad, n), r(u.m, n), r(u.v, n), r(vm, n)],
            )?;
            match grain {
                Some(c) => team::for_each(
                    p.chunks_mut(c)
                        .zip(g.chunks(c))
                        .zip(m.chunks_mut(c).zip(v.chunks_mut(c)).zip(vm.chunks_mut(c))),
                    |((p, g), ((m, v), vm))| simd(|| optim::amsgrad_kernel(u, p, g, m, v, vm)),
                ),
                None => simd(|| optim::amsgrad_kernel(u, p, g, m, v, vm)),
            }
            return Ok(());
        }
        let [p, g, m, v] = split_mut(
            self.buf,
            [r(u.param, n), r(u.grad, n), r(u.m, n), r(u.v, n)],
        )?;
        match grain {
            Some(c) => team::for_each(
                p.chunks_mut(c)
                    .zip(g.chunks(c))
                    .zip(m.chunks_mut(c).zip(v.chunks_mut(c))),
                |((p, g), (m, v))| simd(|| optim::adam_kernel(u, p, g, m, v)),
            ),
            None => simd(|| optim::adam_kernel(u, p, g, m, v)),
        }
        Ok(())
    }

    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        let grain = self.grain(u.len, PAR_MIN);
        let (p, g, sq, avg, buf) = split_rms(self.buf, u)?;
        match grain {
            Some(c) => team::for_each(
                p.chunks_mut(c)
                    .zip(g.chunks(c))
                    .zip(sq.chunks_mut(c))
                    .zip(opt_chunks(avg, c).zip(opt_chunks(buf, c))),
                |(((p, g), sq), (avg, buf))| simd(|| optim::rms_kernel(u, p, g, sq, avg, buf)),
            ),
            None => simd(|| optim::rms_kernel(u, p, g, sq, avg, buf)),
        }
        Ok(())
    }

    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        let n = self.buf.len();
        let grain = self.grain(len, PAR_MIN);
        let s = self
            .buf
            .get(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?;
        let sq = |s: &[T]| -> f64 { s.iter().map(|&v| v.to_f64() * v.to_f64()).sum() };
        Ok(match grain {
            Some(c) => team::map(s.chunks(c), sq).iter().sum(),
            None => sq(s),
        })
    }

    fn scale(&mut self, offset: usize, len: usize, factor: T) -> Result<()> {
        let n = self.buf.len();
        let grain = self.grain(len, PAR_MIN);
        let s = self
            .buf
            .get_mut(r(offset, len))
            .ok_or(out_of_range(offset.saturating_add(len), n))?;
        let f = |s: &mut [T]| {
            for v in s {
                *v *= factor;
            }
        };
        match grain {
            Some(c) => team::for_each(s.chunks_mut(c), f),
            None => f(s),
        }
        Ok(())
    }
}
