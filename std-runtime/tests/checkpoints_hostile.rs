//! Hostile checkpoints: files whose CRCs were computed anew after an edit (what
//! `checkpoint::reseal` does for tests and fuzzing), so that the edit reaches the checks behind
//! the CRCs: a CNN's image past a tensor's size (whose product once overflowed), a first layer
//! that does not read what the convolution blocks give, an MLP with an image, non-finite
//! weights. Each is refused with an error naming what is wrong, never a panic. Also: a loaded
//! checkpoint saved again loads as itself, and `--save` with a long file name is checked for
//! what the save will do (before training) and saves.

use std::path::{Path, PathBuf};
use std::process::Command;

use mote::{Backend, Cpu, Rng};
use mote_runtime::checkpoint::{self, Checkpoint};
use mote_runtime::data::{self, CsvOptions, Dataset};
use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig, MAX_ELEMENTS};
use mote_runtime::train::{TrainConfig, TrainState};
use safetensors::{Dtype, SafeTensors};

const ADAM: OptimizerConfig = OptimizerConfig::Adam {
    lr: 1e-3,
    weight_decay: 0.0,
    amsgrad: false,
};

/// Four features (a 1x2x2 image for a CNN), two classes.
fn dataset() -> Dataset {
    let csv = "a,b,c,d,y\n1,2,3,4,0\n4,3,2,1,1\n0,1,0,1,0\n1,0,1,0,1\n2,2,3,3,0\n3,3,2,2,1\n";
    let table = data::parse_csv(csv, "small.csv", &CsvOptions::default()).unwrap();
    Dataset::from_table(&table, None, None).unwrap()
}

/// A CNN with one block of 2 channels over the 1x2x2 image (so `sizes` `[2, 3, 2]`), or an MLP
/// 4-3-2, with a few Adam steps taken (so the optimizer state is not all zeros).
fn model_bytes(cnn: bool) -> Vec<u8> {
    let ds = dataset();
    let train = [0, 1, 2, 3, 4, 5];
    let spec = if cnn {
        ModelSpec::cnn_for_dataset(&ds, &[2], &[3], &train).unwrap()
    } else {
        ModelSpec::for_dataset(&ds, &[3], &train).unwrap()
    };
    let config = TrainConfig::new("small.csv");
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(3)).unwrap();
    for _ in 0..3 {
        model
            .train_step(&ds.x, ds.rows, &[0, 1, 0, 1, 0, 1], &[])
            .unwrap();
    }
    let mut state = TrainState::new(3);
    state.step = 3;
    checkpoint::to_bytes_model(&model, &config, &state).unwrap()
}

/// One tensor of a safetensors file: name, type, shape, bytes.
type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// `bytes` (a checkpoint) with `edit` applied to its metadata and tensors, serialised again
/// with its old CRCs (so refused as corrupt), and with them computed anew.
fn edited(
    bytes: &[u8],
    edit: impl FnOnce(&mut std::collections::HashMap<String, String>, &mut Vec<Entry>),
) -> (Vec<u8>, Vec<u8>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    let mut tensors: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let stale = safetensors::serialize(views, Some(meta)).unwrap();
    let sealed = checkpoint::reseal(&stale).unwrap();
    (stale, sealed)
}

/// `bytes` with `f` applied to the model description's JSON, CRCs computed anew; the stale
/// version is checked to be refused as corrupt on the way (the edit alone does not get in).
fn with_model(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (stale, sealed) = edited(bytes, |meta, _| {
        let mut model: serde_json::Value = serde_json::from_str(&meta["model"]).unwrap();
        f(&mut model);
        meta.insert("model".into(), model.to_string());
    });
    let e = checkpoint::from_bytes_checked(Path::new("stale"), &stale)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("corrupt") && e.contains("description's CRC-32"),
        "{e}"
    );
    sealed
}

/// The error loading `bytes` gives (which must be one: no panic, no success).
fn refused(bytes: &[u8]) -> String {
    match checkpoint::from_bytes_checked(Path::new("hostile.safetensors"), bytes) {
        Ok(ck) => panic!("loaded a hostile checkpoint: {:?}", ck.spec),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("hostile.safetensors"), "{e}");
            e
        }
    }
}

fn load(bytes: &[u8]) -> Checkpoint {
    checkpoint::from_bytes_checked(Path::new("ok"), bytes).unwrap()
}

/// `reseal` changes nothing a reader sees: a valid checkpoint resealed loads as itself.
#[test]
fn resealing_a_valid_checkpoint_keeps_it() {
    for cnn in [false, true] {
        let bytes = model_bytes(cnn);
        let again = checkpoint::reseal(&bytes).unwrap();
        assert_eq!(load(&again), load(&bytes));
    }
    assert!(checkpoint::reseal(b"not a safetensors file").is_err());
}

/// A CNN's image whose dimensions multiply past a tensor's size (or past `usize`) is refused by
/// the description's check, naming the image; so are images that are not `[C, H, W]`.
#[test]
fn cnn_images_past_a_tensors_size_are_refused() {
    let bytes = model_bytes(true);
    let big = 1usize << 32;
    for (image, sizes0, want) in [
        // The product overflows `usize` (on 64 bits): it once panicked, or wrapped to 0.
        (
            vec![1, big, big],
            1,
            "image [1, 4294967296, 4294967296]: more than 18446744073709551615 elements",
        ),
        // 2^32 features: one past what a tensor holds.
        (
            vec![1, 65536, 65536],
            2 * 32768 * 32768,
            "image [1, 65536, 65536]: 4294967296 elements, more than a tensor holds",
        ),
        (vec![1, big, 2], 2 * (big / 2), "image [1, 4294967296, 2]"),
        (vec![1, 2], 2, "a CNN reads [channels, height, width]"),
        (vec![1, 0, 2], 2, "image [1, 0, 2]"),
    ] {
        let hostile = with_model(&bytes, |m| {
            m["image"] = serde_json::json!(image);
            m["sizes"][0] = serde_json::json!(sizes0);
        });
        let e = refused(&hostile);
        assert!(
            e.contains("bad model description") && e.contains(want),
            "{e}"
        );
    }
    // The spec's own check says the same, and `inputs` does not overflow on it.
    let mut spec = load(&bytes).spec;
    spec.image = vec![1, big, big];
    assert_eq!(spec.inputs(), usize::MAX);
    let e = spec.check().unwrap_err().to_string();
    assert!(e.contains("image [1, 4294967296, 4294967296]"), "{e}");
    // The largest image a tensor holds passes (what fits is not refused).
    spec.image = vec![1, 65536, 65535];
    spec.sizes[0] = 2 * 32768 * 32767;
    spec.sizes[1] = 2;
    assert!(spec.sizes[0] * 2 <= MAX_ELEMENTS);
    spec.check().unwrap();
    assert_eq!(spec.inputs(), 65536 * 65535);
}

/// A CNN whose first linear layer does not read the flattened output of its blocks
/// (channels x height x width after the pooling) is refused naming `sizes[0]` and the size it
/// should be; an MLP with an image is refused naming the image.
#[test]
fn inconsistent_cnn_and_mlp_descriptions_are_refused() {
    let bytes = model_bytes(true);
    assert_eq!(load(&bytes).spec.sizes, [2, 3, 2]);
    for wrong in [1, 3, 4, 8] {
        let hostile = with_model(&bytes, |m| m["sizes"][0] = serde_json::json!(wrong));
        let e = refused(&hostile);
        assert!(
            e.contains(&format!("sizes[0] = {wrong}"))
                && e.contains("2 channels x 1 x 1 = 2 after 1 blocks on an image of [1, 2, 2]"),
            "{e}"
        );
    }
    // The same with the first layer's tensors (and their optimizer state) reshaped to match the
    // edited sizes, so that only the description's check can tell: a model that would fail at
    // its first step.
    let (_, hostile) = edited(&bytes, |meta, tensors| {
        let mut model: serde_json::Value = serde_json::from_str(&meta["model"]).unwrap();
        model["sizes"][0] = serde_json::json!(4);
        meta.insert("model".into(), model.to_string());
        for t in tensors
            .iter_mut()
            .filter(|t| t.0.contains("layers.0.weight"))
        {
            t.2 = vec![3, 4];
            t.3 = [&t.3[..], &t.3[..]].concat();
        }
    });
    let e = refused(&hostile);
    assert!(
        e.contains("sizes[0] = 4") && e.contains("= 2 after 1 blocks"),
        "{e}"
    );
    // More channels in the last block: the first layer must read them all.
    let hostile = with_model(&bytes, |m| m["conv"] = serde_json::json!([5]));
    let e = refused(&hostile);
    assert!(
        e.contains("sizes[0] = 2") && e.contains("= 5 after 1 blocks"),
        "{e}"
    );
    // Channels whose weights cannot be counted (a block's weights past a tensor's size, but
    // countable, are the arena's dry run's to refuse: `mote train --conv` says so).
    let hostile = with_model(&bytes, |m| {
        m["image"] = serde_json::json!([1, 4, 4]);
        m["conv"] = serde_json::json!([1usize << 32, 1usize << 32]);
        m["sizes"][0] = serde_json::json!(1usize << 32);
    });
    let e = refused(&hostile);
    assert!(
        e.contains("conv[1] = 4294967296 channels: convs.1.weight [4294967296, 4294967296, 3, 3]: more than 18446744073709551615 elements"),
        "{e}"
    );

    let mlp = model_bytes(false);
    let hostile = with_model(&mlp, |m| m["image"] = serde_json::json!([1, 2, 2]));
    let e = refused(&hostile);
    assert!(
        e.contains("image [1, 2, 2] on a model without convolution blocks"),
        "{e}"
    );
    // Layer weights past a tensor's size.
    let hostile = with_model(&mlp, |m| m["sizes"][1] = serde_json::json!(1usize << 31));
    let e = refused(&hostile);
    assert!(
        e.contains("layer 0's weights (2147483648 outputs x 4 inputs)")
            && e.contains("more than a tensor holds"),
        "{e}"
    );
}

/// Writes `value` over element `at` of tensor `name` (f32) in `bytes`, CRCs computed anew.
fn with_value(bytes: &[u8], name: &str, at: usize, value: f32) -> Vec<u8> {
    let (_, sealed) = edited(bytes, |_, tensors| {
        let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        t.3[4 * at..4 * at + 4].copy_from_slice(&value.to_le_bytes());
    });
    sealed
}

/// A weight or a bias that is NaN or infinite is refused naming the tensor and the element;
/// an infinite optimizer state (Adam's second moment of a gradient past 1.8e19, which a real
/// run can write while its weights stay finite) is not.
#[test]
fn non_finite_weights_are_refused_by_name() {
    for cnn in [false, true] {
        let bytes = model_bytes(cnn);
        let weight = if cnn {
            "convs.0.weight"
        } else {
            "layers.0.weight"
        };
        for (name, at, v, shown) in [
            (weight, 3, f32::NAN, "NaN at element 3"),
            ("layers.1.bias", 1, f32::INFINITY, "inf at element 1"),
            ("layers.0.weight", 0, f32::NEG_INFINITY, "-inf at element 0"),
        ] {
            let e = refused(&with_value(&bytes, name, at, v));
            assert!(
                e.contains(&format!(
                    "tensor '{name}' holds a non-finite value ({shown})"
                )),
                "{e}"
            );
        }
        let inf_state = with_value(
            &bytes,
            "optimizer.layers.0.weight.exp_avg_sq",
            2,
            f32::INFINITY,
        );
        let ck = load(&inf_state);
        // `layers.0.weight` is the first parameter of an MLP, the third of a CNN (after the
        // block's weight and bias); its state is `exp_avg` then `exp_avg_sq`.
        let i = if cnn { 2 } else { 0 };
        assert_eq!(ck.opt_state[i][ck.params[i].len() + 2], f32::INFINITY);
    }
    // A model whose weight went NaN in memory (a diverged run's last step) is not saved at
    // all: the checkpoint would not load again, and the last good one on disk is kept.
    let ck = load(&model_bytes(false));
    let mut mem = vec![0f32; arena_floats(&ck.spec, &ADAM, ck.config.batch).unwrap()];
    let mut model = ck.restore(Cpu::new(&mut mem)).unwrap();
    let second = model.tape.params().nth(1).unwrap();
    let at = second.view().range().start;
    model.tape.backend_mut().write(at, &[f32::NAN]).unwrap();
    let e = checkpoint::to_bytes_model(&model, &ck.config, &ck.state)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not saved: tensor 'layers.0.bias' holds a non-finite value (NaN at element 0)"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("mote-nansave-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.st");
    std::fs::write(&path, b"the last good one").unwrap();
    assert!(checkpoint::save(&path, &model, &ck.config, &ck.state).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"the last good one");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint that loads, restored and saved again, loads as itself (the round trip the
/// fuzz target checks on mutated files too).
#[test]
fn a_loaded_checkpoint_saved_again_is_itself() {
    for cnn in [false, true] {
        let ck = load(&model_bytes(cnn));
        let mut mem = vec![0f32; arena_floats(&ck.spec, &ck.opt, ck.config.batch).unwrap()];
        let model = ck.restore(Cpu::new(&mut mem)).unwrap();
        let again = checkpoint::to_bytes_model(&model, &ck.config, &ck.state).unwrap();
        assert_eq!(load(&again), ck);
    }
}

/// A fresh folder under the system's temp folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mote-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mote train --save` with a 250-byte file name trains and saves (the temporary file the
/// save goes through has a bounded name); a 300-byte name, past the file system's limit, is
/// refused before training, naming `--save`; neither leaves a temporary file.
#[cfg(unix)]
#[test]
fn long_save_names_are_checked_before_training() {
    let d = TempDir::new("long");
    let mote = |save: &str| {
        Command::new(env!("CARGO_BIN_EXE_mote"))
            .args(["train", "--backend", "cpu", "--epochs", "1", "-q", "--save"])
            .arg(save)
            .current_dir(&d.0)
            .output()
            .unwrap()
    };
    let long = format!("{}.safetensors", "k".repeat(238));
    assert_eq!(long.len(), 250);
    let o = mote(&long);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let ck = checkpoint::load(&d.0.join(&long)).unwrap();
    assert_eq!(ck.state.epoch, 1);

    let too_long = "n".repeat(300);
    let o = mote(&too_long);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.starts_with("error: --save ")
            && err.contains(&too_long)
            && err.contains("cannot be written")
            && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.contains("epoch"), "trained first:\n{out}");
    let names: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [long]);
}
