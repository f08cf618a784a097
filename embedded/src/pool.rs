//! [`max_pool`]: `Fast`'s max pooling, in plain Rust (no assembly), so that the host checks it
//! against the core's pooling (`embedded/host`, `cargo test`). The core pools through im2col:
//! it copies every window's taps into columns, reduces them, and in the backward copies the
//! columns back (col2im). On the M4 those short strided copies and the generic reduction were
//! the larger part of the cnn step; here each window is read in place.

use mote::backend::split;
use mote::ops::conv::{PoolCall, PoolPass};
use mote::{Error, Result};

/// The most taps a window may have here (3 x 3, 2 x 4...): each one's offset is kept in a table.
const MAX_TAPS: usize = 16;

/// Checks that, without padding, every tap of every window lies inside its plane: the last
/// window's last tap, `(OH - 1) * SH + KH - 1` and `(OW - 1) * SW + KW - 1`, is below `H` and
/// `W` (what `PoolCall::lens` implies; checked again, since the loops read unchecked).
fn check_windows(call: &PoolCall) -> Result<()> {
    for d in 0..2 {
        let last = call.out[d]
            .checked_sub(1)
            .and_then(|o| o.checked_mul(call.stride[d]))
            .and_then(|o| o.checked_add(call.kernel[d] - 1));
        if call.padding[d] != 0 || last.is_none_or(|l| l >= call.size[d]) {
            return Err(Error::InvalidArgument {
                what: "max_pool: a window outside the input",
            });
        }
    }
    Ok(())
}

/// Max pooling's forward or backward pass ([`PoolPass`]) over the arena `buf`, with the core's
/// results: the same maximum (the first tap's value, then any greater or NaN tap's,
/// row-major), and the same gradient routing (to the first tap that holds the maximum; a zero
/// gradient may keep a `-0.0` that the core's additions of `+0.0` would turn into `+0.0`).
/// Returns `Ok(false)`, having done nothing, for average pooling, padding (kept out of the
/// firmware's code), windows of more than 16 taps and windows that overlap (stride below the window: there the core's col2im
/// sums a position's gradients in an order this loop does not follow).
///
/// # Errors
/// [`Error::InvalidArgument`] for an inconsistent call; [`Error::IndexOutOfRange`] or
/// [`Error::Aliasing`] for tensors outside the arena or overlapping.
#[inline(never)]
pub fn max_pool(buf: &mut [f32], call: &PoolCall) -> Result<bool> {
    let [kh, kw] = call.kernel;
    let [sh, sw] = call.stride;
    if !call.max || sh < kh || sw < kw || call.padding != [0, 0] {
        return Ok(false);
    }
    let [xl, yl] = call.lens()?;
    let [h, w] = call.size;
    let [oh, ow] = call.out;
    // Not zero (`lens` checked the sizes and that `planes` is not).
    let (plane, oplane) = (h * w, oh * ow);
    let at = |o: usize, n: usize| -> Result<core::ops::Range<usize>> {
        let end = o.checked_add(n).ok_or(Error::IndexOutOfRange {
            op: "max_pool",
            index: o,
            bound: usize::MAX,
        })?;
        Ok(o..end)
    };
    // Each tap's offset from its window's first element, row-major (windows of more taps than
    // this table holds are left to the core).
    let mut offs = [0usize; MAX_TAPS];
    let taps = kh * kw;
    if taps > MAX_TAPS {
        return Ok(false);
    }
    for (t, o) in offs.iter_mut().take(taps).enumerate() {
        *o = (t / kw) * w + t % kw;
    }
    let offs = offs.get(1..taps).unwrap_or(&[]);
    match call.pass {
        PoolPass::Forward { x, y } => {
            let (yb, [xb]) = split(buf, at(y, yl)?, [at(x, xl)?])?;
            check_windows(call)?;
            for (xp, yp) in xb.chunks_exact(plane).zip(yb.chunks_exact_mut(oplane)) {
                let mut o = 0;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let base = oy * sh * w + ox * sw;
                        // SAFETY: `check_windows`: every tap of every window lies in the plane
                        // (`base + offset < h * w`); `o < oh * ow`, the length of `yp`.
                        unsafe {
                            let mut m = *xp.get_unchecked(base);
                            for &t in offs {
                                let v = *xp.get_unchecked(base + t);
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                            *yp.get_unchecked_mut(o) = m;
                        }
                        o += 1;
                    }
                }
            }
        }
        PoolPass::Backward { x, y, dy, dx } => {
            let (dxb, [xb, yb, dyb]) =
                split(buf, at(dx, xl)?, [at(x, xl)?, at(y, yl)?, at(dy, yl)?])?;
            check_windows(call)?;
            let planes = dxb
                .chunks_exact_mut(plane)
                .zip(xb.chunks_exact(plane))
                .zip(yb.chunks_exact(oplane).zip(dyb.chunks_exact(oplane)));
            for ((dxp, xp), (yp, dyp)) in planes {
                let mut o = 0;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let base = oy * sh * w + ox * sw;
                        // SAFETY: as in the forward; `dxp` has the plane's length too, and
                        // `yp`, `dyp` the output plane's.
                        unsafe {
                            let (m, g) = (*yp.get_unchecked(o), *dyp.get_unchecked(o));
                            let hit = |v: f32| v == m || (v.is_nan() && m.is_nan());
                            let at = if hit(*xp.get_unchecked(base)) {
                                Some(base)
                            } else {
                                offs.iter()
                                    .map(|&t| base + t)
                                    .find(|&i| hit(*xp.get_unchecked(i)))
                            };
                            if let Some(i) = at {
                                *dxp.get_unchecked_mut(i) += g;
                            }
                        }
                        o += 1;
                    }
                }
            }
        }
    }
    Ok(true)
}
