//! Data: CSV files with a header, the bundled digits, IDX files (MNIST's format), the
//! train/validation split and standardisation.
//!
//! Loading goes in two stages: a [`Table`] holds the numeric features and the raw label cells
//! as read (with the line of every row, for error messages); [`Dataset::from_table`] turns the
//! labels into class indices or regression targets.
//!
//! ```
//! use mote_runtime::data::{parse_csv, CsvOptions, Dataset};
//! let csv = "x1,x2,y\n1,2,a\n3,4,b\n";
//! let table = parse_csv(csv, "example.csv", &CsvOptions::default())?;
//! let ds = Dataset::from_table(&table, None, None)?;
//! assert_eq!((ds.rows, ds.cols), (2, 2));
//! # Ok::<(), mote_runtime::Error>(())
//! ```

mod csv;
mod prep;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::idx;

pub use csv::parse_csv;
pub(crate) use prep::standardise;
pub use prep::{split, Standardizer};

/// The bundled digits data set (UCI, CC BY 4.0; see `data/README.md`), gzip'd CSV.
pub const DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Classification (class labels, softmax cross-entropy) or regression (a number; MSE or another
/// [`crate::model::RegressionLoss`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One class label per row.
    Classification,
    /// One real-valued target per row.
    Regression,
}

impl Task {
    /// `"classification"` or `"regression"`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }
}

/// Which column holds the label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelChoice {
    /// The last column (the default).
    #[default]
    Last,
    /// A column by name, or by index (0-based; negative counts from the end) when no column
    /// has that name.
    Column(String),
    /// A column by name, which may be absent (prediction input).
    Optional(String),
    /// No label column.
    None,
}

/// How to read a CSV file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvOptions {
    /// The label column.
    pub label: LabelChoice,
    /// The feature columns by name, in this order (every other column but the label is
    /// ignored); `None`: every column but the label, in file order.
    pub features: Option<Vec<String>>,
}

/// Numeric features and raw labels, as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Where the data came from (a path, or `digits`), for messages.
    pub source: String,
    /// Rows.
    pub rows: usize,
    /// Feature names, in column order.
    pub feature_names: Vec<String>,
    /// Features, `rows x feature_names.len()`, row-major.
    pub features: Vec<f32>,
    /// The label column's name, when there is one.
    pub label_name: Option<String>,
    /// The label column's 1-based position in the file (for messages).
    pub label_column: usize,
    /// The raw label cell of each row (empty without a label column).
    pub labels: Vec<String>,
    /// The 1-based line of each row in the file (for messages).
    pub lines: Vec<usize>,
}

/// The most classes a classification data set may have (ImageNet-21k's 21,841 fit).
pub const MAX_CLASSES: usize = 32_768;

/// Decompresses gzip data.
///
/// # Errors
/// A `Data` error naming `source` when the data is not valid gzip, or when what it unpacks to
/// would not fit in the machine's memory (a small file can unpack to a thousand times its size).
pub fn gunzip(bytes: &[u8], source: &str) -> Result<Vec<u8>> {
    gunzip_within(
        bytes,
        source,
        crate::model::host_memory_bytes().unwrap_or(u64::MAX),
    )
}

/// [`gunzip`] with what the data may unpack to bounded by `limit` bytes.
fn gunzip_within(bytes: &[u8], source: &str, limit: u64) -> Result<Vec<u8>> {
    let too_big = |so_far: usize| {
        Error::data(format!(
            "{source}: the gzip data unpack to more than this machine's memory holds ({:.1} GB \
             so far)",
            so_far as f64 * 1e-9
        ))
    };
    // Every member: a file of several gzip members (concatenated `.gz` files) is their
    // concatenation, as `gunzip` reads it.
    let mut dec = flate2::read::MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::data(format!("{source}: bad gzip data: {e}"))),
        };
        if (out.len() + n) as u64 > limit || out.try_reserve(n).is_err() {
            return Err(too_big(out.len()));
        }
        out.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    Ok(out)
}

/// The bundled digits (1,797 8x8 images, features `p0..p63`, label `label`), read with `opts`.
///
/// # Errors
/// Only when `opts` names columns the digits do not have.
pub fn digits(opts: &CsvOptions) -> Result<Table> {
    let bytes = gunzip(DIGITS_GZ, "digits")?;
    let text = String::from_utf8(bytes).map_err(|_| Error::data("digits: not UTF-8"))?;
    parse_csv(&text, "digits", opts)
}

/// Loads a data set by name (`digits`) or path: a CSV file (optionally gzip'd) or an IDX
/// image file (optionally gzip'd), whose labels come from `idx_labels` or, when that is
/// `None`, from the file beside it named with `labels-idx1` for `images-idx3`.
///
/// # Errors
/// A missing or unreadable file, and everything [`parse_csv`] and [`idx::table`] return.
pub fn load(data: &str, opts: &CsvOptions, idx_labels: Option<&Path>) -> Result<Table> {
    let no_labels_file = |what: &str| {
        Error::invalid(format!(
            "--idx-labels applies to IDX image files, and {data} is {what}"
        ))
        .with_hint("drop --idx-labels: the labels are a column of the file")
    };
    if data == "digits" {
        if idx_labels.is_some() {
            return Err(no_labels_file("the bundled CSV data set"));
        }
        return digits(opts);
    }
    let path = Path::new(data);
    let raw = std::fs::read(path).map_err(|e| {
        let err = Error::io(path, &e);
        if e.kind() == std::io::ErrorKind::NotFound {
            err.with_hint("give --data digits (bundled) or the path of a CSV or IDX file")
        } else {
            err
        }
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip(&raw, data)?
    } else {
        raw
    };
    if idx::is_idx(&bytes) {
        // IDX's fourth byte counts the dimensions: one is a labels file (MNIST's idx1).
        if bytes.get(3) == Some(&1) {
            return Err(Error::data(format!(
                "{data} is an IDX labels file (one value per record), not images"
            ))
            .with_hint("give the images file as --data and this one as --idx-labels"));
        }
        let labels_path = match idx_labels {
            Some(p) => p.to_path_buf(),
            None => idx::sibling_labels(path).ok_or_else(|| {
                Error::data(format!("{data}: an IDX image file needs its labels"))
                    .with_hint("pass --idx-labels PATH (MNIST's *-labels-idx1-ubyte file)")
            })?,
        };
        let table = idx::table(&bytes, data, &labels_path)?;
        // Features are matched by name in a CSV file; images have only their pixels' places,
        // so a model's features must be exactly these.
        return match &opts.features {
            Some(want) if *want != table.feature_names => Err(Error::data(format!(
                "{data}: its images have {} values each, and the model was trained on {} \
                 features{}",
                table.feature_names.len(),
                want.len(),
                if want.first().is_some_and(|f| f.starts_with("px")) {
                    String::new()
                } else {
                    format!(" ({}, ... from a CSV file)", want.first().map_or("", |f| f))
                }
            ))
            .with_hint("give images of the size the model was trained on")),
            _ => Ok(table),
        };
    }
    if idx_labels.is_some() {
        return Err(no_labels_file("not one"));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..at];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let col = 1 + at
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        Error::data(format!(
            "{data}, line {line}, byte {col} of the line (byte {at} of the file): not UTF-8 text"
        ))
        .with_hint("give a CSV file with a header line (UTF-8), or an IDX file")
    })?;
    parse_csv(&text, data, opts)
}

/// Class indices or regression targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class index per row, below the number of classes.
    Classes(Vec<usize>),
    /// One target per row.
    Values(Vec<f32>),
}

/// Features and targets, ready for training.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where the data came from.
    pub source: String,
    /// Rows.
    pub rows: usize,
    /// Features per row.
    pub cols: usize,
    /// Features, `rows x cols`, row-major.
    pub x: Vec<f32>,
    /// Targets (empty when the table had no label column).
    pub targets: Targets,
    /// The class names, for classification (index `i` is class `classes[i]`).
    pub classes: Vec<String>,
    /// The task.
    pub task: Task,
    /// Feature names, in column order.
    pub features: Vec<String>,
    /// The label column's name (empty without one).
    pub label: String,
}

fn is_integer(s: &str) -> bool {
    s.parse::<f64>()
        .is_ok_and(|v| v.is_finite() && v.fract() == 0.0)
}

/// Guesses the task from raw labels: text labels, or few distinct integers (at most 50, and
/// fewer than half the rows), mean classification; other numbers mean regression.
pub fn infer_task(labels: &[String]) -> Task {
    if labels.iter().any(|l| l.parse::<f64>().is_err()) {
        return Task::Classification;
    }
    let mut distinct: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if labels.iter().all(|l| is_integer(l))
        && distinct.len() <= 50
        && distinct.len() * 2 <= labels.len().max(4)
    {
        Task::Classification
    } else {
        Task::Regression
    }
}

/// The sorted distinct labels (numerically when all are numbers).
pub fn class_names(labels: &[String]) -> Vec<String> {
    let mut c: Vec<String> = labels.to_vec();
    if c.iter().all(|l| l.parse::<f64>().is_ok()) {
        c.sort_by(|a, b| {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            x.total_cmp(&y)
        });
    } else {
        c.sort();
    }
    // One name per class, the first in order: spellings of one class need not be neighbours
    // ("-nan" sorts first, "nan" last; "1" and "1.0" among text labels).
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = c.iter().map(|l| seen.insert(class_key(l))).collect();
    let mut first = first.into_iter();
    c.retain(|_| first.next().unwrap_or(false));
    c
}

/// What names a class: the number (one NaN; 0 and -0 one) or the text.
#[derive(Hash, PartialEq, Eq)]
enum ClassKey<'a> {
    Nan,
    Number(u64),
    Text(&'a str),
}

fn class_key(l: &str) -> ClassKey<'_> {
    match l.parse::<f64>() {
        Ok(x) if x.is_nan() => ClassKey::Nan,
        Ok(x) => ClassKey::Number((x + 0.0).to_bits()),
        Err(_) => ClassKey::Text(l),
    }
}

/// Whether two labels name one class: the same text, or the same number (`1` and `1.0`; every
/// spelling of NaN is one class, as it is one label).
fn same_class(a: &str, b: &str) -> bool {
    a == b || class_key(a) == class_key(b)
}

impl Dataset {
    /// Turns a table's labels into targets. `task` overrides the guess of [`infer_task`];
    /// `classes` fixes the class list (a trained model's), else the table's distinct labels.
    ///
    /// # Errors
    /// A `Data` error naming the line for a label that is not a number (regression) or not one
    /// of `classes`; fewer than two classes.
    pub fn from_table(
        t: &Table,
        task: Option<Task>,
        classes: Option<&[String]>,
    ) -> Result<Dataset> {
        let task = task.unwrap_or_else(|| infer_task(&t.labels));
        let label = t.label_name.clone().unwrap_or_default();
        let at = |i: usize| t.lines.get(i).copied().unwrap_or(0);
        let mut ds = Dataset {
            source: t.source.clone(),
            rows: t.rows,
            cols: t.feature_names.len(),
            x: t.features.clone(),
            targets: Targets::Values(Vec::new()),
            classes: Vec::new(),
            task,
            features: t.feature_names.clone(),
            label: label.clone(),
        };
        match task {
            Task::Regression => {
                let mut v = Vec::with_capacity(t.labels.len());
                for (i, l) in t.labels.iter().enumerate() {
                    match l.parse::<f32>() {
                        Ok(x) if x.is_finite() => v.push(x),
                        _ => {
                            return Err(Error::data(format!(
                                "{}, line {}, column {} ({label}): '{l}' is not a number, and a regression target must be",
                                t.source, at(i), t.label_column
                            ))
                            .with_hint("use --task classification for class labels"))
                        }
                    }
                }
                ds.targets = Targets::Values(v);
            }
            Task::Classification => {
                ds.classes = match classes {
                    Some(c) => c.to_vec(),
                    None => class_names(&t.labels),
                };
                if classes.is_none() && ds.classes.len() < 2 && !t.labels.is_empty() {
                    return Err(Error::data(format!(
                        "{}: the label column '{label}' has only one class",
                        t.source
                    ))
                    .with_hint("classification needs at least two classes; check --label"));
                }
                // A label column of IDs or measurements read as classes: refused before the
                // O(rows x classes) lookup and a classes-squared confusion matrix.
                if classes.is_none() && ds.classes.len() > MAX_CLASSES {
                    return Err(Error::data(format!(
                        "{}: the label column '{label}' has {} distinct values, more than the \
                         {MAX_CLASSES} classes a model here can have",
                        t.source,
                        ds.classes.len()
                    ))
                    .with_hint(
                        "check --label (is it an ID column?); for a number to predict, give \
                         --task regression",
                    ));
                }
                let mut ys = Vec::with_capacity(t.labels.len());
                for (i, l) in t.labels.iter().enumerate() {
                    let k = ds.classes.iter().position(|c| same_class(c, l)).ok_or_else(|| {
                        Error::data(format!(
                            "{}, line {}, column {} ({label}): class '{l}' is not one the model knows ({})",
                            t.source,
                            at(i),
                            t.label_column,
                            ds.classes.join(", ")
                        ))
                    })?;
                    ys.push(k);
                }
                ds.targets = Targets::Classes(ys);
            }
        }
        Ok(ds)
    }

    /// The class labels, for a stratified [`split`] (`None` for regression).
    pub fn class_labels(&self) -> Option<&[usize]> {
        match &self.targets {
            Targets::Classes(c) => Some(c),
            Targets::Values(_) => None,
        }
    }

    /// Whether the data set has targets.
    pub fn has_targets(&self) -> bool {
        match &self.targets {
            Targets::Classes(c) => !c.is_empty(),
            Targets::Values(v) => !v.is_empty(),
        }
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        self.x
            .get(i * self.cols..(i + 1) * self.cols)
            .unwrap_or(&[])
    }
}

/// A CRC-32 of a data set's features and targets, as 8 hex digits.
pub fn fingerprint(ds: &Dataset) -> String {
    let mut bytes: Vec<u8> = ds.x.iter().flat_map(|v| v.to_le_bytes()).collect();
    match &ds.targets {
        Targets::Classes(c) => bytes.extend(c.iter().flat_map(|&v| (v as u32).to_le_bytes())),
        Targets::Values(v) => bytes.extend(v.iter().flat_map(|v| v.to_le_bytes())),
    }
    format!("{:08x}", mote::blob::crc32(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One class per number or text, whatever the spellings and wherever they sort.
    #[test]
    fn class_names_merge_spellings_of_one_class() {
        let names = |l: &[&str]| class_names(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            names(&["nan", "1", "-nan", "1.0", "-0", "0"]),
            ["-nan", "-0", "1"]
        );
        assert_eq!(names(&["b", "1.0", "a", "1", "b"]), ["1", "a", "b"]);
    }

    // What gzip data unpack to is bounded: the limit is the machine's memory in `gunzip`.
    #[test]
    fn gunzip_refuses_data_that_unpack_past_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![7u8; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1 << 12);
        assert_eq!(gunzip_within(&gz, "z.gz", 1 << 20).unwrap().len(), 1 << 20);
        let e = gunzip_within(&gz, "z.gz", (1 << 20) - 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("z.gz") && e.contains("more than this machine's memory holds"),
            "{e}"
        );
    }

    #[test]
    fn digits_load_and_infer() {
        let t = digits(&CsvOptions::default()).unwrap();
        assert_eq!((t.rows, t.feature_names.len()), (1797, 64));
        let ds = Dataset::from_table(&t, None, None).unwrap();
        assert_eq!(ds.task, Task::Classification);
        assert_eq!(ds.classes.len(), 10);
    }

    #[test]
    fn regression_inferred_for_reals() {
        let labels: Vec<String> = ["0.5", "1.25", "3", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(infer_task(&labels), Task::Regression);
    }
}
