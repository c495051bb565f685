//! The flags of `chunkgate serve`, applied over the file. The list-section flags (`--listen`,
//! `--upstream` ...) are written out here; every scalar setting declared with a flag becomes
//! one through [`SettingFlags`], read and checked exactly as the file's value would be.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::declare::{broken_order, lookup, Flag, Setting};
use super::error::ConfigError;
use super::kinds::Kind;
use super::settings::{MAX_CONNECTIONS, SETTINGS};
use super::url::UpstreamUrl;
use super::{
    Align, Config, ListenerConfig, RouteConfig, StreamRouteConfig, TlsServerConfig, UpstreamConfig,
    UpstreamGroup, DEFAULT_MAX_CONNECTIONS,
};

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
    /// TLS certificate chain (PEM) for the client listeners; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the client listeners; needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most client connections at once per listener.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Flags of the declared settings (`--drain-timeout`, `--max-chunk-size` ...).
    #[command(flatten)]
    pub settings: SettingFlags,
    /// Worker threads of the runtime (default: one per CPU). `1` runs everything on one
    /// thread, like a single-worker nginx or HAProxy.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// `events`: one whole SSE event (or NDJSON line) per chunk on the routes made from
    /// flags; `chunks` (default): chunk-exact. Routes of a file set `align` themselves.
    #[arg(long, value_name = "MODE", value_parser = ["chunks", "events"])]
    pub align: Option<String>,
    /// Capture completion records of the routes made from flags to this JSON-lines file
    /// (sink `jsonl`).
    #[arg(long, value_name = "PATH")]
    pub capture_jsonl: Option<PathBuf>,
    /// Capture completion records of the routes made from flags to this SQLite database
    /// (sink `sqlite`).
    #[arg(long, value_name = "PATH")]
    pub capture_sqlite: Option<PathBuf>,
    /// POST completion records of the routes made from flags to this URL (sink `webhook`).
    #[arg(long, value_name = "URL")]
    pub capture_webhook: Option<String>,
}

/// The flags of the declared settings that were given, as typed. Each flag's syntax is
/// checked by the argument parser; its bounds when it is applied, like a file's value.
#[derive(Debug, Clone, Default)]
pub struct SettingFlags {
    /// (index in `SETTINGS`, text).
    given: Vec<(usize, String)>,
}

/// The argument id of a flag: its name without the dashes.
fn arg_id(flag: Flag) -> &'static str {
    flag.name().trim_start_matches('-')
}

impl SettingFlags {
    fn declared() -> impl Iterator<Item = (usize, &'static dyn Setting, Flag)> {
        SETTINGS
            .iter()
            .enumerate()
            .filter_map(|(i, &s)| s.flag().map(|f| (i, s, f)))
    }

    /// The declared settings given on the command line, with their text.
    fn settings(&self) -> impl Iterator<Item = (&'static dyn Setting, &str)> {
        self.given
            .iter()
            .filter_map(|(i, text)| SETTINGS.get(*i).map(|&s| (s, text.as_str())))
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for (_, setting, flag) in Self::declared() {
            let help = match flag {
                Flag::Value(_) => {
                    let bounds = setting.describe().bounds();
                    let bounds = if bounds.is_empty() {
                        String::new()
                    } else {
                        format!(", {bounds}")
                    };
                    format!("{} [file: {}{bounds}]", setting.doc(), setting.key())
                }
                Flag::Off(_) => format!("Turn off `{}`: {}", setting.key(), setting.doc()),
            };
            let arg = clap::Arg::new(arg_id(flag)).long(arg_id(flag)).help(help);
            let arg = match flag {
                Flag::Value(_) => arg
                    .value_name(setting.value_name())
                    .action(clap::ArgAction::Set)
                    .value_parser(move |text: &str| {
                        setting.parse_text(text).map(|()| text.to_string())
                    }),
                Flag::Off(_) => arg.action(clap::ArgAction::SetTrue),
            };
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = SettingFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for (i, _, flag) in Self::declared() {
            let text = match flag {
                Flag::Value(_) => matches
                    .try_get_one::<String>(arg_id(flag))
                    .ok()
                    .flatten()
                    .cloned(),
                Flag::Off(_) => matches
                    .try_get_one::<bool>(arg_id(flag))
                    .ok()
                    .flatten()
                    .filter(|&&on| on)
                    .map(|_| "false".to_string()),
            };
            if let Some(text) = text {
                self.given.retain(|(j, _)| *j != i);
                self.given.push((i, text));
            }
        }
        Ok(())
    }
}

/// Apply the flags over `cfg` (the file's configuration, or the defaults).
pub(super) fn apply(cfg: &mut Config, args: &ServeArgs) -> Result<(), ConfigError> {
    apply_listeners(cfg, args)?;
    let had_routes = !cfg.routes.is_empty();
    let file_routes = args.config.is_some() && had_routes;
    apply_upstreams(cfg, args)?;
    super::sinks::apply_flags(
        cfg,
        args.capture_jsonl.as_ref(),
        args.capture_sqlite.as_ref(),
        args.capture_webhook.as_deref(),
        !had_routes,
    )?;
    if let Some(mode) = args.align.as_deref() {
        if file_routes {
            return Err(ConfigError::flag(
                "--align",
                "the configuration file defines the routes; set `align` on each".to_string(),
            ));
        }
        let align = if mode == "events" {
            Align::Events
        } else {
            Align::Chunks
        };
        for r in &mut cfg.routes {
            r.stream.align = align;
        }
    }
    for (setting, text) in args.settings.settings() {
        let flag = setting.flag().map_or(setting.key(), Flag::name);
        setting
            .apply_text(cfg, text)
            .map_err(|m| ConfigError::flag(flag, m))?;
    }
    let given = |key: &str| args.settings.settings().any(|(s, _)| s.key() == key);
    if let Some((key, message)) = broken_order(cfg, given) {
        let flag = lookup(key).and_then(|s| s.flag()).map_or(key, Flag::name);
        return Err(ConfigError::flag(flag, message));
    }
    Ok(())
}

fn apply_listeners(cfg: &mut Config, args: &ServeArgs) -> Result<(), ConfigError> {
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
        MAX_CONNECTIONS
            .check(&n)
            .map_err(|m| ConfigError::flag("--max-connections", m))?;
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
    Ok(())
}

fn apply_upstreams(cfg: &mut Config, args: &ServeArgs) -> Result<(), ConfigError> {
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
                inject_headers: Vec::new(),
                strip_prefix: None,
                rewrite_prefix: None,
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
                stream: StreamRouteConfig::default(),
                capture: super::RouteCapture::default(),
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::config::load_with_env;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(list: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = std::iter::once("chunkgate").chain(list.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.serve)
    }

    fn load(list: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["--upstream", "http://127.0.0.1:9000"];
        all.extend_from_slice(list);
        load_with_env(&args(&all).expect("flags parse"), &|_| None)
    }

    /// The configuration the flags make, if they parse and apply.
    fn try_load(list: &[&str]) -> Option<Config> {
        let mut all = vec!["--upstream", "http://127.0.0.1:9000"];
        all.extend_from_slice(list);
        load_with_env(&args(&all).ok()?, &|_| None).ok()
    }

    #[test]
    fn serve_flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    /// Flag values to try, one of which each flag must accept and change its setting by.
    const SAMPLES: [&str; 8] = ["7", "2000", "0.7", "3s", "2KiB", "json", "debug", "false"];

    #[test]
    fn every_declared_flag_sets_its_setting() {
        let base = load(&[]).unwrap();
        let base_text = base.to_toml(false);
        for (_, s, flag) in SettingFlags::declared() {
            let before = s.render(&base);
            let cfg = match flag {
                Flag::Off(name) => load(&[name]).unwrap(),
                Flag::Value(name) => SAMPLES
                    .iter()
                    .filter_map(|v| try_load(&[name, v]))
                    .find(|cfg| s.render(cfg) != before)
                    .unwrap_or_else(|| panic!("{name}: no sample was applied")),
            };
            let after = s.render(&cfg);
            assert_ne!(after, before, "{}", s.key());
            let expected = base_text.replacen(&format!("{before}\n"), &format!("{after}\n"), 1);
            assert_eq!(cfg.to_toml(false), expected, "only {} changes", s.key());
        }
    }

    #[test]
    fn flag_syntax_is_refused_by_the_parser_and_bounds_name_the_flag() {
        assert!(args(&["--retry-attempts", "three"]).is_err());
        assert!(args(&["--max-chunk-size", "1XB"]).is_err());
        let err = load(&["--retry-attempts", "11"]).unwrap_err();
        assert_eq!(err.subject(), Some("--retry-attempts"));
        assert_eq!(err.message(), "must be between 1 and 10, found 11");
        let err = load(&["--max-connections", "0"]).unwrap_err();
        assert_eq!(err.subject(), Some("--max-connections"));
    }

    #[test]
    fn chunk_size_ceiling_reads_the_same_from_file_and_flag() {
        let from_flag = load(&["--max-chunk-size", "2GiB"]).unwrap_err();
        assert_eq!(from_flag.subject(), Some("--max-chunk-size"));
        let from_file = Config::from_toml_str_with_env(
            "[limits]\nmax_chunk_size = \"2GiB\"\n",
            "t.toml",
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(from_file.subject(), Some("limits.max_chunk_size"));
        assert_eq!(from_flag.message(), "must be at most 1GiB");
        assert_eq!(from_file.message(), from_flag.message());
        assert!(load(&["--max-chunk-size", "1GiB"]).is_ok());
    }

    #[test]
    fn a_flag_breaking_an_ordering_with_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_body_size = \"2MiB\"\n").unwrap();
        let path = path.to_str().unwrap();
        let err = load(&["--config", path, "--max-chunk-size", "4MiB"]).unwrap_err();
        assert_eq!(err.subject(), Some("--max-chunk-size"));
        assert_eq!(err.message(), "must not exceed limits.max_body_size");
        assert!(load(&["--config", path, "--max-chunk-size", "2MiB"]).is_ok());
    }
}
