//! Whole-step CUDA graphs: capture one training step (gradients zeroed, forward, loss,
//! backward, optimizer update) once, then replay it each step after writing the new batch into
//! the same arena offsets.
//!
//! This works because a step on a tape allocates the same offsets every time: after
//! `tape.rewind(mark)`, the same ops in the same order land in the same places.
//!
//! What a replay does and does not do:
//! - every kernel and cuBLAS call of the step runs again, on the data now in the arena;
//! - host-to-device writes made inside the step (`tape.input(...)`, `tape.labels(...)`) are
//!   *not* part of the graph: they happened once, at capture; write each new batch with
//!   [`Graph::write`] (or `tape.write(var, data)`) before [`Graph::replay`];
//! - optimizer scalars that change per step (Adam's bias corrections, SGD's first-step flag,
//!   Adagrad's decaying rate) live in device memory and are advanced on the device (by `graph_tick`, launched before
//!   the step's first optimizer launch, or by the step's one Adam launch itself), so a
//!   replay is one `cuGraphLaunch` and nothing else; the host-side optimizer's step
//!   count does not move (replays bypass it), so do not mix replays and eager steps of the same
//!   optimizer, and a learning-rate change needs a new capture;
//! - the step must not read from the device (`tape.item`, `clip_grad_norm`): those calls return
//!   [`mote::Error::Device`] during capture;
//! - nor hold ops that the host drives ([`mote::Backend::host_dependent`]): an embedding (its
//!   rows are found by reading the indices), [`mote::Dropout`] (its mask is drawn on the host)
//!   or [`mote::BatchNorm`] in training mode (running statistics updated on the host) would be
//!   frozen into every replay; they return [`mote::Error::InvalidArgument`] during capture.

use cudarc::driver::sys;
use cudarc::driver::CudaGraph;
use mote::{Mark, Result, Tape, Var};

use crate::device::Capture;
use crate::error::CudaError;
use crate::Cuda;

/// Step-dependent optimizer records (slots) one captured step may hold: one per launch with
/// its own step scalars (launches with the same scalars share one).
const MAX_SLOTS: usize = 256;

/// A step-dependent scalar of a captured optimizer launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Slot {
    /// SGD's "first step" flag (1 float).
    Sgd { first: bool },
    /// Adam's `lr / (1 - b1^t)` and `1 / sqrt(1 - b2^t)` (2 floats), from the values at capture.
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        bias1: f64,
        bias2: f64,
    },
    /// A decaying rate, `lr / (1 + (t - 1) lr_decay)` (1 float; Adagrad's), from step `step`.
    Rate { lr: f64, lr_decay: f64, step: u64 },
}

impl Slot {
    pub(crate) fn width(&self) -> usize {
        match self {
            Slot::Sgd { .. } | Slot::Rate { .. } => 1,
            Slot::Adam { .. } => 2,
        }
    }

    /// The record the `graph_tick` kernel keeps for this slot (8 doubles, see optim.cu), with
    /// its outputs at `out` in the dyn area.
    fn record(&self, out: usize) -> [f64; 8] {
        match *self {
            Slot::Sgd { first } => [
                0.0,
                out as f64,
                f64::from(u8::from(first)),
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            ],
            // NOTE: beta^t is recovered as 1 - bias: exact (Sterbenz) while beta^t >= 0.5, i.e.
            // when capturing within the first 6 steps at beta1 = 0.9; later captures may differ
            // from eager steps by one f64 ulp of beta^t.
            Slot::Adam {
                lr,
                beta1,
                beta2,
                bias1,
                bias2,
            } => [
                1.0,
                out as f64,
                lr,
                beta1,
                beta2,
                1.0 - bias1,
                1.0 - bias2,
                0.0,
            ],
            Slot::Rate { lr, lr_decay, step } => {
                [2.0, out as f64, lr, lr_decay, step as f64, 0.0, 0.0, 0.0]
            }
        }
    }

    /// The values for replay `k` (0: the step as captured): what `graph_tick` computes.
    #[cfg(test)]
    fn values(&self, k: u64, out: &mut Vec<f32>) {
        match *self {
            Slot::Sgd { first } => out.push(if first && k == 0 { 1.0 } else { 0.0 }),
            Slot::Adam {
                lr,
                beta1,
                beta2,
                bias1,
                bias2,
            } => {
                // beta^(t + k) = (1 - bias) beta^k.
                let b1 = 1.0 - (1.0 - bias1) * beta1.powf(k as f64);
                let b2 = 1.0 - (1.0 - bias2) * beta2.powf(k as f64);
                out.push((lr / b1) as f32);
                out.push((1.0 / b2.sqrt()) as f32);
            }
            Slot::Rate { lr, lr_decay, step } => {
                let t = (step + k) as f64;
                out.push((lr / (1.0 + (t - 1.0) * lr_decay)) as f32);
            }
        }
    }
}

/// A captured training step. See the [module docs](self).
///
/// ```no_run
/// use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Relu, Rng, Tape};
/// use mote_cuda::{Cuda, Graph};
///
/// let mut tape = Tape::<Cuda, 64>::with_backend(Cuda::new(1 << 20)?);
/// let mut rng = Rng::new(0);
/// let model = (Linear::new(&mut tape, 8, 10, &mut rng)?, Relu, Linear::new(&mut tape, 10, 1, &mut rng)?);
/// let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
/// let start = tape.mark();
/// let (xs, ys) = (vec![0.5f32; 64 * 8], vec![1.0f32; 64]);
/// let mut graph = Graph::capture(&mut tape, start, |tape| {
///     let x = tape.input(&[64, 8], &xs)?;
///     let y = tape.input(&[64, 1], &ys)?;
///     let pred = model.forward(tape, x)?;
///     let loss = tape.mse(pred, y)?;
///     tape.backward(loss)?;
///     opt.step(tape)?;
///     Ok((x, y, loss))
/// })?;
/// for _ in 0..1000 {
///     let (x, y, _) = *graph.output();
///     graph.write(&mut tape, x, &xs)?; // the next batch
///     graph.write(&mut tape, y, &ys)?;
///     graph.replay(&mut tape)?;
/// }
/// let loss = tape.item(graph.output().2)?;
/// # let _ = loss;
/// # Ok::<(), mote_cuda::CudaError>(())
/// ```
pub struct Graph<R> {
    graph: CudaGraph,
    output: R,
    replays: u64,
    launches: usize,
    /// Whether the step holds a loss kernel that checks its labels: each replay then leaves
    /// the status words to be read by the next read (a bad label is an error there).
    labels: bool,
    /// The device address of the captured backend's arena: a replay on another tape (whose
    /// arena the graph does not address) is refused.
    arena: u64,
}

impl<R> std::fmt::Debug for Graph<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("replays", &self.replays)
            .field("launches", &self.launches)
            .finish()
    }
}

fn dev(be: &Cuda, what: &'static str, e: impl std::fmt::Display) -> CudaError {
    let _ = be.fail(what, &e);
    CudaError::Driver {
        what,
        message: e.to_string(),
    }
}

impl<R> Graph<R> {
    /// Captures one step: rewinds the tape to `mark` (keeping nothing above it), zeroes every
    /// parameter's gradient, runs `step` (forward, loss, backward, optimizer) and records every
    /// launch into a CUDA graph instead of running it. Nothing is computed until the first
    /// [`Graph::replay`]; inputs written inside `step` are in place for it.
    ///
    /// # Errors
    /// The step's own error, or [`CudaError::Driver`] when capture or instantiation fails; a
    /// bad label from an earlier eager loss, reported by the synchronisation capture starts
    /// with (the status is cleared: capturing again works). A failed capture runs nothing of
    /// the step (what it held back is dropped); the optimizer's host-side state (its step
    /// count) has advanced if `step` called it.
    pub fn capture<const N: usize>(
        tape: &mut Tape<Cuda, N>,
        mark: Mark,
        step: impl FnOnce(&mut Tape<Cuda, N>) -> Result<R>,
    ) -> std::result::Result<Graph<R>, CudaError> {
        tape.backend_mut().sync()?;
        let be = tape.backend_mut();
        // Whether the step launches a label-checking loss is seen by the flag it sets; a check
        // an earlier eager loss left pending stays pending.
        let pending = be.loss_pending.replace(false);
        let rec_bytes = 8 * (1 + 8 * MAX_SLOTS);
        let rec = be.reserve_table(rec_bytes).ok_or(mote::Error::Device {
            what: "descriptor area full: too many captured graphs",
        });
        *be.capture.borrow_mut() = Some(Capture {
            rec: *rec.as_ref().unwrap_or(&0),
            ..Capture::default()
        });
        if let Err(e) = be
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        {
            *be.capture.borrow_mut() = None;
            if let Ok(at) = rec {
                be.unreserve_table(at, rec_bytes);
            }
            return Err(dev(be, "cuStreamBeginCapture", e));
        }
        // The records of the step's optimizer launches (written below, once the step is known)
        // live in a region of the table area owned by this graph; `graph_tick` advances them
        // before the first launch that reads them, or the step's one Adam launch does
        // (`src/ops/optim.rs`).
        let out = (|| -> Result<R> {
            let rec = rec?;
            tape.rewind_keep_grad(mark)?;
            zero_grads(tape)?;
            let r = step(tape)?;
            let be = tape.backend_mut();
            if let Some(c) = be.capture.borrow_mut().as_mut() {
                c.closing = true;
            }
            be.flush()?;
            let slots = be
                .capture
                .borrow()
                .as_ref()
                .map(|c| c.slots.clone())
                .unwrap_or_default();
            if slots.len() > MAX_SLOTS {
                return Err(mote::Error::Device {
                    what: "too many optimizer launches with their own step scalars in one \
                           captured step",
                });
            }
            let mut words = vec![slots.len() as f64];
            let mut out = 0;
            for s in &slots {
                words.extend(s.record(out));
                out += s.width();
            }
            be.copy_in_untracked(rec, &words)?;
            Ok(r)
        })();
        let be = tape.backend_mut();
        let ended = be.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        *be.capture.borrow_mut() = None;
        let labels = be.loss_pending.replace(pending);
        // Nothing of a failed capture runs: what it held back is dropped with it, and its
        // record given back (`sync` above flushed everything from before).
        let failed = |be: &Cuda| {
            drop(be.pending.borrow_mut().take_all());
            be.updates.borrow_mut().clear();
            if let Ok(at) = rec {
                be.unreserve_table(at, rec_bytes);
            }
        };
        let (output, graph) = match (out, ended) {
            // The driver ends a capture that recorded nothing with an empty graph.
            (Ok(_), Ok(Some(g))) if count_nodes(&g) == 0 => {
                failed(be);
                return Err(CudaError::Driver {
                    what: "cuStreamEndCapture",
                    message: "the step launched nothing".into(),
                });
            }
            (Ok(o), Ok(Some(g))) => (o, g),
            (Err(e), _) => {
                failed(be);
                return Err(e.into());
            }
            (Ok(_), Ok(None)) => {
                failed(be);
                return Err(CudaError::Driver {
                    what: "cuStreamEndCapture",
                    message: "the capture ended without a graph".into(),
                });
            }
            (Ok(_), Err(e)) => {
                failed(be);
                return Err(dev(be, "cuStreamEndCapture", e));
            }
        };
        if let Err(e) = graph.upload() {
            failed(be);
            return Err(dev(be, "cuGraphUpload", e));
        }
        let launches = count_nodes(&graph);
        Ok(Graph {
            graph,
            output,
            replays: 0,
            launches,
            labels,
            arena: be.at(0),
        })
    }

    /// What the step returned at capture (typically the input, target and loss handles).
    pub fn output(&self) -> &R {
        &self.output
    }

    /// Replays done so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Nodes (kernels, copies, memsets) in the graph: the launches of one step.
    pub fn nodes(&self) -> usize {
        self.launches
    }

    /// Writes host data into `v` (an input of the captured step) for the next replay.
    ///
    /// # Errors
    /// As [`Tape::write`].
    pub fn write<const N: usize>(
        &self,
        tape: &mut Tape<Cuda, N>,
        v: Var,
        data: &[f32],
    ) -> Result<()> {
        tape.write(v, data)
    }

    /// Runs the captured step once more (asynchronously: read a result, or call
    /// [`Cuda::sync`], to wait for it).
    ///
    /// # Errors
    /// [`mote::Error::InvalidArgument`] for a tape other than the one captured (the graph
    /// addresses that tape's arena); [`mote::Error::Device`] when the launch fails (see
    /// [`Cuda::last_error`]).
    pub fn replay<const N: usize>(&mut self, tape: &mut Tape<Cuda, N>) -> Result<()> {
        let be = tape.backend_mut();
        if be.at(0) != self.arena {
            return Err(mote::Error::InvalidArgument {
                what: "Graph::replay: not the tape the graph was captured on",
            });
        }
        be.flush()?;
        self.graph
            .launch()
            .map_err(|e| be.fail("cuGraphLaunch", e))?;
        if self.labels {
            be.loss_pending.set(true);
        }
        self.replays += 1;
        Ok(())
    }
}

/// Zeroes every parameter gradient: held back ([`crate::Options::fuse`]: the products and
/// kernels that first write each gradient overwrite it instead, and what is left is zeroed
/// before the optimizer, in one launch when three or more are left), else in one launch (or one per gradient when the
/// descriptor area is full).
fn zero_grads<const N: usize>(tape: &mut Tape<Cuda, N>) -> Result<()> {
    let params: Vec<Var> = tape.params().collect();
    let mut words = Vec::new();
    for p in params {
        if let Ok(Some(g)) = tape.grad(p) {
            words.extend_from_slice(&[g.offset as u64, g.len() as u64]);
        }
    }
    if words.is_empty() {
        return Ok(());
    }
    let be = tape.backend_mut();
    if !be.fuse && be.zero_ranges(words.clone())? {
        return Ok(());
    }
    for pair in words.chunks_exact(2) {
        be.fill_impl(pair[0] as usize, pair[1] as usize, 0.0)?;
    }
    Ok(())
}

fn count_nodes(g: &CudaGraph) -> usize {
    let mut n: usize = 0;
    // SAFETY: a null node array asks only for the count.
    let r =
        unsafe { sys::cuGraphGetNodes(g.cu_graph(), std::ptr::null_mut(), &mut n as *mut usize) };
    if r == sys::CUresult::CUDA_SUCCESS {
        n
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_slots_advance_the_bias_corrections() {
        let (b1, b2, lr) = (0.9f64, 0.999f64, 1e-3);
        let s = Slot::Adam {
            lr,
            beta1: b1,
            beta2: b2,
            bias1: 1.0 - b1,
            bias2: 1.0 - b2,
        };
        for k in 0..50u64 {
            let t = (k + 1) as i32;
            let mut v = Vec::new();
            s.values(k, &mut v);
            let want = [
                (lr / (1.0 - b1.powi(t))) as f32,
                (1.0 / (1.0 - b2.powi(t)).sqrt()) as f32,
            ];
            for (g, w) in v.iter().zip(want) {
                assert!((g - w).abs() <= 1e-6 * w.abs(), "replay {k}: {g} vs {w}");
            }
        }
        let mut v = Vec::new();
        Slot::Sgd { first: true }.values(0, &mut v);
        Slot::Sgd { first: true }.values(1, &mut v);
        assert_eq!(v, [1.0, 0.0]);
    }

    // Adagrad's rate for replay k of a step captured at step 4 is the host's rate of step
    // 4 + k, bit for bit.
    #[test]
    fn rate_slots_follow_the_host_optimizer() {
        use mote::{Adagrad, AdagradConfig};
        let config = AdagradConfig {
            lr: 0.05,
            lr_decay: 0.3,
            ..AdagradConfig::default()
        };
        let s = Slot::Rate {
            lr: config.lr,
            lr_decay: config.lr_decay,
            step: 4,
        };
        let mut host = Adagrad::detached(config).unwrap();
        host.set_steps(3);
        for k in 0..30u64 {
            let mut v = Vec::new();
            s.values(k, &mut v);
            let want = host.next_update().rate() as f32;
            assert_eq!(v, [want], "replay {k}");
        }
    }
}
