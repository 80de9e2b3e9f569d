//! Stage errors carry a class, so the runtime (not the stage) decides what happens next.

use std::fmt;

/// What the runtime should do with a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Worth trying again (429, 5xx, timeouts); the policy layer decides how and when.
    Retryable,
    /// This record cannot be processed (bad input, 400): dead-letter it and go on.
    Record,
    /// Nothing will work (401, missing resource): stop the run at once.
    Run,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageError {
    pub class: ErrorClass,
    pub message: String,
    /// Seconds the remote side asked us to wait (retry-after), when it said so.
    pub retry_after: Option<f64>,
}

impl StageError {
    pub fn record(message: impl Into<String>) -> Self {
        StageError {
            class: ErrorClass::Record,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn run(message: impl Into<String>) -> Self {
        StageError {
            class: ErrorClass::Run,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn retryable(message: impl Into<String>, retry_after: Option<f64>) -> Self {
        StageError {
            class: ErrorClass::Retryable,
            message: message.into(),
            retry_after,
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StageError {}

/// A source item that could not become a record (an unreadable file, a bad JSONL line).
/// It is dead-lettered with `subject` describing what it was.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub subject: serde_json::Value,
    pub error: StageError,
}

impl Rejected {
    pub fn new(subject: serde_json::Value, error: StageError) -> Self {
        Rejected { subject, error }
    }
}
