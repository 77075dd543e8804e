//! What the routing policy refuses: a configuration out of range, a measurement that is
//! not a number it can use.

/// A refused configuration or measurement.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("routing policy: {field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    /// A generation-rate measurement that is not a positive finite number.
    #[error("routing policy: generation rate {0} tokens/s is not a positive finite number")]
    InvalidRate(f64),
    /// A completion-length measurement that is not a positive finite number of tokens.
    #[error("routing policy: completion length {0} tokens is not a positive finite number")]
    InvalidCompletion(f64),
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidConfig {
        field,
        message: message.into(),
    }
}
