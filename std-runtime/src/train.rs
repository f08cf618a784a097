//! The training loop: epochs, seeded shuffling, mini-batches (the last one partial), a
//! validation split, metrics, learning-rate schedules, early stopping, logging hooks, and a
//! checkpoint after every epoch.
//!
//! ```
//! use mote::{Cpu, Rng};
//! use mote_runtime::data::{self, CsvOptions, Dataset};
//! use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig};
//! use mote_runtime::train::{fit, Prepared, TrainConfig, TrainState};
//!
//! let table = data::digits(&CsvOptions::default())?;      // or data::load("my.csv", ...)
//! let ds = Dataset::from_table(&table, None, None)?;      // classification, 10 classes
//! let config = TrainConfig { epochs: 5, ..TrainConfig::new("digits") };
//! let (train, val) = data::split(ds.rows, config.val_fraction, config.seed, ds.class_labels())?;
//! let spec = ModelSpec::for_dataset(&ds, &[32], &train)?;  // 64-32-10, standardised inputs
//! let opt = OptimizerConfig::Adam { lr: 1e-3, weight_decay: 0.0, amsgrad: false };
//! let data = Prepared::new(&ds, &spec, train, val);
//!
//! let mut mem = vec![0f32; arena_floats(&spec, &opt, config.batch)?];
//! let mut model = Model::new(Cpu::new(&mut mem), spec, opt, &mut Rng::new(config.seed))?;
//! let mut state = TrainState::new(config.seed);
//! let summary = fit(&mut model, &data, &config, &mut state, &mut [], None)?;
//! assert!(summary.last.unwrap().val_metric.unwrap() > 0.85); // validation accuracy
//! # Ok::<(), mote_runtime::Error>(())
//! ```
//!
//! On the serial backend a run is a pure function of its seed: the same seed gives the same
//! weights bit for bit, and a run resumed from a checkpoint on the same data continues exactly
//! as if it had not stopped. The learning-rate schedule follows the run's place counted in
//! epochs (see [`crate::schedule`]), so a run resumed on other data goes on from the epoch it
//! stopped at.

use std::path::Path;
use std::time::Instant;

use mote::{Backend, Rng};
use serde::{Deserialize, Serialize};

use crate::data::{self, Dataset, Targets, Task};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{Model, ModelSpec, StepOptions, StepStats};
use crate::schedule::{Plateau, Schedule};

/// Where the training data came from (so that `--resume` can load it again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// `digits` or a path.
    pub data: String,
    /// The label column as given (`None`: the last).
    pub label: Option<String>,
    /// The IDX labels file, when given.
    pub idx_labels: Option<String>,
    /// A CRC-32 of the data's features and targets ([`crate::data::fingerprint`]), to notice
    /// when a resumed run reads different data.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// What early stopping and the best epoch follow: the validation numbers when there are
/// validation rows, else the training ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// The accuracy (higher is better) or the RMSE (lower is better).
    #[default]
    Metric,
    /// The loss (lower is better): the cross-entropy, or the regression loss.
    Loss,
}

impl Monitor {
    /// Whether this is the default, [`Monitor::Metric`].
    pub fn is_metric(&self) -> bool {
        *self == Monitor::Metric
    }

    /// Whether `new` improves on `best` by more than `min_delta` (a NaN never does, as
    /// Keras's comparison against an infinite start treats it).
    pub fn improved(self, task: Task, new: f64, best: Option<f64>, min_delta: f64) -> bool {
        if new.is_nan() {
            return false;
        }
        match (best, self, task) {
            (None, ..) => true,
            (Some(b), Monitor::Metric, Task::Classification) => new > b + min_delta,
            (Some(b), ..) => new < b - min_delta,
        }
    }
}

/// The settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The epoch to stop after (counted from the start of the run, across resumes).
    pub epochs: usize,
    /// Rows per step (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// The seed of initialisation, split and shuffling.
    pub seed: u64,
    /// Share of the rows held out for validation.
    pub val_fraction: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Stop after this many epochs without improvement of the monitored number.
    pub patience: Option<usize>,
    /// What early stopping and the best epoch follow (the metric when absent).
    #[serde(default, skip_serializing_if = "Monitor::is_metric")]
    pub monitor: Monitor,
    /// The smallest change that counts as an improvement, for early stopping, the best epoch
    /// and [`Saves::best`] alike (Keras's `EarlyStopping(min_delta=)`; its `ModelCheckpoint(
    /// save_best_only=True)` has none and saves on any improvement). The command line has no
    /// option for it: 0 there.
    pub min_delta: f64,
    /// Clip the gradients' global L2 norm to this before each optimizer step (`None`: no
    /// clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Label smoothing of the classification loss, in `[0, 1]` (PyTorch's `CrossEntropyLoss`
    /// `label_smoothing`; 0: none). Training minimises the cross-entropy against
    /// `(1 - s) onehot + s / classes`; evaluation reports the plain cross-entropy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// The data.
    pub source: DataSource,
}

impl TrainConfig {
    /// The defaults on `data`: 50 epochs, batch 32, seed 42, 20% validation, constant rate, no
    /// early stopping.
    pub fn new(data: &str) -> TrainConfig {
        TrainConfig {
            epochs: 50,
            batch: 32,
            seed: 42,
            val_fraction: 0.2,
            schedule: Schedule::Constant,
            patience: None,
            monitor: Monitor::Metric,
            min_delta: 0.0,
            clip_grad_norm: None,
            label_smoothing: 0.0,
            source: DataSource {
                data: data.to_string(),
                label: None,
                idx_labels: None,
                fingerprint: None,
            },
        }
    }

    /// Checks the settings on their own (what a checkpoint's settings must satisfy to be
    /// read; [`TrainConfig::check_run`] adds what training needs).
    ///
    /// # Errors
    /// `Invalid` for a schedule's factor or floor out of range (and a plateau schedule without
    /// validation rows), a step schedule cutting every 0 epochs, a zero batch size, a clip norm
    /// that is not positive and finite, or a label smoothing outside `[0, 1]`.
    pub fn check(&self) -> Result<()> {
        let (factor, min_lr) = match self.schedule {
            Schedule::Constant => (None, None),
            Schedule::Step { gamma, .. } => (Some(gamma), None),
            Schedule::Cosine { min_lr, .. } => (None, Some(min_lr)),
            Schedule::Plateau { factor, min_lr, .. } => (Some(factor), Some(min_lr)),
        };
        if let Some(g) = factor.filter(|g| !(g.is_finite() && *g > 0.0)) {
            return Err(
                Error::invalid(format!("--gamma {g}: needs a finite factor above 0"))
                    .with_hint("for example --gamma 0.5 halves the learning rate at each cut"),
            );
        }
        if let Some(m) = min_lr.filter(|m| !(m.is_finite() && *m >= 0.0)) {
            return Err(
                Error::invalid(format!("--min-lr {m}: needs a finite rate, 0 or more"))
                    .with_hint("for example --min-lr 0.0001"),
            );
        }
        if self.batch == 0 {
            return Err(Error::invalid("batch size 0").with_hint("give --batch 1 or more"));
        }
        if let Schedule::Step { every: 0, .. } = self.schedule {
            return Err(
                Error::invalid("--step-every 0: the step schedule cuts every N epochs")
                    .with_hint("give --step-every 1 or more"),
            );
        }
        if let Schedule::Plateau { factor, .. } = self.schedule {
            if factor >= 1.0 {
                return Err(Error::invalid(format!(
                    "--gamma {factor}: the plateau schedule's factor must lie between 0 and 1"
                ))
                .with_hint("for example --gamma 0.1 (PyTorch's default factor)"));
            }
            if self.val_fraction == 0.0 {
                return Err(Error::invalid(
                    "--schedule plateau with --val 0: it follows the validation loss",
                )
                .with_hint("hold out rows for validation (--val 0.2), or use another schedule"));
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(format!(
                    "--clip-grad-norm {c}: the norm to clip to must be positive and finite"
                ))
                .with_hint("give a value such as --clip-grad-norm 1.0"));
            }
        }
        let s = self.label_smoothing;
        if !(0.0..=1.0).contains(&s) {
            return Err(Error::invalid(format!(
                "--label-smoothing {s}: the smoothing must lie in [0, 1]"
            ))
            .with_hint("give a value such as --label-smoothing 0.1"));
        }
        // Training runs in f32: a smoothing that rounds to 0 there would not smooth.
        if s != 0.0 && s as f32 == 0.0 {
            return Err(Error::invalid(format!(
                "--label-smoothing {s}: too small to count in f32 (use 0 for none)"
            )));
        }
        Ok(())
    }

    /// Checks the settings for a run to `epochs` ([`fit`] does): [`TrainConfig::check`], and
    /// a cosine warm-up shorter than the run. A warm-up as long as the run, or longer, would
    /// never decay the rate (nor, when longer, reach the base rate). It is not part of
    /// [`TrainConfig::check`], which a checkpoint's settings must pass to be evaluated: a
    /// checkpoint written with such settings still loads, and resumes with enough `epochs`.
    ///
    /// # Errors
    /// As [`TrainConfig::check`]; `Invalid` for a warm-up of `epochs` or more.
    pub fn check_run(&self) -> Result<()> {
        self.check()?;
        if let Schedule::Cosine { warmup, .. } = self.schedule {
            if warmup > 0 && warmup >= self.epochs {
                return Err(Error::invalid(format!(
                    "--warmup {warmup} with {} epochs in all: the warm-up must end before the \
                     run does, or the rate never decays (the cosine follows the warm-up)",
                    self.epochs
                ))
                .with_hint(format!(
                    "give --warmup below {}, or more --epochs (with --resume, which keeps the \
                     warm-up: --epochs N trains N more)",
                    self.epochs
                )));
            }
        }
        Ok(())
    }

    /// The step's settings that the learner applies ([`Learner::configure`]).
    pub fn step_options(&self) -> StepOptions {
        StepOptions {
            clip_grad_norm: self.clip_grad_norm,
            label_smoothing: self.label_smoothing as f32,
            seed: self.seed,
        }
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// The epoch (1-based).
    pub epoch: usize,
    /// The learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (classification) or RMSE (regression), over the epoch's batches.
    pub train_metric: f64,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Validation accuracy or RMSE.
    pub val_metric: Option<f64>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

impl EpochLog {
    /// The metric: validation if there is some, else training.
    pub fn monitored(&self) -> f64 {
        self.val_metric.unwrap_or(self.train_metric)
    }

    /// The number `monitor` names: validation if there is some, else training.
    pub fn watched(&self, monitor: Monitor) -> f64 {
        match monitor {
            Monitor::Metric => self.monitored(),
            Monitor::Loss => self.val_loss.unwrap_or(self.train_loss),
        }
    }
}

/// Where a run stands: everything besides the weights that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// The shuffling generator's state.
    pub rng: (u64, u64),
    /// The best monitored number so far ([`TrainConfig::monitor`]).
    pub best: Option<f64>,
    /// The epoch that reached it.
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub wait: usize,
    /// Whether early stopping ended the run.
    pub stopped: bool,
    /// Every epoch's numbers.
    pub history: Vec<EpochLog>,
    /// What [`Schedule::Plateau`] has seen (absent from a run without it).
    #[serde(default, skip_serializing_if = "Plateau::is_unused")]
    pub plateau: Plateau,
}

impl TrainState {
    /// The state of a run that has not started.
    pub fn new(seed: u64) -> TrainState {
        TrainState {
            epoch: 0,
            step: 0,
            rng: Rng::with_stream(seed, 2).state(),
            best: None,
            best_epoch: 0,
            wait: 0,
            stopped: false,
            history: Vec::new(),
            plateau: Plateau::default(),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Epochs run by this invocation.
    pub epochs_run: usize,
    /// Steps run by this invocation.
    pub steps_run: u64,
    /// The last epoch's numbers.
    pub last: Option<EpochLog>,
    /// The best epoch and its monitored number.
    pub best: Option<(usize, f64)>,
    /// What `best` is.
    pub monitor: Monitor,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The task (which says what the metric is).
    pub task: Task,
}

/// What a run is about to do, for the hooks.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// The first epoch this invocation runs (1-based).
    pub first_epoch: usize,
    /// The last epoch.
    pub last_epoch: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub val_rows: usize,
    /// The task.
    pub task: Task,
}

/// Hooks into a run, for logging and progress (all optional).
pub trait Callback {
    /// Before the first epoch.
    fn on_begin(&mut self, info: &RunInfo) {
        let _ = info;
    }
    /// After each step: the epoch, the step within it (1-based), and the epoch's running
    /// mean loss.
    fn on_step(&mut self, epoch: usize, step: usize, running_loss: f64) {
        let _ = (epoch, step, running_loss);
    }
    /// After each epoch (and its checkpoint).
    fn on_epoch(&mut self, log: &EpochLog) {
        let _ = log;
    }
    /// At the end.
    fn on_end(&mut self, summary: &Summary) {
        let _ = summary;
    }
}

/// Standardised features and targets with the split, ready to train on.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// Standardised features, `rows x cols`.
    pub x: Vec<f32>,
    /// Features per row.
    pub cols: usize,
    /// Class labels (classification).
    pub y_class: Vec<usize>,
    /// Standardised targets (regression).
    pub y_value: Vec<f32>,
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows.
    pub val: Vec<usize>,
}

impl Prepared {
    /// Standardises `ds` with the statistics in `spec` and keeps the split.
    pub fn new(ds: &Dataset, spec: &ModelSpec, train: Vec<usize>, val: Vec<usize>) -> Prepared {
        let mut x = ds.x.clone();
        spec.norm.apply(&mut x);
        let (mut y_class, mut y_value) = (Vec::new(), Vec::new());
        match &ds.targets {
            Targets::Classes(c) => y_class.clone_from(c),
            Targets::Values(v) => {
                let (m, s) = spec.target;
                y_value = v.iter().map(|&t| data::standardise(t, m, s)).collect();
            }
        }
        Prepared {
            x,
            cols: ds.cols,
            y_class,
            y_value,
            train,
            val,
        }
    }

    fn gather(&self, rows: &[usize], bx: &mut Vec<f32>, bc: &mut Vec<usize>, bv: &mut Vec<f32>) {
        bx.clear();
        bc.clear();
        bv.clear();
        for &r in rows {
            bx.extend_from_slice(
                self.x
                    .get(r * self.cols..(r + 1) * self.cols)
                    .unwrap_or(&[]),
            );
            if let Some(&c) = self.y_class.get(r) {
                bc.push(c);
            }
            if let Some(&v) = self.y_value.get(r) {
                bv.push(v);
            }
        }
    }
}

/// What [`fit`] trains: one [`Model`], or data-parallel replicas of one
/// ([`crate::data_parallel::Replicas`]).
pub trait Learner {
    /// The backend of the model that is evaluated and saved.
    type Backend: Backend<Elem = f32>;

    /// The model that is evaluated and saved (replica 0 of replicas: all hold the same
    /// parameters); its spec and optimizer settings describe the run.
    fn model(&self) -> &Model<Self::Backend>;

    /// Sets the learning rate of every optimizer.
    fn set_lr(&mut self, lr: f64);

    /// Sets how every training step runs (gradient clipping, label smoothing, the dropout
    /// seed).
    fn configure(&mut self, options: StepOptions);

    /// Sets the number of steps the run has taken ([`Model::steps`]): the next step draws its
    /// dropout masks from it.
    fn set_steps(&mut self, steps: u64);

    /// One training step on a standardised batch: its mean loss, correct predictions
    /// (classification) and squared errors (regression), as [`StepStats`].
    ///
    /// # Errors
    /// A core error (a non-finite loss means divergence).
    fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> Result<StepStats>;

    /// Network outputs for standardised rows, `rows x outputs`.
    ///
    /// # Errors
    /// A core error.
    fn outputs(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>>;

    /// Makes the epoch's numbers (losses and metrics) those of the run's first process, so
    /// that every process of a multi-process run logs, stops early and saves alike (see
    /// [`crate::data_parallel::Reduce::agree`]). One process: nothing to do.
    ///
    /// # Errors
    /// A device error.
    fn agree(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    /// Whether a process of a multi-process run failed, given whether this one did (`failed`):
    /// every process calls it at the same point, and all stop together rather than the others
    /// waiting for the one that left in their next collectives (see
    /// [`crate::data_parallel::Reduce::any_failed`]). One process: `failed`. A learner that
    /// wraps another and forwards [`Learner::agree`] should forward this too.
    ///
    /// # Errors
    /// A device error.
    fn any_failed(&mut self, failed: bool) -> Result<bool> {
        Ok(failed)
    }
}

impl<B: Backend<Elem = f32>> Learner for Model<B> {
    type Backend = B;

    fn model(&self) -> &Model<B> {
        self
    }

    fn set_lr(&mut self, lr: f64) {
        mote::Optimizer::set_lr(&mut self.opt, lr);
    }

    fn configure(&mut self, options: StepOptions) {
        self.options = options;
    }

    fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> Result<StepStats> {
        Model::train_step(self, x, rows, y_class, y_value)
    }

    fn outputs(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        Model::outputs(self, x, rows)
    }
}

/// Loss and metric of `model` on `rows` of `data`.
///
/// # Errors
/// A core error.
pub fn evaluate<L: Learner>(model: &mut L, data: &Prepared, rows: &[usize]) -> Result<(f64, f64)> {
    let (mut bx, mut bc, mut bv) = (Vec::new(), Vec::new(), Vec::new());
    data.gather(rows, &mut bx, &mut bc, &mut bv);
    let out = model.outputs(&bx, rows.len())?;
    let spec = &model.model().spec;
    Ok(match spec.task {
        Task::Classification => {
            // Loss and accuracy only: no per-class counts (nor a classes-squared matrix) for
            // every epoch's validation.
            let r = metrics::score(&out, spec.outputs(), &bc);
            (r.loss, r.accuracy())
        }
        Task::Regression => {
            let r = metrics::regress(&out, &bv, spec.target.1, spec.loss);
            (r.loss, r.rmse)
        }
    })
}

/// Trains `model` on `data` from `state` up to `config.epochs`, calling `hooks`; after every
/// epoch saves a checkpoint to `save` (atomically) when given.
///
/// # Errors
/// A core error (a non-finite loss: divergence), or a failed checkpoint write. A step that
/// fails mid-epoch leaves the model with the steps taken before it (and batch norms'
/// running statistics with the failed step's batch), and `state.step` counts them (the
/// optimizer's bias correction goes on from there); the epoch, its shuffle, the
/// history and the checkpoint on disk stay at the last completed epoch. To repeat the epoch
/// from where it began, resume from that checkpoint (or call `fit` again with the same state:
/// the learning-rate schedule, which counts epochs, starts the epoch over too).
pub fn fit<L: Learner>(
    model: &mut L,
    data: &Prepared,
    config: &TrainConfig,
    state: &mut TrainState,
    hooks: &mut [&mut dyn Callback],
    save: Option<&Path>,
) -> Result<Summary> {
    let saves = Saves {
        last: save,
        best: None,
    };
    fit_with(model, data, config, state, hooks, saves)
}

/// Where [`fit_with`] writes checkpoints (atomically): after every epoch, and after each epoch
/// that improves the monitored number ([`TrainConfig::monitor`]; Keras's `ModelCheckpoint(
/// save_best_only=True)`), so that the best epoch's model is kept when later epochs are worse.
#[derive(Clone, Copy, Debug, Default)]
pub struct Saves<'a> {
    /// After every epoch.
    pub last: Option<&'a Path>,
    /// After every epoch that is the best so far.
    pub best: Option<&'a Path>,
}

/// [`fit`] with checkpoints written as `saves` says.
///
/// # Errors
/// As [`fit`].
pub fn fit_with<L: Learner>(
    model: &mut L,
    data: &Prepared,
    config: &TrainConfig,
    state: &mut TrainState,
    hooks: &mut [&mut dyn Callback],
    saves: Saves<'_>,
) -> Result<Summary> {
    let save = saves.last;
    config.check_run()?;
    let t0 = Instant::now();
    let steps_per_epoch = data.train.len().div_ceil(config.batch);
    let info = RunInfo {
        first_epoch: state.epoch.saturating_add(1),
        last_epoch: config.epochs,
        steps_per_epoch,
        train_rows: data.train.len(),
        val_rows: data.val.len(),
        task: model.model().spec.task,
    };
    for h in hooks.iter_mut() {
        h.on_begin(&info);
    }
    model.configure(config.step_options());
    let base = model.model().opt_config.lr();
    let (start_step, start_epoch) = (state.step, state.epoch);
    let (mut bx, mut bc, mut bv) = (Vec::new(), Vec::new(), Vec::new());
    let mut order = Vec::with_capacity(data.train.len());
    while state.epoch < config.epochs && !state.stopped {
        let te = Instant::now();
        let epoch = state.epoch.saturating_add(1);
        let mut rng = Rng::from_state(state.rng.0, state.rng.1);
        order.clear();
        order.extend_from_slice(&data.train);
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut squared, mut lr) = (0f64, 0usize, 0f64, base);
        for (k, rows) in order.chunks(config.batch).enumerate() {
            // The schedule's place counted in epochs, not the global step count: the same on
            // unchanged data, and on a resume over data with another number of steps per
            // epoch the curve goes on from this epoch's start. The global count (`state.step`)
            // stays what the optimizer and the dropout masks follow.
            let place = (state.epoch as u64)
                .saturating_mul(steps_per_epoch as u64)
                .saturating_add(k as u64);
            lr = config
                .schedule
                .lr(base, place, steps_per_epoch, config.epochs, &state.plateau);
            model.set_lr(lr);
            model.set_steps(state.step);
            data.gather(rows, &mut bx, &mut bc, &mut bv);
            let stats = model
                .train_step(&bx, rows.len(), &bc, &bv)
                .map_err(|mut e| {
                    // Where it happened: a diverging run says at which step.
                    e.message = format!(
                        "epoch {epoch}, step {} of {steps_per_epoch}: {}",
                        k + 1,
                        e.message
                    );
                    e
                })?;
            loss_sum += stats.loss as f64 * rows.len() as f64;
            correct += stats.correct;
            squared += stats.squared_error;
            state.step += 1;
            for h in hooks.iter_mut() {
                h.on_step(
                    epoch,
                    k + 1,
                    loss_sum / ((k * config.batch + rows.len()) as f64),
                );
            }
        }
        let n = order.len().max(1) as f64;
        let spec = &model.model().spec;
        let train_metric = match spec.task {
            Task::Classification => correct as f64 / n,
            Task::Regression => (squared / n).sqrt() * spec.target.1 as f64,
        };
        let (val_loss, val_metric) = if data.val.is_empty() {
            (None, None)
        } else {
            // A process whose evaluation fails (a device error) stops the others here, before
            // they wait for it in `agree`.
            let evaluated = evaluate(model, data, &data.val);
            let anywhere = model.any_failed(evaluated.is_err());
            let (l, m) = evaluated?;
            if anywhere? {
                return Err(Error::invalid(format!(
                    "epoch {epoch}: another process of the run could not evaluate (its own \
                     error says why), so this one stops too"
                )));
            }
            (Some(l), Some(m))
        };
        // Every process of a multi-process run goes on with the first one's numbers (the
        // validation split, and so whether there are validation numbers, is the same on each).
        let mut numbers = [
            loss_sum / n,
            train_metric,
            val_loss.unwrap_or(f64::NAN),
            val_metric.unwrap_or(f64::NAN),
        ];
        model.agree(&mut numbers)?;
        let [train_loss, train_metric, val_loss_agreed, val_metric_agreed] = numbers;
        let (val_loss, val_metric) = (
            val_loss.map(|_| val_loss_agreed),
            val_metric.map(|_| val_metric_agreed),
        );
        state.rng = rng.state();
        state.epoch = epoch;
        let log = EpochLog {
            epoch,
            lr,
            train_loss,
            train_metric,
            val_loss,
            val_metric,
            seconds: te.elapsed().as_secs_f64(),
        };
        // Every process agreed on the validation loss: they reduce alike.
        if let (Schedule::Plateau { patience, .. }, Some(v)) = (config.schedule, val_loss) {
            state.plateau.observe(v, patience);
        }
        let m = log.watched(config.monitor);
        let task = model.model().spec.task;
        let better = config
            .monitor
            .improved(task, m, state.best, config.min_delta);
        if better {
            state.best = Some(m);
            state.best_epoch = epoch;
            state.wait = 0;
        } else {
            state.wait = state.wait.saturating_add(1);
            if config.patience.is_some_and(|p| state.wait >= p) {
                state.stopped = true;
            }
        }
        state.history.push(log.clone());
        let written = (|| {
            if let Some(path) = save {
                crate::checkpoint::save(path, model.model(), config, state)?;
            }
            if let Some(path) = saves.best.filter(|_| better) {
                crate::checkpoint::save(path, model.model(), config, state)?;
            }
            Ok::<_, Error>(())
        })();
        // Only the first process of a multi-process run saves (the others were given no
        // path): when it cannot (a full disk, a diverged model it refuses to write), the
        // others learn so here and stop with it.
        let anywhere = model.any_failed(written.is_err());
        written?;
        if anywhere? {
            return Err(Error::invalid(format!(
                "epoch {epoch}: another process of the run could not save its checkpoint (its \
                 own error says why), so this one stops too"
            )));
        }
        for h in hooks.iter_mut() {
            h.on_epoch(&log);
        }
    }
    let summary = Summary {
        seconds: t0.elapsed().as_secs_f64(),
        epochs_run: state.epoch - start_epoch,
        steps_run: state.step - start_step,
        last: state.history.last().cloned(),
        best: state.best.map(|b| (state.best_epoch, b)),
        stopped_early: state.stopped,
        task: model.model().spec.task,
        monitor: config.monitor,
    };
    for h in hooks.iter_mut() {
        h.on_end(&summary);
    }
    Ok(summary)
}
