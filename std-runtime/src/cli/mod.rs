//! The `mote` command line: argument types (`clap`) and the commands behind them.
//!
//! `mote train` alone trains an MLP on the bundled digits. Every command returns a runtime
//! [`Error`] rather than panicking; the binary prints it as one or two lines.

mod apply;
mod train;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::checkpoint::Checkpoint;
use crate::data::{self, CsvOptions, Dataset, LabelChoice, Task};
use crate::model::{Activation, BackendKind, ModelSpec};
use crate::train::{DataSource, TrainConfig};
use crate::{Error, Result};

/// The `mote` command line.
#[derive(Parser, Debug)]
#[command(
    name = "mote",
    version,
    about = "Train, evaluate and export small neural networks with mote."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train an MLP or a CNN (alone: on the bundled digits).
    Train(Box<TrainArgs>),
    /// Evaluate a saved model: accuracy, confusion matrix (up to 30 classes) and per-class
    /// precision, recall and F1, or RMSE.
    Eval(EvalArgs),
    /// Print a saved model's predictions for a data set, as CSV.
    Predict(PredictArgs),
    /// Export a saved model for firmware: the core's weight blob or a Rust source file.
    Export(ExportArgs),
    /// Benchmark the workloads of benches/WORKLOADS.md on the CPU backends (or on the GPU).
    Bench(BenchArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum BackendArg {
    /// The core's serial reference backend (reproducible bit for bit).
    Cpu,
    /// The multithreaded backend.
    Parallel,
    /// The CUDA backend on GPU 0 (the same as --device cuda).
    Cuda,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> BackendKind {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Parallel => BackendKind::Parallel,
            BackendArg::Cuda => BackendKind::Cuda,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DeviceArg {
    /// The CPU, with the backend --backend names.
    Cpu,
    /// GPU 0, through the CUDA backend.
    Cuda,
}

/// The backend that `--device` and `--backend` ask for together (`default` when neither does).
fn backend_kind(
    device: Option<DeviceArg>,
    backend: Option<BackendArg>,
    default: BackendKind,
) -> Result<BackendKind> {
    match (device, backend) {
        (Some(DeviceArg::Cuda), None | Some(BackendArg::Cuda)) => Ok(BackendKind::Cuda),
        (Some(DeviceArg::Cpu), Some(BackendArg::Cuda)) | (Some(DeviceArg::Cuda), Some(_)) => {
            Err(Error::invalid(format!(
                "--device {} and --backend {} disagree",
                if device == Some(DeviceArg::Cuda) {
                    "cuda"
                } else {
                    "cpu"
                },
                backend.map_or(BackendKind::Cpu, BackendKind::from).name()
            ))
            .with_hint("--device cuda needs no --backend; on the CPU, --backend cpu or parallel"))
        }
        (_, Some(b)) => Ok(b.into()),
        (Some(DeviceArg::Cpu), None) if default == BackendKind::Cuda => Ok(BackendKind::Parallel),
        (_, None) => Ok(default),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum OptimizerArg {
    /// Adam.
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
    /// SGD with momentum.
    Sgd,
    /// RMSprop.
    Rmsprop,
    /// Adagrad.
    Adagrad,
}

/// A regression model's loss (`mote train --loss`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
#[value(rename_all = "snake_case")]
enum LossArg {
    /// Mean squared error.
    Mse,
    /// Mean absolute error.
    L1,
    /// Huber loss: squared below --delta, linear above.
    Huber,
    /// Smooth L1 loss: the Huber loss over its threshold (--delta, PyTorch's beta).
    SmoothL1,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum ScheduleArg {
    /// The same rate throughout.
    Constant,
    /// Times --gamma every --step-every epochs.
    Step,
    /// Linear warm-up over --warmup epochs (fewer than --epochs), then a half cosine down to
    /// --min-lr.
    Cosine,
    /// Times --gamma whenever the validation loss has not improved for more than
    /// --lr-patience epochs, down to --min-lr (PyTorch's `ReduceLROnPlateau`).
    Plateau,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum TaskArg {
    /// Inferred from the label column.
    Auto,
    /// Class labels, softmax cross-entropy.
    Classification,
    /// A number: MSE, or the loss --loss names.
    Regression,
}

/// Where the data comes from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// The data: `digits` (bundled), a CSV file with a header (optionally .gz), or an IDX
    /// image file.
    #[arg(long, value_name = "digits|FILE")]
    data: Option<String>,
    /// The label column, by name or 0-based index (default: the last column; for eval, the
    /// model's label column by its name).
    #[arg(long, value_name = "COL")]
    label: Option<String>,
    /// The labels of an IDX image file (default: the `*labels-idx1*` file beside it).
    #[arg(long, value_name = "PATH")]
    idx_labels: Option<String>,
}

/// The data to predict on (no label column: predict reads the model's feature columns by
/// name and ignores the others).
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// The data: `digits` (bundled), a CSV file with a header (optionally .gz), or an IDX
    /// image file.
    #[arg(long, value_name = "digits|FILE")]
    data: String,
    /// The labels of an IDX image file (default: the `*labels-idx1*` file beside it).
    #[arg(long, value_name = "PATH")]
    idx_labels: Option<String>,
}

impl InputArgs {
    fn as_data(&self) -> DataArgs {
        DataArgs {
            data: Some(self.data.clone()),
            label: None,
            idx_labels: self.idx_labels.clone(),
        }
    }
}

/// Which network `mote train` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// Linear layers with an activation between them.
    Mlp,
    /// Convolution blocks, then linear layers.
    Cnn,
}

/// The arguments of `mote train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Classification or regression (default: inferred from the label column).
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// Hidden layer sizes, comma-separated (`none` or `0` for a linear model) [default: 32; with
    /// --model cnn: none].
    #[arg(long, value_name = "N,N,...")]
    hidden: Option<String>,
    /// The network: `mlp`, or `cnn` (convolution blocks over the features read as a square
    /// image, then the hidden layers) [default: mlp].
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// CNN: output channels of each convolution block (3x3 conv, the activation, 2x2
    /// max-pool) [default: 16,32].
    #[arg(long, value_name = "C,C,...")]
    conv: Option<String>,
    /// The activation between layers and after each convolution [default: relu].
    #[arg(long, value_enum)]
    activation: Option<Activation>,
    /// Epochs to train (with --resume: more epochs) [default: 50].
    #[arg(allow_negative_numbers = true, long)]
    epochs: Option<usize>,
    /// Rows per step [default: 32].
    #[arg(allow_negative_numbers = true, long)]
    batch: Option<usize>,
    /// Learning rate [default: 0.001 for adam/adamw, 0.01 for sgd (PyTorch's SGD: 0.001),
    /// rmsprop and adagrad].
    #[arg(allow_negative_numbers = true, long)]
    lr: Option<f64>,
    /// The optimizer [default: adam].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Momentum of sgd and rmsprop [default: sgd 0.9 (PyTorch's SGD: 0), rmsprop 0].
    #[arg(allow_negative_numbers = true, long)]
    momentum: Option<f64>,
    /// AMSGrad, for adam and adamw: the running maximum of the second moment divides.
    #[arg(long)]
    amsgrad: bool,
    /// RMSprop's decay of the average of squared gradients, in [0, 1] [default: 0.99].
    #[arg(allow_negative_numbers = true, long)]
    alpha: Option<f64>,
    /// Centered RMSprop: an estimate of the gradient's variance divides.
    #[arg(long)]
    centered: bool,
    /// Adagrad's decay of the rate: step t takes lr / (1 + (t - 1) decay) [default: 0].
    #[arg(allow_negative_numbers = true, long)]
    lr_decay: Option<f64>,
    /// Weight decay (decoupled for adamw, L2 for the others) [default: 0, adamw 0.01].
    #[arg(allow_negative_numbers = true, long)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule [default: constant].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Cosine schedule: epochs of linear warm-up, fewer than the run's: the first step takes
    /// --lr / (warm-up steps), the last --lr [default: 0].
    #[arg(allow_negative_numbers = true, long)]
    warmup: Option<usize>,
    /// Cosine schedule: the rate at the end; plateau schedule: the lowest rate [default: 0].
    #[arg(allow_negative_numbers = true, long)]
    min_lr: Option<f64>,
    /// Step schedule: epochs between decays [default: 10].
    #[arg(allow_negative_numbers = true, long)]
    step_every: Option<usize>,
    /// Step schedule: the decay factor [default: 0.5; PyTorch's `StepLR`: 0.1]; plateau
    /// schedule: the factor, below 1 [default: 0.1].
    #[arg(allow_negative_numbers = true, long)]
    gamma: Option<f64>,
    /// Plateau schedule: epochs without a lower validation loss that are tolerated before the
    /// rate is cut [default: 10].
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    lr_patience: Option<usize>,
    /// Share of rows held out for validation (0: none) [default: 0.2].
    #[arg(allow_negative_numbers = true, long)]
    val: Option<f64>,
    /// Stop after this many epochs without improvement of the monitored number (--monitor).
    #[arg(allow_negative_numbers = true, long)]
    patience: Option<usize>,
    /// What early stopping and the best epoch follow, on the validation split (the training
    /// one with --val 0): `metric` (accuracy, or RMSE) or `loss` (the cross-entropy, or the
    /// regression loss; Keras's `monitor="val_loss"`) [default: metric].
    #[arg(long, value_enum)]
    monitor: Option<crate::train::Monitor>,
    /// Clip the gradients' global L2 norm to this before each optimizer step (PyTorch's
    /// `clip_grad_norm_`) [default: no clipping].
    #[arg(allow_negative_numbers = true, long, value_name = "MAX")]
    clip_grad_norm: Option<f64>,
    /// Dropout probability in [0, 1) (PyTorch's `nn.Dropout(p)`) on the output of every hidden
    /// layer, after its activation, and on a CNN's flattened features; off in evaluation and
    /// prediction [default: 0].
    #[arg(allow_negative_numbers = true, long, value_name = "P")]
    dropout: Option<f32>,
    /// Classification: label smoothing in [0, 1] (PyTorch's `CrossEntropyLoss(label_smoothing=)`):
    /// the loss's target is `(1 - S) onehot + S / classes` [default: 0].
    #[arg(allow_negative_numbers = true, long, value_name = "S")]
    label_smoothing: Option<f64>,
    /// Classification: weights of the classes in the loss (PyTorch's
    /// `CrossEntropyLoss(weight=)`), one per class in the order of the class names (which a
    /// wrong count lists), or `balanced`: training rows / (classes x the class's training rows),
    /// as scikit-learn's, and 0 for a class without training rows [default: none].
    #[arg(long, value_name = "balanced|W,W,...")]
    class_weights: Option<String>,
    /// Regression: the loss (PyTorch's `MSELoss`, `L1Loss`, `HuberLoss`, `SmoothL1Loss`), on
    /// standardised targets [default: mse].
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
    /// `--loss huber`: its delta; `--loss smooth_l1`: its beta; in standard deviations of the
    /// target [default: 1.0].
    #[arg(allow_negative_numbers = true, long, value_name = "D")]
    delta: Option<f32>,
    /// Seed of initialisation, split and shuffling [default: 42].
    #[arg(allow_negative_numbers = true, long)]
    seed: Option<u64>,
    /// Threads of the parallel backend, or of the replicas' pool [default: all cores].
    #[arg(allow_negative_numbers = true, long)]
    threads: Option<usize>,
    /// Data-parallel replicas on CPU threads: each runs on a shard of every batch (the
    /// parallel backend's kernels, one thread each), their gradients are all-reduced before
    /// one optimizer step [default: 1].
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    replicas: Option<usize>,
    /// With --device cuda: data-parallel replicas on GPUs 0..N of this host, gradients summed
    /// by NCCL (1: one GPU through NCCL) [default: one GPU, no NCCL].
    #[arg(allow_negative_numbers = true, long, value_name = "N")]
    gpus: Option<usize>,
    /// Where to train: the CPU, or GPU 0 through CUDA [default: cpu].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// The backend (`cpu` is serial and reproducible bit for bit) [default: parallel].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// Save a checkpoint here after every epoch (safetensors, written atomically).
    #[arg(long, value_name = "PATH")]
    save: Option<PathBuf>,
    /// Also save a checkpoint here after every epoch that improves the monitored number
    /// (--monitor): the best epoch's model, which early stopping's last epochs are not
    /// (Keras's `ModelCheckpoint(save_best_only=True)`)
    #[arg(long, value_name = "PATH")]
    save_best: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (and save back to it unless --save is given).
    #[arg(long, value_name = "PATH")]
    resume: Option<PathBuf>,
    /// Save the loss and metric curves here (SVG).
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Whether this process is a rank other than 0 of a multi-process run: it prints nothing,
    /// warnings included (rank 0 prints them for the run).
    #[arg(skip)]
    silent: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum SplitArg {
    /// The validation split when the data is the training data, else all rows.
    Auto,
    /// Every row.
    All,
    /// The run's validation rows (same data, seed and fraction).
    Val,
    /// The run's training rows.
    Train,
}

/// The arguments of `mote eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model (a checkpoint from `mote train --save`).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Which rows to score.
    #[arg(long, value_enum, default_value = "auto")]
    split: SplitArg,
    /// Where to run: the CPU, or GPU 0 through CUDA [default: cpu].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// The backend [default: cpu].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

/// The arguments of `mote predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The model (a checkpoint from `mote train --save`).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    #[command(flatten)]
    data: InputArgs,
    /// Write the predictions here instead of stdout.
    #[arg(long, short, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Where to run: the CPU, or GPU 0 through CUDA [default: cpu].
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// The backend [default: cpu].
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum FormatArg {
    /// The core's weight blob (`mote::blob`), for `include_bytes!` in firmware.
    Blob,
    /// A Rust source file of `pub const` arrays.
    Rust,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DtypeArg {
    /// 4 bytes per weight.
    F32,
    /// IEEE half precision, 2 bytes.
    F16,
    /// bfloat16, 2 bytes.
    Bf16,
}

/// The arguments of `mote export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The model (a checkpoint from `mote train --save`).
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// What to write.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The element type of the weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Where to write [default: the model's path with .bin or .rs].
    #[arg(long, short, value_name = "PATH")]
    output: Option<PathBuf>,
}

/// The arguments of `mote bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workloads (W-seed, W-digits, W-mnist, W-large, gemm, conv2d); default: all.
    workloads: Vec<String>,
    /// Backends (cpu, parallel, cuda); repeat for several; default: cpu and parallel.
    #[arg(long)]
    backend: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads of the parallel backend.
    #[arg(allow_negative_numbers = true, long)]
    threads: Option<usize>,
    /// Fewer repetitions (a smoke test).
    #[arg(long)]
    quick: bool,
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command returns: a short message and, usually, a hint.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::train_cmd(*a),
        Command::Eval(a) => apply::eval_cmd(a),
        Command::Predict(a) => apply::predict_cmd(a),
        Command::Export(a) => apply::export_cmd(a),
        Command::Bench(a) => apply::bench_cmd(a),
    }
}

/// Writes to stdout; a closed pipe (`mote predict ... | head`) ends quietly.
pub(crate) fn out(text: &str) -> Result<()> {
    let mut so = std::io::stdout().lock();
    match writeln!(so, "{text}").and_then(|()| so.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Error::io(Path::new("<stdout>"), &e)),
    }
}

/// Sizes given to `flag` (`--hidden` layer sizes, `--conv` channels): a comma-separated list,
/// or `none` (also `0` or nothing) for an empty one.
pub(crate) fn parse_sizes(flag: &str, s: &str) -> Result<Vec<usize>> {
    let s = s.trim();
    if s.is_empty() || s == "none" || s == "0" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid(format!("{flag} {s}: '{p}' is not a size"))
                .with_hint(format!("give sizes such as {flag} 64,32 (or none)"))),
        })
        .collect()
}

pub(crate) fn set_threads(kind: BackendKind, threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if kind != BackendKind::Parallel {
            return Err(Error::invalid("--threads applies to the parallel backend")
                .with_hint("drop --threads, or use --backend parallel"));
        }
        crate::parallel::set_threads(n)
            .map_err(|e| Error::invalid(format!("--threads {n}: {e}")))?;
    }
    Ok(())
}

pub(crate) fn backend_text(kind: BackendKind) -> String {
    match kind {
        BackendKind::Cpu => "cpu (serial)".into(),
        BackendKind::Cuda => "cuda (GPU 0)".into(),
        BackendKind::Parallel => {
            format!("parallel ({} threads)", crate::parallel::threads())
        }
    }
}

/// The files a run reads for `data` (none for the bundled `digits`), each with what names it:
/// the data file, and an IDX image file's labels (given, or found beside it).
pub(crate) fn input_files(data: &str, idx_labels: Option<&str>) -> Vec<(&'static str, PathBuf)> {
    if data == "digits" {
        return Vec::new();
    }
    let path = PathBuf::from(data);
    let labels = idx_labels
        .map(PathBuf::from)
        .or_else(|| crate::idx::sibling_labels(&path));
    std::iter::once(("--data", path))
        .chain(labels.map(|l| ("the data's labels", l)))
        .collect()
}

/// `e`, from reading `src`, the data a checkpoint recorded (no `--data` given): a file that
/// cannot be read is named as the path `model` recorded (relative to where it trained).
pub(crate) fn recorded_data(e: Error, given: bool, model: &Path, src: &DataSource) -> Error {
    if given || e.kind != crate::error::ErrorKind::Io {
        return e;
    }
    let relative = Path::new(&src.data).is_relative();
    Error {
        message: format!(
            "{} (the data path '{}' that {} recorded{})",
            e.message,
            src.data,
            model.display(),
            if relative {
                ", relative to the folder it trained in"
            } else {
                ""
            }
        ),
        ..e
    }
    .with_hint(if relative {
        "run it from the folder it trained in, or give --data PATH"
    } else {
        "give --data PATH"
    })
}

/// Which column of a data set holds the targets a model is scored against.
pub(crate) enum Targets<'a> {
    /// The model's own label column, by its name.
    Model,
    /// Another column (by name, or 0-based index): the same targets under another name.
    Column(&'a str),
    /// None (prediction): the label column is not read, even where it is present.
    None,
}

/// The data of `src` for a model of `spec`: its features by name, and its targets as
/// `targets` says.
pub(crate) fn load_for_model(
    spec: &ModelSpec,
    src: &DataSource,
    targets: Targets<'_>,
) -> Result<Dataset> {
    let label = match targets {
        Targets::Model => LabelChoice::Column(spec.label.clone()),
        Targets::Column(c) => LabelChoice::Column(c.to_string()),
        Targets::None => LabelChoice::None,
    };
    let opts = CsvOptions {
        label,
        features: Some(spec.features.clone()),
    };
    let table = data::load(&src.data, &opts, src.idx_labels.as_deref().map(Path::new))?;
    let classes = (spec.task == Task::Classification).then_some(spec.classes.as_slice());
    Dataset::from_table(&table, Some(spec.task), classes)
}

pub(crate) fn split_of(ds: &Dataset, config: &TrainConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    data::split(ds.rows, config.val_fraction, config.seed, ds.class_labels())
}

pub(crate) fn describe(spec: &ModelSpec) -> String {
    let dims = spec
        .sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("-");
    let kind = if spec.conv.is_empty() {
        format!("MLP {dims}")
    } else {
        let conv = spec
            .conv
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let image = spec
            .image
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("x");
        format!("CNN on {image} images: conv blocks {conv}, then MLP {dims}")
    };
    let kind = if spec.activation.is_relu() {
        kind
    } else {
        format!("{} {kind}", spec.activation.name())
    };
    let kind = if spec.dropout > 0.0 {
        format!("{kind} (dropout {})", spec.dropout)
    } else {
        kind
    };
    match spec.task {
        Task::Classification if spec.class_weights.is_empty() => {
            format!("{kind}, {} classes", spec.classes.len())
        }
        Task::Classification => {
            let w = &spec.class_weights;
            let short = |w: f32| match w {
                0.0 => "0".to_string(),
                w if (1e-3..1e4).contains(&w) => format!("{w:.4}"),
                w => format!("{w:.3e}"),
            };
            let weights = if w.len() <= 12 {
                w.iter().map(|&v| short(v)).collect::<Vec<_>>().join(",")
            } else {
                let (lo, hi) = w
                    .iter()
                    .fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                format!("{} to {}", short(lo), short(hi))
            };
            format!("{kind}, {} classes weighted {weights}", w.len())
        }
        Task::Regression if spec.loss.is_mse() => {
            format!("{kind}, regression of '{}'", spec.label)
        }
        Task::Regression => format!(
            "{kind}, regression of '{}' with the {}",
            spec.label,
            spec.loss.title()
        ),
    }
}

pub(crate) fn source_for(ck: &Checkpoint, a: &DataArgs) -> DataSource {
    let mut src = ck.config.source.clone();
    if let Some(d) = &a.data {
        src.data.clone_from(d);
        src.idx_labels = None;
    }
    if let Some(l) = &a.idx_labels {
        src.idx_labels = Some(l.clone());
    }
    src
}

pub(crate) fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
