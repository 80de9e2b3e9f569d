//! Retries for sink writes. A batch that fails with a retryable store error (a restarting
//! server, a dropped connection) is written again as a unit, with the same full-jitter
//! backoff as model calls; sinks write idempotently (upserts on deterministic ids), so a
//! batch that half-landed before the error lands once. Sinks never retry on their own.

use super::RetrySettings;
use crate::error::{ErrorClass, StageError};
use std::future::Future;
use std::time::Duration;

impl RetrySettings {
    /// Defaults for store writes: a handful of quick attempts (a store restart takes seconds,
    /// not minutes), then the batch is dead-lettered with the reason.
    pub fn for_sinks() -> RetrySettings {
        RetrySettings {
            max_attempts: 5,
            max_rate_limited_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Runs `attempt` until it succeeds, fails with a non-retryable error, runs out of attempts,
/// or `give_up()` says the run is ending. `on_retry` is told about each retry (counters, logs).
pub async fn write_with_retries<T, F, Fut>(
    settings: &RetrySettings,
    give_up: impl Fn() -> bool,
    mut on_retry: impl FnMut(u32, &StageError),
    mut attempt: F,
) -> Result<T, StageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StageError>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Err(e) if e.class == ErrorClass::Retryable => e,
            other => return other,
        };
        if attempts >= settings.max_attempts.max(1) || give_up() {
            return Err(StageError {
                message: format!("gave up after {attempts} attempts: {}", error.message),
                ..error
            });
        }
        on_retry(attempts, &error);
        let wait = settings.delay(attempts, error.retry_after.map(Duration::from_secs_f64));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_then_given_up_with_the_count() {
        let calls = AtomicU32::new(0);
        let mut retries = Vec::new();
        let result: Result<(), _> = write_with_retries(
            &RetrySettings::for_sinks(),
            || false,
            |n, _| retries.push(n),
            || async {
                calls.fetch_add(1, SeqCst);
                Err(StageError::retryable("connection reset", None))
            },
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(calls.load(SeqCst), 5);
        assert_eq!(retries, vec![1, 2, 3, 4]);
        assert!(
            error.message.starts_with("gave up after 5 attempts"),
            "{error}"
        );
        assert_eq!(error.class, ErrorClass::Retryable);
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_a_retry_and_no_retry_for_record_errors() {
        let calls = AtomicU32::new(0);
        let result = write_with_retries(
            &RetrySettings::for_sinks(),
            || false,
            |_, _| {},
            || async {
                match calls.fetch_add(1, SeqCst) {
                    0 => Err(StageError::retryable("busy", Some(0.5))),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(SeqCst), 2);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = write_with_retries(
            &RetrySettings::for_sinks(),
            || false,
            |_, _| {},
            || async {
                calls.fetch_add(1, SeqCst);
                Err(StageError::record("bad label"))
            },
        )
        .await;
        assert_eq!(result.unwrap_err().message, "bad label");
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_run_does_not_keep_retrying() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = write_with_retries(
            &RetrySettings::for_sinks(),
            || true,
            |_, _| {},
            || async {
                calls.fetch_add(1, SeqCst);
                Err(StageError::retryable("down", None))
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(SeqCst), 1);
    }
}
