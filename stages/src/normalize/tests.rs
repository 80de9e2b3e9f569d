use super::merge::GraphMerge;
use super::*;
use pipeline::Mention;

fn mention(chunk: &str, start: u64, len: u64) -> Mention {
    Mention {
        document_id: "doc".into(),
        chunk_id: chunk.into(),
        source_path: Some("day01.txt".into()),
        char_span: Some([start, start + len]),
    }
}

fn entity(name: &str, entity_type: &str, mentions: Vec<Mention>) -> Entity {
    Entity {
        name: name.into(),
        entity_type: entity_type.into(),
        mentions,
        ..Entity::default()
    }
}

fn relation(source: &str, relation_type: &str, target: &str, mentions: Vec<Mention>) -> Relation {
    Relation {
        source: source.into(),
        target: target.into(),
        relation_type: relation_type.into(),
        weight: 1.0,
        mentions,
        ..Relation::default()
    }
}

fn config() -> NormalizeConfig {
    serde_json::from_value(serde_json::json!({
        "aliases": { "Houston": ["CAPCOM", "CC"] },
        "types": { "org": "Organization", "organisation": "Organization" }
    }))
    .unwrap()
}

/// The issue's fixture: "NASA", "nasa", "N.A.S.A." and "Houston", "HOUSTON", "CAPCOM" (by
/// alias) in several chunks, with types written three ways.
fn fixture() -> Vec<Graph> {
    vec![
        Graph {
            extractor: "test".into(),
            entities: vec![
                entity("NASA", "Organization", vec![mention("c1", 0, 4)]),
                entity("Houston", "place", vec![mention("c1", 10, 7)]),
                entity("nasa", "org", vec![mention("c1", 30, 4)]),
            ],
            relations: vec![
                relation(
                    "NASA",
                    "operates from",
                    "Houston",
                    vec![mention("c1", 0, 17)],
                ),
                relation("Houston", "co-occurs", "nasa", vec![mention("c1", 10, 24)]),
            ],
        },
        Graph {
            extractor: "test".into(),
            entities: vec![
                entity("N.A.S.A.", "ORGANISATION", vec![mention("c2", 100, 8)]),
                entity("HOUSTON", "Place", vec![mention("c2", 120, 7)]),
                entity("CAPCOM", "PLACE", vec![mention("c2", 140, 6)]),
                entity("NASA", "organization", vec![mention("c2", 160, 4)]),
            ],
            relations: vec![
                relation(
                    "N.A.S.A.",
                    "OPERATES_FROM",
                    "CAPCOM",
                    vec![mention("c2", 100, 46)],
                ),
                relation("nasa", "coOccurs", "HOUSTON", vec![mention("c2", 120, 44)]),
            ],
        },
    ]
}

fn normalize_all(graphs: &[Graph]) -> Vec<Graph> {
    let normalizer = config().normalizer();
    graphs
        .iter()
        .map(|g| normalizer.normalize(g).unwrap().0)
        .collect()
}

fn merged(fragments: &[Graph]) -> Graph {
    let mut merge = GraphMerge::new();
    for f in fragments {
        merge.add(f);
    }
    merge.to_graph()
}

#[test]
fn variants_become_one_node_each() {
    let graph = merged(&normalize_all(&fixture()));
    let names: Vec<(&str, &str)> = graph
        .entities
        .iter()
        .map(|e| (e.name.as_str(), e.entity_type.as_str()))
        .collect();
    assert_eq!(graph.entities.len(), 2, "{names:?}");
    let nasa = graph.entities.iter().find(|e| e.name == "NASA").unwrap();
    assert_eq!(nasa.entity_type, "Organization");
    assert_eq!(nasa.aliases, vec!["N.A.S.A.", "nasa"]);
    assert_eq!(nasa.mentions.len(), 4);
    assert_eq!(
        nasa.id,
        pipeline::record::stable_id(&[b"entity", b"Organization", b"nasa"])
    );
    let houston = graph.entities.iter().find(|e| e.name == "Houston").unwrap();
    assert_eq!(houston.entity_type, "Place");
    assert_eq!(houston.aliases, vec!["CAPCOM", "HOUSTON"]);
    assert_eq!(houston.mentions.len(), 3);

    // Relations: re-pointed to ids, types harmonised, the symmetric one's ends ordered, each
    // deduplicated with its weight = distinct supporting mentions.
    assert_eq!(graph.relations.len(), 2, "{:?}", graph.relations);
    let operates = graph
        .relations
        .iter()
        .find(|r| r.relation_type == "OPERATES_FROM")
        .unwrap();
    assert_eq!(
        (operates.source.as_str(), operates.target.as_str()),
        (nasa.id.as_str(), houston.id.as_str())
    );
    assert_eq!(operates.weight, 2.0);
    let co = graph
        .relations
        .iter()
        .find(|r| r.relation_type == "CO_OCCURS")
        .unwrap();
    assert_eq!(co.weight, 2.0);
    assert!(co.source < co.target);
    assert_eq!(
        co.id,
        super::merge::relation_id(&co.source, "CO_OCCURS", &co.target)
    );
}

#[test]
fn one_extraction_with_every_variant_is_one_node_each() {
    let all = fixture();
    let together = Graph {
        extractor: "test".into(),
        entities: all.iter().flat_map(|g| g.entities.clone()).collect(),
        relations: all.iter().flat_map(|g| g.relations.clone()).collect(),
    };
    let (graph, counts) = config().normalizer().normalize(&together).unwrap();
    assert_eq!(graph.entities.len(), 2);
    assert_eq!(counts.entities_in, 7);
    assert_eq!(counts.aliased, 3, "Houston, HOUSTON, CAPCOM");
    // Within a fragment the display name is the most frequent surface form (NASA: 2).
    assert!(graph.entities.iter().any(|e| e.name == "NASA"));
    assert_eq!(graph.relations.len(), 2);
    assert!(graph.relations.iter().all(|r| r.weight == 2.0));
}

#[test]
fn same_input_twice_gives_an_identical_graph_in_any_order() {
    let first = serde_json::to_string(&merged(&normalize_all(&fixture()))).unwrap();
    let second = serde_json::to_string(&merged(&normalize_all(&fixture()))).unwrap();
    assert_eq!(first, second);
    let mut reversed = normalize_all(&fixture());
    reversed.reverse();
    assert_eq!(first, serde_json::to_string(&merged(&reversed)).unwrap());
    // Merging a fragment twice (at-least-once delivery) changes nothing either.
    let mut twice = normalize_all(&fixture());
    twice.extend(normalize_all(&fixture()));
    assert_eq!(first, serde_json::to_string(&merged(&twice)).unwrap());
}

#[test]
fn most_frequent_surface_form_names_the_node() {
    let graph = Graph {
        extractor: String::new(),
        entities: vec![
            entity("fuel cell", "Concept", vec![mention("c", 0, 9)]),
            entity("Fuel Cell", "Concept", vec![mention("c", 20, 9)]),
            entity("Fuel Cell", "Concept", vec![mention("c", 40, 9)]),
        ],
        relations: Vec::new(),
    };
    let (out, _) = config().normalizer().normalize(&graph).unwrap();
    assert_eq!(out.entities.len(), 1);
    assert_eq!(out.entities[0].name, "Fuel Cell");
    assert_eq!(out.entities[0].aliases, vec!["fuel cell"]);
    // A tie goes to the form seen first.
    let tie = Graph {
        entities: graph.entities[..2].to_vec(),
        ..Graph::default()
    };
    let (out, _) = config().normalizer().normalize(&tie).unwrap();
    assert_eq!(out.entities[0].name, "fuel cell");
}

#[test]
fn overlapping_chunks_do_not_count_a_mention_twice() {
    // The same characters of the document seen from two overlapping chunks.
    let a = mention("c1", 50, 10);
    let b = Mention {
        chunk_id: "c2".into(),
        ..a.clone()
    };
    let fragments = normalize_all(&[
        Graph {
            entities: vec![
                entity("LM", "Acronym", vec![a.clone()]),
                entity("CSM", "Acronym", vec![a.clone()]),
            ],
            relations: vec![relation("LM", "CO_OCCURS", "CSM", vec![a])],
            ..Graph::default()
        },
        Graph {
            entities: vec![
                entity("LM", "Acronym", vec![b.clone()]),
                entity("CSM", "Acronym", vec![b.clone()]),
            ],
            relations: vec![relation("CSM", "CO_OCCURS", "LM", vec![b])],
            ..Graph::default()
        },
    ]);
    let graph = merged(&fragments);
    assert_eq!(graph.relations.len(), 1);
    assert_eq!(graph.relations[0].weight, 1.0);
    // Both chunks are still listed as places the fact was read.
    assert_eq!(graph.relations[0].mentions.len(), 2);
}

#[test]
fn relations_without_mentions_keep_their_weight_and_unknown_ends_are_counted() {
    let graph = Graph {
        entities: vec![
            entity("Lovell", "Person", Vec::new()),
            entity("Aquarius", "Spacecraft", Vec::new()),
        ],
        relations: vec![
            Relation {
                weight: 3.0,
                ..relation("Lovell", "flew", "Aquarius", Vec::new())
            },
            relation("Lovell", "flew", "Odyssey", Vec::new()),
            relation("lovell", "is", "LOVELL", Vec::new()),
        ],
        ..Graph::default()
    };
    let (out, counts) = config().normalizer().normalize(&graph).unwrap();
    assert_eq!(out.relations.len(), 1);
    assert_eq!(out.relations[0].relation_type, "FLEW");
    assert_eq!(out.relations[0].weight, 3.0);
    assert_eq!(counts.unknown_relation_ends, 1);
    assert_eq!(counts.self_relations, 1);
}

#[test]
fn types_without_label_characters_fail_the_record() {
    let graph = Graph {
        entities: vec![entity("Odyssey", "???", Vec::new())],
        ..Graph::default()
    };
    let error = config().normalizer().normalize(&graph).unwrap_err();
    assert_eq!(error.class, pipeline::ErrorClass::Record);
    assert!(error.message.contains("`Odyssey`"), "{}", error.message);
    // Short names are dropped and counted.
    let short = Graph {
        entities: vec![entity("-", "Thing", Vec::new())],
        ..Graph::default()
    };
    let (out, counts) = config().normalizer().normalize(&short).unwrap();
    assert!(out.entities.is_empty());
    assert_eq!(counts.dropped_short_names, 1);
}

#[test]
fn config_mistakes_are_reported() {
    let bad: NormalizeConfig = serde_json::from_value(serde_json::json!({
        "aliases": { "Houston": ["CC"], "Capcom": ["cc"] },
        "types": { "crew": "Crew Member" },
        "relation_types": { "???": "FLEW" },
        "min_name_chars": 0
    }))
    .unwrap();
    let issues = bad.validate();
    let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "aliases.Houston",
            "types.crew",
            "relation_types.???",
            "min_name_chars"
        ],
        "{issues:?}"
    );
    assert!(
        issues[0]
            .message
            .contains("`CC` is also a name of `Capcom`")
    );
    assert!(config().validate().is_empty());
}

#[tokio::test]
async fn the_stage_emits_one_graph_record_per_extraction() {
    let notes = StageNotes::default();
    let stage = Normalize::new(&config(), "normalize", notes.clone());
    let input = Record::new(
        "chunk-extraction".into(),
        pipeline::Provenance {
            document_id: "doc".into(),
            ..Default::default()
        },
        Payload::Extraction(fixture().remove(0)),
    );
    let out = stage.process(&input).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].id,
        record::stable_id(&[b"chunk-extraction", b"normalize"])
    );
    let Payload::Graph(graph) = &out[0].payload else {
        panic!("not a graph: {:?}", out[0].payload)
    };
    assert_eq!(graph.entities.len(), 2);
    assert_eq!(graph.extractor, "test");
    assert_eq!(notes.counts()["entities_in"], 3);
    assert_eq!(notes.counts()["entities_out"], 2);
    let wrong = Record::new(
        "x".into(),
        Default::default(),
        Payload::Json {
            value: serde_json::json!({}),
        },
    );
    assert!(stage.process(&wrong).await.is_err());
}
