//! Unary ops, fill and scale: kernels/unary.cu.

use mote::backend::split;
use mote::ops::unary::UnaryOp;
use mote::Result;

use super::THREADS;
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
        let (c, s) = code(op);
        let vec = Cuda::vec4(&[x, y, dy, dx]);
        let work = if vec == 1 { len / 4 + 3 } else { len } as u64;
        let p = [self.at(x), self.at(y), self.at(dy), self.at(dx)];
        let n = len as u64;
        self.launch(
            "unary_bwd",
            self.blocks(work, THREADS),
            THREADS,
            &[&c, &s, &p[0], &p[1], &p[2], &p[3], &n, &vec],
        )
    }

    pub(crate) fn fill_impl(&mut self, offset: usize, len: usize, value: f32) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let vec = Cuda::vec4(&[offset]);
        let work = if vec == 1 { len / 4 + 3 } else { len } as u64;
        let (p, n) = (self.at(offset), len as u64);
        self.launch(
            "fill",
            self.blocks(work, THREADS),
            THREADS,
            &[&p, &n, &value, &vec],
        )
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
