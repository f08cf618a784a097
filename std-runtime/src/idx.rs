//! The IDX format (MNIST's files): a 4-byte magic (two zero bytes, a type code, the number of
//! dimensions), the dimensions as big-endian `u32`, then the data, big-endian.

use std::path::{Path, PathBuf};

use crate::data::{gunzip, Table};
use crate::error::{Error, Result};

/// Whether `bytes` start like an IDX file (and are long enough for its header).
pub fn is_idx(bytes: &[u8]) -> bool {
    matches!(bytes, [0, 0, t, d, ..] if elem_size(*t).is_some() && (1..=4).contains(d))
        && bytes.len() >= 4 + 4 * bytes.get(3).map_or(0, |&d| d as usize)
}

/// Why `bytes`, which do not pass [`is_idx`], are not an IDX file's.
pub fn why_not(bytes: &[u8]) -> String {
    match bytes {
        [0, 0, t, _, ..] if elem_size(*t).is_none() => {
            format!("its type code 0x{t:02x} is none of IDX's")
        }
        [0, 0, _, d, ..] if !(1..=4).contains(d) => {
            format!("it claims {d} dimensions (IDX files here have 1 to 4)")
        }
        [0, 0, _, d, ..] => format!(
            "its header of {} bytes is cut short ({} bytes in the file)",
            4 + 4 * usize::from(*d),
            bytes.len()
        ),
        _ => format!("only {} bytes", bytes.len()),
    }
}

fn elem_size(code: u8) -> Option<usize> {
    match code {
        0x08 | 0x09 => Some(1),
        0x0B => Some(2),
        0x0C | 0x0D => Some(4),
        0x0E => Some(8),
        _ => None,
    }
}

/// Parses an IDX file into its dimensions and values (as f32).
///
/// # Errors
/// A `Data` error naming `source` for a bad magic, a zero dimension, a file shorter or
/// longer than its header says, or a value that is not a finite f32 number.
pub fn parse(bytes: &[u8], source: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |what: String| Error::data(format!("{source}: {what}"));
    let (code, rank) = match bytes {
        [0, 0, t, d, ..] if elem_size(*t).is_some() && *d >= 1 => (*t, *d as usize),
        _ => return Err(bad("not an IDX file (bad magic number)".into())),
    };
    let size = elem_size(code).unwrap_or(1);
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        match bytes.get(4 + 4 * i..8 + 4 * i) {
            Some(&[a, b, c, d]) => dims.push(u32::from_be_bytes([a, b, c, d]) as usize),
            _ => return Err(bad("truncated header".into())),
        }
    }
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(count) = count.filter(|&c| c > 0) else {
        return Err(bad(format!("bad dimensions {dims:?}")));
    };
    let start = 4 + 4 * rank;
    let need = count.checked_mul(size).and_then(|n| n.checked_add(start));
    if need != Some(bytes.len()) {
        return Err(bad(format!(
            "{} bytes, but the header ({dims:?}) needs {}: truncated or corrupt",
            bytes.len(),
            need.map_or("more".to_string(), |n| n.to_string())
        )));
    }
    let data = bytes.get(start..).unwrap_or(&[]);
    let values: Vec<f32> = match code {
        0x08 => data.iter().map(|&b| b as f32).collect(),
        0x09 => data.iter().map(|&b| b as i8 as f32).collect(),
        0x0B => data
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]) as f32)
            .collect(),
        0x0C => data
            .chunks_exact(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        0x0D => data
            .chunks_exact(4)
            .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    };
    // Float files may hold NaN or infinities (or f64 values past f32's range): refused here,
    // as in a CSV file, naming the record and the value.
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let per: usize = dims.iter().skip(1).product();
        return Err(bad(format!(
            "record {} (0-based), value {} of {per}: not a finite f32 number",
            i / per.max(1),
            i % per.max(1)
        )));
    }
    Ok((dims, values))
}

/// The labels file beside an images file: `*images-idx3*` becomes `*labels-idx1*` (MNIST's
/// names), when that file exists.
pub fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let guess = name.replace("images-idx3", "labels-idx1");
    let p = images.with_file_name(guess);
    (p != images && p.exists()).then_some(p)
}

/// A table from IDX images (`bytes`, first dimension the count) and their labels file.
///
/// # Errors
/// As [`parse`], for either file; a labels file that cannot be read, is not one-dimensional
/// or has a different count.
pub fn table(bytes: &[u8], source: &str, labels: &Path) -> Result<Table> {
    let (dims, values) = parse(bytes, source)?;
    let lsrc = labels.display().to_string();
    let raw = std::fs::read(labels).map_err(|e| Error::io(labels, &e))?;
    let raw = if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip(&raw, &lsrc)?
    } else {
        raw
    };
    let (ldims, lvals) = parse(&raw, &lsrc)?;
    let n = dims.first().copied().unwrap_or(0);
    if ldims.len() != 1 || ldims.first() != Some(&n) {
        return Err(Error::data(format!(
            "{lsrc}: {ldims:?} labels for {n} images in {source}"
        ))
        .with_hint("the labels file must be one-dimensional, one label per image"));
    }
    let cols = values.len() / n.max(1);
    Ok(Table {
        source: source.to_string(),
        rows: n,
        feature_names: (0..cols).map(|i| format!("px{i}")).collect(),
        features: values,
        label_name: Some("label".into()),
        label_column: 1,
        labels: lvals.iter().map(|v| format!("{v}")).collect(),
        lines: (1..=n).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, code, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn why_a_file_is_not_idx() {
        for (bytes, want) in [
            (&[0u8, 0, 7, 1][..], "type code 0x07"),
            (&[0, 0, 8, 9], "claims 9 dimensions"),
            (
                &[0, 0, 8, 2, 0, 0, 0, 1],
                "header of 12 bytes is cut short (8 bytes",
            ),
            (&[0, 0], "only 2 bytes"),
        ] {
            assert!(!is_idx(bytes));
            let why = why_not(bytes);
            assert!(why.contains(want), "{why}");
        }
    }

    #[test]
    fn parse_and_errors() {
        let b = idx(0x08, &[2, 2], &[1, 2, 3, 4]);
        assert!(is_idx(&b));
        assert_eq!(
            parse(&b, "x").unwrap(),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        assert!(parse(&b[..7], "x").is_err());
        assert!(parse(&idx(0x08, &[2, 2], &[1, 2, 3]), "x").is_err());
        assert!(parse(&idx(0x07, &[1], &[1]), "x").is_err());
        assert!(parse(&idx(0x08, &[0], &[]), "x").is_err());
        let f = idx(0x0D, &[1], &1.5f32.to_be_bytes());
        assert_eq!(parse(&f, "x").unwrap().1, vec![1.5]);
    }
}
