//! What chunkgate may change in a request body on its way to the upstream.
//!
//! [`inject_include_usage`] asks an OpenAI chat or completions upstream to report token usage
//! at the end of a streamed answer (`"stream_options": {"include_usage": true}`), so that the
//! tap can read it. The body is edited in place, not re-serialized: every byte the client sent
//! stays as it was, and the member is inserted right after the last member of the object it
//! goes into (whitespace before the closing brace is kept after it).
//!
//! ```
//! use chunkgate::stream::request::inject_include_usage;
//!
//! let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
//! assert_eq!(
//!     inject_include_usage(body).unwrap(),
//!     br#"{"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
//! );
//! assert_eq!(inject_include_usage(br#"{"stream":false}"#), None);
//! ```

use crate::stream::json::{once, Bail, Cursor, Walk};

/// What the request's `stream_options` is.
enum Options {
    Absent,
    /// `null`, at these bytes.
    Null {
        start: usize,
        end: usize,
    },
    /// An object without `include_usage`: where a member goes (just after `{` when `empty`,
    /// else just after its last member).
    Object {
        insert_at: usize,
        empty: bool,
    },
    /// It has `include_usage` already, or is not an object.
    Leave,
}

/// `body` with `"stream_options":{"include_usage":true}` added (or `"include_usage":true`
/// merged into the `stream_options` object it has, or put in place of a `null` one), when
/// `body` is one JSON object with `"stream": true` and no `stream_options.include_usage`.
///
/// `None` (leave the body as it is) when the body is not such a request: not a JSON object,
/// invalid JSON, `stream` absent or anything but `true`, `include_usage` already present
/// (whatever its value: the client chose), `stream_options` neither an object nor `null`,
/// `stream` or `stream_options` given twice, or a key of the request or of its
/// `stream_options` written with escapes (it could spell `stream`).
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut c = Cursor::any_keys(body);
    let mut seen = 0;
    let mut stream = false;
    let mut options = Options::Absent;
    let mut last_end = None;
    let walked: Walk<()> = (|| {
        if c.peek()? != b'{' {
            return Err(Bail);
        }
        c.members(|c, key| {
            if key.contains(&b'\\') {
                return Err(Bail);
            }
            match key {
                b"stream" => {
                    once(&mut seen, 1)?;
                    stream = c.value()?.bytes == b"true";
                }
                b"stream_options" => {
                    once(&mut seen, 2)?;
                    options = stream_options(c)?;
                }
                _ => c.skip()?,
            }
            last_end = Some(c.offset());
            Ok(())
        })?;
        c.finish()
    })();
    walked.ok()?;
    if !stream {
        return None;
    }
    const MEMBER: &[u8] = br#""include_usage":true"#;
    let (at, remove_to, insert): (usize, usize, &[&[u8]]) = match options {
        Options::Leave => return None,
        Options::Absent => (
            last_end?,
            last_end?,
            &[br#","stream_options":{"#, MEMBER, b"}"],
        ),
        Options::Null { start, end } => (start, end, &[b"{", MEMBER, b"}"]),
        Options::Object { insert_at, empty } => {
            let sep: &[u8] = if empty { b"" } else { b"," };
            (insert_at, insert_at, &[sep, MEMBER])
        }
    };
    let added: usize = insert.iter().map(|piece| piece.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    out.extend_from_slice(&body[..at]);
    for piece in insert {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(&body[remove_to..]);
    Some(out)
}

/// The value of `stream_options`, walked.
fn stream_options(c: &mut Cursor<'_>) -> Walk<Options> {
    match c.peek()? {
        b'n' => {
            let start = c.offset();
            c.value()?;
            Ok(Options::Null {
                start,
                end: c.offset(),
            })
        }
        b'{' => {
            let mut insert_at = c.offset() + 1;
            let mut empty = true;
            let mut has = false;
            let mut seen = 0;
            c.members(|c, key| {
                if key.contains(&b'\\') {
                    return Err(Bail);
                }
                if key == b"include_usage" {
                    once(&mut seen, 1)?;
                    has = true;
                }
                c.skip()?;
                insert_at = c.offset();
                empty = false;
                Ok(())
            })?;
            Ok(if has {
                Options::Leave
            } else {
                Options::Object { insert_at, empty }
            })
        }
        _ => {
            c.skip()?;
            Ok(Options::Leave)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_include_usage_table() {
        let cases: [(&str, Option<&str>); 20] = [
            (
                r#"{"model":"gpt-4o","stream":true}"#,
                Some(r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#),
            ),
            (
                "{ \"stream\" : true ,\n  \"messages\": [{\"role\":\"user\",\"content\":\"}\"}]\n}\n",
                Some("{ \"stream\" : true ,\n  \"messages\": [{\"role\":\"user\",\"content\":\"}\"}],\"stream_options\":{\"include_usage\":true}\n}\n"),
            ),
            (
                r#"{"stream":true,"stream_options":{}}"#,
                Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            ),
            (
                r#"{"stream_options": { }, "stream":true}"#,
                Some(r#"{"stream_options": {"include_usage":true }, "stream":true}"#),
            ),
            (
                r#"{"stream":true,"stream_options":{"continuous_usage_stats":false }}"#,
                Some(r#"{"stream":true,"stream_options":{"continuous_usage_stats":false,"include_usage":true }}"#),
            ),
            (
                r#"{"stream":true,"stream_options":null,"n":2}"#,
                Some(r#"{"stream":true,"stream_options":{"include_usage":true},"n":2}"#),
            ),
            (
                "{\"stream\":true,\"tools\":[{\"parameters\":{\"名前\":{\"type\":\"string\"}}}]}",
                Some("{\"stream\":true,\"tools\":[{\"parameters\":{\"名前\":{\"type\":\"string\"}}}],\"stream_options\":{\"include_usage\":true}}"),
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
                None,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
                None,
            ),
            (r#"{"stream":false}"#, None),
            (r#"{"stream": "true"}"#, None),
            (r#"{"model":"gpt-4o"}"#, None),
            (r#"{"stream":true,"stream":true}"#, None),
            (r#"{"stream":true,"stream_options":"x"}"#, None),
            (r#"{"str\u0065am":true}"#, None),
            (r#"{"stream":true,"stream_options":{"include\u005fusage":true}}"#, None),
            (r#"{"stream":true"#, None),
            (r#"{"stream":true} {}"#, None),
            (r#"[{"stream":true}]"#, None),
            ("", None),
        ];
        for (body, want) in cases {
            let got = inject_include_usage(body.as_bytes());
            assert_eq!(
                got.as_deref().map(|b| std::str::from_utf8(b).unwrap()),
                want,
                "{body}"
            );
            if let Some(out) = got {
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["stream_options"]["include_usage"], true, "{body}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever else the request holds, the result is the request with exactly that one
        /// member added, as a JSON parser reads both.
        #[test]
        fn inject_include_usage_adds_one_member(
            extra in proptest::collection::btree_map("[a-z]{1,6}", "[ -~]{0,8}", 0..5),
            options in proptest::collection::btree_map("[a-h]{1,4}", 0u32..9, 0..3),
            with_options in proptest::prelude::any::<bool>(),
            pretty in proptest::prelude::any::<bool>(),
        ) {
            let mut request = serde_json::Map::new();
            for (k, v) in &extra {
                request.insert(k.clone(), serde_json::json!(v));
            }
            request.insert("stream".into(), serde_json::json!(true));
            if with_options {
                request.insert("stream_options".into(), serde_json::json!(options));
            }
            let request = serde_json::Value::Object(request);
            let body = if pretty {
                serde_json::to_vec_pretty(&request).unwrap()
            } else {
                serde_json::to_vec(&request).unwrap()
            };
            let out = inject_include_usage(&body).expect("a streaming request");
            let mut want = request.clone();
            want["stream_options"]
                .as_object_mut()
                .map(|o| o.insert("include_usage".into(), serde_json::json!(true)))
                .unwrap_or_else(|| {
                    want["stream_options"] = serde_json::json!({"include_usage": true});
                    None
                });
            let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(inject_include_usage(&out), None);
        }
    }
}
