//! Calls that answer one value per item — N texts in one embeddings request — through the same
//! stack as [`CallPolicy::call`], with two things a whole-call cache key cannot give:
//!
//! - The response cache works per ITEM: a batch whose items are partly cached sends only the
//!   misses, so re-running with a few new texts costs only those texts.
//! - A request the provider refuses as a whole because of its content (400, 413, 422) is split
//!   in halves until the refused items stand alone: one bad input fails by itself, the others
//!   still land. This is not a retry of the same request (the refusal is final for it); the
//!   halves are new requests, each through the whole stack (budget, limits, retries).

use super::{Answer, CallPolicy, CallSpec, Failed, TokenUsage, stats};
use crate::error::{ErrorClass, StageError};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// One item of a per-item call.
#[derive(Clone, Debug, Default)]
pub struct Item {
    /// Hash of everything that determines this item's answer (see [`super::cache_key`]);
    /// `None` = never cached.
    pub cache_key: Option<String>,
    /// Its prompt tokens: what the rate limit and the budget reserve, and its share of the
    /// billed usage when its answer is cached.
    pub input_tokens: u64,
}

/// Statuses that refuse a request for what it contains (so a part of it may still pass).
fn refused_for_content(status: Option<u16>) -> bool {
    matches!(status, Some(400 | 413 | 422))
}

impl CallPolicy {
    /// Answers every item: from the cache, or by requests for the misses. `attempt` makes one
    /// request for the items at the given indices and must answer one value per index, in
    /// order. Results come back in item order.
    pub async fn call_items<T, F, Fut>(
        &self,
        items: &[Item],
        attempt: F,
    ) -> Vec<Result<T, StageError>>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Answer<Vec<T>>, Failed>>,
    {
        let mut results: Vec<Option<Result<T, StageError>>> = vec![None; items.len()];
        let mut misses = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(hit) = self.cached_item::<T>(item) {
                results[index] = Some(Ok(hit));
            } else {
                misses.push(index);
            }
        }
        // Groups still to send; a refused group comes back as its two halves.
        let mut groups = if misses.is_empty() {
            // Answered whole from the cache: still a call the stage asked for (as a cache hit
            // of `call` is), so the report shows the hits.
            if !items.is_empty() {
                self.stats.calls.fetch_add(1, Relaxed);
            }
            Vec::new()
        } else {
            vec![misses]
        };
        while let Some(group) = groups.pop() {
            match self.send_group(items, &group, &attempt).await {
                Ok(values) => {
                    for (index, value) in group.into_iter().zip(values) {
                        results[index] = Some(Ok(value));
                    }
                }
                Err((error, refused)) if refused && group.len() > 1 => {
                    tracing::debug!(
                        "provider `{}` refused a request of {} items ({error}); sending it in \
                         halves to find the items it refuses",
                        self.provider,
                        group.len()
                    );
                    let (first, second) = group.split_at(group.len() / 2);
                    groups.push(second.to_vec());
                    groups.push(first.to_vec());
                }
                Err((error, _)) => {
                    for index in group {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StageError::record("item was never answered"))))
            .collect()
    }

    /// `pipe plan` for [`call_items`](Self::call_items): one call for the batch, counted as
    /// cached when every item is, else priced for the items that would be sent.
    pub fn plan_items(&self, items: &[Item]) {
        let s = &self.stats;
        s.planned_calls.fetch_add(1, Relaxed);
        let mut misses = 0u64;
        let mut tokens = 0u64;
        for item in items {
            let hit = self.read_cache
                && item
                    .cache_key
                    .as_ref()
                    .is_some_and(|key| self.cached(key).is_some());
            if !hit {
                misses += 1;
                tokens += item.input_tokens;
            }
        }
        if misses == 0 {
            s.planned_cached.fetch_add(1, Relaxed);
            return;
        }
        s.planned_input_tokens.fetch_add(tokens, Relaxed);
        let usage = TokenUsage {
            input: tokens,
            ..Default::default()
        };
        s.planned_nano_usd
            .fetch_add(stats::to_nano(self.cost(&usage)), Relaxed);
    }

    /// The item's cached answer, counting the hit or the miss.
    fn cached_item<T: DeserializeOwned>(&self, item: &Item) -> Option<T> {
        let key = item.cache_key.as_ref()?;
        self.cache.as_ref()?;
        if self.read_cache
            && let Some(hit) = self.cached(key)
            && let Ok(value) = serde_json::from_value::<T>(hit.value)
        {
            self.stats.cache_hits.fetch_add(1, Relaxed);
            self.stats
                .saved_nano_usd
                .fetch_add(stats::to_nano(self.cost(&hit.usage)), Relaxed);
            return Some(value);
        }
        self.stats.cache_misses.fetch_add(1, Relaxed);
        None
    }

    /// One call for the items at `group`. The error says whether the provider refused the
    /// request for its content (worth splitting).
    async fn send_group<T, F, Fut>(
        &self,
        items: &[Item],
        group: &[usize],
        attempt: &F,
    ) -> Result<Vec<T>, (StageError, bool)>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Answer<Vec<T>>, Failed>>,
    {
        let input_tokens: u64 = group.iter().map(|&i| items[i].input_tokens).sum();
        let spec = CallSpec {
            // Cached per item below, never as a whole.
            cache_key: None,
            input_tokens,
            // Embeddings are limited by their counted tokens; nothing is generated.
            prompt_chars: 0,
            max_output_tokens: 0,
        };
        // Whether the last attempt was refused for its content.
        let refused = AtomicBool::new(false);
        let called = self
            .call(
                &spec,
                || {
                    let request = attempt(group.to_vec());
                    let refused = &refused;
                    async move {
                        let outcome = request.await;
                        refused.store(
                            matches!(&outcome, Err(f) if refused_for_content(f.status)),
                            Relaxed,
                        );
                        outcome
                    }
                },
                |values: &Vec<T>| {
                    if values.len() == group.len() {
                        Ok(())
                    } else {
                        Err(format!(
                            "provider answered {} values for {} items",
                            values.len(),
                            group.len()
                        ))
                    }
                },
            )
            .await;
        let called = match called {
            Ok(called) => called,
            Err(error) => {
                let split = refused.load(Relaxed) && error.class == ErrorClass::Record;
                return Err((error, split));
            }
        };
        if let Some(problem) = called.rejected {
            return Err((StageError::record(problem), false));
        }
        if let Some(cache) = &self.cache {
            for (&index, value) in group.iter().zip(&called.value) {
                let Some(key) = &items[index].cache_key else {
                    continue;
                };
                // The item's share of what the request was billed, for "saved by cache".
                let share = if input_tokens == 0 {
                    0
                } else {
                    (called.usage.input as u128 * items[index].input_tokens as u128
                        / input_tokens as u128) as u64
                };
                let usage = TokenUsage {
                    input: share,
                    ..Default::default()
                };
                match serde_json::to_value(value) {
                    Ok(value) => {
                        if let Err(e) = cache.put(key, &super::CachedAnswer { value, usage }) {
                            tracing::warn!("{e}");
                        }
                    }
                    Err(e) => tracing::warn!("answer not cached: {e}"),
                }
            }
        }
        Ok(called.value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::Item;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn resources(dir: &std::path::Path) -> Resources {
        let spec = ProviderSpec {
            kind: "openai".into(),
            model: "m".into(),
            base_url: None,
            api_key: None,
            limit: Some("acct".into()),
            timeout_s: Some(5.0),
            max_attempts: Some(3),
            backoff_s: Some(0.01),
            max_backoff_s: Some(0.02),
            pricing: Some(Price {
                input: 1.0,
                output: 0.0,
                cached_input: None,
                cache_write: None,
            }),
            breaker: None,
            context_window: None,
            unreachable_after_s: None,
        };
        Resources::new(
            &BTreeMap::from([("acct".to_string(), LimitSpec::default())]),
            &BTreeMap::from([("p".to_string(), spec)]),
            ResourcesOptions {
                cache_path: Some(dir.join("cache.sqlite")),
                budget: BudgetSpec::default(),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn items(texts: &[&str]) -> Vec<Item> {
        texts
            .iter()
            .map(|t| Item {
                cache_key: Some(cache_key(&serde_json::json!({ "text": t }))),
                input_tokens: 10,
            })
            .collect()
    }

    /// A provider that answers each text with its length, refuses (400) any request
    /// holding "bad", and records what every request held.
    struct Provider {
        texts: Vec<String>,
        requests: Mutex<Vec<Vec<String>>>,
        fail_first_with: Mutex<Option<u16>>,
    }

    impl Provider {
        fn new(texts: &[&str]) -> Provider {
            Provider {
                texts: texts.iter().map(|t| t.to_string()).collect(),
                requests: Mutex::new(Vec::new()),
                fail_first_with: Mutex::new(None),
            }
        }

        async fn answer(&self, indices: Vec<usize>) -> Result<Answer<Vec<usize>>, Failed> {
            let texts: Vec<String> = indices.iter().map(|&i| self.texts[i].clone()).collect();
            self.requests.lock().unwrap().push(texts.clone());
            if let Some(status) = self.fail_first_with.lock().unwrap().take() {
                return Err(Failed::new(
                    StageError::retryable(format!("HTTP {status}"), None),
                    Some(status),
                ));
            }
            if texts.iter().any(|t| t.contains("bad")) {
                return Err(Failed::new(
                    StageError::record("HTTP 400: '$.input' is invalid"),
                    Some(400),
                ));
            }
            Ok(Answer {
                value: texts.iter().map(String::len).collect(),
                usage: TokenUsage {
                    input: 10 * texts.len() as u64,
                    ..Default::default()
                },
                server: ServerLimits::default(),
            })
        }

        fn sent(&self) -> Vec<Vec<String>> {
            self.requests.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn only_the_misses_are_sent_and_a_rerun_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let resources = resources(dir.path());
        let stats = Arc::new(CallStats::default());
        // The stage gives the policy its price (the YAML's or the list price).
        let price = resources.provider_spec("p").unwrap().pricing;
        let policy = resources
            .policy("p", stats.clone())
            .unwrap()
            .with_price(price);
        let first = Provider::new(&["a", "bb", "ccc"]);
        let out = policy
            .call_items(&items(&["a", "bb"]), |i| first.answer(i))
            .await;
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [1, 2]
        );
        // "a" and "bb" are cached now: a batch with a new "ccc" sends only "ccc".
        let out = policy
            .call_items(&items(&["a", "bb", "ccc"]), |i| first.answer(i))
            .await;
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(first.sent(), [vec!["a", "bb"], vec!["ccc"]]);
        // Everything cached: no request at all.
        let out = policy
            .call_items(&items(&["ccc", "a"]), |i| first.answer(i))
            .await;
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            [3, 1]
        );
        assert_eq!(first.sent().len(), 2);
        let report = stats.report();
        assert_eq!(report.cache_hits, 4);
        assert_eq!(report.cache_misses, 3);
        // Two requests, and one batch answered whole from the cache.
        assert_eq!(report.calls, 3);
        assert_eq!(report.attempts, 2);
        assert_eq!(report.input_tokens, 30);
        // Each hit saved its share (10 tokens at $1/M).
        assert!(
            (report.saved_by_cache_usd - 40e-6).abs() < 1e-12,
            "{}",
            report.saved_by_cache_usd
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_split_until_the_bad_item_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let resources = resources(dir.path());
        let policy = resources.policy("p", Default::default()).unwrap();
        let texts = ["a", "b", "c", "bad", "e"];
        let provider = Provider::new(&texts);
        let out = policy
            .call_items(&items(&texts), |i| provider.answer(i))
            .await;
        for (text, result) in texts.iter().zip(&out) {
            match result {
                Ok(len) => assert_eq!(*len, text.len()),
                Err(e) => {
                    assert_eq!(*text, "bad");
                    assert_eq!(e.class, ErrorClass::Record);
                    assert!(e.message.contains("is invalid"), "{e}");
                }
            }
        }
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        // The whole batch, then halves: [a b] ok, [c bad e] refused, [c] ok, [bad e]
        // refused, [bad] refused, [e] ok.
        let sent = provider.sent();
        assert_eq!(sent[0].len(), 5);
        assert_eq!(sent.last().unwrap(), &["e"]);
        assert!(sent.contains(&vec!["bad".to_string()]));
        assert_eq!(sent.len(), 7);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_by_the_policy_not_split() {
        let dir = tempfile::tempdir().unwrap();
        let resources = resources(dir.path());
        let stats = Arc::new(CallStats::default());
        let policy = resources.policy("p", stats.clone()).unwrap();
        let provider = Provider::new(&["a", "b"]);
        *provider.fail_first_with.lock().unwrap() = Some(500);
        let out = policy
            .call_items(&items(&["a", "b"]), |i| provider.answer(i))
            .await;
        assert!(out.iter().all(Result::is_ok));
        // The same two items twice: one failed attempt, one retry.
        assert_eq!(provider.sent(), [vec!["a", "b"], vec!["a", "b"]]);
        assert_eq!(stats.report().retries, 1);
    }

    #[tokio::test]
    async fn plan_counts_only_what_would_be_sent() {
        let dir = tempfile::tempdir().unwrap();
        let resources = resources(dir.path());
        let stats = Arc::new(CallStats::default());
        let policy = resources.policy("p", stats.clone()).unwrap();
        let provider = Provider::new(&["a", "b"]);
        policy
            .call_items(&items(&["a"]), |i| provider.answer(i))
            .await;
        policy.plan_items(&items(&["a"]));
        policy.plan_items(&items(&["a", "b"]));
        let plan = stats.plan_report();
        assert_eq!(plan.calls, 2);
        assert_eq!(plan.cached, 1);
        assert_eq!(plan.input_tokens, 10);
    }
}
