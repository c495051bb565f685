//! An OpenAI-compatible mock LLM upstream that controls every byte and every TCP write.
//!
//! The mock is written on chunkgate's own codec: it frames its chunked responses itself and
//! writes each chunk's wire bytes in pieces chosen by a [`SplitStrategy`], one write and one
//! flush per piece with `TCP_NODELAY` set and a short pause between pieces, so the peer sees a
//! chunk arrive over several reads. Its content is deterministic (see
//! [`script`](crate::harness::script)): a harness that knows the seed knows every chunk sent.
//!
//! # Routes
//! - `POST /v1/chat/completions`: with `"stream": true`, a `text/event-stream` over chunked
//!   encoding, one SSE event per chunk (a role event, one event per token, a finish event, a
//!   usage event when `stream_options.include_usage` is true, then `data: [DONE]`); otherwise a
//!   `chat.completion` JSON object with `Content-Length`. `max_tokens` caps the token count,
//!   `seed` chooses the text, `model` is echoed.
//! - `GET /v1/models`: a model list.
//! - `POST /echo`: decodes the request body with [`ChunkedDecoder`] and answers JSON listing
//!   the exact chunks received: `{"framing":"chunked","chunk_count":3,"bytes":10,
//!   "reassembled":1,"chunks":["YWJj",...],"trailers":[["name","value"]]}` (chunks in base64;
//!   `reassembled` counts chunks that arrived over several reads). A `Content-Length` body is
//!   reported as `"framing":"length"` with the whole body as one entry.
//! - `POST /sink`: reads a body of any size without keeping it and answers
//!   `{"framing":"chunked","chunk_count":N,"bytes":M}`.
//!
//! # Per-request controls (request headers)
//! - `x-mock-split: STRATEGY`: split strategy for this response (see [`SplitStrategy`]).
//! - `x-mock-seed: N`, `x-mock-tokens: N`: the script's seed and token count.
//! - `x-mock-gap-ms: N`: pause between tokens; `x-mock-split-gap-ms: N`: pause between the
//!   pieces of a split chunk.
//! - `x-mock-timestamps: 1|0`: add (or not) a `"sent_ns"` field, the send time in nanoseconds
//!   since the Unix epoch, to every event (on by default in fast mode).
//!
//! # Faults (`x-mock-fault`)
//! A `;`-separated list of `key[=value]` items, applied to any route:
//!
//! | item | effect |
//! |------|--------|
//! | `status=CODE` | answer `CODE` with an OpenAI-style error body instead of the real answer |
//! | `retry-after=S` | with `status`, add `Retry-After: S` |
//! | `stall-ms=N` | wait `N` ms before writing the response head |
//! | `first-byte-ms=N` | after the head of a stream, wait `N` ms before the first chunk |
//! | `stall-mid-ms=N` | wait `N` ms in the middle of a stream (after `stall-after` chunks) |
//! | `stall-after=K` | where `stall-mid-ms` waits (default 1) |
//! | `reset-after=K` | write `K` chunks and half of the next, then reset the connection (RST) |
//! | `close-after=K` | write `K` chunks and half of the next, then close cleanly (FIN) |
//! | `malformed` / `malformed=K` | after `K` chunks (default 1) write an invalid size line, then close |
//! | `count=N` | apply the fault to the first `N` requests carrying this exact header value only; later ones are served normally (for retry tests) |
//!
//! Example: `x-mock-fault: status=429;retry-after=1;count=1` answers the first request with
//! 429 and `Retry-After: 1`, and every later identical request normally.
//!
//! # Example
//! ```no_run
//! use chunkgate::harness::mock::{MockOptions, MockUpstream};
//! # async fn run() -> std::io::Result<()> {
//! let mock = MockUpstream::bind("127.0.0.1:0".parse().unwrap(), MockOptions::default()).await?;
//! let handle = mock.spawn();
//! println!("mock at http://{}", handle.addr());
//! handle.shutdown().await; // or drop it
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::chunked::{ChunkedDecoder, Field, Frame, Limits, LAST_CHUNK};
use crate::harness::client::{pause, write_pieces, Gaps};
use crate::harness::peer::{
    Framing, FramingError, HeadError, HeadKind, HeadView, Peer, PeerLimits,
};
use crate::harness::script::{mix_seed, StreamScript, CREATED};
use crate::harness::split::{chunk_cuts, chunk_wire, split_chunk, Pause, SplitStrategy};

/// Largest request head the mock reads.
pub const MAX_REQUEST_HEAD: usize = 64 << 10;
/// Most request header fields.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// Largest request body kept in memory (`/echo`, `/v1/chat/completions`); past it 413.
pub const MAX_COLLECTED_BODY: usize = 16 << 20;
/// Largest single chunk in a request body.
pub const MAX_REQUEST_CHUNK: u64 = 16 << 20;
/// Seed stream of the mock's split positions (independent of the text's).
const SPLIT_SEED_STREAM: u64 = 0x5e11;

/// Largest token count a request may ask for.
pub const MAX_TOKENS: usize = 100_000;

/// How the mock behaves when a request does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// How each chunk's wire bytes are cut into writes.
    pub split: SplitStrategy,
    /// Seed of the text and of the split positions.
    pub seed: u64,
    /// Content tokens per completion.
    pub tokens: usize,
    /// Pause between tokens (between chunks).
    pub gap: Duration,
    /// Pause between the pieces of a split chunk (default 2 ms).
    pub split_gap: Duration,
    /// Fast mode: one write per chunk (no split) and a `sent_ns` timestamp in every event,
    /// for latency measurement. Request headers can still ask for a split.
    pub fast: bool,
    /// A keep-alive connection idle this long is closed, and a request body that takes longer
    /// than this is answered 408 (default 60 s).
    pub idle_timeout: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            split: SplitStrategy::None,
            seed: 1,
            tokens: 32,
            gap: Duration::ZERO,
            split_gap: Duration::from_millis(2),
            fast: false,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of a running mock.
#[derive(Debug, Default)]
pub struct MockStats {
    connections: AtomicU64,
    requests: AtomicU64,
    faults: AtomicU64,
}

impl MockStats {
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Requests whose head was read.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Requests answered with a fault.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

struct Shared {
    opts: MockOptions,
    stats: Arc<MockStats>,
    /// Times each `x-mock-fault` value carrying `count=` was applied.
    fault_uses: Mutex<HashMap<String, u32>>,
}

/// A bound mock upstream, not serving yet.
pub struct MockUpstream {
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockUpstream {
    /// Bind the listener (use port 0 for an ephemeral port).
    pub async fn bind(addr: SocketAddr, opts: MockOptions) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(MockUpstream {
            listener,
            addr,
            shared: Arc::new(Shared {
                opts,
                stats: Arc::new(MockStats::default()),
                fault_uses: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve in the background on the current tokio runtime. The server stops when the handle
    /// is dropped or [`MockHandle::shutdown`] is called; open connections are closed then.
    pub fn spawn(self) -> MockHandle {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stats = self.shared.stats.clone();
        let task = tokio::spawn(accept_loop(
            self.listener,
            self.shared,
            token.clone(),
            tracker.clone(),
        ));
        MockHandle {
            addr: self.addr,
            token,
            tracker,
            task: Some(task),
            stats,
        }
    }
}

/// A running mock upstream. Dropping it stops the server.
pub struct MockHandle {
    addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
    task: Option<JoinHandle<()>>,
    stats: Arc<MockStats>,
}

impl MockHandle {
    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mock's counters.
    pub fn stats(&self) -> &MockStats {
        &self.stats
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests()
    }

    /// Stop accepting, close every connection, and wait (at most 5 s) until all are gone.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of descriptors or a connection aborted before accept: back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let token = token.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = serve_connection(stream, shared) => {}
            }
        });
    }
}

/// A parsed `x-mock-fault` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// Answer with this status and an error body.
    pub status: Option<u16>,
    /// `Retry-After` value sent with `status`.
    pub retry_after: Option<u64>,
    /// Pause before the response head.
    pub stall: Option<Duration>,
    /// Pause between the head of a stream and its first chunk.
    pub first_byte: Option<Duration>,
    /// Pause in the middle of a stream.
    pub stall_mid: Option<Duration>,
    /// Chunks written before `stall_mid` (default 1).
    pub stall_after: usize,
    /// Reset the connection after this many chunks (and half of the next).
    pub reset_after: Option<usize>,
    /// Close the connection cleanly after this many chunks (and half of the next).
    pub close_after: Option<usize>,
    /// Write an invalid size line after this many chunks.
    pub malformed: Option<usize>,
    /// Apply to the first `count` requests with this header value only.
    pub count: Option<u32>,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let mut f = Fault {
            stall_after: 1,
            ..Fault::default()
        };
        for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let num = |v: Option<&str>| -> Result<u64, String> {
                let v = v.ok_or_else(|| format!("fault {key:?} needs a value"))?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("fault {key:?}: {v:?} is not a number"));
                }
                v.parse::<u64>()
                    .map_err(|_| format!("fault {key:?}: {v:?} is out of range"))
            };
            let count = |v: Option<&str>| -> Result<usize, String> {
                usize::try_from(num(v)?).map_err(|_| format!("fault {key:?} is out of range"))
            };
            let ms = |v: Option<&str>| num(v).map(Duration::from_millis);
            match key {
                "status" => {
                    let code = num(value)?;
                    if !(200..=599).contains(&code) {
                        return Err(format!("fault status {code} is not in 200..=599"));
                    }
                    f.status = Some(code as u16);
                }
                "retry-after" => f.retry_after = Some(num(value)?),
                "stall-ms" => f.stall = Some(ms(value)?),
                "first-byte-ms" => f.first_byte = Some(ms(value)?),
                "stall-mid-ms" => f.stall_mid = Some(ms(value)?),
                "stall-after" => f.stall_after = count(value)?,
                "reset-after" => f.reset_after = Some(count(value)?),
                "close-after" => f.close_after = Some(count(value)?),
                "malformed" => {
                    f.malformed = Some(match value {
                        Some(_) => count(value)?,
                        None => 1,
                    })
                }
                "count" => {
                    f.count = Some(
                        u32::try_from(num(value)?)
                            .map_err(|_| "fault count is out of range".to_string())?,
                    )
                }
                _ => return Err(format!("unknown fault {key:?}")),
            }
        }
        Ok(f)
    }
}

/// One request as the mock needs it.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    framing: Framing,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_num(&self, name: &str) -> Result<Option<u64>, String> {
        match self.header(name) {
            None => Ok(None),
            Some(v) => {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{name}: {v:?} is not a number"));
                }
                v.parse()
                    .map(Some)
                    .map_err(|_| format!("{name}: {v:?} is out of range"))
            }
        }
    }
}

/// Why a connection must end after the current answer.
#[derive(Debug)]
struct Refused {
    status: u16,
    message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// The limits the mock reads request heads with.
fn head_limits() -> PeerLimits {
    PeerLimits::default()
        .max_head_bytes(MAX_REQUEST_HEAD)
        .max_headers(MAX_REQUEST_HEADERS)
}

/// The answer to a head the mock cannot read: 431 for one too large, 400 otherwise.
fn refused_head(e: &HeadError) -> Refused {
    match e {
        HeadError::TooLarge { .. } => refused(431, "request head too large"),
        HeadError::TooManyHeaders { .. } => refused(431, "too many header fields"),
        e => refused(400, format!("invalid request head: {e}")),
    }
}

/// The request a parsed head describes, or why it is refused: 501 for a transfer coding other
/// than `chunked`, 400 for any other framing problem.
fn request_of(head: &HeadView<'_, '_>) -> Result<Request, Refused> {
    let framing = head.request_framing().map_err(|e| match e {
        FramingError::UnsupportedCoding => refused(501, e.to_string()),
        e => refused(400, e.to_string()),
    })?;
    Ok(Request {
        method: head.method.to_string(),
        path: head.target.to_string(),
        headers: head
            .fields
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        keep_alive: head.keep_alive(),
        framing,
    })
}

/// A request body as read.
#[derive(Default)]
struct Body {
    chunked: bool,
    chunks: Vec<Bytes>,
    chunk_count: u64,
    bytes: u64,
    reassembled: u64,
    trailers: Vec<Field>,
}

/// Read the body; `keep` says whether to keep its bytes (otherwise only count them).
async fn read_body(peer: &mut Peer, framing: Framing, keep: bool) -> Result<Body, Refused> {
    let mut body = Body::default();
    let too_large = || refused(413, "request body too large");
    match framing {
        Framing::None | Framing::Close => {}
        Framing::Length(n) => {
            if keep && n > MAX_COLLECTED_BODY as u64 {
                return Err(too_large());
            }
            let mut left = n;
            let mut kept = BytesMut::new();
            while left > 0 {
                if peer.buf.is_empty() {
                    match peer.read_more().await {
                        Ok(0) | Err(_) => return Err(refused(400, "request body ended early")),
                        Ok(_) => {}
                    }
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(peer.buf.len());
                if keep {
                    kept.extend_from_slice(&peer.buf[..take]);
                }
                peer.buf.advance(take);
                left -= take as u64;
            }
            body.bytes = n;
            if n > 0 {
                body.chunk_count = 1;
                if keep {
                    body.chunks.push(kept.freeze());
                }
            }
        }
        Framing::Chunked => {
            body.chunked = true;
            let mut dec = ChunkedDecoder::new(Limits::default().max_chunk_size(MAX_REQUEST_CHUNK));
            loop {
                match dec.decode(&mut peer.buf) {
                    Ok(Some(Frame::Data(d))) => {
                        body.chunk_count += 1;
                        body.bytes += d.len() as u64;
                        if keep {
                            if body.bytes > MAX_COLLECTED_BODY as u64 {
                                return Err(too_large());
                            }
                            body.chunks.push(d);
                        }
                    }
                    Ok(Some(Frame::Trailers(t))) => body.trailers = t,
                    Ok(Some(Frame::End)) => break,
                    Ok(None) => match peer.read_more().await {
                        Ok(0) | Err(_) => return Err(refused(400, "request body ended early")),
                        Ok(_) => {}
                    },
                    Err(e) if e.is_too_large() => return Err(refused(413, e.to_string())),
                    Err(e) => return Err(refused(400, e.to_string())),
                }
            }
            body.reassembled = dec.reassembled_chunks();
        }
    }
    Ok(body)
}

/// How an answer left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
    /// The connection was already reset or closed by a fault.
    Gone,
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut peer =
        Peer::with_buffer(stream, BytesMut::with_capacity(8 << 10)).with_limits(head_limits());
    loop {
        // Read a head, bounded by the idle timeout.
        let head = tokio::time::timeout(
            shared.opts.idle_timeout,
            peer.next_head_with(HeadKind::Request, request_of),
        )
        .await;
        let req = match head {
            Ok(Ok(Some(Ok(req)))) => req,
            Ok(Ok(Some(Err(e)))) => return refuse(&mut peer.stream, e).await,
            Ok(Err(e)) => match HeadError::of(&e) {
                Some(e) => return refuse(&mut peer.stream, refused_head(e)).await,
                // Closed or failed inside a head: nobody to answer.
                None => return,
            },
            Err(_) | Ok(Ok(None)) => return,
        };
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        match handle(&mut peer, &req, &shared).await {
            After::KeepAlive if req.keep_alive => {}
            After::Gone => return,
            _ => {
                let _ = peer.stream.shutdown().await;
                return;
            }
        }
    }
}

/// Answer a refused request; the connection ends after it.
async fn refuse(stream: &mut TcpStream, e: Refused) {
    let _ = write_error(stream, e.status, &e.message, None, false).await;
}

fn route_keeps_body(path: &str) -> bool {
    path != "/sink"
}

async fn handle(peer: &mut Peer, req: &Request, shared: &Shared) -> After {
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let expects_continue = req
        .header("expect")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    if expects_continue && req.framing != Framing::None && peer.send(interim).await.is_err() {
        return After::Gone;
    }
    let read = read_body(peer, req.framing, route_keeps_body(&path));
    let body = tokio::time::timeout(shared.opts.idle_timeout, read)
        .await
        .unwrap_or_else(|_| Err(refused(408, "request body timed out")));
    let stream = &mut peer.stream;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let _ = write_error(stream, e.status, &e.message, None, false).await;
            return After::Close;
        }
    };
    let fault = match req.header("x-mock-fault") {
        None => None,
        Some(v) => match v.parse::<Fault>() {
            Ok(f) => claim_fault(shared, v, f),
            Err(e) => {
                let msg = format!("x-mock-fault: {e}");
                return answer_error(stream, 400, &msg, None, req.keep_alive).await;
            }
        },
    };
    let fault = fault.unwrap_or_default();
    if let Some(d) = fault.stall {
        tokio::time::sleep(d).await;
    }
    if let Some(status) = fault.status {
        return answer_error(
            stream,
            status,
            "fault injected by x-mock-fault",
            fault.retry_after,
            req.keep_alive,
        )
        .await;
    }
    match (req.method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => chat(stream, req, &body, &fault, shared).await,
        ("GET" | "HEAD", "/v1/models") => {
            let json = format!(
                "{{\"object\":\"list\",\"data\":[{{\"id\":\"mock-1\",\"object\":\"model\",\"created\":{CREATED},\"owned_by\":\"chunkgate\"}}]}}"
            );
            answer_json(
                stream,
                200,
                json.as_bytes(),
                req.keep_alive,
                req.method == "HEAD",
            )
            .await
        }
        ("POST", "/echo") => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let json = serde_json::json!({
                "framing": if body.chunked { "chunked" } else if req.framing == Framing::None { "none" } else { "length" },
                "chunk_count": body.chunk_count,
                "bytes": body.bytes,
                "reassembled": body.reassembled,
                "chunks": body.chunks.iter().map(|c| b64.encode(c)).collect::<Vec<_>>(),
                "trailers": body.trailers.iter().map(|f| [
                    String::from_utf8_lossy(&f.name).into_owned(),
                    String::from_utf8_lossy(&f.value).into_owned(),
                ]).collect::<Vec<_>>(),
            });
            answer_json(
                stream,
                200,
                json.to_string().as_bytes(),
                req.keep_alive,
                false,
            )
            .await
        }
        ("POST", "/sink") => {
            let json = serde_json::json!({
                "framing": if body.chunked { "chunked" } else if req.framing == Framing::None { "none" } else { "length" },
                "chunk_count": body.chunk_count,
                "bytes": body.bytes,
            });
            answer_json(
                stream,
                200,
                json.to_string().as_bytes(),
                req.keep_alive,
                false,
            )
            .await
        }
        (_, "/v1/chat/completions" | "/v1/models" | "/echo" | "/sink") => {
            answer_error(stream, 405, "method not allowed", None, req.keep_alive).await
        }
        _ => answer_error(stream, 404, "no such route", None, req.keep_alive).await,
    }
}

/// Apply `count=` bookkeeping: `None` when this request is past the fault's count.
fn claim_fault(shared: &Shared, value: &str, fault: Fault) -> Option<Fault> {
    if let Some(limit) = fault.count {
        let mut uses = shared
            .fault_uses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let used = uses.entry(value.to_string()).or_insert(0);
        if *used >= limit {
            return None;
        }
        *used += 1;
    }
    shared.stats.faults.fetch_add(1, Ordering::Relaxed);
    Some(fault)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn write_error(
    stream: &mut TcpStream,
    status: u16,
    message: &str,
    retry_after: Option<u64>,
    keep_alive: bool,
) -> io::Result<()> {
    let kind = match status {
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": status }
    })
    .to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(s) = retry_after {
        head.push_str(&format!("retry-after: {s}\r\n"));
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    stream.flush().await
}

async fn answer_error(
    stream: &mut TcpStream,
    status: u16,
    message: &str,
    retry_after: Option<u64>,
    keep_alive: bool,
) -> After {
    match write_error(stream, status, message, retry_after, keep_alive).await {
        Ok(()) if keep_alive => After::KeepAlive,
        _ => After::Close,
    }
}

async fn answer_json(
    stream: &mut TcpStream,
    status: u16,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> After {
    let mut out =
        format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "" } else { "connection: close\r\n" }
    )
        .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    let ok = stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok();
    if ok && keep_alive {
        After::KeepAlive
    } else {
        After::Close
    }
}

/// Per-request settings resolved from options, headers and the JSON body.
struct ChatPlan {
    script: StreamScript,
    stream: bool,
    split: SplitStrategy,
    gaps: Gaps,
    timestamps: bool,
}

fn chat_plan(req: &Request, body: &Body, opts: &MockOptions) -> Result<ChatPlan, String> {
    let raw: Vec<u8> = body.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let json: serde_json::Value = if raw.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&raw).map_err(|e| format!("request body is not json: {e}"))?
    };
    let split = match req.header("x-mock-split") {
        Some(v) => v.parse()?,
        None if opts.fast => SplitStrategy::None,
        None => opts.split,
    };
    let seed = match req.header_num("x-mock-seed")? {
        Some(s) => s,
        None => json["seed"].as_u64().unwrap_or(opts.seed),
    };
    let mut tokens = match req.header_num("x-mock-tokens")? {
        Some(t) => usize::try_from(t).unwrap_or(usize::MAX),
        None => opts.tokens,
    };
    if let Some(max) = json["max_tokens"]
        .as_u64()
        .or_else(|| json["max_completion_tokens"].as_u64())
    {
        tokens = tokens.min(usize::try_from(max).unwrap_or(usize::MAX));
    }
    if tokens > MAX_TOKENS {
        return Err(format!("at most {MAX_TOKENS} tokens per completion"));
    }
    let gap = match req.header_num("x-mock-gap-ms")? {
        Some(ms) => Duration::from_millis(ms),
        None => opts.gap,
    };
    let split_gap = match req.header_num("x-mock-split-gap-ms")? {
        Some(ms) => Duration::from_millis(ms),
        None => opts.split_gap,
    };
    let timestamps = match req.header("x-mock-timestamps").map(str::trim) {
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(v) => return Err(format!("x-mock-timestamps: {v:?} is not 0 or 1")),
        None => opts.fast,
    };
    let mut script = StreamScript::new(seed, tokens);
    if let Some(m) = json["model"].as_str() {
        script.model = m.to_string();
    }
    script.include_usage = json["stream_options"]["include_usage"].as_bool() == Some(true);
    Ok(ChatPlan {
        script,
        stream: json["stream"].as_bool() == Some(true),
        split,
        gaps: Gaps {
            split: split_gap,
            token: gap,
            body: Duration::ZERO,
        },
        timestamps,
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn chat(
    stream: &mut TcpStream,
    req: &Request,
    body: &Body,
    fault: &Fault,
    shared: &Shared,
) -> After {
    let plan = match chat_plan(req, body, &shared.opts) {
        Ok(p) => p,
        Err(e) => return answer_error(stream, 400, &e, None, req.keep_alive).await,
    };
    if !plan.stream {
        return answer_json(
            stream,
            200,
            &plan.script.completion(),
            req.keep_alive,
            false,
        )
        .await;
    }
    match stream_events(stream, req, &plan, fault).await {
        Ok(after) => after,
        Err(_) => After::Gone,
    }
}

/// Write the SSE stream, one event per chunk, each chunk cut by the plan's strategy.
async fn stream_events(
    stream: &mut TcpStream,
    req: &Request,
    plan: &ChatPlan,
    fault: &Fault,
) -> io::Result<After> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\
transfer-encoding: chunked\r\nx-mock-split: {}\r\nx-mock-seed: {}\r\n{}\r\n",
        plan.split,
        plan.script.seed,
        if req.keep_alive { "" } else { "connection: close\r\n" }
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    if let Some(d) = fault.first_byte {
        tokio::time::sleep(d).await;
    }
    let mut rng = fastrand::Rng::with_seed(mix_seed(plan.script.seed, SPLIT_SEED_STREAM, 0));
    // Under `straddle`, the tail of the previous chunk goes out with the head of the next.
    let mut carry: Option<Bytes> = None;
    let total = plan.script.event_count();
    // A straddling write is cut inside a chunk: it waits for the next token and at least the
    // split gap, so it arrives as a read of its own.
    let straddle_gaps = Gaps {
        token: plan.gaps.token.max(plan.gaps.split),
        ..plan.gaps
    };
    let gaps = if plan.split == SplitStrategy::Straddle {
        straddle_gaps
    } else {
        plan.gaps
    };
    for i in 0..total {
        if i > 0 {
            pause(Pause::Token, gaps).await;
        }
        if fault.stall_mid.is_some() && i == fault.stall_after {
            if let Some(d) = fault.stall_mid {
                tokio::time::sleep(d).await;
            }
        }
        let stamp = plan.timestamps.then(now_ns);
        let payload = plan.script.event(i, stamp);
        if fault.malformed == Some(i) {
            if let Some(c) = carry.take() {
                stream.write_all(&c).await?;
            }
            stream.write_all(b"zz\r\n").await?;
            stream.write_all(&payload).await?;
            stream.flush().await?;
            return Ok(After::Close);
        }
        if fault.reset_after == Some(i) || fault.close_after == Some(i) {
            let wire = chunk_wire(&payload);
            if let Some(c) = carry.take() {
                stream.write_all(&c).await?;
            }
            stream.write_all(&wire[..wire.len() / 2]).await?;
            stream.flush().await?;
            if fault.reset_after == Some(i) {
                // An abortive close: SO_LINGER 0 makes the drop send RST, not FIN.
                #[allow(deprecated)] // set_zero_linger needs a newer tokio than the minimum.
                let _ = stream.set_linger(Some(Duration::ZERO));
                return Ok(After::Gone);
            }
            return Ok(After::Close);
        }
        if plan.split == SplitStrategy::Straddle {
            let wire = chunk_wire(&payload);
            let line = wire.len() - payload.len() - 2;
            let at = line
                + if payload.len() >= 2 {
                    rng.usize(1..payload.len())
                } else {
                    0
                };
            let mut out = BytesMut::new();
            if let Some(c) = carry.take() {
                out.extend_from_slice(&c);
            }
            out.extend_from_slice(&wire[..at]);
            stream.write_all(&out).await?;
            stream.flush().await?;
            carry = Some(wire.slice(at..));
        } else {
            let pieces = split_chunk(plan.split, &payload, Pause::None, &mut rng);
            write_pieces(stream, &pieces, plan.gaps).await?;
        }
    }
    // The last chunk, cut like the others.
    pause(Pause::Token, gaps).await;
    if let Some(c) = carry.take() {
        let mut out = BytesMut::from(&c[..]);
        out.extend_from_slice(LAST_CHUNK);
        stream.write_all(&out).await?;
        stream.flush().await?;
    } else {
        let end = Bytes::from_static(LAST_CHUNK);
        let cuts = chunk_cuts(plan.split, 3, &[], end.len(), &mut rng);
        let mut start = 0;
        for c in cuts.into_iter().chain(std::iter::once(end.len())) {
            if start > 0 {
                pause(
                    if plan.split == SplitStrategy::EveryByte {
                        Pause::Yield
                    } else {
                        Pause::Split
                    },
                    plan.gaps,
                )
                .await;
            }
            stream.write_all(&end[start..c]).await?;
            stream.flush().await?;
            start = c;
        }
    }
    Ok(After::KeepAlive)
}

/// `chunkgate mock-upstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// How each chunk is cut into writes: none, every-byte, random, utf8, size-line, crlf,
    /// straddle, mixed.
    #[arg(long, default_value = "none")]
    pub split: SplitStrategy,
    /// Seed of the text and of the split positions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Content tokens per completion.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Pause between tokens, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub gap_ms: u64,
    /// Pause between the pieces of a split chunk, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub split_gap_ms: u64,
    /// Fast mode: no split unless a request asks, and a `sent_ns` send timestamp in every event.
    #[arg(long)]
    pub fast: bool,
}

/// Entry point of `chunkgate mock-upstream`: serve until SIGINT or SIGTERM.
pub fn main(args: MockArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chunkgate mock-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let opts = MockOptions {
            split: args.split,
            seed: args.seed,
            tokens: args.tokens,
            gap: Duration::from_millis(args.gap_ms),
            split_gap: Duration::from_millis(args.split_gap_ms),
            fast: args.fast,
            ..MockOptions::default()
        };
        let mock = match MockUpstream::bind(args.listen, opts).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "chunkgate mock-upstream: cannot listen on {}: {e}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        println!(
            "mock upstream listening on http://{} (split {}, {} tokens, {} ms between tokens{})",
            mock.local_addr(),
            args.split,
            args.tokens,
            args.gap_ms,
            if args.fast { ", fast mode" } else { "" }
        );
        let handle = mock.spawn();
        wait_for_signal().await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Wait for SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::peer::parse_head_with;

    #[test]
    fn fault_parses_every_item() {
        let f: Fault = "status=429; retry-after=1;count=2".parse().unwrap();
        assert_eq!(f.status, Some(429));
        assert_eq!(f.retry_after, Some(1));
        assert_eq!(f.count, Some(2));
        let f: Fault = "reset-after=3".parse().unwrap();
        assert_eq!(f.reset_after, Some(3));
        let f: Fault = "malformed".parse().unwrap();
        assert_eq!(f.malformed, Some(1));
        let f: Fault = "stall-ms=20;first-byte-ms=5;stall-mid-ms=7;stall-after=4;close-after=9"
            .parse()
            .unwrap();
        assert_eq!(f.stall, Some(Duration::from_millis(20)));
        assert_eq!(f.first_byte, Some(Duration::from_millis(5)));
        assert_eq!(f.stall_mid, Some(Duration::from_millis(7)));
        assert_eq!(f.stall_after, 4);
        assert_eq!(f.close_after, Some(9));
    }

    #[test]
    fn fault_rejects_bad_items() {
        for bad in [
            "status",
            "status=abc",
            "status=99",
            "status=600",
            "stall-ms=-1",
            "reset-after=",
            "explode",
            "count=99999999999",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }

    /// The request in `raw` as the mock reads it: `Ok(None)` while incomplete.
    fn parse_request(raw: &[u8]) -> Result<Option<Request>, Refused> {
        parse_head_with(raw, HeadKind::Request, &head_limits(), request_of)
            .map_err(|e| refused_head(&e))?
            .transpose()
    }

    #[test]
    fn parse_request_decides_framing_strictly() {
        let ok = |raw: &[u8]| parse_request(raw).unwrap().unwrap();
        assert_eq!(
            ok(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        assert_eq!(
            ok(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n").framing,
            Framing::Length(12)
        );
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        let status = |raw: &[u8]| parse_request(raw).err().map(|e| e.status);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\n"), None);
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Some(431)
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nhost: x\n\r\n"), Some(400));
    }
}
