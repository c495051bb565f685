//! Algebraic properties of the chunked codec, for generated bodies and generated read splits:
//! decoding gives back exactly the chunks that were written (one frame per non-empty chunk,
//! then End), encoding then decoding is the identity (trailers included), and the verdict on
//! any bytes, random or mutated from a valid body, does not depend on how they were split.

use bytes::{Bytes, BytesMut};
use chunkgate::codec::chunked::{ChunkedEncoder, Field, Frame, Limits};
use chunkgate::codec::oracle::{
    check_decode_split_invariance, check_decode_split_invariance_with, decode_in_reads,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio_util::codec::Encoder;

/// Bytes that follow the body in every generated input; the decoder must leave them alone.
const NEXT: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/codec_props.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// One payload: arbitrary bytes, Unicode text (Korean and emoji weighted in), or the JSON and
/// SSE lines an LLM API streams.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "[가-힣 🦀🚀✨😀,.!]{0,40}".prop_map(String::into_bytes),
        "\\PC{0,60}".prop_map(String::into_bytes),
        "[a-zA-Z0-9 \"\\\\]{0,40}".prop_map(|s| format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":{s:?}}}}}]}}\n\n"
        )
        .into_bytes()),
        "[a-z0-9]{0,20}".prop_map(|s| format!("{{\"id\":\"{s}\",\"n\":1}}\n").into_bytes()),
        Just(b"data: [DONE]\n\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
    ]
}

/// Read sizes, taken in turn and repeated, from one byte to a few typical segment sizes.
fn reads() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![1usize..8, 1usize..100, Just(1460usize), Just(4096usize)],
        1..12,
    )
}

/// How a size line is written: leading zeros, case, and an optional valid extension.
#[derive(Debug, Clone)]
struct SizeStyle {
    zeros: usize,
    upper: bool,
    ext: &'static str,
}

fn size_style() -> impl Strategy<Value = SizeStyle> {
    (
        0usize..4,
        any::<bool>(),
        prop::sample::select(vec![
            "",
            ";a",
            ";a=b",
            " ; name = value",
            "\t;x=\"q \\\" v\"",
            ";a;b=1;c=\"\"",
        ]),
    )
        .prop_map(|(zeros, upper, ext)| SizeStyle { zeros, upper, ext })
}

/// A hand-written chunked body (not from our encoder) for the given payloads.
fn hand_encode(payloads: &[Vec<u8>], styles: &[SizeStyle]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (i, p) in payloads.iter().filter(|p| !p.is_empty()).enumerate() {
        let s = &styles[i % styles.len()];
        let hex = if s.upper {
            format!("{:X}", p.len())
        } else {
            format!("{:x}", p.len())
        };
        wire.extend_from_slice("0".repeat(s.zeros).as_bytes());
        wire.extend_from_slice(hex.as_bytes());
        wire.extend_from_slice(s.ext.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(p);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

fn data_frames(payloads: &[Vec<u8>]) -> Vec<Frame> {
    payloads
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| Frame::Data(Bytes::copy_from_slice(p)))
        .collect()
}

/// A trailer field that survives a round trip: a name that is not a framing or routing field,
/// a value without surrounding whitespace.
fn trailer() -> impl Strategy<Value = Field> {
    ("x-[a-z0-9-]{0,12}", "([!-~]([ -~]{0,20}[!-~])?)?").prop_map(|(name, value)| Field {
        name: Bytes::from(name),
        value: Bytes::from(value),
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode_yields_each_written_chunk_for_any_reads(
        payloads in prop::collection::vec(payload(), 0..12),
        styles in prop::collection::vec(size_style(), 1..4),
        reads in reads(),
    ) {
        let mut wire = hand_encode(&payloads, &styles);
        wire.extend_from_slice(NEXT);
        let mut expected = data_frames(&payloads);
        expected.push(Frame::End);
        let verdict = decode_in_reads(&wire, &reads, Limits::default());
        prop_assert_eq!(verdict.error, None);
        prop_assert_eq!(verdict.frames, expected);
        prop_assert_eq!(verdict.rest, NEXT);
    }

    #[test]
    fn encode_then_decode_is_identity(
        payloads in prop::collection::vec(payload(), 0..12),
        trailers in prop::collection::vec(trailer(), 0..4),
        reads in reads(),
    ) {
        let mut enc = ChunkedEncoder::new();
        let mut wire = BytesMut::new();
        for p in &payloads {
            Encoder::<Bytes>::encode(&mut enc, Bytes::copy_from_slice(p), &mut wire).unwrap();
        }
        enc.encode_end(&trailers, &mut wire);
        wire.extend_from_slice(NEXT);
        let mut expected = data_frames(&payloads);
        if !trailers.is_empty() {
            expected.push(Frame::Trailers(trailers));
        }
        expected.push(Frame::End);
        let verdict = decode_in_reads(&wire, &reads, Limits::default());
        prop_assert_eq!(verdict.error, None);
        prop_assert_eq!(verdict.frames, expected);
        prop_assert_eq!(verdict.rest, NEXT);
    }

    #[test]
    fn decode_verdict_of_arbitrary_bytes_is_split_independent(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // Mostly grammar bytes, so more inputs get past the first size line.
            prop::collection::vec(
                prop::sample::select(b"0123456789aAfF;= \t\"\\\r\n:xX-".to_vec()),
                0..200,
            ),
        ],
        splits in prop::collection::vec(any::<u8>(), 0..6),
    ) {
        check_decode_split_invariance(&data, &splits);
    }

    #[test]
    fn decode_verdict_of_mutated_bodies_is_split_independent(
        payloads in prop::collection::vec(payload(), 1..6),
        styles in prop::collection::vec(size_style(), 1..3),
        trailers in prop::collection::vec(trailer(), 0..3),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                b"0123456789abcdefABCDEF;= \t\"\\\r\n:\x00\x7f\xffgG".to_vec(),
            )),
            1..4,
        ),
        splits in prop::collection::vec(any::<u8>(), 1..6),
    ) {
        let mut wire = hand_encode(&payloads, &styles);
        if !trailers.is_empty() {
            // Replace the final CRLF with a trailer section.
            wire.truncate(wire.len() - 2);
            for t in &trailers {
                wire.extend_from_slice(&t.name);
                wire.extend_from_slice(b": ");
                wire.extend_from_slice(&t.value);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(NEXT);
        for (at, op, byte) in edits {
            let i = at.index(wire.len() + 1);
            match op {
                0 => wire.insert(i, byte),
                1 if i < wire.len() => {
                    wire.remove(i);
                }
                _ if i < wire.len() => wire[i] = byte,
                _ => wire.push(byte),
            }
        }
        check_decode_split_invariance(&wire, &splits);
    }

    #[test]
    fn decode_verdict_under_small_limits_is_split_independent(
        payloads in prop::collection::vec(payload(), 1..6),
        styles in prop::collection::vec(size_style(), 1..3),
        trailers in prop::collection::vec(trailer(), 0..4),
        (chunk, line, ext, tbytes, tfields, body) in (
            0u64..64, 0usize..24, 0u64..40, 0usize..64, 0usize..4, prop::option::of(0u64..400),
        ),
        splits in prop::collection::vec(any::<u8>(), 1..6),
    ) {
        // Limits small enough that every limit error is reached, checked against the plain
        // grammar with the same limits and across splits.
        let limits = Limits::default()
            .max_chunk_size(chunk)
            .max_size_line(line)
            .max_extension_bytes(ext)
            .max_trailer_bytes(tbytes)
            .max_trailer_fields(tfields)
            .max_body_size(body);
        let mut wire = hand_encode(&payloads, &styles);
        wire.truncate(wire.len() - 2);
        for t in &trailers {
            wire.extend_from_slice(&t.name);
            wire.extend_from_slice(b":\t");
            wire.extend_from_slice(&t.value);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        check_decode_split_invariance_with(&wire, &splits, limits);
    }
}
