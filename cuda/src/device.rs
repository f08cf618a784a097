//! The backend: one device allocation (the arena, then a small side area), the kernels, the
//! cuBLAS handle, and the launch helpers the op families use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys as blas;
use cudarc::driver::{result as drv, sys, CudaContext, CudaEvent, CudaFunction, CudaStream};
use mote::{Error, Result};

use crate::error::{probe, CudaError};
use crate::kernels::{self, Param, SOURCES};
use crate::ops::optim::UpdateQueue;
use crate::pending::{Bias, ColSum, Fill, Grad, GradKind, Pending, Settled, Stage, Write};

/// How matrix products run on the tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Plain f32 (SGEMM): matches the reference to f32 rounding.
    #[default]
    F32,
    /// TF32 tensor cores with f32 accumulation (10-bit mantissa inputs): ~8x the f32 rate on
    /// Hopper; products differ from f32 by ~1e-3 relative.
    Tf32,
    /// bf16 inputs (converted inside cuBLAS) with f32 accumulation: 8-bit mantissa, ~1e-2
    /// relative.
    Bf16,
}

/// Settings of a [`Cuda`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Device ordinal.
    pub device: usize,
    /// Matrix-product precision.
    pub precision: Precision,
    /// cuBLAS workspace in bytes (carved from the one allocation; 32 MiB is what NVIDIA
    /// recommends on Hopper).
    pub workspace_bytes: usize,
    /// Scratch for convolutions (carved from the one allocation): the im2col columns of a
    /// chunk of images and the output gradient with images side by side. A pass takes as many
    /// images per chunk as fit; where not even one does, it runs as the core's strided copies
    /// and products. 128 MiB by default (a 3x3 convolution of 32 channels over 64 images of
    /// 32x32 in one chunk).
    pub conv_workspace_bytes: usize,
    /// Hold back gradient zero fills, bias broadcasts and gradient kernels to merge them into
    /// the launch after them (`src/pending.rs`): a product or kernel that accumulates into a
    /// freshly zeroed gradient overwrites it instead, a linear layer's bias is added by the
    /// activation (or the loss) that follows it, and its bias gradient is summed by the kernel
    /// that wrote the gradient it sums. The same gradients (a bias added after the product
    /// instead of before it may round differently in the last bit), the loss summed in another
    /// order where its forward shares its gradient's launch; fewer launches per step. On by
    /// default.
    pub fuse: bool,
    /// [`Precision::Tf32`] products of at least this many multiply-adds (`m n k`) whose
    /// operands are not both K-major (the backward's `dy W` and `dy^T x`) first copy them
    /// K-major into the convolution scratch, where it has the room: Hopper's TF32 tensor-core
    /// kernels read both operands K-major only (CUTLASS's SM90 TF32 GEMMs are `T x N` only),
    /// and a transpose costs a pass over the operand. 2^28 by default (W-large's products,
    /// not W-mnist's); `u64::MAX` never.
    pub k_major_from: u64,
    /// Elements at which the tape starts each allocation ([`mote::Backend::align`]; a power of
    /// two, at most [`MAX_ALIGN`]): 64 (256 bytes) by default, so that every tensor and
    /// gradient starts where cuBLAS's fastest kernels and the kernels' `float4` loads need it
    /// (16 bytes at least). With 1, a step's tensors start wherever the last one ended: after
    /// the loss's scalar, every activation gradient of W-large's backward was 8-byte aligned.
    /// The arena gets room for the padding on top of the capacity asked for
    /// ([`Cuda::with_options`]).
    pub align: usize,
}

/// The most blocks a launch's grid may have along x on every current GPU (2^31 - 1; y and z
/// take at most 65,535).
pub(crate) const MAX_GRID_X: u32 = i32::MAX as u32;

/// The largest [`Options::align`].
pub const MAX_ALIGN: usize = 1024;

/// Allocations whose alignment padding the arena has room for, beyond the capacity asked for
/// ([`Cuda::with_options`]): far more than a tape of the runtime's 512 nodes makes (a value and
/// a gradient per node, a parameter's optimizer state).
pub const PADDED_ALLOCATIONS: usize = 16 << 10;

impl Default for Options {
    fn default() -> Self {
        Options {
            device: 0,
            precision: Precision::F32,
            workspace_bytes: 32 << 20,
            conv_workspace_bytes: 128 << 20,
            fuse: true,
            k_major_from: 1 << 28,
            align: 64,
        }
    }
}

/// Bytes of the side area's parts (after the arena, each 256-byte aligned). The status area:
/// a bad label (bytes 0..12), the sum of squares (64..72), the ticket of the last-block
/// reductions (128..132), the loss's partial sums (1024..2048, [`LOSS_BLOCKS`] floats) and
/// the sum of squares' (2048..4096, [`LOSS_BLOCKS`] doubles).
const STATUS_BYTES: usize = 4096;
/// The most blocks a loss's forward kernel runs on (one partial sum each, in the status area).
pub(crate) const LOSS_BLOCKS: u64 = 256;
/// Per-step scalars of captured graphs (f32 slots).
pub(crate) const DYN_SLOTS: usize = 1024;
/// Descriptor tables of the multi-tensor kernels.
pub(crate) const TABLE_BYTES: usize = 512 << 10;

fn align(x: usize) -> usize {
    x.div_ceil(256) * 256
}

/// A kernel argument: anything with a C layout the kernel expects.
pub(crate) trait Arg {
    fn ptr(&self) -> *mut c_void;
    fn class(&self) -> Param;
}
macro_rules! arg {
    ($($t:ty => $c:ident),*) => {$(impl Arg for $t {
        fn ptr(&self) -> *mut c_void { self as *const $t as *mut c_void }
        fn class(&self) -> Param { Param::$c }
    })*};
}
arg!(i32 => Int, u32 => Uint, u64 => U64, f32 => Float, crate::ops::Walk => Walk);

/// A launch between two profiling events.
type Timed = (&'static str, CudaEvent, CudaEvent);

/// Recorded while a graph is being captured.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    /// What each used dyn slot holds, for `graph_tick` (or the step's one Adam launch) to
    /// advance.
    pub slots: Vec<crate::graph::Slot>,
    /// The graph's records (`graph_tick`'s table: a count, then 8 doubles per slot).
    pub rec: u64,
    /// `graph_tick` was launched (before the first optimizer launch that needs it).
    pub ticked: bool,
    /// The step is over and held work is being flushed: an optimizer launch now is the last.
    pub closing: bool,
}

/// The CUDA backend: implements [`mote::Backend`] with `Elem = f32` over one device arena.
///
/// ```no_run
/// use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Relu, Rng, Tape};
/// use mote_cuda::Cuda;
///
/// let cuda = Cuda::new(1 << 20)?; // an arena of 1 Mi floats on device 0
/// let mut tape = Tape::<Cuda, 64>::with_backend(cuda);
/// let mut rng = Rng::new(0);
/// let model = (Linear::new(&mut tape, 8, 10, &mut rng)?, Relu, Linear::new(&mut tape, 10, 1, &mut rng)?);
/// let mut opt = Adam::new(&mut tape, AdamConfig::default())?;
/// let start = tape.mark();
/// let (xs, ys) = (vec![0.5f32; 64 * 8], vec![1.0f32; 64]);
/// for _ in 0..100 {
///     tape.rewind(start)?;
///     let x = tape.input(&[64, 8], &xs)?;
///     let y = tape.input(&[64, 1], &ys)?;
///     let pred = model.forward(&mut tape, x)?;
///     let loss = tape.mse(pred, y)?;
///     tape.backward(loss)?;
///     opt.step(&mut tape)?;
/// }
/// # Ok::<(), mote_cuda::CudaError>(())
/// ```
pub struct Cuda {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// For copies that must not be captured into a graph (inputs written during capture).
    pub(crate) side_stream: Arc<CudaStream>,
    pub(crate) blas: blas::cublasHandle_t,
    /// Each kernel and the parameter classes of its signature (every launch is checked against
    /// them: a wrong argument list is an error, not a corrupted launch).
    funcs: HashMap<&'static str, (CudaFunction, Vec<Param>)>,
    /// Device address of the allocation (arena first).
    pub(crate) base: u64,
    bytes: usize,
    capacity: usize,
    pub(crate) status: u64,
    pub(crate) dyn_: u64,
    pub(crate) table: u64,
    workspace: u64,
    workspace_bytes: usize,
    /// Convolution scratch ([`Options::conv_workspace_bytes`]).
    pub(crate) conv_ws: u64,
    pub(crate) conv_ws_bytes: usize,
    pub(crate) precision: Precision,
    pub(crate) max_blocks: u32,
    pub(crate) capture: RefCell<Option<Capture>>,
    pub(crate) updates: RefCell<UpdateQueue>,
    /// Work held back to merge into the next launch ([`Options::fuse`], `src/pending.rs`):
    /// fills, a bias broadcast or addition, a loss's forward, a gradient kernel.
    pub(crate) pending: RefCell<Pending>,
    pub(crate) fuse: bool,
    /// [`Options::k_major_from`].
    pub(crate) k_major_from: u64,
    /// [`Options::align`].
    pub(crate) align: usize,
    /// Cached descriptor tables: content -> device address, and bytes of the area used.
    tables: RefCell<(HashMap<Vec<u64>, u64>, usize)>,
    /// A cross-entropy ran since the status was last checked.
    pub(crate) loss_pending: std::cell::Cell<bool>,
    last: RefCell<String>,
    /// Per-launch event pairs while profiling ([`Cuda::profile`]).
    profile: RefCell<Option<Vec<Timed>>>,
    /// A zero-sized stand-in for the arena, for the core's range and aliasing checks.
    pub(crate) shadow: Vec<()>,
    arch: String,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("capacity", &self.capacity)
            .field("arch", &self.arch)
            .field("precision", &self.precision)
            .finish()
    }
}

fn driver_err(what: &'static str, e: impl std::fmt::Display) -> CudaError {
    CudaError::Driver {
        what,
        message: e.to_string(),
    }
}

/// The message of the last device error of any backend of this process (see
/// [`take_last_error`]).
static LAST_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Takes the driver's or cuBLAS's message of the last device error of any backend in this
/// process (empty afterwards): what a [`mote::Error::Device`], which names only the call, was
/// about, once the backend that failed is gone (the runtime adds it to the error it prints).
pub fn take_last_error() -> Option<String> {
    let mut last = LAST_ERROR.lock().ok()?;
    (!last.is_empty()).then(|| std::mem::take(&mut *last))
}

impl Cuda {
    /// A backend with an arena of `capacity` f32 elements on device 0, f32 products.
    ///
    /// # Errors
    /// [`CudaError::NoDriver`] without an NVIDIA driver, [`CudaError::NoDevice`] without a
    /// device, [`CudaError::MissingLibrary`] without cuBLAS or NVRTC, [`CudaError::Driver`]
    /// when the allocation or a library call fails.
    pub fn new(capacity: usize) -> std::result::Result<Cuda, CudaError> {
        Cuda::with_options(capacity, Options::default())
    }

    /// Checks, without touching cudarc where a library is missing, that a CUDA device can be
    /// used: the driver loads and reports at least one device.
    ///
    /// # Errors
    /// [`CudaError::NoDriver`], [`CudaError::NoDevice`].
    pub fn available() -> std::result::Result<usize, CudaError> {
        if !probe::driver() {
            return Err(CudaError::NoDriver);
        }
        drv::init().map_err(|e| match e.0 {
            sys::CUresult::CUDA_ERROR_NO_DEVICE => CudaError::NoDevice,
            _ => driver_err("cuInit", e),
        })?;
        let n = drv::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        if n <= 0 {
            return Err(CudaError::NoDevice);
        }
        Ok(n as usize)
    }

    /// A backend with explicit [`Options`]. The arena holds `capacity` elements as the core
    /// plans them for an unaligned backend ([`mote::plan`]), plus room for the alignment
    /// padding ([`Options::align`]) of [`PADDED_ALLOCATIONS`] allocations:
    /// [`mote::Backend::capacity`] reports the sum.
    ///
    /// # Errors
    /// As [`Cuda::new`]; [`CudaError::Mote`] with [`Error::InvalidArgument`] for an alignment
    /// that is not a power of two up to [`MAX_ALIGN`].
    pub fn with_options(capacity: usize, o: Options) -> std::result::Result<Cuda, CudaError> {
        if !o.align.is_power_of_two() || o.align > MAX_ALIGN {
            return Err(CudaError::Mote(Error::InvalidArgument {
                what: "Options::align must be a power of two up to 1024 elements",
            }));
        }
        let capacity = (o.align - 1)
            .checked_mul(PADDED_ALLOCATIONS)
            .and_then(|pad| capacity.checked_add(pad))
            .ok_or(CudaError::Mote(Error::InvalidArgument {
                what: "arena or workspaces too large",
            }))?;
        let count = Cuda::available()?;
        if o.device >= count {
            return Err(CudaError::Driver {
                what: "cuDeviceGet",
                message: format!(
                    "GPU {} asked for, but this machine has {count} (numbered from 0; a \
                     multi-process run picks each process's GPU with MOTE_LOCAL_RANK)",
                    o.device
                ),
            });
        }
        for (lib, name) in [
            ("cublas", "cublas"),
            ("cublasLt", "cublasLt"),
            ("nvrtc", "nvrtc"),
        ] {
            if !probe::can_load(lib) {
                return Err(CudaError::MissingLibrary { name });
            }
        }
        let ctx = CudaContext::new(o.device).map_err(|e| driver_err("cuCtxCreate", e))?;
        // One stream does all the work: no cross-stream events needed.
        // SAFETY: every use of device memory in this crate goes through `stream` (or waits for
        // `side_stream` to finish), so cudarc's event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("cuStreamCreate", e))?;
        let side_stream = ctx
            .new_stream()
            .map_err(|e| driver_err("cuStreamCreate", e))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))?;
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))?;
        let arch = format!("{maj}{min}");
        let mut funcs = HashMap::new();
        for src in SOURCES {
            let sigs = kernels::signatures(src.text);
            let ptx = kernels::ptx(src, &arch)?;
            let module = match ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)) {
                Ok(m) => m,
                // PTX from the disk cache that the driver refuses (a truncated file, say):
                // compiled again, and the cache rewritten.
                Err(_) => ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(kernels::fresh_ptx(
                        src, &arch,
                    )?))
                    .map_err(|e| driver_err("cuModuleLoadData", e))?,
            };
            for &k in src.kernels {
                let f = module
                    .load_function(k)
                    .map_err(|e| driver_err("cuModuleGetFunction", e))?;
                let sig = sigs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                funcs.insert(k, (f, sig));
            }
        }
        let too_large = || {
            CudaError::Mote(Error::InvalidArgument {
                what: "arena or workspaces too large",
            })
        };
        // Every part 256-byte aligned, the sums checked.
        let al = |x: usize| x.checked_add(255).map(|v| v / 256 * 256);
        let after = |at: usize, len: usize| al(len).and_then(|l| at.checked_add(l));
        let arena_bytes = capacity.checked_mul(4).and_then(al).ok_or_else(too_large)?;
        let status_at = arena_bytes;
        let dyn_at = status_at + STATUS_BYTES;
        let table_at = dyn_at + align(DYN_SLOTS * 4);
        let ws_at = table_at + TABLE_BYTES;
        let conv_at = after(ws_at, o.workspace_bytes).ok_or_else(too_large)?;
        let bytes = after(conv_at, o.conv_workspace_bytes).ok_or_else(too_large)?;
        ctx.bind_to_thread()
            .map_err(|e| driver_err("cuCtxSetCurrent", e))?;
        // SAFETY: a plain allocation, freed in Drop.
        let base = unsafe { drv::malloc_sync(bytes) }.map_err(|e| driver_err("cuMemAlloc", e))?;
        let mut me = Cuda {
            ctx,
            stream,
            side_stream,
            blas: std::ptr::null_mut(),
            funcs,
            base,
            bytes,
            capacity,
            status: base + status_at as u64,
            dyn_: base + dyn_at as u64,
            table: base + table_at as u64,
            workspace: base + ws_at as u64,
            workspace_bytes: o.workspace_bytes,
            conv_ws: base + conv_at as u64,
            conv_ws_bytes: o.conv_workspace_bytes,
            precision: o.precision,
            max_blocks: (sms.max(1) as u32) * 16,
            capture: RefCell::new(None),
            updates: RefCell::new(UpdateQueue::default()),
            pending: RefCell::new(Pending::default()),
            fuse: o.fuse,
            k_major_from: o.k_major_from,
            align: o.align,
            tables: RefCell::new((HashMap::new(), 0)),
            loss_pending: std::cell::Cell::new(false),
            last: RefCell::new(String::new()),
            profile: RefCell::new(None),
            shadow: vec![(); capacity],
            arch,
        };
        // SAFETY: the range lies inside the allocation.
        unsafe { drv::memset_d8_async(me.status, 0, STATUS_BYTES + DYN_SLOTS * 4, me.cu()) }
            .map_err(|e| driver_err("cuMemsetD8Async", e))?;
        me.blas =
            cudarc::cublas::result::create_handle().map_err(|e| driver_err("cublasCreate", e))?;
        // SAFETY: a live handle, our stream, and a workspace inside our allocation.
        unsafe {
            cudarc::cublas::result::set_stream(me.blas, me.cu() as _)
                .map_err(|e| driver_err("cublasSetStream", e))?;
            blas::cublasSetWorkspace_v2(me.blas, me.workspace as *mut c_void, me.workspace_bytes)
                .result()
                .map_err(|e| driver_err("cublasSetWorkspace", e))?;
        }
        me.sync().map_err(|_| CudaError::Driver {
            what: "cuStreamSynchronize",
            message: me.last_error(),
        })?;
        Ok(me)
    }

    /// The driver's (or cuBLAS's) message for the last [`mote::Error::Device`] this backend
    /// returned.
    pub fn last_error(&self) -> String {
        self.last.borrow().clone()
    }

    /// The compute capability the kernels were compiled for (`"90"` on an H100/H200).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The matrix-product precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the matrix-product precision (TF32 and bf16 are opt-in).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// Bytes of the one device allocation (arena, status, graph scalars, descriptor tables, the
    /// cuBLAS workspace and the convolution scratch).
    pub fn device_bytes(&self) -> usize {
        self.bytes
    }

    /// The stream all work runs on (for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Binds this backend's context to the calling thread when another is current (one thread
    /// driving backends on several GPUs); a compare when it already is.
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.fail("cuCtxSetCurrent", e))
    }

    /// Makes this backend's device context current on the calling thread. A backend binds
    /// it when it is made; a thread that drives backends on several GPUs (data-parallel
    /// replicas) calls this before switching to another backend's work, since launches and
    /// cuBLAS calls run in the current context.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the driver refuses.
    pub fn make_current(&self) -> std::result::Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("cuCtxSetCurrent", e))
    }

    /// Waits until all queued work is done, and reports a bad label a loss kernel found since
    /// the last read.
    ///
    /// # Errors
    /// [`mote::Error::Device`] when a kernel failed (see [`Cuda::last_error`]), or inside a
    /// graph capture (a synchronisation there would invalidate the capture);
    /// [`mote::Error::IndexOutOfRange`] for a bad cross-entropy label.
    pub fn sync(&self) -> Result<()> {
        if self.capturing() {
            return Err(self.fail(
                "sync",
                "waiting for the device inside a CUDA graph capture is not possible",
            ));
        }
        self.flush()?;
        self.stream
            .synchronize()
            .map_err(|e| self.fail("cuStreamSynchronize", e))?;
        self.check_status()
    }

    pub(crate) fn cu(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Records the driver's message (here and for [`take_last_error`]) and returns the core's
    /// device error, which holds only the call's name.
    pub(crate) fn fail(&self, what: &'static str, e: impl std::fmt::Display) -> Error {
        let message = format!("{what}: {e}");
        if let Ok(mut last) = LAST_ERROR.lock() {
            last.clone_from(&message);
        }
        *self.last.borrow_mut() = message;
        Error::Device { what }
    }

    pub(crate) fn capturing(&self) -> bool {
        self.capture.borrow().is_some()
    }

    /// Device address of arena element `offset`.
    pub(crate) fn at(&self, offset: usize) -> u64 {
        self.base + 4 * offset as u64
    }

    /// Whether elements at these offsets are all 16-byte aligned (float4 loads).
    pub(crate) fn vec4(offsets: &[usize]) -> i32 {
        i32::from(offsets.iter().all(|o| o % 4 == 0))
    }

    /// Blocks for `work` items at `threads` per block, capped for grid-stride loops.
    pub(crate) fn blocks(&self, work: u64, threads: u32) -> u32 {
        (work.div_ceil(u64::from(threads)).max(1)).min(u64::from(self.max_blocks)) as u32
    }

    /// Starts (`true`) or stops (`false`) timing every launch with a pair of CUDA events. For
    /// finding where the time goes; it slows launches down, and does not work inside a graph
    /// capture (it is ignored there).
    pub fn profile(&mut self, on: bool) {
        *self.profile.borrow_mut() = on.then(Vec::new);
    }

    /// Waits for the queued work and returns the time per kernel family since profiling
    /// started (or since the last call): `(name, launches, milliseconds)`, largest first.
    ///
    /// # Errors
    /// [`mote::Error::Device`] when the synchronisation or an event query fails.
    pub fn profile_take(&mut self) -> Result<Vec<(&'static str, usize, f64)>> {
        self.sync()?;
        let events = match self.profile.borrow_mut().as_mut() {
            Some(v) => std::mem::take(v),
            None => return Ok(Vec::new()),
        };
        let mut acc: HashMap<&'static str, (usize, f64)> = HashMap::new();
        for (name, a, b) in &events {
            let ms = a
                .elapsed_ms(b)
                .map_err(|e| self.fail("cuEventElapsedTime", e))?;
            let e = acc.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += f64::from(ms);
        }
        let mut out: Vec<_> = acc.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(out)
    }

    /// Runs `f` (which enqueues work on the stream) between two profiling events.
    pub(crate) fn timed<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.capturing() || self.profile.borrow().is_none() {
            return f();
        }
        let ev = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| self.fail("cuEventCreate", e))
        };
        let (a, b) = (ev()?, ev()?);
        a.record(&self.stream)
            .map_err(|e| self.fail("cuEventRecord", e))?;
        let out = f()?;
        b.record(&self.stream)
            .map_err(|e| self.fail("cuEventRecord", e))?;
        if let Some(v) = self.profile.borrow_mut().as_mut() {
            v.push((name, a, b));
        }
        Ok(out)
    }

    /// Launches kernel `name` with 1-D blocks.
    pub(crate) fn launch(
        &self,
        name: &'static str,
        grid: u32,
        block: u32,
        args: &[&dyn Arg],
    ) -> Result<()> {
        self.timed(name, || self.launch_untimed(name, grid, (block, 1), args))
    }

    /// Launches kernel `name` with 2-D blocks.
    pub(crate) fn launch_2d(
        &self,
        name: &'static str,
        grid: u32,
        block: (u32, u32),
        args: &[&dyn Arg],
    ) -> Result<()> {
        self.timed(name, || self.launch_untimed(name, grid, block, args))
    }

    fn launch_untimed(
        &self,
        name: &'static str,
        grid: u32,
        block: (u32, u32),
        args: &[&dyn Arg],
    ) -> Result<()> {
        let (f, sig) = self.funcs.get(name).ok_or(Error::Device {
            what: "kernel lookup",
        })?;
        if sig.len() != args.len() || sig.iter().zip(args).any(|(p, a)| *p != a.class()) {
            let got: Vec<Param> = args.iter().map(|a| a.class()).collect();
            return Err(self.fail(
                "kernel arguments",
                format!("{name}: the kernel takes {sig:?}, the launch passed {got:?}"),
            ));
        }
        self.bind()?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.ptr()).collect();
        // SAFETY: `name` is one of our kernels; every call site passes the arguments its
        // signature in kernels/*.cu declares, with pointers inside the allocation (checked by
        // the callers' range checks).
        unsafe {
            drv::launch_kernel(
                f.cu_function(),
                (grid, 1, 1),
                (block.0, block.1, 1),
                0,
                self.cu(),
                &mut params,
            )
        }
        .map_err(|e| self.fail(name, e))
    }

    /// Checks that `[offset, offset + len)` lies inside the arena.
    pub(crate) fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        let end = offset.saturating_add(len);
        if end > self.capacity {
            return Err(Error::IndexOutOfRange {
                op: "arena",
                index: end,
                bound: self.capacity,
            });
        }
        Ok(())
    }

    /// Reserves `bytes` of the table area (not shared with any other user); `None` when full.
    pub(crate) fn reserve_table(&self, bytes: usize) -> Option<u64> {
        let mut t = self.tables.borrow_mut();
        let bytes = align(bytes);
        if t.1 + bytes > TABLE_BYTES {
            return None;
        }
        let at = self.table + t.1 as u64;
        t.1 += bytes;
        Some(at)
    }

    /// Gives back a reservation of `bytes` at `at` when nothing was reserved or uploaded after
    /// it (a failed capture's record); otherwise it stays used.
    pub(crate) fn unreserve_table(&self, at: u64, bytes: usize) {
        let mut t = self.tables.borrow_mut();
        let bytes = align(bytes);
        if at + bytes as u64 == self.table + t.1 as u64 {
            t.1 -= bytes;
        }
    }

    /// Uploads a descriptor table (u64 words) into the table area, reusing an identical table
    /// uploaded before; returns its device address, or `None` when the area is full.
    pub(crate) fn upload_table(&self, words: Vec<u64>) -> Result<Option<u64>> {
        let mut t = self.tables.borrow_mut();
        if let Some(&at) = t.0.get(&words) {
            return Ok(Some(at));
        }
        let bytes = align(words.len() * 8);
        if t.1 + bytes > TABLE_BYTES {
            return Ok(None);
        }
        let at = self.table + t.1 as u64;
        self.copy_in_untracked(at, &words)?;
        t.1 += bytes;
        t.0.insert(words, at);
        Ok(Some(at))
    }

    /// Copies host data to device address `dst` so that it is in place before any later work on
    /// the stream. While a graph is being captured, the copy runs at once on the side stream
    /// (it is not part of the graph).
    pub(crate) fn copy_in_untracked<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let s = if self.capturing() {
            &self.side_stream
        } else {
            &self.stream
        };
        // SAFETY: `dst` lies inside our allocation (callers check the range); a pageable source
        // is staged by the driver before the call returns.
        unsafe { drv::memcpy_htod_async(dst, src, s.cu_stream()) }
            .map_err(|e| self.fail("cuMemcpyHtoDAsync", e))?;
        if self.capturing() {
            s.synchronize()
                .map_err(|e| self.fail("cuStreamSynchronize", e))?;
        }
        Ok(())
    }

    /// Launches everything held back (fills, a bias broadcast or addition, a gradient kernel,
    /// a loss's forward: `src/pending.rs`) and the queued optimizer updates.
    pub(crate) fn flush(&self) -> Result<()> {
        let held = self.pending.borrow_mut().take_all();
        self.launch_settled(held)?;
        if self.updates.borrow().is_empty() {
            return Ok(());
        }
        crate::ops::optim::flush_updates(self)
    }

    /// Before any op other than an optimizer update: launches the queued updates (and, first,
    /// everything held back, which they may read).
    pub(crate) fn flush_updates(&self) -> Result<()> {
        if self.updates.borrow().is_empty() {
            return Ok(());
        }
        self.flush()
    }

    /// An op reads `reads` and writes `write` as `kind`: launches what is held back over those
    /// ranges. `true`: a zero fill of exactly `write` was taken in, the op must overwrite
    /// instead of accumulating.
    pub(crate) fn settle(
        &self,
        reads: &[std::ops::Range<usize>],
        write: std::ops::Range<usize>,
        kind: Write,
    ) -> Result<bool> {
        let s = self.pending.borrow_mut().settle(reads, write, kind);
        let overwrite = s.overwrite;
        self.launch_settled(s)?;
        Ok(overwrite)
    }

    /// Holds back a fill (or launches it at once without [`Options::fuse`]). The range is
    /// checked by the caller.
    pub(crate) fn hold_fill(&self, offset: usize, len: usize, value: f32) -> Result<()> {
        let f = Fill { offset, len, value };
        if !self.fuse {
            return self.launch_fill(f);
        }
        let s = self.pending.borrow_mut().fill(f);
        self.launch_settled(s)
    }

    pub(crate) fn launch_settled(&self, s: Settled) -> Result<()> {
        // Several zero fills at once (gradients no op took in, at the step's end): one launch.
        let zeros: Vec<u64> = s
            .fills
            .iter()
            .filter(|f| f.value == 0.0 && f.len > 0)
            .flat_map(|f| [f.offset as u64, f.len as u64])
            .collect();
        let rest = if zeros.len() >= 6 && self.zero_ranges(zeros)? {
            s.fills.into_iter().filter(|f| f.value != 0.0).collect()
        } else {
            s.fills
        };
        for f in rest {
            self.launch_fill(f)?;
        }
        if let Some(b) = s.bias {
            self.launch_bias(b)?;
        }
        if let Some(l) = s.loss {
            self.launch_loss_fwd(&l)?;
        }
        match s.grad {
            Some(g) => self.launch_grad(g, None),
            None => Ok(()),
        }
    }

    /// Holds back a gradient kernel for the column sums that may follow it (or launches it at
    /// once without [`Options::fuse`]); the op was settled by the caller.
    pub(crate) fn hold_grad(&self, g: Grad) -> Result<()> {
        if !self.fuse {
            return self.launch_grad(g, None);
        }
        let before = self.pending.borrow_mut().hold_grad(g);
        before.map_or(Ok(()), |b| self.launch_grad(b, None))
    }

    /// Launches a held gradient kernel, summing its output's columns too with `colsum`.
    pub(crate) fn launch_grad(&self, g: Grad, colsum: Option<ColSum>) -> Result<()> {
        match g.kind {
            GradKind::Unary { code, c, x, y, dy } => {
                self.launch_unary_bwd(&g, [x, y, dy], (code, c), colsum)
            }
            GradKind::Loss { .. } => self.launch_loss_bwd(&g, colsum),
        }
    }

    /// Zeroes the `(offset, len)` ranges in `words` in one launch; `false` (nothing launched)
    /// when the descriptor area is full.
    pub(crate) fn zero_ranges(&self, words: Vec<u64>) -> Result<bool> {
        let count = (words.len() / 2) as i32;
        let total: u64 = words.iter().skip(1).step_by(2).sum();
        let Some(t) = self.upload_table(words)? else {
            return Ok(false);
        };
        let arena = self.base;
        let blocks = self.blocks(total, crate::ops::THREADS);
        self.launch(
            "zero_ranges",
            blocks,
            crate::ops::THREADS,
            &[&arena, &t, &count],
        )?;
        Ok(true)
    }

    fn launch_fill(&self, f: Fill) -> Result<()> {
        if f.len == 0 {
            return Ok(());
        }
        let vec = Cuda::vec4(&[f.offset]);
        let work = if vec == 1 { f.len / 4 + 3 } else { f.len } as u64;
        let (p, n) = (self.at(f.offset), f.len as u64);
        self.launch(
            "fill",
            self.blocks(work, crate::ops::THREADS),
            crate::ops::THREADS,
            &[&p, &n, &f.value, &vec],
        )
    }

    /// A held-back bias broadcast, as one strided copy: `y = b` per row ([`Stage::Copy`]) or
    /// `y += b` ([`Stage::Add`]).
    pub(crate) fn launch_bias(&self, b: Bias) -> Result<()> {
        let w = crate::ops::Walk::new(&[b.rows, b.cols], &[[0, 1, 0, 0], [b.cols, 1, 0, 0]], None);
        let (sp, dp, acc) = (
            self.at(b.bias),
            self.at(b.y),
            i32::from(b.stage == Stage::Add),
        );
        self.launch(
            "copy_walk",
            self.blocks(w.ptotal, crate::ops::THREADS),
            crate::ops::THREADS,
            &[&w, &sp, &dp, &acc],
        )
    }

    /// Reads and clears the status a loss kernel sets for a bad label.
    pub(crate) fn check_status(&self) -> Result<()> {
        if !self.loss_pending.get() {
            return Ok(());
        }
        self.bind()?;
        let mut st = [0u32; 3];
        // SAFETY: the status words lie inside our allocation; the stream is synchronised by the
        // caller.
        unsafe { drv::memcpy_dtoh_sync(&mut st, self.status) }
            .map_err(|e| self.fail("cuMemcpyDtoH", e))?;
        self.loss_pending.set(false);
        if st[0] != 0 {
            // SAFETY: as above. On the compute stream, so that the next loss kernel's status
            // write comes after it (a synchronous memset runs on the legacy stream, which a
            // non-blocking stream does not wait for).
            unsafe { drv::memset_d8_async(self.status, 0, 12, self.cu()) }
                .map_err(|e| self.fail("cuMemsetD8Async", e))?;
            return Err(Error::IndexOutOfRange {
                op: "cross_entropy label",
                index: if st[1] == u32::MAX {
                    usize::MAX
                } else {
                    st[1] as usize
                },
                bound: st[2] as usize,
            });
        }
        Ok(())
    }
}

// SAFETY: every field but the cuBLAS handle (a raw pointer) is `Send` already (cudarc's
// contexts, streams, functions and events are; `RefCell` and `Cell` are). A cuBLAS handle is not
// tied to a host thread: one thread after another may use it, as long as their calls do not
// overlap and the handle's device context is current; the backend binds its context before
// its launches, cuBLAS calls, driver copies and memsets (`Cuda::bind`). `Cuda` is not `Sync`,
// so moving one to another thread hands over its exclusive use: what data-parallel training
// does with one thread per GPU.
unsafe impl Send for Cuda {}

impl Drop for Cuda {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // Every stream of the context, not only the backend's: an NCCL rank's sums, queued on
        // a stream of its own, may still write the arena when the rank outlives the backend.
        let _ = self.ctx.synchronize();
        // SAFETY: created in `with_options`, destroyed once.
        unsafe {
            if !self.blas.is_null() {
                let _ = cudarc::cublas::result::destroy_handle(self.blas);
            }
            let _ = drv::free_sync(self.base);
        }
    }
}
