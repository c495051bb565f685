//! The value syntax shared by the file and the flags: durations, byte sizes and `${VAR}`
//! expansion. Pure functions, no configuration types.

use std::time::Duration;

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

/// A byte count in the largest binary unit that divides it (`"1GiB"`, `"64KiB"`), else plain
/// bytes (`"1000"`); [`parse_size`] reads either back.
pub(super) fn size_text(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{}{name}", n / unit);
        }
    }
    n.to_string()
}

/// A byte count as a TOML value: a quoted string with a unit, or a bare integer.
pub(super) fn size_toml(n: u64) -> String {
    let text = size_text(n);
    if text.ends_with('B') {
        quote(&text)
    } else {
        text
    }
}

/// A string as a TOML basic string, quoted and escaped.
pub(super) fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

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

/// The process environment, as `${VAR}` expansion reads it.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
