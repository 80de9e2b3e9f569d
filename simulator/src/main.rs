use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use pipe_simulator::SimConfig;

/// OpenAI / Anthropic API simulator (a test instrument, not a provider).
#[derive(Parser, Debug)]
#[command(name = "pipe-sim", version, about)]
struct Args {
    /// Port to listen on (127.0.0.1). 0 = pick a free port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// JSON file with a SimConfig (missing fields take defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// RNG seed for latency and fault draws (overrides the config's seed).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            serde_json::from_str::<SimConfig>(&text)
                .map_err(|e| format!("parsing {}: {e}", path.display()))?
        }
        None => SimConfig::default(),
    };
    if args.seed.is_some() {
        config.seed = args.seed;
    }
    config.validate()?;
    // Ready means ready: the tokenizers are loaded before the port is announced.
    pipe_simulator::content::load_encodings();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    tracing::info!(?config, "pipe-sim started");
    pipe_simulator::serve(listener, config).await?;
    Ok(())
}
