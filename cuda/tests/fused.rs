//! The launches `Options::fuse` merges in a linear layer's backward and in the loss
//! (`src/pending.rs`): an activation's or a loss's gradient kernel with the column sums of the
//! bias gradient after it (`unary_bwd_colsum`, `loss_bwd_colsum`), and the bias a loss's
//! forward adds itself. Two-layer stacks (and one layer applied twice, whose bias gradient is
//! then added to) against the reference backend and against the same backend with fusion off,
//! over the shapes where the kernels change course: one row, fewer than 64 rows (column sums in
//! row order), 64 and more (split over 32 threads), more than 32 columns (several blocks),
//! cross-entropy over more than 32 classes (not fused), MSE, BCE and label smoothing; and the
//! loss's forward in its gradient's launch (one block), or alone where the loss is read first.
//!
//! Tolerances: the loss within `1e-5` relative, gradients within `1e-5 + 1e-4 |x|` of the
//! reference (cuBLAS sums products in another order); fused against unfused within
//! `1e-6 + 1e-6 |x|` (the same kernels' arithmetic in the same order: normally equal, a product
//! with the bias added after it instead of before may round differently), the loss within
//! `1e-6` relative (summed in another order when its forward shares its gradient's launch).

mod common;

use common::{close, gpu_with};
use mote::ops::unary::UnaryOp;
use mote::{Backend, Cpu, Linear, Module, Rng, Tape, Var};
use mote_cuda::{Cuda, Options};

const FLOATS: usize = 1 << 16;

#[derive(Clone, Copy, Debug)]
enum Loss {
    Mse,
    Ce(f32),
    Bce,
    /// Cross-entropy with PyTorch's `ignore_index` (-100) on every third row.
    CeIgnore,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    rows: usize,
    inp: usize,
    hid: usize,
    out: usize,
    act: UnaryOp,
    loss: Loss,
    /// One square layer applied twice (`inp == hid == out`).
    shared: bool,
    /// Read the loss before the backward (which launches its held-back forward alone).
    peek: bool,
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The loss and every parameter's gradient after one forward and backward.
fn run<B: Backend<Elem = f32>, const N: usize>(t: &mut Tape<B, N>, c: Case) -> (f32, Vec<f32>) {
    let mut rng = Rng::new(7);
    let l1 = Linear::new(t, c.inp, c.hid, &mut rng).unwrap();
    let l2 = if c.shared {
        None
    } else {
        Some(Linear::new(t, c.hid, c.out, &mut rng).unwrap())
    };
    let x = t
        .input(&[c.rows, c.inp], &values(c.rows * c.inp, 1))
        .unwrap();
    let h = l1.forward(t, x).unwrap();
    let a = t.unary(c.act, h).unwrap();
    let o = match &l2 {
        Some(l) => l.forward(t, a),
        None => l1.forward(t, a),
    }
    .unwrap();
    let loss = match c.loss {
        Loss::Mse => {
            let y = t
                .input(&[c.rows, c.out], &values(c.rows * c.out, 2))
                .unwrap();
            t.mse(o, y)
        }
        Loss::Bce => {
            let p: Vec<f32> = values(c.rows * c.out, 3)
                .iter()
                .map(|v| (v + 1.0) / 2.0)
                .collect();
            let y = t.input(&[c.rows, c.out], &p).unwrap();
            t.bce_with_logits(o, y)
        }
        Loss::CeIgnore => {
            let labels: Vec<f32> = (0..c.rows)
                .map(|i| {
                    if i % 3 == 1 {
                        -100.0
                    } else {
                        ((i * 7 + 3) % c.out) as f32
                    }
                })
                .collect();
            let y = t.input(&[c.rows], &labels).unwrap();
            t.cross_entropy_ignore(o, y, -100, 0.0)
        }
        Loss::Ce(s) => {
            let labels: Vec<usize> = (0..c.rows).map(|i| (i * 7 + 3) % c.out).collect();
            let y = t.labels(&labels).unwrap();
            if s == 0.0 {
                t.cross_entropy(o, y)
            } else {
                t.cross_entropy_smoothed(o, y, s)
            }
        }
    }
    .unwrap();
    let early = if c.peek { t.item(loss).unwrap() } else { 0.0 };
    t.backward(loss).unwrap();
    let ps: Vec<Var> = t.params().collect();
    let mut grads = Vec::new();
    for p in ps {
        let mut v = vec![0f32; p.numel()];
        t.read_grad(p, &mut v).unwrap();
        grads.extend(v);
    }
    let l = t.item(loss).unwrap();
    if c.peek {
        assert_eq!(l.to_bits(), early.to_bits(), "{c:?}: the loss read twice");
    }
    (l, grads)
}

/// Launches per kernel family.
type Launches = Vec<(&'static str, usize)>;

/// The loss, the gradients and the launches per kernel family on the CUDA backend.
fn on_gpu(c: Case, fuse: bool) -> Option<(f32, Vec<f32>, Launches)> {
    let test = "fused_backward_matches_reference";
    let cuda = gpu_with(
        test,
        FLOATS,
        Options {
            fuse,
            ..Options::default()
        },
    )?;
    let mut t = Tape::<Cuda, 64>::with_backend(cuda);
    t.backend_mut().profile(true);
    let (loss, grads) = run(&mut t, c);
    let launches = t
        .backend_mut()
        .profile_take()
        .unwrap()
        .into_iter()
        .map(|(name, n, _)| (name, n))
        .collect();
    Some((loss, grads, launches))
}

fn count(launches: &[(&'static str, usize)], name: &str) -> usize {
    launches
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, k)| k)
        .sum()
}

#[test]
fn fused_backward_matches_reference() {
    let case = |rows, inp, hid, out, act, loss| Case {
        rows,
        inp,
        hid,
        out,
        act,
        loss,
        shared: false,
        peek: false,
    };
    let cases = [
        case(1, 3, 5, 10, UnaryOp::Relu, Loss::Ce(0.0)),
        case(7, 6, 5, 10, UnaryOp::Tanh, Loss::Ce(0.0)),
        case(64, 8, 40, 10, UnaryOp::Relu, Loss::Ce(0.1)),
        case(130, 8, 40, 32, UnaryOp::Gelu, Loss::Ce(0.0)),
        case(70, 8, 12, 40, UnaryOp::Relu, Loss::Ce(0.0)),
        case(64, 8, 10, 1, UnaryOp::Relu, Loss::Mse),
        case(9, 4, 33, 40, UnaryOp::Sigmoid, Loss::Mse),
        case(100, 5, 7, 3, UnaryOp::Tanh, Loss::Bce),
        case(64, 8, 40, 10, UnaryOp::Relu, Loss::CeIgnore),
        Case {
            shared: true,
            ..case(66, 6, 6, 6, UnaryOp::Relu, Loss::Mse)
        },
        Case {
            shared: true,
            ..case(5, 12, 12, 12, UnaryOp::Gelu, Loss::Ce(0.0))
        },
        Case {
            peek: true,
            ..case(20, 4, 8, 10, UnaryOp::Relu, Loss::Ce(0.0))
        },
        Case {
            peek: true,
            ..case(20, 4, 8, 2, UnaryOp::Tanh, Loss::Mse)
        },
    ];
    for c in cases {
        let what = format!("{c:?}");
        let Some((lf, gf, nf)) = on_gpu(c, true) else {
            return;
        };
        let (lu, gu, nu) = on_gpu(c, false).unwrap();
        let mut mem = vec![0f32; FLOATS];
        let mut ct = Tape::<Cpu<f32>, 64>::new(&mut mem);
        let (lc, gc) = run(&mut ct, c);
        assert!(
            (lf - lc).abs() <= 1e-5 * lc.abs().max(1.0),
            "{what}: loss gpu {lf} vs cpu {lc}"
        );
        close(&format!("{what}: fused vs cpu"), &gf, &gc, 1e-4, 1e-5);
        // Not bit for bit on a GPU: the fused step adds the bias after a `beta = 0` product,
        // the unfused one runs the product with `beta = 1` over the copied bias (cuBLAS may
        // pick another kernel and rounds the sum once, not twice), and NVRTC contracts
        // multiply-adds that the host compiler may not.
        close(&format!("{what}: fused vs unfused"), &gf, &gu, 1e-5, 1e-5);
        assert!(
            (lf - lu).abs() <= 1e-5 * lu.abs().max(1.0),
            "{what}: loss fused {lf} vs unfused {lu}"
        );
        if matches!(c.loss, Loss::CeIgnore) {
            // Composed after the fused loss (its value is read by the next node): the launch
            // counts below are the plain loss's.
            continue;
        }
        // Where the launches went: every bias gradient taken into a gradient kernel, but
        // cross-entropy's over more than 32 classes.
        let total = |l: &[(&str, usize)]| l.iter().map(|(_, k)| k).sum::<usize>();
        let loss_fused = !matches!(c.loss, Loss::Ce(_)) || c.out <= 32;
        let (unary, loss) = (
            count(&nf, "unary_bwd_colsum"),
            count(&nf, "loss_bwd_colsum"),
        );
        eprintln!(
            "{what}: {} launches fused, {} unfused; {unary} unary_bwd_colsum, {loss} \
             loss_bwd_colsum",
            total(&nf),
            total(&nu)
        );
        assert_eq!(unary, 1, "{what}: {nf:?}");
        // The loss's forward taken into its gradient's launch where that is one block, and
        // the loss not read before.
        let one_launch = loss_fused && c.out <= 32 && !c.peek;
        assert_eq!(
            count(&nf, "loss_fwd"),
            usize::from(!one_launch),
            "{what}: {nf:?}"
        );
        assert_eq!(loss, usize::from(loss_fused), "{what}: {nf:?}");
        assert_eq!(
            count(&nu, "unary_bwd_colsum") + count(&nu, "loss_bwd_colsum"),
            0
        );
        assert!(total(&nf) < total(&nu), "{what}: {nf:?} vs {nu:?}");
    }
}

/// A bad label behind a held-back loss: a read of something else before the loss's kernel
/// runs does not use up the check, and the read of the loss (which launches it) reports the
/// label; so does the backward's launch, after the report was cleared.
#[test]
fn bad_label_behind_held_loss_is_reported() {
    let test = "bad_label_behind_held_loss_is_reported";
    let Some(cuda) = gpu_with(test, FLOATS, Options::default()) else {
        return;
    };
    let mut t = Tape::<Cuda, 64>::with_backend(cuda);
    let mut rng = Rng::new(3);
    let l = Linear::new(&mut t, 4, 10, &mut rng).unwrap();
    let x = t.input(&[6, 4], &values(24, 5)).unwrap();
    let o = l.forward(&mut t, x).unwrap();
    let y = t.labels(&[1, 2, 3, 12, 4, 5]).unwrap();
    let loss = t.cross_entropy(o, y).unwrap();
    // The weights, read while the loss's forward is held for its gradient's launch.
    let w = t.params().next().unwrap();
    let mut v = vec![0f32; w.numel()];
    t.read(w, &mut v).unwrap();
    let read = t.item(loss);
    assert!(
        matches!(read, Err(mote::Error::IndexOutOfRange { index: 12, .. })),
        "{test}: the loss: {read:?}"
    );
    t.backward(loss).unwrap();
    let read = t.read_grad(w, &mut v);
    assert!(
        matches!(read, Err(mote::Error::IndexOutOfRange { index: 12, .. })),
        "{test}: the gradient: {read:?}"
    );
}
