//! `nlp_extract` processor: an entity and relation extractor with no model and no network, so a
//! pipeline yields a real graph offline. Per chunk it finds speaker labels (`[000:00:02] CDR:`,
//! `CDR:`, `Jim Lovell:`), capitalised spans ("Mission Control"), acronyms ("CSM", "O2",
//! "S-IVB") and noun phrases ("oxygen tank", "fuel cell", from `harper-brill`'s tagger and
//! chunker); relations are co-occurrences: speaker -MENTIONS-> what the turn names, and
//! entity -CO_OCCURS- entity within a sentence (or turn), weighted by how often. One
//! `Extraction` record per chunk, even when empty (counted and warned about).

mod extract;
pub mod text;

pub use extract::{BUILTIN_STOP_WORDS, Kind, Scope};

use extract::{ChunkRef, Extractor, Settings};
use pipeline::runtime::StageNotes;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, KindSet, Payload, PayloadKind, Processor, Produces,
    Record, Role, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `Graph.extractor` of what this stage emits.
pub const EXTRACTOR: &str = "nlp_extract";

/// Empty extractions warned about one by one; past this, only counted.
const EMPTY_WARNINGS: u64 = 5;

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// Speaker labels of transcript turns.
    Speaker,
    /// Capitalised spans: "Jim Lovell", "Mission Control", "Apollo 13".
    Name,
    /// All-capitals tokens: "CSM", "O2", "S-IVB".
    Acronym,
    /// Noun phrases of two or more words: "oxygen tank", "fuel cell".
    NounPhrase,
}

impl EntityKind {
    fn kind(self) -> Kind {
        match self {
            EntityKind::Speaker => Kind::Speaker,
            EntityKind::Name => Kind::Name,
            EntityKind::Acronym => Kind::Acronym,
            EntityKind::NounPhrase => Kind::NounPhrase,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CoOccurrence {
    /// Entities in the same sentence.
    Sentence,
    /// Entities in the same speaker turn (or paragraph).
    Utterance,
    /// No co-occurrence relations.
    Off,
}

/// Type names given to each kind of entity.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeNames {
    #[serde(default = "speaker_type")]
    pub speaker: String,
    #[serde(default = "name_type")]
    pub name: String,
    #[serde(default = "acronym_type")]
    pub acronym: String,
    #[serde(default = "noun_phrase_type")]
    pub noun_phrase: String,
}

impl Default for TypeNames {
    fn default() -> Self {
        TypeNames {
            speaker: speaker_type(),
            name: name_type(),
            acronym: acronym_type(),
            noun_phrase: noun_phrase_type(),
        }
    }
}

fn speaker_type() -> String {
    "Speaker".into()
}
fn name_type() -> String {
    "Name".into()
}
fn acronym_type() -> String {
    "Acronym".into()
}
fn noun_phrase_type() -> String {
    "Concept".into()
}

/// Relation type names.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RelationNames {
    /// Speaker → entity named in the turn.
    #[serde(default = "mentions_type")]
    pub mentions: String,
    /// Entity — entity seen together.
    #[serde(default = "co_occurs_type")]
    pub co_occurs: String,
}

impl Default for RelationNames {
    fn default() -> Self {
        RelationNames {
            mentions: mentions_type(),
            co_occurs: co_occurs_type(),
        }
    }
}

fn mentions_type() -> String {
    "MENTIONS".into()
}
fn co_occurs_type() -> String {
    "CO_OCCURS".into()
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NlpExtractConfig {
    /// Which kinds of entity to extract.
    #[serde(default = "all_kinds")]
    pub kinds: Vec<EntityKind>,
    /// Type name per kind (`speaker`, `name`, `acronym`, `noun_phrase`).
    #[serde(default)]
    pub types: TypeNames,
    /// Relation type names (`mentions`, `co_occurs`).
    #[serde(default)]
    pub relations: RelationNames,
    /// Where co-occurrence relations are counted: `sentence`, `utterance` or `off`.
    #[serde(default = "default_co_occurrence")]
    pub co_occurrence: CoOccurrence,
    /// More stop words (case-insensitive): never an entity alone, trimmed from the edges of
    /// names and phrases.
    #[serde(default)]
    pub stop_words: Vec<String>,
    /// Also use the built-in English stop words (function words and radio procedure words
    /// such as "roger", "over", "copy").
    #[serde(default = "yes")]
    pub builtin_stop_words: bool,
    /// Shortest entity name, in characters.
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Fewest words in a noun phrase.
    #[serde(default = "default_np_min")]
    pub noun_phrase_min_words: usize,
    /// Most words in a noun phrase (longer ones keep their last words).
    #[serde(default = "default_np_max")]
    pub noun_phrase_max_words: usize,
    /// Most distinct entities paired in one sentence or turn (pairs grow with the square);
    /// the rest are still extracted, and the cut is counted.
    #[serde(default = "default_max_paired")]
    pub max_paired_entities: usize,
}

fn all_kinds() -> Vec<EntityKind> {
    vec![
        EntityKind::Speaker,
        EntityKind::Name,
        EntityKind::Acronym,
        EntityKind::NounPhrase,
    ]
}
fn default_co_occurrence() -> CoOccurrence {
    CoOccurrence::Sentence
}
fn yes() -> bool {
    true
}
fn default_min_chars() -> usize {
    2
}
fn default_np_min() -> usize {
    2
}
fn default_np_max() -> usize {
    4
}
fn default_max_paired() -> usize {
    16
}

impl Default for NlpExtractConfig {
    fn default() -> Self {
        NlpExtractConfig {
            kinds: all_kinds(),
            types: TypeNames::default(),
            relations: RelationNames::default(),
            co_occurrence: default_co_occurrence(),
            stop_words: Vec::new(),
            builtin_stop_words: true,
            min_chars: default_min_chars(),
            noun_phrase_min_words: default_np_min(),
            noun_phrase_max_words: default_np_max(),
            max_paired_entities: default_max_paired(),
        }
    }
}

impl NlpExtractConfig {
    fn settings(&self) -> Settings {
        let mut stop_words: HashSet<String> =
            self.stop_words.iter().map(|w| w.to_lowercase()).collect();
        if self.builtin_stop_words {
            stop_words.extend(BUILTIN_STOP_WORDS.iter().map(|w| w.to_string()));
        }
        let type_names = BTreeMap::from([
            (Kind::Speaker, self.types.speaker.clone()),
            (Kind::Name, self.types.name.clone()),
            (Kind::Acronym, self.types.acronym.clone()),
            (Kind::NounPhrase, self.types.noun_phrase.clone()),
        ]);
        Settings {
            kinds: self.kinds.iter().map(|k| k.kind()).collect(),
            type_names,
            mentions_type: self.relations.mentions.clone(),
            co_occurs_type: self.relations.co_occurs.clone(),
            co_occurrence: match self.co_occurrence {
                CoOccurrence::Sentence => Some(Scope::Sentence),
                CoOccurrence::Utterance => Some(Scope::Utterance),
                CoOccurrence::Off => None,
            },
            stop_words,
            min_chars: self.min_chars,
            noun_phrase_words: (self.noun_phrase_min_words, self.noun_phrase_max_words),
            max_paired_entities: self.max_paired_entities,
        }
    }
}

#[async_trait]
impl StageConfig for NlpExtractConfig {
    const KIND: &'static str = "nlp_extract";
    const DESCRIPTION: &'static str = "Offline entity/relation extraction (no model): speakers, \
         names, acronyms, noun phrases; weighted co-occurrence relations";
    const ROLE: Role = Role::Processor;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Chunk, PayloadKind::Document])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Extraction]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.kinds.is_empty() {
            issues.push(ConfigIssue::new(
                "kinds",
                "must name at least one kind (speaker, name, acronym, noun_phrase)",
            ));
        }
        for (field, value) in [
            ("types.speaker", &self.types.speaker),
            ("types.name", &self.types.name),
            ("types.acronym", &self.types.acronym),
            ("types.noun_phrase", &self.types.noun_phrase),
            ("relations.mentions", &self.relations.mentions),
            ("relations.co_occurs", &self.relations.co_occurs),
        ] {
            if !crate::normalize::fold::is_label(value) {
                issues.push(ConfigIssue::new(
                    field,
                    format!(
                        "`{value}` cannot be a graph label: use letters, digits and `_`, not starting with a digit"
                    ),
                ));
            }
        }
        if self.min_chars == 0 {
            issues.push(ConfigIssue::new("min_chars", "must be at least 1"));
        }
        if self.noun_phrase_min_words == 0 {
            issues.push(ConfigIssue::new(
                "noun_phrase_min_words",
                "must be at least 1",
            ));
        }
        if self.noun_phrase_max_words < self.noun_phrase_min_words {
            issues.push(ConfigIssue::new(
                "noun_phrase_max_words",
                format!(
                    "must be at least noun_phrase_min_words ({})",
                    self.noun_phrase_min_words
                ),
            ));
        }
        if self.max_paired_entities < 2 && self.co_occurrence != CoOccurrence::Off {
            issues.push(ConfigIssue::new(
                "max_paired_entities",
                "must be at least 2 (or set co_occurrence: off)",
            ));
        }
        issues
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        let processor = NlpExtract::new(self, &ctx.stage_id, ctx.notes.clone());
        ctx.notes.note(
            "extractor: nlp_extract (offline, no model: speaker labels, names, acronyms, \
             noun phrases; co-occurrence relations)",
        );
        Ok(BuiltStage::Processor(Arc::new(processor)))
    }
}

pub struct NlpExtract {
    extractor: Extractor,
    stage_id: String,
    notes: StageNotes,
    empty: AtomicU64,
}

impl NlpExtract {
    pub fn new(config: &NlpExtractConfig, stage_id: &str, notes: StageNotes) -> NlpExtract {
        NlpExtract {
            extractor: Extractor::new(config.settings()),
            stage_id: stage_id.to_string(),
            notes,
            empty: AtomicU64::new(0),
        }
    }

    /// The extraction of one chunk (or document) record.
    pub fn extract_record(&self, record: &Record) -> Result<Record, StageError> {
        let (text, char_start) = match &record.payload {
            Payload::Chunk(chunk) => (
                chunk.text.as_str(),
                record.provenance.char_span.map(|span| span[0]),
            ),
            Payload::Document(document) => (document.text.as_str(), Some(0)),
            other => {
                return Err(StageError::record(format!(
                    "nlp_extract expects a Chunk or a Document, got {}",
                    other.kind().name()
                )));
            }
        };
        let at = ChunkRef {
            chunk_id: &record.id,
            document_id: &record.provenance.document_id,
            source_path: record.provenance.source_path.as_deref(),
            char_start,
        };
        let (graph, stats) = self.extractor.extract(text, &at);
        self.notes.count("chunks", 1);
        self.notes.count("entities", graph.entities.len() as u64);
        self.notes.count("relations", graph.relations.len() as u64);
        if stats.pairs_capped > 0 {
            self.notes.count("co_occurrence_capped", stats.pairs_capped);
        }
        if graph.entities.is_empty() && !text.trim().is_empty() {
            self.notes.count("empty_extractions", 1);
            let seen = self.empty.fetch_add(1, Relaxed) + 1;
            if seen <= EMPTY_WARNINGS {
                tracing::warn!(
                    "stage `{}`: no entity found in chunk {} ({} characters){}",
                    self.stage_id,
                    record.id,
                    text.chars().count(),
                    if seen == EMPTY_WARNINGS {
                        "; further empty extractions are only counted (empty_extractions)"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(Record::new(
            record::stable_id(&[record.id.as_bytes(), self.stage_id.as_bytes()]),
            record.provenance.clone(),
            Payload::Extraction(graph),
        ))
    }
}

#[async_trait]
impl Processor for NlpExtract {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        Ok(vec![self.extract_record(record)?])
    }

    fn cpu_bound(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
