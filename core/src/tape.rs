//! The arena and the tape: tensors are handles into one arena; ops run eagerly and record a node;
//! `backward` walks the nodes in reverse.

use crate::backend::{Backend, Cpu, HostBackend, View};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::binary::BinaryOp;
use crate::ops::loss::LossOp;
use crate::ops::reduce::ReduceOp;
use crate::ops::unary::UnaryOp;
use crate::shape::Shape;

/// "No node" / "no offset".
pub(crate) const NONE: u32 = u32::MAX;

/// What a node computed. Each op family's backward lives beside its forward in `ops/`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    /// Data from the host; no gradient.
    Input,
    /// A parameter: `trainable` ones have a gradient region allocated right after their value,
    /// and `state` is the offset of the optimizer's `states` buffers for it (`NONE` until an
    /// optimizer exists), [`Tape::state_stride`] apart.
    Param {
        trainable: bool,
        has_grad: bool,
        states: u8,
        state: u32,
    },
    /// `UnaryOp::pack`ed: `Op` stays 8 bytes (a `UnaryOp` field would make it 12).
    Unary {
        code: u8,
        arg: f32,
    },
    Binary(BinaryOp),
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `y = x W^T + bias`: `a` is x, `b` is W, `bias` a node id or `NONE`.
    Linear {
        bias: u32,
    },
    /// `axis == u8::MAX`: over all elements.
    Reduce {
        op: ReduceOp,
        axis: u8,
    },
    Softmax {
        axis: u8,
        log: bool,
    },
    Reshape,
    Transpose {
        d0: u8,
        d1: u8,
    },
    BroadcastTo,
    Slice {
        axis: u8,
        start: u32,
    },
    Concat {
        axis: u8,
    },
    /// 2-D convolution: `a` is x, `b` the weight; stride, padding, dilation packed
    /// (`ops::conv::pack`).
    Conv {
        geom: u32,
    },
    /// 2-D pooling: window, stride, padding packed.
    Pool {
        geom: u32,
        max: bool,
    },
    /// Row lookup: `a` is the table, `b` the indices; the row `padding` (`NONE`: none) gets
    /// no gradient.
    Gather {
        padding: u32,
    },
    /// `LossOp::pack`ed, as `Unary`; a cross-entropy's classes are its logits' columns.
    Loss {
        code: u8,
        arg: f32,
    },
}

/// The backward of one recorded node (`dx += ...` for its inputs). Each node's is stored beside
/// it, chosen by the forward op that recorded it: a program links the backward kernels of the
/// op families it runs, not all of them (what a `match` over [`Op`] would do), which matters in
/// a microcontroller's flash.
pub(crate) type BackwardFn<B, const N: usize> = fn(&mut Tape<B, N>, &Node) -> Result<()>;

/// One recorded op: its inputs (node ids), where its output lives, and its gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    pub op: Op,
    pub a: u32,
    pub b: u32,
    pub offset: u32,
    pub shape: Shape,
    /// Offset of the gradient region, `NONE` while none was allocated.
    pub grad: u32,
    /// Whether a trainable parameter influences this value.
    pub rg: bool,
}

impl Node {
    pub(crate) fn view(&self) -> View {
        View {
            offset: self.offset as usize,
            shape: self.shape,
        }
    }

    /// The view of its gradient.
    fn dy(&self) -> View {
        View {
            offset: self.grad as usize,
            shape: self.shape,
        }
    }
}

/// A tensor on the tape: a small `Copy` handle (node id, arena offset, shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var {
    pub(crate) id: u32,
    pub(crate) offset: u32,
    pub(crate) shape: Shape,
}

impl Var {
    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Where its value starts in the arena (in elements): what a backend's `read` or a
    /// replayed or generated step ([`crate::replay::Replay::write_rust`]) addresses.
    pub fn offset(&self) -> usize {
        self.offset as usize
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Where the value lives in the arena.
    pub fn view(&self) -> View {
        View {
            offset: self.offset as usize,
            shape: self.shape,
        }
    }
}

/// A point to rewind the tape and the arena to (see [`Tape::mark`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    nodes: usize,
    top: usize,
    /// Rewinds done on the tape when the mark was taken (64 bits: a device rewinding a
    /// thousand times a second would take 50 days to exhaust 32).
    gen: u64,
}

/// How far back the rewinds after a given moment went: for marks taken after `since` rewinds
/// (up to the next entry's `since`), no later rewind went below `(nodes, top)`.
#[derive(Clone, Copy, Debug)]
struct Floor {
    since: u64,
    nodes: u32,
    top: u32,
}

/// Rewind history kept exactly for this many nesting levels of marks; older levels merge
/// (conservatively: a very old mark nested under three newer levels may be refused).
const FLOORS: usize = 3;

impl Mark {
    /// Floats of the arena in use at the mark: everything below it (for example parameters,
    /// their gradients and optimizer state, when marked before the first step) is
    /// `storage()[..mark.floats()]` on a host backend.
    pub fn floats(&self) -> usize {
        self.top
    }
}

/// The tape: an arena (a bump allocator over a backend's storage) and a fixed-capacity list of
/// up to `NODES` recorded ops.
///
/// Ops are methods of the tape (`tape.relu(x)`), run eagerly, and record a node when gradients
/// are enabled. [`Tape::backward`] computes the gradient of a scalar with respect to every
/// trainable parameter; an optimizer then updates them.
pub struct Tape<B: Backend, const NODES: usize> {
    pub(crate) backend: B,
    pub(crate) nodes: heapless::Vec<Node, NODES>,
    /// The backward of each node (same length as `nodes`).
    bws: heapless::Vec<BackwardFn<B, NODES>, NODES>,
    capacity: usize,
    /// Every allocation starts at a multiple of it ([`Backend::align`], a power of two).
    align: usize,
    top: usize,
    high: usize,
    grad_enabled: bool,
    grads_dirty: bool,
    gen: u64,
    floors: heapless::Vec<Floor, FLOORS>,
}

impl<'a, T: Float, const NODES: usize> Tape<Cpu<'a, T>, NODES> {
    /// A tape on the reference CPU backend over `mem`, the arena's storage.
    pub fn new(mem: &'a mut [T]) -> Self {
        Tape::with_backend(Cpu::new(mem))
    }
}

impl<B: Backend, const NODES: usize> Tape<B, NODES> {
    /// A tape over any backend.
    pub fn with_backend(backend: B) -> Self {
        const { assert!(NODES > 0, "a tape needs room for at least one node") };
        const {
            assert!(
                NODES < u32::MAX as usize,
                "node indices are stored in 32 bits"
            )
        };
        let capacity = backend.capacity().min(NONE as usize - 1);
        // A power of two no larger than the largest one below u32::MAX (capacities are u32).
        let align = backend
            .align()
            .clamp(1, 1 << 30)
            .checked_next_power_of_two()
            .unwrap_or(1 << 30);
        Tape {
            backend,
            nodes: heapless::Vec::new(),
            bws: heapless::Vec::new(),
            capacity,
            align,
            top: 0,
            high: 0,
            grad_enabled: true,
            grads_dirty: false,
            gen: 0,
            floors: heapless::Vec::new(),
        }
    }

    /// The backend (for example to copy data in or out directly).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    // ----- the arena -----

    /// Elements of the arena in use.
    pub fn used(&self) -> usize {
        self.top
    }

    /// Bytes of the arena in use.
    pub fn used_bytes(&self) -> usize {
        self.top.saturating_mul(core::mem::size_of::<B::Elem>())
    }

    /// The most elements ever in use at once (since creation or [`Tape::reset_high_water`]).
    pub fn high_water(&self) -> usize {
        self.high
    }

    /// [`Tape::high_water`] in bytes.
    pub fn high_water_bytes(&self) -> usize {
        self.high.saturating_mul(core::mem::size_of::<B::Elem>())
    }

    /// Restarts high-water tracking from the current use.
    pub fn reset_high_water(&mut self) {
        self.high = self.top;
    }

    /// Elements of the arena.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Nodes recorded.
    pub fn nodes_used(&self) -> usize {
        self.nodes.len()
    }

    /// Gives back everything allocated from `at` on (scratch memory of a kernel, taken with
    /// [`Tape::alloc`] right before). The high-water mark keeps the peak.
    pub(crate) fn release(&mut self, at: usize) {
        if at <= self.top {
            self.top = at;
        }
    }

    /// Elements the next allocation can take: the capacity left after the alignment padding.
    pub(crate) fn free_aligned(&self) -> usize {
        self.capacity - self.aligned_top(self.top)
    }

    /// Where an allocation made at `top` starts: the next multiple of the alignment (at most the
    /// capacity).
    pub(crate) fn aligned_top(&self, top: usize) -> usize {
        // `align` is a power of two: a mask, no division (and no panic path on a
        // microcontroller, where it is 1 and this is `top`).
        let mask = self.align.wrapping_sub(1);
        top.checked_add(mask)
            .map_or(self.capacity, |t| (t & !mask).min(self.capacity))
    }

    /// Elements from one optimizer state buffer of a parameter of `len` elements to the next
    /// (one allocation holds them all): `len`, rounded up to the backend's [`Backend::align`].
    pub(crate) fn state_stride(&self, len: usize) -> usize {
        let mask = self.align.wrapping_sub(1);
        len.checked_add(mask).map_or(usize::MAX, |l| l & !mask)
    }

    /// Where the optimizer keeps its `k`-th state buffer for parameter `p`, shaped like `p`:
    /// Adam's and AdamW's `exp_avg` (0), `exp_avg_sq` (1) and, with AMSGrad, `max_exp_avg_sq`
    /// (2); SGD's `momentum_buffer` (0); RMSprop's `square_avg` (0), then its
    /// `momentum_buffer` with momentum, then `grad_avg` when centered; Adagrad's `sum` (0).
    /// `None` where there is none: no optimizer yet, a frozen parameter, SGD without momentum,
    /// `k` past the optimizer's buffers. For saving and restoring an optimizer's state.
    ///
    /// # Errors
    /// [`Error::StaleHandle`]; [`Error::NotAParameter`].
    pub fn param_state(&self, p: Var, k: usize) -> Result<Option<View>> {
        let node = self.check(p)?.ok_or(Error::NotAParameter)?;
        let Op::Param { states, state, .. } = node.op else {
            return Err(Error::NotAParameter);
        };
        if state == NONE || k >= states as usize {
            return Ok(None);
        }
        let offset = self
            .state_stride(node.shape.numel())
            .checked_mul(k)
            .and_then(|o| o.checked_add(state as usize))
            .ok_or(Error::NotAParameter)?;
        Ok(Some(View {
            offset,
            shape: node.shape,
        }))
    }

    /// Allocates `len` elements (uninitialised: the previous contents), starting at the next
    /// multiple of the backend's [`Backend::align`].
    pub(crate) fn alloc(&mut self, len: usize) -> Result<usize> {
        let at = self.aligned_top(self.top);
        let free = self.capacity - at;
        if len > free {
            return Err(Error::ArenaFull { needed: len, free });
        }
        self.top = at + len;
        self.high = self.high.max(self.top);
        Ok(at)
    }

    /// The current position: parameters and optimizer state created so far stay below it.
    pub fn mark(&self) -> Mark {
        Mark {
            nodes: self.nodes.len(),
            top: self.top,
            gen: self.gen,
        }
    }

    /// Starts a new step: drops every node and allocation made after `mark` (activations,
    /// inputs, their gradients) and zeroes the gradients of the parameters, in O(parameters).
    ///
    /// # Errors
    /// [`Error::StaleHandle`] when `mark` is no longer a position of this tape: an earlier
    /// rewind went below it (marks follow a stack discipline: rewinding to a mark invalidates
    /// the marks taken above it), or it comes from another tape.
    pub fn rewind(&mut self, mark: Mark) -> Result<()> {
        self.rewind_keep_grad(mark)?;
        self.zero_grad()
    }

    /// Like [`Tape::rewind`] but keeps the parameters' gradients, so that several backward
    /// passes accumulate (gradient accumulation over micro-batches).
    ///
    /// # Errors
    /// As [`Tape::rewind`].
    pub fn rewind_keep_grad(&mut self, mark: Mark) -> Result<()> {
        if !self.mark_is_live(&mark) {
            return Err(Error::StaleHandle);
        }
        self.nodes.truncate(mark.nodes);
        self.bws.truncate(mark.nodes);
        self.top = mark.top;
        self.note_rewind(&mark);
        for n in self.nodes.iter_mut() {
            match &mut n.op {
                // Optimizer state placed above the mark is given back with the rest: the
                // parameter no longer has any (its optimizer's step then says so), rather than
                // naming floats that the next allocations reuse.
                Op::Param { state, states, .. } => {
                    if *state != NONE && *state as usize >= mark.top {
                        *state = NONE;
                        *states = 0;
                    }
                }
                _ => n.grad = NONE,
            }
        }
        Ok(())
    }

    fn mark_is_live(&self, mark: &Mark) -> bool {
        if mark.nodes > self.nodes.len() || mark.top > self.top || mark.gen > self.gen {
            return false;
        }
        if mark.gen == self.gen {
            // No rewind since the mark: everything below it is untouched.
            return true;
        }
        // The floor that covers the mark's moment (the first entry covers everything older).
        let floor = self
            .floors
            .iter()
            .rev()
            .find(|f| f.since <= mark.gen)
            .or(self.floors.first());
        match floor {
            Some(f) => mark.nodes <= f.nodes as usize && mark.top <= f.top as usize,
            None => false,
        }
    }

    fn note_rewind(&mut self, mark: &Mark) {
        let (nodes, top) = (mark.nodes as u32, mark.top as u32);
        for f in self.floors.iter_mut() {
            f.nodes = f.nodes.min(nodes);
            f.top = f.top.min(top);
        }
        let new = Floor {
            since: self.gen,
            nodes,
            top,
        };
        let same = |a: &Floor| a.nodes == new.nodes && a.top == new.top;
        if !self.floors.last().is_some_and(same) {
            if self.floors.is_full() {
                // Merge the two oldest levels: the older one's floor is the lower.
                if self.floors.len() > 1 {
                    self.floors.remove(1);
                }
            }
            // Cannot fail after the merge above.
            let _ = self.floors.push(new);
        }
        self.gen = self.gen.saturating_add(1);
    }

    /// Sets every parameter's gradient to zero (PyTorch's `optimizer.zero_grad()`, but zeroed
    /// rather than set to `None`: a parameter that gets no gradient in a step is still
    /// updated by the optimizer, with a zero gradient, so weight decay, momentum and Adam's
    /// moments still move it, where PyTorch's optimizers skip it);
    /// [`Tape::rewind`] does it for you.
    ///
    /// # Errors
    /// Only a backend failure.
    pub fn zero_grad(&mut self) -> Result<()> {
        if !self.grads_dirty {
            return Ok(());
        }
        for n in self.nodes.iter() {
            if let Op::Param { has_grad: true, .. } = n.op {
                self.backend
                    .fill(n.grad as usize, n.shape.numel(), B::Elem::ZERO)?;
            }
        }
        self.grads_dirty = false;
        Ok(())
    }

    // ----- modes -----

    /// Whether ops record nodes (the default). With gradients disabled, ops compute and return
    /// handles but record nothing and use no tape capacity: inference.
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Turns recording on or off (PyTorch's `torch.set_grad_enabled`).
    pub fn set_grad_enabled(&mut self, on: bool) {
        self.grad_enabled = on;
    }

    /// Runs `f` with recording off, then restores the previous mode (`with torch.no_grad():`).
    pub fn no_grad<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let was = self.grad_enabled;
        self.grad_enabled = false;
        let out = f(self);
        self.grad_enabled = was;
        out
    }

    // ----- handles -----

    /// Checks that `v` is alive on this tape; returns its node (if recorded).
    pub(crate) fn check(&self, v: Var) -> Result<Option<&Node>> {
        if v.offset as usize + v.numel() > self.top {
            return Err(Error::StaleHandle);
        }
        if v.id == NONE {
            return Ok(None);
        }
        match self.nodes.get(v.id as usize) {
            Some(n) if n.offset == v.offset && n.shape == v.shape => Ok(Some(n)),
            _ => Err(Error::StaleHandle),
        }
    }

    /// Whether a trainable parameter influences `v`.
    pub fn requires_grad(&self, v: Var) -> bool {
        matches!(self.check(v), Ok(Some(n)) if n.rg)
    }

    /// Makes sure `v` has a node while recording (a tensor made under `no_grad` gets an input
    /// node when a recorded op uses it).
    pub(crate) fn registered(&mut self, v: Var) -> Result<Var> {
        if self.check(v)?.is_none() && self.grad_enabled {
            return self.push(
                Op::Input,
                Self::bw_none,
                NONE,
                NONE,
                v.offset as usize,
                v.shape,
                false,
            );
        }
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        op: Op,
        bw: BackwardFn<B, NODES>,
        a: u32,
        b: u32,
        offset: usize,
        shape: Shape,
        rg: bool,
    ) -> Result<Var> {
        let id = self.nodes.len() as u32;
        self.nodes
            .push(Node {
                op,
                a,
                b,
                offset: offset as u32,
                shape,
                grad: NONE,
                rg,
            })
            .map_err(|_| Error::TapeFull { capacity: NODES })?;
        if self.bws.push(bw).is_err() {
            // Cannot happen: `bws` has the capacity of `nodes` and the same length.
            self.nodes.truncate(id as usize);
            return Err(Error::TapeFull { capacity: NODES });
        }
        Ok(Var {
            id,
            offset: offset as u32,
            shape,
        })
    }

    /// Runs an op: checks and registers its inputs, allocates its output, runs `kernel` on it
    /// and records a node. On any error the arena and the tape are left as they were.
    pub(crate) fn record(
        &mut self,
        op: Op,
        bw: BackwardFn<B, NODES>,
        inputs: &[Var],
        shape: Shape,
        kernel: impl FnOnce(&mut B, View) -> Result<()>,
    ) -> Result<Var> {
        self.all_or_nothing(|t| t.record_inner(op, bw, inputs, shape, kernel))
    }

    /// Runs `f`; if it fails, drops every node and arena float it added, so that a failed op
    /// changes nothing.
    pub(crate) fn all_or_nothing<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        let (top, len) = (self.top, self.nodes.len());
        let out = f(self);
        if out.is_err() {
            self.top = top;
            self.nodes.truncate(len);
            self.bws.truncate(len);
        }
        out
    }

    fn record_inner(
        &mut self,
        op: Op,
        bw: BackwardFn<B, NODES>,
        inputs: &[Var],
        shape: Shape,
        kernel: impl FnOnce(&mut B, View) -> Result<()>,
    ) -> Result<Var> {
        let mut ids = [NONE; 2];
        let mut rg = false;
        for (slot, &v) in ids.iter_mut().zip(inputs) {
            let v = self.registered(v)?;
            rg |= self.requires_grad(v);
            *slot = v.id;
        }
        // Inputs beyond two (the bias of `linear`) are checked by the caller.
        for &v in inputs.iter().skip(2) {
            let v = self.registered(v)?;
            rg |= self.requires_grad(v);
        }
        if self.grad_enabled && self.nodes.is_full() {
            return Err(Error::TapeFull { capacity: NODES });
        }
        let offset = self.alloc(shape.numel())?;
        let view = View { offset, shape };
        kernel(&mut self.backend, view)?;
        if self.grad_enabled {
            self.push(
                op,
                bw,
                ids[0],
                ids[1],
                offset,
                shape,
                rg && self.grad_enabled,
            )
        } else {
            Ok(Var {
                id: NONE,
                offset: offset as u32,
                shape,
            })
        }
    }

    // ----- data in and out -----

    /// Copies host data onto the tape as a tensor of shape `dims` (no gradient).
    ///
    /// # Errors
    /// [`Error::BadDims`], [`Error::LengthMismatch`], [`Error::ArenaFull`], [`Error::TapeFull`].
    pub fn input(&mut self, dims: &[usize], data: &[B::Elem]) -> Result<Var> {
        self.input_shape(Shape::new(dims)?, data)
    }

    /// [`Tape::input`] with a [`Shape`].
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn input_shape(&mut self, shape: Shape, data: &[B::Elem]) -> Result<Var> {
        if data.len() != shape.numel() {
            return Err(Error::LengthMismatch {
                op: "input",
                expected: shape.numel(),
                got: data.len(),
            });
        }
        self.record(Op::Input, Self::bw_none, &[], shape, |b, y| {
            b.write(y.offset, data)
        })
    }

    /// A tensor of shape `dims` filled with `value` (no gradient).
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn full(&mut self, dims: &[usize], value: B::Elem) -> Result<Var> {
        let shape = Shape::new(dims)?;
        self.record(Op::Input, Self::bw_none, &[], shape, |b, y| {
            b.fill(y.offset, y.len(), value)
        })
    }

    /// A tensor of shape `dims` whose values come from `f`, called once per element in order
    /// (no gradient, no host buffer; not called on a backend that computes nothing, as
    /// [`crate::Meter`]'s dry runs).
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn input_with(&mut self, dims: &[usize], mut f: impl FnMut() -> B::Elem) -> Result<Var> {
        let shape = Shape::new(dims)?;
        self.record(Op::Input, Self::bw_none, &[], shape, |b, y| {
            write_with(b, y.offset, y.len(), &mut f)
        })
    }

    /// Class labels for [`Tape::cross_entropy`] (or row indices for an embedding), stored as
    /// floats: each must be a whole number the element type holds exactly (in `f32`, every
    /// one up to 2^24, and past it only those `f32` holds, as 2^25).
    ///
    /// # Errors
    /// As [`Tape::input`]; [`Error::IndexOutOfRange`] for a label the element type would round
    /// (it would name another class).
    pub fn labels(&mut self, labels: &[usize]) -> Result<Var> {
        let shape = Shape::new(&[labels.len()])?;
        if let Some(&l) = labels
            .iter()
            .find(|&&l| B::Elem::from_usize(l).to_f64() != l as f64)
        {
            return Err(Self::inexact_label(
                "labels: a label the element type does not hold exactly",
                l,
            ));
        }
        let mut it = labels.iter();
        self.record_labels(shape, || {
            B::Elem::from_usize(it.next().copied().unwrap_or(0))
        })
    }

    /// A label `index` that the element type would round, refused (the bound: the first whole
    /// number past those it holds).
    fn inexact_label(op: &'static str, index: usize) -> Error {
        Error::IndexOutOfRange {
            op,
            index,
            bound: match B::Elem::NAME {
                "f32" => (1 << 24) + 1,
                _ => usize::try_from((1u64 << 53) + 1).unwrap_or(usize::MAX),
            },
        }
    }

    /// Records checked labels, their values from `next`.
    fn record_labels(&mut self, shape: Shape, mut next: impl FnMut() -> B::Elem) -> Result<Var> {
        self.record(Op::Input, Self::bw_none, &[], shape, |b, y| {
            write_with(b, y.offset, y.len(), &mut next)
        })
    }

    /// Signed class labels (PyTorch's `int64` targets): for [`Tape::cross_entropy_ignore`],
    /// whose `ignore_index` is often negative (PyTorch's default -100). Each must be a whole
    /// number the element type holds exactly (in `f32`, every one up to 2^24 in magnitude,
    /// and past it only those `f32` holds).
    ///
    /// # Errors
    /// As [`Tape::input`]; [`Error::IndexOutOfRange`] for a label the element type would round
    /// (its magnitude as the index).
    pub fn labels_signed(&mut self, labels: &[i64]) -> Result<Var> {
        let shape = Shape::new(&[labels.len()])?;
        let exact = |l: i64| {
            let v = l as f64;
            v as i128 == i128::from(l) && B::Elem::from_f64(v).to_f64() == v
        };
        if let Some(&l) = labels.iter().find(|&&l| !exact(l)) {
            return Err(Self::inexact_label(
                "labels_signed: a label the element type does not hold exactly",
                usize::try_from(l.unsigned_abs()).unwrap_or(usize::MAX),
            ));
        }
        let mut it = labels.iter();
        self.record_labels(shape, || {
            B::Elem::from_f64(it.next().copied().unwrap_or(0) as f64)
        })
    }

    /// Copies a tensor's values out to `out` (which must have `v.numel()` elements).
    ///
    /// # Errors
    /// [`Error::StaleHandle`], [`Error::LengthMismatch`].
    pub fn read(&self, v: Var, out: &mut [B::Elem]) -> Result<()> {
        self.check(v)?;
        if out.len() != v.numel() {
            return Err(Error::LengthMismatch {
                op: "read",
                expected: v.numel(),
                got: out.len(),
            });
        }
        self.backend.read(v.offset as usize, out)
    }

    /// The value of a one-element tensor (a loss).
    ///
    /// # Errors
    /// [`Error::StaleHandle`], [`Error::NotScalar`].
    pub fn item(&self, v: Var) -> Result<B::Elem> {
        if v.numel() != 1 {
            return Err(Error::NotScalar { shape: v.shape });
        }
        let mut out = [B::Elem::ZERO];
        self.read(v, &mut out)?;
        Ok(out[0])
    }

    /// Overwrites a tensor's values from the host (for example a new batch in the same place).
    ///
    /// # Errors
    /// [`Error::StaleHandle`], [`Error::LengthMismatch`].
    pub fn write(&mut self, v: Var, data: &[B::Elem]) -> Result<()> {
        self.check(v)?;
        if data.len() != v.numel() {
            return Err(Error::LengthMismatch {
                op: "write",
                expected: v.numel(),
                got: data.len(),
            });
        }
        self.backend.write(v.offset as usize, data)
    }

    /// Writes `f()` into each element of `v` in order, in small chunks from the stack (no
    /// allocation): for initialising a parameter in place ([`crate::nn::init`]). A backend
    /// error stops it part way, with the chunks before it written. On a backend that computes
    /// nothing (a dry run) `f` is not called.
    ///
    /// # Errors
    /// [`Error::StaleHandle`]; a backend error.
    pub fn write_with(&mut self, v: Var, mut f: impl FnMut() -> B::Elem) -> Result<()> {
        self.check(v)?;
        write_with(&mut self.backend, v.offset as usize, v.numel(), &mut f)
    }

    /// Where the gradient of `v` lives, once [`Tape::backward`] has reached it: `None` if no
    /// gradient flowed to it.
    ///
    /// # Errors
    /// [`Error::StaleHandle`]; [`Error::FrozenParameter`] for a parameter created frozen.
    pub fn grad(&self, v: Var) -> Result<Option<View>> {
        let node = self.check(v)?.ok_or(Error::NoGradient)?;
        if let Op::Param {
            has_grad: false, ..
        } = node.op
        {
            return Err(Error::FrozenParameter);
        }
        if node.grad == NONE {
            return Ok(None);
        }
        Ok(Some(View {
            offset: node.grad as usize,
            shape: node.shape,
        }))
    }

    /// Copies the gradient of `v` out (zeros where no gradient flowed).
    ///
    /// # Errors
    /// As [`Tape::grad`] and [`Tape::read`].
    pub fn read_grad(&self, v: Var, out: &mut [B::Elem]) -> Result<()> {
        if out.len() != v.numel() {
            return Err(Error::LengthMismatch {
                op: "read_grad",
                expected: v.numel(),
                got: out.len(),
            });
        }
        match self.grad(v)? {
            Some(g) => self.backend.read(g.offset, out),
            None => {
                out.fill(B::Elem::ZERO);
                Ok(())
            }
        }
    }

    // ----- parameters -----

    /// A trainable parameter of shape `dims` with initial values `data`. Its value and its
    /// gradient are allocated together; create parameters before [`Tape::mark`].
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn param(&mut self, dims: &[usize], data: &[B::Elem]) -> Result<Var> {
        self.param_impl(dims, true, |b, off, n| {
            if data.len() != n {
                return Err(Error::LengthMismatch {
                    op: "param",
                    expected: n,
                    got: data.len(),
                });
            }
            b.write(off, data)
        })
    }

    /// A frozen parameter: it gets no gradient storage and no optimizer state (a backbone
    /// loaded from flash). It cannot be unfrozen.
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn param_frozen(&mut self, dims: &[usize], data: &[B::Elem]) -> Result<Var> {
        self.param_impl(dims, false, |b, off, n| {
            if data.len() != n {
                return Err(Error::LengthMismatch {
                    op: "param",
                    expected: n,
                    got: data.len(),
                });
            }
            b.write(off, data)
        })
    }

    /// A trainable parameter whose values come from `init`, called once per element in order
    /// (no host buffer needed; not called on a backend that computes nothing).
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn param_with(&mut self, dims: &[usize], mut init: impl FnMut() -> B::Elem) -> Result<Var> {
        self.param_impl(dims, true, |b, off, n| write_with(b, off, n, &mut init))
    }

    /// A frozen parameter whose values come from `init`, called once per element in order
    /// (not called on a backend that computes nothing).
    ///
    /// # Errors
    /// As [`Tape::input`].
    pub fn param_frozen_with(
        &mut self,
        dims: &[usize],
        mut init: impl FnMut() -> B::Elem,
    ) -> Result<Var> {
        self.param_impl(dims, false, |b, off, n| write_with(b, off, n, &mut init))
    }

    fn param_impl(
        &mut self,
        dims: &[usize],
        trainable: bool,
        fill: impl FnOnce(&mut B, usize, usize) -> Result<()>,
    ) -> Result<Var> {
        let shape = Shape::new(dims)?;
        let n = shape.numel();
        if self.nodes.is_full() {
            return Err(Error::TapeFull { capacity: NODES });
        }
        // What the parameter needs as a whole (value, the padding that aligns its gradient,
        // and the gradient), checked before anything is written: filling a value whose
        // gradient then does not fit would be wasted work (much of it, on a large tensor).
        let needed = if trainable {
            self.state_stride(n).saturating_add(n)
        } else {
            n
        };
        let free = self.free_aligned();
        if needed > free {
            return Err(Error::ArenaFull { needed, free });
        }
        let top = self.top;
        let res = (|| {
            let offset = self.alloc(n)?;
            fill(&mut self.backend, offset, n)?;
            // Its own allocation: aligned as the value is (right after it without padding).
            let grad = if trainable {
                let g = self.alloc(n)?;
                self.backend.fill(g, n, B::Elem::ZERO)?;
                g
            } else {
                NONE as usize
            };
            Ok((offset, grad))
        })();
        let (offset, grad) = res.inspect_err(|_| self.top = top)?;
        let op = Op::Param {
            trainable,
            has_grad: trainable,
            states: 0,
            state: NONE,
        };
        let v = self.push(op, Self::bw_none, NONE, NONE, offset, shape, trainable)?;
        if trainable {
            if let Some(node) = self.nodes.get_mut(v.id as usize) {
                node.grad = grad as u32;
            }
        }
        Ok(v)
    }

    pub(crate) fn param_node_mut(&mut self, p: Var) -> Result<&mut Node> {
        self.check(p)?.ok_or(Error::NotAParameter)?;
        let node = self
            .nodes
            .get_mut(p.id as usize)
            .ok_or(Error::StaleHandle)?;
        match node.op {
            Op::Param { .. } => Ok(node),
            _ => Err(Error::NotAParameter),
        }
    }

    /// Stops training `p`: no gradient flows to it and optimizers skip it (its storage stays).
    ///
    /// # Errors
    /// [`Error::StaleHandle`], [`Error::NotAParameter`].
    pub fn freeze(&mut self, p: Var) -> Result<()> {
        let node = self.param_node_mut(p)?;
        if let Op::Param {
            ref mut trainable, ..
        } = node.op
        {
            *trainable = false;
        }
        node.rg = false;
        Ok(())
    }

    /// Trains `p` again after [`Tape::freeze`].
    ///
    /// # Errors
    /// [`Error::FrozenParameter`] when `p` was created frozen (it has no gradient storage);
    /// [`Error::StaleHandle`], [`Error::NotAParameter`].
    pub fn unfreeze(&mut self, p: Var) -> Result<()> {
        let node = self.param_node_mut(p)?;
        match node.op {
            Op::Param {
                has_grad: false, ..
            } => Err(Error::FrozenParameter),
            Op::Param {
                ref mut trainable, ..
            } => {
                *trainable = true;
                node.rg = true;
                Ok(())
            }
            _ => Err(Error::NotAParameter),
        }
    }

    /// Whether `p` is a trainable (not frozen) parameter.
    pub fn is_trainable(&self, p: Var) -> bool {
        matches!(
            self.check(p),
            Ok(Some(Node {
                op: Op::Param {
                    trainable: true,
                    ..
                },
                ..
            }))
        )
    }

    /// Every parameter on the tape, in creation order (frozen ones included).
    pub fn params(&self) -> impl Iterator<Item = Var> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n.op {
                Op::Param { .. } => Some(Var {
                    id: i as u32,
                    offset: n.offset,
                    shape: n.shape,
                }),
                _ => None,
            })
    }

    /// The number of parameter elements (`trainable_only`: frozen ones left out).
    pub fn param_count(&self, trainable_only: bool) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Param { trainable, .. } if trainable || !trainable_only))
            .map(|n| n.shape.numel())
            .sum()
    }

    // ----- backward -----

    /// Computes the gradient of the scalar `loss` with respect to every tensor that a trainable
    /// parameter influences (`loss.backward()`). Parameter gradients accumulate until
    /// [`Tape::rewind`] or [`Tape::zero_grad`]; gradients of activations are allocated in the
    /// arena, after the step's activations.
    ///
    /// # Errors
    /// [`Error::NotScalar`], [`Error::NoGradient`] (nothing trainable reaches `loss`),
    /// [`Error::ArenaFull`] (no room for the gradients), [`Error::StaleHandle`]. A backward
    /// that fails part way gives back the arena it took, but the parameters' gradients may
    /// hold part of its contribution: zero them ([`Tape::zero_grad`], or rewind) before
    /// trying again.
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        self.sweep(loss, |_, _| Ok(()))
    }

    /// [`Tape::backward`] that reports each parameter as soon as its gradient is final: `ready`
    /// runs once for every parameter with a gradient region (frozen-after-training ones
    /// included), right after the sweep passes the lowest op (up to `loss`) that reads it,
    /// while the ops below are still to run. That op may not lead to `loss` (a metric computed
    /// from the parameter before the forward): the report then waits for it all the same.
    /// Parameters that nothing up to `loss` reads are reported at the end, in creation order.
    ///
    /// This is what data-parallel training overlaps its gradient all-reduce with (PyTorch's
    /// `DistributedDataParallel` hooks): a bucket of gradients can be sent while the backward
    /// goes on. `ready` must not change the tape's nodes (it gets the tape to read gradients
    /// and to reach the backend).
    ///
    /// # Errors
    /// As [`Tape::backward`]; whatever `ready` returns (the backward stops there).
    pub fn backward_with(
        &mut self,
        loss: Var,
        mut ready: impl FnMut(&mut Self, Var) -> Result<()>,
    ) -> Result<()> {
        let last = loss.id as usize;
        self.sweep(loss, |t, i| {
            let Some(&node) = t.nodes.get(i) else {
                return Ok(());
            };
            let bias = match node.op {
                Op::Linear { bias } => bias,
                _ => NONE,
            };
            let inputs = [node.a, node.b, bias];
            for (k, &j) in inputs.iter().enumerate() {
                // An input read twice by one node counts once.
                if j == NONE || inputs.get(..k).is_some_and(|s| s.contains(&j)) {
                    continue;
                }
                if let Some(p) = t.graded_param(j) {
                    if t.first_reader(j, last) == Some(i) {
                        ready(t, p)?;
                    }
                }
            }
            Ok(())
        })?;
        for j in 0..self.nodes.len() as u32 {
            if let Some(p) = self.graded_param(j) {
                if self.first_reader(j, last).is_none() {
                    ready(self, p)?;
                }
            }
        }
        Ok(())
    }

    /// Node `id` as a parameter handle, when it is a parameter with a gradient region.
    fn graded_param(&self, id: u32) -> Option<Var> {
        let n = self.nodes.get(id as usize)?;
        match n.op {
            Op::Param { has_grad: true, .. } if n.grad != NONE => Some(Var {
                id,
                offset: n.offset,
                shape: n.shape,
            }),
            _ => None,
        }
    }

    /// The lowest node in `id + 1 ..= last` that reads node `id`.
    fn first_reader(&self, id: u32, last: usize) -> Option<usize> {
        let from = id as usize + 1;
        let nodes = self
            .nodes
            .get(from..=last.min(self.nodes.len().saturating_sub(1)))?;
        nodes
            .iter()
            .position(|n| {
                n.a == id || n.b == id || matches!(n.op, Op::Linear { bias } if bias == id)
            })
            .map(|k| k + from)
    }

    /// The reverse sweep of the backward: runs each node's backward from `loss` down, calling
    /// `after(tape, i)` once node `i` is done (whether or not it had a gradient to pass on).
    fn sweep(
        &mut self,
        loss: Var,
        mut after: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        let node = self.check(loss)?.ok_or(Error::NoGradient)?;
        if loss.numel() != 1 {
            return Err(Error::NotScalar { shape: loss.shape });
        }
        if !node.rg {
            return Err(Error::NoGradient);
        }
        let clear = |t: &mut Self| {
            for n in t.nodes.iter_mut() {
                if !matches!(n.op, Op::Param { .. }) {
                    n.grad = NONE;
                }
            }
        };
        clear(self);
        let top = self.top;
        let res = (|| {
            let g = self.alloc(1)?;
            self.backend.fill(g, 1, B::Elem::ONE)?;
            if let Some(n) = self.nodes.get_mut(loss.id as usize) {
                n.grad = g as u32;
            }
            self.grads_dirty = true;
            for i in (0..=loss.id as usize).rev() {
                let (Some(&node), Some(&bw)) = (self.nodes.get(i), self.bws.get(i)) else {
                    continue;
                };
                if node.rg && node.grad != NONE {
                    bw(self, &node)?;
                }
                after(self, i)?;
            }
            Ok(())
        })();
        if res.is_err() {
            // The activation gradients' floats are given back (and their handles dropped);
            // what reached the parameters' gradients stays, as in PyTorch.
            self.top = top;
            clear(self);
        }
        res
    }

    /// The node of input id `id`, and its gradient region (allocated and zeroed on first use),
    /// or `None` when no gradient is wanted for it.
    pub(crate) fn input_grad(&mut self, id: u32) -> Result<Option<(View, usize)>> {
        let Some(&node) = self.nodes.get(id as usize) else {
            return Ok(None);
        };
        if !node.rg {
            return Ok(None);
        }
        if node.grad == NONE {
            let n = node.shape.numel();
            let g = self.alloc(n)?;
            self.backend.fill(g, n, B::Elem::ZERO)?;
            if let Some(m) = self.nodes.get_mut(id as usize) {
                m.grad = g as u32;
            }
            return Ok(Some((node.view(), g)));
        }
        Ok(Some((node.view(), node.grad as usize)))
    }

    /// The value view of node `id` (for inputs that need no gradient).
    pub(crate) fn node_view(&self, id: u32) -> Result<View> {
        self.nodes
            .get(id as usize)
            .map(Node::view)
            .ok_or(Error::StaleHandle)
    }

    // ----- the backward of each op family (see `BackwardFn`) -----

    pub(crate) fn bw_none(_: &mut Self, _: &Node) -> Result<()> {
        Ok(())
    }

    pub(crate) fn bw_unary(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Unary { code, arg } => match UnaryOp::unpack(code, arg) {
                Some(op) => t.unary_backward(op, n.a, n.view(), n.dy()),
                None => Err(Error::StaleHandle),
            },
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_binary(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Binary(op) => t.binary_backward(op, n.a, n.b, n.dy()),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_matmul(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::MatMul { ta, tb } => t.matmul_backward(ta, tb, n.a, n.b, n.dy()),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_linear(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Linear { bias } => t.linear_backward(n.a, n.b, bias, n.dy()),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_reduce(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Reduce { op, axis } => t.reduce_backward(op, axis, n.a, n.view(), n.dy()),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_softmax(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Softmax { axis, log } => t.softmax_backward(log, axis, n.a, n.view(), n.dy()),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_movement(t: &mut Self, n: &Node) -> Result<()> {
        t.movement_backward(n.op, n.a, n.b, n.dy())
    }

    pub(crate) fn bw_loss(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Loss { code, arg } => match LossOp::unpack(code, arg) {
                Some(op) => t.loss_backward(op, n.a, n.b, n.dy()),
                None => Err(Error::StaleHandle),
            },
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_gather(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Gather { padding } => t.gather_backward(n.a, n.b, n.grad as usize, padding),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_conv(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Conv { geom } => t.conv_backward(geom, n.a, n.b, n.grad as usize),
            _ => Err(Error::StaleHandle),
        }
    }

    pub(crate) fn bw_pool(t: &mut Self, n: &Node) -> Result<()> {
        match n.op {
            Op::Pool { geom, max } => {
                t.pool_backward(geom, max, n.a, n.offset as usize, n.grad as usize)
            }
            _ => Err(Error::StaleHandle),
        }
    }
}

/// Writes `n` values from `f` at `offset`, through a small stack buffer. A backend that
/// computes nothing ([`crate::Meter`]) gets nothing and `f` is not called: a dry run of a
/// large model does not draw its initial weights one by one.
pub(crate) fn write_with<B: Backend>(
    b: &mut B,
    offset: usize,
    n: usize,
    f: &mut impl FnMut() -> B::Elem,
) -> Result<()> {
    if !b.computes() {
        return Ok(());
    }
    let mut buf = [B::Elem::ZERO; 32];
    let mut done = 0;
    while done < n {
        let k = (n - done).min(32);
        let chunk = buf.get_mut(..k).unwrap_or(&mut []);
        for v in chunk.iter_mut() {
            *v = f();
        }
        b.write(offset + done, chunk)?;
        done += k;
    }
    Ok(())
}

impl<B: HostBackend, const NODES: usize> Tape<B, NODES> {
    /// A tensor's values, borrowed from host storage.
    ///
    /// # Errors
    /// [`Error::StaleHandle`].
    pub fn data(&self, v: Var) -> Result<&[B::Elem]> {
        self.check(v)?;
        self.backend
            .storage()
            .get(v.view().range())
            .ok_or(Error::StaleHandle)
    }

    /// A tensor's gradient, borrowed from host storage (`None`: no gradient reached it).
    ///
    /// # Errors
    /// As [`Tape::grad`].
    pub fn grad_data(&self, v: Var) -> Result<Option<&[B::Elem]>> {
        match self.grad(v)? {
            Some(g) => Ok(Some(
                self.backend
                    .storage()
                    .get(g.range())
                    .ok_or(Error::StaleHandle)?,
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Ops with scalar arguments are stored packed (`Unary`, `Loss`), so that a node stays
    /// small: every tape holds `N` of them, a microcontroller's included.
    #[test]
    fn nodes_stay_small() {
        assert_eq!(core::mem::size_of::<super::Op>(), 8);
        assert_eq!(core::mem::size_of::<super::Node>(), 48);
    }
}
