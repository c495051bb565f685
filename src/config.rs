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

/// The whole, validated configuration of one chunkgate process.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// TLS termination, when set.
    pub tls: Option<TlsServerConfig>,
    /// Most client connections open at once on this listener (default 10,000).
    pub max_connections: usize,
}

/// PEM files for TLS termination.
#[derive(Debug, Clone)]
pub struct TlsServerConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A path-prefix route to an upstream group.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Path prefix matched against the request target, e.g. `/openai/` or `/`.
    pub prefix: String,
    /// Name of the upstream group.
    pub group: String,
    /// Strip `prefix` from the path before forwarding (default true for non-`/` prefixes).
    pub strip_prefix: bool,
    /// Replacement put in front of the path after stripping (default empty).
    pub rewrite_prefix: String,
    /// Headers set on every forwarded request (values may hold secrets; never logged).
    pub inject_headers: Vec<(String, String)>,
    /// If non-empty, requests must carry `Authorization: Bearer <one of these>` (401 otherwise).
    /// The inbound `Authorization` header is then not forwarded unless injected.
    pub require_bearer: Vec<String>,
}

/// A named set of upstreams that share a route's traffic.
#[derive(Debug, Clone)]
pub struct UpstreamGroup {
    pub name: String,
    pub upstreams: Vec<UpstreamConfig>,
}

/// One upstream server.
#[derive(Debug, Clone)]
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
    pub tls: bool,
    /// Host name or IP literal (without brackets), used for DNS and SNI.
    pub host: String,
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
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    /// Chunked-body limits (largest chunk, size line, extensions, trailers, body).
    pub chunk: ChunkLimits,
    /// Request and response head limits.
    pub head: HeadLimits,
    /// Largest Content-Length body accepted from a client (default unlimited: `None`).
    pub max_request_body: Option<u64>,
}

/// Timeouts. `None` means no timeout for the optional ones.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter (default `info`).
    pub filter: String,
    /// Write one access-log line per exchange (default true).
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
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

/// Arguments of `chunkgate serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Upstream URL (`http://` or `https://`, optional path prefix); may repeat.
    #[arg(long)]
    pub upstream: Vec<String>,
}

/// Arguments of `chunkgate check-config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check.
    pub file: PathBuf,
}

/// `chunkgate check-config`.
pub fn check_config_main(args: CheckConfigArgs) -> std::process::ExitCode {
    eprintln!(
        "check-config {}: not available in this build",
        args.file.display()
    );
    std::process::ExitCode::FAILURE
}
