//! The partial-chunk harness: split strategies, a mock LLM upstream, verifiers and the demo.
//!
//! - [`split`]: where a writer cuts each chunk's wire bytes into separate TCP writes.
//! - [`script`]: the deterministic OpenAI-style content the mock sends.
//! - [`mock`]: the mock upstream (`chunkgate mock-upstream`), with fault injection.
//! - [`peer`]: the raw HTTP/1.1 peer (one head parser, strict body readers that record every
//!   chunk boundary exactly) shared by the client, the mock, the load tool and the tests.
//! - [`client`]: the measuring client: writes a request as told, reads the answer as a peer.
//! - [`sse`]: checks that a piece of a stream is whole SSE events with JSON data.
//! - [`verify`]: comparing chunks sent with chunks received, and hex dumps of failures.
//! - [`naive`]: a client that treats each TCP read as a whole message, as frameworks that
//!   hand out partial chunks do.
//! - [`runner`]: `chunkgate harness`; [`demo`]: `chunkgate demo`.
//! - [`exchange_oracle`]: whole exchanges through a running proxy, checked (the `exchange`
//!   fuzz target and its seed replay).

pub mod client;
pub mod demo;
pub mod exchange_oracle;
pub mod mock;
pub mod naive;
pub mod peer;
pub mod runner;
pub mod script;
pub mod split;
pub mod sse;
pub mod verify;
