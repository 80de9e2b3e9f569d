//! Config errors that name the file, line and column, with a did-you-mean where one fits.

use marked_yaml::{Marker, Span};
use std::fmt;
use std::sync::Arc;

/// Where a config value came from: the YAML file (source 0) or one of the `--set` overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File {
        file: Arc<str>,
        line: usize,
        column: usize,
    },
    /// The n-th `--set KEY=VALUE` argument (its text).
    CommandLine(String),
    /// The file as a whole (e.g. it could not be read).
    WholeFile(Arc<str>),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Location::CommandLine(arg) => write!(f, "--set {arg}"),
            Location::WholeFile(file) => write!(f, "{file}"),
        }
    }
}

/// Turns marked-yaml markers into locations. Source 0 is the YAML file; source n > 0 is the
/// n-th `--set` argument.
#[derive(Clone, Debug)]
pub struct Locator {
    pub file: Arc<str>,
    pub overrides: Vec<String>,
}

impl Locator {
    pub fn marker(&self, marker: Option<&Marker>) -> Location {
        match marker {
            Some(m) if m.source() == 0 => Location::File {
                file: self.file.clone(),
                line: m.line(),
                column: m.column(),
            },
            Some(m) => match self.overrides.get(m.source() - 1) {
                Some(arg) => Location::CommandLine(arg.clone()),
                None => Location::WholeFile(self.file.clone()),
            },
            None => Location::WholeFile(self.file.clone()),
        }
    }

    pub fn span(&self, span: &Span) -> Location {
        self.marker(span.start())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Diagnostic {
            location,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location, self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// All the problems found in one pipeline file, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn into_result<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.sort();
            Err(self)
        }
    }
    /// File order (line, column), command-line overrides last; stable for equal positions.
    pub fn sort(&mut self) {
        self.0.sort_by_key(|d| match &d.location {
            Location::WholeFile(_) => (0, 0, 0),
            Location::File { line, column, .. } => (1, *line, *column),
            Location::CommandLine(_) => (2, 0, 0),
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} error{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" when some candidate is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let wrong_lower = wrong.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&wrong_lower, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Turns a marked-yaml deserialisation error into a diagnostic, adding a did-you-mean for unknown
/// fields and unknown enum variants.
pub fn from_node_error(locator: &Locator, err: marked_yaml::FromNodeError) -> Diagnostic {
    use marked_yaml::Error;
    // The field path ("config.tokenizer"), so messages about a value name the field.
    let path = err.path().map(str::to_string);
    let err = err.into_inner();
    let location = locator.marker(err.start_mark().as_ref());
    let field = |message: String| match &path {
        Some(p) if !p.is_empty() && p != "." => format!("`{p}`: {message}"),
        _ => message,
    };
    match err {
        Error::UnknownFieldError(name, expected, _) => {
            let help = did_you_mean(&name, expected.iter().copied()).or_else(|| {
                Some(format!(
                    "expected one of {}",
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            });
            Diagnostic::new(location, format!("unknown field `{name}`")).with_help(help)
        }
        Error::NotBoolean(_) => {
            Diagnostic::new(location, field("expected `true` or `false`".into()))
        }
        Error::IntegerParseFailure(_, _) => Diagnostic::new(
            location,
            field("expected a whole number (0 or more)".into()),
        ),
        Error::FloatParseFailure(_, _) => {
            Diagnostic::new(location, field("expected a number".into()))
        }
        Error::Other(message, _) => {
            let help = unknown_variant_help(&message);
            Diagnostic::new(location, field(message)).with_help(help)
        }
    }
}

/// serde says "unknown variant `x`, expected one of `a`, `b`": suggest the closest.
fn unknown_variant_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown variant `")?;
    let (wrong, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(wrong, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("chunker", ["chunk", "files", "jsonl"]),
            Some("did you mean `chunk`?".into())
        );
        assert_eq!(did_you_mean("zzz", ["chunk", "files"]), None);
    }

    #[test]
    fn unknown_variant_gets_suggestion() {
        let help = unknown_variant_help(
            "unknown variant `cl100k`, expected one of `cl100k_base`, `o200k_base`",
        );
        assert_eq!(help, Some("did you mean `cl100k_base`?".into()));
    }
}
