//! The cost of handing work to the pool: one `rayon::join` of two empty tasks, after a pause
//! (the pool's threads asleep) and back to back. `cargo run --release -p mote-runtime --example
//! bench_join`.
fn main() {
    let mut v = Vec::new();
    for _ in 0..2000 {
        let t = std::time::Instant::now();
        rayon::join(|| std::hint::black_box(1), || std::hint::black_box(2));
        v.push(t.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    v.sort_by(f64::total_cmp);
    println!(
        "join after idle: p10 {:.1} us, median {:.1} us, p90 {:.1} us",
        v[200], v[1000], v[1800]
    );
    let mut v = Vec::new();
    for _ in 0..20000 {
        let t = std::time::Instant::now();
        rayon::join(|| std::hint::black_box(1), || std::hint::black_box(2));
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    println!(
        "join back to back: p10 {:.2} us, median {:.2} us, p90 {:.2} us",
        v[2000], v[10000], v[18000]
    );
}
