//! The parallel backend's pooling (`parallel/pool.rs`, read in place) against the reference
//! backend's (im2col copies and a reduction), through the tape: max and average, with and
//! without padding, overlapping windows, the 2 x 2 stride-2 window's own loops, planes split
//! over threads; values with ties, NaNs of distinct payloads, infinities, the smallest finite
//! value and signed zeros. The outputs and the input gradients must agree bit for bit.

use mote::{Backend, Cpu, Float, HostBackend, PoolConfig, Rng, Tape};
use mote_runtime::parallel::{self, Parallel};

/// Three threads, set before any test touches the pool.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        parallel::set_threads(3).expect("the pool is set first");
    });
}

/// One pooling case: `x` a parameter, `loss = sum(pool(x) * g) + sum(x * c)` (so that the
/// input's gradient also holds another op's additions, signed zeros included); returns the
/// pooled output's bits and the input gradient's bits.
#[allow(clippy::too_many_arguments)]
fn step<B: HostBackend>(
    t: &mut Tape<B, 16>,
    shape: [usize; 4],
    out: [usize; 4],
    cfg: PoolConfig,
    max: bool,
    data: &[B::Elem],
    g: &[B::Elem],
    c: &[B::Elem],
) -> (Vec<u64>, Vec<u64>)
where
    B::Elem: Float,
{
    let x = t.param(&shape, data).unwrap();
    let y = if max {
        t.max_pool2d(x, cfg).unwrap()
    } else {
        t.avg_pool2d(x, cfg).unwrap()
    };
    let gv = t.input(&out, g).unwrap();
    let p = t.mul(y, gv).unwrap();
    let l1 = t.sum(p).unwrap();
    let cv = t.input(&shape, c).unwrap();
    let q = t.mul(x, cv).unwrap();
    let l2 = t.sum(q).unwrap();
    let loss = t.add(l1, l2).unwrap();
    t.backward(loss).unwrap();
    let bits = |v: &[B::Elem]| v.iter().map(|e| e.to_f64().to_bits()).collect::<Vec<_>>();
    (
        bits(t.data(y).unwrap()),
        bits(t.grad_data(x).unwrap().unwrap()),
    )
}

/// Random cases on both backends for element type `T`.
fn cases<T: Float>(seed: u64, count: usize) -> usize {
    init();
    let mut rng = Rng::new(seed);
    let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
    let special = [
        T::from_f64(f64::NEG_INFINITY),
        T::MIN,
        T::from_f64(f64::from_bits(0x7ff8_0000_0000_0001)),
        T::from_f64(f64::from_bits(0xfff8_0000_0000_0002)),
        T::from_f64(-0.0),
        T::from_f64(f64::INFINITY),
    ];
    let mut ran = 0;
    for case in 0..count {
        let square = draw(3) == 0;
        let big = draw(12) == 0;
        let shape = if big {
            // Above the parallel threshold: planes split over the threads.
            [16 + draw(9), 8, 16, 16 + draw(3)]
        } else {
            [1 + draw(3), 1 + draw(4), 1 + draw(11), 1 + draw(11)]
        };
        let kernel = if square {
            [2, 2]
        } else {
            [1 + draw(4), 1 + draw(4)]
        };
        let stride = if square {
            [2, 2]
        } else {
            [0, 1].map(|d| 1 + draw(kernel[d] + 1))
        };
        let padding = if draw(3) == 0 {
            [0, 1].map(|d| draw(kernel[d] / 2 + 1))
        } else {
            [0, 0]
        };
        if (0..2).any(|d| shape[2 + d] + 2 * padding[d] < kernel[d]) {
            continue;
        }
        ran += 1;
        // PyTorch's `ceil_mode` in a third of the cases: a last window may overhang.
        let ceil_mode = draw(3) == 0;
        let cfg = PoolConfig {
            kernel,
            stride,
            padding,
            ceil_mode,
        };
        let max = draw(3) != 0;
        let n: usize = shape.iter().product();
        let [oh, ow] = [0, 1].map(|d| {
            let (len, k, s, p) = (shape[2 + d], kernel[d], stride[d], padding[d]);
            let o = (len + 2 * p - k + if ceil_mode { s - 1 } else { 0 }) / s + 1;
            if ceil_mode && (o - 1) * s >= len + p {
                o - 1
            } else {
                o
            }
        });
        let out = [shape[0], shape[1], oh, ow];
        let yn: usize = out.iter().product();
        let value = |draw: &mut dyn FnMut(usize) -> usize| match draw(12) {
            0 => special[draw(special.len())],
            _ => T::from_f64(draw(7) as f64 * 0.5 - 1.5),
        };
        let data: Vec<T> = (0..n).map(|_| value(&mut draw)).collect();
        // Half the cases with gradients whose sums round (thirds: not dyadic), so that the order
        // of additions shows, in max pooling's gradients too.
        let rough = draw(2) == 0;
        let grad = |draw: &mut dyn FnMut(usize) -> usize| {
            if rough {
                T::from_f64((draw(1 << 20) as f64 + 0.5) / 3.0 / (1 << 18) as f64 - 1.0)
            } else {
                value(draw)
            }
        };
        let g: Vec<T> = (0..yn).map(|_| grad(&mut draw)).collect();
        let c: Vec<T> = (0..n).map(|_| grad(&mut draw)).collect();
        let words = 8 * n + (2 * kernel[0] * kernel[1] + 8) * yn + 256;
        let mut m1 = vec![T::ZERO; words];
        let mut m2 = vec![T::ZERO; words];
        let want = step(
            &mut Tape::<Cpu<T>, 16>::new(&mut m1),
            shape,
            out,
            cfg,
            max,
            &data,
            &g,
            &c,
        );
        let got = step(
            &mut Tape::<Parallel<T>, 16>::with_backend(Parallel::new(&mut m2)),
            shape,
            out,
            cfg,
            max,
            &data,
            &g,
            &c,
        );
        // Bit for bit; where both are NaN, any payload (which of two NaNs an addition keeps
        // depends on the operand order the compiler picks, a commutative choice).
        // A max pooling's output adds nothing: there even the NaN kept must be the same.
        let nan = |b: u64| f64::from_bits(b).is_nan();
        for (what, got, want, exact) in [
            ("output", &got.0, &want.0, max),
            ("gradient", &got.1, &want.1, false),
        ] {
            let bad = got
                .iter()
                .zip(want)
                .position(|(&a, &b)| a != b && (exact || !(nan(a) && nan(b))));
            if let Some(i) = bad {
                panic!(
                    "case {case}: {shape:?} {cfg:?} max {max}: {what}[{i}] {} vs {}",
                    f64::from_bits(got[i]),
                    f64::from_bits(want[i])
                );
            }
        }
    }
    ran
}

#[test]
fn pooling_matches_the_reference_bit_for_bit_f32() {
    let ran = cases::<f32>(3, 1500);
    assert!(ran > 1200, "{ran} cases ran");
}

#[test]
fn pooling_matches_the_reference_bit_for_bit_f64() {
    let ran = cases::<f64>(4, 400);
    assert!(ran > 300, "{ran} cases ran");
}

/// Bad calls through the hook are errors, not panics: an output size that does not follow, a
/// tensor past the arena. Calls the tape cannot make (windows, strides or padding over 31,
/// padding over half the window) are left to the core's path, not run (a window of 2^31 + 1
/// taps a side would take for ever).
#[test]
fn pooling_refuses_bad_calls() {
    use mote::ops::conv::{PoolCall, PoolPass};
    init();
    let mut mem = vec![0f32; 128];
    let mut be = Parallel::new(&mut mem);
    let ok = PoolCall {
        pass: PoolPass::Forward { x: 0, y: 64 },
        max: true,
        planes: 1,
        size: [8, 8],
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        out: [4, 4],
    };
    assert!(be.pool(&ok).unwrap());
    let bad = [
        PoolCall { out: [4, 3], ..ok },
        PoolCall {
            pass: PoolPass::Forward { x: 0, y: 120 },
            ..ok
        },
        PoolCall {
            pass: PoolPass::Forward { x: 10, y: 20 },
            ..ok
        },
        PoolCall {
            planes: usize::MAX,
            ..ok
        },
        PoolCall {
            pass: PoolPass::Backward {
                x: 0,
                y: 64,
                dy: 80,
                dx: usize::MAX - 4,
            },
            ..ok
        },
    ];
    for b in bad {
        assert!(be.pool(&b).is_err(), "{b:?}");
    }
    let huge = PoolCall {
        pass: PoolPass::Forward { x: 0, y: 1 },
        size: [1, 1],
        kernel: [(1 << 31) + 1; 2],
        stride: [1, 1],
        padding: [1 << 30; 2],
        out: [1, 1],
        ..ok
    };
    let tall = PoolCall {
        kernel: [32, 2],
        stride: [32, 2],
        size: [32, 8],
        out: [1, 4],
        ..ok
    };
    let wide_pad = PoolCall {
        padding: [0, 2],
        out: [4, 6],
        ..ok
    };
    for b in [huge, tall, wide_pad] {
        assert_eq!(be.pool(&b).ok(), Some(false), "{b:?}");
    }
}
