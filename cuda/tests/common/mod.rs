//! Shared by the CUDA tests: the GPU (or one skip line), and comparisons with the reference.
#![allow(dead_code)]

use std::io::Read;

use mote_cuda::{Cuda, CudaError};

/// A CUDA backend with an arena of `floats`, or `None` after printing one line saying why the
/// test is skipped. With `MOTE_REQUIRE_GPU=1` a missing GPU fails the test instead. Without a
/// CUDA driver the backend runs on the emulated device (`mote_cuda::emulator`, built once per
/// test process) unless `MOTE_EMULATE=0`.
pub fn gpu(test: &str, floats: usize) -> Option<Cuda> {
    gpu_with(test, floats, mote_cuda::Options::default())
}

/// [`gpu`] with explicit [`mote_cuda::Options`].
pub fn gpu_with(test: &str, floats: usize, options: mote_cuda::Options) -> Option<Cuda> {
    emulate();
    match Cuda::with_options(floats, options) {
        Ok(c) => Some(c),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice))
            if std::env::var_os("MOTE_REQUIRE_GPU").is_none_or(|v| v != "1")
                && !require_emulator() =>
        {
            eprintln!("skipped {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: creating the CUDA backend failed: {e}"),
    }
}

/// Without a CUDA driver (and unless `MOTE_EMULATE=0`, or `MOTE_REQUIRE_GPU=1`: a GPU run
/// must not pass on the emulation), builds and loads the emulated device once per process;
/// prints one line saying so, or why not.
pub fn emulate() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let is = |var: &str, v: &str| std::env::var_os(var).is_some_and(|x| x == v);
        if mote_cuda::probe::driver() || is("MOTE_EMULATE", "0") || is("MOTE_REQUIRE_GPU", "1") {
            return;
        }
        let t = std::time::Instant::now();
        let parent = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        match mote_cuda::emulator::build_cached_and_load(parent) {
            Ok(dir) => eprintln!(
                "no CUDA driver: running on the emulated device ({}, {:.1} s)",
                dir.display(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) if require_emulator() => {
                panic!("MOTE_REQUIRE_EMULATOR=1 and the emulated device failed: {e}")
            }
            Err(e) => eprintln!("no CUDA driver and no emulated device: {e}"),
        }
    });
}

/// `MOTE_REQUIRE_EMULATOR=1` (CI's setting): a test that would skip for want of a GPU fails
/// unless the emulated device runs it, so that a broken emulator build cannot pass as skips.
pub fn require_emulator() -> bool {
    std::env::var_os("MOTE_REQUIRE_EMULATOR").is_some_and(|v| v == "1")
}

/// Unary ops' inputs at fixed points: kinks, the flat parts of the masking ops, softplus's
/// threshold, hard swish's zero slope (-1.5), the tails (ELU near 0, exact GELU far below),
/// signed zero, NaN and the infinities.
pub const PROBE_X: [f32; 28] = [
    -25.0,
    -7.5,
    -4.0,
    -3.0,
    -2.9,
    -0.5,
    0.0,
    0.3,
    0.8,
    2.9,
    3.0,
    4.0,
    5.9,
    6.0,
    6.5,
    19.5,
    20.0,
    20.5,
    25.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -0.0,
    1e-7,
    -1.5,
    -1e-5,
    -6.0,
    -10.0,
];
/// Upstream gradients for [`PROBE_X`], NaN and infinite ones among them (where a mask drops
/// them and where it does not).
pub const PROBE_DY: [f32; 28] = [
    0.5,
    f32::INFINITY,
    -1.25,
    f32::NAN,
    0.75,
    -0.5,
    f32::NAN,
    1.0,
    -2.0,
    0.25,
    f32::NEG_INFINITY,
    1.5,
    -0.75,
    f32::NAN,
    2.0,
    -1.0,
    0.5,
    -0.25,
    1.25,
    0.5,
    f32::NAN,
    -1.5,
    0.125,
    1.0,
    f32::NAN,
    1.0,
    -1.0,
    0.5,
];

/// Binary ops' operands at fixed points: ties, NaN on either side, infinities, signed zeros
/// (where maximum and minimum select, split and propagate), and upstream gradients with NaN
/// where an operand is not selected.
pub const PROBE_A: [f32; 8] = [1.0, 3.0, 2.0, f32::NAN, 0.0, f32::NEG_INFINITY, 5.0, -0.0];
/// See [`PROBE_A`].
pub const PROBE_B: [f32; 8] = [2.0, 1.0, 2.0, 0.0, f32::NAN, 1.0, f32::INFINITY, 0.0];
/// See [`PROBE_A`].
pub const PROBE_G: [f32; 8] = [f32::NAN, f32::NAN, 1.0, 1.0, 1.0, 0.5, f32::NAN, 2.0];

/// Reductions' inputs at fixed points (16 values, read as `[2, 4, 2]` or `[4, 4]`): NaN, ties,
/// infinities, signed zeros (what max and min propagate, and which position gets the gradient).
pub const PROBE_R: [f32; 16] = [
    1.0,
    f32::NAN,
    3.0,
    3.0,
    -1.0,
    2.0,
    3.0,
    0.0,
    5.0,
    f32::INFINITY,
    5.0,
    -0.0,
    f32::NEG_INFINITY,
    0.0,
    5.0,
    f32::NEG_INFINITY,
];

/// Asserts `|got - want| <= atol + rtol |want|` elementwise (NaN equal to NaN, equal values
/// equal, infinities included).
pub fn close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if (g.is_nan() && w.is_nan()) || g == w {
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
