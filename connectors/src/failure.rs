//! What a failed call means for the pipeline: try again, give up on this record, or stop the
//! run. Decided here, once, from the status code and the error's type/code in the body —
//! stages never guess.

use crate::openai::Usage;
use crate::ratelimit::RateLimitSnapshot;
use serde_json::Value;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailureClass {
    /// Worth retrying (429, 408, 409, 5xx, connection errors, timeouts), after `retry_after`
    /// when the server said so.
    Retryable { retry_after: Option<Duration> },
    /// This input cannot succeed (400, 404, 413, 422, a refusal, a request larger than the
    /// account's whole per-minute limit): dead-letter the record.
    Record,
    /// Nothing will succeed (401, 403, quota exhausted): stop the run.
    Run,
}

/// What the provider bills for an attempt that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Billed {
    /// Nothing: the request was refused before any generation (4xx/5xx error bodies).
    #[default]
    Nothing,
    /// A 200 the client cannot use (a refusal, an empty answer), with the usage it carried.
    Usage(Usage),
    /// A 200 whose body could not be read: the provider generated (and bills) an answer, but
    /// how much is unknown — the caller estimates it.
    Unknown,
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
    /// Tokens this failed attempt is billed for.
    pub billed: Billed,
    /// The server took the request and closed the connection without answering: how some
    /// servers and their proxies shed load (a connection refused outright is not this).
    pub shed: bool,
}

impl Failure {
    pub fn new(class: FailureClass, status: Option<u16>, message: impl Into<String>) -> Self {
        Failure {
            class,
            status,
            message: message.into(),
            rate_limit: Box::default(),
            billed: Billed::Nothing,
            shed: false,
        }
    }

    /// A 200 answer the model gave but that cannot be used (billed all the same).
    pub fn unusable(class: FailureClass, message: impl Into<String>, usage: Usage) -> Self {
        Failure {
            billed: Billed::Usage(usage),
            ..Failure::new(class, Some(200), message)
        }
    }
}

/// The class of an HTTP error status. `retry_after` is what the response's headers said.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> FailureClass {
    match status {
        // 404: the endpoint or the model does not exist (a wrong `base_url`, a model the
        // provider does not serve). No record would get another answer: the run stops, rather
        // than dead-letter every record and end "done" with nothing written.
        401 | 403 | 404 => FailureClass::Run,
        408 | 409 | 425 | 429 => FailureClass::Retryable { retry_after },
        // 529: Anthropic's "overloaded".
        500..=599 => FailureClass::Retryable { retry_after },
        _ => FailureClass::Record,
    }
}

/// The class of an error response, from its status and what its body says. Some statuses
/// mean different things by error code:
/// - 429 `insufficient_quota` (OpenAI: the account has no credit left): no retry will ever
///   succeed — the run stops.
/// - 429 "Request too large ... (TPM)" (OpenAI: this one request exceeds the whole per-minute
///   token limit): retrying cannot help — the record is dead-lettered.
/// - 400 "credit balance is too low" (Anthropic's way of saying the same as
///   `insufficient_quota`): the run stops.
/// - 400 naming a request parameter that is the same in every call of a stage
///   (`response_format`, `temperature`, …), or OpenAI's `unsupported_parameter` /
///   `unsupported_value`: the model or server does not take what the stage sends (structured
///   output, a temperature), so every record would fail alike — the run stops and says which.
/// - 400 `context_length_exceeded` stays a record error (by status).
pub fn classify_response(status: u16, retry_after: Option<Duration>, body: &Value) -> FailureClass {
    let error = &body["error"];
    let text = |field: &str| error[field].as_str().unwrap_or_default();
    let (kind, code, message) = (text("type"), text("code"), text("message"));
    if kind == "insufficient_quota" || code == "insufficient_quota" {
        return FailureClass::Run;
    }
    if status == 429 && message.starts_with("Request too large") {
        return FailureClass::Record;
    }
    if status == 400 && message.contains("credit balance is too low") {
        return FailureClass::Run;
    }
    if refuses_what_every_call_sends(status, body) {
        return FailureClass::Run;
    }
    classify_status(status, retry_after)
}

/// A 400 about a parameter the stage sends alike in every call (see [`classify_response`]).
pub fn refuses_what_every_call_sends(status: u16, body: &Value) -> bool {
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or_default();
    let param = error["param"].as_str().unwrap_or_default();
    status == 400
        && (matches!(code, "unsupported_parameter" | "unsupported_value")
            || SAME_IN_EVERY_CALL.contains(&param))
}

/// Request parameters a stage sends alike in every call: a 400 that names one is not about
/// the record. (`messages` and `max_tokens` vary by record: a prompt too long, an answer
/// limit too high for this call, are record errors.)
const SAME_IN_EVERY_CALL: &[&str] = &[
    "model",
    "response_format",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "n",
    "tools",
    "tool_choice",
    "reasoning_effort",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert_eq!(classify_status(404, None), FailureClass::Run);
        assert_eq!(classify_status(400, None), FailureClass::Record);
        assert_eq!(classify_status(422, None), FailureClass::Record);
        assert_eq!(classify_status(422, None), FailureClass::Record);
    }

    fn openai_error(kind: &str, code: &str, message: &str) -> Value {
        json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
    }

    #[test]
    fn error_codes_in_the_body_refine_the_status() {
        let wait = Some(Duration::from_secs(1));
        let quota = openai_error(
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
        );
        assert_eq!(classify_response(429, None, &quota), FailureClass::Run);
        let too_large = openai_error(
            "tokens",
            "rate_limit_exceeded",
            "Request too large for gpt-4o in organization org-sim on tokens per min (TPM): \
             Limit 30000, Requested 50000. The input or output tokens must be reduced in order \
             to run successfully.",
        );
        assert_eq!(
            classify_response(429, wait, &too_large),
            FailureClass::Record
        );
        let busy = openai_error(
            "tokens",
            "rate_limit_exceeded",
            "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, \
             Requested 1500. Please try again in 1s.",
        );
        assert_eq!(
            classify_response(429, wait, &busy),
            FailureClass::Retryable { retry_after: wait }
        );
        let context = openai_error(
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens.",
        );
        assert_eq!(classify_response(400, None, &context), FailureClass::Record);
        let credit = json!({ "type": "error", "error": { "type": "invalid_request_error",
            "message": "Your credit balance is too low to access the Anthropic API." } });
        assert_eq!(classify_response(400, None, &credit), FailureClass::Run);
        // What the model or server does not take, sent in every call: the run stops.
        let no_structured_output = json!({ "error": { "type": "invalid_request_error",
            "param": "response_format", "code": null, "message": "Invalid parameter: \
            'response_format' of type 'json_schema' is not supported with this model." } });
        assert_eq!(
            classify_response(400, None, &no_structured_output),
            FailureClass::Run
        );
        let temperature = json!({ "error": { "type": "invalid_request_error",
            "param": "temperature", "code": "unsupported_value", "message": "Unsupported \
            value: 'temperature' does not support 0 with this model." } });
        assert_eq!(
            classify_response(400, None, &temperature),
            FailureClass::Run
        );
        // What varies by record stays the record's.
        let long_prompt = json!({ "error": { "type": "invalid_request_error",
            "param": "messages", "code": null, "message": "This model's maximum context \
            length is 8192 tokens." } });
        assert_eq!(
            classify_response(400, None, &long_prompt),
            FailureClass::Record
        );
        let answer_limit = json!({ "error": { "type": "invalid_request_error",
            "param": "max_tokens", "code": null, "message": "max_tokens is too large: \
            16384. This model supports at most 4096 completion tokens." } });
        assert_eq!(
            classify_response(400, None, &answer_limit),
            FailureClass::Record
        );
        // A body that is not the usual shape: the status decides.
        assert_eq!(
            classify_response(503, None, &json!("upstream down")),
            FailureClass::Retryable { retry_after: None }
        );
    }
}
