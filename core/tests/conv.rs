//! Convolution and pooling: forward values against direct loops written independently of the
//! im2col implementation, and gradient checks (proptest draws images, channels, groups, stride,
//! padding and dilation; the tape's gradients are compared with central differences in f64).

use mote::backend::View;
use mote::gradcheck::{check, GradCheck};
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::conv::{ConvCall, ConvPass};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{ConvConfig, Cpu, PoolConfig, Result, Rng, Tape, Var};
use proptest::prelude::*;

const NODES: usize = 64;
type T<'m> = Tape<Cpu<'m, f64>, NODES>;

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// `n` values in [-1, 1] at least `2 / n` apart, shuffled: max pooling has a kink wherever two
/// values of a window tie, and central differences must not straddle one.
fn distinct(n: usize, seed: u64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| 2.0 * i as f64 / n as f64 - 1.0).collect();
    Rng::new(seed).shuffle(&mut v);
    v
}

fn assert_grads(
    inputs: &[(&[usize], &[f64])],
    f: impl for<'m> FnMut(&mut T<'m>, &[Var]) -> Result<Var>,
) -> std::result::Result<(), TestCaseError> {
    let mut mem = vec![0.0f64; 1 << 17];
    let report = check::<NODES>(&mut mem, inputs, GradCheck::default(), f)
        .map_err(|e| TestCaseError::fail(format!("op failed: {e}")))?;
    prop_assert!(report.passed(), "{report:?}");
    prop_assert!(report.checked > 0);
    Ok(())
}

/// The direct definition of a grouped, strided, padded, dilated cross-correlation.
#[allow(clippy::too_many_arguments)]
fn conv_direct(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    k: &[f64],
    [o, cg, kh, kw]: [usize; 4],
    bias: Option<&[f64]>,
    opt: ConvConfig,
) -> (Vec<f64>, [usize; 4]) {
    let out = |len: usize, k: usize, s: usize, p: usize, d: usize| {
        (len + 2 * p - d * (k - 1) - 1) / s + 1
    };
    let oh = out(h, kh, opt.stride[0], opt.padding[0], opt.dilation[0]);
    let ow = out(w, kw, opt.stride[1], opt.padding[1], opt.dilation[1]);
    let groups = c / cg;
    let og = o / groups;
    let mut y = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let gi = oc / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bias.map_or(0.0, |bv| bv[oc]);
                    for ci in 0..cg {
                        let ic = gi * cg + ci;
                        for u in 0..kh {
                            for v in 0..kw {
                                let ih = (i * opt.stride[0] + u * opt.dilation[0]) as isize
                                    - opt.padding[0] as isize;
                                let iw = (j * opt.stride[1] + v * opt.dilation[1]) as isize
                                    - opt.padding[1] as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ic) * h + ih as usize) * w + iw as usize];
                                s += xv * k[((oc * cg + ci) * kh + u) * kw + v];
                            }
                        }
                    }
                    y[((b * o + oc) * oh + i) * ow + j] = s;
                }
            }
        }
    }
    (y, [n, o, oh, ow])
}

/// PyTorch's `pooling_output_shape`: `(n + 2p - k + (s - 1 if ceil)) / s + 1`, less one in
/// `ceil_mode` where the last window would start at or past `n + p`.
fn pool_out(n: usize, k: usize, s: usize, p: usize, ceil: bool) -> usize {
    let o = (n + 2 * p - k + if ceil { s - 1 } else { 0 }) / s + 1;
    if ceil && (o - 1) * s >= n + p {
        o - 1
    } else {
        o
    }
}

/// Max or average pooling by direct loops, as PyTorch's CPU kernels compute them; `inside`:
/// an average divides by the taps inside the input (`count_include_pad=False`), else by the
/// window's taps inside the padded input (`(hend - hstart) (wend - wstart)`, `hend` at most
/// `H + PH`: the window's size but for a `ceil_mode` window that overhangs).
fn pool_direct(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    p: PoolConfig,
    max: bool,
    inside: bool,
) -> Vec<f64> {
    let [kh, kw] = p.kernel;
    let [ph, pw] = p.padding;
    let oh = pool_out(h, kh, p.stride[0], ph, p.ceil_mode);
    let ow = pool_out(w, kw, p.stride[1], pw, p.ceil_mode);
    let covered = |o: usize, k: usize, s: usize, pad: usize, len: usize| {
        (o * s + k).min(len + 2 * pad) - o * s
    };
    let mut y = Vec::new();
    for b in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut acc = if max { f64::MIN } else { 0.0 };
                let mut taps = 0;
                for u in 0..p.kernel[0] {
                    for v in 0..p.kernel[1] {
                        let ih = (i * p.stride[0] + u) as isize - p.padding[0] as isize;
                        let iw = (j * p.stride[1] + v) as isize - p.padding[1] as isize;
                        let xv = if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            if max {
                                f64::MIN
                            } else {
                                0.0
                            }
                        } else {
                            taps += 1;
                            x[(b * h + ih as usize) * w + iw as usize]
                        };
                        acc = if max { acc.max(xv) } else { acc + xv };
                    }
                }
                let window =
                    covered(i, kh, p.stride[0], ph, h) * covered(j, kw, p.stride[1], pw, w);
                y.push(if max {
                    acc
                } else if inside {
                    acc / taps as f64
                } else {
                    acc / window as f64
                });
            }
        }
    }
    y
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < 1e-12, "element {i}: {x} vs {y}");
    }
}

#[derive(Clone, Debug)]
struct Case {
    n: usize,
    groups: usize,
    cg: usize,
    og: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    opt: ConvConfig,
    bias: bool,
}

impl Case {
    fn x_dims(&self) -> [usize; 4] {
        [self.n, self.groups * self.cg, self.h, self.w]
    }
    fn w_dims(&self) -> [usize; 4] {
        [self.groups * self.og, self.cg, self.k[0], self.k[1]]
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=3, 1usize..=2, 1usize..=2),
        (1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        (
            0usize..=2,
            0usize..=2,
            1usize..=2,
            1usize..=2,
            any::<bool>(),
        ),
        (1usize..=3, 1usize..=3),
    )
        .prop_map(
            |((n, groups, cg, og), (kh, kw, sh, sw), (ph, pw, dh, dw, bias), (eh, ew))| {
                // The input is at least as large as the dilated window (minus padding).
                let h = (dh * (kh - 1) + 1).saturating_sub(2 * ph).max(1) + eh - 1;
                let w = (dw * (kw - 1) + 1).saturating_sub(2 * pw).max(1) + ew - 1;
                Case {
                    n,
                    groups,
                    cg,
                    og,
                    h,
                    w,
                    k: [kh, kw],
                    opt: ConvConfig {
                        stride: [sh, sw],
                        padding: [ph, pw],
                        dilation: [dh, dw],
                    },
                    bias,
                }
            },
        )
}

/// A pooling geometry and an image size it fits: windows 1 to 4 per axis (non-square), strides
/// 1 to 3 per axis, padding up to half the window per axis, the output size rounded down or
/// (`ceil_mode`) up.
fn pool() -> impl Strategy<Value = (PoolConfig, [usize; 2])> {
    (
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2, 0usize..=3, 0usize..=3),
        any::<bool>(),
    )
        .prop_map(|((kh, kw, sh, sw), (ph, pw, eh, ew), ceil_mode)| {
            let (ph, pw) = (ph.min(kh / 2), pw.min(kw / 2));
            // The image at least as large as the window less the padding.
            let h = (kh - 2 * ph).max(1) + eh;
            let w = (kw - 2 * pw).max(1) + ew;
            let p = PoolConfig {
                kernel: [kh, kw],
                stride: [sh, sw],
                padding: [ph, pw],
                ceil_mode,
            };
            (p, [h, w])
        })
}

/// PyTorch's `avg_pool1d([1, 2, 3], 3, 1, 1, count_include_pad=False)` is [1.5, 2, 2.5] (with
/// the padding counted: [1, 2, 5/3]); the layer gives the same.
#[test]
fn average_over_taps_inside_by_hand() {
    use mote::{AvgPool2dExcludePad, Module};
    let mut mem = vec![0.0f64; 1 << 10];
    let mut t = T::new(&mut mem);
    let x = t.input(&[1, 1, 3], &[1.0, 2.0, 3.0]).unwrap();
    let mut got = [0.0; 3];
    let y = t.avg_pool1d_exclude_pad(x, 3, 1, 1).unwrap();
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [1.5, 2.0, 2.5]);
    let y = t.avg_pool1d(x, 3, 1, 1).unwrap();
    t.read(y, &mut got).unwrap();
    close(&got, &[1.0, 2.0, 5.0 / 3.0]);
    let x = t.input(&[1, 1, 1, 3], &[1.0, 2.0, 3.0]).unwrap();
    let p = PoolConfig {
        kernel: [1, 3],
        stride: [1, 1],
        padding: [0, 1],
        ceil_mode: false,
    };
    let y = AvgPool2dExcludePad(p).forward(&mut t, x).unwrap();
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [1.5, 2.0, 2.5]);
}

/// PyTorch's `ceil_mode` by hand, over a row of 5 (1..=5) with window 2, stride 2: floor gives
/// 2 outputs, ceil 3, the last window over [5] alone: max 5; average 5 / 1 (its one tap in the
/// padded input), and so with `count_include_pad=False`. With padding 1 (window 3, stride 2):
/// floor 3 outputs, and ceil no more (a fourth would start in the right padding).
#[test]
fn ceil_mode_by_hand() {
    let mut mem = vec![0.0f64; 1 << 10];
    let mut t = T::new(&mut mem);
    let x = t.input(&[1, 1, 1, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let cfg = |k: usize, s: usize, p: usize, ceil_mode: bool| PoolConfig {
        kernel: [1, k],
        stride: [1, s],
        padding: [0, p],
        ceil_mode,
    };
    let mut got = vec![0.0; 3];
    let y = t.max_pool2d(x, cfg(2, 2, 0, true)).unwrap();
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [2.0, 4.0, 5.0]);
    let y = t.avg_pool2d(x, cfg(2, 2, 0, true)).unwrap();
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [1.5, 3.5, 5.0]);
    let y = t.avg_pool2d_exclude_pad(x, cfg(2, 2, 0, true)).unwrap();
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [1.5, 3.5, 5.0]);
    assert_eq!(
        t.avg_pool2d(x, cfg(2, 2, 0, false)).unwrap().shape().dims(),
        &[1, 1, 1, 2]
    );
    assert_eq!(
        t.avg_pool2d(x, cfg(3, 2, 1, true)).unwrap().shape().dims(),
        &[1, 1, 1, 3]
    );
    // Window 3, stride 2, padding 1 over 6 values: floor 3, ceil 4; the last window covers
    // [6, pad] of the padded input: 2 taps counted with the padding, 1 without.
    let x = t
        .input(&[1, 1, 1, 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap();
    let mut got = vec![0.0; 4];
    let y = t.avg_pool2d(x, cfg(3, 2, 1, true)).unwrap();
    t.read(y, &mut got).unwrap();
    close(&got, &[1.0, 3.0, 5.0, 3.0]);
    let y = t.avg_pool2d_exclude_pad(x, cfg(3, 2, 1, true)).unwrap();
    t.read(y, &mut got).unwrap();
    close(&got, &[1.5, 3.0, 5.0, 6.0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conv2d_forward_matches_direct_loops(c in case(), seed in any::<u64>()) {
        let (xd, wd) = (c.x_dims(), c.w_dims());
        let x = values(xd.iter().product(), seed);
        let k = values(wd.iter().product(), seed ^ 1);
        let b = values(wd[0], seed ^ 2);
        let (want, dims) = conv_direct(&x, xd, &k, wd, c.bias.then_some(&b[..]), c.opt);
        let mut mem = vec![0.0f64; 1 << 16];
        let mut t = T::new(&mut mem);
        let xv = t.input(&xd, &x).unwrap();
        let wv = t.param(&wd, &k).unwrap();
        let bv = t.param(&[wd[0]], &b).unwrap();
        let y = t.conv2d(xv, wv, c.bias.then_some(bv), c.opt).unwrap();
        let shape = y.shape();
        prop_assert_eq!(shape.dims(), &dims.map(|d| d as u32)[..]);
        let mut got = vec![0.0; y.numel()];
        t.read(y, &mut got).unwrap();
        close(&got, &want);
    }

    #[test]
    fn conv2d_gradients(c in case(), seed in any::<u64>()) {
        let (xd, wd) = (c.x_dims(), c.w_dims());
        let x = values(xd.iter().product(), seed);
        let k = values(wd.iter().product(), seed ^ 1);
        let b = values(wd[0], seed ^ 2);
        let opt = c.opt;
        if c.bias {
            assert_grads(&[(&xd, &x), (&wd, &k), (&[wd[0]], &b)], |t, v| t.conv2d(v[0], v[1], Some(v[2]), opt))?;
        } else {
            assert_grads(&[(&xd, &x), (&wd, &k)], |t, v| t.conv2d(v[0], v[1], None, opt))?;
        }
    }

    /// conv1d, grouped or not, with or without bias: forward against the direct loops (a
    /// signal as an image of height 1), then gradients.
    #[test]
    fn conv1d_forward_and_gradients(
        (n, groups, cg, og) in (1usize..=2, 1usize..=3, 1usize..=2, 1usize..=2),
        (l, k, s, p, d) in (5usize..=8, 1usize..=3, 1usize..=2, 0usize..=1, 1usize..=2),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (c, o) = (groups * cg, groups * og);
        let x = values(n * c * l, seed);
        let w = values(o * cg * k, seed ^ 1);
        let b = values(o, seed ^ 2);
        let opt = ConvConfig { stride: [1, s], padding: [0, p], dilation: [1, d] };
        let (want, dims) = conv_direct(&x, [n, c, 1, l], &w, [o, cg, 1, k], bias.then_some(&b[..]), opt);
        let mut mem = vec![0.0f64; 1 << 14];
        let mut t = T::new(&mut mem);
        let xv = t.input(&[n, c, l], &x).unwrap();
        let wv = t.param(&[o, cg, k], &w).unwrap();
        let bv = t.param(&[o], &b).unwrap();
        let y = t.conv1d(xv, wv, bias.then_some(bv), s, p, d).unwrap();
        let shape = y.shape();
        prop_assert_eq!(shape.dims(), &[dims[0] as u32, dims[1] as u32, dims[3] as u32][..]);
        let mut got = vec![0.0; y.numel()];
        t.read(y, &mut got).unwrap();
        close(&got, &want);
        let (xd, wd) = ([n, c, l], [o, cg, k]);
        if bias {
            assert_grads(&[(&xd, &x), (&wd, &w), (&[o], &b)], |t, v| t.conv1d(v[0], v[1], Some(v[2]), s, p, d))?;
        } else {
            assert_grads(&[(&xd, &x), (&wd, &w)], |t, v| t.conv1d(v[0], v[1], None, s, p, d))?;
        }
    }

    #[test]
    fn pooling_forward_matches_direct_loops(n in 1usize..=2, c in 1usize..=2, p in pool(), max in any::<bool>(), seed in any::<u64>()) {
        let (p, [h, w]) = p;
        let x = values(n * c * h * w, seed);
        let want = pool_direct(&x, [n, c, h, w], p, max, false);
        let mut mem = vec![0.0f64; 1 << 14];
        let mut t = T::new(&mut mem);
        let xv = t.input(&[n, c, h, w], &x).unwrap();
        let y = if max { t.max_pool2d(xv, p) } else { t.avg_pool2d(xv, p) }.unwrap();
        let mut got = vec![0.0; y.numel()];
        t.read(y, &mut got).unwrap();
        close(&got, &want);
        // Averages over the taps inside the input (`count_include_pad=False`).
        let want = pool_direct(&x, [n, c, h, w], p, false, true);
        let y = t.avg_pool2d_exclude_pad(xv, p).unwrap();
        t.read(y, &mut got).unwrap();
        close(&got, &want);
    }

    #[test]
    fn pooling_gradients(n in 1usize..=2, c in 1usize..=2, p in pool(), max in any::<bool>(), seed in any::<u64>()) {
        let (p, [h, w]) = p;
        let x = distinct(n * c * h * w, seed);
        assert_grads(&[(&[n, c, h, w], &x)], |t, v| if max { t.max_pool2d(v[0], p) } else { t.avg_pool2d(v[0], p) })?;
        assert_grads(&[(&[n, c, h, w], &x)], |t, v| t.avg_pool2d_exclude_pad(v[0], p))?;
    }

    #[test]
    fn pool1d_and_global_pool_gradients(n in 1usize..=2, c in 1usize..=3, l in 3usize..=7, k in 1usize..=3, s in 1usize..=2, pad in 0usize..=1, max in any::<bool>(), h in 1usize..=3, seed in any::<u64>()) {
        let x = distinct(n * c * l, seed);
        // Padding up to half the window, as the pooling ops allow.
        let pad = pad.min(k / 2);
        assert_grads(&[(&[n, c, l], &x)], |t, v| if max { t.max_pool1d(v[0], k, s, pad) } else { t.avg_pool1d(v[0], k, s, pad) })?;
        assert_grads(&[(&[n, c, l], &x)], |t, v| t.avg_pool1d_exclude_pad(v[0], k, s, pad))?;
        assert_grads(&[(&[n, c, l], &x)], |t, v| t.global_avg_pool(v[0]))?;
        // An image [N, C, H, W] too.
        let x = values(n * c * h * l, seed ^ 1);
        assert_grads(&[(&[n, c, h, l], &x)], |t, v| t.global_avg_pool(v[0]))?;
    }
}

/// A small hand-checked case: a 1x1x3x3 image, a 2x2 kernel of ones: each output is the sum of
/// a 2x2 window: [[8, 12], [20, 24]] for x = 0..9 (by hand: 0+1+3+4 = 8, ...).
#[test]
fn conv2d_by_hand() {
    let mut mem = [0f32; 256];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let x = t
        .input(&[1, 1, 3, 3], &[0., 1., 2., 3., 4., 5., 6., 7., 8.])
        .unwrap();
    let w = t.param(&[1, 1, 2, 2], &[1.0; 4]).unwrap();
    let y = t.conv2d(x, w, None, ConvConfig::default()).unwrap();
    let mut got = [0f32; 4];
    t.read(y, &mut got).unwrap();
    assert_eq!(got, [8., 12., 20., 24.]);
    // Max pooling 2x2 stride 1 of the same image: [[4, 5], [7, 8]].
    let p = t
        .max_pool2d(
            x,
            PoolConfig {
                kernel: [2, 2],
                stride: [1, 1],
                padding: [0, 0],
                ceil_mode: false,
            },
        )
        .unwrap();
    t.read(p, &mut got).unwrap();
    assert_eq!(got, [4., 5., 7., 8.]);
}

/// The im2col scratch is given back: it counts in the high-water mark, not in what the step
/// keeps, and the planner's dry run sees the peak.
#[test]
fn scratch_is_given_back_and_measured() {
    let mut mem = [0f32; 4096];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let x = t.input(&[2, 3, 6, 6], &[0.5; 216]).unwrap();
    let w = t.param(&[4, 3, 3, 3], &[0.1; 108]).unwrap();
    let before = t.used();
    let y = t.conv2d(x, w, None, ConvConfig::default()).unwrap();
    assert_eq!(t.used(), before + y.numel());
    // cols: 2 images x 27 rows x 16 positions.
    assert_eq!(t.high_water(), before + y.numel() + 2 * 27 * 16);
}

#[test]
fn bad_geometry_is_an_error() {
    let mut mem = [0f32; 1024];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let x = t.input(&[1, 2, 4, 4], &[0.0; 32]).unwrap();
    let w = t.param(&[2, 2, 5, 5], &[0.0; 100]).unwrap();
    let before = (t.used(), t.nodes_used());
    assert!(t.conv2d(x, w, None, ConvConfig::default()).is_err()); // window larger than input
    let w3 = t.param(&[3, 2, 1, 1], &[0.0; 6]).unwrap();
    let wg = t.param(&[2, 3, 1, 1], &[0.0; 6]).unwrap(); // 2 channels do not split into groups of 3
    assert!(t.conv2d(x, wg, None, ConvConfig::default()).is_err());
    let _ = w3;
    let bad = ConvConfig {
        stride: [0, 1],
        ..ConvConfig::default()
    };
    assert!(t.conv2d(x, wg, None, bad).is_err());
    assert!(t
        .max_pool2d(
            x,
            PoolConfig {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [2, 2],
                ceil_mode: true,
            }
        )
        .is_err());
    assert_eq!(t.nodes_used(), before.1 + 2);
    let _ = before.0;
}

/// A batch whose im2col buffer is larger than one pass may fill (`ops::conv`'s scratch limit:
/// 2^20 elements; here 9 x 256 x 256 per image, so one image a pass) gives the same output and
/// gradients as each image on its own, and only one image's buffer of scratch.
#[test]
fn large_batches_are_done_a_few_images_at_a_time() {
    let (n, hw) = (3, 256);
    let x = values(n * hw * hw, 5);
    let k = values(9, 6);
    let opt = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    // The loss weights every output element differently: sum(y * w2).
    let w2 = values(n * hw * hw, 9);
    let run = |imgs: &[f64], w2: &[f64], count: usize| -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
        let mut mem = vec![0.0f64; 1 << 21];
        let mut t = T::new(&mut mem);
        let xv = t.param(&[count, 1, hw, hw], imgs).unwrap();
        let wv = t.param(&[1, 1, 3, 3], &k).unwrap();
        let before = t.used();
        let y = t.conv2d(xv, wv, None, opt).unwrap();
        let scratch = t.high_water() - before - y.numel();
        let w2 = t.input(&[count, 1, hw, hw], w2).unwrap();
        let l = t.mul(y, w2).and_then(|p| t.sum(p)).unwrap();
        t.backward(l).unwrap();
        let mut out = vec![0.0; y.numel()];
        t.read(y, &mut out).unwrap();
        let (mut dx, mut dw) = (vec![0.0; xv.numel()], vec![0.0; 9]);
        t.read_grad(xv, &mut dx).unwrap();
        t.read_grad(wv, &mut dw).unwrap();
        (out, dx, dw, scratch)
    };
    let (y, dx, dw, scratch) = run(&x, &w2, n);
    assert_eq!(scratch, 9 * hw * hw, "one image's columns at a time");
    let (mut y1, mut dx1, mut dw1) = (Vec::new(), Vec::new(), vec![0.0; 9]);
    for i in 0..n {
        let img = i * hw * hw..(i + 1) * hw * hw;
        let (yi, dxi, dwi, _) = run(&x[img.clone()], &w2[img], 1);
        y1.extend(yi);
        dx1.extend(dxi);
        dw1.iter_mut().zip(dwi).for_each(|(a, b)| *a += b);
    }
    close(&y, &y1);
    close(&dx, &dx1);
    close(&dw, &dw1);
}

/// `ConvCall::lens` (what a backend's own convolution checks a call with first): the
/// tensors' sizes, or an error for a call that does not add up.
#[test]
fn conv_calls_are_checked() {
    let good = ConvCall {
        pass: ConvPass::Forward { x: 0, w: 16, y: 32 },
        images: 2,
        channels: 4,
        size: [4, 5],
        out_channels: 6,
        groups: 2,
        kernel: [3, 3],
        stride: [1, 2],
        padding: [1, 1],
        dilation: [1, 1],
        out: [4, 3],
    };
    assert_eq!(
        good.lens(),
        Ok([2 * 4 * 4 * 5, 6 * 2 * 3 * 3, 2 * 6 * 4 * 3])
    );
    for bad in [
        ConvCall { groups: 0, ..good },
        ConvCall { groups: 3, ..good },
        ConvCall {
            out: [4, 4],
            ..good
        },
        ConvCall {
            stride: [0, 1],
            ..good
        },
        ConvCall {
            kernel: [0, 3],
            ..good
        },
        // A zero dilation (its output size would follow as if the window were one tap).
        ConvCall {
            dilation: [0, 1],
            out: [6, 3],
            ..good
        },
        ConvCall {
            dilation: [1, usize::MAX],
            ..good
        },
        ConvCall {
            images: usize::MAX,
            ..good
        },
    ] {
        assert!(
            matches!(bad.lens(), Err(mote::Error::InvalidArgument { .. })),
            "{bad:?}"
        );
    }
}

/// A pooling call states its sizes; `lens` checks that they agree (the output size follows
/// from the others) and that nothing overflows, before a backend's own kernel trusts them.
#[test]
fn pool_calls_are_checked() {
    use mote::ops::conv::{PoolCall, PoolPass};
    let good = PoolCall {
        pass: PoolPass::Forward { x: 0, y: 100 },
        max: true,
        planes: 6,
        size: [7, 6],
        kernel: [3, 2],
        stride: [2, 2],
        padding: [1, 0],
        out: [4, 3],
    };
    assert_eq!(good.lens(), Ok([6 * 7 * 6, 6 * 4 * 3]));
    // Over 8 rows, 4 windows rounded down, 5 in `ceil_mode`: both follow, 6 does not.
    for (out, ok) in [(4, true), (5, true), (6, false), (3, false)] {
        let call = PoolCall {
            size: [8, 6],
            out: [out, 3],
            ..good
        };
        assert_eq!(call.lens().is_ok(), ok, "{call:?}");
    }
    for bad in [
        // One more window than the floor size would start past `usize::MAX`.
        PoolCall {
            size: [usize::MAX, 1],
            kernel: [1, 1],
            stride: [1 << (usize::BITS - 1), 1],
            padding: [0, 0],
            out: [3, 1],
            planes: 1,
            ..good
        },
        PoolCall { planes: 0, ..good },
        PoolCall {
            out: [4, 4],
            ..good
        },
        PoolCall {
            stride: [0, 2],
            ..good
        },
        PoolCall {
            kernel: [3, 0],
            ..good
        },
        PoolCall {
            size: [0, 6],
            ..good
        },
        PoolCall {
            planes: usize::MAX,
            ..good
        },
    ] {
        assert!(bad.lens().is_err(), "{bad:?}");
    }
}

/// The reference backend asking for a whole batch per im2col pass
/// ([`mote::Backend::conv_scratch`], as the GPU does), every other call passed on.
struct Wide<'a>(Cpu<'a, f64>);

impl mote::Backend for Wide<'_> {
    type Elem = f64;
    fn conv_scratch(&self) -> Option<usize> {
        Some(1 << 24)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn write(&mut self, offset: usize, src: &[f64]) -> Result<()> {
        self.0.write(offset, src)
    }
    fn read(&self, offset: usize, dst: &mut [f64]) -> Result<()> {
        self.0.read(offset, dst)
    }
    fn fill(&mut self, offset: usize, len: usize, value: f64) -> Result<()> {
        self.0.fill(offset, len, value)
    }
    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        self.0.unary(op, x, y, len)
    }
    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    ) -> Result<()> {
        self.0.unary_backward(op, x, y, dy, dx, len)
    }
    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        self.0.binary(op, a, b, y)
    }
    fn binary_backward(
        &mut self,
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        self.0.binary_backward(op, side, a, b, dy, dx)
    }
    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.0.gemm(g)
    }
    fn copy_strided(
        &mut self,
        space: &mote::Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        self.0.copy_strided(space, src, dst, accumulate)
    }
    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.0.reduce(op, r, x, y)
    }
    fn reduce_backward(
        &mut self,
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.0.reduce_backward(op, r, x, y, dy, dx)
    }
    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.0.softmax(log, r, x, y)
    }
    fn softmax_backward(
        &mut self,
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.0.softmax_backward(log, r, y, dy, dx)
    }
    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        self.0.loss(op, classes, p, t, y)
    }
    fn loss_backward(
        &mut self,
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.0.loss_backward(op, lhs, classes, p, t, dy, dx)
    }
    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.0.sgd(u)
    }
    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        self.0.adam(u)
    }
    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.0.rms(u)
    }
    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        self.0.sum_squares(offset, len)
    }
    fn scale(&mut self, offset: usize, len: usize, factor: f64) -> Result<()> {
        self.0.scale(offset, len, factor)
    }
}

/// A convolution whose planned im2col buffer holds 3 images (2 passes for 6 images), run in
/// one pass where the backend asks for more and the arena has room: the same output and
/// gradients (the weight's summed in another order); with no room to spare, the planned passes.
#[test]
fn wider_im2col_passes_give_the_same_results() {
    fn run<B: mote::Backend<Elem = f64>>(t: &mut Tape<B, 16>) -> (Vec<f64>, usize) {
        let mut rng = Rng::new(4);
        let x = t
            .param_with(&[6, 16, 64, 64], || rng.uniform(-1.0, 1.0))
            .unwrap();
        let w = t
            .param_with(&[8, 16, 3, 3], || rng.uniform(-0.5, 0.5))
            .unwrap();
        let cfg = ConvConfig {
            stride: [1, 2],
            padding: [1, 2],
            dilation: [2, 1],
        };
        let y = t.conv2d(x, w, None, cfg).unwrap();
        let s = t.square(y).unwrap();
        let l = t.mean(s).unwrap();
        t.backward(l).unwrap();
        let high = t.high_water();
        let mut out = vec![0.0; y.numel()];
        t.read(y, &mut out).unwrap();
        for v in [x, w] {
            let mut g = vec![0.0; v.numel()];
            t.read_grad(v, &mut g).unwrap();
            out.extend(g);
        }
        (out, high)
    }
    let mut m1 = vec![0f64; 1 << 23];
    let mut m2 = vec![0f64; 1 << 23];
    let (want, planned) = run(&mut Tape::<Cpu<f64>, 16>::new(&mut m1));
    let (got, wide) = run(&mut Tape::with_backend(Wide(Cpu::new(&mut m2))));
    assert!(
        wide > planned + 800_000,
        "one wide pass: {wide} against {planned}"
    );
    let close = |got: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{i}: {a} vs {b}");
        }
    };
    close(&got);
    // An arena of just the plan: the planned passes (the same high-water mark), the same
    // values.
    let mut m3 = vec![0f64; planned];
    let (tight, high) = run(&mut Tape::with_backend(Wide(Cpu::new(&mut m3))));
    assert_eq!(high, planned);
    close(&tight);
}
