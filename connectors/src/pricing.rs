//! Published list prices, USD per million tokens, matched by model-name prefix (so dated
//! snapshots such as `gpt-4o-mini-2024-07-18` find their family). Prices change: a provider's
//! `pricing:` in YAML overrides this table, and a model missing here is reported as $0 with a
//! warning, never guessed.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ListPrice {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
    pub cache_write: f64,
}

const fn openai(input: f64, output: f64, cached_input: f64) -> ListPrice {
    ListPrice {
        input,
        output,
        cached_input,
        // OpenAI does not bill cache writes separately.
        cache_write: input,
    }
}

const fn anthropic(input: f64, output: f64) -> ListPrice {
    // Anthropic: cache reads at 10 % of input, 5-minute cache writes at 125 %.
    ListPrice {
        input,
        output,
        cached_input: input * 0.1,
        cache_write: input * 1.25,
    }
}

/// Longest prefix first within a family, so `gpt-4o-mini` is not priced as `gpt-4o`.
const TABLE: &[(&str, ListPrice)] = &[
    ("gpt-5-nano", openai(0.05, 0.40, 0.005)),
    ("gpt-5-mini", openai(0.25, 2.00, 0.025)),
    ("gpt-5", openai(1.25, 10.00, 0.125)),
    ("gpt-4.1-nano", openai(0.10, 0.40, 0.025)),
    ("gpt-4.1-mini", openai(0.40, 1.60, 0.10)),
    ("gpt-4.1", openai(2.00, 8.00, 0.50)),
    ("gpt-4o-mini", openai(0.15, 0.60, 0.075)),
    ("gpt-4o", openai(2.50, 10.00, 1.25)),
    ("o4-mini", openai(1.10, 4.40, 0.275)),
    ("o3-mini", openai(1.10, 4.40, 0.55)),
    ("o3", openai(2.00, 8.00, 0.50)),
    ("text-embedding-3-small", openai(0.02, 0.0, 0.02)),
    ("text-embedding-3-large", openai(0.13, 0.0, 0.13)),
    ("text-embedding-ada-002", openai(0.10, 0.0, 0.10)),
    ("claude-3-5-haiku", anthropic(0.80, 4.00)),
    ("claude-haiku-4-5", anthropic(1.00, 5.00)),
    ("claude-3-7-sonnet", anthropic(3.00, 15.00)),
    ("claude-sonnet-4", anthropic(3.00, 15.00)),
    ("claude-opus-4-5", anthropic(5.00, 25.00)),
    ("claude-opus-4", anthropic(15.00, 75.00)),
];

/// The list price of `model`, if this table knows it.
pub fn list_price(model: &str) -> Option<ListPrice> {
    TABLE
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(list_price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(list_price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(list_price("claude-opus-4-1-20250805").unwrap().input, 15.0);
        assert_eq!(list_price("claude-opus-4-5").unwrap().input, 5.0);
        assert!(list_price("llama3.1:8b").is_none());
    }
}
