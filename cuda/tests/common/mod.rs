//! Shared by the CUDA tests: the GPU (or one skip line), and comparisons with the reference.
#![allow(dead_code)]

use std::io::Read;

use mote_cuda::{Cuda, CudaError};

/// A CUDA backend with an arena of `floats`, or `None` after printing one line saying why the
/// test is skipped. With `MOTE_REQUIRE_GPU=1` a missing GPU fails the test instead.
pub fn gpu(test: &str, floats: usize) -> Option<Cuda> {
    match Cuda::new(floats) {
        Ok(c) => Some(c),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice))
            if std::env::var_os("MOTE_REQUIRE_GPU").is_none_or(|v| v != "1") =>
        {
            eprintln!("skipped {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: creating the CUDA backend failed: {e}"),
    }
}

/// Asserts `|got - want| <= atol + rtol |want|` elementwise (NaN equal to NaN).
pub fn close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        // NaN-aware: a NaN on one side only fails.
        if err.is_nan() || err > tol {
            panic!("{what}: element {i}: gpu {g} vs cpu {w} (|diff| {err} > tol {tol})");
        }
    }
}

/// The bundled digits (1,797 8x8 images scaled to [0, 1], labels).
pub fn digits() -> (Vec<f32>, Vec<usize>) {
    let gz = include_bytes!("../../../core/data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("bundled data is valid gzip");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let cells: Vec<f32> = line
            .split(',')
            .map(|c| c.trim().parse().expect("numeric cell"))
            .collect();
        xs.extend(cells[..64].iter().map(|v| v / 16.0));
        ys.push(cells[64] as usize);
    }
    (xs, ys)
}
