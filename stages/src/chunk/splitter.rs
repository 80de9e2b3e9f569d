//! Token-bounded text chunking, in time linear in the text.
//!
//! The text is pre-tokenized and counted once ([`PieceIndex`]). Chunks are chosen from those
//! counts, and the exact token count of each chunk is derived from them as well: only the
//! pieces at its two edges, which the cut can change, are encoded again
//! ([`PieceIndex::exact_count`]). No stretch of text is counted over and over, so a 10 MB
//! line costs ten times a 1 MB one.
//!
//! Transcripts (speaker turns such as `[000:00:02] CDR: text`) are packed whole turn by whole
//! turn, so chunks break between turns. Everything else, and single turns too large for a
//! chunk, is packed from *atoms* (a pre-tokenizer piece with the whitespace after it): a chunk
//! ends at the most significant break that fits — paragraph, line, sentence, word, another
//! piece boundary and, only inside a piece too large to keep whole, a token boundary.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use rustc_hash::FxHashMap;

/// The tokenizer lives in [`crate::tokens`]; re-exported where it was first defined.
pub use crate::tokens::Tokenizer;

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

/// Longest piece (bytes) whose count is remembered while a text is indexed.
const MAX_CACHED_PIECE: usize = 24;

/// Candidate overlap starts whose exact count is checked before a chunk goes without overlap.
const MAX_OVERLAP_TRIES: usize = 8;

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
    let Some((start, end)) = trim_span(text, 0, text.len()) else {
        return Ok(Vec::new());
    };
    // One line scan serves both the Auto decision and the turn segmentation.
    let scan = match opts.transcript {
        TranscriptMode::Off => None,
        TranscriptMode::On => Some(scan_lines(text)),
        TranscriptMode::Auto => Some(scan_lines(text)).filter(LineScan::is_transcript),
    };
    let index = PieceIndex::build(text, opts)?;
    let mut out = Vec::new();
    match scan {
        Some(scan) => split_transcript(&index, &scan.turn_starts, opts, &mut out)?,
        None => split_region(&index, start, end, opts, &mut out)?,
    }
    Ok(out)
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
    // `find` runs a DFA; `captures` would zero a backtracker's state for every line. The
    // label is the match from its first letter (the timestamps before it have none) to the
    // colon.
    TURN_RE.find(line).is_some_and(|m| {
        let matched = m.as_str();
        let label_start = matched.find(char::is_alphabetic).unwrap_or(matched.len());
        let label = matched[label_start..].trim_end().trim_end_matches(':');
        label.split_whitespace().count() <= MAX_LABEL_WORDS
    })
}

/// Trimmed, non-empty byte range of `text[start..end]`.
fn trim_span(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let slice = &text[start..end];
    let lead = slice.len() - slice.trim_start().len();
    let trimmed = slice.trim();
    (!trimmed.is_empty()).then(|| (start + lead, start + lead + trimmed.len()))
}

/// Every pre-tokenizer piece of the text with its token count, computed in one pass.
struct PieceIndex<'t> {
    text: &'t str,
    tokenizer: Tokenizer,
    /// Piece boundaries: 0, then the end of each piece; piece `i` is `bounds[i]..bounds[i + 1]`.
    bounds: Vec<u32>,
    /// Tokens of the pieces before each boundary.
    cum: Vec<u32>,
    /// Token ids of the pieces too large to stay whole in every chunk, by piece index.
    large: Vec<(usize, Vec<u32>)>,
}

impl<'t> PieceIndex<'t> {
    fn build(text: &'t str, opts: &SplitOptions) -> Result<Self, SplitError> {
        if u32::try_from(text.len()).is_err() {
            return Err(SplitError(format!(
                "a text of {} bytes is over the 4 GiB the chunker takes",
                text.len()
            )));
        }
        let tokenizer = opts.tokenizer;
        // Pieces above half a chunk may be cut at token boundaries, so their tokens are kept;
        // a piece has at least as many bytes as tokens, so shorter ones are only counted.
        let large_above = (opts.max_tokens / 2).max(1);
        let mut bounds = Vec::with_capacity(text.len() / 4 + 2);
        let mut cum = Vec::with_capacity(text.len() / 4 + 2);
        let mut large = Vec::new();
        bounds.push(0);
        cum.push(0);
        let mut total = 0u32;
        // Words recur (a transcript says "Roger" thousands of times): count each short piece
        // once per text. Single-token pieces are found faster by the tokenizer itself.
        let mut seen: FxHashMap<&str, u32> = FxHashMap::default();
        for (start, end) in tokenizer.pieces(text) {
            let piece = &text[start..end];
            let tokens = if piece.len() == 1 {
                // Every byte is a token of both encodings.
                crate::tokens::work::add_encoded(1);
                1
            } else if piece.len() <= MAX_CACHED_PIECE && piece.len() <= large_above {
                match seen.get(piece) {
                    Some(&n) => {
                        // Counted as encoded: work tests measure bytes counted either way.
                        crate::tokens::work::add_encoded(piece.len());
                        n as usize
                    }
                    None => {
                        let n = tokenizer.count_piece(piece);
                        seen.insert(piece, n as u32);
                        n
                    }
                }
            } else if piece.len() > large_above {
                let ids = tokenizer.encode_piece(piece);
                let n = ids.len();
                if n > large_above {
                    large.push((bounds.len() - 1, ids));
                }
                n
            } else {
                tokenizer.count_piece(piece)
            };
            // No overflow: a text under 4 GiB has fewer tokens than bytes.
            total += tokens as u32;
            bounds.push(end as u32);
            cum.push(total);
        }
        Ok(PieceIndex {
            text,
            tokenizer,
            bounds,
            cum,
            large,
        })
    }

    /// Index of the last boundary at or before `pos`.
    fn last_boundary(&self, pos: usize) -> usize {
        self.bounds.partition_point(|&b| b as usize <= pos) - 1
    }

    fn is_boundary(&self, pos: usize) -> bool {
        self.bounds[self.last_boundary(pos)] as usize == pos
    }

    /// Tokens of the pieces that end at or before `pos`.
    fn tokens_before(&self, pos: usize) -> usize {
        self.cum[self.last_boundary(pos)] as usize
    }

    /// Tokens of the pieces that start before `pos`.
    fn tokens_through(&self, pos: usize) -> usize {
        if pos == 0 {
            return 0;
        }
        self.cum[self.last_boundary(pos - 1) + 1] as usize
    }

    /// The exact token count of `text[start..end]`, where `text[..end]` ends in a
    /// non-whitespace character (chunks are trimmed).
    ///
    /// Pre-tokenizing `text[start..end]` on its own gives the text's own pieces except at the
    /// edges: from `start` until one of its pieces ends on a boundary of the text's pieces
    /// (both runs go on alike from there: the patterns look at no text before a match), and
    /// the piece that `end` cuts. The pieces that end before `end` are unchanged because the
    /// patterns only look past a match (`\s+(?!\S)`, `\s+$`) at the end of a whitespace run,
    /// and none ends at `end`. So only the two edges are counted anew.
    fn exact_count(&self, start: usize, end: usize) -> usize {
        debug_assert!(self.text[..end].ends_with(|c: char| !c.is_whitespace()));
        let slice = &self.text[start..end];
        let mut head = self.tokenizer.pieces(slice);
        let mut total = 0;
        let mut pos = start;
        while !self.is_boundary(pos) {
            let Some((s, e)) = head.next() else {
                return total;
            };
            total += self.tokenizer.count_piece(&slice[s..e]);
            pos = start + e;
        }
        let last = self.bounds[self.last_boundary(end)] as usize;
        total += self.tokens_before(last) - self.tokens_before(pos);
        if last < end {
            total += self.tokenizer.count(&self.text[last..end]);
        }
        total
    }
}

fn split_transcript(
    index: &PieceIndex,
    turn_starts: &[usize],
    opts: &SplitOptions,
    out: &mut Vec<ChunkSpan>,
) -> Result<(), SplitError> {
    let text = index.text;
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

    // Estimates: each turn's pieces with its trailing whitespace. A turn start after a newline
    // is a piece boundary, so these sums are close to a run's real count (used only to pick
    // candidates; every chunk's count is exact).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    let mut before = index.tokens_before(segs[0].0);
    for i in 0..n {
        let next = segs.get(i + 1).map_or(text.len(), |next| next.0);
        let through = index.tokens_before(next);
        prefix.push(prefix[i] + (through - before));
        before = through;
    }
    let est = |a: usize, b: usize| prefix[b + 1] - prefix[a];
    let span_count = |a: usize, b: usize| index.exact_count(segs[a].0, segs[b].1);

    // Whole-turn range of the last emitted chunk, for overlap.
    let mut prev: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < n {
        if est(i, i) > max {
            // The estimate includes trailing whitespace; confirm on the turn itself.
            let own = span_count(i, i);
            if own > max {
                // Oversized turn: split alone so its pieces never absorb neighbours.
                split_region(index, segs[i].0, segs[i].1, opts, out)?;
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
    Ok(())
}

/// How significant a break between two atoms is; a chunk ends at the most significant
/// break that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// Between two tokens of a piece too large to keep whole.
    Token,
    /// Between two pieces with no whitespace between them (`foo` `123`, `word` `,`).
    Piece,
    Word,
    Sentence,
    Line,
    Paragraph,
    /// The start or end of the region.
    Edge,
}

/// A run of text from `pos` to the next atom's `pos`: one piece (or one token of a large
/// piece) with the whitespace after it, so every atom holds some non-whitespace text.
///
/// Token estimates are running sums of piece counts: `est(a..b) = b.before - a.start`, which
/// leaves out the whitespace between chunks (trimmed off), however long it is.
#[derive(Clone, Copy, Debug)]
struct Atom {
    pos: u32,
    /// Tokens of the pieces before this atom's first piece.
    start: u32,
    /// Tokens of the pieces up to the end of the last non-whitespace text before `pos`.
    before: u32,
    /// The break at `pos`, before this atom.
    level: Break,
}

/// Whether text ending in `content` (no trailing whitespace) ends a sentence: `None`, or
/// whether the break also needs whitespace after it (`.` does, `。` does not).
fn sentence_end(content: &str) -> Option<bool> {
    // Most content ends in a letter or digit: no need to look further.
    let last = *content.as_bytes().last()?;
    if last.is_ascii() && !matches!(last, b'.' | b'!' | b'?' | b'"' | b'\'' | b')' | b']' | b'}') {
        return None;
    }
    let body = content.trim_end_matches(['"', '\'', ')', ']', '}', '”', '’', '»', '」', '』']);
    match body.chars().next_back()? {
        '.' | '!' | '?' | '…' => Some(true),
        '。' | '！' | '？' => Some(false),
        _ => None,
    }
}

/// Bytes of whitespace that `s` starts with (as `str::trim_start` sees whitespace).
fn leading_whitespace(s: &str) -> usize {
    let ascii = s
        .bytes()
        .take_while(|b| matches!(b, b'\t'..=b'\r' | b' '))
        .count();
    match s.as_bytes().get(ascii) {
        Some(b) if !b.is_ascii() => s.len() - s.trim_start().len(),
        _ => ascii,
    }
}

/// Bytes of whitespace that `s` ends with (as `str::trim_end` sees whitespace).
fn trailing_whitespace(s: &str) -> usize {
    let ascii = s
        .bytes()
        .rev()
        .take_while(|b| matches!(b, b'\t'..=b'\r' | b' '))
        .count();
    match s.len().checked_sub(ascii + 1).map(|i| s.as_bytes()[i]) {
        Some(b) if !b.is_ascii() => s.len() - s.trim_end().len(),
        _ => ascii,
    }
}

fn newlines(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'\n').count()
}

/// Atoms of the trimmed region `start..end`, with a sentinel atom at `end`.
fn atoms(index: &PieceIndex, start: usize, end: usize) -> Vec<Atom> {
    let text = index.text;
    let first = index.last_boundary(start);
    let mut atoms = Vec::with_capacity(index.last_boundary(end) - first + 2);
    atoms.push(Atom {
        pos: start as u32,
        start: index.cum[first],
        before: index.cum[first],
        level: Break::Edge,
    });
    let mut large = index.large.partition_point(|(p, _)| *p < first);
    // Whitespace since the last non-whitespace text, and how that text ended.
    let mut gap_newlines = 0;
    let mut gap = false;
    let mut ends_sentence = None;
    let mut content_end = index.cum[first];
    for p in first..index.bounds.len() - 1 {
        let (ps, pe) = (index.bounds[p] as usize, index.bounds[p + 1] as usize);
        if ps >= end {
            break;
        }
        let (s, e) = (ps.max(start), pe.min(end));
        let piece = &text[s..e];
        let lead_len = leading_whitespace(piece);
        if lead_len == piece.len() {
            gap_newlines += newlines(piece);
            gap = true;
            continue;
        }
        let content = &piece[lead_len..piece.len() - trailing_whitespace(piece)];
        // cl100k puts a full-width stop in front of the next sentence's letters ("。这是"):
        // the break goes after the stop (when no whitespace made a better one before it).
        let stop = match piece.as_bytes()[0] {
            b if b.is_ascii() => 0,
            _ => piece
                .chars()
                .next()
                .filter(|&c| sentence_end(c.encode_utf8(&mut [0; 4])) == Some(false))
                .map_or(0, char::len_utf8),
        };
        if stop > 0 && stop < piece.len() && !gap {
            atoms.push(Atom {
                pos: (s + stop) as u32,
                start: index.cum[p],
                before: index.cum[p],
                level: Break::Sentence,
            });
        } else if s > start {
            let lead = &piece[..lead_len];
            let newlines = gap_newlines + newlines(lead);
            let spaced = gap || !lead.is_empty();
            let level = match (newlines, ends_sentence) {
                (2.., _) => Break::Paragraph,
                (1, _) => Break::Line,
                (_, Some(false)) => Break::Sentence,
                (_, Some(true)) if spaced => Break::Sentence,
                _ if spaced => Break::Word,
                _ => Break::Piece,
            };
            atoms.push(Atom {
                pos: s as u32,
                start: index.cum[p],
                before: content_end,
                level,
            });
        }
        while index.large.get(large).is_some_and(|(lp, _)| *lp < p) {
            large += 1;
        }
        if let Some((_, ids)) = index.large.get(large).filter(|(lp, _)| *lp == p) {
            // Token boundaries inside a large piece, where they fall between characters.
            let mut offset = ps;
            for (cum, &id) in (index.cum[p] + 1..).zip(ids) {
                offset += index.tokenizer.token_len(id);
                if offset > s && offset < e && text.is_char_boundary(offset) {
                    atoms.push(Atom {
                        pos: offset as u32,
                        start: cum,
                        before: cum,
                        level: Break::Token,
                    });
                }
            }
        }
        let trail = &piece[lead_len + content.len()..];
        gap_newlines = newlines(trail);
        gap = !trail.is_empty();
        ends_sentence = sentence_end(content);
        content_end = index.cum[p + 1];
    }
    let through = index.tokens_through(end) as u32;
    atoms.push(Atom {
        pos: end as u32,
        start: through,
        before: through,
        level: Break::Edge,
    });
    atoms
}

/// Split the trimmed region `start..end` into chunks (see module docs) and append them.
fn split_region(
    index: &PieceIndex,
    start: usize,
    end: usize,
    opts: &SplitOptions,
    out: &mut Vec<ChunkSpan>,
) -> Result<(), SplitError> {
    let atoms = atoms(index, start, end);
    let last = atoms.len() - 1;
    // The chunk starts at atom `from` and must end after atom `past` (the previous end).
    let mut from = 0;
    let mut past = 0;
    loop {
        let found = fit(index, &atoms, from, past + 1, opts.max_tokens).or_else(|| {
            // The overlap leaves no room for new text: start where the last chunk ended.
            (from < past)
                .then(|| fit(index, &atoms, past, past + 1, opts.max_tokens))
                .flatten()
        });
        let Some((to, chunk)) = found else {
            let (s, e) = (atoms[past].pos, atoms[past + 1].pos);
            return Err(SplitError(format!(
                "cannot fit text at bytes {s}..{e} into {} tokens",
                opts.max_tokens
            )));
        };
        if to == last {
            out.push(chunk);
            return Ok(());
        }
        from = overlap_start(index, &atoms, from, to, &chunk, opts);
        out.push(chunk);
        past = to;
    }
}

/// The chunk from atom `from` that ends at the most significant break at or after atom
/// `min_to` and fits in `max` tokens (exactly counted), with the index of its end.
fn fit(
    index: &PieceIndex,
    atoms: &[Atom],
    from: usize,
    min_to: usize,
    max: usize,
) -> Option<(usize, ChunkSpan)> {
    let base = atoms[from].start as usize;
    let mut budget = max;
    loop {
        // Every atom has at least one token, so the furthest fit is within `budget` atoms.
        let window = &atoms[from..atoms.len().min(from + budget + 1)];
        let fits = window.partition_point(|a| (a.before as usize).saturating_sub(base) <= budget);
        let max_to = from + fits - 1;
        if max_to < min_to {
            return None;
        }
        // The most significant break in reach; the last one of that rank.
        scanned::add(max_to + 1 - min_to);
        let mut to = max_to;
        for i in (min_to..max_to).rev() {
            if atoms[i].level > atoms[to].level {
                to = i;
            }
        }
        let (start, end) = trim_span(index.text, atoms[from].pos as usize, atoms[to].pos as usize)
            .expect("every atom holds non-whitespace text");
        let tokens = index.exact_count(start, end);
        if tokens <= max {
            return Some((to, ChunkSpan { start, end, tokens }));
        }
        // The estimate was short (a cut merges or splits tokens): retry with less.
        let estimate = atoms[to].before as usize - base;
        budget = estimate.saturating_sub(tokens - max);
    }
}

/// Where the chunk after `chunk` (atoms `from..to`) starts: the earliest atom that repeats at
/// most `overlap` tokens and leaves room for new text, preferring a word break or better.
fn overlap_start(
    index: &PieceIndex,
    atoms: &[Atom],
    from: usize,
    to: usize,
    chunk: &ChunkSpan,
    opts: &SplitOptions,
) -> usize {
    if opts.overlap == 0 {
        return to;
    }
    // Candidates `i` repeat `to.before - i.start` tokens and leave the next atom room.
    let floor = (atoms[to].before as usize)
        .saturating_sub(opts.overlap)
        .max((atoms[to + 1].before as usize).saturating_sub(opts.max_tokens));
    let first = from + 1 + atoms[from + 1..to].partition_point(|a| (a.start as usize) < floor);
    scanned::add(2 * (to - first));
    let words = (first..to).filter(|&i| atoms[i].level >= Break::Word);
    let any = first..to;
    // Word breaks first, else any break; the first whose repeated text really fits.
    for i in words.chain(any).take(MAX_OVERLAP_TRIES) {
        let start = atoms[i].pos as usize;
        let start = start + (index.text[start..].len() - index.text[start..].trim_start().len());
        if index.exact_count(start, chunk.end) <= opts.overlap {
            return i;
        }
    }
    to
}
/// Atoms looked at while choosing breaks, so tests can check that it grows linearly.
#[cfg(test)]
mod scanned {
    use std::cell::Cell;

    thread_local! {
        static SCANNED: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn add(atoms: usize) {
        SCANNED.with(|c| c.set(c.get() + atoms as u64));
    }

    pub(super) fn take() -> u64 {
        SCANNED.with(|c| c.replace(0))
    }
}

#[cfg(not(test))]
mod scanned {
    #[inline(always)]
    pub(super) fn add(_atoms: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/corpus/apollo13/transcripts"
    );

    fn day(n: usize) -> String {
        let path = format!("{CORPUS}/day{n:02}.txt");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    /// tiktoken's own count, the reference every chunk is checked against.
    fn reference(tokenizer: Tokenizer, text: &str) -> usize {
        match tokenizer {
            Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
        }
        .encode_ordinary(text)
        .len()
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
            let real = reference(o.tokenizer, chunk);
            assert_eq!(real, c.tokens, "reported tokens must be tiktoken's count");
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
                let repeated = reference(o.tokenizer, &text[b.start..a.end]);
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
    fn corpus_default_settings() {
        // The stage's defaults on every day: 800 tokens, 100 of overlap.
        let o = opts(800, 100, TranscriptMode::Auto);
        for d in 1..=6 {
            let text = day(d);
            let chunks = split(&text, &o).expect("split");
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            assert_ordered_overlapping(&text, &chunks, &o);
        }
    }

    /// A deterministic stream of characters from `alphabet`.
    fn random_text(seed: u64, chars: usize, alphabet: &[char]) -> String {
        let mut state = seed;
        (0..chars)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                alphabet[(state >> 33) as usize % alphabet.len()]
            })
            .collect()
    }

    const LOWERCASE: &[char] = &[
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r',
        's', 't', 'u', 'v', 'w', 'x', 'y', 'z',
    ];
    const UNICODE: &[char] = &[
        '日', '本', '語', '中', '文', '한', '국', 'テ', 'キ', '。', '、', '！', 'é', 'e',
        '\u{301}', '🚀', '👨', '\u{200d}', 'ж', 'ש', 'م', '٣', '½', ' ', '\u{3000}',
    ];

    /// Long single lines of the shapes that used to be quadratic, about `bytes` long.
    fn one_line(shape: &str, bytes: usize) -> String {
        let mut text = match shape {
            "transcript" => {
                let corpus: String = (1..=6).map(day).collect::<String>().replace('\n', " ");
                corpus.repeat(bytes / corpus.len() + 1)
            }
            "words" => "word ".repeat(bytes / 5 + 1),
            "no_spaces" => random_text(bytes as u64, bytes, LOWERCASE),
            "unicode" => random_text(bytes as u64, bytes / 3, UNICODE),
            _ => unreachable!("{shape}"),
        };
        let mut cut = bytes.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text
    }

    #[test]
    fn whitespace_helpers_agree_with_trim() {
        let alphabet = [
            ' ', '\t', '\n', '\r', '\x0b', '\x0c', '\u{a0}', '\u{3000}', '\u{85}', 'a', 'é', '.',
        ];
        for seed in 0..2000 {
            let s = random_text(seed, (seed % 9) as usize, &alphabet);
            assert_eq!(
                leading_whitespace(&s),
                s.len() - s.trim_start().len(),
                "{s:?}"
            );
            assert_eq!(
                trailing_whitespace(&s),
                s.len() - s.trim_end().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_transcript_day_on_one_line() {
        // day04 joined into one line: 0.5 s at 62 kB and 5.7 s at 299 kB before.
        let text = day(4).replace('\n', " ");
        let o = opts(800, 100, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        let overlapped = assert_ordered_overlapping(&text, &chunks, &o);
        assert!(
            overlapped * 10 > chunks.len() * 9,
            "{overlapped} of {}",
            chunks.len()
        );
        // Chunks are full and end between words (mostly at a sentence end).
        let total: usize = chunks.iter().map(|c| c.tokens).sum();
        assert!(total / chunks.len() > 700, "{}", total / chunks.len());
        let mut sentences = 0;
        for c in &chunks[..chunks.len() - 1] {
            assert!(text[c.end..].starts_with(' '), "{c:?} ends mid-word");
            sentences += usize::from(text[..c.end].ends_with(['.', '?', '!']));
        }
        assert!(
            sentences * 10 > chunks.len() * 9,
            "{sentences} of {}",
            chunks.len()
        );
    }

    #[test]
    fn words_on_one_line() {
        // "word " × 80,000: 3.5 s before.
        let text = "word ".repeat(80_000);
        let o = opts(800, 100, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        assert_ordered_overlapping(&text, &chunks, &o);
        // " word" is one token: chunks of 800 tokens, 100 of them repeated.
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.tokens == 800));
        assert_eq!(chunks.len(), (80_000 - 100) / 700 + 1);
        for c in &chunks {
            assert!(text[c.start..c.end].split(' ').all(|w| w == "word"));
        }
    }

    #[test]
    fn no_spaces_is_cut_between_tokens() {
        // One pre-tokenizer piece of 300 kB: cut at token boundaries, counts still exact.
        let text = one_line("no_spaces", 300_000);
        for overlap in [0, 100] {
            let o = opts(800, overlap, TranscriptMode::Off);
            let chunks = split(&text, &o).expect("split");
            assert_limits(&text, &chunks, &o);
            assert_covered(&text, &chunks);
            assert_ordered_overlapping(&text, &chunks, &o);
            // Without spaces, chunks without overlap abut; with it, each repeats some text.
            for w in chunks.windows(2) {
                assert_eq!(w[1].start < w[0].end, overlap > 0, "{w:?}");
            }
            let total: usize = chunks.iter().map(|c| c.tokens).sum();
            assert!(total / chunks.len() > 780, "{}", total / chunks.len());
        }
    }

    #[test]
    fn unicode_without_spaces() {
        let text = one_line("unicode", 200_000);
        let o = opts(300, 30, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        assert_ordered_overlapping(&text, &chunks, &o);
        let o200k = SplitOptions {
            tokenizer: Tokenizer::O200kBase,
            ..o
        };
        let chunks = split(&text, &o200k).expect("split");
        assert_limits(&text, &chunks, &o200k);
        assert_covered(&text, &chunks);
    }

    #[test]
    fn cjk_sentences_break_without_spaces() {
        let text = "这是一个没有空格的句子，它很长很长。".repeat(400);
        let o = opts(100, 0, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_covered(&text, &chunks);
        for c in &chunks {
            assert!(text[..c.end].ends_with('。'), "{:?}", &text[c.start..c.end]);
        }
    }

    #[test]
    fn huge_whitespace_is_never_in_a_chunk() {
        let text = format!("first words\n{}last words", " ".repeat(1_000_000));
        let o = opts(50, 10, TranscriptMode::Auto);
        let chunks = split(&text, &o).expect("split");
        let texts: Vec<&str> = chunks.iter().map(|c| &text[c.start..c.end]).collect();
        assert_eq!(texts, ["first words", "last words"]);
        assert_limits(&text, &chunks, &o);
    }

    #[test]
    fn paragraphs_lines_and_sentences_rank_as_breaks() {
        let para = "One two three. Four five six seven.\nEight nine ten eleven twelve.";
        let text = [para; 6].join("\n\n");
        // Two paragraphs fit in 40 tokens, never two and a half.
        let o = opts(40, 0, TranscriptMode::Off);
        let chunks = split(&text, &o).expect("split");
        assert_limits(&text, &chunks, &o);
        assert_eq!(chunks.len(), 3);
        let two = [para; 2].join("\n\n");
        assert!(chunks.iter().all(|c| text[c.start..c.end] == two));
        // A paragraph does not fit in 8 tokens: break at the line, then at the sentence.
        let o = opts(8, 0, TranscriptMode::Off);
        let chunks = split(para, &o).expect("split");
        let texts: Vec<&str> = chunks.iter().map(|c| &para[c.start..c.end]).collect();
        assert_eq!(
            texts,
            [
                "One two three.",
                "Four five six seven.",
                "Eight nine ten eleven twelve."
            ]
        );
    }

    #[test]
    fn exact_count_matches_tiktoken_at_any_cut() {
        let alphabet: Vec<char> = LOWERCASE[..6]
            .iter()
            .chain(UNICODE)
            .chain(&[
                ' ', ' ', '\n', '\t', '.', '\'', '1', '2', 'A', '\r', '!', '/',
            ])
            .copied()
            .collect();
        let texts = [
            day(1)[..20_000].to_string(),
            random_text(1, 3_000, &alphabet),
            "He's here.\n  Indented 123456 ok\n\n\tTabbed; they'll\r\nGO!! ".repeat(40),
        ];
        for tokenizer in [Tokenizer::Cl100kBase, Tokenizer::O200kBase] {
            let o = SplitOptions {
                tokenizer,
                ..opts(800, 0, TranscriptMode::Off)
            };
            for text in &texts {
                let index = PieceIndex::build(text, &o).expect("index");
                let cuts: Vec<usize> = (0..=text.len())
                    .filter(|&i| text.is_char_boundary(i))
                    .collect();
                let mut state = 99u64;
                for _ in 0..400 {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let a = cuts[(state >> 33) as usize % cuts.len()];
                    let b = cuts[(state >> 13) as usize % cuts.len()];
                    let (a, b) = (a.min(b), a.max(b));
                    // Chunks end after non-whitespace and start anywhere.
                    let end = text[..b].trim_end().len();
                    if end <= a {
                        continue;
                    }
                    assert_eq!(
                        index.exact_count(a, end),
                        reference(tokenizer, &text[a..end]),
                        "{}: {a}..{end} {:?}",
                        tokenizer.name(),
                        &text[a..end]
                    );
                }
            }
        }
    }

    /// Work (bytes given to the tokenizer, atoms scanned) for splitting `text`.
    fn work_of(text: &str, o: &SplitOptions) -> (u64, u64, u64) {
        crate::tokens::work::take();
        scanned::take();
        let chunks = split(text, o).expect("split");
        assert!(!chunks.is_empty());
        let (encoded, pretokenized) = crate::tokens::work::take();
        (encoded, pretokenized, scanned::take())
    }

    #[test]
    fn work_grows_linearly_with_the_input() {
        let o = opts(800, 100, TranscriptMode::Auto);
        let transcript: String = (1..=6).map(day).collect();
        for shape in ["transcript", "words", "no_spaces", "unicode"] {
            let small = one_line(shape, 40_000);
            let large = one_line(shape, 400_000);
            let (ws, wl) = (work_of(&small, &o), work_of(&large, &o));
            let (ns, nl) = (small.len() as u64, large.len() as u64);
            // Each byte is pre-tokenized and encoded about once, a piece cut by chunks (no
            // spaces) once more, the overlap again; each atom is looked at a bounded number
            // of times.
            for (work, n) in [(ws, ns), (wl, nl)] {
                assert!(work.0 <= n * 5 / 2, "{shape}: encoded {} of {n}", work.0);
                assert!(
                    work.1 <= n * 5 / 2,
                    "{shape}: pretokenized {} of {n}",
                    work.1
                );
                assert!(
                    work.2 <= n * 3,
                    "{shape}: scanned {} atoms for {n} bytes",
                    work.2
                );
            }
            // Ten times the input, ten times the work (not a hundred).
            for (s, l) in [(ws.0, wl.0), (ws.1, wl.1), (ws.2, wl.2)] {
                let ratio = l as f64 / s as f64;
                assert!((8.0..12.0).contains(&ratio), "{shape}: work × {ratio:.1}");
            }
        }
        // A transcript: each byte counted about once as well.
        let (encoded, pretokenized, _) = work_of(&transcript, &o);
        let n = transcript.len() as u64;
        assert!(
            encoded <= n * 11 / 10 && pretokenized <= n * 11 / 10,
            "{encoded} {pretokenized} of {n}"
        );
    }

    #[test]
    fn ten_megabytes_on_one_line_finish() {
        // Once never finished; the work bound is what keeps it linear.
        let text = one_line("no_spaces", 10_000_000);
        let o = opts(800, 100, TranscriptMode::Auto);
        let (encoded, pretokenized, scanned) = work_of(&text, &o);
        let n = text.len() as u64;
        assert!(
            encoded <= n * 5 / 2 && pretokenized <= n * 5 / 2 && scanned <= n * 3,
            "encoded {encoded}, pretokenized {pretokenized}, scanned {scanned} for {n} bytes"
        );
    }
}
