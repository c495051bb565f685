//! Prometheus metrics: what the admin listener's `/metrics` exposes.
//!
//! One [`Metrics`] is shared (in an `Arc`) by every connection task. The per-chunk calls
//! ([`Metrics::chunk_forwarded`], [`Metrics::chunk_reassembled`], [`Metrics::inter_chunk_gap`])
//! touch only counters and histograms resolved when `Metrics` is built: no label lookup and no
//! allocation per chunk. Labelled series (by route, upstream, reason) are updated once per
//! exchange or per event.
//!
//! ```
//! use chunkgate::metrics::{Direction, Metrics};
//! let m = Metrics::new();
//! m.chunk_forwarded(Direction::Response, 42);
//! assert!(m.encode().contains("chunkgate_chunks_total{direction=\"response\"} 1"));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::logging::{ExchangeRecord, Outcome};

/// Which body a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Request,
    /// Upstream to client.
    Response,
}

impl Direction {
    /// The `direction` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// A pair of series, one per [`Direction`], resolved once.
#[derive(Debug, Clone)]
struct PerDirection<M> {
    request: M,
    response: M,
}

impl<M: Clone> PerDirection<M> {
    fn resolve<C>(family: &Family<DirectionLabel, M, C>) -> Self
    where
        C: prometheus_client::metrics::family::MetricConstructor<M>,
    {
        let get = |d: Direction| {
            family
                .get_or_create(&DirectionLabel {
                    direction: d.as_str(),
                })
                .clone()
        };
        PerDirection {
            request: get(Direction::Request),
            response: get(Direction::Response),
        }
    }

    fn get(&self, d: Direction) -> &M {
        match d {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        }
    }
}

/// Histogram buckets for upstream waits (seconds): 5 ms to 5 min.
const WAIT_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Histogram buckets for gaps between chunks (seconds): 0.5 ms to 1 min.
const GAP_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Histogram buckets for whole exchanges (seconds): 10 ms to 30 min.
const DURATION_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Histogram buckets for chunk payload sizes (bytes): 16 B to 16 MiB, powers of 4.
const SIZE_BUCKETS: [f64; 11] = [
    16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// A histogram whose observation is two relaxed atomic adds: no lock, no allocation.
///
/// Values are recorded as integers of an internal unit (bytes, nanoseconds) and exported
/// multiplied by `scale` (1 for bytes, 1e-9 for seconds). Bucket bounds are inclusive, as
/// Prometheus' `le` says. Under concurrent updates a scrape may see an observation in its
/// bucket but not yet in `_sum`; counts and buckets are always consistent with each other
/// because `_count` is computed from the buckets.
#[derive(Clone)]
struct AtomicHistogram {
    inner: Arc<AtomicHistogramInner>,
}

struct AtomicHistogramInner {
    /// Upper bounds as exported.
    bounds: &'static [f64],
    /// Upper bounds in internal units.
    unit_bounds: Box<[u64]>,
    /// Exported value of one internal unit.
    scale: f64,
    /// One counter per bound, plus the overflow bucket (`+Inf`) last.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in internal units.
    sum: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        let unit_bounds = bounds.iter().map(|b| (b / scale).round() as u64).collect();
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            inner: Arc::new(AtomicHistogramInner {
                bounds,
                unit_bounds,
                scale,
                buckets,
                sum: AtomicU64::new(0),
            }),
        }
    }

    fn seconds(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1e-9)
    }

    fn bytes(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn observe_units(&self, v: u64) {
        let inner = &*self.inner;
        let i = inner
            .unit_bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(inner.unit_bounds.len());
        if let Some(bucket) = inner.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        inner.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn observe_duration(&self, d: Duration) {
        self.observe_units(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("bounds", &self.inner.bounds)
            .finish_non_exhaustive()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(inner.buckets.len());
        let mut count = 0u64;
        for (i, b) in inner.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count = count.wrapping_add(n);
            // The encoder writes f64::MAX as `+Inf`.
            let bound = inner.bounds.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((bound, n));
        }
        let sum = inner.sum.load(Ordering::Relaxed) as f64 * inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every series chunkgate exports, with the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    exchanges: Family<OutcomeLabel, Counter>,
    connections_active: Gauge,
    connections_total: Counter,
    streams_active: Gauge,
    streams_total: Counter,
    body_bytes: PerDirection<Counter>,
    chunks: PerDirection<Counter>,
    reassembled: PerDirection<Counter>,
    chunk_size: PerDirection<AtomicHistogram>,
    ttfb: AtomicHistogram,
    ttfc: AtomicHistogram,
    gap: AtomicHistogram,
    duration: AtomicHistogram,
    retries: Family<UpstreamLabel, Counter>,
    breaker: Family<UpstreamLabel, Gauge>,
    rejections: Family<ReasonLabel, Counter>,
    timeouts: Family<KindLabel, Counter>,
    llm: LlmMetrics,
    reloads: Family<ResultLabel, Counter>,
    capture: CaptureFamilies,
}

/// The capture series, one of each per sink.
struct CaptureFamilies {
    written: Family<SinkLabel, Counter>,
    failed: Family<SinkLabel, Counter>,
    retried: Family<SinkLabel, Counter>,
    dropped: Family<SinkLabel, Counter>,
    queue_depth: Family<SinkLabel, Gauge>,
    write_seconds: Family<SinkLabel, AtomicHistogram, fn() -> AtomicHistogram>,
}

/// The capture series of one sink, resolved once when the sink starts: counting is a
/// relaxed atomic add, with no label lookup.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    written: Counter,
    failed: Counter,
    retried: Counter,
    dropped: Counter,
    queue_depth: Gauge,
    write_seconds: AtomicHistogram,
}

impl SinkMetrics {
    /// `n` records were written (delivered, for a webhook).
    pub fn written(&self, n: u64) {
        self.written.inc_by(n);
    }
    /// `n` records could not be written and were given up.
    pub fn failed(&self, n: u64) {
        self.failed.inc_by(n);
    }
    /// A delivery is tried again.
    pub fn retried(&self) {
        self.retried.inc();
    }
    /// A record was dropped before its sink saw it (queue full).
    pub fn dropped(&self) {
        self.dropped.inc();
    }
    /// A record entered the sink's queue.
    pub fn queued(&self) {
        self.queue_depth.inc();
    }
    /// `n` records left the sink's queue.
    pub fn dequeued(&self, n: u64) {
        self.queue_depth
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// One write (a batch, or one delivery) took `d`.
    pub fn write_took(&self, d: Duration) {
        self.write_seconds.observe_duration(d);
    }
}

fn write_histogram() -> AtomicHistogram {
    AtomicHistogram::seconds(&WAIT_BUCKETS)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Build and register every series (all prefixed `chunkgate_`).
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("chunkgate");

        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information; always 1", build_info);

        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Finished exchanges by route, upstream and response status class",
            requests.clone(),
        );
        let exchanges = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "exchanges",
            "Finished exchanges by how they ended",
            exchanges.clone(),
        );
        let connections_active = Gauge::default();
        r.register(
            "connections_active",
            "Client connections open now",
            connections_active.clone(),
        );
        let connections_total = Counter::default();
        r.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        let streams_active = Gauge::default();
        r.register(
            "streams_active",
            "Exchanges in flight now",
            streams_active.clone(),
        );
        let streams_total = Counter::default();
        r.register("streams", "Exchanges started", streams_total.clone());

        let body_bytes = Family::<DirectionLabel, Counter>::default();
        r.register(
            "body_bytes",
            "Body payload bytes of finished exchanges (request: read from clients; response: written to clients)",
            body_bytes.clone(),
        );
        let chunks = Family::<DirectionLabel, Counter>::default();
        r.register(
            "chunks",
            "Chunks forwarded, one out for one in",
            chunks.clone(),
        );
        let reassembled = Family::<DirectionLabel, Counter>::default();
        r.register(
            "chunks_reassembled",
            "Chunks that arrived split over several reads and were forwarded whole",
            reassembled.clone(),
        );
        let chunk_size = Family::<DirectionLabel, AtomicHistogram, _>::new_with_constructor(|| {
            AtomicHistogram::bytes(&SIZE_BUCKETS)
        });
        r.register(
            "chunk_size_bytes",
            "Payload size of forwarded chunks",
            chunk_size.clone(),
        );

        let ttfb = AtomicHistogram::seconds(&WAIT_BUCKETS);
        r.register(
            "upstream_ttfb_seconds",
            "Time from sending the request to the upstream response head",
            ttfb.clone(),
        );
        let ttfc = AtomicHistogram::seconds(&WAIT_BUCKETS);
        r.register(
            "upstream_ttfc_seconds",
            "Time from sending the request to the first complete response chunk",
            ttfc.clone(),
        );
        let gap = AtomicHistogram::seconds(&GAP_BUCKETS);
        r.register(
            "inter_chunk_gap_seconds",
            "Time between two consecutive response chunks",
            gap.clone(),
        );
        let duration = AtomicHistogram::seconds(&DURATION_BUCKETS);
        r.register(
            "exchange_duration_seconds",
            "Whole exchange, from the request head to the end of the response",
            duration.clone(),
        );

        let retries = Family::<UpstreamLabel, Counter>::default();
        r.register(
            "retries",
            "Retried attempts, by the upstream that failed",
            retries.clone(),
        );
        let breaker = Family::<UpstreamLabel, Gauge>::default();
        r.register(
            "breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
            breaker.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        r.register(
            "rejections",
            "Requests or responses refused, by reason",
            rejections.clone(),
        );
        let timeouts = Family::<KindLabel, Counter>::default();
        r.register("timeouts", "Timeouts that fired, by kind", timeouts.clone());
        r.register(
            "log_dropped",
            "Access-log lines dropped because the log writer was too far behind",
            crate::logging::dropped_lines().clone(),
        );
        let llm = LlmMetrics::register(r);
        let reloads = Family::<ResultLabel, Counter>::default();
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /reload) by result: ok, or error (refused; the running configuration stays)",
            reloads.clone(),
        );

        let capture = CaptureFamilies {
            written: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dropped: Family::default(),
            queue_depth: Family::default(),
            write_seconds: Family::new_with_constructor(write_histogram),
        };
        r.register(
            "capture_written",
            "Completion records written, by sink",
            capture.written.clone(),
        );
        r.register(
            "capture_failed",
            "Completion records a sink could not write and gave up, by sink",
            capture.failed.clone(),
        );
        r.register(
            "capture_retried",
            "Completion record deliveries tried again, by sink",
            capture.retried.clone(),
        );
        r.register(
            "capture_dropped",
            "Completion records dropped because the sink's queue was full, by sink",
            capture.dropped.clone(),
        );
        r.register(
            "capture_queue_depth",
            "Completion records waiting for a sink",
            capture.queue_depth.clone(),
        );
        r.register(
            "capture_write_seconds",
            "Time one sink write took (a batch, or one webhook delivery)",
            capture.write_seconds.clone(),
        );

        Metrics {
            registry: root,
            requests,
            exchanges,
            connections_active,
            connections_total,
            streams_active,
            streams_total,
            body_bytes: PerDirection::resolve(&body_bytes),
            chunks: PerDirection::resolve(&chunks),
            reassembled: PerDirection::resolve(&reassembled),
            chunk_size: PerDirection::resolve(&chunk_size),
            ttfb,
            ttfc,
            gap,
            duration,
            retries,
            breaker,
            rejections,
            timeouts,
            llm,
            reloads,
            capture,
        }
    }

    /// The capture series of sink `name`, created at zero.
    pub fn capture_sink(&self, name: &str) -> SinkMetrics {
        let label = SinkLabel {
            sink: name.to_string(),
        };
        let c = &self.capture;
        SinkMetrics {
            written: c.written.get_or_create(&label).clone(),
            failed: c.failed.get_or_create(&label).clone(),
            retried: c.retried.get_or_create(&label).clone(),
            dropped: c.dropped.get_or_create(&label).clone(),
            queue_depth: c.queue_depth.get_or_create(&label).clone(),
            write_seconds: c.write_seconds.get_or_create(&label).clone(),
        }
    }

    /// Prometheus text exposition format 0.0.4 (`text/plain; version=0.0.4`): counters are
    /// typed under their `_total` name and the OpenMetrics-only lines are left out.
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }

    /// OpenMetrics text format 1.0 (`application/openmetrics-text; version=1.0.0`), ending in
    /// `# EOF`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; an encoder error would only mean a bad label,
        // and every label here is built by this module.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }

    /// A chunk of `size` payload bytes was forwarded. Hot path: three relaxed atomic adds.
    pub fn chunk_forwarded(&self, dir: Direction, size: usize) {
        self.chunks.get(dir).inc();
        self.chunk_size
            .get(dir)
            .observe_units(u64::try_from(size).unwrap_or(u64::MAX));
    }

    /// A forwarded chunk had arrived split over more than one read.
    pub fn chunk_reassembled(&self, dir: Direction) {
        self.reassembled.get(dir).inc();
    }

    /// Time between two consecutive response chunks.
    pub fn inter_chunk_gap(&self, d: Duration) {
        self.gap.observe_duration(d);
    }

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections_active.inc();
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        self.connections_active.dec();
    }

    /// An exchange started (request head parsed).
    pub fn stream_started(&self) {
        self.streams_total.inc();
        self.streams_active.inc();
    }

    /// An exchange ended, however it ended.
    pub fn stream_ended(&self) {
        self.streams_active.dec();
    }

    /// Something was refused; `reason` is a short snake_case name (`head_too_large`, `unauthorized`).
    pub fn rejected(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A timeout fired; `kind` names it (`connect`, `response_head`, `stream_idle` ...).
    pub fn timeout(&self, kind: &'static str) {
        self.timeouts.get_or_create(&KindLabel { kind }).inc();
    }

    /// An attempt on `upstream` failed and the request is retried.
    pub fn retry(&self, upstream: &str) {
        self.retries
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// The breaker of `upstream` is now in `state`: 0 closed, 1 open, 2 half-open.
    /// ([`BreakerState::as_metric`](crate::upstream::breaker::BreakerState::as_metric)).
    pub fn breaker_state(&self, upstream: &str, state: impl Into<i64>) {
        self.breaker
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .set(state.into());
    }

    /// An exchange finished: counts it by route, upstream and status class and by outcome,
    /// adds its body bytes, and observes its time to first byte, time to first chunk and
    /// duration.
    pub fn exchange_done(&self, rec: &ExchangeRecord) {
        self.request_counter(&rec.route, &rec.upstream, rec.status)
            .inc();
        self.outcome_counter(&rec.outcome).inc();
        self.exchange_observed(rec);
    }

    /// The `requests` series for one route, upstream and status (its class). The handle
    /// shares the series: a caller that keeps it counts without the label lookup.
    pub fn request_counter(&self, route: &str, upstream: &str, status: u16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                upstream: upstream.to_string(),
                status_class: status_class(status),
            })
            .clone()
    }

    /// The `exchanges` series for one outcome, as a shared handle (see
    /// [`Metrics::request_counter`]).
    pub fn outcome_counter(&self, outcome: &Outcome) -> Counter {
        self.exchanges
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .clone()
    }

    /// The part of [`Metrics::exchange_done`] that needs no label lookup: body bytes, time
    /// to first byte, time to first chunk and duration. A caller that counts `requests` and
    /// `exchanges` through kept handles calls only this.
    pub fn exchange_observed(&self, rec: &ExchangeRecord) {
        self.body_bytes.request.inc_by(rec.bytes_in);
        self.body_bytes.response.inc_by(rec.bytes_out);
        if let Some(t) = rec.ttfb {
            self.ttfb.observe_duration(t);
        }
        if let Some(t) = rec.ttfc {
            self.ttfc.observe_duration(t);
        }
        self.duration.observe_duration(rec.duration);
    }
}

/// Histogram buckets for output tokens per second: 1 to 5,000.
const RATE_BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    route: String,
    model: String,
    kind: &'static str,
}

/// The LLM-stream series: events the aligner cut, tokens, first-token times.
struct LlmMetrics {
    events: Family<RouteLabel, Counter>,
    realigned: Family<RouteLabel, Counter>,
    coalesced: Family<RouteLabel, Counter>,
    oversized: Family<RouteLabel, Counter>,
    partial: Family<RouteLabel, Counter>,
    glued: Family<RouteLabel, Counter>,
    ttft: Family<RouteLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    rate: Family<RouteLabel, AtomicHistogram, fn() -> AtomicHistogram>,
    without_usage: Family<RouteLabel, Counter>,
    usage_hidden: Family<RouteLabel, Counter>,
    tokens: Family<TokenLabels, Counter>,
    models: ModelLabels,
}

impl LlmMetrics {
    fn register(r: &mut Registry) -> LlmMetrics {
        fn counter(r: &mut Registry, name: &str, help: &str) -> Family<RouteLabel, Counter> {
            let f = Family::<RouteLabel, Counter>::default();
            r.register(name, help, f.clone());
            f
        }
        let events = counter(
            r,
            "sse_events",
            "Whole events (or NDJSON lines) forwarded by routes with align = \"events\"",
        );
        let realigned = counter(
            r,
            "sse_events_realigned",
            "Events the upstream split over several chunks, forwarded whole",
        );
        let coalesced = counter(
            r,
            "sse_events_coalesced",
            "Upstream chunks that held more than one event, forwarded one event per chunk",
        );
        let oversized = counter(
            r,
            "sse_events_oversized",
            "Events longer than the route's max_event, forwarded in pieces",
        );
        let partial = counter(
            r,
            "sse_events_partial_at_end",
            "Bodies that ended inside an event; what was held went out as its own chunk",
        );
        let glued = counter(r, "sse_events_glued", "Events holding two JSON payloads without a blank line between them (forwarded unchanged)");
        let ttft =
            Family::<RouteLabel, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
                || AtomicHistogram::seconds(&WAIT_BUCKETS),
            );
        r.register(
            "time_to_first_token_seconds",
            "Time from the request head to the first non-empty text delta of the answer",
            ttft.clone(),
        );
        let rate =
            Family::<RouteLabel, AtomicHistogram, fn() -> AtomicHistogram>::new_with_constructor(
                || AtomicHistogram::new(&RATE_BUCKETS, 1e-3),
            );
        r.register(
            "output_tokens_per_second",
            "Output tokens per second of a streamed answer, from its first token to its end",
            rate.clone(),
        );
        let without_usage = counter(
            r,
            "streams_without_usage",
            "Answers the tap read that reported no token usage",
        );
        let usage_hidden = counter(
            r,
            "usage_events_hidden",
            "Usage-only events asked for by inject_include_usage and kept from the client",
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        r.register(
            "tokens",
            "Tokens the answers reported, by route, model (bounded: see metrics.max_models) and kind (input, output)",
            tokens.clone(),
        );
        LlmMetrics {
            events,
            realigned,
            coalesced,
            oversized,
            partial,
            glued,
            ttft,
            rate,
            without_usage,
            usage_hidden,
            tokens,
            models: ModelLabels::new(32),
        }
    }
}

/// The `model` label values: the first `max` distinct models seen, then `other`. Read under a
/// shared lock once per answer; written only when a new model is admitted.
struct ModelLabels {
    max: AtomicU64,
    known: std::sync::RwLock<Vec<Arc<str>>>,
    other: Arc<str>,
    none: Arc<str>,
}

impl ModelLabels {
    fn new(max: usize) -> Self {
        ModelLabels {
            max: AtomicU64::new(max as u64),
            known: std::sync::RwLock::new(Vec::new()),
            other: Arc::from("other"),
            none: Arc::from("unknown"),
        }
    }

    fn label(&self, model: Option<&str>) -> Arc<str> {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return Arc::clone(&self.none);
        };
        let find = |known: &[Arc<str>]| known.iter().find(|k| &***k == model).cloned();
        if let Some(found) = self.known.read().ok().and_then(|k| find(&k)) {
            return found;
        }
        let Ok(mut known) = self.known.write() else {
            return Arc::clone(&self.other);
        };
        if let Some(found) = find(&known) {
            return found;
        }
        if (known.len() as u64) < self.max.load(Ordering::Relaxed) {
            let label: Arc<str> = Arc::from(model);
            known.push(Arc::clone(&label));
            return label;
        }
        Arc::clone(&self.other)
    }
}

/// A route's LLM-stream series, resolved once when the proxy starts: counting an answer costs
/// no label lookup except for its model's token series.
#[derive(Debug, Clone, Default)]
pub struct RouteLlmMetrics {
    route: String,
    events: Counter,
    realigned: Counter,
    coalesced: Counter,
    oversized: Counter,
    partial: Counter,
    glued: Counter,
    ttft: Option<AtomicHistogram>,
    rate: Option<AtomicHistogram>,
    without_usage: Counter,
    usage_hidden: Counter,
}

impl RouteLlmMetrics {
    /// Count what the aligner of one answer saw.
    pub fn aligned(&self, c: &crate::stream::align::AlignCounts) {
        for (counter, n) in [
            (&self.events, c.events),
            (&self.realigned, c.realigned),
            (&self.coalesced, c.coalesced),
            (&self.oversized, c.oversized),
            (&self.partial, c.partial_at_end),
            (&self.glued, c.glued),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// One usage-only event was kept from the client.
    pub fn usage_hidden(&self) {
        self.usage_hidden.inc();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl Metrics {
    /// A configuration reload was installed (`ok`) or refused.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Keep at most `max` distinct `model` label values (see `metrics.max_models`).
    pub fn set_max_models(&self, max: usize) {
        self.llm.models.max.store(max as u64, Ordering::Relaxed);
    }

    /// The LLM-stream series of `route`, resolved once.
    pub fn route_llm(&self, route: &str) -> RouteLlmMetrics {
        let l = &self.llm;
        let label = RouteLabel {
            route: route.to_string(),
        };
        RouteLlmMetrics {
            route: route.to_string(),
            events: l.events.get_or_create(&label).clone(),
            realigned: l.realigned.get_or_create(&label).clone(),
            coalesced: l.coalesced.get_or_create(&label).clone(),
            oversized: l.oversized.get_or_create(&label).clone(),
            partial: l.partial.get_or_create(&label).clone(),
            glued: l.glued.get_or_create(&label).clone(),
            ttft: Some(l.ttft.get_or_create(&label).clone()),
            rate: Some(l.rate.get_or_create(&label).clone()),
            without_usage: l.without_usage.get_or_create(&label).clone(),
            usage_hidden: l.usage_hidden.get_or_create(&label).clone(),
        }
    }

    /// An answer the tap read ended: tokens by model, time to first token, output rate, and
    /// answers without usage. `ttft` is from the request head; `streamed` is the time from
    /// the first token to the end of the answer.
    pub fn answer_read(
        &self,
        route: &RouteLlmMetrics,
        summary: &crate::stream::tap::Summary,
        ttft: Option<Duration>,
        streamed: Option<Duration>,
    ) {
        if let (Some(t), Some(h)) = (ttft, &route.ttft) {
            h.observe_duration(t);
        }
        let usage = &summary.usage;
        if usage.input.is_none() && usage.output.is_none() {
            route.without_usage.inc();
            return;
        }
        let model = self.llm.models.label(summary.model.as_deref());
        for (kind, n) in [("input", usage.input), ("output", usage.output)] {
            if let Some(n) = n {
                self.llm
                    .tokens
                    .get_or_create(&TokenLabels {
                        route: route.route.clone(),
                        model: model.to_string(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        if let (Some(out), Some(d), Some(h)) = (usage.output, streamed, &route.rate) {
            let secs = d.as_secs_f64();
            if out > 1 && secs > 0.0 {
                h.observe_units(((out as f64 / secs) * 1000.0) as u64);
            }
        }
    }
}

/// `1xx` ... `5xx`, or `none` when no response status was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Rewrite OpenMetrics text into the Prometheus 0.0.4 text format: counter metadata named
/// with the `_total` suffix their samples carry, no `# UNIT` and no `# EOF`.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# TYPE ")
            .map(|r| ("# TYPE ", r))
            .or_else(|| line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_histogram_buckets_are_inclusive_and_cumulative() {
        let m = Metrics::new();
        m.inter_chunk_gap(Duration::from_millis(10));
        m.inter_chunk_gap(Duration::from_millis(11));
        m.inter_chunk_gap(Duration::from_secs(3600));
        let text = m.encode();
        assert!(
            text.contains("chunkgate_inter_chunk_gap_seconds_bucket{le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("chunkgate_inter_chunk_gap_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("chunkgate_inter_chunk_gap_seconds_bucket{le=\"60.0\"} 2\n"));
        assert!(text.contains("chunkgate_inter_chunk_gap_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chunkgate_inter_chunk_gap_seconds_count 3\n"));
        assert!(
            text.contains("chunkgate_inter_chunk_gap_seconds_sum 3600.021\n"),
            "{text}"
        );
    }

    #[test]
    fn encode_types_counters_under_their_total_name() {
        let m = Metrics::new();
        m.rejected("head_too_large");
        let text = m.encode();
        assert!(
            text.contains("# TYPE chunkgate_rejections_total counter\n"),
            "{text}"
        );
        assert!(text.contains("chunkgate_rejections_total{reason=\"head_too_large\"} 1\n"));
        assert!(!text.contains("# EOF"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }

    #[test]
    fn status_class_buckets() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "none");
    }
}
