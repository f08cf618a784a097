//! [`copy_any`]: `Fast`'s strided copy, plain Rust (no assembly), so that the host checks it
//! against the core's reference copy (`embedded/host`, `cargo test`).

// `split` takes an array of read ranges, one here.
#![allow(clippy::single_range_in_vec_init)]

use mote::backend::split;
use mote::ops::movement::Strided;
use mote::{Error, Result, Shape};

/// Any strided copy (see [`mote::ops::movement::copy`]) in four plain nested loops, with the
/// reference's results bit for bit (the same element order; a row summed into one element is
/// summed first, as there). The reference walks rows through a generic row iterator whose
/// bookkeeping spills to the stack on this core and costs more than the copies themselves:
/// about half of the cnn step (pooling's im2col and col2im, reshapes). The core's kernel now
/// loops the same way, but with slice copies (`memcpy` calls) for contiguous rows, which cost
/// more on these short rows: 443,593 instructions per cnn step with it, 402,859 with this (and
/// 381,129 with each row's bounds checked once, not each element's). The copy is first
/// rewritten with fewer, longer rows ([`simplify`]) and its last indices checked once.
#[inline(never)]
pub fn copy_any(
    buf: &mut [f32],
    space: &Shape,
    src: Strided,
    dst: Strided,
    accumulate: bool,
) -> Result<()> {
    let far = Error::IndexOutOfRange {
        op: "copy",
        index: usize::MAX,
        bound: buf.len(),
    };
    let (d, [s]) = split(
        buf,
        dst.offset..dst.offset.saturating_add(dst.span(space)),
        [src.offset..src.offset.saturating_add(src.span(space))],
    )?;
    // Right-aligned to four dimensions: the last is the innermost loop.
    let r = space.rank();
    let (mut n, mut ss, mut ds) = ([1usize; 4], [0usize; 4], [0usize; 4]);
    for i in 0..r.min(4) {
        let k = 4 - r + i;
        n[k] = space.dim(i);
        ss[k] = src.strides[i];
        ds[k] = dst.strides[i];
    }
    if n.contains(&0) {
        return Ok(());
    }
    simplify(&mut n, &mut ss, &mut ds);
    // The last element each side reads or writes lies inside its slice: then every one does
    // (strides are not negative), and the loops need no check per row or element.
    let last = |st: &[usize; 4]| {
        (0..4).try_fold(0usize, |a, k| a.checked_add((n[k] - 1).checked_mul(st[k])?))
    };
    match (last(&ss), last(&ds)) {
        (Some(ls), Some(ld)) if ls < s.len() && ld < d.len() => {}
        _ => return Err(far),
    }
    let row_sum = accumulate && ds[3] == 0 && ss[3] == 1;
    let (sp, dp) = (s.as_ptr(), d.as_mut_ptr());
    for i0 in 0..n[0] {
        for i1 in 0..n[1] {
            let mut so = i0 * ss[0] + i1 * ss[1];
            let mut dof = i0 * ds[0] + i1 * ds[1];
            for _ in 0..n[2] {
                // SAFETY: every index the loops reach is at most the last one checked above,
                // inside `s` and `d` (disjoint: `split`).
                unsafe {
                    if row_sum {
                        let mut t = 0.0f32;
                        for j in 0..n[3] {
                            t += *sp.add(so + j);
                        }
                        *dp.add(dof) += t;
                    } else {
                        let (mut a, mut b) = (sp.add(so), dp.add(dof));
                        for _ in 0..n[3] {
                            if accumulate {
                                *b += *a;
                            } else {
                                *b = *a;
                            }
                            a = a.wrapping_add(ss[3]);
                            b = b.wrapping_add(ds[3]);
                        }
                    }
                }
                // Wrapping: past the last row the offsets are never used.
                so = so.wrapping_add(ss[2]);
                dof = dof.wrapping_add(ds[2]);
            }
        }
    }
    Ok(())
}

/// Rewrites a right-aligned 4-D copy (`n` lengths, none zero; `ss`, `ds` strides) as an equal
/// one with fewer, longer rows, visiting the same elements in the same order: outer
/// dimensions of length 1 are dropped (whatever their strides), and two neighbouring
/// dimensions that both sides step through contiguously (`n[k] * stride[k] == stride[k - 1]`,
/// non-zero strides) become one. The innermost dimension is never dropped, and a zero
/// destination stride never merges, so that a row summed into one element is summed as before.
fn simplify(n: &mut [usize; 4], ss: &mut [usize; 4], ds: &mut [usize; 4]) {
    // Drops dimension `k` (< 3), moving the outer ones in.
    let drop = |k: usize, n: &mut [usize; 4], ss: &mut [usize; 4], ds: &mut [usize; 4]| {
        for j in (1..=k).rev() {
            n[j] = n[j - 1];
            ss[j] = ss[j - 1];
            ds[j] = ds[j - 1];
        }
        (n[0], ss[0], ds[0]) = (1, 0, 0);
    };
    let mut k = 3;
    while k > 0 {
        if n[k - 1] == 1 && n[..k - 1].iter().any(|&v| v > 1) {
            drop(k - 1, n, ss, ds);
        } else {
            k -= 1;
        }
    }
    let mut k = 3;
    while k > 0 {
        let joins = |st: &[usize; 4]| st[k] != 0 && n[k].checked_mul(st[k]) == Some(st[k - 1]);
        if n[k - 1] > 1 && joins(ss) && joins(ds) {
            n[k] *= n[k - 1];
            drop(k - 1, n, ss, ds);
        } else {
            k -= 1;
        }
    }
}
