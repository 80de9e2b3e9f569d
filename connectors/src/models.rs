//! What the vendors publish about their models, matched by model-name prefix (so dated
//! snapshots such as `gpt-4o-2024-08-06` find their family): which request parameters a model
//! takes, how many tokens its context holds, and which tokenizer counts its prompts.

/// OpenAI's reasoning models (o1, o3, o4-mini, ... and the gpt-5 family) take
/// `max_completion_tokens` instead of `max_tokens` and refuse any `temperature` but the default.
pub fn is_reasoning_model(model: &str) -> bool {
    o_series(model) || model.starts_with("gpt-5")
}

/// `o` followed by a digit: o1, o3-mini, o4-mini...
fn o_series(model: &str) -> bool {
    let mut chars = model.chars();
    chars.next() == Some('o') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// By model-name prefix; the longest matching prefix wins.
const CONTEXT_WINDOWS: &[(&str, u64)] = &[
    ("gpt-5-chat", 128_000),
    ("gpt-5", 400_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-32k", 32_768),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("o1-mini", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
    ("claude-", 200_000),
];

/// Tokens (prompt + output) the model's context holds, when this table knows the model.
pub fn context_window(model: &str) -> Option<u64> {
    CONTEXT_WINDOWS
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, tokens)| *tokens)
}

/// A BPE encoding by its tiktoken name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Cl100kBase,
    O200kBase,
}

/// The encoding that counts `model`'s tokens, and whether the count is exact: OpenAI's own
/// models are counted exactly (o200k for gpt-4o / gpt-4.1 / gpt-4.5 / gpt-5 / o-series,
/// cl100k for gpt-4 / gpt-3.5 / the embedding models); any other model (Anthropic's, local
/// ones) gets a cl100k estimate — its tokenizer is not public or not known here.
pub fn token_encoding(model: &str) -> (Encoding, bool) {
    const O200K: &[&str] = &[
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "gpt-oss",
    ];
    const CL100K: &[&str] = &["gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"];
    if o_series(model) || O200K.iter().any(|p| model.starts_with(p)) {
        (Encoding::O200kBase, true)
    } else if CL100K.iter().any(|p| model.starts_with(p)) {
        (Encoding::Cl100kBase, true)
    } else {
        (Encoding::Cl100kBase, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_models_are_recognised() {
        for model in [
            "o1",
            "o1-mini",
            "o3-2025-04-16",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
        ] {
            assert!(is_reasoning_model(model), "{model}");
        }
        for model in [
            "gpt-4o",
            "gpt-4.1-mini",
            "omni-moderation",
            "claude-sonnet-4",
            "llama3",
        ] {
            assert!(!is_reasoning_model(model), "{model}");
        }
    }

    #[test]
    fn context_windows_by_longest_prefix() {
        assert_eq!(context_window("gpt-4o-mini-2024-07-18"), Some(128_000));
        assert_eq!(context_window("gpt-4-0613"), Some(8_192));
        assert_eq!(context_window("gpt-4.1-nano"), Some(1_047_576));
        assert_eq!(context_window("o1-mini"), Some(128_000));
        assert_eq!(context_window("claude-haiku-4-5"), Some(200_000));
        assert_eq!(context_window("llama3.1:8b"), None);
    }

    #[test]
    fn each_family_has_its_encoding() {
        assert_eq!(token_encoding("gpt-4o-mini"), (Encoding::O200kBase, true));
        assert_eq!(token_encoding("gpt-4.1"), (Encoding::O200kBase, true));
        assert_eq!(token_encoding("gpt-5-nano"), (Encoding::O200kBase, true));
        assert_eq!(token_encoding("o3-mini"), (Encoding::O200kBase, true));
        assert_eq!(token_encoding("gpt-4-turbo"), (Encoding::Cl100kBase, true));
        assert_eq!(
            token_encoding("gpt-3.5-turbo"),
            (Encoding::Cl100kBase, true)
        );
        assert_eq!(
            token_encoding("claude-sonnet-4"),
            (Encoding::Cl100kBase, false)
        );
    }
}
