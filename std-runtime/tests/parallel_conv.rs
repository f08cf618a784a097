//! Convolutional and normalisation layers on the parallel backend against the reference: a CNN
//! (conv2d with padding and groups, batch norm, max and average pooling, conv1d, dropout,
//! embedding) forward and backward, the convolutions at sizes above the parallel thresholds
//! (a 32 x 8 x 32 x 32 batch: products of 75 M multiply-adds, 1 M-element activations); every parameter's
//! gradient and the loss agree within f32 rounding.

use mote::{
    AvgPool2d, BatchNorm, Conv2d, ConvConfig, Cpu, Dropout, Embedding, Flatten, HostBackend,
    Linear, MaxPool2d, Module, PoolConfig, Relu, Rng, Tape, Var,
};
use mote_runtime::parallel::Parallel;

/// Builds the model on `tape` from a fixed seed, runs one forward/backward on fixed data, and
/// returns the loss and every parameter gradient, flattened.
fn run<B: HostBackend<Elem = f32>>(tape: &mut Tape<B, 96>) -> (f32, Vec<f32>) {
    let mut rng = Rng::new(5);
    let same = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let model = (
        Conv2d::new(tape, 8, 32, [3, 3], same, 1, true, &mut rng).unwrap(),
        BatchNorm::new(tape, 32).unwrap(),
        Relu,
        MaxPool2d(PoolConfig::square(2)),
        Conv2d::new(tape, 32, 32, [3, 3], same, 4, false, &mut rng).unwrap(),
        Relu,
        AvgPool2d(PoolConfig::square(2)),
        Flatten,
        Dropout::new(0.2, 9).unwrap(),
        Linear::new(tape, 32 * 8 * 8, 10, &mut rng).unwrap(),
    );
    let emb = Embedding::new(tape, 20, 8, &mut rng).unwrap();
    let conv1 = mote::Conv1d::new(tape, 8, 4, 3, 1, &mut rng).unwrap();
    let x: Vec<f32> = (0..32 * 8 * 32 * 32)
        .map(|_| rng.next_f32() - 0.5)
        .collect();
    let ids: Vec<usize> = (0..32 * 6).map(|i| (i * 7) % 20).collect();
    let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();

    let xv = tape.input(&[32, 8, 32, 32], &x).unwrap();
    let logits = model.forward(tape, xv).unwrap();
    // A sequence branch: embed [32, 6] ids -> [32, 6, 8] -> [32, 8, 6] -> conv1d -> [32, 4, 4].
    let idv = tape.labels(&ids).unwrap();
    let idv = tape.reshape(idv, &[32, 6]).unwrap();
    let e = emb.forward(tape, idv).unwrap();
    let e = tape.transpose(e, 1, 2).unwrap();
    let s = conv1.forward(tape, e).unwrap();
    let s = tape.mean(s).unwrap();
    let y = tape.labels(&labels).unwrap();
    let ce = tape.cross_entropy(logits, y).unwrap();
    let loss = tape.add(ce, s).unwrap();
    tape.backward(loss).unwrap();
    let mut grads = Vec::new();
    let params: Vec<Var> = tape.params().collect();
    for p in params {
        if let Ok(Some(g)) = tape.grad_data(p) {
            grads.extend_from_slice(g);
        }
    }
    (tape.item(loss).unwrap(), grads)
}

#[test]
fn cnn_gradients_match_the_reference() {
    let mut m1 = vec![0f32; 1 << 25];
    let mut m2 = vec![0f32; 1 << 25];
    let (l1, g1) = run(&mut Tape::<Cpu<f32>, 96>::new(&mut m1));
    let (l2, g2) = run(&mut Tape::with_backend(Parallel::new(&mut m2)));
    assert!(
        (l1 - l2).abs() <= 1e-5 * (1.0 + l1.abs()),
        "loss {l1} vs {l2}"
    );
    assert_eq!(g1.len(), g2.len());
    let scale = g1.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "gradient {i}: {a} vs {b} (scale {scale})"
        );
    }
}
