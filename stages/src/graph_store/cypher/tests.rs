//! The exact Cypher and parameters the builder produces (what the Neo4j sink sends; the
//! FalkorDB sink sends the same text, run for real in tests/graph_falkordb.rs).

use super::*;
use pretty_assertions_lite::assert_text_eq;
use serde_json::json;

/// `pretty_assertions` without the dependency: a multi-line diff is easier to read than two
/// debug strings.
mod pretty_assertions_lite {
    pub fn assert_text_eq(actual: &str, expected: &str) {
        if actual != expected {
            panic!("text differs\n--- actual ---\n{actual}\n--- expected ---\n{expected}\n");
        }
    }
}

fn mention(chunk: &str, doc: &str) -> Mention {
    Mention {
        document_id: doc.into(),
        chunk_id: chunk.into(),
        source_path: Some(format!("{doc}.txt")),
        char_span: Some([0, 4]),
    }
}

fn entity(id: &str, name: &str, entity_type: &str, chunk: &str) -> Entity {
    Entity {
        id: id.into(),
        name: name.into(),
        entity_type: entity_type.into(),
        aliases: vec![],
        descriptions: vec![format!("{name} as seen in {chunk}")],
        properties: Map::new(),
        confidence: None,
        mentions: vec![mention(chunk, "day3")],
    }
}

fn relation(id: &str, source: &str, target: &str, relation_type: &str, chunk: &str) -> Relation {
    Relation {
        id: id.into(),
        source: source.into(),
        target: target.into(),
        relation_type: relation_type.into(),
        descriptions: vec![],
        properties: Map::new(),
        confidence: Some(0.5),
        weight: 3.0,
        mentions: vec![mention(chunk, "day3")],
    }
}

fn provenance() -> Provenance {
    Provenance {
        document_id: "day3".into(),
        source_path: Some("day3.txt".into()),
        ..Provenance::default()
    }
}

#[test]
fn labels_are_kept_mapped_or_rejected() {
    assert_eq!(Name::label("Person").unwrap().as_str(), "Person");
    assert_eq!(
        Name::label("  space craft ").unwrap().as_str(),
        "SpaceCraft"
    );
    assert_eq!(
        Name::label("launch-vehicle").unwrap().as_str(),
        "LaunchVehicle"
    );
    assert_eq!(Name::label("O2 tank").unwrap().as_str(), "O2Tank");
    assert_eq!(
        Name::relationship_type("works for").unwrap().as_str(),
        "WORKS_FOR"
    );
    assert_eq!(
        Name::relationship_type("CO_OCCURS").unwrap().as_str(),
        "CO_OCCURS"
    );
    for hostile in [
        "",
        "   ",
        "Per`son",
        "Person`) DETACH DELETE n //",
        "}) DETACH DELETE n //",
        "a'b",
        "a\"b",
        "Космонавт",
        "宇宙飛行士",
        "3rdStage",
        "3rd stage",
        "Person\nLabel",
    ] {
        assert!(Name::label(hostile).is_err(), "{hostile:?} was accepted");
        assert!(
            Name::relationship_type(hostile).is_err(),
            "{hostile:?} was accepted as a type"
        );
    }
    let huge = "A".repeat(10_000);
    let error = Name::label(&huge).unwrap_err();
    assert!(error.contains("longer than 128 bytes"), "{error}");
    assert!(
        error.len() < 300,
        "the message must not echo 10 kB: {}",
        error.len()
    );
    assert!(Name::label("Chunk").unwrap_err().contains("reserved"));
}

#[test]
fn escaping_doubles_backticks() {
    // Validation keeps backticks out; the escape still holds if it ever let one through.
    assert_eq!(Name("Person".into()).escaped(), "`Person`");
    assert_eq!(Name("a`b".into()).escaped(), "`a``b`");
}

#[test]
fn entity_statement_is_pinned() {
    let label = Name::label("Person").unwrap();
    assert_text_eq(
        &entity_cypher(&label, false),
        "UNWIND $rows AS row
MERGE (n:`Entity`:`Person` {id: row.id})
WITH n, row, coalesce(n.aliases, []) AS old_aliases, coalesce(n.descriptions, []) AS old_descriptions, coalesce(n.chunk_ids, []) AS old_chunk_ids, coalesce(n.document_ids, []) AS old_document_ids, coalesce(n.source_paths, []) AS old_source_paths, coalesce(n.extractors, []) AS old_extractors
SET n += row.properties,
    n.name = row.name,
    n.type = row.type,
    n.aliases = old_aliases + [x IN row.aliases WHERE NOT x IN old_aliases],
    n.descriptions = old_descriptions + [x IN row.descriptions WHERE NOT x IN old_descriptions],
    n.chunk_ids = old_chunk_ids + [x IN row.chunk_ids WHERE NOT x IN old_chunk_ids],
    n.document_ids = old_document_ids + [x IN row.document_ids WHERE NOT x IN old_document_ids],
    n.source_paths = old_source_paths + [x IN row.source_paths WHERE NOT x IN old_source_paths],
    n.extractors = old_extractors + [x IN row.extractors WHERE NOT x IN old_extractors],
    n.confidence = CASE WHEN row.confidence IS NULL THEN n.confidence WHEN n.confidence IS NULL OR row.confidence > n.confidence THEN row.confidence ELSE n.confidence END",
    );
    assert_text_eq(
        &entity_label_cypher(&label),
        "UNWIND $rows AS row
MATCH (n:`Entity` {id: row.id})
WHERE NOT n:`Person`
SET n:`Person`",
    );
    let with_chunks = entity_cypher(&label, true);
    assert!(
        with_chunks.ends_with(
            "\nWITH n, row
UNWIND row.chunk_ids AS chunk_id
MERGE (c:`Chunk` {id: chunk_id})
MERGE (c)-[:`MENTIONS`]->(n)"
        ),
        "{with_chunks}"
    );
}

#[test]
fn relation_statement_is_pinned() {
    let rel = Name::relationship_type("works for").unwrap();
    assert_text_eq(
        &relation_cypher(&rel),
        "UNWIND $rows AS row
MERGE (s:`Entity` {id: row.source})
MERGE (t:`Entity` {id: row.target})
MERGE (s)-[r:`WORKS_FOR` {id: row.id}]->(t)
WITH r, row, coalesce(r.descriptions, []) AS old_descriptions, coalesce(r.chunk_ids, []) AS old_chunk_ids, coalesce(r.document_ids, []) AS old_document_ids, coalesce(r.source_paths, []) AS old_source_paths, coalesce(r.extractors, []) AS old_extractors
WITH r, row, old_descriptions + [x IN row.descriptions WHERE NOT x IN old_descriptions] AS descriptions, old_chunk_ids + [x IN row.chunk_ids WHERE NOT x IN old_chunk_ids] AS chunk_ids, old_document_ids + [x IN row.document_ids WHERE NOT x IN old_document_ids] AS document_ids, old_source_paths + [x IN row.source_paths WHERE NOT x IN old_source_paths] AS source_paths, old_extractors + [x IN row.extractors WHERE NOT x IN old_extractors] AS extractors
SET r += row.properties,
    r.descriptions = descriptions,
    r.chunk_ids = chunk_ids,
    r.document_ids = document_ids,
    r.source_paths = source_paths,
    r.extractors = extractors,
    r.weight = CASE WHEN size(chunk_ids) > 0 THEN toFloat(size(chunk_ids)) WHEN r.weight IS NULL OR row.weight > r.weight THEN row.weight ELSE r.weight END,
    r.confidence = CASE WHEN row.confidence IS NULL THEN r.confidence WHEN r.confidence IS NULL OR row.confidence > r.confidence THEN row.confidence ELSE r.confidence END",
    );
}

#[test]
fn chunk_statements_differ_only_in_the_vector() {
    let neo4j = chunk_cypher(Dialect::Neo4j);
    let falkor = chunk_cypher(Dialect::FalkorDb);
    assert_text_eq(
        &neo4j,
        "UNWIND $rows AS row
MERGE (c:`Chunk` {id: row.id})
SET c.text = row.text, c.context = row.context, c.document_id = row.document_id,
    c.source_path = row.source_path, c.chunk_index = row.chunk_index,
    c.char_span = row.char_span, c.model = row.model, c.embedding = row.embedding",
    );
    assert_eq!(
        falkor,
        neo4j.replace(
            "c.embedding = row.embedding",
            "c.embedding = vecf32(row.embedding)"
        )
    );
}

#[test]
fn a_batch_becomes_one_statement_per_label_and_type_with_exact_rows() {
    let mut write = GraphWrite::new(Dialect::Neo4j);
    let mut lovell = entity("e1", "Jim Lovell", "Person", "c1");
    lovell.aliases = vec!["Lovell".into()];
    lovell.confidence = Some(0.9);
    lovell.properties.insert("rank".into(), json!("Captain"));
    lovell
        .properties
        .insert("id".into(), json!("model-said-so"));
    lovell
        .properties
        .insert("nested".into(), json!({"a": [1, {"b": 2}]}));
    lovell.properties.insert("nothing".into(), Value::Null);
    let graph = Graph {
        extractor: "kg_extract:test".into(),
        entities: vec![
            lovell,
            entity("e2", "Houston", "Place", "c1"),
            entity("e3", "Odyssey", "space craft", "c1"),
        ],
        relations: vec![
            relation("r1", "e1", "e3", "commands", "c1"),
            relation("r2", "e1", "e2", "talks to", "c1"),
        ],
    };
    write.add_graph(&graph, &provenance()).unwrap();
    // The same entity again from another chunk: merged into one row, lists unioned.
    let again = Graph {
        extractor: "kg_extract:test".into(),
        entities: vec![entity("e1", "Jim Lovell", "Person", "c2")],
        relations: vec![relation("r1", "e1", "e3", "commands", "c2")],
    };
    write.add_graph(&again, &provenance()).unwrap();
    assert_eq!(
        write.counts(),
        RowCounts {
            entities: 3,
            relations: 2,
            chunks: 0
        }
    );
    let statements = write.statements(&WriteOptions::default());
    let labels: Vec<&str> = statements
        .iter()
        .map(|s| {
            s.cypher
                .lines()
                .nth(if s.cypher.contains("\nMATCH") { 3 } else { 1 })
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        labels,
        vec![
            "SET n:`Person`",
            "MERGE (n:`Entity`:`Person` {id: row.id})",
            "SET n:`Place`",
            "MERGE (n:`Entity`:`Place` {id: row.id})",
            "SET n:`SpaceCraft`",
            "MERGE (n:`Entity`:`SpaceCraft` {id: row.id})",
            "MERGE (s:`Entity` {id: row.source})",
            "MERGE (s:`Entity` {id: row.source})",
        ]
    );
    for rel in ["[r:`COMMANDS` {id: row.id}]", "[r:`TALKS_TO` {id: row.id}]"] {
        assert!(
            statements[6..].iter().any(|s| s.cypher.contains(rel)),
            "{rel} missing from {:#?}",
            &statements[6..]
        );
    }
    // The label step carries the ids alone.
    assert_eq!(statements[0].params["rows"], json!([{"id": "e1"}]));
    assert_eq!(
        statements[1].params,
        json!({"rows": [{
            "id": "e1",
            "name": "Jim Lovell",
            "type": "Person",
            "aliases": ["Lovell"],
            "descriptions": ["Jim Lovell as seen in c1", "Jim Lovell as seen in c2"],
            "chunk_ids": ["c1", "c2"],
            "document_ids": ["day3"],
            "source_paths": ["day3.txt"],
            "extractors": ["kg_extract:test"],
            "confidence": 0.9,
            "properties": {
                "rank": "Captain",
                "prop_id": "model-said-so",
                "nested": "{\"a\":[1,{\"b\":2}]}"
            }
        }]})
        .as_object()
        .unwrap()
        .clone()
    );
    assert_eq!(
        statements[5].params["rows"][0]["type"],
        json!("SpaceCraft"),
        "the type property is the label"
    );
    assert_eq!(
        statements[6].params,
        json!({"rows": [{
            "id": "r1",
            "source": "e1",
            "target": "e3",
            "descriptions": [],
            "chunk_ids": ["c1", "c2"],
            "document_ids": ["day3"],
            "source_paths": ["day3.txt"],
            "extractors": ["kg_extract:test"],
            "weight": 3.0,
            "confidence": 0.5,
            "properties": {}
        }]})
        .as_object()
        .unwrap()
        .clone()
    );
}

#[test]
fn rows_per_statement_splits_large_labels() {
    let mut write = GraphWrite::new(Dialect::FalkorDb);
    let entities = (0..5)
        .map(|i| entity(&format!("e{i}"), &format!("P{i}"), "Person", "c1"))
        .collect();
    write
        .add_graph(
            &Graph {
                entities,
                ..Graph::default()
            },
            &provenance(),
        )
        .unwrap();
    let options = WriteOptions {
        rows_per_statement: 2,
        ..WriteOptions::default()
    };
    let sizes: Vec<usize> = write
        .statements(&options)
        .iter()
        .map(|s| s.params["rows"].as_array().unwrap().len())
        .collect();
    // The label step and the write, each two rows at most.
    assert_eq!(sizes, vec![2, 2, 2, 2, 1, 1]);
}

#[test]
fn a_bad_label_or_missing_id_rejects_the_whole_record() {
    let mut write = GraphWrite::new(Dialect::FalkorDb);
    let hostile = Graph {
        entities: vec![
            entity("e1", "fine", "Person", "c1"),
            entity("e2", "evil", "Person`) DETACH DELETE n //", "c1"),
        ],
        ..Graph::default()
    };
    let error = write.add_graph(&hostile, &provenance()).unwrap_err();
    assert!(error.contains("cannot be a label"), "{error}");
    assert!(write.is_empty(), "nothing of a rejected record is kept");

    let bad_type = Graph {
        entities: vec![entity("e1", "fine", "Person", "c1")],
        relations: vec![relation("r1", "e1", "e1", "}) DETACH DELETE n //", "c1")],
        ..Graph::default()
    };
    assert!(write.add_graph(&bad_type, &provenance()).is_err());
    assert!(write.is_empty());

    let unnormalised = Graph {
        entities: vec![entity("", "Lovell", "Person", "c1")],
        ..Graph::default()
    };
    let error = write.add_graph(&unnormalised, &provenance()).unwrap_err();
    assert!(error.contains("normalize"), "{error}");

    let nul = Graph {
        entities: vec![entity("e1", "a\0b", "Person", "c1")],
        ..Graph::default()
    };
    assert!(
        write
            .add_graph(&nul, &provenance())
            .unwrap_err()
            .contains("NUL")
    );
    // Neo4j stores NUL characters; only FalkorDB cannot.
    assert!(
        GraphWrite::new(Dialect::Neo4j)
            .add_graph(&nul, &provenance())
            .is_ok()
    );
}

#[test]
fn chunk_rows_carry_text_provenance_and_vector() {
    let mut write = GraphWrite::new(Dialect::Neo4j);
    let embedded = Embedded {
        text: "Houston, we've had a problem.".into(),
        context: Some("Day 3".into()),
        vector: vec![0.5, -0.25, 1.0],
        model: "all-MiniLM-L6-v2".into(),
    };
    let provenance = Provenance {
        document_id: "day3".into(),
        source_path: Some("day3.txt".into()),
        chunk_index: Some(7),
        char_span: Some([100, 130]),
        ..Provenance::default()
    };
    let error = write
        .add_chunk("c1", &embedded, &provenance, Some(384))
        .unwrap_err();
    assert!(error.contains("3 dimensions"), "{error}");
    write
        .add_chunk("c1", &embedded, &provenance, Some(3))
        .unwrap();
    let statements = write.statements(&WriteOptions::default());
    assert_eq!(statements.len(), 1);
    assert_eq!(
        statements[0].params["rows"],
        json!([{
            "id": "c1",
            "text": "Houston, we've had a problem.",
            "context": "Day 3",
            "document_id": "day3",
            "source_path": "day3.txt",
            "chunk_index": 7,
            "char_span": [100, 130],
            "model": "all-MiniLM-L6-v2",
            "embedding": [0.5, -0.25, 1.0]
        }])
    );
}

#[test]
fn schema_statements_are_pinned() {
    let options = SchemaOptions {
        chunks: true,
        vector_dimensions: Some(384),
    };
    let neo4j: Vec<SchemaStep> = schema(Dialect::Neo4j, &options);
    assert_eq!(
        neo4j,
        vec![
            SchemaStep::Cypher(
                "CREATE CONSTRAINT pipe_entity_id IF NOT EXISTS FOR (n:`Entity`) REQUIRE n.id IS UNIQUE"
                    .into()
            ),
            SchemaStep::Cypher(
                "CREATE INDEX pipe_entity_name IF NOT EXISTS FOR (n:`Entity`) ON (n.name)".into()
            ),
            SchemaStep::Cypher(
                "CREATE CONSTRAINT pipe_chunk_id IF NOT EXISTS FOR (n:`Chunk`) REQUIRE n.id IS UNIQUE"
                    .into()
            ),
            SchemaStep::Cypher(
                "CREATE VECTOR INDEX pipe_chunk_embedding IF NOT EXISTS FOR (n:`Chunk`) ON \
                 (n.embedding) OPTIONS {indexConfig: {`vector.dimensions`: 384, \
                 `vector.similarity_function`: 'cosine'}}"
                    .into()
            ),
        ]
    );
    let falkor = schema(Dialect::FalkorDb, &options);
    assert_eq!(
        falkor,
        vec![
            SchemaStep::Cypher("CREATE INDEX FOR (n:`Entity`) ON (n.id)".into()),
            SchemaStep::UniqueConstraint {
                label: Name::fixed("Entity"),
                property: "id".into()
            },
            SchemaStep::Cypher("CREATE INDEX FOR (n:`Entity`) ON (n.name)".into()),
            SchemaStep::Cypher("CREATE INDEX FOR (n:`Chunk`) ON (n.id)".into()),
            SchemaStep::UniqueConstraint {
                label: Name::fixed("Chunk"),
                property: "id".into()
            },
            SchemaStep::Cypher(
                "CREATE VECTOR INDEX FOR (n:`Chunk`) ON (n.embedding) OPTIONS {dimension: 384, \
                 similarityFunction: 'cosine'}"
                    .into()
            ),
        ]
    );
    assert_eq!(schema(Dialect::Neo4j, &SchemaOptions::default()).len(), 2);
}

#[test]
fn read_queries_are_pinned() {
    let statement = read::facts(&["e1".into()], true, 10);
    assert_text_eq(
        &statement.cypher,
        "UNWIND $ids AS entity_id
MATCH (s:`Entity` {id: entity_id})-[r]->(t:`Entity`)
RETURN r.id AS id, s.id AS source_id, s.name AS source, s.type AS source_type,
    type(r) AS relation, t.id AS target_id, t.name AS target, t.type AS target_type,
    r.weight AS weight
ORDER BY weight DESC, id LIMIT $limit",
    );
    assert_eq!(
        Value::Object(statement.params),
        json!({"ids": ["e1"], "limit": 10})
    );
    let incoming = read::facts(&["e1".into()], false, 10);
    assert!(
        incoming
            .cypher
            .contains("MATCH (s:`Entity`)-[r]->(t:`Entity` {id: entity_id})")
    );
    let chunks = read::entities_in_chunks(&["c1".into()]);
    assert_text_eq(
        &chunks.cypher,
        "MATCH (n:`Entity`) WHERE any(c IN n.chunk_ids WHERE c IN $chunk_ids)
RETURN properties(n) AS entity ORDER BY n.id",
    );
}

#[test]
fn stored_properties_read_back_as_entities_and_relations() {
    let props = json!({
        "id": "e1", "name": "Jim Lovell", "type": "Person", "aliases": ["Lovell"],
        "descriptions": ["CDR"], "chunk_ids": ["c1", "c2"], "document_ids": ["day3"],
        "source_paths": ["day3.txt"], "extractors": ["x"], "confidence": 0.9, "rank": "Captain"
    });
    let entity = entity_from_properties(props.as_object().unwrap().clone());
    assert_eq!(entity.id, "e1");
    assert_eq!(entity.entity_type, "Person");
    assert_eq!(entity.aliases, vec!["Lovell"]);
    assert_eq!(entity.confidence, Some(0.9));
    assert_eq!(
        entity.properties,
        *json!({"rank": "Captain"}).as_object().unwrap()
    );
    assert_eq!(entity.mentions.len(), 2);
    assert_eq!(entity.mentions[1].chunk_id, "c2");
    assert_eq!(entity.mentions[1].document_id, "day3");

    let mut row = json!({
        "id": "r1", "type": "COMMANDS", "source": "e1", "target": "e3",
        "relation": {"id": "r1", "weight": 2.0, "chunk_ids": ["c1", "c2"],
                     "document_ids": ["day3"], "descriptions": ["d"], "note": "n"}
    })
    .as_object()
    .unwrap()
    .clone();
    let relation = relation_from_row(&mut row);
    assert_eq!(relation.relation_type, "COMMANDS");
    assert_eq!(
        (relation.source.as_str(), relation.target.as_str()),
        ("e1", "e3")
    );
    assert_eq!(relation.weight, 2.0);
    assert_eq!(relation.descriptions, vec!["d"]);
    assert_eq!(relation.mentions.len(), 2);
    assert_eq!(
        relation.properties,
        *json!({"note": "n"}).as_object().unwrap()
    );
}
