//! Work the backend holds back so that the launch after it can take it in: fewer launches per
//! step, which is what small steps (and their CUDA graphs) are bound by.
//!
//! - **Fills.** The tape zeroes a gradient just before the op that accumulates into it (and
//!   every parameter's gradient when a step starts). A pending zero fill that the next op
//!   accumulating into exactly that region meets is not launched at all: the op overwrites
//!   instead (a product with `beta = 0`, a kernel with `acc = 0`), which gives the same numbers
//!   (`0 + v` is what the kernels write). A one-element fill read as a loss's upstream gradient
//!   (the backward's seed) is passed to the loss's backward as a value.
//! - **Bias, then activation.** A linear layer's forward is a bias broadcast into its output,
//!   then a product accumulating into it. The broadcast waits; the product then runs with
//!   `beta = 0` and the bias is owed as `y += b`; an activation of `y` that comes next takes it
//!   in (one `bias_act` launch writes `y = y + b` and `f(y)`), anything else gets it as one
//!   broadcast add.
//! - **A gradient, then its column sums.** A linear layer's backward starts with its bias's
//!   gradient, the column sums of the gradient of its output, which the kernel before (an
//!   activation's backward, or the loss's) has just written. That kernel waits; when the
//!   column sums of exactly its output come next, one launch writes both (`*_colsum`).
//! - **A loss, then its gradient.** The loss's forward waits for the backward's first kernel,
//!   its own gradient: where that sums its columns in one block, the same launch computes the
//!   loss too.
//!
//! Whatever is held back is launched before anything that reads or writes its region (and
//! before reads to the host, writes from it, graph ends and synchronisations), so the order of
//! effects is the order of the calls. This module only decides; `device.rs` launches.

use std::ops::Range;

/// A fill not yet launched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fill {
    pub offset: usize,
    pub len: usize,
    pub value: f32,
}

impl Fill {
    fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Where a held-back bias broadcast stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `y[r, j] = b[j]` is owed, the product accumulating into `y` has not come yet.
    Copy,
    /// The product was launched with `beta = 0`; `y[r, j] += b[j]` is owed.
    Add,
}

/// A bias broadcast over the rows of a `rows x cols` output, held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bias {
    pub bias: usize,
    pub y: usize,
    pub rows: usize,
    pub cols: usize,
    pub stage: Stage,
}

impl Bias {
    fn touches(&self, r: &Range<usize>) -> bool {
        overlaps(r, &(self.bias..self.bias + self.cols))
            || overlaps(r, &(self.y..self.y + self.rows * self.cols))
    }
}

/// A loss's forward held back: its launch arguments. It reads `p` (`plen` floats) and `t`,
/// writes the loss to `y`; with `bias` (offset, length), it adds that bias, owed to the linear
/// layer whose output `p` is, to `p` first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LossFwd {
    pub code: i32,
    pub p: usize,
    pub plen: usize,
    pub t: usize,
    pub tlen: usize,
    pub y: usize,
    pub classes: usize,
    pub smoothing: f32,
    pub bias: Option<(usize, usize)>,
}

impl LossFwd {
    /// The ranges it reads, and those it writes.
    fn ranges(&self) -> ([Range<usize>; 3], [Range<usize>; 2]) {
        let (b, pw) = match self.bias {
            Some((b, n)) => (b..b + n, self.p..self.p + self.plen),
            None => (0..0, 0..0),
        };
        (
            [self.p..self.p + self.plen, self.t..self.t + self.tlen, b],
            [self.y..self.y + 1, pw],
        )
    }

    fn touched_by(&self, reads: &[Range<usize>], write: &Range<usize>) -> bool {
        let (mine, writes) = self.ranges();
        conflict(&mine, &writes, reads, write)
    }
}

/// Whether an op reading `reads` and writing `write` must come after held work reading
/// `mine` and writing `writes`.
fn conflict(
    mine: &[Range<usize>],
    writes: &[Range<usize>],
    reads: &[Range<usize>],
    write: &Range<usize>,
) -> bool {
    writes
        .iter()
        .any(|w| overlaps(w, write) || reads.iter().any(|r| overlaps(r, w)))
        || mine.iter().any(|r| overlaps(r, write))
}

/// A gradient kernel held back: its launch arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum GradKind {
    /// `unary_bwd`: `x`, `y`, `dy` read, with the op's code and scalar.
    Unary {
        code: i32,
        c: f32,
        x: usize,
        y: usize,
        dy: usize,
    },
    /// `loss_bwd` (left-hand side or right): `p` and `t` read (`plen`, `tlen` floats); the
    /// upstream gradient read at `dy`, or `seed` given as a value (and written to `dy`); with
    /// `fwd`, the loss's forward taken in.
    Loss {
        fwd: Option<LossFwd>,
        code: i32,
        lhs: bool,
        p: usize,
        plen: usize,
        t: usize,
        tlen: usize,
        dy: usize,
        seed: Option<f32>,
        classes: usize,
        smoothing: f32,
    },
}

/// A gradient kernel held back for the column sums that may follow it: it writes the `len`
/// floats at `dx` (adding to them with `acc`); a loss's also writes its seed to `dy`, and with
/// its forward taken in, the loss and the bias added to the predictions (`ranges`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Grad {
    pub kind: GradKind,
    pub dx: usize,
    pub len: usize,
    pub acc: bool,
}

impl Grad {
    /// The ranges it reads, and those it writes.
    fn ranges(&self) -> ([Range<usize>; 4], [Range<usize>; 4]) {
        let one = |o: usize, n: usize| o..o + n;
        let dx = one(self.dx, self.len);
        match self.kind {
            GradKind::Unary { x, y, dy, .. } => (
                [one(x, self.len), one(y, self.len), one(dy, self.len), 0..0],
                [dx, 0..0, 0..0, 0..0],
            ),
            GradKind::Loss {
                fwd,
                p,
                plen,
                t,
                tlen,
                dy,
                seed,
                ..
            } => {
                let (read, write) = if seed.is_some() {
                    (0..0, one(dy, 1))
                } else {
                    (one(dy, 1), 0..0)
                };
                // The forward reads p and t too, and perhaps the bias.
                let ([_, _, b], [y, pw]) =
                    fwd.map_or_else(|| ([0..0, 0..0, 0..0], [0..0, 0..0]), |f| f.ranges());
                ([one(p, plen), one(t, tlen), read, b], [dx, write, y, pw])
            }
        }
    }

    fn touched_by(&self, reads: &[Range<usize>], write: &Range<usize>) -> bool {
        let (mine, writes) = self.ranges();
        conflict(&mine, &writes, reads, write)
    }

    /// Whether one launch can also sum its output's columns, as `rows x cols`.
    pub(crate) fn sums_columns(&self, rows: usize, cols: usize) -> bool {
        rows.checked_mul(cols) == Some(self.len)
            // At least one block, and a grid that fits.
            && cols > 0
            && colsum_grid(cols).is_some()
            // One block per 32 columns walks every row: past this many rows, the separate
            // launches (spread over the GPU) are faster.
            && rows <= COLSUM_ROWS
            && match self.kind {
                GradKind::Unary { .. } => true,
                // Cross-entropy's rows each in one warp of the one block.
                GradKind::Loss { code, classes, .. } => {
                    code != 1 || (classes == cols && cols <= 32)
                }
            }
    }
}

/// Column sums a held [`Grad`] adds to its launch: the `cols` floats at `db` take those of its
/// `rows x cols` output (added to what they hold with `acc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColSum {
    pub db: usize,
    pub rows: usize,
    pub cols: usize,
    pub acc: bool,
}

/// The most rows a gradient kernel sums its columns over in its own launch
/// ([`Grad::sums_columns`]).
pub(crate) const COLSUM_ROWS: usize = 8192;

/// The fused kernels' grid over `cols` columns: one 32 x 32 block per 32 columns.
fn colsum_grid(cols: usize) -> Option<u32> {
    u32::try_from(cols.div_ceil(32))
        .ok()
        .filter(|&g| g <= crate::device::MAX_GRID_X)
}

impl ColSum {
    /// The fused kernels' grid ([`colsum_grid`]).
    pub(crate) fn blocks(&self) -> mote::Result<u32> {
        colsum_grid(self.cols).ok_or(mote::Error::InvalidArgument {
            what: "bias gradient: too many columns for one launch",
        })
    }
}

/// How an op writes its destination range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Every element is written, whatever was there before.
    Overwrite,
    /// Every element is added to (`+=`): a zero fill of exactly this range can be skipped if the
    /// op overwrites instead.
    Accumulate,
    /// Some elements, or added to in a way the op cannot turn into a plain write.
    Partial,
}

/// What must be launched before an op, and whether its accumulation became a plain write.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settled {
    pub fills: Vec<Fill>,
    pub bias: Option<Bias>,
    pub loss: Option<LossFwd>,
    pub grad: Option<Grad>,
    /// A zero fill of exactly the op's destination was taken in: the op must overwrite.
    pub overwrite: bool,
}

impl Settled {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.fills.is_empty() && self.bias.is_none() && self.loss.is_none() && self.grad.is_none()
    }
}

pub(crate) fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end && !a.is_empty() && !b.is_empty()
}

/// Work held back (at most a few fills, one bias, one loss and one gradient kernel).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    fills: Vec<Fill>,
    bias: Option<Bias>,
    loss: Option<LossFwd>,
    grad: Option<Grad>,
}

impl Pending {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.fills.is_empty() && self.bias.is_none() && self.loss.is_none() && self.grad.is_none()
    }

    /// Everything, to launch now (in this order: fills, the bias, the loss, the gradient
    /// kernel). What is held never overlaps: whatever touched a held item's ranges launched it
    /// first.
    pub(crate) fn take_all(&mut self) -> Settled {
        Settled {
            fills: std::mem::take(&mut self.fills),
            bias: self.bias.take(),
            loss: self.loss.take(),
            grad: self.grad.take(),
            overwrite: false,
        }
    }

    /// Holds back a loss's forward (the op itself was settled); returns the one held before,
    /// to launch now.
    #[must_use]
    pub(crate) fn hold_loss(&mut self, l: LossFwd) -> Option<LossFwd> {
        self.loss.replace(l)
    }

    /// The held loss's forward, if it is the one of this gradient: the same op over the same
    /// predictions and targets.
    pub(crate) fn take_loss(&mut self, like: &LossFwd) -> Option<LossFwd> {
        let l = self.loss?;
        let same = l.code == like.code
            && (l.p, l.plen, l.t, l.tlen) == (like.p, like.plen, like.t, like.tlen)
            && l.classes == like.classes
            && l.smoothing.to_bits() == like.smoothing.to_bits();
        same.then(|| self.loss.take()).flatten()
    }

    /// Holds back a gradient kernel (the op itself was settled); returns the one held before,
    /// to launch now.
    #[must_use]
    pub(crate) fn hold_grad(&mut self, g: Grad) -> Option<Grad> {
        self.grad.replace(g)
    }

    /// The held gradient kernel, if it wrote exactly the `rows x cols` floats at `dx` and can
    /// sum their columns into `db` (which it must not touch) in the same launch.
    pub(crate) fn take_grad_for_colsum(
        &mut self,
        dx: usize,
        rows: usize,
        cols: usize,
        db: Range<usize>,
    ) -> Option<Grad> {
        let g = self.grad?;
        (g.dx == dx && g.sums_columns(rows, cols) && !g.touched_by(&[], &db))
            .then(|| self.grad.take())
            .flatten()
    }

    /// An op reads `reads` and writes `write` as `kind`: takes out what must run before it.
    pub(crate) fn settle(
        &mut self,
        reads: &[Range<usize>],
        write: Range<usize>,
        kind: Write,
    ) -> Settled {
        let mut out = Settled::default();
        if self.grad.is_some_and(|g| g.touched_by(reads, &write)) {
            out.grad = self.grad.take();
        }
        if self.loss.is_some_and(|l| l.touched_by(reads, &write)) {
            out.loss = self.loss.take();
        }
        if self
            .bias
            .is_some_and(|b| b.touches(&write) || reads.iter().any(|r| b.touches(r)))
        {
            out.bias = self.bias.take();
        }
        let mut keep = Vec::with_capacity(self.fills.len());
        for f in self.fills.drain(..) {
            let fr = f.range();
            if reads.iter().any(|r| overlaps(r, &fr)) {
                out.fills.push(f);
            } else if overlaps(&write, &fr) {
                match kind {
                    Write::Accumulate if fr == write && f.value == 0.0 && !out.overwrite => {
                        out.overwrite = true;
                    }
                    Write::Overwrite if write.start <= fr.start && fr.end <= write.end => {}
                    _ => out.fills.push(f),
                }
            } else {
                keep.push(f);
            }
        }
        self.fills = keep;
        out
    }

    /// Holds back a fill: what it overlaps is settled first (a fill it covers is dropped).
    pub(crate) fn fill(&mut self, f: Fill) -> Settled {
        let out = self.settle(&[], f.range(), Write::Overwrite);
        if f.len > 0 {
            self.fills.push(f);
        }
        out
    }

    /// Takes a held-back fill of exactly `offset..offset + 1` (a loss's seed), if there is one.
    pub(crate) fn take_seed(&mut self, offset: usize) -> Option<f32> {
        let i = self
            .fills
            .iter()
            .position(|f| f.offset == offset && f.len == 1)?;
        Some(self.fills.remove(i).value)
    }

    /// Holds back a bias broadcast (the op itself was settled as an overwrite of `y` reading
    /// `bias`); returns the bias held before, to launch first (one is held at a time).
    #[must_use]
    pub(crate) fn hold_bias(&mut self, b: Bias) -> Option<Bias> {
        self.bias.replace(b)
    }

    /// The held bias, if it is a [`Stage::Copy`] owed to `rows x cols` at `y`: a product
    /// accumulating into exactly that may take it (and then hold it as [`Stage::Add`]).
    pub(crate) fn take_bias_copy(&mut self, y: usize, rows: usize, cols: usize) -> Option<Bias> {
        let b = self.bias?;
        (b.stage == Stage::Copy && b.y == y && b.rows == rows && b.cols == cols)
            .then(|| self.bias.take())
            .flatten()
    }

    /// The held bias, if it is a [`Stage::Add`] owed to the `len` elements at `y`: an
    /// activation of exactly that output, writing `dst` (which must not touch the bias
    /// vector), may take it.
    pub(crate) fn take_bias_add(
        &mut self,
        y: usize,
        len: usize,
        dst: Range<usize>,
    ) -> Option<Bias> {
        let b = self.bias?;
        (b.stage == Stage::Add
            && b.y == y
            && b.rows * b.cols == len
            && !overlaps(&dst, &(b.bias..b.bias + b.cols)))
        .then(|| self.bias.take())
        .flatten()
    }
}

/// Whether a strided destination over `dims` writes a dense block of `span` elements (every
/// element of its span, once per parallel index): its nonzero strides, sorted, are those of a
/// contiguous layout of the dimensions they belong to.
pub(crate) fn dense(dims: &[usize], strides: &[usize], span: usize) -> bool {
    let mut d: Vec<(usize, usize)> = dims
        .iter()
        .zip(strides)
        .filter(|&(&n, &s)| n > 1 && s > 0)
        .map(|(&n, &s)| (s, n))
        .collect();
    d.sort_unstable();
    let mut expect = 1usize;
    for (s, n) in d {
        if s != expect {
            return false;
        }
        expect = expect.saturating_mul(n);
    }
    expect == span
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one range read, as ops pass them
mod tests {
    use super::*;

    fn zero(offset: usize, len: usize) -> Fill {
        Fill {
            offset,
            len,
            value: 0.0,
        }
    }

    #[test]
    fn an_accumulation_into_exactly_a_zeroed_region_takes_the_fill_in() {
        let mut p = Pending::default();
        assert!(p.fill(zero(100, 10)).is_empty());
        assert!(p.fill(zero(200, 5)).is_empty());
        // An op elsewhere leaves both held.
        assert!(p.settle(&[0..10], 20..30, Write::Overwrite).is_empty());
        let s = p.settle(&[0..10], 100..110, Write::Accumulate);
        assert!(s.overwrite && s.fills.is_empty());
        // The other stays held until something touches it; a read launches it.
        let s = p.settle(&[204..205], 0..1, Write::Overwrite);
        assert_eq!(s.fills, [zero(200, 5)]);
        assert!(p.is_empty());
    }

    #[test]
    fn anything_short_of_an_exact_accumulation_launches_the_fill() {
        for (write, kind) in [
            (100..105, Write::Accumulate), // part of the region
            (95..110, Write::Accumulate),  // more than the region
            (100..110, Write::Partial),
            (100..109, Write::Overwrite), // not all of it overwritten
        ] {
            let mut p = Pending::default();
            let _ = p.fill(zero(100, 10));
            let s = p.settle(&[], write.clone(), kind);
            assert_eq!(s.fills, [zero(100, 10)], "{write:?} {kind:?}");
            assert!(!s.overwrite);
        }
        // A region the op also reads is never taken in.
        let mut p = Pending::default();
        let _ = p.fill(zero(100, 10));
        let s = p.settle(&[105..106], 100..110, Write::Accumulate);
        assert!(!s.overwrite && s.fills.len() == 1);
        // Nor a nonzero fill.
        let mut p = Pending::default();
        let _ = p.fill(Fill {
            offset: 100,
            len: 10,
            value: 1.0,
        });
        assert!(!p.settle(&[], 100..110, Write::Accumulate).overwrite);
    }

    #[test]
    fn an_overwrite_drops_the_fills_it_covers() {
        let mut p = Pending::default();
        let _ = p.fill(zero(100, 10));
        let _ = p.fill(zero(120, 10));
        let s = p.settle(&[], 90..125, Write::Overwrite);
        // The first is covered (dropped), the second only partly (launched).
        assert_eq!(s.fills, [zero(120, 10)]);
        assert!(p.is_empty());
        // A fill over a held one replaces it; over part of one launches that first.
        let _ = p.fill(zero(0, 4));
        assert!(p.fill(zero(0, 8)).is_empty());
        assert_eq!(p.fill(zero(4, 8)).fills, [zero(0, 8)]);
        assert_eq!(p.take_all().fills, [zero(4, 8)]);
    }

    #[test]
    fn the_seed_is_taken_by_offset() {
        let mut p = Pending::default();
        let one = Fill {
            offset: 7,
            len: 1,
            value: 1.0,
        };
        let _ = p.fill(one);
        let _ = p.fill(zero(8, 3));
        assert_eq!(p.take_seed(8), None);
        assert_eq!(p.take_seed(7), Some(1.0));
        assert_eq!(p.take_all().fills, [zero(8, 3)]);
    }

    #[test]
    fn a_bias_waits_for_its_product_then_its_activation() {
        let mut p = Pending::default();
        let b = Bias {
            bias: 10,
            y: 100,
            rows: 4,
            cols: 3,
            stage: Stage::Copy,
        };
        assert_eq!(p.hold_bias(b), None);
        // Unrelated ops leave it held; a product into another place does not take it.
        assert!(p.settle(&[0..10], 50..60, Write::Overwrite).is_empty());
        assert_eq!(p.take_bias_copy(100, 3, 4), None);
        let got = p.take_bias_copy(100, 4, 3).unwrap();
        let add = Bias {
            stage: Stage::Add,
            ..got
        };
        assert_eq!(p.hold_bias(add), None);
        // A second bias held while one is: the first is handed back to launch.
        assert_eq!(p.hold_bias(b), Some(add));
        assert_eq!(p.hold_bias(add), Some(b));
        assert_eq!(p.take_bias_copy(100, 4, 3), None, "already added");
        assert_eq!(p.take_bias_add(100, 11, 0..11), None);
        // Not into the bias vector itself.
        assert_eq!(p.take_bias_add(100, 12, 5..17), None);
        assert!(p.take_bias_add(100, 12, 100..112).is_some());
        // Anything that reads the output or writes the bias vector launches it.
        for (reads, write) in [
            (vec![111..112], 0..1),
            (vec![], 12..13),
            (vec![10..11], 200..201),
        ] {
            let _ = p.hold_bias(b);
            let s = p.settle(&reads, write, Write::Overwrite);
            assert_eq!(s.bias, Some(b));
        }
    }

    #[test]
    fn a_gradient_kernel_waits_for_the_column_sums_of_its_output() {
        let unary = Grad {
            kind: GradKind::Unary {
                code: 8,
                c: 0.0,
                x: 0,
                y: 10,
                dy: 20,
            },
            dx: 30,
            len: 10,
            acc: false,
        };
        let mut p = Pending::default();
        assert_eq!(p.hold_grad(unary), None);
        // Reading what it reads leaves it held; reading or writing what it writes, or writing
        // what it reads, launches it.
        assert!(p.settle(&[0..30], 100..110, Write::Overwrite).is_empty());
        for (reads, write) in [
            (vec![39..40], 100..101),
            (vec![], 35..36),
            (vec![], 5..6),
            (vec![], 29..31),
        ] {
            let _ = p.hold_grad(unary);
            assert_eq!(p.settle(&reads, write, Write::Overwrite).grad, Some(unary));
        }
        // Column sums of exactly its output, into a region it does not touch.
        let _ = p.hold_grad(unary);
        assert_eq!(p.take_grad_for_colsum(30, 3, 3, 50..53), None, "9 of 10");
        assert_eq!(p.take_grad_for_colsum(31, 2, 5, 50..55), None, "elsewhere");
        assert_eq!(p.take_grad_for_colsum(30, 2, 5, 18..23), None, "into dy");
        assert_eq!(p.take_grad_for_colsum(30, 2, 5, 50..55), Some(unary));
        assert!(p.is_empty());
        // A held one is handed back when another comes; take_all launches the last.
        let _ = p.hold_grad(unary);
        let other = Grad { dx: 40, ..unary };
        assert_eq!(p.hold_grad(other), Some(unary));
        assert_eq!(p.take_all().grad, Some(other));
    }

    #[test]
    fn a_loss_gradient_sums_columns_where_a_row_fits_a_warp() {
        let ce = |classes: usize, seed: Option<f32>| Grad {
            kind: GradKind::Loss {
                fwd: None,
                code: 1,
                lhs: true,
                p: 0,
                plen: 4 * classes,
                t: 200,
                tlen: 4,
                dy: 300,
                seed,
                classes,
                smoothing: 0.0,
            },
            dx: 400,
            len: 4 * classes,
            acc: false,
        };
        assert!(ce(10, None).sums_columns(4, 10));
        assert!(ce(32, None).sums_columns(4, 32));
        assert!(!ce(40, None).sums_columns(4, 40), "a row wider than a warp");
        assert!(
            !ce(10, None).sums_columns(8, 5),
            "rows that are not the loss's"
        );
        // An elementwise loss (MSE) sums any number of columns.
        let mut mse = ce(40, None);
        if let GradKind::Loss { code, .. } = &mut mse.kind {
            *code = 0;
        }
        assert!(mse.sums_columns(4, 40) && mse.sums_columns(2, 80));
        // Not over more rows than one block walks well.
        let rows = COLSUM_ROWS + 1;
        mse.len = rows;
        assert!(!mse.sums_columns(rows, 1), "{rows} rows");
        mse.len = COLSUM_ROWS;
        assert!(mse.sums_columns(COLSUM_ROWS, 1));
        // Nor over no columns (a grid of no blocks).
        mse.len = 0;
        assert!(!mse.sums_columns(4, 0));
        // Seeded, it writes the seed to dy: a read of dy launches it; unseeded, it reads dy.
        let mut p = Pending::default();
        let _ = p.hold_grad(ce(10, Some(1.0)));
        assert!(p
            .settle(&[300..301], 500..501, Write::Overwrite)
            .grad
            .is_some());
        let _ = p.hold_grad(ce(10, None));
        assert!(p.settle(&[300..301], 500..501, Write::Overwrite).is_empty());
        assert!(p.settle(&[], 300..301, Write::Overwrite).grad.is_some());
    }

    #[test]
    fn a_loss_waits_for_its_gradient() {
        let l = LossFwd {
            code: 1,
            p: 0,
            plen: 40,
            t: 100,
            tlen: 4,
            y: 200,
            classes: 10,
            smoothing: 0.0,
            bias: None,
        };
        let mut p = Pending::default();
        assert_eq!(p.hold_loss(l), None);
        // Its gradient (same op, predictions, targets) takes it; another loss's does not.
        assert_eq!(p.take_loss(&LossFwd { t: 104, ..l }), None);
        assert_eq!(
            p.take_loss(&LossFwd {
                smoothing: 0.1,
                ..l
            }),
            None
        );
        assert_eq!(p.take_loss(&LossFwd { y: 0, ..l }), Some(l));
        // Reading the loss, or writing what it reads, launches it; reading p does not, unless
        // it owes p a bias.
        for (reads, write) in [(vec![200..201], 300..301), (vec![], 39..40)] {
            let _ = p.hold_loss(l);
            assert_eq!(p.settle(&reads, write, Write::Overwrite).loss, Some(l));
        }
        let _ = p.hold_loss(l);
        assert!(p.settle(&[0..40], 300..301, Write::Overwrite).is_empty());
        let biased = LossFwd {
            bias: Some((50, 10)),
            ..l
        };
        let _ = p.hold_loss(biased);
        assert_eq!(
            p.settle(&[0..1], 300..301, Write::Overwrite).loss,
            Some(biased)
        );
        let _ = p.hold_loss(biased);
        assert_eq!(p.settle(&[], 55..56, Write::Overwrite).loss, Some(biased));
    }

    #[test]
    fn dense_destinations() {
        // A bias gradient: [rows, n] summed over rows into n contiguous elements.
        assert!(dense(&[256, 100], &[0, 1], 100));
        // Contiguous, a transposed walk of the same block, and a block with a gap.
        assert!(dense(&[2, 3, 4], &[12, 4, 1], 24));
        assert!(dense(&[4, 3], &[1, 4], 12));
        assert!(!dense(&[2, 3], &[4, 1], 7));
        // Every other element, and an overlapping walk.
        assert!(!dense(&[5], &[2], 9));
        assert!(!dense(&[3, 3], &[1, 1], 5));
    }
}
