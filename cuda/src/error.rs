//! The crate's error type and the checks that keep cudarc from panicking when a CUDA library is
//! missing.

use std::fmt;

/// What can go wrong in `mote-cuda`.
#[derive(Clone, Debug, PartialEq)]
pub enum CudaError {
    /// The CUDA driver library (`libcuda.so`) cannot be loaded: no NVIDIA driver here.
    NoDriver,
    /// The driver loaded but reports no CUDA device (or the requested ordinal is missing).
    NoDevice,
    /// Another CUDA library (cuBLAS, NVRTC) cannot be loaded.
    MissingLibrary {
        /// The library's name (`cublas`, `nvrtc`).
        name: &'static str,
    },
    /// A driver, cuBLAS or NVRTC call failed.
    Driver {
        /// The call.
        what: &'static str,
        /// The library's message.
        message: String,
    },
    /// A kernel failed to compile (a bug in this crate): NVRTC's log.
    Compile {
        /// The kernel file.
        source: &'static str,
        /// NVRTC's log.
        log: String,
    },
    /// An error of the core (a shape, a full arena, ...), or a device failure reported through
    /// the core's [`mote::Error::Device`] (the backend's [`crate::Cuda::last_error`] has the
    /// driver's message).
    Mote(mote::Error),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoDriver => write!(
                f,
                "no CUDA driver found (libcuda.so could not be loaded; is an NVIDIA driver installed and on the loader path?)"
            ),
            CudaError::NoDevice => write!(f, "no CUDA device"),
            CudaError::MissingLibrary { name } => write!(
                f,
                "CUDA library lib{name}.so could not be loaded (put its folder on LD_LIBRARY_PATH)"
            ),
            CudaError::Driver { what, message } => write!(f, "CUDA error in {what}: {message}"),
            CudaError::Compile { source, log } => {
                write!(f, "NVRTC failed to compile kernels/{source}.cu:\n{log}")
            }
            CudaError::Mote(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<mote::Error> for CudaError {
    fn from(e: mote::Error) -> Self {
        CudaError::Mote(e)
    }
}

/// Library probes: whether cudarc can open a library, checked with `libloading` under the same
/// names cudarc tries, so that cudarc never reaches its panic on a missing library.
pub mod probe {
    /// Whether a library cudarc names `lib` (`"cuda"`, `"cublas"`, `"nvrtc"`) can be opened.
    pub fn can_load(lib: &str) -> bool {
        cudarc::get_lib_name_candidates(lib).iter().any(|name| {
            // SAFETY: loading a CUDA library runs its initialisers, which is what cudarc does
            // next anyway; the handle is dropped (closed) at once.
            unsafe { libloading::Library::new(name) }.is_ok()
        })
    }

    /// Whether the CUDA driver library loads.
    pub fn driver() -> bool {
        can_load("cuda")
    }

    /// Whether NVRTC loads (enough to compile kernels, no GPU needed).
    pub fn nvrtc() -> bool {
        can_load("nvrtc")
    }

    /// Whether cuBLAS loads.
    pub fn cublas() -> bool {
        can_load("cublas")
    }
}
