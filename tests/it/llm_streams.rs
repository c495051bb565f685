//! LLM streams through the proxy: with `align = "events"` every recorded-shape answer of
//! `testdata/stream/` reaches the client one whole event (or NDJSON line) per chunk, whatever
//! the upstream did to it (split events, glued events, a CRLF torn between chunks,
//! Content-Length or close-delimited framing); the tap's reading shows in the metrics (tokens
//! by model, time to first token) and the record.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chunkgate::config::{Align, Config};
use serde_json::Value;

use crate::common::*;

/// One recorded-shape answer and what its expected file says of it.
struct Fixture {
    name: String,
    body: Vec<u8>,
    path: String,
    content_type: String,
    model: Option<String>,
    input: Option<u64>,
    output: Option<u64>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/stream")
}

fn fixture(rel: &str) -> Fixture {
    let file = root().join(rel);
    let stem = rel.rsplit_once('.').unwrap().0;
    let expected: Value = serde_json::from_slice(
        &std::fs::read(root().join(format!("{stem}.expected.json"))).unwrap(),
    )
    .unwrap();
    Fixture {
        name: rel.to_string(),
        body: std::fs::read(&file).unwrap(),
        path: expected["path"].as_str().unwrap().to_string(),
        content_type: expected["content_type"].as_str().unwrap().to_string(),
        model: expected["model"].as_str().map(str::to_string),
        input: expected["usage"]["input"].as_u64(),
        output: expected["usage"]["output"].as_u64(),
    }
}

/// The streamed fixtures of every dialect.
const STREAMS: [&str; 7] = [
    "openai-chat/stream-usage.sse",
    "openai-chat/stream-crlf.sse",
    "openai-completions/stream.sse",
    "openai-responses/stream.sse",
    "anthropic-messages/stream-korean.sse",
    "ollama-chat/stream.ndjson",
    "ollama-generate/stream.ndjson",
];

/// The fixture's events (or lines), cut by plain text search: its line endings are uniform.
fn units(f: &Fixture) -> Vec<Vec<u8>> {
    let end: &[u8] = if f.name.ends_with(".ndjson") {
        b"\n"
    } else if f.body.windows(2).any(|w| w == b"\r\n") {
        b"\r\n\r\n"
    } else {
        b"\n\n"
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + end.len() <= f.body.len() {
        if &f.body[i..i + end.len()] == end {
            out.push(f.body[start..i + end.len()].to_vec());
            i += end.len();
            start = i;
        } else {
            i += 1;
        }
    }
    assert_eq!(start, f.body.len(), "{}: ends inside a unit", f.name);
    out
}

/// What the upstream does to an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Chunked, every event cut in three chunks (a CRLF blank line is torn between them).
    Split,
    /// Chunked, the whole answer in one chunk.
    Glued,
    /// Content-Length, written in 7-byte pieces.
    Length,
    /// Close-delimited, written in 5-byte pieces.
    Close,
}

const SHAPES: [Shape; 4] = [Shape::Split, Shape::Glued, Shape::Length, Shape::Close];

/// The wire bytes (after the head's fields) of `body` sent as `shape`.
fn upstream_answer(
    body: &[u8],
    content_type: &str,
    shape: Shape,
    events: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut head = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n");
    let mut writes: Vec<Vec<u8>> = Vec::new();
    match shape {
        Shape::Split => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            writes.push(head.into_bytes());
            for e in events {
                // Cut one byte before the end too: a CRLF blank line is torn between chunks.
                let cuts = [0, e.len() / 3, e.len() - 1, e.len()];
                for w in cuts.windows(2) {
                    if w[1] > w[0] {
                        writes.push(chunk(&e[w[0]..w[1]]));
                    }
                }
            }
            writes.push(b"0\r\n\r\n".to_vec());
        }
        Shape::Glued => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            writes.push(head.into_bytes());
            writes.push(chunk(body));
            writes.push(b"0\r\n\r\n".to_vec());
        }
        Shape::Length => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            writes.push(head.into_bytes());
            writes.extend(body.chunks(7).map(<[u8]>::to_vec));
        }
        Shape::Close => {
            head.push_str("Connection: close\r\n\r\n");
            writes.push(head.into_bytes());
            writes.extend(body.chunks(5).map(<[u8]>::to_vec));
        }
    }
    writes
}

/// An upstream that answers every request on a connection with `writes`, then closes.
async fn scripted(writes: Vec<Vec<u8>>) -> Upstream {
    raw_upstream(move |mut peer, _| {
        let writes = writes.clone();
        async move {
            if peer.request().await.ok().flatten().is_none() {
                return;
            }
            for w in &writes {
                if peer.send(w).await.is_err() {
                    return;
                }
                // Separate reads on the proxy's side, most of the time.
                tokio::task::yield_now().await;
            }
        }
    })
    .await
}

fn aligned(upstream: &Upstream) -> Config {
    let mut cfg = config(&[upstream.addr]);
    cfg.routes[0].stream.align = Align::Events;
    cfg
}

/// Whether `chunk` ends with a blank line (any of the line endings), or is the lone LF of a
/// CRLF torn after its CR.
fn ends_an_event(chunk: &[u8]) -> bool {
    [&b"\n\n"[..], b"\r\r", b"\r\n\r", b"\r\n\r\n", b"\n\r"]
        .iter()
        .any(|end| chunk.ends_with(end))
}

#[tokio::test]
async fn every_dialect_arrives_one_whole_event_per_chunk_whatever_the_upstream_did() {
    bounded(Duration::from_secs(30), async {
        for name in STREAMS {
            let f = fixture(name);
            let events = units(&f);
            for shape in SHAPES {
                let upstream =
                    scripted(upstream_answer(&f.body, &f.content_type, shape, &events)).await;
                let proxy = TestProxy::start(aligned(&upstream)).await;
                let mut c = proxy.connect().await;
                let req = format!(
                    "POST {} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
                    f.path
                );
                c.send(req.as_bytes()).await.expect("send");
                let resp = c.response("POST").await.expect("response");
                let what = format!("{name} sent {shape:?}");
                assert_eq!(resp.head.status, 200, "{what}");
                assert!(resp.head.is_chunked(), "{what}: re-framed as chunked");
                assert_eq!(resp.head.get("content-length"), None, "{what}");
                assert_eq!(resp.body, f.body, "{what}: bytes unchanged and in order");
                let chunks: Vec<&[u8]> = resp.chunks().iter().map(|c| &c[..]).collect();
                // Pieces may tear a CRLF blank line between its CR and LF.
                let torn_crlf = shape != Shape::Glued && name.contains("crlf");
                if torn_crlf {
                    // The event leaves at the CR that completes it; the LF leads the next one,
                    // or leaves alone when nothing follows it in its chunk.
                    for c in &chunks {
                        let ok = *c == b"\n" || ends_an_event(c);
                        assert!(ok, "{what}: {:?}", String::from_utf8_lossy(c));
                    }
                } else {
                    let lossy = |c: &[u8]| String::from_utf8_lossy(c).into_owned();
                    let got: Vec<String> = chunks.iter().map(|c| lossy(c)).collect();
                    let want: Vec<String> = events.iter().map(|e| lossy(e)).collect();
                    assert_eq!(got, want, "{what}: one whole event per chunk");
                }
                let text = proxy.metrics.encode();
                let events_total = metric(&text, "chunkgate_sse_events_total{route=\"/\"}");
                assert_eq!(events_total, events.len() as u64, "{what}");
                if shape == Shape::Glued {
                    assert_eq!(metric(&text, "chunkgate_sse_events_coalesced_total{route=\"/\"}"), 1, "{what}");
                }
                if shape == Shape::Split && !name.contains("crlf") {
                    assert_eq!(
                        metric(&text, "chunkgate_sse_events_realigned_total{route=\"/\"}"),
                        events.len() as u64,
                        "{what}"
                    );
                }
                if let (Some(model), Some(input)) = (&f.model, f.input) {
                    let line = format!(
                        "chunkgate_tokens_total{{route=\"/\",model=\"{model}\",kind=\"input\"}}"
                    );
                    assert_eq!(metric(&text, &line), input, "{what}: {text}");
                    let line = format!(
                        "chunkgate_tokens_total{{route=\"/\",model=\"{model}\",kind=\"output\"}}"
                    );
                    assert_eq!(metric(&text, &line), f.output.unwrap(), "{what}");
                    assert!(
                        text.contains("chunkgate_time_to_first_token_seconds_count{route=\"/\"} 1"),
                        "{what}: {text}"
                    );
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn chunk_exact_by_default_and_the_tap_still_reads() {
    bounded(TEST_LIMIT, async {
        let f = fixture("openai-chat/stream-usage.sse");
        let events = units(&f);
        let writes = upstream_answer(&f.body, &f.content_type, Shape::Split, &events);
        let sent_chunks = writes.len() - 2;
        let upstream = scripted(writes).await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut c = proxy.connect().await;
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("send");
        let resp = c.response("POST").await.expect("response");
        assert_eq!(resp.body, f.body);
        assert_eq!(
            resp.chunks().len(),
            sent_chunks,
            "the upstream's chunks, as they came"
        );
        let text = proxy.metrics.encode();
        assert_eq!(metric(&text, "chunkgate_sse_events_total{route=\"/\"}"), 0);
        let line =
            "chunkgate_tokens_total{route=\"/\",model=\"gpt-4o-mini-2024-07-18\",kind=\"output\"}";
        assert_eq!(metric(&text, line), 17, "{text}");
    })
    .await;
}

#[tokio::test]
async fn encoded_answers_are_neither_aligned_nor_read() {
    bounded(TEST_LIMIT, async {
        let f = fixture("openai-chat/stream-usage.sse");
        let events = units(&f);
        let mut writes = upstream_answer(&f.body, "text/event-stream", Shape::Split, &events);
        let head = String::from_utf8(writes[0].clone()).unwrap();
        writes[0] = head
            .replace("\r\n\r\n", "\r\nContent-Encoding: gzip\r\n\r\n")
            .into_bytes();
        let sent_chunks = writes.len() - 2;
        let upstream = scripted(writes).await;
        let proxy = TestProxy::start(aligned(&upstream)).await;
        let mut c = proxy.connect().await;
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("send");
        let resp = c.response("POST").await.expect("response");
        assert_eq!(
            resp.chunks().len(),
            sent_chunks,
            "compressed bytes have no events to cut"
        );
        let text = proxy.metrics.encode();
        assert!(!text.contains("chunkgate_tokens_total{"), "{text}");
    })
    .await;
}

/// The value of the series `line` (its name and labels as exported), 0 when absent.
pub(crate) fn metric(text: &str, line: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
