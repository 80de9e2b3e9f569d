//! Reading the rate-limit state providers put in response headers, so a limiter can re-sync
//! to the server's view instead of guessing. Header lookup is a closure, so this works with any
//! HTTP client's header map.

use std::time::{Duration, SystemTime};

/// What the provider said about one limit dimension pair (requests and tokens).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimitSnapshot {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
    /// The per-minute limit a 429's message says refused the call (see [`RateLimitMessage`]).
    pub refused_by: Option<LimitKind>,
    /// What the provider counted the refused call as, in tokens, when its token limit
    /// refused it (the message's "Requested").
    pub requested_tokens: Option<u64>,
}

/// Requests or tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl RateLimitSnapshot {
    /// OpenAI style: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as
    /// durations ("1s", "6m0s", "120ms").
    pub fn from_openai<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let num = |name: &str| header(name).and_then(|v| v.trim().parse().ok());
        let dur = |name: &str| header(name).and_then(parse_duration);
        RateLimitSnapshot {
            limit_requests: num("x-ratelimit-limit-requests"),
            remaining_requests: num("x-ratelimit-remaining-requests"),
            reset_requests: dur("x-ratelimit-reset-requests"),
            limit_tokens: num("x-ratelimit-limit-tokens"),
            remaining_tokens: num("x-ratelimit-remaining-tokens"),
            reset_tokens: dur("x-ratelimit-reset-tokens"),
            refused_by: None,
            requested_tokens: None,
        }
    }

    /// Anthropic style: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets
    /// as RFC 3339 instants (turned into durations from `now`).
    pub fn from_anthropic<'a>(header: impl Fn(&str) -> Option<&'a str>, now: SystemTime) -> Self {
        let num = |name: &str| header(name).and_then(|v| v.trim().parse().ok());
        let until = |name: &str| {
            let at = chrono::DateTime::parse_from_rfc3339(header(name)?.trim()).ok()?;
            let at: SystemTime = at.with_timezone(&chrono::Utc).into();
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        };
        RateLimitSnapshot {
            limit_requests: num("anthropic-ratelimit-requests-limit"),
            remaining_requests: num("anthropic-ratelimit-requests-remaining"),
            reset_requests: until("anthropic-ratelimit-requests-reset"),
            limit_tokens: num("anthropic-ratelimit-tokens-limit"),
            remaining_tokens: num("anthropic-ratelimit-tokens-remaining"),
            reset_tokens: until("anthropic-ratelimit-tokens-reset"),
            refused_by: None,
            requested_tokens: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RateLimitSnapshot::default()
    }

    /// Adds what a 429's message says: which per-minute limit refused the call, what the
    /// provider counted it as (a token limit's "Requested") and, where the headers said
    /// nothing of that limit, the limit and what is left of it.
    pub fn add_message(&mut self, message: &RateLimitMessage) {
        let Some((kind, Period::Minute)) = message.limit else {
            return;
        };
        self.refused_by = Some(kind);
        if kind == LimitKind::Tokens {
            self.requested_tokens = message.requested;
        }
        let (limit, remaining) = match kind {
            LimitKind::Requests => (&mut self.limit_requests, &mut self.remaining_requests),
            LimitKind::Tokens => (&mut self.limit_tokens, &mut self.remaining_tokens),
        };
        if limit.is_none() && remaining.is_none() {
            *limit = message.limit_value;
            *remaining = message
                .limit_value
                .zip(message.used)
                .map(|(limit, used)| limit.saturating_sub(used));
        }
    }
}

/// Per minute or per day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Minute,
    Day,
}

/// What OpenAI's 429 message says, in words its headers may not carry (OpenAI-compatible
/// servers often send the message without the headers, and OpenAI itself sends no
/// `retry-after`): "Rate limit reached for gpt-4o in organization org-… on tokens per min
/// (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1.2s." Groq says "per
/// minute", Azure "Please retry after 6 seconds".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimitMessage {
    /// Which limit refused the call.
    pub limit: Option<(LimitKind, Period)>,
    /// Its size, what the provider counts used of it, and what it counted for this call.
    pub limit_value: Option<u64>,
    pub used: Option<u64>,
    pub requested: Option<u64>,
    /// How long the provider says to wait.
    pub try_again_in: Option<Duration>,
}

impl RateLimitMessage {
    pub fn parse(message: &str) -> RateLimitMessage {
        let lower = message.to_ascii_lowercase();
        let limit = [
            (
                "requests per min",
                "(rpm)",
                LimitKind::Requests,
                Period::Minute,
            ),
            ("tokens per min", "(tpm)", LimitKind::Tokens, Period::Minute),
            (
                "requests per day",
                "(rpd)",
                LimitKind::Requests,
                Period::Day,
            ),
            ("tokens per day", "(tpd)", LimitKind::Tokens, Period::Day),
        ]
        .into_iter()
        .find(|(words, short, _, _)| lower.contains(words) || lower.contains(short))
        .map(|(_, _, kind, period)| (kind, period));
        let try_again_in = after(&lower, "try again in ")
            .and_then(|rest| parse_duration(first_word(rest).trim_end_matches(['.', ','])))
            .or_else(|| {
                let rest = after(&lower, "retry after ")?;
                let secs: f64 = first_word(rest).parse().ok()?;
                let unit = rest.split_whitespace().nth(1)?;
                (unit.starts_with("second") && secs.is_finite() && secs >= 0.0)
                    .then(|| Duration::from_secs_f64(secs))
            });
        RateLimitMessage {
            limit,
            limit_value: number_after(&lower, "limit"),
            used: number_after(&lower, "used"),
            requested: number_after(&lower, "requested"),
            try_again_in,
        }
    }
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|at| &text[at + marker.len()..])
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or_default()
}

/// The number right after `word` followed by a space or ": " ("Limit 30000", "Limit: 3").
fn number_after(text: &str, word: &str) -> Option<u64> {
    text.match_indices(word).find_map(|(at, _)| {
        let rest = text[at + word.len()..]
            .strip_prefix(':')
            .unwrap_or(&text[at + word.len()..]);
        let rest = rest.strip_prefix(' ')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// How long the server asked us to wait: `retry-after-ms`, else `retry-after` as seconds or as
/// an HTTP date.
pub fn retry_after<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Go-style durations as OpenAI sends them: "1s", "6m0s", "120ms", "1h2m3.5s", "20us".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(
            parse_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_duration("20us"), Some(Duration::from_micros(20)));
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-reset-requests", "12ms"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-tokens", "1999000"),
            ("x-ratelimit-reset-tokens", "30ms"),
        ]);
        let s = RateLimitSnapshot::from_openai(|k| h.get(k).copied());
        assert_eq!(s.limit_requests, Some(5000));
        assert_eq!(s.remaining_tokens, Some(1_999_000));
        assert_eq!(s.reset_requests, Some(Duration::from_millis(12)));
        assert_eq!(s.reset_tokens, Some(Duration::from_millis(30)));
        assert!(RateLimitSnapshot::from_openai(|_| None).is_empty());
    }

    #[test]
    fn anthropic_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let reset =
            chrono::DateTime::<chrono::Utc>::from(now + Duration::from_secs(7)).to_rfc3339();
        let reset: &'static str = Box::leak(reset.into_boxed_str());
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", reset),
        ]);
        let s = RateLimitSnapshot::from_anthropic(|k| h.get(k).copied(), now);
        assert_eq!(s.limit_requests, Some(50));
        assert_eq!(s.remaining_requests, Some(0));
        assert_eq!(s.reset_requests, Some(Duration::from_secs(7)));
        assert_eq!(s.limit_tokens, None);
    }

    #[test]
    fn openai_rate_limit_messages() {
        let tpm = RateLimitMessage::parse(
            "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): \
             Limit 30000, Used 29000, Requested 1500. Please try again in 1.2s. Visit \
             https://platform.openai.com/account/rate-limits to learn more.",
        );
        assert_eq!(
            tpm,
            RateLimitMessage {
                limit: Some((LimitKind::Tokens, Period::Minute)),
                limit_value: Some(30_000),
                used: Some(29_000),
                requested: Some(1_500),
                try_again_in: Some(Duration::from_millis(1200)),
            }
        );
        let rpm = RateLimitMessage::parse(
            "Rate limit reached for default-gpt-3.5-turbo in organization org-abc on requests \
             per min. Limit: 3 / min. Please try again in 20s. Contact us through our help \
             center at help.openai.com if you continue to have issues.",
        );
        assert_eq!(rpm.limit, Some((LimitKind::Requests, Period::Minute)));
        assert_eq!(rpm.limit_value, Some(3));
        assert_eq!(rpm.used, None);
        assert_eq!(rpm.try_again_in, Some(Duration::from_secs(20)));
        let day = RateLimitMessage::parse(
            "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per day \
             (TPD): Limit 2000000, Used 1999000, Requested 1800. Please try again in 16m40s.",
        );
        assert_eq!(day.limit, Some((LimitKind::Tokens, Period::Day)));
        assert_eq!(day.try_again_in, Some(Duration::from_secs(1000)));
        let groq = RateLimitMessage::parse(
            "Rate limit reached for model `llama3-70b-8192` in organization `org_x` service \
             tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 5421, Requested \
             1122. Please try again in 5.43s.",
        );
        assert_eq!(groq.limit, Some((LimitKind::Tokens, Period::Minute)));
        assert_eq!(groq.requested, Some(1122));
        assert_eq!(groq.try_again_in, Some(Duration::from_millis(5430)));
        let azure = RateLimitMessage::parse(
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version \
             2024-02-01 have exceeded token rate limit of your current OpenAI S0 pricing tier. \
             Please retry after 6 seconds.",
        );
        assert_eq!(azure.try_again_in, Some(Duration::from_secs(6)));
        assert_eq!(azure.limit, None);
        assert_eq!(
            RateLimitMessage::parse("The server is overloaded or not ready yet."),
            RateLimitMessage::default()
        );
    }

    #[test]
    fn a_message_names_the_limit_and_fills_what_headers_did_not_say() {
        let tpm = RateLimitMessage::parse(
            "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, \
             Requested 1500. Please try again in 1.2s.",
        );
        let mut bare = RateLimitSnapshot::default();
        bare.add_message(&tpm);
        assert_eq!(bare.refused_by, Some(LimitKind::Tokens));
        assert_eq!(bare.requested_tokens, Some(1_500));
        assert_eq!(bare.limit_tokens, Some(30_000));
        assert_eq!(bare.remaining_tokens, Some(1_000));
        assert_eq!(bare.limit_requests, None);
        // The headers' own figures stand.
        let mut told = RateLimitSnapshot {
            limit_tokens: Some(30_000),
            remaining_tokens: Some(25_000),
            ..Default::default()
        };
        told.add_message(&tpm);
        assert_eq!(told.remaining_tokens, Some(25_000));
        assert_eq!(told.refused_by, Some(LimitKind::Tokens));
        // A day's limit is not a minute's.
        let mut day = RateLimitSnapshot::default();
        day.add_message(&RateLimitMessage::parse(
            "Rate limit reached on tokens per day (TPD): Limit 90000, Used 90000, Requested 9.",
        ));
        assert!(day.is_empty());
        let mut rpm = RateLimitSnapshot::default();
        rpm.add_message(&RateLimitMessage::parse(
            "Rate limit reached on requests per min (RPM): Limit 3, Used 3, Requested 1.",
        ));
        assert_eq!(rpm.refused_by, Some(LimitKind::Requests));
        // "Requested 1" is a request, not tokens.
        assert_eq!(rpm.requested_tokens, None);
        assert_eq!(rpm.limit_requests, Some(3));
        assert_eq!(rpm.remaining_requests, Some(0));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(
            retry_after(|k| ms.get(k).copied(), now),
            Some(Duration::from_millis(1500))
        );
        let secs = headers(&[("retry-after", "2")]);
        assert_eq!(
            retry_after(|k| secs.get(k).copied(), now),
            Some(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let date: &'static str = Box::leak(date.into_boxed_str());
        let dated = headers(&[("retry-after", date)]);
        assert_eq!(
            retry_after(|k| dated.get(k).copied(), now),
            Some(Duration::from_secs(30))
        );
        let bad = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(|k| bad.get(k).copied(), now), None);
        assert_eq!(retry_after(|_| None, now), None);
    }
}
