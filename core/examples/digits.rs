//! Trains a 64-32-10 MLP on the bundled handwritten digits (1,797 8x8 images, UCI, CC BY 4.0)
//! on the reference backend, and prints the held-out accuracy.
//!
//! Run: `cargo run --release -p mote --example digits`

use std::io::Read;

use mote::{plan, Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};

const BATCH: usize = 32;
const EVAL: usize = 128;
// Training needs the step's arena; evaluation batches of 128 in no_grad mode need their input
// and activations on top of the parameters, which the training step's room covers.
const FLOATS: usize = plan::mlp(
    &[64, 32, 10],
    BATCH,
    plan::Loss::CrossEntropy,
    plan::Opt::Adam,
) + plan::mlp_inference(&[64, 32, 10], EVAL);

fn load() -> (Vec<f32>, Vec<usize>) {
    let gz = include_bytes!("../data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("bundled data is valid gzip");
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let cells: Vec<f32> = line
            .split(',')
            .map(|c| c.trim().parse().expect("numeric cell"))
            .collect();
        xs.extend(cells[..64].iter().map(|v| v / 16.0));
        ys.push(cells[64] as usize);
    }
    (xs, ys)
}

fn main() -> Result<(), mote::Error> {
    let (xs, ys) = load();
    let mut rng = Rng::new(42);
    let mut order: Vec<usize> = (0..ys.len()).collect();
    rng.shuffle(&mut order);
    let (test, train) = order.split_at(ys.len() / 5);
    let mut train = train.to_vec();
    println!(
        "digits: {} training images, {} held out",
        train.len(),
        test.len()
    );

    let mut mem = vec![0f32; FLOATS];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let model = (
        Linear::new(&mut tape, 64, 32, &mut rng)?,
        Relu,
        Linear::new(&mut tape, 32, 10, &mut rng)?,
    );
    let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
    let start = tape.mark();

    let (mut bx, mut by) = (vec![0f32; BATCH * 64], vec![0usize; BATCH]);
    let t0 = std::time::Instant::now();
    let mut steps = 0;
    for epoch in 1..=50 {
        rng.shuffle(&mut train);
        let mut total = 0.0;
        for batch in train.chunks(BATCH) {
            let b = batch.len();
            for (k, &i) in batch.iter().enumerate() {
                bx[k * 64..(k + 1) * 64].copy_from_slice(&xs[i * 64..(i + 1) * 64]);
                by[k] = ys[i];
            }
            tape.rewind(start)?;
            let x = tape.input(&[b, 64], &bx[..b * 64])?;
            let y = tape.labels(&by[..b])?;
            let logits = model.forward(&mut tape, x)?;
            let loss = tape.cross_entropy(logits, y)?;
            tape.backward(loss)?;
            opt.step(&mut tape)?;
            total += tape.item(loss)? * b as f32;
            steps += 1;
        }
        if epoch % 10 == 0 || epoch == 1 {
            println!(
                "epoch {epoch:3}  train loss {:.4}",
                total / train.len() as f32
            );
        }
    }
    let elapsed = t0.elapsed();

    let mut correct = 0;
    for chunk in test.chunks(EVAL) {
        tape.rewind(start)?;
        let data: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| xs[i * 64..(i + 1) * 64].iter().copied())
            .collect();
        let logits = tape.no_grad(|t| {
            let x = t.input(&[chunk.len(), 64], &data)?;
            model.forward(t, x)
        })?;
        for (row, &i) in tape.data(logits)?.chunks(10).zip(chunk) {
            let pred = (0..10)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            correct += usize::from(pred == ys[i]);
        }
    }
    println!(
        "held-out accuracy {:.2}% ({correct}/{}); {steps} steps in {:.2} s ({:.1} us per step); arena {} KB",
        100.0 * correct as f64 / test.len() as f64,
        test.len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / steps as f64,
        tape.high_water_bytes() / 1024
    );
    Ok(())
}
