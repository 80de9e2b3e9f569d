//! `pipeline`: the core of `pipe`. Records, stage traits, the registry, YAML config loading,
//! topology checks and the runtime. It knows no concrete stage and no vendor SDK.

pub mod config;
pub mod error;
pub mod index;
pub mod policy;
pub mod record;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod stage;

pub use config::{Diagnostic, Diagnostics, LoadOptions, Plan, YamlJson, load};
pub use error::{ErrorClass, Rejected, StageError};
pub use record::{
    Chunk, Document, Embedded, Entity, Graph, KindSet, Mention, Payload, PayloadKind, Provenance,
    Record, Relation,
};
pub use registry::Registry;
pub use stage::{
    Aggregator, BatchProcessor, Batching, BuildContext, BuiltStage, ConfigIssue, Facts, Finished,
    InputEnd, Processor, Produces, Role, Sink, Source, StageConfig, Transform, Written,
};

/// Re-exported so stage crates use the same versions as the core.
pub use async_trait::async_trait;
pub use futures;
