//! Neo4j over Bolt with `neo4rs`: a pool of connections, one explicit transaction per write
//! batch, reads as JSON rows, failures classified once here. `neo4rs::Graph::run` retries on
//! its own for up to a minute; this client never calls it — retrying a batch is the runtime's
//! job — and uses explicit transactions and `execute` only.

use crate::failure::{Failure, FailureClass};
use neo4rs::{BoltType, ConfigBuilder, Graph, Neo4jErrorKind, Query};
use serde_json::{Map, Value};

/// A Neo4j database and the pool of connections to it.
#[derive(Clone)]
pub struct Neo4jClient {
    graph: Graph,
    /// URI and database, for messages (credentials are never part of it).
    display: String,
}

impl std::fmt::Debug for Neo4jClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jClient")
            .field("at", &self.display)
            .finish()
    }
}

/// Where to connect and how.
#[derive(Clone)]
pub struct Neo4jSettings {
    /// `neo4j://host:7687`, `bolt://…`, `neo4j+s://…`.
    pub uri: String,
    pub user: String,
    pub password: String,
    /// Database name (default: the server's default database).
    pub database: Option<String>,
    /// Most connections in the pool.
    pub max_connections: usize,
}

impl std::fmt::Debug for Neo4jSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jSettings")
            .field("uri", &self.uri)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Neo4jClient {
    /// Builds the pool and checks that the server answers a query with these credentials, so
    /// an unreachable server or a wrong password stops a run at build with a message naming
    /// the URI.
    pub async fn connect(settings: &Neo4jSettings) -> Result<Neo4jClient, Failure> {
        let display = match &settings.database {
            Some(db) => format!("{} (database `{db}`)", redact_uri(&settings.uri)),
            None => redact_uri(&settings.uri),
        };
        let mut builder = ConfigBuilder::default()
            .uri(settings.uri.as_str())
            .user(settings.user.as_str())
            .password(settings.password.as_str())
            .max_connections(settings.max_connections.max(1));
        if let Some(db) = &settings.database {
            builder = builder.db(db.as_str());
        }
        let config = builder.build().map_err(|e| {
            Failure::new(
                FailureClass::Run,
                None,
                format!("invalid Neo4j settings for {display}: {e}"),
            )
        })?;
        let graph = Graph::connect(config).await.map_err(|e| {
            Failure::new(
                FailureClass::Run,
                None,
                format!("cannot reach Neo4j at {display}: {e}"),
            )
        })?;
        let client = Neo4jClient { graph, display };
        client
            .read("RETURN 1 AS ok", &Map::new())
            .await
            .map_err(|f| {
                Failure::new(
                    FailureClass::Run,
                    None,
                    format!("Neo4j health check failed: {}", f.message),
                )
            })?;
        Ok(client)
    }

    pub fn describe(&self) -> String {
        self.display.clone()
    }

    /// Runs the statements in one transaction and commits it: all of them land, or none.
    pub async fn write(&self, statements: &[(String, Map<String, Value>)]) -> Result<(), Failure> {
        let queries = statements
            .iter()
            .map(|(cypher, params)| to_query(cypher, params))
            .collect::<Result<Vec<_>, _>>()?;
        let mut txn = self.graph.start_txn().await.map_err(|e| self.failure(&e))?;
        let mut outcome = Ok(());
        for query in queries {
            if let Err(e) = txn.run(query).await {
                outcome = Err(self.failure(&e));
                break;
            }
        }
        match outcome {
            Ok(()) => txn.commit().await.map_err(|e| self.failure(&e)),
            Err(failure) => {
                // Best effort: the server also rolls back when the connection goes away.
                let _ = txn.rollback().await;
                Err(failure)
            }
        }
    }

    /// Schema statements (constraints, indexes), each in its own auto-commit transaction, as
    /// Neo4j requires for schema changes.
    pub async fn run_schema(&self, cypher: &str) -> Result<(), Failure> {
        self.write(&[(cypher.to_string(), Map::new())]).await
    }

    /// A read query; each row as column → value.
    pub async fn read(
        &self,
        cypher: &str,
        params: &Map<String, Value>,
    ) -> Result<Vec<Map<String, Value>>, Failure> {
        let query = to_query(cypher, params)?;
        let mut stream = self
            .graph
            .execute(query)
            .await
            .map_err(|e| self.failure(&e))?;
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await.map_err(|e| self.failure(&e))? {
            let map = row.to_strict::<Map<String, Value>>().map_err(|e| {
                Failure::new(
                    FailureClass::Record,
                    None,
                    format!("Neo4j {}: cannot read a row: {e}", self.display),
                )
            })?;
            rows.push(map);
        }
        Ok(rows)
    }

    fn failure(&self, error: &neo4rs::Error) -> Failure {
        Failure::new(
            classify(error),
            None,
            format!("Neo4j {}: {error}", self.display),
        )
    }
}

fn to_query(cypher: &str, params: &Map<String, Value>) -> Result<Query, Failure> {
    let mut query = Query::new(cypher.to_string());
    for (name, value) in params {
        let bolt = BoltType::try_from(value.clone()).map_err(|e| {
            Failure::new(
                FailureClass::Record,
                None,
                format!("parameter {name} cannot be sent to Neo4j: {e}"),
            )
        })?;
        query = query.param(name, bolt);
    }
    Ok(query)
}

/// What a failed Neo4j call means for the pipeline.
pub fn classify(error: &neo4rs::Error) -> FailureClass {
    use neo4rs::Error as E;
    let retry = FailureClass::Retryable { retry_after: None };
    match error {
        E::IOError { .. } | E::ConnectionError => retry,
        E::Neo4j(e) => classify_kind(e.kind()),
        E::AuthenticationError(_)
        | E::UnsupportedVersion(_)
        | E::UnsupportedScheme(_)
        | E::UrlParseError(_)
        | E::InvalidDnsName(_)
        | E::InvalidConfig => FailureClass::Run,
        _ => FailureClass::Record,
    }
}

/// Transient errors (deadlocks, leader switches, a database that is starting) are retried;
/// security and missing-database errors stop the run; the rest (syntax, constraint violations,
/// database errors) fail the batch.
fn classify_kind(kind: Neo4jErrorKind) -> FailureClass {
    use neo4rs::{Neo4jClientErrorKind as C, Neo4jSecurityErrorKind as S};
    match kind {
        Neo4jErrorKind::Transient
        | Neo4jErrorKind::Client(C::SessionExpired)
        | Neo4jErrorKind::Client(C::Security(S::AuthorizationExpired)) => {
            FailureClass::Retryable { retry_after: None }
        }
        Neo4jErrorKind::Client(C::Security(_) | C::FatalDiscovery) => FailureClass::Run,
        _ => FailureClass::Record,
    }
}

/// `neo4j://user:pw@host` → `neo4j://user:***@host` (credentials belong in `user`/`password`,
/// but a URI may still carry them).
pub fn redact_uri(uri: &str) -> String {
    crate::falkordb::redact_url(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo4rs::Neo4jErrorKind;

    #[test]
    fn error_codes_map_to_classes() {
        let retry = FailureClass::Retryable { retry_after: None };
        let deadlock = "Neo.TransientError.Transaction.DeadlockDetected";
        assert_eq!(classify_kind(Neo4jErrorKind::from(deadlock)), retry);
        let unauthorized = "Neo.ClientError.Security.Unauthorized";
        assert_eq!(
            classify_kind(Neo4jErrorKind::from(unauthorized)),
            FailureClass::Run
        );
        let syntax = "Neo.ClientError.Statement.SyntaxError";
        assert_eq!(
            classify_kind(Neo4jErrorKind::from(syntax)),
            FailureClass::Record
        );
        let constraint = "Neo.ClientError.Schema.ConstraintValidationFailed";
        assert_eq!(
            classify_kind(Neo4jErrorKind::from(constraint)),
            FailureClass::Record
        );
        assert_eq!(classify(&neo4rs::Error::ConnectionError), retry);
    }

    #[test]
    fn settings_never_show_the_password() {
        let settings = Neo4jSettings {
            uri: "neo4j://localhost:7687".into(),
            user: "neo4j".into(),
            password: "hunter2".into(),
            database: None,
            max_connections: 4,
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
