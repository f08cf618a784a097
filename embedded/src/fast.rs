//! [`Fast`]: a `mote::Backend` for the Cortex-M4F that delegates to the reference `mote::Cpu`
//! and overrides the kernels that matter on this core.

// `split` takes an array of read ranges, one here.
#![allow(clippy::single_range_in_vec_init)]

use core::arch::asm;

use core::ops::Range;

use mote::ops::binary::{BinaryOp, Side};
use mote::ops::conv::{ConvCall, PoolCall};
use mote::ops::loss::LossOp;
use mote::ops::matmul::Gemm;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Cpu, Error, HostBackend, Result, Shape, View};

use crate::conv::conv;
use crate::copy::copy_any;
use crate::pool::max_pool;

/// `sum a[i] b[i]`, one accumulator in index order. Four elements per loop trip with `vldmia`
/// (4 floats per instruction) and `vmla.f32` (multiply, round, add, round: the same result as
/// `s += x * y`; it is not the fused `vfma`).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let quads = n / 4;
    let mut acc = 0f32.to_bits();
    if quads > 0 {
        // Reads `4 * quads <= n` elements of each slice.
        unsafe {
            asm!(
                "vmov s0, {acc}",
                "2:",
                "vldmia {pa}!, {{s8-s11}}",
                "vldmia {pb}!, {{s12-s15}}",
                "vmla.f32 s0, s8, s12",
                "vmla.f32 s0, s9, s13",
                "vmla.f32 s0, s10, s14",
                "vmla.f32 s0, s11, s15",
                "subs {q}, {q}, #1",
                "bne 2b",
                "vmov {acc}, s0",
                acc = inout(reg) acc,
                pa = inout(reg) a.as_ptr() => _,
                pb = inout(reg) b.as_ptr() => _,
                q = inout(reg) quads => _,
                out("s0") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
                out("s12") _, out("s13") _, out("s14") _, out("s15") _,
                options(nostack, readonly),
            );
        }
    }
    let mut s = f32::from_bits(acc);
    for (&x, &y) in a[4 * quads..n].iter().zip(&b[4 * quads..n]) {
        s += x * y;
    }
    s
}

/// `y += alpha x`, four elements per loop trip (`vldmia`, `vmla.f32`, `vstmia`; the same result
/// as `*y += alpha * x`).
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let quads = n / 4;
    if quads > 0 {
        // Reads and writes `4 * quads <= n` elements.
        unsafe {
            asm!(
                "vmov s0, {alpha}",
                "2:",
                "vldmia {px}!, {{s8-s11}}",
                "vldm {py}, {{s12-s15}}",
                "vmla.f32 s12, s8, s0",
                "vmla.f32 s13, s9, s0",
                "vmla.f32 s14, s10, s0",
                "vmla.f32 s15, s11, s0",
                "vstmia {py}!, {{s12-s15}}",
                "subs {q}, {q}, #1",
                "bne 2b",
                alpha = in(reg) alpha.to_bits(),
                px = inout(reg) x.as_ptr() => _,
                py = inout(reg) y.as_mut_ptr() => _,
                q = inout(reg) quads => _,
                out("s0") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
                out("s12") _, out("s13") _, out("s14") _, out("s15") _,
                options(nostack),
            );
        }
    }
    for (y, &x) in y[4 * quads..n].iter_mut().zip(&x[4 * quads..n]) {
        *y += alpha * x;
    }
}

/// `e^x` in f32: Cody-Waite range reduction `x = k ln2 + r` and Cephes' degree-6 polynomial on
/// `|r| <= ln2 / 2` (within 1 ulp of `f32::exp`, checked on a sweep of `[-87, 88]`); `x` is
/// clamped to `[-87, 88]`, where `2^k` is a normal float (a sigmoid saturates long before).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 355 / 512, exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest: adding and subtracting 1.5 * 2^23 leaves no fraction bits (|kf| is
    // below 128 here), in two additions instead of a branch and two conversions.
    const ROUND: f32 = 12_582_912.0;
    let kf = (x * LOG2E + ROUND) - ROUND;
    let k = kf as i32;
    let r = x - kf * LN2_HI - kf * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((k + 127) as u32) << 23)
}

/// The logistic sigmoid with [`expf`], in the reference's stable form.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + expf(-x))
    } else {
        let e = expf(x);
        e / (1.0 + e)
    }
}

/// The one range and overlap check of the GEMMs over raw indices: A, B and C (`spans`
/// elements from their offsets) inside the arena's `len`, and C overlapping neither A nor B.
#[inline(always)]
fn check_gemm(len: usize, g: &Gemm, (sa, sb, sc): (usize, usize, usize)) -> Result<()> {
    for (at, span) in [(g.a, sa), (g.b, sb), (g.c, sc)] {
        if at.checked_add(span).is_none_or(|e| e > len) {
            return Err(Error::IndexOutOfRange {
                op: "gemm",
                index: at,
                bound: len,
            });
        }
    }
    for (at, span) in [(g.a, sa), (g.b, sb)] {
        if at < g.c + sc && g.c < at + span {
            return Err(Error::Aliasing);
        }
    }
    Ok(())
}

/// A small GEMM (`batch == 1`, at most one operand transposed) over raw indices, after one range
/// and overlap check: for the tiny matrices of XOR-MCU, where the per-row set-up of the
/// `vldmia` loops costs more than the products. Out of line (a small frame). Same summation
/// order as the larger paths (`C[i, j] + dot` for `B` transposed, `C[i, j] += a b` term by term
/// otherwise), so results do not depend on which path ran.
#[inline(never)]
fn gemm_small(buf: &mut [f32], g: &Gemm) -> Result<()> {
    check_gemm(buf.len(), g, g.spans())?;
    let (m, n, k) = (g.m, g.n, g.k);
    // Element (i, p) of A is at i * ai + p * ap; (p, j) of B at p * bp + j * bj.
    let (ai, ap) = if g.a_trans { (1, m) } else { (k, 1) };
    let (bp, bj) = if g.b_trans { (1, k) } else { (n, 1) };
    let (ap4, bp4) = (4 * ap, 4 * bp);
    let base = buf.as_mut_ptr();
    // Every index below is inside the spans checked above; C overlaps neither A nor B.
    unsafe {
        let (a, b, c) = (base.add(g.a), base.add(g.b), base.add(g.c));
        let mut cij = c;
        for i in 0..m {
            let arow = a.add(i * ai);
            let mut bcol = b;
            for _ in 0..n {
                let init = if g.accumulate { *cij } else { 0.0 };
                let s0 = if g.b_trans { 0.0 } else { init };
                let mut s = s0.to_bits();
                if k > 0 {
                    // `s += a * b` over p, one product a trip, no unrolling (k is small).
                    asm!(
                        "vmov s0, {s}",
                        "2:",
                        "vldr s2, [{pa}]",
                        "vldr s4, [{pb}]",
                        "add {pa}, {pa}, {ap4}",
                        "add {pb}, {pb}, {bp4}",
                        "vmla.f32 s0, s2, s4",
                        "subs {q}, {q}, #1",
                        "bne 2b",
                        "vmov {s}, s0",
                        s = inout(reg) s,
                        pa = inout(reg) arow => _,
                        pb = inout(reg) bcol => _,
                        ap4 = in(reg) ap4,
                        bp4 = in(reg) bp4,
                        q = inout(reg) k => _,
                        out("s0") _, out("s2") _, out("s4") _,
                        options(nostack, readonly),
                    );
                }
                let s = f32::from_bits(s);
                *cij = if g.b_trans { init + s } else { s };
                cij = cij.add(1);
                bcol = bcol.add(bj);
            }
        }
    }
    Ok(())
}

/// `mote::backend::split` (one writable range, `K` readable ones that must not overlap it),
/// always inlined: in a step written by `Replay::write_rust` every range is a constant, and
/// only the comparisons with the arena's length are left.
#[inline(always)]
fn split<const K: usize>(
    buf: &mut [f32],
    w: Range<usize>,
    reads: [Range<usize>; K],
) -> Result<(&mut [f32], [&[f32]; K])> {
    let len = buf.len();
    let bad = |r: &Range<usize>| r.end < r.start || r.end > len;
    if bad(&w) {
        return Err(Error::IndexOutOfRange {
            op: "arena",
            index: w.end,
            bound: len,
        });
    }
    for r in &reads {
        if bad(r) {
            return Err(Error::IndexOutOfRange {
                op: "arena",
                index: r.end,
                bound: len,
            });
        }
        if !r.is_empty() && !w.is_empty() && r.start < w.end && w.start < r.end {
            return Err(Error::Aliasing);
        }
    }
    let base = buf.as_mut_ptr();
    // Every range is inside `buf` and none of the reads overlaps the write (checked above).
    unsafe {
        let out = core::slice::from_raw_parts_mut(base.add(w.start), w.len());
        let ins =
            reads.map(|r| core::slice::from_raw_parts(base.add(r.start) as *const f32, r.len()));
        Ok((out, ins))
    }
}

/// A GEMM (`batch == 1`, at most one operand transposed) in plain loops, inlined into its
/// caller: when the sizes and offsets are constants (a step written by `Replay::write_rust`),
/// the compiler unrolls it into loads and `vmla.f32` with immediate offsets. The same summation
/// order as [`gemm_small`].
#[inline(always)]
fn gemm_tiny(buf: &mut [f32], g: &Gemm) -> Result<()> {
    // `batch == 1`: `Gemm::spans` without its batch terms (inlined, so constants fold).
    let spans = (
        g.m.saturating_mul(g.k),
        g.k.saturating_mul(g.n),
        g.m.saturating_mul(g.n),
    );
    check_gemm(buf.len(), g, spans)?;
    let (m, n, k) = (g.m, g.n, g.k);
    let (ai, ap) = if g.a_trans { (1, m) } else { (k, 1) };
    let (bp, bj) = if g.b_trans { (1, k) } else { (n, 1) };
    let base = buf.as_mut_ptr();
    for i in 0..m {
        for j in 0..n {
            // Every index is inside the spans checked above; C overlaps neither A nor B.
            unsafe {
                let cij = base.add(g.c + i * n + j);
                let init = if g.accumulate { *cij } else { 0.0 };
                let mut s = if g.b_trans { 0.0 } else { init };
                for p in 0..k {
                    s += *base.add(g.a + i * ai + p * ap) * *base.add(g.b + p * bp + j * bj);
                }
                *cij = if g.b_trans { init + s } else { s };
            }
        }
    }
    Ok(())
}

/// GEMM with the `vldmia` loops. Out of line: its frame is not on the stack of the small
/// products.
#[inline(never)]
fn gemm_large(buf: &mut [f32], g: &Gemm) -> Result<()> {
    let (sa, sb, sc) = g.spans();
    let (c, [a, b]) = split(buf, g.c..g.c + sc, [g.a..g.a + sa, g.b..g.b + sb])?;
    let (m, n, k) = (g.m, g.n, g.k);
    let c = c.get_mut(..m * n).unwrap_or(&mut []);
    if !g.accumulate {
        c.fill(0.0);
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    if g.b_trans {
        // C[i, j] += dot(A[i, :], B[j, :]): y = x W^T.
        for (crow, arow) in c.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
            for (cij, brow) in crow.iter_mut().zip(b.chunks_exact(k)) {
                *cij += dot(arow, brow);
            }
        }
    } else if !g.a_trans {
        // C[i, :] += A[i, p] B[p, :]: dx = dy W.
        for (crow, arow) in c.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
            for (&aip, brow) in arow.iter().zip(b.chunks_exact(n)) {
                axpy(aip, brow, crow);
            }
        }
    } else {
        // A stored k x m: C[i, :] += A[p, i] B[p, :]: dW = dy^T x.
        for (acol, brow) in a.chunks_exact(m).zip(b.chunks_exact(n)) {
            for (crow, &api) in c.chunks_exact_mut(n).zip(acol) {
                axpy(api, brow, crow);
            }
        }
    }
    Ok(())
}

/// A batched product as one product per batch entry on this backend's kernels (a
/// convolution's, per image of an im2col pass), instead of the reference's batched kernel; a
/// shared C (`c_batch` 0) sums over the batch. The whole batch's ranges are checked first, as
/// the reference does (nothing written on an error, no aliasing across entries). Out of line:
/// only the convolutions use it.
#[inline(never)]
fn gemm_batched(buf: &mut [f32], g: &Gemm) -> Result<()> {
    let (sa, sb, sc) = g.spans();
    let r = |o: usize, n: usize| o..o.saturating_add(n);
    split(buf, r(g.c, sc), [r(g.a, sa), r(g.b, sb)])?;
    let far = Error::IndexOutOfRange {
        op: "gemm",
        index: usize::MAX,
        bound: buf.len(),
    };
    for i in 0..g.batch {
        let at = |base: usize, step: usize| {
            i.checked_mul(step)
                .and_then(|o| base.checked_add(o))
                .ok_or(far)
        };
        let one = Gemm {
            batch: 1,
            a: at(g.a, g.a_batch)?,
            b: at(g.b, g.b_batch)?,
            c: at(g.c, g.c_batch)?,
            accumulate: g.accumulate || (g.c_batch == 0 && i > 0),
            ..*g
        };
        if one.k < 8 && one.n < 8 {
            gemm_small(buf, &one)?;
        } else {
            gemm_large(buf, &one)?;
        }
    }
    Ok(())
}

impl<'a, const ALL: bool> Fast<'a, ALL> {
    /// A kernel this backend has no path of its own for: the reference one when `ALL`, else an
    /// error (and then the reference kernels are not linked: less flash).
    #[inline(always)]
    fn reference<R>(&mut self, f: impl FnOnce(&mut Cpu<'a, f32>) -> Result<R>) -> Result<R> {
        if ALL {
            cold(|| f(&mut self.cpu))
        } else {
            Err(Error::InvalidArgument {
                what: "kernel left out of this firmware (Fast<_, false>)",
            })
        }
    }
}

/// Runs `f` out of line: a delegated reference kernel's stack frame then exists only while it
/// runs, instead of being merged into the caller's (what inlining does).
#[inline(never)]
fn cold<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The reference CPU backend with Cortex-M4F kernels where they pay. `Fast<_, false>` has only
/// those kernels (the others answer an error) and only the small-matrix GEMM: the least flash.
pub struct Fast<'a, const ALL: bool = true> {
    cpu: Cpu<'a, f32>,
    /// The f64 settings of the last Adam update and the f32 constants made from them: every
    /// parameter of a step shares them, and f64 arithmetic is software on this core.
    adam_key: [u64; 8],
    adam: AdamConsts,
}

#[derive(Clone, Copy, Default)]
struct AdamConsts {
    lr: f32,
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    step: f32,
    inv_sqrt_b2: f32,
    eps: f32,
    l2: f32,
    decay: f32,
}

impl<'a, const ALL: bool> Fast<'a, ALL> {
    /// A backend over `buf`.
    pub fn new(buf: &'a mut [f32]) -> Self {
        Fast {
            cpu: Cpu::new(buf),
            adam_key: [u64::MAX; 8],
            adam: AdamConsts::default(),
        }
    }
}

impl<const ALL: bool> HostBackend for Fast<'_, ALL> {
    fn storage(&self) -> &[f32] {
        self.cpu.storage()
    }
    fn storage_mut(&mut self) -> &mut [f32] {
        self.cpu.storage_mut()
    }
}

impl<const ALL: bool> Backend for Fast<'_, ALL> {
    type Elem = f32;
    fn capacity(&self) -> usize {
        self.cpu.capacity()
    }
    fn write(&mut self, offset: usize, src: &[f32]) -> Result<()> {
        self.cpu.write(offset, src)
    }
    fn read(&self, offset: usize, dst: &mut [f32]) -> Result<()> {
        self.cpu.read(offset, dst)
    }
    #[inline(always)]
    fn fill(&mut self, offset: usize, len: usize, value: f32) -> Result<()> {
        let (d, []) = split(
            self.cpu.storage_mut(),
            offset..offset.saturating_add(len),
            [],
        )?;
        for d in d {
            *d = value;
        }
        Ok(())
    }
    #[inline(always)]
    fn unary(&mut self, op: UnaryOp, x: usize, y: usize, len: usize) -> Result<()> {
        match op {
            UnaryOp::Sigmoid => {
                let (y, [x]) = split(self.cpu.storage_mut(), y..y + len, [x..x + len])?;
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = sigmoid(x);
                }
                Ok(())
            }
            UnaryOp::MulScalar(c) => {
                let (y, [x]) = split(self.cpu.storage_mut(), y..y + len, [x..x + len])?;
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * c;
                }
                Ok(())
            }
            _ => self.reference(|cpu| cpu.unary(op, x, y, len)),
        }
    }
    #[inline(always)]
    fn unary_backward(
        &mut self,
        op: UnaryOp,
        x: usize,
        y: usize,
        dy: usize,
        dx: usize,
        len: usize,
    ) -> Result<()> {
        match op {
            UnaryOp::Sigmoid => {
                let (d, [y, g]) = split(
                    self.cpu.storage_mut(),
                    dx..dx + len,
                    [y..y + len, dy..dy + len],
                )?;
                for (d, (&y, &g)) in d.iter_mut().zip(y.iter().zip(g)) {
                    *d += y * (1.0 - y) * g;
                }
                Ok(())
            }
            UnaryOp::MulScalar(c) => {
                let (d, [g]) = split(self.cpu.storage_mut(), dx..dx + len, [dy..dy + len])?;
                for (d, &g) in d.iter_mut().zip(g) {
                    *d += c * g;
                }
                Ok(())
            }
            _ => self.reference(|cpu| cpu.unary_backward(op, x, y, dy, dx, len)),
        }
    }
    fn binary(&mut self, op: BinaryOp, a: View, b: View, y: View) -> Result<()> {
        self.reference(|cpu| cpu.binary(op, a, b, y))
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
        self.reference(|cpu| cpu.binary_backward(op, side, a, b, dy, dx))
    }
    #[inline(always)]
    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        if g.batch != 1 && ALL && !(g.a_trans && g.b_trans) {
            return gemm_batched(self.cpu.storage_mut(), g);
        }
        if g.batch != 1 || (g.a_trans && g.b_trans) {
            return self.reference(|cpu| cpu.gemm(g));
        }
        // `Fast<_, false>` has only the plain loops (inlined: unrolled for constant sizes),
        // right for every size, just slower on large ones.
        if !ALL {
            return gemm_tiny(self.cpu.storage_mut(), g);
        }
        if g.k < 8 && g.n < 8 {
            return gemm_small(self.cpu.storage_mut(), g);
        }
        gemm_large(self.cpu.storage_mut(), g)
    }
    #[inline(always)]
    fn copy_strided(
        &mut self,
        space: &Shape,
        src: Strided,
        dst: Strided,
        accumulate: bool,
    ) -> Result<()> {
        // The two copies of a bias: broadcast over rows (forward), rows summed (backward).
        if space.rank() == 2 {
            let (rows, cols) = (space.dim(0), space.dim(1));
            let (n, buf) = (rows * cols, self.cpu.storage_mut());
            if !accumulate
                && (src.strides[0], src.strides[1]) == (0, 1)
                && (dst.strides[0], dst.strides[1]) == (cols, 1)
            {
                let (d, [s]) = split(
                    buf,
                    dst.offset..dst.offset + n,
                    [src.offset..src.offset + cols],
                )?;
                // Element by element: rows are a few floats, shorter than a `memcpy` call.
                for row in d.chunks_exact_mut(cols) {
                    for (d, &v) in row.iter_mut().zip(s) {
                        *d = v;
                    }
                }
                return Ok(());
            }
            if accumulate
                && (src.strides[0], src.strides[1]) == (cols, 1)
                && (dst.strides[0], dst.strides[1]) == (0, 1)
            {
                let (d, [s]) = split(
                    buf,
                    dst.offset..dst.offset + cols,
                    [src.offset..src.offset + n],
                )?;
                for row in s.chunks_exact(cols) {
                    for (d, &v) in d.iter_mut().zip(row) {
                        *d += v;
                    }
                }
                return Ok(());
            }
        }
        if ALL {
            return copy_any(self.cpu.storage_mut(), space, src, dst, accumulate);
        }
        self.reference(|cpu| cpu.copy_strided(space, src, dst, accumulate))
    }
    #[inline(always)]
    fn conv(&mut self, call: &ConvCall) -> Result<bool> {
        if ALL {
            return conv(self.cpu.storage_mut(), call);
        }
        Ok(false)
    }
    #[inline(always)]
    fn pool(&mut self, call: &PoolCall) -> Result<bool> {
        if ALL {
            return max_pool(self.cpu.storage_mut(), call);
        }
        Ok(false)
    }
    fn reduce(&mut self, op: ReduceOp, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.reference(|cpu| cpu.reduce(op, r, x, y))
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
        self.reference(|cpu| cpu.reduce_backward(op, r, x, y, dy, dx))
    }
    fn softmax(&mut self, log: bool, r: Axis3, x: usize, y: usize) -> Result<()> {
        self.reference(|cpu| cpu.softmax(log, r, x, y))
    }
    fn softmax_backward(
        &mut self,
        log: bool,
        r: Axis3,
        y: usize,
        dy: usize,
        dx: usize,
    ) -> Result<()> {
        self.reference(|cpu| cpu.softmax_backward(log, r, y, dy, dx))
    }
    #[inline(always)]
    fn loss(&mut self, op: LossOp, classes: usize, p: View, t: View, y: usize) -> Result<()> {
        if op == LossOp::Mse {
            let (yv, [pv, tv]) = split(self.cpu.storage_mut(), y..y + 1, [p.range(), t.range()])?;
            let mut s = 0.0f32;
            for (&p, &t) in pv.iter().zip(tv) {
                let d = p - t;
                s += d * d;
            }
            yv[0] = s / pv.len() as f32;
            return Ok(());
        }
        self.reference(|cpu| cpu.loss(op, classes, p, t, y))
    }
    #[inline(always)]
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
        if op == LossOp::Mse {
            let n = if lhs { p.len() } else { t.len() };
            let (d, [pv, tv, g]) = split(
                self.cpu.storage_mut(),
                dx..dx + n,
                [p.range(), t.range(), dy..dy + 1],
            )?;
            let k = 2.0 * g[0] / pv.len() as f32;
            let k = if lhs { k } else { -k };
            for ((d, &p), &t) in d.iter_mut().zip(pv).zip(tv) {
                *d += k * (p - t);
            }
            return Ok(());
        }
        self.reference(|cpu| cpu.loss_backward(op, lhs, classes, p, t, dy, dx))
    }
    fn sgd(&mut self, u: &SgdUpdate) -> Result<()> {
        self.reference(|cpu| cpu.sgd(u))
    }
    fn rms(&mut self, u: &RmsUpdate) -> Result<()> {
        self.reference(|cpu| cpu.rms(u))
    }
    #[inline(always)]
    fn adam(&mut self, u: &AdamUpdate) -> Result<()> {
        if u.vmax.is_some() {
            // AMSGrad: the reference kernel (no fast path of its own).
            return self.reference(|cpu| cpu.adam(u));
        }
        // The reference kernel's formula in f32 with the FPU's square root; its constants are
        // made once per step (the reference makes them per parameter, in f64).
        // The settings change rarely, the bias corrections every step: two keys, so that a
        // step converts only the two corrections from f64 (software on this core).
        let key = [
            u.lr.to_bits(),
            u.beta1.to_bits(),
            u.beta2.to_bits(),
            u.eps.to_bits(),
            u.weight_decay.to_bits(),
            u.decoupled as u64,
        ];
        let bias_key = [u.bias1.to_bits(), u.bias2.to_bits()];
        let (old_key, old_bias) = self.adam_key.split_at(6);
        let settings = key.iter().zip(old_key).any(|(a, b)| a != b);
        if settings {
            let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
            let (l2, decay) = if u.decoupled {
                (0.0, 1.0 - (u.lr * u.weight_decay) as f32)
            } else {
                (u.weight_decay as f32, 1.0)
            };
            self.adam = AdamConsts {
                b1,
                b2,
                c1: 1.0 - b1,
                c2: 1.0 - b2,
                lr: u.lr as f32,
                eps: u.eps as f32,
                l2,
                decay,
                ..self.adam
            };
        }
        if settings || bias_key.iter().zip(old_bias).any(|(a, b)| a != b) {
            self.adam.step = self.adam.lr / u.bias1 as f32;
            self.adam.inv_sqrt_b2 = 1.0 / crate::sqrtf(u.bias2 as f32);
            self.adam_key = [
                key[0],
                key[1],
                key[2],
                key[3],
                key[4],
                key[5],
                bias_key[0],
                bias_key[1],
            ];
        }
        let k = self.adam;
        let n = u.len;
        let buf = self.cpu.storage_mut();
        // The four ranges must lie in the arena and not overlap (what `split_mut` checks, without
        // its sort).
        let starts = [u.param, u.grad, u.m, u.v];
        for (i, &a) in starts.iter().enumerate() {
            if a.checked_add(n).is_none_or(|e| e > buf.len()) {
                return Err(Error::IndexOutOfRange {
                    op: "adam",
                    index: a,
                    bound: buf.len(),
                });
            }
            for &b in &starts[i + 1..] {
                if a < b + n && b < a + n {
                    return Err(Error::Aliasing);
                }
            }
        }
        let base = buf.as_mut_ptr();
        for i in 0..n {
            // In bounds and disjoint: checked above.
            unsafe {
                let (p, g, m, v) = (
                    base.add(u.param + i),
                    base.add(u.grad + i),
                    base.add(u.m + i),
                    base.add(u.v + i),
                );
                let g = *g + k.l2 * *p;
                *m = k.b1 * *m + k.c1 * g;
                *v = k.b2 * *v + k.c2 * g * g;
                *p = *p * k.decay - k.step * *m / (crate::sqrtf(*v) * k.inv_sqrt_b2 + k.eps);
            }
        }
        Ok(())
    }
    fn sum_squares(&mut self, offset: usize, len: usize) -> Result<f64> {
        self.reference(|cpu| cpu.sum_squares(offset, len))
    }
    #[inline(always)]
    fn scale(&mut self, offset: usize, len: usize, factor: f32) -> Result<()> {
        self.reference(|cpu| cpu.scale(offset, len, factor))
    }
}
