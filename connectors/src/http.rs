//! The one HTTP request path shared by every vendor client: send JSON, read JSON, and turn
//! anything else into a classified [`Failure`] with the key scrubbed from the message.

use crate::failure::{
    Billed, Failure, FailureClass, classify_response, refuses_what_every_call_sends,
};
use crate::ratelimit::{RateLimitMessage, RateLimitSnapshot, retry_after};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::fmt;
use std::time::SystemTime;

/// An API key. Its `Debug` never shows it, and failure messages have it scrubbed, so it cannot
/// leak into logs, reports or dead letters by accident.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "<redacted>")
        } else {
            text.to_string()
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// No timeouts here: the policy layer's per-attempt timeout bounds the whole call, connect
/// included, so there is one place that decides how long a call may take.
pub(crate) fn client() -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder().build().map_err(|e| {
        Failure::new(
            FailureClass::Run,
            None,
            format!("cannot build HTTP client: {e}"),
        )
    })
}

/// Sends one request (exactly one attempt) and returns the JSON body and the headers.
pub(crate) async fn send_json(
    request: reqwest::RequestBuilder,
    what: &str,
    key: &ApiKey,
) -> Result<(Value, HeaderMap), Failure> {
    // Connection refused/reset, timeouts and cut-off bodies are worth another try.
    let transport = |e: reqwest::Error| {
        Failure::new(
            FailureClass::Retryable { retry_after: None },
            None,
            key.scrub(&format!("{what}: request failed: {e}")),
        )
    };
    let response = request.send().await.map_err(|e| Failure {
        shed: !e.is_connect(),
        ..transport(e)
    })?;
    let status = response.status().as_u16();
    let url = response.url().clone();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| {
        let mut failure = transport(e);
        if (200..300).contains(&status) {
            // The answer was generated (and billed) but arrived cut off.
            failure.billed = Billed::Unknown;
        }
        failure
    })?;
    if !(200..300).contains(&status) {
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        // OpenAI's 429 says in words which limit refused the call and how long to wait,
        // where it (or a compatible server) sends no `retry-after` or no headers at all.
        let message = (status == 429)
            .then(|| {
                body["error"]["message"]
                    .as_str()
                    .map(RateLimitMessage::parse)
            })
            .flatten()
            .unwrap_or_default();
        let wait = retry_after(
            |n| headers.get(n).and_then(|v| v.to_str().ok()),
            SystemTime::now(),
        )
        .or(message.try_again_in);
        // Both vendors put the reason at error.message, and OpenAI a code at error.code
        // (Anthropic: the type) — shown, since it says what to do (`insufficient_quota`).
        let detail = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let detail = if status == 404 {
            // Most often the base URL (OpenAI-compatible servers serve under /v1) or the model.
            let detail = if detail.trim().is_empty() {
                "not found".to_string()
            } else {
                detail
            };
            format!(
                "{detail} (at {url}: check the provider's `base_url` and `model`)",
                url = url.as_str()
            )
        } else {
            detail
        };
        let code = body["error"]["code"]
            .as_str()
            .or_else(|| body["error"]["type"].as_str())
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        // Either vendor's header names: the error path does not know which vendor it serves.
        let mut rate_limit = RateLimitSnapshot::from_openai(header(&headers));
        if rate_limit.is_empty() {
            rate_limit = RateLimitSnapshot::from_anthropic(header(&headers), SystemTime::now());
        }
        rate_limit.add_message(&message);
        let detail = if refuses_what_every_call_sends(status, &body) {
            format!(
                "{detail} (every call sends it, so no record would get through: check the \
                 provider's `model` and the stage's settings)"
            )
        } else {
            detail
        };
        return Err(Failure {
            class: classify_response(status, wait, &body),
            status: Some(status),
            message: key.scrub(&format!("{what}: HTTP {status}{code}: {detail}")),
            rate_limit: Box::new(rate_limit),
            billed: Billed::Nothing,
            shed: false,
        });
    }
    let value = serde_json::from_str(&text)
        .map_err(|e| malformed(&format!("{what}: response is not JSON: {e}")))?;
    Ok((value, headers))
}

/// A 200 whose body is not what the API promises: a transient server fault, worth a retry.
/// The provider generated an answer for it, so it is billed, by an amount nobody can read.
pub(crate) fn malformed(what: &str) -> Failure {
    Failure {
        billed: Billed::Unknown,
        ..Failure::new(
            FailureClass::Retryable { retry_after: None },
            Some(200),
            format!("malformed response: {what}"),
        )
    }
}

pub(crate) fn header<'a>(headers: &'a HeaderMap) -> impl Fn(&str) -> Option<&'a str> {
    move |name| headers.get(name).and_then(|v| v.to_str().ok())
}
