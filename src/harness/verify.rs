//! Verdicts: compare the chunks a sender wrote with the chunks a receiver recorded, check
//! each received chunk, and show the first difference as a hex dump with the boundaries marked.
//!
//! ```
//! use bytes::Bytes;
//! use chunkgate::harness::verify::compare_chunks;
//!
//! let sent = [Bytes::from("abc"), Bytes::from("defgh"), Bytes::from("ij")];
//! let seen = [Bytes::from("abc"), Bytes::from("def"), Bytes::from("gh"), Bytes::from("ij")];
//! assert!(compare_chunks(&sent, &sent).is_ok());
//! let diff = compare_chunks(&sent, &seen).unwrap_err();
//! assert!(diff.message.contains("4 chunks received for 3 sent"));
//! assert!(diff.dump.contains("66|67")); // the boundary the receiver saw inside `defgh`
//! ```

use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;

use crate::harness::peer::{BodyEnd, Framing, RawResponse};
use crate::harness::sse::check_events;

/// Why a case failed: a one-line message and, where bytes explain it, a hex dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What was wrong, in one line.
    pub message: String,
    /// A hex dump of the first difference with the boundaries marked (may be empty).
    pub dump: String,
}

impl Failure {
    /// A failure without a dump.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            dump: String::new(),
        }
    }
}

/// What a passing case measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaseStats {
    /// Chunks received.
    pub chunks: usize,
    /// Chunks that reached the client over more than one TCP read.
    pub split_reads: usize,
}

/// Marker in a dump for a boundary the receiver saw.
pub const SEEN_MARK: char = '|';
/// Marker in a dump for a boundary the sender made but the receiver did not see.
pub const MISSING_MARK: char = '!';

/// Compare the chunks sent with the chunks received.
pub fn compare_chunks(expected: &[Bytes], received: &[Bytes]) -> Result<(), Failure> {
    if expected == received {
        return Ok(());
    }
    let sent: Vec<u8> = expected.iter().flat_map(|c| c.iter().copied()).collect();
    let seen: Vec<u8> = received.iter().flat_map(|c| c.iter().copied()).collect();
    let ends = |chunks: &[Bytes]| -> Vec<usize> {
        chunks
            .iter()
            .scan(0usize, |at, c| {
                *at += c.len();
                Some(*at)
            })
            .collect()
    };
    let sent_ends = ends(expected);
    let seen_ends = ends(received);
    if sent != seen {
        let at = sent
            .iter()
            .zip(&seen)
            .position(|(a, b)| a != b)
            .unwrap_or(sent.len().min(seen.len()));
        let message = match (sent.get(at), seen.get(at)) {
            (Some(a), Some(b)) => format!(
                "payload differs at byte {at} of {}: sent 0x{a:02x}, received 0x{b:02x}",
                sent.len()
            ),
            _ => format!(
                "payload is {} bytes, {} were sent (the first {at} match)",
                seen.len(),
                sent.len()
            ),
        };
        let start = at.saturating_sub(32) & !15;
        let end = (at + 64).min(seen.len());
        let marks: Vec<(usize, char)> = seen_ends
            .iter()
            .filter(|&&e| e < seen.len())
            .map(|&e| (e, SEEN_MARK))
            .collect();
        let dump = if start < end {
            format!(
                "received bytes, difference at {at}:\n{}",
                hexdump(&seen, start..end, &marks)
            )
        } else {
            String::new()
        };
        return Err(Failure { message, dump });
    }
    // Same bytes, different boundaries: re-chunked.
    let k = expected
        .iter()
        .zip(received)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(received.len()));
    let start = if k == 0 { 0 } else { sent_ends[k - 1] };
    let exp_len = expected.get(k).map_or(0, |c| c.len());
    let got_len = received.get(k).map_or(0, |c| c.len());
    let how = if got_len < exp_len {
        format!("received split: its first {got_len} bytes arrived as one chunk")
    } else {
        let merged = seen_ends.get(k).map_or(0, |&e| {
            sent_ends.iter().filter(|&&s| s > start && s < e).count()
        });
        format!("received merged with {merged} more: {got_len} bytes arrived as one chunk")
    };
    let message = format!(
        "re-chunked: {} chunks received for {} sent; chunk {k} ({exp_len} bytes) {how}",
        received.len(),
        expected.len()
    );
    let end = (start + exp_len.max(got_len)).min(sent.len());
    let mut marks: Vec<(usize, char)> = Vec::new();
    for &e in seen_ends.iter().filter(|&&e| e > start && e < end) {
        marks.push((e, SEEN_MARK));
    }
    for &e in sent_ends.iter().filter(|&&e| e > start && e < end) {
        if !seen_ends.contains(&e) {
            marks.push((e, MISSING_MARK));
        }
    }
    marks.sort_unstable();
    // Show at most 8 lines, starting a line before the first mark.
    let first = marks.first().map_or(start, |m| m.0);
    let from = (first.saturating_sub(16).max(start) - start) / 16 * 16 + start;
    let to = end.min(from + 128);
    let dump = format!(
        "chunk {k} as sent (bytes {start}..{}), {SEEN_MARK} = boundary the receiver saw, \
{MISSING_MARK} = boundary it lost:\n{}",
        start + exp_len,
        hexdump(&sent, from..to, &marks)
    );
    Err(Failure { message, dump })
}

/// A hex dump of `bytes[range]`, 16 bytes a line, offsets from the start of `bytes`; each
/// `(offset, mark)` replaces the space before the byte at `offset` with `mark`.
pub fn hexdump(bytes: &[u8], range: std::ops::Range<usize>, marks: &[(usize, char)]) -> String {
    let end = range.end.min(bytes.len());
    let mut out = String::new();
    let mut line = range.start;
    while line < end {
        let stop = (line + 16).min(end);
        let _ = write!(out, "  {line:06x} ");
        for i in line..line + 16 {
            let sep = marks
                .iter()
                .find(|(at, _)| *at == i)
                .map_or(' ', |(_, m)| *m);
            match bytes.get(i).filter(|_| i < stop) {
                Some(b) => {
                    let _ = write!(out, "{sep}{b:02x}");
                }
                None => out.push_str("   "),
            }
        }
        out.push_str("  ");
        for &b in &bytes[line..stop] {
            out.push(if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            });
        }
        out.push('\n');
        line = stop;
    }
    out
}

/// What to require of a response stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamChecks {
    /// Every chunk must be whole SSE events whose data is JSON.
    pub sse: bool,
    /// Every chunk must have reached the client in a single TCP read (meaningful on loopback:
    /// a proxy that writes each chunk in one write achieves it).
    pub whole_reads: bool,
}

/// Check a streamed response against the chunks the sender wrote.
pub fn verify_stream(
    expected: &[Bytes],
    resp: &RawResponse,
    checks: StreamChecks,
) -> Result<CaseStats, Failure> {
    if resp.head.status != 200 {
        let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
        return Err(Failure::new(format!(
            "status {} (expected 200): {body}",
            resp.head.status
        )));
    }
    if resp.framing != Framing::Chunked {
        return Err(Failure::new(format!(
            "response is not chunked ({:?}): chunk boundaries were not kept",
            resp.framing
        )));
    }
    let received = resp.chunks();
    let mut problems = Vec::new();
    let compared = compare_chunks(expected, received);
    let not_utf8 = received
        .iter()
        .filter(|c| std::str::from_utf8(c).is_err())
        .count();
    if not_utf8 > 0 {
        problems.push(format!("{not_utf8} chunks not valid utf-8"));
    }
    if checks.sse {
        let bad = received.iter().filter(|c| check_events(c).is_err()).count();
        if bad > 0 {
            problems.push(format!("{bad} chunks not whole sse events with json data"));
        }
    }
    let split_reads = resp.split_chunks();
    if checks.whole_reads && split_reads > 0 {
        problems.push(format!(
            "{split_reads} of {} chunks reached the client split across reads",
            received.len()
        ));
    }
    match &resp.end {
        BodyEnd::Complete => {}
        BodyEnd::Cut => problems.push("stream cut before its last chunk".to_string()),
        BodyEnd::Reset(e) => problems.push(format!("connection failed mid-stream: {e}")),
        BodyEnd::Malformed(e) => problems.push(format!("invalid chunked framing: {e}")),
        BodyEnd::TooLarge => problems.push("stream over the client's body limit".to_string()),
    }
    match compared {
        Ok(()) if problems.is_empty() => Ok(CaseStats {
            chunks: received.len(),
            split_reads,
        }),
        Ok(()) => Err(Failure::new(problems.join("; "))),
        Err(mut f) => {
            if !problems.is_empty() {
                f.message = format!("{}; {}", f.message, problems.join("; "));
            }
            Err(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn compare_chunks_reports_a_split_with_the_boundary_marked() {
        let sent = [b("hello"), b("안녕")];
        let seen = [
            b("hello"),
            Bytes::copy_from_slice(&"안녕".as_bytes()[..4]),
            Bytes::copy_from_slice(&"안녕".as_bytes()[4..]),
        ];
        let f = compare_chunks(&sent, &seen).unwrap_err();
        assert!(
            f.message.contains("3 chunks received for 2 sent"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("chunk 1 (6 bytes) received split"),
            "{}",
            f.message
        );
        // Byte 4 of the second chunk (offset 9 overall) is preceded by the seen boundary.
        assert!(f.dump.contains("eb|85"), "{}", f.dump);
    }

    #[test]
    fn compare_chunks_reports_a_merge_with_the_lost_boundary_marked() {
        let sent = [b("abc"), b("def"), b("gh")];
        let seen = [b("abcdef"), b("gh")];
        let f = compare_chunks(&sent, &seen).unwrap_err();
        assert!(f.message.contains("merged with 1 more"), "{}", f.message);
        assert!(f.dump.contains("63!64"), "{}", f.dump);
    }

    #[test]
    fn compare_chunks_reports_corrupted_bytes() {
        let f = compare_chunks(&[b("abc")], &[b("abd")]).unwrap_err();
        assert_eq!(
            f.message,
            "payload differs at byte 2 of 3: sent 0x63, received 0x64"
        );
        let f = compare_chunks(&[b("abc")], &[b("ab")]).unwrap_err();
        assert!(
            f.message.contains("payload is 2 bytes, 3 were sent"),
            "{}",
            f.message
        );
    }

    #[test]
    fn hexdump_marks_boundaries_and_prints_ascii() {
        let d = hexdump(b"0123456789abcdefXY", 0..18, &[(2, '|'), (16, '!')]);
        assert_eq!(
            d,
            "  000000  30 31|32 33 34 35 36 37 38 39 61 62 63 64 65 66  0123456789abcdef\n  \
000010 !58 59                                            XY\n"
        );
    }
}
