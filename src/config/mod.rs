//! Configuration: the validated, typed settings every part of chunkgate reads.
//!
//! The types in this module are the contract between the TOML file / command-line flags and
//! the running proxy. Every scalar setting is declared once, in `settings.rs` (key, kind with
//! its bounds, default, doc line, optional flag); the file reader, the flags, the
//! `check-config` output and the reference ([`reference`], the README's table) all follow
//! from that declaration. The list sections (listeners, routes, groups) are read by hand.
//!
//! Errors name the file, the line and the dotted key:
//!
//! ```
//! use chunkgate::config::Config;
//!
//! let cfg = Config::from_toml_str("[retry]\nmax_attempts = 2\n", "inline.toml").unwrap();
//! assert_eq!(cfg.retry.max_attempts, 2);
//! let err = Config::from_toml_str("[retry]\nmax_attempts = 0\n", "inline.toml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "inline.toml:2: key `retry.max_attempts`: must be between 1 and 10, found 0"
//! );
//! ```
//!
//! Modules: `settings` (the declarations), `declare` (the `settings!` macro and the `Setting`
//! view of a declaration), `kinds` (value kinds: durations, sizes, counts ...), `file` (TOML
//! reading), `flags` (`serve` flags), `render` (`check-config`, the reference), `units`,
//! `url`, `error`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::chunked::Limits as ChunkLimits;
use crate::codec::head::HeadLimits;

mod declare;
mod error;
mod file;
mod flags;
mod kinds;
mod render;
mod settings;
mod sinks;
mod units;
mod url;

pub use error::ConfigError;
pub use flags::{ServeArgs, SettingFlags};
pub use render::{check_config, check_config_main, reference, CheckConfigArgs, REDACTED};
pub use settings::{BreakerConfig, LogConfig, MetricsConfig, PoolConfig, RetryConfig, Timeouts};
pub use sinks::{RouteCapture, SinkConfig, SinkKind, WebhookConfig};
pub use units::{expand_env, format_duration, parse_duration, parse_size};
pub use url::UpstreamUrl;

use units::process_env;

/// The largest `limits.max_chunk_size` accepted: a stream buffers one whole chunk, so this
/// bounds the memory a single peer can make one stream hold.
pub const MAX_CHUNK_SIZE_CEILING: u64 = 1 << 30;

/// Default for `listener.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default client listener when neither the file nor `--listen` names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    /// Metrics of the admin port.
    pub metrics: MetricsConfig,
    /// Graceful shutdown: how long in-flight exchanges may run after SIGTERM.
    pub drain_timeout: Duration,
    /// Capture sinks, referenced by name from routes.
    pub sinks: Vec<SinkConfig>,
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
    /// How the route's answers are framed and read as LLM streams.
    pub stream: StreamRouteConfig,
    /// Completion capture: the sinks its records go to (none by default).
    pub capture: RouteCapture,
}

/// How a route forwards and reads LLM streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRouteConfig {
    /// Chunk-exact (default) or one whole event per chunk.
    pub align: Align,
    /// Longest event held whole when aligning.
    pub max_event: usize,
    /// Read each answer with the stream tap (model, usage, text, first token).
    pub tap: bool,
    /// Ask OpenAI chat/completions streams for usage and hide the usage-only event.
    pub inject_include_usage: bool,
    /// SSE comments sent before the first upstream byte of a streaming request.
    pub keepalive: Option<Duration>,
}

impl StreamRouteConfig {
    /// Default `max_event`: 1 MiB.
    pub const DEFAULT_MAX_EVENT: usize = 1 << 20;
    /// Shortest and longest keepalive interval.
    pub const KEEPALIVE_RANGE: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(3600));
}

impl Default for StreamRouteConfig {
    fn default() -> Self {
        StreamRouteConfig {
            align: Align::Chunks,
            max_event: Self::DEFAULT_MAX_EVENT,
            tap: true,
            inject_include_usage: false,
            keepalive: None,
        }
    }
}

/// How a route frames the answers it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Every upstream chunk leaves as it came (chunk-exact).
    Chunks,
    /// `text/event-stream`: one whole SSE event per chunk; NDJSON: one line per chunk; other
    /// types chunk-exact.
    Events,
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
    /// Headers set on requests sent to this upstream, on top of the route's: one of the same
    /// name replaces the route's (values may hold secrets; never logged).
    pub inject_headers: Vec<(String, String)>,
    /// Replaces the route's `strip_prefix` for this upstream, when set.
    pub strip_prefix: Option<bool>,
    /// Replaces the route's `rewrite_prefix` for this upstream, when set.
    pub rewrite_prefix: Option<String>,
}

impl UpstreamConfig {
    /// An upstream at `url` with weight 1 and nothing of its own (no CA file, no injected
    /// headers, the route's path rewriting).
    pub fn new(url: UpstreamUrl) -> UpstreamConfig {
        UpstreamConfig {
            url,
            weight: 1,
            ca_file: None,
            inject_headers: Vec::new(),
            strip_prefix: None,
            rewrite_prefix: None,
        }
    }
}

/// Protocol and size limits.
///
/// Its `Default` is the codec's; the declarations in `settings.rs` read their defaults from
/// the codec too, so the two agree.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Chunked-body limits (largest chunk, size line, extensions, trailers, body).
    pub chunk: ChunkLimits,
    /// Request and response head limits.
    pub head: HeadLimits,
    /// Largest request body accepted from a client, Content-Length or chunked (413).
    pub max_request_body: Option<u64>,
    /// Content-Length request bodies up to this size are read whole before an upstream
    /// connection is taken.
    pub buffer_request_body: u64,
    /// The slowest a client may send its request body, in bytes per second on average after
    /// `timeouts.client_body_grace` (0: no minimum).
    pub client_body_min_rate: u64,
}

impl Default for LimitsConfig {
    /// The declared defaults (a test checks the two agree).
    fn default() -> Self {
        LimitsConfig {
            chunk: ChunkLimits::default(),
            head: HeadLimits::default(),
            max_request_body: Some(32 << 20),
            buffer_request_body: 256 << 10,
            client_body_min_rate: 240,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// A configuration with one listener, one route `/` to one group of the given upstreams,
    /// and every other setting at its default.
    pub fn simple(listen: SocketAddr, upstreams: Vec<UpstreamUrl>) -> Config {
        let mut cfg = Config {
            listeners: vec![ListenerConfig {
                addr: listen,
                tls: None,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            }],
            admin: None,
            routes: vec![RouteConfig {
                prefix: "/".to_string(),
                group: "default".to_string(),
                strip_prefix: false,
                rewrite_prefix: String::new(),
                inject_headers: Vec::new(),
                require_bearer: Vec::new(),
                stream: StreamRouteConfig::default(),
                capture: RouteCapture::default(),
            }],
            groups: vec![UpstreamGroup {
                name: "default".to_string(),
                upstreams: upstreams.into_iter().map(UpstreamConfig::new).collect(),
            }],
            limits: LimitsConfig::default(),
            timeouts: Timeouts::default(),
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            // Set below, with the other settings declared outside a section struct.
            drain_timeout: Duration::ZERO,
            sinks: Vec::new(),
        };
        for setting in settings::SETTINGS {
            setting.reset(&mut cfg);
        }
        cfg
    }

    /// The defaults: one listener on [`DEFAULT_LISTEN`], no route, no group. What an empty
    /// file, or no file, gives.
    fn defaults() -> Config {
        // DEFAULT_LISTEN (tests/config.rs checks the two agree).
        let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let mut cfg = Config::simple(listen, Vec::new());
        cfg.routes.clear();
        cfg.groups.clear();
        cfg
    }
}

impl Config {
    /// Checks that hold for the merged configuration (file and flags): at least one route,
    /// routes naming existing groups, groups with upstreams. `origin` names the source in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::whole(origin, None, "no listener".to_string()));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::whole(
                origin,
                None,
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
        for (i, r) in self.routes.iter().enumerate() {
            for (j, name) in r.capture.sinks.iter().enumerate() {
                if !self.sinks.iter().any(|s| &s.name == name) {
                    return Err(ConfigError::key(
                        origin,
                        None,
                        format!("route[{i}].capture[{j}]"),
                        format!("no sink named `{name}`"),
                    ));
                }
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
        None => (Config::defaults(), "command line".to_string()),
    };
    flags::apply(&mut cfg, args)?;
    cfg.validate(&origin)?;
    Ok(cfg)
}
