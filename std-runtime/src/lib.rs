//! mote's std runtime: a multithreaded CPU backend, the training loop, data, checkpoints and
//! the `mote` command-line program.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod export;
pub mod idx;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod plot;
pub mod progress;
pub mod rendezvous;
pub mod schedule;
pub mod train;

pub use error::{Error, ErrorKind, Result};
pub mod data_parallel;
