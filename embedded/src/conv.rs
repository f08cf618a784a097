//! [`conv`]: `Fast`'s direct convolution, in plain Rust (no assembly), so that the host checks
//! it against the core's convolution (`embedded/host`, `cargo test`). The core convolves
//! through im2col: it copies every window's taps into columns (once for the forward, again for
//! the weight's gradient) and multiplies. On the M4 those copies of short rows cost more than
//! the products; here each tap is read in place, with the sums kept in registers: blocks of up
//! to two output channels by six output columns in the forward, and of up to four output
//! channels by a window row's three taps in the weight's gradient. Those are compiled apart
//! for the common window row (3 taps, stride and dilation 1: every offset a constant); any
//! other geometry without padding runs the same loops with one output channel (and one tap) a
//! block. The input's gradient goes tap by tap, each output position's sum over the output
//! channels added where the tap read. Padding is left to the core's path.
//!
//! Summation orders are those of `Fast`'s im2col path: a forward output sums its taps in
//! weight order (channel, then window row, then column) from zero; the weight's gradient adds,
//! image by image, that image's sum over output positions (row-major, from zero); the input's
//! gradient adds, tap by tap, each position's sum over output channels (in order, from zero).
//! The two paths give the same bits.

use mote::backend::split;
use mote::ops::conv::{ConvCall, ConvPass};
use mote::{Error, Result};

/// A checked call's sizes, in the names of the module docs (`cg`, `og`: channels and outputs
/// per group).
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    groups: usize,
    cg: usize,
    og: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    /// Elements of one input plane, of one output plane, and weights per output channel.
    fn planes(&self) -> (usize, usize, usize) {
        (
            self.h * self.w,
            self.oh * self.ow,
            self.cg * self.kh * self.kw,
        )
    }
}

/// Checks that, without padding, every tap of every window lies inside its plane: the last
/// window's last tap, `(OH - 1) * SH + (KH - 1) * DH` (and the same across), is below `H` (`W`).
/// `ConvCall::lens` implies it; checked again, since the loops read unchecked.
fn check_windows(call: &ConvCall) -> Result<()> {
    for d in 0..2 {
        let last = call.out[d]
            .checked_sub(1)
            .and_then(|o| o.checked_mul(call.stride[d]))
            .zip(call.kernel[d].checked_sub(1))
            .and_then(|(o, k)| k.checked_mul(call.dilation[d]).map(|k| (o, k)))
            .and_then(|(o, k)| o.checked_add(k));
        if last.is_none_or(|l| l >= call.size[d]) {
            return Err(Error::InvalidArgument {
                what: "conv: a window outside the input",
            });
        }
    }
    Ok(())
}

/// One pass of a convolution ([`ConvPass`]) over the arena `buf`, with the results of `Fast`'s
/// im2col path (see the module docs). Returns `Ok(false)`, having done nothing, for padding
/// (kept out of the firmware's code: the core's path pads).
///
/// # Errors
/// [`Error::InvalidArgument`] for an inconsistent call; [`Error::IndexOutOfRange`] or
/// [`Error::Aliasing`] for tensors outside the arena or where the written one overlaps another.
#[inline(never)]
pub fn conv(buf: &mut [f32], call: &ConvCall) -> Result<bool> {
    if call.padding != [0, 0] {
        return Ok(false);
    }
    let [xl, wl, yl] = call.lens()?;
    let at = |o: usize, n: usize| -> Result<core::ops::Range<usize>> {
        let end = o.checked_add(n).ok_or(Error::IndexOutOfRange {
            op: "conv",
            index: o,
            bound: usize::MAX,
        })?;
        Ok(o..end)
    };
    let d = Dims {
        n: call.images,
        groups: call.groups,
        cg: call.channels / call.groups,
        og: call.out_channels / call.groups,
        h: call.size[0],
        w: call.size[1],
        kh: call.kernel[0],
        kw: call.kernel[1],
        sh: call.stride[0],
        sw: call.stride[1],
        dh: call.dilation[0],
        dw: call.dilation[1],
        oh: call.out[0],
        ow: call.out[1],
    };
    match call.pass {
        ConvPass::Forward { x, w, y } => {
            let (yb, [xb, wb]) = split(buf, at(y, yl)?, [at(x, xl)?, at(w, wl)?])?;
            check_windows(call)?;
            if (d.kw, d.sw, d.dw) == (3, 1, 1) {
                forward::<3, 1, 1>(&d, xb, wb, yb);
            } else {
                forward::<0, 0, 0>(&d, xb, wb, yb);
            }
        }
        ConvPass::WeightGrad { x, dy, dw } => {
            let (dwb, [xb, dyb]) = split(buf, at(dw, wl)?, [at(x, xl)?, at(dy, yl)?])?;
            check_windows(call)?;
            if (d.kw, d.sw, d.dw) == (3, 1, 1) {
                weight_grad::<3, 1, 1>(&d, xb, dyb, dwb);
            } else {
                weight_grad::<0, 0, 0>(&d, xb, dyb, dwb);
            }
        }
        ConvPass::InputGrad { w, dy, dx } => {
            let (dxb, [wb, dyb]) = split(buf, at(dx, xl)?, [at(w, wl)?, at(dy, yl)?])?;
            check_windows(call)?;
            input_grad(&d, wb, dyb, dxb);
        }
    }
    Ok(true)
}

/// `value` where the constant `fixed` is 0 ("not fixed"), else `fixed`: the kernels below are
/// compiled for one common window row (3 taps, stride and dilation 1), where every offset is a
/// constant and loads shared by neighbouring taps are made once, and for any other.
#[inline(always)]
fn pick(fixed: usize, value: usize) -> usize {
    if fixed == 0 {
        value
    } else {
        fixed
    }
}

/// How many output channels a block takes at once, of the `left` still to do: 4, 2 or 1, at
/// most `max`, where the window row is fixed; one otherwise (fewer copies of the blocks in
/// flash).
#[inline(always)]
fn channels<const KW: usize>(left: usize, max: usize) -> usize {
    match left.min(max) {
        _ if KW == 0 => 1,
        4.. => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// `y = conv(x, w)`, in blocks of up to two output channels by six output columns (the
/// registers of the M4F hold their sums and a window row); `KW`, `SW`, `DW` fixed as [`pick`]
/// reads them.
fn forward<const KW: usize, const SW: usize, const DW: usize>(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
) {
    let sw = pick(SW, d.sw);
    let (plane, oplane, per_o) = d.planes();
    for n in 0..d.n {
        for gi in 0..d.groups {
            // The group's first input plane, first output channel and first output plane.
            let x0 = (n * d.groups + gi) * d.cg * plane;
            let o0 = gi * d.og;
            let y0 = (n * d.groups * d.og + o0) * oplane;
            let mut o = 0;
            while o < d.og {
                let ro = channels::<KW>(d.og - o, 2);
                for oh in 0..d.oh {
                    let mut ow = 0;
                    while ow < d.ow {
                        let b = Block {
                            x: x0 + oh * d.sh * d.w + ow * sw,
                            w: (o0 + o) * per_o,
                            y: y0 + o * oplane + oh * d.ow + ow,
                        };
                        ow += match (ro, d.ow - ow) {
                            (2, 6..) => block::<2, 6, KW, SW, DW>(d, x, w, y, b),
                            (2, 4 | 5) => block::<2, 4, KW, SW, DW>(d, x, w, y, b),
                            (2, 2 | 3) => block::<2, 2, KW, SW, DW>(d, x, w, y, b),
                            (2, _) => block::<2, 1, KW, SW, DW>(d, x, w, y, b),
                            (_, 4..) => block::<1, 4, KW, SW, DW>(d, x, w, y, b),
                            (_, 2 | 3) => block::<1, 2, KW, SW, DW>(d, x, w, y, b),
                            (_, _) => block::<1, 1, KW, SW, DW>(d, x, w, y, b),
                        };
                    }
                }
                o += ro;
            }
        }
    }
}

/// Where a forward block starts: its first window's first tap in `x`, its first output
/// channel's weights in `w`, its first output in `y`.
#[derive(Clone, Copy)]
struct Block {
    x: usize,
    w: usize,
    y: usize,
}

/// `RO x RC` outputs of the forward, summed in registers over every tap; returns `RC`.
#[inline(always)]
fn block<const RO: usize, const RC: usize, const KW: usize, const SW: usize, const DW: usize>(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    b: Block,
) -> usize {
    let (plane, oplane, per_o) = d.planes();
    let (kw, sw, dw) = (pick(KW, d.kw), pick(SW, d.sw), pick(DW, d.dw));
    let mut acc = [[0f32; RC]; RO];
    // SAFETY: `check_windows` (no padding): every tap of every window lies in its plane, so
    // each `xr` below plus `q * SW + kj * DW` is inside the group's planes of `x`, which `lens`
    // sized; `wr` runs over the weights of output channel `o` of the group, and `wr + r *
    // per_o` over those of `o + r < og` (`w` holds `O * per_o`).
    unsafe {
        let (xp, mut wr) = (x.as_ptr().add(b.x), w.as_ptr().add(b.w));
        for c in 0..d.cg {
            for ki in 0..d.kh {
                // Computed per row (not stepped past the last one): `ki * DH * W` is inside
                // the plane for every window row.
                let xr = xp.add(c * plane + ki * d.dh * d.w);
                for kj in 0..kw {
                    let xs: [f32; RC] = core::array::from_fn(|q| *xr.add(q * sw + kj * dw));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let wv = *wr.add(r * per_o + kj);
                        for (s, &xv) in acc.iter_mut().zip(&xs) {
                            *s += wv * xv;
                        }
                    }
                }
                wr = wr.add(kw);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, &s) in acc.iter().enumerate() {
            // SAFETY: output channel `o + r` of the group, column `ow + q < OW`: inside `y`.
            unsafe { *y.get_unchecked_mut(b.y + r * oplane + q) = s };
        }
    }
    RC
}

/// `dw += sum over images of (sum over positions of dy x)`, in blocks of up to four output
/// channels by the window row's three taps where it is fixed (one tap otherwise); `KW`, `SW`,
/// `DW` fixed as [`pick`] reads them.
fn weight_grad<const KW: usize, const SW: usize, const DW: usize>(
    d: &Dims,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let (plane, oplane, per_o) = d.planes();
    let (kw, tap) = (pick(KW, d.kw), pick(DW, d.dw));
    for n in 0..d.n {
        for gi in 0..d.groups {
            let x0 = (n * d.groups + gi) * d.cg * plane;
            let o0 = gi * d.og;
            for c in 0..d.cg {
                for ki in 0..d.kh {
                    let mut kj = 0;
                    while kj < kw {
                        let mut o = 0;
                        while o < d.og {
                            let ro = channels::<KW>(d.og - o, 4);
                            let t = Taps {
                                x: x0 + c * plane + ki * d.dh * d.w + kj * tap,
                                dy: (n * d.groups * d.og + o0 + o) * oplane,
                                dw: (o0 + o) * per_o + (c * d.kh + ki) * kw + kj,
                            };
                            match (KW, ro) {
                                (3, 4) => taps::<4, 3, SW, DW>(d, x, dy, dw, t),
                                (3, 2) => taps::<2, 3, SW, DW>(d, x, dy, dw, t),
                                (3, _) => taps::<1, 3, SW, DW>(d, x, dy, dw, t),
                                _ => taps::<1, 1, SW, DW>(d, x, dy, dw, t),
                            }
                            o += ro;
                        }
                        kj += if KW == 3 { 3 } else { 1 };
                    }
                }
            }
        }
    }
}

/// Where a weight-gradient block starts: its first tap's first position in `x`, its first
/// output channel's gradient plane in `dy`, and that channel's gradient of the first tap in
/// `dw`.
#[derive(Clone, Copy)]
struct Taps {
    x: usize,
    dy: usize,
    dw: usize,
}

/// `RO` output channels by `R` consecutive taps of a window row: one image's sums over every
/// output position, added to their gradients.
#[inline(always)]
fn taps<const RO: usize, const R: usize, const SW: usize, const DW: usize>(
    d: &Dims,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    t: Taps,
) {
    let (_, oplane, per_o) = d.planes();
    let (sw, tap) = (pick(SW, d.sw), pick(DW, d.dw));
    let mut acc = [[0f32; R]; RO];
    // SAFETY: as in `block`: taps `kj + r < KW` of the window at `(oh, ow)` lie in the plane;
    // `gp + r * oplane + g` runs over the plane of output channel `o + r < og` in `dy`, which
    // `lens` sized.
    unsafe {
        let (xp, gp) = (x.as_ptr().add(t.x), dy.as_ptr().add(t.dy));
        let mut g = 0;
        for oh in 0..d.oh {
            let xr = xp.add(oh * d.sh * d.w);
            for ow in 0..d.ow {
                let xq = xr.add(ow * sw);
                let xs: [f32; R] = core::array::from_fn(|r| *xq.add(r * tap));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let gv = *gp.add(r * oplane + g);
                    for (s, &xv) in acc.iter_mut().zip(&xs) {
                        *s += gv * xv;
                    }
                }
                g += 1;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, &s) in acc.iter().enumerate() {
            // SAFETY: tap `kj + q < KW` of output channel `o + r < og`: inside `dw`, which
            // holds `O * per_o`.
            unsafe { *dw.get_unchecked_mut(t.dw + r * per_o + q) += s };
        }
    }
}

/// `dx += conv_transpose(dy, w)`: tap by tap (the core's col2im order), each position's sum
/// over the group's output channels added to the input position the tap read.
fn input_grad(d: &Dims, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (plane, oplane, per_o) = d.planes();
    for n in 0..d.n {
        for gi in 0..d.groups {
            let g0 = (n * d.groups + gi) * d.og * oplane;
            for c in 0..d.cg {
                let x0 = ((n * d.groups + gi) * d.cg + c) * plane;
                for ki in 0..d.kh {
                    for kj in 0..d.kw {
                        let w0 = gi * d.og * per_o + (c * d.kh + ki) * d.kw + kj;
                        let mut p = 0;
                        for oh in 0..d.oh {
                            let row = x0 + (oh * d.sh + ki * d.dh) * d.w + kj * d.dw;
                            for ow in 0..d.ow {
                                let mut s = 0f32;
                                // SAFETY: `w0 + o * per_o` is this tap's weight for output
                                // channel `o < og` of the group; `g0 + o * oplane + p` a
                                // position of its plane in `dy`; the tap lies in the plane
                                // (as in `block`).
                                unsafe {
                                    for o in 0..d.og {
                                        s += *w.get_unchecked(w0 + o * per_o)
                                            * *dy.get_unchecked(g0 + o * oplane + p);
                                    }
                                    *dx.get_unchecked_mut(row + ow * d.sw) += s;
                                }
                                p += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}
