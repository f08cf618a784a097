//! Checkpoints in safetensors: parameters (`layers.{i}.weight` as `[out, in]`, `layers.{i}.bias`),
//! optimizer state under PyTorch's names (`optimizer.layers.{i}.weight.exp_avg` / `exp_avg_sq`
//! and AMSGrad's `max_exp_avg_sq` for Adam, `momentum_buffer` for SGD, `square_avg`,
//! `momentum_buffer`, `grad_avg` for RMSprop, `sum` for Adagrad: see
//! [`OptimizerConfig::state_names`]), normalisation statistics (`norm.mean`, `norm.std`), all f32; and in
//! the metadata, as JSON: the model's description, the optimizer, the run's settings and state
//! (epoch, step, RNG state, early-stopping state, the plateau schedule's state, history), a
//! CRC-32 of the tensors and one of the description (`meta_crc32`), and the version
//! ([`VERSION`], [`version_of`]: 1 for a ReLU model trained without gradient clipping, 3 for a
//! run with label smoothing, class weights or a regression loss other than the MSE, 4 for a
//! model with dropout or a run that monitors the loss, 5 for AMSGrad, RMSprop or Adagrad, 2
//! otherwise; a plateau schedule is refused by older builds as an unknown schedule).
//!
//! Files are written atomically: to a temporary file beside the target, flushed to disk, then
//! renamed over it, so a crash never leaves a broken checkpoint under the final name.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use mote::{Backend, Rng};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::data::Standardizer;
use crate::error::{Error, Result};
use crate::model::{Model, ModelSpec, OptimizerConfig};
use crate::train::{Monitor, TrainConfig, TrainState};

/// The `format` metadata value of a mote checkpoint.
pub const FORMAT: &str = "mote-checkpoint";
/// The newest checkpoint version, which this build reads along with the earlier ones. A
/// checkpoint is written with the lowest version that describes it ([`version_of`]): `1` for a
/// ReLU network trained without gradient clipping (as every earlier build wrote and reads),
/// `2` for another activation or a clipped run (which a version-1 reader would otherwise have
/// evaluated as ReLU, or resumed without clipping), `3` for a run with label smoothing, class
/// weights or a regression loss other than the MSE (which a version-2 reader would resume
/// without them), `4` for a model with dropout or a run that monitors the loss (which a
/// version-3 reader would resume without dropout, or comparing losses as metrics), `5` for
/// AMSGrad, RMSprop or Adagrad (a version-4 reader would resume AMSGrad as plain Adam, its
/// `amsgrad` setting unknown to it, and refuses the other two as unknown optimizers).
pub const VERSION: &str = "5";
/// The versions this build reads, oldest first.
const READS: [&str; 5] = ["1", "2", "3", "4", "5"];

/// A version's place in [`READS`] (`None`: not read by this build).
fn rank(version: &str) -> Option<usize> {
    READS.iter().position(|&r| r == version)
}
/// The metadata entries (JSON) that the `meta_crc32` entry covers.
const META: [&str; 4] = ["model", "optimizer", "config", "state"];

/// The CRC-32 of the metadata's JSON entries ([`META`], each with its name), which the tensors'
/// CRC does not cover: a checkpoint of version 2 or later carries it, so that an edited or damaged
/// description (an activation dropped, say) is refused rather than read as another model.
fn meta_crc(meta: &HashMap<String, String>) -> u32 {
    let mut all = Vec::new();
    for key in META {
        all.extend_from_slice(key.as_bytes());
        all.push(0);
        all.extend_from_slice(meta.get(key).map_or(&[][..], |v| v.as_bytes()));
        all.push(0);
    }
    mote::blob::crc32(&all)
}

/// What a run of `spec`, `opt` and `config` holds beyond a ReLU network trained without
/// clipping by Adam, AdamW or SGD, each with the version that first describes it and how the
/// refusal names it (empty: the activation, which it names as the network's): one list for
/// [`version_of`] and the message.
fn features(
    spec: &ModelSpec,
    opt: &OptimizerConfig,
    config: &TrainConfig,
) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    if !spec.activation.is_relu() {
        f.push(("2", String::new()));
    }
    if config.clip_grad_norm.is_some() {
        f.push(("2", "gradient clipping".to_string()));
    }
    if !spec.loss.is_mse() {
        f.push(("3", format!("the {}", spec.loss.title())));
    }
    if config.label_smoothing != 0.0 {
        f.push(("3", "label smoothing".to_string()));
    }
    if !spec.class_weights.is_empty() {
        f.push(("3", "class weights".to_string()));
    }
    if spec.dropout > 0.0 {
        f.push(("4", "dropout".to_string()));
    }
    if config.monitor == Monitor::Loss {
        f.push(("4", "early stopping on the loss".to_string()));
    }
    match opt {
        OptimizerConfig::Adam { amsgrad: true, .. }
        | OptimizerConfig::Adamw { amsgrad: true, .. } => f.push(("5", "AMSGrad".to_string())),
        OptimizerConfig::Rmsprop { .. } => f.push(("5", "RMSprop".to_string())),
        OptimizerConfig::Adagrad { .. } => f.push(("5", "Adagrad".to_string())),
        _ => {}
    }
    f
}

/// The version a checkpoint of `spec`, `opt` and `config` is written with: the lowest that
/// describes everything it holds.
pub fn version_of(spec: &ModelSpec, opt: &OptimizerConfig, config: &TrainConfig) -> &'static str {
    features(spec, opt, config)
        .iter()
        .map(|&(v, _)| v)
        .max_by_key(|&v| rank(v))
        .unwrap_or("1")
}

/// ` trained with A, B and C`, or nothing.
fn trained_with(spec: &ModelSpec, opt: &OptimizerConfig, config: &TrainConfig) -> String {
    let named: Vec<String> = features(spec, opt, config)
        .into_iter()
        .filter_map(|(_, n)| (!n.is_empty()).then_some(n))
        .collect();
    match named.split_last() {
        None => String::new(),
        Some((last, [])) => format!(" trained with {last}"),
        Some((last, rest)) => format!(" trained with {} and {last}", rest.join(", ")),
    }
}

/// Everything in a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The model (with its normalisation statistics).
    pub spec: ModelSpec,
    /// The optimizer.
    pub opt: OptimizerConfig,
    /// The run's settings.
    pub config: TrainConfig,
    /// The run's state.
    pub state: TrainState,
    /// Parameters in creation order (`weight`, `bias` per layer).
    pub params: Vec<Vec<f32>>,
    /// Optimizer state per parameter, in [`OptimizerConfig::state_names`]' order.
    pub opt_state: Vec<Vec<f32>>,
}

/// A parameter's value and its optimizer state buffers (as many as the optimizer keeps per
/// parameter, each the parameter's size): arena ranges.
type Layout = (Range<usize>, Vec<Range<usize>>);

/// The arena ranges of each parameter's value and optimizer state, in creation order.
fn layout<B: Backend<Elem = f32>>(model: &Model<B>) -> Result<Vec<Layout>> {
    let per = model.opt_config.state_per_param();
    let tape = &model.tape;
    tape.params()
        .map(|p| {
            let states = (0..per)
                .map(|k| {
                    tape.param_state(p, k)?.map(|v| v.range()).ok_or_else(|| {
                        Error::invalid(format!(
                            "internal: a parameter has no optimizer state buffer {k}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((p.view().range(), states))
        })
        .collect()
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::invalid(format!("internal: {e}")))
}

/// Serialises a model and its run into safetensors bytes.
///
/// # Errors
/// An internal layout error; a safetensors error; `Invalid` when a weight or bias is not
/// finite (a diverged model, which would not load again).
pub fn to_bytes_model<B: Backend<Elem = f32>>(
    model: &Model<B>,
    config: &TrainConfig,
    state: &TrainState,
) -> Result<Vec<u8>> {
    let backend = model.tape.backend();
    let read = |r: &std::ops::Range<usize>| -> Result<Vec<f32>> {
        let mut v = vec![0.0; r.len()];
        backend.read(r.start, &mut v)?;
        Ok(v)
    };
    let lay = layout(model)?;
    let names: Vec<String> = model
        .spec
        .param_dims()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let snames = model.opt_config.state_names();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for ((name, p), (vr, states)) in names.iter().zip(model.tape.params()).zip(&lay) {
        let dims = p
            .shape()
            .dims()
            .iter()
            .map(|&d| d as usize)
            .collect::<Vec<_>>();
        let values = read(vr)?;
        // A checkpoint with a weight that is not finite would not load again: refused here,
        // so that the last good one on disk is kept.
        if let Some(what) = non_finite(name, &values) {
            return Err(
                Error::invalid(format!("not saved: {what}: the model diverged")).with_hint(
                    "a lower --lr or --clip-grad-norm keeps training stable; the last checkpoint \
                 written is kept",
                ),
            );
        }
        tensors.push((name.clone(), dims.clone(), to_bytes(&values)));
        for (sr, sn) in states.iter().zip(snames) {
            tensors.push((
                format!("optimizer.{name}.{sn}"),
                dims.clone(),
                to_bytes(&read(sr)?),
            ));
        }
    }
    let cols = model.spec.norm.mean.len();
    tensors.push((
        "norm.mean".into(),
        vec![cols],
        to_bytes(&model.spec.norm.mean),
    ));
    tensors.push((
        "norm.std".into(),
        vec![cols],
        to_bytes(&model.spec.norm.std),
    ));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let crc = crc_of(tensors.iter().map(|t| t.2.as_slice()));
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "version".to_string(),
        version_of(&model.spec, &model.opt_config, config).to_string(),
    );
    meta.insert("model".to_string(), json(&model.spec)?);
    meta.insert("optimizer".to_string(), json(&model.opt_config)?);
    meta.insert("config".to_string(), json(config)?);
    meta.insert("state".to_string(), json(state)?);
    meta.insert("crc32".to_string(), format!("{crc:08x}"));
    meta.insert("meta_crc32".to_string(), format!("{:08x}", meta_crc(&meta)));
    let views = tensors
        .iter()
        .map(|(n, d, b)| Ok((n.clone(), TensorView::new(Dtype::F32, d.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::invalid(format!("internal: {e}")))?;
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid(format!("internal: {e}")))
}

fn crc_of<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    mote::blob::crc32(&all)
}

/// What is wrong with weights `values` of tensor `name` that are not all finite (the first
/// NaN or infinity and where), or `None`: a checkpoint holds finite weights, saved or loaded.
fn non_finite(name: &str, values: &[f32]) -> Option<String> {
    let (i, v) = values.iter().enumerate().find(|(_, v)| !v.is_finite())?;
    Some(format!(
        "tensor '{name}' holds a non-finite value ({v} at element {i})"
    ))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, `fsync`, rename,
/// and an `fsync` of the folder. Where `path` is a symbolic link, the file it leads to is
/// written (in that file's folder) and the link kept, as writing through the link does.
///
/// # Errors
/// An `Io` error naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    regular_or_absent(path, &path.display().to_string())?;
    let target = through_links(path);
    let dir = folder_of(&target);
    let (mut f, tmp) = fresh_file(dir, &temp_stem(&target)).map_err(|e| Error::io(path, &e))?;
    let res = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, &e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Where writing `path` lands: `path` itself, or the file its symbolic links lead to (which
/// need not exist yet), following at most 40 links as the system does.
fn through_links(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = t,
            Ok(t) => p = folder_of(&p).join(t),
            Err(_) => break,
        }
    }
    p
}

/// The most bytes of the target's file name that its temporary file's name repeats.
const TEMP_PREFIX: usize = 64;

/// The name of the temporary file [`write_atomic`] writes `path` through (before the `.1`,
/// `.2`, ... that [`fresh_file`] adds where that is taken), and that [`check_output`] creates
/// to see that the folder takes it: `.{name}.tmp{pid}`, with the file name cut to its first
/// [`TEMP_PREFIX`] bytes (at a character's boundary), so that a long target name (up to the
/// file system's limit, 255 bytes on most) does not make the temporary one too long. At most
/// 1 + 64 + 4 + 10 bytes.
fn temp_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let mut end = name.len().min(TEMP_PREFIX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tmp{}", &name[..end], std::process::id())
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `Invalid` (its message starting with `what`) when `path` exists and is not a regular file:
/// writing it by rename would replace a device, a pipe or a folder's entry with a plain file.
fn regular_or_absent(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            let is = if m.is_dir() {
                "a folder"
            } else {
                "not a regular file (a device or pipe)"
            };
            Err(Error::invalid(format!(
                "{what}: is {is}, which writing this file would replace"
            ))
            .with_hint("choose the path of a file"))
        }
        _ => Ok(()),
    }
}

/// A new file in `dir` named `stem` (or `stem.1`, `stem.2`, ... where that exists), created
/// only if nothing is there: an existing file or a link planted under the name is never
/// opened, so never truncated.
fn fresh_file(dir: &Path, stem: &str) -> std::io::Result<(std::fs::File, PathBuf)> {
    let mut last = None;
    for i in 0..64 {
        let name = if i == 0 {
            stem.to_string()
        } else {
            format!("{stem}.{i}")
        };
        let p = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Whether `a` and `b` name the same file: the same device and inode where both exist, else the
/// same path once each one's folder is resolved (links, `.` and `..`).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        use std::os::unix::fs::MetadataExt;
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let resolved = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        Some(folder_of(p).canonicalize().ok()?.join(p.file_name()?))
    };
    match (resolved(a), resolved(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Checks an output path before any work is done: `what` (the option, for messages) must not
/// be the same file as any of `inputs` (each with its option), must be a regular file where it
/// exists, its name must be one the file system can look up (not too long, say), and its
/// folder must exist and take the temporary file that [`write_atomic`] writes it through (one
/// of the same name is created and removed), so that a run does not fail at its end for want
/// of a place to write.
///
/// # Errors
/// `Invalid` saying which, with the paths.
pub(crate) fn check_output(what: &str, path: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for (other, input) in inputs {
        if same_file(path, input) {
            return Err(Error::invalid(format!(
                "{what} {} is the file of {other} ({}): writing it would destroy it",
                path.display(),
                input.display()
            ))
            .with_hint(format!("give {what} another path")));
        }
    }
    regular_or_absent(path, &format!("{what} {}", path.display()))?;
    let target = through_links(path);
    let dir = folder_of(&target);
    if !dir.is_dir() {
        let is = if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Err(Error::invalid(format!(
            "{what} {}: the folder {} {is}",
            path.display(),
            dir.display()
        ))
        .with_hint("create it first, or choose another path"));
    }
    // Looking the name up says whether the file system takes it (a name past its limit is
    // ENAMETOOLONG here, not at the rename after a run).
    if let Err(e) = std::fs::symlink_metadata(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Error::invalid(format!(
                "{what} {}: cannot be written: {e}",
                path.display()
            ))
            .with_hint("choose a shorter name or another path"));
        }
    }
    match fresh_file(dir, &temp_stem(&target)) {
        Ok((_, probe)) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::invalid(format!(
            "{what} {}: cannot create a file in {}: {e}",
            path.display(),
            dir.display()
        ))
        .with_hint("check the folder's permissions, or choose another path")),
    }
}

/// Saves a checkpoint of `model` and its run to `path`, atomically.
///
/// # Errors
/// As [`to_bytes_model`] and [`write_atomic`].
pub fn save<B: Backend<Elem = f32>>(
    path: &Path,
    model: &Model<B>,
    config: &TrainConfig,
    state: &TrainState,
) -> Result<()> {
    write_atomic(path, &to_bytes_model(model, config, state)?)
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::checkpoint(path, format!("corrupt or truncated checkpoint ({what})"))
        .with_hint("the file is damaged: use another checkpoint or train again")
}

/// Reads and checks a checkpoint.
///
/// # Errors
/// `Io` when the file cannot be read; `Checkpoint` when it is not safetensors, not a mote
/// checkpoint, of a version this build does not read, truncated, corrupt (a CRC-32 of the
/// tensors or of the description does not match, or a version-2 file has none of the
/// description), of a lower version than its description needs, its model description is
/// inconsistent ([`ModelSpec::check`]), its tensors do not match its model description, or a
/// weight or bias is not finite (NaN or infinite).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, &e))?;
    from_bytes_checked(path, &bytes)
}

/// [`load`] from bytes; `path` names the file in messages.
///
/// # Errors
/// As [`load`].
pub fn from_bytes_checked(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        // Files a user may hand over by mistake are named as what they are, not as damaged
        // checkpoints.
        let head = bytes.get(..bytes.len().min(512)).unwrap_or(&[]);
        let text = !head.is_empty()
            && head
                .iter()
                .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        let what = if bytes.starts_with(&mote::blob::MAGIC) {
            Some("a mote weight blob (what `mote export --format blob` writes)")
        } else if text {
            Some("a text file (a CSV file, or exported Rust source?)")
        } else {
            None
        };
        match what {
            Some(what) => Error::checkpoint(path, format!("not a checkpoint: {what}"))
                .with_hint("give a file written by `mote train --save`"),
            None => corrupt(path, format!("not valid safetensors: {e}")),
        }
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(
            path,
            "a safetensors file, but not a mote checkpoint (no mote metadata)",
        )
        .with_hint("give a file written by `mote train --save`"));
    }
    let version = meta.get("version").map_or("?", String::as_str);
    let Some(read_as) = rank(version) else {
        return Err(Error::checkpoint(
            path,
            format!(
                "checkpoint version {version:?} is not supported (this build reads {})",
                READS.join(", ")
            ),
        ));
    };
    match meta.get("meta_crc32") {
        Some(stored) if u32::from_str_radix(stored, 16).ok() != Some(meta_crc(&meta)) => {
            return Err(corrupt(
                path,
                "the model description's CRC-32 does not match the one stored",
            ));
        }
        None if read_as > 0 => {
            return Err(corrupt(path, "no 'meta_crc32' metadata"));
        }
        _ => {}
    }
    fn field<T: serde::de::DeserializeOwned>(
        path: &Path,
        meta: &HashMap<String, String>,
        key: &str,
    ) -> Result<T> {
        let s = meta
            .get(key)
            .ok_or_else(|| corrupt(path, format!("no '{key}' metadata")))?;
        serde_json::from_str(s).map_err(|e| {
            let what = format!("bad '{key}' metadata: {e}");
            if e.to_string().contains("unknown variant") {
                // Intact (its CRC matched) but naming something this build does not know.
                Error::checkpoint(path, what)
                    .with_hint("written by a newer mote? this build cannot read it")
            } else {
                corrupt(path, what)
            }
        })
    }
    let mut spec: ModelSpec = field(path, &meta, "model")?;
    let opt: OptimizerConfig = field(path, &meta, "optimizer")?;
    let config: TrainConfig = field(path, &meta, "config")?;
    let state: TrainState = field(path, &meta, "state")?;
    let stored = meta
        .get("crc32")
        .and_then(|s| u32::from_str_radix(s, 16).ok());
    let mut names: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for n in &names {
        let v = st.tensor(n).map_err(|e| corrupt(path, e))?;
        views.push(v);
    }
    let computed = crc_of(views.iter().map(|v| v.data()));
    if stored != Some(computed) {
        return Err(corrupt(
            path,
            "the tensors' CRC-32 does not match the one stored",
        ));
    }
    spec.check()
        .map_err(|e| Error::checkpoint(path, format!("bad model description: {e}")))?;
    config
        .check()
        .map_err(|e| Error::checkpoint(path, format!("bad run settings: {e}")))?;
    let needs = version_of(&spec, &opt, &config);
    if rank(needs) > Some(read_as) {
        return Err(corrupt(
            path,
            format!(
                "a version-{version} checkpoint of a {} network{}: version {needs} describes it",
                spec.activation.name(),
                trained_with(&spec, &opt, &config),
            ),
        ));
    }
    let get = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
        let v = st.tensor(name).map_err(|_| {
            Error::checkpoint(
                path,
                format!(
                    "tensor '{name}' is missing; the file does not match its model description"
                ),
            )
        })?;
        if v.dtype() != Dtype::F32 || v.shape() != dims {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor '{name}' is {:?} {:?}, the model needs F32 {dims:?}",
                    v.dtype(),
                    v.shape()
                ),
            ));
        }
        Ok(from_bytes(v.data()))
    };
    let cols = spec.inputs();
    spec.norm = Standardizer {
        mean: get("norm.mean", &[cols])?,
        std: get("norm.std", &[cols])?,
    };
    let bad_norm = spec.norm.mean.iter().any(|m| !m.is_finite())
        || spec.norm.std.iter().any(|s| !(s.is_finite() && *s > 0.0));
    if bad_norm {
        return Err(Error::checkpoint(
            path,
            "the feature standardisation holds a non-finite mean or a std that is not positive",
        ));
    }
    if spec.features.len() != cols {
        return Err(Error::checkpoint(
            path,
            format!("{} feature names for {cols} inputs", spec.features.len()),
        ));
    }
    let (mut params, mut opt_state) = (Vec::new(), Vec::new());
    let snames = opt.state_names();
    for (name, dims) in spec.param_dims() {
        let p = get(&name, &dims)?;
        // Optimizer state may hold an infinity that a run wrote (Adam's second moment of a
        // gradient past 1.8e19, which leaves the weight as it was); a weight may not.
        if let Some(what) = non_finite(&name, &p) {
            return Err(Error::checkpoint(path, what).with_hint(
                "the run that wrote it diverged, or the file was edited: use another \
                 checkpoint or train again",
            ));
        }
        params.push(p);
        let mut st = Vec::new();
        for sn in snames {
            st.extend(get(&format!("optimizer.{name}.{sn}"), &dims)?);
        }
        opt_state.push(st);
    }
    Ok(Checkpoint {
        spec,
        opt,
        config,
        state,
        params,
        opt_state,
    })
}

/// `bytes`, a safetensors file, with the CRC-32s of a checkpoint computed anew: the tensors'
/// (`crc32`) and the description's (`meta_crc32`), each where the file carries one. For tests
/// and fuzzing, which edit a checkpoint and need the edit to reach the checks behind the CRCs
/// (a reader must never reseal what it reads). The file is serialised again: the tensors'
/// order and offsets may change, their names, types, shapes and data and the other metadata
/// do not.
///
/// # Errors
/// `Checkpoint` when `bytes` are not safetensors (as [`from_bytes_checked`] says).
pub fn reseal(bytes: &[u8]) -> Result<Vec<u8>> {
    let path = Path::new("checkpoint");
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(path, format!("not valid safetensors: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    let mut meta = meta.metadata().clone();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(meta) = meta.as_mut() {
        if meta.contains_key("crc32") {
            let crc = crc_of(tensors.iter().map(|t| t.1.data()));
            meta.insert("crc32".to_string(), format!("{crc:08x}"));
        }
        if meta.contains_key("meta_crc32") {
            let crc = meta_crc(meta);
            meta.insert("meta_crc32".to_string(), format!("{crc:08x}"));
        }
    }
    safetensors::serialize(tensors, meta).map_err(|e| Error::invalid(format!("internal: {e}")))
}

impl Checkpoint {
    /// Rebuilds the model on `backend` with the saved weights and optimizer state, ready to
    /// continue training exactly where it stopped.
    ///
    /// # Errors
    /// As [`Model::new`]; an internal layout error.
    pub fn restore<B: Backend<Elem = f32>>(&self, backend: B) -> Result<Model<B>> {
        let mut model = Model::new(backend, self.spec.clone(), self.opt, &mut Rng::new(0))?;
        let steps = self.state.step;
        model.opt.set_steps(steps);
        // The run's step options (clipping, smoothing, the dropout seed) and step count, so that
        // a restored model trains on as the saved run would, `fit` or not.
        model.steps = steps;
        model.options = self.config.step_options();
        let lay = layout(&model)?;
        // Everything checked before anything is written: a checkpoint that does not fit
        // restores nothing (not some layers and the others left at their initial values).
        if lay.len() != self.params.len() || self.opt_state.len() != self.params.len() {
            return Err(Error::invalid(format!(
                "the checkpoint holds {} parameter tensors and {} optimizer states; its model \
                 has {}",
                self.params.len(),
                self.opt_state.len(),
                lay.len()
            )));
        }
        for (i, ((vr, states), (p, s))) in lay
            .iter()
            .zip(self.params.iter().zip(&self.opt_state))
            .enumerate()
        {
            // The saved state: the buffers one after the other, each the parameter's size.
            if vr.len() != p.len() || s.len() != states.len() * p.len() {
                return Err(Error::invalid(format!(
                    "checkpoint parameter {i}: {} values and {} of optimizer state; the model's \
                     parameter {i} has {} and {}",
                    p.len(),
                    s.len(),
                    vr.len(),
                    states.len() * vr.len()
                )));
            }
        }
        for ((vr, states), (p, s)) in lay.into_iter().zip(self.params.iter().zip(&self.opt_state)) {
            let b = model.tape.backend_mut();
            b.write(vr.start, p)?;
            for (sr, part) in states.iter().zip(s.chunks_exact(p.len().max(1))) {
                b.write(sr.start, part)?;
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The metadata's f64s (losses, the best score the early stopping compares with) read back
    // bit for bit: serde_json's default parser is off by an ulp for some values
    // (1.4633060239452311 came back ...313).
    #[test]
    fn metadata_floats_read_back_exactly() {
        let mut rng = mote::Rng::new(11);
        let mut values = vec![
            1.463_306_023_945_231_1,
            0.1,
            1e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        values.extend(
            (0..2000).map(|_| {
                f64::from_bits(u64::from(rng.next_u32()) << 32 | u64::from(rng.next_u32()))
            }),
        );
        for v in values.into_iter().filter(|v| v.is_finite()) {
            let text = json(&v).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v:e} written as {text}");
        }
    }

    // A file or a link planted under a temporary name is never opened (so never truncated):
    // the next free name is used.
    #[cfg(unix)]
    #[test]
    fn fresh_files_never_open_what_is_there() {
        let dir = std::env::temp_dir().join(format!("mote-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, "important").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".probe")).unwrap();
        std::fs::write(dir.join(".probe.1"), "also important").unwrap();
        let (_, p) = fresh_file(&dir, ".probe").unwrap();
        assert_eq!(p, dir.join(".probe.2"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "important");
        assert_eq!(
            std::fs::read_to_string(dir.join(".probe.1")).unwrap(),
            "also important"
        );
        // And an atomic write next to them replaces only its own target.
        write_atomic(&dir.join("out.bin"), b"new").unwrap();
        assert_eq!(std::fs::read(dir.join("out.bin")).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // A save through a symbolic link writes the file the link leads to and keeps the link
    // (a relative link, to a file in another folder, and to a file that does not exist yet).
    #[cfg(unix)]
    #[test]
    fn a_write_through_a_link_keeps_the_link() {
        let dir = std::env::temp_dir().join(format!("mote-link-{}", std::process::id()));
        // A folder left by an earlier run under the same process id goes first.
        let _ = std::fs::remove_dir_all(&dir);
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("m.st"), b"old").unwrap();
        let link = dir.join("m.st");
        std::os::unix::fs::symlink("real/m.st", &link).unwrap();
        check_output("--save", &link, &[]).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(real.join("m.st")).unwrap(), b"new");
        let dangling = dir.join("next.st");
        std::os::unix::fs::symlink(real.join("next.st"), &dangling).unwrap();
        write_atomic(&dangling, b"first").unwrap();
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(real.join("next.st")).unwrap(), b"first");
        let mut left: Vec<_> = std::fs::read_dir(&real)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["m.st", "next.st"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // The output check creates the temporary file the write goes through, under its name: a
    // long target name (250 bytes) passes the check and is written (its temporary name is
    // bounded); a name past the file system's limit (300 bytes) is refused by the check, not
    // at the end of a run; neither leaves a file behind.
    #[cfg(unix)]
    #[test]
    fn the_output_check_tries_what_the_write_does() {
        let dir = std::env::temp_dir().join(format!("mote-long-{}", std::process::id()));
        // A folder left by an earlier run under the same process id goes first.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let long = dir.join(format!("{}.safetensors", "é".repeat(60) + &"m".repeat(118)));
        assert_eq!(long.file_name().unwrap().len(), 250);
        let stem = temp_stem(&long);
        assert!(stem.len() <= 1 + TEMP_PREFIX + 4 + 10, "{stem}");
        assert!(stem.starts_with(&format!(".{}", "é".repeat(32))), "{stem}");
        check_output("--save", &long, &[]).unwrap();
        write_atomic(&long, b"saved").unwrap();
        assert_eq!(std::fs::read(&long).unwrap(), b"saved");
        let entries = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        };
        assert_eq!(entries(), [long.file_name().unwrap()]);
        let too_long = dir.join("n".repeat(300));
        let e = check_output("--save", &too_long, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--save") && e.contains(&"n".repeat(300)) && e.contains("cannot be written"),
            "{e}"
        );
        assert_eq!(entries(), [long.file_name().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
