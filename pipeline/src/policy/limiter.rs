//! Named rate limiters: requests and tokens per minute (and per day), shared by every stage
//! that names the limit.
//!
//! Per minute, each dimension is a token bucket refilled continuously at `limit / 60 s`,
//! holding at most `burst_seconds` of refill — the short-window shape providers enforce (or
//! less, when the provider's reset headers show a shorter window: see `Bucket::fit`; or more,
//! step by step, when they show a wider one the provider keeps to: see `Wider`). A
//! caller *reserves* what it needs: the level may go below zero, and the caller sleeps until
//! its share has been refilled. Reservations are therefore served in arrival order with exact
//! spacing and no thundering herd of waiters re-checking a shared level. Callers take turns
//! to reserve, and the next one reserves only when the limit is spoken for less than
//! [`RESERVE_AHEAD`] ahead, so each call is priced with what the limiter knows near its turn.
//!
//! Per day, a quota is a calendar-day window (UTC midnight to midnight): a window never admits
//! more than its quota; what does not fit waits for the next window.
//!
//! Tokens are counted the way the *server* counts them, which is learned: OpenAI's limiter
//! charges `max_tokens` plus an estimate from the request's characters, not the tokenizer's
//! count. Each reservation carries the caller's prompt estimate; the limiter compares what the
//! server's `x-ratelimit-remaining-tokens` fell by between two answers with the estimates
//! sent in between, and reserves `estimate × learned ratio`. Until it has learned, it takes the
//! caller's (conservative) estimate as it is.
//!
//! A 429 with the account's state pauses everyone: the callers already waiting keep their
//! order and spacing and are moved back by the pause, so the end of a pause does not release
//! them all at once.
//!
//! Why not `governor`: it has no way to give tokens back (reconciling an estimate with the
//! billed usage), to lower its state to what the server reports, or to pause on a 429 —
//! the three things that let `pipe` run at the provider's limit without 429 storms.

use super::ServerLimits;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Share of the provider's burst window the limiter lets out back to back. A request reaches
/// the provider some milliseconds after it is let through, and while the provider's bucket
/// is still full those milliseconds of refill are wasted there but not here; spending the
/// whole window at once would then meet a 429 at the end of the burst. Steady-state pacing
/// (the refill rate) is unaffected: only the one-off burst is 10 % smaller (unless the window
/// holds about one request: see `Bucket::fit`).
const BURST_SHARE: f64 = 0.9;

/// A window the provider's reset headers show is taken for ours only below this share of the
/// configured one; closer, it is the same window read through rounding.
const WINDOW_TOLERANCE: f64 = 0.95;

/// A window the provider's reset headers show is tried (see [`Wider`]) only above this many
/// times the configured one: OpenAI's and Anthropic's describe their whole minute.
const WIDER_THAN: f64 = 2.0;
/// The first trial of a wider window lets this share of our own burst go on top of it.
const FIRST_PROBE: f64 = 0.5;

/// A spent window's reset is read as a continuous bucket's when it is within this share of
/// the window learned (see [`RateLimiter::refill_time`]).
const CONSISTENT_WINDOW: f64 = 0.05;

/// How far ahead of its turn to go a call is reserved (see [`RateLimiter::reserve_in_turn`]):
/// enough to have the next calls ready when the limit frees up, short enough that their price
/// is today's.
pub const RESERVE_AHEAD: Duration = Duration::from_millis(250);
/// How often the caller whose turn is next looks again whether it has come sooner.
const RESERVE_RECHECK: Duration = Duration::from_millis(100);

/// How long a caller may have to wait before the limiter mentions it in the log.
const LONG_WAIT: Duration = Duration::from_secs(60);

const DAY: Duration = Duration::from_secs(86_400);

/// Margin on a ratio learned from the server's headers: the learned figure is an average, and
/// reserving 2 % above it keeps the noisy half of the requests from meeting a 429. It costs
/// no throughput for long: the surplus it leaves on the server is taken back from the
/// server's snapshots (`raise_to_server`).
const LEARNED_MARGIN: f64 = 1.02;
/// Snapshot pairs needed before a learned ratio replaces the caller's estimate.
const SAMPLES_TO_TRUST: u32 = 10;
/// Weight of the newest sample in the learned sums (the rest decays). A pair of snapshots
/// is noisy (calls reach the server in another order than they were sent), but the sums of
/// consecutive pairs telescope, so a long memory makes the ratio exact; how a server counts
/// does not change during a run.
const SAMPLE_WEIGHT: f64 = 0.02;
/// Server snapshots in a row that must all say it has less left than we think before the
/// level is lowered (see `sync_bucket`).
const DEFICIT_CONFIRMATIONS: usize = 3;
/// Share of the refill the server's surplus may give back (see `raise_to_server`). The
/// surplus our margin leaves grows at most at the margin's share of the rate; a larger one is
/// a snapshot taken before calls sent ahead of it arrived (a burst over several connections).
const RAISE_SHARE: f64 = 0.05;
const PAUSES_KEPT: usize = 64;
const REFUSALS_KEPT: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

#[derive(Debug)]
struct Bucket {
    /// Per minute, as configured or learned (for messages).
    limit: u64,
    per_second: f64,
    capacity: f64,
    level: f64,
    last: Instant,
    /// Learned from the server's headers rather than configured.
    learned: bool,
    /// How far below our level the server's last few snapshots put it, newest last (see
    /// `sync_bucket`).
    deficits: VecDeque<f64>,
    /// How far above our level plus the share of its burst we hold back the server's last few
    /// snapshots put it, newest last (see `raise_to_server`).
    surpluses: VecDeque<f64>,
    /// When the server's surplus was last looked at (see `raise_to_server`).
    surplus_seen_at: Instant,
    /// What `raise_to_server` has added and not taken back yet.
    raised: f64,
    /// Until the server first answers, calls are spaced at the refill rate (the burst is kept
    /// whole): when the last of them goes.
    paced_until: Instant,
    /// The provider's window (what its bucket holds when full) as `burst_seconds` says.
    configured_window: f64,
    /// The same as its reset headers say (`remaining + reset x rate`, the most seen), when
    /// they do: see `learn_window`.
    server_window: Option<f64>,
    /// Requests, each costing exactly 1 (not tokens, which vary by call): see `fit`.
    whole_units: bool,
    /// What one unit reserved costs: 1, unless the provider's window is too small to keep the
    /// held-back share beside one request (see `fit`).
    spacing: f64,
    /// Trying a window the provider's headers show wider than ours.
    wider: Wider,
    /// The provider refused a call while its headers showed room for it: their room is not
    /// taken back (`raise_to_server`) nor tried (`Wider`).
    headers_overstate: bool,
}

/// A provider's reset headers may describe a whole minute (OpenAI's and Anthropic's do: their
/// bucket refills continuously up to the minute's limit) while it enforces a shorter window
/// (both say it may). Trusted at once, the headers would send a minute's worth in a burst,
/// into a storm of 429s where the window is short; ignored, a short job takes its full time at
/// the rate where the provider would have taken much of it at once (a careful Python client
/// with `AsyncLimiter(rpm, 60)` does). So the wider window is tried the way TCP's slow start
/// tries a link: half our own burst goes beyond our window first, and each call the provider
/// takes beyond it lets two more go, up to what its headers say it has left less a cushion of
/// our own window, so the trial doubles each round trip. The first 429 while trying ends the
/// trial for the rest of the run: the provider enforces a shorter window than it describes,
/// and the refused calls are those of one step.
#[derive(Debug, Default)]
struct Wider {
    started: bool,
    /// Ended by a 429: bursts stay within the configured window.
    refused: bool,
    /// Let go beyond our window and not reserved yet.
    credit: f64,
    /// Let go beyond our window (reserved or not) and not answered yet.
    outstanding: f64,
    /// Taken by the provider beyond our window: what our bucket may hold beyond its own
    /// capacity from now on (refilled, after a pause in the work).
    proven: f64,
}

impl Bucket {
    fn new(limit: u64, burst_seconds: f64, whole_units: bool, now: Instant) -> Bucket {
        let per_second = limit as f64 / 60.0;
        let mut bucket = Bucket {
            limit,
            per_second,
            capacity: 0.0,
            level: 0.0,
            last: now,
            learned: false,
            deficits: VecDeque::new(),
            surpluses: VecDeque::new(),
            surplus_seen_at: now,
            raised: 0.0,
            paced_until: now,
            configured_window: (per_second * burst_seconds.max(0.001)).max(1.0),
            server_window: None,
            whole_units,
            spacing: 1.0,
            wider: Wider::default(),
            headers_overstate: false,
        };
        bucket.fit(now);
        bucket.level = bucket.capacity;
        bucket
    }

    /// The provider's window: the configured one, or the smaller one its headers show
    /// (clearly smaller: a reset header is rounded to the millisecond).
    fn window(&self) -> f64 {
        self.server_window
            .filter(|w| *w < self.configured_window * WINDOW_TOLERANCE)
            .unwrap_or(self.configured_window)
    }

    /// The provider's headers show a window shorter than `burst_seconds` says.
    fn short_window(&self) -> bool {
        self.window() < self.configured_window
    }

    /// The window the provider's headers show, when it is clearly wider than ours and no
    /// 429 has ended trying it or shown that the headers describe more than is enforced (see
    /// [`Wider`]).
    fn wider_window(&self) -> Option<f64> {
        self.server_window.filter(|w| {
            *w > self.configured_window * WIDER_THAN
                && !self.wider.refused
                && !self.headers_overstate
        })
    }

    /// Learns the provider's window from one snapshot: `remaining` left, full again after
    /// `reset` at `per_second`. The most seen is kept: a reset header rounded down only ever
    /// says less. Returns whether that made us send less back to back than `burst_seconds`
    /// said.
    fn learn_window(
        &mut self,
        remaining: f64,
        reset: Duration,
        per_second: f64,
        now: Instant,
    ) -> bool {
        let window = (remaining + reset.as_secs_f64() * per_second).max(1.0);
        if self.server_window.is_some_and(|w| w >= window) {
            return false;
        }
        let before = (self.capacity, self.spacing);
        self.server_window = Some(window);
        self.fit(now);
        self.capacity < before.0 || self.spacing > before.1
    }

    /// Our capacity: the provider's window less the share held back ([`BURST_SHARE`]), so
    /// that a call reaching the provider a little early still finds room there. A window of
    /// about one request (60 rpm enforced per second, or any rate enforced over a tenth of a
    /// second) cannot hold that share beside a whole request: every call would be due the
    /// instant the provider has room again, and any jitter on the way would meet a 429. Then
    /// the bucket lets one request out at a time and spaces them wider than the rate by the
    /// share.
    fn fit(&mut self, now: Instant) {
        self.refill(now);
        let fitted = self.window() * BURST_SHARE;
        (self.capacity, self.spacing) = if self.whole_units && fitted < 1.0 {
            (1.0, 2.0 - fitted)
        } else {
            (fitted.max(1.0), 1.0)
        };
        if let Some(wider) = self.wider_window() {
            let tried = self.wider.proven + self.wider.outstanding;
            let most = (wider - self.configured_window).max(self.capacity);
            self.capacity = (self.capacity + tried).min(most);
        }
        // Calls paced before the first answer and still to go will take their share of the
        // (smaller) window when they do: what is left now is less by that much.
        let paced_ahead = self
            .paced_until
            .saturating_duration_since(now)
            .as_secs_f64()
            * self.per_second;
        self.level = self.level.min(self.capacity - paced_ahead);
    }

    /// Takes up to `amount` of what was let go beyond our window (see [`Wider`]): how much of
    /// this call goes beyond it.
    fn take_credit(&mut self, amount: f64) -> f64 {
        let beyond = self.wider.credit.min(amount).max(0.0);
        self.wider.credit -= beyond;
        beyond
    }

    /// One step of trying the provider's wider window, from one of its snapshots: `taken` is
    /// what the provider just counted of a call beyond our window, and two more of it may go
    /// (the first step: half our burst), as far as `room` (what the provider has left for
    /// calls it has not seen, less our cushion) allows. Returns whether the trial began now.
    fn widen(&mut self, room: f64, taken: f64, now: Instant) -> bool {
        if self.wider_window().is_none() {
            return false;
        }
        let begins = !self.wider.started;
        self.wider.started = true;
        let step = if begins {
            self.capacity * FIRST_PROBE
        } else {
            2.0 * taken
        };
        self.refill(now);
        let by = step.min(room - self.level);
        if by > 0.0 {
            self.wider.outstanding += by;
            self.fit(now);
            let before = self.level;
            self.level = (self.level + by).min(self.capacity);
            // Only what the level gained is credit (it may stop at the capacity).
            let added = self.level - before;
            self.wider.outstanding -= by - added;
            self.wider.credit += added;
        }
        begins
    }

    /// A 429 while trying the wider window: the provider enforces a shorter one than its
    /// headers describe (or a call overtaken on the way ate our cushion: either way, not worth
    /// a second try). Back to ours for the rest of the run. Returns whether a trial ended.
    fn end_trial(&mut self, now: Instant) -> bool {
        if !self.wider.started || self.wider.refused {
            return false;
        }
        // The credit not taken yet was never the provider's room (as far as the level still
        // holds it: reservations, pauses and snapshots move the level, and the credit is only
        // an account of what the trial added).
        self.refill(now);
        self.level -= self.wider.credit.min(self.level.max(0.0));
        self.wider = Wider {
            started: true,
            refused: true,
            ..Wider::default()
        };
        self.fit(now);
        true
    }

    /// When a call costing `amount` may go, sent at the refill rate behind the others paced
    /// so (the first at once).
    fn pace(&mut self, amount: f64, now: Instant) -> Instant {
        let at = self.paced_until.max(now);
        self.paced_until = at + Duration::from_secs_f64(amount * self.spacing / self.per_second);
        at
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes `amount` (possibly into debt) and says how long until the debt is repaid.
    fn reserve(&mut self, amount: f64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= amount * self.spacing;
        self.debt_wait()
    }

    fn debt_wait(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.per_second)
        }
    }

    fn give_back(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + amount * self.spacing).min(self.capacity);
    }
}

/// A daily quota in calendar-day windows: window 0 runs from the limiter's creation to the
/// first reset (the next UTC midnight), window k from `first_reset + (k-1) days` for a day.
#[derive(Debug)]
struct DayWindows {
    limit: u64,
    first_reset: Instant,
    /// Used per window index (only the current and future ones are kept).
    used: BTreeMap<u64, f64>,
}

impl DayWindows {
    fn new(limit: u64, first_reset: Instant) -> DayWindows {
        DayWindows {
            limit,
            first_reset,
            used: BTreeMap::new(),
        }
    }

    fn index(&self, at: Instant) -> u64 {
        if at < self.first_reset {
            0
        } else {
            1 + (at - self.first_reset).as_secs() / DAY.as_secs()
        }
    }

    fn start(&self, index: u64) -> Instant {
        self.first_reset + DAY * (index.saturating_sub(1) as u32)
    }

    /// Puts `amount` in the first window (from now on) with room for it; returns the window
    /// and, when that is a later one, when it opens.
    fn reserve(&mut self, amount: f64, now: Instant) -> (u64, Option<Instant>) {
        let current = self.index(now);
        self.used.retain(|k, _| *k >= current);
        let limit = self.limit as f64;
        let mut k = current;
        loop {
            let used = self.used.entry(k).or_default();
            // An empty window takes anything: a request larger than the whole quota is
            // refused before it gets here, and must not loop forever if it does.
            if *used + amount <= limit || *used == 0.0 {
                *used += amount;
                return (k, (k > current).then(|| self.start(k)));
            }
            k += 1;
        }
    }

    fn give_back(&mut self, window: u64, amount: f64) {
        if let Some(used) = self.used.get_mut(&window) {
            *used = (*used - amount).max(0.0);
        }
    }
}

/// What a limit allows; built from `resources.limits.<name>`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitSettings {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpd: Option<u64>,
    /// Seconds of refill that may be spent back to back (the provider's short window).
    pub burst_seconds: f64,
    /// `true`: the provider's token limit counts `max_tokens` when the request arrives (OpenAI);
    /// `false`: it counts the output actually generated (reconciled after the answer).
    pub reserve_max_tokens: bool,
    /// When the first daily window ends; `None` = at the next UTC midnight.
    pub first_day_reset: Option<Duration>,
}

/// What one request asks of the limiter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// The caller's estimate of the prompt as the server counts it.
    pub prompt: u64,
    /// `max_tokens`.
    pub output: u64,
}

/// How an attempt ended, for the token accounting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Answered (also a billed answer the stage cannot use) with this billed usage.
    Answered { input: u64, output: u64 },
    /// Refused before it was counted (a 429): its tokens come back.
    Refused,
    /// Failed after the server counted it (5xx, timeout): nothing to correct.
    Failed,
}

/// One pair of server snapshots, kept to compare with the next.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    seq: u64,
    /// When the call was sent, and when its answer (carrying the snapshot) came.
    at: Instant,
    answered: Instant,
    remaining: f64,
    prompt_through: f64,
    fixed_through: f64,
}

/// How the server counts a prompt, learned.
#[derive(Debug, Default)]
struct TokenModel {
    /// From header deltas: decayed sums of the server's prompt charge and our estimate.
    header_charge: f64,
    header_estimate: f64,
    header_samples: u32,
    /// From billed usage: decayed sums of billed input and our estimate.
    billed_input: f64,
    billed_estimate: f64,
    billed_samples: u32,
    /// From 429s that say what the server counted the refused call as ("Requested" in
    /// OpenAI's message): decayed sums of its prompt charge and our estimate.
    said_charge: f64,
    said_estimate: f64,
    said_samples: u32,
    /// An answer has carried the token window's state (`x-ratelimit-remaining-tokens`).
    answers_show_window: bool,
    last: Option<Snapshot>,
    /// The most the server has reported left: a floor of its window's capacity.
    max_remaining: f64,
    /// The server's window size, from `remaining + reset × rate` (the reset header says
    /// when its window is full again), when it sends one.
    capacity: Option<f64>,
    /// Recent requests the server refused (not counted): (seq, prompt, fixed).
    refused: VecDeque<(u64, f64, f64)>,
    /// The server takes its snapshot when it answers, not when the call arrives: it has
    /// reported its window full with a call of ours just counted (refilled past it while
    /// the answer was generated). See `learn_from_snapshot`.
    snapshot_when_answered: bool,
}

impl TokenModel {
    /// Server charge per unit of the caller's prompt estimate.
    fn ratio(&self, reserve_max_tokens: bool) -> f64 {
        if self.learned_from_headers() && self.header_estimate > 0.0 {
            return (self.header_charge / self.header_estimate * LEARNED_MARGIN).clamp(0.05, 20.0);
        }
        if self.said_rules() {
            return (self.said_charge / self.said_estimate * LEARNED_MARGIN).clamp(0.05, 20.0);
        }
        if self.billed_samples > 0 && self.billed_estimate > 0.0 {
            let ratio = (self.billed_input / self.billed_estimate).clamp(0.05, 20.0);
            // Under OpenAI's rule the server's count is not the bill (it estimates from
            // characters): a bill above the estimate raises it, one below does not lower it.
            return if reserve_max_tokens {
                ratio.max(1.0)
            } else {
                ratio
            };
        }
        1.0
    }

    fn learned_from_headers(&self) -> bool {
        self.header_samples >= SAMPLES_TO_TRUST
    }

    /// The price is what the server said it counted refused calls as, where its headers
    /// have not taught it and seldom can: taken when answering, those that hide the charge
    /// are left out, and on a window that refills before the answer none shows it. Not
    /// where no answer carries headers: there the tokenizer's price, above a count by
    /// characters on this corpus, keeps 429s rarer on a short window (a server enforcing
    /// a second: 22 refused for 207 calls priced by "Requested", 6 by the tokenizer).
    fn said_rules(&self) -> bool {
        self.answers_show_window
            && self.snapshot_when_answered
            && !self.learned_from_headers()
            && self.said_samples > 0
            && self.said_estimate > 0.0
    }

    /// The server's own count is known: a bill is not what it counts.
    fn count_known(&self) -> bool {
        self.learned_from_headers() || self.said_rules()
    }

    fn add(sum: &mut f64, estimate: &mut f64, samples: &mut u32, value: f64, of: f64) {
        *sum = *sum * (1.0 - SAMPLE_WEIGHT) + value;
        *estimate = *estimate * (1.0 - SAMPLE_WEIGHT) + of;
        *samples = samples.saturating_add(1);
    }
}

#[derive(Debug)]
struct State {
    requests_per_minute: Option<Bucket>,
    tokens_per_minute: Option<Bucket>,
    requests_per_day: Option<DayWindows>,
    tokens_per_day: Option<DayWindows>,
    /// The latest a 429 pause lasts until.
    paused_until: Option<Instant>,
    /// Recent pauses: (number, start, end); waiters move back by those after their reservation.
    pauses: VecDeque<(u64, Instant, Instant)>,
    pause_count: u64,
    /// Reservations so far (each gets the next number).
    seq: u64,
    /// Tokens reserved so far (corrected by reconciliation), to tell which debits a server
    /// snapshot has not seen yet.
    reserved_tokens_total: f64,
    reserved_requests_total: f64,
    /// Prompt estimates and fixed (max_tokens) parts reserved so far, never corrected.
    prompt_total: f64,
    fixed_total: f64,
    /// The newest reservation whose effect a server snapshot has already put in our level:
    /// reconciling it (or anything older) again would count it twice.
    synced_through: u64,
    model: TokenModel,
    /// The server has answered (or refused) a request: until then calls go at the refill
    /// rate only, and the burst waits for the first bill to correct our price.
    answered: bool,
    /// Largest requested wait so far that was logged (to log long waits once per pause).
    logged_wait_until: Option<Instant>,
}

/// A reservation: what was taken and where it stands, so the answer can be reconciled.
/// Dropped before it was sent (the call was cancelled while waiting), it gives everything
/// back.
#[derive(Debug)]
pub struct Ticket<'a> {
    limiter: &'a RateLimiter,
    seq: u64,
    /// Tokens taken from the token buckets.
    pub tokens: u64,
    prompt: f64,
    fixed: f64,
    prompt_through: f64,
    fixed_through: f64,
    requests_total_at: f64,
    tokens_total_at: f64,
    release: Instant,
    pauses_seen: u64,
    request_window: Option<u64>,
    token_window: Option<u64>,
    /// Set when it was sent; `None` = still waiting (a drop gives it back).
    sent_at: Option<Instant>,
    /// It waited for its turn at the rate (or for a pause) after the first answer, rather
    /// than go at once or be paced before it (see `learn_from_snapshot`).
    in_turn: bool,
    /// What of it (requests, tokens) went beyond our window, trying the provider's wider one
    /// (see [`Wider`]).
    beyond: [f64; 2],
}

/// A named limiter. Cloning its `Arc` shares it; it is never copied.
#[derive(Debug)]
pub struct RateLimiter {
    pub name: String,
    settings: LimitSettings,
    state: Mutex<State>,
    /// Callers take turns here (first come, first served) to reserve; see
    /// [`RateLimiter::reserve_in_turn`].
    turns: tokio::sync::Mutex<()>,
}

fn until_utc_midnight() -> Duration {
    let now = chrono::Utc::now();
    let since_midnight = now.timestamp().rem_euclid(DAY.as_secs() as i64) as u64;
    Duration::from_secs(DAY.as_secs() - since_midnight)
}

impl RateLimiter {
    pub fn new(name: &str, settings: LimitSettings) -> RateLimiter {
        let now = Instant::now();
        let burst = settings.burst_seconds;
        let first_reset = now + settings.first_day_reset.unwrap_or_else(until_utc_midnight);
        let state = State {
            requests_per_minute: settings.rpm.map(|l| Bucket::new(l, burst, true, now)),
            tokens_per_minute: settings.tpm.map(|l| Bucket::new(l, burst, false, now)),
            requests_per_day: settings.rpd.map(|l| DayWindows::new(l, first_reset)),
            tokens_per_day: settings.tpd.map(|l| DayWindows::new(l, first_reset)),
            paused_until: None,
            pauses: VecDeque::new(),
            pause_count: 0,
            seq: 0,
            reserved_tokens_total: 0.0,
            reserved_requests_total: 0.0,
            prompt_total: 0.0,
            fixed_total: 0.0,
            synced_through: 0,
            model: TokenModel::default(),
            answered: false,
            logged_wait_until: None,
        };
        RateLimiter {
            name: name.to_string(),
            settings,
            state: Mutex::new(state),
            turns: tokio::sync::Mutex::new(()),
        }
    }

    /// As if the server had answered already (tests of the steady state).
    #[cfg(test)]
    fn answered(self) -> RateLimiter {
        self.lock().answered = true;
        self
    }

    /// No request or token numbers are known: only adaptive concurrency can pace calls.
    pub fn knows_limits(&self) -> bool {
        let s = self.lock();
        s.requests_per_minute.is_some() || s.tokens_per_minute.is_some()
    }

    pub fn reserves_max_tokens(&self) -> bool {
        self.settings.reserve_max_tokens
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buckets half-updated in a way that
        // matters (each field is updated in one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens a request is charged: its prompt estimate times what the server was learned to
    /// count per estimated token, plus `max_tokens`.
    pub fn charge(&self, demand: Demand) -> u64 {
        let ratio = self.lock().model.ratio(self.settings.reserve_max_tokens);
        (demand.prompt as f64 * ratio).ceil() as u64 + demand.output
    }

    /// Server-counted tokens per token of the caller's prompt estimate (1.0 until learned).
    pub fn prompt_ratio(&self) -> f64 {
        self.lock().model.ratio(self.settings.reserve_max_tokens)
    }

    /// Why a request could never be sent: it needs more tokens than the whole per-minute or
    /// per-day limit allows.
    pub fn never_fits(&self, demand: Demand) -> Option<String> {
        let tokens = self.charge(demand);
        let s = self.lock();
        let minute = s.tokens_per_minute.as_ref().map(|b| (b.limit, "minute"));
        let day = s.tokens_per_day.as_ref().map(|d| (d.limit, "day"));
        [minute, day]
            .into_iter()
            .flatten()
            .find(|(limit, _)| tokens > *limit)
            .map(|(limit, per)| {
                format!(
                    "needs about {tokens} tokens ({} prompt as the provider counts it + \
                     max_tokens {}), more than limit `{}` allows in a whole {per} ({limit})",
                    tokens - demand.output,
                    demand.output,
                    self.name
                )
            })
    }

    /// Takes what one request needs, now, and says when it may go (see [`Ticket::ready`]).
    pub fn reserve(&self, demand: Demand) -> Ticket<'_> {
        let now = Instant::now();
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut ratio = s.model.ratio(self.settings.reserve_max_tokens);
        // The bill can come in a little under the server's own count; a window of a second
        // absorbs that until the headers have taught the count, a short one does not.
        if !s.model.count_known()
            && s.tokens_per_minute
                .as_ref()
                .is_some_and(Bucket::short_window)
        {
            ratio *= LEARNED_MARGIN;
        }
        let tokens = (demand.prompt as f64 * ratio).ceil() + demand.output as f64;
        let mut release = now;
        let answered = s.answered;
        let mut beyond = [0.0; 2];
        for ((bucket, amount), beyond) in [
            (&mut s.requests_per_minute, 1.0),
            (&mut s.tokens_per_minute, tokens),
        ]
        .into_iter()
        .zip(beyond.iter_mut())
        {
            if let Some(bucket) = bucket {
                release = release.max(now + bucket.reserve(amount, now));
                *beyond = bucket.take_credit(amount);
                if !answered {
                    release = release.max(bucket.pace(amount, now));
                }
            }
        }
        let mut request_window = None;
        if let Some(day) = s.requests_per_day.as_mut() {
            let (window, opens) = day.reserve(1.0, now);
            request_window = Some(window);
            release = release.max(opens.unwrap_or(now));
        }
        let mut token_window = None;
        if let Some(day) = s.tokens_per_day.as_mut() {
            let (window, opens) = day.reserve(tokens, now);
            token_window = Some(window);
            release = release.max(opens.unwrap_or(now));
        }
        if let Some(until) = s.paused_until {
            release = release.max(until);
        }
        s.seq += 1;
        s.reserved_requests_total += 1.0;
        s.reserved_tokens_total += tokens;
        s.prompt_total += demand.prompt as f64;
        let fixed = if self.settings.reserve_max_tokens {
            demand.output as f64
        } else {
            0.0
        };
        s.fixed_total += fixed;
        let wait = release.saturating_duration_since(now);
        if wait >= LONG_WAIT
            && s.logged_wait_until
                .is_none_or(|at| release > at + LONG_WAIT)
        {
            s.logged_wait_until = Some(release);
            tracing::warn!(
                limit = %self.name,
                "rate limit `{}` is spent: calls wait {:.0}s for capacity",
                self.name,
                wait.as_secs_f64()
            );
        }
        Ticket {
            limiter: self,
            seq: s.seq,
            tokens: tokens as u64,
            prompt: demand.prompt as f64,
            fixed,
            prompt_through: s.prompt_total,
            fixed_through: s.fixed_total,
            requests_total_at: s.reserved_requests_total,
            tokens_total_at: s.reserved_tokens_total,
            release,
            pauses_seen: s.pause_count,
            request_window,
            token_window,
            sent_at: None,
            in_turn: answered && release > now,
            beyond,
        }
    }

    /// Reserves in turn (first come, first served), but no further ahead than
    /// [`RESERVE_AHEAD`]: while the calls already reserved keep the limit busy for longer,
    /// the next caller waits its turn unreserved. A reservation is priced when it is made, so
    /// one made far ahead would keep the price of then: callers queued behind a long wait
    /// (hundreds of slots on a tight token limit) would pay the caller's estimate long after
    /// the limiter learned that the server counts less, or a lower level it reported.
    pub async fn reserve_in_turn(&self, demand: Demand) -> Ticket<'_> {
        let _turn = self.turns.lock().await;
        loop {
            let now = Instant::now();
            let busy_until = self.booked_until(now);
            let Some(wait) = busy_until
                .checked_duration_since(now)
                .and_then(|d| d.checked_sub(RESERVE_AHEAD))
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            // Tokens given back meanwhile (a refused or cancelled call) shorten the wait:
            // look again now and then.
            tokio::time::sleep(wait.min(RESERVE_RECHECK)).await;
        }
        self.reserve(demand)
    }

    /// Until when the per-minute buckets are spoken for (their debt repaid, or the calls
    /// paced before the first answer gone), or a 429 pause lasts.
    fn booked_until(&self, now: Instant) -> Instant {
        let mut guard = self.lock();
        let s = &mut *guard;
        let mut until = s.paused_until.unwrap_or(now).max(now);
        for bucket in [&mut s.requests_per_minute, &mut s.tokens_per_minute]
            .into_iter()
            .flatten()
        {
            bucket.refill(now);
            until = until.max(now + bucket.debt_wait());
            if !s.answered {
                until = until.max(bucket.paced_until);
            }
        }
        until
    }

    /// Waits until one request costing `tokens` may be sent, and takes it (a reservation
    /// marked as sent at once; for callers that do not reconcile).
    pub async fn acquire(&self, tokens: u64) -> Ticket<'_> {
        let mut ticket = self
            .reserve_in_turn(Demand {
                prompt: 0,
                output: tokens,
            })
            .await;
        ticket.ready().await;
        ticket
    }

    /// Corrects the token accounting once the attempt is over: gives back what the server did
    /// not count (a refused request; with `output_tokens: generated`, the unused output), or
    /// takes more when the bill shows a larger prompt than the estimate — unless a server
    /// snapshot taken after this request already set the level (that counted it).
    pub fn settle(&self, ticket: &Ticket<'_>, outcome: Outcome) {
        let now = Instant::now();
        let mut guard = self.lock();
        let s = &mut *guard;
        let charged = ticket.tokens as f64;
        if !s.answered && matches!(outcome, Outcome::Refused | Outcome::Answered { .. }) {
            s.answered = true;
            tracing::debug!(limit = %self.name, "rate limit `{}`: first answer, the burst is free", self.name);
        }
        for (bucket, beyond) in [&mut s.requests_per_minute, &mut s.tokens_per_minute]
            .into_iter()
            .zip(ticket.beyond)
        {
            if let Some(b) = bucket.as_mut().filter(|_| beyond > 0.0) {
                match outcome {
                    Outcome::Answered { .. } => b.wider.proven += beyond,
                    // Sent beyond our window and refused (also by a 429 without the account's
                    // headers, which pauses nothing): the trial is over.
                    Outcome::Refused => end_trial(&self.name, b, now),
                    Outcome::Failed => {}
                }
            }
        }
        let counted = match outcome {
            Outcome::Refused => {
                s.model
                    .refused
                    .push_back((ticket.seq, ticket.prompt, ticket.fixed));
                if s.model.refused.len() > REFUSALS_KEPT {
                    s.model.refused.pop_front();
                }
                0.0
            }
            Outcome::Failed => charged,
            Outcome::Answered { input, output } => {
                let m = &mut s.model;
                if ticket.prompt > 0.0 {
                    TokenModel::add(
                        &mut m.billed_input,
                        &mut m.billed_estimate,
                        &mut m.billed_samples,
                        input as f64,
                        ticket.prompt,
                    );
                }
                if !self.settings.reserve_max_tokens {
                    (input + output) as f64
                } else if m.count_known() {
                    // The server's own figures rule; the bill is not what it counts.
                    charged
                } else {
                    charged.max(input as f64 + ticket.fixed)
                }
            }
        };
        let mut delta = charged - counted;
        if outcome == Outcome::Refused {
            // What it took beyond our window was never ours: the provider's headers said it
            // had room, and it had not.
            delta -= ticket.beyond[1];
        }
        if delta == 0.0 {
            return;
        }
        // Headers are per minute: nothing but this corrects the day's count.
        if let (Some(day), Some(window)) = (s.tokens_per_day.as_mut(), ticket.token_window) {
            day.give_back(window, delta);
        }
        if ticket.seq <= s.synced_through {
            return;
        }
        s.reserved_tokens_total -= delta;
        if let Some(bucket) = s.tokens_per_minute.as_mut() {
            bucket.give_back(delta, now);
        }
    }

    /// Brings the limiter in line with what the server reported in a response's headers:
    /// learns limits it was not told, adopts lower ones, lowers its levels when the server
    /// has less left than we think (another process on the same account, a lower real
    /// limit), raises them when it keeps having more (our price above its count), and learns
    /// how the server counts tokens. `counted` = the server counted this
    /// request (false for a refusal).
    pub fn observe(&self, ticket: &Ticket<'_>, server: &ServerLimits, counted: bool) {
        if server.is_empty() {
            return;
        }
        let now = Instant::now();
        let burst = self.settings.burst_seconds;
        let sent_at = ticket.sent_at.unwrap_or(now);
        let mut guard = self.lock();
        let s = &mut *guard;
        // Refused while every figure it sent showed room for this call: its headers describe
        // more than it enforces (a minute described, a second enforced), and their room is
        // no reason to send more, from now on.
        let room = |remaining: Option<u64>, need: f64| remaining.is_none_or(|r| r as f64 >= need);
        if !counted
            && room(server.remaining_requests, 1.0)
            && room(server.remaining_tokens, ticket.tokens as f64)
        {
            for (bucket, reported) in [
                (&mut s.requests_per_minute, server.remaining_requests),
                (&mut s.tokens_per_minute, server.remaining_tokens),
            ] {
                if let Some(b) = bucket.as_mut().filter(|_| reported.is_some()) {
                    end_trial(&self.name, b, now);
                    if !b.headers_overstate {
                        b.headers_overstate = true;
                        tracing::info!(
                            "rate limit `{}`: a 429 while the provider's headers showed room for \
                             the call: they describe more than it enforces, so their room no \
                             longer raises ours",
                            self.name
                        );
                    }
                }
            }
        }
        if self.settings.reserve_max_tokens {
            learn_from_refusal(&self.name, &mut s.model, ticket, server, counted);
        }
        if self.settings.reserve_max_tokens
            && let (Some(limit), Some(remaining)) = (
                server
                    .limit_tokens
                    .or(s.tokens_per_minute.as_ref().map(|b| b.limit)),
                server.remaining_tokens,
            )
        {
            learn_from_snapshot(
                s,
                ticket,
                (sent_at, now),
                (limit, self.settings.burst_seconds),
                (remaining as f64, server.reset_tokens),
                counted,
            );
        }
        let unseen_requests = s.reserved_requests_total - ticket.requests_total_at;
        let unseen_tokens = s.reserved_tokens_total - ticket.tokens_total_at;
        let since = now.saturating_duration_since(sent_at);
        let name = self.name.clone();
        // What the server just counted beyond our window, trying its wider one.
        let taken = |i: usize| if counted { ticket.beyond[i] } else { 0.0 };
        let synced_requests = sync_bucket(
            &name,
            Dimension::Requests,
            &mut s.requests_per_minute,
            server.limit_requests,
            server.remaining_requests,
            server.reset_requests,
            unseen_requests,
            since,
            burst,
            // A request is one request: our price for it is never above the server's.
            false,
            Some(taken(0)),
            now,
        );
        // Only tokens are priced above the server's count (the learned margin), and only a
        // server that counts `max_tokens` on arrival has counted every call it answered: one
        // that counts the output as generated has a surplus promised to calls in flight.
        let synced_tokens = sync_bucket(
            &name,
            Dimension::Tokens,
            &mut s.tokens_per_minute,
            server.limit_tokens,
            server.remaining_tokens,
            server.reset_tokens,
            unseen_tokens,
            since,
            burst,
            self.settings.reserve_max_tokens,
            // Only a server that counts `max_tokens` on arrival has counted the calls it
            // answered; one that counts the output has room promised to calls in flight.
            self.settings.reserve_max_tokens.then(|| taken(1)),
            now,
        );
        if synced_tokens || synced_requests {
            s.synced_through = s.synced_through.max(ticket.seq);
        }
    }

    /// A 429 carrying the account's state: nobody sends until `wait` has passed. Callers
    /// already waiting move back by the pause (keeping their spacing); new ones queue behind
    /// them, and the exhausted dimension starts from empty after it.
    pub fn pause(&self, wait: Duration, which: Option<Dimension>) {
        let now = Instant::now();
        let until = now + wait;
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.paused_until.is_some_and(|p| p >= until) {
            // An earlier 429 already holds everyone at least that long.
            return;
        }
        // Only the part beyond an ongoing pause is new.
        let start = s.paused_until.filter(|p| *p > now).unwrap_or(now);
        s.paused_until = Some(until);
        s.pause_count += 1;
        s.pauses.push_back((s.pause_count, start, until));
        if s.pauses.len() > PAUSES_KEPT {
            s.pauses.pop_front();
        }
        let extra = until - start;
        let buckets = match which {
            Some(Dimension::Requests) => vec![&mut s.requests_per_minute],
            Some(Dimension::Tokens) => vec![&mut s.tokens_per_minute],
            None => vec![&mut s.requests_per_minute, &mut s.tokens_per_minute],
        };
        for bucket in buckets.into_iter().flatten() {
            end_trial(&self.name, bucket, now);
            // The level starts over: credit that was part of it is gone with it.
            bucket.wider.credit = 0.0;
            bucket.refill(now);
            // Empty now, and the pause's worth in debt: new reservations queue after it.
            bucket.level = bucket.level.min(0.0) - bucket.per_second * extra.as_secs_f64();
            // Deficits measured against the level before the pause say nothing any more.
            bucket.deficits.clear();
            bucket.surpluses.clear();
        }
        // The server's view (empty) is now our level: older reservations are reflected.
        s.synced_through = s.seq;
        tracing::debug!(limit = %self.name, "rate limit `{}` paused for {:.2}s after a 429", self.name, wait.as_secs_f64());
    }

    /// How long a 429 that says which dimension is spent (nothing left) but not
    /// `retry-after` pauses. The reset header says when the window is full again: a whole
    /// minute where the window is one and refills continuously (OpenAI's, Anthropic's), while
    /// what this call needs comes back in a fraction of a second at the rate. So where the
    /// reset is what a continuous bucket of the window learned would say, the pause lasts
    /// until the call's need has refilled. Anything else (a window that resets all at once at
    /// its end, a window never learned) waits for the reset.
    pub fn refill_time(
        &self,
        which: Option<Dimension>,
        reset: Duration,
        ticket: &Ticket<'_>,
    ) -> Duration {
        let s = self.lock();
        let (bucket, need) = match which {
            Some(Dimension::Requests) => (&s.requests_per_minute, 1.0),
            Some(Dimension::Tokens) => (&s.tokens_per_minute, ticket.tokens as f64),
            None => return reset,
        };
        let Some(b) = bucket.as_ref() else {
            return reset;
        };
        let refills_continuously = b.server_window.is_some_and(|window| {
            (reset.as_secs_f64() * b.per_second - window).abs() <= window * CONSISTENT_WINDOW
        });
        if refills_continuously {
            reset.min(Duration::from_secs_f64(need / b.per_second))
        } else {
            reset
        }
    }

    /// Current (requests, tokens) levels, for tests and metrics.
    pub fn levels(&self) -> (Option<f64>, Option<f64>) {
        let now = Instant::now();
        let mut s = self.lock();
        let level = |b: &mut Option<Bucket>| {
            b.as_mut().map(|b| {
                b.refill(now);
                b.level
            })
        };
        let requests = level(&mut s.requests_per_minute);
        let tokens = level(&mut s.tokens_per_minute);
        (requests, tokens)
    }

    /// Requests admitted so far (each attempt is one).
    pub fn admitted_requests(&self) -> u64 {
        self.lock().reserved_requests_total as u64
    }

    /// Limits in force per minute (configured or learned).
    pub fn per_minute(&self) -> (Option<u64>, Option<u64>) {
        let s = self.lock();
        (
            s.requests_per_minute.as_ref().map(|b| b.limit),
            s.tokens_per_minute.as_ref().map(|b| b.limit),
        )
    }

    /// Why calls wait, and until when, while a 429 pauses the limiter.
    pub fn paused_reason(&self) -> Option<(String, Instant)> {
        self.paused_until().map(|until| {
            (
                format!(
                    "rate limit `{}`: the provider answered 429 (limit reached)",
                    self.name
                ),
                until,
            )
        })
    }

    /// Until when the limiter is paused by a 429, if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        self.lock()
            .paused_until
            .filter(|until| *until > Instant::now())
    }
}

/// Ends trying a wider window on `b` after a 429 (see [`Wider`]), saying so once.
fn end_trial(name: &str, b: &mut Bucket, now: Instant) {
    if b.end_trial(now) {
        tracing::info!(
            "rate limit `{name}`: a 429 while trying the window of {:.0} the provider's \
             headers show: bursts stay within `burst_seconds` from now on",
            b.server_window.unwrap_or_default()
        );
    }
}

/// Compares this snapshot with the previous one: what the server's remaining tokens fell by
/// (plus its refill in between) is what it charged for the requests sent in between; minus
/// their `max_tokens`, that is their prompts as the server counts them.
fn learn_from_snapshot(
    s: &mut State,
    ticket: &Ticket<'_>,
    (sent_at, answered): (Instant, Instant),
    (limit, burst_seconds): (u64, f64),
    (remaining, reset): (f64, Option<Duration>),
    counted: bool,
) {
    let m = &mut s.model;
    let per_second = limit as f64 / 60.0;
    m.answers_show_window |= counted;
    m.max_remaining = m.max_remaining.max(remaining);
    if let Some(reset) = reset {
        let full = remaining + reset.as_secs_f64() * per_second;
        m.capacity = Some(m.capacity.map_or(full, |c| c.max(full)));
    }
    // A window reported full (as its reset header sizes it) with this call just counted: the
    // server took the snapshot when it answered, and its window refilled past the call while
    // the answer was generated (a snapshot taken on arrival is below full by the call). Such a
    // snapshot hides what the call was charged.
    let reported_full = m.capacity.is_some_and(|c| remaining + 1.0 >= c);
    if counted && reported_full && !m.snapshot_when_answered {
        m.snapshot_when_answered = true;
        // What the pairs so far taught was read as taken on arrival.
        (m.header_charge, m.header_estimate, m.header_samples) = (0.0, 0.0, 0);
        tracing::debug!("the provider's rate-limit headers are taken when it answers");
    }
    // Only a call that waited its turn at the rate reached the server in the order of the
    // reservations, so that its snapshot marks where our count stands. One that went at once
    // (room in the bucket: the burst) may have overtaken calls reserved before it, and so may
    // the burst released at the first answer have overtaken the calls paced before it.
    if !ticket.in_turn {
        return;
    }
    let sample = Snapshot {
        seq: ticket.seq,
        at: sent_at,
        answered,
        remaining,
        prompt_through: ticket.prompt_through,
        fixed_through: ticket.fixed_through,
    };
    let Some(last) = m.last else {
        m.last = Some(sample);
        return;
    };
    if sample.seq <= last.seq || sample.at <= last.at {
        // Answered out of order, or sent out of order (a later reservation can go first: one
        // priced after tokens came back, or one made after a pause moved the others back):
        // the base that went last is the better one for the next pair.
        return;
    }
    m.last = Some(sample);
    if reported_full {
        return;
    }
    // The server's window stops refilling when full. Its size is what its reset header
    // implies, else the configured burst (what `burst_seconds` says about the provider), or
    // more if it reported more left.
    let capacity = m
        .capacity
        .unwrap_or_else(|| (per_second * burst_seconds).max(m.max_remaining));
    // The server's bucket stops at its window. With this request the only one the server
    // counted in between, refill lost at the window only ever came before it arrived, and
    // `min` with the window is exact. With others before it, the bucket may have been full
    // before those too, and lost refill that the sum puts after them: such a pair would teach
    // a price below the real one. It is left out when the bucket may have filled (the refill
    // alone would have filled it). A window of a second at the rate holds a dozen calls and
    // seldom fills; one that holds a call or two fills between most pairs, and pricing from
    // them sent calls faster than the server refills, into 429s.
    let uncounted_between = m
        .refused
        .iter()
        .filter(|(seq, _, _)| *seq > last.seq && *seq < sample.seq)
        .count() as u64;
    let counted_between = (sample.seq - last.seq - 1).saturating_sub(uncounted_between);
    // Where refill alone would have taken the window by the time this call arrived, and
    // what it refilled after that until the snapshot: snapshots taken on arrival are a send
    // apart, those taken when answering are an answer apart, and the refill while this call
    // was answered comes after the window's cap (a window full on arrival refilled from the
    // call's charge, not from full).
    let (last_at, refilled_after) = if m.snapshot_when_answered {
        let answering = answered.saturating_duration_since(sent_at).as_secs_f64();
        (last.answered, per_second * answering)
    } else {
        (last.at, 0.0)
    };
    let on_arrival = last.remaining + per_second * seconds_between(last_at, sample.at);
    if counted_between > 0 && on_arrival > capacity {
        return;
    }
    let before = on_arrival.min(capacity) + refilled_after;
    // Sent in between but not counted by the server: refused, or cancelled before sending
    // (and this request itself, when it was refused).
    let (mut refused_prompt, mut refused_fixed) = m
        .refused
        .iter()
        .filter(|(seq, _, _)| *seq > last.seq && *seq < sample.seq)
        .fold((0.0, 0.0), |(p, f), (_, prompt, fixed)| {
            (p + prompt, f + fixed)
        });
    if !counted {
        refused_prompt += ticket.prompt;
        refused_fixed += ticket.fixed;
    }
    let estimate = sample.prompt_through - last.prompt_through - refused_prompt;
    let fixed = sample.fixed_through - last.fixed_through - refused_fixed;
    if estimate < 1.0 {
        return;
    }
    // Not clamped at 0: a pair's error (a call counted in the next pair instead) cancels in
    // the sums only if it is kept whole.
    let charged = before - sample.remaining - fixed;
    TokenModel::add(
        &mut m.header_charge,
        &mut m.header_estimate,
        &mut m.header_samples,
        charged,
        estimate,
    );
}

/// A 429 that says what the server counted the refused call as (its token limit refused it):
/// that, less `max_tokens`, is the server's count of the prompt we estimated.
fn learn_from_refusal(
    name: &str,
    m: &mut TokenModel,
    ticket: &Ticket<'_>,
    server: &ServerLimits,
    counted: bool,
) {
    let Some(requested) = server.requested_tokens.filter(|_| !counted) else {
        return;
    };
    let charge = requested as f64 - ticket.fixed;
    if ticket.prompt < 1.0 || charge < 0.0 {
        return;
    }
    TokenModel::add(
        &mut m.said_charge,
        &mut m.said_estimate,
        &mut m.said_samples,
        charge,
        ticket.prompt,
    );
    if m.said_samples == 1 {
        tracing::info!(
            "rate limit `{name}`: a 429 says the provider counts {:.2} tokens per token of our \
             prompt estimate (the price where its headers, taken when it answers, cannot show \
             its count)",
            charge / ticket.prompt
        );
    }
}

/// `to - from` in seconds, negative when `to` is earlier.
fn seconds_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64()
    } else {
        -(from - to).as_secs_f64()
    }
}

impl Ticket<'_> {
    /// When this request may go, if nothing else happens.
    pub fn release(&self) -> Instant {
        self.release
    }

    /// Why this request waits beyond the normal spacing, and until when: a 429 pause or a
    /// spent daily quota. `None` for ordinary pacing.
    pub fn pause_reason(&self) -> Option<(String, Instant)> {
        let now = Instant::now();
        let limiter = self.limiter;
        if let Some(paused) = limiter.paused_reason() {
            return Some(paused);
        }
        let s = limiter.lock();
        let day_opens = [
            (&s.requests_per_day, self.request_window, "requests"),
            (&s.tokens_per_day, self.token_window, "tokens"),
        ]
        .into_iter()
        .filter_map(|(day, window, what)| {
            let day = day.as_ref()?;
            let window = window?;
            (window > day.index(now)).then(|| (day.start(window), day.limit, what))
        })
        .max_by_key(|(opens, _, _)| *opens);
        day_opens.map(|(opens, limit, what)| {
            (
                format!(
                    "daily limit `{}` spent ({limit} {what} per day); it resets at midnight UTC",
                    limiter.name
                ),
                opens,
            )
        })
    }

    /// Sleeps until the request may go: its turn at the rate, moved back by any 429 pause
    /// that came after the reservation. Marks the reservation as sent.
    pub async fn ready(&mut self) {
        let limiter = self.limiter;
        loop {
            tokio::time::sleep_until(self.release).await;
            let s = limiter.lock();
            let mut moved = false;
            for (number, start, end) in &s.pauses {
                if *number > self.pauses_seen {
                    // Those waiting when the pause began move back by its length; those who
                    // were due before it go right after it, in their order — back to back,
                    // so they reach the server in any order, like a burst.
                    if self.release < *start {
                        self.in_turn = false;
                    }
                    self.release = self.release.max(*start) + (*end - *start);
                    moved = true;
                }
            }
            self.pauses_seen = s.pause_count;
            drop(s);
            if !moved || self.release <= Instant::now() {
                break;
            }
        }
        self.sent_at = Some(Instant::now());
    }

    /// The sequence number of the reservation (order of arrival).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let sent = self.sent_at.is_some();
        if sent && self.beyond == [0.0; 2] {
            return;
        }
        let now = Instant::now();
        let mut guard = self.limiter.lock();
        let s = &mut *guard;
        for (bucket, beyond) in [&mut s.requests_per_minute, &mut s.tokens_per_minute]
            .into_iter()
            .zip(self.beyond)
        {
            if let Some(b) = bucket.as_mut().filter(|_| beyond > 0.0) {
                if sent {
                    // Answered (and counted in `proven` then) or not: no longer on its way.
                    b.wider.outstanding = (b.wider.outstanding - beyond).max(0.0);
                    b.fit(now);
                } else {
                    b.wider.credit += beyond;
                }
            }
        }
        if sent {
            return;
        }
        // Cancelled before it was sent: nothing reached the server, everything comes back.
        if let Some(b) = s.requests_per_minute.as_mut() {
            b.give_back(1.0, now);
        }
        if let Some(b) = s.tokens_per_minute.as_mut() {
            b.give_back(self.tokens as f64, now);
        }
        if let (Some(day), Some(window)) = (s.requests_per_day.as_mut(), self.request_window) {
            day.give_back(window, 1.0);
        }
        if let (Some(day), Some(window)) = (s.tokens_per_day.as_mut(), self.token_window) {
            day.give_back(window, self.tokens as f64);
        }
        s.reserved_requests_total -= 1.0;
        s.reserved_tokens_total -= self.tokens as f64;
        s.model
            .refused
            .push_back((self.seq, self.prompt, self.fixed));
        if s.model.refused.len() > REFUSALS_KEPT {
            s.model.refused.pop_front();
        }
    }
}

/// Returns whether the level was moved to the server's view.
#[allow(clippy::too_many_arguments)]
fn sync_bucket(
    name: &str,
    dimension: Dimension,
    bucket: &mut Option<Bucket>,
    server_limit: Option<u64>,
    server_remaining: Option<u64>,
    server_reset: Option<Duration>,
    unseen: f64,
    since: Duration,
    burst_seconds: f64,
    may_raise: bool,
    widen_by_taken: Option<f64>,
    now: Instant,
) -> bool {
    let what = match dimension {
        Dimension::Requests => "requests",
        Dimension::Tokens => "tokens",
    };
    if let Some(limit) = server_limit.filter(|l| *l > 0) {
        match bucket {
            None => {
                tracing::info!(
                    "rate limit `{name}`: learned {limit} {what}/min from the provider's headers"
                );
                let mut learned =
                    Bucket::new(limit, burst_seconds, dimension == Dimension::Requests, now);
                learned.learned = true;
                *bucket = Some(learned);
            }
            Some(b) if limit < b.limit => {
                tracing::warn!(
                    "rate limit `{name}`: the provider allows {limit} {what}/min, fewer than the \
                     {} configured; using {limit}",
                    b.limit
                );
                b.refill(now);
                let fresh = Bucket::new(limit, burst_seconds, b.whole_units, now);
                b.limit = limit;
                b.per_second = fresh.per_second;
                b.configured_window = fresh.configured_window;
                b.fit(now);
            }
            _ => {}
        }
    }
    let (Some(b), Some(remaining)) = (bucket.as_mut(), server_remaining) else {
        return false;
    };
    if let Some(reset) = server_reset {
        // The provider's rate, if it says, may be above ours (a limit set below the account's).
        let per_second = server_limit.map_or(b.per_second, |l| l as f64 / 60.0);
        if b.learn_window(remaining as f64, reset, per_second, now) {
            let window = b.window();
            let spaced = if b.spacing > 1.0 {
                format!(
                    ", and calls go one at a time, {:.0} % below the rate, so that jitter on \
                     the way does not meet a 429",
                    100.0 * (1.0 - 1.0 / b.spacing)
                )
            } else {
                String::new()
            };
            tracing::info!(
                "rate limit `{name}`: the provider's reset headers show a window of {window:.1} \
                 {what} ({:.2}s of its rate), shorter than `burst_seconds` ({burst_seconds}s): \
                 bursts are kept to {:.1}{spaced}",
                window / per_second,
                b.capacity,
            );
        }
    }
    // What the server had left when it answered, carried forward to now: refilled since, and
    // minus what we reserved after this call (which the server had not seen yet).
    b.refill(now);
    let implied_before_unseen = remaining as f64 + since.as_secs_f64() * b.per_second;
    let implied = implied_before_unseen - unseen;
    // Lower at once, raise only past a cushion (`raise_to_server`): a higher server figure
    // may be a wider window than ours, or a snapshot that missed calls on their way. A bucket
    // just learned from these headers takes the server's word at once; otherwise one snapshot
    // is not enough: a call that reached the server late (a new connection, a busy machine)
    // was overtaken by calls sent after it, which the server counted and `unseen` counts
    // again, so it alone says the server has less than it has. Lowering on it would lose that
    // throughput for good. Someone else spending the account shows in every snapshot: lower
    // when the last few all say so, by the least they say.
    let deficit = b.level - implied;
    if b.learned && b.deficits.is_empty() && deficit > 1.0 {
        b.level = implied;
        b.deficits.push_back(0.0);
        return true;
    }
    b.deficits.push_back(deficit);
    if b.deficits.len() > DEFICIT_CONFIRMATIONS {
        b.deficits.pop_front();
    }
    let confirmed =
        b.deficits.len() == DEFICIT_CONFIRMATIONS && b.deficits.iter().all(|d| *d > 1.0);
    if confirmed {
        let by = b.deficits.iter().copied().fold(f64::INFINITY, f64::min);
        tracing::debug!(limit = %name, what, by, "lowered to the server's level");
        b.level -= by;
        b.wider.credit = (b.wider.credit - by).max(0.0);
        for d in b.deficits.iter_mut() {
            *d -= by;
        }
        b.surpluses.clear();
        return true;
    }
    // Trying a wider window the server's headers show (see [`Wider`]): unless a lower limit
    // was set than the account's (the user's choice). Our cushion is our own window.
    let own_limit = server_limit.is_none_or(|l| l == b.limit);
    let may_raise = may_raise && server_limit == Some(b.limit) && !b.headers_overstate;
    if let (Some(taken), Some(wider), true) = (widen_by_taken, b.wider_window(), own_limit) {
        let room = implied_before_unseen.min(wider) - unseen - b.configured_window;
        if b.widen(room, taken, now) {
            tracing::info!(
                "rate limit `{name}`: the provider's reset headers show a window of \
                 {wider:.0} {what} ({:.0}s of its rate), wider than `burst_seconds` \
                 ({burst_seconds}s): trying it, doubling each round trip; the first 429 ends \
                 the trial",
                wider / b.per_second
            );
        }
        // Past the trial's steps, the margin's surplus comes back as below, our cushion
        // being our own window.
        return may_raise && raise_to_server(name, what, b, room - b.level, now);
    }
    if may_raise {
        // The server's window stops at its capacity: refill we add past it never happened.
        let server_capacity = b.window();
        let hold_back = server_capacity - b.capacity;
        let implied = implied_before_unseen.min(server_capacity) - unseen;
        return raise_to_server(name, what, b, implied - hold_back - b.level, now);
    }
    false
}

/// The other half of `sync_bucket`: the server has had more left than our level plus the
/// cushion we keep (the share of its burst we hold back, see [`BURST_SHARE`], or our own
/// window while trying a wider one) — `surplus` — in each of the last few snapshots. Our
/// price runs above its count (the learned margin, a ratio learned high), and without this
/// the margin would cost its share of the limit for the whole run: take the surplus back, by
/// the least the snapshots say and no faster than [`RAISE_SHARE`] of the refill, keeping the
/// cushion for calls that reach the server out of step. Never above our capacity. Callers ask
/// this only when our limit is the server's (a limit set below the account's is the user's
/// choice) and the server's count is final when it answers.
fn raise_to_server(name: &str, what: &str, b: &mut Bucket, surplus: f64, now: Instant) -> bool {
    let allowed = RAISE_SHARE
        * b.per_second
        * now
            .saturating_duration_since(b.surplus_seen_at)
            .as_secs_f64();
    b.surplus_seen_at = now;
    b.surpluses.push_back(surplus);
    if b.surpluses.len() > DEFICIT_CONFIRMATIONS {
        b.surpluses.pop_front();
    }
    let full = b.surpluses.len() == DEFICIT_CONFIRMATIONS;
    let change = if full && b.surpluses.iter().all(|s| *s > 1.0) {
        let by = b
            .surpluses
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(allowed);
        (b.level + by).min(b.capacity) - b.level
    } else if full && b.raised > 0.0 && b.surpluses.iter().all(|s| *s < -1.0) {
        // The cushion is being eaten (snapshots that raised us too far, a ratio that fell):
        // give back what was raised, before it comes to a 429.
        let by = b
            .surpluses
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        by.max(-b.raised)
    } else {
        0.0
    };
    if change.abs() < f64::EPSILON {
        return false;
    }
    b.level += change;
    b.raised += change;
    tracing::trace!(limit = %name, what, by = change, "moved towards the server's level");
    for s in b.surpluses.iter_mut() {
        *s -= change;
    }
    true
}

#[cfg(test)]
mod tests;
