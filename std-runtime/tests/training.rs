//! The training loop through the library: batches, hooks, early stopping, schedules,
//! checkpoint round trips, the default run's accuracy on both backends, and data-parallel
//! replicas (equal to one model; checkpoints interchangeable with single-model runs).

use std::path::Path;

use mote::{Cpu, Rng, Tape};
use mote_runtime::checkpoint;
use mote_runtime::data::{self, CsvOptions, Dataset, Standardizer, Targets, Task};
use mote_runtime::data_parallel::{gradient_regions, Buckets, Reduce, Replicas, SharedMemory};
use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig, StepStats, NODES};
use mote_runtime::parallel::Parallel;
use mote_runtime::schedule::Schedule;
use mote_runtime::train::{
    self, Callback, DataSource, EpochLog, Monitor, Prepared, RunInfo, Summary, TrainConfig,
    TrainState,
};

fn setup(
    epochs: usize,
    schedule: Schedule,
    patience: Option<usize>,
) -> (ModelSpec, TrainConfig, Prepared) {
    let t = data::digits(&CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&t, None, None).unwrap();
    let config = TrainConfig {
        epochs,
        batch: 32,
        seed: 42,
        val_fraction: 0.2,
        schedule,
        patience,
        monitor: Default::default(),
        min_delta: 0.0,
        clip_grad_norm: None,
        label_smoothing: 0.0,
        source: DataSource {
            data: "digits".into(),
            label: None,
            idx_labels: None,
            fingerprint: None,
        },
    };
    let Targets::Classes(y) = &ds.targets else {
        panic!("digits are classes")
    };
    let (tr, va) = data::split(ds.rows, 0.2, 42, Some(y)).unwrap();
    let spec = ModelSpec {
        sizes: vec![64, 32, 10],
        activation: Default::default(),
        task: ds.task,
        loss: Default::default(),
        classes: ds.classes.clone(),
        class_weights: Vec::new(),
        features: t.feature_names.clone(),
        label: "label".into(),
        norm: Standardizer::fit(&ds.x, 64, &tr),
        target: (0.0, 1.0),
        conv: vec![],
        image: vec![],
        dropout: 0.0,
    };
    let prepared = Prepared::new(&ds, &spec, tr, va);
    (spec, config, prepared)
}

const ADAM: OptimizerConfig = OptimizerConfig::Adam {
    lr: 1e-3,
    weight_decay: 0.0,
    amsgrad: false,
};

#[derive(Default)]
struct Counter {
    begun: usize,
    steps: usize,
    epochs: Vec<EpochLog>,
    ended: Option<Summary>,
    info: Option<RunInfo>,
}

impl Callback for Counter {
    fn on_begin(&mut self, info: &RunInfo) {
        self.begun += 1;
        self.info = Some(info.clone());
    }
    fn on_step(&mut self, _: usize, _: usize, loss: f64) {
        assert!(loss.is_finite());
        self.steps += 1;
    }
    fn on_epoch(&mut self, log: &EpochLog) {
        self.epochs.push(log.clone());
    }
    fn on_end(&mut self, s: &Summary) {
        self.ended = Some(s.clone());
    }
}

#[test]
fn batches_hooks_and_the_partial_last_batch() {
    let (spec, config, data) = setup(3, Schedule::Constant, None);
    assert_eq!(data.train.len(), 1438); // 44 full batches of 32 and one of 30
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    let mut c = Counter::default();
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [&mut c], None).unwrap();
    assert_eq!(c.begun, 1);
    assert_eq!(c.info.unwrap().steps_per_epoch, 45);
    assert_eq!(c.steps, 3 * 45);
    assert_eq!(s.steps_run, 135);
    assert_eq!(c.epochs.len(), 3);
    assert!(c.epochs[2].train_loss < c.epochs[0].train_loss);
    assert_eq!(c.ended.unwrap().epochs_run, 3);
    assert_eq!(state.epoch, 3);
    // the tape's arena never grew past the plan
    assert!(model.tape.high_water() <= model.tape.capacity());
}

#[test]
fn early_stopping_and_schedules() {
    // learning rate 0: nothing improves after the first epoch, patience 2 stops at epoch 3
    let (spec, config, data) = setup(20, Schedule::Constant, Some(2));
    let still = OptimizerConfig::Sgd {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let mut mem = vec![0f32; arena_floats(&spec, &still, 32).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, still, &mut Rng::new(1)).unwrap();
    let mut state = TrainState::new(1);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    assert!(s.stopped_early);
    assert_eq!((s.epochs_run, s.best.unwrap().0), (3, 1));

    // Monitoring the loss: the best epoch is the one of the lowest validation loss (here, at a
    // high rate, well before the last), and the run stops `patience` epochs after it.
    let (spec, mut config, data) = setup(40, Schedule::Constant, Some(4));
    config.monitor = Monitor::Loss;
    let fast = OptimizerConfig::Adam {
        lr: 0.02,
        weight_decay: 0.0,
        amsgrad: false,
    };
    let mut mem = vec![0f32; arena_floats(&spec, &fast, 32).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, fast, &mut Rng::new(1)).unwrap();
    let mut state = TrainState::new(1);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let losses: Vec<f64> = state.history.iter().map(|h| h.val_loss.unwrap()).collect();
    let (at, low) =
        losses.iter().enumerate().fold(
            (0, f64::INFINITY),
            |b, (i, &l)| if l < b.1 { (i, l) } else { b },
        );
    assert_eq!((s.monitor, s.best), (Monitor::Loss, Some((at + 1, low))));
    assert!(s.stopped_early, "{losses:?}");
    assert_eq!(s.epochs_run, at + 1 + 4, "{losses:?}");
    // Lower is better for a loss, whatever the task; a metric's direction is the task's.
    let c = Task::Classification;
    assert!(Monitor::Loss.improved(c, 0.5, Some(0.6), 0.05));
    assert!(!Monitor::Loss.improved(c, 0.56, Some(0.6), 0.05));
    assert!(Monitor::Metric.improved(c, 0.7, Some(0.6), 0.05));
    assert!(!Monitor::Metric.improved(c, 0.5, Some(0.6), 0.0));
    assert!(Monitor::Metric.improved(Task::Regression, 0.5, Some(0.6), 0.0));
    assert!(Monitor::Loss.improved(c, 1e9, None, 0.0));
    // A NaN never becomes the best, first or later.
    assert!(!Monitor::Loss.improved(c, f64::NAN, None, 0.0));
    assert!(!Monitor::Metric.improved(c, f64::NAN, Some(0.5), 0.0));

    // cosine with one epoch of warm-up: the rate peaks after epoch 1 and falls to the floor
    let (spec, config, data) = setup(
        4,
        Schedule::Cosine {
            warmup: 1,
            min_lr: 1e-5,
        },
        None,
    );
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, 32).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(1)).unwrap();
    let mut state = TrainState::new(1);
    train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let lrs: Vec<f64> = state.history.iter().map(|h| h.lr).collect();
    assert!((lrs[0] - 1e-3).abs() < 1e-12, "{lrs:?}");
    assert!(lrs[1] < lrs[0] && lrs[2] < lrs[1]);
    assert!(lrs[3] > 1e-5 && lrs[3] < 1.1e-5, "{lrs:?}");
}

/// A learner whose `agree` hands over scripted validation accuracies, as a multi-process
/// run's first process would its own (`Learner::agree`).
struct FirstSays<L> {
    inner: L,
    said: Vec<f64>,
    seen: Vec<f64>,
}

impl<L: train::Learner> train::Learner for FirstSays<L> {
    type Backend = L::Backend;
    fn model(&self) -> &Model<L::Backend> {
        self.inner.model()
    }
    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr);
    }
    fn configure(&mut self, options: mote_runtime::model::StepOptions) {
        self.inner.configure(options);
    }
    fn set_steps(&mut self, steps: u64) {
        self.inner.set_steps(steps);
    }
    fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> mote_runtime::Result<StepStats> {
        self.inner.train_step(x, rows, y_class, y_value)
    }
    fn outputs(&mut self, x: &[f32], rows: usize) -> mote_runtime::Result<Vec<f32>> {
        self.inner.outputs(x, rows)
    }
    fn agree(&mut self, values: &mut [f64]) -> mote_runtime::Result<()> {
        // train loss, train metric, validation loss, validation metric
        let k = self.seen.len();
        self.seen.push(values[3]);
        let said = self.said[k];
        values.copy_from_slice(&[said + 1.0, said + 2.0, said + 3.0, said]);
        Ok(())
    }
}

/// Early stopping, the logs and the best epoch follow the agreed numbers (a multi-process
/// run's first process's), not the process's own evaluation.
#[test]
fn epochs_go_on_with_the_agreed_numbers() {
    let (spec, config, data) = setup(20, Schedule::Constant, Some(2));
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(3)).unwrap();
    let mut first = FirstSays {
        inner: model,
        said: vec![0.5, 0.6, 0.55, 0.59, 0.7, 0.7],
        seen: Vec::new(),
    };
    let mut c = Counter::default();
    let mut state = TrainState::new(3);
    let s = train::fit(&mut first, &data, &config, &mut state, &mut [&mut c], None).unwrap();
    // Its own accuracy rises every epoch here; the agreed one stalls after epoch 2.
    assert!(
        first.seen.windows(2).all(|w| w[1] > w[0]),
        "{:?}",
        first.seen
    );
    assert!(s.stopped_early);
    assert_eq!((s.epochs_run, s.best), (4, Some((2, 0.6))));
    let logged: Vec<f64> = c.epochs.iter().map(|e| e.val_metric.unwrap()).collect();
    assert_eq!(logged, [0.5, 0.6, 0.55, 0.59]);
    // Every number of the logs and the history is the agreed one, in its place.
    for (e, &v) in state.history.iter().zip(&first.said) {
        let got = [
            e.train_loss,
            e.train_metric,
            e.val_loss.unwrap(),
            e.val_metric.unwrap(),
        ];
        assert_eq!(got, [v + 1.0, v + 2.0, v + 3.0, v]);
    }
    assert_eq!(c.epochs, state.history);
    assert_eq!(state.history.len(), 4);
}

/// Gradient clipping (under SGD, whose steps scale with the gradient): a bound never reached
/// changes nothing, bit for bit; smaller bounds change the run more; replicas clip like one
/// model (the all-reduced gradients are the whole batch's) and stay identical.
#[test]
fn gradient_clipping_bounds_each_step() {
    const SGD: OptimizerConfig = OptimizerConfig::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let run = |clip: Option<f64>| {
        let (spec, mut config, data) = setup(2, Schedule::Constant, None);
        config.clip_grad_norm = clip;
        let mut mem = vec![0f32; arena_floats(&spec, &SGD, config.batch).unwrap()];
        let mut model = Model::new(Cpu::new(&mut mem), spec, SGD, &mut Rng::new(5)).unwrap();
        let start = params_of(&model);
        let mut state = TrainState::new(5);
        train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
        (params_of(&model), start)
    };
    let (free, start) = run(None);
    assert_eq!(run(Some(1e9)).0, free);
    let (clipped, _) = run(Some(0.05));
    let (looser, _) = run(Some(0.5));
    // 90 steps of at most 0.1 x 0.05 each: no parameter moved further than that.
    assert!(max_diff(&clipped, &start) <= 90.0 * 0.1 * 0.05 + 1e-4);
    assert!(max_diff(&clipped, &free) > 1e-3);
    assert!(max_diff(&clipped, &looser) > 1e-3);

    let (spec, mut config, data) = setup(2, Schedule::Constant, None);
    config.clip_grad_norm = Some(0.05);
    let mut arenas = vec![vec![0f32; arena_floats(&spec, &SGD, config.batch).unwrap()]; 2];
    let models = arenas
        .iter_mut()
        .map(|m| Model::new(Cpu::new(m), spec.clone(), SGD, &mut Rng::new(5)).unwrap())
        .collect();
    let mut dp = Replicas::new(models).unwrap();
    let mut state = TrainState::new(5);
    train::fit(&mut dp, &data, &config, &mut state, &mut [], None).unwrap();
    assert_eq!(dp.divergence().unwrap(), 0.0, "the replicas stay identical");
    let d = max_diff(&params_of(train::Learner::model(&dp)), &clipped);
    assert!(d < 1e-4, "replicas against one model, both clipped: {d}");

    config.clip_grad_norm = Some(-1.0);
    assert!(config.check().is_err());
}

/// Two epochs under Adam with the spec and settings `adjust` makes: the parameters of one
/// model (`replicas` 0), or of replica 0 of `replicas` (checked identical).
fn trained(replicas: usize, adjust: impl Fn(&mut ModelSpec, &mut TrainConfig)) -> Vec<f32> {
    let (mut spec, mut config, data) = setup(2, Schedule::Constant, None);
    adjust(&mut spec, &mut config);
    let mut arenas =
        vec![vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()]; replicas.max(1)];
    let mut models: Vec<_> = arenas
        .iter_mut()
        .map(|m| Model::new(Cpu::new(m), spec.clone(), ADAM, &mut Rng::new(5)).unwrap())
        .collect();
    let mut state = TrainState::new(5);
    if replicas == 0 {
        let model = &mut models[0];
        train::fit(model, &data, &config, &mut state, &mut [], None).unwrap();
        return params_of(model);
    }
    let mut dp = Replicas::new(models).unwrap();
    train::fit(&mut dp, &data, &config, &mut state, &mut [], None).unwrap();
    assert_eq!(dp.divergence().unwrap(), 0.0, "the replicas stay identical");
    params_of(train::Learner::model(&dp))
}

/// Label smoothing changes the run; replicas smooth like one model (each row's loss is smoothed,
/// so the shards' mean is the batch's).
#[test]
fn label_smoothing_replicas_train_like_one_model() {
    let plain = trained(0, |_, _| ());
    let smooth = |_: &mut ModelSpec, c: &mut TrainConfig| c.label_smoothing = 0.2;
    let smoothed = trained(0, smooth);
    assert!(max_diff(&plain, &smoothed) > 1e-3);
    let d = max_diff(&trained(2, smooth), &smoothed);
    assert!(d < 1e-4, "replicas against one model, both smoothed: {d}");
}

/// Class weights: replicas (whose shards hold different mixes of classes) train like one model
/// on the whole batch, because every shard scales by the whole batch's weight; uniform weights
/// train like none.
#[test]
fn class_weight_replicas_train_like_one_model() {
    let plain = trained(0, |_, _| ());
    let uniform = trained(0, |s, _| s.class_weights = vec![2.0; 10]);
    let skew = |s: &mut ModelSpec, _: &mut TrainConfig| {
        s.class_weights = (0..10).map(|c| 0.25 + c as f32 * 0.5).collect();
    };
    let weighted = trained(0, skew);
    assert!(max_diff(&plain, &uniform) < 1e-4);
    assert!(max_diff(&plain, &weighted) > 1e-3);
    let d = max_diff(&trained(3, skew), &weighted);
    assert!(d < 1e-4, "replicas against one model, both weighted: {d}");
}

/// Dropout changes the run; replicas drop like one model (each row's masks depend on its place
/// in the batch, not on the shard that holds it); evaluation is deterministic and without
/// dropout.
#[test]
fn dropout_replicas_train_like_one_model() {
    let plain = trained(0, |_, _| ());
    let drop = |s: &mut ModelSpec, _: &mut TrainConfig| s.dropout = 0.3;
    let dropped = trained(0, drop);
    assert!(max_diff(&plain, &dropped) > 1e-3);
    let d = max_diff(&trained(3, drop), &dropped);
    assert!(
        d < 1e-4,
        "replicas against one model, both with dropout: {d}"
    );
    // Another seed, other masks.
    let reseeded = trained(0, |s, c| {
        drop(s, c);
        c.seed = 43;
    });
    assert!(max_diff(&reseeded, &dropped) > 1e-3);

    let (mut spec, config, data) = setup(1, Schedule::Constant, None);
    spec.dropout = 0.5;
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(5)).unwrap();
    let (x, rows) = (&data.x[..64 * 20], 20);
    let before = model.outputs(x, rows).unwrap();
    assert_eq!(model.outputs(x, rows).unwrap(), before);
    // The same network without dropout computes the same outputs.
    let mut mem2 = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    spec.dropout = 0.0;
    let mut same = Model::new(Cpu::new(&mut mem2), spec, ADAM, &mut Rng::new(5)).unwrap();
    assert_eq!(same.outputs(x, rows).unwrap(), before);
    // A training step's loss sees the masks; the next evaluation does not.
    let labels = &data.y_class[..rows];
    let a = model.forward_backward(x, rows, labels, &[]).unwrap().loss;
    let b = same.forward_backward(x, rows, labels, &[]).unwrap().loss;
    assert_ne!(a, b);
    assert_eq!(model.outputs(x, rows).unwrap(), before);
}

/// Every step draws new masks, whether it runs through `fit`, `train_step`, or
/// `forward_backward` and `step` (the model counts its steps); the same step count draws the
/// same masks again. (At learning rate 0 only the masks change the loss.)
#[test]
fn dropout_masks_change_with_every_step() {
    let (mut spec, config, data) = setup(1, Schedule::Constant, None);
    spec.dropout = 0.5;
    let still = OptimizerConfig::Sgd {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let mut mem = vec![0f32; arena_floats(&spec, &still, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, still, &mut Rng::new(3)).unwrap();
    let (x, y) = (&data.x[..64 * 32], &data.y_class[..32]);
    let a = model.train_step(x, 32, y, &[]).unwrap().loss;
    let b = model.train_step(x, 32, y, &[]).unwrap().loss;
    let c = model.forward_backward(x, 32, y, &[]).unwrap().loss;
    model.step(None).unwrap();
    let d = model.forward_backward(x, 32, y, &[]).unwrap().loss;
    assert_eq!(model.steps, 3);
    assert!(a != b && b != c && c != d && a != c, "{a} {b} {c} {d}");
    train::Learner::set_steps(&mut model, 1);
    assert_eq!(model.train_step(x, 32, y, &[]).unwrap().loss, b);
}

/// A run with dropout resumed from a checkpoint draws the masks an uninterrupted run draws:
/// 2 epochs, a checkpoint, then 1 more equal 3 straight epochs bit for bit.
#[test]
fn dropout_resumes_with_the_masks_of_an_unbroken_run() {
    let (mut spec, config3, data) = setup(3, Schedule::Constant, None);
    spec.dropout = 0.2;
    let config2 = TrainConfig {
        epochs: 2,
        ..config3.clone()
    };
    let floats = arena_floats(&spec, &ADAM, config3.batch).unwrap();
    let reference = straight_run(&spec, &config3, &data);

    let mut mem = vec![0f32; floats];
    let mut first = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    train::fit(&mut first, &data, &config2, &mut state, &mut [], None).unwrap();
    let bytes = checkpoint::to_bytes_model(&first, &config2, &state).unwrap();
    let ck = checkpoint::from_bytes_checked(Path::new("dropout"), &bytes).unwrap();
    assert_eq!(ck.spec.dropout, 0.2);
    let mut mem = vec![0f32; floats];
    let mut resumed = ck.restore(Cpu::new(&mut mem)).unwrap();
    // Restored with the run's step count and seed, for a caller that steps it without `fit`.
    assert_eq!(resumed.steps, state.step);
    assert_eq!(resumed.options.seed, config2.seed);
    let mut state = ck.state.clone();
    train::fit(&mut resumed, &data, &config3, &mut state, &mut [], None).unwrap();
    assert_eq!(params_of(&resumed), reference);
}

/// The deepest model the tape holds with dropout trains a step (each dropout site records two
/// nodes more), with a composite loss too; one layer more is refused by the spec's check,
/// naming why.
#[test]
fn the_deepest_model_with_dropout_fits_the_tape() {
    let (base, config, data) = setup(1, Schedule::Constant, None);
    for weighted in [false, true] {
        let mut spec = base.clone();
        spec.dropout = 0.1;
        if weighted {
            spec.class_weights = vec![1.0; 10];
        }
        let most = spec.most_layers();
        assert!(
            most > 60 && most < mote_runtime::model::MAX_LAYERS,
            "{most}"
        );
        spec.sizes = [vec![64], vec![8; most - 1], vec![10]].concat();
        spec.check().unwrap();
        let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
        let mut model =
            Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(1)).unwrap();
        let rows = 32;
        model
            .train_step(&data.x[..64 * rows], rows, &data.y_class[..rows], &[])
            .unwrap();
        spec.sizes.insert(1, 8);
        let e = spec.check().unwrap_err().to_string();
        let why = if weighted {
            "with this loss and dropout"
        } else {
            "with dropout"
        };
        assert!(
            e.contains(&format!(
                "{} layers; at most {most} are supported {why}",
                most + 1
            )),
            "{e}"
        );
    }
}

/// A checkpoint of a model whose arena aligns its allocations (as the CUDA backend's does:
/// each parameter's optimizer buffers apart, not side by side) resumes on an unaligned arena
/// and on an aligned one as an uninterrupted unaligned run goes on, bit for bit: 2 epochs, a
/// checkpoint, then 1 more against 3 straight epochs.
#[test]
fn checkpoints_move_between_aligned_and_unaligned_arenas() {
    let (spec, config3, data) = setup(3, Schedule::Constant, None);
    let config2 = TrainConfig {
        epochs: 2,
        ..config3.clone()
    };
    let floats = arena_floats(&spec, &ADAM, config3.batch).unwrap();
    let reference = straight_run(&spec, &config3, &data);
    // Room for the padding: at most 63 floats for each of far fewer than 1024 allocations.
    let padded = floats + 63 * 1024;
    let mut mem = vec![0f32; padded];
    let mut first = Model::new(Cpu::aligned(&mut mem, 64), spec, ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    train::fit(&mut first, &data, &config2, &mut state, &mut [], None).unwrap();
    let bytes = checkpoint::to_bytes_model(&first, &config2, &state).unwrap();
    let ck = checkpoint::from_bytes_checked(Path::new("aligned"), &bytes).unwrap();
    let mut plain_mem = vec![0f32; floats];
    let mut aligned_mem = vec![0f32; padded];
    for (what, mut resumed) in [
        ("unaligned", ck.restore(Cpu::new(&mut plain_mem)).unwrap()),
        (
            "aligned",
            ck.restore(Cpu::aligned(&mut aligned_mem, 64)).unwrap(),
        ),
    ] {
        let mut state = ck.state.clone();
        train::fit(&mut resumed, &data, &config3, &mut state, &mut [], None).unwrap();
        assert_eq!(params_of(&resumed), reference, "resumed on an {what} arena");
    }
}

#[test]
fn checkpoint_round_trip_restores_the_same_model() {
    let (spec, config, data) = setup(2, Schedule::Constant, None);
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, 32).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(3)).unwrap();
    let mut state = TrainState::new(3);
    train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let bytes = checkpoint::to_bytes_model(&model, &config, &state).unwrap();
    let ck = checkpoint::from_bytes_checked(Path::new("mem"), &bytes).unwrap();
    assert_eq!(ck.spec, spec);
    assert_eq!(ck.state, state);
    let mut mem2 = vec![0f32; arena_floats(&spec, &ADAM, 32).unwrap()];
    let mut back = ck.restore(Cpu::new(&mut mem2)).unwrap();
    let rows = &data.x[..64 * 50];
    assert_eq!(
        model.outputs(rows, 50).unwrap(),
        back.outputs(rows, 50).unwrap()
    );
    let n = model.start.floats();
    let (a, b) = (
        mote::HostBackend::storage(model.tape.backend()),
        mote::HostBackend::storage(back.tape.backend()),
    );
    assert_eq!(a[..n], b[..n], "parameters, gradients and optimizer state");
    // every truncation is an error, never a panic
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(checkpoint::from_bytes_checked(Path::new("mem"), &bytes[..cut]).is_err());
    }
}

/// The main job: the default run (64-32-10, Adam, 50 epochs, seed 42) on both backends.
#[test]
fn default_run_reaches_96_percent_on_both_backends() {
    let (spec, config, data) = setup(50, Schedule::Constant, None);
    let floats = arena_floats(&spec, &ADAM, 32).unwrap();
    let mut mem = vec![0f32; floats];
    let mut model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let acc = s.last.unwrap().val_metric.unwrap();
    assert!(acc >= 0.96, "cpu: {acc}");

    let mut mem = vec![0f32; floats];
    let mut model = Model::new(Parallel::new(&mut mem), spec, ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let pacc = s.last.unwrap().val_metric.unwrap();
    assert!(pacc >= 0.96, "parallel: {pacc}");
}

#[test]
fn atomic_writes_leave_no_temporary_files() {
    let dir = std::env::temp_dir().join(format!("mote-atomic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("m.safetensors");
    checkpoint::write_atomic(&target, b"first").unwrap();
    checkpoint::write_atomic(&target, b"second").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"second");
    // a rename that cannot happen (the target is a non-empty folder) fails cleanly and leaves
    // neither a temporary file nor a changed target
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    assert!(checkpoint::write_atomic(&blocked, b"x").is_err());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked", "m.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The parameters of `model` (values only), in order.
fn params_of<B: mote::Backend<Elem = f32>>(model: &Model<B>) -> Vec<f32> {
    model
        .params()
        .unwrap()
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `n` replicas of the digits MLP, each on the serial backend over its own arena.
fn replicas<'a>(arenas: &'a mut [Vec<f32>], spec: &ModelSpec) -> Replicas<Cpu<'a, f32>> {
    let models = arenas
        .iter_mut()
        .map(|m| Model::new(Cpu::new(m), spec.clone(), ADAM, &mut Rng::new(42)).unwrap())
        .collect();
    Replicas::new(models).unwrap()
}

/// `fit` over N = 1, 2, 4 replicas equals `fit` over one model on the whole batches (within
/// f32 summation-order tolerance), and the replicas stay identical.
#[test]
fn replicas_train_like_one_model() {
    let (spec, config, data) = setup(2, Schedule::Constant, None);
    let floats = arena_floats(&spec, &ADAM, config.batch).unwrap();
    let mut mem = vec![0f32; floats];
    let mut one = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    let s1 = train::fit(&mut one, &data, &config, &mut state, &mut [], None).unwrap();
    let reference = params_of(&one);
    for n in [1, 2, 4] {
        let mut arenas = vec![vec![0f32; floats]; n];
        let mut dp = replicas(&mut arenas, &spec);
        let mut state = TrainState::new(42);
        let s = train::fit(&mut dp, &data, &config, &mut state, &mut [], None).unwrap();
        assert_eq!(dp.divergence().unwrap(), 0.0, "{n} replicas stay identical");
        let d = max_diff(&params_of(train::Learner::model(&dp)), &reference);
        assert!(d < 1e-4, "{n} replicas: parameters differ by {d}");
        let (a, b) = (s.last.unwrap(), s1.last.clone().unwrap());
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-4,
            "{n}: {a:?} vs {b:?}"
        );
        assert!((a.val_metric.unwrap() - b.val_metric.unwrap()).abs() <= 1.0 / 359.0);
    }
}

/// A checkpoint of replicas resumes as one model and one model's resumes as replicas: 2 epochs
/// on one side then 1 on the other equal 3 straight epochs (within f32 tolerance).
#[test]
fn replica_checkpoints_resume_on_one_model_and_back() {
    let (spec, config3, data) = setup(3, Schedule::Constant, None);
    let config2 = TrainConfig {
        epochs: 2,
        ..config3.clone()
    };
    let floats = arena_floats(&spec, &ADAM, config3.batch).unwrap();
    let reference = straight_run(&spec, &config3, &data);

    // 2 epochs on 3 replicas, then 1 on one model.
    let mut arenas = vec![vec![0f32; floats]; 3];
    let mut dp = replicas(&mut arenas, &spec);
    let mut state = TrainState::new(42);
    train::fit(&mut dp, &data, &config2, &mut state, &mut [], None).unwrap();
    let bytes = checkpoint::to_bytes_model(train::Learner::model(&dp), &config2, &state).unwrap();
    let ck = checkpoint::from_bytes_checked(Path::new("replicas"), &bytes).unwrap();
    let mut mem = vec![0f32; floats];
    let mut one = ck.restore(Cpu::new(&mut mem)).unwrap();
    let mut state = ck.state.clone();
    train::fit(&mut one, &data, &config3, &mut state, &mut [], None).unwrap();
    let d = max_diff(&params_of(&one), &reference);
    assert!(d < 1e-4, "replicas -> one model: parameters differ by {d}");

    // 2 epochs on one model, then 1 on 2 replicas.
    let mut mem = vec![0f32; floats];
    let mut one = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    train::fit(&mut one, &data, &config2, &mut state, &mut [], None).unwrap();
    let bytes = checkpoint::to_bytes_model(&one, &config2, &state).unwrap();
    let ck = checkpoint::from_bytes_checked(Path::new("one"), &bytes).unwrap();
    let mut arenas = vec![vec![0f32; floats]; 2];
    let models = arenas
        .iter_mut()
        .map(|m| ck.restore(Cpu::new(m)).unwrap())
        .collect();
    let mut dp = Replicas::new(models).unwrap();
    let mut state = ck.state.clone();
    train::fit(&mut dp, &data, &config3, &mut state, &mut [], None).unwrap();
    let d = max_diff(&params_of(train::Learner::model(&dp)), &reference);
    assert!(d < 1e-4, "one model -> replicas: parameters differ by {d}");
}

/// The parameters of one model trained straight through `config`'s epochs from seed 42: what
/// the resume tests compare with.
fn straight_run(spec: &ModelSpec, config: &TrainConfig, data: &Prepared) -> Vec<f32> {
    let mut mem = vec![0f32; arena_floats(spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    train::fit(&mut model, data, config, &mut state, &mut [], None).unwrap();
    params_of(&model)
}

/// Stands in for NCCL across processes: each "process" (a thread) holds one replica, rank
/// `rank` of `world`; the all-reduce sums the weighted gradients through shared memory, after
/// the backward, or (`buckets`) bucket by bucket during it, each bucket a blocking collective
/// as NCCL's are (every rank must issue the same buckets in the same order, or it hangs).
struct Ranked {
    rank: usize,
    world: usize,
    shared: std::sync::Arc<(std::sync::Mutex<Vec<Vec<f32>>>, std::sync::Barrier)>,
    buckets: Option<usize>,
    plan: Option<Buckets>,
    weight: f32,
    /// Per step: at its first bucket, whether the last bucket's gradients (the first layer's)
    /// were still all zero, i.e. the bucket came during the backward, not after it.
    early: std::sync::Mutex<Vec<bool>>,
    fresh: std::sync::atomic::AtomicBool,
}

impl Ranked {
    /// Sums `regions` of `st` (weighted) across the ranks, in rank order.
    fn collective(&self, st: &mut [f32], regions: &[(usize, usize)]) {
        let (slots, barrier) = &*self.shared;
        let local: Vec<f32> = regions
            .iter()
            .flat_map(|&(o, n)| st[o..o + n].iter().map(|g| g * self.weight))
            .collect();
        slots.lock().unwrap()[self.rank] = local;
        barrier.wait();
        {
            let slots = slots.lock().unwrap();
            let mut at = 0;
            for &(o, n) in regions {
                for (j, g) in st[o..o + n].iter_mut().enumerate() {
                    *g = slots.iter().fold(0.0, |s, r| s + r[at + j]);
                }
                at += n;
            }
        }
        barrier.wait();
    }
}

impl<B: mote::HostBackend<Elem = f32> + Send> Reduce<B> for Ranked {
    fn each<F>(&self, models: &mut [Model<B>], f: F) -> Vec<mote_runtime::Result<StepStats>>
    where
        F: Fn(usize, &mut Model<B>, &Self) -> mote_runtime::Result<StepStats> + Sync + Send,
    {
        models
            .iter_mut()
            .enumerate()
            .map(|(r, m)| f(r, m, self))
            .collect()
    }

    fn buckets(&self) -> Option<&Buckets> {
        self.plan.as_ref()
    }

    fn begin(&mut self, models: &mut [Model<B>], weights: &[f32]) -> mote_runtime::Result<()> {
        self.weight = weights[0];
        self.fresh.store(true, std::sync::atomic::Ordering::Relaxed);
        if let (Some(floats), None) = (self.buckets, &self.plan) {
            self.plan = Some(Buckets::of(&models[0].tape, floats)?);
        }
        Ok(())
    }

    fn bucket_ready(
        &self,
        _r: usize,
        tape: &mut Tape<B, NODES>,
        b: usize,
    ) -> mote_runtime::Result<()> {
        let plan = self.plan.as_ref().unwrap();
        if self.fresh.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let st = tape.backend().storage();
            let zero = plan
                .regions(plan.len() - 1)
                .iter()
                .all(|&(o, n)| st[o..o + n].iter().all(|&g| g == 0.0));
            self.early.lock().unwrap().push(zero);
        }
        let regions = plan.regions(b).to_vec();
        self.collective(tape.backend_mut().storage_mut(), &regions);
        Ok(())
    }

    fn all_reduce(&mut self, models: &mut [Model<B>], _: &[f32]) -> mote_runtime::Result<()> {
        if self.plan.is_none() {
            let m = &mut models[0];
            let regions = gradient_regions(&m.tape)?;
            self.collective(m.tape.backend_mut().storage_mut(), &regions);
        }
        Ok(())
    }

    fn place(&self, _local: usize) -> (usize, usize) {
        (self.rank, self.world)
    }

    fn any_failed(&self, failed: bool) -> mote_runtime::Result<bool> {
        let (slots, barrier) = &*self.shared;
        slots.lock().unwrap()[self.rank] = vec![if failed { 1.0 } else { 0.0 }];
        barrier.wait();
        let any = slots.lock().unwrap().iter().any(|s| s[0] != 0.0);
        barrier.wait();
        Ok(any)
    }
}

/// The multi-process path (each process one replica, rank r of the run, shard r of every
/// batch, gradients summed across processes) on the CPU: 2 ranks on 2 threads train like one
/// model on the whole batches, and end with the same parameters.
///
/// With dropout: each rank draws the masks of its rows' places in the whole batch (rank 1's
/// shard starts mid-batch), as the one model does.
#[test]
fn ranks_in_separate_processes_train_like_one_model() {
    for dropout in [0.0, 0.25] {
        ranks_train_like_one_model(dropout);
    }
}

fn ranks_train_like_one_model(dropout: f32) {
    let (mut spec, config, data) = setup(2, Schedule::Constant, None);
    spec.dropout = dropout;
    let floats = arena_floats(&spec, &ADAM, config.batch).unwrap();
    let mut mem = vec![0f32; floats];
    let mut one = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(42)).unwrap();
    let mut state = TrainState::new(42);
    train::fit(&mut one, &data, &config, &mut state, &mut [], None).unwrap();
    let reference = params_of(&one);
    let data = std::sync::Arc::new(data);
    let mut after = Vec::new();
    // After the backward, then bucket by bucket during it (small buckets: several per step).
    for buckets in [None, Some(1000)] {
        let shared = std::sync::Arc::new((
            std::sync::Mutex::new(vec![Vec::new(); 2]),
            std::sync::Barrier::new(2),
        ));
        let ranks: Vec<Vec<f32>> = (0..2)
            .map(|rank| {
                let (spec, config, data, shared) =
                    (spec.clone(), config.clone(), data.clone(), shared.clone());
                std::thread::spawn(move || {
                    let mut mem = vec![0f32; floats];
                    let model =
                        Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(42)).unwrap();
                    let reduce = Ranked {
                        rank,
                        world: 2,
                        shared,
                        buckets,
                        plan: None,
                        weight: 0.0,
                        early: Default::default(),
                        fresh: Default::default(),
                    };
                    let mut dp = Replicas::with_reduce(vec![model], reduce).unwrap();
                    let mut state = TrainState::new(42);
                    train::fit(&mut dp, &data, &config, &mut state, &mut [], None).unwrap();
                    if buckets.is_some() {
                        let red = dp.reducer();
                        assert!(red.plan.as_ref().unwrap().len() > 2);
                        // Every step's first bucket went out while the first layer's
                        // gradients were still to come.
                        let early = red.early.lock().unwrap();
                        assert!(early.len() > 10);
                        assert!(early.iter().all(|&e| e), "{early:?}");
                    }
                    params_of(train::Learner::model(&dp))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(ranks[0], ranks[1], "both ranks hold the same parameters");
        let d = max_diff(&ranks[0], &reference);
        assert!(
            d < 1e-4,
            "2 ranks against one model ({buckets:?}): parameters differ by {d}"
        );
        after.push(ranks[0].clone());
    }
    assert_eq!(
        after[0], after[1],
        "bucketed sums equal the sums after the backward"
    );
}

/// CPU replicas in shared memory: the all-reduce in buckets during the backward equals the one
/// after it, bit for bit, with 2 and 3 replicas.
#[test]
fn shared_memory_buckets_equal_the_all_reduce_after_the_backward() {
    let (spec, config, data) = setup(1, Schedule::Constant, None);
    let floats = arena_floats(&spec, &ADAM, config.batch).unwrap();
    for n in [2, 3] {
        let mut runs = Vec::new();
        for buckets in [None, Some(500), Some(1 << 20)] {
            let mut arenas = vec![vec![0f32; floats]; n];
            let models = arenas
                .iter_mut()
                .map(|m| Model::new(Cpu::new(m), spec.clone(), ADAM, &mut Rng::new(42)).unwrap())
                .collect();
            let mut dp =
                Replicas::with_reduce(models, SharedMemory::with_buckets(buckets)).unwrap();
            let mut state = TrainState::new(42);
            train::fit(&mut dp, &data, &config, &mut state, &mut [], None).unwrap();
            runs.push(params_of(train::Learner::model(&dp)));
        }
        assert_eq!(runs[0], runs[1], "{n} replicas, small buckets");
        assert_eq!(runs[0], runs[2], "{n} replicas, one bucket");
    }
}

/// Runs `f` on 2 ranks, threads standing in for processes, each with one replica of `spec`
/// (seed 42, Adam) summed through [`Ranked`] with `buckets`; each rank's result, in rank order
/// (its error as text). Fails when a rank has not finished in 60 s: stuck in a collective.
fn on_two_ranks<F>(
    spec: &ModelSpec,
    floats: usize,
    buckets: Option<usize>,
    f: F,
) -> Vec<Result<(), String>>
where
    F: Fn(usize, &mut Replicas<Cpu<'_, f32>, Ranked>) -> mote_runtime::Result<()>
        + Send
        + Sync
        + 'static,
{
    let shared = std::sync::Arc::new((
        std::sync::Mutex::new(vec![Vec::new(); 2]),
        std::sync::Barrier::new(2),
    ));
    let f = std::sync::Arc::new(f);
    let (tx, rx) = std::sync::mpsc::channel();
    for rank in 0..2 {
        let (spec, shared, f, tx) = (spec.clone(), shared.clone(), f.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut mem = vec![0f32; floats];
            let model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(42)).unwrap();
            let reduce = Ranked {
                rank,
                world: 2,
                shared,
                buckets,
                plan: None,
                weight: 0.0,
                early: Default::default(),
                fresh: Default::default(),
            };
            let mut dp = Replicas::with_reduce(vec![model], reduce).unwrap();
            let r = f(rank, &mut dp).map_err(|e| e.to_string());
            tx.send((rank, r)).unwrap();
        });
    }
    let mut got: Vec<(usize, Result<(), String>)> = (0..2)
        .map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("a rank is stuck waiting in a collective")
        })
        .collect();
    got.sort_by_key(|r| r.0);
    got.into_iter().map(|(_, r)| r).collect()
}

/// A rank whose step fails (a label out of range in its shard, or a non-finite loss) still
/// sends its gradient buckets during the step, so that the other rank's step ends instead of
/// waiting in a collective; then every rank learns that a step failed, and all stop at that
/// step (the failing rank with its own error), rather than the others going on to the next
/// step's collectives and waiting there for the rank that left.
#[test]
fn a_failing_rank_still_sends_its_buckets_and_all_stop_together() {
    let (spec, config, _) = setup(1, Schedule::Constant, None);
    let floats = arena_floats(&spec, &ADAM, config.batch).unwrap();
    let rows = 8;
    let inputs = spec.inputs();
    let x: Vec<f32> = (0..rows * inputs).map(|i| (i % 7) as f32 * 0.1).collect();
    // Rank 0 takes rows 0..4: one label out of range there, or an infinite input.
    let labels: Vec<usize> = vec![1, 2, 99, 3, 4, 5, 6, 7];
    let mut inf = x.clone();
    inf[inputs + 1] = f32::INFINITY;
    let ok_labels: Vec<usize> = (0..rows).collect();
    for (x, labels, why) in [
        (x.clone(), labels, "label"),
        (inf, ok_labels, "NaN or infinite"),
    ] {
        let got = on_two_ranks(&spec, floats, Some(1000), move |_, dp| {
            train::Learner::train_step(dp, &x, rows, &labels, &[]).map(|_| ())
        });
        let [Err(first), Err(second)] = &got[..] else {
            panic!("both ranks fail ({why}): {got:?}");
        };
        assert!(first.contains(why), "{first}");
        assert!(
            second.contains("rank 1 of 2: another rank's step failed"),
            "{second}"
        );
    }
}

/// Only rank 0 of a multi-process run saves: when its checkpoint cannot be written, the other
/// rank learns so at the end of the epoch and stops too (before, it went on to the next epoch's
/// collectives and waited there for the rank that had left).
#[test]
fn a_rank_that_cannot_save_stops_every_rank() {
    let (spec, config, data) = setup(3, Schedule::Constant, None);
    let floats = arena_floats(&spec, &ADAM, config.batch).unwrap();
    let got = on_two_ranks(&spec, floats, None, move |rank, dp| {
        let mut state = TrainState::new(42);
        // A file's path used as a folder: the write fails on rank 0.
        let save = (rank == 0).then(|| Path::new("Cargo.toml/model.safetensors"));
        train::fit(dp, &data, &config, &mut state, &mut [], save).map(|_| ())
    });
    let [Err(first), Err(second)] = &got[..] else {
        panic!("both ranks fail: {got:?}");
    };
    assert!(first.contains("Cargo.toml"), "{first}");
    assert!(
        second.contains("epoch 1: another process of the run could not save its checkpoint"),
        "{second}"
    );
}
