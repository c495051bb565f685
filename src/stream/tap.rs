//! A read-only observer of an answer as it is written to the client: which model answered,
//! the answer's text, why it stopped, the tokens it used, when its first token went out, and
//! any error delivered inside it.
//!
//! # Contract
//! The pump hands [`Tap::observe`] each unit's bytes right after they were written, with the
//! [`Instant`] of the write, then calls [`Tap::end`] at a clean end of the body;
//! [`Tap::summary`] reads what was found. The tap never changes, delays or holds what is
//! forwarded: it only reads.
//!
//! - **Framing of its own.** The tap finds events (or JSON lines) itself with the same
//!   resumable scanners as the aligner, so it works on chunk-exact streams whose events are
//!   split across chunks just as well as on aligned ones.
//! - **Body kinds.** `text/event-stream` is read event by event, the JSON-lines types line by
//!   line, `application/json` (or `+json`) as one document buffered up to `max_body` and read
//!   at [`Tap::end`] (a document that is not one JSON value is then read as JSON lines). With
//!   no `Content-Type`, or another one, the first bytes decide: `{` or `[` is a document, anything
//!   else an event stream.
//! - **Dialect.** From the request path ([`Dialect::from_path`]); when the path names none,
//!   from the shape of the first payload that shows one ([`Dialect::sniff`]).
//! - **Bounded.** Memory is bounded whatever the stream's length: the answer text is kept up to
//!   `max_text` bytes, then [`Summary::truncated`]; an event split across writes is buffered up
//!   to `max_event` bytes (the buffer keeps at most 64 KiB of capacity between events), past
//!   which that event is skipped and counted
//!   ([`Summary::skipped`]); a document past `max_body` is skipped and counted the same way.
//! - **Never breaks.** Invalid JSON, unknown event types, payloads of unexpected shape,
//!   usage-only chunks and missing usage are counted or ignored: the tap records less, it never
//!   fails or panics.
//! - **Cheap.** A token event is read without deserializing it (see
//!   [`dialect`](crate::stream::dialect)): an event of one `data` line (after at most an
//!   `event` line) is taken in place, and one that repeats the last token event but for its
//!   text costs a byte comparison and the text it appends. Buffers are reused, so reading an
//!   event allocates nothing beyond the text it keeps, once the buffers (and the 4 KiB
//!   template) have grown to the stream's event size.
//!
//! ```
//! use std::time::Instant;
//! use chunkgate::stream::tap::Tap;
//!
//! let mut tap = Tap::new(b"/v1/chat/completions", Some(b"text/event-stream"));
//! let at = Instant::now();
//! tap.observe(b"data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"cont", at);
//! tap.observe(b"ent\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", at);
//! tap.end();
//! let s = tap.summary();
//! assert_eq!(s.model.as_deref(), Some("gpt-4o"));
//! assert_eq!(s.text, "Hi");
//! assert_eq!(s.finish_reason.as_deref(), Some("stop"));
//! assert!(s.complete);
//! assert_eq!(s.first_token_at, Some(at));
//! ```

use std::time::Instant;

use crate::codec::sse::{media_type, parse_event, Framer, StreamFormat};
use memchr::memchr2;

use crate::stream::dialect::{
    read_document, read_event, read_event_fast, read_unknown, Dialect, Read, Record, StreamError,
    Usage,
};
use crate::stream::json::Template;

/// The most capacity the partial-event buffer keeps for reuse between events: 64 KiB.
const KEEP_CAPACITY: usize = 64 << 10;

/// Bounds on what the tap keeps. Build with [`TapLimits::default`] and the setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapLimits {
    max_text: usize,
    max_event: usize,
    max_body: usize,
}

impl TapLimits {
    /// Default most bytes of answer text kept: 1 MiB.
    pub const DEFAULT_MAX_TEXT: usize = 1 << 20;
    /// Default most bytes of one event buffered while it spans writes: 1 MiB.
    pub const DEFAULT_MAX_EVENT: usize = 1 << 20;
    /// Default most bytes of an unstreamed (JSON document) body buffered: 4 MiB.
    pub const DEFAULT_MAX_BODY: usize = 4 << 20;

    /// Most bytes of answer text kept (default [`Self::DEFAULT_MAX_TEXT`]). Past it the text
    /// is cut at a character boundary and [`Summary::truncated`] is set; everything else is
    /// still read.
    pub fn max_text(mut self, bytes: usize) -> Self {
        self.max_text = bytes;
        self
    }

    /// Most bytes of one event (or line) buffered while it spans writes (default
    /// [`Self::DEFAULT_MAX_EVENT`]). A longer one is skipped and counted in
    /// [`Summary::skipped`]. An event whole within one write is read in place, whatever its
    /// size.
    pub fn max_event(mut self, bytes: usize) -> Self {
        self.max_event = bytes;
        self
    }

    /// Most bytes of an unstreamed body buffered (default [`Self::DEFAULT_MAX_BODY`]). A
    /// longer body is not read and is counted in [`Summary::skipped`].
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// See [`TapLimits::max_text`].
    pub fn text_limit(&self) -> usize {
        self.max_text
    }
    /// See [`TapLimits::max_event`].
    pub fn event_limit(&self) -> usize {
        self.max_event
    }
    /// See [`TapLimits::max_body`].
    pub fn body_limit(&self) -> usize {
        self.max_body
    }
}

impl Default for TapLimits {
    fn default() -> Self {
        TapLimits {
            max_text: Self::DEFAULT_MAX_TEXT,
            max_event: Self::DEFAULT_MAX_EVENT,
            max_body: Self::DEFAULT_MAX_BODY,
        }
    }
}

/// What the tap found in one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The dialect, from the path or the payloads; `None` when neither showed one.
    pub dialect: Option<Dialect>,
    /// The model that answered, as the answer names it.
    pub model: Option<String>,
    /// The answer text assembled from the deltas (or the unstreamed answer), at most
    /// `max_text` bytes.
    pub text: String,
    /// The text was cut at `max_text`.
    pub truncated: bool,
    /// Why the answer stopped: `stop`, `length`, `end_turn`, `completed` ...
    pub finish_reason: Option<String>,
    /// Token counts, each `None` where the answer did not report it.
    pub usage: Usage,
    /// When the write holding the end of the first non-empty text delta happened (for an
    /// unstreamed answer with text: the last write of the body).
    pub first_token_at: Option<Instant>,
    /// The first error delivered inside the answer.
    pub error: Option<StreamError>,
    /// Events (or JSON lines, or 1 for a document) seen, blank ones excluded, including
    /// comments, pings and events skipped for size.
    pub events: u64,
    /// The answer's own end marker was seen (`data: [DONE]`, `message_stop`,
    /// `response.completed` / `.incomplete` / `.failed`, `"done": true`), or an unstreamed
    /// answer was read whole (an error body is not one).
    pub complete: bool,
    /// Events over `max_event` and bodies over `max_body`, not read.
    pub skipped: u64,
    /// Payloads that were not JSON or not of the dialect's shape.
    pub invalid: u64,
}

/// How the body is being read.
#[derive(Debug)]
enum Body {
    /// No byte seen yet and no content type to go by: the first byte decides.
    Undecided,
    /// Events or lines, each read when it ends.
    Stream {
        framer: Framer,
        /// The start of an event that spans writes (at most `max_event` bytes).
        partial: Vec<u8>,
        /// The event under way went over `max_event`: ignore it up to its end.
        skipping: bool,
    },
    /// One JSON document, read at the end.
    Document { buf: Vec<u8>, over: bool },
}

/// Reads payloads into the record; kept apart from the framing so both can be borrowed.
#[derive(Debug)]
struct Reader {
    dialect: Option<Dialect>,
    record: Record,
    /// Where several `data` lines of one event are joined.
    scratch: Vec<u8>,
    /// The last token event, to read the next ones by comparison.
    template: Template,
    /// Read known dialects the fast way first (false only to test it against the other way).
    fast: bool,
    events: u64,
    skipped: u64,
}

impl Reader {
    /// One whole unit (an event with its blank line, or a line with its LF).
    fn unit(&mut self, format: StreamFormat, unit: &[u8], at: Instant) {
        self.events += 1;
        match format {
            StreamFormat::EventStream => {
                let Reader {
                    dialect,
                    record,
                    scratch,
                    template,
                    fast,
                    ..
                } = self;
                let simple = if *fast { one_data_line(unit) } else { None };
                if let (Some(d), Some((event, data))) = (*dialect, simple) {
                    if data == b"[DONE]" {
                        record.complete = true;
                        return;
                    }
                    let fast = read_event_fast(d, event, data, true, Some(template), record, at);
                    if fast.is_ok() {
                        return;
                    }
                }
                let event = parse_event(unit, scratch);
                let Some(data) = event.data else { return };
                if data == b"[DONE]" {
                    record.complete = true;
                    return;
                }
                payload(dialect, event.event, data, record, at);
            }
            StreamFormat::JsonLines => {
                let line = unit.trim_ascii();
                if let Some(d) = self.dialect.filter(|_| self.fast && !line.is_empty()) {
                    let (rec, template) = (&mut self.record, Some(&mut self.template));
                    if read_event_fast(d, None, line, false, template, rec, at).is_ok() {
                        return;
                    }
                }
                if !line.is_empty() {
                    payload(&mut self.dialect, None, line, &mut self.record, at);
                }
            }
        }
    }
}

/// The event name and data of an event that is at most an `event` line and one `data` line,
/// read without looking for line ends in the data (a JSON payload is walked anyway, and a
/// one-line walk finds any line end in it): `unit` must start with `event:` or `data:`, and
/// at most two line ends (the data line's and the blank line's) are taken off its end.
///
/// When the data returned holds no CR or LF, it is exactly what [`parse_event`] reads from
/// `unit`; when it holds one, the event has more lines and the caller must read it with
/// [`parse_event`].
fn one_data_line(unit: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let mut rest = unit;
    let mut event = None;
    if let Some(after) = rest.strip_prefix(b"event:") {
        let end = memchr2(b'\n', b'\r', after)?;
        let name = &after[..end];
        event = Some(name.strip_prefix(b" ").unwrap_or(name));
        rest = strip_line_end_front(&after[end..]);
    }
    let data = rest.strip_prefix(b"data:")?;
    let data = data.strip_prefix(b" ").unwrap_or(data);
    Some((event, strip_line_end(strip_line_end(data))))
}

/// `bytes` without the line end (CRLF, LF or CR) it ends with, if any.
fn strip_line_end(bytes: &[u8]) -> &[u8] {
    match bytes {
        [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n' | b'\r'] => rest,
        _ => bytes,
    }
}

/// `bytes` without the line end (CRLF, LF or CR) it starts with, if any.
fn strip_line_end_front(bytes: &[u8]) -> &[u8] {
    match bytes {
        [b'\r', b'\n', rest @ ..] | [b'\n' | b'\r', rest @ ..] => rest,
        _ => bytes,
    }
}

/// Read one payload in the dialect known or sniffed now.
fn payload(
    dialect: &mut Option<Dialect>,
    event: Option<&[u8]>,
    data: &[u8],
    record: &mut Record,
    at: Instant,
) {
    if dialect.is_none() {
        *dialect = Dialect::sniff(data);
    }
    match *dialect {
        Some(d) => {
            read_event(d, event, data, record, at);
        }
        None => {
            read_unknown(data, record);
        }
    }
}

/// The tap. See the [module docs](self).
#[derive(Debug)]
pub struct Tap {
    body: Body,
    limits: TapLimits,
    reader: Reader,
    last_write_at: Option<Instant>,
    ended: bool,
}

impl Tap {
    /// A tap for the answer to a request for `path`, whose response has the `Content-Type`
    /// field value `content_type`, with default limits.
    pub fn new(path: &[u8], content_type: Option<&[u8]>) -> Tap {
        Tap::with_limits(path, content_type, TapLimits::default())
    }

    /// As [`Tap::new`], with `limits`.
    pub fn with_limits(path: &[u8], content_type: Option<&[u8]>, limits: TapLimits) -> Tap {
        let body = match content_type {
            Some(ct) => match StreamFormat::from_content_type(ct) {
                Some(format) => stream_body(format),
                None if is_json(ct) => Body::Document {
                    buf: Vec::new(),
                    over: false,
                },
                None => Body::Undecided,
            },
            None => Body::Undecided,
        };
        Tap {
            body,
            limits,
            reader: Reader {
                dialect: Dialect::from_path(path),
                record: Record::new(limits.max_text),
                scratch: Vec::new(),
                template: Template::default(),
                fast: true,
                events: 0,
                skipped: 0,
            },
            last_write_at: None,
            ended: false,
        }
    }

    /// The dialect known so far.
    pub fn dialect(&self) -> Option<Dialect> {
        self.reader.dialect
    }

    /// Bytes that were just written to the client, at `at`.
    pub fn observe(&mut self, written: &[u8], at: Instant) {
        if written.is_empty() || self.ended {
            return;
        }
        self.last_write_at = Some(at);
        if let Body::Undecided = self.body {
            self.body = match written.trim_ascii_start().first() {
                None => return,
                Some(b'{' | b'[') => Body::Document {
                    buf: Vec::new(),
                    over: false,
                },
                Some(_) => stream_body(StreamFormat::EventStream),
            };
        }
        let max_event = self.limits.max_event;
        let max_body = self.limits.max_body;
        match &mut self.body {
            Body::Undecided => {}
            Body::Stream {
                framer,
                partial,
                skipping,
            } => {
                let format = framer.format();
                let mut rest = written;
                while let Some(boundary) = framer.scan(rest) {
                    let (unit, tail) = rest.split_at(boundary.len);
                    rest = tail;
                    if *skipping {
                        *skipping = false;
                        continue;
                    }
                    if partial.is_empty() {
                        if !boundary.empty {
                            self.reader.unit(format, unit, at);
                        }
                    } else {
                        partial.extend_from_slice(unit);
                        if !boundary.empty {
                            self.reader.unit(format, partial, at);
                        }
                        partial.clear();
                        if partial.capacity() > KEEP_CAPACITY {
                            *partial = Vec::new();
                        }
                    }
                }
                if rest.is_empty() || !framer.in_event() || *skipping {
                    return;
                }
                if partial.len() + rest.len() > max_event {
                    *skipping = true;
                    partial.clear();
                    self.reader.events += 1;
                    self.reader.skipped += 1;
                } else {
                    partial.extend_from_slice(rest);
                }
            }
            Body::Document { buf, over } => {
                if *over {
                    return;
                }
                if buf.len() + written.len() > max_body {
                    *over = true;
                    *buf = Vec::new();
                    self.reader.skipped += 1;
                } else {
                    buf.extend_from_slice(written);
                }
            }
        }
    }

    /// The body ended cleanly. Reads what is still held: an unstreamed document, or a last
    /// event or line that had no end. Later calls (and later writes) change nothing.
    pub fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let at = self.last_write_at.unwrap_or_else(Instant::now);
        match &mut self.body {
            Body::Undecided => {}
            Body::Stream {
                framer,
                partial,
                skipping,
            } => {
                if !partial.is_empty() && !*skipping {
                    self.reader.unit(framer.format(), partial, at);
                }
                *partial = Vec::new();
            }
            Body::Document { buf, over } => {
                if !*over && !buf.trim_ascii().is_empty() {
                    read_whole_document(&mut self.reader, buf, at);
                }
                *buf = Vec::new();
            }
        }
    }

    /// What the tap found so far.
    pub fn summary(&self) -> Summary {
        let rec = &self.reader.record;
        let short = |s: &String| (!s.is_empty()).then(|| s.clone());
        Summary {
            dialect: self.reader.dialect,
            model: short(&rec.model),
            text: rec.text.clone(),
            truncated: rec.truncated,
            finish_reason: short(&rec.finish_reason),
            usage: rec.usage(),
            first_token_at: rec.first_token_at,
            error: rec.error.clone(),
            events: self.reader.events,
            complete: rec.complete,
            skipped: self.reader.skipped,
            invalid: rec.invalid,
        }
    }
}

fn stream_body(format: StreamFormat) -> Body {
    Body::Stream {
        framer: Framer::new(format),
        partial: Vec::new(),
        skipping: false,
    }
}

/// `application/json` or any `+json` type.
fn is_json(content_type: &[u8]) -> bool {
    let media = media_type(content_type);
    media.eq_ignore_ascii_case(b"application/json")
        || (media.len() >= 5 && media[media.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Read a buffered body as one JSON document; if it is not one JSON value, as JSON lines.
fn read_whole_document(reader: &mut Reader, body: &[u8], at: Instant) {
    let one_value = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if !one_value {
        let mut rest = body;
        let mut framer = Framer::new(StreamFormat::JsonLines);
        while let Some(b) = framer.scan(rest) {
            let (line, tail) = rest.split_at(b.len);
            rest = tail;
            if !b.empty {
                reader.unit(StreamFormat::JsonLines, line, at);
            }
        }
        if !rest.trim_ascii().is_empty() {
            reader.unit(StreamFormat::JsonLines, rest, at);
        }
        return;
    }
    reader.events += 1;
    if reader.dialect.is_none() {
        reader.dialect = Dialect::sniff(body);
    }
    let record = &mut reader.record;
    match reader.dialect {
        Some(d) => {
            if read_document(d, body, record, at) == Read::Understood
                && record.first_token_at.is_none()
                && !record.text.is_empty()
            {
                record.first_token_at = Some(at);
            }
        }
        None => {
            read_unknown(body, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed(tap: &mut Tap, pieces: &[&[u8]], t0: Instant) {
        for (i, p) in pieces.iter().enumerate() {
            tap.observe(p, t0 + Duration::from_millis(i as u64));
        }
        tap.end();
    }

    #[test]
    fn tap_first_token_is_the_write_that_completed_the_first_text() {
        let t0 = Instant::now();
        let mut tap = Tap::new(b"/v1/chat/completions", Some(b"text/event-stream"));
        feed(
            &mut tap,
            &[
                b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"H",
                b"i\"}}]}\n\n",
            ],
            t0,
        );
        let s = tap.summary();
        assert_eq!(s.text, "Hi");
        assert_eq!(s.first_token_at, Some(t0 + Duration::from_millis(2)));
        assert_eq!(s.events, 2);
        assert!(!s.complete, "no [DONE]");
    }

    #[test]
    fn tap_skips_an_event_over_the_bound_and_goes_on() {
        let limits = TapLimits::default().max_event(100);
        let mut tap = Tap::with_limits(b"/api/chat", Some(b"application/x-ndjson"), limits);
        let long = format!(
            "{{\"model\":\"m\",\"message\":{{\"content\":\"{}\"}},\"done\":false}}\n",
            "x".repeat(100)
        );
        let (a, b) = long.as_bytes().split_at(120);
        feed(
            &mut tap,
            &[
                a,
                b,
                b"{\"model\":\"m\",\"message\":{\"content\":\"ok\"},\"done\":false}\n",
                b"{\"model\":\"m\",\"message\":{\"content\":\"\"},\"done\":true,\"eval_count\":3}",
            ],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.skipped, 1);
        assert_eq!(s.text, "ok");
        assert_eq!(s.events, 3);
        assert!(s.complete, "the last line without LF is read at the end");
        assert_eq!(s.usage.output, Some(3));
    }

    #[test]
    fn tap_text_bound_sets_truncated() {
        let limits = TapLimits::default().max_text(5);
        let mut tap = Tap::with_limits(b"/api/generate", Some(b"application/x-ndjson"), limits);
        feed(
            &mut tap,
            &[
                b"{\"response\":\"abc\",\"done\":false}\n",
                b"{\"response\":\"def\",\"done\":false}\n",
            ],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.text, "abcde");
        assert!(s.truncated);
        assert_eq!(s.dialect, Some(Dialect::OllamaGenerate));
    }

    #[test]
    fn tap_document_over_the_bound_is_skipped() {
        let limits = TapLimits::default().max_body(10);
        let mut tap = Tap::with_limits(b"/v1/chat/completions", Some(b"application/json"), limits);
        feed(&mut tap, &[b"{\"model\":", b"\"gpt-4o\"}"], Instant::now());
        let s = tap.summary();
        assert_eq!(s.skipped, 1);
        assert_eq!(s.model, None);
    }

    #[test]
    fn tap_sniffs_body_kind_and_dialect_without_hints() {
        let mut tap = Tap::new(b"/proxy/x", None);
        feed(
            &mut tap,
            &[b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n"],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.dialect, Some(Dialect::AnthropicMessages));
        assert_eq!(s.model.as_deref(), Some("claude"));

        let mut tap = Tap::new(b"/x", Some(b"text/plain"));
        feed(
            &mut tap,
            &[b"  {\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"content\":\"yo\"},\"finish_reason\":\"stop\"}]}"],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.dialect, Some(Dialect::OpenAiChat));
        assert_eq!(s.text, "yo");
        assert!(s.complete);
    }

    #[test]
    fn tap_json_labelled_lines_are_read_as_lines() {
        let mut tap = Tap::new(b"/api/chat", Some(b"application/json; charset=utf-8"));
        feed(
            &mut tap,
            &[b"{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"message\":{\"content\":\"b\"},\"done\":true}\n"],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.text, "ab");
        assert_eq!(s.events, 2);
        assert!(s.complete);
    }

    #[test]
    fn tap_error_body_is_not_a_complete_answer() {
        let mut tap = Tap::new(b"/v1/chat/completions", Some(b"application/json"));
        feed(
            &mut tap,
            &[b"{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"],
            Instant::now(),
        );
        let s = tap.summary();
        assert!(!s.complete);
        assert_eq!(s.events, 1);
        assert_eq!(
            s.error,
            Some(StreamError {
                kind: Some("requests".into()),
                message: Some("Rate limit reached".into())
            })
        );
    }

    #[test]
    fn tap_error_body_of_unknown_dialect() {
        let mut tap = Tap::new(b"/v2/other", Some(b"application/problem+json"));
        feed(
            &mut tap,
            &[b"{\"error\":{\"type\":\"invalid_request_error\",\"message\":\"no\"}}"],
            Instant::now(),
        );
        let s = tap.summary();
        assert_eq!(s.dialect, None);
        assert_eq!(
            s.error,
            Some(StreamError {
                kind: Some("invalid_request_error".into()),
                message: Some("no".into())
            })
        );
    }

    /// An answer of `dialect` carrying `deltas`, as its upstream would stream it.
    fn stream_of(dialect: Dialect, deltas: &[String], crlf: bool) -> Vec<u8> {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        let mut event = |name: Option<&str>, data: serde_json::Value| {
            if let Some(name) = name {
                out.push_str(&format!("event: {name}{nl}"));
            }
            out.push_str(&format!("data: {data}{nl}{nl}"));
        };
        match dialect {
            Dialect::AnthropicMessages => {
                event(
                    Some("message_start"),
                    serde_json::json!({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                );
                event(Some("ping"), serde_json::json!({"type": "ping"}));
                for d in deltas {
                    event(
                        Some("content_block_delta"),
                        serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                    );
                }
                event(
                    Some("message_delta"),
                    serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
                );
                event(
                    Some("message_stop"),
                    serde_json::json!({"type": "message_stop"}),
                );
            }
            _ => {
                for d in deltas {
                    event(
                        None,
                        serde_json::json!({"model": "m", "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]}),
                    );
                }
                event(
                    None,
                    serde_json::json!({"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}),
                );
                out.push_str(&format!("data: [DONE]{nl}{nl}"));
            }
        }
        out.into_bytes()
    }

    proptest::proptest! {
        #[test]
        fn tap_any_split_same_summary(
            deltas in proptest::collection::vec("(?s).{0,12}", 0..12),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..12),
            anthropic in proptest::prelude::any::<bool>(),
            crlf in proptest::prelude::any::<bool>(),
        ) {
            let (dialect, path) = if anthropic {
                (Dialect::AnthropicMessages, &b"/v1/messages"[..])
            } else {
                (Dialect::OpenAiChat, &b"/v1/chat/completions"[..])
            };
            let wire = stream_of(dialect, &deltas, crlf);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for &p in &points {
                pieces.push(&wire[last..p]);
                last = p;
            }
            pieces.push(&wire[last..]);
            let at = Instant::now();
            let mut whole = Tap::new(path, Some(b"text/event-stream"));
            feed(&mut whole, &[&wire], at);
            let mut split = Tap::new(path, Some(b"text/event-stream"));
            for p in &pieces {
                split.observe(p, at);
            }
            split.end();
            let (w, s) = (whole.summary(), split.summary());
            proptest::prop_assert_eq!(&w.text, &deltas.concat());
            proptest::prop_assert_eq!(w.first_token_at.is_some(), deltas.iter().any(|d| !d.is_empty()));
            proptest::prop_assert_eq!(w.usage.output, Some(9));
            proptest::prop_assert!(w.complete);
            proptest::prop_assert_eq!(w.invalid, 0);
            proptest::prop_assert_eq!(s, w);
        }
    }

    proptest::proptest! {
        #[test]
        fn tap_arbitrary_bytes_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            route in 0usize..7,
            kind in 0usize..4,
        ) {
            let path: &[u8] = [
                &b"/v1/chat/completions"[..],
                b"/v1/completions",
                b"/v1/responses",
                b"/v1/messages",
                b"/api/chat",
                b"/api/generate",
                b"/other",
            ][route];
            let content_type: Option<&[u8]> =
                [Some(&b"text/event-stream"[..]), Some(b"application/x-ndjson"), Some(b"application/json"), None][kind];
            let limits = TapLimits::default().max_text(16).max_event(64).max_body(128);
            let mut tap = Tap::with_limits(path, content_type, limits);
            let (a, b) = body.split_at(cut.index(body.len() + 1));
            feed(&mut tap, &[a, b], Instant::now());
            let s = tap.summary();
            proptest::prop_assert!(s.text.len() <= 16);
        }
    }

    #[test]
    fn tap_ignores_writes_after_end_and_empty_writes() {
        let mut tap = Tap::new(b"/v1/chat/completions", Some(b"text/event-stream"));
        tap.observe(b"", Instant::now());
        tap.end();
        tap.observe(
            b"data: {\"model\":\"m\",\"choices\":[]}\n\n",
            Instant::now(),
        );
        assert_eq!(tap.summary().events, 0);
        assert_eq!(tap.summary().model, None);
    }

    proptest::proptest! {
        /// However events are laid out (an `event` line or not, `data:` with or without its
        /// space, LF, CRLF or CR, data over several lines, comments, ids) and split into
        /// writes, the fast reading gives the summary the complete one gives.
        #[test]
        fn tap_fast_equals_complete_for_any_layout(
            layouts in proptest::collection::vec(0u8..=255, 1..30),
            texts in proptest::collection::vec("(?s).{0,6}", 1..30),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..8),
            anthropic in proptest::prelude::any::<bool>(),
        ) {
            let (path, name) = if anthropic {
                (&b"/v1/messages"[..], "content_block_delta")
            } else {
                (&b"/v1/chat/completions"[..], "x")
            };
            let mut wire = String::new();
            for (i, text) in texts.iter().enumerate() {
                let layout = layouts[i % layouts.len()];
                let nl = ["\n", "\r\n", "\r"][usize::from(layout % 3)];
                let payload = if anthropic {
                    serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
                } else {
                    serde_json::json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
                }
                .to_string();
                if layout & 8 != 0 {
                    wire.push_str(&format!("event: {name}{nl}"));
                }
                if layout & 16 != 0 {
                    wire.push_str(&format!(": keep-alive{nl}"));
                }
                let sep = if layout & 32 != 0 { "data:" } else { "data: " };
                if layout & 64 != 0 && payload.len() > 10 {
                    // The data over two lines (joined by LF, it is the same JSON).
                    // (Keys are sorted: the last `,"` starts the last key, outside strings.)
                    let (a, b) = payload.split_at(payload.rfind(",\"").unwrap_or(1) + 1);
                    wire.push_str(&format!("{sep}{a}{nl}{sep}{b}{nl}"));
                } else {
                    wire.push_str(&format!("{sep}{payload}{nl}"));
                }
                if layout & 128 != 0 {
                    wire.push_str(&format!("id: {i}{nl}"));
                }
                wire.push_str(nl);
            }
            wire.push_str("data: [DONE]\n\n");
            let wire = wire.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let at = Instant::now();
            let run = |fast: bool| {
                let mut tap = Tap::new(path, Some(b"text/event-stream"));
                tap.reader.fast = fast;
                let mut last = 0;
                for &p in &points {
                    tap.observe(&wire[last..p], at);
                    last = p;
                }
                tap.observe(&wire[last..], at);
                tap.end();
                tap.summary()
            };
            let (fast, complete) = (run(true), run(false));
            proptest::prop_assert_eq!(&fast.text, &texts.concat());
            proptest::prop_assert_eq!(fast, complete);
        }
    }
}
