//! FalkorDB over the Redis protocol: `GRAPH.QUERY` with the parameters in a `CYPHER name=value`
//! preamble (FalkorDB binds no parameters server-side: the server parses each value as a Cypher
//! literal, so [`encode_literal`] is the one place values become query text), results in the
//! compact format (typed values), failures classified once here.
//!
//! One multiplexed connection (`redis::aio::ConnectionManager`) carries every query of a sink:
//! FalkorDB runs the writes to one graph one at a time anyway, and the manager reconnects by
//! itself after the server went away, so the runtime's retry of a failed batch finds a fresh
//! connection.

use crate::failure::{Failure, FailureClass};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, Value as Resp};
use serde_json::{Map, Number, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// How long connecting (and the health check at build) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters FalkorDB reports after a query ("Nodes created: 3").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub nodes_created: u64,
    pub nodes_deleted: u64,
    pub relationships_created: u64,
    pub relationships_deleted: u64,
    pub properties_set: u64,
    pub labels_added: u64,
    pub indices_created: u64,
}

impl QueryStats {
    pub fn add(&mut self, other: &QueryStats) {
        self.nodes_created += other.nodes_created;
        self.nodes_deleted += other.nodes_deleted;
        self.relationships_created += other.relationships_created;
        self.relationships_deleted += other.relationships_deleted;
        self.properties_set += other.properties_set;
        self.labels_added += other.labels_added;
        self.indices_created += other.indices_created;
    }

    fn parse_line(&mut self, line: &str) {
        let Some((name, value)) = line.split_once(':') else {
            return;
        };
        let Ok(n) = value.trim().parse::<u64>() else {
            return;
        };
        match name.trim() {
            "Nodes created" => self.nodes_created += n,
            "Nodes deleted" => self.nodes_deleted += n,
            "Relationships created" => self.relationships_created += n,
            "Relationships deleted" => self.relationships_deleted += n,
            "Properties set" => self.properties_set += n,
            "Labels added" => self.labels_added += n,
            "Indices created" => self.indices_created += n,
            _ => {}
        }
    }
}

/// What a query returned: column names, rows of typed values, and the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub stats: QueryStats,
}

impl QueryResult {
    /// Rows as column → value maps.
    pub fn records(&self) -> Vec<Map<String, Value>> {
        self.rows
            .iter()
            .map(|row| {
                self.columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect()
            })
            .collect()
    }
}

/// A FalkorDB server and one graph (one Redis key) on it.
#[derive(Clone)]
pub struct FalkorClient {
    connection: ConnectionManager,
    graph: String,
    /// The URL without its password, for messages.
    display_url: String,
    /// The server appends writes to its append-only file (`appendonly yes`).
    aof: bool,
}

impl std::fmt::Debug for FalkorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FalkorClient")
            .field("url", &self.display_url)
            .field("graph", &self.graph)
            .field("aof", &self.aof)
            .finish()
    }
}

impl FalkorClient {
    /// Connects and checks that the server answers and has the FalkorDB module, so a wrong
    /// or unreachable URL stops a run at build with a message naming it.
    pub async fn connect(url: &str, graph: &str) -> Result<FalkorClient, Failure> {
        let display_url = redact_url(url);
        let client = redis::Client::open(url).map_err(|e| {
            Failure::new(
                FailureClass::Run,
                None,
                format!("invalid FalkorDB URL {display_url}: {e}"),
            )
        })?;
        // One plain attempt first: the manager below would retry an unreachable server for
        // seconds before saying so.
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(|e| unreachable(&display_url, &e))?;
        let _: Resp = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(|e| unreachable(&display_url, &e))?;
        let listed: Result<Resp, RedisError> =
            redis::cmd("GRAPH.LIST").query_async(&mut probe).await;
        if let Err(e) = listed {
            let class = classify(&e);
            let message = if e.to_string().to_lowercase().contains("unknown command") {
                format!(
                    "{display_url} answers but is not FalkorDB (no GRAPH.LIST command: is the \
                     FalkorDB module loaded?)"
                )
            } else {
                format!("FalkorDB at {display_url}: {}", describe_error(&e))
            };
            let class = match class {
                FailureClass::Retryable { .. } => class,
                _ => FailureClass::Run,
            };
            return Err(Failure::new(class, None, message));
        }
        let aof = matches!(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendonly")
                .query_async::<Vec<String>>(&mut probe)
                .await,
            Ok(pair) if pair.get(1).map(String::as_str) == Some("yes")
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // A large batch may take a while; the runtime, not the socket, bounds a write.
            .set_response_timeout(None)
            // Reconnecting is transport; retrying a failed batch is the runtime's job, so the
            // manager gives up after a few quick attempts and reports the error.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| unreachable(&display_url, &e))?;
        Ok(FalkorClient {
            connection,
            graph: graph.to_string(),
            display_url,
            aof,
        })
    }

    /// "redis://127.0.0.1:6379 graph `pipe`" (never with a password).
    pub fn describe(&self) -> String {
        format!("{} graph `{}`", self.display_url, self.graph)
    }

    pub fn graph(&self) -> &str {
        &self.graph
    }

    /// True when the server persists writes to its append-only file, so that
    /// [`FalkorClient::write`] can wait for the fsync.
    pub fn appends_to_aof(&self) -> bool {
        self.aof
    }

    /// One read-write query.
    pub async fn query(
        &self,
        cypher: &str,
        params: &Map<String, Value>,
    ) -> Result<QueryResult, Failure> {
        let text = with_params(cypher, params)?;
        let reply: Resp = graph_command("GRAPH.QUERY", &self.graph, &text)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.failure(&e))?;
        parse_reply(reply).map_err(|m| self.protocol_failure(m))
    }

    /// One read-only query. A graph that does not exist yet reads as empty.
    pub async fn ro_query(
        &self,
        cypher: &str,
        params: &Map<String, Value>,
    ) -> Result<QueryResult, Failure> {
        let text = with_params(cypher, params)?;
        let reply: Result<Resp, RedisError> = graph_command("GRAPH.RO_QUERY", &self.graph, &text)
            .query_async(&mut self.connection.clone())
            .await;
        match reply {
            Ok(reply) => parse_reply(reply).map_err(|m| self.protocol_failure(m)),
            Err(e) if e.to_string().contains("empty key") => Ok(QueryResult::default()),
            Err(e) => Err(self.failure(&e)),
        }
    }

    /// Several write queries in one round trip, run in order; with `fsync`, not answered
    /// before the server's append-only file holds them on disk (`WAITAOF`). Not atomic:
    /// FalkorDB has no multi-query transactions, so callers write idempotently and send a
    /// failed batch again whole.
    pub async fn write(
        &self,
        statements: &[(String, Map<String, Value>)],
        fsync: bool,
    ) -> Result<Vec<QueryResult>, Failure> {
        let mut pipe = redis::pipe();
        for (cypher, params) in statements {
            let text = with_params(cypher, params)?;
            pipe.add_command(graph_command("GRAPH.QUERY", &self.graph, &text));
        }
        if fsync {
            // Blocks until the local AOF has fsynced this connection's writes (no replicas
            // asked, no timeout); in the same pipeline, so on the same connection.
            pipe.cmd("WAITAOF").arg(1).arg(0).arg(0).ignore();
        }
        let replies: Vec<Resp> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.failure(&e))?;
        replies
            .into_iter()
            .map(|reply| match reply {
                // A query the server refused (the pipeline itself went through).
                Resp::ServerError(e) => Err(self.failure(&RedisError::from(e))),
                reply => parse_reply(reply).map_err(|m| self.protocol_failure(m)),
            })
            .collect()
    }

    /// `CREATE INDEX …` / `CREATE VECTOR INDEX …`: FalkorDB has no `IF NOT EXISTS`, so an
    /// index that is already there counts as success. Returns whether one was created.
    pub async fn create_index(&self, cypher: &str) -> Result<bool, Failure> {
        match self.query(cypher, &Map::new()).await {
            Ok(result) => Ok(result.stats.indices_created > 0),
            Err(failure) if failure.message.contains("already indexed") => Ok(false),
            Err(failure) => Err(failure),
        }
    }

    /// A unique constraint on a node label's property (`GRAPH.CONSTRAINT CREATE`); it needs
    /// an exact-match index on the same property first. One that exists counts as success.
    pub async fn create_unique_node_constraint(
        &self,
        label: &str,
        property: &str,
    ) -> Result<(), Failure> {
        let reply: Result<Resp, RedisError> = redis::cmd("GRAPH.CONSTRAINT")
            .arg("CREATE")
            .arg(&self.graph)
            .arg("UNIQUE")
            .arg("NODE")
            .arg(label)
            .arg("PROPERTIES")
            .arg(1)
            .arg(property)
            .query_async(&mut self.connection.clone())
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(e) => Err(self.failure(&e)),
        }
    }

    /// Deletes the graph (tests, benchmarks). A graph that does not exist is not an error.
    pub async fn delete_graph(&self) -> Result<(), Failure> {
        let reply: Result<Resp, RedisError> = redis::cmd("GRAPH.DELETE")
            .arg(&self.graph)
            .query_async(&mut self.connection.clone())
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("empty key") => Ok(()),
            Err(e) => Err(self.failure(&e)),
        }
    }

    fn failure(&self, error: &RedisError) -> Failure {
        Failure::new(
            classify(error),
            None,
            format!("FalkorDB {}: {}", self.describe(), describe_error(error)),
        )
    }

    fn protocol_failure(&self, message: String) -> Failure {
        Failure::new(
            FailureClass::Record,
            None,
            format!("FalkorDB {}: unexpected reply: {message}", self.describe()),
        )
    }
}

fn graph_command(name: &str, graph: &str, text: &str) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(graph).arg(text).arg("--compact");
    cmd
}

fn unreachable(display_url: &str, error: &RedisError) -> Failure {
    Failure::new(
        FailureClass::Run,
        None,
        format!(
            "cannot reach FalkorDB at {display_url}: {} (is the server running? \
             scripts/falkordb.sh starts one)",
            describe_error(error)
        ),
    )
}

fn describe_error(error: &RedisError) -> String {
    // Redis errors never carry the password: the URL is not part of them.
    error.to_string()
}

/// What a failed command means for the pipeline.
pub fn classify(error: &RedisError) -> FailureClass {
    let retry = FailureClass::Retryable { retry_after: None };
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
    {
        return retry;
    }
    match error.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown,
        ) => retry,
        ErrorKind::AuthenticationFailed
        | ErrorKind::InvalidClientConfig
        | ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::NoPerm) => {
            FailureClass::Run
        }
        _ => {
            let text = error.to_string();
            if text.contains("NOAUTH") || text.contains("WRONGPASS") || text.contains("OOM ") {
                FailureClass::Run
            } else {
                FailureClass::Record
            }
        }
    }
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                // `redis://secret@host`: a lone userinfo is the password for Redis.
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

/// The query text with its parameters as a `CYPHER a=… b=…` preamble.
pub fn with_params(cypher: &str, params: &Map<String, Value>) -> Result<String, Failure> {
    if params.is_empty() {
        return Ok(cypher.to_string());
    }
    let mut text = String::with_capacity(cypher.len() + 64);
    text.push_str("CYPHER ");
    for (name, value) in params {
        if !is_identifier(name) {
            return Err(Failure::new(
                FailureClass::Record,
                None,
                format!("parameter name `{name}` is not an identifier"),
            ));
        }
        text.push_str(name);
        text.push('=');
        encode_literal(value, &mut text).map_err(|m| {
            Failure::new(FailureClass::Record, None, format!("parameter {name}: {m}"))
        })?;
        text.push(' ');
    }
    text.push_str(cypher);
    Ok(text)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes `value` as a Cypher literal FalkorDB parses back to the same value. Strings are
/// single-quoted with the escapes FalkorDB reads (`\\ \' \n \r \t \b \f`; every other
/// character is taken as it is, any script included); map keys are identifiers or
/// backticked (read literally there). What FalkorDB cannot represent is an error: a NUL
/// character, a backtick in a map key, an integer beyond i64.
pub fn encode_literal(value: &Value, out: &mut String) -> Result<(), String> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => encode_number(n, out)?,
        Value::String(s) => encode_string(s, out)?,
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_literal(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if key.is_empty() || key.contains('`') || key.contains('\0') {
                    return Err(format!(
                        "map key {key:?} cannot be written for FalkorDB (empty, or holds a \
                         backtick or NUL)"
                    ));
                }
                if is_identifier(key) {
                    out.push_str(key);
                } else {
                    out.push('`');
                    out.push_str(key);
                    out.push('`');
                }
                out.push(':');
                encode_literal(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn encode_number(n: &Number, out: &mut String) -> Result<(), String> {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if n.is_u64() {
        return Err(format!("integer {n} is beyond the 64-bit signed range"));
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if !f.is_finite() {
            return Err(format!("number {n} is not finite"));
        }
        // `{:?}` keeps a decimal point or an exponent (1.0, 1e-7), so the value stays a float.
        let _ = write!(out, "{f:?}");
    }
    Ok(())
}

fn encode_string(s: &str, out: &mut String) -> Result<(), String> {
    out.reserve(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\0' => {
                return Err("a string holds a NUL character, which FalkorDB cannot store".into());
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(())
}

/// A `--compact` reply: `[stats]` for a query that returns nothing, else `[header, rows, stats]`.
fn parse_reply(reply: Resp) -> Result<QueryResult, String> {
    let Resp::Array(mut parts) = reply else {
        return Err(format!("expected an array, got {reply:?}"));
    };
    let stats_part = parts.pop().ok_or("empty reply")?;
    let mut result = QueryResult::default();
    for line in array(stats_part)? {
        result.stats.parse_line(&text(line)?);
    }
    if parts.len() == 2 {
        let rows = parts.pop().unwrap_or(Resp::Nil);
        let header = parts.pop().unwrap_or(Resp::Nil);
        for column in array(header)? {
            // Compact headers are [column type, name].
            let name = match column {
                Resp::Array(mut pair) if pair.len() == 2 => text(pair.pop().unwrap_or(Resp::Nil))?,
                other => text(other)?,
            };
            result.columns.push(name);
        }
        for row in array(rows)? {
            let values = array(row)?
                .into_iter()
                .map(compact_value)
                .collect::<Result<Vec<_>, _>>()?;
            result.rows.push(values);
        }
    } else if !parts.is_empty() {
        return Err(format!("expected 1 or 3 parts, got {}", parts.len() + 1));
    }
    Ok(result)
}

fn array(value: Resp) -> Result<Vec<Resp>, String> {
    match value {
        Resp::Array(items) | Resp::Set(items) => Ok(items),
        Resp::Nil => Ok(Vec::new()),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

fn text(value: Resp) -> Result<String, String> {
    match value {
        Resp::BulkString(bytes) => String::from_utf8(bytes).map_err(|e| e.to_string()),
        Resp::SimpleString(s) => Ok(s),
        Resp::VerbatimString { text, .. } => Ok(text),
        Resp::Okay => Ok("OK".into()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn float(value: Resp) -> Result<f64, String> {
    match value {
        Resp::Double(f) => Ok(f),
        Resp::Int(i) => Ok(i as f64),
        other => {
            let s = text(other)?;
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("`{s}` is not a number"))
        }
    }
}

fn json_float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// One compact value `[type, value]` (FalkorDB's result-set value types) as JSON.
fn compact_value(value: Resp) -> Result<Value, String> {
    let mut pair = array(value)?;
    if pair.len() != 2 {
        return Err(format!("a compact value has 2 parts, not {}", pair.len()));
    }
    let raw = pair.pop().unwrap_or(Resp::Nil);
    let kind = match pair.pop() {
        Some(Resp::Int(kind)) => kind,
        other => {
            return Err(format!(
                "a compact value type must be an integer, got {other:?}"
            ));
        }
    };
    Ok(match kind {
        1 => Value::Null,
        2 => Value::String(text(raw)?),
        3 => match raw {
            Resp::Int(i) => Value::from(i),
            other => Value::from(
                text(other)?
                    .parse::<i64>()
                    .map_err(|e| format!("bad integer: {e}"))?,
            ),
        },
        4 => Value::Bool(text(raw)? == "true"),
        5 => json_float(float(raw)?),
        6 => Value::Array(
            array(raw)?
                .into_iter()
                .map(compact_value)
                .collect::<Result<_, _>>()?,
        ),
        10 => {
            let mut map = Map::new();
            let mut items = array(raw)?.into_iter();
            while let (Some(key), Some(item)) = (items.next(), items.next()) {
                map.insert(text(key)?, compact_value(item)?);
            }
            Value::Object(map)
        }
        11 => {
            let mut coords = array(raw)?.into_iter();
            let latitude = float(coords.next().unwrap_or(Resp::Nil))?;
            let longitude = float(coords.next().unwrap_or(Resp::Nil))?;
            serde_json::json!({ "latitude": latitude, "longitude": longitude })
        }
        12 => Value::Array(
            array(raw)?
                .into_iter()
                .map(|v| float(v).map(json_float))
                .collect::<Result<_, _>>()?,
        ),
        7..=9 => {
            return Err("nodes, edges and paths are not read back: return their properties".into());
        }
        other => return Err(format!("unknown compact value type {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn literal(value: Value) -> String {
        let mut out = String::new();
        encode_literal(&value, &mut out).unwrap();
        out
    }

    #[test]
    fn literals_escape_what_falkordb_reads_as_escapes() {
        assert_eq!(literal(json!("it's")), r"'it\'s'");
        assert_eq!(literal(json!("a\\b\nc\td")), r"'a\\b\nc\td'");
        assert_eq!(
            literal(json!("}) DETACH DELETE n //")),
            "'}) DETACH DELETE n //'"
        );
        assert_eq!(literal(json!("\"`")), "'\"`'");
        assert_eq!(literal(json!("Ж日本")), "'Ж日本'");
        assert_eq!(
            literal(json!([1, 2.5, 1.0, null, true])),
            "[1,2.5,1.0,null,true]"
        );
        assert_eq!(literal(json!(1e-7)), "1e-7");
        assert_eq!(
            literal(json!({"id": "x", "a b": 1, "é": [ "q" ]})),
            "{`a b`:1,id:'x',`é`:['q']}"
        );
    }

    #[test]
    fn what_falkordb_cannot_store_is_an_error() {
        let mut out = String::new();
        assert!(
            encode_literal(&json!("a\0b"), &mut out)
                .unwrap_err()
                .contains("NUL")
        );
        assert!(
            encode_literal(&json!({"a`b": 1}), &mut out)
                .unwrap_err()
                .contains("backtick")
        );
        assert!(
            encode_literal(&json!(u64::MAX), &mut out)
                .unwrap_err()
                .contains("range")
        );
    }

    #[test]
    fn params_become_a_preamble() {
        let mut params = Map::new();
        params.insert("rows".into(), json!([{"id": "a"}]));
        assert_eq!(
            with_params("UNWIND $rows AS row RETURN row.id", &params).unwrap(),
            "CYPHER rows=[{id:'a'}] UNWIND $rows AS row RETURN row.id"
        );
        let mut bad = Map::new();
        bad.insert("x y".into(), json!(1));
        assert!(with_params("RETURN 1", &bad).is_err());
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("redis://default:hunter2@db:6379/0"),
            "redis://default:***@db:6379/0"
        );
        assert_eq!(redact_url("redis://hunter2@db:6379"), "redis://***@db:6379");
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
    }

    #[test]
    fn compact_replies_parse_to_json() {
        let bulk = |s: &str| Resp::BulkString(s.as_bytes().to_vec());
        let reply = Resp::Array(vec![
            Resp::Array(vec![
                Resp::Array(vec![Resp::Int(1), bulk("n.id")]),
                Resp::Array(vec![Resp::Int(1), bulk("props")]),
            ]),
            Resp::Array(vec![Resp::Array(vec![
                Resp::Array(vec![Resp::Int(2), bulk("a")]),
                Resp::Array(vec![
                    Resp::Int(10),
                    Resp::Array(vec![
                        bulk("w"),
                        Resp::Array(vec![Resp::Int(5), bulk("1.5")]),
                        bulk("l"),
                        Resp::Array(vec![
                            Resp::Int(6),
                            Resp::Array(vec![
                                Resp::Array(vec![Resp::Int(3), Resp::Int(7)]),
                                Resp::Array(vec![Resp::Int(1), Resp::Nil]),
                                Resp::Array(vec![Resp::Int(4), bulk("true")]),
                            ]),
                        ]),
                    ]),
                ]),
            ])]),
            Resp::Array(vec![
                bulk("Nodes created: 2"),
                bulk("Relationships created: 1"),
            ]),
        ]);
        let result = parse_reply(reply).unwrap();
        assert_eq!(result.columns, vec!["n.id", "props"]);
        assert_eq!(
            result.rows,
            vec![vec![json!("a"), json!({"w": 1.5, "l": [7, null, true]})]]
        );
        assert_eq!(result.stats.nodes_created, 2);
        assert_eq!(result.stats.relationships_created, 1);
        let stats_only = Resp::Array(vec![Resp::Array(vec![bulk("Nodes created: 3")])]);
        assert_eq!(parse_reply(stats_only).unwrap().stats.nodes_created, 3);
    }
}
