//! One exchange, in sequence: admit → attempts → commit → stream → finish.
//!
//! ```text
//!  admit: framing, route, auth, body limit ──► attempts (attempt.rs), each decided on by
//!                                              RetryPolicy::decide ──► commit: the response head
//!                                              goes to the client ──► stream: response body pump
//!                                              ∥ rest of the request body ∥ client EOF watch
//!                                              ──► finish: one outcome, counted and logged once
//! ```
//!
//! Every exchange ends in [`Exchange::finish`], the only place that fills in its record: the
//! outcome comes from [`ExchangeError::outcome`] (or is `complete`), the client gets an
//! error answer when nothing of the response went out yet, and the record is counted and
//! logged exactly once. A failure after the response head went out cuts the client stream:
//! the connection closes without the terminating chunk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::chunked::ChunkedDecoder;
use crate::codec::framing::{self, BodyFraming, RequestMeta};
use crate::codec::head::{RequestHead, Version};
use crate::codec::path::{normalize_target, NormalTarget, PathOptions};
use crate::logging::{ExchangeRecord, Lossy, Outcome};
use crate::metrics::Direction;
use crate::proxy::attempt::{
    self, breaker_failure, sleep_until_opt, AttemptCtx, AttemptScratch, Committed, Upload,
    UploadSlot,
};
use crate::proxy::body::{BodyReader, BodyWriter, OutFraming};
use crate::proxy::conn::{
    note_early_eof, watch_eof, ClientConn, ClientEnd, ClientInfo, ClientRead,
};
use crate::proxy::error::ExchangeError;
use crate::proxy::headers;
use crate::proxy::io::{MinRate, ReadIdle, ReadSize};
use crate::proxy::keepalive::KeepAlive;
use crate::proxy::pump::{Pump, PumpError};
use crate::proxy::replay::Replay;
use crate::proxy::response::{ResponseFlow, ResponsePlan};
use crate::proxy::route::{self, Route};
use crate::proxy::Shared;
use crate::stream::dialect::Dialect;
use crate::stream::request::inject_include_usage;
use crate::upstream::balance::{Group, Upstream};
use crate::upstream::pool::PooledConn;
use crate::upstream::retry::{Failure, FailureKind};

/// Whether the client connection can carry another exchange; its read half comes back only
/// when it can.
pub(crate) enum After<S> {
    KeepAlive(ClientRead<S>),
    /// Close; with the read half when an error answer was just written, so the connection
    /// can linger while the client reads it.
    Close(Option<ClientRead<S>>),
}

/// The route and upstream of an exchange that reached neither.
static NONE_LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));

/// One exchange on a client connection.
struct Exchange<'c, S> {
    conn: &'c mut ClientConn<S>,
    shared: Arc<Shared>,
    rec: ExchangeRecord,
    started: Instant,
    /// The request id as sent upstream and to the client.
    request_id: Bytes,
    /// The response head went to the client: a failure now cuts the stream.
    committed: bool,
    /// The matched route's place in the proxy's list.
    route: Option<usize>,
    /// Time from the answer's first token to its end, when the tap saw one.
    streamed: Option<Duration>,
    /// Keepalive comments committed the response (`200`, chunked) before the upstream
    /// answered: its head is not written again.
    early: bool,
}

/// An admitted request: how its body is delimited and where it goes.
struct Admitted<'r> {
    meta: RequestMeta,
    /// The target after the path policy: what routes matched and what goes upstream.
    target: NormalTarget,
    route: &'r Route,
    client_takes_trailers: bool,
}

/// Run the exchange of `head` on `conn`. The client's read half comes back with
/// [`After::KeepAlive`] when the connection may carry another request.
pub(crate) async fn run<S>(
    conn: &mut ClientConn<S>,
    client: ClientRead<S>,
    head: RequestHead,
) -> After<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&conn.shared);
    let request_id = headers::request_id_of(&head).unwrap_or_else(headers::new_request_id);
    let rec = ExchangeRecord {
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
        started_at: std::time::SystemTime::now(),
        ttft: None,
        llm: None,
    };
    let mut ex = Exchange {
        conn,
        shared,
        rec,
        started: Instant::now(),
        request_id,
        committed: false,
        route: None,
        streamed: None,
        early: false,
    };
    let mut upload = UploadSlot::Idle(Box::new(Upload::new(
        client,
        BodyReader::None,
        Replay::new(0),
    )));
    let result = ex.sequence(head, &mut upload).await;
    ex.finish(result, upload).await
}

impl<S> Exchange<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Admit, attempt, commit and stream. `Ok(keep_alive)` when the response went out whole.
    async fn sequence(
        &mut self,
        head: RequestHead,
        upload: &mut UploadSlot<S>,
    ) -> Result<bool, ExchangeError> {
        let shared = Arc::clone(&self.shared);
        let mut admitted = admit(&shared, &head, &self.conn.info, &mut self.rec, upload)?;
        self.route = Some(admitted.route.index);
        let mut hide_usage = false;
        if let BodyFraming::Length(n) = admitted.meta.framing {
            // A small Content-Length body has no chunk boundaries to keep: read it whole
            // before any upstream connection is taken, so a slow client holds none.
            if n <= shared.config.limits.buffer_request_body {
                if admitted.meta.expect_continue {
                    admitted.meta.expect_continue = false;
                    self.conn.continue_100().await;
                }
                if let Some(u) = upload.idle() {
                    prefill(
                        &mut u.client,
                        n,
                        shared.config.timeouts.stream_idle,
                        u.min_rate,
                    )
                    .await?;
                    if admitted.route.stream.inject_include_usage {
                        hide_usage = ask_for_usage(u, &mut admitted, n);
                    }
                }
            }
        }
        let keepalive =
            admitted.route.stream.keepalive.filter(|_| {
                head.version != Version::Http10 && wants_stream(&head, &admitted, upload)
            });
        let total_deadline = shared.config.timeouts.total.map(|t| self.started + t);
        // Boxed: the upstream phase's state is the largest part of a connection's, and a
        // stream that outlives it should not keep its room.
        let committed = {
            let attempts =
                Box::pin(self.attempts(&head, &admitted, upload, total_deadline, keepalive));
            let hard_stop = shared.hard_stop.cancelled();
            tokio::select! {
                c = attempts => c?,
                _ = hard_stop => return Err(ExchangeError::Shutdown),
            }
        };
        let version = head.version;
        let client_keep_alive = admitted.meta.keep_alive;
        let client_takes_trailers = admitted.client_takes_trailers;
        if matches!(
            committed.resp_meta.framing,
            BodyFraming::Chunked | BodyFraming::Close
        ) {
            // A stream may last minutes: let go of the client's read buffer while it runs.
            // Nothing may point into it: the head goes, the few bytes the record and the
            // answer keep are copied, and an empty buffer is freed (the next request head
            // gets a fresh one).
            drop(head);
            self.rec.detach();
            self.request_id = self.rec.request_id.clone();
            if let Some(u) = upload.idle() {
                if u.client.buf.is_empty() {
                    u.client.buf = BytesMut::new();
                }
            }
        }
        let client = ClientSide {
            version,
            keep_alive: client_keep_alive,
            takes_trailers: client_takes_trailers,
            route: admitted.route,
            path: admitted.target.path(),
            hide_usage,
        };
        self.stream(committed, upload, client, total_deadline).await
    }

    /// Attempts until one gives a response to commit or the retry policy gives up.
    async fn attempts(
        &mut self,
        head: &RequestHead,
        admitted: &Admitted<'_>,
        upload: &mut UploadSlot<S>,
        total_deadline: Option<Instant>,
        keepalive: Option<Duration>,
    ) -> Result<Box<Committed>, ExchangeError> {
        let shared = Arc::clone(&self.shared);
        let policy = &shared.retry;
        policy.on_request();
        let deadline = Instant::now() + shared.config.retry.deadline;
        let group = &shared.groups[admitted.route.group];
        let ctx = AttemptCtx {
            shared: &shared,
            head,
            meta: &admitted.meta,
            target: &admitted.target,
            route: admitted.route,
            request_id: &self.request_id,
            client: &self.conn.info,
            total_deadline,
        };
        let mut tried: Vec<usize> = Vec::new();
        let mut scratch = AttemptScratch::default();
        scratch.keepalive = keepalive.map(|every| {
            KeepAlive::new(
                every,
                tokio::time::Instant::from_std(self.started),
                self.request_id.clone(),
                shared.config.timeouts.client_write_stall,
            )
        });
        let mut attempt: u32 = 0;
        loop {
            let Some(upstream) = pick(group, &mut tried) else {
                return Err(ExchangeError::BreakerOpen {
                    group: group.name.clone(),
                });
            };
            attempt += 1;
            self.rec.upstream = Arc::clone(upstream.name_shared());
            let result =
                attempt::run(&ctx, &upstream, upload, &mut self.conn.wr, &mut scratch).await;
            if let Some(ka) = scratch.keepalive.as_ref().filter(|k| k.committed()) {
                // Keepalive comments committed `200`: no retry, and a failure is told in the
                // stream.
                self.committed = true;
                self.early = true;
                self.rec.status = 200;
                let err = match result {
                    Ok(c) if (200..300).contains(&c.resp_head.status) => {
                        self.rec.ttfb = Some(self.started.elapsed());
                        return Ok(c);
                    }
                    Ok(c) => ExchangeError::UpstreamStatus(c.resp_head.status),
                    Err(f) => f.error,
                };
                if err.answerable() {
                    ka.error_event(&mut self.conn.wr, &err).await;
                }
                return Err(err);
            }
            let (failure, error, committed) = match result {
                Ok(c) => {
                    self.rec.ttfb = Some(self.started.elapsed());
                    self.rec.status = c.resp_head.status;
                    if !policy.retries_status(c.resp_head.status) {
                        return Ok(c);
                    }
                    let failure = Failure {
                        kind: FailureKind::Status(c.resp_head.status),
                        replayable: upload.replayable(),
                        retry_after: c.retry_after(),
                    };
                    (failure, None, Some(c))
                }
                Err(f) => {
                    let failure = Failure {
                        kind: f.kind,
                        replayable: upload.replayable(),
                        retry_after: None,
                    };
                    (failure, Some(f.error), None)
                }
            };
            let Some(delay) = policy.decide(&failure, attempt, deadline) else {
                // No retry: a response goes to the client as it is; a failure is answered.
                return match (committed, error) {
                    (Some(c), _) => Ok(c),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(ExchangeError::UpstreamClosed),
                };
            };
            match &error {
                Some(e) => {
                    tracing::info!(request_id = %Lossy(&self.rec.request_id), upstream = %upstream.name(), attempt, error = %e, delay_ms = delay.as_millis() as u64, "retrying")
                }
                None => {
                    tracing::info!(request_id = %Lossy(&self.rec.request_id), upstream = %upstream.name(), status = self.rec.status, delay_ms = delay.as_millis() as u64, "retrying after a retryable status")
                }
            }
            // Dropping a response's halves closes that connection.
            drop(committed);
            self.rec.retries += 1;
            shared.metrics.retry(upstream.name());
            tokio::time::sleep(delay).await;
        }
    }

    /// Send the committed response to the client while the rest of the request body (if
    /// any) is pumped, and watch the client for EOF so a client that leaves cancels the
    /// upstream. `Ok(keep_alive)` when the response went out whole.
    async fn stream(
        &mut self,
        committed: Box<Committed>,
        upload: &mut UploadSlot<S>,
        client: ClientSide<'_>,
        total_deadline: Option<Instant>,
    ) -> Result<bool, ExchangeError> {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        let Committed {
            resp_head,
            resp_meta,
            upstream,
            slot,
            mut up_rd,
            mut up_buf,
        } = *committed;
        let (mut reader, mut client_framing) =
            client_framing(resp_meta.framing, client.version, cfg.limits.chunk);
        // A response still transfer-coded (`gzip`, `chunked, deflate`) is read until close and
        // passed on the same way, its `Transfer-Encoding` kept, so the client can decode it.
        let coding: Option<String> = resp_meta.transfer_coded.then(|| {
            resp_head
                .get_all("transfer-encoding")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        });
        if coding.is_some() {
            client_framing = BodyFraming::Close;
        }
        let plan = ResponsePlan::new(
            client.route,
            client.path,
            &resp_head,
            &resp_meta.framing,
            coding.is_some(),
            client.hide_usage,
        );
        if self.early {
            // The keepalive head promised a chunked event stream.
            client_framing = BodyFraming::Chunked;
        } else if plan.stage.is_some() && matches!(client_framing, BodyFraming::Length(_)) {
            // Aligned events leave as chunks of their own, whatever the upstream's framing.
            client_framing = if client.version == Version::Http10 {
                BodyFraming::Close
            } else {
                BodyFraming::Chunked
            };
        }
        let keep_alive = client.keep_alive
            && !shared.draining.is_cancelled()
            && client_framing != BodyFraming::Close;
        let note = retries_note(self.rec.retries, replay_lost(upload));
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(note) = note.as_deref() {
            extra.push(("x-chunkgate-retries", note));
        }
        if let Some(coding) = coding.as_deref() {
            extra.push(("transfer-encoding", coding));
        }
        let mut head_out = BytesMut::with_capacity(512);
        headers::write_response_head(
            &resp_head,
            client.version,
            &client_framing,
            keep_alive,
            &self.request_id,
            &extra,
            &mut head_out,
        );
        // Dropped once written: it holds a slice of the upstream read buffer, which would
        // otherwise stay pinned for the whole stream.
        drop(resp_head);
        self.committed = true;
        // An upstream that answered before the request body was all written may not have
        // read the rest: its connection is never reused (the rest would be read as the next
        // request on it).
        let answered_early = upload.is_pumping();
        shared.metrics.stream_started();
        // Committed: the body held for a retry is no longer needed. A client that shut down
        // its sending side before its response started (an EOF already waiting) half-closed
        // on purpose and is still reading: its answer goes on. An EOF later means it left.
        if let Some(u) = upload.idle() {
            u.replay.release();
            note_early_eof(&mut u.client, cfg.limits.head.max_head_bytes).await;
        }
        // The writer, reader and flow live outside the pump so their counts survive a
        // cancelled pump (client gone, total timeout) for the record.
        let mut writer = BodyWriter::new(
            OutFraming::from(client_framing),
            client.takes_trailers,
            cfg.timeouts.client_write_stall,
        );
        // The head leaves with the first piece of the body when that is already here.
        if !self.early {
            writer.set_pending(head_out);
        }
        let mut flow = ResponseFlow {
            metrics: &shared.metrics,
            llm: &client.route.llm,
            started: self.started,
            last: None,
            ttfc: None,
            stage: plan.stage,
            tap: plan.tap,
            hide_usage: client.hide_usage,
        };
        let end = {
            let resp = Pump {
                src: &mut up_rd,
                buf: &mut up_buf,
                dst: &mut self.conn.wr,
                reader: &mut reader,
                writer: &mut writer,
                flow: &mut flow,
                idle: cfg.timeouts.stream_idle,
                min_rate: None,
                metrics: &shared.metrics,
                dir: Direction::Response,
            }
            .run();
            let watch = Watch {
                total_deadline,
                hard_stop: &shared.hard_stop,
                watch_limit: cfg.limits.head.max_head_bytes,
                request_id: &self.rec.request_id,
                upstream: upstream.name(),
            };
            watch.drive(resp, upload).await
        };
        shared.metrics.stream_ended();
        self.rec.bytes_out = writer.bytes;
        self.rec.chunks_out = writer.chunks;
        self.rec.ttfc = flow.ttfc;
        self.rec.reassembled += reader.reassembled();
        if let Some(stage) = &flow.stage {
            client.route.llm.aligned(&stage.counts());
        }
        if let Some(mut tap) = flow.tap.take() {
            if end.is_ok() {
                tap.end();
            }
            let summary = tap.summary();
            if let Some(at) = summary.first_token_at {
                self.rec.ttft = Some(at.saturating_duration_since(self.started));
                self.streamed = Some(at.elapsed());
            }
            self.rec.llm = Some(Box::new(summary));
        }
        if let Err(e) = end {
            if let ExchangeError::UpstreamBroke(_) = e {
                breaker_failure(&shared, &upstream);
                tracing::warn!(request_id = %Lossy(&self.rec.request_id), upstream = %upstream.name(), error = %e, "upstream stream broke after the response started: cutting the client stream");
            }
            // The response pump and the upstream halves are dropped: the upstream
            // connection closes at once.
            return Err(e);
        }
        // The response is complete. Without a finished request body neither connection can
        // be reused (the rest of the body would be read as a request).
        let Some(u) = upload.idle().filter(|u| u.done()) else {
            return Ok(false);
        };
        if resp_meta.keep_alive && up_buf.is_empty() && !answered_early {
            if let Some(stream) = u.up_wr.take().and_then(|w| up_rd.unsplit(w)) {
                upstream
                    .pool
                    .checkin(PooledConn::from_parts(stream, up_buf, slot));
            }
        }
        Ok(keep_alive)
    }

    /// The one place an exchange ends: outcome, answer, counts, access log.
    async fn finish(
        mut self,
        result: Result<bool, ExchangeError>,
        upload: UploadSlot<S>,
    ) -> After<S> {
        let metrics = &self.shared.metrics;
        let mut answered = false;
        let keep_alive = match result {
            Ok(keep_alive) => {
                self.rec.outcome = Outcome::Complete;
                keep_alive
            }
            Err(err) => {
                let outcome = err.outcome();
                match outcome {
                    Outcome::Rejected(reason) => metrics.rejected(reason),
                    // Attempt timeouts (connect, response head) are counted by the attempt
                    // that hit them, retried or not.
                    Outcome::Timeout(kind)
                        if !matches!(
                            err,
                            ExchangeError::Connect(_) | ExchangeError::UpstreamHeadTimeout
                        ) =>
                    {
                        metrics.timeout(kind)
                    }
                    _ => {}
                }
                self.rec.outcome = outcome;
                if !self.committed {
                    tracing::debug!(request_id = %Lossy(&self.rec.request_id), error = %err, "exchange failed before the response");
                    if err.answerable() {
                        self.rec.status = err.answer().0;
                        let retries = self.rec.retries.to_string();
                        let wait = err.retry_after_secs().map(|s| s.to_string());
                        let mut extra: Vec<(&str, &str)> = Vec::new();
                        if self.rec.retries > 0 {
                            extra.push(("x-chunkgate-retries", retries.as_str()));
                        }
                        if let Some(wait) = wait.as_deref() {
                            extra.push(("retry-after", wait));
                        }
                        let id = self.request_id.clone();
                        self.conn.answer(&err, &id, &extra).await;
                        answered = true;
                    }
                }
                false
            }
        };
        let after = match upload {
            UploadSlot::Idle(u) => {
                self.rec.bytes_in = u.writer.bytes;
                self.rec.chunks_in = u.writer.chunks;
                self.rec.reassembled += u.reader.reassembled();
                if keep_alive && u.done() && !u.client.half_closed {
                    After::KeepAlive(u.client)
                } else if answered {
                    After::Close(Some(u.client))
                } else {
                    After::Close(None)
                }
            }
            UploadSlot::Pumping(_) | UploadSlot::Taken => After::Close(None),
        };
        self.rec.duration = self.started.elapsed();
        self.conn.counters.count(&self.shared.metrics, &self.rec);
        if let (Some(summary), Some(i)) = (&self.rec.llm, self.route) {
            let route = &self.shared.routes[i].llm;
            metrics.answer_read(route, summary, self.rec.ttft, self.streamed);
        }
        if self.shared.config.log.access_log {
            crate::logging::access_log(&self.rec);
        }
        if let Some(capture) = &self.shared.capture {
            capture.submit(&self.rec, None);
        }
        after
    }
}

/// How the response body is read from the upstream, and how it is framed for the client: an
/// HTTP/1.0 client cannot take chunked framing (it gets the body close-delimited); a
/// close-delimited upstream body is re-framed as chunked for an HTTP/1.1 client.
fn client_framing(
    upstream: BodyFraming,
    client: Version,
    limits: crate::codec::chunked::Limits,
) -> (BodyReader, BodyFraming) {
    let streamed = if client == Version::Http10 {
        BodyFraming::Close
    } else {
        BodyFraming::Chunked
    };
    match upstream {
        // No body (HEAD, 204, 304): the head writer keeps a valid Content-Length.
        BodyFraming::None => (BodyReader::None, BodyFraming::None),
        BodyFraming::Length(n) => (BodyReader::Length { remaining: n }, BodyFraming::Length(n)),
        BodyFraming::Chunked => (
            BodyReader::Chunked(Box::new(ChunkedDecoder::new(limits))),
            streamed,
        ),
        BodyFraming::Close => (BodyReader::Close { ended: false }, streamed),
    }
}

/// What the streaming phase needs to know of the client and its request.
struct ClientSide<'r> {
    version: Version,
    keep_alive: bool,
    takes_trailers: bool,
    route: &'r Route,
    /// The normalised path, without the query.
    path: &'r [u8],
    /// `include_usage` was added to the request: hide the usage-only event.
    hide_usage: bool,
}

/// Framing, route, authorization and body limits: what is refused before any upstream work.
/// Sets up how the request body will be read and held.
fn admit<'r, S>(
    shared: &'r Shared,
    head: &RequestHead,
    client: &ClientInfo,
    rec: &mut ExchangeRecord,
    upload: &mut UploadSlot<S>,
) -> Result<Admitted<'r>, ExchangeError> {
    let cfg = &shared.config;
    let meta = framing::request_meta(head).map_err(ExchangeError::ClientFraming)?;
    if let Some(authority) = &head.target_authority {
        if !client.is_own_authority(authority) {
            return Err(ExchangeError::ForeignAuthority);
        }
    }
    // Parameters (`;`) are refused: no route allows them.
    let target = normalize_target(&head.target, PathOptions::default())
        .map_err(ExchangeError::ClientPath)?;
    let route =
        route::select(&shared.routes, &target.match_path()).ok_or(ExchangeError::NoRoute)?;
    rec.route = Arc::clone(&route.name);
    if !route.authorized(head.get("authorization").map(|v| &v[..])) {
        return Err(ExchangeError::Unauthorized);
    }
    let reader = match meta.framing {
        BodyFraming::None | BodyFraming::Close => BodyReader::None,
        BodyFraming::Length(n) => {
            if let Some(limit) = cfg.limits.max_request_body {
                if n > limit {
                    return Err(ExchangeError::ClientBodyTooLarge { limit });
                }
            }
            BodyReader::Length { remaining: n }
        }
        BodyFraming::Chunked => {
            BodyReader::Chunked(Box::new(ChunkedDecoder::new(cfg.limits.chunk)))
        }
    };
    if let Some(u) = upload.idle() {
        u.reader = reader;
        u.replay = Replay::new(cfg.retry.max_replay_body);
        u.min_rate = (cfg.limits.client_body_min_rate > 0).then(|| MinRate {
            start: tokio::time::Instant::now(),
            grace: cfg.timeouts.client_body_grace,
            bytes_per_sec: cfg.limits.client_body_min_rate,
        });
    }
    let client_takes_trailers = head.get_all("te").any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    Ok(Admitted {
        meta,
        target,
        route,
        client_takes_trailers,
    })
}

/// Whether a request asks for a streamed answer: it accepts `text/event-stream`, or its
/// whole body (read already) is JSON with `"stream": true`.
fn wants_stream<S>(
    head: &RequestHead,
    admitted: &Admitted<'_>,
    upload: &mut UploadSlot<S>,
) -> bool {
    let accepts_events = head
        .get_all("accept")
        .any(|v| memchr::memmem::find(&v.to_ascii_lowercase(), b"text/event-stream").is_some());
    if accepts_events {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Body {
        stream: Option<bool>,
    }
    let (BodyFraming::Length(n), Some(u)) = (admitted.meta.framing, upload.idle()) else {
        return false;
    };
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    u.client.buf.get(..n).is_some_and(|body| {
        serde_json::from_slice::<Body>(body).is_ok_and(|b| b.stream == Some(true))
    })
}

/// `inject_include_usage`: when the whole body (`n` bytes, in the client's buffer) is an
/// OpenAI chat/completions streaming request without `stream_options.include_usage`, ask for
/// usage: the body forwarded (and held for a replay) is the one with it. True when it was
/// added, so the usage-only event is kept from the client.
fn ask_for_usage<S>(u: &mut Upload<S>, admitted: &mut Admitted<'_>, n: u64) -> bool {
    let openai = matches!(
        Dialect::from_path(admitted.target.path()),
        Some(Dialect::OpenAiChat | Dialect::OpenAiCompletions)
    );
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    if !openai || u.client.buf.len() < n {
        return false;
    }
    let Some(body) = inject_include_usage(&u.client.buf[..n]) else {
        return false;
    };
    let rest = u.client.buf.split_off(n);
    let mut buf = BytesMut::with_capacity(body.len() + rest.len());
    buf.extend_from_slice(&body);
    buf.extend_from_slice(&rest);
    u.client.buf = buf;
    let len = body.len() as u64;
    u.reader = BodyReader::Length { remaining: len };
    admitted.meta.framing = BodyFraming::Length(len);
    true
}

/// Read until `client.buf` holds `n` bytes (a whole Content-Length body), held to the idle
/// limit between reads and to `rate`.
async fn prefill<S: AsyncRead>(
    client: &mut ClientRead<S>,
    n: u64,
    idle: Duration,
    rate: Option<MinRate>,
) -> Result<(), ExchangeError> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if client.buf.len() >= n {
        return Ok(());
    }
    client.buf.reserve(n - client.buf.len());
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let mut timer = ReadIdle::new(idle, sleep).with_rate(rate);
    let mut size = ReadSize::new();
    while client.buf.len() < n {
        match timer.read(&mut client.rd, &mut client.buf, &mut size).await {
            Ok(0) | Err(Some(_)) => return Err(ExchangeError::ClientGone),
            Ok(_) => {}
            Err(None) => return Err(ExchangeError::ClientBodyTimeout),
        }
    }
    Ok(())
}

/// Choose the next upstream and take its breaker: upstreams whose breaker refuses are
/// skipped without costing an attempt. `None` when every breaker refuses.
fn pick(group: &Group, tried: &mut Vec<usize>) -> Option<Arc<Upstream>> {
    for _ in 0..group.upstreams.len() {
        let now = Instant::now();
        let idx = group.pick(tried, now)?;
        tried.push(idx);
        let upstream = &group.upstreams[idx];
        if upstream.breaker.try_acquire(now).is_ok() {
            return Some(Arc::clone(upstream));
        }
    }
    None
}

/// What the response pump races while it runs.
struct Watch<'a> {
    total_deadline: Option<Instant>,
    hard_stop: &'a tokio_util::sync::CancellationToken,
    /// Most bytes a client may send while its response streams (a pipelined request).
    watch_limit: usize,
    request_id: &'a [u8],
    upstream: &'a str,
}

impl Watch<'_> {
    /// Run the response pump `resp` to its end while the rest of the request body is pumped
    /// and the client is watched for EOF, within the total deadline and until a hard stop.
    async fn drive<S, F>(self, resp: F, upload: &mut UploadSlot<S>) -> Result<(), ExchangeError>
    where
        S: AsyncRead + Send + 'static,
        F: std::future::Future<Output = Result<(), PumpError>>,
    {
        tokio::pin!(resp);
        let total = sleep_until_opt(self.total_deadline);
        tokio::pin!(total);
        let hard_stop = crate::proxy::io::cancelled(self.hard_stop);
        tokio::pin!(hard_stop);
        loop {
            tokio::select! {
                r = &mut resp => return r.map_err(|e| match e {
                    PumpError::Read(e) => ExchangeError::UpstreamBroke(e),
                    PumpError::Write(e) => ExchangeError::ClientWrite(e),
                }),
                ev = client_event(upload, self.watch_limit) => match ev {
                    ClientEvent::BodyDone => {}
                    ClientEvent::BodyFailed(e) => {
                        tracing::warn!(request_id = %Lossy(self.request_id), error = %e, "request body failed after the response started");
                        return Err(e);
                    }
                    ClientEvent::Closed => {
                        tracing::info!(request_id = %Lossy(self.request_id), upstream = %self.upstream, "client went away mid-stream: closing the upstream connection");
                        return Err(ExchangeError::ClientGone);
                    }
                },
                _ = &mut total => return Err(ExchangeError::TotalTimeout),
                _ = &mut hard_stop => return Err(ExchangeError::Shutdown),
            }
        }
    }
}

/// What happened on the client's side while its response streams.
enum ClientEvent {
    /// The request body pump finished; the body was read whole (its write may have failed).
    BodyDone,
    /// The request body could not be read.
    BodyFailed(ExchangeError),
    /// The client closed its side.
    Closed,
}

/// Wait for the request body pump to finish, or, once it has, for the client to close.
async fn client_event<S: AsyncRead + Send + 'static>(
    upload: &mut UploadSlot<S>,
    watch_limit: usize,
) -> ClientEvent {
    if upload.is_pumping() {
        let u = upload.pumped().await;
        if let Some(Err(PumpError::Read(_))) = &u.result {
            if let Some(Err(PumpError::Read(e))) = u.result.take() {
                return ClientEvent::BodyFailed(ExchangeError::client_body(e));
            }
        }
        u.replay.release();
        return ClientEvent::BodyDone;
    }
    match upload.idle() {
        Some(u) => match watch_eof(&mut u.client, watch_limit).await {
            // An EOF once the response streams: the client left.
            ClientEnd::Eof | ClientEnd::Gone => ClientEvent::Closed,
        },
        None => std::future::pending().await,
    }
}

/// The `x-chunkgate-retries` note: how many retries, and whether the body was too large to
/// hold for another.
fn retries_note(retries: u32, replay_lost: bool) -> Option<String> {
    match (retries, replay_lost) {
        (0, false) => None,
        (n, false) => Some(n.to_string()),
        (n, true) => Some(format!("{n}; body too large to replay")),
    }
}

fn replay_lost<S>(upload: &mut UploadSlot<S>) -> bool {
    upload.idle().is_some_and(|u| u.replay.overflowed())
}
