//! Money is integer minor units plus an ISO 4217 code; floats never appear.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::DomainError;

/// A three-letter upper-case ISO 4217 currency code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(into = "String")]
#[schemars(with = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(code.to_owned()))
        } else {
            Err(DomainError::invalid("currency", "must be a three-letter upper-case ISO 4217 code"))
        }
    }
    pub fn usd() -> Self {
        Currency("USD".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    /// Amount in the currency's minor unit (cents for USD).
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money { amount_minor, currency }
    }

    /// A price: never negative.
    pub fn price(amount_minor: i64, currency: Currency) -> Result<Self, DomainError> {
        if amount_minor < 0 {
            return Err(DomainError::invalid("price.amount_minor", "must not be negative"));
        }
        Ok(Money { amount_minor, currency })
    }

    /// `self * quantity`, refusing overflow rather than wrapping.
    pub fn times(&self, quantity: u32) -> Result<Money, DomainError> {
        self.amount_minor
            .checked_mul(i64::from(quantity))
            .map(|amount_minor| Money { amount_minor, currency: self.currency.clone() })
            .ok_or_else(|| DomainError::state("the order's total is too large"))
    }

    pub fn checked_add(&self, other: &Money) -> Result<Money, DomainError> {
        if self.currency != other.currency {
            return Err(DomainError::state("the products of an order must be priced in one currency"));
        }
        self.amount_minor
            .checked_add(other.amount_minor)
            .map(|amount_minor| Money { amount_minor, currency: self.currency.clone() })
            .ok_or_else(|| DomainError::state("the order's total is too large"))
    }
}

/// Read back as recorded: the rules apply when a command makes one
/// (`parse`), never when history is read, so tightening a rule cannot make
/// stored events unreadable.
impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Currency)
    }
}
