//! Free-form JSON written in YAML — a JSON Schema, extra request fields — keeping YAML's own
//! types: `additionalProperties: false` is the boolean `false`, `maxItems: 8` the integer `8`,
//! `"8"` (quoted) the string "8", `~` / `null` null.
//!
//! The YAML loader keeps every scalar as text (so typed config fields can parse it and report
//! errors with positions); a plain `serde_json::Value` field would therefore receive strings
//! only. [`YamlJson`] instead finds its own node in the document being loaded (by its position)
//! and converts it with the YAML 1.2 core schema, honouring quotes.

use marked_yaml::Node;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::collections::HashSet;

/// A JSON value from YAML with YAML's types kept (see the module docs). Derefs to the value.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct YamlJson(pub Value);

impl YamlJson {
    pub fn into_inner(self) -> Value {
        self.0
    }
}

impl std::ops::Deref for YamlJson {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for YamlJson {
    fn from(value: Value) -> Self {
        YamlJson(value)
    }
}

impl schemars::JsonSchema for YamlJson {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Value::json_schema(generator)
    }
    fn inline_schema() -> bool {
        true
    }
}

thread_local! {
    /// The config node being deserialised by the loader on this thread.
    static SOURCE: RefCell<Option<Node>> = const { RefCell::new(None) };
    /// Positions (source, character) of the quoted scalars of the document being loaded.
    static QUOTED: RefCell<HashSet<(usize, usize)>> = RefCell::new(HashSet::new());
}

/// Runs `load` knowing which scalars of the document were quoted (see [`quoted_scalars`]).
pub(crate) fn with_quoted<T>(quoted: HashSet<(usize, usize)>, load: impl FnOnce() -> T) -> T {
    let previous = QUOTED.with(|q| std::mem::replace(&mut *q.borrow_mut(), quoted));
    let result = load();
    QUOTED.with(|q| *q.borrow_mut() = previous);
    result
}

/// Adds the positions of the scalars that were quoted (loaded with `prevent_coercion`, they
/// are the ones that may not coerce) to `into`, then lets every scalar coerce again so typed
/// config fields keep accepting `max_tokens: "800"` as they always did.
pub(crate) fn note_quoted(node: &mut Node, into: &mut HashSet<(usize, usize)>) {
    match node {
        Node::Scalar(scalar) => {
            if !scalar.may_coerce()
                && let Some(m) = scalar.span().start()
            {
                into.insert((m.source(), m.character()));
            }
            scalar.set_coerce(true);
        }
        Node::Mapping(map) => {
            for (_, value) in map.iter_mut() {
                note_quoted(value, into);
            }
        }
        Node::Sequence(seq) => {
            for value in seq.iter_mut() {
                note_quoted(value, into);
            }
        }
    }
}

/// Runs `parse` with `node` as the document [`YamlJson`] values are looked up in.
pub(crate) fn with_source<T>(node: &Node, parse: impl FnOnce() -> T) -> T {
    struct Reset(Option<Node>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let previous = SOURCE.with(|s| s.borrow_mut().replace(node.clone()));
    let _reset = Reset(previous);
    parse()
}

impl<'de> Deserialize<'de> for YamlJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let loading = SOURCE.with(|s| s.borrow().is_some());
        if !loading {
            // Not from the YAML loader (JSON, tests): the value already has its types.
            return Value::deserialize(deserializer).map(YamlJson);
        }
        let spanned = marked_yaml::Spanned::<serde::de::IgnoredAny>::deserialize(deserializer)?;
        let at = spanned.span().start().map(|m| (m.source(), m.character()));
        let found = SOURCE.with(|s| {
            let source = s.borrow();
            let root = source.as_ref()?;
            find(root, at?).map(to_json)
        });
        found.map(YamlJson).ok_or_else(|| {
            serde::de::Error::custom("internal error: this value was not found in the YAML")
        })
    }
}

fn start(node: &Node) -> Option<(usize, usize)> {
    node.span().start().map(|m| (m.source(), m.character()))
}

/// The value node starting at `at` (keys are never values, so a block mapping and its first
/// key, which share a position, cannot be confused).
fn find(node: &Node, at: (usize, usize)) -> Option<&Node> {
    if start(node) == Some(at) {
        return Some(node);
    }
    match node {
        Node::Scalar(_) => None,
        Node::Mapping(map) => map.values().find_map(|v| find(v, at)),
        Node::Sequence(seq) => seq.iter().find_map(|v| find(v, at)),
    }
}

/// YAML 1.2 core schema for plain (unquoted) scalars; quoted ones stay strings.
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Scalar(scalar) => {
            let text = scalar.as_str();
            let quoted = !scalar.may_coerce()
                || scalar.span().start().is_some_and(|m| {
                    QUOTED.with(|q| q.borrow().contains(&(m.source(), m.character())))
                });
            if quoted {
                return Value::String(text.to_string());
            }
            plain_scalar(text)
        }
    }
}

fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let integer = text
        .strip_prefix('+')
        .unwrap_or(text)
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if integer {
        if let Ok(n) = text.trim_start_matches('+').parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = text.trim_start_matches('+').parse::<u64>() {
            return Value::Number(n.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(n.into());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(n) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(n.into());
    }
    let looks_float = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "-.inf" | ".nan" | ".NaN" | ".NAN" => {
            // JSON has no infinities or NaN: keep the text rather than invent a number.
            Value::String(text.to_string())
        }
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Config {
        name: String,
        schema: YamlJson,
        extra: Option<YamlJson>,
        list: Vec<YamlJson>,
    }

    fn load(text: &str) -> Config {
        let options = marked_yaml::LoaderOptions::default().prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(0, text, options).unwrap();
        with_source(&node, || marked_yaml::from_node(&node)).unwrap()
    }

    #[test]
    fn yaml_types_reach_json_exactly() {
        let c = load(
            r#"
name: 8
schema:
  type: object
  additionalProperties: false
  required: [a, "b"]
  properties:
    a: { type: array, maxItems: 8, minItems: 0 }
    b: { type: number, minimum: -1.5, multipleOf: 0.25, default: null }
    c: { const: "8", enum: ["true", true, ~, 1e3, 'false'] }
    d: { description: "a: b", examples: [0x1F, +3, -0] }
extra: { temperature: 0.2, stream: False, n: 2 }
list: [1, "1", yes, 2.50]
"#,
        );
        // A typed String field still reads the plain scalar as text.
        assert_eq!(c.name, "8");
        let expected = serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["a", "b"],
            "properties": {
                "a": { "type": "array", "maxItems": 8, "minItems": 0 },
                "b": { "type": "number", "minimum": -1.5, "multipleOf": 0.25, "default": null },
                "c": { "const": "8", "enum": ["true", true, null, 1000.0, "false"] },
                "d": { "description": "a: b", "examples": [31, 3, 0] }
            }
        });
        assert_eq!(c.schema.0, expected);
        assert_eq!(
            c.extra.unwrap().0,
            serde_json::json!({ "temperature": 0.2, "stream": false, "n": 2 })
        );
        // YAML 1.2: `yes` is a string, not a boolean.
        assert_eq!(
            c.list.into_iter().map(|v| v.0).collect::<Vec<_>>(),
            vec![
                serde_json::json!(1),
                serde_json::json!("1"),
                serde_json::json!("yes"),
                serde_json::json!(2.5)
            ]
        );
    }

    #[test]
    fn outside_the_loader_it_is_plain_json() {
        let v: YamlJson = serde_json::from_str(r#"{"a": [1, false, null]}"#).unwrap();
        assert_eq!(v.0, serde_json::json!({"a": [1, false, null]}));
    }
}
