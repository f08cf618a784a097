//! Builds the emulated CUDA device (`mote_cuda::emulator`) into a folder, for running a whole
//! program's CUDA path on the CPU where no GPU is:
//!
//! ```text
//! cargo run --release -p mote-cuda --example emulated_device -- target/emulated-device
//! LD_LIBRARY_PATH=target/emulated-device cargo run --release -p mote-runtime -- train --device cuda
//! ```
//!
//! Results only: the emulated device runs every kernel on one CPU core, far slower than any
//! GPU, and says nothing about speed.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: emulated_device DIR (the folder to write the libraries into)");
        return ExitCode::from(2);
    };
    match mote_cuda::emulator::build(&dir) {
        Ok(()) => {
            println!(
                "emulated CUDA device in {}: run a program with LD_LIBRARY_PATH={}",
                dir.display(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
