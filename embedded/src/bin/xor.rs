//! XOR-MCU (`../shared/MCU.md`): a 2-3-1 sigmoid network from fixed starting weights, the sum
//! of squared errors over the 4 samples, Adam (lr 0.1, betas 0.9 / 0.999, eps 1e-7), batch 4
//! (one step per epoch), 100 epochs, f32.
//!
//! The step is written with mote's tape, layers and optimizer in `../xor_step.rs`; the build
//! script runs it on the host, records its backend calls (`mote::replay::Replay`) and writes
//! them as straight-line Rust (`Replay::write_rust`), with the arena's starting contents.
//! Here that step runs on [`Fast`] over a static arena, with a tape-less `mote::Adam` giving
//! each step its bias corrections: no tape, no node records and no call list on the device,
//! and every offset and size is a constant the compiler sees. The same calls as the eager
//! step, so the same result (the core's `tests/codegen.rs` checks generated steps against eager
//! ones bit for bit; the loss is checked against the reference here). The other programs
//! (`digits`, `finetune`, `cnn`) run the tape itself on the device.
//!
//! Measured: instructions per epoch over the 100 training steps (SysTick under QEMU's
//! `-icount shift=0`), the arena (checked equal to `mote::plan`'s count), the peak stack
//! (painted; training and evaluation, read before the summary is printed), the statics and the
//! flash image; the final loss against the reference. The third target, the training code's
//! flash, is checked on the ELF by `../run.sh` (`tools/code-size.py`): the firmware cannot see
//! its own call graph.

#![no_std]
#![no_main]

use cortex_m_rt::entry;
use mote::plan::{self, Loss, Opt};
use mote::{Adam, HostBackend};
use mote_embedded::{
    paint_stack, peak_stack, static_bytes, Counter, Fast, Line, OrFail, StaticCell, INSNS_PER_TICK,
};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/xor_step.rs"));
}

const BATCH: usize = 4;
const SIZES: [usize; 3] = [2, 3, 1];
const EPOCHS: u32 = 100;
/// `plan::mlp` counts an MLP without an activation after its last layer and the mean as the
/// loss; XOR-MCU adds an output sigmoid (BATCH values and their gradients) and scales the mean
/// to the sum (one scalar and its gradient).
const ARENA: usize = plan::mlp(&SIZES, BATCH, Loss::Mse, Opt::Adam) + 2 * BATCH + 2;
const _: () = assert!(
    ARENA == generated::HIGH_WATER,
    "the plan does not match the recorded step's arena"
);
/// Only the kernels XOR-MCU runs are linked (the others answer an error): less flash.
type Be = Fast<'static, false>;

/// The targets: twice the hand-written floor, AIfES's RAM (statics + peak stack).
const TARGET_INSNS: u64 = 3142;
const AIFES_INSNS: u64 = 28_967;
const TARGET_RAM: usize = 2572;
const PAINT_BYTES: usize = 4 * 1024;

/// The reference's final loss (AIfES and the hand-written loop).
const REFERENCE_LOSS: f32 = 0.009_306_9;

/// The arena with its starting contents (parameters, zero gradients and Adam state, the
/// samples): initialised data, copied from flash at reset.
const fn arena() -> [f32; ARENA] {
    let mut a = [0.0; ARENA];
    let mut i = 0;
    while i < generated::INIT.len() {
        a[i] = generated::INIT[i];
        i += 1;
    }
    a
}
static MEM: StaticCell<[f32; ARENA]> = StaticCell::new(arena());

#[entry]
fn main() -> ! {
    paint_stack(PAINT_BYTES);
    let cp = cortex_m::Peripherals::take().unwrap();
    let counter = Counter::new(cp.SYST);
    let mut be = Be::new(MEM.take().unwrap());
    let mut adam = Adam::detached(generated::ADAM, false).or_fail("adam");
    mote_embedded::bench_marker();
    let t0 = counter.now();
    train(&mut be, &mut adam);
    let ticks = counter.ticks_since(t0) as u64;
    mote_embedded::bench_marker();
    let per_epoch = ticks * INSNS_PER_TICK / EPOCHS as u64;
    let ok = report(&mut be, per_epoch);
    mote_embedded::exit(ok)
}

/// The measured region: `EPOCHS` training steps.
#[inline(never)]
fn train(be: &mut Be, adam: &mut Adam) {
    for _ in 0..EPOCHS {
        generated::step(be, &adam.next_update()).or_fail("step");
    }
}

/// Evaluates the trained weights, checks the results and prints the summary.
#[inline(never)]
fn report(be: &mut Be, per_epoch: u64) -> bool {
    generated::eval(be).or_fail("eval");
    let loss = be.storage()[generated::LOSS];
    // The deepest stack of the training and the evaluation: the summary below is printed after
    // this is read, so its printing (semihosting) is not counted (embedded/README.md).
    let stack = peak_stack(PAINT_BYTES);
    let statics = static_bytes();
    let ram = statics + stack;
    let loss_ok = (loss - REFERENCE_LOSS).abs() < 1e-5;
    let ram_ok = ram <= TARGET_RAM;
    let insns_ok = per_epoch <= TARGET_INSNS;
    let ok = loss_ok && ram_ok && insns_ok;
    let mut l = Line::new();
    l.s(if ok { "xor: ok" } else { "xor: FAIL" })
        .s(" loss ")
        .f(loss, 7)
        .s(" (ref 0.0093069)")
        .s(" insns/epoch ")
        .u(per_epoch)
        .s(" (target ")
        .u(TARGET_INSNS)
        .s(", AIfES ")
        .u(AIFES_INSNS)
        .s(") ram ")
        .u(ram as u64)
        .s(" B = static ")
        .u(statics as u64)
        .s(" (arena ")
        .u((ARENA * 4) as u64)
        .s(") + stack ")
        .u(stack as u64)
        .s(" (target ")
        .u(TARGET_RAM as u64)
        .s(") flash ")
        .u(mote_embedded::flash_bytes() as u64)
        .s(" B");
    if !loss_ok {
        l.s(" [loss off the reference]");
    }
    if !ram_ok {
        l.s(" [RAM over the target]");
    }
    if !insns_ok {
        l.s(" [instructions over the target]");
    }
    l.print();
    ok
}
