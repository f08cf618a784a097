//! Reductions and sum of squares: kernels/reduce.cu.

use cudarc::driver::result as drv;
use mote::backend::split;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::{Error, Result};

use super::{rg, THREADS};
use crate::pending::Write;
use crate::Cuda;

fn code(op: ReduceOp) -> i32 {
    i32::from(op.code())
}

impl Cuda {
    pub(crate) fn reduce_fwd(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        let (ni, no) = (r.input_len(), r.output_len());
        split(
            &mut self.shadow,
            y..y.saturating_add(no),
            [super::rg(x, ni)],
        )?;
        if r.is_degenerate() || r.outer == 0 {
            return Ok(());
        }
        self.settle(&[rg(x, ni)], rg(y, no), Write::Overwrite)?;
        let c = code(op);
        let (xp, yp) = (self.at(x), self.at(y));
        let (outer, n, inner) = (r.outer as u64, r.n as u64, r.inner as u64);
        if inner == 1 && outer == 1 && n >= 16384 {
            // A whole tensor (a mean loss, say) on many blocks: 8192 elements or more each.
            let grid = n.div_ceil(8192).min(crate::device::LOSS_BLOCKS) as u32;
            let st = self.status;
            return self.launch("reduce_all", grid, 1024, &[&c, &xp, &yp, &n, &st]);
        }
        if inner == 1 && outer < 64 && n >= 4096 {
            if outer > u64::from(u32::MAX) {
                return Err(Error::InvalidArgument {
                    what: "reduce: too many rows",
                });
            }
            return self.launch("reduce_rows_block", outer as u32, 1024, &[&c, &xp, &yp, &n]);
        }
        if inner == 1 {
            return self.launch(
                "reduce_rows",
                self.blocks(outer * 32, THREADS),
                THREADS,
                &[&c, &xp, &yp, &outer, &n],
            );
        }
        self.launch(
            "reduce_strided",
            self.blocks(outer * inner, THREADS),
            THREADS,
            &[&c, &xp, &yp, &outer, &n, &inner],
        )
    }

    pub(crate) fn reduce_bwd(
        &mut self,
        op: ReduceOp,
        r: Axis3,
        [x, y, dy, dx]: [usize; 4],
    ) -> Result<()> {
        let (ni, no) = (r.input_len(), r.output_len());
        split(
            &mut self.shadow,
            dx..dx.saturating_add(ni),
            [
                x..x.saturating_add(ni),
                y..y.saturating_add(no),
                dy..dy.saturating_add(no),
            ],
        )?;
        if r.is_degenerate() || r.outer == 0 {
            return Ok(());
        }
        let (outer, n, inner) = (r.outer as u64, r.n as u64, r.inner as u64);
        let p = [self.at(x), self.at(y), self.at(dy), self.at(dx)];
        // A sum's backward writes every element of dx; a maximum's only the chosen ones.
        let kind = match op {
            ReduceOp::Sum | ReduceOp::Mean => Write::Accumulate,
            ReduceOp::Max | ReduceOp::Min => Write::Partial,
        };
        let reads = [rg(x, ni), rg(y, no), rg(dy, no)];
        let acc = i32::from(!self.settle(&reads, rg(dx, ni), kind)?);
        match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                let scale = if op == ReduceOp::Mean {
                    1.0f32 / r.n as f32
                } else {
                    1.0f32
                };
                self.launch(
                    "reduce_bwd_sum",
                    self.blocks(outer * n * inner, THREADS),
                    THREADS,
                    &[&p[2], &p[3], &outer, &n, &inner, &scale, &acc],
                )
            }
            // The first position holding the result, for a minimum as for a maximum.
            ReduceOp::Max | ReduceOp::Min => self.launch(
                "reduce_bwd_max",
                self.blocks(outer * inner, THREADS),
                THREADS,
                &[&p[0], &p[1], &p[2], &p[3], &outer, &n, &inner],
            ),
        }
    }

    pub(crate) fn sum_squares_impl(&mut self, offset: usize, len: usize) -> Result<f64> {
        self.check_range(offset, len)?;
        if self.capturing() {
            return Err(self.fail(
                "sum_squares",
                "needs the host (clip_grad_norm) and cannot be part of a CUDA graph",
            ));
        }
        self.flush()?;
        self.bind()?;
        let out = self.status + 64;
        // SAFETY: the double lies in the status area of our allocation.
        unsafe { drv::memset_d8_async(out, 0, 8, self.cu()) }
            .map_err(|e| self.fail("cuMemsetD8Async", e))?;
        if len > 0 {
            let (xp, n, st) = (self.at(offset), len as u64, self.status);
            // One partial per block (in the status area), summed in block order.
            let grid = self.blocks(n, 1024).min(crate::device::LOSS_BLOCKS as u32);
            self.launch("sum_squares", grid, 1024, &[&xp, &n, &out, &st])?;
        }
        let mut v = [0f64];
        // SAFETY: as above; the stream is synchronised first.
        self.stream
            .synchronize()
            .map_err(|e| self.fail("cuStreamSynchronize", e))?;
        unsafe { drv::memcpy_dtoh_sync(&mut v, out) }.map_err(|e| self.fail("cuMemcpyDtoH", e))?;
        Ok(v[0])
    }
}
