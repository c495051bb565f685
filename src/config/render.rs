//! The configuration written out: the effective configuration as TOML (`check-config`), and
//! the reference of every key as a Markdown table (`check-config --reference`, the README).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::declare::{one_line, sections, ListTable, Setting};
use super::error::ConfigError;
use super::settings::{LISTS, SETTINGS};
use super::units::{format_duration, quote, size_toml};
use super::{Align, Config};

/// What [`Config::to_toml`] prints for a secret.
pub const REDACTED: &str = "<redacted>";

fn quote_path(p: &std::path::Path) -> String {
    quote(&p.display().to_string())
}

impl Config {
    /// The configuration as a TOML file in the schema [`Config::from_toml_str`] reads, every
    /// setting written out. With `redact`, injected header values and bearer tokens are
    /// replaced by [`REDACTED`].
    pub fn to_toml(&self, redact: bool) -> String {
        let mut o = String::new();
        let secret = |s: &str| if redact { quote(REDACTED) } else { quote(s) };
        // Top-level keys come before the first table.
        for s in SETTINGS.iter().filter(|s| s.section().is_empty()) {
            let _ = writeln!(o, "{}", s.render(self));
        }
        for l in &self.listeners {
            let _ = writeln!(o, "\n[[listener]]\naddr = {}", quote(&l.addr.to_string()));
            if let Some(tls) = &l.tls {
                let _ = writeln!(o, "tls_cert = {}", quote_path(&tls.cert));
                let _ = writeln!(o, "tls_key = {}", quote_path(&tls.key));
            }
            let _ = writeln!(o, "max_connections = {}", l.max_connections);
        }
        if let Some(admin) = self.admin {
            let _ = writeln!(o, "\n[admin]\naddr = {}", quote(&admin.to_string()));
        }
        for r in &self.routes {
            let _ = writeln!(o, "\n[[route]]");
            let _ = writeln!(
                o,
                "prefix = {}\ngroup = {}",
                quote(&r.prefix),
                quote(&r.group)
            );
            let _ = writeln!(o, "strip_prefix = {}", r.strip_prefix);
            let _ = writeln!(o, "rewrite_prefix = {}", quote(&r.rewrite_prefix));
            if !r.inject_headers.is_empty() {
                let fields: Vec<String> = r
                    .inject_headers
                    .iter()
                    .map(|(n, v)| format!("{} = {}", quote(n), secret(v)))
                    .collect();
                let _ = writeln!(o, "inject_headers = {{ {} }}", fields.join(", "));
            }
            if !r.require_bearer.is_empty() {
                let tokens: Vec<String> = r.require_bearer.iter().map(|t| secret(t)).collect();
                let _ = writeln!(o, "require_bearer = [{}]", tokens.join(", "));
            }
            let st = &r.stream;
            let align = match st.align {
                Align::Chunks => "chunks",
                Align::Events => "events",
            };
            let _ = writeln!(o, "align = {}", quote(align));
            let _ = writeln!(o, "max_event = {}", size_toml(st.max_event as u64));
            let _ = writeln!(o, "tap = {}", st.tap);
            let _ = writeln!(o, "inject_include_usage = {}", st.inject_include_usage);
            if let Some(every) = st.keepalive {
                let _ = writeln!(o, "keepalive = {}", quote(&format_duration(every)));
            }
            super::sinks::render_route(&mut o, &r.capture);
        }
        for sink in &self.sinks {
            super::sinks::render_sink(&mut o, sink, &secret);
        }
        for g in &self.groups {
            let _ = writeln!(o, "\n[[group]]\nname = {}", quote(&g.name));
            for u in &g.upstreams {
                let _ = writeln!(o, "[[group.upstream]]\nurl = {}", quote(&u.url.to_string()));
                let _ = writeln!(o, "weight = {}", u.weight);
                if let Some(ca) = &u.ca_file {
                    let _ = writeln!(o, "ca_file = {}", quote_path(ca));
                }
                if !u.inject_headers.is_empty() {
                    let fields: Vec<String> = u
                        .inject_headers
                        .iter()
                        .map(|(n, v)| format!("{} = {}", quote(n), secret(v)))
                        .collect();
                    let _ = writeln!(o, "inject_headers = {{ {} }}", fields.join(", "));
                }
                if let Some(strip) = u.strip_prefix {
                    let _ = writeln!(o, "strip_prefix = {strip}");
                }
                if let Some(rewrite) = &u.rewrite_prefix {
                    let _ = writeln!(o, "rewrite_prefix = {}", quote(rewrite));
                }
            }
        }
        for section in sections() {
            let _ = writeln!(o, "\n[{section}]");
            for s in SETTINGS.iter().filter(|s| s.section() == section) {
                let _ = writeln!(o, "{}", s.render(self));
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------

/// The configuration reference: a Markdown table of every key of the file with its type,
/// default, bounds, flag and meaning, generated from the declarations. The README's
/// configuration reference is this text (a test keeps it so).
pub fn reference() -> String {
    let mut o = String::new();
    o.push_str("| key | type | default | bounds | flag | meaning |\n");
    o.push_str("|---|---|---|---|---|---|\n");
    let scalar = |o: &mut String, s: &dyn Setting, key: String| {
        row(
            o,
            [
                key,
                s.describe().type_name().to_string(),
                s.default_text(),
                s.describe().bounds(),
                s.flag()
                    .map_or(String::new(), |f| format!("`{}`", f.name())),
                s.doc(),
            ],
        );
    };
    for &s in SETTINGS.iter().filter(|s| s.section().is_empty()) {
        scalar(&mut o, s, format!("`{}`", s.key()));
    }
    for list in LISTS {
        list_rows(&mut o, list);
    }
    for section in sections() {
        for &s in SETTINGS.iter().filter(|s| s.section() == section) {
            scalar(&mut o, s, format!("`[{section}] {}`", s.name()));
        }
    }
    o
}

fn list_rows(o: &mut String, list: &ListTable) {
    for k in list.keys {
        row(
            o,
            [
                format!("`{} {}`", list.header, k.name),
                k.kind.type_name().to_string(),
                k.default.to_string(),
                k.kind.bounds(),
                k.flag.map_or(String::new(), |f| format!("`{f}`")),
                one_line(k.doc),
            ],
        );
    }
}

fn row(o: &mut String, cells: [String; 6]) {
    o.push('|');
    for cell in cells {
        let _ = write!(o, " {} |", cell.replace('|', "\\|"));
    }
    o.push('\n');
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Arguments of `chunkgate check-config`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML file to check.
    #[arg(required_unless_present = "reference")]
    pub file: Option<PathBuf>,
    /// Print nothing on success; only the exit status tells.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the reference of every configuration key (a Markdown table) and exit.
    #[arg(long, conflicts_with = "file")]
    pub reference: bool,
}

/// `chunkgate check-config`: validate a file (certificates and CA files included) and print
/// the effective configuration, secrets redacted. Exit status 0 when valid, 1 otherwise.
/// With `--reference`, print the configuration reference instead.
pub fn check_config_main(args: CheckConfigArgs) -> std::process::ExitCode {
    let file = match (&args.file, args.reference) {
        (_, true) => {
            print!("{}", reference());
            return std::process::ExitCode::SUCCESS;
        }
        (Some(file), false) => file,
        (None, false) => {
            eprintln!("error: no file to check");
            return std::process::ExitCode::FAILURE;
        }
    };
    match check_config(file) {
        Ok((effective, notes)) => {
            if !args.quiet {
                print!("{effective}");
                for n in notes {
                    eprintln!("note: {n}");
                }
                eprintln!("{}: ok", file.display());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const BEGIN: &str = "<!-- reference: generated by `chunkgate check-config --reference` -->\n";
    const END: &str = "<!-- end of reference -->";

    #[test]
    fn readme_reference_is_the_generated_one() {
        let readme = repo_file("README.md");
        let start = readme
            .find(BEGIN)
            .expect("README.md has the reference's start marker");
        let body = &readme[start + BEGIN.len()..];
        let end = body
            .find(END)
            .expect("README.md has the reference's end marker");
        assert!(
            body[..end] == reference(),
            "README.md's configuration reference is out of date: replace the table between the \
             markers with the output of `chunkgate check-config --reference`"
        );
    }

    /// The lines of the example file's first table named `header` (`""`: the top level).
    fn example_table<'a>(example: &'a str, header: &str) -> Vec<&'a str> {
        let mut lines = example.lines();
        if !header.is_empty() {
            lines
                .by_ref()
                .find(|l| l.trim() == header)
                .unwrap_or_else(|| panic!("the example has no {header}"));
        }
        lines.take_while(|l| !l.starts_with('[')).collect()
    }

    #[test]
    fn example_file_shows_every_key() {
        let example = repo_file("chunkgate.example.toml");
        let shows = |table: &[&str], name: &str| {
            let set = format!("{name} = ");
            let commented = format!("# {name} = ");
            table
                .iter()
                .any(|l| l.starts_with(&set) || l.starts_with(&commented))
        };
        for s in SETTINGS {
            let header = match s.section() {
                "" => String::new(),
                section => format!("[{section}]"),
            };
            let table = example_table(&example, &header);
            assert!(
                shows(&table, s.name()),
                "the example does not show {}",
                s.key()
            );
        }
        for list in LISTS {
            let table = example_table(&example, list.header);
            for k in list.keys {
                assert!(
                    shows(&table, k.name),
                    "the example does not show {} {}",
                    list.header,
                    k.name
                );
            }
        }
    }

    #[test]
    fn reference_has_a_row_per_key() {
        let text = reference();
        let rows = text.lines().count() - 2;
        let list_keys: usize = LISTS.iter().map(|l| l.keys.len()).sum();
        assert_eq!(rows, SETTINGS.len() + list_keys);
        assert!(text.contains(
            "| `[limits] max_chunk_size` | size | `\"1MiB\"` | 1 to 1GiB | `--max-chunk-size` |"
        ));
    }
}
