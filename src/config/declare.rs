//! The machinery behind the declarations in `settings.rs`: one [`Decl`] per scalar setting,
//! seen by the file reader, the flags, `check-config` and the reference through the
//! [`Setting`] trait, and the `settings!` macro that writes the declarations' code.

use super::error::ConfigError;
use super::file::{Ctx, Node, S};
use super::kinds::{Describe, Kind};
use super::settings::{ORDERED, SETTINGS};
use super::Config;

/// A setting's command-line flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flag {
    /// `--name VALUE`.
    Value(&'static str),
    /// `--name` alone, turning a boolean setting off (`--no-access-log`).
    Off(&'static str),
}

impl Flag {
    /// The flag as typed, `--name`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Flag::Value(n) | Flag::Off(n) => n,
        }
    }
}

/// One scalar setting: where its value lives in [`Config`], of what kind, and its default.
pub(super) struct Decl<K: Kind> {
    /// Bounds, parsing and rendering.
    pub(super) kind: K,
    /// Dotted key in the file: `timeouts.connect`, or `drain_timeout` at the top.
    pub(super) key: &'static str,
    /// The declaration's doc comment: the reference's description.
    pub(super) doc: &'static str,
    pub(super) default: fn() -> K::Value,
    pub(super) get: fn(&Config) -> K::Value,
    pub(super) set: fn(&mut Config, K::Value),
    pub(super) flag: Option<Flag>,
}

/// A [`Decl`] of any kind, as every consumer sees it.
pub(super) trait Setting: Sync {
    /// Dotted key in the file.
    fn key(&self) -> &'static str;
    /// Doc comment, its lines joined.
    fn doc(&self) -> String;
    fn flag(&self) -> Option<Flag>;
    fn describe(&self) -> &dyn Describe;
    /// `--help` placeholder of the flag's value.
    fn value_name(&self) -> &'static str;
    /// The default as the reference shows it: TOML in backticks, or `none`/`unlimited`.
    fn default_text(&self) -> String;
    /// Set the default.
    fn reset(&self, cfg: &mut Config);
    /// Read, check and set the value the file gives.
    fn read(&self, cfg: &mut Config, ctx: &Ctx<'_>, node: &S<Node>) -> Result<(), ConfigError>;
    /// Check a flag's syntax (bounds are checked by [`Setting::apply_text`]).
    fn parse_text(&self, text: &str) -> Result<(), String>;
    /// Parse, check and set a flag's value.
    fn apply_text(&self, cfg: &mut Config, text: &str) -> Result<(), String>;
    /// `name = value`, or `# name: none` when an optional value is absent.
    fn render(&self, cfg: &Config) -> String;
    /// The value as a number, for the declared orderings.
    fn magnitude(&self, cfg: &Config) -> Option<u128>;

    /// The table the key sits in (`timeouts`), empty at the top of the file.
    fn section(&self) -> &'static str {
        self.key()
            .rsplit_once('.')
            .map_or("", |(section, _)| section)
    }
    /// The key within its table (`connect`).
    fn name(&self) -> &'static str {
        self.key()
            .rsplit_once('.')
            .map_or(self.key(), |(_, name)| name)
    }
}

/// A doc comment as one line.
pub(super) fn one_line(doc: &str) -> String {
    doc.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl<K: Kind> Setting for Decl<K> {
    fn key(&self) -> &'static str {
        self.key
    }
    fn doc(&self) -> String {
        one_line(self.doc)
    }
    fn flag(&self) -> Option<Flag> {
        self.flag
    }
    fn describe(&self) -> &dyn Describe {
        &self.kind
    }
    fn value_name(&self) -> &'static str {
        self.kind.value_name()
    }
    fn default_text(&self) -> String {
        match self.kind.render(&(self.default)()) {
            Some(text) => format!("`{text}`"),
            None => self.kind.absent().to_string(),
        }
    }
    fn reset(&self, cfg: &mut Config) {
        (self.set)(cfg, (self.default)());
    }
    fn read(&self, cfg: &mut Config, ctx: &Ctx<'_>, node: &S<Node>) -> Result<(), ConfigError> {
        let value = self.kind.read(ctx, node, self.key)?;
        (self.set)(cfg, value);
        Ok(())
    }
    fn parse_text(&self, text: &str) -> Result<(), String> {
        self.kind.parse_text(text).map(|_| ())
    }
    fn apply_text(&self, cfg: &mut Config, text: &str) -> Result<(), String> {
        let value = self.kind.parse_text(text)?;
        self.kind.check(&value)?;
        (self.set)(cfg, value);
        Ok(())
    }
    fn render(&self, cfg: &Config) -> String {
        match self.kind.render(&(self.get)(cfg)) {
            Some(text) => format!("{} = {text}", self.name()),
            None => format!("# {}: {}", self.name(), self.kind.absent()),
        }
    }
    fn magnitude(&self, cfg: &Config) -> Option<u128> {
        self.kind.magnitude(&(self.get)(cfg))
    }
}

/// One key of a list section (`[[listener]]`, `[[route]]` ...). Its value is read by hand in
/// `file.rs`; this is what the unknown-key check and the reference know of it.
pub(super) struct ListKey {
    pub(super) name: &'static str,
    pub(super) kind: &'static dyn Describe,
    /// The default as the reference shows it.
    pub(super) default: &'static str,
    pub(super) flag: Option<&'static str>,
    pub(super) doc: &'static str,
}

/// A list section.
pub(super) struct ListTable {
    /// As written in the file: `[[group.upstream]]`.
    pub(super) header: &'static str,
    pub(super) keys: &'static [ListKey],
    /// A nested list section allowed in each element (`upstream` in `[[group]]`).
    pub(super) nested: Option<&'static str>,
}

impl ListTable {
    /// The keys an element may hold.
    pub(super) fn names(&self) -> Vec<&'static str> {
        let keys = self.keys.iter().map(|k| k.name);
        keys.chain(self.nested).collect()
    }
}

/// The declared setting with this dotted key.
pub(super) fn lookup(key: &str) -> Option<&'static dyn Setting> {
    SETTINGS.iter().copied().find(|s| s.key() == key)
}

/// The tables that hold scalar settings, in declaration order (the top level excluded).
pub(super) fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in SETTINGS {
        let section = s.section();
        if !section.is_empty() && !out.contains(&section) {
            out.push(section);
        }
    }
    out
}

/// The first declared ordering ([`ORDERED`]) that `cfg` breaks, as the key to blame and what
/// is wrong with it. The lower key is blamed when `given` (set by the source being checked:
/// the file, or the flags) or when the upper one is not; otherwise the upper one.
pub(super) fn broken_order(
    cfg: &Config,
    given: impl Fn(&str) -> bool,
) -> Option<(&'static str, String)> {
    for &(low, high) in ORDERED {
        let (Some(l), Some(h)) = (lookup(low), lookup(high)) else {
            continue;
        };
        let (Some(lv), Some(hv)) = (l.magnitude(cfg), h.magnitude(cfg)) else {
            continue;
        };
        if lv <= hv {
            continue;
        }
        return Some(if given(low) || !given(high) {
            (low, format!("must not exceed {high}"))
        } else {
            (high, format!("must be at least {low}"))
        });
    }
    None
}

/// Declares the scalar settings: generates the section structs with their `Default`, and
/// `SETTINGS`, the table every consumer reads.
///
/// ```text
/// settings! {
///     placed {
///         /// Doc line.
///         "dotted.key" => KIND, default EXPR, field(path.in.config) [, flag "--name"];
///         "dotted.key" => KIND, default EXPR, via(get |c| EXPR, set |c, v| EXPR);
///     }
///     /// Struct doc.
///     section name: StructName {
///         /// Doc line.
///         field: Type => KIND, default EXPR [, flag "--name" | , off "--no-name"];
///     }
/// }
/// ```
///
/// `placed` settings live in types the macro does not write (the top-level `Config`, the
/// codec's limits); a `section` is a table of the file and a struct the macro writes, whose
/// fields are its keys.
macro_rules! settings {
    (
        placed {
            $(
                $(#[doc = $pdoc:literal])*
                $pkey:literal => $pkind:expr, default $pdefault:expr, $how:ident $access:tt
                    $(, $pflag:ident $pflagname:literal)? ;
            )*
        }
        $(
            $(#[doc = $sdoc:literal])*
            section $section:ident: $Struct:ident {
                $(
                    $(#[doc = $fdoc:literal])*
                    $field:ident: $ty:ty => $fkind:expr, default $fdefault:expr
                        $(, $fflag:ident $fflagname:literal)? ;
                )*
            }
        )*
    ) => {
        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $Struct {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
            }

            impl Default for $Struct {
                fn default() -> Self {
                    $Struct { $( $field: $fdefault, )* }
                }
            }
        )*

        /// Every scalar setting, in the order of `check-config` output and of the reference.
        pub(super) static SETTINGS: &[&dyn $crate::config::declare::Setting] = &[
            $(
                &$crate::config::declare::Decl {
                    kind: $pkind,
                    key: $pkey,
                    doc: concat!($($pdoc, "\n",)*),
                    default: || $pdefault,
                    get: settings!(@get $how $access),
                    set: settings!(@set $how $access),
                    flag: settings!(@flag $($pflag $pflagname)?),
                },
            )*
            $($(
                &$crate::config::declare::Decl {
                    kind: $fkind,
                    key: concat!(stringify!($section), ".", stringify!($field)),
                    doc: concat!($($fdoc, "\n",)*),
                    default: || $fdefault,
                    get: |c| ::std::clone::Clone::clone(&c.$section.$field),
                    set: |c, v| c.$section.$field = v,
                    flag: settings!(@flag $($fflag $fflagname)?),
                },
            )*)*
        ];
    };
    (@get field ($($path:ident).+)) => { |c| ::std::clone::Clone::clone(&c.$($path).+) };
    (@set field ($($path:ident).+)) => { |c, v| c.$($path).+ = v };
    (@get via (get $get:expr, set $set:expr)) => { $get };
    (@set via (get $get:expr, set $set:expr)) => { $set };
    (@flag) => { None };
    (@flag flag $name:literal) => { Some($crate::config::declare::Flag::Value($name)) };
    (@flag off $name:literal) => { Some($crate::config::declare::Flag::Off($name)) };
}

pub(super) use settings;

/// Declares the keys of one list section as a [`ListTable`] static:
///
/// ```text
/// list_table! {
///     NAME "[[header]]" [nested "child"] {
///         /// Doc line.
///         key: DESCRIBE_EXPR, default "as shown" [, flag "--name"];
///     }
/// }
/// ```
macro_rules! list_table {
    (
        $name:ident $header:literal $(nested $nested:literal)? {
            $(
                $(#[doc = $doc:literal])*
                $key:ident: $kind:expr, default $default:expr $(, flag $flag:literal)? ;
            )*
        }
    ) => {
        pub(super) static $name: $crate::config::declare::ListTable =
            $crate::config::declare::ListTable {
                header: $header,
                nested: list_table!(@some $($nested)?),
                keys: &[
                    $(
                        $crate::config::declare::ListKey {
                            name: stringify!($key),
                            kind: &$kind,
                            default: $default,
                            flag: list_table!(@some $($flag)?),
                            doc: concat!($($doc, "\n",)*),
                        },
                    )*
                ],
            };
    };
    (@some) => { None };
    (@some $value:literal) => { Some($value) };
}

pub(super) use list_table;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;

    fn defaults() -> Config {
        Config::simple("127.0.0.1:8080".parse().unwrap(), Vec::new())
    }

    #[test]
    fn keys_and_flags_are_unique() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key()).collect();
        let mut flags: Vec<&str> = SETTINGS
            .iter()
            .filter_map(|s| s.flag())
            .map(Flag::name)
            .collect();
        let (nk, nf) = (keys.len(), flags.len());
        keys.sort_unstable();
        keys.dedup();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!(keys.len(), nk, "a key is declared twice");
        assert_eq!(flags.len(), nf, "a flag is declared twice");
        assert!(flags.iter().all(|f| f.starts_with("--")), "{flags:?}");
    }

    #[test]
    fn orderings_name_declared_settings_of_one_type() {
        for &(low, high) in ORDERED {
            let l = lookup(low).unwrap_or_else(|| panic!("{low} is not declared"));
            let h = lookup(high).unwrap_or_else(|| panic!("{high} is not declared"));
            assert_eq!(
                l.describe().type_name(),
                h.describe().type_name(),
                "{low} vs {high}"
            );
        }
    }

    #[test]
    fn defaults_are_the_declared_ones() {
        let cfg = defaults();
        for s in SETTINGS {
            let mut other = cfg.clone();
            s.reset(&mut other);
            assert_eq!(other, cfg, "{} is not at its declared default", s.key());
        }
        // The codec's defaults, which `LimitsConfig::default` uses, are the declared ones.
        assert_eq!(LimitsConfig::default(), cfg.limits);
    }

    /// Values to try for each setting, one of which each setting must accept and differ by.
    const SAMPLES: [&str; 11] = [
        "false",
        "7",
        "2000",
        "0.7",
        "\"3s\"",
        "\"2KiB\"",
        "\"2GiB\"",
        "[500, 429]",
        "\"json\"",
        "\"debug\"",
        "true",
    ];

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(text, "t.toml", &|_| None)
    }

    #[test]
    fn every_setting_is_read_into_its_own_field() {
        let base = parse("").unwrap();
        let base_text = base.to_toml(false);
        for s in SETTINGS {
            let before = s.render(&base);
            let read = SAMPLES.iter().find_map(|sample| {
                let line = format!("{} = {sample}", s.name());
                let text = match s.section() {
                    "" => format!("{line}\n"),
                    section => format!("[{section}]\n{line}\n"),
                };
                let cfg = parse(&text).ok()?;
                (line != before && s.render(&cfg) == line).then_some((cfg, line))
            });
            let (cfg, line) = read.unwrap_or_else(|| panic!("{}: no sample was read", s.key()));
            // Only this setting changed, and `check-config` writes what was read.
            let expected = base_text.replacen(&format!("{before}\n"), &format!("{line}\n"), 1);
            assert_eq!(cfg.to_toml(false), expected, "{}", s.key());
        }
    }

    #[test]
    fn a_bad_value_is_named_by_file_line_and_key() {
        for s in SETTINGS {
            let text = match s.section() {
                "" => format!("\n{} = []\n", s.name()),
                section => format!("[{section}]\n{} = {{}}\n", s.name()),
            };
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line(), Some(2), "{err}");
            assert_eq!(err.subject(), Some(s.key()), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("t.toml:2: key `{}`: ", s.key())),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let err = parse("[pool]\nmax_idle = 1\n").unwrap_err();
        assert_eq!(err.subject(), Some("pool.max_idle"));
        assert_eq!(
            err.message(),
            "unknown field `max_idle`, expected one of `max_idle_per_upstream`, `idle_timeout`, \
             `max_connections_per_upstream`"
        );
    }
}
