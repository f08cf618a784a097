//! Trains a small LSTM from scratch on the device, on the digits held in flash (the same
//! training / held-out split as `digits`), each image read as a sequence of its 8 rows (steps
//! of 8 pixels): PyTorch's `nn.LSTM(8, 10, batch_first=True)` unrolled on the tape, its last
//! hidden state into a linear classifier; Adam, one image a step. Reports the held-out
//! accuracy, instructions per step and RAM. The tape holds every step's gates and states and
//! their gradients until the step ends (backpropagation through time), so RAM bounds the
//! hidden width and the batch.

#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::entry;
use mote::nn::rnn::Lstm;
use mote::{Adam, AdamConfig, Backend, Linear, Module, Optimizer, Rng, Tape, Var};
use mote_embedded::digits::{self, TOTAL, TRAIN};
use mote_embedded::{
    held_out_correct, paint_stack, peak_stack, static_bytes, train_batch, Counter, Fast, Line,
    OrFail, StaticCell, INSNS_PER_TICK,
};

const BATCH: usize = 1;
/// Steps (image rows) and pixels a step.
const TOKENS: usize = 8;
const PIXELS: usize = 8;
/// The LSTM's hidden width.
const HIDDEN: usize = 10;
const CLASSES: usize = 10;
const EPOCHS: usize = 12;
const LR: f64 = 3e-3;
const STEPS: usize = TRAIN / BATCH;
/// The arena in floats, measured (`tape.high_water()` after a step, which the run checks is
/// exact: a smaller arena fails the step, a larger one fails that check): the parameters (910)
/// with their gradients and Adam's two moments, the image and its label, and the steps' values
/// and their gradients. Measured, not planned: a bigger model fails at run time, not at build
/// time (the assert below checks this number against the RAM budget). The tape itself (163
/// nodes a step) lives on the stack, which is why the stack is the deepest of the programs.
const ARENA: usize = 9_337;
/// The nodes a step records (parameters included).
const NODES: usize = 170;
type Be = Fast<'static>;
const RAM_BUDGET: usize = 64 * 1024;
const STACK_ALLOWANCE: usize = 16 * 1024;
const _: () = assert!(
    ARENA * 4 + size_of::<Tape<Be, NODES>>() + STACK_ALLOWANCE <= RAM_BUDGET,
    "the digits LSTM does not fit 64 KB of RAM"
);
const PAINT_BYTES: usize = 20 * 1024;
/// The held-out accuracy required, in percent.
const REQUIRED: usize = 90;

/// The net: `[B, 8, 8]` images to `[B, 10]` logits.
struct Net {
    lstm: Lstm,
    head: Linear,
}

impl Module for Net {
    fn forward<B: Backend, const N: usize>(&self, t: &mut Tape<B, N>, x: Var) -> mote::Result<Var> {
        let (_, (h, _)) = self.lstm.run(t, x, None)?;
        self.head.forward(t, h)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.lstm.visit_params(f);
        self.head.visit_params(f);
    }
}

#[entry]
fn main() -> ! {
    paint_stack(PAINT_BYTES);
    let cp = cortex_m::Peripherals::take().unwrap();
    let counter = Counter::new(cp.SYST);
    static MEM: StaticCell<[f32; ARENA]> = StaticCell::new([0.0; ARENA]);
    let mem = MEM.take().unwrap();

    let mut tape = Tape::<Be, NODES>::with_backend(Fast::new(mem));
    let mut rng = Rng::new(1);
    let lstm = Lstm::new(&mut tape, PIXELS, HIDDEN, &mut rng).or_fail("lstm");
    let head = Linear::new(&mut tape, HIDDEN, CLASSES, &mut rng).or_fail("head");
    let net = Net { lstm, head };
    let params = mote::nn::param_count(&net);
    let config = AdamConfig {
        lr: LR,
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
            let (x, y) = train_batch::<NODES, BATCH>(
                &mut tape,
                epoch,
                step * BATCH,
                &[TOKENS, PIXELS],
                |d| d,
            )
            .or_fail("batch");
            let logits = net.forward(&mut tape, x).or_fail("forward");
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
    let high_water = tape.high_water();

    let correct =
        held_out_correct(&mut tape, start, &net, BATCH, &[TOKENS, PIXELS]).or_fail("eval");
    let held_out = TOTAL - TRAIN;

    let stack = peak_stack(PAINT_BYTES);
    let statics = static_bytes();
    let ram = statics + stack;
    let acc_ok = correct * 100 >= REQUIRED * held_out;
    // A stack that reached the end of the painted area may have gone further: not measured.
    let ram_ok = ram <= RAM_BUDGET && stack < PAINT_BYTES;
    // The arena is measured: the training step's high-water mark must equal it (the held-out
    // images, without gradients, take less).
    let plan_ok = high_water == ARENA;
    let ok = acc_ok && ram_ok && plan_ok;
    let mut l = Line::new();
    l.s(if ok { "lstm: ok" } else { "lstm: FAIL" })
        .s(" held-out accuracy ")
        .pct(correct, held_out)
        .s(" (")
        .u(correct as u64)
        .s("/")
        .u(held_out as u64)
        .s(")")
        .s(" loss ")
        .f(last_loss, 4)
        .s(" params ")
        .u(params as u64)
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
        l.s(" [arena ")
            .u(high_water as u64)
            .s(" floats, not ")
            .u(ARENA as u64)
            .s("]");
    }
    l.print();
    mote_embedded::exit(ok)
}
