use thiserror::Error;

/// A business rule said no. Every variant is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("{0} does not exist")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    #[error("{0}")]
    InvalidState(String),
    #[error("the email address is already registered to another customer")]
    EmailTaken,
    #[error("the SKU is already used by another product")]
    SkuTaken,
    #[error("the customer is not active")]
    CustomerInactive,
    #[error("{0}")]
    PaymentMismatch(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Invalid { field: field.into(), message: message.into() }
    }
    pub fn state(message: impl Into<String>) -> Self {
        DomainError::InvalidState(message.into())
    }
}
