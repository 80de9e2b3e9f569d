//! JSON answers that go wrong the way a real model's do, and recognising
//! such a mistake in the previous answer of a repair turn.

use serde_json::{Map, Value};

use crate::config::WrongJsonKind;
use crate::content::Encoding;
use crate::schema::{Kind, kind, resolve};

/// One step from a value to a child.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(mut v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        v = match (step, v) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Walks `value` with its schema, calling `visit(path, value, resolved schema)`
/// on every node below the root whose schema is known.
fn walk(
    root_schema: &Value,
    schema: &Value,
    value: &Value,
    path: &mut Vec<Step>,
    visit: &mut dyn FnMut(&[Step], &Value, &Value),
) {
    let s = resolve(root_schema, schema);
    let s = s.as_ref();
    if !path.is_empty() {
        visit(path, value, s);
    }
    match value {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in m {
                let Some(sub) = props.and_then(|p| p.get(k)) else {
                    continue;
                };
                path.push(Step::Key(k.clone()));
                walk(root_schema, sub, child, path, visit);
                path.pop();
            }
        }
        Value::Array(items) => {
            let Some(sub) = s.get("items").filter(|i| i.is_object()) else {
                return;
            };
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                walk(root_schema, sub, child, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Required properties present in `value`: (path of the object, key).
fn required_present(schema: &Value, value: &Value) -> Vec<(Vec<Step>, String)> {
    let mut out = Vec::new();
    let mut check = |path: &[Step], v: &Value, s: &Value| {
        if let (Value::Object(m), Some(req)) = (v, s.get("required").and_then(Value::as_array)) {
            for k in req.iter().filter_map(Value::as_str) {
                if m.contains_key(k) {
                    out.push((path.to_vec(), k.to_string()));
                }
            }
        }
    };
    let root = resolve(schema, schema);
    check(&[], value, root.as_ref());
    walk(schema, schema, value, &mut Vec::new(), &mut check);
    out
}

/// Nodes whose schema names exactly one type: candidates for a wrong type.
fn typed_nodes(schema: &Value, value: &Value) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    walk(schema, schema, value, &mut Vec::new(), &mut |path, _, s| {
        let single = s.get("type").and_then(Value::as_str).is_some();
        let constrained = s.get("enum").is_some() || s.get("const").is_some();
        if single && !constrained && kind(s) != Kind::Null {
            out.push(path.to_vec());
        }
    });
    out
}

/// The same value in another JSON type: a number or boolean as a string,
/// a string as a one-item array, an array as an object keyed by index, an
/// object as a one-item array.
fn retype(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::String(s) => Value::Array(vec![Value::String(s.clone())]),
        Value::Array(items) => Value::Object(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| (i.to_string(), x.clone()))
                .collect::<Map<String, Value>>(),
        ),
        Value::Object(_) => Value::Array(vec![v.clone()]),
        Value::Null => Value::String("null".into()),
    }
}

/// A wrong answer: its text, and whether it ends as if cut by `max_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct WrongAnswer {
    pub text: String,
    pub cut: bool,
    /// The kind actually made (a kind the value cannot show falls back to
    /// another: no required field -> wrong type -> prose).
    pub kind: WrongJsonKind,
}

/// Makes `kind` of mistake in the correct answer `value` for `schema`.
/// `cap_tokens` is the answer's token limit (for `Truncated`).
pub fn make(
    kind_wanted: WrongJsonKind,
    mut value: Value,
    schema: &Value,
    salt: u64,
    cap_tokens: u64,
    enc: Encoding,
) -> WrongAnswer {
    let mut kind_made = kind_wanted;
    if kind_made == WrongJsonKind::MissingField {
        let candidates = required_present(schema, &value);
        if candidates.is_empty() {
            kind_made = WrongJsonKind::WrongType;
        } else {
            let (path, key) = &candidates[(salt % candidates.len() as u64) as usize];
            if let Some(Value::Object(m)) = at_mut(&mut value, path) {
                m.remove(key);
            }
        }
    }
    if kind_made == WrongJsonKind::WrongType {
        let candidates = typed_nodes(schema, &value);
        match candidates.get((salt % candidates.len().max(1) as u64) as usize) {
            Some(path) => {
                if let Some(node) = at_mut(&mut value, path) {
                    *node = retype(node);
                }
            }
            None => kind_made = WrongJsonKind::Prose,
        }
    }
    match kind_made {
        WrongJsonKind::Prose => WrongAnswer {
            text: format!(
                "Here is the JSON you asked for:\n```json\n{}\n```",
                serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
            ),
            cut: false,
            kind: kind_made,
        },
        WrongJsonKind::Truncated => WrongAnswer {
            text: runaway(value, cap_tokens, enc),
            cut: true,
            kind: kind_made,
        },
        WrongJsonKind::MissingField | WrongJsonKind::WrongType => WrongAnswer {
            text: value.to_string(),
            cut: false,
            kind: kind_made,
        },
    }
}

/// The answer as a model that keeps repeating itself writes it: the largest
/// array grows until the text passes `cap` tokens, then it is cut at `cap`
/// (so the JSON is never complete). Without any non-empty array, the text is
/// cut in the middle.
fn runaway(mut value: Value, cap: u64, enc: Encoding) -> String {
    let mut text = value.to_string();
    for _ in 0..24 {
        if enc.count(&text) > cap {
            return enc.truncate(&text, cap).0;
        }
        let Some(path) = largest_array(&value) else {
            break;
        };
        if let Some(Value::Array(items)) = at_mut(&mut value, &path) {
            let copy = items.clone();
            items.extend(copy);
        }
        text = value.to_string();
    }
    let tokens = enc.count(&text);
    enc.truncate(&text, (tokens / 2).max(1)).0
}

fn largest_array(v: &Value) -> Option<Vec<Step>> {
    fn visit(v: &Value, path: &mut Vec<Step>, best: &mut Option<(usize, Vec<Step>)>) {
        match v {
            Value::Array(items) => {
                if !items.is_empty() && best.as_ref().is_none_or(|(n, _)| items.len() > *n) {
                    *best = Some((items.len(), path.clone()));
                }
                for (i, x) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    visit(x, path, best);
                    path.pop();
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(Step::Key(k.clone()));
                    visit(x, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    visit(v, &mut Vec::new(), &mut best);
    best.map(|(_, p)| p)
}

/// The kind of mistake in a previous answer, `None` when it is valid.
/// `valid` checks a parsed value against the schema and says whether any
/// error is a missing required property (`Err(true)`) or another one
/// (`Err(false)`).
pub fn classify(
    content: &str,
    valid: impl FnOnce(&Value) -> Result<(), bool>,
) -> Option<WrongJsonKind> {
    let t = content.trim();
    if t.is_empty() {
        return None;
    }
    if !(t.starts_with('{') || t.starts_with('[')) {
        return Some(WrongJsonKind::Prose);
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v) => match valid(&v) {
            Ok(()) => None,
            Err(true) => Some(WrongJsonKind::MissingField),
            Err(false) => Some(WrongJsonKind::WrongType),
        },
        Err(_) => Some(WrongJsonKind::Truncated),
    }
}

/// Validation of a value against a compiled schema, as [`classify`] wants it.
pub fn check(validator: &jsonschema::Validator, v: &Value) -> Result<(), bool> {
    let mut errors = validator.iter_errors(v).peekable();
    if errors.peek().is_none() {
        return Ok(());
    }
    let missing = errors.any(|e| {
        matches!(
            e.kind(),
            jsonschema::error::ValidationErrorKind::Required { .. }
        )
    });
    Err(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["entities"],
            "properties": {"entities": {"type": "array", "items": {"$ref": "#/$defs/e"}}},
            "$defs": {"e": {"type": "object", "required": ["name", "confidence"],
                "properties": {"name": {"type": "string"}, "confidence": {"type": "number"}}}}
        })
    }

    fn answer() -> Value {
        json!({"entities": [{"name": "CDR", "confidence": 0.9}, {"name": "O2 TANK", "confidence": 0.7}]})
    }

    #[test]
    fn every_kind_is_recognised_again() {
        let schema = schema();
        let validator = jsonschema::validator_for(&schema).expect("schema");
        for salt in 0..20 {
            for k in WrongJsonKind::ALL {
                let wrong = make(k, answer(), &schema, salt, 12, Encoding::Cl100kBase);
                assert_eq!(wrong.kind, k);
                let seen = classify(&wrong.text, |v| check(&validator, v));
                assert_eq!(seen, Some(k), "{k:?} salt {salt}: {}", wrong.text);
            }
        }
        assert_eq!(
            classify(&answer().to_string(), |v| check(&validator, v)),
            None
        );
    }

    #[test]
    fn truncated_fills_the_limit_exactly() {
        let wrong = make(
            WrongJsonKind::Truncated,
            answer(),
            &schema(),
            1,
            200,
            Encoding::Cl100kBase,
        );
        assert_eq!(Encoding::Cl100kBase.count(&wrong.text), 200);
        assert!(wrong.cut);
        assert!(serde_json::from_str::<Value>(&wrong.text).is_err());
    }

    #[test]
    fn a_kind_the_value_cannot_show_falls_back() {
        let open = json!({"type": "object"});
        let wrong = make(
            WrongJsonKind::MissingField,
            json!({"a": 1}),
            &open,
            0,
            50,
            Encoding::Cl100kBase,
        );
        assert_eq!(wrong.kind, WrongJsonKind::Prose);
    }
}
