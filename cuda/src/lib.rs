//! The CUDA backend of mote: the same model code that trains on the reference CPU backend
//! trains on an NVIDIA GPU.
//!
//! - [`Cuda`] implements [`mote::Backend`] (`Elem = f32`) over **one device allocation**, the
//!   device arena, addressed with the tape's offsets (plus a small side area: status words,
//!   graph scalars, descriptor tables and the cuBLAS workspace). No allocation per op or step.
//! - Products run through cuBLAS (`cublasGemmEx`, strided-batched for 3-D), f32 by default,
//!   TF32 or bf16 inputs with f32 accumulation as opt-ins ([`Precision`]).
//! - Everything else runs CUDA C kernels (`cuda/kernels/*.cu`) compiled by NVRTC once per
//!   process for the device's architecture, cached on disk ([`kernels::cache_dir`]); `float4`
//!   loads where data is contiguous and aligned; all Adam (SGD, RMSprop, Adagrad) updates of a
//!   step in one launch.
//! - [`Graph`] captures a whole training step into a CUDA graph and replays it.
//! - [`Nccl`] all-reduces gradients across GPUs (data-parallel training), in one process or
//!   one process per GPU.
//!
//! Nothing CUDA is linked at build time (cudarc's dynamic loading): the crate builds anywhere,
//! and [`Cuda::new`] returns [`CudaError::NoDriver`] / [`CudaError::NoDevice`] where there is
//! no GPU, never a panic (each library is probed with `libloading` before cudarc touches it).
//!
//! ```no_run
//! use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Relu, Rng, Tape};
//! use mote_cuda::Cuda;
//!
//! let mut tape = Tape::<Cuda, 64>::with_backend(Cuda::new(1 << 20)?);
//! let mut rng = Rng::new(0);
//! let model = (Linear::new(&mut tape, 8, 10, &mut rng)?, Relu, Linear::new(&mut tape, 10, 1, &mut rng)?);
//! let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
//! let start = tape.mark();
//! let (xs, ys) = (vec![0.5f32; 64 * 8], vec![1.0f32; 64]);
//! for _ in 0..100 {
//!     tape.rewind(start)?;
//!     let x = tape.input(&[64, 8], &xs)?;
//!     let y = tape.input(&[64, 1], &ys)?;
//!     let pred = model.forward(&mut tape, x)?;
//!     let loss = tape.mse(pred, y)?;
//!     tape.backward(loss)?;
//!     opt.step(&mut tape)?;
//! }
//! # Ok::<(), mote_cuda::CudaError>(())
//! ```

#![deny(missing_docs)]

mod backend;
pub mod bench;
mod device;
pub mod error;
pub mod graph;
pub mod kernels;
pub mod nccl;
mod ops;
mod pending;

pub use backend::CONV_SCRATCH;
pub use device::{take_last_error, Cuda, Options, Precision, MAX_ALIGN, PADDED_ALLOCATIONS};

/// Internals the CPU emulation test (`tests/emulated.rs`) drives kernels with; not an API.
#[doc(hidden)]
pub mod __emu {
    pub use crate::ops::{broadcast_strides, dims, Walk};
}
/// The emulated CUDA device, for checking the launch code without a GPU; not an API.
#[doc(hidden)]
pub mod emulator;
pub use error::{probe, CudaError};
pub use graph::Graph;
pub use nccl::{Nccl, NcclRank};
