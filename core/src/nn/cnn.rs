//! Layers for convolutional and sequence models: convolutions, pooling, normalisation, dropout
//! and embeddings. Each wraps the tape op of the same name (see [`crate::ops::conv`] and
//! [`crate::ops::gather`]); normalisation layers are compositions of elementary ops, so their
//! gradients follow from those ops'.

use core::cell::Cell;

use super::Module;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ops::conv::{ConvConfig, PoolConfig};
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// PyTorch's default initialisation of a layer with `fan_in` inputs per output: uniform in
/// `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`, weight then bias.
fn init<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    dims: &[usize],
    bias: Option<usize>,
    fan_in: usize,
    rng: &mut Rng,
) -> Result<(Var, Option<Var>)> {
    if fan_in == 0 {
        return Err(Error::BadDims { rank: dims.len() });
    }
    let bound = 1.0 / libm::sqrt(fan_in as f64);
    // Both parameters or neither.
    tape.all_or_nothing(|tape| {
        let w = tape.param_with(dims, || B::Elem::from_f64(rng.uniform(-bound, bound)))?;
        let b = match bias {
            Some(o) => {
                Some(tape.param_with(&[o], || B::Elem::from_f64(rng.uniform(-bound, bound)))?)
            }
            None => None,
        };
        Ok((w, b))
    })
}

fn groups_fit(inputs: usize, outputs: usize, groups: usize) -> Result<()> {
    if groups == 0 || !inputs.is_multiple_of(groups) || !outputs.is_multiple_of(groups) {
        return Err(Error::InvalidArgument {
            what: "groups must divide both the input and the output channels",
        });
    }
    Ok(())
}

/// A 2-D convolution layer (PyTorch's `nn.Conv2d`): weight `[O, C / groups, KH, KW]`, optional
/// bias `[O]`, over `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// The kernels, `[O, C / groups, KH, KW]`.
    pub weight: Var,
    /// The bias, `[O]`.
    pub bias: Option<Var>,
    /// Stride, padding, dilation.
    pub config: ConvConfig,
}

impl Conv2d {
    /// A layer with PyTorch's default initialisation (`fan_in = C / groups * KH * KW`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `groups` does not divide the channels; as
    /// [`Tape::param`].
    #[allow(clippy::too_many_arguments)]
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        kernel: [usize; 2],
        config: ConvConfig,
        groups: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        groups_fit(inputs, outputs, groups)?;
        let cg = inputs / groups;
        let fan_in = cg
            .checked_mul(kernel[0])
            .and_then(|f| f.checked_mul(kernel[1]))
            .ok_or(Error::BadDims { rank: 4 })?;
        let (weight, bias) = init(
            tape,
            &[outputs, cg, kernel[0], kernel[1]],
            bias.then_some(outputs),
            fan_in,
            rng,
        )?;
        Ok(Conv2d {
            weight,
            bias,
            config,
        })
    }
}

impl Module for Conv2d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.conv2d(x, self.weight, self.bias, self.config)
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        if let Some(b) = self.bias {
            f(b);
        }
    }
}

/// A 1-D convolution layer (PyTorch's `nn.Conv1d`): weight `[O, C / groups, K]`, over
/// `[N, C, L]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1d {
    /// The kernels, `[O, C / groups, K]`.
    pub weight: Var,
    /// The bias, `[O]`.
    pub bias: Option<Var>,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on each side.
    pub padding: usize,
    /// Step between a window's taps.
    pub dilation: usize,
}

impl Conv1d {
    /// A layer with PyTorch's default initialisation; stride 1, no padding, dilation 1 (set
    /// the fields to change them).
    ///
    /// # Errors
    /// As [`Conv2d::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        groups: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        groups_fit(inputs, outputs, groups)?;
        let cg = inputs / groups;
        let (weight, bias) = init(
            tape,
            &[outputs, cg, kernel],
            Some(outputs),
            cg.checked_mul(kernel).ok_or(Error::BadDims { rank: 3 })?,
            rng,
        )?;
        Ok(Conv1d {
            weight,
            bias,
            stride: 1,
            padding: 0,
            dilation: 1,
        })
    }
}

impl Module for Conv1d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.conv1d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
        )
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        if let Some(b) = self.bias {
            f(b);
        }
    }
}

/// 2-D max pooling as a layer (`nn.MaxPool2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d(pub PoolConfig);

impl Module for MaxPool2d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.max_pool2d(x, self.0)
    }
}

/// 2-D average pooling as a layer (`nn.AvgPool2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d(pub PoolConfig);

impl Module for AvgPool2d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.avg_pool2d(x, self.0)
    }
}

/// 2-D average pooling over the taps inside the input as a layer (`nn.AvgPool2d(...,
/// count_include_pad=False)`); see [`Tape::avg_pool2d_exclude_pad`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dExcludePad(pub PoolConfig);

impl Module for AvgPool2dExcludePad {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.avg_pool2d_exclude_pad(x, self.0)
    }
}

/// 1-D max pooling as a layer (`nn.MaxPool1d(k)`: window and stride `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool1d(pub usize);

impl Module for MaxPool1d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.max_pool1d(x, self.0, self.0, 0)
    }
}

/// 1-D average pooling as a layer (`nn.AvgPool1d(k)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool1d(pub usize);

impl Module for AvgPool1d {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.avg_pool1d(x, self.0, self.0, 0)
    }
}

/// Global average pooling as a layer: `[N, C, ...]` to `[N, C]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl Module for GlobalAvgPool {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.global_avg_pool(x)
    }
}

/// Batch normalisation over the channel axis 1 of `[N, C]`, `[N, C, L]` or `[N, C, H, W]`
/// (PyTorch's `BatchNorm1d` / `BatchNorm2d`): in training mode
/// `y = (x - mean) / sqrt(var + eps) * weight + bias` with the batch's statistics per channel
/// (biased variance), and the running statistics move by `momentum` towards them (unbiased
/// variance, as PyTorch does); in evaluation mode the running statistics are used.
///
/// The running statistics are frozen parameters in the arena, so checkpoints and weight blobs
/// carry them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Scale per channel (gamma), initialised to 1.
    pub weight: Var,
    /// Shift per channel (beta), initialised to 0.
    pub bias: Var,
    /// Running mean per channel, initialised to 0.
    pub running_mean: Var,
    /// Running variance per channel, initialised to 1.
    pub running_var: Var,
    /// Weight of the new batch in the running statistics (PyTorch's default 0.1).
    pub momentum: f32,
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f32,
    /// Training mode (the default) or evaluation mode; see [`Module::set_training`].
    pub training: bool,
}

impl BatchNorm {
    /// A layer over `channels` channels.
    ///
    /// # Errors
    /// As [`Tape::param`].
    pub fn new<B: Backend, const N: usize>(tape: &mut Tape<B, N>, channels: usize) -> Result<Self> {
        tape.all_or_nothing(|tape| {
            Ok(BatchNorm {
                weight: tape.param_with(&[channels], || B::Elem::ONE)?,
                bias: tape.param_with(&[channels], || B::Elem::ZERO)?,
                running_mean: tape.param_frozen_with(&[channels], || B::Elem::ZERO)?,
                running_var: tape.param_frozen_with(&[channels], || B::Elem::ONE)?,
                momentum: 0.1,
                eps: 1e-5,
                training: true,
            })
        })
    }

    /// Moves the running statistics towards the batch's (through the host, a channel chunk
    /// at a time).
    fn update_running<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        mean: Var,
        var: Var,
        count: usize,
    ) -> Result<()> {
        if !tape.backend().computes() {
            return Ok(());
        }
        let m = B::Elem::from_f32(self.momentum);
        let keep = B::Elem::ONE - m;
        let unbias = B::Elem::from_f64(count as f64 / (count.max(2) - 1) as f64);
        let c = mean.numel();
        let mut at = 0;
        while at < c {
            let k = (c - at).min(16);
            let mut bm = [B::Elem::ZERO; 16];
            let mut bv = [B::Elem::ZERO; 16];
            let mut rm = [B::Elem::ZERO; 16];
            let mut rv = [B::Elem::ZERO; 16];
            let (bm, bv, rm, rv) = (
                bm.get_mut(..k).unwrap_or(&mut []),
                bv.get_mut(..k).unwrap_or(&mut []),
                rm.get_mut(..k).unwrap_or(&mut []),
                rv.get_mut(..k).unwrap_or(&mut []),
            );
            let be = tape.backend_mut();
            be.read(mean.view().offset + at, bm)?;
            be.read(var.view().offset + at, bv)?;
            be.read(self.running_mean.view().offset + at, rm)?;
            be.read(self.running_var.view().offset + at, rv)?;
            for (r, &b) in rm.iter_mut().zip(bm.iter()) {
                *r = keep * *r + m * b;
            }
            for (r, &b) in rv.iter_mut().zip(bv.iter()) {
                *r = keep * *r + m * b * unbias;
            }
            be.write(self.running_mean.view().offset + at, rm)?;
            be.write(self.running_var.view().offset + at, rv)?;
            at += k;
        }
        Ok(())
    }
}

impl Module for BatchNorm {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        let s = x.shape();
        let c = self.weight.numel();
        if !(2..=4).contains(&s.rank()) || s.dim(1) != c {
            return Err(Error::ShapeMismatch {
                op: "batch_norm",
                lhs: s,
                rhs: self.weight.shape(),
            });
        }
        let n = s.dim(0);
        let rest = s.numel() / (n * c);
        let mut dims = [0usize; 4];
        for (d, &v) in dims.iter_mut().zip(s.dims()) {
            *d = v as usize;
        }
        let dims = dims.get(..s.rank()).unwrap_or(&[]);
        // Public fields, checked here: a negative eps makes NaN of a constant channel, a
        // momentum outside [0, 1] running statistics that grow without bound.
        if !(self.eps >= 0.0 && self.eps.is_finite() && (0.0..=1.0).contains(&self.momentum)) {
            return Err(Error::InvalidArgument {
                what: "batch_norm: eps must be finite and >= 0, momentum in [0, 1]",
            });
        }
        // Public fields too: the running statistics are read and written through the backend
        // by offset, so they must be live handles of this tape with a value per channel.
        for r in [self.running_mean, self.running_var] {
            tape.check(r)?;
            if r.numel() != c {
                return Err(Error::ShapeMismatch {
                    op: "batch_norm: running statistics",
                    lhs: r.shape(),
                    rhs: self.weight.shape(),
                });
            }
        }
        // A channel's single value has no spread to normalise by (the output would be the
        // bias): PyTorch refuses it too.
        if self.training && n * rest < 2 {
            return Err(Error::InvalidArgument {
                what: "batch_norm: training needs more than one value per channel",
            });
        }
        if self.training {
            tape.backend_mut().host_dependent(
                "batch norm updates its running statistics on the host: a recorded or captured \
                 step cannot hold it in training mode",
            )?;
        }
        // All its nodes or none, and the running statistics move only once every op has run:
        // a forward that fails changes nothing.
        tape.all_or_nothing(|tape| {
            let xr = tape.reshape(x, &[n, c, rest])?;
            let (mean, var, batch) = if self.training {
                let mean = tape.mean_axis(xr, 2)?;
                let mean = tape.mean_axis(mean, 0)?;
                let m1 = tape.reshape(mean, &[c, 1])?;
                let d = tape.sub(xr, m1)?;
                let sq = tape.square(d)?;
                let v = tape.mean_axis(sq, 2)?;
                let v = tape.mean_axis(v, 0)?;
                (m1, tape.reshape(v, &[c, 1])?, Some((mean, v)))
            } else {
                (
                    tape.reshape(self.running_mean, &[c, 1])?,
                    tape.reshape(self.running_var, &[c, 1])?,
                    None,
                )
            };
            let d = tape.sub(xr, mean)?;
            let v = tape.add_scalar(var, self.eps)?;
            let std = tape.sqrt(v)?;
            let xhat = tape.div(d, std)?;
            let g = tape.reshape(self.weight, &[c, 1])?;
            let b = tape.reshape(self.bias, &[c, 1])?;
            let y = tape.mul(xhat, g)?;
            let y = tape.add(y, b)?;
            let y = tape.reshape(y, dims)?;
            if let Some((mean, v)) = batch {
                tape.no_grad(|t| self.update_running(t, mean, v, n * rest))?;
            }
            Ok(y)
        })
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        f(self.bias);
        f(self.running_mean);
        f(self.running_var);
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// Layer normalisation over the last axes (PyTorch's `nn.LayerNorm(normalized_shape)`):
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, statistics over the trailing axes the
/// weight's shape names (biased variance): the last axis for [`LayerNorm::new`], several (a
/// `[C, H, W]` image, say) for [`LayerNorm::with_shape`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    /// Scale, the normalised shape (`[D]` for one axis), initialised to 1.
    pub weight: Var,
    /// Shift, the normalised shape, initialised to 0.
    pub bias: Var,
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f32,
}

impl LayerNorm {
    /// A layer over rows of `dim` values.
    ///
    /// # Errors
    /// As [`Tape::param`].
    pub fn new<B: Backend, const N: usize>(tape: &mut Tape<B, N>, dim: usize) -> Result<Self> {
        Self::with_shape(tape, &[dim])
    }

    /// A layer over the trailing axes of shape `normalized` (PyTorch's
    /// `nn.LayerNorm([C, H, W])`): its statistics are over all of them, and its weight and
    /// bias have that shape.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no axis; as [`Tape::param`] (a rank up to 4, no zero
    /// size).
    pub fn with_shape<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        normalized: &[usize],
    ) -> Result<Self> {
        if normalized.is_empty() {
            return Err(Error::InvalidArgument {
                what: "layer_norm: the normalised shape needs at least one axis",
            });
        }
        tape.all_or_nothing(|tape| {
            Ok(LayerNorm {
                weight: tape.param_with(normalized, || B::Elem::ONE)?,
                bias: tape.param_with(normalized, || B::Elem::ZERO)?,
                eps: 1e-5,
            })
        })
    }
}

impl Module for LayerNorm {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        let (s, ws) = (x.shape(), self.weight.shape());
        let (r, k) = (s.rank(), ws.rank());
        let mismatch = Error::ShapeMismatch {
            op: "layer_norm",
            lhs: s,
            rhs: ws,
        };
        if k == 0 || r < k || s.dims().get(r - k..) != Some(ws.dims()) || self.bias.shape() != ws {
            return Err(mismatch);
        }
        if k == 1 {
            return normalize_last(tape, x, self.weight, self.bias, self.eps);
        }
        // Several axes: the same over rows of their product, then the input's shape again.
        let d = ws.numel();
        let rows = s.numel() / d;
        let mut out = [1usize; 4];
        for (o, &v) in out.iter_mut().zip(s.dims()) {
            *o = v as usize;
        }
        let out = out.get(..r).unwrap_or(&[]);
        tape.all_or_nothing(|tape| {
            let x2 = tape.reshape(x, &[rows, d])?;
            let w = tape.reshape(self.weight, &[d])?;
            let b = tape.reshape(self.bias, &[d])?;
            let y = normalize_last(tape, x2, w, b, self.eps)?;
            tape.reshape(y, out)
        })
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        f(self.bias);
    }
}

/// Layer normalisation of `x` over its last axis, whose size `weight` and `bias` (`[D]`) have.
fn normalize_last<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    x: Var,
    weight: Var,
    bias: Var,
    eps: f32,
) -> Result<Var> {
    let s = x.shape();
    let r = s.rank();
    let mut dims = [1usize; 4];
    for (o, &v) in dims.iter_mut().zip(s.dims()) {
        *o = v as usize;
    }
    if let Some(last) = dims.get_mut(r - 1) {
        *last = 1;
    }
    let keep = dims.get(..r).unwrap_or(&[]);
    // All its nodes or none.
    tape.all_or_nothing(|tape| {
        let xhat = standardize_last(tape, x, keep, eps)?;
        let y = tape.mul(xhat, weight)?;
        tape.add(y, bias)
    })
}

/// `(x - mean) / sqrt(var + eps)` over the last axis of `x` (the biased variance, as
/// PyTorch's normalisation layers), `keep` being `x`'s shape with the last dimension 1.
fn standardize_last<B: Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    x: Var,
    keep: &[usize],
    eps: f32,
) -> Result<Var> {
    let r = x.shape().rank();
    let mean = tape.mean_axis(x, r - 1)?;
    let mean = tape.reshape(mean, keep)?;
    let c = tape.sub(x, mean)?;
    let sq = tape.square(c)?;
    let var = tape.mean_axis(sq, r - 1)?;
    let var = tape.reshape(var, keep)?;
    let var = tape.add_scalar(var, eps)?;
    let std = tape.sqrt(var)?;
    tape.div(c, std)
}

/// Group normalisation (PyTorch's `nn.GroupNorm(num_groups, num_channels, eps=1e-5)`): the
/// channels of `[N, C, ...]` (rank 2 to 4) split into `groups` groups, each sample's group
/// normalised over its channels and positions (the biased variance), then scaled and shifted
/// per channel. Composed: the layer norm's statistics over `[N, G, C / G * ...]`, and the
/// per-channel affine broadcast; all or nothing. The same in training and evaluation mode (no
/// running statistics), so it works with a batch of one, where [`BatchNorm`] cannot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// The number of groups, dividing the channels.
    pub groups: usize,
    /// Scale, `[C]`, initialised to 1.
    pub weight: Var,
    /// Shift, `[C]`, initialised to 0.
    pub bias: Var,
    /// Added to the variance (PyTorch's default 1e-5).
    pub eps: f32,
}

impl GroupNorm {
    /// A layer over `channels` channels in `groups` groups.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `groups` is at least 1 and divides `channels`; as
    /// [`Tape::param`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        groups: usize,
        channels: usize,
    ) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::InvalidArgument {
                what: "group_norm: num_groups must be at least 1 and divide num_channels",
            });
        }
        tape.all_or_nothing(|tape| {
            let weight = tape.param_with(&[channels], || B::Elem::ONE)?;
            let bias = tape.param_with(&[channels], || B::Elem::ZERO)?;
            Ok(GroupNorm {
                groups,
                weight,
                bias,
                eps: 1e-5,
            })
        })
    }
}

impl Module for GroupNorm {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        let (s, ws) = (x.shape(), self.weight.shape());
        let r = s.rank();
        let (c, g) = (ws.numel(), self.groups);
        let fits = (2..=4).contains(&r)
            && ws.rank() == 1
            && s.dim(1) == c
            && self.bias.shape() == ws
            && g >= 1
            && c.is_multiple_of(g);
        if !fits {
            return Err(Error::ShapeMismatch {
                op: "group_norm",
                lhs: s,
                rhs: ws,
            });
        }
        let n = s.dim(0);
        let per_group = s.numel() / (n * g);
        let mut dims = [1usize; 4];
        for (o, &v) in dims.iter_mut().zip(s.dims()) {
            *o = v as usize;
        }
        // The affine's shape: [C, 1, ...], broadcast over the positions.
        let mut affine = [1usize; 3];
        if let Some(first) = affine.first_mut() {
            *first = c;
        }
        let affine = affine.get(..r - 1).unwrap_or(&[]);
        tape.all_or_nothing(|t| {
            let grouped = t.reshape(x, &[n, g, per_group])?;
            let xhat = standardize_last(t, grouped, &[n, g, 1], self.eps)?;
            let y = t.reshape(xhat, dims.get(..r).unwrap_or(&[]))?;
            let w = t.reshape(self.weight, affine)?;
            let b = t.reshape(self.bias, affine)?;
            let y = t.mul(y, w)?;
            t.add(y, b)
        })
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
        f(self.bias);
    }
}

/// Dropout (PyTorch's `nn.Dropout(p)`): in training mode each element is zeroed with
/// probability `p` and the others scaled by `1 / (1 - p)`; in evaluation mode, the identity.
/// The mask comes from the layer's own seedable generator, so runs are reproducible.
#[derive(Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f32,
    rng: Cell<Rng>,
    /// Training mode (the default); see [`Module::set_training`].
    pub training: bool,
}

impl Dropout {
    /// Dropout with probability `p` and a generator seeded with `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `p` is not in `[0, 1)`.
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                what: "dropout probability must be in [0, 1)",
            });
        }
        Ok(Dropout {
            p,
            rng: Cell::new(Rng::new(seed)),
            training: true,
        })
    }
}

impl Module for Dropout {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        if !self.training || self.p == 0.0 {
            return Ok(x);
        }
        // `p` is a public field: checked here too, as in `Dropout::new`.
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::InvalidArgument {
                what: "dropout probability must be in [0, 1)",
            });
        }
        tape.backend_mut().host_dependent(
            "dropout draws its mask on the host: a recorded or captured step cannot hold it \
             (record or capture the step without dropout)",
        )?;
        let s = x.shape();
        let mut dims = [0usize; 4];
        for (d, &v) in dims.iter_mut().zip(s.dims()) {
            *d = v as usize;
        }
        let mut rng = self.rng.get();
        let keep = B::Elem::from_f64(1.0 / (1.0 - f64::from(self.p)));
        let p = self.p;
        // The mask and the product or neither; the generator moves on only when both ran.
        let y = tape.all_or_nothing(|tape| {
            let mask = tape.input_with(dims.get(..s.rank()).unwrap_or(&[]), || {
                if rng.next_f32() < p {
                    B::Elem::ZERO
                } else {
                    keep
                }
            })?;
            tape.mul(x, mask)
        })?;
        self.rng.set(rng);
        Ok(y)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// An embedding table (PyTorch's `nn.Embedding(V, D)`): `forward` takes integer indices (for
/// example from [`Tape::labels`]) and returns their rows. Initialised from `N(0, 1)`, as
/// PyTorch does; [`Embedding::with_padding`] is `nn.Embedding(V, D, padding_idx=p)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding {
    /// The table, `[V, D]`.
    pub weight: Var,
    /// A row that gets no gradient (PyTorch's `padding_idx`), or none.
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// A table of `vocab` rows of `dim` values.
    ///
    /// # Errors
    /// As [`Tape::param`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        vocab: usize,
        dim: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Ok(Embedding {
            weight: tape.param_with(&[vocab, dim], || B::Elem::from_f64(rng.normal()))?,
            padding_idx: None,
        })
    }

    /// A table whose row `padding_idx` starts as zeros and gets no gradient, so it stays zeros
    /// (PyTorch's `nn.Embedding(V, D, padding_idx=p)`: the index that pads short sequences).
    /// The other rows draw from `N(0, 1)` as [`Embedding::new`]'s, in the same order.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] for a `padding_idx` outside the table; as [`Tape::param`].
    pub fn with_padding<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        vocab: usize,
        dim: usize,
        padding_idx: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if padding_idx >= vocab {
            return Err(Error::IndexOutOfRange {
                op: "embedding padding_idx",
                index: padding_idx,
                bound: vocab,
            });
        }
        let pad =
            padding_idx.saturating_mul(dim)..padding_idx.saturating_add(1).saturating_mul(dim);
        let mut at = 0usize;
        let weight = tape.param_with(&[vocab, dim], || {
            let v = rng.normal();
            at += 1;
            if pad.contains(&(at - 1)) {
                B::Elem::ZERO
            } else {
                B::Elem::from_f64(v)
            }
        })?;
        Ok(Embedding {
            weight,
            padding_idx: Some(padding_idx),
        })
    }
}

impl Module for Embedding {
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        tape.embedding_padded(self.weight, x, self.padding_idx)
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight);
    }
}
