//! Encryption of one event's personal fields, knowing nothing of where
//! keys are kept: a key in, the event's JSON changed in place.
//!
//! An encrypted field is `{"$sealed": "<base64 of a 24-byte nonce and the
//! XChaCha20-Poly1305 ciphertext of its JSON>"}` (the marker is part of
//! the stored form, named before "seal" came to mean the hash chain, and
//! is never renamed), bound by associated data to its owner and field
//! name, so that a ciphertext moved elsewhere does not decrypt.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use domain::personal::PersonalFields;
use serde_json::{Value, json};
use uuid::Uuid;

use super::keys::{DataKey, KeyState};

/// The stored form's marker of an encrypted field.
const MARKER: &str = "$sealed";

/// Encrypts the personal fields of one event's data under `key` (fields
/// absent, null or encrypted already are left).
pub fn encrypt_fields(personal: &PersonalFields, owner: Uuid, key: &DataKey, data: &mut Value) {
    for (field, _) in personal.fields {
        if let Some(value) = data.get_mut(*field)
            && !value.is_null()
            && !is_encrypted(value)
        {
            *value = encrypt_value(key, owner, field, value);
        }
    }
}

/// Decrypts (or redacts) the personal fields of one event's data: with
/// the owner's key when it is live, as redacted when the owner is
/// forgotten or a field does not decrypt. A field stored in the clear (by
/// a log from before encryption) is left as written while its owner is
/// not forgotten.
pub fn decrypt_fields(personal: &PersonalFields, owner: Uuid, key: Option<&KeyState>, data: &mut Value) {
    for (field, shape) in personal.fields {
        let Some(value) = data.get_mut(*field) else { continue };
        if value.is_null() {
            continue;
        }
        let decrypted = match key {
            Some(KeyState::Forgotten) => None,
            Some(KeyState::Live(key)) if is_encrypted(value) => {
                let decrypted = decrypt_value(key, owner, field, value);
                if decrypted.is_none() {
                    tracing::warn!(%owner, field, "an encrypted personal field does not decrypt with its owner's key; read as redacted");
                }
                decrypted
            }
            // Stored in the clear, by a log from before encryption.
            _ if !is_encrypted(value) => continue,
            None | Some(KeyState::Live(_)) => None,
        };
        *value = decrypted.unwrap_or_else(|| shape.redacted());
    }
}

fn is_encrypted(value: &Value) -> bool {
    value.as_object().is_some_and(|o| o.len() == 1 && o.get(MARKER).is_some_and(Value::is_string))
}

fn aad(owner: Uuid, field: &str) -> Vec<u8> {
    [owner.as_bytes().as_slice(), field.as_bytes()].concat()
}

fn encrypt_value(key: &DataKey, owner: Uuid, field: &str, value: &Value) -> Value {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let plain = serde_json::to_vec(value).expect("JSON values serialize");
    let ciphertext =
        cipher.encrypt(&nonce, Payload { msg: &plain, aad: &aad(owner, field) }).expect("encryption of a buffer does not fail");
    json!({ MARKER: BASE64.encode([nonce.as_slice(), &ciphertext].concat()) })
}

fn decrypt_value(key: &DataKey, owner: Uuid, field: &str, value: &Value) -> Option<Value> {
    let raw = BASE64.decode(value.get(MARKER)?.as_str()?).ok()?;
    if raw.len() < 24 {
        return None;
    }
    let (nonce, ciphertext) = raw.split_at(24);
    let cipher = XChaCha20Poly1305::new(key.into());
    let plain = cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad(owner, field) }).ok()?;
    serde_json::from_slice(&plain).ok()
}

#[cfg(test)]
pub(super) fn is_encrypted_for_tests(value: &Value) -> bool {
    is_encrypted(value)
}

#[cfg(test)]
mod tests {
    use domain::personal::personal_fields;
    use domain::{Category, StreamId};

    use super::*;
    use crate::vault::new_key;

    #[test]
    fn an_encrypted_field_decrypts_only_with_its_key_owner_and_field() {
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        let key = new_key();
        let encrypted = encrypt_value(&key, owner, "email", &json!("ada@example.com"));
        assert!(is_encrypted(&encrypted) && !encrypted.to_string().contains("ada@example.com"));
        assert!(encrypted.get("$sealed").is_some(), "the stored form's marker");
        assert_eq!(decrypt_value(&key, owner, "email", &encrypted), Some(json!("ada@example.com")));
        assert_eq!(decrypt_value(&key, other, "email", &encrypted), None, "bound to its owner");
        assert_eq!(decrypt_value(&key, owner, "name", &encrypted), None, "bound to its field");
        let wrong = new_key();
        assert_eq!(decrypt_value(&wrong, owner, "email", &encrypted), None);
    }

    #[test]
    fn a_forgotten_owner_reads_as_redacted_encrypted_or_not() {
        let owner = Uuid::new_v4();
        let stream = StreamId::new(Category::Customer, owner).to_string();
        let mut data = json!({"customer_id": owner, "email": "ada@example.com", "name": "Ada", "shipping_address": null});
        let personal = personal_fields("CustomerRegistered").unwrap();
        assert_eq!(personal.owner_of(&stream, &data), Some(owner));
        decrypt_fields(personal, owner, None, &mut data);
        assert_eq!(data["email"], "ada@example.com", "a plaintext field of an owner with no key is left as written");
        decrypt_fields(personal, owner, Some(&KeyState::Forgotten), &mut data);
        assert_eq!(data["email"], "[redacted]");
        assert_eq!(data["name"], "[redacted]");
        assert!(data["shipping_address"].is_null(), "an absent address stays absent");
    }
}
