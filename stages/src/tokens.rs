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
//! `bpe-openai`'s own `Tokenizer` is not used: its cl100k pattern is tiktoken's older one,
//! which cuts whitespace that ends a text after a newline ("a\n  ") into two pieces where
//! tiktoken 0.14 makes one. No text was found where that changes the tokens, but the chunker
//! reasons about piece boundaries (`exact_count` in the splitter), so they are tiktoken's.

use std::sync::LazyLock;

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use regex_automata::{Anchored, Input, meta::Regex};
use rustc_hash::FxHashMap;

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

/// A hand-written pre-tokenizer for ASCII: the end of the piece at a position, if it knows.
type AsciiPiece = fn(&[u8], usize) -> Option<usize>;

struct Encoding {
    pretokenizer: Regex,
    /// The same pre-tokenizer hand-written for ASCII text, where it knows the answer.
    ascii_piece: Option<AsciiPiece>,
    bpe: &'static BytePairEncoding,
    /// Every token by its bytes. Like tiktoken, a piece that is a token is that one token
    /// (most pieces are): a hash look-up instead of running the encoder.
    tokens: FxHashMap<&'static [u8], u32>,
}

impl Encoding {
    fn new(
        patterns: &[&str],
        ascii_piece: Option<AsciiPiece>,
        bpe: &'static BytePairEncoding,
    ) -> Self {
        let tokens = (0..bpe.num_tokens() as u32)
            .map(|id| (bpe.token_bytes(id), id))
            .collect();
        Encoding {
            pretokenizer: Regex::new_many(patterns).expect("static pre-tokenizer patterns compile"),
            ascii_piece,
            bpe,
            tokens,
        }
    }
}

// Deserializing a dictionary and compiling the pattern take a while: once per process.
static CL100K_BASE: LazyLock<Encoding> = LazyLock::new(|| {
    Encoding::new(
        &CL100K_PATTERNS,
        Some(cl100k_ascii_piece),
        &bpe_openai::cl100k_base().bpe,
    )
});
static O200K_BASE: LazyLock<Encoding> =
    LazyLock::new(|| Encoding::new(&O200K_PATTERNS, None, &bpe_openai::o200k_base().bpe));

impl Tokenizer {
    fn encoding(&self) -> &'static Encoding {
        match self {
            Tokenizer::Cl100kBase => &CL100K_BASE,
            Tokenizer::O200kBase => &O200K_BASE,
        }
    }

    /// Loads the dictionary on a thread of its own, so that the first count waits less for it
    /// (or not at all): stages are built before the run starts, while the rest of the pipeline
    /// is set up. A count meanwhile waits for this load; it never loads twice.
    pub fn warm_in_background(self) {
        let spawned = std::thread::Builder::new()
            .name(format!("load {}", self.name()))
            .spawn(move || {
                self.encoding();
            });
        // Without a thread, the first count loads it.
        drop(spawned);
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
        let encoding = self.encoding();
        Pieces {
            regex: &encoding.pretokenizer,
            ascii_piece: encoding.ascii_piece,
            text,
            pos: 0,
        }
    }

    /// Tokens of one pre-tokenizer piece.
    pub(crate) fn count_piece(&self, piece: &str) -> usize {
        work::add_encoded(piece.len());
        let encoding = self.encoding();
        if encoding.tokens.contains_key(piece.as_bytes()) {
            return 1;
        }
        encoding.bpe.count(piece.as_bytes())
    }

    /// Token ids of one pre-tokenizer piece.
    pub(crate) fn encode_piece(&self, piece: &str) -> Vec<u32> {
        work::add_encoded(piece.len());
        let encoding = self.encoding();
        if let Some(&id) = encoding.tokens.get(piece.as_bytes()) {
            return vec![id];
        }
        encoding.bpe.encode_via_backtracking(piece.as_bytes())
    }

    /// Length in bytes of a token.
    pub(crate) fn token_len(&self, token: u32) -> usize {
        self.encoding().bpe.token_len(token)
    }
}

/// Iterator over pre-tokenizer pieces; see [`Tokenizer::pieces`].
pub(crate) struct Pieces<'t> {
    regex: &'static Regex,
    ascii_piece: Option<AsciiPiece>,
    text: &'t str,
    pos: usize,
}

impl Iterator for Pieces<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        if let Some(end) = self
            .ascii_piece
            .and_then(|piece| piece(self.text.as_bytes(), start))
            .filter(|&end| end > start)
        {
            self.pos = end;
            work::add_pretokenized(end - start);
            return Some((start, end));
        }
        let input = Input::new(self.text)
            .range(self.pos..)
            .anchored(Anchored::Yes);
        // The last alternative matches any single character, so a match always exists;
        // should it not, the rest of the text is one piece rather than lost.
        // Anchored, the start is known: only the end is searched for (no second pass).
        let mut end = self.regex.search_half(&input).map_or(self.text.len(), |m| {
            let mut end = m.offset();
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

/// The cl100k_base piece that starts at `p`, worked out by hand when the bytes that decide
/// it are ASCII (most text); `None` leaves it to the regex. Each step is one alternative of
/// the pattern, in the pattern's order; `tests::ascii_pieces_are_the_regex_pieces` checks
/// it against the regex.
fn cl100k_ascii_piece(bytes: &[u8], p: usize) -> Option<usize> {
    // Rust's `\s` on ASCII: \t \n \v \f \r and space.
    let ws = |b: u8| matches!(b, b'\t'..=b'\r' | b' ');
    let newline = |b: u8| b == b'\r' || b == b'\n';
    let other = |b: u8| b.is_ascii() && !b.is_ascii_alphanumeric() && !ws(b);
    // The next byte, if the decision may hang on it: `Err` for non-ASCII (not decided here).
    let peek = |i: usize| match bytes.get(i) {
        Some(&b) if !b.is_ascii() => Err(()),
        b => Ok(b.copied()),
    };
    let run = |mut i: usize, class: &dyn Fn(u8) -> bool| -> Option<usize> {
        while let Some(&b) = bytes.get(i).filter(|&&b| class(b)) {
            debug_assert!(b.is_ascii());
            i += 1;
        }
        peek(i).ok().map(|_| i)
    };
    let c = *bytes.get(p).filter(|b| b.is_ascii())?;
    // '(?i:[sdmt]|ll|ve|re)
    if c == b'\'' {
        match peek(p + 1).ok()?.map(|b| b.to_ascii_lowercase()) {
            Some(b's' | b'd' | b'm' | b't') => return Some(p + 2),
            Some(first @ (b'l' | b'v' | b'r')) => {
                let second = peek(p + 2).ok()?.map(|b| b.to_ascii_lowercase());
                if matches!(
                    (first, second),
                    (b'l', Some(b'l')) | (b'v' | b'r', Some(b'e'))
                ) {
                    return Some(p + 3);
                }
            }
            _ => {}
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if c.is_ascii_alphabetic() {
        return run(p, &|b: u8| b.is_ascii_alphabetic());
    }
    if !newline(c)
        && !c.is_ascii_digit()
        && peek(p + 1).ok()?.is_some_and(|b| b.is_ascii_alphabetic())
    {
        return run(p + 1, &|b: u8| b.is_ascii_alphabetic());
    }
    // \p{N}{1,3}
    if c.is_ascii_digit() {
        let mut i = p + 1;
        while i < p + 3 {
            match peek(i).ok()? {
                Some(b) if b.is_ascii_digit() => i += 1,
                _ => break,
            }
        }
        return Some(i);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let symbols = if other(c) {
        Some(p)
    } else if c == b' ' && peek(p + 1).ok()?.is_some_and(other) {
        Some(p + 1)
    } else {
        None
    };
    if let Some(i) = symbols {
        let i = run(i, &other)?;
        let mut i = i;
        while bytes.get(i).is_some_and(|&b| newline(b)) {
            i += 1;
        }
        return Some(i);
    }
    // Whitespace: \s++$ | \s*[\r\n] | \s+(?!\S) | \s
    let end = run(p, &ws)?;
    if end == bytes.len() {
        return Some(end);
    }
    if let Some(last) = bytes[p..end].iter().rposition(|&b| newline(b)) {
        return Some(p + last + 1);
    }
    Some(if end - p >= 2 { end - 1 } else { p + 1 })
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
pub(crate) mod work {
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

    /// The pieces of the regex alone, for checking the ASCII fast path.
    fn regex_pieces(tokenizer: Tokenizer, text: &str) -> Vec<(usize, usize)> {
        Pieces {
            regex: &tokenizer.encoding().pretokenizer,
            ascii_piece: None,
            text,
            pos: 0,
        }
        .collect()
    }

    #[test]
    fn ascii_pieces_are_the_regex_pieces() {
        // ASCII of every class, with some non-ASCII where the fast path must step aside.
        let mut alphabet: Vec<char> = (0u8..128).map(char::from).collect();
        alphabet.extend(['é', 'ſ', '\u{a0}', '\u{85}', '٣', '—', '日', '🚀']);
        let ascii: Vec<char> = (0u8..128).map(char::from).collect();
        let words = [
            "'s", "'S", "'ll", "'LL", "'lL", "'ve", "'Re", "'d", "'x", "'", "' ", "a", "ab", "123",
            "1234", " ", "  ", "\n", "\r\n", "\t", "\x0b", "\x0c", " !", "!!", " x", "\tx", "(x",
            "é", "\u{a0}", "x\u{301}", "1٣", "٣", "'tis", "'Mx", "'dd", "'vex", "'rex", "'llx",
            "'Lx", "'ver", "'v", "'r", "'l", "'ſ",
        ];
        let mut state = 5u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for round in 0..20_000 {
            let len = 1 + next(40);
            let text: String = match round % 3 {
                0 => (0..len).map(|_| ascii[next(ascii.len())]).collect(),
                1 => (0..len).map(|_| alphabet[next(alphabet.len())]).collect(),
                _ => (0..len / 3 + 1).map(|_| words[next(words.len())]).collect(),
            };
            let tokenizer = Tokenizer::Cl100kBase;
            let fast: Vec<_> = tokenizer.pieces(&text).collect();
            assert_eq!(fast, regex_pieces(tokenizer, &text), "{text:?}");
        }
        for text in TRICKY {
            let fast: Vec<_> = Tokenizer::Cl100kBase.pieces(text).collect();
            assert_eq!(fast, regex_pieces(Tokenizer::Cl100kBase, text), "{text:?}");
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
