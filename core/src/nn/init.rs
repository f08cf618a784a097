//! Parameter initialisation in place, as PyTorch's `torch.nn.init` defines it: the same
//! bounds, standard deviations, fans and gains (the values come from [`Rng`], not from
//! PyTorch's generator). Each function writes every element of a tensor already on the tape
//! (a parameter, usually), in chunks from the stack: no allocation.
//!
//! ```
//! use mote::nn::init::{self, FanMode, Nonlinearity};
//! use mote::{Conv2d, ConvConfig, Cpu, Linear, Rng, Tape};
//!
//! let mut mem = vec![0f32; 8192];
//! let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
//! let mut rng = Rng::new(0);
//! let fc = Linear::new(&mut tape, 64, 32, &mut rng)?;
//! // nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
//! init::kaiming_normal(&mut tape, fc.weight, FanMode::FanOut, Nonlinearity::Relu, &mut rng)?;
//! // nn.init.zeros_(fc.bias)
//! init::zeros(&mut tape, fc.bias.unwrap())?;
//! // nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain("tanh"))
//! let gain = init::calculate_gain(Nonlinearity::Tanh);
//! init::xavier_uniform(&mut tape, fc.weight, gain, &mut rng)?;
//! # Ok::<(), mote::Error>(())
//! ```

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// The nonlinearity a gain is for (PyTorch's `calculate_gain` names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Nonlinearity {
    /// `linear`, and every convolution (`conv1d`, `conv2d`...): 1.
    Linear,
    /// `sigmoid`: 1.
    Sigmoid,
    /// `tanh`: 5/3.
    Tanh,
    /// `relu`: sqrt(2).
    Relu,
    /// `leaky_relu` with this negative slope: sqrt(2 / (1 + slope^2)) (PyTorch's default slope
    /// for `calculate_gain` is 0.01).
    LeakyRelu(f64),
    /// `selu`: 3/4.
    Selu,
}

/// The recommended gain for `n` (PyTorch's `nn.init.calculate_gain`).
pub fn calculate_gain(n: Nonlinearity) -> f64 {
    match n {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => core::f64::consts::SQRT_2,
        Nonlinearity::LeakyRelu(slope) => libm::sqrt(2.0 / (1.0 + slope * slope)),
        Nonlinearity::Selu => 0.75,
    }
}

/// Which fan a Kaiming initialisation preserves the variance of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// The forward pass's (PyTorch's default).
    FanIn,
    /// The backward pass's.
    FanOut,
}

/// `(fan_in, fan_out)` of a weight of `v`'s shape, as PyTorch computes them: `[out, in, k...]`
/// gives `in * k...` and `out * k...` (a linear layer's `[out, in]`: `in` and `out`; a
/// convolution's `[out, in / groups, kh, kw]`).
///
/// # Errors
/// [`Error::InvalidShape`] for fewer than 2 dimensions (PyTorch refuses them too).
pub fn fans(v: Var) -> Result<(usize, usize)> {
    let s = v.shape();
    if s.rank() < 2 {
        return Err(Error::InvalidShape {
            op: "init fans (a weight needs 2 or more dimensions)",
            shape: s,
        });
    }
    let field: usize = (2..s.rank()).map(|a| s.dim(a)).product();
    Ok((
        s.dim(1).saturating_mul(field),
        s.dim(0).saturating_mul(field),
    ))
}

/// Writes `f()` into each element of `v` in order.
fn write_each<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    mut f: impl FnMut() -> f64,
) -> Result<()> {
    tape.write_with(v, || B::Elem::from_f64(f()))
}

/// Every element `value` (`nn.init.constant_`).
///
/// # Errors
/// As [`Tape::write_with`].
pub fn constant<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    value: f64,
) -> Result<()> {
    write_each(tape, v, || value)
}

/// Every element 0 (`nn.init.zeros_`).
///
/// # Errors
/// As [`Tape::write_with`].
pub fn zeros<B: Backend, const N: usize>(tape: &mut Tape<B, N>, v: Var) -> Result<()> {
    constant(tape, v, 0.0)
}

/// Every element 1 (`nn.init.ones_`).
///
/// # Errors
/// As [`Tape::write_with`].
pub fn ones<B: Backend, const N: usize>(tape: &mut Tape<B, N>, v: Var) -> Result<()> {
    constant(tape, v, 1.0)
}

/// Uniform in `[lo, hi)` (`nn.init.uniform_(v, a=lo, b=hi)`).
///
/// # Errors
/// [`Error::InvalidArgument`] unless `lo <= hi`, both finite and `hi - lo` finite; as
/// [`Tape::write_with`].
pub fn uniform<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    lo: f64,
    hi: f64,
    rng: &mut Rng,
) -> Result<()> {
    if !((hi - lo).is_finite() && lo <= hi) {
        return Err(Error::InvalidArgument {
            what: "init::uniform needs finite bounds with lo <= hi, hi - lo finite",
        });
    }
    write_each(tape, v, || rng.uniform(lo, hi))
}

/// Normal with mean `mean` and standard deviation `std` (`nn.init.normal_`).
///
/// # Errors
/// [`Error::InvalidArgument`] unless `mean` is finite and `std` finite and `>= 0`; as
/// [`Tape::write_with`].
pub fn normal<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    mean: f64,
    std: f64,
    rng: &mut Rng,
) -> Result<()> {
    if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
        return Err(Error::InvalidArgument {
            what: "init::normal needs a finite mean and a finite std >= 0",
        });
    }
    write_each(tape, v, || mean + std * rng.normal())
}

/// Normal with mean `mean` and standard deviation `std`, redrawn until inside `[lo, hi]`
/// (`nn.init.trunc_normal_(v, mean, std, a=lo, b=hi)`, PyTorch's defaults 0, 1, -2, 2; it
/// samples the truncated distribution by its inverse CDF, this by rejection: the same
/// distribution).
///
/// # Errors
/// [`Error::InvalidArgument`] unless every argument is finite, `std > 0`, `lo < hi`, and the
/// interval holds at least 1e-4 of the untruncated distribution (so that a draw lands in it
/// within about 10,000 tries); as [`Tape::write_with`].
pub fn trunc_normal<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    mean: f64,
    std: f64,
    lo: f64,
    hi: f64,
    rng: &mut Rng,
) -> Result<()> {
    let finite = [mean, std, lo, hi].iter().all(|x| x.is_finite());
    // The probability of [lo, hi] under the normal: Phi(b) - Phi(a).
    let phi = |x: f64| 0.5 * (1.0 + libm::erf((x - mean) / (std * core::f64::consts::SQRT_2)));
    let mass = if finite && std > 0.0 && lo < hi {
        phi(hi) - phi(lo)
    } else {
        0.0
    };
    if !(mass >= 1e-4) {
        return Err(Error::InvalidArgument {
            what: "init::trunc_normal needs finite arguments, std > 0, lo < hi, and [lo, hi] \
                   holding at least 1e-4 of the distribution",
        });
    }
    write_each(tape, v, || loop {
        let x = mean + std * rng.normal();
        if (lo..=hi).contains(&x) {
            break x;
        }
    })
}

/// Uniform in `[-b, b]` with `b = gain sqrt(6 / (fan_in + fan_out))` (Glorot and Bengio;
/// `nn.init.xavier_uniform_`).
///
/// # Errors
/// As [`fans`]; [`Error::InvalidArgument`] for a gain that is not finite; as
/// [`Tape::write_with`].
pub fn xavier_uniform<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    gain: f64,
    rng: &mut Rng,
) -> Result<()> {
    let std = xavier_std(v, gain)?;
    let b = libm::sqrt(3.0) * std;
    write_each(tape, v, || rng.uniform(-b, b))
}

/// Normal with standard deviation `gain sqrt(2 / (fan_in + fan_out))`
/// (`nn.init.xavier_normal_`).
///
/// # Errors
/// As [`xavier_uniform`].
pub fn xavier_normal<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    gain: f64,
    rng: &mut Rng,
) -> Result<()> {
    let std = xavier_std(v, gain)?;
    write_each(tape, v, || std * rng.normal())
}

fn xavier_std(v: Var, gain: f64) -> Result<f64> {
    let (fan_in, fan_out) = fans(v)?;
    check_gain(gain)?;
    Ok(gain * libm::sqrt(2.0 / (fan_in as f64 + fan_out as f64)))
}

fn check_gain(gain: f64) -> Result<()> {
    if gain.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "init: the gain must be finite",
        })
    }
}

/// The standard deviation of a Kaiming initialisation: `gain / sqrt(fan)`, the gain that of
/// `nonlinearity`.
fn kaiming_std(v: Var, mode: FanMode, nonlinearity: Nonlinearity) -> Result<f64> {
    let (fan_in, fan_out) = fans(v)?;
    let gain = calculate_gain(nonlinearity);
    check_gain(gain)?;
    // A fan is never 0: a shape has no zero dimension.
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    Ok(gain / libm::sqrt(fan as f64))
}

/// Uniform in `[-b, b]` with `b = gain sqrt(3 / fan)` (He et al.; `nn.init.kaiming_uniform_(v,
/// a, mode, nonlinearity)`). PyTorch's `a` is the slope of `Nonlinearity::LeakyRelu(a)`; its
/// defaults (`a=0`, `nonlinearity="leaky_relu"`) are `LeakyRelu(0.0)`, the gain of `Relu`.
/// [`crate::Linear::new`] already initialises as PyTorch's layer does (this with
/// `LeakyRelu(sqrt(5))`, fan in).
///
/// # Errors
/// As [`fans`]; [`Error::InvalidArgument`] for a gain that is not finite; as
/// [`Tape::write_with`].
pub fn kaiming_uniform<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut Rng,
) -> Result<()> {
    let b = libm::sqrt(3.0) * kaiming_std(v, mode, nonlinearity)?;
    write_each(tape, v, || rng.uniform(-b, b))
}

/// Normal with standard deviation `gain / sqrt(fan)` (`nn.init.kaiming_normal_`).
///
/// # Errors
/// As [`kaiming_uniform`].
pub fn kaiming_normal<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    v: Var,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    rng: &mut Rng,
) -> Result<()> {
    let std = kaiming_std(v, mode, nonlinearity)?;
    write_each(tape, v, || std * rng.normal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cpu, Tape};

    fn stats(x: &[f64]) -> (f64, f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let max = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        (mean, libm::sqrt(var), max)
    }

    // PyTorch's numbers: calculate_gain("tanh") = 5/3, ("relu") = sqrt(2),
    // ("leaky_relu", 0.2) = sqrt(2 / 1.04); fans of [16, 8, 3, 3] are (72, 144).
    #[test]
    fn gains_and_fans_are_pytorchs() {
        assert_eq!(calculate_gain(Nonlinearity::Tanh), 5.0 / 3.0);
        assert_eq!(calculate_gain(Nonlinearity::Relu), 2f64.sqrt());
        assert_eq!(
            calculate_gain(Nonlinearity::LeakyRelu(0.2)),
            (2.0f64 / 1.04).sqrt()
        );
        assert_eq!(calculate_gain(Nonlinearity::Selu), 0.75);
        let mut mem = [0f64; 4096];
        let mut t = Tape::<Cpu<f64>, 8>::new(&mut mem);
        let w = t.param_with(&[16, 8, 3, 3], || 0.0).unwrap();
        assert_eq!(fans(w).unwrap(), (72, 144));
        let b = t.param_with(&[16], || 0.0).unwrap();
        assert!(fans(b).is_err());
    }

    // Each initialiser's spread on a 64 x 48 weight (3072 draws): the bound holds exactly and
    // the standard deviation is within 5% of the formula's (the Glorot ones with gain 2).
    #[test]
    fn spreads_follow_the_formulas() {
        let mut mem = [0f64; 8192];
        let mut t = Tape::<Cpu<f64>, 8>::new(&mut mem);
        let w = t.param_with(&[64, 48], || 0.0).unwrap();
        let mut rng = Rng::new(9);
        let (fan_in, fan_out) = (48.0f64, 64.0f64);
        let glorot = 2.0 * (2.0 / (fan_in + fan_out)).sqrt();
        let he = 2f64.sqrt() / fan_in.sqrt();
        let cases: [(&str, f64, Option<f64>); 6] = [
            ("xavier_uniform", glorot, Some(3f64.sqrt() * glorot)),
            ("xavier_normal", glorot, None),
            ("kaiming_uniform", he, Some(3f64.sqrt() * he)),
            ("kaiming_normal", he, None),
            ("uniform", 1.0 / 3f64.sqrt(), Some(1.0)),
            ("normal", 0.5, None),
        ];
        for (name, std, bound) in cases {
            match name {
                "xavier_uniform" => xavier_uniform(&mut t, w, 2.0, &mut rng),
                "xavier_normal" => xavier_normal(&mut t, w, 2.0, &mut rng),
                "kaiming_uniform" => {
                    kaiming_uniform(&mut t, w, FanMode::FanIn, Nonlinearity::Relu, &mut rng)
                }
                "kaiming_normal" => {
                    kaiming_normal(&mut t, w, FanMode::FanIn, Nonlinearity::Relu, &mut rng)
                }
                "uniform" => uniform(&mut t, w, -1.0, 1.0, &mut rng),
                _ => normal(&mut t, w, 0.0, 0.5, &mut rng),
            }
            .unwrap();
            let (mean, sd, max) = stats(t.data(w).unwrap());
            assert!(mean.abs() < 0.1 * std, "{name}: mean {mean}");
            assert!((sd / std - 1.0).abs() < 0.05, "{name}: std {sd} vs {std}");
            if let Some(b) = bound {
                assert!(max <= b, "{name}: {max} beyond {b}");
            }
        }
        // Fan out, and a leaky ReLU's slope (PyTorch's `a`).
        kaiming_normal(
            &mut t,
            w,
            FanMode::FanOut,
            Nonlinearity::LeakyRelu(5f64.sqrt()),
            &mut rng,
        )
        .unwrap();
        let want = (2.0f64 / 6.0).sqrt() / fan_out.sqrt();
        let (_, sd, _) = stats(t.data(w).unwrap());
        assert!((sd / want - 1.0).abs() < 0.05, "{sd} vs {want}");
        trunc_normal(&mut t, w, 0.0, 1.0, -0.5, 0.25, &mut rng).unwrap();
        let d = t.data(w).unwrap();
        assert!(d.iter().all(|v| (-0.5..=0.25).contains(v)));
        // The truncated normal's mean and deviation there: -0.1193 and 0.2144.
        let (mean, sd, _) = stats(d);
        assert!(
            (mean + 0.1193).abs() < 0.02 && (sd - 0.2144).abs() < 0.02,
            "{mean} {sd}"
        );
        constant(&mut t, w, 0.125).unwrap();
        assert!(t.data(w).unwrap().iter().all(|&v| v == 0.125));
        zeros(&mut t, w).unwrap();
        assert!(t.data(w).unwrap().iter().all(|&v| v == 0.0));
        ones(&mut t, w).unwrap();
        assert!(t.data(w).unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn bad_arguments_are_refused_and_write_nothing() {
        let mut mem = [0f32; 1024];
        let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
        let w = t.param(&[2, 2], &[1.0; 4]).unwrap();
        let mut rng = Rng::new(1);
        assert!(uniform(&mut t, w, 1.0, -1.0, &mut rng).is_err());
        assert!(normal(&mut t, w, 0.0, -1.0, &mut rng).is_err());
        assert!(normal(&mut t, w, f64::NAN, 1.0, &mut rng).is_err());
        assert!(trunc_normal(&mut t, w, 0.0, 1.0, 10.0, 11.0, &mut rng).is_err());
        assert!(trunc_normal(&mut t, w, 0.0, 0.0, -1.0, 1.0, &mut rng).is_err());
        assert!(uniform(&mut t, w, -f64::MAX, f64::MAX, &mut rng).is_err());
        assert!(xavier_uniform(&mut t, w, f64::INFINITY, &mut rng).is_err());
        let nan = Nonlinearity::LeakyRelu(f64::NAN);
        assert!(kaiming_normal(&mut t, w, FanMode::FanIn, nan, &mut rng).is_err());
        let b = t.param(&[3], &[1.0; 3]).unwrap();
        assert!(xavier_normal(&mut t, b, 1.0, &mut rng).is_err());
        assert_eq!(t.data(w).unwrap(), &[1.0; 4]);
        assert_eq!(t.data(b).unwrap(), &[1.0; 3]);
        // A tensor over several chunks, the last one partial: every element written.
        let big = t.param_with(&[3, 100], || 0.0).unwrap();
        constant(&mut t, big, 0.5).unwrap();
        assert!(t.data(big).unwrap().iter().all(|&v| v == 0.5));
        // A handle from before a rewind is refused.
        let mark = t.mark();
        let x = t.input(&[2], &[0.0; 2]).unwrap();
        t.rewind(mark).unwrap();
        assert!(zeros(&mut t, x).is_err());
    }
}
