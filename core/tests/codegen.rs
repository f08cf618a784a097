//! Generated steps (`Replay::write_rust`): the checked-in `codegen/steps.rs` is what the
//! recordings below write today (regenerate with `MOTE_BLESS=1 cargo test -p mote --test
//! codegen`), and running the generated functions from the recorded starting arena equals
//! running the steps eagerly on the tape, bit for bit, on the reference backend.

use mote::replay::{write_rust_array, Replay};
use mote::{
    Adam, AdamConfig, Cpu, Error, HostBackend, Linear, Module, Optimizer, RmsProp, RmsPropConfig,
    Rng, Sgd, SgdConfig, Sigmoid, Tanh, Tape, Var,
};

#[allow(clippy::all)]
mod generated {
    include!("codegen/steps.rs");
}

type Be<'a> = Replay<Cpu<'a, f32>, 1024>;
const ARENA: usize = 1024;
const STEPS: usize = 20;

/// Which step: a classifier (tanh, cross-entropy with label smoothing, Adam with weight decay,
/// one batch), a regressor (sigmoid, MSE, SGD with Nesterov momentum, one batch), a mixed one
/// that records the other call families (softmax, broadcast binary ops, an axis reduction,
/// transpose copies; Adam), or the regressor with centered RMSprop and momentum.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Adam,
    Sgd,
    Mixed,
    Rms,
}

/// The RMSprop of `Kind::Rms`.
const RMS: RmsPropConfig = RmsPropConfig {
    lr: 0.01,
    alpha: 0.9,
    eps: 1e-8,
    weight_decay: 1e-3,
    momentum: 0.5,
    centered: true,
};

struct Setup<'a> {
    tape: Tape<Be<'a>, 24>,
    adam: Option<Adam>,
    sgd: Option<Sgd>,
    rms: Option<RmsProp>,
    model: (Linear, Tanh, Linear),
    x: Var,
    t: Var,
}

fn setup(mem: &mut [f32], kind: Kind) -> Setup<'_> {
    let mut tape = Tape::with_backend(Replay::new(Cpu::new(mem)));
    let mut rng = Rng::new(3);
    let out = match kind {
        Kind::Adam | Kind::Mixed => 3,
        Kind::Sgd | Kind::Rms => 1,
    };
    let model = (
        Linear::new(&mut tape, 4, 6, &mut rng).unwrap(),
        Tanh,
        Linear::new(&mut tape, 6, out, &mut rng).unwrap(),
    );
    let (mut adam, mut sgd, mut rms) = (None, None, None);
    match kind {
        Kind::Adam | Kind::Mixed => {
            let c = AdamConfig {
                lr: 0.05,
                weight_decay: 1e-3,
                ..AdamConfig::default()
            };
            adam = Some(Adam::new(&mut tape, c).unwrap());
        }
        Kind::Sgd => {
            let c = SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                ..SgdConfig::default()
            };
            sgd = Some(Sgd::new(&mut tape, c).unwrap());
        }
        Kind::Rms => rms = Some(RmsProp::new(&mut tape, RMS).unwrap()),
    }
    let xs: Vec<f32> = (0..8 * 4).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let x = tape.input(&[8, 4], &xs).unwrap();
    let t = if kind == Kind::Mixed {
        let ys: Vec<f32> = xs.chunks(4).map(|r| 0.3 + 0.1 * r[2]).collect();
        tape.input(&[8, 1], &ys).unwrap()
    } else if kind == Kind::Adam {
        let labels: Vec<usize> = xs
            .chunks(4)
            .map(|r| usize::from(r[0] > 0.0) + usize::from(r[1] > 0.0))
            .collect();
        tape.labels(&labels).unwrap()
    } else {
        let ys: Vec<f32> = xs.chunks(4).map(|r| 0.5 + 0.4 * (r[0] * r[1])).collect();
        tape.input(&[8, 1], &ys).unwrap()
    };
    Setup {
        tape,
        adam,
        sgd,
        rms,
        model,
        x,
        t,
    }
}

impl Setup<'_> {
    fn loss(&mut self, kind: Kind) -> mote::Result<Var> {
        let y = self.model.forward(&mut self.tape, self.x)?;
        if kind == Kind::Mixed {
            let t = &mut self.tape;
            let p = t.softmax(y, 1)?;
            let z = t.mul(p, y)?;
            let zt = t.transpose(z, 0, 1)?;
            let back = t.transpose(zt, 0, 1)?;
            let m = t.mean_axis(back, 1)?;
            let m = t.reshape(m, &[8, 1])?;
            let d = t.sub(m, self.t)?;
            let sq = t.mul(d, d)?;
            t.mean(sq)
        } else if kind == Kind::Adam {
            self.tape.cross_entropy_smoothed(y, self.t, 0.1)
        } else {
            let p = Sigmoid.forward(&mut self.tape, y)?;
            self.tape.mse(p, self.t)
        }
    }

    fn step(&mut self, kind: Kind, start: mote::Mark) -> Var {
        self.tape.rewind(start).unwrap();
        let loss = self.loss(kind).unwrap();
        self.tape.backward(loss).unwrap();
        match kind {
            Kind::Adam | Kind::Mixed => self.adam.as_mut().unwrap().step(&mut self.tape).unwrap(),
            Kind::Sgd => self.sgd.as_mut().unwrap().step(&mut self.tape).unwrap(),
            Kind::Rms => self.rms.as_mut().unwrap().step(&mut self.tape).unwrap(),
        }
        loss
    }
}

/// The starting arena (after set-up), the source of the recorded step (the second one), and
/// the arena after `STEPS` eager steps with the loss's offset.
fn trace(kind: Kind, name: &str) -> (Vec<f32>, String, Vec<f32>, usize) {
    let mut mem = vec![0f32; ARENA];
    let mut s = setup(&mut mem, kind);
    let init = s.tape.backend().storage().to_vec();
    let start = s.tape.mark();
    let mut src = String::new();
    let mut loss = None;
    for i in 0..STEPS {
        if i == 1 {
            s.tape.backend_mut().record();
        }
        loss = Some(s.step(kind, start));
        if i == 1 {
            s.tape.backend_mut().stop().unwrap();
            s.tape.backend().write_rust(&mut src, name).unwrap();
        }
    }
    let offset = loss.unwrap().offset();
    drop(s);
    (init, src, mem, offset)
}

fn source() -> String {
    let mut out = String::from(
        "// Generated by core/tests/codegen.rs with `Replay::write_rust` and `write_rust_array`.\n\n",
    );
    for (kind, name, init) in [
        (Kind::Adam, "adam_step", "ADAM_INIT"),
        (Kind::Sgd, "sgd_step", "SGD_INIT"),
        (Kind::Mixed, "mixed_step", "MIXED_INIT"),
        (Kind::Rms, "rms_step", "RMS_INIT"),
    ] {
        let (start, src, _, _) = trace(kind, name);
        write_rust_array(&mut out, init, &start).unwrap();
        out.push('\n');
        out.push_str(&src);
        out.push('\n');
    }
    out
}

#[test]
fn checked_in_source_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/codegen/steps.rs");
    let now = source();
    if std::env::var_os("MOTE_BLESS").is_some() {
        std::fs::write(path, &now).unwrap();
    }
    let was = std::fs::read_to_string(path).unwrap();
    assert!(
        was == now,
        "tests/codegen/steps.rs is stale: MOTE_BLESS=1 cargo test -p mote --test codegen"
    );
}

fn run_generated(kind: Kind, init: &[f32]) -> Vec<f32> {
    let mut mem = vec![0f32; ARENA];
    mem[..init.len()].copy_from_slice(init);
    let mut cpu = Cpu::new(&mut mem);
    match kind {
        Kind::Adam | Kind::Mixed => {
            let c = AdamConfig {
                lr: 0.05,
                weight_decay: 1e-3,
                ..AdamConfig::default()
            };
            let mut adam = Adam::detached(c, false).unwrap();
            for _ in 0..STEPS {
                let u = adam.next_update();
                if kind == Kind::Mixed {
                    generated::mixed_step(&mut cpu, &u).unwrap();
                } else {
                    generated::adam_step(&mut cpu, &u).unwrap();
                }
            }
        }
        Kind::Sgd => {
            let c = SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                ..SgdConfig::default()
            };
            let mut sgd = Sgd::detached(c).unwrap();
            for _ in 0..STEPS {
                generated::sgd_step(&mut cpu, &sgd.next_update()).unwrap();
            }
        }
        Kind::Rms => {
            let mut rms = RmsProp::detached(RMS).unwrap();
            for _ in 0..STEPS {
                generated::rms_step(&mut cpu, &rms.next_update()).unwrap();
            }
        }
    }
    mem
}

#[test]
fn generated_steps_equal_eager_steps_bit_for_bit() {
    for (kind, init) in [
        (Kind::Adam, &generated::ADAM_INIT[..]),
        (Kind::Sgd, &generated::SGD_INIT[..]),
        (Kind::Mixed, &generated::MIXED_INIT[..]),
        (Kind::Rms, &generated::RMS_INIT[..]),
    ] {
        let (_, _, eager, loss_at) = trace(kind, "x");
        let gen = run_generated(kind, init);
        // The whole arena: parameters, gradients, optimizer state, the last step's values.
        let same = eager
            .iter()
            .zip(&gen)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "generated steps differ from eager ones");
        let first = match kind {
            Kind::Adam => 1.0986,
            Kind::Sgd | Kind::Rms => 0.02,
            Kind::Mixed => 1.0,
        };
        assert!(
            eager[loss_at] < first,
            "the steps did not train: {}",
            eager[loss_at]
        );
    }
}

#[test]
fn write_rust_refuses_what_it_cannot_write() {
    let mut mem = vec![0f32; 256];
    let mut tape = Tape::<Be, 8>::with_backend(Replay::new(Cpu::new(&mut mem)));
    let mut out = String::new();
    let err = tape.backend().write_rust(&mut out, "step").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let x = tape.input(&[2], &[1.0, 2.0]).unwrap();
    tape.backend_mut().record();
    tape.mul_scalar(x, f32::NAN).unwrap();
    tape.backend_mut().stop().unwrap();
    for name in [
        "", "1step", "a-b", "_", "fn", "loop", "self", "gen", "Ok", "Some", "None",
    ] {
        let err = tape.backend().write_rust(&mut out, name).unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
    }
    let err = tape.backend().write_rust(&mut out, "step").unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    assert!(out.is_empty(), "nothing is written on error");
    let err = write_rust_array(&mut out, "A", &[f32::INFINITY]).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    for name in ["", "1A", "A B", "const"] {
        let err = write_rust_array(&mut out, name, &[1.0]).unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
    }
    assert!(out.is_empty(), "nothing is written on error");
    // A loss's recorded smoothing too (the tape refuses it; a backend call does not check).
    let mut mem = vec![0f32; 64];
    let mut be: Be = Replay::new(Cpu::new(&mut mem));
    be.record();
    let (p, t) = (
        mote::View {
            offset: 0,
            shape: mote::Shape::new(&[1, 2]).unwrap(),
        },
        mote::View {
            offset: 2,
            shape: mote::Shape::new(&[1]).unwrap(),
        },
    );
    mote::Backend::loss(
        &mut be,
        mote::ops::loss::LossOp::CrossEntropySmoothed(f32::NAN),
        2,
        p,
        t,
        3,
    )
    .unwrap();
    be.stop().unwrap();
    let err = be.write_rust(&mut out, "step").unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    // Updates of two optimizers: the written function takes one.
    let mut mem = vec![0f32; 64];
    let mut be: Be = Replay::new(Cpu::new(&mut mem));
    be.record();
    let mut adam = Adam::detached(AdamConfig::default(), false)
        .unwrap()
        .next_update();
    (adam.param, adam.grad, adam.m, adam.v, adam.len) = (0, 4, 8, 12, 4);
    mote::Backend::adam(&mut be, &adam).unwrap();
    let mut sgd = Sgd::detached(SgdConfig::default()).unwrap().next_update();
    (sgd.param, sgd.grad, sgd.len) = (16, 20, 4);
    mote::Backend::sgd(&mut be, &sgd).unwrap();
    be.stop().unwrap();
    let err = be.write_rust(&mut out, "step").unwrap_err();
    assert!(
        err.to_string().contains("more than one kind of optimizer"),
        "{err}"
    );
    assert!(out.is_empty(), "nothing is written on error");
}
