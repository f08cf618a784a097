//! The CUDA backend's own convolution passes (`src/ops/conv.rs`: im2col, products per group,
//! col2im) against the reference backend: the output, the input's and the weight's gradients
//! of one conv2d over geometries with padding, stride, dilation, groups and a rectangular
//! window, with the convolution scratch large enough for the whole batch, small enough for
//! chunks of one or two images, and too small for one image (the core's strided copies then
//! run instead). Each run is also checked to have taken the path it should (`im2col` launches,
//! or none).
//!
//! Tolerances (f32): `1e-5 + 1e-4 |x|` relative to each tensor's largest value (the products
//! sum in another order).
//! Without a CUDA driver: on the emulated device (one line says so), or one skip line with
//! `MOTE_EMULATE=0`.

mod common;

use mote::{Backend, ConvConfig, Cpu, Rng, Tape, Var};
use mote_cuda::{Cuda, Options};

const FLOATS: usize = 1 << 20;

/// `[N, C, H, W]`, `O`, groups, window, stride, padding, dilation.
type Case = (
    [usize; 4],
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    [usize; 2],
);

const CASES: [Case; 5] = [
    ([3, 4, 7, 6], 6, 1, [3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 6, 9, 8], 4, 2, [3, 2], [2, 1], [1, 0], [1, 2]),
    ([4, 4, 8, 8], 4, 4, [3, 3], [1, 1], [2, 2], [2, 2]),
    ([2, 3, 5, 5], 5, 1, [1, 1], [2, 2], [0, 0], [1, 1]),
    ([5, 2, 6, 7], 3, 1, [5, 4], [3, 2], [2, 1], [1, 1]),
];

/// `(y, dx, dw, db)` of `sum(conv2d(x, w, b) * r)` for random `x`, `w`, `r`, plus `sum(x * x)
/// + sum(w * w)` when `again` (the gradients then hold something when the convolution's
/// backward adds to them; without, the convolution writes them first); with a bias `b` when
/// `again` (`db` empty without).
fn run<B: Backend<Elem = f32>>(tape: &mut Tape<B, 16>, case: &Case, again: bool) -> [Vec<f32>; 4] {
    let ([n, c, h, w], o, groups, k, stride, padding, dilation) = *case;
    let mut rng = Rng::new(5);
    let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_f32() - 0.5).collect() };
    let xs = draw(n * c * h * w);
    let ws = draw(o * (c / groups) * k[0] * k[1]);
    let x = tape.param(&[n, c, h, w], &xs).unwrap();
    let wt = tape.param(&[o, c / groups, k[0], k[1]], &ws).unwrap();
    let bias = again.then(|| {
        let bs = draw(o);
        tape.param(&[o], &bs).unwrap()
    });
    let cfg = ConvConfig {
        stride,
        padding,
        dilation,
    };
    let y = tape.conv2d(x, wt, bias, cfg).unwrap();
    let rs = draw(y.numel());
    let dims: Vec<usize> = y.shape().dims().iter().map(|&d| d as usize).collect();
    let r = tape.input(&dims, &rs).unwrap();
    let yr = tape.mul(y, r).unwrap();
    let loss = tape.sum(yr).unwrap();
    let loss = if again {
        let (xx, ww) = (tape.mul(x, x).unwrap(), tape.mul(wt, wt).unwrap());
        let (xx, ww) = (tape.sum(xx).unwrap(), tape.sum(ww).unwrap());
        let loss = tape.add(loss, xx).unwrap();
        tape.add(loss, ww).unwrap()
    } else {
        loss
    };
    tape.backward(loss).unwrap();
    let read = |v: Var, grad: bool| {
        let mut out = vec![0f32; v.numel()];
        if grad {
            tape.read_grad(v, &mut out).unwrap();
        } else {
            tape.read(v, &mut out).unwrap();
        }
        out
    };
    let db = bias.map_or(Vec::new(), |b| read(b, true));
    [read(y, false), read(x, true), read(wt, true), db]
}

fn near(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 + 1e-4 * scale,
            "{what}: element {i}: cuda {a} vs cpu {b} (scale {scale})"
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: lengths");
}

/// Floats of convolution scratch one image of `case` takes (its columns and its output
/// gradient), and the images.
fn per_image(case: &Case) -> (usize, usize) {
    let ([n, c, h, w], o, _, k, stride, padding, dilation) = *case;
    let out = |d: usize, size: usize| {
        (size + 2 * padding[d] - dilation[d] * (k[d] - 1) - 1) / stride[d] + 1
    };
    let p = out(0, h) * out(1, w);
    ((c * k[0] * k[1] + o) * p, n)
}

#[test]
fn conv_passes_match_the_reference() {
    for (i, case) in CASES.iter().enumerate() {
        let (per, n) = per_image(case);
        // Scratch for the whole batch, one image, two images, none.
        for (label, images) in [
            ("whole batch", n),
            ("one image", 1),
            ("two images", 2),
            ("none", 0),
        ] {
            for again in [false, true] {
                let test = format!(
                    "conv_passes_match_the_reference (case {i}, {label}, gradients written first: {})",
                    !again
                );
                let options = Options {
                    conv_workspace_bytes: 4 * per * images,
                    ..Options::default()
                };
                let Some(cuda) = common::gpu_with(&test, FLOATS, options) else {
                    return;
                };
                let mut gpu = Tape::<Cuda, 16>::with_backend(cuda);
                gpu.backend_mut().profile(true);
                let got = run(&mut gpu, case, again);
                let kernels = gpu.backend_mut().profile_take().unwrap();
                let mut arena = vec![0f32; FLOATS];
                let want = run(&mut Tape::<Cpu<f32>, 16>::new(&mut arena), case, again);
                for (name, (g, w)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
                    near(&format!("{test}: {name}"), g, w);
                }
                let count = |k: &str| kernels.iter().find(|e| e.0 == k).map_or(0, |e| e.1);
                // Forward and weight gradient: one im2col per chunk each; input gradient: one
                // col2im per chunk. Without scratch: the core's path.
                let chunks = if images == 0 {
                    0
                } else {
                    n.div_ceil(images.min(n))
                };
                assert_eq!(
                    (count("im2col"), count("col2im"), count("conv_dy_perm")),
                    (2 * chunks, chunks, chunks),
                    "{test}: {kernels:?}"
                );
                if label == "whole batch" && i == 0 && !again {
                    let launches: usize = kernels.iter().map(|k| k.1).sum();
                    let names: Vec<String> = kernels
                        .iter()
                        .map(|k| format!("{} x{}", k.0, k.1))
                        .collect();
                    println!("{test}: {launches} launches: {}", names.join(", "));
                }
            }
        }
    }
}

/// `[N, C, H, W]`, window, stride, padding.
/// Input, window, stride, padding, `ceil_mode`.
type PoolCase = ([usize; 4], [usize; 2], [usize; 2], [usize; 2], bool);

const POOLS: [PoolCase; 6] = [
    ([2, 3, 7, 6], [3, 3], [1, 1], [1, 1], false),
    ([1, 2, 8, 8], [2, 2], [2, 2], [0, 0], false),
    ([2, 2, 9, 7], [3, 2], [2, 3], [1, 1], false),
    ([1, 1, 5, 5], [5, 5], [1, 1], [2, 2], false),
    // `ceil_mode`: a last window overhangs, on both axes, without padding and with it.
    ([1, 2, 8, 8], [3, 3], [2, 2], [0, 0], true),
    ([2, 3, 7, 6], [2, 3], [2, 2], [1, 1], true),
];

/// `(y, dx)` of `sum(pool(x) * r) + sum(x * x)`, `x` of halves in `-2..=2` (ties in most
/// windows) with one NaN when `nan`.
fn pool_run<B: Backend<Elem = f32>>(
    tape: &mut Tape<B, 16>,
    case: &PoolCase,
    max: bool,
    nan: bool,
) -> [Vec<f32>; 2] {
    let ([n, c, h, w], kernel, stride, padding, ceil_mode) = *case;
    let mut rng = Rng::new(7);
    let mut xs: Vec<f32> = (0..n * c * h * w)
        .map(|_| (rng.below(9) as f32 - 4.0) * 0.5)
        .collect();
    if nan {
        xs[h * w / 2] = f32::NAN;
    }
    let x = tape.param(&[n, c, h, w], &xs).unwrap();
    let p = mote::PoolConfig {
        kernel,
        stride,
        padding,
        ceil_mode,
    };
    let y = if max {
        tape.max_pool2d(x, p).unwrap()
    } else {
        tape.avg_pool2d(x, p).unwrap()
    };
    let rs: Vec<f32> = (0..y.numel()).map(|_| rng.next_f32() - 0.5).collect();
    let dims: Vec<usize> = y.shape().dims().iter().map(|&d| d as usize).collect();
    let r = tape.input(&dims, &rs).unwrap();
    let yr = tape.mul(y, r).unwrap();
    let loss = tape.sum(yr).unwrap();
    let xx = tape.mul(x, x).unwrap();
    let xx = tape.sum(xx).unwrap();
    let loss = tape.add(loss, xx).unwrap();
    tape.backward(loss).unwrap();
    let mut yv = vec![0f32; y.numel()];
    tape.read(y, &mut yv).unwrap();
    let mut dx = vec![0f32; x.numel()];
    tape.read_grad(x, &mut dx).unwrap();
    [yv, dx]
}

#[test]
fn pool_passes_match_the_reference() {
    for (i, case) in POOLS.iter().enumerate() {
        for (max, nan) in [(true, false), (true, true), (false, false), (false, true)] {
            let test = format!("pool_passes_match_the_reference (case {i}, max {max}, NaN {nan})");
            let Some(cuda) = common::gpu(&test, FLOATS) else {
                return;
            };
            let mut gpu = Tape::<Cuda, 16>::with_backend(cuda);
            gpu.backend_mut().profile(true);
            let got = pool_run(&mut gpu, case, max, nan);
            let kernels = gpu.backend_mut().profile_take().unwrap();
            let mut arena = vec![0f32; FLOATS];
            let want = pool_run(&mut Tape::<Cpu<f32>, 16>::new(&mut arena), case, max, nan);
            for (name, (g, w)) in ["y", "dx"].iter().zip(got.iter().zip(&want)) {
                let nans = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
                assert_eq!(nans(g), nans(w), "{test}: {name}: NaN positions");
                let clean = |v: &[f32]| {
                    v.iter()
                        .map(|x| if x.is_nan() { 0.0 } else { *x })
                        .collect::<Vec<_>>()
                };
                near(&format!("{test}: {name}"), &clean(g), &clean(w));
            }
            // One launch a pass, no im2col copies (an average in `ceil_mode` also builds the
            // last window's divisor from fills and a concat).
            let count = |k: &str| kernels.iter().find(|e| e.0 == k).map_or(0, |e| e.1);
            assert_eq!(
                (count("pool_fwd"), count("pool_bwd")),
                (1, 1),
                "{test}: {kernels:?}"
            );
            if max || !case.4 {
                assert_eq!(count("copy_walk"), 0, "{test}: {kernels:?}");
            }
        }
    }
}
