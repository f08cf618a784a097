//! `mote::Backend` for [`Cuda`]: range and aliasing checks as the reference backend makes them,
//! then at most a few launches: work held back over the op's ranges, then the op (an optimizer
//! update is queued, a fill may be held back; see `crate::pending`).

use cudarc::driver::result as drv;
use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::conv::{ConvCall, PoolCall};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Result, Shape};

use crate::pending::Write;
use crate::Cuda;

/// Floats of im2col buffer a convolution pass may take on the GPU, where the arena has them
/// free ([`Backend::conv_scratch`]): 128 MiB, a whole batch of most layers. An arena sized for
/// training on the GPU leaves this much room above the plan (`mote train --device cuda` does).
pub const CONV_SCRATCH: usize = 1 << 25;

impl Backend for Cuda {
    type Elem = f32;

    fn capacity(&self) -> usize {
        self.shadow.len()
    }

    fn align(&self) -> usize {
        self.align
    }

    fn host_dependent(&mut self, what: &'static str) -> Result<()> {
        // A graph replays only the device's work: what the host decided or drew at capture
        // would be frozen into every replay.
        if self.capturing() {
            return Err(mote::Error::InvalidArgument { what });
        }
        Ok(())
    }

    fn write(&mut self, offset: usize, src: &[f32]) -> Result<()> {
        self.check_range(offset, src.len())?;
        self.bind()?;
        // Held-back work elsewhere stays held (the step's gradient zeroing, while its inputs
        // are written); a fill this write covers is dropped.
        self.flush_updates()?;
        self.settle(&[], offset..offset + src.len(), Write::Overwrite)?;
        self.copy_in_untracked(self.at(offset), src)
    }

    fn read(&self, offset: usize, dst: &mut [f32]) -> Result<()> {
        self.check_range(offset, dst.len())?;
        self.bind()?;
        if self.capturing() {
            return Err(self.fail(
                "read",
                "reading the device inside a CUDA graph capture is not possible",
            ));
        }
        self.flush_updates()?;
        let range = offset..offset + dst.len();
        self.settle(std::slice::from_ref(&range), 0..0, Write::Partial)?;
        if !dst.is_empty() {
            // SAFETY: the range was checked; the copy completes before the synchronisation
            // returns.
            unsafe { drv::memcpy_dtoh_async(dst, self.at(offset), self.cu()) }
                .map_err(|e| self.fail("cuMemcpyDtoHAsync", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| self.fail("cuStreamSynchronize", e))?;
        self.check_status()
    }

    fn fill(&mut self, offset: usize, len: usize, value: f32) -> Result<()> {
        self.flush_updates()?;
        self.fill_impl(offset, len, value)
    }

    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        self.flush_updates()?;
        self.unary_fwd(op, x, y, len)
    }

    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    ) -> Result<()> {
        self.flush_updates()?;
        self.unary_bwd(op, [x, y, dy, dx], len)
    }

    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        self.flush_updates()?;
        self.binary_fwd(op, a, b, y)
    }

    fn binary_backward(
        &mut self,
        op: BinaryOp,
        side: Side,
        a: View,
        b: View,
        dy: View,
        dx: usize,
    ) -> Result<()> {
        self.flush_updates()?;
        self.binary_bwd(op, side, a, b, dy, dx)
    }

    /// Convolution passes as one `im2col` (or `col2im`) launch and one product per group over
    /// a chunk of images (`src/ops/conv.rs`); `false` where not even one image fits the
    /// convolution scratch.
    fn conv(&mut self, call: &ConvCall) -> Result<bool> {
        self.bind()?;
        self.flush_updates()?;
        self.conv_impl(call)
    }

    /// Pooling passes read in place, one launch each (`src/ops/conv.rs`).
    fn pool(&mut self, call: &PoolCall) -> Result<bool> {
        self.bind()?;
        self.flush_updates()?;
        self.pool_impl(call)
    }

    /// Without a convolution scratch of its own ([`crate::Options::conv_workspace_bytes`] 0):
    /// a whole batch per im2col pass where the arena has the room ([`CONV_SCRATCH`] floats at
    /// most): a few large copies and products instead of hundreds of small launches.
    fn conv_scratch(&self) -> Option<usize> {
        (self.conv_ws_bytes == 0).then_some(CONV_SCRATCH)
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.bind()?;
        self.flush_updates()?;
        self.gemm_impl(g)
    }

    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        self.flush_updates()?;
        self.copy_impl(space, src, dst, accumulate)
    }

    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.flush_updates()?;
        self.reduce_fwd(op, r, x, y)
    }

    fn reduce_backward(
        &mut self,
        op: ReduceOp,
        r: Axis3,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.flush_updates()?;
        self.reduce_bwd(op, r, [x, y, dy, dx])
    }

    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.flush_updates()?;
        self.softmax_fwd(log, r, x, y)
    }

    fn softmax_backward(
        &mut self,
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.flush_updates()?;
        self.softmax_bwd(log, r, [y, dy, dx])
    }

    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        self.flush_updates()?;
        self.loss_fwd(op, classes, p, t, y)
    }

    fn loss_backward(
        &mut self,
        op: LossOp,
        lhs: bool,
        classes: usize,
        p: View,
        t: View,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.flush_updates()?;
        self.loss_bwd(op, lhs, classes, p, t, dy, dx)
    }

    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.sgd_impl(u)
    }

    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        self.adam_impl(u)
    }

    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.rms_impl(u)
    }

    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        self.flush()?;
        self.sum_squares_impl(offset, len)
    }

    fn scale(&mut self, offset: usize, len: usize, factor: f32) -> Result<()> {
        self.flush()?;
        self.scale_impl(offset, len, factor)
    }
}
