//! A model written as a PyTorch user would write it, with the PyTorch options mote maps:
//! `MaxPool2d(2, ceil_mode=True)`, `LayerNorm([C, H, W])`, `BCEWithLogitsLoss(pos_weight=...)`
//! for a multi-label head with rare positives, and `CrossEntropyLoss(ignore_index=-100)` for a
//! class head whose unsure rows carry no label. Synthetic 7x7 images; Adam; the core's
//! reference backend. Prints both losses as they fall and the heads' held-out scores.
//!
//! Run: `cargo run --release -p mote --example from_pytorch`
//!
//! The PyTorch model this is:
//!
//! ```text
//! body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
//!                      nn.MaxPool2d(2, ceil_mode=True),   # 7x7 -> 4x4 (3x3 rounding down)
//!                      nn.LayerNorm([4, 4, 4]), nn.Flatten())
//! tags, classes = nn.Linear(64, 3), nn.Linear(64, 4)
//! loss = F.binary_cross_entropy_with_logits(tags(h), t, pos_weight=pw)
//!      + F.cross_entropy(classes(h), y, ignore_index=-100)   # y: int64, -100 where unsure
//! opt = torch.optim.Adam(params, lr=3e-3)
//! ```

use mote::{
    Adam, AdamConfig, Conv2d, ConvConfig, Cpu, Flatten, LayerNorm, Linear, MaxPool2d, Module,
    Optimizer, PoolConfig, Relu, Rng, Tape, Var,
};

const SIDE: usize = 7;
const PIXELS: usize = SIDE * SIDE;
const TAGS: usize = 3;
const CLASSES: usize = 4;
const BATCH: usize = 32;

/// One image's multi-label tags (each rare) and its class: the brightest quadrant, or -100
/// (PyTorch's `ignore_index`) when two quadrants are too close to call.
fn targets(x: &[f32]) -> ([f32; TAGS], i64) {
    let at = |r: usize, c: usize| x[r * SIDE + c];
    let mean = |rows: core::ops::Range<usize>, cols: core::ops::Range<usize>| {
        let n = (rows.len() * cols.len()) as f32;
        rows.flat_map(|r| cols.clone().map(move |c| (r, c)))
            .map(|(r, c)| at(r, c))
            .sum::<f32>()
            / n
    };
    let tags = [
        f32::from(at(3, 3) > 0.85),
        f32::from(mean(0..3, 0..3) > 0.6),
        f32::from(mean(6..7, 0..7) > 0.65),
    ];
    let q = [
        mean(0..4, 0..4),
        mean(0..4, 3..7),
        mean(3..7, 0..4),
        mean(3..7, 3..7),
    ];
    let mut order = [0, 1, 2, 3];
    order.sort_by(|&a, &b| q[b].total_cmp(&q[a]));
    let label = if q[order[0]] - q[order[1]] < 0.01 {
        -100
    } else {
        order[0] as i64
    };
    (tags, label)
}

fn main() -> Result<(), mote::Error> {
    let mut rng = Rng::new(7);
    let images = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n * PIXELS)
            .map(|_| rng.uniform(0.0, 1.0) as f32)
            .collect()
    };
    let (train, test) = (images(&mut rng, 2048), images(&mut rng, 512));
    let label = |xs: &[f32]| -> (Vec<f32>, Vec<i64>) {
        let (mut t, mut y) = (Vec::new(), Vec::new());
        for x in xs.chunks(PIXELS) {
            let (tags, class) = targets(x);
            t.extend(tags);
            y.push(class);
        }
        (t, y)
    };
    let ((train_t, train_y), (test_t, test_y)) = (label(&train), label(&test));
    // pos_weight = negatives / positives per tag, as PyTorch's docs suggest.
    let positives: Vec<f32> = (0..TAGS)
        .map(|k| train_t.iter().skip(k).step_by(TAGS).sum::<f32>())
        .collect();
    let count = (train_t.len() / TAGS) as f32;
    let pos_weight: Vec<f32> = positives
        .iter()
        .map(|&p| (count - p) / p.max(1.0))
        .collect();
    let ignored = train_y.iter().filter(|&&y| y < 0).count();
    println!(
        "tags' positive share {:?}, pos_weight {:.1?}; {ignored} of {} class labels ignored",
        positives.iter().map(|p| p / count).collect::<Vec<_>>(),
        pos_weight,
        train_y.len()
    );

    let mut mem = vec![0f32; 1 << 20];
    let mut tape = Tape::<Cpu<f32>, 128>::new(&mut mem);
    let same = ConvConfig {
        padding: [1, 1],
        ..ConvConfig::default()
    };
    let ceil_pool = PoolConfig {
        ceil_mode: true,
        ..PoolConfig::square(2)
    };
    let body = (
        Conv2d::new(&mut tape, 1, 4, [3, 3], same, 1, true, &mut rng)?,
        Relu,
        MaxPool2d(ceil_pool),
        LayerNorm::with_shape(&mut tape, &[4, 4, 4])?,
        Flatten,
    );
    let tags = Linear::new(&mut tape, 64, TAGS, &mut rng)?;
    let classes = Linear::new(&mut tape, 64, CLASSES, &mut rng)?;
    let pw = tape.input(&[TAGS], &pos_weight)?; // below the mark: kept across steps
    let mut opt = Adam::new(
        &mut tape,
        AdamConfig {
            lr: 3e-3,
            ..AdamConfig::default()
        },
    )?;
    let start = tape.mark();

    // Both heads' outputs for a batch of images.
    let forward = |t: &mut Tape<Cpu<f32>, 128>, xs: &[f32]| -> Result<(Var, Var), mote::Error> {
        let x = t.input(&[xs.len() / PIXELS, 1, SIDE, SIDE], xs)?;
        let h = body.forward(t, x)?;
        Ok((tags.forward(t, h)?, classes.forward(t, h)?))
    };
    let mut curve = Vec::new();
    for epoch in 0..8 {
        let (mut bce_sum, mut ce_sum, mut batches) = (0.0, 0.0, 0);
        for b in 0..train_y.len() / BATCH {
            tape.rewind(start)?;
            let rows = b * BATCH..(b + 1) * BATCH;
            let (zt, zc) = forward(&mut tape, &train[rows.start * PIXELS..rows.end * PIXELS])?;
            let t = tape.input(&[BATCH, TAGS], &train_t[rows.start * TAGS..rows.end * TAGS])?;
            // PyTorch's int64 targets, -100 included.
            let y = tape.labels_signed(&train_y[rows])?;
            let bce = tape.bce_with_logits_weighted(zt, t, None, Some(pw))?;
            let ce = tape.cross_entropy_ignore(zc, y, -100, 0.0)?;
            let loss = tape.add(bce, ce)?;
            tape.backward(loss)?;
            opt.step(&mut tape)?;
            bce_sum += tape.item(bce)?;
            ce_sum += tape.item(ce)?;
            batches += 1;
        }
        let (bce, ce) = (bce_sum / batches as f32, ce_sum / batches as f32);
        println!("epoch {epoch}  bce (pos_weight) {bce:.4}  cross-entropy (ignore_index) {ce:.4}");
        curve.push((bce, ce));
    }

    // Held out: each tag's recall and precision at 0.5, and the class accuracy over the rows
    // with a label.
    tape.rewind(start)?;
    let (zt, zc) = tape.no_grad(|t| forward(t, &test))?;
    let (zt, zc) = (tape.data(zt)?.to_vec(), tape.data(zc)?.to_vec());
    for k in 0..TAGS {
        let (mut tp, mut fp, mut pos) = (0, 0, 0);
        for (z, t) in zt
            .iter()
            .skip(k)
            .step_by(TAGS)
            .zip(test_t.iter().skip(k).step_by(TAGS))
        {
            let (said, is) = (*z > 0.0, *t > 0.5);
            tp += usize::from(said && is);
            fp += usize::from(said && !is);
            pos += usize::from(is);
        }
        println!(
            "tag {k}: recall {tp}/{pos}, precision {tp}/{} held out",
            tp + fp
        );
    }
    let (mut right, mut labelled) = (0, 0);
    for (z, &y) in zc.chunks(CLASSES).zip(&test_y) {
        if y < 0 {
            continue;
        }
        let best = (0..CLASSES).fold(0, |b, c| if z[c] > z[b] { c } else { b });
        right += usize::from(best as i64 == y);
        labelled += 1;
    }
    let accuracy = right as f32 / labelled as f32;
    println!(
        "classes: {:.1}% of {labelled} labelled rows held out",
        100.0 * accuracy
    );
    // Both losses fell, and the class head learned (4 classes: chance is 25%).
    let ((b0, c0), (b1, c1)) = (curve[0], curve[curve.len() - 1]);
    if !(b1 < 0.7 * b0 && c1 < 0.5 * c0 && accuracy > 0.7) {
        eprintln!("from_pytorch: the model did not learn ({b0} -> {b1}, {c0} -> {c1})");
        std::process::exit(1);
    }
    Ok(())
}
