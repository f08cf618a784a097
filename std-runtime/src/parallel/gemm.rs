//! Matrix products for [`super::Parallel`]: the `gemm` crate for everything but small products
//! (tiny ones, below [`SMALL`] multiply-adds, run on the core's kernel; f32 ones up to
//! `small::LIMIT` on `small.rs`'s).
//!
//! [`Gemm`] semantics, as the core's reference kernel defines them: `C (+)= A B` per batch,
//! matrices of batch `i` at `i * x_batch`, and a shared `C` (`c_batch == 0`) summing over the
//! batch. The `gemm` crate computes `dst := alpha dst + beta lhs rhs` (reading `dst` only when
//! asked), with any row and column strides, so transposed operands cost nothing extra.

use std::any::TypeId;

use gemm::Parallelism;
use mote::ops::matmul::{self, Gemm};
use mote::Float;

#[cfg(target_arch = "x86_64")]
use super::small;
use super::{simd, team};

/// Multiply-adds (`m n k`) below which the core's kernel beats the `gemm` crate's fixed cost per
/// call (measured on W-seed: the crate wins from 64 x 10 x 8 on).
const SMALL: usize = 8 * 8 * 8;

/// Multiply-adds from which one product is split into blocks of C over the team's threads (see
/// [`grid`]), each block on the crate's single-thread kernels: about 15 us of work on one
/// thread of the development machine, against a microsecond to hand a task to a spinning
/// worker. W-mnist's 128 x 256 x 784 product takes 187 us so against 352 us on one thread
/// (`examples/bench_team.rs`; 263 us with the second block handed to rayon's pool, whose
/// threads sleep between products). The crate's own threads, on rayon's pool, took 390 us when
/// they were measured (before they were dropped), and as long as one thread up to 2^25
/// multiply-adds.
const PAR: usize = 1 << 20;

/// Multiply-adds of all products of a batch from which they are spread over the threads as
/// tasks of blocks of C (see [`tiles`]).
pub(super) const MID: usize = 1 << 22;

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

/// Strides `(rs, cs)` of A and of B in the product `g`: element (i, p) of A at
/// `i * rs + p * cs`, element (p, j) of B likewise.
fn strides(g: &Gemm) -> ((usize, usize), (usize, usize)) {
    let a = if g.a_trans { (1, g.m) } else { (g.k, 1) };
    let b = if g.b_trans { (1, g.k) } else { (g.n, 1) };
    (a, b)
}

/// Whether the slices hold the whole unbatched product `g` (each starting at its matrix), and
/// the crate computes in `T`.
fn fits<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &[T]) -> bool {
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(g);
    let within = |len: usize, e: Option<usize>| e.is_some_and(|end| end <= len);
    supported::<T>()
        && within(c.len(), extent(g.m, g.n, g.n, 1))
        && within(a.len(), extent(g.m, g.k, a_rs, a_cs))
        && within(b.len(), extent(g.k, g.n, b_rs, b_cs))
}

/// Block rows `r`, columns `j` of C of the unbatched product `g` with the `gemm` crate: `a`,
/// `b` and `c` point at the matrices (C row-major, row stride `n`).
///
/// # Safety
/// `T` is f32 or f64 (the crate's types); A, B and C of `g` lie inside live allocations at
/// `a`, `b` and `c`, `r` and `j` inside C; nothing else reads or writes that block of C while
/// the call runs, and it overlaps neither A nor B.
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Float>(
    g: &Gemm,
    r: std::ops::Range<usize>,
    j: std::ops::Range<usize>,
    a: *const T,
    b: *const T,
    c: *mut T,
    accumulate: bool,
    par: Parallelism,
) {
    let ((a_rs, a_cs), (b_rs, b_cs)) = strides(g);
    // SAFETY: by the contract; the offsets (row r.start of A and of C, column j.start of B
    // and of C) stay inside the matrices, and the crate touches only the block's elements
    // of C and the rows and columns of A and B it needs. It returns when all its threads are
    // done.
    unsafe {
        gemm::gemm(
            r.len(),
            j.len(),
            g.k,
            c.add(r.start * g.n + j.start),
            1,
            g.n as isize,
            accumulate,
            a.add(r.start * a_rs),
            a_cs as isize,
            a_rs as isize,
            b.add(j.start * b_cs),
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
}

/// The unbatched product `g` with the `gemm` crate; the slices start at the matrices. Returns
/// false (having done nothing) when a slice is too short or `T` is not supported.
fn one<T: Float>(
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    par: Parallelism,
) -> bool {
    if !fits(g, a, b, c) {
        return false;
    }
    // SAFETY: `fits` checked the type and that the slices hold A, B and C; `c` is a unique
    // borrow, so nothing else touches it and it overlaps neither `a` nor `b`.
    unsafe {
        block(
            g,
            0..g.m,
            0..g.n,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            accumulate,
            par,
        );
    }
    true
}

/// One unbatched product (`g.batch` is 1), in blocks over the threads from [`PAR`]
/// multiply-adds, else on the calling thread. Returns false (having done nothing) when a slice
/// is too short or `T` is not supported.
fn product<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], threads: usize) -> bool {
    let work = g.m.saturating_mul(g.n).saturating_mul(g.k);
    (work >= PAR && threads > 1 && tiles(g, a, b, c, threads))
        || one(g, a, b, c, g.accumulate, Parallelism::None)
}

/// Blocks of C `(row_chunks, col_chunks)` for one product over `threads`: one block per
/// thread, as near square as the factorisations of `threads` allow (the larger smallest side;
/// columns first on a tie: measured on the development machine, 128 x 256 x 784 took 187 us in
/// two column blocks, 208 us in two row blocks, 216 us in four), each at least 16 x 16; `None`
/// when C is too small for that (a thread count with no fitting factorisation, such as 3 for a
/// C 20 wide and 40 tall, stays on one thread).
fn grid(m: usize, n: usize, threads: usize) -> Option<(usize, usize)> {
    (1..=threads)
        .filter(|rc| threads.is_multiple_of(*rc))
        .map(|rc| (rc, threads / rc))
        .filter(|&(rc, cc)| m / rc >= 16 && n / cc >= 16)
        .max_by_key(|&(rc, cc)| ((m / rc).min(n / cc), cc))
}

/// Rows of C per task below which a product is not split by rows (the crate's AVX-512 f32
/// kernels work on blocks of 48 or 64 rows).
const ROWS: usize = 64;

/// Columns of C per task below which a product is not split by columns.
const COLS: usize = 128;

/// Whether every product of the batch lies inside the slices (then every block of it does
/// too).
fn batch_fits<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &[T]) -> bool {
    (0..g.batch).all(|i| {
        let (ai, bi, ci) = (i * g.a_batch, i * g.b_batch, i * g.c_batch);
        match (a.get(ai..), b.get(bi..), c.get(ci..)) {
            (Some(a), Some(b), Some(c)) => fits(g, a, b, c),
            _ => false,
        }
    })
}

/// C's address, shared by tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct Dst<T>(*mut T);

// SAFETY: only `tiles` makes one, from a unique borrow it holds until every task is done, and
// its tasks write disjoint elements.
unsafe impl<T: Send> Send for Dst<T> {}
// SAFETY: as for `Send`: the tasks share the address, never an element.
unsafe impl<T: Send> Sync for Dst<T> {}

/// A product over the threads as tasks of blocks of C, each on the crate's single-thread
/// kernels: `(image, block)` tasks for separate outputs, block tasks looping over the batch for
/// a shared (summed) C. One product splits by [`grid`]; a batch's blocks split rows first (each
/// task packs its columns of B again), columns where rows run short, so that a convolution's
/// pass of three images on two threads still makes six even tasks. Returns false (having done
/// nothing) where one product's C is too small for [`grid`], a batch's tasks would not even
/// out over the threads, outputs overlap without being shared, or a slice is short.
fn tiles<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], threads: usize) -> bool {
    let mn = g.m * g.n;
    let shared = g.c_batch == 0;
    if g.batch > 1 && !shared && g.c_batch < mn {
        return false;
    }
    let (row_chunks, col_chunks) = if g.batch == 1 {
        match grid(g.m, g.n, threads) {
            Some(rc) => rc,
            None => return false,
        }
    } else {
        // Two tasks per thread (uneven tasks even out), in blocks of at least ROWS x COLS;
        // one per thread for a shared C (whose tasks are already a whole batch long).
        let per_product = if shared {
            threads
        } else {
            (2 * threads).div_ceil(g.batch)
        };
        let row_chunks = per_product.min(g.m / ROWS).max(1);
        (
            row_chunks,
            per_product.div_ceil(row_chunks).min(g.n / COLS).max(1),
        )
    };
    let blocks = row_chunks * col_chunks;
    let tasks = if shared { blocks } else { g.batch * blocks };
    if !(tasks >= 2 * threads || tasks.is_multiple_of(threads)) || !batch_fits(g, a, b, c) {
        return false;
    }
    let dst = Dst(c.as_mut_ptr());
    // Block `blk` of product `i` (into C at `i * c_batch`); blocks of a row or column of
    // blocks differ by at most one row or column.
    let run = |i: usize, blk: usize, accumulate: bool| {
        let (br, bc) = (blk / col_chunks, blk % col_chunks);
        let (r0, r1) = (br * g.m / row_chunks, (br + 1) * g.m / row_chunks);
        let (j0, j1) = (bc * g.n / col_chunks, (bc + 1) * g.n / col_chunks);
        if r0 >= r1 || j0 >= j1 {
            return;
        }
        let d = dst;
        // SAFETY: `batch_fits` checked the type and that product `i` lies inside the slices
        // (so its offsets are in bounds), and the block inside C. The unique borrow of `c` is
        // held until every task returns; tasks write disjoint blocks (distinct blocks of one
        // product; products whose outputs are `c_batch >= m n` apart; or, for a shared C, one
        // task per block looping over the batch), and `a`, `b` do not overlap `c`.
        unsafe {
            block(
                g,
                r0..r1,
                j0..j1,
                a.as_ptr().add(i * g.a_batch),
                b.as_ptr().add(i * g.b_batch),
                d.0.add(i * g.c_batch),
                accumulate,
                Parallelism::None,
            );
        }
    };
    if shared {
        team::run(blocks, &|blk| {
            for i in 0..g.batch {
                run(i, blk, g.accumulate || i > 0);
            }
        });
    } else {
        team::run(tasks, &|t| run(t / blocks, t % blocks, g.accumulate));
    }
    true
}

/// Depth (`k`) from which [`transposed`] computes `C^T` into a scratch buffer where the crate is
/// faster that way: the transposing copy back costs about as much as `k` is small.
const DEEP: usize = 256;

/// Whether the crate computes this product faster as `C^T = B^T A^T` into a separate row-major
/// buffer (then copied back transposed) than into C directly. Measured on the crate's AVX-512
/// kernels, one thread, GFLOP/s direct / transposed: a convolution's weight gradient
/// (64 x 288 x 1024, `A B^T`) 77 / 134, 64 x 576 x 1024 `A B^T` 70 / 148, 128 x 1152 x 256
/// `A B^T` 125 / 164, `A^T B^T` 120 / 171, 128 x 128 x 256 `A^T B^T` 131 / 162; no gain for
/// C only twice as wide as tall (W-mnist's 128 x 256 x 784 `A B^T`: 147 / 154, less than the
/// copy back costs) nor for many rows (1024 x 1024 x 256). The copy back costs about `1 / k` of
/// the product. A linear layer's forward (`x W^T`, `A B^T`) with C at least four times as wide
/// as tall pays at any size: W-large's 256 x 4096 x 4096 took 36.4 ms directly and 30.4 ms
/// transposed on two threads (one thread's block, 256 x 2048 x 4096: 122 / 160 GFLOP/s).
fn transposed_pays(g: &Gemm) -> bool {
    let wide = g.n >= 4 * g.m;
    let forward = wide && g.b_trans && !g.a_trans;
    let small = g.m <= FEW && g.m * g.n <= SCRATCH;
    g.k >= DEEP && (forward || (small && g.a_trans && (wide || g.b_trans)))
}

/// Elements of `C^T` above which [`transposed`] does not run (C is written directly): its
/// scratch is heap memory outside the arena.
const SCRATCH_MAX: usize = 1 << 24;

/// Elements of `C^T` up to which [`transposed`]'s scratch is kept between calls (16 MiB of
/// f32; W-large's forward needs 1 M elements); larger ones are allocated for the call.
const SCRATCH_KEEP: usize = 1 << 22;

/// Rows of C up to which [`transposed`] may pay.
const FEW: usize = 128;

/// Elements of C up to which [`transposed`] may pay (its scratch stays in cache).
const SCRATCH: usize = 1 << 18;

/// The product as `C^T = B^T A^T` into `scratch` (one `n x m` matrix per output: one in all
/// for a shared C; kept between calls, grown as needed, up to [`SCRATCH_KEEP`]), then added or
/// copied into C transposed. Returns false (having done nothing) when a slice is too short,
/// outputs overlap without being shared, or `C^T` is above [`SCRATCH_MAX`].
fn transposed<T: Float>(
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
    threads: usize,
    scratch: &mut Vec<T>,
) -> bool {
    let mn = g.m * g.n;
    let shared = g.c_batch == 0;
    if (!shared && g.c_batch < mn) || !batch_fits(g, a, b, c) {
        return false;
    }
    let outputs = if shared { 1 } else { g.batch };
    let t = Gemm {
        m: g.n,
        n: g.m,
        a: 0,
        a_trans: !g.b_trans,
        a_batch: g.b_batch,
        b: 0,
        b_trans: !g.a_trans,
        b_batch: g.a_batch,
        c: 0,
        c_batch: if shared { 0 } else { mn },
        accumulate: false,
        ..*g
    };
    let need = outputs * mn;
    if need > SCRATCH_MAX {
        return false;
    }
    // Every element of the scratch is written (`accumulate` false) before it is read: what
    // an earlier call left there is never seen. Kept between calls up to SCRATCH_KEEP.
    let mut once = Vec::new();
    let scratch = if need <= SCRATCH_KEEP {
        if scratch.len() < need {
            scratch.reserve_exact(need - scratch.len());
            scratch.resize(need, T::ZERO);
        }
        &mut scratch[..need]
    } else {
        once.resize(need, T::ZERO);
        &mut once[..]
    };
    direct(&t, b, a, scratch, threads);
    for (i, s) in scratch.chunks(mn).enumerate() {
        if let Some(ci) = c.get_mut(i * g.c_batch..i * g.c_batch + mn) {
            add_transposed(s, g.n, g.m, ci, g.accumulate, threads);
        }
    }
    true
}

/// `dst (+)= src^T`: `src` is `rows x cols` row-major, `dst` `cols x rows`; split into blocks
/// of `dst`'s rows over the threads when large.
fn add_transposed<T: Float>(
    src: &[T],
    rows: usize,
    cols: usize,
    dst: &mut [T],
    accumulate: bool,
    threads: usize,
) {
    if threads > 1 && dst.len() >= super::PAR_MIN && rows > 0 {
        let per = cols.div_ceil(threads * 4).next_multiple_of(TILE);
        team::for_each(dst.chunks_mut(per * rows).enumerate(), |(i, d)| {
            add_transposed_rows(src, rows, cols, i * per, d, accumulate)
        });
    } else {
        add_transposed_rows(src, rows, cols, 0, dst, accumulate);
    }
}

/// Side of the tiles of [`add_transposed_rows`].
const TILE: usize = 32;

/// Rows `c0..` of `dst (+)= src^T` (as many as `part` holds: `part` starts at row `c0`), in
/// tiles that stay in cache.
fn add_transposed_rows<T: Float>(
    src: &[T],
    rows: usize,
    cols: usize,
    c0: usize,
    part: &mut [T],
    accumulate: bool,
) {
    let c1 = (c0 + part.len() / rows.max(1)).min(cols);
    for r0 in (0..rows).step_by(TILE) {
        for t0 in (c0..c1).step_by(TILE) {
            for c in t0..(t0 + TILE).min(c1) {
                for r in r0..(r0 + TILE).min(rows) {
                    let v = src[r * cols + c];
                    let d = &mut part[(c - c0) * rows + r];
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    }
}

/// The product `g` over slices starting at `A`, `B` and `C` (covering [`Gemm::spans`]); small
/// f32 products on AVX-512 unless `avx512` is false.
pub(super) fn gemm<T: Float>(
    g: &Gemm,
    a: &[T],
    b: &[T],
    c: &mut [T],
    threads: usize,
    scratch: &mut Vec<T>,
    avx512: bool,
) {
    let work = g.m.saturating_mul(g.n).saturating_mul(g.k);
    if g.batch == 0 || g.m == 0 || g.n == 0 || g.k == 0 || work < SMALL || !supported::<T>() {
        simd(|| matmul::gemm(g, a, b, c));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if work <= small::LIMIT && small::product(g, a, b, c, scratch, avx512) {
        return;
    }
    if transposed_pays(g) && transposed(g, a, b, c, threads, scratch) {
        return;
    }
    direct(g, a, b, c, threads);
}

/// [`gemm`] writing C directly (products the crate cannot take on the core's kernel).
fn direct<T: Float>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], threads: usize) {
    let work = g.m.saturating_mul(g.n).saturating_mul(g.k);
    let total = work.saturating_mul(g.batch);
    // A batch with enough work in all: tasks of blocks over the threads where they even out,
    // else one product after another, each in blocks over the threads when large enough.
    let batched = g.batch > 1 && total >= MID && threads > 1;
    if batched && tiles(g, a, b, c, threads) {
        return;
    }
    for i in 0..g.batch {
        let (ai, bi, ci) = (i * g.a_batch, i * g.b_batch, i * g.c_batch);
        if let (Some(a), Some(b), Some(c)) = (a.get(ai..), b.get(bi..), c.get_mut(ci..)) {
            let single = Gemm {
                batch: 1,
                accumulate: g.accumulate || (g.c_batch == 0 && i > 0),
                ..*g
            };
            if !product(&single, a, b, c, threads) {
                simd(|| matmul::gemm(&single, a, b, c));
            }
        }
    }
}
