//! `--set stages.extract.concurrency=40`: override any YAML value from the command line.
//!
//! Overrides edit the parsed tree, so they go through exactly the same validation as the file.
//! Inside a list of mappings with `id` fields (like `stages`), a path segment names the id.

use super::diagnostic::{Diagnostic, Diagnostics, Location, did_you_mean};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Marker, Node, Span};

pub fn apply_overrides(root: &mut Node, overrides: &[String], diags: &mut Diagnostics) {
    for (index, arg) in overrides.iter().enumerate() {
        // Markers of source n (n >= 1) point back at the n-th override.
        let source = index + 1;
        if let Err(message) = apply_one(root, arg, source) {
            diags.push(
                Diagnostic::new(Location::CommandLine(arg.clone()), message.0).with_help(message.1),
            );
        }
    }
}

type Failure = (String, Option<String>);

fn apply_one(root: &mut Node, arg: &str, source: usize) -> Result<(), Failure> {
    let (path, raw_value) = arg.split_once('=').ok_or_else(|| {
        (
            "expected KEY=VALUE, e.g. stages.extract.concurrency=40".to_string(),
            None,
        )
    })?;
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.trim().is_empty()) {
        return Err((format!("`{path}` is not a valid key path"), None));
    }
    let value = parse_value(raw_value, source)?;
    let span = Span::new_start(Marker::new(source, 0, 1, 1));
    let mut current = root;
    for (depth, segment) in segments.iter().enumerate() {
        let last = depth + 1 == segments.len();
        let walked = segments[..depth].join(".");
        current = match current {
            Node::Mapping(map) => {
                if last {
                    map.insert(MarkedScalarNode::new(span, *segment), value);
                    return Ok(());
                }
                if map.get_node(segment).is_none() {
                    map.insert(
                        MarkedScalarNode::new(span, *segment),
                        Node::Mapping(MarkedMappingNode::new_empty(span)),
                    );
                }
                map.get_mut(*segment)
                    .ok_or_else(|| (format!("cannot set `{path}`"), None))?
            }
            Node::Sequence(seq) => {
                let ids: Vec<String> = seq
                    .iter()
                    .filter_map(|n| {
                        n.as_mapping()?
                            .get_scalar("id")
                            .map(|s| s.as_str().to_string())
                    })
                    .collect();
                let position = ids.iter().position(|id| id == segment);
                let Some(position) = position else {
                    let help = did_you_mean(segment, ids.iter().map(String::as_str));
                    return Err((format!("`{walked}` has no entry with id `{segment}`"), help));
                };
                if last {
                    return Err((
                        format!("`{path}` is a whole entry; set one of its fields"),
                        None,
                    ));
                }
                &mut seq[position]
            }
            Node::Scalar(_) => {
                return Err((
                    format!("`{walked}` is a value, not a section, so `{path}` cannot be set"),
                    None,
                ));
            }
        };
    }
    Ok(())
}

/// The value is YAML too, so `--set stages.x.inputs=[a,b]` works.
fn parse_value(raw: &str, source: usize) -> Result<Node, Failure> {
    let doc = format!("v: {raw}");
    let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
    let parsed = marked_yaml::parse_yaml_with_options(source, &doc, options)
        .map_err(|e| (format!("value `{raw}` is not valid YAML: {e}"), None))?;
    parsed
        .as_mapping()
        .and_then(|m| m.get_node("v"))
        .cloned()
        .ok_or_else(|| (format!("value `{raw}` is not valid YAML"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Node {
        marked_yaml::parse_yaml(
            0,
            "stages:\n  - id: read\n    kind: files\n  - id: chunk\n    kind: chunk\n    config:\n      max_tokens: 800\n",
        )
        .unwrap()
    }

    fn get<'a>(node: &'a Node, stage: usize, key: &str) -> &'a Node {
        node.as_mapping().unwrap().get_sequence("stages").unwrap()[stage]
            .as_mapping()
            .unwrap()
            .get_node(key)
            .unwrap()
    }

    #[test]
    fn sets_existing_and_new_values_by_stage_id() {
        let mut root = tree();
        let mut diags = Diagnostics::default();
        apply_overrides(
            &mut root,
            &[
                "stages.chunk.config.max_tokens=500".into(),
                "stages.read.concurrency=4".into(),
                "stages.chunk.inputs=[read]".into(),
            ],
            &mut diags,
        );
        assert!(diags.is_empty(), "{diags}");
        let cfg = get(&root, 1, "config").as_mapping().unwrap();
        assert_eq!(cfg.get_scalar("max_tokens").unwrap().as_str(), "500");
        assert_eq!(
            get(&root, 0, "concurrency").as_scalar().unwrap().as_str(),
            "4"
        );
        assert_eq!(get(&root, 1, "inputs").as_sequence().unwrap().len(), 1);
    }

    #[test]
    fn unknown_stage_and_malformed_args_are_reported() {
        let mut root = tree();
        let mut diags = Diagnostics::default();
        apply_overrides(
            &mut root,
            &[
                "stages.chunkk.concurrency=4".into(),
                "nonsense".into(),
                "stages.read.kind.x=1".into(),
            ],
            &mut diags,
        );
        let text = diags.to_string();
        assert!(text.contains("--set stages.chunkk.concurrency=4: error: `stages` has no entry with id `chunkk` (did you mean `chunk`?)"), "{text}");
        assert!(
            text.contains("--set nonsense: error: expected KEY=VALUE"),
            "{text}"
        );
        assert!(
            text.contains("`stages.read.kind` is a value, not a section"),
            "{text}"
        );
    }
}
