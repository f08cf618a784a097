//! Data-parallel training on CPU threads: the same step runs on N replicas of a model, each on
//! a shard of the batch in its own arena and tape; their gradients are averaged (weighted by
//! shard size, so that the result is the gradient of the whole batch's mean loss) before every
//! replica takes the same optimizer step, which keeps the parameters identical.
//!
//! This is PyTorch's `DataParallel` / `DistributedDataParallel` on one host, with the
//! all-reduce in shared memory: each gradient is cut into chunks and every chunk is summed
//! across the replicas by one thread of the pool. It pays when a model is too small for
//! intra-op threads (the small workloads): each replica runs serially, the replicas run at
//! once.
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

use crate::model::{Model, NODES};
use rayon::prelude::*;

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
}

/// Elements per all-reduce task.
const CHUNK: usize = 1 << 14;

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
        let dp = DataParallel {
            replicas,
            chunk: CHUNK,
        };
        if dp.divergence()? != 0.0 {
            return Err(Error::InvalidArgument {
                what: "replicas must start with the same parameters (seed `build` the same way)",
            });
        }
        Ok(dp)
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
        if per == 0 || !xs.len().is_multiple_of(per) {
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
        let shard = |(r, rep): (usize, &mut Replica<B, M, O, N>)| -> Result<f32> {
            let (lo, hi) = (bounds(r), bounds(r + 1));
            rep.tape.rewind(rep.start)?;
            if lo == hi {
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
            rep.tape.backward(l)?;
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
        // Each shard's share of the batch weighs its loss and its gradients.
        let shares: Vec<f64> = (0..k)
            .map(|r| (bounds(r + 1) - bounds(r)) as f64 / rows as f64)
            .collect();
        let mut total = 0.0f64;
        for (res, w) in results.into_iter().zip(&shares) {
            total += w * f64::from(res?);
        }
        let weights: Vec<f32> = shares.iter().map(|&w| w as f32).collect();
        if k > 1 {
            self.all_reduce(&weights)?;
            self.replicas
                .par_iter_mut()
                .try_for_each(|rep| rep.opt.step(&mut rep.tape))?;
        } else {
            for rep in &mut self.replicas {
                rep.opt.step(&mut rep.tape)?;
            }
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
/// A stale parameter handle, or gradient regions out of order (should not happen).
pub fn all_reduce_gradients<B: HostBackend<Elem = f32>, const N: usize>(
    tapes: &mut [&mut Tape<B, N>],
    weights: &[f32],
    chunk: usize,
) -> Result<()> {
    // Each replica's gradient regions, in parameter order (the same on every replica).
    let mut per_replica: Vec<Vec<&mut [f32]>> = Vec::with_capacity(tapes.len());
    for t in tapes.iter_mut() {
        let views = gradient_regions(&**t)?;
        per_replica.push(disjoint_mut(t.backend_mut().storage_mut(), &views)?);
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
    /// Runs `f` on every replica (index, model), in parallel where the backend allows.
    fn each<F>(&self, models: &mut [Model<B>], f: F) -> Vec<crate::Result<(f32, usize)>>
    where
        F: Fn(usize, &mut Model<B>) -> crate::Result<(f32, usize)> + Sync + Send;

    /// Replaces every replica's gradients with `sum_r weights[r] grad_r` (over every replica
    /// of the run, in other processes too).
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
}

/// Replicas on rayon's threads, gradients summed in shared memory
/// ([`all_reduce_gradients`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedMemory;

impl<B: HostBackend<Elem = f32> + Send> Reduce<B> for SharedMemory {
    fn each<F>(&self, models: &mut [Model<B>], f: F) -> Vec<crate::Result<(f32, usize)>>
    where
        F: Fn(usize, &mut Model<B>) -> crate::Result<(f32, usize)> + Sync + Send,
    {
        if models.len() > 1 {
            models
                .par_iter_mut()
                .enumerate()
                .map(|(r, m)| f(r, m))
                .collect()
        } else {
            models
                .iter_mut()
                .enumerate()
                .map(|(r, m)| f(r, m))
                .collect()
        }
    }

    fn all_reduce(&mut self, models: &mut [Model<B>], weights: &[f32]) -> crate::Result<()> {
        if models.len() > 1 {
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
        if let Some(g) = tape.grad(p)? {
            v.push((g.offset, g.len()));
        }
    }
    Ok(v)
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
    models: Vec<Model<B>>,
    reduce: R,
}

impl<B: HostBackend<Elem = f32> + Send> Replicas<B, SharedMemory> {
    /// Replicas on CPU threads, from models built alike (the same spec, seed or checkpoint).
    ///
    /// # Errors
    /// `Invalid` for no models, or models that do not start with the same parameters.
    pub fn new(models: Vec<Model<B>>) -> crate::Result<Self> {
        let r = Replicas::with_reduce(models, SharedMemory)?;
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
}

impl<B: Backend<Elem = f32>, R: Reduce<B>> crate::train::Learner for Replicas<B, R> {
    type Backend = B;

    fn model(&self) -> &Model<B> {
        // `with_reduce` refuses an empty list.
        &self.models[0]
    }

    fn set_lr(&mut self, lr: f64) {
        for m in &mut self.models {
            mote::Optimizer::set_lr(&mut m.opt, lr);
        }
    }

    fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> crate::Result<(f32, usize)> {
        let k = self.models.len();
        // Global shards: replica r of this process takes shard `first + r` of `world`.
        let (first, world) = self.reduce.place(k);
        let ins = self.models[0].spec.inputs();
        let bounds = move |r: usize| (first + r) * rows / world.max(1);
        let results = self.reduce.each(&mut self.models, |r, m| {
            let (lo, hi) = (bounds(r), bounds(r + 1));
            if lo == hi {
                // No rows: zeroed gradients (weight 0 in the sum).
                m.tape.rewind(m.start)?;
                return Ok((0.0, 0));
            }
            let xs = x.get(lo * ins..hi * ins).unwrap_or(&[]);
            let yc = y_class.get(lo..hi).unwrap_or(&[]);
            let yv = y_value.get(lo..hi).unwrap_or(&[]);
            m.forward_backward(xs, hi - lo, yc, yv)
        });
        let weights: Vec<f32> = (0..k)
            .map(|r| (bounds(r + 1) - bounds(r)) as f32 / rows.max(1) as f32)
            .collect();
        let (mut loss, mut correct) = (0.0f64, 0);
        for (res, &w) in results.into_iter().zip(&weights) {
            let (l, c) = res?;
            loss += f64::from(w) * f64::from(l);
            correct += c;
        }
        // With replicas in other processes, this process reports its own shards' mean loss
        // and their correct predictions scaled to the batch (the others' are not read back).
        let share: f32 = weights.iter().sum();
        if world > k && share > 0.0 {
            loss /= f64::from(share);
            correct = (correct as f64 / f64::from(share)).round() as usize;
        }
        self.reduce.all_reduce(&mut self.models, &weights)?;
        // The same step on every replica (in parallel where the backend allows).
        for r in self.reduce.each(&mut self.models, |_, m| {
            mote::Optimizer::step(&mut m.opt, &mut m.tape)?;
            Ok((0.0, 0))
        }) {
            r?;
        }
        Ok((loss as f32, correct))
    }

    fn outputs(&mut self, x: &[f32], rows: usize) -> crate::Result<Vec<f32>> {
        self.reduce.prepare(&self.models[0])?;
        self.models[0].outputs(x, rows)
    }
}

/// Replicas on GPUs, one per device of this process, their gradients summed by NCCL
/// (`mote_cuda::Nccl`): `mote train --device cuda --gpus N`. Each replica's gradients are
/// first scaled by its shard's weight on its own GPU, then summed across the GPUs in place.
/// The shards are launched one after another from this thread (each GPU's work is
/// asynchronous, but a shard's loss is read before the next shard starts).
///
/// In a multi-process run ([`crate::rendezvous`]) each process holds one replica, rank `r` of
/// the run: it trains on shard `r` of every batch and NCCL sums across the processes.
#[cfg(feature = "cuda")]
pub struct NcclReduce {
    nccl: mote_cuda::Nccl,
}

#[cfg(feature = "cuda")]
impl NcclReduce {
    /// Reduces through `nccl`, whose communicators are in the order of the replicas (of this
    /// process; their global ranks are `nccl.ranks()`, consecutive).
    pub fn new(nccl: mote_cuda::Nccl) -> Self {
        NcclReduce { nccl }
    }
}

#[cfg(feature = "cuda")]
impl Reduce<mote_cuda::Cuda> for NcclReduce {
    fn each<F>(
        &self,
        models: &mut [Model<mote_cuda::Cuda>],
        f: F,
    ) -> Vec<crate::Result<(f32, usize)>>
    where
        F: Fn(usize, &mut Model<mote_cuda::Cuda>) -> crate::Result<(f32, usize)> + Sync + Send,
    {
        // One thread drives every GPU: each replica's work in its own device's context.
        models
            .iter_mut()
            .enumerate()
            .map(|(r, m)| {
                self.prepare(m)?;
                f(r, m)
            })
            .collect()
    }

    fn prepare(&self, model: &Model<mote_cuda::Cuda>) -> crate::Result<()> {
        model
            .tape
            .backend()
            .make_current()
            .map_err(|e| crate::Error::invalid(format!("{e}")))
    }

    fn all_reduce(
        &mut self,
        models: &mut [Model<mote_cuda::Cuda>],
        weights: &[f32],
    ) -> crate::Result<()> {
        let Some(first) = models.first() else {
            return Ok(());
        };
        let regions = gradient_regions(&first.tape)?;
        for (m, &w) in models.iter_mut().zip(weights) {
            self.prepare(m)?;
            if w != 1.0 {
                for &(offset, len) in &regions {
                    m.tape.backend_mut().scale(offset, len, w)?;
                }
            }
        }
        let mut backends: Vec<&mut mote_cuda::Cuda> =
            models.iter_mut().map(|m| m.tape.backend_mut()).collect();
        self.nccl
            .all_reduce_sum(&mut backends, &regions)
            .map_err(|e| crate::Error::invalid(format!("NCCL all-reduce: {e}")))
    }

    fn place(&self, _local: usize) -> (usize, usize) {
        (
            self.nccl.ranks().first().copied().unwrap_or(0),
            self.nccl.world(),
        )
    }
}
