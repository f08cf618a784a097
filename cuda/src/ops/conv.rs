//! Convolution passes ([`mote::Backend::conv`]) as im2col, cuBLAS products and col2im over
//! chunks of images, in the backend's convolution scratch ([`crate::Options::conv_workspace_bytes`]):
//!
//! - forward: `im2col` of the chunk, then per group one strided-batched product over its
//!   images, `y[n, g] = W[g] cols[g][:, n]`;
//! - weight gradient: `im2col`, the output gradient with images side by side
//!   (`conv_dy_perm`), then per group one product over the whole chunk,
//!   `dW[g] += dy[g] cols[g]^T`;
//! - input gradient: per group one strided-batched product, `dcols[g][:, n] = W[g]^T dy[n, g]`,
//!   then `col2im` gathers every input element's taps (no atomics).
//!
//! That is 2 + G launches per chunk forward, 2 + G for the weight and G + 1 for the input,
//! where the core's path runs a strided copy per tap and a product per image for the weight.
//! A held-back zero fill of the gradient is taken in (the first product overwrites, col2im
//! does not add).

use std::ffi::c_void;

use cudarc::cublas::sys as blas;
use mote::ops::conv::{ConvCall, ConvPass, PoolCall, PoolPass};
use mote::Result;

use crate::ops::rg;
use crate::pending::Write;
use crate::Cuda;

/// One row-major product `C = op(A) op(B) (+ C)`, over `batch` operand triples `stride`
/// floats apart; addresses are device addresses.
struct RowGemm {
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: (u64, usize, usize),
    b: (u64, usize, usize),
    c: (u64, usize, usize),
    batch: usize,
    accumulate: bool,
}

/// The largest index a launch may reach (32-bit index arithmetic in conv.cu, `int` in cuBLAS).
const MAX_INDEX: usize = i32::MAX as usize;

impl Cuda {
    /// Row-major `C = op(A) op(B)` as cuBLAS's column-major `C^T = op(B)^T op(A)^T`. A size
    /// that does not fit cuBLAS's `int` is an error (the callers' chunks keep them in range).
    fn row_gemm(&self, g: &RowGemm) -> Result<()> {
        let int = |v: usize| i32::try_from(v).ok();
        let long = |v: usize| i64::try_from(v).ok();
        let dims = (
            int(g.m),
            int(g.n),
            int(g.k),
            int(g.a.1),
            int(g.b.1),
            int(g.c.1),
            int(g.batch),
        );
        let strides = (long(g.a.2), long(g.b.2), long(g.c.2));
        let (
            (Some(m), Some(n), Some(k), Some(lda), Some(ldb), Some(ldc), Some(batch)),
            (Some(sa), Some(sb), Some(sc)),
        ) = (dims, strides)
        else {
            return Err(self.fail("conv", "a product too large for cuBLAS"));
        };
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (compute, name) = self.compute();
        let f32t = blas::cudaDataType::CUDA_R_32F;
        let (one, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        let status = self.timed(name, || {
            // SAFETY: the callers pass operands inside the arena or the convolution scratch,
            // sized for these dimensions; alpha and beta are host scalars read during the call.
            Ok(unsafe {
                blas::cublasGemmStridedBatchedEx(
                    self.blas,
                    op(g.tb),
                    op(g.ta),
                    n,
                    m,
                    k,
                    &one as *const f32 as *const c_void,
                    g.b.0 as *const c_void,
                    f32t,
                    ldb,
                    sb,
                    g.a.0 as *const c_void,
                    f32t,
                    lda,
                    sa,
                    &beta as *const f32 as *const c_void,
                    g.c.0 as *mut c_void,
                    f32t,
                    ldc,
                    sc,
                    batch,
                    compute,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            })
        })?;
        status
            .result()
            .map_err(|e| self.fail("cublasGemmStridedBatchedEx", e))
    }

    /// One convolution pass; `false` (nothing done) where the geometry is not one this path
    /// takes: not even one image fits the scratch, or an index would pass 32 bits.
    pub(crate) fn conv_impl(&mut self, call: &ConvCall) -> Result<bool> {
        let [xl, wl, yl] = call.lens()?;
        let (n, c, o, groups) = (call.images, call.channels, call.out_channels, call.groups);
        let ([h, w], [kh, kw], [oh, ow]) = (call.size, call.kernel, call.out);
        // The tensors first (`lens` bounds them), then the sizes derived from the geometry,
        // which `lens` does not bound (a column per tap and position): checked.
        let (a, b, d) = match call.pass {
            ConvPass::Forward { x, w, y } => ((x, xl), (w, wl), (y, yl)),
            ConvPass::WeightGrad { x, dy, dw } => ((x, xl), (dy, yl), (dw, wl)),
            ConvPass::InputGrad { w, dy, dx } => ((w, wl), (dy, yl), (dx, xl)),
        };
        for (o, l) in [a, b, d] {
            self.check_range(o, l)?;
        }
        let og = o / groups;
        let sizes = (|| {
            let p = oh.checked_mul(ow)?;
            let rows = c.checked_mul(kh)?.checked_mul(kw)?;
            let per = rows.checked_add(o)?.checked_mul(p)?;
            Some((p, rows, per, rows.checked_mul(p)?, o.checked_mul(p)?))
        })();
        let Some((p, rows, per, col_img, y_img)) = sizes else {
            return Ok(false);
        };
        let kk = rows / groups;
        if n == 0 || p == 0 || kk == 0 || og == 0 {
            return Ok(false);
        }
        // Images per chunk: the columns and the permuted output gradient fit the scratch, and
        // every launch's indices fit 32 bits.
        let chunk = [
            self.conv_ws_bytes / 4 / per,
            MAX_INDEX / col_img,
            MAX_INDEX / (c * h * w).max(1),
            MAX_INDEX / y_img,
            n,
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        if chunk == 0 {
            return Ok(false);
        }
        let geo: Vec<u64> = [
            c,
            h,
            w,
            o,
            groups,
            kh,
            kw,
            call.stride[0],
            call.stride[1],
            call.padding[0],
            call.padding[1],
            call.dilation[0],
            call.dilation[1],
            oh,
            ow,
        ]
        .iter()
        .map(|&v| v as u64)
        .collect();
        let Some(geo) = self.upload_table(geo)? else {
            return Ok(false);
        };
        let col = self.conv_ws;
        let f = |v: usize| 4 * v as u64;
        let x_img = c * h * w;
        match call.pass {
            ConvPass::Forward { x, w: wt, y } => {
                self.settle(&[rg(x, xl), rg(wt, wl)], rg(y, yl), Write::Overwrite)?;
                for s in (0..n).step_by(chunk) {
                    let m = chunk.min(n - s);
                    self.im2col(geo, self.at(x + s * x_img), col, m, rows * m * p)?;
                    for g in 0..groups {
                        self.row_gemm(&RowGemm {
                            ta: false,
                            tb: false,
                            m: og,
                            n: p,
                            k: kk,
                            a: (self.at(wt + g * og * kk), kk, 0),
                            b: (col + f(g * kk * m * p), m * p, p),
                            c: (self.at(y + s * y_img + g * og * p), p, y_img),
                            batch: m,
                            accumulate: false,
                        })?;
                    }
                }
            }
            ConvPass::WeightGrad { x, dy, dw } => {
                let overwrite =
                    self.settle(&[rg(x, xl), rg(dy, yl)], rg(dw, wl), Write::Accumulate)?;
                for s in (0..n).step_by(chunk) {
                    let m = chunk.min(n - s);
                    let dyt = col + f(rows * m * p);
                    self.im2col(geo, self.at(x + s * x_img), col, m, rows * m * p)?;
                    let (dp, nc) = (self.at(dy + s * y_img), m as u64);
                    self.launch(
                        "conv_dy_perm",
                        self.blocks((o * m * p) as u64, super::THREADS),
                        super::THREADS,
                        &[&geo, &dp, &dyt, &nc],
                    )?;
                    for g in 0..groups {
                        self.row_gemm(&RowGemm {
                            ta: false,
                            tb: true,
                            m: og,
                            n: kk,
                            k: m * p,
                            a: (dyt + f(g * og * m * p), m * p, 0),
                            b: (col + f(g * kk * m * p), m * p, 0),
                            c: (self.at(dw + g * og * kk), kk, 0),
                            batch: 1,
                            accumulate: s > 0 || !overwrite,
                        })?;
                    }
                }
            }
            ConvPass::InputGrad { w: wt, dy, dx } => {
                let overwrite =
                    self.settle(&[rg(wt, wl), rg(dy, yl)], rg(dx, xl), Write::Accumulate)?;
                for s in (0..n).step_by(chunk) {
                    let m = chunk.min(n - s);
                    for g in 0..groups {
                        self.row_gemm(&RowGemm {
                            ta: true,
                            tb: false,
                            m: kk,
                            n: p,
                            k: og,
                            a: (self.at(wt + g * og * kk), kk, 0),
                            b: (self.at(dy + s * y_img + g * og * p), p, y_img),
                            c: (col + f(g * kk * m * p), m * p, p),
                            batch: m,
                            accumulate: false,
                        })?;
                    }
                    let (dxp, nc, acc) = (self.at(dx + s * x_img), m as u64, i32::from(!overwrite));
                    self.launch(
                        "col2im",
                        self.blocks((m * x_img) as u64, super::THREADS),
                        super::THREADS,
                        &[&geo, &col, &dxp, &nc, &acc],
                    )?;
                }
            }
        }
        Ok(true)
    }

    /// One pooling pass, read in place (`pool_fwd` / `pool_bwd`, one launch); `false` where an
    /// index would pass 32 bits.
    pub(crate) fn pool_impl(&mut self, call: &PoolCall) -> Result<bool> {
        let [xl, yl] = call.lens()?;
        if xl > MAX_INDEX || yl > MAX_INDEX {
            return Ok(false);
        }
        let geo: Vec<u64> = [
            call.size[0],
            call.size[1],
            call.kernel[0],
            call.kernel[1],
            call.stride[0],
            call.stride[1],
            call.padding[0],
            call.padding[1],
            call.out[0],
            call.out[1],
        ]
        .iter()
        .map(|&v| v as u64)
        .collect();
        let Some(geo) = self.upload_table(geo)? else {
            return Ok(false);
        };
        let (max, planes) = (i32::from(call.max), call.planes as u64);
        match call.pass {
            PoolPass::Forward { x, y } => {
                self.check_range(x, xl)?;
                self.check_range(y, yl)?;
                self.settle(&[rg(x, xl)], rg(y, yl), Write::Overwrite)?;
                let (xp, yp) = (self.at(x), self.at(y));
                self.launch(
                    "pool_fwd",
                    self.blocks(yl as u64, super::THREADS),
                    super::THREADS,
                    &[&max, &geo, &xp, &yp, &planes],
                )?;
            }
            PoolPass::Backward { x, y, dy, dx } => {
                for (o, l) in [(x, xl), (y, yl), (dy, yl), (dx, xl)] {
                    self.check_range(o, l)?;
                }
                let overwrite = self.settle(
                    &[rg(x, xl), rg(y, yl), rg(dy, yl)],
                    rg(dx, xl),
                    Write::Accumulate,
                )?;
                let (xp, yp, dyp, dxp) = (self.at(x), self.at(y), self.at(dy), self.at(dx));
                let acc = i32::from(!overwrite);
                self.launch(
                    "pool_bwd",
                    self.blocks(xl as u64, super::THREADS),
                    super::THREADS,
                    &[&max, &geo, &xp, &yp, &dyp, &dxp, &planes, &acc],
                )?;
            }
        }
        Ok(true)
    }

    fn im2col(&self, geo: u64, x: u64, col: u64, images: usize, total: usize) -> Result<()> {
        let nc = images as u64;
        self.launch(
            "im2col",
            self.blocks(total as u64, super::THREADS),
            super::THREADS,
            &[&geo, &x, &col, &nc],
        )
    }
}
