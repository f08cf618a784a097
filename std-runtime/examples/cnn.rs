//! A small CNN on the bundled digits (8x8 images as `[N, 1, 8, 8]`), trained with the library
//! on the multithreaded backend (or the reference one): conv 3x3 (1 -> 16) -> ReLU -> max-pool
//! 2 -> conv 3x3 (16 -> 32) -> ReLU -> max-pool 2 -> linear (128 -> 10), Adam, batch 32,
//! 40 epochs, the same stratified 80/20 split as `mote train`. Prints the validation accuracy
//! (>= 97% expected) and the time per step.
//!
//! Run: `cargo run --release -p mote-runtime --example cnn [cpu|parallel]`

use std::time::Instant;

use mote::{
    Adam, AdamConfig, Conv2d, ConvConfig, Cpu, Flatten, HostBackend, Linear, MaxPool2d, Module,
    Optimizer, PoolConfig, Relu, Rng, Tape,
};
use mote_runtime::data::{self, CsvOptions, Dataset};
use mote_runtime::parallel::Parallel;

const B: usize = 32;
const EPOCHS: usize = 40;

fn train<Bk: HostBackend<Elem = f32>>(
    backend: Bk,
    ds: &Dataset,
    train: &[usize],
    val: &[usize],
) -> mote::Result<(f64, f64)> {
    let labels = ds.class_labels().unwrap_or(&[]);
    let mut rng = Rng::new(42);
    let mut tape = Tape::<Bk, 64>::with_backend(backend);
    let same = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let model = (
        Conv2d::new(&mut tape, 1, 16, [3, 3], same, 1, true, &mut rng)?,
        Relu,
        MaxPool2d(PoolConfig::square(2)),
        Conv2d::new(&mut tape, 16, 32, [3, 3], same, 1, true, &mut rng)?,
        Relu,
        MaxPool2d(PoolConfig::square(2)),
        Flatten,
        Linear::new(&mut tape, 128, 10, &mut rng)?,
    );
    let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
    let start = tape.mark();
    // Pixels 0..16 scaled to [0, 1].
    let pixel = |i: usize| ds.x[i * 64..(i + 1) * 64].iter().map(|v| v / 16.0);
    let mut order = train.to_vec();
    let (mut bx, mut by) = (Vec::with_capacity(B * 64), Vec::with_capacity(B));
    let (mut steps, t0) = (0usize, Instant::now());
    for _ in 0..EPOCHS {
        rng.shuffle(&mut order);
        for batch in order.chunks(B) {
            bx.clear();
            by.clear();
            for &i in batch {
                bx.extend(pixel(i));
                by.push(labels[i]);
            }
            tape.rewind(start)?;
            let x = tape.input(&[batch.len(), 1, 8, 8], &bx)?;
            let y = tape.labels(&by)?;
            let logits = model.forward(&mut tape, x)?;
            let loss = tape.cross_entropy(logits, y)?;
            tape.backward(loss)?;
            opt.step(&mut tape)?;
            steps += 1;
        }
    }
    let per_step = t0.elapsed().as_secs_f64() / steps as f64;
    let mut correct = 0;
    for chunk in val.chunks(128) {
        tape.rewind(start)?;
        let xs: Vec<f32> = chunk.iter().flat_map(|&i| pixel(i)).collect();
        let logits = tape.no_grad(|t| {
            let x = t.input(&[chunk.len(), 1, 8, 8], &xs)?;
            model.forward(t, x)
        })?;
        let out = tape.data(logits)?;
        for (row, &i) in out.chunks(10).zip(chunk) {
            let pred = (0..10)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            correct += usize::from(pred == labels[i]);
        }
    }
    Ok((correct as f64 / val.len() as f64, per_step))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "parallel".into());
    let table = data::digits(&CsvOptions::default())?;
    let ds = Dataset::from_table(&table, None, None)?;
    let (train_rows, val_rows) = data::split(ds.rows, 0.2, 42, ds.class_labels())?;
    let mut mem = vec![0f32; 1 << 21];
    let (acc, per_step) = match which.as_str() {
        "cpu" => train(Cpu::new(&mut mem), &ds, &train_rows, &val_rows)?,
        _ => train(Parallel::new(&mut mem), &ds, &train_rows, &val_rows)?,
    };
    println!(
        "digits CNN on the {which} backend: validation accuracy {:.2}% ({} rows), {:.0} us per step",
        acc * 100.0,
        val_rows.len(),
        per_step * 1e6
    );
    if acc < 0.97 {
        return Err(format!("validation accuracy {:.2}% is below 97%", acc * 100.0).into());
    }
    Ok(())
}
