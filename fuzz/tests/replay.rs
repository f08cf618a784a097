//! The fuzz targets' logic driven from ordinary tests (stable Rust, no libFuzzer):
//! - pseudo-random inputs through `run_ops`, `run_blob` and `run_inputs`;
//! - mutations of valid files (CSV, checkpoints of MLPs and a CNN, IDX) through `run_inputs`
//!   (which reseals checkpoints: their CRCs computed anew), and edits of a checkpoint's
//!   description that reach its checks once resealed;
//! - mutations of valid blobs (with the CRC fixed up, so they get past the checksum);
//! - every file in `corpus/<target>`, `artifacts/<target>` and `seeds/<target>` that exists,
//!   so `cargo test --manifest-path fuzz/Cargo.toml` replays a crash the fuzzer saved.
//!
//! `MOTE_FUZZ_CASES` sets the number of random cases (default 2000).
//! `MOTE_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml write_seeds` rewrites
//! the small seed files in `seeds/`.

use std::path::Path;

use mote::blob::{self, crc32, Dtype};
use mote::{Cpu, Linear, Rng, Tape};
use mote_fuzz::{run_blob, run_inputs, run_ops};

fn cases() -> usize {
    std::env::var("MOTE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// xorshift64*: deterministic bytes without a dependency.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_op_sequences_do_not_panic() {
    let mut g = Bytes(0x9E37_79B9_7F4A_7C15);
    run_ops(&[]);
    for i in 0..cases() {
        let len = (g.next() % 600) as usize;
        let data = g.fill(len);
        let res = std::panic::catch_unwind(|| run_ops(&data));
        if res.is_err() {
            panic!("case {i} panicked; input (hex): {}", hex(&data));
        }
    }
}

/// The blob of the fuzz target's fixed model (`Linear(3, 4) -> Linear(4, 2)`), and others.
fn valid_blobs() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (sizes, dtype) in [
        (&[(3, 4), (4, 2)][..], Dtype::F32),
        (&[(3, 4), (4, 2)][..], Dtype::F16),
        (&[(3, 4), (4, 2)][..], Dtype::Bf16),
        (&[(2, 1)][..], Dtype::F32),
        (&[][..], Dtype::F32),
    ] {
        let mut mem = [0f32; 512];
        let mut tape = Tape::<Cpu<f32>, 8>::new(&mut mem);
        let mut rng = Rng::new(7);
        for &(i, o) in sizes {
            Linear::new(&mut tape, i, o, &mut rng).unwrap();
        }
        let mut bytes = vec![0u8; blob::size(&tape, dtype)];
        let n = blob::save(&tape, dtype, &mut bytes).unwrap();
        bytes.truncate(n);
        out.push(bytes);
    }
    out
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= 4 {
        let at = b.len() - 4;
        let crc = crc32(&b[..at]);
        b[at..].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn mutated_blobs_do_not_panic() {
    let blobs = valid_blobs();
    for b in &blobs {
        run_blob(b);
    }
    let mut g = Bytes(0xD1B5_4A32_D192_ED03);
    for i in 0..cases() {
        let mut b = blobs[(g.next() % blobs.len() as u64) as usize].clone();
        for _ in 0..1 + g.next() % 4 {
            let at = (g.next() % b.len() as u64) as usize;
            match g.next() % 4 {
                0 => b[at] = g.next() as u8,
                1 => b[at] ^= 1 << (g.next() % 8),
                2 => b.truncate(at),
                _ => {
                    let k = (g.next() % 16) as usize;
                    let extra = g.fill(k);
                    b.extend_from_slice(&extra);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        if !g.next().is_multiple_of(4) {
            fix_crc(&mut b);
        }
        let res = std::panic::catch_unwind(|| run_blob(&b));
        if res.is_err() {
            panic!("case {i} panicked; input (hex): {}", hex(&b));
        }
    }
}

/// Replays whatever the fuzzer left behind (and the committed seeds).
#[test]
fn replay_saved_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for (target, run) in [
        ("ops", run_ops as fn(&[u8])),
        ("blob", run_blob),
        ("inputs", run_inputs),
    ] {
        for dir in ["seeds", "corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if !path.is_file() {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    panic!("{} panicked", path.display());
                }
                n += 1;
            }
        }
    }
    eprintln!("replayed {n} saved inputs");
}

/// Valid files for `run_inputs`, each with its selector byte first: a CSV file (for each label
/// choice), a checkpoint of a small MLP trained on it for no steps, an IDX file, gzip.
fn valid_inputs() -> Vec<Vec<u8>> {
    use mote_runtime::checkpoint;
    use mote_runtime::data::{self, CsvOptions, Dataset};
    use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig};
    use mote_runtime::train::{TrainConfig, TrainState};
    let csv = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n2,2,0\n4,4,1\n\"q\",9,0\n";
    let mut out: Vec<Vec<u8>> = (0..4u8)
        .map(|choice| [&[choice * 4][..], csv.as_bytes()].concat())
        .collect();
    let ok_csv = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n2,2,0\n4,4,1\n";
    let table = data::parse_csv(ok_csv, "seed.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, None, None).unwrap();
    let spec = ModelSpec::for_dataset(&ds, &[4], &[0, 1, 2, 3]).unwrap();
    let opt = OptimizerConfig::Adam {
        lr: 1e-3,
        weight_decay: 0.0,
        amsgrad: false,
    };
    let config = TrainConfig::new("seed.csv");
    let mut mem = vec![0f32; arena_floats(&spec, &opt, config.batch).unwrap()];
    let model = Model::new(Cpu::new(&mut mem), spec, opt, &mut Rng::new(1)).unwrap();
    let ck = checkpoint::to_bytes_model(&model, &config, &TrainState::new(1)).unwrap();
    out.push([&[1u8][..], &ck].concat());
    // IDX: unsigned bytes, 2 images of 2 x 2.
    out.push(vec![
        2, 0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8,
    ]);
    // gzip of "a,b\n".
    out.push(vec![
        3, 31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 75, 212, 73, 226, 2, 0, 197, 16, 151, 36, 4, 0, 0, 0,
    ]);
    // A version-2 checkpoint (another activation, gradient clipping; its description under
    // a CRC of its own).
    let mut model = model;
    model.spec.activation = mote_runtime::model::Activation::Silu;
    let clipped = TrainConfig {
        clip_grad_norm: Some(1.0),
        ..config
    };
    let ck2 = checkpoint::to_bytes_model(&model, &clipped, &TrainState::new(1)).unwrap();
    out.push([&[1u8][..], &ck2].concat());
    // A version-3 checkpoint (label smoothing).
    let smoothed = TrainConfig {
        label_smoothing: 0.1,
        ..clipped
    };
    let ck3 = checkpoint::to_bytes_model(&model, &smoothed, &TrainState::new(1)).unwrap();
    out.push([&[1u8][..], &ck3].concat());
    // A version-4 checkpoint (dropout, the loss monitored).
    model.spec.dropout = 0.25;
    let monitored = TrainConfig {
        monitor: mote_runtime::train::Monitor::Loss,
        ..smoothed
    };
    let ck4 = checkpoint::to_bytes_model(&model, &monitored, &TrainState::new(1)).unwrap();
    out.push([&[1u8][..], &ck4].concat());
    // A CNN's checkpoint (one block of 2 channels over the features as a 1x2x2 image, then
    // 2-3-2), trained with SGD with momentum (a momentum buffer per parameter).
    let cnn_csv = "a,b,c,d,y\n1,2,3,4,0\n4,3,2,1,1\n0,1,0,1,0\n1,0,1,0,1\n";
    let table = data::parse_csv(cnn_csv, "seed.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, None, None).unwrap();
    let spec = ModelSpec::cnn_for_dataset(&ds, &[2], &[3], &[0, 1, 2, 3]).unwrap();
    let sgd = OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let config = TrainConfig::new("seed.csv");
    let mut mem = vec![0f32; arena_floats(&spec, &sgd, config.batch).unwrap()];
    let model = Model::new(Cpu::new(&mut mem), spec, sgd, &mut Rng::new(1)).unwrap();
    let ck5 = checkpoint::to_bytes_model(&model, &config, &TrainState::new(1)).unwrap();
    out.push([&[1u8][..], &ck5].concat());
    // Each is valid for its reader.
    for at in [4, 7, 8, 9, 10] {
        let ck = checkpoint::from_bytes_checked(Path::new("seed"), &out[at][1..]);
        assert!(ck.is_ok(), "{ck:?}");
    }
    assert!(mote_runtime::idx::parse(&out[5][1..], "seed").is_ok());
    assert_eq!(data::gunzip(&out[6][1..], "seed").unwrap(), b"a,b\n");
    out
}

// Valid files read back (the checkpoint restores), then byte-level mutations of them: errors
// are fine, panics are not.
#[test]
fn mutated_files_do_not_panic() {
    let valid = valid_inputs();
    for v in &valid {
        run_inputs(v);
    }
    let mut g = Bytes(0xA076_1D64_78BD_642F);
    for i in 0..cases() {
        let mut data = valid[(g.next() % valid.len() as u64) as usize].clone();
        for _ in 0..1 + g.next() % 4 {
            let at = 1 + (g.next() as usize) % (data.len() - 1);
            match g.next() % 3 {
                0 => data[at] = g.next() as u8,
                1 => data.truncate(at),
                _ => data.insert(at, g.next() as u8),
            }
            if data.len() < 2 {
                break;
            }
        }
        let res = std::panic::catch_unwind(|| run_inputs(&data));
        if res.is_err() {
            panic!("case {i} panicked; input (hex): {}", hex(&data));
        }
    }
}

/// `bytes` with the first `from` replaced by `to`.
fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("no {from}"));
    [&bytes[..at], to.as_bytes(), &bytes[at + from.len()..]].concat()
}

// The fuzz target reseals the checkpoints it is given (`resealed_checkpoint`), so that a
// mutation of the description gets past the CRCs to the checks behind them: an edit in place
// (refused by the CRC before, by the description's check after), one that changes the
// header's length (not safetensors before; it loads and restores after), and the hostile CNN
// image whose size once overflowed (refused, and the target does not panic on it).
#[test]
fn resealed_mutations_reach_the_description_checks() {
    use mote_fuzz::resealed_checkpoint;
    use mote_runtime::checkpoint::from_bytes_checked;
    let valid = valid_inputs();
    let cnn = &valid[10][1..];
    let load = |b: &[u8]| from_bytes_checked(Path::new("fuzz"), b);
    let image = r#"\"image\":[1,2,2]"#;

    let wider = replaced(cnn, image, r#"\"image\":[1,4,2]"#);
    let e = load(&wider).unwrap_err().to_string();
    assert!(e.contains("description's CRC-32 does not match"), "{e}");
    let e = load(&resealed_checkpoint(&wider).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad model description: sizes[0] = 2"), "{e}");

    let renamed = replaced(cnn, r#"\"label\":\"y\""#, r#"\"label\":\"yy\""#);
    let e = load(&renamed).unwrap_err().to_string();
    assert!(e.contains("not valid safetensors"), "{e}");
    let ck = load(&resealed_checkpoint(&renamed).unwrap()).unwrap();
    assert_eq!(ck.spec.label, "yy");
    assert_eq!(ck.params, load(cnn).unwrap().params);

    let hostile = replaced(cnn, image, r#"\"image\":[1,4294967296,4294967296]"#);
    let e = load(&resealed_checkpoint(&hostile).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image [1, 4294967296, 4294967296]: more than 18446744073709551615 elements"),
        "{e}"
    );
    run_inputs(&[&[1u8][..], &hostile].concat());

    assert_eq!(resealed_checkpoint(b"not a checkpoint"), None);
}

/// Every seed fits the `-max_len` that `smoke.sh` gives its target (8192 bytes for `inputs`,
/// whose seeds hold whole checkpoints; 1024 for the others): libFuzzer cuts a longer one, and
/// a cut checkpoint seed would reach nothing behind the CRCs.
#[test]
fn seeds_fit_the_smoke_runs_max_len() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut seen = 0;
    for (target, max) in [("inputs", 8192), ("blob", 1024), ("ops", 1024)] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for f in dir {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len();
            assert!(len <= max, "{:?}: {len} bytes, past {max}", f.path());
            seen += 1;
        }
    }
    assert!(seen > 0, "no seeds found under {root:?}");
}

/// Writes the seed files (only with `MOTE_FUZZ_WRITE_SEEDS=1`).
#[test]
fn write_seeds() {
    if std::env::var("MOTE_FUZZ_WRITE_SEEDS").as_deref() != Ok("1") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dir = root.join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, b) in valid_inputs().iter().enumerate() {
        std::fs::write(dir.join(format!("valid-{i}.bin")), b).unwrap();
    }
    let dir = root.join("blob");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, b) in valid_blobs().iter().enumerate() {
        std::fs::write(dir.join(format!("valid-{i}.bin")), b).unwrap();
    }
    // Roughly a training step (any bytes are a valid input; this only gives the fuzzer a start):
    // byte 0 picks the backend (Cpu), byte 1 the rng
    // seed, byte 2 the arena fill; then actions (see `action` in src/lib.rs).
    let dir = root.join("ops");
    std::fs::create_dir_all(&dir).unwrap();
    let step: &[u8] = &[
        0, 1, 0, // Cpu, seed 1, arena filled with 0.0
        45, 3, 2, 0,  // Linear::new(3, 2)
        32, // mark
        0, 2, 4, 3, 7, 1, 2, // input [4, 3] (a pattern of two values)
        46, 0, 0, 0, 0, // module: the last linear on the last handle
        29, 0, 1, // backward(sum(last))
        39, 1, 1, 0, // Adam::new(default)
        40, 1, 1, // adam step
        33, 0, 0, // rewind to the mark
    ];
    std::fs::write(dir.join("step.bin"), step).unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
