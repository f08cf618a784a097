//! The vector instruction sets the f32 kernels are written over (`conv.rs`, `small.rs`): AVX-512
//! F and AVX2 with FMA, behind one trait, so that one kernel compiles for both.

use std::arch::x86_64::{
    __m256, __m256i, __m512, __mmask16, _mm256_add_ps, _mm256_cmpgt_epi32, _mm256_fmadd_ps,
    _mm256_loadu_ps, _mm256_maskload_ps, _mm256_maskstore_ps, _mm256_set1_epi32, _mm256_set1_ps,
    _mm256_setr_epi32, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_add_ps, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

/// The vectors of one instruction set, as the kernels use them. A value is proof that the CPU
/// supports the set (made only by [`Avx512::detect`] and [`Avx2::detect`]), which makes
/// [`Isa::enable`] safe.
///
/// # Safety
/// An implementation's [`Isa::enable`] runs its closure with every instruction its other
/// methods use enabled, and a value of the type exists only where the CPU has them.
pub(super) unsafe trait Isa: Copy + Send + Sync {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// Lanes per vector.
    const LANES: usize;

    /// Runs `f` compiled for the instruction set (the kernels inline into it).
    fn enable<R>(self, f: impl FnOnce() -> R) -> R;
    /// All zeros.
    ///
    /// # Safety
    /// Only inside [`Isa::enable`] (the CPU supports the set).
    unsafe fn zero() -> Self::V;
    /// `x` in every lane. Safety as [`Isa::zero`].
    unsafe fn splat(x: f32) -> Self::V;
    /// `LANES` values from `p`, unaligned. Safety as [`Isa::zero`], and `p` valid for them.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `v` to `p`, unaligned. Safety as [`Isa::load`].
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a b + c`, fused. Safety as [`Isa::zero`].
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`. Safety as [`Isa::zero`].
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// The first `n` (at most `LANES`) values from `p`, zeros in the other lanes, which are
    /// not read. Safety as [`Isa::zero`], and `p` valid for `n` values.
    unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
    /// The first `n` (at most `LANES`) lanes of `v` to `p`; nothing past them is written.
    /// Safety as [`Isa::load_first`].
    unsafe fn store_first(p: *mut f32, v: Self::V, n: usize);
}

/// AVX-512 F: 32 registers of 16 lanes.
#[derive(Clone, Copy)]
pub(super) struct Avx512(());

impl Avx512 {
    /// The set, where this CPU has it.
    pub(super) fn detect() -> Option<Avx512> {
        std::is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

// SAFETY: `enable` turns on AVX-512 F, all the methods use; `detect` checks for it.
unsafe impl Isa for Avx512 {
    type V = __m512;
    const LANES: usize = 16;

    #[inline(always)]
    fn enable<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx512f")]
        unsafe fn on<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: an `Avx512` exists only where the CPU has AVX-512 F.
        unsafe { on(f) }
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller's.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the caller's.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> __m512 {
        // SAFETY: the caller's; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: the caller's; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, mask16(n), v) }
    }
}

/// The first `n` of 16 lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16
}

/// AVX2 and FMA: 16 registers of 8 lanes.
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The set, where this CPU has it.
    pub(super) fn detect() -> Option<Avx2> {
        (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
            .then_some(Avx2(()))
    }
}

// SAFETY: `enable` turns on AVX2 and FMA, all the methods use; `detect` checks for them.
unsafe impl Isa for Avx2 {
    type V = __m256;
    const LANES: usize = 8;

    #[inline(always)]
    fn enable<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn on<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: an `Avx2` exists only where the CPU has AVX2 and FMA.
        unsafe { on(f) }
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the caller's.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
        // SAFETY: the caller's; masked-off lanes are not read.
        unsafe { _mm256_maskload_ps(p, mask8(n)) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: the caller's; masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, mask8(n), v) }
    }
}

/// The first `n` of 8 lanes (their sign bits set).
///
/// # Safety
/// Only inside [`Isa::enable`] of [`Avx2`].
#[inline(always)]
unsafe fn mask8(n: usize) -> __m256i {
    // SAFETY: AVX2 is enabled where this inlines (the caller's contract).
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}
