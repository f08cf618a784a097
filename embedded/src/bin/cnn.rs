//! Trains a small convolutional net from scratch on the device, on the digits held in flash
//! (the same training / held-out split as `digits`, each record an `[1, 8, 8]` image), with
//! Adam, in a static arena; reports the held-out accuracy, instructions per step and RAM.
//!
//! The net: conv 1->8 3x3 (no padding, 8x8 -> 6x6), max-pool 2 (-> 3x3), bias, ReLU, flatten
//! (72), linear 72->10; batch 4. Bias and ReLU come after the pooling, on a quarter of the
//! values: `relu(pool(conv(x) + b)) == relu(pool(conv(x)) + b) == pool(relu(conv(x) + b))`
//! (a per-channel constant and a monotone function both pass through a maximum), so the net is
//! the usual conv -> bias -> ReLU -> pool one, with four full-resolution tensors (the sum, the
//! ReLU and their gradients) fewer in the arena. What bounds the batch is RAM: every image of a
//! batch holds its full-resolution conv output, its gradient and max-pooling's two im2col
//! buffers at the step's peak (~7 KB an image here), within 64 KB with the parameters, their
//! gradients and Adam's state.

#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::entry;
use mote::{
    Adam, AdamConfig, Conv2d, ConvConfig, Flatten, Linear, MaxPool2d, Module, Optimizer,
    PoolConfig, Relu, Rng, Tape, Var,
};
use mote_embedded::digits::{self, TOTAL, TRAIN};
use mote_embedded::{
    held_out_correct, paint_stack, peak_stack, static_bytes, train_batch, Counter, Fast, Line,
    OrFail, StaticCell, INSNS_PER_TICK,
};

const BATCH: usize = 4;
/// Image side (the digits are 8x8) and classes.
const SIDE: usize = 8;
const CLASSES: usize = 10;
/// Conv channels, kernel side, and the sides of its output (no padding) and of the pooled map.
const CHANNELS: usize = 8;
const KERNEL: usize = 3;
const CONV_SIDE: usize = SIDE - KERNEL + 1;
const POOL_SIDE: usize = CONV_SIDE / 2;
/// Features into the linear layer.
const FEATURES: usize = CHANNELS * POOL_SIDE * POOL_SIDE;
const EPOCHS: usize = 8;
const LR: f64 = 3e-3;
const STEPS: usize = TRAIN / BATCH; // full batches only

/// Parameter floats: conv kernels and bias, linear weight and bias.
const PARAMS: usize = CHANNELS * KERNEL * KERNEL + CHANNELS + FEATURES * CLASSES + CLASSES;
/// Values a step records: conv output, pooled map, bias (reshaped), bias sum, ReLU, flatten
/// (a copy), logits, loss. Each has a gradient of the same size in the backward pass.
const ACTS: usize = BATCH * CHANNELS * CONV_SIDE * CONV_SIDE
    + 4 * BATCH * FEATURES
    + CHANNELS
    + BATCH * CLASSES
    + 1;
/// The arena in floats, counted by hand (the run-time check below requires the tape's
/// high-water mark to equal it): the parameters with their gradients and Adam's two
/// moments, the images and labels, every recorded value and its gradient, and at the peak (the
/// max-pooling backward) its two im2col buffers of `BATCH * CHANNELS * 2 * 2 * 3 * 3` floats
/// (window taps times pooled positions: the conv output's size). The conv's own im2col
/// buffers (`BATCH * 9 * 36`) come and go at smaller points of the step.
const ARENA: usize = 4 * PARAMS
    + BATCH * SIDE * SIDE
    + BATCH
    + 2 * ACTS
    + 2 * BATCH * CHANNELS * CONV_SIDE * CONV_SIDE;
/// 4 parameters, x, labels, conv, pool, bias reshape, add, relu, flatten, linear,
/// cross-entropy.
const NODES: usize = 14;
type Be = Fast<'static>;
const RAM_BUDGET: usize = 64 * 1024;
const STACK_ALLOWANCE: usize = 8 * 1024;
const _: () = assert!(
    ARENA * 4 + size_of::<Tape<Be, NODES>>() + STACK_ALLOWANCE <= RAM_BUDGET,
    "the digits CNN does not fit 64 KB of RAM"
);
const PAINT_BYTES: usize = 16 * 1024;
/// The held-out accuracy required, in percent.
const REQUIRED: usize = 90;

/// A per-channel bias over `[N, C, H, W]`, applied after max pooling: `pool(conv(x) + b)` equals
/// `pool(conv(x)) + b` (a constant per channel moves through a maximum), and adding it to the
/// pooled map keeps two full-resolution tensors (the sum and its gradient) out of the arena.
struct ChannelBias(Var);

impl Module for ChannelBias {
    fn forward<B: mote::Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
    ) -> mote::Result<Var> {
        let b = tape.reshape(self.0, &[self.0.numel(), 1, 1])?;
        tape.add(x, b)
    }
    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        f(self.0);
    }
}

/// A `KERNEL x KERNEL` convolution (PyTorch's default initialisation), split into its kernels
/// and its bias.
fn split_conv(
    tape: &mut Tape<Be, NODES>,
    inputs: usize,
    outputs: usize,
    config: ConvConfig,
    rng: &mut Rng,
) -> (Conv2d, ChannelBias) {
    let c = Conv2d::new(tape, inputs, outputs, [KERNEL; 2], config, 1, true, rng).or_fail("conv");
    let bias = c.bias.unwrap_or_else(|| mote_embedded::exit(false));
    (Conv2d { bias: None, ..c }, ChannelBias(bias))
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
    let (conv, bias) = split_conv(&mut tape, 1, CHANNELS, ConvConfig::default(), &mut rng);
    let model = (
        conv,
        MaxPool2d(PoolConfig::square(2)),
        bias,
        Relu,
        Flatten,
        Linear::new(&mut tape, FEATURES, CLASSES, &mut rng).or_fail("linear"),
    );
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
                &[1, SIDE, SIDE],
                |d| d,
            )
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

    let correct =
        held_out_correct(&mut tape, start, &model, BATCH, &[1, SIDE, SIDE]).or_fail("eval");
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
    l.s(if ok { "cnn: ok" } else { "cnn: FAIL" })
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
        .s(" B (planned ")
        .u((ARENA * 4) as u64)
        .s(")")
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
