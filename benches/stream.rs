//! What the aligner and the tap cost per event on token streams, in time and in allocations,
//! and a check that neither allocates per event once warm.
//!
//! Each stream is a fixture of `testdata/stream/` with its text deltas repeated to 10,000
//! events, its first events before them and its last ones (finish, usage, end marker) after:
//!
//! | dialect | fixture | event (about) |
//! |---|---|---|
//! | `openai-chat` | `openai-chat/stream-usage.sse` | 300 bytes |
//! | `openai-responses` | `openai-responses/stream.sse` | 200 bytes |
//! | `anthropic-messages` | `anthropic-messages/stream-korean.sse` | 130 bytes |
//! | `ollama-chat` | `ollama-chat/stream.ndjson` | 130 bytes |
//!
//! The aligner runs on the OpenAI chat stream; the tap on each. A stream is cut three ways:
//! one event per input (an upstream that already sends one event per chunk), each event split
//! in two (every event spans inputs: the aligner copies each one, the tap buffers each one),
//! and 1,500-byte inputs (whole events and pieces mixed, as reads of a close-delimited body).
//! Inputs are prepared before timing; each pass uses a new aligner or tap, as each response
//! does. Time is the best of 15 passes, divided by the event count. Allocations are counted by
//! a global allocator over one whole pass, so they include the first-use growth of every
//! buffer (that is the "per stream" part).
//!
//! Run: `cargo bench --bench stream [FILTER...]`: a shape name (`"event per input"`) or a
//! dialect name (`openai-responses`) runs only the matching rows (`align` counts as the
//! dialect of the aligner's rows). It exits non-zero if either stage makes more than one
//! allocation per 100 events in any shape.
//!
//! Instructions per event (steadier than time on a shared machine): one pass is
//! `align_pass` or `tap_pass`, so under callgrind
//!
//! ```text
//! cargo bench --bench stream --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*tap_pass*' \
//!     --callgrind-out-file=/tmp/cg.out target/release/deps/stream-<hash> \
//!     "event per input" anthropic-messages
//! callgrind_annotate --inclusive=yes /tmp/cg.out | head
//! ```
//!
//! the total divided by `(1 + PASSES) * EVENTS` (16 × 10,000) is instructions per event.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkgate::stream::align::Aligner;
use chunkgate::stream::tap::Tap;
use chunkgate::stream::Stage;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const EVENTS: usize = 10_000;
const PASSES: usize = 15;

/// One dialect's token stream.
struct Stream {
    dialect: &'static str,
    path: &'static [u8],
    content_type: &'static [u8],
    wire: Bytes,
    /// Where each event ends in `wire`.
    ends: Vec<usize>,
    /// The usage total its last events report.
    total: u64,
}

/// Where one dialect's stream comes from.
struct Spec {
    dialect: &'static str,
    fixture: &'static str,
    path: &'static [u8],
    content_type: &'static [u8],
    /// What ends an event (or line) in the fixture.
    separator: &'static [u8],
    /// Bytes only a text delta event holds.
    marker: &'static [u8],
    /// The usage total its last events report.
    total: u64,
}

const STREAMS: [Spec; 4] = [
    Spec {
        dialect: "openai-chat",
        fixture: "openai-chat/stream-usage.sse",
        path: b"/v1/chat/completions",
        content_type: b"text/event-stream",
        separator: b"\n\n",
        marker: b"\"delta\":{\"content\"",
        total: 40,
    },
    Spec {
        dialect: "openai-responses",
        fixture: "openai-responses/stream.sse",
        path: b"/v1/responses",
        content_type: b"text/event-stream",
        separator: b"\n\n",
        marker: b"response.output_text.delta",
        total: 123,
    },
    Spec {
        dialect: "anthropic-messages",
        fixture: "anthropic-messages/stream-korean.sse",
        path: b"/v1/messages",
        content_type: b"text/event-stream",
        separator: b"\n\n",
        marker: b"content_block_delta",
        total: 36,
    },
    Spec {
        dialect: "ollama-chat",
        fixture: "ollama-chat/stream.ndjson",
        path: b"/api/chat",
        content_type: b"application/x-ndjson",
        separator: b"\n",
        marker: b"\"done\":false",
        total: 35,
    },
];

/// The fixture's events before its first text delta, then its deltas repeated, then its events
/// after the last delta: `EVENTS` events in all.
fn token_stream(spec: &Spec) -> Stream {
    let sep = spec.separator;
    let marker = spec.marker;
    let file = format!(
        "{}/testdata/stream/{}",
        env!("CARGO_MANIFEST_DIR"),
        spec.fixture
    );
    let fixture = std::fs::read(file).expect("fixture");
    let mut events: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    while let Some(at) = find(&fixture[start..], sep) {
        events.push(&fixture[start..start + at + sep.len()]);
        start += at + sep.len();
    }
    let is_delta = |e: &[u8]| find(e, marker).is_some();
    let first = events.iter().position(|e| is_delta(e)).expect("a delta");
    let last = events.iter().rposition(|e| is_delta(e)).expect("a delta");
    let (head, deltas, tail) = (&events[..first], &events[first..=last], &events[last + 1..]);
    let mut wire = Vec::new();
    let mut ends = Vec::new();
    let mut push = |e: &[u8]| {
        wire.extend_from_slice(e);
        ends.push(wire.len());
    };
    head.iter().for_each(|e| push(e));
    for i in 0..EVENTS - head.len() - tail.len() {
        push(deltas[i % deltas.len()]);
    }
    tail.iter().for_each(|e| push(e));
    Stream {
        dialect: spec.dialect,
        path: spec.path,
        content_type: spec.content_type,
        wire: Bytes::from(wire),
        ends,
        total: spec.total,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The inputs of one shape, as slices of one shared buffer (cloning them does not allocate).
fn cut(wire: &Bytes, ends: &[usize], shape: &str) -> Vec<Bytes> {
    let mut points = Vec::new();
    match shape {
        "event per input" => points.extend_from_slice(ends),
        "event in 2 inputs" => {
            let mut start = 0;
            for &end in ends {
                points.push(start + (end - start) / 2);
                points.push(end);
                start = end;
            }
        }
        "1500-byte inputs" => {
            points.extend((1500..wire.len()).step_by(1500));
            points.push(wire.len());
        }
        _ => unreachable!("unknown shape"),
    }
    let mut last = 0;
    points
        .into_iter()
        .map(|p| {
            let piece = wire.slice(last..p);
            last = p;
            piece
        })
        .collect()
}

/// One stream through a new aligner, one input at a time, as the pump drives it.
#[inline(never)]
fn align_pass(inputs: &[Bytes], out: &mut Vec<Bytes>) {
    let mut aligner = Aligner::for_content_type(b"text/event-stream").unwrap();
    for input in inputs {
        aligner.unit(input.clone(), out);
        black_box(&out);
        out.clear();
    }
    aligner.end(&[], out);
    assert_eq!(aligner.counts().events, EVENTS as u64);
    out.clear();
}

/// One stream through a new tap, then its summary.
#[inline(never)]
fn tap_pass(stream: &Stream, inputs: &[Bytes], at: Instant) {
    let mut tap = Tap::new(stream.path, Some(stream.content_type));
    for input in inputs {
        tap.observe(input, at);
    }
    tap.end();
    let summary = tap.summary();
    assert_eq!(summary.events, EVENTS as u64);
    assert!(summary.complete, "{}", stream.dialect);
    assert_eq!(
        summary.usage.total,
        Some(stream.total),
        "{}",
        stream.dialect
    );
    assert!(summary.model.is_some() && !summary.text.is_empty());
    black_box(summary);
}

struct Measure {
    ns_per_event: f64,
    allocs_per_event: f64,
    bytes_per_event: f64,
}

/// Run `pass` (one whole stream) PASSES times; the best time, and the allocations of one pass.
fn measure(mut pass: impl FnMut()) -> Measure {
    let region = Region::new(GLOBAL);
    pass();
    let stats = region.change();
    let mut best = Duration::MAX;
    for _ in 0..PASSES {
        let t = Instant::now();
        pass();
        best = best.min(t.elapsed());
    }
    Measure {
        ns_per_event: best.as_nanos() as f64 / EVENTS as f64,
        allocs_per_event: (stats.allocations + stats.reallocations) as f64 / EVENTS as f64,
        bytes_per_event: stats.bytes_allocated as f64 / EVENTS as f64,
    }
}

fn main() {
    let streams: Vec<Stream> = STREAMS.iter().map(token_stream).collect();
    // Make the buffers shared now, so that slicing them later allocates nothing.
    let _shared: Vec<Bytes> = streams.iter().map(|s| s.wire.clone()).collect();
    let at = Instant::now();
    for s in &streams {
        assert_eq!(s.ends.len(), EVENTS);
        println!(
            "{}: {EVENTS} events, {} bytes ({} bytes per event)",
            s.dialect,
            s.wire.len(),
            s.wire.len() / EVENTS
        );
    }
    println!(
        "{:<6} {:<20} {:<20} {:>10} {:>14} {:>14}",
        "stage", "dialect", "shape", "ns/event", "allocs/event", "bytes/event"
    );
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shapes = ["event per input", "event in 2 inputs", "1500-byte inputs"];
    let wanted = |name: &str, all: &[&str]| {
        let named: Vec<&String> = only.iter().filter(|o| all.contains(&o.as_str())).collect();
        named.is_empty() || named.iter().any(|o| *o == name)
    };
    let dialects: Vec<&str> = std::iter::once("align")
        .chain(streams.iter().map(|s| s.dialect))
        .collect();
    let mut failed = false;
    let mut report = |stage: &str, dialect: &str, shape: &str, m: Measure| {
        println!(
            "{stage:<6} {dialect:<20} {shape:<20} {:>10.1} {:>14.4} {:>14.1}",
            m.ns_per_event, m.allocs_per_event, m.bytes_per_event
        );
        if m.allocs_per_event > 0.01 {
            eprintln!("{stage} allocates per event on {dialect} with {shape}");
            failed = true;
        }
    };
    for shape in shapes {
        if !wanted(shape, &shapes) {
            continue;
        }
        if wanted("align", &dialects) {
            let chat = &streams[0];
            let inputs = cut(&chat.wire, &chat.ends, shape);
            let mut out: Vec<Bytes> = Vec::with_capacity(64);
            report(
                "align",
                chat.dialect,
                shape,
                measure(|| align_pass(&inputs, &mut out)),
            );
        }
        for stream in streams.iter().filter(|s| wanted(s.dialect, &dialects)) {
            let inputs = cut(&stream.wire, &stream.ends, shape);
            report(
                "tap",
                stream.dialect,
                shape,
                measure(|| tap_pass(stream, &inputs, at)),
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
