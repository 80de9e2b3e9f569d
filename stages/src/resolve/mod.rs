//! `resolve` aggregator: entity resolution across a whole run. It holds every normalised
//! fragment, and only when its input is complete merges them by id and then merges
//! near-duplicates — folded names similar by Jaro-Winkler *and* normalised Levenshtein
//! (`strsim`), same type unless configured, never across different numbers ("tank 1" /
//! "tank 2") or different short words ("DELTA-P" / "DELTA-V", "LM side" / "LMP side") — and,
//! when an embedder is configured (`embedding:`, or [`Resolve::with_embedder`]), by the
//! cosine of the names' embeddings. Every merge is reported (names, scores, rule). The merged graph
//! is emitted in fragments: entities first, then relations, `batch` per record; a merged
//! entity keeps the id of its canonical entity and relations are re-pointed. On an input
//! that did not end complete (interrupted, failed, budget) nothing is emitted: every held
//! record is dead-lettered with the reason, so a partial entity set is never published as if
//! it were the whole.

use crate::embed::{EmbedConfig, Fallback};
use crate::normalize::default_symmetric;
use crate::normalize::fold::{fold_name, numbers, relation_label};
use crate::normalize::merge::{GraphMerge, MergedEntity};
use pipeline::index::TextEmbedder;
use pipeline::runtime::StageNotes;
use pipeline::{
    Aggregator, BuildContext, BuiltStage, ConfigIssue, Finished, Graph, InputEnd, KindSet, Payload,
    PayloadKind, Produces, Provenance, Record, Role, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveConfig {
    /// Merge names at least this similar by Jaro-Winkler (0..1, on folded names)...
    #[serde(default = "default_jaro_winkler")]
    pub jaro_winkler: f64,
    /// ...and at least this similar by normalised Levenshtein (0..1). Both must hold.
    #[serde(default = "default_levenshtein")]
    pub levenshtein: f64,
    /// Names with fewer characters (folded) never merge by similarity: short acronyms differ
    /// by one letter ("CM" / "SM").
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Never merge names whose numbers differ ("O2 tank 1" / "O2 tank 2").
    #[serde(default = "yes")]
    pub same_numbers: bool,
    /// Compare entities of different types too (default: same type only).
    #[serde(default)]
    pub across_types: bool,
    /// Entities (then relations) per emitted record.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Relation types without a direction (as in `normalize`): ends ordered by id.
    #[serde(default = "default_symmetric")]
    pub symmetric: Vec<String>,
    /// Merges listed one by one in the run summary; all are logged and counted.
    #[serde(default = "default_report_merges")]
    pub report_merges: usize,
    /// Also merge names that mean the same ("command module" / "mothership"): by the cosine
    /// of their embeddings. Off unless set.
    #[serde(default)]
    pub embedding: Option<ResolveEmbedding>,
}

/// `embedding:` of `resolve`: the embedder, set as in the `embed` stage, and the threshold.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveEmbedding {
    /// Least cosine similarity of two names' embeddings to merge them (0..1). No default:
    /// where "the same" begins depends on the model and the names.
    pub min_similarity: f32,
    /// `local` (default): all-MiniLM-L6-v2 in process, which must be installed (no fallback
    /// to feature hashing: it would merge by shared words, not meaning); `hashing` to choose
    /// that anyway; or a name from `resources.providers` (an embeddings API).
    #[serde(default = "default_embedding_provider")]
    pub provider: String,
    /// As in `embed`: the vector size of a provider model whose size is not known.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// As in `embed`: the local model's directory.
    #[serde(default)]
    pub model_dir: Option<String>,
    /// Names per embedding request (per forward pass for `local`).
    #[serde(default = "default_embedding_batch")]
    pub batch_size: usize,
}

fn default_embedding_provider() -> String {
    crate::embed::LOCAL.into()
}
fn default_embedding_batch() -> usize {
    64
}

impl ResolveEmbedding {
    /// The same embedder as an `embed` stage with these settings, never falling back.
    fn embed_config(&self) -> EmbedConfig {
        EmbedConfig {
            provider: self.provider.clone(),
            dimensions: self.dimensions,
            batch_size: Some(self.batch_size),
            max_batch_tokens: None,
            max_wait_ms: 0,
            max_input_tokens: None,
            text_field: "name".into(),
            model_dir: self.model_dir.clone(),
            // (Only `local` has a fallback; `embed` rejects one set for anything else.)
            fallback: if self.provider == crate::embed::LOCAL {
                Fallback::Error
            } else {
                Fallback::default()
            },
        }
    }
}

fn default_jaro_winkler() -> f64 {
    0.92
}
fn default_levenshtein() -> f64 {
    0.85
}
fn default_min_chars() -> usize {
    4
}
fn yes() -> bool {
    true
}
fn default_batch() -> usize {
    500
}
fn default_report_merges() -> usize {
    20
}

impl Default for ResolveConfig {
    fn default() -> Self {
        ResolveConfig {
            jaro_winkler: default_jaro_winkler(),
            levenshtein: default_levenshtein(),
            min_chars: default_min_chars(),
            same_numbers: true,
            across_types: false,
            batch: default_batch(),
            symmetric: default_symmetric(),
            report_merges: default_report_merges(),
            embedding: None,
        }
    }
}

#[async_trait]
impl StageConfig for ResolveConfig {
    const KIND: &'static str = "resolve";
    const DESCRIPTION: &'static str = "Merges the run's graph fragments and near-duplicate \
         entities (string similarity); emits only on complete input";
    const ROLE: Role = Role::Aggregate;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Graph])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Graph]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (field, value) in [
            ("jaro_winkler", self.jaro_winkler),
            ("levenshtein", self.levenshtein),
        ] {
            if !(0.0..=1.0).contains(&value) {
                issues.push(ConfigIssue::new(field, "must be between 0 and 1"));
            }
        }
        if self.batch == 0 {
            issues.push(ConfigIssue::new("batch", "must be at least 1"));
        }
        if let Some(embedding) = &self.embedding {
            if !(0.0..=1.0).contains(&embedding.min_similarity) {
                issues.push(ConfigIssue::new(
                    "embedding.min_similarity",
                    "must be between 0 and 1",
                ));
            }
            for issue in embedding.embed_config().validate() {
                issues.push(ConfigIssue::new(
                    format!("embedding.{}", issue.field),
                    issue.message,
                ));
            }
        }
        for (i, name) in self.symmetric.iter().enumerate() {
            if relation_label(name).is_none() {
                issues.push(ConfigIssue::new(
                    format!("symmetric.{i}"),
                    "has no ASCII letters or digits",
                ));
            }
        }
        issues
    }

    fn providers(&self) -> Vec<(String, String)> {
        self.embedding
            .iter()
            .flat_map(|e| e.embed_config().providers())
            .map(|(field, name)| (format!("embedding.{field}"), name))
            .collect()
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let mut resolve = Resolve::new(self.clone(), &ctx.stage_id, ctx.notes.clone());
        if let Some(embedding) = &self.embedding {
            let embedder = embedding
                .embed_config()
                .embedder(ctx)
                .await
                .map_err(|e| StageError::run(format!("embedding: {e}")))?;
            resolve = resolve.with_embedder(EmbeddingRule {
                embedder: Arc::new(embedder),
                min_similarity: embedding.min_similarity,
            });
        }
        Ok(BuiltStage::Aggregate(Box::new(resolve)))
    }
}

/// Merging by embedding similarity: the hook for an embedder (`embed`'s, or any
/// [`TextEmbedder`]).
pub struct EmbeddingRule {
    pub embedder: Arc<dyn TextEmbedder>,
    /// Least cosine similarity of two names' embeddings to merge them.
    pub min_similarity: f32,
}

/// Why two entities were merged.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    String { jaro_winkler: f64, levenshtein: f64 },
    Embedding { cosine: f32 },
}

/// One merge: `from` now goes by `into`'s id.
#[derive(Clone, Debug, PartialEq)]
pub struct Merge {
    pub from_id: String,
    pub from_name: String,
    pub into_id: String,
    pub into_name: String,
    pub entity_type: String,
    /// The entity `from` was found similar to (the canonical one, or another member).
    pub linked_to: String,
    pub rule: Rule,
}

impl Merge {
    pub fn describe(&self, config: &ResolveConfig, min_cosine: Option<f32>) -> String {
        let why = match &self.rule {
            Rule::String {
                jaro_winkler,
                levenshtein,
            } => format!(
                "string similarity: jaro-winkler {jaro_winkler:.3} ≥ {}, levenshtein \
                 {levenshtein:.3} ≥ {}",
                config.jaro_winkler, config.levenshtein
            ),
            Rule::Embedding { cosine } => format!(
                "embedding similarity: cosine {cosine:.3} ≥ {}",
                min_cosine.unwrap_or_default()
            ),
        };
        let via = if self.linked_to != self.into_name {
            format!(" (via `{}`)", self.linked_to)
        } else {
            String::new()
        };
        format!(
            "merged `{}` into `{}` ({}){via}: {why}",
            self.from_name, self.into_name, self.entity_type
        )
    }
}

pub struct Resolve {
    config: ResolveConfig,
    stage_id: String,
    notes: StageNotes,
    held: Vec<Record>,
    embedding: Option<EmbeddingRule>,
}

/// Union-find over entity indices.
struct Clusters(Vec<usize>);

impl Clusters {
    fn new(n: usize) -> Clusters {
        Clusters((0..n).collect())
    }
    fn root(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn join(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return false;
        }
        self.0[ra.max(rb)] = ra.min(rb);
        true
    }
}

struct Candidate<'a> {
    entity: &'a MergedEntity,
    name: String,
    folded: String,
    chars: usize,
}

/// Longest word whose spelling is taken as meaning: short words are acronyms or
/// designators, and one letter changes the thing ("DELTA-P" / "DELTA-V", "LM" / "LMP").
const SHORT_WORD_CHARS: usize = 3;

/// False when two folded names of as many words differ in a word of at most
/// [`SHORT_WORD_CHARS`] characters: string similarity says nothing about those. Numbers are
/// left to the `same_numbers` rule.
fn short_words_agree(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split(' ').collect(), b.split(' ').collect());
    let number = |w: &str| w.chars().all(|c| c.is_ascii_digit());
    a.len() != b.len()
        || a.iter().zip(&b).all(|(x, y)| {
            x == y
                || (number(x) && number(y))
                || x.chars().count().min(y.chars().count()) > SHORT_WORD_CHARS
        })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

impl Resolve {
    pub fn new(config: ResolveConfig, stage_id: &str, notes: StageNotes) -> Resolve {
        Resolve {
            config,
            stage_id: stage_id.to_string(),
            notes,
            held: Vec::new(),
            embedding: None,
        }
    }

    /// Also merge entities whose names' embeddings are at least `min_similarity` similar.
    pub fn with_embedder(mut self, rule: EmbeddingRule) -> Resolve {
        self.embedding = Some(rule);
        self
    }

    fn numbers_agree(&self, a: &str, b: &str) -> bool {
        !self.config.same_numbers || numbers(a) == numbers(b)
    }

    /// Near-duplicates among the merged entities, as merges into each cluster's canonical
    /// entity (most mentions, then the shorter name, then the smaller id).
    async fn find_merges(&self, graph: &GraphMerge) -> (Vec<Merge>, u64) {
        let mut groups: BTreeMap<&str, Vec<Candidate<'_>>> = BTreeMap::new();
        for entity in graph.entities.values() {
            let name = entity.name();
            let folded = fold_name(&name);
            let chars = folded.chars().count();
            if chars < self.config.min_chars {
                continue;
            }
            let group = if self.config.across_types {
                ""
            } else {
                entity.entity_type.as_str()
            };
            groups.entry(group).or_default().push(Candidate {
                entity,
                name,
                folded,
                chars,
            });
        }
        let mut merges = Vec::new();
        let mut embedding_failures = 0;
        for (_, mut group) in groups {
            // By length, so only names whose lengths allow the Levenshtein bound are compared:
            // similarity ≥ t needs the longer name at most len/t characters long.
            group.sort_by(|a, b| a.chars.cmp(&b.chars).then_with(|| a.folded.cmp(&b.folded)));
            let mut clusters = Clusters::new(group.len());
            // Per member: the link that brought it in (other index, rule).
            let mut links: Vec<Vec<(usize, Rule)>> = vec![Vec::new(); group.len()];
            for i in 0..group.len() {
                for j in i + 1..group.len() {
                    let (a, b) = (&group[i], &group[j]);
                    if (b.chars as f64) * self.config.levenshtein > a.chars as f64 {
                        break;
                    }
                    if !self.numbers_agree(&a.folded, &b.folded)
                        || !short_words_agree(&a.folded, &b.folded)
                    {
                        continue;
                    }
                    let jaro_winkler = strsim::jaro_winkler(&a.folded, &b.folded);
                    if jaro_winkler < self.config.jaro_winkler {
                        continue;
                    }
                    let levenshtein = strsim::normalized_levenshtein(&a.folded, &b.folded);
                    if levenshtein < self.config.levenshtein {
                        continue;
                    }
                    let rule = Rule::String {
                        jaro_winkler,
                        levenshtein,
                    };
                    clusters.join(i, j);
                    links[i].push((j, rule.clone()));
                    links[j].push((i, rule));
                }
            }
            if let Some(embedding) = &self.embedding {
                let batch = self
                    .config
                    .embedding
                    .as_ref()
                    .map_or(default_embedding_batch(), |e| e.batch_size)
                    .max(1);
                let names: Vec<String> = group.iter().map(|c| c.name.to_string()).collect();
                let mut vectors = Vec::with_capacity(group.len());
                for names in names.chunks(batch) {
                    let embedded = embedding.embedder.embed_texts(names).await;
                    // (An embedder that returns fewer vectors failed the rest.)
                    for i in 0..names.len() {
                        match embedded.get(i) {
                            Some(Ok(v)) => vectors.push(Some(v.clone())),
                            _ => {
                                embedding_failures += 1;
                                vectors.push(None);
                            }
                        }
                    }
                }
                for i in 0..group.len() {
                    for j in i + 1..group.len() {
                        let (Some(a), Some(b)) = (&vectors[i], &vectors[j]) else {
                            continue;
                        };
                        if clusters.root(i) == clusters.root(j)
                            || !self.numbers_agree(&group[i].folded, &group[j].folded)
                        {
                            continue;
                        }
                        let similarity = cosine(a, b);
                        if similarity >= embedding.min_similarity {
                            clusters.join(i, j);
                            let rule = Rule::Embedding { cosine: similarity };
                            links[i].push((j, rule.clone()));
                            links[j].push((i, rule));
                        }
                    }
                }
            }
            let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for i in 0..group.len() {
                let root = clusters.root(i);
                members.entry(root).or_default().push(i);
            }
            for (_, cluster) in members {
                if cluster.len() < 2 {
                    continue;
                }
                let canonical = *cluster
                    .iter()
                    .max_by(|&&a, &&b| {
                        let (x, y) = (&group[a], &group[b]);
                        x.entity
                            .support()
                            .cmp(&y.entity.support())
                            .then_with(|| y.chars.cmp(&x.chars))
                            .then_with(|| y.entity.id.cmp(&x.entity.id))
                    })
                    .unwrap_or(&cluster[0]);
                for &member in &cluster {
                    if member == canonical {
                        continue;
                    }
                    // Report the link to the canonical entity when there is one, else the
                    // first link that joined it.
                    let (other, rule) = links[member]
                        .iter()
                        .find(|(o, _)| *o == canonical)
                        .or_else(|| links[member].first())
                        .cloned()
                        .unwrap_or((canonical, Rule::Embedding { cosine: 0.0 }));
                    merges.push(Merge {
                        from_id: group[member].entity.id.clone(),
                        from_name: group[member].name.clone(),
                        into_id: group[canonical].entity.id.clone(),
                        into_name: group[canonical].name.clone(),
                        entity_type: group[member].entity.entity_type.clone(),
                        linked_to: group[other].name.clone(),
                        rule,
                    });
                }
            }
        }
        (merges, embedding_failures)
    }

    fn fragment_id(&self, what: &str, ids: &[&str]) -> String {
        let mut parts: Vec<&[u8]> = vec![b"resolve", self.stage_id.as_bytes(), what.as_bytes()];
        parts.extend(ids.iter().map(|id| id.as_bytes()));
        record::stable_id(&parts)
    }

    /// The merged graph, in records of `batch` entities, then `batch` relations.
    fn fragments(&self, graph: Graph) -> Vec<Record> {
        let provenance = Provenance {
            document_id: format!("{}:graph", self.stage_id),
            ..Provenance::default()
        };
        let batch = self.config.batch.max(1);
        let mut out = Vec::new();
        for entities in graph.entities.chunks(batch) {
            let ids: Vec<&str> = entities.iter().map(|e| e.id.as_str()).collect();
            out.push(Record::new(
                self.fragment_id("entities", &ids),
                provenance.clone(),
                Payload::Graph(Graph {
                    extractor: graph.extractor.clone(),
                    entities: entities.to_vec(),
                    relations: Vec::new(),
                }),
            ));
        }
        for relations in graph.relations.chunks(batch) {
            let ids: Vec<&str> = relations.iter().map(|r| r.id.as_str()).collect();
            out.push(Record::new(
                self.fragment_id("relations", &ids),
                provenance.clone(),
                Payload::Graph(Graph {
                    extractor: graph.extractor.clone(),
                    entities: Vec::new(),
                    relations: relations.to_vec(),
                }),
            ));
        }
        out
    }

    /// Resolves what it holds (the whole input) into the merged graph and the merges made.
    pub async fn resolve(&self) -> (Graph, Vec<Merge>) {
        let mut graph = GraphMerge::new();
        let mut entities_in = 0u64;
        for record in &self.held {
            if let Payload::Graph(fragment) = &record.payload {
                entities_in += fragment.entities.len() as u64;
                graph.add(fragment);
            }
        }
        let distinct = graph.entities.len() as u64;
        let (merges, embedding_failures) = self.find_merges(&graph).await;
        let pairs: Vec<(String, String)> = merges
            .iter()
            .map(|m| (m.from_id.clone(), m.into_id.clone()))
            .collect();
        let symmetric: Vec<String> = self
            .config
            .symmetric
            .iter()
            .filter_map(|s| relation_label(s))
            .collect();
        let loops = graph.merge_entities(&pairs, &symmetric);
        let merged = graph.to_graph();
        self.notes.count("fragments_in", self.held.len() as u64);
        self.notes.count("entities_in", entities_in);
        self.notes.count("entities_distinct", distinct);
        self.notes.count("entities_merged", merges.len() as u64);
        self.notes
            .count("entities_out", merged.entities.len() as u64);
        self.notes
            .count("relations_out", merged.relations.len() as u64);
        if loops > 0 {
            self.notes.count("relations_dropped_as_loops", loops as u64);
        }
        if embedding_failures > 0 {
            self.notes.count("embedding_failures", embedding_failures);
            self.notes.note(format!(
                "{embedding_failures} names could not be embedded: they were compared by string \
                 similarity only"
            ));
        }
        (merged, merges)
    }
}

#[async_trait]
impl Aggregator for Resolve {
    async fn add(&mut self, record: &Record) -> Result<(), StageError> {
        match &record.payload {
            Payload::Graph(_) => {
                self.held.push(record.clone());
                Ok(())
            }
            other => Err(StageError::record(format!(
                "resolve expects a Graph fragment (from normalize), got {}",
                other.kind().name()
            ))),
        }
    }

    async fn finish(&mut self, end: &InputEnd) -> Finished {
        if !end.is_complete() {
            let reason = format!(
                "entity resolution runs only on complete input, and the input ended {}: \
                 nothing was merged or emitted",
                end.describe()
            );
            self.notes.note(format!(
                "withheld: {} fragments dead-lettered ({reason})",
                self.held.len()
            ));
            tracing::warn!(
                "stage `{}`: {reason}; its {} fragments are dead-lettered",
                self.stage_id,
                self.held.len()
            );
            let error = StageError::record(reason);
            return Finished {
                emit: Vec::new(),
                dead_letter: std::mem::take(&mut self.held)
                    .into_iter()
                    .map(|r| (r, error.clone()))
                    .collect(),
            };
        }
        let (graph, merges) = self.resolve().await;
        let min_cosine = self.embedding.as_ref().map(|e| e.min_similarity);
        for (i, merge) in merges.iter().enumerate() {
            let line = merge.describe(&self.config, min_cosine);
            tracing::info!("stage `{}`: {line}", self.stage_id);
            if i < self.config.report_merges {
                self.notes.note(line);
            }
        }
        if merges.len() > self.config.report_merges {
            self.notes.note(format!(
                "... and {} more merges (all in the log)",
                merges.len() - self.config.report_merges
            ));
        }
        self.held.clear();
        Finished {
            emit: self.fragments(graph),
            dead_letter: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
