//! Answers that follow a JSON Schema.
//!
//! A generic generator walks the schema (object, array, string, number,
//! integer, boolean, null, enum, const, required, additionalProperties, local
//! `$ref`, anyOf / oneOf / allOf) and fills it. Properties whose names an
//! extraction schema uses (`entities`, `relations`, `name`, `type`, `source`,
//! `target`, `description`, `chunks`, `chunk_id`, `confidence`) get content
//! from the heuristic extractor; every other value is deterministic filler of
//! the right type. Salts come from the content (entity name, chunk text), not
//! from the request, so a chunk gives the same items alone or in a batch.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use crate::content::{Doc, Entity, EntityKind, Relation, extract, extraction_json};

/// Nesting deeper than this (a recursive schema) gets minimal values.
const MAX_DEPTH: usize = 24;

/// One `<chunk id="ID">\nTEXT\n</chunk>` block of a batched request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkBlock {
    pub id: String,
    pub text: String,
}

/// The chunk blocks of `text`, in order. Text outside the blocks is ignored
/// by the extractor when there is at least one block.
pub fn chunk_blocks(text: &str) -> Vec<ChunkBlock> {
    const OPEN: &str = "<chunk id=\"";
    const CLOSE: &str = "</chunk>";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let Some(id_end) = after_open.find("\">") else {
            break;
        };
        let id = &after_open[..id_end];
        let body_and_more = &after_open[id_end + 2..];
        let Some(body_end) = body_and_more.find(CLOSE) else {
            break;
        };
        let body = &body_and_more[..body_end];
        let body = body.strip_prefix('\n').unwrap_or(body);
        let body = body.strip_suffix('\n').unwrap_or(body);
        out.push(ChunkBlock {
            id: id.to_string(),
            text: body.to_string(),
        });
        rest = &body_and_more[body_end + CLOSE.len()..];
    }
    out
}

/// What the answer is about: the extraction of the whole text, and of each
/// chunk block when the request is batched.
#[derive(Debug, Clone, Default)]
pub struct Extraction {
    pub doc: Doc,
    pub chunks: Vec<(String, Doc, u64)>,
}

impl Extraction {
    /// Extracts from the chunk blocks of `text` when it has some (each block
    /// on its own), otherwise from the whole text.
    pub fn of(text: &str) -> Self {
        let blocks = chunk_blocks(text);
        if blocks.is_empty() {
            return Self {
                doc: extract(text),
                chunks: Vec::new(),
            };
        }
        let chunks: Vec<(String, Doc, u64)> = blocks
            .into_iter()
            .map(|b| {
                let salt = salt(&["chunk", &b.text]);
                (b.id, extract(&b.text), salt)
            })
            .collect();
        let mut doc = Doc::default();
        for (_, d, _) in &chunks {
            for e in &d.entities {
                if !doc.entities.iter().any(|x| x.name == e.name) {
                    doc.entities.push(e.clone());
                }
            }
            for r in &d.relations {
                if !doc.relations.contains(r) {
                    doc.relations.push(r.clone());
                }
            }
        }
        Self { doc, chunks }
    }
}

/// Where a schema sits in a prompt: the byte range from the start of the
/// line holding the marker to the end of the schema (and its closing fence).
fn schema_span(text: &str) -> Option<(usize, usize, Value)> {
    const MARK: &str = "valid against this json schema:";
    // ASCII lowercasing keeps byte offsets.
    let at = text.to_ascii_lowercase().find(MARK)?;
    let after_mark = &text[at + MARK.len()..];
    let rest = after_mark.trim_start();
    let fenced = rest
        .strip_prefix("```json")
        .or_else(|| rest.strip_prefix("```"));
    let json_text = fenced.unwrap_or(rest);
    let json_start = text.len() - json_text.len();
    let mut values = serde_json::Deserializer::from_str(json_text).into_iter::<Value>();
    let value = values.next()?.ok().filter(Value::is_object)?;
    let mut end = json_start + values.byte_offset();
    if fenced.is_some() {
        let tail = &text[end..];
        if let Some(close) = tail.trim_start().strip_prefix("```") {
            end = text.len() - close.len();
        }
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    Some((line_start, end, value))
}

/// A JSON Schema written into a prompt after the words "valid against this
/// JSON Schema:" (any case), optionally inside a Markdown fence.
pub fn schema_in_text(text: &str) -> Option<Value> {
    schema_span(text).map(|(_, _, v)| v)
}

/// `text` without the instruction line that carries a schema (the model
/// does not extract entities from the schema itself).
pub fn without_schema(text: &str) -> Cow<'_, str> {
    match schema_span(text) {
        Some((start, end, _)) => Cow::Owned(format!("{}{}", &text[..start], &text[end..])),
        None => Cow::Borrowed(text),
    }
}

fn first_u64(h: blake3::Hash) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(eight)
}

/// A deterministic 64-bit salt from some strings.
pub fn salt(parts: &[&str]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    first_u64(h.finalize())
}

/// A salt derived from another and a name.
fn mix(a: u64, b: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&a.to_le_bytes());
    h.update(b.as_bytes());
    first_u64(h.finalize())
}

/// Uniform in [0, 1) from a salt.
fn unit(s: u64) -> f64 {
    (s >> 11) as f64 / (1u64 << 53) as f64
}

/// The JSON type a schema asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Integer,
    Boolean,
    Null,
    Any,
}

/// The type of a (resolved) schema: its `type` (the first non-null one of a
/// list), or what its keywords imply.
pub fn kind(s: &Value) -> Kind {
    let named = |t: &str| match t {
        "object" => Some(Kind::Object),
        "array" => Some(Kind::Array),
        "string" => Some(Kind::String),
        "number" => Some(Kind::Number),
        "integer" => Some(Kind::Integer),
        "boolean" => Some(Kind::Boolean),
        "null" => Some(Kind::Null),
        _ => None,
    };
    match s.get("type") {
        Some(Value::String(t)) => named(t).unwrap_or(Kind::Any),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            names
                .iter()
                .find(|t| **t != "null")
                .or(names.first())
                .and_then(|t| named(t))
                .unwrap_or(Kind::Any)
        }
        _ => {
            if s.get("properties").is_some()
                || s.get("required").is_some()
                || s.get("additionalProperties").is_some()
            {
                Kind::Object
            } else if s.get("items").is_some() {
                Kind::Array
            } else {
                Kind::Any
            }
        }
    }
}

/// Follows local `$ref`s and picks a branch of anyOf / oneOf (the first that
/// is not `null`), merging allOf. `root` is the document `$ref`s point into.
pub fn resolve<'a>(root: &'a Value, schema: &'a Value) -> Cow<'a, Value> {
    let mut s = schema;
    for _ in 0..32 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(target) => {
                    s = target;
                    continue;
                }
                None => break,
            }
        }
        let branches = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Value::as_array);
        if let Some(bs) = branches {
            let pick = bs
                .iter()
                .find(|b| kind(&resolve(root, b)) != Kind::Null)
                .or(bs.first());
            match pick {
                Some(b) => {
                    s = b;
                    continue;
                }
                None => break,
            }
        }
        break;
    }
    match s.get("allOf").and_then(Value::as_array) {
        Some(parts) if !parts.is_empty() => {
            let mut merged = s.as_object().cloned().unwrap_or_default();
            merged.remove("allOf");
            for part in parts {
                let part = resolve(root, part);
                let Some(obj) = part.as_object() else {
                    continue;
                };
                for (k, v) in obj {
                    match (k.as_str(), merged.get_mut(k)) {
                        ("properties", Some(Value::Object(mine))) => {
                            if let Value::Object(theirs) = v {
                                for (pk, pv) in theirs {
                                    mine.entry(pk.clone()).or_insert_with(|| pv.clone());
                                }
                            }
                        }
                        ("required", Some(Value::Array(mine))) => {
                            if let Value::Array(theirs) = v {
                                for r in theirs {
                                    if !mine.contains(r) {
                                        mine.push(r.clone());
                                    }
                                }
                            }
                        }
                        (_, Some(_)) => {}
                        (_, None) => {
                            merged.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Cow::Owned(Value::Object(merged))
        }
        _ => Cow::Borrowed(s),
    }
}

/// Where in the extraction a value is being generated.
#[derive(Clone, Copy)]
enum Ctx<'a> {
    /// The top of the answer, or a wrapper object above the extraction.
    Root(&'a Extraction),
    /// One item of `chunks`.
    Chunk(&'a str, &'a Doc, u64),
    /// One item of `entities`.
    Entity(&'a Entity),
    /// One item of `relations`, with the entities it may point to.
    Relation(&'a Relation, &'a Doc),
    /// Anything else: filler, salted.
    Free(u64),
}

impl Ctx<'_> {
    fn salt(&self) -> u64 {
        match self {
            Ctx::Root(_) => 0x5eed,
            Ctx::Chunk(_, _, s) | Ctx::Free(s) => *s,
            Ctx::Entity(e) => salt(&["entity", &e.name]),
            Ctx::Relation(r, _) => salt(&["relation", &r.source, &r.target, r.kind]),
        }
    }
}

/// An answer for `schema` with the content of `ex`.
pub fn generate(schema: &Value, ex: &Extraction) -> Value {
    Gen { root: schema }.value(schema, Ctx::Root(ex), "", 0)
}

struct Gen<'a> {
    root: &'a Value,
}

impl Gen<'_> {
    fn value(&self, schema: &Value, ctx: Ctx<'_>, name: &str, depth: usize) -> Value {
        let s = resolve(self.root, schema);
        let s = s.as_ref();
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(values) = s
            .get("enum")
            .and_then(Value::as_array)
            .filter(|v| !v.is_empty())
        {
            return pick(values, mix(ctx.salt(), name)).clone();
        }
        match kind(s) {
            Kind::Object => self.object(s, ctx, depth),
            Kind::Array => self.array(s, ctx, name, depth),
            Kind::String => Value::String(self.string(s, ctx, name)),
            Kind::Number => number(s, mix(ctx.salt(), name), false),
            Kind::Integer => number(s, mix(ctx.salt(), name), true),
            Kind::Boolean => Value::Bool(mix(ctx.salt(), name) & 1 == 1),
            Kind::Null => Value::Null,
            Kind::Any => match ctx {
                Ctx::Root(ex) if depth == 0 => extraction_json(&ex.doc),
                _ => Value::String(self.string(s, ctx, name)),
            },
        }
    }

    fn object(&self, s: &Value, ctx: Ctx<'_>, depth: usize) -> Value {
        let mut out = Map::new();
        let props = s.get("properties").and_then(Value::as_object);
        let closed = s.get("additionalProperties") == Some(&Value::Bool(false));
        match props {
            Some(props) if !props.is_empty() => {
                for (k, sub) in props {
                    let v = if depth >= MAX_DEPTH {
                        Value::Null
                    } else {
                        self.property(k, sub, ctx, depth + 1)
                    };
                    out.insert(k.clone(), v);
                }
            }
            _ => {
                // An open object with no properties takes anything: at the top
                // that is the extraction shape, as without a schema.
                if let (Ctx::Root(ex), false) = (ctx, closed)
                    && let Value::Object(m) = extraction_json(&ex.doc)
                {
                    out = m;
                }
            }
        }
        // Required keys without a property schema (only legal when open).
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !out.contains_key(k) {
                    out.insert(
                        k.to_string(),
                        Value::String(filler_string(&json!({}), k, mix(ctx.salt(), k))),
                    );
                }
            }
        }
        Value::Object(out)
    }

    fn property(&self, name: &str, sub: &Value, ctx: Ctx<'_>, depth: usize) -> Value {
        let resolved = resolve(self.root, sub);
        let r = resolved.as_ref();
        match (name, ctx) {
            ("entities", Ctx::Root(ex)) => {
                self.list(r, ex.doc.entities.iter().map(Ctx::Entity), ctx, name, depth)
            }
            ("entities", Ctx::Chunk(_, doc, _)) => {
                self.list(r, doc.entities.iter().map(Ctx::Entity), ctx, name, depth)
            }
            ("relations", Ctx::Root(ex)) => self.list(
                r,
                ex.doc
                    .relations
                    .iter()
                    .map(|rel| Ctx::Relation(rel, &ex.doc)),
                ctx,
                name,
                depth,
            ),
            ("relations", Ctx::Chunk(_, doc, _)) => self.list(
                r,
                doc.relations.iter().map(|rel| Ctx::Relation(rel, doc)),
                ctx,
                name,
                depth,
            ),
            ("chunks", Ctx::Root(ex)) => {
                if ex.chunks.is_empty() {
                    let whole = [("1".to_string(), ex.doc.clone(), salt(&["chunk", "1"]))];
                    let items: Vec<Ctx<'_>> = whole
                        .iter()
                        .map(|(id, d, s)| Ctx::Chunk(id, d, *s))
                        .collect();
                    self.list(r, items.into_iter(), ctx, name, depth)
                } else {
                    self.list(
                        r,
                        ex.chunks.iter().map(|(id, d, s)| Ctx::Chunk(id, d, *s)),
                        ctx,
                        name,
                        depth,
                    )
                }
            }
            ("chunk_id", Ctx::Chunk(id, _, _)) => self.text_value(r, id, ctx, name, depth),
            ("name", Ctx::Entity(e)) => self.text_value(r, &e.name, ctx, name, depth),
            ("type", Ctx::Entity(e)) => match enum_of(r) {
                Some(values) => entity_type(values, e),
                None => self.text_value(r, e.kind.label(), ctx, name, depth),
            },
            ("description", Ctx::Entity(e)) => {
                let d = match e.kind {
                    EntityKind::Speaker => format!("{}, a speaker in the transcript.", e.name),
                    EntityKind::Acronym => format!("{}, equipment named in the text.", e.name),
                    EntityKind::Other => format!("{}, mentioned in the text.", e.name),
                };
                self.text_value(r, &d, ctx, name, depth)
            }
            ("source", Ctx::Relation(rel, doc)) => self.endpoint(r, &rel.source, doc, depth),
            ("target", Ctx::Relation(rel, doc)) => self.endpoint(r, &rel.target, doc, depth),
            ("type", Ctx::Relation(rel, _)) => match enum_of(r) {
                Some(values) => relation_type(values, rel),
                None => self.text_value(r, rel.kind, ctx, name, depth),
            },
            ("description", Ctx::Relation(rel, _)) => {
                let verb = if rel.kind == "MENTIONS" {
                    "mentions"
                } else {
                    "is related to"
                };
                let d = format!("{} {verb} {}.", rel.source, rel.target);
                self.text_value(r, &d, ctx, name, depth)
            }
            ("confidence", _) => match kind(r) {
                Kind::Number | Kind::Integer | Kind::Any if enum_of(r).is_none() => {
                    number(r, mix(ctx.salt(), name), kind(r) == Kind::Integer)
                }
                _ => self.value(r, Ctx::Free(mix(ctx.salt(), name)), name, depth),
            },
            // A wrapper object above the extraction keeps the content.
            (_, Ctx::Root(_)) if kind(r) == Kind::Object => self.value(r, ctx, name, depth),
            _ => self.value(r, Ctx::Free(mix(ctx.salt(), name)), name, depth),
        }
    }

    /// An array with one item per context (capped at `maxItems`, padded with
    /// filler up to `minItems`).
    fn list<'c>(
        &self,
        s: &Value,
        items: impl Iterator<Item = Ctx<'c>>,
        parent: Ctx<'_>,
        name: &str,
        depth: usize,
    ) -> Value {
        if kind(s) != Kind::Array {
            return self.value(s, Ctx::Free(mix(parent.salt(), name)), name, depth);
        }
        let empty = json!({});
        let item_schema = s.get("items").filter(|i| i.is_object()).unwrap_or(&empty);
        let (min, max) = item_bounds(s);
        let mut out: Vec<Value> = items
            .take(max)
            .map(|c| self.value(item_schema, c, "", depth + 1))
            .collect();
        let mut i = 0u64;
        while out.len() < min {
            let filler = Ctx::Free(mix(parent.salt(), &format!("{name}#{i}")));
            out.push(self.value(item_schema, filler, "", depth + 1));
            i += 1;
        }
        Value::Array(out)
    }

    fn array(&self, s: &Value, ctx: Ctx<'_>, name: &str, depth: usize) -> Value {
        let (min, max) = item_bounds(s);
        let n = min.max(1).min(max);
        let empty = json!({});
        let item_schema = s.get("items").filter(|i| i.is_object()).unwrap_or(&empty);
        if depth >= MAX_DEPTH {
            return Value::Array(Vec::new());
        }
        let base = mix(ctx.salt(), name);
        let items = (0..n)
            .map(|i| {
                let c = match ctx {
                    // An array of strings inside an entity: its name.
                    Ctx::Entity(_) | Ctx::Relation(..) | Ctx::Chunk(..) if i == 0 => ctx,
                    _ => Ctx::Free(mix(base, &i.to_string())),
                };
                self.value(item_schema, c, "", depth + 1)
            })
            .collect();
        Value::Array(items)
    }

    fn string(&self, s: &Value, ctx: Ctx<'_>, name: &str) -> String {
        let text = match (ctx, name) {
            (Ctx::Entity(e), "") => e.name.clone(),
            (Ctx::Relation(r, _), "") => format!("{} {} {}", r.source, r.kind, r.target),
            (Ctx::Chunk(id, _, _), "") => id.to_string(),
            _ => return filler_string(s, name, mix(ctx.salt(), name)),
        };
        fit_length(s, text)
    }

    /// `text` as a value of the schema's type: the text itself for a string,
    /// a parsed number when it is one, filler otherwise.
    fn text_value(&self, s: &Value, text: &str, ctx: Ctx<'_>, name: &str, depth: usize) -> Value {
        if let Some(values) = enum_of(s) {
            return values
                .iter()
                .find(|v| v.as_str() == Some(text))
                .unwrap_or_else(|| pick(values, salt(&[text])))
                .clone();
        }
        match kind(s) {
            Kind::String | Kind::Any => Value::String(fit_length(s, text.to_string())),
            Kind::Integer => match text.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => number(s, salt(&[text]), true),
            },
            Kind::Number => match text.parse::<f64>() {
                Ok(n) => json!(n),
                Err(_) => number(s, salt(&[text]), false),
            },
            _ => self.value(s, Ctx::Free(mix(ctx.salt(), name)), name, depth),
        }
    }

    /// A relation's source or target: the entity's name, or the entity as an
    /// object when the schema wants one.
    fn endpoint(&self, s: &Value, entity_name: &str, doc: &Doc, depth: usize) -> Value {
        if kind(s) != Kind::Object {
            return self.text_value(s, entity_name, Ctx::Free(salt(&[entity_name])), "", depth);
        }
        let fallback = Entity {
            name: entity_name.to_string(),
            kind: EntityKind::Other,
        };
        let e = doc
            .entities
            .iter()
            .find(|e| e.name == entity_name)
            .unwrap_or(&fallback);
        self.value(s, Ctx::Entity(e), "", depth)
    }
}

fn enum_of(s: &Value) -> Option<&Vec<Value>> {
    s.get("enum")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
}

fn pick(values: &[Value], salt: u64) -> &Value {
    &values[(salt % values.len() as u64) as usize]
}

/// `(minItems, maxItems)` of an array schema.
fn item_bounds(s: &Value) -> (usize, usize) {
    let get = |k: &str| {
        s.get(k)
            .and_then(Value::as_u64)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    };
    let min = get("minItems").unwrap_or(0).min(1000);
    let max = get("maxItems").unwrap_or(usize::MAX).max(min);
    (min, max)
}

/// The entity's type from a schema `enum`: speakers get a value naming a
/// person / crew / people, acronym runs one naming a system / equipment /
/// spacecraft / hardware, other names one of the remaining values. Within
/// the group the pick depends only on the name.
fn entity_type(values: &[Value], e: &Entity) -> Value {
    const PERSON: [&str; 3] = ["person", "crew", "people"];
    const EQUIPMENT: [&str; 4] = ["system", "equipment", "spacecraft", "hardware"];
    let has = |v: &Value, words: &[&str]| {
        v.as_str()
            .map(str::to_lowercase)
            .is_some_and(|s| words.iter().any(|w| s.contains(w)))
    };
    let person: Vec<&Value> = values.iter().filter(|v| has(v, &PERSON)).collect();
    let equipment: Vec<&Value> = values
        .iter()
        .filter(|v| !has(v, &PERSON) && has(v, &EQUIPMENT))
        .collect();
    let rest: Vec<&Value> = values
        .iter()
        .filter(|v| !has(v, &PERSON) && !has(v, &EQUIPMENT))
        .collect();
    let all: Vec<&Value> = values.iter().collect();
    let group = match e.kind {
        EntityKind::Speaker => &person,
        EntityKind::Acronym => &equipment,
        EntityKind::Other => &rest,
    };
    let chosen = [group, &rest, &all]
        .into_iter()
        .find(|g| !g.is_empty())
        .unwrap_or(&all);
    let s = salt(&["type", &e.name]);
    chosen[(s % chosen.len() as u64) as usize].clone()
}

/// A relation type from a schema `enum`: one that names the relation's kind
/// (mention / relat...), else one picked by the endpoints.
fn relation_type(values: &[Value], r: &Relation) -> Value {
    let word = if r.kind == "MENTIONS" {
        "mention"
    } else {
        "relat"
    };
    values
        .iter()
        .find(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(word)))
        .unwrap_or_else(|| pick(values, salt(&[&r.source, &r.target])))
        .clone()
}

/// A number in [0.5, 1] (two decimals), or within the schema's bounds when
/// they exclude that range; integers default to 1..=10.
fn number(s: &Value, salt: u64, integer: bool) -> Value {
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let (min, xmin, max, xmax) = (
        f("minimum"),
        f("exclusiveMinimum"),
        f("maximum"),
        f("exclusiveMaximum"),
    );
    let u = unit(salt);
    if integer {
        let lo = match (min, xmin) {
            (Some(m), _) => m.ceil(),
            (None, Some(x)) => x.floor() + 1.0,
            _ => f64::NAN,
        };
        let hi = match (max, xmax) {
            (Some(m), _) => m.floor(),
            (None, Some(x)) => x.ceil() - 1.0,
            _ => f64::NAN,
        };
        let (lo, hi) = match (lo.is_nan(), hi.is_nan()) {
            (true, true) => (1.0, 10.0),
            (false, true) => (lo, lo + 9.0),
            (true, false) if hi >= 10.0 => (1.0, 10.0),
            (true, false) => (hi - 9.0, hi),
            (false, false) => (lo, hi.max(lo)),
        };
        let n = lo + (u * (hi - lo + 1.0)).floor().min(hi - lo);
        return json!(n as i64);
    }
    let lo = min.or(xmin).unwrap_or(f64::NEG_INFINITY);
    let hi = max.or(xmax).unwrap_or(f64::INFINITY);
    let (a, b) = if lo <= 1.0 && hi >= 0.5 {
        (lo.max(0.5), hi.min(1.0))
    } else if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else if lo.is_finite() {
        (lo, lo + 1.0)
    } else {
        (hi - 1.0, hi)
    };
    let mut x = ((a + u * (b - a)) * 100.0).round() / 100.0;
    // Rounding must not leave the range or touch an exclusive bound.
    if x < a || xmin.is_some_and(|m| x <= m) || x > b || xmax.is_some_and(|m| x >= m) {
        x = (a + b) / 2.0;
    }
    json!(x)
}

/// Filler text for a property: a date / time / address when the format asks
/// for one, a short phrase otherwise.
fn filler_string(s: &Value, name: &str, salt: u64) -> String {
    const PHRASES: [&str; 8] = [
        "nominal",
        "confirmed by the crew",
        "pending review",
        "within limits",
        "as planned",
        "reported by mission control",
        "under investigation",
        "not applicable",
    ];
    let text = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "1970-04-14T03:07:53Z".to_string(),
        Some("date") => "1970-04-14".to_string(),
        Some("time") => "03:07:53Z".to_string(),
        Some("email") => "capcom@example.com".to_string(),
        Some("uri" | "url" | "uri-reference" | "iri") => "https://example.com/pipe-sim".to_string(),
        Some("uuid") => {
            let h = blake3::hash(&salt.to_le_bytes()).to_hex();
            let h = h.as_str();
            format!(
                "{}-{}-4{}-8{}-{}",
                &h[..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )
        }
        _ => {
            let phrase = PHRASES[(salt % PHRASES.len() as u64) as usize];
            if name.is_empty() {
                phrase.to_string()
            } else {
                format!("{name}: {phrase}")
            }
        }
    };
    fit_length(s, text)
}

/// Pads (with `.`) or cuts `text` to the schema's minLength / maxLength.
fn fit_length(s: &Value, mut text: String) -> String {
    let len = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        text = text.chars().take(max as usize).collect();
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
        let have = text.chars().count() as u64;
        if have < min {
            text.extend(std::iter::repeat_n('.', (min - have) as usize));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_parsed_in_order() {
        let text = "Extract.\n<chunk id=\"a-1\">\nCDR: Houston.\n</chunk>\n<chunk id=\"7\">\nLMP: O2 TANK.\n</chunk>";
        let b = chunk_blocks(text);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].id, "a-1");
        assert_eq!(b[0].text, "CDR: Houston.");
        assert_eq!(b[1].text, "LMP: O2 TANK.");
        assert!(chunk_blocks("<chunk id=\"x\">no end").is_empty());
    }

    #[test]
    fn schema_after_the_marker_is_found() {
        let t = "Answer in JSON valid against this JSON Schema:\n```json\n{\"type\":\"object\",\"properties\":{}}\n```\nThanks.";
        assert_eq!(
            schema_in_text(t),
            Some(json!({"type": "object", "properties": {}}))
        );
        assert_eq!(schema_in_text("no schema here"), None);
        assert_eq!(without_schema(t), "\nThanks.");
        let inline = "CDR: Houston.\nAnswer with JSON valid against this JSON Schema: {\"type\":\"object\"} ok";
        assert_eq!(without_schema(inline), "CDR: Houston.\n ok");
    }

    #[test]
    fn numbers_respect_bounds() {
        for i in 0..200u64 {
            let x = number(&json!({}), i * 7919, false).as_f64().unwrap_or(-1.0);
            assert!((0.5..=1.0).contains(&x), "{x}");
            let s = json!({"exclusiveMinimum": 10, "maximum": 12});
            let x = number(&s, i, false).as_f64().unwrap_or(-1.0);
            assert!(x > 10.0 && x <= 12.0, "{x}");
            let n = number(&json!({"minimum": 3, "maximum": 4}), i, true)
                .as_i64()
                .unwrap_or(0);
            assert!((3..=4).contains(&n), "{n}");
        }
    }
}
