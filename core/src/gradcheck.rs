//! A public gradient checker: compares the tape's analytic gradients with central finite
//! differences, in `f64`, for any function of up to eight tensors (an op, a layer, a model).
//!
//! ```
//! use mote::gradcheck::{check, GradCheck};
//! let mut mem = [0f64; 4096];
//! let x = [0.3, -1.2, 2.0, 0.7];
//! let report = check::<64>(&mut mem, &[(&[2, 2], &x)], GradCheck::default(), |tape, v| {
//!     let y = tape.tanh(v[0])?;
//!     tape.matmul(y, v[0])
//! })?;
//! assert!(report.passed(), "{report:?}");
//! # Ok::<(), mote::Error>(())
//! ```

use crate::backend::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// The most inputs a checked function may take.
pub const MAX_INPUTS: usize = 8;

/// Settings: step and tolerances. An element passes when
/// `|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-4,
        }
    }
}

/// The element that disagreed most.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mismatch {
    /// Which input.
    pub input: usize,
    /// Which element of it.
    pub index: usize,
    /// The tape's gradient.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradReport {
    /// Elements compared.
    pub checked: usize,
    /// Elements outside the tolerance.
    pub failed: usize,
    /// The element with the largest error relative to its tolerance.
    pub worst: Option<Mismatch>,
}

impl GradReport {
    /// Whether every element was within tolerance.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// Checks the gradients of `f` with respect to each of `inputs` (shape, values).
///
/// `f` receives a tape and the inputs as trainable parameters, and returns a tensor; if it is
/// not a scalar, the checker reduces it with fixed pseudo-random weights (`sum(y * w)`), which
/// exercises every output element. `mem` is the arena (its size bounds what `f` may do).
///
/// # Errors
/// [`Error::InvalidArgument`] for more than [`MAX_INPUTS`] inputs; whatever `f` returns.
pub fn check<'m, const N: usize>(
    mem: &'m mut [f64],
    inputs: &[(&[usize], &[f64])],
    cfg: GradCheck,
    mut f: impl FnMut(&mut Tape<Cpu<'m, f64>, N>, &[Var]) -> Result<Var>,
) -> Result<GradReport> {
    if inputs.len() > MAX_INPUTS {
        return Err(Error::InvalidArgument {
            what: "gradcheck takes at most 8 inputs",
        });
    }
    let mut tape = Tape::<Cpu<'m, f64>, N>::new(mem);
    let mut vars = [Var {
        id: 0,
        offset: 0,
        shape: crate::Shape::SCALAR,
    }; MAX_INPUTS];
    for (slot, (dims, data)) in vars.iter_mut().zip(inputs) {
        *slot = tape.param(dims, data)?;
    }
    let vars = vars.get(..inputs.len()).unwrap_or(&[]);
    let mark = tape.mark();

    let mut eval = |tape: &mut Tape<Cpu<'m, f64>, N>| -> Result<Var> {
        tape.rewind_keep_grad(mark)?;
        let y = f(tape, vars)?;
        if y.numel() == 1 {
            return Ok(y);
        }
        let mut rng = Rng::new(0x5eed);
        let dims: [usize; 4] = core::array::from_fn(|k| y.shape().dim(k));
        let w = tape.input_with(dims.get(..y.shape().rank()).unwrap_or(&[]), || {
            let m = 0.5 + rng.next_f64();
            if rng.next_u32() & 1 == 0 {
                m
            } else {
                -m
            }
        })?;
        let yw = tape.mul(y, w)?;
        tape.sum(yw)
    };

    tape.zero_grad()?;
    let loss = eval(&mut tape)?;
    tape.backward(loss)?;

    let mut report = GradReport {
        checked: 0,
        failed: 0,
        worst: None,
    };
    let mut worst_ratio = -1.0;
    for (i, &v) in vars.iter().enumerate() {
        let grad_off = tape.grad(v)?.map(|g| g.offset);
        for j in 0..v.numel() {
            let at = v.view().offset + j;
            let mut orig = [0.0];
            tape.backend().read(at, &mut orig)?;
            let mut value_at = |tape: &mut Tape<Cpu<'m, f64>, N>, x: f64| -> Result<f64> {
                tape.backend_mut().write(at, &[x])?;
                let l = eval(tape)?;
                tape.item(l)
            };
            let plus = value_at(&mut tape, orig[0] + cfg.eps)?;
            let minus = value_at(&mut tape, orig[0] - cfg.eps)?;
            tape.backend_mut().write(at, &orig)?;
            let numeric = (plus - minus) / (2.0 * cfg.eps);
            let mut analytic = [0.0];
            if let Some(g) = grad_off {
                tape.backend().read(g + j, &mut analytic)?;
            }
            let (a, n): (f64, f64) = (analytic[0], numeric);
            let tol = cfg.atol + cfg.rtol * libm::fabs(a).max(libm::fabs(n));
            let ratio = libm::fabs(a - n) / tol;
            report.checked += 1;
            if !(ratio <= 1.0) {
                report.failed += 1;
            }
            if !(ratio <= worst_ratio) {
                worst_ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
                report.worst = Some(Mismatch {
                    input: i,
                    index: j,
                    analytic: a,
                    numeric: n,
                });
            }
        }
    }
    Ok(report)
}
