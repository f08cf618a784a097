//! Max and average pooling read in place, for [`Parallel`](super::Parallel): the core pools
//! through an im2col buffer (every window's taps copied into columns, reduced, and in the
//! backward a buffer of column gradients added back), which here took about a third of a small
//! CNN's step. Each window is read where it lies instead, planes split over the team.
//!
//! Windows may overhang the padded input (PyTorch's `ceil_mode`): their taps past it count as
//! padding. The results are the core's bit for bit, signed zeros and NaNs included:
//! - max: the first tap's value (padding counts as the smallest finite value), then any greater
//!   or NaN tap's, row-major; its backward adds `0 + dy` to the first tap that holds the maximum
//!   (nothing when that tap is padding) and `0` to the window's other taps;
//! - average: the taps summed in row-major order from zero (padding adds nothing), times
//!   `1 / (KH * KW)`; its backward adds `0 + dy * (1 / (KH * KW))` to every tap inside the input;
//! - where windows overlap, a position's additions come in the core's order, tap by tap (every
//!   window's first tap, then every window's second, ...).

use mote::backend::split;
use mote::ops::conv::{PoolCall, PoolPass};
use mote::{Error, Float, Result};

use super::{simd, team};

/// A checked call's sizes.
#[derive(Clone, Copy)]
struct Geom {
    max: bool,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// The input row or column of tap `t` of the window at `o` along an axis (stride `s`,
    /// padding `p`, input length `n`), or `None` in the padding.
    #[inline(always)]
    fn at(o: usize, s: usize, t: usize, p: usize, n: usize) -> Option<usize> {
        (o * s + t).checked_sub(p).filter(|&i| i < n)
    }

    /// The index in its plane of tap `(i, j)` of the window at `(oy, ox)`, or `None` in the
    /// padding.
    #[inline(always)]
    fn tap(&self, oy: usize, ox: usize, i: usize, j: usize) -> Option<usize> {
        let y = Self::at(oy, self.sh, i, self.ph, self.h)?;
        let x = Self::at(ox, self.sw, j, self.pw, self.w)?;
        Some(y * self.w + x)
    }

    /// Whether the window at `(oy, ox)` lies inside the input (no tap in the padding).
    #[inline(always)]
    fn inside(&self, oy: usize, ox: usize) -> bool {
        oy * self.sh >= self.ph
            && oy * self.sh + self.kh <= self.ph + self.h
            && ox * self.sw >= self.pw
            && ox * self.sw + self.kw <= self.pw + self.w
    }

    /// `1 / (KH * KW)`, as the core's mean computes it.
    fn inv<T: Float>(&self) -> T {
        T::ONE / T::from_usize(self.kh * self.kw)
    }
}

/// One pass of a pooling ([`PoolPass`]) over the arena `buf`, its planes split into `tasks`
/// groups run over the team (1: on the caller). Always runs the pass (`Ok(true)`).
///
/// # Errors
/// [`Error::InvalidArgument`] for an inconsistent call (as [`PoolCall::lens`], and taps whose
/// indices overflow); [`Error::IndexOutOfRange`] or [`Error::Aliasing`] for tensors outside the
/// arena or a written one overlapping another.
pub(crate) fn run<T: Float>(buf: &mut [T], call: &PoolCall, tasks: usize) -> Result<bool> {
    let [xl, yl] = call.lens()?;
    let g = Geom {
        max: call.max,
        h: call.size[0],
        w: call.size[1],
        kh: call.kernel[0],
        kw: call.kernel[1],
        sh: call.stride[0],
        sw: call.stride[1],
        ph: call.padding[0],
        pw: call.padding[1],
        oh: call.out[0],
        ow: call.out[1],
    };
    // The largest padded index a window reaches: `lens` implies it, checked here so that no
    // index arithmetic below can overflow.
    let reach = |o: usize, s: usize, k: usize, p: usize| {
        o.checked_sub(1)
            .and_then(|o| o.checked_mul(s))
            .and_then(|v| v.checked_add(k))
            .and_then(|v| v.checked_add(p))
    };
    if reach(g.oh, g.sh, g.kh, g.ph).is_none()
        || reach(g.ow, g.sw, g.kw, g.pw).is_none()
        || g.kh.checked_mul(g.kw).is_none()
    {
        return Err(Error::InvalidArgument {
            what: "pool: window indices overflow",
        });
    }
    let r = |o: usize, n: usize| o..o.saturating_add(n);
    let (plane, oplane) = (g.h * g.w, g.oh * g.ow);
    // Without padding, planes go output row by output row, tap by tap along the row (loops the
    // compiler vectorises), where every window lies inside its plane (not a `ceil_mode` window
    // that overhangs: its taps past the edge would read the next row).
    let fits = |o: usize, s: usize, k: usize, n: usize| (o - 1) * s + k <= n;
    let unpadded =
        g.ph == 0 && g.pw == 0 && fits(g.oh, g.sh, g.kh, g.h) && fits(g.ow, g.sw, g.kw, g.w);
    // Planes per task (at least one): `lens` checked that there are planes.
    let per = call.planes.div_ceil(tasks.max(1));
    match call.pass {
        PoolPass::Forward { x, y } => {
            let (yb, [xb]) = split(buf, r(y, yl), [r(x, xl)])?;
            let jobs = xb.chunks(per * plane).zip(yb.chunks_mut(per * oplane));
            team::for_each(jobs, |(xs, ys)| {
                for (xp, yp) in xs.chunks_exact(plane).zip(ys.chunks_exact_mut(oplane)) {
                    if unpadded {
                        simd(|| rows_forward(&g, xp, yp));
                    } else {
                        forward(&g, xp, yp);
                    }
                }
            });
        }
        PoolPass::Backward { x, y, dy, dx } => {
            let (dxb, [xb, yb, dyb]) = split(buf, r(dx, xl), [r(x, xl), r(y, yl), r(dy, yl)])?;
            let ins = xb.chunks(per * plane).zip(yb.chunks(per * oplane));
            let jobs = dxb
                .chunks_mut(per * plane)
                .zip(ins.zip(dyb.chunks(per * oplane)));
            team::for_each(jobs, |(dxs, ((xs, ys), dys))| {
                let mut hits = Vec::new();
                let planes = dxs
                    .chunks_exact_mut(plane)
                    .zip(xs.chunks_exact(plane))
                    .zip(ys.chunks_exact(oplane).zip(dys.chunks_exact(oplane)));
                for ((dxp, xp), (yp, dyp)) in planes {
                    if unpadded {
                        simd(|| rows_backward(&g, xp, yp, dyp, dxp, &mut hits));
                    } else {
                        backward(&g, xp, yp, dyp, dxp, &mut hits);
                    }
                }
            });
        }
    }
    Ok(true)
}

/// The value of tap `(i, j)` of the window at `(oy, ox)` of plane `xp`: the pad value in the
/// padding (the smallest finite value for max pooling, 0 for average pooling).
#[inline(always)]
fn value<T: Float>(g: &Geom, xp: &[T], oy: usize, ox: usize, i: usize, j: usize) -> T {
    let pad = if g.max { T::MIN } else { T::ZERO };
    g.tap(oy, ox, i, j)
        .and_then(|t| xp.get(t).copied())
        .unwrap_or(pad)
}

/// The window's maximum: the first tap's value, then any greater or NaN tap's.
#[inline(always)]
fn window_max<T: Float>(mut taps: impl Iterator<Item = T>) -> T {
    let first = taps.next().unwrap_or(T::MIN);
    taps.fold(first, step)
}

/// One plane's forward.
fn forward<T: Float>(g: &Geom, xp: &[T], yp: &mut [T]) {
    let inv = g.inv::<T>();
    let mut out = yp.iter_mut();
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let Some(y) = out.next() else { return };
            *y = if g.inside(oy, ox) {
                // Every tap inside: the window's rows are slices of the plane. (The max visits
                // its first tap twice: harmless, a tap neither exceeds itself nor turns a NaN
                // into another value.)
                let top = (oy * g.sh - g.ph) * g.w + ox * g.sw - g.pw;
                let rows = (0..g.kh).map(|i| xp.get(top + i * g.w..top + i * g.w + g.kw));
                if g.max {
                    let mut m = xp.get(top).copied().unwrap_or(T::MIN);
                    for row in rows.flatten() {
                        for &v in row {
                            m = step(m, v);
                        }
                    }
                    m
                } else {
                    let mut s = T::ZERO;
                    for row in rows.flatten() {
                        for &v in row {
                            s += v;
                        }
                    }
                    s * inv
                }
            } else {
                let taps = (0..g.kh).flat_map(|i| (0..g.kw).map(move |j| (i, j)));
                if g.max {
                    window_max(taps.map(|(i, j)| value(g, xp, oy, ox, i, j)))
                } else {
                    // Padding adds +0, which changes no sum that starts from +0.
                    taps.filter_map(|(i, j)| g.tap(oy, ox, i, j))
                        .filter_map(|t| xp.get(t))
                        .fold(T::ZERO, |s, &v| s + v)
                        * inv
                }
            };
        }
    }
}

/// The first tap (row-major index in the window) of the window at `(oy, ox)` that holds `m`
/// (a NaN for a NaN `m`), padding included.
#[inline(always)]
fn first_hit<T: Float>(g: &Geom, xp: &[T], oy: usize, ox: usize, m: T) -> Option<usize> {
    let nan = m.is_nan();
    (0..g.kh * g.kw).find(|&t| {
        let v = value(g, xp, oy, ox, t / g.kw, t % g.kw);
        if nan {
            v.is_nan()
        } else {
            v == m
        }
    })
}

/// One padded plane's backward, tap by tap over the plane (the core's order where windows
/// overlap; where they do not, each position takes at most one addition).
fn backward<T: Float>(
    g: &Geom,
    xp: &[T],
    yp: &[T],
    dyp: &[T],
    dxp: &mut [T],
    hits: &mut Vec<usize>,
) {
    let inv = g.inv::<T>();
    // What the window at output `o` adds to its tap `t` (`hit`: its maximum's tap).
    let share = |o: usize, t: usize, hit: Option<usize>| -> T {
        let gv = dyp.get(o).copied().unwrap_or(T::ZERO);
        if !g.max {
            T::ZERO + gv * inv
        } else if hit == Some(t) {
            T::ZERO + gv
        } else {
            T::ZERO
        }
    };
    let taps = g.kh * g.kw;
    // Each window's maximum's tap first, then tap by tap over the plane.
    if g.max {
        hits.clear();
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let m = yp.get(oy * g.ow + ox).copied().unwrap_or(T::ZERO);
                hits.push(first_hit(g, xp, oy, ox, m).unwrap_or(usize::MAX));
            }
        }
    }
    for t in 0..taps {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let o = oy * g.ow + ox;
                let hit = hits.get(o).copied().filter(|&h| h != usize::MAX);
                if let Some(d) = g
                    .tap(oy, ox, t / g.kw, t % g.kw)
                    .and_then(|i| dxp.get_mut(i))
                {
                    *d += share(o, t, hit);
                }
            }
        }
    }
}

/// `f(ox, x)` for the value each window of an output row reads at one tap: `xs[ox * sw]` for
/// `ox` in `0..ow` (`xs` starts at the row's first window's tap). Strides 1 and 2 are loops
/// the compiler vectorises.
#[inline(always)]
fn along<T: Float>(xs: &[T], sw: usize, ow: usize, mut f: impl FnMut(usize, T)) {
    match sw {
        1 => {
            for (ox, &v) in xs.iter().take(ow).enumerate() {
                f(ox, v);
            }
        }
        2 => {
            for (ox, v) in xs.chunks(2).take(ow).enumerate() {
                f(ox, v[0]);
            }
        }
        _ => {
            for (ox, &v) in xs.iter().step_by(sw).take(ow).enumerate() {
                f(ox, v);
            }
        }
    }
}

/// One unpadded plane's forward, output row by output row, tap by tap (each window's taps in
/// the core's order).
fn rows_forward<T: Float>(g: &Geom, xp: &[T], yp: &mut [T]) {
    if g.max && (g.kh, g.kw, g.sh, g.sw) == (2, 2, 2, 2) {
        return square_forward(g, xp, yp);
    }
    let inv = g.inv::<T>();
    for (oy, yr) in yp.chunks_exact_mut(g.ow).enumerate() {
        let base = oy * g.sh * g.w;
        if !g.max {
            yr.fill(T::ZERO);
        }
        for t in 0..g.kh * g.kw {
            let off = base + (t / g.kw) * g.w + t % g.kw;
            let xs = xp.get(off..).unwrap_or(&[]);
            if !g.max {
                along(xs, g.sw, g.ow, |ox, v| {
                    if let Some(y) = yr.get_mut(ox) {
                        *y += v;
                    }
                });
            } else if t == 0 {
                along(xs, g.sw, g.ow, |ox, v| {
                    if let Some(y) = yr.get_mut(ox) {
                        *y = v;
                    }
                });
            } else {
                along(xs, g.sw, g.ow, |ox, v| {
                    if let Some(y) = yr.get_mut(ox) {
                        *y = step(*y, v);
                    }
                });
            }
        }
        if !g.max {
            for y in yr.iter_mut() {
                *y *= inv;
            }
        }
    }
}

/// One unpadded plane's backward, along output rows: each window's maximum's tap found tap by
/// tap, then every tap's additions over the plane, tap by tap (`0 + dy` to the maximum's, `0`
/// to the others'; `0 + dy * inv` to every tap for average pooling).
fn rows_backward<T: Float>(
    g: &Geom,
    xp: &[T],
    yp: &[T],
    dyp: &[T],
    dxp: &mut [T],
    hits: &mut Vec<usize>,
) {
    if g.max && (g.kh, g.kw, g.sh, g.sw) == (2, 2, 2, 2) {
        return square_backward(g, xp, yp, dyp, dxp);
    }
    let inv = g.inv::<T>();
    let taps = g.kh * g.kw;
    // Each window's maximum's tap, for the whole plane first: the additions below then go tap
    // by tap over the plane (the core's order where windows overlap).
    hits.clear();
    hits.resize(g.oh * g.ow, usize::MAX);
    if g.max {
        for (oy, (hr, yr)) in hits
            .chunks_exact_mut(g.ow)
            .zip(yp.chunks_exact(g.ow))
            .enumerate()
        {
            let base = oy * g.sh * g.w;
            for t in 0..taps {
                let off = base + (t / g.kw) * g.w + t % g.kw;
                along(xp.get(off..).unwrap_or(&[]), g.sw, g.ow, |ox, v| {
                    if let (Some(h), Some(&m)) = (hr.get_mut(ox), yr.get(ox)) {
                        let hit = v == m || (v.is_nan() && m.is_nan());
                        *h = if *h == usize::MAX && hit { t } else { *h };
                    }
                });
            }
        }
    }
    for t in 0..taps {
        let rows = hits.chunks_exact(g.ow).zip(dyp.chunks_exact(g.ow));
        for (oy, (hr, gr)) in rows.enumerate() {
            let off = oy * g.sh * g.w + (t / g.kw) * g.w + t % g.kw;
            let Some(ds) = dxp.get_mut(off..) else {
                continue;
            };
            // What window `ox` adds to this tap, which it reads at `off + ox * sw`.
            let add = |ox: usize, d: &mut T| {
                if let (Some(&h), Some(&gv)) = (hr.get(ox), gr.get(ox)) {
                    *d += if !g.max {
                        T::ZERO + gv * inv
                    } else if h == t {
                        T::ZERO + gv
                    } else {
                        T::ZERO
                    };
                }
            };
            match g.sw {
                1 => ds
                    .iter_mut()
                    .take(g.ow)
                    .enumerate()
                    .for_each(|(ox, d)| add(ox, d)),
                _ => ds
                    .iter_mut()
                    .step_by(g.sw)
                    .take(g.ow)
                    .enumerate()
                    .for_each(|(ox, d)| add(ox, d)),
            }
        }
    }
}

/// `m` after one more tap `v` of a max (the core's rule: greater or NaN replaces).
#[inline(always)]
fn step<T: Float>(m: T, v: T) -> T {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// The two input rows under output row `oy` of a 2 x 2, stride-2 pooling, cut to the windows'
/// `2 * OW` columns.
#[inline(always)]
fn pair<'a, T>(g: &Geom, xp: &'a [T], oy: usize) -> (&'a [T], &'a [T]) {
    let row = |r: usize| xp.get(r * g.w..r * g.w + 2 * g.ow).unwrap_or(&[]);
    (row(2 * oy), row(2 * oy + 1))
}

/// The forward of the common 2 x 2, stride-2 max pooling without padding: one loop over each
/// output row that the compiler vectorises (taps in the core's order).
fn square_forward<T: Float>(g: &Geom, xp: &[T], yp: &mut [T]) {
    for (oy, yr) in yp.chunks_exact_mut(g.ow).enumerate() {
        let (a, b) = pair(g, xp, oy);
        for ((y, a), b) in yr.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
            *y = step(step(step(a[0], a[1]), b[0]), b[1]);
        }
    }
}

/// Its backward: `0 + dy` to each window's first tap that holds the maximum, `0` to the
/// others.
fn square_backward<T: Float>(g: &Geom, xp: &[T], yp: &[T], dyp: &[T], dxp: &mut [T]) {
    let w = g.w;
    for (oy, (yr, gr)) in yp
        .chunks_exact(g.ow)
        .zip(dyp.chunks_exact(g.ow))
        .enumerate()
    {
        let (a, b) = pair(g, xp, oy);
        let Some(rows) = dxp.get_mut(2 * oy * w..(2 * oy + 2) * w) else {
            return;
        };
        let (da, db) = rows.split_at_mut(w);
        let ins = a.chunks_exact(2).zip(b.chunks_exact(2));
        let outs = da.chunks_exact_mut(2).zip(db.chunks_exact_mut(2));
        for (((m, gv), (a, b)), (da, db)) in yr.iter().zip(gr).zip(ins).zip(outs) {
            let (m, add) = (*m, T::ZERO + *gv);
            let hit = |v: T| v == m || (v.is_nan() && m.is_nan());
            let h0 = hit(a[0]);
            let h1 = !h0 && hit(a[1]);
            let h2 = !h0 && !h1 && hit(b[0]);
            let h3 = !h0 && !h1 && !h2 && hit(b[1]);
            da[0] += if h0 { add } else { T::ZERO };
            da[1] += if h1 { add } else { T::ZERO };
            db[0] += if h2 { add } else { T::ZERO };
            db[1] += if h3 { add } else { T::ZERO };
        }
    }
}
