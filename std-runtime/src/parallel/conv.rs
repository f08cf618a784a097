//! Direct convolutions for [`super::Parallel`]: 2-D convolutions (any window, stride,
//! padding, dilation and groups) in f32 on CPUs with AVX-512 or AVX2, computed from
//! zero-padded copies of the images, with no im2col buffer and no packed operands.
//!
//! With stride 1 and each channel plane of the input copied, zero-padded, into an `R x S`
//! plane (`R = OH + DH (KH - 1)`, `S = OW + DW (KW - 1)`), the input under tap `(i, j)` of output
//! `(oy, ox)` lies at flat index `(oy + i DH) S + ox + j DW`: the output at flat position
//! `p = oy S + ox` is a sum, over channels and taps, of a weight times the plane at `p` plus
//! one constant offset per tap. Computing every flat position (`ox < S`; the `S - OW` extra
//! columns of each row are thrown away) makes each step of the kernel a broadcast weight times
//! contiguous vectors: [`rows_tile`] holds 8 output rows x 48 positions in 24 AVX-512
//! accumulators and adds one channel-tap at a time.
//!
//! A stride `(s0, s1)` splits each padded channel into `s0 s1` *phase* planes ([`Planes`]),
//! plane `(a, b)` holding the padded positions `(u s0 + a, v s1 + b)`: the input under tap
//! `(i, j)` of output `(oy, ox)` is then at `(oy + i DH / s0, ox + j DW / s1)` of phase
//! `(i DH % s0, j DW % s1)`, again one constant offset per tap, with contiguous outputs.
//!
//! - **forward**: the planes are the image's, the rows the output channels, the weights `w`
//!   as they are (`[O, C/G * KH * KW]`).
//! - **input gradient**: for each phase `(a, b)` of the padded input, the positions it holds
//!   receive `w[o, c, i, j] dy[o, u - i DH / s0, v - j DW / s1]` from the taps of that phase
//!   only: a stride-1 convolution of `dy` (zero-padded) with those taps, rows the input
//!   channels, the phase's weights gathered and transposed; the results inside the image are
//!   added into `dx`. With stride 1, one phase and every tap (a full correlation with the
//!   window flipped).
//! - **weight gradient**: `dw[o, (c, i, j)] += sum_p x[c, p + off(i, j)] dy[o, p]` over every
//!   image and output position: with `dy` transposed to positions x channels, [`weights_tile`]
//!   broadcasts 6 input values per position into 4 vectors of 16 output channels (24
//!   accumulators), and adds its block into the `dw^T` of its split of the images (about four
//!   splits per thread); the splits' sums are added in order at the end.
//!
//! Kernels for AVX-512 (16 lanes, 32 registers: tiles of 8 x 48 and 6 x 64) and for AVX2 with
//! FMA (8 lanes, 16 registers: 4 x 24 and 6 x 16), the same code over [`Isa`].
//!
//! Results agree with the reference to rounding, with one difference once values are not
//! finite: the input gradient multiplies the zero padding around `dy` by every weight, so an
//! infinite weight makes NaN at the image's border where im2col (which never computes those
//! taps) leaves the infinity or a finite value. The scratch (padded planes, flat results,
//! gathered weights, per-split `dw^T`) is the backend's own, on the heap, not the arena's.
//!
//! Measured on the conv2d workload's layer (batch 64, 32 -> 64 channels, 3x3, 32x32) on one
//! core of the 2-core development machine (Xeon, AVX-512): 158 GFLOP/s for the forward's
//! tiles, 168 for the weight gradient's (vectors along the positions instead, summed across
//! lanes at the end, reached 60-77: `dy` streamed from L2); `mote bench conv2d` on 2 threads:
//! 30-32 ms per step, against 61-82 ms through im2col and the `gemm` crate's products; a
//! stride-2 layer (64 -> 128 channels, 32x32 -> 16x16; `examples/conv_kernels.rs`) 39-44 ms
//! against 80-102.

use mote::backend::split;
use mote::ops::conv::{ConvCall, ConvPass};
use mote::{Error, Result};

use super::gemm::MID;
use super::isa::{Avx2, Avx512, Isa};
use super::team;

/// Weight-gradient rows (channel-taps) of a [`weights_tile`].
const TAPS: usize = 6;

/// Output positions per [`weights_tile`] call: their input values and `dy` rows stay in L1
/// while every channel-tap block passes over them (128 measured best of 64..1024).
const CHUNK: usize = 128;

/// The kernels' tile sizes for an instruction set.
trait Tiles: Isa {
    /// Rows of a full [`rows_tile`] (3 vectors each): the accumulators, three loads and a
    /// broadcast fill the registers.
    const ROWS: usize;
    /// Vectors of output channels in a full [`weights_tile`] (6 rows each).
    const NV: usize;
    /// Positions of one [`rows_tile`].
    const TILE: usize = 3 * Self::LANES;
}

/// AVX-512 F: 32 registers of 16 lanes.
impl Tiles for Avx512 {
    const ROWS: usize = 8;
    const NV: usize = 4;
}

/// AVX2 and FMA: 16 registers of 8 lanes.
impl Tiles for Avx2 {
    const ROWS: usize = 4;
    const NV: usize = 2;
}

/// Runs `call` on `buf` (the arena) where the direct kernels take it: f32, a CPU
/// with AVX-512 F (unless `avx512` is false) or AVX2 and FMA; a weight gradient also needs at
/// least 8 output channels per group (its vectors run along them: fewer would waste most
/// lanes). `Ok(false)`, having done nothing, otherwise.
pub(super) fn run<T: 'static>(
    buf: &mut [T],
    call: &ConvCall,
    threads: usize,
    avx512: bool,
) -> Result<bool> {
    let per_group = call.out_channels / call.groups.max(1);
    let Some(buf) = super::as_f32_mut(buf) else {
        return Ok(false);
    };
    if matches!(call.pass, ConvPass::WeightGrad { .. }) && per_group < 8 {
        return Ok(false);
    }
    if consistent(call).is_none() {
        return Err(Error::InvalidArgument {
            what: "a convolution call whose geometry is inconsistent or overflows",
        });
    }
    if let Some(isa) = Avx512::detect().filter(|_| avx512) {
        pass(isa, buf, call, threads)?;
    } else if let Some(isa) = Avx2::detect() {
        pass(isa, buf, call, threads)?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Whether `c` is consistent, with every size the kernels derive from it computed without
/// overflow (the tape's calls always are; but `ConvCall` is public, and the kernels' reads are
/// only as safe as the offsets computed from it).
fn consistent(c: &ConvCall) -> Option<()> {
    // The geometry adds up and the tensors' sizes fit (the core's check) ...
    let [_, _, y] = c.lens().ok()?;
    let g = c.groups;
    // ... and so do the planes: per axis, a bound on their sides (the forward's
    // `out + span / stride` per phase, the input gradient's at most
    // `(padding + size + span) / stride + 1`).
    let mut side = [0; 2];
    for (d, side) in side.iter_mut().enumerate() {
        let span = c.dilation[d].checked_mul(c.kernel[d] - 1)?;
        let padded = c.size[d].checked_add(c.padding[d].checked_mul(2)?)?;
        *side = padded.checked_add(span)?.checked_add(c.stride[d])?;
    }
    let [oh, ow] = c.out;
    let taps = c.kernel[0].checked_mul(c.kernel[1])?;
    // The weight gradient's dw^T rows padded by a tile, channels by vectors.
    let k = (c.channels / g).checked_mul(taps)?.checked_add(TAPS)?;
    k.checked_mul(c.out_channels.checked_add(16 * g)?)?;
    // Every group's padded planes (with a tile's reads past the last) and flat results,
    // several times over.
    let planes = side[0].checked_mul(side[1])?.checked_add(1 << 10)?;
    planes
        .checked_mul(c.channels.max(c.out_channels))?
        .checked_mul(4)?;
    y.checked_mul(taps)?.checked_mul(c.channels / g)?;
    (oh * ow).checked_mul(c.out_channels.checked_add(16)?)?;
    Some(())
}

/// [`run`]'s pass with the instruction set `isa`.
fn pass<I: Tiles>(isa: I, buf: &mut [f32], c: &ConvCall, threads: usize) -> Result<()> {
    let [x_len, w_len, y_len] = c.lens()?;
    // Along an axis with one output the stride plays no part: 1 there, so that the phases
    // (`stride[0] x stride[1]`) never outnumber the padded input's positions.
    let mut call = *c;
    for (s, &o) in call.stride.iter_mut().zip(&c.out) {
        if o == 1 {
            *s = 1;
        }
    }
    let c = &call;
    let cg = c.channels / c.groups;
    let taps = c.kernel[0] * c.kernel[1];
    let macs = y_len.saturating_mul(cg * taps);
    let par = threads >= 2 && macs >= MID;
    let r = |o: usize, n: usize| o..o.saturating_add(n);
    match c.pass {
        ConvPass::Forward { x, w: wo, y } => {
            let (y, [x, w]) = split(buf, r(y, y_len), [r(x, x_len), r(wo, w_len)])?;
            Spatial::forward(c).run(isa, x, w, y, false, par, threads);
        }
        ConvPass::InputGrad { w: wo, dy, dx } => {
            let (dx, [dy, w]) = split(buf, r(dx, x_len), [r(dy, y_len), r(wo, w_len)])?;
            Spatial::input_grad(c, w).run(isa, dy, w, dx, true, par, threads);
        }
        ConvPass::WeightGrad { x, dy, dw } => {
            let (dw, [x, dy]) = split(buf, r(dw, w_len), [r(x, x_len), r(dy, y_len)])?;
            weight_grad(isa, c, x, dy, dw, par.then_some(threads));
        }
    }
    Ok(())
}

/// Zero-padded phase planes of one channel (see the module docs): `phases[0] x phases[1]`
/// planes of `dims` each, plane `(a, b)` holding
/// `src[u phases[0] + a - shift[0], v phases[1] + b - shift[1]]` at `(u, v)`, 0 outside `src`.
/// With phases `[1, 1]`, one plane: `src` shifted by `shift` into zeros.
#[derive(Clone, Debug)]
struct Planes {
    phases: [usize; 2],
    dims: [usize; 2],
    shift: [usize; 2],
    /// The phases some tap reads (the others are left as they are: only results thrown away
    /// read them).
    used: Vec<bool>,
}

impl Planes {
    /// The forward's (and the weight gradient's) planes of the input: one phase per stride
    /// offset, each as tall and wide as the output plus the window's span in its phase.
    fn of_input(c: &ConvCall) -> Planes {
        let [s0, s1] = c.stride;
        let q = |d: usize| c.dilation[d] * (c.kernel[d] - 1) / c.stride[d];
        let mut used = vec![false; s0 * s1];
        for i in 0..c.kernel[0] {
            for j in 0..c.kernel[1] {
                used[(i * c.dilation[0] % s0) * s1 + j * c.dilation[1] % s1] = true;
            }
        }
        Planes {
            phases: c.stride,
            dims: [c.out[0] + q(0), c.out[1] + q(1)],
            shift: c.padding,
            used,
        }
    }

    /// Each window tap's offset in a channel's input planes ([`Planes::of_input`]), in the
    /// weights' tap order.
    fn taps(&self, c: &ConvCall) -> Vec<usize> {
        let [dh, dw] = c.dilation;
        (0..c.kernel[0])
            .flat_map(|i| (0..c.kernel[1]).map(move |j| self.offset(i * dh, j * dw)))
            .collect()
    }

    fn plane(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Elements of one channel's planes.
    fn channel(&self) -> usize {
        self.phases[0] * self.phases[1] * self.plane()
    }

    /// Where padded position `(r, t)` lies in a channel's planes, relative to position
    /// `(u, v)` of the output the planes are read for: phase `(r % s0, t % s1)`, at
    /// `(r / s0, t / s1)` from it.
    fn offset(&self, r: usize, t: usize) -> usize {
        let [s0, s1] = self.phases;
        ((r % s0) * s1 + t % s1) * self.plane() + (r / s0) * self.dims[1] + t / s1
    }

    /// Fills one channel's planes `dst` from the channel `src` (`h x w`).
    fn fill(&self, src: &[f32], [h, w]: [usize; 2], dst: &mut [f32]) {
        let [s0, s1] = self.phases;
        let [rows, cols] = self.dims;
        for (ab, plane) in dst.chunks_exact_mut(rows * cols).enumerate() {
            if !self.used[ab] {
                continue;
            }
            let (a, b) = (ab / s1, ab % s1);
            let (lo, hi) = valid(cols, s1, b, self.shift[1], w);
            for (u, row) in plane.chunks_exact_mut(cols).enumerate() {
                let r = u * s0 + a;
                if r < self.shift[0] || r - self.shift[0] >= h || lo == hi {
                    zero(row);
                    continue;
                }
                let src_row = &src[(r - self.shift[0]) * w..][..w];
                let (left, rest) = row.split_at_mut(lo);
                let (mid, right) = rest.split_at_mut(hi - lo);
                zero(left);
                zero(right);
                let first = &src_row[lo * s1 + b - self.shift[1]..];
                if s1 == 1 {
                    for (d, v) in mid.iter_mut().zip(first) {
                        *d = *v;
                    }
                } else {
                    for (d, v) in mid.iter_mut().zip(first.iter().step_by(s1)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// Zeroes `v`: a padding border is a value or two, where `fill` (a `memset` call) costs more
/// than the stores; a fixed count of guarded stores stays inline.
#[inline(always)]
fn zero(v: &mut [f32]) {
    if v.len() > 4 {
        v.fill(0.0);
        return;
    }
    for i in 0..4 {
        if let Some(x) = v.get_mut(i) {
            *x = 0.0;
        }
    }
}

/// The indices `v` in `0..n` for which `v step + off - shift` lies in `0..len`: `lo..hi`.
fn valid(n: usize, step: usize, off: usize, shift: usize, len: usize) -> (usize, usize) {
    let lo = shift.saturating_sub(off).div_ceil(step).min(n);
    let hi = (len + shift).saturating_sub(off).div_ceil(step).min(n);
    (lo, hi.max(lo))
}

/// Per axis, for the input gradient's phase `a` of stride `s`: the first index `u` whose padded
/// position `u s + a` lies in the image (`p .. p + n`), and how many do.
fn phase_rows(a: usize, s: usize, p: usize, n: usize) -> (usize, usize) {
    let first = p.saturating_sub(a).div_ceil(s);
    let end = (p + n).saturating_sub(a).div_ceil(s);
    (first, end.saturating_sub(first))
}

/// `dst[q][o] = src[o][q]` for the `src.len() / n` rows of `n` of `src`, `dst` rows `lanes`
/// long; in blocks of 16 positions, so that the rows written stay in L1.
fn transpose(src: &[f32], n: usize, dst: &mut [f32], lanes: usize) {
    for q0 in (0..n).step_by(16) {
        let q1 = (q0 + 16).min(n);
        for (o, row) in src.chunks_exact(n).enumerate() {
            for (q, &v) in (q0..q1).zip(&row[q0..q1]) {
                dst[q * lanes + o] = v;
            }
        }
    }
}

/// One phase of a [`Spatial`] pass's results: the taps that reach it, their weights, and
/// where its results go.
struct Phase {
    /// Each tap's flat offset in a channel's planes, in the weights' order.
    offsets: Vec<usize>,
    /// Its own weights `[G * rows, inner * taps]` (the input gradient's), or `None` for the
    /// pass's (the forward's).
    w: Option<Vec<f32>>,
    /// Results computed, rows x columns.
    out: [usize; 2],
    /// Where result `(0, 0)` goes in the destination plane, and the step between results.
    to: [usize; 2],
    step: [usize; 2],
}

/// A convolution computed as rows x flat positions over padded planes (the forward or the
/// input gradient; see the module docs).
struct Spatial {
    images: usize,
    groups: usize,
    /// Channels of the source summed per group.
    inner: usize,
    /// Result rows (channels) per group.
    rows: usize,
    /// Source plane size.
    src: [usize; 2],
    planes: Planes,
    /// Destination plane size.
    dst: [usize; 2],
    phases: Vec<Phase>,
}

impl Spatial {
    /// `y = conv(x, w)`: the input's phase planes, one phase of results (every output).
    fn forward(c: &ConvCall) -> Spatial {
        let planes = Planes::of_input(c);
        let offsets = planes.taps(c);
        Spatial {
            images: c.images,
            groups: c.groups,
            inner: c.channels / c.groups,
            rows: c.out_channels / c.groups,
            src: c.size,
            planes,
            dst: c.out,
            phases: vec![Phase {
                offsets,
                w: None,
                out: c.out,
                to: [0, 0],
                step: [1, 1],
            }],
        }
    }

    /// `dx += conv_transpose(dy, w)`, one phase of results per stride offset `(a, b)` of the
    /// padded input: position `(u s0 + a, v s1 + b)` sums `w[o, c, i, j] dy[o, u - qi, v - qj]`
    /// over the taps with `i DH = qi s0 + a` and `j DW = qj s1 + b`, a stride-1 convolution of
    /// `dy` (zero-padded) with those taps; results outside the padding only.
    fn input_grad(c: &ConvCall, w: &[f32]) -> Spatial {
        let [s0, s1] = c.stride;
        let [kh, kw] = c.kernel;
        let [dh, dw] = c.dilation;
        let (cg, og) = (c.channels / c.groups, c.out_channels / c.groups);
        let taps = kh * kw;
        // Per phase: (a, b), first rows and columns, counts, taps.
        let mut phases = Vec::new();
        for a in 0..s0 {
            for b in 0..s1 {
                let (u0, un) = phase_rows(a, s0, c.padding[0], c.size[0]);
                let (v0, vn) = phase_rows(b, s1, c.padding[1], c.size[1]);
                let reach: Vec<(usize, usize)> = (0..kh)
                    .flat_map(|i| (0..kw).map(move |j| (i, j)))
                    .filter(|&(i, j)| (i * dh) % s0 == a && (j * dw) % s1 == b)
                    .collect();
                if un > 0 && vn > 0 && !reach.is_empty() {
                    phases.push(([a, b], [u0, v0], [un, vn], reach));
                }
            }
        }
        // dy sits `z` down and right in its plane, so that every tap's offset is >= 0.
        let q = |i: usize, j: usize| [i * dh / s0, j * dw / s1];
        let mut z = [0usize; 2];
        let mut dims = [0usize; 2];
        for (_, first, _, reach) in &phases {
            for &(i, j) in reach {
                for d in 0..2 {
                    z[d] = z[d].max(q(i, j)[d].saturating_sub(first[d]));
                }
            }
        }
        for (_, first, n, reach) in &phases {
            for &(i, j) in reach {
                for d in 0..2 {
                    dims[d] = dims[d].max(n[d] + first[d] + z[d] - q(i, j)[d]);
                }
            }
        }
        let planes = Planes {
            phases: [1, 1],
            dims,
            shift: z,
            used: vec![true],
        };
        let phases = phases
            .into_iter()
            .map(|([a, b], first, n, reach)| {
                let offsets = reach
                    .iter()
                    .map(|&(i, j)| {
                        let [qi, qj] = q(i, j);
                        (first[0] + z[0] - qi) * dims[1] + first[1] + z[1] - qj
                    })
                    .collect();
                // w'[g cg + ch][o * taps' + t] = w[g og + o][ch][reach[t]].
                let t = reach.len();
                let mut wp = vec![0f32; c.channels * og * t];
                for g in 0..c.groups {
                    for ch in 0..cg {
                        for o in 0..og {
                            for (tt, &(i, j)) in reach.iter().enumerate() {
                                wp[((g * cg + ch) * og + o) * t + tt] =
                                    w[((g * og + o) * cg + ch) * taps + i * kw + j];
                            }
                        }
                    }
                }
                Phase {
                    offsets,
                    w: Some(wp),
                    out: n,
                    to: [
                        first[0] * s0 + a - c.padding[0],
                        first[1] * s1 + b - c.padding[1],
                    ],
                    step: [s0, s1],
                }
            })
            .collect();
        Spatial {
            images: c.images,
            groups: c.groups,
            inner: og,
            rows: cg,
            src: c.out,
            planes,
            dst: c.size,
            phases,
        }
    }

    /// Flat positions computed per row of `phase`, rounded up to whole tiles of `tile`.
    fn stride(&self, phase: &Phase, tile: usize) -> usize {
        (phase.out[0] * self.planes.dims[1]).next_multiple_of(tile)
    }

    /// Elements of a group's padded planes, with room for every phase's last tile's reads
    /// past the last channel.
    fn planes_len(&self, tile: usize) -> usize {
        let channel = self.planes.channel();
        let reach = self.phases.iter().fold(channel, |m, p| {
            let last = p.offsets.iter().copied().max().unwrap_or(0);
            m.max(last + self.stride(p, tile))
        });
        (self.inner - 1) * channel + reach
    }

    /// `dst (+)= conv(src, w)` for every image: `src` `[N, G * inner, src]`, `w`
    /// `[G * rows, inner * taps]` (unless the phases have their own), `dst`
    /// `[N, G * rows, dst]`.
    #[allow(clippy::too_many_arguments)]
    fn run<I: Tiles>(
        &self,
        isa: I,
        src: &[f32],
        w: &[f32],
        dst: &mut [f32],
        accumulate: bool,
        par: bool,
        threads: usize,
    ) {
        if self.phases.is_empty() {
            // An input gradient where every output saw only padding: nothing to add.
            return;
        }
        let out = self.dst[0] * self.dst[1];
        let src_img = self.groups * self.inner * self.src[0] * self.src[1];
        // Tasks: (image, group, block of rows); enough of them to keep the threads busy when
        // images x groups are few.
        let blocks = if par {
            (4 * threads)
                .div_ceil(self.images * self.groups)
                .clamp(1, self.rows.div_ceil(I::ROWS))
        } else {
            1
        };
        // At most about 4 MB of flat results per task.
        let widest = self.phases.iter().map(|p| self.stride(p, I::TILE)).max();
        let cap = ((1 << 20) / widest.unwrap_or(1).max(1)).max(I::ROWS) / I::ROWS * I::ROWS;
        let per = self
            .rows
            .div_ceil(blocks)
            .next_multiple_of(I::ROWS)
            .min(cap)
            .min(self.rows);
        let mut tasks = Vec::new();
        for (i, img) in dst
            .chunks_exact_mut(self.groups * self.rows * out)
            .enumerate()
        {
            for (g, grp) in img.chunks_exact_mut(self.rows * out).enumerate() {
                for (b, part) in grp.chunks_mut(per * out).enumerate() {
                    tasks.push((i, g, b * per, part));
                }
            }
        }
        let scratch = || (vec![0f32; self.planes_len(I::TILE)], Vec::new());
        let one = |(planes, acc): &mut (Vec<f32>, Vec<f32>), (i, g, r0, part): Task| {
            let plane = self.src[0] * self.src[1];
            let first = i * src_img + g * self.inner * plane;
            let channel = self.planes.channel();
            for c in 0..self.inner {
                let s = &src[first + c * plane..first + (c + 1) * plane];
                let d = &mut planes[c * channel..(c + 1) * channel];
                self.planes.fill(s, self.src, d);
            }
            let rows = part.len() / out;
            for phase in &self.phases {
                let k = self.inner * phase.offsets.len();
                let w = phase.w.as_deref().unwrap_or(w);
                let wr = &w[(g * self.rows + r0) * k..(g * self.rows + r0 + rows) * k];
                self.block(isa, phase, planes, wr, rows, acc, part, accumulate);
            }
        };
        if par {
            // About four groups of tasks per thread, each with its own scratch.
            let min = tasks.len().div_ceil(4 * threads).max(1);
            let mut groups = Vec::new();
            let mut rest = tasks.into_iter();
            loop {
                let group: Vec<Task> = rest.by_ref().take(min).collect();
                if group.is_empty() {
                    break;
                }
                groups.push(group);
            }
            team::for_each(groups, |group| {
                let mut s = scratch();
                for t in group {
                    one(&mut s, t);
                }
            });
        } else {
            let mut s = scratch();
            for t in tasks {
                one(&mut s, t);
            }
        }
    }

    /// One task's phase: `rows` result rows from the padded planes and the rows' weights `w`,
    /// through the flat scratch `acc`, into `part` (`rows` destination planes).
    #[allow(clippy::too_many_arguments)]
    fn block<I: Tiles>(
        &self,
        isa: I,
        phase: &Phase,
        planes: &[f32],
        w: &[f32],
        rows: usize,
        acc: &mut Vec<f32>,
        part: &mut [f32],
        accumulate: bool,
    ) {
        let stride = self.stride(phase, I::TILE);
        let full = rows.next_multiple_of(I::ROWS);
        if acc.len() < full * stride {
            acc.resize(full * stride, 0.0);
        }
        let k = self.inner * phase.offsets.len();
        // A last block of 3, or of 5-7 rows on AVX-512, is computed as 4 or 8 (the extra rows'
        // weights 0, their sums never read).
        let padded;
        let w = if w.len() >= full * k {
            w
        } else {
            let mut p = vec![0f32; full * k];
            p[..w.len()].copy_from_slice(w);
            padded = p;
            &padded[..]
        };
        let channel = self.planes.channel();
        let offs = &phase.offsets;
        isa.enable(|| {
            for p0 in (0..stride).step_by(I::TILE) {
                let mut r = 0;
                while r < rows {
                    let n = (rows - r).min(I::ROWS);
                    let (wr, a) = (&w[r * k..], &mut acc[r * stride..]);
                    // SAFETY: inside `enable`; `planes` holds every channel with room for the
                    // tile's reads (`planes_len`); `wr` holds `n` rounded up to 4 or 8 rows
                    // (`full`, padded above), `a` as many rows of the flat scratch.
                    unsafe {
                        match n {
                            1 => rows_tile::<I, 1>(planes, channel, offs, wr, k, p0, a, stride),
                            2 => rows_tile::<I, 2>(planes, channel, offs, wr, k, p0, a, stride),
                            3 | 4 => rows_tile::<I, 4>(planes, channel, offs, wr, k, p0, a, stride),
                            _ => rows_tile::<I, 8>(planes, channel, offs, wr, k, p0, a, stride),
                        }
                    }
                    r += n;
                }
            }
        });
        // Results (u, v) at flat u * width + v go to (to + u step) of the destination plane.
        let width = self.planes.dims[1];
        let [rows_out, cols] = phase.out;
        let [s0, s1] = phase.step;
        let dst_w = self.dst[1];
        for (dst, flat) in part
            .chunks_exact_mut(self.dst[0] * dst_w)
            .zip(acc.chunks(stride))
        {
            for u in 0..rows_out {
                let f = &flat[u * width..u * width + cols];
                let start = (phase.to[0] + u * s0) * dst_w + phase.to[1];
                match (accumulate, s1) {
                    (false, 1) => {
                        for (d, f) in dst[start..start + cols].iter_mut().zip(f) {
                            *d = *f;
                        }
                    }
                    (true, 1) => {
                        for (d, f) in dst[start..start + cols].iter_mut().zip(f) {
                            *d += f;
                        }
                    }
                    (false, _) => {
                        for (d, f) in dst[start..].iter_mut().step_by(s1).zip(f) {
                            *d = *f;
                        }
                    }
                    (true, _) => {
                        for (d, f) in dst[start..].iter_mut().step_by(s1).zip(f) {
                            *d += f;
                        }
                    }
                }
            }
        }
    }
}

type Task<'a> = (usize, usize, usize, &'a mut [f32]);

/// `acc[r][p0 .. p0 + TILE] = sum over planes c and taps t of w[r][c * taps + t] *
/// planes[c * plane + offsets[t] + p0 ..]` for `r < MR`.
///
/// # Safety
/// Only inside [`Isa::enable`]; `planes` holds `(c + 1) * plane` reads past every tap's
/// offset plus `p0 + TILE` for each of the `k / offsets.len()` planes (see
/// [`Spatial::planes_len`]); `w` holds `MR` rows of `k`; `acc` holds
/// `(MR - 1) * stride + p0 + TILE` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_tile<I: Tiles, const MR: usize>(
    planes: &[f32],
    plane: usize,
    offsets: &[usize],
    w: &[f32],
    k: usize,
    p0: usize,
    acc: &mut [f32],
    stride: usize,
) {
    let taps = offsets.len();
    let inner = k / taps;
    let l = I::LANES;
    // The contract, checked in release builds too (a few compares a tile): the unsafe reads
    // and writes below rest on it.
    let reach = offsets.iter().max().copied().unwrap_or(0);
    assert!(w.len() >= MR.saturating_mul(k));
    assert!(acc.len() >= ((MR - 1) * stride).saturating_add(p0 + I::TILE));
    assert!(
        planes.len()
            >= (inner.saturating_sub(1))
                .saturating_mul(plane)
                .saturating_add(reach)
                .saturating_add(p0 + I::TILE)
    );
    // SAFETY: inside `enable`, reads and writes inside the slices (the contract).
    unsafe {
        let mut sum = [[I::zero(); 3]; MR];
        let (xp, wp) = (planes.as_ptr(), w.as_ptr());
        for c in 0..inner {
            for (t, &off) in offsets.iter().enumerate() {
                let x = xp.add(c * plane + off + p0);
                let v = [I::load(x), I::load(x.add(l)), I::load(x.add(2 * l))];
                for (r, s) in sum.iter_mut().enumerate() {
                    let b = I::splat(*wp.add(r * k + c * taps + t));
                    for (s, v) in s.iter_mut().zip(v) {
                        *s = I::fma(b, v, *s);
                    }
                }
            }
        }
        let ap = acc.as_mut_ptr();
        for (r, s) in sum.iter().enumerate() {
            for (q, s) in s.iter().enumerate() {
                I::store(ap.add(r * stride + p0 + l * q), *s);
            }
        }
    }
}

/// The weight gradient `dw += sum over images and positions of dy x` (see the module docs).
/// `threads`: `None` to run on the calling thread.
fn weight_grad<I: Tiles>(
    isa: I,
    c: &ConvCall,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    threads: Option<usize>,
) {
    let (cg, og) = (c.channels / c.groups, c.out_channels / c.groups);
    let [kh, kw] = c.kernel;
    let [oh, ow] = c.out;
    let planes_of = Planes::of_input(c);
    let taps = kh * kw;
    let k = cg * taps;
    // Output channels padded to whole vectors; channel-taps to whole tiles.
    let lanes = og.next_multiple_of(I::LANES);
    let kt = k.next_multiple_of(TAPS);
    let offsets = planes_of.taps(c);
    let width = planes_of.dims[1];
    let positions: Vec<usize> = (0..oh)
        .flat_map(|y| (0..ow).map(move |x| y * width + x))
        .collect();
    let channel = planes_of.channel();
    let [h, w] = c.size;
    let (x_img, y_img) = (c.channels * h * w, c.out_channels * oh * ow);
    // Per split of the images: dw^T `[G, kt, lanes]`, the padded planes of one group and dy^T.
    let fresh = || {
        (
            vec![0f32; c.groups * kt * lanes],
            vec![0f32; cg * channel],
            vec![0f32; oh * ow * lanes],
        )
    };
    let one = |mut st: (Vec<f32>, Vec<f32>, Vec<f32>), i: usize| {
        let (acc, planes, dyt) = &mut st;
        for g in 0..c.groups {
            let xs = &x[i * x_img + g * cg * h * w..];
            for ch in 0..cg {
                let d = &mut planes[ch * channel..(ch + 1) * channel];
                planes_of.fill(&xs[ch * h * w..(ch + 1) * h * w], c.size, d);
            }
            let ys = &dy[i * y_img + g * og * oh * ow..];
            transpose(&ys[..og * oh * ow], oh * ow, dyt, lanes);
            let acc = &mut acc[g * kt * lanes..(g + 1) * kt * lanes];
            let block = I::NV * I::LANES;
            isa.enable(|| {
                for (chunk, pos) in positions.chunks(CHUNK).enumerate() {
                    let dyt = &dyt[chunk * CHUNK * lanes..];
                    for r0 in (0..kt).step_by(TAPS) {
                        // The planes' offsets of the tile's channel-taps (padding rows repeat the
                        // last real one; their sums land in rows past `k`, never read).
                        let xo: [usize; TAPS] = std::array::from_fn(|j| {
                            let kk = (r0 + j).min(k - 1);
                            (kk / taps) * channel + offsets[kk % taps]
                        });
                        for l0 in (0..lanes).step_by(block) {
                            let nv = (lanes - l0).min(block) / I::LANES;
                            let a = &mut acc[r0 * lanes + l0..];
                            let d = &dyt[l0..];
                            // SAFETY: inside `enable`; every position's reads lie inside the
                            // padded planes (a position plus a tap offset is inside its plane),
                            // `d` holds `pos.len()` rows of `lanes` from column `l0` on, `a` TAPS
                            // rows of `lanes` from column `l0` on (`nv` vectors of each fit).
                            unsafe {
                                match nv {
                                    1 => weights_tile::<I, 1>(planes, &xo, pos, d, lanes, a),
                                    2 => weights_tile::<I, 2>(planes, &xo, pos, d, lanes, a),
                                    3 => weights_tile::<I, 3>(planes, &xo, pos, d, lanes, a),
                                    _ => weights_tile::<I, 4>(planes, &xo, pos, d, lanes, a),
                                }
                            }
                        }
                    }
                }
            });
        }
        st
    };
    let total = if let Some(threads) = threads {
        // Few splits (each a fresh dw^T and scratch), but more than threads, so that a thread
        // slowed down by another process is helped out; their sums added in order.
        let per = c.images.div_ceil(4 * threads).max(1);
        let splits = (0..c.images)
            .step_by(per)
            .map(|s| s..(s + per).min(c.images));
        team::map(splits, |images| images.fold(fresh(), one).0)
            .into_iter()
            .reduce(|mut a, b| {
                for (a, b) in a.iter_mut().zip(&b) {
                    *a += b;
                }
                a
            })
    } else {
        Some((0..c.images).fold(fresh(), one).0)
    };
    let Some(total) = total else { return };
    // dw[g * og + o][kk] += total[g][kk][o].
    for g in 0..c.groups {
        for o in 0..og {
            let row = &mut dw[(g * og + o) * k..(g * og + o + 1) * k];
            for (kk, d) in row.iter_mut().enumerate() {
                *d += total[(g * kt + kk) * lanes + o];
            }
        }
    }
}

/// `acc[r][v] += sum over positions q of planes[xo[r] + pos[q]] * dyt[q][v]` for `r < 6`,
/// vectors `v < NV`.
///
/// # Safety
/// Only inside [`Isa::enable`]; `planes` holds every `xo[r] + pos[q]`; `dyt` holds
/// `(pos.len() - 1) * lanes + NV * LANES` elements, `acc` `5 * lanes + NV * LANES`.
#[inline(always)]
unsafe fn weights_tile<I: Tiles, const NV: usize>(
    planes: &[f32],
    xo: &[usize; TAPS],
    pos: &[usize],
    dyt: &[f32],
    lanes: usize,
    acc: &mut [f32],
) {
    let l = I::LANES;
    // The contract, checked in release builds too: the unsafe reads and writes rest on it.
    assert!(
        pos.is_empty() || dyt.len() >= (pos.len() - 1).saturating_mul(lanes).saturating_add(l * NV)
    );
    assert!(acc.len() >= (TAPS - 1).saturating_mul(lanes).saturating_add(l * NV));
    // SAFETY: inside `enable`, reads and writes inside the slices (the contract).
    unsafe {
        let mut sum = [[I::zero(); NV]; TAPS];
        let (xp, dp) = (planes.as_ptr(), dyt.as_ptr());
        for (q, &p) in pos.iter().enumerate() {
            let row = dp.add(q * lanes);
            let d: [I::V; NV] = std::array::from_fn(|v| I::load(row.add(l * v)));
            for (s, &o) in sum.iter_mut().zip(xo) {
                let b = I::splat(*xp.add(o + p));
                for (s, d) in s.iter_mut().zip(d) {
                    *s = I::fma(b, d, *s);
                }
            }
        }
        let ap = acc.as_mut_ptr();
        for (r, s) in sum.iter().enumerate() {
            for (v, s) in s.iter().enumerate() {
                let a = ap.add(r * lanes + l * v);
                I::store(a, I::add(I::load(a), *s));
            }
        }
    }
}
