//! Upstream balance.
