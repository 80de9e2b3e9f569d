//! The SQLite file behind `local_store`: the knowledge graph (entities, relations, their
//! mentions) and the chunk vectors, with the graph stores' semantics (see the graph contract):
//! upserts on deterministic ids, list properties as set-unions, a relation's weight = the number
//! of distinct chunks supporting it — so writing the same records twice changes nothing.
//!
//! Synchronous (rusqlite): the sink calls it from blocking threads.

use pipeline::index::{ChunkHit, Fact};
use pipeline::{Embedded, Entity, Graph, Mention, Provenance, Relation, StageError};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Bumped when the tables change shape; an older file is refused with a clear message.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    aliases TEXT NOT NULL,        -- JSON array, set-union in first-seen order
    descriptions TEXT NOT NULL,   -- JSON array, set-union in first-seen order
    properties TEXT NOT NULL,     -- JSON object, later keys win
    confidence REAL               -- the highest seen
);
CREATE TABLE IF NOT EXISTS entity_mentions (
    entity_id TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    source_path TEXT,
    span_start INTEGER NOT NULL,  -- -1 when the mention was not found verbatim
    span_end INTEGER NOT NULL,
    PRIMARY KEY (entity_id, chunk_id, span_start, span_end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_mentions_chunk ON entity_mentions (chunk_id);
CREATE TABLE IF NOT EXISTS relations (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    type TEXT NOT NULL,
    descriptions TEXT NOT NULL,
    properties TEXT NOT NULL,
    confidence REAL,
    weight_hint REAL NOT NULL,    -- the largest weight a record gave (used without mentions)
    weight REAL NOT NULL          -- distinct supporting chunks, else weight_hint
);
CREATE INDEX IF NOT EXISTS relations_source ON relations (source, weight);
CREATE INDEX IF NOT EXISTS relations_target ON relations (target, weight);
CREATE TABLE IF NOT EXISTS relation_mentions (
    relation_id TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    source_path TEXT,
    span_start INTEGER NOT NULL,
    span_end INTEGER NOT NULL,
    PRIMARY KEY (relation_id, chunk_id, span_start, span_end)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT PRIMARY KEY,          -- the chunk record's id (what mentions point at)
    text TEXT NOT NULL,
    context TEXT,
    document_id TEXT NOT NULL,
    source_path TEXT,
    content_hash TEXT,
    chunk_index INTEGER,
    span_start INTEGER,
    span_end INTEGER,
    model TEXT NOT NULL,
    dims INTEGER NOT NULL,
    vector BLOB NOT NULL          -- little-endian f32, L2-normalised (cosine = dot product)
);
";

/// What the store holds (for notes, tests and `pipe search`'s empty-store message).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub entities: u64,
    pub relations: u64,
    pub entity_mentions: u64,
    pub relation_mentions: u64,
    pub chunks: u64,
}

/// The vectors of one model in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorModel {
    pub model: String,
    pub dims: usize,
    pub count: u64,
}

pub struct StoreDb {
    conn: Connection,
    path: PathBuf,
}

/// A database-level failure: busy (another writer holds the lock) is worth another try;
/// anything else about the file (read-only, corrupt, disk full) stops the run.
fn db_error(path: &Path, what: &str, error: rusqlite::Error) -> StageError {
    let message = format!("local store {}: {what}: {error}", path.display());
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StageError::retryable(message, None)
        }
        _ => StageError::run(message),
    }
}

fn span_of(span: Option<[u64; 2]>) -> (i64, i64) {
    match span {
        Some([start, end]) => (
            i64::try_from(start).unwrap_or(i64::MAX),
            i64::try_from(end).unwrap_or(i64::MAX),
        ),
        None => (-1, -1),
    }
}

fn span_from(start: Option<i64>, end: Option<i64>) -> Option<[u64; 2]> {
    match (start, end) {
        (Some(s), Some(e)) if s >= 0 && e >= 0 => Some([s as u64, e as u64]),
        _ => None,
    }
}

/// `existing` then every new item not already in it, in first-seen order.
fn union(existing: &mut Vec<String>, new: &[String]) -> bool {
    let mut changed = false;
    for item in new {
        if !item.is_empty() && !existing.contains(item) {
            existing.push(item.clone());
            changed = true;
        }
    }
    changed
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_map(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn max_confidence(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// L2-normalised copy, or `None` for a vector that cannot be (zero, NaN, infinite).
pub fn normalised(vector: &[f32]) -> Option<Vec<f32>> {
    if vector.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let norm = vector
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    Some(
        vector
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect(),
    )
}

fn vector_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_vector(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn dot(a: &[f32], b: &[u8]) -> f32 {
    a.iter()
        .zip(b.chunks_exact(4))
        .map(|(x, y)| x * f32::from_le_bytes([y[0], y[1], y[2], y[3]]))
        .sum()
}

/// Checks a graph record before anything of it is written: the store takes normalised
/// graphs (entity and relation ids set by `normalize`).
pub fn check_graph(graph: &Graph) -> Result<(), String> {
    for entity in &graph.entities {
        if entity.id.trim().is_empty() {
            return Err(format!(
                "entity `{}` has no id: the local store takes normalised graphs (put \
                 `normalize` between the extractor and the store)",
                entity.name
            ));
        }
    }
    for relation in &graph.relations {
        if relation.id.trim().is_empty()
            || relation.source.trim().is_empty()
            || relation.target.trim().is_empty()
        {
            return Err(format!(
                "relation `{}` ({} -> {}) has no id or an empty end: the local store takes \
                 normalised graphs",
                relation.relation_type, relation.source, relation.target
            ));
        }
        if !relation.weight.is_finite() {
            return Err(format!(
                "relation `{}` has a weight that is not a number",
                relation.id
            ));
        }
    }
    Ok(())
}

impl StoreDb {
    /// Opens (creating if `create`) the store at `path`.
    pub fn open(path: &Path, create: bool) -> Result<StoreDb, StageError> {
        if !create && !path.exists() {
            return Err(StageError::run(format!(
                "no local store at {}",
                path.display()
            )));
        }
        if create && let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::run(format!("cannot create {}: {e}", dir.display())))?;
        }
        let flags = if create {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| db_error(path, "cannot open", e))?;
        // WAL: readers (`pipe search`) never block the writer; FULL: a committed batch
        // survives a crash, which is what `Written::durable` promises.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
        )
        .map_err(|e| db_error(path, "cannot configure", e))?;
        // A lock held by another process is waited for briefly, then reported as busy
        // (retryable): the runtime's write policy decides about trying again.
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|e| db_error(path, "cannot configure", e))?;
        let db = StoreDb {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate(create)?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err<'a>(&'a self, what: &'a str) -> impl Fn(rusqlite::Error) -> StageError + 'a {
        move |e| db_error(&self.path, what, e)
    }

    fn migrate(&self, create: bool) -> Result<(), StageError> {
        let version: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get(0),
            )
            .optional()
            .or_else(|e| match e {
                // A new file: no meta table yet.
                rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                    Ok(None)
                }
                other => Err(other),
            })
            .map_err(self.err("cannot read the schema version"))?;
        match version {
            Some(v) if v != SCHEMA_VERSION.to_string() => Err(StageError::run(format!(
                "local store {} has schema version {v}; this pipe writes version \
                 {SCHEMA_VERSION}: use another path",
                self.path.display()
            ))),
            Some(_) => Ok(()),
            None if !create => Err(StageError::run(format!(
                "{} is not a pipe local store (no schema version)",
                self.path.display()
            ))),
            None => {
                self.conn
                    .execute_batch(SCHEMA)
                    .map_err(self.err("cannot create the tables"))?;
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                        params![SCHEMA_VERSION.to_string()],
                    )
                    .map_err(self.err("cannot write the schema version"))?;
                Ok(())
            }
        }
    }

    pub fn counts(&self) -> Result<Counts, StageError> {
        let count = |table: &str| -> Result<u64, StageError> {
            self.conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(self.err("cannot count"))
        };
        Ok(Counts {
            entities: count("entities")?,
            relations: count("relations")?,
            entity_mentions: count("entity_mentions")?,
            relation_mentions: count("relation_mentions")?,
            chunks: count("chunks")?,
        })
    }

    /// Models (with dimensions and counts) of the stored vectors.
    pub fn vector_models(&self) -> Result<Vec<VectorModel>, StageError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT model, dims, COUNT(*) FROM chunks GROUP BY model, dims ORDER BY COUNT(*) DESC",
            )
            .map_err(self.err("cannot read vector models"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(VectorModel {
                    model: row.get(0)?,
                    dims: row.get::<_, i64>(1)? as usize,
                    count: row.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(self.err("cannot read vector models"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("cannot read vector models"))
    }

    /// Removes every vector not of `model` with `dims` dimensions; returns how many.
    pub fn remove_other_vectors(&self, model: &str, dims: usize) -> Result<u64, StageError> {
        self.conn
            .execute(
                "DELETE FROM chunks WHERE model != ?1 OR dims != ?2",
                params![model, dims as i64],
            )
            .map(|n| n as u64)
            .map_err(self.err("cannot remove old vectors"))
    }

    /// Writes a batch in one transaction. Each item is written under its own savepoint, so
    /// an item the database refuses fails alone (returned with its index); a database-level
    /// error fails the whole batch (nothing of it is committed).
    pub fn write(
        &mut self,
        items: impl IntoIterator<Item = (usize, Item)>,
    ) -> Result<Vec<(usize, StageError)>, StageError> {
        let path = self.path.clone();
        let err = |what: &str| {
            let path = path.clone();
            let what = what.to_string();
            move |e: rusqlite::Error| db_error(&path, &what, e)
        };
        let mut tx = self
            .conn
            .transaction()
            .map_err(err("cannot start a transaction"))?;
        let mut failed = Vec::new();
        for (index, item) in items {
            let mut sp = tx.savepoint().map_err(err("cannot start a savepoint"))?;
            let result = match item {
                Item::Graph(graph) => write_graph(&sp, &graph),
                Item::Vector {
                    provenance,
                    id,
                    embedded,
                    normalised,
                } => write_chunk(&sp, &id, &provenance, &embedded, normalised),
            };
            match result {
                Ok(()) => sp.commit().map_err(err("cannot release a savepoint"))?,
                Err(e) => match e.sqlite_error_code() {
                    // The file, not the item, is the problem: fail the batch.
                    Some(
                        rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::DatabaseCorrupt
                        | rusqlite::ErrorCode::CannotOpen,
                    ) => return Err(db_error(&path, "cannot write", e)),
                    _ => {
                        sp.rollback().map_err(err("cannot roll back a savepoint"))?;
                        failed.push((
                            index,
                            StageError::record(format!(
                                "local store {}: cannot write this record: {e}",
                                path.display()
                            )),
                        ));
                    }
                },
            }
        }
        tx.commit().map_err(err("cannot commit"))?;
        Ok(failed)
    }

    /// The `k` stored chunks nearest to `query` by cosine similarity (exact scan).
    pub fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<ChunkHit>, StageError> {
        let Some(query) = normalised(query) else {
            return Err(StageError::record(
                "the question's vector is zero or not a number: nothing to compare",
            ));
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rowid, dims, vector FROM chunks")
            .map_err(self.err("cannot search"))?;
        let mut rows = stmt.query([]).map_err(self.err("cannot search"))?;
        // (score, rowid), best k kept; a few thousand rows of 384 floats scan in milliseconds
        // (benches/local_store.rs).
        let mut best: Vec<(f32, i64)> = Vec::with_capacity(k + 1);
        let mut other_dims = None;
        while let Some(row) = rows.next().map_err(self.err("cannot search"))? {
            let dims: i64 = row.get(1).map_err(self.err("cannot search"))?;
            if dims as usize != query.len() {
                other_dims = Some(dims);
                continue;
            }
            let blob = row
                .get_ref(2)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(self.err("cannot search"))?;
            let score = dot(&query, blob);
            if best.len() < k || best.last().is_some_and(|(s, _)| score > *s) {
                let at = best.partition_point(|(s, _)| *s >= score);
                best.insert(at, (score, row.get(0).map_err(self.err("cannot search"))?));
                best.truncate(k);
            }
        }
        if best.is_empty()
            && let Some(dims) = other_dims
        {
            return Err(StageError::run(format!(
                "local store {} holds {dims}-dimensional vectors; the question was embedded \
                 with {} dimensions (another model?)",
                self.path.display(),
                query.len()
            )));
        }
        let mut hits = Vec::with_capacity(best.len());
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, text, context, document_id, source_path, content_hash, chunk_index, \
                 span_start, span_end FROM chunks WHERE rowid = ?1",
            )
            .map_err(self.err("cannot read a chunk"))?;
        for (score, rowid) in best {
            let hit = stmt
                .query_row(params![rowid], |row| {
                    Ok(ChunkHit {
                        id: row.get(0)?,
                        score,
                        text: row.get(1)?,
                        context: row.get(2)?,
                        provenance: Provenance {
                            document_id: row.get(3)?,
                            source_path: row.get(4)?,
                            content_hash: row.get(5)?,
                            line: None,
                            chunk_index: row.get::<_, Option<i64>>(6)?.map(|i| i as u32),
                            char_span: span_from(row.get(7)?, row.get(8)?),
                        },
                    })
                })
                .map_err(self.err("cannot read a chunk"))?;
            hits.push(hit);
        }
        Ok(hits)
    }

    /// A stored chunk's vector (normalised), for tests and tools.
    pub fn vector(&self, chunk_id: &str) -> Result<Option<Vec<f32>>, StageError> {
        self.conn
            .query_row(
                "SELECT vector FROM chunks WHERE id = ?1",
                params![chunk_id],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|blob| blob.map(|b| blob_vector(&b)))
            .map_err(self.err("cannot read a vector"))
    }

    /// Entities mentioned in any of `chunk_ids`, most mentioned there first, each with its
    /// mentions in those chunks.
    pub fn entities_in_chunks(&self, chunk_ids: &[String]) -> Result<Vec<Entity>, StageError> {
        let mut mentions: BTreeMap<String, Vec<Mention>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT entity_id, chunk_id, document_id, source_path, span_start, span_end \
                 FROM entity_mentions WHERE chunk_id = ?1",
            )
            .map_err(self.err("cannot read mentions"))?;
        for chunk_id in chunk_ids {
            let rows = stmt
                .query_map(params![chunk_id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        Mention {
                            chunk_id: row.get(1)?,
                            document_id: row.get(2)?,
                            source_path: row.get(3)?,
                            char_span: span_from(row.get(4)?, row.get(5)?),
                        },
                    ))
                })
                .map_err(self.err("cannot read mentions"))?;
            for row in rows {
                let (entity_id, mention) = row.map_err(self.err("cannot read mentions"))?;
                mentions.entry(entity_id).or_default().push(mention);
            }
        }
        let mut entities = Vec::with_capacity(mentions.len());
        for (id, found) in mentions {
            if let Some(mut entity) = self.entity(&id)? {
                entity.mentions = found;
                entities.push(entity);
            }
        }
        entities.sort_by(|a, b| {
            b.mentions
                .len()
                .cmp(&a.mentions.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(entities)
    }

    fn entity(&self, id: &str) -> Result<Option<Entity>, StageError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, type, aliases, descriptions, properties, confidence \
                 FROM entities WHERE id = ?1",
            )
            .map_err(self.err("cannot read an entity"))?;
        stmt.query_row(params![id], entity_row)
            .optional()
            .map_err(self.err("cannot read an entity"))
    }

    /// Relations touching any of `entity_ids`, strongest first, at most `limit`.
    pub fn facts_about(
        &self,
        entity_ids: &[String],
        limit: usize,
    ) -> Result<Vec<Fact>, StageError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.source, COALESCE(s.name, r.source), COALESCE(s.type, ''), r.type, \
                        r.target, COALESCE(t.name, r.target), COALESCE(t.type, ''), r.weight \
                 FROM relations r \
                 LEFT JOIN entities s ON s.id = r.source \
                 LEFT JOIN entities t ON t.id = r.target \
                 WHERE r.source = ?1 OR r.target = ?1",
            )
            .map_err(self.err("cannot read relations"))?;
        let mut facts: HashMap<String, Fact> = HashMap::new();
        for id in entity_ids {
            let rows = stmt
                .query_map(params![id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        Fact {
                            source_id: row.get(1)?,
                            source: row.get(2)?,
                            source_type: row.get(3)?,
                            relation: row.get(4)?,
                            target_id: row.get(5)?,
                            target: row.get(6)?,
                            target_type: row.get(7)?,
                            weight: row.get(8)?,
                        },
                    ))
                })
                .map_err(self.err("cannot read relations"))?;
            for row in rows {
                let (relation_id, fact) = row.map_err(self.err("cannot read relations"))?;
                facts.insert(relation_id, fact);
            }
        }
        let mut facts: Vec<Fact> = facts.into_values().collect();
        facts.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then_with(|| a.source.cmp(&b.source))
                .then_with(|| a.relation.cmp(&b.relation))
                .then_with(|| a.target.cmp(&b.target))
        });
        facts.truncate(limit);
        Ok(facts)
    }

    /// The whole graph, entities and relations ordered by id, each with all its mentions.
    pub fn export(&self) -> Result<Graph, StageError> {
        let mut entity_mentions = self.all_mentions("entity_mentions", "entity_id")?;
        let mut relation_mentions = self.all_mentions("relation_mentions", "relation_id")?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, type, aliases, descriptions, properties, confidence \
                 FROM entities ORDER BY id",
            )
            .map_err(self.err("cannot read entities"))?;
        let mut entities: Vec<Entity> = stmt
            .query_map([], entity_row)
            .map_err(self.err("cannot read entities"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("cannot read entities"))?;
        for entity in &mut entities {
            entity.mentions = entity_mentions.remove(&entity.id).unwrap_or_default();
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, source, target, type, descriptions, properties, confidence, weight \
                 FROM relations ORDER BY id",
            )
            .map_err(self.err("cannot read relations"))?;
        let mut relations: Vec<Relation> = stmt
            .query_map([], |row| {
                Ok(Relation {
                    id: row.get(0)?,
                    source: row.get(1)?,
                    target: row.get(2)?,
                    relation_type: row.get(3)?,
                    descriptions: json_list(&row.get::<_, String>(4)?),
                    properties: json_map(&row.get::<_, String>(5)?),
                    confidence: row.get(6)?,
                    weight: row.get(7)?,
                    mentions: Vec::new(),
                })
            })
            .map_err(self.err("cannot read relations"))?
            .collect::<Result<_, _>>()
            .map_err(self.err("cannot read relations"))?;
        for relation in &mut relations {
            relation.mentions = relation_mentions.remove(&relation.id).unwrap_or_default();
        }
        Ok(Graph {
            extractor: String::new(),
            entities,
            relations,
        })
    }

    fn all_mentions(
        &self,
        table: &str,
        key: &str,
    ) -> Result<HashMap<String, Vec<Mention>>, StageError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {key}, chunk_id, document_id, source_path, span_start, span_end \
                 FROM {table} ORDER BY {key}, document_id, span_start, chunk_id"
            ))
            .map_err(self.err("cannot read mentions"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Mention {
                        chunk_id: row.get(1)?,
                        document_id: row.get(2)?,
                        source_path: row.get(3)?,
                        char_span: span_from(row.get(4)?, row.get(5)?),
                    },
                ))
            })
            .map_err(self.err("cannot read mentions"))?;
        let mut all: HashMap<String, Vec<Mention>> = HashMap::new();
        for row in rows {
            let (id, mention) = row.map_err(self.err("cannot read mentions"))?;
            all.entry(id).or_default().push(mention);
        }
        Ok(all)
    }
}

fn entity_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entity> {
    Ok(Entity {
        id: row.get(0)?,
        name: row.get(1)?,
        entity_type: row.get(2)?,
        aliases: json_list(&row.get::<_, String>(3)?),
        descriptions: json_list(&row.get::<_, String>(4)?),
        properties: json_map(&row.get::<_, String>(5)?),
        confidence: row.get(6)?,
        mentions: Vec::new(),
    })
}

/// One unit of a batch (owned: batches are written on a blocking thread).
pub enum Item {
    Graph(Graph),
    Vector {
        id: String,
        provenance: Provenance,
        /// Its `vector` is ignored: `normalised` is stored.
        embedded: Embedded,
        /// The vector, L2-normalised by the caller (which checked its length).
        normalised: Vec<f32>,
    },
}

fn write_graph(conn: &Connection, graph: &Graph) -> rusqlite::Result<()> {
    for entity in &graph.entities {
        write_entity(conn, entity)?;
    }
    for relation in &graph.relations {
        write_relation(conn, relation)?;
    }
    Ok(())
}

fn write_entity(conn: &Connection, entity: &Entity) -> rusqlite::Result<()> {
    let existing = conn
        .prepare_cached(
            "SELECT aliases, descriptions, properties, confidence FROM entities WHERE id = ?1",
        )?
        .query_row(params![entity.id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<f64>>(3)?,
            ))
        })
        .optional()?;
    let (mut aliases, mut descriptions, mut properties, confidence) = match existing {
        Some((a, d, p, c)) => (json_list(&a), json_list(&d), json_map(&p), c),
        None => (Vec::new(), Vec::new(), serde_json::Map::new(), None),
    };
    union(&mut aliases, &entity.aliases);
    union(&mut descriptions, &entity.descriptions);
    for (key, value) in &entity.properties {
        properties.insert(key.clone(), value.clone());
    }
    conn.prepare_cached(
        "INSERT INTO entities (id, name, type, aliases, descriptions, properties, confidence) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, type = excluded.type, \
           aliases = excluded.aliases, descriptions = excluded.descriptions, \
           properties = excluded.properties, confidence = excluded.confidence",
    )?
    .execute(params![
        entity.id,
        entity.name,
        entity.entity_type,
        to_json(&aliases),
        to_json(&descriptions),
        to_json(&properties),
        max_confidence(confidence, entity.confidence.filter(|c| c.is_finite())),
    ])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO entity_mentions \
         (entity_id, chunk_id, document_id, source_path, span_start, span_end) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for mention in &entity.mentions {
        let (start, end) = span_of(mention.char_span);
        insert.execute(params![
            entity.id,
            mention.chunk_id,
            mention.document_id,
            mention.source_path,
            start,
            end
        ])?;
    }
    Ok(())
}

fn write_relation(conn: &Connection, relation: &Relation) -> rusqlite::Result<()> {
    let existing = conn
        .prepare_cached(
            "SELECT descriptions, properties, confidence, weight_hint FROM relations WHERE id = ?1",
        )?
        .query_row(params![relation.id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<f64>>(2)?,
                row.get::<_, f64>(3)?,
            ))
        })
        .optional()?;
    let (mut descriptions, mut properties, confidence, hint) = match existing {
        Some((d, p, c, h)) => (json_list(&d), json_map(&p), c, h),
        None => (Vec::new(), serde_json::Map::new(), None, 0.0),
    };
    union(&mut descriptions, &relation.descriptions);
    for (key, value) in &relation.properties {
        properties.insert(key.clone(), value.clone());
    }
    let hint = hint.max(relation.weight);
    conn.prepare_cached(
        "INSERT INTO relations \
         (id, source, target, type, descriptions, properties, confidence, weight_hint, weight) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
         ON CONFLICT (id) DO UPDATE SET source = excluded.source, target = excluded.target, \
           type = excluded.type, descriptions = excluded.descriptions, \
           properties = excluded.properties, confidence = excluded.confidence, \
           weight_hint = excluded.weight_hint",
    )?
    .execute(params![
        relation.id,
        relation.source,
        relation.target,
        relation.relation_type,
        to_json(&descriptions),
        to_json(&properties),
        max_confidence(confidence, relation.confidence.filter(|c| c.is_finite())),
        hint,
    ])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO relation_mentions \
         (relation_id, chunk_id, document_id, source_path, span_start, span_end) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for mention in &relation.mentions {
        let (start, end) = span_of(mention.char_span);
        insert.execute(params![
            relation.id,
            mention.chunk_id,
            mention.document_id,
            mention.source_path,
            start,
            end
        ])?;
    }
    // Weight: distinct supporting chunks, so writing the same fact again adds nothing.
    conn.prepare_cached(
        "UPDATE relations SET weight = COALESCE( \
           (SELECT NULLIF(COUNT(DISTINCT chunk_id), 0) FROM relation_mentions WHERE relation_id = ?1), \
           weight_hint) WHERE id = ?1",
    )?
    .execute(params![relation.id])?;
    Ok(())
}

fn write_chunk(
    conn: &Connection,
    id: &str,
    provenance: &Provenance,
    embedded: &Embedded,
    normalised: Vec<f32>,
) -> rusqlite::Result<()> {
    let (start, end) = match provenance.char_span {
        Some(span) => {
            let (s, e) = span_of(Some(span));
            (Some(s), Some(e))
        }
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO chunks (id, text, context, document_id, source_path, content_hash, \
           chunk_index, span_start, span_end, model, dims, vector) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (id) DO UPDATE SET text = excluded.text, context = excluded.context, \
           document_id = excluded.document_id, source_path = excluded.source_path, \
           content_hash = excluded.content_hash, chunk_index = excluded.chunk_index, \
           span_start = excluded.span_start, span_end = excluded.span_end, \
           model = excluded.model, dims = excluded.dims, vector = excluded.vector",
    )?
    .execute(params![
        id,
        embedded.text,
        embedded.context,
        provenance.document_id,
        provenance.source_path,
        provenance.content_hash,
        provenance.chunk_index.map(i64::from),
        start,
        end,
        embedded.model,
        normalised.len() as i64,
        vector_blob(&normalised),
    ])?;
    Ok(())
}
