//! The CUDA C kernel sources, their NVRTC compilation (once per process, cached on disk) and
//! the names of the kernels each module holds.

use std::path::PathBuf;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::error::CudaError;

const COMMON: &str = include_str!("../kernels/common.cuh");

/// One kernel source file: its name, CUDA C text and the kernels it defines.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// File name without extension (`unary` for `kernels/unary.cu`).
    pub name: &'static str,
    /// The CUDA C text (without the shared header).
    pub text: &'static str,
    /// The `extern "C"` kernels it defines.
    pub kernels: &'static [&'static str],
}

/// Every kernel source of the crate.
pub const SOURCES: &[Source] = &[
    Source {
        name: "unary",
        text: include_str!("../kernels/unary.cu"),
        kernels: &[
            "unary_fwd",
            "unary_bwd",
            "unary_bwd_colsum",
            "bias_act",
            "fill",
            "scale",
        ],
    },
    Source {
        name: "binary",
        text: include_str!("../kernels/binary.cu"),
        kernels: &[
            "binary_same",
            "binary_walk",
            "binary_bwd_same",
            "binary_bwd_walk",
            "binary_bwd_walk_split",
        ],
    },
    Source {
        name: "movement",
        text: include_str!("../kernels/movement.cu"),
        kernels: &["copy_walk", "copy_walk_split", "transpose"],
    },
    Source {
        name: "reduce",
        text: include_str!("../kernels/reduce.cu"),
        kernels: &[
            "reduce_rows",
            "reduce_rows_block",
            "reduce_all",
            "reduce_strided",
            "reduce_bwd_sum",
            "reduce_bwd_max",
            "sum_squares",
        ],
    },
    Source {
        name: "softmax",
        text: include_str!("../kernels/softmax.cu"),
        kernels: &[
            "softmax_rows",
            "softmax_strided",
            "softmax_bwd_rows",
            "softmax_bwd_strided",
        ],
    },
    Source {
        name: "loss",
        text: include_str!("../kernels/loss.cu"),
        kernels: &["loss_fwd", "loss_bwd", "loss_bwd_colsum"],
    },
    Source {
        name: "conv",
        text: include_str!("../kernels/conv.cu"),
        kernels: &["im2col", "col2im", "conv_dy_perm", "pool_fwd", "pool_bwd"],
    },
    Source {
        name: "optim",
        text: include_str!("../kernels/optim.cu"),
        kernels: &[
            "sgd",
            "adam",
            "rms",
            "adam_multi",
            "rms_multi",
            "sgd_multi",
            "zero_ranges",
            "graph_tick",
        ],
    },
];

/// The full text NVRTC compiles for `src`: the shared header, then the file.
pub fn full_source(src: &Source) -> String {
    format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", src.name, src.text)
}

/// NVRTC options (besides the architecture). Precise division and square root, no fast math:
/// results stay within a few ulp of the reference CPU backend.
fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture=compute_{arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
    ]
}

/// FNV-1a, for cache file names (stable across Rust versions, unlike `DefaultHasher`).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The on-disk PTX cache folder: `$MOTE_CUDA_CACHE`, else `$XDG_CACHE_HOME/mote`, else
/// `$HOME/.cache/mote`; `None` when none is set.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MOTE_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("mote"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("mote"))
}

/// Compiles `src` to PTX for `arch` (`"80"`, `"90"`) with NVRTC, without the cache.
///
/// # Errors
/// [`CudaError::Compile`] with NVRTC's log. The caller must have checked that libnvrtc loads
/// ([`crate::probe::nvrtc`]).
pub fn compile(src: &Source, arch: &str) -> Result<String, CudaError> {
    let opts = CompileOptions {
        options: options(arch),
        name: Some(format!("{}.cu", src.name)),
        ..Default::default()
    };
    match compile_ptx_with_opts(full_source(src), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(e) => Err(CudaError::Compile {
            source: src.name,
            log: format!("{e:?}"),
        }),
    }
}

/// NVRTC's version (`"13.0"`): PTX from a newer NVRTC may use a PTX ISA an older driver
/// cannot load, so the cache keeps each version's PTX apart.
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters; libnvrtc loads (the callers checked).
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{major}.{minor}")
    } else {
        String::new()
    }
}

/// PTX for `src` on `arch`, from the disk cache when present (keyed by source text, options,
/// NVRTC's version and the crate's), else compiled and stored.
///
/// # Errors
/// As [`compile`]. Cache failures are ignored (the PTX is then simply compiled).
pub fn ptx(src: &Source, arch: &str) -> Result<String, CudaError> {
    let file = cache_file(src, arch);
    if let Some(f) = &file {
        if let Ok(s) = std::fs::read_to_string(f) {
            if s.contains(".entry") {
                return Ok(s);
            }
        }
    }
    fresh_ptx(src, arch)
}

/// Where [`ptx`] caches `src`'s PTX for `arch` (`None` without a cache folder): named by the
/// kernel file, the architecture and a hash of source, options, NVRTC's version and the
/// crate's.
pub fn cache_file(src: &Source, arch: &str) -> Option<PathBuf> {
    let key = fnv(&[
        &full_source(src),
        &options(arch).join(" "),
        &nvrtc_version(),
        env!("CARGO_PKG_VERSION"),
    ]);
    cache_dir().map(|d| d.join(format!("{}-sm{arch}-{key:016x}.ptx", src.name)))
}

/// PTX for `src` on `arch` compiled now, replacing what the cache held: for a cached file the
/// driver refused (truncated, or written by something else).
///
/// # Errors
/// As [`compile`].
pub fn fresh_ptx(src: &Source, arch: &str) -> Result<String, CudaError> {
    let file = cache_file(src, arch);
    let ptx = compile(src, arch)?;
    // Only PTX with kernels in it is kept (not, say, the emulated device's stand-in).
    if let (Some(f), true) = (&file, ptx.contains(".entry")) {
        if let Some(dir) = f.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Write then rename, so that a concurrent reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(ptx)
}

/// Compiles `src` all the way to a CUBIN for `sm_{arch}` (NVRTC runs ptxas), with ptxas's
/// verbose report: what a GPU would JIT from the PTX, checked without one. Returns the CUBIN's
/// size and ptxas's log (registers, shared memory and spills per kernel).
///
/// # Errors
/// [`CudaError::Compile`] with the log when compilation or assembly fails.
pub fn assemble(src: &Source, arch: &str) -> Result<(usize, String), CudaError> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::CString;
    let fail = |log: String| CudaError::Compile {
        source: src.name,
        log,
    };
    let text = CString::new(full_source(src)).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(format!("{}.cu", src.name)).map_err(|e| fail(e.to_string()))?;
    let prog = result::create_program(&text, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let mut opts = options(arch);
    opts[0] = format!("--gpu-architecture=sm_{arch}");
    opts.push("--ptxas-options=-v".to_string());
    // SAFETY: `prog` was just created and is destroyed once below.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|v| {
            let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let mut size = 0usize;
    let sized = compiled.is_ok()
        // SAFETY: as above; only the size is queried.
        && unsafe { sys::nvrtcGetCUBINSize(prog, &mut size as *mut usize) }
            == sys::nvrtcResult::NVRTC_SUCCESS;
    // SAFETY: as above.
    let _ = unsafe { result::destroy_program(prog) };
    if !sized || size == 0 {
        return Err(fail(log));
    }
    Ok((size, log))
}

/// The C type class of a kernel parameter, as a launch must pass it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `int`
    Int,
    /// `unsigned int`
    Uint,
    /// `float`
    Float,
    /// `u64` or any pointer (a device address)
    U64,
    /// `Walk` (by value)
    Walk,
}

/// The parameter classes of every `extern "C"` kernel in `text`, parsed from its signature.
pub fn signatures(text: &str) -> Vec<(String, Vec<Param>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("extern \"C\" __global__ void") {
        rest = &rest[at..];
        let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
            break;
        };
        // The name is the last word before '(' (after an optional __launch_bounds__(..)).
        let head = &rest[..open];
        if head.trim_end().ends_with("__launch_bounds__") {
            let after = &rest[close + 1..];
            let (Some(o2), Some(c2)) = (after.find('('), after.find(')')) else {
                break;
            };
            let params = &after[o2 + 1..c2];
            out.push((word(&after[..o2]), classify(params)));
            rest = &rest[close + 1 + c2..];
            continue;
        }
        let params = &rest[open + 1..close];
        out.push((word(head), classify(params)));
        rest = &rest[close..];
    }
    out
}

fn word(head: &str) -> String {
    head.split_whitespace().last().unwrap_or("").to_string()
}

fn classify(params: &str) -> Vec<Param> {
    params
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('*') || p.starts_with("u64") {
                Param::U64
            } else if p.starts_with("Walk") {
                Param::Walk
            } else if p.starts_with("float") {
                Param::Float
            } else if p.starts_with("unsigned") {
                Param::Uint
            } else {
                Param::Int
            }
        })
        .collect()
}
