//! `jsonl` sink: one JSON record per line. Written to `<path>.partial` and renamed when the run
//! finishes (or drains after Ctrl-C), so the final file is never half-written.

use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, InputEnd, KindSet, Produces, Record, Role, Sink,
    StageConfig, StageError, Written, async_trait,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Output file; a relative path is relative to the pipeline file. Parent directories are
    /// created.
    pub path: String,
    /// Records per write.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_batch() -> usize {
    256
}

#[async_trait]
impl StageConfig for JsonlConfig {
    const KIND: &'static str = "jsonl";
    const DESCRIPTION: &'static str =
        "Writes records to a JSON Lines file (atomically renamed when complete)";
    const ROLE: Role = Role::Sink;

    fn accepts() -> KindSet {
        KindSet::ANY
    }

    fn produces() -> Produces {
        Produces::Nothing
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.path.trim().is_empty() {
            issues.push(ConfigIssue::new("path", "must name a file"));
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let path = ctx.resolve(&self.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::run(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial)
            .map_err(|e| StageError::run(format!("cannot create {}: {e}", partial.display())))?;
        Ok(BuiltStage::Sink(Arc::new(JsonlSink {
            path,
            partial,
            batch: self.batch,
            writer: Mutex::new(Some(BufWriter::new(file))),
            notes: ctx.notes.clone(),
        })))
    }
}

struct JsonlSink {
    path: PathBuf,
    partial: PathBuf,
    batch: usize,
    writer: Mutex<Option<BufWriter<File>>>,
    notes: pipeline::runtime::StageNotes,
}

#[async_trait]
impl Sink for JsonlSink {
    fn batch_size(&self) -> usize {
        self.batch
    }

    async fn write(&self, batch: &[Record]) -> Result<Written, StageError> {
        // Serialise outside the lock; one write per batch keeps each batch's lines together.
        // A record that cannot be serialised fails alone.
        let mut buf = Vec::with_capacity(batch.len() * 256);
        let mut failed = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let start = buf.len();
            match serde_json::to_writer(&mut buf, record) {
                Ok(()) => buf.push(b'\n'),
                Err(e) => {
                    buf.truncate(start);
                    failed.push((
                        index,
                        StageError::record(format!("cannot serialise record {}: {e}", record.id)),
                    ));
                }
            }
        }
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| StageError::run("jsonl writer poisoned"))?;
        let writer = guard
            .as_mut()
            .ok_or_else(|| StageError::run("jsonl sink already finished"))?;
        writer.write_all(&buf).map_err(|e| {
            StageError::run(format!("cannot write {}: {e}", self.partial.display()))
        })?;
        // Durable (and visible under its real name) only once `finish` renames the file.
        Ok(Written::pending().with_failures(failed))
    }

    async fn finish(&self, end: &InputEnd) -> Result<(), StageError> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| StageError::run("jsonl writer poisoned"))?
            .take();
        if let Some(writer) = writer {
            let file = writer.into_inner().map_err(|e| {
                StageError::run(format!(
                    "cannot flush {}: {}",
                    self.partial.display(),
                    e.error()
                ))
            })?;
            file.sync_all().map_err(|e| {
                StageError::run(format!("cannot sync {}: {e}", self.partial.display()))
            })?;
            if !end.is_complete() {
                // A partial output must not pass for the whole: it stays under `.partial`.
                let note = format!(
                    "input {}: the records written so far stay in {} (not renamed to {})",
                    end.describe(),
                    self.partial.display(),
                    self.path.display()
                );
                tracing::warn!("{note}");
                self.notes.note(note);
                return Ok(());
            }
            std::fs::rename(&self.partial, &self.path).map_err(|e| {
                StageError::run(format!("cannot rename to {}: {e}", self.path.display()))
            })?;
        }
        Ok(())
    }
}
