//! The harness's measuring instrument: a small, strict HTTP/1.1 client that writes a request
//! exactly as told (each piece its own write, with pauses) and reads the answer as a
//! [`Peer`]: every chunk boundary recorded exactly, together with the TCP reads each chunk
//! arrived in.
//!
//! Nothing is forgiven: a framing error ends the body with [`BodyEnd::Malformed`], a
//! connection closed before the last chunk with [`BodyEnd::Cut`].
//!
//! [`BodyEnd::Malformed`]: crate::harness::peer::BodyEnd::Malformed
//! [`BodyEnd::Cut`]: crate::harness::peer::BodyEnd::Cut

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::peer::{Peer, RawResponse};
use crate::harness::split::{Pause, Piece};

/// The pauses a writer makes between pieces (see [`Pause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gaps {
    /// Before a piece that continues a chunk cut by a split strategy.
    pub split: Duration,
    /// Before a piece that starts the next chunk.
    pub token: Duration,
    /// Between a request head and the first piece of its body, so that the peer has acted on
    /// the head (a proxy has connected upstream) before the body starts to arrive.
    pub body: Duration,
}

impl Default for Gaps {
    /// 2 ms between the pieces of a chunk, none between chunks, 20 ms before a body.
    fn default() -> Self {
        Gaps {
            split: Duration::from_millis(2),
            token: Duration::ZERO,
            body: Duration::from_millis(20),
        }
    }
}

/// Write `pieces` one write and one flush each, pausing before each as its [`Pause`] says.
///
/// Set `TCP_NODELAY` on the socket first so each write leaves as its own segment.
/// Cancel safety: dropping the future may leave a piece half written.
pub async fn write_pieces<W>(w: &mut W, pieces: &[Piece], gaps: Gaps) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    for p in pieces {
        pause(p.pause, gaps).await;
        w.write_all(&p.bytes).await?;
        w.flush().await?;
    }
    Ok(())
}

/// Wait as `p` says.
pub async fn pause(p: Pause, gaps: Gaps) {
    match p {
        Pause::None => {}
        Pause::Yield => tokio::task::yield_now().await,
        Pause::Split => sleep_or_yield(gaps.split).await,
        Pause::Token => sleep_or_yield(gaps.token).await,
    }
}

async fn sleep_or_yield(d: Duration) {
    if d.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(d).await;
    }
}

/// Connect to `addr`, write `head` in one write, then `body` as pieces, and read the final
/// response as a [`Peer`] does ([`Peer::final_response`]; a response to a `HEAD` request, as
/// the head's method says, has no body). The whole exchange is bounded by `deadline`.
pub async fn exchange(
    addr: SocketAddr,
    head: &[u8],
    body: &[Piece],
    gaps: Gaps,
    deadline: Duration,
) -> io::Result<RawResponse> {
    let method = head
        .split(|&b| b == b' ')
        .next()
        .and_then(|m| std::str::from_utf8(m).ok())
        .unwrap_or("");
    let fut = async {
        let mut peer = Peer::connect(addr).await?;
        peer.send(head).await?;
        if !body.is_empty() && !gaps.body.is_zero() {
            tokio::time::sleep(gaps.body).await;
        }
        // A server may answer (and close) before it has read the body; the answer matters
        // more than the failed write, so read it whatever happened to the body.
        let wrote = write_pieces(&mut peer.stream, body, gaps).await;
        match peer.final_response(method).await {
            Ok(r) => Ok(r),
            Err(e) => Err(wrote.err().unwrap_or(e)),
        }
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no complete response within {} ms", deadline.as_millis()),
        )),
    }
}

/// A request head: `METHOD path HTTP/1.1`, `host`, the given fields, `connection: close`.
pub fn request_head_bytes(
    method: &str,
    path: &str,
    host: &str,
    fields: &[(&str, String)],
) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (n, v) in fields {
        h.push_str(n);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str("connection: close\r\n\r\n");
    h.into_bytes()
}
