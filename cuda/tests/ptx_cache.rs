//! A cached PTX file the driver refuses (truncated, or not PTX at all) does not block the GPU:
//! the kernels are compiled again and the cache rewritten. A test binary of its own: it points
//! `MOTE_CUDA_CACHE` at a folder of its own before any backend is made.

mod common;

use common::gpu;
use mote::Backend;
use mote_cuda::kernels::{cache_file, SOURCES};

#[test]
fn a_bad_cached_ptx_is_compiled_again() {
    let dir = std::env::temp_dir().join(format!("mote-bad-ptx-{}", std::process::id()));
    // SAFETY (edition 2024 would need unsafe): set before any thread of this binary reads it.
    std::env::set_var("MOTE_CUDA_CACHE", &dir);
    let Some(first) = gpu("a_bad_cached_ptx_is_compiled_again", 64) else {
        return;
    };
    let arch = first.arch().to_string();
    drop(first);
    // Every kernel file's cache entry: text that passes the cache's own check (it names an
    // entry) but that no driver loads.
    let _ = std::fs::create_dir_all(&dir);
    let bad = "// truncated\n.entry";
    let files: Vec<_> = SOURCES
        .iter()
        .map(|s| cache_file(s, &arch).expect("a cache folder is set"))
        .collect();
    for f in &files {
        std::fs::write(f, bad).unwrap();
    }
    let mut be = gpu("a_bad_cached_ptx_is_compiled_again", 64)
        .expect("the backend is made despite the bad cache");
    // It works: a fill and a read.
    be.fill(0, 8, 2.5).unwrap();
    let mut out = [0f32; 8];
    be.read(0, &mut out).unwrap();
    assert_eq!(out, [2.5; 8]);
    // Where NVRTC made real PTX (a GPU), it replaced the bad entries; the emulated device's
    // stand-in is never cached, so there they stay as they were.
    for f in &files {
        let now = std::fs::read_to_string(f).unwrap_or_default();
        assert!(
            now == bad || now.contains(".version"),
            "{}: neither the planted text nor PTX",
            f.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
