//! HTTP routes and request handling.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::config::SimConfig;
use crate::content::{base64, count_tokens, embedding, extraction, sentence, truncate_to_tokens};
use crate::ratelimit::{Snapshot, format_reset, rfc3339};
use crate::state::{AppState, Billed, Fault};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset))
        .route("/_sim/config", post(set_config).get(get_config))
        .with_state(state)
}

async fn stats(State(st): St) -> Response {
    let v = st.lock().stats_json();
    json_response(StatusCode::OK, &v)
}

async fn reset(State(st): St) -> Response {
    st.reset();
    json_response(StatusCode::OK, &json!({"ok": true}))
}

async fn get_config(State(st): St) -> Response {
    let cfg = Arc::clone(&st.lock().config);
    json_response(StatusCode::OK, &json!(*cfg))
}

async fn set_config(State(st): St, body: Bytes) -> Response {
    match serde_json::from_slice::<SimConfig>(&body) {
        Ok(cfg) => match cfg.validate() {
            Ok(()) => {
                st.set_config(cfg);
                json_response(StatusCode::OK, &json!({"ok": true}))
            }
            Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e})),
        },
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("invalid config: {e}")}),
        ),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
    Messages,
}

impl Endpoint {
    fn vendor(self) -> Vendor {
        match self {
            Endpoint::Chat | Endpoint::Embeddings => Vendor::OpenAi,
            Endpoint::Messages => Vendor::Anthropic,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat.completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }
}

/// A vendor-neutral error, rendered in the vendor's wire shape.
struct ApiError {
    status: StatusCode,
    /// OpenAI `error.type`.
    oa_type: &'static str,
    /// OpenAI `error.code`.
    oa_code: Option<&'static str>,
    /// Anthropic `error.type`.
    an_type: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            oa_type: "invalid_request_error",
            oa_code: None,
            an_type: "invalid_request_error",
            message: message.into(),
            retry_after: None,
        }
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            oa_type: "invalid_request_error",
            oa_code: Some("invalid_api_key"),
            an_type: "authentication_error",
            message: message.into(),
            retry_after: None,
        }
    }
    fn rate_limited(oa_type: &'static str, message: String, retry_after: Duration) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            oa_type,
            oa_code: Some("rate_limit_exceeded"),
            an_type: "rate_limit_error",
            message,
            retry_after: Some(retry_after),
        }
    }

    fn render(&self, vendor: Vendor) -> Response {
        let body = match vendor {
            Vendor::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.oa_type,
                "param": null,
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

fn insert(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn add_ratelimit_headers(h: &mut HeaderMap, vendor: Vendor, snap: &Snapshot) {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    for (b, kind) in [(snap.requests, "requests"), (snap.tokens, "tokens")] {
        let Some(b) = b else { continue };
        match vendor {
            Vendor::OpenAi => {
                let (l, r, s) = if kind == "requests" {
                    (
                        "x-ratelimit-limit-requests",
                        "x-ratelimit-remaining-requests",
                        "x-ratelimit-reset-requests",
                    )
                } else {
                    (
                        "x-ratelimit-limit-tokens",
                        "x-ratelimit-remaining-tokens",
                        "x-ratelimit-reset-tokens",
                    )
                };
                insert(h, l, b.limit.to_string());
                insert(h, r, b.remaining.to_string());
                insert(h, s, format_reset(b.reset));
            }
            Vendor::Anthropic => {
                let (l, r, s) = if kind == "requests" {
                    (
                        "anthropic-ratelimit-requests-limit",
                        "anthropic-ratelimit-requests-remaining",
                        "anthropic-ratelimit-requests-reset",
                    )
                } else {
                    (
                        "anthropic-ratelimit-tokens-limit",
                        "anthropic-ratelimit-tokens-remaining",
                        "anthropic-ratelimit-tokens-reset",
                    )
                };
                let at = now_unix + b.reset;
                let secs = at.as_secs() + u64::from(at.subsec_nanos() > 0);
                insert(h, l, b.limit.to_string());
                insert(h, r, b.remaining.to_string());
                insert(h, s, rfc3339(secs));
            }
        }
    }
}

async fn chat(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    api(st, Endpoint::Chat, headers, body).await
}

async fn embeddings(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    api(st, Endpoint::Embeddings, headers, body).await
}

async fn messages(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    api(st, Endpoint::Messages, headers, body).await
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn api_key(vendor: Vendor, headers: &HeaderMap) -> Option<String> {
    match vendor {
        Vendor::OpenAi => header_str(headers, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty()),
        Vendor::Anthropic => header_str(headers, "x-api-key")
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty()),
    }
}

/// Entry point shared by all vendor endpoints.
async fn api(st: Arc<AppState>, ep: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    let guard = st.enter();
    let vendor = ep.vendor();
    let key = api_key(vendor, &headers);
    let body_hash = *blake3::hash(&body).as_bytes();
    let (cfg, seq) = st
        .lock()
        .on_request(guard.level, body_hash, key.as_deref(), ep.name());
    let (mut resp, snap) = process(
        &st,
        &cfg,
        ep,
        &headers,
        &body,
        key.as_deref(),
        guard.level,
        seq,
    )
    .await;
    let snap = match snap {
        Some(s) => s,
        None => st.lock().limiter.peek(Instant::now()),
    };
    add_ratelimit_headers(resp.headers_mut(), vendor, &snap);
    insert(
        resp.headers_mut(),
        if vendor == Vendor::OpenAi {
            "x-request-id"
        } else {
            "request-id"
        },
        format!("req_sim_{seq}"),
    );
    st.lock().record_status(resp.status().as_u16());
    drop(guard);
    resp
}

fn check_auth(
    vendor: Vendor,
    headers: &HeaderMap,
    key: Option<&str>,
    cfg: &SimConfig,
) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Err(match vendor {
            Vendor::OpenAi => ApiError::unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ),
            Vendor::Anthropic => ApiError::unauthorized("x-api-key header is required"),
        });
    };
    let bad = cfg.revoked_keys.iter().any(|k| k == key)
        || (!cfg.api_keys.is_empty() && !cfg.api_keys.iter().any(|k| k == key));
    if bad {
        return Err(match vendor {
            Vendor::OpenAi => ApiError::unauthorized(format!(
                "Incorrect API key provided: {}. You can find your API key at the simulator config.",
                mask(key)
            )),
            Vendor::Anthropic => ApiError::unauthorized("invalid x-api-key"),
        });
    }
    if vendor == Vendor::Anthropic && header_str(headers, "anthropic-version").is_none() {
        return Err(ApiError::bad_request(
            "anthropic-version: header is required",
        ));
    }
    Ok(())
}

fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        "****".to_string()
    } else {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}****{tail}")
    }
}

/// A parsed, validated request.
enum Prepared {
    Chat {
        model: String,
        hash: blake3::Hash,
        wants_json: bool,
        last_user: String,
        max_tokens: Option<u64>,
        prompt_tokens: u64,
    },
    Embed {
        model: String,
        inputs: Vec<String>,
        dims: usize,
        base64: bool,
        prompt_tokens: u64,
    },
    Messages {
        model: String,
        hash: blake3::Hash,
        wants_json: bool,
        last_user: String,
        max_tokens: u64,
        input_total: u64,
        cache_prefix: Option<([u8; 32], u64)>,
    },
}

impl Prepared {
    fn model(&self) -> &str {
        match self {
            Prepared::Chat { model, .. }
            | Prepared::Embed { model, .. }
            | Prepared::Messages { model, .. } => model,
        }
    }
    /// Tokens debited from the TPM bucket (prompt + max_tokens pre-accounting).
    fn debit(&self, default_max: u64) -> u64 {
        match self {
            Prepared::Chat {
                max_tokens,
                prompt_tokens,
                ..
            } => prompt_tokens + max_tokens.unwrap_or(default_max),
            Prepared::Embed { prompt_tokens, .. } => *prompt_tokens,
            Prepared::Messages {
                max_tokens,
                input_total,
                ..
            } => input_total + max_tokens,
        }
    }
}

fn get_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    obj.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("'{field}' is a required string field")))
}

fn opt_pos_int(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "'{field}' must be a positive integer"
            ))),
        },
    }
}

/// Text of an OpenAI message `content` (string, array of parts, or null).
fn openai_content_text(v: Option<&Value>) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                match ty {
                    "text" => out.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| ApiError::bad_request("text content part needs 'text'"))?
                            .to_string(),
                    ),
                    "image_url" | "input_audio" | "file" => {}
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "unsupported content part type '{ty}'"
                        )));
                    }
                }
            }
            Ok(out.join("\n"))
        }
        Some(_) => Err(ApiError::bad_request(
            "'content' must be a string or an array",
        )),
    }
}

fn prepare_chat(obj: &Map<String, Value>) -> Result<Prepared, ApiError> {
    let model = get_str(obj, "model")?.to_string();
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("'messages' must be a non-empty array"))?;
    let mut prompt_tokens = 3u64;
    let mut last_user = String::new();
    for m in msgs {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("each message needs a string 'role'"))?;
        if !matches!(
            role,
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err(ApiError::bad_request(format!("invalid role '{role}'")));
        }
        let text = openai_content_text(m.get("content"))?;
        prompt_tokens += 3 + count_tokens(role) + count_tokens(&text);
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            prompt_tokens += 1 + count_tokens(name);
        }
        if role == "user" {
            last_user = text;
        }
    }
    let max_tokens = match opt_pos_int(obj, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_pos_int(obj, "max_tokens")?,
    };
    if let Some(t) = obj.get("temperature").filter(|t| !t.is_null()) {
        match t.as_f64() {
            Some(x) if (0.0..=2.0).contains(&x) => {}
            _ => {
                return Err(ApiError::bad_request(
                    "'temperature' must be a number in [0, 2]",
                ));
            }
        }
    }
    let wants_json = match obj.get("response_format") {
        None | Some(Value::Null) => false,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object") => true,
            Some("json_schema") => {
                if !rf.get("json_schema").is_some_and(Value::is_object) {
                    return Err(ApiError::bad_request(
                        "response_format.json_schema must be an object",
                    ));
                }
                true
            }
            _ => return Err(ApiError::bad_request("invalid response_format.type")),
        },
    };
    let canon = Value::Array(msgs.clone()).to_string();
    Ok(Prepared::Chat {
        model,
        hash: blake3::hash(canon.as_bytes()),
        wants_json,
        last_user,
        max_tokens,
        prompt_tokens,
    })
}

fn prepare_embed(obj: &Map<String, Value>, cfg: &SimConfig) -> Result<Prepared, ApiError> {
    let model = get_str(obj, "model")?.to_string();
    let inputs: Vec<String> = match obj.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request("'input' array items must be strings"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "'input' must be a string or a non-empty array of strings",
            ));
        }
    };
    if inputs.len() > 2048 {
        return Err(ApiError::bad_request("'input' may hold at most 2048 items"));
    }
    let dims = match opt_pos_int(obj, "dimensions")? {
        Some(d) if d <= 8192 => d as usize,
        Some(_) => return Err(ApiError::bad_request("'dimensions' must be <= 8192")),
        None => cfg.embedding_dim,
    };
    let base64 = match obj.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "'encoding_format' must be float or base64",
            ));
        }
    };
    let prompt_tokens = inputs.iter().map(|s| count_tokens(s)).sum();
    Ok(Prepared::Embed {
        model,
        inputs,
        dims,
        base64,
        prompt_tokens,
    })
}

/// One Anthropic content block, flattened.
struct Block {
    role: &'static str,
    text: String,
    cached: bool,
}

fn anthropic_blocks(role: &'static str, v: &Value, out: &mut Vec<Block>) -> Result<(), ApiError> {
    match v {
        Value::String(s) => out.push(Block {
            role,
            text: s.clone(),
            cached: false,
        }),
        Value::Array(blocks) => {
            for b in blocks {
                let obj = b
                    .as_object()
                    .ok_or_else(|| ApiError::bad_request("content blocks must be objects"))?;
                let ty = obj
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request("content block needs a 'type'"))?;
                let text = match (ty, obj.get("text")) {
                    ("text", Some(Value::String(t))) => t.clone(),
                    ("text", _) => return Err(ApiError::bad_request("text block needs 'text'")),
                    _ => b.to_string(),
                };
                let cached = match obj.get("cache_control") {
                    None | Some(Value::Null) => false,
                    Some(cc) if cc.get("type").and_then(Value::as_str) == Some("ephemeral") => true,
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "cache_control.type must be 'ephemeral'",
                        ));
                    }
                };
                out.push(Block { role, text, cached });
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "content must be a string or an array of blocks",
            ));
        }
    }
    Ok(())
}

fn prepare_messages(obj: &Map<String, Value>) -> Result<Prepared, ApiError> {
    let model = get_str(obj, "model")?.to_string();
    let max_tokens = opt_pos_int(obj, "max_tokens")?
        .ok_or_else(|| ApiError::bad_request("max_tokens: Field required"))?;
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("messages: must be a non-empty array"))?;
    let mut blocks = Vec::new();
    if let Some(sys) = obj.get("system").filter(|s| !s.is_null()) {
        anthropic_blocks("system", sys, &mut blocks)?;
    }
    let n_system = blocks.len();
    let mut last_user = String::new();
    for m in msgs {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => "user",
            Some("assistant") => "assistant",
            _ => {
                return Err(ApiError::bad_request(
                    "messages: role must be 'user' or 'assistant'",
                ));
            }
        };
        let content = m
            .get("content")
            .ok_or_else(|| ApiError::bad_request("messages: content is required"))?;
        let start = blocks.len();
        anthropic_blocks(role, content, &mut blocks)?;
        if role == "user" {
            last_user = blocks[start..]
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    if blocks.iter().filter(|b| b.cached).count() > 4 {
        return Err(ApiError::bad_request(
            "A maximum of 4 blocks with cache_control may be provided.",
        ));
    }
    let system_text: String = blocks[..n_system].iter().map(|b| b.text.as_str()).collect();
    let wants_json =
        system_text.to_lowercase().contains("json") || last_user.to_lowercase().contains("json");
    let input_total: u64 = blocks.iter().map(|b| count_tokens(&b.text)).sum();
    let cache_prefix = blocks.iter().rposition(|b| b.cached).map(|last| {
        let mut h = blake3::Hasher::new();
        h.update(model.as_bytes());
        for b in &blocks[..=last] {
            h.update(&[0]);
            h.update(b.role.as_bytes());
            h.update(&[0]);
            h.update(b.text.as_bytes());
        }
        let toks = blocks[..=last].iter().map(|b| count_tokens(&b.text)).sum();
        (*h.finalize().as_bytes(), toks)
    });
    let canon = json!([obj.get("system").cloned().unwrap_or(Value::Null), msgs]).to_string();
    Ok(Prepared::Messages {
        model,
        hash: blake3::hash(canon.as_bytes()),
        wants_json,
        last_user,
        max_tokens,
        input_total,
        cache_prefix,
    })
}

/// Deterministic assistant text plus a `finish` flag (true = cut by max_tokens).
fn assistant_text(
    hash: &blake3::Hash,
    wants_json: bool,
    last_user: &str,
    max: Option<u64>,
) -> (String, bool) {
    let full = if wants_json {
        extraction(last_user).to_string()
    } else {
        sentence(hash)
    };
    match max {
        Some(m) => truncate_to_tokens(&full, m),
        None => (full, false),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Cuts a string to roughly half (on a char boundary); never valid JSON for an object.
fn halve(s: &str) -> String {
    let mut cut = s.len() / 2;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut.max(1).min(s.len())].to_string()
}

#[allow(clippy::too_many_arguments)]
async fn process(
    st: &Arc<AppState>,
    cfg: &SimConfig,
    ep: Endpoint,
    headers: &HeaderMap,
    body: &Bytes,
    key: Option<&str>,
    concurrency: u64,
    seq: u64,
) -> (Response, Option<Snapshot>) {
    let vendor = ep.vendor();
    let err = |e: ApiError| (e.render(vendor), None);
    if let Err(e) = check_auth(vendor, headers, key, cfg) {
        return err(e);
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return err(ApiError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}"
            )));
        }
    };
    let Some(obj) = value.as_object() else {
        return err(ApiError::bad_request("request body must be a JSON object"));
    };
    let prepared = match ep {
        Endpoint::Chat => prepare_chat(obj),
        Endpoint::Embeddings => prepare_embed(obj, cfg),
        Endpoint::Messages => prepare_messages(obj),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return err(e),
    };
    if !cfg.models.is_empty() && !cfg.models.iter().any(|m| m == prepared.model()) {
        let model = prepared.model();
        return err(ApiError {
            status: StatusCode::NOT_FOUND,
            oa_type: "invalid_request_error",
            oa_code: Some("model_not_found"),
            an_type: "not_found_error",
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            retry_after: None,
        });
    }
    if let Some(h) = cfg.hidden_concurrency
        && concurrency > u64::from(h)
    {
        st.lock().stats.concurrency_limited += 1;
        return err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            oa_type: "server_error",
            oa_code: None,
            an_type: "overloaded_error",
            message: "The server is currently overloaded with other requests. Please retry.".into(),
            retry_after: Some(Duration::from_secs(1)),
        });
    }
    let (fault, latency) = st.lock().draw();
    if fault == Fault::E429 {
        st.lock().record_injected("429");
        return err(ApiError::rate_limited(
            "requests",
            "Rate limit reached (simulated spurious 429). Please try again in 1s.".into(),
            Duration::from_secs(1),
        ));
    }
    let debit = prepared.debit(cfg.default_max_tokens);
    let admitted = {
        let mut g = st.lock();
        let r = g.limiter.try_acquire(debit, Instant::now());
        match &r {
            Ok(_) => g.stats.tokens_debited += debit,
            Err(_) => g.stats.rate_limited += 1,
        }
        r
    };
    let snap = match admitted {
        Ok(s) => s,
        Err((d, snap)) => {
            let unit = if d.which == "requests" {
                "requests per min (RPM)"
            } else {
                "tokens per min (TPM)"
            };
            let msg = if d.too_large {
                format!(
                    "Request too large for {} on {unit}: Limit {}, Requested {} (burst window {}s).",
                    prepared.model(),
                    d.limit,
                    d.requested,
                    cfg.burst_seconds
                )
            } else {
                format!(
                    "Rate limit reached for {} on {unit}: Limit {}, Requested {}. Please try again in {}.",
                    prepared.model(),
                    d.limit,
                    d.requested,
                    format_reset(d.retry_after)
                )
            };
            let e = ApiError::rate_limited(d.which, msg, d.retry_after);
            return (e.render(vendor), Some(snap));
        }
    };
    match fault {
        Fault::E500 => {
            st.lock().record_injected("500");
            let e = ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                oa_type: "server_error",
                oa_code: Some("internal_error"),
                an_type: "api_error",
                message: "The server had an error while processing your request (simulated)."
                    .into(),
                retry_after: None,
            };
            return (e.render(vendor), Some(snap));
        }
        Fault::Hang => {
            st.lock().record_injected("hang");
            tokio::time::sleep(Duration::from_secs(cfg.hang_seconds)).await;
            let e = ApiError {
                status: StatusCode::GATEWAY_TIMEOUT,
                oa_type: "server_error",
                oa_code: Some("timeout"),
                an_type: "api_error",
                message: "Simulated hang ended.".into(),
                retry_after: None,
            };
            return (e.render(vendor), Some(snap));
        }
        _ => {}
    }
    tokio::time::sleep(latency).await;
    let malformed = fault == Fault::Malformed;
    let id = blake3::hash(format!("{seq}:{}", blake3::hash(body).to_hex()).as_bytes()).to_hex();
    let id = &id.as_str()[..24];
    let (mut value, billed, json_mode) = match prepared {
        Prepared::Chat {
            model,
            hash,
            wants_json,
            last_user,
            max_tokens,
            prompt_tokens,
        } => {
            let (mut text, cut) = assistant_text(&hash, wants_json, &last_user, max_tokens);
            let completion = count_tokens(&text);
            if malformed && wants_json {
                text = halve(&text);
            }
            let v = json!({
                "id": format!("chatcmpl-sim{id}"),
                "object": "chat.completion",
                "created": unix_now(),
                "model": model,
                "system_fingerprint": "fp_pipe_sim",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": if cut { "length" } else { "stop" },
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
                },
            });
            let billed = Billed {
                prompt: prompt_tokens,
                completion,
                ..Billed::default()
            };
            (v, billed, wants_json)
        }
        Prepared::Embed {
            model,
            inputs,
            dims,
            base64: b64,
            prompt_tokens,
        } => {
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let v = embedding(t, dims);
                    let emb = if b64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        json!(base64(&bytes))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": i, "embedding": emb})
                })
                .collect();
            let v = json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            });
            let billed = Billed {
                prompt: prompt_tokens,
                ..Billed::default()
            };
            (v, billed, false)
        }
        Prepared::Messages {
            model,
            hash,
            wants_json,
            last_user,
            max_tokens,
            input_total,
            cache_prefix,
        } => {
            let (mut text, cut) = assistant_text(&hash, wants_json, &last_user, Some(max_tokens));
            let output = count_tokens(&text);
            let (mut read, mut created) = (0, 0);
            if let Some((key, toks)) = cache_prefix {
                if st.lock().cache_lookup(key, Instant::now()) {
                    read = toks;
                } else {
                    created = toks;
                }
            }
            let input = input_total.saturating_sub(read + created);
            if malformed && wants_json {
                text = halve(&text);
            }
            let v = json!({
                "id": format!("msg_sim{id}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": if cut { "max_tokens" } else { "end_turn" },
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input,
                    "output_tokens": output,
                    "cache_creation_input_tokens": created,
                    "cache_read_input_tokens": read,
                },
            });
            let billed = Billed {
                prompt: input,
                completion: output,
                cache_read: read,
                cache_creation: created,
            };
            (v, billed, wants_json)
        }
    };
    if cfg.latency_per_output_token_ms > 0.0 && billed.completion > 0 {
        let ms = cfg.latency_per_output_token_ms * billed.completion as f64;
        tokio::time::sleep(Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0)).await;
    }
    if malformed {
        st.lock().record_injected("malformed");
    }
    st.lock().record_success(billed);
    let body_text = if malformed && !json_mode {
        halve(&value.to_string())
    } else {
        std::mem::take(&mut value).to_string()
    };
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body_text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    (resp, Some(snap))
}
