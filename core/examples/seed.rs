//! The seed article's training loop, written with mote: Linear(8, 10) -> ReLU -> Linear(10, 1),
//! MSE, Adam, 1000 steps, on a learnable synthetic target. Prints the loss as it falls.
//!
//! Run: `cargo run --release -p mote --example seed`

use mote::{plan, Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};

// Everything a step touches lives here; the size is computed at compile time.
const FLOATS: usize = plan::mlp(&[8, 10, 1], 64, plan::Loss::Mse, plan::Opt::Adam);

fn main() -> Result<(), mote::Error> {
    let mut mem = [0f32; FLOATS];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let mut rng = Rng::new(0);
    let model = (
        Linear::new(&mut tape, 8, 10, &mut rng)?,
        Relu,
        Linear::new(&mut tape, 10, 1, &mut rng)?,
    );
    let mut opt = Adam::new(
        &mut tape,
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
    )?;
    let start = tape.mark(); // parameters and optimizer state stay below the mark

    // A learnable target: y = 0.5 x0 - 0.3 x1 + relu(x2 + x3).
    let xs: Vec<f32> = (0..64 * 8).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let ys: Vec<f32> = xs
        .chunks(8)
        .map(|r| 0.5 * r[0] - 0.3 * r[1] + (r[2] + r[3]).max(0.0))
        .collect();

    let t0 = std::time::Instant::now();
    let mut first = 0.0;
    for step in 0..1000 {
        tape.rewind(start)?; // drops the last step's activations and gradients
        let x = tape.input(&[64, 8], &xs)?;
        let y = tape.input(&[64, 1], &ys)?;
        let pred = model.forward(&mut tape, x)?;
        let loss = tape.mse(pred, y)?;
        tape.backward(loss)?; // loss.backward()
        opt.step(&mut tape)?; // optimizer.step()
        let l = tape.item(loss)?;
        if step == 0 {
            first = l;
        }
        if step % 100 == 0 || step == 999 {
            println!("step {step:4}  loss {l:.6}");
        }
    }
    let per_step = t0.elapsed().as_secs_f64() * 1e6 / 1000.0;
    // The loss of the trained model, in inference mode (records nothing).
    tape.rewind(start)?;
    let last = tape.no_grad(|t| {
        let x = t.input(&[64, 8], &xs)?;
        let y = t.input(&[64, 1], &ys)?;
        let pred = model.forward(t, x)?;
        let loss = t.mse(pred, y)?;
        t.item(loss)
    })?;
    println!(
        "loss {first:.4} -> {last:.6} ({:.0}x lower); arena {} bytes (planned {}), {:.1} us per step",
        first / last,
        tape.high_water_bytes(),
        plan::bytes::<f32>(FLOATS),
        per_step
    );
    Ok(())
}
