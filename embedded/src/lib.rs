//! What the six firmware programs share: instruction counting (SysTick under QEMU's
//! `-icount shift=0`), stack painting, a tiny line printer over semihosting (no `core::fmt`
//! float code), exit codes, and [`Fast`], a backend that delegates to `mote::Cpu` and
//! replaces the kernels that a Cortex-M4F runs slowly through generic code.

#![no_std]

pub mod conv;
pub mod copy;
pub mod fast;
pub mod pool;

use core::arch::asm;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_semihosting::{debug, hio};

pub use fast::Fast;

// ----- statics -----

/// A `static` handed out once as `&'static mut` (no `static mut`): the arena lives in `.bss`,
/// zeroed by the start-up code, and is never built on the stack first (as `singleton!`'s
/// value may be, which for a 50 KB arena can overflow the stack at low optimisation).
pub struct StaticCell<T> {
    value: core::cell::UnsafeCell<T>,
    taken: core::sync::atomic::AtomicBool,
}

// Safety: the only access is through `take`, which hands out one `&mut` ever.
unsafe impl<T> Sync for StaticCell<T> {}

impl<T> StaticCell<T> {
    /// A cell holding `value` (use a constant: the static is initialised at link time).
    pub const fn new(value: T) -> Self {
        StaticCell {
            value: core::cell::UnsafeCell::new(value),
            taken: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The value, the first time; `None` after.
    #[allow(clippy::mut_from_ref)] // handed out once: see `taken`
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, core::sync::atomic::Ordering::AcqRel) {
            None
        } else {
            // Safety: `taken` was false, so no other reference was ever handed out.
            Some(unsafe { &mut *self.value.get() })
        }
    }
}

// ----- counting -----

/// Instructions per SysTick tick: QEMU's `-icount shift=0` advances the virtual clock 1 ns per
/// instruction and SysTick runs at 25 MHz.
pub const INSNS_PER_TICK: u64 = 40;

/// Instruction counter over SysTick (24 bits, counting down; one region must stay under
/// ~671 M instructions).
pub struct Counter {
    syst: SYST,
}

impl Counter {
    /// Starts SysTick free-running from the core clock.
    pub fn new(mut syst: SYST) -> Self {
        syst.disable_interrupt();
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(0x00FF_FFFF);
        syst.clear_current();
        syst.enable_counter();
        Counter { syst }
    }

    /// The counter now.
    #[inline(always)]
    pub fn now(&self) -> u32 {
        let _ = &self.syst;
        SYST::get_current()
    }

    /// Ticks since `start` (a value of [`Counter::now`]).
    #[inline(always)]
    pub fn ticks_since(&self, start: u32) -> u32 {
        start.wrapping_sub(self.now()) & 0x00FF_FFFF
    }
}

/// A marker for `../shared/tools/qemu-insncount` (the plugin prints the running instruction
/// count each time it is called; profiling builds only, it costs nothing otherwise).
#[no_mangle]
#[inline(never)]
pub extern "C" fn bench_marker() {
    unsafe { asm!("", options(nostack)) };
}

// ----- stack painting -----

const PAINT: u32 = 0xC0DE_CAFE;

extern "C" {
    static _stack_start: u32;
}

fn stack_top() -> usize {
    core::ptr::addr_of!(_stack_start) as usize
}

/// Paints `bytes` of stack below the top (down from just under the current stack pointer) so
/// that [`peak_stack`] can find the deepest point reached. Call first thing in `main`.
#[inline(always)]
pub fn paint_stack(bytes: usize) {
    let sp = cortex_m::register::msp::read() as usize;
    let lo = stack_top() - bytes;
    let hi = sp - 64; // room for this function's own calls
    let mut p = lo;
    while p < hi {
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// The most stack used so far, in bytes (from the top of RAM down to the deepest word that is
/// no longer paint), within the `bytes` painted.
pub fn peak_stack(bytes: usize) -> usize {
    let top = stack_top();
    let mut p = top - bytes;
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    top - p
}

/// Bytes of statics (`.data` + `.bss`).
pub fn static_bytes() -> usize {
    extern "C" {
        static __sdata: u32;
        static __edata: u32;
        static __sbss: u32;
        static __ebss: u32;
    }
    (core::ptr::addr_of!(__edata) as usize - core::ptr::addr_of!(__sdata) as usize)
        + (core::ptr::addr_of!(__ebss) as usize - core::ptr::addr_of!(__sbss) as usize)
}

// ----- panics -----

/// A panic prints one line and exits with failure (no `core::fmt`: its code is large).
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(b"FAIL: panic\n");
    }
    exit(false)
}

/// Bytes of flash the image takes: from the vector table at 0 to the end of `.data`'s initial
/// values (code, read-only data and all).
pub fn flash_bytes() -> usize {
    extern "C" {
        static __sidata: u32;
        static __sdata: u32;
        static __edata: u32;
    }
    core::ptr::addr_of!(__sidata) as usize
        + (core::ptr::addr_of!(__edata) as usize - core::ptr::addr_of!(__sdata) as usize)
}

// ----- output -----

/// A line of output built without `core::fmt` (its float code costs ~20 KB of flash); written
/// to the host in pieces of up to 64 bytes.
pub struct Line {
    buf: [u8; 64],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 64],
            len: 0,
        }
    }

    /// Appends text.
    pub fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        self
    }

    /// Appends an unsigned integer.
    pub fn u(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &b in &tmp[i..] {
            self.s(core::str::from_utf8(&[b]).unwrap_or("?"));
        }
        self
    }

    /// Appends `v` with `decimals` digits after the point (rounded; |v| < 1.8e10).
    pub fn f(&mut self, v: f32, decimals: u32) -> &mut Self {
        if v.is_nan() {
            return self.s("NaN");
        }
        if v < 0.0 {
            self.s("-");
        }
        let scale = 10u64.pow(decimals);
        let x = (if v < 0.0 { -v } else { v }) as f64 * scale as f64 + 0.5;
        let x = if x > 1.8e19 { 1.8e19 } else { x } as u64;
        self.u(x / scale);
        if decimals > 0 {
            self.s(".");
            let frac = x % scale;
            let mut d = scale / 10;
            while d > 0 {
                self.u((frac / d) % 10);
                d /= 10;
            }
        }
        self
    }

    /// Appends a percentage `num / den` with one decimal.
    pub fn pct(&mut self, num: usize, den: usize) -> &mut Self {
        let tenths = (num as u64 * 1000 + den as u64 / 2) / den.max(1) as u64;
        self.u(tenths / 10).s(".").u(tenths % 10).s("%")
    }

    fn flush(&mut self) {
        if let Ok(mut out) = hio::hstdout() {
            let _ = out.write_all(&self.buf[..self.len]);
        }
        self.len = 0;
    }

    /// Ends the line with a newline and writes what is left of it to the host's stdout.
    pub fn print(&mut self) {
        self.s("\n");
        self.flush();
    }
}

/// Ends the program: QEMU exits 0 when `ok`, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Prints `what` and the error, then exits with failure.
pub fn fail(what: &str, e: mote::Error) -> ! {
    let mut l = Line::new();
    l.s("FAIL: ").s(what).s(": ").s(error_name(e));
    l.print();
    exit(false)
}

/// A short name for an error (without `core::fmt`).
pub fn error_name(e: mote::Error) -> &'static str {
    use mote::Error::*;
    match e {
        ArenaFull { .. } => "arena full",
        TapeFull { .. } => "tape full",
        ShapeMismatch { .. } => "shape mismatch",
        StaleHandle => "stale handle",
        NoGradient => "no gradient",
        NotScalar { .. } => "not a scalar",
        Truncated { .. } => "blob truncated",
        ChecksumMismatch { .. } => "blob checksum mismatch",
        BadMagic => "blob bad magic",
        _ => "error",
    }
}

/// `r?` for `main`: prints and fails on an error.
pub trait OrFail<T> {
    /// The value, or a failure exit naming `what`.
    fn or_fail(self, what: &str) -> T;
}

impl<T> OrFail<T> for mote::Result<T> {
    #[inline]
    fn or_fail(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(what, e),
        }
    }
}

/// `vsqrt.f32`: the FPU's square root (libm's is a software routine).
#[inline(always)]
pub fn sqrtf(x: f32) -> f32 {
    let mut bits = x.to_bits();
    unsafe {
        asm!(
            "vmov s0, {0}",
            "vsqrt.f32 s0, s0",
            "vmov {0}, s0",
            inout(reg) bits,
            out("s0") _,
            options(pure, nomem, nostack),
        );
    }
    f32::from_bits(bits)
}

// ----- the digits in flash -----

/// The core's bundled digits (UCI, CC BY 4.0), as bytes in flash: made by `build.rs`, shuffled
/// once with a fixed seed; records `..TRAIN` train, `TRAIN..TOTAL` are held out.
pub mod digits {
    include!(concat!(env!("OUT_DIR"), "/digits_split.rs"));

    /// Bytes per record: 64 pixels (0..=16), then the label.
    pub const RECORD: usize = 65;
    /// Pixels per image.
    pub const PIXELS: usize = 64;

    static DATA: &[u8; TOTAL * RECORD] = include_bytes!(concat!(env!("OUT_DIR"), "/digits.bin"));

    /// Pixel `k` of record `i`, scaled to [0, 1].
    #[inline]
    pub fn pixel(i: usize, k: usize) -> f32 {
        DATA[i * RECORD + k] as f32 * (1.0 / 16.0)
    }

    /// The label of record `i`.
    #[inline]
    pub fn label(i: usize) -> usize {
        DATA[i * RECORD + PIXELS] as usize
    }

    /// Bytes of data in flash.
    pub const fn flash_bytes() -> usize {
        TOTAL * RECORD
    }

    /// The `k`-th training record of epoch `epoch`: a different full-cycle permutation of the
    /// training records each epoch (`i -> (a i + c) mod TRAIN` with `a` coprime to `TRAIN`), so
    /// no index array is needed.
    pub fn shuffled(epoch: usize, k: usize) -> usize {
        const A: [usize; 8] = [97, 211, 331, 577, 733, 881, 1021, 1193];
        let a = A[epoch % A.len()];
        debug_assert!(gcd(a, TRAIN) == 1);
        (a * k + 389 * epoch) % TRAIN
    }

    const fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }

    const _: () = {
        let a = [97, 211, 331, 577, 733, 881, 1021, 1193];
        let mut i = 0;
        while i < a.len() {
            assert!(gcd(a[i], TRAIN) == 1);
            i += 1;
        }
    };
}

/// The index of the largest value.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The dims of a batch of `b` records, each of shape `sample` (`[64]`, or `[1, 8, 8]` for an
/// image; at most three dimensions), as an array and its used length. No slice indexing: a
/// bounds-check panic would link `core::fmt` (several KB of flash).
fn batch_dims(b: usize, sample: &[usize]) -> ([usize; 4], usize) {
    let mut dims = [b, 1, 1, 1];
    for (d, &s) in dims.iter_mut().skip(1).zip(sample) {
        *d = s;
    }
    (dims, 1 + sample.len().min(3))
}

/// Correct predictions of `model` on the held-out digits (`TRAIN..TOTAL`), each record shaped
/// `sample`, in batches of `batch`, without recording; the arena is rewound to `start` before
/// each batch.
pub fn held_out_correct<M: mote::Module, const N: usize>(
    tape: &mut mote::Tape<Fast<'_>, N>,
    start: mote::Mark,
    model: &M,
    batch: usize,
    sample: &[usize],
) -> mote::Result<usize> {
    use digits::{PIXELS, TOTAL, TRAIN};
    let mut correct = 0;
    let mut first = TRAIN;
    while first < TOTAL {
        let b = batch.min(TOTAL - first);
        tape.rewind(start)?;
        let mut i = 0;
        let (dims, rank) = batch_dims(b, sample);
        let logits = tape.no_grad(|tape| {
            let x = tape.input_with(dims.get(..rank).unwrap_or(&dims), || {
                let v = digits::pixel(first + i / PIXELS, i % PIXELS);
                i += 1;
                v
            })?;
            model.forward(tape, x)
        })?;
        let classes = logits.shape().dim(1);
        let out = tape.data(logits)?;
        for (r, row) in out.chunks_exact(classes).enumerate() {
            if argmax(row) == digits::label(first + r) {
                correct += 1;
            }
        }
        first += b;
    }
    Ok(correct)
}

/// Records `x` (`[batch, sample...]`) and the labels of the training records
/// `first..first + batch` of epoch `epoch`'s order (see [`digits::shuffled`]); `relabel` maps a
/// digit to its class.
pub fn train_batch<const N: usize, const BATCH: usize>(
    tape: &mut mote::Tape<Fast<'_>, N>,
    epoch: usize,
    first: usize,
    sample: &[usize],
    relabel: impl Fn(usize) -> usize,
) -> mote::Result<(mote::Var, mote::Var)> {
    use digits::PIXELS;
    let mut k = first;
    let (mut rec, mut px) = (digits::shuffled(epoch, k), 0);
    let (dims, rank) = batch_dims(BATCH, sample);
    let x = tape.input_with(dims.get(..rank).unwrap_or(&dims), || {
        let v = digits::pixel(rec, px);
        px += 1;
        if px == PIXELS {
            px = 0;
            k += 1;
            rec = digits::shuffled(epoch, k);
        }
        v
    })?;
    let labels: [usize; BATCH] =
        core::array::from_fn(|i| relabel(digits::label(digits::shuffled(epoch, first + i))));
    let y = tape.labels(&labels)?;
    Ok((x, y))
}
