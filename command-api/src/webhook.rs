//! The payment provider's signature: `X-Signature: sha256=<hex of the
//! HMAC-SHA256 of the raw body>`, checked in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header value a provider sends with `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(signature) = header.and_then(|v| v.strip_prefix("sha256=")).and_then(|hex_sig| hex::decode(hex_sig.trim()).ok()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}
