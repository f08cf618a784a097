//! Layers: the [`Module`] trait, [`Linear`], activations as layers, and sequential composition
//! with tuples (no `alloc`); convolution, pooling and normalisation layers (`BatchNorm`,
//! `LayerNorm`, `GroupNorm`), `Dropout`, `Embedding`; attention and transformer layers
//! ([`attention`]), LSTM and GRU ([`rnn`]), PyTorch's loss modules ([`loss`]) and
//! initialisations ([`init`]).
//!
//! # A user-defined layer
//! The seed article's custom `LinearLayer`, written as a user would: parameters are tape
//! handles; `forward` records ops.
//! ```
//! use mote::{Module, Tape, Var, Backend, Result, Rng};
//!
//! struct LinearLayer { w: Var, b: Var }
//!
//! impl LinearLayer {
//!     fn new<B: Backend, const N: usize>(tape: &mut Tape<B, N>, i: usize, o: usize, rng: &mut Rng) -> Result<Self> {
//!         let w = tape.param_with(&[i, o], || B::Elem::from_f64(rng.normal() * 0.1))?;
//!         let b = tape.param(&[o], &[B::Elem::ZERO; 16][..o])?;
//!         Ok(LinearLayer { w, b })
//!     }
//! }
//!
//! impl Module for LinearLayer {
//!     fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
//!         let xw = tape.matmul(x, self.w)?;   // x @ w
//!         tape.add(xw, self.b)                // + b, broadcast over the batch
//!     }
//!     fn visit_params(&self, f: &mut dyn FnMut(Var)) { f(self.w); f(self.b); }
//! }
//! # use mote::Float;
//! let mut mem = [0f32; 256];
//! let mut tape = Tape::<mote::Cpu<f32>, 16>::new(&mut mem);
//! let layer = LinearLayer::new(&mut tape, 3, 2, &mut Rng::new(0))?;
//! let x = tape.input(&[4, 3], &[1.0; 12])?;
//! let y = layer.forward(&mut tape, x)?;
//! assert_eq!(y.shape().dims(), &[4, 2]);
//! # Ok::<(), mote::Error>(())
//! ```

pub mod attention;
mod cnn;
pub mod init;
pub mod loss;
pub mod rnn;
pub use cnn::{
    AvgPool1d, AvgPool2d, AvgPool2dExcludePad, BatchNorm, Conv1d, Conv2d, Dropout, Embedding,
    GlobalAvgPool, GroupNorm, LayerNorm, MaxPool1d, MaxPool2d,
};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// A layer (or a whole model): a forward pass that records ops on a tape.
pub trait Module {
    /// Runs the layer on `x`.
    ///
    /// # Errors
    /// Whatever an op returns (shape mismatch, full arena or tape, ...). This crate's layers
    /// and stacks add all their nodes or none; in a stack that fails, a [`BatchNorm`] before
    /// the failing layer has still moved its running statistics and a [`Dropout`] its
    /// generator, as in PyTorch.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var>;

    /// Calls `f` with each parameter, in a fixed order (for freezing, saving, counting).
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        let _ = f;
    }

    /// Switches between training and evaluation behaviour (PyTorch's `model.train()` /
    /// `model.eval()`): dropout and batch normalisation change; other layers ignore it, and
    /// compositions pass it on.
    fn set_training(&mut self, training: bool) {
        let _ = training;
    }
}

/// Freezes every parameter of `m` (no gradient, optimizers skip them).
///
/// # Errors
/// The first error from [`Tape::freeze`] ([`Error::StaleHandle`], [`Error::NotAParameter`]),
/// found before any parameter is frozen.
pub fn freeze<M: Module, B: Backend, const N: usize>(tape: &mut Tape<B, N>, m: &M) -> Result<()> {
    // Every handle checked first: all frozen or none.
    let mut res = Ok(());
    m.visit_params(&mut |p| {
        if res.is_ok() {
            res = tape.param_state(p, 0).map(|_| ());
        }
    });
    res?;
    let mut res = Ok(());
    m.visit_params(&mut |p| {
        if res.is_ok() {
            res = tape.freeze(p);
        }
    });
    res
}

/// Number of parameter elements of `m`, buffers included (batch norm's running statistics,
/// which PyTorch's `parameters()` leaves out: [`Tape::param_count`] counts the trainable
/// ones); a parameter that `m` visits twice, shared between layers, counts twice; saturates
/// at `usize::MAX`.
pub fn param_count<M: Module>(m: &M) -> usize {
    let mut n: usize = 0;
    m.visit_params(&mut |p| n = n.saturating_add(p.numel()));
    n
}

/// A fully connected layer `y = x W^T + b`, with `W` of shape `[out, in]` (PyTorch's layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// The weight, `[out, in]`.
    pub weight: Var,
    /// The bias, `[out]`.
    pub bias: Option<Var>,
}

impl Linear {
    /// A trainable layer with PyTorch's default initialisation: weight and bias uniform in
    /// `[-1/sqrt(in), 1/sqrt(in)]` (what `kaiming_uniform_(a=sqrt(5))` gives).
    ///
    /// # Errors
    /// [`Error::BadDims`] for a zero size; [`Error::ArenaFull`], [`Error::TapeFull`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Self::build(tape, inputs, outputs, true, rng)
    }

    /// A layer without bias.
    ///
    /// # Errors
    /// As [`Linear::new`].
    pub fn without_bias<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Self::build(tape, inputs, outputs, false, rng)
    }

    /// A trainable layer with given weights (`[out, in]`, row-major) and bias.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`]; and as [`Linear::new`].
    pub fn from_weights<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        weight: &[B::Elem],
        bias: Option<&[B::Elem]>,
    ) -> Result<Self> {
        // Both parameters or neither.
        tape.all_or_nothing(|tape| {
            let weight = tape.param(&[outputs, inputs], weight)?;
            let bias = match bias {
                Some(b) => Some(tape.param(&[outputs], b)?),
                None => None,
            };
            Ok(Linear { weight, bias })
        })
    }

    fn build<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        if inputs == 0 {
            return Err(Error::BadDims { rank: 2 });
        }
        let bound = 1.0 / libm::sqrt(inputs as f64);
        // Both parameters or neither.
        tape.all_or_nothing(|tape| {
            let weight = tape.param_with(&[outputs, inputs], || {
                B::Elem::from_f64(rng.uniform(-bound, bound))
            })?;
            let bias = if bias {
                Some(tape.param_with(&[outputs], || B::Elem::from_f64(rng.uniform(-bound, bound)))?)
            } else {
                None
            };
            Ok(Linear { weight, bias })
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.shape().dim(1)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.shape().dim(0)
    }
}

impl Module for Linear {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.linear(x, self.weight, self.bias)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        if let Some(b) = self.bias {
            f(b);
        }
    }
}

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl Module for $name {
            fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
                tape.$method(x)
            }
        }
    };
}

activation!(
    /// ReLU as a layer.
    Relu, relu
);
activation!(
    /// Sigmoid as a layer.
    Sigmoid, sigmoid
);
activation!(
    /// Tanh as a layer.
    Tanh, tanh
);
activation!(
    /// GELU, exact (through erf), as a layer: PyTorch's default `nn.GELU()`.
    Gelu, gelu
);
activation!(
    /// GELU, tanh approximation, as a layer: PyTorch's `nn.GELU(approximate="tanh")`.
    GeluTanh, gelu_tanh
);
activation!(
    /// SiLU (swish) as a layer.
    Silu, silu
);
activation!(
    /// Softplus (beta 1, threshold 20) as a layer.
    Softplus, softplus
);
activation!(
    /// Hard sigmoid as a layer.
    Hardsigmoid, hardsigmoid
);
activation!(
    /// Hard swish as a layer (MobileNetV3's activation).
    Hardswish, hardswish
);
activation!(
    /// ReLU6 as a layer (MobileNet's activation).
    Relu6, relu6
);

/// ELU as a layer, with its alpha (PyTorch's default: 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Elu(pub f32);

impl Module for Elu {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.elu(x, self.0)
    }
}

/// Softplus as a layer, with PyTorch's `beta` (`nn.Softplus(beta)`, threshold 20); see
/// [`Tape::softplus_beta`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftplusBeta(pub f32);

impl Module for SoftplusBeta {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.softplus_beta(x, self.0)
    }
}

/// Leaky ReLU as a layer, with its negative slope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyRelu(pub f32);

impl Module for LeakyRelu {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.leaky_relu(x, self.0)
    }
}

/// Softmax over the last axis, as a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Softmax;

impl Module for Softmax {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.softmax(x, x.shape().rank().saturating_sub(1))
    }
}

/// Flattens every dimension after the first (`[N, ...] -> [N, rest]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten;

impl Module for Flatten {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        let n = x.shape().dim(0);
        if x.shape().rank() <= 2 {
            return Ok(x);
        }
        tape.reshape(x, &[n, x.numel() / n])
    }
}

/// Layers in sequence. Tuples of modules are modules (`(Linear, Relu, Linear)`), so
/// `Sequential((a, b, c))` and the bare tuple behave alike; the wrapper only names the idea.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sequential<T>(pub T);

impl<T: Module> Module for Sequential<T> {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        self.0.forward(tape, x)
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.0.visit_params(f);
    }
    fn set_training(&mut self, training: bool) {
        self.0.set_training(training);
    }
}

macro_rules! tuple_module {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name: Module),+> Module for ($($name,)+) {
            fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
                // Every layer's nodes or none.
                tape.all_or_nothing(|tape| {
                    let y = x;
                    $(let y = self.$idx.forward(tape, y)?;)+
                    Ok(y)
                })
            }
            fn visit_params(&self, f: &mut dyn FnMut(Var)) {
                $(self.$idx.visit_params(f);)+
            }
            fn set_training(&mut self, training: bool) {
                $(self.$idx.set_training(training);)+
            }
        }
    };
}

tuple_module!(A.0);
tuple_module!(A.0, B1.1);
tuple_module!(A.0, B1.1, C.2);
tuple_module!(A.0, B1.1, C.2, D.3);
tuple_module!(A.0, B1.1, C.2, D.3, E.4);
tuple_module!(A.0, B1.1, C.2, D.3, E.4, F.5);
tuple_module!(A.0, B1.1, C.2, D.3, E.4, F.5, G.6);
tuple_module!(A.0, B1.1, C.2, D.3, E.4, F.5, G.6, H.7);
tuple_module!(A.0, B1.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8);
tuple_module!(A.0, B1.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9);

/// A stack of identical layers (`[Linear; 3]`) runs them in order.
impl<M: Module, const K: usize> Module for [M; K] {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        // Every layer's nodes or none.
        tape.all_or_nothing(|tape| {
            let mut y = x;
            for m in self {
                y = m.forward(tape, y)?;
            }
            Ok(y)
        })
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        for m in self {
            m.visit_params(f);
        }
    }
    fn set_training(&mut self, training: bool) {
        for m in self {
            m.set_training(training);
        }
    }
}
