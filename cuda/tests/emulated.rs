//! The kernels that need no cross-thread communication (every elementwise kernel, the
//! broadcasting and strided-copy walks, strided reductions and softmax, the optimizers, the
//! MSE/BCE gradients, the graph tick) compiled as host C++ with a small shim
//! (`tests/emu/shim.h`) and run on the CPU one thread after another, against the reference
//! `mote::Cpu` on random data. This checks the kernels' index arithmetic and formulas here,
//! without a GPU. The warp-synchronous kernels (row reductions, row softmax, the losses, sum of
//! squares) run with one OS thread per CUDA thread, barriers standing in for `__shfl_xor_sync`
//! and `__syncthreads`. Not covered here: the Rust-side launch code (argument order, grid
//! sizes), cuBLAS, copies and graphs: those only the GPU tests check.
//!
//! Needs a C++ compiler (`c++`, or `$CXX`); skips with one line without one.

mod common;

use std::path::PathBuf;
use std::process::Command;

use libloading::{Library, Symbol};
use mote::backend::View;
use mote::ops::binary::{BinaryOp, Side};
use mote::ops::loss::LossOp;
use mote::ops::movement::Strided;
use mote::ops::reduce::{Axis3, ReduceOp};
use mote::ops::unary::UnaryOp;
use mote::optim::{Adagrad, AdagradConfig, AdamUpdate, RmsUpdate, SgdUpdate};
use mote::{Backend, Cpu, Rng, Shape};
use mote_cuda::__emu::{broadcast_strides, dims, Walk};
use mote_cuda::kernels::{full_source, SOURCES};

const FLOATS: usize = 1 << 16;

/// The emulation library, built once per process, and a lock held for the whole test (the
/// emulated launch indices are process globals, so tests take turns); `None` (after one line)
/// without a C++ compiler.
fn library() -> Option<(&'static Library, std::sync::MutexGuard<'static, ()>)> {
    static LIB: std::sync::OnceLock<Option<Library>> = std::sync::OnceLock::new();
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    LIB.get_or_init(build).as_ref().map(|l| (l, turn))
}

fn build() -> Option<Library> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // The shim next to this file (or under the working directory, for a binary run elsewhere).
    let Some(emu) = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/emu"),
        PathBuf::from("cuda/tests/emu"),
    ]
    .into_iter()
    .find(|d| d.join("shim.h").exists()) else {
        assert!(
            std::env::var_os("MOTE_REQUIRE_EMULATOR").is_none_or(|v| v != "1"),
            "MOTE_REQUIRE_EMULATOR=1 and tests/emu/shim.h not found"
        );
        eprintln!("skipped: tests/emu/shim.h not found (run from the repository)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("mote-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for src in SOURCES {
        let f = dir.join(format!("{}.cpp", src.name));
        std::fs::write(&f, full_source(src)).unwrap();
        files.push(f);
    }
    let out = dir.join("libmoteemu.so");
    let status = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-shared",
            "-fPIC",
            "-pthread",
            "-w",
            // As the emulated device: a misaligned `float4` access traps (SIGILL).
            "-fsanitize=alignment",
            "-fsanitize-undefined-trap-on-error",
            "-include",
        ])
        .arg(emu.join("shim.h"))
        .arg("-I")
        .arg(&emu)
        .args(&files)
        .arg(emu.join("emu.cpp"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{cxx} failed to compile the kernels as C++ ({s})"),
        Err(e) => {
            assert!(
                std::env::var_os("MOTE_REQUIRE_EMULATOR").is_none_or(|v| v != "1"),
                "MOTE_REQUIRE_EMULATOR=1 and no C++ compiler ({cxx}: {e})"
            );
            eprintln!("skipped: no C++ compiler ({cxx}: {e})");
            return None;
        }
    }
    // SAFETY: our own freshly built library; its initialisers do nothing.
    let lib = unsafe { Library::new(&out) }.unwrap();
    // Loaded: the files can go.
    let _ = std::fs::remove_dir_all(&dir);
    Some(lib)
}

type Set = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32);

/// Runs `call` once per thread of a `grid x (bx, by)` launch, one thread after another. Rows
/// `y` run from last to first, so that the `y == 0` threads of the split kernels, which sum what
/// the others left in shared memory after `__syncthreads()`, run after them.
fn run(lib: &Library, grid: u32, bx: u32, by: u32, mut call: impl FnMut()) {
    // SAFETY: the symbol has this signature (emu.cpp).
    let set: Symbol<Set> = unsafe { lib.get(b"emu_set") }.unwrap();
    for b in 0..grid {
        for ty in (0..by).rev() {
            for tx in 0..bx {
                // SAFETY: sets plain globals.
                unsafe { set(grid, bx, by, b, tx, ty) };
                call();
            }
        }
    }
}

type Block = unsafe extern "C" fn(u32, u32, u32, u32);
type Thread = unsafe extern "C" fn(u32, u32);

/// Runs a launch with one OS thread per CUDA thread (blocks one after another), for kernels that
/// use warp shuffles or `__syncthreads`. `call` gets the arena pointers as addresses.
fn run_par(lib: &Library, grid: u32, threads: u32, call: impl Fn() + Sync) {
    // SAFETY: the symbols have these signatures (emu.cpp).
    let block: Symbol<Block> = unsafe { lib.get(b"emu_block") }.unwrap();
    let thread: Symbol<Thread> = unsafe { lib.get(b"emu_thread") }.unwrap();
    let thread = *thread;
    for b in 0..grid {
        // SAFETY: sets globals before any thread of the block starts.
        unsafe { block(grid, threads, 1, b) };
        std::thread::scope(|s| {
            for tx in 0..threads {
                let call = &call;
                s.spawn(move || {
                    // SAFETY: sets this thread's index.
                    unsafe { thread(tx, 0) };
                    call();
                });
            }
        });
    }
}

struct Pair {
    cpu: Vec<f32>,
    emu: Vec<f32>,
}

impl Pair {
    fn new(lo: f64, hi: f64, seed: u64) -> Pair {
        let mut rng = Rng::new(seed);
        let cpu: Vec<f32> = (0..FLOATS).map(|_| rng.uniform(lo, hi) as f32).collect();
        Pair {
            emu: cpu.clone(),
            cpu,
        }
    }

    fn p(&mut self, o: usize) -> *mut f32 {
        self.emu[o..].as_mut_ptr()
    }

    /// Address of element `o`, for closures shared across threads.
    fn a(&mut self, o: usize) -> usize {
        self.p(o) as usize
    }

    /// Runs the reference, then the emulated kernel, and compares whole arenas.
    fn check(
        &mut self,
        what: &str,
        rtol: f32,
        atol: f32,
        reference: impl FnOnce(&mut Cpu<f32>) -> mote::Result<()>,
        kernel: impl FnOnce(&mut Pair),
    ) {
        reference(&mut Cpu::new(&mut self.cpu)).unwrap_or_else(|e| panic!("{what}: {e}"));
        kernel(self);
        common::close(what, &self.emu, &self.cpu, rtol, atol);
        self.emu.copy_from_slice(&self.cpu);
    }
}

macro_rules! sym {
    ($lib:expr, $name:literal, $t:ty) => {{
        // SAFETY: the kernel's signature in kernels/*.cu is $t.
        let s: Symbol<$t> = unsafe { $lib.get($name) }.unwrap();
        *s
    }};
}

fn shape(d: &[usize]) -> Shape {
    Shape::new(d).unwrap()
}

fn view(offset: usize, d: &[usize]) -> View {
    View {
        offset,
        shape: shape(d),
    }
}

fn unary_code(op: UnaryOp) -> (i32, f32) {
    let (c, s) = op.pack();
    (i32::from(c), s)
}

#[test]
fn elementwise_kernels_match_the_reference() {
    let Some((lib, _turn)) = library() else {
        return;
    };
    type UFwd = unsafe extern "C" fn(i32, f32, *const f32, *mut f32, u64, i32);
    type UBwd =
        unsafe extern "C" fn(i32, f32, *const f32, *const f32, *const f32, *mut f32, u64, i32, i32);
    let fwd = sym!(lib, b"unary_fwd", UFwd);
    let bwd = sym!(lib, b"unary_bwd", UBwd);
    let ops = UnaryOp::EVERY;
    for (lo, positive) in [(-3.0, false), (0.1, true)] {
        let mut p = Pair::new(lo, 3.0, 1);
        for op in ops {
            if !positive && op.needs_positive() {
                continue;
            }
            let (c, s) = unary_code(op);
            for (x, y, dy, dx, n, vec) in [
                (0, 4096, 8192, 12288, 4002, 1),
                (1, 4099, 8190, 12301, 1001, 0),
            ] {
                p.check(
                    &format!("{op:?}"),
                    1e-6,
                    1e-6,
                    |b| b.unary(op, x, y, n),
                    |p| {
                        let (xp, yp) = (p.p(x), p.p(y));
                        run(lib, 1, 1, 1, || unsafe { fwd(c, s, xp, yp, n as u64, vec) });
                    },
                );
                // acc 0: the kernel overwrites a gradient the reference zeroes first.
                for acc in [1, 0] {
                    p.check(
                        &format!("{op:?} backward acc={acc}"),
                        1e-6,
                        1e-6,
                        |b| {
                            if acc == 0 {
                                b.fill(dx, n, 0.0)?;
                            }
                            b.unary_backward(op, x, y, dy, dx, n)
                        },
                        |p| {
                            let q = [p.p(x), p.p(y), p.p(dy), p.p(dx)];
                            run(lib, 1, 1, 1, || unsafe {
                                bwd(c, s, q[0], q[1], q[2], q[3], n as u64, vec, acc)
                            });
                        },
                    );
                }
            }
        }
    }
    // Fixed points: the flat parts, kinks, thresholds, NaN and infinite inputs and gradients.
    let mut p = Pair::new(-1.0, 1.0, 3);
    let n = common::PROBE_X.len();
    for op in UnaryOp::EVERY {
        let (c, s) = unary_code(op);
        p.check(
            &format!("{op:?} at fixed points"),
            1e-6,
            1e-6,
            |b| {
                b.write(0, &common::PROBE_X)?;
                b.write(32, &common::PROBE_DY)?;
                b.fill(96, n, 0.5)?;
                b.unary(op, 0, 64, n)?;
                b.unary_backward(op, 0, 64, 32, 96, n)
            },
            |p| {
                p.emu[..n].copy_from_slice(&common::PROBE_X);
                p.emu[32..32 + n].copy_from_slice(&common::PROBE_DY);
                p.emu[96..96 + n].fill(0.5);
                let q = [p.p(0), p.p(64), p.p(32), p.p(96)];
                run(lib, 1, 1, 1, || unsafe {
                    fwd(c, s, q[0], q[1], n as u64, 1);
                    bwd(c, s, q[0], q[1], q[2], q[3], n as u64, 1, 1)
                });
            },
        );
    }
    // fill and scale
    type Fill = unsafe extern "C" fn(*mut f32, u64, f32, i32);
    let (fill, scale) = (sym!(lib, b"fill", Fill), sym!(lib, b"scale", Fill));
    let mut p = Pair::new(-1.0, 1.0, 2);
    p.check(
        "fill",
        0.0,
        0.0,
        |b| b.fill(3, 1001, 0.25),
        |p| {
            let y = p.p(3);
            run(lib, 1, 1, 1, || unsafe { fill(y, 1001, 0.25, 0) });
        },
    );
    p.check(
        "scale",
        0.0,
        0.0,
        |b| b.scale(8, 3001, -0.5),
        |p| {
            let y = p.p(8);
            run(lib, 1, 1, 1, || unsafe { scale(y, 3001, -0.5, 1) });
        },
    );
    // A linear layer's bias and its activation in one pass (`bias_act`), against the
    // reference's broadcast add then the activation: float4 rows (cols a multiple of 4,
    // aligned) and odd shapes.
    type BiasAct = unsafe extern "C" fn(i32, f32, *const f32, *mut f32, *mut f32, u64, u64, i32);
    let bias_act = sym!(lib, b"bias_act", BiasAct);
    let mut p = Pair::new(0.1, 2.0, 4);
    for op in UnaryOp::EVERY {
        let (c, s) = unary_code(op);
        for (rows, cols, bias, y, h, vec) in [
            (7, 12, 40000, 0, 20000, 1),
            (5, 3, 40001, 3, 20001, 0),
            (1, 1, 40002, 5, 20003, 0),
            (6, 8, 40004, 1000, 1100, 1),
        ] {
            let len = rows * cols;
            p.check(
                &format!("bias_act {op:?} {rows}x{cols}"),
                1e-6,
                1e-6,
                |b| {
                    b.binary(
                        BinaryOp::Add,
                        view(y, &[rows, cols]),
                        view(bias, &[cols]),
                        view(30000, &[rows, cols]),
                    )?;
                    let all = shape(&[len]);
                    b.copy_strided(
                        &all,
                        Strided::contiguous(30000, &all),
                        Strided::contiguous(y, &all),
                        false,
                    )?;
                    b.unary(op, y, h, len)
                },
                |p| {
                    let (bp, yp, hp) = (p.p(bias), p.p(y), p.p(h));
                    run(lib, 1, 1, 1, || unsafe {
                        bias_act(c, s, bp, yp, hp, rows as u64, cols as u64, vec)
                    });
                    // The reference's scratch row sum, which the kernel does not need.
                    p.emu[30000..30000 + len].copy_from_slice(&p.cpu[30000..30000 + len]);
                },
            );
        }
    }
}

#[test]
fn broadcasting_and_copies_match_the_reference() {
    let Some((lib, _turn)) = library() else {
        return;
    };
    type Same = unsafe extern "C" fn(i32, *const f32, *const f32, *mut f32, u64, i32);
    type WalkK = unsafe extern "C" fn(i32, Walk, *const f32, *const f32, *mut f32);
    type BSame =
        unsafe extern "C" fn(i32, i32, *const f32, *const f32, *const f32, *mut f32, u64, i32);
    type BWalk =
        unsafe extern "C" fn(i32, i32, Walk, *const f32, *const f32, *const f32, *mut f32, i32);
    type Copy = unsafe extern "C" fn(Walk, *const f32, *mut f32, i32);
    let same = sym!(lib, b"binary_same", Same);
    let walk = sym!(lib, b"binary_walk", WalkK);
    let bsame = sym!(lib, b"binary_bwd_same", BSame);
    let bwalk = sym!(lib, b"binary_bwd_walk", BWalk);
    let bsplit = sym!(lib, b"binary_bwd_walk_split", BWalk);
    let copy = sym!(lib, b"copy_walk", Copy);
    let csplit = sym!(lib, b"copy_walk_split", Copy);
    let mut p = Pair::new(0.5, 1.5, 3);
    let cases: [(&[usize], &[usize], &[usize]); 8] = [
        (&[3, 5], &[3, 5], &[3, 5]),
        (&[4, 3, 5], &[5], &[4, 3, 5]),
        (&[4, 1, 5], &[3, 1], &[4, 3, 5]),
        (&[1], &[2, 3], &[2, 3]),
        (&[2, 3, 4, 5], &[3, 1, 1], &[2, 3, 4, 5]),
        (&[1000], &[1000], &[1000]),
        (&[100, 20], &[20], &[100, 20]),
        (&[300], &[1], &[300]),
    ];
    for op in BinaryOp::EVERY {
        let c = i32::from(op.code());
        for (sa, sb, sy) in cases {
            let (a, b, y, dx) = (view(0, sa), view(2000, sb), view(4000, sy), 6000);
            let is_same = a.len() == y.len() && b.len() == y.len();
            p.check(
                &format!("{op:?} {sa:?} {sb:?}"),
                1e-6,
                1e-7,
                |be| be.binary(op, a, b, y),
                |p| {
                    let (ap, bp, yp) = (p.p(a.offset), p.p(b.offset), p.p(y.offset));
                    if is_same {
                        run(lib, 1, 1, 1, || unsafe {
                            same(c, ap, bp, yp, y.len() as u64, 1)
                        });
                    } else {
                        let w = Walk::new(
                            &dims(&y.shape),
                            &[
                                broadcast_strides(&a.shape, &y.shape),
                                broadcast_strides(&b.shape, &y.shape),
                                y.shape.strides(),
                            ],
                            None,
                        );
                        run(lib, 1, 1, 1, || unsafe { walk(c, w, ap, bp, yp) });
                    }
                },
            );
            for ((sd, side), acc) in [(0, Side::Lhs), (1, Side::Rhs)]
                .into_iter()
                .flat_map(|s| [(s, 1), (s, 0)])
            {
                let own_len = if sd == 0 { a.len() } else { b.len() };
                // Sums of up to 300 terms, in another order than the reference's (which adds
                // each into dx): 1e-4 relative, as the GPU test. acc 0: the kernel overwrites a
                // gradient the reference zeroes first.
                p.check(
                    &format!("{op:?} {side:?} {sa:?} {sb:?} backward acc={acc}"),
                    1e-4,
                    1e-6,
                    |be| {
                        if acc == 0 {
                            be.fill(dx, own_len, 0.0)?;
                        }
                        be.binary_backward(op, side, a, b, y, dx)
                    },
                    |p| {
                        let q = [p.p(a.offset), p.p(b.offset), p.p(y.offset), p.p(dx)];
                        if is_same {
                            run(lib, 1, 1, 1, || unsafe {
                                bsame(c, sd, q[0], q[1], q[2], q[3], y.len() as u64, acc)
                            });
                            return;
                        }
                        let (ta, tb) = (
                            broadcast_strides(&a.shape, &y.shape),
                            broadcast_strides(&b.shape, &y.shape),
                        );
                        let own = if sd == 0 { ta } else { tb };
                        let w =
                            Walk::new(&dims(&y.shape), &[ta, tb, y.shape.strides(), own], Some(3));
                        if w.ltotal >= 64 {
                            let grid = w.ptotal.div_ceil(32) as u32;
                            run(lib, grid, 32, 32, || unsafe {
                                bsplit(c, sd, w, q[0], q[1], q[2], q[3], acc)
                            });
                        } else {
                            run(lib, 1, 1, 1, || unsafe {
                                bwalk(c, sd, w, q[0], q[1], q[2], q[3], acc)
                            });
                        }
                    },
                );
            }
        }
    }
    // Fixed points (same shapes): ties, NaN, infinities; NaN gradients where not selected.
    let n = common::PROBE_A.len();
    for op in BinaryOp::EVERY {
        let c = i32::from(op.code());
        for (sd, side) in [(0, Side::Lhs), (1, Side::Rhs)] {
            let v = |o: usize| view(o, &[n]);
            p.check(
                &format!("{op:?} {side:?} at fixed points"),
                1e-6,
                1e-7,
                |be| {
                    be.write(0, &common::PROBE_A)?;
                    be.write(16, &common::PROBE_B)?;
                    be.write(32, &common::PROBE_G)?;
                    be.fill(48, n, 0.5)?;
                    be.binary(op, v(0), v(16), v(64))?;
                    be.binary_backward(op, side, v(0), v(16), v(32), 48)
                },
                |p| {
                    p.emu[..n].copy_from_slice(&common::PROBE_A);
                    p.emu[16..16 + n].copy_from_slice(&common::PROBE_B);
                    p.emu[32..32 + n].copy_from_slice(&common::PROBE_G);
                    p.emu[48..48 + n].fill(0.5);
                    let q = [p.p(0), p.p(16), p.p(32), p.p(48), p.p(64)];
                    run(lib, 1, 1, 1, || unsafe {
                        same(c, q[0], q[1], q[4], n as u64, 1);
                        bsame(c, sd, q[0], q[1], q[2], q[3], n as u64, 1)
                    });
                },
            );
        }
    }
    // Strided copies: transpose, broadcast, a broadcast's backward (split and not).
    let mut p = Pair::new(-1.0, 1.0, 4);
    let s = shape(&[3, 4, 5]);
    let big = shape(&[256, 100]);
    let cases = [
        (
            s,
            Strided {
                offset: 0,
                strides: [1, 3, 12, 0],
            },
            Strided::contiguous(1000, &s),
            false,
        ),
        (
            s,
            Strided {
                offset: 0,
                strides: [1, 3, 12, 0],
            },
            Strided::contiguous(1000, &s),
            true,
        ),
        (
            s,
            Strided {
                offset: 5000,
                strides: [0, 0, 1, 0],
            },
            Strided::contiguous(1000, &s),
            false,
        ),
        (
            s,
            Strided::contiguous(1000, &s),
            Strided {
                offset: 5000,
                strides: [0, 0, 1, 0],
            },
            true,
        ),
        (
            big,
            Strided::contiguous(0, &big),
            Strided {
                offset: 40000,
                strides: [0, 1, 0, 0],
            },
            true,
        ),
    ];
    for (space, src, dst, acc) in cases {
        // Sums of up to 256 terms of either sign: absolute error ~ 1e-5.
        p.check(
            &format!("copy {space:?} {src:?} -> {dst:?} acc={acc}"),
            1e-5,
            1e-5,
            |b| b.copy_strided(&space, src, dst, acc),
            |p| {
                let w = Walk::new(&dims(&space), &[src.strides, dst.strides], acc.then_some(1));
                let (sp, dp) = (p.p(src.offset), p.p(dst.offset));
                if w.ltotal >= 64 {
                    run(lib, w.ptotal.div_ceil(32) as u32, 32, 32, || unsafe {
                        csplit(w, sp, dp, i32::from(acc))
                    });
                } else {
                    run(lib, 1, 1, 1, || unsafe { copy(w, sp, dp, i32::from(acc)) });
                }
            },
        );
    }
}

#[test]
fn strided_reductions_and_softmax_match_the_reference() {
    let Some((lib, _turn)) = library() else {
        return;
    };
    type Red = unsafe extern "C" fn(i32, *const f32, *mut f32, u64, u64, u64);
    type BSum = unsafe extern "C" fn(*const f32, *mut f32, u64, u64, u64, f32, i32);
    type BMax = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, u64, u64, u64);
    type Sm = unsafe extern "C" fn(i32, *const f32, *mut f32, u64, u64, u64);
    type SmB = unsafe extern "C" fn(i32, *const f32, *const f32, *mut f32, u64, u64, u64, i32);
    let red = sym!(lib, b"reduce_strided", Red);
    let bsum = sym!(lib, b"reduce_bwd_sum", BSum);
    let bmax = sym!(lib, b"reduce_bwd_max", BMax);
    let sm = sym!(lib, b"softmax_strided", Sm);
    let smb = sym!(lib, b"softmax_bwd_strided", SmB);
    let mut p = Pair::new(-2.0, 2.0, 5);
    for op in ReduceOp::EVERY {
        let code = op.code();
        for r in [
            Axis3 {
                outer: 3,
                n: 4,
                inner: 5,
            },
            Axis3 {
                outer: 1,
                n: 7,
                inner: 300,
            },
            Axis3 {
                outer: 9,
                n: 1,
                inner: 2,
            },
        ] {
            let (x, y, dy, dx) = (0, 20000, 30000, 40000);
            let (o, n, i) = (r.outer as u64, r.n as u64, r.inner as u64);
            p.check(
                &format!("{op:?} {r:?}"),
                1e-5,
                1e-6,
                |b| b.reduce(op, r, x, y),
                |p| {
                    let (xp, yp) = (p.p(x), p.p(y));
                    run(lib, 1, 1, 1, || unsafe {
                        red(i32::from(code), xp, yp, o, n, i)
                    });
                },
            );
            // acc 0 (a sum's backward only): overwriting a gradient the reference zeroes.
            for acc in if op.picks() { vec![1] } else { vec![1, 0] } {
                p.check(
                    &format!("{op:?} {r:?} backward acc={acc}"),
                    1e-5,
                    1e-6,
                    |b| {
                        if acc == 0 {
                            b.fill(dx, r.input_len(), 0.0)?;
                        }
                        b.reduce_backward(op, r, x, y, dy, dx)
                    },
                    |p| {
                        let q = [p.p(x), p.p(y), p.p(dy), p.p(dx)];
                        if op.picks() {
                            run(lib, 1, 1, 1, || unsafe {
                                bmax(q[0], q[1], q[2], q[3], o, n, i)
                            });
                        } else {
                            let scale = if op == ReduceOp::Mean {
                                1.0 / r.n as f32
                            } else {
                                1.0
                            };
                            run(lib, 1, 1, 1, || unsafe {
                                bsum(q[2], q[3], o, n, i, scale, acc)
                            });
                        }
                    },
                );
            }
        }
        // Fixed points along the axis (outer 2, n 4, inner 2): NaN, ties, infinities, signed
        // zeros; the result and the first position that holds it.
        let xs = common::PROBE_R;
        let r = Axis3 {
            outer: 2,
            n: 4,
            inner: 2,
        };
        let (o, n, i) = (2u64, 4u64, 2u64);
        p.check(
            &format!("{op:?} at fixed points"),
            1e-6,
            1e-7,
            |b| {
                b.write(0, &xs)?;
                b.reduce(op, r, 0, 32)?;
                b.reduce_backward(op, r, 0, 32, 48, 64)
            },
            |p| {
                p.emu[..16].copy_from_slice(&xs);
                let q = [p.p(0), p.p(32), p.p(48), p.p(64)];
                run(lib, 1, 1, 1, || unsafe {
                    red(i32::from(code), q[0], q[1], o, n, i);
                    if op.picks() {
                        bmax(q[0], q[1], q[2], q[3], o, n, i);
                    } else {
                        let scale = if op == ReduceOp::Mean { 0.25 } else { 1.0 };
                        bsum(q[2], q[3], o, n, i, scale, 1);
                    }
                });
            },
        );
    }
    for log in [false, true] {
        let r = Axis3 {
            outer: 4,
            n: 6,
            inner: 7,
        };
        let (x, y, dy, dx) = (0, 10000, 20000, 30000);
        let (o, n, i) = (4u64, 6u64, 7u64);
        p.check(
            &format!("softmax log={log}"),
            1e-5,
            1e-7,
            |b| b.softmax(log, r, x, y),
            |p| {
                let (xp, yp) = (p.p(x), p.p(y));
                run(lib, 1, 1, 1, || unsafe {
                    sm(i32::from(log), xp, yp, o, n, i)
                });
            },
        );
        for acc in [1, 0] {
            p.check(
                &format!("softmax log={log} backward acc={acc}"),
                1e-5,
                1e-6,
                |b| {
                    if acc == 0 {
                        b.fill(dx, r.input_len(), 0.0)?;
                    }
                    b.softmax_backward(log, r, y, dy, dx)
                },
                |p| {
                    let q = [p.p(y), p.p(dy), p.p(dx)];
                    run(lib, 1, 1, 1, || unsafe {
                        smb(i32::from(log), q[0], q[1], q[2], o, n, i, acc)
                    });
                },
            );
        }
    }
}

#[test]
fn optimizers_losses_and_graph_tick_match_the_reference() {
    let Some((lib, _turn)) = library() else {
        return;
    };
    type SgdK = unsafe extern "C" fn(
        *mut f32,
        *const f32,
        *mut f32,
        u64,
        f32,
        f32,
        f32,
        f32,
        i32,
        i32,
        *const f32,
    );
    type AdamK = unsafe extern "C" fn(
        *mut f32,
        *const f32,
        *mut f32,
        *mut f32,
        *mut f32,
        u64,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        *const f32,
        i32,
    );
    type AdamM = unsafe extern "C" fn(
        *mut f32,
        *const u64,
        i32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        *const f32,
        *mut f64,
    );
    type Zero = unsafe extern "C" fn(*mut f32, *const u64, i32);
    type Tick = unsafe extern "C" fn(*mut f64, *mut f32);
    type SgdM =
        unsafe extern "C" fn(*mut f32, *const u64, i32, f32, f32, f32, f32, i32, i32, *const f32);
    type RmsM =
        unsafe extern "C" fn(*mut f32, *const u64, i32, f32, f32, f32, f32, f32, f32, *const f32);
    type RmsK = unsafe extern "C" fn(
        *mut f32,
        *const f32,
        *mut f32,
        *mut f32,
        *mut f32,
        u64,
        f32,
        f32,
        f32,
        f32,
        f32,
        f32,
        *const f32,
    );
    type LossB = unsafe extern "C" fn(
        i32,
        i32,
        *const f32,
        *const f32,
        *mut f32,
        *mut f32,
        u64,
        u64,
        *mut u32,
        f32,
        i32,
        i32,
        f32,
    );
    let sgd = sym!(lib, b"sgd", SgdK);
    let adam = sym!(lib, b"adam", AdamK);
    let adam_multi = sym!(lib, b"adam_multi", AdamM);
    let zero = sym!(lib, b"zero_ranges", Zero);
    let tick = sym!(lib, b"graph_tick", Tick);
    let rms = sym!(lib, b"rms", RmsK);
    let rms_multi = sym!(lib, b"rms_multi", RmsM);
    let sgd_multi = sym!(lib, b"sgd_multi", SgdM);
    let loss_bwd = sym!(lib, b"loss_bwd", LossB);
    let mut p = Pair::new(-1.0, 1.0, 6);
    for (momentum, nesterov, first, wd) in [
        (0.0, false, false, 0.0),
        (0.9, false, true, 0.01),
        (0.9, true, false, 0.0),
    ] {
        let u = SgdUpdate {
            param: 0,
            grad: 5000,
            momentum_buf: (momentum > 0.0).then_some(10000),
            len: 4001,
            lr: 0.05,
            momentum,
            dampening: 0.0,
            weight_decay: wd,
            nesterov,
            first,
        };
        p.check(
            &format!("sgd {u:?}"),
            0.0,
            0.0,
            |b| b.sgd(&u),
            |p| {
                let (pp, gp) = (p.p(0), p.p(5000));
                let bp = if momentum > 0.0 {
                    p.p(10000)
                } else {
                    std::ptr::null_mut()
                };
                run(lib, 1, 1, 1, || unsafe {
                    sgd(
                        pp,
                        gp,
                        bp,
                        4001,
                        0.05,
                        momentum as f32,
                        1.0,
                        wd as f32,
                        i32::from(nesterov),
                        i32::from(first),
                        std::ptr::null(),
                    )
                });
            },
        );
    }
    // Adam: per tensor and all tensors in one multi-tensor launch; AMSGrad per tensor, its
    // running maximum at +52000.
    for v in &mut p.cpu[39000..65000] {
        *v = v.abs();
    }
    p.emu.copy_from_slice(&p.cpu);
    for decoupled in [false, true] {
        let us: Vec<AdamUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| AdamUpdate {
                param,
                grad: param + 13000,
                m: param + 26000,
                v: param + 39000,
                len,
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled,
                bias1: 1.0 - 0.9f64.powi(3),
                bias2: 1.0 - 0.999f64.powi(3),
                vmax: None,
            })
            .collect();
        let u0 = us[0];
        let (b1, b2) = (u0.beta1 as f32, u0.beta2 as f32);
        let (l2, decay) = if decoupled {
            (0.0, (1.0 - u0.lr * u0.weight_decay) as f32)
        } else {
            (u0.weight_decay as f32, 1.0)
        };
        let (step, isb2) = ((u0.lr / u0.bias1) as f32, (1.0 / u0.bias2.sqrt()) as f32);
        // Per tensor: Adam, then AMSGrad (its running maximum at +52000).
        let ams: Vec<AdamUpdate> = us
            .iter()
            .map(|u| AdamUpdate {
                vmax: Some(u.param + 52000),
                ..*u
            })
            .collect();
        for (name, updates) in [("adam", &us), ("amsgrad", &ams)] {
            p.check(
                &format!("{name} decoupled={decoupled}"),
                0.0,
                0.0,
                |b| updates.iter().try_for_each(|u| b.adam(u)),
                |p| {
                    for u in updates {
                        let q = [p.p(u.param), p.p(u.grad), p.p(u.m), p.p(u.v)];
                        let vm = u.vmax.map_or(std::ptr::null_mut(), |o| p.p(o));
                        let aligned = [u.param, u.grad, u.m, u.v].iter().all(|o| o % 4 == 0);
                        let vec = i32::from(u.vmax.is_none() && aligned);
                        run(lib, 1, 1, 1, || unsafe {
                            adam(
                                q[0],
                                q[1],
                                q[2],
                                q[3],
                                vm,
                                u.len as u64,
                                b1,
                                b2,
                                1.0 - b1,
                                1.0 - b2,
                                step,
                                isb2,
                                1e-8,
                                l2,
                                decay,
                                std::ptr::null(),
                                vec,
                            )
                        });
                    }
                },
            );
        }
        // One launch over every tensor, Adam's and AMSGrad's (its maximum a descriptor word,
        // u64::MAX for none).
        for (name, updates) in [("adam_multi", &us), ("adam_multi amsgrad", &ams)] {
            p.check(
                &format!("{name} decoupled={decoupled}"),
                0.0,
                0.0,
                |b| updates.iter().try_for_each(|u| b.adam(u)),
                |p| {
                    let mut words = Vec::new();
                    let mut tiles = 0u64;
                    for u in updates {
                        words.extend([
                            u.param as u64,
                            u.grad as u64,
                            u.m as u64,
                            u.v as u64,
                            u.vmax.map_or(u64::MAX, |o| o as u64),
                            u.len as u64,
                            tiles,
                        ]);
                        tiles += (u.len as u64).div_ceil(4096);
                    }
                    let arena = p.p(0);
                    run(lib, tiles as u32, 256, 1, || unsafe {
                        adam_multi(
                            arena,
                            words.as_ptr(),
                            updates.len() as i32,
                            b1,
                            b2,
                            1.0 - b1,
                            1.0 - b2,
                            step,
                            isb2,
                            1e-8,
                            l2,
                            decay,
                            std::ptr::null(),
                            std::ptr::null_mut(),
                        )
                    });
                },
            );
        }
    }
    p.check(
        "zero_ranges",
        0.0,
        0.0,
        |b| {
            b.fill(10, 100, 0.0)?;
            b.fill(3000, 4097, 0.0)
        },
        |p| {
            let words = [10u64, 100, 3000, 4097];
            let arena = p.p(0);
            run(lib, 2, 256, 1, || unsafe { zero(arena, words.as_ptr(), 2) });
        },
    );
    // MSE and BCE gradients (both sides), the loss's gradient scale read from the arena.
    for v in &mut p.cpu[12000..13000] {
        *v = v.abs();
    }
    p.emu.copy_from_slice(&p.cpu);
    for (code, op, t) in [(0, LossOp::Mse, 2000), (2, LossOp::BceWithLogits, 12000)] {
        // acc 0: overwriting a gradient the reference zeroes first; seeded: the upstream
        // gradient passed as a value (and written to dy) instead of filled in before.
        for (lhs, acc, seeded) in [
            (true, 1, 0),
            (false, 1, 0),
            (true, 0, 0),
            (false, 0, 1),
            (true, 1, 1),
        ] {
            let (pv, tv) = (view(0, &[1000]), view(t, &[1000]));
            p.check(
                &format!("{op:?} backward lhs={lhs} acc={acc} seeded={seeded}"),
                1e-6,
                1e-7,
                |b| {
                    if acc == 0 {
                        b.fill(20000, 1000, 0.0)?;
                    }
                    if seeded == 1 {
                        b.fill(15000, 1, 0.75)?;
                    }
                    b.loss_backward(op, lhs, 0, pv, tv, 15000, 20000)
                },
                |p| {
                    let q = [p.p(0), p.p(t), p.p(15000), p.p(20000)];
                    let mut status = [0u32; 3];
                    run(lib, 1, 1, 1, || unsafe {
                        loss_bwd(
                            code,
                            i32::from(lhs),
                            q[0],
                            q[1],
                            q[2],
                            q[3],
                            1000,
                            0,
                            status.as_mut_ptr(),
                            0.0,
                            acc,
                            seeded,
                            0.75,
                        )
                    });
                },
            );
        }
    }
    // The graph tick: Adam's scalars for replays 0, 1, 2, ... as an eager Adam computes them.
    let (lr, b1, b2) = (1e-3f64, 0.9f64, 0.999f64);
    let mut rec = [
        1.0, 1.0, 1.0, lr, b1, b2, b1, b2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    // Record 0: SGD first flag at output 0; record 1 would follow. Here: one Adam record at 1.
    let mut dyn_ = [0f32; 4];
    let (mut p1, mut p2) = (b1, b2);
    for k in 0..20 {
        run(lib, 1, 1, 1, || unsafe {
            tick(rec.as_mut_ptr(), dyn_.as_mut_ptr())
        });
        let want = [(lr / (1.0 - p1)) as f32, (1.0 / (1.0 - p2).sqrt()) as f32];
        assert_eq!(&dyn_[1..3], &want, "graph_tick replay {k}");
        p1 *= b1;
        p2 *= b2;
    }
    let mut rec = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let mut flags = [0f32; 1];
    for k in 0..3 {
        run(lib, 1, 1, 1, || unsafe {
            tick(rec.as_mut_ptr(), flags.as_mut_ptr())
        });
        assert_eq!(
            flags[0],
            if k == 0 { 1.0 } else { 0.0 },
            "sgd first flag, replay {k}"
        );
    }
    let _ = &mut rec;
    // Adagrad's decaying rate (record kind 2, step 3 at capture): bit for bit the host's
    // `RmsUpdate::rate` of steps 3, 4, 5, ...
    let (lr, decay) = (0.05f64, 0.1f64);
    let mut rec = [1.0, 2.0, 0.0, lr, decay, 3.0, 0.0, 0.0, 0.0];
    let mut host = Adagrad::detached(AdagradConfig {
        lr,
        lr_decay: decay,
        ..AdagradConfig::default()
    })
    .unwrap();
    host.set_steps(2);
    let mut rate = [0f32; 1];
    for k in 0..50 {
        run(lib, 1, 1, 1, || unsafe {
            tick(rec.as_mut_ptr(), rate.as_mut_ptr())
        });
        let want = host.next_update().rate() as f32;
        assert_eq!(
            rate[0].to_bits(),
            want.to_bits(),
            "adagrad rate, replay {k}"
        );
    }
    // RMSprop (plain, momentum, centered, both) and Adagrad, against the reference bit for
    // bit: squares at 10000 (>= 0), the gradient's average at 15000 (below their root),
    // momentum at 20000.
    for (alpha, momentum, centered) in [
        (0.99, 0.0, false),
        (0.9, 0.5, false),
        (0.9, 0.0, true),
        (0.95, 0.9, true),
        (1.0, 0.0, false),
    ] {
        let u = RmsUpdate {
            param: 0,
            grad: 5000,
            sq: 10000,
            avg: centered.then_some(15000),
            momentum_buf: (momentum > 0.0).then_some(20000),
            len: 4001,
            lr: 0.01,
            lr_decay: if alpha == 1.0 { 0.1 } else { 0.0 },
            step: 3,
            alpha,
            gain: if alpha == 1.0 { 1.0 } else { 1.0 - alpha },
            eps: 1e-8,
            weight_decay: 0.01,
            momentum,
        };
        for i in 0..u.len {
            let sq = p.cpu[10000 + i].abs();
            p.cpu[10000 + i] = sq;
            p.cpu[15000 + i] = 0.5 * sq.sqrt() * p.cpu[15000 + i].signum();
        }
        p.emu.copy_from_slice(&p.cpu);
        p.check(
            &format!("rms {u:?}"),
            0.0,
            0.0,
            |b| b.rms(&u),
            |p| {
                let q = [p.p(u.param), p.p(u.grad), p.p(u.sq)];
                let avg = u.avg.map_or(std::ptr::null_mut(), |o| p.p(o));
                let buf = u.momentum_buf.map_or(std::ptr::null_mut(), |o| p.p(o));
                run(lib, 1, 1, 1, || unsafe {
                    rms(
                        q[0],
                        q[1],
                        q[2],
                        avg,
                        buf,
                        u.len as u64,
                        u.rate() as f32,
                        u.alpha as f32,
                        u.gain as f32,
                        u.eps as f32,
                        u.weight_decay as f32,
                        u.momentum as f32,
                        std::ptr::null(),
                    )
                });
            },
        );
    }
    // Several tensors in one `sgd_multi` launch (OPT_NONE without momentum), aligned and not:
    // params in 0..12096, gradients +13000, momentum +26000.
    for (momentum, nesterov, first) in [(0.9, true, false), (0.9, false, true), (0.0, false, false)]
    {
        let us: Vec<SgdUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| SgdUpdate {
                param,
                grad: param + 13000,
                momentum_buf: (momentum > 0.0).then_some(param + 26000),
                len,
                lr: 0.05,
                momentum,
                dampening: 0.0,
                weight_decay: 0.01,
                nesterov,
                first,
            })
            .collect();
        p.check(
            &format!("sgd_multi momentum={momentum} nesterov={nesterov} first={first}"),
            0.0,
            0.0,
            |b| us.iter().try_for_each(|u| b.sgd(u)),
            |p| {
                let mut words = Vec::new();
                let mut tiles = 0u64;
                for u in &us {
                    words.extend([
                        u.param as u64,
                        u.grad as u64,
                        u.momentum_buf.map_or(u64::MAX, |o| o as u64),
                        u.len as u64,
                        tiles,
                    ]);
                    tiles += (u.len as u64).div_ceil(4096);
                }
                let arena = p.p(0);
                run(lib, tiles as u32, 256, 1, || unsafe {
                    sgd_multi(
                        arena,
                        words.as_ptr(),
                        us.len() as i32,
                        0.05,
                        momentum as f32,
                        1.0,
                        0.01,
                        i32::from(nesterov),
                        i32::from(first),
                        std::ptr::null(),
                    )
                });
            },
        );
    }
    // Several tensors in one `rms_multi` launch (a descriptor each, ~0 for an absent buffer),
    // aligned and not: params in 0..12096, gradients +13000, squares +26000, average +39000,
    // momentum +52000; a tile of 4096 elements a block.
    for (alpha, momentum, centered) in [(0.9, 0.5, true), (1.0, 0.0, false)] {
        let us: Vec<RmsUpdate> = [(0usize, 5000usize), (5001, 1003), (8000, 4096)]
            .iter()
            .map(|&(param, len)| RmsUpdate {
                param,
                grad: param + 13000,
                sq: param + 26000,
                avg: centered.then_some(param + 39000),
                momentum_buf: (momentum > 0.0).then_some(param + 52000),
                len,
                lr: 0.01,
                lr_decay: 0.0,
                step: 3,
                alpha,
                gain: if alpha == 1.0 { 1.0 } else { 1.0 - alpha },
                eps: 1e-8,
                weight_decay: 0.01,
                momentum,
            })
            .collect();
        for u in &us {
            for i in 0..u.len {
                let sq = p.cpu[u.sq + i].abs();
                p.cpu[u.sq + i] = sq;
                p.cpu[u.param + 39000 + i] = 0.25 * sq.sqrt();
            }
        }
        p.emu.copy_from_slice(&p.cpu);
        let u0 = us[0];
        p.check(
            &format!("rms_multi alpha={alpha} centered={centered}"),
            0.0,
            0.0,
            |b| us.iter().try_for_each(|u| b.rms(u)),
            |p| {
                let mut words = Vec::new();
                let mut tiles = 0u64;
                for u in &us {
                    words.extend([
                        u.param as u64,
                        u.grad as u64,
                        u.sq as u64,
                        u.avg.map_or(u64::MAX, |o| o as u64),
                        u.momentum_buf.map_or(u64::MAX, |o| o as u64),
                        u.len as u64,
                        tiles,
                    ]);
                    tiles += (u.len as u64).div_ceil(4096);
                }
                let arena = p.p(0);
                run(lib, tiles as u32, 256, 1, || unsafe {
                    rms_multi(
                        arena,
                        words.as_ptr(),
                        us.len() as i32,
                        u0.rate() as f32,
                        u0.alpha as f32,
                        u0.gain as f32,
                        u0.eps as f32,
                        u0.weight_decay as f32,
                        u0.momentum as f32,
                        std::ptr::null(),
                    )
                });
            },
        );
    }
}

#[test]
fn warp_kernels_match_the_reference() {
    let Some((lib, _turn)) = library() else {
        return;
    };
    type Rows = unsafe extern "C" fn(i32, *const f32, *mut f32, u64, u64);
    type RowsBlock = unsafe extern "C" fn(i32, *const f32, *mut f32, u64);
    type All = unsafe extern "C" fn(i32, *const f32, *mut f32, u64, *mut u32);
    type SmRows = unsafe extern "C" fn(i32, *const f32, *mut f32, u64, u64);
    type SmBRows = unsafe extern "C" fn(i32, *const f32, *const f32, *mut f32, u64, u64, i32);
    type LossF = unsafe extern "C" fn(
        i32,
        *mut f32,
        *const f32,
        *mut f32,
        u64,
        u64,
        *mut u32,
        f32,
        *const f32,
        u64,
    );
    type LossB = unsafe extern "C" fn(
        i32,
        i32,
        *const f32,
        *const f32,
        *mut f32,
        *mut f32,
        u64,
        u64,
        *mut u32,
        f32,
        i32,
        i32,
        f32,
    );
    type SumSq = unsafe extern "C" fn(*const f32, u64, *mut f64, *mut u32);
    let rows = sym!(lib, b"reduce_rows", Rows);
    let rows_block = sym!(lib, b"reduce_rows_block", RowsBlock);
    let all = sym!(lib, b"reduce_all", All);
    let sm_rows = sym!(lib, b"softmax_rows", SmRows);
    let smb_rows = sym!(lib, b"softmax_bwd_rows", SmBRows);
    let loss_fwd = sym!(lib, b"loss_fwd", LossF);
    let loss_bwd = sym!(lib, b"loss_bwd", LossB);
    let sum_sq = sym!(lib, b"sum_squares", SumSq);
    let mut p = Pair::new(-2.0, 2.0, 7);
    for op in ReduceOp::EVERY {
        let c = i32::from(op.code());
        for r in [
            Axis3 {
                outer: 7,
                n: 33,
                inner: 1,
            },
            Axis3 {
                outer: 3,
                n: 5000,
                inner: 1,
            },
            Axis3 {
                outer: 5,
                n: 1,
                inner: 1,
            },
        ] {
            let (o, n) = (r.outer as u64, r.n as u64);
            // A sum of n terms in [-2, 2] in another order: absolute error up to ~ n * 5e-7.
            let atol = 5e-7 * r.n as f32;
            p.check(
                &format!("{op:?} {r:?} (warp per row)"),
                1e-5,
                atol,
                |b| b.reduce(op, r, 0, 20000),
                |p| {
                    let (x, y) = (p.a(0), p.a(20000));
                    run_par(lib, 1, 64, || unsafe {
                        rows(c, x as *const f32, y as *mut f32, o, n)
                    });
                },
            );
            p.check(
                &format!("{op:?} {r:?} (block per row)"),
                1e-5,
                atol,
                |b| b.reduce(op, r, 0, 20000),
                |p| {
                    let (x, y) = (p.a(0), p.a(20000));
                    run_par(lib, o as u32, 64, || unsafe {
                        rows_block(c, x as *const f32, y as *mut f32, n)
                    });
                },
            );
        }
        // A whole tensor on 1 and on 3 blocks (the partials combined by the last block).
        let r = Axis3 {
            outer: 1,
            n: 9000,
            inner: 1,
        };
        for grid in [1, 3] {
            p.check(
                &format!("{op:?} {r:?} (whole tensor, {grid} blocks)"),
                1e-5,
                5e-7 * 9000.0,
                |b| b.reduce(op, r, 0, 20000),
                |p| {
                    let (x, y) = (p.a(0), p.a(20000));
                    let status = std::sync::Mutex::new([0u32; 512]);
                    let st = status.lock().unwrap().as_mut_ptr() as usize;
                    run_par(lib, grid, 64, || unsafe {
                        all(c, x as *const f32, y as *mut f32, 9000, st as *mut u32)
                    });
                    assert_eq!(status.lock().unwrap()[32], 0, "the ticket is reset");
                },
            );
        }
    }
    for log in [false, true] {
        for r in [
            Axis3 {
                outer: 9,
                n: 10,
                inner: 1,
            },
            Axis3 {
                outer: 3,
                n: 100,
                inner: 1,
            },
        ] {
            let (o, n) = (r.outer as u64, r.n as u64);
            let lg = i32::from(log);
            p.check(
                &format!("softmax rows log={log} {r:?}"),
                1e-5,
                1e-7,
                |b| b.softmax(log, r, 0, 10000),
                |p| {
                    let (x, y) = (p.a(0), p.a(10000));
                    run_par(lib, 1, 64, || unsafe {
                        sm_rows(lg, x as *const f32, y as *mut f32, o, n)
                    });
                },
            );
            for acc in [1, 0] {
                p.check(
                    &format!("softmax rows log={log} {r:?} backward acc={acc}"),
                    1e-5,
                    1e-6,
                    |b| {
                        if acc == 0 {
                            b.fill(30000, r.input_len(), 0.0)?;
                        }
                        b.softmax_backward(log, r, 10000, 20000, 30000)
                    },
                    |p| {
                        let (y, dy, dx) = (p.a(10000), p.a(20000), p.a(30000));
                        run_par(lib, 1, 64, || unsafe {
                            smb_rows(
                                lg,
                                y as *const f32,
                                dy as *const f32,
                                dx as *mut f32,
                                o,
                                n,
                                acc,
                            )
                        });
                    },
                );
            }
        }
    }
    // Losses: labels at 9000..9040 (integers below 10), BCE targets in [0, 1] at 12000.
    let labels: Vec<f32> = (0..40).map(|i| ((i * 7) % 10) as f32).collect();
    p.cpu[9000..9040].copy_from_slice(&labels);
    for v in &mut p.cpu[12000..13000] {
        *v = v.abs() / 2.0;
    }
    p.emu.copy_from_slice(&p.cpu);
    let cases = [
        (0, LossOp::Mse, 0, view(0, &[1000]), view(2000, &[1000])),
        (
            2,
            LossOp::BceWithLogits,
            0,
            view(0, &[1000]),
            view(12000, &[1000]),
        ),
        (
            1,
            LossOp::CrossEntropy,
            10,
            view(0, &[40, 10]),
            view(9000, &[40]),
        ),
        (
            1,
            LossOp::CrossEntropySmoothed(0.1),
            10,
            view(0, &[40, 10]),
            view(9000, &[40]),
        ),
        (
            1,
            LossOp::CrossEntropySmoothed(1.0),
            10,
            view(0, &[40, 10]),
            view(9000, &[40]),
        ),
        // More classes than a warp has lanes: each lane sums several.
        (
            1,
            LossOp::CrossEntropySmoothed(0.25),
            70,
            view(0, &[40, 70]),
            view(9000, &[40]),
        ),
    ];
    // One block, and 3 (each block's sum to the partials, the last one adding them up).
    for ((code, op, classes, pv, tv), grid) in cases.iter().flat_map(|&c| [(c, 1), (c, 3)]) {
        let n = if op.takes_labels() {
            tv.len()
        } else {
            pv.len()
        } as u64;
        p.check(
            &format!("{op:?}"),
            1e-5,
            1e-6,
            |b| b.loss(op, classes, pv, tv, 15001),
            |p| {
                let (pp, tp, y) = (p.a(pv.offset), p.a(tv.offset), p.a(15001));
                // The status area (2048 bytes: the partial sums of several blocks at 1024).
                let status = std::sync::Mutex::new([0u32; 512]);
                let st = status.lock().unwrap().as_mut_ptr() as usize;
                run_par(lib, grid, 64, || unsafe {
                    loss_fwd(
                        code,
                        pp as *mut f32,
                        tp as *const f32,
                        y as *mut f32,
                        n,
                        classes as u64,
                        st as *mut u32,
                        op.smoothing(),
                        std::ptr::null(),
                        0,
                    )
                });
                let status = status.lock().unwrap();
                assert_eq!(status[0], 0, "{op:?}: no bad label");
                assert_eq!(status[32], 0, "{op:?}: the last block resets the ticket");
            },
        );
    }
    for (op, classes) in [
        (LossOp::CrossEntropy, 10),
        (LossOp::CrossEntropySmoothed(0.1), 10),
        (LossOp::CrossEntropySmoothed(0.25), 70),
    ] {
        let (pv, tv) = (view(0, &[40, classes]), view(9000, &[40]));
        for (acc, seeded) in [(1, 0), (0, 0), (0, 1)] {
            p.check(
                &format!("{op:?} {classes} classes backward acc={acc} seeded={seeded}"),
                1e-5,
                1e-7,
                |b| {
                    if acc == 0 {
                        b.fill(20000, 40 * classes, 0.0)?;
                    }
                    if seeded == 1 {
                        b.fill(15000, 1, 1.0)?;
                    }
                    b.loss_backward(op, true, classes, pv, tv, 15000, 20000)
                },
                |p| {
                    let (pp, tp, dy, dx) = (p.a(0), p.a(9000), p.a(15000), p.a(20000));
                    let mut status = [0u32; 3];
                    let st = status.as_mut_ptr() as usize;
                    run_par(lib, 2, 64, || unsafe {
                        loss_bwd(
                            1,
                            1,
                            pp as *const f32,
                            tp as *const f32,
                            dy as *mut f32,
                            dx as *mut f32,
                            40,
                            classes as u64,
                            st as *mut u32,
                            op.smoothing(),
                            acc,
                            seeded,
                            1.0,
                        )
                    });
                },
            );
        }
    }
    // A bad label is reported (flag, label, classes) instead of read out of range.
    p.emu[9003] = 12.0;
    let (pp, tp, y) = (p.a(0), p.a(9000), p.a(15001));
    let mut status = [0u32; 512];
    let st = status.as_mut_ptr() as usize;
    run_par(lib, 1, 64, || unsafe {
        loss_fwd(
            1,
            pp as *mut f32,
            tp as *const f32,
            y as *mut f32,
            40,
            10,
            st as *mut u32,
            0.0,
            std::ptr::null(),
            0,
        )
    });
    assert_eq!(status[..3], [1, 12, 10]);
    // Overwriting (acc 0), the bad row's gradient is zeros, not what the arena held.
    let (dy, dx) = (p.a(15000), p.a(20000));
    status = [0u32; 512];
    run_par(lib, 2, 64, || unsafe {
        loss_bwd(
            1,
            1,
            pp as *const f32,
            tp as *const f32,
            dy as *mut f32,
            dx as *mut f32,
            40,
            10,
            st as *mut u32,
            0.0,
            0,
            1,
            1.0,
        )
    });
    assert_eq!(status[..3], [1, 12, 10]);
    assert!(
        p.emu[20030..20040].iter().all(|&v| v == 0.0),
        "row 3 zeroed"
    );
    assert!(
        p.emu[20000..20010].iter().any(|&v| v != 0.0),
        "row 0 computed"
    );
    p.emu.copy_from_slice(&p.cpu);
    // Sum of squares over several blocks.
    let want = Cpu::new(&mut p.cpu).sum_squares(5, 10000).unwrap();
    // Each block's partial, then the last block's sum in block order: the same bits however
    // the blocks' turns fall.
    let mut bits = None;
    for blocks in [3, 3, 7] {
        let mut got = 0f64;
        let mut status = [0u32; 1024];
        let (x, out, st) = (
            p.a(5),
            &mut got as *mut f64 as usize,
            status.as_mut_ptr() as usize,
        );
        run_par(lib, blocks, 64, || unsafe {
            sum_sq(x as *const f32, 10000, out as *mut f64, st as *mut u32)
        });
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "sum_squares on {blocks} blocks: {got} vs {want}"
        );
        assert_eq!(status[32], 0, "the ticket is reset");
        if blocks == 3 {
            assert_eq!(*bits.get_or_insert(got.to_bits()), got.to_bits());
        }
    }
}
