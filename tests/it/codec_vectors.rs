//! Raw chunked-body vectors from `testdata/chunked/`, each run whole, split into two reads at
//! every byte index, and one byte per read, through the `tokio_util::codec::Decoder` API
//! (`decode` after every read, `decode_eof` at the end). Every run must give the frames, or the
//! error kind and offset, written in the vector's `.expect` file.
//!
//! Also replays the committed fuzz seeds (chunked bodies and request heads) through the oracles
//! in `chunkgate::codec::oracle`.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use chunkgate::codec::chunked::{ChunkedDecoder, DecodeErrorKind, Field, Frame, Limits};
use chunkgate::codec::oracle::{
    check_decode_split_invariance, check_decode_split_invariance_with,
    check_request_head_split_invariance, check_roundtrip, decode_in_reads, roundtrip_input,
    split_pattern_for, Verdict,
};
use tokio_util::codec::Decoder;

/// Vectors up to this size are split at every index; larger ones at a sample of indexes.
const SPLIT_EVERY_INDEX_UP_TO: usize = 2048;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/chunked")
}

/// One vector: its body and what decoding it must give.
struct Vector {
    name: String,
    body: Vec<u8>,
    limits: Limits,
    frames: Vec<Frame>,
    /// The error kind (its `Debug` form) and offset, for an invalid vector.
    error: Option<(String, u64)>,
    rest: Vec<u8>,
}

/// Undo the escapes of an `.expect` string: `\r \n \t \\ \" \xHH`, the rest verbatim.
fn unescape(s: &str) -> Vec<u8> {
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("expected a quoted string: {s}"));
    let mut out = Vec::new();
    let mut chars = s.bytes();
    while let Some(c) = chars.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'"') => out.push(b'"'),
            Some(b'x') => {
                let hex: Vec<u8> = chars.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).expect("ascii hex");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            }
            other => panic!("bad escape {other:?} in {s}"),
        }
    }
    out
}

/// Split `"a" "b"` into its two quoted strings.
fn two_strings(s: &str) -> (Vec<u8>, Vec<u8>) {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    (unescape(&s[..=i]), unescape(s[i + 1..].trim()))
}

fn parse_limits(spec: &str) -> Limits {
    let mut limits = Limits::default();
    for item in spec.split_whitespace() {
        let (key, value) = item.split_once('=').expect("limit as key=value");
        let n: u64 = if value == "max" {
            u64::MAX
        } else {
            value.parse().expect("limit value")
        };
        let small = usize::try_from(n).unwrap_or(usize::MAX);
        limits = match key {
            "max_chunk_size" => limits.max_chunk_size(n),
            "max_size_line" => limits.max_size_line(small),
            "max_size_digits" => limits.max_size_digits(small),
            "max_extension_bytes" => limits.max_extension_bytes(n),
            "max_trailer_bytes" => limits.max_trailer_bytes(small),
            "max_trailer_fields" => limits.max_trailer_fields(small),
            "max_body_size" => limits.max_body_size(Some(n)),
            _ => panic!("unknown limit {key}"),
        };
    }
    limits
}

fn load(kind: &str) -> Vec<Vector> {
    let dir = root().join(kind);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    names.sort();
    for n in &names {
        let stem = n
            .strip_suffix(".body")
            .or_else(|| n.strip_suffix(".expect"))
            .unwrap_or_else(|| panic!("{kind}/{n}: neither .body nor .expect"));
        assert!(
            names.contains(&format!("{stem}.body")) && names.contains(&format!("{stem}.expect")),
            "{kind}/{stem}: needs both a .body and an .expect file"
        );
    }
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".body"))
        .map(|stem| {
            let body = fs::read(dir.join(format!("{stem}.body"))).expect("read body");
            let expect =
                fs::read_to_string(dir.join(format!("{stem}.expect"))).expect("read expect");
            let mut limits = Limits::default();
            let mut frames = Vec::new();
            let mut trailers = Vec::new();
            let mut error = None;
            let mut rest = Vec::new();
            for line in expect
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let (word, arg) = line.split_once(' ').unwrap_or((line, ""));
                match word {
                    "limits" => limits = parse_limits(arg),
                    "data" => frames.push(Frame::Data(Bytes::from(unescape(arg)))),
                    "trailer" => {
                        let (name, value) = two_strings(arg);
                        trailers.push(Field {
                            name: name.into(),
                            value: value.into(),
                        });
                    }
                    "end" => {
                        if !trailers.is_empty() {
                            frames.push(Frame::Trailers(std::mem::take(&mut trailers)));
                        }
                        frames.push(Frame::End);
                    }
                    "rest" => rest = unescape(arg),
                    "error" => error = Some(arg.to_owned()),
                    _ => panic!("{kind}/{stem}.expect: unknown line {line:?}"),
                }
            }
            let error = error.map(|e| {
                let (k, at) = e.rsplit_once(" @ ").expect("error KIND @ OFFSET");
                (k.to_owned(), at.parse::<u64>().expect("offset"))
            });
            assert_eq!(
                error.is_some(),
                kind == "invalid",
                "{kind}/{stem}: valid vectors end, invalid ones fail"
            );
            Vector {
                name: format!("{kind}/{stem}"),
                body,
                limits,
                frames,
                error,
                rest,
            }
        })
        .collect()
}

impl Vector {
    /// Run every read pattern and compare with the expectation, then the shared oracle.
    fn check(&self) {
        for (label, reads) in read_patterns(self.body.len()) {
            let got: Verdict = decode_in_reads(&self.body, &reads, self.limits);
            let got_error = got.error.map(|(kind, at)| (format!("{kind:?}"), at));
            assert_eq!(
                (&got.frames, &got_error, &got.rest),
                (&self.frames, &self.error, &self.rest),
                "{}: {label}",
                self.name
            );
        }
        // Split invariance with input-derived reads, and the plain-grammar comparison.
        check_decode_split_invariance_with(&self.body, &split_pattern_for(&self.body), self.limits);
    }
}

/// Whole, one byte per read, and two reads cut at every index (sampled for large bodies).
fn read_patterns(len: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![
        ("whole".to_owned(), Vec::new()),
        ("1-byte reads".to_owned(), vec![1]),
    ];
    let cuts: Vec<usize> = if len <= SPLIT_EVERY_INDEX_UP_TO {
        (1..len).collect()
    } else {
        let step = len / 128;
        (1..len)
            .filter(|i| i % step == 0 || *i < 16 || len - i < 16)
            .collect()
    };
    out.extend(
        cuts.into_iter()
            .map(|cut| (format!("split at {cut}"), vec![cut, usize::MAX])),
    );
    out
}

#[test]
fn vectors_valid_decode_the_same_at_every_split() {
    let vectors = load("valid");
    assert!(vectors.len() >= 30, "valid vectors went missing");
    for v in &vectors {
        v.check();
    }
}

#[test]
fn vectors_invalid_fail_the_same_at_every_split() {
    let vectors = load("invalid");
    assert!(vectors.len() >= 100, "invalid vectors went missing");
    for v in &vectors {
        v.check();
    }
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            let data = fs::read(&path).expect("read seed");
            (path.display().to_string(), data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_chunked_decode_pass_the_oracle() {
    let seeds = seeds("chunked_decode");
    assert!(seeds.len() >= 24, "decode seeds went missing");
    for (name, data) in seeds {
        // The same call the fuzz target makes; a panic names the seed through this message.
        eprintln!("seed {name}");
        check_decode_split_invariance(&data, &split_pattern_for(&data));
    }
}

#[test]
fn seeds_chunked_roundtrip_pass_the_oracle() {
    let seeds = seeds("chunked_roundtrip");
    assert!(seeds.len() >= 12, "roundtrip seeds went missing");
    for (name, data) in seeds {
        eprintln!("seed {name}");
        let (payloads, splits) = roundtrip_input(&data);
        check_roundtrip(&payloads, splits);
    }
}

#[test]
fn seeds_request_head_pass_the_oracle() {
    let seeds = seeds("request_head");
    assert!(seeds.len() >= 30, "request head seeds went missing");
    for (name, data) in seeds {
        eprintln!("seed {name}");
        check_request_head_split_invariance(&data, &split_pattern_for(&data));
    }
}

/// A peer may declare any size up to the configured largest chunk. With that limit set near
/// its clamp (`isize::MAX - 2`), the decoder used to reserve room for the whole declared chunk
/// at once and panicked with "capacity overflow" (or aborted on a failed allocation) before a
/// single payload byte arrived. Room is now reserved in bounded steps.
#[test]
fn decode_huge_declared_size_under_a_huge_limit_does_not_reserve_it() {
    let limits = Limits::default().max_chunk_size(u64::MAX);
    let mut dec = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::from(&b"7ffffffffffffffd\r\nabc"[..]);
    assert_eq!(dec.decode(&mut buf).expect("a size within the limit"), None);
    assert!(
        buf.capacity() <= 4 << 20,
        "reserved {} bytes",
        buf.capacity()
    );
    let e = dec.decode_eof(&mut buf).expect_err("the body is cut short");
    assert_eq!(e.kind(), DecodeErrorKind::UnexpectedEof);
    assert_eq!(e.offset(), 21);
}
