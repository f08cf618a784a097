//! Without a CUDA driver, creating the backend is an error with a clear message, never a panic
//! from inside cudarc. A test binary of its own: it never loads the emulated device that the
//! other GPU tests use where no driver is found.

use mote_cuda::{probe, Cuda, CudaError};

#[test]
fn without_a_gpu_creating_the_backend_is_an_error() {
    match Cuda::new(1024) {
        Ok(c) => eprintln!(
            "a CUDA device is present (sm_{}): nothing to check",
            c.arch()
        ),
        Err(e) => {
            if !probe::driver() {
                assert_eq!(e, CudaError::NoDriver);
                assert!(e.to_string().starts_with("no CUDA driver found"), "{e}");
            } else {
                assert!(
                    matches!(e, CudaError::NoDevice | CudaError::MissingLibrary { .. }),
                    "{e}"
                );
            }
        }
    }
}
