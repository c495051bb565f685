//! Value kinds: for one type of setting (a duration, a size, a count ...), how a value is read
//! from the file and from a flag, checked against its bounds, written back as TOML and
//! described in the reference. A kind carries its bounds, so a setting's declaration states
//! them once and the file, the flags and the reference all use them.

use std::marker::PhantomData;
use std::time::Duration;

use super::error::ConfigError;
use super::file::{Ctx, Node, S};
use super::units::{format_duration, parse_duration, parse_size, quote, size_text, size_toml};

/// One value as written in the file, its strings already `${VAR}`-expanded.
pub(super) enum Leaf {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An array, table or datetime, named by its type.
    Other(&'static str),
}

impl Leaf {
    /// The value's type for an error message. Strings are not echoed: they may be secrets.
    pub(super) fn found(&self) -> String {
        match self {
            Leaf::Str(_) => "string".to_string(),
            Leaf::Int(n) => format!("integer `{n}`"),
            Leaf::Float(x) => format!("float `{x}`"),
            Leaf::Bool(b) => format!("boolean `{b}`"),
            Leaf::Other(t) => (*t).to_string(),
        }
    }

    pub(super) fn invalid(&self, expected: &str) -> String {
        format!("invalid type: {}, expected {expected}", self.found())
    }
}

/// What the reference says about a key's values.
pub(super) trait Describe: Sync {
    /// The type column: `duration`, `size`, `integer` ...
    fn type_name(&self) -> &'static str;
    /// The bounds column; empty when every value of the type is accepted.
    fn bounds(&self) -> String;
}

/// How the values of one type of setting are read, checked and written.
pub(super) trait Kind: Sync {
    /// The Rust type the setting holds.
    type Value: Clone;

    /// The type column of the reference: `duration`, `size`, `integer` ...
    fn type_name(&self) -> &'static str;

    /// The bounds column of the reference; empty when every value of the type is accepted.
    fn bounds(&self) -> String {
        String::new()
    }

    /// Placeholder for the value in `--help`.
    fn value_name(&self) -> &'static str {
        "VALUE"
    }

    /// The value a file leaf holds: its type and syntax checked.
    fn convert(&self, leaf: Leaf) -> Result<Self::Value, String>;

    /// The value a flag's text holds: its syntax checked, not its bounds.
    fn parse_text(&self, text: &str) -> Result<Self::Value, String> {
        self.convert(Leaf::Str(text.to_string()))
    }

    /// The bounds: `Err` says what the value must be.
    fn check(&self, _value: &Self::Value) -> Result<(), String> {
        Ok(())
    }

    /// The value as TOML, or `None` for an absent optional value.
    fn render(&self, value: &Self::Value) -> Option<String>;

    /// How the reference and `check-config` name an absent optional value.
    fn absent(&self) -> &'static str {
        "none"
    }

    /// The value as a number, for settings that must not exceed another; `None` when absent.
    fn magnitude(&self, _value: &Self::Value) -> Option<u128> {
        None
    }

    /// Read, convert and check a value of the file; errors name `key` and the value's line.
    fn read(&self, ctx: &Ctx<'_>, node: &S<Node>, key: &str) -> Result<Self::Value, ConfigError> {
        let leaf = ctx.leaf(node, key)?;
        let value = self.convert(leaf).map_err(|m| ctx.err(node, key, m))?;
        self.check(&value).map_err(|m| ctx.err(node, key, m))?;
        Ok(value)
    }
}

impl<K: Kind> Describe for K {
    fn type_name(&self) -> &'static str {
        Kind::type_name(self)
    }
    fn bounds(&self) -> String {
        Kind::bounds(self)
    }
}

/// A description only, for list-section keys, whose values `file.rs` checks by hand.
pub(super) struct Described {
    type_name: &'static str,
    bounds: &'static str,
}

impl Described {
    pub(super) const fn new(type_name: &'static str, bounds: &'static str) -> Self {
        Described { type_name, bounds }
    }
}

impl Describe for Described {
    fn type_name(&self) -> &'static str {
        self.type_name
    }
    fn bounds(&self) -> String {
        self.bounds.to_string()
    }
}

/// A duration greater than zero, written as a string with a unit (`"5s"`, `"250ms"`).
pub(super) struct Time;

impl Kind for Time {
    type Value = Duration;

    fn type_name(&self) -> &'static str {
        "duration"
    }
    fn bounds(&self) -> String {
        "> 0".to_string()
    }
    fn value_name(&self) -> &'static str {
        "DURATION"
    }
    fn convert(&self, leaf: Leaf) -> Result<Duration, String> {
        match leaf {
            Leaf::Str(s) => parse_duration(&s),
            other => Err(format!(
                "expected a duration string like \"5s\", \"250ms\" or \"2m\", found {}",
                other.found()
            )),
        }
    }
    fn check(&self, value: &Duration) -> Result<(), String> {
        if value.is_zero() {
            return Err("must be greater than zero".to_string());
        }
        Ok(())
    }
    fn render(&self, value: &Duration) -> Option<String> {
        Some(quote(&format_duration(*value)))
    }
    fn magnitude(&self, value: &Duration) -> Option<u128> {
        Some(value.as_nanos())
    }
}

/// A byte size from `min` to `max`: an integer, or a string with a unit (`"64KiB"`), held as
/// `T` (`u64` or `usize`).
pub(super) struct Size<T> {
    min: u64,
    max: u64,
    held_as: PhantomData<fn() -> T>,
}

impl<T> Size<T> {
    /// Any size above zero.
    pub(super) const fn positive() -> Self {
        Self::between(1, u64::MAX)
    }
    /// Any size, zero included.
    pub(super) const fn any() -> Self {
        Self::between(0, u64::MAX)
    }
    /// From one byte to `max`.
    pub(super) const fn at_most(max: u64) -> Self {
        Self::between(1, max)
    }
    pub(super) const fn between(min: u64, max: u64) -> Self {
        Size {
            min,
            max,
            held_as: PhantomData,
        }
    }

    fn below_min(&self) -> String {
        match self.min {
            0 => "must not be negative".to_string(),
            1 => "must be greater than zero".to_string(),
            min => format!("must be at least {}", size_text(min)),
        }
    }

    fn check_bytes(&self, n: u64) -> Result<(), String> {
        if n < self.min {
            return Err(self.below_min());
        }
        if n > self.max {
            return Err(format!("must be at most {}", size_text(self.max)));
        }
        Ok(())
    }
}

impl<T> Kind for Size<T>
where
    T: Copy + TryFrom<u64>,
    u64: TryFrom<T>,
{
    type Value = T;

    fn type_name(&self) -> &'static str {
        "size"
    }
    fn bounds(&self) -> String {
        match (self.min, self.max) {
            (0, u64::MAX) => ">= 0".to_string(),
            (1, u64::MAX) => "> 0".to_string(),
            (min, max) => format!("{} to {}", size_text(min), size_text(max)),
        }
    }
    fn value_name(&self) -> &'static str {
        "SIZE"
    }
    fn convert(&self, leaf: Leaf) -> Result<T, String> {
        let n = match leaf {
            Leaf::Int(n) => <u64 as TryFrom<i64>>::try_from(n).map_err(|_| self.below_min())?,
            Leaf::Str(s) => parse_size(&s)?,
            other => {
                return Err(format!(
                    "expected a size (bytes, or a string like \"64KiB\"), found {}",
                    other.found()
                ))
            }
        };
        T::try_from(n).map_err(|_| "is too large".to_string())
    }
    fn parse_text(&self, text: &str) -> Result<T, String> {
        let n = parse_size(text)?;
        T::try_from(n).map_err(|_| format!("size {text:?} is too large"))
    }
    fn check(&self, value: &T) -> Result<(), String> {
        self.check_bytes(u64::try_from(*value).unwrap_or(u64::MAX))
    }
    fn render(&self, value: &T) -> Option<String> {
        Some(size_toml(u64::try_from(*value).unwrap_or(u64::MAX)))
    }
    fn magnitude(&self, value: &T) -> Option<u128> {
        u64::try_from(*value).ok().map(u128::from)
    }
}

/// A whole number from `min` to `max`, held as `T`.
pub(super) struct Count<T> {
    min: i64,
    max: i64,
    held_as: PhantomData<fn() -> T>,
}

impl<T> Count<T> {
    pub(super) const fn between(min: i64, max: i64) -> Self {
        Count {
            min,
            max,
            held_as: PhantomData,
        }
    }

    fn check_number(&self, n: i64) -> Result<(), String> {
        if n < self.min || n > self.max {
            let (min, max) = (self.min, self.max);
            return Err(format!("must be between {min} and {max}, found {n}"));
        }
        Ok(())
    }
}

impl<T> Kind for Count<T>
where
    T: Copy + TryFrom<i64>,
    i64: TryFrom<T>,
{
    type Value = T;

    fn type_name(&self) -> &'static str {
        "integer"
    }
    fn bounds(&self) -> String {
        format!("{} to {}", self.min, self.max)
    }
    fn value_name(&self) -> &'static str {
        "N"
    }
    fn convert(&self, leaf: Leaf) -> Result<T, String> {
        match leaf {
            Leaf::Int(n) => {
                // Bounds first: a negative number would not fit `T`.
                self.check_number(n)?;
                T::try_from(n).map_err(|_| "is too large".to_string())
            }
            other => Err(other.invalid("an integer")),
        }
    }
    fn parse_text(&self, text: &str) -> Result<T, String> {
        text.trim()
            .parse::<i64>()
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{text:?} is not a whole number"))
    }
    fn check(&self, value: &T) -> Result<(), String> {
        self.check_number(i64::try_from(*value).unwrap_or(i64::MAX))
    }
    fn render(&self, value: &T) -> Option<String> {
        Some(i64::try_from(*value).unwrap_or(i64::MAX).to_string())
    }
    fn magnitude(&self, value: &T) -> Option<u128> {
        i64::try_from(*value)
            .ok()
            .and_then(|n| u128::try_from(n).ok())
    }
}

/// A number from `min` to `max`; `min` itself is excluded when `min_excluded`.
pub(super) struct Fraction {
    min: f64,
    min_excluded: bool,
    max: f64,
}

impl Fraction {
    /// From `min` to `max`, both included.
    pub(super) const fn between(min: f64, max: f64) -> Self {
        Fraction {
            min,
            min_excluded: false,
            max,
        }
    }
    /// Above `min`, up to `max` included.
    pub(super) const fn above(min: f64, max: f64) -> Self {
        Fraction {
            min,
            min_excluded: true,
            max,
        }
    }
}

impl Kind for Fraction {
    type Value = f64;

    fn type_name(&self) -> &'static str {
        "number"
    }
    fn bounds(&self) -> String {
        if self.min_excluded {
            format!("> {}, <= {}", self.min, self.max)
        } else {
            format!("{} to {}", self.min, self.max)
        }
    }
    fn convert(&self, leaf: Leaf) -> Result<f64, String> {
        match leaf {
            Leaf::Float(x) => Ok(x),
            // An integer is a number too: `budget_ratio = 1`.
            Leaf::Int(n) => Ok(n as f64),
            other => Err(other.invalid("a number")),
        }
    }
    fn parse_text(&self, text: &str) -> Result<f64, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))
    }
    fn check(&self, value: &f64) -> Result<(), String> {
        let (x, min, max) = (*value, self.min, self.max);
        let above_min = if self.min_excluded { x > min } else { x >= min };
        // Written so that NaN fails.
        if above_min && x <= max {
            Ok(())
        } else if self.min_excluded {
            Err(format!("must be above {min} and at most {max}, found {x}"))
        } else {
            Err(format!("must be between {min} and {max}, found {x}"))
        }
    }
    fn render(&self, value: &f64) -> Option<String> {
        // `{:?}` keeps a decimal point (`1.0`), so the text stays a TOML float.
        Some(format!("{value:?}"))
    }
}

/// `true` or `false`.
pub(super) struct Switch;

impl Kind for Switch {
    type Value = bool;

    fn type_name(&self) -> &'static str {
        "boolean"
    }
    fn convert(&self, leaf: Leaf) -> Result<bool, String> {
        match leaf {
            Leaf::Bool(b) => Ok(b),
            other => Err(other.invalid("a boolean")),
        }
    }
    fn parse_text(&self, text: &str) -> Result<bool, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not true or false"))
    }
    fn render(&self, value: &bool) -> Option<String> {
        Some(value.to_string())
    }
}

/// One of a few words, each standing for a `T`.
pub(super) struct Choice<T: 'static> {
    /// What the words name, for errors: `log format`.
    what: &'static str,
    options: &'static [(&'static str, T)],
}

impl<T> Choice<T> {
    pub(super) const fn new(what: &'static str, options: &'static [(&'static str, T)]) -> Self {
        Choice { what, options }
    }

    fn words(&self, quote: &str) -> String {
        let words: Vec<String> = self
            .options
            .iter()
            .map(|(w, _)| format!("{quote}{w}{quote}"))
            .collect();
        words.join(" or ")
    }
}

impl<T: Copy + PartialEq + Sync> Kind for Choice<T> {
    type Value = T;

    fn type_name(&self) -> &'static str {
        "string"
    }
    fn bounds(&self) -> String {
        self.words("`")
    }
    fn value_name(&self) -> &'static str {
        "WORD"
    }
    fn convert(&self, leaf: Leaf) -> Result<T, String> {
        let Leaf::Str(text) = leaf else {
            return Err(leaf.invalid("a string"));
        };
        self.options
            .iter()
            .find(|(w, _)| *w == text)
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                let words = self.words("\"");
                format!("{text:?} is not a {} (use {words})", self.what)
            })
    }
    fn render(&self, value: &T) -> Option<String> {
        self.options
            .iter()
            .find(|(_, v)| v == value)
            .map(|(w, _)| quote(w))
    }
}

/// A `RUST_LOG`-style log filter (`info,chunkgate=debug`).
pub(super) struct Filter;

impl Kind for Filter {
    type Value = String;

    fn type_name(&self) -> &'static str {
        "string"
    }
    fn bounds(&self) -> String {
        "`RUST_LOG` syntax".to_string()
    }
    fn value_name(&self) -> &'static str {
        "FILTER"
    }
    fn convert(&self, leaf: Leaf) -> Result<String, String> {
        match leaf {
            Leaf::Str(s) => Ok(s),
            other => Err(other.invalid("a string")),
        }
    }
    fn check(&self, value: &String) -> Result<(), String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(value)
            .map(|_| ())
            .map_err(|e| format!("invalid log filter {value:?}: {e}"))
    }
    fn render(&self, value: &String) -> Option<String> {
        Some(quote(value))
    }
}

/// A list of HTTP response statuses from 400 to 599, each listed once.
pub(super) struct Statuses;

impl Statuses {
    fn check_one(n: i64, earlier: &[u16]) -> Result<u16, String> {
        let status = u16::try_from(n)
            .ok()
            .filter(|s| (400..=599).contains(s))
            .ok_or_else(|| format!("must be between 400 and 599, found {n}"))?;
        if earlier.contains(&status) {
            return Err(format!("status {status} is listed twice"));
        }
        Ok(status)
    }
}

impl Kind for Statuses {
    type Value = Vec<u16>;

    fn type_name(&self) -> &'static str {
        "list of integers"
    }
    fn bounds(&self) -> String {
        "400 to 599, each once".to_string()
    }
    fn convert(&self, leaf: Leaf) -> Result<Vec<u16>, String> {
        // `read` takes the file's arrays apart itself; this is a flag's text.
        let Leaf::Str(text) = leaf else {
            return Err(leaf.invalid("an array of statuses"));
        };
        text.split(',')
            .map(|s| s.trim().parse::<u16>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{text:?} is not a comma-separated list of statuses"))
    }
    fn check(&self, value: &Vec<u16>) -> Result<(), String> {
        for (i, &s) in value.iter().enumerate() {
            Self::check_one(i64::from(s), &value[..i])?;
        }
        Ok(())
    }
    fn render(&self, value: &Vec<u16>) -> Option<String> {
        let items: Vec<String> = value.iter().map(u16::to_string).collect();
        Some(format!("[{}]", items.join(", ")))
    }
    fn read(&self, ctx: &Ctx<'_>, node: &S<Node>, key: &str) -> Result<Vec<u16>, ConfigError> {
        let Node::Array(items) = node.get_ref() else {
            let found = node.get_ref().type_name();
            let message = format!("invalid type: {found}, expected an array of statuses");
            return Err(ctx.err(node, key, message));
        };
        let mut statuses = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let key = format!("{key}[{j}]");
            let n = match ctx.leaf(item, &key)? {
                Leaf::Int(n) => n,
                other => return Err(ctx.err(item, &key, other.invalid("an integer"))),
            };
            let status = Self::check_one(n, &statuses).map_err(|m| ctx.err(item, &key, m))?;
            statuses.push(status);
        }
        Ok(statuses)
    }
}

/// A setting that may be absent: `None` unless the file or a flag gives a value.
pub(super) struct Optional<K> {
    inner: K,
    /// What an absent value means: `none`, `unlimited`.
    absent: &'static str,
}

impl<K> Optional<K> {
    pub(super) const fn new(inner: K, absent: &'static str) -> Self {
        Optional { inner, absent }
    }
}

impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;

    fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }
    fn bounds(&self) -> String {
        self.inner.bounds()
    }
    fn value_name(&self) -> &'static str {
        self.inner.value_name()
    }
    fn convert(&self, leaf: Leaf) -> Result<Self::Value, String> {
        self.inner.convert(leaf).map(Some)
    }
    fn parse_text(&self, text: &str) -> Result<Self::Value, String> {
        self.inner.parse_text(text).map(Some)
    }
    fn check(&self, value: &Self::Value) -> Result<(), String> {
        value.as_ref().map_or(Ok(()), |v| self.inner.check(v))
    }
    fn render(&self, value: &Self::Value) -> Option<String> {
        value.as_ref().and_then(|v| self.inner.render(v))
    }
    fn absent(&self) -> &'static str {
        self.absent
    }
    fn magnitude(&self, value: &Self::Value) -> Option<u128> {
        value.as_ref().and_then(|v| self.inner.magnitude(v))
    }
    fn read(&self, ctx: &Ctx<'_>, node: &S<Node>, key: &str) -> Result<Self::Value, ConfigError> {
        self.inner.read(ctx, node, key).map(Some)
    }
}
