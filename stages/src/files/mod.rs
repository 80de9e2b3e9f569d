//! `files` source: a directory + glob; text, markdown, subtitles (SRT/VTT), JSON/JSONL with a
//! field mapping, and PDF. A file that cannot be read (binary, not UTF-8, malformed) is
//! dead-lettered with the reason and the run goes on.

pub mod formats;

use formats::{FieldMapping, Format, extract};
use pipeline::futures::stream::BoxStream;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, Document, KindSet, Payload, PayloadKind, Produces,
    Provenance, Record, Rejected, Role, Source, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory to read; a relative path is relative to the pipeline file.
    pub path: String,
    /// Which files, as a glob over paths relative to `path`.
    #[serde(default = "default_glob")]
    pub glob: String,
    /// For .json/.jsonl: where the text is, e.g. `text`, `body.content`, `transcript[].text`
    /// (`[]` = each array element becomes one line). Default `text`.
    #[serde(default)]
    pub text_field: Option<String>,
    /// For .json/.jsonl with an array `text_field`: the speaker beside each text, e.g.
    /// `transcript[].speaker`; lines become `SPEAKER: text`.
    #[serde(default)]
    pub speaker_field: Option<String>,
    /// Files larger than this are reported (dead letter), not read.
    #[serde(default = "default_max_file_mb")]
    pub max_file_mb: u64,
}

fn default_glob() -> String {
    "**/*".into()
}

fn default_max_file_mb() -> u64 {
    256
}

impl FilesConfig {
    fn mapping(&self) -> FieldMapping {
        FieldMapping {
            text_field: self.text_field.clone(),
            speaker_field: self.speaker_field.clone(),
        }
    }
}

#[async_trait]
impl StageConfig for FilesConfig {
    const KIND: &'static str = "files";
    const DESCRIPTION: &'static str =
        "Reads files from a directory (txt, md, srt, vtt, json, jsonl, pdf) as documents";
    const ROLE: Role = Role::Source;

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Document]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.path.trim().is_empty() {
            issues.push(ConfigIssue::new("path", "must name a directory"));
        }
        if let Err(e) = globset::Glob::new(&self.glob) {
            issues.push(ConfigIssue::new(
                "glob",
                format!("is not a valid glob: {}", e.kind()),
            ));
        }
        if let Err(e) = self.mapping().validate() {
            let field = if self.speaker_field.is_some() && e.contains("speaker") {
                "speaker_field"
            } else {
                "text_field"
            };
            issues.push(ConfigIssue::new(field, e));
        }
        if self.max_file_mb == 0 {
            issues.push(ConfigIssue::new("max_file_mb", "must be at least 1"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let root = ctx.resolve(&self.path);
        if !root.is_dir() {
            return Err(StageError::run(format!(
                "`{}` is not a directory",
                root.display()
            )));
        }
        let matcher = globset::Glob::new(&self.glob)
            .map_err(|e| StageError::run(format!("invalid glob: {e}")))?
            .compile_matcher();
        // Sorted walk: the same directory always yields the same order (and record ids).
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry
                .map_err(|e| StageError::run(format!("cannot list {}: {e}", root.display())))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let relative = entry
                .path()
                .strip_prefix(&root)
                .unwrap_or(entry.path())
                .to_path_buf();
            if matcher.is_match(&relative) {
                files.push(relative);
            }
        }
        if files.is_empty() {
            tracing::warn!(stage = %ctx.stage_id, "no file under {} matches `{}`", root.display(), self.glob);
        }
        Ok(BuiltStage::Source(Arc::new(FilesSource {
            root,
            files,
            mapping: self.mapping(),
            max_bytes: self.max_file_mb.saturating_mul(1024 * 1024),
        })))
    }
}

struct FilesSource {
    root: PathBuf,
    files: Vec<PathBuf>,
    mapping: FieldMapping,
    max_bytes: u64,
}

impl Source for FilesSource {
    fn size_hint(&self) -> Option<u64> {
        // One item per file, except JSONL (one per line), where the count is unknown up front.
        let has_jsonl = self.files.iter().any(|f| {
            f.extension()
                .and_then(|e| e.to_str())
                .and_then(Format::from_extension)
                == Some(Format::Jsonl)
        });
        (!has_jsonl).then_some(self.files.len() as u64)
    }

    fn records(self: Arc<Self>) -> BoxStream<'static, Result<Record, Rejected>> {
        Box::pin(async_stream::stream! {
            for relative in &self.files {
                for item in self.read_one(relative).await {
                    yield item;
                }
            }
        })
    }
}

impl FilesSource {
    async fn read_one(&self, relative: &std::path::Path) -> Vec<Result<Record, Rejected>> {
        let rel = relative.to_string_lossy().to_string();
        let subject = |line: Option<usize>| json!({ "path": rel, "line": line });
        let reject = |line: Option<usize>, message: String| {
            Err(Rejected::new(subject(line), StageError::record(message)))
        };
        let full = self.root.join(relative);
        match tokio::fs::metadata(&full).await {
            Ok(meta) if meta.len() > self.max_bytes => {
                return vec![reject(
                    None,
                    format!("{rel}: {} bytes is over max_file_mb", meta.len()),
                )];
            }
            Ok(_) => {}
            Err(e) => return vec![reject(None, format!("{rel}: cannot read: {e}"))],
        }
        let bytes = match tokio::fs::read(&full).await {
            Ok(b) => b,
            Err(e) => return vec![reject(None, format!("{rel}: cannot read: {e}"))],
        };
        // Unknown extensions are tried as text; binary content is then rejected with a reason.
        let format = relative
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
            .unwrap_or(Format::Text);
        let content_hash = record::content_hash(&bytes);
        let mapping = self.mapping.clone();
        // PDF parsing is CPU work; keep it off the async workers.
        let extracted =
            tokio::task::spawn_blocking(move || extract(format, &bytes, &mapping)).await;
        let extracted = match extracted {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return vec![reject(e.line, format!("{rel}: {e}"))],
            Err(e) => return vec![reject(None, format!("{rel}: reader crashed: {e}"))],
        };
        let mut items = Vec::with_capacity(extracted.docs.len() + extracted.errors.len());
        for doc in extracted.docs {
            let line = doc.line.map(|l| l as u64);
            let line_bytes = line.unwrap_or(0).to_le_bytes();
            let id = record::stable_id(&[rel.as_bytes(), content_hash.as_bytes(), &line_bytes]);
            let provenance = Provenance {
                document_id: id.clone(),
                source_path: Some(rel.clone()),
                content_hash: Some(content_hash.clone()),
                line,
                ..Provenance::default()
            };
            items.push(Ok(Record::new(
                id,
                provenance,
                Payload::Document(Document {
                    text: doc.text,
                    format: format.name().to_string(),
                }),
            )));
        }
        for error in extracted.errors {
            items.push(reject(error.line, format!("{rel}: {error}")));
        }
        items
    }
}
