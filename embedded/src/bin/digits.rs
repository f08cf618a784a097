//! Trains a 64-32-10 MLP from scratch on the device, on the digits held in flash (training
//! subset), with Adam, in a static arena sized at compile time; reports the held-out accuracy.

#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::entry;
use mote::plan::{self, Loss, Opt};
use mote::{Adam, AdamConfig, Linear, Module, Optimizer, Relu, Rng, Tape};
use mote_embedded::digits::{self, PIXELS, TOTAL, TRAIN};
use mote_embedded::{
    held_out_correct, paint_stack, peak_stack, static_bytes, train_batch, Counter, Fast, Line,
    OrFail, StaticCell, INSNS_PER_TICK,
};

const BATCH: usize = 16;
const SIZES: [usize; 3] = [PIXELS, 32, 10];
const EPOCHS: usize = 10;
const STEPS: usize = TRAIN / BATCH; // full batches only
const ARENA: usize = plan::mlp(&SIZES, BATCH, Loss::CrossEntropy, Opt::Adam);
/// 4 parameters, x, labels, linear, relu, linear, cross-entropy.
const NODES: usize = 10;
type Be = Fast<'static>;
const RAM_BUDGET: usize = 64 * 1024;
const STACK_ALLOWANCE: usize = 4 * 1024;
const _: () = assert!(
    ARENA * 4 + size_of::<Tape<Be, NODES>>() + STACK_ALLOWANCE <= RAM_BUDGET,
    "the digits MLP does not fit 64 KB of RAM"
);
const PAINT_BYTES: usize = 16 * 1024;
/// The held-out accuracy required, in percent.
const REQUIRED: usize = 90;

#[entry]
fn main() -> ! {
    paint_stack(PAINT_BYTES);
    let cp = cortex_m::Peripherals::take().unwrap();
    let counter = Counter::new(cp.SYST);
    static MEM: StaticCell<[f32; ARENA]> = StaticCell::new([0.0; ARENA]);
    let mem = MEM.take().unwrap();

    let mut tape = Tape::<Be, NODES>::with_backend(Fast::new(mem));
    let mut rng = Rng::new(1);
    let model = (
        Linear::new(&mut tape, SIZES[0], SIZES[1], &mut rng).or_fail("layer 1"),
        Relu,
        Linear::new(&mut tape, SIZES[1], SIZES[2], &mut rng).or_fail("layer 2"),
    );
    let config = AdamConfig {
        lr: 5e-3,
        ..AdamConfig::default()
    };
    let mut opt = Adam::new(&mut tape, config).or_fail("adam");
    let start = tape.mark();

    let mut ticks = 0u64;
    mote_embedded::bench_marker();
    let mut last_loss = 0.0;
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
            if step == STEPS - 1 {
                last_loss = tape.item(loss).or_fail("item");
            }
        }
    }
    mote_embedded::bench_marker();
    let per_step = ticks * INSNS_PER_TICK / (EPOCHS * STEPS) as u64;
    let arena = tape.high_water_bytes();

    let correct = held_out_correct(&mut tape, start, &model, BATCH, &[PIXELS]).or_fail("eval");
    let held_out = TOTAL - TRAIN;

    // The deepest stack of the training and the evaluation: the summary below is printed after
    // this is read, so its printing (semihosting) is not counted (embedded/README.md).
    let stack = peak_stack(PAINT_BYTES);
    let statics = static_bytes();
    let ram = statics + stack;
    let acc_ok = correct * 100 >= REQUIRED * held_out;
    let ram_ok = ram <= RAM_BUDGET;
    // The arena is counted exactly: the tape's high-water mark must equal it (a smaller mark
    // would mean the count is too big, a larger one cannot happen: the tape would have failed).
    let plan_ok = tape.high_water() == ARENA;
    let ok = acc_ok && ram_ok && plan_ok;
    let mut l = Line::new();
    l.s(if ok { "digits: ok" } else { "digits: FAIL" })
        .s(" held-out accuracy ")
        .pct(correct, held_out)
        .s(" (")
        .u(correct as u64)
        .s("/")
        .u(held_out as u64)
        .s(")")
        .s(" loss ")
        .f(last_loss, 4)
        .s(" epochs ")
        .u(EPOCHS as u64)
        .s(" steps ")
        .u((EPOCHS * STEPS) as u64)
        .s(" insns/step ")
        .u(per_step)
        .s(" arena ")
        .u(arena as u64)
        .s(" B")
        .s(" flash ")
        .u(mote_embedded::flash_bytes() as u64)
        .s(" B")
        .s(" (code ")
        .u((mote_embedded::flash_bytes() - digits::flash_bytes()) as u64)
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
