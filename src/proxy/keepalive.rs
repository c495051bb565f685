//! Keepalive comments before the first upstream byte (route `keepalive`).
//!
//! Reasoning models may think for minutes before their first byte, and load balancers cut
//! connections idle for 60 s. For a streaming request on a route with `keepalive`, when the
//! upstream has not answered within the interval, chunkgate commits `200 text/event-stream`
//! (chunked) and sends an SSE comment, `: keepalive`, at every interval until the upstream's
//! response head arrives; the upstream's body then follows in the same stream.
//!
//! The trade-off: once committed, the status is `200` whatever the upstream answers. A later
//! upstream failure, or an answer with an error status, reaches the client as one `error`
//! event (`event: error`, an OpenAI-style JSON error object as its data) and the stream is cut
//! without its terminating chunk; no retry is made after the commit.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::proxy::body::WriteError;
use crate::proxy::error::ExchangeError;

/// The comment each interval sends, as one chunk.
const COMMENT_CHUNK: &[u8] = b"d\r\n: keepalive\n\n\r\n";

/// The keepalive state of one exchange.
#[derive(Debug)]
pub(crate) struct KeepAlive {
    every: Duration,
    next: Instant,
    committed: bool,
    request_id: Bytes,
    write_stall: Duration,
    /// Comments sent.
    pub sent: u32,
}

impl KeepAlive {
    /// Comments every `every`, the first `every` after `started`.
    pub fn new(
        every: Duration,
        started: Instant,
        request_id: Bytes,
        write_stall: Duration,
    ) -> Self {
        KeepAlive {
            every,
            next: started + every,
            committed: false,
            request_id,
            write_stall,
            sent: 0,
        }
    }

    /// When the next comment is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Whether the `200` head went to the client.
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// The interval passed: commit the response (first time) and send a comment.
    pub async fn tick<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), ExchangeError> {
        let mut out = BytesMut::with_capacity(256);
        if !self.committed {
            out.put_slice(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nvia: 1.1 chunkgate\r\nx-request-id: ",
            );
            out.put_slice(&self.request_id);
            out.put_slice(b"\r\ntransfer-encoding: chunked\r\n\r\n");
        }
        out.put_slice(COMMENT_CHUNK);
        self.committed = true;
        self.next = Instant::now() + self.every;
        write_bounded(wr, &out, self.write_stall).await?;
        self.sent += 1;
        Ok(())
    }

    /// After the commit, tell the client of `err` as one `error` event (best effort: the
    /// stream is cut next whatever happens).
    pub async fn error_event<W: AsyncWrite + Unpin>(&self, wr: &mut W, err: &ExchangeError) {
        let event = format!(
            "event: error\ndata: {}\n\n",
            err.json_body(&self.request_id)
        );
        let mut out = BytesMut::with_capacity(event.len() + 16);
        out.put_slice(format!("{:x}\r\n", event.len()).as_bytes());
        out.put_slice(event.as_bytes());
        out.put_slice(b"\r\n");
        let _ = write_bounded(wr, &out, self.write_stall).await;
    }
}

async fn write_bounded<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), ExchangeError> {
    let write = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    match tokio::time::timeout(stall, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ExchangeError::ClientWrite(WriteError::Io(e))),
        Err(_) => Err(ExchangeError::ClientWrite(WriteError::Stalled)),
    }
}
