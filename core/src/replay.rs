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
//! - the optimizer: its update calls are recorded with their arena offsets only.
//!   [`Replay::replay_adam`], [`Replay::replay_sgd`], [`Replay::replay_rmsprop`] and
//!   [`Replay::replay_adagrad`] take the settings of the optimizer you pass (so a learning-rate
//!   schedule through `set_lr` is followed), advance its step count and recompute what depends
//!   on the step (Adam's bias corrections `1 - beta^t`, Adagrad's decayed rate): all update calls of the
//!   recording must come from that one optimizer. Which buffers an update uses (AMSGrad's
//!   maximum, RMSprop's momentum buffer and average) is recorded with it: settings that turn
//!   one on after the recording are not followed, where an eager step would refuse them.
//!   [`Replay::replay`] refuses a recording with update calls;
//! - calls whose effect depends on values read back to the host cannot be replayed:
//!   [`Backend::sum_squares`] ([`crate::clip_grad_norm`]) makes the recording fail at
//!   [`Replay::stop`], and so do the ops that say so through [`Backend::host_dependent`]: an
//!   embedding (its rows are found by reading the indices), [`crate::Dropout`] (its mask is
//!   drawn on the host) and [`crate::BatchNorm`] in training mode (its running statistics are
//!   updated on the host). A step in which a backend call failed fails there too; a step
//!   that failed in the tape itself (a full arena, say: no backend call failed) is not seen
//!   here, so drop its recording ([`Replay::clear`]) rather than stop and replay it.
//!
//! After a replay, the arena holds what the eager step would have left there: the tape's
//! handles of the recorded step (its loss, its outputs, the parameters' gradients) read the
//! replayed step's values.
//!
//! Outside recording and replay, `Replay` adds one flag test per call to the backend it wraps.
//!
//! # Writing a recording as Rust
//!
//! [`Replay::write_rust`] writes a recording as a Rust function that makes the same calls with
//! their arguments as constants (and [`write_rust_array`] the arena's starting contents): a
//! build script runs the step on the host with the tape, layers and optimizer, and a firmware
//! `include!`s the function and runs it on its own backend with a tape-less optimizer
//! ([`Adam::detached`]), without linking the tape. The firmware crate's `xor` does this: its
//! step takes 2.7K instructions on a Cortex-M4F, against 9.7K for the same step replayed from a
//! recorded list on the device. `tests/codegen.rs` checks generated steps against eager ones
//! bit for bit.

use crate::backend::{Backend, HostBackend, View};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::binary::{BinaryOp, Side};
use crate::ops::loss::LossOp;
use crate::ops::matmul::Gemm;
use crate::ops::movement::Strided;
use crate::ops::reduce::{Axis3, ReduceOp};
use crate::ops::unary::UnaryOp;
use crate::optim::{Adagrad, Adam, AdamUpdate, RmsProp, RmsUpdate, Sgd, SgdUpdate};
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
    /// Adam (field 0), AMSGrad (1), RMSprop or Adagrad (2 to 5: 2, plus 1 with the
    /// gradient's average, plus 2 with a momentum buffer).
    pub const ADAM: u32 = 14;
    pub const SCALE: u32 = 15;
}

/// An optimizer's update template, as a replay fills in each recorded call's offsets.
#[derive(Clone, Copy)]
enum Update {
    Sgd(SgdUpdate),
    Adam(AdamUpdate),
    Rms(RmsUpdate),
}

impl Update {
    /// The bit of [`Replay`]'s `updates` for this kind: RMSprop's and Adagrad's apart (an
    /// Adagrad update is the one whose squares neither decay nor are scaled, `alpha` and
    /// `gain` 1; RMSprop's gain is `1 - alpha`).
    fn bit(&self) -> u8 {
        match self {
            Update::Sgd(_) => 1,
            Update::Adam(_) => 2,
            Update::Rms(u) if u.alpha == 1.0 && u.gain == 1.0 => 8,
            Update::Rms(_) => 4,
        }
    }
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
    /// Which kinds of optimizer update the recording holds ([`Update::bit`]).
    updates: u8,
}

impl<B: Backend, const BYTES: usize> Replay<B, BYTES> {
    /// Wraps `inner`; nothing is recorded until [`Replay::record`].
    pub fn new(inner: B) -> Self {
        Replay {
            inner,
            bytes: heapless::Vec::new(),
            state: State::Empty,
            calls: 0,
            updates: 0,
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
        self.updates = 0;
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
    /// bytes; [`Error::InvalidArgument`] when a call that cannot be replayed was made (one
    /// with an offset or size past 32 bits included), or when no recording was in progress.
    /// The recording is dropped on error; a ready recording stays ready when `stop` is called
    /// again.
    pub fn stop(&mut self) -> Result<usize> {
        let failed = match self.state {
            State::Recording => {
                self.state = State::Ready;
                return Ok(self.calls as usize);
            }
            State::Overflow => Error::TapeFull { capacity: BYTES },
            State::Unsupported(what) => Error::InvalidArgument { what },
            // Nothing to stop: a ready recording stays ready.
            State::Empty | State::Ready => {
                return Err(Error::InvalidArgument {
                    what: "Replay::stop without Replay::record",
                })
            }
        };
        self.clear();
        Err(failed)
    }

    /// Drops the recording.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.calls = 0;
        self.updates = 0;
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
    /// optimizer updates (use [`Replay::replay_adam`], [`Replay::replay_sgd`],
    /// [`Replay::replay_rmsprop`] or [`Replay::replay_adagrad`]); any error of the wrapped
    /// backend (the replay stops at the failing call).
    pub fn replay(&mut self) -> Result<()> {
        if self.updates != 0 {
            return Err(Error::InvalidArgument {
                what: "the recording holds optimizer updates: replay it with its optimizer",
            });
        }
        self.run(None)
    }

    /// Replays with the update template `next` takes from `opt` (advancing it a step), after
    /// checking that the recording holds no other kind of update; a failed replay leaves `opt`
    /// as it was.
    fn replay_with<O: Copy>(
        &mut self,
        opt: &mut O,
        next: impl FnOnce(&mut O) -> Update,
        other: &'static str,
    ) -> Result<()> {
        self.ready()?;
        let before = *opt;
        let u = next(opt);
        if self.updates & !u.bit() != 0 {
            *opt = before;
            return Err(Error::InvalidArgument { what: other });
        }
        let r = self.run(Some(u));
        if r.is_err() {
            *opt = before;
        }
        r
    }

    /// Re-runs the recorded step, whose update calls came from `adam`: advances `adam` by one
    /// step (as [`crate::Optimizer::step`] would) and gives every recorded update its current
    /// settings and the new step's bias corrections.
    ///
    /// # Errors
    /// As [`Replay::replay`]; [`Error::InvalidArgument`] when the recording holds another
    /// optimizer's updates.
    pub fn replay_adam(&mut self, adam: &mut Adam) -> Result<()> {
        self.replay_with(
            adam,
            |a| Update::Adam(a.next_update()),
            "the recording holds other optimizers' updates, not Adam's",
        )
    }

    /// Re-runs the recorded step, whose update calls came from `sgd`: advances `sgd` by one
    /// step and gives every recorded update its current settings.
    ///
    /// # Errors
    /// As [`Replay::replay`]; [`Error::InvalidArgument`] when the recording holds another
    /// optimizer's updates.
    pub fn replay_sgd(&mut self, sgd: &mut Sgd) -> Result<()> {
        self.replay_with(
            sgd,
            |o| Update::Sgd(o.next_update()),
            "the recording holds other optimizers' updates, not SGD's",
        )
    }

    /// Re-runs the recorded step, whose update calls came from `rmsprop`: advances it by one
    /// step and gives every recorded update its current settings.
    ///
    /// # Errors
    /// As [`Replay::replay_sgd`].
    pub fn replay_rmsprop(&mut self, rmsprop: &mut RmsProp) -> Result<()> {
        self.replay_with(
            rmsprop,
            |o| Update::Rms(o.next_update()),
            "the recording holds other optimizers' updates, not RMSprop's",
        )
    }

    /// Re-runs the recorded step, whose update calls came from `adagrad`: advances it by one
    /// step and gives every recorded update its current settings and that step's rate.
    ///
    /// # Errors
    /// As [`Replay::replay_sgd`].
    pub fn replay_adagrad(&mut self, adagrad: &mut Adagrad) -> Result<()> {
        self.replay_with(
            adagrad,
            |o| Update::Rms(o.next_update()),
            "the recording holds other optimizers' updates, not Adagrad's",
        )
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
    fn run(&mut self, mut update: Option<Update>) -> Result<()> {
        self.ready()?;
        let Replay { inner, bytes, .. } = self;
        // The template: the calls overwrite only the offsets and the length.
        let mut c = Cursor {
            it: bytes.iter(),
            bad: false,
        };
        while !c.done() {
            match c.call()? {
                Call::Fill { offset, len, value } => {
                    // Zero and one (zeroed gradients, the loss's seed) need no conversion.
                    let v = match value {
                        Fill::Zero => B::Elem::ZERO,
                        Fill::One => B::Elem::ONE,
                        Fill::Value(v) => B::Elem::from_f64(v),
                    };
                    inner.fill(offset, len, v)?;
                }
                Call::Unary { op, x, y, len } => inner.unary(op, x, y, len)?,
                Call::UnaryBackward {
                    op,
                    x,
                    y,
                    dy,
                    dx,
                    len,
                } => inner.unary_backward(op, x, y, dy, dx, len)?,
                Call::Binary { op, a, b, y } => inner.binary(op, a, b, y)?,
                Call::BinaryBackward {
                    op,
                    side,
                    a,
                    b,
                    dy,
                    dx,
                } => inner.binary_backward(op, side, a, b, dy, dx)?,
                Call::Gemm(g) => inner.gemm(&g)?,
                Call::Copy {
                    space,
                    src,
                    dst,
                    accumulate,
                } => inner.copy_strided(&space, src, dst, accumulate)?,
                Call::Reduce { op, r, x, y } => inner.reduce(op, r, x, y)?,
                Call::ReduceBackward {
                    op,
                    r,
                    x,
                    y,
                    dy,
                    dx,
                } => inner.reduce_backward(op, r, x, y, dy, dx)?,
                Call::Softmax { log, r, x, y } => inner.softmax(log, r, x, y)?,
                Call::SoftmaxBackward { log, r, y, dy, dx } => {
                    inner.softmax_backward(log, r, y, dy, dx)?;
                }
                Call::Loss {
                    op,
                    classes,
                    p,
                    t,
                    y,
                } => inner.loss(op, classes, p, t, y)?,
                Call::LossBackward {
                    op,
                    lhs,
                    classes,
                    p,
                    t,
                    dy,
                    dx,
                } => inner.loss_backward(op, lhs, classes, p, t, dy, dx)?,
                Call::Sgd {
                    param,
                    grad,
                    momentum_buf,
                    len,
                } => {
                    let Some(Update::Sgd(u)) = update.as_mut() else {
                        return Err(Error::InvalidArgument {
                            what: "an SGD update needs its optimizer",
                        });
                    };
                    (u.param, u.grad, u.momentum_buf, u.len) = (param, grad, momentum_buf, len);
                    inner.sgd(u)?;
                }
                Call::Adam {
                    param,
                    grad,
                    m,
                    v,
                    len,
                    vmax,
                } => {
                    let Some(Update::Adam(u)) = update.as_mut() else {
                        return Err(Error::InvalidArgument {
                            what: "an Adam update needs its optimizer",
                        });
                    };
                    (u.param, u.grad, u.m, u.v, u.len) = (param, grad, m, v, len);
                    u.vmax = vmax;
                    inner.adam(u)?;
                }
                Call::Rms {
                    param,
                    grad,
                    sq,
                    len,
                    avg,
                    momentum_buf,
                } => {
                    let Some(Update::Rms(u)) = update.as_mut() else {
                        return Err(Error::InvalidArgument {
                            what: "an RMSprop or Adagrad update needs its optimizer",
                        });
                    };
                    (u.param, u.grad, u.sq, u.len) = (param, grad, sq, len);
                    (u.avg, u.momentum_buf) = (avg, momentum_buf);
                    inner.rms(u)?;
                }
                Call::Scale {
                    offset,
                    len,
                    factor,
                } => {
                    inner.scale(offset, len, B::Elem::from_f64(factor))?;
                }
            }
        }
        Ok(())
    }

    /// Notes, when recording, that the recording holds updates of `u`'s kind.
    fn holds(&mut self, u: Update) {
        if self.state == State::Recording {
            self.updates |= u.bit();
        }
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
            wide: false,
        };
        e.w(head);
        put(&mut e);
        if e.wide {
            self.state = State::Unsupported("a recorded offset or size does not fit in 32 bits");
        } else if e.ok {
            self.calls += 1;
        } else {
            self.state = State::Overflow;
        }
    }

    /// Runs a call on the wrapped backend; one that fails ends the recording (the step did
    /// not make the calls a replay would need).
    fn call(&mut self, f: impl FnOnce(&mut B) -> Result<()>) -> Result<()> {
        let r = f(&mut self.inner);
        if r.is_err() {
            self.refuse("a backend call failed while recording");
        }
        r
    }

    fn refuse(&mut self, what: &'static str) {
        if self.is_recording() {
            self.state = State::Unsupported(what);
        }
    }
}

impl<B: Backend, const BYTES: usize> Replay<B, BYTES> {
    /// Writes the recording as Rust source: a function `name`, generic over the backend, that
    /// makes the recorded calls in order with their arguments as constants. No list, no
    /// decoding, no tape: the compiler sees every offset and size, and inlines and unrolls
    /// what the backend lets it. The same calls as [`Replay::replay`], so the same results.
    ///
    /// The function is `pub fn name<B: mote::Backend>(be: &mut B, ...) -> mote::Result<()>`,
    /// with a last argument `adam: &mote::optim::AdamUpdate` (or `sgd: &SgdUpdate`, or
    /// `rms: &RmsUpdate` for RMSprop and Adagrad) when the recording holds optimizer updates:
    /// pass [`Adam::next_update`] (or [`Sgd::next_update`], [`RmsProp::next_update`],
    /// [`Adagrad::next_update`]) of the optimizer the recording came from, once per step, as
    /// [`Replay::replay_adam`] does. Run it on a backend over an arena laid out as the recording's was (the same
    /// arena contents below the mark: the parameters, the optimizer's state, constant inputs).
    ///
    /// Typical use: a build script runs the training step on the host with mote's tape,
    /// layers and optimizer, records it and writes the step and the arena's starting contents
    /// into `OUT_DIR`; the firmware `include!`s them and never links the tape (see the firmware
    /// crate's `xor`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when nothing is recorded, when `name` is not a Rust
    /// identifier, when a constant is not finite (no Rust literal spells it), or when `out`
    /// fails.
    pub fn write_rust<W: core::fmt::Write>(&self, out: &mut W, name: &str) -> Result<()> {
        self.ready()?;
        if !is_rust_name(name) {
            return Err(Error::InvalidArgument {
                what: "Replay::write_rust: the name is not a Rust identifier",
            });
        }
        if self.updates.count_ones() > 1 {
            return Err(Error::InvalidArgument {
                what: "Replay::write_rust: the recording holds updates of more than one kind \
                       of optimizer (one per recording)",
            });
        }
        // Decode it all first: nothing is written for a list a Rust literal cannot spell.
        let mut c = self.cursor();
        while !c.done() {
            let finite = match c.call()? {
                Call::Fill {
                    value: Fill::Value(v),
                    ..
                }
                | Call::Scale { factor: v, .. } => v.is_finite(),
                Call::Unary { op, .. } | Call::UnaryBackward { op, .. } => op.pack().1.is_finite(),
                Call::Loss { op, .. } | Call::LossBackward { op, .. } => op.pack().1.is_finite(),
                _ => true,
            };
            if !finite {
                return Err(Error::InvalidArgument {
                    what: "Replay::write_rust: a recorded constant is not finite",
                });
            }
        }
        self.emit(out, name).map_err(|_| Error::InvalidArgument {
            what: "Replay::write_rust: the writer failed",
        })
    }

    fn cursor(&self) -> Cursor<'_> {
        Cursor {
            it: self.bytes.iter(),
            bad: false,
        }
    }

    fn emit<W: core::fmt::Write>(&self, out: &mut W, name: &str) -> core::fmt::Result {
        let opt = match self.updates {
            1 => ", sgd: &mote::optim::SgdUpdate",
            2 => ", adam: &mote::optim::AdamUpdate",
            4 | 8 => ", rms: &mote::optim::RmsUpdate",
            _ => "",
        };
        writeln!(
            out,
            "/// A step recorded by `mote::replay::Replay` ({} backend calls), as straight-line \
             calls.\n/// Generated by `Replay::write_rust`: do not edit.\n\
             #[allow(unused_imports, clippy::all, clippy::pedantic)]\n\
             pub fn {name}<B: mote::Backend>(be: &mut B{opt}) -> mote::Result<()> {{\n    \
             use mote::ops::binary::{{BinaryOp, Side}};\n    \
             use mote::ops::loss::LossOp;\n    \
             use mote::ops::matmul::Gemm;\n    \
             use mote::ops::movement::Strided;\n    \
             use mote::ops::reduce::{{Axis3, ReduceOp}};\n    \
             use mote::ops::unary::UnaryOp;\n    \
             use mote::optim::{{AdamUpdate, RmsUpdate, SgdUpdate}};\n    \
             use mote::{{Float, Shape, View}};",
            self.calls
        )?;
        let mut c = self.cursor();
        while !c.done() {
            let call = c.call().map_err(|_| core::fmt::Error)?;
            out.write_str("    be.")?;
            match call {
                Call::Fill { offset, len, value } => {
                    write!(out, "fill({offset}, {len}, ")?;
                    match value {
                        Fill::Zero => write!(out, "B::Elem::ZERO")?,
                        Fill::One => write!(out, "B::Elem::ONE")?,
                        Fill::Value(v) => write!(out, "B::Elem::from_f64({v:?})")?,
                    }
                }
                Call::Unary { op, x, y, len } => {
                    write!(out, "unary(UnaryOp::{op:?}, {x}, {y}, {len}")?;
                }
                Call::UnaryBackward {
                    op,
                    x,
                    y,
                    dy,
                    dx,
                    len,
                } => write!(
                    out,
                    "unary_backward(UnaryOp::{op:?}, {x}, {y}, {dy}, {dx}, {len}"
                )?,
                Call::Binary { op, a, b, y } => write!(
                    out,
                    "binary(BinaryOp::{op:?}, {}, {}, {}",
                    Lit(&a),
                    Lit(&b),
                    Lit(&y)
                )?,
                Call::BinaryBackward {
                    op,
                    side,
                    a,
                    b,
                    dy,
                    dx,
                } => write!(
                    out,
                    "binary_backward(BinaryOp::{op:?}, Side::{side:?}, {}, {}, {}, {dx}",
                    Lit(&a),
                    Lit(&b),
                    Lit(&dy)
                )?,
                // The derived `Debug` of these plain structs is their Rust literal.
                Call::Gemm(g) => write!(out, "gemm(&{g:?}")?,
                Call::Copy {
                    space,
                    src,
                    dst,
                    accumulate,
                } => write!(
                    out,
                    "copy_strided(&{}, {src:?}, {dst:?}, {accumulate}",
                    Lit(&space)
                )?,
                Call::Reduce { op, r, x, y } => {
                    write!(out, "reduce(ReduceOp::{op:?}, {r:?}, {x}, {y}")?;
                }
                Call::ReduceBackward {
                    op,
                    r,
                    x,
                    y,
                    dy,
                    dx,
                } => write!(
                    out,
                    "reduce_backward(ReduceOp::{op:?}, {r:?}, {x}, {y}, {dy}, {dx}"
                )?,
                Call::Softmax { log, r, x, y } => {
                    write!(out, "softmax({log}, {r:?}, {x}, {y}")?;
                }
                Call::SoftmaxBackward { log, r, y, dy, dx } => {
                    write!(out, "softmax_backward({log}, {r:?}, {y}, {dy}, {dx}")?;
                }
                Call::Loss {
                    op,
                    classes,
                    p,
                    t,
                    y,
                } => write!(
                    out,
                    "loss(LossOp::{op:?}, {classes}, {}, {}, {y}",
                    Lit(&p),
                    Lit(&t)
                )?,
                Call::LossBackward {
                    op,
                    lhs,
                    classes,
                    p,
                    t,
                    dy,
                    dx,
                } => write!(
                    out,
                    "loss_backward(LossOp::{op:?}, {lhs}, {classes}, {}, {}, {dy}, {dx}",
                    Lit(&p),
                    Lit(&t)
                )?,
                Call::Sgd {
                    param,
                    grad,
                    momentum_buf,
                    len,
                } => write!(
                    out,
                    "sgd(&SgdUpdate {{ param: {param}, grad: {grad}, \
                     momentum_buf: {momentum_buf:?}, len: {len}, ..*sgd }}"
                )?,
                Call::Adam {
                    param,
                    grad,
                    m,
                    v,
                    len,
                    vmax,
                } => {
                    write!(
                        out,
                        "adam(&AdamUpdate {{ param: {param}, grad: {grad}, m: {m}, v: {v}, \
                         len: {len}, "
                    )?;
                    if let Some(vm) = vmax {
                        write!(out, "vmax: Some({vm}), ")?;
                    }
                    out.write_str("..*adam }")?
                }
                Call::Rms {
                    param,
                    grad,
                    sq,
                    len,
                    avg,
                    momentum_buf,
                } => write!(
                    out,
                    "rms(&RmsUpdate {{ param: {param}, grad: {grad}, sq: {sq}, len: {len}, \
                     avg: {avg:?}, momentum_buf: {momentum_buf:?}, ..*rms }}"
                )?,
                Call::Scale {
                    offset,
                    len,
                    factor,
                } => write!(out, "scale({offset}, {len}, B::Elem::from_f64({factor:?})")?,
            }
            out.write_str(")?;\n")?;
        }
        out.write_str("    Ok(())\n}\n")
    }
}

/// A shape or a view as a Rust expression (inside a function returning `mote::Result`).
struct Lit<'a, T>(&'a T);

impl core::fmt::Display for Lit<'_, Shape> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Shape::new(&[")?;
        for (i, d) in self.0.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("])?")
    }
}

impl core::fmt::Display for Lit<'_, View> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let View { offset, shape } = self.0;
        write!(f, "View {{ offset: {offset}, shape: {} }}", Lit(shape))
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
    /// A loss from its code and what [`put_loss_arg`] wrote after it.
    fn loss_op(&mut self, code: u32) -> Result<LossOp> {
        let code = u8::try_from(code).map_err(|_| corrupt())?;
        let arg = if LossOp::has_arg(code) {
            self.f32()
        } else {
            0.0
        };
        LossOp::unpack(code, arg).ok_or_else(corrupt)
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

/// A fill's value: zero and one (zeroed gradients, the loss's seed) are stored without a
/// number.
#[derive(Clone, Copy)]
enum Fill {
    Zero,
    One,
    Value(f64),
}

/// One decoded call of a recording: what [`Replay::replay`] runs and
/// [`Replay::write_rust`] writes out.
#[derive(Clone, Copy)]
enum Call {
    Fill {
        offset: usize,
        len: usize,
        value: Fill,
    },
    Unary {
        op: UnaryOp,
        x: usize,
        y: usize,
        len: usize,
    },
    UnaryBackward {
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    },
    Binary {
        op: BinaryOp,
        a: View,
        b: View,
        y: View,
    },
    BinaryBackward {
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    },
    Gemm(Gemm),
    Copy {
        space: Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    },
    Reduce {
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
    },
    ReduceBackward {
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    },
    Softmax {
        log: bool,
        r: Axis3,
        x: usize,
        y: usize,
    },
    SoftmaxBackward {
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    },
    Loss {
        op: LossOp,
        classes: usize,
        p: View,
        t: View,
        y: usize,
    },
    LossBackward {
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    },
    Sgd {
        param: usize,
        grad: usize,
        momentum_buf: Option<usize>,
        len: usize,
    },
    Adam {
        param: usize,
        grad: usize,
        m: usize,
        v: usize,
        len: usize,
        vmax: Option<usize>,
    },
    Rms {
        param: usize,
        grad: usize,
        sq: usize,
        len: usize,
        avg: Option<usize>,
        momentum_buf: Option<usize>,
    },
    Scale {
        offset: usize,
        len: usize,
        factor: f64,
    },
}

impl Cursor<'_> {
    /// Decodes the next call (the inverse of the `Backend` methods' encoding below).
    fn call(&mut self) -> Result<Call> {
        let head = self.w();
        let (t, f) = (head & 0xf, head >> 4);
        let call = match t {
            tag::FILL => {
                let (offset, len) = (self.u(), self.u());
                let value = match f {
                    0 => Fill::Zero,
                    1 => Fill::One,
                    _ => Fill::Value(self.f64()),
                };
                Call::Fill { offset, len, value }
            }
            tag::UNARY => {
                let arg = self.f32();
                let (x, y, len) = (self.u(), self.u(), self.u());
                let op = unary_op(f, arg)?;
                Call::Unary { op, x, y, len }
            }
            tag::UNARY_BACKWARD => {
                let arg = self.f32();
                let (x, y, dy, dx, len) = (self.u(), self.u(), self.u(), self.u(), self.u());
                let op = unary_op(f, arg)?;
                Call::UnaryBackward {
                    op,
                    x,
                    y,
                    dy,
                    dx,
                    len,
                }
            }
            tag::BINARY => {
                let (a, b, y) = (self.view(), self.view(), self.view());
                let op = binary_op(f)?;
                Call::Binary { op, a, b, y }
            }
            tag::BINARY_BACKWARD => {
                let side = if f >> 4 == 0 { Side::Lhs } else { Side::Rhs };
                let (a, b, dy, dx) = (self.view(), self.view(), self.view(), self.u());
                let op = binary_op(f & 0xf)?;
                Call::BinaryBackward {
                    op,
                    side,
                    a,
                    b,
                    dy,
                    dx,
                }
            }
            tag::GEMM => Call::Gemm(Gemm {
                batch: self.u(),
                m: self.u(),
                n: self.u(),
                k: self.u(),
                a: self.u(),
                a_batch: self.u(),
                b: self.u(),
                b_batch: self.u(),
                c: self.u(),
                c_batch: self.u(),
                a_trans: f & 1 != 0,
                b_trans: f & 2 != 0,
                accumulate: f & 4 != 0,
            }),
            tag::COPY => {
                let space = self.shape();
                let (src, dst) = (self.strided(), self.strided());
                Call::Copy {
                    space,
                    src,
                    dst,
                    accumulate: f != 0,
                }
            }
            tag::REDUCE => {
                let (r, x, y) = (self.axis3(), self.u(), self.u());
                Call::Reduce {
                    op: reduce_op(f)?,
                    r,
                    x,
                    y,
                }
            }
            tag::REDUCE_BACKWARD => {
                let r = self.axis3();
                let (x, y, dy, dx) = (self.u(), self.u(), self.u(), self.u());
                Call::ReduceBackward {
                    op: reduce_op(f)?,
                    r,
                    x,
                    y,
                    dy,
                    dx,
                }
            }
            tag::SOFTMAX => {
                let (r, x, y) = (self.axis3(), self.u(), self.u());
                Call::Softmax {
                    log: f != 0,
                    r,
                    x,
                    y,
                }
            }
            tag::SOFTMAX_BACKWARD => {
                let r = self.axis3();
                let (y, dy, dx) = (self.u(), self.u(), self.u());
                Call::SoftmaxBackward {
                    log: f != 0,
                    r,
                    y,
                    dy,
                    dx,
                }
            }
            tag::LOSS => {
                let op = self.loss_op(f)?;
                let classes = self.u();
                let (p, t, y) = (self.view(), self.view(), self.u());
                Call::Loss {
                    op,
                    classes,
                    p,
                    t,
                    y,
                }
            }
            tag::LOSS_BACKWARD => {
                let op = self.loss_op(f & 0xf)?;
                let classes = self.u();
                let (p, t) = (self.view(), self.view());
                let (dy, dx) = (self.u(), self.u());
                Call::LossBackward {
                    op,
                    lhs: f >> 4 != 0,
                    classes,
                    p,
                    t,
                    dy,
                    dx,
                }
            }
            tag::SGD => Call::Sgd {
                param: self.u(),
                grad: self.u(),
                // 0: none, else the offset plus one.
                momentum_buf: self.u().checked_sub(1),
                len: self.u(),
            },
            tag::ADAM if f < 2 => Call::Adam {
                param: self.u(),
                grad: self.u(),
                m: self.u(),
                v: self.u(),
                len: self.u(),
                // Field 1: AMSGrad's running maximum follows.
                vmax: (f == 1).then(|| self.u()),
            },
            tag::ADAM if f < 6 => Call::Rms {
                param: self.u(),
                grad: self.u(),
                sq: self.u(),
                len: self.u(),
                // Fields 2 to 5: 2, plus 1 with the average, plus 2 with momentum.
                avg: ((f - 2) & 1 != 0).then(|| self.u()),
                momentum_buf: ((f - 2) & 2 != 0).then(|| self.u()),
            },
            tag::SCALE => Call::Scale {
                offset: self.u(),
                len: self.u(),
                factor: self.f64(),
            },
            _ => return Err(corrupt()),
        };
        self.ok()?;
        Ok(call)
    }
}

/// Writes a recording; `ok` turns false when a byte does not fit or a value exceeds `u32`
/// (which sets `wide` too).
struct Enc<'a, const N: usize> {
    bytes: &'a mut heapless::Vec<u8, N>,
    ok: bool,
    wide: bool,
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
            Err(_) => {
                self.ok = false;
                self.wide = true;
            }
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
    u32::from(op.code())
}

fn binary_op(code: u32) -> Result<BinaryOp> {
    u8::try_from(code)
        .ok()
        .and_then(BinaryOp::from_code)
        .ok_or_else(corrupt)
}

fn reduce_code(op: ReduceOp) -> u32 {
    u32::from(op.code())
}

fn reduce_op(code: u32) -> Result<ReduceOp> {
    u8::try_from(code)
        .ok()
        .and_then(ReduceOp::from_code)
        .ok_or_else(corrupt)
}

/// A loss's code ([`LossOp::pack`]); code 3 (smoothed cross-entropy) is followed by its
/// smoothing as an f32.
fn loss_code(op: LossOp) -> u32 {
    u32::from(op.pack().0)
}

/// Writes what follows a loss's code: its smoothing, where it has one.
fn put_loss_arg<const N: usize>(e: &mut Enc<'_, N>, op: LossOp) {
    let (code, arg) = op.pack();
    if LossOp::has_arg(code) {
        e.f32(arg);
    }
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

    fn align(&self) -> usize {
        self.inner.align()
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

    fn host_dependent(&mut self, what: &'static str) -> Result<()> {
        self.refuse(what);
        self.inner.host_dependent(what)
    }

    fn fill(&mut self, offset: usize, len: usize, value: Self::Elem) -> Result<()> {
        self.call(|inner| inner.fill(offset, len, value))?;
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
        self.call(|inner| inner.unary(op, x, y, len))?;
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
        self.call(|inner| inner.unary_backward(op, x, y, dy, dx, len))?;
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
        self.call(|inner| inner.binary(op, a, b, y))?;
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
        self.call(|inner| inner.binary_backward(op, side, a, b, dy, dx))?;
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
        self.call(|inner| inner.gemm(g))?;
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
        self.call(|inner| inner.copy_strided(space, src, dst, accumulate))?;
        self.rec(head(tag::COPY, u32::from(accumulate)), |e| {
            e.shape(space);
            e.strided(&src);
            e.strided(&dst);
        });
        Ok(())
    }

    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.call(|inner| inner.reduce(op, r, x, y))?;
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
        self.call(|inner| inner.reduce_backward(op, r, x, y, dy, dx))?;
        self.rec(head(tag::REDUCE_BACKWARD, reduce_code(op)), |e| {
            e.axis3(&r);
            for v in [x, y, dy, dx] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.call(|inner| inner.softmax(log, r, x, y))?;
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
        self.call(|inner| inner.softmax_backward(log, r, y, dy, dx))?;
        self.rec(head(tag::SOFTMAX_BACKWARD, u32::from(log)), |e| {
            e.axis3(&r);
            for v in [y, dy, dx] {
                e.u(v);
            }
        });
        Ok(())
    }

    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        self.call(|inner| inner.loss(op, classes, p, t, y))?;
        self.rec(head(tag::LOSS, loss_code(op)), |e| {
            put_loss_arg(e, op);
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
        self.call(|inner| inner.loss_backward(op, lhs, classes, p, t, dy, dx))?;
        let f = loss_code(op) | u32::from(lhs) << 4;
        self.rec(head(tag::LOSS_BACKWARD, f), |e| {
            put_loss_arg(e, op);
            e.u(classes);
            e.view(&p);
            e.view(&t);
            e.u(dy);
            e.u(dx);
        });
        Ok(())
    }

    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.call(|inner| inner.sgd(u))?;
        self.holds(Update::Sgd(*u));
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
        self.call(|inner| inner.adam(u))?;
        self.holds(Update::Adam(*u));
        self.rec(head(tag::ADAM, u32::from(u.vmax.is_some())), |e| {
            for v in [u.param, u.grad, u.m, u.v, u.len] {
                e.u(v);
            }
            if let Some(vm) = u.vmax {
                e.u(vm);
            }
        });
        Ok(())
    }

    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.call(|inner| inner.rms(u))?;
        self.holds(Update::Rms(*u));
        let f = 2 + u32::from(u.avg.is_some()) + 2 * u32::from(u.momentum_buf.is_some());
        self.rec(head(tag::ADAM, f), |e| {
            for v in [u.param, u.grad, u.sq, u.len] {
                e.u(v);
            }
            for v in [u.avg, u.momentum_buf].into_iter().flatten() {
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
        self.call(|inner| inner.scale(offset, len, factor))?;
        self.rec(head(tag::SCALE, 0), |e| {
            e.u(offset);
            e.u(len);
            e.f64(factor.to_f64());
        });
        Ok(())
    }
}

/// Whether `name` can name a Rust item: an identifier that is not a keyword (strict or
/// reserved) or a lone `_`.
fn is_rust_name(name: &str) -> bool {
    // Rust's keywords (2024 edition, reserved ones included), and the prelude's names the
    // written code uses (`Ok(())`, `Some(n)`), which an item of that name would shadow.
    const KEYWORDS: [&str; 56] = [
        "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn",
        "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
        "return", "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe",
        "use", "where", "while", "async", "await", "dyn", "abstract", "become", "box", "do",
        "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
        "gen", "Ok", "Err", "Some", "None",
    ];
    let ident = name
        .chars()
        .enumerate()
        .all(|(i, ch)| ch == '_' || ch.is_ascii_alphabetic() || (i > 0 && ch.is_ascii_digit()));
    !name.is_empty() && ident && name != "_" && !KEYWORDS.contains(&name)
}

/// Writes `pub const NAME: [f32; LEN] = [...];`: the starting contents of an arena for a step
/// written by [`Replay::write_rust`] (each value spelled so that it reads back bit for bit).
///
/// # Errors
/// [`Error::InvalidArgument`] when `name` is not a Rust identifier, a value is not finite or
/// `out` fails.
pub fn write_rust_array<W: core::fmt::Write>(
    out: &mut W,
    name: &str,
    values: &[f32],
) -> Result<()> {
    if !is_rust_name(name) {
        return Err(Error::InvalidArgument {
            what: "write_rust_array: the name is not a Rust identifier",
        });
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument {
            what: "write_rust_array: a value is not finite",
        });
    }
    let emit = |out: &mut W| -> core::fmt::Result {
        writeln!(out, "pub const {name}: [f32; {}] = [", values.len())?;
        for row in values.chunks(8) {
            out.write_str("   ")?;
            for v in row {
                write!(out, " {v:?},")?;
            }
            out.write_str("\n")?;
        }
        out.write_str("];\n")
    };
    emit(out).map_err(|_| Error::InvalidArgument {
        what: "write_rust_array: the writer failed",
    })
}
