//! Upstream breaker.
