//! HMAC-SHA256, written once for every keyed hash of the code base: email
//! claim names (the vault), idempotency fingerprints of request bodies and
//! payment webhook signatures.

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    parts.iter().for_each(|part| mac.update(part));
    mac
}

/// The HMAC-SHA256 under `key` of `parts`, one after the other.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac(key, parts).finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 under `key` of `parts`, compared in
/// constant time.
pub fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    mac(key, parts).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_4231_case_2() {
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex::encode(tag), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(hmac_sha256_matches(b"Jefe", &[b"what do ya want for nothing?"], &tag));
        assert!(!hmac_sha256_matches(b"Jefe", &[b"what do ya want for nothing"], &tag));
    }
}
