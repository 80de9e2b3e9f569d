//! What a failed call means for the pipeline: try again, give up on this record, or stop the
//! run. Decided here, once, from the status code — stages never guess.

use crate::ratelimit::RateLimitSnapshot;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailureClass {
    /// Worth retrying (429, 408, 409, 5xx, connection errors, timeouts), after `retry_after`
    /// when the server said so.
    Retryable { retry_after: Option<Duration> },
    /// This input cannot succeed (400, 404, 413, 422): dead-letter the record.
    Record,
    /// Nothing will succeed (401, 403): stop the run.
    Run,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub class: FailureClass,
    pub status: Option<u16>,
    /// Safe to log: never contains request headers (keys) or the request body.
    pub message: String,
    /// Rate-limit state the error response carried. A 429 with this state is the account's
    /// limit speaking (pause the whole limiter); a 429 without it is an overload signal.
    /// Boxed: it is rarely set, and keeps `Result<_, Failure>` small.
    pub rate_limit: Box<RateLimitSnapshot>,
}

impl Failure {
    pub fn new(class: FailureClass, status: Option<u16>, message: impl Into<String>) -> Self {
        Failure {
            class,
            status,
            message: message.into(),
            rate_limit: Box::default(),
        }
    }
}

/// The class of an HTTP error status. `retry_after` is what the response's headers said.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> FailureClass {
    match status {
        401 | 403 => FailureClass::Run,
        408 | 409 | 425 | 429 => FailureClass::Retryable { retry_after },
        // 529: Anthropic's "overloaded".
        500..=599 => FailureClass::Retryable { retry_after },
        _ => FailureClass::Record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_classes() {
        let wait = Some(Duration::from_secs(2));
        assert_eq!(
            classify_status(429, wait),
            FailureClass::Retryable { retry_after: wait }
        );
        assert_eq!(
            classify_status(503, None),
            FailureClass::Retryable { retry_after: None }
        );
        assert_eq!(
            classify_status(529, None),
            FailureClass::Retryable { retry_after: None }
        );
        assert_eq!(
            classify_status(408, None),
            FailureClass::Retryable { retry_after: None }
        );
        assert_eq!(classify_status(401, None), FailureClass::Run);
        assert_eq!(classify_status(403, None), FailureClass::Run);
        assert_eq!(classify_status(400, None), FailureClass::Record);
        assert_eq!(classify_status(404, None), FailureClass::Record);
        assert_eq!(classify_status(422, None), FailureClass::Record);
    }
}
