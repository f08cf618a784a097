// The digits split shared by `build.rs` (the firmware's flash bytes) and `host/` (the
// host-trained network of `finetune`): parse the core's `digits.csv.gz`, shuffle once with a
// fixed seed. Included with `include!`; needs `flate2`.

/// Training records (the first ones after the shuffle); the other 360 are held out.
pub const TRAIN: usize = 1437;

/// The 1,797 records (64 pixels 0..=16, then the label), shuffled with a fixed seed.
pub fn digit_records(gz: &[u8]) -> Vec<[u8; 65]> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .expect("gzip");
    let mut records: Vec<[u8; 65]> = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<u8> = line.split(',').map(|c| c.trim().parse().unwrap()).collect();
        assert_eq!(cells.len(), 65);
        assert!(cells[..64].iter().all(|&p| p <= 16) && cells[64] < 10);
        records.push(cells.try_into().unwrap());
    }
    assert_eq!(records.len(), 1797);
    // Fisher-Yates with a fixed 64-bit LCG: the same split on every build.
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    for i in (1..records.len()).rev() {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((s >> 33) as usize) % (i + 1);
        records.swap(i, j);
    }
    records
}
