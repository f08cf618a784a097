//! A team of worker threads that spin between jobs, for [`super::Parallel`]'s kernels.
//!
//! A training step of a mid-sized model is a chain of operations of tens to hundreds of
//! microseconds each. Handing one to a pool whose threads went to sleep costs 30-100 us on the
//! virtual machines measured (the sleeping vCPU must be woken: `examples/bench_join.rs`), about
//! what splitting it saves, so such steps ran on one core. OpenMP runtimes, which PyTorch's CPU
//! kernels use, solve this by letting idle workers spin for a while before they sleep; this team
//! does the same: after each job its workers poll for the next one for [`SPIN`], then sleep
//! until woken. Measured on the 2-core development machine, a 128 x 256 x 784 product (W-mnist's
//! largest) split in two over the team takes 187 us against 352 us on one thread and 263 us
//! with one half handed to rayon's pool (`examples/bench_team.rs`).
//!
//! One caller at a time owns the team; a job started while another runs (another thread's, or a
//! task's own nested job) runs serially on its caller, so nothing waits on a busy team. So does
//! a job started on one of rayon's threads, where data-parallel replicas run: they already
//! occupy the cores. The
//! caller runs tasks too and claims them one at a time with the workers, so a worker that is
//! slow to wake leaves its share to the others instead of delaying the job. A task that panics
//! is caught; the job's other tasks still run, and the caller panics with the first payload
//! once every task is done (no task outlives the borrow it was given).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before it sleeps. Long enough to stay awake
/// between the operations of a training step and between steps; short enough that a process
/// that stops computing frees its cores at once (OpenMP's default is 200 ms).
pub const SPIN: Duration = Duration::from_millis(2);

/// A task function with its lifetime erased: only [`Job::work`] calls it, for a claimed task,
/// while the caller that owns the function waits for that task to finish.
type Task = *const (dyn Fn(usize) + Sync + 'static);

struct Job {
    task: Task,
    tasks: usize,
    /// The next task to claim.
    next: AtomicUsize,
    /// Tasks not yet finished (claimed or not).
    left: AtomicUsize,
    /// The first panic of a task.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: the task function is `Sync` (callable from any thread) and is only called while its
// owner keeps it alive (see `Task`); the counters and the panic slot are thread-safe.
unsafe impl Send for Job {}
// SAFETY: as for `Send`.
unsafe impl Sync for Job {}

/// Marks a claimed task finished when dropped, so that even an unwinding thread counts it.
struct Finish<'a>(&'a AtomicUsize);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        // Release: the task's writes happen before the caller's return.
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Keeps the first panic payload; a later one is leaked rather than dropped (its drop could
/// panic in turn).
fn keep_first(slot: &mut Option<Box<dyn Any + Send>>, p: Box<dyn Any + Send>) {
    if slot.is_none() {
        *slot = Some(p);
    } else {
        std::mem::forget(p);
    }
}

impl Job {
    /// Claims and runs tasks until none is left to claim.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            let _finish = Finish(&self.left);
            // SAFETY: task `i` is claimed and not finished (`_finish` marks it after the call,
            // unwinding or not), so the caller in `run` is still waiting for `left` to reach
            // zero and the function it borrowed is alive.
            let f = unsafe { &*self.task };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                keep_first(&mut lock(&self.panic), p);
            }
        }
    }
}

/// The team's current job, owned by the caller of [`run`]. When dropped, it runs the job's
/// tasks that are still unclaimed, waits for every task to finish and frees the team, so that
/// `run` cannot leave (return or unwind) while a worker may still call the function it
/// borrowed.
struct AwaitTasks<'a> {
    team: &'a Team,
    job: &'a Job,
}

impl Drop for AwaitTasks<'_> {
    fn drop(&mut self) {
        self.job.work();
        let mut polls = 0u32;
        while self.job.left.load(Ordering::Acquire) != 0 {
            // A worker holding a task was descheduled: let it run.
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        lock(&self.team.job).take();
        self.team.busy.store(false, Ordering::Release);
    }
}

/// Runs every task on the calling thread, with [`run`]'s behaviour on panics.
fn serial(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let mut first = None;
    for i in 0..tasks {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            keep_first(&mut first, p);
        }
    }
    if let Some(p) = first {
        resume_unwind(p);
    }
}

struct Team {
    /// Bumped for every job; workers poll it.
    epoch: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    /// Whether a caller owns the team.
    busy: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// The mutex's guard, also when a thread panicked holding it (every value it guards stays
/// valid at any point).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Team {
    /// Waits until the epoch moves past `seen`: spinning for [`SPIN`], then asleep.
    fn wait(&self, seen: u64) {
        let start = Instant::now();
        let mut polls = 0u32;
        while self.epoch.load(Ordering::Acquire) == seen {
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(256) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut g = lock(&self.sleep);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while self.epoch.load(Ordering::SeqCst) == seen {
                g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn worker(&self) {
        let mut seen = self.epoch.load(Ordering::Acquire);
        loop {
            self.wait(seen);
            seen = self.epoch.load(Ordering::Acquire);
            let job = lock(&self.job).clone();
            if let Some(job) = job {
                job.work();
            }
        }
    }
}

/// The process's team (`None` where no worker thread could start), started on first use with
/// one worker fewer than rayon's global pool has threads (the caller is the last), at most one
/// fewer than the machine's cores.
fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<&'static Team>> = OnceLock::new();
    *TEAM.get_or_init(|| {
        let team: &'static Team = Box::leak(Box::new(Team {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut started = 0;
        // The global pool's size (asked from a thread outside any pool), but no more threads
        // than the machine runs at once: a spinning worker without a core of its own would
        // hold up the thread it waits for. Work is still cut for the pool's size.
        let size = std::thread::scope(|s| {
            let asker = std::thread::Builder::new().spawn_scoped(s, super::threads);
            asker.ok().and_then(|h| h.join().ok())
        })
        .unwrap_or(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 1..size.min(cores) {
            let spawned = std::thread::Builder::new()
                .name(format!("mote-team-{i}"))
                .spawn(move || team.worker());
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        (started > 0).then_some(team)
    })
}

/// Runs `f(0)`, ..., `f(tasks - 1)`, over the team's threads and the calling one, and returns
/// when all are done. Serially on the caller when the team is busy or there is one task.
///
/// # Panics
/// With the first panic of a task, after every task has run.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    // On one of rayon's threads (a data-parallel replica), the replicas already occupy the
    // cores: the team's threads would only compete with them.
    let team = match team() {
        Some(t) if tasks > 1 && rayon::current_thread_index().is_none() => t,
        _ => return serial(tasks, f),
    };
    if team.busy.swap(true, Ordering::Acquire) {
        return serial(tasks, f);
    }
    // SAFETY: only the lifetime is erased. `Job::work` calls the function for claimed tasks
    // only, and this function returns (or unwinds) only after `left` reached zero, when every
    // claimed task has finished and no task is left to claim: `AwaitTasks` waits for that
    // when it is dropped, on every way out of this function.
    let task: Task =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Task>(f as *const _) };
    let job = Arc::new(Job {
        task,
        tasks,
        next: AtomicUsize::new(0),
        left: AtomicUsize::new(tasks),
        panic: Mutex::new(None),
    });
    let done = AwaitTasks { team, job: &job };
    *lock(&team.job) = Some(Arc::clone(&job));
    team.epoch.fetch_add(1, Ordering::SeqCst);
    if team.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = lock(&team.sleep);
        team.wake.notify_all();
    }
    // The caller's share of the tasks, then the wait for the workers'.
    drop(done);
    let panic = lock(&job.panic).take();
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

/// A base pointer shared by tasks that each take a distinct element.
struct Items<W>(*mut W);

// SAFETY: tasks reach distinct elements only (see `each`), so sharing the pointer shares no
// element; sending `&mut W` to another thread needs `W: Send`.
unsafe impl<W: Send> Sync for Items<W> {}

/// Runs `f` on every item, one task per item, as [`run`] does.
pub(crate) fn each<W: Send>(items: &mut [W], f: impl Fn(&mut W) + Sync) {
    let len = items.len();
    let base = Items(items.as_mut_ptr());
    run(len, &|i| {
        if i < len {
            let base = &base;
            // SAFETY: `i < len`, and `run` runs each task index once, so this is the only
            // reference to item `i` while the unique borrow of `items` is held.
            f(unsafe { &mut *base.0.add(i) });
        }
    });
}

/// Runs `f` on every item of `items`, one task per item, as [`run`] does: the team's form of
/// rayon's `par_iter().for_each`.
pub(crate) fn for_each<W: Send>(items: impl IntoIterator<Item = W>, f: impl Fn(W) + Sync) {
    map(items, f);
}

/// `f` of every item of `items`, in the items' order, one task per item, as [`run`] does.
pub(crate) fn map<W: Send, R: Send>(
    items: impl IntoIterator<Item = W>,
    f: impl Fn(W) -> R + Sync,
) -> Vec<R> {
    let mut slots: Vec<(Option<W>, Option<R>)> =
        items.into_iter().map(|w| (Some(w), None)).collect();
    each(&mut slots, |(w, r)| *r = w.take().map(&f));
    slots.into_iter().filter_map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn items_are_written_in_place() {
        let mut v: Vec<Vec<u32>> = (0..37).map(|i| vec![i; 5]).collect();
        each(&mut v, |w| w.iter_mut().for_each(|x| *x *= 2));
        for (i, w) in v.iter().enumerate() {
            assert_eq!(w, &vec![2 * i as u32; 5]);
        }
    }

    #[test]
    fn nested_and_concurrent_jobs_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(4, &|_| {
                            run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 4 * 3);
    }

    #[test]
    fn a_panicking_task_lets_the_others_finish_then_panics() {
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(8, &|i| {
                if i == 3 {
                    panic!("task 3");
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }));
        let msg = r.err().and_then(|p| p.downcast_ref::<&str>().copied());
        assert_eq!(msg, Some("task 3"));
        assert_eq!(done.load(Ordering::Relaxed), 7);
        // The team is free again.
        let n = AtomicUsize::new(0);
        run(5, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn jobs_after_the_workers_slept_still_run() {
        std::thread::sleep(SPIN * 2);
        let n = AtomicUsize::new(0);
        run(64, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }
}
