//! The conv2d workload's layer (batch 64, 32 -> 64 channels, 3x3, padding 1, 32x32 images;
//! forward, mean, backward) on the multithreaded backend with each choice of convolution
//! kernels, alternated so that a noisy machine moves them alike:
//! `cargo run --release -p mote-runtime --example conv_kernels [rounds] [stride]`; with stride
//! 2, a downsampling layer instead (64 -> 128 channels, 32x32 -> 16x16).

use std::time::Instant;

use mote::{ConvConfig, Rng, Tape};
use mote_runtime::parallel::{ConvKernels, Parallel};

fn main() -> mote::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let stride: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let (n, ci, co, hw) = if stride == 1 {
        (64, 32, 64, 32)
    } else {
        (64, 64, 128, 32)
    };
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..n * ci * hw * hw)
        .map(|_| rng.next_f32() - 0.5)
        .collect();
    let w: Vec<f32> = (0..co * ci * 9).map(|_| rng.next_f32() - 0.5).collect();
    let cfg = ConvConfig {
        padding: [1, 1],
        stride: [stride, stride],
        ..ConvConfig::default()
    };
    let kinds = [ConvKernels::Best, ConvKernels::Avx2, ConvKernels::Im2col];
    let mut mem = vec![0f32; 1 << 25];
    let threads = mote_runtime::parallel::threads();
    println!(
        "conv2d layer {n}x{ci}x{hw}x{hw} -> {co} channels, 3x3, stride {stride}, {threads} \
         threads: median ms per step over 10 steps, per round"
    );
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for kind in kinds {
            let backend = Parallel::new(&mut mem).with_conv_kernels(kind);
            let mut tape = Tape::<_, 16>::with_backend(backend);
            let wv = tape.param(&[co, ci, 3, 3], &w)?;
            let start = tape.mark();
            let mut times = Vec::new();
            for step in 0..12 {
                let t0 = Instant::now();
                tape.rewind(start)?;
                let xv = tape.param(&[n, ci, hw, hw], &x)?;
                let y = tape.conv2d(xv, wv, None, cfg)?;
                let loss = tape.mean(y)?;
                tape.backward(loss)?;
                // The first two steps warm up.
                if step >= 2 {
                    times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            line += &format!("  {kind:?} {:.1}", times[times.len() / 2]);
        }
        println!("{line}");
    }
    Ok(())
}
