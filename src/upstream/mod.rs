//! The upstream side: connections (TCP, TLS), the keep-alive pool, balancing, retries,
//! breakers.
//!
//! This module knows nothing of the client side. Per exchange the proxy picks an upstream of
//! the route's group ([`Group::pick`]), asks its breaker ([`Breaker::try_acquire`]), counts the
//! attempt as outstanding ([`Upstream::begin`]), checks a connection out of its pool
//! ([`UpstreamPool::checkout`]), and afterwards reports the outcome to the breaker and
//! returns the connection ([`UpstreamPool::checkin`]) only if the exchange ended cleanly.
//! Retry decisions use [`retry`]: [`Backoff`], [`retry_after`], [`RetryBudget`].

pub mod balance;
pub mod breaker;
pub mod connect;
pub mod pool;
pub mod retry;

pub use balance::{Group, OutstandingGuard, Upstream};
pub use breaker::{Breaker, BreakerOpen, BreakerState};
pub use connect::{ConnectError, ConnectErrorKind, Connector, UpstreamStream};
pub use pool::{PooledConn, Slot, UpstreamPool};
pub use retry::{retry_after, Backoff, RetryBudget, RetryPolicy};
