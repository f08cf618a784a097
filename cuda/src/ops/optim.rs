//! Optimizer updates: kernels/optim.cu.
//!
//! Optimizer updates are queued and run together: the core calls [`mote::Backend::adam`] (or
//! [`mote::Backend::rms`], [`mote::Backend::sgd`]) once per parameter, and the queue turns
//! consecutive calls with the same settings into one `adam_multi` (`rms_multi`, `sgd_multi`)
//! launch over a descriptor table (uploaded once and reused while the parameters stay where
//! they are). The queue is flushed before any other backend call, so ordering is unchanged.

use mote::backend::{split_mut, split_rms};
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Error, Result};

use super::THREADS;
use crate::graph::Slot;
use crate::Cuda;

/// Elements of one tile (one block) of `adam_multi`, `rms_multi` and `sgd_multi`; `OPT_TILE`
/// in optim.cu.
const OPT_TILE: usize = 4096;
/// An absent buffer in an `rms_multi` or `sgd_multi` descriptor; `OPT_NONE` in optim.cu.
const OPT_NONE: u64 = u64::MAX;

/// Optimizer updates waiting for one launch, of one kind only (an update of another kind
/// flushes the queue first).
#[derive(Debug, Default)]
pub(crate) struct UpdateQueue {
    adam: Vec<AdamUpdate>,
    rms: Vec<RmsUpdate>,
    sgd: Vec<SgdUpdate>,
}

impl UpdateQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.adam.is_empty() && self.rms.is_empty() && self.sgd.is_empty()
    }

    /// Drops the queued updates (those of a failed capture).
    pub(crate) fn clear(&mut self) {
        self.adam.clear();
        self.rms.clear();
        self.sgd.clear();
    }

    /// How many kinds of update are queued.
    fn kinds(&self) -> usize {
        usize::from(!self.adam.is_empty())
            + usize::from(!self.rms.is_empty())
            + usize::from(!self.sgd.is_empty())
    }
}

/// The per-launch constants of an Adam update, as the kernel takes them.
struct AdamScalars {
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    step: f32,
    isb2: f32,
    eps: f32,
    l2: f32,
    decay: f32,
}

/// The reference kernel's constants (`mote::optim::adam_kernel`), rounded the same way.
fn scalars(u: &AdamUpdate) -> AdamScalars {
    let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
    let (l2, decay) = if u.decoupled {
        (0.0, (1.0 - u.lr * u.weight_decay) as f32)
    } else {
        (u.weight_decay as f32, 1.0)
    };
    AdamScalars {
        b1,
        b2,
        c1: 1.0 - b1,
        c2: 1.0 - b2,
        step: (u.lr / u.bias1) as f32,
        isb2: (1.0 / u.bias2.sqrt()) as f32,
        eps: u.eps as f32,
        l2,
        decay,
    }
}

/// Same settings (all but the tensor): can share one launch.
fn same_settings(a: &AdamUpdate, b: &AdamUpdate) -> bool {
    a.vmax.is_some() == b.vmax.is_some()
        && a.lr == b.lr
        && a.beta1 == b.beta1
        && a.beta2 == b.beta2
        && a.eps == b.eps
        && a.weight_decay == b.weight_decay
        && a.decoupled == b.decoupled
        && a.bias1 == b.bias1
        && a.bias2 == b.bias2
}

impl Cuda {
    /// Where a captured update finds its step-dependent scalars: `(dyn, rec)`, both 0 when not
    /// capturing. Records what the replays need to advance them. `dyn`: a slot of the dyn area
    /// that `graph_tick` (launched here before the first such update) writes each replay.
    /// `rec`: the record itself, for the step's only optimizer launch, made as the step closes
    /// (`own_tick`: an `adam_multi` launch, which then advances the record itself, and the
    /// graph has no tick node).
    fn dyn_slot(&self, slot: Slot, own_tick: bool) -> Result<(u64, u64)> {
        let mut guard = self.capture.borrow_mut();
        let Some(cap) = guard.as_mut() else {
            return Ok((0, 0));
        };
        // Launches of one step with the same scalars (SGD's or Adagrad's, one per tensor)
        // share one slot: one record for the tick to advance, and room for large models.
        // (`ticked`: the slots so far are the tick's, not a closing launch's own record.)
        let same = cap.slots.iter().position(|s| *s == slot);
        if let Some(i) = same.filter(|_| cap.ticked) {
            let at = cap.slots.iter().take(i).map(Slot::width).sum::<usize>();
            return Ok((self.dyn_ + 4 * at as u64, 0));
        }
        let at = cap.slots.iter().map(Slot::width).sum::<usize>();
        if at + slot.width() > crate::device::DYN_SLOTS {
            return Err(Error::Device {
                what: "too many optimizer launches in one captured graph",
            });
        }
        cap.slots.push(slot);
        if own_tick && self.fuse && cap.closing && cap.slots.len() == 1 {
            // Record 0, after the table's count.
            return Ok((0, cap.rec + 8));
        }
        let (rec, tick) = (cap.rec, !cap.ticked);
        cap.ticked = true;
        drop(guard);
        if tick {
            let dyn_ = self.dyn_;
            self.launch("graph_tick", 1, 64, &[&rec, &dyn_])?;
        }
        Ok((self.dyn_ + 4 * at as u64, 0))
    }

    pub(crate) fn sgd_impl(&mut self, u: &SgdUpdate) -> Result<()> {
        let n = u.len;
        let r = |o: usize| o..o.saturating_add(n);
        match u.momentum_buf {
            Some(m) => split_mut(&mut self.shadow, [r(u.param), r(u.grad), r(m)]).map(|_| ())?,
            None => split_mut(&mut self.shadow, [r(u.param), r(u.grad)]).map(|_| ())?,
        }
        if n == 0 {
            return Ok(());
        }
        self.enqueue(u, |q| &mut q.sgd, same_sgd, |u| u.param)
    }

    /// Queues `u` in its kind's list (`list`), after running the queue where it holds another
    /// kind of update, updates whose settings differ (`same`), or an update of the same
    /// parameter (`param`: two steps with nothing between them, whose updates one launch would
    /// run at once on the same elements): everything held back first, which the queued
    /// updates may read.
    fn enqueue<U: Copy>(
        &self,
        u: &U,
        list: fn(&mut UpdateQueue) -> &mut Vec<U>,
        same: fn(&U, &U) -> bool,
        param: fn(&U) -> usize,
    ) -> Result<()> {
        let differs = {
            let mut q = self.updates.borrow_mut();
            let own = !list(&mut q).is_empty();
            let queued = list(&mut q);
            let clash = queued.first().is_some_and(|f| !same(f, u))
                || queued.iter().any(|q| param(q) == param(u));
            q.kinds() > usize::from(own) || clash
        };
        if differs {
            self.flush()?;
        }
        list(&mut self.updates.borrow_mut()).push(*u);
        Ok(())
    }

    /// RMSprop and Adagrad: queued as Adam's updates are (see the module docs).
    pub(crate) fn rms_impl(&mut self, u: &RmsUpdate) -> Result<()> {
        split_rms(&mut self.shadow, u)?;
        if u.len == 0 {
            return Ok(());
        }
        self.enqueue(u, |q| &mut q.rms, same_rms, |u| u.param)
    }

    pub(crate) fn adam_impl(&mut self, u: &AdamUpdate) -> Result<()> {
        let n = u.len;
        let r = |o: usize| o..o.saturating_add(n);
        match u.vmax {
            Some(vm) => split_mut(
                &mut self.shadow,
                [r(u.param), r(u.grad), r(u.m), r(u.v), r(vm)],
            )
            .map(|_| ())?,
            None => {
                split_mut(&mut self.shadow, [r(u.param), r(u.grad), r(u.m), r(u.v)]).map(|_| ())?
            }
        }
        if n == 0 {
            return Ok(());
        }
        self.enqueue(u, |q| &mut q.adam, same_settings, |u| u.param)
    }
}

/// Same settings (all but the tensor and its buffers): can share one `rms_multi` launch.
fn same_rms(a: &RmsUpdate, b: &RmsUpdate) -> bool {
    a.lr == b.lr
        && a.lr_decay == b.lr_decay
        && a.step == b.step
        && a.alpha == b.alpha
        && a.gain == b.gain
        && a.eps == b.eps
        && a.weight_decay == b.weight_decay
        && a.momentum == b.momentum
}

/// Same settings (all but the tensor and its buffer): can share one `sgd_multi` launch.
fn same_sgd(a: &SgdUpdate, b: &SgdUpdate) -> bool {
    a.lr == b.lr
        && a.momentum == b.momentum
        && a.dampening == b.dampening
        && a.weight_decay == b.weight_decay
        && a.nesterov == b.nesterov
        && a.first == b.first
}

/// Runs the queued updates (the held-back work they may read is launched by the caller).
pub(crate) fn flush_updates(be: &Cuda) -> Result<()> {
    let (adam, rms, sgd) = {
        let mut q = be.updates.borrow_mut();
        (
            std::mem::take(&mut q.adam),
            std::mem::take(&mut q.rms),
            std::mem::take(&mut q.sgd),
        )
    };
    flush_adam(be, &adam)?;
    flush_rms(be, &rms)?;
    flush_sgd(be, &sgd)
}

/// The table of a multi-tensor launch: `row(u)`'s words then the update's first tile, for
/// each update; and the tiles in all. Uploaded (or found uploaded) when there are several
/// updates and the grid fits; `None` otherwise (one launch per tensor).
fn multi_table<U>(
    be: &Cuda,
    pending: &[U],
    len: impl Fn(&U) -> usize,
    row: impl Fn(&U) -> Vec<u64>,
) -> Result<Option<(u64, u32)>> {
    let mut words = Vec::new();
    let mut tiles = 0usize;
    for u in pending {
        words.extend(row(u));
        words.push(tiles as u64);
        tiles += len(u).div_ceil(OPT_TILE);
    }
    if pending.len() < 2 || tiles > crate::device::MAX_GRID_X as usize {
        return Ok(None);
    }
    Ok(be.upload_table(words)?.map(|t| (t, tiles as u32)))
}

/// Runs queued SGD updates: one `sgd_multi` launch when there are several and the table fits,
/// else one `sgd` launch per tensor. The first-step flag is a dyn slot in a captured graph.
fn flush_sgd(be: &Cuda, pending: &[SgdUpdate]) -> Result<()> {
    let Some(u0) = pending.first().copied() else {
        return Ok(());
    };
    // The first-step flag changes between replays only where a captured first step has a
    // momentum buffer to set: otherwise it is a constant, and the graph needs no tick for it.
    let moving = u0.first && pending.iter().any(|u| u.momentum_buf.is_some());
    let dyn_ = if moving {
        be.dyn_slot(Slot::Sgd { first: u0.first }, false)?.0
    } else {
        0
    };
    let (lr, mu) = (u0.lr as f32, u0.momentum as f32);
    let (damp, wd) = ((1.0 - u0.dampening) as f32, u0.weight_decay as f32);
    let (nest, first) = (i32::from(u0.nesterov), i32::from(u0.first));
    let table = multi_table(
        be,
        pending,
        |u| u.len,
        |u| {
            vec![
                u.param as u64,
                u.grad as u64,
                u.momentum_buf.map_or(OPT_NONE, |o| o as u64),
                u.len as u64,
            ]
        },
    )?;
    if let Some((t, tiles)) = table {
        let (arena, count) = (be.base, pending.len() as i32);
        return be.launch(
            "sgd_multi",
            tiles,
            THREADS,
            &[
                &arena, &t, &count, &lr, &mu, &damp, &wd, &nest, &first, &dyn_,
            ],
        );
    }
    for u in pending {
        let (p, g) = (be.at(u.param), be.at(u.grad));
        let buf = u.momentum_buf.map_or(0, |m| be.at(m));
        let n = u.len as u64;
        be.launch(
            "sgd",
            be.blocks(n, THREADS),
            THREADS,
            &[&p, &g, &buf, &n, &lr, &mu, &damp, &wd, &nest, &first, &dyn_],
        )?;
    }
    Ok(())
}

/// Runs queued RMSprop or Adagrad updates: one `rms_multi` launch when there are several and
/// the descriptor table fits, else one `rms` launch per tensor. Adagrad's decaying rate is a
/// dyn slot in a captured graph (advanced per replay); every other scalar is constant.
fn flush_rms(be: &Cuda, pending: &[RmsUpdate]) -> Result<()> {
    let Some(u0) = pending.first().copied() else {
        return Ok(());
    };
    let dyn_ = if u0.lr_decay != 0.0 {
        let slot = Slot::Rate {
            lr: u0.lr,
            lr_decay: u0.lr_decay,
            step: u0.step,
        };
        be.dyn_slot(slot, false)?.0
    } else {
        0
    };
    let (lr, a, c) = (u0.rate() as f32, u0.alpha as f32, u0.gain as f32);
    let (eps, wd, mu) = (u0.eps as f32, u0.weight_decay as f32, u0.momentum as f32);
    // Descriptor table: p, g, sq, avg, buf, len, first tile.
    let table = multi_table(
        be,
        pending,
        |u| u.len,
        |u| {
            vec![
                u.param as u64,
                u.grad as u64,
                u.sq as u64,
                u.avg.map_or(OPT_NONE, |o| o as u64),
                u.momentum_buf.map_or(OPT_NONE, |o| o as u64),
                u.len as u64,
            ]
        },
    )?;
    if let Some((t, tiles)) = table {
        let (arena, count) = (be.base, pending.len() as i32);
        return be.launch(
            "rms_multi",
            tiles,
            THREADS,
            &[&arena, &t, &count, &lr, &a, &c, &eps, &wd, &mu, &dyn_],
        );
    }
    for u in pending {
        let (p, g, sq) = (be.at(u.param), be.at(u.grad), be.at(u.sq));
        let avg = u.avg.map_or(0, |o| be.at(o));
        let buf = u.momentum_buf.map_or(0, |o| be.at(o));
        let n = u.len as u64;
        be.launch(
            "rms",
            be.blocks(n, THREADS),
            THREADS,
            &[
                &p, &g, &sq, &avg, &buf, &n, &lr, &a, &c, &eps, &wd, &mu, &dyn_,
            ],
        )?;
    }
    Ok(())
}

/// Runs queued Adam (and AMSGrad) updates: one `adam_multi` launch when there are several and
/// the descriptor table fits, else one `adam` launch per tensor.
fn flush_adam(be: &Cuda, pending: &[AdamUpdate]) -> Result<()> {
    let Some(first) = pending.first().copied() else {
        return Ok(());
    };
    let s = scalars(&first);
    // Descriptor table: p, g, m, v, AMSGrad's maximum (or none), len, first tile.
    let table = multi_table(
        be,
        pending,
        |u| u.len,
        |u| {
            vec![
                u.param as u64,
                u.grad as u64,
                u.m as u64,
                u.v as u64,
                u.vmax.map_or(OPT_NONE, |o| o as u64),
                u.len as u64,
            ]
        },
    )?;
    let slot = Slot::Adam {
        lr: first.lr,
        beta1: first.beta1,
        beta2: first.beta2,
        bias1: first.bias1,
        bias2: first.bias2,
    };
    let (dyn_, rec) = be.dyn_slot(slot, table.is_some())?;
    let AdamScalars {
        b1,
        b2,
        c1,
        c2,
        step,
        isb2,
        eps,
        l2,
        decay,
    } = s;
    match table {
        Some((t, tiles)) => {
            let (arena, count) = (be.base, pending.len() as i32);
            be.launch(
                "adam_multi",
                tiles,
                THREADS,
                &[
                    &arena, &t, &count, &b1, &b2, &c1, &c2, &step, &isb2, &eps, &l2, &decay, &dyn_,
                    &rec,
                ],
            )
        }
        None => {
            for u in pending {
                let p = [be.at(u.param), be.at(u.grad), be.at(u.m), be.at(u.v)];
                let vm = u.vmax.map_or(0, |o| be.at(o));
                // AMSGrad's path reads one element a thread.
                let vec = if u.vmax.is_some() {
                    0
                } else {
                    Cuda::vec4(&[u.param, u.grad, u.m, u.v])
                };
                let n = u.len as u64;
                let work = if vec == 1 { n / 4 + 3 } else { n };
                be.launch(
                    "adam",
                    be.blocks(work, THREADS),
                    THREADS,
                    &[
                        &p[0], &p[1], &p[2], &p[3], &vm, &n, &b1, &b2, &c1, &c2, &step, &isb2,
                        &eps, &l2, &decay, &dyn_, &vec,
                    ],
                )?;
            }
            Ok(())
        }
    }
}
