//! Upstream pool.
