//! The partial-chunk harness: split strategies, a mock LLM upstream, verifiers and the demo.

pub mod demo;
pub mod mock;
pub mod runner;
