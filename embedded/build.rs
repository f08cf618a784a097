//! Puts `memory.x` where cortex-m-rt's `link.x` finds it, and turns the core's bundled digits
//! (`../core/data/digits.csv.gz`) into the bytes the firmware keeps in flash, and writes
//! XOR-MCU's training step as Rust (`xor_step.rs`, from `xor_step.rs` beside this file).
//!
//! `digits.bin`: 1,797 records of 65 bytes (64 pixels 0..=16, then the label), shuffled with a
//! fixed seed (`digits_data.rs`); the first `TRAIN` records are the training subset, the rest
//! the held-out one.

use std::{env, fs, path::PathBuf};

include!("digits_data.rs");

mod xor_step;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=digits_data.rs");

    println!("cargo:rerun-if-changed=xor_step.rs");
    println!("cargo:rerun-if-changed=../core/src");
    let xor = xor_step::generate().expect("XOR-MCU's step runs and records on the host");
    fs::write(out.join("xor_step.rs"), xor).unwrap();

    let gz_path = "../core/data/digits.csv.gz";
    println!("cargo:rerun-if-changed={gz_path}");
    let records = digit_records(&fs::read(gz_path).expect("the core's digits data"));
    let bytes: Vec<u8> = records.iter().flatten().copied().collect();
    fs::write(out.join("digits.bin"), bytes).unwrap();
    fs::write(
        out.join("digits_split.rs"),
        format!(
            "/// Training records.\npub const TRAIN: usize = {TRAIN};\n/// All records.\npub const TOTAL: usize = {};\n",
            records.len()
        ),
    )
    .unwrap();
}
