//! Test oracles for the chunked codec and the request head parser, shared by the fuzz targets,
//! the seed-replay tests and the property tests.
//!
//! The functions here panic (through `assert!`) when the codec breaks one of its promises; a
//! panic is the intended oracle failure, reported by the fuzzer or the test harness. They are
//! not meant for the proxy's data path.
//!
//! The promises checked:
//! - **Split invariance.** The verdict on a body (frames yielded before the end or the error,
//!   the error kind and offset, and the bytes left after [`Frame::End`]) does not depend on how
//!   the bytes were split into reads.
//! - **Whole chunks only.** A [`Frame::Data`] is yielded only once its size line, payload and
//!   CRLF were all received, and it is exactly the payload that the wire bytes declared.
//! - **Grammar.** The decoder accepts a body exactly when a plain, non-incremental reading of
//!   RFC 9112 §7.1 under the same [`Limits`] accepts it, and yields the same chunks and
//!   trailers. The one difference allowed: the decoder may refuse a trailer field by name
//!   ([`DecodeErrorKind::ForbiddenTrailer`]), a policy the grammar does not know.
//! - **Round trip.** Decoding what [`ChunkedEncoder`] wrote gives back the non-empty payloads,
//!   one frame each, then the trailers and [`Frame::End`], and leaves the following bytes alone.
//! - **Request heads, split invariance.** [`RequestParser`] run over the same bytes in any
//!   reads gives the same heads (pipelined ones included), the same error kind and offset, and
//!   the same bytes left over; every head it accepts has an origin-form or `*` target, an
//!   authority (absolute-form) that matches `Host`, and a target the path policy
//!   ([`normalize_target`]) answers without panicking, idempotently.
//!
//! ```
//! use chunkgate::codec::oracle::{check_decode_split_invariance, check_roundtrip};
//!
//! check_decode_split_invariance(b"3\r\nabc\r\n0\r\n\r\n", &[1, 7]);
//! check_decode_split_invariance(b"3\r\nabc\n", &[]);
//! check_roundtrip(&[&b"data: {}\n\n"[..], b"", "안녕 🦀".as_bytes()], &[2, 5]);
//! ```

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::chunked::{ChunkedDecoder, ChunkedEncoder, DecodeErrorKind, Field, Frame, Limits, CRLF};
use super::head::{HeadErrorKind, HeadLimits, RequestHead, RequestParser};
use super::path::{normalize_target, PathOptions};

/// Everything a decoder run decided about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Frames yielded before the end of the input or the error, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped the run, with its offset into the body, if any.
    pub error: Option<(DecodeErrorKind, u64)>,
    /// Bytes left in the read buffer after [`Frame::End`] (empty after an error).
    pub rest: Vec<u8>,
}

impl Verdict {
    /// True when the body ended cleanly.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.frames.last() == Some(&Frame::End)
    }

    /// The payloads of the [`Frame::Data`] frames, in order.
    pub fn payloads(&self) -> Vec<Bytes> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Run a [`ChunkedDecoder`] over `data` delivered in reads of the sizes in `reads` (taken in
/// turn and repeated; a size of 0 counts as 1; an empty `reads` means one read of everything).
/// After every read it calls `decode` until it returns `Ok(None)`, as `FramedRead` does; after
/// the last read it calls `decode_eof`.
///
/// Panics if a frame is yielded that is not backed by whole, matching wire bytes already
/// delivered (see the module docs).
pub fn decode_in_reads(data: &[u8], reads: &[usize], limits: Limits) -> Verdict {
    let mut dec = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0usize;
    // Offset where the frame under way began on the wire (after the previous frame).
    let mut frame_start = 0usize;
    let mut sizes = reads.iter().copied().cycle();
    // After every read `decode` until `Ok(None)`; once everything is fed, `decode_eof`.
    let mut at_eof = false;
    while !at_eof {
        if fed < data.len() {
            let n = if reads.is_empty() {
                data.len()
            } else {
                sizes.next().unwrap_or(1).max(1)
            };
            let n = n.min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + n]);
            fed += n;
        } else {
            at_eof = true;
        }
        loop {
            let step = if at_eof {
                dec.decode_eof(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            match step {
                Ok(Some(frame)) => {
                    check_frame(data, fed, &dec, frame_start, &frame);
                    frame_start = consumed(&dec);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    return Verdict {
                        frames,
                        error: Some((e.kind(), e.offset())),
                        rest: Vec::new(),
                    }
                }
            }
        }
    }
    assert!(dec.is_done(), "decode_eof returned Ok(None) before the end");
    assert_eq!(
        &buf[..],
        &data[consumed(&dec)..],
        "the bytes after the body must be left in the buffer untouched"
    );
    Verdict {
        frames,
        error: None,
        rest: buf.to_vec(),
    }
}

fn consumed(dec: &ChunkedDecoder) -> usize {
    usize::try_from(dec.consumed()).expect("consumed fits the input length")
}

/// Check that `frame`, just yielded, is backed by whole wire bytes in `data[..fed]`.
fn check_frame(data: &[u8], fed: usize, dec: &ChunkedDecoder, start: usize, frame: &Frame) {
    let end = consumed(dec);
    assert!(
        end <= fed,
        "frame yielded past the bytes received ({end} > {fed})"
    );
    assert!(start <= end, "consumed count went backwards");
    match frame {
        Frame::Data(payload) => {
            assert!(!payload.is_empty(), "a Data frame must not be empty");
            assert!(
                dec.at_chunk_boundary(),
                "after a Data frame the decoder waits for a size line"
            );
            let len = payload.len();
            assert!(end >= start + len + 5, "chunk too short for its framing");
            assert_eq!(&data[end - 2..end], CRLF, "payload not followed by CRLF");
            let payload_start = end - 2 - len;
            assert_eq!(
                &data[payload_start..end - 2],
                &payload[..],
                "payload bytes differ from the wire"
            );
            let line = &data[start..payload_start];
            assert_eq!(&line[line.len() - 2..], CRLF, "size line not ended by CRLF");
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            assert_eq!(
                hex_to_u64(&line[..digits]),
                Some(len as u64),
                "payload length differs from the declared size"
            );
        }
        Frame::Trailers(fields) => {
            assert!(
                !fields.is_empty(),
                "an empty trailer section is not a frame"
            );
            assert!(!dec.is_done(), "End must follow Trailers");
            assert_eq!(
                &data[end - 4..end],
                b"\r\n\r\n",
                "trailers not ended by CRLF CRLF"
            );
            for f in fields {
                assert!(!f.name.is_empty() && f.name.iter().all(|&b| is_tchar(b)));
            }
        }
        Frame::End => {
            assert!(dec.is_done(), "End yielded but the decoder is not done");
            assert_eq!(&data[end - 2..end], CRLF, "End not at a CRLF");
        }
    }
}

fn hex_to_u64(digits: &[u8]) -> Option<u64> {
    let significant = match digits.iter().position(|&b| b != b'0') {
        Some(p) => &digits[p..],
        None => return Some(0),
    };
    if significant.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in significant {
        v = (v << 4) | u64::from(char::from(b).to_digit(16)? as u8);
    }
    Some(v)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Read lengths for the "pattern" run: each byte of `splits` is one read of `byte + 1` bytes.
fn pattern_reads(splits: &[u8]) -> Vec<usize> {
    splits.iter().map(|&b| usize::from(b) + 1).collect()
}

/// Decode `data` whole, one byte per read, in two reads cut at a point chosen by `splits`,
/// and in reads whose lengths come from `splits`; assert all verdicts are identical, every
/// frame is backed by whole wire bytes, and accept/reject, chunks and trailers agree with a
/// plain reading of the grammar. Uses [`Limits::default`].
///
/// Panics (the oracle failure) on any difference.
pub fn check_decode_split_invariance(data: &[u8], splits: &[u8]) {
    check_decode_split_invariance_with(data, splits, Limits::default());
}

/// [`check_decode_split_invariance`] under the given limits.
pub fn check_decode_split_invariance_with(data: &[u8], splits: &[u8], limits: Limits) {
    let whole = decode_in_reads(data, &[], limits);
    let bytewise = decode_in_reads(data, &[1], limits);
    assert_eq!(
        whole, bytewise,
        "verdict differs: whole vs one byte per read"
    );
    let cut = match splits {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % (data.len() + 1),
        [a] => usize::from(*a) % (data.len() + 1),
        [] => data.len() / 2,
    };
    let two = decode_in_reads(data, &[cut, usize::MAX], limits);
    assert_eq!(
        whole, two,
        "verdict differs: whole vs two reads cut at {cut}"
    );
    if !splits.is_empty() {
        let reads = pattern_reads(splits);
        let patterned = decode_in_reads(data, &reads, limits);
        assert_eq!(
            whole, patterned,
            "verdict differs: whole vs reads {reads:?}"
        );
    }
    check_against_grammar(data, &whole, limits);
}

/// Compare a decoder verdict with [`reference_decode`].
fn check_against_grammar(data: &[u8], verdict: &Verdict, limits: Limits) {
    match (reference_decode(data, limits), &verdict.error) {
        (Some(reference), None) => {
            let mut expected: Vec<Frame> = reference.chunks.into_iter().map(Frame::Data).collect();
            if !reference.trailers.is_empty() {
                expected.push(Frame::Trailers(reference.trailers));
            }
            expected.push(Frame::End);
            assert_eq!(verdict.frames, expected, "frames differ from the grammar");
            assert_eq!(verdict.rest, &data[reference.len..], "body end differs");
        }
        (Some(_), Some((DecodeErrorKind::ForbiddenTrailer, _))) => {}
        (Some(_), Some(error)) => {
            panic!("the grammar accepts this body but the decoder refused it: {error:?}")
        }
        (None, Some(_)) => {}
        (None, None) => panic!(
            "the decoder accepted a body the grammar refuses: {:?}",
            verdict.frames
        ),
    }
}

/// What [`reference_decode`] read from a valid body.
struct Reference {
    chunks: Vec<Bytes>,
    trailers: Vec<Field>,
    /// Length of the body, final CRLF included.
    len: usize,
}

/// A plain, whole-buffer reading of RFC 9112 §7.1 with the limits of [`Limits`], written
/// independently of the incremental decoder: `None` if `data` does not start with a complete,
/// valid chunked body.
fn reference_decode(data: &[u8], limits: Limits) -> Option<Reference> {
    let mut pos = 0;
    let mut chunks = Vec::new();
    let mut ext_total = 0u64;
    let mut body_total = 0u64;
    loop {
        let line = crlf_line(data, pos)?;
        if line.len() > limits.size_line_limit() {
            return None;
        }
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > limits.size_digits_limit() {
            return None;
        }
        let size = hex_to_u64(&line[..digits])?;
        if size > limits.chunk_size_limit() {
            return None;
        }
        ext_total += (line.len() - digits) as u64;
        if ext_total > limits.extension_bytes_limit() || !valid_extensions(&line[digits..]) {
            return None;
        }
        pos += line.len() + 2;
        if size == 0 {
            break;
        }
        body_total += size;
        if limits.body_size_limit().is_some_and(|max| body_total > max) {
            return None;
        }
        let size = usize::try_from(size).ok()?;
        let payload = data.get(pos..pos.checked_add(size)?)?;
        if data.get(pos + size..pos + size + 2)? != CRLF {
            return None;
        }
        chunks.push(Bytes::copy_from_slice(payload));
        pos += size + 2;
    }
    let section_start = pos;
    let mut trailers = Vec::new();
    loop {
        let line = crlf_line(data, pos)?;
        pos += line.len() + 2;
        if pos - section_start > limits.trailer_bytes_limit() {
            return None;
        }
        if line.is_empty() {
            break;
        }
        if trailers.len() == limits.trailer_fields_limit() {
            return None;
        }
        trailers.push(field(line)?);
    }
    Some(Reference {
        chunks,
        trailers,
        len: pos,
    })
}

/// The line starting at `from`, if it is ended by CRLF and holds no other CR or LF.
fn crlf_line(data: &[u8], from: usize) -> Option<&[u8]> {
    let rest = data.get(from..)?;
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
    (rest.get(end..end + 2)? == CRLF).then_some(&rest[..end])
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`
fn valid_extensions(ext: &[u8]) -> bool {
    let ws = |i: &mut usize| {
        while ext.get(*i).is_some_and(|&b| b == b' ' || b == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while ext.get(*i).is_some_and(|&b| is_tchar(b)) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    while i < ext.len() {
        ws(&mut i);
        if ext.get(i) != Some(&b';') {
            return false;
        }
        i += 1;
        ws(&mut i);
        if !token(&mut i) {
            return false;
        }
        let after_name = i;
        ws(&mut i);
        if ext.get(i) != Some(&b'=') {
            i = after_name;
            continue;
        }
        i += 1;
        ws(&mut i);
        if ext.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match ext.get(i) {
                    Some(b'"') => break,
                    Some(b'\\') => match ext.get(i + 1) {
                        Some(&b)
                            if b == b'\t'
                                || b == b' '
                                || (0x21..=0x7e).contains(&b)
                                || b >= 0x80 =>
                        {
                            i += 2
                        }
                        _ => return false,
                    },
                    Some(&b)
                        if b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80 =>
                    {
                        i += 1
                    }
                    _ => return false,
                }
            }
            i += 1;
        } else if !token(&mut i) {
            return false;
        }
    }
    true
}

/// `field-name ":" OWS field-value OWS`, the value trimmed.
fn field(line: &[u8]) -> Option<Field> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let value = &line[colon + 1..];
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
    {
        return None;
    }
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ws(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |p| p + 1);
    Some(Field {
        name: Bytes::copy_from_slice(name),
        value: Bytes::copy_from_slice(&value[start..end]),
    })
}

/// Bytes appended after every encoded body in [`check_roundtrip`]: the start of a next
/// message, which the decoder must leave in the buffer.
const NEXT_MESSAGE: &[u8] = b"GET /next HTTP/1.1\r\n";

/// Encode `payloads` with [`ChunkedEncoder`] (with a trailer section when the first byte of
/// `splits` is odd), decode the result whole, one byte per read and in reads whose lengths
/// come from `splits`, and assert each run gives back exactly the non-empty payloads, one
/// frame each, the trailers, [`Frame::End`], and leaves the next message's bytes untouched.
///
/// Panics (the oracle failure) on any difference.
pub fn check_roundtrip(payloads: &[&[u8]], splits: &[u8]) {
    let mut enc = ChunkedEncoder::new();
    let mut wire = BytesMut::new();
    for p in payloads {
        Encoder::<Bytes>::encode(&mut enc, Bytes::copy_from_slice(p), &mut wire)
            .expect("encoding into memory cannot fail");
    }
    let trailers: Vec<Field> = match splits.first() {
        Some(b) if b % 2 == 1 => (0..usize::from(b % 5))
            .map(|i| Field {
                name: Bytes::from(format!("x-trailer-{i}")),
                value: Bytes::from(format!("v{i} {}", payloads.len())),
            })
            .collect(),
        _ => Vec::new(),
    };
    enc.encode_end(&trailers, &mut wire);
    assert!(enc.is_ended());
    wire.extend_from_slice(NEXT_MESSAGE);

    let mut expected: Vec<Frame> = payloads
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| Frame::Data(Bytes::copy_from_slice(p)))
        .collect();
    if !trailers.is_empty() {
        expected.push(Frame::Trailers(trailers));
    }
    expected.push(Frame::End);

    let limits = Limits::default().max_chunk_size(u64::MAX);
    let mut runs = vec![Vec::new(), vec![1]];
    if !splits.is_empty() {
        runs.push(pattern_reads(splits));
    }
    for reads in runs {
        let verdict = decode_in_reads(&wire, &reads, limits);
        assert_eq!(verdict.error, None, "reads {reads:?}");
        assert_eq!(verdict.frames, expected, "reads {reads:?}");
        assert_eq!(verdict.rest, NEXT_MESSAGE, "reads {reads:?}");
    }
}

/// Split fuzzer input for [`check_roundtrip`]: the first byte `k` says how many of the next
/// bytes (`k % 8`) are the split pattern; the rest is a list of payloads, each one length byte
/// followed by that many bytes (the last one cut short by the end of the input).
pub fn roundtrip_input(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&k, rest)) = input.split_first() else {
        return (Vec::new(), &[]);
    };
    let k = usize::from(k % 8).min(rest.len());
    let (splits, mut rest) = rest.split_at(k);
    let mut payloads = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        payloads.push(payload);
        rest = tail;
    }
    (payloads, splits)
}

/// A split pattern derived from the input itself (FNV-1a), so a fuzzer input that is a raw
/// body still exercises an input-dependent split.
pub fn split_pattern_for(data: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_le_bytes()
}

/// Everything a request-parser run decided about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadVerdict {
    /// The heads parsed, in order (the bytes after a head are parsed as the next request).
    pub heads: Vec<RequestHead>,
    /// The error that stopped the run, with its offset, if any.
    pub error: Option<(HeadErrorKind, usize)>,
    /// Bytes left in the buffer at the end (empty after an error).
    pub rest: Vec<u8>,
}

/// Most heads one run parses; past it the run stops (fuzz inputs are small anyway).
const MAX_HEADS: usize = 256;

/// Run a [`RequestParser`] over `data` delivered in reads of the sizes in `reads` (as in
/// [`decode_in_reads`]: taken in turn and repeated, 0 counts as 1, empty means one read of
/// everything). After every read it parses until `Ok(None)` or an error; each parsed head's
/// remaining bytes are parsed as the next request.
pub fn parse_requests_in_reads(data: &[u8], reads: &[usize], limits: HeadLimits) -> HeadVerdict {
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut heads = Vec::new();
    let mut fed = 0usize;
    let mut sizes = reads.iter().copied().cycle();
    loop {
        loop {
            if heads.len() == MAX_HEADS {
                return HeadVerdict {
                    heads,
                    error: None,
                    rest: buf.to_vec(),
                };
            }
            match parser.parse(&mut buf) {
                Ok(Some(head)) => heads.push(head),
                Ok(None) => break,
                Err(e) => {
                    return HeadVerdict {
                        heads,
                        error: Some((e.kind(), e.offset())),
                        rest: Vec::new(),
                    }
                }
            }
        }
        if fed == data.len() {
            return HeadVerdict {
                heads,
                error: None,
                rest: buf.to_vec(),
            };
        }
        let n = if reads.is_empty() {
            data.len()
        } else {
            sizes.next().unwrap_or(1).max(1)
        };
        let n = n.min(data.len() - fed);
        buf.extend_from_slice(&data[fed..fed + n]);
        fed += n;
    }
}

/// Small limits, so fuzz inputs reach every cap.
const SMALL_HEAD_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 256,
    max_headers: 6,
    max_request_line: 64,
    max_leading_empty_lines: 2,
};

/// Parse `data` as requests whole, one byte per read, in two reads cut at a point chosen by
/// `splits`, and in reads whose lengths come from `splits`, under the default limits and under
/// small ones; assert the verdicts agree, and check every accepted head (see the module docs).
///
/// Panics (the oracle failure) on any difference.
pub fn check_request_head_split_invariance(data: &[u8], splits: &[u8]) {
    for limits in [HeadLimits::default(), SMALL_HEAD_LIMITS] {
        let whole = parse_requests_in_reads(data, &[], limits);
        let bytewise = parse_requests_in_reads(data, &[1], limits);
        assert_eq!(
            whole, bytewise,
            "verdict differs: whole vs one byte per read"
        );
        let cut = match splits {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % (data.len() + 1),
            [a] => usize::from(*a) % (data.len() + 1),
            [] => data.len() / 2,
        };
        let two = parse_requests_in_reads(data, &[cut, usize::MAX], limits);
        assert_eq!(
            whole, two,
            "verdict differs: whole vs two reads cut at {cut}"
        );
        if !splits.is_empty() {
            let reads = pattern_reads(splits);
            let patterned = parse_requests_in_reads(data, &reads, limits);
            assert_eq!(
                whole, patterned,
                "verdict differs: whole vs reads {reads:?}"
            );
        }
        for head in &whole.heads {
            check_request_head(head);
        }
    }
}

/// What every accepted request head promises.
fn check_request_head(head: &RequestHead) {
    let target = &head.target;
    assert!(
        &target[..] == b"*" || target.first() == Some(&b'/'),
        "target not origin-form or '*': {target:?}"
    );
    if &target[..] == b"*" {
        assert_eq!(head.method, "OPTIONS", "asterisk-form with another method");
    }
    if let (Some(authority), Some(host)) = (&head.target_authority, head.get("host")) {
        assert!(
            authority.eq_ignore_ascii_case(host),
            "absolute-form authority {authority:?} differs from Host {host:?}"
        );
    }
    for allow_params in [false, true] {
        let opts = PathOptions { allow_params };
        if let Ok(t) = normalize_target(target, opts) {
            let again = normalize_target(&t.to_bytes(), opts)
                .expect("a normalised target is accepted again");
            assert_eq!(again, t, "normalising {target:?} twice changed it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_accepts_and_refuses_like_the_grammar() {
        let limits = Limits::default();
        let ok = reference_decode(
            b"3;a=\"x\\\"\" ; b\r\nabc\r\n0\r\nX: 1 \r\n\r\nrest",
            limits,
        )
        .expect("valid body");
        assert_eq!(ok.chunks, vec![Bytes::from_static(b"abc")]);
        assert_eq!(ok.trailers[0].value, Bytes::from_static(b"1"));
        assert_eq!(ok.len, 32);
        for bad in [
            &b"3 \r\nabc\r\n0\r\n\r\n"[..],
            b"3;a \r\nabc\r\n0\r\n\r\n",
            b"3;\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\n",
            b"3\r\nabc0\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
        ] {
            assert!(reference_decode(bad, limits).is_none(), "{bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "accepted a body the grammar refuses")]
    fn grammar_oracle_fires_on_a_wrong_accept() {
        let wrong = Verdict {
            frames: vec![Frame::Data(Bytes::from_static(b"abc")), Frame::End],
            error: None,
            rest: Vec::new(),
        };
        check_against_grammar(b"3 \r\nabc\r\n0\r\n\r\n", &wrong, Limits::default());
    }

    #[test]
    #[should_panic(expected = "frames differ from the grammar")]
    fn grammar_oracle_fires_on_wrong_frames() {
        let wrong = Verdict {
            frames: vec![Frame::Data(Bytes::from_static(b"abd")), Frame::End],
            error: None,
            rest: Vec::new(),
        };
        check_against_grammar(b"3\r\nabc\r\n0\r\n\r\n", &wrong, Limits::default());
    }

    #[test]
    fn request_parse_runs_continue_after_a_head_and_stop_at_an_error() {
        let two = b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nGE";
        for reads in [&[][..], &[1], &[7, 3]] {
            let v = parse_requests_in_reads(two, reads, HeadLimits::default());
            let targets: Vec<_> = v.heads.iter().map(|h| h.target.clone()).collect();
            assert_eq!(targets, ["/a", "/b"], "{reads:?}");
            assert_eq!((v.error, &v.rest[..]), (None, &b"GE"[..]), "{reads:?}");
        }
        let v = parse_requests_in_reads(
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
            &[],
            HeadLimits::default(),
        );
        assert_eq!(v.error, Some((HeadErrorKind::BareLf, 14)));
        check_request_head_split_invariance(two, &[5, 0, 2]);
    }

    #[test]
    fn roundtrip_input_parses_length_prefixed_payloads() {
        let (payloads, splits) = roundtrip_input(b"\x02xy\x03abc\x05de");
        assert_eq!(splits, b"xy");
        assert_eq!(payloads, vec![&b"abc"[..], b"de"]);
        assert_eq!(roundtrip_input(b""), (Vec::new(), &b""[..]));
    }
}
