//! Softmax and log-softmax along an axis, numerically stable (the maximum is subtracted first).
//!
//! softmax: `y_j = e^(x_j - m) / sum_k e^(x_k - m)`, `dx_j += y_j (dy_j - sum_k dy_k y_k)`.
//! log_softmax: `y_j = x_j - m - ln sum_k e^(x_k - m)`, `dx_j += dy_j - e^(y_j) sum_k dy_k`.

use crate::float::Float;
use crate::ops::reduce::Axis3;

/// Reference forward kernel over `(outer, n, inner)` (see [`Axis3`]).
pub fn forward<T: Float>(log: bool, r: Axis3, x: &[T], y: &mut [T]) {
    let Axis3 { n, inner, .. } = r;
    if r.is_degenerate() {
        return;
    }
    for (xb, yb) in x.chunks_exact(n * inner).zip(y.chunks_exact_mut(n * inner)) {
        for i in 0..inner {
            let at = |j: usize| j * inner + i;
            let mut m = T::MIN;
            for j in 0..n {
                m = m.max(xb.get(at(j)).copied().unwrap_or(T::MIN));
            }
            let mut s = T::ZERO;
            for j in 0..n {
                if let (Some(&xv), Some(yv)) = (xb.get(at(j)), yb.get_mut(at(j))) {
                    let e = (xv - m).exp();
                    *yv = e;
                    s += e;
                }
            }
            let (inv, lse) = (T::ONE / s, m + s.ln());
            for j in 0..n {
                if let (Some(&xv), Some(yv)) = (xb.get(at(j)), yb.get_mut(at(j))) {
                    *yv = if log { xv - lse } else { *yv * inv };
                }
            }
        }
    }
}

/// Reference backward kernel: accumulates into `dx`, from the output `y` and `dy`.
pub fn backward<T: Float>(log: bool, r: Axis3, y: &[T], dy: &[T], dx: &mut [T]) {
    let Axis3 { n, inner, .. } = r;
    if r.is_degenerate() {
        return;
    }
    let blocks = y.chunks_exact(n * inner).zip(dy.chunks_exact(n * inner));
    for ((yb, gb), db) in blocks.zip(dx.chunks_exact_mut(n * inner)) {
        for i in 0..inner {
            let at = |j: usize| j * inner + i;
            let get = |s: &[T], j: usize| s.get(at(j)).copied().unwrap_or(T::ZERO);
            let mut s = T::ZERO;
            for j in 0..n {
                s += if log {
                    get(gb, j)
                } else {
                    get(gb, j) * get(yb, j)
                };
            }
            for j in 0..n {
                let (yv, g) = (get(yb, j), get(gb, j));
                if let Some(d) = db.get_mut(at(j)) {
                    *d += if log { g - yv.exp() * s } else { yv * (g - s) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // torch.softmax(torch.tensor([1., 2., 3.]), 0) = [0.09003057, 0.24472847, 0.66524096]
    #[test]
    fn values_match_pytorch_and_are_stable() {
        let r = Axis3 {
            outer: 1,
            n: 3,
            inner: 1,
        };
        let mut y = [0.0f64; 3];
        forward(false, r, &[1.0, 2.0, 3.0], &mut y);
        for (a, b) in y.iter().zip([0.090_030_57, 0.244_728_47, 0.665_240_96]) {
            assert!((a - b).abs() < 1e-8);
        }
        let mut y = [0.0f32; 3];
        forward(true, r, &[1000.0, 1001.0, 1002.0], &mut y);
        // f32 has ~6e-5 resolution at 1000: the point is no overflow, no NaN.
        assert!((y[2] - (-0.407_605_96)).abs() < 1e-4, "{y:?}");
    }
}

mod tape_ops {
    use crate::backend::{Backend, View};
    use crate::error::Result;
    use crate::ops::reduce::Axis3;
    use crate::tape::{Op, Tape, Var};

    impl<B: Backend, const N: usize> Tape<B, N> {
        fn softmax_impl(&mut self, log: bool, x: Var, axis: usize) -> Result<Var> {
            x.shape
                .check_axis(if log { "log_softmax" } else { "softmax" }, axis)?;
            let (outer, n, inner) = x.shape.split_at_axis(axis);
            let r = Axis3 { outer, n, inner };
            self.record(
                Op::Softmax {
                    axis: axis as u8,
                    log,
                },
                Self::bw_softmax,
                &[x],
                x.shape,
                |b, y| b.softmax(log, r, x.offset as usize, y.offset),
            )
        }

        /// Softmax along `axis`, numerically stable.
        ///
        /// # Errors
        /// [`crate::Error::AxisOutOfRange`]; and as [`Tape::unary`].
        pub fn softmax(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.softmax_impl(false, x, axis)
        }

        /// Log-softmax along `axis`, numerically stable.
        ///
        /// # Errors
        /// As [`Tape::softmax`].
        pub fn log_softmax(&mut self, x: Var, axis: usize) -> Result<Var> {
            self.softmax_impl(true, x, axis)
        }

        pub(crate) fn softmax_backward(
            &mut self,
            log: bool,
            axis: u8,
            a: u32,
            y: View,
            dy: View,
        ) -> Result<()> {
            if let Some((x, dx)) = self.input_grad(a)? {
                let (outer, n, inner) = x.shape.split_at_axis(axis as usize);
                self.backend.softmax_backward(
                    log,
                    Axis3 { outer, n, inner },
                    y.offset,
                    dy.offset,
                    dx,
                )?;
            }
            Ok(())
        }
    }
}
