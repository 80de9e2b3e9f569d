//! Progress: one indicatif bar per stage on a terminal (done, in flight, queued, rate, ETA),
//! plain periodic lines otherwise, nothing with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::Role;
use pipeline::runtime::{RunStats, StageStats};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken as Stop;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines(Duration),
    Off,
}

pub struct Progress {
    stop: Stop,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn bars_target(mode: Mode) -> Option<MultiProgress> {
        (mode == Mode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)))
    }

    pub fn start(mode: Mode, stats: Arc<RunStats>, bars: Option<MultiProgress>) -> Progress {
        let stop = Stop::new();
        let task = match (mode, bars.clone()) {
            (Mode::Bars, Some(multi)) => Some(tokio::spawn(run_bars(multi, stats, stop.clone()))),
            (Mode::Lines(every), _) => Some(tokio::spawn(run_lines(every, stats, stop.clone()))),
            _ => None,
        };
        Progress { stop, task }
    }

    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn line_for(s: &StageStats, elapsed: f64) -> String {
    let done = s.done();
    let rate = if elapsed > 0.0 {
        done as f64 / elapsed
    } else {
        0.0
    };
    let mut line = match s.role {
        Role::Source => format!("out {}", s.emitted.load(Relaxed)),
        _ => format!(
            "in {} out {} in-flight {} queued {}",
            s.received.load(Relaxed),
            s.emitted.load(Relaxed),
            s.in_flight.load(Relaxed).max(0),
            s.queued()
        ),
    };
    line.push_str(&format!(" · {rate:.1}/s"));
    let failed = s.failed.load(Relaxed);
    let dead = s.dead_lettered.load(Relaxed);
    if failed > 0 || dead > 0 {
        line.push_str(&format!(" · failed {failed} · dead-lettered {dead}"));
    }
    let c = &s.calls;
    if c.is_used() {
        let hits = c.cache_hits.load(Relaxed);
        line.push_str(&format!(
            " · calls {} (cached {hits}) · 429s {} · tokens {}/{} · ${:.4}",
            c.calls.load(Relaxed),
            c.rate_limited.load(Relaxed),
            human(c.input_tokens.load(Relaxed)),
            human(c.output_tokens.load(Relaxed)),
            c.cost_usd()
        ));
        if let Some(reason) = c.paused() {
            line.push_str(&format!(" · paused: {reason}"));
        }
    }
    line
}

/// 1234 -> "1234", 123456 -> "123.5k", 12345678 -> "12.3M".
pub(crate) fn human(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

async fn run_lines(every: Duration, stats: Arc<RunStats>, stop: Stop) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let elapsed = stats.started.elapsed().as_secs_f64();
        let mut out = String::new();
        for s in &stats.stages {
            out.push_str(&format!(
                "[{elapsed:>7.1}s] {:<14} {}\n",
                s.id,
                line_for(s, elapsed)
            ));
        }
        let _ = std::io::stderr().write_all(out.as_bytes());
    }
}

async fn run_bars(multi: MultiProgress, stats: Arc<RunStats>, stop: Stop) {
    let width = stats
        .stages
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(8)
        .min(24);
    let known = ProgressStyle::with_template(&format!(
        "{{prefix:>{width}.bold}} [{{bar:24.cyan/blue}}] {{pos}}/{{len}} {{msg}} · ETA {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let unknown = ProgressStyle::with_template(&format!(
        "{{prefix:>{width}.bold}} {{spinner}} {{pos}} done · {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars: Vec<ProgressBar> = stats
        .stages
        .iter()
        .map(|s| {
            let expected = s.expected.load(Relaxed);
            let bar = if expected > 0 {
                ProgressBar::new(expected).with_style(known.clone())
            } else {
                ProgressBar::new_spinner().with_style(unknown.clone())
            };
            multi.add(bar.with_prefix(s.id.clone()))
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(125));
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let elapsed = stats.started.elapsed().as_secs_f64();
        for (s, bar) in stats.stages.iter().zip(&bars) {
            bar.set_position(s.done());
            bar.set_message(line_for(s, elapsed));
            if s.finished_after().is_some() && !bar.is_finished() {
                bar.abandon();
            }
        }
        if stopping {
            // Leave every bar in its final state above the summary.
            for bar in &bars {
                bar.abandon();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_line_says_when_calls_are_paused_and_why() {
        let s = StageStats::new("ask", "llm", Role::Processor);
        s.calls.calls.store(3, Relaxed);
        assert!(!line_for(&s, 1.0).contains("paused"));
        let until = tokio::time::Instant::now() + Duration::from_secs(42);
        let waiting = s.calls.pauses.enter(
            "provider `llm` is failing (10 failures in a row; last: HTTP 503), next probe".into(),
            Some(until),
        );
        let line = line_for(&s, 1.0);
        assert!(
            line.contains(
                " · paused: provider `llm` is failing (10 failures in a row; last: HTTP 503), \
                 next probe, resumes in 4"
            ),
            "{line}"
        );
        drop(waiting);
        assert!(
            !line_for(&s, 1.0).contains("paused"),
            "no longer once they go"
        );
    }
}
