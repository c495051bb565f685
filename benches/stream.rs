//! What the aligner and the tap cost per event on an OpenAI chat token stream, in time and in
//! allocations, and a check that neither allocates per event once warm.
//!
//! The stream is `testdata/stream/openai-chat/stream-usage.sse` with its content deltas
//! repeated to 10,000 events (about 300 bytes each), then its finish, usage and `[DONE]`
//! events. It is cut three ways: one event per input (an upstream that already sends one event
//! per chunk), each event split in two (every event spans inputs: the aligner copies each one,
//! the tap buffers each one), and 1,500-byte inputs (whole events and pieces mixed, as reads of
//! a close-delimited body). Inputs are prepared before timing; each pass uses a new aligner or
//! tap, as each response does. Time is the best of 15 passes, divided by the event count.
//! Allocations are counted by a global allocator over one whole pass, so they include the
//! first-use growth of every buffer (that is the "per stream" part).
//!
//! Run: `cargo bench --bench stream [SHAPE]` (a shape name, e.g. `"event per input"`, runs that
//! one alone). It exits non-zero if either stage makes more than one allocation per 100 events
//! in any shape.
//!
//! Instructions per event (steadier than time on a shared machine): one pass is
//! `align_pass` or `tap_pass`, so under callgrind
//!
//! ```text
//! cargo bench --bench stream --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*align_pass*' \
//!     --callgrind-out-file=/tmp/cg.out target/release/deps/stream-<hash> "event per input"
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

fn token_stream() -> (Vec<u8>, Vec<usize>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/stream/openai-chat/stream-usage.sse"
    );
    let fixture = std::fs::read(path).expect("fixture");
    let mut events: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for i in 1..fixture.len() {
        if fixture[i - 1] == b'\n' && fixture[i] == b'\n' {
            events.push(&fixture[start..=i]);
            start = i + 1;
        }
    }
    let (first, rest) = events.split_first().unwrap();
    let (tail, deltas) = (&rest[rest.len() - 3..], &rest[..rest.len() - 3]);
    let mut wire = first.to_vec();
    let mut ends = vec![wire.len()];
    for i in 0..EVENTS - 4 {
        wire.extend_from_slice(deltas[i % deltas.len()]);
        ends.push(wire.len());
    }
    for e in tail {
        wire.extend_from_slice(e);
        ends.push(wire.len());
    }
    (wire, ends)
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
fn tap_pass(inputs: &[Bytes], at: Instant) {
    let mut tap = Tap::new(b"/v1/chat/completions", Some(b"text/event-stream"));
    for input in inputs {
        tap.observe(input, at);
    }
    tap.end();
    let summary = tap.summary();
    assert_eq!(summary.events, EVENTS as u64);
    assert!(summary.complete && summary.usage.total == Some(40));
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
    let (wire, ends) = token_stream();
    assert_eq!(ends.len(), EVENTS);
    let wire = Bytes::from(wire);
    // Make the buffer shared now, so that slicing it later allocates nothing.
    let _shared = wire.clone();
    let at = Instant::now();
    println!(
        "OpenAI chat stream: {EVENTS} events, {} bytes ({} bytes per event)",
        wire.len(),
        wire.len() / EVENTS
    );
    println!(
        "{:<8} {:<20} {:>10} {:>14} {:>14}",
        "stage", "shape", "ns/event", "allocs/event", "bytes/event"
    );
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut failed = false;
    for shape in ["event per input", "event in 2 inputs", "1500-byte inputs"] {
        if !only.is_empty() && !only.iter().any(|o| o == shape) {
            continue;
        }
        let inputs = cut(&wire, &ends, shape);
        let mut out: Vec<Bytes> = Vec::with_capacity(64);
        let align = measure(|| align_pass(&inputs, &mut out));
        let tap = measure(|| tap_pass(&inputs, at));
        for (stage, m) in [("align", &align), ("tap", &tap)] {
            println!(
                "{stage:<8} {shape:<20} {:>10.1} {:>14.4} {:>14.1}",
                m.ns_per_event, m.allocs_per_event, m.bytes_per_event
            );
            if m.allocs_per_event > 0.01 {
                eprintln!("{stage} allocates per event with {shape}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
