//! Error codes and the error response of the wire protocol.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stable error codes of the wire protocol (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed or does not match the model's inputs.
    InvalidArgument,
    /// The model, version or alias does not exist or cannot be served.
    NotFound,
    /// The request's deadline passed before it was computed.
    DeadlineExceeded,
    /// The request is larger than the worker accepts.
    ResourceExhausted,
    /// The worker failed; the request itself may be fine.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Internal => "INTERNAL",
        }
    }

    /// The code named `value` on the wire.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::InvalidArgument,
            Self::NotFound,
            Self::DeadlineExceeded,
            Self::ResourceExhausted,
            Self::Internal,
        ]
        .into_iter()
        .find(|code| code.as_str() == value)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed inference: a stable code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InferError {
    /// Stable code clients may branch on.
    pub code: ErrorCode,
    /// What went wrong, in words.
    pub message: String,
}

impl InferError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// The error body: `{"id":"42","error":"<message>","code":"INVALID_ARGUMENT"}`.
///
/// `id` is the request's id, or its message id when the body could not be read, or `""`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The request this answers.
    pub id: String,
    /// What went wrong.
    pub error: String,
    /// Stable code.
    pub code: ErrorCode,
}

impl ErrorResponse {
    /// The response for `error`, answering request `id`.
    pub fn new(id: impl Into<String>, error: &InferError) -> Self {
        Self {
            id: id.into(),
            error: error.message.clone(),
            code: error.code,
        }
    }
}
