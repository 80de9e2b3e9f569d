//! Cutting a chunk into utterances (speaker turns), sentences and tokens, keeping byte offsets
//! into the chunk text. Sentence and word boundaries are Unicode's (UAX #29, by the
//! `unicode-segmentation` crate); speaker labels follow the chunker's turn pattern.

use regex::Regex;
use std::sync::LazyLock;
use unicode_segmentation::UnicodeSegmentation;

/// A turn-start line: optional `[hh:mm:ss]`, optional bare `hh:mm:ss`, then a label and a
/// colon followed by whitespace or the end of the line (the `chunk` stage's pattern).
static TURN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[ \t]*(\[\d{1,3}(?::\d{2}){1,2}(?:[.,]\d+)?\][ \t]*)?(?:\d{1,3}(?::\d{2}){1,2}(?:[.,]\d+)?[ \t]+)?(\p{L}[\p{L}\p{N} .'_\-]{0,39}):(?:\s|$)",
    )
    .expect("static turn regex must compile")
});

/// Labels of more words than this are more likely prose than a speaker.
const MAX_LABEL_WORDS: usize = 4;

/// A speaker turn (or, in prose, a paragraph): byte ranges in the chunk text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utterance {
    /// The speaker label, when the turn has one.
    pub speaker: Option<(usize, usize)>,
    /// The whole turn, label included.
    pub span: (usize, usize),
    /// What was said (after the label).
    pub body: (usize, usize),
}

struct TurnLine {
    label: (usize, usize),
    body_start: usize,
    timestamped: bool,
}

fn turn_line(line: &str, offset: usize) -> Option<TurnLine> {
    let captures = TURN_RE.captures(line)?;
    let label = captures.get(2)?;
    let text = label.as_str().trim_end();
    if text.split_whitespace().count() > MAX_LABEL_WORDS {
        return None;
    }
    let whole = captures.get(0)?;
    Some(TurnLine {
        label: (offset + label.start(), offset + label.start() + text.len()),
        body_start: offset + whole.end(),
        timestamped: captures.get(1).is_some(),
    })
}

/// Looks like a name of a speaker rather than the start of a sentence: every word capitalised
/// ("Jim Lovell", "Dr. Lee") or no lower-case letter at all ("CDR", "S-1").
fn label_like(label: &str) -> bool {
    let no_lower = !label.chars().any(char::is_lowercase);
    let capitalised = label
        .split_whitespace()
        .all(|w| w.chars().next().is_some_and(char::is_uppercase));
    no_lower || capitalised
}

/// The turns of a chunk. A line with a speaker label starts a turn; following lines without
/// one continue it. Labels without a timestamp count only in text with at least two such
/// lines (so one "Note: ..." in prose is not a speaker). Without labels, paragraphs (blank-line
/// separated) are the units.
pub fn utterances(text: &str) -> Vec<Utterance> {
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        lines.push((offset, line));
        offset += line.len();
    }
    let turns: Vec<Option<TurnLine>> = lines
        .iter()
        .map(|(offset, line)| turn_line(line, *offset))
        .collect();
    let untimed = turns
        .iter()
        .flatten()
        .filter(|t| !t.timestamped && label_like(&text[t.label.0..t.label.1]))
        .count();
    let mut out: Vec<Utterance> = Vec::new();
    let mut open: Option<Utterance> = None;
    let close = |open: &mut Option<Utterance>, out: &mut Vec<Utterance>| {
        if let Some(u) = open.take()
            && let Some(span) = trim(text, u.span)
        {
            let body = trim(text, u.body).unwrap_or((span.1, span.1));
            out.push(Utterance { span, body, ..u });
        }
    };
    for ((offset, line), turn) in lines.iter().zip(turns) {
        let end = offset + line.len();
        let turn = turn
            .filter(|t| t.timestamped || (untimed >= 2 && label_like(&text[t.label.0..t.label.1])));
        match turn {
            Some(t) => {
                close(&mut open, &mut out);
                open = Some(Utterance {
                    speaker: Some(t.label),
                    span: (*offset, end),
                    body: (t.body_start, end),
                });
            }
            None if line.trim().is_empty() => {
                // A blank line ends a paragraph; a speaker's turn goes on past it only when
                // the next line has no label of its own (handled by the next iteration).
                if open.as_ref().is_some_and(|u| u.speaker.is_none()) {
                    close(&mut open, &mut out);
                }
            }
            None => match &mut open {
                Some(u) => {
                    u.span.1 = end;
                    u.body.1 = end;
                }
                None => {
                    open = Some(Utterance {
                        speaker: None,
                        span: (*offset, end),
                        body: (*offset, end),
                    });
                }
            },
        }
    }
    close(&mut open, &mut out);
    out
}

fn trim(text: &str, (start, end): (usize, usize)) -> Option<(usize, usize)> {
    let slice = &text[start..end];
    let lead = slice.len() - slice.trim_start().len();
    let trimmed = slice.trim();
    (!trimmed.is_empty()).then(|| (start + lead, start + lead + trimmed.len()))
}

/// Sentences of `text[range]` (UAX #29), trimmed, as byte ranges of `text`.
pub fn sentences(text: &str, (start, end): (usize, usize)) -> Vec<(usize, usize)> {
    text[start..end]
        .split_sentence_bound_indices()
        .filter_map(|(at, s)| trim(text, (start + at, start + at + s.len())))
        .collect()
}

/// A word or punctuation mark, as a byte range of the chunk text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub start: usize,
    pub end: usize,
    /// Has a letter or a digit (else punctuation or a symbol).
    pub word: bool,
}

/// The tokens of `text[range]` (UAX #29 word boundaries, whitespace dropped), with hyphenated
/// compounds written without spaces kept whole ("S-IVB", "DELTA-V", "fuel-cell").
pub fn tokens(text: &str, (start, end): (usize, usize)) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    for (at, piece) in text[start..end].split_word_bound_indices() {
        if piece.trim().is_empty() {
            continue;
        }
        let token = Token {
            start: start + at,
            end: start + at + piece.len(),
            word: piece.chars().any(char::is_alphanumeric),
        };
        // word "-" word with nothing between: one compound.
        let n = out.len();
        if token.word
            && n >= 2
            && out[n - 1].end == token.start
            && &text[out[n - 1].start..out[n - 1].end] == "-"
            && out[n - 2].word
            && out[n - 2].end == out[n - 1].start
        {
            out[n - 2].end = token.end;
            out.pop();
            continue;
        }
        out.push(token);
    }
    out
}

/// Byte offset → character offset in one text.
pub struct CharOffsets {
    /// Character count before each byte that starts a character (the rest unused).
    table: Vec<u32>,
}

impl CharOffsets {
    pub fn new(text: &str) -> CharOffsets {
        let mut table = vec![0u32; text.len() + 1];
        let mut chars = 0u32;
        for (byte, _) in text.char_indices() {
            table[byte] = chars;
            chars += 1;
        }
        table[text.len()] = chars;
        CharOffsets { table }
    }

    pub fn at(&self, byte: usize) -> u64 {
        self.table.get(byte).copied().unwrap_or(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(text: &'a str, spans: &[(usize, usize)]) -> Vec<&'a str> {
        spans.iter().map(|&(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn transcript_turns_have_speakers_and_bodies() {
        let text = "[000:00:02] CDR: The clock is running.\n[000:00:16] CC: Houston, Roger. Roll.\n  and more\n";
        let turns = utterances(text);
        assert_eq!(turns.len(), 2);
        let speakers: Vec<&str> = turns
            .iter()
            .map(|u| {
                let (s, e) = u.speaker.unwrap();
                &text[s..e]
            })
            .collect();
        assert_eq!(speakers, vec!["CDR", "CC"]);
        assert_eq!(
            &text[turns[1].body.0..turns[1].body.1],
            "Houston, Roger. Roll.\n  and more"
        );
        assert_eq!(
            texts(text, &sentences(text, turns[1].body)),
            vec!["Houston, Roger.", "Roll.", "and more"]
        );
    }

    #[test]
    fn untimed_labels_need_company_and_a_name_shape() {
        let chat = "CDR: we are go.\nJim Lovell: okay.\n";
        let turns = utterances(chat);
        assert!(turns.iter().all(|u| u.speaker.is_some()), "{turns:?}");
        // One label-looking line in prose is not a transcript.
        let prose = "Note: the tank failed.\nThe crew survived.\n\nA second paragraph.";
        let turns = utterances(prose);
        assert_eq!(turns.len(), 2);
        assert!(turns.iter().all(|u| u.speaker.is_none()));
        assert_eq!(
            &prose[turns[0].span.0..turns[0].span.1],
            "Note: the tank failed.\nThe crew survived."
        );
        // "the end: ..." is lower-case: not a speaker even with company.
        let turns = utterances("A: one\nB: two\nthe end: three\n");
        assert_eq!(turns.len(), 2);
    }

    #[test]
    fn tokens_keep_compounds_and_offsets() {
        let text = "Stand by for S-IVB to COI, fuel-cell O2.";
        let words: Vec<&str> = tokens(text, (0, text.len()))
            .iter()
            .map(|t| &text[t.start..t.end])
            .collect();
        assert_eq!(
            words,
            vec![
                "Stand",
                "by",
                "for",
                "S-IVB",
                "to",
                "COI",
                ",",
                "fuel-cell",
                "O2",
                "."
            ]
        );
        let spaced = "tank - 2";
        assert_eq!(tokens(spaced, (0, spaced.len())).len(), 3);
    }

    #[test]
    fn char_offsets_count_characters() {
        let text = "héllo wörld";
        let offsets = CharOffsets::new(text);
        assert_eq!(offsets.at(text.find('w').unwrap()), 6);
        assert_eq!(offsets.at(text.len()), 11);
    }
}
