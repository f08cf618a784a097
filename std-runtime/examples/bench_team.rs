//! Why the parallel backend splits matrix products over a team of spinning threads: the
//! products of the MLP workloads, each after a pause of `gap` microseconds of work on the
//! calling thread (as between the operations of a training step), computed
//!
//! - `one`: by the `gemm` crate on the calling thread;
//! - `join`: in two column blocks, the second handed to rayon's pool (whose threads sleep
//!   between products, as the crate's own threads do);
//! - `backend 1`, `backend 2`: by [`Parallel`] with one thread, and with two (blocks of C over
//!   its team, whose idle workers spin for a while before they sleep, as OpenMP's do).
//!
//! `cargo run --release -p mote-runtime --example bench_team -- [gap_us]` (default 150).

use std::time::{Duration, Instant};

use gemm::Parallelism;
use mote::ops::matmul::Gemm;
use mote::Backend;
use mote_runtime::parallel::Parallel;

/// A product's operands: `m x k` A and `k x n` B, each possibly stored transposed.
#[derive(Clone, Copy)]
struct Product {
    m: usize,
    n: usize,
    k: usize,
    a_trans: bool,
    b_trans: bool,
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: the two halves of `join` write disjoint parts of C.
unsafe impl Sync for Ptr {}
// SAFETY: as for `Sync`.
unsafe impl Send for Ptr {}

impl Product {
    /// Columns `j0..j0 + cols` of C = A B.
    ///
    /// # Safety
    /// The buffers hold the operands; no other call writes the same block at once.
    unsafe fn block(&self, a: &[f32], b: &[f32], c: Ptr, j0: usize, cols: usize) {
        let (ars, acs) = if self.a_trans {
            (1, self.m)
        } else {
            (self.k, 1)
        };
        let (brs, bcs) = if self.b_trans {
            (1, self.k)
        } else {
            (self.n, 1)
        };
        // SAFETY: by the contract.
        unsafe {
            gemm::gemm(
                self.m,
                cols,
                self.k,
                c.0.add(j0),
                1,
                self.n as isize,
                false,
                a.as_ptr(),
                acs as isize,
                ars as isize,
                b.as_ptr().add(j0 * bcs),
                bcs as isize,
                brs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }
}

fn main() {
    let gap: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let shapes = [
        // W-mnist: the first layer's forward (x W^T) and weight gradient (dy^T x), the second's.
        (128, 256, 784, false, true),
        (256, 784, 128, true, false),
        (128, 128, 256, false, true),
        // W-large's largest forward and weight gradient.
        (256, 4096, 4096, false, true),
        (4096, 4096, 256, true, false),
    ];
    let len = 4096 * 4096;
    let mut mem = vec![0f32; 3 * len];
    mem[..len].fill(0.5);
    mem[len..2 * len].fill(0.25);
    println!("product (m x n x k)      mode        median us   p10 - p90       GFLOP/s");
    for (m, n, k, a_trans, b_trans) in shapes {
        let p = Product {
            m,
            n,
            k,
            a_trans,
            b_trans,
        };
        let g = Gemm {
            batch: 1,
            m,
            n,
            k,
            a: 0,
            a_trans,
            a_batch: 0,
            b: len,
            b_trans,
            b_batch: 0,
            c: 2 * len,
            c_batch: 0,
            accumulate: false,
        };
        let reps = if m * n * k > 1 << 26 { 20 } else { 400 };
        for (mode, name) in ["one", "join", "backend 1", "backend 2"].iter().enumerate() {
            let mut times = Vec::with_capacity(reps);
            for _ in 0..reps {
                let pause = Instant::now();
                while pause.elapsed() < Duration::from_micros(gap) {
                    std::hint::spin_loop();
                }
                let (ab, c) = mem.split_at_mut(2 * len);
                let (a, b) = ab.split_at(len);
                let cp = Ptr(c.as_mut_ptr());
                let t = Instant::now();
                match mode {
                    // SAFETY: one call writes all of C.
                    0 => unsafe { p.block(a, b, cp, 0, n) },
                    1 => {
                        let h = n / 2;
                        rayon::join(
                            // SAFETY: the two halves are disjoint.
                            || unsafe { p.block(a, b, cp, 0, h) },
                            || unsafe { p.block(a, b, cp, h, n - h) },
                        );
                    }
                    _ => {
                        let threads = if mode == 2 { 1 } else { 2 };
                        let mut backend = Parallel::with_threads(&mut mem, threads);
                        if let Err(e) = backend.gemm(&g) {
                            eprintln!("{e}");
                            return;
                        }
                    }
                }
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            let l = times.len();
            let med = times[l / 2];
            println!(
                "{:<24} {name:<11} {med:>9.1}   {:.1} - {:.1}   {:>6.0}",
                format!("{m} x {n} x {k}"),
                times[l / 10],
                times[l * 9 / 10],
                2.0 * (m * n * k) as f64 / med / 1e3
            );
        }
    }
}
