//! `pipe-simulator`: an HTTP API simulator standing in for OpenAI and
//! Anthropic in integration tests and benchmarks.
//!
//! This is a **test instrument**, not a model provider: every answer is
//! synthesised deterministically from a blake3 hash of the request.

mod answer;
pub mod config;
pub mod content;
mod error;
mod mistakes;
pub mod ratelimit;
mod request;
pub mod schema;
mod server;
mod state;

use std::net::SocketAddr;

pub use config::{
    AnswerLength, LatencyDrift, Phase, SimConfig, TokenCounting, Tokenizer, WrongJsonKind,
};
pub use content::{Encoding, count_tokens};

/// Serves the simulator on `listener` until the task is dropped or an I/O
/// error occurs.
pub async fn serve(listener: tokio::net::TcpListener, config: SimConfig) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // Before the first request is accepted (a no-op when already loaded).
    tokio::task::spawn_blocking(content::load_encodings)
        .await
        .map_err(std::io::Error::other)?;
    let state = state::AppState::new(config);
    state.spawn_sampler();
    axum::serve(listener, server::router(state)).await
}

/// Binds `127.0.0.1:0`, spawns [`serve`] and returns the bound address.
///
/// # Panics
/// Panics if the loopback listener cannot be bound (tests only).
pub async fn spawn(
    config: SimConfig,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let handle = tokio::spawn(serve(listener, config));
    (addr, handle)
}
