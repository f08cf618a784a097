//! Kernel launches, one file per op family (mirroring `core/src/ops/` and `kernels/*.cu`).

pub(crate) mod binary;
pub(crate) mod conv;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod movement;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod softmax;
pub(crate) mod unary;

use mote::Shape;

/// `o..o + n`, saturating (an impossible range fails the range check instead of overflowing).
pub(crate) fn rg(o: usize, n: usize) -> std::ops::Range<usize> {
    o..o.saturating_add(n)
}

/// Loop lengths (elements summed into one output) from which the summing walks split the loop
/// over 32 threads per output (`*_walk_split`).
pub(crate) const SPLIT_LOOP: u64 = 64;

/// Threads per block of the elementwise kernels.
pub(crate) const THREADS: u32 = 256;

/// A walk over an index space for up to four operands: mirrors `struct Walk` in
/// kernels/common.cuh byte for byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[doc(hidden)]
pub struct Walk {
    np: u32,
    nl: u32,
    pdim: [u32; 4],
    ldim: [u32; 4],
    pstr: [[i64; 4]; 4],
    lstr: [[i64; 4]; 4],
    pub ptotal: u64,
    pub ltotal: u64,
}

impl Walk {
    /// A walk over `dims` (outermost first, at most four) with `strides[o][d]` for operand `o`.
    /// With `owner = Some(k)`, dimensions longer than 1 where operand `k` has stride 0 become
    /// loop dimensions (summed inside a thread); the rest are parallel. Dimensions of size 1
    /// are dropped.
    pub fn new(dims: &[usize], strides: &[[usize; 4]], owner: Option<usize>) -> Walk {
        let mut w = Walk {
            ptotal: 1,
            ltotal: 1,
            ..Walk::default()
        };
        for (d, &len) in dims.iter().enumerate().take(4) {
            if len <= 1 {
                continue;
            }
            let looped = owner.is_some_and(|k| strides.get(k).is_some_and(|s| s[d] == 0));
            if looped {
                let i = w.nl as usize;
                w.ldim[i] = len as u32;
                for (o, s) in strides.iter().enumerate().take(4) {
                    w.lstr[o][i] = s[d] as i64;
                }
                w.nl += 1;
                w.ltotal *= len as u64;
            } else {
                let i = w.np as usize;
                w.pdim[i] = len as u32;
                for (o, s) in strides.iter().enumerate().take(4) {
                    w.pstr[o][i] = s[d] as i64;
                }
                w.np += 1;
                w.ptotal *= len as u64;
            }
        }
        w
    }
}

/// The dimensions of `s`, as usize.
pub fn dims(s: &Shape) -> Vec<usize> {
    s.dims().iter().map(|&d| d as usize).collect()
}

/// Strides with which an `out`-shaped index walks `s` broadcast to `out` (0 on broadcast
/// dimensions), aligned to `out`'s rank (the core's `Shape::broadcast_strides`).
pub fn broadcast_strides(s: &Shape, out: &Shape) -> [usize; 4] {
    let own = s.strides();
    let mut r = [0usize; 4];
    let shift = out.rank() - s.rank().min(out.rank());
    for (i, slot) in r.iter_mut().enumerate().take(out.rank()).skip(shift) {
        let j = i - shift;
        if s.dim(j) != 1 {
            *slot = own[j];
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_matches_the_cuda_layout() {
        // struct Walk in kernels/common.cuh: 2 + 4 + 4 u32, then 2 x 16 i64, then 2 u64.
        assert_eq!(std::mem::size_of::<Walk>(), 312);
        assert_eq!(std::mem::align_of::<Walk>(), 8);
    }

    #[test]
    fn walk_splits_parallel_and_loop_dims() {
        // A bias gradient: dy [256, 100] summed over rows into db [100] (stride 0 on rows).
        let w = Walk::new(&[256, 100], &[[100, 1, 0, 0], [0, 1, 0, 0]], Some(1));
        assert_eq!((w.np, w.nl, w.ptotal, w.ltotal), (1, 1, 100, 256));
        assert_eq!((w.pdim[0], w.ldim[0]), (100, 256));
        assert_eq!((w.pstr[0][0], w.pstr[1][0], w.lstr[0][0]), (1, 1, 100));
        // Without an owner every dimension is parallel; size-1 dimensions are dropped.
        let w = Walk::new(&[3, 1, 5], &[[5, 5, 1, 0], [5, 5, 1, 0]], None);
        assert_eq!((w.np, w.nl, w.ptotal), (2, 0, 15));
    }

    #[test]
    fn broadcast_strides_align_trailing_dims() {
        let s = |d: &[usize]| Shape::new(d).unwrap();
        assert_eq!(broadcast_strides(&s(&[3, 1]), &s(&[2, 3, 4])), [0, 1, 0, 0]);
        assert_eq!(broadcast_strides(&s(&[4]), &s(&[2, 3, 4])), [0, 0, 1, 0]);
        assert_eq!(
            broadcast_strides(&s(&[2, 3, 4]), &s(&[2, 3, 4])),
            [12, 4, 1, 0]
        );
    }
}
