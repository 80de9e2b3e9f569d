//! Concurrency per limit: a fixed cap, or an adaptive one when the provider's capacity is not
//! known.
//!
//! The adaptive controller is a congestion window (TCP, and its service-side heirs: Netflix's
//! concurrency-limits, Envoy's adaptive concurrency filter, Vector's ARC) shaped for LLM APIs,
//! where the provider says when it is full and latency mostly says how long the answer was:
//!
//! - **Overload is the strong signal**: a 429 that carries no account rate-limit state, a
//!   503/529, a timeout, a request taken and dropped unanswered (load shed). What it says
//!   depends on the level the refused call was sent under, and it acts at once, but only when
//!   that call was sent after the last change it caused: a refusal of a call sent before says
//!   nothing that change has not acted on (TCP's "one cut per window", made exact because
//!   refusals come back fast).
//!   - Below the level last refused: the capacity dropped. Cut to 90 % (the AIMD backoff
//!     ratio of Vector's ARC and Netflix's `AIMDLimit`), so a capacity that drops is followed
//!     within a few refusals.
//!     Another refusal in the round trip of that cut, of a call sent with fewer in flight than
//!     the cut left (two or more fewer: counts race by a slot), says it was not enough: 90 %
//!     of that count. A limit the demand had not been filling, met by a capacity that dropped
//!     meanwhile, is followed in a few refusals, not one per tenth of it.
//!   - At the level last refused, tried again after calm right below it: the capacity has not
//!     risen. Back to the level below, which held for rounds, with no cut (as BIC/CUBIC
//!     plateau at their last maximum instead of backing off from it again): a capacity that
//!     stays put costs one refused call per try and no throughput.
//!   - In slow start: the count in flight when the refused call was sent says where the
//!     capacity is (the provider had just taken one fewer), so the limit lands there, one
//!     below. When the call took its slot below the limit it went under, others were
//!     taking slots at the same moment (an answer frees its slot and slow start adds one),
//!     and they reach the provider over different connections, in either order: the count
//!     may be a slot or two low. Then the climb back to the level refused does not wait for
//!     calm (one round trip, not seconds, a slot below the capacity), and a round trip held
//!     there makes the next level the one to wait below.
//! - **Growth is clocked by answers** (as TCP's window is clocked by ACKs) and happens only
//!   while the limit is the bottleneck (callers wait for a slot). Slow start: +1 per answer,
//!   i.e. doubling per round trip, until the first overload; then +1 per round trip. Right
//!   below the level last refused it waits for calm (two round trips, and 100 answers, or
//!   5 s and 50 answers) before trying that level again (more answers each time the same
//!   level is refused, so a capacity that stays put costs under 1 % refused calls, and at
//!   most about 2 % where answers come slowly). A try is over long before a
//!   round trip: a refusal comes back as fast as the one that set the level, so a few calls
//!   sent at that level and not refused within a few times that long mean the capacity rose
//!   (a whole round trip at that level says the same, when refusals are slow: timeouts), and
//!   slow start finds the new one.
//!   Refusals come back fast and growth is one slot per answer, so an overshoot costs about one
//!   refused call.
//! - **Latency is a weak signal, normalised**: an LLM call's latency is mostly its output length
//!   (time to first token + tokens x time per token), so a raw average rises and falls with the
//!   answers, not the load, and two stages with different `max_tokens` on one limit would look
//!   like congestion whenever the mix shifts. Each answer is compared with a model of latency vs
//!   output tokens (least squares over the last ~200 answers); a round trip whose answers took
//!   well over what the model expects (1.5x) holds growth for the next round trip. It never
//!   cuts: a slower provider (its busy hour) does not hold fewer calls, and servers that batch
//!   get slower as they fill while their throughput still grows. The model learns from every
//!   answer, so a lasting rise stops holding growth after a few round trips.
//! - **A floor and a start**: nothing but overload takes the limit below `min`; below it after
//!   an overload, it comes back by slow start. Default 4: any hosted API takes that many at
//!   once, and a default Ollama server runs 4 (and queues the rest). It starts at `initial`,
//!   default 16: what the usual hand-written client runs (a semaphore of 10–20), which every
//!   hosted API takes at once; each round trip spent climbing to it is one to three seconds of
//!   an LLM call, and slow start climbs from 16 to 64 in two. A server that takes fewer refuses
//!   fast, and the first refusals cut (or, for a local server that queues instead, the calls
//!   just wait there).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[cfg(test)]
mod model;

/// Default floor of an adaptive limit.
pub const DEFAULT_MIN_CONCURRENCY: usize = 4;
/// Default starting point of an adaptive limit (never below its floor).
pub const DEFAULT_INITIAL_CONCURRENCY: usize = 16;

const DECREASE_RATIO: f64 = 0.9;
/// Before trying the level last refused again: at least this many calm round trips right below
/// it, and either this many answers since the cut (each try costs about one refused call, so
/// this bounds their share; doubled each time the same level is refused again, up to the max)
/// or this long (which bounds how long a capacity that rose goes unnoticed; a try that fails
/// costs one refused call and no throughput, so it can come often) once at least
/// `MIN_CALM_ANSWERS_AT_CEILING` answers came: where answers come slowly (a few slots, long
/// answers) a try every few seconds would be one refused call in ten.
const CALM_ROUNDS_AT_CEILING: u32 = 2;
const CALM_ANSWERS_AT_CEILING: u64 = 100;
const MAX_CALM_ANSWERS_AT_CEILING: u64 = 400;
const MAX_CALM_TIME_AT_CEILING: Duration = Duration::from_secs(5);
const MIN_CALM_ANSWERS_AT_CEILING: u64 = 50;
/// A try of the level last refused passes once this many calls have gone out at that level
/// and the last of them was not refused within `PROBE_REFUSAL_WAIT_FACTOR` times the time the
/// refusal that set the level took to come back (at least `PROBE_MIN_REFUSAL_WAIT`). More than
/// one call, because one may have reached the provider while an answer of another was on its
/// way back (so the provider held one fewer than counted here); a refusal's time varies, hence
/// the factor.
const PROBE_SENDS: u32 = 4;
const PROBE_REFUSAL_WAIT_FACTOR: u32 = 4;
const PROBE_MIN_REFUSAL_WAIT: Duration = Duration::from_millis(100);
/// A round trip whose answers took this many times what the latency model expects holds growth.
const SLOW_ROUND_RATIO: f64 = 1.5;
/// Fewer latency samples in a round trip than this say nothing.
const MIN_ROUND_SAMPLES: u32 = 3;
/// Answers the latency model remembers (exponential forgetting), and how many it needs before
/// it says anything.
const LATENCY_MEMORY: f64 = 200.0;
const LATENCY_MODEL_MIN_ANSWERS: f64 = 20.0;
/// Raises of the limit remembered, to know the limit a refused call was sent under.
const RAISES_REMEMBERED: usize = 512;

/// What a finished attempt says about the provider's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Answered, with this many output tokens: a latency sample.
    Answered { output_tokens: u64 },
    /// Finished in a way that says nothing about load: a 4xx, a 500, a connection refused, a 429
    /// that carries the account's rate-limit state (the rate limiter's business, not ours).
    Neutral,
    /// Overload: a 429 without account state, 503, 529, a timeout, a request dropped unanswered.
    BackPressure,
}

/// Bounds of an adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveSettings {
    /// Never below this without an overload signal.
    pub min: usize,
    /// Where it starts (at least `min`).
    pub initial: usize,
    /// Never above this.
    pub max: usize,
}

impl AdaptiveSettings {
    /// Defaults below `max`: floor at [`DEFAULT_MIN_CONCURRENCY`], start at
    /// [`DEFAULT_INITIAL_CONCURRENCY`].
    pub fn up_to(max: usize) -> AdaptiveSettings {
        AdaptiveSettings {
            min: DEFAULT_MIN_CONCURRENCY,
            initial: DEFAULT_INITIAL_CONCURRENCY,
            max,
        }
    }

    /// Made consistent: 1 <= min <= initial <= max.
    fn normalised(self) -> AdaptiveSettings {
        let max = self.max.max(1);
        let min = self.min.clamp(1, max);
        AdaptiveSettings {
            min,
            initial: self.initial.clamp(min, max),
            max,
        }
    }
}

/// Latency vs output tokens, `rtt ≈ a + b · tokens`, by least squares over exponentially
/// forgotten answers.
#[derive(Debug, Default)]
struct LatencyModel {
    weight: f64,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_xy: f64,
}

impl LatencyModel {
    /// Expected seconds for an answer of `tokens` (None until enough answers were seen).
    fn expected(&self, tokens: f64) -> Option<f64> {
        if self.weight < LATENCY_MODEL_MIN_ANSWERS {
            return None;
        }
        let mean_x = self.sum_x / self.weight;
        let mean_y = self.sum_y / self.weight;
        let var_x = self.sum_xx / self.weight - mean_x * mean_x;
        let cov = self.sum_xy / self.weight - mean_x * mean_y;
        // No spread in lengths (embeddings, fixed answers): the mean is the model.
        let slope = if var_x > 1.0 {
            (cov / var_x).max(0.0)
        } else {
            0.0
        };
        let at = mean_y + slope * (tokens - mean_x);
        // A fit with a negative intercept must not expect ~0 s of a short answer.
        Some(at.max(0.1 * mean_y).max(1e-6))
    }

    fn learn(&mut self, tokens: f64, rtt: f64) {
        let keep = 1.0 - 1.0 / LATENCY_MEMORY;
        self.weight = keep * self.weight + 1.0;
        self.sum_x = keep * self.sum_x + tokens;
        self.sum_y = keep * self.sum_y + rtt;
        self.sum_xx = keep * self.sum_xx + tokens * tokens;
        self.sum_xy = keep * self.sum_xy + tokens * rtt;
    }
}

/// One round trip's worth of finished attempts (as many as the limit when it began).
#[derive(Debug, Default)]
struct Round {
    size: usize,
    finished: usize,
    overloaded: bool,
    /// Began with a cut (an overload changed the limit).
    after_cut: bool,
    latency_ratio_sum: f64,
    latency_samples: u32,
}

/// The level last refused, being tried again: calls sent at it so far, and when the
/// `PROBE_SENDS`th went out.
#[derive(Debug, Clone, Copy)]
struct Probe {
    sent: u32,
    enough_sent_at: Option<Instant>,
}

#[derive(Debug)]
struct Controller {
    limit: usize,
    settings: AdaptiveSettings,
    /// Until the first overload: +1 per answer.
    slow_start: bool,
    /// When the last slow start ended (with a cut).
    slow_start_ended: Option<Instant>,
    /// The limit at which overload was last seen.
    ceiling: Option<usize>,
    /// The ceiling was counted in slow start by a call that took its slot while others did: it
    /// may be a slot or two low, so the climb to it does not wait for calm.
    ceiling_rough: bool,
    /// How long the refusal that set the ceiling took to come back.
    ceiling_refused_after: Duration,
    /// The ceiling being tried (the limit raised to it).
    probe: Option<Probe>,
    calm_rounds: u32,
    answers_since_cut: u64,
    calm_answers_needed: u64,
    /// Fractions of a slot earned by answers (1 / limit each).
    credit: f64,
    last_cut: Option<Instant>,
    /// (when, limit before) of recent raises, oldest first.
    raises: VecDeque<(Instant, usize)>,
    /// The previous round trip was slow: hold growth.
    holding: bool,
    round: Round,
    latency: LatencyModel,
}

#[derive(Debug)]
pub struct Concurrency {
    semaphore: std::sync::Arc<Semaphore>,
    /// Permits to retire as they come back (the limit went down while they were out).
    owed: AtomicUsize,
    in_flight: AtomicUsize,
    /// Callers waiting for a slot: the limit is the bottleneck.
    waiting: AtomicUsize,
    controller: Option<Mutex<Controller>>,
}

/// A slot in flight; gives itself back (or retires, if the limit shrank) when dropped.
pub struct Slot<'a> {
    owner: &'a Concurrency,
    permit: Option<OwnedSemaphorePermit>,
    /// Calls in flight when it was taken, itself included.
    in_flight_when_taken: usize,
}

impl Slot<'_> {
    /// [`Concurrency::record`] for the attempt made in this slot: an overload also says how
    /// many calls were in flight when it was sent, which bounds the capacity more tightly
    /// than the limit when fewer were (a burst refused past the capacity at the start).
    pub fn record(&self, rtt: Duration, signal: Signal) {
        self.owner
            .record_with(rtt, signal, Some(self.in_flight_when_taken));
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.in_flight.fetch_sub(1, Relaxed);
        if let Some(permit) = self.permit.take() {
            let retire = self
                .owner
                .owed
                .fetch_update(Relaxed, Relaxed, |owed| owed.checked_sub(1))
                .is_ok();
            if retire {
                permit.forget();
            }
        }
    }
}

/// Counts a caller as waiting for as long as it exists (an acquire can be cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Concurrency {
    /// No cap at all (the rate limiter alone paces calls).
    pub fn unlimited() -> Concurrency {
        Concurrency::fixed(Semaphore::MAX_PERMITS)
    }

    /// False for [`Concurrency::unlimited`].
    pub fn is_capped(&self) -> bool {
        self.controller.is_some() || self.limit() < Semaphore::MAX_PERMITS
    }

    pub fn fixed(max: usize) -> Concurrency {
        Concurrency {
            semaphore: std::sync::Arc::new(Semaphore::new(max.max(1))),
            owed: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            controller: None,
        }
    }

    /// Starts at `settings.initial` calls in flight and finds the capacity within the bounds.
    pub fn adaptive(settings: AdaptiveSettings) -> Concurrency {
        let settings = settings.normalised();
        Concurrency {
            semaphore: std::sync::Arc::new(Semaphore::new(settings.initial)),
            owed: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            controller: Some(Mutex::new(Controller::new(settings))),
        }
    }

    pub fn is_adaptive(&self) -> bool {
        self.controller.is_some()
    }

    /// The current cap (for adaptive: what the controller has found so far).
    pub fn limit(&self) -> usize {
        match &self.controller {
            Some(c) => c.lock().unwrap_or_else(|p| p.into_inner()).limit,
            None => self.semaphore.available_permits() + self.in_flight(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub async fn acquire(&self) -> Slot<'_> {
        let waiting = {
            self.waiting.fetch_add(1, Relaxed);
            Waiting(&self.waiting)
        };
        // The semaphore is never closed, so acquiring cannot fail; `None` would only mean an
        // uncapped call, never a lost one.
        let permit = self.semaphore.clone().acquire_owned().await.ok();
        drop(waiting);
        let before = self.in_flight.fetch_add(1, Relaxed);
        Slot {
            owner: self,
            permit,
            in_flight_when_taken: before + 1,
        }
    }

    /// Feeds one finished attempt (`rtt` from sending to its end) into the controller (no-op
    /// for a fixed cap). Call it before giving the attempt's slot back, so a cut takes that
    /// slot out of circulation at once.
    pub fn record(&self, rtt: Duration, signal: Signal) {
        self.record_with(rtt, signal, None);
    }

    fn record_with(&self, rtt: Duration, signal: Signal, in_flight_when_sent: Option<usize>) {
        let Some(controller) = &self.controller else {
            return;
        };
        let now = Instant::now();
        let sent = now.checked_sub(rtt).unwrap_or(now);
        let mut c = controller.lock().unwrap_or_else(|p| p.into_inner());
        let old = c.limit;
        // The limit holds calls back (callers wait for a slot, or every slot is taken, this
        // one included): the slot this attempt gives back goes out again at once. Growth only
        // then: a limit above the demand proves nothing, and raising it would only overshoot
        // once the demand comes.
        let bottleneck = self.waiting.load(Relaxed) > 0 || self.in_flight() >= c.limit;
        match signal {
            Signal::BackPressure => c.overloaded(now, sent, in_flight_when_sent),
            Signal::Answered { output_tokens } => {
                c.probe_sent_again(now, bottleneck);
                c.answered(now, rtt.as_secs_f64(), output_tokens as f64, bottleneck);
            }
            Signal::Neutral => {
                c.probe_sent_again(now, bottleneck);
                c.finished();
            }
        }
        let new = c.limit;
        drop(c);
        if new != old {
            tracing::debug!(from = old, to = new, "adaptive concurrency");
        }
        if new > old {
            // Pay off retirements first, then add.
            let mut grow = new - old;
            while grow > 0
                && self
                    .owed
                    .fetch_update(Relaxed, Relaxed, |o| o.checked_sub(1))
                    .is_ok()
            {
                grow -= 1;
            }
            self.semaphore.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.semaphore.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Relaxed);
        }
    }
}

/// The limit after an overload refused at `refused` calls in flight.
fn cut_level(refused: usize) -> usize {
    ((refused as f64 * DECREASE_RATIO).floor() as usize).max(1)
}

impl Controller {
    fn new(settings: AdaptiveSettings) -> Controller {
        Controller {
            limit: settings.initial,
            settings,
            slow_start: true,
            slow_start_ended: None,
            ceiling: None,
            ceiling_rough: false,
            ceiling_refused_after: Duration::ZERO,
            probe: None,
            calm_rounds: 0,
            answers_since_cut: 0,
            calm_answers_needed: CALM_ANSWERS_AT_CEILING,
            credit: 0.0,
            last_cut: None,
            raises: VecDeque::new(),
            holding: false,
            round: Round {
                size: settings.initial,
                ..Round::default()
            },
            latency: LatencyModel::default(),
        }
    }

    fn overloaded(&mut self, now: Instant, sent: Instant, in_flight_when_sent: Option<usize>) {
        let in_round_of_cut = self.round.after_cut;
        self.round.overloaded = true;
        // The level refused is the one the call was sent under: in slow start the limit may
        // have grown since (answers keep coming while the refusal is on its way), and cutting
        // from there would take several more refusals to get back.
        // In slow start the limit runs ahead of what was ever tried (it starts at 16 at once),
        // and the count in flight when the refused call was sent says where the capacity is:
        // the provider had just taken one fewer. Not below the floor, which any provider
        // takes: a refusal with fewer in flight (the first requests, at the start) is the
        // provider's own trouble, not our load; and out of slow start a refusal is judged by
        // the level alone, unless it comes in the round trip of a cut (`below_cut`).
        let sent_in_slow_start =
            self.slow_start || self.slow_start_ended.is_some_and(|end| sent < end);
        let count = in_flight_when_sent.filter(|n| *n >= self.settings.min);
        let bound = count.filter(|_| sent_in_slow_start);
        let sent_before_cut = self.last_cut.is_some_and(|cut| sent < cut);
        // Out of slow start, a refusal in the round trip of a cut, of a call sent with two or
        // more fewer in flight than that cut left: the cut was not enough, and the count says
        // where the capacity is. A limit the demand had not been filling (a stage waiting on a
        // slower one downstream) meets a capacity that dropped meanwhile when the demand comes
        // back at once: a tenth off per refusal left room each refused call's slot was taken
        // from again at once, ~50 refused in 20 ms. Not the first refusal (one refusal with
        // few in flight may be the provider's own hiccup: a tenth off is all it costs), and
        // not a slot or two below the limit (counts race by that much; a try of the level last
        // refused must not cut).
        let below_cut = count.filter(|&n| {
            !sent_in_slow_start && (sent_before_cut || in_round_of_cut) && n + 2 <= self.limit
        });
        let bound_or_below_cut = bound.or(below_cut);
        // As slow start grows, that count is exact only when the call took the last slot of
        // the limit it went under. Below it, others were taking slots at the same moment (an
        // answer frees its slot and slow start adds one), and those calls reach the provider
        // over different connections, in either order: the count may be a slot or two low.
        // (A burst's refusals, sent before the cut, each lower the limit to their own count,
        // so the lowest counts; that lands where it lands, as before.)
        let rough = bound.is_some_and(|n| !sent_before_cut && n < self.limit_when(sent));
        let refused = if sent_before_cut {
            // Sent under a limit already cut: nothing new, unless it says the cut was not
            // enough (refused with as many in flight as the cut left, or fewer). Each refusal
            // of a burst sent past a small capacity says so, where one cut per round trip
            // would cost a round of refusals per cut.
            match bound_or_below_cut {
                Some(n) if n <= self.limit => n,
                _ => return self.finished(),
            }
        } else {
            bound_or_below_cut
                .unwrap_or(usize::MAX)
                .min(self.limit_when(sent))
        };
        let probe_refused = !sent_in_slow_start && self.ceiling.is_some_and(|c| refused >= c);
        self.calm_answers_needed = if self.ceiling == Some(refused) {
            (self.calm_answers_needed * 2).min(MAX_CALM_ANSWERS_AT_CEILING)
        } else {
            CALM_ANSWERS_AT_CEILING
        };
        self.ceiling = Some(refused);
        self.ceiling_rough = rough;
        self.ceiling_refused_after = now.saturating_duration_since(sent);
        self.probe = None;
        self.limit = if bound.is_some() || probe_refused {
            // Slow start overshot: one fewer was taken a moment ago. Or a try of the level
            // last refused, refused again: the capacity has not risen, and the level below,
            // calm for rounds before the try, still holds. Back to it, no cut (as BIC/CUBIC
            // plateau at their last maximum): a capacity that stays put costs one refused call
            // per try and no throughput.
            (refused - 1).max(1)
        } else {
            // Refused below the level last refused: the capacity dropped.
            cut_level(refused)
        };
        self.raises.clear();
        if self.slow_start {
            self.slow_start_ended = Some(now);
        }
        self.slow_start = false;
        self.credit = 0.0;
        self.calm_rounds = 0;
        self.answers_since_cut = 0;
        self.last_cut = Some(now);
        self.round = Round {
            size: self.limit,
            overloaded: true,
            after_cut: true,
            ..Round::default()
        };
    }

    /// The limit at `at` (raises since then undone; cuts since then never matter, see
    /// `overloaded`).
    fn limit_when(&self, at: Instant) -> usize {
        self.raises
            .iter()
            .find(|(raised, _)| *raised > at)
            .map_or(self.limit, |&(_, before)| before)
    }

    fn answered(&mut self, now: Instant, rtt: f64, tokens: f64, bottleneck: bool) {
        self.answers_since_cut += 1;
        if let Some(expected) = self.latency.expected(tokens) {
            self.round.latency_ratio_sum += rtt / expected;
            self.round.latency_samples += 1;
        }
        // Every answer teaches the model, slow ones too: a lasting rise must become the norm.
        self.latency.learn(tokens, rtt);
        if bottleneck && !self.holding {
            self.grow(now);
        }
        self.finished();
    }

    /// Calm enough right below the level last refused to try it again.
    fn calm_at_ceiling(&self, now: Instant) -> bool {
        let waited = self
            .last_cut
            .is_none_or(|cut| now.saturating_duration_since(cut) >= MAX_CALM_TIME_AT_CEILING);
        self.calm_rounds >= CALM_ROUNDS_AT_CEILING
            && (self.answers_since_cut >= self.calm_answers_needed
                || (waited && self.answers_since_cut >= MIN_CALM_ANSWERS_AT_CEILING))
    }

    fn grow(&mut self, now: Instant) {
        let max = self.settings.max;
        if self.limit >= max {
            return;
        }
        if self.slow_start || self.limit < self.settings.min {
            return self.raise(now);
        }
        self.credit += 1.0 / self.limit as f64;
        // (The epsilon: `limit` answers of 1/limit each must add up to a whole slot.)
        while self.credit >= 1.0 - 1e-9 && self.limit < max {
            if let Some(ceiling) = self.ceiling
                && self.limit + 1 >= ceiling
                && !(self.ceiling_rough && self.limit + 1 == ceiling)
                && !self.calm_at_ceiling(now)
            {
                // Right below the level last refused: wait for calm first (unless slow start
                // counted that level roughly, and this raise only reaches it).
                self.credit = 0.0;
                return;
            }
            self.credit -= 1.0;
            self.raise(now);
        }
    }

    fn raise(&mut self, now: Instant) {
        if self.raises.len() == RAISES_REMEMBERED {
            self.raises.pop_front();
        }
        self.raises.push_back((now, self.limit));
        self.limit += 1;
        if !self.slow_start && !self.ceiling_rough && self.ceiling == Some(self.limit) {
            // Raised to the level last refused: a caller waiting for a slot takes this one.
            self.probe = Some(Probe {
                sent: 0,
                enough_sent_at: None,
            });
            self.probe_sent_again(now, true);
        }
    }

    /// A call went out at the level being tried (`sent`: a slot was given back while callers
    /// wait, so it is taken again at once). Once enough went out and the last was not refused
    /// in the time a refusal takes, the capacity rose: slow start finds the new one.
    fn probe_sent_again(&mut self, now: Instant, sent: bool) {
        let Some(probe) = &mut self.probe else {
            return;
        };
        if let Some(at) = probe.enough_sent_at {
            let refusal_wait = (self.ceiling_refused_after * PROBE_REFUSAL_WAIT_FACTOR)
                .max(PROBE_MIN_REFUSAL_WAIT);
            if now.saturating_duration_since(at) >= refusal_wait {
                self.capacity_rose();
            }
            return;
        }
        if sent {
            probe.sent += 1;
            if probe.sent >= PROBE_SENDS {
                probe.enough_sent_at = Some(now);
            }
        }
    }

    /// The level last refused holds: no ceiling any more; slow start finds the new one
    /// (refusals come back fast, and growth is one slot per answer, so an overshoot is seen at
    /// its first call).
    fn capacity_rose(&mut self) {
        tracing::debug!(
            level = self.limit,
            "adaptive concurrency: the level last refused holds, looking for the new capacity"
        );
        self.ceiling = None;
        self.probe = None;
        self.slow_start = true;
    }

    /// Counts a finished attempt into the round trip; closes it once `limit` have finished.
    fn finished(&mut self) {
        self.round.finished += 1;
        if self.round.finished < self.round.size {
            return;
        }
        let round = std::mem::replace(
            &mut self.round,
            Round {
                size: self.limit,
                ..Round::default()
            },
        );
        self.holding = round.latency_samples >= MIN_ROUND_SAMPLES
            && round.latency_ratio_sum / f64::from(round.latency_samples) > SLOW_ROUND_RATIO;
        if round.overloaded {
            return;
        }
        match self.ceiling {
            // A whole round trip at the last refused level without a refusal: the capacity
            // rose (when the try did not show it sooner: slow refusals).
            // Unless slow start counted that level roughly: then it was a slot low, and the
            // level to wait below before trying is the next one (no new slow start, whose
            // count could be as rough again).
            Some(ceiling) if round.size >= ceiling && self.ceiling_rough => {
                self.ceiling = Some(ceiling + 1);
                self.ceiling_rough = false;
            }
            Some(ceiling) if round.size >= ceiling => self.capacity_rose(),
            Some(ceiling) if round.size + 1 >= ceiling => self.calm_rounds += 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(tokens: u64) -> Signal {
        Signal::Answered {
            output_tokens: tokens,
        }
    }

    /// Takes every slot, waits `rtt`, and feeds one signal per slot while more callers wait:
    /// one round trip at full use.
    async fn full_round(c: &Concurrency, rtt: Duration, signal: impl Fn(usize) -> Signal) {
        let limit = c.limit();
        let slots: Vec<_> = futures::future::join_all((0..limit).map(|_| c.acquire())).await;
        tokio::time::advance(rtt).await;
        c.waiting.fetch_add(1, Relaxed);
        let more_demand = Waiting(&c.waiting);
        for i in 0..limit {
            c.record(rtt, signal(i));
        }
        drop(more_demand);
        drop(slots);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_per_round_trip_then_backs_off_on_overload() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            initial: 4,
            ..AdaptiveSettings::up_to(1000)
        });
        let rtt = Duration::from_millis(100);
        for _ in 0..4 {
            full_round(&c, rtt, |_| answered(10)).await;
        }
        // 4 → 8 → 16 → 32 → 64.
        assert_eq!(c.limit(), 64);
        tokio::time::advance(rtt).await;
        c.record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 57);
        // Additive from here: +1 per full round trip.
        for _ in 0..3 {
            full_round(&c, rtt, |_| answered(10)).await;
        }
        assert_eq!(c.limit(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_of_calls_sent_before_a_cut_do_not_cut_again() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            min: 1,
            initial: 50,
            max: 100,
        });
        let rtt = Duration::from_millis(200);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Three refusals of calls sent at the same moment: one cut.
        c.record(rtt, Signal::BackPressure);
        c.record(rtt, Signal::BackPressure);
        tokio::time::advance(Duration::from_millis(10)).await;
        c.record(rtt, Signal::BackPressure);
        assert_eq!(c.limit(), 45);
        // A call sent after the cut and refused: the cut was not enough.
        tokio::time::advance(Duration::from_millis(100)).await;
        c.record(Duration::from_millis(50), Signal::BackPressure);
        assert_eq!(c.limit(), 40);
        // Overload can go below the floor; nothing else does.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_millis(10)).await;
            c.record(Duration::from_millis(5), Signal::BackPressure);
        }
        assert_eq!(c.limit(), 1);
    }

    /// The first burst (16 at once) meets a server that takes 8: the refusals say how many
    /// were in flight when each was sent, and the limit lands at the capacity at once instead
    /// of one cut per round trip, each costing a round of refusals.
    #[tokio::test(start_paused = true)]
    async fn a_burst_refused_past_a_small_capacity_cuts_to_it_at_once() {
        let c = Concurrency::adaptive(AdaptiveSettings::up_to(256));
        assert_eq!(c.limit(), DEFAULT_INITIAL_CONCURRENCY);
        let slots: Vec<_> =
            futures::future::join_all((0..DEFAULT_INITIAL_CONCURRENCY).map(|_| c.acquire())).await;
        tokio::time::advance(Duration::from_millis(5)).await;
        // The 9th to 16th are refused, and come back in any order.
        for slot in slots[8..].iter().rev() {
            slot.record(Duration::from_millis(5), Signal::BackPressure);
        }
        assert_eq!(c.limit(), 8, "one fewer than the 9 in flight: the capacity");
        // The same news again (a retried refusal): nothing new.
        slots[8].record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 8);
    }

    /// Slow start passes the capacity by one: the refused call was sent with 41 in flight,
    /// so 40 were taken a moment ago, and the limit lands there, not at 90 % of it.
    #[tokio::test(start_paused = true)]
    async fn a_slow_start_overshoot_lands_one_below_the_count_refused() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            initial: 41,
            ..AdaptiveSettings::up_to(256)
        });
        let slots: Vec<_> = futures::future::join_all((0..41).map(|_| c.acquire())).await;
        tokio::time::advance(Duration::from_millis(5)).await;
        slots[40].record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 40);
        // Out of slow start, the next refusal below the level refused is a drop: a cut.
        tokio::time::advance(Duration::from_millis(5)).await;
        slots[39].record(Duration::from_millis(1), Signal::BackPressure);
        assert_eq!(c.limit(), 36);
    }

    /// Slow start at the capacity (40): an answer frees its slot and adds one, and the two
    /// calls that take them reach the provider in the other order, so the one refused counted
    /// 40 in flight under a limit of 41. The limit lands at 39; the climb back to 40 takes one
    /// round trip, not the calm wait (seconds) of an exact count, and 40 holding a round trip
    /// makes 41 the level to wait below (not a new slow start, which could race again).
    #[tokio::test(start_paused = true)]
    async fn a_slow_start_count_a_slot_low_costs_one_round_trip() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            initial: 40,
            ..AdaptiveSettings::up_to(256)
        });
        let rtt = Duration::from_millis(100);
        let mut slots: Vec<_> = futures::future::join_all((0..40).map(|_| c.acquire())).await;
        tokio::time::advance(rtt).await;
        c.waiting.fetch_add(1, Relaxed);
        let answered_slot = slots.pop().unwrap();
        answered_slot.record(rtt, answered(10));
        assert_eq!(c.limit(), 41);
        drop(answered_slot);
        let refused = c.acquire().await;
        let accepted = c.acquire().await;
        c.waiting.fetch_sub(1, Relaxed);
        tokio::time::advance(Duration::from_millis(5)).await;
        refused.record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 39, "one below the 40 it counted");
        drop((refused, accepted, slots));
        full_round(&c, rtt, |_| answered(10)).await;
        assert_eq!(c.limit(), 40, "back at the capacity after one round trip");
        // 40 holds: 41 is tried after the calm wait (100 answers since the cut), alone.
        let mut rounds = 0;
        while c.limit() == 40 {
            full_round(&c, rtt, |_| answered(10)).await;
            rounds += 1;
            assert!(rounds < 100);
        }
        assert_eq!(c.limit(), 41);
        assert!(rounds >= 2, "{rounds}");
    }

    /// The refused call took the last slot of the limit it went under: that count is exact,
    /// and the level refused is tried again only after calm.
    #[tokio::test(start_paused = true)]
    async fn a_slow_start_count_at_the_limit_waits_for_calm_before_trying_again() {
        let c = refused_at_41_in_slow_start().await;
        full_round(&c, Duration::from_millis(100), |_| answered(10)).await;
        assert_eq!(c.limit(), 40, "41 is tried again only after calm");
    }

    /// Slow start from 41, the 41st call refused: the limit at 40, out of slow start, no slot
    /// taken.
    async fn refused_at_41_in_slow_start() -> Concurrency {
        let c = Concurrency::adaptive(AdaptiveSettings {
            initial: 41,
            ..AdaptiveSettings::up_to(256)
        });
        let slots: Vec<_> = futures::future::join_all((0..41).map(|_| c.acquire())).await;
        tokio::time::advance(Duration::from_millis(5)).await;
        slots[40].record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 40);
        drop(slots);
        c
    }

    /// Out of slow start one refusal takes a tenth off, however few were in flight (it may be
    /// the provider's hiccup); a second in the round trip of that cut, sent with well under
    /// the limit in flight, says the cut was not enough: 90 % of that count.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_after_a_cut_goes_by_the_count_in_flight() {
        let c = refused_at_41_in_slow_start().await;
        full_round(&c, Duration::from_millis(100), |_| answered(10)).await;
        assert_eq!(c.limit(), 40);
        // The demand fell to 20 in flight, and one is refused: a tenth off the limit.
        let mut slots: Vec<_> = futures::future::join_all((0..20).map(|_| c.acquire())).await;
        tokio::time::advance(Duration::from_millis(5)).await;
        slots
            .pop()
            .unwrap()
            .record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 36);
        // The next call goes out with 20 in flight, and is refused too.
        let next = c.acquire().await;
        tokio::time::advance(Duration::from_millis(5)).await;
        next.record(Duration::from_millis(5), Signal::BackPressure);
        assert_eq!(c.limit(), 18);
        // A call sent before that cut, with more in flight (19) than it left, says nothing new.
        slots[18].record(Duration::from_millis(20), Signal::BackPressure);
        assert_eq!(c.limit(), 18);
    }

    /// In slow start the limit keeps growing while a refusal is on its way: the cut starts
    /// from the level the refused call was sent under.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_cuts_from_the_limit_its_call_was_sent_under() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            min: 1,
            initial: 10,
            max: 100,
        });
        let refused_sent = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        let rtt = Duration::from_millis(50);
        full_round(&c, rtt, |_| answered(10)).await;
        assert_eq!(c.limit(), 20);
        c.record(refused_sent.elapsed(), Signal::BackPressure);
        assert_eq!(c.limit(), 9, "0.9 x 10, not 0.9 x 20");
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_grow_when_the_limit_is_not_the_bottleneck() {
        let c = Concurrency::adaptive(AdaptiveSettings::up_to(100));
        for _ in 0..50 {
            let slot = c.acquire().await;
            tokio::time::advance(Duration::from_millis(100)).await;
            c.record(Duration::from_millis(100), answered(50));
            drop(slot);
        }
        assert_eq!(c.limit(), DEFAULT_INITIAL_CONCURRENCY);
    }

    /// Feeds the rest of the controller's round trip: answers of `rtt(i)` seconds and
    /// `tokens(i)` output tokens, the limit being the bottleneck.
    fn controller_round(
        c: &mut Controller,
        rtt: impl Fn(usize) -> f64,
        tokens: impl Fn(usize) -> f64,
    ) {
        let left = c.round.size - c.round.finished;
        for i in 0..left {
            c.answered(Instant::now(), rtt(i), tokens(i), true);
        }
    }

    /// Out of slow start, well below the level last refused: +1 per round trip.
    fn avoiding(limit: usize) -> Controller {
        let mut c = Controller::new(AdaptiveSettings {
            min: 4,
            initial: limit,
            max: 1000,
        });
        c.slow_start = false;
        c.ceiling = Some(1000);
        c
    }

    /// Calm right below the level last refused (`ceiling`), which was refused `refused_after`
    /// after it was sent.
    fn calm_below(ceiling: usize, refused_after: Duration, at: Instant) -> Controller {
        let mut c = avoiding(ceiling - 1);
        c.ceiling = Some(ceiling);
        c.ceiling_refused_after = refused_after;
        c.last_cut = Some(at - Duration::from_secs(10));
        c.calm_rounds = CALM_ROUNDS_AT_CEILING;
        c.answers_since_cut = MAX_CALM_ANSWERS_AT_CEILING;
        c
    }

    /// As `Concurrency::record_with` feeds an answer while callers wait for a slot: the slot
    /// goes out again at once.
    fn answer_while_callers_wait(c: &mut Controller, at: Instant) {
        c.probe_sent_again(at, true);
        c.answered(at, 1.0, 50.0, true);
    }

    /// Answers every 90 ms (11 in flight, 1 s calls) until the limit reaches the level last
    /// refused; the time of the answer that raised it.
    fn answer_until_the_try(c: &mut Controller, t: &mut Instant) -> Instant {
        let ceiling = c.ceiling.unwrap();
        for _ in 0..1000 {
            *t += Duration::from_millis(90);
            answer_while_callers_wait(c, *t);
            if c.limit == ceiling {
                return *t;
            }
        }
        panic!("never tried {ceiling}");
    }

    /// Answers every 90 ms while the level last refused is being tried, until the try passes
    /// (the ceiling is gone); how many it took, at most `most`.
    fn answers_until_the_try_passes(c: &mut Controller, t: &mut Instant, most: usize) -> usize {
        let mut answers = 0;
        while c.ceiling.is_some() {
            *t += Duration::from_millis(90);
            answer_while_callers_wait(c, *t);
            answers += 1;
            assert!(answers <= most, "not passed after {most} answers");
        }
        answers
    }

    /// Refused in 5 ms, the level is tried again: the fourth call out at it, not refused
    /// within 100 ms (4 x 5 ms, at least 100 ms), says the capacity rose, half a round trip
    /// after the try began instead of a whole one (11 answers), and slow start resumes.
    #[test]
    fn a_try_not_refused_as_fast_as_a_refusal_comes_finds_the_capacity_rose() {
        let mut t = Instant::now();
        let mut c = calm_below(11, Duration::from_millis(5), t);
        answer_until_the_try(&mut c, &mut t);
        // Less than a whole round trip (11 answers).
        let answers = answers_until_the_try_passes(&mut c, &mut t, 10);
        // Out at 11: the raise's call, then one per answer; the fourth at the third answer,
        // and the fifth answer comes 180 ms after it.
        assert_eq!(answers, 5);
        assert!(c.slow_start);
        assert_eq!(c.limit, 12, "slow start counted this answer");
        t += Duration::from_millis(90);
        answer_while_callers_wait(&mut c, t);
        assert_eq!(c.limit, 13);
    }

    /// Refused within the wait: the try is over, back right below, and answers after it
    /// restart nothing.
    #[test]
    fn a_try_refused_in_time_is_over() {
        let mut t = Instant::now();
        let mut c = calm_below(11, Duration::from_millis(5), t);
        let tried_at = answer_until_the_try(&mut c, &mut t);
        for _ in 0..3 {
            t += Duration::from_millis(30);
            answer_while_callers_wait(&mut c, t);
        }
        t += Duration::from_millis(5);
        c.overloaded(t, tried_at + Duration::from_millis(60), None);
        assert_eq!(c.limit, 10);
        assert!(c.probe.is_none());
        for _ in 0..30 {
            t += Duration::from_millis(90);
            answer_while_callers_wait(&mut c, t);
            assert!(!c.slow_start);
            assert!(c.limit <= 10, "{}", c.limit);
        }
    }

    /// Refusals that take long (a timeout counts as overload): a try cannot be judged before
    /// a refusal would have come, and a whole round trip at the level says the capacity rose.
    #[test]
    fn slow_refusals_leave_the_try_to_a_whole_round_trip() {
        let mut t = Instant::now();
        let mut c = calm_below(11, Duration::from_secs(30), t);
        answer_until_the_try(&mut c, &mut t);
        let answers = answers_until_the_try_passes(&mut c, &mut t, 22);
        assert!(answers >= 11, "after {answers} answers");
        assert!(c.slow_start);
    }

    #[test]
    fn latency_never_cuts_and_a_lasting_rise_stops_holding_growth() {
        let mut c = avoiding(30);
        for _ in 0..10 {
            controller_round(&mut c, |_| 1.0, |_| 100.0);
            assert!(!c.holding);
        }
        let before = c.limit;
        assert_eq!(before, 40, "+1 per round trip");
        // Calls now take 3x as long (the provider's busy hour).
        let mut limits = Vec::new();
        let mut held = Vec::new();
        for _ in 0..12 {
            controller_round(&mut c, |_| 3.0, |_| 100.0);
            limits.push(c.limit);
            held.push(c.holding);
        }
        // The first slow round trip had already begun: it grows, then growth holds...
        assert_eq!(limits[0], before + 1);
        assert!(held[0] && held[1], "{held:?}");
        assert_eq!(limits[1], limits[0], "held: {limits:?}");
        // ...never a cut...
        assert!(limits.windows(2).all(|w| w[1] >= w[0]), "{limits:?}");
        // ...and once the model has learnt the new normal, growth resumes.
        let resumed = held.iter().position(|h| !h).expect("learnt");
        assert!(resumed <= 6, "held {resumed} round trips: {held:?}");
        assert_eq!(limits[11], limits[resumed] + (11 - resumed), "{limits:?}");
    }

    /// Answers of very different lengths, in proportions that shift from one round trip to
    /// the next (two stages, `max_tokens` 10 and 1000, on one limit), are not congestion.
    #[test]
    fn long_answers_are_not_congestion() {
        let mut c = avoiding(30);
        // latency = 0.3 s + 20 ms per token, ±5 %.
        let rtt = |tokens: f64, i: usize| (0.3 + 0.02 * tokens) * (0.95 + 0.01 * (i % 11) as f64);
        for r in 0..40 {
            // One round trip 1 long answer in 10, the next 9 in 10.
            let mostly_long = r % 2 == 1;
            let tokens = move |i: usize| {
                let long = if mostly_long {
                    i % 10 != 5
                } else {
                    i % 10 == 5
                };
                if long { 1000.0 } else { 10.0 }
            };
            let start = c.limit;
            controller_round(&mut c, |i| rtt(tokens(i), i), tokens);
            assert!(!c.holding, "round {r} looked slow");
            assert_eq!(c.limit, start + 1, "round {r}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_right_below_the_last_refused_level_before_trying_it_again() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            min: 4,
            initial: 11,
            max: 1000,
        });
        let rtt = Duration::from_millis(100);
        let refuse = async || {
            tokio::time::advance(rtt).await;
            c.record(Duration::from_millis(5), Signal::BackPressure);
        };
        // Round trips spent at 10, one below the refused 11, before trying 11 again.
        let rounds_at_10 = async || {
            let mut rounds = 0;
            while c.limit() == 10 {
                full_round(&c, rtt, |_| answered(10)).await;
                rounds += 1;
                assert!(rounds < 100);
            }
            rounds
        };
        refuse().await;
        assert_eq!(c.limit(), 9);
        full_round(&c, rtt, |_| answered(10)).await;
        assert_eq!(c.limit(), 10);
        // 100 answers since the cut: 9 at 9, then 10 per round trip.
        assert_eq!(rounds_at_10().await, 10);
        assert_eq!(c.limit(), 11);
        // Refused at 11 again: the capacity has not moved, so back to 10 (no cut), and twice
        // as many answers before the next try.
        refuse().await;
        assert_eq!(c.limit(), 10);
        assert_eq!(rounds_at_10().await, 20);
        // 11 passes a whole round trip this time: the capacity rose; slow start again
        // (doubling per round trip) instead of +1 per round trip.
        full_round(&c, rtt, |_| answered(10)).await;
        let mut limits = Vec::new();
        for _ in 0..3 {
            full_round(&c, rtt, |_| answered(10)).await;
            limits.push(c.limit());
        }
        assert!(
            limits[0] >= 12 && limits[2] >= 4 * limits[0] - 4,
            "{limits:?}"
        );
        // Refused at the new level: back to +1 per round trip.
        let refused_at = c.limit();
        refuse().await;
        let cut = c.limit();
        assert_eq!(cut, (refused_at as f64 * 0.9) as usize);
        full_round(&c, rtt, |_| answered(10)).await;
        assert_eq!(c.limit(), cut + 1);
    }

    /// The level last refused is tried again after 5 s and 50 answers even when answers are
    /// fewer than the 100 otherwise waited for (so a capacity that rose is found).
    #[tokio::test(start_paused = true)]
    async fn slow_answers_try_the_refused_level_again_within_seconds() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            min: 4,
            initial: 11,
            max: 1000,
        });
        tokio::time::advance(Duration::from_millis(100)).await;
        c.record(Duration::from_millis(5), Signal::BackPressure);
        // 1 s calls: about 10 answers per round trip, far from 100 answers in 5 s.
        let rtt = Duration::from_secs(1);
        let mut waited = Duration::ZERO;
        while c.limit() < 11 {
            full_round(&c, rtt, |_| answered(10)).await;
            waited += rtt;
        }
        // One round trip to climb to 10, calm ones there; the 5 s since the cut passed in the
        // fifth, with fewer than 50 answers, and the sixth brought them (instead of 100
        // answers: 10 s).
        assert_eq!(waited, Duration::from_secs(6));
    }

    /// How `CallPolicy` reads a provider's refusals: a 429 that carries the account's
    /// rate-limit state is the rate limiter's business; a 429 without it, or a 503, means the
    /// provider is full; a 500 says nothing about load.
    #[tokio::test(start_paused = true)]
    async fn the_policy_cuts_on_overload_only() {
        use crate::error::StageError;
        use crate::policy::{
            Answer, CallSpec, Failed, LimitSpec, ProviderSpec, Resources, ResourcesOptions,
            ServerLimits, TokenUsage,
        };
        use std::collections::BTreeMap;
        use std::sync::atomic::AtomicU32;

        let limit = LimitSpec {
            adaptive: Some(true),
            min_concurrency: Some(4),
            initial_concurrency: Some(10),
            ..Default::default()
        };
        let provider: ProviderSpec = serde_json::from_value(serde_json::json!({
            "kind": "openai", "model": "m", "limit": "acct", "backoff_s": 0.1
        }))
        .unwrap();
        let resources = Resources::new(
            &BTreeMap::from([("acct".to_string(), limit)]),
            &BTreeMap::from([("p".to_string(), provider)]),
            ResourcesOptions::default(),
        )
        .unwrap();
        let policy = resources.policy("p", Default::default()).unwrap();
        let spec = CallSpec {
            cache_key: None,
            input_tokens: 10,
            max_output_tokens: 10,
            ..Default::default()
        };
        // One call: refused once with `status` (and `server` state), or dropped without an
        // answer (`shed`), then answered.
        let call = async |status: Option<u16>, shed: bool, server: ServerLimits| {
            let attempts = AtomicU32::new(0);
            let attempt = || {
                let first = attempts.fetch_add(1, Relaxed) == 0;
                let server = server.clone();
                async move {
                    if first {
                        return Err(Failed {
                            error: StageError::retryable(format!("{status:?}"), Some(0.1)),
                            status,
                            server: Box::new(server),
                            billed: Default::default(),
                            shed,
                        });
                    }
                    Ok(Answer {
                        value: "ok".to_string(),
                        usage: TokenUsage {
                            input: 10,
                            output: 5,
                            ..Default::default()
                        },
                        server: ServerLimits::default(),
                    })
                }
            };
            policy.call(&spec, attempt, |_| Ok(())).await.unwrap();
            assert_eq!(attempts.load(Relaxed), 2);
            policy.concurrency().limit()
        };
        let account_spent = ServerLimits {
            limit_requests: Some(600),
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let none = ServerLimits::default;
        assert_eq!(
            call(Some(429), false, account_spent).await,
            10,
            "a rate limit"
        );
        assert_eq!(call(Some(429), false, none()).await, 9, "overload");
        assert_eq!(call(Some(503), false, none()).await, 8, "overload");
        assert_eq!(call(Some(500), false, none()).await, 8, "no news");
        assert_eq!(call(None, false, none()).await, 8, "not connected: no news");
        assert_eq!(
            call(None, true, none()).await,
            7,
            "taken and dropped: overload"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_acquire_stops_counting_as_waiting() {
        let c = Concurrency::adaptive(AdaptiveSettings {
            min: 1,
            initial: 1,
            max: 100,
        });
        let slot = c.acquire().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(10), c.acquire())
                .await
                .is_err()
        );
        assert_eq!(c.waiting.load(Relaxed), 0);
        drop(slot);
    }
}
