//! Trains a 64-32-10 MLP on the digits of the firmware's training split, **with the classes 8
//! and 9 left out**, and writes its weights as a mote blob in f16 (what `mote export --format
//! blob --dtype f16` writes): `../data/digits-0to7.f16.blob`, which `finetune` includes with
//! `include_bytes!`. The device then freezes the backbone (the first layer) and trains only the
//! head on all ten classes, two of which this network never saw.
//!
//! Run from `embedded/host/` (the firmware's `.cargo/config.toml` sets a device target, so
//! name the host's): `cargo run --release --target "$(rustc -vV | sed -n 's/^host: //p')"`.

use mote::blob::{self, Dtype};
use mote::{Adam, AdamConfig, Cpu, Linear, Module, Optimizer, Relu, Rng, Tape};

include!("../../digits_data.rs");

/// Classes the host network is trained on: 0..SEEN.
const SEEN: usize = 8;

fn main() {
    let gz = include_bytes!("../../../core/data/digits.csv.gz");
    let records = digit_records(gz);
    let (train, test) = records.split_at(TRAIN);
    let train: Vec<&[u8; 65]> = train.iter().filter(|r| (r[64] as usize) < SEEN).collect();
    let pixels = |r: &[u8; 65]| {
        r[..64]
            .iter()
            .map(|&p| p as f32 / 16.0)
            .collect::<Vec<f32>>()
    };

    let mut mem = vec![0f32; 64 * 1024];
    let mut tape = Tape::<Cpu<f32>, 32>::new(&mut mem);
    let mut rng = Rng::new(2024);
    let model = (
        Linear::new(&mut tape, 64, 32, &mut rng).unwrap(),
        Relu,
        Linear::new(&mut tape, 32, 10, &mut rng).unwrap(),
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
    let mut order: Vec<usize> = (0..train.len()).collect();
    const B: usize = 16;
    for _epoch in 0..30 {
        rng.shuffle(&mut order);
        for batch in order.chunks(B) {
            let xs: Vec<f32> = batch.iter().flat_map(|&i| pixels(train[i])).collect();
            let ys: Vec<usize> = batch.iter().map(|&i| train[i][64] as usize).collect();
            tape.rewind(start).unwrap();
            let x = tape.input(&[batch.len(), 64], &xs).unwrap();
            let y = tape.labels(&ys).unwrap();
            let logits = model.forward(&mut tape, x).unwrap();
            let loss = tape.cross_entropy(logits, y).unwrap();
            tape.backward(loss).unwrap();
            opt.step(&mut tape).unwrap();
        }
    }
    // Held-out accuracy, on the classes it saw and on all ten.
    let (mut seen_ok, mut seen_n, mut all_ok) = (0, 0, 0);
    for r in test {
        tape.rewind(start).unwrap();
        let x = tape.input(&[1, 64], &pixels(r)).unwrap();
        let logits = tape.no_grad(|t| model.forward(t, x)).unwrap();
        let z = tape.data(logits).unwrap();
        let pred = (0..10).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
        let label = r[64] as usize;
        all_ok += (pred == label) as usize;
        if label < SEEN {
            seen_n += 1;
            seen_ok += (pred == label) as usize;
        }
    }
    println!(
        "host: held-out accuracy {:.1}% on classes 0-{} ({seen_ok}/{seen_n}), {:.1}% on all ten ({all_ok}/{})",
        100.0 * seen_ok as f64 / seen_n as f64,
        SEEN - 1,
        100.0 * all_ok as f64 / test.len() as f64,
        test.len()
    );
    let mut out = vec![0u8; blob::size(&tape, Dtype::F16)];
    let n = blob::save(&tape, Dtype::F16, &mut out).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits-0to7.f16.blob");
    std::fs::write(path, &out[..n]).unwrap();
    println!("host: wrote {n} bytes to embedded/data/digits-0to7.f16.blob");
}

/// The firmware's strided copy (`embedded/src/copy.rs`, plain Rust), compiled here so that it is
/// checked against the core's reference copy on the host.
#[cfg(test)]
#[path = "../../src/copy.rs"]
mod copy;

#[cfg(test)]
mod tests {
    use mote::ops::movement::{copy, Strided};
    use mote::{Rng, Shape};

    /// Random index spaces of rank 1-4 (dimensions 1-4), strides 0-6 (0 repeats, in the
    /// destination overwrites or sums), both modes: the firmware's copy gives the reference's
    /// results bit for bit, -0.0 included.
    #[test]
    fn firmware_copy_matches_the_reference() {
        let mut rng = Rng::new(11);
        let mut draw = |n: usize| (rng.next_f32() * n as f32) as usize % n;
        for case in 0..20_000 {
            let rank = 1 + draw(4);
            let dims: Vec<usize> = (0..rank).map(|_| 1 + draw(4)).collect();
            let space = Shape::new(&dims).unwrap();
            let strides = |contiguous: bool, draw: &mut dyn FnMut(usize) -> usize| {
                let mut s = [0usize; 4];
                if contiguous {
                    s[..rank].copy_from_slice(&space.strides()[..rank]);
                } else {
                    for v in s.iter_mut().take(rank) {
                        *v = draw(7);
                    }
                }
                s
            };
            let (src_offset, src_contiguous) = (draw(8), draw(3) == 0);
            let src = Strided {
                offset: src_offset,
                strides: strides(src_contiguous, &mut draw),
            };
            let (dst_offset, dst_contiguous) = (2048 + draw(8), draw(2) == 0);
            let dst = Strided {
                offset: dst_offset,
                strides: strides(dst_contiguous, &mut draw),
            };
            let accumulate = draw(2) == 0;
            let mut buf: Vec<f32> = (0..4096)
                .map(|i| {
                    if i % 13 == 0 {
                        -0.0
                    } else {
                        (i as f32 * 0.37).sin()
                    }
                })
                .collect();
            let mut want = buf.clone();
            super::copy::copy_any(&mut buf, &space, src, dst, accumulate).unwrap();
            let (lo, hi) = want.split_at_mut(2048);
            copy(
                &space,
                &lo[src.offset..],
                src.strides,
                &mut hi[dst.offset - 2048..],
                dst.strides,
                accumulate,
            );
            for (i, (a, b)) in buf.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "case {case}: {dims:?} {src:?} {dst:?} accumulate {accumulate}: element {i}"
                );
            }
        }
    }
}
