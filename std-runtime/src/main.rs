//! The `mote` command: train, evaluate, predict, export and benchmark (see
//! [`mote_runtime::cli`]).
//!
//! Errors are one or two lines on stderr (what went wrong, what to do) and exit status 1.

use std::process::ExitCode;

use clap::Parser;
use mote_runtime::cli::{run, Cli};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
