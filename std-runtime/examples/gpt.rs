//! A small character-level GPT trained with the library: a token embedding and learned
//! positions, two pre-norm `TransformerEncoderLayer`s with the causal mask (width 64, 4 heads,
//! feed-forward 256: a GPT block each), a final layer norm and a linear map to the characters;
//! AdamW with a cosine learning rate, dropout 0.1, batch 16 of 64-character windows. It learns
//! the text of this repository's README (the last tenth held out) and prints the held-out loss
//! against the unigram baseline, and then a sample it writes, one character at a time.
//!
//! Run: `cargo run --release -p mote-runtime --example gpt [cpu|parallel] [steps]`
//! (`parallel` and 2,000 steps by default). Exits non-zero unless the held-out loss is below 0.6
//! of the unigram model's.

use std::time::Instant;

use mote::nn::attention::{TransformerEncoderConfig, TransformerEncoderLayer};
use mote::{
    Adam, AdamConfig, Cpu, Embedding, HostBackend, LayerNorm, Linear, Module, Optimizer, Rng, Tape,
    Var,
};
use mote_runtime::parallel::Parallel;

const TEXT: &str = include_str!("../../README.md");
const CONTEXT: usize = 64;
const BATCH: usize = 16;
const WIDTH: usize = 64;
const HEADS: usize = 4;
const LAYERS: usize = 2;
const NODES: usize = 512;

struct Gpt {
    tokens: Embedding,
    positions: Var,
    blocks: Vec<TransformerEncoderLayer>,
    norm: LayerNorm,
    head: Linear,
}

impl Gpt {
    /// Logits `[B * T, V]` for token ids `[B, T]` (as floats).
    fn forward<Bk: HostBackend<Elem = f32>>(
        &self,
        t: &mut Tape<Bk, NODES>,
        ids: Var,
        b: usize,
        len: usize,
    ) -> mote::Result<Var> {
        let x = self.tokens.forward(t, ids)?;
        let pos = t.slice(self.positions, 0, 0, len)?;
        let mut x = t.add(x, pos)?;
        for block in &self.blocks {
            x = block.forward_masked(t, x, None, None, true)?;
        }
        let x = self.norm.forward(t, x)?;
        let x = self.head.forward(t, x)?;
        t.reshape(x, &[b * len, self.head.out_features()])
    }
}

fn run<Bk: HostBackend<Elem = f32>>(backend: Bk, steps: usize) -> mote::Result<(f64, f64)> {
    // The characters, and the text as their indices; the last tenth held out.
    let mut chars: Vec<char> = TEXT.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let vocab = chars.len();
    let ids: Vec<usize> = TEXT
        .chars()
        .map(|c| chars.binary_search(&c).unwrap_or(0))
        .collect();
    let cut = ids.len() * 9 / 10;
    let (train, held) = ids.split_at(cut);
    if held.len() <= CONTEXT || train.len() <= CONTEXT + 1 {
        return Err(mote::Error::InvalidArgument {
            what: "gpt: the text is too short for its context window",
        });
    }

    let mut rng = Rng::new(7);
    let mut tape = Tape::<Bk, NODES>::with_backend(backend);
    let tokens = Embedding::new(&mut tape, vocab, WIDTH, &mut rng)?;
    mote::nn::init::normal(&mut tape, tokens.weight, 0.0, 0.02, &mut rng)?;
    let positions = tape.param_with(&[CONTEXT, WIDTH], || rng.normal() as f32 * 0.02)?;
    let config = TransformerEncoderConfig {
        dim_feedforward: 4 * WIDTH,
        dropout: 0.1,
        activation: mote::ops::unary::UnaryOp::GeluErf,
        norm_first: true,
        ..TransformerEncoderConfig::new(WIDTH, HEADS)
    };
    let blocks = (0..LAYERS)
        .map(|_| TransformerEncoderLayer::new(&mut tape, config, &mut rng))
        .collect::<mote::Result<Vec<_>>>()?;
    let norm = LayerNorm::new(&mut tape, WIDTH)?;
    let head = Linear::new(&mut tape, WIDTH, vocab, &mut rng)?;
    let mut model = Gpt {
        tokens,
        positions,
        blocks,
        norm,
        head,
    };
    let lr = 3e-3;
    let config = AdamConfig {
        lr,
        weight_decay: 0.01,
        ..AdamConfig::default()
    };
    let mut opt = Adam::adamw(&mut tape, config)?;
    let start = tape.mark();

    // A window of `CONTEXT + 1` characters from `from`: inputs and next-character targets.
    let window = |from: &[usize], at: usize| -> (Vec<f32>, Vec<usize>) {
        let w = &from[at..at + CONTEXT + 1];
        (
            w[..CONTEXT].iter().map(|&c| c as f32).collect(),
            w[1..].to_vec(),
        )
    };
    let t0 = Instant::now();
    for step in 0..steps {
        // Cosine decay to a tenth.
        let progress = step as f64 / steps as f64;
        opt.set_lr(lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())));
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for _ in 0..BATCH {
            let at = rng.below((train.len() - CONTEXT - 1) as u32) as usize;
            let (x, y) = window(train, at);
            xs.extend(x);
            ys.extend(y);
        }
        tape.rewind(start)?;
        let x = tape.input(&[BATCH, CONTEXT], &xs)?;
        let y = tape.labels(&ys)?;
        let logits = model.forward(&mut tape, x, BATCH, CONTEXT)?;
        let loss = tape.cross_entropy(logits, y)?;
        tape.backward(loss)?;
        opt.step(&mut tape)?;
        if step % 250 == 0 || step + 1 == steps {
            println!("step {step:5}: train loss {:.3}", tape.item(loss)?);
        }
    }
    let per_step = t0.elapsed().as_secs_f64() / steps.max(1) as f64;

    // Evaluation mode (no dropout). The held-out loss over consecutive windows, without
    // recording.
    for block in &mut model.blocks {
        block.set_training(false);
    }
    let (mut total, mut count) = (0.0, 0);
    let mut at = 0;
    while at + CONTEXT < held.len() {
        let (x, y) = window(held, at);
        tape.rewind(start)?;
        let l = tape.no_grad(|t| {
            let x = t.input(&[1, CONTEXT], &x)?;
            let y = t.labels(&y)?;
            let logits = model.forward(t, x, 1, CONTEXT)?;
            t.cross_entropy(logits, y)
        })?;
        total += f64::from(tape.item(l)?);
        count += 1;
        at += CONTEXT;
    }
    let held_loss = total / count as f64;
    // The unigram model's loss on the held-out text (training frequencies, add-one).
    let mut freq = vec![1.0f64; vocab];
    for &c in train {
        freq[c] += 1.0;
    }
    let sum: f64 = freq.iter().sum();
    let unigram = held.iter().map(|&c| -(freq[c] / sum).ln()).sum::<f64>() / held.len() as f64;
    println!(
        "held-out loss {held_loss:.3} nats a character (unigram {unigram:.3}), {:.1} ms a step, \
         {:.1} MB of arena",
        per_step * 1e3,
        tape.high_water_bytes() as f64 / 1e6
    );

    // A sample: 300 characters after the held-out text's first 32, at temperature 0.8.
    let mut text: Vec<usize> = held[..CONTEXT / 2].to_vec();
    for _ in 0..300 {
        let ctx = &text[text.len().saturating_sub(CONTEXT)..];
        let x: Vec<f32> = ctx.iter().map(|&c| c as f32).collect();
        tape.rewind(start)?;
        let logits = tape.no_grad(|t| {
            let x = t.input(&[1, ctx.len()], &x)?;
            model.forward(t, x, 1, ctx.len())
        })?;
        let out = tape.data(logits)?;
        let last = &out[(ctx.len() - 1) * vocab..];
        let top = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = last
            .iter()
            .map(|&v| (f64::from(v - top) / 0.8).exp())
            .collect();
        let mut pick = rng.uniform(0.0, weights.iter().sum());
        let mut next = vocab - 1;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                next = i;
                break;
            }
            pick -= w;
        }
        text.push(next);
    }
    let sample: String = text.iter().map(|&c| chars[c]).collect();
    println!("sample:\n{sample}");
    Ok((held_loss, unigram))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "parallel".into());
    let steps = match std::env::args().nth(2) {
        Some(s) => s.parse()?,
        None => 2000,
    };
    let mut mem = vec![0f32; 1 << 25];
    let (held, unigram) = match which.as_str() {
        "cpu" => run(Cpu::new(&mut mem), steps)?,
        _ => run(Parallel::new(&mut mem), steps)?,
    };
    // NaN (a diverged run) fails too.
    if held.is_nan() || held >= 0.6 * unigram {
        return Err(format!(
            "held-out loss {held:.3} is not below 0.6 of the unigram model's {unigram:.3}"
        )
        .into());
    }
    Ok(())
}
