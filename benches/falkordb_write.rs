//! Nodes + relationships per second into a real FalkorDB, side by side in one run:
//!   1. the `falkordb` sink as it runs (UNWIND-batched MERGE, one round trip per batch),
//!   2. the same Cypher one row per query, one round trip per query (the naive client),
//!   3. one row per query, but all queries of a batch pipelined in one round trip (to tell the
//!      server's per-query cost from the network's).
//!
//! Every mode writes the same records into a fresh graph and ends with the same node and
//! relationship counts (checked).
//!
//!   eval "$(scripts/falkordb.sh start)"
//!   cargo bench --bench falkordb_write            # BENCH_CHUNKS=2000 by default
//!
//! Without FALKORDB_URL it says so and exits.

use connectors::FalkorClient;
use pipeline::record::stable_id;
use pipeline::{
    BuildContext, BuiltStage, Entity, Graph, Mention, Payload, Provenance, Record, Relation,
    StageConfig,
};
use serde_json::{Map, Value, json};
use stages::graph_store::cypher::{Dialect, GraphWrite, WriteOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

// The allocator of the `pipe` binary (`src/main.rs`): the bench measures what pipe runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 500;
const ENTITIES_PER_CHUNK: usize = 10;
const RELATIONS_PER_CHUNK: usize = 10;

/// `chunks` extraction records: 10 entities and 10 relations each, drawn from a vocabulary
/// large enough that most nodes are new (so rows ≈ nodes and no mode wins by deduplication).
fn records(chunks: usize) -> Vec<Record> {
    let vocabulary = (chunks * ENTITIES_PER_CHUNK) as u64;
    let types = ["Person", "Equipment", "SpaceCraft", "Place", "Procedure"];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..chunks)
        .map(|c| {
            let chunk_id = format!("chunk-{c}");
            let mention = Mention {
                document_id: format!("doc-{}", c / 50),
                chunk_id: chunk_id.clone(),
                source_path: Some(format!("doc-{}.txt", c / 50)),
                char_span: None,
            };
            let entities: Vec<Entity> = (0..ENTITIES_PER_CHUNK)
                .map(|_| {
                    let k = next() % vocabulary;
                    let entity_type = types[(k % types.len() as u64) as usize];
                    let name = format!("entity {k}");
                    Entity {
                        id: stable_id(&[b"entity", entity_type.as_bytes(), name.as_bytes()]),
                        name,
                        entity_type: entity_type.into(),
                        aliases: vec![format!("E{k}")],
                        descriptions: vec![format!("seen in {chunk_id}")],
                        properties: Map::new(),
                        confidence: Some(0.8),
                        mentions: vec![mention.clone()],
                    }
                })
                .collect();
            let relations = (0..RELATIONS_PER_CHUNK)
                .map(|i| {
                    let s = &entities[i % entities.len()];
                    let t = &entities[(i * 7 + 3) % entities.len()];
                    let relation_type = ["MENTIONS", "CO_OCCURS", "PART_OF"][i % 3];
                    Relation {
                        id: stable_id(&[
                            b"relation",
                            s.id.as_bytes(),
                            relation_type.as_bytes(),
                            t.id.as_bytes(),
                        ]),
                        source: s.id.clone(),
                        target: t.id.clone(),
                        relation_type: relation_type.into(),
                        descriptions: vec![],
                        properties: Map::new(),
                        confidence: None,
                        weight: 1.0,
                        mentions: vec![mention.clone()],
                    }
                })
                .collect();
            Record::new(
                chunk_id.clone(),
                Provenance {
                    document_id: mention.document_id.clone(),
                    ..Provenance::default()
                },
                Payload::Graph(Graph {
                    extractor: "bench".into(),
                    entities,
                    relations,
                }),
            )
        })
        .collect()
}

async fn count(client: &FalkorClient, cypher: &str) -> i64 {
    client
        .ro_query(cypher, &Map::new())
        .await
        .unwrap()
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

struct Outcome {
    mode: &'static str,
    elapsed: Duration,
    queries: usize,
    nodes: i64,
    relationships: i64,
}

impl Outcome {
    fn items_per_s(&self) -> f64 {
        (self.nodes + self.relationships) as f64 / self.elapsed.as_secs_f64()
    }
}

async fn fresh(url: &str, graph: &str) -> FalkorClient {
    let client = FalkorClient::connect(url, graph).await.unwrap();
    client.delete_graph().await.unwrap();
    client
}

/// The sink as a pipeline runs it (built from its YAML config: schema, health check).
async fn with_sink(url: &str, graph: &str, data: &[Record]) -> Outcome {
    let client = fresh(url, graph).await;
    let config: stages::falkordb::FalkorDbConfig =
        serde_json::from_value(json!({ "url": url, "graph": graph, "batch": BATCH })).unwrap();
    let dir = std::env::temp_dir();
    let ctx = BuildContext::standalone("bench", &dir);
    let BuiltStage::Sink(sink) = config.build(&ctx).await.unwrap() else {
        panic!("falkordb is a sink");
    };
    let queries: usize = data
        .chunks(BATCH)
        .map(|batch| statements(batch, usize::MAX).len())
        .sum();
    let started = Instant::now();
    for batch in data.chunks(BATCH) {
        let written = sink.write(batch).await.unwrap();
        assert!(written.failed.is_empty());
    }
    let elapsed = started.elapsed();
    finish(&client, "UNWIND batches (the sink)", elapsed, queries).await
}

fn statements(batch: &[Record], rows: usize) -> Vec<(String, Map<String, Value>)> {
    let mut write = GraphWrite::new(Dialect::FalkorDb);
    for record in batch {
        if let Payload::Graph(graph) = &record.payload {
            write.add_graph(graph, &record.provenance).unwrap();
        }
    }
    write
        .statements(&WriteOptions {
            chunk_mentions: false,
            rows_per_statement: rows.max(1),
        })
        .into_iter()
        .map(|s| s.into_pair())
        .collect()
}

/// One row per query; `pipelined`: a batch's queries in one round trip, else one each.
async fn one_row_per_query(url: &str, graph: &str, data: &[Record], pipelined: bool) -> Outcome {
    let client = fresh(url, graph).await;
    stages::falkordb::create_schema(&client, &Default::default())
        .await
        .unwrap();
    let mut queries = 0;
    let started = Instant::now();
    for batch in data.chunks(BATCH) {
        let statements = statements(batch, 1);
        queries += statements.len();
        if pipelined {
            client.write(&statements, false).await.unwrap();
        } else {
            for (cypher, params) in &statements {
                client.query(cypher, params).await.unwrap();
            }
        }
    }
    let elapsed = started.elapsed();
    let mode = if pipelined {
        "one row per query, pipelined"
    } else {
        "one row per query"
    };
    finish(&client, mode, elapsed, queries).await
}

async fn finish(
    client: &FalkorClient,
    mode: &'static str,
    elapsed: Duration,
    queries: usize,
) -> Outcome {
    let outcome = Outcome {
        mode,
        elapsed,
        queries,
        nodes: count(client, "MATCH (n) RETURN count(n)").await,
        relationships: count(client, "MATCH ()-[r]->() RETURN count(r)").await,
    };
    client.delete_graph().await.unwrap();
    outcome
}

fn main() {
    let Ok(url) = std::env::var("FALKORDB_URL") else {
        println!(
            "falkordb_write: skipped: FALKORDB_URL not set (eval \"$(scripts/falkordb.sh start)\")"
        );
        return;
    };
    // `cargo bench` passes `--bench`; nothing else to parse.
    let chunks: usize = std::env::var("BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let data = Arc::new(records(chunks));
        let graph = format!("pipe_bench_{}", std::process::id());
        // Warm-up: the server's query cache and allocator.
        with_sink(&url, &graph, &data[..BATCH.min(data.len())]).await;
        let mut sink_runs = Vec::new();
        for _ in 0..3 {
            sink_runs.push(with_sink(&url, &graph, &data).await);
        }
        sink_runs.sort_by_key(|a| a.elapsed);
        let sink = sink_runs.swap_remove(1); // the median of three
        let naive = one_row_per_query(&url, &graph, &data, false).await;
        let pipelined = one_row_per_query(&url, &graph, &data, true).await;
        for other in [&naive, &pipelined] {
            assert_eq!(
                (other.nodes, other.relationships),
                (sink.nodes, sink.relationships),
                "every mode must end with the same graph"
            );
        }
        println!(
            "\nFalkorDB writes: {chunks} extraction records ({} entity + {} relation rows), \
             {} nodes + {} relationships, fresh graph per mode, batches of {BATCH} records",
            chunks * ENTITIES_PER_CHUNK,
            chunks * RELATIONS_PER_CHUNK,
            sink.nodes,
            sink.relationships
        );
        println!(
            "{:<32} {:>14} {:>10} {:>9}",
            "mode", "nodes+rels/s", "time", "queries"
        );
        for o in [&sink, &naive, &pipelined] {
            println!(
                "{:<32} {:>14.0} {:>9.2}s {:>9}",
                o.mode,
                o.items_per_s(),
                o.elapsed.as_secs_f64(),
                o.queries
            );
        }
        println!(
            "UNWIND batches vs one row per query: {:.1}x (vs pipelined single rows: {:.1}x)",
            sink.items_per_s() / naive.items_per_s(),
            sink.items_per_s() / pipelined.items_per_s()
        );
    });
}
