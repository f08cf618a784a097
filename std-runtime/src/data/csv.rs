//! The CSV reader (RFC 4180): a header line, comma-separated cells, double quotes around cells
//! that hold commas or line breaks, lines ending in LF, CRLF or CR; every error names the
//! file, line and column.

use super::{CsvOptions, LabelChoice, Table};
use crate::error::{Error, Result};

/// The cells of one record, read a line at a time: commas separate, double quotes protect
/// commas and line breaks (RFC 4180: a quoted cell may span lines), `""` is a quote inside
/// quotes.
#[derive(Default)]
struct Record {
    cells: Vec<String>,
    cell: String,
    /// Whether a quoted cell is open, and the line and 1-based column where it opened.
    quoted: bool,
    quote_at: (usize, usize),
}

impl Record {
    /// Reads one more line of the record, line number `at`; whether the record goes on (a
    /// quoted cell is open at the line's end, so the line break is part of it).
    fn feed(&mut self, at: usize, line: &str) -> bool {
        if self.quoted {
            self.cell.push('\n');
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (self.quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    self.cell.push('"');
                }
                (true, '"') => self.quoted = false,
                (true, c) => self.cell.push(c),
                (false, '"') if self.cell.trim().is_empty() => {
                    self.cell.clear();
                    self.quoted = true;
                    self.quote_at = (at, self.cells.len() + 1);
                }
                (false, ',') => self.cells.push(std::mem::take(&mut self.cell)),
                (false, c) => self.cell.push(c),
            }
        }
        self.quoted
    }

    fn finish(mut self) -> Vec<String> {
        self.cells.push(self.cell);
        self.cells
    }
}

/// A record and the line it starts on, or the line and column where a quoted cell still open
/// at the end of the text opened.
type Read = std::result::Result<(usize, Vec<String>), (usize, usize)>;

/// The records of CSV text, each with the line it starts on, blank lines between records
/// skipped.
struct Records<'a> {
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
}

impl Iterator for Records<'_> {
    type Item = Read;

    fn next(&mut self) -> Option<Self::Item> {
        let (i, first) = self.lines.by_ref().find(|(_, l)| !l.trim().is_empty())?;
        let mut r = Record::default();
        let mut open = r.feed(i + 1, first);
        while open {
            match self.lines.next() {
                Some((j, l)) => open = r.feed(j + 1, l),
                None => return Some(Err(r.quote_at)),
            }
        }
        Some(Ok((i + 1, r.finish())))
    }
}

/// The records of `text` (lines ending in LF, CRLF, or CR alone as old Mac files do).
fn records(text: &str) -> Records<'_> {
    Records {
        lines: text.lines().enumerate(),
    }
}

/// A cell for a message: its line breaks escaped, and cut to its first 40 characters (a cell
/// that a stray quote opened may run over many lines).
fn shown(cell: &str) -> String {
    let head: String = cell.chars().take(40).collect();
    let mut s = crate::escape_controls(&head);
    if cell.chars().nth(40).is_some() {
        s.push_str("...");
    }
    s
}

fn column_list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s: Vec<String> = names
        .iter()
        .take(SHOWN)
        .enumerate()
        .map(|(i, n)| format!("{i}:{n}"))
        .collect();
    if names.len() > SHOWN {
        s.push(format!("... ({} columns in all)", names.len()));
    }
    s.join(", ")
}

fn find_label(header: &[String], choice: &LabelChoice, source: &str) -> Result<Option<usize>> {
    let n = header.len();
    match choice {
        LabelChoice::None => Ok(None),
        LabelChoice::Last => Ok(Some(n - 1)),
        LabelChoice::Optional(name) => Ok(header.iter().position(|h| h == name)),
        LabelChoice::Column(name) => {
            if let Some(i) = header.iter().position(|h| h == name.trim()) {
                return Ok(Some(i));
            }
            if let Ok(i) = name.trim().parse::<isize>() {
                let at = if i < 0 { n as isize + i } else { i };
                if (0..n as isize).contains(&at) {
                    return Ok(Some(at as usize));
                }
            }
            Err(Error::data(format!(
                "{source}, line 1: no label column '{name}'; the columns are {}",
                column_list(header)
            ))
            .with_hint("pass --label with one of these names, or a 0-based index"))
        }
    }
}

/// Parses CSV text with a header line. `source` names the file in messages.
///
/// # Errors
/// [`Error`] of kind `Data` naming the file, line and column: an empty file, an unterminated
/// quote, a row with more or fewer cells than the header, an empty (missing) cell, a
/// non-numeric or non-finite feature, a label over several lines of which one holds a row's
/// commas (rows merged by a stray quote), an unknown label or feature column, no data rows, no
/// feature columns.
pub fn parse_csv(text: &str, source: &str, opts: &CsvOptions) -> Result<Table> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Lines that end in CR alone (old Mac files): read as line breaks.
    let unix;
    let text = if text.contains('\r') && !text.contains('\n') {
        unix = text.replace('\r', "\n");
        unix.as_str()
    } else {
        text
    };
    let unterminated = |(line, col): (usize, usize)| {
        Error::data(format!(
            "{source}, line {line}, column {col}: unterminated quote"
        ))
        .with_hint("a quoted cell runs to its closing quote, across lines if need be")
    };
    let mut lines = records(text);
    let Some(first) = lines.next() else {
        return Err(Error::data(format!("{source}: the file is empty"))
            .with_hint("a CSV file needs a header line and at least one row"));
    };
    let (hline, header) = first.map_err(unterminated)?;
    let header: Vec<String> = header.into_iter().map(|h| h.trim().to_string()).collect();
    let label = find_label(&header, &opts.label, source)?;
    let feature_cols: Vec<usize> = match &opts.features {
        Some(names) => names
            .iter()
            .map(|name| {
                header.iter().position(|h| h == name).ok_or_else(|| {
                    Error::data(format!(
                        "{source}, line {hline}: no column '{name}', which the model was trained on; the columns are {}",
                        column_list(&header)
                    ))
                })
            })
            .collect::<Result<_>>()?,
        None => (0..header.len()).filter(|&c| Some(c) != label).collect(),
    };
    // Columns are found by name (the label, and a trained model's features): a column read
    // under a name another column also has would be the first of them, not necessarily the one
    // meant. Columns that are not read may share names.
    let mut read = vec![false; header.len()];
    for &c in feature_cols.iter().chain(&label) {
        if let Some(r) = read.get_mut(c) {
            *r = true;
        }
    }
    let mut seen = std::collections::HashMap::with_capacity(header.len());
    for (col, name) in header.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), col) {
            if read[col] || read[first] {
                return Err(Error::data(format!(
                    "{source}, line {hline}: columns {} and {} are both named '{name}'",
                    first + 1,
                    col + 1
                ))
                .with_hint("give every column a name of its own"));
            }
        }
    }
    if feature_cols.is_empty() {
        let only = label.and_then(|l| header.get(l)).map_or("", |s| s.as_str());
        let err = Error::data(format!(
            "{source}, line {hline}: no feature columns (only the label column '{only}')"
        ));
        // One column whose name holds another separator: the file is not comma-separated.
        let other = [';', '\t', '|'].into_iter().find(|&c| only.contains(c));
        return Err(match other {
            Some(c) => err.with_hint(format!(
                "cells are separated by commas; this header holds {}: convert the file to \
                 comma-separated values",
                if c == '\t' {
                    "tabs".to_string()
                } else {
                    format!("'{c}'")
                }
            )),
            None => err,
        });
    }
    let mut t = Table {
        source: source.to_string(),
        rows: 0,
        feature_names: feature_cols
            .iter()
            .filter_map(|&c| header.get(c).cloned())
            .collect(),
        features: Vec::new(),
        label_name: label.and_then(|l| header.get(l).cloned()),
        label_column: label.map_or(0, |l| l + 1),
        labels: Vec::new(),
        lines: Vec::new(),
    };
    for record in lines {
        let (line, cells) = record.map_err(unterminated)?;
        if cells.len() != header.len() {
            return Err(Error::data(format!(
                "{source}, line {line}: {} cells, but the header has {} columns",
                cells.len(),
                header.len()
            ))
            .with_hint("every row needs one cell per column"));
        }
        let cell_at = |c: usize| -> Result<&str> {
            let cell = cells.get(c).map_or("", |s| s.trim());
            if cell.is_empty() {
                return Err(Error::data(format!(
                    "{source}, line {line}, column {} ({}): missing value (empty cell)",
                    c + 1,
                    header.get(c).map_or("", |s| s.as_str())
                ))
                .with_hint("fill in the value or remove the row"));
            }
            Ok(cell)
        };
        for &c in &feature_cols {
            let cell = cell_at(c)?;
            // A feature in the usual spelling of a missing value (pandas reads these as NaN;
            // a label may be such a word, a class's name).
            if ["NA", "N/A", "NaN", "null", "None", "?"]
                .iter()
                .any(|m| cell.eq_ignore_ascii_case(m))
            {
                return Err(Error::data(format!(
                    "{source}, line {line}, column {} ({}): missing value ('{}')",
                    c + 1,
                    header.get(c).map_or("", |s| s.as_str()),
                    shown(cell)
                ))
                .with_hint("fill in the value or remove the row"));
            }
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => t.features.push(v),
                Ok(_) => {
                    return Err(Error::data(format!(
                        "{source}, line {line}, column {} ({}): '{}' is not a finite number",
                        c + 1,
                        header.get(c).map_or("", |s| s.as_str()),
                        shown(cell)
                    )))
                }
                Err(_) => {
                    return Err(Error::data(format!(
                        "{source}, line {line}, column {} ({}): '{}' is not a number",
                        c + 1,
                        header.get(c).map_or("", |s| s.as_str()),
                        shown(cell)
                    ))
                    .with_hint("features must be numeric; drop or encode text columns"))
                }
            }
        }
        if let Some(l) = label {
            let cell = cell_at(l)?;
            // A label may hold line breaks (RFC 4180), but one with a line break and a line
            // holding a whole row's commas (a row's worth of cells but one) is rows merged
            // into it: a quote that opened in this row (a stray one) closed only lines later.
            // (In a file of two columns, one comma is a row: a label there may not hold both
            // a line break and a comma.)
            let row_commas = header.len().saturating_sub(1).max(1);
            let merged =
                cell.contains('\n') && cell.lines().any(|s| s.matches(',').count() >= row_commas);
            if merged {
                return Err(Error::data(format!(
                    "{source}, the row starting on line {line}, column {} ({}): the label \
                     '{}' spans {} lines, one of them holding as many commas as a row",
                    l + 1,
                    header.get(l).map_or("", |s| s.as_str()),
                    shown(cell),
                    cell.matches('\n').count() + 1
                ))
                .with_hint(
                    "a quote opened in this row closes only on a later line: remove the stray \
                     quote, or close it in this row",
                ));
            }
            t.labels.push(cell.to_string());
        }
        t.lines.push(line);
        t.rows += 1;
    }
    if t.rows == 0 {
        return Err(Error::data(format!(
            "{source}: no data rows after the header"
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<Read> {
        records(text).collect()
    }

    #[test]
    fn quotes_and_cells() {
        assert_eq!(
            all(r#"1,"a,b","say ""hi""",x"#),
            [Ok((
                1,
                vec!["1".into(), "a,b".into(), "say \"hi\"".into(), "x".into()]
            ))]
        );
        assert_eq!(all(r#"1,"open"#), [Err((1, 2))]);
        // A quoted cell holds line breaks (and blank lines); the next record starts after it.
        assert_eq!(
            all("\n1,\"two\n\nlines\",3\r\n\n4,5,6\n"),
            [
                Ok((2, vec!["1".into(), "two\n\nlines".into(), "3".into()])),
                Ok((6, vec!["4".into(), "5".into(), "6".into()])),
            ]
        );
        // Open to the end: named at the line and column where the quote opened.
        assert_eq!(
            all("a,b\n1,2\n3,\"x\n4,5\n"),
            [
                Ok((1, vec!["a".into(), "b".into()])),
                Ok((2, vec!["1".into(), "2".into()])),
                Err((3, 2)),
            ]
        );
        // ... which may be a later line of the record than its first.
        assert_eq!(
            all("a,b,c\n1,\"x\ny\",\"z\n"),
            [
                Ok((1, vec!["a".into(), "b".into(), "c".into()])),
                Err((3, 3))
            ]
        );
        // A long cell is cut in messages, its line breaks escaped.
        assert_eq!(shown("ab\ncd"), "ab\\ncd");
        assert_eq!(shown(&"x".repeat(50)), format!("{}...", "x".repeat(40)));
    }

    #[test]
    fn lines_ending_in_cr_alone_are_read() {
        let opts = CsvOptions {
            label: LabelChoice::Last,
            features: None,
        };
        let t = parse_csv("a,y\r1,0\r2,1\r", "mac.csv", &opts).unwrap();
        assert_eq!((t.rows, t.features.clone()), (2, vec![1.0, 2.0]));
        assert_eq!(t.lines, [2, 3]);
        let t = parse_csv("a,y\r\n1,0\r\n", "dos.csv", &opts).unwrap();
        assert_eq!(t.rows, 1);
    }

    // A stray quote at a label's start that a later row's quote closes: the rows between
    // would become one label with line breaks (the cell counts still agree). Refused, naming
    // where, with the label last or first; a quoted label with a comma, or with a line break
    // and fewer commas than a row has, is read.
    #[test]
    fn a_label_merged_over_rows_by_a_stray_quote_is_refused() {
        let opts = CsvOptions {
            label: LabelChoice::Last,
            features: None,
        };
        let text = "a,y\n1,\"cat\n2,dog\n3,bird\"\n4,fish\n";
        let e = parse_csv(text, "pets.csv", &opts).unwrap_err().to_string();
        assert!(
            e.contains(
                "pets.csv, the row starting on line 2, column 2 (y): the label \
                 'cat\\n2,dog\\n3,bird' spans 3 lines, one of them holding as many commas as a row"
            ),
            "{e}"
        );
        // The label first: two lines merged, the first holding the comma.
        let first = CsvOptions {
            label: LabelChoice::Column("y".into()),
            features: None,
        };
        let e = parse_csv("y,a\n\"cat,1\ndog\",2\n", "pets.csv", &first).unwrap_err();
        assert!(e.to_string().contains("spans 2 lines"), "{e}");
        // An address over two lines in a file of four columns: one comma, fewer than a row's 3.
        let t = parse_csv(
            "a,b,c,y\n1,2,3,\"Acme\nSpringfield, IL\"\n",
            "firms.csv",
            &opts,
        )
        .unwrap();
        assert_eq!(t.labels, ["Acme\nSpringfield, IL"]);
        let t = parse_csv("a,y\n1,\"cat, black\"\n2,\"big\ndog\"\n", "pets.csv", &opts).unwrap();
        assert_eq!(t.labels, ["cat, black", "big\ndog"]);
    }
}
