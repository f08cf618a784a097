//! The `gemm` crate's speed for each operand layout and for C written directly or transposed:
//! the measurements behind the parallel backend's choice to compute some products as
//! `C^T = B^T A^T` (`src/parallel/gemm.rs`). One thread, GFLOP/s, best of 15 rounds.
//! `cargo run --release -p mote-runtime --example gemm_layouts`. Columns: `NT` is `A B^T`;
//! `r` writes C row-major (directly), `c` column-major (C^T row-major, as the backend's
//! transposed path does before copying back).

use std::time::Instant;

use gemm::Parallelism;

/// Seconds per call, best of 15 rounds of 5.
fn best(f: &mut dyn FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut dt = f64::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..5 {
            f();
        }
        dt = dt.min(t.elapsed().as_secs_f64() / 5.0);
    }
    dt
}

fn main() {
    let shapes = [
        (64usize, 288usize, 1024usize),
        (64, 576, 1024),
        (128, 1152, 256),
        (128, 128, 256),
        (128, 256, 784),
        (1024, 1024, 256),
    ];
    let len = shapes
        .iter()
        .map(|&(m, n, k)| (m * k).max(k * n).max(m * n))
        .max();
    let len = len.unwrap_or(0);
    let a = vec![0.5f32; len];
    let b = vec![0.5f32; len];
    let mut c = vec![0.0f32; len];
    for &(m, n, k) in &shapes {
        print!("{m:5} x {n:5} x {k:5}:");
        for layout in 0..4 {
            let (at, bt) = (layout & 1 == 1, layout & 2 == 2);
            let (ars, acs) = if at { (1, m) } else { (k, 1) };
            let (brs, bcs) = if bt { (1, k) } else { (n, 1) };
            for (crs, ccs) in [(n, 1), (1, m)] {
                let dt = best(&mut || {
                    // SAFETY: A is m x k, B is k x n and C is m x n with the strides given,
                    // all inside their buffers (each at least as long as the largest of the
                    // three); C does not overlap A or B.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            ccs as isize,
                            crs as isize,
                            false,
                            a.as_ptr(),
                            acs as isize,
                            ars as isize,
                            b.as_ptr(),
                            bcs as isize,
                            brs as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        )
                    }
                });
                let name = format!(
                    "{}{}{}",
                    if at { "T" } else { "N" },
                    if bt { "T" } else { "N" },
                    if ccs == 1 { "r" } else { "c" }
                );
                print!(" {name} {:5.1}", 2.0 * (m * n * k) as f64 / dt / 1e9);
            }
        }
        println!();
    }
}
