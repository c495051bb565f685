//! Request and response heads (RFC 9112 §2-§5), parsed with httparse and validated strictly.
//!
//! # Contract
//! [`RequestParser`] and [`ResponseParser`] take the bytes read so far from a connection and
//! return `Ok(None)` until the whole head (start line, fields and the blank line) is buffered,
//! then split exactly the head off the front of the buffer and return it parsed. Bytes after the
//! head (a body, a pipelined request) stay in the buffer untouched. An error is terminal for the
//! connection: answer once and close, never resynchronise.
//!
//! Field names and values, the method, the target and the reason phrase are slices of the
//! received head (one frozen [`Bytes`]), never copies.
//!
//! # Rules (strict side of every choice)
//! - CRLF only: a bare LF or a bare CR anywhere in the head is an error.
//! - Before a request line, up to [`HeadLimits::max_leading_empty_lines`] empty lines (CRLF,
//!   4 by default) are ignored, as RFC 9112 §2.2 asks of a server (some clients send a CRLF
//!   after a body); they are consumed from the buffer as they arrive and are not part of the
//!   head. One more is an error, and so is a bare LF there. A status line must come first.
//! - Request line: `method SP request-target SP HTTP/1.1` (or `HTTP/1.0`) with single spaces.
//!   Any other `HTTP/x.y` is 505, anything else 400. A method that differs from a standard method
//!   only in letter case (`get`, `Head`) is refused, so no hop can read it differently.
//!   `CONNECT` is 501 (no tunnels).
//! - Target: origin-form (`/path?query`); absolute-form (`http://host/path`) is accepted and
//!   rewritten to origin-form, its authority kept in [`RequestHead::target_authority`] and
//!   required to equal `Host`; asterisk-form (`*`) only with `OPTIONS`. No fragment, no bytes
//!   outside visible ASCII, no `"<>\^`{|}` and every `%` followed by two hex digits.
//! - Fields: the name is a token without `_`, directly followed by `:`; the value holds no
//!   control character but HTAB (bytes 0x80-0xFF pass); obs-fold and whitespace before the
//!   first field are errors. Values are returned with surrounding whitespace removed.
//! - HTTP/1.1 requests carry exactly one `Host` whose value is a valid authority
//!   (`host [":" port]`); an HTTP/1.0 request may omit it, but not repeat or garble it.
//! - Status line: `HTTP/1.x SP 3DIGIT SP reason`, status 100-599, reason possibly empty.
//! - Size caps are checked before anything is allocated: request line over
//!   [`HeadLimits::max_request_line`] is 414, head over [`HeadLimits::max_head_bytes`] or more
//!   than [`HeadLimits::max_headers`] fields is 431 (for a response: an error too).
//!
//! # Work
//! The parsers remember how far they scanned: every byte of a head is examined once by the
//! line scanner, however the head was split into reads (a head arriving one byte per read costs
//! O(n), not O(n²)), and httparse runs once, over the complete head.
//!
//! ```
//! use bytes::BytesMut;
//! use chunkgate::codec::head::{HeadLimits, RequestParser, Version};
//!
//! let mut parser = RequestParser::new(HeadLimits::default());
//! let mut buf = BytesMut::from(&b"POST /v1/chat HTTP/1.1\r\nHost: api\r\nContent-Le"[..]);
//! assert!(parser.parse(&mut buf).unwrap().is_none());
//! buf.extend_from_slice(b"ngth: 2\r\n\r\n{}");
//! let head = parser.parse(&mut buf).unwrap().unwrap();
//! assert!(head.is_method("POST"));
//! assert_eq!(head.target, "/v1/chat");
//! assert_eq!(head.version, Version::Http11);
//! assert_eq!(head.get("content-length").unwrap(), "2");
//! assert_eq!(&buf[..], b"{}"); // the body stays in the buffer
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::LazyLock;

use crate::codec::ByteDisplay;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::chunked::is_tchar;

/// Limits on message heads. Every field has a bounded default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (start line, fields, final CRLF) in bytes; past it 431 (default 64 KiB).
    pub max_head_bytes: usize,
    /// Most header fields; past it 431 (default 100).
    pub max_headers: usize,
    /// Longest request line; past it 414 (default 8 KiB).
    pub max_request_line: usize,
    /// Most empty lines (CRLF) ignored before a request line (RFC 9112 §2.2); one more is 400
    /// (default 4). Responses get none: an empty line before a status line is an error.
    pub max_leading_empty_lines: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 << 10,
            max_headers: 100,
            max_request_line: 8 << 10,
            max_leading_empty_lines: 4,
        }
    }
}

/// The protocol version of a message. Nothing else is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl Version {
    /// The version as it appears on the wire: `HTTP/1.0` or `HTTP/1.1`.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }

    /// The version as it appears in a `Via` field: `1.0` or `1.1`.
    pub fn via_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"1.0",
            Version::Http11 => b"1.1",
        }
    }
}

/// One header field, sliced out of the received head without copying.
/// The value has its surrounding whitespace (SP, HTAB) removed.
///
/// `Debug` shows the values of credential fields (see [`is_sensitive_field`]) as `<redacted>`,
/// so a logged head never carries an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name as received (compare case-insensitively).
    pub name: Bytes,
    /// Field value, OWS-trimmed.
    pub value: Bytes,
}

/// Fields whose values are credentials and must never be logged.
const SENSITIVE_FIELDS: &[&[u8]] = &[
    b"authorization",
    b"proxy-authorization",
    b"x-api-key",
    b"api-key",
    b"cookie",
    b"set-cookie",
];

/// True if `name` is a field whose value is a credential (`Authorization`,
/// `Proxy-Authorization`, `x-api-key`, `api-key`, `Cookie`, `Set-Cookie`): never log its value.
pub fn is_sensitive_field(name: &[u8]) -> bool {
    SENSITIVE_FIELDS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Header");
        d.field("name", &self.name);
        if is_sensitive_field(&self.name) {
            d.field("value", &"<redacted>");
        } else {
            d.field("value", &self.value);
        }
        d.finish()
    }
}

/// A parsed, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, exactly as received (methods are case-sensitive).
    pub method: Bytes,
    /// The request target in origin-form (`/path?query`), or `*` for `OPTIONS *`.
    /// An absolute-form target has already been rewritten to origin-form.
    pub target: Bytes,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// The header fields in received order.
    pub headers: Vec<Header>,
    /// The authority of an absolute-form target (`host[:port]` of `http://host[:port]/path`),
    /// `None` for origin-form and asterisk-form. When set it equals `Host` (case-insensitively).
    pub target_authority: Option<Bytes>,
}

/// A parsed, validated response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// The status code, 100-599.
    pub status: u16,
    /// The reason phrase as received (may be empty; never interpreted).
    pub reason: Bytes,
    /// The header fields in received order.
    pub headers: Vec<Header>,
}

fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| &h.value)
}

macro_rules! field_lookup {
    ($ty:ty) => {
        impl $ty {
            /// The value of the first field called `name` (case-insensitive), if any.
            pub fn get(&self, name: &str) -> Option<&Bytes> {
                self.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|h| &h.value)
            }

            /// The values of every field called `name` (case-insensitive), in received order.
            pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
                values(&self.headers, name)
            }

            /// How many fields are called `name` (case-insensitive).
            pub fn count(&self, name: &str) -> usize {
                self.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
                    .count()
            }
        }
    };
}

field_lookup!(RequestHead);
field_lookup!(ResponseHead);

impl RequestHead {
    /// True if the method is exactly `m` (methods are case-sensitive, RFC 9110 §9.1).
    pub fn is_method(&self, m: &str) -> bool {
        self.method == m.as_bytes()
    }
}

/// What was wrong with a head, without where. Compare kinds in tests; see [`HeadError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadErrorKind {
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// The head starts with an empty line (a response), or a request line follows more than
    /// [`HeadLimits::max_leading_empty_lines`] empty lines (see
    /// [`HeadErrorKind::TooManyEmptyLines`]).
    EmptyStartLine,
    /// More empty lines before a request line than [`HeadLimits::max_leading_empty_lines`].
    TooManyEmptyLines { limit: usize },
    /// The request line is longer than [`HeadLimits::max_request_line`] (414).
    RequestLineTooLong { limit: usize },
    /// The head is longer than [`HeadLimits::max_head_bytes`] (431).
    HeadTooLarge { limit: usize },
    /// More fields than [`HeadLimits::max_headers`] (431).
    TooManyHeaders { limit: usize },
    /// The method is empty or not a token.
    InvalidMethod { found: u8 },
    /// The method differs from a standard method only in letter case.
    AmbiguousMethod,
    /// The method is not served (`CONNECT`: no tunnels) (501).
    MethodNotImplemented,
    /// The request line is not `method SP target SP version` with single spaces.
    InvalidRequestLine { found: u8 },
    /// The target holds a byte that is not allowed, or is not origin-, absolute- or asterisk-form.
    InvalidTarget { found: u8 },
    /// The target holds a fragment (`#`).
    FragmentInTarget,
    /// Asterisk-form (`*`) with a method other than `OPTIONS`.
    AsteriskForm,
    /// The version is not `HTTP/` followed by a digit, `.` and a digit.
    InvalidVersion,
    /// An `HTTP/x.y` version other than 1.0 and 1.1 (505).
    UnsupportedVersion,
    /// The status line is not `HTTP/1.x SP 3DIGIT SP reason`, or the code is outside 100-599.
    InvalidStatusLine,
    /// A field name is empty, not a token, or not followed by `:`.
    InvalidFieldName { found: u8 },
    /// A field name holds `_`.
    UnderscoreInName,
    /// Whitespace between a field name and its colon.
    WhitespaceBeforeColon,
    /// A field line starting with SP or HTAB (obsolete line folding).
    ObsFold,
    /// Whitespace before the first field line.
    WhitespaceBeforeFirstField,
    /// A field value holds a control character other than HTAB.
    InvalidFieldValue { found: u8 },
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// A `Host` value that is not a valid authority.
    InvalidHost,
    /// An absolute-form target whose authority differs from `Host`.
    HostMismatch,
    /// httparse refused a head the line checks passed (it should not happen; refused anyway).
    Malformed,
}

/// A head error: what was wrong, the byte offset into the head where it was seen, and whether
/// the head was a request (client fault) or a response (upstream fault).
///
/// Head errors are terminal: the connection they came on cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    kind: HeadErrorKind,
    offset: usize,
    response: bool,
}

impl HeadError {
    fn new(kind: HeadErrorKind, offset: usize, role: Role) -> Self {
        HeadError {
            kind,
            offset,
            response: role == Role::Response,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> HeadErrorKind {
        self.kind
    }

    /// Offset from the first byte of the head to the byte where the fault was seen.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// True if the faulty head was a response (from an upstream).
    pub fn is_response(&self) -> bool {
        self.response
    }

    /// The status to answer with: for a request 400, 414 (request line too long), 431 (head
    /// too large, too many fields), 501 (`CONNECT`) or 505 (version); for a response always
    /// 502 (the upstream is at fault).
    pub fn status(&self) -> u16 {
        use HeadErrorKind::*;
        if self.response {
            return 502;
        }
        match self.kind {
            RequestLineTooLong { .. } => 414,
            HeadTooLarge { .. } | TooManyHeaders { .. } => 431,
            MethodNotImplemented => 501,
            UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HeadErrorKind::*;
        let at = self.offset;
        let what = if self.response { "response" } else { "request" };
        match self.kind {
            BareLf => write!(
                f,
                "invalid line ending in {what} head at byte {at}: bare LF"
            ),
            BareCr => write!(
                f,
                "invalid line ending in {what} head at byte {at}: CR not followed by LF"
            ),
            EmptyStartLine => write!(f, "empty line before the {what} start line"),
            TooManyEmptyLines { limit } => write!(
                f,
                "too many empty lines before the request line: over the limit of {limit}"
            ),
            RequestLineTooLong { limit } => {
                write!(f, "request line too long: over the {limit}-byte limit")
            }
            HeadTooLarge { limit } => {
                write!(f, "{what} head too large: over the {limit}-byte limit")
            }
            TooManyHeaders { limit } => {
                write!(
                    f,
                    "too many header fields in {what} head: over the limit of {limit}"
                )
            }
            InvalidMethod { found } => write!(
                f,
                "invalid method at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            AmbiguousMethod => write!(
                f,
                "invalid method: a standard method name in the wrong letter case"
            ),
            MethodNotImplemented => write!(f, "method not implemented: connect is not served"),
            InvalidRequestLine { found } => write!(
                f,
                "invalid request line at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            InvalidTarget { found } => write!(
                f,
                "invalid request target at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            FragmentInTarget => write!(f, "invalid request target at byte {at}: fragment"),
            AsteriskForm => write!(
                f,
                "invalid request target: asterisk-form is only allowed with options"
            ),
            InvalidVersion => write!(f, "invalid http version in {what} at byte {at}"),
            UnsupportedVersion => write!(
                f,
                "unsupported http version in {what} at byte {at}: only 1.0 and 1.1"
            ),
            InvalidStatusLine => write!(f, "invalid status line at byte {at}"),
            InvalidFieldName { found } => write!(
                f,
                "invalid header field name in {what} at byte {at}: unexpected {}",
                ByteDisplay(found)
            ),
            UnderscoreInName => write!(
                f,
                "invalid header field name in {what} at byte {at}: '_' is not allowed"
            ),
            WhitespaceBeforeColon => write!(
                f,
                "invalid header field in {what} at byte {at}: whitespace before the colon"
            ),
            ObsFold => write!(
                f,
                "invalid header field in {what} at byte {at}: obsolete line folding"
            ),
            WhitespaceBeforeFirstField => write!(
                f,
                "invalid header field in {what} at byte {at}: whitespace before the first field"
            ),
            InvalidFieldValue { found } => write!(
                f,
                "invalid header field value in {what} at byte {at}: control character {}",
                ByteDisplay(found)
            ),
            MissingHost => write!(f, "missing host header in http/1.1 request"),
            DuplicateHost => write!(f, "more than one host header"),
            InvalidHost => write!(f, "invalid host header: not a valid authority"),
            HostMismatch => write!(
                f,
                "host header differs from the authority of the absolute-form target"
            ),
            Malformed => write!(f, "malformed {what} head"),
        }
    }
}

impl std::error::Error for HeadError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Request,
    Response,
}

/// The line scanner shared by both parsers: finds the end of the head, checking line endings,
/// caps and every line once, as soon as it is complete.
///
/// ```text
///  StartLine ──CRLF──► Fields ──CRLF CRLF──► (head complete, scanner reset)
///     │                  │
///     └─ too long: 414   └─ too many / too large: 431
/// ```
#[derive(Debug, Clone, Default)]
struct Scanner {
    /// Bytes of the buffer already examined.
    scanned: usize,
    /// Where the current line starts.
    line_start: usize,
    /// Field lines seen so far.
    fields: usize,
    /// The start line is complete (`line_start` is then past it).
    start_done: bool,
    /// Empty lines consumed before a request line.
    empty_lines: usize,
}

/// The outcome of a completed scan: head length and field count.
struct Scanned {
    len: usize,
    fields: usize,
}

impl Scanner {
    fn scan(
        &mut self,
        buf: &[u8],
        limits: &HeadLimits,
        role: Role,
    ) -> Result<Option<Scanned>, HeadError> {
        let err = |kind, at| Err(HeadError::new(kind, at, role));
        if buf.is_empty() {
            return Ok(None);
        }
        let limit = limits.max_head_bytes;
        let end = buf.len().min(limit);
        loop {
            let found = memchr::memchr2(b'\r', b'\n', &buf[self.scanned..end]);
            let stop = found.map_or(end, |p| self.scanned + p);
            if !self.start_done && role == Role::Request {
                // The request line is visible ASCII and SP only: refuse other bytes (a TLS
                // handshake on the plain port, binary noise) at once instead of at the cap.
                // Only bytes within the cap are looked at, so the first fault in byte order
                // wins however the line was split into reads (a byte past the cap is 414).
                let within = stop.min(limits.max_request_line).max(self.scanned);
                if let Some(p) = buf[self.scanned..within]
                    .iter()
                    .position(|&b| !(0x20..0x7f).contains(&b))
                {
                    let at = self.scanned + p;
                    return err(HeadErrorKind::InvalidRequestLine { found: buf[at] }, at);
                }
                if stop > limits.max_request_line {
                    return err(
                        HeadErrorKind::RequestLineTooLong {
                            limit: limits.max_request_line,
                        },
                        limits.max_request_line,
                    );
                }
            }
            let Some(_) = found else {
                if buf.len() >= limit {
                    return err(HeadErrorKind::HeadTooLarge { limit }, limit);
                }
                self.scanned = end;
                return Ok(None);
            };
            let at = stop;
            if buf[at] == b'\n' {
                return err(HeadErrorKind::BareLf, at);
            }
            if at + 2 > limit {
                return err(HeadErrorKind::HeadTooLarge { limit }, at);
            }
            if at + 1 >= buf.len() {
                // The CR is the last byte we have: wait for the next one.
                self.scanned = at;
                return Ok(None);
            }
            if buf[at + 1] != b'\n' {
                return err(HeadErrorKind::BareCr, at);
            }
            let line = &buf[self.line_start..at];
            if !self.start_done {
                if line.is_empty() {
                    return err(HeadErrorKind::EmptyStartLine, 0);
                }
                match role {
                    Role::Request => check_request_line(line)?,
                    Role::Response => check_status_line(line)?,
                }
                self.start_done = true;
            } else if line.is_empty() {
                let done = Scanned {
                    len: at + 2,
                    fields: self.fields,
                };
                *self = Scanner::default();
                return Ok(Some(done));
            } else {
                self.fields += 1;
                if self.fields > limits.max_headers {
                    return err(
                        HeadErrorKind::TooManyHeaders {
                            limit: limits.max_headers,
                        },
                        self.line_start,
                    );
                }
                check_field_line(line, self.line_start, self.fields == 1, role)?;
            }
            self.line_start = at + 2;
            self.scanned = at + 2;
        }
    }
}

/// Standard methods (RFC 9110 §9, RFC 5789): a case variant of one of them is refused.
const STANDARD_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Bytes refused anywhere in a target even though they are visible ASCII (RFC 3986 excludes
/// them; several servers read `\` as `/`).
fn is_excluded_target_byte(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
    )
}

/// Check a request line (CRLF excluded): everything that can be decided from the line alone.
/// [`is_tchar`] as a table: one load per byte when scanning methods and field names.
static TCHAR: LazyLock<[bool; 256]> = LazyLock::new(|| std::array::from_fn(|b| is_tchar(b as u8)));

/// Target bytes that need no further look: visible ASCII that is neither excluded, `#`
/// (a fragment) nor `%` (an escape, whose two hex digits are checked).
static TARGET_PLAIN: LazyLock<[bool; 256]> = LazyLock::new(|| {
    std::array::from_fn(|b| {
        let b = b as u8;
        (0x21..0x7f).contains(&b) && !is_excluded_target_byte(b) && b != b'#' && b != b'%'
    })
});

/// Length of the token at the start of `s` (bytes up to the first non-`tchar`).
fn token_len(s: &[u8]) -> usize {
    let t = &*TCHAR;
    s.iter()
        .position(|&b| !t[usize::from(b)])
        .unwrap_or(s.len())
}

fn check_request_line(line: &[u8]) -> Result<(), HeadError> {
    let err = |kind, at| Err(HeadError::new(kind, at, Role::Request));
    // method
    let m_end = token_len(line);
    let method = &line[..m_end];
    if m_end == 0 {
        let found = line.first().copied().unwrap_or(b'\r');
        return err(HeadErrorKind::InvalidMethod { found }, 0);
    }
    match line.get(m_end) {
        Some(b' ') => {}
        Some(&found) => return err(HeadErrorKind::InvalidMethod { found }, m_end),
        None => return err(HeadErrorKind::InvalidRequestLine { found: b'\r' }, m_end),
    }
    if let Some(std) = STANDARD_METHODS
        .iter()
        .find(|s| s.eq_ignore_ascii_case(method))
    {
        if *std != method {
            return err(HeadErrorKind::AmbiguousMethod, 0);
        }
        if *std == b"CONNECT" {
            return err(HeadErrorKind::MethodNotImplemented, 0);
        }
    }
    // target
    let t_start = m_end + 1;
    let t_len = line[t_start..]
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(line.len() - t_start);
    let t_end = t_start + t_len;
    if t_len == 0 {
        let found = line.get(t_start).copied().unwrap_or(b'\r');
        return err(HeadErrorKind::InvalidRequestLine { found }, t_start);
    }
    check_target(method, &line[t_start..t_end], t_start)?;
    // version
    if t_end == line.len() {
        // `GET /`: HTTP/0.9 is refused.
        return err(HeadErrorKind::InvalidRequestLine { found: b'\r' }, t_end);
    }
    let v_start = t_end + 1;
    let version = &line[v_start..];
    if version.first() == Some(&b' ') {
        return err(HeadErrorKind::InvalidRequestLine { found: b' ' }, v_start);
    }
    parse_version(version).map_err(|kind| HeadError::new(kind, v_start, Role::Request))?;
    Ok(())
}

/// `HTTP/1.0` or `HTTP/1.1`; another `HTTP/d.d` is unsupported (505), anything else invalid.
fn parse_version(v: &[u8]) -> Result<Version, HeadErrorKind> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Err(HeadErrorKind::UnsupportedVersion)
        }
        _ => Err(HeadErrorKind::InvalidVersion),
    }
}

/// Check the target's bytes and form. `at` is the target's offset in the head.
fn check_target(method: &[u8], target: &[u8], at: usize) -> Result<(), HeadError> {
    let err = |kind, off: usize| Err(HeadError::new(kind, at + off, Role::Request));
    let plain = &*TARGET_PLAIN;
    let mut i = 0;
    while i < target.len() {
        match target[i..].iter().position(|&b| !plain[usize::from(b)]) {
            Some(p) => i += p,
            None => break,
        }
        let b = target[i];
        if b == b'#' {
            return err(HeadErrorKind::FragmentInTarget, i);
        }
        if !(0x21..0x7f).contains(&b) || is_excluded_target_byte(b) {
            return err(HeadErrorKind::InvalidTarget { found: b }, i);
        }
        if b == b'%' {
            for j in 1..=2 {
                match target.get(i + j) {
                    Some(h) if h.is_ascii_hexdigit() => {}
                    Some(&found) => return err(HeadErrorKind::InvalidTarget { found }, i + j),
                    None => return err(HeadErrorKind::InvalidTarget { found: b' ' }, i + j),
                }
            }
            i += 3;
            continue;
        }
        i += 1;
    }
    if target[0] == b'/' {
        return Ok(());
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(())
        } else {
            err(HeadErrorKind::AsteriskForm, 0)
        };
    }
    match split_absolute(target) {
        Some((authority, _)) if is_valid_authority(authority) => Ok(()),
        Some(_) => err(HeadErrorKind::InvalidTarget { found: b'/' }, 0),
        None => err(HeadErrorKind::InvalidTarget { found: target[0] }, 0),
    }
}

/// Split an absolute-form `http[s]://authority[path-abempty][?query]` target into its authority
/// and the rest (`/path?query`, `?query` or empty). `None` if it is not absolute-form.
fn split_absolute(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))?;
    let a_end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some((&rest[..a_end], &rest[a_end..]))
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// `authority = host [ ":" port ]` (RFC 3986 §3.2, without userinfo), strictly: the host is an
/// IP-literal (`[` IPv6 `]`) or a non-empty reg-name / IPv4 of unreserved characters,
/// percent-encodings and sub-delims other than `,` (a comma could be read as a list); the port,
/// if a `:` is present, is 1 to 5 digits within 0-65535.
pub fn is_valid_authority(a: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(inner) = a.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else {
            return false;
        };
        let ok = std::str::from_utf8(&inner[..close])
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        (ok, &inner[close + 1..])
    } else {
        let h_end = a.iter().position(|&b| b == b':').unwrap_or(a.len());
        (is_reg_name(&a[..h_end]), &a[h_end..])
    };
    if !host_ok {
        return false;
    }
    match rest {
        [] => true,
        [b':', port @ ..] => {
            !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        _ => false,
    }
}

fn is_reg_name(h: &[u8]) -> bool {
    if h.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < h.len() {
        match h[i] {
            b'%' => {
                if !(h.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && h.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Check a status line (CRLF excluded): `HTTP/1.x SP 3DIGIT SP reason`, status 100-599,
/// reason of HTAB, SP, VCHAR and obs-text.
fn check_status_line(line: &[u8]) -> Result<(), HeadError> {
    let err = |kind, at| Err(HeadError::new(kind, at, Role::Response));
    let Some(version) = line.get(..8) else {
        return err(HeadErrorKind::InvalidStatusLine, 0);
    };
    parse_version(version).map_err(|kind| HeadError::new(kind, 0, Role::Response))?;
    if line.len() < 13 || line[8] != b' ' || line[12] != b' ' {
        return err(HeadErrorKind::InvalidStatusLine, 8);
    }
    if parse_status(&line[9..12]).is_none() {
        return err(HeadErrorKind::InvalidStatusLine, 9);
    }
    if let Some(p) = find_invalid_value_byte(&line[13..]) {
        return err(HeadErrorKind::InvalidStatusLine, 13 + p);
    }
    Ok(())
}

fn parse_status(d: &[u8]) -> Option<u16> {
    if d.len() != 3 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'));
    (100..=599).contains(&n).then_some(n)
}

/// True for a valid field name: a non-empty token without `_`.
pub fn is_valid_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b) && b != b'_')
}

/// True for a valid field value: no control character but HTAB (bytes 0x80-0xFF allowed).
pub fn is_valid_field_value(value: &[u8]) -> bool {
    value.iter().all(|&b| is_value_byte(b))
}

#[inline]
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Position of the first byte of `v` that may not appear in a field value (a control
/// character other than HTAB, or DEL). Eight bytes at a time: a word is looked at byte by
/// byte only when it holds a byte below 0x20 (a tab, or an error) or a DEL.
fn find_invalid_value_byte(v: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = v.chunks_exact(8);
    for (n, word) in words.by_ref().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_ne_bytes(w);
        // Some byte < 0x20 (exact for "any", as the bound is at most 0x80).
        let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        // Some byte == 0x7f: a zero byte in `w ^ 0x7f..`.
        let x = w ^ (ONES * 0x7f);
        let del = x.wrapping_sub(ONES) & !x & HIGH;
        if below | del != 0 {
            if let Some(p) = word.iter().position(|&b| !is_value_byte(b)) {
                return Some(n * 8 + p);
            }
        }
    }
    let tail = words.remainder();
    let base = v.len() - tail.len();
    tail.iter()
        .position(|&b| !is_value_byte(b))
        .map(|p| base + p)
}

/// Check one field line (CRLF excluded). `at` is its offset in the head.
fn check_field_line(line: &[u8], at: usize, first: bool, role: Role) -> Result<(), HeadError> {
    let err = |kind, off: usize| Err(HeadError::new(kind, at + off, role));
    if matches!(line[0], b' ' | b'\t') {
        let kind = if first {
            HeadErrorKind::WhitespaceBeforeFirstField
        } else {
            HeadErrorKind::ObsFold
        };
        return err(kind, 0);
    }
    let n_end = token_len(line);
    if n_end == 0 {
        return err(HeadErrorKind::InvalidFieldName { found: line[0] }, 0);
    }
    match line.get(n_end) {
        Some(b':') => {}
        Some(b' ' | b'\t') => return err(HeadErrorKind::WhitespaceBeforeColon, n_end),
        Some(&found) => return err(HeadErrorKind::InvalidFieldName { found }, n_end),
        None => return err(HeadErrorKind::InvalidFieldName { found: b'\r' }, n_end),
    }
    if let Some(p) = line[..n_end].iter().position(|&b| b == b'_') {
        return err(HeadErrorKind::UnderscoreInName, p);
    }
    if let Some(p) = find_invalid_value_byte(&line[n_end + 1..]) {
        let off = n_end + 1 + p;
        return err(HeadErrorKind::InvalidFieldValue { found: line[off] }, off);
    }
    Ok(())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Field slots for httparse: on the stack for ordinary heads, on the heap past that.
const STACK_FIELDS: usize = 32;

/// Run `f` with exactly `n` empty httparse field slots.
fn with_slots<'b, R>(n: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> R) -> R {
    if n <= STACK_FIELDS {
        let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
        f(&mut stack[..n])
    } else {
        let mut heap = vec![httparse::EMPTY_HEADER; n];
        f(&mut heap)
    }
}

fn collect_fields(head: &Bytes, parsed: &[httparse::Header<'_>]) -> Vec<Header> {
    parsed
        .iter()
        .map(|h| Header {
            name: head.slice_ref(h.name.as_bytes()),
            value: slice_or_empty(head, trim_ows(h.value)),
        })
        .collect()
}

/// `Bytes::slice_ref` for a subslice of `head`; an empty subslice becomes an empty `Bytes`.
fn slice_or_empty(head: &Bytes, sub: &[u8]) -> Bytes {
    if sub.is_empty() {
        Bytes::new()
    } else {
        head.slice_ref(sub)
    }
}

/// A head type a [`HeadParser`] produces: [`RequestHead`] or [`ResponseHead`].
pub trait ParsedHead: sealed::Sealed + Sized {
    /// Whether this is the response side (limits and errors differ).
    #[doc(hidden)]
    const RESPONSE: bool;
    /// Validate a complete head of `fields` fields and build it.
    #[doc(hidden)]
    fn finish(head: Bytes, fields: usize) -> Result<Self, HeadError>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RequestHead {}
    impl Sealed for super::ResponseHead {}
}

impl ParsedHead for RequestHead {
    const RESPONSE: bool = false;
    fn finish(head: Bytes, fields: usize) -> Result<Self, HeadError> {
        finish_request(head, fields)
    }
}

impl ParsedHead for ResponseHead {
    const RESPONSE: bool = true;
    fn finish(head: Bytes, fields: usize) -> Result<Self, HeadError> {
        finish_response(head, fields)
    }
}

/// Incremental head parser. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HeadParser<H> {
    limits: HeadLimits,
    scanner: Scanner,
    head: PhantomData<fn() -> H>,
}

/// Incremental request head parser.
pub type RequestParser = HeadParser<RequestHead>;

/// Incremental response head parser (`max_request_line` does not apply to responses).
pub type ResponseParser = HeadParser<ResponseHead>;

impl<H: ParsedHead> HeadParser<H> {
    /// A parser enforcing `limits`.
    pub fn new(limits: HeadLimits) -> Self {
        HeadParser {
            limits,
            scanner: Scanner::default(),
            head: PhantomData,
        }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &HeadLimits {
        &self.limits
    }

    /// RFC 9112 §2.2: ignore up to [`HeadLimits::max_leading_empty_lines`] CRLFs before a
    /// request line, consuming them. A lone CR waits for its LF; a bare LF or CR is left for
    /// the scanner, which refuses it.
    fn skip_empty_lines(&mut self, buf: &mut BytesMut) -> Result<(), HeadError> {
        while buf.starts_with(b"\r\n") {
            let limit = self.limits.max_leading_empty_lines;
            if self.scanner.empty_lines >= limit {
                let kind = HeadErrorKind::TooManyEmptyLines { limit };
                return Err(HeadError::new(kind, 0, Role::Request));
            }
            buf.advance(2);
            self.scanner.empty_lines += 1;
        }
        Ok(())
    }

    /// Forget a partly scanned head (for a buffer that was cleared).
    pub fn reset(&mut self) {
        self.scanner = Scanner::default();
    }

    /// Bytes of the head being received that were examined already (for tests and metrics).
    pub fn scanned(&self) -> usize {
        self.scanner.scanned
    }

    /// Parse the head at the front of `buf`. `Ok(None)`: not complete yet, call again with
    /// more bytes appended to the same buffer. On success the head is split off `buf`; later
    /// bytes (a body, a pipelined request) stay in it. An error is terminal. A 1xx response
    /// head is returned like any other: call again for the final response. Empty lines before
    /// a request line (up to [`HeadLimits::max_leading_empty_lines`]) are consumed from `buf`
    /// as they arrive, even when `Ok(None)` is returned.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<H>, HeadError> {
        let role = if H::RESPONSE {
            Role::Response
        } else {
            Role::Request
        };
        if role == Role::Request && self.scanner.scanned == 0 {
            self.skip_empty_lines(buf)?;
        }
        let Some(done) = self.scanner.scan(buf, &self.limits, role)? else {
            return Ok(None);
        };
        let head = buf.split_to(done.len).freeze();
        H::finish(head, done.fields).map(Some)
    }
}

fn finish_request(head: Bytes, fields: usize) -> Result<RequestHead, HeadError> {
    let malformed = || HeadError::new(HeadErrorKind::Malformed, 0, Role::Request);
    let (method, target, version, headers) = with_slots(fields, |slots| {
        let mut req = httparse::Request::new(slots);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return Err(malformed()),
        }
        let (Some(m), Some(t), Some(v)) = (req.method, req.path, req.version) else {
            return Err(malformed());
        };
        let version = if v == 1 {
            Version::Http11
        } else {
            Version::Http10
        };
        Ok((
            head.slice_ref(m.as_bytes()),
            head.slice_ref(t.as_bytes()),
            version,
            collect_fields(&head, req.headers),
        ))
    })?;
    let mut req = RequestHead {
        method,
        target,
        version,
        headers,
        target_authority: None,
    };
    let target_at = req.method.len() + 1;
    let host_err = |kind| Err(HeadError::new(kind, 0, Role::Request));
    if req.count("host") > 1 {
        return host_err(HeadErrorKind::DuplicateHost);
    }
    let host = req.get("host").cloned();
    match &host {
        None if req.version == Version::Http11 => return host_err(HeadErrorKind::MissingHost),
        Some(h) if !is_valid_authority(h) => return host_err(HeadErrorKind::InvalidHost),
        _ => {}
    }
    if let Some((authority, rest)) = split_absolute(&req.target) {
        // RFC 9112 §3.2.2: the target's authority wins over Host; strictly, they must agree.
        if host.is_some_and(|h| !h.eq_ignore_ascii_case(authority)) {
            return host_err(HeadErrorKind::HostMismatch);
        }
        let authority = req.target.slice_ref(authority);
        let origin = match rest.first() {
            Some(b'/') => req.target.slice_ref(rest),
            None => Bytes::from_static(b"/"),
            Some(_) => {
                let mut v = Vec::with_capacity(rest.len() + 1);
                v.push(b'/');
                v.extend_from_slice(rest);
                Bytes::from(v)
            }
        };
        req.target = origin;
        req.target_authority = Some(authority);
    } else if req.target.first() != Some(&b'/') && req.target != "*" {
        // The line checks only let origin-, absolute- and asterisk-form through.
        return Err(HeadError::new(
            HeadErrorKind::InvalidTarget {
                found: req.target.first().copied().unwrap_or(b' '),
            },
            target_at,
            Role::Request,
        ));
    }
    Ok(req)
}

fn finish_response(head: Bytes, fields: usize) -> Result<ResponseHead, HeadError> {
    let malformed = || HeadError::new(HeadErrorKind::Malformed, 0, Role::Response);
    let headers = with_slots(fields, |slots| {
        let mut res = httparse::Response::new(slots);
        match res.parse(&head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return Err(malformed()),
        }
        Ok(collect_fields(&head, res.headers))
    })?;
    // The status line was checked by the scanner: fixed offsets are safe to use.
    let line_end = memchr::memchr(b'\r', &head).ok_or_else(malformed)?;
    let version = parse_version(&head[..8]).map_err(|_| malformed())?;
    let status = parse_status(&head[9..12]).ok_or_else(malformed)?;
    let reason = head.slice(13..line_end);
    Ok(ResponseHead {
        version,
        status,
        reason,
        headers,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_invalid_value_byte_agrees_with_the_byte_rule() {
        let naive = |v: &[u8]| v.iter().position(|&b| !is_value_byte(b));
        // Every byte value at every position of words and tails.
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(find_invalid_value_byte(&v), naive(&v), "{v:?}");
                }
            }
        }
        // Random mixes, weighted towards tabs, DEL, obs-text and controls.
        let mut rng = fastrand::Rng::with_seed(7);
        let pick = [b'\t', 0x7f, 0x80, 0xff, 0x00, 0x1f, 0x20, b'x'];
        for _ in 0..20_000 {
            let v: Vec<u8> = (0..rng.usize(0..40))
                .map(|_| {
                    if rng.u8(..) < 40 {
                        pick[rng.usize(..pick.len())]
                    } else {
                        rng.u8(0x20..0x7f)
                    }
                })
                .collect();
            assert_eq!(find_invalid_value_byte(&v), naive(&v), "{v:?}");
        }
    }

    use super::*;

    /// Parse a whole request head; `Ok(None)` (incomplete) is a test failure.
    fn req(input: &[u8]) -> Result<RequestHead, HeadError> {
        let mut buf = BytesMut::from(input);
        RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .map(|h| h.expect("head incomplete"))
    }

    fn res(input: &[u8]) -> Result<ResponseHead, HeadError> {
        let mut buf = BytesMut::from(input);
        ResponseParser::new(HeadLimits::default())
            .parse(&mut buf)
            .map(|h| h.expect("head incomplete"))
    }

    /// Feed `input` in two pieces split at `at`; return the outcome and the leftover bytes.
    fn req_split(input: &[u8], at: usize) -> (Result<RequestHead, HeadError>, Vec<u8>) {
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::from(&input[..at]);
        let out = match parser.parse(&mut buf) {
            Err(e) => Err(e),
            Ok(Some(h)) => Ok(h),
            Ok(None) => {
                buf.extend_from_slice(&input[at..]);
                let out = parser.parse(&mut buf).map(|h| h.expect("head incomplete"));
                return (out, buf.to_vec());
            }
        };
        buf.extend_from_slice(&input[at..]);
        (out, buf.to_vec())
    }

    const GOOD: &[u8] = b"POST /v1/chat/completions?stream=1 HTTP/1.1\r\n\
        Host: api.example.com:8443\r\n\
        Content-Type: application/json\r\n\
        X-Empty:\r\n\
        X-Pad: \t padded value \t\r\n\
        X-Obs: caf\xc3\xa9\r\n\
        Content-Length: 2\r\n\r\n{}";

    #[test]
    fn parse_request_whole() {
        let mut buf = BytesMut::from(GOOD);
        let head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "POST");
        assert!(head.is_method("POST"));
        assert!(!head.is_method("post"));
        assert_eq!(head.target, "/v1/chat/completions?stream=1");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.headers.len(), 6);
        assert_eq!(head.get("HOST").unwrap(), "api.example.com:8443");
        assert_eq!(head.get("x-empty").unwrap(), "");
        assert_eq!(head.get("x-pad").unwrap(), "padded value");
        assert_eq!(head.get("x-obs").unwrap(), &b"caf\xc3\xa9"[..]);
        assert_eq!(head.count("content-length"), 1);
        assert_eq!(head.target_authority, None);
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn parse_request_leaves_pipelined_request() {
        let two = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::from(&two[..]);
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().target, "/a");
        assert_eq!(&buf[..], b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().target, "/b");
        assert!(buf.is_empty());
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
    }

    #[test]
    fn get_all_and_count_are_case_insensitive() {
        let head = req(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nb: x\r\na: 2\r\n\r\n").unwrap();
        let all: Vec<_> = head.get_all("A").collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(head.count("a"), 2);
        assert_eq!(head.count("c"), 0);
        assert_eq!(head.get("c"), None);
    }

    #[test]
    fn parse_request_split_at_every_byte() {
        let vectors: &[&[u8]] = &[
            GOOD,
            b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\nrest",
            b"OPTIONS * HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad: \ry\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nA_B: 1\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\nbody",
            b"\r\n\r\n\r\n\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"\r\n\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        ];
        for v in vectors {
            let whole = req_split(v, v.len());
            for at in 0..=v.len() {
                let split = req_split(v, at);
                match (&whole, &split) {
                    ((Ok(a), ra), (Ok(b), rb)) => {
                        assert_eq!(a, b, "split at {at}");
                        assert_eq!(ra, rb, "split at {at}");
                    }
                    ((Err(a), _), (Err(b), _)) => assert_eq!(a.kind(), b.kind(), "split at {at}"),
                    other => panic!("split at {at} of {v:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn parse_request_one_byte_per_call_scans_each_byte_once() {
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::new();
        let end = GOOD.len() - 2;
        for (i, &b) in GOOD[..end].iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let out = parser.parse(&mut buf).unwrap();
            if i + 1 < end {
                assert_eq!(out, None);
                // The scanner resumes where it stopped: everything but a trailing CR is done.
                let expect = if b == b'\r' { buf.len() - 1 } else { buf.len() };
                assert_eq!(parser.scanned(), expect, "byte {i}");
            } else {
                assert_eq!(out.unwrap().target, "/v1/chat/completions?stream=1");
            }
        }
    }

    #[test]
    fn parse_request_accepted_forms() {
        let cases: &[(&[u8], &str, Version, Option<&str>)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                "/",
                Version::Http11,
                None,
            ),
            (
                b"GET /a%20b?q=1&r HTTP/1.1\r\nHost: h\r\n\r\n",
                "/a%20b?q=1&r",
                Version::Http11,
                None,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", "/", Version::Http10, None),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
                "*",
                Version::Http11,
                None,
            ),
            (
                b"GET http://h:8080/p?q HTTP/1.1\r\nHost: h:8080\r\n\r\n",
                "/p?q",
                Version::Http11,
                Some("h:8080"),
            ),
            (
                b"GET HTTP://H HTTP/1.1\r\nHost: h\r\n\r\n",
                "/",
                Version::Http11,
                Some("H"),
            ),
            (
                b"GET https://h?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
                "/?x=1",
                Version::Http11,
                Some("h"),
            ),
            (
                b"GET http://h/ HTTP/1.0\r\n\r\n",
                "/",
                Version::Http10,
                Some("h"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
                "/",
                Version::Http11,
                None,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
                "/",
                Version::Http11,
                None,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a-b.c_d~e%41\r\n\r\n",
                "/",
                Version::Http11,
                None,
            ),
            (
                b"PURGE / HTTP/1.1\r\nHost: h\r\n\r\n",
                "/",
                Version::Http11,
                None,
            ),
        ];
        for (input, target, version, authority) in cases {
            let head = req(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(head.target, target.as_bytes(), "{input:?}");
            assert_eq!(head.version, *version, "{input:?}");
            assert_eq!(
                head.target_authority.as_deref(),
                authority.map(str::as_bytes),
                "{input:?}"
            );
        }
    }

    #[test]
    fn parse_request_rejections() {
        use HeadErrorKind::*;
        let cases: &[(&[u8], HeadErrorKind, u16)] = &[
            // line endings
            (b"GET / HTTP/1.1\nHost: h\r\n\r\n", BareLf, 400),
            (b"GET / HTTP/1.1\r\nHost: h\n\r\n", BareLf, 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\n", BareLf, 400),
            (b"GET / HTTP/1.1\rHost: h\r\n\r\n", BareCr, 400),
            (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", BareCr, 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\rx", BareCr, 400),
            (
                b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
                TooManyEmptyLines { limit: 4 },
                400,
            ),
            (b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", BareLf, 400),
            (b"\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", BareLf, 400),
            (b"\r\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", BareCr, 400),
            (b"\r\n\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", BareCr, 400),
            // request line
            (
                b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidRequestLine { found: b' ' },
                400,
            ),
            (
                b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidRequestLine { found: b' ' },
                400,
            ),
            (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", InvalidVersion, 400),
            (
                b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidRequestLine { found: b'\t' },
                400,
            ),
            (
                b" GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidMethod { found: b' ' },
                400,
            ),
            (
                b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidMethod { found: b'(' },
                400,
            ),
            (b"GET /\r\n\r\n", InvalidRequestLine { found: b'\r' }, 400),
            (b"GET\r\n\r\n", InvalidRequestLine { found: b'\r' }, 400),
            (b"get / HTTP/1.1\r\nHost: h\r\n\r\n", AmbiguousMethod, 400),
            (b"Head / HTTP/1.1\r\nHost: h\r\n\r\n", AmbiguousMethod, 400),
            (
                b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
                MethodNotImplemented,
                501,
            ),
            (
                b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
                UnsupportedVersion,
                505,
            ),
            (
                b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
                UnsupportedVersion,
                505,
            ),
            (
                b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
                UnsupportedVersion,
                505,
            ),
            (b"GET / http/1.1\r\nHost: h\r\n\r\n", InvalidVersion, 400),
            (b"GET / HTTP/1.10\r\nHost: h\r\n\r\n", InvalidVersion, 400),
            (b"GET / HTTP/1\r\nHost: h\r\n\r\n", InvalidVersion, 400),
            (
                b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidRequestLine { found: 1 },
                400,
            ),
            (
                b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidRequestLine { found: 0xff },
                400,
            ),
            // target
            (
                b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
                FragmentInTarget,
                400,
            ),
            (
                b"GET /a\\b HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'\\' },
                400,
            ),
            (
                b"GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'"' },
                400,
            ),
            (
                b"GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'z' },
                400,
            ),
            (
                b"GET /% HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b' ' },
                400,
            ),
            (
                b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'a' },
                400,
            ),
            (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", AsteriskForm, 400),
            (
                b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'f' },
                400,
            ),
            (
                b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'/' },
                400,
            ),
            (
                b"GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n",
                InvalidTarget { found: b'/' },
                400,
            ),
            (
                b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
                HostMismatch,
                400,
            ),
            // fields
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA_B: 1\r\n\r\n",
                UnderscoreInName,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA : 1\r\n\r\n",
                WhitespaceBeforeColon,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA\t: 1\r\n\r\n",
                WhitespaceBeforeColon,
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost: h\r\n x: 1\r\n\r\n", ObsFold, 400),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\tmore\r\n\r\n",
                ObsFold,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
                WhitespaceBeforeFirstField,
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n",
                InvalidFieldName { found: b':' },
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
                InvalidFieldName { found: b'\r' },
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA(b: 1\r\n\r\n",
                InvalidFieldName { found: b'(' },
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\x002\r\n\r\n",
                InvalidFieldValue { found: 0 },
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\x7f\r\n\r\n",
                InvalidFieldValue { found: 0x7f },
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nA: \x1b[1m\r\n\r\n",
                InvalidFieldValue { found: 0x1b },
                400,
            ),
            // host
            (b"GET / HTTP/1.1\r\n\r\n", MissingHost, 400),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                DuplicateHost,
                400,
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
                DuplicateHost,
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", InvalidHost, 400),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", InvalidHost, 400),
        ];
        for (input, kind, status) in cases {
            let e = req(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.kind(), *kind, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(e.status(), *status, "{:?}", String::from_utf8_lossy(input));
            assert!(!e.is_response());
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
        }
    }

    /// RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request line.
    /// Up to `max_leading_empty_lines` CRLFs are consumed and ignored; the head starts after
    /// them. (These used to be refused with `EmptyStartLine`.)
    #[test]
    fn parse_request_ignores_a_few_empty_lines_before_the_request_line() {
        for n in 1..=4 {
            let mut input = b"\r\n".repeat(n);
            input.extend_from_slice(b"POST /v1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}");
            let mut buf = BytesMut::from(&input[..]);
            let head = RequestParser::new(HeadLimits::default())
                .parse(&mut buf)
                .unwrap()
                .unwrap();
            assert_eq!(head.target, "/v1", "{n} empty lines");
            assert_eq!(&buf[..], b"{}");
        }
        // Between pipelined requests (a client that ends a body with an extra CRLF).
        let two = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::from(&two[..]);
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().target, "/a");
        buf.advance(1); // the body
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().target, "/b");
        // The count is per head, and consumed lines leave the buffer as they arrive.
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::new();
        for _ in 0..4 {
            buf.extend_from_slice(b"\r");
            assert_eq!(parser.parse(&mut buf).unwrap(), None);
            buf.extend_from_slice(b"\n");
            assert_eq!(parser.parse(&mut buf).unwrap(), None);
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"\r\n");
        let e = parser.parse(&mut buf).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (HeadErrorKind::TooManyEmptyLines { limit: 4 }, 400)
        );
        assert_eq!(
            e.to_string(),
            "too many empty lines before the request line: over the limit of 4"
        );
        // A limit of 0 is the old strictness.
        let strict = HeadLimits {
            max_leading_empty_lines: 0,
            ..HeadLimits::default()
        };
        let e = RequestParser::new(strict)
            .parse(&mut BytesMut::from(
                &b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            ))
            .unwrap_err();
        assert_eq!(e.kind(), HeadErrorKind::TooManyEmptyLines { limit: 0 });
        // Not for responses: a status line comes first.
        assert_eq!(
            res(b"\r\nHTTP/1.1 200 OK\r\n\r\n").unwrap_err().kind(),
            HeadErrorKind::EmptyStartLine
        );
    }

    #[test]
    fn parse_request_limits() {
        let limits = HeadLimits {
            max_head_bytes: 200,
            max_headers: 3,
            max_request_line: 40,
            ..HeadLimits::default()
        };
        let parse = |input: &[u8]| {
            let mut buf = BytesMut::from(input);
            RequestParser::new(limits).parse(&mut buf)
        };
        // A request line at the cap is fine, one byte more is 414, even before its CRLF.
        let at_cap = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(40 - 14));
        assert!(parse(at_cap.as_bytes()).unwrap().is_some());
        let over = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(40 - 13));
        let e = parse(over.as_bytes()).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (HeadErrorKind::RequestLineTooLong { limit: 40 }, 414)
        );
        let e = parse(format!("GET /{}", "a".repeat(60)).as_bytes()).unwrap_err();
        assert_eq!(e.status(), 414);
        // A bad byte past the cap: 414 however the line arrives (found by the request_head
        // fuzz target: whole it was InvalidRequestLine, a byte per read RequestLineTooLong).
        let late = format!("GET /{}\x03 HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(50));
        for at in 0..=late.len() {
            let mut parser = RequestParser::new(limits);
            let mut buf = BytesMut::from(&late.as_bytes()[..at]);
            let e = match parser.parse(&mut buf) {
                Err(e) => e,
                Ok(_) => {
                    buf.extend_from_slice(&late.as_bytes()[at..]);
                    parser.parse(&mut buf).unwrap_err()
                }
            };
            assert_eq!(
                (e.kind(), e.offset()),
                (HeadErrorKind::RequestLineTooLong { limit: 40 }, 40),
                "split at {at}"
            );
        }
        // A bad byte within the cap is reported as such.
        let early = format!("GET /{}\x03{} HTTP/1.1\r\n", "a".repeat(10), "a".repeat(50));
        let e = parse(early.as_bytes()).unwrap_err();
        assert_eq!(
            (e.kind(), e.offset()),
            (HeadErrorKind::InvalidRequestLine { found: 3 }, 15)
        );
        // Field count.
        let three = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse(three).unwrap().is_some());
        let four = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n";
        let e = parse(four).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (HeadErrorKind::TooManyHeaders { limit: 3 }, 431)
        );
        // Head bytes: exactly at the cap is fine, past it 431 without waiting for the end.
        let head = |n: usize| {
            let mut s = b"GET / HTTP/1.1\r\nHost: h\r\nA: ".to_vec();
            s.resize(n - 4, b'x');
            s.extend_from_slice(b"\r\n\r\n");
            s
        };
        assert!(parse(&head(200)).unwrap().is_some());
        let e = parse(&head(201)).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (HeadErrorKind::HeadTooLarge { limit: 200 }, 431)
        );
        let e = parse(&head(201)[..200]).unwrap_err();
        assert_eq!(e.status(), 431);
        assert_eq!(parse(&head(201)[..199]).unwrap(), None);
    }

    #[test]
    fn parse_response_accepted_forms() {
        let cases: &[(&[u8], Version, u16, &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\n\r\n", Version::Http11, 200, b"OK"),
            (
                b"HTTP/1.0 404 Not Found\r\n\r\n",
                Version::Http10,
                404,
                b"Not Found",
            ),
            (b"HTTP/1.1 204 \r\n\r\n", Version::Http11, 204, b""),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Version::Http11,
                100,
                b"Continue",
            ),
            (
                b"HTTP/1.1 599 x\ty \xe9\r\n\r\n",
                Version::Http11,
                599,
                b"x\ty \xe9",
            ),
        ];
        for (input, version, status, reason) in cases {
            let head = res(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(head.version, *version);
            assert_eq!(head.status, *status);
            assert_eq!(&head.reason[..], *reason);
        }
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A:  v \r\n\r\n5\r\nhello"[..],
        );
        let head = ResponseParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(head.get("transfer-encoding").unwrap(), "chunked");
        assert_eq!(head.get("x-a").unwrap(), "v");
        assert_eq!(&buf[..], b"5\r\nhello");
    }

    #[test]
    fn parse_response_rejections() {
        use HeadErrorKind::*;
        let cases: &[(&[u8], HeadErrorKind)] = &[
            (b"HTTP/1.1 200 OK\n\r\n", BareLf),
            (b"HTTP/1.1 200 OK\r\nA: 1\rB: 2\r\n\r\n", BareCr),
            (b"HTTP/1.1 200\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1  200 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 099 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 600 OK\r\n\r\n", InvalidStatusLine),
            (b"HTTP/1.1 200 O\x00K\r\n\r\n", InvalidStatusLine),
            (b"HTTP/2 200 OK\r\n\r\n", InvalidVersion),
            (b"HTTP/2.0 200 OK\r\n\r\n", UnsupportedVersion),
            (b"HTTP/1.1\r\n\r\n", InvalidStatusLine),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", EmptyStartLine),
            (b"HTTP/1.1 200 OK\r\nA : 1\r\n\r\n", WhitespaceBeforeColon),
            (b"HTTP/1.1 200 OK\r\nA: 1\r\n 2\r\n\r\n", ObsFold),
            (b"HTTP/1.1 200 OK\r\nA_B: 1\r\n\r\n", UnderscoreInName),
            (
                b"HTTP/1.1 200 OK\r\nA: \x01\r\n\r\n",
                InvalidFieldValue { found: 1 },
            ),
        ];
        for (input, kind) in cases {
            let e = res(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(e.kind(), *kind, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(e.status(), 502);
            assert!(e.is_response());
        }
        let limits = HeadLimits {
            max_head_bytes: 64,
            max_headers: 2,
            max_request_line: 8,
            ..HeadLimits::default()
        };
        let parse = |input: &[u8]| {
            let mut buf = BytesMut::from(input);
            ResponseParser::new(limits).parse(&mut buf)
        };
        // The request-line cap does not apply to a status line.
        assert!(parse(b"HTTP/1.1 200 A long reason\r\n\r\n")
            .unwrap()
            .is_some());
        let e = parse(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").unwrap_err();
        assert_eq!(e.kind(), TooManyHeaders { limit: 2 });
        let e = parse(&[b'x'; 65]).unwrap_err();
        assert_eq!(e.kind(), HeadTooLarge { limit: 64 });
    }

    #[test]
    fn parse_response_split_at_every_byte() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\n\r\nabc";
        let mut whole = BytesMut::from(&input[..]);
        let expect = ResponseParser::new(HeadLimits::default())
            .parse(&mut whole)
            .unwrap()
            .unwrap();
        for at in 0..=input.len() {
            let mut parser = ResponseParser::new(HeadLimits::default());
            let mut buf = BytesMut::from(&input[..at]);
            let first = parser.parse(&mut buf).unwrap();
            let head = match first {
                Some(h) => h,
                None => {
                    buf.extend_from_slice(&input[at..]);
                    parser.parse(&mut buf).unwrap().unwrap()
                }
            };
            assert_eq!(head, expect, "split at {at}");
        }
    }

    #[test]
    fn parse_response_interim_then_final() {
        let mut parser = ResponseParser::new(HeadLimits::default());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"[..],
        );
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().status, 100);
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().status, 200);
        assert_eq!(&buf[..], b"x");
    }

    #[test]
    fn parse_empty_buffer_waits_whatever_the_limits() {
        let limits = HeadLimits {
            max_head_bytes: 0,
            max_headers: 0,
            max_request_line: 0,
            ..HeadLimits::default()
        };
        assert_eq!(
            RequestParser::new(limits)
                .parse(&mut BytesMut::new())
                .unwrap(),
            None
        );
        assert_eq!(
            ResponseParser::new(limits)
                .parse(&mut BytesMut::new())
                .unwrap(),
            None
        );
        let e = RequestParser::new(limits)
            .parse(&mut BytesMut::from(&b"G"[..]))
            .unwrap_err();
        assert_eq!(e.status(), 431);
    }

    #[test]
    fn parse_many_fields_uses_heap_slots() {
        let mut s = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..80 {
            s.extend_from_slice(format!("X-F{i}: {i}\r\n").as_bytes());
        }
        s.extend_from_slice(b"\r\n");
        let head = req(&s).unwrap();
        assert_eq!(head.headers.len(), 81);
        assert_eq!(head.get("x-f79").unwrap(), "79");
    }

    #[test]
    fn reset_forgets_partial_head() {
        let mut parser = RequestParser::new(HeadLimits::default());
        let mut buf = BytesMut::from(&b"GET / HT"[..]);
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        parser.reset();
        assert_eq!(parser.scanned(), 0);
        let mut buf = BytesMut::from(&b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
        assert_eq!(parser.parse(&mut buf).unwrap().unwrap().target, "/x");
    }

    /// Outcome of parsing `input` split at `at`, for comparison: the head's Debug text and the
    /// leftover bytes, or the error kind.
    fn outcome_split(input: &[u8], at: usize, response: bool) -> Result<String, HeadErrorKind> {
        let limits = HeadLimits {
            max_head_bytes: 256,
            max_headers: 6,
            max_request_line: 64,
            ..HeadLimits::default()
        };
        let mut rp = RequestParser::new(limits);
        let mut sp = ResponseParser::new(limits);
        let mut parse = |buf: &mut BytesMut| -> Result<Option<String>, HeadError> {
            if response {
                Ok(sp.parse(buf)?.map(|h| format!("{h:?}")))
            } else {
                Ok(rp.parse(buf)?.map(|h| format!("{h:?}")))
            }
        };
        let mut buf = BytesMut::from(&input[..at]);
        let first = parse(&mut buf).map_err(|e| e.kind())?;
        let head = match first {
            Some(h) => {
                buf.extend_from_slice(&input[at..]);
                Some(h)
            }
            None => {
                buf.extend_from_slice(&input[at..]);
                parse(&mut buf).map_err(|e| e.kind())?
            }
        };
        Ok(format!("{head:?} {:?}", &buf[..]))
    }

    proptest::proptest! {
        #[test]
        fn parse_any_split_gives_the_same_outcome(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                &b"GET "[..], b"POST ", b"HTTP/1.1 ", b"200 OK", b"/", b"/a?b=c", b"http://h",
                b" ", b"  ", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\r\n", b"\r\n", b"\r",
                b"\n", b"Host: h", b"Host: h:80", b"X-A: v", b"X_B: v", b"A :v", b"\t", b"#",
                b":", b"\x00", b"\xff", b"*", b"OPTIONS ",
            ]), 0..24),
            at_frac in 0.0f64..=1.0,
            response in proptest::bool::ANY,
        ) {
            let input: Vec<u8> = pieces.concat();
            let at = ((input.len() as f64) * at_frac) as usize;
            let whole = outcome_split(&input, input.len(), response);
            let split = outcome_split(&input, at.min(input.len()), response);
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn debug_redacts_credentials() {
        let head = req(
            b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sk-secret\r\n\
              X-Api-Key: sk-other\r\nX-Plain: shown\r\n\r\n",
        )
        .unwrap();
        let dbg = format!("{head:?}");
        assert!(
            !dbg.contains("sk-secret") && !dbg.contains("sk-other"),
            "{dbg}"
        );
        assert!(dbg.contains("shown") && dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn authority_syntax() {
        for ok in [
            "a",
            "a:1",
            "a.b-c:65535",
            "[::1]",
            "[2001:db8::1]:80",
            "1.2.3.4:0",
        ] {
            assert!(is_valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", ":80", "a:", "a:123456", "[::1]x", "[v1.x]", "a b", "a@b", "a,b", "%4",
        ] {
            assert!(!is_valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
