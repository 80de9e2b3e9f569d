//! `pipe run | validate | list-stages | schema`.

mod logging;
mod metrics;
mod progress;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logging::LogFormat;
use pipeline::config::LoadOptions;
use pipeline::runtime::{self, RunOptions, RunReport, RunStatus};
use pipeline::{Plan, Registry};
use progress::{Mode, Progress};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit codes: 0 done (also after a Ctrl-C drain), 1 the run failed, 2 the pipeline file is
/// invalid, 3 the budget was reached (the rest is dead-lettered; re-run with a larger budget),
/// 130 aborted by a second Ctrl-C.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_BUDGET: u8 = 3;
const EXIT_ABORTED: i32 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "pipe",
    version,
    about = "Dataflow pipelines for LLM document processing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline.
    Run(RunArgs),
    /// Check a pipeline file and report every problem (file:line:column).
    Validate(ValidateArgs),
    /// Estimate calls, tokens and cost of a run without sending or writing anything: sources
    /// and local stages run for real, stages that call a provider only count.
    Plan(PlanArgs),
    /// List the stage kinds and their config fields.
    ListStages {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of pipeline files (for editor completion).
    Schema,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Pipeline YAML file.
    file: PathBuf,
    /// Override a value, e.g. `--set stages.extract.concurrency=40` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args, Debug)]
struct PlanArgs {
    #[command(flatten)]
    pipeline: ValidateArgs,
    /// Plan for the first N records of each source.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Where the response cache lives (cached calls are free).
    #[arg(long, value_name = "DIR", default_value = ".pipe")]
    state_dir: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    pipeline: ValidateArgs,
    /// Stop each source after N records (try before you pay).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Where run reports, dead letters and caches live.
    #[arg(long, value_name = "DIR", default_value = ".pipe")]
    state_dir: PathBuf,
    /// Do not answer from the response cache (fresh answers are still stored).
    #[arg(long)]
    no_cache: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// No progress and no summary; errors only.
    #[arg(long, short)]
    quiet: bool,
    /// Also write logs to this file.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, value_name = "SECS", default_value = "5")]
    progress_interval: f64,
}

/// Entry point of `pipe` and of custom binaries that add their own stages.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate(&registry, &args),
        Command::ListStages { json } => {
            list_stages(&registry, json);
            ExitCode::SUCCESS
        }
        Command::Schema => {
            let schema = pipeline::schema::pipeline_schema(&registry);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => match async_runtime() {
            Ok(runtime) => runtime.block_on(run(registry, args)),
            Err(code) => code,
        },
        Command::Plan(args) => match async_runtime() {
            Ok(runtime) => runtime.block_on(plan(registry, args)),
            Err(code) => code,
        },
    }
}

fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILED)
        })
}

async fn plan(registry: Registry, args: PlanArgs) -> ExitCode {
    if let Err(e) = logging::init(LogFormat::Text, None, None, false) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let plan = match load(&registry, &args.pipeline) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let mut options = RunOptions::new(args.state_dir.clone());
    options.limit = args.limit;
    options.dry_run = true;
    let result = async {
        let prepared = runtime::prepare(plan, options)
            .await
            .context("cannot prepare the pipeline")?;
        anyhow::Ok(prepared.run().await?)
    }
    .await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_plan(&report);
    }
    match report.status {
        RunStatus::Failed => {
            eprintln!(
                "error: {}",
                report.error.as_deref().unwrap_or("the plan failed")
            );
            ExitCode::from(EXIT_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn print_plan(report: &RunReport) {
    let planned: Vec<_> = report
        .stages
        .iter()
        .filter_map(|s| s.plan.as_ref().map(|p| (s, p)))
        .collect();
    println!(
        "plan for {} (nothing was sent; no sink was opened)",
        report.pipeline
    );
    if planned.is_empty() {
        println!("  no stage calls a provider: this pipeline costs nothing to run");
    }
    let (mut calls, mut cached, mut input, mut output, mut usd) = (0, 0, 0, 0, 0.0);
    for (stage, p) in &planned {
        println!(
            "  {:<14} {:>7} calls ({} cached) · {} prompt tokens · up to {} output tokens · up to ${:.4}",
            stage.id,
            p.calls,
            p.cached,
            progress::human(p.input_tokens),
            progress::human(p.max_output_tokens),
            p.max_cost_usd
        );
        calls += p.calls;
        cached += p.cached;
        input += p.input_tokens;
        output += p.max_output_tokens;
        usd += p.max_cost_usd;
    }
    if planned.len() > 1 {
        println!(
            "  {:<14} {calls:>7} calls ({cached} cached) · {} prompt tokens · up to {} output tokens · up to ${usd:.4}",
            "total",
            progress::human(input),
            progress::human(output),
        );
    }
    // Stages fed by a model's answers cannot be counted before the model has answered.
    let downstream: Vec<&str> = report
        .stages
        .iter()
        .filter(|s| {
            s.plan.is_none()
                && s.received == 0
                && matches!(
                    s.role,
                    pipeline::Role::Processor
                        | pipeline::Role::Transform
                        | pipeline::Role::Batch
                        | pipeline::Role::Aggregate
                )
        })
        .map(|s| s.id.as_str())
        .collect();
    if !planned.is_empty() && !downstream.is_empty() {
        println!(
            "  not estimated (they depend on model answers): {}",
            downstream.join(", ")
        );
    }
    println!("  output cost assumes every answer uses all of max_tokens: an upper bound");
}

fn load(registry: &Registry, args: &ValidateArgs) -> Result<Plan, ExitCode> {
    let options = LoadOptions {
        overrides: args.set.clone(),
        env: None,
    };
    pipeline::load(&args.file, registry, &options).map_err(|diags| {
        eprintln!("{diags}");
        ExitCode::from(EXIT_INVALID)
    })
}

fn validate(registry: &Registry, args: &ValidateArgs) -> ExitCode {
    match load(registry, args) {
        Ok(plan) => {
            let edges: usize = plan.stages.iter().map(|s| s.inputs.len()).sum();
            println!(
                "{}: ok ({} stages, {} edges)",
                args.file.display(),
                plan.stages.len(),
                edges
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn list_stages(registry: &Registry, json: bool) {
    if json {
        let kinds: Vec<serde_json::Value> = registry
            .kinds()
            .map(|k| {
                serde_json::json!({
                    "kind": k.kind,
                    "role": k.role,
                    "description": k.description,
                    "accepts": k.accepts.to_string(),
                    "config": registry.config_schema(k.kind).map(|s| s.to_value()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&kinds).unwrap_or_default()
        );
        return;
    }
    for k in registry.kinds() {
        println!("{} ({}) — {}", k.kind, k.role.name(), k.description);
        if k.role != pipeline::Role::Source {
            println!("  accepts: {}", k.accepts);
        }
        for f in pipeline::schema::config_fields(registry, k.kind) {
            let req = if f.required { "required" } else { "optional" };
            let default = f
                .default
                .map(|d| format!(", default {d}"))
                .unwrap_or_default();
            println!(
                "  {:<14} {} ({req}{default}) {}",
                f.name, f.type_name, f.description
            );
        }
        println!();
    }
}

async fn run(registry: Registry, args: RunArgs) -> ExitCode {
    let is_tty = std::io::stderr().is_terminal();
    let mode = if args.quiet {
        Mode::Off
    } else if is_tty {
        Mode::Bars
    } else {
        Mode::Lines(Duration::from_secs_f64(args.progress_interval.max(0.1)))
    };
    let bars = Progress::bars_target(mode);
    if let Err(e) = logging::init(
        args.log_format,
        args.log_file.as_deref(),
        bars.clone(),
        args.quiet,
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let plan = match load(&registry, &args.pipeline) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    match run_plan(plan, &args, mode, bars).await {
        Ok(report) => {
            if !args.quiet {
                print_summary(&report, &args.state_dir);
            }
            let aborted = report
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("aborted by a second signal"));
            if aborted {
                eprintln!(
                    "aborted: {} records dead-lettered in {}",
                    report.dead_letters.count,
                    report.dead_letters.path.as_deref().unwrap_or("-")
                );
                return ExitCode::from(EXIT_ABORTED as u8);
            }
            match report.status {
                RunStatus::Failed => {
                    eprintln!(
                        "error: {}",
                        report.error.as_deref().unwrap_or("the run failed")
                    );
                    ExitCode::from(EXIT_FAILED)
                }
                RunStatus::BudgetReached => {
                    eprintln!(
                        "error: {}; {} records were dead-lettered — raise the budget and run \
                         again (answers already paid for come from the cache)",
                        report.error.as_deref().unwrap_or("budget reached"),
                        report.dead_letters.count
                    );
                    ExitCode::from(EXIT_BUDGET)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run_plan(
    plan: Plan,
    args: &RunArgs,
    mode: Mode,
    bars: Option<indicatif::MultiProgress>,
) -> anyhow::Result<RunReport> {
    let mut options = RunOptions::new(args.state_dir.clone());
    options.limit = args.limit;
    options.no_cache = args.no_cache;
    let (stop, abort) = (options.stop.clone(), options.abort.clone());
    // First signal (Ctrl-C or SIGTERM): stop the sources and drain. Second: abort — work in
    // flight is abandoned and dead-lettered, the report is still written, exit 130. Third:
    // exit at once.
    tokio::spawn(async move {
        let mut signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for signals: {e}");
                return;
            }
        };
        let first = signals.next().await;
        // Through tracing, so it is printed above the progress bars rather than under them.
        tracing::warn!(
            "{first}: stopping — sources closed, draining what is in flight (again to abort)"
        );
        stop.cancel();
        let second = signals.next().await;
        tracing::warn!(
            "{second}: aborting — work in flight is dead-lettered, the report is being written \
             (again to exit at once)"
        );
        abort.cancel();
        signals.next().await;
        eprintln!("aborted");
        std::process::exit(EXIT_ABORTED);
    });
    tracing::info!(run_id = %options.run_id, pipeline = %plan.file.display(), "starting run");
    let prepared = runtime::prepare(plan, options)
        .await
        .context("cannot start the pipeline")?;
    if let Some(addr) = args.metrics_addr {
        metrics::serve(addr, prepared.stats(), prepared.resources()).await?;
    }
    let progress = Progress::start(mode, prepared.stats(), bars);
    let result = prepared.run().await;
    progress.finish().await;
    Ok(result?)
}

/// SIGINT (Ctrl-C) and SIGTERM (what `kill`, systemd and container runtimes send), as one
/// stream of named signals.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupt",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}

fn print_summary(report: &RunReport, state_dir: &Path) {
    let status = match report.status {
        RunStatus::Completed => "completed",
        RunStatus::Interrupted => "interrupted (drained)",
        RunStatus::Failed => "FAILED",
        RunStatus::BudgetReached => "stopped: budget reached",
    };
    println!(
        "run {} {status} in {:.2}s",
        report.run_id, report.duration_s
    );
    let width = report
        .stages
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "  {:<width$} {:<10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>8}",
        "stage", "kind", "in", "out", "failed", "dead", "max queue", "wall s"
    );
    for s in &report.stages {
        println!(
            "  {:<width$} {:<10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>8.2}",
            s.id,
            s.kind,
            s.received,
            s.out,
            s.failed,
            s.dead_lettered,
            s.max_queue_depth,
            s.wall_time_s
        );
    }
    for s in &report.stages {
        let Some(c) = &s.calls else { continue };
        let shared = if c.coalesced > 0 {
            format!(", {} shared with an identical call in flight", c.coalesced)
        } else {
            String::new()
        };
        println!(
            "  {:<width$} calls {} (cached {}{shared}) · requests {} · retries {} · 429s {} · timeouts {} · tokens {} in / {} out · ${:.4}",
            s.id,
            c.calls,
            c.cache_hits,
            c.attempts,
            c.retries,
            c.rate_limited,
            c.timeouts,
            progress::human(c.input_tokens),
            progress::human(c.output_tokens),
            c.cost_usd
        );
        let e = &c.estimated;
        if e.attempts > 0 {
            println!(
                "  {:<width$} of which estimated: {} attempts billed without a figure (timeouts after sending, unreadable answers), counted at their worst case: {} tokens, ${:.4}",
                "",
                e.attempts,
                progress::human(e.tokens),
                e.cost_usd
            );
        }
    }
    for s in &report.stages {
        if !s.counts.is_empty() {
            let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  {:<width$} {}", s.id, counts.join(" · "));
        }
        for note in &s.notes {
            println!("  {:<width$} {note}", s.id);
        }
    }
    if let Some(b) = &report.totals.budget {
        let max = match (b.max_usd, b.max_tokens) {
            (Some(usd), _) => format!("${usd:.4}"),
            (None, Some(tokens)) => format!("{tokens} tokens"),
            (None, None) => "-".into(),
        };
        println!(
            "budget: ${:.4} / {} tokens spent of {max}{}",
            b.spent_usd,
            b.spent_tokens,
            if b.reached { " (reached)" } else { "" }
        );
    }
    if let Some(path) = &report.dead_letters.path {
        println!("dead letters: {} in {path}", report.dead_letters.count);
    }
    println!(
        "report: {}",
        state_dir
            .join("runs")
            .join(&report.run_id)
            .join("report.json")
            .display()
    );
}
