//! Single flight: identical calls (the same cache key) in flight at the same time are sent
//! once. The first becomes the leader; the others wait for its answer and take it, as if
//! from the cache. A leader that ends without an answer others can use (an error, an answer
//! the stage refused, a cancelled call) lets the next one lead.

use super::cache::CachedAnswer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Clone, Debug)]
enum State {
    Pending,
    Landed(Arc<CachedAnswer>),
    Abandoned,
}

/// The calls in flight of one run, by cache key (shared by every stage: identical prompts
/// from two stages are one call too).
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<HashMap<String, (u64, watch::Receiver<State>)>>,
    next: AtomicU64,
}

/// Leading the call for a key; others wait until it lands or is dropped.
#[derive(Debug)]
pub struct Flight {
    flights: Arc<Flights>,
    key: String,
    id: u64,
    tx: watch::Sender<State>,
}

/// Following another call for the same key.
#[derive(Debug)]
pub struct Follower(watch::Receiver<State>);

#[derive(Debug)]
pub enum Joined {
    Lead(Flight),
    Follow(Follower),
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, watch::Receiver<State>)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leads the call for `key`, or follows the one already in flight.
    pub fn join(self: &Arc<Self>, key: &str) -> Joined {
        let mut map = self.lock();
        if let Some((_, rx)) = map.get(key) {
            return Joined::Follow(Follower(rx.clone()));
        }
        let id = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.to_string(), (id, rx));
        Joined::Lead(Flight {
            flights: self.clone(),
            key: key.to_string(),
            id,
            tx,
        })
    }

    /// Calls in flight now (for tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Flight {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The answer is in: every follower takes it.
    pub fn land(self, answer: CachedAnswer) {
        self.tx.send_replace(State::Landed(Arc::new(answer)));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
        drop(map);
        // Not landed (or landed: this changes nothing then, followers already woke).
        self.tx.send_if_modified(|state| {
            if matches!(state, State::Pending) {
                *state = State::Abandoned;
                true
            } else {
                false
            }
        });
    }
}

impl Follower {
    /// Waits for the leader; `None` when it ended without an answer.
    pub async fn answer(mut self) -> Option<Arc<CachedAnswer>> {
        let state = self
            .0
            .wait_for(|s| !matches!(s, State::Pending))
            .await
            .map(|s| s.clone())
            .ok()?;
        match state {
            State::Landed(answer) => Some(answer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            value: json!(text),
            usage: Default::default(),
        }
    }

    #[tokio::test]
    async fn followers_take_the_leaders_answer() {
        let flights = Arc::new(Flights::default());
        let Joined::Lead(lead) = flights.join("k") else {
            panic!("first one leads")
        };
        let Joined::Follow(follower) = flights.join("k") else {
            panic!("second one follows")
        };
        let Joined::Lead(_other) = flights.join("other") else {
            panic!("another key leads")
        };
        let waiting = tokio::spawn(follower.answer());
        lead.land(answer("hello"));
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.value, json!("hello"));
        assert_eq!(flights.len(), 1, "only `other` is still in flight");
    }

    #[tokio::test]
    async fn a_leader_dropped_without_an_answer_releases_its_followers() {
        let flights = Arc::new(Flights::default());
        let Joined::Lead(lead) = flights.join("k") else {
            panic!()
        };
        let Joined::Follow(follower) = flights.join("k") else {
            panic!()
        };
        drop(lead);
        assert!(follower.answer().await.is_none());
        assert!(
            matches!(flights.join("k"), Joined::Lead(_)),
            "the next one leads"
        );
    }
}
