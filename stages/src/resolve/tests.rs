use super::*;
use crate::normalize::NormalizeConfig;
use pipeline::{Entity, Mention, Relation};
use serde_json::{Value, json};

fn mention(chunk: &str, start: u64) -> Mention {
    Mention {
        document_id: "doc".into(),
        chunk_id: chunk.into(),
        source_path: None,
        char_span: Some([start, start + 5]),
    }
}

fn entity(name: &str, entity_type: &str, at: &[u64]) -> Entity {
    Entity {
        name: name.into(),
        entity_type: entity_type.into(),
        mentions: at.iter().map(|&s| mention("c", s)).collect(),
        ..Entity::default()
    }
}

fn relation(source: &str, relation_type: &str, target: &str, at: u64) -> Relation {
    Relation {
        source: source.into(),
        target: target.into(),
        relation_type: relation_type.into(),
        mentions: vec![mention("c", at)],
        ..Relation::default()
    }
}

/// Extractions → normalised fragments → records, as `resolve` receives them.
fn fragments(extractions: Vec<Graph>) -> Vec<Record> {
    let normalizer = NormalizeConfig {
        aliases: Default::default(),
        types: Default::default(),
        relation_types: Default::default(),
        symmetric: crate::normalize::default_symmetric(),
        min_name_chars: 1,
    }
    .normalizer();
    extractions
        .iter()
        .enumerate()
        .map(|(i, g)| {
            Record::new(
                format!("fragment-{i}"),
                Provenance::default(),
                Payload::Graph(normalizer.normalize(g).unwrap().0),
            )
        })
        .collect()
}

fn corpus_like() -> Vec<Record> {
    fragments(vec![
        Graph {
            extractor: "nlp_extract".into(),
            entities: vec![
                entity("Jim Lovell", "Name", &[0, 100, 200]),
                entity("fuel cell", "Concept", &[10, 110]),
                entity("O2 tank 1", "Concept", &[20]),
                entity("CM", "Acronym", &[30]),
                entity("Houston", "Name", &[40, 45]),
            ],
            relations: vec![
                relation("Jim Lovell", "CO_OCCURS", "fuel cell", 0),
                relation("Houston", "CO_OCCURS", "Jim Lovell", 40),
            ],
        },
        Graph {
            extractor: "nlp_extract".into(),
            entities: vec![
                entity("Jim Lovel", "Name", &[300]),
                entity("fuel cells", "Concept", &[310]),
                entity("O2 tank 2", "Concept", &[320]),
                entity("SM", "Acronym", &[330]),
                entity("Houston", "Speaker", &[340]),
                entity("Houstan", "Name", &[350]),
            ],
            relations: vec![
                relation("Jim Lovel", "CO_OCCURS", "fuel cells", 300),
                relation("Jim Lovel", "CO_OCCURS", "Houstan", 350),
            ],
        },
    ])
}

async fn run(resolve: &mut Resolve, records: &[Record], end: InputEnd) -> Finished {
    for record in records {
        resolve.add(record).await.unwrap();
    }
    resolve.finish(&end).await
}

fn emitted_graph(finished: &Finished) -> Graph {
    let mut graph = Graph::default();
    for record in &finished.emit {
        let Payload::Graph(g) = &record.payload else {
            panic!("not a graph")
        };
        graph.entities.extend(g.entities.clone());
        graph.relations.extend(g.relations.clone());
    }
    graph
}

#[tokio::test]
async fn merges_near_duplicates_and_not_what_differs() {
    let notes = StageNotes::default();
    let mut resolve = Resolve::new(ResolveConfig::default(), "resolve", notes.clone());
    let finished = run(&mut resolve, &corpus_like(), InputEnd::Complete).await;
    assert!(finished.dead_letter.is_empty());
    let graph = emitted_graph(&finished);
    let mut names: Vec<(String, String)> = graph
        .entities
        .iter()
        .map(|e| (e.entity_type.clone(), e.name.clone()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("Acronym".into(), "CM".into()),
            ("Acronym".into(), "SM".into()),
            ("Concept".into(), "O2 tank 1".into()),
            ("Concept".into(), "O2 tank 2".into()),
            ("Concept".into(), "fuel cell".into()),
            ("Name".into(), "Houston".into()),
            ("Name".into(), "Jim Lovell".into()),
            ("Speaker".into(), "Houston".into()),
        ]
    );
    let lovell = graph
        .entities
        .iter()
        .find(|e| e.name == "Jim Lovell")
        .unwrap();
    assert_eq!(lovell.aliases, vec!["Jim Lovel"]);
    assert_eq!(lovell.mentions.len(), 4);
    // The canonical entity keeps its id (the one normalize gave "jim lovell").
    assert_eq!(
        lovell.id,
        crate::normalize::Normalizer::entity_id("Name", "jim lovell")
    );
    let houston = graph
        .entities
        .iter()
        .find(|e| e.name == "Houston" && e.entity_type == "Name")
        .unwrap();
    assert_eq!(houston.aliases, vec!["Houstan"]);

    // Relations re-pointed to the canonical ids and merged: Lovell–fuel cell is supported by
    // two mentions now; Lovell–Houston by two (one of them said as "Houstan").
    assert_eq!(graph.relations.len(), 2, "{:?}", graph.relations);
    let ids: std::collections::BTreeSet<&str> =
        graph.entities.iter().map(|e| e.id.as_str()).collect();
    for r in &graph.relations {
        assert!(ids.contains(r.source.as_str()) && ids.contains(r.target.as_str()));
        assert_eq!(r.weight, 2.0);
        assert!(r.source < r.target, "symmetric ends ordered");
    }

    // What was merged, and why, is in the report.
    let lines = notes.lines();
    assert!(
        lines.iter().any(|l| l.starts_with(
            "merged `Jim Lovel` into `Jim Lovell` (Name): string similarity: jaro-winkler 0.9"
        )),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("`fuel cells` into `fuel cell`"))
    );
    assert!(lines.iter().any(|l| l.contains("`Houstan` into `Houston`")));
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let counts = notes.counts();
    assert_eq!(counts["entities_merged"], 3);
    assert_eq!(counts["entities_distinct"], 11);
    assert_eq!(counts["entities_out"], 8);
}

#[tokio::test]
async fn names_that_differ_in_a_short_word_stay_apart() {
    // Seen on the corpus: one letter of an acronym or designator is another thing.
    let records = fragments(vec![Graph {
        extractor: "nlp_extract".into(),
        entities: vec![
            entity("DELTA-V", "Acronym", &[0]),
            entity("DELTA-P", "Acronym", &[10]),
            entity("LM side", "Concept", &[20]),
            entity("LMP side", "Concept", &[30]),
            entity("PROPELLANT", "Acronym", &[40, 45]),
            entity("PHOPELLANT", "Acronym", &[50]),
        ],
        relations: Vec::new(),
    }]);
    let notes = StageNotes::default();
    let mut resolve = Resolve::new(ResolveConfig::default(), "resolve", notes.clone());
    let graph = emitted_graph(&run(&mut resolve, &records, InputEnd::Complete).await);
    let mut names: Vec<&str> = graph.entities.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec!["DELTA-P", "DELTA-V", "LM side", "LMP side", "PROPELLANT"]
    );
    assert_eq!(notes.counts()["entities_merged"], 1);
    assert!(!short_words_agree("delta p", "delta v"));
    assert!(!short_words_agree("lm side", "lmp side"));
    assert!(short_words_agree("propellant", "phopellant"));
    assert!(short_words_agree("fuel cell", "fuel cells"));
    // Numbers are the `same_numbers` rule's to judge.
    assert!(short_words_agree("o2 tank 1", "o2 tank 2"));
}

#[tokio::test]
async fn thresholds_and_type_rules_are_configurable() {
    // Across types, "Houston" the speaker and "Houston" the name are one.
    let config = ResolveConfig {
        across_types: true,
        ..ResolveConfig::default()
    };
    let mut resolve = Resolve::new(config, "resolve", StageNotes::default());
    let graph = emitted_graph(&run(&mut resolve, &corpus_like(), InputEnd::Complete).await);
    assert_eq!(
        graph
            .entities
            .iter()
            .filter(|e| e.name == "Houston")
            .count(),
        1
    );
    // Strict thresholds merge nothing; without the numbers rule the two tanks merge.
    let strict = ResolveConfig {
        jaro_winkler: 0.999,
        ..ResolveConfig::default()
    };
    let mut resolve = Resolve::new(strict, "resolve", StageNotes::default());
    let graph = emitted_graph(&run(&mut resolve, &corpus_like(), InputEnd::Complete).await);
    assert_eq!(graph.entities.len(), 11);
    let loose = ResolveConfig {
        same_numbers: false,
        ..ResolveConfig::default()
    };
    let mut resolve = Resolve::new(loose, "resolve", StageNotes::default());
    let graph = emitted_graph(&run(&mut resolve, &corpus_like(), InputEnd::Complete).await);
    assert_eq!(
        graph
            .entities
            .iter()
            .filter(|e| e.name.starts_with("O2 tank"))
            .count(),
        1
    );
    let bad = ResolveConfig {
        jaro_winkler: 1.5,
        batch: 0,
        ..ResolveConfig::default()
    };
    let fields: Vec<String> = bad.validate().into_iter().map(|i| i.field).collect();
    assert_eq!(fields, vec!["jaro_winkler", "batch"]);
}

#[tokio::test]
async fn withholds_everything_on_input_that_did_not_end_complete() {
    for end in [
        InputEnd::Interrupted,
        InputEnd::Failed("401".into()),
        InputEnd::BudgetReached,
    ] {
        let notes = StageNotes::default();
        let mut resolve = Resolve::new(ResolveConfig::default(), "resolve", notes.clone());
        let input = corpus_like();
        let finished = run(&mut resolve, &input, end.clone()).await;
        assert!(finished.emit.is_empty(), "{end:?}");
        assert_eq!(finished.dead_letter.len(), input.len());
        let held: Vec<&str> = finished
            .dead_letter
            .iter()
            .map(|(r, _)| r.id.as_str())
            .collect();
        assert_eq!(held, vec!["fragment-0", "fragment-1"]);
        let (_, error) = &finished.dead_letter[0];
        assert!(
            error.message.contains("runs only on complete input")
                && error.message.contains(&end.describe()),
            "{}",
            error.message
        );
        assert!(notes.lines()[0].starts_with("withheld: 2 fragments"));
    }
}

#[tokio::test]
async fn emits_entities_then_relations_in_batches_with_stable_ids() {
    let config = ResolveConfig {
        batch: 3,
        ..ResolveConfig::default()
    };
    let mut first = Resolve::new(config.clone(), "resolve", StageNotes::default());
    let a = run(&mut first, &corpus_like(), InputEnd::Complete).await;
    let shapes: Vec<(usize, usize)> = a
        .emit
        .iter()
        .map(|r| match &r.payload {
            Payload::Graph(g) => (g.entities.len(), g.relations.len()),
            _ => panic!("not a graph"),
        })
        .collect();
    assert_eq!(shapes, vec![(3, 0), (3, 0), (2, 0), (0, 2)]);
    // The same input in another order: the same records, ids and all.
    let mut reversed = corpus_like();
    reversed.reverse();
    let mut second = Resolve::new(config, "resolve", StageNotes::default());
    let b = run(&mut second, &reversed, InputEnd::Complete).await;
    assert_eq!(
        serde_json::to_string(&a.emit).unwrap(),
        serde_json::to_string(&b.emit).unwrap()
    );
}

#[tokio::test]
async fn rejects_what_is_not_a_graph() {
    let mut resolve = Resolve::new(ResolveConfig::default(), "resolve", StageNotes::default());
    let record = Record::new(
        "x".into(),
        Provenance::default(),
        Payload::Json {
            value: serde_json::json!(1),
        },
    );
    let error = resolve.add(&record).await.unwrap_err();
    assert!(error.message.contains("expects a Graph"));
}

/// A stand-in embedder (the `embed` stage's embedders plug in through the same trait): names
/// listed together get the same vector, every other name its own direction.
struct Synonyms(Vec<Vec<&'static str>>);

#[async_trait]
impl TextEmbedder for Synonyms {
    fn model(&self) -> String {
        "synonyms".into()
    }
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, StageError> {
        if text == "unembeddable" {
            return Err(StageError::record("cannot embed"));
        }
        let mut v = vec![0.0; 64];
        match self.0.iter().position(|group| group.contains(&text)) {
            Some(group) => v[group] = 1.0,
            None => {
                v[32 + (record::stable_id(&[text.as_bytes()]).as_bytes()[0] as usize % 32)] = 1.0
            }
        }
        Ok(v)
    }
}

#[tokio::test]
async fn an_attached_embedder_merges_by_meaning() {
    let records = fragments(vec![Graph {
        entities: vec![
            entity("command module", "Concept", &[0, 50]),
            entity("mothership", "Concept", &[10]),
            entity("lunar module", "Concept", &[20]),
            entity("unembeddable", "Concept", &[30]),
        ],
        ..Graph::default()
    }]);
    let notes = StageNotes::default();
    let mut resolve = Resolve::new(ResolveConfig::default(), "resolve", notes.clone())
        .with_embedder(EmbeddingRule {
            embedder: Arc::new(Synonyms(vec![vec!["command module", "mothership"]])),
            min_similarity: 0.9,
        });
    let graph = emitted_graph(&run(&mut resolve, &records, InputEnd::Complete).await);
    let mut names: Vec<&str> = graph.entities.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["command module", "lunar module", "unembeddable"]
    );
    let lines = notes.lines();
    assert!(
        lines.contains(
            &"merged `mothership` into `command module` (Concept): embedding similarity: cosine 1.000 ≥ 0.9".to_string()
        ),
        "{lines:#?}"
    );
    assert_eq!(notes.counts()["embedding_failures"], 1);
}

/// `resolve` as `pipe run` builds it from its YAML config.
async fn built(config: Value, dir: &std::path::Path) -> Result<Box<dyn Aggregator>, StageError> {
    let config: ResolveConfig = serde_json::from_value(config).unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    match config
        .build(&BuildContext::standalone("resolve", dir))
        .await?
    {
        BuiltStage::Aggregate(aggregator) => Ok(aggregator),
        _ => panic!("resolve is an aggregator"),
    }
}

/// `embedding:` in the config attaches the embedder it describes: feature hashing here (the
/// same words in another order: cosine 0.89, their bigrams differ; string similarity alone
/// keeps them apart).
#[tokio::test]
async fn the_config_s_embedding_attaches_its_embedder() {
    let records = fragments(vec![Graph {
        entities: vec![
            entity("service module", "Concept", &[0, 50]),
            entity("module service", "Concept", &[10]),
            entity("lunar module", "Concept", &[20]),
        ],
        ..Graph::default()
    }]);
    let dir = tempfile::tempdir().unwrap();
    let mut names_after = Vec::new();
    for config in [
        json!({}),
        json!({"embedding": {"provider": "hashing", "min_similarity": 0.85}}),
    ] {
        let mut resolve = built(config, dir.path()).await.unwrap();
        for record in &records {
            resolve.add(record).await.unwrap();
        }
        let graph = emitted_graph(&resolve.finish(&InputEnd::Complete).await);
        let mut names: Vec<String> = graph.entities.into_iter().map(|e| e.name).collect();
        names.sort();
        names_after.push(names);
    }
    assert_eq!(
        names_after,
        vec![
            vec!["lunar module", "module service", "service module"],
            vec!["lunar module", "service module"],
        ]
    );
}

#[test]
fn the_embedding_settings_are_checked_by_field() {
    let config: ResolveConfig = serde_json::from_value(json!({"embedding": {
        "provider": "hashing", "min_similarity": 1.5, "model_dir": "models", "batch_size": 0
    }}))
    .unwrap();
    let mut fields: Vec<String> = config.validate().into_iter().map(|i| i.field).collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "embedding.batch_size",
            "embedding.min_similarity",
            "embedding.model_dir"
        ]
    );
    // No default threshold: where "the same" begins depends on the model.
    let missing =
        serde_json::from_value::<ResolveConfig>(json!({"embedding": {"provider": "hashing"}}));
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("missing field `min_similarity`")
    );
    // A provider is named for `pipe validate` to check.
    let remote: ResolveConfig =
        serde_json::from_value(json!({"embedding": {"provider": "openai", "min_similarity": 0.9}}))
            .unwrap();
    assert!(remote.validate().is_empty(), "{:?}", remote.validate());
    assert_eq!(
        remote.providers(),
        vec![("embedding.provider".to_string(), "openai".to_string())]
    );
}

/// Without the local model, `resolve` stops at start instead of merging by shared words,
/// where the `embed` stage (default `fallback: hashing`) goes on with feature hashing.
#[tokio::test]
async fn a_missing_local_model_is_an_error_not_feature_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::standalone("resolve", dir.path());
    // Found nowhere (what `embedder` does next when the search comes back empty).
    let config: ResolveConfig =
        serde_json::from_value(json!({"embedding": {"min_similarity": 0.9}})).unwrap();
    let resolve_s = config.embedding.unwrap().embed_config().without_model(&ctx);
    let error = resolve_s.err().expect("no fallback for resolve");
    assert!(
        error.to_string().contains("rules out feature hashing"),
        "{error}"
    );
    let embed_s: crate::embed::EmbedConfig = serde_json::from_value(json!({})).unwrap();
    assert!(embed_s.without_model(&ctx).is_ok(), "embed falls back");
    // A `model_dir` without the files is an error too, named after the setting.
    let missing = dir.path().join("no-model-here");
    let error = built(
        json!({"embedding": {"min_similarity": 0.9, "model_dir": missing}}),
        dir.path(),
    )
    .await
    .err()
    .expect("no model there");
    assert!(
        error.to_string().starts_with("embedding: model_dir: "),
        "{error}"
    );
}
