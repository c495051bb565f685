//! Upstream connect.
