//! Arbitrary bytes through the runtime's readers of untrusted files: CSV text, checkpoints, IDX
//! files, gzip. Never panics. The logic lives in `mote_fuzz::run_inputs` (see `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mote_fuzz::run_inputs(data);
});
