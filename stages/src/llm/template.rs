//! Prompt templates (MiniJinja): `{{ text }}` and friends, filled from a record. Strict about
//! missing fields, so a typo dead-letters the record with the field's name instead of
//! sending an empty prompt.

use minijinja::{Environment, UndefinedBehavior};
use pipeline::{Payload, Record, StageError};
use serde_json::{Map, Value};

pub struct Templates {
    env: Environment<'static>,
    has_system: bool,
}

pub struct TemplateError {
    pub field: &'static str,
    pub message: String,
}

impl Templates {
    pub fn new(system: Option<&str>, prompt: &str) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Prompts are not HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_template_owned("prompt", prompt.to_string())
            .map_err(|e| TemplateError {
                field: "prompt",
                message: format!("is not a valid template: {e}"),
            })?;
        if let Some(system) = system {
            env.add_template_owned("system", system.to_string())
                .map_err(|e| TemplateError {
                    field: "system",
                    message: format!("is not a valid template: {e}"),
                })?;
        }
        Ok(Templates {
            env,
            has_system: system.is_some(),
        })
    }

    /// (system, user) for one record.
    pub fn render(&self, record: &Record) -> Result<(Option<String>, String), StageError> {
        let context = fields(record);
        let render = |name: &str| {
            self.env
                .get_template(name)
                .and_then(|t| t.render(&context))
                .map_err(|e| StageError::record(format!("cannot fill the `{name}` template: {e}")))
        };
        let system = if self.has_system {
            Some(render("system")?)
        } else {
            None
        };
        Ok((system, render("prompt")?))
    }
}

/// What a template can name.
fn fields(record: &Record) -> Value {
    let mut map = Map::new();
    if let Payload::Json {
        value: Value::Object(object),
    } = &record.payload
    {
        map.extend(object.clone());
    }
    if let Payload::Json { value } = &record.payload {
        map.insert("value".into(), value.clone());
    }
    if let Some(text) = record.payload.text() {
        map.insert("text".into(), Value::String(text.to_string()));
    }
    let p = &record.provenance;
    map.insert("id".into(), Value::String(record.id.clone()));
    map.insert("document_id".into(), Value::String(p.document_id.clone()));
    if let Some(path) = &p.source_path {
        map.insert("source_path".into(), Value::String(path.clone()));
    }
    if let Some(index) = p.chunk_index {
        map.insert("chunk_index".into(), Value::from(index));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{Chunk, Provenance};

    fn chunk(text: &str) -> Record {
        Record::new(
            "c1".into(),
            Provenance {
                document_id: "day1".into(),
                chunk_index: Some(3),
                ..Default::default()
            },
            Payload::Chunk(Chunk {
                text: text.into(),
                tokens: 2,
                tokenizer: "cl100k_base".into(),
                context: None,
            }),
        )
    }

    #[test]
    fn fills_fields_and_refuses_unknown_ones() {
        let t = Templates::new(
            Some("You read {{ document_id }}."),
            "Chunk {{ chunk_index }}: {{ text }}",
        )
        .ok()
        .unwrap();
        let (system, user) = t.render(&chunk("<Houston> & co")).unwrap();
        assert_eq!(system.as_deref(), Some("You read day1."));
        assert_eq!(user, "Chunk 3: <Houston> & co", "no HTML escaping");
        let typo = Templates::new(None, "{{ txt }}").ok().unwrap();
        let e = typo.render(&chunk("x")).unwrap_err();
        assert!(e.message.contains("prompt"), "{}", e.message);
        assert!(Templates::new(None, "{{ unclosed").is_err());
    }
}
