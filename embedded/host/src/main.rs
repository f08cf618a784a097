//! Trains a 64-32-10 MLP on the digits of the firmware's training split, **with the classes 8
//! and 9 left out**, and writes its weights as a mote blob in f16 (what `mote export --format
//! blob --dtype f16` writes): `../data/digits-0to7.f16.blob`, which `finetune` includes with
//! `include_bytes!`. The device then freezes the backbone (the first layer) and trains only the
//! head on all ten classes, two of which this network never saw.
//!
//! Run from `embedded/host/` (the firmware's `.cargo/config.toml` sets a device target, so
//! name the host's): `cargo run --release --target "$(rustc -vV | sed -n 's/^host: //p')"`.

use mote::blob::{self, Dtype};
use mote::{Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};

include!("../../digits_data.rs");

/// Classes the host network is trained on: 0..SEEN.
const SEEN: usize = 8;

fn main() {
    let gz = include_bytes!("../../../core/data/digits.csv.gz");
    let records = digit_records(gz);
    let (train, test) = records.split_at(TRAIN);
    let train: Vec<&[u8; 65]> = train.iter().filter(|r| (r[64] as usize) < SEEN).collect();
    let pixels = |r: &[u8; 65]| {
        r[..64]
            .iter()
            .map(|&p| p as f32 / 16.0)
            .collect::<Vec<f32>>()
    };

    let mut mem = vec![0f32; 64 * 1024];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let mut rng = Rng::new(2024);
    let model = (
        Linear::new(&mut tape, 64, 32, &mut rng).unwrap(),
        Relu,
        Linear::new(&mut tape, 32, 10, &mut rng).unwrap(),
    );
    let mut opt = Adam::new(
        &mut tape,
        AdamConfig {
            lr: 3e-3,
            ..AdamConfig::default()
        },
    )
    .unwrap();
    let start = tape.mark();
    let mut order: Vec<usize> = (0..train.len()).collect();
    const B: usize = 16;
    for _epoch in 0..30 {
        rng.shuffle(&mut order);
        for batch in order.chunks(B) {
            let xs: Vec<f32> = batch.iter().flat_map(|&i| pixels(train[i])).collect();
            let ys: Vec<usize> = batch.iter().map(|&i| train[i][64] as usize).collect();
            tape.rewind(start).unwrap();
            let x = tape.input(&[batch.len(), 64], &xs).unwrap();
            let y = tape.labels(&ys).unwrap();
            let logits = model.forward(&mut tape, x).unwrap();
            let loss = tape.cross_entropy(logits, y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
        }
    }
    // Held-out accuracy, on the classes it saw and on all ten.
    let (mut seen_ok, mut seen_n, mut all_ok) = (0, 0, 0);
    for r in test {
        tape.rewind(start).unwrap();
        let x = tape.input(&[1, 64], &pixels(r)).unwrap();
        let logits = tape.no_grad(|t| model.forward(t, x)).unwrap();
        let z = tape.data(logits).unwrap();
        let pred = (0..10).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
        let label = r[64] as usize;
        all_ok += (pred == label) as usize;
        if label < SEEN {
            seen_n += 1;
            seen_ok += (pred == label) as usize;
        }
    }
    println!(
        "host: held-out accuracy {:.1}% on classes 0-{} ({seen_ok}/{seen_n}), {:.1}% on all ten ({all_ok}/{})",
        100.0 * seen_ok as f64 / seen_n as f64,
        SEEN - 1,
        100.0 * all_ok as f64 / test.len() as f64,
        test.len()
    );
    let mut out = vec![0u8; blob::size(&tape, Dtype::F16)];
    let n = blob::save(&tape, Dtype::F16, &mut out).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits-0to7.f16.blob");
    std::fs::write(path, &out[..n]).unwrap();
    println!("host: wrote {n} bytes to embedded/data/digits-0to7.f16.blob");
}

/// The firmware's strided copy (`embedded/src/copy.rs`, plain Rust), compiled here so that it is
/// checked against the core's reference copy on the host.
#[cfg(test)]
#[path = "../../src/copy.rs"]
mod copy;

/// The firmware's max pooling (`embedded/src/pool.rs`), checked against the core's pooling.
#[cfg(test)]
#[path = "../../src/pool.rs"]
mod pool;

/// The firmware's direct convolution (`embedded/src/conv.rs`), checked against the core's.
#[cfg(test)]
#[path = "../../src/conv.rs"]
mod conv;

#[cfg(test)]
mod hooked;

#[cfg(test)]
mod tests {
    use mote::ops::movement::{copy, Strided};
    use mote::{Rng, Shape};

    /// Random index spaces of rank 1-4 (dimensions 1-4), strides 0-6 (0 repeats, in the
    /// destination overwrites or sums), both modes: the firmware's copy gives the reference's
    /// results bit for bit, -0.0 included.
    #[test]
    fn firmware_copy_matches_the_reference() {
        let mut rng = Rng::new(11);
        let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
        for case in 0..20_000 {
            let rank = 1 + draw(4);
            let dims: Vec<usize> = (0..rank).map(|_| 1 + draw(4)).collect();
            let space = Shape::new(&dims).unwrap();
            let strides = |contiguous: bool, draw: &mut dyn FnMut(usize) -> usize| {
                let mut s = [0usize; 4];
                if contiguous {
                    s[..rank].copy_from_slice(&space.strides()[..rank]);
                } else {
                    for v in s.iter_mut().take(rank) {
                        *v = draw(7);
                    }
                }
                s
            };
            let (src_offset, src_contiguous) = (draw(8), draw(3) == 0);
            let src = Strided {
                offset: src_offset,
                strides: strides(src_contiguous, &mut draw),
            };
            let (dst_offset, dst_contiguous) = (2048 + draw(8), draw(2) == 0);
            let dst = Strided {
                offset: dst_offset,
                strides: strides(dst_contiguous, &mut draw),
            };
            let accumulate = draw(2) == 0;
            let mut buf: Vec<f32> = (0..4096)
                .map(|i| {
                    if i % 13 == 0 {
                        -0.0
                    } else {
                        (i as f32 * 0.37).sin()
                    }
                })
                .collect();
            let mut want = buf.clone();
            super::copy::copy_any(&mut buf, &space, src, dst, accumulate).unwrap();
            let (lo, hi) = want.split_at_mut(2048);
            copy(
                &space,
                &lo[src.offset..],
                src.strides,
                &mut hi[dst.offset - 2048..],
                dst.strides,
                accumulate,
            );
            for (i, (a, b)) in buf.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "case {case}: {dims:?} {src:?} {dst:?} accumulate {accumulate}: element {i}"
                );
            }
        }
    }

    /// Random poolings (1-5 planes, images 1-9 a side, windows 1-3, strides from the window up
    /// to 4), values with ties, -inf, `f32::MIN` and NaN: the firmware's max pooling gives the
    /// core's output bit for bit and its input gradient (the same values: a zero may differ in
    /// sign, where the core adds +0.0 for every tap); with padding, overlapping windows, and
    /// for average pooling, it declines.
    #[test]
    fn firmware_max_pool_matches_the_core() {
        use mote::ops::conv::{PoolCall, PoolPass};
        use mote::{Cpu, PoolConfig, Tape};
        let mut rng = Rng::new(5);
        let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
        let mut ran = 0;
        for case in 0..4000 {
            let planes = 1 + draw(5);
            let (n, c) = if planes % 2 == 0 {
                (2, planes / 2)
            } else {
                (1, planes)
            };
            let size = [1 + draw(9), 1 + draw(9)];
            let kernel = [1 + draw(3), 1 + draw(3)];
            let overlap = draw(8) == 0;
            let stride = [0, 1].map(|d| {
                if overlap && kernel[d] > 1 {
                    1 + draw(kernel[d] - 1)
                } else {
                    kernel[d] + draw(2)
                }
            });
            let padding = if draw(4) == 0 {
                [0, 1].map(|d| draw(kernel[d] / 2 + 1))
            } else {
                [0, 0]
            };
            if (0..2).any(|d| size[d] + 2 * padding[d] < kernel[d]) {
                continue;
            }
            let out = [0, 1].map(|d| (size[d] + 2 * padding[d] - kernel[d]) / stride[d] + 1);
            let xl = planes * size[0] * size[1];
            let yl = planes * out[0] * out[1];
            // NaNs with distinct payloads: which one a window keeps is seen in its bits.
            let special = [
                f32::NEG_INFINITY,
                f32::MIN,
                f32::from_bits(0x7fc0_0001),
                f32::from_bits(0xffc0_0002),
                f32::from_bits(0x7fc0_0004),
                -0.0,
            ];
            let xs: Vec<f32> = (0..xl)
                .map(|_| match draw(10) {
                    0 => special[draw(6)],
                    _ => draw(5) as f32 - 2.0,
                })
                .collect();
            let dys: Vec<f32> = (0..yl).map(|_| draw(7) as f32 * 0.25 - 0.5).collect();

            // The core: x a parameter, loss = sum(y * dy).
            let mut mem = vec![0f32; 1 << 14];
            let mut t = Tape::<Cpu<f32>, 16>::new(&mut mem);
            let x = t.param(&[n, c, size[0], size[1]], &xs).unwrap();
            let cfg = PoolConfig {
                kernel,
                stride,
                padding,
                ceil_mode: false,
            };
            let y = t.max_pool2d(x, cfg).unwrap();
            let g = t.input(&[n, c, out[0], out[1]], &dys).unwrap();
            let p = t.mul(y, g).unwrap();
            let loss = t.sum(p).unwrap();
            t.backward(loss).unwrap();
            let want_y = t.data(y).unwrap().to_vec();
            let want_dx = t.grad_data(x).unwrap().unwrap().to_vec();

            // The firmware's, on an arena [x | y | dy | dx].
            // `dx` starts non-zero: the backward must add to it.
            let pre: Vec<f32> = (0..xl).map(|_| draw(5) as f32 * 0.25 - 0.5).collect();
            let mut buf = vec![0f32; 2 * xl + 2 * yl];
            buf[..xl].copy_from_slice(&xs);
            buf[xl + yl..xl + 2 * yl].copy_from_slice(&dys);
            buf[xl + 2 * yl..].copy_from_slice(&pre);
            let call = |pass| PoolCall {
                pass,
                max: true,
                planes,
                size,
                kernel,
                stride,
                padding,
                out,
            };
            let fwd = call(PoolPass::Forward { x: 0, y: xl });
            let done = super::pool::max_pool(&mut buf, &fwd).unwrap();
            let overlapping = (0..2).any(|d| stride[d] < kernel[d]);
            assert_eq!(
                done,
                !overlapping && padding == [0, 0],
                "case {case}: {fwd:?}"
            );
            assert!(!super::pool::max_pool(&mut buf, &PoolCall { max: false, ..fwd }).unwrap());
            if !done {
                continue;
            }
            ran += 1;
            let bwd = call(PoolPass::Backward {
                x: 0,
                y: xl,
                dy: xl + yl,
                dx: xl + 2 * yl,
            });
            assert!(super::pool::max_pool(&mut buf, &bwd).unwrap());
            for (i, (a, b)) in buf[xl..xl + yl].iter().zip(&want_y).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "case {case}: {fwd:?}: y[{i}]");
            }
            let want_dx: Vec<f32> = want_dx.iter().zip(&pre).map(|(g, p)| p + g).collect();
            for (i, (a, b)) in buf[xl + 2 * yl..].iter().zip(&want_dx).enumerate() {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "case {case}: {bwd:?}: dx[{i}] {a} vs {b}"
                );
            }
        }
        assert!(ran > 1500, "{ran} cases ran");
    }

    /// Bad calls are errors, not panics: an output size that does not follow, a tensor past
    /// the arena, a window past the input.
    #[test]
    fn firmware_max_pool_refuses_bad_calls() {
        use mote::ops::conv::{PoolCall, PoolPass};
        let mut buf = vec![0f32; 64];
        let ok = PoolCall {
            pass: PoolPass::Forward { x: 0, y: 36 },
            max: true,
            planes: 1,
            size: [6, 6],
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            out: [3, 3],
        };
        assert!(super::pool::max_pool(&mut buf, &ok).unwrap());
        // More taps than its offset table holds: left to the core.
        let wide = PoolCall {
            kernel: [5, 4],
            stride: [5, 4],
            size: [5, 4],
            out: [1, 1],
            ..ok
        };
        assert!(!super::pool::max_pool(&mut buf, &wide).unwrap());
        let bad = [
            PoolCall { out: [4, 3], ..ok },
            PoolCall {
                pass: PoolPass::Forward { x: 0, y: 60 },
                ..ok
            },
            PoolCall {
                pass: PoolPass::Forward { x: 30, y: 36 },
                ..ok
            },
            PoolCall {
                planes: usize::MAX,
                ..ok
            },
            PoolCall { planes: 0, ..ok },
        ];
        for b in bad {
            assert!(super::pool::max_pool(&mut buf, &b).is_err(), "{b:?}");
        }
    }

    /// Random convolutions (1-3 images, 1-3 groups of 1-3 input and 1-8 output channels,
    /// images 1-9 a side, windows 1-4, strides 1-3, dilations 1-2; a third of them with the
    /// 3-tap, stride-1 window row the firmware compiles apart): the firmware's three passes
    /// give the core's output and gradients, added to what the gradients held. Values are
    /// quarters, so every sum is exact in any order; some cases hold NaN and infinities, where
    /// the same positions must be NaN. With padding the firmware declines.
    #[test]
    fn firmware_conv_matches_the_core() {
        use mote::ops::conv::{ConvCall, ConvPass};
        use mote::{ConvConfig, Cpu, Tape};
        let mut rng = Rng::new(17);
        let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
        let (mut ran, mut fixed) = (0, 0);
        for case in 0..8_000 {
            let (n, groups, cg, og) = (1 + draw(3), 1 + draw(3), 1 + draw(3), 1 + draw(8));
            let (c, o) = (groups * cg, groups * og);
            let size = [1 + draw(9), 1 + draw(9)];
            let row3 = draw(3) == 0;
            let kernel = [1 + draw(4), if row3 { 3 } else { 1 + draw(4) }];
            let stride = [1 + draw(3), if row3 { 1 } else { 1 + draw(3) }];
            let dilation = [1 + draw(2), if row3 { 1 } else { 1 + draw(2) }];
            let padding = if draw(5) == 0 {
                [draw(2), 1 + draw(2)]
            } else {
                [0, 0]
            };
            let span = |d: usize| dilation[d] * (kernel[d] - 1) + 1;
            if (0..2).any(|d| size[d] + 2 * padding[d] < span(d)) {
                continue;
            }
            let out = [0, 1].map(|d| (size[d] + 2 * padding[d] - span(d)) / stride[d] + 1);
            let (xl, wl) = (n * c * size[0] * size[1], o * cg * kernel[0] * kernel[1]);
            let yl = n * o * out[0] * out[1];
            let special = draw(4) == 0;
            let value = |draw: &mut dyn FnMut(usize) -> usize| {
                if special && draw(12) == 0 {
                    [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][draw(3)]
                } else {
                    draw(17) as f32 * 0.25 - 2.0
                }
            };
            let xs: Vec<f32> = (0..xl).map(|_| value(&mut draw)).collect();
            let ws: Vec<f32> = (0..wl).map(|_| value(&mut draw)).collect();
            let dys: Vec<f32> = (0..yl).map(|_| draw(9) as f32 * 0.25 - 1.0).collect();
            let pre_w: Vec<f32> = (0..wl).map(|_| draw(5) as f32 * 0.5 - 1.0).collect();
            let pre_x: Vec<f32> = (0..xl).map(|_| draw(5) as f32 * 0.5 - 1.0).collect();

            // The core: x and w parameters, loss = sum(y * dy).
            let mut mem = vec![0f32; 1 << 16];
            let mut t = Tape::<Cpu<f32>, 16>::new(&mut mem);
            let x = t.param(&[n, c, size[0], size[1]], &xs).unwrap();
            let w = t.param(&[o, cg, kernel[0], kernel[1]], &ws).unwrap();
            let cfg = ConvConfig {
                stride,
                padding,
                dilation,
            };
            let y = t.conv2d(x, w, None, cfg).unwrap();
            let g = t.input(&[n, o, out[0], out[1]], &dys).unwrap();
            let p = t.mul(y, g).unwrap();
            let loss = t.sum(p).unwrap();
            t.backward(loss).unwrap();
            let want_y = t.data(y).unwrap().to_vec();
            let add = |pre: &[f32], g: &[f32]| -> Vec<f32> {
                pre.iter().zip(g).map(|(p, g)| p + g).collect()
            };
            let want_dw = add(&pre_w, t.grad_data(w).unwrap().unwrap());
            let want_dx = add(&pre_x, t.grad_data(x).unwrap().unwrap());

            // The firmware's, on an arena [x | w | y | dy | dw | dx].
            let (xo, wo, yo) = (0, xl, xl + wl);
            let (dyo, dwo, dxo) = (yo + yl, yo + 2 * yl, yo + 2 * yl + wl);
            // `y` holds garbage: the forward must overwrite it.
            let mut buf = vec![1234.5f32; dxo + xl];
            buf[..xl].copy_from_slice(&xs);
            buf[wo..yo].copy_from_slice(&ws);
            buf[dyo..dwo].copy_from_slice(&dys);
            buf[dwo..dxo].copy_from_slice(&pre_w);
            buf[dxo..].copy_from_slice(&pre_x);
            let call = |pass| ConvCall {
                pass,
                images: n,
                channels: c,
                size,
                out_channels: o,
                groups,
                kernel,
                stride,
                padding,
                dilation,
                out,
            };
            let passes = [
                ConvPass::Forward {
                    x: xo,
                    w: wo,
                    y: yo,
                },
                ConvPass::WeightGrad {
                    x: xo,
                    dy: dyo,
                    dw: dwo,
                },
                ConvPass::InputGrad {
                    w: wo,
                    dy: dyo,
                    dx: dxo,
                },
            ];
            for pass in passes {
                let done = super::conv::conv(&mut buf, &call(pass)).unwrap();
                assert_eq!(done, padding == [0, 0], "case {case}: {:?}", call(pass));
            }
            if padding != [0, 0] {
                continue;
            }
            ran += 1;
            fixed += usize::from(row3);
            let same = |what: &str, got: &[f32], want: &[f32]| {
                for (i, (a, b)) in got.iter().zip(want).enumerate() {
                    assert!(
                        a == b || (a.is_nan() && b.is_nan()),
                        "case {case}: {:?}: {what}[{i}] {a} vs {b}",
                        call(passes[0])
                    );
                }
            };
            same("y", &buf[yo..dyo], &want_y);
            same("dw", &buf[dwo..dxo], &want_dw);
            same("dx", &buf[dxo..], &want_dx);
        }
        assert!(
            ran > 3000 && fixed > 1000,
            "{ran} cases ran, {fixed} with the fixed row"
        );
    }

    /// With values whose sums round (uniform in [-1, 1]), the firmware's passes give the bits of
    /// plain loops in the orders its module docs state (those of `Fast`'s im2col path): a
    /// forward output sums its taps in weight order from zero; the weight's gradient adds each
    /// image's sum over positions (row-major, from zero); the input's gradient adds, tap by tap,
    /// each position's sum over output channels (from zero). Up to 8 output channels a group,
    /// so that every block of the weight's gradient and its remainders run.
    #[test]
    fn firmware_conv_sums_in_the_stated_order() {
        use mote::ops::conv::{ConvCall, ConvPass};
        let mut rng = Rng::new(23);
        let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
        let mut ran = 0;
        for case in 0..3000 {
            let (n, groups, cg, og) = (1 + draw(3), 1 + draw(2), 1 + draw(3), 1 + draw(8));
            let (c, o) = (groups * cg, groups * og);
            let size = [1 + draw(9), 1 + draw(9)];
            let row3 = draw(2) == 0;
            let kernel = [1 + draw(3), if row3 { 3 } else { 1 + draw(4) }];
            let stride = [1 + draw(2), if row3 { 1 } else { 1 + draw(3) }];
            let dilation = [1 + draw(2), if row3 { 1 } else { 1 + draw(2) }];
            let span = |d: usize| dilation[d] * (kernel[d] - 1) + 1;
            if (0..2).any(|d| size[d] < span(d)) {
                continue;
            }
            ran += 1;
            let out = [0, 1].map(|d| (size[d] - span(d)) / stride[d] + 1);
            let [h, w] = size;
            let [kh, kw] = kernel;
            let [oh, ow] = out;
            let (plane, oplane, per_o) = (h * w, oh * ow, cg * kh * kw);
            let (xl, wl, yl) = (n * c * plane, o * per_o, n * o * oplane);
            let mut uniform = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| draw(1 << 20) as f32 / (1 << 19) as f32 - 1.0)
                    .collect()
            };
            let (xs, ws, dys) = (uniform(xl), uniform(wl), uniform(yl));
            let (pre_w, pre_x) = (uniform(wl), uniform(xl));
            // Index of x[n, c, i, j] read by tap (ki, kj) of the window at (p, q).
            let xi = |ni: usize, ci: usize, p: usize, q: usize, ki: usize, kj: usize| {
                (ni * c + ci) * plane
                    + (p * stride[0] + ki * dilation[0]) * w
                    + q * stride[1]
                    + kj * dilation[1]
            };
            let mut want_y = vec![0f32; yl];
            let mut want_dw = pre_w.clone();
            let mut want_dx = pre_x.clone();
            for ni in 0..n {
                for g in 0..groups {
                    for oi in g * og..(g + 1) * og {
                        for (p, q) in (0..oh).flat_map(|p| (0..ow).map(move |q| (p, q))) {
                            let mut s = 0f32;
                            for t in 0..per_o {
                                let (ci, ki, kj) = (g * cg + t / (kh * kw), t / kw % kh, t % kw);
                                s += ws[oi * per_o + t] * xs[xi(ni, ci, p, q, ki, kj)];
                            }
                            want_y[(ni * o + oi) * oplane + p * ow + q] = s;
                        }
                        for t in 0..per_o {
                            let (ci, ki, kj) = (g * cg + t / (kh * kw), t / kw % kh, t % kw);
                            let mut s = 0f32;
                            for (p, q) in (0..oh).flat_map(|p| (0..ow).map(move |q| (p, q))) {
                                let gy = dys[(ni * o + oi) * oplane + p * ow + q];
                                s += gy * xs[xi(ni, ci, p, q, ki, kj)];
                            }
                            want_dw[oi * per_o + t] += s;
                        }
                    }
                    for t in 0..per_o {
                        let (ci, ki, kj) = (g * cg + t / (kh * kw), t / kw % kh, t % kw);
                        for (p, q) in (0..oh).flat_map(|p| (0..ow).map(move |q| (p, q))) {
                            let mut s = 0f32;
                            for oi in g * og..(g + 1) * og {
                                s += ws[oi * per_o + t] * dys[(ni * o + oi) * oplane + p * ow + q];
                            }
                            want_dx[xi(ni, ci, p, q, ki, kj)] += s;
                        }
                    }
                }
            }
            // The arena [x | w | y | dy | dw | dx], `y` holding garbage.
            let (wo, yo) = (xl, xl + wl);
            let (dyo, dwo, dxo) = (yo + yl, yo + 2 * yl, yo + 2 * yl + wl);
            let mut buf = vec![f32::NAN; dxo + xl];
            buf[..xl].copy_from_slice(&xs);
            buf[wo..yo].copy_from_slice(&ws);
            buf[dyo..dwo].copy_from_slice(&dys);
            buf[dwo..dxo].copy_from_slice(&pre_w);
            buf[dxo..].copy_from_slice(&pre_x);
            let passes = [
                ConvPass::Forward { x: 0, w: wo, y: yo },
                ConvPass::WeightGrad {
                    x: 0,
                    dy: dyo,
                    dw: dwo,
                },
                ConvPass::InputGrad {
                    w: wo,
                    dy: dyo,
                    dx: dxo,
                },
            ];
            let call = ConvCall {
                pass: passes[0],
                images: n,
                channels: c,
                size,
                out_channels: o,
                groups,
                kernel,
                stride,
                padding: [0, 0],
                dilation,
                out,
            };
            for pass in passes {
                assert!(super::conv::conv(&mut buf, &ConvCall { pass, ..call }).unwrap());
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&buf[yo..dyo]),
                bits(&want_y),
                "case {case}: {call:?}: y"
            );
            assert_eq!(
                bits(&buf[dwo..dxo]),
                bits(&want_dw),
                "case {case}: {call:?}: dw"
            );
            assert_eq!(
                bits(&buf[dxo..]),
                bits(&want_dx),
                "case {case}: {call:?}: dx"
            );
        }
        assert!(ran > 1500, "{ran} cases ran");
    }

    /// Bad calls are errors, not panics, and write nothing: an output size that does not
    /// follow, channels that do not divide into the groups, no images, a tensor past the
    /// arena, an output over an input.
    #[test]
    fn firmware_conv_refuses_bad_calls() {
        use mote::ops::conv::{ConvCall, ConvPass};
        let mut buf = vec![0.5f32; 256];
        let ok = ConvCall {
            pass: ConvPass::Forward {
                x: 0,
                w: 64,
                y: 100,
            },
            images: 1,
            channels: 1,
            size: [8, 8],
            out_channels: 2,
            groups: 1,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            out: [6, 6],
        };
        assert!(super::conv::conv(&mut buf, &ok).unwrap());
        // A one-row window with a huge dilation is a valid call (its rows are never stepped).
        let tall = ConvCall {
            kernel: [1, 2],
            dilation: [usize::MAX / 2, 1],
            size: [8, 8],
            out: [8, 7],
            ..ok
        };
        assert!(super::conv::conv(&mut buf, &tall).unwrap());
        let before = buf.clone();
        let bad = [
            ConvCall { out: [6, 5], ..ok },
            ConvCall {
                dilation: [3, 1],
                ..ok
            },
            ConvCall {
                groups: 2,
                out_channels: 3,
                ..ok
            },
            ConvCall { images: 0, ..ok },
            ConvCall {
                images: usize::MAX,
                ..ok
            },
            ConvCall {
                pass: ConvPass::Forward {
                    x: 0,
                    w: 64,
                    y: 200,
                },
                ..ok
            },
            ConvCall {
                pass: ConvPass::Forward { x: 0, w: 64, y: 40 },
                ..ok
            },
            ConvCall {
                pass: ConvPass::WeightGrad {
                    x: 0,
                    dy: 100,
                    dw: 60,
                },
                ..ok
            },
            ConvCall {
                pass: ConvPass::InputGrad {
                    w: 64,
                    dy: 100,
                    dx: usize::MAX - 8,
                },
                ..ok
            },
        ];
        for b in bad {
            assert!(super::conv::conv(&mut buf, &b).is_err(), "{b:?}");
            assert_eq!(buf, before, "{b:?} wrote");
        }
    }
}
