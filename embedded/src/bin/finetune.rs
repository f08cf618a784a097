//! Knowledge transfer on the device. A 64-32-10 network trained on the host on the digits 0-7
//! only (`host/`, saved as a mote f16 blob, kept in flash with `include_bytes!`) is loaded; its
//! backbone (the first layer) is frozen and only the head (32 -> 10) is trained, on all ten
//! classes: 8 and 9 are new to it. Reports the held-out accuracy before and after.

#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::entry;
use mote::plan::{self, Opt};
use mote::{blob, Adam, AdamConfig, Float, Linear, Module, Optimizer, Relu, Tape};
use mote_embedded::digits::{self, PIXELS, TOTAL, TRAIN};
use mote_embedded::{
    held_out_correct, paint_stack, peak_stack, static_bytes, train_batch, Counter, Fast, Line,
    OrFail, StaticCell, INSNS_PER_TICK,
};

/// The host network (`host/`, `mote::blob` in f16): 64-32-10 trained on the digits 0-7.
static BLOB: &[u8] = include_bytes!("../../data/digits-0to7.f16.blob");

const BATCH: usize = 16;
const HIDDEN: usize = 32;
const CLASSES: usize = 10;
const EPOCHS: usize = 3;
const STEPS: usize = TRAIN / BATCH;
/// The frozen backbone (values only: no gradient, no optimizer state), the trainable head
/// (values, gradients, Adam's two moments), and one step: the input, the labels, the
/// backbone's output and activation (no gradients: nothing trainable reaches them), the logits
/// and the loss with their gradients.
const ARENA: usize = (PIXELS * HIDDEN + HIDDEN)
    + plan::mlp_params(&[HIDDEN, CLASSES], Opt::Adam)
    + BATCH * PIXELS
    + BATCH
    + 2 * BATCH * HIDDEN
    + 2 * (BATCH * CLASSES + 1);
/// 4 parameters, x, labels, linear, relu, linear, cross-entropy.
const NODES: usize = 10;
type Be = Fast<'static>;
const RAM_BUDGET: usize = 32 * 1024;
const STACK_ALLOWANCE: usize = 4 * 1024;
const _: () = assert!(
    ARENA * 4 + size_of::<Tape<Be, NODES>>() + STACK_ALLOWANCE <= RAM_BUDGET,
    "fine-tuning does not fit 32 KB of RAM"
);
const PAINT_BYTES: usize = 16 * 1024;

#[entry]
fn main() -> ! {
    paint_stack(PAINT_BYTES);
    let cp = cortex_m::Peripherals::take().unwrap();
    let counter = Counter::new(cp.SYST);
    static MEM: StaticCell<[f32; ARENA]> = StaticCell::new([0.0; ARENA]);
    let mem = MEM.take().unwrap();
    let mut tape = Tape::<Be, NODES>::with_backend(Fast::new(mem));

    // The model's parameters, frozen backbone first, then the blob's values into them.
    let zero = || f32::ZERO;
    let l1 = Linear {
        weight: tape
            .param_frozen_with(&[HIDDEN, PIXELS], zero)
            .or_fail("w1"),
        bias: Some(tape.param_frozen_with(&[HIDDEN], zero).or_fail("b1")),
    };
    let l2 = Linear {
        weight: tape.param_with(&[CLASSES, HIDDEN], zero).or_fail("w2"),
        bias: Some(tape.param_with(&[CLASSES], zero).or_fail("b2")),
    };
    blob::load(&mut tape, BLOB).or_fail("blob");
    let model = (l1, Relu, l2);
    let config = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::default()
    };
    let mut opt = Adam::new(&mut tape, config).or_fail("adam");
    let start = tape.mark();
    let held_out = TOTAL - TRAIN;

    let before = held_out_correct(&mut tape, start, &model, BATCH, &[PIXELS]).or_fail("eval");

    let mut ticks = 0u64;
    for epoch in 0..EPOCHS {
        for step in 0..STEPS {
            let t0 = counter.now();
            tape.rewind(start).or_fail("rewind");
            let (x, y) =
                train_batch::<NODES, BATCH>(&mut tape, epoch, step * BATCH, &[PIXELS], |d| d)
                    .or_fail("batch");
            let logits = model.forward(&mut tape, x).or_fail("forward");
            let loss = tape.cross_entropy(logits, y).or_fail("loss");
            tape.backward(loss).or_fail("backward");
            opt.step(&mut tape).or_fail("step");
            ticks += counter.ticks_since(t0) as u64;
        }
    }
    let per_step = ticks * INSNS_PER_TICK / (EPOCHS * STEPS) as u64;
    let after = held_out_correct(&mut tape, start, &model, BATCH, &[PIXELS]).or_fail("eval");

    // The deepest stack of the training and the evaluation: the summary below is printed after
    // this is read, so its printing (semihosting) is not counted (embedded/README.md).
    let stack = peak_stack(PAINT_BYTES);
    let statics = static_bytes();
    let ram = statics + stack;
    // A clear rise: at least 8 points, to at least 88%.
    let rise_ok = after * 100 >= before * 100 + 8 * held_out && after * 100 >= 88 * held_out;
    let plan_ok = tape.high_water() == ARENA;
    let ok = rise_ok && plan_ok && ram <= RAM_BUDGET;
    let mut l = Line::new();
    l.s(if ok { "finetune: ok" } else { "finetune: FAIL" })
        .s(" held-out accuracy before ")
        .pct(before, held_out)
        .s(" after ")
        .pct(after, held_out)
        .s(" (host saw 0-7; head on 0-9)")
        .s(" blob ")
        .u(BLOB.len() as u64)
        .s(" B f16")
        .s(" insns/step ")
        .u(per_step)
        .s(" arena ")
        .u(tape.high_water_bytes() as u64)
        .s(" B")
        .s(" flash ")
        .u(mote_embedded::flash_bytes() as u64)
        .s(" B")
        .s(" (code ")
        .u((mote_embedded::flash_bytes() - digits::flash_bytes() - BLOB.len()) as u64)
        .s(" B)")
        .s(" static ")
        .u(statics as u64)
        .s(" B")
        .s(" stack ")
        .u(stack as u64)
        .s(" B")
        .s(" ram ")
        .u(ram as u64)
        .s(" B");
    if !plan_ok {
        l.s(" [arena plan not exact]");
    }
    l.print();
    mote_embedded::exit(ok)
}
