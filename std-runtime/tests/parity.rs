//! Where the trainer follows PyTorch's conventions: the learning-rate schedules are positioned by
//! epochs (a resumed run on data with another number of steps per epoch goes on from the
//! epoch it stopped at, as a `StepLR` stepped once an epoch does), a cosine warm-up must end
//! before the run does, and the validation loss is the uncapped cross-entropy.

use std::path::PathBuf;
use std::process::Command;

use mote::{Cpu, Rng};
use mote_runtime::checkpoint;
use mote_runtime::data::{self, CsvOptions, Dataset, Targets};
use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig, StepStats};
use mote_runtime::schedule::Schedule;
use mote_runtime::train::{self, Learner, Prepared, TrainConfig, TrainState};

const BASE: f64 = 1e-3;
const ADAM: OptimizerConfig = OptimizerConfig::Adam {
    lr: BASE,
    weight_decay: 0.0,
    amsgrad: false,
};

/// The digits' dataset and its stratified split (seed 42, 20% held out).
fn digits() -> (Dataset, Vec<usize>, Vec<usize>) {
    let t = data::digits(&CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&t, None, None).unwrap();
    let Targets::Classes(y) = &ds.targets else {
        panic!("digits are classes")
    };
    let (tr, va) = data::split(ds.rows, 0.2, 42, Some(y)).unwrap();
    (ds, tr, va)
}

/// A learner that records the rate of every step it takes; with `fail_after`, its steps fail
/// once it has taken that many (a run that stops part way).
struct Rates<L> {
    inner: L,
    lr: f64,
    lrs: Vec<f64>,
    fail_after: Option<usize>,
}

impl<L> Rates<L> {
    fn new(inner: L) -> Rates<L> {
        Rates {
            inner,
            lr: f64::NAN,
            lrs: Vec::new(),
            fail_after: None,
        }
    }
}

impl<L: Learner> Learner for Rates<L> {
    type Backend = L::Backend;
    fn model(&self) -> &Model<L::Backend> {
        self.inner.model()
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
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
        if self.fail_after.is_some_and(|n| self.lrs.len() >= n) {
            return Err(mote_runtime::Error::invalid("stopped here"));
        }
        let stats = self.inner.train_step(x, rows, y_class, y_value)?;
        self.lrs.push(self.lr);
        Ok(stats)
    }
    fn outputs(&mut self, x: &[f32], rows: usize) -> mote_runtime::Result<Vec<f32>> {
        self.inner.outputs(x, rows)
    }
}

/// Trains `epochs` epochs on the training rows `first` (of the digits' split), then resumes to
/// `epochs + more` on the training rows `then`; returns the rates of every step of each part
/// and the steps per epoch of each.
fn resumed_rates(
    schedule: Schedule,
    epochs: usize,
    more: usize,
    first: usize,
    then: usize,
) -> ((Vec<f64>, usize), (Vec<f64>, usize)) {
    let (ds, tr, va) = digits();
    let spec = ModelSpec::for_dataset(&ds, &[16], &tr).unwrap();
    let mut config = TrainConfig::new("digits");
    (config.epochs, config.schedule) = (epochs, schedule);
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(1)).unwrap();
    let mut learner = Rates::new(model);
    let mut state = TrainState::new(1);
    let a = Prepared::new(&ds, &spec, tr[..first].to_vec(), va.clone());
    train::fit(&mut learner, &a, &config, &mut state, &mut [], None).unwrap();
    let before = std::mem::take(&mut learner.lrs);
    // The resumed run: more epochs, on other data (as `mote train --resume --data`).
    config.epochs = epochs + more;
    let b = Prepared::new(&ds, &spec, tr[..then].to_vec(), va);
    train::fit(&mut learner, &b, &config, &mut state, &mut [], None).unwrap();
    assert_eq!(state.epoch, epochs + more);
    let spe = |rows: usize| rows.div_ceil(config.batch);
    ((before, spe(first)), (learner.lrs, spe(then)))
}

/// A step schedule resumed on data with fewer, or more, steps per epoch: every step of the
/// resumed epoch takes that epoch's rate (counting the old run's steps in the new data's
/// epochs would put the fewer-steps run 9 epochs on, and the more-steps one back in epoch 1).
#[test]
fn the_step_schedule_resumes_at_the_epoch_on_other_data() {
    let step = Schedule::Step {
        every: 1,
        gamma: 0.5,
    };
    // 1438 training rows: 45 steps of 32; 300 rows: 10 steps.
    for (first, then) in [(1438, 300), (300, 1438)] {
        let ((before, spe0), (after, spe1)) = resumed_rates(step, 2, 1, first, then);
        assert_eq!(before.len(), 2 * spe0);
        assert!(before[..spe0].iter().all(|&r| r == BASE), "{before:?}");
        assert!(
            before[spe0..].iter().all(|&r| r == BASE * 0.5),
            "{before:?}"
        );
        // Epoch 3 (two cuts), from its first step to its last.
        assert_eq!(after, vec![BASE * 0.25; spe1], "{first} then {then} rows");
    }
}

/// The cosine schedule resumed on other data goes on from the epoch boundary: the first
/// resumed step's rate is the curve's at the start of that epoch.
#[test]
fn the_cosine_schedule_resumes_at_the_epoch_boundary_on_other_data() {
    let cosine = Schedule::Cosine {
        warmup: 1,
        min_lr: 0.0,
    };
    let ((before, spe0), (after, spe1)) = resumed_rates(cosine, 2, 2, 1438, 300);
    assert_eq!((before.len(), after.len()), (2 * spe0, 2 * spe1));
    // The warm-up's first step is base / its steps; its last the base rate.
    assert_eq!(before[0], BASE / spe0 as f64);
    assert!((before[spe0 - 1] - BASE).abs() < 1e-18);
    // Epoch 3 of 4 starts a third of the way down the cosine (after 1 epoch of warm-up):
    // base x (1 + cos(pi / 3)) / 2.
    let want = BASE * 0.5 * (1.0 + (std::f64::consts::PI / 3.0).cos());
    assert!((after[0] - want).abs() < 1e-15, "{} vs {want}", after[0]);
    assert!(after.windows(2).all(|w| w[1] < w[0]), "{after:?}");
}

/// On unchanged data the rates of a run that stopped and went on are the unbroken run's, bit
/// for bit (the place in epochs is the global step count there). The run here stops part way
/// through epoch 3 (`fit` fails there, having taken 3 of its steps) and goes on from the same
/// state, which repeats epoch 3 from its start: with its rates from the start too, although
/// the global step count is 3 steps on.
#[test]
fn on_the_same_data_the_rates_go_on_as_unbroken() {
    let (ds, tr, va) = digits();
    let spec = ModelSpec::for_dataset(&ds, &[16], &tr).unwrap();
    let data = Prepared::new(&ds, &spec, tr[..300].to_vec(), va);
    let spe = 10;
    for schedule in [
        Schedule::Cosine {
            warmup: 1,
            min_lr: 1e-5,
        },
        Schedule::Step {
            every: 1,
            gamma: 0.5,
        },
    ] {
        let mut config = TrainConfig::new("digits");
        (config.epochs, config.schedule) = (4, schedule);
        let run = |fail_after: Option<usize>| {
            let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
            let model = Model::new(Cpu::new(&mut mem), spec.clone(), ADAM, &mut Rng::new(1));
            let mut learner = Rates::new(model.unwrap());
            learner.fail_after = fail_after;
            let mut state = TrainState::new(1);
            let first = train::fit(&mut learner, &data, &config, &mut state, &mut [], None);
            if fail_after.is_some() {
                assert!(first.unwrap_err().to_string().contains("epoch 3, step 4"));
                assert_eq!((state.epoch, state.step), (2, 2 * spe as u64 + 3));
                learner.fail_after = None;
                train::fit(&mut learner, &data, &config, &mut state, &mut [], None).unwrap();
            }
            assert_eq!(state.epoch, 4);
            learner.lrs
        };
        let unbroken = run(None);
        let broken = run(Some(2 * spe + 3));
        assert_eq!(unbroken.len(), 4 * spe);
        assert_eq!(broken.len(), 4 * spe + 3);
        let bits = |v: &[f64]| v.iter().map(|r| r.to_bits()).collect::<Vec<_>>();
        // Epochs 1 and 2, the 3 steps of the stopped epoch 3 (its first 3), then epochs 3
        // and 4 again from their start.
        assert_eq!(bits(&broken[..2 * spe + 3]), bits(&unbroken[..2 * spe + 3]));
        assert_eq!(bits(&broken[2 * spe + 3..]), bits(&unbroken[2 * spe..]));
    }
}

/// A warm-up as long as the run, or longer, never lets the rate decay: `fit` refuses it, and
/// so does `mote train`; a checkpoint holding such settings still loads (to evaluate it), and
/// resumes once given more epochs.
#[test]
fn a_warm_up_must_end_before_the_run() {
    let (ds, tr, va) = digits();
    let spec = ModelSpec::for_dataset(&ds, &[8], &tr).unwrap();
    let data = Prepared::new(&ds, &spec, tr[..64].to_vec(), va);
    let mut config = TrainConfig::new("digits");
    config.schedule = Schedule::Cosine {
        warmup: 3,
        min_lr: 0.0,
    };
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(1)).unwrap();
    for epochs in [2, 3] {
        config.epochs = epochs;
        assert!(config.check().is_ok());
        let mut state = TrainState::new(1);
        let e = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!("--warmup 3 with {epochs} epochs in all")),
            "{text}"
        );
        assert_eq!((state.epoch, state.step), (0, 0), "nothing was trained");
    }
    // Written by a build that allowed it: it loads, and resumes with more epochs.
    let dir = std::env::temp_dir().join(format!("mote-parity-warmup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    config.epochs = 3;
    checkpoint::save(&path, &model, &config, &TrainState::new(1)).unwrap();
    let ck = checkpoint::load(&path).unwrap();
    assert_eq!(ck.config.epochs, 3);
    let mut more = ck.config.clone();
    more.epochs = 4;
    let mut state = ck.state.clone();
    train::fit(&mut model, &data, &more, &mut state, &mut [], None).unwrap();
    assert_eq!(state.epoch, 4);
    let _ = std::fs::remove_dir_all(&dir);

    // The command line says so before any work.
    let bin: PathBuf = env!("CARGO_BIN_EXE_mote").into();
    let o = Command::new(&bin)
        .args([
            "train",
            "-q",
            "--schedule",
            "cosine",
            "--warmup",
            "5",
            "--epochs",
            "5",
        ])
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{se}");
    assert!(se.contains("--warmup 5 with 5 epochs in all"), "{se}");
    assert!(
        se.contains("give --warmup below 5, or more --epochs"),
        "{se}"
    );
    assert!(!se.contains("panicked"), "{se}");
}

/// The validation loss `fit` reports is each validation row's `logsumexp(z) - z_y`, in f64,
/// averaged (PyTorch's `cross_entropy` on the logits, without f32's cap near 69).
#[test]
fn the_validation_loss_is_the_log_softmax_cross_entropy() {
    let (ds, tr, va) = digits();
    let spec = ModelSpec::for_dataset(&ds, &[16], &tr).unwrap();
    let data = Prepared::new(&ds, &spec, tr, va.clone());
    let mut config = TrainConfig::new("digits");
    config.epochs = 2;
    let mut mem = vec![0f32; arena_floats(&spec, &ADAM, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, ADAM, &mut Rng::new(3)).unwrap();
    let mut state = TrainState::new(3);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let mut x = Vec::new();
    for &r in &va {
        x.extend_from_slice(&data.x[r * data.cols..(r + 1) * data.cols]);
    }
    let out = model.outputs(&x, va.len()).unwrap();
    let mut want = 0f64;
    for (row, &r) in out.chunks(10).zip(&va) {
        let z: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        want += lse - z[data.y_class[r]];
    }
    want /= va.len() as f64;
    let got = s.last.unwrap().val_loss.unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}
