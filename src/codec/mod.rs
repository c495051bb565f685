//! The sans-IO protocol core: chunked coding, message heads and framing decisions.
//!
//! Nothing here touches a socket, a clock or a task; the async code elsewhere drives it.

pub mod chunked;
pub mod framing;
pub mod head;
