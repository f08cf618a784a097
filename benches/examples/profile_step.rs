//! Runs whole training steps of one workload in a loop, for profilers (`perf record`,
//! `valgrind --tool=callgrind`): `cargo run --release -p mote-benches --example profile_step --
//! W-digits 20000`.

use mote::{Cpu, Tape};
use mote_benches::{Kind, Workload, NODES, SEED};

fn main() -> Result<(), mote::Error> {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        Some("W-seed") => Kind::Seed,
        _ => Kind::Digits,
    };
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let mut mem = vec![0f32; kind.floats()];
    let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
    let mut w = Workload::new(kind, &mut tape, SEED)?;
    let t0 = std::time::Instant::now();
    let mut last = 0.0;
    for _ in 0..steps {
        let loss = w.step(&mut tape)?;
        last = tape.item(loss)?;
    }
    let per = t0.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{}: {steps} steps, {:.2} us/step, last loss {last}",
        kind.name(),
        per * 1e6
    );
    Ok(())
}
