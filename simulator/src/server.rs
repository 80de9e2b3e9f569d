//! HTTP routes and request handling.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::answer::{Ask, Draws, answer};
use crate::config::SimConfig;
use crate::content::{base64, embedding};
use crate::error::{ApiError, Vendor, insert, json_response};
use crate::ratelimit::{Snapshot, format_reset, rfc3339};
use crate::request::{Prepared, prepare_chat, prepare_embed, prepare_messages};
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

/// Everything one request's handling needs, owned (it moves into the
/// generation task).
struct Req {
    st: Arc<AppState>,
    cfg: Arc<SimConfig>,
    ep: Endpoint,
    seq: u64,
    draws: Draws,
    /// Requests in flight when this one arrived (itself included).
    level: u64,
}

/// Entry point shared by all vendor endpoints.
async fn api(st: Arc<AppState>, ep: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    let guard = st.enter();
    let vendor = ep.vendor();
    let key = api_key(vendor, &headers);
    let body_hash = *blake3::hash(&body).as_bytes();
    let (cfg, seq, draw_seed) =
        st.lock()
            .on_request(guard.level, body_hash, key.as_deref(), ep.name());
    let rate_limit_headers = cfg.rate_limit_headers;
    let req = Req {
        st: Arc::clone(&st),
        cfg,
        ep,
        seq,
        draws: Draws {
            seed: draw_seed,
            body: body_hash,
        },
        level: guard.level,
    };
    let (mut resp, snap) = match process(req, &headers, &body, key.as_deref()).await {
        Ok(done) => done,
        Err((e, snap)) => {
            st.lock().record_error_code(e.stat_code(vendor));
            (e.render(vendor), snap)
        }
    };
    let snap = match snap {
        Some(s) => s,
        None => st.lock().limiter.peek(Instant::now()),
    };
    if rate_limit_headers {
        add_ratelimit_headers(resp.headers_mut(), vendor, &snap);
    }
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

type Refused = (ApiError, Option<Snapshot>);

fn quota_error(vendor: Vendor) -> ApiError {
    match vendor {
        Vendor::OpenAi => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            oa_type: "insufficient_quota",
            oa_code: Some("insufficient_quota"),
            oa_param: None,
            an_type: "invalid_request_error",
            message: "You exceeded your current quota, please check your plan and billing details."
                .into(),
            retry_after: None,
        },
        // Anthropic refuses an exhausted account with a 400.
        Vendor::Anthropic => ApiError::bad_request(
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        ),
    }
}

/// The request's prompt plus its token limit, against the model's window.
fn context_error(prepared: &Prepared, window: u64) -> Option<ApiError> {
    match prepared {
        Prepared::Chat {
            max_tokens,
            prompt_tokens,
            ..
        } => {
            let message = match max_tokens {
                Some(m) if prompt_tokens + m > window => format!(
                    "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                    prompt_tokens + m
                ),
                None if *prompt_tokens > window => format!(
                    "This model's maximum context length is {window} tokens. However, your messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
                ),
                _ => return None,
            };
            Some(
                ApiError::bad_request(message)
                    .with_param("messages")
                    .with_code("context_length_exceeded"),
            )
        }
        Prepared::Messages {
            max_tokens,
            input_total,
            ..
        } => {
            if *input_total > window {
                Some(ApiError::bad_request(format!(
                    "prompt is too long: {input_total} tokens > {window} maximum"
                )))
            } else if input_total + max_tokens > window {
                Some(ApiError::bad_request(format!(
                    "input length and `max_tokens` exceed context limit: {input_total} + {max_tokens} > {window}, decrease input length or `max_tokens` and try again"
                )))
            } else {
                None
            }
        }
        Prepared::Embed { .. } => None,
    }
}

fn overload_error(status: u16, vendor: Vendor) -> ApiError {
    if status == 503 {
        let (status, message) = match vendor {
            Vendor::OpenAi => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is overloaded or not ready yet.",
            ),
            Vendor::Anthropic => (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "Overloaded",
            ),
        };
        return ApiError {
            status,
            oa_type: "server_error",
            oa_code: None,
            oa_param: None,
            an_type: "overloaded_error",
            message: message.into(),
            retry_after: None,
        };
    }
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        oa_type: "server_error",
        oa_code: None,
        oa_param: None,
        an_type: "overloaded_error",
        message: "The server is currently overloaded with other requests. Please retry.".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

async fn process(
    req: Req,
    headers: &HeaderMap,
    body: &Bytes,
    key: Option<&str>,
) -> Result<(Response, Option<Snapshot>), Refused> {
    let vendor = req.ep.vendor();
    let cfg = Arc::clone(&req.cfg);
    let st = Arc::clone(&req.st);
    check_auth(vendor, headers, key, &cfg).map_err(|e| (e, None))?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        (
            ApiError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}"
            )),
            None,
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err((
            ApiError::bad_request("request body must be a JSON object"),
            None,
        ));
    };
    let prepared = match req.ep {
        Endpoint::Chat => prepare_chat(obj, &cfg),
        Endpoint::Embeddings => prepare_embed(obj, &cfg),
        Endpoint::Messages => prepare_messages(obj),
    }
    .map_err(|e| (e, None))?;
    if !cfg.models.is_empty() && !cfg.models.iter().any(|m| m == prepared.model()) {
        let model = prepared.model();
        return Err((
            ApiError {
                status: StatusCode::NOT_FOUND,
                oa_type: "invalid_request_error",
                oa_code: Some("model_not_found"),
                oa_param: None,
                an_type: "not_found_error",
                message: format!(
                    "The model `{model}` does not exist or you do not have access to it."
                ),
                retry_after: None,
            },
            None,
        ));
    }
    if let Some(quota) = cfg.quota_tokens
        && st.lock().billed_tokens() >= quota
    {
        return Err((quota_error(vendor), None));
    }
    if let Some(window) = cfg.context_window
        && let Some(e) = context_error(&prepared, window)
    {
        return Err((e, None));
    }
    let (effective, elapsed) = {
        let mut g = st.lock();
        let elapsed = g.elapsed_s();
        let eff = cfg.effective(elapsed);
        if g.limiter.limits() != (eff.rpm, eff.tpm) {
            g.limiter.set_limits(eff.rpm, eff.tpm, Instant::now());
        }
        (eff, elapsed)
    };
    if let Some(h) = effective.hidden_concurrency
        && req.level > u64::from(h)
    {
        st.lock().stats.concurrency_limited += 1;
        return Err((overload_error(cfg.overload_status, vendor), None));
    }
    let (fault, base_latency) = st.lock().draw();
    if fault == Fault::E429 {
        st.lock().record_injected("429");
        return Err((
            ApiError::rate_limited(
                "requests",
                "Rate limit reached (simulated spurious 429). Please try again in 1s.".into(),
                Duration::from_secs(1),
            ),
            None,
        ));
    }
    let debit = prepared.debit(&cfg);
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
            let model = prepared.model();
            let e = if d.too_large {
                // No wait makes it fit: no retry-after.
                ApiError {
                    retry_after: None,
                    ..ApiError::rate_limited(
                        d.which,
                        format!(
                            "Request too large for {model} in organization org-sim on {unit}: Limit {}, Requested {}. The input or output tokens must be reduced in order to run successfully.",
                            d.limit, d.requested
                        ),
                        Duration::ZERO,
                    )
                }
            } else {
                // "Used" as the headers would say it: the limit less what they show left.
                let shown = if d.which == "requests" {
                    snap.requests
                } else {
                    snap.tokens
                };
                let used = d.limit - shown.map_or(0, |b| b.remaining.min(d.limit));
                let e = ApiError::rate_limited(
                    d.which,
                    format!(
                        "Rate limit reached for {model} in organization org-sim on {unit}: Limit {}, Used {used}, Requested {}. Please try again in {}.",
                        d.limit,
                        d.requested,
                        format_reset(d.retry_after)
                    ),
                    d.retry_after,
                );
                if cfg.retry_after_header {
                    e
                } else {
                    ApiError {
                        retry_after: None,
                        ..e
                    }
                }
            };
            return Err((e, Some(snap)));
        }
    };
    if fault == Fault::E500 {
        st.lock().record_injected("500");
        let e = ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            oa_type: "server_error",
            oa_code: Some("internal_error"),
            oa_param: None,
            an_type: "api_error",
            message: "The server had an error while processing your request (simulated).".into(),
            retry_after: None,
        };
        return Err((e, Some(snap)));
    }
    let hang = fault == Fault::Hang;
    let admitted_at = Instant::now();
    if hang {
        st.lock().record_injected("hang");
    }
    // Latency that behaves like a provider's: a phase's factor, the time of
    // day, and how full the server is.
    let load = match effective.hidden_concurrency {
        Some(h) if h > 0 => cfg.latency_load_factor * req.level as f64 / f64::from(h),
        _ => 0.0,
    };
    let factor = effective.latency_factor * cfg.drift_factor(elapsed) * (1.0 + load);
    let generation = Generation {
        req,
        prepared,
        base_latency,
        factor,
        malformed: fault == Fault::Malformed,
        hang,
    };
    // Generation runs in its own task: a client that gives up does not stop
    // the provider from finishing, and billing, the answer.
    let body_text = tokio::spawn(generation.run()).await.map_err(|_| {
        (
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                oa_type: "server_error",
                oa_code: Some("internal_error"),
                oa_param: None,
                an_type: "api_error",
                message: "The simulator failed while generating the answer.".into(),
                retry_after: None,
            },
            Some(snap),
        )
    })?;
    if hang {
        let held = Duration::from_secs(cfg.hang_seconds);
        tokio::time::sleep_until((admitted_at + held).into()).await;
        let e = ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            oa_type: "server_error",
            oa_code: Some("timeout"),
            oa_param: None,
            an_type: "api_error",
            message: "Simulated hang ended.".into(),
            retry_after: None,
        };
        return Err((e, Some(snap)));
    }
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body_text))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    Ok((resp, Some(snap)))
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

/// One admitted request's answer, generated and billed as the provider would.
struct Generation {
    req: Req,
    prepared: Prepared,
    base_latency: Duration,
    /// Multiplies the whole latency (phase, drift, load).
    factor: f64,
    malformed: bool,
    /// The answer is generated and billed, but never sent.
    hang: bool,
}

impl Generation {
    /// Builds the answer, waits for the simulated generation time, records
    /// the billing, and returns the response body.
    async fn run(self) -> String {
        let Generation {
            req,
            prepared,
            base_latency,
            factor,
            malformed,
            hang,
        } = self;
        let st = &req.st;
        let cfg = &req.cfg;
        let id = blake3::hash(
            format!(
                "{}:{}",
                req.seq,
                blake3::Hash::from(req.draws.body).to_hex()
            )
            .as_bytes(),
        )
        .to_hex();
        let id = &id.as_str()[..24];
        let validator = |schema: &Value| st.validator(schema);
        let (value, billed, json_mode) = match prepared {
            Prepared::Chat {
                model,
                turn,
                max_tokens,
                prompt_tokens,
                cache_prefixes,
                ..
            } => {
                let cached = if cache_prefixes.is_empty() {
                    0
                } else {
                    let hits = st
                        .lock()
                        .openai_cache_lookup(&cache_prefixes, Instant::now());
                    if hits == 0 {
                        0
                    } else {
                        1024 + 128 * (hits as u64 - 1)
                    }
                };
                let ask = Ask {
                    turn: &turn,
                    max_tokens,
                    length_cap: max_tokens.unwrap_or(cfg.default_max_tokens),
                    cfg,
                    draws: req.draws,
                    malformed,
                };
                let a = answer(&ask, validator);
                let json_mode = turn.mode.is_json();
                let content = if a.refusal {
                    Value::Null
                } else if malformed && json_mode {
                    Value::String(halve(&a.text))
                } else {
                    Value::String(a.text.clone())
                };
                let refusal = if a.refusal {
                    Value::String(a.text.clone())
                } else {
                    Value::Null
                };
                let v = json!({
                    "id": format!("chatcmpl-sim{id}"),
                    "object": "chat.completion",
                    "created": unix_now(),
                    "model": model,
                    "system_fingerprint": "fp_pipe_sim",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "logprobs": null,
                        "finish_reason": if a.cut { "length" } else { "stop" },
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": a.tokens,
                        "total_tokens": prompt_tokens + a.tokens,
                        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
                    },
                });
                let billed = Billed {
                    prompt: prompt_tokens,
                    completion: a.tokens,
                    cached,
                    ..Billed::default()
                };
                (v, billed, json_mode)
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
                turn,
                max_tokens,
                input_total,
                cache_prefix,
            } => {
                let (mut read, mut created) = (0, 0);
                if let Some((key, toks)) = cache_prefix {
                    if st.lock().cache_lookup(key, Instant::now()) {
                        read = toks;
                    } else {
                        created = toks;
                    }
                }
                let input = input_total.saturating_sub(read + created);
                let ask = Ask {
                    turn: &turn,
                    max_tokens: Some(max_tokens),
                    length_cap: max_tokens,
                    cfg,
                    draws: req.draws,
                    malformed,
                };
                let a = answer(&ask, validator);
                let json_mode = turn.mode.is_json();
                let text = if malformed && json_mode {
                    halve(&a.text)
                } else {
                    a.text.clone()
                };
                let stop = if a.refusal {
                    "refusal"
                } else if a.cut {
                    "max_tokens"
                } else {
                    "end_turn"
                };
                let v = json!({
                    "id": format!("msg_sim{id}"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": stop,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": input,
                        "output_tokens": a.tokens,
                        "cache_creation_input_tokens": created,
                        "cache_read_input_tokens": read,
                    },
                });
                let billed = Billed {
                    prompt: input,
                    completion: a.tokens,
                    cached: 0,
                    cache_read: read,
                    cache_creation: created,
                };
                (v, billed, json_mode)
            }
        };
        let per_token_ms = cfg.latency_per_output_token_ms * billed.completion as f64;
        let total_ms = (base_latency.as_secs_f64() * 1000.0 + per_token_ms) * factor;
        if total_ms > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(total_ms.min(3_600_000.0) / 1000.0)).await;
        }
        {
            let mut g = st.lock();
            g.record_billed(billed);
            if !hang {
                if malformed {
                    g.record_injected("malformed");
                }
                g.record_success(billed);
            }
        }
        if malformed && !json_mode {
            halve(&value.to_string())
        } else {
            value.to_string()
        }
    }
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
