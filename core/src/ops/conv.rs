//! Convolutions and pooling over images `[N, C, H, W]` and signals `[N, C, L]` (a signal is an
//! image of height 1).
//!
//! Both are built on the backend's strided copy and GEMM, through an *im2col* buffer that the op
//! takes from the arena for the duration of its kernel and gives back right after (so it counts
//! in the high-water mark and in [`crate::plan::measure`], but not in the memory a step keeps):
//!
//! - `cols[n, c, i, j, oh, ow] = x[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw]` (0, or the most
//!   negative value for max pooling, where that index falls in the padding);
//! - **conv2d** (PyTorch's `F.conv2d`, cross-correlation): per group `g`,
//!   `y[n, g] = W[g] cols[n, g]`, with `W[g]` of shape `[O/G, C/G * KH * KW]`;
//!   backward: `dW[g] += sum_n dy[n, g] cols[n, g]^T` and `dcols[n, g] = W[g]^T dy[n, g]`,
//!   scattered back into `dx` (*col2im*, accumulating where windows overlap);
//! - **max / average pooling**: the maximum (or mean) over each window's `KH * KW` values of
//!   `cols`; backward routes `dy` to the window's first maximum (as PyTorch's max pooling, and
//!   as the `max` reduction does) or spreads `dy / (KH * KW)` over the window, then col2im. Average pooling counts
//!   padded positions (PyTorch's default `count_include_pad=True`); `avg_pool2d_exclude_pad`
//!   (`count_include_pad=False`) divides that by the same pooling of a plane of ones, a
//!   constant: each window's mean over its taps inside the input.
//!
//! A backend may run a whole convolution pass with its own kernel instead ([`Backend::conv`],
//! offered a [`ConvCall`] first; the multithreaded CPU backend convolves directly where it
//! can). The im2col buffer is taken from the arena all the same, so that the arena a step is
//! planned for does not depend on the backend (a backend's own kernel may use scratch memory of
//! its own). A backend may also ask for a larger buffer per pass ([`Backend::conv_scratch`]:
//! the GPU does, to take a whole batch in one pass), which it gets only from arena that is
//! free beyond the plan: its high-water mark may then be higher than the plan's.
//!
//! Output size along each spatial axis: `(H + 2 ph - dh (KH - 1) - 1) / sh + 1` (floor); a
//! pooling in `ceil_mode` rounds up instead, less one where the last window would start in the
//! right padding (PyTorch's rule), and that window's taps past the padded input count as
//! padding (an average counting padding divides by the taps it covers there).
//! Geometry values (stride, padding, dilation and pooling windows) are limited to 1..=31
//! (padding 0..=31) so that a node stays small on a microcontroller.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::matmul::Gemm;
use crate::ops::movement::Strided;
use crate::ops::reduce::{Axis3, ReduceOp};
use crate::shape::Shape;

/// Stride, padding and dilation of a 2-D convolution (PyTorch's `Conv2d` arguments; `groups`
/// follows from the shapes: `C / weight.dim(1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    /// Step between windows, (height, width).
    pub stride: [usize; 2],
    /// Zeros added on each side, (height, width).
    pub padding: [usize; 2],
    /// Step between a window's taps, (height, width).
    pub dilation: [usize; 2],
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

/// Window, stride and padding of a 2-D pooling (PyTorch's `MaxPool2d` / `AvgPool2d`, whose
/// stride defaults to the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Window, (height, width).
    pub kernel: [usize; 2],
    /// Step between windows, (height, width).
    pub stride: [usize; 2],
    /// Padding on each side, (height, width).
    pub padding: [usize; 2],
    /// PyTorch's `ceil_mode`: the output size rounds up, `ceil((H + 2 PH - KH) / SH) + 1`
    /// rather than down, less one where the last window would start in the right padding;
    /// a last window that overhangs the padded input reads only what it covers (average
    /// pooling divides by the taps it covers in the padded input, as PyTorch's).
    pub ceil_mode: bool,
}

impl PoolConfig {
    /// A `k x k` window with stride `k`, no padding, the output size rounded down.
    pub fn square(k: usize) -> PoolConfig {
        PoolConfig {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            ceil_mode: false,
        }
    }
}

/// Output size along one axis of a pooling in `ceil_mode` (PyTorch's rule): the floor size
/// `floor` (already checked), plus one where a window starting past it still starts inside
/// the input or its left padding.
fn ceil_len(floor: usize, len: usize, k: usize, s: usize, p: usize) -> usize {
    // The floor size's windows end at or before the padded input's end; one more starts at
    // `floor * s - p`, which must lie before `len`, and must reach past the last one's end.
    // Checked: a hand-made call may state any sizes (`out_len` checked `len + 2 p` and the
    // floor size's windows, not one more).
    let padded = len + 2 * p;
    let covered = (floor - 1) * s + k;
    if covered < padded && floor.checked_mul(s).is_some_and(|e| e < len + p) {
        floor + 1
    } else {
        floor
    }
}

/// Six small numbers packed into a node (5 bits each); `too_large` is the error's text when
/// one exceeds 31.
pub(crate) fn pack(v: [usize; 6], too_large: &'static str) -> Result<u32> {
    let mut out = 0u32;
    for (i, &x) in v.iter().enumerate() {
        if x > 31 {
            return Err(Error::InvalidArgument { what: too_large });
        }
        out |= (x as u32) << (5 * i);
    }
    Ok(out)
}

/// The bit of a pooling node's packed geometry (above [`pack`]'s 30) that says `ceil_mode`.
const CEIL_BIT: u32 = 30;

pub(crate) fn unpack(p: u32) -> [usize; 6] {
    core::array::from_fn(|i| ((p >> (5 * i)) & 31) as usize)
}

/// The full geometry of one windowed op over `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Whether `out` is the output size along one axis of a window `k` (dilation `d`), stride
/// `s` and padding `p` over `len` positions: the floor size, or, for a pooling (`pooling`,
/// dilation 1), the `ceil_mode` one.
fn follows(len: usize, k: usize, s: usize, p: usize, d: usize, out: usize, pooling: bool) -> bool {
    match out_len(len, k, s, p, d) {
        Some(f) if f == out => true,
        Some(f) if pooling && d == 1 => ceil_len(f, len, k, s, p) == out,
        _ => false,
    }
}

fn out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = len.checked_add(p.checked_mul(2)?)?;
    if s == 0 || padded < span {
        return None;
    }
    Some((padded - span) / s + 1)
}

impl Geom {
    /// A pooling's geometry ([`Geom::new`] with dilation 1), its output rounded up on an axis
    /// where `ceil` says so (PyTorch's `ceil_mode`).
    pub(crate) fn pool(
        x: Shape,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        ceil: bool,
        op: &'static str,
    ) -> Result<Geom> {
        let mut g = Geom::new(x, k, s, p, [1, 1], op)?;
        if ceil {
            g.oh = ceil_len(g.oh, g.h, g.kh, g.sh, g.ph);
            g.ow = ceil_len(g.ow, g.w, g.kw, g.sw, g.pw);
        }
        Ok(g)
    }

    /// Checks and completes a geometry; `op` names the op in errors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        x: Shape,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
        op: &'static str,
    ) -> Result<Geom> {
        if x.rank() != 4 {
            return Err(Error::InvalidShape { op, shape: x });
        }
        let bad = Error::InvalidArgument {
            what: "window larger than the padded input, or a zero stride or dilation",
        };
        if d.contains(&0) || s.contains(&0) || k.contains(&0) {
            return Err(bad);
        }
        let (h, w) = (x.dim(2), x.dim(3));
        let oh = out_len(h, k[0], s[0], p[0], d[0]).ok_or(bad)?;
        let ow = out_len(w, k[1], s[1], p[1], d[1]).ok_or(bad)?;
        Ok(Geom {
            n: x.dim(0),
            c: x.dim(1),
            h,
            w,
            kh: k[0],
            kw: k[1],
            sh: s[0],
            sw: s[1],
            ph: p[0],
            pw: p[1],
            dh: d[0],
            dw: d[1],
            oh,
            ow,
        })
    }

    /// Window taps.
    pub(crate) fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Output positions per channel.
    pub(crate) fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Elements of the im2col buffer: `N C KH KW OH OW` (checked).
    pub(crate) fn cols_len(&self) -> Result<usize> {
        Shape::new(&[self.n, self.c, self.taps(), self.positions()]).map(|s| s.numel())
    }
}

/// Elements of `cols` one im2col pass may fill: a batch whose `cols` are larger is done a few
/// images at a time, so that `cols` stays in cache between the copies and the products, and
/// the arena holds less scratch (a microcontroller's batches always fit in one pass).
pub(crate) const SCRATCH: usize = 1 << 20;

impl Geom {
    /// Images per im2col pass (see [`SCRATCH`]).
    pub(crate) fn images_per_pass(&self) -> usize {
        let per = self
            .c
            .checked_mul(self.taps())
            .and_then(|v| v.checked_mul(self.positions()))
            .unwrap_or(usize::MAX);
        (SCRATCH / per.max(1)).clamp(1, self.n.max(1))
    }

    /// Images `first .. first + n` of this geometry.
    pub(crate) fn part(&self, n: usize) -> Geom {
        Geom { n, ..*self }
    }
}

impl<B: Backend, const NODES: usize> crate::tape::Tape<B, NODES> {
    /// Images per im2col pass of `g`: the planned [`Geom::images_per_pass`], or more where the
    /// backend asks for a larger buffer ([`Backend::conv_scratch`]) and the arena has the room
    /// free (never less than planned, so the arena's plan holds on every backend).
    pub(crate) fn images_per_pass(&self, g: &Geom) -> Result<usize> {
        let planned = g.images_per_pass();
        let Some(want) = self.backend.conv_scratch() else {
            return Ok(planned);
        };
        let per = g.part(1).cols_len()?.max(1);
        let free = self.free_aligned();
        Ok((want.min(free) / per).clamp(planned, g.n.max(planned)))
    }
}

/// The output indices `o` in `0..out` for which `o * s + off - p` lies in `0..len`, as a range.
fn valid(out: usize, s: usize, off: usize, p: usize, len: usize) -> (usize, usize) {
    // o * s >= p - off
    let lo = if p > off { (p - off).div_ceil(s) } else { 0 };
    // o * s + off - p < len  <=>  o * s < len + p - off
    let lim = len + p;
    let hi = if lim > off {
        (lim - off).div_ceil(s).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// For each tap `(i, j)`: the index space and the two strided layouts between `x` and `cols`
/// (skipping taps that only see padding).
fn for_each_tap(
    g: &Geom,
    x: usize,
    cols: usize,
    mut f: impl FnMut(&Shape, Strided, Strided) -> Result<()>,
) -> Result<()> {
    let p = g.positions();
    for i in 0..g.kh {
        for j in 0..g.kw {
            let (h0, h1) = valid(g.oh, g.sh, i * g.dh, g.ph, g.h);
            let (w0, w1) = valid(g.ow, g.sw, j * g.dw, g.pw, g.w);
            if h0 >= h1 || w0 >= w1 {
                continue;
            }
            let ih = h0 * g.sh + i * g.dh - g.ph;
            let iw = w0 * g.sw + j * g.dw - g.pw;
            let space = Shape::new(&[g.n, g.c, h1 - h0, w1 - w0])?;
            // A stride along an axis of one position is never taken (0 here: `sh * w` need not
            // fit where the image has one row of outputs).
            let src = Strided {
                offset: x + ih * g.w + iw,
                strides: [
                    g.c * g.h * g.w,
                    g.h * g.w,
                    if h1 - h0 > 1 { g.sh * g.w } else { 0 },
                    g.sw,
                ],
            };
            let dst = Strided {
                offset: cols + (i * g.kw + j) * p + h0 * g.ow + w0,
                strides: [g.c * g.taps() * p, g.taps() * p, g.ow, 1],
            };
            f(&space, src, dst)?;
        }
    }
    Ok(())
}

/// Fills `cols` from the image at `x` (padding positions get `pad`).
pub(crate) fn im2col<B: Backend>(
    be: &mut B,
    g: &Geom,
    x: usize,
    cols: usize,
    pad: B::Elem,
) -> Result<()> {
    be.fill(cols, g.cols_len()?, pad)?;
    copy_taps(be, g, x, cols)
}

/// [`im2col`] without the fill: the image's values into their positions of `cols`, whose
/// padding positions already hold the padding (a later pass of the same geometry over a
/// buffer nothing else wrote).
pub(crate) fn copy_taps<B: Backend>(be: &mut B, g: &Geom, x: usize, cols: usize) -> Result<()> {
    for_each_tap(g, x, cols, |space, src, dst| {
        be.copy_strided(space, src, dst, false)
    })
}

/// Adds `cols` back into the image gradient at `dx` (overlapping windows accumulate).
pub(crate) fn col2im<B: Backend>(be: &mut B, g: &Geom, cols: usize, dx: usize) -> Result<()> {
    for_each_tap(g, dx, cols, |space, img, col| {
        be.copy_strided(space, col, img, true)
    })
}

/// Which pass of a convolution a [`ConvCall`] asks for, and where its tensors lie (arena
/// offsets, contiguous, row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// `y = conv(x, w)`, overwriting `y` (`[N, O, OH, OW]`).
    Forward {
        /// The input, `[N, C, H, W]`.
        x: usize,
        /// The weight, `[O, C / G, KH, KW]`.
        w: usize,
        /// The output.
        y: usize,
    },
    /// `dw += sum over images and positions of dy x` (the weight's gradient, accumulated).
    WeightGrad {
        /// The input.
        x: usize,
        /// The output's gradient.
        dy: usize,
        /// The weight's gradient.
        dw: usize,
    },
    /// `dx += conv_transpose(dy, w)` (the input's gradient, accumulated).
    InputGrad {
        /// The weight.
        w: usize,
        /// The output's gradient.
        dy: usize,
        /// The input's gradient.
        dx: usize,
    },
}

/// One pass of a 2-D convolution over a whole batch, offered to [`Backend::conv`] before the
/// tape runs it as im2col copies and matrix products. The geometry is checked (the output size
/// follows from the others as the module docs give it) and every tensor lies inside the
/// arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvCall {
    /// The pass and its tensors.
    pub pass: ConvPass,
    /// Images `N`.
    pub images: usize,
    /// Input channels `C`.
    pub channels: usize,
    /// Input height and width `[H, W]`.
    pub size: [usize; 2],
    /// Output channels `O`.
    pub out_channels: usize,
    /// Groups `G` (`C` and `O` are multiples of it).
    pub groups: usize,
    /// Window `[KH, KW]`.
    pub kernel: [usize; 2],
    /// Stride `[SH, SW]`.
    pub stride: [usize; 2],
    /// Zero padding `[PH, PW]` on each side.
    pub padding: [usize; 2],
    /// Dilation `[DH, DW]`.
    pub dilation: [usize; 2],
    /// Output height and width `[OH, OW]`.
    pub out: [usize; 2],
}

impl ConvCall {
    /// The elements of the input, the weight and the output, `[x, w, y]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the call is inconsistent (no groups, channels that do
    /// not divide into them, a zero size, window, stride or dilation, an output size that does
    /// not follow from the others) or a size overflows.
    pub fn lens(&self) -> Result<[usize; 3]> {
        let bad = Error::InvalidArgument {
            what: "a convolution call whose geometry is inconsistent or overflows",
        };
        let g = self.groups;
        if [g, self.images, self.channels, self.out_channels].contains(&0)
            || !self.channels.is_multiple_of(g)
            || !self.out_channels.is_multiple_of(g)
        {
            return Err(bad);
        }
        if !axes_follow(
            self.size,
            self.kernel,
            self.stride,
            self.padding,
            Some(self.dilation),
            self.out,
        ) {
            return Err(bad);
        }
        let [h, w] = self.size;
        let [oh, ow] = self.out;
        let prod = |v: [usize; 4]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let x = prod([self.images, self.channels, h, w]);
        let y = prod([self.images, self.out_channels, oh, ow]);
        let wl = prod([
            self.out_channels,
            self.channels / g,
            self.kernel[0],
            self.kernel[1],
        ]);
        match (x, wl, y) {
            (Some(x), Some(wl), Some(y)) => Ok([x, wl, y]),
            _ => Err(bad),
        }
    }
}

/// Whether, on both axes, the size, window and dilation are not zero and the output size
/// follows from them, the stride and the padding (what a convolution's or a pooling's call
/// states; a pooling's, `dilation` `None`, may be rounded up as in `ceil_mode`).
fn axes_follow(
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: Option<[usize; 2]>,
    out: [usize; 2],
) -> bool {
    let pooling = dilation.is_none();
    let dilation = dilation.unwrap_or([1, 1]);
    (0..2).all(|d| {
        let at = |v: [usize; 2]| v.get(d).copied().unwrap_or(0);
        let (n, k, dl) = (at(size), at(kernel), at(dilation));
        let (s, p, o) = (at(stride), at(padding), at(out));
        n != 0 && k != 0 && dl != 0 && follows(n, k, s, p, dl, o, pooling)
    })
}

/// Which pass of a 2-D pooling a [`PoolCall`] asks for, and where its tensors lie (arena
/// offsets, contiguous, row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolPass {
    /// `y` = each window's maximum (or mean), overwriting `y` (`[N, C, OH, OW]`).
    Forward {
        /// The input, `[N, C, H, W]`.
        x: usize,
        /// The output.
        y: usize,
    },
    /// `dx +=` each window's share of `dy` (the input's gradient, accumulated). Max pooling
    /// routes a window's gradient to its first tap (row-major) that holds the window's maximum
    /// `y`, and drops it when that tap lies in the padding; average pooling adds `dy / (KH *
    /// KW)` to every tap inside the input.
    Backward {
        /// The input.
        x: usize,
        /// The forward's output.
        y: usize,
        /// The output's gradient.
        dy: usize,
        /// The input's gradient.
        dx: usize,
    },
}

/// One pass of a 2-D pooling over a whole batch, offered to [`Backend::pool`] before the tape
/// runs it as im2col copies and a reduction. Padding counts as the smallest finite value for
/// max pooling and as zeros for average pooling (PyTorch's `count_include_pad=True`). The
/// output size may be rounded up (`ceil_mode`): a last window then overhangs the padded input,
/// and its taps past it count as padding too (the average still divides by `KH * KW`: the
/// tape rescales that window after).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolCall {
    /// The pass and its tensors.
    pub pass: PoolPass,
    /// Max pooling, or average pooling.
    pub max: bool,
    /// Planes `N * C`.
    pub planes: usize,
    /// Input height and width `[H, W]`.
    pub size: [usize; 2],
    /// Window `[KH, KW]`.
    pub kernel: [usize; 2],
    /// Stride `[SH, SW]`.
    pub stride: [usize; 2],
    /// Padding `[PH, PW]` on each side.
    pub padding: [usize; 2],
    /// Output height and width `[OH, OW]`.
    pub out: [usize; 2],
}

impl PoolCall {
    /// The elements of the input and of the output, `[x, y]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the call is inconsistent (no planes, a zero size, window
    /// or stride, an output size that does not follow from the others) or a size overflows.
    pub fn lens(&self) -> Result<[usize; 2]> {
        let bad = Error::InvalidArgument {
            what: "a pooling call whose geometry is inconsistent or overflows",
        };
        if self.planes == 0 {
            return Err(bad);
        }
        if !axes_follow(
            self.size,
            self.kernel,
            self.stride,
            self.padding,
            None,
            self.out,
        ) {
            return Err(bad);
        }
        let [h, w] = self.size;
        let [oh, ow] = self.out;
        let x = self.planes.checked_mul(h).and_then(|v| v.checked_mul(w));
        let y = self.planes.checked_mul(oh).and_then(|v| v.checked_mul(ow));
        match (x, y) {
            (Some(x), Some(y)) => Ok([x, y]),
            _ => Err(bad),
        }
    }
}

impl Geom {
    fn pool_call(&self, max: bool, pass: PoolPass) -> PoolCall {
        PoolCall {
            pass,
            max,
            planes: self.n * self.c,
            size: [self.h, self.w],
            kernel: [self.kh, self.kw],
            stride: [self.sh, self.sw],
            padding: [self.ph, self.pw],
            out: [self.oh, self.ow],
        }
    }

    fn call(&self, out_channels: usize, groups: usize, pass: ConvPass) -> ConvCall {
        ConvCall {
            pass,
            images: self.n,
            channels: self.c,
            size: [self.h, self.w],
            out_channels,
            groups,
            kernel: [self.kh, self.kw],
            stride: [self.sh, self.sw],
            padding: [self.ph, self.pw],
            dilation: [self.dh, self.dw],
            out: [self.oh, self.ow],
        }
    }
}

/// The per-group GEMMs of a convolution: `groups` products, each batched over the images.
pub(crate) struct ConvGemms {
    pub groups: usize,
    /// Output channels per group.
    pub og: usize,
    /// Rows of a group's slice of `cols`: `C/G * KH * KW`.
    pub kg: usize,
    /// Output positions.
    pub p: usize,
    /// Images.
    pub n: usize,
    /// Output channels.
    pub o: usize,
    /// Rows of one image's `cols`: `C * KH * KW`.
    pub k: usize,
}

impl ConvGemms {
    /// `y[n, g] (+)= W[g] cols[n, g]`.
    pub(crate) fn forward(&self, gi: usize, w: usize, cols: usize, y: usize) -> Gemm {
        Gemm {
            batch: self.n,
            m: self.og,
            n: self.p,
            k: self.kg,
            a: w + gi * self.og * self.kg,
            a_trans: false,
            a_batch: 0,
            b: cols + gi * self.kg * self.p,
            b_trans: false,
            b_batch: self.k * self.p,
            c: y + gi * self.og * self.p,
            c_batch: self.o * self.p,
            accumulate: false,
        }
    }

    /// `dW[g] += sum_n dy[n, g] cols[n, g]^T` (a shared output summed over the batch).
    pub(crate) fn weight_grad(&self, gi: usize, dy: usize, cols: usize, dw: usize) -> Gemm {
        Gemm {
            batch: self.n,
            m: self.og,
            n: self.kg,
            k: self.p,
            a: dy + gi * self.og * self.p,
            a_trans: false,
            a_batch: self.o * self.p,
            b: cols + gi * self.kg * self.p,
            b_trans: true,
            b_batch: self.k * self.p,
            c: dw + gi * self.og * self.kg,
            c_batch: 0,
            accumulate: true,
        }
    }

    /// `dcols[n, g] = W[g]^T dy[n, g]`.
    pub(crate) fn input_grad(&self, gi: usize, w: usize, dy: usize, dcols: usize) -> Gemm {
        Gemm {
            batch: self.n,
            m: self.kg,
            n: self.p,
            k: self.og,
            a: w + gi * self.og * self.kg,
            a_trans: true,
            a_batch: 0,
            b: dy + gi * self.og * self.p,
            b_trans: false,
            b_batch: self.o * self.p,
            c: dcols + gi * self.kg * self.p,
            c_batch: self.k * self.p,
            accumulate: false,
        }
    }
}

fn conv_gemms(g: &Geom, w: Shape) -> ConvGemms {
    let groups = g.c / w.dim(1);
    ConvGemms {
        groups,
        og: w.dim(0) / groups,
        kg: w.dim(1) * g.taps(),
        p: g.positions(),
        n: g.n,
        o: w.dim(0),
        k: g.c * g.taps(),
    }
}

/// The `(outer, n, inner)` view of pooling over `cols`: the window's taps are the reduced axis.
fn pool_axis(g: &Geom) -> Axis3 {
    Axis3 {
        outer: g.n * g.c,
        n: g.taps(),
        inner: g.positions(),
    }
}

pub(crate) mod tape_ops {
    use super::*;
    use crate::tape::{Op, Tape, Var};

    /// Ones of shape `dims`, but `f` at the last index along `axis` (fills, and a concat).
    fn last_scaled<B: Backend, const N: usize>(
        t: &mut Tape<B, N>,
        dims: [usize; 4],
        axis: usize,
        f: B::Elem,
    ) -> Result<Var> {
        let n = dims.get(axis).copied().unwrap_or(1);
        if n <= 1 {
            return t.full(&dims, f);
        }
        let mut head = dims;
        let mut tail = dims;
        if let (Some(h), Some(l)) = (head.get_mut(axis), tail.get_mut(axis)) {
            (*h, *l) = (n - 1, 1);
        }
        let ones = t.full(&head, B::Elem::ONE)?;
        let last = t.full(&tail, f)?;
        t.concat(ones, last, axis)
    }

    /// Which pooling: the maximum, the mean over the window, or the mean over the window's taps
    /// inside the input.
    #[derive(Clone, Copy)]
    enum Pooling {
        Max,
        Avg,
        AvgInside,
    }

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// 2-D convolution (cross-correlation, PyTorch's `F.conv2d`): `x` of shape
        /// `[N, C, H, W]`, `weight` of shape `[O, C / groups, KH, KW]`, optional `bias` of
        /// shape `[O]`; the result is `[N, O, OH, OW]`. `groups = C / weight.dim(1)`
        /// (depthwise when `groups == C`). See the module docs for the formulas.
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for ranks other than 4; [`Error::ShapeMismatch`] when the
        /// channels do not divide into groups or the bias does not fit;
        /// [`Error::InvalidArgument`] for a window larger than the padded input or geometry
        /// values out of range; and as [`Tape::unary`].
        pub fn conv2d(
            &mut self,
            x: Var,
            weight: Var,
            bias: Option<Var>,
            opt: ConvConfig,
        ) -> Result<Var> {
            let ws = weight.shape;
            if ws.rank() != 4 {
                return Err(Error::InvalidShape {
                    op: "conv2d weight",
                    shape: ws,
                });
            }
            let g = Geom::new(
                x.shape,
                [ws.dim(2), ws.dim(3)],
                opt.stride,
                opt.padding,
                opt.dilation,
                "conv2d",
            )?;
            let mismatch = Error::ShapeMismatch {
                op: "conv2d",
                lhs: x.shape,
                rhs: ws,
            };
            if !g.c.is_multiple_of(ws.dim(1)) || !ws.dim(0).is_multiple_of(g.c / ws.dim(1)) {
                return Err(mismatch);
            }
            if let Some(b) = bias {
                if b.shape.rank() != 1 || b.shape.dim(0) != ws.dim(0) {
                    return Err(Error::ShapeMismatch {
                        op: "conv2d bias",
                        lhs: ws,
                        rhs: b.shape,
                    });
                }
            }
            let geom = pack(
                [
                    opt.stride[0],
                    opt.stride[1],
                    opt.padding[0],
                    opt.padding[1],
                    opt.dilation[0],
                    opt.dilation[1],
                ],
                "conv stride, padding and dilation must be at most 31",
            )?;
            let shape = Shape::new(&[g.n, ws.dim(0), g.oh, g.ow])?;
            let (x_img, y_img) = (g.c * g.h * g.w, ws.dim(0) * g.positions());
            self.all_or_nothing(|t| {
                // The output first (recorded), then the scratch above it.
                let y = t.record(
                    Op::Conv { geom },
                    Self::bw_conv,
                    &[x, weight],
                    shape,
                    |_, _| Ok(()),
                )?;
                let per_pass = t.images_per_pass(&g)?;
                let cols = t.alloc(g.part(per_pass).cols_len()?)?;
                let groups = g.c / ws.dim(1);
                let pass = ConvPass::Forward {
                    x: x.offset as usize,
                    w: weight.offset as usize,
                    y: y.offset as usize,
                };
                let mut first = if t.backend.conv(&g.call(ws.dim(0), groups, pass))? {
                    g.n
                } else {
                    0
                };
                while first < g.n {
                    let pg = g.part(per_pass.min(g.n - first));
                    let gm = conv_gemms(&pg, ws);
                    let xo = x.offset as usize + first * x_img;
                    // The padding's zeros, written once: later passes only overwrite the
                    // image's positions.
                    if first == 0 {
                        im2col(&mut t.backend, &pg, xo, cols, B::Elem::ZERO)?;
                    } else {
                        copy_taps(&mut t.backend, &pg, xo, cols)?;
                    }
                    for gi in 0..gm.groups {
                        let yo = y.offset as usize + first * y_img;
                        t.backend
                            .gemm(&gm.forward(gi, weight.offset as usize, cols, yo))?;
                    }
                    first += pg.n;
                }
                t.release(cols);
                match bias {
                    Some(b) => {
                        let b = t.reshape(b, &[ws.dim(0), 1, 1])?;
                        t.add(y, b)
                    }
                    None => Ok(y),
                }
            })
        }

        /// 1-D convolution (PyTorch's `F.conv1d`): `x` of shape `[N, C, L]`, `weight` of shape
        /// `[O, C / groups, K]`, optional `bias` `[O]`; the result is `[N, O, OL]`. `stride`,
        /// `padding` and `dilation` are along the signal.
        ///
        /// # Errors
        /// As [`Tape::conv2d`].
        pub fn conv1d(
            &mut self,
            x: Var,
            weight: Var,
            bias: Option<Var>,
            stride: usize,
            padding: usize,
            dilation: usize,
        ) -> Result<Var> {
            let (xs, ws) = (x.shape, weight.shape);
            if xs.rank() != 3 || ws.rank() != 3 {
                return Err(Error::InvalidShape {
                    op: "conv1d",
                    shape: if xs.rank() != 3 { xs } else { ws },
                });
            }
            self.all_or_nothing(|t| {
                let x4 = t.reshape(x, &[xs.dim(0), xs.dim(1), 1, xs.dim(2)])?;
                let w4 = t.reshape(weight, &[ws.dim(0), ws.dim(1), 1, ws.dim(2)])?;
                let opt = ConvConfig {
                    stride: [1, stride],
                    padding: [0, padding],
                    dilation: [1, dilation],
                };
                let y = t.conv2d(x4, w4, bias, opt)?;
                let s = y.shape;
                t.reshape(y, &[s.dim(0), s.dim(1), s.dim(3)])
            })
        }

        fn pool2d(&mut self, x: Var, p: PoolConfig, max: bool) -> Result<Var> {
            let op = if max { "max_pool2d" } else { "avg_pool2d" };
            let g = Geom::pool(x.shape, p.kernel, p.stride, p.padding, p.ceil_mode, op)?;
            if p.padding[0] * 2 > p.kernel[0] || p.padding[1] * 2 > p.kernel[1] {
                return Err(Error::InvalidArgument {
                    what: "pooling padding must be at most half the window",
                });
            }
            let geom = pack(
                [
                    p.kernel[0],
                    p.kernel[1],
                    p.stride[0],
                    p.stride[1],
                    p.padding[0],
                    p.padding[1],
                ],
                "pooling window, stride and padding must be at most 31",
            )? | (u32::from(p.ceil_mode) << CEIL_BIT);
            let shape = Shape::new(&[g.n, g.c, g.oh, g.ow])?;
            let cols_len = g.cols_len()?;
            let (reduce, pad) = if max {
                (ReduceOp::Max, B::Elem::MIN)
            } else {
                (ReduceOp::Mean, B::Elem::ZERO)
            };
            self.all_or_nothing(|t| {
                let y = t.record(
                    Op::Pool { geom, max },
                    Self::bw_pool,
                    &[x],
                    shape,
                    |_, _| Ok(()),
                )?;
                // The columns are reserved even when the backend pools by itself: the arena's
                // plan does not depend on the backend.
                let cols = t.alloc(cols_len)?;
                let pass = PoolPass::Forward {
                    x: x.offset as usize,
                    y: y.offset as usize,
                };
                if !t.backend.pool(&g.pool_call(max, pass))? {
                    im2col(&mut t.backend, &g, x.offset as usize, cols, pad)?;
                    t.backend
                        .reduce(reduce, pool_axis(&g), cols, y.offset as usize)?;
                }
                t.release(cols);
                Ok(y)
            })
        }

        /// 2-D max pooling (PyTorch's `F.max_pool2d`, dilation 1): `[N, C, H, W]` to
        /// `[N, C, OH, OW]`; padding counts as the most negative value.
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for ranks other than 4; [`Error::InvalidArgument`] for a
        /// window larger than the padded input, padding over half the window, or values out of
        /// range; and as [`Tape::unary`].
        pub fn max_pool2d(&mut self, x: Var, p: PoolConfig) -> Result<Var> {
            self.pool2d(x, p, true)
        }

        /// 2-D average pooling (PyTorch's `F.avg_pool2d` with `count_include_pad=True`). In
        /// `ceil_mode`, where the last window overhangs the padded input, up to eight nodes
        /// more (a constant factor for that window, made from fills and concats, and
        /// products).
        ///
        /// # Errors
        /// As [`Tape::max_pool2d`].
        pub fn avg_pool2d(&mut self, x: Var, p: PoolConfig) -> Result<Var> {
            self.pooled(x, p, Pooling::Avg)
        }

        /// 2-D average pooling over the taps inside the input only (PyTorch's `F.avg_pool2d`
        /// with `count_include_pad=False`): each window's sum divided by its taps that are not
        /// padding. Without padding (and not in `ceil_mode`), [`Tape::avg_pool2d`]; else the
        /// pooling divided by the same pooling of a plane of ones `[1, 1, H, W]` (a constant,
        /// made without gradient and broadcast over images and channels): three nodes more,
        /// all or nothing.
        ///
        /// # Errors
        /// As [`Tape::max_pool2d`].
        pub fn avg_pool2d_exclude_pad(&mut self, x: Var, p: PoolConfig) -> Result<Var> {
            self.pooled(x, p, Pooling::AvgInside)
        }

        /// Pools `x` (`[N, C, H, W]`) as `kind` says.
        fn pooled(&mut self, x: Var, p: PoolConfig, kind: Pooling) -> Result<Var> {
            match kind {
                Pooling::Max => self.pool2d(x, p, true),
                Pooling::Avg if p.ceil_mode => self.avg_pool2d_ceil(x, p),
                Pooling::Avg => self.pool2d(x, p, false),
                Pooling::AvgInside if p.padding == [0, 0] && !p.ceil_mode => {
                    self.pool2d(x, p, false)
                }
                Pooling::AvgInside => {
                    let s = x.shape;
                    if s.rank() != 4 {
                        return Err(Error::InvalidShape {
                            op: "avg_pool2d",
                            shape: s,
                        });
                    }
                    let plane = [1, 1, s.dim(2), s.dim(3)];
                    self.all_or_nothing(|t| {
                        let y = t.pool2d(x, p, false)?;
                        // Each window's share of taps inside the input.
                        let share = t.no_grad(|t| {
                            let ones = t.full(&plane, B::Elem::ONE)?;
                            t.pool2d(ones, p, false)
                        })?;
                        t.div(y, share)
                    })
                }
            }
        }

        /// Average pooling in `ceil_mode`, counting padding: a last window that overhangs the
        /// padded input divides by the taps it covers there (PyTorch's `(hend - hstart) *
        /// (wend - wstart)`, `hend` at most `H + PH`), not by `KH * KW`: the pooling times
        /// `KH / covered` along the last output row and `KW / covered` along the last column
        /// (constants, made without gradient from fills).
        fn avg_pool2d_ceil(&mut self, x: Var, p: PoolConfig) -> Result<Var> {
            let g = Geom::pool(x.shape, p.kernel, p.stride, p.padding, true, "avg_pool2d")?;
            // Taps of the last window inside the padded input, along one axis.
            let covered = |o: usize, k: usize, s: usize, pad: usize, n: usize| {
                k.min((n + 2 * pad).saturating_sub((o - 1) * s))
            };
            let cy = covered(g.oh, g.kh, g.sh, g.ph, g.h);
            let cx = covered(g.ow, g.kw, g.sw, g.pw, g.w);
            if cy == g.kh && cx == g.kw {
                return self.pool2d(x, p, false);
            }
            let scale = |k: usize, c: usize| B::Elem::from_usize(k) / B::Elem::from_usize(c);
            let (fy, fx) = (scale(g.kh, cy), scale(g.kw, cx));
            self.all_or_nothing(|t| {
                let y = t.pool2d(x, p, false)?;
                let f = t.no_grad(|t| {
                    let rows = last_scaled(t, [1, 1, g.oh, 1], 2, fy)?;
                    let cols = last_scaled(t, [1, 1, 1, g.ow], 3, fx)?;
                    t.mul(rows, cols)
                })?;
                t.mul(y, f)
            })
        }

        fn pool1d(
            &mut self,
            x: Var,
            k: usize,
            stride: usize,
            padding: usize,
            kind: Pooling,
        ) -> Result<Var> {
            let xs = x.shape;
            if xs.rank() != 3 {
                return Err(Error::InvalidShape {
                    op: match kind {
                        Pooling::Max => "max_pool1d",
                        Pooling::Avg | Pooling::AvgInside => "avg_pool1d",
                    },
                    shape: xs,
                });
            }
            self.all_or_nothing(|t| {
                let x4 = t.reshape(x, &[xs.dim(0), xs.dim(1), 1, xs.dim(2)])?;
                let p = PoolConfig {
                    kernel: [1, k],
                    stride: [1, stride],
                    padding: [0, padding],
                    ceil_mode: false,
                };
                let y = t.pooled(x4, p, kind)?;
                let s = y.shape;
                t.reshape(y, &[s.dim(0), s.dim(1), s.dim(3)])
            })
        }

        /// 1-D max pooling over `[N, C, L]` (window `k`, then `stride`, `padding`).
        ///
        /// # Errors
        /// As [`Tape::max_pool2d`].
        pub fn max_pool1d(
            &mut self,
            x: Var,
            k: usize,
            stride: usize,
            padding: usize,
        ) -> Result<Var> {
            self.pool1d(x, k, stride, padding, Pooling::Max)
        }

        /// 1-D average pooling over `[N, C, L]`.
        ///
        /// # Errors
        /// As [`Tape::max_pool2d`].
        pub fn avg_pool1d(
            &mut self,
            x: Var,
            k: usize,
            stride: usize,
            padding: usize,
        ) -> Result<Var> {
            self.pool1d(x, k, stride, padding, Pooling::Avg)
        }

        /// 1-D average pooling over the taps inside the input only (PyTorch's
        /// `F.avg_pool1d` with `count_include_pad=False`); see [`Tape::avg_pool2d_exclude_pad`].
        ///
        /// # Errors
        /// As [`Tape::max_pool2d`].
        pub fn avg_pool1d_exclude_pad(
            &mut self,
            x: Var,
            k: usize,
            stride: usize,
            padding: usize,
        ) -> Result<Var> {
            self.pool1d(x, k, stride, padding, Pooling::AvgInside)
        }

        /// Global average pooling: the mean over every spatial position, `[N, C, ...]` (rank 3
        /// or 4) to `[N, C]` (PyTorch's `AdaptiveAvgPool2d(1)` followed by `flatten(1)`).
        ///
        /// # Errors
        /// [`Error::InvalidShape`] for ranks other than 3 and 4; and as [`Tape::unary`].
        pub fn global_avg_pool(&mut self, x: Var) -> Result<Var> {
            let s = x.shape;
            if s.rank() != 3 && s.rank() != 4 {
                return Err(Error::InvalidShape {
                    op: "global_avg_pool",
                    shape: s,
                });
            }
            let positions = s.numel() / (s.dim(0) * s.dim(1));
            self.all_or_nothing(|t| {
                let flat = t.reshape(x, &[s.dim(0), s.dim(1), positions])?;
                t.mean_axis(flat, 2)
            })
        }

        pub(crate) fn conv_backward(&mut self, geom: u32, x: u32, w: u32, dy: usize) -> Result<()> {
            let (xv, wv) = (self.node_view(x)?, self.node_view(w)?);
            let [sh, sw, ph, pw, dh, dw] = unpack(geom);
            let (ws, xs) = (wv.shape, xv.shape);
            let g = Geom::new(
                xs,
                [ws.dim(2), ws.dim(3)],
                [sh, sw],
                [ph, pw],
                [dh, dw],
                "conv2d",
            )?;
            let dwg = self.input_grad(w)?;
            let dxg = self.input_grad(x)?;
            let per_pass = self.images_per_pass(&g)?;
            let cols = self.alloc(g.part(per_pass).cols_len()?)?;
            let (x_img, y_img) = (g.c * g.h * g.w, ws.dim(0) * g.positions());
            // The weight's gradient over every pass first (the padding's zeros written once),
            // then the input's (its products overwrite the whole buffer).
            let groups = g.c / ws.dim(1);
            // The first image left to im2col: none when the backend ran the pass itself.
            let left = |be: &mut B, pass| -> Result<usize> {
                Ok(if be.conv(&g.call(ws.dim(0), groups, pass))? {
                    g.n
                } else {
                    0
                })
            };
            if let Some((_, dwo)) = dwg {
                let pass = ConvPass::WeightGrad {
                    x: xv.offset,
                    dy,
                    dw: dwo,
                };
                let mut first = left(&mut self.backend, pass)?;
                while first < g.n {
                    let pg = g.part(per_pass.min(g.n - first));
                    let gm = conv_gemms(&pg, ws);
                    let xo = xv.offset + first * x_img;
                    if first == 0 {
                        im2col(&mut self.backend, &pg, xo, cols, B::Elem::ZERO)?;
                    } else {
                        copy_taps(&mut self.backend, &pg, xo, cols)?;
                    }
                    for gi in 0..gm.groups {
                        let dyo = dy + first * y_img;
                        self.backend.gemm(&gm.weight_grad(gi, dyo, cols, dwo))?;
                    }
                    first += pg.n;
                }
            }
            if let Some((_, dxo)) = dxg {
                let pass = ConvPass::InputGrad {
                    w: wv.offset,
                    dy,
                    dx: dxo,
                };
                let mut first = left(&mut self.backend, pass)?;
                while first < g.n {
                    let pg = g.part(per_pass.min(g.n - first));
                    let gm = conv_gemms(&pg, ws);
                    for gi in 0..gm.groups {
                        let dyo = dy + first * y_img;
                        self.backend
                            .gemm(&gm.input_grad(gi, wv.offset, dyo, cols))?;
                    }
                    col2im(&mut self.backend, &pg, cols, dxo + first * x_img)?;
                    first += pg.n;
                }
            }
            self.release(cols);
            Ok(())
        }

        pub(crate) fn pool_backward(
            &mut self,
            geom: u32,
            max: bool,
            x: u32,
            y: usize,
            dy: usize,
        ) -> Result<()> {
            let xv = self.node_view(x)?;
            let [kh, kw, sh, sw, ph, pw] = unpack(geom);
            let ceil = geom >> CEIL_BIT & 1 == 1;
            let g = Geom::pool(xv.shape, [kh, kw], [sh, sw], [ph, pw], ceil, "pool2d")?;
            let Some((_, dxo)) = self.input_grad(x)? else {
                return Ok(());
            };
            let len = g.cols_len()?;
            let cols = self.alloc(len)?;
            let dcols = match self.alloc(len) {
                Ok(d) => d,
                Err(e) => {
                    self.release(cols);
                    return Err(e);
                }
            };
            let (reduce, pad) = if max {
                (ReduceOp::Max, B::Elem::MIN)
            } else {
                (ReduceOp::Mean, B::Elem::ZERO)
            };
            let pass = PoolPass::Backward {
                x: xv.offset,
                y,
                dy,
                dx: dxo,
            };
            if !self.backend.pool(&g.pool_call(max, pass))? {
                if max {
                    im2col(&mut self.backend, &g, xv.offset, cols, pad)?;
                }
                self.backend.fill(dcols, len, B::Elem::ZERO)?;
                self.backend
                    .reduce_backward(reduce, pool_axis(&g), cols, y, dy, dcols)?;
                col2im(&mut self.backend, &g, dcols, dxo)?;
            }
            self.release(cols);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges() {
        // len 5, stride 1, pad 1, tap offset 0: o - 1 in 0..5 for o in 0..5 -> o in 1..5.
        assert_eq!(valid(5, 1, 0, 1, 5), (1, 5));
        // tap offset 2: o + 1 in 0..5 -> o in 0..4.
        assert_eq!(valid(5, 1, 2, 1, 5), (0, 4));
        // stride 2, pad 0, offset 1, len 4, out 2: 2o + 1 < 4 -> o in 0..2.
        assert_eq!(valid(2, 2, 1, 0, 4), (0, 2));
        // A tap that only sees padding.
        assert_eq!(valid(1, 1, 0, 3, 1).0, valid(1, 1, 0, 3, 1).1);
    }

    #[test]
    fn packing_round_trips() {
        let v = [1, 2, 0, 31, 7, 3];
        assert_eq!(unpack(pack(v, "conv").unwrap()), v);
        assert!(pack([32, 1, 1, 1, 1, 1], "conv").is_err());
    }

    #[test]
    fn output_sizes_match_pytorch() {
        // PyTorch: Conv2d(k=3, s=1, p=1) keeps 8x8; k=3, s=2, p=0 on 7 gives 3; dilation 2, k=3
        // on 7 gives 3.
        assert_eq!(out_len(8, 3, 1, 1, 1), Some(8));
        assert_eq!(out_len(7, 3, 2, 0, 1), Some(3));
        assert_eq!(out_len(7, 3, 1, 0, 2), Some(3));
        assert_eq!(out_len(2, 3, 1, 0, 1), None);
    }
}
