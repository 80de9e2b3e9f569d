//! The response cache: content-addressed answers, so a re-run (or a crashed run's resume)
//! does not pay twice. Keyed by a hash of (provider kind, endpoint, model, parameters, prompt
//! template version, input) that the stage assembles; only answers the stage accepted are
//! stored, never errors. Embedded SQLite under `.pipe/` (WAL mode: several processes may
//! share it). A cache file that is not a database (or a damaged one) is set aside under a new
//! name with a warning, and the run goes on with a fresh cache: losing cached answers costs
//! money, never the run.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct ResponseCache {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// A cached answer: the stage's value and the usage it was billed when first made.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CachedAnswer {
    pub value: serde_json::Value,
    pub usage: super::TokenUsage,
}

/// The hex key of the material a stage says identifies a call.
pub fn cache_key(material: &serde_json::Value) -> String {
    // serde_json maps are ordered (BTreeMap), so equal material serialises identically.
    blake3::hash(material.to_string().as_bytes())
        .to_hex()
        .to_string()
}

impl ResponseCache {
    pub fn open(path: &Path) -> Result<ResponseCache, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match Self::open_db(path) {
            Err(e) if is_corrupt(&e) => {
                let aside = set_aside(path)?;
                tracing::warn!(
                    "response cache {} is damaged ({e}): moved to {} and starting a fresh one",
                    path.display(),
                    aside.display()
                );
                Self::open_db(path).map_err(|e| format!("response cache {}: {e}", path.display()))
            }
            other => other.map_err(|e| format!("response cache {}: {e}", path.display())),
        }
    }

    fn open_db(path: &Path) -> Result<ResponseCache, rusqlite::Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS responses (
                 key TEXT PRIMARY KEY,
                 answer TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             );",
        )?;
        // Reads the table once: a damaged page here fails now, not in the middle of the run.
        connection.query_row("SELECT COUNT(*) FROM responses", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(ResponseCache {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Result<Option<CachedAnswer>, String> {
        let text: Option<String> = self
            .lock()
            .query_row(
                "SELECT answer FROM responses WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| format!("response cache read: {e}"))?;
        // An entry that no longer parses (older format) is a miss, not an error.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub fn put(&self, key: &str, answer: &CachedAnswer) -> Result<(), String> {
        let text = serde_json::to_string(answer).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO responses (key, answer, created_at) VALUES (?1, ?2, ?3)",
                params![key, text, now],
            )
            .map_err(|e| format!("response cache write: {e}"))?;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.lock()
            .query_row("SELECT COUNT(*) FROM responses", [], |row| row.get(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, NotADatabase | DatabaseCorrupt))
}

/// Renames the damaged file (and its WAL side files) to `<name>.corrupt-<unix seconds>`.
fn set_aside(path: &Path) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let renamed = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let aside = renamed(&format!(".corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|e| {
        format!(
            "response cache {} is damaged and cannot be moved aside: {e}",
            path.display()
        )
    })?;
    for side in ["-wal", "-shm"] {
        let file = renamed(side);
        if file.exists() {
            let _ = std::fs::rename(&file, renamed(&format!(".corrupt-{stamp}{side}")));
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stores_and_finds_answers_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let key = cache_key(&json!({"model": "m", "input": "hello"}));
        assert_ne!(key, cache_key(&json!({"model": "m", "input": "hello!"})));
        {
            let cache = ResponseCache::open(&path).unwrap();
            assert!(cache.get(&key).unwrap().is_none());
            cache
                .put(
                    &key,
                    &CachedAnswer {
                        value: json!({"text": "hi"}),
                        usage: Default::default(),
                    },
                )
                .unwrap();
        }
        let cache = ResponseCache::open(&path).unwrap();
        assert_eq!(
            cache.get(&key).unwrap().unwrap().value,
            json!({"text": "hi"})
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_damaged_cache_file_is_set_aside_and_a_fresh_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        std::fs::write(
            &path,
            b"this is not a database, just some bytes".repeat(200),
        )
        .unwrap();
        let cache = ResponseCache::open(&path).expect("opens a fresh cache");
        assert!(cache.is_empty());
        cache
            .put(
                "k",
                &CachedAnswer {
                    value: json!(1),
                    usage: Default::default(),
                },
            )
            .unwrap();
        assert_eq!(cache.get("k").unwrap().unwrap().value, json!(1));
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("cache.sqlite.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept = std::fs::read(dir.path().join(&aside[0])).unwrap();
        assert!(
            kept.starts_with(b"this is not a database"),
            "kept as it was"
        );
    }
}
