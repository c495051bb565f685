//! One client connection, as a session with named states.
//!
//! ```text
//!            ┌────────────── keep-alive, not draining ──────────────┐
//!            ▼                                                       │
//!   ReadingHead ──head──► InExchange ──────────── close ────────► Closing
//!        │  │                                                        ▲
//!        │  └─ bad head / slow head ──► Refusing (answer, close) ────┤
//!        └──── client closed, idle, or the proxy drains ─────────────┘
//! ```
//!
//! The read half and its buffer travel with the state: an exchange takes them and gives them
//! back only when the connection can carry another request ([`After::KeepAlive`]), so a
//! connection whose request body was not read whole can never read its rest as a request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{timeout, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::codec::head::{HeadError, RequestHead, RequestParser};
use crate::logging::ExchangeRecord;
use crate::metrics::Metrics;
use crate::proxy::error::ExchangeError;
use crate::proxy::exchange::{self, After};
use crate::proxy::io::{make_room, read_before};
use crate::proxy::Shared;

/// Initial size of a client connection's read buffer: room for an ordinary request head;
/// it grows when a head or body needs more.
const CLIENT_BUF: usize = 2048;

/// The read side of a client connection with its buffer (bytes read but not yet used).
pub(crate) struct ClientRead<S> {
    pub rd: ReadHalf<S>,
    pub buf: BytesMut,
    /// The client shut down its sending side before its response started (curl and some
    /// SDKs do this after the request): it is still reading. Its response goes on, and the
    /// connection closes after it.
    pub half_closed: bool,
}

/// Who the client is, as the forwarded head tells the upstream.
pub(crate) struct ClientInfo {
    /// The peer's address as text for `X-Forwarded-For`, formatted once.
    pub peer_ip: String,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The address the client connected to: this proxy's own authority.
    pub local: SocketAddr,
}

impl ClientInfo {
    /// Whether `authority` (`host[:port]` of an absolute-form target) names this proxy: the
    /// address the client connected to, or `localhost`, on its port (a missing port is the
    /// scheme's default).
    pub(crate) fn is_own_authority(&self, authority: &[u8]) -> bool {
        let Ok(authority) = std::str::from_utf8(authority) else {
            return false;
        };
        let default_port = if self.proto == "https" { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return false,
            },
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host_is_us = host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().ok() == Some(self.local.ip());
        host_is_us && port == self.local.port()
    }
}

/// A client connection: the write half, who the client is, and the proxy's shared state.
pub(crate) struct ClientConn<S> {
    pub wr: WriteHalf<S>,
    pub info: ClientInfo,
    pub shared: Arc<Shared>,
    pub counters: Counters,
}

/// What the connection does next.
enum State<S> {
    /// Waiting for the next request head.
    ReadingHead(ClientRead<S>),
    /// A request head arrived: an exchange runs.
    InExchange(ClientRead<S>, RequestHead),
    /// The head was bad or too slow: answer, then close.
    Refusing(ClientRead<S>, ExchangeError),
    /// Done: the write side is shut down; after an error answer, the client's unread bytes
    /// are drained for a moment first (a lingering close), so a client still sending does
    /// not get a reset that destroys the answer before it reads it.
    Closing(Option<ClientRead<S>>),
}

/// How long, and how many bytes, a lingering close drains.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Serve one client connection until it closes, fails, or the proxy drains.
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    proto: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut conn = ClientConn {
        wr,
        info: ClientInfo {
            peer_ip: peer.ip().to_string(),
            proto,
            local,
        },
        shared,
        counters: Counters::default(),
    };
    conn.shared.metrics.connection_opened();
    let client = ClientRead {
        rd,
        buf: BytesMut::with_capacity(CLIENT_BUF),
        half_closed: false,
    };
    conn.run(client).await;
    conn.shared.metrics.connection_closed();
    let _ = conn.wr.shutdown().await;
}

/// Why no request head was read.
enum HeadRead {
    Bad(HeadError),
    Timeout,
    Closed,
}

impl<S> ClientConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self, client: ClientRead<S>) {
        let mut parser = RequestParser::new(self.shared.config.limits.head);
        // One timer and one drain watch for the connection's life, reused by every head read
        // (the timer's deadline is set before each use).
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let drain = self.shared.draining.clone().cancelled_owned();
        tokio::pin!(drain);
        let mut state = State::ReadingHead(client);
        loop {
            state = match state {
                State::ReadingHead(mut client) => {
                    // A reload applies to the next exchange of a kept-alive connection.
                    if let Some(newer) = self.shared.newer() {
                        self.shared = newer;
                    }
                    match read_head(
                        &self.shared,
                        &mut client,
                        &mut parser,
                        sleep.as_mut(),
                        drain.as_mut(),
                    )
                    .await
                    {
                        Ok(Some(head)) => State::InExchange(client, head),
                        Ok(None) | Err(HeadRead::Closed) => State::Closing(None),
                        Err(HeadRead::Bad(e)) => {
                            State::Refusing(client, ExchangeError::ClientHead(e))
                        }
                        Err(HeadRead::Timeout) => {
                            State::Refusing(client, ExchangeError::ClientHeadTimeout)
                        }
                    }
                }
                State::InExchange(client, head) => {
                    parser.reset();
                    match exchange::run(self, client, head).await {
                        After::KeepAlive(client) if !self.shared.draining.is_cancelled() => {
                            State::ReadingHead(client)
                        }
                        After::KeepAlive(_) => State::Closing(None),
                        After::Close(client) => State::Closing(client),
                    }
                }
                State::Refusing(client, err) => {
                    if let ExchangeError::ClientHeadTimeout = err {
                        self.shared.metrics.timeout("client_head");
                        // A client too slow to send its head gets little time to read the answer.
                        let _ = timeout(Duration::from_secs(1), self.answer(&err, b"", &[])).await;
                    } else {
                        self.shared.metrics.rejected(err.reason());
                        self.answer(&err, b"", &[]).await;
                    }
                    State::Closing(Some(client))
                }
                State::Closing(client) => {
                    if let Some(client) = client {
                        self.linger(client).await;
                    }
                    return;
                }
            }
        }
    }

    /// Shut the write side down (the answer is out), then read and drop what the client
    /// still sends, for a moment.
    async fn linger(&mut self, mut client: ClientRead<S>) {
        use tokio::io::AsyncReadExt;
        let _ = timeout(LINGER_TIME, self.wr.shutdown()).await;
        let _ = timeout(LINGER_TIME, async {
            let mut scratch = [0u8; 1024];
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match client.rd.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    /// Tell a client that waits (`Expect: 100-continue`) to send its body.
    pub(crate) async fn continue_100(&mut self) {
        let _ = timeout(self.shared.config.timeouts.client_write_stall, async {
            self.wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            self.wr.flush().await
        })
        .await;
    }

    /// Write an error answer with `Connection: close` (the connection then closes), bounded by
    /// the write-stall timeout.
    pub(crate) async fn answer(
        &mut self,
        err: &ExchangeError,
        request_id: &[u8],
        extra: &[(&str, &str)],
    ) {
        let mut out = BytesMut::with_capacity(512);
        err.write_answer(request_id, extra, &mut out);
        let _ = timeout(self.shared.config.timeouts.client_write_stall, async {
            self.wr.write_all(&out).await?;
            self.wr.flush().await
        })
        .await;
    }
}

/// Read the next request head: `Ok(None)` when the client closed (or went idle, or the proxy
/// is draining) between requests.
async fn read_head<S: AsyncRead>(
    shared: &Shared,
    client: &mut ClientRead<S>,
    parser: &mut RequestParser,
    mut sleep: Pin<&mut Sleep>,
    mut drain: Pin<&mut WaitForCancellationFutureOwned>,
) -> Result<Option<RequestHead>, HeadRead> {
    let t = &shared.config.timeouts;
    let idle_deadline = tokio::time::Instant::now() + t.client_idle;
    let mut head_deadline: Option<tokio::time::Instant> = None;
    loop {
        match parser.parse(&mut client.buf) {
            Ok(Some(head)) => return Ok(Some(head)),
            Ok(None) => {}
            Err(e) => return Err(HeadRead::Bad(e)),
        }
        let started = !client.buf.is_empty();
        let deadline = if started {
            *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + t.client_head)
        } else {
            idle_deadline
        };
        make_room(&mut client.buf, 512, CLIENT_BUF);
        tokio::select! {
            biased;
            _ = drain.as_mut(), if !started => return Ok(None),
            r = read_before(&mut client.rd, &mut client.buf, &mut sleep, || deadline) => match r {
                Ok(0) if client.buf.is_empty() => return Ok(None),
                Ok(0) | Err(Some(_)) => return Err(HeadRead::Closed),
                Ok(_) => {}
                Err(None) if started => return Err(HeadRead::Timeout),
                Err(None) => return Ok(None),
            },
        }
    }
}

/// The labelled metric series of this connection's last exchange. A connection's exchanges
/// usually share route, upstream, status class and outcome, so each series is looked up in
/// its family once, not once per exchange.
#[derive(Default)]
pub(crate) struct Counters {
    requests: Option<(Arc<str>, Arc<str>, &'static str, Counter)>,
    outcome: Option<(&'static str, Counter)>,
}

impl Counters {
    pub(crate) fn count(&mut self, metrics: &Metrics, rec: &ExchangeRecord) {
        let class = crate::metrics::status_class(rec.status);
        match &self.requests {
            Some((route, upstream, c, counter))
                if *c == class
                    && Arc::ptr_eq(route, &rec.route)
                    && Arc::ptr_eq(upstream, &rec.upstream) =>
            {
                counter.inc();
            }
            _ => {
                let counter = metrics.request_counter(&rec.route, &rec.upstream, rec.status);
                counter.inc();
                self.requests = Some((
                    Arc::clone(&rec.route),
                    Arc::clone(&rec.upstream),
                    class,
                    counter,
                ));
            }
        }
        let label = rec.outcome.label();
        match &self.outcome {
            Some((l, counter)) if *l == label => {
                counter.inc();
            }
            _ => {
                let counter = metrics.outcome_counter(&rec.outcome);
                counter.inc();
                self.outcome = Some((label, counter));
            }
        }
        metrics.exchange_observed(rec);
    }
}

/// How the client's side ended while its response streams.
pub(crate) enum ClientEnd {
    /// It shut down its sending side (EOF).
    Eof,
    /// The connection failed (reset).
    Gone,
}

/// Resolve when the client ends its side. Bytes it sends meanwhile (a pipelined request) are
/// kept in its buffer, up to `limit`; past that, stop reading. Never resolves once the
/// client half-closed.
pub(crate) async fn watch_eof<S: AsyncRead>(client: &mut ClientRead<S>, limit: usize) -> ClientEnd {
    use tokio::io::AsyncReadExt;
    loop {
        if client.buf.len() >= limit || client.half_closed {
            return std::future::pending().await;
        }
        // Read into a small buffer of the watch's own: a quiet client (the usual case) then
        // needs no heap buffer while its response streams. Bytes it does send are kept.
        let mut tmp = [0u8; 64];
        match client.rd.read(&mut tmp).await {
            Ok(0) => return ClientEnd::Eof,
            Err(_) => return ClientEnd::Gone,
            Ok(n) => client.buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// Note whether the client has already shut down its sending side (an EOF waiting now),
/// without waiting for anything.
pub(crate) async fn note_early_eof<S: AsyncRead>(client: &mut ClientRead<S>, limit: usize) {
    if client.half_closed {
        return;
    }
    let eof = tokio::select! {
        biased;
        end = watch_eof(client, limit) => matches!(end, ClientEnd::Eof),
        _ = std::future::ready(()) => false,
    };
    client.half_closed = eof;
}
