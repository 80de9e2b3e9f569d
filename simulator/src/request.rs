//! Parsing and validating vendor requests into a [`Prepared`] request.

use serde_json::{Map, Value, json};

use crate::config::{SimConfig, TokenCounting};
use crate::content::{Encoding, count_tokens};
use crate::error::ApiError;
use crate::schema::schema_in_text;

/// What kind of answer the request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Text,
    /// JSON, following `schema` when there is one.
    Json {
        schema: Option<Value>,
    },
}

impl Mode {
    pub fn is_json(&self) -> bool {
        matches!(self, Mode::Json { .. })
    }
}

/// A conversation turn the answer is built from.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Hash of the conversation (the answer's seed).
    pub hash: blake3::Hash,
    pub mode: Mode,
    /// The text the answer is about: the last user message, or on a repair
    /// turn the user message the first answer answered (the model answers the
    /// original request again).
    pub source: String,
    /// On a repair turn (an assistant message followed by a user message):
    /// the text of that assistant message.
    pub previous_answer: Option<String>,
    /// The encoding the answer is counted in.
    pub enc: Encoding,
}

/// A parsed, validated request.
pub enum Prepared {
    Chat {
        model: String,
        turn: Turn,
        max_tokens: Option<u64>,
        prompt_tokens: u64,
        /// Unicode scalar values of all message texts (OpenAI's estimate).
        prompt_chars: u64,
        /// Hashes of the prompt's 1024 + 128*i token prefixes (OpenAI prompt cache).
        cache_prefixes: Vec<[u8; 32]>,
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
        turn: Turn,
        max_tokens: u64,
        input_total: u64,
        cache_prefix: Option<([u8; 32], u64)>,
    },
}

impl Prepared {
    pub fn model(&self) -> &str {
        match self {
            Prepared::Chat { model, .. }
            | Prepared::Embed { model, .. }
            | Prepared::Messages { model, .. } => model,
        }
    }

    /// Tokens debited from the TPM bucket (max_tokens pre-accounting).
    pub fn debit(&self, cfg: &SimConfig) -> u64 {
        match self {
            Prepared::Chat {
                max_tokens,
                prompt_tokens,
                prompt_chars,
                ..
            } => {
                let out = max_tokens.unwrap_or(cfg.default_max_tokens);
                match cfg.token_counting {
                    TokenCounting::Tiktoken => prompt_tokens + out,
                    TokenCounting::OpenaiEstimate => out + prompt_chars.div_ceil(4),
                }
            }
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
fn openai_content_text(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
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
            Ok(Some(out.join("\n")))
        }
        Some(_) => Err(ApiError::bad_request(
            "'content' must be a string or an array",
        )),
    }
}

/// Models that reason before answering: o-series and gpt-5 (`^o\d`, `^gpt-5`).
/// They take `max_completion_tokens` only, and `temperature` only at 1.
pub fn is_reasoning_model(model: &str) -> bool {
    let mut c = model.chars();
    (c.next() == Some('o') && c.next().is_some_and(|d| d.is_ascii_digit()))
        || model.starts_with("gpt-5")
}

fn check_reasoning_params(model: &str, obj: &Map<String, Value>) -> Result<(), ApiError> {
    if !is_reasoning_model(model) {
        return Ok(());
    }
    if obj.get("max_tokens").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        )
        .with_param("max_tokens")
        .with_code("unsupported_parameter"));
    }
    if let Some(t) = obj.get("temperature").filter(|t| !t.is_null())
        && t.as_f64() != Some(1.0)
    {
        return Err(ApiError::bad_request(format!(
            "Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."
        ))
        .with_param("temperature")
        .with_code("unsupported_value"));
    }
    Ok(())
}

/// Python's repr of a path tuple, as OpenAI's schema errors print it.
fn context_repr(path: &[String]) -> String {
    match path {
        [] => "()".into(),
        [one] => format!("('{one}',)"),
        many => format!(
            "({})",
            many.iter()
                .map(|p| format!("'{p}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What OpenAI's strict structured outputs refuse in a schema: an object
/// without `additionalProperties: false`, or whose `required` misses a
/// property. `None` = accepted.
fn strict_schema_problem(schema: &Value) -> Option<String> {
    fn visit(s: &Value, path: &mut Vec<String>) -> Option<String> {
        let obj = s.as_object()?;
        let is_object = obj.get("type").is_some_and(|t| {
            t == "object"
                || t.as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "object"))
        }) || obj.contains_key("properties");
        if is_object {
            if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Some(format!(
                    "In context={}, 'additionalProperties' is required to be supplied and to be false.",
                    context_repr(path)
                ));
            }
            let required: Vec<&str> = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = obj.get("properties").and_then(Value::as_object)
                && let Some(missing) = props.keys().find(|k| !required.contains(&k.as_str()))
            {
                return Some(format!(
                    "In context={}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'.",
                    context_repr(path)
                ));
            }
        }
        for key in ["properties", "$defs", "definitions"] {
            if let Some(map) = obj.get(key).and_then(Value::as_object) {
                for (k, sub) in map {
                    path.push(key.to_string());
                    path.push(k.clone());
                    let found = visit(sub, path);
                    path.truncate(path.len() - 2);
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        if let Some(items) = obj.get("items") {
            path.push("items".into());
            let found = visit(items, path);
            path.pop();
            if found.is_some() {
                return found;
            }
        }
        for key in ["anyOf", "allOf"] {
            if let Some(list) = obj.get(key).and_then(Value::as_array) {
                for (i, sub) in list.iter().enumerate() {
                    path.push(key.to_string());
                    path.push(i.to_string());
                    let found = visit(sub, path);
                    path.truncate(path.len() - 2);
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        None
    }
    visit(schema, &mut Vec::new())
}

fn openai_mode(obj: &Map<String, Value>, structured_output: bool) -> Result<Mode, ApiError> {
    let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(Mode::Text);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Mode::Text),
        Some("json_object") => Ok(Mode::Json { schema: None }),
        Some("json_schema") if !structured_output => Err(ApiError::bad_request(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with \
             this model.",
        )
        .with_param("response_format")),
        Some("json_schema") => {
            let Some(js) = rf.get("json_schema").filter(|v| v.is_object()) else {
                return Err(ApiError::bad_request(
                    "response_format.json_schema must be an object",
                ));
            };
            let name = js.get("name").and_then(Value::as_str).unwrap_or("");
            let schema = js.get("schema").filter(|s| s.is_object()).cloned();
            if js.get("strict") == Some(&Value::Bool(true))
                && let Some(problem) = schema.as_ref().and_then(strict_schema_problem)
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid schema for response_format '{name}': {problem}"
                ))
                .with_param("response_format"));
            }
            Ok(Mode::Json { schema })
        }
        _ => Err(ApiError::bad_request("invalid response_format.type")),
    }
}

// Stand-ins for the chat-format tokens around each message; they only need to
// make the token sequence as long as OpenAI's count and distinct from text.
const IM_START: u32 = u32::MAX;
const IM_SEP: u32 = u32::MAX - 1;
const IM_END: u32 = u32::MAX - 2;
const NAME_SEP: u32 = u32::MAX - 3;

/// Hashes of the prompt prefixes of 1024, 1152, 1280, ... tokens.
fn prefix_hashes(model: &str, tokens: &[u32]) -> Vec<[u8; 32]> {
    const MIN: usize = 1024;
    const STEP: usize = 128;
    if tokens.len() < MIN {
        return Vec::new();
    }
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let mut h = blake3::Hasher::new_derive_key("pipe-sim openai prompt cache");
    h.update(model.as_bytes());
    h.update(&[0]);
    h.update(&bytes[..MIN * 4]);
    let mut out = vec![*h.finalize().as_bytes()];
    let mut at = MIN;
    while at + STEP <= tokens.len() {
        h.update(&bytes[at * 4..(at + STEP) * 4]);
        at += STEP;
        out.push(*h.finalize().as_bytes());
    }
    out
}

pub fn prepare_chat(obj: &Map<String, Value>, cfg: &SimConfig) -> Result<Prepared, ApiError> {
    let model = get_str(obj, "model")?.to_string();
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("'messages' must be a non-empty array"))?;
    check_reasoning_params(&model, obj)?;
    let enc = cfg.tokenizer.encoding_for(&model);
    let mut tokens: Vec<u32> = Vec::new();
    let mut prompt_chars = 0u64;
    let mut last_user = String::new();
    let mut last_assistant: Option<String> = None;
    let mut previous_answer: Option<String> = None;
    let mut answered_user: Option<String> = None;
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
        let content = openai_content_text(m.get("content"))?;
        let text = content.as_deref().unwrap_or("");
        prompt_chars += text.chars().count() as u64;
        // 3 + tokens(role) + tokens(content) per message, like OpenAI's count.
        tokens.push(IM_START);
        tokens.extend(enc.encode(role));
        tokens.push(IM_SEP);
        tokens.extend(enc.encode(text));
        tokens.push(IM_END);
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            tokens.push(NAME_SEP);
            tokens.extend(enc.encode(name));
        }
        match role {
            "user" => {
                if let Some(answer) = last_assistant.take() {
                    previous_answer = Some(answer);
                    answered_user.get_or_insert_with(|| last_user.clone());
                }
                last_user = text.to_string();
            }
            "assistant" => last_assistant = content,
            _ => {}
        }
    }
    // The reply is primed with 3 more tokens.
    tokens.extend([IM_START, IM_SEP, IM_END]);
    let prompt_tokens = tokens.len() as u64;
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
    let mode = openai_mode(obj, cfg.structured_output)?;
    let cache_prefixes = if cfg.openai_prompt_cache {
        prefix_hashes(&model, &tokens)
    } else {
        Vec::new()
    };
    let canon = Value::Array(msgs.clone()).to_string();
    Ok(Prepared::Chat {
        model,
        turn: Turn {
            hash: blake3::hash(canon.as_bytes()),
            mode,
            source: match previous_answer {
                Some(_) => answered_user.unwrap_or(last_user),
                None => last_user,
            },
            previous_answer,
            enc,
        },
        max_tokens,
        prompt_tokens,
        prompt_chars,
        cache_prefixes,
    })
}

pub fn prepare_embed(obj: &Map<String, Value>, cfg: &SimConfig) -> Result<Prepared, ApiError> {
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

pub fn prepare_messages(obj: &Map<String, Value>) -> Result<Prepared, ApiError> {
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
    let mut last_assistant: Option<String> = None;
    let mut previous_answer: Option<String> = None;
    let mut answered_user: Option<String> = None;
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
        let text = blocks[start..]
            .iter()
            .map(|b| b.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if role == "user" {
            if let Some(answer) = last_assistant.take() {
                previous_answer = Some(answer);
                answered_user.get_or_insert_with(|| last_user.clone());
            }
            last_user = text;
        } else {
            last_assistant = Some(text);
        }
    }
    if blocks.iter().filter(|b| b.cached).count() > 4 {
        return Err(ApiError::bad_request(
            "A maximum of 4 blocks with cache_control may be provided.",
        ));
    }
    let system_text: String = blocks[..n_system].iter().map(|b| b.text.as_str()).collect();
    let source = match (&previous_answer, answered_user) {
        (Some(_), Some(original)) => original,
        _ => last_user.clone(),
    };
    // On a repair turn the schema may sit in the original request.
    let schema = schema_in_text(&system_text)
        .or_else(|| schema_in_text(&last_user))
        .or_else(|| schema_in_text(&source));
    let wants_json = schema.is_some()
        || system_text.to_lowercase().contains("json")
        || last_user.to_lowercase().contains("json")
        || source.to_lowercase().contains("json");
    let mode = if wants_json {
        Mode::Json { schema }
    } else {
        Mode::Text
    };
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
        turn: Turn {
            hash: blake3::hash(canon.as_bytes()),
            mode,
            source,
            previous_answer,
            // Claude's tokenizer is not public: cl100k stands in.
            enc: Encoding::Cl100kBase,
        },
        max_tokens,
        input_total,
        cache_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_model_names() {
        for m in ["o1", "o3-mini", "o4-mini-2025", "gpt-5", "gpt-5-nano"] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in ["gpt-4o", "gpt-4.1-mini", "omni", "claude-x", "o"] {
            assert!(!is_reasoning_model(m), "{m}");
        }
    }

    #[test]
    fn strict_schema_rules() {
        let ok = json!({"type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": "array", "items": {"type": "object",
                "additionalProperties": false, "required": ["b"], "properties": {"b": {"type": "string"}}}}}});
        assert_eq!(strict_schema_problem(&ok), None);
        let open = json!({"type": "object", "properties": {}});
        assert!(
            strict_schema_problem(&open)
                .is_some_and(|p| p.contains("context=()") && p.contains("additionalProperties"))
        );
        let mut missing = ok.clone();
        missing["properties"]["a"]["items"]["required"] = json!([]);
        assert_eq!(
            strict_schema_problem(&missing).as_deref(),
            Some(
                "In context=('properties', 'a', 'items'), 'required' is required to be supplied and to be an array including every key in properties. Missing 'b'."
            )
        );
    }

    #[test]
    fn prefix_hashes_step_by_128_from_1024() {
        let toks: Vec<u32> = (0..1500).collect();
        let a = prefix_hashes("m", &toks);
        assert_eq!(a.len(), 4); // 1024, 1152, 1280, 1408
        let mut other = toks.clone();
        other[1200] = 7;
        let b = prefix_hashes("m", &other);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(prefix_hashes("n", &toks)[0], a[0]);
        assert!(prefix_hashes("m", &toks[..1023]).is_empty());
    }
}
