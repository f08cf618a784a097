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
/// 381,129 with each row's bounds checked once, not each element's).
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
    let row_sum = accumulate && ds[3] == 0 && ss[3] == 1;
    for i0 in 0..n[0] {
        for i1 in 0..n[1] {
            let mut so = i0 * ss[0] + i1 * ss[1];
            let mut dof = i0 * ds[0] + i1 * ds[1];
            for _ in 0..n[2] {
                if row_sum {
                    let row = s.get(so..so + n[3]).ok_or(far)?;
                    let t = row.iter().fold(0.0f32, |a, &v| a + v);
                    *d.get_mut(dof).ok_or(far)? += t;
                } else if n[3] > 0 {
                    // The row's last elements inside the slices: then every one is (indices
                    // grow from the first), and the loop needs no check per element.
                    let last = |first: usize, step: usize| {
                        step.checked_mul(n[3] - 1)
                            .and_then(|o| first.checked_add(o))
                    };
                    match (last(so, ss[3]), last(dof, ds[3])) {
                        (Some(la), Some(lb)) if la < s.len() && lb < d.len() => {}
                        _ => return Err(far),
                    }
                    let (mut a, mut b) = (
                        s.as_ptr().wrapping_add(so),
                        d.as_mut_ptr().wrapping_add(dof),
                    );
                    for _ in 0..n[3] {
                        // SAFETY: `a` and `b` stay within the row, inside the slices (checked
                        // above: the last element of each is).
                        unsafe {
                            if accumulate {
                                *b += *a;
                            } else {
                                *b = *a;
                            }
                        }
                        a = a.wrapping_add(ss[3]);
                        b = b.wrapping_add(ds[3]);
                    }
                }
                // Wrapping: past the last row the sum is never used, and a length-1
                // dimension's stride may be anything.
                so = so.wrapping_add(ss[2]);
                dof = dof.wrapping_add(ds[2]);
            }
        }
    }
    Ok(())
}
