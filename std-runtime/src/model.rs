//! The model: an MLP (or a small CNN) with layer sizes chosen at run time, its optimizer, and a [`Model`] that
//! owns the tape they live on, with prediction and one training step.

use mote::ops::unary::UnaryOp;
use mote::plan;
use mote::{
    Adagrad, AdagradConfig, Adam, AdamConfig, Backend, Conv2d, ConvConfig, Linear, Mark, Module,
    Optimizer, PoolConfig, RmsProp, RmsPropConfig, Rng, Sgd, SgdConfig, Tape, Var,
};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Standardizer, Targets, Task};
use crate::error::{Error, Result};

/// Tape capacity: an MLP of `L` layers records `4 L + 2` nodes per step with a fused loss
/// (and [`ModelSpec::loss_nodes`] more with a composite one, 2 more per dropout site, 12 per
/// convolution block: [`ModelSpec::most_layers`]).
pub const NODES: usize = 512;
/// The most layers (hidden + output) a model with a fused loss may have.
pub const MAX_LAYERS: usize = (NODES - 2) / 4;
/// Rows per evaluation batch.
pub const EVAL_BATCH: usize = 256;

/// The activation between layers (and after each convolution), by the name `mote train
/// --activation` and a checkpoint give it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Activation {
    /// max(x, 0).
    #[default]
    Relu,
    /// x where positive, 0.01 x elsewhere (PyTorch's default slope).
    LeakyRelu,
    /// ELU with alpha 1.
    Elu,
    /// GELU, exact (through erf): PyTorch's default `nn.GELU()`.
    Gelu,
    /// GELU, tanh approximation (`nn.GELU(approximate="tanh")`).
    GeluTanh,
    /// SiLU (swish), x sigmoid(x).
    Silu,
    /// Hard swish (MobileNetV3's).
    Hardswish,
    /// tanh.
    Tanh,
    /// The logistic sigmoid.
    Sigmoid,
    /// Softplus, ln(1 + e^x).
    Softplus,
}

impl Activation {
    /// The core's op, the name (as the command line and a checkpoint spell it), how it reads
    /// in a sentence, and its definition: one row per activation.
    fn row(self) -> (UnaryOp, &'static str, &'static str, &'static str) {
        match self {
            Activation::Relu => (UnaryOp::Relu, "relu", "ReLU", "max(x, 0)"),
            Activation::LeakyRelu => (
                UnaryOp::LeakyRelu(0.01),
                "leaky_relu",
                "leaky ReLU",
                "x if x > 0, else 0.01 x",
            ),
            Activation::Elu => (UnaryOp::Elu(1.0), "elu", "ELU", "x if x > 0, else e^x - 1"),
            Activation::Gelu => (
                UnaryOp::GeluErf,
                "gelu",
                "GELU",
                "0.5 x (1 + erf(x / sqrt 2))",
            ),
            Activation::GeluTanh => (
                UnaryOp::Gelu,
                "gelu_tanh",
                "GELU (tanh form)",
                "0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3)))",
            ),
            Activation::Silu => (UnaryOp::Silu, "silu", "SiLU", "x / (1 + e^-x)"),
            Activation::Hardswish => (
                UnaryOp::Hardswish,
                "hardswish",
                "hard swish",
                "x min(max(x + 3, 0), 6) / 6",
            ),
            Activation::Tanh => (UnaryOp::Tanh, "tanh", "tanh", "tanh x"),
            Activation::Sigmoid => (UnaryOp::Sigmoid, "sigmoid", "sigmoid", "1 / (1 + e^-x)"),
            Activation::Softplus => (
                UnaryOp::Softplus,
                "softplus",
                "softplus",
                "ln(1 + e^x), and x itself above 20",
            ),
        }
    }

    /// The core's op.
    pub fn op(self) -> UnaryOp {
        self.row().0
    }

    /// The name (`relu`, `gelu`, ...), as the command line and a checkpoint spell it.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// How it reads in a sentence (`ReLU`, `GELU (tanh form)`, ...).
    pub fn title(self) -> &'static str {
        self.row().2
    }

    /// Its definition, for firmware that computes it by hand.
    pub fn formula(self) -> &'static str {
        self.row().3
    }

    /// Whether it is ReLU (what a model without the field means, and what a version-1
    /// checkpoint holds).
    pub fn is_relu(&self) -> bool {
        *self == Activation::Relu
    }
}

/// The loss a regression model trains with, on standardised targets (`mote train --loss`;
/// classifiers train with the cross-entropy). The thresholds are in standard deviations of the
/// target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegressionLoss {
    /// Mean squared error (PyTorch's `MSELoss`).
    #[default]
    Mse,
    /// Mean absolute error (`L1Loss`).
    L1,
    /// Huber loss (`HuberLoss(delta)`): squared below `delta`, linear above.
    Huber {
        /// The threshold, positive.
        delta: f32,
    },
    /// Smooth L1 loss (`SmoothL1Loss(beta)`): the Huber loss over `beta`; L1 for beta 0.
    SmoothL1 {
        /// The threshold, 0 or positive.
        beta: f32,
    },
}

impl RegressionLoss {
    /// Whether it is the MSE (what a model without the field means).
    pub fn is_mse(&self) -> bool {
        *self == RegressionLoss::Mse
    }

    /// How it reads in a sentence: `MSE`, `L1 loss`, `Huber loss (delta 1.0)`, ...
    pub fn title(&self) -> String {
        match self {
            RegressionLoss::Mse => "MSE".into(),
            RegressionLoss::L1 => "L1 loss".into(),
            RegressionLoss::Huber { delta } => format!("Huber loss (delta {delta:?})"),
            RegressionLoss::SmoothL1 { beta } => format!("smooth L1 loss (beta {beta:?})"),
        }
    }

    /// Checks the threshold.
    ///
    /// # Errors
    /// `Invalid` for a Huber delta that is not positive and finite, or a smooth-L1 beta that
    /// is negative or not finite.
    pub fn check(&self) -> Result<()> {
        let (threshold, why) = match *self {
            RegressionLoss::Huber { delta } if !(delta > 0.0 && delta.is_finite()) => {
                (delta, "the Huber loss's delta must be positive and finite")
            }
            RegressionLoss::SmoothL1 { beta }
                if !(beta == 0.0
                    || (beta > 0.0 && beta.is_finite() && (1.0 / beta).is_finite())) =>
            {
                (
                    beta,
                    "the smooth L1 loss's beta must be 0 (the L1 loss), or positive and finite \
                     with 1 / beta finite too",
                )
            }
            _ => return Ok(()),
        };
        Err(Error::invalid(format!("--delta {threshold:?}: {why}"))
            .with_hint("give a value such as --delta 1.0"))
    }

    /// The planner's loss.
    pub fn plan(&self) -> plan::Loss {
        match *self {
            RegressionLoss::Mse => plan::Loss::Mse,
            RegressionLoss::L1 | RegressionLoss::SmoothL1 { beta: 0.0 } => plan::Loss::L1,
            RegressionLoss::Huber { .. } => plan::Loss::Huber,
            RegressionLoss::SmoothL1 { .. } => plan::Loss::SmoothL1,
        }
    }

    /// The loss of `pred` against `target` on the tape.
    ///
    /// # Errors
    /// As the tape's loss.
    pub fn apply<B: Backend>(
        &self,
        t: &mut Tape<B, NODES>,
        pred: Var,
        target: Var,
    ) -> mote::Result<Var> {
        match *self {
            RegressionLoss::Mse => t.mse(pred, target),
            RegressionLoss::L1 => t.l1_loss(pred, target),
            RegressionLoss::Huber { delta } => t.huber_loss(pred, target, delta),
            RegressionLoss::SmoothL1 { beta } => t.smooth_l1_loss(pred, target, beta),
        }
    }

    /// One element's loss at difference `d` (prediction minus target), for evaluation on the
    /// host.
    pub fn of(&self, d: f64) -> f64 {
        let huber = |delta: f64| {
            let a = d.abs();
            if a < delta {
                0.5 * d * d
            } else {
                delta * (a - 0.5 * delta)
            }
        };
        match *self {
            RegressionLoss::Mse => d * d,
            RegressionLoss::L1 | RegressionLoss::SmoothL1 { beta: 0.0 } => d.abs(),
            RegressionLoss::Huber { delta } => huber(f64::from(delta)),
            RegressionLoss::SmoothL1 { beta } => huber(f64::from(beta)) / f64::from(beta),
        }
    }
}

/// What one training step measured on its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// The batch's mean loss.
    pub loss: f32,
    /// Correct predictions (classification; 0 for regression).
    pub correct: usize,
    /// The sum of squared errors on standardised targets (regression, whatever its loss; 0 for
    /// classification): the training RMSE's.
    pub squared_error: f64,
}

/// What a trained model is: enough to rebuild it from a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Layer sizes, `[inputs, hidden..., outputs]`; the activation between layers.
    pub sizes: Vec<usize>,
    /// The activation between layers and after each convolution (ReLU when absent).
    #[serde(default, skip_serializing_if = "Activation::is_relu")]
    pub activation: Activation,
    /// Classification or regression.
    pub task: Task,
    /// The loss of a regression model (MSE when absent; a classifier's is the cross-entropy).
    #[serde(default, skip_serializing_if = "RegressionLoss::is_mse")]
    pub loss: RegressionLoss,
    /// Class names (classification), index `i` for output `i`.
    pub classes: Vec<String>,
    /// A classifier's class weights, one per class (PyTorch's `CrossEntropyLoss(weight=)`: a
    /// batch's loss is `sum_i w_{y_i} ce_i / sum_i w_{y_i}`); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_weights: Vec<f32>,
    /// Feature (input column) names, in input order.
    pub features: Vec<String>,
    /// The label column's name.
    pub label: String,
    /// Feature standardisation, from the training split (stored as tensors in a checkpoint).
    #[serde(skip, default)]
    pub norm: Standardizer,
    /// Target standardisation (regression): mean and std; `(0, 1)` for classification.
    pub target: (f32, f32),
    /// Convolution blocks before the linear layers (3x3 convolution with padding 1, the
    /// activation, 2x2 max-pooling), output channels of each; empty for an MLP. With blocks,
    /// `sizes[0]` is the flattened size of the last block's output.
    #[serde(default)]
    pub conv: Vec<usize>,
    /// The input image `[channels, height, width]` the features are reshaped to (convolution
    /// blocks only).
    #[serde(default)]
    pub image: Vec<usize>,
    /// Dropout probability (PyTorch's `nn.Dropout(p)`) on the input of every linear layer
    /// that follows an activation: each hidden layer's output, and a CNN's flattened
    /// features; 0: none. Off in evaluation.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub dropout: f32,
}

fn is_zero_f32(v: &f32) -> bool {
    *v == 0.0
}

/// The most elements a tensor holds (the core's `Shape` limit, `u32::MAX`): the bound
/// [`ModelSpec::check`] holds a CNN's input image and every linear layer's weights to.
pub const MAX_ELEMENTS: usize = u32::MAX as usize;

/// The product of `dims`, `None` when it overflows.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl ModelSpec {
    /// The spec of an MLP with `hidden` layer sizes for `ds`, with standardisation statistics
    /// of the rows `train` (of the features, and of the targets for regression).
    ///
    /// # Errors
    /// As [`ModelSpec::check`].
    pub fn for_dataset(ds: &Dataset, hidden: &[usize], train: &[usize]) -> Result<ModelSpec> {
        let mut sizes = vec![ds.cols];
        sizes.extend_from_slice(hidden);
        sizes.push(match ds.task {
            Task::Classification => ds.classes.len(),
            Task::Regression => 1,
        });
        let target = match &ds.targets {
            Targets::Values(v) => {
                let vals: Vec<f32> = train.iter().filter_map(|&i| v.get(i).copied()).collect();
                let st = Standardizer::fit(&vals, 1, &(0..vals.len()).collect::<Vec<_>>());
                (st.mean[0], st.std[0])
            }
            Targets::Classes(_) => (0.0, 1.0),
        };
        let spec = ModelSpec {
            sizes,
            activation: Activation::Relu,
            task: ds.task,
            loss: RegressionLoss::Mse,
            classes: ds.classes.clone(),
            class_weights: Vec::new(),
            features: ds.features.clone(),
            label: ds.label.clone(),
            norm: Standardizer::fit(&ds.x, ds.cols, train),
            target,
            conv: Vec::new(),
            image: Vec::new(),
            dropout: 0.0,
        };
        spec.check()?;
        Ok(spec)
    }

    /// The spec of a CNN for `ds`: convolution blocks with `conv` output channels over the
    /// features read as a square single-channel image (64 features: 1x8x8), then linear
    /// layers of `hidden` sizes.
    ///
    /// # Errors
    /// `Invalid` when the features are not a square image, or the blocks pool it away.
    pub fn cnn_for_dataset(
        ds: &Dataset,
        conv: &[usize],
        hidden: &[usize],
        train: &[usize],
    ) -> Result<ModelSpec> {
        let side = (ds.cols as f64).sqrt().round() as usize;
        if side * side != ds.cols {
            return Err(Error::invalid(format!(
                "--model cnn reads the features as a square single-channel image, but there are {} features",
                ds.cols
            ))
            .with_hint("use --model mlp, or data whose feature count is a square (64 = 8x8)"));
        }
        let mut spec = ModelSpec::for_dataset(ds, hidden, train)?;
        spec.conv = conv.to_vec();
        spec.image = vec![1, side, side];
        let (mut h, mut w) = (side, side);
        for _ in conv {
            h /= 2;
            w /= 2;
        }
        let c = conv.last().copied().unwrap_or(1);
        if let Some(first) = spec.sizes.first_mut() {
            // Saturating: a width past `usize` is refused by the check below (it is not the
            // flattened size, which overflows).
            *first = c.saturating_mul(h).saturating_mul(w);
        }
        spec.check()?;
        Ok(spec)
    }

    /// Features per row (the network's input width): `sizes[0]` for an MLP, the image's
    /// `channels x height x width` for a CNN (`usize::MAX` for an image whose product overflows,
    /// which [`ModelSpec::check`] refuses).
    pub fn inputs(&self) -> usize {
        if self.conv.is_empty() {
            self.sizes.first().copied().unwrap_or(0)
        } else {
            product(&self.image).unwrap_or(usize::MAX)
        }
    }

    /// The width of a CNN's flattened features, what its first linear layer reads: the last
    /// block's channels times the image's height and width, each halved (rounding down) by
    /// every block's 2x2 max-pooling (`None`: no image of three dimensions, or an overflow).
    pub fn flattened(&self) -> Option<usize> {
        let [_, h, w] = self.image[..] else {
            return None;
        };
        let blocks = u32::try_from(self.conv.len()).ok()?;
        let c = self.conv.last().copied().unwrap_or(1);
        product(&[
            c,
            h.checked_shr(blocks).unwrap_or(0),
            w.checked_shr(blocks).unwrap_or(0),
        ])
    }

    /// Every parameter's name and shape, in creation order: `convs.{i}.weight`
    /// (`[out, in, 3, 3]`) and `convs.{i}.bias`, then `layers.{i}.weight` (`[out, in]`) and
    /// `layers.{i}.bias`.
    pub fn param_dims(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut cin = self.image.first().copied().unwrap_or(1);
        for (i, &c) in self.conv.iter().enumerate() {
            out.push((format!("convs.{i}.weight"), vec![c, cin, 3, 3]));
            out.push((format!("convs.{i}.bias"), vec![c]));
            cin = c;
        }
        for (i, w) in self.sizes.windows(2).enumerate() {
            out.push((format!("layers.{i}.weight"), vec![w[1], w[0]]));
            out.push((format!("layers.{i}.bias"), vec![w[1]]));
        }
        out
    }

    /// Checks the sizes and the rest of the description.
    ///
    /// # Errors
    /// `Invalid`, naming the field: for fewer than two sizes, a zero size, a tensor (the
    /// input image, a linear layer's weights) of more than [`MAX_ELEMENTS`] (a convolution
    /// block's weights: of more than `usize` counts); a CNN's image that is not
    /// `[channels, height, width]` or that its blocks pool away, or whose flattened output
    /// ([`ModelSpec::flattened`]) is not `sizes[0]`; an MLP with an image; too many layers; and
    /// the class, weight, loss, target and dropout settings.
    pub fn check(&self) -> Result<()> {
        let too_big = |what: String, n: Option<usize>| {
            let n = n.map_or(format!("more than {}", usize::MAX), |n| n.to_string());
            Error::invalid(format!(
                "{what}: {n} elements, more than a tensor holds (at most {MAX_ELEMENTS})"
            ))
        };
        if self.conv.is_empty() {
            if !self.image.is_empty() {
                return Err(Error::invalid(format!(
                    "image {:?} on a model without convolution blocks (conv is empty): only a \
                     CNN reads its features as an image",
                    self.image
                )));
            }
        } else {
            if self.image.len() != 3 || self.image.contains(&0) {
                return Err(Error::invalid(format!(
                    "image {:?}: a CNN reads [channels, height, width], each at least 1",
                    self.image
                )));
            }
            let features = product(&self.image);
            if features.is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(too_big(format!("image {:?}", self.image), features));
            }
            let ok = !self.conv.contains(&0)
                && self.conv.len() < usize::BITS as usize
                && self.image.get(1).is_some_and(|&h| h >> self.conv.len() > 0)
                && self.image.get(2).is_some_and(|&w| w >> self.conv.len() > 0);
            if !ok {
                return Err(Error::invalid(format!(
                    "{} convolution blocks of {:?} channels do not fit an image of {:?}: each block halves the height and width",
                    self.conv.len(),
                    self.conv,
                    self.image
                )));
            }
            // A block's weights must be countable; past a tensor's size (but countable) they
            // are refused by the arena's dry run ([`arena_floats`]: "cannot be laid out", with
            // its hint on --conv) or by the core when the model is built.
            let mut cin = self.image[0];
            for (i, &c) in self.conv.iter().enumerate() {
                let dims = [c, cin, 3, 3];
                if product(&dims).is_none() {
                    return Err(too_big(
                        format!("conv[{i}] = {c} channels: convs.{i}.weight {dims:?}"),
                        None,
                    ));
                }
                cin = c;
            }
        }
        if self.sizes.len() < 2 || self.sizes.contains(&0) {
            return Err(Error::invalid(format!(
                "bad layer sizes {:?}: every layer needs at least one unit",
                self.sizes
            )));
        }
        if !self.conv.is_empty() {
            let flat = self.flattened();
            if flat != Some(self.sizes[0]) {
                let [c, h, w] = [
                    self.conv.last().copied().unwrap_or(1),
                    self.image[1] >> self.conv.len(),
                    self.image[2] >> self.conv.len(),
                ];
                return Err(Error::invalid(format!(
                    "sizes[0] = {}: a CNN's first linear layer reads the last convolution \
                     block's flattened output, {c} channels x {h} x {w} = {} after {} blocks on \
                     an image of {:?}",
                    self.sizes[0],
                    flat.map_or(format!("more than {}", usize::MAX), |n| n.to_string()),
                    self.conv.len(),
                    self.image
                )));
            }
        }
        for (i, w) in self.sizes.windows(2).enumerate() {
            let n = w[0].checked_mul(w[1]);
            if n.is_none_or(|n| n > MAX_ELEMENTS) {
                return Err(too_big(
                    format!(
                        "sizes {:?}: layer {i}'s weights ({} outputs x {} inputs)",
                        self.sizes, w[1], w[0]
                    ),
                    n,
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        if let Some(f) = self.features.iter().find(|f| !names.insert(f.as_str())) {
            return Err(Error::invalid(format!("feature '{f}' is named twice")));
        }
        if self.task == Task::Classification {
            let mut seen = std::collections::HashSet::new();
            if let Some(c) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
                return Err(Error::invalid(format!("class '{c}' is named twice")));
            }
            if self.classes.len() != self.outputs() {
                return Err(Error::invalid(format!(
                    "{} class names for {} outputs",
                    self.classes.len(),
                    self.outputs()
                )));
            }
        }
        self.loss.check()?;
        if !self.class_weights.is_empty() {
            let w = &self.class_weights;
            if self.task != Task::Classification || w.len() != self.classes.len() {
                return Err(Error::invalid(format!(
                    "{} class weights for {} classes: a classifier needs one per class",
                    w.len(),
                    self.classes.len()
                )));
            }
            if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || !w.iter().any(|v| *v > 0.0) {
                return Err(Error::invalid(format!(
                    "class weights {w:?}: each must be finite and 0 or more, and one above 0"
                )));
            }
        }
        if self.task == Task::Classification && !self.loss.is_mse() {
            return Err(Error::invalid(format!(
                "a classifier with the {}: classifiers train with the cross-entropy",
                self.loss.title()
            )));
        }
        let (mean, std) = self.target;
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(Error::invalid(format!(
                "target standardisation ({mean}, {std}): needs a finite mean and a positive std"
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(format!(
                "dropout {}: a probability in [0, 1) is needed",
                self.dropout
            )));
        }
        if self.dropout > 0.0 && self.dropout_sites() == 0 {
            return Err(Error::invalid(format!(
                "dropout {} on a linear model: dropout acts on hidden layers' outputs (and a CNN's features), and this model has none",
                self.dropout
            ))
            .with_hint("add a hidden layer (--hidden 32), or drop --dropout"));
        }
        let most = self.most_layers();
        if self.sizes.len() - 1 > most {
            let why: Vec<&str> = [
                (self.loss_nodes() > 0, "this loss"),
                (self.dropout > 0.0, "dropout"),
                (!self.conv.is_empty(), "these convolution blocks"),
            ]
            .iter()
            .filter_map(|&(on, what)| on.then_some(what))
            .collect();
            return Err(Error::invalid(format!(
                "{} layers; at most {most} are supported{}",
                self.sizes.len() - 1,
                match why.split_last() {
                    None => String::new(),
                    Some((last, [])) => format!(" with {last}"),
                    Some((last, rest)) => format!(" with {} and {last}", rest.join(", ")),
                }
            )));
        }
        Ok(())
    }

    /// Where dropout acts (when [`ModelSpec::dropout`] is above 0): the input of each linear
    /// layer after the first, and with convolution blocks the first one's too.
    pub fn dropout_sites(&self) -> usize {
        let layers = self.sizes.len().saturating_sub(1);
        layers.saturating_sub(1) + usize::from(!self.conv.is_empty() && layers > 0)
    }

    /// The most linear layers this spec's tape has room for: a step records 4 nodes per layer,
    /// 12 per convolution block, 2 per dropout site (its mask and the product), the input, the
    /// labels and the loss's.
    pub fn most_layers(&self) -> usize {
        let conv = !self.conv.is_empty();
        let budget = (NODES - 2 - self.loss_nodes()).saturating_sub(12 * self.conv.len());
        if self.dropout > 0.0 {
            // 4 L + 2 (L - 1 + conv) nodes.
            (budget + 2 - 2 * usize::from(conv)) / 6
        } else {
            budget / 4
        }
    }

    /// The nodes a training step's loss records beyond a fused loss's one: the composite
    /// losses' intermediates (see their docs in `mote::ops::loss`).
    pub fn loss_nodes(&self) -> usize {
        self.loss().extra_nodes()
    }

    /// Outputs of the last layer.
    pub fn outputs(&self) -> usize {
        self.sizes.last().copied().unwrap_or(1)
    }

    /// The planner's loss for this task.
    pub fn loss(&self) -> plan::Loss {
        match self.task {
            Task::Classification if self.class_weights.is_empty() => plan::Loss::CrossEntropy,
            Task::Classification => plan::Loss::CrossEntropyProbs,
            Task::Regression => self.loss.plan(),
        }
    }
}

/// The network: optional convolution blocks (3x3 convolution with padding 1, the activation,
/// 2x2 max-pooling) over the features read as an image, then `Linear` layers with the
/// activation between them (an MLP when there are no blocks), with dropout on the input of
/// every linear layer that follows an activation when a training step's [`Masks`] are set.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// The activation between layers and after each convolution.
    pub activation: Activation,
    /// Convolution blocks, input first (empty for an MLP).
    pub convs: Vec<Conv2d>,
    /// The image `[channels, height, width]` the convolutions read.
    pub image: Vec<usize>,
    /// The layers, input first.
    pub layers: Vec<Linear>,
    /// Dropout probability ([`ModelSpec::dropout`]).
    pub dropout: f32,
    /// Where the dropout masks of the forward pass come from: set for a training step, `None`
    /// (no dropout: evaluation) otherwise.
    pub masks: Option<Masks>,
}

/// Where a training step's dropout masks come from. Element `j` of row `r` at dropout site
/// `s` (the sites counted from the input) is zeroed when a hash of `(seed, step, s,
/// first_row + r, j)` ([`Masks::draw`], uniform on `[0, 2^24)`) is below `p 2^24`, and scaled
/// by `1 / (1 - p)` otherwise (a counter-based draw, as PyTorch's Philox: no element waits for
/// the one before it). A row's masks depend only on its place in the batch, not on the
/// rows around it, so replicas that each take a shard of a batch draw the masks one model
/// would draw for the whole of it, and a resumed run draws those of an uninterrupted one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Masks {
    /// The run's seed.
    pub seed: u64,
    /// The step (0-based, counted over the whole run).
    pub step: u64,
    /// The first row's place in the step's batch.
    pub first_row: usize,
}

impl Masks {
    /// The key of row `row` (its place in the batch) at dropout site `site`: a start and an
    /// odd step, both drawn from the row's 64-bit hash (so that two rows' sequences are not
    /// shifted copies of each other).
    pub fn row_key(&self, site: usize, row: usize) -> (u32, u32) {
        let h = mix(mix(mix(mix(self.seed) ^ self.step) ^ site as u64) ^ row as u64);
        (h as u32, (h >> 32) as u32 | 1)
    }

    /// Element `col`'s draw in the row of `key` ([`Masks::row_key`]), uniform on `[0, 2^24)`:
    /// a 32-bit integer hash (Wellons' `lowbias32`) of the key's start moved `col` steps.
    #[inline]
    pub fn draw(key: (u32, u32), col: usize) -> u32 {
        let mut x = key.0.wrapping_add((col as u32).wrapping_mul(key.1));
        x ^= x >> 16;
        x = x.wrapping_mul(0x7FEB_352D);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846C_A68B);
        x ^= x >> 16;
        x >> 8
    }
}

/// SplitMix64's finaliser: a well-mixed key from a counter.
fn mix(v: u64) -> u64 {
    let mut z = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Mlp {
    /// Dropout at site `site` on `y` (`[rows, width]`), when the masks are set.
    fn dropout<B: mote::Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        y: Var,
        site: usize,
    ) -> mote::Result<Var> {
        let Some(m) = self.masks.filter(|_| self.dropout > 0.0) else {
            return Ok(y);
        };
        let rows = y.shape().dim(0);
        let width = y.numel() / rows.max(1);
        let p = self.dropout;
        let keep = <B::Elem as mote::Float>::from_f64(1.0 / (1.0 - f64::from(p)));
        let zero = <B::Elem as mote::Float>::ZERO;
        // `draw 2^-24 < p`, in integers.
        let below = (f64::from(p) * f64::from(1u32 << 24)).ceil() as u32;
        let mut mask = Vec::with_capacity(rows * width);
        for r in 0..rows {
            let key = m.row_key(site, m.first_row + r);
            mask.extend((0..width).map(|j| {
                if Masks::draw(key, j) < below {
                    zero
                } else {
                    keep
                }
            }));
        }
        let mask = tape.input(&[rows, width], &mask)?;
        tape.mul(y, mask)
    }
}

impl Module for Mlp {
    fn forward<B: mote::Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
    ) -> mote::Result<Var> {
        let mut y = x;
        let mut site = 0;
        if !self.convs.is_empty() {
            let n = x.shape().dim(0);
            let mut dims = vec![n];
            dims.extend_from_slice(&self.image);
            y = tape.reshape(y, &dims)?;
            for conv in &self.convs {
                y = conv.forward(tape, y)?;
                y = tape.unary(self.activation.op(), y)?;
                y = tape.max_pool2d(y, PoolConfig::square(2))?;
            }
            let flat = y.numel() / n;
            y = tape.reshape(y, &[n, flat])?;
            if !self.layers.is_empty() {
                y = self.dropout(tape, y, site)?;
                site += 1;
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                y = tape.unary(self.activation.op(), y)?;
                y = self.dropout(tape, y, site)?;
                site += 1;
            }
            y = layer.forward(tape, y)?;
        }
        Ok(y)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        for c in &self.convs {
            c.visit_params(f);
        }
        for l in &self.layers {
            l.visit_params(f);
        }
    }
}

/// Which optimizer, with its settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// Adam.
    Adam {
        /// Learning rate.
        lr: f64,
        /// L2 weight decay.
        weight_decay: f64,
        /// AMSGrad ([`AdamConfig::amsgrad`]; absent in files written before it: false).
        #[serde(default)]
        amsgrad: bool,
    },
    /// AdamW (decoupled weight decay).
    Adamw {
        /// Learning rate.
        lr: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
        /// AMSGrad.
        #[serde(default)]
        amsgrad: bool,
    },
    /// SGD with momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum (0: none).
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
    /// RMSprop (eps 1e-8, PyTorch's).
    Rmsprop {
        /// Learning rate.
        lr: f64,
        /// Decay of the running average of the squared gradient.
        alpha: f64,
        /// Momentum (0: none).
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
        /// Centered RMSprop.
        centered: bool,
    },
    /// Adagrad (eps 1e-10 and accumulators starting at 0, PyTorch's).
    Adagrad {
        /// Learning rate.
        lr: f64,
        /// Decay of the rate: step `t` runs at `lr / (1 + (t - 1) lr_decay)`.
        lr_decay: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::Adamw { lr, .. }
            | OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Rmsprop { lr, .. }
            | OptimizerConfig::Adagrad { lr, .. } => lr,
        }
    }

    /// The planner's view of the optimizer's state.
    pub fn plan(&self) -> plan::Opt {
        match *self {
            OptimizerConfig::Sgd { momentum, .. } if momentum > 0.0 => plan::Opt::SgdMomentum,
            OptimizerConfig::Sgd { .. } => plan::Opt::Sgd,
            OptimizerConfig::Adam { amsgrad, .. } | OptimizerConfig::Adamw { amsgrad, .. } => {
                if amsgrad {
                    plan::Opt::AmsGrad
                } else {
                    plan::Opt::Adam
                }
            }
            OptimizerConfig::Rmsprop {
                momentum, centered, ..
            } => plan::Opt::RmsProp {
                momentum: momentum > 0.0,
                centered,
            },
            OptimizerConfig::Adagrad { .. } => plan::Opt::Adagrad,
        }
    }

    /// Floats of optimizer state per parameter element.
    pub fn state_per_param(&self) -> usize {
        self.state_names().len()
    }

    /// The names of the optimizer's state buffers per parameter, in arena order (PyTorch's
    /// names: Adam's `exp_avg`, `exp_avg_sq` and AMSGrad's `max_exp_avg_sq`; SGD's
    /// `momentum_buffer`; RMSprop's `square_avg`, `momentum_buffer`, `grad_avg`; Adagrad's
    /// `sum`).
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.plan() {
            plan::Opt::Sgd => &[],
            plan::Opt::SgdMomentum => &["momentum_buffer"],
            plan::Opt::Adam => &["exp_avg", "exp_avg_sq"],
            plan::Opt::AmsGrad => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            plan::Opt::RmsProp { momentum, centered } => match (momentum, centered) {
                (false, false) => &["square_avg"],
                (true, false) => &["square_avg", "momentum_buffer"],
                (false, true) => &["square_avg", "grad_avg"],
                (true, true) => &["square_avg", "momentum_buffer", "grad_avg"],
            },
            plan::Opt::Adagrad => &["sum"],
        }
    }

    /// A short name (`adam`, `adamw`, `sgd`, `rmsprop`, `adagrad`; `amsgrad` is added to
    /// Adam's).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Adam { amsgrad: true, .. } => "adam (amsgrad)",
            OptimizerConfig::Adam { .. } => "adam",
            OptimizerConfig::Adamw { amsgrad: true, .. } => "adamw (amsgrad)",
            OptimizerConfig::Adamw { .. } => "adamw",
            OptimizerConfig::Sgd { .. } => "sgd",
            OptimizerConfig::Rmsprop { .. } => "rmsprop",
            OptimizerConfig::Adagrad { .. } => "adagrad",
        }
    }
}

/// An optimizer of any kind.
#[derive(Clone, Copy, Debug)]
pub enum Opt {
    /// Adam or AdamW.
    Adam(Adam),
    /// SGD.
    Sgd(Sgd),
    /// RMSprop.
    RmsProp(RmsProp),
    /// Adagrad.
    Adagrad(Adagrad),
}

impl Opt {
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        match self {
            Opt::Adam(o) => o.steps(),
            Opt::Sgd(o) => o.steps(),
            Opt::RmsProp(o) => o.steps(),
            Opt::Adagrad(o) => o.steps(),
        }
    }

    /// Sets the steps taken (to resume from a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        match self {
            Opt::Adam(o) => o.set_steps(steps),
            Opt::Sgd(o) => o.set_steps(steps),
            Opt::RmsProp(o) => o.set_steps(steps),
            Opt::Adagrad(o) => o.set_steps(steps),
        }
    }
}

impl Optimizer for Opt {
    fn step<B: mote::Backend, const N: usize>(
        &mut self,
        tape: &mut Tape<B, N>,
    ) -> mote::Result<()> {
        match self {
            Opt::Adam(o) => o.step(tape),
            Opt::Sgd(o) => o.step(tape),
            Opt::RmsProp(o) => o.step(tape),
            Opt::Adagrad(o) => o.step(tape),
        }
    }
    fn lr(&self) -> f64 {
        match self {
            Opt::Adam(o) => o.lr(),
            Opt::Sgd(o) => o.lr(),
            Opt::RmsProp(o) => o.lr(),
            Opt::Adagrad(o) => o.lr(),
        }
    }
    fn set_lr(&mut self, lr: f64) {
        match self {
            Opt::Adam(o) => o.set_lr(lr),
            Opt::Sgd(o) => o.set_lr(lr),
            Opt::RmsProp(o) => o.set_lr(lr),
            Opt::Adagrad(o) => o.set_lr(lr),
        }
    }
}

/// Floats of arena a model needs to train with `batch` rows per step and to evaluate
/// [`EVAL_BATCH`] rows at a time.
///
/// # Errors
/// `Invalid` when a CNN or a model with dropout cannot be laid out at all (its dry run fails:
/// for example sizes whose product overflows), with the core's reason.
pub fn arena_floats(spec: &ModelSpec, opt: &OptimizerConfig, batch: usize) -> Result<usize> {
    if !spec.conv.is_empty() || spec.dropout > 0.0 {
        return measured_floats(spec, opt, batch).map_err(|e| {
            Error::invalid(format!("the model cannot be laid out in an arena: {e}"))
                .with_hint("use smaller --conv channels, --hidden layers or --batch")
        });
    }
    let params = plan::mlp_params(&spec.sizes, opt.plan());
    let step = plan::mlp_step(&spec.sizes, batch, spec.loss());
    let infer = plan::mlp_inference(&spec.sizes, EVAL_BATCH)
        .saturating_sub(plan::mlp_params(&spec.sizes, plan::Opt::Sgd) / 2);
    Ok(params.saturating_add(step.max(infer)))
}

/// The exact arena of a CNN or a model with dropout, by a dry run (`mote::plan::measure`): parameters, optimizer
/// state, then the larger of a training step of `batch` rows and an evaluation batch.
fn measured_floats(spec: &ModelSpec, opt: &OptimizerConfig, batch: usize) -> Result<usize> {
    let ins = spec.inputs();
    Ok(plan::measure::<f32, NODES>(|t| {
        let mut net =
            build_net(t, spec, &mut Rng::new(0)).map_err(|_| mote::Error::InvalidArgument {
                what: "the model does not build",
            })?;
        net.masks = Some(Masks::default());
        build_opt(t, *opt).map_err(|_| mote::Error::InvalidArgument {
            what: "the optimizer does not build",
        })?;
        let start = t.mark();
        let x = t.input_with(&[batch, ins], || 0.0)?;
        let out = net.forward(t, x)?;
        let loss = loss_of(t, spec, out, &vec![0; batch], &vec![0.0; batch], 0.0, None)?;
        t.backward(loss)?;
        t.rewind(start)?;
        net.masks = None;
        t.no_grad(|t| {
            let x = t.input_with(&[EVAL_BATCH, ins], || 0.0)?;
            net.forward(t, x).map(|_| ())
        })
    })?)
}

/// A model on a tape: the MLP, its optimizer, and the mark above which each step's
/// activations live.
pub struct Model<B: Backend<Elem = f32>> {
    /// The tape (parameters, gradients and optimizer state below `start`).
    pub tape: Tape<B, NODES>,
    /// The network.
    pub net: Mlp,
    /// The optimizer.
    pub opt: Opt,
    /// The mark after parameters and optimizer state.
    pub start: Mark,
    /// What the model is.
    pub spec: ModelSpec,
    /// The optimizer's settings.
    pub opt_config: OptimizerConfig,
    /// Gradient clipping, label smoothing and the dropout seed (none by default).
    pub options: StepOptions,
    /// Training steps taken: what the next step's dropout masks are drawn from ([`Masks`]).
    /// [`Model::step`] counts it (and so [`Model::train_step`]); [`fit`](crate::train::fit)
    /// and [`Checkpoint::restore`](crate::checkpoint::Checkpoint::restore) set it from the
    /// run's state, so that a resumed run draws the masks an uninterrupted one would.
    pub steps: u64,
    /// The first row's place in the step's batch: 0, unless this model is a replica that
    /// takes a shard of each batch ([`Masks::first_row`]).
    pub first_row: usize,
}

/// How each training step runs, beyond the optimizer (what
/// [`TrainConfig::step_options`](crate::train::TrainConfig::step_options) gives).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepOptions {
    /// Clip the gradients' global L2 norm to this before each optimizer step
    /// ([`mote::clip_grad_norm`], PyTorch's `clip_grad_norm_`); `None`: no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Label smoothing of a classifier's cross-entropy
    /// ([`mote::Tape::cross_entropy_smoothed`]); 0: none.
    pub label_smoothing: f32,
    /// The seed of the dropout masks ([`Masks::seed`]): the run's seed.
    pub seed: u64,
}

impl<B: Backend<Elem = f32>> Model<B> {
    /// Builds the model on `backend` (whose storage needs [`arena_floats`]), with PyTorch's
    /// initialisation drawn from `init`.
    ///
    /// # Errors
    /// `Invalid` for bad sizes or optimizer settings; a core error when the arena is too small.
    pub fn new(
        backend: B,
        spec: ModelSpec,
        opt_config: OptimizerConfig,
        init: &mut Rng,
    ) -> Result<Self> {
        spec.check()?;
        let mut tape = Tape::<B, NODES>::with_backend(backend);
        let net = build_net(&mut tape, &spec, init)?;
        let opt = build_opt(&mut tape, opt_config)?;
        let start = tape.mark();
        Ok(Model {
            tape,
            net,
            opt,
            start,
            spec,
            opt_config,
            options: StepOptions::default(),
            steps: 0,
            first_row: 0,
        })
    }

    /// The optimizer step on the gradients in the tape, after clipping them by `norm` when
    /// [`StepOptions::clip_grad_norm`] says so: the gradients' norm ([`mote::grad_norm`]), this
    /// model's or the one that data-parallel replicas share.
    ///
    /// # Errors
    /// A core error: a non-finite gradient norm when clipping.
    pub fn step(&mut self, norm: Option<f64>) -> Result<()> {
        if let (Some(max), Some(norm)) = (self.options.clip_grad_norm, norm) {
            mote::clip_grad_norm_to(&mut self.tape, max, norm)?;
        }
        self.opt.step(&mut self.tape)?;
        self.steps += 1;
        Ok(())
    }

    /// One training step on a standardised batch (`x`: `rows x inputs`; `y_class` or `y_value`
    /// by task). Returns the mean loss, the number of correct predictions (classification)
    /// and the sum of squared errors (regression) as [`StepStats`].
    ///
    /// # Errors
    /// A core error (a non-finite loss means divergence).
    pub fn train_step(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> Result<StepStats> {
        let r = self.forward_backward(x, rows, y_class, y_value)?;
        let norm = match self.options.clip_grad_norm {
            Some(_) => Some(mote::grad_norm(&mut self.tape)?),
            None => None,
        };
        self.step(norm)?;
        Ok(r)
    }

    /// [`Model::train_step`] without the optimizer step: leaves the batch's mean-loss
    /// gradients in the tape (what data-parallel replicas all-reduce before stepping).
    ///
    /// # Errors
    /// As [`Model::train_step`].
    pub fn forward_backward(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
    ) -> Result<StepStats> {
        type Hook<B> = fn(&mut Tape<B, NODES>, Var) -> mote::Result<()>;
        self.forward_backward_with(x, rows, y_class, y_value, None, None::<Hook<B>>)
    }

    /// [`Model::forward_backward`] whose backward reports each parameter as soon as its
    /// gradient is final ([`Tape::backward_with`]), when `ready` is given: what data-parallel
    /// training overlaps its all-reduce with. With class weights, `weight_scale` is the whole
    /// batch's [`class_weight_scale`] when these rows are one shard of it (`None`: these rows
    /// are the batch), so that the shards' row-weighted mean is the batch's weighted mean.
    ///
    /// # Errors
    /// As [`Model::forward_backward`]; whatever `ready` returns.
    pub fn forward_backward_with(
        &mut self,
        x: &[f32],
        rows: usize,
        y_class: &[usize],
        y_value: &[f32],
        weight_scale: Option<f64>,
        ready: Option<impl FnMut(&mut Tape<B, NODES>, Var) -> mote::Result<()>>,
    ) -> Result<StepStats> {
        let t = &mut self.tape;
        t.rewind(self.start)?;
        let xv = t.input(&[rows, self.spec.inputs()], x)?;
        self.net.masks = Some(Masks {
            seed: self.options.seed,
            step: self.steps,
            first_row: self.first_row,
        });
        let out = self.net.forward(t, xv);
        self.net.masks = None;
        let out = out?;
        let smoothing = self.options.label_smoothing;
        let loss = loss_of(
            t,
            &self.spec,
            out,
            y_class,
            y_value,
            smoothing,
            weight_scale,
        )?;
        match ready {
            Some(f) => t.backward_with(loss, f)?,
            None => t.backward(loss)?,
        }
        let l = t.item(loss)?;
        if !l.is_finite() {
            return Err(mote::Error::NonFinite { op: "loss" }.into());
        }
        let mut stats = StepStats {
            loss: l,
            ..StepStats::default()
        };
        match self.spec.task {
            Task::Classification => {
                let mut logits = vec![0.0; out.numel()];
                t.read(out, &mut logits)?;
                stats.correct = count_correct(&logits, self.spec.outputs(), y_class);
            }
            // The MSE is the mean squared error already.
            Task::Regression if self.spec.loss.is_mse() => {
                stats.squared_error = f64::from(l) * rows as f64;
            }
            Task::Regression => {
                let mut pred = vec![0.0; out.numel()];
                t.read(out, &mut pred)?;
                stats.squared_error = pred
                    .iter()
                    .zip(y_value)
                    .map(|(&p, &y)| f64::from(p - y).powi(2))
                    .sum();
            }
        }
        Ok(stats)
    }

    /// Network outputs (logits, or standardised regression values) for standardised rows,
    /// `rows x outputs`, in batches of [`EVAL_BATCH`].
    ///
    /// # Errors
    /// A core error.
    pub fn outputs(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (ins, outs) = (self.spec.inputs(), self.spec.outputs());
        // No more rows than `x` holds.
        let rows = rows.min(x.len() / ins.max(1));
        let mut all = Vec::with_capacity(rows.saturating_mul(outs));
        for chunk in x.chunks(EVAL_BATCH * ins).take(rows.div_ceil(EVAL_BATCH)) {
            let n = chunk.len() / ins;
            self.tape.rewind(self.start)?;
            let net = &self.net;
            let y = self.tape.no_grad(|t| {
                let xv = t.input(&[n, ins], chunk)?;
                net.forward(t, xv)
            })?;
            let at = all.len();
            all.resize(at + y.numel(), 0.0);
            self.tape.read(y, &mut all[at..])?;
        }
        self.tape.rewind(self.start)?;
        Ok(all)
    }

    /// Copies every parameter out, in creation order (`[out, in]` weight, then bias, per layer).
    ///
    /// # Errors
    /// A core error.
    pub fn params(&self) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        let mut out = Vec::new();
        for p in self.tape.params() {
            let dims = p.shape().dims().iter().map(|&d| d as usize).collect();
            let mut v = vec![0.0; p.numel()];
            self.tape.read(p, &mut v)?;
            out.push((dims, v));
        }
        Ok(out)
    }
}

/// The network of `spec` on `tape`, with PyTorch's initialisation drawn from `init`.
///
/// # Errors
/// A core error when the arena or the tape is too small.
pub fn build_net<B: mote::Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    spec: &ModelSpec,
    init: &mut Rng,
) -> Result<Mlp> {
    let same = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let mut convs = Vec::with_capacity(spec.conv.len());
    let mut cin = spec.image.first().copied().unwrap_or(1);
    for &c in &spec.conv {
        convs.push(Conv2d::new(tape, cin, c, [3, 3], same, 1, true, init)?);
        cin = c;
    }
    let mut layers = Vec::with_capacity(spec.sizes.len().saturating_sub(1));
    for w in spec.sizes.windows(2) {
        layers.push(Linear::new(tape, w[0], w[1], init)?);
    }
    Ok(Mlp {
        activation: spec.activation,
        convs,
        image: spec.image.clone(),
        layers,
        dropout: spec.dropout,
        masks: None,
    })
}

/// The optimizer of `opt_config` over the parameters on `tape`.
///
/// # Errors
/// `Invalid` settings; a core error when the arena is too small.
pub fn build_opt<B: mote::Backend, const N: usize>(
    tape: &mut Tape<B, N>,
    opt_config: OptimizerConfig,
) -> Result<Opt> {
    let opt = match opt_config {
        OptimizerConfig::Adam {
            lr,
            weight_decay,
            amsgrad,
        } => Opt::Adam(Adam::new(
            tape,
            AdamConfig {
                lr,
                weight_decay,
                amsgrad,
                ..AdamConfig::default()
            },
        )?),
        OptimizerConfig::Adamw {
            lr,
            weight_decay,
            amsgrad,
        } => Opt::Adam(Adam::adamw(
            tape,
            AdamConfig {
                lr,
                weight_decay,
                amsgrad,
                ..AdamConfig::default()
            },
        )?),
        OptimizerConfig::Rmsprop {
            lr,
            alpha,
            momentum,
            weight_decay,
            centered,
        } => Opt::RmsProp(RmsProp::new(
            tape,
            RmsPropConfig {
                lr,
                alpha,
                momentum,
                weight_decay,
                centered,
                ..RmsPropConfig::default()
            },
        )?),
        OptimizerConfig::Adagrad {
            lr,
            lr_decay,
            weight_decay,
        } => Opt::Adagrad(Adagrad::new(
            tape,
            AdagradConfig {
                lr,
                lr_decay,
                weight_decay,
                ..AdagradConfig::default()
            },
        )?),
        OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        } => Opt::Sgd(Sgd::new(
            tape,
            SgdConfig {
                lr,
                momentum,
                weight_decay,
                ..SgdConfig::default()
            },
        )?),
    };
    Ok(opt)
}

/// The training loss of `spec` on the tape: the outputs `out` against `y_class` or `y_value` by
/// task (the cross-entropy, smoothed and class-weighted as the spec and `smoothing` say, or the
/// regression loss). What a step records and what the arena's dry run measures.
fn loss_of<B: Backend<Elem = f32>>(
    t: &mut Tape<B, NODES>,
    spec: &ModelSpec,
    out: Var,
    y_class: &[usize],
    y_value: &[f32],
    smoothing: f32,
    weight_scale: Option<f64>,
) -> mote::Result<Var> {
    let rows = out.shape().dim(0);
    match spec.task {
        Task::Classification if !spec.class_weights.is_empty() => {
            let w = &spec.class_weights;
            let scale = weight_scale.unwrap_or_else(|| class_weight_scale(w, y_class));
            let q = weighted_targets(w, y_class, smoothing, scale)?;
            let y = t.input(&[rows, spec.outputs()], &q)?;
            t.cross_entropy_probs(out, y)
        }
        Task::Classification => {
            let y = t.labels(y_class)?;
            t.cross_entropy_smoothed(out, y, smoothing)
        }
        Task::Regression => {
            let y = t.input(&[rows, 1], y_value)?;
            spec.loss.apply(t, out, y)
        }
    }
}

/// `N / sum_i w_{y_i}` for a batch of `labels`: what [`weighted_targets`] scales by; 0 when
/// every row's weight is 0.
pub fn class_weight_scale(weights: &[f32], labels: &[usize]) -> f64 {
    let total: f64 = labels
        .iter()
        .map(|&y| f64::from(weights.get(y).copied().unwrap_or(0.0)))
        .sum();
    if total > 0.0 {
        labels.len() as f64 / total
    } else {
        0.0
    }
}

/// The targets that make [`mote::Tape::cross_entropy_probs`] PyTorch's weighted, label-smoothed
/// cross-entropy (`CrossEntropyLoss(weight=weights, label_smoothing=smoothing)`, mean
/// reduction): row `i`, class `c`: `((1 - e) [c = y_i] w_{y_i} + e w_c / C) scale`, with `scale`
/// the batch's [`class_weight_scale`], `N / sum_i w_{y_i}`. A batch whose rows all have weight
/// 0 (scale 0) gets all-zero targets (loss and gradient 0), where PyTorch's mean would be NaN.
///
/// # Errors
/// [`mote::Error::IndexOutOfRange`] for a label not below `weights.len()`, as the fused
/// cross-entropy's.
pub fn weighted_targets(
    weights: &[f32],
    labels: &[usize],
    smoothing: f32,
    scale: f64,
) -> mote::Result<Vec<f32>> {
    let classes = weights.len();
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(mote::Error::IndexOutOfRange {
            op: "cross_entropy label",
            index: bad,
            bound: classes,
        });
    }
    if classes == 0 {
        // No classes and (so) no labels: nothing to weigh.
        return Ok(Vec::new());
    }
    let weight = |c: usize| f64::from(weights.get(c).copied().unwrap_or(0.0));
    let mut q = vec![0f32; labels.len() * classes];
    let e = f64::from(smoothing);
    for (row, &y) in q.chunks_exact_mut(classes).zip(labels) {
        for (c, v) in row.iter_mut().enumerate() {
            let hit = if c == y { (1.0 - e) * weight(y) } else { 0.0 };
            *v = ((hit + e * weight(c) / classes as f64) * scale) as f32;
            if !v.is_finite() {
                return Err(mote::Error::InvalidArgument {
                    what: "class weights: a target overflows f32 (the weights' ratio is too \
                           large for this batch)",
                });
            }
        }
    }
    Ok(q)
}

/// Rows of `logits` (`classes` wide) whose largest entry is at the label.
pub fn count_correct(logits: &[f32], classes: usize, labels: &[usize]) -> usize {
    logits
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, &y)| argmax(row) == y)
        .count()
}

/// The index of the largest value (the first on ties; 0 for an empty slice).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if v.total_cmp(&row[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// Softmax of one row (for probabilities).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Which backend runs the tape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The core's serial reference backend: runs are reproducible bit for bit from a seed.
    Cpu,
    /// The multithreaded backend ([`crate::parallel::Parallel`]).
    #[default]
    Parallel,
    /// The CUDA backend (`mote_cuda::Cuda`, the `cuda` feature): the arena on GPU 0.
    Cuda,
}

impl BackendKind {
    /// `cpu` or `parallel`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Parallel => "parallel",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Work to run on a backend chosen at run time (see [`run_on`]).
pub trait WithBackend {
    /// What the work returns.
    type Output;
    /// Runs the work on `backend`.
    ///
    /// # Errors
    /// Whatever the work returns.
    fn run<B: Backend<Elem = f32>>(self, backend: B) -> Result<Self::Output>;
}

/// `count` arenas of `floats` zeros that a run holds at once; `too_big` is the error when the
/// machine cannot hold them. Where the system overcommits, a reservation beyond its memory
/// succeeds and the process is killed while filling it: the total is compared with the
/// memory first where that is known.
pub(crate) fn host_arenas(
    floats: usize,
    count: usize,
    too_big: impl Fn() -> Error,
) -> Result<Vec<Vec<f32>>> {
    arenas_within(floats, count, crate::memory::total_bytes(), too_big)
}

/// [`host_arenas`] on a machine of `memory` bytes (unknown: `None`).
fn arenas_within(
    floats: usize,
    count: usize,
    memory: Option<u64>,
    too_big: impl Fn() -> Error,
) -> Result<Vec<Vec<f32>>> {
    let bytes = floats
        .checked_mul(4)
        .and_then(|b| b.checked_mul(count))
        .ok_or_else(&too_big)?;
    if memory.is_some_and(|m| bytes as u64 > m) {
        return Err(too_big());
    }
    let mut arenas = Vec::new();
    arenas.try_reserve_exact(count).map_err(|_| too_big())?;
    for _ in 0..count {
        let mut mem: Vec<f32> = Vec::new();
        mem.try_reserve_exact(floats).map_err(|_| too_big())?;
        mem.resize(floats, 0.0);
        arenas.push(mem);
    }
    Ok(arenas)
}

/// Allocates an arena of `floats` and runs `work` on a backend of `kind` over it.
///
/// # Errors
/// Whatever `work` returns.
pub fn run_on<W: WithBackend>(kind: BackendKind, floats: usize, work: W) -> Result<W::Output> {
    let too_big = || {
        Error::invalid(format!(
            "the model needs an arena of {:.1} GB, more than this machine can give",
            floats as f64 * 4e-9
        ))
        .with_hint("use smaller --hidden layers or a smaller --batch")
    };
    if kind == BackendKind::Cuda {
        // The device's allocation says whether its memory has the room.
        return run_on_cuda(floats, work);
    }
    let mut mem = host_arenas(floats, 1, too_big)?.pop().ok_or_else(too_big)?;
    match kind {
        BackendKind::Cpu => work.run(mote::Cpu::new(&mut mem)),
        // (Cuda returned above.)
        BackendKind::Parallel | BackendKind::Cuda => {
            work.run(crate::parallel::Parallel::new(&mut mem))
        }
    }
}

/// Checks, before any work, that the backend `kind` can run here: for `Cuda`, that a CUDA
/// driver and a device are there (a clear error, not a failure halfway through a job).
///
/// # Errors
/// `Invalid` naming what is missing.
pub fn check_device(kind: BackendKind) -> Result<()> {
    if kind == BackendKind::Cuda {
        cuda_device().map(|_| ())
    } else {
        Ok(())
    }
}

fn cuda_error(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("--device cuda: {e}"))
        .with_hint("run on a machine with an NVIDIA GPU and its driver, or use the CPU")
}

/// The number of CUDA devices.
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<usize> {
    mote_cuda::Cuda::available().map_err(cuda_error)
}

/// Runs `work` on GPU 0 with an arena of `floats`.
#[cfg(feature = "cuda")]
fn run_on_cuda<W: WithBackend>(floats: usize, work: W) -> Result<W::Output> {
    work.run(cuda_backend(floats, mote_cuda::Options::default()).map_err(cuda_error)?)
}

/// A CUDA backend of `floats` for a model. Its convolutions run in a scratch of its own
/// ([`mote_cuda::Options::conv_workspace_bytes`]); only where `options` has none does the arena
/// get [`mote_cuda::CONV_SCRATCH`] more floats where the GPU has the memory, room above the plan
/// for the core's whole-batch im2col passes (without the room when it does not fit).
///
/// # Errors
/// As [`mote_cuda::Cuda::with_options`] for `floats` alone.
#[cfg(feature = "cuda")]
pub fn cuda_backend(
    floats: usize,
    options: mote_cuda::Options,
) -> std::result::Result<mote_cuda::Cuda, mote_cuda::CudaError> {
    if options.conv_workspace_bytes > 0 {
        return mote_cuda::Cuda::with_options(floats, options);
    }
    let roomy = floats.saturating_add(mote_cuda::CONV_SCRATCH);
    mote_cuda::Cuda::with_options(roomy, options)
        .or_else(|_| mote_cuda::Cuda::with_options(floats, options))
}

#[cfg(not(feature = "cuda"))]
fn no_cuda_feature() -> Error {
    cuda_error("this mote was built without the cuda feature")
        .with_hint("rebuild with default features: cargo build --release -p mote-runtime")
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<usize> {
    Err(no_cuda_feature())
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<W: WithBackend>(_floats: usize, _work: W) -> Result<W::Output> {
    Err(no_cuda_feature())
}

#[cfg(test)]
mod tests {
    use super::Activation;
    use clap::ValueEnum;

    /// Arenas are compared with the machine's memory before any is made (where the system
    /// overcommits, filling one past it gets the process killed).
    #[test]
    fn arenas_past_the_machines_memory_are_refused_first() {
        let too_big = || crate::Error::invalid("too big");
        let made = super::arenas_within(256, 3, Some(3 * 1024), too_big).unwrap();
        assert_eq!(made.len(), 3);
        assert!(made
            .iter()
            .all(|a| a.len() == 256 && a.iter().all(|&v| v == 0.0)));
        let e = super::arenas_within(256, 3, Some(3 * 1024 - 1), too_big).unwrap_err();
        assert!(e.to_string().contains("too big"), "{e}");
        // Unknown memory: only the allocation decides.
        assert_eq!(super::arenas_within(4, 2, None, too_big).unwrap().len(), 2);
        // A byte count past the address space is refused, not wrapped.
        assert!(super::arenas_within(usize::MAX / 2, 3, None, too_big).is_err());
    }

    /// The names of the table are the ones the command line and a checkpoint's JSON use.
    #[test]
    fn activation_names_are_the_cli_and_checkpoint_spellings() {
        for &a in Activation::value_variants() {
            let cli = a.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), a.name());
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.name())
            );
        }
    }
    /// `rows x width` ones through dropout site `site` with `masks`, read back.
    fn dropped(p: f32, masks: Option<super::Masks>, site: usize, rows: usize) -> Vec<f32> {
        let width = 100;
        let mut mem = vec![0f32; 4 * rows * width];
        let mut t = mote::Tape::<_, 8>::with_backend(mote::Cpu::new(&mut mem));
        let net = super::Mlp {
            activation: Activation::Relu,
            convs: vec![],
            image: vec![],
            layers: vec![],
            dropout: p,
            masks,
        };
        let x = t.input_with(&[rows, width], || 1.0).unwrap();
        let y = net.dropout(&mut t, x, site).unwrap();
        let mut out = vec![0.0; rows * width];
        t.read(y, &mut out).unwrap();
        out
    }

    /// Dropout masks: about `p` of the elements zeroed (and pairs of neighbours about `p^2`),
    /// the rest scaled by `1 / (1 - p)`; a row's mask depends on its place in the batch only,
    /// so a shard's rows are the whole batch's; another step or site draws another mask; no
    /// masks (evaluation): the identity.
    #[test]
    fn dropout_masks_are_by_row_and_keep_one_minus_p() {
        let p = 0.3;
        let m = super::Masks {
            seed: 42,
            step: 7,
            first_row: 0,
        };
        let all = dropped(p, Some(m), 0, 64);
        let n = all.len() as f64;
        let zeros = all.iter().filter(|&&v| v == 0.0).count() as f64;
        let sd = (0.3 * 0.7 / n).sqrt();
        assert!((zeros / n - 0.3).abs() < 4.0 * sd, "{} zeroed", zeros / n);
        assert!(all.iter().all(|&v| v == 0.0 || v == 1.0 / 0.7f32));
        let pairs = all.chunks(100).flat_map(|r| r.windows(2)).count() as f64;
        let both = all
            .chunks(100)
            .flat_map(|r| r.windows(2))
            .filter(|w| w[0] == 0.0 && w[1] == 0.0)
            .count() as f64;
        let sd2 = (0.09 * 0.91 / pairs).sqrt();
        assert!(
            (both / pairs - 0.09).abs() < 4.0 * sd2,
            "{} neighbours",
            both / pairs
        );
        let shard = dropped(p, Some(super::Masks { first_row: 16, ..m }), 0, 16);
        assert_eq!(shard, all[1600..3200]);
        let differ = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
        };
        let next = dropped(p, Some(super::Masks { step: 8, ..m }), 0, 64);
        assert!(differ(&all, &next) > 0.3, "another step");
        assert!(
            differ(&all, &dropped(p, Some(m), 1, 64)) > 0.3,
            "another site"
        );
        assert!(dropped(p, None, 0, 4).iter().all(|&v| v == 1.0));
        assert!(dropped(0.0, Some(m), 0, 4).iter().all(|&v| v == 1.0));
    }

    /// PyTorch's weighted, smoothed cross-entropy through probability targets: weights
    /// [1, 2, 4], labels [2, 0, 2], smoothing 0.3; the denominator is 4 + 1 + 4 = 9.
    #[test]
    fn weighted_targets_are_pytorchs_weighted_mean() {
        let w = [1.0, 2.0, 4.0];
        assert_eq!(super::class_weight_scale(&w, &[2, 0, 2]), 3.0 / 9.0);
        let q = super::weighted_targets(&w, &[2, 0, 2], 0.3, 3.0 / 9.0).unwrap();
        let k = 3.0 / 9.0;
        let row = |y: usize| -> Vec<f64> {
            let w = [1.0, 2.0, 4.0];
            (0..3)
                .map(|c| {
                    let hit = if c == y { 0.7 * w[y] } else { 0.0 };
                    (hit + 0.1 * w[c]) * k
                })
                .collect()
        };
        let want: Vec<f64> = [row(2), row(0), row(2)].concat();
        for (g, w) in q.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{q:?} vs {want:?}");
        }
        // Rows of weight 0 only: nothing to learn from this batch.
        assert_eq!(super::class_weight_scale(&[0.0, 1.0], &[0, 0]), 0.0);
        let zero = super::weighted_targets(&[0.0, 1.0], &[0, 0], 0.0, 0.0).unwrap();
        assert!(zero.iter().all(|&v| v == 0.0));
        assert!(super::weighted_targets(&[1.0, 1.0], &[0, 2], 0.0, 1.0).is_err());
    }
}
