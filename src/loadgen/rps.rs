//! The `rps` mode: small POSTs over keep-alive connections, as fast as they are answered.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::hist::Histogram;
use super::http::{invalid_data, read_response_head, skip_length_body, Target};
use crate::codec::chunked::{ChunkedDecoder, Frame, Limits};
use crate::harness::peer::{Framing, Peer};

/// Longest wait for one response before the connection is counted as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters shared by all connections of an `rps` run.
#[derive(Debug, Default)]
pub struct RpsStats {
    /// Latency of requests completed while `measuring` was set, ns.
    pub latency: Histogram,
    /// Requests completed (measuring or not).
    pub completed: AtomicU64,
    /// Requests or connections that failed.
    pub errors: AtomicU64,
    /// Set while the measurement window is open.
    pub measuring: AtomicBool,
    /// Set to make every connection stop after its current request.
    pub stop: AtomicBool,
    /// The first failure, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

/// The request every connection repeats: a small chat-style JSON POST to `/small`.
pub fn small_request(target: &Target) -> Vec<u8> {
    let body = "{\"model\":\"bench\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"say hello\"}]}";
    format!(
        "POST {}/small HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        target.prefix,
        target.authority,
        body.len()
    )
    .into_bytes()
}

/// Run one connection's request loop until `stats.stop` is set; a failed connection is
/// counted, and replaced after a short pause.
pub async fn connection_loop(addr: std::net::SocketAddr, request: Arc<[u8]>, stats: Arc<RpsStats>) {
    while !stats.stop.load(Ordering::Relaxed) {
        if let Err(e) = requests_on_one_connection(addr, &request, &stats).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = stats.first_error.lock() {
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `Ok` when the loop stopped or the server closed the connection after a response.
async fn requests_on_one_connection(
    addr: std::net::SocketAddr,
    request: &[u8],
    stats: &RpsStats,
) -> io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut peer = Peer::with_buffer(stream, BytesMut::with_capacity(8192));
    let mut decoder = ChunkedDecoder::new(Limits::default());
    while !stats.stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let close = tokio::time::timeout(REQUEST_TIMEOUT, async {
            peer.stream.write_all(request).await?;
            let head = read_response_head(&mut peer).await?;
            if head.status != 200 {
                return Err(invalid_data(format!("status {}", head.status)));
            }
            match head.body {
                Framing::None => {}
                Framing::Length(n) => skip_length_body(&mut peer, n).await?,
                Framing::Chunked => {
                    decoder.reset();
                    skip_chunked_body(&mut peer, &mut decoder).await?;
                }
                Framing::Close => return Err(invalid_data("response delimited by close")),
            }
            Ok::<bool, io::Error>(head.close)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))??;
        if stats.measuring.load(Ordering::Relaxed) {
            stats.latency.record(start.elapsed().as_nanos() as u64);
        }
        stats.completed.fetch_add(1, Ordering::Relaxed);
        if close {
            return Ok(());
        }
    }
    Ok(())
}

async fn skip_chunked_body(peer: &mut Peer, decoder: &mut ChunkedDecoder) -> io::Result<()> {
    loop {
        match decoder
            .decode(&mut peer.buf)
            .map_err(|e| invalid_data(e.to_string()))?
        {
            Some(Frame::End) => return Ok(()),
            Some(_) => {}
            None => {
                peer.read_more_inside("a chunked body").await?;
            }
        }
    }
}
