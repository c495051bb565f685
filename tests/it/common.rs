//! Peers and readers shared by the proxy's integration tests.
//!
//! Everything here runs over real sockets on 127.0.0.1:
//! - [`TestProxy`]: a chunkgate proxy served in the test process;
//! - [`Upstream`]: an upstream that counts the connections it accepts, either raw (a handler
//!   that drives the socket byte by byte) or hyper (an independent HTTP/1.1 implementation);
//! - [`Peer`]: the library's raw connection with its read buffer, whose strict readers parse
//!   heads with httparse and chunked bodies byte-exactly, recording the chunk boundaries
//!   received (re-exported here with assertions on what it read: [`ChunkedBodyExt`],
//!   [`RawResponseExt`]);
//! - [`hyper_client`]: hyper's HTTP/1.1 client as an independent client.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chunkgate::config::{Config, UpstreamUrl};
use chunkgate::metrics::Metrics;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The bound on one whole test: far above its normal run time, so only a hang trips it.
pub const TEST_LIMIT: Duration = Duration::from_secs(10);

/// How long a peer waits for the other side to close before calling it still open.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Run `fut`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Set in a child process started by [`alone`] to the name of the test it runs.
const ALONE_ENV: &str = "CHUNKGATE_IT_ALONE";

/// For a test that measures the whole process (its memory): run the test `name` (its path in
/// this binary, `module::test`) alone in a child process of this test binary. True in that
/// child, where the test goes on; false in the parent once the child passed. A child that
/// failed, or ran anything but that one test, fails the parent.
pub fn alone(name: &str) -> bool {
    if std::env::var(ALONE_ENV).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE_ENV, name)
        .output()
        .expect("start the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in its own process: {}\n{stdout}\n{stderr}",
        out.status
    );
    eprint!("{stderr}");
    false
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// An `http://` upstream URL for a local address.
pub fn http_url(addr: SocketAddr) -> UpstreamUrl {
    UpstreamUrl::parse(&format!("http://{addr}")).expect("a socket address is a valid upstream")
}

/// A configuration listening on an ephemeral port with one group of the given upstreams,
/// short retry backoff (tests must stay quick) and no access log.
pub fn config(upstreams: &[SocketAddr]) -> Config {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut cfg = Config::simple(listen, upstreams.iter().copied().map(http_url).collect());
    cfg.retry.base = Duration::from_millis(10);
    cfg.retry.cap = Duration::from_millis(100);
    cfg.log.access_log = false;
    cfg.drain_timeout = Duration::from_secs(5);
    cfg
}

/// A running proxy. Dropping it cancels its shutdown token.
pub struct TestProxy {
    /// The client listener's address.
    pub addr: SocketAddr,
    /// Cancel to start a graceful drain.
    pub stop: CancellationToken,
    /// The proxy's metrics registry.
    pub metrics: Arc<Metrics>,
    /// Installs a new configuration while it runs.
    pub reloader: chunkgate::proxy::Reloader,
    task: Option<JoinHandle<io::Result<bool>>>,
}

impl TestProxy {
    /// Bind and run a proxy with `cfg`.
    pub async fn start(cfg: Config) -> TestProxy {
        let proxy = chunkgate::proxy::Proxy::bind(cfg)
            .await
            .expect("the proxy binds");
        let addr = proxy.local_addr();
        let stop = proxy.shutdown_token();
        let metrics = proxy.metrics();
        let reloader = proxy.reloader();
        let task = tokio::spawn(proxy.run_drained());
        TestProxy {
            addr,
            stop,
            metrics,
            reloader,
            task: Some(task),
        }
    }

    /// A proxy in front of plain-HTTP upstreams, every other setting as [`config`].
    pub async fn to(upstreams: &[SocketAddr]) -> TestProxy {
        TestProxy::start(config(upstreams)).await
    }

    /// The value of the exported counter of chunks that arrived split over several reads
    /// and were reassembled before being forwarded, in `direction` (`request`/`response`).
    pub fn reassembled(&self, direction: &str) -> u64 {
        let text = self.metrics.encode();
        let label = format!("direction=\"{direction}\"");
        let line = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.contains("reassembled") && l.contains(&label));
        match line.and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok()) {
            // Counters are exported as whole numbers.
            Some(v) if v >= 0.0 => v as u64,
            _ => panic!("no reassembled-chunks counter for {direction} in:\n{text}"),
        }
    }

    /// Connect a raw client.
    pub async fn connect(&self) -> Peer {
        Peer::connect(self.addr)
            .await
            .expect("connect to the proxy")
    }

    /// Wait for `run_drained` to return (after someone cancelled [`TestProxy::stop`]).
    pub async fn join(mut self) -> io::Result<bool> {
        let task = self.task.take().expect("the proxy task is joined once");
        task.await.expect("the proxy task does not panic")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------------

/// A local upstream. It counts the connections it accepted (and, for hyper upstreams, the
/// requests it received). Dropping it stops accepting.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepts: Arc<AtomicUsize>,
    /// Requests received so far (hyper upstreams; raw handlers count their own).
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Requests received so far (hyper upstreams).
    pub fn requested(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw upstream: `handler(connection, index)` drives each accepted connection (index counts
/// from 0 in accept order) with `TCP_NODELAY` set.
pub async fn raw_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Peer, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an upstream");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepts);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let handler = Arc::clone(&handler);
            tokio::spawn(async move { handler(Peer::new(stream), index).await });
        }
    });
    Upstream {
        addr,
        accepts,
        requests,
        task,
    }
}

/// A hyper upstream: every request goes to `handler`, whose response hyper frames itself
/// (a [`TestBody::full`] gets a `Content-Length`, a [`TestBody::channel`] one chunk per
/// message sent).
pub async fn hyper_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an upstream");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let accept_count = Arc::clone(&accepts);
    let request_count = Arc::clone(&requests);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accept_count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let handler = Arc::clone(&handler);
            let request_count = Arc::clone(&request_count);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    request_count.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        accepts,
        requests,
        task,
    }
}

/// An address on 127.0.0.1 where nothing listens (bound once, then closed).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("a bound listener has an address");
    drop(l);
    addr
}

/// A body for hyper peers: whole (with a length) or streamed from a channel (one chunk per
/// message, the body ends when the sender is dropped).
pub enum TestBody {
    /// A body with a known length.
    Full(Option<Bytes>),
    /// A streamed body.
    Stream(mpsc::Receiver<Bytes>),
}

impl TestBody {
    /// A body with a known length.
    pub fn full(data: impl Into<Bytes>) -> TestBody {
        TestBody::Full(Some(data.into()))
    }

    /// An empty body.
    pub fn empty() -> TestBody {
        TestBody::Full(None)
    }

    /// A streamed body and the sender that feeds it.
    pub fn channel() -> (mpsc::Sender<Bytes>, TestBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, TestBody::Stream(rx))
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(data) => {
                Poll::Ready(data.take().map(|d| Ok(hyper::body::Frame::data(d))))
            }
            TestBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|d| d.map(|d| Ok(hyper::body::Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            TestBody::Full(d) => {
                hyper::body::SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
            TestBody::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// A response with the given status, headers and body.
pub fn response(status: u16, headers: &[(&str, &str)], body: TestBody) -> Response<TestBody> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(body).expect("a valid test response")
}

/// A hyper HTTP/1.1 client connection to `addr` (its connection task is spawned).
pub async fn hyper_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("hyper handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Collect a hyper body: its bytes, or the error that cut it.
pub async fn collect_body(body: Incoming) -> Result<Bytes, hyper::Error> {
    use http_body_util::BodyExt;
    body.collect().await.map(|c| c.to_bytes())
}

// ---------------------------------------------------------------------------------------------
// Raw peers: the library's, with test assertions on what they read
// ---------------------------------------------------------------------------------------------

pub use chunkgate::harness::peer::{
    canonical_chunk as chunk, BodyEnd, ChunkedBody, Peer, RawResponse, GAP,
};

/// Test assertions on a chunked body as a [`Peer`] recorded it.
pub trait ChunkedBodyExt {
    /// The chunks as text (each must be valid UTF-8).
    fn texts(&self) -> Vec<String>;

    /// Assert the wire bytes are exactly the canonical framing of the chunks: lowercase hex
    /// size without leading zeros, no extensions, CRLF, payload, CRLF, then `0\r\n`, the
    /// trailers and the final CRLF.
    fn assert_canonical(&self);
}

impl ChunkedBodyExt for ChunkedBody {
    fn texts(&self) -> Vec<String> {
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, c)| match std::str::from_utf8(c) {
                Ok(s) => s.to_string(),
                Err(e) => panic!("chunk {i} is not valid UTF-8 ({e}): {c:?}"),
            })
            .collect()
    }

    fn assert_canonical(&self) {
        assert_eq!(
            String::from_utf8_lossy(&self.raw),
            String::from_utf8_lossy(&self.canonical_wire()),
            "chunked framing is not canonical"
        );
    }
}

/// Test assertions on a whole response as a [`Peer`] read it.
pub trait RawResponseExt {
    /// The body parsed as the OpenAI-style error `{"error":{"message","type","code"}}`,
    /// asserting its shape; returns `(type, code)`.
    fn error_json(&self) -> (String, String);
}

impl RawResponseExt for RawResponse {
    fn error_json(&self) -> (String, String) {
        assert_error_json(&self.body)
    }
}

/// Assert `body` is `{"error":{"message":<non-empty string>,"type":<string>,"code":<string>}}`
/// and return `(type, code)`.
pub fn assert_error_json(body: &[u8]) -> (String, String) {
    match parse_error_json(body) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Check `body` is an OpenAI-style error and return `(type, code)`, or say what is wrong.
pub fn parse_error_json(body: &[u8]) -> Result<(String, String), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    let err = &v["error"];
    let text = |k: &str| -> Result<String, String> {
        err[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("error body lacks a string error.{k}: {v}"))
    };
    let message = text("message")?;
    if message.is_empty() {
        return Err(format!("empty error message: {v}"));
    }
    Ok((text("type")?, text("code")?))
}

/// A response head for a chunked body.
pub const CHUNKED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A complete `200 OK` with a `Content-Length` body.
pub fn ok_response(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// OpenAI-style chat-completion SSE events with Korean and emoji text, each a whole
/// `data: {...}\n\n` event, then `data: [DONE]\n\n`.
pub fn sse_events() -> Vec<String> {
    let pieces = [
        "안녕하세요",
        " 👋",
        " 스트리밍",
        " 테스트",
        "입니다 🚀",
        " 한국어와",
        " 이모지 😀🎉",
        " 👨‍👩‍👧‍👦 가족",
        "!",
    ];
    let mut events: Vec<String> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v = serde_json::json!({
                "id": "chatcmpl-7",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000 + i,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}],
            });
            format!("data: {v}\n\n")
        })
        .collect();
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// Assert `event` is one whole SSE event: `data: ` then `[DONE]` or a JSON object, then a
/// blank line, and nothing else.
pub fn assert_whole_event(event: &str) {
    let Some(inner) = event
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
    else {
        panic!("not one whole SSE event: {event:?}");
    };
    assert!(!inner.contains('\n'), "more than one line in {event:?}");
    if inner != "[DONE]" {
        let v: serde_json::Value = match serde_json::from_str(inner) {
            Ok(v) => v,
            Err(e) => panic!("event data is not JSON ({e}): {event:?}"),
        };
        assert!(v.is_object(), "event data is not a JSON object: {event:?}");
    }
}

/// The wire bytes of one chunk carrying `payload`, cut into pieces at the places a proxy
/// that forwards reads instead of chunks would break: inside the size line (when it has two
/// digits or more, else just before its CR), inside the first multi-byte UTF-8 sequence,
/// inside the JSON, just before the payload's CRLF, and between its CR and LF.
pub fn hostile_pieces(payload: &[u8]) -> Vec<Vec<u8>> {
    let wire = chunk(payload);
    let line_len = wire
        .iter()
        .position(|&b| b == b'\r')
        .expect("a size line ends in CR")
        + 2;
    let mut cuts = vec![if line_len > 3 { 1 } else { line_len - 2 }];
    if let Some(i) = payload.iter().position(|&b| b >= 0x80) {
        cuts.push(line_len + i + 1);
    }
    if let Some(i) = payload.windows(2).position(|w| w == b"\":") {
        cuts.push(line_len + i + 1);
    }
    cuts.push(line_len + payload.len());
    cuts.push(line_len + payload.len() + 1);
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        if c > at && c < wire.len() {
            pieces.push(wire[at..c].to_vec());
            at = c;
        }
    }
    pieces.push(wire[at..].to_vec());
    pieces
}

/// The process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
