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
//! | `Pow(p)` | x^p | p x^(p-1) | |
//! | `Relu` | max(x, 0) | 1 if x > 0 else 0 | 0 at x = 0 (PyTorch, dfdx, tinygrad) |
//! | `LeakyRelu(a)` | x if x > 0 else a x | 1 if x > 0 else a | a at x = 0 (PyTorch) |
//! | `Sigmoid` | 1 / (1 + e^-x) | y (1 - y) | |
//! | `Tanh` | tanh x | 1 - y^2 | |
//! | `Gelu` | x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi) | see [`gelu_grad`] | |

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
    /// GELU, tanh approximation (PyTorch's `approximate="tanh"`)
    Gelu,
}

impl UnaryOp {
    /// The op as a small code and its scalar argument (0 for ops without one): how a tape node
    /// and a replay list store it (an `Op` of 8 bytes instead of 12).
    pub(crate) fn pack(self) -> (u8, f32) {
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

/// GELU (tanh form).
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
            UnaryOp::Gelu => "gelu",
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

    #[test]
    fn kinks_follow_the_documented_conventions() {
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
    use crate::error::Result;
    use crate::tape::{Op, Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        /// Applies an elementwise unary op (see [`UnaryOp`]).
        ///
        /// # Errors
        /// [`crate::Error::StaleHandle`], [`crate::Error::ArenaFull`], [`crate::Error::TapeFull`].
        pub fn unary(&mut self, op: UnaryOp, x: Var) -> Result<Var> {
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

        /// GELU, tanh approximation.
        ///
        /// # Errors
        /// As [`Tape::unary`].
        pub fn gelu(&mut self, x: Var) -> Result<Var> {
            self.unary(UnaryOp::Gelu, x)
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
