//! Losses (MSE, fused softmax cross-entropy, BCE with logits): kernels/loss.cu.
//!
//! NOTE: a bad cross-entropy label cannot be seen without waiting for the GPU, so the kernel
//! records it in the status words and the error ([`mote::Error::IndexOutOfRange`], as on the
//! CPU) comes from the next `read` (or [`Cuda::sync`]) instead of from the loss call itself.

use mote::backend::{split, View};
use mote::ops::loss::LossOp;
use mote::{Error, Result};

use super::{rg, THREADS};
use crate::pending::{overlaps, ColSum, Grad, GradKind, LossFwd, Write};
use crate::Cuda;

/// The kernels' op code; both cross-entropies are code 1, told apart by their smoothing.
fn code(op: LossOp) -> i32 {
    match op {
        LossOp::Mse => 0,
        LossOp::CrossEntropy | LossOp::CrossEntropySmoothed(_) => 1,
        LossOp::BceWithLogits => 2,
    }
}

impl Cuda {
    pub(crate) fn loss_fwd(
        &mut self,
        op: LossOp,
        classes: usize,
        p: View,
        t: View,
        y: usize,
    ) -> Result<()> {
        split(
            &mut self.shadow,
            y..y.saturating_add(1),
            [p.range(), t.range()],
        )?;
        let (c, sm) = (code(op), op.smoothing());
        if op.takes_labels() && classes == 0 {
            return Err(Error::InvalidArgument {
                what: "cross_entropy needs at least one class",
            });
        }
        // The bias of the linear layer whose output the predictions are, still owed (no
        // activation came between): added here, as the loss reads them. Not where the targets
        // overlap the predictions (the kernel reads them through a restricted pointer).
        let bias = if !overlaps(&p.range(), &t.range()) {
            self.pending
                .borrow_mut()
                .take_bias_add(p.offset, p.len(), rg(y, 1))
        } else {
            None
        };
        let mut reads = vec![p.range(), t.range()];
        if let Some(b) = bias {
            reads.push(rg(b.bias, b.cols));
        }
        self.settle(&reads, rg(y, 1), Write::Overwrite)?;
        let l = LossFwd {
            code: c,
            p: p.offset,
            plen: p.len(),
            t: t.offset,
            tlen: t.len(),
            y,
            classes,
            smoothing: sm,
            bias: bias.map(|b| (b.bias, b.cols)),
        };
        // Held for the backward's first kernel, which may compute it too (`src/pending.rs`).
        if !self.fuse {
            return self.launch_loss_fwd(&l);
        }
        let before = self.pending.borrow_mut().hold_loss(l);
        before.map_or(Ok(()), |b| self.launch_loss_fwd(&b))
    }

    /// `loss_fwd` of a held [`LossFwd`].
    pub(crate) fn launch_loss_fwd(&self, l: &LossFwd) -> Result<()> {
        let labels = l.code == 1;
        // The status is to be checked from the launch on (not from when the op was held: a
        // read before the launch would clear it).
        if labels {
            self.loss_pending.set(true);
        }
        // Rows for cross-entropy (one label each), elements for the others.
        let n = if labels { l.tlen } else { l.plen } as u64;
        let (bp, bcols) = match l.bias {
            Some((b, cols)) => (self.at(b), cols as u64),
            None => (0u64, 0u64),
        };
        let (pp, tp, yp, cl, st) = (
            self.at(l.p),
            self.at(l.t),
            self.at(l.y),
            l.classes as u64,
            self.status,
        );
        // Rows of 32 warps, or 8192 elements, per block (at most LOSS_BLOCKS): one block for
        // every small batch, the whole GPU for a large one.
        let per = if labels { 32 } else { 8192 };
        let grid = n.div_ceil(per).clamp(1, crate::device::LOSS_BLOCKS) as u32;
        let (c, sm) = (l.code, l.smoothing);
        self.launch(
            "loss_fwd",
            grid,
            1024,
            &[&c, &pp, &tp, &yp, &n, &cl, &st, &sm, &bp, &bcols],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn loss_bwd(
        &mut self,
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        let len = if lhs { p.len() } else { t.len() };
        split(
            &mut self.shadow,
            dx..dx.saturating_add(len),
            [p.range(), t.range(), dy..dy.saturating_add(1)],
        )?;
        let (c, sm) = (code(op), op.smoothing());
        if op.takes_labels() {
            if !lhs {
                return Ok(());
            }
            if classes == 0 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy needs at least one class",
                });
            }
        }
        // The backward's seed (a fill of dy held back) comes in as a value; a zeroed dx is
        // overwritten (`src/pending.rs`).
        let seed = self.pending.borrow_mut().take_seed(dy);
        // The loss's forward, held back: launched with this kernel (`src/pending.rs`).
        let fwd = self.pending.borrow_mut().take_loss(&LossFwd {
            code: c,
            p: p.offset,
            plen: p.len(),
            t: t.offset,
            tlen: t.len(),
            y: 0,
            classes,
            smoothing: sm,
            bias: None,
        });
        let mut reads = vec![p.range(), t.range()];
        if seed.is_none() {
            reads.push(rg(dy, 1));
        }
        if let Some((b, n)) = fwd.and_then(|f| f.bias) {
            reads.push(rg(b, n));
        }
        let acc = !self.settle(&reads, rg(dx, len), Write::Accumulate)?;
        let g = Grad {
            kind: GradKind::Loss {
                fwd,
                code: c,
                lhs,
                p: p.offset,
                plen: p.len(),
                t: t.offset,
                tlen: t.len(),
                dy,
                seed,
                classes,
                smoothing: sm,
            },
            dx,
            len,
            acc,
        };
        self.hold_grad(g)
    }

    /// `loss_bwd` of a held [`Grad`]; with `colsum`, the column sums of its output too
    /// (`loss_bwd_colsum`).
    pub(crate) fn launch_loss_bwd(&self, g: &Grad, colsum: Option<ColSum>) -> Result<()> {
        let GradKind::Loss {
            fwd,
            code: c,
            lhs,
            p,
            plen,
            t,
            tlen,
            dy,
            seed,
            classes,
            smoothing: sm,
        } = g.kind
        else {
            return Err(Error::Device {
                what: "loss_bwd: not a loss gradient",
            });
        };
        // Rows for cross-entropy (one label each), elements for the others.
        let n = if c == 1 { tlen } else { plen } as u64;
        if c == 1 {
            self.loss_pending.set(true);
        }
        let (seeded, seed) = (i32::from(seed.is_some()), seed.unwrap_or(0.0));
        let (l, acc) = (i32::from(lhs), i32::from(g.acc));
        let q = [self.at(p), self.at(t), self.at(dy), self.at(g.dx)];
        let (cl, st) = (classes as u64, self.status);
        // The forward in the same launch where that is one block (its sum then needs no
        // second pass); before it otherwise.
        let one_block = match colsum {
            Some(cs) => cs.blocks()? == 1,
            None => false,
        };
        let (mut yp, mut bp, mut bcols, mut with_fwd) = (0u64, 0u64, 0u64, 0i32);
        if let Some(f) = fwd {
            if one_block {
                yp = self.at(f.y);
                if let Some((b, n)) = f.bias {
                    (bp, bcols) = (self.at(b), n as u64);
                }
                with_fwd = 1;
            } else {
                self.launch_loss_fwd(&f)?;
            }
        }
        if let Some(cs) = colsum {
            let (db, db_acc) = (self.at(cs.db), i32::from(cs.acc));
            let (rows, cols) = (cs.rows as u64, cs.cols as u64);
            return self.launch_2d(
                "loss_bwd_colsum",
                cs.blocks()?,
                (32, 32),
                &[
                    &c, &l, &q[0], &q[1], &q[2], &q[3], &rows, &cols, &st, &sm, &acc, &seeded,
                    &seed, &db, &db_acc, &with_fwd, &yp, &bp, &bcols,
                ],
            );
        }
        let work = if c == 1 { n * 32 } else { n };
        self.launch(
            "loss_bwd",
            self.blocks(work, THREADS),
            THREADS,
            &[
                &c, &l, &q[0], &q[1], &q[2], &q[3], &n, &cl, &st, &sm, &acc, &seeded, &seed,
            ],
        )
    }
}
