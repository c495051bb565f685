//! One upstream attempt, and the request body it carries.
//!
//! ```text
//!  checkout (idle, or connect) ─► head (+ the body held for a replay) ─► 100 Continue?
//!        │                                   │
//!        ▼                                   ▼
//!   Connect failure            request body pump ∥ response head read ∥ total deadline
//!                                            │
//!                     ┌──────────────────────┴──────────────────────┐
//!                     ▼                                             ▼
//!              Committed (a response head)              AttemptFailure (who failed, whether
//!                                                       the upstream may have processed it)
//! ```
//!
//! The request body lives in an [`Upload`], which the body pump owns while it runs (so the
//! request body and the response head are handled concurrently in one task, without locks)
//! and hands back when it finishes. [`UploadSlot`] says where it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::framing::{self, RequestMeta, ResponseMeta};
use crate::codec::head::{RequestHead, ResponseHead, ResponseParser};
use crate::codec::path::NormalTarget;
use crate::logging::Lossy;
use crate::metrics::Direction;
use crate::proxy::body::{BodyReader, BodyWriter, OutFraming};
use crate::proxy::conn::{ClientInfo, ClientRead};
use crate::proxy::error::ExchangeError;
use crate::proxy::headers::{self, ForwardContext};
use crate::proxy::io::{make_room, MinRate};
use crate::proxy::keepalive::KeepAlive;
use crate::proxy::pump::{Flow, Pump, PumpError};
use crate::proxy::replay::Replay;
use crate::proxy::route::Route;
use crate::proxy::Shared;
use crate::upstream::balance::Upstream;
use crate::upstream::connect::{UpstreamRead, UpstreamWrite};
use crate::upstream::pool::{PooledConn, Slot};
use crate::upstream::retry::{self, FailureKind};

/// The request side of an exchange: the client's read half, how its body is read and
/// written, and what is held for a replay.
pub(crate) struct Upload<S> {
    pub client: ClientRead<S>,
    pub reader: BodyReader,
    pub replay: Replay,
    /// The writer of the latest attempt (its counts are the exchange's `bytes_in`).
    pub writer: BodyWriter,
    /// The latest attempt's upstream write half, once its pump has finished.
    pub up_wr: Option<UpstreamWrite>,
    /// How the latest pump ended; `None` before the first.
    pub result: Option<Result<(), PumpError>>,
    /// The slowest the client may send its body.
    pub min_rate: Option<MinRate>,
}

impl<S> Upload<S> {
    pub(crate) fn new(client: ClientRead<S>, reader: BodyReader, replay: Replay) -> Self {
        Upload {
            client,
            reader,
            replay,
            writer: BodyWriter::new(OutFraming::None, true, Duration::ZERO),
            up_wr: None,
            result: None,
            min_rate: None,
        }
    }

    /// The body was read whole and written without error.
    pub(crate) fn done(&self) -> bool {
        matches!(self.result, Some(Ok(())))
    }
}

/// The request body pump of one attempt, boxed: dropped the moment it finishes, so a long
/// stream's state does not hold it.
pub(crate) type PumpFuture<S> = Pin<Box<dyn Future<Output = Box<Upload<S>>> + Send>>;

/// Where the request side is.
pub(crate) enum UploadSlot<S> {
    /// At hand: not pumping.
    Idle(Box<Upload<S>>),
    /// Owned by a running body pump.
    Pumping(PumpFuture<S>),
    /// Taken out for a moment, while an attempt starts its pump.
    Taken,
}

impl<S> UploadSlot<S> {
    /// Another attempt can send the whole body: none of it was read yet, or all of it is
    /// held and was pumped without error.
    pub(crate) fn replayable(&self) -> bool {
        match self {
            UploadSlot::Idle(u) => {
                u.replay.untouched()
                    || (u.replay.complete() && u.result.as_ref().is_none_or(Result::is_ok))
            }
            UploadSlot::Pumping(_) | UploadSlot::Taken => false,
        }
    }

    /// Take the upload out (leaving [`UploadSlot::Taken`]), if it is at hand.
    fn take(&mut self) -> Option<Box<Upload<S>>> {
        match std::mem::replace(self, UploadSlot::Taken) {
            UploadSlot::Idle(u) => Some(u),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The upload, if no pump holds it.
    pub(crate) fn idle(&mut self) -> Option<&mut Upload<S>> {
        match self {
            UploadSlot::Idle(u) => Some(u),
            UploadSlot::Pumping(_) | UploadSlot::Taken => None,
        }
    }

    /// Wait for a running pump to hand the upload back; never resolves when idle.
    pub(crate) async fn pumped(&mut self) -> &mut Upload<S> {
        if let UploadSlot::Pumping(f) = self {
            let upload = f.await;
            *self = UploadSlot::Idle(upload);
        }
        match self {
            UploadSlot::Idle(u) => u,
            UploadSlot::Pumping(_) | UploadSlot::Taken => std::future::pending().await,
        }
    }

    /// Whether a pump is running.
    pub(crate) fn is_pumping(&self) -> bool {
        matches!(self, UploadSlot::Pumping(_))
    }
}

/// The request direction's flow: hold what is written for a replay, before it is written (if
/// the write fails, what was read from the client can still go to another upstream).
struct RequestFlow<'a> {
    replay: &'a mut Replay,
    /// The injected fields and whether the route checked `Authorization`: what the client's
    /// trailers may not carry.
    inject: headers::Injected<'a>,
    drop_authorization: bool,
}

impl Flow for RequestFlow<'_> {
    fn before_write(&mut self, units: &[Bytes]) {
        for d in units {
            self.replay.push(d);
        }
    }

    fn before_end(&mut self, trailers: &mut Vec<crate::codec::chunked::Field>) {
        headers::filter_request_trailers(trailers, self.inject, self.drop_authorization);
        // The body was read whole, whatever becomes of the write of its end.
        self.replay.finish(trailers.clone());
    }
}

/// Start the request body pump of an attempt writing to `up_wr`. A body already read whole
/// (and sent by the attempt from the replay) needs no pump: it finishes at once.
fn start_pump<S>(
    mut up: Box<Upload<S>>,
    mut up_wr: UpstreamWrite,
    shared: Arc<Shared>,
    route: usize,
    upstream: Arc<Upstream>,
) -> PumpFuture<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let min_rate = up.min_rate;
        let result = if up.replay.finished() {
            Ok(())
        } else {
            let Upload {
                client,
                reader,
                replay,
                writer,
                ..
            } = &mut *up;
            Pump {
                src: &mut client.rd,
                buf: &mut client.buf,
                dst: &mut up_wr,
                reader,
                writer,
                flow: &mut RequestFlow {
                    replay,
                    inject: headers::Injected {
                        route: &shared.routes[route].inject,
                        upstream: &upstream.cfg.inject_headers,
                    },
                    drop_authorization: !shared.routes[route].require_bearer.is_empty(),
                },
                idle: shared.config.timeouts.stream_idle,
                min_rate,
                metrics: &shared.metrics,
                dir: Direction::Request,
            }
            .run()
            .await
        };
        up.up_wr = Some(up_wr);
        up.result = Some(result);
        up
    })
}

/// What every attempt of one exchange shares.
pub(crate) struct AttemptCtx<'a> {
    pub shared: &'a Arc<Shared>,
    pub head: &'a RequestHead,
    pub meta: &'a RequestMeta,
    /// The normalised target the route matched.
    pub target: &'a NormalTarget,
    pub route: &'a Route,
    pub request_id: &'a Bytes,
    pub client: &'a ClientInfo,
    /// When the whole exchange must be over, if a total timeout is set.
    pub total_deadline: Option<Instant>,
}

/// Buffers and flags reused by the attempts of one exchange.
#[derive(Default)]
pub(crate) struct AttemptScratch {
    head: BytesMut,
    sent_continue: bool,
    /// Keepalive comments while the upstream thinks (route `keepalive`, streaming requests).
    pub keepalive: Option<KeepAlive>,
}

/// A response head from the upstream: what the streaming phase needs, owned, so the state of
/// the attempts is gone while the response streams.
pub(crate) struct Committed {
    pub resp_head: ResponseHead,
    pub resp_meta: ResponseMeta,
    pub upstream: Arc<Upstream>,
    pub slot: Slot,
    pub up_rd: UpstreamRead,
    pub up_buf: BytesMut,
}

impl Committed {
    /// The wait the upstream asked for, if it did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        retry::retry_after(
            self.resp_head
                .headers
                .iter()
                .map(|h| (&h.name[..], &h.value[..])),
            SystemTime::now(),
        )
    }
}

/// An attempt that produced no response to commit.
pub(crate) struct AttemptFailure {
    pub error: ExchangeError,
    /// Who failed and whether the upstream may have processed the request.
    pub kind: FailureKind,
}

impl AttemptFailure {
    fn new(error: ExchangeError, kind: FailureKind) -> Box<Self> {
        Box::new(AttemptFailure { error, kind })
    }
}

/// Run one attempt against `upstream`: `Ok` with a response head to commit (or to retry on,
/// if its status says so), or the failure.
pub(crate) async fn run<S>(
    ctx: &AttemptCtx<'_>,
    upstream: &Arc<Upstream>,
    upload: &mut UploadSlot<S>,
    client_wr: &mut tokio::io::WriteHalf<S>,
    scratch: &mut AttemptScratch,
) -> Result<Box<Committed>, Box<AttemptFailure>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _outstanding = upstream.begin();
    let target = ctx
        .route
        .upstream_target(&upstream.cfg, ctx.target)
        .map_err(|e| AttemptFailure::new(ExchangeError::ClientPath(e), FailureKind::Final))?;
    let conn = checkout(ctx, upstream).await?;
    // A connection that fails before any response: a reused one was being closed by the
    // upstream as the request went out (never processed); a fresh one may have been.
    let stale = if conn.is_reused() {
        FailureKind::StaleConnection
    } else {
        FailureKind::Final
    };
    // The slot (the pool's count of this connection) travels with the halves and is given
    // back with them, or freed when they are dropped.
    let (stream, up_buf, slot) = conn.into_parts();
    let (up_rd, mut up_wr) = stream.into_split();
    if let Err(e) = send_head(
        ctx, upstream, &target, upload, &mut up_wr, client_wr, scratch,
    )
    .await
    {
        breaker_failure(ctx.shared, upstream);
        return Err(AttemptFailure::new(ExchangeError::UpstreamIo(e), stale));
    }
    // The rest of the request body goes up while the response head is awaited.
    if let Some(up) = upload.take() {
        *upload = UploadSlot::Pumping(start_pump(
            up,
            up_wr,
            Arc::clone(ctx.shared),
            ctx.route.index,
            Arc::clone(upstream),
        ));
    }
    let waiting = Waiting {
        up_rd,
        up_buf,
        stale,
        client_wr,
        keepalive: &mut scratch.keepalive,
    };
    let (up_rd, up_buf, resp_head) = await_head(ctx, upstream, upload, waiting).await?;
    if matches!(resp_head.status, 502..=504) {
        breaker_failure(ctx.shared, upstream);
    } else if resp_head.status < 500 {
        breaker_success(ctx.shared, upstream);
    }
    let resp_meta = match framing::response_meta(&ctx.head.method, &resp_head) {
        Ok(m) => m,
        Err(e) => {
            breaker_failure(ctx.shared, upstream);
            // Retried like its status would be; otherwise answered as a bad gateway.
            return Err(AttemptFailure::new(
                ExchangeError::UpstreamFraming(e),
                FailureKind::Status(resp_head.status),
            ));
        }
    };
    Ok(Box::new(Committed {
        resp_head,
        resp_meta,
        upstream: Arc::clone(upstream),
        slot,
        up_rd,
        up_buf,
    }))
}

/// An upstream connection: an idle keep-alive one, or a new one if the upstream is below
/// its connection cap. At the cap the answer is 503 with `Retry-After` at once, not after a
/// wait. Only a connect goes through the (large, so boxed) checkout future.
async fn checkout(
    ctx: &AttemptCtx<'_>,
    upstream: &Upstream,
) -> Result<PooledConn, Box<AttemptFailure>> {
    let shared = ctx.shared;
    let checkout = match upstream.pool.try_checkout_idle() {
        Some(c) => Ok(Some(c)),
        None => Box::pin(upstream.pool.checkout_now()).await,
    };
    match checkout {
        Ok(Some(c)) => Ok(c),
        Ok(None) => {
            upstream.breaker.on_abandon(Instant::now());
            Err(AttemptFailure::new(
                ExchangeError::PoolExhausted,
                FailureKind::Final,
            ))
        }
        Err(e) => {
            if e.is_timeout() {
                shared.metrics.timeout("connect");
            }
            tracing::warn!(request_id = %Lossy(ctx.request_id), upstream = %upstream.name(), error = %e, "upstream connect failed");
            breaker_failure(shared, upstream);
            Err(AttemptFailure::new(
                ExchangeError::Connect(e),
                FailureKind::Connect,
            ))
        }
    }
}

/// Write the request head and what is held of the body; answer `100 Continue` when the
/// client waits for it. On the first attempt the head waits to leave with the first piece of
/// the body (one write instead of two).
async fn send_head<S>(
    ctx: &AttemptCtx<'_>,
    upstream: &Upstream,
    target: &NormalTarget,
    upload: &mut UploadSlot<S>,
    up_wr: &mut UpstreamWrite,
    client_wr: &mut tokio::io::WriteHalf<S>,
    scratch: &mut AttemptScratch,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let route = ctx.route;
    let fwd = ForwardContext {
        client_ip: &ctx.client.peer_ip,
        proto: ctx.client.proto,
        upstream_authority: upstream.authority(),
        path: target.as_bytes(),
        request_id: ctx.request_id,
        inject: headers::Injected {
            route: &route.inject,
            upstream: &upstream.cfg.inject_headers,
        },
        drop_authorization: !route.require_bearer.is_empty(),
    };
    scratch.head.clear();
    headers::write_request_head(ctx.head, &fwd, &ctx.meta.framing, &mut scratch.head);
    let Some(up) = upload.idle() else {
        // The exchange retries only a body held whole, so no pump runs when an attempt
        // starts; if one did, its client half is not at hand.
        tracing::error!("an attempt started while the request body pump was still running");
        return Err(std::io::ErrorKind::Other.into());
    };
    up.writer = BodyWriter::new(
        OutFraming::from(ctx.meta.framing),
        true,
        ctx.shared.config.timeouts.stream_idle,
    );
    if up.replay.untouched() {
        up.writer.set_pending(std::mem::take(&mut scratch.head));
    } else {
        send_replay(up, up_wr, &scratch.head).await?;
    }
    if ctx.meta.expect_continue && !up.replay.finished() && !scratch.sent_continue {
        scratch.sent_continue = true;
        let _ = client_wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = client_wr.flush().await;
    }
    Ok(())
}

/// Read the response head while the request body pump runs and the total deadline nears.
///
/// The response-head timeout runs from when the request body was sent whole: while the
/// client is still sending, waiting is the client's doing (its body is held to the idle
/// limit and the minimum data rate), never a failure of the upstream. A request body the
/// client breaks ends the attempt as the client's failure.
async fn await_head<S>(
    ctx: &AttemptCtx<'_>,
    upstream: &Upstream,
    upload: &mut UploadSlot<S>,
    waiting: Waiting<'_, S>,
) -> Result<(UpstreamRead, BytesMut, ResponseHead), Box<AttemptFailure>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Waiting {
        up_rd,
        up_buf,
        stale,
        client_wr,
        keepalive,
    } = waiting;
    let cfg = &ctx.shared.config;
    let head_read = read_response_head(up_rd, up_buf, ResponseParser::new(cfg.limits.head));
    tokio::pin!(head_read);
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let comment = tokio::time::sleep_until(keepalive.as_ref().map_or(far, KeepAlive::due));
    tokio::pin!(comment);
    let total = sleep_until_opt(ctx.total_deadline);
    tokio::pin!(total);
    let head_timer = tokio::time::sleep(cfg.timeouts.response_head);
    tokio::pin!(head_timer);
    let mut body_sent = !upload.is_pumping();
    let head = loop {
        tokio::select! {
            // The pump first: a body that is already whole is recorded before the head.
            biased;
            up = upload.pumped(), if !body_sent => {
                body_sent = true;
                head_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + cfg.timeouts.response_head);
                match up.result.take() {
                    Some(Err(PumpError::Read(e))) => {
                        // The client's body is bad or gone: its fault, not the upstream's.
                        upstream.breaker.on_abandon(Instant::now());
                        return Err(AttemptFailure::new(
                            ExchangeError::client_body(e),
                            FailureKind::Final,
                        ));
                    }
                    Some(Err(PumpError::Write(e))) => {
                        tracing::debug!(request_id = %Lossy(ctx.request_id), error = ?e, "writing the request body upstream failed; waiting for its answer");
                        up.result = Some(Err(PumpError::Write(e)));
                    }
                    other => up.result = other,
                }
            }
            h = &mut head_read => break h,
            _ = &mut head_timer, if body_sent => break Err(ExchangeError::UpstreamHeadTimeout),
            _ = &mut comment, if keepalive.is_some() => {
                if let Some(ka) = keepalive.as_mut() {
                    if let Err(e) = ka.tick(client_wr).await {
                        upstream.breaker.on_abandon(Instant::now());
                        return Err(AttemptFailure::new(e, FailureKind::Final));
                    }
                    comment.as_mut().reset(ka.due());
                }
            }
            _ = &mut total => {
                upstream.breaker.on_abandon(Instant::now());
                return Err(AttemptFailure::new(ExchangeError::TotalTimeout, FailureKind::Final));
            }
        }
    };
    match head {
        Ok(parts) => Ok(parts),
        Err(err) => {
            if matches!(err, ExchangeError::UpstreamHeadTimeout) {
                ctx.shared.metrics.timeout("response_head");
            }
            tracing::warn!(request_id = %Lossy(ctx.request_id), upstream = %upstream.name(), error = %err, "upstream failed before the response head");
            breaker_failure(ctx.shared, upstream);
            let kind = match err {
                ExchangeError::UpstreamClosed | ExchangeError::UpstreamIo(_) => stale,
                _ => FailureKind::Final,
            };
            Err(AttemptFailure::new(err, kind))
        }
    }
}

/// What an attempt waits for its response head with.
struct Waiting<'a, S> {
    up_rd: UpstreamRead,
    up_buf: BytesMut,
    /// What a failure before the head means (see [`FailureKind`]).
    stale: FailureKind,
    client_wr: &'a mut tokio::io::WriteHalf<S>,
    keepalive: &'a mut Option<KeepAlive>,
}

/// Send the head and the body held for a replay (all of it, with its end if it was read
/// whole).
async fn send_replay<S>(
    up: &mut Upload<S>,
    up_wr: &mut UpstreamWrite,
    head: &[u8],
) -> std::io::Result<()> {
    up_wr.write_all(head).await?;
    let Upload { replay, writer, .. } = up;
    for d in replay.pieces() {
        writer.data(up_wr, d).await.map_err(write_io)?;
    }
    if replay.complete() {
        writer
            .end(up_wr, replay.trailers())
            .await
            .map_err(write_io)?;
    }
    up_wr.flush().await
}

fn write_io(e: crate::proxy::body::WriteError) -> std::io::Error {
    match e {
        crate::proxy::body::WriteError::Io(e) => e,
        crate::proxy::body::WriteError::Stalled => std::io::ErrorKind::TimedOut.into(),
    }
}

/// Count a failure against the upstream's breaker, logging a state change.
pub(crate) fn breaker_failure(shared: &Shared, upstream: &Upstream) {
    if let Some((from, to)) = upstream.breaker.on_failure(Instant::now()) {
        tracing::warn!(upstream = %upstream.name(), ?from, ?to, "circuit breaker state change");
        shared
            .metrics
            .breaker_state(upstream.name(), to.as_metric());
    }
}

fn breaker_success(shared: &Shared, upstream: &Upstream) {
    if let Some((from, to)) = upstream.breaker.on_success(Instant::now()) {
        tracing::info!(upstream = %upstream.name(), ?from, ?to, "circuit breaker state change");
        shared
            .metrics
            .breaker_state(upstream.name(), to.as_metric());
    }
}

/// Read the upstream's response head, skipping interim 1xx responses.
async fn read_response_head(
    mut rd: UpstreamRead,
    mut buf: BytesMut,
    mut parser: ResponseParser,
) -> Result<(UpstreamRead, BytesMut, ResponseHead), ExchangeError> {
    loop {
        match parser.parse(&mut buf) {
            Ok(Some(h)) if h.status == 101 => return Err(ExchangeError::UpstreamSwitched),
            Ok(Some(h)) if (100..200).contains(&h.status) => {
                parser.reset();
                continue;
            }
            Ok(Some(h)) => return Ok((rd, buf, h)),
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
}

/// Sleep until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
