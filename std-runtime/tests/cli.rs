//! End-to-end tests through the real `mote` binary: train -> save -> eval -> predict -> export,
//! resume equivalence, every CSV error case, corrupt and truncated checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mote::{Cpu, Module, Tape};
use mote_runtime::checkpoint;
use mote_runtime::data::{digits, CsvOptions};
use mote_runtime::model::{argmax, Mlp};

/// The `mote` binary cargo built beside this test, or `MOTE_BIN` (the GPU machine runs this
/// test binary away from the build folder: `scripts/gpu-check.sh`).
fn bin() -> PathBuf {
    std::env::var_os("MOTE_BIN").map_or_else(|| env!("CARGO_BIN_EXE_mote").into(), PathBuf::from)
}

/// A fresh folder under the system's temp folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mote-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mote(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("the mote binary runs")
}

fn ok(dir: &TempDir, args: &[&str]) -> String {
    let o = mote(dir, args);
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "mote {args:?} failed:\n{so}\n{se}");
    so.into_owned()
}

/// Runs a command that must fail; returns its stderr after checking that it is a short,
/// clean error (no panic, no backtrace, non-zero status).
fn fails(dir: &TempDir, args: &[&str]) -> String {
    let o = mote(dir, args);
    let se = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "mote {args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "{se}");
    assert!(
        !se.contains("panicked") && !se.contains("backtrace"),
        "{se}"
    );
    assert!(se.starts_with("error: "), "{se}");
    assert!(se.lines().count() <= 2, "more than two lines:\n{se}");
    se
}

/// Each case's arguments after `prefix` fail with an error that contains its text.
fn fails_with(dir: &TempDir, prefix: &[&str], cases: &[(&[&str], &str)]) {
    for (args, want) in cases {
        let e = fails(dir, &[prefix, args].concat());
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// `mote eval` of the checkpoint `model` with its version `from` rewritten to `to` (one
/// digit each): the error it gives.
fn eval_as_version(dir: &TempDir, model: &str, from: u8, to: u8) -> String {
    let mut bytes = std::fs::read(dir.path(model)).unwrap();
    let key = format!(r#""version":"{}""#, char::from(from));
    let at = find(&bytes, &key).unwrap_or_else(|| panic!("{model}: no {key}"));
    bytes[at + 11] = to;
    let forged = format!("v{}-{model}", char::from(to));
    std::fs::write(dir.path(&forged), bytes).unwrap();
    fails(dir, &["eval", "--model", &forged])
}

/// Asserts that the Rust file `name` in `dir` (an export) compiles as a library.
fn assert_compiles(dir: &TempDir, name: &str) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let c = Command::new(rustc)
        .args([
            "--crate-type",
            "lib",
            "--edition",
            "2021",
            "--emit",
            "metadata",
            name,
        ])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
}

/// The validation accuracy (%) on the `final (epoch N)` line of a training run's output.
fn final_accuracy(out: &str, epochs: usize) -> f64 {
    let last = out
        .lines()
        .find(|l| l.starts_with(&format!("final (epoch {epochs})")))
        .unwrap_or_else(|| panic!("no final line for epoch {epochs}:\n{out}"));
    last.split("validation accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy on: {last}"))
}

/// The main job: `mote train` alone trains on the bundled digits and ends at >= 96% held out.
#[test]
fn mote_train_alone_reaches_96_percent() {
    let d = TempDir::new("main");
    let out = ok(&d, &["train"]);
    assert!(
        out.starts_with("training MLP 64-32-10, 10 classes on digits"),
        "{out}"
    );
    let acc = final_accuracy(&out, 50);
    assert!(acc >= 96.0, "{out}");
    assert!(out.contains("trained 50 epochs, 2250 steps"), "{out}");
}

/// `mote train --model cnn`: convolution blocks over the digits as 1x8x8 images reach >= 97%;
/// the checkpoint evaluates, resumes and exports (blob and Rust, see [`check_cnn_export`]),
/// as does a small CNN with a hidden layer.
#[test]
fn cnn_trains_saves_evaluates_and_resumes() {
    let d = TempDir::new("cnn");
    let out = ok(&d, &["train", "--model", "cnn", "--save", "c.safetensors"]);
    assert!(
        out.starts_with("training CNN on 1x8x8 images: conv blocks 16,32, then MLP 128-10"),
        "{out}"
    );
    let acc = final_accuracy(&out, 50);
    assert!(acc >= 97.0, "{out}");
    let eval = ok(&d, &["eval", "--model", "c.safetensors"]);
    assert!(
        eval.contains(&format!("accuracy {acc:.2}%")),
        "{eval}\n{out}"
    );
    ok(
        &d,
        &["train", "--resume", "c.safetensors", "--epochs", "1", "-q"],
    );
    check_cnn_export(&d, "c", 0.98);
    let small = ok(
        &d,
        &[
            "train",
            "--model",
            "cnn",
            "--conv",
            "4",
            "--hidden",
            "16",
            "--epochs",
            "2",
            "-q",
            "--save",
            "s.safetensors",
        ],
    );
    assert!(small.contains("saved s.safetensors"), "{small}");
    check_cnn_export(&d, "s", 0.95);
    let e = fails(&d, &["train", "--conv", "8"]);
    assert!(e.contains("--conv needs --model cnn"), "{e}");
}

/// The `pub const NAME: [f32; N] = [...];` arrays of an f32 Rust export, in file order.
fn rust_arrays(src: &str) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    let mut lines = src.lines();
    while let Some(l) = lines.next() {
        let Some(rest) = l.strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, ty)) = rest.split_once(": [f32; ") else {
            continue;
        };
        let n: usize = ty.split(']').next().unwrap().parse().unwrap();
        let mut v = Vec::with_capacity(n);
        for l in lines.by_ref() {
            if l == "];" {
                break;
            }
            v.extend(
                l.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| c.parse::<f32>().unwrap()),
            );
        }
        assert_eq!(v.len(), n, "{name}");
        out.push((name.to_string(), v));
    }
    out
}

/// The first `n` raw rows of the bundled digits (features only), and the classes `mote
/// predict --model {model}` gives them.
fn predict_raw_digits(d: &TempDir, model: &str, n: usize) -> (Vec<f32>, Vec<usize>) {
    let t = digits(&CsvOptions::default()).unwrap();
    let f = t.feature_names.len();
    let raw = t.features[..n * f].to_vec();
    let mut csv = t.feature_names.join(",") + "\n";
    for row in raw.chunks(f) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv += &(cells.join(",") + "\n");
    }
    let rows_csv = format!("{model}-rows.csv");
    d.write(&rows_csv, &csv);
    let pred = ok(d, &["predict", "--model", model, "--data", &rows_csv]);
    let predicted: Vec<usize> = pred
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(predicted.len(), n);
    (raw, predicted)
}

/// Exports the CNN checkpoint `{name}.safetensors` as blobs (f32, f16, bf16) and as Rust, and
/// checks them against `mote predict` and the checkpoint's own outputs on raw digit rows: the
/// blob loads (`mote::blob::load`) into the runtime's own network (`build_net`) built on a
/// `Cpu` tape after two `[64]` tensors (the exported standardisation, applied to the raw rows
/// on the tape); f32 gives the checkpoint's logits to 1e-4 and the same predictions, f16 and
/// bf16 the same predictions on at least `agree` of the rows. The f32 Rust file holds the same
/// tensors, in the same order, with the documented names, and compiles.
fn check_cnn_export(d: &TempDir, name: &str, agree: f64) {
    use mote_runtime::model::{build_net, NODES};
    let model = format!("{name}.safetensors");
    let ck = checkpoint::load(&d.path(&model)).unwrap();
    let spec = &ck.spec;
    assert!(!spec.conv.is_empty());
    let (f, classes) = (spec.inputs(), spec.outputs());
    assert_eq!((f, classes), (64, 10));

    // raw rows, what `mote predict` makes of them, and the checkpoint's own logits
    let n = 300;
    let (raw, predicted) = predict_raw_digits(d, &model, n);
    let raw = &raw[..];
    let mut mem =
        vec![0f32; mote_runtime::model::arena_floats(spec, &ck.opt, ck.config.batch).unwrap()];
    let mut m = ck.restore(Cpu::new(&mut mem)).unwrap();
    let mut x = raw.to_vec();
    spec.norm.apply(&mut x);
    let own = m.outputs(&x, n).unwrap();
    let own_pred: Vec<usize> = own.chunks(classes).map(argmax).collect();
    assert_eq!(own_pred, predicted);

    let tensors = 2 + 2 * (spec.conv.len() + spec.sizes.len() - 1);
    let mut f32_len = 0;
    for dtype in ["f32", "f16", "bf16"] {
        let bin = format!("{name}-{dtype}.bin");
        let said = ok(
            d,
            &[
                "export", "--model", &model, "--format", "blob", "--dtype", dtype, "-o", &bin,
            ],
        );
        assert!(said.contains("INPUT_MEAN and INPUT_INV_STD"), "{said}");
        let bytes = std::fs::read(d.path(&bin)).unwrap();
        let blob = mote::blob::Blob::parse(&bytes).unwrap();
        assert_eq!(blob.len(), tensors);
        if dtype == "f32" {
            f32_len = bytes.len();
        } else {
            assert!(bytes.len() < f32_len * 6 / 10);
        }
        // the runtime's network, after the two standardisation tensors; the blob fills them all
        let mut arena = vec![0f32; 4_000_000];
        let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut arena);
        let mean = tape.param_frozen(&[f], &vec![0.0; f]).unwrap();
        let inv_std = tape.param_frozen(&[f], &vec![0.0; f]).unwrap();
        let net = build_net(&mut tape, spec, &mut mote::Rng::new(7)).unwrap();
        mote::blob::load(&mut tape, &bytes).unwrap();
        let xv = tape.input(&[n, f], raw).unwrap();
        let y = tape
            .no_grad(|t| {
                let centred = t.sub(xv, mean)?;
                let scaled = t.mul(centred, inv_std)?;
                net.forward(t, scaled)
            })
            .unwrap();
        let logits = tape.data(y).unwrap().to_vec();
        let from_blob: Vec<usize> = logits.chunks(classes).map(argmax).collect();
        if dtype == "f32" {
            for (a, b) in logits.iter().zip(&own) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
            assert_eq!(from_blob, predicted);
        } else {
            let same = from_blob
                .iter()
                .zip(&predicted)
                .filter(|(a, b)| a == b)
                .count();
            assert!(same as f64 >= agree * n as f64, "{dtype}: {same}/{n} agree");
        }

        // Rust source: the same tensors, in the same order, with the documented names
        if dtype == "f32" {
            let rs = format!("{name}.rs");
            ok(
                d,
                &["export", "--model", &model, "--format", "rust", "-o", &rs],
            );
            let src = std::fs::read_to_string(d.path(&rs)).unwrap();
            let mut names = vec!["INPUT_MEAN".to_string(), "INPUT_INV_STD".to_string()];
            for j in 0..spec.conv.len() {
                names.push(format!("CONV{j}_WEIGHT"));
                names.push(format!("CONV{j}_BIAS"));
            }
            for l in 0..spec.sizes.len() - 1 {
                names.push(format!("LAYER{l}_WEIGHT"));
                names.push(format!("LAYER{l}_BIAS"));
            }
            let arrays = rust_arrays(&src);
            let got: Vec<&str> = arrays.iter().map(|a| a.0.as_str()).collect();
            assert_eq!(got, names);
            let mut cin = 1;
            let mut dims: Vec<Vec<usize>> = vec![vec![f], vec![f]];
            for &c in &spec.conv {
                dims.push(vec![c, cin, 3, 3]);
                dims.push(vec![c]);
                cin = c;
            }
            for w in spec.sizes.windows(2) {
                dims.push(vec![w[1], w[0]]);
                dims.push(vec![w[1]]);
            }
            for (i, ((name, values), dims)) in arrays.iter().zip(&dims).enumerate() {
                let shape = blob.shape(i).unwrap();
                assert_eq!(shape.rank(), dims.len(), "{name}");
                for (k, &dk) in dims.iter().enumerate() {
                    assert_eq!(shape.dim(k), dk, "{name}");
                }
                assert!(
                    src.contains(&format!("pub const {name}: [f32; {}] = [", values.len())),
                    "{name}"
                );
                let mut from_blob = vec![0f32; values.len()];
                blob.read(i, &mut from_blob).unwrap();
                assert_eq!(&from_blob, values, "{name}");
            }
            let conv = spec
                .conv
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            for line in [
                "pub const IMAGE: [usize; 3] = [1, 8, 8];".to_string(),
                format!("pub const CONV: [usize; {}] = [{conv}];", spec.conv.len()),
                format!("pub const SIZES: [usize; {}] = [", spec.sizes.len()),
                "pub const CLASSES: [&str; 10]".to_string(),
                "pub const FEATURES: [&str; 64]".to_string(),
            ] {
                assert!(src.contains(&line), "{line}\n{}", &src[..800]);
            }
            assert_compiles(d, &rs);
            // f16 source: u16 bit patterns, same names and lengths
            let rs16 = format!("{name}-f16.rs");
            ok(
                d,
                &[
                    "export", "--model", &model, "--format", "rust", "--dtype", "f16", "-o", &rs16,
                ],
            );
            let src16 = std::fs::read_to_string(d.path(&rs16)).unwrap();
            for (name, values) in &arrays {
                assert!(
                    src16.contains(&format!("pub const {name}: [u16; {}] = [", values.len())),
                    "{name}"
                );
            }
        }
    }
}

/// The checkpoint `bytes` with its model description's activation renamed to `name` and the
/// description's CRC-32 written anew (the checkpoint module's `meta_crc`, done here by hand:
/// each of the four JSON entries with its name, NUL-separated).
fn with_activation(bytes: &[u8], name: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = header["__metadata__"].as_object_mut().unwrap();
    let model = meta["model"]
        .as_str()
        .unwrap()
        .replace(r#""silu""#, &format!("{name:?}"));
    meta.insert("model".into(), model.into());
    let mut all = Vec::new();
    for key in ["model", "optimizer", "config", "state"] {
        all.extend_from_slice(key.as_bytes());
        all.push(0);
        all.extend_from_slice(meta[key].as_str().unwrap().as_bytes());
        all.push(0);
    }
    let crc = format!("{:08x}", mote::blob::crc32(&all));
    meta.insert("meta_crc32".into(), crc.into());
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &str) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// `--schedule plateau` (PyTorch's `ReduceLROnPlateau` on the validation loss): the rate is cut
/// by `--gamma` once the loss stops falling, and the header says how; misuse is a short error.
#[test]
fn plateau_schedule_cuts_the_rate_when_the_validation_loss_stalls() {
    let d = TempDir::new("plateau");
    let out = ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "--schedule",
            "plateau",
            "--lr-patience",
            "1",
            "--gamma",
            "0.5",
            "--lr",
            "0.01",
            "--epochs",
            "30",
            "--save",
            "p.safetensors",
        ],
    );
    assert!(
        out.contains("plateau (x0.5 after 2 epochs without a lower validation loss, down to 0)"),
        "{out}"
    );
    let lrs: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            l.split("  lr ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // (Without a terminal, the log shows the first and every other epoch; the rate is
    // printed to three digits.)
    assert!(lrs.len() >= 15 && lrs[0] == 0.01, "{lrs:?}");
    // Only ever cut by halves (a power of two between two shown epochs), at least twice.
    for w in lrs.windows(2) {
        let cuts = (w[0] / w[1]).log2();
        assert!(
            cuts >= -0.01 && (cuts - cuts.round()).abs() < 0.01,
            "{lrs:?}"
        );
    }
    assert!(*lrs.last().unwrap() <= 0.0025, "{lrs:?}");
    fails_with(
        &d,
        &["train", "--epochs", "1"],
        &[
            (
                &["--lr-patience", "3"][..],
                "--lr-patience applies to --schedule plateau only",
            ),
            (
                &["--min-lr", "0.1"][..],
                "--min-lr applies to --schedule cosine or plateau only",
            ),
            (
                &["--schedule", "plateau", "--gamma", "1.5"][..],
                "factor must lie between 0 and 1",
            ),
            (
                &["--schedule", "plateau", "--val", "0"][..],
                "it follows the validation loss",
            ),
            (
                &["--resume", "p.safetensors", "--lr-patience", "2"][..],
                "--lr-patience cannot be given when resuming",
            ),
        ],
    );
}

/// `--label-smoothing`: trains (the header says so), writes a version-3 checkpoint (a
/// version-2 reader would resume without smoothing), which evaluates; a file claiming version 2
/// is refused; resuming cannot change it. (That a resume keeps it: the resume test's `smooth`.)
#[test]
fn label_smoothing_trains_and_is_kept() {
    let d = TempDir::new("smoothing");
    let out = ok(
        &d,
        &[
            "train",
            "--label-smoothing",
            "0.1",
            "--epochs",
            "15",
            "--save",
            "ls.safetensors",
        ],
    );
    assert!(out.contains(", label smoothing 0.1;"), "{out}");
    let acc = final_accuracy(&out, 15);
    assert!(acc >= 93.0, "{out}");
    let eval = ok(&d, &["eval", "--model", "ls.safetensors"]);
    assert!(eval.contains(&format!("accuracy {acc:.2}%")), "{eval}");
    let e = eval_as_version(&d, "ls.safetensors", b'3', b'2');
    assert!(
        e.contains("version-2 checkpoint of a relu network trained with label smoothing"),
        "{e}"
    );
    let e = fails(
        &d,
        &[
            "train",
            "--resume",
            "ls.safetensors",
            "--label-smoothing",
            "0.2",
        ],
    );
    assert!(
        e.contains("--label-smoothing cannot be given when resuming"),
        "{e}"
    );
}

/// `--dropout`: trains an MLP and a CNN (the header says so), writes a version-4 checkpoint (a
/// version-3 reader would resume without dropout) that evaluates without dropout (the final
/// validation accuracy again) and exports; a file claiming version 3 is refused; resuming
/// cannot change it; bad values and a model without hidden layers are short errors.
#[test]
fn dropout_trains_evaluates_exports_and_is_kept() {
    let d = TempDir::new("dropout");
    let out = ok(
        &d,
        &[
            "train",
            "--dropout",
            "0.2",
            "--hidden",
            "64",
            "--epochs",
            "20",
            "--save",
            "do.safetensors",
        ],
    );
    assert!(out.contains("MLP 64-64-10 (dropout 0.2)"), "{out}");
    let acc = final_accuracy(&out, 20);
    assert!(acc >= 94.0, "{out}");
    let eval = ok(&d, &["eval", "--model", "do.safetensors"]);
    assert!(eval.contains(&format!("accuracy {acc:.2}%")), "{eval}");
    ok(
        &d,
        &[
            "export",
            "--model",
            "do.safetensors",
            "--format",
            "rust",
            "-o",
            "do.rs",
        ],
    );
    assert_compiles(&d, "do.rs");
    let e = eval_as_version(&d, "do.safetensors", b'4', b'3');
    assert!(
        e.contains("version-3 checkpoint of a relu network trained with dropout"),
        "{e}"
    );
    let e = fails(
        &d,
        &["train", "--resume", "do.safetensors", "--dropout", "0.1"],
    );
    assert!(e.contains("--dropout cannot be given when resuming"), "{e}");
    let cnn = ok(
        &d,
        &[
            "train",
            "--model",
            "cnn",
            "--conv",
            "4",
            "--dropout",
            "0.25",
            "--epochs",
            "2",
        ],
    );
    assert!(cnn.contains("then MLP 64-10 (dropout 0.25)"), "{cnn}");
    fails_with(
        &d,
        &["train", "--epochs", "1"],
        &[
            (
                &["--dropout", "1"],
                "--dropout 1: needs a probability in [0, 1)",
            ),
            (
                &["--dropout=-0.1"],
                "--dropout -0.1: needs a probability in [0, 1)",
            ),
            (&["--dropout", "NaN"], "--dropout NaN: needs a probability"),
            (
                &["--dropout", "0.5", "--hidden", "none"],
                "--dropout with --hidden none",
            ),
        ],
    );
}

/// `--monitor loss`: early stopping and the best epoch follow the validation loss (the summary
/// names it), `--save-best` keeps that epoch's model (its evaluation gives the best loss, the
/// last epoch's another), the checkpoint is version 4 (a version-3 reader would compare losses
/// as accuracies), and resuming cannot change what is monitored.
#[test]
fn monitor_loss_stops_on_the_validation_loss() {
    let d = TempDir::new("monitor");
    let out = ok(
        &d,
        &[
            "train",
            "-q",
            "--monitor",
            "loss",
            "--patience",
            "3",
            "--lr",
            "0.02",
            "--epochs",
            "100",
            "--save",
            "m.safetensors",
            "--save-best",
            "b.safetensors",
        ],
    );
    assert!(out.contains("stopped early"), "{out}");
    let best = out
        .lines()
        .find_map(|l| l.strip_prefix("best epoch "))
        .unwrap_or_else(|| panic!("{out}"));
    let (epoch, rest) = best.split_once(": ").unwrap();
    let loss = rest
        .strip_prefix("validation loss ")
        .unwrap_or_else(|| panic!("{out}"));
    let trained: usize = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(trained, epoch.parse::<usize>().unwrap() + 3, "{out}");
    // --save-best kept the best epoch's model, --save the last one's.
    assert!(
        out.contains(&format!(
            "saved the best epoch's model (epoch {epoch}) to b.safetensors"
        )),
        "{out}"
    );
    let b = ok(&d, &["eval", "--model", "b.safetensors"]);
    assert!(b.contains(&format!(", loss {loss}\n")), "{b}\n{out}");
    let m = ok(&d, &["eval", "--model", "m.safetensors"]);
    assert!(!m.contains(&format!(", loss {loss}\n")), "{m}\n{out}");
    let e = fails(
        &d,
        &[
            "train",
            "--epochs",
            "1",
            "--save",
            "x.st",
            "--save-best",
            "x.st",
        ],
    );
    assert!(e.contains("--save-best x.st is the file of --save"), "{e}");
    let e = eval_as_version(&d, "m.safetensors", b'4', b'3');
    assert!(
        e.contains(
            "version-3 checkpoint of a relu network trained with early stopping on the loss"
        ),
        "{e}"
    );
    let e = fails(
        &d,
        &[
            "train",
            "--resume",
            "m.safetensors",
            "--monitor",
            "metric",
            "--epochs",
            "200",
        ],
    );
    assert!(e.contains("--monitor cannot be given when resuming"), "{e}");
}

/// `--class-weights`: on data where the rare class is 40% of one half, the unweighted model
/// never predicts it there and `balanced` weights do (the decision moves to the class prior);
/// kept by the checkpoint (version 3) and named in the header; misuse is a short error.
#[test]
fn class_weights_move_decisions_and_are_kept() {
    let d = TempDir::new("classweights");
    let mut csv = String::from("x,y\n");
    for i in 0..400 {
        let rare = if i < 200 {
            i % 10 == 0
        } else {
            i % 5 == 0 || i % 5 == 2
        };
        csv += &format!("{},{}\n", i as f32 / 400.0, u8::from(rare));
    }
    d.write("imb.csv", &csv);
    d.write("q.csv", "x\n0.6\n0.7\n0.8\n0.9\n");
    let predicted = |extra: &[&str], save: &str| -> (String, Vec<String>) {
        let mut a = vec![
            "train",
            "--data",
            "imb.csv",
            "--epochs",
            "40",
            "--hidden",
            "8",
            "--backend",
            "cpu",
            "--save",
            save,
        ];
        a.extend_from_slice(extra);
        let out = ok(&d, &a);
        let p = ok(&d, &["predict", "--model", save, "--data", "q.csv"]);
        let classes = p
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_string());
        (out, classes.collect())
    };
    let (_, plain) = predicted(&[], "plain.safetensors");
    let (out, weighted) = predicted(&["--class-weights", "balanced"], "w.safetensors");
    assert_eq!(plain, ["0"; 4], "unweighted");
    assert_eq!(weighted, ["1"; 4], "balanced");
    // 320 training rows (stratified), 80 of the rare class: 320 / (2 x 240), 320 / (2 x 80).
    assert!(out.contains("2 classes weighted 0.6667,2.0000 "), "{out}");
    // `balanced` counts the training split only: a class whose one row is held out gets 0.
    let mut three = String::from("x,y\n");
    for i in 0..81 {
        three += &format!("{i},{}\n", if i == 80 { 2 } else { i % 4 / 3 });
    }
    d.write("three.csv", &three);
    let out = ok(
        &d,
        &[
            "train",
            "--data",
            "three.csv",
            "--epochs",
            "1",
            "--val",
            "0.5",
            "--class-weights",
            "balanced",
        ],
    );
    assert!(out.contains("3 classes weighted 0.4444,1.3333,0 "), "{out}");
    // The composite loss records three nodes more: the deepest model is checked up front.
    let deep = vec!["2"; 126].join(",");
    let e = fails(
        &d,
        &[
            "train",
            "--data",
            "imb.csv",
            "--hidden",
            &deep,
            "--class-weights",
            "1,1",
        ],
    );
    assert!(
        e.contains("127 layers; at most 126 are supported with this loss"),
        "{e}"
    );
    let e = eval_as_version(&d, "w.safetensors", b'3', b'2');
    assert!(e.contains("trained with class weights"), "{e}");
    // Explicit weights, as many as classes; uniform ones train like none (to rounding).
    let (_, ones) = predicted(&["--class-weights", "1,1"], "ones.safetensors");
    assert_eq!(ones, plain);
    fails_with(
        &d,
        &["train", "--data", "imb.csv", "--epochs", "1"],
        &[
            (
                &["--class-weights", "1,2,3"][..],
                "3 weights for 2 classes (0, 1)",
            ),
            (&["--class-weights", "1,-2"][..], "'-2' is not a weight"),
            (&["--class-weights", "0,0"][..], "every weight is 0"),
            (&["--class-weights", "1,x"][..], "'x' is not a weight"),
            (
                &["--class-weights", "balanced", "--task", "regression"][..],
                "--class-weights with a regression task",
            ),
            (
                &["--resume", "w.safetensors", "--class-weights", "1,1"][..],
                "--class-weights cannot be given when resuming",
            ),
        ],
    );
}

/// `--activation`: trained, evaluated and kept on resume; the checkpoint says version 2 (ReLU
/// ones stay version 1, which earlier builds read); the Rust export names it, and its arrays
/// run through SiLU written here give `mote predict`'s classes.
#[test]
fn activations_train_evaluate_export_and_are_kept() {
    let d = TempDir::new("activation");
    let out = ok(
        &d,
        &[
            "train",
            "--activation",
            "silu",
            "--epochs",
            "20",
            "--save",
            "s.safetensors",
        ],
    );
    assert!(
        out.starts_with("training silu MLP 64-32-10, 10 classes"),
        "{out}"
    );
    let acc = final_accuracy(&out, 20);
    assert!(acc >= 93.0, "{out}");
    let eval = ok(&d, &["eval", "--model", "s.safetensors"]);
    assert!(eval.contains(&format!("accuracy {acc:.2}%")), "{eval}");
    let bytes = std::fs::read(d.path("s.safetensors")).unwrap();
    let e = eval_as_version(&d, "s.safetensors", b'2', b'1');
    assert!(e.contains("version-1 checkpoint of a silu network"), "{e}");
    // The description is covered by a CRC: an edited activation is refused, not read as ReLU.
    let mut edited = bytes.clone();
    let at = find(&edited, r#"activation\":\"silu"#).expect("the activation");
    // `activation\":\"` is 15 bytes: the name starts after them.
    edited[at + 15..at + 19].copy_from_slice(b"relu");
    std::fs::write(d.path("edited.safetensors"), edited).unwrap();
    let e = fails(&d, &["eval", "--model", "edited.safetensors"]);
    assert!(e.contains("description's CRC-32 does not match"), "{e}");
    // A version this build does not read; a version-2 file without the description's CRC.
    let e = eval_as_version(&d, "s.safetensors", b'2', b'9');
    assert!(e.contains(r#"version "9" is not supported"#), "{e}");
    let mut bare = bytes.clone();
    let at = find(&bare, r#""meta_crc32":""#).unwrap();
    // The entry and the comma that joins it to its neighbour (after it, or before it when it is
    // the metadata's last; the key order varies), as whitespace: the header keeps its length.
    let entry = r#""meta_crc32":"01234567""#.len();
    let (from, to) = if bare[at + entry] == b',' {
        (at, at + entry + 1)
    } else {
        (at - 1, at + entry)
    };
    assert_eq!(
        bare[from.min(at)..to]
            .iter()
            .filter(|&&b| b == b',')
            .count(),
        1
    );
    bare[from..to].fill(b' ');
    std::fs::write(d.path("bare.safetensors"), bare).unwrap();
    let e = fails(&d, &["eval", "--model", "bare.safetensors"]);
    assert!(e.contains("no 'meta_crc32' metadata"), "{e}");
    // An activation this build does not know, under a matching CRC: written by a newer mote?
    std::fs::write(
        d.path("newer.safetensors"),
        with_activation(&bytes, "swish"),
    )
    .unwrap();
    let e = fails(&d, &["eval", "--model", "newer.safetensors"]);
    assert!(
        e.contains("unknown variant") && e.contains("newer mote"),
        "{e}"
    );
    let e = fails(&d, &["train", "--hidden", "none", "--activation", "silu"]);
    assert!(e.contains("a linear model has no layer"), "{e}");

    ok(
        &d,
        &[
            "export",
            "--model",
            "s.safetensors",
            "--format",
            "rust",
            "-o",
            "s.rs",
        ],
    );
    let src = std::fs::read_to_string(d.path("s.rs")).unwrap();
    assert!(
        src.contains(r#"pub const ACTIVATION: &str = "silu";"#),
        "{src:.900}"
    );
    assert!(src.contains("(SiLU between layers)"), "{src:.900}");
    assert_compiles(&d, "s.rs");
    let arrays = rust_arrays(&src);
    let n = 200;
    let (raw, predicted) = predict_raw_digits(&d, "s.safetensors", n);
    let silu = |x: f32| x / (1.0 + (-x).exp());
    let layers: Vec<_> = arrays.chunks(2).map(|p| (&p[0].1, &p[1].1)).collect();
    let mut agree = 0;
    for (row, &want) in raw.chunks(64).zip(&predicted) {
        let mut x = row.to_vec();
        for (i, (w, b)) in layers.iter().enumerate() {
            if i > 0 {
                x.iter_mut().for_each(|v| *v = silu(*v));
            }
            x = b
                .iter()
                .enumerate()
                .map(|(o, &bo)| {
                    bo + w[o * x.len()..][..x.len()]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                })
                .collect();
        }
        agree += usize::from(argmax(&x) == want);
    }
    assert_eq!(agree, n, "the export with SiLU by hand agrees with predict");

    let e = fails(
        &d,
        &["train", "--resume", "s.safetensors", "--activation", "relu"],
    );
    assert!(
        e.contains("--activation cannot be given when resuming"),
        "{e}"
    );
    let more = ok(
        &d,
        &["train", "--resume", "s.safetensors", "--epochs", "21"],
    );
    assert!(more.contains("silu MLP 64-32-10"), "{more}");

    ok(
        &d,
        &["train", "--epochs", "1", "-q", "--save", "r.safetensors"],
    );
    let relu = std::fs::read(d.path("r.safetensors")).unwrap();
    assert!(find(&relu, r#""version":"1""#).is_some());
    let out = ok(
        &d,
        &[
            "train",
            "--model",
            "cnn",
            "--conv",
            "4",
            "--hidden",
            "16",
            "--activation",
            "hardswish",
            "--epochs",
            "3",
            "-q",
            "--save",
            "h.safetensors",
        ],
    );
    assert!(out.contains("saved h.safetensors"), "{out}");
    check_cnn_export(&d, "h", 0.95);
    let src = std::fs::read_to_string(d.path("h.rs")).unwrap();
    assert!(
        src.contains(r#"pub const ACTIVATION: &str = "hardswish";"#),
        "{src:.900}"
    );
    assert!(
        src.contains("(3x3 convolution with padding 1, hard swish, 2x2 max-pooling)"),
        "{src:.900}"
    );
}

#[test]
fn train_save_eval_predict_export() {
    let d = TempDir::new("flow");
    let out = ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "--epochs",
            "8",
            "--save",
            "m.safetensors",
            "--plot",
            "curves.svg",
        ],
    );
    assert!(out.contains("epoch 8/8"), "{out}");
    assert!(out.contains("saved m.safetensors"), "{out}");
    let svg = std::fs::read_to_string(d.path("curves.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "not an SVG plot"
    );

    // eval: the validation split of the data it was trained on, with a confusion matrix
    let ev = ok(&d, &["eval", "--model", "m.safetensors"]);
    assert!(ev.contains("validation split of digits (359 rows)"), "{ev}");
    let acc: f64 = ev
        .split("accuracy ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(acc > 90.0, "{ev}");
    assert!(ev.contains("confusion matrix"), "{ev}");
    let final_line = out.lines().find(|l| l.starts_with("final")).unwrap();
    assert!(
        final_line.contains(&format!("{acc:.2}%")),
        "{final_line} vs {ev}"
    );

    // predict on a CSV with the features only (no label column)
    let t = digits(&CsvOptions::default()).unwrap();
    let mut csv = t.feature_names.join(",") + "\n";
    for r in 0..20 {
        let row: Vec<String> = t.features[r * 64..(r + 1) * 64]
            .iter()
            .map(|v| v.to_string())
            .collect();
        csv += &(row.join(",") + "\n");
    }
    d.write("new.csv", &csv);
    let pred = ok(
        &d,
        &["predict", "--model", "m.safetensors", "--data", "new.csv"],
    );
    let mut lines = pred.lines();
    assert_eq!(lines.next(), Some("prediction,probability"));
    let predicted: Vec<usize> = lines
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(predicted.len(), 20);
    let labels: Vec<usize> = t.labels[..20].iter().map(|l| l.parse().unwrap()).collect();
    let right = predicted
        .iter()
        .zip(&labels)
        .filter(|(a, b)| a == b)
        .count();
    assert!(right >= 16, "{predicted:?} vs {labels:?}");

    // export a blob: the core loads it and, fed raw pixels, predicts what `predict` printed
    ok(
        &d,
        &[
            "export",
            "--model",
            "m.safetensors",
            "--format",
            "blob",
            "-o",
            "m.bin",
        ],
    );
    let bytes = std::fs::read(d.path("m.bin")).unwrap();
    let blob = mote::blob::Blob::parse(&bytes).unwrap();
    assert_eq!(blob.len(), 4);
    let mut mem = vec![0f32; 20_000];
    let mut tape = Tape::<Cpu<f32>, 64>::new(&mut mem);
    let mut ps = [tape.input(&[1], &[0.0]).unwrap(); 4];
    blob.create_params(&mut tape, false, &mut ps).unwrap();
    let net = Mlp {
        activation: Default::default(),
        convs: vec![],
        image: vec![],
        dropout: 0.0,
        masks: None,
        layers: vec![
            mote::Linear {
                weight: ps[0],
                bias: Some(ps[1]),
            },
            mote::Linear {
                weight: ps[2],
                bias: Some(ps[3]),
            },
        ],
    };
    let x = tape.input(&[20, 64], &t.features[..20 * 64]).unwrap();
    let y = tape.no_grad(|t| net.forward(t, x)).unwrap();
    let from_blob: Vec<usize> = tape.data(y).unwrap().chunks(10).map(argmax).collect();
    assert_eq!(from_blob, predicted);

    for dtype in ["f16", "bf16"] {
        let name = format!("m-{dtype}.bin");
        ok(
            &d,
            &[
                "export",
                "--model",
                "m.safetensors",
                "--format",
                "blob",
                "--dtype",
                dtype,
                "-o",
                &name,
            ],
        );
        let b = std::fs::read(d.path(&name)).unwrap();
        assert!(mote::blob::Blob::parse(&b).is_ok());
        assert!(b.len() < bytes.len() * 6 / 10);
    }

    // export Rust source, and check that it compiles
    ok(
        &d,
        &[
            "export",
            "--model",
            "m.safetensors",
            "--format",
            "rust",
            "--dtype",
            "f16",
        ],
    );
    let src = std::fs::read_to_string(d.path("m.rs")).unwrap();
    assert!(
        src.contains("pub const LAYER0_WEIGHT: [u16; 2048]"),
        "{}",
        &src[..400]
    );
    assert!(src.contains("pub const CLASSES: [&str; 10]"));
    assert_compiles(&d, "m.rs");
    fails(
        &d,
        &[
            "export",
            "--model",
            "m.safetensors",
            "--format",
            "rust",
            "-o",
            "m.safetensors",
        ],
    );
}

fn tensors_of(path: &Path) -> checkpoint::Checkpoint {
    checkpoint::load(path).unwrap()
}

fn assert_same_run(a: &Path, b: &Path) {
    let (a, b) = (tensors_of(a), tensors_of(b));
    let bits = |v: &Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        v.iter()
            .map(|t| t.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&a.params), bits(&b.params), "parameters differ");
    assert_eq!(
        bits(&a.opt_state),
        bits(&b.opt_state),
        "optimizer state differs"
    );
    assert_eq!(a.state.epoch, b.state.epoch);
    assert_eq!(a.state.step, b.state.step);
    assert_eq!(a.state.rng, b.state.rng);
    let hist = |c: &checkpoint::Checkpoint| -> Vec<(u64, u64)> {
        c.state
            .history
            .iter()
            .map(|h| (h.train_loss.to_bits(), h.val_loss.unwrap_or(0.0).to_bits()))
            .collect()
    };
    assert_eq!(hist(&a), hist(&b));
}

/// AMSGrad, RMSprop and Adagrad are version 5: a version-4 reader would resume AMSGrad as plain
/// Adam (it does not know the setting), so a file claiming version 4 is refused, naming why.
/// Their state is saved under PyTorch's names.
#[test]
fn newer_optimizers_are_version_5() {
    let d = TempDir::new("opt-version");
    for (file, args, named, state) in [
        ("ams.st", &["--amsgrad"][..], "AMSGrad", "max_exp_avg_sq"),
        (
            "rms.st",
            &["--optimizer", "rmsprop", "--centered"][..],
            "RMSprop",
            "grad_avg",
        ),
        (
            "ada.st",
            &["--optimizer", "adagrad"][..],
            "Adagrad",
            "weight.sum",
        ),
    ] {
        let a = [&["train", "--epochs", "1", "-q", "--save", file][..], args].concat();
        ok(&d, &a);
        let bytes = std::fs::read(d.path(file)).unwrap();
        assert!(find(&bytes, r#""version":"5""#).is_some(), "{file}");
        assert!(find(&bytes, state).is_some(), "{file}: no {state}");
        let e = eval_as_version(&d, file, b'5', b'4');
        assert!(
            e.contains(&format!(
                "version-4 checkpoint of a relu network trained with {named}"
            )),
            "{e}"
        );
    }
}

#[test]
fn resume_equals_straight_run_bit_for_bit() {
    let d = TempDir::new("resume");
    for (tag, extra) in [
        ("adam", &[][..]),
        (
            "sgd",
            &[
                "--optimizer",
                "sgd",
                "--schedule",
                "step",
                "--step-every",
                "1",
                "--hidden",
                "16,8",
            ][..],
        ),
        (
            "clip",
            &["--clip-grad-norm", "0.5", "--activation", "gelu"][..],
        ),
        ("smooth", &["--label-smoothing", "0.2"][..]),
        // Each optimizer's state and step count carry over (Adagrad's rate decays by step).
        ("amsgrad", &["--optimizer", "adamw", "--amsgrad"][..]),
        (
            "rmsprop",
            &[
                "--optimizer",
                "rmsprop",
                "--momentum",
                "0.5",
                "--centered",
                "--alpha",
                "0.9",
                "--lr",
                "0.001",
            ][..],
        ),
        (
            "adagrad",
            &[
                "--optimizer",
                "adagrad",
                "--lr-decay",
                "0.01",
                "--weight-decay",
                "1e-4",
            ][..],
        ),
        // The masks of the resumed epochs are those of the unbroken run's.
        ("dropout", &["--dropout", "0.3", "--hidden", "32,16"][..]),
        // The best loss and the epochs waited carry over.
        ("monitor", &["--monitor", "loss", "--patience", "50"][..]),
        // Its state (best loss, epochs waited, cuts so far) carries over the resume.
        (
            "plateau",
            &[
                "--schedule",
                "plateau",
                "--lr-patience",
                "0",
                "--gamma",
                "0.5",
                "--lr",
                "0.02",
            ][..],
        ),
    ] {
        let (half, full) = (
            format!("{tag}-half.safetensors"),
            format!("{tag}-full.safetensors"),
        );
        let mut a = vec![
            "train",
            "--backend",
            "cpu",
            "-q",
            "--seed",
            "7",
            "--epochs",
            "2",
        ];
        a.extend_from_slice(extra);
        ok(&d, &[&a[..], &["--save", &half]].concat());
        ok(
            &d,
            &[
                "train",
                "--backend",
                "cpu",
                "-q",
                "--resume",
                &half,
                "--epochs",
                "2",
            ],
        );
        let mut b = vec![
            "train",
            "--backend",
            "cpu",
            "-q",
            "--seed",
            "7",
            "--epochs",
            "4",
        ];
        b.extend_from_slice(extra);
        ok(&d, &[&b[..], &["--save", &full]].concat());
        assert_same_run(&d.path(&half), &d.path(&full));
    }
    // the same seed gives the same weights; resuming refuses to change the model
    ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--seed",
            "7",
            "--epochs",
            "4",
            "--save",
            "again.safetensors",
        ],
    );
    assert_same_run(
        &d.path("again.safetensors"),
        &d.path("adam-full.safetensors"),
    );
    let e = fails(
        &d,
        &[
            "train",
            "--resume",
            "adam-full.safetensors",
            "--hidden",
            "8",
        ],
    );
    assert!(e.contains("--hidden cannot be given when resuming"), "{e}");
}

#[test]
fn csv_errors_name_file_line_and_column() {
    let d = TempDir::new("csv");
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "missing.csv",
            "a,b,y\n1,2,0\n3,,1\n",
            &[],
            "missing.csv, line 3, column 2 (b): missing value",
        ),
        (
            "text.csv",
            "a,b,y\n1,2,0\n3,x4,1\n",
            &[],
            "text.csv, line 3, column 2 (b): 'x4' is not a number",
        ),
        (
            "ragged.csv",
            "a,b,y\n1,2,0\n3,4\n",
            &[],
            "ragged.csv, line 3: 2 cells, but the header has 3 columns",
        ),
        (
            "long.csv",
            "a,b,y\n1,2,0\n3,4,1,5\n",
            &[],
            "long.csv, line 3: 4 cells, but the header has 3 columns",
        ),
        (
            "inf.csv",
            "a,b,y\n1,inf,0\n",
            &[],
            "inf.csv, line 2, column 2 (b): 'inf' is not a finite number",
        ),
        (
            "quote.csv",
            "a,b,y\n1,\"2,0\n",
            &[],
            "quote.csv, line 2, column 2: unterminated quote",
        ),
        ("empty.csv", "", &[], "empty.csv: the file is empty"),
        (
            "na.csv",
            "a,b,y\n1,NA,0\n",
            &[],
            "na.csv, line 2, column 2 (b): missing value ('NA')",
        ),
        (
            "semi.csv",
            "a;b;y\n1;2;0\n",
            &[],
            "semi.csv, line 1: no feature columns (only the label column 'a;b;y')",
        ),
        ("header.csv", "a,b,y\n", &[], "header.csv: no data rows"),
        (
            "label.csv",
            "a,b,y\n1,2,0\n",
            &["--label", "z"],
            "label.csv, line 1: no label column 'z'; the columns are 0:a, 1:b, 2:y",
        ),
        (
            "index.csv",
            "a,b,y\n1,2,0\n",
            &["--label", "7"],
            "no label column '7'",
        ),
        ("one.csv", "a,y\n1,5\n2,5\n", &[], "has only one class"),
        (
            "reg.csv",
            "a,y\n1,0.5\n2,x\n",
            &["--task", "regression"],
            "reg.csv, line 3, column 2 (y): 'x' is not a number",
        ),
        ("only.csv", "y\n1\n2\n", &[], "no feature columns"),
        (
            "smooth.csv",
            "a,y\n1,0.5\n2,1.5\n3,2.5\n4,3.5\n",
            &["--task", "regression", "--label-smoothing", "0.1"],
            "--label-smoothing with a regression task",
        ),
    ];
    for (name, text, extra, want) in cases {
        d.write(name, text);
        let mut args = vec!["train", "--backend", "cpu", "--epochs", "1", "--data", name];
        args.extend_from_slice(extra);
        let e = fails(&d, &args);
        assert!(e.contains(want), "{name}: {e}");
    }
    let e = fails(&d, &["train", "--data", "nowhere.csv"]);
    assert!(e.contains("nowhere.csv") && e.contains("hint:"), "{e}");
    std::fs::write(d.path("binary.csv"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let e = fails(&d, &["train", "--data", "binary.csv"]);
    assert!(e.contains("not UTF-8"), "{e}");
}

#[test]
fn corrupt_truncated_and_foreign_checkpoints_are_clear_errors() {
    let d = TempDir::new("ckpt");
    ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--epochs",
            "1",
            "--save",
            "m.safetensors",
        ],
    );
    let good = std::fs::read(d.path("m.safetensors")).unwrap();

    let mut flipped = good.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x40;
    std::fs::write(d.path("flipped.safetensors"), &flipped).unwrap();
    let e = fails(&d, &["eval", "--model", "flipped.safetensors"]);
    assert!(e.contains("corrupt") && e.contains("CRC-32"), "{e}");

    std::fs::write(d.path("cut.safetensors"), &good[..good.len() / 2]).unwrap();
    for cmd in ["eval", "predict", "export"] {
        let mut args = vec![cmd, "--model", "cut.safetensors"];
        if cmd == "predict" {
            args.extend_from_slice(&["--data", "digits"]);
        }
        if cmd == "export" {
            args.extend_from_slice(&["--format", "blob"]);
        }
        let e = fails(&d, &args);
        assert!(
            e.contains("cut.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }
    let e = fails(
        &d,
        &["train", "--resume", "cut.safetensors", "--epochs", "1"],
    );
    assert!(e.contains("truncated"), "{e}");

    std::fs::write(d.path("tiny.safetensors"), &good[..5]).unwrap();
    let e = fails(&d, &["eval", "--model", "tiny.safetensors"]);
    assert!(e.contains("truncated"), "{e}");

    let data = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    let foreign = safetensors::serialize([("w", view)], None).unwrap();
    std::fs::write(d.path("foreign.safetensors"), foreign).unwrap();
    let e = fails(&d, &["eval", "--model", "foreign.safetensors"]);
    assert!(e.contains("not a mote checkpoint"), "{e}");

    let e = fails(&d, &["eval", "--model", "missing.safetensors"]);
    assert!(e.contains("missing.safetensors"), "{e}");

    // a checkpoint whose data lacks a column the model was trained on
    d.write("few.csv", "p0,p1,label\n1,2,3\n");
    let e = fails(
        &d,
        &["predict", "--model", "m.safetensors", "--data", "few.csv"],
    );
    assert!(
        e.contains("no column 'p2', which the model was trained on"),
        "{e}"
    );
    // and a class the model never saw
    let t = digits(&CsvOptions::default()).unwrap();
    let row: Vec<String> = t.features[..64].iter().map(|v| v.to_string()).collect();
    d.write(
        "odd.csv",
        &format!(
            "{},label\n{},11\n",
            t.feature_names.join(","),
            row.join(",")
        ),
    );
    let e = fails(
        &d,
        &["eval", "--model", "m.safetensors", "--data", "odd.csv"],
    );
    assert!(
        e.contains("odd.csv, line 2, column 65 (label): class '11' is not one the model knows"),
        "{e}"
    );
}

/// `--loss` for regression (robust losses on standardised targets): trains to the same fit on
/// clean data, is named in the header and kept by the checkpoint (version 3) and on resume;
/// misuse is a short error.
#[test]
fn regression_losses_train_and_are_kept() {
    let d = TempDir::new("regloss");
    // y = 3 x1 - 2 x2 + 5, and a few wild targets that the MSE would chase.
    let mut csv = String::from("x1,x2,target\n");
    for i in 0..200 {
        let (a, b) = ((i % 17) as f32 / 4.0, (i % 11) as f32 / 3.0);
        let y = 3.0 * a - 2.0 * b + 5.0 + if i % 40 == 7 { 60.0 } else { 0.0 };
        csv += &format!("{a},{b},{y}\n");
    }
    d.write("lin.csv", &csv);
    let train = |extra: &[&str], save: &str| {
        let mut a = vec![
            "train",
            "--backend",
            "cpu",
            "--data",
            "lin.csv",
            "--epochs",
            "60",
            "--lr",
            "0.01",
            "--val",
            "0",
            "--save",
            save,
        ];
        a.extend_from_slice(extra);
        ok(&d, &a)
    };
    let out = train(&["--loss", "huber", "--delta", "0.5"], "h.safetensors");
    assert!(
        out.contains("regression of 'target' with the Huber loss (delta 0.5)"),
        "{out}"
    );
    let bytes = std::fs::read(d.path("h.safetensors")).unwrap();
    assert!(find(&bytes, r#""version":"3""#).is_some());
    // Against the clean line, the robust fits stay close where the MSE's chases the outliers
    // (5 of 200 rows, +60 each).
    train(&[], "m.safetensors");
    let bytes_mse = std::fs::read(d.path("m.safetensors")).unwrap();
    assert!(
        find(&bytes_mse, r#""version":"1""#).is_some(),
        "MSE keeps version 1"
    );
    train(&["--loss", "l1"], "l1.safetensors");
    train(&["--loss", "smooth_l1", "--delta", "0"], "s0.safetensors");
    d.write("q.csv", "x1,x2\n2,1\n1,3\n");
    let predict = |model: &str| -> Vec<f64> {
        ok(&d, &["predict", "--model", model, "--data", "q.csv"])
            .lines()
            .skip(1)
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let clean = [3.0 * 2.0 - 2.0 + 5.0, 3.0 - 6.0 + 5.0];
    let off = |p: Vec<f64>| {
        p.iter()
            .zip(clean)
            .map(|(p, c)| (p - c).abs())
            .fold(0.0, f64::max)
    };
    let (mse, huber, l1) = (
        off(predict("m.safetensors")),
        off(predict("h.safetensors")),
        off(predict("l1.safetensors")),
    );
    assert!(
        l1 < 0.5 && huber < 1.0 && mse > 2.0 * huber.max(l1),
        "mse {mse}, huber {huber}, l1 {l1}"
    );
    // Replicas report the training RMSE from their shards' squared errors, as one model does.
    let train_rmse = |extra: &[&str]| -> f64 {
        let mut a = vec![
            "train", "--data", "lin.csv", "--epochs", "20", "--lr", "0.01",
        ];
        a.extend_from_slice(extra);
        let out = ok(&d, &a);
        let last = out
            .lines()
            .find(|l| l.starts_with("epoch 20/20"))
            .unwrap()
            .to_string();
        last.split("  rmse ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let huber = ["--loss", "huber"];
    let (one, two) = (
        train_rmse(&huber),
        train_rmse(&[&huber[..], &["--replicas", "2"]].concat()),
    );
    assert!(
        (one - two).abs() <= 1e-3 * one,
        "one model {one}, replicas {two}"
    );
    // A Huber loss whose delta no error reaches is half the MSE, which Adam's steps do not
    // see: the same training RMSE as the MSE's (so it is the squared errors', not the loss's).
    let mse = train_rmse(&["--loss", "mse"]);
    let wide = train_rmse(&["--loss", "huber", "--delta", "1000000"]);
    assert!(
        (mse - wide).abs() <= 1e-2 * mse,
        "mse {mse}, huber 1e6 {wide}"
    );
    assert!((one - mse).abs() > 1e-2 * mse, "huber 1 {one}, mse {mse}");
    // smooth L1 with beta 0 is the L1 loss, step for step.
    assert_eq!(predict("s0.safetensors"), predict("l1.safetensors"));
    let resumed = ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "--resume",
            "h.safetensors",
            "--epochs",
            "61",
        ],
    );
    assert!(
        resumed.contains("with the Huber loss (delta 0.5)"),
        "{resumed}"
    );
    // A file claiming version 2 is refused rather than resumed with the MSE.
    let e = eval_as_version(&d, "h.safetensors", b'3', b'2');
    assert!(e.contains("trained with the Huber loss (delta 0.5)"), "{e}");
    fails_with(
        &d,
        &["train", "--epochs", "1"],
        &[
            (
                &["--loss", "huber", "--data", "digits"][..],
                "--loss with a classification task",
            ),
            (
                &["--data", "lin.csv", "--delta", "2"][..],
                "--delta applies to --loss huber",
            ),
            (
                &["--delta", "2", "--data", "digits"][..],
                "--delta with a classification task",
            ),
            (
                &["--data", "lin.csv", "--loss", "huber", "--delta", "0"][..],
                "delta must be positive and finite",
            ),
            (
                &["--data", "lin.csv", "--loss", "smooth_l1", "--delta=-1"][..],
                "beta must be 0 (the L1 loss), or positive",
            ),
            (
                &[
                    "--data",
                    "lin.csv",
                    "--loss",
                    "smooth_l1",
                    "--delta",
                    "1e-40",
                ][..],
                "1 / beta finite too",
            ),
            (
                &["--resume", "h.safetensors", "--loss", "l1"][..],
                "--loss cannot be given when resuming",
            ),
        ],
    );
}

#[test]
fn regression_text_labels_and_idx() {
    let d = TempDir::new("kinds");
    // regression: y = 3 x1 - 2 x2 + 5
    let mut csv = String::from("x1,x2,target\n");
    for i in 0..200 {
        let (a, b) = ((i % 17) as f32 / 4.0, (i % 11) as f32 / 3.0);
        csv += &format!("{a},{b},{}\n", 3.0 * a - 2.0 * b + 5.0);
    }
    d.write("lin.csv", &csv);
    let out = ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            "lin.csv",
            "--epochs",
            "60",
            "--lr",
            "0.01",
            "--save",
            "lin.safetensors",
        ],
    );
    assert!(out.contains("regression of 'target'"), "{out}");
    let ev = ok(&d, &["eval", "--model", "lin.safetensors"]);
    let rmse: f64 = ev
        .split("RMSE ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rmse < 0.5, "{ev}");
    d.write("q.csv", "x2,x1\n1,2\n");
    let p = ok(
        &d,
        &["predict", "--model", "lin.safetensors", "--data", "q.csv"],
    );
    let v: f64 = p.lines().nth(1).unwrap().parse().unwrap();
    assert!((v - 9.0).abs() < 1.0, "{p}");
    // predict takes no --label (it reads the model's features by name only).
    let o = mote(
        &d,
        &[
            "predict",
            "--model",
            "lin.safetensors",
            "--data",
            "q.csv",
            "--label",
            "x",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a usage error: {e}");
    assert!(e.contains("unexpected argument '--label'"), "{e}");
    // eval on a file whose target column has another name: --label names it.
    d.write("renamed.csv", &csv.replacen("x1,x2,target", "x1,x2,y", 1));
    let e = fails(
        &d,
        &[
            "eval",
            "--model",
            "lin.safetensors",
            "--data",
            "renamed.csv",
        ],
    );
    assert!(e.contains("target"), "{e}");
    let ev2 = ok(
        &d,
        &[
            "eval",
            "--model",
            "lin.safetensors",
            "--data",
            "renamed.csv",
            "--label",
            "y",
            "--split",
            "all",
        ],
    );
    assert!(ev2.contains("RMSE "), "{ev2}");
    // From another folder, the recorded relative path is named as such.
    let elsewhere = TempDir::new("elsewhere");
    let model = d.path("lin.safetensors").display().to_string();
    let e = fails(&elsewhere, &["eval", "--model", &model]);
    assert!(
        e.contains("'lin.csv'") && e.contains("recorded, relative to the folder it trained in"),
        "{e}"
    );
    // Its split exists only on the data the model trained on.
    d.write(
        "half.csv",
        &csv.lines().take(101).collect::<Vec<_>>().join("\n"),
    );
    for split in ["val", "train"] {
        let e = fails(
            &d,
            &[
                "eval",
                "--model",
                "lin.safetensors",
                "--data",
                "half.csv",
                "--split",
                split,
            ],
        );
        assert!(
            e.contains(&format!("--split {split}: half.csv is not the data")),
            "{e}"
        );
    }
    ok(
        &d,
        &["eval", "--model", "lin.safetensors", "--data", "half.csv"],
    );

    // text class labels, label by name in the middle
    let mut csv = String::from("len,kind,width\n");
    for i in 0..60 {
        let (k, l, w) = if i % 2 == 0 {
            ("small", 1.0, 0.5)
        } else {
            ("large, very", 5.0, 3.0)
        };
        csv += &format!("{},\"{k}\",{}\n", l + (i % 5) as f32 * 0.1, w);
    }
    d.write("kinds.csv", &csv);
    ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--data",
            "kinds.csv",
            "--label",
            "kind",
            "--epochs",
            "20",
            "--save",
            "k.safetensors",
        ],
    );
    let ev = ok(&d, &["eval", "--model", "k.safetensors", "--split", "all"]);
    assert!(ev.contains("accuracy 100.00% (60/60)"), "{ev}");
    let p = ok(
        &d,
        &["predict", "--model", "k.safetensors", "--data", "kinds.csv"],
    );
    assert!(
        p.lines().nth(2).unwrap().starts_with("\"large, very\","),
        "{p}"
    );

    // IDX images with their labels file beside them
    let n = 40u32;
    let mut img = vec![0, 0, 8, 3];
    for dim in [n, 2, 2] {
        img.extend_from_slice(&dim.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&n.to_be_bytes());
    for i in 0..n {
        let c = (i % 2) as u8;
        img.extend_from_slice(&[c * 200, 10, 255 - c * 200, (i % 7) as u8]);
        lab.push(c);
    }
    std::fs::write(d.path("t-images-idx3-ubyte"), &img).unwrap();
    std::fs::write(d.path("t-labels-idx1-ubyte"), &lab).unwrap();
    let out = ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            "t-images-idx3-ubyte",
            "--epochs",
            "2",
            "--save",
            "idx.st",
        ],
    );
    assert!(out.contains("MLP 4-32-2, 2 classes"), "{out}");
    // Images of another size are refused by a model of 2x2 images (their pixels are not
    // re-cut into rows of its width), in eval and predict alike.
    let mut img9 = vec![0, 0, 8, 3];
    for dim in [4u32, 3, 3] {
        img9.extend_from_slice(&dim.to_be_bytes());
    }
    img9.extend(std::iter::repeat_n(7u8, 36));
    let mut lab4 = vec![0, 0, 8, 1];
    lab4.extend_from_slice(&4u32.to_be_bytes());
    lab4.extend_from_slice(&[0, 1, 0, 1]);
    std::fs::write(d.path("n-images-idx3-ubyte"), &img9).unwrap();
    std::fs::write(d.path("n-labels-idx1-ubyte"), &lab4).unwrap();
    for cmd in ["eval", "predict"] {
        let e = fails(
            &d,
            &[cmd, "--model", "idx.st", "--data", "n-images-idx3-ubyte"],
        );
        assert!(
            e.contains("its images have 9 values each, and the model was trained on 4 features"),
            "{cmd}: {e}"
        );
    }
    // A labels file given as the data says so.
    let e = fails(&d, &["train", "--data", "t-labels-idx1-ubyte"]);
    assert!(e.contains("is an IDX labels file"), "{e}");
    std::fs::write(d.path("bad-images-idx3-ubyte"), &img[..img.len() - 3]).unwrap();
    let e = fails(
        &d,
        &[
            "train",
            "--data",
            "bad-images-idx3-ubyte",
            "--idx-labels",
            "t-labels-idx1-ubyte",
        ],
    );
    assert!(e.contains("truncated or corrupt"), "{e}");
    // An f32 IDX file holding a NaN: refused, naming the record and the value.
    let mut f = vec![0, 0, 0x0D, 2];
    for dim in [2u32, 2] {
        f.extend_from_slice(&dim.to_be_bytes());
    }
    for v in [1.0f32, 2.0, 3.0, f32::NAN] {
        f.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(d.path("nan-images-idx3-ubyte"), &f).unwrap();
    let e = fails(
        &d,
        &[
            "train",
            "--data",
            "nan-images-idx3-ubyte",
            "--idx-labels",
            "t-labels-idx1-ubyte",
        ],
    );
    assert!(
        e.contains("record 1 (0-based), value 1 of 2: not a finite f32 number"),
        "{e}"
    );
}

/// Text that is not UTF-8 where text is read is refused, not read as absent or changed: a
/// `MOTE_*` variable read as text (an unreadable `MOTE_WORLD_SIZE` read as unset would make
/// every rank train alone) and an `--idx-labels` path; a `MOTE_*` path may be any bytes.
#[cfg(unix)]
#[test]
fn values_that_are_not_utf8_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let d = TempDir::new("notutf8");
    let bad = std::ffi::OsStr::from_bytes(b"2\xff");
    let o = Command::new(bin())
        .args(["train", "--epochs", "1"])
        .env("MOTE_WORLD_SIZE", bad)
        .current_dir(&d.0)
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{se}");
    assert!(se.contains("MOTE_WORLD_SIZE=2"), "{se}");
    assert!(se.contains("not UTF-8"), "{se}");
    let o = Command::new(bin())
        .arg("train")
        .args(["--data", "images-idx3-ubyte", "--idx-labels"])
        .arg(std::ffi::OsStr::from_bytes(b"labels\xff"))
        .current_dir(&d.0)
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{se}");
    assert!(se.contains("invalid UTF-8"), "{se}");
    // A path may be any bytes: MOTE_CUDA_CACHE (read only by the CUDA backend) does not stop
    // a CPU run.
    let o = Command::new(bin())
        .args(["train", "--epochs", "1", "-q"])
        .env(
            "MOTE_CUDA_CACHE",
            std::ffi::OsStr::from_bytes(b"/tmp/cache\xff"),
        )
        .current_dir(&d.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A file that starts as IDX files do but is cut short (or of another kind) is named as such,
/// not read as a CSV file that is not text; CSV cells quoted across lines are read.
#[test]
fn truncated_idx_files_and_multiline_cells() {
    let d = TempDir::new("cutidx");
    std::fs::write(d.path("cut-idx3-ubyte"), [0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0]).unwrap();
    let e = fails(&d, &["train", "--data", "cut-idx3-ubyte"]);
    assert!(
        e.contains("starts as an IDX file does") && e.contains("cut short (10 bytes"),
        "{e}"
    );
    let mut csv = "a,b,\"the\nlabel\"\n".to_string();
    for i in 0..40 {
        csv.push_str(&format!("{},\"{}\",\"class\n{}\"\n", i % 5, i % 3, i % 2));
    }
    d.write("multi.csv", &csv);
    let out = ok(
        &d,
        &[
            "train",
            "--data",
            "multi.csv",
            "--epochs",
            "1",
            "--val",
            "0",
        ],
    );
    assert!(out.contains("40 training rows"), "{out}");
    assert!(out.contains("2 classes"), "{out}");
}

/// What a run cannot do as asked is said: a stratified split that holds out nothing (every
/// class too small for --val), text labels that look like IDs (a hint for --label, not
/// --task regression), and `eval` on the run's data file changed since (all its rows are
/// scored, the training rows among them); a semicolon-separated file gets a hint.
#[test]
fn quiet_surprises_are_said() {
    let d = TempDir::new("surprises");
    let mut tiny = "a,b,y\n".to_string();
    // 40 classes of 1 or 2 rows in 60: none holds out a row at --val 0.2.
    for c in 0..40 {
        for r in 0..1 + c % 2 {
            tiny.push_str(&format!("{},{},c{c}\n", c * 2 + r, r));
        }
    }
    d.write("tiny.csv", &tiny);
    let o = mote(&d, &["train", "--data", "tiny.csv", "--epochs", "1", "-q"]);
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{se}");
    assert!(se.contains("warning: no validation rows"), "{se}");
    assert!(se.contains("choose another with --label"), "{se}");
    let mut rows = "a,b,y\n".to_string();
    for i in 0..60 {
        rows.push_str(&format!("{},{},{}\n", i % 7, i % 5, i % 2));
    }
    d.write("rows.csv", &rows);
    ok(
        &d,
        &[
            "train", "--data", "rows.csv", "--epochs", "1", "-q", "--save", "m.st",
        ],
    );
    rows.push_str("3,3,1\n");
    d.write("rows.csv", &rows);
    let o = mote(&d, &["eval", "--model", "m.st"]);
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{se}");
    assert!(
        se.contains("warning: rows.csv differs from the data m.st trained on"),
        "{se}"
    );
    assert!(so.contains("on all rows of rows.csv (61 rows)"), "{so}");
    d.write("semi.csv", "a;b;y\n1;2;0\n3;4;1\n");
    let e = fails(&d, &["train", "--data", "semi.csv"]);
    assert!(e.contains("this header holds ';'"), "{e}");
}

/// A model file whose name holds a line break exports a Rust file whose header comment keeps
/// the name escaped: the rest of the name does not become code.
#[test]
fn export_escapes_a_line_break_in_the_model_name() {
    let d = TempDir::new("exportname");
    let name = "a\npub fn injected() {}\n.st";
    ok(&d, &["train", "--epochs", "1", "-q", "--save", name]);
    ok(
        &d,
        &[
            "export", "--model", name, "--format", "rust", "--output", "m.rs",
        ],
    );
    let text = std::fs::read_to_string(d.path("m.rs")).unwrap();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("pub fn injected") && !l.starts_with("//")),
        "{text}"
    );
    assert!(text.contains("a\\npub fn injected() {}\\n.st"), "{text}");
}

/// A gzip file of several members is read whole (as `gunzip` does); a label column of IDs is
/// refused as classes, with what to do; an export whose default name is the model's says so.
#[test]
fn gzip_members_class_counts_and_export_names() {
    use std::io::Write;
    let d = TempDir::new("gzmembers");
    let gz = |text: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let mut head = "a,b,y\n".to_string();
    let mut tail = String::new();
    for i in 0..40 {
        let row = format!("{},{},{}\n", i % 5, i % 3, i % 2);
        if i < 20 {
            head.push_str(&row);
        } else {
            tail.push_str(&row);
        }
    }
    let mut both = gz(&head);
    both.extend(gz(&tail));
    std::fs::write(d.path("two.csv.gz"), &both).unwrap();
    let out = ok(
        &d,
        &[
            "train",
            "--data",
            "two.csv.gz",
            "--epochs",
            "1",
            "--val",
            "0",
        ],
    );
    assert!(out.contains("40 training rows"), "{out}");

    let mut ids = "a,y\n".to_string();
    for i in 0..40_000 {
        ids.push_str(&format!("{i},id{i}\n"));
    }
    std::fs::write(d.path("ids.csv"), ids).unwrap();
    let e = fails(&d, &["train", "--data", "ids.csv", "--epochs", "1"]);
    assert!(e.contains("40000 distinct values"), "{e}");
    assert!(e.contains("--task regression"), "{e}");

    ok(&d, &["train", "--epochs", "1", "-q", "--save", "m.rs"]);
    let e = fails(&d, &["export", "--model", "m.rs", "--format", "rust"]);
    assert!(e.contains("which is the model itself"), "{e}");
    assert!(e.contains("--output"), "{e}");
    // Files that are not checkpoints are named as what they are, not as damaged ones.
    let e = fails(&d, &["eval", "--model", "ids.csv"]);
    assert!(e.contains("not a checkpoint: a text file"), "{e}");
    ok(
        &d,
        &[
            "export", "--model", "m.rs", "--format", "blob", "--output", "m.blob",
        ],
    );
    let e = fails(&d, &["eval", "--model", "m.blob"]);
    assert!(e.contains("not a checkpoint: a mote weight blob"), "{e}");
}

#[test]
fn bad_arguments_are_short_errors() {
    let d = TempDir::new("args");
    let e = fails(&d, &["train", "--hidden", "32,x", "--epochs", "1"]);
    assert!(e.contains("--hidden 32,x: 'x' is not a size"), "{e}");
    let e = fails(&d, &["train", "--model", "cnn", "--conv", "16,x"]);
    assert!(e.contains("--conv 16,x: 'x' is not a size"), "{e}");
    let e = fails(&d, &["train", "--val", "1.5"]);
    assert!(e.contains("validation fraction"), "{e}");
    let e = fails(&d, &["train", "--batch", "0"]);
    assert!(e.contains("batch size 0"), "{e}");
    for bad in ["0", "-1", "NaN", "inf"] {
        let e = fails(&d, &["train", &format!("--clip-grad-norm={bad}")]);
        assert!(
            e.contains("--clip-grad-norm") && e.contains("positive and finite"),
            "{e}"
        );
    }
    for bad in ["-0.1", "1.5", "NaN", "inf"] {
        let e = fails(&d, &["train", &format!("--label-smoothing={bad}")]);
        assert!(
            e.contains("--label-smoothing") && e.contains("must lie in [0, 1]"),
            "{e}"
        );
    }
    let e = fails(&d, &["train", "--label-smoothing", "1e-50"]);
    assert!(e.contains("too small to count in f32"), "{e}");
    let e = fails(&d, &["train", "--backend", "cpu", "--threads", "2"]);
    assert!(
        e.contains("--threads applies to the parallel backend"),
        "{e}"
    );
    let e = fails(
        &d,
        &[
            "train",
            "--lr",
            "1e6",
            "--optimizer",
            "sgd",
            "--epochs",
            "3",
            "--backend",
            "cpu",
        ],
    );
    assert!(e.contains("NaN or infinite") && e.contains("--lr"), "{e}");
    let e = fails(&d, &["train", "--device", "cuda", "--backend", "parallel"]);
    assert!(
        e.contains("--device cuda and --backend parallel disagree"),
        "{e}"
    );
    let e = fails(
        &d,
        &[
            "eval",
            "--device",
            "cpu",
            "--backend",
            "cuda",
            "--model",
            "m",
        ],
    );
    assert!(e.contains("disagree"), "{e}");
    let e = fails(&d, &["train", "--device", "cuda", "--threads", "2"]);
    assert!(
        e.contains("--threads applies to the parallel backend"),
        "{e}"
    );
    let e = fails(&d, &["train", "--replicas", "2", "--backend", "cpu"]);
    assert!(e.contains("--replicas 2 picks its own backend"), "{e}");
    let e = fails(&d, &["train", "--replicas", "2", "--device", "cuda"]);
    assert!(e.contains("not on GPUs"), "{e}");
    let e = fails(&d, &["train", "--gpus", "2"]);
    assert!(e.contains("--gpus needs --device cuda"), "{e}");
    let e = fails(&d, &["train", "--device", "cuda", "--gpus", "0"]);
    assert!(e.contains("--gpus 0"), "{e}");
    let e = fails(
        &d,
        &[
            "train",
            "--device",
            "cuda",
            "--gpus",
            "1",
            "--replicas",
            "2",
        ],
    );
    assert!(e.contains("do not go together"), "{e}");
    let e = fails(&d, &["train", "--replicas", "0"]);
    assert!(e.contains("--replicas 0"), "{e}");
    // clap's own usage errors exit with 2 and no panic
    let o = mote(&d, &["train", "--epochs", "many"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn resuming_on_changed_data_warns() {
    let d = TempDir::new("changed");
    let rows: String = (0..40).map(|i| format!("{},{}\n", i % 9, i % 2)).collect();
    d.write("w.csv", &format!("a,y\n{rows}"));
    ok(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--data",
            "w.csv",
            "--epochs",
            "1",
            "--save",
            "w.safetensors",
        ],
    );
    let o = mote(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--resume",
            "w.safetensors",
            "--epochs",
            "1",
        ],
    );
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    d.write("w.csv", &format!("a,y\n{rows}3,1\n"));
    let o = mote(
        &d,
        &[
            "train",
            "--backend",
            "cpu",
            "-q",
            "--resume",
            "w.safetensors",
            "--epochs",
            "1",
        ],
    );
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{se}");
    assert!(
        se.contains("warning: w.csv differs from the data this run started on"),
        "{se}"
    );
}

/// `--device cuda`: where there is a GPU, `mote train` trains the digits MLP and the CNN to the
/// CPU's accuracy (>= 96% and >= 97% held out), the MLP also through NCCL (`--gpus 1`), and
/// the checkpoints evaluate on the CPU; where there is none, one clear error before any work (`MOTE_REQUIRE_GPU=1`, set on the GPU
/// machine, makes that a failure).
#[test]
fn device_cuda_trains_or_says_why() {
    let d = TempDir::new("cuda");
    // The MLP and the CNN on one GPU, then the MLP through NCCL (`--gpus 1`: world size 1,
    // the data-parallel path end to end).
    for (model, floor, gpus) in [
        ("mlp", 96.0, false),
        ("cnn", 97.0, false),
        ("mlp", 96.0, true),
    ] {
        let save = format!("{model}{}.safetensors", if gpus { "-nccl" } else { "" });
        let mut args = vec![
            "train", "--device", "cuda", "--model", model, "--save", &save,
        ];
        if gpus {
            args.extend(["--gpus", "1"]);
        }
        let o = mote(&d, &args);
        if !o.status.success() {
            let se = fails(&d, &args);
            assert!(se.starts_with("error: --device cuda: no CUDA"), "{se}");
            assert!(
                std::env::var_os("MOTE_REQUIRE_GPU").is_none(),
                "MOTE_REQUIRE_GPU is set but: {se}"
            );
            let why = se.lines().next().unwrap_or("");
            eprintln!("device_cuda_trains_or_says_why: skipped: {why}");
            return;
        }
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let backend = if gpus {
            "cuda x 1 GPU (data parallel, NCCL"
        } else {
            "backend cuda (GPU 0)"
        };
        assert!(out.contains(backend), "{out}");
        let acc = final_accuracy(&out, 50);
        assert!(acc >= floor, "{model}: {acc}%\n{out}");
        // On the CPU: the same validation rows, within a sample or two of the GPU's logits.
        let ev = ok(&d, &["eval", "--model", &save]);
        let cpu: f64 = ev
            .split("accuracy ")
            .nth(1)
            .and_then(|s| s.split('%').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no accuracy in: {ev}"));
        assert!(
            (cpu - acc).abs() <= 0.6,
            "{model}: GPU {acc}%, CPU {cpu}%: {ev}"
        );
        println!(
            "{model} on cuda{}: {acc}% held out (CPU eval of its checkpoint: {cpu}%)",
            if gpus { " through NCCL" } else { "" }
        );
    }
}

/// `mote train --replicas N`: trains like one model; its checkpoint evaluates on one model and
/// resumes on another number of replicas, or on one model.
#[test]
fn replicas_train_and_their_checkpoints_go_anywhere() {
    let d = TempDir::new("replicas");
    let two = ok(
        &d,
        &[
            "train",
            "--replicas",
            "2",
            "--epochs",
            "3",
            "--save",
            "r.st",
        ],
    );
    assert!(two.contains("2 data-parallel replicas"), "{two}");
    let one = ok(&d, &["train", "--epochs", "3", "--save", "o.st"]);
    let (a, b) = (final_accuracy(&two, 3), final_accuracy(&one, 3));
    assert!((a - b).abs() <= 0.6, "replicas {a}% against one model {b}%");
    let ev = ok(&d, &["eval", "--model", "r.st"]);
    assert!(ev.contains(&format!("accuracy {a:.2}%")), "{ev}\n{two}");
    let more = ok(
        &d,
        &[
            "train",
            "--resume",
            "r.st",
            "--replicas",
            "3",
            "--epochs",
            "1",
        ],
    );
    assert!(final_accuracy(&more, 4) > 0.0, "{more}");
    ok(
        &d,
        &[
            "train", "--resume", "r.st", "--epochs", "1", "--save", "r1.st",
        ],
    );
    ok(
        &d,
        &[
            "train",
            "--resume",
            "o.st",
            "--replicas",
            "2",
            "--epochs",
            "1",
        ],
    );
}

// Outputs never overwrite the run's inputs (checked by file, not by spelling), a device or
// pipe or folder is never replaced, predict reads no label column, options that would be
// ignored or that are not numbers are refused by name, and `--threads` works for `train` (it
// must size the pool before anything starts it).
#[test]
fn outputs_spare_inputs_and_options_are_checked_by_name() {
    let d = TempDir::new("outputs");
    let args = |cmd: &'static str| cmd.split_whitespace().collect::<Vec<_>>();
    let rows = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n1,3,0\n3,5,1\n5,7,0\n7,9,1\n";
    std::fs::write(d.0.join("rows.csv"), rows).unwrap();
    std::fs::write(d.0.join("dup.csv"), "a,a,y\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n").unwrap();
    std::fs::create_dir(d.0.join("folder")).unwrap();
    let out = ok(
        &d,
        &args("train --threads 1 --epochs 1 -q --data rows.csv --save m.st"),
    );
    assert!(out.contains("saved m.st"), "{out}");
    let model = std::fs::read(d.0.join("m.st")).unwrap();
    for (cmd, want) in [
        (
            "export --model m.st --format blob -o ./m.st",
            "is the file of --model",
        ),
        (
            "predict --model m.st --data rows.csv -o m.st",
            "is the file of --model",
        ),
        (
            "predict --model m.st --data rows.csv -o rows.csv",
            "is the file of --data",
        ),
        (
            "train --epochs 1 --save x.st --plot ./x.st",
            "--plot ./x.st is the file of --save",
        ),
        (
            "train --data rows.csv --save rows.csv",
            "--save rows.csv is the file of --data",
        ),
        (
            "export --model m.st --format blob -o folder",
            "--output folder: is a folder",
        ),
        (
            "train --data dup.csv --epochs 1",
            "columns 1 and 2 are both named 'a'",
        ),
        ("train --epochs 1 --lr nan", "--lr NaN: needs a finite rate"),
        (
            "train -q --resume m.st --epochs 1 --save rows.csv",
            "is the file of --data",
        ),
        (
            "train -q --resume m.st --epochs 1 --plot rows.csv",
            "is the file of --data",
        ),
        (
            "train -q --resume m.st --epochs 1 --plot m.st",
            "is the file of --resume",
        ),
        (
            "train --epochs 1 --plot curves.png",
            "--plot curves.png: the curves are written as SVG",
        ),
        (
            "export --model m.st --format rust -o rows.csv",
            "is the file of the model's training data",
        ),
        ("train --epochs 1 --weight-decay inf", "--weight-decay inf"),
        (
            "train --epochs 1 --momentum 0.9",
            "--momentum applies to --optimizer sgd or rmsprop, not adam",
        ),
        (
            "train --epochs 1 --optimizer sgd --amsgrad",
            "--amsgrad applies to --optimizer adam or adamw, not sgd",
        ),
        (
            "train --epochs 1 --optimizer adagrad --centered",
            "--centered applies to --optimizer rmsprop, not adagrad",
        ),
        (
            "train --epochs 1 --alpha 0.9",
            "--alpha applies to --optimizer rmsprop, not adam",
        ),
        (
            "train --epochs 1 --optimizer rmsprop --lr-decay 0.1",
            "--lr-decay applies to --optimizer adagrad, not rmsprop",
        ),
        (
            "train --epochs 1 --optimizer rmsprop --alpha 1.5",
            "--alpha 1.5: needs a decay in [0, 1]",
        ),
        (
            "train --epochs 1 --optimizer adagrad --lr-decay -1",
            "--lr-decay -1: needs a finite decay of the rate",
        ),
        (
            "train -q --resume m.st --epochs 1 --amsgrad",
            "--amsgrad cannot be given when resuming",
        ),
        (
            "train --epochs 1 --gamma 0.3",
            "--gamma applies to --schedule step or plateau only",
        ),
        (
            "train --epochs 1 --schedule cosine --min-lr nan",
            "--min-lr NaN",
        ),
        (
            "train --epochs 1 --batch 18446744073709551615",
            "more than this machine can give",
        ),
        (
            "train -q --resume m.st --epochs 18446744073709551615",
            "more than can be counted",
        ),
        (
            "bench W-seed --backend cpu --threads 2",
            "--threads applies to the parallel backend",
        ),
        (
            "train --epochs 1 --threads 100000",
            "--threads 100000: at most 1024 threads",
        ),
        (
            "train --epochs 1 --schedule step --step-every 0",
            "--step-every 0: the step schedule cuts every N epochs",
        ),
        (
            "train --epochs 1 --model cnn --conv 100000,100000",
            "the model cannot be laid out in an arena",
        ),
    ] {
        let e = fails(&d, &args(cmd));
        assert!(e.contains(want), "{cmd}: {e}");
    }
    assert_eq!(std::fs::read(d.0.join("m.st")).unwrap(), model);
    assert_eq!(std::fs::read_to_string(d.0.join("rows.csv")).unwrap(), rows);
    assert!(d.0.join("folder").is_dir());
    // The label column is not read: a class the model never saw, a blank, a question mark;
    // columns not read may share a name.
    let new = "a,n,b,y,n\n1,0,2,7,0\n3,0,4,,0\n5,0,6,?,0\n";
    std::fs::write(d.0.join("new.csv"), new).unwrap();
    let predicted = ok(&d, &args("predict --model m.st --data new.csv"));
    assert_eq!(predicted.lines().count(), 4, "{predicted}");
}

/// Early stopping: the plain log shows the epoch that stopped the run; resuming a stopped run
/// with `--epochs N` starts its patience anew and trains N epochs; a diverging run says where.
#[test]
fn early_stops_show_their_last_epoch_and_resume_with_fresh_patience() {
    let d = TempDir::new("earlystop");
    let out = ok(
        &d,
        &[
            "train",
            "--epochs",
            "30",
            "--lr",
            "0.05",
            "--patience",
            "3",
            "--save",
            "es.st",
        ],
    );
    assert!(out.contains("stopped early"), "{out}");
    let last: usize = out
        .split("final (epoch ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("epoch {last:>2}/30 "))),
        "the stopping epoch's line is missing:\n{out}"
    );
    let again = ok(&d, &["train", "--resume", "es.st", "--epochs", "2"]);
    assert!(again.contains("trained 2 epochs"), "{again}");
    let e = fails(&d, &["train", "--epochs", "1", "--lr", "1e30"]);
    assert!(e.contains("epoch 1, step "), "{e}");
    // Whole numbers other than class numbers read as classes get a note; class numbers don't.
    let mut prices = String::from("a,price\n");
    let mut ids = String::from("a,y\n");
    for i in 0..60 {
        prices += &format!("{},{}\n", i % 7, 100 + 50 * (i % 4));
        ids += &format!("{},{}\n", i % 7, i % 3);
    }
    d.write("prices.csv", &prices);
    d.write("ids.csv", &ids);
    let stderr = |args: &[&str]| {
        let o = mote(&d, args);
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let note = stderr(&["train", "--data", "prices.csv", "--epochs", "1"]);
    assert!(
        note.contains("4 distinct whole numbers, read as classes"),
        "{note}"
    );
    assert_eq!(stderr(&["train", "--data", "ids.csv", "--epochs", "1"]), "");
    // A file named digits here: the bundled set is still what `--data digits` means, said so.
    d.write("digits", "a,y\n1,0\n");
    let note = stderr(&["train", "--epochs", "1"]);
    assert!(note.contains("give ./digits for the file"), "{note}");
}
