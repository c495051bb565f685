//! Configuration file parsing, validation errors, environment expansion, flags over file,
//! and `check-config`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chunkgate::config::{
    self, expand_env, format_duration, parse_duration, parse_size, Config, ConfigError, LogFormat,
    ServeArgs, REDACTED,
};
use clap::Parser;

const OPENAI_KEY: &str = "sk-test-0123456789abcdef";
const CLIENT_TOKEN: &str = "client-token-fedcba9876543210";

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn example_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[
        ("OPENAI_API_KEY", OPENAI_KEY),
        ("CHUNKGATE_CLIENT_TOKEN", CLIENT_TOKEN),
    ])
}

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str_with_env(src, "test.toml", &env_of(&[("TOKEN", "abc")]))
}

fn parse_err(src: &str) -> ConfigError {
    match parse(src) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e,
    }
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("chunkgate.example.toml")
}

/// A minimal valid file, to which a test appends one faulty piece.
const BASE: &str = r#"
[[route]]
prefix = "/"
group = "g"

[[group]]
name = "g"
[[group.upstream]]
url = "http://127.0.0.1:9000"
"#;

#[test]
fn example_file_parses_with_documented_values() {
    let cfg = Config::from_file_with_env(&example_path(), &example_env()).expect("example parses");
    cfg.validate("example").expect("example is complete");
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.listeners[0].max_connections, 10_000);
    assert_eq!(cfg.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(cfg.routes.len(), 2);
    let openai = &cfg.routes[0];
    assert_eq!(openai.prefix, "/openai/");
    assert!(openai.strip_prefix);
    assert_eq!(
        openai.inject_headers,
        vec![("Authorization".to_string(), format!("Bearer {OPENAI_KEY}"))]
    );
    assert_eq!(openai.require_bearer, vec![CLIENT_TOKEN.to_string()]);
    assert_eq!(cfg.routes[1].rewrite_prefix, "/api");
    assert!(cfg.routes[1].strip_prefix, "strip_prefix defaults to true");
    assert_eq!(cfg.groups.len(), 2);
    assert!(cfg.groups[0].upstreams[0].url.tls);
    assert_eq!(cfg.groups[1].upstreams[0].weight, 2);
    assert_eq!(cfg.groups[1].upstreams[1].weight, 1);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(30));
    assert_eq!(cfg.retry.on_status, vec![429, 502, 503, 504]);
    assert_eq!(cfg.log.format, LogFormat::Pretty);
}

#[test]
fn example_file_states_the_defaults() {
    // Every value written in the example equals the built-in default, so the example is
    // also the reference of defaults: parse it and compare the tunables with `simple`.
    let cfg = Config::from_file_with_env(&example_path(), &example_env()).expect("example parses");
    let defaults = Config::simple("127.0.0.1:8080".parse().unwrap(), Vec::new());
    assert_eq!(cfg.limits, defaults.limits);
    assert_eq!(cfg.timeouts, defaults.timeouts);
    assert_eq!(cfg.pool, defaults.pool);
    assert_eq!(cfg.retry, defaults.retry);
    assert_eq!(cfg.breaker, defaults.breaker);
    assert_eq!(cfg.log, defaults.log);
    assert_eq!(cfg.drain_timeout, defaults.drain_timeout);
    assert_eq!(
        cfg.listeners[0].max_connections,
        defaults.listeners[0].max_connections
    );
}

#[test]
fn example_file_without_its_variables_names_the_missing_one() {
    let err = Config::from_file_with_env(&example_path(), &env_of(&[])).unwrap_err();
    assert!(err.message().contains("`OPENAI_API_KEY`"), "{err}");
    assert_eq!(err.subject(), Some("route[0].inject_headers.Authorization"));
    let text = std::fs::read_to_string(example_path()).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("inject_headers"))
        .unwrap()
        + 1;
    assert_eq!(err.line(), Some(line));
}

#[test]
fn effective_config_round_trips_and_redacts() {
    let cfg = Config::from_file_with_env(&example_path(), &example_env()).unwrap();
    let plain = cfg.to_toml(false);
    let again = Config::from_toml_str_with_env(&plain, "effective", &env_of(&[])).unwrap();
    assert_eq!(
        again, cfg,
        "to_toml output parses back to the same configuration"
    );

    let redacted = cfg.to_toml(true);
    assert!(!redacted.contains(OPENAI_KEY), "{redacted}");
    assert!(!redacted.contains(CLIENT_TOKEN), "{redacted}");
    assert!(redacted.contains(REDACTED));
    assert!(
        redacted.contains("Authorization"),
        "header names stay visible"
    );
}

#[test]
fn env_expansion_forms() {
    let env = env_of(&[("A", "1"), ("EMPTY", "")]);
    assert_eq!(expand_env("x${A}y", &env).unwrap(), "x1y");
    assert_eq!(expand_env("${B:-dflt}", &env).unwrap(), "dflt");
    assert_eq!(expand_env("${A:-dflt}", &env).unwrap(), "1");
    assert_eq!(expand_env("$${A}", &env).unwrap(), "${A}");
    assert_eq!(expand_env("cost $5", &env).unwrap(), "cost $5");
    assert_eq!(expand_env("${EMPTY}", &env).unwrap(), "");
    assert!(expand_env("${B}", &env).unwrap_err().contains("`B`"));
    assert!(expand_env("${A", &env).unwrap_err().contains("unclosed"));
    assert!(expand_env("${1A}", &env).unwrap_err().contains("invalid"));
}

#[test]
fn env_expansion_applies_to_every_string() {
    let src = r#"
[[listener]]
addr = "${LISTEN}"
[[route]]
prefix = "/"
group = "g"
require_bearer = ["${TOKEN}"]
[[group]]
name = "g"
[[group.upstream]]
url = "http://${UP_HOST}:9000"
[timeouts]
connect = "${CONNECT:-3s}"
"#;
    let env = env_of(&[
        ("LISTEN", "127.0.0.1:7000"),
        ("TOKEN", "t0k3n"),
        ("UP_HOST", "10.1.2.3"),
    ]);
    let cfg = Config::from_toml_str_with_env(src, "t.toml", &env).unwrap();
    assert_eq!(cfg.listeners[0].addr, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(cfg.routes[0].require_bearer, vec!["t0k3n".to_string()]);
    assert_eq!(cfg.groups[0].upstreams[0].url.host, "10.1.2.3");
    assert_eq!(cfg.timeouts.connect, Duration::from_secs(3));
}

#[test]
fn empty_env_token_is_refused() {
    // A bearer token whose variable is set but empty must not turn into "accept anything".
    let src = BASE.replace(
        "group = \"g\"\n",
        "group = \"g\"\nrequire_bearer = [\"${EMPTY}\"]\n",
    );
    let err =
        Config::from_toml_str_with_env(&src, "t.toml", &env_of(&[("EMPTY", "")])).unwrap_err();
    assert_eq!(err.subject(), Some("route[0].require_bearer[0]"));
    assert!(err.message().contains("empty token"), "{err}");
}

#[test]
fn display_names_file_line_and_key() {
    let err = parse_err("[limits]\nmax_chunk_size = 10\nbogus = 1\n");
    assert_eq!(
        err.to_string().split(": unknown field").next().unwrap(),
        "test.toml:3: key `limits.bogus`"
    );
}

/// One validation or parse error per row: (file text, line, key, part of the message).
#[test]
fn every_validation_error_names_line_and_key() {
    let cases: Vec<(String, usize, &str, &str)> = vec![
        // Unknown keys.
        ("bogus = 1\n".into(), 1, "bogus", "unknown field"),
        (
            "[limits]\nmax_chunk_size = 10\nbogus = 1\n".into(),
            3,
            "limits.bogus",
            "unknown field",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\nport = 2\n".into(),
            3,
            "listener[0].port",
            "unknown field",
        ),
        (
            format!("{BASE}color = \"red\"\n"),
            10,
            "group[0].upstream[0].color",
            "unknown field",
        ),
        (
            "[admin]\naddr = \"127.0.0.1:1\"\nx = 1\n".into(),
            3,
            "admin.x",
            "unknown field",
        ),
        // Wrong types.
        (
            "[limits]\nmax_headers = \"many\"\n".into(),
            2,
            "limits.max_headers",
            "invalid type",
        ),
        (
            "[timeouts]\nconnect = 5\n".into(),
            2,
            "timeouts.connect",
            "duration string",
        ),
        (
            "[log]\naccess_log = \"yes\"\n".into(),
            2,
            "log.access_log",
            "invalid type",
        ),
        // Listeners and admin.
        (
            "[[listener]]\naddr = \"localhost\"\n".into(),
            2,
            "listener[0].addr",
            "not a socket address",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\n[[listener]]\naddr = \"127.0.0.1:1\"\n".into(),
            4,
            "listener[1].addr",
            "twice",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\ntls_cert = \"c.pem\"\n".into(),
            3,
            "listener[0].tls_cert",
            "needs tls_key",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\ntls_key = \"k.pem\"\n".into(),
            3,
            "listener[0].tls_key",
            "needs tls_cert",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\nmax_connections = 0\n".into(),
            3,
            "listener[0].max_connections",
            "between 1 and",
        ),
        (
            "[[listener]]\naddr = \"127.0.0.1:1\"\n[admin]\naddr = \"127.0.0.1:1\"\n".into(),
            4,
            "admin.addr",
            "also a client listener",
        ),
        // Routes.
        (
            "[[route]]\nprefix = \"/\"\ngroup = \"nope\"\n".into(),
            3,
            "route[0].group",
            "no group named `nope`",
        ),
        (
            BASE.replace("prefix = \"/\"", "prefix = \"api\""),
            3,
            "route[0].prefix",
            "must start with '/'",
        ),
        (
            BASE.replace("prefix = \"/\"", "prefix = \"/a b\""),
            3,
            "route[0].prefix",
            "spaces",
        ),
        (
            format!("{BASE}[[route]]\nprefix = \"/\"\ngroup = \"g\"\n"),
            11,
            "route[1].prefix",
            "routed twice",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\nrewrite_prefix = \"v1\"\n",
            ),
            5,
            "route[0].rewrite_prefix",
            "start with '/'",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\nrewrite_prefix = \"/v1/\"\n",
            ),
            5,
            "route[0].rewrite_prefix",
            "not end with '/'",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\nrewrite_prefix = \"/v1\"\nstrip_prefix = false\n",
            ),
            6,
            "route[0].strip_prefix",
            "cannot be false",
        ),
        (
            BASE.replace("group = \"g\"\n", "group = \"g\"\nrequire_bearer = []\n"),
            5,
            "route[0].require_bearer",
            "empty token list",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\nrequire_bearer = [\"a b\"]\n",
            ),
            5,
            "route[0].require_bearer[0]",
            "characters",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { \"Bad Name\" = \"x\" }\n",
            ),
            5,
            "route[0].inject_headers.Bad Name",
            "not a valid header name",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { X_Api_Key = \"x\" }\n",
            ),
            5,
            "route[0].inject_headers.X_Api_Key",
            "with `_` are not sent",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { Host = \"x\" }\n",
            ),
            5,
            "route[0].inject_headers.Host",
            "cannot be injected",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { X-Key = \"a\\r\\nEvil: 1\" }\n",
            ),
            5,
            "route[0].inject_headers.X-Key",
            "control character",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { X-Key = \"a\", x-key = \"b\" }\n",
            ),
            5,
            "route[0].inject_headers.x-key",
            "injected twice",
        ),
        (
            BASE.replace(
                "group = \"g\"\n",
                "group = \"g\"\ninject_headers = { X-Key = \"${NOPE}\" }\n",
            ),
            5,
            "route[0].inject_headers.X-Key",
            "`NOPE` is not set",
        ),
        // An upstream's own injected headers and rewriting: the route's rules.
        (
            format!("{BASE}inject_headers = {{ Host = \"x\" }}\n"),
            10,
            "group[0].upstream[0].inject_headers.Host",
            "cannot be injected",
        ),
        (
            format!("{BASE}inject_headers = {{ X-Key = \"a\\r\\nEvil: 1\" }}\n"),
            10,
            "group[0].upstream[0].inject_headers.X-Key",
            "control character",
        ),
        (
            format!("{BASE}inject_headers = {{ X_Key = \"a\" }}\n"),
            10,
            "group[0].upstream[0].inject_headers.X_Key",
            "are not sent",
        ),
        (
            format!("{BASE}rewrite_prefix = \"/v1/\"\n"),
            10,
            "group[0].upstream[0].rewrite_prefix",
            "must be empty",
        ),
        (
            format!("{BASE}rewrite_prefix = \"/v1\"\nstrip_prefix = false\n"),
            11,
            "group[0].upstream[0].strip_prefix",
            "cannot be false",
        ),
        (
            format!("{BASE}rewrite_prefix = \"/v1\"\n"),
            4,
            "route[0].group",
            "needs strip_prefix",
        ),
        // Groups and upstreams.
        (
            "[[group]]\nname = \"g\"\n".into(),
            2,
            "group[0].name",
            "has no upstream",
        ),
        (
            "[[group]]\nname = \"a b\"\n".into(),
            2,
            "group[0].name",
            "invalid group name",
        ),
        (
            format!("{BASE}[[group]]\nname = \"g\"\n[[group.upstream]]\nurl = \"http://x\"\n"),
            11,
            "group[1].name",
            "defined twice",
        ),
        (
            BASE.replace("http://127.0.0.1:9000", "ftp://x"),
            9,
            "group[0].upstream[0].url",
            "must start with http://",
        ),
        (
            BASE.replace("http://127.0.0.1:9000", "http://x:99999"),
            9,
            "group[0].upstream[0].url",
            "bad port",
        ),
        (
            BASE.replace("http://127.0.0.1:9000", "http://u:p@x"),
            9,
            "group[0].upstream[0].url",
            "credentials",
        ),
        (
            format!("{BASE}weight = 0\n"),
            10,
            "group[0].upstream[0].weight",
            "between 1 and",
        ),
        (
            format!("{BASE}ca_file = \"ca.pem\"\n"),
            10,
            "group[0].upstream[0].ca_file",
            "only used with an https",
        ),
        (
            format!("{BASE}[[group.upstream]]\nurl = \"http://127.0.0.1:9000/\"\n"),
            11,
            "group[0].upstream[1].url",
            "listed twice",
        ),
        // Limits.
        (
            "[limits]\nmax_chunk_size = 0\n".into(),
            2,
            "limits.max_chunk_size",
            "greater than zero",
        ),
        (
            "[limits]\nmax_chunk_size = \"2GiB\"\n".into(),
            2,
            "limits.max_chunk_size",
            "at most 1GiB",
        ),
        (
            "[limits]\nmax_chunk_size = -5\n".into(),
            2,
            "limits.max_chunk_size",
            "greater than zero",
        ),
        (
            "[limits]\nmax_chunk_size = \"1XB\"\n".into(),
            2,
            "limits.max_chunk_size",
            "unknown unit",
        ),
        (
            "[limits]\nmax_size_line = 0\n".into(),
            2,
            "limits.max_size_line",
            "greater than zero",
        ),
        (
            "[limits]\nmax_extension_bytes = 0\n".into(),
            2,
            "limits.max_extension_bytes",
            "greater than zero",
        ),
        (
            "[limits]\nmax_trailer_bytes = 0\n".into(),
            2,
            "limits.max_trailer_bytes",
            "greater than zero",
        ),
        (
            "[limits]\nmax_trailer_fields = 0\n".into(),
            2,
            "limits.max_trailer_fields",
            "between 1 and",
        ),
        (
            "[limits]\nmax_body_size = \"1KiB\"\n".into(),
            2,
            "limits.max_body_size",
            "at least limits.max_chunk_size",
        ),
        (
            "[limits]\nmax_head_bytes = 0\n".into(),
            2,
            "limits.max_head_bytes",
            "greater than zero",
        ),
        (
            "[limits]\nmax_headers = 0\n".into(),
            2,
            "limits.max_headers",
            "between 1 and",
        ),
        (
            "[limits]\nmax_head_bytes = 100\nmax_request_line = 200\n".into(),
            3,
            "limits.max_request_line",
            "must not exceed",
        ),
        (
            "[limits]\nmax_request_body = 0\n".into(),
            2,
            "limits.max_request_body",
            "greater than zero",
        ),
        // Timeouts.
        (
            "[timeouts]\nconnect = \"0s\"\n".into(),
            2,
            "timeouts.connect",
            "greater than zero",
        ),
        (
            "[timeouts]\nstream_idle = \"5 parsecs\"\n".into(),
            2,
            "timeouts.stream_idle",
            "invalid duration",
        ),
        (
            "[timeouts]\ntotal = \"soon\"\n".into(),
            2,
            "timeouts.total",
            "invalid duration",
        ),
        (
            "\n\ndrain_timeout = \"5x\"\n".into(),
            3,
            "drain_timeout",
            "unknown unit",
        ),
        // Pool.
        (
            "[pool]\nmax_connections_per_upstream = 0\n".into(),
            2,
            "pool.max_connections_per_upstream",
            "between 1 and",
        ),
        (
            "[pool]\nmax_idle_per_upstream = 10\nmax_connections_per_upstream = 5\n".into(),
            2,
            "pool.max_idle_per_upstream",
            "must not exceed",
        ),
        (
            "[pool]\nidle_timeout = \"0ms\"\n".into(),
            2,
            "pool.idle_timeout",
            "greater than zero",
        ),
        // Retry.
        (
            "[retry]\nmax_attempts = 0\n".into(),
            2,
            "retry.max_attempts",
            "between 1 and 10",
        ),
        (
            "[retry]\nmax_attempts = 11\n".into(),
            2,
            "retry.max_attempts",
            "between 1 and 10",
        ),
        (
            "[retry]\nbase = \"20s\"\n".into(),
            2,
            "retry.base",
            "must not exceed retry.cap",
        ),
        (
            "[retry]\non_status = [429, 200]\n".into(),
            2,
            "retry.on_status[1]",
            "between 400 and 599",
        ),
        (
            "[retry]\non_status = [503, 503]\n".into(),
            2,
            "retry.on_status[1]",
            "twice",
        ),
        (
            "[retry]\nbudget_ratio = 1.5\n".into(),
            2,
            "retry.budget_ratio",
            "between 0 and 1",
        ),
        (
            "[retry]\ndeadline = \"0s\"\n".into(),
            2,
            "retry.deadline",
            "greater than zero",
        ),
        // Breaker.
        (
            "[breaker]\nfailure_rate = 0.0\n".into(),
            2,
            "breaker.failure_rate",
            "above 0",
        ),
        (
            "[breaker]\nmin_requests = 0\n".into(),
            2,
            "breaker.min_requests",
            "between 1 and",
        ),
        (
            "[breaker]\nhalf_open_probes = 0\n".into(),
            2,
            "breaker.half_open_probes",
            "between 1 and",
        ),
        (
            "[breaker]\nopen_for = \"0s\"\n".into(),
            2,
            "breaker.open_for",
            "greater than zero",
        ),
        // Log.
        (
            "[log]\nformat = \"xml\"\n".into(),
            2,
            "log.format",
            "not a log format",
        ),
        (
            "[log]\nfilter = \"chunkgate=loud\"\n".into(),
            2,
            "log.filter",
            "invalid log filter",
        ),
    ];
    let mut wrong = Vec::new();
    for (src, line, key, msg) in &cases {
        let err = parse_err(src);
        let shown = err.to_string();
        let prefix = format!("test.toml:{line}: key `{key}`: ");
        if !shown.starts_with(&prefix) || !err.message().contains(msg) {
            wrong.push(format!("expected {prefix}...{msg}...\n     got {shown}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn secrets_never_appear_in_errors() {
    // A bad header value is reported without echoing it.
    let src = BASE.replace(
        "group = \"g\"\n",
        "group = \"g\"\ninject_headers = { X-Key = \"sk-secret\\n\" }\n",
    );
    let err = parse_err(&src);
    assert!(!err.to_string().contains("sk-secret"), "{err}");
    let src = format!("{BASE}inject_headers = {{ X-Key = \"sk-secret\\u0000\" }}\n");
    let err = parse_err(&src);
    assert!(!err.to_string().contains("sk-secret"), "{err}");
    assert_eq!(
        err.subject(),
        Some("group[0].upstream[0].inject_headers.X-Key")
    );
}

#[test]
fn upstreams_carry_their_own_headers_and_rewriting() {
    let src = format!(
        "{BASE}inject_headers = {{ Authorization = \"Bearer ${{KEY_A}}\" }}\nstrip_prefix = true\nrewrite_prefix = \"/v1\"\n"
    );
    let env = env_of(&[("KEY_A", "sk-account-a")]);
    let cfg = Config::from_toml_str_with_env(&src, "t.toml", &env).unwrap();
    let up = &cfg.groups[0].upstreams[0];
    assert_eq!(
        up.inject_headers,
        vec![(
            "Authorization".to_string(),
            "Bearer sk-account-a".to_string()
        )]
    );
    assert_eq!(up.strip_prefix, Some(true));
    assert_eq!(up.rewrite_prefix.as_deref(), Some("/v1"));
    let shown = cfg.to_toml(true);
    assert!(!shown.contains("sk-account-a"), "{shown}");
    assert!(shown.contains("rewrite_prefix = \"/v1\""), "{shown}");
    let again = Config::from_toml_str_with_env(&cfg.to_toml(false), "again", &env).unwrap();
    assert_eq!(again, cfg);
    // The same URL twice is two accounts when their keys differ.
    let two = format!(
        "{BASE}inject_headers = {{ X-Key = \"a\" }}\n[[group.upstream]]\nurl = \"http://127.0.0.1:9000\"\ninject_headers = {{ X-Key = \"b\" }}\n"
    );
    let cfg = Config::from_toml_str_with_env(&two, "t.toml", &env).unwrap();
    assert_eq!(cfg.groups[0].upstreams.len(), 2);
}

#[test]
fn syntax_error_names_the_line() {
    let err = parse_err("[limits]\nmax_headers = 1\n[oops\n");
    assert_eq!(err.line(), Some(3), "{err}");
}

#[test]
fn file_without_routes_is_valid_alone_but_not_for_serve() {
    let cfg = parse("[limits]\nmax_headers = 50\n").unwrap();
    assert!(cfg.routes.is_empty());
    assert!(cfg.validate("t").is_err());
}

#[test]
fn defaults_when_keys_are_absent() {
    let cfg = parse(BASE).unwrap();
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(
        cfg.listeners[0].addr,
        config::DEFAULT_LISTEN.parse().unwrap()
    );
    assert!(
        !cfg.routes[0].strip_prefix,
        "prefix / is not stripped by default"
    );
    assert_eq!(cfg.admin, None);
    assert_eq!(cfg.timeouts.total, None);
    assert_eq!(cfg.limits.chunk.body_size_limit(), None);
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
    assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
    assert_eq!(parse_size("16kB").unwrap(), 16_000);
    assert_eq!(parse_size("512").unwrap(), 512);
    assert!(parse_size("-1").is_err());
    assert!(parse_size("99999999999GiB").is_err());
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    for bad in [
        "",
        "5",
        "s",
        "1.s",
        ".5s",
        "5 s",
        "5sec",
        "1..2s",
        "-1s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
    }
    for d in [
        Duration::from_millis(250),
        Duration::from_secs(90),
        Duration::from_secs(7200),
        Duration::from_nanos(1_500),
        Duration::new(1, 1),
    ] {
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{d:?}");
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn args(list: &[&str]) -> ServeArgs {
    let mut argv = vec!["chunkgate"];
    argv.extend_from_slice(list);
    Cli::try_parse_from(argv).expect("flags parse").serve
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "c.toml",
        &format!(
            "{BASE}\n[[listener]]\naddr = \"127.0.0.1:7001\"\nmax_connections = 7\n[log]\nformat = \"json\"\nfilter = \"debug\"\n[timeouts]\nstream_idle = \"1m\"\n"
        ),
    );
    let path = file.to_str().unwrap();

    // The file alone.
    let cfg = config::load_with_env(&args(&["--config", path]), &env_of(&[])).unwrap();
    assert_eq!(cfg.listeners[0].addr, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert_eq!(cfg.timeouts.stream_idle, Duration::from_secs(60));

    // Flags on top.
    let cfg = config::load_with_env(
        &args(&[
            "--config",
            path,
            "--listen",
            "127.0.0.1:7002",
            "--upstream",
            "http://127.0.0.1:9100",
            "--upstream",
            "http://127.0.0.1:9101",
            "--admin",
            "127.0.0.1:7009",
            "--log-format",
            "pretty",
            "--log-filter",
            "warn",
            "--no-access-log",
            "--drain-timeout",
            "45s",
            "--max-chunk-size",
            "2MiB",
            "--stream-idle-timeout",
            "3m",
            "--response-head-timeout",
            "90s",
            "--retry-attempts",
            "1",
        ]),
        &env_of(&[]),
    )
    .unwrap();
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].addr, "127.0.0.1:7002".parse().unwrap());
    assert_eq!(
        cfg.listeners[0].max_connections, 7,
        "unflagged settings stay"
    );
    assert_eq!(cfg.groups[0].name, "g");
    let urls: Vec<String> = cfg.groups[0]
        .upstreams
        .iter()
        .map(|u| u.url.to_string())
        .collect();
    assert_eq!(urls, ["http://127.0.0.1:9100", "http://127.0.0.1:9101"]);
    assert_eq!(cfg.admin, Some("127.0.0.1:7009".parse().unwrap()));
    assert_eq!(cfg.log.format, LogFormat::Pretty);
    assert_eq!(cfg.log.filter, "warn");
    assert!(!cfg.log.access_log);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(45));
    assert_eq!(cfg.limits.chunk.chunk_size_limit(), 2 << 20);
    assert_eq!(cfg.timeouts.stream_idle, Duration::from_secs(180));
    assert_eq!(cfg.timeouts.response_head, Duration::from_secs(90));
    assert_eq!(cfg.retry.max_attempts, 1);
}

#[test]
fn flags_alone_make_a_config() {
    let cfg = config::load_with_env(
        &args(&[
            "--upstream",
            "https://api.example.com/v1",
            "--upstream-ca",
            "/x/ca.pem",
        ]),
        &env_of(&[]),
    )
    .unwrap();
    assert_eq!(
        cfg.listeners[0].addr,
        config::DEFAULT_LISTEN.parse().unwrap()
    );
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].prefix, "/");
    assert_eq!(cfg.routes[0].group, "default");
    let up = &cfg.groups[0].upstreams[0];
    assert_eq!(up.url.path_prefix, "/v1");
    assert_eq!(up.ca_file, Some(PathBuf::from("/x/ca.pem")));
}

#[test]
fn flag_errors_name_the_flag() {
    let no_upstream = config::load_with_env(&args(&[]), &env_of(&[])).unwrap_err();
    assert!(no_upstream.message().contains("no route"), "{no_upstream}");

    let bad = config::load_with_env(&args(&["--upstream", "ftp://x"]), &env_of(&[])).unwrap_err();
    assert_eq!(bad.subject(), Some("--upstream"));
    assert!(
        bad.to_string()
            .starts_with("command line: flag `--upstream`: "),
        "{bad}"
    );

    let ca = config::load_with_env(
        &args(&["--upstream", "http://x", "--upstream-ca", "ca.pem"]),
        &env_of(&[]),
    )
    .unwrap_err();
    assert_eq!(ca.subject(), Some("--upstream-ca"));

    let filter = config::load_with_env(
        &args(&["--upstream", "http://x", "--log-filter", "a=b=c"]),
        &env_of(&[]),
    )
    .unwrap_err();
    assert_eq!(filter.subject(), Some("--log-filter"));

    // --upstream cannot choose among several groups.
    let dir = tempfile::tempdir().unwrap();
    let two = write_file(
        &dir,
        "two.toml",
        &format!("{BASE}[[group]]\nname = \"h\"\n[[group.upstream]]\nurl = \"http://y\"\n"),
    );
    let err = config::load_with_env(
        &args(&["--config", two.to_str().unwrap(), "--upstream", "http://z"]),
        &env_of(&[]),
    )
    .unwrap_err();
    assert_eq!(err.subject(), Some("--upstream"));

    // A bad duration flag is refused by the argument parser.
    let mut argv = vec!["chunkgate", "--drain-timeout", "soon"];
    assert!(Cli::try_parse_from(argv.drain(..)).is_err());
    // --tls-cert needs --tls-key.
    assert!(Cli::try_parse_from(["chunkgate", "--tls-cert", "c.pem"]).is_err());
}

#[test]
fn load_reports_a_missing_file() {
    let err = config::load_with_env(
        &args(&["--config", "/nonexistent/chunkgate.toml"]),
        &env_of(&[]),
    )
    .unwrap_err();
    assert_eq!(err.origin(), "/nonexistent/chunkgate.toml");
    assert!(err.message().contains("cannot read"), "{err}");
}

#[test]
fn check_config_command_prints_redacted_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .arg("check-config")
        .arg(example_path())
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("CHUNKGATE_CLIENT_TOKEN", CLIENT_TOKEN)
        .output()
        .expect("run chunkgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("[[route]]"), "{stdout}");
    assert!(stdout.contains(REDACTED));
    assert!(!stdout.contains(OPENAI_KEY) && !stderr.contains(OPENAI_KEY));
    assert!(!stdout.contains(CLIENT_TOKEN) && !stderr.contains(CLIENT_TOKEN));
    // The printed configuration is itself a valid file (secrets replaced by a placeholder
    // that is a valid header value but not a valid token, so it is not reparsed whole).
    assert!(stdout.contains("drain_timeout = \"30s\""));
}

#[test]
fn check_config_command_fails_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(&dir, "bad.toml", "[limits]\nmax_headers = 0\n");
    let out = Command::new(env!("CARGO_BIN_EXE_chunkgate"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .expect("run chunkgate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: key `limits.max_headers`", bad.display())),
        "{stderr}"
    );
}

#[test]
fn check_config_checks_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "tls.toml",
        &format!(
            "{BASE}[[listener]]\naddr = \"127.0.0.1:8443\"\ntls_cert = \"{0}/missing.crt\"\ntls_key = \"{0}/missing.key\"\n",
            dir.path().display()
        ),
    );
    let err = config::check_config(&file).unwrap_err();
    assert_eq!(err.subject(), Some("listener[0].tls_cert"));
    assert!(err.message().contains("cannot read"), "{err}");
}
