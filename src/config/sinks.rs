//! Capture sinks: the `[[sink]]` list section, a route's `capture` and `capture_request`
//! keys, and the `serve` flags that make sinks for routes made from flags.
//!
//! A sink is where completion records go (see `crate::capture`): a JSON-lines file, an
//! SQLite database or an application's webhook. Capture is off unless a route names a sink.

use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{Ctx, Fields, Node, S};
use super::kinds::{Count, Kind, Size, Switch, Time};
use super::settings::SINK;
use super::units::quote;
use super::url::UpstreamUrl;
use super::Config;

/// Default for `sink.queue_records`: records waiting for one sink.
pub const DEFAULT_QUEUE_RECORDS: usize = 10_000;
/// Default for `sink.queue_bytes`: bytes of records waiting for one sink.
pub const DEFAULT_QUEUE_BYTES: u64 = 64 << 20;
/// Default for `sink.batch`: records written together (one write, one transaction).
pub const DEFAULT_BATCH: usize = 256;
/// Default for `sink.timeout`: one webhook delivery attempt.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `sink.retries`: webhook deliveries retried after the first attempt.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 5;
/// Default for `sink.max_in_flight`: webhook deliveries under way at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Default for `route.capture_request_max`: most request-body bytes a record keeps.
pub const DEFAULT_CAPTURE_REQUEST_MAX: usize = 64 << 10;

/// `sink.queue_records`.
pub(super) const QUEUE_RECORDS: Count<usize> = Count::between(1, 10_000_000);
/// `sink.queue_bytes`.
pub(super) const QUEUE_BYTES: Size<u64> = Size::at_most(16 << 30);
/// `sink.batch`.
pub(super) const BATCH: Count<usize> = Count::between(1, 100_000);
/// `sink.retries`.
pub(super) const RETRIES: Count<u32> = Count::between(0, 100);
/// `sink.max_in_flight`.
pub(super) const MAX_IN_FLIGHT: Count<usize> = Count::between(1, 10_000);
/// `route.capture_request_max`.
pub(super) const CAPTURE_REQUEST_MAX: Size<usize> = Size::at_most(16 << 20);

/// One named capture sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Name routes refer to.
    pub name: String,
    /// Where records go.
    pub kind: SinkKind,
    /// Most records waiting for this sink; a record past it is dropped and counted.
    pub queue_records: usize,
    /// Most bytes of records waiting for this sink; a record past it is dropped and counted.
    pub queue_bytes: u64,
    /// Most records written together (one write and flush, one transaction).
    pub batch: usize,
}

impl SinkConfig {
    /// A sink of `kind` named `name`, every other key at its default.
    pub fn new(name: &str, kind: SinkKind) -> SinkConfig {
        SinkConfig {
            name: name.to_string(),
            kind,
            queue_records: DEFAULT_QUEUE_RECORDS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            batch: DEFAULT_BATCH,
        }
    }
}

/// What a sink writes to.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// One JSON object per line, appended to `path`; reopened on SIGHUP.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// fsync after every batch.
        fsync: bool,
    },
    /// The `completions` table of an SQLite database (WAL mode).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A JSON POST per record to the application.
    Webhook(WebhookConfig),
}

impl SinkKind {
    /// The `kind` key's value.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Jsonl { .. } => "jsonl",
            SinkKind::Sqlite { .. } => "sqlite",
            SinkKind::Webhook(_) => "webhook",
        }
    }
}

/// Where and how a webhook sink delivers.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// `http://` (or `https://`) URL, path included.
    pub url: UpstreamUrl,
    /// Headers sent with every POST (values may hold secrets; never logged).
    pub headers: Vec<(String, String)>,
    /// One attempt's deadline, connect to answer.
    pub timeout: Duration,
    /// Attempts after the first, with exponential backoff.
    pub retries: u32,
    /// Deliveries under way at once.
    pub max_in_flight: usize,
}

impl WebhookConfig {
    /// A webhook to `url`, every other key at its default.
    pub fn new(url: UpstreamUrl) -> WebhookConfig {
        WebhookConfig {
            url,
            headers: Vec::new(),
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            retries: DEFAULT_WEBHOOK_RETRIES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// What a route captures.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCapture {
    /// Names of the sinks its records go to; empty: nothing is captured.
    pub sinks: Vec<String>,
    /// Add the request body (JSON) to the record.
    pub request: bool,
    /// Most request-body bytes kept; a longer body is left out and the record says so.
    pub request_max: usize,
}

impl Default for RouteCapture {
    fn default() -> Self {
        RouteCapture {
            sinks: Vec::new(),
            request: false,
            request_max: DEFAULT_CAPTURE_REQUEST_MAX,
        }
    }
}

/// Keys only a given kind takes.
const PATH_KEYS: &[&str] = &["path"];
const JSONL_KEYS: &[&str] = &["path", "fsync"];
const WEBHOOK_KEYS: &[&str] = &["url", "headers", "timeout", "retries", "max_in_flight"];
const ALL_KIND_KEYS: &[&str] = &[
    "path",
    "fsync",
    "url",
    "headers",
    "timeout",
    "retries",
    "max_in_flight",
];

/// A valid sink name: letters, digits, `-`, `_`, `.`.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Read the `[[sink]]` list.
pub(super) fn sinks(ctx: &Ctx<'_>, node: &S<Node>, cfg: &mut Config) -> Result<(), ConfigError> {
    for (i, item) in ctx.array(node, "sink")?.iter().enumerate() {
        let f = ctx.fields(item, format!("sink[{i}]"), &SINK)?;
        let name_key = f.key("name");
        let name_node = f.required(ctx, "name")?;
        let name = ctx.text(name_node, &name_key)?;
        if !valid_name(&name) {
            let message =
                format!("invalid sink name {name:?} (use letters, digits, '-', '_', '.')");
            return Err(ctx.err(name_node, &name_key, message));
        }
        if cfg.sinks.iter().any(|s| s.name == name) {
            let message = format!("sink `{name}` is defined twice");
            return Err(ctx.err(name_node, &name_key, message));
        }
        let kind_key = f.key("kind");
        let kind_node = f.required(ctx, "kind")?;
        let kind_name = ctx.text(kind_node, &kind_key)?;
        let allowed = match kind_name.as_str() {
            "jsonl" => JSONL_KEYS,
            "sqlite" => PATH_KEYS,
            "webhook" => WEBHOOK_KEYS,
            other => {
                let message =
                    format!("unknown sink kind {other:?}, expected `jsonl`, `sqlite` or `webhook`");
                return Err(ctx.err(kind_node, &kind_key, message));
            }
        };
        for key in ALL_KIND_KEYS {
            if let Some(v) = f.get(key).filter(|_| !allowed.contains(key)) {
                let message = format!("`{key}` does not apply to a {kind_name} sink");
                return Err(ctx.err(v, &f.key(key), message));
            }
        }
        let kind = match kind_name.as_str() {
            "jsonl" => SinkKind::Jsonl {
                path: ctx.path(f.required(ctx, "path")?, &f.key("path"))?,
                fsync: f.read(ctx, &Switch, "fsync")?.unwrap_or(false),
            },
            "sqlite" => SinkKind::Sqlite {
                path: ctx.path(f.required(ctx, "path")?, &f.key("path"))?,
            },
            _ => SinkKind::Webhook(webhook(ctx, &f)?),
        };
        cfg.sinks.push(SinkConfig {
            name,
            kind,
            queue_records: f
                .read(ctx, &QUEUE_RECORDS, "queue_records")?
                .unwrap_or(DEFAULT_QUEUE_RECORDS),
            queue_bytes: f
                .read(ctx, &QUEUE_BYTES, "queue_bytes")?
                .unwrap_or(DEFAULT_QUEUE_BYTES),
            batch: f.read(ctx, &BATCH, "batch")?.unwrap_or(DEFAULT_BATCH),
        });
    }
    Ok(())
}

fn webhook(ctx: &Ctx<'_>, f: &Fields<'_>) -> Result<WebhookConfig, ConfigError> {
    let url_key = f.key("url");
    let url_node = f.required(ctx, "url")?;
    let raw = ctx.text(url_node, &url_key)?;
    let url = UpstreamUrl::parse(raw.trim()).map_err(|m| ctx.err(url_node, &url_key, m))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(table) = f.get("headers") {
        for (name, value) in ctx.table(table, &f.key("headers"))? {
            let key = format!("{}.{name}", f.key("headers"));
            let framing = [
                "content-length",
                "content-type",
                "host",
                "transfer-encoding",
            ];
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                let message = format!("{name:?} is not a valid header name");
                return Err(ctx.err(value, &key, message));
            }
            let lower = name.to_ascii_lowercase();
            if framing.contains(&lower.as_str()) || lower == "idempotency-key" {
                let message = format!("`{name}` is set by chunkgate itself");
                return Err(ctx.err(value, &key, message));
            }
            if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                let message = format!("header `{name}` is given twice");
                return Err(ctx.err(value, &key, message));
            }
            let v = ctx.text(value, &key)?;
            if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                // The value itself is never shown: it is usually a secret.
                let message = "value holds a control character (CR, LF, NUL ...)";
                return Err(ctx.err(value, &key, message));
            }
            headers.push((name.clone(), v.trim_matches([' ', '\t']).to_string()));
        }
    }
    Ok(WebhookConfig {
        url,
        headers,
        timeout: f
            .read(ctx, &Time, "timeout")?
            .unwrap_or(DEFAULT_WEBHOOK_TIMEOUT),
        retries: f
            .read(ctx, &RETRIES, "retries")?
            .unwrap_or(DEFAULT_WEBHOOK_RETRIES),
        max_in_flight: f
            .read(ctx, &MAX_IN_FLIGHT, "max_in_flight")?
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
    })
}

/// A route's `capture`, `capture_request` and `capture_request_max` keys; the sinks named
/// must be defined.
pub(super) fn route_capture(
    ctx: &Ctx<'_>,
    f: &Fields<'_>,
    cfg: &Config,
) -> Result<RouteCapture, ConfigError> {
    let mut capture = RouteCapture::default();
    if let Some(list) = f.get("capture") {
        let list_key = f.key("capture");
        for (j, item) in ctx.array(list, &list_key)?.iter().enumerate() {
            let key = format!("{list_key}[{j}]");
            let name = ctx.text(item, &key)?;
            if !cfg.sinks.iter().any(|s| s.name == name) {
                let known: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                let message = format!("no sink named `{name}` (defined: {known})");
                return Err(ctx.err(item, &key, message));
            }
            if capture.sinks.contains(&name) {
                let message = format!("sink `{name}` is named twice");
                return Err(ctx.err(item, &key, message));
            }
            capture.sinks.push(name);
        }
    }
    if let Some(on) = f.read(ctx, &Switch, "capture_request")? {
        capture.request = on;
    }
    if let Some(max) = f.read(ctx, &CAPTURE_REQUEST_MAX, "capture_request_max")? {
        capture.request_max = max;
    }
    Ok(capture)
}

/// The sinks the `serve` flags make (`--capture-jsonl`, `--capture-sqlite`,
/// `--capture-webhook`), named after their kind, and given to every route made from flags.
pub(super) fn apply_flags(
    cfg: &mut Config,
    jsonl: Option<&PathBuf>,
    sqlite: Option<&PathBuf>,
    webhook: Option<&str>,
    routes_from_flags: bool,
) -> Result<(), ConfigError> {
    let mut made: Vec<(&'static str, SinkConfig)> = Vec::new();
    if let Some(path) = jsonl {
        let kind = SinkKind::Jsonl {
            path: path.clone(),
            fsync: false,
        };
        made.push(("--capture-jsonl", SinkConfig::new("jsonl", kind)));
    }
    if let Some(path) = sqlite {
        let kind = SinkKind::Sqlite { path: path.clone() };
        made.push(("--capture-sqlite", SinkConfig::new("sqlite", kind)));
    }
    if let Some(raw) = webhook {
        let url = UpstreamUrl::parse(raw.trim())
            .map_err(|m| ConfigError::flag("--capture-webhook", m))?;
        let kind = SinkKind::Webhook(WebhookConfig::new(url));
        made.push(("--capture-webhook", SinkConfig::new("webhook", kind)));
    }
    for (flag, sink) in made {
        if !routes_from_flags {
            let message = format!(
                "{flag} captures the routes made from flags; the configuration file defines its own routes: add a [[sink]] and name it in their `capture`"
            );
            return Err(ConfigError::flag(flag, message));
        }
        if cfg.sinks.iter().any(|s| s.name == sink.name) {
            let message = format!(
                "the configuration file already defines a sink `{}`",
                sink.name
            );
            return Err(ConfigError::flag(flag, message));
        }
        for r in &mut cfg.routes {
            r.capture.sinks.push(sink.name.clone());
        }
        cfg.sinks.push(sink);
    }
    Ok(())
}

/// `Kind::render` for the keys `to_toml` writes.
pub(super) fn render<K: Kind>(kind: &K, value: &K::Value) -> String {
    kind.render(value).unwrap_or_default()
}

/// A route's capture keys as `check-config` writes them.
pub(super) fn render_route(o: &mut String, capture: &RouteCapture) {
    use std::fmt::Write as _;
    if !capture.sinks.is_empty() {
        let names: Vec<String> = capture.sinks.iter().map(|n| quote(n)).collect();
        let _ = writeln!(o, "capture = [{}]", names.join(", "));
    }
    let _ = writeln!(o, "capture_request = {}", capture.request);
    let max = render(&CAPTURE_REQUEST_MAX, &capture.request_max);
    let _ = writeln!(o, "capture_request_max = {max}");
}

/// A `[[sink]]` as `check-config` writes it; `secret` writes header values.
pub(super) fn render_sink(o: &mut String, sink: &SinkConfig, secret: &dyn Fn(&str) -> String) {
    use std::fmt::Write as _;
    let _ = writeln!(o, "\n[[sink]]\nname = {}", quote(&sink.name));
    let _ = writeln!(o, "kind = {}", quote(sink.kind.name()));
    match &sink.kind {
        SinkKind::Jsonl { path, fsync } => {
            let _ = writeln!(o, "path = {}", quote(&path.display().to_string()));
            let _ = writeln!(o, "fsync = {fsync}");
        }
        SinkKind::Sqlite { path } => {
            let _ = writeln!(o, "path = {}", quote(&path.display().to_string()));
        }
        SinkKind::Webhook(w) => {
            let _ = writeln!(o, "url = {}", quote(&w.url.to_string()));
            if !w.headers.is_empty() {
                let fields: Vec<String> = w
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{} = {}", quote(n), secret(v)))
                    .collect();
                let _ = writeln!(o, "headers = {{ {} }}", fields.join(", "));
            }
            let _ = writeln!(o, "timeout = {}", render(&Time, &w.timeout));
            let _ = writeln!(o, "retries = {}", render(&RETRIES, &w.retries));
            let max = render(&MAX_IN_FLIGHT, &w.max_in_flight);
            let _ = writeln!(o, "max_in_flight = {max}");
        }
    }
    let _ = writeln!(o, "queue_records = {}", sink.queue_records);
    let _ = writeln!(
        o,
        "queue_bytes = {}",
        render(&QUEUE_BYTES, &sink.queue_bytes)
    );
    let _ = writeln!(o, "batch = {}", sink.batch);
}
