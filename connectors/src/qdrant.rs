//! Qdrant over gRPC (the official `qdrant-client`): health, collections, payload indexes,
//! upserts acknowledged with `wait`, search, counts. Errors are classified here, once, like the
//! HTTP providers' (see [`classify_code`]); nothing here retries or sleeps.

use crate::failure::{Failure, FailureClass};
use qdrant_client::qdrant::{
    CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    FacetCountsBuilder, FieldType, PointStruct, Query, QueryPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder, facet_value, vectors_config,
};
use qdrant_client::{Qdrant, QdrantError};
use std::time::Duration;

pub use qdrant_client::qdrant::Distance;

/// Point ids are UUIDv5 in the DNS namespace of the record id: the same record always lands on
/// the same point, so re-running a pipeline overwrites instead of adding.
pub fn point_id(record_id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_DNS, record_id.as_bytes()).to_string()
}

/// Parses `cosine | dot | euclid | manhattan` (case-insensitive).
pub fn parse_distance(name: &str) -> Option<Distance> {
    match name.to_ascii_lowercase().as_str() {
        "cosine" => Some(Distance::Cosine),
        "dot" => Some(Distance::Dot),
        "euclid" | "euclidean" => Some(Distance::Euclid),
        "manhattan" => Some(Distance::Manhattan),
        _ => None,
    }
}

pub fn distance_name(distance: Distance) -> &'static str {
    match distance {
        Distance::Cosine => "cosine",
        Distance::Dot => "dot",
        Distance::Euclid => "euclid",
        Distance::Manhattan => "manhattan",
        Distance::UnknownDistance => "unknown",
    }
}

/// How to reach a collection.
#[derive(Clone)]
pub struct QdrantSettings {
    /// gRPC URL (`http://host:6334`; 6333 is the REST port).
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    /// Deadline of one request (a hung server must not hang the run).
    pub timeout: Duration,
}

impl std::fmt::Debug for QdrantSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantSettings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A point to upsert: its id (see [`point_id`]), dense vector and JSON payload.
#[derive(Clone, Debug)]
pub struct Point {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// A search result: similarity and payload.
#[derive(Clone, Debug)]
pub struct ScoredPayload {
    pub score: f32,
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// The dense vector parameters of an existing collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorShape {
    pub size: u64,
    pub distance: Distance,
}

pub struct QdrantStore {
    client: Qdrant,
    settings: QdrantSettings,
}

impl QdrantStore {
    /// Builds the client; nothing is sent yet (see [`QdrantStore::health`]).
    pub fn new(settings: QdrantSettings) -> Result<QdrantStore, Failure> {
        let mut config = qdrant_client::config::QdrantConfig::from_url(&settings.url)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // Its own check prints to stdout and blocks a thread; `health` does it instead.
            .skip_compatibility_check();
        if let Some(key) = &settings.api_key {
            config.set_api_key(key);
        }
        let client = Qdrant::new(config).map_err(|e| classify(&settings.url, "connect", e))?;
        Ok(QdrantStore { client, settings })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    pub fn collection(&self) -> &str {
        &self.settings.collection
    }

    /// The server's version, or why it cannot be reached.
    pub async fn health(&self) -> Result<String, Failure> {
        self.client
            .health_check()
            .await
            .map(|reply| reply.version)
            .map_err(|e| self.classify("health check", e))
    }

    /// The collection's dense vector size and distance; `None` when it does not exist.
    pub async fn vector_shape(&self) -> Result<Option<VectorShape>, Failure> {
        let name = &self.settings.collection;
        let exists = self
            .client
            .collection_exists(name)
            .await
            .map_err(|e| self.classify("collection check", e))?;
        if !exists {
            return Ok(None);
        }
        let info = self
            .client
            .collection_info(name)
            .await
            .map_err(|e| self.classify("collection info", e))?;
        let params = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match params {
            Some(vectors_config::Config::Params(p)) => Ok(Some(VectorShape {
                size: p.size,
                distance: Distance::try_from(p.distance).unwrap_or(Distance::UnknownDistance),
            })),
            Some(vectors_config::Config::ParamsMap(_)) => Err(Failure::new(
                FailureClass::Run,
                None,
                format!(
                    "Qdrant collection `{name}` at {} has named vectors; pipe writes one \
                     unnamed dense vector per point: use another collection",
                    self.settings.url
                ),
            )),
            None => Err(Failure::new(
                FailureClass::Run,
                None,
                format!(
                    "Qdrant collection `{name}` at {} has no dense vector config",
                    self.settings.url
                ),
            )),
        }
    }

    /// Creates the collection. One created meanwhile by someone else is fine.
    pub async fn create_collection(&self, shape: VectorShape) -> Result<(), Failure> {
        let request = CreateCollectionBuilder::new(&self.settings.collection)
            .vectors_config(VectorParamsBuilder::new(shape.size, shape.distance));
        match self.client.create_collection(request).await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(self.classify("create collection", e)),
        }
    }

    /// A keyword payload index on `field` (idempotent).
    pub async fn keyword_index(&self, field: &str) -> Result<(), Failure> {
        let request = CreateFieldIndexCollectionBuilder::new(
            &self.settings.collection,
            field,
            FieldType::Keyword,
        )
        .wait(true);
        self.client
            .create_field_index(request)
            .await
            .map(|_| ())
            .map_err(|e| self.classify("create payload index", e))
    }

    /// Names of the payload fields that have an index, sorted.
    pub async fn payload_indexes(&self) -> Result<Vec<String>, Failure> {
        let info = self
            .client
            .collection_info(&self.settings.collection)
            .await
            .map_err(|e| self.classify("collection info", e))?;
        let mut fields: Vec<String> = info
            .result
            .map(|r| r.payload_schema.into_keys().collect())
            .unwrap_or_default();
        fields.sort();
        Ok(fields)
    }

    /// Upserts `points` in one request and waits until they are applied (durable).
    pub async fn upsert(&self, points: Vec<Point>) -> Result<(), Failure> {
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            structs.push(PointStruct::new(
                point.id,
                point.vector,
                qdrant_client::Payload::from(point.payload),
            ));
        }
        let request = UpsertPointsBuilder::new(&self.settings.collection, structs).wait(true);
        self.client
            .upsert_points(request)
            .await
            .map(|_| ())
            .map_err(|e| self.classify("upsert", e))
    }

    /// Exact number of points.
    pub async fn count(&self) -> Result<u64, Failure> {
        let request = CountPointsBuilder::new(&self.settings.collection).exact(true);
        self.client
            .count(request)
            .await
            .map(|r| r.result.map_or(0, |c| c.count))
            .map_err(|e| self.classify("count", e))
    }

    /// The `k` points nearest to `vector`, closest first, with their payloads.
    pub async fn nearest(&self, vector: &[f32], k: u64) -> Result<Vec<ScoredPayload>, Failure> {
        let request = QueryPointsBuilder::new(&self.settings.collection)
            .query(Query::new_nearest(vector.to_vec()))
            .limit(k)
            .with_payload(true);
        let response = self
            .client
            .query(request)
            .await
            .map_err(|e| self.classify("search", e))?;
        Ok(response
            .result
            .into_iter()
            .map(|point| ScoredPayload {
                score: point.score,
                payload: point
                    .payload
                    .into_iter()
                    .map(|(k, v)| (k, v.into_json()))
                    .collect(),
            })
            .collect())
    }

    /// Distinct string values of a keyword-indexed payload field, with their point counts.
    pub async fn facet(&self, field: &str, limit: u64) -> Result<Vec<(String, u64)>, Failure> {
        let request = FacetCountsBuilder::new(&self.settings.collection, field)
            .limit(limit)
            .exact(true);
        let response = self
            .client
            .facet(request)
            .await
            .map_err(|e| self.classify("facet", e))?;
        Ok(response
            .hits
            .into_iter()
            .filter_map(|hit| match hit.value.and_then(|v| v.variant) {
                Some(facet_value::Variant::StringValue(s)) => Some((s, hit.count)),
                _ => None,
            })
            .collect())
    }

    fn classify(&self, what: &str, error: QdrantError) -> Failure {
        classify(&self.settings.url, what, error)
    }
}

fn already_exists(error: &QdrantError) -> bool {
    match error {
        QdrantError::ResponseError { status } => {
            status.code() == tonic::Code::AlreadyExists
                || status.message().contains("already exists")
        }
        _ => false,
    }
}

/// What a gRPC status means for the pipeline: a server that is restarting, overloaded or slow
/// is worth another try; bad credentials stop the run; a request the server refuses as invalid
/// fails the batch it carried.
pub fn classify_code(code: tonic::Code) -> FailureClass {
    use tonic::Code;
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled => FailureClass::Retryable { retry_after: None },
        Code::Unauthenticated | Code::PermissionDenied => FailureClass::Run,
        // A deleted collection: nothing further will land.
        Code::NotFound => FailureClass::Run,
        _ => FailureClass::Record,
    }
}

fn classify(url: &str, what: &str, error: QdrantError) -> Failure {
    match error {
        QdrantError::ResponseError { status } => {
            let class = classify_code(status.code());
            let hint = if status.message().starts_with("Failed to connect") {
                " (is Qdrant running? the URL must name its gRPC port, 6334 by default, not \
                 the REST port 6333)"
            } else {
                ""
            };
            Failure::new(
                class,
                None,
                format!(
                    "Qdrant {what} at {url} failed: {:?}: {}{hint}",
                    status.code(),
                    status.message()
                ),
            )
        }
        QdrantError::ResourceExhaustedError {
            status,
            retry_after_seconds,
        } => Failure::new(
            FailureClass::Retryable {
                retry_after: Some(Duration::from_secs(retry_after_seconds)),
            },
            None,
            format!(
                "Qdrant {what} at {url}: resource exhausted: {}",
                status.message()
            ),
        ),
        QdrantError::InvalidUri(e) => Failure::new(
            FailureClass::Run,
            None,
            format!("invalid Qdrant URL `{url}`: {e}"),
        ),
        QdrantError::Io(e) => Failure::new(
            FailureClass::Retryable { retry_after: None },
            None,
            format!("Qdrant {what} at {url}: {e}"),
        ),
        other => Failure::new(
            FailureClass::Record,
            None,
            format!("Qdrant {what} at {url}: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_uuid_v5_of_the_record_id_in_the_dns_namespace() {
        let id = point_id("chunk-1");
        assert_eq!(id, point_id("chunk-1"));
        assert_ne!(id, point_id("chunk-2"));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        // Python's uuid.uuid5(uuid.NAMESPACE_DNS, "chunk-1").
        assert_eq!(id, "45b4c7fb-c1ff-51c2-bb05-40d64e79c0ad");
    }

    #[test]
    fn grpc_codes_map_to_classes() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(
                matches!(classify_code(code), FailureClass::Retryable { .. }),
                "{code:?}"
            );
        }
        assert_eq!(classify_code(Code::Unauthenticated), FailureClass::Run);
        assert_eq!(classify_code(Code::PermissionDenied), FailureClass::Run);
        assert_eq!(classify_code(Code::InvalidArgument), FailureClass::Record);
    }

    #[test]
    fn distances_parse() {
        assert_eq!(parse_distance("Cosine"), Some(Distance::Cosine));
        assert_eq!(parse_distance("dot"), Some(Distance::Dot));
        assert_eq!(parse_distance("hamming"), None);
        assert_eq!(distance_name(Distance::Euclid), "euclid");
    }
}
