//! The raw HTTP/1.1 peer shared by the integration tests, the harness and the load tool: a
//! connection with its read buffer and strict readers.
//!
//! - [`parse_head`]: the one head parser (sans-IO). It runs httparse over the buffered bytes
//!   and adds what httparse leaves lenient: CRLF line ends only, a cap on head bytes and on
//!   field count. It borrows: a [`HeadView`] costs no allocation, so the load tool's per-request
//!   path stays allocation-free; [`HeadView::to_head`] makes an owned [`Head`].
//! - [`Head::request_framing`] and [`Head::response_framing`]: how a body is delimited
//!   (RFC 9112 §6.3), strictly (see [`FramingError`]).
//! - [`Peer`]: a stream and the bytes read from it but not yet used, with readers for heads
//!   ([`Peer::next_head_with`] and what is built on it), chunked bodies recorded chunk by chunk
//!   with the reads each chunk arrived in ([`Peer::chunked_body`]), `Content-Length` bodies
//!   ([`Peer::length_body`]), bodies delimited by close ([`Peer::read_to_close`]), and whole
//!   messages ([`Peer::response`], [`Peer::final_response`], [`Peer::request`]).
//!
//! Nothing is forgiven and nothing is repaired: a reader reports what arrived. The peer parses
//! with httparse directly and frames chunks with its own [`canonical_chunk`], not with the
//! proxy's codec, so that it stays an independent judge of what the proxy sends.
//!
//! ```
//! use chunkgate::harness::peer::{parse_head, Framing, HeadKind, PeerLimits};
//!
//! let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
//! let mut fields = [httparse::EMPTY_HEADER; 16];
//! let view = parse_head(buf, HeadKind::Response, &PeerLimits::default(), &mut fields)
//!     .unwrap()
//!     .expect("a complete head");
//! assert_eq!(view.status, 200);
//! assert_eq!(view.len, 47); // the body starts there
//! assert_eq!(view.response_framing("GET"), Ok(Framing::Chunked));
//! // Running short of bytes is not an error; a bare LF is.
//! assert!(parse_head(&buf[..20], HeadKind::Response, &PeerLimits::default(), &mut fields)
//!     .unwrap()
//!     .is_none());
//! assert!(parse_head(b"HTTP/1.1 200 OK\n\n", HeadKind::Response, &PeerLimits::default(), &mut fields)
//!     .is_err());
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::codec::chunked::{ChunkedDecoder, DecodeError, Frame, Limits};

/// Default largest head (start line, fields, final CRLF): 64 KiB.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Default most header fields in a head: 100.
pub const MAX_HEADERS: usize = 100;
/// The most header fields any [`PeerLimits`] can allow (the size of the readers' field array).
pub const HEADERS_CAPACITY: usize = 128;
/// Default largest body a reader buffers, and largest chunk: 64 MiB.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Default pause [`Peer::send_pieces`] makes after each piece: 3 ms.
pub const GAP: Duration = Duration::from_millis(3);

/// Below this much spare room, a read first grows the buffer by [`READ_RESERVE`].
const READ_MIN_SPARE: usize = 4 << 10;
const READ_RESERVE: usize = 16 << 10;

/// Which start line a head has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `method target HTTP/1.x`.
    Request,
    /// `HTTP/1.x status reason`.
    Response,
}

/// The sizes a peer accepts from the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    max_head_bytes: usize,
    max_headers: usize,
    max_body_bytes: usize,
}

impl Default for PeerLimits {
    /// [`MAX_HEAD_BYTES`], [`MAX_HEADERS`], [`MAX_BODY_BYTES`].
    fn default() -> Self {
        PeerLimits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

impl PeerLimits {
    /// Largest head in bytes, final CRLF included; a longer one is [`HeadError::TooLarge`].
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    /// Most header fields; more is [`HeadError::TooManyHeaders`]. Values above
    /// [`HEADERS_CAPACITY`] count as [`HEADERS_CAPACITY`].
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count.min(HEADERS_CAPACITY);
        self
    }

    /// Largest body a reader buffers and largest chunk it takes; past it a chunked body ends
    /// with [`BodyEnd::TooLarge`] and any other body is an error.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The head byte limit.
    pub fn head_bytes(&self) -> usize {
        self.max_head_bytes
    }

    /// The header field limit.
    pub fn headers(&self) -> usize {
        self.max_headers
    }

    /// The body byte limit.
    pub fn body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

// ---------------------------------------------------------------------------------------------
// Heads
// ---------------------------------------------------------------------------------------------

/// Why bytes are not a valid head.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadError {
    /// The head is longer than the limit (in bytes).
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The head has more fields than the limit.
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// An empty line before the start line.
    EmptyLineFirst,
    /// A line ends in LF without CR, at this byte offset of the head.
    BareLf {
        /// Offset of the LF.
        offset: usize,
    },
    /// httparse refused the head.
    Invalid(httparse::Error),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge { limit } => write!(f, "head over {limit} bytes"),
            HeadError::TooManyHeaders { limit } => write!(f, "more than {limit} header fields"),
            HeadError::EmptyLineFirst => f.write_str("empty line before the start line"),
            HeadError::BareLf { offset } => write!(f, "bare LF in head at byte {offset}"),
            HeadError::Invalid(e) => write!(f, "invalid head: {e}"),
        }
    }
}

impl std::error::Error for HeadError {}

impl HeadError {
    /// The head error inside an I/O error returned by a [`Peer`] reader, if that is what it is.
    pub fn of(e: &io::Error) -> Option<&HeadError> {
        e.get_ref()?.downcast_ref::<HeadError>()
    }
}

impl From<HeadError> for io::Error {
    fn from(e: HeadError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A head parsed in place: every part borrows the buffer, nothing is allocated.
#[derive(Debug, Clone, Copy)]
pub struct HeadView<'b, 'h> {
    /// Request method (empty for a response).
    pub method: &'b str,
    /// Request target (empty for a response).
    pub target: &'b str,
    /// Status code (0 for a request).
    pub status: u16,
    /// Minor HTTP version: 0 or 1.
    pub minor: u8,
    /// Fields in order, names as received.
    pub fields: &'h [httparse::Header<'b>],
    /// The head's length in bytes, final CRLF included: where a body starts.
    pub len: usize,
    raw: &'b [u8],
}

/// Parse the head at the front of `buf` with httparse into `fields`.
///
/// `Ok(None)` while the head is incomplete; an error for a head longer than
/// [`PeerLimits::max_head_bytes`] (complete or not), with more fields than
/// [`PeerLimits::max_headers`] or than `fields` holds, with an empty line before the start line
/// or a line that ends in a bare LF (httparse accepts both), or that httparse refuses. Pure:
/// nothing is consumed from `buf`.
pub fn parse_head<'b, 'h>(
    buf: &'b [u8],
    kind: HeadKind,
    limits: &PeerLimits,
    fields: &'h mut [httparse::Header<'b>],
) -> Result<Option<HeadView<'b, 'h>>, HeadError> {
    let max_fields = limits.max_headers.min(fields.len());
    let fields = &mut fields[..max_fields];
    let refusal = |e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders { limit: max_fields },
        e => HeadError::Invalid(e),
    };
    let (status, start, version, fields) = match kind {
        HeadKind::Request => {
            let mut r = httparse::Request::new(fields);
            let status = r.parse(buf).map_err(refusal)?;
            (
                status,
                (r.method.unwrap_or(""), r.path.unwrap_or(""), 0),
                r.version,
                r.headers,
            )
        }
        HeadKind::Response => {
            let mut r = httparse::Response::new(fields);
            let status = r.parse(buf).map_err(refusal)?;
            (status, ("", "", r.code.unwrap_or(0)), r.version, r.headers)
        }
    };
    let len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > limits.max_head_bytes => {
            return Err(HeadError::TooLarge {
                limit: limits.max_head_bytes,
            })
        }
        httparse::Status::Partial => return Ok(None),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::TooLarge {
            limit: limits.max_head_bytes,
        });
    }
    let raw = &buf[..len];
    if matches!(raw.first(), Some(b'\r' | b'\n')) {
        return Err(HeadError::EmptyLineFirst);
    }
    if let Some(offset) = memchr::memchr_iter(b'\n', raw).find(|&i| i == 0 || raw[i - 1] != b'\r') {
        return Err(HeadError::BareLf { offset });
    }
    let (method, target, status) = start;
    Ok(Some(HeadView {
        method,
        target,
        status,
        minor: version.unwrap_or(1),
        fields,
        len,
        raw,
    }))
}

/// [`parse_head`] into a field array of [`HEADERS_CAPACITY`] on the stack, handing the view to
/// `inspect` while it borrows `buf`.
pub fn parse_head_with<T>(
    buf: &[u8],
    kind: HeadKind,
    limits: &PeerLimits,
    inspect: impl FnOnce(&HeadView<'_, '_>) -> T,
) -> Result<Option<T>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_CAPACITY];
    Ok(parse_head(buf, kind, limits, &mut fields)?.map(|view| inspect(&view)))
}

impl HeadView<'_, '_> {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.fields.iter().map(|h| (h.name, h.value))
    }

    /// The head's exact bytes, final CRLF included.
    pub fn raw(&self) -> &[u8] {
        self.raw
    }

    /// The first value of a field (case-insensitive name).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        first(self.pairs(), name)
    }

    /// How a request body is delimited (see [`Head::request_framing`]).
    pub fn request_framing(&self) -> Result<Framing, FramingError> {
        request_framing(self.minor, self.pairs())
    }

    /// How a response body is delimited (see [`Head::response_framing`]).
    pub fn response_framing(&self, method: &str) -> Result<Framing, FramingError> {
        response_framing(self.status, method, self.pairs())
    }

    /// Whether the connection stays open after this message (see [`Head::keep_alive`]).
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.minor, self.pairs())
    }

    /// An owned copy.
    pub fn to_head(&self) -> Head {
        Head {
            method: self.method.to_string(),
            target: self.target.to_string(),
            status: self.status,
            minor: self.minor,
            headers: self
                .fields
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
            raw: self.raw.to_vec(),
        }
    }
}

/// A parsed message head, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method (empty for a response).
    pub method: String,
    /// Request target (empty for a response).
    pub target: String,
    /// Status code (0 for a request).
    pub status: u16,
    /// Minor HTTP version: 0 or 1.
    pub minor: u8,
    /// Fields in order, names as received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The head's exact bytes, final CRLF included.
    pub raw: Vec<u8>,
}

impl Head {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first value of a field (case-insensitive name), as text (`None` if not UTF-8).
    pub fn get(&self, name: &str) -> Option<&str> {
        first(self.pairs(), name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many fields have this name.
    pub fn count(&self, name: &str) -> usize {
        named(self.pairs(), name).count()
    }

    /// Whether `Transfer-Encoding` is exactly `chunked`.
    pub fn is_chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
    }

    /// The `Content-Length`, if present and valid.
    pub fn content_length(&self) -> Option<u64> {
        self.get("content-length").and_then(digits)
    }

    /// Whether a `Connection` field lists `close`.
    pub fn says_close(&self) -> bool {
        lists(self.pairs(), "connection", "close")
    }

    /// Whether the connection stays open after this message: HTTP/1.1 unless `Connection`
    /// lists `close`, HTTP/1.0 only when it lists `keep-alive` (and not `close`).
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.minor, self.pairs())
    }

    /// How the body of this request is delimited (RFC 9112 §6.3): [`Framing::Chunked`] for
    /// one `Transfer-Encoding` field that is exactly `chunked`, [`Framing::Length`] for one
    /// valid `Content-Length`, else [`Framing::None`]. Anything ambiguous is an error.
    pub fn request_framing(&self) -> Result<Framing, FramingError> {
        request_framing(self.minor, self.pairs())
    }

    /// How the body of this response to a `method` request is delimited (RFC 9112 §6.3): none
    /// after `HEAD` and for 1xx, 204 and 304; else as for a request, except that a response
    /// with neither field, or whose last transfer coding (over all its `Transfer-Encoding`
    /// fields) is not `chunked`, is read until close.
    pub fn response_framing(&self, method: &str) -> Result<Framing, FramingError> {
        response_framing(self.status, method, self.pairs())
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a head's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length` field.
    SeveralLengths,
    /// A `Content-Length` that is not `1*DIGIT` (surrounding whitespace aside) or overflows.
    InvalidLength,
    /// More than one `Transfer-Encoding` field in a request.
    SeveralCodings,
    /// A request `Transfer-Encoding` other than exactly `chunked`.
    UnsupportedCoding,
    /// `Transfer-Encoding` on an HTTP/1.0 request.
    CodingOnHttp10,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingError::LengthAndChunked => "both content-length and transfer-encoding",
            FramingError::SeveralLengths => "several content-length fields",
            FramingError::InvalidLength => "invalid content-length",
            FramingError::SeveralCodings => "several transfer-encoding fields",
            FramingError::UnsupportedCoding => "unsupported transfer-encoding",
            FramingError::CodingOnHttp10 => "transfer-encoding on http/1.0",
        })
    }
}

impl std::error::Error for FramingError {}

impl From<FramingError> for io::Error {
    fn from(e: FramingError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn named<'a>(
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> {
    fields
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn first<'a>(
    mut fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &str,
) -> Option<&'a [u8]> {
    fields
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Whether any `name` field lists `token` (comma-separated, case-insensitive).
fn lists<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])>, name: &str, token: &str) -> bool {
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn keep_alive<'a>(minor: u8, fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> bool {
    if lists(fields.clone(), "connection", "close") {
        return false;
    }
    minor != 0 || lists(fields, "connection", "keep-alive")
}

/// `1*DIGIT` after trimming whitespace; no sign, no overflow.
fn digits(v: impl AsRef<[u8]>) -> Option<u64> {
    let v = v.as_ref().trim_ascii();
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn request_framing<'a>(
    minor: u8,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Result<Framing, FramingError> {
    let framing = body_framing(HeadKind::Request, fields)?;
    if framing == Some(Framing::Chunked) && minor == 0 {
        return Err(FramingError::CodingOnHttp10);
    }
    Ok(framing.unwrap_or(Framing::None))
}

fn response_framing<'a>(
    status: u16,
    method: &str,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Result<Framing, FramingError> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(Framing::None);
    }
    Ok(body_framing(HeadKind::Response, fields)?.unwrap_or(Framing::Close))
}

/// The framing the fields declare, `None` when they declare none.
fn body_framing<'a>(
    kind: HeadKind,
    fields: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Result<Option<Framing>, FramingError> {
    let mut codings = named(fields.clone(), "transfer-encoding");
    let mut lengths = named(fields, "content-length");
    let list = |v: &'a [u8]| {
        v.split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
    };
    match (codings.next(), lengths.next()) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(FramingError::LengthAndChunked),
        (Some(te), None) if kind == HeadKind::Response => {
            // RFC 9112 §6.3 rule 4: chunked last means chunked; any other last coding means
            // the body runs until close.
            let last = std::iter::once(te).chain(codings).flat_map(list).last();
            let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            Ok(Some(if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            }))
        }
        (Some(te), None) => {
            if codings.next().is_some() {
                return Err(FramingError::SeveralCodings);
            }
            let mut list = list(te);
            match (list.next(), list.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
                _ => Err(FramingError::UnsupportedCoding),
            }
        }
        (None, Some(cl)) => {
            if lengths.next().is_some() {
                return Err(FramingError::SeveralLengths);
            }
            digits(cl)
                .map(|n| Some(Framing::Length(n)))
                .ok_or(FramingError::InvalidLength)
        }
    }
}

/// Whether a status is an interim answer another response follows (1xx but 101).
pub fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// How a body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Complete: the last chunk and final CRLF, all `Content-Length` bytes, or the close that
    /// delimits a body.
    Complete,
    /// The connection closed cleanly before the body was complete.
    Cut,
    /// The connection failed (reset) before the body was complete.
    Reset(io::ErrorKind),
    /// The chunked framing was invalid.
    Malformed(DecodeError),
    /// The body, or one chunk, grew past [`PeerLimits::max_body_bytes`].
    TooLarge,
}

/// The canonical wire bytes of one chunk: lowercase hex size without leading zeros, no
/// extensions, CRLF, the payload, CRLF. Written without the codec's encoder on purpose.
pub fn canonical_chunk(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// A chunked body as received: one entry per chunk, exactly as the sender framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedBody {
    /// The payload of every chunk, in order.
    pub chunks: Vec<Bytes>,
    /// For each chunk, how many reads delivered some of its wire bytes (size line to CRLF):
    /// 1 means it arrived whole in one read.
    pub chunk_reads: Vec<u32>,
    /// Trailer fields, names and values as received.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// How it ended.
    pub end: BodyEnd,
    /// The body's wire bytes as consumed by the decoder (framing included).
    pub raw: Vec<u8>,
    /// Reads that carried body bytes (bytes buffered before the body count as one).
    pub reads: usize,
}

impl ChunkedBody {
    /// Whether the body ended with its terminating chunk.
    pub fn is_complete(&self) -> bool {
        self.end == BodyEnd::Complete
    }

    /// The payload, chunks concatenated.
    pub fn payload(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// Chunks that arrived spread over more than one read.
    pub fn split_chunks(&self) -> usize {
        self.chunk_reads.iter().filter(|&&r| r > 1).count()
    }

    /// The canonical framing of these chunks and trailers (see [`canonical_chunk`]), ending
    /// `0\r\n`, the trailers as `name: value\r\n`, and `\r\n`: what [`ChunkedBody::raw`] is when
    /// the sender framed the body canonically.
    pub fn canonical_wire(&self) -> Vec<u8> {
        let mut wire = Vec::new();
        for c in &self.chunks {
            wire.extend_from_slice(&canonical_chunk(c));
        }
        wire.extend_from_slice(b"0\r\n");
        for (n, v) in &self.trailers {
            wire.extend_from_slice(n);
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(v);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }
}

/// A whole response as a raw peer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The head.
    pub head: Head,
    /// How the body was delimited.
    pub framing: Framing,
    /// The body payload (for a chunked body, the chunks concatenated).
    pub body: Vec<u8>,
    /// The chunk structure, for a chunked body.
    pub chunked: Option<ChunkedBody>,
    /// How the body ended ([`ChunkedBody::end`] for a chunked body).
    pub end: BodyEnd,
    /// Reads that carried body bytes (bytes buffered with the head count as one).
    pub body_reads: usize,
}

impl RawResponse {
    /// The chunks of a chunked body (none for any other framing).
    pub fn chunks(&self) -> &[Bytes] {
        self.chunked.as_ref().map_or(&[], |c| &c.chunks)
    }

    /// Chunks that arrived spread over more than one read.
    pub fn split_chunks(&self) -> usize {
        self.chunked.as_ref().map_or(0, ChunkedBody::split_chunks)
    }
}

/// A whole request as a raw peer (an upstream) received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// The head.
    pub head: Head,
    /// The body bytes (payload only).
    pub body: Vec<u8>,
    /// The chunk structure, for a chunked body.
    pub chunked: Option<ChunkedBody>,
}

/// A body read up to its end or its failure.
struct BodyRead {
    body: Vec<u8>,
    end: BodyEnd,
    reads: usize,
}

// ---------------------------------------------------------------------------------------------
// The peer
// ---------------------------------------------------------------------------------------------

/// A raw connection with the bytes read from it but not yet used.
///
/// Every reader takes its bytes from [`Peer::buf`] first and leaves there what it did not use
/// (a pipelined message, bytes after a body). Cancel safety: the readers keep their progress in
/// `buf` only between messages; dropping one mid-message loses its place in that message.
#[derive(Debug)]
pub struct Peer<S = TcpStream> {
    /// The stream.
    pub stream: S,
    /// Read but not yet consumed.
    pub buf: BytesMut,
    limits: PeerLimits,
    gap: Duration,
}

impl Peer<TcpStream> {
    /// Connect to `addr` with `TCP_NODELAY` set.
    pub async fn connect(addr: SocketAddr) -> io::Result<Peer> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Peer::new(stream))
    }
}

impl<S> Peer<S> {
    /// Wrap a stream, with an empty 16 KiB buffer and default limits.
    pub fn new(stream: S) -> Peer<S> {
        Peer::with_buffer(stream, BytesMut::with_capacity(READ_RESERVE))
    }

    /// Wrap a stream whose first bytes were already read into `buf`.
    pub fn with_buffer(stream: S, buf: BytesMut) -> Peer<S> {
        Peer {
            stream,
            buf,
            limits: PeerLimits::default(),
            gap: GAP,
        }
    }

    /// Use `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: PeerLimits) -> Peer<S> {
        self.limits = limits;
        self
    }

    /// Pause `gap` after each piece [`Peer::send_pieces`] writes (default [`GAP`]).
    pub fn with_gap(mut self, gap: Duration) -> Peer<S> {
        self.gap = gap;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &PeerLimits {
        &self.limits
    }
}

impl<S: AsyncWrite + Unpin> Peer<S> {
    /// Write all of `bytes` and flush.
    ///
    /// Cancel safety: dropping the future may leave `bytes` half written.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Write each piece as its own write, pausing the peer's gap after each so that they
    /// arrive as separate reads (with `TCP_NODELAY` set).
    ///
    /// Cancel safety: dropping the future may leave a piece half written.
    pub async fn send_pieces<P: AsRef<[u8]>>(&mut self, pieces: &[P]) -> io::Result<()> {
        for p in pieces {
            self.send(p.as_ref()).await?;
            tokio::time::sleep(self.gap).await;
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> Peer<S> {
    /// Read once more into the buffer; `Ok(0)` at end of stream.
    ///
    /// Cancel safety: cancel safe (bytes are only ever added to `buf` whole).
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_MIN_SPARE {
            self.buf.reserve(READ_RESERVE);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Read once more into the buffer where more must come: the connection ending first is an
    /// [`io::ErrorKind::UnexpectedEof`] error saying it closed inside `what`.
    ///
    /// Cancel safety: cancel safe.
    pub async fn read_more_inside(&mut self, what: &str) -> io::Result<usize> {
        match self.read_more().await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed inside {what}"),
            )),
            n => Ok(n),
        }
    }

    /// Read the next head of `kind`, hand it to `inspect` while it borrows the buffer, then
    /// consume it. `Ok(None)` when the connection closed before any byte of a head; closing
    /// inside a head is [`io::ErrorKind::UnexpectedEof`], an invalid head an
    /// [`io::ErrorKind::InvalidData`] error holding a [`HeadError`] (see [`HeadError::of`]).
    /// Allocates nothing beyond what `inspect` does.
    ///
    /// Cancel safety: cancel safe (the head stays in `buf` until it is complete).
    pub async fn next_head_with<T>(
        &mut self,
        kind: HeadKind,
        mut inspect: impl FnMut(&HeadView<'_, '_>) -> T,
    ) -> io::Result<Option<T>> {
        loop {
            if !self.buf.is_empty() {
                let parsed =
                    parse_head_with(&self.buf, kind, &self.limits, |v| (v.len, inspect(v)))?;
                if let Some((len, out)) = parsed {
                    self.buf.advance(len);
                    return Ok(Some(out));
                }
            }
            if self.read_more().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a complete head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    async fn head(&mut self, kind: HeadKind) -> io::Result<Head> {
        self.next_head_with(kind, |v| v.to_head())
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a head"))
    }

    /// Read a request head.
    ///
    /// Cancel safety: cancel safe.
    pub async fn request_head(&mut self) -> io::Result<Head> {
        self.head(HeadKind::Request).await
    }

    /// Read the next response head, interim (1xx) responses included.
    ///
    /// Cancel safety: cancel safe.
    pub async fn response_head(&mut self) -> io::Result<Head> {
        self.head(HeadKind::Response).await
    }

    /// Read response heads until a final one (not [`is_interim`]) and hand that one to
    /// `inspect`; closing before it is [`io::ErrorKind::UnexpectedEof`].
    ///
    /// Cancel safety: cancel safe between heads; an interim head already skipped stays skipped.
    pub async fn final_head_with<T>(
        &mut self,
        mut inspect: impl FnMut(&HeadView<'_, '_>) -> T,
    ) -> io::Result<T> {
        loop {
            let next = self
                .next_head_with(HeadKind::Response, |v| {
                    (!is_interim(v.status)).then(|| inspect(v))
                })
                .await?;
            match next {
                Some(Some(out)) => return Ok(out),
                Some(None) => {}
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before a response head",
                    ))
                }
            }
        }
    }

    /// Read a chunked body strictly (see [`ChunkedBody`]); `on_chunk` is called with each
    /// chunk's index the moment it is complete. The end of the body, whatever it was, is
    /// recorded in [`ChunkedBody::end`], never returned as an error.
    ///
    /// Cancel safety: not cancel safe (chunks read so far are lost with the future).
    pub async fn chunked_body_with(
        &mut self,
        mut on_chunk: impl FnMut(usize, &Bytes),
    ) -> ChunkedBody {
        let max = self.limits.max_body_bytes;
        let mut dec = ChunkedDecoder::new(Limits::default().max_chunk_size(max as u64));
        let buffered = self.buf.len();
        let mut body = ChunkedBody {
            chunks: Vec::new(),
            chunk_reads: Vec::new(),
            trailers: Vec::new(),
            end: BodyEnd::Cut,
            raw: self.buf.to_vec(),
            reads: usize::from(buffered > 0),
        };
        // Body offsets at which each read ended, and the first that may end inside the next
        // chunk: a chunk arrived in one read more than the read ends strictly inside it.
        let mut read_ends: Vec<u64> = Vec::new();
        if buffered > 0 {
            read_ends.push(buffered as u64);
        }
        let mut next_end = 0;
        let mut chunk_start = 0u64;
        let mut received = buffered as u64;
        let mut total = 0usize;
        loop {
            match dec.decode(&mut self.buf) {
                Ok(Some(Frame::Data(d))) => {
                    let end = dec.consumed();
                    let mut inner = 0u32;
                    while let Some(&r) = read_ends.get(next_end).filter(|&&r| r <= end) {
                        inner += u32::from(r > chunk_start && r < end);
                        next_end += 1;
                    }
                    chunk_start = end;
                    on_chunk(body.chunks.len(), &d);
                    total = total.saturating_add(d.len());
                    body.chunks.push(d);
                    body.chunk_reads.push(inner.saturating_add(1));
                    if total > max {
                        body.end = BodyEnd::TooLarge;
                        break;
                    }
                    continue;
                }
                Ok(Some(Frame::Trailers(t))) => {
                    body.trailers = t
                        .into_iter()
                        .map(|f| (f.name.to_vec(), f.value.to_vec()))
                        .collect();
                    continue;
                }
                Ok(Some(Frame::End)) => {
                    body.end = BodyEnd::Complete;
                    break;
                }
                Ok(None) => {}
                Err(e) if e.is_too_large() => {
                    body.end = BodyEnd::TooLarge;
                    break;
                }
                Err(e) => {
                    body.end = BodyEnd::Malformed(e);
                    break;
                }
            }
            let before = self.buf.len();
            match self.read_more().await {
                Ok(0) => {
                    body.end = BodyEnd::Cut;
                    break;
                }
                Ok(n) => {
                    body.raw.extend_from_slice(&self.buf[before..]);
                    received += n as u64;
                    read_ends.push(received);
                    body.reads += 1;
                }
                Err(e) => {
                    body.end = BodyEnd::Reset(e.kind());
                    break;
                }
            }
        }
        // `raw` holds every byte offered to the decoder; what it left in `buf` is not body.
        let consumed = body.raw.len() - self.buf.len();
        body.raw.truncate(consumed);
        body
    }

    /// Read a chunked body strictly (see [`Peer::chunked_body_with`]).
    ///
    /// Cancel safety: not cancel safe.
    pub async fn chunked_body(&mut self) -> ChunkedBody {
        self.chunked_body_with(|_, _| {}).await
    }

    /// Read `n` body bytes, or as many as came before the connection ended.
    async fn length_read(&mut self, n: usize) -> BodyRead {
        let mut reads = usize::from(!self.buf.is_empty());
        let mut end = BodyEnd::Complete;
        while self.buf.len() < n {
            match self.read_more().await {
                Ok(0) => {
                    end = BodyEnd::Cut;
                    break;
                }
                Ok(_) => reads += 1,
                Err(e) => {
                    end = BodyEnd::Reset(e.kind());
                    break;
                }
            }
        }
        let body = self.buf.split_to(n.min(self.buf.len())).to_vec();
        BodyRead { body, end, reads }
    }

    /// Read exactly `n` body bytes; the connection ending first is an error.
    ///
    /// Cancel safety: cancel safe (the bytes stay in `buf` until all have arrived).
    pub async fn length_body(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let read = self.length_read(n).await;
        match read.end {
            BodyEnd::Complete => Ok(read.body),
            BodyEnd::Reset(kind) => Err(io::Error::new(
                kind,
                format!("failed after {} of {n} body bytes", read.body.len()),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {} of {n} body bytes", read.body.len()),
            )),
        }
    }

    /// Read until the connection ends (closed: [`BodyEnd::Complete`]; failed:
    /// [`BodyEnd::Reset`]) or the body passes the limit ([`BodyEnd::TooLarge`]).
    async fn close_read(&mut self) -> BodyRead {
        let mut reads = usize::from(!self.buf.is_empty());
        let end = loop {
            if self.buf.len() > self.limits.max_body_bytes {
                break BodyEnd::TooLarge;
            }
            match self.read_more().await {
                Ok(0) => break BodyEnd::Complete,
                Ok(_) => reads += 1,
                Err(e) => break BodyEnd::Reset(e.kind()),
            }
        };
        BodyRead {
            body: self.buf.split().to_vec(),
            end,
            reads,
        }
    }

    /// Read everything until the peer closes the connection or it fails, up to the body limit.
    ///
    /// Cancel safety: cancel safe (the bytes stay in `buf` until the end).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        self.close_read().await.body
    }

    /// Read the body of a response with `head` to a `method` request.
    async fn response_body(&mut self, head: Head, method: &str) -> io::Result<RawResponse> {
        let framing = head.response_framing(method)?;
        let max = self.limits.max_body_bytes;
        let too_large =
            move || io::Error::new(io::ErrorKind::InvalidData, format!("body over {max} bytes"));
        let (read, chunked) = match framing {
            Framing::None => (
                BodyRead {
                    body: Vec::new(),
                    end: BodyEnd::Complete,
                    reads: 0,
                },
                None,
            ),
            Framing::Chunked => {
                let c = self.chunked_body().await;
                let read = BodyRead {
                    body: c.payload(),
                    end: c.end.clone(),
                    reads: c.reads,
                };
                (read, Some(c))
            }
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n <= max)
                    .ok_or_else(too_large)?;
                let read = self.length_read(n).await;
                if read.end != BodyEnd::Complete {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body ended after {} of {n} bytes", read.body.len()),
                    ));
                }
                (read, None)
            }
            Framing::Close => {
                let read = self.close_read().await;
                if read.end == BodyEnd::TooLarge {
                    return Err(too_large());
                }
                (read, None)
            }
        };
        Ok(RawResponse {
            head,
            framing,
            body: read.body,
            chunked,
            end: read.end,
            body_reads: read.reads,
        })
    }

    /// Read the next whole response to a `method` request, interim responses included (they
    /// come without a body): the head, then the body as its framing says. A chunked body is
    /// recorded whatever its end ([`RawResponse::end`]); a `Content-Length` body that ends
    /// early and invalid framing are errors; a body delimited by close ends at close or reset.
    ///
    /// Cancel safety: not cancel safe.
    pub async fn response(&mut self, method: &str) -> io::Result<RawResponse> {
        let head = self.response_head().await?;
        self.response_body(head, method).await
    }

    /// Like [`Peer::response`], but skip interim responses.
    ///
    /// Cancel safety: not cancel safe.
    pub async fn final_response(&mut self, method: &str) -> io::Result<RawResponse> {
        let head = self.final_head_with(|v| v.to_head()).await?;
        self.response_body(head, method).await
    }

    /// Read one whole request: head and body (a chunked body recorded chunk by chunk, a
    /// `Content-Length` body in full). `Ok(None)` when the connection closed cleanly before a
    /// head; invalid framing is an error.
    ///
    /// Cancel safety: not cancel safe.
    pub async fn request(&mut self) -> io::Result<Option<RawRequest>> {
        let Some(head) = self
            .next_head_with(HeadKind::Request, |v| v.to_head())
            .await?
        else {
            return Ok(None);
        };
        let (body, chunked) = match head.request_framing()? {
            Framing::Chunked => {
                let c = self.chunked_body().await;
                (c.payload(), Some(c))
            }
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "huge body"))?;
                (self.length_body(n).await?, None)
            }
            Framing::None | Framing::Close => (Vec::new(), None),
        };
        Ok(Some(RawRequest {
            head,
            body,
            chunked,
        }))
    }

    /// Wait up to `limit` for the peer to close: true on end of stream or reset with nothing
    /// more received, false if bytes arrived (they are kept) or the connection stayed open.
    ///
    /// Cancel safety: cancel safe.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        matches!(
            tokio::time::timeout(limit, self.read_more()).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Wait for the peer to close and return how long that took (`None` if it sent bytes or
    /// did not close within `limit`).
    ///
    /// Cancel safety: cancel safe.
    pub async fn time_to_close(&mut self, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        self.closes_within(limit).await.then(|| t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], kind: HeadKind) -> Result<Option<Head>, HeadError> {
        parse_head_with(raw, kind, &PeerLimits::default(), |v| v.to_head())
    }

    fn response(raw: &[u8]) -> Head {
        parse(raw, HeadKind::Response).unwrap().unwrap()
    }

    /// A peer reading `parts`, written 2 ms apart.
    fn peer_reading(parts: Vec<&'static [u8]>) -> Peer<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            for p in parts {
                server.write_all(p).await.unwrap();
                server.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Peer::new(client)
    }

    #[test]
    fn parse_head_needs_the_blank_line() {
        let raw = b"GET /v1/models?x=1 HTTP/1.0\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\n\r\nbody";
        for cut in 0..raw.len() - 4 {
            assert_eq!(
                parse(&raw[..cut], HeadKind::Request),
                Ok(None),
                "cut at {cut}"
            );
        }
        let head = parse(raw, HeadKind::Request).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/v1/models?x=1");
        assert_eq!((head.status, head.minor), (0, 0));
        assert_eq!(head.raw, &raw[..raw.len() - 4]);
        assert_eq!(head.count("X-TWO"), 2);
        assert_eq!(head.get("x-two"), Some("1"));
        assert_eq!(head.headers[2].0, "x-two", "names as received");
    }

    #[test]
    fn parse_head_refuses_bare_lf_and_oversize() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nA: b\n\r\n", HeadKind::Response),
            Err(HeadError::BareLf { offset: 21 })
        );
        assert_eq!(
            parse(b"\r\nGET / HTTP/1.1\r\n\r\n", HeadKind::Request),
            Err(HeadError::EmptyLineFirst)
        );
        let limits = PeerLimits::default().max_head_bytes(32).max_headers(2);
        let refusal = |raw: &[u8], limits: &PeerLimits| {
            parse_head_with(raw, HeadKind::Response, limits, |_| ()).err()
        };
        let long = b"HTTP/1.1 200 OK\r\nA: 0123456789abcdef\r\n";
        assert_eq!(
            refusal(long, &limits),
            Some(HeadError::TooLarge { limit: 32 }),
            "incomplete but already too long"
        );
        let three = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            refusal(three, &limits.max_head_bytes(64)),
            Some(HeadError::TooManyHeaders { limit: 2 })
        );
        let mut two = [httparse::EMPTY_HEADER; 2];
        assert_eq!(
            parse_head(three, HeadKind::Response, &PeerLimits::default(), &mut two).err(),
            Some(HeadError::TooManyHeaders { limit: 2 }),
            "the caller's array is a limit too"
        );
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", HeadKind::Request),
            Err(HeadError::Invalid(_))
        ));
    }

    #[test]
    fn framing_is_strict() {
        let req = |raw: &[u8]| {
            parse(raw, HeadKind::Request)
                .unwrap()
                .unwrap()
                .request_framing()
        };
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            req(b"POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n"),
            Ok(Framing::Length(7))
        );
        assert_eq!(req(b"GET / HTTP/1.1\r\n\r\n"), Ok(Framing::None));
        for (raw, err) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                FramingError::LengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                FramingError::SeveralLengths,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                FramingError::InvalidLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
                FramingError::InvalidLength,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                FramingError::InvalidLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                FramingError::UnsupportedCoding,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                FramingError::SeveralCodings,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                FramingError::CodingOnHttp10,
            ),
        ] {
            assert_eq!(req(raw), Err(err), "{}", String::from_utf8_lossy(raw));
        }
        let resp = response(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(resp.response_framing("GET"), Ok(Framing::Close));
        for (te, framing) in [
            ("gzip, chunked", Framing::Chunked),
            ("gzip\r\nTransfer-Encoding: chunked", Framing::Chunked),
            ("chunked, deflate", Framing::Close),
            ("chunked\r\nTransfer-Encoding: gzip", Framing::Close),
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                response(raw.as_bytes()).response_framing("GET"),
                Ok(framing),
                "{te:?}"
            );
        }
        assert_eq!(resp.response_framing("HEAD"), Ok(Framing::None));
        for status in ["100 Continue", "204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(
                response(raw.as_bytes()).response_framing("GET"),
                Ok(Framing::None)
            );
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |raw: &[u8]| response(raw).keep_alive();
        assert!(ka(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(ka(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
        assert!(response(b"HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\n\r\n").says_close());
    }

    #[tokio::test]
    async fn chunked_body_records_chunks_and_their_reads() {
        let mut peer = peer_reading(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde",
            b"fgh\r\n2\r\nij\r\n",
            b"0\r\nX-Sum: 9\r\n\r\nHTTP/1.1",
        ]);
        let r = peer.response("GET").await.unwrap();
        assert_eq!(r.head.status, 200);
        assert_eq!(r.end, BodyEnd::Complete);
        assert_eq!(r.framing, Framing::Chunked);
        let c = r.chunked.as_ref().unwrap();
        let got: Vec<(&[u8], u32)> = c
            .chunks
            .iter()
            .zip(&c.chunk_reads)
            .map(|(p, &n)| (&p[..], n))
            .collect();
        assert_eq!(got, [(&b"abc"[..], 1), (b"defgh", 2), (b"ij", 1)]);
        assert_eq!(r.split_chunks(), 1);
        assert_eq!(r.body, b"abcdefghij");
        assert_eq!(r.body_reads, 3);
        assert_eq!(c.trailers, [(b"X-Sum".to_vec(), b"9".to_vec())]);
        assert_eq!(
            c.raw,
            c.canonical_wire(),
            "{:?}",
            String::from_utf8_lossy(&c.raw)
        );
        assert_eq!(
            &peer.buf[..],
            b"HTTP/1.1",
            "bytes after the body stay buffered"
        );
    }

    #[tokio::test]
    async fn chunked_body_reports_cut_and_malformed_bodies() {
        let mut peer = peer_reading(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ]);
        let r = peer.response("GET").await.unwrap();
        assert_eq!(r.end, BodyEnd::Cut);
        assert_eq!(r.chunks().len(), 1);
        let mut peer = peer_reading(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        ]);
        let r = peer.response("GET").await.unwrap();
        assert!(matches!(r.end, BodyEnd::Malformed(_)), "{:?}", r.end);
        let limits = PeerLimits::default().max_body_bytes(4);
        let mut peer = peer_reading(vec![b"5\r\nhello\r\n"]).with_limits(limits);
        assert_eq!(
            peer.chunked_body().await.end,
            BodyEnd::TooLarge,
            "one chunk"
        );
        let mut peer = peer_reading(vec![b"3\r\nabc\r\n3\r\ndef\r\n"]).with_limits(limits);
        let body = peer.chunked_body().await;
        assert_eq!(body.end, BodyEnd::TooLarge, "the body");
        assert_eq!(body.chunks.len(), 2);
    }

    #[tokio::test]
    async fn final_response_skips_interim_answers() {
        let mut peer = peer_reading(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel",
            b"lo",
        ]);
        let r = peer.final_response("POST").await.unwrap();
        assert_eq!(r.head.status, 200);
        assert_eq!(r.framing, Framing::Length(5));
        assert_eq!(r.body, b"hello");
        assert_eq!(r.body_reads, 2);
        let mut peer = peer_reading(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ]);
        assert_eq!(peer.response("POST").await.unwrap().head.status, 100);
        assert_eq!(peer.response("POST").await.unwrap().head.status, 204);
    }

    #[tokio::test]
    async fn length_and_close_bodies_report_early_ends() {
        let mut peer = peer_reading(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"]);
        let e = peer.response("GET").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let mut peer = peer_reading(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"close"]);
        let r = peer.response("GET").await.unwrap();
        assert_eq!(
            (r.framing, &r.body[..]),
            (Framing::Close, &b"until close"[..])
        );
        let mut peer = peer_reading(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n"]);
        let e = peer.response("GET").await.unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::UnexpectedEof,
            "closed inside the head"
        );
    }

    #[tokio::test]
    async fn request_reads_head_and_body_and_sees_a_clean_close() {
        let mut peer = peer_reading(vec![
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        ]);
        let one = peer.request().await.unwrap().unwrap();
        assert_eq!(
            (one.head.target.as_str(), &one.body[..]),
            ("/up", &b"abc"[..])
        );
        assert!(one.chunked.is_none());
        let two = peer.request().await.unwrap().unwrap();
        assert!(two.chunked.unwrap().is_complete());
        assert!(peer.request().await.unwrap().is_none());
        let mut peer = peer_reading(vec![b"GET / HTTP/1.1\r\nA\n\r\n"]);
        let e = peer.request().await.unwrap_err();
        assert!(HeadError::of(&e).is_some(), "{e}");
    }
}
