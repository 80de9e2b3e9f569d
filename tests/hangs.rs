//! The shape every knowledge-graph pipeline has — several model-calling stages on one provider
//! — must never hang. Before the runtime kept driving a stage's calls in flight while it waited
//! on a full edge, `generate → llm (64) → llm (8, buffer 16) → sink` on one provider with an
//! adaptive (learnt) limit stopped after ~20 requests forever: the first stage's waiting calls
//! were handed the provider's slots and never polled again. Each shape runs 20 times.

mod support;

use pipeline::runtime::RunStatus;
use std::time::Duration;
use support::{run_yaml, stage};

async fn sim() -> std::net::SocketAddr {
    let (addr, _task) = pipe_simulator::spawn(pipe_simulator::SimConfig {
        latency_ms_median: 3.0,
        ..Default::default()
    })
    .await;
    addr
}

fn two_model_stages(addr: std::net::SocketAddr, ordered: bool, count: u64) -> String {
    format!(
        r#"
resources:
  providers:
    llm: {{ kind: openai, model: gpt-4o-mini, base_url: "http://{addr}/v1", api_key: sk-test }}
stages:
  - {{ id: gen, kind: generate, config: {{ count: {count}, text_bytes: 200 }} }}
  - id: first
    kind: llm
    inputs: [gen]
    concurrency: 64
    ordered: {ordered}
    config: {{ provider: llm, prompt: "Summarise: {{{{ text }}}}", max_tokens: 40 }}
  - id: second
    kind: llm
    inputs: [first]
    concurrency: 8
    buffer: 16
    ordered: {ordered}
    config: {{ provider: llm, prompt: "Shorter: {{{{ answer }}}}", max_tokens: 20, output_field: short }}
  - {{ id: out, kind: blackhole, inputs: [second] }}
"#
    )
}

async fn completes_every_time(ordered: bool) {
    let addr = sim().await;
    for round in 0..20 {
        let yaml = two_model_stages(addr, ordered, 60);
        let (report, _state) = tokio::time::timeout(Duration::from_secs(120), run_yaml(&yaml))
            .await
            .unwrap_or_else(|_| panic!("round {round} (ordered: {ordered}) hung"));
        assert_eq!(report.status, RunStatus::Completed, "round {round}");
        assert_eq!(stage(&report, "second").out, 60, "round {round}");
        assert_eq!(stage(&report, "out").received, 60, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_model_stages_on_one_learnt_limit_complete() {
    completes_every_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ordered_model_stages_on_one_learnt_limit_complete() {
    completes_every_time(true).await;
}
