//! The weight blob: round trips in each dtype; every corruption and truncation is its own error
//! and changes nothing.

use mote::blob::{self, crc32, Blob, Dtype};
use mote::{Cpu, Error, Linear, Rng, Tape, Var};
use proptest::prelude::*;

fn model(tape: &mut Tape<Cpu<'_, f32>, 16>, seed: u64) -> (Linear, Linear) {
    let mut rng = Rng::new(seed);
    (
        Linear::new(tape, 4, 3, &mut rng).unwrap(),
        Linear::new(tape, 3, 2, &mut rng).unwrap(),
    )
}

fn params(tape: &Tape<Cpu<'_, f32>, 16>) -> Vec<f32> {
    tape.params()
        .flat_map(|p| tape.data(p).unwrap().to_vec())
        .collect()
}

fn saved(dtype: Dtype) -> (Vec<u8>, Vec<f32>) {
    let mut mem = vec![0f32; 256];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    model(&mut tape, 1);
    let mut out = vec![0u8; blob::size(&tape, dtype)];
    let n = blob::save(&tape, dtype, &mut out).unwrap();
    assert_eq!(n, out.len());
    (out, params(&tape))
}

#[test]
fn crc32_is_the_standard_one() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn round_trips_in_every_dtype() {
    for (dtype, tol) in [(Dtype::F32, 0.0), (Dtype::F16, 1e-3), (Dtype::Bf16, 8e-3)] {
        let (bytes, want) = saved(dtype);
        let mut mem = vec![0f32; 256];
        let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
        model(&mut tape, 2);
        assert_ne!(params(&tape), want);
        blob::load(&mut tape, &bytes).unwrap();
        for (a, b) in params(&tape).iter().zip(&want) {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{dtype:?}: {a} vs {b}"
            );
        }
        let parsed = Blob::parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed.dtype(), dtype);
        assert_eq!(parsed.shape(0).unwrap().dims(), &[3, 4]);
        // Parameters can also be created straight from the blob (firmware does this).
        let mut mem2 = vec![0f32; 256];
        let mut t2 = Tape::<Cpu<f32>, 16>::new(&mut mem2);
        let mut vars = [Var::clone(&tape.params().next().unwrap()); 4];
        // Too few slots for the blob's tensors: refused, nothing made.
        let nodes = t2.nodes_used();
        assert_eq!(
            parsed.create_params(&mut t2, false, &mut vars[..3]),
            Err(mote::Error::LengthMismatch {
                op: "create_params: slots for the blob's tensors",
                expected: 4,
                got: 3,
            })
        );
        assert_eq!(t2.nodes_used(), nodes);
        assert_eq!(parsed.create_params(&mut t2, false, &mut vars).unwrap(), 4);
        assert_eq!(params(&t2), params(&tape));
        assert!(!t2.is_trainable(vars[0]));
    }
    // f16 halves the bytes of the weights (23 elements here); the header stays.
    assert_eq!(
        saved(Dtype::F32).0.len() - saved(Dtype::F16).0.len(),
        2 * 23
    );
}

fn load_err(bytes: &[u8]) -> Error {
    let mut mem = vec![0f32; 256];
    let mut tape = Tape::<Cpu<f32>, 16>::new(&mut mem);
    model(&mut tape, 3);
    let before = params(&tape);
    let err = blob::load(&mut tape, bytes).unwrap_err();
    assert_eq!(params(&tape), before, "a failed load changes nothing");
    err
}

#[test]
fn each_corruption_has_its_error() {
    let (good, _) = saved(Dtype::F32);
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(load_err(&b), Error::BadMagic);
    let mut b = good.clone();
    b[4] = 2;
    assert_eq!(load_err(&b), Error::UnsupportedVersion { found: 2 });
    let mut b = good.clone();
    b[6] = 9;
    assert_eq!(load_err(&b), Error::UnknownDtype { code: 9 });
    let mut b = good.clone();
    let last_data = b.len() - 5;
    b[last_data] ^= 0x40;
    assert!(matches!(load_err(&b), Error::ChecksumMismatch { .. }));
    assert_eq!(
        load_err(&good[..good.len() - 1]),
        Error::Truncated {
            needed: good.len(),
            got: good.len() - 1
        }
    );
    // A blob of another model: wrong count, then wrong shape.
    let mut mem = vec![0f32; 256];
    let mut other = Tape::<Cpu<f32>, 16>::new(&mut mem);
    Linear::new(&mut other, 4, 3, &mut Rng::new(0)).unwrap();
    let mut small = vec![0u8; blob::size(&other, Dtype::F32)];
    blob::save(&other, Dtype::F32, &mut small).unwrap();
    assert_eq!(
        load_err(&small),
        Error::TensorCountMismatch {
            expected: 4,
            found: 2
        }
    );
    let mut mem = vec![0f32; 256];
    let mut other = Tape::<Cpu<f32>, 16>::new(&mut mem);
    let mut rng = Rng::new(0);
    Linear::new(&mut other, 4, 3, &mut rng).unwrap();
    Linear::new(&mut other, 3, 3, &mut rng).unwrap();
    let mut wrong = vec![0u8; blob::size(&other, Dtype::F32)];
    blob::save(&other, Dtype::F32, &mut wrong).unwrap();
    assert!(matches!(
        load_err(&wrong),
        Error::BlobShapeMismatch { index: 2, .. }
    ));
    // Saving into a short buffer is an error, not a partial write past its end.
    let mut short = vec![0u8; 10];
    assert!(matches!(
        blob::save(&other, Dtype::F32, &mut short),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let (good, _) = saved(Dtype::Bf16);
    for len in 0..good.len() {
        let e = load_err(&good[..len]);
        assert!(
            matches!(e, Error::Truncated { .. } | Error::BadMagic),
            "len {len}: {e:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes and random single-byte flips never panic and never load.
    #[test]
    fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), at in any::<usize>(), flip in 1u8..) {
        let _ = Blob::parse(&bytes);
        let (mut good, _) = saved(Dtype::F16);
        let i = at % good.len();
        good[i] ^= flip;
        prop_assert!(Blob::parse(&good).is_err());
    }
}
