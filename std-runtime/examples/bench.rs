//! Runs the benchmark program without the CLI:
//! `cargo run --release -p mote-runtime --example bench -- [WORKLOAD...] [--backend B]...
//! [--json] [--threads N] [--quick]`.

use mote_runtime::bench::{run, BenchOptions};

fn main() {
    let mut opts = BenchOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "--quick" => opts.quick = true,
            "--backend" => opts.backends.extend(args.next()),
            "--threads" => opts.threads = args.next().and_then(|n| n.parse().ok()),
            _ => opts.workloads.push(a),
        }
    }
    match run(&opts) {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
