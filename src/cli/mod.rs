//! `pipe run | validate | list-stages | schema`.

mod logging;
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
/// invalid, 130 aborted by a second Ctrl-C.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
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
struct RunArgs {
    #[command(flatten)]
    pipeline: ValidateArgs,
    /// Stop each source after N records (try before you pay).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Where run reports, dead letters and caches live.
    #[arg(long, value_name = "DIR", default_value = ".pipe")]
    state_dir: PathBuf,
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
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            };
            runtime.block_on(run(registry, args))
        }
    }
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
            match report.status {
                RunStatus::Failed => {
                    eprintln!(
                        "error: {}",
                        report.error.as_deref().unwrap_or("the run failed")
                    );
                    ExitCode::from(EXIT_FAILED)
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
    let stop = options.stop.clone();
    // First Ctrl-C: stop the sources and drain. Second: abort at once.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        // Through tracing, so it is printed above the progress bars rather than under them.
        tracing::warn!(
            "stopping: sources closed, draining what is in flight (Ctrl-C again to abort)"
        );
        stop.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(EXIT_ABORTED);
        }
    });
    tracing::info!(run_id = %options.run_id, pipeline = %plan.file.display(), "starting run");
    let prepared = runtime::prepare(plan, options)
        .await
        .context("cannot start the pipeline")?;
    let progress = Progress::start(mode, prepared.stats(), bars);
    let result = prepared.run().await;
    progress.finish().await;
    Ok(result?)
}

fn print_summary(report: &RunReport, state_dir: &Path) {
    let status = match report.status {
        RunStatus::Completed => "completed",
        RunStatus::Interrupted => "interrupted (drained)",
        RunStatus::Failed => "FAILED",
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
