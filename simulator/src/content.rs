//! Deterministic content: token counting, extraction JSON, sentences, embeddings.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tiktoken_rs::{CoreBPE, cl100k_base_singleton, o200k_base_singleton};

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-4, GPT-3.5, the embedding models.
    #[default]
    Cl100kBase,
    /// GPT-4o, GPT-4.1, GPT-5, the o-series.
    O200kBase,
}

impl Encoding {
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::Cl100kBase => cl100k_base_singleton(),
            Encoding::O200kBase => o200k_base_singleton(),
        }
    }

    /// The token ids of `text` (special tokens treated as text).
    pub fn encode(self, text: &str) -> Vec<u32> {
        self.bpe().encode_ordinary(text)
    }

    /// Number of tokens in `text` (special tokens treated as text).
    pub fn count(self, text: &str) -> u64 {
        self.encode(text).len() as u64
    }

    /// Cuts `text` to at most `max` tokens. Returns the (possibly shortened)
    /// text and whether it was cut.
    pub fn truncate(self, text: &str, max: u64) -> (String, bool) {
        let bpe = self.bpe();
        let toks = bpe.encode_ordinary(text);
        if toks.len() as u64 <= max {
            return (text.to_string(), false);
        }
        let n = usize::try_from(max).unwrap_or(usize::MAX).min(toks.len());
        let bytes = bpe.decode_bytes(&toks[..n]).unwrap_or_default();
        let s = match std::str::from_utf8(&bytes) {
            Ok(s) => s.to_string(),
            Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        };
        (s, true)
    }

    /// Like [`Encoding::truncate`], also returning the token count of the
    /// result (one encoding when nothing is cut).
    pub fn truncate_counted(self, text: String, max: u64) -> (String, bool, u64) {
        let n = self.count(&text);
        if n <= max {
            return (text, false, n);
        }
        let (cut, _) = self.truncate(&text, max);
        let n = self.count(&cut);
        (cut, true, n)
    }
}

/// Loads both encodings. A real provider has its tokenizer loaded before it takes requests;
/// loaded by the first request instead, it would hold the first requests back a few hundred
/// milliseconds and admit them together, a burst the client never sent.
pub fn load_encodings() {
    cl100k_base_singleton();
    o200k_base_singleton();
}

/// Number of cl100k_base tokens in `text` (special tokens treated as text).
pub fn count_tokens(text: &str) -> u64 {
    Encoding::Cl100kBase.count(text)
}

/// Cuts `text` to at most `max` cl100k tokens. Returns the (possibly
/// shortened) text and whether it was cut.
pub fn truncate_to_tokens(text: &str, max: u64) -> (String, bool) {
    Encoding::Cl100kBase.truncate(text, max)
}

const STOPWORDS: &[&str] = &[
    "A", "An", "And", "As", "At", "Be", "But", "By", "Do", "For", "From", "He", "Her", "His",
    "How", "I", "If", "In", "Is", "It", "Its", "Me", "My", "No", "Not", "Of", "Oh", "Ok", "Okay",
    "On", "Or", "Our", "She", "So", "That", "The", "Their", "Then", "There", "These", "They",
    "This", "To", "Up", "We", "What", "When", "Where", "Which", "Who", "Why", "With", "Yes", "You",
    "Your", "Roger", "Extract", "Return", "Text", "Please", "Output", "Given", "Use", "Respond",
];

fn is_acronym(w: &str) -> bool {
    let letters: Vec<char> = w.chars().filter(|c| c.is_alphabetic()).collect();
    w.chars().count() >= 2 && !letters.is_empty() && letters.iter().all(|c| c.is_uppercase())
}

fn qualifies(w: &str) -> bool {
    let Some(first) = w.chars().next() else {
        return false;
    };
    first.is_uppercase() && w.chars().count() >= 2 && !STOPWORDS.contains(&w)
}

/// Splits a speaker label (`"CDR: text"`) off a transcript line.
fn split_speaker(line: &str) -> (Option<&str>, &str) {
    if let Some(idx) = line.find(':') {
        let head = line[..idx].trim();
        let words = head.split_whitespace().count();
        let starts_upper = head.chars().next().is_some_and(|c| c.is_uppercase());
        if !head.is_empty() && head.len() <= 24 && words <= 3 && starts_upper {
            return (Some(head), &line[idx + 1..]);
        }
    }
    (None, line)
}

/// Runs of capitalised words / acronyms, broken by punctuation.
fn runs(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut cur_acr = false;
    // Whether the current run began right after a sentence terminator; a
    // single ordinary capitalised word there is just a sentence start.
    let mut cur_after_stop = false;
    let mut after_stop = false;
    let flush =
        |cur: &mut Vec<&str>, acr: &mut bool, after: bool, out: &mut Vec<(String, bool)>| {
            let sentence_start_word = after && cur.len() == 1 && !*acr;
            if !cur.is_empty() && !sentence_start_word {
                out.push((cur.join(" "), *acr));
            }
            cur.clear();
            *acr = false;
        };
    for raw in text.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let trailing_punct = raw
            .chars()
            .last()
            .is_some_and(|c| !c.is_alphanumeric() && c != '\'');
        let leading_punct = raw.chars().next().is_some_and(|c| !c.is_alphanumeric());
        if leading_punct {
            flush(&mut cur, &mut cur_acr, cur_after_stop, &mut out);
        }
        if qualifies(word) {
            if cur.is_empty() {
                cur_after_stop = after_stop;
            }
            cur.push(word);
            cur_acr |= is_acronym(word);
            if trailing_punct {
                flush(&mut cur, &mut cur_acr, cur_after_stop, &mut out);
            }
        } else {
            flush(&mut cur, &mut cur_acr, cur_after_stop, &mut out);
        }
        after_stop = raw.ends_with(['.', '?', '!']);
    }
    flush(&mut cur, &mut cur_acr, cur_after_stop, &mut out);
    out
}

/// What the heuristic extractor found in one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    pub entities: Vec<Entity>,
    pub relations: Vec<Relation>,
}

/// How an entity was recognised; decides its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// A speaker label (`CDR:`).
    Speaker,
    /// A capitalised run containing an acronym (`O2 TANK`).
    Acronym,
    /// Any other capitalised run (`Mission Control`).
    Other,
}

impl EntityKind {
    /// The type used when the schema has no `enum` for it.
    pub fn label(self) -> &'static str {
        match self {
            EntityKind::Speaker => "PERSON",
            EntityKind::Acronym => "EQUIPMENT",
            EntityKind::Other => "PROPER_NOUN",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: String,
    pub kind: EntityKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub source: String,
    pub target: String,
    /// `MENTIONS` (speaker to what it mentions) or `RELATED_TO` (consecutive entities).
    pub kind: &'static str,
}

/// Entities and relations of `text`, from capitalised words and acronyms.
///
/// Speaker labels (`"CDR:"`) are speakers, runs containing an acronym
/// equipment, other capitalised runs proper nouns. Relations link each
/// speaker to what it mentions (`MENTIONS`); without speakers, consecutive
/// entities are chained (`RELATED_TO`).
pub fn extract(text: &str) -> Doc {
    const MAX: usize = 32;
    let mut doc = Doc::default();
    let add_entity = |doc: &mut Doc, name: &str, kind| {
        if doc.entities.len() < MAX && !doc.entities.iter().any(|e| e.name == name) {
            doc.entities.push(Entity {
                name: name.to_string(),
                kind,
            });
        }
    };
    let mut any_speaker = false;
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        let (speaker, rest) = split_speaker(line);
        if let Some(s) = speaker {
            any_speaker = true;
            add_entity(&mut doc, s, EntityKind::Speaker);
        }
        for (name, acr) in runs(rest) {
            let kind = if acr {
                EntityKind::Acronym
            } else {
                EntityKind::Other
            };
            add_entity(&mut doc, &name, kind);
            if let Some(s) = speaker {
                let rel = Relation {
                    source: s.to_string(),
                    target: name.clone(),
                    kind: "MENTIONS",
                };
                if s != name && doc.relations.len() < MAX && !doc.relations.contains(&rel) {
                    doc.relations.push(rel);
                }
            }
            if !order.contains(&name) {
                order.push(name);
            }
        }
    }
    if !any_speaker {
        for pair in order.windows(2) {
            if doc.relations.len() < MAX {
                doc.relations.push(Relation {
                    source: pair[0].clone(),
                    target: pair[1].clone(),
                    kind: "RELATED_TO",
                });
            }
        }
    }
    doc
}

/// The extraction shape `{"entities":[{name,type}],"relations":[{source,target,type}]}`
/// of `doc`.
pub fn extraction_json(doc: &Doc) -> Value {
    json!({
        "entities": doc.entities.iter().map(|e| json!({"name": e.name, "type": e.kind.label()})).collect::<Vec<_>>(),
        "relations": doc.relations
            .iter()
            .map(|r| json!({"source": r.source, "target": r.target, "type": r.kind}))
            .collect::<Vec<_>>(),
    })
}

/// Extraction-shaped JSON of `text` (see [`extract`]).
pub fn extraction(text: &str) -> Value {
    extraction_json(&extract(text))
}

/// A JSON Schema of the extraction shape, used to make and recognise
/// mistakes when a request asks for JSON without giving a schema.
pub fn extraction_schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        json!({
            "type": "object",
            "required": ["entities", "relations"],
            "properties": {
                "entities": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "type"],
                    "properties": {"name": {"type": "string"}, "type": {"type": "string"}}
                }},
                "relations": {"type": "array", "items": {
                    "type": "object",
                    "required": ["source", "target", "type"],
                    "properties": {
                        "source": {"type": "string"},
                        "target": {"type": "string"},
                        "type": {"type": "string"}
                    }
                }}
            }
        })
    })
}

const S: [&str; 8] = [
    "The telemetry",
    "The crew",
    "Mission control",
    "The guidance computer",
    "The flight plan",
    "The service module",
    "The lunar module",
    "The checklist",
];
const V: [&str; 8] = [
    "confirms",
    "reviews",
    "summarises",
    "flags",
    "records",
    "verifies",
    "updates",
    "reports",
];
const O: [&str; 8] = [
    "the current status",
    "the burn parameters",
    "an anomaly in the data",
    "the next procedure",
    "the consumables estimate",
    "the communication window",
    "the attitude readings",
    "the power budget",
];

/// A short deterministic sentence chosen by `hash`.
pub fn sentence(hash: &blake3::Hash) -> String {
    let b = hash.as_bytes();
    let hex = hash.to_hex();
    format!(
        "Simulated reply {}: {} {} {}.",
        &hex.as_str()[..8],
        S[usize::from(b[0] % 8)],
        V[usize::from(b[1] % 8)],
        O[usize::from(b[2] % 8)]
    )
}

fn follow_up(i: usize) -> String {
    format!(" {} {} {}.", S[i / 64], V[(i / 8) % 8], O[i % 8])
}

/// Token counts of every follow-up sentence (`" " + sentence`), so a long
/// answer is assembled without encoding it again. A follow-up starts with a
/// space and ends with a period, so cl100k's pre-tokenizer never merges
/// across two of them: the count of a concatenation is the sum.
fn follow_up_counts(enc: Encoding) -> &'static [u64; 512] {
    use std::sync::OnceLock;
    static CL100K: OnceLock<[u64; 512]> = OnceLock::new();
    static O200K: OnceLock<[u64; 512]> = OnceLock::new();
    let cell = match enc {
        Encoding::Cl100kBase => &CL100K,
        Encoding::O200kBase => &O200K,
    };
    cell.get_or_init(|| std::array::from_fn(|i| enc.count(&follow_up(i))))
}

/// A deterministic answer of exactly `n` tokens of `enc`: the short sentence
/// of `hash`, then sentences drawn from the hash's XOF, the last one cut to fit.
pub fn long_text(enc: Encoding, hash: &blake3::Hash, n: u64) -> String {
    let first = sentence(hash);
    let first_count = enc.count(&first);
    if n <= first_count {
        return enc.truncate(&first, n).0;
    }
    let counts = follow_up_counts(enc);
    let mut xof = blake3::Hasher::new_derive_key("pipe-sim long answer")
        .update(hash.as_bytes())
        .finalize_xof();
    let mut out = first;
    let mut have = first_count;
    while have < n {
        let mut pick = [0u8; 2];
        xof.fill(&mut pick);
        let i = usize::from(u16::from_le_bytes(pick)) % 512;
        let c = counts[i];
        if have + c <= n {
            out.push_str(&follow_up(i));
            have += c;
        } else {
            out.push_str(&enc.truncate(&follow_up(i), n - have).0);
            have = n;
        }
    }
    out
}

/// Deterministic L2-normalised vector from blake3 XOF of `text`.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pipe-sim-embedding\0");
    hasher.update(text.as_bytes());
    let mut xof = hasher.finalize_xof();
    let mut buf = vec![0u8; dims * 4];
    xof.fill(&mut buf);
    let mut v: Vec<f64> = buf
        .chunks_exact(4)
        .map(|c| {
            let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (f64::from(u) / f64::from(u32::MAX)) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v.into_iter().map(|x| x as f32).collect()
}

/// Standard base64 (with padding), used for `encoding_format: "base64"`.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(char::from(T[(n >> 18) as usize & 63]));
        out.push(char::from(T[(n >> 12) as usize & 63]));
        out.push(if c.len() > 1 {
            char::from(T[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            char::from(T[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apollo_line() {
        let v = extraction("CDR: Houston, we have a problem with the O2 TANK");
        let names: Vec<&str> = v["entities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["CDR", "Houston", "O2 TANK"]);
        assert_eq!(v["relations"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["entities"][0]["type"], "PERSON");
        assert_eq!(v["entities"][2]["type"], "EQUIPMENT");
        let v = extraction("CAPCOM: Roger, Apollo Thirteen. Stand by for Mission Control.");
        let names: Vec<&str> = v["entities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, ["CAPCOM", "Apollo Thirteen", "Mission Control"]);
    }

    #[test]
    fn long_text_has_exactly_the_requested_tokens() {
        for enc in [Encoding::Cl100kBase, Encoding::O200kBase] {
            for seed in 0..40u32 {
                let hash = blake3::hash(&seed.to_le_bytes());
                for n in [1, 5, 13, 14, 50, 97, 300, 1000] {
                    let text = long_text(enc, &hash, n);
                    assert_eq!(enc.count(&text), n, "{enc:?} seed {seed} n {n}: {text:?}");
                }
            }
        }
        let a = long_text(Encoding::Cl100kBase, &blake3::hash(b"x"), 200);
        assert_eq!(a, long_text(Encoding::Cl100kBase, &blake3::hash(b"x"), 200));
    }

    #[test]
    fn encodings_differ() {
        let text = "Houston, we have had a problem with the oxygen tank. ".repeat(5);
        assert_ne!(
            Encoding::Cl100kBase.encode(&text),
            Encoding::O200kBase.encode(&text)
        );
    }

    #[test]
    fn b64() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"f"), "Zg==");
    }

    #[test]
    fn truncation_counts() {
        let (s, cut) = truncate_to_tokens("one two three four five six", 3);
        assert!(cut);
        assert_eq!(count_tokens(&s), 3);
    }
}
