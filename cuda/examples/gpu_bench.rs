//! GPU benchmark of whole training steps: `cargo run --release -p mote-cuda --example gpu_bench
//! [-- WORKLOAD...]` (the same as `mote bench --backend cuda`; see `mote_cuda::bench`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match mote_cuda::bench::run(&args) {
        Ok(report) => print!("{report}"),
        Err(e) => println!("bench: skipped: {e}"),
    }
}
