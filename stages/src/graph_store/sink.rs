//! The graph store sink: one batch of records → per-record validation → UNWIND statements
//! → one store write; bad records fail alone, a store error fails (and, when transient,
//! retries) the batch as a unit.

use super::GraphBackend;
use super::cypher::{GraphWrite, WriteOptions};
use pipeline::runtime::StageNotes;
use pipeline::{InputEnd, Payload, Record, Sink, StageError, Written, async_trait};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct GraphSink {
    backend: Arc<dyn GraphBackend>,
    stage: String,
    batch: usize,
    options: WriteOptions,
    /// Chunk nodes are written (else `Embedded` records are refused).
    chunk_nodes: bool,
    /// Size of the chunk vector index, when there is one.
    dimensions: Option<usize>,
    notes: StageNotes,
    records_written: AtomicU64,
}

impl GraphSink {
    pub fn new(
        backend: Arc<dyn GraphBackend>,
        stage: &str,
        batch: usize,
        options: WriteOptions,
        dimensions: Option<usize>,
        notes: StageNotes,
    ) -> GraphSink {
        GraphSink {
            backend,
            stage: stage.to_string(),
            batch: batch.max(1),
            chunk_nodes: options.chunk_mentions,
            options,
            dimensions,
            notes,
            records_written: AtomicU64::new(0),
        }
    }

    /// Validates every record into one [`GraphWrite`]; the rejected ones with their reason.
    fn prepare(&self, batch: &[Record]) -> (GraphWrite, Vec<(usize, StageError)>) {
        let mut write = GraphWrite::new(self.backend.dialect());
        let mut failed = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let added = match &record.payload {
                Payload::Graph(graph) => write.add_graph(graph, &record.provenance),
                Payload::Embedded(embedded) if self.chunk_nodes => {
                    write.add_chunk(&record.id, embedded, &record.provenance, self.dimensions)
                }
                Payload::Embedded(_) => Err(
                    "an Embedded record reached a sink with `chunk_nodes: never` (set \
                     `chunk_nodes: always`, or do not route embeddings here)"
                        .to_string(),
                ),
                other => Err(format!(
                    "a graph store takes Graph (and Embedded) records, not {}",
                    other.kind().name()
                )),
            };
            if let Err(reason) = added {
                failed.push((
                    index,
                    StageError::record(format!(
                        "stage `{}`: record {}: {reason}",
                        self.stage, record.id
                    )),
                ));
            }
        }
        (write, failed)
    }
}

#[async_trait]
impl Sink for GraphSink {
    fn batch_size(&self) -> usize {
        self.batch
    }

    async fn write(&self, batch: &[Record]) -> Result<Written, StageError> {
        let (write, failed) = self.prepare(batch);
        let counts = write.counts();
        if !write.is_empty() {
            let stats = self.backend.write(write.statements(&self.options)).await?;
            if let Some(stats) = stats {
                self.notes.count("nodes_created", stats.nodes_created);
                self.notes
                    .count("relationships_created", stats.relationships_created);
            }
        }
        self.notes.count("entity_rows", counts.entities as u64);
        self.notes.count("relation_rows", counts.relations as u64);
        if counts.chunks > 0 {
            self.notes.count("chunk_rows", counts.chunks as u64);
        }
        if !failed.is_empty() {
            self.notes.count("rejected_records", failed.len() as u64);
            for (_, error) in failed.iter().take(1) {
                tracing::warn!("{}", error.message);
            }
        }
        self.records_written
            .fetch_add((batch.len() - failed.len()) as u64, Relaxed);
        Ok(Written::durable().with_failures(failed))
    }

    async fn finish(&self, end: &InputEnd) -> Result<(), StageError> {
        let written = self.records_written.load(Relaxed);
        if end.is_complete() {
            self.notes.note(format!(
                "{written} records written to {}",
                self.backend.describe()
            ));
        } else {
            // Every batch was committed as it went: what is there is consistent, only partial.
            self.notes.note(format!(
                "input {}: {} holds the {written} records committed before the end; a re-run \
                 completes it (writes are idempotent)",
                end.describe(),
                self.backend.describe()
            ));
        }
        Ok(())
    }
}
