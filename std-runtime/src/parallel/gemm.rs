//! Matrix products for [`super::Parallel`]: the `gemm` crate for everything but tiny products.
//!
//! [`Gemm`] semantics, as the core's reference kernel defines them: `C (+)= A B` per batch,
//! matrices of batch `i` at `i * x_batch`, and a shared `C` (`c_batch == 0`) summing over the
//! batch. The `gemm` crate computes `dst := alpha dst + beta lhs rhs` (reading `dst` only when
//! asked), with any row and column strides, so transposed operands cost nothing extra.

use std::any::TypeId;

use gemm::Parallelism;
use mote::ops::matmul::{self, Gemm};
use mote::Float;
use rayon::prelude::*;

use super::simd;

/// Multiply-adds (`m n k`) below which the core's kernel beats the `gemm` crate's fixed cost per
/// call (measured on W-seed: the crate wins from 64 x 10 x 8 on).
const SMALL: usize = 8 * 8 * 8;

/// Multiply-adds from which one product runs on the `gemm` crate's threads. High, because
/// waking the pool's sleeping threads costs 30-100 us on the 2-core virtual machines measured
/// (a `rayon::join` after a pause: see `examples/bench_join.rs`); a 128 x 256 x 784 product
/// (W-mnist's largest) is faster on one thread there.
const PAR: usize = 1 << 25;

/// Multiply-adds of all products of a batch from which small products are spread over the
/// threads, one product per task.
const MID: usize = 1 << 22;

/// Whether the `gemm` crate computes in `T` (it panics on other types).
fn supported<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>()
}

/// Elements from a matrix's first to one past its last, `rows x cols` with strides `(rs, cs)`.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

/// Whether the slices cover rows `rows` of the product `g` (C's slice starting at row
/// `c_row0`), and the crate computes in `T`.
fn fits<T: Float>(
    g: &Gemm,
    rows: &std::ops::Range<usize>,
    c_row0: usize,
    a: &[T],
    b: &[T],
    c: &[T],
) -> bool {
    let (m, n, k) = (g.m, g.n, g.k);
    let (a_rs, a_cs) = if g.a_trans { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if g.b_trans { (1, k) } else { (n, 1) };
    let within = |len: usize, start: Option<usize>, e: Option<usize>| {
        start
            .zip(e)
            .and_then(|(s, e)| s.checked_add(e))
            .is_some_and(|end| end <= len)
    };
    supported::<T>()
        && rows.start >= c_row0
        && rows.end <= m
        && within(
            c.len(),
            (rows.start - c_row0).checked_mul(n),
            extent(rows.len(), n, n, 1),
        )
        && within(
            a.len(),
            rows.start.checked_mul(a_rs),
            extent(rows.len(), k, a_rs, a_cs),
        )
        && within(b.len(), Some(0), extent(k, n, b_rs, b_cs))
}

/// Rows `rows` of the unbatched product `g` with the `gemm` crate; `a` and `b` start at the
/// matrices, `c` at row `c_row0` of C. Returns false (having done nothing) when a slice is too
/// short or `T` is not supported.
#[allow(clippy::too_many_arguments)]
fn one<T: Float>(
    g: &Gemm,
    rows: std::ops::Range<usize>,
    c_row0: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    par: Parallelism,
) -> bool {
    if !fits(g, &rows, c_row0, a, b, c) {
        return false;
    }
    let (m, n, k) = (g.m, g.n, g.k);
    // Element (i, p) of A at i * rs + p * cs; of B, (p, j) at p * rs + j * cs.
    let (a_rs, a_cs) = if g.a_trans { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if g.b_trans { (1, k) } else { (n, 1) };
    let (Some(a), Some(c)) = (
        a.get(rows.start * a_rs..),
        c.get_mut((rows.start - c_row0) * n..),
    ) else {
        return false;
    };
    // SAFETY: `T` is f32 or f64, the types the crate supports, and every element the crate
    // touches lies inside the slices (both checked by `fits`): C's rows are `rows.len() x n`
    // row-major, A's rows `rows.len() x k` with strides (a_rs, a_cs), B is `k x n` with
    // (b_rs, b_cs). Lengths of slices fit in isize. `c` is a unique borrow, so it overlaps
    // neither `a` nor `b`. The call returns only when all its threads are done.
    unsafe {
        gemm::gemm(
            rows.len(),
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
    true
}

/// One unbatched product: large ones on the crate's threads, the rest on the calling thread.
/// Returns false (having done nothing) when a slice is too short or `T` is not supported.
fn product<T: Float>(
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    threads: usize,
) -> bool {
    let work = g.m.saturating_mul(g.n).saturating_mul(g.k);
    let par = if work >= PAR && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    one(g, 0..g.m, 0, a, b, c, accumulate, par)
}

/// The product `g` over slices starting at `A`, `B` and `C` (covering [`Gemm::spans`]).
pub(super) fn gemm<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], threads: usize) {
    let work = g.m.saturating_mul(g.n).saturating_mul(g.k);
    if g.batch == 0 || g.m == 0 || g.n == 0 || g.k == 0 || work < SMALL || !supported::<T>() {
        simd(|| matmul::gemm(g, a, b, c));
        return;
    }
    let total = work.saturating_mul(g.batch);
    let mn = g.m * g.n;
    // Many small products with separate outputs: one product per task.
    if g.batch > 1 && g.c_batch >= mn && work < MID && total >= MID && threads > 1 {
        let stride = g.c_batch;
        c.par_chunks_mut(stride)
            .take(g.batch)
            .enumerate()
            .for_each(|(i, ci)| {
                let (ai, bi) = (i * g.a_batch, i * g.b_batch);
                if let (Some(a), Some(b)) = (a.get(ai..), b.get(bi..)) {
                    if !one(g, 0..g.m, 0, a, b, ci, g.accumulate, Parallelism::None) {
                        let single = Gemm { batch: 1, ..*g };
                        simd(|| matmul::gemm(&single, a, b, ci));
                    }
                }
            });
        return;
    }
    for i in 0..g.batch {
        let (ai, bi, ci) = (i * g.a_batch, i * g.b_batch, i * g.c_batch);
        if let (Some(a), Some(b), Some(c)) = (a.get(ai..), b.get(bi..), c.get_mut(ci..)) {
            let accumulate = g.accumulate || (g.c_batch == 0 && i > 0);
            if !product(g, a, b, c, accumulate, threads) {
                let single = Gemm {
                    batch: 1,
                    accumulate,
                    ..*g
                };
                simd(|| matmul::gemm(&single, a, b, c));
            }
        }
    }
}
