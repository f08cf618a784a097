//! Elementwise unary ops: `y = f(x)`, `dx += f'(x) * dy`.
//!
//! | op | f(x) | f'(x) | at kinks |
//! | --- | --- | --- | --- |
//! | `Neg` | -x | -1 | |
//! | `AddScalar(c)` | x + c | 1 | |
//! | `MulScalar(c)` | c x | c | |
//! | `Exp` | e^x | e^x (= y) | |
//! | `Log` | ln x | 1 / x | x <= 0 gives NaN/-inf, as in PyTorch |
//! | `Sqrt` | sqrt x | 1 / (2 y) | +inf at 0, as in PyTorch |
//! | `Square` | x^2 | 2x | |
//! | `Pow(p)` | x^p | p x^(p-1) | 0 for p = 0 (PyTorch), also at x = 0 |
//! | `Relu` | max(x, 0) | 1 if x > 0 else 0 | 0 at x = 0 (PyTorch, dfdx, tinygrad) |
//! | `LeakyRelu(a)` | x if x > 0 else a x | 1 if x > 0 else a | a at x = 0 (PyTorch) |
//! | `Sigmoid` | 1 / (1 + e^-x) | y (1 - y) | |
//! | `Tanh` | tanh x | 1 - y^2 | |
//! | `Gelu` | x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi) | see [`gelu_grad`] | [`crate::Tape::gelu_tanh`] |
//! | `GeluErf` | x Phi(x) = x/2 (1 + erf(x / sqrt 2)) | Phi(x) + x phi(x) | [`crate::Tape::gelu`], PyTorch's default |
//! | `Abs` | \|x\| | sign(x) | 0 at x = 0 (PyTorch) |
//! | `ClampMin(c)` | max(x, c) | 1 if x >= c else 0 | 1 at x = c (PyTorch) |
//! | `ClampMax(c)` | min(x, c) | 1 if x <= c else 0 | 1 at x = c (PyTorch) |
//! | `Silu` | x s(x), s the sigmoid | s (1 + x (1 - s)) | |
//! | `Elu(a)` | x if x > 0 else a (e^x - 1) | 1 if x > 0 else a e^x | a at x = 0 (PyTorch) |
//! | `Softplus` | ln(1 + e^x); x above 20 | s(x); 1 above 20 | |
//! | `Hardsigmoid` | min(max(x + 3, 0), 6) / 6 | 1/6 if -3 < x < 3 else 0 | 0 at x = +-3 (PyTorch) |
//! | `Hardswish` | x hardsigmoid(x) | 0 below -3, x/3 + 1/2 up to 3, 1 above | x/3 + 1/2 at +-3 (PyTorch) |
//! | `Relu6` | min(max(x, 0), 6) | 1 if 0 < x < 6 else 0 | 0 at x = 0 and 6 (PyTorch) |
//!
//! Where an op's derivative is a mask ([`UnaryOp::masks`]), the backward adds nothing where it
//! is 0, so a NaN `dy` there does not reach `dx`.

use crate::float::Float;

/// An elementwise unary op. Scalar arguments are stored as `f32` to keep tape nodes small.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// x + c
    AddScalar(f32),
    /// c x
    MulScalar(f32),
    /// e^x
    Exp,
    /// ln x
    Log,
    /// sqrt x
    Sqrt,
    /// x^2
    Square,
    /// x^p
    Pow(f32),
    /// max(x, 0)
    Relu,
    /// x if x > 0, else slope * x
    LeakyRelu(f32),
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// GELU, tanh approximation (PyTorch's `approximate="tanh"`; [`crate::Tape::gelu_tanh`])
    Gelu,
    /// |x|
    Abs,
    /// max(x, c): PyTorch's `clamp_min` (NaN stays NaN)
    ClampMin(f32),
    /// min(x, c): PyTorch's `clamp_max` (NaN stays NaN)
    ClampMax(f32),
    /// x sigmoid(x): SiLU, or swish
    Silu,
    /// x if x > 0, else alpha (e^x - 1): ELU with its alpha
    Elu(f32),
    /// ln(1 + e^x), and x itself above 20 (PyTorch's `softplus` with beta 1, threshold 20)
    Softplus,
    /// GELU, exact: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's default `F.gelu`;
    /// [`crate::Tape::gelu`])
    GeluErf,
    /// min(max(x / 6 + 1/2, 0), 1): PyTorch's `hardsigmoid`
    Hardsigmoid,
    /// x hardsigmoid(x): PyTorch's `hardswish` (MobileNetV3)
    Hardswish,
    /// min(max(x, 0), 6): PyTorch's `relu6` (its gradient is 0 at 0 and at 6, as
    /// `hardtanh`'s, where `clamp`'s passes)
    Relu6,
}

impl UnaryOp {
    /// Every op, with a sample argument where it takes one: for tests and tools that go over
    /// all of them (a new op added here is checked by every backend's test of this list).
    pub const EVERY: [UnaryOp; 23] = [
        UnaryOp::Neg,
        UnaryOp::AddScalar(0.7),
        UnaryOp::MulScalar(-1.3),
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Pow(2.5),
        UnaryOp::Relu,
        UnaryOp::LeakyRelu(0.1),
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::Abs,
        UnaryOp::ClampMin(-0.5),
        UnaryOp::ClampMax(0.8),
        UnaryOp::Silu,
        UnaryOp::Elu(1.2),
        UnaryOp::Softplus,
        UnaryOp::GeluErf,
        UnaryOp::Hardsigmoid,
        UnaryOp::Hardswish,
        UnaryOp::Relu6,
    ];

    /// Whether the op's derivative is a mask, 0 over whole ranges of inputs (`Relu`, the
    /// clamps, `Relu6`, `Hardsigmoid`, `Hardswish` below -3): there the backward adds nothing,
    /// so that a NaN or infinite `dy` is not spread into `dx` (PyTorch selects there too).
    pub fn masks(self) -> bool {
        matches!(
            self,
            UnaryOp::Relu
                | UnaryOp::ClampMin(_)
                | UnaryOp::ClampMax(_)
                | UnaryOp::Relu6
                | UnaryOp::Hardsigmoid
                | UnaryOp::Hardswish
        )
    }

    /// Whether the backward adds nothing at `x`, whose derivative is `d`: a masking op
    /// ([`UnaryOp::masks`]) where its mask is off. That is where `d` is 0, except for
    /// `Hardswish` at -1.5, where its slope `x / 3 + 1/2` is 0 but its mask is on.
    #[inline]
    pub fn drops<T: Float>(self, x: T, d: T) -> bool {
        self.masks() && d == T::ZERO && !(self == UnaryOp::Hardswish && x >= T::from_f64(-3.0))
    }

    /// Where the op is not differentiable (at most two points, `None` where there are fewer):
    /// the kinks of the table above. Gradient checks by finite differences keep away from them.
    pub fn kinks(self) -> [Option<f32>; 2] {
        match self {
            UnaryOp::Relu | UnaryOp::LeakyRelu(_) | UnaryOp::Abs | UnaryOp::Elu(_) => {
                [Some(0.0), None]
            }
            UnaryOp::ClampMin(c) | UnaryOp::ClampMax(c) => [Some(c), None],
            UnaryOp::Hardsigmoid | UnaryOp::Hardswish => [Some(-3.0), Some(3.0)],
            UnaryOp::Relu6 => [Some(0.0), Some(6.0)],
            _ => [None, None],
        }
    }

    /// Whether the op needs positive inputs to be finite and differentiable: `Log`, `Sqrt`,
    /// and `Pow` (whose exponent may be fractional).
    pub fn needs_positive(self) -> bool {
        matches!(self, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Pow(_))
    }

    /// The op as a small code and its scalar argument (0 for ops without one): how a tape node
    /// and a replay list store it (an `Op` of 8 bytes instead of 12), and the op code of the
    /// CUDA kernels (`cuda/kernels/unary.cu`).
    pub fn pack(self) -> (u8, f32) {
        match self {
            UnaryOp::Neg => (0, 0.0),
            UnaryOp::AddScalar(c) => (1, c),
            UnaryOp::MulScalar(c) => (2, c),
            UnaryOp::Exp => (3, 0.0),
            UnaryOp::Log => (4, 0.0),
            UnaryOp::Sqrt => (5, 0.0),
            UnaryOp::Square => (6, 0.0),
            UnaryOp::Pow(p) => (7, p),
            UnaryOp::Relu => (8, 0.0),
            UnaryOp::LeakyRelu(s) => (9, s),
            UnaryOp::Sigmoid => (10, 0.0),
            UnaryOp::Tanh => (11, 0.0),
            UnaryOp::Gelu => (12, 0.0),
            UnaryOp::Abs => (13, 0.0),
            UnaryOp::ClampMin(c) => (14, c),
            UnaryOp::ClampMax(c) => (15, c),
            UnaryOp::Silu => (16, 0.0),
            UnaryOp::Elu(a) => (17, a),
            UnaryOp::Softplus => (18, 0.0),
            UnaryOp::GeluErf => (19, 0.0),
            UnaryOp::Hardsigmoid => (20, 0.0),
            UnaryOp::Hardswish => (21, 0.0),
            UnaryOp::Relu6 => (22, 0.0),
        }
    }

    /// The op back from [`UnaryOp::pack`]; `None` for an unknown code.
    pub(crate) fn unpack(code: u8, c: f32) -> Option<UnaryOp> {
        Some(match code {
            0 => UnaryOp::Neg,
            1 => UnaryOp::AddScalar(c),
            2 => UnaryOp::MulScalar(c),
            3 => UnaryOp::Exp,
            4 => UnaryOp::Log,
            5 => UnaryOp::Sqrt,
            6 => UnaryOp::Square,
            7 => UnaryOp::Pow(c),
            8 => UnaryOp::Relu,
            9 => UnaryOp::LeakyRelu(c),
            10 => UnaryOp::Sigmoid,
            11 => UnaryOp::Tanh,
            12 => UnaryOp::Gelu,
            13 => UnaryOp::Abs,
            14 => UnaryOp::ClampMin(c),
            15 => UnaryOp::ClampMax(c),
            16 => UnaryOp::Silu,
            17 => UnaryOp::Elu(c),
            18 => UnaryOp::Softplus,
            19 => UnaryOp::GeluErf,
            20 => UnaryOp::Hardsigmoid,
            21 => UnaryOp::Hardswish,
            22 => UnaryOp::Relu6,
            _ => return None,
        })
    }
}

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_K: f64 = 0.044_715;

/// Logistic sigmoid, stable for large |x|.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// GELU, tanh approximation ([`UnaryOp::Gelu`], what [`crate::Tape::gelu_tanh`] runs; the
/// exact GELU, PyTorch's default and [`crate::Tape::gelu`], is [`gelu_erf`]).
#[inline]
pub fn gelu<T: Float>(x: T) -> T {
    let c = T::from_f64(GELU_C);
    let k = T::from_f64(GELU_K);
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (c * (x + k * x * x * x)).tanh())
}

/// Derivative of [`gelu`]: `0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2)`, `t = tanh(c (x + k x^3))`.
#[inline]
pub fn gelu_grad<T: Float>(x: T) -> T {
    let c = T::from_f64(GELU_C);
    let k = T::from_f64(GELU_K);
    let half = T::from_f64(0.5);
    let t = (c * (x + k * x * x * x)).tanh();
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * c * (T::ONE + T::from_f64(3.0) * k * x * x)
}

const FRAC_1_SQRT_2: f64 = core::f64::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7; // 1 / sqrt(2 pi)
/// Above this, softplus is x itself (PyTorch's default threshold).
const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// The standard normal distribution function, `Phi(x) = erfc(-x / sqrt 2) / 2` (through
/// `erfc`, which keeps its relative accuracy far into the lower tail, where `1 + erf` would
/// cancel to 0).
#[inline]
fn normal_cdf<T: Float>(x: T) -> T {
    T::from_f64(0.5) * (-x * T::from_f64(FRAC_1_SQRT_2)).erfc()
}

/// GELU, exact: `x Phi(x)`, `Phi` the standard normal distribution function
/// ([`UnaryOp::GeluErf`], what [`crate::Tape::gelu`] runs).
#[inline]
pub fn gelu_erf<T: Float>(x: T) -> T {
    x * normal_cdf(x)
}

/// Derivative of [`gelu_erf`]: `Phi(x) + x phi(x)`, `phi(x) = e^(-x^2 / 2) / sqrt(2 pi)`.
#[inline]
pub fn gelu_erf_grad<T: Float>(x: T) -> T {
    let pdf = T::from_f64(FRAC_1_SQRT_2PI) * (T::from_f64(-0.5) * x * x).exp();
    normal_cdf(x) + x * pdf
}

/// ReLU6, `min(max(x, 0), 6)` (NaN stays NaN).
#[inline]
pub fn relu6<T: Float>(x: T) -> T {
    let six = T::from_f64(6.0);
    if x < T::ZERO {
        T::ZERO
    } else if x > six {
        six
    } else {
        x
    }
}

/// Hard sigmoid, `relu6(x + 3) / 6`, as PyTorch computes it (NaN stays NaN).
#[inline]
pub fn hardsigmoid<T: Float>(x: T) -> T {
    relu6(x + T::from_f64(3.0)) / T::from_f64(6.0)
}

/// Softplus, `ln(1 + e^x)`, computed as `x` above 20 (where they agree in f32 and f64 to
/// within `e^-20`), as PyTorch does.
#[inline]
pub fn softplus<T: Float>(x: T) -> T {
    if x > T::from_f64(SOFTPLUS_THRESHOLD) {
        x
    } else {
        x.exp().ln_1p()
    }
}

impl UnaryOp {
    /// The op's name, for errors and debugging.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::AddScalar(_) => "add_scalar",
            UnaryOp::MulScalar(_) => "mul_scalar",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Pow(_) => "pow",
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu_tanh",
            UnaryOp::Abs => "abs",
            UnaryOp::ClampMin(_) => "clamp_min",
            UnaryOp::ClampMax(_) => "clamp_max",
            UnaryOp::Silu => "silu",
            UnaryOp::Elu(_) => "elu",
            UnaryOp::Softplus => "softplus",
            UnaryOp::GeluErf => "gelu",
            UnaryOp::Hardsigmoid => "hardsigmoid",
            UnaryOp::Hardswish => "hardswish",
            UnaryOp::Relu6 => "relu6",
        }
    }

    /// f(x).
    #[inline]
    pub fn apply<T: Float>(self, x: T) -> T {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::AddScalar(c) => x + T::from_f32(c),
            UnaryOp::MulScalar(c) => x * T::from_f32(c),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Pow(p) => x.powf(T::from_f32(p)),
            // NOTE: NaN stays NaN through relu (PyTorch does the same).
            UnaryOp::Relu => {
                if x > T::ZERO || x.is_nan() {
                    x
                } else {
                    T::ZERO
                }
            }
            UnaryOp::LeakyRelu(a) => {
                if x > T::ZERO {
                    x
                } else {
                    x * T::from_f32(a)
                }
            }
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Gelu => gelu(x),
            UnaryOp::Abs => x.abs(),
            UnaryOp::ClampMin(c) => {
                let c = T::from_f32(c);
                if x < c {
                    c
                } else {
                    x
                }
            }
            UnaryOp::ClampMax(c) => {
                let c = T::from_f32(c);
                if x > c {
                    c
                } else {
                    x
                }
            }
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Elu(a) => {
                if x > T::ZERO {
                    x
                } else {
                    T::from_f32(a) * x.exp_m1()
                }
            }
            UnaryOp::Softplus => softplus(x),
            UnaryOp::GeluErf => gelu_erf(x),
            UnaryOp::Hardsigmoid => hardsigmoid(x),
            UnaryOp::Hardswish => x * hardsigmoid(x),
            UnaryOp::Relu6 => relu6(x),
        }
    }

    /// f'(x), given x and y = f(x).
    #[inline]
    pub fn derivative<T: Float>(self, x: T, y: T) -> T {
        match self {
            UnaryOp::Neg => -T::ONE,
            UnaryOp::AddScalar(_) => T::ONE,
            UnaryOp::MulScalar(c) => T::from_f32(c),
            UnaryOp::Exp => y,
            UnaryOp::Log => T::ONE / x,
            UnaryOp::Sqrt => T::ONE / (y + y),
            UnaryOp::Square => x + x,
            // x^0 is constant: 0, not 0 * x^-1 (NaN at x = 0), as PyTorch's `pow_backward`.
            UnaryOp::Pow(0.0) => T::ZERO,
            UnaryOp::Pow(p) => {
                let p = T::from_f32(p);
                p * x.powf(p - T::ONE)
            }
            // NOTE: relu'(0) = 0, as in PyTorch, dfdx, micrograd and tinygrad (candle uses 1).
            UnaryOp::Relu => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            // NOTE: leaky_relu'(0) = slope, as in PyTorch.
            UnaryOp::LeakyRelu(a) => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::from_f32(a)
                }
            }
            UnaryOp::Sigmoid => y * (T::ONE - y),
            UnaryOp::Tanh => T::ONE - y * y,
            UnaryOp::Gelu => gelu_grad(x),
            // NOTE: abs'(0) = 0, as PyTorch's sign(0).
            UnaryOp::Abs => {
                if x > T::ZERO {
                    T::ONE
                } else if x < T::ZERO {
                    -T::ONE
                } else {
                    T::ZERO
                }
            }
            // NOTE: at x = c the gradient passes (PyTorch's clamp masks are inclusive).
            UnaryOp::ClampMin(c) => {
                if x >= T::from_f32(c) {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            UnaryOp::ClampMax(c) => {
                if x <= T::from_f32(c) {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (T::ONE + x * (T::ONE - s))
            }
            // NOTE: elu'(0) = alpha, as in PyTorch.
            UnaryOp::Elu(a) => {
                if x > T::ZERO {
                    T::ONE
                } else {
                    T::from_f32(a) * x.exp()
                }
            }
            UnaryOp::Softplus => {
                if x > T::from_f64(SOFTPLUS_THRESHOLD) {
                    T::ONE
                } else {
                    sigmoid(x)
                }
            }
            UnaryOp::GeluErf => gelu_erf_grad(x),
            // NOTE: zero at x = -3 and x = 3, as in PyTorch.
            UnaryOp::Hardsigmoid => {
                let three = T::from_f64(3.0);
                if x > -three && x < three {
                    T::ONE / T::from_f64(6.0)
                } else {
                    T::ZERO
                }
            }
            // NOTE: as PyTorch: 0 below -3, x / 3 + 1/2 up to 3 (both included), 1 above.
            UnaryOp::Hardswish => {
                let three = T::from_f64(3.0);
                if x < -three {
                    T::ZERO
                } else if x <= three {
                    x / three + T::from_f64(0.5)
                } else {
                    T::ONE
                }
            }
            // NOTE: 0 at x = 0 and x = 6, as PyTorch's hardtanh.
            UnaryOp::Relu6 => {
                if x > T::ZERO && x < T::from_f64(6.0) {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }
}

/// Reference forward kernel: `y[i] = f(x[i])`.
pub fn forward<T: Float>(op: UnaryOp, x: &[T], y: &mut [T]) {
    match op {
        // The hot ones get their own loops so that the match is not inside the loop.
        UnaryOp::Relu => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = UnaryOp::Relu.apply(x);
            }
        }
        UnaryOp::Sigmoid => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = sigmoid(x);
            }
        }
        _ => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = op.apply(x);
            }
        }
    }
}

/// Reference backward kernel: `dx[i] += f'(x[i]) * dy[i]`.
pub fn backward<T: Float>(op: UnaryOp, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    match op {
        UnaryOp::Relu => {
            for (dx, (&x, &dy)) in dx.iter_mut().zip(x.iter().zip(dy)) {
                if x > T::ZERO {
                    *dx += dy;
                }
            }
        }
        UnaryOp::Sigmoid => {
            for (dx, (&y, &dy)) in dx.iter_mut().zip(y.iter().zip(dy)) {
                *dx += y * (T::ONE - y) * dy;
            }
        }
        _ if op.masks() => {
            for (dx, ((&x, &y), &dy)) in dx.iter_mut().zip(x.iter().zip(y).zip(dy)) {
                let d = op.derivative(x, y);
                if !op.drops(x, d) {
                    *dx += d * dy;
                }
            }
        }
        _ => {
            for (dx, ((&x, &y), &dy)) in dx.iter_mut().zip(x.iter().zip(y).zip(dy)) {
                *dx += op.derivative(x, y) * dy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from PyTorch 2.x: torch.nn.functional.gelu(x, approximate="tanh"),
    // torch.sigmoid, torch.tanh, leaky_relu(x, 0.1), at x = -2, -0.5, 0, 0.5, 2.
    #[test]
    fn forward_values_match_pytorch() {
        let xs = [-2.0f64, -0.5, 0.0, 0.5, 2.0];
        let gelu_ref = [-0.045_402_3, -0.154_285_99, 0.0, 0.345_714, 1.954_597_7];
        let sig_ref = [0.119_202_92, 0.377_540_67, 0.5, 0.622_459_33, 0.880_797_08];
        let tanh_ref = [-0.964_027_6, -0.462_117_16, 0.0, 0.462_117_16, 0.964_027_6];
        for (i, &x) in xs.iter().enumerate() {
            assert!(
                (UnaryOp::Gelu.apply(x) - gelu_ref[i]).abs() < 1e-6,
                "gelu({x})"
            );
            assert!(
                (UnaryOp::Sigmoid.apply(x) - sig_ref[i]).abs() < 1e-7,
                "sigmoid({x})"
            );
            assert!(
                (UnaryOp::Tanh.apply(x) - tanh_ref[i]).abs() < 1e-7,
                "tanh({x})"
            );
        }
        assert_eq!(UnaryOp::LeakyRelu(0.1).apply(-2.0f64), -2.0 * 0.1f32 as f64);
        assert_eq!(UnaryOp::Relu.apply(-0.0f64), 0.0);
        assert_eq!(UnaryOp::Pow(3.0).apply(2.0f64), 8.0);
        assert!((UnaryOp::Sigmoid.apply(-1000.0f32)).abs() < 1e-30);
        assert_eq!(UnaryOp::Sigmoid.apply(1000.0f32), 1.0);
    }

    // f64 values of the definitions (PyTorch's formulas, evaluated in Python's `math`), at
    // x = -4, -3, -0.5, 0, 0.5, 3, 25.
    #[test]
    fn more_activations_match_their_definitions() {
        let xs = [-4.0f64, -3.0, -0.5, 0.0, 0.5, 3.0, 25.0];
        let table: [(UnaryOp, [f64; 7]); 6] = [
            (
                UnaryOp::Silu,
                [
                    -0.071_944_839_848_366_23,
                    -0.142_277_619_532_700_35,
                    -0.188_770_334_399_072_7,
                    0.0,
                    0.311_229_665_600_927_3,
                    2.857_722_380_467_3,
                    24.999_999_999_652_8,
                ],
            ),
            (
                UnaryOp::Elu(1.0),
                [
                    -0.981_684_361_111_265_8,
                    -0.950_212_931_632_136,
                    -0.393_469_340_287_366_6,
                    0.0,
                    0.5,
                    3.0,
                    25.0,
                ],
            ),
            (
                UnaryOp::Softplus,
                [
                    0.018_149_927_917_809_738,
                    0.048_587_351_573_742_06,
                    0.474_076_984_180_106_7,
                    core::f64::consts::LN_2,
                    0.974_076_984_180_106_7,
                    3.048_587_351_573_742,
                    25.0,
                ],
            ),
            (
                UnaryOp::GeluErf,
                [
                    -0.000_126_684_967_332_479_91,
                    -0.004_049_694_094_890_31,
                    -0.154_268_769_362_993_44,
                    0.0,
                    0.345_731_230_637_006_56,
                    2.995_950_305_905_11,
                    25.0,
                ],
            ),
            (
                UnaryOp::Hardsigmoid,
                [
                    0.0,
                    0.0,
                    0.416_666_666_666_666_7,
                    0.5,
                    0.583_333_333_333_333_4,
                    1.0,
                    1.0,
                ],
            ),
            (
                UnaryOp::Hardswish,
                [
                    0.0,
                    0.0,
                    -0.208_333_333_333_333_34,
                    0.0,
                    0.291_666_666_666_666_7,
                    3.0,
                    25.0,
                ],
            ),
        ];
        for (op, want) in table {
            for (&x, &w) in xs.iter().zip(&want) {
                let got = op.apply(x);
                assert!(
                    (got - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "{}({x}) = {got}, not {w}",
                    op.name()
                );
                let got32 = op.apply(x as f32) as f64;
                assert!(
                    (got32 - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{}({x}) in f32 = {got32}, not {w}",
                    op.name()
                );
            }
        }
        assert_eq!(UnaryOp::Abs.apply(-2.5f32), 2.5);
        assert_eq!(UnaryOp::ClampMin(-0.5).apply(-2.0f32), -0.5);
        assert_eq!(UnaryOp::ClampMax(0.5).apply(2.0f32), 0.5);
        for op in [
            UnaryOp::ClampMin(0.0),
            UnaryOp::ClampMax(0.0),
            UnaryOp::Hardsigmoid,
        ] {
            assert!(op.apply(f32::NAN).is_nan(), "{} keeps NaN", op.name());
        }
    }

    #[test]
    fn kinks_follow_the_documented_conventions() {
        assert_eq!(UnaryOp::Abs.derivative(0.0f64, 0.0), 0.0);
        assert_eq!(UnaryOp::ClampMin(1.0).derivative(1.0f64, 1.0), 1.0);
        assert_eq!(UnaryOp::ClampMax(1.0).derivative(1.0f64, 1.0), 1.0);
        assert_eq!(UnaryOp::Elu(0.5).derivative(0.0f64, 0.0), 0.5);
        assert_eq!(UnaryOp::Hardsigmoid.derivative(3.0f64, 1.0), 0.0);
        assert_eq!(UnaryOp::Hardsigmoid.derivative(-3.0f64, 0.0), 0.0);
        assert_eq!(UnaryOp::Hardswish.derivative(3.0f64, 3.0), 1.5);
        assert_eq!(UnaryOp::Hardswish.derivative(-3.0f64, 0.0), -0.5);
        assert_eq!(UnaryOp::Relu6.derivative(0.0f64, 0.0), 0.0);
        assert_eq!(UnaryOp::Relu6.derivative(6.0f64, 6.0), 0.0);
        assert_eq!(UnaryOp::Relu6.apply(7.5f32), 6.0);
        assert_eq!(UnaryOp::Relu6.apply(-7.5f32), 0.0);
        // x^0 is constant: its gradient is 0 everywhere, at 0 too (not 0 * 0^-1 = NaN)
        for x in [0.0f64, -2.0, 3.5] {
            assert_eq!(UnaryOp::Pow(0.0).derivative(x, 1.0), 0.0);
        }
        for op in UnaryOp::EVERY {
            let (code, arg) = op.pack();
            assert_eq!(
                UnaryOp::unpack(code, arg),
                Some(op),
                "{} packs and unpacks",
                op.name()
            );
        }
        // EVERY holds every op: as many as there are codes
        let codes = (0..=u8::MAX)
            .filter(|&c| UnaryOp::unpack(c, 0.5).is_some())
            .count();
        assert_eq!(codes, UnaryOp::EVERY.len());
        // hard swish's slope is 0 at -1.5, inside its mask: a NaN dy goes through there
        let mut dx = [1.0f64];
        backward(UnaryOp::Hardswish, &[-1.5], &[0.0], &[f64::NAN], &mut dx);
        assert!(dx[0].is_nan());
        // where a derivative is a mask and 0, a NaN dy stays out of dx
        for op in UnaryOp::EVERY.into_iter().filter(|op| op.masks()) {
            let x = [-10.0f64, 10.0];
            let mut y = [0.0; 2];
            forward(op, &x, &mut y);
            let mut dx = [1.0; 2];
            backward(op, &x, &y, &[f64::NAN; 2], &mut dx);
            for i in 0..2 {
                let zero = op.derivative(x[i], y[i]) == 0.0;
                assert_eq!(dx[i] == 1.0, zero, "{} at {}", op.name(), x[i]);
            }
        }
    }

    /// Every op's derivative against a central difference in f64 at fixed points, saturated
    /// branches included (|x| > 3 for the hard ones, softplus above 20), away from kinks.
    #[test]
    fn derivatives_at_fixed_points() {
        let points = [
            -25.0f64, -7.5, -4.0, -2.9, -1.3, -0.4, 0.3, 0.9, 2.9, 4.0, 5.9, 6.5, 19.5, 20.5, 25.0,
        ];
        for op in UnaryOp::EVERY {
            for &x in &points {
                let near = op
                    .kinks()
                    .iter()
                    .flatten()
                    .any(|&k| (x - k as f64).abs() < 1e-3);
                if near || (op.needs_positive() && x <= 0.0) || (op == UnaryOp::Exp && x > 20.0) {
                    continue;
                }
                let h = 1e-6 * x.abs().max(1.0);
                let numeric = (op.apply(x + h) - op.apply(x - h)) / (2.0 * h);
                let analytic = op.derivative(x, op.apply(x));
                let tol = 1e-6 * numeric.abs().max(1.0);
                assert!(
                    (numeric - analytic).abs() <= tol,
                    "{} at {x}: {analytic} vs numeric {numeric}",
                    op.name()
                );
            }
        }
        assert_eq!(UnaryOp::Relu.derivative(0.0f64, 0.0), 0.0);
        assert_eq!(
            UnaryOp::LeakyRelu(0.1).derivative(0.0f64, 0.0),
            0.1f32 as f64
        );
        let mut dx = [0.0f64; 2];
        backward(
            UnaryOp::Relu,
            &[0.0, 1.0],
            &[0.0, 1.0],
            &[5.0, 5.0],
            &mut dx,
        );
        assert_eq!(dx, [0.0, 5.0]);
    }
}

mod tape_ops {
    use super::UnaryOp;
    use crate::backend::{Backend, View};
    use crate::error::{Error, Result};
    use crate::tape::{Op, Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// Applies an elementwise unary op (see [`UnaryOp`]).
        ///
        /// # Errors
        /// [`crate::Error::StaleHandle`], [`crate::Error::ArenaFull`], [`crate::Error::TapeFull`];
        /// [`crate::Error::InvalidArgument`] for a clamp with a NaN bound.
        pub fn unary(&mut self, op: UnaryOp, x: Var) -> Result<Var> {
            if let UnaryOp::ClampMin(c) | UnaryOp::ClampMax(c) = op {
                if c.is_nan() {
                    return Err(crate::Error::InvalidArgument {
                        what: "clamp: a NaN bound",
                    });
                }
            }
            let (code, arg) = op.pack();
            self.record(
                Op::Unary { code, arg },
                Self::bw_unary,
                &[x],
                x.shape,
                |b, y| b.unary(op, x.offset as usize, y.offset, y.len()),
            )
        }

        /// `-x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn neg(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Neg, x)
        }

        /// `x + c`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn add_scalar(&mut self, x: Var, c: f32) -> Result<Var> {
            self.unary(UnaryOp::AddScalar(c), x)
        }

        /// `c x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn mul_scalar(&mut self, x: Var, c: f32) -> Result<Var> {
            self.unary(UnaryOp::MulScalar(c), x)
        }

        /// `e^x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn exp(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Exp, x)
        }

        /// `ln x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn log(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Log, x)
        }

        /// `sqrt x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn sqrt(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Sqrt, x)
        }

        /// `x^2`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn square(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Square, x)
        }

        /// `x^p`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn pow(&mut self, x: Var, p: f32) -> Result<Var> {
            self.unary(UnaryOp::Pow(p), x)
        }

        /// `max(x, 0)`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn relu(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Relu, x)
        }

        /// `x` where positive, `slope x` elsewhere.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn leaky_relu(&mut self, x: Var, slope: f32) -> Result<Var> {
            self.unary(UnaryOp::LeakyRelu(slope), x)
        }

        /// The logistic sigmoid.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn sigmoid(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Sigmoid, x)
        }

        /// `tanh x`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn tanh(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Tanh, x)
        }

        /// GELU, exact (`x Phi(x)`, `Phi` the normal distribution function, through erf):
        /// PyTorch's default `F.gelu(x)` ([`UnaryOp::GeluErf`]).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn gelu(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::GeluErf, x)
        }

        /// GELU, tanh approximation: PyTorch's `F.gelu(x, approximate="tanh")`
        /// ([`UnaryOp::Gelu`]).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn gelu_tanh(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Gelu, x)
        }

        /// `|x|` (gradient 0 at 0, as PyTorch's).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn abs(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Abs, x)
        }

        /// `max(x, min)`: PyTorch's `clamp_min` (the gradient passes where `x >= min`).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn clamp_min(&mut self, x: Var, min: f32) -> Result<Var> {
            self.unary(UnaryOp::ClampMin(min), x)
        }

        /// `min(x, max)`: PyTorch's `clamp_max` (the gradient passes where `x <= max`).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn clamp_max(&mut self, x: Var, max: f32) -> Result<Var> {
            self.unary(UnaryOp::ClampMax(max), x)
        }

        /// `min(max(x, min), max)`: PyTorch's `clamp` (two nodes: [`Tape::clamp_min`], then
        /// [`Tape::clamp_max`]). The gradient passes at the bounds, as `clamp`'s does in
        /// PyTorch (`relu6` and `hardtanh` drop it there: see [`Tape::relu6`]).
        ///
        /// # Errors
        /// [`crate::Error::InvalidArgument`] when `min > max` or either is NaN; else as
        /// [`Tape::unary`].
        pub fn clamp(&mut self, x: Var, min: f32, max: f32) -> Result<Var> {
            // NOTE: `!(min <= max)` is also true when either bound is NaN.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !(min <= max) {
                return Err(crate::Error::InvalidArgument {
                    what: "clamp: bounds out of order (min > max) or NaN",
                });
            }
            self.all_or_nothing(|t| {
                let lo = t.clamp_min(x, min)?;
                t.clamp_max(lo, max)
            })
        }

        /// ReLU6, `min(max(x, 0), 6)` (MobileNet's activation; gradient 0 at 0 and 6, as
        /// PyTorch's).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn relu6(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Relu6, x)
        }

        /// SiLU (swish), `x sigmoid(x)`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn silu(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Silu, x)
        }

        /// ELU: `x` where positive, `alpha (e^x - 1)` elsewhere (PyTorch's default alpha is 1).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn elu(&mut self, x: Var, alpha: f32) -> Result<Var> {
            self.unary(UnaryOp::Elu(alpha), x)
        }

        /// Softplus, `ln(1 + e^x)` (`x` above 20, as PyTorch's default threshold).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn softplus(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Softplus, x)
        }

        /// Softplus with PyTorch's `beta` (`F.softplus(x, beta)`, threshold 20):
        /// `ln(1 + e^(beta x)) / beta`, and `x` where `beta x` is above 20. Beta 1 is
        /// [`Tape::softplus`]; otherwise composed of three nodes (a scale by `beta`,
        /// [`Tape::softplus`], a scale by `1 / beta`), all or nothing. The scales are `f32`:
        /// on an `f64` tape, `1 / beta` is rounded to `f32` (a relative error up to about 6e-8
        /// for a beta that is not a power of two); above the threshold the value is `(beta x) *
        /// (1 / beta)`, within an ulp or so of `x` (PyTorch returns `x`), and infinite where
        /// `beta x` overflows.
        ///
        /// # Errors
        /// [`Error::InvalidArgument`] unless `beta` is positive, finite and not so small that
        /// `1 / beta` overflows `f32`; and as [`Tape::unary`].
        pub fn softplus_beta(&mut self, x: Var, beta: f32) -> Result<Var> {
            if !(beta > 0.0 && beta.is_finite() && (1.0 / beta).is_finite()) {
                return Err(Error::InvalidArgument {
                    what: "softplus: beta must be positive and finite (and 1 / beta too)",
                });
            }
            if beta == 1.0 {
                return self.softplus(x);
            }
            self.all_or_nothing(|t| {
                let bx = t.mul_scalar(x, beta)?;
                let s = t.softplus(bx)?;
                t.mul_scalar(s, 1.0 / beta)
            })
        }

        /// Hard sigmoid, `min(max(x + 3, 0), 6) / 6`.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn hardsigmoid(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Hardsigmoid, x)
        }

        /// Hard swish, `x hardsigmoid(x)` (MobileNetV3's activation).
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn hardswish(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Hardswish, x)
        }

        pub(crate) fn unary_backward(
            &mut self,
            op: UnaryOp,
            a: u32,
            y: View,
            dy: View,
        ) -> Result<()> {
            if let Some((x, dx)) = self.input_grad(a)? {
                self.backend
                    .unary_backward(op, x.offset, y.offset, dy.offset, dx, y.len())?;
            }
            Ok(())
        }
    }
}
