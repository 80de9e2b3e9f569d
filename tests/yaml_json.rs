//! A JSON Schema written in YAML reaches the provider exactly as written: booleans, integers,
//! numbers and nulls keep their YAML types (`additionalProperties: false` is `false`, not
//! "false"), quoted scalars stay strings. Checked on the request body a real HTTP server saw.

mod support;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_schema_round_trips_to_the_request_body_exactly() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/v1/chat/completions",
            post(move |body: axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body.0);
                    axum::Json(json!({
                        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
                        "choices": [{ "index": 0, "finish_reason": "stop",
                            "message": { "role": "assistant",
                                "content": "{\"tags\":[\"a\"],\"score\":0.5,\"note\":null}" } }],
                        "usage": { "prompt_tokens": 10, "completion_tokens": 5 }
                    }))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let yaml = format!(
        r#"
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "http://{addr}/v1", api_key: sk-test }}
stages:
  - {{ id: gen, kind: generate, config: {{ count: 1, text_bytes: 50 }} }}
  - id: ask
    kind: llm
    inputs: [gen]
    config:
      provider: llm
      prompt: "Tag: {{{{ text }}}}"
      output: json
      schema:
        type: object
        additionalProperties: false
        required: [tags, score, note]
        properties:
          tags: {{ type: array, items: {{ type: string, enum: ["8", "true", a] }}, maxItems: 8, minItems: 1 }}
          score: {{ type: number, minimum: 0, maximum: 1.0, multipleOf: 0.25 }}
          note: {{ type: [string, "null"], default: null }}
  - {{ id: out, kind: blackhole, inputs: [ask] }}
"#
    );
    let (report, _state) = support::run_yaml(&yaml).await;
    assert_eq!(support::stage(&report, "out").received, 1, "{report:?}");
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let schema = &bodies[0]["response_format"]["json_schema"]["schema"];
    assert_eq!(
        *schema,
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["tags", "score", "note"],
            "properties": {
                "tags": { "type": "array", "items": { "type": "string", "enum": ["8", "true", "a"] },
                          "maxItems": 8, "minItems": 1 },
                "score": { "type": "number", "minimum": 0, "maximum": 1.0, "multipleOf": 0.25 },
                "note": { "type": ["string", "null"], "default": null }
            }
        })
    );
    // Exactly: 8 is an integer, 1.0 a float, `false` a boolean.
    assert!(schema["properties"]["tags"]["maxItems"].is_u64());
    assert!(schema["properties"]["score"]["maximum"].is_f64());
    assert_eq!(schema["additionalProperties"], Value::Bool(false));
}
