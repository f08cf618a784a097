//! The strided copy behind every movement op: kernels/movement.cu.

use cudarc::driver::result as drv;
use mote::backend::split;
use mote::ops::movement::Strided;
use mote::{Result, Shape};

use super::{dims, rg, Walk, SPLIT_LOOP, THREADS};
use crate::pending::{dense, Bias, ColSum, Stage, Write};
use crate::Cuda;

impl Cuda {
    pub(crate) fn copy_impl(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        self.bind()?;
        let (ns, nd) = (src.span(space), dst.span(space));
        split(
            &mut self.shadow,
            dst.offset..dst.offset.saturating_add(nd),
            [super::rg(src.offset, ns)],
        )?;
        let contiguous = space.strides();
        let (reads, write) = ([rg(src.offset, ns)], rg(dst.offset, nd));
        let d = dims(space);
        // A bias gradient (a `rows x cols` gradient summed over its rows) of what the held
        // gradient kernel just wrote: one launch for both (`src/pending.rs`).
        if self.fuse
            && accumulate
            && d.len() == 2
            && src.strides[..2] == [d[1], 1]
            && dst.strides[..2] == [0, 1]
        {
            let held = self.pending.borrow_mut().take_grad_for_colsum(
                src.offset,
                d[0],
                d[1],
                write.clone(),
            );
            if let Some(g) = held {
                let acc = !self.settle(&reads, write, Write::Accumulate)?;
                let (db, rows, cols) = (dst.offset, d[0], d[1]);
                return self.launch_grad(
                    g,
                    Some(ColSum {
                        db,
                        rows,
                        cols,
                        acc,
                    }),
                );
            }
        }
        // A bias broadcast over the rows of a contiguous output (a linear layer's forward):
        // held back for the product and the activation after it (`src/pending.rs`).
        if self.fuse
            && !accumulate
            && d.len() == 2
            && src.strides[..2] == [0, 1]
            && dst.strides[..2] == [d[1], 1]
        {
            self.settle(&reads, write, Write::Overwrite)?;
            let before = self.pending.borrow_mut().hold_bias(Bias {
                bias: src.offset,
                y: dst.offset,
                rows: d[0],
                cols: d[1],
                stage: Stage::Copy,
            });
            return before.map_or(Ok(()), |b| self.launch_bias(b));
        }
        // Whether every element of the destination's span is written: a plain copy overwrites
        // it, a summing one (a broadcast's backward) may overwrite a zeroed one.
        let whole = dense(&d, &dst.strides, nd)
            && (accumulate || d.iter().zip(dst.strides).all(|(&n, s)| n <= 1 || s > 0));
        let kind = match (whole, accumulate) {
            (false, _) => Write::Partial,
            (true, false) => Write::Overwrite,
            (true, true) => Write::Accumulate,
        };
        // `sums`: destination elements that take several source elements (stride 0) are
        // summed in one thread; `acc`: added to what is there.
        let sums = accumulate;
        // Settled first, for every copy: held work over the ranges it reads or writes runs
        // before it.
        let overwrite = self.settle(&reads, write, kind)?;
        let acc = accumulate && !overwrite;
        if !acc && src.strides == contiguous && dst.strides == contiguous {
            let bytes = 4 * space.numel();
            return self.timed("memcpy_dtod", || {
                // SAFETY: both ranges were checked above and do not overlap.
                unsafe {
                    drv::memcpy_dtod_async(
                        self.at(dst.offset),
                        self.at(src.offset),
                        bytes,
                        self.cu(),
                    )
                }
                .map_err(|e| self.fail("cuMemcpyDtoDAsync", e))
            });
        }
        // Accumulating into a destination with stride 0 (a broadcast's backward) sums in one
        // thread per destination element (32 threads for a long sum): no atomics, no races.
        let w = Walk::new(&d, &[src.strides, dst.strides], sums.then_some(1));
        let (sp, dp, acc) = (self.at(src.offset), self.at(dst.offset), i32::from(acc));
        if w.ltotal >= SPLIT_LOOP {
            return self.launch_2d(
                "copy_walk_split",
                w.ptotal.div_ceil(32) as u32,
                (32, 32),
                &[&w, &sp, &dp, &acc],
            );
        }
        self.launch(
            "copy_walk",
            self.blocks(w.ptotal, THREADS),
            THREADS,
            &[&w, &sp, &dp, &acc],
        )
    }
}
