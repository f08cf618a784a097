//! The emulated CUDA device (`tests/emu/device.cpp`): the driver API, cuBLAS, NVRTC and NCCL
//! calls this crate makes, implemented on the CPU around the crate's own kernels compiled as
//! host C++. For checking the launch code without a GPU: the GPU tests use it where no driver
//! is found (`tests/common`), and [`build`](crate::emulator::build) writes the libraries for a
//! whole program (`LD_LIBRARY_PATH=DIR mote train --device cuda`, see
//! `examples/emulated_device.rs`).
//!
//! It checks results, argument lists, the order of work, copies inside allocations, graph
//! capture and replay; it says nothing about speed, and runs a block's threads one after
//! another between barriers (no races are found). Linux only (`ucontext` fibers); needs a C++20
//! compiler (`c++`, or `$CXX`). Not part of the API.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernels::{full_source, SOURCES};

const SHIM: &str = include_str!("../tests/emu/shim.h");
const DEVICE_H: &str = include_str!("../tests/emu/device.h");
const DEVICE_CPP: &str = include_str!("../tests/emu/device.cpp");

/// The libraries [`build`] writes: the driver (with everything in it), then the ones that only
/// depend on it, under the names cudarc opens.
pub const LIBRARIES: [&str; 5] = [
    "libcuda.so",
    "libcublas.so",
    "libcublasLt.so",
    "libnvrtc.so",
    "libnccl.so",
];

/// The C++ compiler: `$CXX`, else `c++`.
fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Flags of the device library's compilation (besides the files and the output). A kernel's
/// `float4` access to an address a GPU would refuse (not 16-byte aligned) traps
/// (`-fsanitize=alignment`, no runtime library needed with trap-on-error).
const FLAGS: [&str; 8] = [
    "-std=c++20",
    "-O2",
    "-shared",
    "-fPIC",
    "-w",
    "-fsanitize=alignment",
    "-fsanitize-undefined-trap-on-error",
    "-include",
];

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what} failed ({s})")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Compiles the emulated device's libraries into `dir` (created if needed).
///
/// # Errors
/// A message when the folder cannot be written or the C++ compiler fails or is missing.
pub fn build(dir: &Path) -> Result<(), String> {
    let cxx = cxx();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let f = src.join(name);
        std::fs::write(&f, text).map_err(|e| format!("{}: {e}", f.display()))?;
        Ok(f)
    };
    write("shim.h", SHIM)?;
    write("device.h", DEVICE_H)?;
    let mut files = vec![write("device.cpp", DEVICE_CPP)?];
    for s in SOURCES {
        // Each kernel registers itself with the device under its name.
        let mut text = full_source(s);
        text.push_str("\n#include \"device.h\"\n");
        for k in s.kernels {
            text.push_str(&format!("EMU_KERNEL({k})\n"));
        }
        files.push(write(&format!("{}.cpp", s.name), &text)?);
    }
    let driver = dir.join(LIBRARIES[0]);
    run(
        Command::new(&cxx)
            .args(FLAGS)
            .arg(src.join("shim.h"))
            .arg("-I")
            .arg(&src)
            .args(&files)
            .args(["-Wl,-Bsymbolic", "-Wl,-soname,libcuda.so", "-o"])
            .arg(&driver),
        &format!("{cxx} (the emulated device)"),
    )?;
    let empty = write("empty.cpp", "")?;
    for lib in &LIBRARIES[1..] {
        run(
            Command::new(&cxx)
                .args(["-shared", "-fPIC"])
                .arg(&empty)
                .arg(format!("-Wl,-soname,{lib}"))
                .arg("-Wl,--no-as-needed")
                .arg(&driver)
                .arg("-o")
                .arg(dir.join(lib)),
            &format!("{cxx} ({lib})"),
        )?;
    }
    Ok(())
}

/// A hash of everything [`build`] compiles (the device, the shim, every kernel source and the
/// kernels it registers), for naming a folder of built libraries that stays valid until a
/// source or a list of kernels changes.
pub fn fingerprint() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kernels = SOURCES
        .iter()
        .map(|s| format!("{}\n{}", full_source(s), s.kernels.join(" ")));
    let compiler = format!("{} {}", cxx(), FLAGS.join(" "));
    for text in [SHIM, DEVICE_H, DEVICE_CPP, &compiler]
        .into_iter()
        .map(String::from)
        .chain(kernels)
    {
        for b in text.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The libraries for the current sources under `parent` (built there once, in a folder named
/// by [`fingerprint`], and reused after that), loaded into this process as [`load`] does.
/// Processes that race to build it each build their own copy and keep whichever lands first.
///
/// # Errors
/// As [`build`] and [`load`].
pub fn build_cached_and_load(parent: &Path) -> Result<PathBuf, String> {
    let dir = parent.join(format!("emulated-device-{:016x}", fingerprint()));
    if !dir.join(LIBRARIES[LIBRARIES.len() - 1]).exists() {
        let tmp = parent.join(format!("emulated-device-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        build(&tmp)?;
        // Another process may have finished first: then its folder stays and this one goes.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    load(&dir)?;
    Ok(dir)
}

/// Loads the libraries [`build`] wrote into this process, for good: cudarc, which opens them
/// by name, then finds them already loaded (the dynamic loader matches their sonames). Call it
/// before anything opens a CUDA library.
///
/// # Errors
/// The loader's message when a library does not load.
pub fn load(dir: &Path) -> Result<(), String> {
    for lib in LIBRARIES {
        let path = dir.join(lib);
        // SAFETY: our own libraries; their initialisers only register the kernels.
        let l = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::mem::forget(l);
    }
    Ok(())
}
