//! Logging hooks: a progress bar (`indicatif`) for terminals, plain lines otherwise, and the
//! end-of-run summary.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::data::Task;
use crate::train::{Callback, EpochLog, Monitor, RunInfo, Summary};

/// A regression metric in 4 decimals, or in 4 significant digits when that would show too
/// few (targets of a thousandth show their RMSE, not 0.0000); `train`'s lines and `eval` alike.
pub(crate) fn regression_number(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// One epoch as a line of text.
pub fn epoch_line(log: &EpochLog, last_epoch: usize, task: Task) -> String {
    let w = last_epoch.to_string().len();
    let mut s = format!(
        "epoch {:>w$}/{last_epoch}  loss {:.4}",
        log.epoch, log.train_loss
    );
    let fmt = |v: f64| match task {
        Task::Classification => format!("{:.2}%", 100.0 * v),
        Task::Regression => regression_number(v),
    };
    let name = match task {
        Task::Classification => "acc",
        Task::Regression => "rmse",
    };
    s.push_str(&format!("  {name} {}", fmt(log.train_metric)));
    if let (Some(l), Some(m)) = (log.val_loss, log.val_metric) {
        s.push_str(&format!("  val_loss {l:.4}  val_{name} {}", fmt(m)));
    }
    s.push_str(&format!("  lr {:.2e}  {:.2}s", log.lr, log.seconds));
    s
}

/// The summary as lines of text.
pub fn summary_text(s: &Summary) -> String {
    let (metric, fmt): (&str, fn(f64) -> String) = match s.task {
        Task::Classification => ("accuracy", |v| format!("{:.2}%", 100.0 * v)),
        Task::Regression => ("RMSE", regression_number),
    };
    let per_step = if s.steps_run > 0 {
        format!(" ({:.1} us per step)", s.seconds * 1e6 / s.steps_run as f64)
    } else {
        String::new()
    };
    let mut out = format!(
        "trained {} epoch{}, {} steps in {:.2} s{per_step}",
        s.epochs_run,
        if s.epochs_run == 1 { "" } else { "s" },
        s.steps_run,
        s.seconds
    );
    if s.stopped_early {
        out.push_str("; stopped early (no improvement)");
    }
    if let Some(last) = &s.last {
        let which = if last.val_metric.is_some() {
            "validation"
        } else {
            "training"
        };
        out.push_str(&format!(
            "\nfinal (epoch {}): {which} {metric} {}, {which} loss {:.4}",
            last.epoch,
            fmt(last.monitored()),
            last.val_loss.unwrap_or(last.train_loss)
        ));
        match s.best {
            Some((epoch, best)) if s.monitor == Monitor::Loss => {
                out.push_str(&format!("\nbest epoch {epoch}: {which} loss {best:.4}"));
            }
            Some((epoch, best)) => {
                out.push_str(&format!(
                    "\nbest epoch {epoch}: {which} {metric} {}",
                    fmt(best)
                ));
            }
            None => {}
        }
    }
    out
}

/// Plain log lines on stdout: one per epoch (every epoch up to 20, then about 20 in all, the
/// last always), and the summary.
#[derive(Debug, Default)]
pub struct PlainLog {
    last_epoch: usize,
    every: usize,
    task: Option<Task>,
    /// The last epoch whose line was printed.
    printed: usize,
}

impl PlainLog {
    fn print(&mut self, log: &EpochLog) {
        let line = epoch_line(
            log,
            self.last_epoch,
            self.task.unwrap_or(Task::Classification),
        );
        let _ = writeln!(std::io::stdout(), "{line}");
        self.printed = log.epoch;
    }
}

impl Callback for PlainLog {
    fn on_begin(&mut self, info: &RunInfo) {
        self.last_epoch = info.last_epoch;
        self.every = (info.last_epoch.saturating_sub(info.first_epoch) + 1)
            .div_ceil(20)
            .max(1);
        self.task = Some(info.task);
    }
    fn on_epoch(&mut self, log: &EpochLog) {
        if log.epoch.is_multiple_of(self.every) || log.epoch == self.last_epoch || log.epoch == 1 {
            self.print(log);
        }
    }
    fn on_end(&mut self, s: &Summary) {
        // The run's last epoch is shown, also when early stopping ended it between lines.
        let ran = s.epochs_run > 0;
        if let Some(last) = s.last.as_ref().filter(|l| ran && l.epoch != self.printed) {
            self.print(last);
        }
        let _ = writeln!(std::io::stdout(), "{}", summary_text(s));
    }
}

/// A progress bar over all steps of the run, with the running loss; epoch lines (as many as
/// [`PlainLog`] prints) appear above it.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    last_epoch: usize,
    every: usize,
    task: Task,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
            last_epoch: 0,
            every: 1,
            task: Task::Classification,
        }
    }
}

impl Callback for Progress {
    fn on_begin(&mut self, info: &RunInfo) {
        let epochs = (info.last_epoch + 1).saturating_sub(info.first_epoch) as u64;
        self.last_epoch = info.last_epoch;
        self.every = epochs.div_ceil(20).max(1) as usize;
        self.task = info.task;
        self.bar = ProgressBar::with_draw_target(
            Some(epochs * info.steps_per_epoch as u64),
            ProgressDrawTarget::stdout(),
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})",
        ) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }
    fn on_step(&mut self, epoch: usize, step: usize, running_loss: f64) {
        self.bar.inc(1);
        if step % 8 == 1 {
            self.bar
                .set_prefix(format!("epoch {epoch}/{}", self.last_epoch));
            self.bar.set_message(format!("loss {running_loss:.4}"));
        }
    }
    fn on_epoch(&mut self, log: &EpochLog) {
        self.bar
            .println(epoch_line(log, self.last_epoch, self.task));
    }
    fn on_end(&mut self, s: &Summary) {
        self.bar.finish_and_clear();
        let _ = writeln!(std::io::stdout(), "{}", summary_text(s));
    }
}
