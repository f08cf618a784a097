//! Shared test helpers: the bundled digits data set.

use std::io::Read;

/// The 1,797 digits (64 pixels scaled to [0, 1], label), from the bundled `data/digits.csv.gz`.
pub fn digits() -> (Vec<f32>, Vec<usize>) {
    let gz = include_bytes!("../../data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<f32> = line.split(',').map(|c| c.trim().parse().unwrap()).collect();
        assert_eq!(cells.len(), 65);
        xs.extend(cells[..64].iter().map(|v| v / 16.0));
        ys.push(cells[64] as usize);
    }
    (xs, ys)
}
