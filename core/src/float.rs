//! The element types a tape computes in: `f32` everywhere, `f64` for gradient checks.

use core::fmt::{Debug, Display};
use core::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point element type. Implemented for `f32` and `f64`; the maths functions come
/// from `libm`, so they work without `std`.
pub trait Float:
    Copy
    + Default
    + PartialOrd
    + PartialEq
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The most negative finite value.
    const MIN: Self;
    /// The smallest positive normal value (optimizers flush state below it to zero: subnormal
    /// arithmetic is slow on most CPUs).
    const MIN_POSITIVE: Self;
    /// A short name (`"f32"`).
    const NAME: &'static str;
    /// Conversion from `f64` (rounding).
    fn from_f64(v: f64) -> Self;
    /// Conversion from `f32`.
    fn from_f32(v: f32) -> Self;
    /// Conversion to `f64`.
    fn to_f64(self) -> f64;
    /// Conversion to `f32` (rounding).
    fn to_f32(self) -> f32;
    /// e^x.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// ln(1 + x), accurate near 0.
    fn ln_1p(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// x^p.
    fn powf(self, p: Self) -> Self;
    /// |x|.
    fn abs(self) -> Self;
    /// The complementary error function, `1 - erf(x)`, accurate where it is small.
    fn erfc(self) -> Self;
    /// `e^x - 1`, accurate near 0.
    fn exp_m1(self) -> Self;
    /// Whether the value is NaN.
    #[inline]
    #[allow(clippy::eq_op)]
    fn is_nan(self) -> bool {
        self != self
    }
    /// Whether the value is neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// The larger of two values (NaN-propagating in neither argument: returns `other` if
    /// `self` is NaN).
    #[inline]
    fn max(self, other: Self) -> Self {
        if self >= other {
            self
        } else {
            other
        }
    }
    /// Conversion from a count or index.
    #[inline]
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
}

macro_rules! impl_float {
    (
        $t:ty, $name:literal, $exp:path, $ln:path, $ln1p:path, $sqrt:path, $tanh:path,
        $pow:path, $abs:path, $erfc:path, $expm1:path
    ) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const MIN: Self = <$t>::MIN;
            const MIN_POSITIVE: Self = <$t>::MIN_POSITIVE;
            const NAME: &'static str = $name;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                $ln(self)
            }
            #[inline]
            fn ln_1p(self) -> Self {
                $ln1p(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                $sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline]
            fn powf(self, p: Self) -> Self {
                $pow(self, p)
            }
            #[inline]
            fn abs(self) -> Self {
                $abs(self)
            }
            #[inline]
            fn erfc(self) -> Self {
                $erfc(self)
            }
            #[inline]
            fn exp_m1(self) -> Self {
                $expm1(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}

// With the `std` feature the host's maths library (usually faster, and `sqrt` a single
// instruction) replaces libm; results differ only in the last bits.
#[cfg(feature = "std")]
mod host {
    macro_rules! wrap {
        ($t:ty: $($name:ident => $f:ident),*) => {
            $(#[inline]
            pub fn $name(x: $t) -> $t {
                <$t>::$f(x)
            })*
        };
    }
    pub mod f32 {
        wrap!(f32: exp => exp, ln => ln, ln_1p => ln_1p, sqrt => sqrt, tanh => tanh, abs => abs,
              exp_m1 => exp_m1);
        #[inline]
        pub fn powf(x: f32, p: f32) -> f32 {
            x.powf(p)
        }
    }
    pub mod f64 {
        wrap!(f64: exp => exp, ln => ln, ln_1p => ln_1p, sqrt => sqrt, tanh => tanh, abs => abs,
              exp_m1 => exp_m1);
        #[inline]
        pub fn powf(x: f64, p: f64) -> f64 {
            x.powf(p)
        }
    }
}

#[cfg(feature = "std")]
impl_float!(
    f32,
    "f32",
    host::f32::exp,
    host::f32::ln,
    host::f32::ln_1p,
    host::f32::sqrt,
    host::f32::tanh,
    host::f32::powf,
    host::f32::abs,
    libm::erfcf,
    host::f32::exp_m1
);
#[cfg(feature = "std")]
impl_float!(
    f64,
    "f64",
    host::f64::exp,
    host::f64::ln,
    host::f64::ln_1p,
    host::f64::sqrt,
    host::f64::tanh,
    host::f64::powf,
    host::f64::abs,
    libm::erfc,
    host::f64::exp_m1
);
#[cfg(not(feature = "std"))]
impl_float!(
    f32,
    "f32",
    libm::expf,
    libm::logf,
    libm::log1pf,
    libm::sqrtf,
    libm::tanhf,
    libm::powf,
    libm::fabsf,
    libm::erfcf,
    libm::expm1f
);
#[cfg(not(feature = "std"))]
impl_float!(
    f64,
    "f64",
    libm::exp,
    libm::log,
    libm::log1p,
    libm::sqrt,
    libm::tanh,
    libm::pow,
    libm::fabs,
    libm::erfc,
    libm::expm1
);
