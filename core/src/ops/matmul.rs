//! Matrix products: 2-D, batched 3-D, either operand stored transposed; and the fused `linear`
//! layer op `y = x W^T + b`.
//!
//! Forward: `C[i, j] = sum_p A[i, p] B[p, j]`. Backward: `dA += dC B^T`, `dB += A^T dC`, both
//! expressed as further products of the same kernel with transposed operands, so a backend needs
//! one strided GEMM.

use crate::float::Float;

/// One (possibly batched) matrix product `C (+)= A B`, all offsets relative to the slices that
/// the kernel receives.
///
/// `A` is `m x k` (stored as `k x m` when `a_trans`), `B` is `k x n` (stored `n x k` when
/// `b_trans`), `C` is `m x n` row-major. Matrices of batch `i` start at `i * x_batch`; a batch
/// stride of 0 shares one matrix across the batch (with `accumulate`, a shared `C` sums the
/// products of all batches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// Number of products.
    pub batch: usize,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Arena offset of `A`.
    pub a: usize,
    /// `A` is stored transposed.
    pub a_trans: bool,
    /// Batch stride of `A`.
    pub a_batch: usize,
    /// Arena offset of `B`.
    pub b: usize,
    /// `B` is stored transposed.
    pub b_trans: bool,
    /// Batch stride of `B`.
    pub b_batch: usize,
    /// Arena offset of `C`.
    pub c: usize,
    /// Batch stride of `C`.
    pub c_batch: usize,
    /// Add to `C` instead of overwriting it.
    pub accumulate: bool,
}

impl Gemm {
    /// Elements spanned by A, B and C (from their first to one past their last element).
    #[inline]
    pub fn spans(&self) -> (usize, usize, usize) {
        // Saturating: an impossible descriptor gives a span no arena has, which the backend's
        // range check rejects, instead of an overflow.
        let last = self.batch.saturating_sub(1);
        let span = |batch: usize, r: usize, c: usize| {
            last.saturating_mul(batch)
                .saturating_add(r.saturating_mul(c))
        };
        (
            span(self.a_batch, self.m, self.k),
            span(self.b_batch, self.k, self.n),
            span(self.c_batch, self.m, self.n),
        )
    }

    /// Floating-point operations of the product (2 m n k per batch).
    pub fn flops(&self) -> usize {
        2usize
            .saturating_mul(self.batch)
            .saturating_mul(self.m)
            .saturating_mul(self.n)
            .saturating_mul(self.k)
    }
}

/// Dot product with eight independent accumulators (lets the compiler vectorise).
#[inline]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

/// `y += alpha * x`.
#[inline]
pub fn axpy<T: Float>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

// Register-blocked kernels. Accumulators are small fixed-size arrays that stay in registers
// (the compiler vectorises their lane loops), so each loaded element of `B` serves several rows
// of `C` and `C` is read and written once per tile instead of once per step of the inner
// dimension. Edges fall back to narrower tiles; every access is bounds-checked (`get`), and an
// out-of-range access (impossible for slices covering `Gemm::spans`) skips its tile.

/// Columns of a `gemm_nn` tile.
const NN_W: usize = 8;
/// Rows of a `gemm_nn` tile.
const NN_R: usize = 4;

/// `C (m x n) += A B` with `B` row-major `k x n` and `A[i, p]` at `i as.0 + p as.1`.
fn gemm_nn<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    as_: (usize, usize),
    b: &[T],
    c: &mut [T],
) {
    let full = n - n % NN_W;
    let mut i0 = 0;
    while i0 < m {
        let rows = (m - i0).min(NN_R);
        let mut j0 = 0;
        while j0 < full {
            match rows {
                4 => tile_nn::<T, 4>(i0, j0, n, k, a, as_, b, c),
                3 => tile_nn::<T, 3>(i0, j0, n, k, a, as_, b, c),
                2 => tile_nn::<T, 2>(i0, j0, n, k, a, as_, b, c),
                _ => tile_nn::<T, 1>(i0, j0, n, k, a, as_, b, c),
            }
            j0 += NN_W;
        }
        if full < n {
            for i in i0..i0 + rows {
                let Some(crow) = c.get_mut(i * n + full..(i + 1) * n) else {
                    return;
                };
                for p in 0..k {
                    let ap = a.get(i * as_.0 + p * as_.1).copied().unwrap_or(T::ZERO);
                    if let Some(brow) = b.get(p * n + full..(p + 1) * n) {
                        axpy(ap, brow, crow);
                    }
                }
            }
        }
        i0 += rows;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_nn<T: Float, const R: usize>(
    i0: usize,
    j0: usize,
    n: usize,
    k: usize,
    a: &[T],
    as_: (usize, usize),
    b: &[T],
    c: &mut [T],
) {
    let mut acc = [[T::ZERO; NN_W]; R];
    let brows = b.get(j0..).unwrap_or(&[]).chunks(n).take(k);
    if as_.0 == 1 {
        // A stored transposed: the R values of step p are contiguous.
        let m = as_.1;
        for (p, brow) in brows.enumerate() {
            let (Some(bp), Some(ap)) = (
                brow.first_chunk::<NN_W>(),
                a.get(p * m + i0..).and_then(<[T]>::first_chunk::<R>),
            ) else {
                return;
            };
            fma_rows(&mut acc, ap, bp);
        }
    } else {
        // A row-major: R rows of length k, read in step.
        let rows: [&[T]; R] =
            core::array::from_fn(|r| a.get((i0 + r) * k..(i0 + r + 1) * k).unwrap_or(&[]));
        if rows.iter().any(|r| r.len() != k) {
            return;
        }
        for (p, brow) in brows.enumerate() {
            let Some(bp) = brow.first_chunk::<NN_W>() else {
                return;
            };
            let ap: [T; R] = core::array::from_fn(|r| {
                rows.get(r)
                    .and_then(|row| row.get(p))
                    .copied()
                    .unwrap_or(T::ZERO)
            });
            fma_rows(&mut acc, &ap, bp);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let o = (i0 + r) * n + j0;
        if let Some(crow) = c.get_mut(o..o + NN_W) {
            for (cv, &s) in crow.iter_mut().zip(acc) {
                *cv += s;
            }
        }
    }
}

/// `acc[r][j] += a[r] * b[j]`: one step of the inner dimension for a tile.
#[inline(always)]
fn fma_rows<T: Float, const R: usize>(acc: &mut [[T; NN_W]; R], a: &[T; R], b: &[T; NN_W]) {
    for (acc, &ap) in acc.iter_mut().zip(a) {
        for (s, &bv) in acc.iter_mut().zip(b) {
            *s += ap * bv;
        }
    }
}

/// Lanes of the inner dimension in a `gemm_nt` tile.
const NT_L: usize = 4;

/// `C (m x n) += A B^T` with `A` row-major `m x k` and `B` row-major `n x k`: dot products of
/// rows, two rows of `A` against four rows of `B` at a time.
fn gemm_nt<T: Float>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    let mut i0 = 0;
    while i0 < m {
        let ri = (m - i0).min(2);
        let mut j0 = 0;
        while j0 < n {
            let rj = (n - j0).min(4);
            match (ri, rj) {
                (2, 4) => tile_nt::<T, 2, 4>(i0, j0, n, k, a, b, c),
                (2, 3) => tile_nt::<T, 2, 3>(i0, j0, n, k, a, b, c),
                (2, 2) => tile_nt::<T, 2, 2>(i0, j0, n, k, a, b, c),
                (2, _) => tile_nt::<T, 2, 1>(i0, j0, n, k, a, b, c),
                (_, 4) => tile_nt::<T, 1, 4>(i0, j0, n, k, a, b, c),
                (_, 3) => tile_nt::<T, 1, 3>(i0, j0, n, k, a, b, c),
                (_, 2) => tile_nt::<T, 1, 2>(i0, j0, n, k, a, b, c),
                _ => tile_nt::<T, 1, 1>(i0, j0, n, k, a, b, c),
            }
            j0 += rj;
        }
        i0 += ri;
    }
}

#[inline(always)]
fn tile_nt<T: Float, const RI: usize, const RJ: usize>(
    i0: usize,
    j0: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
) {
    fn rows<T>(m: &[T], r0: usize, k: usize) -> [&[T]; 4] {
        core::array::from_fn(|r| m.get((r0 + r) * k..(r0 + r + 1) * k).unwrap_or(&[]))
    }
    let (ar, br) = (rows(a, i0, k), rows(b, j0, k));
    let mut acc = [[[T::ZERO; NT_L]; RJ]; RI];
    let full = k - k % NT_L;
    let mut p = 0;
    while p < full {
        let lanes = |row: &[T]| -> [T; NT_L] {
            match row.get(p..p + NT_L).map(<&[T; NT_L]>::try_from) {
                Some(Ok(v)) => *v,
                _ => [T::ZERO; NT_L],
            }
        };
        let av: [[T; NT_L]; RI] =
            core::array::from_fn(|r| lanes(ar.get(r).copied().unwrap_or(&[])));
        let bv: [[T; NT_L]; RJ] =
            core::array::from_fn(|r| lanes(br.get(r).copied().unwrap_or(&[])));
        for (acc, av) in acc.iter_mut().zip(&av) {
            for (acc, bv) in acc.iter_mut().zip(&bv) {
                for ((s, &x), &y) in acc.iter_mut().zip(av).zip(bv) {
                    *s += x * y;
                }
            }
        }
        p += NT_L;
    }
    for (r, acc) in acc.iter().enumerate() {
        let arow = ar.get(r).copied().unwrap_or(&[]);
        for (q, acc) in acc.iter().enumerate() {
            let brow = br.get(q).copied().unwrap_or(&[]);
            let mut tail = T::ZERO;
            for (&x, &y) in arow.iter().zip(brow).skip(full) {
                tail += x * y;
            }
            let [s0, s1, s2, s3] = *acc;
            if let Some(cv) = c.get_mut((i0 + r) * n + j0 + q) {
                *cv += ((s0 + s2) + (s1 + s3)) + tail;
            }
        }
    }
}

/// One unbatched product on slices that start at the matrices.
fn gemm_one<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    let (m, n, k) = (g.m, g.n, g.k);
    let c = c.get_mut(..m.saturating_mul(n)).unwrap_or(&mut []);
    if !g.accumulate {
        c.fill(T::ZERO);
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    match (g.a_trans, g.b_trans) {
        // A row-major: A[i, p] at i k + p.
        (false, false) => gemm_nn(m, n, k, a, (k, 1), b, c),
        // A stored k x m: A[i, p] at p m + i.
        (true, false) => gemm_nn(m, n, k, a, (1, m), b, c),
        // B stored n x k: C[i,j] += dot(A[i,:], B^T[j,:]).
        (false, true) => gemm_nt(m, n, k, a, b, c),
        (true, true) => {
            // Rare: both stored transposed. C[i,j] += sum_p A^T[p,i] B^T[j,p].
            for (i, crow) in c.chunks_exact_mut(n).enumerate() {
                for (cij, brow) in crow.iter_mut().zip(b.chunks_exact(k)) {
                    let mut s = T::ZERO;
                    for (&bjp, acol) in brow.iter().zip(a.chunks_exact(m)) {
                        s += acol.get(i).copied().unwrap_or(T::ZERO) * bjp;
                    }
                    *cij += s;
                }
            }
        }
    }
}

/// Reference GEMM kernel over slices starting at `A`, `B` and `C` (offsets in `g` are ignored
/// here; the backend has already applied them). Slices must cover [`Gemm::spans`].
pub fn gemm<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T]) {
    for i in 0..g.batch {
        // Wrapping: strides past the slices (broken preconditions) find no slice, not a panic.
        let (ai, bi, ci) = (
            i.wrapping_mul(g.a_batch),
            i.wrapping_mul(g.b_batch),
            i.wrapping_mul(g.c_batch),
        );
        if let (Some(a), Some(b), Some(c)) = (a.get(ai..), b.get(bi..), c.get_mut(ci..)) {
            let one = Gemm {
                accumulate: g.accumulate || (g.c_batch == 0 && i > 0),
                ..*g
            };
            gemm_one(&one, a, b, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(m: usize, n: usize, k: usize, at: bool, bt: bool) -> Gemm {
        Gemm {
            batch: 1,
            m,
            n,
            k,
            a: 0,
            a_trans: at,
            a_batch: 0,
            b: 0,
            b_trans: bt,
            b_batch: 0,
            c: 0,
            c_batch: 0,
            accumulate: false,
        }
    }

    // By hand: [[1,2,3],[4,5,6]] x [[7,8],[9,10],[11,12]] = [[58,64],[139,154]].
    #[test]
    fn all_transpose_combinations_agree() {
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let at = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [7.0f64, 8.0, 9.0, 10.0, 11.0, 12.0];
        let bt = [7.0f64, 9.0, 11.0, 8.0, 10.0, 12.0];
        let want = [58.0, 64.0, 139.0, 154.0];
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut c = [0.0; 4];
            let (aa, bb) = (if ta { &at } else { &a }, if tb { &bt } else { &b });
            gemm(&g(2, 2, 3, ta, tb), aa, bb, &mut c);
            assert_eq!(c, want, "ta={ta} tb={tb}");
        }
    }

    // The blocked kernels against a plain triple loop, for every layout and every edge case
    // of the tiles (sizes 1 to 13 cover full tiles plus each remainder), with accumulation.
    #[test]
    fn blocked_kernels_match_the_triple_loop() {
        let val = |i: usize| ((i * 37 + 11) % 19) as f64 - 9.0;
        for (m, n, k) in [
            (1, 1, 1),
            (13, 11, 9),
            (4, 8, 4),
            (5, 17, 3),
            (2, 3, 13),
            (9, 16, 8),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: [f64; 256] = core::array::from_fn(val);
                let b: [f64; 256] = core::array::from_fn(|i| val(i + 5));
                let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
                let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
                let mut want = [1.5; 256];
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            want[i * n + j] += at(i, p) * bt(p, j);
                        }
                    }
                }
                let mut gg = g(m, n, k, ta, tb);
                gg.accumulate = true;
                let mut c = [1.5; 256];
                gemm(&gg, &a[..m * k], &b[..k * n], &mut c[..m * n]);
                assert_eq!(c, want, "m={m} n={n} k={k} ta={ta} tb={tb}");
            }
        }
    }

    #[test]
    fn shared_output_accumulates_over_batch() {
        // Two batches of [1x1]x[1x1] into one shared C.
        let mut gg = g(1, 1, 1, false, false);
        gg.batch = 2;
        gg.a_batch = 1;
        gg.b_batch = 1;
        let mut c = [100.0f64];
        gemm(&gg, &[2.0, 3.0], &[5.0, 7.0], &mut c);
        assert_eq!(c, [31.0]);
    }
}

mod tape_ops {
    use super::Gemm;
    use crate::backend::{Backend, View};
    use crate::error::{Error, Result};
    use crate::ops::movement::Strided;
    use crate::shape::{Shape, MAX_RANK};
    use crate::tape::{Op, Tape, Var, NONE};

    /// Shapes of a product: `(batch, m, n, k, a_batch, b_batch, out shape)`.
    fn plan(
        a: Shape,
        ta: bool,
        b: Shape,
        tb: bool,
    ) -> Result<(usize, usize, usize, usize, usize, usize, Shape)> {
        let (ra, rb) = (a.rank(), b.rank());
        if !(2..=3).contains(&ra) {
            return Err(Error::InvalidShape {
                op: "matmul",
                shape: a,
            });
        }
        if !(2..=3).contains(&rb) {
            return Err(Error::InvalidShape {
                op: "matmul",
                shape: b,
            });
        }
        let (ar, ac) = (a.dim(ra - 2), a.dim(ra - 1));
        let (br, bc) = (b.dim(rb - 2), b.dim(rb - 1));
        let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if tb { (bc, br) } else { (br, bc) };
        let (ba, bb) = (
            if ra == 3 { a.dim(0) } else { 1 },
            if rb == 3 { b.dim(0) } else { 1 },
        );
        if k != kb || (ra == 3 && rb == 3 && ba != bb) {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: a,
                rhs: b,
            });
        }
        let batch = ba.max(bb);
        let out = if ra == 3 || rb == 3 {
            Shape::new(&[batch, m, n])?
        } else {
            Shape::new(&[m, n])?
        };
        let a_batch = if ra == 3 { m * k } else { 0 };
        let b_batch = if rb == 3 { k * n } else { 0 };
        Ok((batch, m, n, k, a_batch, b_batch, out))
    }

    /// A bias broadcast over rows: `[rows, out]` walking `bias` with row stride 0.
    fn bias_rows(rows: usize, out: usize, bias: usize) -> Result<(Shape, Strided)> {
        let space = Shape::new(&[rows, out])?;
        let mut strides = [0; MAX_RANK];
        strides[1] = 1;
        Ok((
            space,
            Strided {
                offset: bias,
                strides,
            },
        ))
    }

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// The matrix product `a b`: `[m, k] x [k, n] -> [m, n]`, batched when either operand is
        /// 3-D (`[batch, m, k]`; a 2-D operand is shared by every batch).
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for ranks other than 2 and 3; [`Error::ShapeMismatch`] when
        /// inner dimensions or batches differ; and as [`Tape::unary`].
        pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
            self.matmul_t(a, false, b, false)
        }

        /// The matrix product with either operand used transposed (its last two dimensions
        /// swapped): `matmul_t(a, false, w, true)` is `a w^T`, without a transpose copy.
        ///
        /// # Errors
        /// As [`Tape::matmul`].
        pub fn matmul_t(&mut self, a: Var, ta: bool, b: Var, tb: bool) -> Result<Var> {
            let (batch, m, n, k, a_batch, b_batch, shape) = plan(a.shape, ta, b.shape, tb)?;
            self.record(
                Op::MatMul { ta, tb },
                Self::bw_matmul,
                &[a, b],
                shape,
                |be, y| {
                    be.gemm(&Gemm {
                        batch,
                        m,
                        n,
                        k,
                        a: a.offset as usize,
                        a_trans: ta,
                        a_batch,
                        b: b.offset as usize,
                        b_trans: tb,
                        b_batch,
                        c: y.offset,
                        c_batch: m * n,
                        accumulate: false,
                    })
                },
            )
        }

        pub(crate) fn matmul_backward(
            &mut self,
            ta: bool,
            tb: bool,
            a: u32,
            b: u32,
            dy: View,
        ) -> Result<()> {
            let (av, bv) = (self.node_view(a)?, self.node_view(b)?);
            let (batch, m, n, k, a_batch, b_batch, _) = plan(av.shape, ta, bv.shape, tb)?;
            let base = Gemm {
                batch,
                m,
                n,
                k,
                a: 0,
                a_trans: false,
                a_batch: 0,
                b: 0,
                b_trans: false,
                b_batch: 0,
                c: 0,
                c_batch: 0,
                accumulate: true,
            };
            let (dyo, dyb) = (dy.offset, m * n);
            if let Some((_, da)) = self.input_grad(a)? {
                let g = if !ta {
                    // dA = dY B^T
                    Gemm {
                        m,
                        n: k,
                        k: n,
                        a: dyo,
                        a_batch: dyb,
                        b: bv.offset,
                        b_trans: !tb,
                        b_batch,
                        c: da,
                        c_batch: a_batch,
                        ..base
                    }
                } else {
                    // dA (stored k x m) = B dY^T
                    Gemm {
                        m: k,
                        n: m,
                        k: n,
                        a: bv.offset,
                        a_trans: tb,
                        a_batch: b_batch,
                        b: dyo,
                        b_trans: true,
                        b_batch: dyb,
                        c: da,
                        c_batch: a_batch,
                        ..base
                    }
                };
                self.backend.gemm(&g)?;
            }
            if let Some((_, db)) = self.input_grad(b)? {
                let g = if !tb {
                    // dB = A^T dY
                    Gemm {
                        m: k,
                        n,
                        k: m,
                        a: av.offset,
                        a_trans: !ta,
                        a_batch,
                        b: dyo,
                        b_batch: dyb,
                        c: db,
                        c_batch: b_batch,
                        ..base
                    }
                } else {
                    // dB (stored n x k) = dY^T A
                    Gemm {
                        m: n,
                        n: k,
                        k: m,
                        a: dyo,
                        a_trans: true,
                        a_batch: dyb,
                        b: av.offset,
                        b_trans: ta,
                        b_batch: a_batch,
                        c: db,
                        c_batch: b_batch,
                        ..base
                    }
                };
                self.backend.gemm(&g)?;
            }
            Ok(())
        }

        /// The affine map of a `Linear` layer, fused: `y = x W^T + bias`, with `x` of shape
        /// `[..., in]`, `W` of shape `[out, in]` (PyTorch's layout) and `bias` of shape `[out]`.
        ///
        /// # Errors
        /// [`Error::ShapeMismatch`] when the shapes do not fit; and as [`Tape::unary`].
        pub fn linear(&mut self, x: Var, w: Var, bias: Option<Var>) -> Result<Var> {
            let (out, inp) = (w.shape.dim(0), w.shape.dim(1));
            if w.shape.rank() != 2 || x.shape.rank() == 0 || x.shape.dim(x.shape.rank() - 1) != inp
            {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    lhs: x.shape,
                    rhs: w.shape,
                });
            }
            if let Some(b) = bias {
                if b.shape.rank() != 1 || b.shape.dim(0) != out {
                    return Err(Error::ShapeMismatch {
                        op: "linear bias",
                        lhs: w.shape,
                        rhs: b.shape,
                    });
                }
            }
            let rows = x.numel() / inp;
            let shape = x.shape.with_dim(x.shape.rank() - 1, out)?;
            // Registering the bias may add a node: a failure below must take it back too.
            self.all_or_nothing(|t| {
                let bias = match bias {
                    Some(b) => Some(t.registered(b)?),
                    None => None,
                };
                let bias_id = bias.map_or(NONE, |b| b.id);
                let mut inputs = [x, w, x];
                let n_in = match bias {
                    Some(b) => {
                        inputs[2] = b;
                        3
                    }
                    None => 2,
                };
                t.record(
                    Op::Linear { bias: bias_id },
                    Self::bw_linear,
                    inputs.get(..n_in).unwrap_or(&[]),
                    shape,
                    |be, y| {
                        if let Some(b) = bias {
                            let (space, src) = bias_rows(rows, out, b.offset as usize)?;
                            be.copy_strided(
                                &space,
                                src,
                                Strided::contiguous(y.offset, &space),
                                false,
                            )?;
                        }
                        be.gemm(&Gemm {
                            batch: 1,
                            m: rows,
                            n: out,
                            k: inp,
                            a: x.offset as usize,
                            a_trans: false,
                            a_batch: 0,
                            b: w.offset as usize,
                            b_trans: true,
                            b_batch: 0,
                            c: y.offset,
                            c_batch: 0,
                            accumulate: bias.is_some(),
                        })
                    },
                )
            })
        }

        pub(crate) fn linear_backward(
            &mut self,
            x: u32,
            w: u32,
            bias: u32,
            dy: View,
        ) -> Result<()> {
            let (xv, wv) = (self.node_view(x)?, self.node_view(w)?);
            let (out, inp) = (wv.shape.dim(0), wv.shape.dim(1));
            let rows = xv.len() / inp;
            let base = Gemm {
                batch: 1,
                m: rows,
                n: inp,
                k: out,
                a: dy.offset,
                a_trans: false,
                a_batch: 0,
                b: wv.offset,
                b_trans: false,
                b_batch: 0,
                c: 0,
                c_batch: 0,
                accumulate: true,
            };
            if bias != NONE {
                if let Some((_, db)) = self.input_grad(bias)? {
                    // db = column sums of dy: a broadcast's backward. First, right after
                    // the kernel that wrote dy, which a backend may then fuse it into.
                    let (space, dst) = bias_rows(rows, out, db)?;
                    self.backend.copy_strided(
                        &space,
                        Strided::contiguous(dy.offset, &space),
                        dst,
                        true,
                    )?;
                }
            }
            if let Some((_, dx)) = self.input_grad(x)? {
                // dx = dy W
                self.backend.gemm(&Gemm { c: dx, ..base })?;
            }
            if let Some((_, dw)) = self.input_grad(w)? {
                // dW = dy^T x
                let g = Gemm {
                    m: out,
                    n: inp,
                    k: rows,
                    a_trans: true,
                    b: xv.offset,
                    c: dw,
                    ..base
                };
                self.backend.gemm(&g)?;
            }
            Ok(())
        }
    }
}
