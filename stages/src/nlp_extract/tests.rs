use super::*;
use pipeline::{Chunk, Document, Graph, Provenance};

fn chunk_record(id: &str, text: &str, char_start: u64) -> Record {
    Record::new(
        id.into(),
        Provenance {
            document_id: "doc".into(),
            source_path: Some("day03.txt".into()),
            chunk_index: Some(0),
            char_span: Some([char_start, char_start + text.chars().count() as u64]),
            ..Default::default()
        },
        Payload::Chunk(Chunk {
            text: text.into(),
            tokens: 0,
            tokenizer: "cl100k_base".into(),
            context: None,
        }),
    )
}

fn extract(config: &NlpExtractConfig, record: &Record) -> (Graph, StageNotes) {
    let notes = StageNotes::default();
    let stage = NlpExtract::new(config, "nlp", notes.clone());
    let out = stage.extract_record(record).unwrap();
    assert_eq!(
        out.id,
        record::stable_id(&[record.id.as_bytes(), b"nlp"]),
        "record id = stable_id([chunk id, stage id])"
    );
    assert_eq!(out.provenance, record.provenance);
    let Payload::Extraction(graph) = out.payload else {
        panic!("not an extraction")
    };
    assert_eq!(graph.extractor, "nlp_extract");
    (graph, notes)
}

fn typed(graph: &Graph) -> Vec<(String, String)> {
    graph
        .entities
        .iter()
        .map(|e| (e.entity_type.clone(), e.name.clone()))
        .collect()
}

fn has(graph: &Graph, entity_type: &str, name: &str) -> bool {
    graph
        .entities
        .iter()
        .any(|e| e.entity_type == entity_type && e.name == name)
}

const TURNS: &str = "[055:55:20] CMP: Okay, Houston, we've had a problem here.\n\
[055:55:28] CC: This is Houston. Say again, please.\n\
[055:55:35] CDR: Houston, we've had a problem. We've had a MAIN B BUS UNDERVOLT.\n\
[055:56:10] CDR: And the O2 tank 2 quantity is reading zero; Jim Lovell here.\n\
[055:57:00] CC: Roger. Mission Control sees the fuel cell pressure on the CSM and the S-IVB.\n";

#[test]
fn transcript_turns_give_speakers_names_acronyms_and_phrases() {
    // The chunk starts at character 1000 of its document, after some multi-byte text.
    let (graph, notes) = extract(
        &NlpExtractConfig::default(),
        &chunk_record("c1", TURNS, 1000),
    );
    let entities = typed(&graph);
    for (entity_type, name) in [
        ("Speaker", "CMP"),
        ("Speaker", "CC"),
        ("Speaker", "CDR"),
        ("Name", "Houston"),
        ("Name", "Jim Lovell"),
        ("Name", "Mission Control"),
        ("Acronym", "O2"),
        ("Acronym", "CSM"),
        ("Acronym", "S-IVB"),
        ("Acronym", "UNDERVOLT"),
        ("Concept", "fuel cell"),
        ("Concept", "O2 tank"),
    ] {
        assert!(
            has(&graph, entity_type, name),
            "missing {entity_type} {name}: {entities:?}"
        );
    }
    // Procedure words and common shouted words are not entities.
    for name in ["Roger", "Okay", "Say", "MAIN", "This", "We've"] {
        assert!(
            !graph.entities.iter().any(|e| e.name == name),
            "{name}: {entities:?}"
        );
    }
    // Every mention points at the document's characters: chunk start + offset in the chunk.
    for entity in &graph.entities {
        for m in &entity.mentions {
            let [start, end] = m.char_span.unwrap();
            let inside: String = TURNS
                .chars()
                .skip((start - 1000) as usize)
                .take((end - start) as usize)
                .collect();
            assert_eq!(inside, entity.name);
            assert_eq!(m.chunk_id, "c1");
            assert_eq!(m.document_id, "doc");
            assert_eq!(m.source_path.as_deref(), Some("day03.txt"));
        }
    }
    let houston = graph.entities.iter().find(|e| e.name == "Houston").unwrap();
    assert_eq!(houston.mentions.len(), 3);

    // Speakers mention what their turn names, weighted by turns; co-occurrence within a
    // sentence, ends in name order; names are the entities' names.
    let relation = |s: &str, t: &str, ty: &str| {
        graph
            .relations
            .iter()
            .find(|r| r.source == s && r.target == t && r.relation_type == ty)
    };
    let cdr_houston = relation("CDR", "Houston", "MENTIONS").expect("CDR MENTIONS Houston");
    assert_eq!(cdr_houston.weight, 1.0);
    assert_eq!(relation("CC", "Houston", "MENTIONS").unwrap().weight, 1.0);
    assert!(relation("CC", "CSM", "MENTIONS").is_some());
    let co = relation("CSM", "Mission Control", "CO_OCCURS").expect("CSM–Mission Control");
    assert_eq!(co.mentions.len(), 1);
    // "O2" lies inside "O2 tank": not a pair.
    assert!(relation("O2", "O2 tank", "CO_OCCURS").is_none());
    let names: std::collections::BTreeSet<&str> =
        graph.entities.iter().map(|e| e.name.as_str()).collect();
    for r in &graph.relations {
        assert!(names.contains(r.source.as_str()) && names.contains(r.target.as_str()));
        assert_eq!(r.weight, r.mentions.len() as f64);
    }
    assert_eq!(notes.counts()["chunks"], 1);
    assert_eq!(notes.counts()["entities"], graph.entities.len() as u64);
}

#[test]
fn a_speaker_label_written_in_the_text_is_the_same_entity() {
    let text = "[000:01:00] CDR: Go ahead.\n[000:01:05] CC: CDR, Houston. The CDR is GO.\n";
    let (graph, _) = extract(&NlpExtractConfig::default(), &chunk_record("c", text, 0));
    let cdr: Vec<_> = graph.entities.iter().filter(|e| e.name == "CDR").collect();
    assert_eq!(cdr.len(), 1);
    assert_eq!(cdr[0].entity_type, "Speaker");
    assert_eq!(cdr[0].mentions.len(), 3);
}

#[test]
fn prose_gives_names_and_noun_phrases_without_speakers() {
    let text = "Note: the oxygen tank failed.\n\nJim Lovell and Fred Haise moved into the \
                lunar module while Mission Control worked out the carbon dioxide problem.";
    let (graph, _) = extract(&NlpExtractConfig::default(), &chunk_record("c", text, 0));
    let entities = typed(&graph);
    assert!(
        !graph.entities.iter().any(|e| e.entity_type == "Speaker"),
        "{entities:?}"
    );
    for (entity_type, name) in [
        ("Name", "Jim Lovell"),
        ("Name", "Fred Haise"),
        ("Name", "Mission Control"),
        ("Concept", "oxygen tank"),
        ("Concept", "lunar module"),
        ("Concept", "carbon dioxide problem"),
    ] {
        assert!(
            has(&graph, entity_type, name),
            "{entity_type} {name}: {entities:?}"
        );
    }
    assert!(
        !graph.entities.iter().any(|e| e.name == "Note"),
        "{entities:?}"
    );
    assert!(
        graph
            .relations
            .iter()
            .all(|r| r.relation_type == "CO_OCCURS")
    );
    assert!(
        graph
            .relations
            .iter()
            .any(|r| r.source == "Fred Haise" && r.target == "Jim Lovell")
    );
}

#[test]
fn settings_choose_kinds_types_scope_and_stop_words() {
    let config: NlpExtractConfig = serde_json::from_value(serde_json::json!({
        "kinds": ["speaker", "acronym"],
        "types": { "speaker": "Person", "acronym": "Equipment" },
        "relations": { "mentions": "SAYS" },
        "co_occurrence": "utterance",
        "stop_words": ["csm"]
    }))
    .unwrap();
    assert!(config.validate().is_empty());
    let (graph, _) = extract(&config, &chunk_record("c", TURNS, 0));
    assert!(has(&graph, "Person", "CDR"));
    assert!(has(&graph, "Equipment", "S-IVB"));
    assert!(
        !graph
            .entities
            .iter()
            .any(|e| e.name == "CSM" || e.name == "Houston")
    );
    assert!(graph.entities.iter().all(|e| e.entity_type != "Concept"));
    assert!(graph.relations.iter().any(|r| r.relation_type == "SAYS"));
    // Utterance scope: BUS and UNDERVOLT, said in one turn, are paired.
    assert!(
        graph
            .relations
            .iter()
            .any(|r| r.relation_type == "CO_OCCURS")
    );
    let off: NlpExtractConfig =
        serde_json::from_value(serde_json::json!({ "co_occurrence": "off" })).unwrap();
    let (graph, _) = extract(&off, &chunk_record("c", TURNS, 0));
    assert!(
        graph
            .relations
            .iter()
            .all(|r| r.relation_type == "MENTIONS")
    );

    let bad: NlpExtractConfig = serde_json::from_value(serde_json::json!({
        "kinds": [],
        "types": { "name": "Proper Name" },
        "noun_phrase_min_words": 3,
        "noun_phrase_max_words": 2
    }))
    .unwrap();
    let fields: Vec<String> = bad.validate().into_iter().map(|i| i.field).collect();
    assert_eq!(fields, vec!["kinds", "types.name", "noun_phrase_max_words"]);
}

#[test]
fn an_empty_extraction_is_emitted_and_counted() {
    let (graph, notes) = extract(
        &NlpExtractConfig::default(),
        &chunk_record("c", "... 12 34 ...", 0),
    );
    assert!(graph.entities.is_empty());
    assert_eq!(notes.counts()["empty_extractions"], 1);
    // A whitespace-only chunk is empty too, but nothing was missed.
    let (_, notes) = extract(&NlpExtractConfig::default(), &chunk_record("c", "  \n", 0));
    assert!(!notes.counts().contains_key("empty_extractions"));
}

#[test]
fn documents_are_their_own_chunk() {
    let record = Record::new(
        "doc-1".into(),
        Provenance {
            document_id: "doc-1".into(),
            ..Default::default()
        },
        Payload::Document(Document {
            text: "The CSM and the LM.".into(),
            format: "text".into(),
        }),
    );
    let (graph, _) = extract(&NlpExtractConfig::default(), &record);
    let lm = graph.entities.iter().find(|e| e.name == "LM").unwrap();
    assert_eq!(lm.mentions[0].chunk_id, "doc-1");
    assert_eq!(lm.mentions[0].char_span, Some([16, 18]));
}

/// Recall on the real corpus, measured against its own reference lists: the equipment
/// acronyms of `apollo-13-tecatg.json` that occur in the transcripts, and its speakers that
/// occur as speaker labels. Prints the numbers (the README states them) and holds a floor.
#[test]
fn corpus_recall_of_acronyms_and_speakers() {
    use crate::chunk::{ChunkConfig, ChunkProcessor};
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/apollo13");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("apollo-13-tecatg.json")).unwrap())
            .unwrap();
    let mut paths: Vec<_> = std::fs::read_dir(root.join("transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 6);
    let chunker =
        ChunkProcessor::new(&serde_json::from_value::<ChunkConfig>(serde_json::json!({})).unwrap());
    let stage = NlpExtract::new(&NlpExtractConfig::default(), "nlp", StageNotes::default());

    let mut texts = Vec::new();
    let mut entities: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    // Document-level spans of acronym mentions, per document.
    let mut acronym_spans: std::collections::BTreeSet<(String, [u64; 2])> = Default::default();
    let (mut chunks, mut relations) = (0, 0);
    let started = std::time::Instant::now();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let doc_id = path.file_name().unwrap().to_string_lossy().to_string();
        let document = Record::new(
            doc_id.clone(),
            Provenance {
                document_id: doc_id.clone(),
                ..Default::default()
            },
            Payload::Document(Document {
                text: text.clone(),
                format: "text".into(),
            }),
        );
        for chunk in chunker.chunk(&document).unwrap() {
            chunks += 1;
            let out = stage.extract_record(&chunk).unwrap();
            let Payload::Extraction(graph) = out.payload else {
                panic!()
            };
            relations += graph.relations.len();
            for e in graph.entities {
                if e.entity_type == "Acronym" {
                    for m in &e.mentions {
                        acronym_spans.insert((doc_id.clone(), m.char_span.unwrap()));
                    }
                }
                entities.entry(e.entity_type).or_default().insert(e.name);
            }
        }
        texts.push((doc_id, text));
    }
    let elapsed = started.elapsed();

    // Equipment acronyms that occur in the transcripts as whole words (not inside another
    // word or number), with their occurrences as document-level character spans.
    let is_word_char = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let mut occurring = Vec::new();
    let (mut occurrences, mut covered) = (0u64, 0u64);
    for item in reference["acronyms"]["equipment"].as_array().unwrap() {
        let acronym = item["acronym"].as_str().unwrap();
        let mut found_here = 0;
        for (doc_id, text) in &texts {
            for (byte, _) in text.match_indices(acronym) {
                let before = text[..byte].chars().next_back();
                let after = text[byte + acronym.len()..].chars().next();
                if is_word_char(before) || is_word_char(after) {
                    continue;
                }
                found_here += 1;
                let start = text[..byte].chars().count() as u64;
                let span = [start, start + acronym.chars().count() as u64];
                occurrences += 1;
                if acronym_spans.contains(&(doc_id.clone(), span)) {
                    covered += 1;
                }
            }
        }
        if found_here > 0 {
            occurring.push(acronym);
        }
    }
    let as_acronym = |a: &str| entities.get("Acronym").is_some_and(|s| s.contains(a));
    let as_any = |a: &str| entities.values().any(|s| s.contains(a));
    let acronym_hits = occurring.iter().filter(|a| as_acronym(a)).count();
    let any_hits = occurring.iter().filter(|a| as_any(a)).count();
    let missed: Vec<&str> = occurring.iter().copied().filter(|a| !as_any(a)).collect();

    // Speakers of the reference that occur as speaker labels ("P-l, P-2, etc." lists several).
    let mut speakers = Vec::new();
    for group in reference["acronyms"]["speakers"]
        .as_object()
        .unwrap()
        .values()
    {
        for item in group.as_array().unwrap() {
            for label in item["abbreviation"].as_str().unwrap().split(", ") {
                let label = label.trim();
                if label == "etc." {
                    continue;
                }
                let as_label = format!("] {label}: ");
                if texts.iter().any(|(_, t)| t.contains(&as_label)) {
                    speakers.push(label.to_string());
                }
            }
        }
    }
    let speaker_set = entities.get("Speaker").cloned().unwrap_or_default();
    let speaker_hits = speakers.iter().filter(|s| speaker_set.contains(*s)).count();

    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    let equipment_recall = ratio(any_hits, occurring.len());
    let occurrence_recall = covered as f64 / occurrences.max(1) as f64;
    let speaker_recall = ratio(speaker_hits, speakers.len());
    println!(
        "nlp_extract on the Apollo 13 corpus: {chunks} chunks in {:.2}s (unoptimised test build); \
         entities by type: {}; {relations} relations",
        elapsed.as_secs_f64(),
        entities
            .iter()
            .map(|(t, s)| format!("{t} {}", s.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "equipment acronyms occurring: {}; found as entities: {any_hits} ({:.1} %), as \
         Acronym entities: {acronym_hits}; missed: {missed:?}",
        occurring.len(),
        100.0 * equipment_recall
    );
    println!(
        "acronym occurrences covered by an Acronym mention: {covered} of {occurrences} ({:.1} %)",
        100.0 * occurrence_recall
    );
    println!(
        "speakers occurring as labels: {} {speakers:?}; found: {speaker_hits} ({:.1} %)",
        speakers.len(),
        100.0 * speaker_recall
    );
    assert_eq!(
        occurring.len(),
        65,
        "the reference list as measured when written"
    );
    assert!(
        equipment_recall >= 0.9,
        "equipment recall {equipment_recall}"
    );
    assert!(
        occurrence_recall >= 0.9,
        "occurrence recall {occurrence_recall}"
    );
    assert!(speakers.len() >= 7, "{speakers:?}");
    assert_eq!(
        speaker_recall, 1.0,
        "speakers {speakers:?} found {speaker_set:?}"
    );
}
