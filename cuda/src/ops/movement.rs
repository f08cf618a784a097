//! The strided copy behind every movement op: kernels/movement.cu.

use cudarc::driver::result as drv;
use mote::backend::split;
use mote::ops::movement::Strided;
use mote::{Result, Shape};

use super::{dims, Walk, SPLIT_LOOP, THREADS};
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
        if !accumulate && src.strides == contiguous && dst.strides == contiguous {
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
        let w = Walk::new(
            &dims(space),
            &[src.strides, dst.strides],
            accumulate.then_some(1),
        );
        let (sp, dp, acc) = (
            self.at(src.offset),
            self.at(dst.offset),
            i32::from(accumulate),
        );
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
