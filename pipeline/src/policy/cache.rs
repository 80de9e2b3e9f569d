//! The response cache: content-addressed answers, so a re-run (or a crashed run's resume)
//! does not pay twice. Keyed by a hash of (provider kind, endpoint, model, parameters, prompt
//! template version, input) that the stage assembles; only answers the stage accepted are
//! stored, never errors. Embedded SQLite under `.pipe/` (WAL mode: several processes may
//! share it).

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
        let fail = |e: rusqlite::Error| format!("response cache {}: {e}", path.display());
        let connection = Connection::open(path).map_err(fail)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(fail)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS responses (
                     key TEXT PRIMARY KEY,
                     answer TEXT NOT NULL,
                     created_at INTEGER NOT NULL
                 );",
            )
            .map_err(fail)?;
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
}
