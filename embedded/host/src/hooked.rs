//! Host checks of the firmware's kernels beyond the random comparisons in `main.rs`: copies
//! with length-1 dimensions of huge strides and row sums after simplification; hand-made
//! pooling calls that must be errors; and the core's tape driving the pooling hook (forward
//! only, backward only, both; with and without the firmware's copy): the same results and the
//! same arena high-water mark as the planner's count.
use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::conv::{ConvCall, PoolCall, PoolPass};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::{copy, Strided};
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Cpu, HostBackend, PoolConfig, Result, Rng, Shape, Tape};

const HUGE: [usize; 4] = [usize::MAX, usize::MAX / 2 + 1, 1 << 40, 12345];

/// Runs `copy_any` and the reference on an arena sized exactly `[src | dst]` (or `[dst | src]`):
/// the same bits everywhere.
fn check_copy(
    dims: &[usize],
    ss: [usize; 4],
    ds: [usize; 4],
    acc: bool,
    src_first: bool,
    tag: &str,
) {
    let space = Shape::new(dims).unwrap();
    let a = Strided {
        offset: 0,
        strides: ss,
    };
    let b = Strided {
        offset: 0,
        strides: ds,
    };
    let (sl, dl) = (a.span(&space), b.span(&space));
    let total = sl + dl;
    let (so, dof) = if src_first { (0, sl) } else { (dl, 0) };
    let src = Strided {
        offset: so,
        strides: ss,
    };
    let dst = Strided {
        offset: dof,
        strides: ds,
    };
    let init: Vec<f32> = (0..total)
        .map(|i| {
            if i % 11 == 0 {
                -0.0
            } else {
                ((i * 7919) % 1000) as f32 * 1e-3 - 0.5 + (i as f32 * 1e-7)
            }
        })
        .collect();
    let mut buf = init.clone();
    super::copy::copy_any(&mut buf, &space, src, dst, acc).unwrap();
    let mut want = init.clone();
    {
        let (s, d): (&[f32], &mut [f32]) = if src_first {
            let (lo, hi) = want.split_at_mut(sl);
            (lo, hi)
        } else {
            let (lo, hi) = want.split_at_mut(dl);
            (hi, lo)
        };
        copy(&space, s, ss, d, ds, acc);
    }
    for i in 0..total {
        assert_eq!(
            buf[i].to_bits(),
            want[i].to_bits(),
            "{tag}: {dims:?} ss {ss:?} ds {ds:?} acc {acc} elem {i}"
        );
    }
}

#[test]
fn copy_adversarial() {
    // Length-1 dims with huge strides, everywhere, incl. innermost.
    for &h in &HUGE {
        check_copy(&[3, 1], [1, h, 0, 0], [1, h, 0, 0], false, true, "inner1");
        check_copy(
            &[3, 1],
            [1, h, 0, 0],
            [0, h, 0, 0],
            true,
            false,
            "inner1 acc",
        );
        check_copy(
            &[1, 3],
            [h, 1, 0, 0],
            [h, 0, 0, 0],
            true,
            true,
            "outer1 rowsum",
        );
        check_copy(
            &[2, 1, 3],
            [3, h, 1, 0],
            [3, h, 1, 0],
            true,
            false,
            "mid1 merge",
        );
        check_copy(
            &[1, 1, 1, 1],
            [h, h, h, h],
            [h, h, h, h],
            true,
            true,
            "all1",
        );
        check_copy(
            &[1, 2, 1, 2],
            [h, 2, h, 1],
            [h, 0, h, 1],
            true,
            false,
            "mixed",
        );
        check_copy(
            &[2, 1, 2, 1],
            [2, h, 1, h],
            [2, h, 1, h],
            false,
            true,
            "inner1 merge",
        );
        check_copy(
            &[2, 1, 2, 1],
            [2, h, 1, h],
            [0, h, 0, h],
            true,
            true,
            "sum into one",
        );
    }
    // Merge where n[3] = 1 with stride equal to outer.
    check_copy(
        &[3, 1],
        [2, 2, 0, 0],
        [1, 1, 0, 0],
        false,
        true,
        "n3=1 merge",
    );
    // Row sum after drops and merges of outer dims.
    check_copy(
        &[2, 3, 1, 4],
        [12, 4, 99, 1],
        [3, 1, 7, 0],
        true,
        false,
        "rowsum merged outer",
    );
    check_copy(
        &[2, 3, 4],
        [12, 4, 1, 0],
        [3, 1, 0, 0],
        true,
        true,
        "rowsum contiguous outer",
    );
}

/// Hand-made calls: errors, never out-of-bounds reads (checked under AddressSanitizer once).
#[test]
fn pool_hand_made_calls() {
    let base = PoolCall {
        pass: PoolPass::Forward { x: 0, y: 16 },
        max: true,
        planes: 1,
        size: [4, 4],
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        out: [2, 2],
    };
    let mut buf = vec![0f32; 20];
    assert!(super::pool::max_pool(&mut buf, &base).unwrap());
    let m = usize::MAX;
    let bad = [
        PoolCall {
            size: [m, 1],
            out: [m / 2, 1],
            ..base
        },
        PoolCall {
            size: [m, m],
            kernel: [m, m],
            stride: [m, m],
            out: [1, 1],
            ..base
        },
        PoolCall {
            size: [1 << 33, 1 << 33],
            kernel: [1, 1],
            stride: [1, 1],
            out: [1 << 33, 1 << 33],
            ..base
        },
        PoolCall {
            planes: m,
            size: [1, 1],
            kernel: [1, 1],
            stride: [1, 1],
            out: [1, 1],
            ..base
        },
        PoolCall {
            pass: PoolPass::Forward { x: m, y: 16 },
            ..base
        },
        PoolCall {
            pass: PoolPass::Forward { x: 0, y: m - 1 },
            ..base
        },
        PoolCall {
            pass: PoolPass::Forward { x: 0, y: 17 },
            ..base
        },
        PoolCall {
            pass: PoolPass::Backward {
                x: 0,
                y: 16,
                dy: 16,
                dx: 4,
            },
            ..base
        },
        PoolCall {
            pass: PoolPass::Backward {
                x: 0,
                y: 16,
                dy: 17,
                dx: 16,
            },
            ..base
        },
        PoolCall {
            size: [4, 5],
            ..base
        },
        // 2 windows (3 in `ceil_mode`), not 4.
        PoolCall {
            size: [5, 4],
            out: [4, 2],
            ..base
        },
    ];
    for b in bad {
        let r = super::pool::max_pool(&mut buf, &b);
        assert!(r.is_err(), "{b:?}: {r:?}");
    }
    // A `ceil_mode` call whose last window overhangs the input: left to the core.
    let ceil = PoolCall {
        size: [5, 4],
        out: [3, 2],
        ..base
    };
    assert_eq!(super::pool::max_pool(&mut buf, &ceil), Ok(false));
    // Stride far larger than the input: one window, fine.
    let big = PoolCall {
        stride: [m, m],
        out: [1, 1],
        pass: PoolPass::Forward { x: 0, y: 16 },
        ..base
    };
    assert!(super::pool::max_pool(&mut buf, &big).unwrap());
    // (4-2)/3+1 = 1
    let odd = PoolCall {
        size: [4, 4],
        stride: [3, 3],
        out: [1, 1],
        ..base
    };
    assert!(super::pool::max_pool(&mut buf, &odd).unwrap());
}

/// A backend over `Cpu` that pools with the firmware's `max_pool` for the chosen passes, and
/// copies with `copy_any` when asked.
struct Hooked<'a> {
    cpu: Cpu<'a, f32>,
    fwd: bool,
    bwd: bool,
    fast_copy: bool,
    calls: [usize; 2],
    /// Whether the firmware's convolution runs the passes it can, and how many it ran.
    conv: bool,
    conv_calls: usize,
}

impl HostBackend for Hooked<'_> {
    fn storage(&self) -> &[f32] {
        self.cpu.storage()
    }
    fn storage_mut(&mut self) -> &mut [f32] {
        self.cpu.storage_mut()
    }
}

impl Backend for Hooked<'_> {
    type Elem = f32;
    fn capacity(&self) -> usize {
        self.cpu.capacity()
    }
    fn write(&mut self, o: usize, s: &[f32]) -> Result<()> {
        self.cpu.write(o, s)
    }
    fn read(&self, o: usize, d: &mut [f32]) -> Result<()> {
        self.cpu.read(o, d)
    }
    fn fill(&mut self, o: usize, n: usize, v: f32) -> Result<()> {
        self.cpu.fill(o, n, v)
    }
    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, n: usize) -> Result<()> {
        self.cpu.unary(op, x, y, n)
    }
    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        n: usize,
    ) -> Result<()> {
        self.cpu.unary_backward(op, x, y, dy, dx, n)
    }
    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        self.cpu.binary(op, a, b, y)
    }
    fn binary_backward(
        &mut self,
        op: BinaryOp,
        s: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        self.cpu.binary_backward(op, s, a, b, dy, dx)
    }
    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.cpu.gemm(g)
    }
    fn conv(&mut self, call: &ConvCall) -> Result<bool> {
        if !self.conv {
            return Ok(false);
        }
        let r = super::conv::conv(self.cpu.storage_mut(), call)?;
        self.conv_calls += usize::from(r);
        Ok(r)
    }
    fn pool(&mut self, call: &PoolCall) -> Result<bool> {
        let on = match call.pass {
            PoolPass::Forward { .. } => self.fwd,
            PoolPass::Backward { .. } => self.bwd,
        };
        if !on {
            return Ok(false);
        }
        let r = super::pool::max_pool(self.cpu.storage_mut(), call)?;
        if r {
            self.calls[matches!(call.pass, PoolPass::Backward { .. }) as usize] += 1;
        }
        Ok(r)
    }
    fn copy_strided(&mut self, sp: &Shape, s: Strided, d: Strided, acc: bool) -> Result<()> {
        if self.fast_copy {
            super::copy::copy_any(self.cpu.storage_mut(), sp, s, d, acc)
        } else {
            self.cpu.copy_strided(sp, s, d, acc)
        }
    }
    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.cpu.reduce(op, r, x, y)
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
        self.cpu.reduce_backward(op, r, x, y, dy, dx)
    }
    fn softmax(&mut self, l: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.cpu.softmax(l, r, x, y)
    }
    fn softmax_backward(
        &mut self,
        l: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.cpu.softmax_backward(l, r, y, dy, dx)
    }
    fn loss(&mut self, op: LossOp, c: usize, p: View, t: View, y: usize) -> Result<()> {
        self.cpu.loss(op, c, p, t, y)
    }
    #[allow(clippy::too_many_arguments)]
    fn loss_backward(
        &mut self,
        op: LossOp,
        l: bool,
        c: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.cpu.loss_backward(op, l, c, p, t, dy, dx)
    }
    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.cpu.sgd(u)
    }
    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        self.cpu.adam(u)
    }
    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.cpu.rms(u)
    }
    fn sum_squares(&mut self, o: usize, n: usize) -> Result<f64> {
        self.cpu.sum_squares(o, n)
    }
    fn scale(&mut self, o: usize, n: usize, f: f32) -> Result<()> {
        self.cpu.scale(o, n, f)
    }
}

/// The step: `x * w` (both parameters), max pooling, times `g`, summed; plus `sum(x)`.
fn build<B: Backend<Elem = f32>, const N: usize>(
    t: &mut Tape<B, N>,
    shape: [usize; 4],
    cfg: PoolConfig,
    data: &[f32],
    w: &[f32],
    dys: &[f32],
    out: [usize; 2],
) -> Result<(mote::Var, mote::Var, mote::Var, mote::Var)> {
    let x = t.param(&shape, data)?;
    let wv = t.param(&shape, w)?;
    let xw = t.mul(x, wv)?;
    let y = t.max_pool2d(xw, cfg)?;
    let g = t.input(&[shape[0], shape[1], out[0], out[1]], dys)?;
    let p = t.mul(y, g)?;
    let l1 = t.sum(p)?;
    let l2 = t.sum(x)?;
    let loss = t.add(l1, l2)?;
    t.backward(loss)?;
    Ok((x, wv, y, loss))
}

#[test]
fn tape_mixed_hooks_same_results_and_arena() {
    let mut rng = Rng::new(3);
    let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
    for case in 0..600 {
        let shape = [1 + draw(3), 1 + draw(3), 2 + draw(7), 2 + draw(7)];
        let kernel = [1 + draw(2), 1 + draw(2)];
        let stride = [0, 1].map(|d| kernel[d] + draw(2));
        let padding = if draw(4) == 0 {
            [draw(kernel[0] / 2 + 1), draw(kernel[1] / 2 + 1)]
        } else {
            [0, 0]
        };
        // PyTorch's `ceil_mode` in a quarter of the cases: a last window may overhang (the
        // firmware's kernel leaves those to the core).
        let ceil_mode = draw(4) == 0;
        let out = [0, 1].map(|d| {
            let (n, k, s, p) = (shape[2 + d], kernel[d], stride[d], padding[d]);
            let o = (n + 2 * p - k + if ceil_mode { s - 1 } else { 0 }) / s + 1;
            if ceil_mode && (o - 1) * s >= n + p {
                o - 1
            } else {
                o
            }
        });
        let cfg = PoolConfig {
            kernel,
            stride,
            padding,
            ceil_mode,
        };
        let xl: usize = shape.iter().product();
        let yl = shape[0] * shape[1] * out[0] * out[1];
        let data: Vec<f32> = (0..xl)
            .map(|_| match draw(10) {
                0 => f32::NAN,
                1 => -0.0,
                2 => f32::NEG_INFINITY,
                _ => draw(5) as f32 - 2.0,
            })
            .collect();
        let w: Vec<f32> = (0..xl).map(|_| draw(3) as f32 - 1.0).collect();
        let dys: Vec<f32> = (0..yl).map(|_| draw(5) as f32 * 0.5 - 1.0).collect();
        let planned = mote::plan::measure::<f32, 32>(|t| {
            build(t, shape, cfg, &data, &w, &dys, out).map(|_| ())
        })
        .unwrap();
        let mut results = vec![];
        for mode in 0..8 {
            let (fwd, bwd, fast_copy) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
            let mut mem = vec![0f32; 1 << 14];
            let be = Hooked {
                cpu: Cpu::new(&mut mem),
                fwd,
                bwd,
                fast_copy,
                calls: [0; 2],
                conv: false,
                conv_calls: 0,
            };
            let mut t = Tape::<Hooked, 32>::with_backend(be);
            let (x, wv, y, loss) = build(&mut t, shape, cfg, &data, &w, &dys, out).unwrap();
            let hw = t.high_water();
            // The kernel runs without padding, where no last window overhangs (`ceil_mode`).
            let overhangs = (0..2).any(|d| (out[d] - 1) * stride[d] + kernel[d] > shape[2 + d]);
            if padding == [0, 0] && !overhangs {
                assert_eq!(
                    t.backend().calls,
                    [fwd as usize, bwd as usize],
                    "case {case} mode {mode}"
                );
            }
            assert_eq!(hw, planned, "case {case} mode {mode}: high water vs plan");
            let ys: Vec<u32> = t.data(y).unwrap().iter().map(|v| v.to_bits()).collect();
            let dx: Vec<f32> = t.grad_data(x).unwrap().unwrap().to_vec();
            let dw: Vec<f32> = t.grad_data(wv).unwrap().unwrap().to_vec();
            let l = t.data(loss).unwrap()[0];
            results.push((mode, ys, dx, dw, l));
        }
        let (_, y0, dx0, dw0, l0) = &results[0];
        for (mode, ys, dx, dw, l) in &results[1..] {
            assert_eq!(ys, y0, "case {case} mode {mode} y");
            assert_eq!(l.to_bits(), l0.to_bits(), "case {case} mode {mode} loss");
            for (a, b) in dx.iter().zip(dx0).chain(dw.iter().zip(dw0)) {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "case {case} mode {mode} grad {a} vs {b}"
                );
            }
        }
    }
}

/// A step through two convolutions, the first without padding (the firmware's kernel runs its
/// three passes), the second with (the core's im2col path), then a loss that also reads `x`.
#[allow(clippy::type_complexity)]
fn conv_step<B: Backend<Elem = f32>, const N: usize>(
    t: &mut Tape<B, N>,
    shape: [usize; 4],
    cfg: mote::ConvConfig,
    data: &[f32],
    w1: &[f32],
    w2: &[f32],
) -> Result<(mote::Var, mote::Var, mote::Var, mote::Var)> {
    let x = t.param(&shape, data)?;
    let k1 = t.param(&[4, shape[1], 3, 3], w1)?;
    let k2 = t.param(&[2, 4, 3, 3], w2)?;
    let h = t.conv2d(x, k1, None, cfg)?;
    let pad = mote::ConvConfig {
        padding: [1, 1],
        ..mote::ConvConfig::default()
    };
    let y = t.conv2d(h, k2, None, pad)?;
    let l1 = t.sum(y)?;
    let l2 = t.sum(x)?;
    let loss = t.add(l1, l2)?;
    t.backward(loss)?;
    Ok((x, k1, k2, loss))
}

/// The tape offering its convolutions to the firmware's kernel: the passes without padding
/// run there (forward, weight and input gradients of the first convolution: 3 calls), the
/// rest on the core's path; the same values (quarters: exact in any order) and the same arena
/// high-water mark as the planner's count.
#[test]
fn tape_conv_hook_same_results_and_arena() {
    let mut rng = Rng::new(9);
    let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
    for case in 0..200 {
        let shape = [1 + draw(3), 1 + draw(3), 5 + draw(5), 5 + draw(5)];
        let cfg = mote::ConvConfig {
            stride: [1 + draw(2), 1],
            dilation: [1, 1 + draw(2)],
            ..mote::ConvConfig::default()
        };
        let mut q =
            |n: usize| -> Vec<f32> { (0..n).map(|_| draw(9) as f32 * 0.25 - 1.0).collect() };
        let data = q(shape.iter().product());
        let w1 = q(4 * shape[1] * 9);
        let w2 = q(2 * 4 * 9);
        let planned = mote::plan::measure::<f32, 32>(|t| {
            conv_step(t, shape, cfg, &data, &w1, &w2).map(|_| ())
        })
        .unwrap();
        let mut results = vec![];
        for conv in [false, true] {
            let mut mem = vec![0f32; 1 << 15];
            let be = Hooked {
                cpu: Cpu::new(&mut mem),
                fwd: false,
                bwd: false,
                fast_copy: false,
                calls: [0; 2],
                conv,
                conv_calls: 0,
            };
            let mut t = Tape::<Hooked, 32>::with_backend(be);
            let (x, k1, k2, loss) = conv_step(&mut t, shape, cfg, &data, &w1, &w2).unwrap();
            assert_eq!(t.backend().conv_calls, 3 * usize::from(conv), "case {case}");
            assert_eq!(t.high_water(), planned, "case {case} conv {conv}");
            let grads: Vec<Vec<f32>> = [x, k1, k2]
                .iter()
                .map(|&v| t.grad_data(v).unwrap().unwrap().to_vec())
                .collect();
            results.push((t.data(loss).unwrap()[0], grads));
        }
        assert_eq!(results[0], results[1], "case {case}");
    }
}
