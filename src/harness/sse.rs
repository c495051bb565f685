//! Checks on server-sent events: is a piece of a stream a sequence of whole events, and does
//! every `data:` field hold JSON.
//!
//! ```
//! use chunkgate::harness::sse::{check_events, SseProblem};
//!
//! assert_eq!(check_events(b"data: {\"a\":1}\n\n"), Ok(1));
//! assert_eq!(check_events(b"data: [DONE]\n\n"), Ok(1));
//! assert!(matches!(check_events(b"data: {\"a\""), Err(SseProblem::Incomplete)));
//! assert!(matches!(check_events(b"\":1}\n\n"), Err(SseProblem::NotAnEvent { .. })));
//! ```

use std::fmt;

/// Why a piece of a stream is not a sequence of whole events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseProblem {
    /// Empty piece.
    Empty,
    /// Not valid UTF-8 (at this byte offset).
    InvalidUtf8 { offset: usize },
    /// The piece does not end with the blank line that ends an event.
    Incomplete,
    /// A line that is not an SSE field (`data:`, `event:`, `id:`, `retry:` or a `:` comment),
    /// as happens when a piece starts in the middle of an event.
    NotAnEvent { line: String },
    /// A `data:` field that is neither JSON nor `[DONE]`.
    BadJson { data: String, error: String },
}

impl fmt::Display for SseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseProblem::Empty => f.write_str("empty event"),
            SseProblem::InvalidUtf8 { offset } => {
                write!(f, "invalid utf-8 at byte {offset}")
            }
            SseProblem::Incomplete => f.write_str("event not terminated by a blank line"),
            SseProblem::NotAnEvent { line } => {
                write!(f, "line is not an sse field: {:?}", clip(line, 40))
            }
            SseProblem::BadJson { data, error } => {
                write!(f, "data is not json ({error}): {:?}", clip(data, 40))
            }
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Check that `piece` is one or more whole events whose `data:` fields parse as JSON (or are
/// `[DONE]`). Returns the number of events.
pub fn check_events(piece: &[u8]) -> Result<usize, SseProblem> {
    if piece.is_empty() {
        return Err(SseProblem::Empty);
    }
    let text = std::str::from_utf8(piece).map_err(|e| SseProblem::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    if !text.ends_with("\n\n") {
        return Err(SseProblem::Incomplete);
    }
    let mut count = 0;
    for event in text.split_terminator("\n\n") {
        check_event(event)?;
        count += 1;
    }
    Ok(count)
}

/// One event's lines (without the blank line that ends it).
fn check_event(event: &str) -> Result<(), SseProblem> {
    let mut data: Option<String> = None;
    for line in event.split('\n') {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "" => {} // comment
            "data" => {
                let d = data.get_or_insert_with(String::new);
                if !d.is_empty() {
                    d.push('\n');
                }
                d.push_str(value);
            }
            "event" | "id" | "retry" => {}
            _ => {
                return Err(SseProblem::NotAnEvent {
                    line: line.to_string(),
                })
            }
        }
    }
    if let Some(d) = data {
        if d != "[DONE]" {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&d) {
                return Err(SseProblem::BadJson {
                    data: d,
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The `delta.content` of a chat-completion chunk event's JSON, if it has one.
pub fn delta_content(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("choices")?
        .get(0)?
        .get("delta")?
        .get("content")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_events_accepts_several_whole_events_and_comments() {
        assert_eq!(
            check_events(b": keep-alive\n\nevent: x\ndata: {}\n\ndata: [DONE]\n\n"),
            Ok(3)
        );
        assert_eq!(check_events(b"data: 1\ndata: 2\n\n"), Err(bad("1\n2")));
    }

    fn bad(data: &str) -> SseProblem {
        let error = serde_json::from_str::<serde_json::Value>(data)
            .unwrap_err()
            .to_string();
        SseProblem::BadJson {
            data: data.to_string(),
            error,
        }
    }

    #[test]
    fn check_events_rejects_fragments() {
        assert_eq!(check_events(b""), Err(SseProblem::Empty));
        assert_eq!(check_events(b"data: {}\n"), Err(SseProblem::Incomplete));
        assert!(matches!(
            check_events(b"ta: {}\n\n"),
            Err(SseProblem::NotAnEvent { .. })
        ));
        assert!(matches!(
            check_events(b"data: {\"a\":\n\n"),
            Err(SseProblem::BadJson { .. })
        ));
        assert_eq!(
            check_events(b"data: \"\xea\xb0\"\n\n"),
            Err(SseProblem::InvalidUtf8 { offset: 7 })
        );
    }

    #[test]
    fn delta_content_reads_openai_chunks() {
        assert_eq!(
            delta_content(r#"{"choices":[{"index":0,"delta":{"content":"안녕"}}]}"#).as_deref(),
            Some("안녕")
        );
        assert_eq!(delta_content(r#"{"choices":[]}"#), None);
        assert_eq!(delta_content("not json"), None);
    }
}
