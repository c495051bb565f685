//! The `sse` and `idle` modes: concurrent token streams, each event timed on arrival.
//!
//! Every stream is its own connection. The response body is read through
//! [`ChunkedDecoder`], which yields whole chunks exactly as they were framed on the wire; each
//! chunk is checked to hold exactly one SSE event. A chunk holding part of an event counts as
//! *split*, one holding more than one event as *merged*; events are still reassembled and timed
//! so that a proxy that re-chunks can be measured too. An event's delay is the wall-clock time
//! of the read that completed it minus the send time the upstream wrote into it.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use memchr::memmem;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;

use super::hist::Histogram;
use super::http::{invalid_data, read_response_head, Target};
use super::upstream::unix_nanos;
use crate::codec::chunked::{ChunkedDecoder, Frame, Limits};
use crate::harness::peer::{Framing, Peer};

/// What one run of streams is asked to do.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Where to connect.
    pub target: Target,
    /// Concurrent streams.
    pub streams: usize,
    /// Tokens per stream.
    pub tokens: u64,
    /// Gap between tokens, in milliseconds.
    pub gap_ms: u64,
    /// Most connections being opened (connected but not yet answered) at once.
    pub connect_concurrency: usize,
    /// Spread the stream starts evenly over one gap, so that the streams' token timers do not
    /// all fire in the same millisecond (the delay measured is then the path's, not a burst's).
    pub stagger: bool,
}

/// Counters shared by all streams of a run.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Time to first token, ns.
    pub ttft: Histogram,
    /// Per-event delay (receive minus send), ns.
    pub delay: Histogram,
    /// Token events received (not counting `[DONE]`).
    pub events: AtomicU64,
    /// Streams that ended cleanly with every token and `[DONE]`.
    pub completed: AtomicU64,
    /// Streams that failed (connect, status, framing, missing or out-of-order events, timeout).
    pub failed: AtomicU64,
    /// Chunks that held part of an event.
    pub split_chunks: AtomicU64,
    /// Chunks that held more than one event.
    pub merged_chunks: AtomicU64,
    /// Streams currently between their first token and their end.
    pub open: AtomicUsize,
    /// Most streams open at once.
    pub peak_open: AtomicUsize,
    /// Body bytes received.
    pub bytes: AtomicU64,
    /// The first failure, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl StreamStats {
    fn fail(&self, e: &io::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                *first = Some(e.to_string());
            }
        }
    }
}

/// Start every stream of `plan` and wait for all of them to end. Each stream is bounded in
/// time (`tokens × gap + 30 s`), so this returns by itself.
pub async fn run_streams(plan: &StreamPlan, stats: Arc<StreamStats>) {
    let request: Arc<[u8]> = chat_request(&plan.target, plan.tokens, plan.gap_ms).into();
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let limit =
        Duration::from_millis(plan.tokens.saturating_mul(plan.gap_ms)) + Duration::from_secs(30);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..plan.streams {
        let offset = if plan.stagger {
            Duration::from_micros(plan.gap_ms.saturating_mul(1000) * n as u64 / plan.streams as u64)
        } else {
            Duration::ZERO
        };
        let request = request.clone();
        let stats = stats.clone();
        let permits = permits.clone();
        let addr = plan.target.addr;
        let tokens = plan.tokens;
        tasks.spawn(async move {
            if !offset.is_zero() {
                tokio::time::sleep(offset).await;
            }
            let mut opened = false;
            let outcome = tokio::time::timeout(
                limit,
                one_stream(addr, &request, tokens, &stats, &permits, &mut opened),
            )
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "stream timed out")));
            if opened {
                stats.open.fetch_sub(1, Ordering::Relaxed);
            }
            match outcome {
                Ok(()) => {
                    stats.completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => stats.fail(&e),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn chat_request(target: &Target, tokens: u64, gap_ms: u64) -> Vec<u8> {
    let body = format!(
        "{{\"model\":\"bench\",\"stream\":true,\"tokens\":{tokens},\"gap_ms\":{gap_ms},\"messages\":[{{\"role\":\"user\",\"content\":\"count\"}}]}}"
    );
    format!(
        "POST {}/v1/chat/completions?tokens={tokens}&gap_ms={gap_ms} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        target.prefix,
        target.authority,
        body.len()
    )
    .into_bytes()
}

async fn one_stream(
    addr: std::net::SocketAddr,
    request: &[u8],
    tokens: u64,
    stats: &StreamStats,
    permits: &Semaphore,
    opened: &mut bool,
) -> io::Result<()> {
    let permit = permits
        .acquire()
        .await
        .map_err(|_| io::Error::other("connect limiter closed"))?;
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut peer = Peer::with_buffer(stream, BytesMut::with_capacity(4096));
    let sent = Instant::now();
    super::http::write_all(&mut peer.stream, request).await?;
    let head = read_response_head(&mut peer).await?;
    drop(permit);
    if head.status != 200 {
        return Err(invalid_data(format!("status {}", head.status)));
    }
    if head.body != Framing::Chunked {
        return Err(invalid_data("stream response is not chunked"));
    }
    let mut recv_ns = unix_nanos();
    let mut recv_at = Instant::now();
    let mut decoder = ChunkedDecoder::new(Limits::default());
    let mut events = EventReader::new(tokens);
    loop {
        match decoder
            .decode(&mut peer.buf)
            .map_err(|e| invalid_data(e.to_string()))?
        {
            Some(Frame::Data(chunk)) => {
                stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let first = events.received == 0;
                events.on_chunk(&chunk, recv_ns, stats)?;
                if first && events.received > 0 {
                    stats
                        .ttft
                        .record(recv_at.duration_since(sent).as_nanos() as u64);
                    *opened = true;
                    let now_open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
                    stats.peak_open.fetch_max(now_open, Ordering::Relaxed);
                }
            }
            Some(Frame::Trailers(_)) => {}
            Some(Frame::End) => break,
            None => {
                peer.read_more_inside("a stream, before its last chunk")
                    .await?;
                recv_ns = unix_nanos();
                recv_at = Instant::now();
            }
        }
    }
    events.finish()
}

/// Splits chunks into SSE events, checks their order and times them.
struct EventReader {
    expected: u64,
    received: u64,
    done: bool,
    /// Bytes of an event that a split chunk left unfinished.
    pending: Vec<u8>,
}

const EVENT_END: &[u8] = b"\n\n";
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

impl EventReader {
    fn new(expected: u64) -> Self {
        EventReader {
            expected,
            received: 0,
            done: false,
            pending: Vec::new(),
        }
    }

    fn on_chunk(&mut self, chunk: &[u8], recv_ns: u64, stats: &StreamStats) -> io::Result<()> {
        let first_end = memmem::find(chunk, EVENT_END);
        if self.pending.is_empty()
            && first_end.is_some()
            && first_end == chunk.len().checked_sub(EVENT_END.len())
        {
            return self.on_event(chunk, recv_ns, stats);
        }
        // Not exactly one event: classify, then reassemble.
        let ends = memmem::find_iter(chunk, EVENT_END).count();
        let ends_on_boundary = chunk.ends_with(EVENT_END);
        if !self.pending.is_empty() || !ends_on_boundary {
            stats.split_chunks.fetch_add(1, Ordering::Relaxed);
        }
        if ends > 1 {
            stats.merged_chunks.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() > 1 << 20 {
            return Err(invalid_data("event longer than 1 MiB"));
        }
        while let Some(pos) = memmem::find(&self.pending, EVENT_END) {
            let event: Vec<u8> = self.pending.drain(..pos + EVENT_END.len()).collect();
            self.on_event(&event, recv_ns, stats)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: &[u8], recv_ns: u64, stats: &StreamStats) -> io::Result<()> {
        if self.done {
            return Err(invalid_data("event after [DONE]"));
        }
        if event == DONE_EVENT {
            self.done = true;
            return Ok(());
        }
        let index =
            number_after(event, b"\"i\":").ok_or_else(|| invalid_data("event without an index"))?;
        let sent_ns = number_after(event, b"\"t\":")
            .ok_or_else(|| invalid_data("event without a send time"))?;
        if index != self.received {
            return Err(invalid_data(format!(
                "event {index} arrived where {} was expected",
                self.received
            )));
        }
        self.received += 1;
        stats.events.fetch_add(1, Ordering::Relaxed);
        stats.delay.record(recv_ns.saturating_sub(sent_ns));
        Ok(())
    }

    fn finish(&self) -> io::Result<()> {
        if !self.pending.is_empty() {
            return Err(invalid_data("stream ended inside an event"));
        }
        if self.received != self.expected {
            return Err(invalid_data(format!(
                "stream ended after {} of {} tokens",
                self.received, self.expected
            )));
        }
        if !self.done {
            return Err(invalid_data("stream ended without [DONE]"));
        }
        Ok(())
    }
}

/// The decimal number right after `key` in `event`.
pub(crate) fn number_after(event: &[u8], key: &[u8]) -> Option<u64> {
    let start = memmem::find(event, key)? + key.len();
    let digits = &event[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    digits[..len].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Vec<u8> {
        format!("data: {{\"i\":{i},\"t\":1000}}\n\n").into_bytes()
    }

    #[test]
    fn event_reader_accepts_one_event_per_chunk() {
        let stats = StreamStats::default();
        let mut r = EventReader::new(2);
        r.on_chunk(&event(0), 5000, &stats).unwrap();
        r.on_chunk(&event(1), 5000, &stats).unwrap();
        r.on_chunk(DONE_EVENT, 5000, &stats).unwrap();
        r.finish().unwrap();
        assert_eq!(stats.split_chunks.load(Ordering::Relaxed), 0);
        assert_eq!(stats.merged_chunks.load(Ordering::Relaxed), 0);
        assert_eq!(stats.delay.count(), 2);
        assert_eq!(stats.delay.max(), 4000);
    }

    #[test]
    fn event_reader_flags_merged_and_split_chunks() {
        let stats = StreamStats::default();
        let mut r = EventReader::new(3);
        let mut two = event(0);
        two.extend_from_slice(&event(1));
        r.on_chunk(&two, 2000, &stats).unwrap();
        let third = event(2);
        r.on_chunk(&third[..5], 2000, &stats).unwrap();
        r.on_chunk(&third[5..], 2000, &stats).unwrap();
        r.on_chunk(DONE_EVENT, 2000, &stats).unwrap();
        r.finish().unwrap();
        assert_eq!(stats.merged_chunks.load(Ordering::Relaxed), 1);
        assert_eq!(stats.split_chunks.load(Ordering::Relaxed), 2);
        assert_eq!(stats.events.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn event_reader_rejects_gaps_and_short_streams() {
        let stats = StreamStats::default();
        let mut r = EventReader::new(2);
        assert!(r.on_chunk(&event(1), 0, &stats).is_err());
        let mut r = EventReader::new(2);
        r.on_chunk(&event(0), 0, &stats).unwrap();
        r.on_chunk(DONE_EVENT, 0, &stats).unwrap();
        assert!(r.finish().is_err());
    }

    #[test]
    fn number_after_parses_and_rejects() {
        assert_eq!(number_after(b"{\"t\":12345,", b"\"t\":"), Some(12345));
        assert_eq!(number_after(b"{\"t\":x", b"\"t\":"), None);
        assert_eq!(
            number_after(b"{\"t\":99999999999999999999", b"\"t\":"),
            None
        );
    }
}
