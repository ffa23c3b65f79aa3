//! Identifiers and digests spelled as lower-case hex: record ids, and SHA-256 fingerprints.

/// Lower-case hex of `bytes`, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// `pay_…` / `ref_…`: 96 random bits in hex, so that no two records — of any instance — share
/// an id.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    format!("{prefix}_{}", hex(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        // FIPS 180-2's "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let id = new_id("pay");
        assert_eq!(id.len(), 4 + 24);
        assert!(id.starts_with("pay_"));
    }
}
