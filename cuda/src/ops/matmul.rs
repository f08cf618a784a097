//! Matrix products through cuBLAS: `cublasGemmEx` for one product, `cublasGemmStridedBatchedEx`
//! for a batch; f32, TF32 or bf16 compute with f32 accumulation ([`crate::Precision`]).
//!
//! cuBLAS is column-major; a row-major `C = A B` is the column-major `C^T = B^T A^T`, so the
//! call swaps the operands and passes `n, m, k`.

use std::ffi::c_void;

use cudarc::cublas::sys as blas;
use mote::backend::split;
use mote::ops::matmul::Gemm;
use mote::{Error, Result};

use crate::pending::{Bias, Stage, Write};
use crate::{Cuda, Precision};

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument {
        what: "gemm: a dimension exceeds cuBLAS's 32-bit range",
    })
}

impl Cuda {
    /// cuBLAS's compute type for the backend's precision, and the profile's name for it.
    pub(crate) fn compute(&self) -> (blas::cublasComputeType_t, &'static str) {
        match self.precision {
            Precision::F32 => (
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                "cublas_sgemm",
            ),
            Precision::Tf32 => (
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                "cublas_gemm_tf32",
            ),
            Precision::Bf16 => (
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
                "cublas_gemm_bf16",
            ),
        }
    }

    /// For a large [`Precision::Tf32`] product whose operands are not both K-major (`A` stored
    /// `m x k`, `B` stored `n x k`), copies those that are not into the convolution scratch,
    /// transposed, and returns the device addresses of `A` and `B` to read K-major
    /// ([`crate::Options::k_major_from`]); `None` to read them in place.
    fn k_major_copies(&self, g: &Gemm) -> Result<Option<(u64, u64)>> {
        let madds = (g.m as u64)
            .saturating_mul(g.n as u64)
            .saturating_mul(g.k as u64);
        if self.precision != Precision::Tf32
            || g.batch != 1
            || (!g.a_trans && g.b_trans)
            || madds == 0
            || madds < self.k_major_from
        {
            return Ok(None);
        }
        // B's copy starts on a 256-byte boundary after A's (cuBLAS's alignment for its fastest
        // kernels).
        let a_len = if g.a_trans {
            (g.m * g.k).next_multiple_of(64)
        } else {
            0
        };
        let b_len = if g.b_trans { 0 } else { g.n * g.k };
        if a_len.saturating_add(b_len) > self.conv_ws_bytes / 4 {
            return Ok(None);
        }
        // The transposes' grids (32 x 32 tiles): in place where one does not fit a launch.
        let tiles = |rows: usize, cols: usize| {
            u32::try_from((rows.div_ceil(32) as u64).saturating_mul(cols.div_ceil(32) as u64))
                .ok()
                .filter(|&g| g <= crate::device::MAX_GRID_X)
        };
        if tiles(g.k, g.m).is_none() || tiles(g.k, g.n).is_none() {
            return Ok(None);
        }
        // `src` stored `rows x cols`, copied `cols x rows` to `dst`.
        let flip = |src: usize, dst: u64, rows: usize, cols: usize| -> Result<()> {
            let grid = tiles(rows, cols).unwrap_or(u32::MAX);
            let (sp, r, c) = (self.at(src), rows as u64, cols as u64);
            self.launch_2d("transpose", grid, (32, 8), &[&sp, &dst, &r, &c])
        };
        let a = if g.a_trans {
            flip(g.a, self.conv_ws, g.k, g.m)?;
            self.conv_ws
        } else {
            self.at(g.a)
        };
        let b = if g.b_trans {
            self.at(g.b)
        } else {
            let at = self.conv_ws + 4 * a_len as u64;
            flip(g.b, at, g.k, g.n)?;
            at
        };
        Ok(Some((a, b)))
    }

    pub(crate) fn gemm_impl(&mut self, g: &Gemm) -> Result<()> {
        let (sa, sb, sc) = g.spans();
        let r = |o: usize, n: usize| o..o.saturating_add(n);
        split(&mut self.shadow, r(g.c, sc), [r(g.a, sa), r(g.b, sb)])?;
        if g.batch == 0 || g.m == 0 || g.n == 0 {
            return Ok(());
        }
        // cuBLAS's sizes (checked before anything held back is taken out).
        let (m, n, k) = (int(g.n)?, int(g.m)?, int(g.k)?);
        let stride = |v: usize| -> Result<i64> {
            i64::try_from(v).map_err(|_| Error::InvalidArgument {
                what: "gemm: batch stride too large",
            })
        };
        let strides = (stride(g.b_batch)?, stride(g.a_batch)?, stride(g.c_batch)?);
        let batch = int(g.batch)?;
        // A held-back bias broadcast into exactly this output (a linear layer): the product
        // overwrites, and the bias is owed as `y += b` (`src/pending.rs`).
        let bias = if g.accumulate && g.batch == 1 {
            self.pending.borrow_mut().take_bias_copy(g.c, g.m, g.n)
        } else {
            None
        };
        // Every element of C is written when the batches do not leave gaps (a shared output
        // sums every batch's product into one).
        let whole = g.batch == 1 || g.c_batch == 0 || g.c_batch == g.m * g.n;
        let kind = match (whole, g.accumulate && bias.is_none()) {
            (false, _) => Write::Partial,
            (true, false) => Write::Overwrite,
            (true, true) => Write::Accumulate,
        };
        let overwrite = self.settle(&[r(g.a, sa), r(g.b, sb)], r(g.c, sc), kind)?;
        let accumulate = g.accumulate && bias.is_none() && !overwrite;
        // The operands as cuBLAS reads them: in place, or K-major copies (TF32).
        let (a_trans, b_trans, pb, pa) = match self.k_major_copies(g)? {
            Some((a, b)) => (false, true, a, b),
            None => (g.a_trans, g.b_trans, self.at(g.a), self.at(g.b)),
        };
        // B^T as the first operand: stored n x k (b_trans) or k x n. A leading dimension is at
        // least 1, as cuBLAS requires, also for an empty inner dimension (k = 0: C = beta C).
        let (op_a, lda) = if b_trans {
            (blas::cublasOperation_t::CUBLAS_OP_T, k.max(1))
        } else {
            (blas::cublasOperation_t::CUBLAS_OP_N, m)
        };
        let (op_b, ldb) = if a_trans {
            (blas::cublasOperation_t::CUBLAS_OP_T, n)
        } else {
            (blas::cublasOperation_t::CUBLAS_OP_N, k.max(1))
        };
        let ldc = m;
        let (compute, name) = self.compute();
        let f32t = blas::cudaDataType::CUDA_R_32F;
        let algo = blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT;
        let one = 1.0f32;
        let beta0 = if accumulate { 1.0f32 } else { 0.0f32 };
        let pc = self.at(g.c);
        // Outputs that overlap run one call per batch, in order, as the reference does (cuBLAS
        // runs a strided batch's products concurrently: overlapping outputs would race). A
        // shared output (batch stride 0) sums every batch's product, the later calls
        // accumulating.
        let shared_c = g.c_batch == 0 && g.batch > 1;
        let overlapping = g.batch > 1 && g.c_batch < g.m * g.n;
        let single = |i: usize, beta: &f32| -> blas::cublasStatus_t {
            let (ia, ib, ic) = (
                pa + 4 * (i * g.b_batch) as u64,
                pb + 4 * (i * g.a_batch) as u64,
                pc + 4 * (i * g.c_batch) as u64,
            );
            // SAFETY: operands lie inside the arena (checked above); alpha and beta are host
            // scalars read during the call.
            unsafe {
                blas::cublasGemmEx(
                    self.blas,
                    op_a,
                    op_b,
                    m,
                    n,
                    k,
                    &one as *const f32 as *const c_void,
                    ia as *const c_void,
                    f32t,
                    lda,
                    ib as *const c_void,
                    f32t,
                    ldb,
                    beta as *const f32 as *const c_void,
                    ic as *mut c_void,
                    f32t,
                    ldc,
                    compute,
                    algo,
                )
            }
        };
        let status = self.timed(name, || {
            Ok(if g.batch == 1 {
                single(0, &beta0)
            } else if overlapping {
                let mut s = blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
                for i in 0..g.batch {
                    let beta = if shared_c && i > 0 { 1.0 } else { beta0 };
                    s = single(i, &beta);
                    if s != blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                        break;
                    }
                }
                s
            } else {
                let (sa, sb, sc) = strides;
                // SAFETY: as above, for every batch (the spans were checked).
                unsafe {
                    blas::cublasGemmStridedBatchedEx(
                        self.blas,
                        op_a,
                        op_b,
                        m,
                        n,
                        k,
                        &one as *const f32 as *const c_void,
                        pa as *const c_void,
                        f32t,
                        lda,
                        sa,
                        pb as *const c_void,
                        f32t,
                        ldb,
                        sb,
                        &beta0 as *const f32 as *const c_void,
                        pc as *mut c_void,
                        f32t,
                        ldc,
                        sc,
                        batch,
                        compute,
                        algo,
                    )
                }
            })
        })?;
        status.result().map_err(|e| self.fail("cublasGemmEx", e))?;
        if let Some(b) = bias {
            // Taking the bias emptied the slot, so nothing comes back here in practice.
            let before = self.pending.borrow_mut().hold_bias(Bias {
                stage: Stage::Add,
                ..b
            });
            if let Some(old) = before {
                self.launch_bias(old)?;
            }
        }
        Ok(())
    }
}
