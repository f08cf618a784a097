//! The CSV reader: a header line, comma-separated cells, double quotes around cells that hold
//! commas; every error names the file, line and column.

use super::{CsvOptions, LabelChoice, Table};
use crate::error::{Error, Result};

/// Splits one CSV line into cells: commas separate, double quotes protect commas, `""` is a
/// quote inside quotes. Returns the 1-based column of an unterminated quote as the error.
fn split_line(line: &str) -> std::result::Result<Vec<String>, usize> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.trim().is_empty() => {
                cell.clear();
                quoted = true;
            }
            (false, ',') => cells.push(std::mem::take(&mut cell)),
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        return Err(cells.len() + 1);
    }
    cells.push(cell);
    Ok(cells)
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
/// non-numeric or non-finite feature, an unknown label or feature column, no data rows, no
/// feature columns.
pub fn parse_csv(text: &str, source: &str, opts: &CsvOptions) -> Result<Table> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((hline, header)) = lines.next() else {
        return Err(Error::data(format!("{source}: the file is empty"))
            .with_hint("a CSV file needs a header line and at least one row"));
    };
    let header: Vec<String> = split_line(header)
        .map_err(|col| {
            Error::data(format!(
                "{source}, line {hline}, column {col}: unterminated quote"
            ))
        })?
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
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
        return Err(Error::data(format!(
            "{source}, line {hline}: no feature columns (only the label column '{}')",
            label.and_then(|l| header.get(l)).map_or("", |s| s.as_str())
        )));
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
    for (line, text) in lines {
        let cells = split_line(text).map_err(|col| {
            Error::data(format!(
                "{source}, line {line}, column {col}: unterminated quote"
            ))
        })?;
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
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => t.features.push(v),
                Ok(_) => {
                    return Err(Error::data(format!(
                        "{source}, line {line}, column {} ({}): '{cell}' is not a finite number",
                        c + 1,
                        header.get(c).map_or("", |s| s.as_str())
                    )))
                }
                Err(_) => {
                    return Err(Error::data(format!(
                        "{source}, line {line}, column {} ({}): '{cell}' is not a number",
                        c + 1,
                        header.get(c).map_or("", |s| s.as_str())
                    ))
                    .with_hint("features must be numeric; drop or encode text columns"))
                }
            }
        }
        if let Some(l) = label {
            t.labels.push(cell_at(l)?.to_string());
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

    #[test]
    fn quotes_and_cells() {
        assert_eq!(
            split_line(r#"1,"a,b","say ""hi""",x"#).unwrap(),
            vec!["1", "a,b", "say \"hi\"", "x"]
        );
        assert_eq!(split_line(r#"1,"open"#), Err(2));
    }
}
