//! Attention: [`Tape::scaled_dot_product_attention`] (PyTorch's
//! `F.scaled_dot_product_attention`), the [`MultiheadAttention`] layer (PyTorch's
//! `nn.MultiheadAttention` with `batch_first=True`), the [`TransformerEncoderLayer`] and the
//! [`TransformerDecoderLayer`], composed of batched products, a softmax and copies, so that
//! every backend runs them (cuBLAS's strided-batched products on a GPU) and gradients follow.
//!
//! `attention(q, k, v) = softmax(q k^T scale + mask) v`, the softmax over the keys, `scale`
//! `1 / sqrt(E)` by default. The causal mask lets query `i` see keys `j <= i` (PyTorch's
//! `is_causal=True`, aligned at the top left); it is made on the device from
//! [`Tape::arange`], so a recording or a CUDA graph holds it. Where PyTorch adds `-inf`, this
//! adds `f32::MIN` (`-3.4e38`): `e^(f32::MIN - max)` is 0 as `e^-inf` is, and no `0 * inf`
//! makes a NaN.
//!
//! Masks are floats, added to the scores as PyTorch adds a float mask; the masked scores are
//! then raised to `f32::MIN` (so `-inf` masks, and masks stacked on each other, stay finite),
//! and a query whose every key is masked (its largest score at most `-1e38`) gets weights 0
//! and an output of 0, as PyTorch's (2.5 and later) gives. For PyTorch's boolean masks, pass
//! 0 where a key is attended and `f32::MIN` (or `-inf`) where it is not; mind that `True`
//! means "attend" in `F.scaled_dot_product_attention` but "masked" in
//! `nn.MultiheadAttention`'s `key_padding_mask` and `attn_mask`.
//!
//! ```
//! use mote::nn::attention::MultiheadAttention;
//! use mote::{Cpu, Module, Rng, Tape};
//!
//! let mut mem = vec![0f32; 1 << 14];
//! let mut tape = Tape::<Cpu<f32>, 128>::new(&mut mem);
//! // nn.MultiheadAttention(16, 4, batch_first=True)
//! let mha = MultiheadAttention::new(&mut tape, 16, 4, &mut Rng::new(0))?;
//! let x = tape.input(&[2, 5, 16], &[0.1; 2 * 5 * 16])?; // [N, L, E]
//! let y = mha.forward(&mut tape, x)?; // self-attention
//! assert_eq!(y.shape().dims(), &[2, 5, 16]);
//! let causal = mha.attend(&mut tape, x, x, x, None, None, true)?;
//! assert_eq!(causal.shape().dims(), &[2, 5, 16]);
//! # Ok::<(), mote::Error>(())
//! ```

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::nn::{init, Dropout, LayerNorm, Linear, Module};
use crate::ops::unary::UnaryOp;
use crate::rng::Rng;
use crate::shape::Shape;
use crate::tape::{Tape, Var};

impl<B: Backend, const N: usize> Tape<B, N> {
    /// PyTorch's `F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal,
    /// scale=scale)` without dropout: `softmax(q k^T scale + mask) v` over the keys, for
    /// queries `[..., L, E]`, keys `[..., S, E]` and values `[..., S, Ev]` with the same
    /// leading dimensions (none, one, or two: rank 2 to 4), giving `[..., L, Ev]`. `scale`
    /// defaults to `1 / sqrt(E)`. `attn_mask` is added to the scores and broadcasts to `[...,
    /// L, S]` (the scores then raised to `f32::MIN`; a query whose every key is masked gets
    /// 0); `is_causal` masks the keys after each query (see the [module](self) docs). All get
    /// gradients (the mask too). Composed, all or nothing: two products, a scale, the mask's
    /// addition, a softmax (and copies from rank 4 to 3 and back).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not fit together or the mask does not
    /// broadcast to the scores; [`Error::InvalidShape`] for ranks outside 2 to 4;
    /// [`Error::InvalidArgument`] for both a mask and `is_causal` (as PyTorch), or a `scale`
    /// that is not finite; and as [`Tape::unary`].
    pub fn scaled_dot_product_attention(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        attn_mask: Option<Var>,
        is_causal: bool,
        scale: Option<f64>,
    ) -> Result<Var> {
        self.scaled_dot_product_attention_dropout(q, k, v, attn_mask, is_causal, scale, None)
    }

    /// [`Tape::scaled_dot_product_attention`] with `dropout` applied to the attention weights
    /// (PyTorch's `dropout_p`, here a [`Dropout`] layer: its probability, generator and
    /// training mode; in evaluation mode, none). A step with dropout in training mode cannot
    /// be recorded or captured (its mask is drawn on the host).
    ///
    /// # Errors
    /// As [`Tape::scaled_dot_product_attention`] and [`Dropout`]'s forward.
    #[allow(clippy::too_many_arguments)]
    pub fn scaled_dot_product_attention_dropout(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        attn_mask: Option<Var>,
        is_causal: bool,
        scale: Option<f64>,
        dropout: Option<&Dropout>,
    ) -> Result<Var> {
        let op = "scaled_dot_product_attention";
        let (qs, ks, vs) = (q.shape, k.shape, v.shape);
        let r = qs.rank();
        if !(2..=4).contains(&r) {
            return Err(Error::InvalidShape { op, shape: qs });
        }
        let lead = |s: &Shape| -> [u32; 2] {
            let mut d = [0; 2];
            for (d, &x) in d.iter_mut().zip(s.dims().get(..r - 2).unwrap_or(&[])) {
                *d = x;
            }
            d
        };
        let fits = ks.rank() == r
            && vs.rank() == r
            && lead(&ks) == lead(&qs)
            && lead(&vs) == lead(&qs)
            && ks.dim(r - 1) == qs.dim(r - 1)
            && vs.dim(r - 2) == ks.dim(r - 2);
        if !fits {
            let rhs = if ks.rank() == r && ks.dim(r - 1) == qs.dim(r - 1) {
                vs
            } else {
                ks
            };
            return Err(Error::ShapeMismatch { op, lhs: qs, rhs });
        }
        let (l, s, e) = (qs.dim(r - 2), ks.dim(r - 2), qs.dim(r - 1));
        // The scores' shape, which the mask must broadcast to.
        let mut dims = [0usize; 4];
        for (d, &x) in dims.iter_mut().zip(qs.dims()) {
            *d = x as usize;
        }
        if let Some(last) = dims.get_mut(r - 1) {
            *last = s;
        }
        let scores_dims = dims.get(..r).unwrap_or(&[]);
        if let Some(m) = attn_mask {
            if is_causal {
                return Err(Error::InvalidArgument {
                    what: "scaled_dot_product_attention: a mask and is_causal together",
                });
            }
            let scores = Shape::new(scores_dims)?;
            if Shape::broadcast(op, scores, m.shape)? != scores {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: scores,
                    rhs: m.shape,
                });
            }
        }
        let scale = match scale {
            Some(c) if c.is_finite() => c,
            Some(_) => {
                return Err(Error::InvalidArgument {
                    what: "scaled_dot_product_attention: the scale must be finite",
                })
            }
            None => 1.0 / libm::sqrt(e as f64),
        };
        // Rank 4 runs as rank 3 over the product of the leading dimensions.
        let batch = qs.dim(0) * if r == 4 { qs.dim(1) } else { 1 };
        self.all_or_nothing(|t| {
            let flat = |t: &mut Self, x: Var, rows: usize| -> Result<Var> {
                if r == 4 {
                    t.reshape(x, &[batch, rows, x.shape.dim(3)])
                } else {
                    Ok(x)
                }
            };
            let (q3, k3, v3) = (flat(t, q, l)?, flat(t, k, s)?, flat(t, v, s)?);
            let scores = t.matmul_t(q3, false, k3, true)?;
            // The scale as a constant of the element type (exact in f64).
            let scale = t.full(&[], B::Elem::from_f64(scale))?;
            let mut scores = t.mul(scores, scale)?;
            let last = scores.shape.rank() - 1;
            if is_causal {
                let bias = t.no_grad(|t| causal_bias(t, l, s))?;
                scores = t.add(scores, bias)?;
            }
            if let Some(m) = attn_mask {
                // Broadcast in the input's rank first, then flattened as the scores are.
                let m = if r == 4 {
                    let full = t.broadcast_to(m, scores_dims)?;
                    t.reshape(full, &[batch, l, s])?
                } else {
                    m
                };
                scores = t.add(scores, m)?;
                // Masks stacked (f32::MIN twice) or -inf stay finite: f32::MIN at most.
                scores = t.clamp_min(scores, f32::MIN)?;
            }
            let mut weights = t.softmax(scores, last)?;
            if attn_mask.is_some() {
                // A query whose every key is masked (its largest score at most -1e38) attends
                // to nothing: 0, as PyTorch's (its "safe" softmax), not an average of them.
                let live = t.no_grad(|t| {
                    let top = t.max_axis(scores, last)?;
                    let top = t.add_scalar(top, 1e38)?;
                    let top = t.mul_scalar(top, 1e30)?;
                    let live = t.clamp(top, 0.0, 1.0)?;
                    let mut dims = [1usize; 4];
                    for (d, &x) in dims.iter_mut().zip(scores.shape.dims()) {
                        *d = x as usize;
                    }
                    if let Some(d) = dims.get_mut(last) {
                        *d = 1;
                    }
                    t.reshape(live, dims.get(..=last).unwrap_or(&[]))
                })?;
                weights = t.mul(weights, live)?;
            }
            if let Some(d) = dropout {
                weights = d.forward(t, weights)?;
            }
            let out = t.matmul(weights, v3)?;
            if r == 4 {
                t.reshape(out, &[qs.dim(0), qs.dim(1), l, vs.dim(3)])
            } else {
                Ok(out)
            }
        })
    }
}

/// `[L, S]`: 0 where key `j <= i` (query `i`), `f32::MIN` after: `min(max(j - i, 0), 1)
/// f32::MIN`, from two ranges.
fn causal_bias<B: Backend, const N: usize>(t: &mut Tape<B, N>, l: usize, s: usize) -> Result<Var> {
    let rows = t.arange(l)?;
    let rows = t.reshape(rows, &[l, 1])?;
    let cols = t.arange(s)?;
    let after = t.sub(cols, rows)?;
    let after = t.clamp(after, 0.0, 1.0)?;
    t.mul_scalar(after, f32::MIN)
}

/// PyTorch's `nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)`: inputs
/// `[N, L, E]`, the queries, keys and values projected by one `[3E, E]` weight (and `[3E]`
/// bias), split into `num_heads` heads of `E / num_heads`, each attended as
/// [`Tape::scaled_dot_product_attention`], joined and projected by `out_proj`. With biases,
/// keys and values of the queries' width (`kdim = vdim = E`), without PyTorch's
/// `add_bias_kv`/`add_zero_attn`; dropout on the attention weights is
/// [`MultiheadAttention::attend_dropout`]'s; the averaged attention weights (`need_weights`)
/// are not returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiheadAttention {
    /// The input projection (`in_proj_weight` `[3E, E]`, `in_proj_bias` `[3E]`): rows `0..E`
    /// project the queries, `E..2E` the keys, `2E..3E` the values.
    pub in_proj: Linear,
    /// The output projection (`out_proj`, `[E, E]` and `[E]`).
    pub out_proj: Linear,
    /// The number of heads.
    pub heads: usize,
}

impl MultiheadAttention {
    /// A layer with PyTorch's initialisation: `in_proj_weight` Xavier-uniform, both biases 0,
    /// `out_proj.weight` as a [`Linear`]'s.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `num_heads` is at least 1 and divides `embed_dim`;
    /// as [`Linear::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        embed_dim: usize,
        num_heads: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
            return Err(Error::InvalidArgument {
                what: "multihead_attention: num_heads must be at least 1 and divide embed_dim",
            });
        }
        tape.all_or_nothing(|t| {
            let in_proj = Linear::new(t, embed_dim, embed_dim.saturating_mul(3), rng)?;
            init::xavier_uniform(t, in_proj.weight, 1.0, rng)?;
            let out_proj = Linear::new(t, embed_dim, embed_dim, rng)?;
            for b in [in_proj.bias, out_proj.bias].into_iter().flatten() {
                init::zeros(t, b)?;
            }
            Ok(MultiheadAttention {
                in_proj,
                out_proj,
                heads: num_heads,
            })
        })
    }

    /// The embedding width `E`.
    pub fn embed_dim(&self) -> usize {
        self.out_proj.out_features()
    }

    /// PyTorch's `forward(query, key, value, key_padding_mask, attn_mask=..., is_causal=...)`
    /// with `need_weights=False`: `query` `[N, L, E]`, `key` and `value` `[N, S, E]`, giving
    /// `[N, L, E]`. `attn_mask` (`[L, S]`, or `[N * heads, L, S]` as PyTorch's, batch-major;
    /// any shape that broadcasts to that is taken) and
    /// `key_padding_mask` (`[N, S]`) are float masks added to every head's scores (see the
    /// [module](self) docs for boolean ones); `is_causal` masks the keys after each query,
    /// with the other masks or alone (PyTorch's takes it as a hint that `attn_mask` is the
    /// causal mask; here it makes that mask, so `attn_mask` need not be given). When
    /// `query`, `key` and `value` are one tensor the three projections are one product. All
    /// or nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not fit; as
    /// [`Tape::scaled_dot_product_attention`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        query: Var,
        key: Var,
        value: Var,
        key_padding_mask: Option<Var>,
        attn_mask: Option<Var>,
        is_causal: bool,
    ) -> Result<Var> {
        self.attend_dropout(
            tape,
            query,
            key,
            value,
            key_padding_mask,
            attn_mask,
            is_causal,
            None,
        )
    }

    /// [`MultiheadAttention::attend`] with `dropout` on the attention weights (PyTorch's
    /// `nn.MultiheadAttention(dropout=p)`; see
    /// [`Tape::scaled_dot_product_attention_dropout`]).
    ///
    /// # Errors
    /// As [`MultiheadAttention::attend`].
    #[allow(clippy::too_many_arguments)]
    pub fn attend_dropout<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        query: Var,
        key: Var,
        value: Var,
        key_padding_mask: Option<Var>,
        attn_mask: Option<Var>,
        is_causal: bool,
        dropout: Option<&Dropout>,
    ) -> Result<Var> {
        let op = "multihead_attention";
        let e = self.embed_dim();
        if self.heads == 0 || !e.is_multiple_of(self.heads) {
            return Err(Error::InvalidArgument {
                what: "multihead_attention: heads must be at least 1 and divide embed_dim",
            });
        }
        let (qs, ks, vs) = (query.shape(), key.shape(), value.shape());
        let fits = qs.rank() == 3
            && qs.dim(2) == e
            && ks.dims() == vs.dims()
            && ks.rank() == 3
            && ks.dim(0) == qs.dim(0)
            && ks.dim(2) == e;
        if !fits {
            let rhs = if qs.rank() == 3 && qs.dim(2) == e {
                ks
            } else {
                self.in_proj.weight.shape()
            };
            return Err(Error::ShapeMismatch { op, lhs: qs, rhs });
        }
        let (n, l, s, h) = (qs.dim(0), qs.dim(1), ks.dim(1), self.heads);
        if let Some(p) = key_padding_mask {
            if p.shape().dims() != [n as u32, s as u32] {
                return Err(Error::ShapeMismatch {
                    op: "multihead_attention key_padding_mask",
                    lhs: ks,
                    rhs: p.shape(),
                });
            }
        }
        let dh = e / h;
        tape.all_or_nothing(|t| {
            let (q, k, v) = if query == key && key == value {
                let qkv = t.linear(query, self.in_proj.weight, self.in_proj.bias)?;
                let part = |t: &mut Tape<B, N>, i: usize| t.slice(qkv, 2, i * e, e);
                (part(t, 0)?, part(t, 1)?, part(t, 2)?)
            } else {
                let project = |t: &mut Tape<B, N>, x: Var, i: usize| -> Result<Var> {
                    let w = t.slice(self.in_proj.weight, 0, i * e, e)?;
                    let b = match self.in_proj.bias {
                        Some(b) => Some(t.slice(b, 0, i * e, e)?),
                        None => None,
                    };
                    t.linear(x, w, b)
                };
                (
                    project(t, query, 0)?,
                    project(t, key, 1)?,
                    project(t, value, 2)?,
                )
            };
            // [N, T, E] -> [N * heads, T, E / heads].
            let heads = |t: &mut Tape<B, N>, x: Var, len: usize| -> Result<Var> {
                let x = t.reshape(x, &[n, len, h, dh])?;
                let x = t.transpose(x, 1, 2)?;
                t.reshape(x, &[n * h, len, dh])
            };
            let (q, k, v) = (heads(t, q, l)?, heads(t, k, s)?, heads(t, v, s)?);
            let mut mask = attn_mask;
            if let Some(p) = key_padding_mask {
                // [N, S] -> [N * heads, L, S], plus the attention mask.
                let p = t.reshape(p, &[n, 1, 1, s])?;
                let p = t.broadcast_to(p, &[n, h, l, s])?;
                let p = t.reshape(p, &[n * h, l, s])?;
                mask = Some(match mask {
                    Some(m) => t.add(p, m)?,
                    None => p,
                });
            }
            // The causal mask joins the others, or is attention's own.
            let mut causal = is_causal;
            if let (true, Some(m)) = (is_causal, mask) {
                let bias = t.no_grad(|t| causal_bias(t, l, s))?;
                mask = Some(t.add(m, bias)?);
                causal = false;
            }
            let o = t.scaled_dot_product_attention_dropout(q, k, v, mask, causal, None, dropout)?;
            // [N * heads, L, E / heads] -> [N, L, E].
            let o = t.reshape(o, &[n, h, l, dh])?;
            let o = t.transpose(o, 1, 2)?;
            let o = t.reshape(o, &[n, l, e])?;
            self.out_proj.forward(t, o)
        })
    }
}

impl Module for MultiheadAttention {
    /// Self-attention: [`MultiheadAttention::attend`] with `x` as the queries, keys and
    /// values, no mask.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        self.attend(tape, x, x, x, None, None, false)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.in_proj.visit_params(f);
        self.out_proj.visit_params(f);
    }
}

/// The settings of a [`TransformerEncoderLayer`]: PyTorch's `nn.TransformerEncoderLayer`
/// arguments, with its defaults from [`TransformerEncoderConfig::new`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerEncoderConfig {
    /// The model width `E` (`d_model`).
    pub d_model: usize,
    /// The attention heads (`nhead`), dividing `d_model`.
    pub nhead: usize,
    /// The feed-forward width (`dim_feedforward`, PyTorch's default 2048).
    pub dim_feedforward: usize,
    /// The dropout probability on the attention weights, after the attention, inside and after
    /// the feed-forward block (PyTorch's default 0.1), in `[0, 1)`.
    pub dropout: f32,
    /// The feed-forward activation (PyTorch's default ReLU; `UnaryOp::GeluErf` is its
    /// `"gelu"`).
    pub activation: UnaryOp,
    /// The layer norms' epsilon (`layer_norm_eps`, 1e-5).
    pub layer_norm_eps: f32,
    /// Normalise before each block rather than after it (`norm_first`, false).
    pub norm_first: bool,
}

impl TransformerEncoderConfig {
    /// PyTorch's defaults for `d_model` and `nhead`.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerEncoderConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: UnaryOp::Relu,
            layer_norm_eps: 1e-5,
            norm_first: false,
        }
    }
}

/// PyTorch's `nn.TransformerEncoderLayer(..., batch_first=True)`: self-attention and a
/// feed-forward block (`linear2(dropout(activation(linear1(x))))`), each added to its input
/// and layer-normalised, after (`x = norm1(x + sa(x)); x = norm2(x + ff(x))`) or, with
/// `norm_first`, before (`x = x + sa(norm1(x)); x = x + ff(norm2(x))`). Inputs `[N, L, E]`.
/// Dropout, as PyTorch's, on the attention weights, after the attention, and inside and after
/// the feed-forward block: one generator for the four.
///
/// A clone shares the parameters (tied weights) and starts from a copy of the dropout
/// generator's state (it draws the same masks): make each layer of a stack with
/// [`TransformerEncoderLayer::new`]. Stacked in a tuple (PyTorch's `nn.TransformerEncoder`),
/// layers run [`Module::forward`], without masks: for masks, call
/// [`TransformerEncoderLayer::forward_masked`] on each in turn.
#[derive(Clone, Debug)]
pub struct TransformerEncoderLayer {
    /// The self-attention.
    pub self_attn: MultiheadAttention,
    /// The feed-forward block's first layer, `[F, E]`.
    pub linear1: Linear,
    /// The feed-forward block's second layer, `[E, F]`.
    pub linear2: Linear,
    /// The attention block's layer norm.
    pub norm1: LayerNorm,
    /// The feed-forward block's layer norm.
    pub norm2: LayerNorm,
    /// The dropout (on the attention weights, after the attention, inside and after the
    /// feed-forward block).
    pub dropout: Dropout,
    /// The feed-forward activation.
    pub activation: UnaryOp,
    /// Normalise before each block.
    pub norm_first: bool,
}

impl TransformerEncoderLayer {
    /// A layer with PyTorch's initialisation (see [`MultiheadAttention::new`], [`Linear::new`],
    /// [`LayerNorm::new`]); the dropout's generator is seeded from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for heads that do not divide the width, a dropout outside
    /// `[0, 1)` or an epsilon that is not positive and finite; as [`Linear::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: TransformerEncoderConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let c = config;
        if !(c.layer_norm_eps > 0.0 && c.layer_norm_eps.is_finite()) {
            return Err(Error::InvalidArgument {
                what: "transformer layer: layer_norm_eps must be positive and finite",
            });
        }
        // The settings checked before the generator moves: the dropout, the heads.
        Dropout::new(c.dropout, 0)?;
        if c.nhead == 0 || !c.d_model.is_multiple_of(c.nhead) {
            return Err(Error::InvalidArgument {
                what: "transformer layer: nhead must be at least 1 and divide d_model",
            });
        }
        let seed = u64::from(rng.next_u32()) << 32 | u64::from(rng.next_u32());
        let dropout = Dropout::new(c.dropout, seed)?;
        tape.all_or_nothing(|t| {
            let self_attn = MultiheadAttention::new(t, c.d_model, c.nhead, rng)?;
            let linear1 = Linear::new(t, c.d_model, c.dim_feedforward, rng)?;
            let linear2 = Linear::new(t, c.dim_feedforward, c.d_model, rng)?;
            let mut norm1 = LayerNorm::new(t, c.d_model)?;
            let mut norm2 = LayerNorm::new(t, c.d_model)?;
            norm1.eps = c.layer_norm_eps;
            norm2.eps = c.layer_norm_eps;
            Ok(TransformerEncoderLayer {
                self_attn,
                linear1,
                linear2,
                norm1,
                norm2,
                dropout: dropout.clone(),
                activation: c.activation,
                norm_first: c.norm_first,
            })
        })
    }

    /// PyTorch's `forward(src, src_mask, src_key_padding_mask, is_causal)`: `x` `[N, L, E]`,
    /// the masks as [`MultiheadAttention::attend`] takes them.
    ///
    /// # Errors
    /// As [`MultiheadAttention::attend`] and the layers'.
    pub fn forward_masked<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        src_mask: Option<Var>,
        src_key_padding_mask: Option<Var>,
        is_causal: bool,
    ) -> Result<Var> {
        let attend = |t: &mut Tape<B, N>, x: Var| -> Result<Var> {
            let a = self.self_attn.attend_dropout(
                t,
                x,
                x,
                x,
                src_key_padding_mask,
                src_mask,
                is_causal,
                Some(&self.dropout),
            )?;
            self.dropout.forward(t, a)
        };
        let feed = |t: &mut Tape<B, N>, x: Var| {
            feed_forward(
                t,
                x,
                [&self.linear1, &self.linear2],
                self.activation,
                &self.dropout,
            )
        };
        residual_blocks(
            tape,
            x,
            self.norm_first,
            [(&attend, &self.norm1), (&feed, &self.norm2)],
        )
    }
}

/// A transformer layer's feed-forward block and the dropout after it:
/// `dropout(linear2(dropout(activation(linear1(x)))))`.
fn feed_forward<B: Backend, const N: usize>(
    t: &mut Tape<B, N>,
    x: Var,
    [linear1, linear2]: [&Linear; 2],
    activation: UnaryOp,
    dropout: &Dropout,
) -> Result<Var> {
    let h = linear1.forward(t, x)?;
    let h = t.unary(activation, h)?;
    let h = dropout.forward(t, h)?;
    let h = linear2.forward(t, h)?;
    dropout.forward(t, h)
}

/// A block of a transformer layer: a function of the tape and the block's input.
type Block<'a, B, const N: usize> = &'a dyn Fn(&mut Tape<B, N>, Var) -> Result<Var>;

/// `x` through `blocks` in turn, each added to its input and layer-normalised: after the sum
/// (`x = norm(x + block(x))`) or, with `norm_first`, before the block (`x = x +
/// block(norm(x))`). All or nothing.
fn residual_blocks<B: Backend, const N: usize, const K: usize>(
    tape: &mut Tape<B, N>,
    x: Var,
    norm_first: bool,
    blocks: [(Block<'_, B, N>, &LayerNorm); K],
) -> Result<Var> {
    tape.all_or_nothing(|t| {
        let mut x = x;
        for (block, norm) in blocks {
            x = if norm_first {
                let n = norm.forward(t, x)?;
                let b = block(t, n)?;
                t.add(x, b)?
            } else {
                let b = block(t, x)?;
                let s = t.add(x, b)?;
                norm.forward(t, s)?
            };
        }
        Ok(x)
    })
}

impl Module for TransformerEncoderLayer {
    /// [`TransformerEncoderLayer::forward_masked`] without masks.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        self.forward_masked(tape, x, None, None, false)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.self_attn.visit_params(f);
        self.linear1.visit_params(f);
        self.linear2.visit_params(f);
        self.norm1.visit_params(f);
        self.norm2.visit_params(f);
    }

    fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
    }
}

/// The settings of a [`TransformerDecoderLayer`]: the encoder layer's.
pub type TransformerDecoderConfig = TransformerEncoderConfig;

/// The masks of [`TransformerDecoderLayer::forward_masked`], PyTorch's keyword arguments of
/// `nn.TransformerDecoderLayer.forward` (float masks, as [`MultiheadAttention::attend`]
/// takes them); none by default. `*_is_causal` makes the causal mask (top-left aligned) and
/// adds it to any mask given, where PyTorch's is a hint that the given mask is causal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderMasks {
    /// The self-attention's `attn_mask` (`tgt_mask`: `[T, T]` or `[N * heads, T, T]`).
    pub tgt_mask: Option<Var>,
    /// The cross-attention's `attn_mask` (`memory_mask`: `[T, S]` or `[N * heads, T, S]`).
    pub memory_mask: Option<Var>,
    /// The self-attention's `key_padding_mask` (`[N, T]`).
    pub tgt_key_padding_mask: Option<Var>,
    /// The cross-attention's `key_padding_mask` (`[N, S]`).
    pub memory_key_padding_mask: Option<Var>,
    /// Mask the targets after each target in the self-attention (`tgt_is_causal`).
    pub tgt_is_causal: bool,
    /// Mask the memory after each target in the cross-attention (`memory_is_causal`).
    pub memory_is_causal: bool,
}

/// PyTorch's `nn.TransformerDecoderLayer(..., batch_first=True)`: self-attention over the
/// targets `[N, T, E]`, attention from them to the encoder's output (the memory, `[N, S, E]`)
/// and a feed-forward block, each added to its input and layer-normalised, after
/// (`x = norm1(x + sa(x)); x = norm2(x + mha(x, mem)); x = norm3(x + ff(x))`) or, with
/// `norm_first`, before (`x = x + sa(norm1(x)); x = x + mha(norm2(x), mem); x = x +
/// ff(norm3(x))`). Dropout as PyTorch's (on both attentions' weights, after each block, inside
/// the feed-forward block), one generator for all. A clone ties weights and copies the
/// generator's state, as an encoder layer's. Not a [`Module`] (it takes two inputs): its
/// [`TransformerDecoderLayer::visit_params`] and [`TransformerDecoderLayer::set_training`] are
/// its own, and `nn::freeze` and `nn::param_count` do not take it (freeze its attentions,
/// linear layers and norms, which are modules).
#[derive(Clone, Debug)]
pub struct TransformerDecoderLayer {
    /// The self-attention.
    pub self_attn: MultiheadAttention,
    /// The attention to the memory (`multihead_attn`).
    pub multihead_attn: MultiheadAttention,
    /// The feed-forward block's first layer, `[F, E]`.
    pub linear1: Linear,
    /// The feed-forward block's second layer, `[E, F]`.
    pub linear2: Linear,
    /// The self-attention block's layer norm.
    pub norm1: LayerNorm,
    /// The cross-attention block's layer norm.
    pub norm2: LayerNorm,
    /// The feed-forward block's layer norm.
    pub norm3: LayerNorm,
    /// The dropout.
    pub dropout: Dropout,
    /// The feed-forward activation.
    pub activation: UnaryOp,
    /// Normalise before each block.
    pub norm_first: bool,
}

impl TransformerDecoderLayer {
    /// A layer with PyTorch's initialisation; the dropout's generator is seeded from `rng`.
    ///
    /// # Errors
    /// As [`TransformerEncoderLayer::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        config: TransformerDecoderConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        // The encoder layer's parts and checks, and one more attention and layer norm.
        let c = config;
        tape.all_or_nothing(|t| {
            let enc = TransformerEncoderLayer::new(t, c, rng)?;
            let multihead_attn = MultiheadAttention::new(t, c.d_model, c.nhead, rng)?;
            let mut norm3 = LayerNorm::new(t, c.d_model)?;
            norm3.eps = c.layer_norm_eps;
            Ok(TransformerDecoderLayer {
                self_attn: enc.self_attn,
                multihead_attn,
                linear1: enc.linear1,
                linear2: enc.linear2,
                norm1: enc.norm1,
                norm2: enc.norm2,
                norm3,
                dropout: enc.dropout,
                activation: enc.activation,
                norm_first: enc.norm_first,
            })
        })
    }

    /// PyTorch's `forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
    /// memory_key_padding_mask, tgt_is_causal, memory_is_causal)`: targets `[N, T, E]`, memory
    /// `[N, S, E]`, giving `[N, T, E]`. All or nothing (but for the dropout's generator, as
    /// every layer's).
    ///
    /// # Errors
    /// As [`MultiheadAttention::attend`] and the layers'.
    pub fn forward_masked<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        tgt: Var,
        memory: Var,
        masks: DecoderMasks,
    ) -> Result<Var> {
        // The memory's shape first: a refusal then moves no dropout generator.
        let (ts, ms) = (tgt.shape(), memory.shape());
        if ms.rank() != 3 || ts.rank() != 3 || ms.dim(0) != ts.dim(0) || ms.dim(2) != ts.dim(2) {
            return Err(Error::ShapeMismatch {
                op: "transformer_decoder_layer memory",
                lhs: ts,
                rhs: ms,
            });
        }
        let m = masks;
        let d = Some(&self.dropout);
        let sa = |t: &mut Tape<B, N>, x: Var| -> Result<Var> {
            let a = self.self_attn.attend_dropout(
                t,
                x,
                x,
                x,
                m.tgt_key_padding_mask,
                m.tgt_mask,
                m.tgt_is_causal,
                d,
            )?;
            self.dropout.forward(t, a)
        };
        let mha = |t: &mut Tape<B, N>, x: Var| -> Result<Var> {
            let a = self.multihead_attn.attend_dropout(
                t,
                x,
                memory,
                memory,
                m.memory_key_padding_mask,
                m.memory_mask,
                m.memory_is_causal,
                d,
            )?;
            self.dropout.forward(t, a)
        };
        let ff = |t: &mut Tape<B, N>, x: Var| {
            feed_forward(
                t,
                x,
                [&self.linear1, &self.linear2],
                self.activation,
                &self.dropout,
            )
        };
        residual_blocks(
            tape,
            tgt,
            self.norm_first,
            [(&sa, &self.norm1), (&mha, &self.norm2), (&ff, &self.norm3)],
        )
    }

    /// Calls `f` with each parameter, in PyTorch's order (`self_attn`, `multihead_attn`, the
    /// feed-forward block, the three norms).
    pub fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.self_attn.visit_params(f);
        self.multihead_attn.visit_params(f);
        self.linear1.visit_params(f);
        self.linear2.visit_params(f);
        self.norm1.visit_params(f);
        self.norm2.visit_params(f);
        self.norm3.visit_params(f);
    }

    /// Training or evaluation mode (the dropout).
    pub fn set_training(&mut self, training: bool) {
        self.dropout.set_training(training);
    }
}
