//! Problems the fuzzer (`fuzz/`) found in the core, as minimal reproductions through the public
//! API, kept as regression tests. (The overflow panics showed only with overflow checks on, as
//! in test builds.)

use mote::{Backend, Cpu};

fn no_panic(
    failed: &mut Vec<&'static str>,
    what: &'static str,
    f: impl FnOnce() + std::panic::UnwindSafe,
) {
    if std::panic::catch_unwind(f).is_err() {
        failed.push(what);
    }
}

/// `Cpu::read`/`write`/`fill` at an offset where `offset + len` overflows `usize`:
/// "attempt to add with overflow" at core/src/backend.rs (`fn r`, `o..o + n`).
#[test]
fn cpu_backend_offset_overflow() {
    let mut failed = Vec::new();
    no_panic(&mut failed, "Cpu::read", || {
        let mut mem = [0f32; 4];
        let b = Cpu::new(&mut mem);
        let _ = b.read(usize::MAX, &mut [0.0; 1]);
    });
    no_panic(&mut failed, "Cpu::write", || {
        let mut mem = [0f32; 4];
        let mut b = Cpu::new(&mut mem);
        let _ = b.write(usize::MAX, &[0.0; 1]);
    });
    no_panic(&mut failed, "Cpu::fill", || {
        let mut mem = [0f32; 4];
        let mut b = Cpu::new(&mut mem);
        let _ = b.fill(1, usize::MAX, 0.0);
    });
    assert!(
        failed.is_empty(),
        "panicked instead of returning Err: {failed:?}"
    );
}

/// `Tape::concat` of two parts whose extents along the axis sum past `u32::MAX`: the output
/// dimension is truncated to `u32` (`Shape::with_dim` casts), so the shape check after it
/// passes on the truncated shape; then "attempt to subtract with overflow" at
/// core/src/ops/movement.rs (`layout`, `y.shape.dim(axis) - x.shape.dim(axis)`). Without
/// overflow checks it returns `Ok` with the wrong shape `[2]`. Needs a 2^31-element tensor, so
/// the `Meter` backend (`plan::measure`) reaches it; a `Cpu` arena would need 16 GiB.
#[test]
fn concat_dimension_overflow() {
    use mote::{Meter, Tape};
    let res = std::panic::catch_unwind(|| {
        let mut t = Tape::<Meter<f32>, 8>::with_backend(Meter::default());
        let x = t.full(&[(1 << 31) + 1], 0.0).unwrap();
        t.concat(x, x, 0).map(|v| v.shape())
    });
    match res {
        Err(_) => panic!("Tape::concat panicked instead of returning Err"),
        Ok(Ok(shape)) => panic!("Tape::concat returned Ok with shape {shape} (truncated)"),
        Ok(Err(_)) => {}
    }
}

/// Not a panic but a broken promise ("on any error the arena and the tape are left as they
/// were", `Tape::record`; tests/errors.rs): `Tape::linear` registers a bias made under
/// `no_grad` (pushes an input node for it) before `record` runs, so when `record` then fails
/// (a stale `x`, a full arena or tape) that node stays: the tape grows by one node per failed
/// call.
#[test]
fn failed_linear_leaks_a_node() {
    use mote::Tape;
    let mut mem = [0f32; 64];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let w = t.param(&[2, 2], &[0.5; 4]).unwrap();
    let x = t.input(&[1, 2], &[1.0; 2]).unwrap();
    let b = t.no_grad(|t| t.full(&[2], 1.0)).unwrap(); // no node yet
    t.full(&[51], 0.0).unwrap(); // 1 element left: no room for linear's output
    let before = (t.used(), t.nodes_used());
    assert!(t.linear(x, w, Some(b)).is_err());
    assert_eq!(
        (t.used(), t.nodes_used()),
        before,
        "a failed linear changed the tape"
    );
}

/// Not a panic but a broken promise: `Tape::rewind` documents `StaleHandle` "when `mark` lies
/// beyond the current position (it was taken before an earlier rewind went further back)", but
/// it only compares the mark's node count and arena top with the current ones. A stale mark
/// whose counts are both within the current ones is accepted, and can keep a parameter node
/// whose storage now lies above the arena's top: `params()` lists it, `data()` calls it stale,
/// and the next allocation overwrites it.
#[test]
fn rewind_accepts_a_stale_mark() {
    use mote::Tape;
    let mut mem = [0f32; 64];
    let mut t = Tape::<Cpu<f32>, 8>::new(&mut mem);
    let m0 = t.mark(); // 0 nodes, top 0
    t.input(&[4], &[0.0; 4]).unwrap();
    let m1 = t.mark(); // 1 node, top 4
    t.rewind(m0).unwrap(); // m1 is stale from here on
    t.no_grad(|t| t.full(&[8], 0.0)).unwrap(); // top 8, no node
    let p = t.param(&[1], &[1.0]).unwrap(); // node 0, value and gradient at 8..10
    let res = t.rewind(m1); // should be StaleHandle
    let listed = t.params().any(|q| q == p);
    let readable = t.data(p).is_ok();
    assert!(
        res.is_err(),
        "rewind to a stale mark returned Ok; now params() lists p: {listed}, data(p) is Ok: {readable}"
    );
}

/// Marks follow a stack discipline: nested marks stay valid while rewinding to the inner one
/// or to themselves; rewinding to the outer one invalidates the inner one, even after the tape
/// has grown past it again.
#[test]
fn nested_marks_stay_valid_and_stale_ones_are_refused() {
    use mote::{Error, Tape};
    let mut mem = [0f32; 256];
    let mut t = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let p = t.param(&[2], &[1.0, 2.0]).unwrap();
    let outer = t.mark();
    t.input(&[3], &[0.0; 3]).unwrap();
    let inner = t.mark();
    for _ in 0..5 {
        t.input(&[4], &[0.0; 4]).unwrap();
        t.rewind(inner).unwrap();
        t.rewind(inner).unwrap();
    }
    t.input(&[4], &[0.0; 4]).unwrap();
    t.rewind(outer).unwrap();
    // Grow past `inner`'s position again: it is still stale.
    t.input(&[8], &[0.0; 8]).unwrap();
    t.input(&[8], &[0.0; 8]).unwrap();
    assert_eq!(t.rewind(inner), Err(Error::StaleHandle));
    assert_eq!(t.rewind_keep_grad(inner), Err(Error::StaleHandle));
    // The outer mark and the parameter below it are still good, many times over.
    for _ in 0..10 {
        t.rewind(outer).unwrap();
        t.input(&[3], &[0.0; 3]).unwrap();
    }
    assert_eq!(t.data(p).unwrap(), &[1.0, 2.0]);
    // A fresh inner mark works.
    let inner2 = t.mark();
    t.input(&[2], &[0.0; 2]).unwrap();
    t.rewind(inner2).unwrap();
    t.rewind(outer).unwrap();
}
