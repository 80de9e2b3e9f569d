//! `normalize` processor (streaming): one extractor answer in (`Extraction`: names as found),
//! one graph fragment out (`Graph`: deterministic ids). Names are folded (Unicode NFKC, case,
//! whitespace, punctuation: "N.A.S.A." = "NASA" = "nasa"), an alias table maps other names to
//! a canonical one, types are harmonised into label-safe names, entities of the fragment are
//! merged by id (descriptions, aliases and mentions as set unions; the display name is the most
//! frequent surface form), relations are re-pointed to entity ids and deduplicated with a
//! weight (distinct supporting mentions). Fragments of one run merge by id downstream — in
//! `resolve`, or in a graph store's MERGE — with [`merge::GraphMerge`]'s rules.

pub mod fold;
pub mod merge;

use fold::{clean_display, entity_label, fold_name, is_label, relation_label, type_key};
use merge::{relation_id, support_count};
use pipeline::runtime::StageNotes;
use pipeline::{
    BuildContext, BuiltStage, ConfigIssue, Entity, Graph, KindSet, Payload, PayloadKind, Processor,
    Produces, Record, Relation, Role, StageConfig, StageError, async_trait, record,
};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Canonical name → other names for the same thing, e.g. `Houston: [CAPCOM, CC]`. Names
    /// are compared folded (case, punctuation), whatever the entity type; the canonical name
    /// is the display name.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Entity type as extracted → node label, e.g. `{ person: Person, crew: Person }`. Keys
    /// match case- and separator-insensitively ("Crew Member" = "crew_member"); types not
    /// listed become PascalCase labels ("space craft" → `SpaceCraft`).
    #[serde(default)]
    pub types: BTreeMap<String, String>,
    /// Relation type as extracted → relationship type; types not listed become
    /// UPPER_SNAKE_CASE ("works for" → `WORKS_FOR`).
    #[serde(default)]
    pub relation_types: BTreeMap<String, String>,
    /// Relation types without a direction: their ends are ordered by id, so A–B and B–A are
    /// one relation.
    #[serde(default = "default_symmetric")]
    pub symmetric: Vec<String>,
    /// Entities whose folded name has fewer characters are dropped (counted in the report).
    #[serde(default = "default_min_name_chars")]
    pub min_name_chars: usize,
}

pub fn default_symmetric() -> Vec<String> {
    vec!["CO_OCCURS".into()]
}
fn default_min_name_chars() -> usize {
    1
}

/// The alias table and type maps, folded once.
#[derive(Clone, Debug)]
pub struct Normalizer {
    /// Folded alias (or canonical) name → (canonical display name, its folded form).
    aliases: HashMap<String, (String, String)>,
    /// `type_key` → label.
    types: HashMap<String, String>,
    relation_types: HashMap<String, String>,
    symmetric: Vec<String>,
    min_name_chars: usize,
}

/// An entity being built from one extraction: the entity, its surface forms with their votes,
/// and the alias table's canonical name when one applies.
type Building = (Entity, Vec<(String, u64)>, Option<String>);

/// What normalising one extraction found worth counting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub entities_in: u64,
    pub entities_out: u64,
    pub relations_in: u64,
    pub relations_out: u64,
    pub dropped_short_names: u64,
    pub unknown_relation_ends: u64,
    pub self_relations: u64,
    pub aliased: u64,
}

impl NormalizeConfig {
    fn issues(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        for (canonical, others) in &self.aliases {
            let key = fold_name(canonical);
            if key.is_empty() {
                issues.push(ConfigIssue::new(
                    format!("aliases.{canonical}"),
                    "has no letters or digits",
                ));
            }
            for name in std::iter::once(canonical).chain(others) {
                let folded = fold_name(name);
                if folded.is_empty() {
                    continue;
                }
                match owner.get(&folded) {
                    Some(first) if *first != canonical.as_str() => {
                        issues.push(ConfigIssue::new(
                            format!("aliases.{canonical}"),
                            format!(
                                "`{name}` is also a name of `{first}`: a name can have one canonical form"
                            ),
                        ));
                    }
                    _ => {
                        owner.insert(folded, canonical);
                    }
                }
            }
        }
        for (field, map) in [
            ("types", &self.types),
            ("relation_types", &self.relation_types),
        ] {
            for (from, to) in map {
                if !is_label(to) {
                    issues.push(ConfigIssue::new(
                        format!("{field}.{from}"),
                        format!(
                            "`{to}` cannot be a graph label: use letters, digits and `_`, not starting with a digit"
                        ),
                    ));
                }
                if type_key(from).is_empty() {
                    issues.push(ConfigIssue::new(
                        format!("{field}.{from}"),
                        "has no ASCII letters or digits",
                    ));
                }
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
        if self.min_name_chars == 0 {
            issues.push(ConfigIssue::new("min_name_chars", "must be at least 1"));
        }
        issues
    }

    pub fn normalizer(&self) -> Normalizer {
        let mut aliases = HashMap::new();
        for (canonical, others) in &self.aliases {
            let display = clean_display(canonical);
            let key = fold_name(canonical);
            for name in std::iter::once(canonical).chain(others) {
                aliases.insert(fold_name(name), (display.clone(), key.clone()));
            }
        }
        let relation_types: HashMap<String, String> = self
            .relation_types
            .iter()
            .map(|(k, v)| (type_key(k), v.clone()))
            .collect();
        let mut normalizer = Normalizer {
            aliases,
            types: self
                .types
                .iter()
                .map(|(k, v)| (type_key(k), v.clone()))
                .collect(),
            relation_types,
            symmetric: Vec::new(),
            min_name_chars: self.min_name_chars.max(1),
        };
        normalizer.symmetric = self
            .symmetric
            .iter()
            .filter_map(|s| normalizer.relation_type(s))
            .collect();
        normalizer
    }
}

impl Normalizer {
    /// A node label for an extracted type (`None`: nothing label-safe in it).
    pub fn entity_type(&self, raw: &str) -> Option<String> {
        self.types
            .get(&type_key(raw))
            .cloned()
            .or_else(|| entity_label(raw))
    }

    pub fn relation_type(&self, raw: &str) -> Option<String> {
        self.relation_types
            .get(&type_key(raw))
            .cloned()
            .or_else(|| relation_label(raw))
    }

    pub fn symmetric(&self) -> &[String] {
        &self.symmetric
    }

    /// (display name, folded key) of a surface form, through the alias table; `None` when
    /// the folded name is too short.
    pub fn name(&self, surface: &str) -> Option<(String, String, bool)> {
        let folded = fold_name(surface);
        if folded.chars().count() < self.min_name_chars {
            return None;
        }
        match self.aliases.get(&folded) {
            Some((display, key)) => Some((display.clone(), key.clone(), true)),
            None => Some((clean_display(surface), folded, false)),
        }
    }

    /// The id of an entity (see the graph contract).
    pub fn entity_id(label: &str, folded_name: &str) -> String {
        record::stable_id(&[b"entity", label.as_bytes(), folded_name.as_bytes()])
    }

    /// One extraction → one fragment with ids. An entity type with nothing label-safe in it
    /// fails the record (dead-lettered with the reason) rather than reaching a graph store.
    pub fn normalize(&self, extraction: &Graph) -> Result<(Graph, Counts), StageError> {
        let mut counts = Counts {
            entities_in: extraction.entities.len() as u64,
            relations_in: extraction.relations.len() as u64,
            ..Counts::default()
        };
        // Per entity of the extraction: its id (None: dropped).
        let mut ids: Vec<Option<String>> = Vec::with_capacity(extraction.entities.len());
        // Entities of this fragment, in first-seen order, with their surface-form counts.
        let mut order: Vec<String> = Vec::new();
        let mut built: HashMap<String, Building> = HashMap::new();
        for entity in &extraction.entities {
            let Some((display, key, aliased)) = self.name(&entity.name) else {
                counts.dropped_short_names += 1;
                ids.push(None);
                continue;
            };
            let label = self.entity_type(&entity.entity_type).ok_or_else(|| {
                StageError::record(format!(
                    "entity `{}` has type `{}`, which has no letters or digits a graph label can use",
                    entity.name, entity.entity_type
                ))
            })?;
            if aliased {
                counts.aliased += 1;
            }
            let id = Normalizer::entity_id(&label, &key);
            ids.push(Some(id.clone()));
            let surface = clean_display(&entity.name);
            let (held, forms, _) = built.entry(id.clone()).or_insert_with(|| {
                order.push(id.clone());
                let fresh = Entity {
                    id: id.clone(),
                    name: String::new(),
                    entity_type: label.clone(),
                    ..Entity::default()
                };
                (fresh, Vec::new(), aliased.then(|| display.clone()))
            });
            let surface_votes = entity.mentions.len().max(1) as u64;
            match forms.iter_mut().find(|(f, _)| *f == surface) {
                Some((_, n)) => *n += surface_votes,
                None => forms.push((surface, surface_votes)),
            }
            for alias in &entity.aliases {
                let alias = clean_display(alias);
                if !alias.is_empty() && !forms.iter().any(|(f, _)| *f == alias) {
                    forms.push((alias, 0));
                }
            }
            for description in &entity.descriptions {
                let description = description.trim();
                if !description.is_empty() && !held.descriptions.iter().any(|d| d == description) {
                    held.descriptions.push(description.to_string());
                }
            }
            for mention in &entity.mentions {
                if !held.mentions.contains(mention) {
                    held.mentions.push(mention.clone());
                }
            }
            held.confidence = match (held.confidence, entity.confidence) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            for (k, v) in &entity.properties {
                held.properties.entry(k.clone()).or_insert(v.clone());
            }
        }
        let mut entities = Vec::with_capacity(order.len());
        for id in &order {
            let Some((mut entity, forms, canonical)) = built.remove(id) else {
                continue;
            };
            // Most frequent surface form; ties go to the first seen (the list is in
            // first-seen order and `max_by_key` keeps the last maximum, so search reversed).
            let most_frequent = forms
                .iter()
                .rev()
                .max_by_key(|(_, n)| *n)
                .map(|(f, _)| f.clone())
                .unwrap_or_default();
            entity.name = canonical.unwrap_or(most_frequent);
            entity.aliases = forms
                .into_iter()
                .map(|(f, _)| f)
                .filter(|f| *f != entity.name)
                .collect();
            entity.mentions.sort();
            entities.push(entity);
        }
        counts.entities_out = entities.len() as u64;

        // Relation ends are names as extracted: the entity with exactly that name, else the
        // first with the same folded (and aliased) name.
        let mut by_name: HashMap<&str, &str> = HashMap::new();
        let mut by_key: HashMap<String, &str> = HashMap::new();
        for (entity, id) in extraction.entities.iter().zip(&ids) {
            let Some(id) = id else { continue };
            by_name.entry(entity.name.as_str()).or_insert(id);
            if let Some((_, key, _)) = self.name(&entity.name) {
                by_key.entry(key).or_insert(id);
            }
        }
        let resolve_end = |name: &str| -> Option<String> {
            by_name.get(name).map(|id| id.to_string()).or_else(|| {
                let (_, key, _) = self.name(name)?;
                by_key.get(&key).map(|id| id.to_string())
            })
        };
        let mut relations: Vec<Relation> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for relation in &extraction.relations {
            let (Some(mut source), Some(mut target)) =
                (resolve_end(&relation.source), resolve_end(&relation.target))
            else {
                counts.unknown_relation_ends += 1;
                continue;
            };
            let relation_type = self.relation_type(&relation.relation_type).ok_or_else(|| {
                StageError::record(format!(
                    "relation `{}` -[{}]-> `{}` has a type with no letters or digits a graph \
                     relationship type can use",
                    relation.source, relation.relation_type, relation.target
                ))
            })?;
            if source == target {
                counts.self_relations += 1;
                continue;
            }
            if self.symmetric.contains(&relation_type) && source > target {
                std::mem::swap(&mut source, &mut target);
            }
            let id = relation_id(&source, &relation_type, &target);
            let at = *index.entry(id.clone()).or_insert_with(|| {
                relations.push(Relation {
                    id: id.clone(),
                    source,
                    target,
                    relation_type,
                    weight: 0.0,
                    ..Relation::default()
                });
                relations.len() - 1
            });
            let held = &mut relations[at];
            if relation.mentions.is_empty() {
                // No mention to count: the extractor's own weight stands.
                held.weight += relation.weight;
            }
            for mention in &relation.mentions {
                if !held.mentions.contains(mention) {
                    held.mentions.push(mention.clone());
                }
            }
            for description in &relation.descriptions {
                let description = description.trim();
                if !description.is_empty() && !held.descriptions.iter().any(|d| d == description) {
                    held.descriptions.push(description.to_string());
                }
            }
            held.confidence = match (held.confidence, relation.confidence) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            for (k, v) in &relation.properties {
                held.properties.entry(k.clone()).or_insert(v.clone());
            }
        }
        // Weight = distinct supporting mentions (+ the weights of mention-less answers): the
        // same rule as `GraphMerge`, so merging fragments never counts a mention twice.
        for relation in &mut relations {
            relation.mentions.sort();
            relation.weight += support_count(&relation.mentions) as f64;
        }
        counts.relations_out = relations.len() as u64;
        Ok((
            Graph {
                extractor: extraction.extractor.clone(),
                entities,
                relations,
            },
            counts,
        ))
    }
}

#[async_trait]
impl StageConfig for NormalizeConfig {
    const KIND: &'static str = "normalize";
    const DESCRIPTION: &'static str = "Extraction → graph fragment: folded names, aliases, \
         harmonised types, deterministic ids, deduplicated weighted relations";
    const ROLE: Role = Role::Processor;

    fn accepts() -> KindSet {
        KindSet::of(&[PayloadKind::Extraction])
    }

    fn produces() -> Produces {
        Produces::Kinds(KindSet::of(&[PayloadKind::Graph]))
    }

    fn validate(&self) -> Vec<ConfigIssue> {
        self.issues()
    }

    async fn build(&self, ctx: &BuildContext) -> Result<BuiltStage, StageError> {
        Ok(BuiltStage::Processor(Arc::new(Normalize {
            normalizer: self.normalizer(),
            stage_id: ctx.stage_id.clone(),
            notes: ctx.notes.clone(),
        })))
    }
}

pub struct Normalize {
    normalizer: Normalizer,
    stage_id: String,
    notes: StageNotes,
}

impl Normalize {
    pub fn new(config: &NormalizeConfig, stage_id: &str, notes: StageNotes) -> Normalize {
        Normalize {
            normalizer: config.normalizer(),
            stage_id: stage_id.to_string(),
            notes,
        }
    }

    pub fn normalize_record(&self, record: &Record) -> Result<Record, StageError> {
        let Payload::Extraction(extraction) = &record.payload else {
            return Err(StageError::record(format!(
                "normalize expects an Extraction, got {}",
                record.payload.kind().name()
            )));
        };
        let (graph, counts) = self.normalizer.normalize(extraction)?;
        for (name, n) in [
            ("entities_in", counts.entities_in),
            ("entities_out", counts.entities_out),
            ("relations_in", counts.relations_in),
            ("relations_out", counts.relations_out),
            ("dropped_short_names", counts.dropped_short_names),
            ("aliased_mentions", counts.aliased),
            ("self_relations_dropped", counts.self_relations),
            ("relations_with_unknown_ends", counts.unknown_relation_ends),
        ] {
            if n > 0 {
                self.notes.count(name, n);
            }
        }
        if counts.unknown_relation_ends > 0 {
            self.notes.note(
                "some relations named an entity the extraction did not list: they were left \
                 out (see relations_with_unknown_ends)",
            );
        }
        Ok(Record::new(
            record::stable_id(&[record.id.as_bytes(), self.stage_id.as_bytes()]),
            record.provenance.clone(),
            Payload::Graph(graph),
        ))
    }
}

#[async_trait]
impl Processor for Normalize {
    async fn process(&self, record: &Record) -> Result<Vec<Record>, StageError> {
        Ok(vec![self.normalize_record(record)?])
    }

    fn cpu_bound(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
