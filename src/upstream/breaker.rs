//! The circuit breaker of one upstream.
//!
//! ```text
//!            N consecutive failures, or failure rate >= R
//!            over the window with >= M requests
//!   Closed ───────────────────────────────────────────► Open ◄──────────┐
//!     ▲                                                  │              │
//!     │ every probe succeeded             open_for passed│              │ a probe failed
//!     │                                                  ▼              │
//!     └─────────────────────────────────────────────── HalfOpen ───────┘
//!                                   (at most P probes in flight)
//! ```
//!
//! Closed lets everything through and counts outcomes. Open fails fast until `open_for` has
//! passed; then the breaker is half-open and lets `half_open_probes` attempts through at a
//! time: when as many probes have succeeded it closes, and the first failure opens it again.
//!
//! The caller asks [`Breaker::try_acquire`] before each attempt and reports its outcome with
//! [`Breaker::on_success`] or [`Breaker::on_failure`], or [`Breaker::on_abandon`] when the
//! attempt ended for a reason that says nothing about the upstream (the client went away).
//! A probe whose outcome is never reported is forgotten after `open_for`, so a lost report
//! cannot keep the breaker half-open forever. Time is passed in (`now`) so that tests, and
//! callers that already read the clock, control it. State changes caused by an outcome are
//! returned for logging and metrics; the move from open to half-open happens by itself when
//! `open_for` has passed and is not reported.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Number of buckets in the failure-rate window.
const WINDOW_BUCKETS: usize = 10;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests fail fast until the cool-down has passed.
    Open,
    /// A few probes are let through to test the upstream.
    HalfOpen,
}

impl BreakerState {
    /// The state as a number for a gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_metric(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl BreakerState {
    /// The state's name: `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`Breaker::try_acquire`] refused: the breaker is open, or half-open with all probes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    retry_after: Option<Duration>,
}

impl BreakerOpen {
    /// How long until the breaker half-opens, when it is open; `None` when it is half-open
    /// and waiting for its probes.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(wait) => write!(f, "circuit breaker open for another {wait:?}"),
            None => f.write_str("circuit breaker half-open, probes in flight"),
        }
    }
}

impl std::error::Error for BreakerOpen {}

/// The circuit breaker of one upstream. Thread-safe; each call holds a short lock.
#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures that open the breaker; 0 disables the rule.
    consecutive_failures: u32,
    /// Failure rate that opens the breaker; `None` disables the rule.
    failure_rate: Option<f64>,
    min_requests: u64,
    open_for: Duration,
    probes: u32,
    /// Width of one window bucket, in nanoseconds (at least 1).
    bucket_nanos: u128,
    origin: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    window: [Bucket; WINDOW_BUCKETS],
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes let through whose outcome is not known yet.
        in_flight: u32,
        /// Probes that succeeded.
        successes: u32,
        /// When the last probe was let through.
        last_probe: Instant,
    },
}

/// Outcomes in one slice of the failure-rate window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    successes: u64,
    failures: u64,
}

impl Breaker {
    /// A closed breaker with the given policy.
    ///
    /// `consecutive_failures` 0 disables the consecutive rule; a `failure_rate` outside
    /// `(0, 1]` disables the rate rule; `min_requests` and `half_open_probes` are taken as at
    /// least 1. With both rules disabled the breaker never opens.
    pub fn new(cfg: &BreakerConfig) -> Self {
        let failure_rate =
            (cfg.failure_rate > 0.0 && cfg.failure_rate <= 1.0).then_some(cfg.failure_rate);
        let bucket_nanos = (cfg.window.as_nanos() / WINDOW_BUCKETS as u128).max(1);
        Breaker {
            consecutive_failures: cfg.consecutive_failures,
            failure_rate,
            min_requests: u64::from(cfg.min_requests.max(1)),
            open_for: cfg.open_for,
            probes: cfg.half_open_probes.max(1),
            bucket_nanos,
            origin: Instant::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Closed { consecutive: 0 },
                window: [Bucket::default(); WINDOW_BUCKETS],
            }),
        }
    }

    /// Ask to send an attempt. `Ok` lets it through (a probe, when half-open: then its outcome
    /// must be reported); `Err` means fail fast or choose another upstream.
    pub fn try_acquire(&self, now: Instant) -> Result<(), BreakerOpen> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match &mut inner.phase {
            Phase::Closed { .. } => Ok(()),
            Phase::Open { until } => Err(BreakerOpen {
                retry_after: Some(until.saturating_duration_since(now)),
            }),
            Phase::HalfOpen {
                in_flight,
                last_probe,
                ..
            } => {
                if *in_flight < self.probes {
                    *in_flight += 1;
                } else if now.saturating_duration_since(*last_probe) >= self.open_for {
                    // The outstanding probes never reported back: forget them.
                    *in_flight = 1;
                } else {
                    return Err(BreakerOpen { retry_after: None });
                }
                *last_probe = now;
                Ok(())
            }
        }
    }

    /// Whether [`Breaker::try_acquire`] would let an attempt through now (without taking a
    /// probe). For choosing among upstreams.
    pub fn is_available(&self, now: Instant) -> bool {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed { .. } => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen {
                in_flight,
                last_probe,
                ..
            } => {
                in_flight < self.probes
                    || now.saturating_duration_since(last_probe) >= self.open_for
            }
        }
    }

    /// Report a successful attempt. Returns `(from, to)` when this closed the breaker.
    pub fn on_success(&self, now: Instant) -> Option<(BreakerState, BreakerState)> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match &mut inner.phase {
            Phase::Closed { consecutive } => {
                *consecutive = 0;
                self.bucket(&mut inner.window, now).successes += 1;
                None
            }
            // A late answer to an attempt made before the breaker opened.
            Phase::Open { .. } => None,
            Phase::HalfOpen {
                in_flight,
                successes,
                ..
            } => {
                *in_flight = in_flight.saturating_sub(1);
                *successes += 1;
                if *successes < self.probes {
                    return None;
                }
                inner.phase = Phase::Closed { consecutive: 0 };
                inner.window = [Bucket::default(); WINDOW_BUCKETS];
                Some((BreakerState::HalfOpen, BreakerState::Closed))
            }
        }
    }

    /// Report a failed attempt (connect error, timeout, or a status counted as failure).
    /// Returns `(from, to)` when this opened the breaker.
    pub fn on_failure(&self, now: Instant) -> Option<(BreakerState, BreakerState)> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let from = match &mut inner.phase {
            Phase::Closed { consecutive } => {
                *consecutive = consecutive.saturating_add(1);
                let consecutive = *consecutive;
                self.bucket(&mut inner.window, now).failures += 1;
                if !self.trips(&inner.window, consecutive, now) {
                    return None;
                }
                BreakerState::Closed
            }
            Phase::Open { .. } => return None,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        inner.phase = Phase::Open {
            until: later(now, self.open_for),
        };
        inner.window = [Bucket::default(); WINDOW_BUCKETS];
        Some((from, BreakerState::Open))
    }

    /// Report that an acquired attempt ended without telling anything about the upstream
    /// (cancelled by the client): a half-open breaker gets its probe slot back.
    pub fn on_abandon(&self, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        if let Phase::HalfOpen { in_flight, .. } = &mut inner.phase {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.lock().phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Open → half-open once the cool-down has passed.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until } = inner.phase {
            if now >= until {
                inner.phase = Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                    last_probe: now,
                };
            }
        }
    }

    fn trips(&self, window: &[Bucket; WINDOW_BUCKETS], consecutive: u32, now: Instant) -> bool {
        if self.consecutive_failures > 0 && consecutive >= self.consecutive_failures {
            return true;
        }
        let Some(rate) = self.failure_rate else {
            return false;
        };
        let current = self.bucket_index(now);
        let (successes, failures) = window
            .iter()
            .filter(|b| b.index <= current && b.index + WINDOW_BUCKETS as u64 > current)
            .fold((0u64, 0u64), |(s, f), b| (s + b.successes, f + b.failures));
        let total = successes + failures;
        // Counts stay far below 2^52, where f64 is exact.
        total >= self.min_requests && failures as f64 >= rate * total as f64
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    /// The window bucket for `now`, emptied first if it holds an older slice.
    fn bucket<'w>(&self, window: &'w mut [Bucket; WINDOW_BUCKETS], now: Instant) -> &'w mut Bucket {
        let index = self.bucket_index(now);
        // The remainder is below WINDOW_BUCKETS.
        let slot = usize::try_from(index % WINDOW_BUCKETS as u64).unwrap_or(0);
        let bucket = &mut window[slot];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                successes: 0,
                failures: 0,
            };
        }
        bucket
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `now + d`, or a time far beyond any cool-down when that overflows.
fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg(consecutive: u32, rate: f64, min_requests: u32, probes: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: consecutive,
            failure_rate: rate,
            min_requests,
            window: 10 * S,
            open_for: 5 * S,
            half_open_probes: probes,
        }
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let b = Breaker::new(&cfg(3, 0.0, 20, 1));
        let t = Instant::now();
        assert_eq!(b.on_failure(t), None);
        assert_eq!(b.on_failure(t), None);
        // A success resets the run.
        assert_eq!(b.on_success(t), None);
        assert_eq!(b.on_failure(t), None);
        assert_eq!(b.on_failure(t), None);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert!(b.try_acquire(t).is_ok());
        assert_eq!(
            b.on_failure(t),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn opens_on_failure_rate_with_enough_requests() {
        // The consecutive rule is off: only the rate rule can open the breaker.
        let b = Breaker::new(&cfg(0, 0.5, 10, 1));
        let t = Instant::now();
        // Alternating outcomes: the rate is 50 % all along, but it counts only from the
        // tenth request on.
        for i in 0..4u32 {
            let at = t + i * (S / 10);
            assert_eq!(b.on_success(at), None);
            assert_eq!(b.on_failure(at), None, "{} requests", 2 * i + 2);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        assert_eq!(b.on_success(t + S / 2), None);
        assert_eq!(
            b.on_failure(t + S / 2),
            Some((BreakerState::Closed, BreakerState::Open)),
            "10 requests, 5 failures"
        );
    }

    #[test]
    fn failure_rate_below_threshold_stays_closed() {
        let b = Breaker::new(&cfg(0, 0.5, 10, 1));
        let t = Instant::now();
        for _ in 0..100 {
            b.on_success(t);
            b.on_success(t);
            assert_eq!(b.on_failure(t), None);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = Breaker::new(&cfg(0, 0.5, 4, 1));
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.on_failure(t), None);
        }
        // Eleven seconds later the three failures are out of the ten-second window: one new
        // failure is 1 of 1, under min_requests.
        let later = t + 11 * S;
        assert_eq!(b.on_failure(later), None);
        assert_eq!(b.state(later), BreakerState::Closed);
        // Within the window they still count: 4 of 4.
        let b = Breaker::new(&cfg(0, 0.5, 4, 1));
        for _ in 0..3 {
            b.on_failure(t);
        }
        assert!(b.on_failure(t + 5 * S).is_some());
    }

    #[test]
    fn open_fails_fast_until_cool_down() {
        let b = Breaker::new(&cfg(1, 0.0, 20, 1));
        let t = Instant::now();
        assert!(b.on_failure(t).is_some());
        let err = b.try_acquire(t + S).expect_err("open");
        assert_eq!(err.retry_after(), Some(4 * S));
        assert!(!b.is_available(t + S));
        assert_eq!(b.state(t + 4 * S), BreakerState::Open);
        // Late outcomes of earlier attempts change nothing while open.
        assert_eq!(b.on_success(t + 2 * S), None);
        assert_eq!(b.on_failure(t + 2 * S), None);
        assert_eq!(b.state(t + 5 * S), BreakerState::HalfOpen);
        assert!(b.is_available(t + 5 * S));
    }

    #[test]
    fn half_open_limits_probes_then_closes() {
        let b = Breaker::new(&cfg(1, 0.0, 20, 2));
        let t = Instant::now();
        b.on_failure(t);
        let t = t + 5 * S;
        assert!(b.try_acquire(t).is_ok());
        assert!(b.try_acquire(t).is_ok());
        let err = b.try_acquire(t).expect_err("third probe refused");
        assert_eq!(err.retry_after(), None);
        assert!(!b.is_available(t));
        assert_eq!(b.on_success(t), None, "one of two probes");
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        assert_eq!(
            b.on_success(t),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert_eq!(b.state(t), BreakerState::Closed);
        // Closed again with a clean slate: one failure opens it (consecutive = 1).
        assert!(b.try_acquire(t).is_ok());
        assert_eq!(
            b.on_failure(t),
            Some((BreakerState::Closed, BreakerState::Open))
        );
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(&cfg(1, 0.0, 20, 1));
        let t = Instant::now();
        b.on_failure(t);
        let t = t + 6 * S;
        assert!(b.try_acquire(t).is_ok());
        assert_eq!(
            b.on_failure(t),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
        assert_eq!(b.state(t + 4 * S), BreakerState::Open);
        assert_eq!(
            b.try_acquire(t + S).expect_err("open").retry_after(),
            Some(4 * S)
        );
        assert_eq!(b.state(t + 5 * S), BreakerState::HalfOpen);
    }

    #[test]
    fn abandoned_probe_frees_its_slot() {
        let b = Breaker::new(&cfg(1, 0.0, 20, 1));
        let t = Instant::now();
        b.on_failure(t);
        let t = t + 5 * S;
        assert!(b.try_acquire(t).is_ok());
        assert!(b.try_acquire(t).is_err());
        b.on_abandon(t);
        assert!(b.try_acquire(t).is_ok());
    }

    #[test]
    fn lost_probe_is_forgotten_after_open_for() {
        let b = Breaker::new(&cfg(1, 0.0, 20, 1));
        let t = Instant::now();
        b.on_failure(t);
        let t = t + 5 * S;
        assert!(b.try_acquire(t).is_ok());
        assert!(b.try_acquire(t + 4 * S).is_err());
        assert!(b.is_available(t + 5 * S));
        assert!(b.try_acquire(t + 5 * S).is_ok());
        assert_eq!(
            b.on_success(t + 6 * S),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
    }

    #[test]
    fn huge_cool_down_does_not_overflow() {
        let b = Breaker::new(&BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::MAX,
            ..BreakerConfig::default()
        });
        let t = Instant::now();
        assert!(b.on_failure(t).is_some());
        assert_eq!(b.state(t + 1000 * S), BreakerState::Open);
    }

    #[test]
    fn disabled_rules_never_open() {
        let b = Breaker::new(&cfg(0, 0.0, 1, 1));
        let t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(b.on_failure(t), None);
        }
        assert!(b.try_acquire(t).is_ok());
    }

    #[test]
    fn state_names_and_metric_values() {
        assert_eq!(BreakerState::Closed.to_string(), "closed");
        assert_eq!(BreakerState::Open.to_string(), "open");
        assert_eq!(BreakerState::HalfOpen.to_string(), "half-open");
        assert_eq!(BreakerState::HalfOpen.as_metric(), 2);
    }
}
