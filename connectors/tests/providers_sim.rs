//! The OpenAI-compatible client against the API simulator, over real HTTP: what it parses, and
//! how every kind of failure is classified.

use connectors::{ApiKey, ChatMessage, ChatRequest, FailureClass, OpenAiClient};
use pipe_simulator::SimConfig;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "sk-test-secret-0123456789";

async fn simulator(config: SimConfig) -> String {
    let (addr, _server) = pipe_simulator::spawn(config).await;
    format!("http://{addr}")
}

fn client(base: &str, key: &str) -> OpenAiClient {
    OpenAiClient::new(&format!("{base}/v1"), ApiKey::new(key)).unwrap()
}

fn extraction_request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![
            ChatMessage::system("Extract entities and relations as JSON."),
            ChatMessage::user(text),
        ],
        max_tokens: Some(300),
        temperature: Some(0.0),
        json_schema: Some(("extraction".into(), json!({ "type": "object" }))),
        strict_schema: false,
    }
}

async fn stats(base: &str) -> Value {
    reqwest::get(format!("{base}/_sim/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn chat_parses_content_usage_and_rate_limit_headers() {
    let base = simulator(SimConfig {
        rpm: Some(600),
        tpm: Some(600_000),
        api_keys: vec![KEY.into()],
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    let done = c
        .chat(&extraction_request(
            "CDR: Houston, we have a problem with the O2 TANK.",
        ))
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&done.content).expect("structured output is JSON");
    assert!(
        answer["entities"].as_array().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    let billed = stats(&base).await;
    assert_eq!(
        done.usage.input_tokens,
        billed["tokens"]["prompt"].as_u64().unwrap()
    );
    assert_eq!(
        done.usage.output_tokens,
        billed["tokens"]["completion"].as_u64().unwrap()
    );
    assert!(done.usage.output_tokens > 0);
    assert_eq!(done.rate_limit.limit_requests, Some(600));
    assert_eq!(done.rate_limit.limit_tokens, Some(600_000));
    assert!(done.rate_limit.reset_requests.is_some());
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let base = simulator(SimConfig {
        embedding_dim: 16,
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    let inputs = vec![
        "Aquarius".to_string(),
        "Odyssey".to_string(),
        "Aquarius".to_string(),
    ];
    let out = c.embed("text-embedding-3-small", &inputs).await.unwrap();
    assert_eq!(out.vectors.len(), 3);
    assert!(out.vectors.iter().all(|v| v.len() == 16));
    assert_eq!(out.vectors[0], out.vectors[2]);
    assert_ne!(out.vectors[0], out.vectors[1]);
    assert!(out.usage.input_tokens > 0);
}

#[tokio::test]
async fn embeddings_ask_for_the_dimensions_given() {
    let base = simulator(SimConfig {
        embedding_dim: 16,
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    let inputs = vec!["Aquarius".to_string()];
    let out = c
        .embed_with_dimensions("text-embedding-3-small", &inputs, Some(24))
        .await
        .unwrap();
    assert_eq!(out.vectors[0].len(), 24);
}

#[tokio::test]
async fn rate_limit_429_is_retryable_with_the_servers_wait() {
    // 60 rpm = one request per second: the second request at once is refused.
    let base = simulator(SimConfig {
        rpm: Some(60),
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    c.chat(&extraction_request("first")).await.unwrap();
    let refused = c.chat(&extraction_request("second")).await.unwrap_err();
    assert_eq!(refused.status, Some(429));
    match refused.class {
        FailureClass::Retryable {
            retry_after: Some(wait),
        } => assert!(wait >= Duration::from_millis(500), "{wait:?}"),
        other => panic!("expected retryable with retry-after, got {other:?}"),
    }
    // The account's state came with the refusal, so a limiter can pause itself.
    assert_eq!(refused.rate_limit.limit_requests, Some(60));
    assert_eq!(refused.rate_limit.remaining_requests, Some(0));
}

#[tokio::test]
async fn auth_failures_stop_the_run_and_never_show_the_key() {
    let base = simulator(SimConfig {
        api_keys: vec!["sk-the-right-one".into()],
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    let failure = c.chat(&extraction_request("hello")).await.unwrap_err();
    assert_eq!(failure.status, Some(401));
    assert_eq!(failure.class, FailureClass::Run);
    assert!(!failure.message.contains(KEY), "{}", failure.message);
    assert!(!format!("{failure:?} {c:?}").contains(KEY));
}

#[tokio::test]
async fn bad_requests_fail_the_record_and_server_errors_are_retryable() {
    let base = simulator(SimConfig {
        models: vec!["gpt-4o-mini".into()],
        ..Default::default()
    })
    .await;
    let c = client(&base, KEY);
    // A model the provider does not serve fails every record alike: the run stops, and the
    // message says where to look.
    let mut unknown = extraction_request("hello");
    unknown.model = "gpt-nonexistent".into();
    let failure = c.chat(&unknown).await.unwrap_err();
    assert_eq!(
        (failure.status, failure.class),
        (Some(404), FailureClass::Run)
    );
    assert!(
        failure.message.contains("gpt-nonexistent"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("`model`"), "{}", failure.message);

    // A prompt over the model's context is this record's problem.
    let base = simulator(SimConfig {
        models: vec!["gpt-4o-mini".into()],
        context_window: Some(5),
        ..Default::default()
    })
    .await;
    let failure = client(&base, KEY)
        .chat(&extraction_request(
            "a prompt longer than five tokens, by some way",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (failure.status, failure.class),
        (Some(400), FailureClass::Record)
    );

    let base = simulator(SimConfig {
        fault_500: 1.0,
        ..Default::default()
    })
    .await;
    let failure = client(&base, KEY)
        .chat(&extraction_request("hello"))
        .await
        .unwrap_err();
    assert_eq!(failure.status, Some(500));
    assert!(matches!(failure.class, FailureClass::Retryable { .. }));
}

#[tokio::test]
async fn a_server_that_is_not_there_is_retryable() {
    // Bind and drop a listener: nothing accepts on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let failure = client(&format!("http://127.0.0.1:{port}"), KEY)
        .chat(&extraction_request("x"))
        .await
        .unwrap_err();
    assert_eq!(failure.status, None);
    assert!(
        !failure.shed,
        "nothing took the request: not a server shedding load"
    );
    assert!(
        matches!(failure.class, FailureClass::Retryable { .. }),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_request_taken_and_dropped_without_an_answer_is_load_shed() {
    // A server that reads the request and closes the connection, as some proxies and servers
    // do when they are full.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    let failure = client(&format!("http://127.0.0.1:{port}"), KEY)
        .chat(&extraction_request("x"))
        .await
        .unwrap_err();
    assert_eq!(failure.status, None);
    assert!(failure.shed, "{failure:?}");
    assert!(
        matches!(failure.class, FailureClass::Retryable { .. }),
        "{failure:?}"
    );
    assert!(!failure.message.contains(KEY));
}

mod anthropic {
    use super::*;
    use connectors::{AnthropicClient, Block, MessagesRequest};

    fn request(user: &str) -> MessagesRequest {
        MessagesRequest {
            model: "claude-3-5-haiku-latest".into(),
            // A long, stable instruction prefix marked for caching, then the per-record text.
            system: vec![Block::cached(
                "You extract entities from Apollo transcripts. Answer in JSON. ".repeat(40),
            )],
            messages: vec![("user".into(), vec![Block::text(user)])],
            max_tokens: 200,
            temperature: Some(0.0),
        }
    }

    #[tokio::test]
    async fn prompt_cache_is_written_then_read_and_limits_are_parsed() {
        let base = simulator(SimConfig {
            rpm: Some(600),
            api_keys: vec![KEY.into()],
            ..Default::default()
        })
        .await;
        let c = AnthropicClient::new(&format!("{base}/v1"), ApiKey::new(KEY)).unwrap();
        let first = c
            .messages(&request("CDR: Houston, we've had a problem."))
            .await
            .unwrap();
        let second = c
            .messages(&request("CC: Roger, 13. Say again."))
            .await
            .unwrap();
        // The whole 40-sentence system prefix was cached; only the short user turn was not.
        // `input_tokens` counts every prompt token, cached or not.
        let uncached = first.usage.input_tokens - first.usage.cache_write_tokens;
        assert!(
            first.usage.cache_write_tokens > 20 * uncached,
            "{:?}",
            first.usage
        );
        assert!(second.usage.input_tokens > second.usage.cached_input_tokens);
        assert_eq!(first.usage.cached_input_tokens, 0);
        assert_eq!(
            second.usage.cached_input_tokens,
            first.usage.cache_write_tokens
        );
        assert_eq!(second.usage.cache_write_tokens, 0);
        assert!(
            serde_json::from_str::<Value>(&first.content).is_ok(),
            "JSON was asked for"
        );
        assert_eq!(first.rate_limit.limit_requests, Some(600));
        assert!(first.rate_limit.remaining_requests.is_some());
        let billed = stats(&base).await;
        assert_eq!(
            billed["tokens"]["cache_read"].as_u64().unwrap(),
            second.usage.cached_input_tokens
        );
    }

    #[tokio::test]
    async fn wrong_key_stops_the_run_without_showing_it() {
        let base = simulator(SimConfig {
            api_keys: vec!["sk-ant-right".into()],
            ..Default::default()
        })
        .await;
        let c = AnthropicClient::new(&format!("{base}/v1"), ApiKey::new(KEY)).unwrap();
        let failure = c.messages(&request("hi")).await.unwrap_err();
        assert_eq!(
            (failure.status, failure.class),
            (Some(401), FailureClass::Run)
        );
        assert!(!failure.message.contains(KEY));
    }
}
