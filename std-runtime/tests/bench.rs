//! The benchmark program, quickly: both backends on W-seed, as a table and as JSON.

use mote_runtime::bench::{run, BenchOptions};

fn opts(json: bool) -> BenchOptions {
    BenchOptions {
        workloads: vec!["W-seed".into()],
        backends: Vec::new(),
        json,
        threads: None,
        quick: true,
    }
}

#[test]
fn quick_run_names_both_backends() {
    let table = run(&opts(false)).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("W-seed")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].contains("cpu") && rows[1].contains("parallel"),
        "{table}"
    );
    assert!(table.contains("dfdx"), "peers beside the numbers: {table}");
}

#[test]
fn quick_run_as_json() {
    let json = run(&opts(true)).unwrap();
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    for needle in [
        "\"workload\":\"W-seed\"",
        "\"backend\":\"cpu\"",
        "\"backend\":\"parallel\"",
    ] {
        assert!(json.contains(needle), "{needle} in {json}");
    }
    assert!(!json.contains("NaN") && !json.contains("inf"), "{json}");
}

#[test]
fn bad_names_are_errors() {
    let mut o = opts(false);
    o.workloads = vec!["W-huge".into()];
    let e = run(&o).unwrap_err();
    assert!(e.contains("W-huge") && e.contains("W-mnist"), "{e}");
    let mut o = opts(false);
    o.backends = vec!["gpu".into()];
    assert!(run(&o).unwrap_err().contains("parallel"));
}

/// `--backend cuda` runs the GPU benchmark where there is a GPU (a report with its table) and
/// is a clear error where there is none; `gemm` alone has no GPU version.
#[test]
fn cuda_backend_reports_or_says_why() {
    let mut o = opts(false);
    o.backends = vec!["cuda".into()];
    o.workloads = vec!["gemm".into()];
    let e = run(&o).unwrap_err();
    assert!(e.contains("--backend cuda"), "{e}");
    o.workloads = vec!["W-seed".into()];
    match run(&o) {
        Ok(report) => assert!(report.contains("| W-seed | graph |"), "{report}"),
        Err(e) => {
            assert!(e.starts_with("--backend cuda: no CUDA"), "{e}");
            assert!(std::env::var_os("MOTE_REQUIRE_GPU").is_none(), "{e}");
        }
    }
}
