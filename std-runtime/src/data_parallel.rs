//! Data-parallel training on CPU threads: the same step runs on N replicas of a model, each on
//! a shard of the batch in its own arena and tape; their gradients are averaged (weighted by
//! shard size, so that the result is the gradient of the whole batch's mean loss) before every
//! replica takes the same optimizer step, which keeps the parameters identical.
//!
//! This is PyTorch's `DataParallel` / `DistributedDataParallel` on one host, with the
//! all-reduce in shared memory. As in `DistributedDataParallel`, it overlaps the backward by
//! default: the gradients are grouped into buckets, and each bucket is summed as soon as every
//! replica's backward has finished it ([`Buckets`], [`Staged`]); for large models (see
//! [`default_buckets`]) each gradient is instead cut into chunks after the backward and every
//! chunk summed across the replicas by one thread of the pool. It pays when a model is too
//! small for intra-op threads (the small workloads): each replica runs serially, the replicas
//! run at once. [`Replicas`] does the same for the runtime's models, on CPU threads or (with
//! the `cuda` feature) on GPUs through NCCL.
//!
//! ```
//! use mote::{Adam, AdamConfig, Cpu, Linear, Module, Relu, Rng, Tape};
//! use mote_runtime::data_parallel::{DataParallel, Targets};
//!
//! let mut arenas = DataParallel::<Cpu<f32>, (Linear, Relu, Linear), Adam, 16>::arenas(2, 4096);
//! let mut dp = DataParallel::new(&mut arenas, Cpu::new, |tape: &mut Tape<Cpu<'_, f32>, 16>| {
//!     let mut rng = Rng::new(0); // the same seed on every replica: the same parameters
//!     let model = (Linear::new(tape, 4, 8, &mut rng)?, Relu, Linear::new(tape, 8, 1, &mut rng)?);
//!     let opt = Adam::new(tape, AdamConfig::default())?;
//!     Ok((model, opt))
//! })?;
//! let xs = vec![0.5f32; 10 * 4];
//! let ys = vec![1.0f32; 10];
//! let loss = dp.step(&xs, &[4], Targets::Values(&ys, &[1]), |t, m, x, y| {
//!     let p = m.forward(t, x)?;
//!     t.mse(p, y)
//! })?;
//! assert!(loss.is_finite());
//! # Ok::<(), mote::Error>(())
//! ```

use mote::{Backend, Error, HostBackend, Mark, Module, Optimizer, Result, Tape, Var};

use crate::model::{Model, StepOptions, StepStats, NODES};
use rayon::prelude::*;

mod buckets;
pub use buckets::{Buckets, Staged, Tracker, BUCKET_FLOATS};

/// Targets of a batch: class labels, or values with the shape of one sample's target.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class index per sample.
    Labels(&'a [usize]),
    /// `dims.iter().product()` values per sample.
    Values(&'a [f32], &'a [usize]),
}

struct Replica<B: HostBackend<Elem = f32>, M, O, const N: usize> {
    tape: Tape<B, N>,
    model: M,
    opt: O,
    start: Mark,
}

/// N replicas of a model and its optimizer, each on its own arena and tape (`N` nodes).
pub struct DataParallel<B: HostBackend<Elem = f32>, M, O, const N: usize> {
    replicas: Vec<Replica<B, M, O, N>>,
    /// Chunk of a gradient summed by one task of the all-reduce.
    chunk: usize,
    /// The all-reduce overlapped with the backward, bucket by bucket (`None`: after it).
    staged: Option<Staged>,
}

/// Elements per all-reduce task.
const CHUNK: usize = 1 << 14;

/// Gradients (floats) up to which CPU replicas overlap their all-reduce with the backward by
/// default: 16 MiB, about what stays in this machine's caches.
pub const OVERLAP_MAX_FLOATS: usize = 1 << 22;

/// The default all-reduce of CPU replicas whose parameters have `gradient_floats` gradient
/// elements in all: bucket by bucket during the backward ([`BUCKET_FLOATS`]) up to
/// [`OVERLAP_MAX_FLOATS`], after the backward above. Measured with `examples/replicas.rs` on 2
/// cores (2 replicas, two runs): overlapping took W-mnist's step (235 k gradients) from
/// 1.28-1.53 ms to 1.22 ms, and slowed W-large's (25 M) by 6-8%, since staging every bucket
/// costs more memory passes than the in-place sum once the gradients no longer fit in the
/// caches.
pub fn default_buckets(gradient_floats: usize) -> Option<usize> {
    (gradient_floats <= OVERLAP_MAX_FLOATS).then_some(BUCKET_FLOATS)
}

/// The total length of `regions`.
fn total(regions: &[(usize, usize)]) -> usize {
    regions.iter().map(|r| r.1).sum()
}

impl<'a, B, M, O, const N: usize> DataParallel<B, M, O, N>
where
    B: HostBackend<Elem = f32> + Send + 'a,
    M: Module + Send,
    O: Optimizer + Send,
{
    /// `replicas` zeroed arenas of `floats` elements each (size them with `mote::plan`).
    pub fn arenas(replicas: usize, floats: usize) -> Vec<Vec<f32>> {
        (0..replicas).map(|_| vec![0.0; floats]).collect()
    }

    /// Builds one replica per arena: `backend` makes the backend over an arena, `build`
    /// creates the model and optimizer on a tape. `build` must create the same parameters on
    /// every call (seed its generator the same way): the replicas are checked to start equal.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no arenas or replicas that start different; whatever
    /// `build` returns.
    pub fn new(
        arenas: &'a mut [Vec<f32>],
        backend: impl Fn(&'a mut [f32]) -> B,
        mut build: impl FnMut(&mut Tape<B, N>) -> Result<(M, O)>,
    ) -> Result<Self> {
        if arenas.is_empty() {
            return Err(Error::InvalidArgument {
                what: "data parallel training needs at least one replica",
            });
        }
        let mut replicas = Vec::with_capacity(arenas.len());
        for mem in arenas.iter_mut() {
            let mut tape = Tape::with_backend(backend(&mut mem[..]));
            let (model, opt) = build(&mut tape)?;
            let start = tape.mark();
            replicas.push(Replica {
                tape,
                model,
                opt,
                start,
            });
        }
        let mut dp = DataParallel {
            replicas,
            chunk: CHUNK,
            staged: None,
        };
        if dp.divergence()? != 0.0 {
            return Err(Error::InvalidArgument {
                what: "replicas must start with the same parameters (seed `build` the same way)",
            });
        }
        let floats = total(&gradient_regions(&dp.replicas[0].tape)?);
        dp.set_buckets(default_buckets(floats))?;
        Ok(dp)
    }

    /// How the gradients are all-reduced: `Some(floats)` bucket by bucket during the backward,
    /// in buckets of about `floats` elements ([`Buckets`], [`Staged`]); `None` in one pass
    /// after every replica's backward. Both give the same sums, bit for bit. The default is
    /// [`default_buckets`].
    ///
    /// # Errors
    /// A stale handle (should not happen).
    pub fn set_buckets(&mut self, floats: Option<usize>) -> Result<()> {
        self.staged = match (floats, self.replicas.first()) {
            (Some(f), Some(r)) if self.replicas.len() > 1 => {
                Some(Staged::new(Buckets::of(&r.tape, f)?, self.replicas.len())?)
            }
            _ => None,
        };
        Ok(())
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Replica 0's tape and model (all replicas hold the same parameters): for evaluation,
    /// checkpoints and export.
    pub fn primary(&mut self) -> (&mut Tape<B, N>, &M) {
        let r = &mut self.replicas[0];
        (&mut r.tape, &r.model)
    }

    /// Replica 0's training mark (parameters and optimizer state lie below it).
    pub fn start(&self) -> Mark {
        self.replicas[0].start
    }

    /// The optimizers, for example to set a learning rate on all of them.
    pub fn for_each_optimizer(&mut self, mut f: impl FnMut(&mut O)) {
        for r in &mut self.replicas {
            f(&mut r.opt);
        }
    }

    /// The largest absolute difference between a parameter element of replica 0 and the same
    /// element of any other replica (0 while they stay in step).
    ///
    /// # Errors
    /// A stale parameter handle (should not happen).
    pub fn divergence(&self) -> Result<f32> {
        let tapes: Vec<&Tape<B, N>> = self.replicas.iter().map(|r| &r.tape).collect();
        divergence(&tapes)
    }

    /// One training step on a batch: `xs` holds `rows` samples of `sample` shape (row-major),
    /// split into contiguous shards, one per replica (sizes differ by at most one; replicas
    /// left without rows sit the step out). `loss` computes a replica's mean loss from the
    /// model, its input shard and its target shard. Returns the batch's mean loss.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `xs` or the targets do not hold whole samples, or
    /// disagree on the number of samples; whatever an op returns (then the replicas may be
    /// out of step: rebuild them or restore a checkpoint).
    pub fn step<F>(
        &mut self,
        xs: &[f32],
        sample: &[usize],
        targets: Targets<'_>,
        loss: F,
    ) -> Result<f32>
    where
        F: Fn(&mut Tape<B, N>, &M, Var, Var) -> Result<Var> + Sync,
    {
        let per: usize = sample.iter().product();
        // An empty batch has no mean loss (every shard's share would be 0 / 0).
        if per == 0 || xs.is_empty() || !xs.len().is_multiple_of(per) {
            return Err(Error::LengthMismatch {
                op: "data parallel input",
                expected: per,
                got: xs.len(),
            });
        }
        let rows = xs.len() / per;
        let (tlen, tper) = match targets {
            Targets::Labels(l) => (l.len(), 1),
            Targets::Values(v, d) => (v.len(), d.iter().product()),
        };
        if tper == 0 || tlen != rows * tper {
            return Err(Error::LengthMismatch {
                op: "data parallel targets",
                expected: rows * tper.max(1),
                got: tlen,
            });
        }
        let k = self.replicas.len();
        // Shard r covers rows [bounds(r), bounds(r + 1)).
        let bounds = |r: usize| r * rows / k;
        // Each shard's share of the batch weighs its loss and its gradients.
        let shares: Vec<f64> = (0..k)
            .map(|r| (bounds(r + 1) - bounds(r)) as f64 / rows as f64)
            .collect();
        let weights: Vec<f32> = shares.iter().map(|&w| w as f32).collect();
        if let Some(st) = &mut self.staged {
            st.begin(&weights)?;
        }
        let staged = self.staged.as_ref();
        let shard = |(r, rep): (usize, &mut Replica<B, M, O, N>)| -> Result<f32> {
            let (lo, hi) = (bounds(r), bounds(r + 1));
            rep.tape.rewind(rep.start)?;
            if lo == hi {
                if let Some(st) = staged {
                    st.finish(r, &mut st.plan().tracker(), &rep.tape)?;
                }
                return Ok(0.0);
            }
            let mut dims = Vec::with_capacity(sample.len() + 1);
            dims.push(hi - lo);
            dims.extend_from_slice(sample);
            let x = rep.tape.input(&dims, &xs[lo * per..hi * per])?;
            let y = match targets {
                Targets::Labels(l) => rep.tape.labels(&l[lo..hi])?,
                Targets::Values(v, d) => {
                    let mut td = Vec::with_capacity(d.len() + 1);
                    td.push(hi - lo);
                    td.extend_from_slice(d);
                    rep.tape.input(&td, &v[lo * tper..hi * tper])?
                }
            };
            let l = loss(&mut rep.tape, &rep.model, x, y)?;
            match staged {
                Some(st) => {
                    let mut tracker = st.plan().tracker();
                    rep.tape.backward_with(l, |t, p| {
                        for b in tracker.ready(st.plan(), t, p)? {
                            st.arrive(r, b, t)?;
                        }
                        Ok(())
                    })?;
                    st.finish(r, &mut tracker, &rep.tape)?;
                }
                None => rep.tape.backward(l)?,
            }
            rep.tape.item(l)
        };
        // One replica runs on the calling thread: no hand-off to the pool.
        let results: Vec<Result<f32>> = if k > 1 {
            self.replicas
                .par_iter_mut()
                .enumerate()
                .map(shard)
                .collect()
        } else {
            self.replicas.iter_mut().enumerate().map(shard).collect()
        };
        let mut total = 0.0f64;
        for (res, w) in results.into_iter().zip(&shares) {
            total += w * f64::from(res?);
        }
        if let Some(st) = &self.staged {
            self.replicas.par_iter_mut().try_for_each(|rep| {
                st.scatter(&mut rep.tape)?;
                rep.opt.step(&mut rep.tape)
            })?;
        } else if k > 1 {
            self.all_reduce(&weights)?;
            self.replicas
                .par_iter_mut()
                .try_for_each(|rep| rep.opt.step(&mut rep.tape))?;
        } else {
            for rep in &mut self.replicas {
                rep.opt.step(&mut rep.tape)?;
            }
        }
        if k > 1 {
            let mut tapes: Vec<&mut Tape<B, N>> =
                self.replicas.iter_mut().map(|r| &mut r.tape).collect();
            broadcast_buffers(&mut tapes)?;
        }
        debug_assert!(
            matches!(self.divergence(), Ok(d) if d == 0.0),
            "data parallel replicas went out of step"
        );
        Ok(total as f32)
    }

    /// Replaces every replica's gradients with their weighted sum.
    fn all_reduce(&mut self, weights: &[f32]) -> Result<()> {
        let mut tapes: Vec<&mut Tape<B, N>> =
            self.replicas.iter_mut().map(|r| &mut r.tape).collect();
        all_reduce_gradients(&mut tapes, weights, self.chunk)
    }
}

/// The largest absolute difference between a parameter element of the first tape and the same
/// element of any other (0 while replicas stay in step; infinite when their parameters do not
/// even match in number or size).
///
/// # Errors
/// A stale parameter handle (should not happen).
pub fn divergence<B: HostBackend<Elem = f32>, const N: usize>(
    tapes: &[&Tape<B, N>],
) -> Result<f32> {
    let Some((first, rest)) = tapes.split_first() else {
        return Ok(0.0);
    };
    let params: Vec<Var> = first.params().collect();
    let mut worst = 0.0f32;
    for t in rest {
        let theirs: Vec<Var> = t.params().collect();
        if theirs.len() != params.len() {
            return Ok(f32::INFINITY);
        }
        for (&p, &q) in params.iter().zip(&theirs) {
            let (a, b) = (first.data(p)?, t.data(q)?);
            if a.len() != b.len() {
                return Ok(f32::INFINITY);
            }
            for (x, y) in a.iter().zip(b) {
                // The same bits are in step, NaN and infinities included (a diverged run's
                // replicas diverge alike).
                if x.to_bits() == y.to_bits() {
                    continue;
                }
                let d = (x - y).abs();
                if d.is_nan() {
                    worst = f32::INFINITY;
                } else if d > worst {
                    worst = d;
                }
            }
        }
    }
    Ok(worst)
}

/// Replaces every tape's gradients (the same parameters on each) with their weighted sum
/// `sum_r weights[r] grad_r`, in parallel over chunks of `chunk` elements: the all-reduce of
/// data-parallel training, in shared memory.
///
/// # Errors
/// `LengthMismatch` when there is not one weight per tape, or when the tapes' parameters do
/// not have the same sizes (checked before anything changes); a stale parameter handle, or
/// gradient regions out of order (should not happen).
pub fn all_reduce_gradients<B: HostBackend<Elem = f32>, const N: usize>(
    tapes: &mut [&mut Tape<B, N>],
    weights: &[f32],
    chunk: usize,
) -> Result<()> {
    if weights.len() != tapes.len() {
        return Err(Error::LengthMismatch {
            op: "all_reduce_gradients weights (one per tape)",
            expected: tapes.len(),
            got: weights.len(),
        });
    }
    // Each replica's gradient regions, in parameter order (the same on every replica).
    let mut regions = Vec::with_capacity(tapes.len());
    for t in tapes.iter() {
        regions.push(gradient_regions(&**t)?);
    }
    if let Some(first) = regions.first() {
        for other in &regions[1..] {
            let sizes = |r: &[(usize, usize)]| r.iter().map(|&(_, l)| l).collect::<Vec<_>>();
            if sizes(other) != sizes(first) {
                return Err(Error::LengthMismatch {
                    op: "all_reduce_gradients (the tapes' parameters differ)",
                    expected: first.iter().map(|&(_, l)| l).sum(),
                    got: other.iter().map(|&(_, l)| l).sum(),
                });
            }
        }
    }
    let mut per_replica: Vec<Vec<&mut [f32]>> = Vec::with_capacity(tapes.len());
    for (t, views) in tapes.iter_mut().zip(&regions) {
        per_replica.push(disjoint_mut(t.backend_mut().storage_mut(), views)?);
    }
    let chunk = chunk.max(1);
    // Task i: chunk c of parameter p, across every replica.
    let mut tasks: Vec<Vec<&mut [f32]>> = Vec::new();
    let params = per_replica.first().map_or(0, Vec::len);
    let mut iters: Vec<std::vec::IntoIter<&mut [f32]>> =
        per_replica.into_iter().map(Vec::into_iter).collect();
    for _ in 0..params {
        let slices: Vec<&mut [f32]> = iters.iter_mut().filter_map(Iterator::next).collect();
        let mut chunked: Vec<std::slice::ChunksMut<'_, f32>> =
            slices.into_iter().map(|s| s.chunks_mut(chunk)).collect();
        loop {
            let parts: Vec<&mut [f32]> = chunked.iter_mut().filter_map(Iterator::next).collect();
            if parts.is_empty() {
                break;
            }
            tasks.push(parts);
        }
    }
    tasks.into_par_iter().for_each(|mut parts| {
        let n = parts.first().map_or(0, |p| p.len());
        for j in 0..n {
            let mut s = 0.0f32;
            for (p, &w) in parts.iter().zip(weights) {
                s += w * p[j];
            }
            for p in parts.iter_mut() {
                p[j] = s;
            }
        }
    });
    Ok(())
}

/// Disjoint mutable slices of `buf` for `(offset, len)` regions given in increasing order.
fn disjoint_mut<'b>(buf: &'b mut [f32], regions: &[(usize, usize)]) -> Result<Vec<&'b mut [f32]>> {
    let mut out = Vec::with_capacity(regions.len());
    let mut rest = buf;
    let mut at = 0;
    for &(off, len) in regions {
        if off < at {
            return Err(Error::Aliasing);
        }
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail
            .split_at_mut_checked(off - at)
            .ok_or(Error::IndexOutOfRange {
                op: "all-reduce",
                index: off,
                bound: at,
            })?;
        let (mid, tail) = tail
            .split_at_mut_checked(len)
            .ok_or(Error::IndexOutOfRange {
                op: "all-reduce",
                index: off + len,
                bound: at,
            })?;
        out.push(mid);
        rest = tail;
        at = off + len;
    }
    Ok(out)
}

/// How data-parallel replicas run their shards and all-reduce their gradients: in shared
/// memory on CPU threads ([`SharedMemory`]), or through NCCL on GPUs
/// (`NcclReduce`, with the `cuda` feature). [`Replicas`] does the rest the same way for both:
/// shard bounds, weights, the loss, the optimizer step.
pub trait Reduce<B: Backend<Elem = f32>> {
    /// Runs `f` on every replica (index, model, this reducer), in parallel where the backend
    /// allows.
    fn each<F>(&self, models: &mut [Model<B>], f: F) -> Vec<crate::Result<StepStats>>
    where
        F: Fn(usize, &mut Model<B>, &Self) -> crate::Result<StepStats> + Sync + Send;

    /// The bucket plan when the all-reduce overlaps the backward ([`Reduce::bucket_ready`]
    /// runs for each bucket as a replica's backward finishes it); `None` when the gradients
    /// are reduced after the backward.
    fn buckets(&self) -> Option<&Buckets> {
        None
    }

    /// Starts a step, before the replicas run: replica `r`'s gradients will count
    /// `weights[r]`.
    ///
    /// # Errors
    /// A core or device error.
    fn begin(&mut self, _models: &mut [Model<B>], _weights: &[f32]) -> crate::Result<()> {
        Ok(())
    }

    /// Replica `r`'s gradients of bucket `b` are final (called in bucket order, during its
    /// backward, when [`Reduce::buckets`] gives a plan; for every bucket, once per step).
    ///
    /// # Errors
    /// A core or device error.
    fn bucket_ready(&self, _r: usize, _tape: &mut Tape<B, NODES>, _b: usize) -> crate::Result<()> {
        Ok(())
    }

    /// Ends the reduction after every replica's backward: afterwards every replica's gradients
    /// hold `sum_r weights[r] grad_r` (over every replica of the run, in other processes too).
    ///
    /// # Errors
    /// A core or device error.
    fn all_reduce(&mut self, models: &mut [Model<B>], weights: &[f32]) -> crate::Result<()>;

    /// Prepares `model`'s backend for work from this thread (a GPU backend makes its device
    /// current); called before evaluating replica 0.
    ///
    /// # Errors
    /// A device error.
    fn prepare(&self, _model: &Model<B>) -> crate::Result<()> {
        Ok(())
    }

    /// Where this process's `local` replicas sit among all replicas of the run: the global
    /// index of the first, and how many there are in all. One process: `(0, local)`.
    fn place(&self, local: usize) -> (usize, usize) {
        (0, local)
    }

    /// Makes every process of the run hold rank 0's `values` (each process evaluates on its
    /// own device, whose sums may differ in the last bits from another's, so that decisions
    /// taken from them could differ: early stopping's after each epoch, and the gradient norm
    /// that clipping scales by, each step). Every process calls it, with as many values. One
    /// process: nothing to do.
    ///
    /// # Errors
    /// A device error.
    fn agree(&self, _values: &mut [f64]) -> crate::Result<()> {
        Ok(())
    }

    /// Whether a replica's step failed anywhere in the run, given whether one of this
    /// process's did (`failed`). Every process calls it once per step, after its replicas ran,
    /// so that when one rank's step fails (a non-finite loss, a label out of range in its
    /// shard), every rank stops at that step: the others would otherwise go on to the next
    /// step's collectives and wait there for the rank that left. One process: `failed`.
    ///
    /// # Errors
    /// A device error.
    fn any_failed(&self, failed: bool) -> crate::Result<bool> {
        Ok(failed)
    }
}

/// Replicas on rayon's threads, gradients summed in shared memory: bucket by bucket during
/// the backward ([`Staged`]) or in one pass after it ([`all_reduce_gradients`]);
/// [`Replicas::new`] picks with [`default_buckets`].
#[derive(Debug, Default)]
pub struct SharedMemory {
    /// The overlapped all-reduce, once the replicas are known (`None`: after the backward).
    staged: Option<Staged>,
    /// Bucket size in floats, `None` for the all-reduce after the backward.
    buckets: Option<usize>,
}

impl SharedMemory {
    /// The all-reduce in buckets of about `floats` elements during the backward, or (`None`)
    /// in one pass after it.
    pub fn with_buckets(floats: Option<usize>) -> SharedMemory {
        SharedMemory {
            staged: None,
            buckets: floats,
        }
    }
}

impl<B: HostBackend<Elem = f32> + Send> Reduce<B> for SharedMemory {
    fn each<F>(&self, models: &mut [Model<B>], f: F) -> Vec<crate::Result<StepStats>>
    where
        F: Fn(usize, &mut Model<B>, &Self) -> crate::Result<StepStats> + Sync + Send,
    {
        if models.len() > 1 {
            models
                .par_iter_mut()
                .enumerate()
                .map(|(r, m)| f(r, m, self))
                .collect()
        } else {
            models
                .iter_mut()
                .enumerate()
                .map(|(r, m)| f(r, m, self))
                .collect()
        }
    }

    fn buckets(&self) -> Option<&Buckets> {
        self.staged.as_ref().map(Staged::plan)
    }

    fn begin(&mut self, models: &mut [Model<B>], weights: &[f32]) -> crate::Result<()> {
        let (Some(floats), Some(first)) = (self.buckets, models.first()) else {
            return Ok(());
        };
        if models.len() < 2 {
            self.staged = None;
            return Ok(());
        }
        if self.staged.is_none() {
            self.staged = Some(Staged::new(
                Buckets::of(&first.tape, floats)?,
                models.len(),
            )?);
        }
        if let Some(st) = &mut self.staged {
            st.begin(weights)?;
        }
        Ok(())
    }

    fn bucket_ready(&self, r: usize, tape: &mut Tape<B, NODES>, b: usize) -> crate::Result<()> {
        if let Some(st) = &self.staged {
            st.arrive(r, b, tape)?;
        }
        Ok(())
    }

    fn all_reduce(&mut self, models: &mut [Model<B>], weights: &[f32]) -> crate::Result<()> {
        if let Some(st) = &self.staged {
            models
                .par_iter_mut()
                .try_for_each(|m| st.scatter(&mut m.tape))?;
        } else if models.len() > 1 {
            let mut tapes: Vec<&mut Tape<B, NODES>> =
                models.iter_mut().map(|m| &mut m.tape).collect();
            all_reduce_gradients(&mut tapes, weights, CHUNK)?;
        }
        Ok(())
    }
}

/// The arena regions (offset, length) of the trainable parameters' gradients, in parameter
/// order: the same on every replica of a model.
///
/// # Errors
/// A stale handle (should not happen).
pub fn gradient_regions<B: Backend, const N: usize>(
    tape: &Tape<B, N>,
) -> Result<Vec<(usize, usize)>> {
    let mut v = Vec::new();
    for p in tape.params() {
        match tape.grad(p) {
            Ok(Some(g)) => v.push((g.offset, g.len())),
            // Created frozen (running statistics): no gradient to sum.
            Ok(None) | Err(Error::FrozenParameter) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(v)
}

/// Copies the values of `tapes[0]`'s buffers (parameters created frozen: batch
/// normalisation's running statistics, which each replica updates from its own shard) to every
/// other tape, as PyTorch's `DistributedDataParallel` broadcasts rank 0's buffers: the replicas
/// stay identical.
///
/// # Errors
/// A stale handle (should not happen).
pub fn broadcast_buffers<B: HostBackend<Elem = f32>, const N: usize>(
    tapes: &mut [&mut Tape<B, N>],
) -> Result<()> {
    let Some((first, rest)) = tapes.split_first_mut() else {
        return Ok(());
    };
    for p in first.params() {
        if matches!(first.grad(p), Err(Error::FrozenParameter)) {
            let values = first.data(p)?;
            for t in rest.iter_mut() {
                t.write(p, values)?;
            }
        }
    }
    Ok(())
}

/// Data-parallel replicas of a runtime [`Model`]: what `mote train --replicas N` (CPU threads,
/// [`SharedMemory`]) and `mote train --device cuda --gpus N` (NCCL) train through
/// [`crate::train::fit`]. Each batch is cut into contiguous shards, one per replica (sizes
/// differ by at most one); every replica runs forward and backward on its shard on its own
/// tape, the gradients are all-reduced (weighted by shard size: the gradient of the whole
/// batch's mean loss), and every replica takes the same optimizer step. Replica 0 is the model
/// that is evaluated and saved: a checkpoint of replicas is an ordinary checkpoint, and any
/// checkpoint restores into any number of replicas.
pub struct Replicas<B: Backend<Elem = f32>, R = SharedMemory> {
    // Dropped first (fields drop in order): NCCL's communicators finish the sums they were
    // given (a step that failed mid-backward leaves some queued) before the replicas' device
    // arenas that those sums write are freed.
    reduce: R,
    models: Vec<Model<B>>,
}

impl<B: HostBackend<Elem = f32> + Send> Replicas<B, SharedMemory> {
    /// Replicas on CPU threads, from models built alike (the same spec, seed or checkpoint).
    ///
    /// # Errors
    /// `Invalid` for no models, or models that do not start with the same parameters.
    pub fn new(models: Vec<Model<B>>) -> crate::Result<Self> {
        let floats = match models.first() {
            Some(m) => total(&gradient_regions(&m.tape)?),
            None => 0,
        };
        let r = Replicas::with_reduce(models, SharedMemory::with_buckets(default_buckets(floats)))?;
        let tapes: Vec<&Tape<B, NODES>> = r.models.iter().map(|m| &m.tape).collect();
        if divergence(&tapes)? != 0.0 {
            return Err(crate::Error::invalid(
                "replicas must start with the same parameters (build them from one seed)",
            ));
        }
        Ok(r)
    }

    /// The largest parameter difference between replica 0 and any other (0 while in step).
    ///
    /// # Errors
    /// A stale handle (should not happen).
    pub fn divergence(&self) -> Result<f32> {
        let tapes: Vec<&Tape<B, NODES>> = self.models.iter().map(|m| &m.tape).collect();
        divergence(&tapes)
    }
}

impl<B: Backend<Elem = f32>, R: Reduce<B>> Replicas<B, R> {
    /// Replicas that run and reduce through `reduce`, from models built alike.
    ///
    /// # Errors
    /// `Invalid` for no models.
    pub fn with_reduce(models: Vec<Model<B>>, reduce: R) -> crate::Result<Self> {
        if models.is_empty() {
            return Err(crate::Error::invalid(
                "data parallel training needs at least one replica",
            ));
        }
        Ok(Replicas { models, reduce })
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The reducer.
    pub fn reducer(&self) -> &R {
        &self.reduce
    }
}

impl<B: Backend<Elem = f32>, R: Reduce<B>> crate::train::Learner for Replicas<B, R> {
    type Backend = B;

    fn agree(&mut self, values: &mut [f64]) -> crate::Result<()> {
        self.reduce.agree(values)
    }

    fn any_failed(&mut self, failed: bool) -> crate::Result<bool> {
        self.reduce.any_failed(failed)
    }

    fn model(&self) -> &Model<B> {
        // `with_reduce` refuses an empty list.
        &self.models[0]
    }

    fn set_lr(&mut self, lr: f64) {
        for m in &mut self.models {
            mote::Optimizer::set_lr(&mut m.opt, lr);
        }
    }

    fn configure(&mut self, options: StepOptions) {
        for m in &mut self.models {
            m.options = options;
        }
    }

    fn set_steps(&mut self, steps: u64) {
        for m in &mut self.models {
            m.steps = steps;
        }
    }

    fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> crate::Result<StepStats> {
        let k = self.models.len();
        // Global shards: replica r of this process takes shard `first + r` of `world`.
        let (first, world) = self.reduce.place(k);
        let ins = self.models[0].spec.inputs();
        let bounds = move |r: usize| (first + r) * rows / world.max(1);
        let weights: Vec<f32> = (0..k)
            .map(|r| (bounds(r + 1) - bounds(r)) as f32 / rows.max(1) as f32)
            .collect();
        self.reduce.begin(&mut self.models, &weights)?;
        // Class weights: every shard scales by the whole batch's weight (every process has the
        // whole batch's labels).
        let class_scale = match &self.models[0].spec.class_weights {
            w if w.is_empty() => None,
            w => Some(crate::model::class_weight_scale(w, y_class)),
        };
        let results = self.reduce.each(&mut self.models, |r, m, red| {
            let (lo, hi) = (bounds(r), bounds(r + 1));
            // When the reducer overlaps the backward, each bucket goes to it as soon as this
            // replica's backward finishes the bucket; the reducer's own error is kept (the tape
            // only carries core errors).
            let plan = red.buckets();
            let mut tracker = plan.map(Buckets::tracker);
            let mut failed = None;
            let out = if lo == hi {
                // No rows: zeroed gradients (weight 0 in the sum).
                m.tape
                    .rewind(m.start)
                    .map(|()| StepStats::default())
                    .map_err(Into::into)
            } else {
                let xs = x.get(lo * ins..hi * ins).unwrap_or(&[]);
                // Dropout masks by the rows' places in the whole batch (`Masks`).
                m.first_row = lo;
                let yc = y_class.get(lo..hi).unwrap_or(&[]);
                let yv = y_value.get(lo..hi).unwrap_or(&[]);
                let failed = &mut failed;
                let hook = plan.zip(tracker.as_mut()).map(|(plan, tracker)| {
                    move |t: &mut Tape<B, NODES>, p: Var| -> Result<()> {
                        // Every bucket handed on goes out, even after one failed: the tracker
                        // counts them sent.
                        for b in tracker.ready(plan, t, p)? {
                            if let Err(e) = red.bucket_ready(r, t, b) {
                                failed.get_or_insert(e);
                            }
                        }
                        match failed {
                            Some(_) => Err(Error::InvalidArgument {
                                what: "data parallel: a bucket's all-reduce failed",
                            }),
                            None => Ok(()),
                        }
                    }
                });
                m.forward_backward_with(xs, hi - lo, yc, yv, class_scale, hook)
            };
            // On an error too, the buckets not handed on yet go out (best effort): other ranks
            // wait in their collectives for this one's, and would hang without them.
            let mut rest = Ok(());
            for b in tracker.as_mut().map_or(0..0, Tracker::rest) {
                if let Err(e) = red.bucket_ready(r, &mut m.tape, b) {
                    rest = rest.and(Err(e));
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            let out = out?;
            rest?;
            Ok(out)
        });
        // Every rank learns whether any rank's step failed, before anything else waits on the
        // others; a rank whose own step failed reports its own error.
        let anywhere = self.reduce.any_failed(results.iter().any(|r| r.is_err()));
        let (mut loss, mut correct, mut squared) = (0.0f64, 0, 0.0f64);
        for (res, &w) in results.into_iter().zip(&weights) {
            let s = res?;
            loss += f64::from(w) * f64::from(s.loss);
            correct += s.correct;
            squared += s.squared_error;
        }
        if anywhere? {
            return Err(crate::Error::invalid(format!(
                "rank {first} of {world}: another rank's step failed (its own error says how), \
                 so this rank stops too"
            )));
        }
        // With replicas in other processes, this process reports its own shards' mean loss,
        // and their correct predictions and squared errors scaled to the batch (the others'
        // are not read back).
        let share: f32 = weights.iter().sum();
        if world > k && share > 0.0 {
            loss /= f64::from(share);
            correct = (correct as f64 / f64::from(share)).round() as usize;
            squared /= f64::from(share);
        }
        self.reduce.all_reduce(&mut self.models, &weights)?;
        // Gradient clipping by one norm for all: replica 0's (and in a multi-process run rank
        // 0's), so that every replica scales by the same factor (GPUs of different sizes split
        // a sum of squares differently and round it differently in the last bits, and
        // replicas that scaled differently would drift apart).
        let norm = match self.models[0].options.clip_grad_norm {
            Some(_) => {
                self.reduce.prepare(&self.models[0])?;
                let mut norm = [mote::grad_norm(&mut self.models[0].tape)?];
                self.reduce.agree(&mut norm)?;
                Some(norm[0])
            }
            None => None,
        };
        // The same step on every replica (in parallel where the backend allows).
        for r in self.reduce.each(&mut self.models, |_, m, _| {
            m.step(norm)?;
            Ok(StepStats::default())
        }) {
            r?;
        }
        Ok(StepStats {
            loss: loss as f32,
            correct,
            squared_error: squared,
        })
    }

    fn outputs(&mut self, x: &[f32], rows: usize) -> crate::Result<Vec<f32>> {
        self.reduce.prepare(&self.models[0])?;
        self.models[0].outputs(x, rows)
    }
}

/// Replicas on GPUs, one per device of this process, their gradients summed by NCCL
/// (`mote_cuda::Nccl`): `mote train --device cuda --gpus N`. Each GPU's replica runs on a host
/// thread of its own (its forward, backward and optimizer step), and its gradients are summed
/// bucket by bucket during its backward: each bucket ([`Buckets`], [`NCCL_BUCKET_FLOATS`]) is
/// scaled by the shard's weight and handed to NCCL on a stream of its own as soon as the
/// backward has queued its last kernel; the optimizer's stream waits for them all.
///
/// In a multi-process run ([`crate::rendezvous`]) each process holds one replica, rank `r` of
/// the run: it trains on shard `r` of every batch and NCCL sums across the processes.
#[cfg(feature = "cuda")]
pub struct NcclReduce {
    /// One communicator per local replica, each used by that replica's thread only.
    ranks: Vec<std::sync::Mutex<mote_cuda::NcclRank>>,
    /// The first local replica's global rank, and the group's size.
    place: (usize, usize),
    /// The bucket plan, once known.
    plan: Option<Buckets>,
    /// This step's weights of the local replicas.
    weights: Vec<f32>,
}

/// Bucket size in floats of the NCCL all-reduce (16 MiB of gradients, near PyTorch's 25 MB;
/// the first bucket a quarter of it).
#[cfg(feature = "cuda")]
pub const NCCL_BUCKET_FLOATS: usize = 1 << 22;

#[cfg(feature = "cuda")]
impl NcclReduce {
    /// Reduces through `nccl`, whose communicators are in the order of the replicas (of this
    /// process; their global ranks are `nccl.ranks()`, consecutive).
    pub fn new(nccl: mote_cuda::Nccl) -> Self {
        let place = (nccl.ranks().first().copied().unwrap_or(0), nccl.world());
        NcclReduce {
            ranks: nccl
                .into_ranks()
                .into_iter()
                .map(std::sync::Mutex::new)
                .collect(),
            place,
            plan: None,
            weights: Vec::new(),
        }
    }

    /// [`crate::rendezvous::check_same_start`] through this process's one communicator (a
    /// rank of a multi-process run).
    ///
    /// # Errors
    /// As that function; `Invalid` for a process with several communicators.
    pub fn check_same_start(
        &self,
        launch: &crate::rendezvous::Launch,
        items: &[(&str, f64)],
    ) -> crate::Result<()> {
        let nccl = |what: &str, e: mote_cuda::CudaError| {
            crate::Error::invalid(format!(
                "NCCL {what}, checking that the ranks start alike: {e}"
            ))
        };
        crate::rendezvous::check_same_start(
            launch,
            items,
            |v| {
                self.process_rank()?
                    .broadcast_from_first(v)
                    .map_err(|e| nccl("broadcast", e))
            },
            |v| {
                self.process_rank()?
                    .max_over_ranks(v)
                    .map_err(|e| nccl("all-reduce", e))
            },
        )
    }

    /// The communicator of a process that is one rank of a multi-process run.
    fn process_rank(&self) -> crate::Result<std::sync::MutexGuard<'_, mote_cuda::NcclRank>> {
        if self.ranks.len() != 1 {
            return Err(crate::Error::invalid(
                "NCCL: a multi-process run holds one GPU per process",
            ));
        }
        self.rank(0)
    }

    /// Replica `r`'s communicator.
    fn rank(&self, r: usize) -> crate::Result<std::sync::MutexGuard<'_, mote_cuda::NcclRank>> {
        self.ranks
            .get(r)
            .ok_or_else(|| crate::Error::invalid("NCCL: more replicas than communicators"))?
            .lock()
            .map_err(|_| crate::Error::invalid("NCCL: a replica's thread panicked"))
    }
}

#[cfg(feature = "cuda")]
fn nccl_error(e: mote_cuda::CudaError) -> crate::Error {
    crate::Error::invalid(format!("NCCL all-reduce: {e}"))
}

#[cfg(feature = "cuda")]
impl Reduce<mote_cuda::Cuda> for NcclReduce {
    fn each<F>(&self, models: &mut [Model<mote_cuda::Cuda>], f: F) -> Vec<crate::Result<StepStats>>
    where
        F: Fn(usize, &mut Model<mote_cuda::Cuda>, &Self) -> crate::Result<StepStats> + Sync + Send,
    {
        let run = |r: usize, m: &mut Model<mote_cuda::Cuda>| {
            // Launches and cuBLAS calls run in the calling thread's current context.
            self.prepare(m)?;
            f(r, m, self)
        };
        if let [m] = models {
            return vec![run(0, m)];
        }
        // One host thread per GPU, so that the GPUs work at once (a replica's host thread
        // waits for its loss).
        std::thread::scope(|s| {
            let handles: Vec<_> = models
                .iter_mut()
                .enumerate()
                .map(|(r, m)| s.spawn(move || run(r, m)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::Error::invalid("a GPU replica's thread panicked"))
                    })
                })
                .collect()
        })
    }

    fn prepare(&self, model: &Model<mote_cuda::Cuda>) -> crate::Result<()> {
        model
            .tape
            .backend()
            .make_current()
            .map_err(|e| crate::Error::invalid(format!("{e}")))
    }

    fn buckets(&self) -> Option<&Buckets> {
        self.plan.as_ref()
    }

    fn agree(&self, values: &mut [f64]) -> crate::Result<()> {
        if self.place.1 == self.ranks.len() {
            // Every rank in this process: one evaluation, one set of numbers.
            return Ok(());
        }
        self.process_rank()?
            .broadcast_from_first(values)
            .map_err(|e| crate::Error::invalid(format!("NCCL broadcast from rank 0: {e}")))
    }

    fn begin(
        &mut self,
        models: &mut [Model<mote_cuda::Cuda>],
        weights: &[f32],
    ) -> crate::Result<()> {
        if models.len() != self.ranks.len() {
            return Err(crate::Error::invalid(format!(
                "NCCL: {} replicas for {} communicators",
                models.len(),
                self.ranks.len()
            )));
        }
        self.weights = weights.to_vec();
        if let (None, Some(m)) = (&self.plan, models.first()) {
            self.plan = Some(Buckets::of(&m.tape, NCCL_BUCKET_FLOATS)?);
        } else {
            // A step that failed after queuing sums never waited for them: the gradients are
            // cleared (on the backend's stream) only once they are done.
            for (r, m) in models.iter().enumerate() {
                self.prepare(m)?;
                self.rank(r)?.wait(m.tape.backend()).map_err(nccl_error)?;
            }
        }
        Ok(())
    }

    fn bucket_ready(
        &self,
        r: usize,
        tape: &mut Tape<mote_cuda::Cuda, NODES>,
        b: usize,
    ) -> crate::Result<()> {
        let (Some(plan), Some(&w)) = (&self.plan, self.weights.get(r)) else {
            return Err(crate::Error::invalid("NCCL: a bucket outside a step"));
        };
        let regions = plan.regions(b);
        if w != 1.0 {
            for &(offset, len) in regions {
                tape.backend_mut().scale(offset, len, w)?;
            }
        }
        self.rank(r)?
            .all_reduce_sum_async(tape.backend_mut(), regions)
            .map_err(nccl_error)
    }

    fn all_reduce(
        &mut self,
        models: &mut [Model<mote_cuda::Cuda>],
        _weights: &[f32],
    ) -> crate::Result<()> {
        // Every bucket was queued during the backward: each optimizer's stream waits for them.
        for (r, m) in models.iter().enumerate() {
            self.prepare(m)?;
            self.rank(r)?.wait(m.tape.backend()).map_err(nccl_error)?;
        }
        Ok(())
    }

    fn place(&self, _local: usize) -> (usize, usize) {
        self.place
    }

    fn any_failed(&self, failed: bool) -> crate::Result<bool> {
        if self.place.1 == self.ranks.len() {
            // Every rank in this process: its own results say it.
            return Ok(failed);
        }
        let mut any = [if failed { 1.0 } else { 0.0 }];
        self.process_rank()?.max_over_ranks(&mut any).map_err(|e| {
            crate::Error::invalid(format!(
                "NCCL all-reduce, checking that every rank's step succeeded: {e}"
            ))
        })?;
        Ok(any[0] != 0.0)
    }
}
