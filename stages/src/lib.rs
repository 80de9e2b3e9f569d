//! Built-in stages of `pipe`, one folder per kind. `register_builtin` is the one list of them.

pub mod blackhole;
pub mod chunk;
pub mod contextualize;
pub mod embed;
pub mod falkordb;
pub mod files;
pub mod generate;
pub mod graph_store;
pub mod jsonl;
pub mod kg_extract;
pub mod llm;
pub mod local_store;
pub mod neo4j;
pub mod nlp_extract;
pub mod normalize;
pub mod provider;
pub mod qdrant;
pub mod resolve;
pub mod tokens;

use pipeline::Registry;

/// Adds every built-in stage kind to a registry.
pub fn register_builtin(registry: &mut Registry) {
    registry
        .register::<files::FilesConfig>()
        .register::<generate::GenerateConfig>()
        .register::<chunk::ChunkConfig>()
        .register::<jsonl::JsonlConfig>()
        .register::<llm::LlmConfig>()
        .register::<embed::EmbedConfig>()
        .register::<kg_extract::KgExtractConfig>()
        .register::<contextualize::ContextualizeConfig>()
        .register::<nlp_extract::NlpExtractConfig>()
        .register::<normalize::NormalizeConfig>()
        .register::<resolve::ResolveConfig>()
        .register::<local_store::LocalStoreConfig>()
        .register::<qdrant::QdrantConfig>()
        .register::<blackhole::BlackholeConfig>()
        .register::<falkordb::FalkorDbConfig>()
        .register::<neo4j::Neo4jConfig>();
    provider::register_provider_kinds(registry);
}

/// A registry with the built-in stages.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    register_builtin(&mut registry);
    registry
}
