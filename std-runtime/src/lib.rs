//! mote's std runtime: a multithreaded CPU backend, the training loop, data, checkpoints and
//! the `mote` command-line program.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod export;
pub mod idx;
mod memory;
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

/// `s` on one line: its control characters (line breaks, tabs, ...) escaped as Rust writes
/// them, the rest as it is. For names and cells shown in messages, tables and comments.
pub(crate) fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}
