//! Attention against PyTorch's definitions written out in f64 (`F.scaled_dot_product_attention`
//! and `nn.MultiheadAttention(batch_first=True)`'s forward), gradient checks, and refusals.

use mote::gradcheck::{check, GradCheck};
use mote::nn::attention::MultiheadAttention;
use mote::{Cpu, Error, Linear, Module, Rng, Tape, Var};
use proptest::prelude::*;

type T<'m> = Tape<Cpu<'m, f64>, 256>;

fn draw(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.uniform(-1.5, 1.5)).collect()
}

/// `softmax(q k^T scale + mask) v` per batch, row by row; `mask(b, i, j)` is added, `causal`
/// adds -inf after the diagonal.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (b, l, s, e, ev): (usize, usize, usize, usize, usize),
    mask: &dyn Fn(usize, usize, usize) -> f64,
    causal: bool,
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; b * l * ev];
    for bi in 0..b {
        for i in 0..l {
            let mut w: Vec<f64> = (0..s)
                .map(|j| {
                    let dot: f64 = (0..e)
                        .map(|c| q[(bi * l + i) * e + c] * k[(bi * s + j) * e + c])
                        .sum();
                    let bias = if causal && j > i {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    };
                    dot * scale + mask(bi, i, j) + bias
                })
                .collect();
            let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = w.iter().map(|x| (x - m).exp()).sum();
            for x in &mut w {
                *x = (*x - m).exp() / z;
            }
            for c in 0..ev {
                out[(bi * l + i) * ev + c] = (0..s).map(|j| w[j] * v[(bi * s + j) * ev + c]).sum();
            }
        }
    }
    out
}

/// A reference transformer block: its input's values to its output's.
type RefBlock<'a> = dyn Fn(&[f64]) -> Vec<f64> + 'a;

/// Where a mask's value for (batch, query, key) lies.
type MaskIndex = dyn Fn(usize, usize, usize) -> usize;

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn scaled_dot_product_attention_matches_pytorch() {
    let mut rng = Rng::new(3);
    for case in 0..24 {
        let (l, s, e, ev) = (
            1 + case % 4,
            1 + (case / 2) % 5,
            1 + case % 3,
            1 + (case / 3) % 3,
        );
        // Ranks 2, 3 and 4: no leading dimension, [B], [B, H].
        let lead: &[usize] = [&[][..], &[2], &[2, 3]][case % 3];
        let b: usize = lead.iter().product();
        let dims = |a: usize, c: usize| [lead, &[a, c]].concat();
        let (q, k, v) = (
            draw(&mut rng, b * l * e),
            draw(&mut rng, b * s * e),
            draw(&mut rng, b * s * ev),
        );
        // A mask over [L, S] broadcast to every batch; or one per batch ([lead.., L, S]); or,
        // at rank 4, one row per head broadcast over the queries ([H, 1, S]).
        let kind = (case / 3) % 3;
        let m = draw(&mut rng, b * l * s);
        let (mdims, at): (Vec<usize>, Box<MaskIndex>) = match kind {
            1 => (dims(l, s), Box::new(move |bi, i, j| (bi * l + i) * s + j)),
            2 if lead.len() == 2 => (vec![3, 1, s], Box::new(move |bi, _, j| (bi % 3) * s + j)),
            _ => (vec![l, s], Box::new(move |_, i, j| i * s + j)),
        };
        let scale = if case % 4 == 0 { Some(0.3f64) } else { None };
        let sc = scale.unwrap_or(1.0 / (e as f64).sqrt());
        for (masked, causal) in [(false, false), (true, false), (false, true)] {
            let mut mem = vec![0.0f64; 1 << 14];
            let mut t = T::new(&mut mem);
            let vq = t.param(&dims(l, e), &q).unwrap();
            let vk = t.param(&dims(s, e), &k).unwrap();
            let vv = t.param(&dims(s, ev), &v).unwrap();
            let n: usize = mdims.iter().product();
            let mask = masked.then(|| t.param(&mdims, &m[..n]).unwrap());
            let y = t
                .scaled_dot_product_attention(vq, vk, vv, mask, causal, scale)
                .unwrap();
            assert_eq!(
                y.shape()
                    .dims()
                    .iter()
                    .map(|&d| d as usize)
                    .collect::<Vec<_>>(),
                dims(l, ev)
            );
            let f = |bi: usize, i: usize, j: usize| if masked { m[at(bi, i, j)] } else { 0.0 };
            let want = attention_ref(&q, &k, &v, (b, l, s, e, ev), &f, causal, sc);
            close(
                t.data(y).unwrap(),
                &want,
                &format!("case {case} mask {masked} causal {causal}"),
            );
        }
    }
}

/// The layer's parameters read back, and its forward written out: projections, heads,
/// attention per head, joined, projected.
#[test]
fn multihead_attention_matches_pytorch() {
    let mut rng = Rng::new(9);
    for case in 0..12 {
        let (n, l, s, h) = (
            1 + case % 2,
            1 + case % 3,
            1 + (case / 2) % 4,
            [1, 2, 4][case % 3],
        );
        let e = h * (1 + case % 2);
        let cross = case % 2 == 1;
        let s = if cross { s } else { l };
        let mut mem = vec![0.0f64; 1 << 15];
        let mut t = T::new(&mut mem);
        let mha = MultiheadAttention::new(&mut t, e, h, &mut rng).unwrap();
        let MhaParams { wi, bi, wo, bo } = MhaParams::read(&t, &mha);
        // PyTorch's initialisation: Xavier-uniform in_proj (its largest draw near the bound,
        // past a Linear's 1 / sqrt(E) for E >= 4), out_proj a Linear's, zero biases.
        let bound = (6.0 / (e + 3 * e) as f64).sqrt();
        let most = |w: &[f64]| w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(most(&wi) <= bound && bi.iter().all(|&b| b == 0.0));
        assert!(most(&wo) <= 1.0 / (e as f64).sqrt());
        if e >= 4 {
            assert!(
                most(&wi) > 1.0 / (e as f64).sqrt(),
                "{} vs {bound}",
                most(&wi)
            );
            assert!(most(&wo) > 0.5 / (e as f64).sqrt());
        }
        assert!(bo.iter().all(|&b| b == 0.0));
        // Non-zero biases for the comparison.
        let bi = draw(&mut rng, 3 * e);
        let bo = draw(&mut rng, e);
        t.write(mha.in_proj.bias.unwrap(), &bi).unwrap();
        t.write(mha.out_proj.bias.unwrap(), &bo).unwrap();
        let params = MhaParams { wi, bi, wo, bo };
        let x = draw(&mut rng, n * l * e);
        let kv = draw(&mut rng, n * s * e);
        let pad = draw(&mut rng, n * s);
        // attn_mask [L, S], or [N * heads, L, S] (batch-major, as PyTorch's).
        let am = draw(&mut rng, n * h * l * s);
        let start = t.mark();
        for (padded, masked, causal, three) in [
            (false, false, false, false),
            (true, true, false, false),
            (false, true, false, true),
            (false, false, true, false),
            (true, false, true, false),
            (true, true, true, true),
        ] {
            t.rewind(start).unwrap();
            let vx = t.input(&[n, l, e], &x).unwrap();
            let vkv = if cross {
                t.input(&[n, s, e], &kv).unwrap()
            } else {
                vx
            };
            let vp = padded.then(|| t.input(&[n, s], &pad).unwrap());
            let vm = masked.then(|| {
                if three {
                    t.input(&[n * h, l, s], &am).unwrap()
                } else {
                    t.input(&[l, s], &am[..l * s]).unwrap()
                }
            });
            let y = mha.attend(&mut t, vx, vkv, vkv, vp, vm, causal).unwrap();
            let kvs = if cross { &kv } else { &x };
            let f = |b: usize, i: usize, j: usize| {
                (if padded { pad[(b / h) * s + j] } else { 0.0 })
                    + match (masked, three) {
                        (false, _) => 0.0,
                        (true, false) => am[i * s + j],
                        (true, true) => am[(b * l + i) * s + j],
                    }
            };
            let want = mha_ref(&x, kvs, (n, l, s, e, h), &params, &f, causal);
            close(
                t.data(y).unwrap(),
                &want,
                &format!("case {case} pad {padded} mask {masked} causal {causal}"),
            );
        }
        // Self-attention through the Module trait is attend(x, x, x) without masks.
        let vx = t.input(&[n, l, e], &x).unwrap();
        let a = mha.forward(&mut t, vx).unwrap();
        let b = mha.attend(&mut t, vx, vx, vx, None, None, false).unwrap();
        assert_eq!(t.data(a).unwrap().to_vec(), t.data(b).unwrap().to_vec());
        let mut count = 0;
        mha.visit_params(&mut |p| count += p.numel());
        assert_eq!(count, 4 * e * e + 4 * e);
    }
}

#[test]
fn refusals_record_nothing() {
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let mut rng = Rng::new(1);
    assert!(matches!(
        MultiheadAttention::new(&mut t, 6, 4, &mut rng),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        MultiheadAttention::new(&mut t, 6, 0, &mut rng),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!((t.nodes_used(), t.used()), (0, 0));
    let mha = MultiheadAttention::new(&mut t, 4, 2, &mut rng).unwrap();
    let q = t.input(&[2, 3, 4], &[0.1; 24]).unwrap();
    let k = t.input(&[2, 5, 4], &[0.1; 40]).unwrap();
    let v3 = t.input(&[2, 5, 3], &[0.1; 30]).unwrap();
    let other_batch = t.input(&[3, 5, 4], &[0.1; 60]).unwrap();
    let wide = t.input(&[2, 3, 5], &[0.1; 30]).unwrap();
    let m_ok = t.input(&[3, 5], &[0.0; 15]).unwrap();
    let m_bad = t.input(&[3, 4], &[0.0; 12]).unwrap();
    let pad_bad = t.input(&[2, 3], &[0.0; 6]).unwrap();
    let rank1 = t.input(&[4], &[0.0; 4]).unwrap();
    let at = (t.nodes_used(), t.used());
    let shape = |r: mote::Result<Var>| matches!(r, Err(Error::ShapeMismatch { .. }));
    assert!(shape(
        t.scaled_dot_product_attention(q, k, wide, None, false, None)
    ));
    assert!(shape(
        t.scaled_dot_product_attention(q, wide, k, None, false, None)
    ));
    assert!(shape(t.scaled_dot_product_attention(
        q,
        other_batch,
        other_batch,
        None,
        false,
        None
    )));
    assert!(shape(t.scaled_dot_product_attention(
        q,
        k,
        k,
        Some(m_bad),
        false,
        None
    )));
    assert!(matches!(
        t.scaled_dot_product_attention(q, k, k, Some(m_ok), true, None),
        Err(Error::InvalidArgument { .. })
    ));
    for scale in [f64::NAN, f64::INFINITY] {
        assert!(matches!(
            t.scaled_dot_product_attention(q, k, k, None, false, Some(scale)),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        t.scaled_dot_product_attention(rank1, rank1, rank1, None, false, None),
        Err(Error::InvalidShape { .. })
    ));
    assert!(shape(mha.attend(&mut t, q, k, v3, None, None, false)));
    assert!(shape(
        mha.attend(&mut t, wide, wide, wide, None, None, false)
    ));
    assert!(shape(mha.attend(
        &mut t,
        q,
        other_batch,
        other_batch,
        None,
        None,
        false
    )));
    assert!(shape(mha.attend(
        &mut t,
        q,
        k,
        k,
        Some(pad_bad),
        None,
        false
    )));
    assert!(shape(mha.attend(&mut t, q, k, k, None, Some(m_bad), false)));
    assert_eq!((t.nodes_used(), t.used()), at);
    // A working call after the refusals.
    let y = mha.attend(&mut t, q, k, k, None, Some(m_ok), true).unwrap();
    assert_eq!(y.shape().dims(), &[2, 3, 4]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Gradients of attention with respect to the queries, keys, values and mask, and of the
    /// layer with respect to its input and every parameter.
    #[test]
    fn gradients(l in 1usize..=3, s in 1usize..=3, e in 1usize..=3, lead in 0usize..=2, causal in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let lead = &[2usize, 2][..lead];
        let b: usize = lead.iter().product();
        let dims = |a: usize, c: usize| [lead, &[a, c]].concat();
        let (q, k, v, m) = (draw(&mut rng, b * l * e), draw(&mut rng, b * s * e), draw(&mut rng, b * s * 2), draw(&mut rng, l * s));
        let (dq, dk, dv) = (dims(l, e), dims(s, e), dims(s, 2));
        let mut mem = vec![0.0f64; 1 << 16];
        let inputs: [(&[usize], &[f64]); 4] = [(&dq, &q), (&dk, &k), (&dv, &v), (&[l, s], &m)];
        let n = if causal { 3 } else { 4 };
        let report = check::<256>(&mut mem, &inputs[..n], GradCheck::default(), |t, x| {
            t.scaled_dot_product_attention(x[0], x[1], x[2], x.get(3).copied(), causal, None)
        }).unwrap();
        prop_assert!(report.passed(), "{report:?}");
        // The layer: E = 4, two heads, cross-attention with a padding mask, or self-attention.
        let (e, h) = (4, 2);
        let x = draw(&mut rng, 2 * l * e);
        let kv = draw(&mut rng, 2 * s * e);
        let pad = draw(&mut rng, 2 * s);
        let (wi, bi, wo, bo) = (draw(&mut rng, 3 * e * e), draw(&mut rng, 3 * e), draw(&mut rng, e * e), draw(&mut rng, e));
        let inputs: [(&[usize], &[f64]); 7] = [
            (&[2, l, e], &x), (&[3 * e, e], &wi), (&[3 * e], &bi), (&[e, e], &wo), (&[e], &bo),
            (&[2, s, e], &kv), (&[2, s], &pad),
        ];
        let n = if causal { 5 } else { 7 };
        let report = check::<256>(&mut mem, &inputs[..n], GradCheck::default(), |t, v| {
            let mha = MultiheadAttention {
                in_proj: Linear { weight: v[1], bias: Some(v[2]) },
                out_proj: Linear { weight: v[3], bias: Some(v[4]) },
                heads: h,
            };
            if causal {
                mha.attend(t, v[0], v[0], v[0], None, None, true)
            } else {
                mha.attend(t, v[0], v[5], v[5], Some(v[6]), None, false)
            }
        }).unwrap();
        prop_assert!(report.passed(), "{report:?}");
    }
}

/// `x W^T + b` over rows of `i` values.
fn linear_ref(x: &[f64], w: &[f64], b: &[f64], i: usize) -> Vec<f64> {
    let o = b.len();
    x.chunks(i)
        .flat_map(|r| (0..o).map(move |j| b[j] + (0..i).map(|c| r[c] * w[j * i + c]).sum::<f64>()))
        .collect()
}

/// A `MultiheadAttention`'s parameters read back: `in_proj` weight and bias, `out_proj` weight
/// and bias.
struct MhaParams {
    wi: Vec<f64>,
    bi: Vec<f64>,
    wo: Vec<f64>,
    bo: Vec<f64>,
}

impl MhaParams {
    fn read(t: &T<'_>, m: &MultiheadAttention) -> Self {
        let read = |v: Var| t.data(v).unwrap().to_vec();
        MhaParams {
            wi: read(m.in_proj.weight),
            bi: read(m.in_proj.bias.unwrap()),
            wo: read(m.out_proj.weight),
            bo: read(m.out_proj.bias.unwrap()),
        }
    }
}

/// PyTorch's `nn.MultiheadAttention` forward (`batch_first`, `need_weights=False`) written out:
/// queries `[N, L, E]` and keys/values `[N, S, E]` projected by rows `0..E`, `E..2E`, `2E..3E`
/// of `in_proj`, split into `h` heads (batch-major, head-minor), attended with `mask(b, i, j)`
/// for `b` in `0..N * h`, joined and projected.
fn mha_ref(
    query: &[f64],
    kv: &[f64],
    (n, l, s, e, h): (usize, usize, usize, usize, usize),
    p: &MhaParams,
    mask: &dyn Fn(usize, usize, usize) -> f64,
    causal: bool,
) -> Vec<f64> {
    let part = |i: usize| (&p.wi[i * e * e..(i + 1) * e * e], &p.bi[i * e..(i + 1) * e]);
    let project = |x: &[f64], i: usize| linear_ref(x, part(i).0, part(i).1, e);
    let dh = e / h;
    // [N, T, E] -> [N * h, T, dh].
    let split = |x: &[f64], rows: usize| -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for ni in 0..n {
            for r in 0..rows {
                for hi in 0..h {
                    for c in 0..dh {
                        out[((ni * h + hi) * rows + r) * dh + c] =
                            x[(ni * rows + r) * e + hi * dh + c];
                    }
                }
            }
        }
        out
    };
    let (q, k, v) = (
        split(&project(query, 0), l),
        split(&project(kv, 1), s),
        split(&project(kv, 2), s),
    );
    let o = attention_ref(
        &q,
        &k,
        &v,
        (n * h, l, s, dh, dh),
        mask,
        causal,
        1.0 / (dh as f64).sqrt(),
    );
    let mut joined = vec![0.0; n * l * e];
    for ni in 0..n {
        for hi in 0..h {
            for r in 0..l {
                for c in 0..dh {
                    joined[(ni * l + r) * e + hi * dh + c] = o[((ni * h + hi) * l + r) * dh + c];
                }
            }
        }
    }
    linear_ref(&joined, &p.wo, &p.bo, e)
}

/// Layer normalisation over rows of `w.len()` values (biased variance, as PyTorch).
fn layer_norm_ref(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(w.len())
        .flat_map(|r| {
            let m = r.iter().sum::<f64>() / r.len() as f64;
            let v = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / r.len() as f64;
            r.iter()
                .enumerate()
                .map(move |(j, x)| (x - m) / (v + eps).sqrt() * w[j] + b[j])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The encoder layer written out from PyTorch's `TransformerEncoderLayer.forward` (no dropout),
/// post- and pre-norm, with a causal mask, against the layer.
#[test]
fn transformer_encoder_layer_matches_pytorch() {
    use mote::nn::attention::{TransformerEncoderConfig, TransformerEncoderLayer};
    use mote::ops::unary::UnaryOp;
    let mut rng = Rng::new(21);
    for case in 0..8 {
        let (n, l, e, h, f) = (1 + case % 2, 1 + case % 4, 4, [1, 2, 4][case % 3], 6);
        let norm_first = case % 2 == 1;
        let causal = case % 4 >= 2;
        let activation = if case % 3 == 0 {
            UnaryOp::GeluErf
        } else {
            UnaryOp::Relu
        };
        let mut mem = vec![0.0f64; 1 << 16];
        let mut t = T::new(&mut mem);
        let config = TransformerEncoderConfig {
            dim_feedforward: f,
            dropout: 0.0,
            activation,
            norm_first,
            ..TransformerEncoderConfig::new(e, h)
        };
        let layer = TransformerEncoderLayer::new(&mut t, config, &mut rng).unwrap();
        // Non-trivial norms and biases.
        for v in [
            layer.norm1.weight,
            layer.norm1.bias,
            layer.norm2.weight,
            layer.norm2.bias,
            layer.self_attn.in_proj.bias.unwrap(),
        ] {
            let d = draw(&mut rng, v.numel());
            t.write(v, &d).unwrap();
        }
        let read = |t: &T<'_>, v: Var| t.data(v).unwrap().to_vec();
        let x = draw(&mut rng, n * l * e);
        let vx = t.input(&[n, l, e], &x).unwrap();
        let y = layer
            .forward_masked(&mut t, vx, None, None, causal)
            .unwrap();
        // The attention block, recomputed from the parameters read back.
        let params = MhaParams::read(&t, &layer.self_attn);
        let sa = |inp: &[f64]| mha_ref(inp, inp, (n, l, l, e, h), &params, &|_, _, _| 0.0, causal);
        let (w1, b1, w2, b2) = (
            read(&t, layer.linear1.weight),
            read(&t, layer.linear1.bias.unwrap()),
            read(&t, layer.linear2.weight),
            read(&t, layer.linear2.bias.unwrap()),
        );
        let act = |v: f64| match activation {
            UnaryOp::Relu => v.max(0.0),
            _ => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
        };
        let ff = |inp: &[f64]| -> Vec<f64> {
            let hid: Vec<f64> = linear_ref(inp, &w1, &b1, e).into_iter().map(act).collect();
            linear_ref(&hid, &w2, &b2, f)
        };
        let (n1w, n1b, n2w, n2b) = (
            read(&t, layer.norm1.weight),
            read(&t, layer.norm1.bias),
            read(&t, layer.norm2.weight),
            read(&t, layer.norm2.bias),
        );
        let add =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a + b).collect() };
        let want = if norm_first {
            let x1 = add(&x, &sa(&layer_norm_ref(&x, &n1w, &n1b, 1e-5)));
            add(&x1, &ff(&layer_norm_ref(&x1, &n2w, &n2b, 1e-5)))
        } else {
            let x1 = layer_norm_ref(&add(&x, &sa(&x)), &n1w, &n1b, 1e-5);
            layer_norm_ref(&add(&x1, &ff(&x1)), &n2w, &n2b, 1e-5)
        };
        // The layer norm's eps is an f32 (1e-5 rounded): within 1e-9 of f64's.
        let got = t.data(y).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "case {case}: {got:?} vs {want:?}"
            );
        }
        let mut count = 0;
        layer.visit_params(&mut |p| count += p.numel());
        assert_eq!(count, 4 * e * e + 4 * e + 2 * e * f + f + e + 4 * e);
    }
}

/// Dropout: training mode changes the output, evaluation mode is the layer without it; bad
/// settings are refused before anything is made.
#[test]
fn transformer_encoder_layer_dropout_and_refusals() {
    use mote::nn::attention::{TransformerEncoderConfig, TransformerEncoderLayer};
    let mut mem = vec![0.0f64; 1 << 16];
    let mut t = T::new(&mut mem);
    let mut rng = Rng::new(2);
    for (dropout, eps, heads) in [
        (1.0, 1e-5, 2),
        (0.1, 0.0, 2),
        (0.1, f32::NAN, 2),
        (0.1, 1e-5, 3),
    ] {
        let c = TransformerEncoderConfig {
            dropout,
            layer_norm_eps: eps,
            dim_feedforward: 8,
            ..TransformerEncoderConfig::new(4, heads)
        };
        let before = rng;
        assert!(matches!(
            TransformerEncoderLayer::new(&mut t, c, &mut rng),
            Err(Error::InvalidArgument { .. })
        ));
        // Refused before anything is drawn.
        assert_eq!(rng, before);
    }
    assert_eq!((t.nodes_used(), t.used()), (0, 0));
    let c = TransformerEncoderConfig {
        dim_feedforward: 8,
        dropout: 0.3,
        ..TransformerEncoderConfig::new(4, 2)
    };
    let mut layer = TransformerEncoderLayer::new(&mut t, c, &mut rng).unwrap();
    let x = t.input(&[2, 3, 4], &draw(&mut rng, 24)).unwrap();
    let trained = layer.forward(&mut t, x).unwrap();
    let trained = t.data(trained).unwrap().to_vec();
    layer.set_training(false);
    let eval = layer.forward(&mut t, x).unwrap();
    let eval = t.data(eval).unwrap().to_vec();
    let mut plain = layer.clone();
    plain.dropout.p = 0.0;
    plain.set_training(true);
    let without = plain.forward(&mut t, x).unwrap();
    assert_eq!(eval, t.data(without).unwrap().to_vec());
    assert_ne!(trained, eval);
}

/// The encoder layer's gradients (input and every parameter: the checker takes 8 tensors at a
/// time, so two checks, the other parameters constants), post- and pre-norm, causal.
#[test]
fn transformer_encoder_layer_gradients() {
    use mote::nn::attention::TransformerEncoderLayer;
    use mote::ops::unary::UnaryOp;
    use mote::{Dropout, LayerNorm};
    let mut rng = Rng::new(4);
    let (n, l, e, f) = (2, 3, 4, 5);
    let shapes: [&[usize]; 13] = [
        &[n, l, e],
        &[3 * e, e],
        &[3 * e],
        &[e, e],
        &[e],
        &[f, e],
        &[f],
        &[e, f],
        &[e],
        &[e],
        &[e],
        &[e],
        &[e],
    ];
    let values: Vec<Vec<f64>> = shapes
        .iter()
        .map(|s| draw(&mut rng, s.iter().product()))
        .collect();
    for checked in [&[0usize, 1, 2, 3, 4, 5, 6, 7][..], &[0, 8, 9, 10, 11, 12]] {
        let inputs: Vec<(&[usize], &[f64])> = checked
            .iter()
            .map(|&i| (shapes[i], &values[i][..]))
            .collect();
        for (norm_first, causal) in [(false, false), (true, true)] {
            let mut mem = vec![0.0f64; 1 << 16];
            let report = check::<256>(&mut mem, &inputs, GradCheck::default(), |t, v| {
                let mut all = Vec::new();
                for i in 0..13 {
                    all.push(match checked.iter().position(|&c| c == i) {
                        Some(k) => v[k],
                        None => t.input(shapes[i], &values[i])?,
                    });
                }
                let layer = TransformerEncoderLayer {
                    self_attn: MultiheadAttention {
                        in_proj: Linear {
                            weight: all[1],
                            bias: Some(all[2]),
                        },
                        out_proj: Linear {
                            weight: all[3],
                            bias: Some(all[4]),
                        },
                        heads: 2,
                    },
                    linear1: Linear {
                        weight: all[5],
                        bias: Some(all[6]),
                    },
                    linear2: Linear {
                        weight: all[7],
                        bias: Some(all[8]),
                    },
                    norm1: LayerNorm {
                        weight: all[9],
                        bias: all[10],
                        eps: 1e-5,
                    },
                    norm2: LayerNorm {
                        weight: all[11],
                        bias: all[12],
                        eps: 1e-5,
                    },
                    dropout: Dropout::new(0.0, 0)?,
                    activation: UnaryOp::Tanh,
                    norm_first,
                };
                layer.forward_masked(t, all[0], None, None, causal)
            })
            .unwrap();
            assert!(
                report.passed(),
                "{checked:?} norm_first {norm_first}: {report:?}"
            );
        }
    }
}

/// Masks of -inf and f32::MIN, stacked, and queries whose every key is masked: finite
/// everywhere, 0 for the fully masked queries (PyTorch's safe softmax), the others as if the
/// masked keys were absent; gradients finite (checked), and the mask's gradient checked.
#[test]
fn fully_masked_queries_attend_to_nothing() {
    let mut rng = Rng::new(8);
    let (b, l, s, e) = (2, 3, 4, 2);
    let (q, k, v) = (
        draw(&mut rng, b * l * e),
        draw(&mut rng, b * s * e),
        draw(&mut rng, b * s * e),
    );
    // Batch 0: query 1 sees nothing (-inf), query 2 sees key 3 only (f32::MIN and -inf mixed).
    // Batch 1: query 0 sees nothing (f32::MIN twice: a padding mask on top of the mask).
    let (ninf, min) = (f64::NEG_INFINITY, f64::from(f32::MIN));
    let mut m = vec![0.0; b * l * s];
    m[s..2 * s].copy_from_slice(&[ninf; 4]);
    m[2 * s..3 * s].copy_from_slice(&[min, ninf, min, 0.0]);
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (vq, vk, vv) = (
        t.param(&[b, l, e], &q).unwrap(),
        t.param(&[b, s, e], &k).unwrap(),
        t.param(&[b, s, e], &v).unwrap(),
    );
    // Batch 1, query 0: f32::MIN from the mask and again from a second one added in.
    let mut pad = vec![0.0; b * l * s];
    pad[l * s..l * s + s].copy_from_slice(&[min; 4]);
    let mut m1 = m.clone();
    m1[l * s..l * s + s].copy_from_slice(&[min; 4]);
    let vm1 = t.input(&[b, l, s], &m1).unwrap();
    let vpad = t.input(&[b, l, s], &pad).unwrap();
    let stacked = t.add(vm1, vpad).unwrap();
    let y = t
        .scaled_dot_product_attention(vq, vk, vv, Some(stacked), false, None)
        .unwrap();
    let got = t.data(y).unwrap().to_vec();
    assert!(got.iter().all(|v| v.is_finite()), "{got:?}");
    // The reference: -inf where masked; a fully masked query gives 0.
    let f = |bi: usize, i: usize, j: usize| {
        let x = m1[(bi * l + i) * s + j] + pad[(bi * l + i) * s + j];
        if x <= min {
            ninf
        } else {
            x
        }
    };
    let mut want = attention_ref(
        &q,
        &k,
        &v,
        (b, l, s, e, e),
        &f,
        false,
        1.0 / (e as f64).sqrt(),
    );
    for x in &mut want {
        if x.is_nan() {
            *x = 0.0;
        }
    }
    close(&got, &want, "masked");
    assert_eq!(&got[e..2 * e], &[0.0, 0.0]); // batch 0, query 1
    assert_eq!(&got[l * e..l * e + e], &[0.0, 0.0]); // batch 1, query 0
    let l2 = t.square(y).unwrap();
    let loss = t.sum(l2).unwrap();
    t.backward(loss).unwrap();
    for p in [vq, vk, vv] {
        let mut g = vec![0.0; p.numel()];
        t.read_grad(p, &mut g).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
    // The gradients with masks that hide some keys (finite values), and the mask's own.
    let hide: Vec<f64> = (0..b * l * s)
        .map(|i| {
            if i % 3 == 0 {
                -1e4
            } else {
                rng.uniform(-1.0, 1.0)
            }
        })
        .collect();
    let inputs: [(&[usize], &[f64]); 4] = [
        (&[b, l, e], &q),
        (&[b, s, e], &k),
        (&[b, s, e], &v),
        (&[b, l, s], &hide),
    ];
    let mut mem = vec![0.0f64; 1 << 16];
    let report = check::<256>(&mut mem, &inputs, GradCheck::default(), |t, x| {
        t.scaled_dot_product_attention(x[0], x[1], x[2], Some(x[3]), false, None)
    })
    .unwrap();
    assert!(report.passed(), "{report:?}");
    // A hand-made layer with no head, or heads that do not divide the width: refused.
    let mha = MultiheadAttention::new(&mut t, 4, 2, &mut rng).unwrap();
    let x = t.input(&[1, 2, 4], &[0.1; 8]).unwrap();
    for heads in [0, 3] {
        let bad = MultiheadAttention { heads, ..mha };
        assert!(matches!(
            bad.attend(&mut t, x, x, x, None, None, false),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

/// Dropout on the attention weights: the weights' softmax, then the layer's mask, then the
/// product with the values, as written out with the tape's ops and a clone of the dropout
/// (same generator state); its gradients (a fresh layer of one seed each call: one mask);
/// evaluation mode drops nothing.
#[test]
fn attention_weight_dropout() {
    use mote::Dropout;
    let mut rng = Rng::new(12);
    let (b, l, s, e) = (2, 3, 4, 2);
    let (q, k, v) = (
        draw(&mut rng, b * l * e),
        draw(&mut rng, b * s * e),
        draw(&mut rng, b * s * e),
    );
    let mut mem = vec![0.0f64; 1 << 14];
    let mut t = T::new(&mut mem);
    let (vq, vk, vv) = (
        t.param(&[b, l, e], &q).unwrap(),
        t.param(&[b, s, e], &k).unwrap(),
        t.param(&[b, s, e], &v).unwrap(),
    );
    let mut d = Dropout::new(0.5, 99).unwrap();
    let twin = d.clone();
    let y = t
        .scaled_dot_product_attention_dropout(vq, vk, vv, None, false, None, Some(&d))
        .unwrap();
    let scores = t.matmul_t(vq, false, vk, true).unwrap();
    let scores = t
        .mul_scalar(scores, (1.0 / (e as f64).sqrt()) as f32)
        .unwrap();
    let w = t.softmax(scores, 2).unwrap();
    let w = twin.forward(&mut t, w).unwrap();
    let want = t.matmul(w, vv).unwrap();
    let (got, want) = (t.data(y).unwrap().to_vec(), t.data(want).unwrap().to_vec());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    let plain = t
        .scaled_dot_product_attention(vq, vk, vv, None, false, None)
        .unwrap();
    let plain = t.data(plain).unwrap().to_vec();
    assert_ne!(got, plain);
    d.set_training(false);
    let eval = t
        .scaled_dot_product_attention_dropout(vq, vk, vv, None, false, None, Some(&d))
        .unwrap();
    assert_eq!(t.data(eval).unwrap().to_vec(), plain);
    let inputs: [(&[usize], &[f64]); 3] = [(&[b, l, e], &q), (&[b, s, e], &k), (&[b, s, e], &v)];
    let mut mem = vec![0.0f64; 1 << 16];
    let report = check::<256>(&mut mem, &inputs, GradCheck::default(), |t, x| {
        let d = Dropout::new(0.5, 99)?;
        t.scaled_dot_product_attention_dropout(x[0], x[1], x[2], None, true, None, Some(&d))
    })
    .unwrap();
    assert!(report.passed(), "{report:?}");
}

/// The decoder layer written out from PyTorch's `TransformerDecoderLayer.forward` (no
/// dropout): post- and pre-norm, causal targets with a padding mask, memory with its own
/// padding mask, `T != S`; and its gradients with respect to the targets, the memory and the
/// cross-attention's parameters.
#[test]
fn transformer_decoder_layer_matches_pytorch() {
    use mote::nn::attention::{DecoderMasks, TransformerDecoderConfig, TransformerDecoderLayer};
    let mut rng = Rng::new(31);
    let (e, h, f) = (4, 2, 6);
    for case in 0..6 {
        let (n, l, s) = (1 + case % 2, 1 + case % 3, 2 + case % 4);
        let norm_first = case % 2 == 1;
        let mut mem = vec![0.0f64; 1 << 16];
        let mut t = T::new(&mut mem);
        let config = TransformerDecoderConfig {
            dim_feedforward: f,
            dropout: 0.0,
            norm_first,
            ..TransformerDecoderConfig::new(e, h)
        };
        let layer = TransformerDecoderLayer::new(&mut t, config, &mut rng).unwrap();
        // Every norm and bias drawn: a mix-up between them shows.
        for v in [
            layer.norm1.weight,
            layer.norm1.bias,
            layer.norm2.weight,
            layer.norm2.bias,
            layer.norm3.weight,
            layer.norm3.bias,
            layer.self_attn.in_proj.bias.unwrap(),
            layer.self_attn.out_proj.bias.unwrap(),
            layer.multihead_attn.in_proj.bias.unwrap(),
            layer.multihead_attn.out_proj.bias.unwrap(),
        ] {
            let d = draw(&mut rng, v.numel());
            t.write(v, &d).unwrap();
        }
        let read = |t: &T<'_>, v: Var| t.data(v).unwrap().to_vec();
        let (tgt, memory) = (draw(&mut rng, n * l * e), draw(&mut rng, n * s * e));
        let (tpad, mpad) = (draw(&mut rng, n * l), draw(&mut rng, n * s));
        // Explicit attention masks in half the cases; the memory causal in a third.
        let (tmask, mmask) = (draw(&mut rng, l * l), draw(&mut rng, l * s));
        let (explicit, memory_causal) = (case % 2 == 0, case % 3 == 0);
        let vt = t.input(&[n, l, e], &tgt).unwrap();
        let vm = t.input(&[n, s, e], &memory).unwrap();
        let masks = DecoderMasks {
            tgt_mask: explicit.then(|| t.input(&[l, l], &tmask).unwrap()),
            memory_mask: explicit.then(|| t.input(&[l, s], &mmask).unwrap()),
            tgt_key_padding_mask: Some(t.input(&[n, l], &tpad).unwrap()),
            memory_key_padding_mask: Some(t.input(&[n, s], &mpad).unwrap()),
            tgt_is_causal: true,
            memory_is_causal: memory_causal,
        };
        let y = layer.forward_masked(&mut t, vt, vm, masks).unwrap();
        let (sp, cp) = (
            MhaParams::read(&t, &layer.self_attn),
            MhaParams::read(&t, &layer.multihead_attn),
        );
        let sa = |x: &[f64]| {
            mha_ref(
                x,
                x,
                (n, l, l, e, h),
                &sp,
                &|b, i, j| tpad[(b / h) * l + j] + if explicit { tmask[i * l + j] } else { 0.0 },
                true,
            )
        };
        let ca = |x: &[f64]| {
            mha_ref(
                x,
                &memory,
                (n, l, s, e, h),
                &cp,
                &|b, i, j| mpad[(b / h) * s + j] + if explicit { mmask[i * s + j] } else { 0.0 },
                memory_causal,
            )
        };
        let (w1, b1, w2, b2) = (
            read(&t, layer.linear1.weight),
            read(&t, layer.linear1.bias.unwrap()),
            read(&t, layer.linear2.weight),
            read(&t, layer.linear2.bias.unwrap()),
        );
        let ff = |x: &[f64]| -> Vec<f64> {
            let hid: Vec<f64> = linear_ref(x, &w1, &b1, e)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            linear_ref(&hid, &w2, &b2, f)
        };
        let norms: Vec<(Vec<f64>, Vec<f64>)> = [layer.norm1, layer.norm2, layer.norm3]
            .iter()
            .map(|m| (read(&t, m.weight), read(&t, m.bias)))
            .collect();
        let blocks: [&RefBlock<'_>; 3] = [&sa, &ca, &ff];
        let add =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a + b).collect() };
        let mut want = tgt.clone();
        for (block, (w, b)) in blocks.iter().zip(&norms) {
            want = if norm_first {
                add(&want, &block(&layer_norm_ref(&want, w, b, 1e-5)))
            } else {
                layer_norm_ref(&add(&want, &block(&want)), w, b, 1e-5)
            };
        }
        let got = t.data(y).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
                "case {case}: {got:?} vs {want:?}"
            );
        }
        let mut count = 0;
        layer.visit_params(&mut |p| count += p.numel());
        assert_eq!(count, 2 * (4 * e * e + 4 * e) + 2 * e * f + f + e + 6 * e);
        // Memory of another batch or width: refused, nothing recorded.
        let at = (t.nodes_used(), t.used());
        let other = t
            .input(&[n + 1, s, e], &vec![0.0; (n + 1) * s * e])
            .unwrap();
        let at = (at.0 + 1, at.1 + (n + 1) * s * e);
        assert!(layer
            .forward_masked(&mut t, vt, other, DecoderMasks::default())
            .is_err());
        assert_eq!((t.nodes_used(), t.used()), at);
    }
    // Gradients, both norm orders, in four checks of at most 8 tensors (the checker's limit):
    // the targets and the memory with each group of parameters (the others the layer's own).
    let (n, l, s) = (2, 3, 4);
    let mha_shapes = vec![vec![3 * e, e], vec![3 * e], vec![e, e], vec![e]];
    let groups = [
        ("self-attention", mha_shapes.clone()),
        ("cross-attention", mha_shapes),
        (
            "feed-forward",
            vec![vec![f, e], vec![f], vec![e, f], vec![e]],
        ),
        ("norms", vec![vec![e]; 6]),
    ];
    for (group, params) in groups {
        let mut shapes = vec![vec![n, l, e], vec![n, s, e]];
        shapes.extend(params);
        let values: Vec<Vec<f64>> = shapes
            .iter()
            .map(|d| draw(&mut rng, d.iter().product()))
            .collect();
        let inputs: Vec<(&[usize], &[f64])> = shapes
            .iter()
            .zip(&values)
            .map(|(d, v)| (&d[..], &v[..]))
            .collect();
        for norm_first in [false, true] {
            let mut mem = vec![0.0f64; 1 << 17];
            let config = TransformerDecoderConfig {
                dim_feedforward: f,
                dropout: 0.0,
                norm_first,
                ..TransformerDecoderConfig::new(e, h)
            };
            let report = check::<512>(&mut mem, &inputs, GradCheck::default(), |t, v| {
                let mut layer = TransformerDecoderLayer::new(t, config, &mut Rng::new(5))?;
                let mha = MultiheadAttention {
                    in_proj: Linear {
                        weight: v[2],
                        bias: Some(v[3]),
                    },
                    out_proj: Linear {
                        weight: v[4],
                        bias: Some(v[5]),
                    },
                    heads: h,
                };
                match group {
                    "self-attention" => layer.self_attn = mha,
                    "cross-attention" => layer.multihead_attn = mha,
                    "feed-forward" => {
                        layer.linear1 = Linear {
                            weight: v[2],
                            bias: Some(v[3]),
                        };
                        layer.linear2 = Linear {
                            weight: v[4],
                            bias: Some(v[5]),
                        };
                    }
                    _ => {
                        for (k, norm) in [&mut layer.norm1, &mut layer.norm2, &mut layer.norm3]
                            .into_iter()
                            .enumerate()
                        {
                            norm.weight = v[2 + 2 * k];
                            norm.bias = v[3 + 2 * k];
                        }
                    }
                }
                let masks = DecoderMasks {
                    tgt_is_causal: true,
                    ..DecoderMasks::default()
                };
                layer.forward_masked(t, v[0], v[1], masks)
            })
            .unwrap();
            assert!(
                report.passed(),
                "{group}, norm_first {norm_first}: {report:?}"
            );
        }
    }
}

/// Where the layers' dropout goes, and in what order its masks are drawn: each layer (dropout
/// 0.3, training mode) against its blocks run by hand with a twin of its dropout (a clone: the
/// same generator state) at PyTorch's sites, in PyTorch's order (the attention weights, after
/// the attention, ..., inside and after the feed-forward block). Also: parameters visited in
/// PyTorch's order, and bad settings refused before the generator moves.
#[test]
fn transformer_layers_dropout_sites_and_params() {
    use mote::nn::attention::{
        DecoderMasks, TransformerDecoderConfig, TransformerDecoderLayer, TransformerEncoderConfig,
        TransformerEncoderLayer,
    };
    use mote::{Dropout, LayerNorm};
    type Big<'m> = Tape<Cpu<'m, f64>, 1024>;
    let mut rng = Rng::new(17);
    let (n, l, s, e, f) = (2, 3, 4, 4, 6);
    let mut mem = vec![0.0f64; 1 << 16];
    let mut t = Big::new(&mut mem);
    let x = t.input(&[n, l, e], &draw(&mut rng, n * l * e)).unwrap();
    let memory = t.input(&[n, s, e], &draw(&mut rng, n * s * e)).unwrap();
    let ff = |t: &mut Big<'_>, x: Var, l1: Linear, l2: Linear, d: &Dropout| {
        let h = l1.forward(t, x).unwrap();
        let h = t.relu(h).unwrap();
        let h = d.forward(t, h).unwrap();
        let h = l2.forward(t, h).unwrap();
        d.forward(t, h).unwrap()
    };
    let sublayer = |t: &mut Big<'_>, x: Var, y: Var, norm: LayerNorm| {
        let s = t.add(x, y).unwrap();
        norm.forward(t, s).unwrap()
    };
    let config = TransformerEncoderConfig {
        dim_feedforward: f,
        dropout: 0.3,
        ..TransformerEncoderConfig::new(e, 2)
    };
    let enc = TransformerEncoderLayer::new(&mut t, config, &mut rng).unwrap();
    let twin = enc.dropout.clone();
    let got = enc.forward_masked(&mut t, x, None, None, true).unwrap();
    let a = enc
        .self_attn
        .attend_dropout(&mut t, x, x, x, None, None, true, Some(&twin))
        .unwrap();
    let a = twin.forward(&mut t, a).unwrap();
    let x1 = sublayer(&mut t, x, a, enc.norm1);
    let h = ff(&mut t, x1, enc.linear1, enc.linear2, &twin);
    let want = sublayer(&mut t, x1, h, enc.norm2);
    assert_eq!(
        t.data(got).unwrap().to_vec(),
        t.data(want).unwrap().to_vec()
    );

    let config = TransformerDecoderConfig {
        dim_feedforward: f,
        dropout: 0.3,
        ..TransformerDecoderConfig::new(e, 2)
    };
    let dec = TransformerDecoderLayer::new(&mut t, config, &mut rng).unwrap();
    let twin = dec.dropout.clone();
    let masks = DecoderMasks {
        tgt_is_causal: true,
        ..DecoderMasks::default()
    };
    let got = dec.forward_masked(&mut t, x, memory, masks).unwrap();
    let a = dec
        .self_attn
        .attend_dropout(&mut t, x, x, x, None, None, true, Some(&twin))
        .unwrap();
    let a = twin.forward(&mut t, a).unwrap();
    let x1 = sublayer(&mut t, x, a, dec.norm1);
    let c = dec
        .multihead_attn
        .attend_dropout(&mut t, x1, memory, memory, None, None, false, Some(&twin))
        .unwrap();
    let c = twin.forward(&mut t, c).unwrap();
    let x2 = sublayer(&mut t, x1, c, dec.norm2);
    let h = ff(&mut t, x2, dec.linear1, dec.linear2, &twin);
    let want = sublayer(&mut t, x2, h, dec.norm3);
    assert_eq!(
        t.data(got).unwrap().to_vec(),
        t.data(want).unwrap().to_vec()
    );

    // PyTorch's named_parameters order.
    let mut seen = Vec::new();
    dec.visit_params(&mut |p| seen.push(p));
    let mut want = Vec::new();
    for m in [dec.self_attn, dec.multihead_attn] {
        want.extend([
            m.in_proj.weight,
            m.in_proj.bias.unwrap(),
            m.out_proj.weight,
            m.out_proj.bias.unwrap(),
        ]);
    }
    for lin in [dec.linear1, dec.linear2] {
        want.extend([lin.weight, lin.bias.unwrap()]);
    }
    for norm in [dec.norm1, dec.norm2, dec.norm3] {
        want.extend([norm.weight, norm.bias]);
    }
    assert_eq!(seen, want);
    let mut seen = Vec::new();
    enc.visit_params(&mut |p| seen.push(p));
    let m = enc.self_attn;
    let mut want = vec![
        m.in_proj.weight,
        m.in_proj.bias.unwrap(),
        m.out_proj.weight,
        m.out_proj.bias.unwrap(),
    ];
    for lin in [enc.linear1, enc.linear2] {
        want.extend([lin.weight, lin.bias.unwrap()]);
    }
    for norm in [enc.norm1, enc.norm2] {
        want.extend([norm.weight, norm.bias]);
    }
    assert_eq!(seen, want);

    // Refused before the generator moves or anything is made; a memory of another batch or
    // width refused before any dropout mask is drawn.
    let at = (t.nodes_used(), t.used());
    for (dropout, eps, heads) in [(1.0, 1e-5, 2), (0.1, 0.0, 2), (0.1, 1e-5, 3)] {
        let c = TransformerDecoderConfig {
            dropout,
            layer_norm_eps: eps,
            ..TransformerDecoderConfig::new(e, heads)
        };
        let before = rng;
        assert!(matches!(
            TransformerDecoderLayer::new(&mut t, c, &mut rng),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(rng, before);
    }
    assert_eq!((t.nodes_used(), t.used()), at);
    let twin = dec.dropout.clone();
    for dims in [[n + 1, s, e], [n, s, e + 1]] {
        let bad = t.input(&dims, &vec![0.0; dims.iter().product()]).unwrap();
        let at = (t.nodes_used(), t.used());
        let r = dec.forward_masked(&mut t, x, bad, DecoderMasks::default());
        assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
        assert_eq!((t.nodes_used(), t.used()), at);
    }
    // The generator did not move: the next forward draws what the twin draws.
    let a = dec
        .forward_masked(&mut t, x, memory, DecoderMasks::default())
        .unwrap();
    let mut copy = dec.clone();
    copy.dropout = twin;
    let b = copy
        .forward_masked(&mut t, x, memory, DecoderMasks::default())
        .unwrap();
    assert_eq!(t.data(a).unwrap().to_vec(), t.data(b).unwrap().to_vec());
}
