//! Retry policy: which outcomes are retried, how long to wait, and how many retries the
//! upstreams can take.
//!
//! - [`Backoff`]: exponential backoff with full jitter: the n-th retry waits a uniformly
//!   random time in `[0, min(cap, base * 2^(n-1))]`, so clients that failed together do not
//!   come back together.
//! - [`retry_after`]: the wait an upstream asked for, from `retry-after-ms` or `Retry-After`
//!   (delay-seconds or an HTTP-date). [`RetryPolicy::decide`] honours it up to the cap.
//! - [`RetryBudget`]: retries may add at most a fraction of the requests of the last
//!   [`BUDGET_WINDOW_SECS`] seconds, plus a small floor, so a struggling upstream does not face
//!   a retry storm.
//! - [`RetryPolicy::decide`]: the one retry decision. Given how an attempt failed, it says
//!   whether another attempt follows and after how long.
//!
//! # The rules [`RetryPolicy::decide`] applies
//! - Eligible failures: a connect failure (when `retry.on_connect_error`), a reused keep-alive
//!   connection that failed before any response (the upstream closed it as the request went
//!   out, so it never processed it), and a response status in `retry.on_status`. Nothing else:
//!   a fresh connection that fails after the request went out, or a response-head timeout, may
//!   have been processed.
//! - The request body must be whole in hand (or untouched), attempts must be left
//!   (`retry.max_attempts` in all), the proxy must not be draining, and the retry budget must
//!   allow it.
//! - The wait is the jittered backoff, or the upstream's `Retry-After` (`retry-after-ms`)
//!   when it asked for longer: never shorter than the upstream asked. A `Retry-After` longer
//!   than `retry.cap`, or one that would end past the deadline, means no retry: the upstream's
//!   answer goes to the client as it is, with its `Retry-After`.
//! - The wait must end before the exchange's retry deadline (`retry.deadline`).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Backoff starting at `base` for the first retry, doubling each retry, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The cap: the longest any retry waits, server hints included.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The upper bound of the wait before retry number `retry` (1 = first retry; 0 is taken
    /// as 1): `min(cap, base * 2^(retry-1))`, saturating at `cap`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.max(1) - 1;
        2u32.checked_pow(exponent)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The wait before retry number `retry` (1 = first retry): uniformly random in
    /// `[0, ceiling(retry)]` ("full jitter").
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// How an upstream attempt failed, as far as a retry is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connecting (or the TLS handshake) failed: the upstream never saw the request.
    Connect,
    /// A reused keep-alive connection failed before any response: the upstream was closing
    /// it as the request went out and never processed the request.
    StaleConnection,
    /// The upstream answered with this status; nothing of it went to the client yet.
    Status(u16),
    /// Anything else: the request may have been processed, or retrying cannot help.
    Final,
}

/// One failed attempt, as [`RetryPolicy::decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The request body is untouched or held whole, so another attempt can send all of it.
    pub replayable: bool,
    /// The wait the upstream asked for ([`retry_after`]), if it asked.
    pub retry_after: Option<Duration>,
}

/// The retry policy of a proxy: attempts, eligible failures, backoff and budget.
#[derive(Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    on_connect_error: bool,
    on_status: Vec<u16>,
    backoff: Backoff,
    budget: RetryBudget,
    draining: CancellationToken,
}

impl RetryPolicy {
    /// The policy the configuration describes. No retry is decided once `draining` is
    /// cancelled.
    pub fn from_config(cfg: &RetryConfig, draining: CancellationToken) -> Self {
        RetryPolicy {
            max_attempts: cfg.max_attempts.max(1),
            on_connect_error: cfg.on_connect_error,
            on_status: cfg.on_status.clone(),
            backoff: Backoff::new(cfg.base, cfg.cap),
            budget: RetryBudget::from_config(cfg),
            draining,
        }
    }

    /// Whether responses with `status` are retried (`retry.on_status`).
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }

    /// Count one client request (its retries draw on the budget this fills).
    pub fn on_request(&self) {
        self.budget.on_request();
    }

    /// Whether attempt number `attempt` (1 = the first) that failed as `failure` is followed
    /// by another, and after how long. `deadline` is when the exchange's attempts must be
    /// over. A `Some` has taken one retry from the budget. See the module docs for the rules.
    pub fn decide(&self, failure: &Failure, attempt: u32, deadline: Instant) -> Option<Duration> {
        self.decide_at(failure, attempt, deadline, Instant::now())
    }

    /// [`RetryPolicy::decide`] at a given time.
    pub fn decide_at(
        &self,
        failure: &Failure,
        attempt: u32,
        deadline: Instant,
        now: Instant,
    ) -> Option<Duration> {
        let eligible = match failure.kind {
            FailureKind::Connect => self.on_connect_error,
            FailureKind::StaleConnection => true,
            FailureKind::Status(status) => self.on_status.contains(&status),
            FailureKind::Final => false,
        };
        if !eligible
            || !failure.replayable
            || attempt >= self.max_attempts
            || self.draining.is_cancelled()
        {
            return None;
        }
        let backoff = self.backoff.delay(attempt);
        let delay = match failure.retry_after {
            Some(asked) if asked > self.backoff.cap() => return None,
            Some(asked) => asked.max(backoff),
            None => backoff,
        };
        if now + delay >= deadline || !self.budget.try_withdraw_at(now) {
            return None;
        }
        Some(delay)
    }
}

/// The wait an upstream asked for in its response headers, if it asked.
///
/// `headers` yields `(name, value)` pairs; names match case-insensitively. Understood, in
/// this order of preference:
/// - `retry-after-ms: <milliseconds>` (digits, optionally with a decimal fraction), as sent
///   by OpenAI-compatible APIs;
/// - `Retry-After: <delay-seconds>` (digits only);
/// - `Retry-After: <HTTP-date>` in IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) or either
///   obsolete form (RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`, asctime
///   `Sun Nov  6 08:49:37 1994`), relative to `now`; a date in the past means no wait.
///
/// Values that do not parse are ignored (the next candidate is tried). Huge values saturate
/// rather than wrap; the caller caps the wait.
pub fn retry_after<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    now: SystemTime,
) -> Option<Duration> {
    let mut seconds_or_date = None;
    for (name, value) in headers {
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"retry-after-ms") {
            if let Some(wait) = parse_millis(value) {
                return Some(wait);
            }
        } else if seconds_or_date.is_none() && name.eq_ignore_ascii_case(b"retry-after") {
            seconds_or_date = parse_seconds(value).or_else(|| {
                parse_http_date(value, now)
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
            });
        }
    }
    seconds_or_date
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, saturating.
fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn parse_seconds(v: &[u8]) -> Option<Duration> {
    parse_digits(v).map(Duration::from_secs)
}

/// `1*DIGIT [ "." 1*DIGIT ]` milliseconds; fraction digits past the nanosecond are ignored.
fn parse_millis(v: &[u8]) -> Option<Duration> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], Some(&v[dot + 1..])),
        None => (v, None),
    };
    let millis = parse_digits(int)?;
    let mut nanos = 0u32;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Six fraction digits of a millisecond are nanoseconds.
        let mut scale = 100_000u32;
        for &d in frac.iter().take(6) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
        }
    }
    Some(Duration::from_millis(millis).saturating_add(Duration::from_nanos(u64::from(nanos))))
}

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A little reader over the bytes of a date.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(lit)?;
        Some(())
    }

    /// Exactly `n` digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        if self.rest.len() < n {
            return None;
        }
        let (digits, rest) = self.rest.split_at(n);
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.rest = rest;
        Some(
            digits
                .iter()
                .fold(0u32, |v, &d| v * 10 + u32::from(d - b'0')),
        )
    }

    /// One of `names`, matched case-sensitively (RFC 9110 §5.6.7).
    fn one_of(&mut self, names: &[&[u8]]) -> Option<usize> {
        let i = names.iter().position(|n| self.rest.starts_with(n))?;
        self.rest = &self.rest[names[i].len()..];
        Some(i)
    }

    /// `hour ":" minute ":" second`.
    fn time_of_day(&mut self) -> Option<(u32, u32, u32)> {
        let h = self.digits(2)?;
        self.literal(b":")?;
        let m = self.digits(2)?;
        self.literal(b":")?;
        let s = self.digits(2)?;
        Some((h, m, s))
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

/// Parse an HTTP-date (RFC 9110 §5.6.7) in any of its three forms.
fn parse_http_date(v: &[u8], now: SystemTime) -> Option<SystemTime> {
    imf_fixdate(v)
        .or_else(|| rfc850_date(v, year_of(now)))
        .or_else(|| asctime_date(v))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(v: &[u8]) -> Option<SystemTime> {
    let mut c = Cursor { rest: v };
    c.one_of(&SHORT_DAYS)?;
    c.literal(b", ")?;
    let day = c.digits(2)?;
    c.literal(b" ")?;
    let month = c.one_of(&MONTHS)?;
    c.literal(b" ")?;
    let year = c.digits(4)?;
    c.literal(b" ")?;
    let (h, m, s) = c.time_of_day()?;
    c.literal(b" GMT")?;
    c.end()?;
    to_system_time(i64::from(year), month, day, h, m, s)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850_date(v: &[u8], current_year: i64) -> Option<SystemTime> {
    let mut c = Cursor { rest: v };
    c.one_of(&LONG_DAYS)?;
    c.literal(b", ")?;
    let day = c.digits(2)?;
    c.literal(b"-")?;
    let month = c.one_of(&MONTHS)?;
    c.literal(b"-")?;
    let yy = c.digits(2)?;
    c.literal(b" ")?;
    let (h, m, s) = c.time_of_day()?;
    c.literal(b" GMT")?;
    c.end()?;
    // Two-digit years: the most recent past year with these digits, unless that is more
    // than 50 years ago (RFC 9110 §5.6.7 says a date more than 50 years ahead is in the past).
    let year = full_year(i64::from(yy), current_year);
    to_system_time(year, month, day, h, m, s)
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime_date(v: &[u8]) -> Option<SystemTime> {
    let mut c = Cursor { rest: v };
    c.one_of(&SHORT_DAYS)?;
    c.literal(b" ")?;
    let month = c.one_of(&MONTHS)?;
    c.literal(b" ")?;
    let day = if c.literal(b" ").is_some() {
        c.digits(1)?
    } else {
        c.digits(2)?
    };
    c.literal(b" ")?;
    let (h, m, s) = c.time_of_day()?;
    c.literal(b" ")?;
    let year = c.digits(4)?;
    c.end()?;
    to_system_time(i64::from(year), month, day, h, m, s)
}

fn year_of(t: SystemTime) -> i64 {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    civil_from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2)).0
}

/// A two-digit year as the year in `[current - 49, current + 50]` with those last digits.
fn full_year(yy: i64, current: i64) -> i64 {
    let mut year = current - current.rem_euclid(100) + yy;
    if year > current + 50 {
        year -= 100;
    } else if year <= current - 50 {
        year += 100;
    }
    year
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month0: usize) -> u32 {
    match month0 {
        1 if is_leap(year) => 29,
        1 => 28,
        3 | 5 | 8 | 10 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn to_system_time(
    year: i64,
    month0: usize,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<SystemTime> {
    // Second 60 is a leap second; it is read as the first second of the next minute.
    if day == 0 || day > days_in_month(year, month0) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let month = i64::try_from(month0).ok()? + 1;
    let days = days_from_civil(year, month, i64::from(day));
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    // Dates before 1970 are simply in the past.
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Length of the retry budget's rolling window, in seconds.
pub const BUDGET_WINDOW_SECS: u64 = 10;

/// How many retries the upstreams can take: at most `ratio` times the requests of the last
/// [`BUDGET_WINDOW_SECS`] seconds, plus `min_per_sec` per second of that window.
///
/// Call [`RetryBudget::on_request`] once per client request (not per attempt) and
/// [`RetryBudget::try_withdraw`] before each retry; a retry happens only if it returns true.
/// Thread-safe; each call holds a short lock.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    origin: Instant,
    buckets: Mutex<[BudgetBucket; BUDGET_WINDOW_SECS as usize]>,
}

/// Counts for one second of the window.
#[derive(Debug, Clone, Copy, Default)]
struct BudgetBucket {
    /// Which second (since `origin`) the counts belong to.
    second: u64,
    requests: u64,
    retries: u64,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (e.g. 0.2; negative or NaN is taken as 0) plus
    /// `min_per_sec` retries per second.
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        RetryBudget {
            ratio,
            min_per_sec,
            origin: Instant::now(),
            buckets: Mutex::new([BudgetBucket::default(); BUDGET_WINDOW_SECS as usize]),
        }
    }

    /// The budget the configuration describes.
    pub fn from_config(cfg: &RetryConfig) -> Self {
        RetryBudget::new(cfg.budget_ratio, cfg.budget_min_per_sec)
    }

    /// Count one client request.
    pub fn on_request(&self) {
        self.on_request_at(Instant::now());
    }

    /// Take one retry from the budget: true if the retry may happen (and is then counted).
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// [`RetryBudget::on_request`] at a given time.
    pub fn on_request_at(&self, now: Instant) {
        let mut buckets = self.lock();
        let bucket = self.bucket(&mut buckets, now);
        bucket.requests = bucket.requests.saturating_add(1);
    }

    /// [`RetryBudget::try_withdraw`] at a given time.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut buckets = self.lock();
        let current = self.second(now);
        let (requests, retries) = buckets
            .iter()
            .filter(|b| b.second + BUDGET_WINDOW_SECS > current && b.second <= current)
            .fold((0u64, 0u64), |(q, r), b| {
                (q.saturating_add(b.requests), r.saturating_add(b.retries))
            });
        if retries >= self.allowance(requests) {
            return false;
        }
        let bucket = self.bucket(&mut buckets, now);
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }

    /// Retries allowed in a window that saw `requests` requests.
    fn allowance(&self, requests: u64) -> u64 {
        // Float is exact enough here (the ratio is an operator's round number); the cast
        // saturates, and the product is never negative.
        let by_ratio = (requests as f64 * self.ratio).floor() as u64;
        by_ratio.saturating_add(u64::from(self.min_per_sec).saturating_mul(BUDGET_WINDOW_SECS))
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The bucket for `now`, emptied first if it still holds an older second.
    fn bucket<'b>(
        &self,
        buckets: &'b mut [BudgetBucket; BUDGET_WINDOW_SECS as usize],
        now: Instant,
    ) -> &'b mut BudgetBucket {
        let second = self.second(now);
        // The remainder is below BUDGET_WINDOW_SECS, so it fits in usize.
        let index = usize::try_from(second % BUDGET_WINDOW_SECS).unwrap_or(0);
        let bucket = &mut buckets[index];
        if bucket.second != second {
            *bucket = BudgetBucket {
                second,
                requests: 0,
                retries: 0,
            };
        }
        bucket
    }

    fn lock(&self) -> MutexGuard<'_, [BudgetBucket; BUDGET_WINDOW_SECS as usize]> {
        // Counters stay meaningful even if a holder panicked.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        let b = Backoff::new(200 * MS, 10 * 1000 * MS);
        assert_eq!(b.ceiling(0), 200 * MS);
        assert_eq!(b.ceiling(1), 200 * MS);
        assert_eq!(b.ceiling(2), 400 * MS);
        assert_eq!(b.ceiling(3), 800 * MS);
        assert_eq!(b.ceiling(6), 6400 * MS);
        assert_eq!(b.ceiling(7), 10_000 * MS);
        assert_eq!(b.ceiling(40), 10_000 * MS, "no overflow on large exponents");
        assert_eq!(b.ceiling(u32::MAX), 10_000 * MS);
    }

    #[test]
    fn backoff_delay_is_full_jitter_within_bounds() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        for retry in 1..=8 {
            let ceiling = b.ceiling(retry);
            let samples: Vec<Duration> = (0..2000).map(|_| b.delay(retry)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
            let mean = samples.iter().sum::<Duration>() / 2000;
            // Uniform over [0, ceiling]: the mean is near ceiling / 2, and small delays occur.
            assert!(
                mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
                "retry {retry}: {mean:?}"
            );
            assert!(samples.iter().any(|d| *d < ceiling / 4), "retry {retry}");
            assert!(
                samples.iter().any(|d| *d > ceiling * 3 / 4),
                "retry {retry}"
            );
        }
    }

    #[test]
    fn backoff_mean_grows_until_cap() {
        let b = Backoff::new(50 * MS, 400 * MS);
        let mean = |retry| (0..4000).map(|_| b.delay(retry)).sum::<Duration>() / 4000;
        let (m1, m2, m3, m4, m5) = (mean(1), mean(2), mean(3), mean(4), mean(5));
        assert!(m2 > m1 && m3 > m2 && m4 > m3, "{m1:?} {m2:?} {m3:?} {m4:?}");
        // Capped from the fourth retry on: the same distribution.
        let diff = m5.abs_diff(m4);
        assert!(diff < 40 * MS, "{m4:?} vs {m5:?}");
    }

    #[test]
    fn backoff_zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(5), Duration::ZERO);
    }

    fn ra(headers: &[(&str, &str)], now: SystemTime) -> Option<Duration> {
        retry_after(
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            now,
        )
    }

    /// 1994-11-06T08:49:37Z, the RFC's example date.
    fn rfc_example() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            ra(&[("Retry-After", "120")], now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(ra(&[("retry-after", " 0 ")], now), Some(Duration::ZERO));
        assert_eq!(
            ra(&[("RETRY-AFTER", "007")], now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            ra(&[("retry-after", "99999999999999999999999")], now),
            Some(Duration::from_secs(u64::MAX)),
            "saturates"
        );
    }

    #[test]
    fn retry_after_ms_wins_over_seconds() {
        let now = SystemTime::now();
        let h = [("Retry-After", "2"), ("retry-after-ms", "1500")];
        assert_eq!(ra(&h, now), Some(1500 * MS));
        assert_eq!(
            ra(&[("retry-after-ms", "20.5")], now),
            Some(Duration::from_micros(20_500))
        );
        // A broken retry-after-ms falls back to Retry-After.
        let h = [("retry-after-ms", "soon"), ("Retry-After", "3")];
        assert_eq!(ra(&h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_http_dates() {
        let now = rfc_example() - Duration::from_secs(30);
        let expect = Some(Duration::from_secs(30));
        assert_eq!(
            ra(&[("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT")], now),
            expect
        );
        assert_eq!(
            ra(&[("Retry-After", "Sunday, 06-Nov-94 08:49:37 GMT")], now),
            expect
        );
        assert_eq!(
            ra(&[("Retry-After", "Sun Nov  6 08:49:37 1994")], now),
            expect
        );
        // In the past: no wait.
        let later = rfc_example() + Duration::from_secs(3600);
        assert_eq!(
            ra(&[("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT")], later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn http_date_known_values() {
        let at = |s: &str| {
            parse_http_date(s.as_bytes(), SystemTime::now())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(at("Fri, 31 Dec 2049 23:59:59 GMT"), Some(2_524_607_999));
        assert_eq!(at("Mon, 01 Mar 2100 00:00:00 GMT"), Some(4_107_542_400));
        assert_eq!(at("Sun Nov 16 08:49:37 1994"), Some(784_975_777));
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = SystemTime::now();
        for bad in [
            "",
            "-1",
            "+5",
            "1.5",
            "0x10",
            "5 s",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT trailing",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov  6 08:49:37 94",
        ] {
            assert_eq!(ra(&[("Retry-After", bad)], now), None, "{bad:?}");
        }
        for bad in ["", "1,5", ".5", "5.", "-3", "1e3"] {
            assert_eq!(ra(&[("retry-after-ms", bad)], now), None, "{bad:?}");
        }
        assert_eq!(ra(&[("x-retry-after", "5")], now), None);
        assert_eq!(ra(&[], now), None);
    }

    #[test]
    fn two_digit_years_follow_the_fifty_year_rule() {
        assert_eq!(full_year(94, 2026), 1994);
        assert_eq!(full_year(26, 2026), 2026);
        assert_eq!(full_year(76, 2026), 2076);
        assert_eq!(full_year(77, 2026), 1977);
        assert_eq!(full_year(0, 2099), 2100);
    }

    #[test]
    fn civil_round_trips() {
        for days in [-1_000_000i64, -1, 0, 1, 10_957, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    /// One row of the decision table: a failure, the attempt that failed, the time left to
    /// the deadline, and the expected decision (`None`, or the wait's bounds).
    struct Row {
        name: &'static str,
        kind: FailureKind,
        replayable: bool,
        retry_after: Option<Duration>,
        attempt: u32,
        left: Duration,
        expect: Option<(Duration, Duration)>,
    }

    fn policy(on_connect_error: bool) -> RetryPolicy {
        let cfg = RetryConfig {
            max_attempts: 3,
            base: 100 * MS,
            cap: 2000 * MS,
            on_connect_error,
            budget_ratio: 0.0,
            budget_min_per_sec: 100,
            ..RetryConfig::default()
        };
        RetryPolicy::from_config(&cfg, CancellationToken::new())
    }

    #[test]
    fn decide_follows_the_table() {
        use FailureKind::*;
        let s = Duration::from_secs;
        let row = |name, kind, replayable, retry_after, attempt, left, expect| Row {
            name,
            kind,
            replayable,
            retry_after,
            attempt,
            left,
            expect,
        };
        let backoff1 = Some((Duration::ZERO, 100 * MS));
        let rows = [
            row("connect", Connect, true, None, 1, s(60), backoff1),
            row(
                "stale keep-alive",
                StaleConnection,
                true,
                None,
                1,
                s(60),
                backoff1,
            ),
            row(
                "second retry backs off more",
                StaleConnection,
                true,
                None,
                2,
                s(60),
                Some((Duration::ZERO, 200 * MS)),
            ),
            row(
                "retryable status",
                Status(503),
                true,
                None,
                1,
                s(60),
                backoff1,
            ),
            row("other status", Status(500), true, None, 1, s(60), None),
            row("maybe processed", Final, true, None, 1, s(60), None),
            row(
                "body not held",
                StaleConnection,
                false,
                None,
                1,
                s(60),
                None,
            ),
            row("no attempts left", Connect, true, None, 3, s(60), None),
            row(
                "deadline reached",
                Connect,
                true,
                None,
                1,
                Duration::ZERO,
                None,
            ),
            row(
                "retry-after honoured",
                Status(429),
                true,
                Some(1500 * MS),
                1,
                s(60),
                Some((1500 * MS, 1500 * MS)),
            ),
            row(
                "retry-after never shortened",
                Status(429),
                true,
                Some(10 * MS),
                1,
                s(60),
                Some((10 * MS, 100 * MS)),
            ),
            row(
                "retry-after over the cap: answer as is",
                Status(429),
                true,
                Some(s(5)),
                1,
                s(60),
                None,
            ),
            row(
                "retry-after past the deadline",
                Status(503),
                true,
                Some(1500 * MS),
                1,
                s(1),
                None,
            ),
        ];
        let p = policy(true);
        let now = Instant::now();
        for r in &rows {
            let f = Failure {
                kind: r.kind,
                replayable: r.replayable,
                retry_after: r.retry_after,
            };
            let got = p.decide_at(&f, r.attempt, now + r.left, now);
            match (got, r.expect) {
                (None, None) => {}
                (Some(d), Some((lo, hi))) => {
                    assert!(
                        lo <= d && d <= hi,
                        "{}: {d:?} not in {lo:?}..={hi:?}",
                        r.name
                    )
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", r.name),
            }
        }
        let off = policy(false);
        let connect = Failure {
            kind: Connect,
            replayable: true,
            retry_after: None,
        };
        assert_eq!(off.decide_at(&connect, 1, now + s(60), now), None);
    }

    #[test]
    fn decide_stops_when_draining_or_out_of_budget() {
        let draining = CancellationToken::new();
        let p = RetryPolicy::from_config(&RetryConfig::default(), draining.clone());
        let f = Failure {
            kind: FailureKind::Status(503),
            replayable: true,
            retry_after: None,
        };
        let far = Instant::now() + Duration::from_secs(600);
        assert!(p.decide(&f, 1, far).is_some());
        draining.cancel();
        assert_eq!(p.decide(&f, 1, far), None);

        let cfg = RetryConfig {
            budget_ratio: 0.0,
            budget_min_per_sec: 0,
            ..RetryConfig::default()
        };
        let broke = RetryPolicy::from_config(&cfg, CancellationToken::new());
        assert_eq!(broke.decide(&f, 1, far), None);
    }

    #[test]
    fn budget_floor_without_requests() {
        let budget = RetryBudget::new(0.2, 1);
        let now = Instant::now();
        // One per second over a ten-second window.
        let granted = (0..50).filter(|_| budget.try_withdraw_at(now)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn budget_ratio_of_requests() {
        let budget = RetryBudget::new(0.2, 0);
        let now = Instant::now();
        assert!(
            !budget.try_withdraw_at(now),
            "no requests, no floor: nothing"
        );
        for _ in 0..100 {
            budget.on_request_at(now);
        }
        let granted = (0..100).filter(|_| budget.try_withdraw_at(now)).count();
        assert_eq!(granted, 20);
        // Five more requests earn one more retry.
        for _ in 0..5 {
            budget.on_request_at(now);
        }
        assert!(budget.try_withdraw_at(now));
        assert!(!budget.try_withdraw_at(now));
    }

    #[test]
    fn budget_rolls_over() {
        let budget = RetryBudget::new(0.5, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            budget.on_request_at(t0);
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw_at(t0)).count(), 5);
        // Still inside the window: spent.
        let t9 = t0 + Duration::from_millis(9_500);
        assert!(!budget.try_withdraw_at(t9));
        // Past the window: the old requests and retries no longer count.
        let t11 = t0 + Duration::from_secs(11);
        assert!(!budget.try_withdraw_at(t11), "no new requests yet");
        for _ in 0..4 {
            budget.on_request_at(t11);
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw_at(t11)).count(), 2);
    }

    #[test]
    fn budget_negative_ratio_is_zero() {
        let budget = RetryBudget::new(-1.0, 0);
        let now = Instant::now();
        budget.on_request_at(now);
        assert!(!budget.try_withdraw_at(now));
        let budget = RetryBudget::new(f64::NAN, 0);
        budget.on_request_at(now);
        assert!(!budget.try_withdraw_at(now));
    }

    #[test]
    fn budget_is_shared_across_threads() {
        let budget = std::sync::Arc::new(RetryBudget::new(0.1, 0));
        for _ in 0..1000 {
            budget.on_request();
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..100).filter(|_| b.try_withdraw()).count())
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(granted, 100);
    }
}
