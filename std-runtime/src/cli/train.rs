//! `mote train`: a fresh run or a resumed one.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use mote::{Backend, Rng};

use super::{
    backend_text, describe, load_for_model, out, parse_sizes, set_threads, split_of, LossArg,
    ModelArg, OptimizerArg, ScheduleArg, TaskArg, TrainArgs,
};
use crate::checkpoint::{self, Checkpoint};
use crate::data::{self, CsvOptions, Dataset, LabelChoice, Task};
use crate::data_parallel::Replicas;
use crate::model::{
    self, BackendKind, Model, ModelSpec, OptimizerConfig, RegressionLoss, WithBackend,
};
use crate::progress::{PlainLog, Progress};
use crate::rendezvous::Launch;
use crate::schedule::Schedule;
use crate::train::{self, Callback, DataSource, Learner, Prepared, TrainConfig, TrainState};
use crate::{plot, Error, Result};

/// The training job, run on whichever backend was asked for.
struct TrainJob {
    ck: Option<Checkpoint>,
    spec: ModelSpec,
    opt: OptimizerConfig,
    config: TrainConfig,
    state: TrainState,
    data: Prepared,
    save: Option<PathBuf>,
    save_best: Option<PathBuf>,
    plot: Option<PathBuf>,
    quiet: bool,
    /// A rank other than 0 of a multi-process run: prints nothing (rank 0 reports the run).
    silent: bool,
}

impl WithBackend for TrainJob {
    type Output = ();
    fn run<B: Backend<Elem = f32>>(self, backend: B) -> Result<()> {
        let model = self.model_on(backend)?;
        self.train(model)
    }
}

impl TrainJob {
    /// The model on `backend`: restored from the checkpoint, or new from the run's seed (the
    /// same parameters every time: what replicas rely on).
    fn model_on<B: Backend<Elem = f32>>(&self, backend: B) -> Result<Model<B>> {
        match &self.ck {
            Some(ck) => ck.restore(backend),
            None => Model::new(
                backend,
                self.spec.clone(),
                self.opt,
                &mut Rng::new(self.config.seed),
            ),
        }
    }

    /// Trains `replicas` data-parallel replicas, each over its own arena of `floats` with the
    /// multithreaded backend's kernels on one thread (the replicas are the threads).
    fn run_replicas(self, replicas: usize, floats: usize) -> Result<()> {
        let too_big = || {
            Error::invalid(format!(
                "{replicas} replicas need {:.1} GB of arenas, more than this machine can give",
                replicas as f64 * floats as f64 * 4e-9
            ))
            .with_hint("use fewer --replicas, smaller --hidden layers or a smaller --batch")
        };
        let mut arenas = model::host_arenas(floats, replicas, too_big)?;
        let models = arenas
            .iter_mut()
            .map(|mem| self.model_on(crate::parallel::Parallel::with_threads(mem, 1)))
            .collect::<Result<Vec<_>>>()?;
        let learner = Replicas::new(models)?;
        self.train(learner)
    }

    /// Trains one replica per GPU of `0..gpus`, each over an arena of `floats`, gradients
    /// summed by NCCL.
    #[cfg(feature = "cuda")]
    fn run_gpus(self, gpus: usize, floats: usize) -> Result<()> {
        use crate::data_parallel::NcclReduce;
        use mote_cuda::{Cuda, Nccl, Options};
        let cuda = |e: mote_cuda::CudaError| {
            Error::invalid(format!("--gpus {gpus}: {e}")).with_hint(
                "check the GPUs with nvidia-smi and that libnccl.so is on the loader path",
            )
        };
        let step_timeout = crate::rendezvous::step_timeout(|k| std::env::var(k).ok())?;
        let count = Cuda::available().map_err(cuda)?;
        if gpus > count {
            return Err(Error::invalid(format!(
                "--gpus {gpus}: this machine has {count} CUDA device{}",
                if count == 1 { "" } else { "s" }
            ))
            .with_hint("give --gpus at most the number of devices"));
        }
        let mut models = Vec::with_capacity(gpus);
        for device in 0..gpus {
            let backend = crate::model::cuda_backend(
                floats,
                Options {
                    device,
                    ..Options::default()
                },
            )
            .map_err(cuda)?;
            models.push(self.model_on(backend)?);
        }
        // Watches NCCL's set-up too, and outlives the learner: its drop (NCCL's teardown) is
        // watched as well. One GPU has no peer to wait for.
        let mut dog = step_timeout
            .filter(|_| gpus > 1)
            .map(|t| watchdog(format!("--gpus {gpus}"), t))
            .transpose()?;
        let nccl = {
            let backends: Vec<&Cuda> = models.iter().map(|m| m.tape.backend()).collect();
            Nccl::local(&backends).map_err(cuda)?
        };
        let learner = Replicas::with_reduce(models, NcclReduce::new(nccl))?;
        let peers = gpus > 1;
        self.train_watched(learner, dog.as_mut().map(|d| d as &mut dyn Callback), peers)
    }

    /// One rank of a multi-process run ([`crate::rendezvous`]): one replica on this host's
    /// GPU `local_rank`, NCCL across the processes; only rank 0 prints, saves and plots.
    #[cfg(feature = "cuda")]
    fn run_rank(mut self, launch: Launch, floats: usize) -> Result<()> {
        use crate::data_parallel::NcclReduce;
        use mote_cuda::{Nccl, Options};
        let cuda = |e: mote_cuda::CudaError| {
            Error::invalid(format!("rank {} of {}: {e}", launch.rank, launch.world)).with_hint(
                "check the GPUs with nvidia-smi and that libnccl.so is on the loader path",
            )
        };
        let backend = crate::model::cuda_backend(
            floats,
            Options {
                device: launch.local_rank,
                ..Options::default()
            },
        )
        .map_err(cuda)?;
        // How long a rank waits for the others at the rendezvous, and for a step.
        let timeout = crate::rendezvous::RENDEZVOUS_TIMEOUT;
        let step_timeout = crate::rendezvous::step_timeout(|k| std::env::var(k).ok())?;
        let id = crate::rendezvous::exchange(&launch, timeout, || Nccl::unique_id().map_err(cuda))?;
        // Rank 0's id file goes once every rank has joined, or when this rank fails first.
        let spent = crate::rendezvous::SpentFile::of(&launch);
        // Watches NCCL's set-up too (it waits for every rank with no limit), and outlives the
        // learner: its drop (NCCL's teardown) is watched as well.
        let what = format!("rank {} of {}", launch.rank, launch.world);
        let mut dog = step_timeout.map(|t| watchdog(what, t)).transpose()?;
        let nccl = Nccl::rank(&backend, launch.rank, launch.world, &id).map_err(cuda)?;
        // Every rank has joined: the id file is spent (a rerun on the same path must not
        // find it).
        drop(spent);
        let reduce = NcclReduce::new(nccl);
        // A rank on other data or another checkpoint would train another model (or run other
        // collectives and hang): every rank stops at once instead. Before the model is built,
        // so that what follows fails alike on every rank or on none.
        reduce.check_same_start(&launch, &self.start_items()?)?;
        let model = self.model_on(backend)?;
        if launch.rank != 0 {
            (self.save, self.save_best, self.plot) = (None, None, None);
            (self.quiet, self.silent) = (true, true);
        }
        let learner = Replicas::with_reduce(vec![model], reduce)?;
        let peers = launch.world > 1;
        self.train_watched(learner, dog.as_mut().map(|d| d as &mut dyn Callback), peers)
    }

    /// What every rank of a multi-process run must start from alike, as checksums (exact in
    /// an f64): the data, the model's and the run's settings, where the run stands, and the
    /// resumed checkpoint's weights (-1 for a new run).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn start_items(&self) -> Result<[(&'static str, f64); 5]> {
        let crc = |b: &[u8]| f64::from(mote::blob::crc32(b));
        let json = |e: serde_json::Error| Error::invalid(format!("internal: {e}"));
        let mut config = self.config.clone();
        // Where each host keeps the files may differ; their contents are the data's checksum.
        // (The data's checksum is an item of its own.)
        (config.source.data, config.source.idx_labels) = (String::new(), None);
        config.source.fingerprint = None;
        let weights = self.ck.as_ref().map_or(-1.0, |ck| {
            let bytes: Vec<u8> = ck
                .params
                .iter()
                .chain(&ck.opt_state)
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            crc(&bytes)
        });
        Ok([
            (
                "data",
                crc(self
                    .config
                    .source
                    .fingerprint
                    .as_deref()
                    .unwrap_or("")
                    .as_bytes()),
            ),
            (
                "model settings",
                crc(&serde_json::to_vec(&(&self.spec, &self.opt)).map_err(json)?),
            ),
            (
                "training settings",
                crc(&serde_json::to_vec(&config).map_err(json)?),
            ),
            (
                "place in the run (epoch, step, history)",
                crc(&serde_json::to_vec(&self.state).map_err(json)?),
            ),
            ("checkpoint weights", weights),
        ])
    }

    #[cfg(not(feature = "cuda"))]
    fn run_rank(self, _launch: Launch, _floats: usize) -> Result<()> {
        Err(
            Error::invalid("MOTE_WORLD_SIZE: this mote was built without the cuda feature")
                .with_hint("rebuild with default features: cargo build --release -p mote-runtime"),
        )
    }

    #[cfg(not(feature = "cuda"))]
    fn run_gpus(self, _gpus: usize, _floats: usize) -> Result<()> {
        Err(
            Error::invalid("--gpus: this mote was built without the cuda feature")
                .with_hint("rebuild with default features: cargo build --release -p mote-runtime"),
        )
    }

    fn train<L: Learner>(self, model: L) -> Result<()> {
        self.train_watched(model, None, false)
    }

    /// Trains, with `extra` called back beside the progress display (a rank's watchdog);
    /// `peers`: the learner runs NCCL collectives with other GPUs.
    fn train_watched<L: Learner>(
        mut self,
        mut model: L,
        extra: Option<&mut dyn Callback>,
        peers: bool,
    ) -> Result<()> {
        let (mut bar, mut plain) = (Progress::default(), PlainLog::default());
        struct Quiet;
        impl Callback for Quiet {
            fn on_end(&mut self, s: &train::Summary) {
                let _ = writeln!(std::io::stdout(), "{}", crate::progress::summary_text(s));
            }
        }
        struct Silent;
        impl Callback for Silent {}
        let (mut quiet, mut silent) = (Quiet, Silent);
        let hook: &mut dyn Callback = if self.silent {
            &mut silent
        } else if self.quiet {
            &mut quiet
        } else if std::io::stdout().is_terminal() {
            &mut bar
        } else {
            &mut plain
        };
        let mut hooks: Vec<&mut dyn Callback> = vec![hook];
        if let Some(e) = extra {
            hooks.push(&mut *e);
        }
        let saves = train::Saves {
            last: self.save.as_deref(),
            best: self.save_best.as_deref(),
        };
        // Epochs done before this run (a resumed one's): a best epoch among them was not
        // written by this run.
        let started = self.state.epoch;
        let fitted = train::fit_with(
            &mut model,
            &self.data,
            &self.config,
            &mut self.state,
            &mut hooks,
            saves,
        );
        if let Err(e) = fitted {
            if peers {
                // An NCCL learner with peers may hold GPU work that waits for a failed peer,
                // and dropping it would wait with it (forever without a watchdog,
                // `MOTE_TIMEOUT=off`): it is left to the process's end, which comes next,
                // with this error.
                std::mem::forget(model);
            }
            return Err(e);
        }
        if let Some(p) = &self.save {
            out(&format!("saved {}", p.display()))?;
        } else if !self.quiet && self.save_best.is_none() {
            out("not saved: add --save model.safetensors to keep the model")?;
        }
        if let Some(p) = &self.save_best {
            match self.state.best.map(|_| self.state.best_epoch) {
                Some(e) if e <= started => out(&format!(
                    "no epoch of this run beat the best so far (epoch {e}, before the resume): \
                     {} not written",
                    p.display()
                ))?,
                Some(e) => out(&format!(
                    "saved the best epoch's model (epoch {e}) to {}",
                    p.display()
                ))?,
                None => out(&format!(
                    "no epoch improved the monitored number: {} not written",
                    p.display()
                ))?,
            }
        }
        if let Some(p) = &self.plot {
            plot::save(p, &self.state.history, model.model().spec.task)?;
            out(&format!("curves written to {}", p.display()))?;
        }
        Ok(())
    }
}

/// The watchdog of an NCCL run (`what`: which rank or GPUs): when no training step finishes
/// within `timeout` (`MOTE_TIMEOUT`), it says so and aborts the process, which may be stuck
/// inside the GPU driver waiting for a rank that failed.
#[cfg(feature = "cuda")]
fn watchdog(what: String, timeout: std::time::Duration) -> Result<crate::rendezvous::Watchdog> {
    crate::rendezvous::Watchdog::new(timeout, move |waited| {
        eprintln!(
            "mote: {what}: no training step finished in {:.0} s (MOTE_TIMEOUT): a rank or GPU \
             has probably failed, and NCCL would wait for it forever; aborting",
            waited.as_secs_f64()
        );
        std::process::abort();
    })
}

/// `--class-weights`: `balanced` (rows / (classes x the class's rows) over the training split,
/// 0 for a class without any), or one weight per class.
fn class_weights(arg: &str, ds: &Dataset, train: &[usize]) -> Result<Vec<f32>> {
    let classes = ds.classes.len();
    if arg.trim() == "balanced" {
        let mut counts = vec![0usize; classes];
        for &y in train.iter().filter_map(|&r| ds.class_labels()?.get(r)) {
            if let Some(n) = counts.get_mut(y) {
                *n += 1;
            }
        }
        let rows = counts.iter().sum::<usize>() as f64;
        return Ok(counts
            .iter()
            .map(|&n| {
                if n == 0 {
                    0.0
                } else {
                    (rows / (classes as f64 * n as f64)) as f32
                }
            })
            .collect());
    }
    let weights = arg
        .split(',')
        .map(|w| {
            // -0 is 0.
            w.trim()
                .parse::<f32>()
                .ok()
                .map(|v| v + 0.0)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "--class-weights {arg}: '{w}' is not a weight (a finite number, 0 or \
                         more)"
                    ))
                    .with_hint("give --class-weights balanced, or one weight per class: W,W,...")
                })
        })
        .collect::<Result<Vec<f32>>>()?;
    if weights.len() != classes {
        return Err(Error::invalid(format!(
            "--class-weights {arg}: {} weights for {classes} classes ({})",
            weights.len(),
            ds.classes.join(", ")
        ))
        .with_hint("give one weight per class, in that order, or --class-weights balanced"));
    }
    if !weights.iter().any(|&w| w > 0.0) {
        return Err(Error::invalid(format!(
            "--class-weights {arg}: every weight is 0, so nothing would be learned"
        )));
    }
    Ok(weights)
}

fn reject_on_resume(a: &TrainArgs) -> Result<()> {
    let fixed = [
        ("--hidden", a.hidden.is_some()),
        ("--model", a.model.is_some()),
        ("--conv", a.conv.is_some()),
        ("--activation", a.activation.is_some()),
        ("--task", a.task.is_some()),
        ("--batch", a.batch.is_some()),
        ("--lr", a.lr.is_some()),
        ("--monitor", a.monitor.is_some()),
        ("--clip-grad-norm", a.clip_grad_norm.is_some()),
        ("--dropout", a.dropout.is_some()),
        ("--label-smoothing", a.label_smoothing.is_some()),
        ("--class-weights", a.class_weights.is_some()),
        ("--loss", a.loss.is_some()),
        ("--delta", a.delta.is_some()),
        ("--optimizer", a.optimizer.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--amsgrad", a.amsgrad),
        ("--alpha", a.alpha.is_some()),
        ("--centered", a.centered),
        ("--lr-decay", a.lr_decay.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--schedule", a.schedule.is_some()),
        ("--warmup", a.warmup.is_some()),
        ("--min-lr", a.min_lr.is_some()),
        ("--step-every", a.step_every.is_some()),
        ("--gamma", a.gamma.is_some()),
        ("--lr-patience", a.lr_patience.is_some()),
        ("--val", a.val.is_some()),
        ("--seed", a.seed.is_some()),
        ("--label", a.data.label.is_some()),
    ];
    if let Some((flag, _)) = fixed.iter().find(|f| f.1) {
        return Err(Error::invalid(format!(
            "{flag} cannot be given when resuming: the checkpoint fixes it (its value there is \
             kept)"
        ))
        .with_hint("drop the flag, or start a new run without --resume"));
    }
    Ok(())
}

/// The `MOTE_*` environment variables read as text (the launch's and the watchdog's).
const TEXT_VARS: [&str; 6] = [
    "MOTE_WORLD_SIZE",
    "MOTE_RANK",
    "MOTE_LOCAL_RANK",
    "MOTE_RENDEZVOUS",
    "MOTE_RUN_ID",
    "MOTE_TIMEOUT",
];

/// Refuses a `MOTE_*` variable read as text ([`TEXT_VARS`]) whose value is not UTF-8: read as
/// unset, it would silently change the run (`MOTE_WORLD_SIZE`: every rank training alone,
/// `MOTE_RUN_ID`: no run check, `MOTE_TIMEOUT`: the default). Paths (`MOTE_CUDA_CACHE`) may
/// be any bytes.
fn check_mote_vars() -> Result<()> {
    for name in TEXT_VARS {
        if let Some(v) = std::env::var_os(name).filter(|v| v.to_str().is_none()) {
            return Err(Error::invalid(format!(
                "{name}={}: the value is not UTF-8 text",
                v.to_string_lossy()
            ))
            .with_hint("set it to plain text, or unset it"));
        }
    }
    Ok(())
}

pub(crate) fn train_cmd(mut a: TrainArgs) -> Result<()> {
    let replicas = a.replicas.unwrap_or(1);
    check_mote_vars()?;
    let launch = Launch::from_vars(|k| std::env::var(k).ok())?;
    // Only rank 0 of a multi-process run prints, saves and plots: the other ranks neither
    // print the run's header nor check outputs they will not write (a --save folder may
    // exist on rank 0's host only).
    let rank0 = launch.as_ref().is_none_or(|l| l.rank == 0);
    a.quiet |= !rank0;
    a.silent = !rank0;
    if let Some(g) = a.gpus {
        if a.replicas.is_some() {
            return Err(
                Error::invalid("--gpus and --replicas do not go together").with_hint(
                    "--gpus N for GPUs (with --device cuda), --replicas N for CPU threads",
                ),
            );
        }
        if g == 0 {
            return Err(Error::invalid("--gpus 0: at least one GPU trains")
                .with_hint("give --gpus 1 or more, or drop --gpus to train on one GPU"));
        }
    }
    let kind = if replicas > 1 {
        replicas_backend(&a, replicas)?
    } else {
        super::backend_kind(a.device, a.backend, BackendKind::Parallel)?
    };
    if replicas == 0 {
        return Err(Error::invalid("--replicas 0: at least one replica trains")
            .with_hint("give --replicas 1 or more"));
    }
    if let Some(l) = &launch {
        if kind != BackendKind::Cuda {
            return Err(Error::invalid(format!(
                "MOTE_WORLD_SIZE={}: a multi-process run trains on GPUs, one per process",
                l.world
            ))
            .with_hint("add --device cuda, or unset MOTE_WORLD_SIZE for a single-process run"));
        }
        if a.gpus.is_some() {
            return Err(
                Error::invalid("--gpus with MOTE_WORLD_SIZE: one GPU per process")
                    .with_hint("drop --gpus; MOTE_LOCAL_RANK picks each process's GPU"),
            );
        }
    }
    if a.gpus.is_some() && kind != BackendKind::Cuda {
        return Err(Error::invalid("--gpus needs --device cuda")
            .with_hint("add --device cuda, or use --replicas N for CPU threads"));
    }
    // The replicas run on rayon's pool: --threads sizes it as for the parallel backend. Before
    // anything starts the pool (the backend's description counts its threads).
    set_threads(
        if replicas > 1 {
            BackendKind::Parallel
        } else {
            kind
        },
        a.threads,
    )?;
    let backend = if let Some(l) = &launch {
        format!(
            "cuda, rank {} of {} (GPU {} of this host; data parallel, NCCL all-reduce)",
            l.rank, l.world, l.local_rank
        )
    } else if let Some(g) = a.gpus {
        format!(
            "cuda x {g} GPU{} (data parallel, NCCL all-reduce)",
            if g == 1 { "" } else { "s" }
        )
    } else if replicas > 1 {
        format!(
            "{replicas} data-parallel replicas on threads (parallel kernels, 1 thread each; \
             gradients all-reduced)"
        )
    } else {
        backend_text(kind)
    };
    if a.epochs == Some(0) {
        return Err(
            Error::invalid("--epochs 0: nothing to train").with_hint("give --epochs 1 or more")
        );
    }
    model::check_device(kind)?;
    // Outputs are checked before training (a run must not fail at its end for want of a place
    // to write, nor overwrite its own data). On resume, the run's data is the checkpoint's
    // unless --data gives another (with its own labels file), as for eval and predict.
    if a.resume.is_some() {
        reject_on_resume(&a)?;
    }
    let resumed = a.resume.as_deref().map(checkpoint::load).transpose()?;
    let resumed_source = resumed.as_ref().map(|ck| super::source_for(ck, &a.data));
    let data = match &resumed_source {
        Some(s) => s.data.clone(),
        None => a.data.data.clone().unwrap_or_else(|| "digits".into()),
    };
    let labels = match &resumed_source {
        Some(s) => s.idx_labels.clone(),
        None => a.data.idx_labels.clone(),
    };
    let files = super::input_files(&data, labels.as_deref());
    let mut inputs: Vec<(&str, &std::path::Path)> =
        files.iter().map(|(w, p)| (*w, p.as_path())).collect();
    if rank0 {
        match (&a.save, &a.resume) {
            (Some(sv), _) => checkpoint::check_output("--save", sv, &inputs)?,
            // Saved back where it came from.
            (None, Some(r)) => checkpoint::check_output("--resume", r, &inputs)?,
            (None, None) => {}
        }
        inputs.extend(a.save.as_deref().map(|sv| ("--save", sv)));
        inputs.extend(a.resume.as_deref().map(|r| ("--resume", r)));
        if let Some(p) = &a.save_best {
            checkpoint::check_output("--save-best", p, &inputs)?;
            inputs.push(("--save-best", p));
        }
        if let Some(p) = &a.plot {
            checkpoint::check_output("--plot", p, &inputs)?;
            // The curves are SVG: a file named .png would not open as one.
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if ext.as_deref().is_some_and(|e| e != "svg") {
                return Err(Error::invalid(format!(
                    "--plot {}: the curves are written as SVG",
                    p.display()
                ))
                .with_hint("name the file .svg"));
            }
        }
    }
    let job = if let (Some(path), Some(ck)) = (&a.resume, resumed) {
        let mut config = ck.config.clone();
        let mut state = ck.state.clone();
        config.source = super::source_for(&ck, &a.data);
        config.epochs = match a.epochs {
            Some(n) => state.epoch.checked_add(n).ok_or_else(|| {
                Error::invalid(format!(
                    "--epochs {n}: with the {} epochs {} has trained, more than can be counted",
                    state.epoch,
                    path.display()
                ))
                .with_hint("give a smaller --epochs")
            })?,
            None if config.epochs > state.epoch && !state.stopped => config.epochs,
            None => {
                return Err(Error::invalid(format!(
                    "{} has already trained {} epochs",
                    path.display(),
                    state.epoch
                ))
                .with_hint("pass --epochs N to train N more"))
            }
        };
        if a.patience.is_some() {
            config.patience = a.patience;
        }
        // A run that early stopping ended starts its patience anew (the epochs waited go back
        // to 0) but keeps its best: a resumed run must beat the old best to count as improving
        // (and for --save-best to write). Keras's EarlyStopping differs on purpose here: a new
        // fit resets its best too. An interrupted run goes on as if never stopped.
        if state.stopped {
            state.wait = 0;
        }
        state.stopped = false;
        let ds = load_for_model(&ck.spec, &config.source, super::Targets::Model)
            .map_err(|e| super::recorded_data(e, a.data.data.is_some(), path, &config.source))?;
        let print = data::fingerprint(&ds);
        if config
            .source
            .fingerprint
            .as_ref()
            .is_some_and(|f| *f != print)
        {
            eprintln!(
                "warning: {} differs from the data this run started on; continuing on it",
                config.source.data
            );
        }
        config.source.fingerprint = Some(print);
        let (tr, va) = split_of(&ds, &config)?;
        let data = Prepared::new(&ds, &ck.spec, tr, va);
        if !a.quiet {
            out(&format!(
                "resuming {} at epoch {} of {}: {} on {}, backend {}",
                path.display(),
                state.epoch,
                config.epochs,
                describe(&ck.spec),
                config.source.data,
                backend
            ))?;
        }
        TrainJob {
            spec: ck.spec.clone(),
            opt: ck.opt,
            config,
            state,
            data,
            save: a.save.clone().or_else(|| a.resume.clone()),
            save_best: a.save_best.clone(),
            plot: a.plot.clone(),
            quiet: a.quiet,
            silent: false,
            ck: Some(ck),
        }
    } else {
        fresh_job(&a, &backend)?
    };
    let floats = model::arena_floats(&job.spec, &job.opt, job.config.batch)?;
    if let Some(l) = launch {
        job.run_rank(l, floats)
    } else if let Some(g) = a.gpus {
        job.run_gpus(g, floats)
    } else if replicas > 1 {
        job.run_replicas(replicas, floats)
    } else {
        model::run_on(kind, floats, job)
    }
}

/// The backend of `--replicas N` (N > 1): each replica runs the multithreaded backend's kernels
/// on one thread; GPUs and an explicit `--backend` are refused with what to do instead.
fn replicas_backend(a: &TrainArgs, replicas: usize) -> Result<BackendKind> {
    let kind = super::backend_kind(a.device, a.backend, BackendKind::Parallel)?;
    match kind {
        BackendKind::Parallel if a.backend.is_none() => Ok(kind),
        BackendKind::Cuda => Err(Error::invalid(format!(
            "--replicas {replicas} runs replicas on CPU threads, not on GPUs"
        ))
        .with_hint("drop --device cuda, or drop --replicas")),
        BackendKind::Parallel | BackendKind::Cpu => Err(Error::invalid(format!(
            "--replicas {replicas} picks its own backend: the parallel kernels, one thread \
             per replica"
        ))
        .with_hint("drop --backend, or drop --replicas")),
    }
}

fn fresh_job(a: &TrainArgs, backend: &str) -> Result<TrainJob> {
    let source = DataSource {
        data: a.data.data.clone().unwrap_or_else(|| "digits".into()),
        label: a.data.label.clone(),
        idx_labels: a.data.idx_labels.clone(),
        fingerprint: None,
    };
    let label = source
        .label
        .clone()
        .map_or(LabelChoice::Last, LabelChoice::Column);
    if source.data == "digits" && Path::new("digits").exists() && !a.quiet {
        eprintln!(
            "note: --data digits is the bundled data set; give ./digits for the file named \
             digits here"
        );
    }
    let table = data::load(
        &source.data,
        &CsvOptions {
            label,
            features: None,
        },
        a.data.idx_labels.as_deref().map(Path::new),
    )?;
    let task = match a.task {
        Some(TaskArg::Classification) => Some(Task::Classification),
        Some(TaskArg::Regression) => Some(Task::Regression),
        _ => None,
    };
    let ds = Dataset::from_table(&table, task, None)?;
    if ds.task == Task::Classification && source.data != "digits" {
        let numbers: Option<Vec<f64>> = ds.classes.iter().map(|c| c.parse().ok()).collect();
        let classes = ds.classes.len();
        // Class numbers as usual are 0..k or 1..=k; other whole numbers may be quantities.
        let ids = numbers.as_ref().is_some_and(|v| {
            let from = v.first().copied().unwrap_or(0.0);
            (from == 0.0 || from == 1.0) && v.iter().enumerate().all(|(i, &x)| x == from + i as f64)
        });
        if task.is_none() && numbers.is_some() && !ids {
            // Whole numbers read as classes: say so, since a count or a price may be meant.
            if !a.quiet {
                eprintln!(
                    "note: the labels are {classes} distinct whole numbers, read as classes; \
                     give --task regression if they are quantities"
                );
            }
        } else if classes * 2 > ds.rows && !a.silent {
            // Text labels cannot be a quantity: names or IDs, most likely.
            let what = if numbers.is_some() {
                "is the label column a quantity? then --task regression"
            } else {
                "is the label column a name or an ID? then choose another with --label"
            };
            eprintln!(
                "warning: {classes} classes for {} rows: most classes have one example ({what})",
                ds.rows
            );
        }
    }
    let source = DataSource {
        fingerprint: Some(data::fingerprint(&ds)),
        ..source
    };
    // A CNN's blocks do the feature work: its default is a linear layer after them.
    let cnn = a.model == Some(ModelArg::Cnn);
    let hidden = parse_sizes(
        "--hidden",
        a.hidden
            .as_deref()
            .unwrap_or(if cnn { "none" } else { "32" }),
    )?;
    let kind = a.schedule.unwrap_or(ScheduleArg::Constant);
    use ScheduleArg::{Cosine, Plateau, Step};
    let options: [(&str, bool, &[ScheduleArg], &str); 5] = [
        ("--step-every", a.step_every.is_some(), &[Step], "step"),
        (
            "--gamma",
            a.gamma.is_some(),
            &[Step, Plateau],
            "step or plateau",
        ),
        ("--warmup", a.warmup.is_some(), &[Cosine], "cosine"),
        (
            "--min-lr",
            a.min_lr.is_some(),
            &[Cosine, Plateau],
            "cosine or plateau",
        ),
        (
            "--lr-patience",
            a.lr_patience.is_some(),
            &[Plateau],
            "plateau",
        ),
    ];
    if let Some((flag, _, _, name)) = options.iter().find(|o| o.1 && !o.2.contains(&kind)) {
        let first = name.split(' ').next().unwrap_or(name);
        return Err(
            Error::invalid(format!("{flag} applies to --schedule {name} only"))
                .with_hint(format!("add --schedule {first}, or drop {flag}")),
        );
    }
    let schedule = match kind {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Step => Schedule::Step {
            every: a.step_every.unwrap_or(10),
            gamma: a.gamma.unwrap_or(0.5),
        },
        ScheduleArg::Cosine => Schedule::Cosine {
            warmup: a.warmup.unwrap_or(0),
            min_lr: a.min_lr.unwrap_or(0.0),
        },
        ScheduleArg::Plateau => Schedule::Plateau {
            factor: a.gamma.unwrap_or(0.1),
            patience: a.lr_patience.unwrap_or(10),
            min_lr: a.min_lr.unwrap_or(0.0),
        },
    };
    let config = TrainConfig {
        epochs: a.epochs.unwrap_or(50),
        batch: a.batch.unwrap_or(32),
        seed: a.seed.unwrap_or(42),
        val_fraction: a.val.unwrap_or(0.2),
        schedule,
        patience: a.patience,
        monitor: a.monitor.unwrap_or_default(),
        min_delta: 0.0,
        clip_grad_norm: a.clip_grad_norm,
        label_smoothing: a.label_smoothing.unwrap_or(0.0),
        source,
    };
    config.check_run()?;
    let (tr, va) = split_of(&ds, &config)?;
    // The split is stratified: each class's share is rounded on its own, so classes of a few
    // rows can hold out none, or more than asked.
    let asked = config.val_fraction;
    let got = va.len() as f64 / ds.rows.max(1) as f64;
    let classes = ds.task == Task::Classification;
    if asked > 0.0 && va.is_empty() && !a.silent {
        eprintln!(
            "warning: no validation rows: --val {asked} of {} rounds to none{}; the validation \
             numbers are left out",
            if classes { "each class" } else { "the rows" },
            if classes {
                " (the split is stratified, and the classes are small)"
            } else {
                ""
            }
        );
    } else if asked > 0.0 && ds.rows >= 20 && (got - asked).abs() > 0.25 * asked && !a.silent {
        eprintln!(
            "note: {} of {} rows held out ({:.0}%, not --val's {:.0}%): {}",
            va.len(),
            ds.rows,
            100.0 * got,
            100.0 * asked,
            if classes {
                "the split is stratified, rounding each class's share"
            } else {
                "the held-out count is rounded"
            }
        );
    }
    let spec = match a.model.unwrap_or(ModelArg::Mlp) {
        ModelArg::Mlp => {
            if a.conv.is_some() {
                return Err(Error::invalid("--conv needs --model cnn")
                    .with_hint("add --model cnn, or drop --conv"));
            }
            ModelSpec::for_dataset(&ds, &hidden, &tr)?
        }
        ModelArg::Cnn => {
            let given = a.conv.as_deref().unwrap_or("16,32");
            let conv = parse_sizes("--conv", given)?;
            if conv.is_empty() {
                return Err(Error::invalid(format!(
                    "--conv {given}: a CNN needs at least one block"
                ))
                .with_hint("give channels such as --conv 16,32"));
            }
            ModelSpec::cnn_for_dataset(&ds, &conv, &hidden, &tr)?
        }
    };
    if a.activation.is_some() && spec.conv.is_empty() && spec.sizes.len() == 2 {
        return Err(Error::invalid(
            "--activation with --hidden none: a linear model has no layer an activation would \
             follow",
        )
        .with_hint("give hidden layers (such as --hidden 32), or drop --activation"));
    }
    if a.label_smoothing.is_some_and(|s| s != 0.0) && spec.task == Task::Regression {
        return Err(Error::invalid(
            "--label-smoothing with a regression task: it smooths a classifier's class labels",
        )
        .with_hint("drop --label-smoothing, or train a classifier (--task classification)"));
    }
    let class_weights = match a.class_weights.as_deref() {
        None => Vec::new(),
        Some(_) if spec.task != Task::Classification => {
            return Err(Error::invalid(
                "--class-weights with a regression task: it weighs a classifier's classes",
            )
            .with_hint("drop --class-weights, or train a classifier (--task classification)"));
        }
        Some(w) => class_weights(w, &ds, &tr)?,
    };
    if (a.loss.is_some() || a.delta.is_some()) && spec.task == Task::Classification {
        let flag = if a.loss.is_some() {
            "--loss"
        } else {
            "--delta"
        };
        return Err(Error::invalid(format!(
            "{flag} with a classification task: classifiers train with the cross-entropy"
        ))
        .with_hint(format!(
            "drop {flag}, or train a regression (--task regression)"
        )));
    }
    // -0 is 0 (smooth L1's L1 case), and reads so in the header.
    let delta = a.delta.unwrap_or(1.0) + 0.0;
    let loss = match a.loss.unwrap_or(LossArg::Mse) {
        LossArg::Mse => RegressionLoss::Mse,
        LossArg::L1 => RegressionLoss::L1,
        LossArg::Huber => RegressionLoss::Huber { delta },
        LossArg::SmoothL1 => RegressionLoss::SmoothL1 { beta: delta },
    };
    if a.delta.is_some() && !matches!(a.loss, Some(LossArg::Huber | LossArg::SmoothL1)) {
        return Err(
            Error::invalid("--delta applies to --loss huber and --loss smooth_l1")
                .with_hint("add --loss huber (or smooth_l1), or drop --delta"),
        );
    }
    loss.check()?;
    let dropout = a.dropout.unwrap_or(0.0) + 0.0;
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::invalid(format!(
            "--dropout {dropout}: needs a probability in [0, 1)"
        ))
        .with_hint("0.1 to 0.5 is usual; 0 turns dropout off"));
    }
    if dropout > 0.0 && spec.dropout_sites() == 0 {
        return Err(Error::invalid(
            "--dropout with --hidden none: dropout acts on hidden layers' outputs, and a linear \
             model has none",
        )
        .with_hint("give hidden layers (such as --hidden 32), or drop --dropout"));
    }
    let spec = ModelSpec {
        activation: a.activation.unwrap_or_default(),
        loss,
        class_weights,
        dropout,
        ..spec
    };
    spec.check()?;
    let opt_kind = a.optimizer.unwrap_or(OptimizerArg::Adam);
    let opt = match opt_kind {
        OptimizerArg::Adam => OptimizerConfig::Adam {
            lr: a.lr.unwrap_or(1e-3),
            weight_decay: a.weight_decay.unwrap_or(0.0),
            amsgrad: a.amsgrad,
        },
        OptimizerArg::Adamw => OptimizerConfig::Adamw {
            lr: a.lr.unwrap_or(1e-3),
            weight_decay: a.weight_decay.unwrap_or(0.01),
            amsgrad: a.amsgrad,
        },
        OptimizerArg::Sgd => OptimizerConfig::Sgd {
            lr: a.lr.unwrap_or(0.01),
            momentum: a.momentum.unwrap_or(0.9),
            weight_decay: a.weight_decay.unwrap_or(0.0),
        },
        OptimizerArg::Rmsprop => OptimizerConfig::Rmsprop {
            lr: a.lr.unwrap_or(0.01),
            alpha: a.alpha.unwrap_or(0.99),
            momentum: a.momentum.unwrap_or(0.0),
            weight_decay: a.weight_decay.unwrap_or(0.0),
            centered: a.centered,
        },
        OptimizerArg::Adagrad => OptimizerConfig::Adagrad {
            lr: a.lr.unwrap_or(0.01),
            lr_decay: a.lr_decay.unwrap_or(0.0),
            weight_decay: a.weight_decay.unwrap_or(0.0),
        },
    };
    // Each optimizer's own settings, refused with the others.
    let own = [
        (
            "--momentum",
            a.momentum.is_some(),
            &[OptimizerArg::Sgd, OptimizerArg::Rmsprop][..],
            "sgd or rmsprop",
        ),
        (
            "--amsgrad",
            a.amsgrad,
            &[OptimizerArg::Adam, OptimizerArg::Adamw],
            "adam or adamw",
        ),
        (
            "--alpha",
            a.alpha.is_some(),
            &[OptimizerArg::Rmsprop],
            "rmsprop",
        ),
        (
            "--centered",
            a.centered,
            &[OptimizerArg::Rmsprop],
            "rmsprop",
        ),
        (
            "--lr-decay",
            a.lr_decay.is_some(),
            &[OptimizerArg::Adagrad],
            "adagrad",
        ),
    ];
    for (flag, given, kinds, names) in own {
        if given && !kinds.contains(&opt_kind) {
            return Err(Error::invalid(format!(
                "{flag} applies to --optimizer {names}, not {}",
                opt.name()
            ))
            .with_hint(format!("drop {flag}, or choose --optimizer {names}")));
        }
    }
    if let Some(v) = a.alpha.filter(|v| !(0.0..=1.0).contains(v)) {
        return Err(Error::invalid(format!(
            "--alpha {v}: needs a decay in [0, 1] (0.99 is usual)"
        )));
    }
    // Named here, by option (the optimizers' own checks name no option).
    let settings = [
        (
            "--lr",
            a.lr,
            "a finite rate above 0, such as --lr 0.001",
            false,
        ),
        (
            "--weight-decay",
            a.weight_decay,
            "a finite decay, 0 or more",
            true,
        ),
        (
            "--momentum",
            a.momentum,
            "a finite momentum, 0 or more (0.9 is usual)",
            true,
        ),
        (
            "--lr-decay",
            a.lr_decay,
            "a finite decay of the rate, 0 or more",
            true,
        ),
    ];
    for (flag, v, what, zero) in settings {
        if let Some(v) = v.filter(|&v| !(v.is_finite() && (v > 0.0 || (zero && v == 0.0)))) {
            return Err(Error::invalid(format!("{flag} {v}: needs {what}")));
        }
    }
    let data = Prepared::new(&ds, &spec, tr, va);
    if !a.quiet {
        out(&format!(
            "training {} on {} ({} training rows, {} validation); {} lr {}, batch {}, {} \
             epoch{}, {} schedule{}{}; backend {}",
            describe(&spec),
            config.source.data,
            data.train.len(),
            data.val.len(),
            opt.name(),
            opt.lr(),
            config.batch,
            config.epochs,
            if config.epochs == 1 { "" } else { "s" },
            config.schedule.describe(),
            config
                .clip_grad_norm
                .map_or(String::new(), |c| format!(", gradient norm clipped to {c}")),
            if config.label_smoothing == 0.0 {
                String::new()
            } else {
                format!(", label smoothing {}", config.label_smoothing)
            },
            backend
        ))?;
    }
    Ok(TrainJob {
        ck: None,
        state: TrainState::new(config.seed),
        spec,
        opt,
        config,
        data,
        save: a.save.clone(),
        save_best: a.save_best.clone(),
        plot: a.plot.clone(),
        quiet: a.quiet,
        silent: false,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    /// A new job from `mote train` arguments (quiet), and its start items' values.
    fn items(args: &[&str]) -> Vec<f64> {
        let cli = Cli::try_parse_from([&["mote", "train", "-q"][..], args].concat()).unwrap();
        let Command::Train(a) = cli.command else {
            unreachable!()
        };
        let job = super::fresh_job(&a, "cpu").unwrap();
        job.start_items().unwrap().iter().map(|&(_, v)| v).collect()
    }

    /// What ranks may legitimately differ in (where each host keeps the data, where rank 0
    /// saves, output flags) leaves the items alike; data, settings or the seed do not.
    #[test]
    fn start_items_tell_what_must_be_alike() {
        let dir = std::env::temp_dir().join(format!("mote-start-items-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let mut csv = String::from("x,y\n");
        for i in 0..40 {
            csv += &format!("{},{}\n", i % 5, i % 2);
        }
        let (a, b) = (dir.join("a/d.csv"), dir.join("b/d.csv"));
        std::fs::write(&a, &csv).unwrap();
        std::fs::write(&b, &csv).unwrap();
        let (a, b) = (a.display().to_string(), b.display().to_string());
        let base = items(&["--data", &a, "--epochs", "3"]);
        assert_eq!(base.len(), 5);
        assert_eq!(base[4], -1.0, "a new run has no checkpoint weights");
        let same = items(&[
            "--data", &b, "--epochs", "3", "--save", "x.st", "--plot", "p.svg",
        ]);
        assert_eq!(base, same);
        // Another file's contents: only the data item differs.
        std::fs::write(&b, csv.replace("4,0", "4,1")).unwrap();
        let other = items(&["--data", &b, "--epochs", "3"]);
        let differ: Vec<usize> = (0..5).filter(|&i| other[i] != base[i]).collect();
        assert_eq!(differ, [0], "{base:?} {other:?}");
        for flags in [&["--epochs", "4"][..], &["--epochs", "3", "--seed", "9"]] {
            let changed = items(&[&["--data", &a][..], flags].concat());
            assert_ne!(changed[2], base[2], "{flags:?}: training settings");
        }
        let model = items(&["--data", &a, "--epochs", "3", "--hidden", "8"]);
        assert_ne!(model[1], base[1], "model settings");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
