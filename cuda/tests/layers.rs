//! The convolutional, pooling and normalisation layers on the GPU against the reference
//! backend: one model with every kind (conv2d with stride, padding, dilation and groups
//! (depthwise), with and without bias; batch normalisation in training and evaluation mode;
//! max and average pooling in 2-D and 1-D, global average pooling; flatten; dropout; an
//! embedding, layer normalisation and conv1d on a sequence branch) runs forward and backward
//! on `mote::Cpu` and on `mote_cuda::Cuda` from the same seed. The loss, every parameter's
//! gradient, the batch-norm running statistics and the evaluation-mode outputs must agree.
//!
//! Tolerances (f32): the loss and outputs `1e-5 + 1e-5 |x|` relative to 1; gradients within
//! `2e-4` of the largest gradient (the GPU sums the convolutions' products and the broadcast
//! gradients in another order); running statistics `1e-5 + 1e-5 |x|`.
//! Without a CUDA driver: on the emulated device (`tests/emu/device.cpp`, one line says so), or
//! one skip line with `MOTE_EMULATE=0`.

mod common;

use common::{close, gpu};
use mote::{
    AvgPool1d, AvgPool2d, Backend, BatchNorm, Conv1d, Conv2d, ConvConfig, Cpu, Dropout, Embedding,
    Flatten, GlobalAvgPool, LayerNorm, Linear, MaxPool1d, MaxPool2d, Module, PoolConfig, Relu, Rng,
    Tape, Var,
};

const FLOATS: usize = 1 << 22;
const NODES: usize = 128;
const ATTENTION_NODES: usize = 512;

/// What one run gives: the loss, every trainable parameter's gradient (flattened), the
/// running statistics after the training-mode forward, and the evaluation-mode logits.
struct Run {
    loss: f32,
    grads: Vec<f32>,
    stats: Vec<f32>,
    eval: Vec<f32>,
}

fn read<B: Backend<Elem = f32>>(tape: &Tape<B, NODES>, v: Var) -> Vec<f32> {
    let mut out = vec![0f32; v.numel()];
    tape.read(v, &mut out).unwrap();
    out
}

fn run<B: Backend<Elem = f32>>(tape: &mut Tape<B, NODES>) -> Run {
    let mut rng = Rng::new(11);
    let strided = ConvConfig {
        stride: [2, 2],
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let dilated = ConvConfig {
        padding: [2, 2],
        dilation: [2, 2],
        ..ConvConfig::default()
    };
    let bn = BatchNorm::new(tape, 8).unwrap();
    let front = (
        Conv2d::new(tape, 3, 8, [3, 3], strided, 1, true, &mut rng).unwrap(),
        bn,
        Relu,
        // Depthwise, dilated, without bias.
        Conv2d::new(tape, 8, 8, [3, 3], dilated, 8, false, &mut rng).unwrap(),
        MaxPool2d(PoolConfig::square(2)),
    );
    let back = (
        AvgPool2d(PoolConfig {
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            ceil_mode: false,
        }),
        Flatten,
        Dropout::new(0.3, 9).unwrap(),
        Linear::new(tape, 8 * 4 * 4, 10, &mut rng).unwrap(),
    );
    let emb = Embedding::new(tape, 20, 8, &mut rng).unwrap();
    let ln = LayerNorm::new(tape, 8).unwrap();
    let conv1 = Conv1d::new(tape, 8, 4, 3, 2, &mut rng).unwrap();
    let seq = (MaxPool1d(2), AvgPool1d(2));

    let x: Vec<f32> = (0..8 * 3 * 16 * 16).map(|_| rng.next_f32() - 0.5).collect();
    let ids: Vec<usize> = (0..8 * 6).map(|i| (i * 7) % 20).collect();
    let labels: Vec<usize> = (0..8).map(|i| i % 10).collect();
    let start = tape.mark();

    let xv = tape.input(&[8, 3, 16, 16], &x).unwrap();
    let h = front.forward(tape, xv).unwrap();
    let logits = back.forward(tape, h).unwrap();
    let g = GlobalAvgPool.forward(tape, h).unwrap();
    let g = tape.mean(g).unwrap();
    // The sequence branch: ids [8, 6] -> [8, 6, 8] -> layer norm -> [8, 8, 6] -> conv1d
    // (groups 2) -> [8, 4, 4] -> max-pool -> [8, 4, 2] -> average-pool -> [8, 4, 1].
    let idv = tape.labels(&ids).unwrap();
    let idv = tape.reshape(idv, &[8, 6]).unwrap();
    let e = emb.forward(tape, idv).unwrap();
    let e = ln.forward(tape, e).unwrap();
    let e = tape.transpose(e, 1, 2).unwrap();
    let s = conv1.forward(tape, e).unwrap();
    let s = seq.forward(tape, s).unwrap();
    let s = tape.square(s).unwrap();
    let s = tape.mean(s).unwrap();
    let y = tape.labels(&labels).unwrap();
    let ce = tape.cross_entropy(logits, y).unwrap();
    let loss = tape.add(ce, s).unwrap();
    let loss = tape.add(loss, g).unwrap();
    tape.backward(loss).unwrap();

    let mut grads = Vec::new();
    let params: Vec<Var> = tape.params().collect();
    for p in params {
        if tape.is_trainable(p) {
            let mut v = vec![0f32; p.numel()];
            tape.read_grad(p, &mut v).unwrap();
            grads.extend(v);
        }
    }
    let loss = tape.item(loss).unwrap();
    let stats = [read(tape, bn.running_mean), read(tape, bn.running_var)].concat();

    // Evaluation mode: the running statistics, no dropout.
    let (mut front, mut back) = (front, back);
    front.set_training(false);
    back.set_training(false);
    tape.rewind(start).unwrap();
    let eval = tape
        .no_grad(|t| {
            let xv = t.input(&[8, 3, 16, 16], &x)?;
            let h = front.forward(t, xv)?;
            back.forward(t, h)
        })
        .unwrap();
    let eval = read(tape, eval);
    Run {
        loss,
        grads,
        stats,
        eval,
    }
}

#[test]
fn every_layer_matches_the_reference() {
    let Some(cuda) = gpu("every_layer_matches_the_reference", FLOATS) else {
        return;
    };
    let mut mem = vec![0f32; FLOATS];
    let want = run(&mut Tape::<Cpu<f32>, NODES>::new(&mut mem));
    let got = run(&mut Tape::<_, NODES>::with_backend(cuda));
    close("loss", &[got.loss], &[want.loss], 1e-5, 1e-5);
    assert_eq!(got.grads.len(), want.grads.len());
    let scale = want.grads.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    close("gradients", &got.grads, &want.grads, 0.0, 2e-4 * scale);
    close("running statistics", &got.stats, &want.stats, 1e-5, 1e-5);
    close("evaluation-mode logits", &got.eval, &want.eval, 1e-5, 1e-5);
    // The model is not trivial: the gradients are not all alike, the statistics moved.
    assert!(want.grads.iter().filter(|g| g.abs() > 1e-3 * scale).count() > 100);
    assert!(want.stats.iter().any(|&v| v != 0.0 && v != 1.0));
    println!(
        "every layer on cuda: loss {} (cpu {}), {} gradients",
        got.loss,
        want.loss,
        got.grads.len()
    );
}

/// Multi-head attention (4 heads, cross-attention with a padding mask, and causal
/// self-attention), a pre-norm encoder layer with a padding mask, a decoder layer (causal, its
/// memory padded), attention on 4-D queries
/// through `scaled_dot_product_attention`, then a class loss
/// from `mote::nn::loss` with every reduction's terms: the loss and every gradient against the
/// reference backend, at the tolerances above.
fn attention_run<B: Backend<Elem = f32>>(tape: &mut Tape<B, ATTENTION_NODES>) -> (f32, Vec<f32>) {
    use mote::nn::attention::{
        DecoderMasks, MultiheadAttention, TransformerDecoderLayer, TransformerEncoderConfig,
        TransformerEncoderLayer,
    };
    use mote::nn::loss::{CrossEntropyLoss, Reduction};
    let mut rng = Rng::new(5);
    let mha = MultiheadAttention::new(tape, 16, 4, &mut rng).unwrap();
    let config = TransformerEncoderConfig {
        dim_feedforward: 24,
        dropout: 0.0,
        norm_first: true,
        ..TransformerEncoderConfig::new(16, 2)
    };
    let encoder = TransformerEncoderLayer::new(tape, config, &mut rng).unwrap();
    let decoder = TransformerDecoderLayer::new(tape, config, &mut rng).unwrap();
    let head = Linear::new(tape, 16, 5, &mut rng).unwrap();
    let draw =
        |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
    let (x, kv, pad) = (
        draw(&mut rng, 3 * 6 * 16),
        draw(&mut rng, 3 * 7 * 16),
        draw(&mut rng, 3 * 7),
    );
    let xv = tape.input(&[3, 6, 16], &x).unwrap();
    let kvv = tape.input(&[3, 7, 16], &kv).unwrap();
    // Keys masked by f32::MIN and -inf in the first batch's padding mask; in the encoder's,
    // every key of the second (its queries attend to nothing: 0).
    let mut pad = pad;
    pad[0] = f32::MIN;
    pad[1] = f32::NEG_INFINITY;
    let padv = tape.input(&[3, 7], &pad).unwrap();
    let mut pad6 = pad[..18].to_vec();
    pad6[6..12].copy_from_slice(&[f32::MIN; 6]);
    let padv6 = tape.input(&[3, 6], &pad6).unwrap();
    let a = mha
        .attend(tape, xv, kvv, kvv, Some(padv), None, false)
        .unwrap();
    let c = mha.attend(tape, a, a, a, None, None, true).unwrap();
    let c = encoder
        .forward_masked(tape, c, None, Some(padv6), false)
        .unwrap();
    let masks = DecoderMasks {
        memory_key_padding_mask: Some(padv),
        tgt_is_causal: true,
        ..DecoderMasks::default()
    };
    let c = decoder.forward_masked(tape, c, kvv, masks).unwrap();
    let q4 = tape.reshape(c, &[3, 2, 3, 16]).unwrap();
    let d = tape
        .scaled_dot_product_attention(q4, q4, q4, None, true, Some(0.5))
        .unwrap();
    let d = tape.reshape(d, &[18, 16]).unwrap();
    let logits = head.forward(tape, d).unwrap();
    let labels: Vec<usize> = (0..18).map(|i| (i * 3) % 5).collect();
    let y = tape.labels(&labels).unwrap();
    let w = tape.input(&[5], &[0.5, 1.0, 1.5, 2.0, 0.8]).unwrap();
    let ce = CrossEntropyLoss {
        weight: Some(w),
        label_smoothing: 0.1,
        reduction: Reduction::None,
        ..Default::default()
    };
    let rows = ce.forward(tape, logits, y).unwrap();
    let loss = tape.mean(rows).unwrap();
    tape.backward(loss).unwrap();
    let mut grads = Vec::new();
    let params: Vec<Var> = tape.params().collect();
    for p in params {
        let mut v = vec![0f32; p.numel()];
        tape.read_grad(p, &mut v).unwrap();
        grads.extend(v);
    }
    (tape.item(loss).unwrap(), grads)
}

#[test]
fn attention_and_composed_losses_match_the_reference() {
    let Some(cuda) = gpu("attention_and_composed_losses_match_the_reference", FLOATS) else {
        return;
    };
    let mut mem = vec![0f32; FLOATS];
    let (want_loss, want) = attention_run(&mut Tape::<Cpu<f32>, ATTENTION_NODES>::new(&mut mem));
    let (got_loss, got) = attention_run(&mut Tape::<_, ATTENTION_NODES>::with_backend(cuda));
    close("loss", &[got_loss], &[want_loss], 1e-5, 1e-5);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && want.iter().filter(|g| g.abs() > 1e-3 * scale).count() > 100);
    close("gradients", &got, &want, 0.0, 2e-4 * scale);
}

/// An LSTM and a GRU (`mote::nn::rnn`, unrolled on the tape) stacked, from a given state, then
/// a squared loss: the loss and every gradient against the reference backend.
fn recurrent_run<B: Backend<Elem = f32>>(tape: &mut Tape<B, ATTENTION_NODES>) -> (f32, Vec<f32>) {
    use mote::nn::rnn::{Gru, Lstm};
    let mut rng = Rng::new(9);
    let lstm = Lstm::new(tape, 16, 12, &mut rng).unwrap();
    let gru = Gru::new(tape, 12, 8, &mut rng).unwrap();
    let draw =
        |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() - 0.5).collect() };
    let x = tape
        .input(&[3, 6, 16], &draw(&mut rng, 3 * 6 * 16))
        .unwrap();
    let h0 = tape.input(&[3, 12], &draw(&mut rng, 36)).unwrap();
    let c0 = tape.input(&[3, 12], &draw(&mut rng, 36)).unwrap();
    let (y, (h, _)) = lstm.run(tape, x, Some((h0, c0))).unwrap();
    let (z, _) = gru.run(tape, y, None).unwrap();
    let z = tape.square(z).unwrap();
    let z = tape.mean(z).unwrap();
    let h = tape.mean(h).unwrap();
    let loss = tape.add(z, h).unwrap();
    tape.backward(loss).unwrap();
    let mut grads = Vec::new();
    let params: Vec<Var> = tape.params().collect();
    for p in params {
        let mut v = vec![0f32; p.numel()];
        tape.read_grad(p, &mut v).unwrap();
        grads.extend(v);
    }
    (tape.item(loss).unwrap(), grads)
}

#[test]
fn recurrent_layers_match_the_reference() {
    let Some(cuda) = gpu("recurrent_layers_match_the_reference", FLOATS) else {
        return;
    };
    let mut mem = vec![0f32; FLOATS];
    let (want_loss, want) = recurrent_run(&mut Tape::<Cpu<f32>, ATTENTION_NODES>::new(&mut mem));
    let (got_loss, got) = recurrent_run(&mut Tape::<_, ATTENTION_NODES>::with_backend(cuda));
    close("loss", &[got_loss], &[want_loss], 1e-5, 1e-5);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && want.iter().filter(|g| g.abs() > 1e-3 * scale).count() > 100);
    close("gradients", &got, &want, 0.0, 2e-4 * scale);
}
