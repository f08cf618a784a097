//! # mote
//!
//! A tensor and reverse-mode autodiff engine that trains the same model on a microcontroller,
//! a multicore CPU and a GPU. This crate is the core: `#![no_std]`, no heap, no `unsafe`.
//!
//! Everything a training step touches lives in **one arena** over memory you provide (a
//! `static` on a microcontroller); ops run eagerly and record nodes on a fixed-capacity
//! **tape**; [`Tape::backward`] walks it in reverse. A step starts with [`Tape::rewind`] to a
//! mark taken after the parameters and optimizer state were created, so every step reuses the
//! same memory and the exact need is known ahead ([`plan`]).
//!
//! The seed article's PyTorch loop (`Linear(8, 10) -> ReLU -> Linear(10, 1)`, MSE, Adam), in
//! mote:
//! ```
//! use mote::{plan, Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};
//!
//! const FLOATS: usize = plan::mlp(&[8, 10, 1], 64, plan::Loss::Mse, plan::Opt::Adam);
//! let mut mem = vec![0f32; FLOATS]; // or a `static mut`-free `static` array on a device
//! let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
//! let mut rng = Rng::new(0);
//! let model = (Linear::new(&mut tape, 8, 10, &mut rng)?, Relu, Linear::new(&mut tape, 10, 1, &mut rng)?);
//! let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
//! let start = tape.mark(); // parameters and optimizer state stay below the mark
//!
//! let xs: Vec<f32> = (0..64 * 8).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
//! let ys: Vec<f32> = xs.chunks(8).map(|r| r.iter().sum::<f32>() / 8.0).collect();
//! let mut first = None;
//! for _ in 0..200 {
//!     tape.rewind(start)?;                 // drops the last step's activations and gradients
//!     let x = tape.input(&[64, 8], &xs)?;
//!     let y = tape.input(&[64, 1], &ys)?;
//!     let pred = model.forward(&mut tape, x)?;
//!     let loss = tape.mse(pred, y)?;
//!     tape.backward(loss)?;                // loss.backward()
//!     opt.step(&mut tape)?;                // optimizer.step()
//!     first.get_or_insert(tape.item(loss)?);
//! }
//! assert_eq!(tape.high_water(), FLOATS);  // the plan was exact
//! # Ok::<(), mote::Error>(())
//! ```
//!
//! Modules: [`ops`] (every op family, with formulas), [`nn`] (layers: [`nn::attention`] for
//! attention and transformer layers, [`nn::rnn`] for LSTM and GRU, [`nn::loss`] for PyTorch's
//! loss modules and reductions, [`nn::init`]), [`optim`],
//! [`blob`] (weights for flash), [`plan`] (memory), [`replay`] (re-run a recorded step), [`gradcheck`] (check your own ops).

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// NaN-aware comparisons (`!(x >= 0.0)`) are deliberate: they reject NaN too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(feature = "std")]
extern crate std;

pub mod backend;
pub mod blob;
mod error;
mod float;
pub mod gradcheck;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod replay;
mod rng;
mod shape;
mod tape;
mod tensor;

pub use backend::{Backend, Cpu, HostBackend, Meter, View};
pub use error::{Error, Result};
pub use float::Float;
pub use nn::{
    AvgPool1d, AvgPool2d, AvgPool2dExcludePad, BatchNorm, Conv1d, Conv2d, Dropout, Elu, Embedding,
    Flatten, Gelu, GeluTanh, GlobalAvgPool, GroupNorm, Hardsigmoid, Hardswish, LayerNorm,
    LeakyRelu, Linear, MaxPool1d, MaxPool2d, Module, Relu, Relu6, Sequential, Sigmoid, Silu,
    Softmax, Softplus, SoftplusBeta, Tanh,
};
pub use ops::conv::{ConvConfig, PoolConfig};
pub use optim::{
    clip_grad_norm, clip_grad_norm_to, grad_norm, Adagrad, AdagradConfig, Adam, AdamConfig,
    Optimizer, RmsProp, RmsPropConfig, Sgd, SgdConfig,
};
pub use replay::Replay;
pub use rng::Rng;
pub use shape::{Shape, MAX_RANK};
pub use tape::{Mark, Tape, Var};
pub use tensor::Tensor;
