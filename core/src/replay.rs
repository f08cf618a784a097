//! Whole-step replay: record the backend calls of one training step, then re-run them without
//! the tape.
//!
//! A training loop whose steps all take the same code path over the same shapes makes the same
//! backend calls, at the same arena offsets, every step: only the data differs. [`Replay`] wraps
//! any [`Backend`]: while it records, it runs every call on the backend it wraps and also
//! appends the call, compactly encoded, to a fixed-capacity list (`BYTES` bytes); later,
//! [`Replay::replay`] re-runs the list as it is, with none of the tape's bookkeeping (handle
//! checks, node records, shape inference, the backward walk). On a microcontroller that is most
//! of a small network's step; on a GPU it is the same idea as a captured graph.
//!
//! ```
//! use mote::replay::Replay;
//! use mote::{Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Sigmoid, Tape};
//!
//! let mut mem = [0f32; 256];
//! let mut tape = Tape::<_, 16>::with_backend(Replay::<_, 256>::new(Cpu::new(&mut mem)));
//! let w1 = [0.999, -0.909, 0.981, 0.735, -0.972, 0.517];
//! let l1 = Linear::from_weights(&mut tape, 2, 3, &w1, Some(&[0.0; 3]))?;
//! let l2 = Linear::from_weights(&mut tape, 3, 1, &[0.416, -0.47, 0.26], Some(&[0.0]))?;
//! let model = (l1, Sigmoid, l2, Sigmoid);
//! let mut opt = Adam::new(&mut tape, AdamConfig { lr: 0.1, ..AdamConfig::default() })?;
//! let x = tape.input(&[4, 2], &[0., 0., 0., 1., 1., 0., 1., 1.])?;
//! let t = tape.input(&[4, 1], &[0., 1., 1., 0.])?;
//! let start = tape.mark();
//! let mut step = |tape: &mut Tape<_, 16>, opt: &mut Adam| -> mote::Result<mote::Var> {
//!     tape.rewind(start)?;
//!     let y = model.forward(tape, x)?;
//!     let loss = tape.mse(y, t)?;
//!     tape.backward(loss)?;
//!     opt.step(tape)?;
//!     Ok(loss)
//! };
//! step(&mut tape, &mut opt)?;               // step 1, eager: gradients exist from here on
//! tape.backend_mut().record();              // step 2, eager and recorded
//! let loss = step(&mut tape, &mut opt)?;
//! tape.backend_mut().stop()?;
//! for _ in 2..100 {
//!     tape.backend_mut().replay_adam(&mut opt)?; // steps 3 to 100
//! }
//! assert!(tape.item(loss)? < 0.25);          // the recorded step's handles stay readable
//! # Ok::<(), mote::Error>(())
//! ```
//!
//! # When a replay is valid
//!
//! A replay re-runs the recorded step exactly: the same kernels, on the same arena offsets and
//! shapes, in the same order. It is equal to running the step eagerly again when, and only
//! when, the eager step would make the same calls:
//!
//! - the same code path with the same shapes (no branch on data, no change of batch size or of
//!   the set of trainable parameters, no `no_grad` switch) and the same arena layout: rewind to
//!   the same mark before the recorded step, and do not create or free anything below it
//!   afterwards;
//! - **record a steady-state step, not the first one**, and start recording before the step's
//!   [`crate::Tape::rewind`]: the rewind zeroes the parameters' gradients (recorded fills), but
//!   only once a backward pass has dirtied them, so the first step makes fewer calls than the
//!   later ones (record the second step, or any later one);
//! - data from the host is **not** recorded: [`Backend::write`] (which [`crate::Tape::input`]
//!   and [`crate::Tape::labels`] use) and [`Backend::read`] pass through while recording and are
//!   not part of the replay. Write each step's new inputs yourself before each replay, in
//!   place: [`crate::Tape::write`] on the handles of the recorded step (they stay valid while
//!   you do not rewind), or the backend's own `write`. Constant inputs made below the mark need
//!   nothing. [`Backend::fill`] (constants, zeroed gradients) is recorded;
//! - the optimizer: Adam's and SGD's update calls are recorded with their arena offsets only.
//!   [`Replay::replay_adam`] / [`Replay::replay_sgd`] take the settings of the optimizer you
//!   pass (so a learning-rate schedule through `set_lr` is followed), advance its step count and
//!   recompute the bias corrections of the new step (`1 - beta^t`): all update calls of the
//!   recording must come from that one optimizer. [`Replay::replay`] refuses a recording with
//!   update calls;
//! - calls whose effect depends on values read back to the host cannot be replayed:
//!   [`Backend::sum_squares`] ([`crate::clip_grad_norm`]) makes the recording fail at
//!   [`Replay::stop`].
//!
//! After a replay, the arena holds what the eager step would have left there: the tape's
//! handles of the recorded step (its loss, its outputs, the parameters' gradients) read the
//! replayed step's values.
//!
//! Outside recording and replay, `Replay` adds one flag test per call to the backend it wraps.

use crate::backend::{Backend, HostBackend, View};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::binary::{BinaryOp, Side};
use crate::ops::loss::LossOp;
use crate::ops::matmul::Gemm;
use crate::ops::movement::Strided;
use crate::ops::reduce::{Axis3, ReduceOp};
use crate::ops::unary::UnaryOp;
use crate::optim::{Adam, AdamUpdate, Sgd, SgdUpdate};
use crate::shape::{Shape, MAX_RANK};

/// Where a [`Replay`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing recorded (or a failed recording).
    Empty,
    /// Recording.
    Recording,
    /// Recording, but the list is full.
    Overflow,
    /// Recording, but a call that cannot be replayed was made.
    Unsupported(&'static str),
    /// A recording is ready to replay.
    Ready,
}

/// Call tags (the low 4 bits of a call's head; the bits above carry small fields).
mod tag {
    pub const FILL: u32 = 0;
    pub const UNARY: u32 = 1;
    pub const UNARY_BACKWARD: u32 = 2;
    pub const BINARY: u32 = 3;
    pub const BINARY_BACKWARD: u32 = 4;
    pub const GEMM: u32 = 5;
    pub const COPY: u32 = 6;
    pub const REDUCE: u32 = 7;
    pub const REDUCE_BACKWARD: u32 = 8;
    pub const SOFTMAX: u32 = 9;
    pub const SOFTMAX_BACKWARD: u32 = 10;
    pub const LOSS: u32 = 11;
    pub const LOSS_BACKWARD: u32 = 12;
    pub const SGD: u32 = 13;
    pub const ADAM: u32 = 14;
    pub const SCALE: u32 = 15;
}

/// A backend that records the calls of one step and replays them (see the [module
/// docs](self) for when a replay equals the eager step).
///
/// `BYTES` is the capacity of the call list in bytes. Every number of a call (offsets, sizes,
/// shapes, small fields) is stored as a variable-length integer, 7 bits a byte, so a call of a
/// small network takes 3 to 20 bytes (when offsets are below 128: a zero fill 3, an elementwise
/// op 6, a GEMM 11, an Adam update 6); [`Replay::bytes_used`] after a recording gives the exact
/// need (XOR-MCU's step: 31 calls in 233 bytes).
pub struct Replay<B: Backend, const BYTES: usize> {
    inner: B,
    bytes: heapless::Vec<u8, BYTES>,
    state: State,
    calls: u32,
    has_adam: bool,
    has_sgd: bool,
}

impl<B: Backend, const BYTES: usize> Replay<B, BYTES> {
    /// Wraps `inner`; nothing is recorded until [`Replay::record`].
    pub fn new(inner: B) -> Self {
        Replay {
            inner,
            bytes: heapless::Vec::new(),
            state: State::Empty,
            calls: 0,
            has_adam: false,
            has_sgd: false,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably (calls made on it directly are never recorded).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Starts recording (dropping any earlier recording): every following call runs and is
    /// appended to the list, until [`Replay::stop`].
    pub fn record(&mut self) {
        self.bytes.clear();
        self.calls = 0;
        self.has_adam = false;
        self.has_sgd = false;
        self.state = State::Recording;
    }

    /// Whether a recording is in progress.
    pub fn is_recording(&self) -> bool {
        matches!(
            self.state,
            State::Recording | State::Overflow | State::Unsupported(_)
        )
    }

    /// Whether a recording is ready to replay.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Ends the recording; returns the number of calls recorded.
    ///
    /// # Errors
    /// [`Error::TapeFull`] (with `capacity` = `BYTES`) when the calls did not fit in `BYTES`
    /// bytes; [`Error::InvalidArgument`] when a call that cannot be replayed was made, or when
    /// no recording was in progress. The recording is dropped on error.
    pub fn stop(&mut self) -> Result<usize> {
        let state = self.state;
        self.state = State::Empty;
        match state {
            State::Recording => {
                self.state = State::Ready;
                Ok(self.calls as usize)
            }
            State::Overflow => Err(Error::TapeFull { capacity: BYTES }),
            State::Unsupported(what) => Err(Error::InvalidArgument { what }),
            State::Empty | State::Ready => Err(Error::InvalidArgument {
                what: "Replay::stop without Replay::record",
            }),
        }
    }

    /// Drops the recording.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.calls = 0;
        self.state = State::Empty;
    }

    /// Calls in the recording.
    pub fn calls(&self) -> usize {
        self.calls as usize
    }

    /// Bytes of the list in use (the `BYTES` a recording needs).
    pub fn bytes_used(&self) -> usize {
        self.bytes.len()
    }

    /// Re-runs the recorded step (one without optimizer updates: a forward and backward pass,
    /// gradient accumulation).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when nothing is ready to replay or the recording holds
    /// optimizer updates (use [`Replay::replay_adam`] or [`Replay::replay_sgd`]); any error of
    /// the wrapped backend (the replay stops at the failing call).
    pub fn replay(&mut self) -> Result<()> {
        if self.has_adam || self.has_sgd {
            return Err(Error::InvalidArgument {
                what: "the recording holds optimizer updates: replay it with its optimizer",
            });
        }
        self.run(None, None)
    }

    /// Re-runs the recorded step, whose update calls came from `adam`: advances `adam` by one
    /// step (as [`crate::Optimizer::step`] would) and gives every recorded update its current
    /// settings and the new step's bias corrections.
    ///
    /// # Errors
    /// As [`Replay::replay`]; [`Error::InvalidArgument`] when the recording holds SGD updates.
    pub fn replay_adam(&mut self, adam: &mut Adam) -> Result<()> {
        if self.has_sgd {
            return Err(Error::InvalidArgument {
                what: "the recording holds SGD updates, not Adam's",
            });
        }
        self.ready()?;
        let u = adam.next_update();
        self.run(Some(&u), None)
    }

    /// Re-runs the recorded step, whose update calls came from `sgd`: advances `sgd` by one
    /// step and gives every recorded update its current settings.
    ///
    /// # Errors
    /// As [`Replay::replay`]; [`Error::InvalidArgument`] when the recording holds Adam updates.
    pub fn replay_sgd(&mut self, sgd: &mut Sgd) -> Result<()> {
        if self.has_adam {
            return Err(Error::InvalidArgument {
                what: "the recording holds Adam updates, not SGD's",
            });
        }
        self.ready()?;
        let u = sgd.next_update();
        self.run(None, Some(&u))
    }

    fn ready(&self) -> Result<()> {
        if self.state == State::Ready {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: "nothing recorded to replay",
            })
        }
    }

    #[inline(never)]
    fn run(&mut self, adam: Option<&AdamUpdate>, sgd: Option<&SgdUpdate>) -> Result<()> {
        self.ready()?;
        let Replay { inner, bytes, .. } = self;
        // One copy of each template: the calls overwrite only the offsets and the length.
        let (mut adam_u, mut sgd_u) = (adam.copied(), sgd.copied());
        let mut c = Cursor {
            it: bytes.iter(),
            bad: false,
        };
        while !c.done() {
            let head = c.w();
            let (t, f) = (head & 0xf, head >> 4);
            match t {
                tag::FILL => {
                    let (o, n) = (c.u(), c.u());
                    // Zero and one (zeroed gradients, the loss's seed) need no conversion.
                    let v = match f {
                        0 => B::Elem::ZERO,
                        1 => B::Elem::ONE,
                        _ => B::Elem::from_f64(c.f64()),
                    };
                    c.ok()?;
                    inner.fill(o, n, v)?;
                }
                tag::UNARY => {
                    let arg = c.f32();
                    let (x, y, n) = (c.u(), c.u(), c.u());
                    c.ok()?;
                    inner.unary(unary_op(f, arg)?, x, y, n)?;
                }
                tag::UNARY_BACKWARD => {
                    let arg = c.f32();
                    let (x, y, dy, dx, n) = (c.u(), c.u(), c.u(), c.u(), c.u());
                    c.ok()?;
                    inner.unary_backward(unary_op(f, arg)?, x, y, dy, dx, n)?;
                }
                tag::BINARY => {
                    let (a, b, y) = (c.view(), c.view(), c.view());
                    c.ok()?;
                    inner.binary(binary_op(f)?, a, b, y)?;
                }
                tag::BINARY_BACKWARD => {
                    let side = if f >> 4 == 0 { Side::Lhs } else { Side::Rhs };
                    let (a, b, dy, dx) = (c.view(), c.view(), c.view(), c.u());
                    c.ok()?;
                    inner.binary_backward(binary_op(f & 0xf)?, side, a, b, dy, dx)?;
                }
                tag::GEMM => {
                    let g = Gemm {
                        batch: c.u(),
                        m: c.u(),
                        n: c.u(),
                        k: c.u(),
                        a: c.u(),
                        a_batch: c.u(),
                        b: c.u(),
                        b_batch: c.u(),
                        c: c.u(),
                        c_batch: c.u(),
                        a_trans: f & 1 != 0,
                        b_trans: f & 2 != 0,
                        accumulate: f & 4 != 0,
                    };
                    c.ok()?;
                    inner.gemm(&g)?;
                }
                tag::COPY => {
                    let space = c.shape();
                    let (src, dst) = (c.strided(), c.strided());
                    c.ok()?;
                    inner.copy_strided(&space, src, dst, f != 0)?;
                }
                tag::REDUCE => {
                    let (a, x, y) = (c.axis3(), c.u(), c.u());
                    c.ok()?;
                    inner.reduce(reduce_op(f)?, a, x, y)?;
                }
                tag::REDUCE_BACKWARD => {
                    let a = c.axis3();
                    let (x, y, dy, dx) = (c.u(), c.u(), c.u(), c.u());
                    c.ok()?;
                    inner.reduce_backward(reduce_op(f)?, a, x, y, dy, dx)?;
                }
                tag::SOFTMAX => {
                    let (a, x, y) = (c.axis3(), c.u(), c.u());
                    c.ok()?;
                    inner.softmax(f != 0, a, x, y)?;
                }
                tag::SOFTMAX_BACKWARD => {
                    let a = c.axis3();
                    let (y, dy, dx) = (c.u(), c.u(), c.u());
                    c.ok()?;
                    inner.softmax_backward(f != 0, a, y, dy, dx)?;
                }
                tag::LOSS => {
                    let classes = c.u();
                    let (p, t, y) = (c.view(), c.view(), c.u());
                    c.ok()?;
                    inner.loss(loss_op(f)?, classes, p, t, y)?;
                }
                tag::LOSS_BACKWARD => {
                    let classes = c.u();
                    let (p, t) = (c.view(), c.view());
                    let (dy, dx) = (c.u(), c.u());
                    c.ok()?;
                    let op = loss_op(f & 0xf)?;
                    inner.loss_backward(op, f >> 4 != 0, classes, p, t, dy, dx)?;
                }
                tag::SGD => {
                    let u = sgd_u.as_mut().ok_or(Error::InvalidArgument {
                        what: "an SGD update needs its optimizer",
                    })?;
                    u.param = c.u();
                    u.grad = c.u();
                    // 0: none, else the offset plus one.
                    u.momentum_buf = c.u().checked_sub(1);
                    u.len = c.u();
                    c.ok()?;
                    inner.sgd(u)?;
                }
                tag::ADAM => {
                    let u = adam_u.as_mut().ok_or(Error::InvalidArgument {
                        what: "an Adam update needs its optimizer",
                    })?;
                    u.param = c.u();
                    u.grad = c.u();
                    u.m = c.u();
                    u.v = c.u();
                    u.len = c.u();
                    c.ok()?;
                    inner.adam(u)?;
                }
                tag::SCALE => {
                    let (o, n, v) = (c.u(), c.u(), c.f64());
                    c.ok()?;
                    inner.scale(o, n, B::Elem::from_f64(v))?;
                }
                _ => return Err(corrupt()),
            }
        }
        Ok(())
    }

    /// Appends one call (`head` and the numbers `put` writes) when recording. Out of line, so
    /// that the encoder's frame is not added to the frames of the tape's ops that make calls.
    #[inline(never)]
    fn rec(&mut self, head: u32, put: impl FnOnce(&mut Enc<'_, BYTES>)) {
        if self.state != State::Recording {
            return;
        }
        let mut e = Enc {
            bytes: &mut self.bytes,
            ok: true,
        };
        e.w(head);
        put(&mut e);
        if e.ok {
            self.calls += 1;
        } else {
            self.state = State::Overflow;
        }
    }

    fn refuse(&mut self, what: &'static str) {
        if self.is_recording() {
            self.state = State::Unsupported(what);
        }
    }
}

fn corrupt() -> Error {
    Error::InvalidArgument {
        what: "corrupt replay list",
    }
}

/// Reads a recording. Reading past the end or a malformed number sets `bad` and reads 0; the
/// replay checks `bad` before each kernel call (the list is private, so it never happens).
struct Cursor<'a> {
    it: core::slice::Iter<'a, u8>,
    bad: bool,
}

impl Cursor<'_> {
    #[inline(always)]
    fn byte(&mut self) -> u8 {
        match self.it.next() {
            Some(&b) => b,
            None => {
                self.bad = true;
                0
            }
        }
    }
    /// A variable-length number: 7 bits a byte, least significant first, the top bit set on
    /// every byte but the last.
    #[inline(always)]
    fn w(&mut self) -> u32 {
        let b = self.byte();
        if b < 0x80 {
            // The common case: one byte.
            u32::from(b)
        } else {
            self.w_long(b)
        }
    }
    #[inline(never)]
    fn w_long(&mut self, first: u8) -> u32 {
        let v = self.w64_from(first);
        u32::try_from(v).unwrap_or_else(|_| {
            self.bad = true;
            0
        })
    }
    fn w64_from(&mut self, first: u8) -> u64 {
        let mut v = u64::from(first & 0x7f);
        let mut shift = 7u32;
        let mut b = first;
        while b >= 0x80 {
            if shift > 63 {
                self.bad = true;
                return 0;
            }
            b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        v
    }
    #[inline(always)]
    fn u(&mut self) -> usize {
        self.w() as usize
    }
    fn done(&self) -> bool {
        self.it.as_slice().is_empty()
    }
    /// Floats are stored byte-swapped: the low mantissa bytes of round constants are zero.
    fn f64(&mut self) -> f64 {
        let b = self.byte();
        f64::from_bits(self.w64_from(b).swap_bytes())
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.w().swap_bytes())
    }
    fn shape(&mut self) -> Shape {
        let rank = self.w();
        if rank as usize > MAX_RANK {
            self.bad = true;
        }
        let mut dims = [1u32; MAX_RANK];
        for d in dims.iter_mut().take(rank as usize) {
            *d = self.w();
        }
        Shape::from_parts(dims, rank as u8)
    }
    #[inline(always)]
    fn view(&mut self) -> View {
        let offset = self.u();
        View {
            offset,
            shape: self.shape(),
        }
    }
    fn strided(&mut self) -> Strided {
        let offset = self.u();
        let mut strides = [0usize; MAX_RANK];
        for s in strides.iter_mut() {
            *s = self.u();
        }
        Strided { offset, strides }
    }
    fn axis3(&mut self) -> Axis3 {
        Axis3 {
            outer: self.u(),
            n: self.u(),
            inner: self.u(),
        }
    }
    /// Before a kernel call: an error if anything read so far was malformed.
    #[inline(always)]
    fn ok(&self) -> Result<()> {
        if self.bad {
            Err(corrupt())
        } else {
            Ok(())
        }
    }
}

/// Writes a recording; `ok` turns false when a byte does not fit (or a value exceeds `u32`).
struct Enc<'a, const N: usize> {
    bytes: &'a mut heapless::Vec<u8, N>,
    ok: bool,
}

impl<const N: usize> Enc<'_, N> {
    fn w64(&mut self, mut v: u64) {
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            let byte = if v == 0 { low } else { low | 0x80 };
            if self.ok && self.bytes.push(byte).is_err() {
                self.ok = false;
            }
            if v == 0 {
                return;
            }
        }
    }
    fn w(&mut self, v: u32) {
        self.w64(u64::from(v));
    }
    fn u(&mut self, v: usize) {
        match u32::try_from(v) {
            Ok(v) => self.w(v),
            Err(_) => self.ok = false,
        }
    }
    fn f64(&mut self, v: f64) {
        self.w64(v.to_bits().swap_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.w(v.to_bits().swap_bytes());
    }
    fn shape(&mut self, s: &Shape) {
        self.u(s.rank());
        for &d in s.dims() {
            self.w(d);
        }
    }
    fn view(&mut self, v: &View) {
        self.u(v.offset);
        self.shape(&v.shape);
    }
    fn strided(&mut self, s: &Strided) {
        self.u(s.offset);
        for &x in &s.strides {
            self.u(x);
        }
    }
    fn axis3(&mut self, a: &Axis3) {
        self.u(a.outer);
        self.u(a.n);
        self.u(a.inner);
    }
}

fn head(t: u32, f: u32) -> u32 {
    t | f << 4
}

fn unary_op(code: u32, arg: f32) -> Result<UnaryOp> {
    u8::try_from(code)
        .ok()
        .and_then(|c| UnaryOp::unpack(c, arg))
        .ok_or_else(corrupt)
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

fn binary_op(code: u32) -> Result<BinaryOp> {
    Ok(match code {
        0 => BinaryOp::Add,
        1 => BinaryOp::Sub,
        2 => BinaryOp::Mul,
        3 => BinaryOp::Div,
        _ => return Err(corrupt()),
    })
}

fn reduce_code(op: ReduceOp) -> u32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
    }
}

fn reduce_op(code: u32) -> Result<ReduceOp> {
    Ok(match code {
        0 => ReduceOp::Sum,
        1 => ReduceOp::Mean,
        2 => ReduceOp::Max,
        _ => return Err(corrupt()),
    })
}

fn loss_code(op: LossOp) -> u32 {
    match op {
        LossOp::Mse => 0,
        LossOp::CrossEntropy => 1,
        LossOp::BceWithLogits => 2,
    }
}

fn loss_op(code: u32) -> Result<LossOp> {
    Ok(match code {
        0 => LossOp::Mse,
        1 => LossOp::CrossEntropy,
        2 => LossOp::BceWithLogits,
        _ => return Err(corrupt()),
    })
}

impl<B: HostBackend, const BYTES: usize> HostBackend for Replay<B, BYTES> {
    fn storage(&self) -> &[Self::Elem] {
        self.inner.storage()
    }
    fn storage_mut(&mut self) -> &mut [Self::Elem] {
        self.inner.storage_mut()
    }
}

impl<B: Backend, const BYTES: usize> Backend for Replay<B, BYTES> {
    type Elem = B::Elem;

    fn computes(&self) -> bool {
        self.inner.computes()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn write(&mut self, offset: usize, src: &[Self::Elem]) -> Result<()> {
        self.inner.write(offset, src)
    }

    fn read(&self, offset: usize, dst: &mut [Self::Elem]) -> Result<()> {
        self.inner.read(offset, dst)
    }

    fn fill(&mut self, offset: usize, len: usize, value: Self::Elem) -> Result<()> {
        self.inner.fill(offset, len, value)?;
        let f = if value == Self::Elem::ZERO && value.to_f64().to_bits() == 0 {
            0
        } else if value == Self::Elem::ONE {
            1
        } else {
            2
        };
        self.rec(head(tag::FILL, f), |e| {
            e.u(offset);
            e.u(len);
            if f == 2 {
                e.f64(value.to_f64());
            }
        });
        Ok(())
    }

    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        self.inner.unary(op, x, y, len)?;
        let (code, arg) = op.pack();
        let code = u32::from(code);
        self.rec(head(tag::UNARY, code), |e| {
            e.f32(arg);
            e.u(x);
            e.u(y);
            e.u(len);
        });
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
        self.inner.unary_backward(op, x, y, dy, dx, len)?;
        let (code, arg) = op.pack();
        let code = u32::from(code);
        self.rec(head(tag::UNARY_BACKWARD, code), |e| {
            e.f32(arg);
            for v in [x, y, dy, dx, len] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        self.inner.binary(op, a, b, y)?;
        self.rec(head(tag::BINARY, binary_code(op)), |e| {
            e.view(&a);
            e.view(&b);
            e.view(&y);
        });
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
        self.inner.binary_backward(op, side, a, b, dy, dx)?;
        let s = match side {
            Side::Lhs => 0,
            Side::Rhs => 1,
        };
        self.rec(head(tag::BINARY_BACKWARD, binary_code(op) | s << 4), |e| {
            e.view(&a);
            e.view(&b);
            e.view(&dy);
            e.u(dx);
        });
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.inner.gemm(g)?;
        let f = u32::from(g.a_trans) | u32::from(g.b_trans) << 1 | u32::from(g.accumulate) << 2;
        self.rec(head(tag::GEMM, f), |e| {
            for v in [
                g.batch, g.m, g.n, g.k, g.a, g.a_batch, g.b, g.b_batch, g.c, g.c_batch,
            ] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        self.inner.copy_strided(space, src, dst, accumulate)?;
        self.rec(head(tag::COPY, u32::from(accumulate)), |e| {
            e.shape(space);
            e.strided(&src);
            e.strided(&dst);
        });
        Ok(())
    }

    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.inner.reduce(op, r, x, y)?;
        self.rec(head(tag::REDUCE, reduce_code(op)), |e| {
            e.axis3(&r);
            e.u(x);
            e.u(y);
        });
        Ok(())
    }

    fn reduce_backward(
        &mut self,
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.inner.reduce_backward(op, r, x, y, dy, dx)?;
        self.rec(head(tag::REDUCE_BACKWARD, reduce_code(op)), |e| {
            e.axis3(&r);
            for v in [x, y, dy, dx] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.inner.softmax(log, r, x, y)?;
        self.rec(head(tag::SOFTMAX, u32::from(log)), |e| {
            e.axis3(&r);
            e.u(x);
            e.u(y);
        });
        Ok(())
    }

    fn softmax_backward(
        &mut self,
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.inner.softmax_backward(log, r, y, dy, dx)?;
        self.rec(head(tag::SOFTMAX_BACKWARD, u32::from(log)), |e| {
            e.axis3(&r);
            for v in [y, dy, dx] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        self.inner.loss(op, classes, p, t, y)?;
        self.rec(head(tag::LOSS, loss_code(op)), |e| {
            e.u(classes);
            e.view(&p);
            e.view(&t);
            e.u(y);
        });
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
        self.inner.loss_backward(op, lhs, classes, p, t, dy, dx)?;
        let f = loss_code(op) | u32::from(lhs) << 4;
        self.rec(head(tag::LOSS_BACKWARD, f), |e| {
            e.u(classes);
            e.view(&p);
            e.view(&t);
            e.u(dy);
            e.u(dx);
        });
        Ok(())
    }

    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.inner.sgd(u)?;
        if self.state == State::Recording {
            self.has_sgd = true;
        }
        self.rec(head(tag::SGD, 0), |e| {
            e.u(u.param);
            e.u(u.grad);
            // 0: none, else the offset plus one.
            e.u(u.momentum_buf.map_or(0, |m| m.saturating_add(1)));
            e.u(u.len);
        });
        Ok(())
    }

    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        self.inner.adam(u)?;
        if self.state == State::Recording {
            self.has_adam = true;
        }
        self.rec(head(tag::ADAM, 0), |e| {
            for v in [u.param, u.grad, u.m, u.v, u.len] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        self.refuse(
            "a value read back to the host (sum_squares, clip_grad_norm) cannot be replayed",
        );
        self.inner.sum_squares(offset, len)
    }

    fn scale(&mut self, offset: usize, len: usize, factor: Self::Elem) -> Result<()> {
        self.inner.scale(offset, len, factor)?;
        self.rec(head(tag::SCALE, 0), |e| {
            e.u(offset);
            e.u(len);
            e.f64(factor.to_f64());
        });
        Ok(())
    }
}
