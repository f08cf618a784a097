//! Optimizers with their state in the arena: SGD (momentum, Nesterov, weight decay), Adam,
//! AdamW (and AMSGrad), RMSprop, Adagrad; and gradient clipping by global norm. Formulas as
//! PyTorch documents them.
//!
//! An optimizer covers every trainable parameter on the tape when it is created, and allocates
//! its state in the arena then (zeroed; Adagrad's sums at their starting value): create it
//! before [`Tape::mark`].

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::tape::{Op, Tape, NONE};

mod rms;
pub use rms::{rms_kernel, Adagrad, AdagradConfig, RmsProp, RmsPropConfig, RmsUpdate};

/// One SGD update of one parameter, as the backend kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdUpdate {
    /// Arena offset of the parameter.
    pub param: usize,
    /// Arena offset of its gradient.
    pub grad: usize,
    /// Arena offset of the momentum buffer (`None` without momentum).
    pub momentum_buf: Option<usize>,
    /// Elements.
    pub len: usize,
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// L2 penalty.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// First step: the momentum buffer starts as the gradient.
    pub first: bool,
}

/// One Adam/AdamW update of one parameter, as the backend kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamUpdate {
    /// Arena offset of the parameter.
    pub param: usize,
    /// Arena offset of its gradient.
    pub grad: usize,
    /// Arena offset of the first moment.
    pub m: usize,
    /// Arena offset of the second moment.
    pub v: usize,
    /// Elements.
    pub len: usize,
    /// Learning rate.
    pub lr: f64,
    /// beta1.
    pub beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// eps.
    pub eps: f64,
    /// Weight decay: L2 added to the gradient (Adam) or decoupled (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
    /// 1 - beta1^t.
    pub bias1: f64,
    /// 1 - beta2^t.
    pub bias2: f64,
    /// Arena offset of the running maximum of the second moment, for AMSGrad
    /// ([`AdamConfig::amsgrad`]); `None` for Adam as published.
    pub vmax: Option<usize>,
}

/// Reference SGD kernel (PyTorch's `torch.optim.SGD`):
/// `g = grad + wd p; buf = mu buf + (1 - dampening) g (buf = g at the first step);
/// g = g + mu buf (Nesterov) or buf; p -= lr g`.
pub fn sgd_kernel<T: Float>(u: &SgdUpdate, p: &mut [T], g: &[T], buf: Option<&mut [T]>) {
    let (lr, mu, damp, wd) = (
        T::from_f64(u.lr),
        T::from_f64(u.momentum),
        T::from_f64(1.0 - u.dampening),
        T::from_f64(u.weight_decay),
    );
    match buf {
        None => {
            for (p, &g) in p.iter_mut().zip(g) {
                let g = g + wd * *p;
                *p -= lr * g;
            }
        }
        Some(buf) => {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf) {
                let g = g + wd * *p;
                *b = if u.first {
                    g
                } else {
                    flush(mu * *b + damp * g)
                };
                let step = if u.nesterov { g + mu * *b } else { *b };
                *p -= lr * step;
            }
        }
    }
}

/// Zero for a subnormal: optimizer state decays geometrically once a gradient stays zero (a
/// dead ReLU unit), and subnormal arithmetic is tens of times slower on most CPUs. The change
/// is below `T::MIN_POSITIVE` (1e-38 in f32), far under anything that moves a parameter.
#[inline(always)]
fn flush<T: Float>(x: T) -> T {
    if x.abs() < T::MIN_POSITIVE {
        T::ZERO
    } else {
        x
    }
}

/// An Adam update's constants in the element type, as the reference kernels compute them.
struct AdamConsts<T> {
    b1: T,
    b2: T,
    c1: T,
    c2: T,
    step: T,
    inv_sqrt_b2: T,
    eps: T,
    l2: T,
    decay: T,
}

impl<T: Float> AdamConsts<T> {
    fn of(u: &AdamUpdate) -> Self {
        let b1 = T::from_f64(u.beta1);
        let b2 = T::from_f64(u.beta2);
        let (l2, decay) = if u.decoupled {
            (T::ZERO, T::from_f64(1.0 - u.lr * u.weight_decay))
        } else {
            (T::from_f64(u.weight_decay), T::ONE)
        };
        AdamConsts {
            b1,
            b2,
            c1: T::ONE - b1,
            c2: T::ONE - b2,
            step: T::from_f64(u.lr / u.bias1),
            inv_sqrt_b2: T::from_f64(1.0 / libm::sqrt(u.bias2)),
            eps: T::from_f64(u.eps),
            l2,
            decay,
        }
    }

    /// Both moments' update from the gradient `g` of the parameter `p`.
    #[inline(always)]
    fn moments(&self, p: T, g: T, m: &mut T, v: &mut T) {
        let g = g + self.l2 * p;
        *m = flush(self.b1 * *m + self.c1 * g);
        *v = flush(self.b2 * *v + self.c2 * g * g);
    }

    /// The updated parameter from the first moment `m` and the second moment `v` divided by.
    #[inline(always)]
    fn apply(&self, p: T, m: T, v: T) -> T {
        p * self.decay - self.step * m / (v.sqrt() * self.inv_sqrt_b2 + self.eps)
    }
}

/// Reference Adam/AdamW kernel (PyTorch's `torch.optim.Adam` / `AdamW`):
/// `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
/// p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`, with `g += wd p` (Adam) or
/// `p *= 1 - lr wd` first (AdamW).
pub fn adam_kernel<T: Float>(u: &AdamUpdate, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let c = AdamConsts::of(u);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        c.moments(*p, g, m, v);
        *p = c.apply(*p, *m, *v);
    }
}

/// Reference AMSGrad kernel (PyTorch's `Adam(amsgrad=True)`): [`adam_kernel`]'s update with
/// the denominator from `vmax = max(vmax, v)`, the running maximum of the second moment (a
/// NaN `v` is kept, as `torch.maximum` propagates it).
pub fn amsgrad_kernel<T: Float>(
    u: &AdamUpdate,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    vmax: &mut [T],
) {
    let c = AdamConsts::of(u);
    let state = m.iter_mut().zip(v.iter_mut()).zip(vmax.iter_mut());
    for ((p, &g), ((m, v), vm)) in p.iter_mut().zip(g).zip(state) {
        c.moments(*p, g, m, v);
        if *v > *vm || v.is_nan() {
            *vm = *v;
        }
        *p = c.apply(*p, *m, *vm);
    }
}

/// What every optimizer offers.
pub trait Optimizer {
    /// Applies one update to every trainable parameter from its gradient (`optimizer.step()`).
    ///
    /// # Errors
    /// [`Error::MissingOptimizerState`] for a parameter unfrozen after the optimizer was made.
    fn step<B: Backend, const N: usize>(&mut self, tape: &mut Tape<B, N>) -> Result<()>;

    /// The learning rate.
    fn lr(&self) -> f64;

    /// Sets the learning rate (for schedules). A rate that is not finite and at least 0
    /// fails the next step with [`Error::InvalidArgument`], before any update.
    fn set_lr(&mut self, lr: f64);
}

/// Allocates `per_param` state buffers set to `init` for every trainable parameter (one
/// allocation, the buffers [`Tape::state_stride`] apart, so that each starts aligned),
/// recording the offset of the first and their count in its node. All or nothing.
fn alloc_state<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    per_param: usize,
    init: B::Elem,
) -> Result<()> {
    // Elements of a parameter's buffers: `len` more than whole strides (the last buffer needs
    // no padding after it); 0 for anything but a trainable parameter.
    let state_len = |tape: &Tape<B, N>, node: &crate::tape::Node| -> usize {
        match (node.op, per_param.checked_sub(1)) {
            (
                Op::Param {
                    trainable: true,
                    has_grad: true,
                    ..
                },
                Some(k),
            ) => {
                let len = node.shape.numel();
                tape.state_stride(len).saturating_mul(k).saturating_add(len)
            }
            _ => 0,
        }
    };
    // Allocate and zero every buffer first: where that fails, the arena is rewound and the
    // parameters still name their earlier state (a previous optimizer's), untouched.
    let mark = tape.mark();
    let res = (|| {
        for i in 0..tape.nodes.len() {
            let Some(node) = tape.nodes.get(i).copied() else {
                continue;
            };
            let n = state_len(tape, &node);
            if n > 0 {
                let off = tape.alloc(n)?;
                tape.backend.fill(off, n, init)?;
            }
        }
        Ok(())
    })();
    if res.is_err() {
        // Only floats were taken: give them back, leaving the nodes, their gradients and the
        // marks as they were.
        tape.release(mark.floats());
        return res;
    }
    // Then record where each went: the same placements again from the mark.
    let mut top = mark.floats();
    for i in 0..tape.nodes.len() {
        let Some(node) = tape.nodes.get(i).copied() else {
            continue;
        };
        let Op::Param {
            trainable: true,
            has_grad: true,
            ..
        } = node.op
        else {
            continue;
        };
        let n = state_len(tape, &node);
        let off = if n == 0 {
            0
        } else {
            let at = tape.aligned_top(top);
            top = at + n;
            at
        };
        if let Some(Op::Param { state, states, .. }) = tape.nodes.get_mut(i).map(|n| &mut n.op) {
            *state = off as u32;
            *states = per_param as u8;
        }
    }
    Ok(())
}

/// Calls `f(param offset, grad offset, state offset, len, state stride)` for every trainable
/// parameter.
fn for_each_trainable<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    needs: usize,
    mut f: impl FnMut(&mut B, usize, usize, usize, usize, usize) -> Result<()>,
) -> Result<()> {
    // Every parameter is checked before any is updated: a step that fails changes nothing. A
    // parameter needs `needs` state buffers (an SGD made without momentum has none: given
    // momentum later through its public settings, it must not write one).
    let missing = tape.nodes.iter().any(|n| match n.op {
        Op::Param {
            trainable: true,
            has_grad: true,
            state,
            states,
            ..
        } => state == NONE || usize::from(states) < needs,
        _ => false,
    });
    if missing {
        return Err(Error::MissingOptimizerState);
    }
    for i in 0..tape.nodes.len() {
        let Some(node) = tape.nodes.get(i).copied() else {
            continue;
        };
        if let Op::Param {
            trainable: true,
            has_grad: true,
            state,
            ..
        } = node.op
        {
            if state == NONE {
                return Err(Error::MissingOptimizerState);
            }
            let len = node.shape.numel();
            let stride = tape.state_stride(len);
            f(
                &mut tape.backend,
                node.offset as usize,
                node.grad as usize,
                state as usize,
                len,
                stride,
            )?;
        }
    }
    Ok(())
}

fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "learning rate must be finite and >= 0",
        })
    }
}

/// SGD settings, with PyTorch's defaults (`torch.optim.SGD`: lr 1e-3, no momentum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: none, and no state).
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// L2 penalty.
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// Settings.
    pub config: SgdConfig,
    steps: u64,
}

impl Sgd {
    /// An SGD optimizer over every trainable parameter of `tape`; allocates the momentum
    /// buffers when `momentum > 0`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad settings; [`Error::ArenaFull`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: SgdConfig,
    ) -> Result<Self> {
        let sgd = Self::detached(config)?;
        alloc_state(tape, usize::from(config.momentum > 0.0), B::Elem::ZERO)?;
        Ok(sgd)
    }

    /// An SGD that keeps its settings and step count only, with no tape (see
    /// [`Adam::detached`]).
    ///
    /// # Errors
    /// As [`Sgd::new`].
    pub fn detached(config: SgdConfig) -> Result<Self> {
        check_sgd(&config)?;
        Ok(Sgd { config, steps: 0 })
    }
}

/// `config`'s settings are ones SGD can run with.
fn check_sgd(config: &SgdConfig) -> Result<()> {
    check_lr(config.lr)?;
    let finite = config.momentum.is_finite() && config.weight_decay.is_finite();
    if !(finite
        && config.momentum >= 0.0
        && config.weight_decay >= 0.0
        && config.dampening.is_finite())
    {
        return Err(Error::InvalidArgument {
            what: "momentum and weight decay must be finite and >= 0",
        });
    }
    if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
        return Err(Error::InvalidArgument {
            what: "Nesterov momentum needs momentum > 0 and dampening 0",
        });
    }
    Ok(())
}

impl Sgd {
    /// Steps taken (the first step sets the momentum buffers instead of decaying them).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the steps taken (to resume from a checkpoint: with momentum, step 0 initialises
    /// the buffers).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The update of the next step without touching any parameter: advances the step count as
    /// [`Optimizer::step`] does and returns the settings every parameter's update of that step
    /// gets (`param`, `grad`, `len` are 0 and `momentum_buf` is `Some(0)` with momentum: fill
    /// them in). For re-running recorded update calls
    /// ([`crate::replay::Replay::replay_sgd`]). The settings are not checked again here
    /// ([`Sgd::detached`] checked them): settings changed since go through as they are.
    pub fn next_update(&mut self) -> SgdUpdate {
        let u = self.update_for(0, 0, 0, 0);
        self.steps = self.steps.saturating_add(1);
        u
    }

    fn update_for(&self, param: usize, grad: usize, state: usize, len: usize) -> SgdUpdate {
        let c = self.config;
        SgdUpdate {
            param,
            grad,
            momentum_buf: (c.momentum > 0.0).then_some(state),
            len,
            lr: c.lr,
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov,
            first: self.steps == 0,
        }
    }
}

impl Optimizer for Sgd {
    fn step<B: Backend, const N: usize>(&mut self, tape: &mut Tape<B, N>) -> Result<()> {
        // `set_lr` takes any value, and the settings are public: a bad one is refused here,
        // before any update.
        check_sgd(&self.config)?;
        let this = *self;
        let needs = usize::from(self.config.momentum > 0.0);
        for_each_trainable(tape, needs, |b, param, grad, state, len, _| {
            b.sgd(&this.update_for(param, grad, state, len))
        })?;
        self.steps = self.steps.saturating_add(1);
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Adam and AdamW settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// AMSGrad (Reddi et al.; PyTorch's `amsgrad=True`): the denominator uses the running
    /// maximum of the second moment, a third state buffer per parameter. Set it before
    /// [`Adam::new`], which allocates that buffer: an optimizer made without it refuses to
    /// step with it ([`Error::MissingOptimizerState`]).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    /// PyTorch's defaults for Adam: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay,
    /// no AMSGrad.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

/// Adam (Kingma and Ba), or AdamW (Loshchilov and Hutter) with decoupled weight decay.
#[derive(Clone, Copy, Debug)]
pub struct Adam {
    /// Settings.
    pub config: AdamConfig,
    decoupled: bool,
    t: i32,
    /// `beta1^t` and `beta2^t`, kept as running products (two multiplications a step instead
    /// of two `pow` calls, which are slow in software on a microcontroller), with the betas
    /// they were computed for.
    powers: (f64, f64),
    betas: (f64, f64),
}

impl Adam {
    /// Adam over every trainable parameter of `tape`; allocates `m` and `v` (2 floats per
    /// parameter; 3 with [`AdamConfig::amsgrad`], for the running maximum of `v`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad settings; [`Error::ArenaFull`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: AdamConfig,
    ) -> Result<Self> {
        Self::make(tape, config, false)
    }

    /// AdamW: Adam with decoupled weight decay (PyTorch's default `weight_decay` for AdamW is
    /// 0.01; set it in `config`).
    ///
    /// # Errors
    /// As [`Adam::new`].
    pub fn adamw<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: AdamConfig,
    ) -> Result<Self> {
        Self::make(tape, config, true)
    }

    fn make<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: AdamConfig,
        decoupled: bool,
    ) -> Result<Self> {
        let adam = Self::detached(config, decoupled)?;
        alloc_state(tape, 2 + usize::from(config.amsgrad), B::Elem::ZERO)?;
        Ok(adam)
    }

    /// An Adam (AdamW when `decoupled`) that keeps its settings and step count only, with no
    /// tape: for running a step that was recorded elsewhere, with its state at the recorded
    /// offsets ([`crate::replay::Replay::write_rust`]: call [`Adam::next_update`] once per
    /// step and pass the update to the generated function).
    ///
    /// # Errors
    /// As [`Adam::new`].
    pub fn detached(config: AdamConfig, decoupled: bool) -> Result<Self> {
        check_adam(&config)?;
        Ok(Adam {
            config,
            decoupled,
            t: 0,
            powers: (1.0, 1.0),
            betas: (config.beta1, config.beta2),
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t as u64
    }

    /// Sets the steps taken (to resume from a checkpoint; bias correction depends on it).
    pub fn set_steps(&mut self, steps: u64) {
        self.t = i32::try_from(steps).unwrap_or(i32::MAX);
        self.recompute_powers();
    }

    /// `beta^t` by the same repeated products the steps use, so that a resumed run matches a
    /// straight one bit for bit. The products stop changing once both reach a fixed point (0, or
    /// a subnormal that rounds back to itself), after which the loop stops: about
    /// `745 / -ln(beta)` steps (7 thousand for 0.9, 740 thousand for 0.999, the defaults), so a
    /// step count from a checkpoint costs no more than that with those betas; betas nearer 1
    /// take longer (74 million steps for 0.99999), up to the count itself.
    fn recompute_powers(&mut self) {
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        let mut p = (1.0, 1.0);
        for _ in 0..self.t {
            let next = (p.0 * b1, p.1 * b2);
            // Compared as bits (NaN betas never settle, and are refused by `new` anyway).
            if next.0.to_bits() == p.0.to_bits() && next.1.to_bits() == p.1.to_bits() {
                break;
            }
            p = next;
        }
        self.powers = p;
        self.betas = (b1, b2);
    }
}

impl Adam {
    /// The next step's count and `beta^t` products (recomputed first if the betas changed).
    fn next_powers(&mut self) -> (i32, (f64, f64)) {
        let c = self.config;
        // Compared as bits: integer compares (f64 ones are library calls on a microcontroller).
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits();
        if !same(self.betas.0, c.beta1) || !same(self.betas.1, c.beta2) {
            self.recompute_powers();
        }
        let t = self.t.saturating_add(1);
        let powers = if t > self.t {
            (self.powers.0 * c.beta1, self.powers.1 * c.beta2)
        } else {
            self.powers
        };
        (t, powers)
    }

    /// The update of the next step without touching any parameter: advances the step count as
    /// [`Optimizer::step`] does and returns the settings and bias corrections every parameter's
    /// update of that step gets (`param`, `grad`, `m`, `v` and `len` are 0 and `vmax` is
    /// `None`: fill them in). For
    /// re-running recorded update calls ([`crate::replay::Replay::replay_adam`]). The settings
    /// are not checked again here ([`Adam::detached`] checked them): settings changed since go
    /// through as they are.
    pub fn next_update(&mut self) -> AdamUpdate {
        let (t, powers) = self.next_powers();
        self.t = t;
        self.powers = powers;
        self.update_for(powers)
    }

    fn update_for(&self, powers: (f64, f64)) -> AdamUpdate {
        let c = self.config;
        AdamUpdate {
            param: 0,
            grad: 0,
            m: 0,
            v: 0,
            len: 0,
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: self.decoupled,
            bias1: 1.0 - powers.0,
            bias2: 1.0 - powers.1,
            vmax: None,
        }
    }
}

impl Optimizer for Adam {
    fn step<B: Backend, const N: usize>(&mut self, tape: &mut Tape<B, N>) -> Result<()> {
        // `set_lr` takes any value, and the settings are public: a bad one is refused here,
        // before any update.
        check_adam(&self.config)?;
        let (t, powers) = self.next_powers();
        let template = self.update_for(powers);
        let ams = self.config.amsgrad;
        for_each_trainable(
            tape,
            2 + usize::from(ams),
            |b, param, grad, state, len, stride| {
                b.adam(&AdamUpdate {
                    param,
                    grad,
                    m: state,
                    v: state.saturating_add(stride),
                    len,
                    vmax: ams.then(|| state.saturating_add(stride.saturating_mul(2))),
                    ..template
                })
            },
        )?;
        self.t = t;
        self.powers = powers;
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// `config`'s settings are ones Adam can run with (a beta of 1 would divide by a zero bias
/// correction; an eps of 0 can divide 0 by 0).
fn check_adam(config: &AdamConfig) -> Result<()> {
    check_lr(config.lr)?;
    let betas_ok = (0.0..1.0).contains(&config.beta1) && (0.0..1.0).contains(&config.beta2);
    if !betas_ok || !(config.eps > 0.0) || !(config.weight_decay >= 0.0) {
        return Err(Error::InvalidArgument {
            what: "Adam needs betas in [0, 1), eps > 0, weight decay >= 0",
        });
    }
    Ok(())
}

/// The global L2 norm of the gradients of all trainable parameters (what
/// [`clip_grad_norm`] clips). Data-parallel replicas compute it once and share it, so that
/// every replica scales by the same factor ([`clip_grad_norm_to`]).
///
/// # Errors
/// A backend error.
pub fn grad_norm<B: Backend, const N: usize>(tape: &mut Tape<B, N>) -> Result<f64> {
    let mut total = 0.0;
    for node in tape.nodes.iter() {
        if let Op::Param {
            trainable: true,
            has_grad: true,
            ..
        } = node.op
        {
            total += tape
                .backend
                .sum_squares(node.grad as usize, node.shape.numel())?;
        }
    }
    Ok(libm::sqrt(total))
}

/// Scales the gradients of all trainable parameters so that their global L2 norm is at most
/// `max_norm` (PyTorch's `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when the norm
/// exceeds it). Returns the norm before clipping.
///
/// # Errors
/// [`Error::NonFinite`] when the norm is NaN or infinite (the gradients are left as they are;
/// PyTorch's `error_if_nonfinite=True`); [`Error::InvalidArgument`] for a negative or
/// non-finite `max_norm`.
pub fn clip_grad_norm<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    max_norm: f64,
) -> Result<f64> {
    check_max_norm(max_norm)?;
    let norm = grad_norm(tape)?;
    clip_grad_norm_to(tape, max_norm, norm)?;
    Ok(norm)
}

/// [`clip_grad_norm`] with the norm given (computed once by [`grad_norm`], on one replica or
/// agreed among several): every tape given the same `norm` scales by the same factor.
///
/// # Errors
/// As [`clip_grad_norm`]; [`Error::InvalidArgument`] for a negative `norm` too.
pub fn clip_grad_norm_to<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    max_norm: f64,
    norm: f64,
) -> Result<()> {
    check_max_norm(max_norm)?;
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            op: "clip_grad_norm",
        });
    }
    if norm < 0.0 {
        return Err(Error::InvalidArgument {
            what: "clip_grad_norm_to: a norm is never negative",
        });
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let f = B::Elem::from_f64(coef);
        for i in 0..tape.nodes.len() {
            let Some(node) = tape.nodes.get(i).copied() else {
                continue;
            };
            if let Op::Param {
                trainable: true,
                has_grad: true,
                ..
            } = node.op
            {
                tape.backend
                    .scale(node.grad as usize, node.shape.numel(), f)?;
            }
        }
    }
    Ok(())
}

fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm.is_finite() && max_norm >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "max_norm must be finite and >= 0",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AMSGrad against PyTorch's algorithm (`Adam(amsgrad=True)`, single tensor), evaluated in
    // f64 by a separate script: gradients 3, 0.1, 0.01 (and -1, 0.2, -0.05) make the second
    // moment fall after the first step, so the running maximum is what divides. A parameter's
    // gradient comes from `sum(p * c)`, `c` the step's gradient.
    #[test]
    fn amsgrad_matches_pytorch() {
        use crate::{Cpu, Tape};
        let mut mem = [0f64; 256];
        let mut tape = Tape::<Cpu<f64>, 16>::new(&mut mem);
        let p = tape.param(&[2], &[1.0, -2.0]).unwrap();
        let config = AdamConfig {
            lr: 0.1,
            amsgrad: true,
            ..AdamConfig::default()
        };
        let mut opt = Adam::new(&mut tape, config).unwrap();
        let start = tape.mark();
        let want = [
            [0.900_000_000_333_333_3, -1.900_000_001],
            [0.830_551_088_626_756, -1.848_897_393_990_494_5],
            [0.776_680_801_432_283_7, -1.806_311_069_847_434],
        ];
        for (c, w) in [[3.0, -1.0], [0.1, 0.2], [0.01, -0.05]].iter().zip(want) {
            tape.rewind(start).unwrap();
            let cv = tape.input(&[2], c).unwrap();
            let y = tape.mul(p, cv).unwrap();
            let loss = tape.sum(y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
            let got = tape.data(p).unwrap();
            for (g, w) in got.iter().zip(w) {
                assert!((g - w).abs() < 1e-12, "{g} vs {w}");
            }
        }
        // Plain Adam on the same gradients moves further at step 3 (its v has fallen).
        let mut mem = [0f64; 256];
        let mut tape = Tape::<Cpu<f64>, 16>::new(&mut mem);
        let q = tape.param(&[2], &[1.0, -2.0]).unwrap();
        let plain = AdamConfig {
            amsgrad: false,
            ..config
        };
        let mut opt = Adam::new(&mut tape, plain).unwrap();
        let start = tape.mark();
        for c in [[3.0, -1.0], [0.1, 0.2], [0.01, -0.05]] {
            tape.rewind(start).unwrap();
            let cv = tape.input(&[2], &c).unwrap();
            let y = tape.mul(q, cv).unwrap();
            let loss = tape.sum(y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
        }
        assert!(tape.data(q).unwrap()[0] < want[2][0]);
    }

    // AMSGrad set on an optimizer made without it: no third buffer, so the step is refused
    // before any update.
    #[test]
    fn amsgrad_needs_its_buffer() {
        use crate::{Cpu, Error, Tape};
        let mut mem = [0f32; 64];
        let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
        let p = tape.param(&[2], &[1.0, 2.0]).unwrap();
        let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
        opt.config.amsgrad = true;
        let r = opt.step(&mut tape);
        assert!(matches!(r, Err(Error::MissingOptimizerState)), "{r:?}");
        assert_eq!(tape.data(p).unwrap(), &[1.0, 2.0]);
        assert_eq!(opt.steps(), 0);
    }

    // A step count from a checkpoint, however large, sets the bias-correction products to what
    // stepping that many times gives: they settle at a fixed point, where the loop stops (a
    // count near i32::MAX took a minute before it did).
    #[test]
    fn step_counts_set_the_products_of_that_many_steps() {
        let mut a = Adam::detached(AdamConfig::default(), false).unwrap();
        let mut stepped = Adam::detached(AdamConfig::default(), false).unwrap();
        for t in 0..3000u64 {
            a.set_steps(t);
            assert_eq!(a.powers.0.to_bits(), stepped.powers.0.to_bits(), "t = {t}");
            assert_eq!(a.powers.1.to_bits(), stepped.powers.1.to_bits(), "t = {t}");
            let _ = stepped.next_update();
        }
        a.set_steps(u64::MAX);
        let settled = a.powers;
        a.set_steps(2_000_000);
        assert_eq!(a.powers, settled);
        assert!(settled.0 < 1e-300 && settled.1 < 1e-300);
    }
}
