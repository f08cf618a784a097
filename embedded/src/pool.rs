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
/// firmware's code), a last window that overhangs the input (`ceil_mode`), windows of more than 16 taps and windows that overlap (stride below the window: there the core's col2im
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
    // A last window that overhangs the input (PyTorch's `ceil_mode`) is left to the core.
    let overhangs = |o: usize, s: usize, k: usize, n: usize| (o - 1) * s + k > n;
    if overhangs(oh, sh, kh, h) || overhangs(ow, sw, kw, w) {
        return Ok(false);
    }
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
    // The common 2 x 2 window with its three offsets as constants of the loop (unrolled; used
    // only for that window, where `w + 1` is inside the plane, hence the wrapping add).
    let square = [1, w, w.wrapping_add(1)];
    let g = Grid {
        plane,
        oplane,
        out: [oh, ow],
        // Saturating: a stride that overflows here has one row of windows (`check_windows`),
        // and row 0 never uses it.
        step: [sh.saturating_mul(w), sw],
    };
    match call.pass {
        PoolPass::Forward { x, y } => {
            let (yb, [xb]) = split(buf, at(y, yl)?, [at(x, xl)?])?;
            check_windows(call)?;
            if (kh, kw) == (2, 2) {
                forward(&g, xb, yb, &square);
            } else {
                forward(&g, xb, yb, offs);
            }
        }
        PoolPass::Backward { x, y, dy, dx } => {
            let (dxb, [xb, yb, dyb]) =
                split(buf, at(dx, xl)?, [at(x, xl)?, at(y, yl)?, at(dy, yl)?])?;
            check_windows(call)?;
            if (kh, kw) == (2, 2) {
                backward(&g, xb, yb, dyb, dxb, &square);
            } else {
                backward(&g, xb, yb, dyb, dxb, offs);
            }
        }
    }
    Ok(true)
}

/// A pooling's planes: elements of an input and of an output plane, the output's sides, and
/// the input offsets between vertically and horizontally adjacent windows.
struct Grid {
    plane: usize,
    oplane: usize,
    out: [usize; 2],
    step: [usize; 2],
}

/// Each window's maximum into `y`; `offs` are the taps after the first (inlined: a fixed
/// window's offsets unroll).
#[inline(always)]
fn forward(g: &Grid, xb: &[f32], yb: &mut [f32], offs: &[usize]) {
    for (xp, yp) in xb.chunks_exact(g.plane).zip(yb.chunks_exact_mut(g.oplane)) {
        let mut o = 0;
        for oy in 0..g.out[0] {
            let mut base = oy * g.step[0];
            for _ in 0..g.out[1] {
                // SAFETY: `check_windows`: every tap of every window lies in the plane
                // (`base + offset < h * w`); `o < oh * ow`, the length of `yp`.
                unsafe {
                    let p = xp.as_ptr().add(base);
                    let mut m = *p;
                    for &t in offs {
                        let v = *p.add(t);
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                    *yp.get_unchecked_mut(o) = m;
                }
                o += 1;
                // Wrapping: past the row's last window the value is not used.
                base = base.wrapping_add(g.step[1]);
            }
        }
    }
}

/// Each window's gradient added to its first tap that holds the maximum `y`.
#[inline(always)]
fn backward(g: &Grid, xb: &[f32], yb: &[f32], dyb: &[f32], dxb: &mut [f32], offs: &[usize]) {
    let planes = dxb
        .chunks_exact_mut(g.plane)
        .zip(xb.chunks_exact(g.plane))
        .zip(yb.chunks_exact(g.oplane).zip(dyb.chunks_exact(g.oplane)));
    for ((dxp, xp), (yp, dyp)) in planes {
        let mut o = 0;
        for oy in 0..g.out[0] {
            let mut base = oy * g.step[0];
            for _ in 0..g.out[1] {
                // SAFETY: as in the forward; `dxp` has the plane's length too, and `yp`, `dyp`
                // the output plane's.
                unsafe {
                    let (m, gv) = (*yp.get_unchecked(o), *dyp.get_unchecked(o));
                    let p = xp.as_ptr().add(base);
                    // The first tap equal to the maximum (the first NaN for a NaN maximum): one
                    // comparison a tap.
                    let at = if m.is_nan() {
                        first(p, offs, |v| v.is_nan())
                    } else {
                        first(p, offs, |v| v == m)
                    };
                    if let Some(t) = at {
                        *dxp.get_unchecked_mut(base + t) += gv;
                    }
                }
                o += 1;
                // Wrapping: past the row's last window the value is not used.
                base = base.wrapping_add(g.step[1]);
            }
        }
    }
}

/// The offset (0 or one of `offs`) of the first tap from `p` for which `hit` holds.
///
/// # Safety
/// `p` and `p + t` for every `t` of `offs` are readable.
#[inline(always)]
unsafe fn first(p: *const f32, offs: &[usize], hit: impl Fn(f32) -> bool) -> Option<usize> {
    // SAFETY: the caller's.
    unsafe {
        if hit(*p) {
            return Some(0);
        }
        offs.iter().copied().find(|&t| hit(*p.add(t)))
    }
}
