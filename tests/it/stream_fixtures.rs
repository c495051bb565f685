//! The recorded-shape answers in `testdata/stream/<dialect>/`, each beside its expected
//! summary (`<name>.expected.json`), run through the tap and the aligner whole, split in two at
//! every byte, and one byte per input. Whatever the split, the tap's summary is the expected
//! one, and the aligner emits exactly the fixture's events, one per unit, with the bytes
//! unchanged.
//!
//! An expected file holds the request path and `Content-Type` to use, every field of
//! [`Summary`] (`first_token_event` names the unit whose arrival gives `first_token_at`,
//! `"end"` for a document, `null` for none) and `units`, the number of events or lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkgate::stream::align::Aligner;
use chunkgate::stream::tap::{Summary, Tap};
use chunkgate::stream::Stage;
use serde_json::{json, Value};

struct Fixture {
    name: String,
    body: Vec<u8>,
    expected: Value,
}

impl Fixture {
    fn path(&self) -> &[u8] {
        self.expected["path"].as_str().unwrap().as_bytes()
    }
    fn content_type(&self) -> &[u8] {
        self.expected["content_type"].as_str().unwrap().as_bytes()
    }
    fn is_stream(&self) -> bool {
        !self.name.ends_with(".json")
    }
    fn is_crlf(&self) -> bool {
        self.body.windows(2).any(|w| w == b"\r\n")
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/stream")
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".expected.json") || name.ends_with(".md") {
                continue;
            }
            let stem = name.rsplit_once('.').unwrap().0;
            let expected_path = dir.join(format!("{stem}.expected.json"));
            let expected: Value =
                serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
            out.push(Fixture {
                name: format!("{}/{name}", dir.file_name().unwrap().to_str().unwrap()),
                body: std::fs::read(&file).unwrap(),
                expected,
            });
        }
    }
    out
}

/// The fixture's events (or lines), cut by plain text search: its line endings are uniform.
fn reference_units(f: &Fixture) -> Vec<Vec<u8>> {
    let end: &[u8] = if f.name.ends_with(".ndjson") {
        b"\n"
    } else if f.is_crlf() {
        b"\r\n\r\n"
    } else {
        b"\n\n"
    };
    let mut units = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + end.len() <= f.body.len() {
        if &f.body[i..i + end.len()] == end {
            units.push(f.body[start..i + end.len()].to_vec());
            i += end.len();
            start = i;
        } else {
            i += 1;
        }
    }
    assert_eq!(start, f.body.len(), "{}: ends inside a unit", f.name);
    units
}

/// The offset of the byte whose arrival completes unit `k`: the LF of its end, or for CRLF
/// events the CR of the blank line (a lone CR already ends a line).
fn completing_byte(f: &Fixture, units: &[Vec<u8>], k: usize) -> usize {
    let end: usize = units[..=k].iter().map(Vec::len).sum();
    if f.is_crlf() && !f.name.ends_with(".ndjson") {
        end - 2
    } else {
        end - 1
    }
}

/// The summary as the expected files write it (`first_token_at` is checked apart).
fn summary_json(s: &Summary) -> Value {
    json!({
        "dialect": s.dialect.map(|d| d.name()),
        "model": s.model,
        "text": s.text,
        "truncated": s.truncated,
        "finish_reason": s.finish_reason,
        "usage": {
            "input": s.usage.input,
            "output": s.usage.output,
            "total": s.usage.total,
            "cached": s.usage.cached,
            "reasoning": s.usage.reasoning,
        },
        "error": s.error.as_ref().map(|e| json!({"kind": e.kind, "message": e.message})),
        "events": s.events,
        "complete": s.complete,
        "skipped": s.skipped,
        "invalid": s.invalid,
    })
}

fn expected_summary(f: &Fixture) -> Value {
    let mut v = f.expected.clone();
    let o = v.as_object_mut().unwrap();
    for k in ["path", "content_type", "first_token_event", "units"] {
        o.remove(k);
    }
    v
}

/// Cut `body` at `points` (ascending, inside the body) into non-empty pieces.
fn pieces<'a>(body: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut last = 0;
    for &p in points {
        out.push(&body[last..p]);
        last = p;
    }
    out.push(&body[last..]);
    out
}

/// Feed the tap `pieces`, write `i` at `t0 + i ms`. Returns the summary and the index of the
/// write `first_token_at` names.
fn run_tap(f: &Fixture, pieces: &[&[u8]]) -> (Summary, Option<usize>) {
    let t0 = Instant::now();
    let mut tap = Tap::new(f.path(), Some(f.content_type()));
    for (i, p) in pieces.iter().enumerate() {
        tap.observe(p, t0 + Duration::from_millis(i as u64));
    }
    tap.end();
    let s = tap.summary();
    let write = s
        .first_token_at
        .map(|at| usize::try_from((at - t0).as_millis()).unwrap());
    (s, write)
}

/// The write that should carry the first token, for pieces cut at `points`.
fn expected_first_token_write(f: &Fixture, points: &[usize], units: &[Vec<u8>]) -> Option<usize> {
    match &f.expected["first_token_event"] {
        Value::Null => None,
        Value::String(s) if s == "end" => Some(points.len()),
        Value::Number(n) => {
            let byte = completing_byte(f, units, n.as_u64().unwrap() as usize);
            Some(points.iter().filter(|&&p| p <= byte).count())
        }
        other => panic!("{}: bad first_token_event {other}", f.name),
    }
}

fn check_tap(f: &Fixture, points: &[usize], units: &[Vec<u8>], want: &Value) {
    let (s, write) = run_tap(f, &pieces(&f.body, points));
    let got = summary_json(&s);
    assert_eq!(
        &got,
        want,
        "{} cut at {:?}",
        f.name,
        &points[..points.len().min(4)]
    );
    assert_eq!(
        write,
        expected_first_token_write(f, points, units),
        "{} first token, cut at {:?}",
        f.name,
        &points[..points.len().min(4)]
    );
}

#[test]
fn fixtures_cover_every_dialect() {
    let all = fixtures();
    for dialect in [
        "openai-chat",
        "openai-completions",
        "openai-responses",
        "anthropic-messages",
        "ollama-chat",
        "ollama-generate",
    ] {
        let of: Vec<_> = all
            .iter()
            .filter(|f| f.name.starts_with(&format!("{dialect}/")))
            .collect();
        assert!(of.iter().any(|f| f.is_stream()), "{dialect}: no stream");
        assert!(of.iter().any(|f| !f.is_stream()), "{dialect}: no document");
        for f in of {
            assert_eq!(f.expected["dialect"], dialect, "{}", f.name);
        }
    }
}

#[test]
fn tap_fixture_whole_split_and_bytewise_same_summary() {
    for f in fixtures() {
        let units = if f.is_stream() {
            reference_units(&f)
        } else {
            Vec::new()
        };
        let want = expected_summary(&f);
        check_tap(&f, &[], &units, &want);
        for p in 1..f.body.len() {
            check_tap(&f, &[p], &units, &want);
        }
        let every: Vec<usize> = (1..f.body.len()).collect();
        check_tap(&f, &every, &units, &want);
    }
}

/// An LF leading a unit right after a unit that ended with CR is the rest of that CRLF (the
/// aligner's one licensed departure from one event per unit).
fn rejoin_split_crlf(units: &[Bytes]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for u in units {
        let mut u: &[u8] = u;
        if let Some(prev) = out.last_mut() {
            if prev.last() == Some(&b'\r') && u.first() == Some(&b'\n') {
                prev.push(b'\n');
                u = &u[1..];
            }
        }
        if !u.is_empty() {
            out.push(u.to_vec());
        }
    }
    out
}

fn run_aligner(f: &Fixture, pieces: &[&[u8]]) -> (Vec<Bytes>, Aligner) {
    let mut aligner = Aligner::for_content_type(f.content_type()).unwrap();
    let mut out = Vec::new();
    for p in pieces {
        aligner.unit(Bytes::copy_from_slice(p), &mut out);
    }
    aligner.end(&[], &mut out);
    (out, aligner)
}

#[test]
fn align_fixture_every_split_gives_its_events() {
    for f in fixtures() {
        if !f.is_stream() {
            assert!(
                Aligner::for_content_type(f.content_type()).is_none(),
                "{}: a document stays chunk-exact",
                f.name
            );
            continue;
        }
        let units = reference_units(&f);
        assert_eq!(units.len() as u64, f.expected["units"].as_u64().unwrap());

        // Whole: one event per unit, exactly, each a slice of the input.
        let (out, aligner) = run_aligner(&f, &[&f.body]);
        assert_eq!(out, units, "{} whole", f.name);
        let c = aligner.counts();
        assert_eq!(c.events, units.len() as u64, "{}", f.name);
        assert_eq!(c.realigned, 0, "{}", f.name);
        assert_eq!(c.coalesced, 1, "{}", f.name);
        assert_eq!((c.oversized, c.partial_at_end, c.glued), (0, 0, 0));

        let mut cuts: Vec<Vec<usize>> = (1..f.body.len()).map(|p| vec![p]).collect();
        cuts.push((1..f.body.len()).collect());
        for points in cuts {
            let (out, aligner) = run_aligner(&f, &pieces(&f.body, &points));
            assert_eq!(out.concat(), f.body, "{} bytes changed", f.name);
            let split_crlf = points
                .iter()
                .any(|&p| f.body[p - 1] == b'\r' && f.body[p] == b'\n');
            if split_crlf {
                assert_eq!(
                    rejoin_split_crlf(&out),
                    units,
                    "{} at {:?}",
                    f.name,
                    &points[..1]
                );
            } else {
                assert_eq!(out, units, "{} cut at {:?}", f.name, &points[..1]);
            }
            let c = aligner.counts();
            assert_eq!(c.events, units.len() as u64, "{}", f.name);
            assert_eq!((c.oversized, c.partial_at_end, c.glued), (0, 0, 0));
        }
    }
}

#[test]
fn align_then_tap_gives_the_same_summary() {
    // The pump taps what the aligner emitted: the same summary as on the upstream's chunks.
    for f in fixtures().into_iter().filter(Fixture::is_stream) {
        let want = expected_summary(&f);
        for p in (1..f.body.len()).step_by(7) {
            let (out, _) = run_aligner(&f, &pieces(&f.body, &[p]));
            let mut tap = Tap::new(f.path(), Some(f.content_type()));
            let at = Instant::now();
            for unit in &out {
                tap.observe(unit, at);
            }
            tap.end();
            assert_eq!(summary_json(&tap.summary()), want, "{} at {p}", f.name);
        }
    }
}
