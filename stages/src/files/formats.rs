//! Bytes-to-documents conversion for the `files` source: pure, no I/O.

use serde_json::Value;
use std::fmt;

/// Only this much of a file is scanned for NUL bytes; enough to catch real binaries cheaply.
const BINARY_SNIFF_LEN: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Srt,
    Vtt,
    Json,
    Jsonl,
    Pdf,
}

impl Format {
    /// By file extension (case-insensitive): txt/text/log -> Text, md/markdown -> Markdown, srt, vtt, json, jsonl/ndjson, pdf. None for others.
    pub fn from_extension(ext: &str) -> Option<Format> {
        // Accept ".txt" as well as "txt": callers often pass what they split off a path.
        let ext = ext.strip_prefix('.').unwrap_or(ext).to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" | "log" => Some(Format::Text),
            "md" | "markdown" => Some(Format::Markdown),
            "srt" => Some(Format::Srt),
            "vtt" => Some(Format::Vtt),
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Pdf => "pdf",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FieldMapping {
    /// Path to the text, e.g. "text", "body.content", "transcript[].text" (`[]` = every element of an array; then each element's text becomes one line).
    pub text_field: Option<String>,
    /// Optional path to a speaker next to the text, e.g. "transcript[].speaker"; it must share text_field's array prefix; lines become "SPEAKER: text".
    pub speaker_field: Option<String>,
}

impl FieldMapping {
    /// Config-time check of both paths and of the shared array prefix, so bad
    /// mappings fail before any file is read.
    pub fn validate(&self) -> Result<(), String> {
        MappingPaths::parse(self).map(|_| ())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExtractedDoc {
    pub text: String,
    /// 1-based line number in the file for JSONL documents (one document per line), None otherwise.
    pub line: Option<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExtractError {
    pub message: String,
    pub line: Option<usize>,
}

impl ExtractError {
    fn new(message: impl Into<String>) -> Self {
        ExtractError {
            message: message.into(),
            line: None,
        }
    }

    fn at_line(message: impl Into<String>, line: usize) -> Self {
        ExtractError {
            message: message.into(),
            line: Some(line),
        }
    }
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ExtractError {}

/// One file's outcome: documents that parsed, and per-item errors (e.g. one bad JSONL line) that must be reported, not dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    pub docs: Vec<ExtractedDoc>,
    pub errors: Vec<ExtractError>,
}

impl Extracted {
    fn single(text: String) -> Self {
        Extracted {
            docs: vec![ExtractedDoc { text, line: None }],
            errors: Vec::new(),
        }
    }
}

/// Fails as a whole (Err) for: binary content (a NUL byte in the first 8 KiB, except for PDF), invalid UTF-8 (message names the byte offset of the first invalid sequence), a .json file that isn't valid JSON (message with line and column from serde_json), a missing text_field for JSON (message names the path and what was found instead), a PDF that can't be read.
pub fn extract(
    format: Format,
    bytes: &[u8],
    mapping: &FieldMapping,
) -> Result<Extracted, ExtractError> {
    if format == Format::Pdf {
        return extract_pdf(bytes);
    }
    let text = decode_text(bytes)?;
    match format {
        Format::Text | Format::Markdown => Ok(Extracted::single(text)),
        Format::Srt => subtitles_doc(parse_srt(&text), "SRT"),
        Format::Vtt => subtitles_doc(parse_vtt(&text), "WebVTT"),
        Format::Json => extract_json(&text, mapping),
        Format::Jsonl => extract_jsonl(&text, mapping),
        // Handled above; kept as an arm so the match stays exhaustive without a panic.
        Format::Pdf => extract_pdf(bytes),
    }
}

/// Parse and check a field path at config time (pure): "a.b[].c" ok; "", "a..b", "[]x", "a[]b" -> Err(message).
pub fn validate_field_path(path: &str) -> Result<(), String> {
    parse_path(path).map(|_| ())
}

// ---------------------------------------------------------------------------
// Text decoding

fn decode_text(bytes: &[u8]) -> Result<String, ExtractError> {
    let sniff = &bytes[..bytes.len().min(BINARY_SNIFF_LEN)];
    if let Some(pos) = sniff.iter().position(|&b| b == 0) {
        return Err(ExtractError::new(format!(
            "binary content (NUL byte at offset {pos}); not a text file (UTF-16 is not supported)"
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ExtractError::new(format!("invalid UTF-8 at byte offset {}", e.valid_up_to()))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(text.replace("\r\n", "\n"))
}

// ---------------------------------------------------------------------------
// Subtitles (SRT / WebVTT)

fn subtitles_doc(lines: Vec<String>, kind: &str) -> Result<Extracted, ExtractError> {
    // A subtitle file without cues is almost certainly the wrong format or broken;
    // say so instead of silently producing nothing.
    if lines.is_empty() {
        return Err(ExtractError::new(format!("{kind}: no cues found")));
    }
    Ok(Extracted::single(lines.join("\n")))
}

/// Start time (whole seconds) of a timing line like `00:00:01,000 --> 00:00:04,000 ...`.
fn parse_timing_line(line: &str) -> Option<u64> {
    let (start, _) = line.split_once("-->")?;
    parse_timestamp(start.trim())
}

/// `HH:MM:SS,mmm`, `HH:MM:SS.mmm` or `MM:SS.mmm`; fraction truncated.
fn parse_timestamp(s: &str) -> Option<u64> {
    let whole = match s.find([',', '.']) {
        Some(i) => &s[..i],
        None => s,
    };
    let mut total: u64 = 0;
    let mut parts = 0;
    for part in whole.split(':') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = part.parse().ok()?;
        total = total.checked_mul(60)?.checked_add(n)?;
        parts += 1;
    }
    (parts == 2 || parts == 3).then_some(total)
}

fn format_seconds(total: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        total / 3600,
        (total / 60) % 60,
        total % 60
    )
}

/// Cue payload lines -> one line of plain text, or None if nothing is left.
fn cue_text(lines: &[&str]) -> Option<String> {
    let parts: Vec<String> = lines
        .iter()
        .map(|l| {
            let plain = decode_entities(&strip_tags(l));
            let trimmed = plain.trim();
            // Dialogue dash before a speaker label ("- JOHN: hi") is layout, not content.
            match trimmed.strip_prefix('-') {
                Some(rest) if is_speaker_label(rest.trim_start()) => rest.trim_start().to_string(),
                _ => trimmed.to_string(),
            }
        })
        .collect();
    let joined = collapse_whitespace(&parts.join(" "));
    (!joined.is_empty()).then_some(joined)
}

/// True if `s` starts with an upper-case label followed by a colon, like `JOHN:` or `DR. SMITH:`.
fn is_speaker_label(s: &str) -> bool {
    let Some(colon) = s.find(':') else {
        return false;
    };
    let label = &s[..colon];
    let after_ok = s[colon + 1..]
        .chars()
        .next()
        .is_none_or(char::is_whitespace);
    let first_is_letter = label.chars().next().is_some_and(char::is_alphabetic);
    let chars_ok = label.chars().all(|c| {
        c.is_uppercase() || c.is_ascii_digit() || matches!(c, ' ' | '.' | '\'' | '-' | '#' | '&')
    });
    after_ok && first_is_letter && chars_ok && label.chars().count() <= 40
}

/// Removes `<...>` markup (and `{\...}` override codes some SRT files carry);
/// WebVTT voice tags `<v Name>` / `<v.class Name>` become `Name: `.
fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let next = rest[c.len_utf8()..].chars().next();
        let tag_close = match (c, next) {
            // Only treat `<` as markup when it looks like a tag, so "a < b" survives.
            ('<', Some(n)) if n.is_alphanumeric() || n == '/' => rest.find('>').map(|i| (i, 1)),
            ('{', Some('\\')) => rest.find('}').map(|i| (i, 1)),
            _ => None,
        };
        match tag_close {
            Some((end, close_len)) => {
                if c == '<'
                    && let Some(name) = voice_name(&rest[1..end])
                {
                    out.push(' ');
                    out.push_str(name);
                    out.push_str(": ");
                }
                rest = &rest[end + close_len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// Speaker of a WebVTT voice tag body (`v Name`, `v.loud.x Name`), if any.
fn voice_name(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix('v')?;
    let rest = if rest.starts_with('.') {
        // Skip the class list, which runs up to the first whitespace.
        let end = rest.find(char::is_whitespace)?;
        &rest[end..]
    } else if rest.starts_with(char::is_whitespace) {
        rest
    } else {
        return None;
    };
    let name = rest.trim();
    (!name.is_empty()).then_some(name)
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    // `&amp;` last, so "&amp;lt;" decodes to the literal "&lt;" rather than "<".
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&nbsp;", " ")
        .replace("&lrm;", "")
        .replace("&rlm;", "")
        .replace("&amp;", "&")
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Line-based rather than block-based so files with missing or extra blank
/// lines still parse: a timing line starts a cue, the digits-only line right
/// before it is its index, everything else is cue text.
fn parse_srt(text: &str) -> Vec<String> {
    let mut cues: Vec<(u64, Vec<&str>)> = Vec::new();
    let mut last_pushed_was_index_candidate = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(start) = parse_timing_line(trimmed) {
            if last_pushed_was_index_candidate && let Some((_, lines)) = cues.last_mut() {
                lines.pop();
            }
            cues.push((start, Vec::new()));
            last_pushed_was_index_candidate = false;
            continue;
        }
        if trimmed.is_empty() {
            last_pushed_was_index_candidate = false;
            continue;
        }
        // Lines before the first timing line (the first index) are dropped here.
        if let Some((_, lines)) = cues.last_mut() {
            lines.push(trimmed);
            last_pushed_was_index_candidate = trimmed.bytes().all(|b| b.is_ascii_digit());
        }
    }
    cues.into_iter()
        .filter_map(|(start, lines)| {
            cue_text(&lines).map(|t| format!("[{}] {t}", format_seconds(start)))
        })
        .collect()
}

fn parse_vtt(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for block in lines.split(|l| l.trim().is_empty()) {
        let Some(first) = block.first() else {
            continue;
        };
        let first = first.trim();
        if ["WEBVTT", "NOTE", "STYLE", "REGION"]
            .iter()
            .any(|kw| block_starts_with_keyword(first, kw))
        {
            continue;
        }
        // The timing is the first line, or the second after an optional cue identifier.
        let Some((idx, start)) = block
            .iter()
            .take(2)
            .enumerate()
            .find_map(|(i, l)| parse_timing_line(l.trim()).map(|s| (i, s)))
        else {
            continue;
        };
        if let Some(t) = cue_text(&block[idx + 1..]) {
            out.push(format!("[{}] {t}", format_seconds(start)));
        }
    }
    out
}

fn block_starts_with_keyword(line: &str, kw: &str) -> bool {
    line.strip_prefix(kw)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

// ---------------------------------------------------------------------------
// Field paths

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Each,
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    if path.trim().is_empty() {
        return Err("field path is empty".to_string());
    }
    let mut steps = Vec::new();
    for (i, segment) in path.split('.').enumerate() {
        let mut key = segment;
        let mut arrays = 0;
        while let Some(k) = key.strip_suffix("[]") {
            key = k;
            arrays += 1;
        }
        if key.contains(['[', ']']) {
            return Err(format!(
                "invalid segment {segment:?} in field path {path:?}: `[]` may only appear at the end of a segment"
            ));
        }
        if key.is_empty() {
            // A leading bare `[]` addresses a top-level array, e.g. "[].text".
            if !(i == 0 && arrays > 0) {
                return Err(format!("empty segment in field path {path:?}"));
            }
        } else {
            steps.push(Step::Key(key.to_string()));
        }
        steps.extend(std::iter::repeat_n(Step::Each, arrays));
    }
    Ok(steps)
}

fn render_path(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Each => s.push_str("[]"),
        }
    }
    s
}

/// Split after the last `[]`: (array prefix, per-element suffix).
fn split_at_last_each(steps: &[Step]) -> (&[Step], &[Step]) {
    match steps.iter().rposition(|s| *s == Step::Each) {
        Some(i) => steps.split_at(i + 1),
        None => (&[], steps),
    }
}

struct MappingPaths {
    text_path: String,
    text: Vec<Step>,
    speaker_path: Option<String>,
    speaker: Option<Vec<Step>>,
}

impl MappingPaths {
    fn parse(mapping: &FieldMapping) -> Result<Self, String> {
        let text_path = mapping.text_field.as_deref().unwrap_or("text").to_string();
        let text = parse_path(&text_path).map_err(|e| format!("text_field: {e}"))?;
        let speaker = match mapping.speaker_field.as_deref() {
            None => None,
            Some(sp) => {
                let steps = parse_path(sp).map_err(|e| format!("speaker_field: {e}"))?;
                let (tp, _) = split_at_last_each(&text);
                let (spp, _) = split_at_last_each(&steps);
                if tp != spp {
                    return Err(format!(
                        "speaker_field {sp:?} must share the array prefix {:?} of text_field {text_path:?}",
                        render_path(tp)
                    ));
                }
                Some(steps)
            }
        };
        Ok(MappingPaths {
            text_path,
            text,
            speaker_path: mapping.speaker_field.clone(),
            speaker,
        })
    }
}

// ---------------------------------------------------------------------------
// JSON / JSONL

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn describe_keys(m: &serde_json::Map<String, Value>) -> String {
    if m.is_empty() {
        return "an empty object".to_string();
    }
    const MAX: usize = 10;
    let mut keys: Vec<String> = m.keys().take(MAX).map(|k| format!("{k:?}")).collect();
    if m.len() > MAX {
        keys.push(format!("… {} more", m.len() - MAX));
    }
    format!("an object with keys [{}]", keys.join(", "))
}

fn location(steps: &[Step]) -> String {
    if steps.is_empty() {
        "the top level".to_string()
    } else {
        format!("{:?}", render_path(steps))
    }
}

/// Follow keys only (no `[]`); Err describes what was found instead.
fn navigate<'a>(root: &'a Value, steps: &[Step]) -> Result<&'a Value, String> {
    let mut cur = root;
    for (i, step) in steps.iter().enumerate() {
        cur = match (step, cur) {
            (Step::Key(k), Value::Object(m)) => m.get(k).ok_or_else(|| {
                format!(
                    "no key {k:?} at {}, found {}",
                    location(&steps[..i]),
                    describe_keys(m)
                )
            })?,
            (Step::Key(_), other) => {
                return Err(format!(
                    "expected an object at {}, found {}",
                    location(&steps[..i]),
                    type_name(other)
                ));
            }
            // Callers only pass key-only paths; treat a stray `[]` as a mismatch, not a panic.
            (Step::Each, other) => {
                return Err(format!(
                    "unexpected [] at {}, found {}",
                    location(&steps[..i]),
                    type_name(other)
                ));
            }
        };
    }
    Ok(cur)
}

/// One JSON value -> (document text, per-item error messages).
fn text_from_value(root: &Value, paths: &MappingPaths) -> Result<(String, Vec<String>), String> {
    let path = &paths.text_path;
    let (prefix, suffix) = split_at_last_each(&paths.text);
    let speaker_suffix = paths.speaker.as_deref().map(|s| split_at_last_each(s).1);

    if prefix.is_empty() {
        let v =
            navigate(root, suffix).map_err(|e| format!("text field {path:?} not found: {e}"))?;
        let text = scalar_text(v)
            .ok_or_else(|| format!("text field {path:?} is {}, expected a string", type_name(v)))?;
        let mut errors = Vec::new();
        let speaker = speaker_suffix.and_then(|sp| speaker_of(root, sp, paths, None, &mut errors));
        return Ok((with_speaker(speaker, text), errors));
    }

    // Expand the array prefix; before the first `[]` the structure must be there,
    // inside elements a failed step just means that element lacks the field.
    let mut frontier = vec![root];
    let mut inside = false;
    let mut missing = 0usize;
    let mut first_missing: Option<String> = None;
    for (i, step) in prefix.iter().enumerate() {
        let mut next = Vec::new();
        for v in frontier {
            let res: Result<(), String> = match (step, v) {
                (Step::Key(k), Value::Object(m)) => match m.get(k) {
                    Some(x) => {
                        next.push(x);
                        Ok(())
                    }
                    None => Err(format!(
                        "no key {k:?} at {}, found {}",
                        location(&prefix[..i]),
                        describe_keys(m)
                    )),
                },
                (Step::Each, Value::Array(a)) => {
                    next.extend(a.iter());
                    Ok(())
                }
                (Step::Key(_), other) => Err(format!(
                    "expected an object at {}, found {}",
                    location(&prefix[..i]),
                    type_name(other)
                )),
                (Step::Each, other) => Err(format!(
                    "expected an array at {}, found {}",
                    location(&prefix[..i]),
                    type_name(other)
                )),
            };
            if let Err(e) = res {
                if !inside {
                    return Err(format!("text field {path:?} not found: {e}"));
                }
                missing += 1;
                first_missing.get_or_insert(e);
            }
        }
        inside |= *step == Step::Each;
        frontier = next;
    }

    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (n, el) in frontier.iter().enumerate() {
        match navigate(el, suffix) {
            Ok(Value::Null) => {
                missing += 1;
                first_missing.get_or_insert_with(|| "value is null".to_string());
            }
            Ok(v) => match scalar_text(v) {
                Some(text) => {
                    let speaker = speaker_suffix
                        .and_then(|sp| speaker_of(el, sp, paths, Some(n), &mut errors));
                    lines.push(with_speaker(speaker, text));
                }
                None => errors.push(format!(
                    "{path}: element {n} is {}, expected a string",
                    type_name(v)
                )),
            },
            Err(e) => {
                missing += 1;
                first_missing.get_or_insert(e);
            }
        }
    }

    if lines.is_empty() {
        return Err(if !errors.is_empty() {
            format!(
                "text field {path:?} has no string values: {}",
                errors.join("; ")
            )
        } else if let Some(first) = first_missing {
            format!("text field {path:?} not found in any of {missing} elements (first: {first})")
        } else {
            format!("text field {path:?} found no elements: the array is empty")
        });
    }
    Ok((lines.join("\n"), errors))
}

/// Speaker next to a text value; absent/null/empty means "no speaker", other types are reported.
fn speaker_of(
    el: &Value,
    suffix: &[Step],
    paths: &MappingPaths,
    element: Option<usize>,
    errors: &mut Vec<String>,
) -> Option<String> {
    let v = navigate(el, suffix).ok()?;
    if v.is_null() {
        return None;
    }
    match scalar_text(v) {
        Some(s) => {
            let s = s.trim().to_string();
            (!s.is_empty()).then_some(s)
        }
        None => {
            let sp = paths.speaker_path.as_deref().unwrap_or("");
            let at = element
                .map(|n| format!(": element {n}"))
                .unwrap_or_default();
            errors.push(format!("{sp}{at} is {}, expected a string", type_name(v)));
            None
        }
    }
}

fn with_speaker(speaker: Option<String>, text: String) -> String {
    match speaker {
        Some(s) => format!("{s}: {text}"),
        None => text,
    }
}

/// serde_json's message without its trailing " at line L column C", which we report separately.
fn json_error_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

fn extract_json(text: &str, mapping: &FieldMapping) -> Result<Extracted, ExtractError> {
    let paths = MappingPaths::parse(mapping).map_err(ExtractError::new)?;
    let root: Value = serde_json::from_str(text).map_err(|e| {
        ExtractError::new(format!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            json_error_message(&e)
        ))
    })?;
    let (text, errors) = text_from_value(&root, &paths).map_err(ExtractError::new)?;
    Ok(Extracted {
        docs: vec![ExtractedDoc { text, line: None }],
        errors: errors.into_iter().map(ExtractError::new).collect(),
    })
}

fn extract_jsonl(text: &str, mapping: &FieldMapping) -> Result<Extracted, ExtractError> {
    // A bad mapping is a config error, not a per-line one.
    let paths = MappingPaths::parse(mapping).map_err(ExtractError::new)?;
    let mut out = Extracted::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(ExtractError::at_line(
                    format!(
                        "invalid JSON at column {}: {}",
                        e.column(),
                        json_error_message(&e)
                    ),
                    line_no,
                ));
                continue;
            }
        };
        match text_from_value(&value, &paths) {
            Ok((text, errs)) => {
                out.docs.push(ExtractedDoc {
                    text,
                    line: Some(line_no),
                });
                out.errors
                    .extend(errs.into_iter().map(|m| ExtractError::at_line(m, line_no)));
            }
            Err(m) => out.errors.push(ExtractError::at_line(m, line_no)),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// PDF

fn extract_pdf(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    // pdf-extract panics on some malformed inputs; one bad file must not take
    // down the pipeline. (The default panic hook still prints to stderr.)
    let result = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes));
    let text = match result {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return Err(ExtractError::new(format!("cannot read PDF: {e}"))),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            return Err(ExtractError::new(format!(
                "cannot read PDF: parser panicked: {detail}"
            )));
        }
    };
    let text = text.replace("\r\n", "\n");
    if text.trim().is_empty() {
        return Err(ExtractError::new(
            "PDF has no extractable text (scanned image?)",
        ));
    }
    Ok(Extracted::single(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(text: &str, speaker: Option<&str>) -> FieldMapping {
        FieldMapping {
            text_field: Some(text.to_string()),
            speaker_field: speaker.map(str::to_string),
        }
    }

    fn one_doc(format: Format, input: &str, m: &FieldMapping) -> String {
        let out = extract(format, input.as_bytes(), m).unwrap();
        assert_eq!(out.errors, vec![], "unexpected errors");
        assert_eq!(out.docs.len(), 1);
        out.docs[0].text.clone()
    }

    fn err(format: Format, input: &[u8], m: &FieldMapping) -> String {
        extract(format, input, m).unwrap_err().message
    }

    #[test]
    fn extensions_and_names() {
        assert_eq!(Format::from_extension("TXT"), Some(Format::Text));
        assert_eq!(Format::from_extension("log"), Some(Format::Text));
        assert_eq!(Format::from_extension("Markdown"), Some(Format::Markdown));
        assert_eq!(Format::from_extension(".ndjson"), Some(Format::Jsonl));
        assert_eq!(Format::from_extension("PDF"), Some(Format::Pdf));
        assert_eq!(Format::from_extension("docx"), None);
        assert_eq!(Format::Jsonl.name(), "jsonl");
        assert_eq!(Format::Markdown.name(), "markdown");
    }

    #[test]
    fn text_strips_bom_and_crlf() {
        let input = "\u{feff}# Title\r\nline two\r\n";
        let m = FieldMapping::default();
        assert_eq!(one_doc(Format::Markdown, input, &m), "# Title\nline two\n");
        assert_eq!(one_doc(Format::Text, "a\r\nb", &m), "a\nb");
    }

    #[test]
    fn binary_rejected() {
        let msg = err(Format::Text, b"abc\0def", &FieldMapping::default());
        assert!(msg.contains("binary") && msg.contains("offset 3"), "{msg}");
        // A NUL past the sniff window is not treated as binary.
        let mut late = vec![b'a'; BINARY_SNIFF_LEN + 10];
        late[BINARY_SNIFF_LEN + 5] = 0;
        assert!(extract(Format::Text, &late, &FieldMapping::default()).is_ok());
    }

    #[test]
    fn invalid_utf8_rejected_with_offset() {
        let e = extract(Format::Text, b"hello \xff world", &FieldMapping::default()).unwrap_err();
        assert_eq!(e.message, "invalid UTF-8 at byte offset 6");
        assert_eq!(e.to_string(), "invalid UTF-8 at byte offset 6");
    }

    #[test]
    fn srt_speakers_and_italics() {
        let srt = "1\r\n00:00:01,000 --> 00:00:04,000\r\n<i>JOHN: Hello there,</i>\r\nhow are you?\r\n\r\n\
                   2\r\n00:00:05,500 --> 00:00:07,000\r\n- MARY: Fine.\r\n\r\n\
                   3\r\n01:02:03,999 --> 01:02:05,000\r\n<font color=\"red\">{\\an8}Loud &amp; clear</font>\r\n";
        let out = one_doc(Format::Srt, srt, &FieldMapping::default());
        assert_eq!(
            out,
            "[00:00:01] JOHN: Hello there, how are you?\n[00:00:05] MARY: Fine.\n[01:02:03] Loud & clear"
        );
        assert!(!out.contains("-->"));
    }

    #[test]
    fn srt_without_blank_separators_drops_indexes() {
        let srt =
            "1\n00:00:01,000 --> 00:00:02,000\nfirst\n2\n00:00:03,000 --> 00:00:04,000\nsecond\n";
        let out = one_doc(Format::Srt, srt, &FieldMapping::default());
        assert_eq!(out, "[00:00:01] first\n[00:00:03] second");
    }

    #[test]
    fn srt_without_cues_is_error() {
        let msg = err(Format::Srt, b"just some text\n", &FieldMapping::default());
        assert!(msg.contains("no cues"), "{msg}");
    }

    #[test]
    fn vtt_header_note_voices_hourless() {
        let vtt = "WEBVTT - demo\nKind: captions\n\n\
                   NOTE this is a comment\nspanning two lines\n\n\
                   STYLE\n::cue { color: red }\n\n\
                   intro\n00:01.000 --> 00:04.000 align:start position:10%\n<v Roger Bingham>We are in New York City</v>\n\n\
                   00:00:05.000 --> 00:00:06.000\n<v.loud Neil>Hello <b>there</b></v>\n\n\
                   00:00:06.000 --> 00:00:07.000\n<c.yellow>no speaker</c> <00:00:06.500>here\n";
        let out = one_doc(Format::Vtt, vtt, &FieldMapping::default());
        assert_eq!(
            out,
            "[00:00:01] Roger Bingham: We are in New York City\n[00:00:05] Neil: Hello there\n[00:00:06] no speaker here"
        );
    }

    #[test]
    fn json_nested_path() {
        let m = mapping("body.content", None);
        let json = r#"{"body": {"content": "Hello world", "n": 1}}"#;
        assert_eq!(one_doc(Format::Json, json, &m), "Hello world");
        // Numbers are converted to strings.
        let m = mapping("body.n", None);
        assert_eq!(one_doc(Format::Json, json, &m), "1");
        // Default field is "text".
        assert_eq!(
            one_doc(Format::Json, r#"{"text":"x"}"#, &FieldMapping::default()),
            "x"
        );
    }

    #[test]
    fn json_array_with_speakers() {
        let m = mapping("transcript[].text", Some("transcript[].speaker"));
        let json = r#"{"transcript": [
            {"speaker": "CDR", "text": "The clock is running."},
            {"note": "no text here"},
            {"text": "No speaker."},
            {"speaker": "CC", "text": 42}
        ]}"#;
        assert_eq!(
            one_doc(Format::Json, json, &m),
            "CDR: The clock is running.\nNo speaker.\nCC: 42"
        );
    }

    #[test]
    fn json_array_all_missing_is_error() {
        let m = mapping("items[].text", None);
        let msg = err(Format::Json, br#"{"items": [{"a": 1}, {"b": 2}]}"#, &m);
        assert!(
            msg.contains("items[].text") && msg.contains("2 elements"),
            "{msg}"
        );
    }

    #[test]
    fn json_array_non_string_element_reported() {
        let m = mapping("items[].text", None);
        let out = extract(
            Format::Json,
            br#"{"items": [{"text": "ok"}, {"text": [1]}]}"#,
            &m,
        )
        .unwrap();
        assert_eq!(out.docs[0].text, "ok");
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].message.contains("element 1 is an array"),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn json_missing_field_message() {
        let m = mapping("body.content", None);
        let msg = err(
            Format::Json,
            br#"{"body": {"title": "t", "text": "x"}}"#,
            &m,
        );
        assert!(msg.contains("\"body.content\""), "{msg}");
        assert!(
            msg.contains("\"title\"") && msg.contains("\"text\""),
            "{msg}"
        );
        let msg = err(Format::Json, br#"{"body": [1, 2]}"#, &m);
        assert!(
            msg.contains("expected an object") && msg.contains("an array"),
            "{msg}"
        );
    }

    #[test]
    fn json_non_string_type_error() {
        let m = mapping("body", None);
        let msg = err(Format::Json, br#"{"body": {"x": 1}}"#, &m);
        assert_eq!(msg, "text field \"body\" is an object, expected a string");
        let msg = err(Format::Json, br#"{"body": true}"#, &m);
        assert!(msg.contains("a boolean"), "{msg}");
    }

    #[test]
    fn json_invalid_reports_line_and_column() {
        let msg = err(
            Format::Json,
            b"{\n  \"text\": \"a\",\n  oops\n}",
            &FieldMapping::default(),
        );
        assert!(msg.starts_with("invalid JSON at line 3, column 3"), "{msg}");
    }

    #[test]
    fn json_bad_speaker_prefix_rejected() {
        let m = mapping("a[].text", Some("b[].speaker"));
        let msg = err(Format::Json, br#"{"a": []}"#, &m);
        assert!(msg.contains("must share the array prefix"), "{msg}");
        assert!(m.validate().is_err());
        assert!(mapping("a[].text", Some("a[].who")).validate().is_ok());
    }

    #[test]
    fn json_top_level_array() {
        let m = mapping("[].text", None);
        let json = r#"[{"text": "a"}, {"text": "b"}]"#;
        assert_eq!(one_doc(Format::Json, json, &m), "a\nb");
    }

    #[test]
    fn jsonl_bad_line_reported_others_kept() {
        let input =
            "{\"text\": \"first\"}\n{not json}\n\n{\"other\": 1}\r\n{\"text\": \"fifth\"}\n";
        let out = extract(Format::Jsonl, input.as_bytes(), &FieldMapping::default()).unwrap();
        assert_eq!(
            out.docs,
            vec![
                ExtractedDoc {
                    text: "first".into(),
                    line: Some(1)
                },
                ExtractedDoc {
                    text: "fifth".into(),
                    line: Some(5)
                },
            ]
        );
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.errors[0].line, Some(2));
        assert!(
            out.errors[0]
                .to_string()
                .starts_with("line 2: invalid JSON"),
            "{}",
            out.errors[0]
        );
        assert_eq!(out.errors[1].line, Some(4));
        assert!(
            out.errors[1].message.contains("\"text\""),
            "{}",
            out.errors[1]
        );
    }

    #[test]
    fn field_path_validation() {
        assert_eq!(validate_field_path("a.b[].c"), Ok(()));
        assert_eq!(validate_field_path("text"), Ok(()));
        assert_eq!(validate_field_path("transcript[].text"), Ok(()));
        assert_eq!(validate_field_path("[].text"), Ok(()));
        for bad in ["", "  ", "a..b", "[]x", "a[]b", "a.", ".a", "a[", "a.[]"] {
            assert!(
                validate_field_path(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn odd_inputs_never_panic() {
        let inputs = [
            "",
            "<",
            "<v",
            "<v.",
            "<v.x>",
            "{\\",
            "-->",
            "1\n-->\n",
            "99:99 --> x\n<é>ü",
            "00:00:01,000 --> \n- : x\n",
            "WEBVTT\n\n00:01.000 --> 00:02.000\n<v >\n",
            "\u{feff}",
            "é<",
            "[]",
            "{\"text\": null}",
            "[1, 2]",
            "99999999999999999999:00 --> 0\nx",
        ];
        let maps = [
            FieldMapping::default(),
            mapping("a[].b", Some("a[].c")),
            mapping("[]", None),
            mapping("[][]", None),
        ];
        for input in inputs {
            for format in [
                Format::Text,
                Format::Srt,
                Format::Vtt,
                Format::Json,
                Format::Jsonl,
            ] {
                for m in &maps {
                    let _ = extract(format, input.as_bytes(), m);
                }
            }
        }
        assert_eq!(
            one_doc(
                Format::Json,
                "[[\"a\", 1], [\"b\"]]",
                &mapping("[][]", None)
            ),
            "a\n1\nb"
        );
    }

    fn one_page_pdf(text: &str) -> Vec<u8> {
        use lopdf::content::{Content, Operation};
        use lopdf::{Document, Object, Stream, dictionary};

        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => "Helvetica",
        });
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
        });
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 24.into()]),
                Operation::new("Td", vec![72.into(), 700.into()]),
                Operation::new("Tj", vec![Object::string_literal(text)]),
                Operation::new("ET", vec![]),
            ],
        };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages",
                "Kids" => vec![page_id.into()],
                "Count" => 1,
                "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! {
            "Type" => "Catalog",
            "Pages" => pages_id,
        });
        doc.trailer.set("Root", catalog_id);
        let mut buf = Vec::new();
        doc.save_to(&mut buf).unwrap();
        buf
    }

    #[test]
    fn pdf_text_extracted() {
        let pdf = one_page_pdf("Houston, we have had a problem");
        let out = extract(Format::Pdf, &pdf, &FieldMapping::default()).unwrap();
        assert_eq!(out.docs.len(), 1);
        assert!(
            out.docs[0].text.contains("Houston, we have had a problem"),
            "{:?}",
            out.docs[0].text
        );
    }

    #[test]
    fn pdf_without_text_is_error() {
        let pdf = one_page_pdf("");
        let msg = err(Format::Pdf, &pdf, &FieldMapping::default());
        assert_eq!(msg, "PDF has no extractable text (scanned image?)");
    }

    #[test]
    fn corrupt_pdf_is_error_not_panic() {
        // Deterministic pseudo-random garbage behind a valid-looking header.
        let mut bytes = b"%PDF-1.4\n".to_vec();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.push((x >> 24) as u8);
        }
        let msg = err(Format::Pdf, &bytes, &FieldMapping::default());
        assert!(msg.starts_with("cannot read PDF"), "{msg}");
    }

    #[test]
    fn damaged_pdfs_never_panic() {
        let pdf = one_page_pdf("Houston, we have had a problem");
        for cut in (0..pdf.len()).step_by(37) {
            // Any outcome is fine as long as the call returns.
            let _ = extract(Format::Pdf, &pdf[..cut], &FieldMapping::default());
        }
        for i in (0..pdf.len()).step_by(29) {
            let mut bad = pdf.clone();
            bad[i] = bad[i].wrapping_add(0x41);
            let _ = extract(Format::Pdf, &bad, &FieldMapping::default());
        }
    }

    #[test]
    fn apollo13_transcript() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/corpus/apollo13/apollo-13-tecatg.json"
        );
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let m = mapping("transcript[].text", Some("transcript[].speaker"));
        let out = extract(Format::Json, &bytes, &m).unwrap();
        assert_eq!(out.errors, vec![]);
        assert_eq!(out.docs.len(), 1);
        let lines: Vec<&str> = out.docs[0].text.lines().collect();
        assert_eq!(lines.len(), 10_876);
        assert_eq!(lines[0], "CDR: The clock is running.");
        assert_eq!(lines[10_875], "R-l: Recovery, I have a clock - -");
    }
}
