//! Inputs at the large end of what is accepted: tens of thousands of classes load, map, train
//! and evaluate in memory linear in the rows and classes (no `classes x classes` confusion
//! matrix, no search of the class list per row), and labels keep the classes they had.
//! How fast is for benchmarks: nothing here times itself.

use mote::{Cpu, Rng};
use mote_runtime::data::{self, CsvOptions, Dataset, Standardizer, Targets, Task};
use mote_runtime::metrics;
use mote_runtime::model::{arena_floats, Model, ModelSpec, OptimizerConfig};
use mote_runtime::train::{self, Prepared, TrainConfig, TrainState};

const CLASSES: usize = 20_000;
const ROWS: usize = 40_000;

/// A CSV of `ROWS` rows, `x1,x2,y`, with `CLASSES` text labels (`k00000` ..), each on two rows.
fn many_classes_csv() -> String {
    let mut csv = String::from("x1,x2,y\n");
    for i in 0..ROWS {
        let k = (i * 7_919) % CLASSES;
        csv.push_str(&format!("{},{},k{k:05}\n", k % 97, i % 13));
    }
    csv
}

fn classes_of(ds: &Dataset) -> &[usize] {
    match &ds.targets {
        Targets::Classes(c) => c,
        Targets::Values(_) => panic!("expected classes"),
    }
}

#[test]
fn twenty_thousand_text_classes_load_in_order() {
    let table = data::parse_csv(&many_classes_csv(), "many.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, None, None).unwrap();
    assert_eq!(ds.task, Task::Classification);
    assert_eq!(ds.classes.len(), CLASSES);
    // Sorted, numbered in order: class i is `k{i:05}`.
    for (i, c) in ds.classes.iter().enumerate() {
        assert_eq!(*c, format!("k{i:05}"));
    }
    // Every row's class is its label.
    let ys = classes_of(&ds);
    assert_eq!(ys.len(), ROWS);
    for (y, l) in ys.iter().zip(&table.labels) {
        assert_eq!(ds.classes[*y], *l);
    }
    // With the class list given (a model's), the same numbering.
    let again = Dataset::from_table(&table, None, Some(&ds.classes)).unwrap();
    assert_eq!(again.targets, ds.targets);
}

/// Numbers however spelt are one class, text is its own; the first spelling in sorted order
/// names the class; a model's class list maps the other spellings to it.
#[test]
fn mixed_number_and_text_labels_keep_their_classes() {
    let csv = "x,y\n1,1.0\n2,b\n3,1\n4,10\n5,a\n6,1e1\n7,b\n8,-0\n9,0.0\n";
    let table = data::parse_csv(csv, "mixed.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, None, None).unwrap();
    // Text sort: "-0" < "1" < "1.0" < "10" < "1e1" < "a" < "b"; "1.0" is "1", "1e1" is "10".
    assert_eq!(ds.classes, ["-0", "1", "10", "a", "b"]);
    assert_eq!(classes_of(&ds), [1, 4, 1, 2, 3, 2, 4, 0, 0]);

    // All numbers: sorted by value, the first of each value to appear naming it.
    let csv = "x,y\n1,2.0\n2,1\n3,2\n4,1.00\n5,-0.0\n6,0\n";
    let table = data::parse_csv(csv, "numbers.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, Some(Task::Classification), None).unwrap();
    assert_eq!(ds.classes, ["-0.0", "1", "2.0"]);
    assert_eq!(classes_of(&ds), [2, 1, 2, 1, 0, 0]);
    // A model's classes, spelt otherwise: the labels map by value.
    let model = ["0".to_string(), "1.0".into(), "2".into()];
    let ds = Dataset::from_table(&table, Some(Task::Classification), Some(&model)).unwrap();
    assert_eq!(classes_of(&ds), [2, 1, 2, 1, 0, 0]);
    let e = Dataset::from_table(&table, Some(Task::Classification), Some(&model[..2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("numbers.csv, line 2, column 2 (y): class '2.0' is not one the model knows"),
        "{e}"
    );
}

/// `classify` keeps three counts per class (no `k x k` matrix: 50,000 classes would be 20 GB of
/// one), and its numbers are the right ones.
#[test]
fn classify_fifty_thousand_classes_counts_per_class() {
    let k = 50_000;
    // Rows of classes 7, 7, 49_999, 3 predicted 7, 3, 49_999, 3.
    let (labels, predicted) = ([7usize, 7, 49_999, 3], [7usize, 3, 49_999, 3]);
    let mut logits = vec![0f32; labels.len() * k];
    for (row, &p) in predicted.iter().enumerate() {
        logits[row * k + p] = 10.0;
    }
    let r = metrics::classify(&logits, k, &labels);
    assert_eq!((r.correct, r.total), (3, 4));
    assert_eq!((r.hits.len(), r.predicted.len(), r.actual.len()), (k, k, k));
    assert_eq!((r.hits[7], r.predicted[7], r.actual[7]), (1, 1, 2));
    assert_eq!((r.hits[3], r.predicted[3], r.actual[3]), (1, 2, 1));
    assert_eq!(
        (r.hits[49_999], r.predicted[49_999], r.actual[49_999]),
        (1, 1, 1)
    );
    assert_eq!(r.actual.iter().sum::<usize>(), 4);
    assert_eq!(r.predicted.iter().sum::<usize>(), 4);
    let scores = r.per_class();
    assert_eq!(scores.len(), k);
    assert_eq!((scores[7].precision, scores[7].recall), (1.0, 0.5));
    assert_eq!((scores[3].precision, scores[3].recall), (0.5, 1.0));
    assert_eq!(scores[0].support, 0);
    // The loss: each row's true class has probability e^10 / (e^10 + k - 1), but row 1's
    // (class 7, predicted 3) has 1 / (e^10 + k - 1).
    let big = 10f64.exp() + (k - 1) as f64;
    let want = (3.0 * big.ln() - 3.0 * 10.0 + big.ln()) / 4.0;
    assert!((r.loss - want).abs() < 1e-3, "{} vs {want}", r.loss);
    let s = metrics::score(&logits, k, &labels);
    assert_eq!((s.loss, s.correct, s.total), (r.loss, r.correct, r.total));
    assert_eq!(s.accuracy(), 0.75);
}

/// A model of 20,000 classes trains an epoch and evaluates: validation is loss and accuracy,
/// as the outputs give them.
#[test]
fn twenty_thousand_classes_train_and_evaluate() {
    let table = data::parse_csv(&many_classes_csv(), "many.csv", &CsvOptions::default()).unwrap();
    let ds = Dataset::from_table(&table, None, None).unwrap();
    let (tr, va): (Vec<usize>, Vec<usize>) = ((0..2_000).collect(), (2_000..2_600).collect());
    let adam = OptimizerConfig::Adam {
        lr: 1e-2,
        weight_decay: 0.0,
        amsgrad: false,
    };
    let spec = ModelSpec {
        sizes: vec![2, CLASSES],
        activation: Default::default(),
        task: ds.task,
        loss: Default::default(),
        classes: ds.classes.clone(),
        class_weights: Vec::new(),
        features: ds.features.clone(),
        label: "y".into(),
        norm: Standardizer::fit(&ds.x, 2, &tr),
        target: (0.0, 1.0),
        conv: vec![],
        image: vec![],
        dropout: 0.0,
    };
    let data = Prepared::new(&ds, &spec, tr, va.clone());
    let mut config = TrainConfig::new("many.csv");
    config.epochs = 1;
    let mut mem = vec![0f32; arena_floats(&spec, &adam, config.batch).unwrap()];
    let mut model = Model::new(Cpu::new(&mut mem), spec, adam, &mut Rng::new(7)).unwrap();
    let mut state = TrainState::new(7);
    let s = train::fit(&mut model, &data, &config, &mut state, &mut [], None).unwrap();
    let last = s.last.unwrap();
    let (val_loss, val_acc) = (last.val_loss.unwrap(), last.val_metric.unwrap());
    assert!(val_loss.is_finite() && val_loss > 0.0, "{val_loss}");
    assert!((0.0..=1.0).contains(&val_acc), "{val_acc}");

    // `evaluate` is the loss and accuracy of the outputs, row by row.
    let (loss, acc) = train::evaluate(&mut model, &data, &va).unwrap();
    assert_eq!((loss, acc), (val_loss, val_acc));
    let mut x = Vec::new();
    for &r in &va {
        x.extend_from_slice(&data.x[r * data.cols..(r + 1) * data.cols]);
    }
    let out = model.outputs(&x, va.len()).unwrap();
    assert_eq!(out.len(), va.len() * CLASSES);
    let labels: Vec<usize> = va.iter().map(|&r| data.y_class[r]).collect();
    let correct = out
        .chunks(CLASSES)
        .zip(&labels)
        .filter(|(row, &y)| mote_runtime::model::argmax(row) == y)
        .count();
    assert_eq!(acc, correct as f64 / va.len() as f64);
    let r = metrics::classify(&out, CLASSES, &labels);
    assert_eq!((r.loss, r.accuracy()), (loss, acc));
    assert_eq!(r.actual.iter().sum::<usize>(), va.len());
}

/// `mote eval` of a model of 40 classes: accuracy and the per-class table as for a few
/// classes, and a line in place of the 40 x 40 confusion matrix; of 10 classes, the matrix.
#[test]
fn eval_leaves_out_the_confusion_matrix_of_many_classes() {
    let dir = std::env::temp_dir().join(format!("mote-large-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mote = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mote"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let (so, se) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "mote {args:?} failed:\n{so}\n{se}");
        so
    };
    for classes in [40, 10] {
        let mut csv = String::from("a,b,y\n");
        for i in 0..400 {
            csv.push_str(&format!("{},{},c{:02}\n", i % classes, i % 7, i % classes));
        }
        std::fs::write(dir.join("c.csv"), csv).unwrap();
        let args = [
            "train", "--data", "c.csv", "--epochs", "1", "-q", "--save", "m.st",
        ];
        mote(&args);
        let ev = mote(&["eval", "--model", "m.st", "--split", "all"]);
        assert!(
            ev.contains("accuracy ") && ev.contains("(400 rows)"),
            "{ev}"
        );
        let matrix = "confusion matrix (rows: true class, columns: predicted):";
        if classes > metrics::CONFUSION_MAX_CLASSES {
            assert!(!ev.contains(matrix), "{ev}");
            assert!(
                ev.contains("confusion matrix left out: 40 classes (it is printed for up to 30)"),
                "{ev}"
            );
        } else {
            assert!(ev.contains(matrix) && !ev.contains("left out"), "{ev}");
        }
        // One line per class in the table (after the matrix, whose rows start alike), then
        // the averages, each with its support.
        for c in 0..classes {
            let mut lines = ev.lines().rev();
            let line = lines.find(|l| l.trim_start().starts_with(&format!("c{c:02} ")));
            let line = line.unwrap_or_else(|| panic!("no line for c{c:02}:\n{ev}"));
            let support = 400 / classes;
            assert!(line.ends_with(&format!(" {support}")), "{line}");
        }
        assert!(ev.contains("weighted avg"), "{ev}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
