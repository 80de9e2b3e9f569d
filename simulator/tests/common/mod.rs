#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pipe_simulator::{SimConfig, spawn};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Sim {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

pub async fn start(config: SimConfig) -> Sim {
    let (addr, _handle) = spawn(config).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    Sim { addr, client }
}

impl Sim {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("send chat")
    }

    pub async fn messages(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("send messages")
    }

    pub async fn embed(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/embeddings"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("send embeddings")
    }

    pub async fn stats(&self) -> Value {
        self.client
            .get(self.url("/_sim/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Replaces the whole config at runtime.
    pub async fn configure(&self, config: &SimConfig) {
        let r = self
            .client
            .post(self.url("/_sim/config"))
            .json(config)
            .send()
            .await
            .expect("config");
        assert_eq!(r.status(), 200);
    }

    pub async fn reset(&self) {
        let r = self
            .client
            .post(self.url("/_sim/reset"))
            .send()
            .await
            .expect("reset");
        assert_eq!(r.status(), 200);
    }
}

pub fn simple_chat(text: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 64,
    })
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

pub fn tokens(text: &str) -> u64 {
    tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// The assistant content of a chat completion.
pub fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

/// Runs the futures concurrently on the runtime and returns their outputs in order.
pub async fn join_all<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}
