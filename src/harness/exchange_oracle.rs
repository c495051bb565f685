//! The whole-exchange oracle: arbitrary client bytes and arbitrary upstream answers through a
//! running proxy, shared by the `exchange` fuzz target and the seed-replay test.
//!
//! [`check_exchange`] reads an input (format below), serves it on real sockets on 127.0.0.1
//! (one or two clients, a proxy bound for this input, a scripted upstream) and panics when the
//! proxy breaks one of these promises:
//!
//! - **No panic.** No task of the process panics while the exchange runs (a panic hook counts
//!   them; under libFuzzer any panic aborts anyway).
//! - **Bounded time.** Every client connection is closed by the proxy within
//!   [`CLIENT_LIMIT`], the proxy drains within its (short) drain deadline once every client
//!   is gone, and every upstream connection is closed within [`UPSTREAM_GRACE`] after that.
//! - **Well-formed upstream requests.** What the proxy writes on an upstream connection is a
//!   sequence of HTTP/1.1 requests (heads read by `httparse`, CRLF only, exactly one framing
//!   field, bodies read by [`ChunkedDecoder`] or by length); only the last may be cut short.
//! - **One upstream request per client request.** Each upstream request names the client it
//!   came from (`X-Forwarded-For`: each client connects from its own loopback address), and the
//!   upstream requests of one client, in the order their heads arrived, follow that client's
//!   requests as an independent reading of its bytes lists them (`httparse` heads,
//!   `Content-Length` or chunked bodies): the same method, a body that is a prefix of the
//!   client's (the same body whenever the upstream request is complete, and complete only
//!   when the client's is), never a request the client did not send. With retries enabled
//!   (an input option), a request may go up once per allowed attempt, never more.
//! - **No bytes across clients.** Each client's bytes carry its own marker (the placeholder
//!   [`PLACEHOLDER`] in its section is replaced by [`MARKERS`]`[i]`); an upstream request from
//!   one client never holds the other's marker, and neither does what a client receives.
//!
//! # Input
//! Sections separated by [`SECTION`] (`"\n%%\n"`):
//!
//! 0. options: the low bits of the first byte (see [`Options`]);
//! 1. client A, 2. client B (empty: no such client): a mode byte (see [`ClientScript`]),
//!    then the bytes the client sends;
//! 3. and after: the upstream's answers (at most [`MAX_ANSWERS`]), one per request head the
//!    upstream receives, in arrival order over all its connections: a mode byte (see
//!    [`Answer`]), then the bytes written. Once they run out the upstream closes each
//!    connection that brings another request.
//!
//! In the client and answer bytes, [`SPLIT`] (`"%|"`) ends a write (the writer yields before
//! the next) and [`WAIT`] (`"%w"`) ends a write and pauses: a client waits until more of its
//! response arrived after its previous write (at most [`WAIT_LIMIT`]), the upstream sleeps
//! 2 ms. An input that holds a marker itself is skipped.
//!
//! ```
//! use chunkgate::harness::exchange_oracle::check_exchange;
//!
//! check_exchange(
//!     b"0\n%%\n0GET /@mark@ HTTP/1.1\r\nHost: a\r\n\r\n\n%%\n\n%%\n\
//!       0HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n%|ok",
//! );
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder;

use crate::codec::chunked::{ChunkedDecoder, Frame, Limits as ChunkLimits};
use crate::config::{Config, UpstreamUrl};
use crate::harness::peer::{parse_head_with, Framing, HeadKind, PeerLimits, HEADERS_CAPACITY};
use crate::proxy::Proxy;

/// Separates the sections of an input.
pub const SECTION: &[u8] = b"\n%%\n";
/// Ends a write in a client's or an answer's bytes.
pub const SPLIT: &[u8] = b"%|";
/// Ends a write and pauses (a client: until response bytes arrived after its previous write;
/// the upstream: 2 ms).
pub const WAIT: &[u8] = b"%w";
/// Replaced by the client's marker in a client's bytes (as long as a marker, so that a
/// `Content-Length` or chunk size written around it stays right).
pub const PLACEHOLDER: &[u8] = b"@mark@";
/// The markers of client A and client B.
pub const MARKERS: [&[u8]; 2] = [b"qzvAjx", b"qzvBjx"];
/// Most upstream answers read from an input.
pub const MAX_ANSWERS: usize = 16;
/// Longest a client waits at a [`WAIT`].
pub const WAIT_LIMIT: Duration = Duration::from_millis(25);
/// Longest the proxy may keep a client connection open.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(5);
/// Longest an upstream connection may stay open once the proxy has drained.
pub const UPSTREAM_GRACE: Duration = Duration::from_secs(1);
/// Longest one input may take in all.
pub const ITERATION_LIMIT: Duration = Duration::from_secs(10);

/// The proxy's timeouts for every input: short, so that an input that waits for one costs
/// little (the fuzzer's rate depends on it) and a hang shows. Longer than the proxy needs to
/// handle any input's bytes, even when the machine is busy; a timeout that fires early only
/// takes another path.
const PROXY_TIMEOUT: Duration = Duration::from_millis(10);
/// The proxy's drain deadline; reached only if a connection task outlives its client.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Most [`WAIT`]s a client honours.
const MAX_CLIENT_WAITS: usize = 4;
/// Yields between two writes, so the peer can read one write before the next arrives.
const YIELDS_BETWEEN_WRITES: usize = 4;
/// The address each client connects from (the proxy writes it as `X-Forwarded-For`).
const CLIENT_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
/// Client source ports cycle through this range (below the kernel's ephemeral range): a port
/// chosen by the kernel could not be reused while an earlier connection's TIME_WAIT holds it.
const CLIENT_PORTS: Range<u16> = 20_000..30_000;
/// The proxy listens on a port of this range, the same for every input while it is free
/// (outside the ephemeral range, so no outgoing connection takes it between two inputs).
const PROXY_PORTS: Range<u16> = 31_000..31_800;
/// The upstream listens on a port of this range, likewise. A listener of its own for each
/// input: closing it drops connections of an earlier input that were never accepted.
const UPSTREAM_PORTS: Range<u16> = 31_800..32_600;

/// Proxy settings chosen by an input's first byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Bit 0: two attempts per request (retries on statuses 429, 502-504 and on connect
    /// errors); otherwise one.
    pub retries: bool,
    /// Bit 1: no upstream connection is kept for reuse.
    pub no_pool: bool,
    /// Bit 2: `Content-Length` request bodies stream (none is read whole first).
    pub stream_length_bodies: bool,
    /// Bit 3: small limits (1 KiB heads, 16 fields, 64-byte chunks, 256-byte request bodies).
    pub small_limits: bool,
}

impl Options {
    fn from_byte(b: u8) -> Options {
        Options {
            retries: b & 1 != 0,
            no_pool: b & 2 != 0,
            stream_length_bodies: b & 4 != 0,
            small_limits: b & 8 != 0,
        }
    }

    fn max_attempts(self) -> usize {
        if self.retries {
            2
        } else {
            1
        }
    }

    /// The proxy's configuration for this input.
    fn config(self, listen: SocketAddr, upstream: SocketAddr) -> Config {
        let url = UpstreamUrl::parse(&format!("http://{upstream}")).expect("a loopback URL");
        let mut c = Config::simple(listen, vec![url]);
        let t = &mut c.timeouts;
        t.connect = PROXY_TIMEOUT;
        t.tls_handshake = PROXY_TIMEOUT;
        t.response_head = PROXY_TIMEOUT;
        t.stream_idle = PROXY_TIMEOUT;
        t.client_head = PROXY_TIMEOUT;
        t.client_idle = PROXY_TIMEOUT;
        t.client_write_stall = PROXY_TIMEOUT;
        t.client_body_grace = PROXY_TIMEOUT;
        c.drain_timeout = DRAIN_LIMIT;
        c.log.access_log = false;
        // The breaker never opens: every request of an input reaches the upstream.
        c.breaker.consecutive_failures = 0;
        c.breaker.min_requests = 1_000_000;
        c.retry.max_attempts = u32::try_from(self.max_attempts()).unwrap_or(1);
        c.retry.base = Duration::from_millis(1);
        c.retry.cap = Duration::from_millis(1);
        c.retry.budget_min_per_sec = 1_000;
        // Idle connections older than this are reaped; the reaper task ends with the pool.
        c.pool.idle_timeout = Duration::from_millis(50);
        if self.no_pool {
            c.pool.max_idle_per_upstream = 0;
        }
        if self.stream_length_bodies {
            c.limits.buffer_request_body = 0;
        }
        if self.small_limits {
            c.limits.head.max_head_bytes = 1024;
            c.limits.head.max_request_line = 256;
            c.limits.head.max_headers = 16;
            c.limits.chunk = c.limits.chunk.max_chunk_size(64).max_trailer_bytes(256);
            c.limits.max_request_body = Some(256);
        }
        c
    }
}

/// What a writer does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Write these bytes (one write), then yield.
    Bytes(Vec<u8>),
    /// Pause (see [`WAIT`]).
    Wait,
}

/// Split `bytes` into writes at [`SPLIT`] and [`WAIT`].
fn pieces(bytes: &[u8]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        let token = &bytes[i..i + 2];
        if token == SPLIT || token == WAIT {
            if i > start {
                out.push(Piece::Bytes(bytes[start..i].to_vec()));
            }
            if token == WAIT {
                out.push(Piece::Wait);
            }
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < bytes.len() {
        out.push(Piece::Bytes(bytes[start..].to_vec()));
    }
    out
}

/// One client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientScript {
    /// Mode bit 0: keep the sending side open after the last write (the proxy closes the
    /// connection when idle); otherwise shut it down.
    pub keep_open: bool,
    /// Mode bit 1: close the connection as soon as the first response bytes arrive.
    pub leave_early: bool,
    /// The writes, placeholder replaced.
    pub pieces: Vec<Piece>,
}

impl ClientScript {
    fn parse(section: &[u8], marker: &[u8]) -> ClientScript {
        let mode = section.first().copied().unwrap_or(0);
        let body = section.get(1..).unwrap_or_default();
        let pieces = pieces(body)
            .into_iter()
            .map(|p| match p {
                Piece::Bytes(b) => Piece::Bytes(replace(&b, PLACEHOLDER, marker)),
                Piece::Wait => Piece::Wait,
            })
            .collect();
        ClientScript {
            keep_open: mode & 1 != 0,
            leave_early: mode & 2 != 0,
            pieces,
        }
    }

    /// Every byte the client means to send.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            if let Piece::Bytes(b) = p {
                out.extend_from_slice(b);
            }
        }
        out
    }
}

/// One upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Mode bit 0: answer once the whole request body arrived; otherwise right after the head.
    pub after_body: bool,
    /// Mode bit 1: shut down the sending side after the answer (the connection serves no
    /// more requests).
    pub close: bool,
    /// The writes.
    pub pieces: Vec<Piece>,
}

impl Answer {
    fn parse(section: &[u8]) -> Answer {
        let mode = section.first().copied().unwrap_or(0);
        Answer {
            after_body: mode & 1 != 0,
            close: mode & 2 != 0,
            pieces: pieces(section.get(1..).unwrap_or_default()),
        }
    }
}

/// A parsed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeInput {
    /// Proxy settings.
    pub options: Options,
    /// Client A and client B.
    pub clients: [Option<ClientScript>; 2],
    /// The upstream's answers, in order.
    pub answers: Vec<Answer>,
}

impl ExchangeInput {
    /// Read an input; `None` when it holds one of the [`MARKERS`] itself.
    pub fn parse(data: &[u8]) -> Option<ExchangeInput> {
        if MARKERS.iter().any(|m| memmem::find(data, m).is_some()) {
            return None;
        }
        let sections = split_sections(data);
        let options =
            Options::from_byte(sections.first().and_then(|s| s.first()).map_or(0, |b| *b));
        let client = |i: usize| {
            sections
                .get(1 + i)
                .filter(|s| !s.is_empty())
                .map(|s| ClientScript::parse(s, MARKERS[i]))
        };
        let clients = [client(0), client(1)];
        let answers = sections
            .iter()
            .skip(3)
            .take(MAX_ANSWERS)
            .map(|s| Answer::parse(s))
            .collect();
        Some(ExchangeInput {
            options,
            clients,
            answers,
        })
    }
}

fn split_sections(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = memmem::find(rest, SECTION) {
        out.push(&rest[..i]);
        rest = &rest[i + SECTION.len()..];
    }
    out.push(rest);
    out
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(i) = memmem::find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Bytes for a message: printable ASCII as is, the rest escaped, long runs cut.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 600;
    let shown = bytes.get(..MAX).unwrap_or(bytes);
    let mut s = shown.escape_ascii().to_string();
    if bytes.len() > MAX {
        let _ = write!(s, "... ({} bytes)", bytes.len());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The fixture: one runtime and one upstream listener per process, a proxy per input
// ---------------------------------------------------------------------------------------------

/// The runtime, and the ports every input's proxy and upstream listen on.
struct Fixture {
    rt: tokio::runtime::Runtime,
    proxy_port: AtomicU16,
    upstream_port: AtomicU16,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
static NEXT_CLIENT_PORT: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

thread_local! {
    /// Panics on this thread: every task of the (current-thread) runtime runs on the thread
    /// that drives it, and a test's other threads must not count.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}
/// One input at a time (tests may call from several threads): inputs share the ports.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // A write to a closed socket raises SIGPIPE (vectored writes send no MSG_NOSIGNAL).
        // Rust's own `main` ignores it; libFuzzer's does not, so catch it here: once a tokio
        // handler is installed the signal no longer ends the process.
        // The handler stays installed once the stream is dropped.
        drop(rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
                .expect("a SIGPIPE handler")
        }));
        Fixture {
            rt,
            proxy_port: AtomicU16::new(PROXY_PORTS.start),
            upstream_port: AtomicU16::new(UPSTREAM_PORTS.start),
        }
    })
}

/// Count every panic, per thread (the hook before this one still runs).
fn count_panics() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Run one input through the proxy and check every promise listed in the module docs;
/// panics when one is broken. An input holding a marker is skipped.
pub fn check_exchange(data: &[u8]) {
    if let Some(input) = ExchangeInput::parse(data) {
        run_checked(&input);
    }
}

/// [`check_exchange`], then what happened, for a person reading a seed or a finding: what
/// each client received and the requests each upstream connection read. `None` for an input
/// that is skipped.
pub fn explain_exchange(data: &[u8]) -> Option<String> {
    let input = ExchangeInput::parse(data)?;
    let run = run_checked(&input);
    let mut out = String::new();
    for (i, received) in run.received.iter().enumerate() {
        if let Some(received) = received {
            let _ = writeln!(out, "client {i} received: {}", show(received));
        }
    }
    for (c, conn) in run.upstream.iter().enumerate() {
        let _ = writeln!(out, "upstream connection {c}:");
        for r in &conn.requests {
            let _ = writeln!(
                out,
                "  request {}: {} from {:?}, body {}{}",
                r.seq,
                show(&r.method),
                r.forwarded_for.iter().map(|v| show(v)).collect::<Vec<_>>(),
                show(&r.body),
                if r.complete { "" } else { " (cut)" }
            );
        }
    }
    Some(out)
}

fn run_checked(input: &ExchangeInput) -> Run {
    let _one = lock(&ONE_AT_A_TIME);
    count_panics();
    let fx = fixture();
    let panics = PANICS.with(Cell::get);
    let run = fx
        .rt
        .block_on(async { tokio::time::timeout(ITERATION_LIMIT, run(fx, input)).await });
    let Ok(run) = run else {
        panic!("the exchange did not end within {ITERATION_LIMIT:?}");
    };
    assert_eq!(
        PANICS.with(Cell::get),
        panics,
        "a task panicked during the exchange"
    );
    check(input, &run);
    run
}

/// What one input did.
struct Run {
    /// The proxy's chunked-body limits and most header fields (for reading client bytes).
    chunk_limits: ChunkLimits,
    max_headers: usize,
    /// What each client received (`None`: no such client).
    received: [Option<Vec<u8>>; 2],
    /// Every upstream connection, in the order it was accepted.
    upstream: Vec<ConnLog>,
}

async fn run(fx: &Fixture, input: &ExchangeInput) -> Run {
    let state = Arc::new(UpstreamState {
        answers: Mutex::new(input.answers.iter().cloned().collect()),
        next_seq: AtomicUsize::new(0),
        conns: Mutex::new(Vec::new()),
    });
    let listener = bind_in(&fx.upstream_port, UPSTREAM_PORTS, "the upstream", |addr| {
        TcpListener::bind(addr)
    })
    .await;
    let upstream_addr = listener.local_addr().expect("a bound listener's address");
    let accept = tokio::spawn(accept_upstream(listener, Arc::clone(&state)));
    let config = |listen| input.options.config(listen, upstream_addr);
    let proxy = bind_in(&fx.proxy_port, PROXY_PORTS, "the proxy", |listen| {
        Proxy::bind(config(listen))
    })
    .await;
    let proxy_addr = proxy.local_addr();
    let stop = proxy.shutdown_token();
    let proxy_run = tokio::spawn(proxy.run_drained());

    let client = |i: usize| async move {
        match &input.clients[i] {
            Some(script) => Some(run_client(i, script, proxy_addr).await),
            None => None,
        }
    };
    let (a, b) = tokio::join!(client(0), client(1));

    stop.cancel();
    let drained = match proxy_run.await {
        Ok(Ok(drained)) => drained,
        Ok(Err(e)) => panic!("the proxy failed: {e}"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    assert!(
        drained,
        "connection tasks were still running {DRAIN_LIMIT:?} after every client connection closed"
    );
    // The proxy is gone: every upstream connection is closed or closing. Closing the
    // listener drops any connection still waiting to be accepted.
    accept.abort();
    let _ = accept.await;
    let handlers: Vec<UpstreamConn> = std::mem::take(&mut *lock(&state.conns));
    let deadline = tokio::time::Instant::now() + UPSTREAM_GRACE;
    let mut upstream = Vec::new();
    for (handle, log) in handlers {
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("an upstream connection task failed: {e}"),
            Err(_) => panic!(
                "an upstream connection was still open {UPSTREAM_GRACE:?} after the proxy drained"
            ),
        }
        upstream.push(std::mem::take(&mut *lock(&log)));
    }
    let limits = config(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).limits;
    Run {
        chunk_limits: limits.chunk,
        max_headers: limits.head.max_headers,
        received: [a, b],
        upstream,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bind `what` on 127.0.0.1 at the port in `slot`, moving on through `ports` while the
/// port is taken.
async fn bind_in<T, F, Fut>(slot: &AtomicU16, ports: Range<u16>, what: &str, bind: F) -> T
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    for _ in ports.clone() {
        let port = slot.load(Ordering::Relaxed);
        match bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
            Ok(bound) => return bound,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let next = port.saturating_add(1);
                let next = if ports.contains(&next) {
                    next
                } else {
                    ports.start
                };
                slot.store(next, Ordering::Relaxed);
            }
            Err(e) => panic!("cannot bind {what}: {e}"),
        }
    }
    panic!("no free port for {what} in {ports:?}");
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

async fn yield_between_writes() {
    for _ in 0..YIELDS_BETWEEN_WRITES {
        tokio::task::yield_now().await;
    }
}

async fn connect_client(i: usize, proxy: SocketAddr) -> TcpStream {
    let span = usize::from(CLIENT_PORTS.end - CLIENT_PORTS.start);
    for _ in 0..64 {
        let n = NEXT_CLIENT_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let port = CLIENT_PORTS.start + u16::try_from(n).unwrap_or(0);
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        if socket
            .bind(SocketAddr::from((CLIENT_IPS[i], port)))
            .is_err()
        {
            continue;
        }
        match socket.connect(proxy).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return s;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) => {}
            Err(e) => panic!("client {i} cannot connect to the proxy: {e}"),
        }
    }
    panic!("client {i}: no free source port in {CLIENT_PORTS:?}");
}

/// Send the script's bytes while reading the response; what was received, once the proxy
/// closed the connection (or the client left).
async fn run_client(i: usize, script: &ClientScript, proxy: SocketAddr) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + CLIENT_LIMIT;
    let stream = connect_client(i, proxy).await;
    let (mut rd, mut wr) = stream.into_split();
    let received = RefCell::new(Vec::new());
    let received_len = Cell::new(0usize);
    let ended = Cell::new(false);
    let more = Notify::new();
    let reader = async {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                Err(_) => {
                    panic!("client {i}: the proxy kept the connection open for {CLIENT_LIMIT:?}")
                }
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    received.borrow_mut().extend_from_slice(&buf[..n]);
                    received_len.set(received_len.get() + n);
                    more.notify_waiters();
                    if script.leave_early {
                        break;
                    }
                }
            }
        }
        ended.set(true);
        more.notify_waiters();
    };
    let writer = async {
        let mut waits = 0;
        // How much of the response had arrived when the latest write began.
        let mut before_write = 0;
        let mut written = 0;
        for piece in &script.pieces {
            if ended.get() && script.leave_early {
                break;
            }
            match piece {
                Piece::Bytes(b) => {
                    if written > 0 {
                        yield_between_writes().await;
                    }
                    written += 1;
                    before_write = received_len.get();
                    if wr.write_all(b).await.is_err() {
                        break;
                    }
                }
                Piece::Wait if waits < MAX_CLIENT_WAITS => {
                    waits += 1;
                    let _ = tokio::time::timeout(WAIT_LIMIT, async {
                        while received_len.get() == before_write && !ended.get() {
                            more.notified().await;
                        }
                    })
                    .await;
                }
                Piece::Wait => {}
            }
        }
        // Right after the last write, like a client that half-closes after its request.
        if !script.keep_open {
            let _ = wr.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
    received.into_inner()
}

// ---------------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------------

struct UpstreamState {
    answers: Mutex<VecDeque<Answer>>,
    /// Order of request heads over every connection.
    next_seq: AtomicUsize,
    conns: Mutex<Vec<UpstreamConn>>,
}

/// An upstream connection's task and what it records.
type UpstreamConn = (JoinHandle<()>, Arc<Mutex<ConnLog>>);

/// What one upstream connection received.
#[derive(Debug, Default)]
struct ConnLog {
    raw: Vec<u8>,
    requests: Vec<UpRequest>,
    /// Why the bytes are not a sequence of requests, if they are not.
    malformed: Option<String>,
}

/// One request as the upstream read it.
#[derive(Debug)]
struct UpRequest {
    /// Position of its head among all request heads of the input.
    seq: usize,
    /// Its bytes in [`ConnLog::raw`] (as far as they were read).
    span: Range<usize>,
    method: Vec<u8>,
    forwarded_for: Vec<Vec<u8>>,
    body: Vec<u8>,
    complete: bool,
}

async fn accept_upstream(listener: TcpListener, state: Arc<UpstreamState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let log = Arc::new(Mutex::new(ConnLog::default()));
        let handle = tokio::spawn(serve_upstream(stream, Arc::clone(&state), Arc::clone(&log)));
        lock(&state.conns).push((handle, log));
    }
}

/// What the upstream's reading of a connection noticed.
enum Event {
    Head,
    BodyEnd,
}

async fn serve_upstream(stream: TcpStream, state: Arc<UpstreamState>, log: Arc<Mutex<ConnLog>>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = UpstreamReader::default();
    let mut pending: Option<Answer> = None;
    let mut closed = false;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let events = reader.feed(&buf[..n], &mut lock(&log), &state.next_seq);
        for event in events {
            match event {
                Event::Head if !closed => {
                    let next = lock(&state.answers).pop_front();
                    match next {
                        Some(a) if a.after_body => pending = Some(a),
                        Some(a) => closed = write_answer(&mut wr, &a).await,
                        None => {
                            let _ = wr.shutdown().await;
                            closed = true;
                        }
                    }
                }
                Event::Head => {}
                Event::BodyEnd => {
                    if let Some(a) = pending.take() {
                        closed = write_answer(&mut wr, &a).await;
                    }
                }
            }
        }
    }
    reader.finish(&mut lock(&log));
    // The proxy closed its side: end without a FIN of ours, so that no TIME_WAIT is left on
    // the proxy's (ephemeral) port.
    if let Ok(stream) = rd.reunite(wr) {
        let _ = stream.set_zero_linger();
    }
}

/// Write an answer; whether the sending side is now shut (or broken).
async fn write_answer(wr: &mut tokio::net::tcp::OwnedWriteHalf, answer: &Answer) -> bool {
    let mut written = 0;
    for piece in &answer.pieces {
        match piece {
            Piece::Bytes(b) => {
                if written > 0 {
                    yield_between_writes().await;
                }
                written += 1;
                if wr.write_all(b).await.is_err() {
                    return true;
                }
            }
            Piece::Wait => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    if answer.close {
        let _ = wr.shutdown().await;
    }
    answer.close
}

/// Reads the proxy's requests on one upstream connection, strictly.
#[derive(Default)]
struct UpstreamReader {
    buf: BytesMut,
    /// Offset in the connection's bytes of `buf[0]`.
    offset: usize,
    state: UpState,
}

/// What the reader expects next.
#[derive(Default)]
enum UpState {
    #[default]
    Head,
    Length {
        remaining: u64,
    },
    Chunked(Box<ChunkedDecoder>),
    /// The bytes are not a request: nothing more is read.
    Broken,
}

impl UpstreamReader {
    fn feed(&mut self, data: &[u8], log: &mut ConnLog, seq: &AtomicUsize) -> Vec<Event> {
        log.raw.extend_from_slice(data);
        let mut events = Vec::new();
        if matches!(self.state, UpState::Broken) {
            return events;
        }
        self.buf.extend_from_slice(data);
        loop {
            match &mut self.state {
                UpState::Broken => break,
                UpState::Head => {
                    if self.buf.is_empty() {
                        break;
                    }
                    match self.head(log, seq) {
                        Ok(Some(has_body)) => {
                            events.push(Event::Head);
                            if !has_body {
                                events.push(Event::BodyEnd);
                            }
                        }
                        Ok(None) => break,
                        Err(why) => {
                            self.broken(log, why);
                            break;
                        }
                    }
                }
                UpState::Length { remaining } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    let req = log.requests.last_mut().expect("a request in progress");
                    req.body.extend_from_slice(&self.buf[..take]);
                    self.buf.advance(take);
                    self.offset += take;
                    req.span.end = self.offset;
                    if !done {
                        break;
                    }
                    req.complete = true;
                    events.push(Event::BodyEnd);
                    self.state = UpState::Head;
                }
                UpState::Chunked(dec) => {
                    let before = self.buf.len();
                    let frame = dec.decode(&mut self.buf);
                    self.offset += before - self.buf.len();
                    let req = log.requests.last_mut().expect("a request in progress");
                    req.span.end = self.offset;
                    match frame {
                        Ok(Some(Frame::Data(d))) => req.body.extend_from_slice(&d),
                        Ok(Some(Frame::Trailers(_))) => {}
                        Ok(Some(Frame::End)) => {
                            req.complete = true;
                            events.push(Event::BodyEnd);
                            self.state = UpState::Head;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let why = format!("a broken chunked request body: {e}");
                            self.broken(log, why);
                            break;
                        }
                    }
                }
            }
        }
        events
    }

    /// Read a request head: `Ok(Some(has_body))` when one was read (its body's reading set
    /// up), `Ok(None)` when more bytes are needed.
    fn head(&mut self, log: &mut ConnLog, seq: &AtomicUsize) -> Result<Option<bool>, String> {
        // The shared strict reader: CRLF only, no empty line first, one framing or none.
        let limits = PeerLimits::default()
            .max_head_bytes(usize::MAX)
            .max_headers(HEADERS_CAPACITY);
        let parsed = parse_head_with(&self.buf, HeadKind::Request, &limits, |v| {
            let forwarded_for: Vec<Vec<u8>> = v
                .fields
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|h| h.value.to_vec())
                .collect();
            let method = v.method.as_bytes().to_vec();
            (v.len, method, forwarded_for, v.request_framing())
        })
        .map_err(|e| format!("not a request head: {e}"))?;
        let Some((n, method, forwarded_for, framing)) = parsed else {
            return Ok(None);
        };
        let state = match framing.map_err(|e| format!("request framing: {e}"))? {
            Framing::None | Framing::Close => None,
            Framing::Chunked => Some(UpState::Chunked(Box::new(ChunkedDecoder::new(
                ChunkLimits::default(),
            )))),
            Framing::Length(remaining) => Some(UpState::Length { remaining }),
        };
        let start = self.offset;
        self.buf.advance(n);
        self.offset += n;
        let complete = matches!(state, None | Some(UpState::Length { remaining: 0 }));
        log.requests.push(UpRequest {
            seq: seq.fetch_add(1, Ordering::SeqCst),
            span: start..self.offset,
            method,
            forwarded_for,
            body: Vec::new(),
            complete,
        });
        self.state = match state {
            Some(s) if !complete => s,
            _ => UpState::Head,
        };
        Ok(Some(!complete))
    }

    fn broken(&mut self, log: &mut ConnLog, why: String) {
        log.malformed = Some(format!("at byte {}: {why}", self.offset));
        self.state = UpState::Broken;
    }

    /// The connection ended: a request cut short keeps the bytes read of it.
    fn finish(&mut self, log: &mut ConnLog) {
        if let (UpState::Length { .. } | UpState::Chunked(_), Some(req)) =
            (&self.state, log.requests.last_mut())
        {
            req.span.end = log.raw.len();
        }
    }
}

/// `1*DIGIT` as a number; `None` for anything else or an overflow.
fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

// ---------------------------------------------------------------------------------------------
// The client's requests, as an independent reading of its bytes lists them
// ---------------------------------------------------------------------------------------------

/// One request in a client's bytes.
#[derive(Debug)]
struct ClientRequest {
    method: Vec<u8>,
    body: Vec<u8>,
    complete: bool,
}

/// The requests in `bytes`, read leniently: a head as `httparse` reads it (bare LF accepted,
/// any number of empty lines before it), a body by a single `Content-Length` or a
/// `Transfer-Encoding` ending in `chunked` (decoded under `limits`). Where the framing is
/// ambiguous or invalid the request is listed (the proxy may still forward it, cut) and the
/// reading stops: nothing after it can be a request the proxy forwards.
fn client_requests(bytes: &[u8], limits: ChunkLimits, max_headers: usize) -> Vec<ClientRequest> {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        while let [b'\r' | b'\n', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        let mut fields = vec![httparse::EMPTY_HEADER; max_headers + 1];
        let mut req = httparse::Request::new(&mut fields);
        let n = match req.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) | Err(_) => break,
        };
        let method = req.method.unwrap_or_default().as_bytes().to_vec();
        let te: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value)
            .collect();
        let cl: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        rest = &rest[n..];
        let chunked = te.last().is_some_and(|v| {
            v.split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty())
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        });
        let length = match cl.as_slice() {
            [v] => parse_digits(v.trim_ascii()),
            _ => None,
        };
        let (body, complete, used) = match (te.is_empty(), cl.is_empty()) {
            (true, true) => (Vec::new(), true, 0),
            (false, true) if chunked => read_chunked(rest, limits),
            (true, false) if length.is_some() => {
                let n = usize::try_from(length.unwrap_or(0)).unwrap_or(usize::MAX);
                let take = n.min(rest.len());
                (rest[..take].to_vec(), take == n, take)
            }
            _ => {
                out.push(ClientRequest {
                    method,
                    body: rest.to_vec(),
                    complete: false,
                });
                break;
            }
        };
        rest = &rest[used..];
        out.push(ClientRequest {
            method,
            body,
            complete,
        });
        if !complete {
            break;
        }
    }
    out
}

/// A chunked body at the start of `bytes`: its payload, whether it ended, and the bytes used.
fn read_chunked(bytes: &[u8], limits: ChunkLimits) -> (Vec<u8>, bool, usize) {
    let mut dec = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::from(bytes);
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(Frame::Data(d))) => body.extend_from_slice(&d),
            Ok(Some(Frame::Trailers(_))) => {}
            Ok(Some(Frame::End)) => return (body, true, bytes.len() - buf.len()),
            Ok(None) | Err(_) => return (body, false, bytes.len()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------------------------

fn check(input: &ExchangeInput, run: &Run) {
    for (i, received) in run.received.iter().enumerate() {
        if let Some(received) = received {
            let other = MARKERS[1 - i];
            assert!(
                memmem::find(received, other).is_none(),
                "client {i} received the other client's marker: {}",
                show(received)
            );
        }
    }
    let mut per_client: [Vec<&UpRequest>; 2] = [Vec::new(), Vec::new()];
    for (c, conn) in run.upstream.iter().enumerate() {
        if let Some(why) = &conn.malformed {
            panic!(
                "upstream connection {c} received bytes that are not a request, {why}: {}",
                show(&conn.raw)
            );
        }
        for req in &conn.requests {
            let from = match req.forwarded_for.as_slice() {
                [ip] => CLIENT_IPS
                    .iter()
                    .position(|c| c.to_string().as_bytes() == ip.as_slice()),
                _ => None,
            };
            let Some(from) = from.filter(|&i| input.clients[i].is_some()) else {
                panic!(
                    "an upstream request names no client of this input: X-Forwarded-For {:?} in {}",
                    req.forwarded_for
                        .iter()
                        .map(|v| show(v))
                        .collect::<Vec<_>>(),
                    show(&conn.raw[req.span.clone()])
                );
            };
            let bytes = &conn.raw[req.span.clone()];
            assert!(
                memmem::find(bytes, MARKERS[1 - from]).is_none(),
                "an upstream request from client {from} holds the other client's marker: {}",
                show(bytes)
            );
            per_client[from].push(req);
        }
    }
    for (i, ups) in per_client.iter_mut().enumerate() {
        let Some(script) = &input.clients[i] else {
            continue;
        };
        ups.sort_by_key(|r| r.seq);
        let sent = client_requests(&script.bytes(), run.chunk_limits, run.max_headers);
        follow(i, ups, &sent, input.options.max_attempts());
    }
}

/// Whether an upstream request can be (an attempt of) a client's request.
fn matches(up: &UpRequest, client: &ClientRequest) -> bool {
    up.method == client.method
        && client.body.starts_with(&up.body)
        && (!up.complete || (client.complete && up.body == client.body))
}

/// The upstream requests of client `i` must follow its requests in order, each sent at most
/// `max_attempts` times.
fn follow(i: usize, ups: &[&UpRequest], sent: &[ClientRequest], max_attempts: usize) {
    // Every (client request reached, attempts on it) the upstream requests so far allow;
    // `None` before the first.
    let mut states: Vec<(Option<usize>, usize)> = vec![(None, 0)];
    for (k, up) in ups.iter().enumerate() {
        let mut next = Vec::new();
        for &(at, attempts) in &states {
            let j = at.map_or(0, |j| j + 1);
            if sent.get(j).is_some_and(|c| matches(up, c)) {
                next.push((Some(j), 1));
            }
            if let Some(j) = at {
                if attempts < max_attempts && matches(up, &sent[j]) {
                    next.push((Some(j), attempts + 1));
                }
            }
        }
        next.sort_unstable();
        next.dedup();
        if next.is_empty() {
            let listed: Vec<String> = sent
                .iter()
                .map(|c| {
                    format!(
                        "{} with {} body bytes{}",
                        show(&c.method),
                        c.body.len(),
                        if c.complete { "" } else { " (cut)" }
                    )
                })
                .collect();
            panic!(
                "client {i}'s upstream request {k} ({} with body {}{}) is not one of its \
                 requests, in order, at most {max_attempts} time(s) each; the client sent \
                 {listed:?}",
                show(&up.method),
                show(&up.body),
                if up.complete { "" } else { ", cut" }
            );
        }
        states = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_sections_modes_and_writes() {
        let input =
            ExchangeInput::parse(b"\x01\n%%\n1GET /@mark@%|x%wy\n%%\n\n%%\n3abc%|def\n%%\n0")
                .unwrap();
        assert!(input.options.retries && !input.options.no_pool);
        let a = input.clients[0].as_ref().unwrap();
        assert!(a.keep_open && !a.leave_early);
        assert_eq!(
            a.pieces,
            vec![
                Piece::Bytes(b"GET /qzvAjx".to_vec()),
                Piece::Bytes(b"x".to_vec()),
                Piece::Wait,
                Piece::Bytes(b"y".to_vec()),
            ]
        );
        assert!(input.clients[1].is_none());
        assert_eq!(input.answers.len(), 2);
        assert!(input.answers[0].after_body && input.answers[0].close);
        assert_eq!(input.answers[1].pieces, vec![]);
        assert!(ExchangeInput::parse(b"0\n%%\n0qzvBjx").is_none());
    }

    #[test]
    fn client_requests_follow_framing_and_stop_where_it_is_unclear() {
        let limits = ChunkLimits::default();
        let reqs = client_requests(
            b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n\
              POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
              POST /d HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
              GET /e HTTP/1.1\r\n\r\n",
            limits,
            100,
        );
        let seen: Vec<(&[u8], &[u8], bool)> = reqs
            .iter()
            .map(|r| (&r.method[..], &r.body[..], r.complete))
            .collect();
        assert_eq!(
            seen,
            vec![
                (&b"POST"[..], &b"abc"[..], true),
                (b"GET", b"", true),
                (b"POST", b"xy", true),
                (b"POST", b"GET /e HTTP/1.1\r\n\r\n", false),
            ]
        );
        let cut = client_requests(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
            limits,
            100,
        );
        assert_eq!(cut.len(), 1);
        assert!(!cut[0].complete);
    }

    #[test]
    fn upstream_reader_splits_requests_and_flags_bad_framing() {
        let mut log = ConnLog::default();
        let seq = AtomicUsize::new(0);
        let mut r = UpstreamReader::default();
        let bytes =
            b"POST /a HTTP/1.1\r\nX-Forwarded-For: 127.0.0.2\r\nTransfer-Encoding: chunked\r\n\r\n\
                      3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let mut events = 0;
        for b in bytes.chunks(5) {
            events += r.feed(b, &mut log, &seq).len();
        }
        r.finish(&mut log);
        assert_eq!(events, 4);
        assert!(log.malformed.is_none());
        assert_eq!(log.requests.len(), 2);
        assert_eq!(log.requests[0].body, b"abc");
        assert!(log.requests[0].complete && log.requests[1].complete);
        assert_eq!(log.requests[1].seq, 1);
        assert_eq!(log.requests[0].forwarded_for, vec![b"127.0.0.2".to_vec()]);

        let mut log = ConnLog::default();
        let mut r = UpstreamReader::default();
        r.feed(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            &mut log,
            &seq,
        );
        assert!(log.malformed.is_some());
    }

    #[test]
    fn follow_allows_retries_only_when_enabled() {
        let sent = vec![ClientRequest {
            method: b"POST".to_vec(),
            body: b"abc".to_vec(),
            complete: true,
        }];
        let up = |body: &[u8], complete| UpRequest {
            seq: 0,
            span: 0..0,
            method: b"POST".to_vec(),
            forwarded_for: Vec::new(),
            body: body.to_vec(),
            complete,
        };
        let (cut, whole) = (up(b"ab", false), up(b"abc", true));
        follow(0, &[&cut, &whole], &sent, 2);
        let twice = std::panic::catch_unwind(|| follow(0, &[&cut, &whole], &sent, 1));
        assert!(twice.is_err());
        let wrong = up(b"abd", true);
        assert!(std::panic::catch_unwind(|| follow(0, &[&wrong], &sent, 1)).is_err());
    }
}
