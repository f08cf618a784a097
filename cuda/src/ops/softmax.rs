//! Softmax and log-softmax: kernels/softmax.cu.

use mote::backend::split;
use mote::ops::reduce::Axis3;
use mote::Result;

use super::{rg, THREADS};
use crate::pending::Write;
use crate::Cuda;

impl Cuda {
    pub(crate) fn softmax_fwd(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        let n = r.input_len();
        split(&mut self.shadow, y..y.saturating_add(n), [super::rg(x, n)])?;
        if r.is_degenerate() || r.outer == 0 {
            return Ok(());
        }
        self.settle(&[rg(x, n)], rg(y, n), Write::Overwrite)?;
        let lg = i32::from(log);
        let (xp, yp) = (self.at(x), self.at(y));
        let (outer, len, inner) = (r.outer as u64, r.n as u64, r.inner as u64);
        if inner == 1 {
            self.launch(
                "softmax_rows",
                self.blocks(outer * 32, THREADS),
                THREADS,
                &[&lg, &xp, &yp, &outer, &len],
            )
        } else {
            self.launch(
                "softmax_strided",
                self.blocks(outer * inner, THREADS),
                THREADS,
                &[&lg, &xp, &yp, &outer, &len, &inner],
            )
        }
    }

    pub(crate) fn softmax_bwd(
        &mut self,
        log: bool,
        r: Axis3,
        [y, dy, dx]: [usize; 3],
    ) -> Result<()> {
        let n = r.input_len();
        let rg = |o: usize| o..o.saturating_add(n);
        split(&mut self.shadow, rg(dx), [rg(y), rg(dy)])?;
        if r.is_degenerate() || r.outer == 0 {
            return Ok(());
        }
        let acc = i32::from(!self.settle(&[rg(y), rg(dy)], rg(dx), Write::Accumulate)?);
        let lg = i32::from(log);
        let p = [self.at(y), self.at(dy), self.at(dx)];
        let (outer, len, inner) = (r.outer as u64, r.n as u64, r.inner as u64);
        if inner == 1 {
            self.launch(
                "softmax_bwd_rows",
                self.blocks(outer * 32, THREADS),
                THREADS,
                &[&lg, &p[0], &p[1], &p[2], &outer, &len, &acc],
            )
        } else {
            self.launch(
                "softmax_bwd_strided",
                self.blocks(outer * inner, THREADS),
                THREADS,
                &[&lg, &p[0], &p[1], &p[2], &outer, &len, &inner, &acc],
            )
        }
    }
}
