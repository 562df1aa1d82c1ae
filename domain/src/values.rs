//! Validated value objects shared by commands and events.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::DomainError;

/// An email address as the customer typed it; `key()` is its
/// case-insensitive identity, used for uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(into = "String")]
#[schemars(with = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let email = raw.trim();
        let valid = email.len() <= 254
            && !email.chars().any(char::is_whitespace)
            && matches!(email.split_once('@'), Some((local, host))
                if !local.is_empty() && host.contains('.') && !host.starts_with('.') && !host.ends_with('.') && !host.contains('@'));
        if valid {
            Ok(Email(email.to_owned()))
        } else {
            Err(DomainError::invalid("email", "must be an email address such as ada@example.com"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    /// What a forgotten customer's email reads as.
    pub fn redacted() -> Email {
        Email(crate::personal::REDACTED.to_owned())
    }

    pub fn is_redacted(&self) -> bool {
        self.0 == crate::personal::REDACTED
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

/// A stock keeping unit: 1 to 64 visible ASCII characters. Unique
/// case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(into = "String")]
#[schemars(with = "String")]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let sku = raw.trim();
        if !sku.is_empty() && sku.len() <= 64 && sku.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Sku(sku.to_owned()))
        } else {
            Err(DomainError::invalid("sku", "must be 1 to 64 visible ASCII characters"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn key(&self) -> String {
        self.0.to_uppercase()
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

impl Address {
    /// Checks the fields of an address given under `field`.
    pub fn validate(&self, field: &str) -> Result<(), DomainError> {
        for (name, value) in [("line1", &self.line1), ("city", &self.city), ("postal_code", &self.postal_code)] {
            text(&format!("{field}.{name}"), value, 200)?;
        }
        if let Some(line2) = &self.line2
            && line2.chars().count() > 200
        {
            return Err(DomainError::invalid(format!("{field}.line2"), "must be at most 200 characters"));
        }
        if !(self.country.len() == 2 && self.country.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(DomainError::invalid(format!("{field}.country"), "must be an ISO 3166-1 alpha-2 code such as DE"));
        }
        Ok(())
    }
}

/// A required, trimmed-non-empty text of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        Err(DomainError::invalid(field, "must not be empty"))
    } else if value.chars().count() > max {
        Err(DomainError::invalid(field, format!("must be at most {max} characters")))
    } else {
        Ok(())
    }
}

/// Read back as recorded: the rules apply when a command makes one
/// (`parse`), never when history is read, so tightening a rule cannot make
/// stored events unreadable.
impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Email)
    }
}

/// Read back as recorded: the rules apply when a command makes one
/// (`parse`), never when history is read, so tightening a rule cannot make
/// stored events unreadable.
impl<'de> Deserialize<'de> for Sku {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Sku)
    }
}
