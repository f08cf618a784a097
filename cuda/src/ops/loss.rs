//! Losses (MSE, fused softmax cross-entropy, BCE with logits): kernels/loss.cu.
//!
//! NOTE: a bad cross-entropy label cannot be seen without waiting for the GPU, so the kernel
//! records it in the status words and the error ([`mote::Error::IndexOutOfRange`], as on the
//! CPU) comes from the next `read` (or [`Cuda::sync`]) instead of from the loss call itself.

use mote::backend::{split, View};
use mote::ops::loss::LossOp;
use mote::{Error, Result};

use super::{rg, THREADS};
use crate::pending::Write;
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
        split(&mut self.shadow, y..y + 1, [p.range(), t.range()])?;
        let (c, sm) = (code(op), op.smoothing());
        let n = if op.takes_labels() {
            if classes == 0 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy needs at least one class",
                });
            }
            self.loss_pending.set(true);
            t.len()
        } else {
            p.len()
        } as u64;
        self.settle(&[p.range(), t.range()], rg(y, 1), Write::Overwrite)?;
        let (pp, tp, yp, cl, st) = (
            self.at(p.offset),
            self.at(t.offset),
            self.at(y),
            classes as u64,
            self.status,
        );
        // Rows of 32 warps, or 8192 elements, per block (at most LOSS_BLOCKS): one block for
        // every small batch, the whole GPU for a large one.
        let per = if op.takes_labels() { 32 } else { 8192 };
        let grid = n.div_ceil(per).clamp(1, crate::device::LOSS_BLOCKS) as u32;
        self.launch(
            "loss_fwd",
            grid,
            1024,
            &[&c, &pp, &tp, &yp, &n, &cl, &st, &sm],
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
            [p.range(), t.range(), dy..dy + 1],
        )?;
        let (c, sm) = (code(op), op.smoothing());
        let n = if op.takes_labels() {
            if !lhs {
                return Ok(());
            }
            if classes == 0 {
                return Err(Error::InvalidArgument {
                    what: "cross_entropy needs at least one class",
                });
            }
            self.loss_pending.set(true);
            t.len()
        } else {
            p.len()
        } as u64;
        let work = if op.takes_labels() { n * 32 } else { n };
        // The backward's seed (a fill of dy held back) comes in as a value; a zeroed dx is
        // overwritten (`src/pending.rs`).
        let seed = self.pending.borrow_mut().take_seed(dy);
        let (seeded, seed) = (i32::from(seed.is_some()), seed.unwrap_or(0.0));
        let mut reads = vec![p.range(), t.range()];
        if seeded == 0 {
            reads.push(rg(dy, 1));
        }
        let acc = i32::from(!self.settle(&reads, rg(dx, len), Write::Accumulate)?);
        let l = i32::from(lhs);
        let q = [
            self.at(p.offset),
            self.at(t.offset),
            self.at(dy),
            self.at(dx),
        ];
        let (cl, st) = (classes as u64, self.status);
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
