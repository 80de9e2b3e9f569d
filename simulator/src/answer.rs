//! The simulated model: what a chat or messages request gets as an answer.

use std::sync::Arc;

use serde_json::Value;

use crate::config::{SimConfig, WrongJsonKind};
use crate::content::{Encoding, extraction_json, extraction_schema, long_text, sentence};
use crate::mistakes;
use crate::request::{Mode, Turn};
use crate::schema::{Extraction, generate, without_schema};

/// What a model says when it refuses.
pub const REFUSAL: &str = "I'm sorry, but I can't help with that.";

/// The generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The content, or the refusal text when `refusal` is set.
    pub text: String,
    pub refusal: bool,
    /// Ended by the token limit (finish reason `length` / `max_tokens`).
    pub cut: bool,
    /// Output tokens of `text`.
    pub tokens: u64,
    /// The mistake made on purpose, if any (for stats and tests).
    pub mistake: Option<WrongJsonKind>,
}

/// Per-request draws: deterministic for one request body under one seed.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    pub seed: u64,
    pub body: [u8; 32],
}

impl Draws {
    /// Uniform in [0, 1) for `domain`.
    pub fn unit(&self, domain: &str) -> f64 {
        (self.bits(domain) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bits(&self, domain: &str) -> u64 {
        let mut h = blake3::Hasher::new_derive_key("pipe-sim per-body draw");
        h.update(&self.seed.to_le_bytes());
        h.update(domain.as_bytes());
        h.update(&self.body);
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_le_bytes(eight)
    }
}

/// Inputs of one answer.
pub struct Ask<'a> {
    pub turn: &'a Turn,
    /// The request's token limit, if it set one.
    pub max_tokens: Option<u64>,
    /// The limit the model writes against: `max_tokens`, or the config's default.
    pub length_cap: u64,
    pub cfg: &'a SimConfig,
    pub draws: Draws,
    /// An injected `fault_malformed` answer: no other fault on top.
    pub malformed: bool,
}

/// Answers `ask`. `validator` compiles (and caches) a schema for
/// recognising the previous answer's mistake on a repair turn.
pub fn answer(
    ask: &Ask<'_>,
    validator: impl FnOnce(&Value) -> Option<Arc<jsonschema::Validator>>,
) -> Answer {
    let cfg = ask.cfg;
    if !ask.malformed && cfg.fault_refusal > 0.0 && ask.draws.unit("refusal") < cfg.fault_refusal {
        return Answer {
            text: REFUSAL.to_string(),
            refusal: true,
            cut: false,
            tokens: ask.turn.enc.count(REFUSAL),
            mistake: None,
        };
    }
    match &ask.turn.mode {
        Mode::Text => text_answer(ask),
        Mode::Json { schema } => json_answer(ask, schema.as_ref(), validator),
    }
}

fn text_answer(ask: &Ask<'_>) -> Answer {
    let turn = ask.turn;
    match ask.cfg.answer_length {
        Some(len) => {
            // Drawn from the conversation, so a retry gets the same length.
            let u = Draws {
                seed: 0,
                body: *turn.hash.as_bytes(),
            }
            .unit("answer length");
            let fraction = len.min_fraction + u * (len.max_fraction - len.min_fraction);
            let n = ((fraction * ask.length_cap as f64).round() as u64).clamp(1, ask.length_cap);
            Answer {
                text: long_text(turn.enc, &turn.hash, n),
                refusal: false,
                cut: ask.max_tokens.is_some_and(|m| n >= m),
                tokens: n,
                mistake: None,
            }
        }
        None => finish(turn.enc, sentence(&turn.hash), false, ask.max_tokens, None),
    }
}

fn json_answer(
    ask: &Ask<'_>,
    schema: Option<&Value>,
    validator: impl FnOnce(&Value) -> Option<Arc<jsonschema::Validator>>,
) -> Answer {
    let cfg = ask.cfg;
    let turn = ask.turn;
    let ex = Extraction::of(&without_schema(&turn.source));
    let value = match schema {
        Some(s) => generate(s, &ex),
        None => extraction_json(&ex.doc),
    };
    let rules = schema.unwrap_or_else(|| extraction_schema());
    let mut mistake = None;
    if !ask.malformed
        && cfg.repeat_mistake > 0.0
        && let Some(previous) = turn.previous_answer.as_deref()
        && ask.draws.unit("repeat mistake") < cfg.repeat_mistake
    {
        mistake = validator(rules)
            .and_then(|v| mistakes::classify(previous, |value| mistakes::check(&v, value)));
    }
    if mistake.is_none()
        && !ask.malformed
        && cfg.fault_wrong_json > 0.0
        && !cfg.wrong_json_kinds.is_empty()
        && ask.draws.unit("wrong json") < cfg.fault_wrong_json
    {
        let kinds = &cfg.wrong_json_kinds;
        let pick = ask.draws.bits("wrong json kind") % kinds.len() as u64;
        mistake = Some(kinds[pick as usize]);
    }
    match mistake {
        Some(kind) => {
            let wrong = mistakes::make(
                kind,
                value,
                rules,
                ask.draws.bits("wrong json place"),
                ask.length_cap,
                turn.enc,
            );
            finish(
                turn.enc,
                wrong.text,
                wrong.cut,
                ask.max_tokens,
                Some(wrong.kind),
            )
        }
        None => finish(turn.enc, value.to_string(), false, ask.max_tokens, None),
    }
}

/// Cuts `text` to `max` tokens when it is longer.
fn finish(
    enc: Encoding,
    text: String,
    cut: bool,
    max: Option<u64>,
    mistake: Option<WrongJsonKind>,
) -> Answer {
    let (text, cut_now, tokens) = enc.truncate_counted(text, max.unwrap_or(u64::MAX));
    Answer {
        text,
        refusal: false,
        cut: cut || cut_now,
        tokens,
        mistake,
    }
}
