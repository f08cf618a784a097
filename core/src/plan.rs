//! Memory planning: the exact arena a training step needs, by a dry run or at compile time.
//!
//! A step allocates the same things in the same order every time, so its need is exact:
//! [`measure`] runs a step on the [`Meter`] backend (which stores and computes nothing) and
//! reports the high-water mark; [`mlp`] computes it for a standard MLP step as a `const fn`, so
//! that firmware sizes a `static` arena at compile time:
//! ```
//! use mote::plan::{self, Loss, Opt};
//! const FLOATS: usize = plan::mlp(&[2, 3, 1], 4, Loss::Mse, Opt::Adam);
//! static_assertions_like(FLOATS);
//! const fn static_assertions_like(n: usize) { assert!(n < 16 * 1024 / 4, "does not fit in 16 KB"); }
//! ```
//!
//! The `const fn` counts are for backends that do not align allocations ([`Backend::align`]
//! of 1: the reference and firmware backends). On one that does (a GPU backend), each
//! allocation may take up to `align - 1` more elements: size its arena with
//! [`measure_aligned`].
//!
//! [`Backend::align`]: crate::Backend::align

use crate::backend::Meter;
use crate::error::Result;
use crate::float::Float;
use crate::tape::Tape;

/// The loss of a planned step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// MSE against targets shaped like the output.
    Mse,
    /// Binary cross-entropy with logits against targets shaped like the output.
    BceWithLogits,
    /// Softmax cross-entropy against one class label per row (with or without label
    /// smoothing: the same memory).
    CrossEntropy,
    /// [`Tape::cross_entropy_probs`](crate::Tape::cross_entropy_probs) against class
    /// probabilities shaped like the output: two intermediates the output's size, a scalar,
    /// and a constant scalar.
    CrossEntropyProbs,
    /// [`Tape::l1_loss`](crate::Tape::l1_loss) (and `smooth_l1_loss` with beta 0) against
    /// targets shaped like the output: two intermediates the output's size.
    L1,
    /// [`Tape::huber_loss`](crate::Tape::huber_loss), any delta: eight intermediates the
    /// output's size.
    Huber,
    /// [`Tape::smooth_l1_loss`](crate::Tape::smooth_l1_loss) with beta above 0: the Huber
    /// loss's, and one scalar more.
    SmoothL1,
}

impl Loss {
    /// Nodes a loss records beyond a fused loss's one (its intermediates, and a composite's
    /// final scale): what a tape's node capacity must leave room for.
    pub const fn extra_nodes(self) -> usize {
        match self {
            Loss::Mse | Loss::BceWithLogits | Loss::CrossEntropy => 0,
            Loss::L1 => 2,
            Loss::CrossEntropyProbs => 4,
            Loss::Huber => 8,
            Loss::SmoothL1 => 9,
        }
    }

    /// Floats a loss's intermediates take beyond its scalar result (values only; each has a
    /// gradient as large), for `out` outputs.
    const fn intermediates(self, out: usize) -> usize {
        match self {
            Loss::Mse | Loss::BceWithLogits | Loss::CrossEntropy => 0,
            Loss::L1 => out.saturating_mul(2),
            Loss::CrossEntropyProbs => out.saturating_mul(2).saturating_add(1),
            Loss::Huber => out.saturating_mul(8),
            Loss::SmoothL1 => out.saturating_mul(8).saturating_add(1),
        }
    }
}

/// The optimizer of a planned step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    /// SGD without momentum: no state.
    Sgd,
    /// SGD with momentum: one buffer per parameter.
    SgdMomentum,
    /// Adam or AdamW: two buffers per parameter.
    Adam,
    /// Adam or AdamW with AMSGrad ([`crate::AdamConfig::amsgrad`]): three buffers per
    /// parameter.
    AmsGrad,
    /// RMSprop: one buffer per parameter, one more with momentum, one more centered.
    RmsProp {
        /// [`crate::RmsPropConfig::momentum`] > 0.
        momentum: bool,
        /// [`crate::RmsPropConfig::centered`].
        centered: bool,
    },
    /// Adagrad: one buffer per parameter.
    Adagrad,
}

/// Floats of parameters (with their gradients) and optimizer state of an MLP with layer sizes
/// `sizes` (`[in, hidden..., out]`, biases included).
#[allow(clippy::indexing_slicing)] // indices stay below len (loop bounds); const fns cannot use get()
pub const fn mlp_params(sizes: &[usize], opt: Opt) -> usize {
    let mut p: usize = 0;
    let mut i = 0;
    while i + 1 < sizes.len() {
        let layer = sizes[i]
            .saturating_mul(sizes[i + 1])
            .saturating_add(sizes[i + 1]);
        p = p.saturating_add(layer);
        i += 1;
    }
    let state = match opt {
        Opt::Sgd => 0,
        Opt::SgdMomentum => 1,
        Opt::Adam => 2,
        Opt::AmsGrad => 3,
        Opt::RmsProp { momentum, centered } => 1 + momentum as usize + centered as usize,
        Opt::Adagrad => 1,
    };
    p.saturating_mul(2 + state)
}

/// Floats one training step of an MLP needs above the mark: input, targets, every layer's
/// output and activation, the loss (with a composite loss's intermediates), and their
/// gradients.
#[allow(clippy::indexing_slicing)] // as above
pub const fn mlp_step(sizes: &[usize], batch: usize, loss: Loss) -> usize {
    let n = sizes.len();
    if n < 2 {
        return 0;
    }
    // Saturating: a size too large to count is usize::MAX, which no arena reaches.
    let mut acts: usize = 1; // the loss
    let mut i = 1;
    while i < n {
        let out = batch.saturating_mul(sizes[i]);
        acts = acts.saturating_add(out); // linear output
        if i + 1 < n {
            acts = acts.saturating_add(out); // activation output
        }
        i += 1;
    }
    let out = batch.saturating_mul(sizes[n - 1]);
    acts = acts.saturating_add(loss.intermediates(out));
    // The targets, and a loss's constants (no gradient).
    let targets = match loss {
        Loss::CrossEntropy => batch,
        Loss::CrossEntropyProbs => out.saturating_add(1),
        _ => out,
    };
    batch
        .saturating_mul(sizes[0])
        .saturating_add(targets)
        .saturating_add(acts.saturating_mul(2))
}

/// The whole arena (in floats) of training an MLP: [`mlp_params`] + [`mlp_step`]. Layers are
/// [`crate::Linear`] with bias and one activation between layers; the step is: inputs, targets,
/// forward, loss, backward, optimizer step.
pub const fn mlp(sizes: &[usize], batch: usize, loss: Loss, opt: Opt) -> usize {
    mlp_params(sizes, opt).saturating_add(mlp_step(sizes, batch, loss))
}

/// Floats of inference (`no_grad`) with frozen parameters: parameter values, the input, and
/// every layer's output and activation (the arena frees nothing within a step).
#[allow(clippy::indexing_slicing)] // as above
pub const fn mlp_inference(sizes: &[usize], batch: usize) -> usize {
    let n = sizes.len();
    if n == 0 {
        return 0;
    }
    // Saturating, as `mlp_step` (a saturated count stays saturated, not halved).
    let values_and_grads = mlp_params(sizes, Opt::Sgd);
    let mut total = if values_and_grads == usize::MAX {
        usize::MAX
    } else {
        values_and_grads / 2
    };
    total = total.saturating_add(batch.saturating_mul(sizes[0]));
    let mut i = 1;
    while i < n {
        let out = batch.saturating_mul(sizes[i]);
        total = total.saturating_add(out);
        if i + 1 < n {
            total = total.saturating_add(out);
        }
        i += 1;
    }
    total
}

/// Runs `f` (a model's setup and one step, say) on a tape over the [`Meter`] backend and
/// returns the most arena elements in use at once: the exact size for the same code on a real
/// backend.
///
/// # Errors
/// Whatever `f` returns.
pub fn measure<T: Float, const N: usize>(
    f: impl FnOnce(&mut Tape<Meter<T>, N>) -> Result<()>,
) -> Result<usize> {
    measure_aligned(1, f)
}

/// [`measure`] for a backend that starts every allocation at a multiple of `align` elements
/// ([`crate::Backend::align`]): the arena with its padding.
///
/// # Errors
/// Whatever `f` returns.
pub fn measure_aligned<T: Float, const N: usize>(
    align: usize,
    f: impl FnOnce(&mut Tape<Meter<T>, N>) -> Result<()>,
) -> Result<usize> {
    let mut tape = Tape::<Meter<T>, N>::with_backend(Meter::aligned(align));
    f(&mut tape)?;
    Ok(tape.high_water())
}

/// Bytes of `floats` elements of `T`.
pub const fn bytes<T>(floats: usize) -> usize {
    floats.saturating_mul(core::mem::size_of::<T>())
}
