//! The one error type of the crate.

use core::fmt;

use crate::shape::Shape;

/// Everything that can go wrong in `mote`: a small `Copy` value that says what and where.
///
/// No public function of the crate panics on bad input; it returns one of these instead.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The arena has no room for an allocation of `needed` elements; `free` are left.
    ArenaFull {
        /// Elements the allocation asked for.
        needed: usize,
        /// Elements still free in the arena.
        free: usize,
    },
    /// The tape already holds `capacity` nodes.
    TapeFull {
        /// The tape's node capacity.
        capacity: usize,
    },
    /// Two operands of `op` have shapes that do not fit together.
    ShapeMismatch {
        /// The op that checked.
        op: &'static str,
        /// Shape of the left (first) operand.
        lhs: Shape,
        /// Shape of the right (second) operand, or the shape that was expected.
        rhs: Shape,
    },
    /// A shape is not valid for `op` (wrong rank, zero-sized, too large, ...).
    InvalidShape {
        /// The op that checked.
        op: &'static str,
        /// The offending shape.
        shape: Shape,
    },
    /// A shape with more than four dimensions, or a dimension of zero, was asked for.
    BadDims {
        /// The rank that was asked for.
        rank: usize,
    },
    /// An axis argument is outside `0..rank`.
    AxisOutOfRange {
        /// The op that checked.
        op: &'static str,
        /// The axis asked for.
        axis: usize,
        /// The rank of the tensor.
        rank: usize,
    },
    /// A range (slice, label, index) lies outside what it indexes.
    IndexOutOfRange {
        /// The op that checked.
        op: &'static str,
        /// The index asked for.
        index: usize,
        /// The exclusive bound it must stay under.
        bound: usize,
    },
    /// A data slice has `got` elements where the shape needs `expected`.
    LengthMismatch {
        /// The op that checked.
        op: &'static str,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A tensor handle does not belong to this tape (or was dropped by `rewind`).
    StaleHandle,
    /// `backward` was called on a tensor that is not a scalar.
    NotScalar {
        /// The shape of the tensor.
        shape: Shape,
    },
    /// `backward` was called on a tensor that no trainable parameter influences.
    NoGradient,
    /// A parameter created frozen has no gradient storage; it cannot be unfrozen or asked
    /// for its gradient.
    FrozenParameter,
    /// The tensor is not a parameter (an op that needs one got an activation or input).
    NotAParameter,
    /// The optimizer has no state for a parameter (it was unfrozen after the optimizer was made).
    MissingOptimizerState,
    /// A value is NaN or infinite where it must be finite.
    NonFinite {
        /// The op that checked.
        op: &'static str,
    },
    /// An invalid argument that is not a shape: a negative learning rate, a zero batch, ...
    InvalidArgument {
        /// What was wrong.
        what: &'static str,
    },
    /// The backend's device failed (a CUDA launch, copy or library call): `what` says which
    /// call; the backend keeps the details (for example the driver's message) for its own
    /// error reporting.
    Device {
        /// The call that failed.
        what: &'static str,
    },
    /// A weight blob does not start with the `MOTE` magic bytes.
    BadMagic,
    /// A weight blob has a format version this build cannot read.
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// A weight blob names a dtype this build does not know.
    UnknownDtype {
        /// The dtype code found.
        code: u8,
    },
    /// A byte buffer ended early: `needed` bytes were required, `got` were there.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A weight blob's CRC-32 does not match its contents.
    ChecksumMismatch {
        /// The CRC stored in the blob.
        stored: u32,
        /// The CRC computed over the blob.
        computed: u32,
    },
    /// A weight blob holds a different number of tensors than the tape has parameters.
    TensorCountMismatch {
        /// Parameters on the tape.
        expected: usize,
        /// Tensors in the blob.
        found: usize,
    },
    /// A weight blob's tensor `index` has a shape other than the parameter's.
    BlobShapeMismatch {
        /// Position of the tensor in the blob.
        index: usize,
        /// The parameter's shape.
        expected: Shape,
        /// The blob's shape.
        found: Shape,
    },
    /// Internal aliasing of a write with a read: a bug in `mote`, reported rather than risked.
    Aliasing,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ArenaFull { needed, free } => write!(
                f,
                "arena full: needed {needed} elements, {free} free (give the tape more memory; mote::plan computes how much)"
            ),
            Error::TapeFull { capacity } => {
                write!(f, "tape full: all {capacity} nodes are used (raise the NODES capacity)")
            }
            Error::ShapeMismatch { op, lhs, rhs } => {
                write!(f, "{op}: shapes {lhs} and {rhs} do not fit together")
            }
            Error::InvalidShape { op, shape } => write!(f, "{op}: shape {shape} is not valid here"),
            Error::BadDims { rank } => write!(
                f,
                "bad shape: rank {rank} (ranks 0 to 4 are supported, every dimension at least 1)"
            ),
            Error::AxisOutOfRange { op, axis, rank } => {
                write!(f, "{op}: axis {axis} is out of range for rank {rank}")
            }
            Error::IndexOutOfRange { op, index, bound } => {
                write!(f, "{op}: index {index} is out of range (must be below {bound})")
            }
            Error::LengthMismatch { op, expected, got } => {
                write!(f, "{op}: {got} elements given, the shape needs {expected}")
            }
            Error::StaleHandle => write!(
                f,
                "stale tensor handle: it belongs to another tape or was dropped by rewind()"
            ),
            Error::NotScalar { shape } => {
                write!(f, "backward needs a scalar loss, got shape {shape}")
            }
            Error::NoGradient => write!(
                f,
                "backward: no trainable parameter influences this tensor (all frozen, or no_grad mode)"
            ),
            Error::FrozenParameter => write!(
                f,
                "the parameter was created frozen and has no gradient storage"
            ),
            Error::NotAParameter => write!(f, "the tensor is not a parameter"),
            Error::MissingOptimizerState => write!(
                f,
                "the optimizer has no state for a parameter (create the optimizer after unfreezing, and mark the tape after creating it)"
            ),
            Error::NonFinite { op } => write!(f, "{op}: a value is NaN or infinite"),
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::Device { what } => write!(f, "device error in {what}"),
            Error::BadMagic => write!(f, "not a mote weight blob (bad magic bytes)"),
            Error::UnsupportedVersion { found } => {
                write!(f, "weight blob version {found} is not supported by this build")
            }
            Error::UnknownDtype { code } => write!(f, "weight blob has unknown dtype code {code}"),
            Error::Truncated { needed, got } => {
                write!(f, "truncated data: needed {needed} bytes, got {got}")
            }
            Error::ChecksumMismatch { stored, computed } => write!(
                f,
                "weight blob is corrupt: CRC-32 {computed:#010x} does not match stored {stored:#010x}"
            ),
            Error::TensorCountMismatch { expected, found } => write!(
                f,
                "weight blob holds {found} tensors, the model has {expected} parameters"
            ),
            Error::BlobShapeMismatch { index, expected, found } => write!(
                f,
                "weight blob tensor {index} has shape {found}, the model's parameter has {expected}"
            ),
            Error::Aliasing => write!(f, "internal error: a kernel's output overlaps an input"),
        }
    }
}

impl core::error::Error for Error {}

/// `Result` with [`Error`].
pub type Result<T> = core::result::Result<T, Error>;
