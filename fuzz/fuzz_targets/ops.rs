//! Random op sequences on a small tape: every call returns `Ok` or `Err`, never panics.
//! The decoding lives in `mote_fuzz::run_ops` (see `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mote_fuzz::run_ops(data);
});
