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

/// Of the memory available to the process (Linux's `MemAvailable`, or what its cgroup's
/// limit leaves: [`crate::memory::available_bytes`]) when gzip data are unpacked, the share
/// (one in this many bytes) the unpacked data may take: the rest is for what is made of them
/// (a CSV file's text becomes a table of numbers) and for other programs.
const GUNZIP_SHARE_OF_AVAILABLE: u64 = 2;

/// `bytes` for a message: the count, and in MB or GB when large.
fn byte_count(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{b} bytes ({:.1} GB)", b as f64 * 1e-9),
        b if b >= 1_000_000 => format!("{b} bytes ({:.1} MB)", b as f64 * 1e-6),
        b => format!("{b} bytes"),
    }
}

/// Decompresses gzip data.
///
/// What the data unpack to is bounded by half the memory available to the process when they
/// are read (the machine's, or its cgroup's where that is less; a small file can unpack to a
/// thousand times its size): a gzip bomb is refused
/// before it fills the memory, rather than left to the system's out-of-memory killer. Where
/// the available memory cannot be read (not Linux), only a failed allocation stops it.
///
/// # Errors
/// A `Data` error naming `source` when the data is not valid gzip, or when what it unpacks to
/// passes the bound or cannot be allocated; the error says the bound and what to do.
pub fn gunzip(bytes: &[u8], source: &str) -> Result<Vec<u8>> {
    match crate::memory::available_bytes() {
        Some(free) => gunzip_within(
            bytes,
            source,
            free / GUNZIP_SHARE_OF_AVAILABLE,
            &format!(
                "half the memory available to this process, {}",
                byte_count(free)
            ),
        ),
        None => gunzip_within(bytes, source, u64::MAX, "no bound"),
    }
}

/// [`gunzip`] with what the data may unpack to bounded by `limit` bytes, `why` saying where
/// the bound comes from (for the error).
fn gunzip_within(bytes: &[u8], source: &str, limit: u64, why: &str) -> Result<Vec<u8>> {
    let hint = "free memory, or unpack the file beforehand (gunzip -k FILE) and give the \
                unpacked file, which is read without this bound";
    let too_big = |so_far: usize| {
        Error::data(format!(
            "{source}: the gzip data unpack to more than {}, the most read here ({why}); \
             refused after {}",
            byte_count(limit),
            byte_count(so_far as u64)
        ))
        .with_hint(hint)
    };
    let no_memory = |so_far: usize, want: usize| {
        Error::data(format!(
            "{source}: the gzip data unpack to more than this machine could allocate ({} \
             unpacked, {} asked for)",
            byte_count(so_far as u64),
            byte_count(want as u64)
        ))
        .with_hint(hint)
    };
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    // Every member: a file of several gzip members (concatenated `.gz` files) is their
    // concatenation, as `gunzip` reads it.
    let mut dec = flate2::read::MultiGzDecoder::new(bytes);
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::data(format!("{source}: bad gzip data: {e}"))),
        };
        let need = out.len().checked_add(n).filter(|&t| t <= cap);
        let Some(need) = need else {
            return Err(too_big(out.len()));
        };
        // Grown here, doubling but never past the bound (a `Vec`'s own doubling could reserve
        // twice the bound).
        if need > out.capacity() {
            let want = out
                .capacity()
                .saturating_mul(2)
                .max(need)
                .max(1 << 16)
                .min(cap);
            out.try_reserve_exact(want - out.len())
                .map_err(|_| no_memory(out.len(), want))?;
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
    // Text does not start with a zero byte; an IDX file does (its magic's first two bytes).
    if let [0, 0, ..] = bytes[..] {
        return Err(Error::data(format!(
            "{data}: starts as an IDX file does (two zero bytes) but is not one: {}",
            idx::why_not(&bytes)
        ))
        .with_hint("the file may be truncated or of another kind: fetch it again"));
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

/// Guesses the task from raw labels: text labels, or few distinct whole numbers (at most 50
/// distinct spellings, and at most half as many as rows, or 2 below 4 rows), mean
/// classification; other numbers mean regression.
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
    // Each spelling once, in the order of first appearance (the sort below is stable: among
    // spellings that sort as equal, the first to appear comes first, as with every row kept);
    // a number is parsed once per spelling, not per comparison.
    let mut spelt = std::collections::HashSet::new();
    let distinct: Vec<&str> = labels
        .iter()
        .map(String::as_str)
        .filter(|l| spelt.insert(*l))
        .collect();
    let numbers: Option<Vec<f64>> = distinct.iter().map(|l| l.parse::<f64>().ok()).collect();
    let mut c: Vec<&str> = match numbers {
        Some(v) => {
            let mut by_value: Vec<(f64, &str)> = v.into_iter().zip(distinct).collect();
            by_value.sort_by(|a, b| a.0.total_cmp(&b.0));
            by_value.into_iter().map(|(_, l)| l).collect()
        }
        None => {
            let mut d = distinct;
            d.sort_unstable();
            d
        }
    };
    // One name per class, the first in order: spellings of one class need not be neighbours
    // ("-nan" sorts first, "nan" last; "1" and "1.0" among text labels).
    let mut seen = std::collections::HashSet::new();
    c.retain(|l| seen.insert(class_key(l)));
    c.into_iter().map(str::to_owned).collect()
}

/// At most this many class names are listed in an error message (a model may have thousands).
const LISTED_CLASSES: usize = 20;

/// The class names for a message: every one, or the first [`LISTED_CLASSES`] and a count.
fn class_list(classes: &[String]) -> String {
    if classes.len() <= LISTED_CLASSES {
        return classes.join(", ");
    }
    format!(
        "{}, ... and {} more",
        classes[..LISTED_CLASSES].join(", "),
        classes.len() - LISTED_CLASSES
    )
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
/// spelling of NaN is one class, as it is one label). [`class_index`] keys classes by
/// [`class_key`], which is this relation (the same text has the same key).
#[cfg(test)]
fn same_class(a: &str, b: &str) -> bool {
    a == b || class_key(a) == class_key(b)
}

/// Each class's index by its [`class_key`]: a label's class is `index[&class_key(label)]`, in
/// time independent of the number of classes. Where two names of `classes` are one class,
/// the first is its index (as a search from the start finds).
fn class_index(classes: &[String]) -> std::collections::HashMap<ClassKey<'_>, usize> {
    let mut index = std::collections::HashMap::with_capacity(classes.len());
    for (i, c) in classes.iter().enumerate() {
        index.entry(class_key(c)).or_insert(i);
    }
    index
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
                // A label column of IDs or measurements read as classes (a model with an
                // output per value) is refused, with what to do.
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
                let index = class_index(&ds.classes);
                let mut ys = Vec::with_capacity(t.labels.len());
                for (i, l) in t.labels.iter().enumerate() {
                    let k = index.get(&class_key(l)).copied().ok_or_else(|| {
                        Error::data(format!(
                            "{}, line {}, column {} ({label}): class '{l}' is not one the model knows ({})",
                            t.source,
                            at(i),
                            t.label_column,
                            class_list(&ds.classes)
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

    // The names are those of sorting every label (numerically when all are numbers, stably)
    // and keeping the first of each class, as before the spellings were counted once.
    #[test]
    fn class_names_as_sorting_every_label() {
        fn every_label(labels: &[String]) -> Vec<String> {
            let mut c: Vec<String> = labels.to_vec();
            if c.iter().all(|l| l.parse::<f64>().is_ok()) {
                c.sort_by(|a, b| {
                    let x = a.parse::<f64>().unwrap_or(0.0);
                    x.total_cmp(&b.parse::<f64>().unwrap_or(0.0))
                });
            } else {
                c.sort();
            }
            let mut seen = std::collections::HashSet::new();
            let first: Vec<bool> = c.iter().map(|l| seen.insert(class_key(l))).collect();
            let mut first = first.into_iter();
            c.retain(|_| first.next().unwrap_or(false));
            c
        }
        let numbers = [
            "1", "1.0", "01", "+1", "-0", "0", "0.0", "-0.0", "nan", "-nan", "NaN", "inf", "2",
            "2.50", "2.5", "1e0",
        ];
        let mut rng = mote::Rng::new(11);
        for round in 0..200 {
            let n = 1 + rng.next_u32() as usize % 12;
            let labels: Vec<String> = (0..n)
                .map(|_| {
                    let i = rng.next_u32() as usize % (numbers.len() + 3);
                    match numbers.get(i) {
                        Some(l) => l.to_string(),
                        // Text in some rounds only (else all numbers).
                        None if round % 2 == 0 => ["a", "b", "1 "][i - numbers.len()].into(),
                        None => numbers[i % numbers.len()].into(),
                    }
                })
                .collect();
            assert_eq!(class_names(&labels), every_label(&labels), "{labels:?}");
        }
    }

    // What gzip data unpack to is bounded: in `gunzip`, by half the memory available.
    #[test]
    fn gunzip_refuses_data_that_unpack_past_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![7u8; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1 << 12);
        let back = gunzip_within(&gz, "z.gz", 1 << 20, "a test's bound").unwrap();
        assert_eq!(back.len(), 1 << 20);
        assert!(back.iter().all(|&b| b == 7));
        // Grown to the bound and no further.
        assert!(back.capacity() <= 1 << 20, "{}", back.capacity());
        let e = gunzip_within(&gz, "z.gz", (1 << 20) - 1, "a test's bound").unwrap_err();
        assert!(
            e.message
                .starts_with("z.gz: the gzip data unpack to more than 1048575 bytes (1.0 MB)")
                && e.message.contains("(a test's bound)"),
            "{e}"
        );
        assert!(
            e.hint.as_ref().is_some_and(|h| h.contains("gunzip -k")),
            "{e:?}"
        );
        // A bomb (under 128 KB that unpack to 64 MB) under a 1 MB bound: refused once past
        // the bound, with no more than the bound allocated.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            enc.write_all(&[0u8; 1 << 20]).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 17, "{}", bomb.len());
        let e = gunzip_within(&bomb, "bomb.gz", 1 << 20, "a test's bound")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bomb.gz") && e.contains("1048576 bytes"), "{e}");
        // The bound the public function uses, where the machine says what is available: the
        // digits unpack under it.
        if let Some(free) = crate::memory::available_bytes() {
            assert!(free > 0);
            assert!(gunzip(DIGITS_GZ, "digits").is_ok());
        }
    }

    // A label's class by the index is the class the search from the start found (the same
    // text, or the same number however spelt; NaNs one class), for labels and class lists of
    // numbers, text and both.
    #[test]
    fn class_index_agrees_with_a_search() {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let labels = strings(&[
            "1", "1.0", "01", "1e0", "+1", "a", "A", "b", "-0", "0", "0.0", "nan", "NaN", "-nan",
            "inf", "infinity", "-inf", "2", "2.5", " 2", "x y", "",
        ]);
        let lists = [
            class_names(&labels),
            class_names(&strings(&["1.0", "0", "-0.0", "2", "nan"])),
            // Names that are one class twice over: the first is found.
            strings(&["1", "a", "1.0", "0", "-0", "NaN", "nan"]),
        ];
        for classes in &lists {
            let index = class_index(classes);
            for l in &labels {
                let search = classes.iter().position(|c| same_class(c, l));
                assert_eq!(
                    index.get(&class_key(l)).copied(),
                    search,
                    "{l} in {classes:?}"
                );
            }
        }
        // Text among the labels: sorted as text, each class named by its first spelling.
        assert_eq!(
            lists[0],
            strings(&[
                "", " 2", "+1", "-0", "-inf", "-nan", "2", "2.5", "A", "a", "b", "inf", "x y"
            ])
        );
        let t = Table {
            source: "t.csv".into(),
            rows: labels.len(),
            feature_names: vec!["x".into()],
            features: vec![0.0; labels.len()],
            label_name: Some("y".into()),
            label_column: 2,
            labels: labels.clone(),
            lines: (2..2 + labels.len()).collect(),
        };
        let ds = Dataset::from_table(&t, Some(Task::Classification), None).unwrap();
        let Targets::Classes(ys) = &ds.targets else {
            panic!("classes")
        };
        let want: Vec<usize> = labels
            .iter()
            .map(|l| ds.classes.iter().position(|c| same_class(c, l)).unwrap())
            .collect();
        assert_eq!(*ys, want);
        // A label not of a model's classes is named, with its line; a long class list is cut.
        let many: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        let e = Dataset::from_table(&t, Some(Task::Classification), Some(&many))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.csv, line 2, column 2 (y): class '1' is not one the model knows (c0, ")
                && e.contains("c19, ... and 5 more)"),
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
