//! Where a training step's time goes, per backend call family: wraps a backend and times every
//! call. `cargo run --release -p mote-runtime --example bench_profile -- [W-seed|W-digits|W-mnist|W-large] [cpu|parallel] [steps]`.

use std::collections::BTreeMap;
use std::time::Instant;

use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::conv::{ConvCall, ConvPass};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{
    Adam, AdamConfig, Backend, Cpu, HostBackend, Linear, Module, Optimizer, Result, Rng, Shape,
    Tape,
};
use mote_runtime::parallel::Parallel;

struct Timed<B> {
    inner: B,
    times: BTreeMap<(&'static str, usize, usize, usize), (f64, u64)>,
}

impl<B: Backend> Timed<B> {
    fn t<R>(
        &mut self,
        name: (&'static str, usize, usize, usize),
        f: impl FnOnce(&mut B) -> R,
    ) -> R {
        let s = Instant::now();
        let r = f(&mut self.inner);
        let e = s.elapsed().as_secs_f64();
        let slot = self.times.entry(name).or_default();
        slot.0 += e;
        slot.1 += 1;
        r
    }
}

impl<B: HostBackend> HostBackend for Timed<B> {
    fn storage(&self) -> &[B::Elem] {
        self.inner.storage()
    }
    fn storage_mut(&mut self) -> &mut [B::Elem] {
        self.inner.storage_mut()
    }
}

impl<B: Backend> Backend for Timed<B> {
    type Elem = B::Elem;
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn align(&self) -> usize {
        self.inner.align()
    }
    fn host_dependent(&mut self, what: &'static str) -> Result<()> {
        self.inner.host_dependent(what)
    }
    fn write(&mut self, o: usize, s: &[B::Elem]) -> Result<()> {
        self.t(("write", s.len(), 0, 0), |b| b.write(o, s))
    }
    fn read(&self, o: usize, d: &mut [B::Elem]) -> Result<()> {
        self.inner.read(o, d)
    }
    fn fill(&mut self, o: usize, n: usize, v: B::Elem) -> Result<()> {
        self.t(("fill", n, 0, 0), |b| b.fill(o, n, v))
    }
    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, n: usize) -> Result<()> {
        self.t((op.name(), n, 0, 0), |b| b.unary(op, x, y, n))
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
        self.t(("unary_bw", n, 0, 0), |b| {
            b.unary_backward(op, x, y, dy, dx, n)
        })
    }
    fn binary(&mut self, op: BinaryOp, a: View, bb: View, y: View) -> Result<()> {
        self.t((op.name(), y.len(), 0, 0), |b| b.binary(op, a, bb, y))
    }
    fn binary_backward(
        &mut self,
        op: BinaryOp,
        s: Side,
        a: View,
        bb: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        self.t(("binary_bw", dy.len(), 0, 0), |b| {
            b.binary_backward(op, s, a, bb, dy, dx)
        })
    }
    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.t(
            (
                ["gemm", "gemm ta", "gemm tb", "gemm ta tb"]
                    [g.a_trans as usize + 2 * g.b_trans as usize],
                g.m,
                g.n,
                g.k,
            ),
            |b| b.gemm(g),
        )
    }
    fn conv(&mut self, c: &ConvCall) -> Result<bool> {
        let name = match c.pass {
            ConvPass::Forward { .. } => "conv",
            ConvPass::WeightGrad { .. } => "conv dw",
            ConvPass::InputGrad { .. } => "conv dx",
        };
        self.t((name, c.images, c.channels, c.out_channels), |b| b.conv(c))
    }
    fn copy_strided(&mut self, sp: &Shape, s: Strided, d: Strided, acc: bool) -> Result<()> {
        self.t(
            (
                if acc { "copy acc" } else { "copy" },
                sp.dim(0),
                sp.dim(1),
                0,
            ),
            |b| b.copy_strided(sp, s, d, acc),
        )
    }
    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.t((op.name(), r.n, 0, 0), |b| b.reduce(op, r, x, y))
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
        self.t(("reduce_bw", r.n, 0, 0), |b| {
            b.reduce_backward(op, r, x, y, dy, dx)
        })
    }
    fn softmax(&mut self, l: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.t(("softmax", 0, 0, 0), |b| b.softmax(l, r, x, y))
    }
    fn softmax_backward(
        &mut self,
        l: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.t(("softmax_bw", 0, 0, 0), |b| {
            b.softmax_backward(l, r, y, dy, dx)
        })
    }
    fn loss(&mut self, op: LossOp, c: usize, p: View, t: View, y: usize) -> Result<()> {
        self.t((op.name(), p.len(), 0, 0), |b| b.loss(op, c, p, t, y))
    }
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
        self.t(("loss_bw", p.len(), 0, 0), |b| {
            b.loss_backward(op, l, c, p, t, dy, dx)
        })
    }
    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.t(("sgd", 0, 0, 0), |b| b.sgd(u))
    }
    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        self.t(("adam", u.len, 0, 0), |b| b.adam(u))
    }
    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.t(("rms", u.len, 0, 0), |b| b.rms(u))
    }
    fn sum_squares(&mut self, o: usize, n: usize) -> Result<f64> {
        self.t(("sum_squares", n, 0, 0), |b| b.sum_squares(o, n))
    }
    fn scale(&mut self, o: usize, n: usize, f: B::Elem) -> Result<()> {
        self.t(("scale", n, 0, 0), |b| b.scale(o, n, f))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let w = args.first().map(String::as_str).unwrap_or("W-digits");
    let be = args.get(1).map(String::as_str).unwrap_or("parallel");
    let steps: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let (sizes, batch, mse): (&[usize], usize, bool) = match w {
        "W-seed" => (&[8, 10, 1], 64, true),
        "W-digits" => (&[64, 32, 10], 32, false),
        "W-mnist" => (&[784, 256, 128, 10], 128, false),
        _ => (&[1024, 4096, 4096, 1024], 256, true),
    };
    let mut mem = vec![
        0f32;
        120_000_000.min(
            mote::plan::mlp(sizes, batch, mote::plan::Loss::Mse, mote::plan::Opt::Adam) + 16
        )
    ];
    match be {
        "cpu" => go(
            Timed {
                inner: Cpu::new(&mut mem),
                times: BTreeMap::new(),
            },
            sizes,
            batch,
            mse,
            steps,
        ),
        _ => go(
            Timed {
                inner: Parallel::new(&mut mem),
                times: BTreeMap::new(),
            },
            sizes,
            batch,
            mse,
            steps,
        ),
    }
}

fn go<B: Backend<Elem = f32>>(b: Timed<B>, sizes: &[usize], batch: usize, mse: bool, steps: u64) {
    let mut tape = Tape::<Timed<B>, 32>::with_backend(b);
    let mut rng = Rng::new(1);
    let layers: Vec<Linear> = sizes
        .windows(2)
        .map(|p| Linear::new(&mut tape, p[0], p[1], &mut rng).unwrap())
        .collect();
    let mut opt = Adam::new(&mut tape, AdamConfig::default()).unwrap();
    let mark = tape.mark();
    let (i, o) = (sizes[0], *sizes.last().unwrap());
    let xs: Vec<f32> = (0..batch * i)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let ys: Vec<f32> = (0..batch * o)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(o as u32) as usize).collect();
    let mut step = |tape: &mut Tape<Timed<B>, 32>| {
        tape.rewind(mark).unwrap();
        let x = tape.input(&[batch, i], &xs).unwrap();
        let t = if mse {
            tape.input(&[batch, o], &ys).unwrap()
        } else {
            tape.labels(&labels).unwrap()
        };
        let mut h = x;
        for (k, l) in layers.iter().enumerate() {
            h = l.forward(tape, h).unwrap();
            if k + 1 < layers.len() {
                h = tape.relu(h).unwrap();
            }
        }
        let loss = if mse {
            tape.mse(h, t).unwrap()
        } else {
            tape.cross_entropy(h, t).unwrap()
        };
        tape.backward(loss).unwrap();
        opt.step(tape).unwrap();
    };
    for _ in 0..3 {
        step(&mut tape);
    }
    tape.backend_mut().times.clear();
    let s = Instant::now();
    for _ in 0..steps {
        step(&mut tape);
    }
    let total = s.elapsed().as_secs_f64() / steps as f64;
    let mut v: Vec<_> = tape
        .backend()
        .times
        .iter()
        .map(|(k, &(t, n))| (t / steps as f64, n / steps, *k))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let sum: f64 = v.iter().map(|x| x.0).sum();
    println!(
        "per step {:.2} us (backend calls {:.2} us)",
        total * 1e6,
        sum * 1e6
    );
    for (t, n, k) in v {
        println!(
            "{:>10.2} us  x{n:<3} {} {}x{}x{}",
            t * 1e6,
            k.0,
            k.1,
            k.2,
            k.3
        );
    }
}
