//! tracing setup: human or JSON lines, to stderr (kept out of the way of progress bars) and
//! optionally to a file.

use indicatif::MultiProgress;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Writes log lines above the progress bars instead of through them.
#[derive(Clone)]
pub struct BarsAwareStderr(pub Option<MultiProgress>);

pub struct BarsAwareGuard(Option<MultiProgress>, Vec<u8>);

impl Write for BarsAwareGuard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarsAwareGuard {
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.1);
        match &self.0 {
            Some(bars) => bars.suspend(|| {
                let _ = std::io::stderr().write_all(&text);
            }),
            None => {
                let _ = std::io::stderr().write_all(&text);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for BarsAwareStderr {
    type Writer = BarsAwareGuard;
    fn make_writer(&'a self) -> Self::Writer {
        BarsAwareGuard(self.0.clone(), Vec::new())
    }
}

/// stderr gets warnings and errors (or `RUST_LOG`); the log file, when given, gets `info` and
/// up (or `RUST_LOG`).
pub fn init(
    format: LogFormat,
    log_file: Option<&Path>,
    bars: Option<MultiProgress>,
    quiet: bool,
) -> Result<(), String> {
    let stderr_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if quiet { "error" } else { "warn" }));
    let writer = BarsAwareStderr(bars);
    let stderr_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    }
    .with_filter(stderr_filter);
    let file_layer = match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            let file = Arc::new(Mutex::new(file));
            let make = move || FileWriter(file.clone());
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            Some(
                match format {
                    LogFormat::Text => tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(make)
                        .boxed(),
                    LogFormat::Json => tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(make)
                        .boxed(),
                }
                .with_filter(filter),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

struct FileWriter(Arc<Mutex<std::fs::File>>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("log file lock poisoned"))?;
        file.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
