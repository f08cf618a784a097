//! Small f32 matrix products (a few thousand multiply-adds, such as W-seed's layers), where the
//! `gemm` crate's fixed cost per call (its packing buffers, allocated and freed each call) is
//! most of the time. Each block of C (8 rows by 16 columns with AVX-512, 4 by 8 or 16 with
//! AVX2) is summed in registers over the whole depth with fused multiply-adds: the rows'
//! elements are read in place one at a time, the columns as vectors, in place where they lie
//! side by side in memory, else from a copy in a scratch buffer the backend keeps. The product
//! is computed as `C^T = B^T A^T` instead where that costs less.
//!
//! Each element of C is one sum over the depth in order, as in the core's kernel, but with a
//! fused multiply-add per step (one rounding where the core has two); the `gemm` crate fuses as
//! well, so results agree with both to rounding.

use mote::ops::matmul::Gemm;
use mote::Float;

use super::isa::{Avx2, Avx512, Isa};
use super::{as_f32, as_f32_mut};

/// Multiply-adds (`m n k`) up to which a product takes this path.
pub(super) const LIMIT: usize = 1 << 14;

/// The block shape for an instruction set: rows, and columns (vectors of it) for Y's rows.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    lanes: usize,
}

impl Shape {
    /// Columns of C a block sums when Y has `rows` rows: 16 (one AVX-512 vector, two AVX2
    /// ones), or 8 for at most 8 rows on AVX2.
    fn width(self, rows: usize) -> usize {
        if self.lanes == 16 || rows > 8 {
            16
        } else {
            8
        }
    }

    /// About the cycles of `X Y^T` over depth `k` into C with column stride `cs`: half a cycle
    /// a vector multiply-add (two units), a cycle an element copied, a vector stored (C's rows
    /// side by side) or two cycles an element stored (apart).
    fn cost(self, x: &Operand, y: &Operand, k: usize, cs: usize) -> usize {
        let w = self.width(y.rows);
        let vectors = y.rows.div_ceil(w) * (w / self.lanes);
        let stores = if cs == 1 {
            x.rows * vectors
        } else {
            2 * x.rows * y.rows
        };
        x.rows.div_ceil(self.rows) * self.rows * vectors * k / 2 + y.copied(w, k) + stores
    }
}

/// `C (+)= A B` for the unbatched f32 product `g` (slices starting at the matrices); `scratch`
/// is grown to hold what must be copied. Uses AVX-512 where the CPU has it and `avx512` is
/// true, else AVX2 and FMA. Returns false (having done nothing) for another type, a batched
/// product, slices too short for it, or a CPU with neither.
pub(super) fn product<T: Float>(
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
    scratch: &mut Vec<T>,
    avx512: bool,
) -> bool {
    let (Some(a), Some(b), Some(c)) = (as_f32(a), as_f32(b), as_f32_mut(c)) else {
        return false;
    };
    let (m, n, k) = (g.m, g.n, g.k);
    let fits =
        |rows: usize, cols: usize, len: usize| rows.checked_mul(cols).is_some_and(|e| e <= len);
    let ok = g.batch == 1 && m > 0 && n > 0 && k > 0;
    if !ok || !fits(m, n, c.len()) || !fits(m, k, a.len()) || !fits(k, n, b.len()) {
        return false;
    }
    let wide = Avx512::detect().filter(|_| avx512);
    let narrow = Avx2::detect();
    let shape = match (wide, narrow) {
        (Some(_), _) => Shape { rows: 8, lanes: 16 },
        (None, Some(_)) => Shape { rows: 4, lanes: 8 },
        (None, None) => return false,
    };
    // C = X Y^T: X's rows are A's (C's rows), Y's rows are B's columns (C's columns); or
    // C^T = B^T A^T, with the roles swapped.
    let a = if g.a_trans {
        Operand {
            data: a,
            rows: m,
            rs: 1,
            cs: m,
        }
    } else {
        Operand {
            data: a,
            rows: m,
            rs: k,
            cs: 1,
        }
    };
    let b = if g.b_trans {
        Operand {
            data: b,
            rows: n,
            rs: k,
            cs: 1,
        }
    } else {
        Operand {
            data: b,
            rows: n,
            rs: 1,
            cs: n,
        }
    };
    let (x, y, c_s) = if shape.cost(&b, &a, k, n) < shape.cost(&a, &b, k, 1) {
        (b, a, (1, n))
    } else {
        (a, b, (n, 1))
    };
    let w = shape.width(y.rows);
    if 4 * y.rows < w {
        // At most 3 columns of 16 lanes in every vector: the crate does better, also than the
        // other orientation, which copies the larger operand (W-seed's 64 x 1 x 10 `A B^T`:
        // 0.19 us on the crate, 0.43 us as chosen; turned round, W-seed's step went from 3.5
        // to 4.0 us).
        return false;
    }
    let need = y.copied(w, k);
    if scratch.len() < need {
        scratch.resize(need, T::ZERO);
    }
    let Some(scratch) = as_f32_mut(&mut scratch[..need]) else {
        return false;
    };
    let run = Run {
        x,
        y,
        k,
        c_s,
        accumulate: g.accumulate,
    };
    // SAFETY: X and Y lie inside their slices (`fits`: their last element is at
    // (rows - 1) rs + (k - 1) cs = rows k - 1 either way), `c` holds C's `m n` elements and
    // `scratch` has `y.copied(w, k)`, `w` being the blocks' width.
    unsafe {
        match (wide, narrow) {
            (Some(isa), _) => isa.enable(|| run.blocks::<Avx512, 8, 1>(c, scratch)),
            (None, Some(isa)) if w == 8 => isa.enable(|| run.blocks::<Avx2, 4, 1>(c, scratch)),
            (None, Some(isa)) => isa.enable(|| run.blocks::<Avx2, 4, 2>(c, scratch)),
            (None, None) => {}
        }
    }
    true
}

/// One factor of a product as [`Run::blocks`] reads it: `rows` rows (of A, or columns of B)
/// over the depth, element (row, p) at `row * rs + p * cs`.
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    rs: usize,
    cs: usize,
}

impl Operand<'_> {
    /// Elements of scratch [`Run::blocks`] needs with this factor as Y in blocks `w` wide: all
    /// of it when its rows do not lie side by side, else none.
    fn copied(&self, w: usize, k: usize) -> usize {
        if self.rs != 1 {
            self.rows.div_ceil(w) * w * k
        } else {
            0
        }
    }

    /// The factor copied into `dst` in blocks of `w` rows, depth-major (`dst[(block * k + p) *
    /// w + lane]`); a partial last block's other lanes are zeroed (what was left there could be
    /// a subnormal, whose arithmetic is slow, or a NaN).
    fn pack(&self, w: usize, k: usize, dst: &mut [f32]) {
        for (block, dst) in dst.chunks_exact_mut(w * k).enumerate() {
            for lane in 0..w {
                let row = block * w + lane;
                let to = dst[lane..].iter_mut().step_by(w);
                if row < self.rows {
                    let from = self.data[row * self.rs..].iter().step_by(self.cs);
                    to.zip(from).for_each(|(d, &s)| *d = s);
                } else {
                    to.for_each(|d| *d = 0.0);
                }
            }
        }
    }
}

/// `C (+)= X Y^T` over depth `k`: X's rows are C's rows, Y's rows its columns; element (i, j)
/// of C at `i * c_s.0 + j * c_s.1`.
struct Run<'a> {
    x: Operand<'a>,
    y: Operand<'a>,
    k: usize,
    c_s: (usize, usize),
    accumulate: bool,
}

impl Run<'_> {
    /// The product in blocks of `R` rows by `NV` vectors.
    ///
    /// # Safety
    /// Only inside [`Isa::enable`]; X's and Y's elements lie inside their slices; C's inside
    /// `c`; `scratch` holds `y.copied(NV * I::LANES, k)` elements.
    #[inline(always)]
    unsafe fn blocks<I: Isa, const R: usize, const NV: usize>(
        &self,
        c: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (x, y, k) = (&self.x, &self.y, self.k);
        let w = NV * I::LANES;
        let whole = y.rs != 1;
        if whole {
            y.pack(w, k, scratch);
        }
        for j0 in (0..y.rows).step_by(w) {
            let cols = w.min(y.rows - j0);
            // Y's rows j0.. at depth p: `cols` elements from `ys + p * stride`.
            let (ys, stride) = if whole {
                (scratch[j0 * k..].as_ptr(), w)
            } else {
                (y.data[j0..].as_ptr(), y.cs)
            };
            let lanes: [usize; NV] =
                std::array::from_fn(|v| cols.saturating_sub(v * I::LANES).min(I::LANES));
            for i0 in (0..x.rows).step_by(R) {
                let rows = R.min(x.rows - i0);
                // A partial block repeats its last row (summed, never stored).
                let xr: [*const f32; R] =
                    std::array::from_fn(|r| x.data[(i0 + r.min(rows - 1)) * x.rs..].as_ptr());
                // SAFETY (of the loop): inside `enable`; Y's rows j0..j0 + cols at depth p
                // lie in Y or in the copy (whole blocks); X's rows at depth p lie in X.
                let mut acc = [[unsafe { I::zero() }; NV]; R];
                for p in 0..k {
                    let yp = unsafe { ys.add(p * stride) };
                    // A vector past the block's columns is not even pointed at (it could lie
                    // past the end of Y).
                    let yv: [I::V; NV] = std::array::from_fn(|v| unsafe {
                        if whole || lanes[v] == I::LANES {
                            I::load(yp.add(v * I::LANES))
                        } else if lanes[v] == 0 {
                            I::zero()
                        } else {
                            I::load_first(yp.add(v * I::LANES), lanes[v])
                        }
                    });
                    for (row, xp) in acc.iter_mut().zip(xr) {
                        let xv = unsafe { I::splat(*xp.add(p * x.cs)) };
                        for (s, &yv) in row.iter_mut().zip(&yv) {
                            *s = unsafe { I::fma(xv, yv, *s) };
                        }
                    }
                }
                if self.c_s.1 == 1 {
                    for (r, row) in acc.iter().enumerate().take(rows) {
                        let start = (i0 + r) * self.c_s.0 + j0;
                        let dst = c[start..start + cols].as_mut_ptr();
                        for (v, &s) in row.iter().enumerate().take(cols.div_ceil(I::LANES)) {
                            // SAFETY: inside `enable`; lanes[v] (at least 1) elements from
                            // `v * LANES` lie in the row's `cols`.
                            unsafe {
                                let d = dst.add(v * I::LANES);
                                let s = if self.accumulate {
                                    I::add(I::load_first(d, lanes[v]), s)
                                } else {
                                    s
                                };
                                I::store_first(d, s, lanes[v]);
                            }
                        }
                    }
                } else {
                    let mut out = [0.0f32; 32];
                    for (r, row) in acc.iter().enumerate().take(rows) {
                        for (v, &s) in row.iter().enumerate() {
                            // SAFETY: `out` holds NV * LANES (at most 32) lanes.
                            unsafe { I::store(out.as_mut_ptr().add(v * I::LANES), s) };
                        }
                        for (l, &s) in out.iter().enumerate().take(cols) {
                            let d = &mut c[(i0 + r) * self.c_s.0 + (j0 + l) * self.c_s.1];
                            *d = if self.accumulate { *d + s } else { s };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every layout on operands in allocations of exactly their size, on both instruction
    // sets, against the core's kernel; column counts 9 to 16 with AVX2's 16-column blocks
    // leave the second vector of the last block empty. Each product with at least 4 rows and
    // columns must take this path.
    #[test]
    fn exact_operands_every_layout_both_sets() {
        let val = |i: usize, s: usize| ((i * 37 + s * 11) % 23) as f32 / 8.0 - 1.4;
        for (m, n, k) in [
            (64, 10, 8),
            (10, 8, 64),
            (1, 10, 64),
            (64, 10, 1),
            (12, 9, 5),
        ]
        .into_iter()
        .chain((9..=16).map(|n| (13, n, 7)))
        {
            for layout in 0..4 {
                for accumulate in [false, true] {
                    for avx512 in [true, false] {
                        let g = Gemm {
                            batch: 1,
                            m,
                            n,
                            k,
                            a: 0,
                            a_trans: layout & 1 == 1,
                            a_batch: 0,
                            b: 0,
                            b_trans: layout & 2 == 2,
                            b_batch: 0,
                            c: 0,
                            c_batch: 0,
                            accumulate,
                        };
                        let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
                        let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
                        let c0: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
                        let mut want = c0.clone();
                        mote::ops::matmul::gemm(&g, &a, &b, &mut want);
                        let mut c = c0.clone();
                        let mut scratch = Vec::new();
                        let took = product(&g, &a, &b, &mut c, &mut scratch, avx512);
                        let what = format!("{m}x{n}x{k} layout {layout} acc {accumulate}");
                        // Only products with fewer than 4 rows or columns may be declined.
                        let thin = m < 4 || n < 4;
                        assert!(took || thin || Avx2::detect().is_none(), "{what}: declined");
                        if !took {
                            continue;
                        }
                        for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                            assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{what} [{i}]");
                        }
                    }
                }
            }
        }
    }
}
