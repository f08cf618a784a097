//! `mote eval`, `mote predict`, `mote export` and `mote bench`: using a saved model.

use mote::Backend;

use super::{
    csv_cell, describe, load_for_model, out, source_for, split_of, BenchArgs, DtypeArg, EvalArgs,
    ExportArgs, FormatArg, PredictArgs, SplitArg, Targets,
};
use crate::checkpoint::{self, Checkpoint};
use crate::data::Task;
use crate::model::{self, BackendKind, WithBackend};
use crate::train::Prepared;
use crate::{export, metrics, Error, Result};

/// Runs the network of a checkpoint over rows (no training).
struct Infer<'a> {
    ck: &'a Checkpoint,
    x: &'a [f32],
    rows: usize,
}

impl WithBackend for Infer<'_> {
    type Output = Vec<f32>;
    fn run<B: Backend<Elem = f32>>(self, backend: B) -> Result<Vec<f32>> {
        let mut m = self.ck.restore(backend)?;
        m.outputs(self.x, self.rows)
    }
}

fn infer(ck: &Checkpoint, kind: BackendKind, data: &Prepared, rows: &[usize]) -> Result<Vec<f32>> {
    let mut x = Vec::with_capacity(rows.len() * data.cols);
    for &r in rows {
        x.extend_from_slice(
            data.x
                .get(r * data.cols..(r + 1) * data.cols)
                .unwrap_or(&[]),
        );
    }
    let floats = model::arena_floats(&ck.spec, &ck.opt, ck.config.batch)?;
    model::run_on(
        kind,
        floats,
        Infer {
            ck,
            x: &x,
            rows: rows.len(),
        },
    )
}

pub(crate) fn eval_cmd(a: EvalArgs) -> Result<()> {
    let kind = super::backend_kind(a.device, a.backend, BackendKind::Cpu)?;
    model::check_device(kind)?;
    let ck = checkpoint::load(&a.model)?;
    let src = source_for(&ck, &a.data);
    // The targets are the model's label column by name, unless --label names this file's.
    let targets = match a.data.label.as_deref() {
        Some(col) => Targets::Column(col),
        None => Targets::Model,
    };
    let ds = load_for_model(&ck.spec, &src, targets)
        .map_err(|e| super::recorded_data(e, a.data.data.is_some(), &a.model, &src))?;
    // The run's own data (where the split means something): the same rows as when it
    // trained, by the fingerprint the checkpoint keeps (by path in older checkpoints).
    let same = match &ck.config.source.fingerprint {
        Some(f) => *f == crate::data::fingerprint(&ds),
        None => src.data == ck.config.source.data,
    };
    // The file the run trained on, changed since: its split cannot be found again, and all its
    // rows (the training rows among them) are what is scored.
    if !same && src.data == ck.config.source.data && a.split == SplitArg::Auto {
        eprintln!(
            "warning: {} differs from the data {} trained on (it changed since): scoring all \
             its rows, the training rows among them",
            src.data,
            a.model.display()
        );
    }
    if !same && matches!(a.split, SplitArg::Train | SplitArg::Val) {
        return Err(Error::invalid(format!(
            "--split {}: {} is not the data {} trained on, so it has no such split",
            if a.split == SplitArg::Train {
                "train"
            } else {
                "val"
            },
            src.data,
            a.model.display()
        ))
        .with_hint("use --split all (or auto) on other data"));
    }
    let (tr, va) = split_of(&ds, &ck.config)?;
    let (rows, which) = match a.split {
        SplitArg::All => ((0..ds.rows).collect(), "all rows"),
        SplitArg::Train => (tr, "the training split"),
        SplitArg::Val => (va, "the validation split"),
        SplitArg::Auto if same && !va.is_empty() => (va, "the validation split"),
        SplitArg::Auto => ((0..ds.rows).collect(), "all rows"),
    };
    if rows.is_empty() {
        return Err(
            Error::invalid("no rows to evaluate (the run had no validation split)")
                .with_hint("use --split all"),
        );
    }
    let data = Prepared::new(&ds, &ck.spec, Vec::new(), Vec::new());
    let outputs = infer(&ck, kind, &data, &rows)?;
    out(&format!(
        "{}: {} on {} of {} ({} rows)",
        a.model.display(),
        describe(&ck.spec),
        which,
        src.data,
        rows.len()
    ))?;
    match ck.spec.task {
        Task::Classification => {
            let labels: Vec<usize> = rows
                .iter()
                .filter_map(|&r| data.y_class.get(r).copied())
                .collect();
            let k = ck.spec.outputs();
            let r = metrics::classify(&outputs, k, &labels);
            out(&format!(
                "accuracy {:.2}% ({}/{}), loss {:.4}",
                100.0 * r.accuracy(),
                r.correct,
                r.total,
                r.loss
            ))?;
            // The matrix is `k x k` counts and a line per class as wide as the classes: only
            // for a few classes (a checkpoint's class count is not capped).
            if k <= metrics::CONFUSION_MAX_CLASSES {
                out("confusion matrix (rows: true class, columns: predicted):")?;
                let m = metrics::confusion(&outputs, k, &labels);
                out(metrics::confusion_table(&m, &ck.spec.classes).trim_end())?;
            } else {
                out(&format!(
                    "confusion matrix left out: {k} classes (it is printed for up to {})",
                    metrics::CONFUSION_MAX_CLASSES
                ))?;
            }
            out(metrics::class_table(&r, &ck.spec.classes).trim_end())?;
        }
        Task::Regression => {
            let t: Vec<f32> = rows
                .iter()
                .filter_map(|&r| data.y_value.get(r).copied())
                .collect();
            let r = metrics::regress(&outputs, &t, ck.spec.target.1, ck.spec.loss);
            let show = crate::progress::regression_number;
            out(&format!(
                "RMSE {}, MAE {} ({} rows)",
                show(r.rmse),
                show(r.mae),
                r.total
            ))?;
        }
    }
    Ok(())
}

pub(crate) fn predict_cmd(a: PredictArgs) -> Result<()> {
    let kind = super::backend_kind(a.device, a.backend, BackendKind::Cpu)?;
    model::check_device(kind)?;
    let ck = checkpoint::load(&a.model)?;
    let src = source_for(&ck, &a.data.as_data());
    if let Some(p) = &a.output {
        let files = super::input_files(&src.data, src.idx_labels.as_deref());
        let mut inputs: Vec<(&str, &std::path::Path)> = vec![("--model", &a.model)];
        inputs.extend(files.iter().map(|(w, f)| (*w, f.as_path())));
        checkpoint::check_output("--output", p, &inputs)?;
    }
    let ds = load_for_model(&ck.spec, &src, Targets::None)?;
    let data = Prepared::new(&ds, &ck.spec, Vec::new(), Vec::new());
    let rows: Vec<usize> = (0..ds.rows).collect();
    let outputs = infer(&ck, kind, &data, &rows)?;
    let mut text = String::new();
    match ck.spec.task {
        Task::Classification => {
            text.push_str("prediction,probability\n");
            for row in outputs.chunks(ck.spec.outputs()) {
                let k = model::argmax(row);
                let p = model::softmax(row).get(k).copied().unwrap_or(0.0);
                let name = ck.spec.classes.get(k).map_or("?", |s| s.as_str());
                text.push_str(&format!("{},{p:.4}\n", csv_cell(name)));
            }
        }
        Task::Regression => {
            text.push_str("prediction\n");
            let (m, s) = ck.spec.target;
            for &v in &outputs {
                text.push_str(&format!("{}\n", v * s + m));
            }
        }
    }
    match &a.output {
        Some(p) => {
            checkpoint::write_atomic(p, text.as_bytes())?;
            eprintln!("wrote {} predictions to {}", ds.rows, p.display());
            Ok(())
        }
        None => out(text.trim_end()),
    }
}

pub(crate) fn export_cmd(a: ExportArgs) -> Result<()> {
    let ck = checkpoint::load(&a.model)?;
    let dtype = match a.dtype {
        DtypeArg::F32 => mote::blob::Dtype::F32,
        DtypeArg::F16 => mote::blob::Dtype::F16,
        DtypeArg::Bf16 => mote::blob::Dtype::Bf16,
    };
    let (bytes, ext) = match a.format {
        FormatArg::Blob => (export::blob_bytes(&ck, dtype)?, "bin"),
        FormatArg::Rust => {
            let name = a
                .model
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned());
            (export::rust_source(&ck, dtype, &name)?.into_bytes(), "rs")
        }
    };
    let path = a
        .output
        .clone()
        .unwrap_or_else(|| a.model.with_extension(ext));
    // The default name (the model's, with the format's extension) is the model itself when
    // the model file already has that extension: say so, rather than blame an --output that
    // was not given.
    if a.output.is_none() && path == a.model {
        return Err(Error::invalid(format!(
            "the exported file would be named {} (the model's name with .{ext}), which is the \
             model itself",
            path.display()
        ))
        .with_hint("give --output NAME"));
    }
    // Nor the data the model trained on (its path as the checkpoint recorded it).
    let src = &ck.config.source;
    let data = super::input_files(&src.data, src.idx_labels.as_deref());
    let mut inputs: Vec<(&str, &std::path::Path)> = vec![("--model", &a.model)];
    inputs.extend(
        data.iter()
            .map(|(_, p)| ("the model's training data", p.as_path())),
    );
    checkpoint::check_output("--output", &path, &inputs)?;
    checkpoint::write_atomic(&path, &bytes)?;
    let norm = if ck.spec.conv.is_empty() {
        "standardisation folded in"
    } else {
        "standardisation first, as INPUT_MEAN and INPUT_INV_STD"
    };
    out(&format!(
        "wrote {} ({} bytes, {} {}, {norm})",
        path.display(),
        bytes.len(),
        format!("{:?}", a.dtype).to_lowercase(),
        describe(&ck.spec)
    ))?;
    if ext != "rs" && !ck.spec.activation.is_relu() {
        // The blob holds tensors only: the activation is the firmware's to apply.
        out(&format!(
            "note: a blob does not record the activation: apply {} ({}) between the layers",
            ck.spec.activation.title(),
            ck.spec.activation.formula()
        ))?;
    }
    Ok(())
}

pub(crate) fn bench_cmd(a: BenchArgs) -> Result<()> {
    let opts = crate::bench::BenchOptions {
        workloads: a.workloads,
        backends: a.backend,
        json: a.json,
        threads: a.threads,
        quick: a.quick,
    };
    let text = crate::bench::run(&opts)
        .map_err(|e| Error::invalid(e).with_hint("see `mote bench --help`"))?;
    out(text.trim_end())
}
