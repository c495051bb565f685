//! Choosing an upstream of a group: weighted power of two choices over outstanding requests.
//!
//! [`Group::pick`] samples two distinct candidates with probability proportional to their
//! weights and takes the one with fewer outstanding requests per unit of weight (the first
//! sampled on a tie). Under concurrency this keeps each upstream's share of open requests
//! close to its share of the total weight while steering away from a slow upstream whose
//! requests pile up; with no requests in flight, the choice falls to the weighted sample, so
//! sequential traffic also follows the weights.
//!
//! Upstreams whose breaker refuses attempts are skipped. Indices in `exclude` (the upstreams a
//! request already tried) are skipped when another upstream is available, so a retry goes
//! elsewhere when it can.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::breaker::Breaker;
use super::connect::Connector;
use super::pool::UpstreamPool;
use crate::config::{self, BreakerConfig, PoolConfig, Timeouts, UpstreamConfig};

/// One upstream server of a group: its configuration, connection pool, breaker and load.
pub struct Upstream {
    /// Its configuration (URL, weight, CA file).
    pub cfg: UpstreamConfig,
    /// Its keep-alive pool.
    pub pool: UpstreamPool,
    /// Its circuit breaker.
    pub breaker: Breaker,
    /// Requests in flight ([`Upstream::begin`] guards alive).
    outstanding: AtomicUsize,
    /// [`Upstream::name`], shared with exchange records without a copy.
    name: Arc<str>,
    /// `Host` for requests to it, computed once.
    authority: String,
}

impl Upstream {
    /// Build an upstream: connector (see [`Connector::new`] for the errors), pool and breaker.
    pub fn new(
        cfg: &UpstreamConfig,
        timeouts: &Timeouts,
        pool: &PoolConfig,
        breaker: &BreakerConfig,
    ) -> Result<Upstream, String> {
        let connector = Connector::new(cfg, timeouts)?;
        let name = Arc::from(connector.name());
        Ok(Upstream {
            cfg: cfg.clone(),
            pool: UpstreamPool::new(connector, pool),
            breaker: Breaker::new(breaker),
            outstanding: AtomicUsize::new(0),
            name,
            authority: cfg.url.authority(),
        })
    }

    /// The upstream as `scheme://authority`, for logs and metrics labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`Upstream::name`] as a shared string (a reference count, not a copy).
    pub fn name_shared(&self) -> &Arc<str> {
        &self.name
    }

    /// `host[:port]` as sent in `Host` to this upstream.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Its weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.cfg.weight.max(1)
    }

    /// Requests in flight now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Count a request as outstanding on this upstream until the guard is dropped. Take it
    /// when the attempt starts and keep it until the response body ended.
    pub fn begin(self: &Arc<Self>) -> OutstandingGuard {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        OutstandingGuard {
            upstream: Arc::clone(self),
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name())
            .field("weight", &self.weight())
            .field("outstanding", &self.outstanding())
            .field("pool", &self.pool)
            .finish()
    }
}

/// Keeps one request counted as outstanding on an upstream; see [`Upstream::begin`].
#[must_use = "the request counts as outstanding only while the guard lives"]
pub struct OutstandingGuard {
    upstream: Arc<Upstream>,
}

impl OutstandingGuard {
    /// The upstream this request is counted on.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }
}

impl Drop for OutstandingGuard {
    fn drop(&mut self) {
        self.upstream.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for OutstandingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutstandingGuard")
            .field("upstream", &self.upstream.name())
            .finish()
    }
}

/// A named set of upstreams sharing a route's traffic.
#[derive(Debug)]
pub struct Group {
    /// The group's name, as routes refer to it.
    pub name: String,
    /// Its upstreams; [`Group::pick`] returns indices into this list.
    pub upstreams: Vec<Arc<Upstream>>,
}

/// A new upstream for member `i` of `cfg`. The same URL twice (one account each, told apart
/// by their injected headers): the second is named `url#2` in logs and metrics.
fn fresh(
    cfg: &config::UpstreamGroup,
    i: usize,
    timeouts: &Timeouts,
    pool: &PoolConfig,
    breaker: &BreakerConfig,
) -> Result<Arc<Upstream>, String> {
    let u = &cfg.upstreams[i];
    let mut up = Upstream::new(u, timeouts, pool, breaker)?;
    if cfg.upstreams[..i].iter().any(|o| o.url == u.url) {
        up.name = Arc::from(format!("{}#{}", up.name, i + 1));
    }
    Ok(Arc::new(up))
}

impl Group {
    /// Build a group and every upstream in it (each with its own pool and breaker).
    ///
    /// Errors when the group is empty or an upstream's TLS setup fails (message names the
    /// group).
    pub fn new(
        cfg: &config::UpstreamGroup,
        timeouts: &Timeouts,
        pool: &PoolConfig,
        breaker: &BreakerConfig,
    ) -> Result<Group, String> {
        Group::new_with(cfg, |i, _| fresh(cfg, i, timeouts, pool, breaker))
    }

    /// As [`Group::new`], keeping the upstreams of `old` whose configuration is unchanged
    /// (their pool, breaker and counts go on); `same_settings` says whether the timeouts, pool
    /// and breaker settings they were built with are unchanged too.
    pub fn reusing(
        cfg: &config::UpstreamGroup,
        timeouts: &Timeouts,
        pool: &PoolConfig,
        breaker: &BreakerConfig,
        old: &[Arc<Group>],
        same_settings: bool,
    ) -> Result<Group, String> {
        let mut group = Group::new_with(cfg, |i, u| {
            let kept = same_settings
                .then(|| {
                    old.iter()
                        .flat_map(|g| &g.upstreams)
                        .find(|o| o.cfg == *u)
                        .cloned()
                })
                .flatten();
            match kept {
                Some(o) => Ok(o),
                None => fresh(cfg, i, timeouts, pool, breaker),
            }
        })?;
        group.name = cfg.name.clone();
        Ok(group)
    }

    fn new_with(
        cfg: &config::UpstreamGroup,
        mut make: impl FnMut(usize, &UpstreamConfig) -> Result<Arc<Upstream>, String>,
    ) -> Result<Group, String> {
        if cfg.upstreams.is_empty() {
            return Err(format!("upstream group {:?} has no upstreams", cfg.name));
        }
        let upstreams = cfg
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| make(i, u).map_err(|e| format!("upstream group {:?}: {e}", cfg.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Group {
            name: cfg.name.clone(),
            upstreams,
        })
    }

    /// Choose an upstream for the next attempt; `None` when every upstream's breaker refuses.
    ///
    /// Upstreams whose breaker is not available at `now` are never chosen; those in `exclude`
    /// only when no other is available. Among the rest: weighted power of two choices on
    /// outstanding requests per weight (see the module docs). The breaker is not acquired
    /// here: the caller calls `breaker.try_acquire` on the chosen upstream.
    pub fn pick(&self, exclude: &[usize], now: Instant) -> Option<usize> {
        if let [only] = self.upstreams.as_slice() {
            // The common case, without the candidate lists: excluded or not, it is the one.
            return only.breaker.is_available(now).then_some(0);
        }
        let available: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].breaker.is_available(now))
            .collect();
        let preferred: Vec<usize> = available
            .iter()
            .copied()
            .filter(|i| !exclude.contains(i))
            .collect();
        let candidates = if preferred.is_empty() {
            &available
        } else {
            &preferred
        };
        match candidates.as_slice() {
            [] => None,
            [only] => Some(*only),
            _ => {
                let first = self.weighted_sample(candidates, None)?;
                let second = self.weighted_sample(candidates, Some(first))?;
                Some(if self.less_loaded(second, first) {
                    second
                } else {
                    first
                })
            }
        }
    }

    /// A random candidate other than `skip`, with probability proportional to its weight.
    fn weighted_sample(&self, candidates: &[usize], skip: Option<usize>) -> Option<usize> {
        let weight = |i: usize| u64::from(self.upstreams[i].weight());
        let total: u64 = candidates
            .iter()
            .filter(|&&i| Some(i) != skip)
            .map(|&i| weight(i))
            .sum();
        if total == 0 {
            return None;
        }
        let mut point = fastrand::u64(0..total);
        for &i in candidates.iter().filter(|&&i| Some(i) != skip) {
            let w = weight(i);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        None
    }

    /// Whether `a` has strictly fewer outstanding requests per weight than `b`.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (ua, ub) = (&self.upstreams[a], &self.upstreams[b]);
        // a.outstanding / a.weight < b.outstanding / b.weight, without division.
        let lhs = ua.outstanding() as u128 * u128::from(ub.weight());
        let rhs = ub.outstanding() as u128 * u128::from(ua.weight());
        lhs < rhs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamUrl;

    fn group(weights: &[u32]) -> Group {
        let cfg = config::UpstreamGroup {
            name: "test".to_string(),
            upstreams: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| UpstreamConfig {
                    // Never connected to: picking does not open connections.
                    url: UpstreamUrl::parse(&format!("http://127.0.0.1:{}", 1000 + i))
                        .expect("url"),
                    weight,
                    ca_file: None,
                    inject_headers: Vec::new(),
                    strip_prefix: None,
                    rewrite_prefix: None,
                })
                .collect(),
        };
        let breaker = BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        };
        Group::new(&cfg, &Timeouts::default(), &PoolConfig::default(), &breaker).expect("group")
    }

    fn counts(g: &Group, picks: usize, exclude: &[usize], now: Instant) -> Vec<usize> {
        let mut counts = vec![0; g.upstreams.len()];
        for _ in 0..picks {
            counts[g.pick(exclude, now).expect("a pick")] += 1;
        }
        counts
    }

    #[test]
    fn empty_group_is_an_error() {
        let cfg = config::UpstreamGroup {
            name: "empty".to_string(),
            upstreams: Vec::new(),
        };
        let err = Group::new(
            &cfg,
            &Timeouts::default(),
            &PoolConfig::default(),
            &BreakerConfig::default(),
        )
        .expect_err("empty");
        assert_eq!(err, "upstream group \"empty\" has no upstreams");
    }

    #[test]
    fn idle_upstreams_are_chosen_by_weight() {
        let g = group(&[1, 3]);
        let c = counts(&g, 8000, &[], Instant::now());
        // Expect 2000 / 6000.
        assert!((1700..2300).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn outstanding_requests_spread_by_weight() {
        let g = group(&[1, 2, 5]);
        let now = Instant::now();
        let mut guards = Vec::new();
        for _ in 0..800 {
            let i = g.pick(&[], now).expect("a pick");
            guards.push(g.upstreams[i].begin());
        }
        let load: Vec<usize> = g.upstreams.iter().map(|u| u.outstanding()).collect();
        // Expect 100 / 200 / 500.
        assert!((80..=120).contains(&load[0]), "{load:?}");
        assert!((170..=230).contains(&load[1]), "{load:?}");
        assert!((450..=550).contains(&load[2]), "{load:?}");
        drop(guards);
        assert!(g.upstreams.iter().all(|u| u.outstanding() == 0));
    }

    #[test]
    fn busy_upstream_is_avoided() {
        let g = group(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| g.upstreams[0].begin()).collect();
        let c = counts(&g, 1000, &[], Instant::now());
        // Two candidates: both are always sampled, and the idle one wins.
        assert_eq!(c, vec![0, 1000]);
    }

    #[test]
    fn excluded_upstreams_are_skipped_while_others_exist() {
        let g = group(&[5, 1, 1]);
        let now = Instant::now();
        let c = counts(&g, 1000, &[0], now);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 350 && c[2] > 350, "{c:?}");
        let c = counts(&g, 100, &[0, 2], now);
        assert_eq!(c, vec![0, 100, 0]);
        // Everything excluded: any available upstream is better than none.
        let c = counts(&g, 600, &[0, 1, 2], now);
        assert!(c.iter().all(|&n| n > 0), "{c:?}");
    }

    #[test]
    fn open_breakers_are_skipped() {
        let g = group(&[1, 1, 1]);
        let now = Instant::now();
        assert!(g.upstreams[1].breaker.on_failure(now).is_some());
        let c = counts(&g, 1000, &[], now);
        assert_eq!(c[1], 0, "{c:?}");
        assert!(c[0] > 350 && c[2] > 350, "{c:?}");
        // An open breaker is skipped even when the alternative is excluded.
        assert!(g.upstreams[0].breaker.on_failure(now).is_some());
        assert_eq!(counts(&g, 100, &[2], now), vec![0, 0, 100]);
        // All open: nothing to pick.
        assert!(g.upstreams[2].breaker.on_failure(now).is_some());
        assert_eq!(g.pick(&[], now), None);
        // After the cool-down they are half-open and can be picked again.
        let later = now + BreakerConfig::default().open_for;
        assert!(g.pick(&[], later).is_some());
    }
}
