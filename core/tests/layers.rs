//! Normalisation, dropout and embedding layers: forward values against direct computations,
//! gradient checks (f64 central differences), training/evaluation modes, and a small CNN on the
//! bundled digits.

mod common;

use mote::gradcheck::{check, GradCheck};
use mote::{
    Adam, AdamConfig, BatchNorm, Conv2d, ConvConfig, Cpu, Dropout, Embedding, Flatten, LayerNorm,
    Linear, MaxPool2d, Module, Optimizer, PoolConfig, Relu, Result, Rng, Tape, Var,
};
use proptest::prelude::*;

const NODES: usize = 64;
type T<'m> = Tape<Cpu<'m, f64>, NODES>;

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn assert_grads(
    inputs: &[(&[usize], &[f64])],
    f: impl for<'m> FnMut(&mut T<'m>, &[Var]) -> Result<Var>,
) -> std::result::Result<(), TestCaseError> {
    let mut mem = vec![0.0f64; 1 << 16];
    let report = check::<NODES>(&mut mem, inputs, GradCheck::default(), f)
        .map_err(|e| TestCaseError::fail(format!("op failed: {e}")))?;
    prop_assert!(report.passed(), "{report:?}");
    prop_assert!(report.checked > 0);
    Ok(())
}

/// A batch-norm layer whose weight and bias are the checker's inputs 1 and 2.
fn bn_with(t: &mut T<'_>, v: &[Var], training: bool) -> Result<BatchNorm> {
    let c = v[1].numel();
    let mut bn = BatchNorm::new(t, c)?;
    bn.weight = v[1];
    bn.bias = v[2];
    bn.training = training;
    Ok(bn)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn batch_norm_gradients(n in 2usize..=3, c in 1usize..=3, rest in prop::collection::vec(1usize..=3, 0..=2), training in any::<bool>(), seed in any::<u64>()) {
        let mut dims = vec![n, c];
        dims.extend(rest);
        let x = values(dims.iter().product(), seed);
        let g = values(c, seed ^ 1);
        let b = values(c, seed ^ 2);
        assert_grads(&[(&dims, &x), (&[c], &g), (&[c], &b)], |t, v| {
            let bn = bn_with(t, v, training)?;
            bn.forward(t, v[0])
        })?;
    }

    #[test]
    fn layer_norm_gradients(dims in prop::collection::vec(1usize..=3, 1..=3), d in 2usize..=4, seed in any::<u64>()) {
        let mut dims = dims;
        dims.push(d);
        let x = values(dims.iter().product(), seed);
        let g = values(d, seed ^ 1);
        let b = values(d, seed ^ 2);
        assert_grads(&[(&dims, &x), (&[d], &g), (&[d], &b)], |t, v| {
            let mut ln = LayerNorm::new(t, d)?;
            ln.weight = v[1];
            ln.bias = v[2];
            ln.forward(t, v[0])
        })?;
    }

    /// Over several trailing axes (PyTorch's `nn.LayerNorm([C, H, W])`): the gradients, and
    /// the values of one axis of their product.
    #[test]
    fn layer_norm_over_several_axes(lead in 1usize..=3, norm in prop::collection::vec(1usize..=3, 2..=3), seed in any::<u64>()) {
        let mut dims = vec![lead];
        dims.extend(&norm);
        let d: usize = norm.iter().product();
        let x = values(dims.iter().product(), seed);
        let g = values(d, seed ^ 1);
        let b = values(d, seed ^ 2);
        assert_grads(&[(&dims, &x), (&norm, &g), (&norm, &b)], |t, v| {
            let mut ln = LayerNorm::with_shape(t, &norm)?;
            ln.weight = v[1];
            ln.bias = v[2];
            ln.forward(t, v[0])
        })?;
        let mut mem = vec![0f64; 1 << 14];
        let mut t = T::new(&mut mem);
        let several = LayerNorm::with_shape(&mut t, &norm).unwrap();
        let one = LayerNorm::new(&mut t, d).unwrap();
        for (p, v) in [(several.weight, &g), (several.bias, &b), (one.weight, &g), (one.bias, &b)] {
            t.write(p, v).unwrap();
        }
        let xv = t.input(&dims, &x).unwrap();
        let flat = t.input(&[lead, d], &x).unwrap();
        let (ys, yo) = (several.forward(&mut t, xv).unwrap(), one.forward(&mut t, flat).unwrap());
        let (sy, sx) = (ys.shape(), xv.shape());
        prop_assert_eq!(sy.dims(), sx.dims());
        prop_assert_eq!(t.data(ys).unwrap(), t.data(yo).unwrap());
        prop_assert!(LayerNorm::with_shape(&mut t, &[]).is_err());
        // A trailing shape other than the layer's is refused (its last axis is longer).
        let other = t.full(&[lead, d + 1], 0.0).unwrap();
        prop_assert!(several.forward(&mut t, other).is_err());
    }

    #[test]
    fn dropout_gradients(n in 1usize..=20, p in 0.0f32..0.9, seed in any::<u64>()) {
        let x = values(n, seed);
        // A fresh layer with the same seed on every call: the same mask each time.
        assert_grads(&[(&[n], &x)], |t, v| Dropout::new(p, seed)?.forward(t, v[0]))?;
    }

    #[test]
    fn embedding_gradients(vocab in 1usize..=5, dim in 1usize..=4, idx_dims in prop::collection::vec(1usize..=3, 1..=3), seed in any::<u64>()) {
        // Indices of rank 1 to 3 (a batch of sequences, say), repeats included.
        let mut rng = Rng::new(seed ^ 5);
        let n: usize = idx_dims.iter().product();
        let idx: Vec<f64> = (0..n).map(|_| f64::from(rng.below(vocab as u32))).collect();
        let w = values(vocab * dim, seed);
        assert_grads(&[(&[vocab, dim], &w)], |t, v| {
            let i = t.input(&idx_dims, &idx)?;
            t.embedding(v[0], i)
        })?;
    }
}

/// Batch statistics normalise each channel; the running statistics move by the momentum
/// (unbiased variance); evaluation mode uses them.
#[test]
fn batch_norm_statistics_and_modes() {
    let mut mem = vec![0f64; 4096];
    let mut t = T::new(&mut mem);
    let bn = BatchNorm::new(&mut t, 2).unwrap();
    // [N=2, C=2, L=2]: channel 0 holds 1, 2, 3, 4; channel 1 holds 10, 10, 10, 14.
    let x = t
        .input(&[2, 2, 2], &[1., 2., 10., 10., 3., 4., 10., 14.])
        .unwrap();
    let y = bn.forward(&mut t, x).unwrap();
    let out = t.data(y).unwrap().to_vec();
    // Channel 0: mean 2.5, biased var 1.25.
    let s0 = (1.25f64 + 1e-5).sqrt();
    for (got, v) in [(out[0], 1.), (out[1], 2.), (out[4], 3.), (out[5], 4.)] {
        assert!((got - (v - 2.5) / s0).abs() < 1e-6, "{got}");
    }
    // Running: mean 0.9*0 + 0.1*2.5; var 0.9*1 + 0.1*(1.25 * 4/3).
    let rm = t.data(bn.running_mean).unwrap().to_vec();
    let rv = t.data(bn.running_var).unwrap().to_vec();
    assert!(
        (rm[0] - 0.25).abs() < 1e-7 && (rm[1] - 1.1).abs() < 1e-7,
        "{rm:?}"
    );
    assert!(
        (rv[0] - (0.9 + 0.1 * 1.25 * 4.0 / 3.0)).abs() < 1e-7,
        "{rv:?}"
    );
    // Evaluation: (x - running_mean) / sqrt(running_var + eps), through the tuple too.
    let mut model = (bn, Relu);
    model.set_training(false);
    let y = model.0.forward(&mut t, x).unwrap();
    let v = t.data(y).unwrap()[0];
    assert!(
        (v - (1.0 - 0.25) / (rv[0] + 1e-5).sqrt()).abs() < 1e-6,
        "{v}"
    );
    assert_eq!(
        t.data(model.0.running_mean).unwrap(),
        &rm[..],
        "eval mode keeps the statistics"
    );
}

#[test]
fn dropout_zeroes_and_scales_in_training_only() {
    let mut mem = vec![0f32; 1 << 14];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let mut d = Dropout::new(0.25, 7).unwrap();
    let x = t.input(&[4000], &[1.0; 4000]).unwrap();
    let y = d.forward(&mut t, x).unwrap();
    let out = t.data(y).unwrap();
    let zeros = out.iter().filter(|&&v| v == 0.0).count();
    assert!(out
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    assert!(
        (800..1200).contains(&zeros),
        "{zeros} zeros of 4000 at p = 0.25"
    );
    d.set_training(false);
    assert_eq!(d.forward(&mut t, x).unwrap(), x);
    assert!(Dropout::new(1.0, 0).is_err());
}

#[test]
fn embedding_looks_up_rows() {
    let mut mem = vec![0f32; 256];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let mut rng = Rng::new(1);
    let e = Embedding::new(&mut t, 3, 2, &mut rng).unwrap();
    t.write(e.weight, &[0., 1., 10., 11., 20., 21.]).unwrap();
    let i = t.labels(&[2, 0, 2]).unwrap();
    let y = e.forward(&mut t, i).unwrap();
    assert_eq!(y.shape().dims(), &[3, 2]);
    assert_eq!(t.data(y).unwrap(), &[20., 21., 0., 1., 20., 21.]);
    let bad = t.labels(&[3]).unwrap();
    let before = t.nodes_used();
    assert!(e.forward(&mut t, bad).is_err());
    assert_eq!(t.nodes_used(), before);
}

/// PyTorch's `padding_idx`: the padding row starts as zeros (the other rows are
/// `Embedding::new`'s, drawn in the same order), gets no gradient where it is looked up, and so
/// stays zeros through an Adam step; the other rows' gradients accumulate as without padding.
#[test]
fn embedding_padding_row_gets_no_gradient() {
    let mut mem = vec![0f32; 512];
    let mut t = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let plain = Embedding::new(&mut t, 4, 3, &mut Rng::new(5)).unwrap();
    let e = Embedding::with_padding(&mut t, 4, 3, 1, &mut Rng::new(5)).unwrap();
    let (p, q) = (
        t.data(plain.weight).unwrap().to_vec(),
        t.data(e.weight).unwrap().to_vec(),
    );
    assert_eq!(&q[3..6], &[0.0; 3]);
    assert_eq!((&q[..3], &q[6..]), (&p[..3], &p[6..]));
    let mut adam = mote::Adam::new(&mut t, AdamConfig::default()).unwrap();
    let start = t.mark();
    let i = t.labels(&[1, 2, 1, 2, 0]).unwrap();
    let y = e.forward(&mut t, i).unwrap();
    assert_eq!(&t.data(y).unwrap()[..3], &[0.0; 3]);
    let loss = t.sum(y).unwrap();
    t.backward(loss).unwrap();
    let g = t.grad_data(e.weight).unwrap().unwrap().to_vec();
    assert_eq!(g, [1., 1., 1., 0., 0., 0., 2., 2., 2., 0., 0., 0.]);
    adam.step(&mut t).unwrap();
    assert_eq!(&t.data(e.weight).unwrap()[3..6], &[0.0; 3]);
    assert_ne!(&t.data(e.weight).unwrap()[6..9], &q[6..9]);
    t.rewind(start).unwrap();
    // A padding row outside the table is refused, by the layer and by the op.
    assert!(matches!(
        Embedding::with_padding(&mut t, 4, 3, 4, &mut Rng::new(5)),
        Err(mote::Error::IndexOutOfRange {
            index: 4,
            bound: 4,
            ..
        })
    ));
    let i = t.labels(&[0]).unwrap();
    assert!(matches!(
        t.embedding_padded(e.weight, i, Some(9)),
        Err(mote::Error::IndexOutOfRange {
            index: 9,
            bound: 4,
            ..
        })
    ));
}

/// Each activation layer applies its op: the same values as the tape's op, for inputs on
/// both sides of every kink.
#[test]
fn activation_layers_apply_their_ops() {
    use mote::ops::unary::UnaryOp;
    use mote::{
        Elu, Gelu, GeluTanh, Hardsigmoid, Hardswish, LeakyRelu, Relu6, Sigmoid, Silu, Softplus,
        Tanh,
    };
    fn same<M: Module>(layer: M, op: UnaryOp) {
        let mut mem = vec![0f32; 256];
        let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
        let xs = [-7.0, -3.0, -0.5, 0.0, 0.5, 3.0, 6.5];
        let x = t.input(&[7], &xs).unwrap();
        let a = layer.forward(&mut t, x).unwrap();
        let b = t.unary(op, x).unwrap();
        let (a, b) = (t.data(a).unwrap().to_vec(), t.data(b).unwrap().to_vec());
        assert_eq!(a, b, "{}", op.name());
        let want: Vec<f32> = xs.iter().map(|&x| op.apply(x)).collect();
        assert_eq!(a, want, "{}", op.name());
    }
    same(Relu, UnaryOp::Relu);
    same(Relu6, UnaryOp::Relu6);
    same(LeakyRelu(0.2), UnaryOp::LeakyRelu(0.2));
    same(Elu(0.7), UnaryOp::Elu(0.7));
    same(Sigmoid, UnaryOp::Sigmoid);
    same(Tanh, UnaryOp::Tanh);
    // PyTorch's names: `Gelu` is `nn.GELU()` (exact), `GeluTanh` `nn.GELU(approximate="tanh")`.
    same(Gelu, UnaryOp::GeluErf);
    same(GeluTanh, UnaryOp::Gelu);
    same(Silu, UnaryOp::Silu);
    same(Softplus, UnaryOp::Softplus);
    same(Hardsigmoid, UnaryOp::Hardsigmoid);
    same(Hardswish, UnaryOp::Hardswish);
    // PyTorch's `nn.Softplus(beta=2)`: ln(1 + e^(2x)) / 2, and x where 2x is above 20.
    let mut mem = vec![0f64; 256];
    let mut t = T::new(&mut mem);
    let xs = [-1.0, 0.0, 1.0, 9.0, 12.0];
    let x = t.input(&[5], &xs).unwrap();
    let y = mote::SoftplusBeta(2.0).forward(&mut t, x).unwrap();
    let want = xs.map(|x: f64| {
        if 2.0 * x > 20.0 {
            x
        } else {
            (2.0 * x).exp().ln_1p() / 2.0
        }
    });
    for (g, w) in t.data(y).unwrap().iter().zip(want) {
        assert!((g - w).abs() < 1e-15, "{g} vs {w}");
    }
    assert!(t.softplus_beta(x, 0.0).is_err() && t.softplus_beta(x, f32::INFINITY).is_err());
}

/// A small CNN (conv 3x3 -> ReLU -> max-pool 2 -> conv 3x3 -> ReLU -> max-pool 2 -> linear)
/// on the 8x8 digits, on the reference backend: >= 97% held out.
#[test]
fn digits_cnn_reaches_97_percent() {
    let (xs, ys) = common::digits();
    let n = ys.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(42);
    rng.shuffle(&mut order);
    let (test, train) = order.split_at(n / 5);
    const B: usize = 32;
    let mut mem = vec![0f32; 1 << 19];
    let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
    let same = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let model = (
        Conv2d::new(&mut tape, 1, 16, [3, 3], same, 1, true, &mut rng).unwrap(),
        Relu,
        MaxPool2d(PoolConfig::square(2)),
        Conv2d::new(&mut tape, 16, 32, [3, 3], same, 1, true, &mut rng).unwrap(),
        Relu,
        MaxPool2d(PoolConfig::square(2)),
        Flatten,
        Linear::new(&mut tape, 128, 10, &mut rng).unwrap(),
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
    let mut train = train.to_vec();
    let mut bx = vec![0f32; B * 64];
    let mut by = vec![0usize; B];
    for _epoch in 0..20 {
        rng.shuffle(&mut train);
        for batch in train.chunks(B) {
            let b = batch.len();
            for (k, &i) in batch.iter().enumerate() {
                bx[k * 64..(k + 1) * 64].copy_from_slice(&xs[i * 64..(i + 1) * 64]);
                by[k] = ys[i];
            }
            tape.rewind(start).unwrap();
            let x = tape.input(&[b, 1, 8, 8], &bx[..b * 64]).unwrap();
            let y = tape.labels(&by[..b]).unwrap();
            let logits = model.forward(&mut tape, x).unwrap();
            let loss = tape.cross_entropy(logits, y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
        }
    }
    let mut correct = 0;
    for chunk in test.chunks(64) {
        tape.rewind(start).unwrap();
        let data: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| xs[i * 64..(i + 1) * 64].iter().copied())
            .collect();
        let logits = tape
            .no_grad(|t| {
                let x = t.input(&[chunk.len(), 1, 8, 8], &data)?;
                model.forward(t, x)
            })
            .unwrap();
        let out = tape.data(logits).unwrap();
        for (row, &i) in out.chunks(10).zip(chunk) {
            let pred = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            correct += (pred == ys[i]) as usize;
        }
    }
    let acc = correct as f64 / test.len() as f64;
    eprintln!("digits CNN held-out accuracy: {acc:.4}");
    assert!(acc >= 0.97, "held-out accuracy {acc}");
}

/// GroupNorm against PyTorch's definition written out in f64 (each sample's group normalised
/// with the biased variance, then the per-channel affine), at ranks 2 to 4, a batch of one
/// included; its gradients (input, weight, bias); and its refusals.
#[test]
fn group_norm_matches_pytorch() {
    use mote::GroupNorm;
    let mut rng = mote::Rng::new(4);
    for (dims, groups) in [
        (vec![1usize, 6], 3usize),
        (vec![3, 4], 1),
        (vec![2, 6, 5], 2),
        (vec![2, 4, 3, 3], 4),
        (vec![1, 6, 2, 2], 3),
    ] {
        let (n, c) = (dims[0], dims[1]);
        let numel: usize = dims.iter().product();
        let per_channel = numel / (n * c);
        let x: Vec<f64> = (0..numel).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let w: Vec<f64> = (0..c).map(|_| rng.uniform(0.5, 1.5)).collect();
        let b: Vec<f64> = (0..c).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut mem = vec![0.0f64; 1 << 14];
        let mut t = T::new(&mut mem);
        let mut gn = GroupNorm::new(&mut t, groups, c).unwrap();
        assert_eq!(t.data(gn.weight).unwrap(), &vec![1.0; c][..]);
        assert_eq!(t.data(gn.bias).unwrap(), &vec![0.0; c][..]);
        gn.weight = t.param(&[c], &w).unwrap();
        gn.bias = t.param(&[c], &b).unwrap();
        let vx = t.input(&dims, &x).unwrap();
        let y = gn.forward(&mut t, vx).unwrap();
        let per_group = c / groups * per_channel;
        let mut want = vec![0.0; numel];
        for s in 0..n {
            for g in 0..groups {
                let at = (s * groups + g) * per_group;
                let v = &x[at..at + per_group];
                let m = v.iter().sum::<f64>() / per_group as f64;
                let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / per_group as f64;
                for (k, a) in v.iter().enumerate() {
                    let ch = (at + k) / per_channel % c;
                    want[at + k] = (a - m) / (var + f64::from(1e-5f32)).sqrt() * w[ch] + b[ch];
                }
            }
        }
        let got = t.data(y).unwrap();
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-12, "{dims:?}: {got:?} vs {want:?}");
        }
        let inputs: [(&[usize], &[f64]); 3] = [(&dims, &x), (&[c], &w), (&[c], &b)];
        let mut mem = vec![0.0f64; 1 << 14];
        let report = check::<NODES>(&mut mem, &inputs, GradCheck::default(), |t, v| {
            let layer = GroupNorm {
                groups,
                weight: v[1],
                bias: v[2],
                eps: 1e-5,
            };
            layer.forward(t, v[0])
        })
        .unwrap();
        assert!(report.passed(), "{dims:?}: {report:?}");
    }
    let mut mem = vec![0.0f64; 1 << 12];
    let mut t = T::new(&mut mem);
    for (g, c) in [(0, 4), (3, 4)] {
        assert!(matches!(
            GroupNorm::new(&mut t, g, c),
            Err(mote::Error::InvalidArgument { .. })
        ));
    }
    assert_eq!((t.nodes_used(), t.used()), (0, 0));
    let gn = GroupNorm::new(&mut t, 2, 4).unwrap();
    for dims in [vec![2usize, 6, 3], vec![4], vec![1, 4, 1, 1, 1]] {
        let n: usize = dims.iter().product();
        let Ok(x) = t.input(&dims, &vec![0.0; n]) else {
            continue;
        };
        let at = (t.nodes_used(), t.used());
        assert!(matches!(
            gn.forward(&mut t, x),
            Err(mote::Error::ShapeMismatch { .. })
        ));
        assert_eq!((t.nodes_used(), t.used()), at);
    }
}
