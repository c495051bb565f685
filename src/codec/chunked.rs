//! The chunked transfer coding (RFC 9112 §7.1): a decoder that yields only whole chunks, and an
//! encoder that writes them back out without copying their payload.
//!
//! # Contract
//! [`ChunkedDecoder`] turns the bytes of a chunked body, however they were split into reads,
//! into the same sequence of [`Frame`]s: one [`Frame::Data`] per non-empty chunk, holding the
//! whole payload (split off the read buffer, never copied), then [`Frame::Trailers`] if the body
//! carried a trailer section, then [`Frame::End`]. It never yields part of a chunk. Bytes after
//! the body's final CRLF are left in the buffer untouched (they belong to the next message).
//!
//! Chunk extensions are parsed and validated, then dropped: chunkgate does not forward them.
//!
//! The grammar is applied strictly (see `PROTOCOL.md` in the project notes and the README):
//! `1*HEXDIG` sizes with at most 16 significant digits, no sign, `0x`, or spaces inside, CRLF
//! everywhere (a bare LF or bare CR is an error), exactly CRLF after every payload, and trailer
//! fields validated like header fields. Every size the peer controls is capped by [`Limits`].
//!
//! # Decisions
//! - **Leading zeros** are allowed (`1*HEXDIG`) but bounded: a size's digits, leading zeros
//!   included, are at most [`Limits::max_size_digits`] (64 by default). Without that bound a
//!   peer could pad every one-byte chunk with thousands of zeros (each size line stays under
//!   [`Limits::max_size_line`]) and make the reader buffer and scan kilobytes of framing per
//!   payload byte. 64 is four times the 16 significant digits a size can have; real senders
//!   use at most 16 (fixed-width sizes).
//! - **Extensions** are bounded per line by the size-line limit and over the whole body by
//!   [`Limits::max_extension_bytes`], which is what bounds a body of many small chunks that
//!   each carry extensions. (A chunk of size zero is always the last chunk: there are no empty
//!   chunks in the middle of a body to carry them.)
//! - **Trailers** may repeat a field name (two `Set-Cookie`, two `X-Usage` fields): each is
//!   kept, in order, as received. Fields that describe framing, routing, the request's
//!   credentials, content format or connection handling are refused in a trailer (see
//!   [`DecodeErrorKind::ForbiddenTrailer`]); `Set-Cookie` is not among them: an upstream may
//!   send it in a trailer as it may in the head, and trailers are never merged into the head.
//!
//! # Work
//! The decoder is resumable: every byte of a size line, extension or trailer is examined once,
//! whatever the reads look like, and a payload is never scanned at all (only its length is
//! compared with the buffer). A chunk arriving one byte per read costs O(n), never O(n²). When
//! a chunk's size is known the decoder reserves room for the rest of it in the read buffer.
//! The common case, a chunk already wholly buffered whose size line is only hex digits, is
//! checked and split off the buffer in one step, without the byte-by-byte state machine.
//!
//! ```
//! use bytes::BytesMut;
//! use chunkgate::codec::chunked::{ChunkedDecoder, Frame, Limits};
//! use tokio_util::codec::Decoder;
//!
//! let mut dec = ChunkedDecoder::new(Limits::default());
//! let mut buf = BytesMut::from(&b"3\r\nabc\r\n5\r\nde"[..]);
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Data("abc".into())));
//! assert_eq!(dec.decode(&mut buf).unwrap(), None); // `defgh` is not whole yet
//! buf.extend_from_slice(b"fgh\r\n0\r\n\r\n");
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Data("defgh".into())));
//! assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::End));
//! ```

use std::fmt;

use crate::codec::ByteDisplay;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Limits on everything a peer controls in a chunked body.
///
/// Build with [`Limits::default`] and the setters; every limit has a bounded default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_chunk_size: u64,
    max_size_line: usize,
    max_size_digits: usize,
    max_extension_bytes: u64,
    max_trailer_bytes: usize,
    max_trailer_fields: usize,
    max_body_size: Option<u64>,
}

impl Limits {
    /// Default largest chunk payload: 1 MiB.
    pub const DEFAULT_MAX_CHUNK_SIZE: u64 = 1 << 20;
    /// Default longest size line, extensions included, CRLF excluded: 4 KiB.
    pub const DEFAULT_MAX_SIZE_LINE: usize = 4 << 10;
    /// Default most digits in a chunk size, leading zeros included: 64.
    pub const DEFAULT_MAX_SIZE_DIGITS: usize = 64;
    /// Default total extension bytes over one body: 16 KiB.
    pub const DEFAULT_MAX_EXTENSION_BYTES: u64 = 16 << 10;
    /// Default largest trailer section, final CRLF included: 16 KiB.
    pub const DEFAULT_MAX_TRAILER_BYTES: usize = 16 << 10;
    /// Default most trailer fields: 32.
    pub const DEFAULT_MAX_TRAILER_FIELDS: usize = 32;

    /// Largest chunk payload accepted, in bytes (default [`Self::DEFAULT_MAX_CHUNK_SIZE`]).
    /// A larger declared size is refused as soon as its size digits are read, before any of
    /// its payload is buffered, with [`DecodeErrorKind::ChunkTooLarge`]. Values above
    /// `isize::MAX` are clamped so a chunk always fits a buffer.
    pub fn max_chunk_size(mut self, bytes: u64) -> Self {
        self.max_chunk_size = bytes.min(isize::MAX as u64 - 2);
        self
    }

    /// Longest size line, size digits and extensions included, CRLF excluded (default
    /// [`Self::DEFAULT_MAX_SIZE_LINE`]). Past it: [`DecodeErrorKind::SizeLineTooLong`].
    pub fn max_size_line(mut self, bytes: usize) -> Self {
        self.max_size_line = bytes;
        self
    }

    /// Most hex digits in a chunk size, leading zeros included (default
    /// [`Self::DEFAULT_MAX_SIZE_DIGITS`]). Past it: [`DecodeErrorKind::TooManySizeDigits`],
    /// raised at the first digit over the limit. At most 16 of the digits may be significant
    /// whatever this limit ([`DecodeErrorKind::SizeOverflow`]).
    pub fn max_size_digits(mut self, digits: usize) -> Self {
        self.max_size_digits = digits;
        self
    }

    /// Total bytes of chunk extensions (everything after the size digits on size lines)
    /// summed over the whole body (default [`Self::DEFAULT_MAX_EXTENSION_BYTES`]). This stops a
    /// stream of empty-payload chunks with long extensions from burning CPU for free.
    /// Past it: [`DecodeErrorKind::ExtensionsTooLarge`].
    pub fn max_extension_bytes(mut self, bytes: u64) -> Self {
        self.max_extension_bytes = bytes;
        self
    }

    /// Largest trailer section in bytes, its final CRLF included (default
    /// [`Self::DEFAULT_MAX_TRAILER_BYTES`]). Past it: [`DecodeErrorKind::TrailersTooLarge`].
    pub fn max_trailer_bytes(mut self, bytes: usize) -> Self {
        self.max_trailer_bytes = bytes;
        self
    }

    /// Most trailer fields (default [`Self::DEFAULT_MAX_TRAILER_FIELDS`]).
    /// Past it: [`DecodeErrorKind::TooManyTrailers`].
    pub fn max_trailer_fields(mut self, fields: usize) -> Self {
        self.max_trailer_fields = fields;
        self
    }

    /// Largest total payload of one body, or `None` for no cap (the default).
    /// Past it: [`DecodeErrorKind::BodyTooLarge`], raised when the size line that crosses it is read.
    pub fn max_body_size(mut self, bytes: Option<u64>) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// See [`Limits::max_chunk_size`].
    pub fn chunk_size_limit(&self) -> u64 {
        self.max_chunk_size
    }
    /// See [`Limits::max_size_line`].
    pub fn size_line_limit(&self) -> usize {
        self.max_size_line
    }
    /// See [`Limits::max_size_digits`].
    pub fn size_digits_limit(&self) -> usize {
        self.max_size_digits
    }
    /// See [`Limits::max_extension_bytes`].
    pub fn extension_bytes_limit(&self) -> u64 {
        self.max_extension_bytes
    }
    /// See [`Limits::max_trailer_bytes`].
    pub fn trailer_bytes_limit(&self) -> usize {
        self.max_trailer_bytes
    }
    /// See [`Limits::max_trailer_fields`].
    pub fn trailer_fields_limit(&self) -> usize {
        self.max_trailer_fields
    }
    /// See [`Limits::max_body_size`].
    pub fn body_size_limit(&self) -> Option<u64> {
        self.max_body_size
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk_size: Self::DEFAULT_MAX_CHUNK_SIZE,
            max_size_line: Self::DEFAULT_MAX_SIZE_LINE,
            max_size_digits: Self::DEFAULT_MAX_SIZE_DIGITS,
            max_extension_bytes: Self::DEFAULT_MAX_EXTENSION_BYTES,
            max_trailer_bytes: Self::DEFAULT_MAX_TRAILER_BYTES,
            max_trailer_fields: Self::DEFAULT_MAX_TRAILER_FIELDS,
            max_body_size: None,
        }
    }
}

/// One trailer field, sliced out of the received trailer section without copying.
/// The value has its surrounding whitespace removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Bytes,
    pub value: Bytes,
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The whole payload of one non-empty chunk.
    Data(Bytes),
    /// The trailer section (only when it holds at least one field), before [`Frame::End`].
    Trailers(Vec<Field>),
    /// The body ended cleanly: last chunk, trailers and final CRLF all received.
    End,
}

/// What was wrong, without where. Compare kinds in tests; see [`DecodeError`] for the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The size line does not start with a hex digit (empty size, sign, space, `0x` ...).
    MissingSize { found: u8 },
    /// A byte that is neither a hex digit nor the start of an extension or the line end.
    InvalidSizeByte { found: u8 },
    /// More than 16 significant hex digits.
    SizeOverflow,
    /// More hex digits in a size, leading zeros included, than [`Limits::max_size_digits`].
    TooManySizeDigits { limit: usize },
    /// The declared chunk size is over [`Limits::max_chunk_size`].
    ChunkTooLarge { size: u64, limit: u64 },
    /// The body's payload would exceed [`Limits::max_body_size`].
    BodyTooLarge { limit: u64 },
    /// The size line is longer than [`Limits::max_size_line`].
    SizeLineTooLong { limit: usize },
    /// A chunk extension breaks `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
    InvalidExtension { found: u8 },
    /// Extension bytes over the body exceed [`Limits::max_extension_bytes`].
    ExtensionsTooLarge { limit: u64 },
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// The two bytes after a chunk's payload are not CRLF.
    MissingDataCrlf { found: u8 },
    /// A trailer line is not a valid field (`token ":" OWS value OWS`), or is obs-fold.
    InvalidTrailer { found: u8 },
    /// A trailer names a field that must not be in a trailer (framing, routing, hop-by-hop).
    ForbiddenTrailer,
    /// The trailer section is longer than [`Limits::max_trailer_bytes`].
    TrailersTooLarge { limit: usize },
    /// More trailer fields than [`Limits::max_trailer_fields`].
    TooManyTrailers { limit: usize },
    /// The input ended before the body's final CRLF.
    UnexpectedEof,
    /// The transport failed.
    Io(io::ErrorKind),
}

/// A chunked-body error: what went wrong and the byte offset into the body where it was seen.
///
/// Decode errors are terminal: the body and the connection it came on cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: u64,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, offset: u64) -> Self {
        DecodeError { kind, offset }
    }
    /// What was wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }
    /// Offset from the first byte of the body to the byte where the fault was seen.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// True for a limit being exceeded (HTTP 413 on a request), false for malformed input.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::ChunkTooLarge { .. } | DecodeErrorKind::BodyTooLarge { .. }
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        let at = self.offset;
        match self.kind {
            MissingSize { found } => write!(
                f,
                "invalid chunk size line at byte {at}: expected a hex digit, found {}",
                ByteDisplay(found)
            ),
            InvalidSizeByte { found } => write!(
                f,
                "invalid chunk size line at byte {at}: non-hex digit {}",
                ByteDisplay(found)
            ),
            SizeOverflow => write!(
                f,
                "invalid chunk size line at byte {at}: size over 16 hex digits (overflow)"
            ),
            TooManySizeDigits { limit } => write!(
                f,
                "invalid chunk size line at byte {at}: more than {limit} hex digits, leading zeros included"
            ),
            ChunkTooLarge { size, limit } => write!(
                f,
                "chunk too large at byte {at}: {size} bytes declared, limit {limit}"
            ),
            BodyTooLarge { limit } => {
                write!(f, "body too large at byte {at}: over the {limit}-byte limit")
            }
            SizeLineTooLong { limit } => write!(
                f,
                "chunk size line too long at byte {at}: over the {limit}-byte limit"
            ),
            InvalidExtension { found } => write!(
                f,
                "invalid chunk extension at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            ExtensionsTooLarge { limit } => write!(
                f,
                "chunk extensions too large at byte {at}: over the {limit}-byte limit per body"
            ),
            BareLf => write!(f, "invalid line ending at byte {at}: bare LF"),
            BareCr => write!(f, "invalid line ending at byte {at}: CR not followed by LF"),
            MissingDataCrlf { found } => write!(
                f,
                "missing CRLF after chunk data at byte {at}: found {}",
                ByteDisplay(found)
            ),
            InvalidTrailer { found } => write!(
                f,
                "invalid trailer field at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            ForbiddenTrailer => write!(
                f,
                "forbidden trailer field at byte {at}: framing, routing and hop-by-hop fields are not allowed in trailers"
            ),
            TrailersTooLarge { limit } => write!(
                f,
                "trailer section too large at byte {at}: over the {limit}-byte limit"
            ),
            TooManyTrailers { limit } => write!(
                f,
                "too many trailer fields at byte {at}: over the limit of {limit}"
            ),
            UnexpectedEof => write!(
                f,
                "unexpected end of input at byte {at}: the chunked body did not finish"
            ),
            Io(kind) => write!(f, "i/o error at byte {at}: {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::new(DecodeErrorKind::Io(e.kind()), 0)
    }
}

/// Where in a size line the decoder is. Each stage names what is expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// First hex digit of the size.
    FirstDigit,
    /// More hex digits, `;`, BWS before `;`, or CR.
    Digits,
    /// BWS after the size: more whitespace or `;`.
    WsBeforeSemi,
    /// BWS after `;`, then the first byte of an extension name.
    ExtNameStart,
    /// More name bytes, BWS, `=`, `;` or CR.
    ExtName,
    /// BWS after a name: `=` or `;`.
    ExtAfterName,
    /// BWS after `=`, then a token or a quoted string.
    ExtValueStart,
    /// More token bytes, BWS, `;` or CR.
    ExtToken,
    /// Inside a quoted string.
    ExtQuoted,
    /// The byte after a backslash in a quoted string.
    ExtQuotedPair,
    /// Just after a value: BWS, `;` or CR.
    ExtAfterValue,
    /// BWS after a value: more whitespace or `;`.
    ExtWs,
    /// LF after the CR that ends the line.
    Lf,
}

/// What the decoder expects next.
///
/// ```text
///  SizeLine ──(size > 0)──► Data ──► SizeLine ...
///     │
///     └──(size = 0)──► Trailers ──► [EndPending] ──► Done
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A size line (digits, extensions, CRLF); its bytes are consumed as they are checked.
    SizeLine {
        line: Line,
        size: u64,
        /// Significant digits seen (leading zeros do not count).
        digits: u8,
        /// Bytes of this line consumed so far, CRLF excluded.
        len: usize,
    },
    /// A payload of `size` bytes and its CRLF; nothing is consumed until all of it is buffered.
    Data { size: usize },
    /// The trailer section. Its bytes stay in the buffer until the section ends;
    /// `scanned` bytes of it have been checked, `line_start` is where the current line began.
    Trailers {
        scanned: usize,
        line_start: usize,
        fields: usize,
    },
    /// Trailers were yielded; [`Frame::End`] is next.
    EndPending,
    /// The body is complete.
    Done,
}

const INITIAL_SIZE_LINE: State = State::SizeLine {
    line: Line::FirstDigit,
    size: 0,
    digits: 0,
    len: 0,
};

/// Decoder of a chunked body into whole chunks. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    limits: Limits,
    /// Body bytes consumed from the buffer so far (the offset of `buf[0]` in the body).
    consumed: u64,
    /// Payload bytes announced so far.
    body_len: u64,
    /// Extension bytes seen so far.
    ext_len: u64,
    /// Trailer field spans `(name, value)` relative to the section start.
    trailer_spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// Whether the chunk under way needed more than one decode call (was split by the reads).
    waited: bool,
    chunks: u64,
    reassembled: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new(Limits::default())
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new(limits: Limits) -> Self {
        ChunkedDecoder {
            state: INITIAL_SIZE_LINE,
            limits,
            consumed: 0,
            body_len: 0,
            ext_len: 0,
            trailer_spans: Vec::new(),
            waited: false,
            chunks: 0,
            reassembled: 0,
        }
    }

    /// Make the decoder ready for a new body with the same limits (keeps its allocations).
    pub fn reset(&mut self) {
        self.state = INITIAL_SIZE_LINE;
        self.consumed = 0;
        self.body_len = 0;
        self.ext_len = 0;
        self.trailer_spans.clear();
        self.waited = false;
        self.chunks = 0;
        self.reassembled = 0;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True once [`Frame::End`] has been yielded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the decoder sits exactly between two chunks (no partial chunk buffered state).
    pub fn at_chunk_boundary(&self) -> bool {
        self.state == INITIAL_SIZE_LINE
    }

    /// Body bytes consumed so far (wire bytes, framing included).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Payload bytes yielded or announced so far.
    pub fn payload_len(&self) -> u64 {
        self.body_len
    }

    /// Non-empty chunks yielded so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Chunks that arrived split across reads and had to be reassembled before being yielded.
    pub fn reassembled_chunks(&self) -> u64 {
        self.reassembled
    }

    /// True when no byte of the current size line has been consumed yet (each byte the state
    /// machine consumes moves it past [`Line::FirstDigit`]).
    #[inline]
    fn at_line_start(&self) -> bool {
        matches!(
            self.state,
            State::SizeLine {
                line: Line::FirstDigit,
                ..
            }
        )
    }

    fn err(&self, kind: DecodeErrorKind, index: usize) -> DecodeError {
        DecodeError::new(kind, self.consumed + index as u64)
    }

    fn advance(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.consumed += n as u64;
    }

    /// Read the size line; `Ok(true)` when it is complete (state moved on), `Ok(false)` when
    /// more bytes are needed (all bytes seen so far are consumed and remembered in the state).
    fn size_line(&mut self, buf: &mut BytesMut) -> Result<bool, DecodeError> {
        let State::SizeLine {
            mut line,
            mut size,
            mut digits,
            mut len,
        } = self.state
        else {
            unreachable!("size_line called outside the size-line state")
        };
        let max_line = self.limits.max_size_line;
        let mut i = 0;
        let bytes = &buf[..];
        let mut finished = false;
        while i < bytes.len() {
            let b = bytes[i];
            if line == Line::Lf {
                if b != b'\n' {
                    // The CR was consumed (maybe by an earlier call): it sits just before `i`.
                    let at = self.consumed + i as u64 - 1;
                    return Err(DecodeError::new(DecodeErrorKind::BareCr, at));
                }
                i += 1;
                finished = true;
                break;
            }
            if b == b'\r' {
                let ok = matches!(
                    line,
                    Line::Digits | Line::ExtName | Line::ExtToken | Line::ExtAfterValue
                );
                if !ok {
                    let kind = match line {
                        Line::FirstDigit => DecodeErrorKind::MissingSize { found: b },
                        Line::WsBeforeSemi => DecodeErrorKind::InvalidSizeByte { found: b },
                        _ => DecodeErrorKind::InvalidExtension { found: b },
                    };
                    return Err(self.err(kind, i));
                }
                line = Line::Lf;
                i += 1;
                continue;
            }
            if b == b'\n' {
                return Err(self.err(DecodeErrorKind::BareLf, i));
            }
            len += 1;
            if len > max_line {
                return Err(self.err(DecodeErrorKind::SizeLineTooLong { limit: max_line }, i));
            }
            line = match line {
                Line::FirstDigit | Line::Digits => match hex_value(b) {
                    Some(v) => {
                        // Only digits precede this byte on the line: `len` counts them.
                        if len > self.limits.max_size_digits {
                            let limit = self.limits.max_size_digits;
                            return Err(self.err(DecodeErrorKind::TooManySizeDigits { limit }, i));
                        }
                        if size != 0 || v != 0 {
                            digits += 1;
                            if digits > 16 {
                                return Err(self.err(DecodeErrorKind::SizeOverflow, i));
                            }
                        }
                        size = (size << 4) | u64::from(v);
                        if size > self.limits.max_chunk_size {
                            return Err(self.err(
                                DecodeErrorKind::ChunkTooLarge {
                                    size,
                                    limit: self.limits.max_chunk_size,
                                },
                                i,
                            ));
                        }
                        Line::Digits
                    }
                    None if line == Line::FirstDigit => {
                        return Err(self.err(DecodeErrorKind::MissingSize { found: b }, i))
                    }
                    None => match b {
                        b';' => Line::ExtNameStart,
                        b' ' | b'\t' => Line::WsBeforeSemi,
                        _ => return Err(self.err(DecodeErrorKind::InvalidSizeByte { found: b }, i)),
                    },
                },
                Line::WsBeforeSemi => match b {
                    b' ' | b'\t' => Line::WsBeforeSemi,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidSizeByte { found: b }, i)),
                },
                Line::ExtNameStart => match b {
                    b' ' | b'\t' => Line::ExtNameStart,
                    _ if is_tchar(b) => Line::ExtName,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtName => match b {
                    _ if is_tchar(b) => Line::ExtName,
                    b' ' | b'\t' => Line::ExtAfterName,
                    b'=' => Line::ExtValueStart,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtAfterName => match b {
                    b' ' | b'\t' => Line::ExtAfterName,
                    b'=' => Line::ExtValueStart,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtValueStart => match b {
                    b' ' | b'\t' => Line::ExtValueStart,
                    b'"' => Line::ExtQuoted,
                    _ if is_tchar(b) => Line::ExtToken,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtToken => match b {
                    _ if is_tchar(b) => Line::ExtToken,
                    b' ' | b'\t' => Line::ExtWs,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtQuoted => match b {
                    b'"' => Line::ExtAfterValue,
                    b'\\' => Line::ExtQuotedPair,
                    b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => {
                        Line::ExtQuoted
                    }
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtQuotedPair => match b {
                    b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => Line::ExtQuoted,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtAfterValue => match b {
                    b' ' | b'\t' => Line::ExtWs,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::ExtWs => match b {
                    b' ' | b'\t' => Line::ExtWs,
                    b';' => Line::ExtNameStart,
                    _ => return Err(self.err(DecodeErrorKind::InvalidExtension { found: b }, i)),
                },
                Line::Lf => unreachable!("handled above"),
            };
            if line != Line::Digits {
                // Everything after the size digits is extension bytes (BWS included).
                self.ext_len += 1;
                if self.ext_len > self.limits.max_extension_bytes {
                    return Err(self.err(
                        DecodeErrorKind::ExtensionsTooLarge {
                            limit: self.limits.max_extension_bytes,
                        },
                        i,
                    ));
                }
            }
            i += 1;
        }
        self.advance(buf, i);
        if !finished {
            self.state = State::SizeLine {
                line,
                size,
                digits,
                len,
            };
            return Ok(false);
        }
        self.line_done(size, len)?;
        Ok(true)
    }

    /// The common case, done in one step: between chunks, with the whole next chunk in `buf`
    /// (a size line that is nothing but hex digits and CRLF, see [`plain_size_line`], then the
    /// payload and its CRLF), within the limits. Consumes the chunk and returns its payload,
    /// split off the buffer once. Otherwise returns `None` having consumed and changed nothing,
    /// and the state machine reads the same bytes.
    #[inline(never)]
    fn whole_chunk(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        let (size, digits) = plain_size_line(buf, &self.limits)?;
        // `size` ≤ max_chunk_size ≤ isize::MAX - 2 and `digits` ≤ 16: no sum below overflows.
        let payload_start = digits + 2;
        let payload_end = payload_start + size as usize;
        if size == 0 || !matches!(buf.get(payload_end..payload_end + 2), Some(b"\r\n")) {
            return None;
        }
        let body_len = self.body_len.saturating_add(size);
        if let Some(limit) = self.limits.max_body_size {
            if body_len > limit {
                return None;
            }
        }
        // One split for size line, payload and CRLF; then the piece is cut down to the payload.
        let mut line_and_payload = buf.split_to(payload_end + 2);
        line_and_payload.truncate(payload_end);
        let mut data = line_and_payload.freeze();
        data.advance(payload_start);
        self.consumed += (payload_end + 2) as u64;
        self.body_len = body_len;
        self.chunks += 1;
        // A chunk that starts and ends within one call was not reassembled.
        debug_assert!(!self.waited);
        Some(data)
    }

    /// The size-line part of [`Self::whole_chunk`], for when the payload is not all buffered
    /// yet: consumes a plain size line (see [`plain_size_line`]) and moves on to its payload.
    /// `Ok(false)`, having consumed nothing, for any other line.
    fn plain_size_line(&mut self, buf: &mut BytesMut) -> Result<bool, DecodeError> {
        let Some((size, digits)) = plain_size_line(buf, &self.limits) else {
            return Ok(false);
        };
        self.advance(buf, digits + 2);
        self.line_done(size, digits)?;
        Ok(true)
    }

    /// A size line of `len` bytes (CRLF excluded) declaring `size` was read: move on to the
    /// payload or, for the last chunk, to the trailer section.
    fn line_done(&mut self, size: u64, len: usize) -> Result<(), DecodeError> {
        if size == 0 {
            self.state = State::Trailers {
                scanned: 0,
                line_start: 0,
                fields: 0,
            };
            return Ok(());
        }
        // `size` ≤ max_chunk_size ≤ isize::MAX - 2, so it fits a usize.
        let body_len = self.body_len.saturating_add(size);
        if let Some(limit) = self.limits.max_body_size {
            if body_len > limit {
                // Point at the start of the size line that crossed the limit.
                let at = self.consumed - len as u64 - 2;
                return Err(DecodeError::new(
                    DecodeErrorKind::BodyTooLarge { limit },
                    at,
                ));
            }
        }
        self.body_len = body_len;
        self.state = State::Data {
            size: size as usize,
        };
        Ok(())
    }

    /// Check the trailer section bytes not yet scanned. `Ok(Some(n))` when the section,
    /// `n` bytes with its final CRLF, is complete.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, DecodeError> {
        let State::Trailers {
            mut scanned,
            mut line_start,
            mut fields,
        } = self.state
        else {
            unreachable!("trailers called outside the trailer state")
        };
        let limit = self.limits.max_trailer_bytes;
        let end = buf.len().min(limit);
        let bytes = &buf[..];
        loop {
            let Some(pos) = memchr::memchr2(b'\r', b'\n', &bytes[scanned..end]) else {
                if buf.len() >= limit {
                    return Err(self.err(DecodeErrorKind::TrailersTooLarge { limit }, limit));
                }
                scanned = end;
                break;
            };
            let at = scanned + pos;
            if bytes[at] == b'\n' {
                return Err(self.err(DecodeErrorKind::BareLf, at));
            }
            if at + 2 > limit {
                return Err(self.err(DecodeErrorKind::TrailersTooLarge { limit }, at));
            }
            if at + 1 >= bytes.len() {
                // A CR is the last byte we have: wait for the next one.
                scanned = at;
                break;
            }
            if bytes[at + 1] != b'\n' {
                return Err(self.err(DecodeErrorKind::BareCr, at));
            }
            if at == line_start {
                // Empty line: the section is complete.
                self.state = State::Trailers {
                    scanned: at + 2,
                    line_start,
                    fields,
                };
                return Ok(Some(at + 2));
            }
            fields += 1;
            if fields > self.limits.max_trailer_fields {
                return Err(self.err(
                    DecodeErrorKind::TooManyTrailers {
                        limit: self.limits.max_trailer_fields,
                    },
                    line_start,
                ));
            }
            let span = parse_field_line(&bytes[line_start..at])
                .map_err(|(kind, off)| self.err(kind, line_start + off))?;
            self.trailer_spans.push((
                span.0.start + line_start..span.0.end + line_start,
                span.1.start + line_start..span.1.end + line_start,
            ));
            line_start = at + 2;
            scanned = at + 2;
        }
        self.waited = true;
        self.state = State::Trailers {
            scanned,
            line_start,
            fields,
        };
        Ok(None)
    }
}

impl Decoder for ChunkedDecoder {
    type Item = Frame;
    type Error = DecodeError;

    /// Between chunks, a size line that is nothing but hex digits and CRLF is read without
    /// the byte state machine, and a chunk that is wholly buffered is yielded at once; every
    /// other case goes through the state machine (`decode_states`). The
    /// shortcuts only accept input the state machine accepts, with the same result.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if self.at_line_start() {
            if let Some(data) = self.whole_chunk(buf) {
                return Ok(Some(Frame::Data(data)));
            }
        }
        if buf.is_empty() && matches!(self.state, State::SizeLine { .. }) {
            // Between chunks with nothing buffered (a token stream's every wait): no state
            // can move without a byte.
            return Ok(None);
        }
        self.decode_states(buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if self.is_done() => Ok(None),
            None => Err(self.err(DecodeErrorKind::UnexpectedEof, buf.len())),
        }
    }
}

impl ChunkedDecoder {
    /// The driver of the state machine: runs the function of the current state until a frame
    /// is complete, more bytes are needed, or the input is invalid.
    #[inline(never)]
    fn decode_states(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        loop {
            match self.state {
                State::SizeLine { .. } => {
                    if self.at_line_start() && self.plain_size_line(buf)? {
                        continue;
                    }
                    if !self.size_line(buf)? {
                        if !self.at_chunk_boundary() {
                            self.waited = true;
                        }
                        return Ok(None);
                    }
                }
                State::Data { size } => {
                    let need = size + 2;
                    if buf.len() < need {
                        buf.reserve(
                            (need - buf.len()).min(Limits::DEFAULT_MAX_CHUNK_SIZE as usize),
                        );
                        self.waited = true;
                        return Ok(None);
                    }
                    if buf[size] != b'\r' {
                        let found = buf[size];
                        return Err(self.err(DecodeErrorKind::MissingDataCrlf { found }, size));
                    }
                    if buf[size + 1] != b'\n' {
                        let found = buf[size + 1];
                        return Err(self.err(DecodeErrorKind::MissingDataCrlf { found }, size + 1));
                    }
                    // One split for payload and CRLF, then drop the CRLF from the piece.
                    let mut data = buf.split_to(need);
                    data.truncate(size);
                    let data = data.freeze();
                    self.consumed += need as u64;
                    self.chunks += 1;
                    if self.waited {
                        self.reassembled += 1;
                        self.waited = false;
                    }
                    self.state = INITIAL_SIZE_LINE;
                    return Ok(Some(Frame::Data(data)));
                }
                State::Trailers { .. } => {
                    let Some(n) = self.trailers(buf)? else {
                        return Ok(None);
                    };
                    self.consumed += n as u64;
                    self.waited = false;
                    if self.trailer_spans.is_empty() {
                        buf.advance(n);
                        self.state = State::Done;
                        return Ok(Some(Frame::End));
                    }
                    let section = buf.split_to(n).freeze();
                    let fields = self
                        .trailer_spans
                        .drain(..)
                        .map(|(name, value)| Field {
                            name: section.slice(name),
                            value: section.slice(value),
                        })
                        .collect();
                    self.state = State::EndPending;
                    return Ok(Some(Frame::Trailers(fields)));
                }
                State::EndPending => {
                    self.state = State::Done;
                    return Ok(Some(Frame::End));
                }
                State::Done => return Ok(None),
            }
        }
    }
}

/// What `HEX_VALUES` holds for a byte that is not a hex digit.
const NOT_HEX: u8 = 0xff;

/// The value of every byte as a hex digit, or [`NOT_HEX`].
static HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// A size line at the start of `bytes` that is 1 to 16 hex digits then CRLF, within the
/// size-line, size-digit and chunk-size limits: its declared size and digit count. `None` for anything
/// else (extensions, a fault, a partial line, more than 16 digits), which the byte state
/// machine then reads; it accepts every line this accepts, with the same size.
#[inline(always)]
fn plain_size_line(bytes: &[u8], limits: &Limits) -> Option<(u64, usize)> {
    let mut size: u64 = 0;
    let mut digits = 0;
    for &b in &bytes[..bytes.len().min(16)] {
        let v = HEX_VALUES[usize::from(b)];
        if v == NOT_HEX {
            break;
        }
        size = (size << 4) | u64::from(v);
        digits += 1;
    }
    if digits == 0
        || !matches!(bytes.get(digits..digits + 2), Some(b"\r\n"))
        || digits > limits.max_size_line
        || digits > limits.max_size_digits
        || size > limits.max_chunk_size
    {
        return None;
    }
    Some((size, digits))
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    let v = HEX_VALUES[usize::from(b)];
    (v != NOT_HEX).then_some(v)
}

/// `tchar` of RFC 9110 §5.6.2.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Fields that must not appear in a trailer section: message framing, routing, request
/// credentials, content format, controls and hop-by-hop fields (RFC 9110 §6.5.1). Compared
/// case-insensitively. `Set-Cookie` is allowed (and may repeat): it changes nothing about how
/// this message is framed, routed or authorised.
const FORBIDDEN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-connection",
    b"expect",
    b"content-encoding",
    b"content-type",
    b"content-range",
    b"authorization",
    b"cookie",
];

type FieldSpans = (std::ops::Range<usize>, std::ops::Range<usize>);

/// Validate one trailer line (CRLF excluded) as `token ":" OWS value OWS`; return the name and
/// trimmed value spans, or the fault and its offset within the line.
fn parse_field_line(line: &[u8]) -> Result<FieldSpans, (DecodeErrorKind, usize)> {
    let name_end = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    if name_end == 0 {
        let found = line.first().copied().unwrap_or(b'\r');
        return Err((DecodeErrorKind::InvalidTrailer { found }, 0));
    }
    match line.get(name_end) {
        Some(b':') => {}
        Some(&found) => return Err((DecodeErrorKind::InvalidTrailer { found }, name_end)),
        None => return Err((DecodeErrorKind::InvalidTrailer { found: b'\r' }, name_end)),
    }
    let name = &line[..name_end];
    if FORBIDDEN_TRAILERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
    {
        return Err((DecodeErrorKind::ForbiddenTrailer, 0));
    }
    let mut start = name_end + 1;
    let mut end = line.len();
    for (i, &b) in line.iter().enumerate().skip(start) {
        if !(b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) {
            return Err((DecodeErrorKind::InvalidTrailer { found: b }, i));
        }
    }
    while start < end && matches!(line[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(line[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    Ok((0..name_end, start..end))
}

/// CRLF, written after every chunk payload.
pub const CRLF: &[u8] = b"\r\n";

/// The last chunk and an empty trailer section: the end of a body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A chunk size line (`hex CRLF`) in a small stack buffer, so a payload can go out in one
/// vectored write (size line, payload, [`CRLF`]) without being copied.
#[derive(Clone, Copy)]
pub struct SizeLine {
    buf: [u8; 18],
    len: u8,
}

impl SizeLine {
    /// The size line for a payload of `size` bytes (lowercase hex, no leading zeros).
    #[inline]
    pub fn new(size: usize) -> SizeLine {
        let mut buf = [0u8; 18];
        let digits = if size == 0 {
            1
        } else {
            (usize::BITS - size.leading_zeros()).div_ceil(4) as usize
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut v = size;
        for i in (0..digits).rev() {
            buf[i] = HEX[v & 0xf];
            v >>= 4;
        }
        buf[digits] = b'\r';
        buf[digits + 1] = b'\n';
        SizeLine {
            buf,
            len: (digits + 2) as u8,
        }
    }

    /// The line's bytes, CRLF included.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl fmt::Debug for SizeLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SizeLine({:?})",
            String::from_utf8_lossy(self.as_bytes())
        )
    }
}

/// Encoder of chunks.
///
/// `Encoder<Bytes>` writes one chunk per non-empty payload (an empty payload writes nothing:
/// a zero-size chunk would end the body). `Encoder<Frame>` writes frames as the decoder yields
/// them, so decoding then encoding reproduces a body minus its extensions. The end of a body is
/// always explicit: [`ChunkedEncoder::encode_end`] or a [`Frame::Trailers`] / [`Frame::End`].
#[derive(Debug, Clone, Default)]
pub struct ChunkedEncoder {
    ended: bool,
}

impl ChunkedEncoder {
    /// An encoder at the start of a body.
    pub fn new() -> Self {
        ChunkedEncoder { ended: false }
    }

    /// True once the end of the body was written.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Ready for another body.
    pub fn reset(&mut self) {
        self.ended = false;
    }

    /// Write one chunk: size line, payload, CRLF. Writes nothing for an empty payload.
    pub fn encode_chunk(&mut self, payload: &[u8], dst: &mut BytesMut) {
        if payload.is_empty() {
            return;
        }
        let line = SizeLine::new(payload.len());
        dst.reserve(line.as_bytes().len() + payload.len() + 2);
        dst.put_slice(line.as_bytes());
        dst.put_slice(payload);
        dst.put_slice(CRLF);
    }

    /// Write the end of the body: `0\r\n`, the trailer fields, and the final CRLF.
    pub fn encode_end(&mut self, trailers: &[Field], dst: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.ended = true;
        if trailers.is_empty() {
            dst.put_slice(LAST_CHUNK);
            return;
        }
        dst.put_slice(b"0\r\n");
        write_fields(trailers, dst);
        dst.put_slice(CRLF);
    }
}

/// Write `name: value\r\n` for each field.
pub fn write_fields(fields: &[Field], dst: &mut BytesMut) {
    for f in fields {
        dst.reserve(f.name.len() + f.value.len() + 4);
        dst.put_slice(&f.name);
        dst.put_slice(b": ");
        dst.put_slice(&f.value);
        dst.put_slice(CRLF);
    }
}

impl Encoder<Bytes> for ChunkedEncoder {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), io::Error> {
        self.encode_chunk(&item, dst);
        Ok(())
    }
}

impl Encoder<Frame> for ChunkedEncoder {
    type Error = io::Error;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), io::Error> {
        match item {
            Frame::Data(b) => self.encode_chunk(&b, dst),
            Frame::Trailers(t) => self.encode_end(&t, dst),
            Frame::End => self.encode_end(&[], dst),
        }
        Ok(())
    }
}

/// Decode a whole body held in one buffer: the frames (trailers and end included) or the
/// first error. Convenience for tests and tools; the proxy decodes incrementally.
pub fn decode_all(input: &[u8], limits: Limits) -> Result<Vec<Frame>, DecodeError> {
    let mut dec = ChunkedDecoder::new(limits);
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(f) = dec.decode_eof(&mut buf)? {
        out.push(f);
        if dec.is_done() {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        decode_all(input, Limits::default())
    }

    fn data(s: &str) -> Frame {
        Frame::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn kind(input: &[u8]) -> DecodeErrorKind {
        frames(input).expect_err("expected an error").kind()
    }

    fn kind_with(input: &[u8], limits: Limits) -> DecodeErrorKind {
        decode_all(input, limits)
            .expect_err("expected an error")
            .kind()
    }

    #[test]
    fn decode_simple_body() {
        assert_eq!(
            frames(b"3\r\nabc\r\n5\r\ndefgh\r\n2\r\nij\r\n0\r\n\r\n").unwrap(),
            vec![data("abc"), data("defgh"), data("ij"), Frame::End]
        );
    }

    #[test]
    fn decode_leading_zeros_and_case() {
        assert_eq!(
            frames(b"000A\r\n0123456789\r\n0000\r\n\r\n").unwrap(),
            vec![data("0123456789"), Frame::End]
        );
        assert_eq!(
            frames(b"a\r\n0123456789\r\n0\r\n\r\n").unwrap(),
            vec![data("0123456789"), Frame::End]
        );
    }

    #[test]
    fn decode_many_leading_zeros_do_not_count_as_digits() {
        let mut input = vec![b'0'; 40];
        input.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(frames(&input).unwrap(), vec![data("abc"), Frame::End]);
    }

    #[test]
    fn decode_size_digits_limit_just_under_and_over() {
        // 64 digits, leading zeros included, is the default most.
        let mut at = vec![b'0'; 63];
        at.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(frames(&at).unwrap(), vec![data("abc"), Frame::End]);
        let mut over = vec![b'0'; 64];
        over.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        let e = frames(&over).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::TooManySizeDigits { limit: 64 });
        assert_eq!(e.offset(), 64);
        assert!(!e.is_too_large());
        assert_eq!(
            e.to_string(),
            "invalid chunk size line at byte 64: more than 64 hex digits, leading zeros included"
        );
        // The last chunk too.
        let mut last = b"1\r\na\r\n".to_vec();
        last.extend_from_slice(&[b'0'; 65]);
        last.extend_from_slice(b"\r\n\r\n");
        let e = frames(&last).unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (DecodeErrorKind::TooManySizeDigits { limit: 64 }, 6 + 64)
        );
        // A lower limit applies to plain size lines too (the one-step path).
        let limits = Limits::default().max_size_digits(4);
        assert_eq!(
            decode_all(b"0003\r\nabc\r\n0000\r\n\r\n", limits).unwrap(),
            vec![data("abc"), Frame::End]
        );
        for input in [
            &b"00003\r\nabc\r\n0\r\n\r\n"[..],
            b"10000\r\n",
            b"00000;a\r\n",
        ] {
            let e = decode_all(input, limits).unwrap_err();
            assert_eq!(
                (e.kind(), e.offset()),
                (DecodeErrorKind::TooManySizeDigits { limit: 4 }, 4),
                "{input:?}"
            );
        }
    }

    /// A one-byte chunk padded with 4,000 leading zeros fitted the 4 KiB size-line limit, so a
    /// body of such chunks made the reader hold and scan 4 KiB of framing per payload byte.
    /// It is refused at the first digit over the limit.
    #[test]
    fn decode_refuses_size_lines_padded_with_thousands_of_zeros() {
        let mut chunk = vec![b'0'; 4000];
        chunk.extend_from_slice(b"1\r\nx\r\n");
        let mut body = chunk.repeat(3);
        body.extend_from_slice(b"0\r\n\r\n");
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&body[..]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::TooManySizeDigits { limit: 64 });
        assert_eq!(e.offset(), 64);
        assert_eq!(dec.chunks(), 0);
    }

    #[test]
    fn decode_sixteen_digits_then_overflow() {
        let limits = Limits::default().max_chunk_size(u64::MAX);
        // 16 significant digits is the most; the size is then refused by the (clamped) limit,
        // not by overflow.
        let k = kind_with(b"ffffffffffffffff\r\n", limits);
        assert!(matches!(k, DecodeErrorKind::ChunkTooLarge { .. }), "{k:?}");
        assert_eq!(
            kind_with(
                b"10000000000000000\r\n",
                Limits::default().max_chunk_size(0)
            ),
            DecodeErrorKind::ChunkTooLarge { size: 1, limit: 0 }
        );
        // Bypass the clamp to reach the digit check.
        let big = Limits {
            max_chunk_size: u64::MAX,
            ..Limits::default()
        };
        assert_eq!(
            kind_with(b"10000000000000000\r\n", big),
            DecodeErrorKind::SizeOverflow
        );
    }

    #[test]
    fn decode_rejects_bad_size_lines() {
        assert!(matches!(
            kind(b"\r\n"),
            DecodeErrorKind::MissingSize { found: b'\r' }
        ));
        assert!(matches!(
            kind(b"+5\r\nhello\r\n"),
            DecodeErrorKind::MissingSize { found: b'+' }
        ));
        assert!(matches!(
            kind(b"-5\r\n"),
            DecodeErrorKind::MissingSize { found: b'-' }
        ));
        assert!(matches!(
            kind(b" 5\r\n"),
            DecodeErrorKind::MissingSize { found: b' ' }
        ));
        assert!(matches!(
            kind(b"0x5\r\n"),
            DecodeErrorKind::InvalidSizeByte { found: b'x' }
        ));
        assert!(matches!(
            kind(b"5 5\r\n"),
            DecodeErrorKind::InvalidSizeByte { found: b'5' }
        ));
        assert!(matches!(
            kind(b"1_0\r\n"),
            DecodeErrorKind::InvalidSizeByte { found: b'_' }
        ));
        assert!(matches!(
            kind(b"5 \r\nhello\r\n0\r\n\r\n"),
            DecodeErrorKind::InvalidSizeByte { found: b'\r' }
        ));
        assert!(matches!(
            kind(b"g\r\n"),
            DecodeErrorKind::MissingSize { found: b'g' }
        ));
    }

    #[test]
    fn decode_error_message_names_fault_and_offset() {
        let input = b"3\r\nabc\r\n1g\r\n";
        let e = frames(input).unwrap_err();
        assert_eq!(e.offset(), 9);
        assert_eq!(
            e.to_string(),
            "invalid chunk size line at byte 9: non-hex digit 'g'"
        );
    }

    #[test]
    fn decode_rejects_bare_lf_and_cr() {
        assert_eq!(kind(b"5\nhello\r\n"), DecodeErrorKind::BareLf);
        assert_eq!(kind(b"5\rhello\r\n"), DecodeErrorKind::BareCr);
        assert_eq!(kind(b"5;a=b\nhello\r\n"), DecodeErrorKind::BareLf);
        assert_eq!(kind(b"0\r\n\n"), DecodeErrorKind::BareLf);
        assert_eq!(kind(b"0\r\n\rx"), DecodeErrorKind::BareCr);
        assert_eq!(kind(b"0\r\nA: b\n\r\n"), DecodeErrorKind::BareLf);
    }

    #[test]
    fn decode_requires_crlf_after_data() {
        assert!(matches!(
            kind(b"3\r\nabcd\r\n"),
            DecodeErrorKind::MissingDataCrlf { found: b'd' }
        ));
        assert!(matches!(
            kind(b"3\r\nabc\n0\r\n\r\n"),
            DecodeErrorKind::MissingDataCrlf { found: b'\n' }
        ));
        assert!(matches!(
            kind(b"3\r\nabc\rx"),
            DecodeErrorKind::MissingDataCrlf { found: b'x' }
        ));
    }

    #[test]
    fn decode_accepts_valid_extensions_and_drops_them() {
        let ok: &[&[u8]] = &[
            b"3;a\r\nabc\r\n0\r\n\r\n",
            b"3;a=b\r\nabc\r\n0\r\n\r\n",
            b"3 ; a = b ; c\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"q \\\" x\"\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"\"\r\nabc\r\n0\r\n\r\n",
            b"3;a=b;c=\"d\"\r\nabc\r\n0;last\r\n\r\n",
            b"3;a=\"v\" ;b\r\nabc\r\n0\r\n\r\n",
        ];
        for input in ok {
            assert_eq!(
                frames(input).unwrap(),
                vec![data("abc"), Frame::End],
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn decode_rejects_invalid_extensions() {
        let bad: &[&[u8]] = &[
            b"3;\r\nabc\r\n",
            b"3;=b\r\nabc\r\n",
            b"3;a=\r\nabc\r\n",
            b"3;a b\r\nabc\r\n",
            b"3;a=b c\r\nabc\r\n",
            b"3;a=\"unterminated\r\nabc\r\n",
            b"3;a=\"x\x01\"\r\nabc\r\n",
            b"3;a=\"x\"y\r\nabc\r\n",
            b"3;a@=b\r\nabc\r\n",
            b"3;a=b \r\nabc\r\n",
            b"3;a \r\nabc\r\n",
            b"3;a=\"x\" \r\nabc\r\n",
        ];
        for input in bad {
            let k = kind(input);
            assert!(
                matches!(k, DecodeErrorKind::InvalidExtension { .. }),
                "{:?}: {k:?}",
                String::from_utf8_lossy(input)
            );
        }
        // A bare LF inside an extension is the line-ending trick; it must fail as such.
        assert_eq!(kind(b"3;a=\"x\nabc\r\n"), DecodeErrorKind::BareLf);
    }

    #[test]
    fn decode_chunk_size_limit_just_under_and_over() {
        let limits = Limits::default().max_chunk_size(4);
        assert_eq!(
            decode_all(b"4\r\nabcd\r\n0\r\n\r\n", limits).unwrap(),
            vec![data("abcd"), Frame::End]
        );
        let e = decode_all(b"5\r\n", limits).unwrap_err();
        assert_eq!(
            e.kind(),
            DecodeErrorKind::ChunkTooLarge { size: 5, limit: 4 }
        );
        assert!(e.is_too_large());
    }

    #[test]
    fn decode_refuses_large_size_before_payload_arrives() {
        let mut dec = ChunkedDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"100001\r\n"[..]); // 1 MiB + 1
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(
            e.kind(),
            DecodeErrorKind::ChunkTooLarge {
                size: 0x100001,
                limit: 1 << 20
            }
        );
        assert!(buf.capacity() < 1 << 20, "no payload room was reserved");
    }

    #[test]
    fn decode_size_line_limit_just_under_and_over() {
        let limits = Limits::default().max_size_line(6);
        assert_eq!(
            decode_all(b"3;ab=c\r\nabc\r\n0\r\n\r\n", limits).unwrap(),
            vec![data("abc"), Frame::End]
        );
        assert_eq!(
            decode_all(b"3;ab=cd\r\nabc\r\n0\r\n\r\n", limits)
                .unwrap_err()
                .kind(),
            DecodeErrorKind::SizeLineTooLong { limit: 6 }
        );
    }

    #[test]
    fn decode_extension_budget_is_per_body() {
        let limits = Limits::default().max_extension_bytes(6);
        // Two lines of 3 extension bytes each: exactly at the limit.
        assert_eq!(
            decode_all(b"1;ab\r\na\r\n0;cd\r\n\r\n", limits).unwrap(),
            vec![data("a"), Frame::End]
        );
        assert_eq!(
            decode_all(b"1;ab\r\na\r\n1;cde\r\nb\r\n0\r\n\r\n", limits)
                .unwrap_err()
                .kind(),
            DecodeErrorKind::ExtensionsTooLarge { limit: 6 }
        );
    }

    /// A body of many small chunks that each carry extensions is bounded by the per-body
    /// extension budget, not by the per-line limit: 1,024 one-byte chunks with 16 extension
    /// bytes each use exactly the default 16 KiB; one more extension byte anywhere is refused.
    /// (A zero-size chunk is always the last one, so there are no empty chunks in between.)
    #[test]
    fn decode_many_small_chunks_with_extensions_hit_the_body_budget() {
        let chunk: &[u8] = b"1;aaaaaaaaaaaaaaa\r\nx\r\n"; // 16 extension bytes, 22 in all
        let budget = Limits::DEFAULT_MAX_EXTENSION_BYTES as usize;
        assert_eq!(budget, 1024 * 16);
        let mut at = chunk.repeat(1024);
        at.extend_from_slice(b"0\r\n\r\n");
        let out = frames(&at).unwrap();
        assert_eq!(out.len(), 1025);
        assert!(out[..1024].iter().all(|f| *f == data("x")));
        let mut over = chunk.repeat(1025);
        over.extend_from_slice(b"0\r\n\r\n");
        let e = frames(&over).unwrap_err();
        assert_eq!(
            e.kind(),
            DecodeErrorKind::ExtensionsTooLarge {
                limit: Limits::DEFAULT_MAX_EXTENSION_BYTES
            }
        );
        // The 16,385th extension byte: the `;` of the 1,025th chunk.
        assert_eq!(e.offset(), 1024 * 22 + 1);
        // The last chunk's extensions count against the same budget.
        let mut last_at = chunk.repeat(1023);
        last_at.extend_from_slice(b"0;aaaaaaaaaaaaaaa\r\n\r\n");
        assert!(frames(&last_at).is_ok());
        let mut last_over = chunk.repeat(1023);
        last_over.extend_from_slice(b"0;aaaaaaaaaaaaaaaa\r\n\r\n");
        assert_eq!(
            frames(&last_over).unwrap_err().offset(),
            1023 * 22 + 17,
            "refused at the 16,385th extension byte"
        );
        // Each line is far below the size-line limit: that limit is not what stopped it.
        assert!(chunk.len() < Limits::DEFAULT_MAX_SIZE_LINE);
    }

    #[test]
    fn decode_body_limit_just_under_and_over() {
        let limits = Limits::default().max_body_size(Some(5));
        assert_eq!(
            decode_all(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", limits).unwrap(),
            vec![data("abc"), data("de"), Frame::End]
        );
        let e = decode_all(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", limits).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::BodyTooLarge { limit: 5 });
        assert_eq!(e.offset(), 8);
    }

    #[test]
    fn decode_trailers() {
        let out = frames(b"1\r\na\r\n0\r\nX-Checksum: abc \r\nX-Other:\tv\r\n\r\n").unwrap();
        assert_eq!(
            out,
            vec![
                data("a"),
                Frame::Trailers(vec![
                    Field {
                        name: "X-Checksum".into(),
                        value: "abc".into()
                    },
                    Field {
                        name: "X-Other".into(),
                        value: "v".into()
                    }
                ]),
                Frame::End
            ]
        );
    }

    #[test]
    fn decode_trailers_may_repeat_a_name() {
        let input = b"1\r\na\r\n0\r\nSet-Cookie: a=1; Path=/\r\nX-Usage: 1\r\n\
            set-cookie: b=2\r\nx-usage: 2\r\n\r\n";
        let fields = |pairs: &[(&'static str, &'static str)]| {
            pairs
                .iter()
                .map(|(n, v)| Field {
                    name: Bytes::from_static(n.as_bytes()),
                    value: Bytes::from_static(v.as_bytes()),
                })
                .collect::<Vec<_>>()
        };
        let expect = fields(&[
            ("Set-Cookie", "a=1; Path=/"),
            ("X-Usage", "1"),
            ("set-cookie", "b=2"),
            ("x-usage", "2"),
        ]);
        let out = frames(input).unwrap();
        assert_eq!(
            out,
            vec![data("a"), Frame::Trailers(expect.clone()), Frame::End]
        );
        // Both go out again, in order.
        let mut wire = BytesMut::new();
        ChunkedEncoder::new().encode_end(&expect, &mut wire);
        assert_eq!(
            &wire[..],
            b"0\r\nSet-Cookie: a=1; Path=/\r\nX-Usage: 1\r\nset-cookie: b=2\r\nx-usage: 2\r\n\r\n"
        );
        // Framing and credential fields stay refused, repeated or not.
        assert_eq!(
            kind(b"0\r\nX-A: 1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            DecodeErrorKind::ForbiddenTrailer
        );
        assert_eq!(
            kind(b"0\r\nCookie: a=1\r\n\r\n"),
            DecodeErrorKind::ForbiddenTrailer
        );
    }

    #[test]
    fn decode_rejects_bad_trailers() {
        for input in [
            &b"0\r\nX Y: z\r\n\r\n"[..],
            b"0\r\nX-A : z\r\n\r\n",
            b"0\r\n: z\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\nX-A: a\x00b\r\n\r\n",
            b"0\r\nX-A: a\r\n folded\r\n\r\n",
            b"0\r\nX-A: \x7f\r\n\r\n",
        ] {
            let k = kind(input);
            assert!(
                matches!(k, DecodeErrorKind::InvalidTrailer { .. }),
                "{:?}: {k:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            kind(b"0\r\nContent-Length: 5\r\n\r\n"),
            DecodeErrorKind::ForbiddenTrailer
        );
        assert_eq!(
            kind(b"0\r\ntransfer-encoding: chunked\r\n\r\n"),
            DecodeErrorKind::ForbiddenTrailer
        );
        assert_eq!(
            kind(b"0\r\nHost: x\r\n\r\n"),
            DecodeErrorKind::ForbiddenTrailer
        );
    }

    #[test]
    fn decode_trailer_limits_just_under_and_over() {
        // "A: b\r\n" is 6 bytes, the final CRLF 2 more: 14 bytes for two fields.
        let input = b"0\r\nA: b\r\nC: d\r\n\r\n";
        let at = Limits::default()
            .max_trailer_bytes(14)
            .max_trailer_fields(2);
        assert!(decode_all(input, at).is_ok());
        assert_eq!(
            decode_all(input, at.max_trailer_bytes(13))
                .unwrap_err()
                .kind(),
            DecodeErrorKind::TrailersTooLarge { limit: 13 }
        );
        assert_eq!(
            decode_all(input, at.max_trailer_fields(1))
                .unwrap_err()
                .kind(),
            DecodeErrorKind::TooManyTrailers { limit: 1 }
        );
    }

    #[test]
    fn decode_eof_is_an_error_unless_done() {
        for input in [
            &b""[..],
            b"3\r\nabc\r\n",
            b"3\r\nab",
            b"3\r\nabc\r\n0\r\n",
            b"0\r\nA: b\r\n",
            b"3;ext",
        ] {
            assert_eq!(
                kind(input),
                DecodeErrorKind::UnexpectedEof,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn decode_leaves_bytes_after_the_body() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(data("a")));
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::End));
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(dec.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(dec.consumed(), 11);
    }

    #[test]
    fn decode_one_byte_at_a_time_yields_whole_chunks_and_counts_reassembly() {
        let input = b"3\r\nabc\r\n5;x=y\r\ndefgh\r\n0\r\nT: v\r\n\r\n";
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.put_u8(b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out[0], data("abc"));
        assert_eq!(out[1], data("defgh"));
        assert!(matches!(out[2], Frame::Trailers(_)));
        assert_eq!(out[3], Frame::End);
        assert_eq!(dec.reassembled_chunks(), 2);
        assert_eq!(dec.chunks(), 2);
    }

    #[test]
    fn decode_whole_input_counts_no_reassembly() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..]);
        while dec.decode(&mut buf).unwrap().is_some() {}
        assert_eq!(dec.reassembled_chunks(), 0);
    }

    #[test]
    fn decode_reserves_room_for_the_rest_of_a_known_chunk() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"1000\r\nab"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= 0x1000 + 2);
    }

    #[test]
    fn decode_data_is_not_copied() {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let Some(Frame::Data(d)) = dec.decode(&mut buf).unwrap() else {
            panic!("expected data")
        };
        assert_eq!(
            d.as_ptr() as usize,
            base + 3,
            "payload points into the read buffer"
        );
    }

    #[test]
    fn decode_work_is_linear_in_one_byte_reads() {
        // A 64 KiB chunk fed a byte at a time: the decoder must not look at the payload per call.
        // Counted by a proxy for work: the buffer is never scanned, so this finishes at once even
        // in debug builds; a re-scanning decoder would do ~2e9 byte checks here.
        let size = 64 * 1024;
        let mut input = format!("{size:x}\r\n").into_bytes();
        input.extend(std::iter::repeat_n(b'x', size));
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut n = 0;
        for &b in &input {
            buf.put_u8(b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                if let Frame::Data(d) = f {
                    assert_eq!(d.len(), size);
                }
                n += 1;
            }
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn size_line_formats_hex() {
        assert_eq!(SizeLine::new(0).as_bytes(), b"0\r\n");
        assert_eq!(SizeLine::new(1).as_bytes(), b"1\r\n");
        assert_eq!(SizeLine::new(15).as_bytes(), b"f\r\n");
        assert_eq!(SizeLine::new(16).as_bytes(), b"10\r\n");
        assert_eq!(SizeLine::new(0x1234abcd).as_bytes(), b"1234abcd\r\n");
        assert_eq!(
            SizeLine::new(usize::MAX).as_bytes(),
            b"ffffffffffffffff\r\n"
        );
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let mut enc = ChunkedEncoder::new();
        let mut out = BytesMut::new();
        let payloads = ["안녕하세요", "", "{\"a\":1}", "🦀"];
        for p in payloads {
            Encoder::<Bytes>::encode(&mut enc, Bytes::from(p), &mut out).unwrap();
        }
        let trailers = vec![Field {
            name: "X-T".into(),
            value: "1".into(),
        }];
        enc.encode_end(&trailers, &mut out);
        enc.encode_end(&[], &mut out); // second end is ignored
        assert_eq!(
            frames(&out).unwrap(),
            vec![
                data("안녕하세요"),
                data("{\"a\":1}"),
                data("🦀"),
                Frame::Trailers(trailers),
                Frame::End
            ]
        );
    }

    #[test]
    fn encode_frames_reproduce_the_body_without_extensions() {
        let input = b"3;ext=1\r\nabc\r\n0\r\nA: b\r\n\r\n";
        let mut enc = ChunkedEncoder::new();
        let mut out = BytesMut::new();
        for f in frames(input).unwrap() {
            enc.encode(f, &mut out).unwrap();
        }
        assert_eq!(&out[..], b"3\r\nabc\r\n0\r\nA: b\r\n\r\n");
    }

    #[test]
    fn decode_error_from_io() {
        let e = DecodeError::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            e.kind(),
            DecodeErrorKind::Io(io::ErrorKind::ConnectionReset)
        );
    }
}
