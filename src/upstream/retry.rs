//! Upstream retry.
