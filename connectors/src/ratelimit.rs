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
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RateLimitSnapshot::default()
    }
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
