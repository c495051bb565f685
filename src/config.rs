//! Configuration: the validated, typed settings every part of chunkgate reads.
//!
//! The types in this module are the contract between the TOML file / command-line flags
//! (parsed and validated by [`Config::from_toml_str`] and friends) and the running proxy.
//! Every limit has a bounded default; see the README's configuration reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::chunked::Limits as ChunkLimits;
use crate::codec::head::HeadLimits;

/// The largest `limits.max_chunk_size` accepted: a stream buffers one whole chunk, so this
/// bounds the memory a single peer can make one stream hold.
pub const MAX_CHUNK_SIZE_CEILING: u64 = 1 << 30;

/// The whole, validated configuration of one chunkgate process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Client-facing listeners (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`), if any.
    pub admin: Option<SocketAddr>,
    /// Routes, matched by longest path prefix.
    pub routes: Vec<RouteConfig>,
    /// Upstream groups, referenced by name from routes.
    pub groups: Vec<UpstreamGroup>,
    /// Protocol and size limits.
    pub limits: LimitsConfig,
    /// Timeouts, client and upstream side.
    pub timeouts: Timeouts,
    /// Upstream connection pool.
    pub pool: PoolConfig,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Circuit breaker policy.
    pub breaker: BreakerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Graceful shutdown: how long in-flight exchanges may run after SIGTERM.
    pub drain_timeout: Duration,
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to accept client connections on.
    pub addr: SocketAddr,
    /// TLS termination, when set.
    pub tls: Option<TlsServerConfig>,
    /// Most client connections open at once on this listener (default 10,000).
    pub max_connections: usize,
}

/// PEM files for TLS termination.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServerConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A path-prefix route to an upstream group.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Path prefix matched against the request target, e.g. `/openai/` or `/`.
    pub prefix: String,
    /// Name of the upstream group.
    pub group: String,
    /// Strip `prefix` from the path before forwarding (default true for non-`/` prefixes).
    pub strip_prefix: bool,
    /// Replacement put in front of the path after stripping (default empty); empty or
    /// starting with `/` and never ending with `/` (the stripped path starts with `/`).
    pub rewrite_prefix: String,
    /// Headers set on every forwarded request (values may hold secrets; never logged).
    pub inject_headers: Vec<(String, String)>,
    /// If non-empty, requests must carry `Authorization: Bearer <one of these>` (401 otherwise).
    /// The inbound `Authorization` header is then not forwarded unless injected.
    pub require_bearer: Vec<String>,
}

/// A named set of upstreams that share a route's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamGroup {
    /// Name that routes refer to.
    pub name: String,
    /// Members of the group (at least one).
    pub upstreams: Vec<UpstreamConfig>,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Parsed `http://` or `https://` URL.
    pub url: UpstreamUrl,
    /// Relative weight for balancing (default 1, at least 1).
    pub weight: u32,
    /// Extra CA certificates (PEM) to trust, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// `scheme://host[:port][/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https://`: connect with TLS.
    pub tls: bool,
    /// Host name or IP literal (without brackets), used for DNS and SNI.
    pub host: String,
    /// TCP port (the scheme's default when the URL has none).
    pub port: u16,
    /// Path prefix prepended to every forwarded path; empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
}

impl UpstreamUrl {
    /// Parse `http://host[:port][/prefix]` or `https://...`.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "upstream url {s:?} must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("upstream url {s:?} has no host"));
        }
        if authority.contains('@') {
            return Err(format!(
                "upstream url {s:?}: credentials in the url are not supported"
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "upstream url {s:?}: query and fragment are not allowed"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("upstream url {s:?}: unclosed '['"))?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, s)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("upstream url {s:?}: bad authority")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("upstream url {s:?} has no host"));
        }
        let path_prefix = path.trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            path_prefix,
        })
    }

    /// `host[:port]` as sent in `Host` (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path_prefix)
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("upstream url {whole:?}: bad port {p:?}"));
    }
    p.parse::<u16>()
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| format!("upstream url {whole:?}: bad port {p:?}"))
}

/// Protocol and size limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LimitsConfig {
    /// Chunked-body limits (largest chunk, size line, extensions, trailers, body).
    pub chunk: ChunkLimits,
    /// Request and response head limits.
    pub head: HeadLimits,
    /// Largest Content-Length body accepted from a client (default unlimited: `None`).
    pub max_request_body: Option<u64>,
}

/// Timeouts. `None` means no timeout for the optional ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// TCP connect to an upstream (default 5 s).
    pub connect: Duration,
    /// TLS handshake with an upstream (default 10 s).
    pub tls_handshake: Duration,
    /// Upstream response head after the request was sent: time to first byte (default 120 s).
    pub response_head: Duration,
    /// Longest gap between two body reads from the upstream or the client (default 120 s).
    pub stream_idle: Duration,
    /// Optional cap on a whole exchange (default none: never cuts a healthy long stream).
    pub total: Option<Duration>,
    /// Client request head read (slowloris guard, default 10 s).
    pub client_head: Duration,
    /// Keep-alive idle time for a client connection between exchanges (default 60 s).
    pub client_idle: Duration,
    /// A write to the client that makes no progress for this long cuts the client (default 60 s).
    pub client_write_stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            tls_handshake: Duration::from_secs(10),
            response_head: Duration::from_secs(120),
            stream_idle: Duration::from_secs(120),
            total: None,
            client_head: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            client_write_stall: Duration::from_secs(60),
        }
    }
}

/// Upstream keep-alive pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Idle connections kept per upstream (default 64).
    pub max_idle_per_upstream: usize,
    /// Idle connections older than this are closed (default 90 s).
    pub idle_timeout: Duration,
    /// Most connections (idle + busy) per upstream; callers wait for a slot (default 1,024).
    pub max_connections_per_upstream: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_upstream: 64,
            idle_timeout: Duration::from_secs(90),
            max_connections_per_upstream: 1024,
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total attempts including the first (default 3; 1 disables retries).
    pub max_attempts: u32,
    /// Backoff base (default 200 ms).
    pub base: Duration,
    /// Backoff cap, also the cap on honoured Retry-After (default 10 s).
    pub cap: Duration,
    /// Response statuses that are retried (default 429, 502, 503, 504).
    pub on_status: Vec<u16>,
    /// Retry on connect errors and connect/TLS timeouts (default true).
    pub on_connect_error: bool,
    /// Largest request body kept for replay (default 1 MiB).
    pub max_replay_body: usize,
    /// Retries may add at most this fraction of requests (default 0.2).
    pub budget_ratio: f64,
    /// Plus this many retries per second regardless (default 10).
    pub budget_min_per_sec: u32,
    /// Overall deadline for all attempts of one request until the response head (default 60 s).
    pub deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            on_status: vec![429, 502, 503, 504],
            on_connect_error: true,
            max_replay_body: 1 << 20,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            deadline: Duration::from_secs(60),
        }
    }
}

/// Circuit breaker policy (per upstream).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many consecutive failures (default 5; 0 disables).
    pub consecutive_failures: u32,
    /// Or when the failure rate over `window` reaches this (default 0.5) ...
    pub failure_rate: f64,
    /// ... with at least this many requests in the window (default 20).
    pub min_requests: u32,
    /// Rolling window for the failure rate (default 10 s).
    pub window: Duration,
    /// How long an open breaker fails fast before half-opening (default 10 s).
    pub open_for: Duration,
    /// Probes let through while half-open (default 1); all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter (default `info`).
    pub filter: String,
    /// Write one access-log line per exchange (default true).
    pub access_log: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            filter: "info".to_string(),
            access_log: true,
        }
    }
}

impl Config {
    /// A configuration with one listener, one route `/` to one group of the given upstreams,
    /// and every other setting at its default.
    pub fn simple(listen: SocketAddr, upstreams: Vec<UpstreamUrl>) -> Config {
        Config {
            listeners: vec![ListenerConfig {
                addr: listen,
                tls: None,
                max_connections: 10_000,
            }],
            admin: None,
            routes: vec![RouteConfig {
                prefix: "/".to_string(),
                group: "default".to_string(),
                strip_prefix: false,
                rewrite_prefix: String::new(),
                inject_headers: Vec::new(),
                require_bearer: Vec::new(),
            }],
            groups: vec![UpstreamGroup {
                name: "default".to_string(),
                upstreams: upstreams
                    .into_iter()
                    .map(|url| UpstreamConfig {
                        url,
                        weight: 1,
                        ca_file: None,
                    })
                    .collect(),
            }],
            limits: LimitsConfig::default(),
            timeouts: Timeouts::default(),
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            log: LogConfig::default(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a configuration problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// Nothing more precise than the origin.
    Whole,
    /// A key in the file, dotted, array elements as `[i]` (e.g. `route[1].group`).
    Key(String),
    /// A command-line flag (e.g. `--upstream`).
    Flag(&'static str),
}

/// A configuration problem, naming the file, line and key (or flag) it concerns.
///
/// Displays as `FILE:LINE: key `a.b.c`: what is wrong`, or `command line: flag `--x`: ...`
/// for flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    line: Option<usize>,
    subject: Subject,
    message: String,
}

impl ConfigError {
    fn key(origin: &str, line: Option<usize>, key: impl Into<String>, message: String) -> Self {
        ConfigError {
            origin: origin.to_string(),
            line,
            subject: Subject::Key(key.into()),
            message,
        }
    }

    fn flag(flag: &'static str, message: String) -> Self {
        ConfigError {
            origin: "command line".to_string(),
            line: None,
            subject: Subject::Flag(flag),
            message,
        }
    }

    fn whole(origin: &str, message: String) -> Self {
        ConfigError {
            origin: origin.to_string(),
            line: None,
            subject: Subject::Whole,
            message,
        }
    }

    /// The file name (or `command line`) the problem is in.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key (`route[0].group`) or flag (`--upstream`) concerned, when known.
    pub fn subject(&self) -> Option<&str> {
        match &self.subject {
            Subject::Whole => None,
            Subject::Key(k) => Some(k),
            Subject::Flag(f) => Some(f),
        }
    }

    /// What is wrong, without location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match &self.subject {
            Subject::Whole => {}
            Subject::Key(k) => write!(f, ": key `{k}`")?,
            Subject::Flag(flag) => write!(f, ": flag `{flag}`")?,
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------------
// Durations and sizes
// ---------------------------------------------------------------------------------------------

/// Parse a duration such as `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"` or `"1.5s"`.
///
/// Units: `us`, `ms`, `s`, `m`, `h`. A unit is required; `"0s"` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. \"5s\", \"250ms\", \"2m\")".to_string());
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &text[start..i];
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        if number.is_empty() || unit.is_empty() {
            return Err(format!(
                "invalid duration {s:?} (expected e.g. \"5s\", \"250ms\", \"2m\")"
            ));
        }
        let unit_nanos: u128 = match unit {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use us, ms, s, m or h)"
                ))
            }
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
            return Err(format!("invalid duration {s:?}: bad number {number:?}"));
        }
        let too_long = || format!("duration {s:?} is too long");
        let whole: u128 = whole.parse().map_err(|_| too_long())?;
        let mut part = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
        if !frac.is_empty() {
            if frac.len() > 9 {
                return Err(format!("invalid duration {s:?}: too many decimals"));
            }
            let digits: u128 = frac.parse().map_err(|_| too_long())?;
            let scale = 10u128.pow(frac.len() as u32);
            part = part
                .checked_add(digits.checked_mul(unit_nanos).ok_or_else(too_long)? / scale)
                .ok_or_else(too_long)?;
        }
        total_nanos = total_nanos.checked_add(part).ok_or_else(too_long)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| format!("duration {s:?} is too long"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Format a duration in the shortest exact form [`parse_duration`] reads back (`"2m"`, `"250ms"`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const UNITS: [(u128, &str); 5] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    if nanos == 0 {
        return "0s".to_string();
    }
    for (unit, name) in UNITS {
        if nanos % unit == 0 {
            return format!("{}{name}", nanos / unit);
        }
    }
    // Below a microsecond: write seconds with nine decimals, which parses back exactly.
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// Parse a byte size: a plain number of bytes, or a string like `"64KiB"`, `"1MiB"`, `"1GiB"`,
/// `"16kB"` (decimal units), `"512B"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid size {s:?} (expected bytes or e.g. \"64KiB\", \"1MiB\")"
        ));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, kB, MB or GB)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("\"{}{name}\"", n / unit);
        }
    }
    n.to_string()
}

// ---------------------------------------------------------------------------------------------
// Environment expansion
// ---------------------------------------------------------------------------------------------

/// Expand `${NAME}` and `${NAME:-default}` in `s` with `env`; `$${` is a literal `${`.
/// Any other `$` is kept as is. A variable that is not set (and has no default) is an error
/// naming it.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unclosed `${` in value".to_string())?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "invalid environment variable name {name:?} in `${{...}}`"
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

// ---------------------------------------------------------------------------------------------
// The file schema
// ---------------------------------------------------------------------------------------------

mod file {
    //! The TOML file as written: every leaf keeps its span so errors can name its line.

    use serde::Deserialize;
    use toml::Spanned;

    pub type S<T> = Spanned<T>;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Root {
        #[serde(default)]
        pub listener: Vec<Listener>,
        pub admin: Option<Admin>,
        #[serde(default)]
        pub route: Vec<Route>,
        #[serde(default)]
        pub group: Vec<Group>,
        pub limits: Option<Limits>,
        pub timeouts: Option<Timeouts>,
        pub pool: Option<Pool>,
        pub retry: Option<Retry>,
        pub breaker: Option<Breaker>,
        pub log: Option<Log>,
        pub drain_timeout: Option<S<toml::Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Listener {
        pub addr: S<String>,
        pub tls_cert: Option<S<String>>,
        pub tls_key: Option<S<String>>,
        pub max_connections: Option<S<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub addr: S<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub prefix: S<String>,
        pub group: S<String>,
        pub strip_prefix: Option<S<bool>>,
        pub rewrite_prefix: Option<S<String>>,
        #[serde(default)]
        pub inject_headers: std::collections::BTreeMap<String, S<String>>,
        pub require_bearer: Option<S<Vec<S<String>>>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Group {
        pub name: S<String>,
        #[serde(default)]
        pub upstream: Vec<Upstream>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub url: S<String>,
        pub weight: Option<S<i64>>,
        pub ca_file: Option<S<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub max_chunk_size: Option<S<toml::Value>>,
        pub max_size_line: Option<S<toml::Value>>,
        pub max_extension_bytes: Option<S<toml::Value>>,
        pub max_trailer_bytes: Option<S<toml::Value>>,
        pub max_trailer_fields: Option<S<i64>>,
        pub max_body_size: Option<S<toml::Value>>,
        pub max_head_bytes: Option<S<toml::Value>>,
        pub max_headers: Option<S<i64>>,
        pub max_request_line: Option<S<toml::Value>>,
        pub max_request_body: Option<S<toml::Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Timeouts {
        pub connect: Option<S<toml::Value>>,
        pub tls_handshake: Option<S<toml::Value>>,
        pub response_head: Option<S<toml::Value>>,
        pub stream_idle: Option<S<toml::Value>>,
        pub total: Option<S<toml::Value>>,
        pub client_head: Option<S<toml::Value>>,
        pub client_idle: Option<S<toml::Value>>,
        pub client_write_stall: Option<S<toml::Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Pool {
        pub max_idle_per_upstream: Option<S<i64>>,
        pub idle_timeout: Option<S<toml::Value>>,
        pub max_connections_per_upstream: Option<S<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Retry {
        pub max_attempts: Option<S<i64>>,
        pub base: Option<S<toml::Value>>,
        pub cap: Option<S<toml::Value>>,
        pub on_status: Option<S<Vec<S<i64>>>>,
        pub on_connect_error: Option<S<bool>>,
        pub max_replay_body: Option<S<toml::Value>>,
        pub budget_ratio: Option<S<f64>>,
        pub budget_min_per_sec: Option<S<i64>>,
        pub deadline: Option<S<toml::Value>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Breaker {
        pub consecutive_failures: Option<S<i64>>,
        pub failure_rate: Option<S<f64>>,
        pub min_requests: Option<S<i64>>,
        pub window: Option<S<toml::Value>>,
        pub open_for: Option<S<toml::Value>>,
        pub half_open_probes: Option<S<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub format: Option<S<String>>,
        pub filter: Option<S<String>>,
        pub access_log: Option<S<bool>>,
    }
}

use file::S;

/// Header fields chunkgate frames or routes itself; a route may not inject them.
const NOT_INJECTABLE: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Conversion context: the source text (for line numbers), its name and the environment.
struct Ctx<'a> {
    src: &'a str,
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::key(
            self.origin,
            Some(self.line_of(span.start)),
            key,
            message.into(),
        )
    }

    fn fail<T, U>(
        &self,
        v: &S<U>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.err(v.span(), key, message))
    }

    fn string(&self, v: &S<String>, key: &str) -> Result<String, ConfigError> {
        expand_env(v.get_ref(), self.env).or_else(|m| self.fail(v, key, m))
    }

    fn duration(&self, v: &S<toml::Value>, key: &str) -> Result<Duration, ConfigError> {
        let d = match v.get_ref() {
            toml::Value::String(s) => {
                let s = expand_env(s, self.env).or_else(|m| self.fail(v, key, m))?;
                parse_duration(&s).or_else(|m| self.fail(v, key, m))?
            }
            other => {
                return self.fail(
                    v,
                    key,
                    format!(
                        "expected a duration string like \"5s\", \"250ms\" or \"2m\", found {}",
                        other.type_str()
                    ),
                )
            }
        };
        if d.is_zero() {
            return self.fail(v, key, "must be greater than zero");
        }
        Ok(d)
    }

    fn size(&self, v: &S<toml::Value>, key: &str) -> Result<u64, ConfigError> {
        let n = match v.get_ref() {
            toml::Value::Integer(n) => {
                u64::try_from(*n).or_else(|_| self.fail(v, key, "must be greater than zero"))?
            }
            toml::Value::String(s) => {
                let s = expand_env(s, self.env).or_else(|m| self.fail(v, key, m))?;
                parse_size(&s).or_else(|m| self.fail(v, key, m))?
            }
            other => {
                return self.fail(
                    v,
                    key,
                    format!(
                        "expected a size (bytes, or a string like \"64KiB\"), found {}",
                        other.type_str()
                    ),
                )
            }
        };
        if n == 0 {
            return self.fail(v, key, "must be greater than zero");
        }
        Ok(n)
    }

    fn size_usize(&self, v: &S<toml::Value>, key: &str) -> Result<usize, ConfigError> {
        let n = self.size(v, key)?;
        usize::try_from(n).or_else(|_| self.fail(v, key, "is too large"))
    }

    fn count(&self, v: &S<i64>, key: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        let n = *v.get_ref();
        if n < min || n > max {
            return self.fail(
                v,
                key,
                format!("must be between {min} and {max}, found {n}"),
            );
        }
        Ok(n)
    }

    fn addr(&self, v: &S<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        let s = self.string(v, key)?;
        s.trim().parse().or_else(|_| {
            self.fail(
                v,
                key,
                format!("{s:?} is not a socket address (expected e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
            )
        })
    }

    fn path(&self, v: &S<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            return self.fail(v, key, "empty path");
        }
        Ok(PathBuf::from(s))
    }
}

fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Config {
    /// Parse and validate a TOML configuration, expanding `${VAR}` from the process
    /// environment. `source_name` names the text in errors (usually the file path).
    pub fn from_toml_str(s: &str, source_name: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with_env(s, source_name, &process_env)
    }

    /// [`Config::from_toml_str`] with an explicit environment lookup for `${VAR}` expansion.
    pub fn from_toml_str_with_env(
        s: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx {
            src: s,
            origin: source_name,
            env,
        };
        let de = toml::Deserializer::new(s);
        let root: file::Root = serde_path_to_error::deserialize(de).map_err(|e| {
            // toml's `Spanned` wraps each value in a private field; it is no part of the key.
            let path = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let line = inner.span().map(|span| ctx.line_of(span.start));
            let message = inner
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            if path == "." || path.is_empty() {
                ConfigError {
                    origin: source_name.to_string(),
                    line,
                    subject: Subject::Whole,
                    message,
                }
            } else {
                ConfigError::key(source_name, line, path, message)
            }
        })?;
        convert(&ctx, root)
    }

    /// Read, parse and validate a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        Self::from_file_with_env(path, &process_env)
    }

    /// [`Config::from_file`] with an explicit environment lookup.
    pub fn from_file_with_env(
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole(&name, format!("cannot read the file: {e}")))?;
        Self::from_toml_str_with_env(&text, &name, env)
    }
}

fn convert(ctx: &Ctx<'_>, root: file::Root) -> Result<Config, ConfigError> {
    let mut cfg = Config::simple(SocketAddr::from(([127, 0, 0, 1], 8080)), Vec::new());
    cfg.routes.clear();
    cfg.groups.clear();

    // Listeners.
    if !root.listener.is_empty() {
        cfg.listeners.clear();
    }
    for (i, l) in root.listener.iter().enumerate() {
        let k = |f: &str| format!("listener[{i}].{f}");
        let addr = ctx.addr(&l.addr, &k("addr"))?;
        if cfg.listeners.iter().any(|o| o.addr == addr) {
            return ctx.fail(&l.addr, &k("addr"), format!("{addr} is listed twice"));
        }
        let tls = match (&l.tls_cert, &l.tls_key) {
            (None, None) => None,
            (Some(c), Some(key)) => Some(TlsServerConfig {
                cert: ctx.path(c, &k("tls_cert"))?,
                key: ctx.path(key, &k("tls_key"))?,
            }),
            (Some(c), None) => {
                return ctx.fail(
                    c,
                    &k("tls_cert"),
                    "tls_cert needs tls_key in the same listener",
                )
            }
            (None, Some(key)) => {
                return ctx.fail(
                    key,
                    &k("tls_key"),
                    "tls_key needs tls_cert in the same listener",
                )
            }
        };
        let max_connections = match &l.max_connections {
            Some(v) => to_usize(ctx.count(v, &k("max_connections"), 1, 10_000_000)?),
            None => DEFAULT_MAX_CONNECTIONS,
        };
        cfg.listeners.push(ListenerConfig {
            addr,
            tls,
            max_connections,
        });
    }

    // Admin.
    if let Some(a) = &root.admin {
        let addr = ctx.addr(&a.addr, "admin.addr")?;
        if cfg.listeners.iter().any(|l| l.addr == addr) {
            return ctx.fail(
                &a.addr,
                "admin.addr",
                format!("{addr} is also a client listener"),
            );
        }
        cfg.admin = Some(addr);
    }

    // Groups (before routes, which refer to them).
    for (i, g) in root.group.iter().enumerate() {
        let key = format!("group[{i}].name");
        let name = ctx.string(&g.name, &key)?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return ctx.fail(
                &g.name,
                &key,
                format!("invalid group name {name:?} (use letters, digits, '-', '_', '.')"),
            );
        }
        if cfg.groups.iter().any(|o| o.name == name) {
            return ctx.fail(&g.name, &key, format!("group `{name}` is defined twice"));
        }
        if g.upstream.is_empty() {
            return ctx.fail(
                &g.name,
                &key,
                format!("group `{name}` has no upstream (add a [[group.upstream]] with a url)"),
            );
        }
        let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(g.upstream.len());
        for (j, u) in g.upstream.iter().enumerate() {
            let k = |f: &str| format!("group[{i}].upstream[{j}].{f}");
            let raw = ctx.string(&u.url, &k("url"))?;
            let url = UpstreamUrl::parse(raw.trim()).or_else(|m| ctx.fail(&u.url, &k("url"), m))?;
            if upstreams.iter().any(|o| o.url == url) {
                return ctx.fail(
                    &u.url,
                    &k("url"),
                    format!("{url} is listed twice in group `{name}` (use weight instead)"),
                );
            }
            let weight = match &u.weight {
                Some(w) => to_u32(ctx.count(w, &k("weight"), 1, 10_000)?),
                None => 1,
            };
            let ca_file = match &u.ca_file {
                Some(c) => {
                    if !url.tls {
                        return ctx.fail(
                            c,
                            &k("ca_file"),
                            "ca_file is only used with an https:// url",
                        );
                    }
                    Some(ctx.path(c, &k("ca_file"))?)
                }
                None => None,
            };
            upstreams.push(UpstreamConfig {
                url,
                weight,
                ca_file,
            });
        }
        cfg.groups.push(UpstreamGroup { name, upstreams });
    }

    // Routes.
    for (i, r) in root.route.iter().enumerate() {
        let k = |f: &str| format!("route[{i}].{f}");
        let prefix = ctx.string(&r.prefix, &k("prefix"))?;
        if !prefix.starts_with('/') {
            return ctx.fail(
                &r.prefix,
                &k("prefix"),
                format!("prefix {prefix:?} must start with '/'"),
            );
        }
        if prefix
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
        {
            return ctx.fail(
                &r.prefix,
                &k("prefix"),
                format!("prefix {prefix:?} may not hold spaces, control characters, '?' or '#'"),
            );
        }
        if cfg.routes.iter().any(|o| o.prefix == prefix) {
            return ctx.fail(
                &r.prefix,
                &k("prefix"),
                format!("prefix {prefix:?} is routed twice"),
            );
        }
        let group = ctx.string(&r.group, &k("group"))?;
        if !cfg.groups.iter().any(|g| g.name == group) {
            let known: Vec<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
            return ctx.fail(
                &r.group,
                &k("group"),
                format!(
                    "no group named `{group}` (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        let rewrite_prefix = match &r.rewrite_prefix {
            Some(v) => {
                let s = ctx.string(v, &k("rewrite_prefix"))?;
                if !s.is_empty() && (!s.starts_with('/') || s.ends_with('/')) {
                    return ctx.fail(
                        v,
                        &k("rewrite_prefix"),
                        format!("{s:?} must be empty, or start with '/' and not end with '/'"),
                    );
                }
                if s.bytes()
                    .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
                {
                    return ctx.fail(
                        v,
                        &k("rewrite_prefix"),
                        format!("{s:?} may not hold spaces, control characters, '?' or '#'"),
                    );
                }
                s
            }
            None => String::new(),
        };
        let strip_prefix = match &r.strip_prefix {
            Some(v) => {
                let strip = *v.get_ref();
                if !strip && !rewrite_prefix.is_empty() {
                    return ctx.fail(v, &k("strip_prefix"), "rewrite_prefix replaces the stripped prefix, so strip_prefix cannot be false");
                }
                strip
            }
            None => prefix != "/",
        };
        let mut inject_headers: Vec<(String, String)> = Vec::with_capacity(r.inject_headers.len());
        for (name, value) in &r.inject_headers {
            let key = format!("route[{i}].inject_headers.{name}");
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return ctx.fail(value, &key, format!("{name:?} is not a valid header name"));
            }
            let lower = name.to_ascii_lowercase();
            if NOT_INJECTABLE.contains(&lower.as_str()) {
                return ctx.fail(
                    value,
                    &key,
                    format!("`{name}` is set by chunkgate itself and cannot be injected"),
                );
            }
            if inject_headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                return ctx.fail(value, &key, format!("header `{name}` is injected twice"));
            }
            let v = ctx.string(value, &key)?;
            if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                // The value itself is never shown: it is usually a secret.
                return ctx.fail(
                    value,
                    &key,
                    "value holds a control character (CR, LF, NUL ...)",
                );
            }
            inject_headers.push((name.clone(), v.trim_matches([' ', '\t']).to_string()));
        }
        let mut require_bearer = Vec::new();
        if let Some(list) = &r.require_bearer {
            if list.get_ref().is_empty() {
                return ctx.fail(
                    list,
                    &k("require_bearer"),
                    "empty token list (remove the key to allow requests without a token)",
                );
            }
            for (j, t) in list.get_ref().iter().enumerate() {
                let key = format!("route[{i}].require_bearer[{j}]");
                let token = ctx.string(t, &key)?;
                if token.is_empty() {
                    return ctx.fail(t, &key, "empty token (is its environment variable empty?)");
                }
                if !is_token68(&token) {
                    return ctx.fail(
                        t,
                        &key,
                        "token holds characters a bearer token cannot have (allowed: letters, digits, -._~+/ and trailing =)",
                    );
                }
                require_bearer.push(token);
            }
        }
        cfg.routes.push(RouteConfig {
            prefix,
            group,
            strip_prefix,
            rewrite_prefix,
            inject_headers,
            require_bearer,
        });
    }

    // Limits.
    if let Some(l) = &root.limits {
        let mut chunk = cfg.limits.chunk;
        if let Some(v) = &l.max_chunk_size {
            let n = ctx.size(v, "limits.max_chunk_size")?;
            if n > MAX_CHUNK_SIZE_CEILING {
                return ctx.fail(
                    v,
                    "limits.max_chunk_size",
                    "must be at most 1GiB (a stream holds one whole chunk in memory)",
                );
            }
            chunk = chunk.max_chunk_size(n);
        }
        if let Some(v) = &l.max_size_line {
            chunk = chunk.max_size_line(ctx.size_usize(v, "limits.max_size_line")?);
        }
        if let Some(v) = &l.max_extension_bytes {
            chunk = chunk.max_extension_bytes(ctx.size(v, "limits.max_extension_bytes")?);
        }
        if let Some(v) = &l.max_trailer_bytes {
            chunk = chunk.max_trailer_bytes(ctx.size_usize(v, "limits.max_trailer_bytes")?);
        }
        if let Some(v) = &l.max_trailer_fields {
            chunk = chunk.max_trailer_fields(to_usize(ctx.count(
                v,
                "limits.max_trailer_fields",
                1,
                10_000,
            )?));
        }
        if let Some(v) = &l.max_body_size {
            let n = ctx.size(v, "limits.max_body_size")?;
            if n < chunk.chunk_size_limit() {
                return ctx.fail(
                    v,
                    "limits.max_body_size",
                    "must be at least limits.max_chunk_size",
                );
            }
            chunk = chunk.max_body_size(Some(n));
        }
        cfg.limits.chunk = chunk;
        let head = &mut cfg.limits.head;
        if let Some(v) = &l.max_head_bytes {
            head.max_head_bytes = ctx.size_usize(v, "limits.max_head_bytes")?;
        }
        if let Some(v) = &l.max_headers {
            head.max_headers = to_usize(ctx.count(v, "limits.max_headers", 1, 10_000)?);
        }
        if let Some(v) = &l.max_request_line {
            head.max_request_line = ctx.size_usize(v, "limits.max_request_line")?;
            if head.max_request_line > head.max_head_bytes {
                return ctx.fail(
                    v,
                    "limits.max_request_line",
                    "must not exceed limits.max_head_bytes",
                );
            }
        }
        if let Some(v) = &l.max_request_body {
            cfg.limits.max_request_body = Some(ctx.size(v, "limits.max_request_body")?);
        }
    }

    // Timeouts.
    if let Some(t) = &root.timeouts {
        let d = &mut cfg.timeouts;
        let fields: [(&Option<S<toml::Value>>, &mut Duration, &str); 7] = [
            (&t.connect, &mut d.connect, "timeouts.connect"),
            (
                &t.tls_handshake,
                &mut d.tls_handshake,
                "timeouts.tls_handshake",
            ),
            (
                &t.response_head,
                &mut d.response_head,
                "timeouts.response_head",
            ),
            (&t.stream_idle, &mut d.stream_idle, "timeouts.stream_idle"),
            (&t.client_head, &mut d.client_head, "timeouts.client_head"),
            (&t.client_idle, &mut d.client_idle, "timeouts.client_idle"),
            (
                &t.client_write_stall,
                &mut d.client_write_stall,
                "timeouts.client_write_stall",
            ),
        ];
        for (src, dst, key) in fields {
            if let Some(v) = src {
                *dst = ctx.duration(v, key)?;
            }
        }
        if let Some(v) = &t.total {
            d.total = Some(ctx.duration(v, "timeouts.total")?);
        }
    }

    // Pool.
    if let Some(p) = &root.pool {
        if let Some(v) = &p.max_idle_per_upstream {
            cfg.pool.max_idle_per_upstream =
                to_usize(ctx.count(v, "pool.max_idle_per_upstream", 0, 1_000_000)?);
        }
        if let Some(v) = &p.idle_timeout {
            cfg.pool.idle_timeout = ctx.duration(v, "pool.idle_timeout")?;
        }
        if let Some(v) = &p.max_connections_per_upstream {
            cfg.pool.max_connections_per_upstream =
                to_usize(ctx.count(v, "pool.max_connections_per_upstream", 1, 1_000_000)?);
        }
        if cfg.pool.max_idle_per_upstream > cfg.pool.max_connections_per_upstream {
            let span = p
                .max_idle_per_upstream
                .as_ref()
                .map(|v| v.span())
                .or(p.max_connections_per_upstream.as_ref().map(|v| v.span()))
                .unwrap_or(0..0);
            return Err(ctx.err(
                span,
                "pool.max_idle_per_upstream",
                "must not exceed pool.max_connections_per_upstream",
            ));
        }
    }

    // Retry.
    if let Some(r) = &root.retry {
        let c = &mut cfg.retry;
        if let Some(v) = &r.max_attempts {
            c.max_attempts = to_u32(ctx.count(v, "retry.max_attempts", 1, 10)?);
        }
        if let Some(v) = &r.base {
            c.base = ctx.duration(v, "retry.base")?;
        }
        if let Some(v) = &r.cap {
            c.cap = ctx.duration(v, "retry.cap")?;
        }
        if c.base > c.cap {
            let v = r.base.as_ref().or(r.cap.as_ref());
            if let Some(v) = v {
                return ctx.fail(
                    v,
                    if r.base.is_some() {
                        "retry.base"
                    } else {
                        "retry.cap"
                    },
                    "retry.base must not exceed retry.cap",
                );
            }
        }
        if let Some(list) = &r.on_status {
            let mut statuses = Vec::with_capacity(list.get_ref().len());
            for (j, s) in list.get_ref().iter().enumerate() {
                let key = format!("retry.on_status[{j}]");
                let n = ctx.count(s, &key, 400, 599)?;
                let n = u16::try_from(n).unwrap_or(u16::MAX);
                if statuses.contains(&n) {
                    return ctx.fail(s, &key, format!("status {n} is listed twice"));
                }
                statuses.push(n);
            }
            c.on_status = statuses;
        }
        if let Some(v) = &r.on_connect_error {
            c.on_connect_error = *v.get_ref();
        }
        if let Some(v) = &r.max_replay_body {
            // Zero is allowed here: it turns off retries of requests with a body.
            c.max_replay_body = match v.get_ref() {
                toml::Value::Integer(0) => 0,
                _ => ctx.size_usize(v, "retry.max_replay_body")?,
            };
        }
        if let Some(v) = &r.budget_ratio {
            let x = *v.get_ref();
            if !(0.0..=1.0).contains(&x) {
                return ctx.fail(
                    v,
                    "retry.budget_ratio",
                    format!("must be between 0 and 1, found {x}"),
                );
            }
            c.budget_ratio = x;
        }
        if let Some(v) = &r.budget_min_per_sec {
            c.budget_min_per_sec =
                to_u32(ctx.count(v, "retry.budget_min_per_sec", 0, 1_000_000)?);
        }
        if let Some(v) = &r.deadline {
            c.deadline = ctx.duration(v, "retry.deadline")?;
        }
    }

    // Breaker.
    if let Some(b) = &root.breaker {
        let c = &mut cfg.breaker;
        if let Some(v) = &b.consecutive_failures {
            c.consecutive_failures =
                to_u32(ctx.count(v, "breaker.consecutive_failures", 0, 1_000_000)?);
        }
        if let Some(v) = &b.failure_rate {
            let x = *v.get_ref();
            if !(x > 0.0 && x <= 1.0) {
                return ctx.fail(
                    v,
                    "breaker.failure_rate",
                    format!("must be above 0 and at most 1, found {x}"),
                );
            }
            c.failure_rate = x;
        }
        if let Some(v) = &b.min_requests {
            c.min_requests = to_u32(ctx.count(v, "breaker.min_requests", 1, 1_000_000)?);
        }
        if let Some(v) = &b.window {
            c.window = ctx.duration(v, "breaker.window")?;
        }
        if let Some(v) = &b.open_for {
            c.open_for = ctx.duration(v, "breaker.open_for")?;
        }
        if let Some(v) = &b.half_open_probes {
            c.half_open_probes = to_u32(ctx.count(v, "breaker.half_open_probes", 1, 1_000)?);
        }
    }

    // Log.
    if let Some(l) = &root.log {
        if let Some(v) = &l.format {
            cfg.log.format = match ctx.string(v, "log.format")?.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                other => {
                    return ctx.fail(
                        v,
                        "log.format",
                        format!("{other:?} is not a log format (use \"pretty\" or \"json\")"),
                    )
                }
            };
        }
        if let Some(v) = &l.filter {
            let filter = ctx.string(v, "log.filter")?;
            check_log_filter(&filter).or_else(|m| ctx.fail(v, "log.filter", m))?;
            cfg.log.filter = filter;
        }
        if let Some(v) = &l.access_log {
            cfg.log.access_log = *v.get_ref();
        }
    }

    if let Some(v) = &root.drain_timeout {
        cfg.drain_timeout = ctx.duration(v, "drain_timeout")?;
    }
    Ok(cfg)
}

fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))
}

/// Default for `listener.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default client listener when neither the file nor `--listen` names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

// ---------------------------------------------------------------------------------------------
// Whole-configuration checks
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Checks that hold for the merged configuration (file and flags): at least one route,
    /// routes naming existing groups, groups with upstreams. `origin` names the source in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::whole(origin, "no listener".to_string()));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::whole(
                origin,
                "no route: add a [[route]] with a [[group]], or pass --upstream".to_string(),
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !self.groups.iter().any(|g| g.name == r.group) {
                return Err(ConfigError::key(
                    origin,
                    None,
                    format!("route[{i}].group"),
                    format!("no group named `{}`", r.group),
                ));
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            if g.upstreams.is_empty() {
                return Err(ConfigError::key(
                    origin,
                    None,
                    format!("group[{i}]"),
                    format!("group `{}` has no upstream", g.name),
                ));
            }
        }
        Ok(())
    }

    /// Checks that read files: TLS certificate and key load and match, CA files parse.
    pub fn check_files(&self, origin: &str) -> Result<(), ConfigError> {
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls {
                crate::tls_server::server_config(&tls.cert, &tls.key).map_err(|m| {
                    ConfigError::key(origin, None, format!("listener[{i}].tls_cert"), m)
                })?;
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            for (j, u) in g.upstreams.iter().enumerate() {
                if let Some(ca) = &u.ca_file {
                    let key = format!("group[{i}].upstream[{j}].ca_file");
                    crate::tls_server::load_certs(ca)
                        .map_err(|m| ConfigError::key(origin, None, key, m))?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Command-line flags
// ---------------------------------------------------------------------------------------------

/// Arguments of `chunkgate serve`. Every setting is optional: a flag that is given overrides
/// the configuration file, which overrides the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see chunkgate.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client listener address; replaces the file's listeners [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Upstream URL (`http://` or `https://`, optional path prefix); may repeat. Replaces the
    /// upstreams of the file's only group, or creates group `default` routed at `/`.
    #[arg(long, value_name = "URL")]
    pub upstream: Vec<String>,
    /// Extra CA certificate (PEM) trusted for every https upstream without its own ca_file.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Admin listener for /healthz, /readyz and /metrics.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, `RUST_LOG` syntax (e.g. `info,chunkgate=debug`); `RUST_LOG` overrides it.
    #[arg(long, value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// Do not write access-log lines.
    #[arg(long)]
    pub no_access_log: bool,
    /// TLS certificate chain (PEM) for the client listeners; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the client listeners; needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most client connections at once per listener.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long in-flight exchanges may run after SIGTERM (e.g. `30s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Largest chunk accepted (bytes or e.g. `1MiB`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_chunk_size: Option<u64>,
    /// Upstream time-to-first-byte timeout (e.g. `120s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub response_head_timeout: Option<Duration>,
    /// Longest gap between two body reads (e.g. `120s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// Total attempts per request, including the first (1 disables retries).
    #[arg(long, value_name = "N")]
    pub retry_attempts: Option<u32>,
    /// Worker threads of the runtime (default: one per CPU). `1` runs everything on one
    /// thread, like a single-worker nginx or HAProxy.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

/// Load the configuration for `serve`: the `--config` file (if any), `${VAR}` expanded from
/// the process environment, then the flags on top, then the whole-configuration checks.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    load_with_env(args, &process_env)
}

/// [`load`] with an explicit environment lookup.
pub fn load_with_env(
    args: &ServeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let (mut cfg, origin) = match &args.config {
        Some(path) => (
            Config::from_file_with_env(path, env)?,
            path.display().to_string(),
        ),
        None => {
            let mut c = Config::simple(SocketAddr::from(([127, 0, 0, 1], 8080)), Vec::new());
            c.routes.clear();
            c.groups.clear();
            (c, "command line".to_string())
        }
    };
    apply_flags(&mut cfg, args)?;
    cfg.validate(&origin)?;
    Ok(cfg)
}

fn apply_flags(cfg: &mut Config, args: &ServeArgs) -> Result<(), ConfigError> {
    if let Some(addr) = args.listen {
        let max_connections = cfg
            .listeners
            .first()
            .map_or(DEFAULT_MAX_CONNECTIONS, |l| l.max_connections);
        cfg.listeners = vec![ListenerConfig {
            addr,
            tls: None,
            max_connections,
        }];
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        for l in &mut cfg.listeners {
            l.tls = Some(TlsServerConfig {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
    } else if args.tls_cert.is_some() != args.tls_key.is_some() {
        return Err(ConfigError::flag(
            "--tls-cert",
            "--tls-cert and --tls-key go together".to_string(),
        ));
    }
    if let Some(n) = args.max_connections {
        if n == 0 {
            return Err(ConfigError::flag(
                "--max-connections",
                "must be greater than zero".to_string(),
            ));
        }
        for l in &mut cfg.listeners {
            l.max_connections = n;
        }
    }
    if let Some(addr) = args.admin {
        cfg.admin = Some(addr);
    }
    if let Some(admin) = cfg.admin {
        if cfg.listeners.iter().any(|l| l.addr == admin) {
            return Err(ConfigError::flag(
                "--admin",
                format!("{admin} is also a client listener"),
            ));
        }
    }
    if !args.upstream.is_empty() {
        let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(args.upstream.len());
        for raw in &args.upstream {
            let url =
                UpstreamUrl::parse(raw.trim()).map_err(|m| ConfigError::flag("--upstream", m))?;
            if upstreams.iter().any(|u| u.url == url) {
                return Err(ConfigError::flag(
                    "--upstream",
                    format!("{url} is given twice"),
                ));
            }
            upstreams.push(UpstreamConfig {
                url,
                weight: 1,
                ca_file: None,
            });
        }
        match cfg.groups.len() {
            0 => {
                cfg.groups.push(UpstreamGroup {
                    name: "default".to_string(),
                    upstreams,
                });
            }
            1 => cfg.groups[0].upstreams = upstreams,
            n => {
                return Err(ConfigError::flag(
                    "--upstream",
                    format!("the configuration file defines {n} upstream groups; set their upstreams in the file"),
                ))
            }
        }
        if cfg.routes.is_empty() {
            cfg.routes.push(RouteConfig {
                prefix: "/".to_string(),
                group: cfg.groups[0].name.clone(),
                strip_prefix: false,
                rewrite_prefix: String::new(),
                inject_headers: Vec::new(),
                require_bearer: Vec::new(),
            });
        }
    }
    if let Some(ca) = &args.upstream_ca {
        let mut used = false;
        for u in cfg.groups.iter_mut().flat_map(|g| g.upstreams.iter_mut()) {
            if u.url.tls && u.ca_file.is_none() {
                u.ca_file = Some(ca.clone());
                used = true;
            }
        }
        if !used {
            return Err(ConfigError::flag(
                "--upstream-ca",
                "no https upstream without its own ca_file to apply it to".to_string(),
            ));
        }
    }
    if let Some(format) = args.log_format {
        cfg.log.format = format;
    }
    if let Some(filter) = &args.log_filter {
        check_log_filter(filter).map_err(|m| ConfigError::flag("--log-filter", m))?;
        cfg.log.filter = filter.clone();
    }
    if args.no_access_log {
        cfg.log.access_log = false;
    }
    if let Some(d) = args.drain_timeout {
        if d.is_zero() {
            return Err(ConfigError::flag(
                "--drain-timeout",
                "must be greater than zero".to_string(),
            ));
        }
        cfg.drain_timeout = d;
    }
    if let Some(n) = args.max_chunk_size {
        if n == 0 {
            return Err(ConfigError::flag(
                "--max-chunk-size",
                "must be greater than zero".to_string(),
            ));
        }
        if n > MAX_CHUNK_SIZE_CEILING {
            return Err(ConfigError::flag(
                "--max-chunk-size",
                "must be at most 1GiB (a stream holds one whole chunk in memory)".to_string(),
            ));
        }
        if cfg.limits.chunk.body_size_limit().is_some_and(|b| b < n) {
            return Err(ConfigError::flag(
                "--max-chunk-size",
                "must not exceed limits.max_body_size".to_string(),
            ));
        }
        cfg.limits.chunk = cfg.limits.chunk.max_chunk_size(n);
    }
    if let Some(d) = args.response_head_timeout {
        if d.is_zero() {
            return Err(ConfigError::flag(
                "--response-head-timeout",
                "must be greater than zero".to_string(),
            ));
        }
        cfg.timeouts.response_head = d;
    }
    if let Some(d) = args.stream_idle_timeout {
        if d.is_zero() {
            return Err(ConfigError::flag(
                "--stream-idle-timeout",
                "must be greater than zero".to_string(),
            ));
        }
        cfg.timeouts.stream_idle = d;
    }
    if let Some(n) = args.retry_attempts {
        if !(1..=10).contains(&n) {
            return Err(ConfigError::flag(
                "--retry-attempts",
                "must be between 1 and 10".to_string(),
            ));
        }
        cfg.retry.max_attempts = n;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The effective configuration, printed
// ---------------------------------------------------------------------------------------------

/// What [`Config::to_toml`] prints for a secret.
pub const REDACTED: &str = "<redacted>";

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn q_path(p: &std::path::Path) -> String {
    q(&p.display().to_string())
}

fn d(x: Duration) -> String {
    q(&format_duration(x))
}

impl Config {
    /// The configuration as a TOML file in the schema [`Config::from_toml_str`] reads, every
    /// setting written out. With `redact`, injected header values and bearer tokens are
    /// replaced by [`REDACTED`].
    pub fn to_toml(&self, redact: bool) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let secret = |s: &str| if redact { q(REDACTED) } else { q(s) };
        let _ = writeln!(o, "drain_timeout = {}", d(self.drain_timeout));
        for l in &self.listeners {
            let _ = writeln!(o, "\n[[listener]]\naddr = {}", q(&l.addr.to_string()));
            if let Some(tls) = &l.tls {
                let _ = writeln!(
                    o,
                    "tls_cert = {}\ntls_key = {}",
                    q_path(&tls.cert),
                    q_path(&tls.key)
                );
            }
            let _ = writeln!(o, "max_connections = {}", l.max_connections);
        }
        if let Some(admin) = self.admin {
            let _ = writeln!(o, "\n[admin]\naddr = {}", q(&admin.to_string()));
        }
        for r in &self.routes {
            let _ = writeln!(
                o,
                "\n[[route]]\nprefix = {}\ngroup = {}",
                q(&r.prefix),
                q(&r.group)
            );
            let _ = writeln!(
                o,
                "strip_prefix = {}\nrewrite_prefix = {}",
                r.strip_prefix,
                q(&r.rewrite_prefix)
            );
            if !r.inject_headers.is_empty() {
                let fields: Vec<String> = r
                    .inject_headers
                    .iter()
                    .map(|(n, v)| format!("{} = {}", q(n), secret(v)))
                    .collect();
                let _ = writeln!(o, "inject_headers = {{ {} }}", fields.join(", "));
            }
            if !r.require_bearer.is_empty() {
                let tokens: Vec<String> = r.require_bearer.iter().map(|t| secret(t)).collect();
                let _ = writeln!(o, "require_bearer = [{}]", tokens.join(", "));
            }
        }
        for g in &self.groups {
            let _ = writeln!(o, "\n[[group]]\nname = {}", q(&g.name));
            for u in &g.upstreams {
                let _ = writeln!(
                    o,
                    "[[group.upstream]]\nurl = {}\nweight = {}",
                    q(&u.url.to_string()),
                    u.weight
                );
                if let Some(ca) = &u.ca_file {
                    let _ = writeln!(o, "ca_file = {}", q_path(ca));
                }
            }
        }
        let c = &self.limits.chunk;
        let h = &self.limits.head;
        let _ = writeln!(o, "\n[limits]");
        let _ = writeln!(o, "max_chunk_size = {}", format_size(c.chunk_size_limit()));
        let _ = writeln!(
            o,
            "max_size_line = {}",
            format_size(c.size_line_limit() as u64)
        );
        let _ = writeln!(
            o,
            "max_extension_bytes = {}",
            format_size(c.extension_bytes_limit())
        );
        let _ = writeln!(
            o,
            "max_trailer_bytes = {}",
            format_size(c.trailer_bytes_limit() as u64)
        );
        let _ = writeln!(o, "max_trailer_fields = {}", c.trailer_fields_limit());
        match c.body_size_limit() {
            Some(n) => {
                let _ = writeln!(o, "max_body_size = {}", format_size(n));
            }
            None => o.push_str("# max_body_size: unlimited\n"),
        }
        let _ = writeln!(
            o,
            "max_head_bytes = {}",
            format_size(h.max_head_bytes as u64)
        );
        let _ = writeln!(o, "max_headers = {}", h.max_headers);
        let _ = writeln!(
            o,
            "max_request_line = {}",
            format_size(h.max_request_line as u64)
        );
        match self.limits.max_request_body {
            Some(n) => {
                let _ = writeln!(o, "max_request_body = {}", format_size(n));
            }
            None => o.push_str("# max_request_body: unlimited\n"),
        }
        let t = &self.timeouts;
        let _ = writeln!(o, "\n[timeouts]");
        let _ = writeln!(
            o,
            "connect = {}\ntls_handshake = {}",
            d(t.connect),
            d(t.tls_handshake)
        );
        let _ = writeln!(
            o,
            "response_head = {}\nstream_idle = {}",
            d(t.response_head),
            d(t.stream_idle)
        );
        match t.total {
            Some(x) => {
                let _ = writeln!(o, "total = {}", d(x));
            }
            None => o.push_str("# total: none\n"),
        }
        let _ = writeln!(
            o,
            "client_head = {}\nclient_idle = {}",
            d(t.client_head),
            d(t.client_idle)
        );
        let _ = writeln!(o, "client_write_stall = {}", d(t.client_write_stall));
        let p = &self.pool;
        let _ = writeln!(o, "\n[pool]\nmax_idle_per_upstream = {}\nidle_timeout = {}\nmax_connections_per_upstream = {}",
            p.max_idle_per_upstream, d(p.idle_timeout), p.max_connections_per_upstream);
        let r = &self.retry;
        let statuses: Vec<String> = r.on_status.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            o,
            "\n[retry]\nmax_attempts = {}\nbase = {}\ncap = {}",
            r.max_attempts,
            d(r.base),
            d(r.cap)
        );
        let _ = writeln!(
            o,
            "on_status = [{}]\non_connect_error = {}",
            statuses.join(", "),
            r.on_connect_error
        );
        let _ = writeln!(
            o,
            "max_replay_body = {}",
            format_size(r.max_replay_body as u64)
        );
        let _ = writeln!(
            o,
            "budget_ratio = {:?}\nbudget_min_per_sec = {}\ndeadline = {}",
            r.budget_ratio,
            r.budget_min_per_sec,
            d(r.deadline)
        );
        let b = &self.breaker;
        let _ = writeln!(
            o,
            "\n[breaker]\nconsecutive_failures = {}\nfailure_rate = {:?}\nmin_requests = {}",
            b.consecutive_failures, b.failure_rate, b.min_requests
        );
        let _ = writeln!(
            o,
            "window = {}\nopen_for = {}\nhalf_open_probes = {}",
            d(b.window),
            d(b.open_for),
            b.half_open_probes
        );
        let format = match self.log.format {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        };
        let _ = writeln!(
            o,
            "\n[log]\nformat = {}\nfilter = {}\naccess_log = {}",
            q(format),
            q(&self.log.filter),
            self.log.access_log
        );
        o
    }
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Arguments of `chunkgate check-config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check.
    pub file: PathBuf,
    /// Print nothing on success; only the exit status tells.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `chunkgate check-config`: validate a file (certificates and CA files included) and print
/// the effective configuration, secrets redacted. Exit status 0 when valid, 1 otherwise.
pub fn check_config_main(args: CheckConfigArgs) -> std::process::ExitCode {
    match check_config(&args.file) {
        Ok((effective, notes)) => {
            if !args.quiet {
                print!("{effective}");
                for n in notes {
                    eprintln!("note: {n}");
                }
                eprintln!("{}: ok", args.file.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Validate a configuration file the way `check-config` does. Returns the redacted effective
/// configuration and notes worth showing (e.g. a file without routes, usable only with
/// `serve --upstream`).
pub fn check_config(path: &std::path::Path) -> Result<(String, Vec<String>), ConfigError> {
    let origin = path.display().to_string();
    let cfg = Config::from_file(path)?;
    cfg.check_files(&origin)?;
    let mut notes = Vec::new();
    if cfg.routes.is_empty() {
        notes.push("no [[route]]: `serve` needs --upstream with this file".to_string());
    } else {
        cfg.validate(&origin)?;
    }
    for g in &cfg.groups {
        if !cfg.routes.iter().any(|r| r.group == g.name) {
            notes.push(format!("group `{}` is not used by any route", g.name));
        }
    }
    Ok((cfg.to_toml(true), notes))
}
