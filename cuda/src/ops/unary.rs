//! Unary ops, fill and scale: kernels/unary.cu.

use mote::backend::split;
use mote::ops::unary::UnaryOp;
use mote::Result;

use super::{rg, THREADS};
use crate::pending::{ColSum, Grad, GradKind, Write};
use crate::Cuda;

/// The kernel's op code and scalar argument: the core's packed form.
fn code(op: UnaryOp) -> (i32, f32) {
    let (c, s) = op.pack();
    (i32::from(c), s)
}

impl Cuda {
    pub(crate) fn unary_fwd(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        split(
            &mut self.shadow,
            y..y.saturating_add(len),
            [super::rg(x, len)],
        )?;
        let (c, s) = code(op);
        // A held-back bias of the linear layer whose output `x` is (and never one `y` would
        // overwrite): added here, in one pass with the activation.
        let fused = self.pending.borrow_mut().take_bias_add(x, len, rg(y, len));
        if let Some(b) = fused {
            self.settle(
                &[rg(x, len), rg(b.bias, b.cols)],
                rg(y, len),
                Write::Overwrite,
            )?;
            let vec = i32::from(Cuda::vec4(&[x, y, b.bias]) == 1 && b.cols % 4 == 0);
            let work = if vec == 1 { len / 4 + 3 } else { len } as u64;
            let (bp, xp, yp) = (self.at(b.bias), self.at(x), self.at(y));
            let (rows, cols) = (b.rows as u64, b.cols as u64);
            return self.launch(
                "bias_act",
                self.blocks(work, THREADS),
                THREADS,
                &[&c, &s, &bp, &xp, &yp, &rows, &cols, &vec],
            );
        }
        self.settle(&[rg(x, len)], rg(y, len), Write::Overwrite)?;
        let vec = Cuda::vec4(&[x, y]);
        let work = if vec == 1 { len / 4 + 3 } else { len } as u64;
        let (xp, yp, n) = (self.at(x), self.at(y), len as u64);
        self.launch(
            "unary_fwd",
            self.blocks(work, THREADS),
            THREADS,
            &[&c, &s, &xp, &yp, &n, &vec],
        )
    }

    pub(crate) fn unary_bwd(
        &mut self,
        op: UnaryOp,
        [x, y, dy, dx]: [usize; 4],
        len: usize,
    ) -> Result<()> {
        let r = |o: usize| o..o.saturating_add(len);
        split(&mut self.shadow, r(dx), [r(x), r(y), r(dy)])?;
        let acc = !self.settle(&[r(x), r(y), r(dy)], r(dx), Write::Accumulate)?;
        let (code, c) = code(op);
        let g = Grad {
            kind: GradKind::Unary { code, c, x, y, dy },
            dx,
            len,
            acc,
        };
        self.hold_grad(g)
    }

    /// `unary_bwd` of a held [`Grad`]; with `colsum`, the column sums of its output too
    /// (`unary_bwd_colsum`).
    pub(crate) fn launch_unary_bwd(
        &self,
        g: &Grad,
        [x, y, dy]: [usize; 3],
        (code, c): (i32, f32),
        colsum: Option<ColSum>,
    ) -> Result<()> {
        let (p, acc) = (
            [self.at(x), self.at(y), self.at(dy), self.at(g.dx)],
            i32::from(g.acc),
        );
        if let Some(cs) = colsum {
            let (db, db_acc) = (self.at(cs.db), i32::from(cs.acc));
            let (rows, cols) = (cs.rows as u64, cs.cols as u64);
            return self.launch_2d(
                "unary_bwd_colsum",
                cs.blocks()?,
                (32, 32),
                &[
                    &code, &c, &p[0], &p[1], &p[2], &p[3], &rows, &cols, &acc, &db, &db_acc,
                ],
            );
        }
        let vec = Cuda::vec4(&[x, y, dy, g.dx]);
        let work = if vec == 1 { g.len / 4 + 3 } else { g.len } as u64;
        let n = g.len as u64;
        self.launch(
            "unary_bwd",
            self.blocks(work, THREADS),
            THREADS,
            &[&code, &c, &p[0], &p[1], &p[2], &p[3], &n, &vec, &acc],
        )
    }

    /// A fill, held back to merge into the launch after it (`src/pending.rs`).
    pub(crate) fn fill_impl(&mut self, offset: usize, len: usize, value: f32) -> Result<()> {
        self.check_range(offset, len)?;
        self.hold_fill(offset, len, value)
    }

    pub(crate) fn scale_impl(&mut self, offset: usize, len: usize, f: f32) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let vec = Cuda::vec4(&[offset]);
        let work = if vec == 1 { len / 4 + 3 } else { len } as u64;
        let (p, n) = (self.at(offset), len as u64);
        self.launch(
            "scale",
            self.blocks(work, THREADS),
            THREADS,
            &[&p, &n, &f, &vec],
        )
    }
}
