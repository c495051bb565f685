//! A [`Stage`] that re-frames a streamed body so that every unit it sends is one whole
//! server-sent event (or one whole JSON line), whatever the upstream's chunks looked like.
//!
//! # Contract
//! - **Bytes unchanged, in order.** The concatenation of everything [`Aligner`] emits equals
//!   the concatenation of everything it was given, always (also past the bounds below).
//! - **One event per unit.** An event (or line) is emitted as a unit of its own, the moment its
//!   end arrives, in the same [`Stage::unit`] call: an event is never held back once complete.
//!   Several events in one input leave as several units; an event split over several inputs
//!   leaves as one unit when its last piece arrives.
//! - **Zero-copy where possible.** An event that lies within one input is a slice of it
//!   ([`Bytes::split_to`]); only an event that spans inputs is copied, into one reused buffer.
//! - **Bounded.** The aligner holds at most `max_event` bytes (default
//!   [`Aligner::DEFAULT_MAX_EVENT`], 1 MiB) of an unfinished event, in one of two buffers it
//!   reuses (each keeps at most 64 KiB of capacity between events). An event that spans inputs
//!   and grows past that is emitted in pieces as its bytes arrive, and counted
//!   ([`AlignCounts::oversized`]). An event that arrives whole inside one input is emitted whole
//!   whatever its size: it costs no memory beyond the input it came in.
//! - **End.** What is held at [`Stage::end`] (an event without its blank line, a line without
//!   its LF) is emitted as a unit of its own and counted ([`AlignCounts::partial_at_end`]).
//!
//! Two cases where a unit is not exactly one event, both forced by "never hold back":
//! - A blank line with no event before it (a keep-alive, or a second blank line after an event)
//!   is emitted as a unit of its own and is not counted as an event.
//! - When the input is split between the CR and the LF of the CRLF blank line that ends an
//!   event, the event is emitted at the CR (it is complete: a lone CR is a line end) and the LF
//!   leads the next unit, or is emitted alone when nothing follows it in its input. Clients'
//!   event-stream parsers treat that CR and LF as one line end either way.
//!
//! # Glued JSON
//! Some upstreams write two JSON payloads into one event. The aligner detects it and counts it
//! ([`AlignCounts::glued`]), never rewriting anything: an event is glued when its data (its
//! `data` lines joined by LF, as the format defines it) is a sequence of two or more JSON values
//! of which the first is an object: `data: {..}{..}` on one line, or `data: {..}` followed by
//! `data: {..}` in the same event. A JSON line is glued on the same rule. A single JSON value
//! spread over several `data` lines is not glued. A cheap scan for `}` followed by `{` or by a
//! line end and `data` selects the candidates; only those are parsed. Pieces of an oversized
//! event are not examined.
//!
//! ```
//! use bytes::Bytes;
//! use chunkgate::stream::{align::Aligner, Stage};
//!
//! let mut aligner = Aligner::for_content_type(b"text/event-stream; charset=utf-8").unwrap();
//! let mut out = Vec::new();
//! aligner.unit(Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""), &mut out);
//! aligner.unit(Bytes::from_static(b":2}\n\n"), &mut out);
//! assert_eq!(out, [&b"data: {\"a\":1}\n\n"[..], &b"data: {\"b\":2}\n\n"[..]]);
//! assert_eq!(aligner.counts().events, 2);
//! assert_eq!(aligner.counts().realigned, 1);
//! assert!(Aligner::for_content_type(b"application/json").is_none());
//! ```

use bytes::{Bytes, BytesMut};
use memchr::memchr_iter;
use serde::de::IgnoredAny;

use crate::codec::chunked::Field;
use crate::codec::sse::{parse_event, Framer, StreamFormat};
use crate::stream::Stage;

/// The most capacity a buffer keeps for reuse after the event in it was emitted: 64 KiB.
const KEEP_CAPACITY: usize = 64 << 10;

/// What the aligner saw, as plain counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlignCounts {
    /// Complete events (or lines) emitted, blank ones excluded.
    pub events: u64,
    /// Complete events that arrived split over more than one input (and were copied to be
    /// emitted whole). Oversized events are not counted here.
    pub realigned: u64,
    /// Inputs in which two or more events ended.
    pub coalesced: u64,
    /// Events that spanned inputs and outgrew `max_event`, so were emitted in pieces.
    pub oversized: u64,
    /// Bodies that ended inside an event (what was held went out as a unit of its own).
    pub partial_at_end: u64,
    /// Events holding two or more JSON values glued together (see the module docs).
    pub glued: u64,
}

/// The aligner stage. See the [module docs](self).
#[derive(Debug)]
pub struct Aligner {
    framer: Framer,
    max_event: usize,
    /// The start of an event that has not ended, from earlier inputs (at most `max_event`).
    held: BytesMut,
    /// Always empty: the buffer `held` swaps with each time a held event is emitted. The event
    /// just emitted still shares `held`'s allocation while the rest of its input is scanned;
    /// holding the next event's start in the other buffer lets each allocation be reused once
    /// the writer has dropped what was emitted from it, instead of allocating anew.
    spare: BytesMut,
    /// The event under way outgrew `max_event`: its bytes pass straight through until it ends.
    overflowing: bool,
    counts: AlignCounts,
    /// Where the data lines of a glued-candidate event are joined.
    scratch: Vec<u8>,
}

impl Aligner {
    /// Default most bytes of one unfinished event held: 1 MiB.
    pub const DEFAULT_MAX_EVENT: usize = 1 << 20;

    /// An aligner for a body of `format`.
    pub fn new(format: StreamFormat) -> Self {
        Aligner {
            framer: Framer::new(format),
            max_event: Self::DEFAULT_MAX_EVENT,
            held: BytesMut::new(),
            spare: BytesMut::new(),
            overflowing: false,
            counts: AlignCounts::default(),
            scratch: Vec::new(),
        }
    }

    /// An aligner for a response whose `Content-Type` field value is `value`:
    /// `text/event-stream` aligns events, `application/x-ndjson` (and the other JSON-lines
    /// types of [`StreamFormat::from_content_type`]) aligns lines. `None` for any other type:
    /// such bodies stay chunk-exact.
    pub fn for_content_type(value: &[u8]) -> Option<Self> {
        StreamFormat::from_content_type(value).map(Aligner::new)
    }

    /// Most bytes of one unfinished event held before it is emitted in pieces (default
    /// [`Self::DEFAULT_MAX_EVENT`]). Any value is valid; 0 emits every event that spans
    /// inputs as the pieces it came in.
    pub fn max_event(mut self, bytes: usize) -> Self {
        self.max_event = bytes;
        self
    }

    /// See [`Aligner::max_event`].
    pub fn max_event_limit(&self) -> usize {
        self.max_event
    }

    /// The format this aligner cuts.
    pub fn format(&self) -> StreamFormat {
        self.framer.format()
    }

    /// What the aligner saw so far.
    pub fn counts(&self) -> AlignCounts {
        self.counts
    }

    /// Bytes of an unfinished event held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Emit everything held, and hold the next event in the other buffer. A buffer grown past
    /// [`KEEP_CAPACITY`] by an unusually large event is let go (it is freed when the writer
    /// drops the event), so a long stream does not keep pinning it.
    fn take_held(&mut self) -> Bytes {
        let held = self.held.split().freeze();
        std::mem::swap(&mut self.held, &mut self.spare);
        if self.spare.capacity() > KEEP_CAPACITY {
            self.spare = BytesMut::new();
        }
        held
    }

    /// One whole event (or line) was cut off; count it and look for glued JSON.
    fn count_event(&mut self, event: &[u8]) {
        self.counts.events += 1;
        if may_be_glued(event) {
            let glued = match self.framer.format() {
                StreamFormat::EventStream => {
                    let fields = parse_event(event, &mut self.scratch);
                    fields.data.is_some_and(holds_several_json_values)
                }
                StreamFormat::JsonLines => holds_several_json_values(event),
            };
            if glued {
                self.counts.glued += 1;
            }
        }
    }
}

impl Stage for Aligner {
    fn unit(&mut self, mut input: Bytes, out: &mut Vec<Bytes>) {
        let mut ended = 0u32;
        while let Some(boundary) = self.framer.scan(&input) {
            let piece = input.split_to(boundary.len);
            if self.overflowing {
                // The tail of an oversized event: its earlier pieces are already out.
                self.overflowing = false;
                self.counts.events += 1;
                ended += 1;
                out.push(piece);
                continue;
            }
            let event = if self.held.is_empty() {
                piece
            } else {
                self.held.extend_from_slice(&piece);
                self.counts.realigned += 1;
                self.take_held()
            };
            if !boundary.empty {
                self.count_event(&event);
                ended += 1;
            }
            out.push(event);
        }
        if ended >= 2 {
            self.counts.coalesced += 1;
        }
        if input.is_empty() {
            return;
        }
        // `input` now starts an event that has not ended.
        if !self.framer.in_event() || self.overflowing {
            // Either only the LF of a CRLF whose CR ended the last event (no event starts
            // here: nothing to wait for), or more of an oversized event.
            out.push(input);
            return;
        }
        if self.held.len() + input.len() > self.max_event {
            self.counts.oversized += 1;
            self.overflowing = true;
            if !self.held.is_empty() {
                let held = self.take_held();
                out.push(held);
            }
            out.push(input);
            return;
        }
        self.held.extend_from_slice(&input);
    }

    fn end(&mut self, _trailers: &[Field], out: &mut Vec<Bytes>) {
        if !self.held.is_empty() {
            let held = self.take_held();
            out.push(held);
            self.counts.partial_at_end += 1;
        } else if self.overflowing {
            self.counts.partial_at_end += 1;
        }
        self.overflowing = false;
        self.framer = Framer::new(self.framer.format());
    }
}

/// A cheap filter for glued JSON: a `}` followed (after spaces or tabs) by `{`, or by a line
/// end and another `data` line.
fn may_be_glued(event: &[u8]) -> bool {
    memchr_iter(b'}', event).any(|at| {
        let rest = &event[at + 1..];
        let rest = skip_blank(rest);
        if rest.first() == Some(&b'{') {
            return true;
        }
        let rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .or_else(|| rest.strip_prefix(b"\r"));
        rest.is_some_and(|r| r.starts_with(b"data"))
    })
}

/// Spaces and tabs trimmed from the front.
fn skip_blank(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[n..]
}

/// `data` is two or more JSON values one after the other, the first an object. Parses without
/// allocating (values are skipped, not built).
fn holds_several_json_values(data: &[u8]) -> bool {
    if data.trim_ascii_start().first() != Some(&b'{') {
        return false;
    }
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<IgnoredAny>();
    matches!((values.next(), values.next()), (Some(Ok(_)), Some(Ok(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(aligner: &mut Aligner, inputs: &[&[u8]]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for input in inputs {
            aligner.unit(Bytes::copy_from_slice(input), &mut out);
        }
        aligner.end(&[], &mut out);
        out
    }

    fn sse() -> Aligner {
        Aligner::new(StreamFormat::EventStream)
    }

    fn strs(units: &[Bytes]) -> Vec<String> {
        units
            .iter()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .collect()
    }

    #[test]
    fn align_one_event_across_many_inputs() {
        let mut a = sse();
        let out = run(&mut a, &[b"da", b"ta: {\"a\"", b":1}\n", b"\n"]);
        assert_eq!(strs(&out), ["data: {\"a\":1}\n\n"]);
        assert_eq!(
            a.counts(),
            AlignCounts {
                events: 1,
                realigned: 1,
                ..AlignCounts::default()
            }
        );
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn align_many_events_in_one_input_zero_copy() {
        let mut a = sse();
        let input = Bytes::from_static(b"event: x\ndata: 1\n\n: ping\n\ndata: 2\n\ndata: 3");
        let mut out = Vec::new();
        a.unit(input.clone(), &mut out);
        assert_eq!(
            strs(&out),
            ["event: x\ndata: 1\n\n", ": ping\n\n", "data: 2\n\n"]
        );
        // Slices of the input, not copies.
        assert_eq!(out[0].as_ptr(), input.as_ptr());
        assert_eq!(out[1].as_ptr(), input[18..].as_ptr());
        assert_eq!(a.counts().coalesced, 1);
        assert_eq!(a.counts().events, 3);
        assert_eq!(a.held(), 7, "the start of `data: 3` waits for its end");
        a.unit(Bytes::from_static(b"\n\n"), &mut out);
        assert_eq!(strs(&out[3..]), ["data: 3\n\n"]);
        assert_eq!(a.counts().realigned, 1);
    }

    #[test]
    fn align_emits_an_event_in_the_call_its_blank_line_arrives() {
        let mut a = sse();
        let mut out = Vec::new();
        a.unit(Bytes::from_static(b"data: 1\n"), &mut out);
        assert!(out.is_empty());
        a.unit(Bytes::from_static(b"\n"), &mut out);
        assert_eq!(strs(&out), ["data: 1\n\n"]);
        // A lone CR is a complete line end: the event goes out without waiting for an LF.
        a.unit(Bytes::from_static(b"data: 2\r\n\r"), &mut out);
        assert_eq!(strs(&out[1..]), ["data: 2\r\n\r"]);
    }

    #[test]
    fn align_crlf_split_inside_an_event() {
        let mut a = sse();
        let out = run(&mut a, &[b"data: 1\r", b"\ndata: 2\r\n\r\n"]);
        assert_eq!(strs(&out), ["data: 1\r\ndata: 2\r\n\r\n"]);
        assert_eq!(a.counts().events, 1);
    }

    #[test]
    fn align_crlf_split_in_the_blank_line() {
        let mut a = sse();
        let out = run(
            &mut a,
            &[
                b"data: 1\r\n\r",
                b"\ndata: 2\r\n\r",
                b"\n",
                b"data: 3\r\n\r\n",
            ],
        );
        assert_eq!(
            strs(&out),
            ["data: 1\r\n\r", "\ndata: 2\r\n\r", "\n", "data: 3\r\n\r\n"]
        );
        assert_eq!(a.counts().events, 3);
        assert_eq!(a.counts().partial_at_end, 0);
    }

    #[test]
    fn align_blank_lines_without_events_are_not_held() {
        let mut a = sse();
        let mut out = Vec::new();
        a.unit(Bytes::from_static(b"\n"), &mut out);
        assert_eq!(strs(&out), ["\n"]);
        a.unit(Bytes::from_static(b"data: 1\n\n\n"), &mut out);
        assert_eq!(strs(&out), ["\n", "data: 1\n\n", "\n"]);
        assert_eq!(a.counts().events, 1);
    }

    #[test]
    fn align_partial_event_at_end() {
        let mut a = sse();
        let out = run(&mut a, &[b"data: 1\n\ndata: 2\n", b"data: 3"]);
        assert_eq!(strs(&out), ["data: 1\n\n", "data: 2\ndata: 3"]);
        assert_eq!(a.counts().partial_at_end, 1);
        assert_eq!(a.counts().events, 1);
    }

    #[test]
    fn align_oversized_event_goes_out_in_pieces() {
        let mut a = sse().max_event(10);
        let out = run(
            &mut a,
            &[
                b"data: 1234",
                b"5678",
                b"90\n",
                b"\ndata: 1\n\n",
                b"data: x",
            ],
        );
        assert_eq!(
            strs(&out),
            ["data: 1234", "5678", "90\n", "\n", "data: 1\n\n", "data: x"]
        );
        let c = a.counts();
        assert_eq!(c.oversized, 1);
        assert_eq!(c.events, 2);
        assert_eq!(c.realigned, 0);
        assert_eq!(c.partial_at_end, 1);
        // Never more than the bound held.
        let mut a = sse().max_event(4);
        let mut out = Vec::new();
        for b in b"data: long\n\n" {
            a.unit(Bytes::copy_from_slice(&[*b]), &mut out);
            assert!(a.held() <= 4);
        }
        assert_eq!(out.concat(), b"data: long\n\n");
        assert_eq!(a.counts().oversized, 1);
        // An event whole in one input is never cut, whatever its size.
        let mut a = sse().max_event(4);
        let out = run(&mut a, &[b"data: long\n\n"]);
        assert_eq!(strs(&out), ["data: long\n\n"]);
        assert_eq!(a.counts().oversized, 0);
    }

    #[test]
    fn align_lets_go_of_a_buffer_grown_by_a_large_event() {
        let mut a = sse();
        let big = vec![b'x'; 200 << 10];
        let out = run(&mut a, &[b"data: ", &big, b"\n\n", b"data: 1", b"\n\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 6 + (200 << 10) + 2);
        assert!(a.held.capacity() <= KEEP_CAPACITY);
        assert!(a.spare.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn align_oversized_partial_at_end_counts() {
        let mut a = sse().max_event(3);
        let out = run(&mut a, &[b"da", b"ta: 1"]);
        assert_eq!(out.concat(), b"data: 1");
        assert_eq!(a.counts().oversized, 1);
        assert_eq!(a.counts().partial_at_end, 1);
    }

    #[test]
    fn align_glued_json_detection() {
        for (event, glued) in [
            (&b"data: {\"a\":1}{\"b\":2}\n\n"[..], true),
            (b"data: {\"a\":1} {\"b\":2}\n\n", true),
            (b"data: {\"a\":1}\ndata: {\"b\":2}\n\n", true),
            (b"event: e\r\ndata: {\"a\":{}}\r\ndata: [1]\r\n\r\n", true),
            (b"data: {\"a\":1}\n\n", false),
            (b"data: {\"t\":\"}{\"}\n\n", false),
            (b"data: {\"a\":\n data: 1}\n\n", false),
            (b"data: {\ndata: \"a\": {}\ndata: }\n\n", false),
            (b"data: [DONE]\n\n", false),
            (b"data: {\"a\":1}{broken\n\n", false),
            (b"data: [1][2]\n\n", false),
        ] {
            let mut a = sse();
            run(&mut a, &[event]);
            assert_eq!(
                a.counts().glued,
                u64::from(glued),
                "{}",
                String::from_utf8_lossy(event)
            );
        }
        let mut a = Aligner::new(StreamFormat::JsonLines);
        run(&mut a, &[b"{\"a\":1}{\"b\":2}\n{\"a\":\"}{\"}\n"]);
        assert_eq!(a.counts().glued, 1);
    }

    #[test]
    fn align_ndjson_one_line_per_unit() {
        let mut a = Aligner::for_content_type(b"application/x-ndjson").unwrap();
        assert_eq!(a.format(), StreamFormat::JsonLines);
        let out = run(
            &mut a,
            &[
                b"{\"a\":1}\n{\"b\"",
                b":2}\r\n",
                b"{\"c\":3}\n{\"d\":4}\n{\"e\"",
            ],
        );
        assert_eq!(
            strs(&out),
            [
                "{\"a\":1}\n",
                "{\"b\":2}\r\n",
                "{\"c\":3}\n",
                "{\"d\":4}\n",
                "{\"e\""
            ]
        );
        let c = a.counts();
        assert_eq!((c.events, c.realigned, c.coalesced), (4, 1, 1));
        assert_eq!(c.partial_at_end, 1);
    }

    #[test]
    fn align_for_content_type_only_streams() {
        assert!(Aligner::for_content_type(b"text/event-stream").is_some());
        assert!(Aligner::for_content_type(b"application/jsonl").is_some());
        assert!(Aligner::for_content_type(b"application/json").is_none());
        assert!(Aligner::for_content_type(b"text/plain").is_none());
    }

    /// One random event: some lines (fields, comments), a line ending per line, a blank line.
    fn event_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-z ]{0,12}".prop_map(|s| format!("data: {{\"t\":\"{s}\"}}")),
            "[a-z]{1,8}".prop_map(|s| format!("event: {s}")),
            "[a-z ]{0,8}".prop_map(|s| format!(":{s}")),
            Just("id: 7".to_string()),
            Just("data".to_string()),
        ];
        let ending = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        (
            proptest::collection::vec((line, ending.clone()), 1..4),
            ending,
        )
            .prop_map(|(lines, blank)| {
                let mut e = String::new();
                for (l, end) in lines {
                    e.push_str(&l);
                    e.push_str(end);
                }
                // A CR ending the last line and an LF would be one CRLF, not a blank line.
                e.push_str(if e.ends_with('\r') && blank == "\n" {
                    "\r"
                } else {
                    blank
                });
                e.into_bytes()
            })
    }

    /// Undo the one licensed difference from "one event per unit": an LF leading a unit after
    /// a unit that ended with CR is the rest of that CRLF. Returns the units and how many LFs
    /// were moved.
    fn rejoin_split_crlf(units: &[Bytes]) -> (Vec<Vec<u8>>, usize) {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut moved = 0;
        for u in units {
            let mut u: &[u8] = u;
            if let Some(prev) = out.last_mut() {
                if prev.last() == Some(&b'\r') && u.first() == Some(&b'\n') {
                    prev.push(b'\n');
                    u = &u[1..];
                    moved += 1;
                }
            }
            if !u.is_empty() {
                out.push(u.to_vec());
            }
        }
        (out, moved)
    }

    proptest! {
        #[test]
        fn align_arbitrary_bytes_pass_unchanged(
            body in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'}'), Just(b'{'), any::<u8>()],
                0..200,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            lines in any::<bool>(),
            max_event in prop_oneof![Just(usize::MAX), 0usize..32],
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut inputs: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for &p in &points {
                inputs.push(&body[last..p]);
                last = p;
            }
            inputs.push(&body[last..]);
            let format = if lines { StreamFormat::JsonLines } else { StreamFormat::EventStream };
            let mut a = Aligner::new(format).max_event(max_event);
            let mut out = Vec::new();
            for input in &inputs {
                a.unit(Bytes::copy_from_slice(input), &mut out);
                prop_assert!(a.held() <= max_event);
            }
            a.end(&[], &mut out);
            prop_assert_eq!(out.concat(), body);
            prop_assert!(out.iter().all(|u| !u.is_empty()));
            prop_assert_eq!(a.held(), 0);
        }

        #[test]
        fn align_any_split_gives_whole_events(
            events in proptest::collection::vec(event_strategy(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max_event in prop_oneof![Just(usize::MAX), 8usize..64],
        ) {
            let wire = events.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut inputs: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for &p in &points {
                inputs.push(&wire[last..p]);
                last = p;
            }
            inputs.push(&wire[last..]);
            let mut a = sse().max_event(max_event);
            let out = run(&mut a, &inputs);
            prop_assert_eq!(out.concat(), wire.clone());
            prop_assert!(out.iter().all(|u| !u.is_empty()));
            let c = a.counts();
            prop_assert_eq!(c.partial_at_end, 0);
            if c.oversized == 0 {
                let (units, moved) = rejoin_split_crlf(&out);
                prop_assert_eq!(units, events.clone());
                // Only a split between a blank line's CR and LF moves an LF.
                prop_assert!(moved <= points.len());
                prop_assert_eq!(c.events, events.len() as u64);
            }
        }
    }
}
