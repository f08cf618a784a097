//! A small seedable random generator for `no_std`: PCG-XSH-RR 64/32 (O'Neill, 2014).

/// PCG32: 64-bit state, 32-bit output; the same seed gives the same stream on every target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
    inc: u64,
}

const MUL: u64 = 6_364_136_223_846_793_005;

impl Rng {
    /// A generator from a seed (stream 0).
    pub const fn new(seed: u64) -> Rng {
        Rng::with_stream(seed, 0)
    }

    /// A generator from a seed and a stream selector (distinct streams do not overlap).
    pub const fn with_stream(seed: u64, stream: u64) -> Rng {
        let inc = (stream << 1) | 1;
        let mut state = 0u64.wrapping_mul(MUL).wrapping_add(inc);
        state = state.wrapping_add(seed);
        state = state.wrapping_mul(MUL).wrapping_add(inc);
        Rng { state, inc }
    }

    /// The full state (to save in a checkpoint).
    pub const fn state(&self) -> (u64, u64) {
        (self.state, self.inc)
    }

    /// A generator restored from [`Rng::state`].
    pub const fn from_state(state: u64, inc: u64) -> Rng {
        Rng {
            state,
            inc: inc | 1,
        }
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MUL).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64;
        let lo = (self.next_u32() >> 6) as u64;
        ((hi << 26) | lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1]
        let u2 = self.next_f64();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(core::f64::consts::TAU * u2)
    }

    /// Uniform integer in `0..n` (unbiased; 0 when `n == 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = self.next_u32() as u64 * n as u64;
            if (m as u32) >= threshold {
                return (m >> 32) as u32;
            }
        }
    }

    /// Shuffles a slice in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            // Up to 2^32 elements with one unbiased 32-bit draw; past that a 64-bit draw
            // (biased by under 2^-31 for any slice a machine can hold).
            let j = match u32::try_from(i + 1) {
                Ok(n) => self.below(n) as usize,
                Err(_) => {
                    let wide = (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32());
                    (wide % (i as u64 + 1)) as usize
                }
            };
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
        for _ in 0..1000 {
            let f = a.next_f32();
            assert!((0.0..1.0).contains(&f));
            assert!(a.below(7) < 7);
        }
        let mut s = [0, 1, 2, 3, 4, 5, 6, 7];
        a.shuffle(&mut s);
        s.sort_unstable();
        assert_eq!(s, [0, 1, 2, 3, 4, 5, 6, 7]);
        let mean: f64 = (0..10_000).map(|_| a.normal()).sum::<f64>() / 10_000.0;
        assert!(mean.abs() < 0.05);
    }
}
