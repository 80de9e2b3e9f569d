//! The dead-letter file: every record (or source item) that could not be processed, with the
//! stage and the reason. Opened on first use, so a clean run leaves no empty file behind.

use crate::error::StageError;
use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct DeadLetters {
    path: PathBuf,
    writer: Mutex<Option<BufWriter<File>>>,
    count: AtomicU64,
}

impl DeadLetters {
    pub fn new(path: &Path) -> Self {
        DeadLetters {
            path: path.to_path_buf(),
            writer: Mutex::new(None),
            count: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends one entry. An I/O error here is returned: losing a dead letter would be a silent
    /// drop, so the caller fails the run instead.
    pub fn write(
        &self,
        stage: &str,
        kind: &str,
        error: &StageError,
        subject: Value,
    ) -> std::io::Result<()> {
        let entry = json!({
            "stage": stage,
            "kind": kind,
            "class": error.class,
            "error": error.message,
            "at": chrono::Utc::now().to_rfc3339(),
            "record": subject,
        });
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("dead-letter writer poisoned"))?;
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *guard = Some(BufWriter::new(File::create(&self.path)?));
        }
        if let Some(w) = guard.as_mut() {
            w.write_all(&line)?;
        }
        self.count.fetch_add(1, Relaxed);
        Ok(())
    }

    pub fn flush(&self) -> std::io::Result<()> {
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("dead-letter writer poisoned"))?;
        if let Some(w) = guard.as_mut() {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        Ok(())
    }
}
