//! Every kernel source compiles with NVRTC to PTX for sm_80 and sm_90. Needs only libnvrtc (no
//! GPU): `cuda/nvrtc-check.sh` installs it from PyPI and runs this test with
//! `MOTE_REQUIRE_NVRTC=1`, which turns a skip into a failure.

use mote_cuda::kernels::{assemble, compile, ptx, signatures, Param, SOURCES};
use mote_cuda::probe;

#[test]
fn nvrtc_compiles_every_kernel() {
    if !probe::nvrtc() {
        if std::env::var_os("MOTE_REQUIRE_NVRTC").is_some_and(|v| v == "1") {
            panic!("MOTE_REQUIRE_NVRTC=1 but libnvrtc.so cannot be loaded");
        }
        eprintln!(
            "skipped: libnvrtc.so not found (run cuda/nvrtc-check.sh to compile the kernels)"
        );
        return;
    }
    let mut kernels = 0;
    for arch in ["80", "90"] {
        for src in SOURCES {
            let t = std::time::Instant::now();
            let ptx = compile(src, arch).unwrap_or_else(|e| panic!("{e}"));
            for k in src.kernels {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "{}.cu (sm_{arch}): kernel {k} missing from the PTX",
                    src.name
                );
            }
            kernels += src.kernels.len();
            eprintln!(
                "sm_{arch} {:>9}.cu: {} kernels, {} bytes of PTX, {:.0} ms",
                src.name,
                src.kernels.len(),
                ptx.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    eprintln!(
        "compiled {kernels} kernel entries ({} per architecture)",
        kernels / 2
    );
}

#[test]
fn ptx_is_cached_on_disk() {
    if !probe::nvrtc() {
        eprintln!("skipped: libnvrtc.so not found (run cuda/nvrtc-check.sh)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mote-ptx-cache-{}", std::process::id()));
    // SAFETY (edition 2024 would need unsafe): the only test in this binary that reads it.
    std::env::set_var("MOTE_CUDA_CACHE", &dir);
    let src = &SOURCES[0];
    let t = std::time::Instant::now();
    let a = ptx(src, "90").unwrap_or_else(|e| panic!("{e}"));
    let cold = t.elapsed();
    let t = std::time::Instant::now();
    let b = ptx(src, "90").unwrap_or_else(|e| panic!("{e}"));
    let warm = t.elapsed();
    assert_eq!(a, b);
    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 1, "one cached PTX file in {}", dir.display());
    eprintln!(
        "{}.cu: compiled in {cold:?}, from the cache in {warm:?}",
        src.name
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The full compile (ptxas included) for sm_80 and sm_90: catches what only the assembler sees
/// (a kernel over its `__launch_bounds__` register budget, too much shared memory), and prints
/// ptxas's register and spill report.
#[test]
fn ptxas_assembles_every_kernel() {
    if !probe::nvrtc() {
        if std::env::var_os("MOTE_REQUIRE_NVRTC").is_some_and(|v| v == "1") {
            panic!("MOTE_REQUIRE_NVRTC=1 but libnvrtc.so cannot be loaded");
        }
        eprintln!("skipped: libnvrtc.so not found (run cuda/nvrtc-check.sh)");
        return;
    }
    for arch in ["80", "90"] {
        for src in SOURCES {
            let (bytes, log) = assemble(src, arch).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("sm_{arch} {:>9}.cu: {bytes} bytes of CUBIN", src.name);
            for line in log
                .lines()
                .filter(|l| l.contains("Used") || l.contains("spill"))
            {
                eprintln!("    {}", line.trim());
            }
            assert!(
                !log.lines()
                    .any(|l| l.contains("bytes spill stores")
                        && !l.contains(" 0 bytes spill stores")),
                "{}.cu sm_{arch}: register spills:\n{log}",
                src.name
            );
        }
    }
}

/// Every listed kernel has a parsed signature (what each launch is checked against).
#[test]
fn every_kernel_signature_parses() {
    let mut n = 0;
    for src in SOURCES {
        let sigs = signatures(src.text);
        for k in src.kernels {
            let (_, params) = sigs
                .iter()
                .find(|(name, _)| name == k)
                .unwrap_or_else(|| panic!("{}.cu: no signature for {k}", src.name));
            assert!(!params.is_empty(), "{k}: no parameters parsed");
            n += 1;
        }
        assert_eq!(
            sigs.len(),
            src.kernels.len(),
            "{}.cu: kernels listed vs defined",
            src.name
        );
    }
    let all: Vec<_> = SOURCES.iter().flat_map(|s| signatures(s.text)).collect();
    let get = |k: &str| all.iter().find(|(n, _)| n == k).map(|(_, p)| p.clone());
    use Param::*;
    assert_eq!(get("unary_fwd"), Some(vec![Int, Float, U64, U64, U64, Int]));
    assert_eq!(
        get("binary_bwd_walk_split"),
        Some(vec![Int, Int, Walk, U64, U64, U64, U64, Int])
    );
    assert_eq!(
        get("loss_fwd"),
        Some(vec![Int, U64, U64, U64, U64, U64, U64, Float, U64, U64])
    );
    assert_eq!(
        get("loss_bwd"),
        Some(vec![
            Int, Int, U64, U64, U64, U64, U64, U64, U64, Float, Int, Int, Float
        ])
    );
    assert_eq!(
        get("bias_act"),
        Some(vec![Int, Float, U64, U64, U64, U64, U64, Int])
    );
    eprintln!("{n} kernel signatures");
}
