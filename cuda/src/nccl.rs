//! Gradient all-reduce across GPUs with NCCL, the engine every multi-GPU framework uses.
//!
//! [`Nccl`] holds this process's communicators: one per local [`Cuda`] backend. Two ways to
//! make them:
//!
//! - [`Nccl::local`]: one process drives several GPUs (`ncclCommInitAll`): `mote train
//!   --device cuda --gpus N` on one host.
//! - [`Nccl::rank`]: one process per GPU, on one host or several (`ncclCommInitRank`): rank 0
//!   makes a [`Nccl::unique_id`] and the others receive it through a rendezvous (the runtime's
//!   `MOTE_RENDEZVOUS`: a shared file or rank 0's TCP address), as `torchrun` does.
//!
//! [`Nccl::all_reduce_sum`] then sums arena regions (the parameters' gradients: the same
//! offsets on every replica, since every replica builds the same model) across all ranks, in
//! place, on each backend's stream: one `ncclAllReduce` per region inside one NCCL group, so
//! NCCL fuses them into as few launches as it can. One thread drives every local GPU there.
//!
//! [`Nccl::into_ranks`] instead splits the communicators into one [`NcclRank`] per GPU, for one
//! host thread per GPU (NCCL's "one thread per device" mode: each thread issues its own
//! collectives, every rank the same ones in the same order). [`NcclRank::all_reduce_sum_async`]
//! sums a bucket of regions on the rank's own stream, once the work queued so far on the
//! backend's stream is done, so that the backward goes on meanwhile (as PyTorch's
//! `DistributedDataParallel` overlaps them); [`NcclRank::wait`] makes the backend's stream wait
//! for the sums before the optimizer reads them.
//!
//! NCCL is opened on first use, and checked with `libloading` first (cudarc panics on a missing
//! library): without it, [`CudaError::MissingLibrary`] (`nccl`).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtrMut};
use cudarc::nccl::{result, sys};

use crate::error::probe;
use crate::{Cuda, CudaError};

/// The bytes of an NCCL unique id: what rank 0 hands to the other ranks.
pub const ID_BYTES: usize = 128;

fn nccl_err(what: &'static str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver {
        what,
        message: format!("{e:?}"),
    }
}

fn check_library() -> Result<(), CudaError> {
    if probe::can_load("nccl") {
        Ok(())
    } else {
        Err(CudaError::MissingLibrary { name: "nccl" })
    }
}

/// This process's NCCL communicators, one per local backend (see the [module docs](self)).
pub struct Nccl {
    comms: Vec<sys::ncclComm_t>,
    /// The group's size (ranks in every process).
    world: usize,
    /// The global rank of each local communicator.
    ranks: Vec<usize>,
    /// The stream of each local communicator's overlapped all-reduces.
    streams: Vec<Arc<CudaStream>>,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("world", &self.world)
            .field("ranks", &self.ranks)
            .finish()
    }
}

impl Nccl {
    /// A new unique id (rank 0 makes it; every rank of the group must use the same one).
    ///
    /// # Errors
    /// [`CudaError::MissingLibrary`] without NCCL; [`CudaError::Driver`] when NCCL fails.
    pub fn unique_id() -> Result<[u8; ID_BYTES], CudaError> {
        check_library()?;
        let id = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        // `c_char` is `i8` here: a byte-for-byte copy.
        Ok(id.internal.map(|c| c as u8))
    }

    /// One communicator per backend, all in this process (ranks `0..backends.len()`, in
    /// order): each backend's device must differ.
    ///
    /// # Errors
    /// [`CudaError::MissingLibrary`] without NCCL; [`CudaError::Driver`] when NCCL fails (two
    /// backends on one device included).
    pub fn local(backends: &[&Cuda]) -> Result<Nccl, CudaError> {
        check_library()?;
        if backends.is_empty() {
            return Err(CudaError::Mote(mote::Error::InvalidArgument {
                what: "NCCL needs at least one backend",
            }));
        }
        let devices: Vec<i32> = backends.iter().map(|b| b.ctx.ordinal() as i32).collect();
        let mut comms = vec![std::ptr::null_mut(); backends.len()];
        // SAFETY: `comms` has one slot per device, as ncclCommInitAll writes.
        unsafe {
            result::comm_init_all(comms.as_mut_ptr(), devices.len() as i32, devices.as_ptr())
        }
        .map_err(|e| nccl_err("ncclCommInitAll", e))?;
        let mut nccl = Nccl {
            world: comms.len(),
            ranks: (0..comms.len()).collect(),
            comms,
            streams: Vec::new(),
        };
        // Dropped (communicators destroyed) if a stream cannot be made.
        for b in backends {
            let s = b.stream.fork().map_err(|e| nccl_err("cuStreamCreate", e))?;
            nccl.streams.push(s);
        }
        Ok(nccl)
    }

    /// This process's communicator as `rank` of `world` ranks, on `backend`'s device, with the
    /// group's unique id (from rank 0's [`Nccl::unique_id`]). Blocks until every rank joined.
    ///
    /// # Errors
    /// [`CudaError::MissingLibrary`] without NCCL; [`mote::Error::InvalidArgument`] for a rank
    /// outside the world; [`CudaError::Driver`] when NCCL fails.
    pub fn rank(
        backend: &Cuda,
        rank: usize,
        world: usize,
        id: &[u8; ID_BYTES],
    ) -> Result<Nccl, CudaError> {
        check_library()?;
        if rank >= world || i32::try_from(world).is_err() {
            return Err(CudaError::Mote(mote::Error::InvalidArgument {
                what: "NCCL rank must be below the world size",
            }));
        }
        backend
            .ctx
            .bind_to_thread()
            .map_err(|e| nccl_err("cuCtxSetCurrent", e))?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let stream = backend
            .stream
            .fork()
            .map_err(|e| nccl_err("cuStreamCreate", e))?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is written by ncclCommInitRank.
        unsafe { result::comm_init_rank(&mut comm, world as i32, id, rank as i32) }
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Nccl {
            comms: vec![comm],
            world,
            ranks: vec![rank],
            streams: vec![stream],
        })
    }

    /// Ranks in the whole group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The global ranks of this process's communicators.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Sums each region (arena offset, length in floats) across every rank, in place: after
    /// it, every rank's region holds the sum. `backends` are this process's backends, in the
    /// order the communicators were made; the regions are the same on each. Queued work is
    /// flushed first; the reduction is queued on each backend's stream (no host wait).
    ///
    /// # Errors
    /// [`mote::Error::InvalidArgument`] for a backend count that does not match, a region
    /// outside an arena, or a backend capturing a graph; [`CudaError::Driver`] when NCCL fails.
    pub fn all_reduce_sum(
        &self,
        backends: &mut [&mut Cuda],
        regions: &[(usize, usize)],
    ) -> Result<(), CudaError> {
        let bad = |what| CudaError::Mote(mote::Error::InvalidArgument { what });
        if backends.len() != self.comms.len() {
            return Err(bad("NCCL all-reduce: one backend per communicator"));
        }
        for b in backends.iter() {
            Nccl::check(b, regions)?;
        }
        let streams: Vec<sys::cudaStream_t> = backends
            .iter()
            .map(|b| b.cu() as sys::cudaStream_t)
            .collect();
        let jobs = backends
            .iter()
            .zip(&self.comms)
            .zip(streams)
            .map(|((b, &comm), stream)| (&**b, comm, stream));
        grouped_sums(jobs, regions)
    }
}

/// Queues in one NCCL group, for each (backend, communicator, stream), an in-place sum of each
/// region of the backend's arena on that stream. The regions must have been checked
/// ([`Nccl::check`]) and the stream must be on the communicator's device, after the work that
/// wrote the regions.
fn grouped_sums<'b>(
    jobs: impl Iterator<Item = (&'b Cuda, sys::ncclComm_t, sys::cudaStream_t)>,
    regions: &[(usize, usize)],
) -> Result<(), CudaError> {
    result::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
    let mut status = Ok(());
    'outer: for (b, comm, stream) in jobs {
        for &(offset, len) in regions {
            if len == 0 {
                continue;
            }
            let at = b.at(offset) as *mut c_void;
            // SAFETY: the region lies inside the backend's device arena (checked by the
            // caller); send and receive buffers are the same (in place); the stream is on the
            // communicator's device, ordered after the work that wrote the region.
            let r = unsafe {
                result::all_reduce(
                    at as *const c_void,
                    at,
                    len,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            };
            if let Err(e) = r {
                status = Err(nccl_err("ncclAllReduce", e));
                break 'outer;
            }
        }
    }
    let end = result::group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
    status.and(end.map(|_| ()))
}

impl Nccl {
    /// Checks a backend and its regions before an all-reduce, and flushes its queued work.
    fn check(b: &Cuda, regions: &[(usize, usize)]) -> Result<(), CudaError> {
        let bad = |what| CudaError::Mote(mote::Error::InvalidArgument { what });
        if b.capturing() {
            return Err(bad("NCCL all-reduce cannot run inside a graph capture"));
        }
        let fits = regions.iter().all(|&(o, n)| {
            o.checked_add(n)
                .is_some_and(|e| e <= mote::Backend::capacity(b))
        });
        if !fits {
            return Err(bad("NCCL all-reduce: a region lies outside the arena"));
        }
        b.flush()?;
        Ok(())
    }

    /// One [`NcclRank`] per local communicator, in order, for one thread per GPU.
    pub fn into_ranks(mut self) -> Vec<NcclRank> {
        let comms = std::mem::take(&mut self.comms);
        let streams = std::mem::take(&mut self.streams);
        comms
            .into_iter()
            .zip(streams)
            .zip(self.ranks.iter())
            .map(|((comm, stream), &rank)| NcclRank {
                comm,
                stream,
                rank,
                world: self.world,
                host: None,
            })
            .collect()
    }
}

/// The least number of f64 [`NcclRank`]'s host-value buffer holds.
const HOST_VALUES: usize = 64;

/// One communicator of a group, with its own stream, used from one host thread at a time
/// (see the [module docs](self)).
pub struct NcclRank {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    /// The device buffer of [`NcclRank::broadcast_from_first`] and
    /// [`NcclRank::max_over_ranks`], made on first use and kept (a run calls them every step
    /// when it clips gradients or checks its ranks' steps).
    host: Option<cudarc::driver::CudaSlice<f64>>,
}

// SAFETY: an NCCL communicator may be used from any host thread, one call at a time (NCCL's
// "one thread per GPU" mode); `NcclRank` is not `Sync` and its collectives take `&mut self`.
unsafe impl Send for NcclRank {}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclRank")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl NcclRank {
    /// This communicator's global rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the whole group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Sums `regions` of `backend` (on this communicator's device) across every rank, in
    /// place, on this communicator's own stream, once the work queued so far on the backend's
    /// stream is done; returns without waiting. The backend's stream goes on with later work
    /// meanwhile (the rest of a backward), which must leave these regions alone until
    /// [`NcclRank::wait`]. Every rank must issue the same sums in the same order.
    ///
    /// # Errors
    /// [`mote::Error::InvalidArgument`] for a region outside the arena, or a backend capturing
    /// a graph; [`CudaError::Driver`] when CUDA or NCCL fails.
    pub fn all_reduce_sum_async(
        &mut self,
        backend: &mut Cuda,
        regions: &[(usize, usize)],
    ) -> Result<(), CudaError> {
        Nccl::check(backend, regions)?;
        self.stream
            .join(&backend.stream)
            .map_err(|e| nccl_err("cuStreamWaitEvent", e))?;
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        grouped_sums(std::iter::once((&*backend, self.comm, stream)), regions)
    }

    /// Copies `values` from global rank 0 to every rank (an NCCL broadcast of f64 through a
    /// small device buffer on this communicator's stream; waits for it). A multi-process run
    /// uses it so that every rank decides with rank 0's numbers (early stopping after each
    /// epoch, the gradient norm that clipping scales by at each step). Every rank must call
    /// it, with as many values.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when CUDA or NCCL fails.
    pub fn broadcast_from_first(&mut self, values: &mut [f64]) -> Result<(), CudaError> {
        self.host_collective(values, false)
    }

    /// Replaces `values` by their element-wise maximum over every rank (an NCCL all-reduce of
    /// f64 through a small device buffer; waits for it). A multi-process run uses it so that
    /// every rank learns whether any rank failed a check (and all stop together). Every rank
    /// must call it, with as many values.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when CUDA or NCCL fails.
    pub fn max_over_ranks(&mut self, values: &mut [f64]) -> Result<(), CudaError> {
        self.host_collective(values, true)
    }

    /// A broadcast from rank 0 (`max`: false) or an all-reduce of the maximum of host `values`.
    fn host_collective(&mut self, values: &mut [f64], max: bool) -> Result<(), CudaError> {
        if values.is_empty() {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| nccl_err("cuCtxSetCurrent", e))?;
        let n = values.len();
        if self.host.as_ref().is_none_or(|b| b.len() < n) {
            let fresh = self
                .stream
                .alloc_zeros::<f64>(n.max(HOST_VALUES))
                .map_err(|e| nccl_err("cuMemAlloc", e))?;
            self.host = Some(fresh);
        }
        let Some(whole) = self.host.as_mut() else {
            return Ok(());
        };
        let mut buf = whole.slice_mut(0..n);
        self.stream
            .memcpy_htod(&*values, &mut buf)
            .map_err(|e| nccl_err("cuMemcpyHtoD", e))?;
        {
            let (ptr, _sync) = buf.device_ptr_mut(&self.stream);
            let at = ptr as *mut c_void;
            let stream = self.stream.cu_stream() as sys::cudaStream_t;
            let f64s = sys::ncclDataType_t::ncclFloat64;
            if max {
                // SAFETY: `buf` holds `values.len()` f64 on this communicator's device; send
                // and receive buffers are the same (in place); the stream is the
                // communicator's, after the copy that filled the buffer.
                unsafe {
                    result::all_reduce(
                        at as *const c_void,
                        at,
                        values.len(),
                        f64s,
                        sys::ncclRedOp_t::ncclMax,
                        self.comm,
                        stream,
                    )
                }
                .map_err(|e| nccl_err("ncclAllReduce", e))?;
            } else {
                // SAFETY: as for the all-reduce above.
                unsafe {
                    result::broadcast(
                        at as *const c_void,
                        at,
                        values.len(),
                        f64s,
                        0,
                        self.comm,
                        stream,
                    )
                }
                .map_err(|e| nccl_err("ncclBroadcast", e))?;
            }
        }
        self.stream
            .memcpy_dtoh(&buf, values)
            .map_err(|e| nccl_err("cuMemcpyDtoH", e))?;
        self.stream
            .synchronize()
            .map_err(|e| nccl_err("cuStreamSynchronize", e))?;
        Ok(())
    }

    /// Makes `backend`'s stream wait for the sums queued by
    /// [`NcclRank::all_reduce_sum_async`] (no host wait): work queued after it sees them.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when CUDA fails; [`CudaError::Mote`] inside a graph capture.
    pub fn wait(&self, backend: &Cuda) -> Result<(), CudaError> {
        if backend.capturing() {
            // The event it waits on was recorded outside the capture.
            return Err(CudaError::Mote(mote::Error::InvalidArgument {
                what: "NCCL: waiting for sums cannot be captured in a graph",
            }));
        }
        backend
            .stream
            .join(&self.stream)
            .map_err(|e| nccl_err("cuStreamWaitEvent", e))
    }
}

impl Drop for NcclRank {
    fn drop(&mut self) {
        // The sums queued on the rank's stream finish first: they write the backend's arena,
        // which may be freed right after (a step that failed mid-backward never waited for
        // them). A peer that never joins makes this wait forever, as any collective would;
        // the runtime's watchdog ends such a process.
        let _ = self.stream.synchronize();
        // SAFETY: the communicator was made by NCCL and is destroyed once (its `Nccl` gave it
        // up in `into_ranks`).
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        for &c in &self.comms {
            // SAFETY: each communicator was made by NCCL and is destroyed once.
            let _ = unsafe { result::comm_destroy(c) };
        }
    }
}
