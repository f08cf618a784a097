//! Direct convolutions for [`super::Parallel`]: 2-D convolutions with stride 1 (any window,
//! padding, dilation and groups) in f32 on CPUs with AVX-512, computed from zero-padded copies
//! of the images, with no im2col buffer and no packed operands.
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
//! - **forward**: the planes are the image's, the rows the output channels, the weights `w`
//!   as they are (`[O, C/G * KH * KW]`).
//! - **input gradient**: a convolution of `dy`, its planes placed so that output `(iy, ix)`
//!   reads `dy[iy + PH - i DH, ix + PW - j DW]` under the flipped tap, with rows the input
//!   channels and the weights flipped and transposed; the result is added into `dx`.
//! - **weight gradient**: `dw[o, (c, i, j)] += sum_p x[c, p + off(i, j)] dy[o, p]` over every
//!   image and output position: with `dy` transposed to positions x channels, [`weights_tile`]
//!   broadcasts 6 input values per position into 4 vectors of 16 output channels (24
//!   accumulators), and adds its block into a per-thread `dw^T`; the threads' blocks are summed
//!   at the end.
//!
//! Measured on the conv2d workload's layer (batch 64, 32 -> 64 channels, 3x3, 32x32) on one
//! core of the 2-core development machine (Xeon, AVX-512): 158 GFLOP/s for the forward's
//! tiles, 168 for the weight gradient's (vectors along the positions instead, summed across
//! lanes at the end, reached 60-77: `dy` streamed from L2); `mote bench conv2d` on 2 threads: 31.5-32 ms per step, against 61-82 ms through
//! im2col and the `gemm` crate's products.

use std::any::TypeId;
use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use mote::backend::split;
use mote::ops::conv::{ConvCall, ConvPass};
use mote::Result;
use rayon::prelude::*;

use super::gemm::MID;

/// Positions of one [`rows_tile`]: 3 vectors of 16.
const TILE: usize = 48;

/// Output rows of a full [`rows_tile`].
const ROWS: usize = 8;

/// Weight-gradient rows (channel-taps) of a [`weights_tile`].
const TAPS: usize = 6;

/// Output positions per [`weights_tile`] call: their input values and `dy` rows stay in L1
/// while every channel-tap block passes over them (128 measured best of 64..1024).
const CHUNK: usize = 128;

/// Output channels of one [`weights_tile`] call: 4 vectors.
const LANES: usize = 64;

/// Whether `call` runs here: f32, stride 1, on a CPU with AVX-512 F; a weight gradient also
/// needs at least 8 output channels per group (its vectors run along them: fewer would waste
/// most lanes, and the im2col path is as good).
fn applies<T: 'static>(call: &ConvCall) -> bool {
    let per_group = call.out_channels / call.groups.max(1);
    TypeId::of::<T>() == TypeId::of::<f32>()
        && call.stride == [1, 1]
        && !(matches!(call.pass, ConvPass::WeightGrad { .. }) && per_group < 8)
        && std::is_x86_feature_detected!("avx512f")
}

/// Runs `call` on `buf` (the arena) if it [`applies`]; `Ok(false)` otherwise.
pub(super) fn run<T: 'static>(buf: &mut [T], call: &ConvCall, threads: usize) -> Result<bool> {
    if !applies::<T>(call) {
        return Ok(false);
    }
    // SAFETY: `T` is f32 (checked by `applies`): same size, alignment and validity.
    let buf: &mut [f32] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), buf.len()) };
    let c = call;
    let [h, w] = c.size;
    let [oh, ow] = c.out;
    let (cg, og) = (c.channels / c.groups, c.out_channels / c.groups);
    let taps = c.kernel[0] * c.kernel[1];
    let (x_len, y_len) = (
        c.images * c.channels * h * w,
        c.images * c.out_channels * oh * ow,
    );
    let w_len = c.out_channels * cg * taps;
    let macs = y_len.saturating_mul(cg * taps);
    let par = threads >= 2 && macs >= MID;
    let r = |o: usize, n: usize| o..o.saturating_add(n);
    match c.pass {
        ConvPass::Forward { x, w: wo, y } => {
            let (y, [x, w]) = split(buf, r(y, y_len), [r(x, x_len), r(wo, w_len)])?;
            let s = Spatial::new(c, false);
            s.run(x, w, y, false, par, threads);
        }
        ConvPass::InputGrad { w: wo, dy, dx } => {
            let (dx, [dy, w]) = split(buf, r(dx, x_len), [r(dy, y_len), r(wo, w_len)])?;
            let s = Spatial::new(c, true);
            let w = flip(w, c.groups, og, cg, taps);
            s.run(dy, &w, dx, true, par, threads);
        }
        ConvPass::WeightGrad { x, dy, dw } => {
            let (dw, [x, dy]) = split(buf, r(dw, w_len), [r(x, x_len), r(dy, y_len)])?;
            weight_grad(c, x, dy, dw, par);
        }
    }
    Ok(true)
}

/// `w` (`[G * og, cg, taps]`) flipped along its taps and transposed per group:
/// `[G * cg, og, taps]`, the weights of the input gradient's convolution.
fn flip(w: &[f32], groups: usize, og: usize, cg: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for g in 0..groups {
        for o in 0..og {
            for c in 0..cg {
                let src = ((g * og + o) * cg + c) * taps;
                let dst = ((g * cg + c) * og + o) * taps;
                for t in 0..taps {
                    out[dst + t] = w[src + taps - 1 - t];
                }
            }
        }
    }
    out
}

/// `dst[r][s] = src[r - a][s - b]` over an `R x S` plane, 0 outside the `h x w` source.
fn place(src: &[f32], [h, w]: [usize; 2], dst: &mut [f32], s: usize, [a, b]: [isize; 2]) {
    // Destination columns b .. b + w, clipped to 0 .. s.
    let lo = b.clamp(0, s as isize) as usize;
    let hi = (b + w as isize).clamp(lo as isize, s as isize) as usize;
    for (r, row) in dst.chunks_exact_mut(s).enumerate() {
        let sr = r as isize - a;
        if sr < 0 || sr >= h as isize || lo == hi {
            row.fill(0.0);
            continue;
        }
        let from = sr as usize * w + (lo as isize - b) as usize;
        let (left, rest) = row.split_at_mut(lo);
        let (mid, right) = rest.split_at_mut(hi - lo);
        left.fill(0.0);
        for (d, v) in mid.iter_mut().zip(&src[from..from + hi - lo]) {
            *d = *v;
        }
        right.fill(0.0);
    }
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

/// A convolution computed as rows x flat positions (the forward or the input gradient; see
/// the module docs).
struct Spatial {
    images: usize,
    groups: usize,
    /// Planes summed per group (the source's channels in a group).
    inner: usize,
    /// Result rows per group.
    rows: usize,
    /// Source plane size.
    src: [usize; 2],
    /// Where the source lies in the padded plane.
    shift: [isize; 2],
    /// Padded plane `[R, S]`.
    plane: [usize; 2],
    /// Result plane `[OH, OW]`.
    out: [usize; 2],
    /// Flat offset of each tap, in the weights' tap order.
    offsets: Vec<usize>,
}

impl Spatial {
    fn new(c: &ConvCall, input_grad: bool) -> Spatial {
        let [kh, kw] = c.kernel;
        let [dh, dw] = c.dilation;
        let (cg, og) = (c.channels / c.groups, c.out_channels / c.groups);
        let span = [dh * (kh - 1), dw * (kw - 1)];
        let (inner, rows, src, shift, out) = if input_grad {
            let shift = [
                span[0] as isize - c.padding[0] as isize,
                span[1] as isize - c.padding[1] as isize,
            ];
            (og, cg, c.out, shift, c.size)
        } else {
            let shift = [c.padding[0] as isize, c.padding[1] as isize];
            (cg, og, c.size, shift, c.out)
        };
        let plane = [out[0] + span[0], out[1] + span[1]];
        let offsets = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| i * dh * plane[1] + j * dw))
            .collect();
        Spatial {
            images: c.images,
            groups: c.groups,
            inner,
            rows,
            src,
            shift,
            plane,
            out,
            offsets,
        }
    }

    /// Flat positions computed per row, rounded up to whole tiles.
    fn stride(&self) -> usize {
        (self.out[0] * self.plane[1]).next_multiple_of(TILE)
    }

    /// Elements of a group's padded planes, with room for the last tile's reads past the last
    /// plane.
    fn planes_len(&self) -> usize {
        let plane = self.plane[0] * self.plane[1];
        let last = self.offsets.last().copied().unwrap_or(0) + self.stride();
        (self.inner - 1) * plane + last.max(plane)
    }

    /// `dst (+)= conv(src, w)` for every image: `src` `[N, G * inner, src]`, `w`
    /// `[G * rows, inner * taps]`, `dst` `[N, G * rows, out]`.
    fn run(
        &self,
        src: &[f32],
        w: &[f32],
        dst: &mut [f32],
        accumulate: bool,
        par: bool,
        threads: usize,
    ) {
        let out = self.out[0] * self.out[1];
        let src_img = self.groups * self.inner * self.src[0] * self.src[1];
        // Tasks: (image, group, block of rows); enough of them to keep the threads busy when
        // images x groups are few.
        let blocks = if par {
            (4 * threads)
                .div_ceil(self.images * self.groups)
                .clamp(1, self.rows.div_ceil(ROWS))
        } else {
            1
        };
        let per = self
            .rows
            .div_ceil(blocks)
            .next_multiple_of(ROWS)
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
        let scratch = || (vec![0f32; self.planes_len()], Vec::new());
        let one = |(planes, acc): &mut (Vec<f32>, Vec<f32>), (i, g, r0, part): Task| {
            let plane = self.src[0] * self.src[1];
            let first = i * src_img + g * self.inner * plane;
            let padded = self.plane[0] * self.plane[1];
            for c in 0..self.inner {
                let s = &src[first + c * plane..first + (c + 1) * plane];
                let d = &mut planes[c * padded..(c + 1) * padded];
                place(s, self.src, d, self.plane[1], self.shift);
            }
            let k = self.inner * self.offsets.len();
            let rows = part.len() / out;
            let wr = &w[(g * self.rows + r0) * k..(g * self.rows + r0 + rows) * k];
            self.block(planes, wr, rows, acc, part, accumulate);
        };
        if par {
            let min = tasks.len().div_ceil(4 * threads);
            tasks
                .into_par_iter()
                .with_min_len(min)
                .for_each_init(scratch, one);
        } else {
            let mut s = scratch();
            for t in tasks {
                one(&mut s, t);
            }
        }
    }

    /// One task: `rows` result rows from the padded planes and the rows' weights `w`, through
    /// the flat scratch `acc`, into `part` (`rows x out`).
    fn block(
        &self,
        planes: &[f32],
        w: &[f32],
        rows: usize,
        acc: &mut Vec<f32>,
        part: &mut [f32],
        accumulate: bool,
    ) {
        let stride = self.stride();
        acc.resize(rows.next_multiple_of(ROWS) * stride, 0.0);
        let k = self.inner * self.offsets.len();
        // The last block of 3 or 5-7 rows is computed as 4 or 8 (the extra rows' weights 0,
        // their sums never read).
        let padded;
        let w = if w.len() >= rows.next_multiple_of(ROWS) * k {
            w
        } else {
            let mut p = vec![0f32; rows.next_multiple_of(ROWS) * k];
            p[..w.len()].copy_from_slice(w);
            padded = p;
            &padded[..]
        };
        let plane = self.plane[0] * self.plane[1];
        let offs = &self.offsets;
        for p0 in (0..stride).step_by(TILE) {
            let mut r = 0;
            while r < rows {
                let n = (rows - r).min(ROWS);
                let (wr, a) = (&w[r * k..], &mut acc[r * stride..]);
                // SAFETY: the CPU has AVX-512 F (`applies`); `planes` holds every plane with
                // room for the tile's reads (`planes_len`); `wr` holds at least `n` rounded up
                // to 4 or 8 rows (padded above), `a` as many rows of the flat scratch (whole
                // blocks of ROWS).
                unsafe {
                    match n {
                        1 => rows_tile::<1>(planes, plane, offs, wr, k, p0, a, stride),
                        2 => rows_tile::<2>(planes, plane, offs, wr, k, p0, a, stride),
                        3 | 4 => rows_tile::<4>(planes, plane, offs, wr, k, p0, a, stride),
                        _ => rows_tile::<8>(planes, plane, offs, wr, k, p0, a, stride),
                    }
                }
                r += n;
            }
        }
        let [oh, ow] = self.out;
        let s = self.plane[1];
        for (row, flat) in part.chunks_exact_mut(oh * ow).zip(acc.chunks(stride)) {
            for (d, f) in row.chunks_exact_mut(ow).zip(flat.chunks(s)) {
                if accumulate {
                    for (d, f) in d.iter_mut().zip(f) {
                        *d += f;
                    }
                } else {
                    for (d, f) in d.iter_mut().zip(f) {
                        *d = *f;
                    }
                }
            }
        }
    }
}

type Task<'a> = (usize, usize, usize, &'a mut [f32]);

/// `acc[r][p0 .. p0 + 48] = sum over planes c and taps t of w[r][c * taps + t] *
/// planes[c * plane + offsets[t] + p0 ..]` for `r < MR`.
///
/// # Safety
/// The CPU supports AVX-512 F; `planes` holds `(c + 1) * plane` reads past every tap's offset
/// plus `p0 + 48` for each of the `k / offsets.len()` planes (see [`Spatial::planes_len`]);
/// `w` holds `MR` rows of `k`; `acc` holds `(MR - 1) * stride + p0 + 48` elements.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_tile<const MR: usize>(
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
    debug_assert!(w.len() >= MR * k);
    debug_assert!(acc.len() >= (MR - 1) * stride + p0 + TILE);
    debug_assert!(
        planes.len() >= (inner - 1) * plane + offsets.last().copied().unwrap_or(0) + p0 + TILE
    );
    let mut sum = [[_mm512_setzero_ps(); 3]; MR];
    let (xp, wp) = (planes.as_ptr(), w.as_ptr());
    for c in 0..inner {
        for (t, &off) in offsets.iter().enumerate() {
            // SAFETY: inside `planes` and `w` (the contract).
            unsafe {
                let x = xp.add(c * plane + off + p0);
                let v: [__m512; 3] = [
                    _mm512_loadu_ps(x),
                    _mm512_loadu_ps(x.add(16)),
                    _mm512_loadu_ps(x.add(32)),
                ];
                for (r, s) in sum.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*wp.add(r * k + c * taps + t));
                    for (s, v) in s.iter_mut().zip(v) {
                        *s = _mm512_fmadd_ps(b, v, *s);
                    }
                }
            }
        }
    }
    let ap = acc.as_mut_ptr();
    for (r, s) in sum.iter().enumerate() {
        for (q, s) in s.iter().enumerate() {
            // SAFETY: inside `acc` (the contract).
            unsafe { _mm512_storeu_ps(ap.add(r * stride + p0 + 16 * q), *s) };
        }
    }
}

/// The weight gradient `dw += sum over images and positions of dy x` (see the module docs).
fn weight_grad(c: &ConvCall, x: &[f32], dy: &[f32], dw: &mut [f32], par: bool) {
    let (cg, og) = (c.channels / c.groups, c.out_channels / c.groups);
    let [kh, kw] = c.kernel;
    let [dh, dwd] = c.dilation;
    let [oh, ow] = c.out;
    let plane = [oh + dh * (kh - 1), ow + dwd * (kw - 1)];
    let taps = kh * kw;
    let k = cg * taps;
    // Output channels padded to whole vectors; channel-taps to whole tiles.
    let lanes = og.next_multiple_of(16);
    let kt = k.next_multiple_of(TAPS);
    let offsets: Vec<usize> = (0..kh)
        .flat_map(|i| (0..kw).map(move |j| i * dh * plane[1] + j * dwd))
        .collect();
    let positions: Vec<usize> = (0..oh)
        .flat_map(|y| (0..ow).map(move |x| y * plane[1] + x))
        .collect();
    let padded = plane[0] * plane[1];
    let [h, w] = c.size;
    let (x_img, y_img) = (c.channels * h * w, c.out_channels * oh * ow);
    // Per split of the images: dw^T `[G, kt, lanes]`, the padded planes of one group and dy^T.
    let fresh = || {
        (
            vec![0f32; c.groups * kt * lanes],
            vec![0f32; cg * padded],
            vec![0f32; oh * ow * lanes],
        )
    };
    let one = |mut st: (Vec<f32>, Vec<f32>, Vec<f32>), i: usize| {
        let (acc, planes, dyt) = &mut st;
        for g in 0..c.groups {
            let xs = &x[i * x_img + g * cg * h * w..];
            for ch in 0..cg {
                let d = &mut planes[ch * padded..(ch + 1) * padded];
                place(
                    &xs[ch * h * w..(ch + 1) * h * w],
                    c.size,
                    d,
                    plane[1],
                    [c.padding[0] as isize, c.padding[1] as isize],
                );
            }
            let ys = &dy[i * y_img + g * og * oh * ow..];
            transpose(&ys[..og * oh * ow], oh * ow, dyt, lanes);
            let acc = &mut acc[g * kt * lanes..(g + 1) * kt * lanes];
            for (chunk, pos) in positions.chunks(CHUNK).enumerate() {
                let dyt = &dyt[chunk * CHUNK * lanes..];
                for r0 in (0..kt).step_by(TAPS) {
                    // The planes' offsets of the tile's channel-taps (padding rows repeat the
                    // last real one; their sums land in rows past `k`, never read).
                    let xo: [usize; TAPS] = std::array::from_fn(|j| {
                        let kk = (r0 + j).min(k - 1);
                        (kk / taps) * padded + offsets[kk % taps]
                    });
                    for l0 in (0..lanes).step_by(LANES) {
                        let nv = (lanes - l0).min(LANES) / 16;
                        let a = &mut acc[r0 * lanes + l0..];
                        let d = &dyt[l0..];
                        // SAFETY: the CPU has AVX-512 F (`applies`); every position's reads
                        // lie inside the padded planes (a position plus a tap offset is
                        // inside its plane), `d` holds `pos.len()` rows of `lanes` from
                        // column `l0` on, `a` TAPS rows of `lanes` from column `l0` on.
                        unsafe {
                            match nv {
                                1 => weights_tile::<1>(planes, &xo, pos, d, lanes, a),
                                2 => weights_tile::<2>(planes, &xo, pos, d, lanes, a),
                                3 => weights_tile::<3>(planes, &xo, pos, d, lanes, a),
                                _ => weights_tile::<4>(planes, &xo, pos, d, lanes, a),
                            }
                        }
                    }
                }
            }
        }
        st
    };
    let total = if par {
        // Few splits (each a fresh dw^T and scratch), but more than threads, so that a thread
        // slowed down by another process is helped out.
        (0..c.images)
            .into_par_iter()
            .with_min_len(c.images.div_ceil(4 * rayon::current_num_threads()))
            .fold(fresh, one)
            .map(|st| st.0)
            .reduce_with(|mut a, b| {
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
/// vectors `v < NV` of 16 lanes.
///
/// # Safety
/// The CPU supports AVX-512 F; `planes` holds every `xo[r] + pos[q]`; `dyt` holds
/// `(pos.len() - 1) * lanes + 16 NV` elements, `acc` `5 * lanes + 16 NV`.
#[target_feature(enable = "avx512f")]
unsafe fn weights_tile<const NV: usize>(
    planes: &[f32],
    xo: &[usize; TAPS],
    pos: &[usize],
    dyt: &[f32],
    lanes: usize,
    acc: &mut [f32],
) {
    debug_assert!(pos.is_empty() || dyt.len() >= (pos.len() - 1) * lanes + 16 * NV);
    debug_assert!(acc.len() >= (TAPS - 1) * lanes + 16 * NV);
    let mut sum = [[_mm512_setzero_ps(); NV]; TAPS];
    let (xp, dp) = (planes.as_ptr(), dyt.as_ptr());
    for (q, &p) in pos.iter().enumerate() {
        // SAFETY: inside `planes` and `dyt` (the contract).
        unsafe {
            let d: [__m512; NV] =
                std::array::from_fn(|v| _mm512_loadu_ps(dp.add(q * lanes + 16 * v)));
            for (s, &o) in sum.iter_mut().zip(xo) {
                let b = _mm512_set1_ps(*xp.add(o + p));
                for (s, d) in s.iter_mut().zip(d) {
                    *s = _mm512_fmadd_ps(b, d, *s);
                }
            }
        }
    }
    let ap = acc.as_mut_ptr();
    for (r, s) in sum.iter().enumerate() {
        for (v, s) in s.iter().enumerate() {
            // SAFETY: inside `acc` (the contract).
            unsafe {
                let a = ap.add(r * lanes + 16 * v);
                _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), *s));
            }
        }
    }
}
