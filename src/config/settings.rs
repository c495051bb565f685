//! Every setting of chunkgate, declared once.
//!
//! A scalar setting is one entry below: its key, kind (type and bounds), default, doc line
//! and optional flag. From it follow the struct field and its default (for `section`s), the
//! file parsing and validation, the flag, the line of `check-config` output and the row of
//! the reference (`chunkgate check-config --reference`, the README's table). Adding a
//! setting is adding an entry here and reading the field where it is used.
//!
//! The list sections (`[[listener]]`, `[admin]`, `[[route]]`, `[[group]]`) are parsed by hand
//! in `file.rs`; their keys are declared at the end for the unknown-key check and the
//! reference.

use std::time::Duration;

use super::declare::{list_table, settings, ListTable};
use super::kinds::{
    Choice, Count, Described, Filter, Fraction, Optional, Size, Statuses, Switch, Time,
};
use super::{Align, LogFormat, MAX_CHUNK_SIZE_CEILING};
use crate::codec::chunked::Limits as ChunkLimits;
use crate::codec::head::HeadLimits;

settings! {
    placed {
        /// How long in-flight exchanges may run after SIGTERM/SIGINT before the process
        /// exits; keep it below the orchestrator's grace period.
        "drain_timeout" => Time, default Duration::from_secs(30),
            field(drain_timeout), flag "--drain-timeout";

        /// Largest chunk payload. A stream holds one whole chunk in memory, hence the ceiling.
        "limits.max_chunk_size" => Size::<u64>::at_most(MAX_CHUNK_SIZE_CEILING),
            default ChunkLimits::DEFAULT_MAX_CHUNK_SIZE,
            via(get |c| c.limits.chunk.chunk_size_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_chunk_size(v)),
            flag "--max-chunk-size";
        /// Longest chunk size line, extensions included.
        "limits.max_size_line" => Size::<usize>::positive(),
            default ChunkLimits::DEFAULT_MAX_SIZE_LINE,
            via(get |c| c.limits.chunk.size_line_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_size_line(v));
        /// Total chunk-extension bytes over one body.
        "limits.max_extension_bytes" => Size::<u64>::positive(),
            default ChunkLimits::DEFAULT_MAX_EXTENSION_BYTES,
            via(get |c| c.limits.chunk.extension_bytes_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_extension_bytes(v));
        /// Largest trailer section.
        "limits.max_trailer_bytes" => Size::<usize>::positive(),
            default ChunkLimits::DEFAULT_MAX_TRAILER_BYTES,
            via(get |c| c.limits.chunk.trailer_bytes_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_trailer_bytes(v));
        /// Most trailer fields.
        "limits.max_trailer_fields" => Count::<usize>::between(1, 10_000),
            default ChunkLimits::DEFAULT_MAX_TRAILER_FIELDS,
            via(get |c| c.limits.chunk.trailer_fields_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_trailer_fields(v));
        /// Largest total chunked body; at least `max_chunk_size`.
        "limits.max_body_size" => Optional::new(Size::<u64>::positive(), "unlimited"),
            default None,
            via(get |c| c.limits.chunk.body_size_limit(),
                set |c, v| c.limits.chunk = c.limits.chunk.max_body_size(v));
        /// Largest request or response head (431 for a client).
        "limits.max_head_bytes" => Size::<usize>::positive(),
            default HeadLimits::default().max_head_bytes,
            field(limits.head.max_head_bytes);
        /// Most header fields in a head (431 for a client).
        "limits.max_headers" => Count::<usize>::between(1, 10_000),
            default HeadLimits::default().max_headers,
            field(limits.head.max_headers);
        /// Longest request line, at most `max_head_bytes` (414).
        "limits.max_request_line" => Size::<usize>::positive(),
            default HeadLimits::default().max_request_line,
            field(limits.head.max_request_line);
        /// Largest request body accepted from a client, Content-Length (refused before
        /// anything is forwarded) or chunked (413).
        "limits.max_request_body" => Optional::new(Size::<u64>::positive(), "unlimited"),
            default Some(32 << 20),
            field(limits.max_request_body);
        /// Content-Length request bodies up to this size are read whole before an upstream
        /// connection is taken (a slow client then holds none); larger ones stream.
        "limits.buffer_request_body" => Size::<u64>::any(),
            default 256 << 10,
            field(limits.buffer_request_body);
        /// The slowest a client may send its request body, bytes per second on average after
        /// `timeouts.client_body_grace` (408 below it; 0: no minimum).
        "limits.client_body_min_rate" => Count::<u64>::between(0, 1 << 40),
            default 240,
            field(limits.client_body_min_rate);
    }

    /// Timeouts. `None` means no timeout for the optional ones.
    section timeouts: Timeouts {
        /// TCP connect to an upstream (retryable).
        connect: Duration => Time, default Duration::from_secs(5);
        /// TLS handshake with an upstream (retryable).
        tls_handshake: Duration => Time, default Duration::from_secs(10);
        /// Upstream response head after the request was sent: time to first byte (504).
        response_head: Duration => Time, default Duration::from_secs(120),
            flag "--response-head-timeout";
        /// Longest gap between two body reads from the upstream or the client.
        stream_idle: Duration => Time, default Duration::from_secs(120),
            flag "--stream-idle-timeout";
        /// Cap on a whole exchange; without it a healthy long stream is never cut.
        total: Option<Duration> => Optional::new(Time, "none"), default None;
        /// Client request head read: the slowloris guard (408).
        client_head: Duration => Time, default Duration::from_secs(10);
        /// Keep-alive idle time of a client connection between exchanges.
        client_idle: Duration => Time, default Duration::from_secs(60);
        /// A client that accepts no bytes for this long is cut (it stopped reading).
        client_write_stall: Duration => Time, default Duration::from_secs(60);
        /// How long a request body may run before `limits.client_body_min_rate` applies.
        client_body_grace: Duration => Time, default Duration::from_secs(5);
    }

    /// Upstream keep-alive pool.
    section pool: PoolConfig {
        /// Idle connections kept per upstream (0 disables reuse).
        max_idle_per_upstream: usize => Count::<usize>::between(0, 1_000_000), default 64;
        /// Idle connections older than this are closed.
        idle_timeout: Duration => Time, default Duration::from_secs(90);
        /// Most connections (idle and busy) per upstream; past it a request is answered 503
        /// with `Retry-After` at once. Derived by default: the listeners' client cap (each
        /// client connection carries one exchange at a time), itself held to what the
        /// descriptor limit allows.
        max_connections_per_upstream: Option<usize> =>
            Optional::new(Count::<usize>::between(1, 1_000_000), "derived"),
            default None;
    }

    /// Retry policy.
    section retry: RetryConfig {
        /// Total attempts including the first (1 disables retries).
        max_attempts: u32 => Count::<u32>::between(1, 10), default 3,
            flag "--retry-attempts";
        /// Backoff base: attempt n waits a random time up to min(cap, base * 2^n).
        base: Duration => Time, default Duration::from_millis(200);
        /// Backoff cap; a Retry-After longer than this is not retried (the upstream's answer
        /// goes to the client with it).
        cap: Duration => Time, default Duration::from_secs(10);
        /// Upstream response statuses that are retried.
        on_status: Vec<u16> => Statuses, default vec![429, 502, 503, 504];
        /// Retry connect failures and connect/TLS timeouts.
        on_connect_error: bool => Switch, default true;
        /// Largest request body kept for replay; larger ones are not retried (0: no request
        /// with a body is retried).
        max_replay_body: usize => Size::<usize>::any(), default 1 << 20;
        /// Retries may add at most this fraction of requests ...
        budget_ratio: f64 => Fraction::between(0.0, 1.0), default 0.2;
        /// ... plus this many retries per second regardless.
        budget_min_per_sec: u32 => Count::<u32>::between(0, 1_000_000), default 10;
        /// All attempts of one request must reach a response head within this.
        deadline: Duration => Time, default Duration::from_secs(60);
    }

    /// Circuit breaker policy (per upstream).
    section breaker: BreakerConfig {
        /// Open after this many consecutive failures (0: only the failure rate opens it).
        consecutive_failures: u32 => Count::<u32>::between(0, 1_000_000), default 5;
        /// Or when the failure rate over `window` reaches this ...
        failure_rate: f64 => Fraction::above(0.0, 1.0), default 0.5;
        /// ... with at least this many requests in the window.
        min_requests: u32 => Count::<u32>::between(1, 1_000_000), default 20;
        /// Rolling window for the failure rate.
        window: Duration => Time, default Duration::from_secs(10);
        /// How long an open breaker fails fast before letting probes through.
        open_for: Duration => Time, default Duration::from_secs(10);
        /// Probes let through while half-open; all must succeed to close.
        half_open_probes: u32 => Count::<u32>::between(1, 1_000), default 1;
    }

    /// Log output.
    section log: LogConfig {
        /// `pretty` (human-readable lines) or `json` (one object per line).
        format: LogFormat => LOG_FORMAT, default LogFormat::Pretty, flag "--log-format";
        /// `RUST_LOG`-style filter (`info,chunkgate=debug`); the `RUST_LOG` variable
        /// overrides it.
        filter: String => Filter, default "info".to_string(), flag "--log-filter";
        /// One access-log line per exchange, target `access`.
        access_log: bool => Switch, default true, off "--no-access-log";
    }

    /// Metrics of the admin port.
    section metrics: MetricsConfig {
        /// Distinct `model` label values kept in the token metrics; later models are counted
        /// under `other`.
        max_models: usize => Count::<usize>::between(1, 1_000), default 32;
    }
}

pub(super) const ALIGN: Choice<Align> = Choice::new(
    "alignment",
    &[("chunks", Align::Chunks), ("events", Align::Events)],
);

/// `route.max_event`: one event is held whole up to this (16 MiB at most: it is memory per
/// stream).
pub(super) const MAX_EVENT: Size<usize> = Size::between(1 << 10, 16 << 20);

const LOG_FORMAT: Choice<LogFormat> = Choice::new(
    "log format",
    &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)],
);

/// Pairs of settings where the first must not exceed the second.
pub(super) const ORDERED: &[(&str, &str)] = &[
    ("limits.max_chunk_size", "limits.max_body_size"),
    ("limits.max_request_line", "limits.max_head_bytes"),
    (
        "pool.max_idle_per_upstream",
        "pool.max_connections_per_upstream",
    ),
    ("retry.base", "retry.cap"),
];

// ---------------------------------------------------------------------------------------------
// The list sections
// ---------------------------------------------------------------------------------------------

/// `listener.max_connections`.
pub(super) const MAX_CONNECTIONS: Count<usize> = Count::between(1, 10_000_000);
/// `group.upstream.weight`.
pub(super) const WEIGHT: Count<u32> = Count::between(1, 10_000);

const ADDRESS: Described = Described::new("address", "");
const PATH: Described = Described::new("path", "");

list_table! {
    LISTENER "[[listener]]" {
        /// Client listener address (required in a `[[listener]]`; repeat the section for
        /// several).
        addr: ADDRESS, default DEFAULT_LISTEN_TEXT, flag "--listen";
        /// Client connections open at once; more wait in the backlog.
        max_connections: MAX_CONNECTIONS, default DEFAULT_MAX_CONNECTIONS_TEXT,
            flag "--max-connections";
        /// PEM certificate chain, leaf first: TLS termination, ALPN http/1.1. Needs `tls_key`.
        tls_cert: PATH, default "none", flag "--tls-cert";
        /// PEM private key (PKCS#8, PKCS#1 or SEC1). Needs `tls_cert`.
        tls_key: PATH, default "none", flag "--tls-key";
    }
}

list_table! {
    ADMIN "[admin]" {
        /// Admin listener for `/healthz`, `/readyz` and `/metrics`; not a client listener's
        /// address.
        addr: ADDRESS, default "none", flag "--admin";
    }
}

list_table! {
    ROUTE "[[route]]" {
        /// Path prefix; the longest match wins and `/` matches everything.
        prefix: Described::new("string", "starts with `/`"), default "(required)";
        /// Name of the `[[group]]` serving the route.
        group: Described::new("string", ""), default "(required)";
        /// Remove the prefix from the path before forwarding.
        strip_prefix: Switch, default "`true` (`false` for `/`)";
        /// Put in front of the path after stripping; needs `strip_prefix = true`.
        rewrite_prefix: Described::new("string", "empty, or `/...` not ending in `/`"),
            default "`\"\"`";
        /// Headers set on every forwarded request (secrets: never logged, redacted by
        /// `check-config`).
        inject_headers: Described::new("table of strings", "no framing or routing headers"),
            default "`{}`";
        /// Accepted inbound bearer tokens; 401 otherwise, and the client's Authorization is
        /// not forwarded.
        require_bearer: Described::new("list of strings", "not empty"), default "absent";
        /// `events`: `text/event-stream` answers leave one whole SSE event per chunk, NDJSON
        /// one line per chunk, whatever the upstream's chunks; `chunks`: chunk-exact.
        align: ALIGN, default "`\"chunks\"`", flag "--align";
        /// Longest event held whole by `align = "events"`; a longer one leaves in pieces.
        max_event: MAX_EVENT, default "`\"1MiB\"`";
        /// Read each answer (dialect, model, text, usage, first token) for metrics, the access
        /// log and capture; never delays a byte.
        tap: Switch, default "`true`";
        /// Ask OpenAI chat/completions streams for usage (`stream_options.include_usage`) and
        /// hide the usage-only event the client did not ask for.
        inject_include_usage: Switch, default "`false`";
        /// Streaming requests: after this long without an upstream answer, commit `200` and send
        /// `: keepalive` comments at this interval until the first event.
        keepalive: Described::new("duration", "1s to 1h"), default "off";
        /// Names of the `[[sink]]`s that get a completion record of each exchange; capture is
        /// off unless a route names a sink.
        capture: Described::new("list of strings", "defined sink names"), default "`[]`",
            flag "--capture-jsonl, --capture-sqlite, --capture-webhook";
        /// Add the request body (JSON) to the route's records.
        capture_request: Switch, default "`false`";
        /// Most request-body bytes a record keeps; a longer body is left out.
        capture_request_max: super::sinks::CAPTURE_REQUEST_MAX, default "`\"64KiB\"`";
    }
}

list_table! {
    GROUP "[[group]]" nested "upstream" {
        /// Group name, referenced by routes; at least one `[[group.upstream]]` follows.
        name: Described::new("string", "letters, digits, `-`, `_`, `.`"), default "(required)";
    }
}

list_table! {
    UPSTREAM "[[group.upstream]]" {
        /// Upstream URL with optional port and path prefix; no credentials, query or fragment.
        url: Described::new("URL", "`http://` or `https://`"), default "(required)",
            flag "--upstream";
        /// Relative share of the group's traffic.
        weight: WEIGHT, default "`1`";
        /// Extra CA certificates (PEM) trusted for this https upstream, besides the web roots.
        ca_file: PATH, default "none", flag "--upstream-ca";
        /// Headers set on requests to this upstream, on top of the route's (a name the route
        /// also injects takes this value): credentials per provider or account.
        inject_headers: Described::new("table of strings", "no framing or routing headers"),
            default "`{}`";
        /// Replaces the route's `strip_prefix` for this upstream.
        strip_prefix: Switch, default "the route's";
        /// Replaces the route's `rewrite_prefix` for this upstream; needs stripping.
        rewrite_prefix: Described::new("string", "empty, or `/...` not ending in `/`"),
            default "the route's";
    }
}

list_table! {
    SINK "[[sink]]" {
        /// Sink name, referenced by routes' `capture`.
        name: Described::new("string", "letters, digits, `-`, `_`, `.`"), default "(required)";
        /// Where records go: `jsonl` (a file), `sqlite` (a database) or `webhook` (a POST per
        /// record).
        kind: Described::new("string", "`jsonl`, `sqlite`, `webhook`"), default "(required)";
        /// jsonl, sqlite: the file (required); a jsonl file is reopened on SIGHUP.
        path: PATH, default "(required)";
        /// jsonl: fsync after every batch.
        fsync: Switch, default "`false`";
        /// webhook: the URL records are POSTed to (required).
        url: Described::new("URL", "`http://` or `https://`"), default "(required)";
        /// webhook: headers sent with every POST, `${ENV}` expanded (secrets: never logged,
        /// redacted by `check-config`).
        headers: Described::new("table of strings", "no framing headers"), default "`{}`";
        /// webhook: one delivery attempt's deadline.
        timeout: Time, default "`\"10s\"`";
        /// webhook: attempts after the first, with exponential backoff (5xx, 429, network).
        retries: super::sinks::RETRIES, default "`5`";
        /// webhook: deliveries under way at once.
        max_in_flight: super::sinks::MAX_IN_FLIGHT, default "`16`";
        /// Records waiting for this sink; past it a record is dropped and counted.
        queue_records: super::sinks::QUEUE_RECORDS, default "`10000`";
        /// Bytes of records waiting for this sink; past it a record is dropped and counted.
        queue_bytes: super::sinks::QUEUE_BYTES, default "`\"64MiB\"`";
        /// Records written together: one write (jsonl), one transaction (sqlite).
        batch: super::sinks::BATCH, default "`256`";
    }
}

/// The list sections, in reference order.
pub(super) static LISTS: &[&ListTable] = &[&LISTENER, &ADMIN, &ROUTE, &GROUP, &UPSTREAM, &SINK];

const DEFAULT_LISTEN_TEXT: &str = "`\"127.0.0.1:8080\"`";
const DEFAULT_MAX_CONNECTIONS_TEXT: &str = "`10000`";

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS};
    use super::*;

    #[test]
    fn list_defaults_show_the_constants() {
        assert_eq!(DEFAULT_LISTEN_TEXT, format!("`{DEFAULT_LISTEN:?}`"));
        assert_eq!(
            DEFAULT_MAX_CONNECTIONS_TEXT,
            format!("`{DEFAULT_MAX_CONNECTIONS}`")
        );
    }
}
