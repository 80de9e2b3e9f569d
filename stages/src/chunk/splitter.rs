//! Token-bounded text chunking.
//!
//! Transcripts (speaker turns such as `[000:00:02] CDR: text`) are packed
//! whole-turn-wise so chunks break between turns; everything else, and single
//! turns that are too large on their own, go through `text_splitter`.
//! Every emitted chunk is re-counted on its final text, because BPE merges
//! across boundaries make sums of parts unreliable.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use text_splitter::{ChunkConfig, TextSplitter};
use tiktoken_rs::CoreBPE;

// Building a CoreBPE parses a large rank table, so do it once per process.
static CL100K_BASE: LazyLock<CoreBPE> =
    LazyLock::new(|| tiktoken_rs::cl100k_base().expect("bundled cl100k_base data must load"));
static O200K_BASE: LazyLock<CoreBPE> =
    LazyLock::new(|| tiktoken_rs::o200k_base().expect("bundled o200k_base data must load"));

/// A turn-start line: optional `[hh:mm:ss(.f)]`, optional bare `hh:mm:ss`,
/// then a speaker label and a colon followed by whitespace or end of line
/// (so `http://` or `10:30` in prose do not count).
static TURN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[ \t]*(?:\[\d{1,3}(?::\d{2}){1,2}(?:[.,]\d+)?\][ \t]*)?(?:\d{1,3}(?::\d{2}){1,2}(?:[.,]\d+)?[ \t]+)?(\p{L}[\p{L}\p{N} .'_\-]{0,39}):(?:\s|$)",
    )
    .expect("static turn regex must compile")
});

/// Labels longer than this many words are more likely prose than a speaker.
const MAX_LABEL_WORDS: usize = 4;

/// Guards the fallback re-splitting of pieces that text_splitter left too big.
const MAX_RESPLIT_DEPTH: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    Cl100kBase,
    O200kBase,
}

impl Tokenizer {
    fn bpe(&self) -> &'static CoreBPE {
        match self {
            Tokenizer::Cl100kBase => &CL100K_BASE,
            Tokenizer::O200kBase => &O200K_BASE,
        }
    }

    /// Token count by the tokenizer's own encoding (encode_ordinary).
    pub fn count(&self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptMode {
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug)]
pub struct SplitOptions {
    pub max_tokens: usize,
    pub overlap: usize,
    pub tokenizer: Tokenizer,
    pub transcript: TranscriptMode,
}

/// Byte offsets into the input; `text[start..end]` is the chunk text and
/// `tokens` its real token count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitError(pub String);

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "split error: {}", self.0)
    }
}

impl std::error::Error for SplitError {}

/// Split `text` into token-bounded chunks (see module docs).
pub fn split(text: &str, opts: &SplitOptions) -> Result<Vec<ChunkSpan>, SplitError> {
    if opts.max_tokens == 0 {
        return Err(SplitError("max_tokens must be > 0".into()));
    }
    if opts.overlap >= opts.max_tokens {
        return Err(SplitError(format!(
            "overlap ({}) must be smaller than max_tokens ({})",
            opts.overlap, opts.max_tokens
        )));
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    // One line scan serves both the Auto decision and the turn segmentation.
    let scan = match opts.transcript {
        TranscriptMode::Off => None,
        TranscriptMode::On => Some(scan_lines(text)),
        TranscriptMode::Auto => Some(scan_lines(text)).filter(LineScan::is_transcript),
    };
    match scan {
        Some(scan) => split_transcript(text, &scan.turn_starts, opts),
        None => {
            let mut out = Vec::new();
            split_plain(text, 0, text.len(), opts, &mut out)?;
            Ok(out)
        }
    }
}

/// True when `text` looks like a transcript: at least 3 turn-start lines
/// that make up at least 20% of the non-blank lines.
pub fn looks_like_transcript(text: &str) -> bool {
    scan_lines(text).is_transcript()
}

struct LineScan {
    turn_starts: Vec<usize>,
    non_blank: usize,
}

impl LineScan {
    fn is_transcript(&self) -> bool {
        let turns = self.turn_starts.len();
        turns >= 3 && turns * 5 >= self.non_blank
    }
}

fn scan_lines(text: &str) -> LineScan {
    let mut turn_starts = Vec::new();
    let mut non_blank = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if !line.trim().is_empty() {
            non_blank += 1;
            if is_turn_start(line) {
                turn_starts.push(pos);
            }
        }
        pos += line.len();
    }
    LineScan {
        turn_starts,
        non_blank,
    }
}

fn is_turn_start(line: &str) -> bool {
    TURN_RE
        .captures(line)
        .and_then(|c| c.get(1))
        .is_some_and(|label| label.as_str().split_whitespace().count() <= MAX_LABEL_WORDS)
}

/// Trimmed, non-empty byte range of `text[start..end]`.
fn trim_span(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let slice = &text[start..end];
    let lead = slice.len() - slice.trim_start().len();
    let trimmed = slice.trim();
    (!trimmed.is_empty()).then(|| (start + lead, start + lead + trimmed.len()))
}

fn split_transcript(
    text: &str,
    turn_starts: &[usize],
    opts: &SplitOptions,
) -> Result<Vec<ChunkSpan>, SplitError> {
    let tok = opts.tokenizer;
    let max = opts.max_tokens;

    // Segments: optional preamble, then one per turn (continuation lines included).
    let mut bounds = Vec::with_capacity(turn_starts.len() + 2);
    bounds.push(0);
    bounds.extend(turn_starts.iter().copied().filter(|&s| s > 0));
    bounds.push(text.len());
    let segs: Vec<(usize, usize)> = bounds
        .windows(2)
        .filter_map(|w| trim_span(text, w[0], w[1]))
        .collect();
    let n = segs.len();

    // Each turn is counted once *with* its trailing whitespace: tiktoken's
    // pre-tokenizer never merges across "\n" followed by a non-space, so these
    // sums track the real count of a run of turns closely (it is still verified).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    for (i, &(s, e)) in segs.iter().enumerate() {
        let end = segs.get(i + 1).map_or(e, |next| next.0);
        let w = tok.count(&text[s..end]);
        prefix.push(prefix[i] + w);
    }
    let est = |a: usize, b: usize| prefix[b + 1] - prefix[a];
    let span_count = |a: usize, b: usize| tok.count(&text[segs[a].0..segs[b].1]);

    let mut out = Vec::new();
    // Whole-turn range of the last emitted chunk, for overlap.
    let mut prev: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < n {
        if est(i, i) > max {
            // The estimate includes trailing whitespace; confirm on the turn itself.
            let own = span_count(i, i);
            if own > max {
                // Oversized turn: split alone so its pieces never absorb neighbours.
                split_plain(text, segs[i].0, segs[i].1, opts, &mut out)?;
                prev = None;
                i += 1;
                continue;
            }
        }

        // Overlap: trailing whole turns of the previous chunk, excluding its first
        // turn so starts strictly increase, and leaving room for turn `i`.
        let mut k = i;
        if let (true, Some((pf, pl))) = (opts.overlap > 0, prev) {
            while k > pf + 1 && est(k - 1, pl) <= opts.overlap && est(k - 1, i) <= max {
                k -= 1;
            }
            while k < i && span_count(k, pl) > opts.overlap {
                k += 1;
            }
        }

        let mut j = i;
        while j + 1 < n && est(k, j + 1) <= max {
            j += 1;
        }
        let mut real = span_count(k, j);
        while real > max && (j > i || k < i) {
            // Shed new turns first, overlap last; a lone turn `i` is known to fit.
            if j > i {
                j -= 1;
            } else {
                k += 1;
            }
            real = span_count(k, j);
        }
        out.push(ChunkSpan {
            start: segs[k].0,
            end: segs[j].1,
            tokens: real,
        });
        prev = Some((k, j));
        i = j + 1;
    }
    Ok(out)
}

/// Split `text[start..end]` with text_splitter and append verified chunks.
fn split_plain(
    text: &str,
    start: usize,
    end: usize,
    opts: &SplitOptions,
    out: &mut Vec<ChunkSpan>,
) -> Result<(), SplitError> {
    splitter_spans(
        text,
        start,
        end,
        opts,
        opts.max_tokens,
        opts.overlap,
        0,
        out,
    )
}

#[allow(clippy::too_many_arguments)]
fn splitter_spans(
    text: &str,
    start: usize,
    end: usize,
    opts: &SplitOptions,
    capacity: usize,
    overlap: usize,
    depth: usize,
    out: &mut Vec<ChunkSpan>,
) -> Result<(), SplitError> {
    let config = ChunkConfig::new(capacity)
        .with_sizer(opts.tokenizer.bpe())
        .with_overlap(overlap)
        .map_err(|e| SplitError(e.to_string()))?
        .with_trim(true);
    let splitter = TextSplitter::new(config);
    for (off, piece) in splitter.chunk_indices(&text[start..end]) {
        let Some((s, e)) = trim_span(text, start + off, start + off + piece.len()) else {
            continue;
        };
        // A piece wholly inside the previous chunk adds nothing.
        if out
            .last()
            .is_some_and(|last| last.start <= s && e <= last.end)
        {
            continue;
        }
        let tokens = opts.tokenizer.count(&text[s..e]);
        if tokens <= opts.max_tokens {
            out.push(ChunkSpan {
                start: s,
                end: e,
                tokens,
            });
            continue;
        }
        // text_splitter sizes pieces itself, so this is only a safety net:
        // re-split the piece with a capacity shrunk by the excess.
        let smaller = capacity.saturating_sub(tokens - opts.max_tokens).max(1);
        if depth >= MAX_RESPLIT_DEPTH || (capacity == 1 && smaller == 1) {
            return Err(SplitError(format!(
                "cannot fit text at bytes {s}..{e} into {} tokens",
                opts.max_tokens
            )));
        }
        splitter_spans(text, s, e, opts, smaller, 0, depth + 1, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const CORPUS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpus/apollo13/transcripts"
    );

    fn day(n: usize) -> String {
        let path = format!("{CORPUS}/day{n:02}.txt");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn opts(max_tokens: usize, overlap: usize, transcript: TranscriptMode) -> SplitOptions {
        SplitOptions {
            max_tokens,
            overlap,
            tokenizer: Tokenizer::Cl100kBase,
            transcript,
        }
    }

    /// Non-blank lines as trimmed byte spans.
    fn line_spans(text: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut pos = 0;
        for line in text.split_inclusive('\n') {
            if let Some(span) = trim_span(text, pos, pos + line.len()) {
                spans.push(span);
            }
            pos += line.len();
        }
        spans
    }

    fn assert_limits(text: &str, chunks: &[ChunkSpan], o: &SplitOptions) {
        assert!(!chunks.is_empty());
        for c in chunks {
            let chunk = &text[c.start..c.end];
            let real = o.tokenizer.count(chunk);
            assert_eq!(real, c.tokens, "reported tokens must be the real count");
            assert!(real <= o.max_tokens, "chunk {c:?} has {real} tokens");
            assert!(
                !chunk.trim().is_empty() && chunk.trim() == chunk,
                "untrimmed {c:?}"
            );
        }
    }

    fn assert_covered(text: &str, chunks: &[ChunkSpan]) {
        let mut covered = vec![false; text.len()];
        for c in chunks {
            covered[c.start..c.end].iter_mut().for_each(|b| *b = true);
        }
        for (i, ch) in text.char_indices() {
            assert!(
                ch.is_whitespace() || covered[i],
                "byte {i} ({ch:?}) not covered"
            );
        }
    }

    fn assert_ordered_overlapping(text: &str, chunks: &[ChunkSpan], o: &SplitOptions) -> usize {
        let mut overlapped = 0;
        for w in chunks.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            assert!(b.start > a.start, "starts must strictly increase");
            assert!(b.end > a.end, "each chunk must make progress");
            if b.start <= a.end {
                overlapped += 1;
                let repeated = o.tokenizer.count(&text[b.start..a.end]);
                assert!(repeated <= o.overlap, "{repeated} repeated tokens");
            } else {
                // No whole turn fitted the overlap budget: the gap must be blank.
                assert!(text[a.end..b.start].trim().is_empty(), "gap loses text");
            }
        }
        overlapped
    }

    /// Splits the day's lines into those within the limit and oversized ones.
    /// The corpus has a couple of monologues (day06) above 512 tokens, which
    /// must be split inside the turn; they should stay rare.
    type Spans = Vec<(usize, usize)>;
    fn partition_lines(text: &str, o: &SplitOptions) -> (Spans, Spans) {
        let lines = line_spans(text);
        let (normal, oversized): (Spans, Spans) = lines
            .iter()
            .partition(|&&(s, e)| o.tokenizer.count(&text[s..e]) <= o.max_tokens);
        assert!(oversized.len() <= lines.len() / 500, "{oversized:?}");
        (normal, oversized)
    }

    fn inside(c: &ChunkSpan, (s, e): (usize, usize)) -> bool {
        s <= c.start && c.end <= e
    }

    /// Every chunk touching an oversized line lies wholly within it, in pieces.
    fn assert_oversized_split_alone(chunks: &[ChunkSpan], oversized: &[(usize, usize)]) {
        for &(s, e) in oversized {
            let touching: Vec<_> = chunks.iter().filter(|c| c.start < e && s < c.end).collect();
            assert!(touching.len() >= 2);
            assert!(
                touching.iter().all(|c| inside(c, (s, e))),
                "mixed with neighbours"
            );
        }
    }

    #[test]
    fn corpus_no_overlap_breaks_between_turns() {
        let o = opts(512, 0, TranscriptMode::Auto);
        let mut total_oversized = 0;
        for d in 1..=6 {
            let text = day(d);
            assert!(looks_like_transcript(&text), "day{d:02}");
            let (normal, oversized) = partition_lines(&text, &o);
            total_oversized += oversized.len();
            let chunks = split(&text, &o).expect("split");
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            assert_oversized_split_alone(&chunks, &oversized);
            for w in chunks.windows(2) {
                assert!(w[0].end < w[1].start, "chunks must not overlap");
            }
            // Outside oversized turns, chunks start and end on line boundaries.
            for c in chunks
                .iter()
                .filter(|c| !oversized.iter().any(|&l| inside(c, l)))
            {
                assert!(c.start == 0 || text.as_bytes()[c.start - 1] == b'\n');
                assert!(c.end == text.len() || text.as_bytes()[c.end] == b'\n');
            }
            // Each utterance lies inside exactly one chunk and straddles none.
            for &(s, e) in &normal {
                let whole = chunks.iter().filter(|c| c.start <= s && e <= c.end).count();
                let straddling = chunks
                    .iter()
                    .filter(|c| c.start < e && s < c.end && !(c.start <= s && e <= c.end))
                    .count();
                assert_eq!((whole, straddling), (1, 0), "line {:?}", &text[s..e]);
            }
            // Packing should be reasonably tight, not one turn per chunk.
            let total: usize = chunks.iter().map(|c| c.tokens).sum();
            assert!(total / chunks.len() > 350, "day{d:02} chunks too small");
        }
        assert!(total_oversized > 0, "expected the known day06 monologues");
    }

    #[test]
    fn corpus_with_overlap() {
        let o = opts(512, 64, TranscriptMode::Auto);
        for d in 1..=6 {
            let text = day(d);
            let (normal, oversized) = partition_lines(&text, &o);
            let chunks = split(&text, &o).expect("split");
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            assert_oversized_split_alone(&chunks, &oversized);
            let overlapped = assert_ordered_overlapping(&text, &chunks, &o);
            // Most boundaries should find a short trailing turn to repeat.
            assert!(overlapped * 2 > chunks.len(), "day{d:02}: {overlapped}");
            for &(s, e) in &normal {
                assert!(
                    chunks.iter().any(|c| c.start <= s && e <= c.end),
                    "line {:?} not whole in any chunk",
                    &text[s..e]
                );
            }
            for c in chunks
                .iter()
                .filter(|c| !oversized.iter().any(|&l| inside(c, l)))
            {
                assert!(c.start == 0 || text.as_bytes()[c.start - 1] == b'\n');
            }
        }
    }

    fn giant_transcript() -> (String, (usize, usize)) {
        let mut text = String::new();
        for i in 0..5 {
            text.push_str(&format!("[000:00:{i:02}] CC: Normal turn number {i}.\n"));
        }
        let giant_start = text.len();
        text.push_str("[000:01:00] CDR: ");
        for i in 0..120 {
            text.push_str(&format!(
                "Sentence {i} about the oxygen tank, fuel cells and the guidance platform. "
            ));
        }
        let giant_end = text.trim_end().len();
        text.push('\n');
        for i in 0..5 {
            text.push_str(&format!("[000:02:{i:02}] LMP: After the long one {i}.\n"));
        }
        (text, (giant_start, giant_end))
    }

    #[test]
    fn giant_turn_is_split_alone() {
        let (text, (gs, ge)) = giant_transcript();
        for overlap in [0, 20] {
            let o = opts(100, overlap, TranscriptMode::On);
            assert!(o.tokenizer.count(&text[gs..ge]) > 3 * o.max_tokens);
            let chunks = split(&text, &o).expect("split");
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            let inside: Vec<_> = chunks
                .iter()
                .filter(|c| gs <= c.start && c.end <= ge)
                .collect();
            assert!(inside.len() > 3, "giant turn pieces: {}", inside.len());
            for c in &chunks {
                let disjoint = c.end <= gs || ge <= c.start;
                assert!(
                    disjoint || (gs <= c.start && c.end <= ge),
                    "{c:?} mixes turns"
                );
            }
            // Normal turns before and after were packed together.
            assert!(chunks.iter().any(|c| c.end <= gs && c.start == 0));
            assert!(
                chunks
                    .iter()
                    .any(|c| c.start > ge && c.end == text.trim_end().len())
            );
            assert_ordered_overlapping(&text, &chunks, &o);
        }
    }

    #[test]
    fn multi_line_turns_stay_together() {
        let mut text = String::from("Mission log excerpt\n\n");
        let mut turns = Vec::new();
        for i in 0..30 {
            let s = text.len();
            text.push_str(&format!("[000:{i:02}:00] Dr. Lee: Turn {i} begins here,\n"));
            text.push_str("  and continues on a second line with more detail\n");
            text.push_str(&format!("and ends on a third line for turn {i}.\n"));
            turns.push((s, text.trim_end().len()));
        }
        assert!(looks_like_transcript(&text));
        let o = opts(60, 0, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        assert!(chunks.len() > 5);
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        // The preamble is a segment of its own, packed like a turn.
        assert!(text[chunks[0].start..chunks[0].end].starts_with("Mission log excerpt\n"));
        for &(s, e) in &turns {
            let whole = chunks.iter().filter(|c| c.start <= s && e <= c.end).count();
            assert_eq!(whole, 1, "turn {:?} was split", &text[s..e]);
        }
    }

    #[test]
    fn speaker_label_variants() {
        for line in [
            "[000:00:02] CDR: The clock is running.",
            "[00:01:02.5] CC: Roger.",
            "00:01:02 John Smith: hi",
            "[00:00:01] 00:00:01 SPEAKER 1: ok",
            "Dr. Lee: yes",
            "CC:",
        ] {
            assert!(is_turn_start(line), "{line}");
        }
        for line in [
            "See http://example.com for details.",
            "The meeting starts at 10:30 sharp.",
            "One two three four five words: too many",
            "- bullet: not a speaker",
        ] {
            assert!(!is_turn_start(line), "{line}");
        }
        let short = "A: hi\nB: yo\nA: bye\n";
        assert!(looks_like_transcript(short));
        // Three turn lines are under 20% of 20 non-blank lines.
        let diluted = format!("{short}{}", "plain prose line\n".repeat(17));
        assert!(!looks_like_transcript(&diluted));
    }

    const PROSE: &str = "The spacecraft left Earth orbit on a free-return trajectory, \
        and the crew settled into the long coast toward the Moon. Engineers on the ground \
        watched telemetry from every subsystem, comparing each reading against the \
        expected values in thick binders of procedures.\n\n\
        Halfway through the second day, a routine stir of the cryogenic tanks produced a \
        sharp bang and a shudder through the structure. Pressure in one oxygen tank fell \
        to zero within minutes, and the fuel cells that depended on it began to fail. \
        The flight controllers worked through the night to understand what had happened.\n\n\
        The lunar module became a lifeboat. Its consumables had been planned for two men \
        over two days, not three men over four, so every amp-hour of power and every \
        pound of water was rationed. Carbon dioxide scrubbers had to be adapted with \
        tape, cardboard and plastic bags, following instructions read up from the ground.\n\n\
        Re-entry came after a tense series of course corrections, and the command module \
        splashed down safely in the Pacific Ocean, where recovery forces were waiting.";

    #[test]
    fn prose_uses_plain_splitter() {
        let text = PROSE.repeat(4);
        assert!(!looks_like_transcript(&text));
        for overlap in [0, 10] {
            let o = opts(50, overlap, TranscriptMode::Auto);
            let chunks = split(&text, &o).expect("split");
            assert!(chunks.len() > 10);
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            if overlap == 0 {
                for w in chunks.windows(2) {
                    assert!(w[0].end <= w[1].start);
                }
            } else {
                for w in chunks.windows(2) {
                    assert!(w[1].start > w[0].start);
                }
            }
        }
        assert_eq!(
            split("  \n\t ", &opts(50, 0, TranscriptMode::Auto)),
            Ok(vec![])
        );
        assert_eq!(split("", &opts(50, 0, TranscriptMode::On)), Ok(vec![]));
    }

    #[test]
    fn invalid_options_are_errors() {
        assert!(split("text", &opts(0, 0, TranscriptMode::Auto)).is_err());
        assert!(split("text", &opts(10, 10, TranscriptMode::Auto)).is_err());
        assert!(split("text", &opts(10, 11, TranscriptMode::Off)).is_err());
        assert!(split("text", &opts(10, 9, TranscriptMode::Off)).is_ok());
    }

    #[test]
    fn o200k_base_works() {
        let text = day(1);
        let o = SplitOptions {
            tokenizer: Tokenizer::O200kBase,
            ..opts(300, 30, TranscriptMode::Auto)
        };
        assert_ne!(
            Tokenizer::O200kBase.count(&text),
            Tokenizer::Cl100kBase.count(&text)
        );
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        assert_ordered_overlapping(&text, &chunks, &o);
        let prose = split(
            PROSE,
            &SplitOptions {
                max_tokens: 40,
                overlap: 0,
                ..o
            },
        )
        .expect("prose");
        assert_limits(
            PROSE,
            &prose,
            &SplitOptions {
                max_tokens: 40,
                overlap: 0,
                ..o.clone()
            },
        );
    }

    #[test]
    fn corpus_throughput() {
        let text: String = (1..=6).map(day).collect();
        let o = opts(800, 100, TranscriptMode::Auto);
        // Build the tokenizer outside the timed region.
        Tokenizer::Cl100kBase.count("warm up");
        let t = Instant::now();
        let chunks = split(&text, &o).expect("split");
        let secs = t.elapsed().as_secs_f64();
        let mb = text.len() as f64 / 1e6;
        println!(
            "throughput: {mb:.2} MB in {secs:.3} s = {:.2} MB/s ({} chunks)",
            mb / secs,
            chunks.len()
        );
        assert_limits(&text, &chunks, &o);
    }
}
