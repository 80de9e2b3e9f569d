//! Built-in stages of `pipe`, one folder per kind. `register_builtin` is the one list of them.

pub mod blackhole;
pub mod chunk;
pub mod embed;
pub mod files;
pub mod generate;
pub mod jsonl;
pub mod llm;
pub mod provider;
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
        .register::<blackhole::BlackholeConfig>();
    provider::register_provider_kinds(registry);
}

/// A registry with the built-in stages.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    register_builtin(&mut registry);
    registry
}
