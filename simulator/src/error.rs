//! Vendor-neutral API errors, rendered in each vendor's wire shape.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    OpenAi,
    Anthropic,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI `error.type`.
    pub oa_type: &'static str,
    /// OpenAI `error.code`.
    pub oa_code: Option<&'static str>,
    /// OpenAI `error.param`.
    pub oa_param: Option<&'static str>,
    /// Anthropic `error.type`.
    pub an_type: &'static str,
    pub message: String,
    /// `None` = no `retry-after` header.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            oa_type: "invalid_request_error",
            oa_code: None,
            oa_param: None,
            an_type: "invalid_request_error",
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            oa_type: "invalid_request_error",
            oa_code: Some("invalid_api_key"),
            oa_param: None,
            an_type: "authentication_error",
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(oa_type: &'static str, message: String, retry_after: Duration) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            oa_type,
            oa_code: Some("rate_limit_exceeded"),
            oa_param: None,
            an_type: "rate_limit_error",
            message,
            retry_after: Some(retry_after),
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.oa_code = Some(code);
        self
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.oa_param = Some(param);
        self
    }

    /// The key this error is counted under in `by_error_code`: the OpenAI
    /// `code` (or `type` when there is no code), the Anthropic `type`.
    pub fn stat_code(&self, vendor: Vendor) -> &'static str {
        match vendor {
            Vendor::OpenAi => self.oa_code.unwrap_or(self.oa_type),
            Vendor::Anthropic => self.an_type,
        }
    }

    pub fn render(&self, vendor: Vendor) -> Response {
        let body = match vendor {
            Vendor::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.oa_type,
                "param": self.oa_param,
                "code": self.oa_code,
            }}),
            Vendor::Anthropic => json!({"type": "error", "error": {
                "type": self.an_type,
                "message": self.message,
            }}),
        };
        let mut resp = json_response(self.status, &body);
        if let Some(ra) = self.retry_after {
            let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
            let h = resp.headers_mut();
            insert(h, "retry-after", secs.max(1).to_string());
            if vendor == Vendor::OpenAi {
                let ms = ra.as_millis().max(1);
                insert(h, "retry-after-ms", ms.to_string());
            }
        }
        resp
    }
}

pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub fn insert(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}
