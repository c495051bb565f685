//! `chunkgate bench upstream`: a fast upstream made for measurement.
//!
//! Unlike the adversarial mock upstream, this one does as little work as it can, so that what a
//! benchmark measures is the proxy in front of it:
//!
//! - `POST /v1/chat/completions` streams `tokens` SSE events, `gap_ms` apart (query string
//!   `?tokens=T&gap_ms=G` or JSON body `{"tokens": T, "gap_ms": G}`; the body wins). The first
//!   event goes out at once. Each event is one chunk, written as size line, payload and CRLF in
//!   one vectored write on a `TCP_NODELAY` socket, and carries `"i"` (its index) and `"t"` (the
//!   wall-clock time it was written, in nanoseconds since the UNIX epoch). `data: [DONE]`
//!   follows the last token.
//! - `POST /small` answers a ~1 KiB JSON body with `Content-Length`.
//! - `POST /upload` reads a chunked (through [`ChunkedDecoder`]) or `Content-Length` body and
//!   answers `{"bytes": N}` with the payload byte count.
//! - `GET /healthz` answers `ok`.
//!
//! Connections are kept alive (HTTP/1.1 rules, `Connection: close` honoured); requests are
//! served one after another on a connection (no pipelining of responses).
//!
//! Runtime: `--threads N` current-thread tokio runtimes, one per OS thread, each accepting from
//! the same listening socket and serving its connections to the end. No task or buffer moves
//! between threads, and with the default of one thread the upstream costs at most one core.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::http::{invalid_data, write_all_vectored};
use crate::codec::chunked::{ChunkedDecoder, Frame, Limits, SizeLine, CRLF, LAST_CHUNK};
use crate::harness::peer::{Framing, HeadKind, HeadView, Peer};

/// Default number of tokens per stream.
pub const DEFAULT_TOKENS: u64 = 20;
/// Default gap between tokens, in milliseconds.
pub const DEFAULT_GAP_MS: u64 = 10;
/// Most tokens one stream may ask for.
pub const MAX_TOKENS: u64 = 1_000_000;
/// Longest gap one stream may ask for, in milliseconds.
pub const MAX_GAP_MS: u64 = 60_000;
/// Largest request body read into memory for `/v1/chat/completions` (uploads are streamed).
pub const MAX_CHAT_BODY: usize = 1 << 20;

/// Arguments of `chunkgate bench upstream`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Threads, each with its own current-thread runtime accepting from the shared socket.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Exit after this many seconds (0: run until stopped).
    #[arg(long, default_value_t = 0)]
    pub exit_after: u64,
}

/// Run the upstream until stopped, or for `--exit-after` seconds.
pub fn main(args: UpstreamArgs) -> ExitCode {
    match run_threads(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

fn current_thread_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run_threads(args: &UpstreamArgs) -> io::Result<()> {
    let threads = args.threads.max(1);
    let rt = current_thread_runtime()?;
    let listener = rt.block_on(async { bind(args.listen) })?;
    let addr = listener.local_addr()?;
    let std_listener = listener.into_std()?;
    let shutdown = CancellationToken::new();
    if args.exit_after > 0 {
        let token = shutdown.clone();
        let after = Duration::from_secs(args.exit_after);
        std::thread::spawn(move || {
            std::thread::sleep(after);
            token.cancel();
        });
    }
    let mut handles = Vec::new();
    for _ in 1..threads {
        let l = std_listener.try_clone()?;
        let token = shutdown.clone();
        handles.push(std::thread::spawn(move || -> io::Result<()> {
            let rt = current_thread_runtime()?;
            rt.block_on(async move { serve(TcpListener::from_std(l)?, token).await })
        }));
    }
    eprintln!("bench upstream listening on {addr} ({threads} thread(s))");
    let result = rt.block_on(async {
        let listener = TcpListener::from_std(std_listener)?;
        tokio::select! {
            r = serve(listener, shutdown.clone()) => r,
            _ = tokio::signal::ctrl_c() => { shutdown.cancel(); Ok(()) }
        }
    });
    shutdown.cancel();
    for h in handles {
        match h.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("upstream thread panicked")),
        }
    }
    result
}

/// Bind a listener with a deep accept backlog (thousands of streams open at once in the
/// memory runs) and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serve connections from `listener` until `shutdown` is cancelled. Each connection is a task
/// on the current runtime; open connections end with the runtime.
///
/// Cancel safety: dropping the future stops accepting; spawned connections run on.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match accepted {
            Ok((stream, _)) => {
                let token = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = handle_connection(stream) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
            // Out of descriptors or a connection reset before accept: back off briefly.
            Err(e) => {
                eprintln!("bench upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat { tokens: u64, gap_ms: u64 },
    Small,
    Upload,
    Health,
    NotFound,
    MethodNotAllowed,
}

#[derive(Debug, Clone, Copy)]
struct RequestHead {
    route: Route,
    body: Framing,
    close: bool,
}

/// Per-connection state kept across requests.
struct Conn {
    peer: Peer,
    decoder: ChunkedDecoder,
    scratch: Vec<u8>,
}

async fn handle_connection(stream: TcpStream) {
    // A failed exchange (peer gone, bad request) ends only its own connection.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        peer: Peer::with_buffer(stream, BytesMut::with_capacity(4096)),
        decoder: ChunkedDecoder::new(Limits::default()),
        scratch: Vec::with_capacity(256),
    };
    let _ = conn.run().await;
}

impl Conn {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(head) = self.read_request_head().await? else {
                return Ok(());
            };
            let close = head.close;
            match head.route {
                Route::Chat { tokens, gap_ms } => {
                    let body = self.read_small_body(head.body).await?;
                    let (tokens, gap_ms) = chat_params(&body, tokens, gap_ms)?;
                    self.stream_tokens(tokens, gap_ms).await?;
                }
                Route::Small => {
                    self.consume_body(head.body).await?;
                    self.peer.stream.write_all(small_response()).await?;
                }
                Route::Upload => {
                    let n = self.consume_body(head.body).await?;
                    let body = format!("{{\"bytes\":{n}}}");
                    self.write_json(200, "OK", &body, close).await?;
                }
                Route::Health => {
                    self.consume_body(head.body).await?;
                    self.write_json(200, "OK", "{\"status\":\"ok\"}", close)
                        .await?;
                }
                Route::NotFound => {
                    self.consume_body(head.body).await?;
                    self.write_json(404, "Not Found", "{\"error\":{\"message\":\"no such route\",\"type\":\"invalid_request_error\",\"code\":\"not_found\"}}", close).await?;
                }
                Route::MethodNotAllowed => {
                    self.consume_body(head.body).await?;
                    self.write_json(405, "Method Not Allowed", "{\"error\":{\"message\":\"method not allowed\",\"type\":\"invalid_request_error\",\"code\":\"method_not_allowed\"}}", close).await?;
                }
            }
            if close {
                return self.peer.stream.shutdown().await;
            }
        }
    }

    /// `Ok(None)` on a clean end between requests.
    async fn read_request_head(&mut self) -> io::Result<Option<RequestHead>> {
        self.peer
            .next_head_with(HeadKind::Request, request_head)
            .await?
            .transpose()
    }

    /// Read a body through, handing each piece of payload to `sink`; returns the payload bytes.
    async fn read_body(
        &mut self,
        kind: Framing,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        match kind {
            Framing::None | Framing::Close => Ok(0),
            Framing::Length(total) => {
                let mut remaining = total;
                loop {
                    let take = remaining.min(self.peer.buf.len() as u64) as usize;
                    sink(&self.peer.buf[..take])?;
                    self.peer.buf.advance(take);
                    remaining -= take as u64;
                    if remaining == 0 {
                        return Ok(total);
                    }
                    self.peer.buf.reserve(64 << 10);
                    self.peer.read_more_inside("a request body").await?;
                }
            }
            Framing::Chunked => {
                self.decoder.reset();
                let mut total = 0u64;
                loop {
                    match self
                        .decoder
                        .decode(&mut self.peer.buf)
                        .map_err(|e| invalid_data(e.to_string()))?
                    {
                        Some(Frame::Data(d)) => {
                            total += d.len() as u64;
                            sink(&d)?;
                        }
                        Some(Frame::Trailers(_)) => {}
                        Some(Frame::End) => return Ok(total),
                        None => {
                            self.peer.buf.reserve(64 << 10);
                            self.peer.read_more_inside("a chunked request body").await?;
                        }
                    }
                }
            }
        }
    }

    async fn consume_body(&mut self, kind: Framing) -> io::Result<u64> {
        self.read_body(kind, |_| Ok(())).await
    }

    async fn read_small_body(&mut self, kind: Framing) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.read_body(kind, |piece| {
            if body.len() + piece.len() > MAX_CHAT_BODY {
                return Err(invalid_data("chat request body too large"));
            }
            body.extend_from_slice(piece);
            Ok(())
        })
        .await?;
        Ok(body)
    }

    async fn write_json(
        &mut self,
        status: u16,
        reason: &str,
        body: &str,
        close: bool,
    ) -> io::Result<()> {
        let conn = if close { "connection: close\r\n" } else { "" };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{conn}\r\n{body}",
            body.len()
        );
        self.peer.stream.write_all(resp.as_bytes()).await
    }

    /// Stream `tokens` events `gap_ms` apart, one chunk each, then `[DONE]` and the last chunk.
    async fn stream_tokens(&mut self, tokens: u64, gap_ms: u64) -> io::Result<()> {
        self.peer.stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await?;
        let start = tokio::time::Instant::now();
        let gap = Duration::from_millis(gap_ms);
        for i in 0..tokens {
            if i > 0 && gap_ms > 0 {
                tokio::time::sleep_until(start + gap * (i as u32)).await;
            }
            self.scratch.clear();
            write_event(&mut self.scratch, i, unix_nanos());
            let size = SizeLine::new(self.scratch.len());
            write_all_vectored(
                &mut self.peer.stream,
                [size.as_bytes(), &self.scratch, CRLF],
            )
            .await?;
        }
        let done = b"data: [DONE]\n\n";
        let size = SizeLine::new(done.len());
        write_all_vectored(
            &mut self.peer.stream,
            [size.as_bytes(), done, CRLF, LAST_CHUNK],
        )
        .await
    }
}

/// Nanoseconds since the UNIX epoch, the clock both ends of a measurement on one host share.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Append one token event: `data: {...,"i":I,"t":T,...}\n\n`.
fn write_event(out: &mut Vec<u8>, index: u64, sent_ns: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"i\":{index},\"t\":{sent_ns},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token\"}}}}]}}\n\n"
    );
}

/// The `/small` response: a ~1 KiB JSON body with `Content-Length`, built once.
fn small_response() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let mut content = String::from("chunkgate bench reply.");
        while content.len() < 860 {
            content.push_str(" The quick brown fox jumps over the lazy dog.");
        }
        let body = format!(
            "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":180,\"total_tokens\":188}}}}"
        );
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// What the upstream needs from a request head: its route and body framing, and whether the
/// connection closes after the answer.
fn request_head(head: &HeadView<'_, '_>) -> io::Result<RequestHead> {
    let body = head.request_framing()?;
    let close = !head.keep_alive();
    let target = head.target;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let post = head.method == "POST";
    let route = match path {
        "/v1/chat/completions" if post => {
            let mut tokens = DEFAULT_TOKENS;
            let mut gap_ms = DEFAULT_GAP_MS;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("tokens", v)) => {
                        tokens = v.parse().map_err(|_| invalid_data("invalid tokens"))?
                    }
                    Some(("gap_ms", v)) => {
                        gap_ms = v.parse().map_err(|_| invalid_data("invalid gap_ms"))?
                    }
                    _ => {}
                }
            }
            Route::Chat { tokens, gap_ms }
        }
        "/small" if post => Route::Small,
        "/upload" if post => Route::Upload,
        "/healthz" => Route::Health,
        "/v1/chat/completions" | "/small" | "/upload" => Route::MethodNotAllowed,
        _ => Route::NotFound,
    };
    Ok(RequestHead { route, body, close })
}

#[derive(serde::Deserialize)]
struct ChatParams {
    tokens: Option<u64>,
    gap_ms: Option<u64>,
}

/// Stream parameters: the JSON body's values over the query's, within bounds.
fn chat_params(body: &[u8], tokens: u64, gap_ms: u64) -> io::Result<(u64, u64)> {
    let (mut tokens, mut gap_ms) = (tokens, gap_ms);
    if !body.is_empty() {
        if let Ok(p) = serde_json::from_slice::<ChatParams>(body) {
            tokens = p.tokens.unwrap_or(tokens);
            gap_ms = p.gap_ms.unwrap_or(gap_ms);
        }
    }
    if tokens > MAX_TOKENS || gap_ms > MAX_GAP_MS {
        return Err(invalid_data("stream parameters out of range"));
    }
    Ok((tokens, gap_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::peer::{parse_head_with, PeerLimits};

    /// The request head at the front of `buf` as the upstream reads it, and its length.
    fn parse_request_head(buf: &[u8]) -> io::Result<Option<(RequestHead, usize)>> {
        let limits = PeerLimits::default();
        parse_head_with(buf, HeadKind::Request, &limits, |v| {
            request_head(v).map(|h| (h, v.len))
        })?
        .transpose()
    }

    #[test]
    fn request_head_routes_and_params() {
        let (h, _) = parse_request_head(b"POST /v1/chat/completions?tokens=7&gap_ms=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.route,
            Route::Chat {
                tokens: 7,
                gap_ms: 3
            }
        );
        assert_eq!(h.body, Framing::Length(2));
        let (h, _) = parse_request_head(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.route, Route::Upload);
        assert_eq!(h.body, Framing::Chunked);
        assert!(h.close);
        assert!(parse_request_head(
            b"POST /small HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        let (h, _) = parse_request_head(b"GET /small HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.route, Route::MethodNotAllowed);
    }

    #[test]
    fn chat_params_body_wins_and_is_bounded() {
        assert_eq!(
            chat_params(b"{\"tokens\":5,\"gap_ms\":1}", 9, 9).unwrap(),
            (5, 1)
        );
        assert_eq!(chat_params(b"", 9, 8).unwrap(), (9, 8));
        assert!(chat_params(b"{\"tokens\":99999999}", 1, 1).is_err());
    }

    #[test]
    fn small_response_is_about_one_kib() {
        let r = small_response();
        let (framing, len) = parse_head_with(r, HeadKind::Response, &PeerLimits::default(), |v| {
            (v.response_framing("POST"), v.len)
        })
        .unwrap()
        .unwrap();
        assert_eq!(framing, Ok(Framing::Length((r.len() - len) as u64)));
        let body = &r[len..];
        assert!((900..1200).contains(&body.len()), "{}", body.len());
        serde_json::from_slice::<serde_json::Value>(body).unwrap();
    }
}
