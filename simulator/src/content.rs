//! Deterministic content: token counting, extraction JSON, sentences, embeddings.

use serde_json::{Value, json};
use tiktoken_rs::cl100k_base_singleton;

/// Number of cl100k_base tokens in `text` (special tokens treated as text).
pub fn count_tokens(text: &str) -> u64 {
    cl100k_base_singleton().encode_ordinary(text).len() as u64
}

/// Cuts `text` to at most `max` cl100k tokens. Returns the (possibly
/// shortened) text and whether it was cut.
pub fn truncate_to_tokens(text: &str, max: u64) -> (String, bool) {
    let bpe = cl100k_base_singleton();
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

/// Extraction-shaped JSON built from capitalised words and acronyms of `text`.
///
/// Speaker labels (`"CDR:"`) become `PERSON`, runs containing an acronym
/// `EQUIPMENT`, other capitalised runs `PROPER_NOUN`. Relations link each
/// speaker to what it mentions (`MENTIONS`); without speakers, consecutive
/// entities are chained (`RELATED_TO`).
pub fn extraction(text: &str) -> Value {
    const MAX: usize = 32;
    let mut entities: Vec<(String, &'static str)> = Vec::new();
    let mut relations: Vec<(String, String, &'static str)> = Vec::new();
    let add_entity = |entities: &mut Vec<(String, &'static str)>, name: &str, ty| {
        if entities.len() < MAX && !entities.iter().any(|(n, _)| n == name) {
            entities.push((name.to_string(), ty));
        }
    };
    let mut any_speaker = false;
    let mut order: Vec<String> = Vec::new();
    for line in text.lines() {
        let (speaker, rest) = split_speaker(line);
        if let Some(s) = speaker {
            any_speaker = true;
            add_entity(&mut entities, s, "PERSON");
        }
        for (name, acr) in runs(rest) {
            add_entity(
                &mut entities,
                &name,
                if acr { "EQUIPMENT" } else { "PROPER_NOUN" },
            );
            if let Some(s) = speaker {
                let rel = (s.to_string(), name.clone(), "MENTIONS");
                if s != name && relations.len() < MAX && !relations.contains(&rel) {
                    relations.push(rel);
                }
            }
            if !order.contains(&name) {
                order.push(name);
            }
        }
    }
    if !any_speaker {
        for pair in order.windows(2) {
            if relations.len() < MAX {
                relations.push((pair[0].clone(), pair[1].clone(), "RELATED_TO"));
            }
        }
    }
    json!({
        "entities": entities.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
        "relations": relations
            .iter()
            .map(|(s, t, ty)| json!({"source": s, "target": t, "type": ty}))
            .collect::<Vec<_>>(),
    })
}

/// A short deterministic sentence chosen by `hash`.
pub fn sentence(hash: &blake3::Hash) -> String {
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
