//! chunkgate's integration tests: one test binary, a module per area, over real sockets on
//! 127.0.0.1 (hyper as an independent client and upstream, raw peers where bytes and chunk
//! boundaries matter).
//!
//! One binary links the crate once. Run an area with its module path as the filter, e.g.
//! `cargo test --test it proxy_stream::`; [`common`] holds the fixtures the proxy areas share.

mod admin;
mod capture;
mod codec_hyper_diff;
mod codec_props;
mod codec_vectors;
mod common;
mod config;
mod demo;
mod deploy;
mod fuzz_exchange_seeds;
mod harness;
mod llm_streams;
mod loadgen;
mod mock_upstream;
mod proxy_errors;
mod proxy_resilience;
mod proxy_retry_safety;
mod proxy_routes;
mod proxy_rules;
mod proxy_security;
mod proxy_stream;
mod proxy_tls;
mod proxy_total_timeout;
mod reload;
mod shutdown_signal;
mod stream_fixtures;
mod upstream_pool;
mod upstream_tls;
