//! A weight blob for flash: every parameter of a tape, as f32, f16 or bf16, with a header and
//! a CRC-32, so that firmware can check what it loads.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `MOTE` |
//! | 4..6 | format version, `1` |
//! | 6 | dtype: 0 = f32, 1 = f16, 2 = bf16 |
//! | 7 | reserved, 0 |
//! | 8..12 | tensor count `n` |
//! | 12..12+20n | per tensor: rank (u32), then 4 dimensions (u32, 1 past the rank) |
//! | then | the tensors' elements in order, each 4 or 2 bytes |
//! | last 4 | CRC-32 (IEEE 802.3, as zlib's `crc32`) of every byte before it |
//!
//! Loading checks everything (magic, version, dtype, length, checksum, count, shapes) before it
//! writes a single value, so a bad blob changes nothing.

use half::{bf16, f16};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::Shape;
use crate::tape::{Tape, Var};

/// The magic bytes at the start of a blob.
pub const MAGIC: [u8; 4] = *b"MOTE";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
const HEADER: usize = 12;
const PER_TENSOR: usize = 20;

/// The element type of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE single precision, 4 bytes.
    F32,
    /// IEEE half precision, 2 bytes.
    F16,
    /// bfloat16, 2 bytes.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
        }
    }

    fn from_code(code: u8) -> Result<Dtype> {
        match code {
            0 => Ok(Dtype::F32),
            1 => Ok(Dtype::F16),
            2 => Ok(Dtype::Bf16),
            _ => Err(Error::UnknownDtype { code }),
        }
    }

    fn encode(self, v: f32, out: &mut [u8]) {
        match self {
            Dtype::F32 => out.copy_from_slice(&v.to_le_bytes()),
            Dtype::F16 => out.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            Dtype::Bf16 => out.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match (self, b) {
            (Dtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
            (Dtype::F16, &[a, b]) => f16::from_le_bytes([a, b]).to_f32(),
            (Dtype::Bf16, &[a, b]) => bf16::from_le_bytes([a, b]).to_f32(),
            _ => f32::NAN,
        }
    }
}

// Evaluated at compile time: an out-of-range index would fail the build, not the device.
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3; the same value as zlib's `crc32` and Python's `zlib.crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE
            .get(((c ^ b as u32) & 0xFF) as usize)
            .copied()
            .unwrap_or(0)
            ^ (c >> 8);
    }
    !c
}

/// Bytes of the blob of the given parameter shapes (saturating: a size past `usize::MAX` is
/// `usize::MAX`, which no buffer has).
pub fn size_for(shapes: impl Iterator<Item = Shape>, dtype: Dtype) -> usize {
    let (count, elems) = shapes.fold((0usize, 0usize), |(c, e), s| {
        (c.saturating_add(1), e.saturating_add(s.numel()))
    });
    PER_TENSOR
        .saturating_mul(count)
        .saturating_add(elems.saturating_mul(dtype.size()))
        .saturating_add(HEADER + 4)
}

/// Bytes of the blob of every parameter on `tape`.
pub fn size<B: Backend, const N: usize>(tape: &Tape<B, N>, dtype: Dtype) -> usize {
    size_for(tape.params().map(|p| p.shape()), dtype)
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) -> Result<()> {
    let got = out.len();
    out.get_mut(at..at + bytes.len())
        .ok_or(Error::Truncated {
            needed: at + bytes.len(),
            got,
        })?
        .copy_from_slice(bytes);
    Ok(())
}

/// Writes every parameter of `tape` (in creation order, frozen ones included) into `out`;
/// returns the bytes written.
///
/// # Errors
/// [`Error::Truncated`] when `out` is shorter than [`size`]; a backend read error.
pub fn save<B: Backend, const N: usize>(
    tape: &Tape<B, N>,
    dtype: Dtype,
    out: &mut [u8],
) -> Result<usize> {
    let total = size(tape, dtype);
    if out.len() < total {
        return Err(Error::Truncated {
            needed: total,
            got: out.len(),
        });
    }
    let count = tape.params().count();
    put(out, 0, &MAGIC)?;
    put(out, 4, &VERSION.to_le_bytes())?;
    put(out, 6, &[dtype.code(), 0])?;
    put(out, 8, &(count as u32).to_le_bytes())?;
    let mut at = HEADER;
    for p in tape.params() {
        let s = p.shape();
        put(out, at, &(s.rank() as u32).to_le_bytes())?;
        for i in 0..4 {
            put(out, at + 4 + 4 * i, &(s.dim(i) as u32).to_le_bytes())?;
        }
        at += PER_TENSOR;
    }
    let mut buf = [B::Elem::ZERO; 32];
    for p in tape.params() {
        let (off, n) = (p.view().offset, p.numel());
        let mut done = 0;
        while done < n {
            let k = (n - done).min(32);
            let chunk = buf.get_mut(..k).unwrap_or(&mut []);
            tape.backend().read(off + done, chunk)?;
            for &v in chunk.iter() {
                let slot = out.get_mut(at..at + dtype.size()).ok_or(Error::Truncated {
                    needed: at,
                    got: total,
                })?;
                dtype.encode(v.to_f32(), slot);
                at += dtype.size();
            }
            done += k;
        }
    }
    let crc = crc32(out.get(..at).unwrap_or(&[]));
    put(out, at, &crc.to_le_bytes())?;
    Ok(at + 4)
}

/// A parsed, checked blob borrowed from bytes (for example `include_bytes!` in flash).
#[derive(Clone, Copy, Debug)]
pub struct Blob<'a> {
    bytes: &'a [u8],
    dtype: Dtype,
    count: usize,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(Error::Truncated {
            needed: at + 4,
            got: b.len(),
        }),
    }
}

impl<'a> Blob<'a> {
    /// Checks a blob: magic, version, dtype, shapes, length and CRC-32.
    ///
    /// # Errors
    /// [`Error::BadMagic`], [`Error::UnsupportedVersion`], [`Error::UnknownDtype`],
    /// [`Error::Truncated`], [`Error::ChecksumMismatch`], [`Error::BadDims`].
    pub fn parse(bytes: &'a [u8]) -> Result<Blob<'a>> {
        let got = bytes.len();
        if got < 4 || bytes.get(..4) != Some(&MAGIC[..]) {
            return if got < 4 && MAGIC.starts_with(bytes) {
                Err(Error::Truncated {
                    needed: HEADER + 4,
                    got,
                })
            } else {
                Err(Error::BadMagic)
            };
        }
        if got < HEADER + 4 {
            return Err(Error::Truncated {
                needed: HEADER + 4,
                got,
            });
        }
        let version = match bytes.get(4..6) {
            Some(&[a, b]) => u16::from_le_bytes([a, b]),
            _ => return Err(Error::Truncated { needed: 6, got }),
        };
        if version != VERSION {
            return Err(Error::UnsupportedVersion { found: version });
        }
        let dtype = Dtype::from_code(bytes.get(6).copied().unwrap_or(u8::MAX))?;
        let count = u32_at(bytes, 8)? as usize;
        let table_end = count
            .checked_mul(PER_TENSOR)
            .and_then(|t| t.checked_add(HEADER))
            .unwrap_or(usize::MAX);
        if table_end.saturating_add(4) > got {
            return Err(Error::Truncated {
                needed: table_end.saturating_add(4),
                got,
            });
        }
        let blob = Blob {
            bytes,
            dtype,
            count,
        };
        let mut elems = 0usize;
        for i in 0..count {
            elems = elems.saturating_add(blob.shape(i)?.numel());
        }
        let needed = elems
            .saturating_mul(dtype.size())
            .saturating_add(table_end)
            .saturating_add(4);
        if got < needed {
            return Err(Error::Truncated { needed, got });
        }
        let body = bytes.get(..needed - 4).unwrap_or(&[]);
        let stored = u32_at(bytes, needed - 4)?;
        let computed = crc32(body);
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        Ok(Blob {
            bytes: bytes.get(..needed).unwrap_or(&[]),
            dtype,
            count,
        })
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the blob holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the blob (without anything that followed it).
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The shape of tensor `i`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`]; [`Error::BadDims`] for a corrupt shape.
    pub fn shape(&self, i: usize) -> Result<Shape> {
        if i >= self.count {
            return Err(Error::IndexOutOfRange {
                op: "blob tensor",
                index: i,
                bound: self.count,
            });
        }
        let at = HEADER + PER_TENSOR * i;
        let rank = u32_at(self.bytes, at)? as usize;
        if rank > 4 {
            return Err(Error::BadDims { rank });
        }
        let mut dims = [0usize; 4];
        for (k, d) in dims.iter_mut().enumerate() {
            *d = u32_at(self.bytes, at + 4 + 4 * k)? as usize;
        }
        Shape::new(dims.get(..rank).unwrap_or(&[]))
    }

    fn data_offset(&self, i: usize) -> Result<usize> {
        let mut at = HEADER + PER_TENSOR * self.count;
        for k in 0..i {
            at += self.shape(k)?.numel() * self.dtype.size();
        }
        Ok(at)
    }

    /// Decodes tensor `i`, calling `sink(position, values)` per chunk of up to 32 values (so
    /// nothing of the tensor's size is needed on the stack).
    fn for_chunks<T: Float>(
        &self,
        i: usize,
        mut sink: impl FnMut(usize, &[T]) -> Result<()>,
    ) -> Result<()> {
        let n = self.shape(i)?.numel();
        let start = self.data_offset(i)?;
        let size = self.dtype.size();
        let mut buf = [T::ZERO; 32];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(32);
            let chunk = buf.get_mut(..k).unwrap_or(&mut []);
            for (j, v) in chunk.iter_mut().enumerate() {
                let at = start + (done + j) * size;
                let b = self.bytes.get(at..at + size).ok_or(Error::Truncated {
                    needed: at + size,
                    got: self.bytes.len(),
                })?;
                *v = T::from_f32(self.dtype.decode(b));
            }
            sink(done, chunk)?;
            done += k;
        }
        Ok(())
    }

    /// Decodes tensor `i` into `out` (its element count long).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::LengthMismatch`].
    pub fn read<T: Float>(&self, i: usize, out: &mut [T]) -> Result<()> {
        let n = self.shape(i)?.numel();
        if out.len() != n {
            return Err(Error::LengthMismatch {
                op: "blob read",
                expected: n,
                got: out.len(),
            });
        }
        self.for_chunks(i, |at, chunk: &[T]| {
            out.get_mut(at..at + chunk.len())
                .ok_or(Error::Aliasing)?
                .copy_from_slice(chunk);
            Ok(())
        })
    }

    /// Checks that the blob's tensors match the parameters of `tape`, one to one.
    ///
    /// # Errors
    /// [`Error::TensorCountMismatch`], [`Error::BlobShapeMismatch`].
    pub fn check_against<B: Backend, const N: usize>(&self, tape: &Tape<B, N>) -> Result<()> {
        let expected = tape.params().count();
        if expected != self.count {
            return Err(Error::TensorCountMismatch {
                expected,
                found: self.count,
            });
        }
        for (index, p) in tape.params().enumerate() {
            let found = self.shape(index)?;
            if found != p.shape() {
                return Err(Error::BlobShapeMismatch {
                    index,
                    expected: p.shape(),
                    found,
                });
            }
        }
        Ok(())
    }

    /// Creates one parameter per tensor on `tape` (trainable or frozen), in blob order, into
    /// the first slots of `out`; returns how many (the blob's [`Blob::len`]). Use it when the
    /// model's layers are built from the blob.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `out` has fewer slots than the blob has tensors (nothing
    /// is created); [`Error::ArenaFull`], [`Error::TapeFull`].
    pub fn create_params<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        trainable: bool,
        out: &mut [Var],
    ) -> Result<usize> {
        if out.len() < self.count {
            return Err(Error::LengthMismatch {
                op: "create_params: slots for the blob's tensors",
                expected: self.count,
                got: out.len(),
            });
        }
        // Every parameter or none: where it fails, the tape is as it was (and handles already
        // written to `out` are stale).
        tape.all_or_nothing(|tape| self.create_params_inner(tape, trainable, out))
    }

    fn create_params_inner<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        trainable: bool,
        out: &mut [Var],
    ) -> Result<usize> {
        let mut made = 0;
        for (i, slot) in (0..self.count).zip(out.iter_mut()) {
            let shape = self.shape(i)?;
            let dims: [usize; 4] = core::array::from_fn(|k| shape.dim(k));
            let dims = dims.get(..shape.rank()).unwrap_or(&[]);
            let (start, size) = (self.data_offset(i)?, self.dtype.size());
            let mut k = 0;
            let mut next = || {
                let at = start + k * size;
                k += 1;
                B::Elem::from_f32(
                    self.bytes
                        .get(at..at + size)
                        .map_or(0.0, |b| self.dtype.decode(b)),
                )
            };
            *slot = if trainable {
                tape.param_with(dims, &mut next)?
            } else {
                tape.param_frozen_with(dims, &mut next)?
            };
            made += 1;
        }
        Ok(made)
    }
}

/// Loads a blob into the parameters of `tape` (as made by [`save`] from the same model). The
/// blob is checked whole before anything is written.
///
/// # Errors
/// Everything [`Blob::parse`] and [`Blob::check_against`] return.
pub fn load<B: Backend, const N: usize>(tape: &mut Tape<B, N>, bytes: &[u8]) -> Result<()> {
    let blob = Blob::parse(bytes)?;
    blob.check_against(tape)?;
    for i in 0..blob.len() {
        let off = tape
            .params()
            .nth(i)
            .map(|p| p.view().offset)
            .ok_or(Error::StaleHandle)?;
        blob.for_chunks(i, |at, chunk: &[B::Elem]| {
            tape.backend_mut().write(off + at, chunk)
        })?;
    }
    Ok(())
}
