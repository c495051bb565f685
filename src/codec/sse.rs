//! Where the units of a streamed body end: server-sent events (the WHATWG event-stream format)
//! and JSON lines (NDJSON / JSONL), plus a borrowed parser for the fields of one event.
//!
//! # Contract
//! [`EventScanner`] is pushed the bytes of an event stream, however they were split into
//! inputs, and reports where each event ends: just past the line end of the blank line that
//! dispatches it. Lines end with LF, CRLF or a lone CR, and a CR that ends one input followed by
//! an LF that starts the next is one line end, not two (so never a blank line). Comments (`:`
//! lines) and `event:`, `id:`, `retry:` lines belong to the event they are in; the scanner does
//! not look inside lines. A blank line with no line before it (a stray or keep-alive blank
//! line) is reported as an event end too, flagged [`Boundary::empty`].
//!
//! [`LineScanner`] does the same for JSON lines: a unit ends just past each LF (a CR before it
//! is part of the line's end).
//!
//! Both are resumable: each call is given only the bytes after those the previous calls
//! consumed, every byte is examined once, and the only state kept between inputs is where in a
//! line the scanner stands (a few bytes, no buffer). Running short of input is never an error,
//! and no input is invalid: a scanner finds ends, it does not judge content.
//!
//! [`parse_event`] reads the fields of one whole event without copying, except that several
//! `data` lines are joined (by LF, as the format says) into a scratch buffer the caller keeps
//! and reuses.
//!
//! ```
//! use chunkgate::codec::sse::{parse_event, Boundary, EventScanner};
//!
//! let mut scanner = EventScanner::new();
//! // The first input ends inside an event, with the CR of a CRLF.
//! assert_eq!(scanner.scan(b"event: delta\r\ndata: {\"a\":1}\r"), None);
//! // Its LF opens the next input: one line end, then the blank line ends the event.
//! let input = b"\n\r\ndata: 2\n\n";
//! let end = scanner.scan(input).unwrap();
//! assert_eq!(end, Boundary { len: 3, empty: false });
//! let end = scanner.scan(&input[3..]).unwrap();
//! assert_eq!(end, Boundary { len: 9, empty: false });
//!
//! let mut scratch = Vec::new();
//! let event = parse_event(b"event: delta\ndata: {\"a\":1}\ndata: x\n\n", &mut scratch);
//! assert_eq!(event.event, Some(&b"delta"[..]));
//! assert_eq!(event.data, Some(&b"{\"a\":1}\nx"[..]));
//! ```

use memchr::{memchr, memchr2};

/// The end of a unit (an event or a line) found by a scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary {
    /// Bytes of the input given to this call that belong to the unit, its final line end
    /// included. The scanner has consumed exactly these; pass the rest to the next call.
    pub len: usize,
    /// The unit holds no line with content: a blank line that followed an event's end (or
    /// began the stream), or an empty JSON line.
    pub empty: bool,
}

/// Where in an event stream the scanner stands: what is expected next.
///
/// ```text
///  LineStart ──(LF / CR: blank line, the event ends)──► LineStart
///     │   ▲
///  (other)│  (LF / CR: the line ends, the event goes on)
///     ▼   │
///    InLine
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// The first byte of a line. `in_event`: the event under way already has a line.
    /// `after_cr`: the previous line ended with CR, so an LF here completes that line end.
    LineStart { in_event: bool, after_cr: bool },
    /// More bytes of a line with content, up to its CR or LF.
    InLine,
}

/// Finds where server-sent events end. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventScanner {
    state: Scan,
}

impl Default for EventScanner {
    fn default() -> Self {
        EventScanner::new()
    }
}

impl EventScanner {
    /// A scanner at the start of a stream.
    pub const fn new() -> Self {
        EventScanner {
            state: Scan::LineStart {
                in_event: false,
                after_cr: false,
            },
        }
    }

    /// Scan `input`, the bytes that follow everything consumed so far.
    ///
    /// `Some(boundary)`: an event ends `boundary.len` bytes into `input`; those bytes are
    /// consumed and the scanner stands at the start of the next event (call again with the
    /// rest). `None`: all of `input` was consumed without an event ending.
    pub fn scan(&mut self, input: &[u8]) -> Option<Boundary> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                Scan::LineStart { in_event, after_cr } => {
                    let byte = input[at];
                    at += 1;
                    match byte {
                        b'\n' if after_cr => {
                            self.state = Scan::LineStart {
                                in_event,
                                after_cr: false,
                            };
                        }
                        b'\n' | b'\r' => {
                            let mut after_cr = byte == b'\r';
                            if after_cr && input.get(at) == Some(&b'\n') {
                                // The blank line's CRLF is whole in this input: keep it with
                                // the event it ends.
                                at += 1;
                                after_cr = false;
                            }
                            self.state = Scan::LineStart {
                                in_event: false,
                                after_cr,
                            };
                            return Some(Boundary {
                                len: at,
                                empty: !in_event,
                            });
                        }
                        _ => self.state = Scan::InLine,
                    }
                }
                Scan::InLine => match memchr2(b'\n', b'\r', &input[at..]) {
                    Some(offset) => {
                        at += offset + 1;
                        self.state = Scan::LineStart {
                            in_event: true,
                            after_cr: input[at - 1] == b'\r',
                        };
                    }
                    None => {
                        return None;
                    }
                },
            }
        }
        None
    }

    /// Bytes of an event that has not ended were consumed: a line is under way, or lines
    /// ended without the blank line yet. False between events, including just after a CR
    /// whose LF may still come.
    pub fn in_event(&self) -> bool {
        match self.state {
            Scan::LineStart { in_event, .. } => in_event,
            Scan::InLine => true,
        }
    }
}

/// Finds where JSON lines end (NDJSON, JSONL): just past each LF.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineScanner {
    /// Bytes of the line under way were consumed.
    in_line: bool,
    /// The line under way holds a byte other than CR, space or tab.
    has_content: bool,
}

impl LineScanner {
    /// A scanner at the start of a stream.
    pub const fn new() -> Self {
        LineScanner {
            in_line: false,
            has_content: false,
        }
    }

    /// Scan `input`, the bytes that follow everything consumed so far. As
    /// [`EventScanner::scan`], with a line for an event; a line of only whitespace is
    /// [`Boundary::empty`].
    pub fn scan(&mut self, input: &[u8]) -> Option<Boundary> {
        match memchr(b'\n', input) {
            Some(offset) => {
                let empty = !self.has_content && is_blank(&input[..offset]);
                self.in_line = false;
                self.has_content = false;
                Some(Boundary {
                    len: offset + 1,
                    empty,
                })
            }
            None => {
                if !input.is_empty() {
                    self.in_line = true;
                    self.has_content = self.has_content || !is_blank(input);
                }
                None
            }
        }
    }

    /// Bytes of a line that has not ended were consumed.
    pub fn in_event(&self) -> bool {
        self.in_line
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// How a streamed body is cut into units, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `text/event-stream`: one unit per event.
    EventStream,
    /// `application/x-ndjson`, `application/ndjson`, `application/jsonl`,
    /// `application/x-jsonl`: one unit per line.
    JsonLines,
}

impl StreamFormat {
    /// The format a `Content-Type` field value names (media type compared without case,
    /// parameters such as `charset` ignored), or `None` for any other type.
    pub fn from_content_type(value: &[u8]) -> Option<StreamFormat> {
        let media = media_type(value);
        if media.eq_ignore_ascii_case(b"text/event-stream") {
            return Some(StreamFormat::EventStream);
        }
        const LINES: [&[u8]; 4] = [
            b"application/x-ndjson",
            b"application/ndjson",
            b"application/jsonl",
            b"application/x-jsonl",
        ];
        LINES
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t))
            .then_some(StreamFormat::JsonLines)
    }
}

/// The media type of a `Content-Type` value: before any `;`, without surrounding whitespace.
pub fn media_type(value: &[u8]) -> &[u8] {
    let end = memchr(b';', value).unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// A scanner for either format, for code that handles both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framer {
    /// Server-sent events.
    Events(EventScanner),
    /// JSON lines.
    Lines(LineScanner),
}

impl Framer {
    /// A framer at the start of a stream of `format`.
    pub const fn new(format: StreamFormat) -> Self {
        match format {
            StreamFormat::EventStream => Framer::Events(EventScanner::new()),
            StreamFormat::JsonLines => Framer::Lines(LineScanner::new()),
        }
    }

    /// See [`EventScanner::scan`] and [`LineScanner::scan`].
    #[inline]
    pub fn scan(&mut self, input: &[u8]) -> Option<Boundary> {
        match self {
            Framer::Events(s) => s.scan(input),
            Framer::Lines(s) => s.scan(input),
        }
    }

    /// Bytes of a unit that has not ended were consumed.
    #[inline]
    pub fn in_event(&self) -> bool {
        match self {
            Framer::Events(s) => s.in_event(),
            Framer::Lines(s) => s.in_event(),
        }
    }

    /// The format this framer cuts.
    pub fn format(&self) -> StreamFormat {
        match self {
            Framer::Events(_) => StreamFormat::EventStream,
            Framer::Lines(_) => StreamFormat::JsonLines,
        }
    }
}

/// The lines of a piece of an event stream, without their line ends (LF, CRLF or CR).
///
/// A last line without a line end is yielded too. Blank lines are yielded as empty slices.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
}

/// The lines of `bytes`. See [`Lines`].
pub fn lines(bytes: &[u8]) -> Lines<'_> {
    Lines { rest: bytes }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        match memchr2(b'\n', b'\r', self.rest) {
            Some(end) => {
                let line = &self.rest[..end];
                let mut next = end + 1;
                if self.rest[end] == b'\r' && self.rest.get(next) == Some(&b'\n') {
                    next += 1;
                }
                self.rest = &self.rest[next..];
                Some(line)
            }
            None => {
                let line = self.rest;
                self.rest = &[];
                Some(line)
            }
        }
    }
}

/// One line of an event, read as the format says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// An empty line: the end of an event.
    Blank,
    /// A line starting with `:`; the text after the colon.
    Comment(&'a [u8]),
    /// `name: value`. The value has one leading space removed, if it has one. A line without
    /// a colon is a field with that whole line as its name and an empty value.
    Field { name: &'a [u8], value: &'a [u8] },
}

/// Read one line (without its line end).
pub fn parse_line(line: &[u8]) -> Line<'_> {
    if line.is_empty() {
        return Line::Blank;
    }
    if line[0] == b':' {
        return Line::Comment(&line[1..]);
    }
    match memchr(b':', line) {
        Some(colon) => {
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            Line::Field {
                name: &line[..colon],
                value,
            }
        }
        None => Line::Field {
            name: line,
            value: &[],
        },
    }
}

/// The fields of one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The last `event` field's value.
    pub event: Option<&'a [u8]>,
    /// The `data` fields' values joined by LF, or `None` when the event has no `data` field.
    pub data: Option<&'a [u8]>,
    /// The number of `data` fields.
    pub data_lines: usize,
    /// The last `id` field's value (fields holding a NUL byte are ignored, as the format says).
    pub id: Option<&'a [u8]>,
    /// The last `retry` field's value that is only ASCII digits and fits a `u64`.
    pub retry: Option<u64>,
    /// The number of comment lines.
    pub comments: usize,
}

/// Read the fields of one event (its bytes up to and including its blank line; lines after a
/// blank line are not read). Blank lines before the first line are skipped: a unit can start
/// with the LF of a CRLF whose CR ended the previous event in an earlier input. Unknown field
/// names are ignored.
///
/// Slices borrow `event`, except `data` when there are several `data` fields: they are joined
/// into `scratch` (cleared first), which the caller keeps to reuse its allocation.
pub fn parse_event<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> Event<'a> {
    let mut out = Event::default();
    let mut first_data: Option<&'a [u8]> = None;
    let mut joined = false;
    let mut started = false;
    for line in lines(event) {
        let line = parse_line(line);
        if line == Line::Blank {
            if started {
                break;
            }
            continue;
        }
        started = true;
        match line {
            Line::Blank => {}
            Line::Comment(_) => out.comments += 1,
            Line::Field { name, value } => match name {
                b"data" => {
                    out.data_lines += 1;
                    match first_data {
                        None => first_data = Some(value),
                        Some(first) => {
                            if !joined {
                                scratch.clear();
                                scratch.extend_from_slice(first);
                                joined = true;
                            }
                            scratch.push(b'\n');
                            scratch.extend_from_slice(value);
                        }
                    }
                }
                b"event" => out.event = Some(value),
                b"id" if memchr(0, value).is_none() => out.id = Some(value),
                b"retry" => {
                    if let Some(ms) = parse_digits(value) {
                        out.retry = Some(ms);
                    }
                }
                _ => {}
            },
        }
    }
    out.data = if joined {
        let scratch: &'a Vec<u8> = scratch;
        Some(scratch.as_slice())
    } else {
        first_data
    };
    out
}

/// ASCII digits only, no sign or space, checked for overflow.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every unit `framer` finds in `inputs`, as (bytes, empty), and what is left unended.
    fn units(mut framer: Framer, inputs: &[&[u8]]) -> (Vec<(Vec<u8>, bool)>, Vec<u8>) {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for input in inputs {
            let mut rest: &[u8] = input;
            while let Some(b) = framer.scan(rest) {
                cur.extend_from_slice(&rest[..b.len]);
                out.push((std::mem::take(&mut cur), b.empty));
                rest = &rest[b.len..];
            }
            cur.extend_from_slice(rest);
        }
        (out, cur)
    }

    fn events(inputs: &[&[u8]]) -> (Vec<(Vec<u8>, bool)>, Vec<u8>) {
        units(Framer::new(StreamFormat::EventStream), inputs)
    }

    fn owned(units: &[(&str, bool)]) -> Vec<(Vec<u8>, bool)> {
        units
            .iter()
            .map(|(s, e)| (s.as_bytes().to_vec(), *e))
            .collect()
    }

    #[test]
    fn scan_events_every_line_ending() {
        for (input, want) in [
            ("data: a\n\n", vec![("data: a\n\n", false)]),
            ("data: a\r\n\r\n", vec![("data: a\r\n\r\n", false)]),
            ("data: a\r\r", vec![("data: a\r\r", false)]),
            ("data: a\r\n\r", vec![("data: a\r\n\r", false)]),
            ("data: a\n\r\n", vec![("data: a\n\r\n", false)]),
            (
                "data: a\n\r\r\n",
                vec![("data: a\n\r", false), ("\r\n", true)],
            ),
            (
                ": c\nevent: e\nid: 1\nretry: 5\ndata: a\n\ndata: b\n\n",
                vec![
                    (": c\nevent: e\nid: 1\nretry: 5\ndata: a\n\n", false),
                    ("data: b\n\n", false),
                ],
            ),
            (
                "\ndata: a\n\n\n",
                vec![("\n", true), ("data: a\n\n", false), ("\n", true)],
            ),
        ] {
            let (got, rest) = events(&[input.as_bytes()]);
            assert_eq!(got, owned(&want), "{input:?}");
            let consumed: usize = got.iter().map(|(u, _)| u.len()).sum();
            assert_eq!(rest, &input.as_bytes()[consumed..], "{input:?}");
        }
    }

    #[test]
    fn scan_events_crlf_split_across_inputs_is_one_line_end() {
        // Without the carried CR state the LF would read as a blank line ending the event.
        let (got, rest) = events(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        // The blank line's CR ends the event at once; its LF, in the next input, in no event.
        assert_eq!(got, owned(&[("data: a\r\ndata: b\r\n\r", false)]));
        assert_eq!(rest, b"\n");
        let mut s = EventScanner::new();
        assert_eq!(s.scan(b"data: a\r"), None);
        assert!(s.in_event());
        assert_eq!(s.scan(b"\n"), None);
        assert!(s.in_event());
        assert_eq!(
            s.scan(b"\r"),
            Some(Boundary {
                len: 1,
                empty: false
            })
        );
        assert!(!s.in_event());
        assert_eq!(s.scan(b"\n"), None);
        assert!(!s.in_event());
    }

    #[test]
    fn scan_events_cr_then_other_byte_is_a_line_end() {
        let (got, rest) = events(&[b"data: a\r", b"data: b\r", b"\r"]);
        assert_eq!(got, owned(&[("data: a\rdata: b\r\r", false)]));
        assert!(rest.is_empty());
    }

    #[test]
    fn scan_lines_lf_and_crlf() {
        let (got, rest) = units(
            Framer::new(StreamFormat::JsonLines),
            &[b"{\"a\":1}\n{\"b\"", b":2}\r\n\r\n \n{\"c\""],
        );
        assert_eq!(
            got,
            owned(&[
                ("{\"a\":1}\n", false),
                ("{\"b\":2}\r\n", false),
                ("\r\n", true),
                (" \n", true)
            ])
        );
        assert_eq!(rest, b"{\"c\"");
        let mut s = LineScanner::new();
        assert_eq!(s.scan(b"  "), None);
        assert!(s.in_event());
        assert_eq!(
            s.scan(b"\n"),
            Some(Boundary {
                len: 1,
                empty: true
            })
        );
        assert!(!s.in_event());
    }

    #[test]
    fn parse_line_fields_and_comments() {
        assert_eq!(parse_line(b""), Line::Blank);
        assert_eq!(parse_line(b": ping"), Line::Comment(b" ping"));
        assert_eq!(
            parse_line(b"data:  two"),
            Line::Field {
                name: b"data",
                value: b" two"
            }
        );
        assert_eq!(
            parse_line(b"data:x:y"),
            Line::Field {
                name: b"data",
                value: b"x:y"
            }
        );
        assert_eq!(
            parse_line(b"data"),
            Line::Field {
                name: b"data",
                value: b""
            }
        );
    }

    #[test]
    fn parse_event_joins_data_and_keeps_last_fields() {
        let mut scratch = Vec::new();
        let e = parse_event(
            b"event: a\r\nevent: b\r\nid: 7\rid: x\0y\nretry: 12\nretry: -1\n: hi\ndata\ndata: 1\n\ndata: after\n",
            &mut scratch,
        );
        assert_eq!(e.event, Some(&b"b"[..]));
        assert_eq!(e.id, Some(&b"7"[..]));
        assert_eq!(e.retry, Some(12));
        assert_eq!(e.comments, 1);
        assert_eq!(e.data_lines, 2);
        assert_eq!(e.data, Some(&b"\n1"[..]));

        let mut scratch = Vec::new();
        let e = parse_event(b"data: only\n\n", &mut scratch);
        assert_eq!(e.data, Some(&b"only"[..]));
        assert!(scratch.is_empty(), "one data line is borrowed, not copied");
        let e = parse_event(b": ping\n\n", &mut scratch);
        assert_eq!(e.data, None);
        // The LF of a CRLF split from its CR, leading the next event, is not its end.
        let e = parse_event(b"\ndata: next\r\n\r\n", &mut scratch);
        assert_eq!(e.data, Some(&b"next"[..]));
        assert_eq!(parse_digits(b"18446744073709551616"), None);
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
    }

    #[test]
    fn content_types() {
        use StreamFormat::*;
        for (value, want) in [
            (&b"text/event-stream"[..], Some(EventStream)),
            (b"Text/Event-Stream; charset=utf-8", Some(EventStream)),
            (b"  text/event-stream  ;", Some(EventStream)),
            (b"application/x-ndjson", Some(JsonLines)),
            (b"application/jsonl; charset=utf-8", Some(JsonLines)),
            (b"application/json", None),
            (b"text/event-streams", None),
            (b"", None),
        ] {
            assert_eq!(StreamFormat::from_content_type(value), want, "{value:?}");
        }
    }

    /// A random event stream over a small alphabet rich in line ends and colons.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'\n'),
                Just(b'\r'),
                Just(b':'),
                Just(b'd'),
                Just(b' '),
                Just(b'{')
            ],
            0..64,
        )
    }

    /// The reference: cut at blank lines with a scan over the whole input. A blank line's
    /// CRLF stays with its event, unless the input was split between its CR and LF (`cuts`):
    /// then the event is cut after the CR, the LF not having arrived when it is dispatched.
    fn reference_events(input: &[u8], cuts: &[usize]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut i = 0;
        let mut line_has_content = false;
        while i < input.len() {
            let b = input[i];
            if b == b'\n' || b == b'\r' {
                let end = if b == b'\r' && input.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                if !line_has_content {
                    ends.push(if cuts.contains(&(i + 1)) { i + 1 } else { end });
                }
                line_has_content = false;
                i = end;
            } else {
                line_has_content = true;
                i += 1;
            }
        }
        ends
    }

    proptest! {
        #[test]
        fn scan_events_any_split_same_ends(input in stream_bytes(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for &p in &points {
                pieces.push(&input[last..p]);
                last = p;
            }
            pieces.push(&input[last..]);
            let mut scanner = EventScanner::new();
            let mut ends = Vec::new();
            let mut base = 0;
            for piece in pieces {
                let mut rest = piece;
                let mut off = base;
                while let Some(b) = scanner.scan(rest) {
                    off += b.len;
                    ends.push(off);
                    rest = &rest[b.len..];
                }
                base += piece.len();
            }
            prop_assert_eq!(ends, reference_events(&input, &points));
        }
    }
}
