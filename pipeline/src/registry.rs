//! The registry of stage kinds: built-ins are added by one explicit list in the `stages` crate,
//! and an outside crate adds its own with `register::<MyConfig>()`.

use crate::error::StageError;
use crate::record::KindSet;
use crate::stage::{BuildContext, BuiltStage, ConfigIssue, Produces, Role, StageConfig};
use async_trait::async_trait;
use marked_yaml::{FromNodeError, Node};
use schemars::{Schema, generate::SchemaGenerator};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Static facts about a kind, for validation, `list-stages` and `schema`.
#[derive(Clone, Debug)]
pub struct KindInfo {
    pub kind: &'static str,
    pub description: &'static str,
    pub role: Role,
    pub accepts: KindSet,
    pub produces: Produces,
    /// `concurrency` when the YAML does not say.
    pub default_concurrency: usize,
}

/// A parsed, type-erased stage config.
#[async_trait]
pub trait ErasedConfig: Send + Sync {
    fn validate(&self) -> Vec<ConfigIssue>;
    fn providers(&self) -> Vec<(String, String)>;
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError>;
    async fn open_vector_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::VectorIndex>, StageError>>;
    async fn open_graph_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::GraphIndex>, StageError>>;
    async fn open_embedder(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::TextEmbedder>, StageError>>;
}

#[async_trait]
impl<T: StageConfig> ErasedConfig for T {
    fn validate(&self) -> Vec<ConfigIssue> {
        StageConfig::validate(self)
    }
    fn providers(&self) -> Vec<(String, String)> {
        StageConfig::providers(self)
    }
    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        StageConfig::build(self, ctx).await
    }
    async fn open_vector_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::VectorIndex>, StageError>> {
        StageConfig::open_vector_index(self, ctx).await
    }
    async fn open_graph_index(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::GraphIndex>, StageError>> {
        StageConfig::open_graph_index(self, ctx).await
    }
    async fn open_embedder(
        &self,
        ctx: &BuildContext,
    ) -> Option<Result<Arc<dyn crate::index::TextEmbedder>, StageError>> {
        StageConfig::open_embedder(self, ctx).await
    }
}

pub(crate) trait ErasedKind: Send + Sync {
    fn info(&self) -> &KindInfo;
    fn parse(&self, node: &Node) -> Result<Box<dyn ErasedConfig>, FromNodeError>;
    fn schema_ref(&self, generator: &mut SchemaGenerator) -> Schema;
    fn schema(&self) -> Schema;
}

struct Kind<T> {
    info: KindInfo,
    _config: PhantomData<fn() -> T>,
}

impl<T: StageConfig> ErasedKind for Kind<T> {
    fn info(&self) -> &KindInfo {
        &self.info
    }
    fn parse(&self, node: &Node) -> Result<Box<dyn ErasedConfig>, FromNodeError> {
        // Free-form `YamlJson` fields find their YAML types in this node (see `yaml_json`).
        let config: T =
            crate::config::yaml_json::with_source(node, || marked_yaml::from_node(node))?;
        Ok(Box::new(config))
    }
    fn schema_ref(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<T>()
    }
    fn schema(&self) -> Schema {
        schemars::schema_for!(T)
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ErasedKind>>,
    /// Wire protocols `resources.providers.*.kind` may name, with a line of description.
    provider_kinds: BTreeMap<&'static str, &'static str>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a stage kind. A later registration of the same `KIND` replaces the earlier one, so
    /// an outside crate can override a built-in.
    pub fn register<T: StageConfig>(&mut self) -> &mut Self {
        let info = KindInfo {
            kind: T::KIND,
            description: T::DESCRIPTION,
            role: T::ROLE,
            accepts: T::accepts(),
            produces: T::produces(),
            default_concurrency: T::DEFAULT_CONCURRENCY,
        };
        self.kinds.insert(
            T::KIND,
            Arc::new(Kind::<T> {
                info,
                _config: PhantomData,
            }),
        );
        self
    }

    /// Declares a provider kind (a wire protocol the stages can speak).
    pub fn register_provider_kind(
        &mut self,
        kind: &'static str,
        description: &'static str,
    ) -> &mut Self {
        self.provider_kinds.insert(kind, description);
        self
    }

    pub fn provider_kinds(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.provider_kinds.iter().map(|(k, d)| (*k, *d))
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindInfo> {
        self.kinds.values().map(|k| k.info())
    }

    pub fn info(&self, kind: &str) -> Option<&KindInfo> {
        self.kinds.get(kind).map(|k| k.info())
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn ErasedKind>> {
        self.kinds.get(kind)
    }

    /// JSON Schema of one kind's `config`.
    pub fn config_schema(&self, kind: &str) -> Option<Schema> {
        self.kinds.get(kind).map(|k| k.schema())
    }

    pub(crate) fn schema_refs(
        &self,
        generator: &mut SchemaGenerator,
    ) -> Vec<(&'static str, Schema)> {
        self.kinds
            .values()
            .map(|k| (k.info().kind, k.schema_ref(generator)))
            .collect()
    }
}
