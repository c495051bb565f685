//! Logging: `tracing` output set up once per process, and the access log.
//!
//! [`init`] installs a `tracing-subscriber` formatter (human-readable `pretty` lines or one
//! JSON object per line) behind a non-blocking writer, so a slow terminal or log pipe never
//! stalls a connection task: when the writer falls more than
//! [`LOG_BUFFER_LINES`] lines behind, lines are dropped rather than waited for.
//!
//! [`access_log`] writes one line per exchange with target `access`. It carries ids, sizes,
//! timings, the outcome and what the stream tap read (model, token counts, finish reason),
//! never a body, a credential header or an injected header value: the record has no field
//! that could hold them. Once [`init`] has run, the line is formatted by hand ([`line`]) and
//! queued to its own bounded writer ([`sink`]): the same text the `tracing` formatter would
//! write, at a fraction of the cost. Without [`init`] (a library user with its own
//! subscriber), it is a `tracing` event.

use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::stream::tap::Summary;

pub mod line;
pub mod sink;

pub use sink::ACCESS_BUFFER_BYTES;

/// Lines the non-blocking log writer buffers before it starts dropping.
pub const LOG_BUFFER_LINES: usize = 128 * 1024;

/// Where access-log lines go once [`init`] has run.
static ACCESS: OnceLock<sink::Sink> = OnceLock::new();

/// Access-log lines dropped because the writer was too far behind.
static ACCESS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of access-log lines dropped because the writer was too far behind
/// (exported as `chunkgate_log_dropped_total`).
pub fn dropped_lines() -> &'static Counter {
    &ACCESS_DROPPED
}

/// Keeps the background log writers alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    // Dropped first: the access lines are written before the other log lines are flushed.
    _access: Option<sink::Worker>,
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// The filter in effect: `RUST_LOG` when it is set, non-empty and valid, otherwise
/// `cfg.filter`; with `access=off` added when the access log is turned off.
pub fn build_filter(cfg: &LogConfig, rust_log: Option<&str>) -> EnvFilter {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .and_then(|s| EnvFilter::builder().parse(s).ok().map(|_| s.to_string()))
        .unwrap_or_else(|| cfg.filter.clone());
    let text = if cfg.access_log {
        base
    } else {
        format!("{base},access=off")
    };
    EnvFilter::builder()
        .parse(&text)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber: format from `cfg.format`, filter from `cfg.filter` (or
/// `RUST_LOG`, which overrides it), output to standard output through a non-blocking writer.
/// Calling it again when a subscriber is already installed changes nothing and returns an
/// inert guard.
pub fn init(cfg: &LogConfig) -> LogGuard {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = build_filter(cfg, rust_log.as_deref());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("chunkgate-log")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
    if installed.is_err() {
        return LogGuard {
            _access: None,
            _worker: None,
        };
    }
    // The filter decides once whether access lines are written (`access=off`, a `RUST_LOG`
    // above INFO); from then on they bypass `tracing`.
    let access = if tracing::enabled!(target: "access", tracing::Level::INFO) {
        start_access(cfg)
    } else {
        None
    };
    LogGuard {
        _access: access,
        _worker: Some(guard),
    }
}

/// Start the access-log writer on standard output and route [`access_log`] to it.
fn start_access(cfg: &LogConfig) -> Option<sink::Worker> {
    let layout = match cfg.format {
        LogFormat::Json => line::Layout::Json,
        LogFormat::Pretty => line::Layout::Text {
            ansi: std::io::stdout().is_terminal(),
        },
    };
    let (sink, worker) = match sink::Sink::start(
        layout,
        Box::new(std::io::stdout()),
        ACCESS_BUFFER_BYTES,
        ACCESS_DROPPED.clone(),
    ) {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!("access log through tracing: cannot start its writer: {e}");
            return None;
        }
    };
    ACCESS.set(sink).ok().map(|()| worker)
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was delivered whole.
    Complete,
    /// The client went away (closed, reset, or stopped reading past the write-stall timeout).
    ClientGone,
    /// The upstream broke the response after it had started (reset, bad framing, early close);
    /// the client connection was closed without a clean end.
    UpstreamBroke,
    /// No usable response from the upstream before anything was sent (connect failure,
    /// broken head, breaker open); the client got an error answer.
    UpstreamError,
    /// A timeout fired; the value names which (`connect`, `response_head`, `stream_idle` ...).
    Timeout(&'static str),
    /// chunkgate refused the exchange; the value is the reason (`unauthorized`, `head_too_large` ...).
    Rejected(&'static str),
    /// Cut by shutdown after the drain deadline.
    Shutdown,
}

impl Outcome {
    /// A label for metrics: the variant name without its detail (`timeout`, not `timeout:connect`).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamBroke => "upstream_broke",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout(_) => "timeout",
            Outcome::Rejected(_) => "rejected",
            Outcome::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Timeout(kind) => write!(f, "timeout:{kind}"),
            Outcome::Rejected(reason) => write!(f, "rejected:{reason}"),
            other => f.write_str(other.label()),
        }
    }
}

/// Everything the access log and the exchange metrics know about one exchange.
///
/// "In" is what the client sent (request body), "out" is what the client was sent (response
/// body). Bytes are body payload bytes, not counting framing.
#[derive(Debug, Clone)]
pub struct ExchangeRecord {
    /// The request id (also sent upstream as `x-request-id`), as sent (a handle, no copy).
    pub request_id: Bytes,
    /// Request method, as received.
    pub method: Bytes,
    /// Request target as received; the log shows it without the query string (which may
    /// hold keys).
    pub path: Bytes,
    /// The matched route's prefix, or `-` when none matched.
    pub route: Arc<str>,
    /// The upstream that answered (last attempt), or `-` when none was reached.
    pub upstream: Arc<str>,
    /// Status sent to the client, 0 when no response head was sent.
    pub status: u16,
    /// Request body payload bytes read from the client.
    pub bytes_in: u64,
    /// Response body payload bytes written to the client.
    pub bytes_out: u64,
    /// Request chunks forwarded.
    pub chunks_in: u64,
    /// Response chunks forwarded.
    pub chunks_out: u64,
    /// Chunks (either direction) that arrived split over several reads.
    pub reassembled: u64,
    /// Time from the request being sent upstream to the response head.
    pub ttfb: Option<Duration>,
    /// Time from the request being sent upstream to the first complete response chunk.
    pub ttfc: Option<Duration>,
    /// Whole exchange, from the request head to the end.
    pub duration: Duration,
    /// Retried attempts (0 when the first attempt answered).
    pub retries: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock time the request head was read (for records kept outside the process).
    pub started_at: SystemTime,
    /// Time from the request head to the first non-empty text delta of the answer, when the
    /// stream tap saw one.
    pub ttft: Option<Duration>,
    /// What the stream tap read of the answer (dialect, model, text, usage ...), when the
    /// route's tap ran on it.
    pub llm: Option<Box<Summary>>,
}

impl ExchangeRecord {
    /// Give the record its own copies of the request id, method and path (the target without
    /// its query), so it no longer keeps alive the buffer they were parsed from.
    pub fn detach(&mut self) {
        let end = path_end(&self.path);
        self.path = Bytes::copy_from_slice(&self.path[..end]);
        self.request_id = Bytes::copy_from_slice(&self.request_id);
        self.method = Bytes::copy_from_slice(&self.method);
    }
}

/// Where the path of a request target ends: at its query or fragment, if any.
fn path_end(target: &[u8]) -> usize {
    target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len())
}

/// Bytes from the wire shown as text: valid UTF-8 as is, anything else as U+FFFD. Formats
/// without allocating, so building a log field costs nothing unless the event is emitted.
pub struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Write the access-log line for one exchange: target `access`, level INFO, message
/// `exchange`, fields `request_id method path route upstream status bytes_in bytes_out
/// chunks_in chunks_out reassembled ttfb_ms ttfc_ms duration_ms retries outcome model
/// input_tokens output_tokens ttft_ms finish_reason` (those without a value left out:
/// `ttfb_ms`/`ttfc_ms` when there was none, the last five when the stream tap did not see
/// them). A query string left in `path` is cut off. After [`init`], the line goes to the
/// access writer (never waiting: dropped and counted when it is full); before, it is a
/// `tracing` event.
pub fn access_log(rec: &ExchangeRecord) {
    match ACCESS.get() {
        Some(sink) => sink.log(rec),
        None => access_event(rec),
    }
}

/// The access line as a `tracing` event.
fn access_event(rec: &ExchangeRecord) {
    let end = path_end(&rec.path);
    let llm = rec.llm.as_deref();
    tracing::info!(
        target: "access",
        request_id = %Lossy(&rec.request_id),
        method = %Lossy(&rec.method),
        path = %Lossy(&rec.path[..end]),
        route = %rec.route,
        upstream = %rec.upstream,
        status = rec.status,
        bytes_in = rec.bytes_in,
        bytes_out = rec.bytes_out,
        chunks_in = rec.chunks_in,
        chunks_out = rec.chunks_out,
        reassembled = rec.reassembled,
        ttfb_ms = rec.ttfb.map(millis),
        ttfc_ms = rec.ttfc.map(millis),
        duration_ms = millis(rec.duration),
        retries = rec.retries,
        outcome = %rec.outcome,
        model = llm
            .and_then(|l| l.model.as_deref())
            .map(|m| tracing::field::display(Lossy(m.as_bytes()))),
        input_tokens = llm.and_then(|l| l.usage.input),
        output_tokens = llm.and_then(|l| l.usage.output),
        ttft_ms = rec.ttft.map(millis),
        finish_reason = llm
            .and_then(|l| l.finish_reason.as_deref())
            .map(|r| tracing::field::display(Lossy(r.as_bytes()))),
        "exchange"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_shows_utf8_and_replaces_the_rest() {
        assert_eq!(Lossy(b"req-1").to_string(), "req-1");
        assert_eq!(Lossy("안녕".as_bytes()).to_string(), "안녕");
        assert_eq!(Lossy(b"a\xffb\xe5").to_string(), "a\u{fffd}b\u{fffd}");
        assert_eq!(Lossy(b"").to_string(), "");
    }

    #[test]
    fn build_filter_prefers_valid_rust_log() {
        let cfg = LogConfig::default();
        assert_eq!(build_filter(&cfg, Some("debug")).to_string(), "debug");
        assert_eq!(build_filter(&cfg, Some("")).to_string(), "info");
        assert_eq!(build_filter(&cfg, Some("=[")).to_string(), "info");
    }

    #[test]
    fn build_filter_turns_access_off() {
        let cfg = LogConfig {
            access_log: false,
            ..LogConfig::default()
        };
        let f = build_filter(&cfg, None).to_string();
        assert!(f.contains("access=off"), "{f}");
    }

    #[test]
    fn outcome_display_names_the_timeout() {
        assert_eq!(
            Outcome::Timeout("stream_idle").to_string(),
            "timeout:stream_idle"
        );
        assert_eq!(Outcome::Timeout("stream_idle").label(), "timeout");
        assert_eq!(Outcome::ClientGone.to_string(), "client_gone");
    }
}
