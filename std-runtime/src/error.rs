//! The runtime's error: what went wrong, and (for the command line) what to do about it.

use std::fmt;
use std::path::Path;

/// What kind of thing failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file could not be read or written.
    Io,
    /// Input data is malformed (a CSV cell, an IDX header, ...).
    Data,
    /// A checkpoint is truncated, corrupt, or does not match what it is used with.
    Checkpoint,
    /// An argument or setting is out of range.
    Invalid,
    /// The core returned an error.
    Core,
}

/// A runtime error: a kind, a one-line message, and optionally a hint that says what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    /// What kind of thing failed.
    pub kind: ErrorKind,
    /// What happened, in one line.
    pub message: String,
    /// What to do about it, in one line.
    pub hint: Option<String>,
}

/// `Result` with the runtime's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Malformed input data.
    pub fn data(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Data, message)
    }

    /// A bad checkpoint.
    pub fn checkpoint(path: &Path, message: impl fmt::Display) -> Error {
        Error::new(
            ErrorKind::Checkpoint,
            format!("{}: {message}", path.display()),
        )
    }

    /// An invalid argument or setting.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, message)
    }

    /// A failed read or write of `path`.
    pub fn io(path: &Path, err: &std::io::Error) -> Error {
        let hint = match err.kind() {
            std::io::ErrorKind::NotFound => Some("check the path".to_string()),
            std::io::ErrorKind::PermissionDenied => {
                Some("check the file's permissions".to_string())
            }
            _ => None,
        };
        Error {
            kind: ErrorKind::Io,
            message: format!("{}: {err}", path.display()),
            hint,
        }
    }

    /// The same error with a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<mote::Error> for Error {
    fn from(e: mote::Error) -> Error {
        let hint = match e {
            mote::Error::NonFinite { .. } => {
                Some("training diverged: try a smaller --lr".to_string())
            }
            _ => None,
        };
        // A device error names only the call; the CUDA backend kept the driver's message.
        #[cfg(feature = "cuda")]
        let message = match (e, mote_cuda::take_last_error()) {
            (mote::Error::Device { .. }, Some(detail)) => format!("{e} ({detail})"),
            _ => e.to_string(),
        };
        #[cfg(not(feature = "cuda"))]
        let message = e.to_string();
        Error {
            kind: ErrorKind::Core,
            message,
            hint,
        }
    }
}
