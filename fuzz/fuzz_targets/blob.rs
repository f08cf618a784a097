//! Arbitrary bytes as a weight blob: parse, load into a fixed model, read, create parameters.
//! Never panics. The logic lives in `mote_fuzz::run_blob` (see `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mote_fuzz::run_blob(data);
});
