//! The completion record: what one captured exchange leaves behind, as every sink stores it.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::logging::{ExchangeRecord, Lossy};

/// Bytes counted for a record besides its text and request body (ids, names, numbers).
const RECORD_OVERHEAD: usize = 512;

/// One record per captured exchange. Its fields hold what the exchange did and what the
/// answer said, never a header: no `Authorization`, API key or injected header value can
/// reach a sink, because the record has no field that could hold one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The request id (also sent upstream and to the client as `x-request-id`).
    pub request_id: String,
    /// Wall-clock time the request head was read, RFC 3339 in UTC with milliseconds.
    pub started_at: String,
    /// The matched route's prefix.
    pub route: String,
    /// The upstream that answered (`scheme://authority`), or `-`.
    pub upstream: String,
    /// Request method.
    pub method: String,
    /// Request path, without its query string (which may hold keys).
    pub path: String,
    /// Status sent to the client, 0 when none was.
    pub status: u16,
    /// How the exchange ended: `complete`, `client_gone`, `upstream_broke`,
    /// `upstream_error`, `timeout:<kind>`, `rejected:<reason>`, `shutdown`.
    pub outcome: String,
    /// The API dialect the answer was read as (`openai_chat`, `anthropic_messages` ...).
    pub dialect: Option<String>,
    /// The model that answered, as the answer names it.
    pub model: Option<String>,
    /// The answer text, assembled from the stream (bounded; see `truncated`).
    pub text: String,
    /// Why the answer stopped (`stop`, `length`, `end_turn` ...).
    pub finish_reason: Option<String>,
    /// Token counts the answer reported.
    pub usage: Usage,
    /// Time from the request going upstream to the response head, in milliseconds.
    pub ttfb_ms: Option<f64>,
    /// Time from the request going upstream to the first text token, in milliseconds.
    pub ttft_ms: Option<f64>,
    /// The whole exchange, in milliseconds.
    pub duration_ms: f64,
    /// The text was cut at the tap's bound.
    pub truncated: bool,
    /// The request body, when the route sets `capture_request` and it is JSON within
    /// `capture_request_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Box<RawValue>>,
}

/// Token counts, each absent when the answer did not report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: Option<u64>,
    /// Answer tokens.
    pub output_tokens: Option<u64>,
    /// Both.
    pub total_tokens: Option<u64>,
}

impl Record {
    /// The record of `rec`; `request` is the request body to keep, already bounded by the
    /// caller (kept only when it is one JSON value).
    pub fn from_exchange(rec: &ExchangeRecord, request: Option<&[u8]>) -> Record {
        let llm = rec.llm.as_deref();
        let path = &rec.path[..path_end(&rec.path)];
        Record {
            request_id: Lossy(&rec.request_id).to_string(),
            started_at: rfc3339(rec.started_at),
            route: rec.route.to_string(),
            upstream: rec.upstream.to_string(),
            method: Lossy(&rec.method).to_string(),
            path: Lossy(path).to_string(),
            status: rec.status,
            outcome: rec.outcome.to_string(),
            dialect: llm.and_then(|s| s.dialect).map(|d| d.name().to_string()),
            model: llm.and_then(|s| s.model.clone()),
            text: llm.map(|s| s.text.clone()).unwrap_or_default(),
            finish_reason: llm.and_then(|s| s.finish_reason.clone()),
            usage: llm.map_or_else(Usage::default, |s| Usage {
                input_tokens: s.usage.input,
                output_tokens: s.usage.output,
                total_tokens: s.usage.total,
            }),
            ttfb_ms: rec.ttfb.map(millis),
            ttft_ms: rec.ttft.map(millis),
            duration_ms: millis(rec.duration),
            truncated: llm.is_some_and(|s| s.truncated),
            request: request
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| RawValue::from_string(s.trim().to_string()).ok()),
        }
    }

    /// What the record is counted as in a sink's queue: its text and request body plus a
    /// fixed allowance for the rest.
    pub fn weight(&self) -> u64 {
        let body = self.request.as_ref().map_or(0, |r| r.get().len());
        u64::try_from(self.text.len() + body + RECORD_OVERHEAD).unwrap_or(u64::MAX)
    }
}

/// Where the path of a request target ends: at its query or fragment, if any.
fn path_end(target: &[u8]) -> usize {
    target
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(target.len())
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-12-03T21:29:52.123Z`. Times before the
/// epoch show as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(24);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
    out
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is 1..=31 and m 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_333_392);
        assert_eq!(rfc3339(t), "2026-12-03T21:29:52.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn path_end_drops_the_query() {
        assert_eq!(path_end(b"/v1/chat?key=s3cret"), 8);
        assert_eq!(path_end(b"/v1/chat#x"), 8);
        assert_eq!(path_end(b"/v1/chat"), 8);
    }
}
