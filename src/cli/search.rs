//! `pipe search "question"`: embeds the question with the pipeline's own embedder, takes the
//! nearest chunks from the store its sinks wrote, then the entities mentioned in those chunks
//! and the strongest facts about them. Stores and embedders are found by asking each stage
//! config (`open_embedder`, `open_vector_index`, `open_graph_index`), so any sink kind that can
//! be read back — built-in or from an outside crate — works.

use super::logging::{self, LogFormat};
use super::{EXIT_FAILED, ValidateArgs};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use pipeline::index::{ChunkHit, Fact, GraphIndex, TextEmbedder, VectorIndex};
use pipeline::{BuildContext, Entity, Plan, Registry, StageError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The question, in plain language.
    question: String,
    /// The pipeline whose stores to search (and whose embedder to embed the question with).
    #[arg(long, value_name = "FILE", default_value = "pipelines.yaml")]
    pipeline: PathBuf,
    /// How many chunks.
    #[arg(short = 'k', long = "k", value_name = "N", default_value_t = 5)]
    k: usize,
    /// At most this many facts about the entities found.
    #[arg(long, value_name = "N", default_value_t = 15)]
    facts: usize,
    /// Print the whole answer as JSON.
    #[arg(long)]
    json: bool,
    /// Where the run kept its state (embedded store, caches).
    #[arg(long, value_name = "DIR", default_value = ".pipe")]
    state_dir: PathBuf,
    /// Override a pipeline value, as with `pipe run` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// `pipe search`.
pub(super) async fn command(registry: Registry, args: SearchArgs) -> ExitCode {
    if let Err(e) = logging::init(LogFormat::Text, None, None, false) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    if args.k == 0 {
        eprintln!("error: -k must be at least 1");
        return ExitCode::from(EXIT_FAILED);
    }
    let plan = match super::load(
        &registry,
        &ValidateArgs {
            file: args.pipeline.clone(),
            set: args.set.clone(),
        },
    ) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let want = Want {
        embedder: true,
        vectors: true,
        graph: true,
    };
    let answer = match open_stores(&plan, &args.state_dir, want).await {
        Ok(stores) => search(&stores, &args.question, args.k, args.facts).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else {
                print!("{}", render(&answer));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// What a pipeline's stages can read back, by stage id, in pipeline order.
pub struct Stores {
    pub pipeline: PathBuf,
    pub embedders: Vec<(String, Arc<dyn TextEmbedder>)>,
    pub vectors: Vec<(String, Arc<dyn VectorIndex>)>,
    pub graphs: Vec<(String, Arc<dyn GraphIndex>)>,
    /// Upstream stage ids of each stage.
    upstream: Vec<(String, Vec<String>)>,
    /// Stores that exist in the pipeline but could not be opened, with why.
    pub unopened: Vec<(String, String)>,
}

/// Which kinds of store to open.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub embedder: bool,
    pub vectors: bool,
    pub graph: bool,
}

fn unopened(stage: &str, what: &str, e: StageError) -> (String, String) {
    (stage.to_string(), format!("{what}: {}", e.message))
}

/// Asks every stage of `plan` for what it can read back. `state_dir` is the run's state
/// directory (`.pipe/`), where embedded stores and caches live.
pub async fn open_stores(plan: &Plan, state_dir: &Path, want: Want) -> anyhow::Result<Stores> {
    let contexts: Vec<BuildContext> = pipeline::runtime::contexts_for(plan, state_dir)
        .context("cannot prepare the pipeline's resources")?;
    let mut stores = Stores {
        pipeline: plan.file.clone(),
        embedders: Vec::new(),
        vectors: Vec::new(),
        graphs: Vec::new(),
        upstream: Vec::new(),
        unopened: Vec::new(),
    };
    for (stage, ctx) in plan.stages.iter().zip(&contexts) {
        let id = &stage.id;
        stores.upstream.push((id.clone(), ctx.upstream.clone()));
        if want.embedder {
            match stage.config.open_embedder(ctx).await {
                Some(Ok(embedder)) => stores.embedders.push((id.clone(), embedder)),
                Some(Err(e)) => stores.unopened.push(unopened(id, "embedder", e)),
                None => {}
            }
        }
        if want.vectors {
            match stage.config.open_vector_index(ctx).await {
                Some(Ok(index)) => stores.vectors.push((id.clone(), index)),
                Some(Err(e)) => stores.unopened.push(unopened(id, "vectors", e)),
                None => {}
            }
        }
        if want.graph {
            match stage.config.open_graph_index(ctx).await {
                Some(Ok(index)) => stores.graphs.push((id.clone(), index)),
                Some(Err(e)) => stores.unopened.push(unopened(id, "graph", e)),
                None => {}
            }
        }
    }
    Ok(stores)
}

impl Stores {
    fn why_not(&self) -> String {
        if self.unopened.is_empty() {
            return String::new();
        }
        let lines: Vec<String> = self
            .unopened
            .iter()
            .map(|(stage, why)| format!("\n  stage `{stage}`: {why}"))
            .collect();
        format!("; could not open:{}", lines.join(""))
    }

    /// The first vector index that opened, and the embedder that fed it (an embedding stage
    /// upstream of it; else the pipeline's only one).
    pub fn vector_search(&self) -> anyhow::Result<VectorSearch<'_>> {
        let file = self.pipeline.display();
        let Some((index_stage, index)) = self.vectors.first() else {
            bail!(
                "{file} has no stage whose vectors can be searched (a `local_store` or `qdrant` \
                 sink fed by `embed`){}",
                self.why_not()
            );
        };
        let upstream = self
            .upstream
            .iter()
            .find(|(id, _)| id == index_stage)
            .map(|(_, up)| up.as_slice())
            .unwrap_or_default();
        let embedder = upstream
            .iter()
            .find_map(|up| self.embedders.iter().find(|(id, _)| id == up))
            .or(match self.embedders.as_slice() {
                [only] => Some(only),
                _ => None,
            });
        let Some((embedder_stage, embedder)) = embedder else {
            bail!(
                "{file} has no embedding stage (`embed`) to embed the question with the model \
                 its chunks were embedded with{}",
                self.why_not()
            );
        };
        Ok(VectorSearch {
            index,
            embedder_stage,
            embedder,
        })
    }
}

/// The vector index to search and the stage whose embedder embeds the question for it.
pub struct VectorSearch<'a> {
    pub index: &'a Arc<dyn VectorIndex>,
    pub embedder_stage: &'a str,
    pub embedder: &'a Arc<dyn TextEmbedder>,
}

/// One `pipe search` answer (`--json` prints it whole).
#[derive(Debug, Serialize)]
pub struct SearchAnswer {
    pub question: String,
    pub pipeline: String,
    /// Where the chunks came from.
    pub vectors: String,
    pub model: String,
    pub hits: Vec<ChunkHit>,
    /// Where the graph came from, when the pipeline has a readable graph store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// Entities mentioned in the hits (with their mentions there), most mentioned first.
    pub entities: Vec<Entity>,
    /// Relations touching those entities, strongest first.
    pub facts: Vec<Fact>,
}

/// Searches the stores `stores` opened: top `k` chunks, then at most `max_facts` facts.
pub async fn search(
    stores: &Stores,
    question: &str,
    k: usize,
    max_facts: usize,
) -> anyhow::Result<SearchAnswer> {
    let VectorSearch {
        index,
        embedder_stage,
        embedder,
    } = stores.vector_search()?;
    let file = stores.pipeline.display();
    let model = embedder.model();
    let stored = index
        .models()
        .await
        .map_err(|e| anyhow!("{}: {}", index.describe(), e.message))?;
    if !stored.is_empty() && !stored.contains(&model) {
        bail!(
            "{} holds vectors of model {}, but stage `{embedder_stage}` embeds with `{model}`: \
             the question would be compared in another space. Run `pipe run {file}` again \
             to re-embed the chunks",
            index.describe(),
            stored
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let vector = embedder
        .embed_query(question)
        .await
        .map_err(|e| anyhow!("cannot embed the question with `{model}`: {}", e.message))?;
    let hits = index
        .nearest(&vector, k)
        .await
        .map_err(|e| anyhow!("cannot search {}: {}", index.describe(), e.message))?;
    if hits.is_empty() {
        bail!("{} is empty: run `pipe run {file}` first", index.describe());
    }
    let mut answer = SearchAnswer {
        question: question.to_string(),
        pipeline: file.to_string(),
        vectors: index.describe(),
        model,
        hits,
        graph: None,
        entities: Vec::new(),
        facts: Vec::new(),
    };
    if let Some((_, graph)) = stores.graphs.first() {
        let chunk_ids: Vec<String> = answer.hits.iter().map(|h| h.id.clone()).collect();
        answer.entities = graph
            .entities_in_chunks(&chunk_ids)
            .await
            .map_err(|e| anyhow!("cannot read {}: {}", graph.describe(), e.message))?;
        let entity_ids: Vec<String> = answer.entities.iter().map(|e| e.id.clone()).collect();
        if !entity_ids.is_empty() {
            answer.facts = graph
                .facts_about(&entity_ids, max_facts)
                .await
                .map_err(|e| anyhow!("cannot read {}: {}", graph.describe(), e.message))?;
        }
        answer.graph = Some(graph.describe());
    }
    Ok(answer)
}

/// At most `max_lines` lines of at most `width` characters each, "…" where cut.
pub fn excerpt(text: &str, max_lines: usize, width: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(max_lines)
        .map(|line| {
            if line.chars().count() > width {
                let cut: String = line.chars().take(width.saturating_sub(1)).collect();
                format!("{}…", cut.trim_end())
            } else {
                line.to_string()
            }
        })
        .collect();
    if lines.len() > max_lines {
        out.push(format!("… ({} more lines)", lines.len() - max_lines));
    }
    out
}

/// `CDR -[MENTIONS]-> O2 tank (w 12)`
pub fn fact_line(fact: &Fact) -> String {
    let weight = if fact.weight.fract() == 0.0 {
        format!("{}", fact.weight as i64)
    } else {
        format!("{:.2}", fact.weight)
    };
    format!(
        "{} -[{}]-> {} (w {weight})",
        fact.source, fact.relation, fact.target
    )
}

/// The answer for a person.
pub fn render(answer: &SearchAnswer) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} chunks nearest to \"{}\" in {} (model {}):",
        answer.hits.len(),
        answer.question,
        answer.vectors,
        answer.model
    );
    for (rank, hit) in answer.hits.iter().enumerate() {
        let p = &hit.provenance;
        let mut place = vec![
            p.source_path
                .clone()
                .unwrap_or_else(|| p.document_id.clone()),
        ];
        if let Some(index) = p.chunk_index {
            place.push(format!("chunk {index}"));
        }
        if let Some([start, end]) = p.char_span {
            place.push(format!("chars {start}–{end}"));
        }
        let _ = writeln!(
            out,
            "\n{:>2}. score {:.3} · {}",
            rank + 1,
            hit.score,
            place.join(" · ")
        );
        for line in excerpt(&hit.text, 4, 150) {
            let _ = writeln!(out, "    {line}");
        }
    }
    match &answer.graph {
        None => {
            let _ = writeln!(out, "\n(no graph store in this pipeline: no facts)");
        }
        Some(graph) => {
            if answer.entities.is_empty() {
                let _ = writeln!(
                    out,
                    "\nno entities of {graph} are mentioned in these chunks"
                );
            } else {
                let names: Vec<String> = answer
                    .entities
                    .iter()
                    .take(20)
                    .map(|e| format!("{} ({})", e.name, e.entity_type))
                    .collect();
                let more = answer.entities.len().saturating_sub(names.len());
                let _ = writeln!(
                    out,
                    "\nentities mentioned: {}{}",
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
                if answer.facts.is_empty() {
                    let _ = writeln!(out, "no facts about them in {graph}");
                } else {
                    let _ = writeln!(out, "facts:");
                    for fact in &answer.facts {
                        let _ = writeln!(out, "  {}", fact_line(fact));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_cut_by_lines_and_characters() {
        let text = "[055:55:20] CDR: I believe we've had a problem here.\n\n[055:55:28] CC: This is Houston. Say again, please.\nthree\nfour\nfive";
        let lines = excerpt(text, 2, 30);
        assert_eq!(
            lines,
            vec![
                "[055:55:20] CDR: I believe we…",
                "[055:55:28] CC: This is Houst…",
                "… (3 more lines)"
            ]
        );
        assert_eq!(excerpt("short", 4, 150), vec!["short"]);
    }

    #[test]
    fn facts_read_as_arrows_with_their_weight() {
        let fact = Fact {
            source_id: "a".into(),
            source: "CDR".into(),
            source_type: "Person".into(),
            relation: "MENTIONS".into(),
            target_id: "b".into(),
            target: "O2 tank".into(),
            target_type: "System".into(),
            weight: 12.0,
        };
        assert_eq!(fact_line(&fact), "CDR -[MENTIONS]-> O2 tank (w 12)");
        assert_eq!(
            fact_line(&Fact {
                weight: 0.5,
                ..fact
            }),
            "CDR -[MENTIONS]-> O2 tank (w 0.50)"
        );
    }
}
