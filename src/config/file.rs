//! Reading the TOML file: the document as a tree whose every value keeps its byte span, the
//! scalar settings read through their declarations, the list sections by hand. Every error
//! names the file, the line and the dotted key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use super::declare::{broken_order, lookup, sections, ListTable};
use super::error::ConfigError;
use super::kinds::{Kind, Leaf, Switch, Time};
use super::settings::{
    ADMIN, ALIGN, GROUP, LISTENER, MAX_CONNECTIONS, MAX_EVENT, ROUTE, SETTINGS, UPSTREAM, WEIGHT,
};
use super::units::{expand_env, process_env};
use super::url::UpstreamUrl;
use super::{
    Config, ListenerConfig, RouteConfig, StreamRouteConfig, TlsServerConfig, UpstreamConfig,
    UpstreamGroup, DEFAULT_MAX_CONNECTIONS,
};

/// A value with the byte range it was written at.
pub(super) struct S<T> {
    value: T,
    span: Range<usize>,
}

impl<T> S<T> {
    pub(super) fn get_ref(&self) -> &T {
        &self.value
    }

    pub(super) fn span(&self) -> Range<usize> {
        self.span.clone()
    }
}

/// A TOML value, its children spanned.
pub(super) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<S<Node>>),
    /// Keys in the order written.
    Table(Vec<(String, S<Node>)>),
}

impl Node {
    /// The TOML type, for error messages.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Node::Str(_) => "string",
            Node::Int(_) => "integer",
            Node::Float(_) => "float",
            Node::Bool(_) => "boolean",
            Node::Datetime => "datetime",
            Node::Array(_) => "array",
            Node::Table(_) => "table",
        }
    }

    /// A parsed table. A table made implicitly (`[a.b]` makes `a`, `a.b = 1` makes `a`) has
    /// no span of its own: it takes its key's, or its parent's.
    fn table(table: &toml_edit::Table, at: Range<usize>) -> S<Node> {
        let span = table.span().unwrap_or(at);
        S {
            value: Node::Table(Node::entries(table, &span)),
            span,
        }
    }

    fn entries(table: &toml_edit::Table, span: &Range<usize>) -> Vec<(String, S<Node>)> {
        let entries = table.iter().map(|(key, item)| {
            let at = table
                .key(key)
                .and_then(|k| k.span())
                .unwrap_or(span.clone());
            (key.to_string(), Node::item(item, at))
        });
        entries.collect()
    }

    fn item(item: &toml_edit::Item, at: Range<usize>) -> S<Node> {
        match item {
            toml_edit::Item::Value(v) => Node::value(v, at),
            toml_edit::Item::Table(t) => Node::table(t, at),
            toml_edit::Item::ArrayOfTables(tables) => {
                let span = tables.span().unwrap_or(at);
                let items = tables.iter().map(|t| Node::table(t, span.clone()));
                S {
                    value: Node::Array(items.collect()),
                    span,
                }
            }
            toml_edit::Item::None => S {
                value: Node::Table(Vec::new()),
                span: at,
            },
        }
    }

    fn value(value: &toml_edit::Value, at: Range<usize>) -> S<Node> {
        use toml_edit::Value;
        let span = value.span().unwrap_or(at);
        let node = match value {
            Value::String(s) => Node::Str(s.value().clone()),
            Value::Integer(n) => Node::Int(*n.value()),
            Value::Float(x) => Node::Float(*x.value()),
            Value::Boolean(b) => Node::Bool(*b.value()),
            Value::Datetime(_) => Node::Datetime,
            Value::Array(items) => {
                Node::Array(items.iter().map(|v| Node::value(v, span.clone())).collect())
            }
            Value::InlineTable(table) => Node::Table(
                table
                    .iter()
                    .map(|(key, v)| {
                        let at = table
                            .key(key)
                            .and_then(|k| k.span())
                            .unwrap_or(span.clone());
                        (key.to_string(), Node::value(v, at))
                    })
                    .collect(),
            ),
        };
        S { value: node, span }
    }
}

/// Reading context: the source text (for line numbers), its name and the environment.
pub(super) struct Ctx<'a> {
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

    /// An error about `key`, at the line `node` was written on.
    pub(super) fn err<T>(&self, node: &S<T>, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.line_of(node.span().start);
        ConfigError::key(self.origin, Some(line), key, message.into())
    }

    /// A scalar value, strings `${VAR}`-expanded.
    pub(super) fn leaf(&self, node: &S<Node>, key: &str) -> Result<Leaf, ConfigError> {
        Ok(match node.get_ref() {
            Node::Str(s) => Leaf::Str(expand_env(s, self.env).map_err(|m| self.err(node, key, m))?),
            Node::Int(n) => Leaf::Int(*n),
            Node::Float(x) => Leaf::Float(*x),
            Node::Bool(b) => Leaf::Bool(*b),
            other => Leaf::Other(other.type_name()),
        })
    }

    /// A string, `${VAR}`-expanded.
    pub(super) fn text(&self, node: &S<Node>, key: &str) -> Result<String, ConfigError> {
        match self.leaf(node, key)? {
            Leaf::Str(s) => Ok(s),
            other => Err(self.err(node, key, other.invalid("a string"))),
        }
    }

    fn addr(&self, node: &S<Node>, key: &str) -> Result<SocketAddr, ConfigError> {
        let s = self.text(node, key)?;
        s.trim().parse().map_err(|_| {
            let message = format!(
                "{s:?} is not a socket address (expected e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"
            );
            self.err(node, key, message)
        })
    }

    pub(super) fn path(&self, node: &S<Node>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.text(node, key)?;
        if s.is_empty() {
            return Err(self.err(node, key, "empty path"));
        }
        Ok(PathBuf::from(s))
    }

    pub(super) fn table<'n>(
        &self,
        node: &'n S<Node>,
        key: &str,
    ) -> Result<&'n [(String, S<Node>)], ConfigError> {
        match node.get_ref() {
            Node::Table(entries) => Ok(entries),
            other => Err(self.err(
                node,
                key,
                format!("invalid type: {}, expected a table", other.type_name()),
            )),
        }
    }

    pub(super) fn array<'n>(
        &self,
        node: &'n S<Node>,
        key: &str,
    ) -> Result<&'n [S<Node>], ConfigError> {
        match node.get_ref() {
            Node::Array(items) => Ok(items),
            other => Err(self.err(
                node,
                key,
                format!("invalid type: {}, expected an array", other.type_name()),
            )),
        }
    }

    /// One element of a list section, its keys checked against the declared ones.
    pub(super) fn fields<'n>(
        &self,
        node: &'n S<Node>,
        path: String,
        list: &ListTable,
    ) -> Result<Fields<'n>, ConfigError> {
        let entries = self.table(node, &path)?;
        for (name, value) in entries {
            if !list.names().contains(&name.as_str()) {
                let key = format!("{path}.{name}");
                return Err(self.err(value, &key, unknown(name, &list.names())));
            }
        }
        Ok(Fields {
            node,
            path,
            entries,
        })
    }
}

fn unknown(name: &str, expected: &[&str]) -> String {
    let names: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    format!(
        "unknown field `{name}`, expected one of {}",
        names.join(", ")
    )
}

/// The keys of one list-section element.
pub(super) struct Fields<'n> {
    node: &'n S<Node>,
    path: String,
    entries: &'n [(String, S<Node>)],
}

impl<'n> Fields<'n> {
    pub(super) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    pub(super) fn get(&self, name: &str) -> Option<&'n S<Node>> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(super) fn required(&self, ctx: &Ctx<'_>, name: &str) -> Result<&'n S<Node>, ConfigError> {
        self.get(name)
            .ok_or_else(|| ctx.err(self.node, &self.key(name), "required key is missing"))
    }

    pub(super) fn read<K: Kind>(
        &self,
        ctx: &Ctx<'_>,
        kind: &K,
        name: &str,
    ) -> Result<Option<K::Value>, ConfigError> {
        self.get(name)
            .map(|node| kind.read(ctx, node, &self.key(name)))
            .transpose()
    }
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
        let doc = toml_edit::ImDocument::parse(s).map_err(|e| {
            let line = e.span().map(|span| ctx.line_of(span.start));
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            ConfigError::whole(source_name, line, message)
        })?;
        build(&ctx, &Node::entries(doc.as_table(), &(0..0)))
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
            .map_err(|e| ConfigError::whole(&name, None, format!("cannot read the file: {e}")))?;
        Self::from_toml_str_with_env(&text, &name, env)
    }
}

/// The top-level keys that are list sections, read by hand below.
const LIST_SECTIONS: [&str; 5] = ["listener", "admin", "route", "group", "sink"];

fn build(ctx: &Ctx<'_>, root: &[(String, S<Node>)]) -> Result<Config, ConfigError> {
    let mut cfg = Config::defaults();

    // Scalar settings: a top-level key, or a key of a section table.
    let mut given: Vec<(&'static str, &S<Node>)> = Vec::new();
    let sections = sections();
    for (name, node) in root {
        if LIST_SECTIONS.contains(&name.as_str()) {
            continue;
        }
        if let Some(setting) = lookup(name).filter(|s| s.section().is_empty()) {
            setting.read(&mut cfg, ctx, node)?;
            given.push((setting.key(), node));
        } else if sections.contains(&name.as_str()) {
            for (key, value) in ctx.table(node, name)? {
                let dotted = format!("{name}.{key}");
                let Some(setting) = lookup(&dotted) else {
                    let known: Vec<&str> = SETTINGS
                        .iter()
                        .filter(|s| s.section() == name)
                        .map(|s| s.name())
                        .collect();
                    return Err(ctx.err(value, &dotted, unknown(key, &known)));
                };
                setting.read(&mut cfg, ctx, value)?;
                given.push((setting.key(), value));
            }
        } else {
            let known: Vec<&str> = LIST_SECTIONS
                .iter()
                .copied()
                .chain(
                    SETTINGS
                        .iter()
                        .filter(|s| s.section().is_empty())
                        .map(|s| s.key()),
                )
                .chain(sections.iter().copied())
                .collect();
            return Err(ctx.err(node, name, unknown(name, &known)));
        }
    }
    if let Some((key, message)) = broken_order(&cfg, |k| given.iter().any(|(g, _)| *g == k)) {
        return Err(match given.iter().find(|(g, _)| *g == key) {
            Some((_, node)) => ctx.err(node, key, message),
            None => ConfigError::key(ctx.origin, None, key, message),
        });
    }

    let list = |name: &str| root.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    if let Some(node) = list("listener") {
        listeners(ctx, node, &mut cfg)?;
    }
    if let Some(node) = list("admin") {
        admin(ctx, node, &mut cfg)?;
    }
    // Groups and sinks before routes, which refer to them.
    if let Some(node) = list("group") {
        groups(ctx, node, &mut cfg)?;
    }
    if let Some(node) = list("sink") {
        super::sinks::sinks(ctx, node, &mut cfg)?;
    }
    if let Some(node) = list("route") {
        routes(ctx, node, &mut cfg)?;
    }
    Ok(cfg)
}

fn listeners(ctx: &Ctx<'_>, node: &S<Node>, cfg: &mut Config) -> Result<(), ConfigError> {
    let items = ctx.array(node, "listener")?;
    if !items.is_empty() {
        cfg.listeners.clear();
    }
    for (i, item) in items.iter().enumerate() {
        let f = ctx.fields(item, format!("listener[{i}]"), &LISTENER)?;
        let addr_node = f.required(ctx, "addr")?;
        let addr = ctx.addr(addr_node, &f.key("addr"))?;
        if cfg.listeners.iter().any(|o| o.addr == addr) {
            return Err(ctx.err(addr_node, &f.key("addr"), format!("{addr} is listed twice")));
        }
        let tls = match (f.get("tls_cert"), f.get("tls_key")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsServerConfig {
                cert: ctx.path(cert, &f.key("tls_cert"))?,
                key: ctx.path(key, &f.key("tls_key"))?,
            }),
            (Some(cert), None) => {
                let message = "tls_cert needs tls_key in the same listener";
                return Err(ctx.err(cert, &f.key("tls_cert"), message));
            }
            (None, Some(key)) => {
                let message = "tls_key needs tls_cert in the same listener";
                return Err(ctx.err(key, &f.key("tls_key"), message));
            }
        };
        let max_connections = f
            .read(ctx, &MAX_CONNECTIONS, "max_connections")?
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        cfg.listeners.push(ListenerConfig {
            addr,
            tls,
            max_connections,
        });
    }
    Ok(())
}

fn admin(ctx: &Ctx<'_>, node: &S<Node>, cfg: &mut Config) -> Result<(), ConfigError> {
    let f = ctx.fields(node, "admin".to_string(), &ADMIN)?;
    let addr_node = f.required(ctx, "addr")?;
    let addr = ctx.addr(addr_node, "admin.addr")?;
    if cfg.listeners.iter().any(|l| l.addr == addr) {
        let message = format!("{addr} is also a client listener");
        return Err(ctx.err(addr_node, "admin.addr", message));
    }
    cfg.admin = Some(addr);
    Ok(())
}

fn groups(ctx: &Ctx<'_>, node: &S<Node>, cfg: &mut Config) -> Result<(), ConfigError> {
    for (i, item) in ctx.array(node, "group")?.iter().enumerate() {
        let f = ctx.fields(item, format!("group[{i}]"), &GROUP)?;
        let name_key = f.key("name");
        let name_node = f.required(ctx, "name")?;
        let name = ctx.text(name_node, &name_key)?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            let message =
                format!("invalid group name {name:?} (use letters, digits, '-', '_', '.')");
            return Err(ctx.err(name_node, &name_key, message));
        }
        if cfg.groups.iter().any(|o| o.name == name) {
            let message = format!("group `{name}` is defined twice");
            return Err(ctx.err(name_node, &name_key, message));
        }
        let members = match f.get("upstream") {
            Some(list) => ctx.array(list, &f.key("upstream"))?,
            None => &[],
        };
        if members.is_empty() {
            let message =
                format!("group `{name}` has no upstream (add a [[group.upstream]] with a url)");
            return Err(ctx.err(name_node, &name_key, message));
        }
        let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(members.len());
        for (j, member) in members.iter().enumerate() {
            let u = ctx.fields(member, format!("group[{i}].upstream[{j}]"), &UPSTREAM)?;
            let url_key = u.key("url");
            let url_node = u.required(ctx, "url")?;
            let raw = ctx.text(url_node, &url_key)?;
            let url = UpstreamUrl::parse(raw.trim()).map_err(|m| ctx.err(url_node, &url_key, m))?;

            let weight = u.read(ctx, &WEIGHT, "weight")?.unwrap_or(1);
            let ca_file = match u.get("ca_file") {
                Some(ca) if !url.tls => {
                    let message = "ca_file is only used with an https:// url";
                    return Err(ctx.err(ca, &u.key("ca_file"), message));
                }
                Some(ca) => Some(ctx.path(ca, &u.key("ca_file"))?),
                None => None,
            };
            let inject_headers = match u.get("inject_headers") {
                Some(headers) => inject_headers(ctx, headers, &u.key("inject_headers"))?,
                None => Vec::new(),
            };
            let rewrite_prefix = match u.get("rewrite_prefix") {
                Some(v) => Some(rewrite_prefix(ctx, v, &u.key("rewrite_prefix"))?),
                None => None,
            };
            let strip_prefix = match u.get("strip_prefix") {
                Some(v) => {
                    let key = u.key("strip_prefix");
                    let strip = Switch.read(ctx, v, &key)?;
                    if !strip && rewrite_prefix.as_deref().is_some_and(|r| !r.is_empty()) {
                        let message = "rewrite_prefix replaces the stripped prefix, so strip_prefix cannot be false";
                        return Err(ctx.err(v, &key, message));
                    }
                    Some(strip)
                }
                None => None,
            };
            // The same URL twice only with other credentials (another account).
            if upstreams
                .iter()
                .any(|o| o.url == url && o.inject_headers == inject_headers)
            {
                let message = format!(
                    "{url} is listed twice in group `{name}` with the same inject_headers (use weight instead)"
                );
                return Err(ctx.err(url_node, &url_key, message));
            }
            upstreams.push(UpstreamConfig {
                url,
                weight,
                ca_file,
                inject_headers,
                strip_prefix,
                rewrite_prefix,
            });
        }
        cfg.groups.push(UpstreamGroup { name, upstreams });
    }
    Ok(())
}

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

/// Spaces, control characters, `?` and `#` have no place in a path prefix.
fn bad_in_path(b: u8) -> bool {
    b <= b' ' || b == 0x7f || b == b'?' || b == b'#'
}

/// A `rewrite_prefix` value: empty, or starting with `/` and not ending with `/`.
fn rewrite_prefix(ctx: &Ctx<'_>, v: &S<Node>, key: &str) -> Result<String, ConfigError> {
    let s = ctx.text(v, key)?;
    if !s.is_empty() && (!s.starts_with('/') || s.ends_with('/')) {
        let message = format!("{s:?} must be empty, or start with '/' and not end with '/'");
        return Err(ctx.err(v, key, message));
    }
    if s.bytes().any(bad_in_path) {
        let message = format!("{s:?} may not hold spaces, control characters, '?' or '#'");
        return Err(ctx.err(v, key, message));
    }
    Ok(s)
}

/// An `inject_headers` table (of a route or an upstream): valid field names, none that
/// chunkgate sets itself, none twice, values without control characters. Errors never show a
/// value: it is usually a secret.
fn inject_headers(
    ctx: &Ctx<'_>,
    headers: &S<Node>,
    table_key: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut inject_headers: Vec<(String, String)> = Vec::new();
    for (name, value) in ctx.table(headers, table_key)? {
        let key = format!("{table_key}.{name}");
        if name.is_empty() || !name.bytes().all(is_tchar) {
            let message = format!("{name:?} is not a valid header name");
            return Err(ctx.err(value, &key, message));
        }
        if name.contains('_') {
            // chunkgate refuses `_` in field names it receives (some servers read it
            // as `-`), so an injected one would never be sent: say so at load time.
            let message = format!("{name:?}: header names with `_` are not sent");
            return Err(ctx.err(value, &key, message));
        }
        if NOT_INJECTABLE.contains(&name.to_ascii_lowercase().as_str()) {
            let message = format!("`{name}` is set by chunkgate itself and cannot be injected");
            return Err(ctx.err(value, &key, message));
        }
        if inject_headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let message = format!("header `{name}` is injected twice");
            return Err(ctx.err(value, &key, message));
        }
        let v = ctx.text(value, &key)?;
        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            // The value itself is never shown: it is usually a secret.
            let message = "value holds a control character (CR, LF, NUL ...)";
            return Err(ctx.err(value, &key, message));
        }
        inject_headers.push((name.clone(), v.trim_matches([' ', '\t']).to_string()));
    }
    Ok(inject_headers)
}

fn routes(ctx: &Ctx<'_>, node: &S<Node>, cfg: &mut Config) -> Result<(), ConfigError> {
    for (i, item) in ctx.array(node, "route")?.iter().enumerate() {
        let f = ctx.fields(item, format!("route[{i}]"), &ROUTE)?;
        let prefix_key = f.key("prefix");
        let prefix_node = f.required(ctx, "prefix")?;
        let prefix = ctx.text(prefix_node, &prefix_key)?;
        if !prefix.starts_with('/') {
            let message = format!("prefix {prefix:?} must start with '/'");
            return Err(ctx.err(prefix_node, &prefix_key, message));
        }
        if prefix.bytes().any(bad_in_path) {
            let message =
                format!("prefix {prefix:?} may not hold spaces, control characters, '?' or '#'");
            return Err(ctx.err(prefix_node, &prefix_key, message));
        }
        if cfg.routes.iter().any(|o| o.prefix == prefix) {
            let message = format!("prefix {prefix:?} is routed twice");
            return Err(ctx.err(prefix_node, &prefix_key, message));
        }

        let group_key = f.key("group");
        let group_node = f.required(ctx, "group")?;
        let group = ctx.text(group_node, &group_key)?;
        if !cfg.groups.iter().any(|g| g.name == group) {
            let known: Vec<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            let message = format!("no group named `{group}` (defined: {known})");
            return Err(ctx.err(group_node, &group_key, message));
        }

        let rewrite_prefix = match f.get("rewrite_prefix") {
            Some(v) => rewrite_prefix(ctx, v, &f.key("rewrite_prefix"))?,
            None => String::new(),
        };
        let strip_prefix = match f.get("strip_prefix") {
            Some(v) => {
                let key = f.key("strip_prefix");
                let strip = Switch.read(ctx, v, &key)?;
                if !strip && !rewrite_prefix.is_empty() {
                    let message = "rewrite_prefix replaces the stripped prefix, so strip_prefix cannot be false";
                    return Err(ctx.err(v, &key, message));
                }
                strip
            }
            None => prefix != "/",
        };
        // An upstream's rewrite_prefix replaces the stripped prefix too: with the route not
        // stripping, that upstream must turn stripping on itself.
        let members = cfg.groups.iter().filter(|g| g.name == group);
        if let Some(u) = members.flat_map(|g| &g.upstreams).find(|u| {
            !strip_prefix
                && u.strip_prefix.is_none()
                && u.rewrite_prefix.as_deref().is_some_and(|r| !r.is_empty())
        }) {
            let message = format!(
                "group `{group}` upstream {} sets rewrite_prefix, which needs strip_prefix: set strip_prefix = true on the route or that upstream",
                u.url
            );
            let node = f.get("strip_prefix").unwrap_or(group_node);
            let key = if f.get("strip_prefix").is_some() {
                f.key("strip_prefix")
            } else {
                group_key.clone()
            };
            return Err(ctx.err(node, &key, message));
        }

        let inject_headers = match f.get("inject_headers") {
            Some(headers) => inject_headers(ctx, headers, &f.key("inject_headers"))?,
            None => Vec::new(),
        };

        let mut require_bearer = Vec::new();
        if let Some(list) = f.get("require_bearer") {
            let list_key = f.key("require_bearer");
            let tokens = ctx.array(list, &list_key)?;
            if tokens.is_empty() {
                let message = "empty token list (remove the key to allow requests without a token)";
                return Err(ctx.err(list, &list_key, message));
            }
            for (j, t) in tokens.iter().enumerate() {
                let key = format!("{list_key}[{j}]");
                let token = ctx.text(t, &key)?;
                if token.is_empty() {
                    let message = "empty token (is its environment variable empty?)";
                    return Err(ctx.err(t, &key, message));
                }
                if !is_token68(&token) {
                    let message = "token holds characters a bearer token cannot have (allowed: letters, digits, -._~+/ and trailing =)";
                    return Err(ctx.err(t, &key, message));
                }
                require_bearer.push(token);
            }
        }

        let stream = stream_keys(ctx, &f)?;
        let capture = super::sinks::route_capture(ctx, &f, cfg)?;
        cfg.routes.push(RouteConfig {
            prefix,
            group,
            strip_prefix,
            rewrite_prefix,
            inject_headers,
            require_bearer,
            stream,
            capture,
        });
    }
    Ok(())
}

/// The LLM stream keys of a route.
fn stream_keys(ctx: &Ctx<'_>, f: &Fields<'_>) -> Result<StreamRouteConfig, ConfigError> {
    let mut s = StreamRouteConfig::default();
    if let Some(align) = f.read(ctx, &ALIGN, "align")? {
        s.align = align;
    }
    if let Some(max_event) = f.read(ctx, &MAX_EVENT, "max_event")? {
        s.max_event = max_event;
    }
    if let Some(tap) = f.read(ctx, &Switch, "tap")? {
        s.tap = tap;
    }
    if let Some(inject) = f.read(ctx, &Switch, "inject_include_usage")? {
        s.inject_include_usage = inject;
    }
    if let Some(node) = f.get("keepalive") {
        let key = f.key("keepalive");
        let every = Time.read(ctx, node, &key)?;
        let (min, max) = StreamRouteConfig::KEEPALIVE_RANGE;
        if every < min || every > max {
            return Err(ctx.err(node, &key, "must be from 1s to 1h"));
        }
        s.keepalive = Some(every);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::from_toml_str_with_env(text, "t.toml", &|_| None).unwrap_err()
    }

    #[test]
    fn implicit_tables_are_named_and_located() {
        // `[limits.x]` and `a.b = 1` make tables that have no span of their own.
        let e = err("\n[limits.x]\ny = 1\n");
        assert_eq!((e.line(), e.subject()), (Some(2), Some("limits.x")), "{e}");
        assert!(e.message().starts_with("unknown field `x`"), "{e}");
        let e = err("drain_timeout = \"5s\"\na.b = 1\n");
        assert_eq!((e.line(), e.subject()), (Some(2), Some("a")), "{e}");
        let e = err("[[listener]]\naddr = \"127.0.0.1:1\"\ntls.cert = \"c.pem\"\n");
        assert_eq!(
            (e.line(), e.subject()),
            (Some(3), Some("listener[0].tls")),
            "{e}"
        );
    }

    #[test]
    fn errors_point_at_the_element_line() {
        let e = err("[retry]\non_status = [\n  429,\n  200,\n]\n");
        assert_eq!(
            (e.line(), e.subject()),
            (Some(4), Some("retry.on_status[1]")),
            "{e}"
        );
        let e = err("[[listener]]\nmax_connections = 5\n");
        assert_eq!(
            (e.line(), e.subject()),
            (Some(1), Some("listener[0].addr")),
            "{e}"
        );
        assert_eq!(e.message(), "required key is missing");
    }

    #[test]
    fn a_dotted_name_is_not_a_top_level_key() {
        let e = err("\"timeouts.connect\" = \"5s\"\n");
        assert_eq!(e.subject(), Some("timeouts.connect"));
        assert!(e.message().starts_with("unknown field"), "{e}");
        let cfg = Config::from_toml_str_with_env("timeouts.connect = \"5s\"\n", "t", &|_| None)
            .expect("a dotted key is the table's key");
        assert_eq!(cfg.timeouts.connect, std::time::Duration::from_secs(5));
    }

    #[test]
    fn datetimes_and_syntax_errors() {
        let e = err("[timeouts]\nconnect = 1979-05-27\n");
        assert_eq!(e.subject(), Some("timeouts.connect"));
        assert!(e.message().ends_with("found datetime"), "{e}");
        let e = err("drain_timeout = \"1s\"\ndrain_timeout = \"2s\"\n");
        assert_eq!((e.line(), e.subject()), (Some(2), None), "{e}");
    }
}
