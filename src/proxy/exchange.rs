//! One client connection and the exchanges on it.
//!
//! ```text
//!  read head ──► route, auth, framing ──► attempt: pick upstream ─► checkout ─► write head
//!                                                      ▲                          │
//!                                         retry (safe) │     ┌────────────────────┴──────────┐
//!                                                      │     ▼                               ▼
//!                                                      └─ response head ◄── concurrently ── request body pump
//!                                                            │ (commit: nothing of it was sent before)
//!                                                            ▼
//!                                      response body pump ──► client, while watching the client for EOF
//! ```
//!
//! The request body pump and the response pump each own the halves they use and hand them back
//! when they finish, so the two directions run concurrently in one task without locks, and
//! dropping either future closes what it held. A failure before the response head went to the
//! client is answered with an error response (or retried where that is safe); after, the client
//! connection is closed without the terminating chunk, so the client sees a cut stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{sleep, sleep_until, timeout, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::codec::chunked::{ChunkedDecoder, Field};
use crate::codec::framing::{self, BodyFraming, RequestMeta};
use crate::codec::head::{
    HeadError, RequestHead, RequestParser, ResponseHead, ResponseParser, Version,
};
use crate::logging::{ExchangeRecord, Lossy, Outcome};
use crate::metrics::Direction;
use crate::proxy::body::{
    make_room, read_before, BodyReader, BodyWriter, Next, OutFraming, Piece, ReadError, ReadIdle,
    ReadSize, WriteError, BATCH,
};
use crate::proxy::error::{write_error_response, ExchangeError};
use crate::proxy::headers::{self, ForwardContext};
use crate::proxy::route;
use crate::proxy::Shared;
use crate::upstream::balance::Upstream;
use crate::upstream::connect::{UpstreamRead, UpstreamWrite};
use crate::upstream::pool::PooledConn;
use crate::upstream::retry;

/// Serve one client connection until it closes, fails, or the proxy drains.
pub(crate) async fn serve_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut conn = ClientConn {
        rd: Some(ClientRead {
            rd,
            buf: BytesMut::with_capacity(CLIENT_BUF),
        }),
        wr,
        peer_ip: peer.ip().to_string(),
        proto,
        shared,
        counters: Counters::default(),
    };
    shared_metrics(&conn.shared).connection_opened();
    conn.run().await;
    shared_metrics(&conn.shared).connection_closed();
    let _ = conn.wr.shutdown().await;
}

fn shared_metrics(s: &Shared) -> &crate::metrics::Metrics {
    &s.metrics
}

/// Initial size of a client connection's read buffer: room for an ordinary request head;
/// it grows when a head or body needs more.
const CLIENT_BUF: usize = 2048;

/// The read side of a client connection with its buffer (bytes read but not yet used).
pub(crate) struct ClientRead<S> {
    rd: ReadHalf<S>,
    buf: BytesMut,
}

struct ClientConn<S> {
    /// `None` only while an exchange has lent it to the request body pump and lost it.
    rd: Option<ClientRead<S>>,
    wr: WriteHalf<S>,
    /// The peer's address as text for `X-Forwarded-For`, formatted once.
    peer_ip: String,
    proto: &'static str,
    shared: Arc<Shared>,
    counters: Counters,
}

/// The labelled metric series of this connection's last exchange. A connection's exchanges
/// usually share route, upstream, status class and outcome, so each series is looked up in
/// its family once, not once per exchange.
#[derive(Default)]
struct Counters {
    requests: Option<(Arc<str>, Arc<str>, &'static str, Counter)>,
    outcome: Option<(&'static str, Counter)>,
}

impl Counters {
    fn count(&mut self, metrics: &crate::metrics::Metrics, rec: &ExchangeRecord) {
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

/// The route and upstream of an exchange that reached neither.
static NONE_LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));

/// Whether the client connection can carry another exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

impl<S> ClientConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self) {
        let mut parser = RequestParser::new(self.shared.config.limits.head);
        // One timer and one drain watch for the connection's life, reused by every head read
        // (the timer's deadline is set before each use).
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let drain = self.shared.draining.clone().cancelled_owned();
        tokio::pin!(drain);
        loop {
            let head = match self
                .read_head(&mut parser, sleep.as_mut(), drain.as_mut())
                .await
            {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(HeadRead::Bad(e)) => {
                    self.shared
                        .metrics
                        .rejected(ExchangeError::ClientHead(e.clone()).reason());
                    let err = ExchangeError::ClientHead(e);
                    self.answer_error(&err, b"", &[]).await;
                    return;
                }
                Err(HeadRead::Timeout) => {
                    self.shared.metrics.timeout("client_head");
                    // A client too slow to send its head gets little time to read the answer.
                    let answer = self.answer_error(&ExchangeError::ClientHeadTimeout, b"", &[]);
                    let _ = timeout(Duration::from_secs(1), answer).await;
                    return;
                }
                Err(HeadRead::Closed) => return,
            };
            parser.reset();
            match self.exchange(head).await {
                After::KeepAlive if !self.shared.draining.is_cancelled() => {}
                _ => return,
            }
        }
    }

    /// Read the next request head: `Ok(None)` when the client closed (or went idle, or the
    /// proxy is draining) between requests.
    async fn read_head(
        &mut self,
        parser: &mut RequestParser,
        mut sleep: Pin<&mut Sleep>,
        mut drain: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<Option<RequestHead>, HeadRead> {
        let t = &self.shared.config.timeouts;
        let idle_deadline = tokio::time::Instant::now() + t.client_idle;
        let mut head_deadline: Option<tokio::time::Instant> = None;
        let Some(cr) = self.rd.as_mut() else {
            return Ok(None);
        };
        loop {
            match parser.parse(&mut cr.buf) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err(HeadRead::Bad(e)),
            }
            let started = !cr.buf.is_empty();
            let deadline = if started {
                *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + t.client_head)
            } else {
                idle_deadline
            };
            make_room(&mut cr.buf, 512, CLIENT_BUF);
            tokio::select! {
                biased;
                _ = drain.as_mut(), if !started => return Ok(None),
                r = read_before(&mut cr.rd, &mut cr.buf, &mut sleep, || deadline) => match r {
                    Ok(0) if cr.buf.is_empty() => return Ok(None),
                    Ok(0) | Err(Some(_)) => return Err(HeadRead::Closed),
                    Ok(_) => {}
                    Err(None) if started => return Err(HeadRead::Timeout),
                    Err(None) => return Ok(None),
                },
            }
        }
    }

    /// Write an error answer with `Connection: close` (the caller then closes).
    async fn answer_error(
        &mut self,
        err: &ExchangeError,
        request_id: &[u8],
        extra: &[(&str, &str)],
    ) {
        let (status, kind, code) = err.answer();
        let mut out = BytesMut::with_capacity(512);
        write_error_response(
            status,
            kind,
            code,
            &err.to_string(),
            request_id,
            true,
            extra,
            &mut out,
        );
        let _ = timeout(self.shared.config.timeouts.client_write_stall, async {
            self.wr.write_all(&out).await?;
            self.wr.flush().await
        })
        .await;
    }

    /// One exchange. Returns whether the connection may carry another.
    async fn exchange(&mut self, head: RequestHead) -> After {
        let shared = Arc::clone(&self.shared);
        let started = Instant::now();
        let request_id: Bytes =
            headers::request_id_of(&head).unwrap_or_else(headers::new_request_id);
        let mut rec = ExchangeRecord {
            request_id: request_id.clone(),
            method: head.method.clone(),
            path: head.target.clone(),
            route: Arc::clone(&NONE_LABEL),
            upstream: Arc::clone(&NONE_LABEL),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            chunks_in: 0,
            chunks_out: 0,
            reassembled: 0,
            ttfb: None,
            ttfc: None,
            duration: Duration::ZERO,
            retries: 0,
            outcome: Outcome::Complete,
        };
        // Boxed: the upstream phase's state is the largest part of a connection's, and a
        // stream that outlives it should not keep its room.
        let step = Box::pin(self.exchange_inner(&head, &request_id, &mut rec, started)).await;
        let after = match step {
            Step::Done(after) => after,
            Step::Stream(mut c) => {
                if matches!(
                    c.resp_meta.framing,
                    BodyFraming::Chunked | BodyFraming::Close
                ) {
                    // A stream may last minutes: let go of the client's read buffer while it
                    // runs. Nothing may point into it: the head goes, the few bytes the
                    // record and the answer keep are copied, and an empty buffer is freed
                    // (the next request head gets a fresh one).
                    drop(head);
                    drop(request_id);
                    rec.detach();
                    c.request_id = rec.request_id.clone();
                    if let Some(p) = c.pumped.as_mut() {
                        if p.client.buf.is_empty() {
                            p.client.buf = BytesMut::new();
                        }
                    }
                }
                self.stream_response(c, &mut rec).await
            }
        };
        rec.duration = started.elapsed();
        self.counters.count(&shared.metrics, &rec);
        if shared.config.log.access_log {
            crate::logging::access_log(&rec);
        }
        after
    }

    async fn reject(
        &mut self,
        err: ExchangeError,
        request_id: &[u8],
        rec: &mut ExchangeRecord,
    ) -> After {
        let reason = err.reason();
        self.shared.metrics.rejected(reason);
        rec.status = err.answer().0;
        rec.outcome = Outcome::Rejected(reason);
        tracing::debug!(request_id = %Lossy(&rec.request_id), error = %err, "request rejected");
        self.answer_error(&err, request_id, &[]).await;
        After::Close
    }

    async fn exchange_inner(
        &mut self,
        head: &RequestHead,
        request_id: &Bytes,
        rec: &mut ExchangeRecord,
        started: Instant,
    ) -> Step<S> {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        let meta: RequestMeta = match framing::request_meta(head) {
            Ok(m) => m,
            Err(e) => {
                return Step::Done(
                    self.reject(ExchangeError::ClientFraming(e), request_id, rec)
                        .await,
                )
            }
        };
        let Some(route) = route::select(&shared.routes, &head.target) else {
            return Step::Done(self.reject(ExchangeError::NoRoute, request_id, rec).await);
        };
        rec.route = Arc::clone(&route.name);
        if !route.authorized(head.get("authorization").map(|v| &v[..])) {
            return Step::Done(
                self.reject(ExchangeError::Unauthorized, request_id, rec)
                    .await,
            );
        }
        let mut reader = match meta.framing {
            BodyFraming::None => BodyReader::None,
            BodyFraming::Length(n) => {
                if let Some(limit) = cfg.limits.max_request_body {
                    if n > limit {
                        let err = ExchangeError::ClientBodyTooLarge { limit };
                        return Step::Done(self.reject(err, request_id, rec).await);
                    }
                }
                BodyReader::Length { remaining: n }
            }
            BodyFraming::Chunked => {
                BodyReader::Chunked(Box::new(ChunkedDecoder::new(cfg.limits.chunk)))
            }
            // Requests are never close-delimited; framing rules it out.
            BodyFraming::Close => BodyReader::None,
        };
        // Requests are never close-delimited: the body goes out framed as it came in.
        let out_framing = meta.framing;
        let body_out = OutFraming::from(meta.framing);
        let client_takes_trailers = head.get_all("te").any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        let group = Arc::clone(&shared.groups[route.group]);
        let max_attempts = cfg.retry.max_attempts.max(1);
        shared.budget.on_request();

        // The request body as sent so far, kept for a replay while it fits.
        let mut replay = Replay::new(cfg.retry.max_replay_body);
        // The body was read whole by an earlier attempt (and is held in `replay`).
        let mut body_done = false;
        let mut sent_continue = false;
        let mut tried: Vec<usize> = Vec::new();
        let mut attempt: u32 = 0;
        let mut target = BytesMut::with_capacity(head.target.len() + 16);
        let mut head_buf = BytesMut::with_capacity(1024);
        let deadline = Instant::now() + cfg.retry.deadline;
        let total_deadline = cfg.timeouts.total.map(|t| started + t);
        let mut last_err: Option<ExchangeError>;

        loop {
            attempt += 1;
            let now = Instant::now();
            let Some(idx) = group.pick(&tried, now) else {
                let err = ExchangeError::BreakerOpen {
                    group: group.name.clone(),
                };
                return Step::Done(self.reject(err, request_id, rec).await);
            };
            tried.push(idx);
            let upstream: Arc<Upstream> = Arc::clone(&group.upstreams[idx]);
            rec.upstream = Arc::clone(upstream.name_shared());
            if upstream.breaker.try_acquire(now).is_err() {
                last_err = Some(ExchangeError::BreakerOpen {
                    group: group.name.clone(),
                });
                if attempt < max_attempts && tried.len() < group.upstreams.len() {
                    attempt -= 1; // an open breaker costs no attempt
                    continue;
                }
                break;
            }
            let _outstanding = upstream.begin();

            // Connect (or reuse).
            // Connecting is bounded by the connect and handshake timeouts; waiting for a free
            // slot when the upstream is at its connection cap is bounded here.
            let slot_wait = cfg.timeouts.connect + cfg.timeouts.tls_handshake;
            // An idle keep-alive connection is taken at once; only a wait or a connect goes
            // through the (large, so boxed) checkout future.
            let checkout = match upstream.pool.try_checkout_idle() {
                Some(c) => Ok(Ok(c)),
                None => Box::pin(timeout(slot_wait, upstream.pool.checkout())).await,
            };
            let conn = match checkout {
                Err(_) => {
                    shared.metrics.timeout("pool_wait");
                    upstream.breaker.on_abandon(Instant::now());
                    last_err = Some(ExchangeError::PoolExhausted);
                    break;
                }
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    if e.is_timeout() {
                        shared.metrics.timeout("connect");
                    }
                    tracing::warn!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), error = %e, "upstream connect failed");
                    breaker_failure(&shared.metrics, &upstream);
                    let retry_ok = cfg.retry.on_connect_error;
                    last_err = Some(ExchangeError::Connect(e));
                    if retry_ok
                        && self
                            .may_retry(attempt, max_attempts, deadline, &upstream, None, rec)
                            .await
                    {
                        continue;
                    }
                    break;
                }
            };
            let reused = conn.is_reused();
            // The slot (the pool's count of this connection) travels with the halves and is
            // given back with them, or freed when they are dropped.
            let (stream, read_buf, slot) = conn.into_parts();
            let (up_rd, mut up_wr) = stream.into_split();
            let up_buf = read_buf;

            // Head, then what was already read of the body.
            let ctx = ForwardContext {
                client_ip: &self.peer_ip,
                proto: self.proto,
                upstream_authority: upstream.authority(),
                path: {
                    route.rewrite(&upstream.cfg.url.path_prefix, &head.target, &mut target);
                    &target
                },
                request_id,
                inject: &route.inject,
                drop_authorization: !route.require_bearer.is_empty(),
            };
            head_buf.clear();
            headers::write_request_head(head, &ctx, &out_framing, &mut head_buf);
            let mut writer = BodyWriter::new(body_out, true, cfg.timeouts.stream_idle);
            let wrote = if !body_done && replay.pieces().is_empty() {
                // Nothing of the body was sent yet: the head goes out together with the first
                // piece of the body if it is at hand (one write instead of two), else alone.
                writer.set_pending(std::mem::take(&mut head_buf));
                Ok(())
            } else {
                // A retry: the head, then the body as held for replay.
                async {
                    up_wr.write_all(&head_buf).await?;
                    for p in replay.pieces() {
                        if let Piece::Data(d) = p {
                            writer.data(&mut up_wr, d).await.map_err(write_io)?;
                        }
                    }
                    if body_done && replay.complete() {
                        writer
                            .end(&mut up_wr, replay.trailers())
                            .await
                            .map_err(write_io)?;
                    }
                    up_wr.flush().await
                }
                .await
            };
            if let Err(e) = wrote {
                breaker_failure(&shared.metrics, &upstream);
                last_err = Some(ExchangeError::UpstreamIo(e));
                if reused
                    && replay.complete()
                    && self
                        .may_retry(attempt, max_attempts, deadline, &upstream, None, rec)
                        .await
                {
                    continue;
                }
                break;
            }
            if meta.expect_continue && !body_done && !sent_continue {
                sent_continue = true;
                let _ = self.wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                let _ = self.wr.flush().await;
            }

            // Phase 1: pump the rest of the request body while waiting for the response head.
            let Some(client) = self.rd.take() else {
                return Step::Done(After::Close);
            };
            // Boxed, and dropped the moment it finishes: a stream's state then holds no pump.
            let mut pump: Option<PumpFuture<S>> = Some(Box::pin(pump_request(
                client,
                reader,
                up_wr,
                writer,
                replay,
                body_done,
                cfg.timeouts.stream_idle,
                Arc::clone(&shared),
            )));
            let mut pumped: Option<PumpOut<S>> = None;
            // The head read and its timers live only in this block, so their room in the
            // exchange's state is reused by the streaming phase.
            let head_result = {
                let head_read = read_response_head(
                    up_rd,
                    up_buf,
                    ResponseParser::new(cfg.limits.head),
                    cfg.timeouts.response_head,
                );
                tokio::pin!(head_read);
                let total_sleep = sleep_until_opt(total_deadline);
                tokio::pin!(total_sleep);
                loop {
                    tokio::select! {
                        // The pump first: a body that is already whole is recorded before the head.
                        biased;
                        p = maybe(&mut pump), if pump.is_some() => {
                            pump = None;
                            if let Err(PumpError::Client(e)) = &p.result {
                                // The client's body is bad or gone: answer it (nothing was sent yet).
                                let err = client_body_error(e);
                                rec.bytes_in = p.writer.bytes;
                                rec.chunks_in = p.writer.chunks;
                                rec.reassembled = p.reader.reassembled();
                                self.rd = Some(p.client);
                                upstream.breaker.on_abandon(Instant::now());
                                if matches!(err, ExchangeError::ClientGone) {
                                    rec.outcome = Outcome::ClientGone;
                                    return Step::Done(After::Close);
                                }
                                return Step::Done(self.reject(err, request_id, rec).await);
                            }
                            if let Err(PumpError::Upstream(e)) = &p.result {
                                tracing::debug!(request_id = %Lossy(&rec.request_id), error = ?e, "writing the request body upstream failed; waiting for its answer");
                            }
                            pumped = Some(p);
                        }
                        h = &mut head_read => break h,
                        _ = &mut total_sleep => {
                            shared.metrics.timeout("total");
                            upstream.breaker.on_abandon(Instant::now());
                            return Step::Done(self.reject(ExchangeError::TotalTimeout, request_id, rec).await);
                        }
                    }
                }
            };
            let (up_rd, up_buf, head_res) = head_result;

            let resp_head = match head_res {
                Ok(h) => h,
                Err(err) => {
                    if matches!(err, ExchangeError::UpstreamHeadTimeout) {
                        shared.metrics.timeout("response_head");
                    }
                    tracing::warn!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), error = %err, "upstream failed before the response head");
                    breaker_failure(&shared.metrics, &upstream);
                    let Some(p) = pumped else {
                        // The body pump still holds the client: it cannot be answered cleanly
                        // without waiting for it, so close after an answer on the write half.
                        let (status, kind, code) = err.answer();
                        rec.status = status;
                        rec.outcome = Outcome::UpstreamError;
                        let mut out = BytesMut::new();
                        write_error_response(
                            status,
                            kind,
                            code,
                            &err.to_string(),
                            request_id,
                            true,
                            &[],
                            &mut out,
                        );
                        let _ =
                            timeout(cfg.timeouts.client_write_stall, self.wr.write_all(&out)).await;
                        return Step::Done(After::Close);
                    };
                    self.rd = Some(p.client);
                    reader = p.reader;
                    replay = p.replay;
                    body_done = p.result.is_ok();
                    rec.bytes_in = p.writer.bytes;
                    rec.chunks_in = p.writer.chunks;
                    let retry_kind = match &err {
                        ExchangeError::UpstreamHeadTimeout => false,
                        // A reused keep-alive connection the upstream was closing as the request
                        // went out: it never saw the request, so resending is safe. A fresh
                        // connection that fails here may have been processed: not retried.
                        ExchangeError::UpstreamClosed | ExchangeError::UpstreamIo(_) => reused,
                        _ => false,
                    };
                    last_err = Some(err);
                    if retry_kind
                        && replay.complete()
                        && self
                            .may_retry(attempt, max_attempts, deadline, &upstream, None, rec)
                            .await
                    {
                        continue;
                    }
                    break;
                }
            };
            let ttfb = started.elapsed();
            rec.ttfb = Some(ttfb);
            rec.status = resp_head.status;

            // A retryable status, nothing sent to the client yet, and the body can be replayed?
            if matches!(resp_head.status, 502..=504) {
                breaker_failure(&shared.metrics, &upstream);
            } else if resp_head.status < 500 {
                breaker_success(&shared.metrics, &upstream);
            }
            let replayable = pumped
                .as_ref()
                .is_some_and(|p| p.result.is_ok() && p.replay.complete());
            if cfg.retry.on_status.contains(&resp_head.status) && replayable {
                let hint = retry::retry_after(
                    resp_head
                        .headers
                        .iter()
                        .map(|h| (&h.name[..], &h.value[..])),
                    SystemTime::now(),
                );
                if let Some(delay) = self.retry_delay(attempt, max_attempts, deadline, hint) {
                    let p = pumped.take().expect("replayable implies a finished pump");
                    tracing::info!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), status = resp_head.status, delay_ms = delay.as_millis() as u64, "retrying after a retryable status");
                    self.rd = Some(p.client);
                    reader = p.reader;
                    replay = p.replay;
                    body_done = true;
                    // Dropping the read half and the pump's write half closes that connection.
                    drop(up_rd);
                    drop(p.up_wr);
                    rec.retries += 1;
                    shared.metrics.retry(upstream.name());
                    sleep(delay).await;
                    continue;
                }
            }

            // Commit: the response goes to the client (after this exchange's state is gone).
            let resp_meta = match framing::response_meta(&head.method, &resp_head) {
                Ok(m) => m,
                Err(e) => {
                    breaker_failure(&shared.metrics, &upstream);
                    if let Some(p) = pumped {
                        self.rd = Some(p.client);
                    }
                    let err = ExchangeError::UpstreamFraming(e);
                    return Step::Done(self.reject_upstream(err, request_id, rec).await);
                }
            };
            return Step::Stream(Box::new(Committed {
                version: head.version,
                client_keep_alive: meta.keep_alive,
                resp_meta,
                resp_head,
                request_id: request_id.clone(),
                retries_note: retries_note(rec.retries, replay_flag(&pumped)),
                upstream,
                slot,
                client_takes_trailers,
                total_deadline,
                started,
                up_rd,
                up_buf,
                pump,
                pumped,
            }));
        }
        let err = last_err.unwrap_or(ExchangeError::UpstreamClosed);
        Step::Done(self.reject_upstream(err, request_id, rec).await)
    }
}

impl<S> ClientConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The delay before another attempt, or `None` when no retry is allowed (attempts, overall
    /// deadline, retry budget). `hint` is the upstream's Retry-After, honoured up to the cap.
    fn retry_delay(
        &self,
        attempt: u32,
        max_attempts: u32,
        deadline: Instant,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= max_attempts || self.shared.draining.is_cancelled() {
            return None;
        }
        let cfg = &self.shared.config.retry;
        let backoff = self.shared.backoff.delay(attempt);
        let delay = match hint {
            Some(h) => h.min(cfg.cap).max(backoff),
            None => backoff,
        };
        if Instant::now() + delay >= deadline {
            return None;
        }
        if !self.shared.budget.try_withdraw() {
            tracing::info!("retry budget exhausted: not retrying");
            return None;
        }
        Some(delay)
    }

    /// Decide on a retry after a failure with nothing sent to the client; sleeps the backoff.
    async fn may_retry(
        &self,
        attempt: u32,
        max_attempts: u32,
        deadline: Instant,
        upstream: &Upstream,
        hint: Option<Duration>,
        rec: &mut ExchangeRecord,
    ) -> bool {
        let Some(delay) = self.retry_delay(attempt, max_attempts, deadline, hint) else {
            return false;
        };
        rec.retries += 1;
        self.shared.metrics.retry(upstream.name());
        tracing::info!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), attempt, delay_ms = delay.as_millis() as u64, "retrying");
        sleep(delay).await;
        true
    }

    async fn reject_upstream(
        &mut self,
        err: ExchangeError,
        request_id: &[u8],
        rec: &mut ExchangeRecord,
    ) -> After {
        let (status, _, _) = err.answer();
        rec.status = status;
        rec.outcome = match err {
            ExchangeError::UpstreamHeadTimeout => Outcome::Timeout("response_head"),
            ExchangeError::Connect(ref e) if e.is_timeout() => Outcome::Timeout("connect"),
            _ => Outcome::UpstreamError,
        };
        let retries = rec.retries.to_string();
        let extra: Vec<(&str, &str)> = if rec.retries > 0 {
            vec![("x-chunkgate-retries", retries.as_str())]
        } else {
            Vec::new()
        };
        self.answer_error(&err, request_id, &extra).await;
        After::Close
    }

    /// Send the committed response to the client while the request pump (if still running)
    /// finishes, and watch the client for EOF so a client that leaves cancels the upstream.
    async fn stream_response(&mut self, c: Box<Committed<S>>, rec: &mut ExchangeRecord) -> After {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        let Committed {
            version,
            client_keep_alive,
            resp_meta,
            // Dropped once written: it holds a slice of the upstream read buffer, which would
            // otherwise stay pinned for the whole stream.
            resp_head,
            request_id,
            retries_note,
            upstream,
            slot,
            client_takes_trailers,
            total_deadline,
            started,
            up_rd,
            up_buf,
            mut pump,
            mut pumped,
        } = *c;
        let v10 = version == Version::Http10;
        let (reader, client_framing) = match resp_meta.framing {
            // No body (HEAD, 204, 304): the head writer keeps a valid Content-Length.
            BodyFraming::None => (BodyReader::None, BodyFraming::None),
            BodyFraming::Length(n) => (BodyReader::Length { remaining: n }, BodyFraming::Length(n)),
            BodyFraming::Chunked => (
                BodyReader::Chunked(Box::new(ChunkedDecoder::new(cfg.limits.chunk))),
                if v10 {
                    BodyFraming::Close
                } else {
                    BodyFraming::Chunked
                },
            ),
            BodyFraming::Close => (
                BodyReader::Close { ended: false },
                if v10 {
                    BodyFraming::Close
                } else {
                    BodyFraming::Chunked
                },
            ),
        };
        let out = OutFraming::from(client_framing);
        let keep_alive = client_keep_alive
            && !shared.draining.is_cancelled()
            && client_framing != BodyFraming::Close;
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(note) = retries_note.as_deref() {
            extra.push(("x-chunkgate-retries", note));
        }
        let mut head_out = BytesMut::with_capacity(512);
        headers::write_response_head(
            &resp_head,
            version,
            &client_framing,
            keep_alive,
            &request_id,
            &extra,
            &mut head_out,
        );
        shared.metrics.stream_started();
        // Committed: the body held for a retry is no longer needed.
        if let Some(p) = pumped.as_mut() {
            p.replay.release();
        }
        // The writer, reader and timing live outside the pump so their counts survive a
        // cancelled pump (client gone, total timeout) for the access log and metrics.
        let mut writer =
            BodyWriter::new(out, client_takes_trailers, cfg.timeouts.client_write_stall);
        drop(resp_head);
        // The head leaves with the first piece of the body when that is already here.
        writer.set_pending(head_out);
        let mut reader = reader;
        let mut ttfc = None;
        let end = {
            let resp = pump_response(
                up_rd,
                up_buf,
                &mut self.wr,
                &mut reader,
                &mut writer,
                &mut ttfc,
                cfg.timeouts.stream_idle,
                &shared.metrics,
                started,
            );
            tokio::pin!(resp);
            let total_sleep = sleep_until_opt(total_deadline);
            tokio::pin!(total_sleep);
            let watch_limit = cfg.limits.head.max_head_bytes;
            loop {
                tokio::select! {
                    r = &mut resp => break Some(r),
                    p = maybe(&mut pump), if pump.is_some() => {
                        pump = None;
                        if let Err(PumpError::Client(e)) = &p.result {
                            tracing::warn!(request_id = %Lossy(&rec.request_id), error = %e, "request body failed after the response started");
                            rec.outcome = Outcome::ClientGone;
                            break None;
                        }
                        let mut p = p;
                        p.replay.release();
                        pumped = Some(p);
                    }
                    _ = watch_client_eof(pumped.as_mut().map(|p| &mut p.client), watch_limit), if pumped.is_some() => {
                        tracing::info!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), "client went away mid-stream: closing the upstream connection");
                        rec.outcome = Outcome::ClientGone;
                        break None;
                    }
                    _ = &mut total_sleep => {
                        shared.metrics.timeout("total");
                        rec.outcome = Outcome::Timeout("total");
                        break None;
                    }
                }
            }
        };
        shared.metrics.stream_ended();
        rec.bytes_out = writer.bytes;
        rec.chunks_out = writer.chunks;
        rec.ttfc = ttfc;
        rec.reassembled = reader.reassembled();
        if let Some(p) = &pumped {
            rec.bytes_in = p.writer.bytes;
            rec.chunks_in = p.writer.chunks;
            rec.reassembled += p.reader.reassembled();
        }
        let Some(out) = end else {
            // `resp` is dropped and `pump` is dropped on return: the upstream connection
            // closes at once.
            return After::Close;
        };
        match out.result {
            Ok(()) => {}
            Err(RespError::Upstream(e)) => {
                rec.outcome = match e {
                    ReadError::Idle => {
                        shared.metrics.timeout("stream_idle");
                        Outcome::Timeout("stream_idle")
                    }
                    _ => Outcome::UpstreamBroke,
                };
                breaker_failure(&shared.metrics, &upstream);
                tracing::warn!(request_id = %Lossy(&rec.request_id), upstream = %upstream.name(), error = %e, "upstream stream broke after the response started: cutting the client stream");
                return After::Close;
            }
            Err(RespError::Client(e)) => {
                rec.outcome = match e {
                    WriteError::Stalled => {
                        shared.metrics.timeout("client_write_stall");
                        Outcome::Timeout("client_write_stall")
                    }
                    WriteError::Io(_) => Outcome::ClientGone,
                };
                return After::Close;
            }
        }
        // The response is complete. Without a finished request body the client connection
        // cannot be reused (its remaining body bytes would be read as a request).
        let Some(p) = pumped else {
            return After::Close;
        };
        if p.result.is_err() {
            return After::Close;
        }
        if resp_meta.keep_alive && out.buf.is_empty() {
            if let Some(stream) = out.rd.unsplit(p.up_wr) {
                upstream
                    .pool
                    .checkin(PooledConn::from_parts(stream, out.buf, slot));
            }
        }
        self.rd = Some(p.client);
        if keep_alive {
            After::KeepAlive
        } else {
            After::Close
        }
    }
}

/// The request body pump, boxed: it is dropped the moment it finishes, so a long stream's
/// state does not hold it.
type PumpFuture<S> = Pin<Box<dyn std::future::Future<Output = PumpOut<S>> + Send>>;

/// How an exchange's upstream phase ended: answered already (an error, a rejection), or with
/// a response to stream to the client.
enum Step<S> {
    Done(After),
    /// Boxed so the exchange's state holds a pointer, not the whole struct, twice.
    Stream(Box<Committed<S>>),
}

/// A committed response: everything the streaming phase needs, owned, so the state of the
/// upstream phase (attempts, head read, retries) is gone while the response streams.
struct Committed<S> {
    version: Version,
    client_keep_alive: bool,
    resp_meta: framing::ResponseMeta,
    resp_head: ResponseHead,
    request_id: Bytes,
    retries_note: Option<String>,
    upstream: Arc<Upstream>,
    slot: crate::upstream::pool::Slot,
    client_takes_trailers: bool,
    total_deadline: Option<Instant>,
    started: Instant,
    up_rd: UpstreamRead,
    up_buf: BytesMut,
    pump: Option<PumpFuture<S>>,
    pumped: Option<PumpOut<S>>,
}

enum HeadRead {
    Bad(HeadError),
    Timeout,
    Closed,
}

fn retries_note(retries: u32, replay_lost: bool) -> Option<String> {
    match (retries, replay_lost) {
        (0, false) => None,
        (n, false) => Some(n.to_string()),
        (n, true) => Some(format!("{n}; body too large to replay")),
    }
}

fn replay_flag<S>(pumped: &Option<PumpOut<S>>) -> bool {
    pumped.as_ref().is_some_and(|p| p.replay.overflowed())
}

fn breaker_failure(metrics: &crate::metrics::Metrics, upstream: &Upstream) {
    if let Some((from, to)) = upstream.breaker.on_failure(Instant::now()) {
        tracing::warn!(upstream = %upstream.name(), ?from, ?to, "circuit breaker state change");
        metrics.breaker_state(upstream.name(), breaker_code(to));
    }
}

fn breaker_success(metrics: &crate::metrics::Metrics, upstream: &Upstream) {
    if let Some((from, to)) = upstream.breaker.on_success(Instant::now()) {
        tracing::info!(upstream = %upstream.name(), ?from, ?to, "circuit breaker state change");
        metrics.breaker_state(upstream.name(), breaker_code(to));
    }
}

fn breaker_code(s: crate::upstream::breaker::BreakerState) -> u8 {
    use crate::upstream::breaker::BreakerState::*;
    match s {
        Closed => 0,
        Open => 1,
        HalfOpen => 2,
    }
}

fn client_body_error(e: &ReadError) -> ExchangeError {
    match e {
        ReadError::Decode(d) => ExchangeError::ClientBody(d.clone()),
        ReadError::Idle => ExchangeError::ClientBodyTimeout,
        ReadError::Eof | ReadError::Io(_) => ExchangeError::ClientGone,
    }
}

fn write_io(e: WriteError) -> std::io::Error {
    match e {
        WriteError::Io(e) => e,
        WriteError::Stalled => std::io::ErrorKind::TimedOut.into(),
    }
}

/// Await the future in `f`, if there is one; never resolve otherwise.
async fn maybe<F: std::future::Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Resolve when the client closes its side (EOF or error). Bytes it sends meanwhile (a
/// pipelined request) are kept in its buffer, up to `limit`; past that, stop reading.
async fn watch_client_eof<S: AsyncRead + Unpin>(client: Option<&mut ClientRead<S>>, limit: usize) {
    let Some(c) = client else {
        return std::future::pending().await;
    };
    loop {
        if c.buf.len() >= limit {
            return std::future::pending().await;
        }
        // Read into a small buffer of the watch's own: a quiet client (the usual case) then
        // needs no heap buffer while its response streams. Bytes it does send are kept.
        let mut tmp = [0u8; 64];
        match c.rd.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// The request body kept for a replay while it fits the limit. Pieces are `Bytes` handles to
/// what was received: keeping them copies nothing.
pub(crate) struct Replay {
    pieces: Vec<Piece>,
    trailers: Vec<Field>,
    size: usize,
    limit: usize,
    overflow: bool,
    finished: bool,
}

impl Replay {
    fn new(limit: usize) -> Replay {
        Replay {
            pieces: Vec::new(),
            trailers: Vec::new(),
            size: 0,
            limit,
            overflow: false,
            finished: false,
        }
    }

    fn push(&mut self, d: &Bytes) {
        if self.overflow {
            return;
        }
        if self.size + d.len() > self.limit {
            self.overflow = true;
            self.pieces = Vec::new();
            return;
        }
        self.size += d.len();
        self.pieces.push(Piece::Data(d.clone()));
    }

    fn finish(&mut self, trailers: Vec<Field>) {
        self.finished = true;
        self.trailers = trailers;
    }

    /// The response has started: no retry can happen any more, so let the body go.
    fn release(&mut self) {
        self.overflow = true;
        self.pieces = Vec::new();
        self.trailers = Vec::new();
    }

    fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    fn trailers(&self) -> &[Field] {
        &self.trailers
    }

    /// The whole body is held: a retry can resend it.
    fn complete(&self) -> bool {
        self.finished && !self.overflow
    }

    fn overflowed(&self) -> bool {
        self.overflow
    }
}

/// What the request pump hands back.
pub(crate) struct PumpOut<S> {
    client: ClientRead<S>,
    reader: BodyReader,
    up_wr: UpstreamWrite,
    writer: BodyWriter,
    replay: Replay,
    result: Result<(), PumpError>,
}

#[derive(Debug)]
enum PumpError {
    /// The client's body was bad, slow or cut.
    Client(ReadError),
    /// Writing to the upstream failed.
    Upstream(WriteError),
}

/// Move the request body from the client to the upstream, one chunk per chunk.
#[allow(clippy::too_many_arguments)]
async fn pump_request<S: AsyncRead + Unpin>(
    mut client: ClientRead<S>,
    mut reader: BodyReader,
    mut up_wr: UpstreamWrite,
    mut writer: BodyWriter,
    mut replay: Replay,
    body_done: bool,
    idle: Duration,
    shared: Arc<Shared>,
) -> PumpOut<S> {
    let metrics = &shared.metrics;
    let result = async {
        if body_done {
            return Ok(());
        }
        let mut trailers = Vec::new();
        let mut reassembled = reader.reassembled();
        let mut read_size = ReadSize::new();
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let mut idle = ReadIdle::new(idle, sleep);
        let mut carry: Pending = None;
        loop {
            let next = match carry.take() {
                Some(next) => next,
                None => match reader.next_buffered(&mut client.buf) {
                    Ok(Some(next)) => Ok(next),
                    Ok(None) => {
                        // Nothing at hand: the head must not wait for the body.
                        writer
                            .flush_pending(&mut up_wr)
                            .await
                            .map_err(PumpError::Upstream)?;
                        reader
                            .next(&mut client.rd, &mut client.buf, &mut idle, &mut read_size)
                            .await
                    }
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok(Next::Piece(Piece::Data(d))) => {
                    // Chunks that arrived in the same read leave in the same write.
                    let (batch, n) = gather(d, &mut reader, &mut client.buf, &mut carry);
                    let batch = &batch[..n];
                    // Held for replay before they are written: if the write fails, what was
                    // read from the client can still be sent to another upstream.
                    for d in batch {
                        replay.push(d);
                    }
                    writer
                        .data_batch(&mut up_wr, batch)
                        .await
                        .map_err(PumpError::Upstream)?;
                    count_chunks(
                        metrics,
                        Direction::Request,
                        batch,
                        &reader,
                        &mut reassembled,
                    );
                }
                Ok(Next::Piece(Piece::Trailers(t))) => trailers = t,
                Ok(Next::End) => {
                    // The body was read whole, whatever becomes of the write below.
                    replay.finish(trailers);
                    writer
                        .end(&mut up_wr, replay.trailers())
                        .await
                        .map_err(PumpError::Upstream)?;
                    return Ok(());
                }
                Err(e) => return Err(PumpError::Client(e)),
            }
        }
    }
    .await;
    PumpOut {
        client,
        reader,
        up_wr,
        writer,
        replay,
        result,
    }
}

/// Read the upstream's response head, skipping interim 1xx responses.
async fn read_response_head(
    mut rd: UpstreamRead,
    mut buf: BytesMut,
    mut parser: ResponseParser,
    limit: Duration,
) -> (UpstreamRead, BytesMut, Result<ResponseHead, ExchangeError>) {
    let res = timeout(limit, async {
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(h)) if h.status == 101 => return Err(ExchangeError::UpstreamSwitched),
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    parser.reset();
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::UpstreamHead(e)),
            }
            make_room(&mut buf, 512, crate::upstream::pool::READ_BUF_CAPACITY);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return Err(ExchangeError::UpstreamClosed),
                Ok(_) => {}
                Err(e) => return Err(ExchangeError::UpstreamIo(e)),
            }
        }
    })
    .await
    .unwrap_or(Err(ExchangeError::UpstreamHeadTimeout));
    (rd, buf, res)
}

/// Count forwarded chunks, and those that had to be reassembled from several reads.
fn count_chunks(
    metrics: &crate::metrics::Metrics,
    dir: Direction,
    pieces: &[Bytes],
    reader: &BodyReader,
    seen: &mut u64,
) {
    for d in pieces {
        metrics.chunk_forwarded(dir, d.len());
    }
    let now = reader.reassembled();
    for _ in *seen..now {
        metrics.chunk_reassembled(dir);
    }
    *seen = now;
}

/// What the body reader gave that a pump has not handled yet.
type Pending = Option<Result<Next, ReadError>>;

/// After the data piece `first`, take the data pieces already whole in `buf`, up to
/// [`BATCH`] in all, to be written together. The first thing that is not one (trailers, the
/// end, an error) is left in `carry` for the pump's next turn; nothing is read.
fn gather(
    first: Bytes,
    reader: &mut BodyReader,
    buf: &mut BytesMut,
    carry: &mut Pending,
) -> ([Bytes; BATCH], usize) {
    let mut batch: [Bytes; BATCH] = Default::default();
    batch[0] = first;
    let mut n = 1;
    while n < BATCH {
        match reader.next_buffered(buf) {
            Ok(Some(Next::Piece(Piece::Data(d)))) => {
                batch[n] = d;
                n += 1;
            }
            Ok(Some(other)) => {
                *carry = Some(Ok(other));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                *carry = Some(Err(e));
                break;
            }
        }
    }
    (batch, n)
}

/// What the response pump hands back.
struct RespOut {
    rd: UpstreamRead,
    buf: BytesMut,
    result: Result<(), RespError>,
}

#[derive(Debug)]
enum RespError {
    Upstream(ReadError),
    Client(WriteError),
}

/// Move the response body from the upstream to the client, each chunk written and flushed the
/// moment it is complete. On any failure nothing more is written: no terminating chunk.
#[allow(clippy::too_many_arguments)]
async fn pump_response<W: AsyncWrite + Unpin>(
    mut rd: UpstreamRead,
    mut buf: BytesMut,
    wr: &mut W,
    reader: &mut BodyReader,
    writer: &mut BodyWriter,
    ttfc: &mut Option<Duration>,
    idle: Duration,
    metrics: &crate::metrics::Metrics,
    started: Instant,
) -> RespOut {
    let mut last: Option<Instant> = None;
    let result = async {
        let mut trailers = Vec::new();
        let mut reassembled = 0;
        let mut read_size = ReadSize::new();
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let mut idle = ReadIdle::new(idle, sleep);
        let mut carry: Pending = None;
        loop {
            let next = match carry.take() {
                Some(next) => next,
                None => match reader.next_buffered(&mut buf) {
                    Ok(Some(next)) => Ok(next),
                    Ok(None) => {
                        // Nothing at hand: the client gets the head now, not with the first chunk.
                        writer.flush_pending(wr).await.map_err(RespError::Client)?;
                        reader
                            .next(&mut rd, &mut buf, &mut idle, &mut read_size)
                            .await
                    }
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok(Next::Piece(Piece::Data(d))) => {
                    let now = Instant::now();
                    match last {
                        None => *ttfc = Some(now - started),
                        Some(prev) => metrics.inter_chunk_gap(now - prev),
                    }
                    last = Some(now);
                    // Chunks that arrived in the same read leave in the same write.
                    let (batch, n) = gather(d, reader, &mut buf, &mut carry);
                    let batch = &batch[..n];
                    writer
                        .data_batch(wr, batch)
                        .await
                        .map_err(RespError::Client)?;
                    count_chunks(
                        metrics,
                        Direction::Response,
                        batch,
                        reader,
                        &mut reassembled,
                    );
                }
                Ok(Next::Piece(Piece::Trailers(t))) => trailers = t,
                Ok(Next::End) => {
                    writer.end(wr, &trailers).await.map_err(RespError::Client)?;
                    return Ok(());
                }
                Err(e) => return Err(RespError::Upstream(e)),
            }
        }
    }
    .await;
    RespOut { rd, buf, result }
}
