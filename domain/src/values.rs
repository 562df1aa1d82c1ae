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
    /// At most 254 characters, no white space or control characters, one
    /// `@` with something before it and a host after it that holds a dot,
    /// neither first nor last: `patterns::EMAIL`, exactly.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid = raw.chars().count() <= 254
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(raw.split_once('@'), Some((local, host))
                if !local.is_empty() && host.contains('.') && !host.starts_with('.') && !host.ends_with('.') && !host.contains('@'));
        if valid {
            Ok(Email(raw.to_owned()))
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
    /// `patterns::SKU`, exactly.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Sku(raw.to_owned()))
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
        if let Some(line2) = &self.line2 {
            free_text(&format!("{field}.line2"), line2, 200)?;
        }
        if !(self.country.len() == 2 && self.country.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(DomainError::invalid(format!("{field}.country"), "must be an ISO 3166-1 alpha-2 code such as DE"));
        }
        Ok(())
    }
}

/// A required text of at most `max` characters: not only white space, no
/// control characters but tab and line breaks (`patterns::TEXT`).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() { Err(DomainError::invalid(field, "must not be empty")) } else { free_text(field, value, max) }
}

/// An optional text (it may be empty) of at most `max` characters, no
/// control characters but tab and line breaks (`patterns::FREE_TEXT`).
pub fn free_text(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.chars().count() > max {
        Err(DomainError::invalid(field, format!("must be at most {max} characters")))
    } else if value.chars().any(forbidden) {
        Err(DomainError::invalid(field, "must not contain control characters other than tab and line breaks"))
    } else {
        Ok(())
    }
}

/// Control characters, but tab, line feed and carriage return.
pub fn forbidden(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// The rules above as the regular expressions (ECMA 262, explicit classes
/// only, so that every common engine reads them alike; Python's `re` alone
/// also lets `$` match before a final newline, which schemathesis corrects)
/// that the API documents state, so that a client can check a value before
/// sending it. Lengths are stated beside them
/// (`maxLength` counts characters, as the rules do).
pub mod patterns {
    /// Control characters but tab, line feed and carriage return.
    macro_rules! ctl {
        () => {
            "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f"
        };
    }
    /// What Rust's `char::is_whitespace` (Unicode White_Space) holds, but
    /// the control characters `ctl!` has already.
    macro_rules! ws {
        () => {
            "\\u0009\\u000a\\u000d\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
        };
    }
    /// `free_text`: anything without control characters.
    pub const FREE_TEXT: &str = concat!("^[^", ctl!(), "]*$");
    /// `text`: that, and something other than white space.
    pub const TEXT: &str = concat!("^[^", ctl!(), "]*[^", ctl!(), ws!(), "][^", ctl!(), "]*$");
    /// `Email::parse`, with `maxLength` 254.
    pub const EMAIL: &str = concat!(
        "^[^@",
        ctl!(),
        ws!(),
        "]+@[^@.",
        ctl!(),
        ws!(),
        "][^@",
        ctl!(),
        ws!(),
        "]*\\.[^@",
        ctl!(),
        ws!(),
        "]*[^@.",
        ctl!(),
        ws!(),
        "]$"
    );
    /// `Sku::parse`, with `maxLength` 64.
    pub const SKU: &str = "^[!-~]+$";
    /// `Currency::parse`.
    pub const CURRENCY: &str = "^[A-Z]{3}$";
    /// `Address::validate`'s country.
    pub const COUNTRY: &str = "^[A-Z]{2}$";
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
