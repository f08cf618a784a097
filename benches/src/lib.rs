//! Shared workload definitions for the benches (see `benches/reference.rs`), written once so
//! that every backend runs exactly the same step.
//!
//! The workloads are those of `shared/WORKLOADS.md`:
//!
//! | [`Kind`] | model | loss | batch |
//! | --- | --- | --- | --- |
//! | [`Kind::Seed`] (W-seed) | Linear(8,10) -> ReLU -> Linear(10,1) | MSE | 64 |
//! | [`Kind::Digits`] (W-digits) | Linear(64,32) -> ReLU -> Linear(32,10) | softmax cross-entropy | 32 |
//!
//! both trained with Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8). Inputs and targets are drawn
//! once from a fixed seed; [`Workload::step`] is one whole training step: rewind (which zeroes
//! the gradients), inputs, forward, loss, backward, optimizer update.
//!
//! Everything is generic over [`mote::Backend`], so a later backend reuses it unchanged:
//! ```
//! use mote::{Cpu, Tape};
//! use mote_benches::{Kind, Workload, NODES};
//!
//! let mut mem = vec![0f32; Kind::Seed.floats()]; // sized by `mote::plan::mlp`
//! let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
//! let mut w = Workload::new(Kind::Seed, &mut tape, mote_benches::SEED)?;
//! for _ in 0..3 {
//!     let loss = w.step(&mut tape)?;
//!     assert!(tape.item(loss)?.is_finite());
//! }
//! assert_eq!(tape.high_water(), Kind::Seed.floats()); // the plan is exact
//! # Ok::<(), mote::Error>(())
//! ```
//!
//! [`SquareMatmul`] and [`SquareGemm`] are the matrix-product helpers: through a tape (any
//! backend) and straight on the reference kernel [`mote::ops::matmul::gemm`].

#![deny(missing_docs)]

use mote::ops::matmul::{self, Gemm};
use mote::plan::{self, Loss, Opt};
use mote::{
    Adam, AdamConfig, Backend, Float, HostBackend, Linear, Mark, Module, Optimizer, Relu, Result,
    Rng, Tape, Var,
};

/// The seed every workload draws its parameters, inputs and targets from.
pub const SEED: u64 = 0x5EED;

/// Tape capacity (nodes) that every workload here fits in: 4 parameters + 2 inputs + 4 ops.
pub const NODES: usize = 16;

/// Layer sizes of W-seed.
pub const SEED_SIZES: [usize; 3] = [8, 10, 1];
/// Batch of W-seed.
pub const SEED_BATCH: usize = 64;
/// Arena floats of W-seed with Adam ([`mote::plan::mlp`]).
pub const SEED_FLOATS: usize = plan::mlp(&SEED_SIZES, SEED_BATCH, Loss::Mse, Opt::Adam);

/// Layer sizes of W-digits.
pub const DIGITS_SIZES: [usize; 3] = [64, 32, 10];
/// Batch of W-digits.
pub const DIGITS_BATCH: usize = 32;
/// Arena floats of W-digits with Adam ([`mote::plan::mlp`]).
pub const DIGITS_FLOATS: usize =
    plan::mlp(&DIGITS_SIZES, DIGITS_BATCH, Loss::CrossEntropy, Opt::Adam);

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// W-seed: Linear(8,10) -> ReLU -> Linear(10,1), MSE, batch 64.
    Seed,
    /// W-digits: Linear(64,32) -> ReLU -> Linear(32,10), softmax cross-entropy, batch 32.
    Digits,
}

impl Kind {
    /// Every workload, in table order.
    pub const ALL: [Kind; 2] = [Kind::Seed, Kind::Digits];

    /// The name used in `WORKLOADS.md` and in bench ids.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Seed => "W-seed",
            Kind::Digits => "W-digits",
        }
    }

    /// Layer sizes `[in, hidden, out]`.
    pub const fn sizes(self) -> [usize; 3] {
        match self {
            Kind::Seed => SEED_SIZES,
            Kind::Digits => DIGITS_SIZES,
        }
    }

    /// Rows per step.
    pub const fn batch(self) -> usize {
        match self {
            Kind::Seed => SEED_BATCH,
            Kind::Digits => DIGITS_BATCH,
        }
    }

    /// The loss, as the planner names it.
    pub const fn loss(self) -> Loss {
        match self {
            Kind::Seed => Loss::Mse,
            Kind::Digits => Loss::CrossEntropy,
        }
    }

    /// The exact arena (elements) of setup plus one step: [`mote::plan::mlp`].
    pub const fn floats(self) -> usize {
        match self {
            Kind::Seed => SEED_FLOATS,
            Kind::Digits => DIGITS_FLOATS,
        }
    }

    /// Floating-point operations of the products of a step, the dominant arithmetic: three per
    /// layer (forward, and the two of backward), but for the first layer's input gradient,
    /// which no step computes (its input is data): `2 * batch * (2 * i * h + 3 * h * o)`.
    pub const fn matmul_flops(self) -> usize {
        let [i, h, o] = self.sizes();
        2 * self.batch() * (2 * i * h + 3 * h * o)
    }
}

/// What a step trains against: values shaped like the output (MSE) or one class per row.
#[derive(Clone, Debug, PartialEq)]
enum Targets<T> {
    Values(Vec<T>),
    Labels(Vec<usize>),
}

/// One workload set up on a tape: the model and Adam's state below [`Workload::mark`], and the
/// host-side batch that every step copies in.
#[derive(Clone, Debug)]
pub struct Workload<T: Float> {
    kind: Kind,
    model: (Linear, Relu, Linear),
    opt: Adam,
    mark: Mark,
    /// Arena elements below the mark: parameters, gradients and optimizer state.
    state_len: usize,
    xs: Vec<T>,
    targets: Targets<T>,
}

impl<T: Float> Workload<T> {
    /// Builds `kind` on `tape`: parameters (PyTorch's default initialisation from `seed`),
    /// Adam's state, and a batch of inputs and targets drawn from the same generator. The tape
    /// should be empty and hold at least [`Kind::floats`] elements and [`NODES`] nodes.
    ///
    /// # Errors
    /// [`mote::Error::ArenaFull`] or [`mote::Error::TapeFull`] when the tape is too small.
    pub fn new<B: Backend<Elem = T>, const N: usize>(
        kind: Kind,
        tape: &mut Tape<B, N>,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let [i, h, o] = kind.sizes();
        let model = (
            Linear::new(tape, i, h, &mut rng)?,
            Relu,
            Linear::new(tape, h, o, &mut rng)?,
        );
        let opt = Adam::new(tape, AdamConfig::default())?;
        let mark = tape.mark();
        let state_len = tape.used();
        let batch = kind.batch();
        let (xs, targets) = match kind {
            Kind::Seed => {
                // Uniform inputs in [-1, 1) and a fixed nonlinear function of them.
                let xs: Vec<T> = (0..batch * i)
                    .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
                    .collect();
                let ys = xs
                    .chunks_exact(i)
                    .map(|r| {
                        let r: Vec<f64> = r.iter().map(|v| v.to_f64()).collect();
                        let y =
                            0.5 * r[0] - 0.3 * r[1] + (r[2] + r[3]).max(0.0) + 0.2 * r[4] * r[5];
                        T::from_f64(y)
                    })
                    .collect();
                (xs, Targets::Values(ys))
            }
            Kind::Digits => {
                // Pixel-like inputs in [0, 1) and uniform labels.
                let xs = (0..batch * i)
                    .map(|_| T::from_f32(rng.next_f32()))
                    .collect();
                let labels = (0..batch).map(|_| rng.below(o as u32) as usize).collect();
                (xs, Targets::Labels(labels))
            }
        };
        Ok(Workload {
            kind,
            model,
            opt,
            mark,
            state_len,
            xs,
            targets,
        })
    }

    /// Which workload this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The tape position after setup: each step rewinds to it.
    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// Adam steps taken so far.
    pub fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// Arena elements below [`Workload::mark`]: parameters, their gradients, Adam's state.
    pub fn state_len(&self) -> usize {
        self.state_len
    }

    /// Saves the training state (this value and the arena below the mark) on the host.
    pub fn snapshot<B: HostBackend<Elem = T>, const N: usize>(
        &self,
        tape: &Tape<B, N>,
    ) -> Snapshot<T> {
        let arena = tape.backend().storage();
        Snapshot {
            workload: self.clone(),
            arena: arena.get(..self.state_len).unwrap_or(arena).to_vec(),
        }
    }

    /// Puts the training state back to `snap` (taken from this workload on this tape): the
    /// next step is the same as the first step after the snapshot.
    pub fn restore<B: HostBackend<Elem = T>, const N: usize>(
        &mut self,
        tape: &mut Tape<B, N>,
        snap: &Snapshot<T>,
    ) {
        *self = snap.workload.clone();
        let n = snap.arena.len();
        if let Some(dst) = tape.backend_mut().storage_mut().get_mut(..n) {
            dst.copy_from_slice(&snap.arena);
        }
    }

    /// Exactly one training step: `tape.rewind(mark)` (drops the last step, zeroes the
    /// gradients), the inputs and targets, forward, loss, backward and `opt.step`. Returns the
    /// loss (read it with [`Tape::item`] before the next step).
    ///
    /// # Errors
    /// Whatever an op returns; none on a tape built by [`Workload::new`].
    pub fn step<B: Backend<Elem = T>, const N: usize>(
        &mut self,
        tape: &mut Tape<B, N>,
    ) -> Result<Var> {
        tape.rewind(self.mark)?;
        let [i, _, o] = self.kind.sizes();
        let batch = self.kind.batch();
        let x = tape.input(&[batch, i], &self.xs)?;
        let loss = match &self.targets {
            Targets::Values(ys) => {
                let y = tape.input(&[batch, o], ys)?;
                let pred = self.model.forward(tape, x)?;
                tape.mse(pred, y)?
            }
            Targets::Labels(labels) => {
                let y = tape.labels(labels)?;
                let logits = self.model.forward(tape, x)?;
                tape.cross_entropy(logits, y)?
            }
        };
        tape.backward(loss)?;
        self.opt.step(tape)?;
        Ok(loss)
    }
}

/// A saved training state ([`Workload::snapshot`]), to restart a run from the same point.
///
/// Why: a long run changes the cost of a step. On W-digits, ReLU units that die get exactly
/// zero gradients, Adam's moments then decay geometrically into the subnormal range (`m` after
/// ~700 steps, `v` after ~80 000) and stick there, and every subnormal operation costs the CPU
/// a microcode assist. Restarting every few hundred steps measures the ordinary regime.
#[derive(Clone, Debug)]
pub struct Snapshot<T: Float> {
    workload: Workload<T>,
    arena: Vec<T>,
}

/// `n x n` matrices of uniform values in `[-1, 1)` from `seed`, row-major, `A` then `B`.
pub fn square_operands<T: Float>(n: usize, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = Rng::new(seed);
    let mut draw = || -> Vec<T> {
        (0..n * n)
            .map(|_| T::from_f64(rng.uniform(-1.0, 1.0)))
            .collect()
    };
    let a = draw();
    let b = draw();
    (a, b)
}

/// Floating-point operations of an `n x n` by `n x n` product: `2 n^3`.
pub const fn square_flops(n: usize) -> u64 {
    2 * (n as u64) * (n as u64) * (n as u64)
}

/// Arena elements [`SquareMatmul`] needs: `A`, `B` and `C`.
pub const fn square_matmul_floats(n: usize) -> usize {
    3 * n * n
}

/// A square product `C = A B` through a tape (so through [`Backend::gemm`] of any backend):
/// `A` and `B` are copied in once, below [`SquareMatmul::mark`]; each [`SquareMatmul::run`]
/// rewinds and computes `C` with recording off (`no_grad`).
#[derive(Clone, Copy, Debug)]
pub struct SquareMatmul {
    /// The size.
    pub n: usize,
    a: Var,
    b: Var,
    mark: Mark,
}

impl SquareMatmul {
    /// Copies two `n x n` operands from [`square_operands`] onto `tape` (which needs
    /// [`square_matmul_floats`] elements; no nodes are recorded).
    ///
    /// # Errors
    /// [`mote::Error::ArenaFull`] when the tape is too small; [`mote::Error::BadDims`] for
    /// `n == 0`.
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        n: usize,
        seed: u64,
    ) -> Result<Self> {
        let (a, b) = square_operands::<B::Elem>(n, seed);
        let (a, b) =
            tape.no_grad(|t| Ok::<_, mote::Error>((t.input(&[n, n], &a)?, t.input(&[n, n], &b)?)))?;
        Ok(SquareMatmul {
            n,
            a,
            b,
            mark: tape.mark(),
        })
    }

    /// The tape position after the operands.
    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// Rewinds to [`SquareMatmul::mark`] and computes `C = A B` (`tape.matmul` under
    /// `no_grad`); returns `C`.
    ///
    /// # Errors
    /// Only when the tape is not the one [`SquareMatmul::new`] set up.
    pub fn run<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>) -> Result<Var> {
        tape.rewind(self.mark)?;
        tape.no_grad(|t| t.matmul(self.a, self.b))
    }

    /// `2 n^3`.
    pub fn flops(&self) -> u64 {
        square_flops(self.n)
    }
}

/// A square product `C = A B` straight on the reference kernel [`mote::ops::matmul::gemm`], on
/// host vectors (no tape, no backend): the kernel alone.
#[derive(Clone, Debug)]
pub struct SquareGemm<T: Float> {
    g: Gemm,
    a: Vec<T>,
    b: Vec<T>,
    c: Vec<T>,
}

impl<T: Float> SquareGemm<T> {
    /// Operands from [`square_operands`]; `C` starts zeroed.
    pub fn new(n: usize, seed: u64) -> Self {
        let (a, b) = square_operands(n, seed);
        let g = Gemm {
            batch: 1,
            m: n,
            n,
            k: n,
            a: 0,
            a_trans: false,
            a_batch: 0,
            b: 0,
            b_trans: false,
            b_batch: 0,
            c: 0,
            c_batch: 0,
            accumulate: false,
        };
        SquareGemm {
            g,
            a,
            b,
            c: vec![T::ZERO; n * n],
        }
    }

    /// Same, with either operand stored transposed (the layouts backward passes use).
    pub fn with_layout(n: usize, seed: u64, a_trans: bool, b_trans: bool) -> Self {
        let mut s = Self::new(n, seed);
        s.g.a_trans = a_trans;
        s.g.b_trans = b_trans;
        s
    }

    /// Computes `C = A B` (overwriting `C`); returns `C`.
    pub fn run(&mut self) -> &[T] {
        matmul::gemm(&self.g, &self.a, &self.b, &mut self.c);
        &self.c
    }

    /// `2 n^3`.
    pub fn flops(&self) -> u64 {
        self.g.flops() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mote::Cpu;

    #[test]
    fn plans_are_exact_and_losses_fall() {
        for kind in Kind::ALL {
            let mut mem = vec![0f32; kind.floats()];
            let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
            let mut w = Workload::new(kind, &mut tape, SEED).unwrap();
            let loss = w.step(&mut tape).unwrap();
            let first = tape.item(loss).unwrap();
            let mut last = first;
            for _ in 0..300 {
                let loss = w.step(&mut tape).unwrap();
                last = tape.item(loss).unwrap();
            }
            assert_eq!(tape.high_water(), kind.floats(), "{}", kind.name());
            assert_eq!(w.steps(), 301);
            assert!(last < first, "{}: loss {first} -> {last}", kind.name());
        }
    }

    #[test]
    fn steps_are_deterministic() {
        let run = |kind| {
            let mut mem = vec![0f32; Kind::floats(kind)];
            let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
            let mut w = Workload::new(kind, &mut tape, SEED).unwrap();
            let mut out = 0.0;
            for _ in 0..5 {
                let loss = w.step(&mut tape).unwrap();
                out = tape.item(loss).unwrap();
            }
            out
        };
        for kind in Kind::ALL {
            assert_eq!(run(kind).to_bits(), run(kind).to_bits());
        }
    }

    #[test]
    fn restore_replays_the_same_steps() {
        for kind in Kind::ALL {
            let mut mem = vec![0f32; kind.floats()];
            let mut tape = Tape::<Cpu<f32>, NODES>::new(&mut mem);
            let mut w = Workload::new(kind, &mut tape, SEED).unwrap();
            w.step(&mut tape).unwrap();
            let snap = w.snapshot(&tape);
            let run = |w: &mut Workload<f32>, tape: &mut Tape<Cpu<f32>, NODES>| {
                (0..4)
                    .map(|_| {
                        let loss = w.step(tape).unwrap();
                        tape.item(loss).unwrap().to_bits()
                    })
                    .collect::<Vec<_>>()
            };
            let first = run(&mut w, &mut tape);
            w.restore(&mut tape, &snap);
            assert_eq!(w.steps(), 1);
            assert_eq!(run(&mut w, &mut tape), first, "{}", kind.name());
        }
    }

    #[test]
    fn matmul_helpers_agree_with_a_naive_product() {
        let n = 17;
        let (a, b) = square_operands::<f64>(n, 3);
        let mut want = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                want[i * n + j] = (0..n).map(|p| a[i * n + p] * b[p * n + j]).sum();
            }
        }
        let close = |got: &[f64]| got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-12);

        let mut kernel = SquareGemm::<f64>::new(n, 3);
        assert!(close(kernel.run()));
        assert_eq!(kernel.flops(), square_flops(n));

        let mut mem = vec![0f64; square_matmul_floats(n)];
        let mut tape = Tape::<Cpu<f64>, 4>::new(&mut mem);
        let mm = SquareMatmul::new(&mut tape, n, 3).unwrap();
        for _ in 0..2 {
            let c = mm.run(&mut tape).unwrap();
            assert!(close(tape.data(c).unwrap()));
        }
        assert_eq!(tape.nodes_used(), 0);
        assert_eq!(tape.high_water(), square_matmul_floats(n));
    }
}
