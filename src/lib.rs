//! chunkgate: a chunk-exact HTTP/1.1 reverse proxy for streaming LLM APIs.
//!
//! A `Transfer-Encoding: chunked` body passes through chunkgate as the same sequence of
//! chunks, one out for one in, with the same payload bytes, each forwarded the moment it is
//! complete, whatever TCP did to the bytes on the way. A read that stops in the middle of a
//! chunk never reaches the next hop as part of a UTF-8 character, a JSON object or an SSE event.

pub mod admin;
pub mod capture;
pub mod codec;
pub mod config;
pub mod harness;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod stream;
pub mod tls_server;
pub mod upstream;
