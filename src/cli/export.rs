//! `pipe graph export --format graphml|json|cypher`: the graph a pipeline's store holds, as a
//! file other tools read. Names come from model output, so every format escapes everything:
//! GraphML is well-formed XML whatever the names hold, and the Cypher script is re-creatable
//! (MERGE on ids) with labels and relationship types validated and backtick-quoted and every
//! value an escaped literal.

use super::logging::{self, LogFormat};
use super::search::{Want, open_stores};
use super::{EXIT_FAILED, ValidateArgs};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use pipeline::{Entity, Graph, Registry, Relation};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum GraphCommand {
    /// Write the graph a pipeline's store holds as GraphML, JSON or a Cypher script.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    format: Format,
    /// The pipeline whose graph store to read.
    #[arg(long, value_name = "FILE", default_value = "pipelines.yaml")]
    pipeline: PathBuf,
    /// Write here (atomically) instead of to stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// Where the run kept its state (embedded store).
    #[arg(long, value_name = "DIR", default_value = ".pipe")]
    state_dir: PathBuf,
    /// Override a pipeline value, as with `pipe run` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// `pipe graph ...`.
pub(super) async fn command(registry: Registry, command: GraphCommand) -> ExitCode {
    let GraphCommand::Export(args) = command;
    if let Err(e) = logging::init(LogFormat::Text, None, None, false) {
        eprintln!("error: {e}");
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
    let result = async {
        let want = Want {
            embedder: false,
            vectors: false,
            graph: true,
        };
        let stores = open_stores(&plan, &args.state_dir, want).await?;
        let Some((_, index)) = stores.graphs.first() else {
            let why: Vec<String> = stores
                .unopened
                .iter()
                .map(|(stage, why)| format!("\n  stage `{stage}`: {why}"))
                .collect();
            bail!(
                "{} has no stage whose graph can be read back (`local_store`, `falkordb`, \
                 `neo4j`){}",
                plan.file.display(),
                if why.is_empty() {
                    String::new()
                } else {
                    format!("; could not open:{}", why.join(""))
                }
            );
        };
        let graph = index
            .export()
            .await
            .map_err(|e| anyhow!("cannot read {}: {}", index.describe(), e.message))?;
        if graph.entities.is_empty() && graph.relations.is_empty() {
            bail!(
                "{} holds no graph: run `pipe run {}` first",
                index.describe(),
                plan.file.display()
            );
        }
        let (text, warning) = export(&graph, args.format);
        if let Some(warning) = warning {
            eprintln!("warning: {warning}");
        }
        match &args.out {
            Some(path) => {
                write_atomically(path, text.as_bytes())?;
                eprintln!(
                    "{} entities and {} relations from {} written to {}",
                    graph.entities.len(),
                    graph.relations.len(),
                    index.describe(),
                    path.display()
                );
            }
            None => print!("{text}"),
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Written beside the target, then renamed over it: never half a file under its name.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// GraphML (Gephi, yEd, NetworkX, Cytoscape).
    Graphml,
    /// The graph as pipe stores it: entities and relations with their mentions.
    Json,
    /// A Cypher script that re-creates the graph (Neo4j, FalkorDB, Memgraph).
    Cypher,
}

/// Relations whose ends are both entities of the graph, and how many were left out.
fn connected(graph: &Graph) -> (Vec<&Relation>, usize) {
    let ids: HashSet<&str> = graph.entities.iter().map(|e| e.id.as_str()).collect();
    let (kept, dangling): (Vec<&Relation>, Vec<&Relation>) = graph
        .relations
        .iter()
        .partition(|r| ids.contains(r.source.as_str()) && ids.contains(r.target.as_str()));
    (kept, dangling.len())
}

/// The text of the export, and a warning when relations had to be left out.
pub fn export(graph: &Graph, format: Format) -> (String, Option<String>) {
    let (relations, dangling) = connected(graph);
    let warning = (dangling > 0 && format != Format::Json).then(|| {
        format!(
            "{dangling} relations left out: an end is not an entity of the store (the json \
             export keeps them)"
        )
    });
    let text = match format {
        Format::Json => serde_json::to_string_pretty(graph).unwrap_or_default() + "\n",
        Format::Graphml => graphml(&graph.entities, &relations),
        Format::Cypher => cypher(&graph.entities, &relations),
    };
    (text, warning)
}

fn chunk_ids(mentions: &[pipeline::Mention]) -> Vec<String> {
    let set: BTreeSet<&str> = mentions.iter().map(|m| m.chunk_id.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

fn document_ids(mentions: &[pipeline::Mention]) -> Vec<String> {
    let set: BTreeSet<&str> = mentions.iter().map(|m| m.document_id.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// GraphML

/// XML 1.0 cannot carry most control characters at all (not even as references): they become
/// U+FFFD. Markup characters become entities; CR, LF and TAB become character references, so
/// that no parser normalises them away (attribute values) or folds CR into LF (text).
/// Hand-written because quick-xml's `escape` leaves those characters as they are.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// (key id, for, attr.name, attr.type)
const GRAPHML_KEYS: [(&str, &str, &str, &str); 14] = [
    ("name", "node", "name", "string"),
    ("type", "node", "type", "string"),
    ("aliases", "node", "aliases", "string"),
    ("descriptions", "node", "descriptions", "string"),
    ("chunk_ids", "node", "chunk_ids", "string"),
    ("document_ids", "node", "document_ids", "string"),
    ("confidence", "node", "confidence", "double"),
    ("properties", "node", "properties", "string"),
    ("r_type", "edge", "type", "string"),
    ("r_weight", "edge", "weight", "double"),
    ("r_descriptions", "edge", "descriptions", "string"),
    ("r_chunk_ids", "edge", "chunk_ids", "string"),
    ("r_confidence", "edge", "confidence", "double"),
    ("r_properties", "edge", "properties", "string"),
];

fn data(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "      <data key=\"{key}\">{}</data>",
        xml_escape(value)
    );
}

/// Lists are written as JSON arrays (GraphML has no list type).
pub fn graphml(entities: &[Entity], relations: &[&Relation]) -> String {
    let mut out = String::with_capacity(256 * (entities.len() + relations.len()) + 2048);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(
        "<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://graphml.graphdrawing.org/xmlns \
         http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd\">\n",
    );
    for (id, kind, name, ty) in GRAPHML_KEYS {
        let _ = writeln!(
            out,
            "  <key id=\"{id}\" for=\"{kind}\" attr.name=\"{name}\" attr.type=\"{ty}\"/>"
        );
    }
    out.push_str("  <graph id=\"pipe\" edgedefault=\"directed\">\n");
    for e in entities {
        let _ = writeln!(out, "    <node id=\"{}\">", xml_escape(&e.id));
        data(&mut out, "name", &e.name);
        data(&mut out, "type", &e.entity_type);
        data(&mut out, "aliases", &json_text(&e.aliases));
        data(&mut out, "descriptions", &json_text(&e.descriptions));
        data(&mut out, "chunk_ids", &json_text(&chunk_ids(&e.mentions)));
        data(
            &mut out,
            "document_ids",
            &json_text(&document_ids(&e.mentions)),
        );
        if let Some(c) = e.confidence.filter(|c| c.is_finite()) {
            data(&mut out, "confidence", &c.to_string());
        }
        if !e.properties.is_empty() {
            data(&mut out, "properties", &json_text(&e.properties));
        }
        out.push_str("    </node>\n");
    }
    for r in relations {
        let _ = writeln!(
            out,
            "    <edge id=\"{}\" source=\"{}\" target=\"{}\">",
            xml_escape(&r.id),
            xml_escape(&r.source),
            xml_escape(&r.target)
        );
        data(&mut out, "r_type", &r.relation_type);
        data(&mut out, "r_weight", &r.weight.to_string());
        data(&mut out, "r_descriptions", &json_text(&r.descriptions));
        data(&mut out, "r_chunk_ids", &json_text(&chunk_ids(&r.mentions)));
        if let Some(c) = r.confidence.filter(|c| c.is_finite()) {
            data(&mut out, "r_confidence", &c.to_string());
        }
        if !r.properties.is_empty() {
            data(&mut out, "r_properties", &json_text(&r.properties));
        }
        out.push_str("    </edge>\n");
    }
    out.push_str("  </graph>\n</graphml>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Cypher

/// Labels and relationship types cannot be parameters: only names of this shape are used as
/// such (and still backtick-quoted); anything else is kept as a property.
pub fn is_safe_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `` `name` `` with backticks doubled.
pub fn backticked(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A single-quoted Cypher string literal: backslash, quotes and every control character
/// escaped, so no value can end the literal.
pub fn string_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn number_literal(x: f64) -> Option<String> {
    x.is_finite().then(|| {
        let text = format!("{x:?}");
        // `1e-7` → `1.0e-7`: a mantissa with a decimal point reads as a float everywhere.
        match text.split_once('e') {
            Some((mantissa, exponent)) if !mantissa.contains('.') => {
                format!("{mantissa}.0e{exponent}")
            }
            _ => text,
        }
    })
}

fn list_literal(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| string_literal(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A property value: primitives and lists of one primitive kind as they are; anything else
/// (maps, mixed lists) as JSON text. `None` for null (a null property is no property).
fn value_literal(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Some(i.to_string()),
            (None, Some(f)) => number_literal(f),
            _ => Some(string_literal(&n.to_string())),
        },
        Value::String(s) => Some(string_literal(s)),
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect();
            let numbers: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
            let bools: Option<Vec<bool>> = items.iter().map(Value::as_bool).collect();
            if let Some(strings) = strings {
                Some(list_literal(&strings))
            } else if let Some(bools) = bools {
                let b: Vec<String> = bools.iter().map(bool::to_string).collect();
                Some(format!("[{}]", b.join(", ")))
            } else if let Some(numbers) = numbers.filter(|n| n.iter().all(|x| x.is_finite())) {
                let n: Vec<String> = items
                    .iter()
                    .zip(numbers)
                    .filter_map(|(v, f)| match v.as_i64() {
                        Some(i) => Some(i.to_string()),
                        None => number_literal(f),
                    })
                    .collect();
                Some(format!("[{}]", n.join(", ")))
            } else {
                Some(string_literal(&value.to_string()))
            }
        }
        Value::Object(_) => Some(string_literal(&value.to_string())),
    }
}

/// Properties pipe sets itself; a schema property of the same name does not overwrite them.
const RESERVED: [&str; 10] = [
    "id",
    "name",
    "type",
    "aliases",
    "descriptions",
    "chunk_ids",
    "document_ids",
    "confidence",
    "weight",
    "source_type",
];

fn set_properties(
    out: &mut String,
    var: &str,
    fixed: &[(&str, String)],
    extra: &serde_json::Map<String, Value>,
) {
    let mut sets: Vec<String> = fixed
        .iter()
        .map(|(key, literal)| format!("{var}.{} = {literal}", backticked(key)))
        .collect();
    for (key, value) in extra {
        if RESERVED.contains(&key.as_str()) {
            continue;
        }
        if let Some(literal) = value_literal(value) {
            sets.push(format!("{var}.{} = {literal}", backticked(key)));
        }
    }
    if !sets.is_empty() {
        let _ = write!(out, " SET {}", sets.join(", "));
    }
}

/// One statement per line, each ending in `;`. Nodes are MERGEd on `(:Entity {id})`, with
/// their type as a second label when it is a safe name; relationships are MERGEd on their
/// `id` between matched ends, typed by their relation type when safe (else `RELATED_TO`,
/// the original type kept as the `type` property). Running it twice changes nothing.
pub fn cypher(entities: &[Entity], relations: &[&Relation]) -> String {
    let mut out = String::with_capacity(320 * (entities.len() + relations.len()) + 512);
    let _ = writeln!(
        out,
        "// pipe graph export: {} entities, {} relations. Re-creatable: every statement MERGEs on ids.",
        entities.len(),
        relations.len()
    );
    out.push_str(
        "// Neo4j, for speed on large graphs, first: CREATE CONSTRAINT pipe_entity_id IF NOT \
         EXISTS FOR (n:Entity) REQUIRE n.id IS UNIQUE;\n",
    );
    for e in entities {
        let labels = if is_safe_name(&e.entity_type) && e.entity_type != "Entity" {
            format!(":Entity:{}", backticked(&e.entity_type))
        } else {
            ":Entity".to_string()
        };
        let _ = write!(out, "MERGE (n{labels} {{id: {}}})", string_literal(&e.id));
        let mut fixed = vec![
            ("name", string_literal(&e.name)),
            ("type", string_literal(&e.entity_type)),
            ("aliases", list_literal(&e.aliases)),
            ("descriptions", list_literal(&e.descriptions)),
            ("chunk_ids", list_literal(&chunk_ids(&e.mentions))),
            ("document_ids", list_literal(&document_ids(&e.mentions))),
        ];
        if let Some(c) = e.confidence.and_then(number_literal) {
            fixed.push(("confidence", c));
        }
        set_properties(&mut out, "n", &fixed, &e.properties);
        out.push_str(";\n");
    }
    for r in relations {
        let rel_type = if is_safe_name(&r.relation_type) {
            backticked(&r.relation_type)
        } else {
            "`RELATED_TO`".to_string()
        };
        let _ = write!(
            out,
            "MATCH (a:Entity {{id: {}}}), (b:Entity {{id: {}}}) MERGE (a)-[r:{rel_type} {{id: {}}}]->(b)",
            string_literal(&r.source),
            string_literal(&r.target),
            string_literal(&r.id)
        );
        let mut fixed = vec![
            ("type", string_literal(&r.relation_type)),
            ("descriptions", list_literal(&r.descriptions)),
            ("chunk_ids", list_literal(&chunk_ids(&r.mentions))),
            ("document_ids", list_literal(&document_ids(&r.mentions))),
        ];
        if let Some(w) = number_literal(r.weight) {
            fixed.push(("weight", w));
        }
        if let Some(c) = r.confidence.and_then(number_literal) {
            fixed.push(("confidence", c));
        }
        set_properties(&mut out, "r", &fixed, &r.properties);
        out.push_str(";\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_that_are_not_safe_labels_are_recognised() {
        for ok in ["Person", "SPACE_CRAFT", "_x", "O2Tank"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in [
            "",
            "2Tank",
            "space craft",
            "A`B",
            "}) DETACH DELETE n //",
            "Ärzte",
            "a-b",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert_eq!(backticked("a`b"), "`a``b`");
    }

    #[test]
    fn string_literals_escape_everything_that_could_end_them() {
        assert_eq!(string_literal("plain"), "'plain'");
        assert_eq!(
            string_literal("it's \"x\" \\ `y`\n\t\u{1}"),
            r#"'it\'s \"x\" \\ `y`\n\t\u0001'"#
        );
        assert_eq!(string_literal("Хьюстон 休斯顿"), "'Хьюстон 休斯顿'");
    }

    #[test]
    fn values_become_literals_of_their_kind() {
        assert_eq!(value_literal(&json!(3)).unwrap(), "3");
        assert_eq!(value_literal(&json!(0.5)).unwrap(), "0.5");
        assert_eq!(value_literal(&json!(1e-7)).unwrap(), "1.0e-7");
        assert_eq!(value_literal(&json!(true)).unwrap(), "true");
        assert_eq!(value_literal(&json!(["a", "b'"])).unwrap(), r"['a', 'b\'']");
        assert_eq!(value_literal(&json!([1, 2.5])).unwrap(), "[1, 2.5]");
        assert_eq!(
            value_literal(&json!({"k": "v"})).unwrap(),
            r#"'{\"k\":\"v\"}'"#
        );
        assert_eq!(value_literal(&json!(null)), None);
    }

    #[test]
    fn xml_escaping_keeps_documents_well_formed() {
        assert_eq!(
            xml_escape("a<b>&\"c'\n\t\r\u{0}\u{1b}"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;&#9;&#13;\u{FFFD}\u{FFFD}"
        );
    }
}
