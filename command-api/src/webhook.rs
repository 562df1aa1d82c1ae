//! The payment provider's signature: `X-Signature: sha256=<hex of the
//! HMAC-SHA256 of the raw body>`, checked in constant time.

/// The header value a provider sends with `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(eventlog::hmac_sha256(secret, &[body])))
}

/// Whether `header` is the signature of `body`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(signature) = header.and_then(|v| v.strip_prefix("sha256=")).and_then(|hex_sig| hex::decode(hex_sig.trim()).ok()) else {
        return false;
    };
    eventlog::hmac_sha256_matches(secret, &[body], &signature)
}
