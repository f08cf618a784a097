//! Recurrent layers: [`Lstm`] and [`Gru`] (PyTorch's `nn.LSTM` and `nn.GRU` with
//! `batch_first=True`, one layer), in one direction or both ([`Bidirectional`]:
//! `bidirectional=True`), unrolled on the tape, so that the gradient flows back through time
//! by the tape's own backward; and their single steps ([`Lstm::step`], [`Gru::step`]:
//! PyTorch's `nn.LSTMCell`, `nn.GRUCell`).
//!
//! Inputs are `[N, L, In]`; the output is every step's hidden state, `[N, L, H]`. PyTorch's
//! gate order and parameter shapes: `weight_ih` `[4H, In]`, `weight_hh` `[4H, H]`, `bias_ih` and
//! `bias_hh` `[4H]` (`3H` rows each for the GRU); every parameter drawn from `U(-1/sqrt(H),
//! 1/sqrt(H))`, as PyTorch's. Stack layers in a tuple for PyTorch's `num_layers` (without its
//! dropout between layers).
//!
//! The inputs' projections for every step are one product; each step then records 17 nodes
//! (the LSTM; 19 for the GRU), and 2 more to join the outputs pairwise (a copy of each step's
//! state about `log2(L)` times), so a sequence of length `L` takes `19 L + 1` nodes of the
//! tape from a zero state (`21 L + 1` for the GRU; one fewer from a given state) and
//! `O(N H L log L)` elements of the arena.
//!
//! ```
//! use mote::nn::rnn::Lstm;
//! use mote::{Cpu, Module, Rng, Tape};
//!
//! let mut mem = vec![0f32; 1 << 15];
//! let mut tape = Tape::<Cpu<f32>, 512>::new(&mut mem);
//! let lstm = Lstm::new(&mut tape, 3, 5, &mut Rng::new(0))?; // nn.LSTM(3, 5, batch_first=True)
//! let x = tape.input(&[2, 7, 3], &[0.1; 2 * 7 * 3])?;
//! let (y, (h, c)) = lstm.run(&mut tape, x, None)?; // output, (h_n, c_n)
//! assert_eq!(y.shape().dims(), &[2, 7, 5]);
//! assert_eq!(h.shape().dims(), &[2, 5]);
//! let same = lstm.forward(&mut tape, x)?; // the output only
//! # let _ = (c, same);
//! # Ok::<(), mote::Error>(())
//! ```

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::nn::Module;
use crate::rng::Rng;
use crate::tape::{Tape, Var};

/// The weights of one recurrent layer with `gates` gates: input and hidden projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecurrentWeights {
    /// `weight_ih`, `[gates H, In]`.
    pub weight_ih: Var,
    /// `weight_hh`, `[gates H, H]`.
    pub weight_hh: Var,
    /// `bias_ih`, `[gates H]`.
    pub bias_ih: Option<Var>,
    /// `bias_hh`, `[gates H]`.
    pub bias_hh: Option<Var>,
}

impl RecurrentWeights {
    /// PyTorch's initialisation: every parameter from `U(-1/sqrt(H), 1/sqrt(H))`, in its
    /// order (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`). All or nothing.
    fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        gates: usize,
        input: usize,
        hidden: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        if input == 0 || hidden == 0 {
            return Err(Error::InvalidArgument {
                what: "rnn: input_size and hidden_size must be at least 1",
            });
        }
        let k = 1.0 / libm::sqrt(hidden as f64);
        let rows = gates.saturating_mul(hidden);
        tape.all_or_nothing(|t| {
            let mut draw = || B::Elem::from_f64(rng.uniform(-k, k));
            let weight_ih = t.param_with(&[rows, input], &mut draw)?;
            let weight_hh = t.param_with(&[rows, hidden], &mut draw)?;
            let (bias_ih, bias_hh) = if bias {
                (
                    Some(t.param_with(&[rows], &mut draw)?),
                    Some(t.param_with(&[rows], &mut draw)?),
                )
            } else {
                (None, None)
            };
            Ok(RecurrentWeights {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
            })
        })
    }

    /// The hidden width `H` (`weight_hh`'s columns).
    pub fn hidden_size(&self) -> usize {
        self.weight_hh.shape().dim(1)
    }

    /// The input width (`weight_ih`'s columns).
    pub fn input_size(&self) -> usize {
        self.weight_ih.shape().dim(1)
    }

    fn visit(&self, f: &mut dyn FnMut(Var)) {
        f(self.weight_ih);
        f(self.weight_hh);
        if let Some(b) = self.bias_ih {
            f(b);
        }
        if let Some(b) = self.bias_hh {
            f(b);
        }
    }

    /// Checks `x` `[N, L, In]` against the weights (`gates` of them) and `h` (`[N, H]`, when
    /// given); returns `(N, L, H)`.
    fn check(&self, op: &'static str, gates: usize, x: Var, states: &[Var]) -> Result<[usize; 3]> {
        let (xs, h) = (x.shape(), self.hidden_size());
        let rows = gates.checked_mul(h);
        let ok = xs.rank() == 3
            && xs.dim(2) == self.input_size()
            && rows == Some(self.weight_ih.shape().dim(0))
            && rows == Some(self.weight_hh.shape().dim(0));
        if !ok {
            return Err(Error::ShapeMismatch {
                op,
                lhs: xs,
                rhs: self.weight_ih.shape(),
            });
        }
        let n = xs.dim(0);
        for s in states {
            if s.shape().dims() != [n as u32, h as u32] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: xs,
                    rhs: s.shape(),
                });
            }
        }
        Ok([n, xs.dim(1), h])
    }

    /// `x W_ih^T + b_ih` for every step at once: `[N, L, gates H]`.
    fn project_inputs<B: Backend, const N: usize>(
        &self,
        t: &mut Tape<B, N>,
        x: Var,
    ) -> Result<Var> {
        t.linear(x, self.weight_ih, self.bias_ih)
    }

    /// Step `k`'s row of the projected inputs, `[N, gates H]`.
    fn step_input<B: Backend, const N: usize>(
        t: &mut Tape<B, N>,
        projected: Var,
        k: usize,
    ) -> Result<Var> {
        let s = projected.shape();
        let row = t.slice(projected, 1, k, 1)?;
        t.reshape(row, &[s.dim(0), s.dim(2)])
    }
}

/// Every step's state `[N, H]` joined into `[N, L, H]` as they come, pairwise: a stack of
/// joined runs whose lengths are distinct powers of two (the binary counter), so each state is
/// copied about `log2(L)` times and no list of `L` handles is kept.
///
/// `reverse`: the states come from the last step to the first (a reverse direction), and the
/// result is still in the steps' order.
struct Joiner {
    runs: [Option<(Var, usize)>; 34],
    len: usize,
    reverse: bool,
}

impl Joiner {
    fn new(reverse: bool) -> Self {
        Joiner {
            runs: [None; 34],
            len: 0,
            reverse,
        }
    }

    /// `first` then `second` along the steps.
    fn join<B: Backend, const N: usize>(
        t: &mut Tape<B, N>,
        first: Var,
        second: Var,
    ) -> Result<Var> {
        t.concat(first, second, 1)
    }

    fn push<B: Backend, const N: usize>(&mut self, t: &mut Tape<B, N>, h: Var) -> Result<()> {
        let s = h.shape();
        let mut run = (t.reshape(h, &[s.dim(0), 1, s.dim(1)])?, 1);
        // Merge while the run below is as long as this one.
        while let Some(Some((below, n))) = self.len.checked_sub(1).and_then(|i| self.runs.get(i)) {
            if *n != run.1 {
                break;
            }
            // Pushed earlier: earlier steps, or (in reverse) later ones.
            let joined = if self.reverse {
                Self::join(t, run.0, *below)?
            } else {
                Self::join(t, *below, run.0)?
            };
            run = (joined, n + run.1);
            self.len -= 1;
        }
        let slot = self.runs.get_mut(self.len).ok_or(Error::InvalidArgument {
            what: "rnn: sequence too long",
        })?;
        *slot = Some(run);
        self.len += 1;
        Ok(())
    }

    /// The whole sequence, `[N, L, H]`.
    fn finish<B: Backend, const N: usize>(self, t: &mut Tape<B, N>) -> Result<Var> {
        let mut out: Option<Var> = None;
        // From the last run pushed to the first.
        for run in self.runs.iter().take(self.len).rev().flatten() {
            out = Some(match out {
                None => run.0,
                Some(pushed_later) if self.reverse => Self::join(t, pushed_later, run.0)?,
                Some(pushed_later) => Self::join(t, run.0, pushed_later)?,
            });
        }
        out.ok_or(Error::InvalidArgument {
            what: "rnn: an empty sequence",
        })
    }
}

/// PyTorch's `nn.LSTM(input_size, hidden_size, bias=bias, batch_first=True)` (one layer, one
/// direction): per step, gates `i, f, g, o` from `x W_ih^T + b_ih + h W_hh^T + b_hh` (in that
/// order), `c' = sigmoid(f) c + sigmoid(i) tanh(g)`, `h' = sigmoid(o) tanh(c')`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lstm {
    /// The weights, four gates.
    pub weights: RecurrentWeights,
}

impl Lstm {
    /// A layer with biases and PyTorch's initialisation.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero size; as [`Tape::param`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Self::with_bias(tape, input_size, hidden_size, true, rng)
    }

    /// [`Lstm::new`] with or without biases (PyTorch's `bias=False`).
    ///
    /// # Errors
    /// As [`Lstm::new`].
    pub fn with_bias<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        let weights = RecurrentWeights::new(tape, 4, input_size, hidden_size, bias, rng)?;
        Ok(Lstm { weights })
    }

    /// One step (PyTorch's `nn.LSTMCell`): `x` `[N, In]` and the state `(h, c)` (`[N, H]`
    /// each) to the next state.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not fit the weights; as [`Tape::unary`].
    pub fn step<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        (h, c): (Var, Var),
    ) -> Result<(Var, Var)> {
        let xs = x.shape();
        let x3 = [xs.dim(0), 1, xs.dim(1)];
        if xs.rank() != 2 {
            return Err(Error::ShapeMismatch {
                op: "lstm_cell",
                lhs: xs,
                rhs: self.weights.weight_ih.shape(),
            });
        }
        tape.all_or_nothing(|t| {
            let x = t.reshape(x, &x3)?;
            self.weights.check("lstm_cell", 4, x, &[h, c])?;
            let p = self.weights.project_inputs(t, x)?;
            let p = RecurrentWeights::step_input(t, p, 0)?;
            self.cell(t, p, (h, c))
        })
    }

    /// A step from the projected input `p` `[N, 4H]`.
    fn cell<B: Backend, const N: usize>(
        &self,
        t: &mut Tape<B, N>,
        p: Var,
        (h, c): (Var, Var),
    ) -> Result<(Var, Var)> {
        let w = &self.weights;
        let hh = w.hidden_size();
        let r = t.linear(h, w.weight_hh, w.bias_hh)?;
        let gates = t.add(p, r)?;
        let gate = |t: &mut Tape<B, N>, k: usize| t.slice(gates, 1, k * hh, hh);
        let (i, f, g, o) = (gate(t, 0)?, gate(t, 1)?, gate(t, 2)?, gate(t, 3)?);
        let (i, f, g, o) = (t.sigmoid(i)?, t.sigmoid(f)?, t.tanh(g)?, t.sigmoid(o)?);
        let kept = t.mul(f, c)?;
        let new = t.mul(i, g)?;
        let c = t.add(kept, new)?;
        let tc = t.tanh(c)?;
        let h = t.mul(o, tc)?;
        Ok((h, c))
    }

    /// The layer over a sequence `x` `[N, L, In]` from the state `h0 = (h_0, c_0)` (`[N, H]`
    /// each; zeros when `None`): every step's hidden state `[N, L, H]` and the last state
    /// `(h_n, c_n)`. PyTorch's `output, (h_n, c_n) = lstm(x, (h_0, c_0))` with its states'
    /// leading dimension of 1 dropped. All or nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not fit; as [`Tape::unary`].
    #[allow(clippy::type_complexity)]
    pub fn run<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<(Var, Var)>,
    ) -> Result<(Var, (Var, Var))> {
        self.run_direction(tape, x, h0, false)
    }

    /// [`Lstm::run`] from the last step to the first (the reverse direction of PyTorch's
    /// `bidirectional=True`): the output is still in the steps' order (step `k`'s state after
    /// reading steps `L - 1` down to `k`), and the last state is the one after step 0.
    ///
    /// # Errors
    /// As [`Lstm::run`].
    #[allow(clippy::type_complexity)]
    pub fn run_reverse<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<(Var, Var)>,
    ) -> Result<(Var, (Var, Var))> {
        self.run_direction(tape, x, h0, true)
    }

    #[allow(clippy::type_complexity)]
    fn run_direction<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<(Var, Var)>,
        reverse: bool,
    ) -> Result<(Var, (Var, Var))> {
        let states: &[Var] = match &h0 {
            Some((h, c)) => &[*h, *c][..],
            None => &[],
        };
        let [n, len, hh] = self.weights.check("lstm", 4, x, states)?;
        tape.all_or_nothing(|t| {
            let mut state = match h0 {
                Some(s) => s,
                None => {
                    let z = t.full(&[n, hh], B::Elem::ZERO)?;
                    (z, z)
                }
            };
            let p = self.weights.project_inputs(t, x)?;
            let mut out = Joiner::new(reverse);
            for i in 0..len {
                let k = if reverse { len - 1 - i } else { i };
                let pk = RecurrentWeights::step_input(t, p, k)?;
                state = self.cell(t, pk, state)?;
                out.push(t, state.0)?;
            }
            Ok((out.finish(t)?, state))
        })
    }
}

impl Module for Lstm {
    /// [`Lstm::run`] from zeros: the output only.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        Ok(self.run(tape, x, None)?.0)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.weights.visit(f);
    }
}

/// PyTorch's `nn.GRU(input_size, hidden_size, bias=bias, batch_first=True)` (one layer, one
/// direction): per step, with `x W_ih^T + b_ih` split into `x_r, x_z, x_n` and `h W_hh^T +
/// b_hh` into `h_r, h_z, h_n`: `r = sigmoid(x_r + h_r)`, `z = sigmoid(x_z + h_z)`, `n = tanh(x_n
/// + r h_n)`, `h' = (1 - z) n + z h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gru {
    /// The weights, three gates.
    pub weights: RecurrentWeights,
}

impl Gru {
    /// A layer with biases and PyTorch's initialisation.
    ///
    /// # Errors
    /// As [`Lstm::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Self::with_bias(tape, input_size, hidden_size, true, rng)
    }

    /// [`Gru::new`] with or without biases.
    ///
    /// # Errors
    /// As [`Lstm::new`].
    pub fn with_bias<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        let weights = RecurrentWeights::new(tape, 3, input_size, hidden_size, bias, rng)?;
        Ok(Gru { weights })
    }

    /// One step (PyTorch's `nn.GRUCell`): `x` `[N, In]` and `h` `[N, H]` to the next `h`.
    ///
    /// # Errors
    /// As [`Lstm::step`].
    pub fn step<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h: Var,
    ) -> Result<Var> {
        let xs = x.shape();
        let x3 = [xs.dim(0), 1, xs.dim(1)];
        if xs.rank() != 2 {
            return Err(Error::ShapeMismatch {
                op: "gru_cell",
                lhs: xs,
                rhs: self.weights.weight_ih.shape(),
            });
        }
        tape.all_or_nothing(|t| {
            let x = t.reshape(x, &x3)?;
            self.weights.check("gru_cell", 3, x, &[h])?;
            let p = self.weights.project_inputs(t, x)?;
            let p = RecurrentWeights::step_input(t, p, 0)?;
            self.cell(t, p, h)
        })
    }

    /// A step from the projected input `p` `[N, 3H]`.
    fn cell<B: Backend, const N: usize>(&self, t: &mut Tape<B, N>, p: Var, h: Var) -> Result<Var> {
        let w = &self.weights;
        let hh = w.hidden_size();
        let r = t.linear(h, w.weight_hh, w.bias_hh)?;
        let part = |t: &mut Tape<B, N>, v: Var, k: usize| t.slice(v, 1, k * hh, hh);
        let (xr, xz, xn) = (part(t, p, 0)?, part(t, p, 1)?, part(t, p, 2)?);
        let (hr, hz, hn) = (part(t, r, 0)?, part(t, r, 1)?, part(t, r, 2)?);
        let rg = t.add(xr, hr)?;
        let rg = t.sigmoid(rg)?;
        let zg = t.add(xz, hz)?;
        let zg = t.sigmoid(zg)?;
        let gated = t.mul(rg, hn)?;
        let ng = t.add(xn, gated)?;
        let ng = t.tanh(ng)?;
        // (1 - z) n + z h = n + z (h - n).
        let d = t.sub(h, ng)?;
        let d = t.mul(zg, d)?;
        t.add(ng, d)
    }

    /// The layer over a sequence `x` `[N, L, In]` from `h0` (`[N, H]`; zeros when `None`):
    /// every step's hidden state `[N, L, H]` and the last, `h_n`. PyTorch's `output, h_n =
    /// gru(x, h_0)` with the state's leading dimension of 1 dropped. All or nothing.
    ///
    /// # Errors
    /// As [`Lstm::run`].
    pub fn run<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<Var>,
    ) -> Result<(Var, Var)> {
        self.run_direction(tape, x, h0, false)
    }

    /// [`Gru::run`] from the last step to the first (see [`Lstm::run_reverse`]).
    ///
    /// # Errors
    /// As [`Lstm::run`].
    pub fn run_reverse<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<Var>,
    ) -> Result<(Var, Var)> {
        self.run_direction(tape, x, h0, true)
    }

    fn run_direction<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<Var>,
        reverse: bool,
    ) -> Result<(Var, Var)> {
        let states: &[Var] = match &h0 {
            Some(h) => core::slice::from_ref(h),
            None => &[],
        };
        let [n, len, hh] = self.weights.check("gru", 3, x, states)?;
        tape.all_or_nothing(|t| {
            let mut h = match h0 {
                Some(h) => h,
                None => t.full(&[n, hh], B::Elem::ZERO)?,
            };
            let p = self.weights.project_inputs(t, x)?;
            let mut out = Joiner::new(reverse);
            for i in 0..len {
                let k = if reverse { len - 1 - i } else { i };
                let pk = RecurrentWeights::step_input(t, p, k)?;
                h = self.cell(t, pk, h)?;
                out.push(t, h)?;
            }
            Ok((out.finish(t)?, h))
        })
    }
}

impl Module for Gru {
    /// [`Gru::run`] from zeros: the output only.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        Ok(self.run(tape, x, None)?.0)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.weights.visit(f);
    }
}

/// A bidirectional layer (PyTorch's `bidirectional=True`): a layer over the steps in order and
/// another over them in reverse, their outputs joined along the features (`[N, L, 2H]`, the
/// forward direction's first), their last states returned forward first (PyTorch's `h_n[0]`,
/// `h_n[1]`). Parameters are visited forward first, as PyTorch's `..._l0` then `..._l0_reverse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bidirectional<R> {
    /// The direction over the steps in order.
    pub forward: R,
    /// The direction over the steps in reverse.
    pub reverse: R,
}

impl Bidirectional<Lstm> {
    /// PyTorch's `nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)`:
    /// two layers with PyTorch's initialisation, the forward one drawn first.
    ///
    /// # Errors
    /// As [`Lstm::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        tape.all_or_nothing(|t| {
            Ok(Bidirectional {
                forward: Lstm::new(t, input_size, hidden_size, rng)?,
                reverse: Lstm::new(t, input_size, hidden_size, rng)?,
            })
        })
    }

    /// Both directions over `x` `[N, L, In]` from `h0` (each direction's `(h, c)`; zeros when
    /// `None`): the output `[N, L, 2H]` and each direction's last state, forward first.
    ///
    /// # Errors
    /// As [`Lstm::run`].
    #[allow(clippy::type_complexity)]
    pub fn run<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<[(Var, Var); 2]>,
    ) -> Result<(Var, [(Var, Var); 2])> {
        let [f0, r0] = match h0 {
            Some([f, r]) => [Some(f), Some(r)],
            None => [None, None],
        };
        tape.all_or_nothing(|t| {
            let (yf, sf) = self.forward.run(t, x, f0)?;
            let (yr, sr) = self.reverse.run_reverse(t, x, r0)?;
            Ok((t.concat(yf, yr, 2)?, [sf, sr]))
        })
    }
}

impl Bidirectional<Gru> {
    /// PyTorch's `nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)`.
    ///
    /// # Errors
    /// As [`Lstm::new`].
    pub fn new<B: Backend, const N: usize>(
        tape: &mut Tape<B, N>,
        input_size: usize,
        hidden_size: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        tape.all_or_nothing(|t| {
            Ok(Bidirectional {
                forward: Gru::new(t, input_size, hidden_size, rng)?,
                reverse: Gru::new(t, input_size, hidden_size, rng)?,
            })
        })
    }

    /// Both directions over `x` from `h0` (each direction's `h`; zeros when `None`): the output
    /// `[N, L, 2H]` and each direction's last state, forward first.
    ///
    /// # Errors
    /// As [`Lstm::run`].
    pub fn run<B: Backend, const N: usize>(
        &self,
        tape: &mut Tape<B, N>,
        x: Var,
        h0: Option<[Var; 2]>,
    ) -> Result<(Var, [Var; 2])> {
        let [f0, r0] = match h0 {
            Some([f, r]) => [Some(f), Some(r)],
            None => [None, None],
        };
        tape.all_or_nothing(|t| {
            let (yf, hf) = self.forward.run(t, x, f0)?;
            let (yr, hr) = self.reverse.run_reverse(t, x, r0)?;
            Ok((t.concat(yf, yr, 2)?, [hf, hr]))
        })
    }
}

impl Module for Bidirectional<Lstm> {
    /// [`Bidirectional::<Lstm>::run`] from zeros: the output only.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        Ok(self.run(tape, x, None)?.0)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.forward.visit_params(f);
        self.reverse.visit_params(f);
    }
}

impl Module for Bidirectional<Gru> {
    /// [`Bidirectional::<Gru>::run`] from zeros: the output only.
    fn forward<B: Backend, const N: usize>(&self, tape: &mut Tape<B, N>, x: Var) -> Result<Var> {
        Ok(self.run(tape, x, None)?.0)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Var)) {
        self.forward.visit_params(f);
        self.reverse.visit_params(f);
    }
}
