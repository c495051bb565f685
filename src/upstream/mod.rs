//! The upstream side: connections (TCP, TLS), the keep-alive pool, balancing, retries, breakers.

pub mod balance;
pub mod breaker;
pub mod connect;
pub mod pool;
pub mod retry;
