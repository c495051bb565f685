//! The access-log line, formatted by hand into a byte buffer: the same text the `tracing`
//! formatters write for the `access` event (one JSON object, or the `key=value` line with the
//! timestamp, level and target in front), without `tracing`'s field machinery, without an
//! allocation once the buffer has grown to a line's size.
//!
//! Field values are written as `tracing-subscriber` writes them: strings as they are (lossy
//! UTF-8) in text, escaped in JSON; times in milliseconds with up to three decimals (`1.008`,
//! `50.0`); absent values left out. One difference, on purpose: in text, control characters in
//! a value (`\n`, ESC, C1 codes) are written escaped (`\x0a`), so a value can never start a
//! line of its own or drive a terminal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ExchangeRecord, Outcome};

/// How a line is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `tracing-subscriber`'s JSON format with the event's fields flattened into the object.
    Json,
    /// `tracing-subscriber`'s full text format; `ansi` adds its terminal colours.
    Text {
        /// Colour the level, dim the target, italicise field names.
        ansi: bool,
    },
}

/// One value of the line.
enum Value<'a> {
    /// Bytes from the wire or from the answer, shown as (lossy) UTF-8.
    Str(&'a [u8]),
    /// Two strings shown as one (`timeout` `:stream_idle`).
    Pair(&'a [u8], &'a [u8]),
    Int(u64),
    Millis(Duration),
}

/// A field's name and the separators around it, spelled out once per layout.
struct Name {
    /// `request_id`
    bare: &'static str,
    /// ` request_id=`
    text: &'static str,
    /// `,"request_id":`
    json: &'static str,
}

macro_rules! name {
    ($n:literal) => {
        &Name {
            bare: $n,
            text: concat!(" ", $n, "="),
            json: concat!(",\"", $n, "\":"),
        }
    };
}

/// Call `f` with each field of the access line that has a value, in log order.
fn fields(rec: &ExchangeRecord, mut f: impl FnMut(&'static Name, Value<'_>)) {
    let end = super::path_end(&rec.path);
    f(name!("request_id"), Value::Str(&rec.request_id));
    f(name!("method"), Value::Str(&rec.method));
    f(name!("path"), Value::Str(&rec.path[..end]));
    f(name!("route"), Value::Str(rec.route.as_bytes()));
    f(name!("upstream"), Value::Str(rec.upstream.as_bytes()));
    f(name!("status"), Value::Int(u64::from(rec.status)));
    f(name!("bytes_in"), Value::Int(rec.bytes_in));
    f(name!("bytes_out"), Value::Int(rec.bytes_out));
    f(name!("chunks_in"), Value::Int(rec.chunks_in));
    f(name!("chunks_out"), Value::Int(rec.chunks_out));
    f(name!("reassembled"), Value::Int(rec.reassembled));
    if let Some(d) = rec.ttfb {
        f(name!("ttfb_ms"), Value::Millis(d));
    }
    if let Some(d) = rec.ttfc {
        f(name!("ttfc_ms"), Value::Millis(d));
    }
    f(name!("duration_ms"), Value::Millis(rec.duration));
    f(name!("retries"), Value::Int(u64::from(rec.retries)));
    let outcome = match rec.outcome {
        Outcome::Timeout(kind) => Value::Pair(b"timeout:", kind.as_bytes()),
        Outcome::Rejected(reason) => Value::Pair(b"rejected:", reason.as_bytes()),
        other => Value::Str(other.label().as_bytes()),
    };
    f(name!("outcome"), outcome);
    if let Some(llm) = rec.llm.as_deref() {
        if let Some(model) = &llm.model {
            f(name!("model"), Value::Str(model.as_bytes()));
        }
        if let Some(n) = llm.usage.input {
            f(name!("input_tokens"), Value::Int(n));
        }
        if let Some(n) = llm.usage.output {
            f(name!("output_tokens"), Value::Int(n));
        }
    }
    if let Some(d) = rec.ttft {
        f(name!("ttft_ms"), Value::Millis(d));
    }
    if let Some(reason) = rec.llm.as_deref().and_then(|l| l.finish_reason.as_deref()) {
        f(name!("finish_reason"), Value::Str(reason.as_bytes()));
    }
}

/// Append the access-log line for `rec`, logged at `now`, ending in `\n`, to `out`.
pub fn write(out: &mut Vec<u8>, rec: &ExchangeRecord, now: SystemTime, layout: Layout) {
    match layout {
        Layout::Json => write_json(out, rec, now),
        Layout::Text { ansi } => write_text(out, rec, now, ansi),
    }
}

fn write_json(out: &mut Vec<u8>, rec: &ExchangeRecord, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"exchange\"");
    fields(rec, |name, value| {
        out.extend_from_slice(name.json.as_bytes());
        match value {
            Value::Str(s) => json_str(out, s),
            Value::Pair(a, b) => {
                out.push(b'"');
                json_inner(out, a);
                json_inner(out, b);
                out.push(b'"');
            }
            Value::Int(n) => int(out, n),
            Value::Millis(d) => millis(out, d),
        }
    });
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

const DIM: &[u8] = b"\x1b[2m";
const ITALIC: &[u8] = b"\x1b[3m";
const RESET: &[u8] = b"\x1b[0m";

fn write_text(out: &mut Vec<u8>, rec: &ExchangeRecord, now: SystemTime, ansi: bool) {
    if ansi {
        out.extend_from_slice(DIM);
        timestamp(out, now);
        out.extend_from_slice(RESET);
        out.extend_from_slice(
            b" \x1b[32m INFO\x1b[0m \x1b[2maccess\x1b[0m\x1b[2m:\x1b[0m exchange",
        );
    } else {
        timestamp(out, now);
        out.extend_from_slice(b"  INFO access: exchange");
    }
    fields(rec, |name, value| {
        if ansi {
            out.push(b' ');
            out.extend_from_slice(ITALIC);
            out.extend_from_slice(name.bare.as_bytes());
            out.extend_from_slice(RESET);
            out.extend_from_slice(DIM);
            out.push(b'=');
            out.extend_from_slice(RESET);
        } else {
            out.extend_from_slice(name.text.as_bytes());
        }
        match value {
            Value::Str(s) => text_str(out, s),
            Value::Pair(a, b) => {
                text_str(out, a);
                text_str(out, b);
            }
            Value::Int(n) => int(out, n),
            Value::Millis(d) => millis(out, d),
        }
    });
    out.push(b'\n');
}

fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds rounded to the microsecond, as `tracing` shows the `f64` of the same value:
/// `1.008`, `4.665`, `50.0`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_nanos() + 500) / 1000);
    let whole = micros / 1000;
    let frac = (micros % 1000) as u32;
    int(out, whole);
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..keep]);
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` writes it:
/// `2026-12-03T21:29:54.123456Z`. Times before 1970 show as 1970.
pub(super) fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    let mut buf = [0u8; 27];
    pad(&mut buf[0..4], year);
    buf[4] = b'-';
    pad(&mut buf[5..7], month);
    buf[7] = b'-';
    pad(&mut buf[8..10], day);
    buf[10] = b'T';
    pad(&mut buf[11..13], in_day / 3600);
    buf[13] = b':';
    pad(&mut buf[14..16], in_day / 60 % 60);
    buf[16] = b':';
    pad(&mut buf[17..19], in_day % 60);
    buf[19] = b'.';
    pad(&mut buf[20..26], u64::from(since.subsec_micros()));
    buf[26] = b'Z';
    out.extend_from_slice(&buf);
}

/// Write the last `out.len()` decimal digits of `n`, zero-padded.
fn pad(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian calendar; Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A JSON string of `s` (invalid UTF-8 shown as U+FFFD), escaped as `serde_json` escapes.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    json_inner(out, s);
    out.push(b'"');
}

/// [`json_str`] without the quotes.
fn json_inner(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(s);
        return;
    }
    for chunk in s.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        for (i, &b) in valid.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => b"",
                _ => continue,
            };
            out.extend_from_slice(&valid[start..i]);
            start = i + 1;
            if esc.is_empty() {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            } else {
                out.extend_from_slice(esc);
            }
        }
        out.extend_from_slice(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A text value: (lossy) UTF-8 as is, control characters (C0, DEL, C1) as `\xNN`.
fn text_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        out.extend_from_slice(s);
        return;
    }
    for chunk in s.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < valid.len() {
            let b = valid[i];
            // C1 controls are U+0080..=U+009F: 0xC2 0x80..=0x9F in UTF-8.
            let (code, len) = match b {
                0..=0x1f | 0x7f => (b, 1),
                0xc2 if matches!(valid.get(i + 1), Some(0x80..=0x9f)) => (valid[i + 1], 2),
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&valid[start..i]);
            out.extend_from_slice(b"\\x");
            out.push(HEX[usize::from(code >> 4)]);
            out.push(HEX[usize::from(code & 0xf)]);
            i += len;
            start = i;
        }
        out.extend_from_slice(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn millis_match_the_f64_tracing_shows() {
        for (nanos, shown) in [
            (0u64, "0.0"),
            (1_008_000, "1.008"),
            (4_664_600, "4.665"),
            (50_000_000, "50.0"),
            (1_500_000_000, "1500.0"),
            (1_230_000, "1.23"),
            (999, "0.001"),
            (499, "0.0"),
            (7_100_000, "7.1"),
        ] {
            assert_eq!(text(|o| millis(o, Duration::from_nanos(nanos))), shown);
            let f = (Duration::from_nanos(nanos).as_secs_f64() * 1_000_000.0).round() / 1000.0;
            assert_eq!(format!("{f:?}"), shown, "the f64 tracing formats");
        }
    }

    #[test]
    fn timestamp_is_rfc3339_micros() {
        let at = UNIX_EPOCH + Duration::new(1_796_333_394, 123_456_789);
        assert_eq!(text(|o| timestamp(o, at)), "2026-12-03T21:29:54.123456Z");
        assert_eq!(
            text(|o| timestamp(o, UNIX_EPOCH)),
            "1970-01-01T00:00:00.000000Z"
        );
        // A leap day and the last second of a year.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(text(|o| timestamp(o, leap)), "2000-02-29T00:00:00.000000Z");
        let eve = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(text(|o| timestamp(o, eve)), "2025-12-31T23:59:59.000000Z");
    }

    #[test]
    fn json_strings_escape_like_serde_json() {
        for s in [
            "plain",
            "q\"b\\",
            "a\nb\r\t\u{8}\u{c}\u{1}\u{1f}",
            "안녕",
            "\u{7f}\u{85}",
        ] {
            let ours = text(|o| json_str(o, s.as_bytes()));
            assert_eq!(ours, serde_json::to_string(s).unwrap());
        }
        assert_eq!(text(|o| json_str(o, b"a\xffb")), "\"a\u{fffd}b\"");
    }

    #[test]
    fn text_values_escape_control_characters() {
        assert_eq!(text(|o| text_str(o, b"gpt-4o mini")), "gpt-4o mini");
        assert_eq!(
            text(|o| text_str(o, "a\nb\u{1b}[31m\u{7f}\u{9b}c안".as_bytes())),
            "a\\x0ab\\x1b[31m\\x7f\\x9bc안"
        );
        assert_eq!(text(|o| text_str(o, b"a\xffb")), "a\u{fffd}b");
    }
}
