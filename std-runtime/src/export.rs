//! Export for firmware: the core's weight blob ([`mote::blob`]) or a Rust source file of
//! constants, in f32, f16 or bf16.
//!
//! Both formats hold the same tensors, in the same order ([`tensors`] lists them, with their
//! names): the blob's tensor `k` is the Rust file's `k`-th weight array, which follows the
//! description constants `SIZES` (the linear layers' sizes, input first), for a CNN `IMAGE`
//! (`[C, H, W]`) and `CONV` (each block's output channels), `ACTIVATION` (the model's
//! activation by name, `relu` unless trained with `--activation`; its definition in the
//! constant's comment), `DTYPE`, `FEATURES` and (for classification) `CLASSES`. Every tensor is
//! row-major and in the export's dtype, the standardisation tensors of a CNN included (the Rust
//! file writes f16 and bf16 as `u16` bit patterns). For regression, the target scaling is
//! folded into the last linear layer (`W' = W s`, `b' = b s + m`), so firmware reads outputs
//! in the data's own units.
//!
//! # An MLP
//!
//! `LAYER{i}_WEIGHT` (`[out, in]`) then `LAYER{i}_BIAS` (`[out]`) for each layer `i`, input
//! first, with the activation between layers. The input standardisation is folded into the
//! first layer (`W' = W / std`, `b' = b - W' mean`), so firmware feeds raw features.
//!
//! # A CNN
//!
//! A convolution shares its weights across positions, so a per-pixel standardisation cannot be
//! folded into it: the export carries it as two tensors before the network's parameters. With
//! `F = C x H x W` input features (the checkpoint's `image`, for the digits `1 x 8 x 8`), `K`
//! convolution blocks of `c_1 .. c_K` channels (`c_0 = C`) and `L` linear layers:
//!
//! | k | name | shape | what |
//! | --- | --- | --- | --- |
//! | 0 | `INPUT_MEAN` | `[F]` | the training split's mean of each feature |
//! | 1 | `INPUT_INV_STD` | `[F]` | `1 / std` of each feature |
//! | 2 + 2j | `CONV{j}_WEIGHT` | `[c_{j+1}, c_j, 3, 3]` | block `j`'s kernels, `[out, in, row, column]` |
//! | 3 + 2j | `CONV{j}_BIAS` | `[c_{j+1}]` | block `j`'s bias |
//! | 2 + 2K + 2i | `LAYER{i}_WEIGHT` | `[out, in]` | linear layer `i`, `in` of layer 0 = `c_K (H >> K) (W >> K)` |
//! | 3 + 2K + 2i | `LAYER{i}_BIAS` | `[out]` | its bias |
//!
//! Firmware computes, for a raw row `x` of `F` features (in the training data's column order):
//!
//! 1. `x[f] = (x[f] - INPUT_MEAN[f]) * INPUT_INV_STD[f]` for each feature `f`, then reads `x`
//!    as a `[C, H, W]` image (row-major: feature `f` is channel `f / (H W)`, row
//!    `f / W % H`, column `f % W`).
//! 2. Each block `j`: a 3x3 cross-correlation with zero padding 1 (same size),
//!    `y[o][r][c] = b[o] + sum over i, dr, dc in 0..3 of w[o][i][dr][dc] x[i][r + dr - 1][c + dc - 1]`
//!    (zero outside the image), then the activation, then 2x2 max-pooling with stride 2
//!    (`z[o][r][c] = max of y[o][2r + a][2c + b]`, a, b in 0..2; an odd last row or column is
//!    dropped), halving the height and width.
//! 3. Flatten the last block's `[c_K, H >> K, W >> K]` output row-major (channel, row,
//!    column), then the linear layers `y = W x + b` with the activation between them (not
//!    after the last): the outputs are logits (classification) or values in the target's
//!    units (regression).
//!
//! On the core, that is: `tape.sub(x, mean)` and `tape.mul(_, inv_std)` (both broadcast over
//! the rows of `[n, F]`), then the network of [`crate::model::build_net`] built on the same
//! tape after two frozen `[F]` parameters, so [`mote::blob::load`] fills all of them in order
//! (or [`mote::blob::Blob::create_params`] and `Conv2d`/`Linear` built from the handles).

use mote::blob::{self, Dtype};
use mote::{Cpu, Tape};

use crate::checkpoint::Checkpoint;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::model::NODES;

/// One exported tensor: the blob's tensor and the Rust file's constant of the same index.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The Rust constant's name: `INPUT_MEAN`, `INPUT_INV_STD`, `CONV{j}_WEIGHT`,
    /// `CONV{j}_BIAS`, `LAYER{i}_WEIGHT` or `LAYER{i}_BIAS`.
    pub name: String,
    /// The shape.
    pub dims: Vec<usize>,
    /// The values, row-major, in f32 (before conversion to the export's dtype).
    pub values: Vec<f32>,
    /// What it is, for the Rust constant's doc comment.
    pub doc: String,
}

fn internal(what: &str) -> Error {
    Error::invalid(format!("internal: {what}"))
        .with_hint("the checkpoint does not match its model description; retrain or re-save it")
}

/// The exported tensors of `ck`, in blob order (see the module docs): for an MLP, the layers
/// with the standardisation folded into the first; for a CNN, `INPUT_MEAN` and
/// `INPUT_INV_STD`, then the convolution blocks' and the linear layers' parameters. For
/// regression the target scaling is folded into the last layer.
///
/// # Errors
/// `Invalid` when the checkpoint's tensors do not fit its model description.
pub fn tensors(ck: &Checkpoint) -> Result<Vec<Tensor>> {
    let spec = &ck.spec;
    let dims = spec.param_dims();
    if dims.len() != ck.params.len()
        || dims
            .iter()
            .zip(&ck.params)
            .any(|((_, d), p)| d.iter().product::<usize>() != p.len())
    {
        return Err(internal("the parameters do not fit the model's layers"));
    }
    let (mean, std) = (&spec.norm.mean, &spec.norm.std);
    if mean.len() != spec.inputs() || std.len() != spec.inputs() {
        return Err(internal(
            "the standardisation statistics do not fit the inputs",
        ));
    }
    let cnn = !spec.conv.is_empty();
    let mut out = Vec::with_capacity(dims.len() + 2);
    if cnn {
        let f = spec.inputs();
        out.push(Tensor {
            name: "INPUT_MEAN".into(),
            dims: vec![f],
            values: mean.clone(),
            doc: format!(
                "Input standardisation, applied before the network, shape [{f}]: each feature's mean on the training split; x[f] = (raw[f] - INPUT_MEAN[f]) * INPUT_INV_STD[f]."
            ),
        });
        out.push(Tensor {
            name: "INPUT_INV_STD".into(),
            dims: vec![f],
            values: std.iter().map(|&s| (1.0 / s as f64) as f32).collect(),
            doc: format!(
                "Input standardisation, applied before the network, shape [{f}]: 1 / each feature's standard deviation (multiply after subtracting INPUT_MEAN)."
            ),
        });
    }
    let blocks = spec.conv.len();
    let layers = spec.sizes.len().saturating_sub(1);
    let mut pairs = dims.chunks(2).zip(ck.params.chunks(2));
    for (j, pair) in pairs.by_ref().take(blocks).enumerate() {
        let ([(_, dw), (_, db)], [w, b]) = pair else {
            return Err(internal("a convolution block without weight and bias"));
        };
        out.push(Tensor {
            name: format!("CONV{j}_WEIGHT"),
            dims: dw.clone(),
            values: w.clone(),
            doc: format!(
                "Convolution block {j} weight, shape [{}] (out, in, row, column), row-major.",
                list(dw, ", ")
            ),
        });
        out.push(Tensor {
            name: format!("CONV{j}_BIAS"),
            dims: db.clone(),
            values: b.clone(),
            doc: format!("Convolution block {j} bias, shape [{}].", list(db, ", ")),
        });
    }
    for (l, pair) in pairs.enumerate() {
        let ([(_, dw), (_, db)], [w, b]) = pair else {
            return Err(internal("a linear layer without weight and bias"));
        };
        let ins = dw.get(1).copied().unwrap_or(1).max(1);
        let mut wt: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let mut b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        if l == 0 && !cnn {
            // W' = W / std, b' = b - W' mean
            for (row, bo) in wt.chunks_mut(ins).zip(b.iter_mut()) {
                for ((w, &m), &s) in row.iter_mut().zip(mean).zip(std) {
                    *w /= s as f64;
                    *bo -= *w * m as f64;
                }
            }
        }
        if l + 1 == layers && spec.task == Task::Regression {
            let (m, s) = (spec.target.0 as f64, spec.target.1 as f64);
            wt.iter_mut().for_each(|w| *w *= s);
            b.iter_mut().for_each(|v| *v = *v * s + m);
        }
        out.push(Tensor {
            name: format!("LAYER{l}_WEIGHT"),
            dims: dw.clone(),
            values: wt.iter().map(|&v| v as f32).collect(),
            doc: format!(
                "Layer {l} weight, shape [{}] (out, in), row-major.",
                list(dw, ", ")
            ),
        });
        out.push(Tensor {
            name: format!("LAYER{l}_BIAS"),
            dims: db.clone(),
            values: b.iter().map(|&v| v as f32).collect(),
            doc: format!("Layer {l} bias, shape [{}].", list(db, ", ")),
        });
    }
    Ok(out)
}

/// Checks that every value of `t` is finite in `dtype` (a large `1 / std` can overflow f16).
fn check_finite(t: &[Tensor], dtype: Dtype) -> Result<()> {
    for x in t {
        for &v in &x.values {
            let ok = match dtype {
                Dtype::F32 => v.is_finite(),
                Dtype::F16 => half::f16::from_f32(v).is_finite(),
                Dtype::Bf16 => half::bf16::from_f32(v).is_finite(),
            };
            if !ok {
                return Err(Error::invalid(format!(
                    "{} holds {v}, which is not a finite {}",
                    x.name,
                    dtype_name(dtype)
                ))
                .with_hint(if dtype == Dtype::F16 {
                    "export with --dtype bf16 or f32, whose range is wider"
                } else {
                    "the checkpoint holds non-finite weights: retrain it"
                }));
            }
        }
    }
    Ok(())
}

/// The weight blob of `ck` (the tensors of [`tensors`], in order) in `dtype`.
///
/// # Errors
/// As [`tensors`]; `Invalid` when a value does not fit `dtype`; a core error.
pub fn blob_bytes(ck: &Checkpoint, dtype: Dtype) -> Result<Vec<u8>> {
    let params = tensors(ck)?;
    check_finite(&params, dtype)?;
    let floats: usize = params.iter().map(|p| p.values.len()).sum();
    let mut mem = vec![0f32; floats];
    let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
    for p in &params {
        tape.param_frozen(&p.dims, &p.values)?;
    }
    let mut out = vec![0u8; blob::size(&tape, dtype)];
    let n = blob::save(&tape, dtype, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::Bf16 => "bf16",
    }
}

fn list<T: ToString>(v: &[T], sep: &str) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// A Rust source file of `pub const` arrays for `ck` in `dtype`: `SIZES` (the linear layers' sizes,
/// input first), for a CNN `IMAGE` (`[C, H, W]`) and `CONV` (each block's channels), `ACTIVATION`,
/// `DTYPE`, `FEATURES`, `CLASSES` (classification), then the tensors of [`tensors`] in blob order
/// (`LAYER{i}_WEIGHT` and `LAYER{i}_BIAS`; for a CNN first `INPUT_MEAN`, `INPUT_INV_STD` and
/// `CONV{j}_WEIGHT`, `CONV{j}_BIAS`), as `f32`, or as `u16` bit patterns for f16/bf16
/// (`half::f16::from_bits`).
///
/// # Errors
/// As [`tensors`]; `Invalid` when a value does not fit `dtype`.
pub fn rust_source(ck: &Checkpoint, dtype: Dtype, source: &str) -> Result<String> {
    // The name goes into a comment: a line break in it (a file may be named so) would end the
    // comment and make the rest of the name code.
    let source = crate::escape_controls(source);
    let spec = &ck.spec;
    let params = tensors(ck)?;
    check_finite(&params, dtype)?;
    let sizes = &spec.sizes;
    let dims = list(sizes, "-");
    let cnn = !spec.conv.is_empty();
    let act = spec.activation.title();
    let mut s = String::new();
    if cnn {
        s.push_str(&format!(
            "//! Generated by `mote export` from {source}: a CNN over {} images, convolution blocks of {} channels\n",
            list(&spec.image, "x"),
            list(&spec.conv, ",")
        ));
        s.push_str(&format!(
            "//! (3x3 convolution with padding 1, {act}, 2x2 max-pooling), then an MLP {dims} ({act} between layers), {}.\n",
            spec.task.name()
        ));
        s.push_str(
            "//! Standardise the raw features first: x[f] = (raw[f] - INPUT_MEAN[f]) * INPUT_INV_STD[f];\n",
        );
        s.push_str(
            "//! read x as IMAGE [C, H, W] (row-major), run the blocks, flatten (channel, row, column), run the layers.\n",
        );
    } else {
        s.push_str(&format!(
            "//! Generated by `mote export` from {source}: an MLP {dims} ({act} between layers), {}.\n",
            spec.task.name()
        ));
        s.push_str(
            "//! The input standardisation is folded into the first layer: feed raw features.\n",
        );
    }
    s.push_str(&format!("//! Weights are {} ", dtype_name(dtype)));
    s.push_str(match dtype {
        Dtype::F32 => "values.\n",
        Dtype::F16 => "bit patterns (`half::f16::from_bits`).\n",
        Dtype::Bf16 => "bit patterns (`half::bf16::from_bits`).\n",
    });
    s.push_str("#![allow(clippy::all, clippy::pedantic)]\n\n");
    if cnn {
        s.push_str(&format!(
            "/// Linear layer sizes, input first (the input is the last block's flattened output).\npub const SIZES: [usize; {}] = [{}];\n",
            sizes.len(),
            list(sizes, ", ")
        ));
        s.push_str(&format!(
            "/// The input image [channels, height, width] the features are read as.\npub const IMAGE: [usize; {}] = [{}];\n",
            spec.image.len(),
            list(&spec.image, ", ")
        ));
        s.push_str(&format!(
            "/// Output channels of each convolution block, input first.\npub const CONV: [usize; {}] = [{}];\n",
            spec.conv.len(),
            list(&spec.conv, ", ")
        ));
    } else {
        s.push_str(&format!(
            "/// Layer sizes, input first.\npub const SIZES: [usize; {}] = [{}];\n",
            sizes.len(),
            list(sizes, ", ")
        ));
    }
    s.push_str(&format!(
        "/// The activation between layers{}: {}.\npub const ACTIVATION: &str = \"{}\";\n",
        if cnn {
            " and after each convolution"
        } else {
            ""
        },
        spec.activation.formula(),
        spec.activation.name()
    ));
    s.push_str(&format!(
        "/// The element type of the weights.\npub const DTYPE: &str = \"{}\";\n",
        dtype_name(dtype)
    ));
    s.push_str(&format!(
        "/// Input feature names.\npub const FEATURES: [&str; {}] = [{}];\n",
        spec.features.len(),
        spec.features
            .iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !spec.classes.is_empty() {
        s.push_str(&format!(
            "/// Class names: output `i` is `CLASSES[i]`.\npub const CLASSES: [&str; {}] = [{}];\n",
            spec.classes.len(),
            spec.classes
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let ty = if dtype == Dtype::F32 { "f32" } else { "u16" };
    for t in &params {
        s.push_str(&format!(
            "\n/// {}\npub const {}: [{ty}; {}] = [\n",
            t.doc,
            t.name,
            t.values.len()
        ));
        for chunk in t.values.chunks(8) {
            let cells: Vec<String> = chunk
                .iter()
                .map(|&v| match dtype {
                    Dtype::F32 => format!("{v:?}"),
                    Dtype::F16 => format!("0x{:04x}", half::f16::from_f32(v).to_bits()),
                    Dtype::Bf16 => format!("0x{:04x}", half::bf16::from_f32(v).to_bits()),
                })
                .collect();
            s.push_str(&format!("    {},\n", cells.join(", ")));
        }
        s.push_str("];\n");
    }
    Ok(s)
}

/// Parses `f32`, `f16` or `bf16`.
///
/// # Errors
/// `Invalid` for anything else.
pub fn parse_dtype(s: &str) -> Result<Dtype> {
    match s {
        "f32" => Ok(Dtype::F32),
        "f16" => Ok(Dtype::F16),
        "bf16" => Ok(Dtype::Bf16),
        _ => Err(Error::invalid(format!("unknown dtype '{s}'")).with_hint("use f32, f16 or bf16")),
    }
}
