//! RMSprop and Adagrad: both divide the gradient by the root of a per-element sum of its
//! squares (RMSprop's running average, Adagrad's running total), so both run on one kernel,
//! [`rms_kernel`], through [`crate::Backend::rms`].

use super::{alloc_state, check_lr, flush, for_each_trainable, Optimizer};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::tape::Tape;

/// One RMSprop or Adagrad update of one parameter, as the backend kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsUpdate {
    /// Arena offset of the parameter.
    pub param: usize,
    /// Arena offset of its gradient.
    pub grad: usize,
    /// Arena offset of the squares: RMSprop's `square_avg`, Adagrad's `sum`.
    pub sq: usize,
    /// Arena offset of centered RMSprop's running average of the gradient (`grad_avg`);
    /// `None` otherwise.
    pub avg: Option<usize>,
    /// Arena offset of RMSprop's momentum buffer; `None` without momentum.
    pub momentum_buf: Option<usize>,
    /// Elements.
    pub len: usize,
    /// Learning rate (before Adagrad's decay).
    pub lr: f64,
    /// Adagrad's decay of the rate: step `t` runs at `lr / (1 + (t - 1) lr_decay)`; 0 for
    /// RMSprop.
    pub lr_decay: f64,
    /// This update's step, from 1 (for the decay).
    pub step: u64,
    /// Decay of the squares (and of the average): RMSprop's `alpha`; 1 for Adagrad.
    pub alpha: f64,
    /// Weight of a new square (and gradient): `1 - alpha` for RMSprop; 1 for Adagrad.
    pub gain: f64,
    /// Added to the root of the squares.
    pub eps: f64,
    /// L2 penalty, added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor (used with `momentum_buf`).
    pub momentum: f64,
}

impl RmsUpdate {
    /// Step `step`'s update at rate `lr` with `eps` and `weight_decay`, for no tensor yet
    /// (offsets 0, no average or momentum buffer), Adagrad's otherwise: squares summed
    /// (`alpha` and `gain` 1), no decay of the rate, no momentum.
    fn blank(lr: f64, step: u64, eps: f64, weight_decay: f64) -> RmsUpdate {
        RmsUpdate {
            param: 0,
            grad: 0,
            sq: 0,
            avg: None,
            momentum_buf: None,
            len: 0,
            lr,
            lr_decay: 0.0,
            step,
            alpha: 1.0,
            gain: 1.0,
            eps,
            weight_decay,
            momentum: 0.0,
        }
    }

    /// The rate of this step: `lr / (1 + (step - 1) lr_decay)`, in f64 (`lr` itself without
    /// decay).
    pub fn rate(&self) -> f64 {
        self.lr / (1.0 + self.step.saturating_sub(1) as f64 * self.lr_decay)
    }
}

/// Reference RMSprop / Adagrad kernel (PyTorch's `torch.optim.RMSprop` and `Adagrad`):
/// `g += wd p; sq = alpha sq + gain g^2; d = sqrt(sq) + eps`, or with the average
/// `avg = alpha avg + gain g; d = sqrt(sq - avg^2) + eps` (centered); then
/// `buf = mu buf + g / d; p -= rate buf` with momentum, else `p -= rate g / d`
/// ([`RmsUpdate::rate`]).
pub fn rms_kernel<T: Float>(
    u: &RmsUpdate,
    p: &mut [T],
    g: &[T],
    sq: &mut [T],
    mut avg: Option<&mut [T]>,
    mut buf: Option<&mut [T]>,
) {
    let (lr, a, c) = (
        T::from_f64(u.rate()),
        T::from_f64(u.alpha),
        T::from_f64(u.gain),
    );
    let (eps, wd, mu) = (
        T::from_f64(u.eps),
        T::from_f64(u.weight_decay),
        T::from_f64(u.momentum),
    );
    for (i, ((p, &g), s)) in p.iter_mut().zip(g).zip(sq.iter_mut()).enumerate() {
        let g = g + wd * *p;
        *s = flush(a * *s + c * (g * g));
        let mut d = *s;
        if let Some(m) = avg.as_deref_mut().and_then(|m| m.get_mut(i)) {
            *m = flush(a * *m + c * g);
            d -= *m * *m;
        }
        let step = g / (d.sqrt() + eps);
        match buf.as_deref_mut().and_then(|b| b.get_mut(i)) {
            Some(b) => {
                *b = flush(mu * *b + step);
                *p -= lr * *b;
            }
            None => *p -= lr * step,
        }
    }
}

/// RMSprop settings, with PyTorch's defaults (`torch.optim.RMSprop`: lr 1e-2, alpha 0.99,
/// eps 1e-8, no weight decay, no momentum, not centered).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the running average of the squared gradient, in [0, 1].
    pub alpha: f64,
    /// Added to the denominator (> 0).
    pub eps: f64,
    /// L2 penalty.
    pub weight_decay: f64,
    /// Momentum factor (0: none, and no buffer).
    pub momentum: f64,
    /// Centered RMSprop: the squares' average less the square of the gradient's average
    /// (an estimate of the variance) divides, one more buffer per parameter.
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

/// RMSprop (Hinton; PyTorch's `torch.optim.RMSprop`).
///
/// Its state buffers per parameter ([`Tape::param_state`]): `square_avg` (0), then
/// `momentum_buffer` with momentum, then `grad_avg` when centered. Momentum and centering
/// must be set before [`RmsProp::new`], which allocates their buffers: an optimizer made
/// without one refuses to step with it ([`Error::MissingOptimizerState`]). Made with them, it
/// keeps their buffers where they are when the settings turn them off (a momentum of 0 keeps
/// its buffer equal to the step, which is the same update).
#[derive(Clone, Copy, Debug)]
pub struct RmsProp {
    /// Settings.
    pub config: RmsPropConfig,
    steps: u64,
    /// The buffers made: the momentum buffer, the gradient's average.
    made: (bool, bool),
}

impl RmsProp {
    /// RMSprop over every trainable parameter of `tape`; allocates its state (zeroed).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad settings; [`Error::ArenaFull`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: RmsPropConfig,
    ) -> Result<Self> {
        let opt = Self::detached(config)?;
        alloc_state(tape, opt.buffers(), B::Elem::ZERO)?;
        Ok(opt)
    }

    /// An RMSprop that keeps its settings and step count only, with no tape (see
    /// [`crate::Adam::detached`]).
    ///
    /// # Errors
    /// As [`RmsProp::new`].
    pub fn detached(config: RmsPropConfig) -> Result<Self> {
        check_rmsprop(&config)?;
        Ok(RmsProp {
            config,
            steps: 0,
            made: (config.momentum > 0.0, config.centered),
        })
    }

    /// State buffers per parameter: the squares, then the momentum buffer and the gradient's
    /// average where they were made.
    fn buffers(&self) -> usize {
        1 + usize::from(self.made.0) + usize::from(self.made.1)
    }

    /// Steps taken (RMSprop's update does not depend on it; kept for checkpoints).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the steps taken (to resume from a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The update of the next step without touching any parameter: advances the step count as
    /// [`Optimizer::step`] does and returns the settings every parameter's update gets
    /// (`param`, `grad`, `sq`, `len` are 0, and `avg`, `momentum_buf` are `None`: fill them
    /// in). For re-running recorded update calls ([`crate::Replay::replay_rmsprop`]). The
    /// settings are not checked again here ([`RmsProp::detached`] checked them): settings
    /// changed since go through as they are.
    pub fn next_update(&mut self) -> RmsUpdate {
        self.steps = self.steps.saturating_add(1);
        self.template(self.steps)
    }

    /// The update of step `t` (from 1).
    fn template(&self, t: u64) -> RmsUpdate {
        let c = self.config;
        RmsUpdate {
            alpha: c.alpha,
            gain: 1.0 - c.alpha,
            momentum: c.momentum,
            ..RmsUpdate::blank(c.lr, t, c.eps, c.weight_decay)
        }
    }
}

/// `config`'s settings are ones RMSprop can run with (an eps of 0 can divide 0 by 0).
fn check_rmsprop(config: &RmsPropConfig) -> Result<()> {
    check_lr(config.lr)?;
    let ok = (0.0..=1.0).contains(&config.alpha)
        && config.eps > 0.0
        && config.eps.is_finite()
        && (0.0..f64::INFINITY).contains(&config.weight_decay)
        && (0.0..f64::INFINITY).contains(&config.momentum);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "RMSprop needs alpha in [0, 1], a finite eps > 0, weight decay and momentum \
                   finite and >= 0",
        })
    }
}

impl Optimizer for RmsProp {
    fn step<B: Backend, const N: usize>(&mut self, tape: &mut Tape<B, N>) -> Result<()> {
        check_rmsprop(&self.config)?;
        // The buffers are those made: settings that need one more fail before any update.
        let (has_buf, has_avg) = self.made;
        if (self.config.momentum > 0.0 && !has_buf) || (self.config.centered && !has_avg) {
            return Err(Error::MissingOptimizerState);
        }
        let centered = self.config.centered;
        let t = self.steps.saturating_add(1);
        let template = self.template(t);
        for_each_trainable(
            tape,
            self.buffers(),
            |b, param, grad, state, len, stride| {
                let next = state.saturating_add(stride);
                let avg_at = if has_buf {
                    next.saturating_add(stride)
                } else {
                    next
                };
                b.rms(&RmsUpdate {
                    param,
                    grad,
                    sq: state,
                    avg: centered.then_some(avg_at),
                    momentum_buf: has_buf.then_some(next),
                    len,
                    ..template
                })
            },
        )?;
        self.steps = t;
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Adagrad settings, with PyTorch's defaults (`torch.optim.Adagrad`: lr 1e-2, no decay of
/// the rate, no weight decay, accumulators starting at 0, eps 1e-10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f64,
    /// The rate of step `t` (from 1) is `lr / (1 + (t - 1) lr_decay)`.
    pub lr_decay: f64,
    /// L2 penalty.
    pub weight_decay: f64,
    /// Where each sum of squares starts (set when the optimizer is made).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (> 0).
    pub eps: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

/// Adagrad (Duchi et al.; PyTorch's `torch.optim.Adagrad`). One state buffer per parameter
/// ([`Tape::param_state`] 0): `sum`, the running total of the squared gradient.
#[derive(Clone, Copy, Debug)]
pub struct Adagrad {
    /// Settings.
    pub config: AdagradConfig,
    steps: u64,
}

impl Adagrad {
    /// Adagrad over every trainable parameter of `tape`; allocates the sums, set to
    /// [`AdagradConfig::initial_accumulator_value`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad settings; [`Error::ArenaFull`]; a backend error.
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: AdagradConfig,
    ) -> Result<Self> {
        let opt = Self::detached(config)?;
        let init = B::Elem::from_f64(config.initial_accumulator_value);
        alloc_state(tape, 1, init)?;
        Ok(opt)
    }

    /// An Adagrad that keeps its settings and step count only, with no tape (see
    /// [`crate::Adam::detached`]).
    ///
    /// # Errors
    /// As [`Adagrad::new`].
    pub fn detached(config: AdagradConfig) -> Result<Self> {
        check_adagrad(&config)?;
        Ok(Adagrad { config, steps: 0 })
    }

    /// Steps taken (the rate's decay depends on it).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the steps taken (to resume from a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The update of the next step without touching any parameter (see
    /// [`RmsProp::next_update`]; for [`crate::Replay::replay_adagrad`]). The settings are not
    /// checked again here.
    pub fn next_update(&mut self) -> RmsUpdate {
        self.steps = self.steps.saturating_add(1);
        self.template(self.steps)
    }

    /// The update of step `t` (from 1).
    fn template(&self, t: u64) -> RmsUpdate {
        let c = self.config;
        RmsUpdate {
            lr_decay: c.lr_decay,
            ..RmsUpdate::blank(c.lr, t, c.eps, c.weight_decay)
        }
    }
}

/// `config`'s settings are ones Adagrad can run with.
fn check_adagrad(config: &AdagradConfig) -> Result<()> {
    check_lr(config.lr)?;
    let non_negative = |v: f64| (0.0..f64::INFINITY).contains(&v);
    let ok = non_negative(config.lr_decay)
        && non_negative(config.weight_decay)
        && non_negative(config.initial_accumulator_value)
        && config.eps > 0.0
        && config.eps.is_finite();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "Adagrad needs lr decay, weight decay and the initial accumulator value \
                   finite and >= 0, and a finite eps > 0",
        })
    }
}

impl Optimizer for Adagrad {
    fn step<B: Backend, const N: usize>(&mut self, tape: &mut Tape<B, N>) -> Result<()> {
        check_adagrad(&self.config)?;
        let t = self.steps.saturating_add(1);
        let template = self.template(t);
        for_each_trainable(tape, 1, |b, param, grad, state, len, _| {
            b.rms(&RmsUpdate {
                param,
                grad,
                sq: state,
                len,
                ..template
            })
        })?;
        self.steps = t;
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cpu, Tape};

    /// Three steps of `opt` on the parameter [1, -2] with the gradients 3, 0.1, 0.01 and
    /// -1, 0.2, -0.05 (from `sum(p * c)`); the parameter after each, in f64.
    fn three_steps<O: Optimizer>(
        make: impl FnOnce(&mut Tape<Cpu<'_, f64>, 16>) -> Result<O>,
    ) -> [[f64; 2]; 3] {
        let mut mem = [0f64; 256];
        let mut tape = Tape::<Cpu<f64>, 16>::new(&mut mem);
        let p = tape.param(&[2], &[1.0, -2.0]).unwrap();
        let mut opt = make(&mut tape).unwrap();
        let start = tape.mark();
        let mut out = [[0.0; 2]; 3];
        for (c, o) in [[3.0, -1.0], [0.1, 0.2], [0.01, -0.05]]
            .iter()
            .zip(&mut out)
        {
            tape.rewind(start).unwrap();
            let cv = tape.input(&[2], c).unwrap();
            let y = tape.mul(p, cv).unwrap();
            let loss = tape.sum(y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
            o.copy_from_slice(tape.data(p).unwrap());
        }
        out
    }

    fn assert_close(got: [[f64; 2]; 3], want: [[f64; 2]; 3]) {
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    // Against PyTorch's algorithms (single-tensor `RMSprop` and `Adagrad`), evaluated in f64
    // by a separate script on the same gradients.
    #[test]
    fn rmsprop_matches_pytorch() {
        let plain = three_steps(|t| RmsProp::new(t, RmsPropConfig::default()));
        assert_close(
            plain,
            [
                [0.900_000_003_333_333_3, -1.900_000_009_999_999],
                [0.896_651_755_794_528_8, -1.919_706_593_621_537_4],
                [0.896_315_246_160_763_4, -1.914_761_186_805_490_6],
            ],
        );
        let config = RmsPropConfig {
            lr: 0.05,
            alpha: 0.9,
            eps: 1e-6,
            weight_decay: 0.1,
            momentum: 0.5,
            centered: true,
        };
        let full = three_steps(|t| RmsProp::new(t, config));
        assert_close(
            full,
            [
                [0.833_333_512_544_610_2, -1.833_333_796_295_010_3],
                [0.739_620_101_883_885_3, -1.752_423_314_850_503_5],
                [0.687_766_959_684_134_5, -1.677_660_737_679_972_4],
            ],
        );
    }

    #[test]
    fn adagrad_matches_pytorch() {
        let plain = three_steps(|t| Adagrad::new(t, AdagradConfig::default()));
        assert_close(
            plain,
            [
                [0.990_000_000_000_333_3, -1.990_000_000_001],
                [0.989_666_851_698_018, -1.991_961_161_352_189_7],
                [0.989_633_537_052_662, -1.991_471_459_245_363_3],
            ],
        );
        let config = AdagradConfig {
            lr: 0.1,
            lr_decay: 0.5,
            weight_decay: 0.2,
            initial_accumulator_value: 0.3,
            eps: 1e-10,
        };
        let full = three_steps(|t| Adagrad::new(t, config));
        assert_close(
            full,
            [
                [0.901_433_423_421_644_5, -1.906_873_385_272_911_2],
                [0.895_699_150_198_704_4, -1.898_888_050_251_608_3],
                [0.892_801_874_425_228_5, -1.885_236_005_392_571_9],
            ],
        );
    }

    // Momentum or centering set on an RMSprop made without them: the buffer is missing, so
    // the step is refused before any update. Bad settings are refused at `new` and at `step`.
    #[test]
    fn rmsprop_refuses_missing_buffers_and_bad_settings() {
        let mut mem = [0f32; 64];
        let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
        let p = tape.param(&[2], &[1.0, 2.0]).unwrap();
        let mut opt = RmsProp::new(&mut tape, RmsPropConfig::default()).unwrap();
        for (momentum, centered) in [(0.9, false), (0.0, true)] {
            opt.config.momentum = momentum;
            opt.config.centered = centered;
            let r = opt.step(&mut tape);
            assert!(matches!(r, Err(Error::MissingOptimizerState)), "{r:?}");
        }
        assert_eq!(tape.data(p).unwrap(), &[1.0, 2.0]);
        assert_eq!(opt.steps(), 0);
        // Made with momentum (two buffers), then centered without it: the second buffer is
        // the momentum buffer, not an average, so the step is refused (it would have read it
        // as one).
        let mut mem = [0f32; 64];
        let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
        tape.param(&[2], &[1.0, 2.0]).unwrap();
        let with_momentum = RmsPropConfig {
            momentum: 0.9,
            ..RmsPropConfig::default()
        };
        let mut opt = RmsProp::new(&mut tape, with_momentum).unwrap();
        opt.config.momentum = 0.0;
        opt.config.centered = true;
        let r = opt.step(&mut tape);
        assert!(matches!(r, Err(Error::MissingOptimizerState)), "{r:?}");
        let bad = [
            RmsPropConfig {
                alpha: 1.5,
                ..RmsPropConfig::default()
            },
            RmsPropConfig {
                eps: 0.0,
                ..RmsPropConfig::default()
            },
            RmsPropConfig {
                momentum: -0.1,
                ..RmsPropConfig::default()
            },
            RmsPropConfig {
                weight_decay: f64::NAN,
                ..RmsPropConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(
                RmsProp::detached(c),
                Err(Error::InvalidArgument { .. })
            ));
        }
        opt.config = RmsPropConfig::default();
        opt.set_lr(-1.0);
        assert!(matches!(
            opt.step(&mut tape),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(tape.data(p).unwrap(), &[1.0, 2.0]);
    }

    #[test]
    fn adagrad_refuses_bad_settings() {
        let bad = [
            AdagradConfig {
                lr_decay: -1.0,
                ..AdagradConfig::default()
            },
            AdagradConfig {
                initial_accumulator_value: f64::INFINITY,
                ..AdagradConfig::default()
            },
            AdagradConfig {
                eps: 0.0,
                ..AdagradConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(
                Adagrad::detached(c),
                Err(Error::InvalidArgument { .. })
            ));
        }
        // The decayed rate follows the step count, as a resumed run needs.
        let mut a = Adagrad::detached(AdagradConfig {
            lr: 1.0,
            lr_decay: 0.5,
            ..AdagradConfig::default()
        })
        .unwrap();
        assert_eq!(a.next_update().rate(), 1.0);
        assert_eq!(a.next_update().rate(), 1.0 / 1.5);
        a.set_steps(9);
        assert_eq!(a.next_update().rate(), 1.0 / 5.5);
    }
}
