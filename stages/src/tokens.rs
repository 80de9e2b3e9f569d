//! Exact OpenAI token counts (cl100k_base, o200k_base), in time linear in the text.
//!
//! tiktoken splits text with a pre-tokenizer regex into pieces and BPE-encodes each piece on
//! its own. This module does the same two steps with other engines:
//!
//! - the pre-tokenizer is tiktoken's own pattern (as in tiktoken 0.14 and tiktoken-rs 0.12) run
//!   by `regex-automata`; its one look-ahead, `\s+(?!\S)`, is emulated as `bpe-openai` does it:
//!   a pattern `\s+\s` whose last character is given back;
//! - each piece is encoded by the `bpe` crate's backtracking encoder over the cl100k / o200k
//!   dictionaries that `bpe-openai` ships. It gives tiktoken's tokens (`tokens_match_tiktoken`
//!   tests below) in time linear in the piece, where tiktoken's merge loop is quadratic: a
//!   10 MB piece without spaces takes seconds, not days.
//!
//! `bpe-openai`'s own `Tokenizer` is not used for cl100k because its pattern is tiktoken's
//! older one: it splits whitespace that ends a text after a newline ("a\n ") differently.

use std::sync::LazyLock;

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use regex_automata::{Anchored, Input, meta::Regex};

/// A tokenizer of OpenAI models, named as tiktoken names its encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// gpt-4, gpt-3.5-turbo, text-embedding-3.
    Cl100kBase,
    /// gpt-4o, gpt-4.1, gpt-5, o-series.
    O200kBase,
}

/// tiktoken's cl100k_base pattern without possessive quantifiers (which change nothing here:
/// each one is followed by a class it cannot overlap). The first alternatives, then the
/// look-ahead one, then the last, as three patterns in priority order.
const CL100K_PATTERNS: [&str; 3] = [
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]",
    r"\s+\s",
    r"\s",
];

/// tiktoken's o200k_base pattern; `\s+$` stands for `\s+(?!\S)` at the end of the text.
const O200K_PATTERNS: [&str; 3] = [
    concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+$",
    ),
    r"\s+\s",
    r"\s+",
];

/// Index of the pattern whose match ends with one look-ahead character to give back.
const LOOKAHEAD_PATTERN: usize = 1;

struct Encoding {
    pretokenizer: Regex,
    bpe: &'static BytePairEncoding,
}

impl Encoding {
    fn new(patterns: &[&str], bpe: &'static BytePairEncoding) -> Self {
        Encoding {
            pretokenizer: Regex::new_many(patterns).expect("static pre-tokenizer patterns compile"),
            bpe,
        }
    }
}

// Deserializing a dictionary and compiling the pattern take a while: once per process.
static CL100K_BASE: LazyLock<Encoding> =
    LazyLock::new(|| Encoding::new(&CL100K_PATTERNS, &bpe_openai::cl100k_base().bpe));
static O200K_BASE: LazyLock<Encoding> =
    LazyLock::new(|| Encoding::new(&O200K_PATTERNS, &bpe_openai::o200k_base().bpe));

impl Tokenizer {
    fn encoding(&self) -> &'static Encoding {
        match self {
            Tokenizer::Cl100kBase => &CL100K_BASE,
            Tokenizer::O200kBase => &O200K_BASE,
        }
    }

    /// tiktoken's name for the encoding.
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Cl100kBase => "cl100k_base",
            Tokenizer::O200kBase => "o200k_base",
        }
    }

    /// Number of tokens of `text`, as tiktoken's `encode_ordinary` gives them.
    pub fn count(&self, text: &str) -> usize {
        self.pieces(text)
            .map(|(start, end)| self.count_piece(&text[start..end]))
            .sum()
    }

    /// The pre-tokenizer's pieces of `text`, as byte ranges: they tile the text in order.
    pub(crate) fn pieces<'t>(&self, text: &'t str) -> Pieces<'t> {
        Pieces {
            regex: &self.encoding().pretokenizer,
            text,
            pos: 0,
        }
    }

    /// Tokens of one pre-tokenizer piece.
    pub(crate) fn count_piece(&self, piece: &str) -> usize {
        work::add_encoded(piece.len());
        self.encoding().bpe.count(piece.as_bytes())
    }

    /// Token ids of one pre-tokenizer piece.
    pub(crate) fn encode_piece(&self, piece: &str) -> Vec<u32> {
        work::add_encoded(piece.len());
        self.encoding()
            .bpe
            .encode_via_backtracking(piece.as_bytes())
    }

    /// Length in bytes of a token.
    pub(crate) fn token_len(&self, token: u32) -> usize {
        self.encoding().bpe.token_len(token)
    }
}

/// Iterator over pre-tokenizer pieces; see [`Tokenizer::pieces`].
pub(crate) struct Pieces<'t> {
    regex: &'static Regex,
    text: &'t str,
    pos: usize,
}

impl Iterator for Pieces<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.text.len() {
            return None;
        }
        let input = Input::new(self.text)
            .range(self.pos..)
            .anchored(Anchored::Yes);
        // The last alternative matches any single character, so a match always exists;
        // should it not, the rest of the text is one piece rather than lost.
        let start = self.pos;
        let mut end = self.regex.find(input).map_or(self.text.len(), |m| {
            let mut end = m.end();
            if m.pattern().as_usize() == LOOKAHEAD_PATTERN {
                // `\s+\s` stands for `\s+(?!\S)`: give the look-ahead character back.
                let last = self.text[start..end]
                    .chars()
                    .next_back()
                    .map_or(0, char::len_utf8);
                end -= last;
            }
            end
        });
        if end <= start {
            end = self.text.len();
        }
        self.pos = end;
        work::add_pretokenized(end - start);
        Some((start, end))
    }
}

/// How much text the tokenizer has processed on this thread, so tests can check that the
/// chunker's work grows linearly with its input without timing anything.
#[cfg(test)]
pub(crate) mod work {
    use std::cell::Cell;

    thread_local! {
        static ENCODED: Cell<u64> = const { Cell::new(0) };
        static PRETOKENIZED: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn add_encoded(bytes: usize) {
        ENCODED.with(|c| c.set(c.get() + bytes as u64));
    }

    pub(crate) fn add_pretokenized(bytes: usize) {
        PRETOKENIZED.with(|c| c.set(c.get() + bytes as u64));
    }

    /// (bytes BPE-encoded, bytes pre-tokenized) since the last call; resets both.
    pub(crate) fn take() -> (u64, u64) {
        (
            ENCODED.with(|c| c.replace(0)),
            PRETOKENIZED.with(|c| c.replace(0)),
        )
    }
}

#[cfg(not(test))]
mod work {
    #[inline(always)]
    pub(crate) fn add_encoded(_bytes: usize) {}
    #[inline(always)]
    pub(crate) fn add_pretokenized(_bytes: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiktoken(tokenizer: Tokenizer) -> &'static tiktoken_rs::CoreBPE {
        match tokenizer {
            Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
        }
    }

    const BOTH: [Tokenizer; 2] = [Tokenizer::Cl100kBase, Tokenizer::O200kBase];

    /// Our tokens must be tiktoken's, not just as many.
    fn assert_same_tokens(tokenizer: Tokenizer, text: &str) {
        let ours: Vec<u32> = tokenizer
            .pieces(text)
            .flat_map(|(s, e)| tokenizer.encode_piece(&text[s..e]))
            .collect();
        let theirs = tiktoken(tokenizer).encode_ordinary(text);
        assert_eq!(
            ours,
            theirs,
            "{}: tokens differ for {:?}",
            tokenizer.name(),
            text.chars().take(200).collect::<String>()
        );
        assert_eq!(tokenizer.count(text), theirs.len());
    }

    const CORPUS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpus/apollo13/transcripts"
    );

    #[test]
    fn tokens_match_tiktoken_on_the_corpus() {
        for day in 1..=6 {
            let path = format!("{CORPUS}/day{day:02}.txt");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for tokenizer in BOTH {
                // Whole file, and line by line (chunks are cut at lines).
                assert_same_tokens(tokenizer, &text);
                for line in text.lines().step_by(7) {
                    assert_same_tokens(tokenizer, line);
                }
            }
        }
    }

    /// Inputs that exercise each alternative of the patterns and their edges.
    const TRICKY: &[&str] = &[
        "",
        " ",
        "a\n ",
        "a\n  ",
        "a \n",
        "a\n\n",
        "a  b",
        "a   \n  b",
        "trailing   ",
        "\n\n\nx",
        "\r\n\r\nx\r",
        "tab\tseparated\t\tvalues\t",
        "He's, they'll, we'd, I'M, YOU'RE, it'S, 'll alone",
        "don't 'twas ſ'S o'clock",
        "1234567 12 1 123,456.78 ١٢٣٤ ½ ²",
        "CamelCaseWord HTTPServer iPhone XMLHttpRequest",
        "path/to/file.rs https://example.com/a?b=c&d=e#f",
        "!!! ??? ... --- *** /// \\\\ {{}} [[]] (( )) <<>>",
        "emoji 🚀🚀🚀 family 👨‍👩‍👧‍👦 flags 🇫🇷🇩🇪",
        "日本語のテキスト、句読点。中文文本，没有空格！한국어 텍스트",
        "combining e\u{301} a\u{308} n\u{303} ﬁ ligature",
        "RTL: שלום עולם مرحبا بالعالم",
        "nbsp\u{a0}here\u{2009}thin\u{3000}ideographic\u{200b}zwsp",
        "mixed\u{85}next\u{2028}line\u{2029}para",
        "<|endoftext|> is plain text here",
        "    indented code\n\tfn main() {\n\t\tprintln!(\"hi\");\n\t}\n",
    ];

    #[test]
    fn tokens_match_tiktoken_on_tricky_inputs() {
        for tokenizer in BOTH {
            for text in TRICKY {
                assert_same_tokens(tokenizer, text);
            }
        }
    }

    /// A deterministic stream of characters drawn from classes the patterns treat apart.
    fn random_text(seed: u64, chars: usize) -> String {
        const ALPHABET: &[char] = &[
            'a', 'b', 'e', 's', 't', 'A', 'S', 'T', 'é', 'ß', 'ж', 'Ж', '日', '本', 'ア', '한',
            '0', '7', '٣', ' ', ' ', ' ', '\n', '\r', '\t', '\u{a0}', '\u{3000}', '\'', '.', ',',
            '!', '?', '-', '/', '"', '(', '🚀', '\u{301}', '_', '$',
        ];
        let mut state = seed;
        (0..chars)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ALPHABET[(state >> 33) as usize % ALPHABET.len()]
            })
            .collect()
    }

    #[test]
    fn tokens_match_tiktoken_on_random_text() {
        for tokenizer in BOTH {
            for seed in 0..300 {
                assert_same_tokens(tokenizer, &random_text(seed, 1 + (seed as usize * 7) % 400));
            }
        }
    }

    /// Long single pieces: tiktoken is quadratic there, so they stay a few kB here.
    #[test]
    fn tokens_match_tiktoken_on_long_pieces() {
        let letters: String = random_text(7, 20_000)
            .chars()
            .filter(|c| c.is_alphabetic())
            .take(6_000)
            .collect();
        let cjk: String = "日本語中文한국어テキスト"
            .chars()
            .cycle()
            .take(3_000)
            .collect();
        for tokenizer in BOTH {
            assert_same_tokens(tokenizer, &letters);
            assert_same_tokens(tokenizer, &cjk);
            assert_same_tokens(tokenizer, &"ab".repeat(4_000));
            assert_same_tokens(tokenizer, &" ".repeat(5_000));
            assert_same_tokens(tokenizer, &format!("x{}y", " ".repeat(5_000)));
            assert_same_tokens(tokenizer, &"!?".repeat(3_000));
            assert_same_tokens(tokenizer, &"9".repeat(5_000));
        }
    }

    #[test]
    fn pieces_tile_the_text() {
        for tokenizer in BOTH {
            for seed in 0..50 {
                let text = random_text(seed, 500);
                let mut pos = 0;
                for (start, end) in tokenizer.pieces(&text) {
                    assert_eq!(start, pos);
                    assert!(end > start);
                    pos = end;
                }
                assert_eq!(pos, text.len());
            }
        }
    }

    #[test]
    fn count_work_is_linear_in_the_text() {
        // A 1 MB piece without spaces: tiktoken's merge loop would not finish.
        let mut state = 3u64;
        let text: String = (0..1_000_000)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (b'a' + (state >> 33) as u8 % 26) as char
            })
            .collect();
        work::take();
        let count = Tokenizer::Cl100kBase.count(&text);
        let (encoded, pretokenized) = work::take();
        assert_eq!(
            (encoded, pretokenized),
            (text.len() as u64, text.len() as u64)
        );
        assert!(count > text.len() / 8 && count < text.len(), "{count}");
    }
}
