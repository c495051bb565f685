//! How a message body is delimited (RFC 9112 §6.3), decided once per message.
//!
//! [`request_meta`] and [`response_meta`] are pure functions of a parsed head: they say how the
//! body is framed, whether the connection may be reused and (for requests) whether the client
//! waits for `100 Continue`. Where RFC 9112 lets a recipient choose, they take the strict side
//! (see the project's protocol rules): `Content-Length` with `Transfer-Encoding`, several
//! `Transfer-Encoding` fields, duplicate `Content-Length` fields (even equal ones), comma lists,
//! signs and overflow are all refused rather than reconciled.
//!
//! One place where requests and responses differ on purpose: a response whose
//! `Transfer-Encoding` does not end in `chunked` (`chunked, deflate`, `gzip`, an unknown coding
//! such as `chunkedchunked`) is read until the connection closes, as RFC 9112 §6.3 rule 4 says,
//! and flagged [`ResponseMeta::transfer_coded`]: its bytes are still transfer-coded, so they
//! must not be forwarded as if they were the content. A request with such a field is refused
//! (400), because a request cannot be delimited by a close (§6.3 rule 4, and the project's
//! protocol rules 1-2).
//!
//! ```
//! use bytes::BytesMut;
//! use chunkgate::codec::framing::{request_meta, BodyFraming};
//! use chunkgate::codec::head::{HeadLimits, RequestParser};
//!
//! let mut buf = BytesMut::from(
//!     &b"POST /v1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
//! );
//! let head = RequestParser::new(HeadLimits::default()).parse(&mut buf).unwrap().unwrap();
//! let meta = request_meta(&head).unwrap();
//! assert_eq!(meta.framing, BodyFraming::Chunked);
//! assert!(meta.keep_alive);
//! ```

use std::fmt;

use bytes::Bytes;

use crate::codec::chunked::is_tchar;
use crate::codec::head::{Header, RequestHead, ResponseHead, Version};

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (`Content-Length`; 0 is a present but empty body).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the connection closes (responses only).
    Close,
}

impl BodyFraming {
    /// True if a body may follow the head (`Length(n > 0)`, `Chunked`, `Close`).
    pub fn has_body(&self) -> bool {
        !matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// What the proxy needs to know about a request besides its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    /// How the request body is delimited (never [`BodyFraming::Close`]).
    pub framing: BodyFraming,
    /// The client allows its connection to be reused after this exchange.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` on HTTP/1.1 with a body to send, and waits for
    /// `100 Continue` (or a final answer) before sending it. An expectation on HTTP/1.0 is
    /// ignored (RFC 9110 §10.1.1).
    pub expect_continue: bool,
}

/// What the proxy needs to know about a response besides its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMeta {
    /// How the response body is delimited.
    pub framing: BodyFraming,
    /// The upstream connection may be reused after this response.
    pub keep_alive: bool,
    /// The body is read until close because its `Transfer-Encoding` does not end in
    /// `chunked` (RFC 9112 §6.3 rule 4), so its bytes are still transfer-coded (`deflate`,
    /// `gzip`, a coding nobody knows). Removing `Transfer-Encoding` and re-framing such a body
    /// would hand the client coded bytes as if they were the content; `framing` is then
    /// [`BodyFraming::Close`].
    pub transfer_coded: bool,
}

/// What was wrong with a message's framing fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingErrorKind {
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthAndTransferEncoding,
    /// More than one `Transfer-Encoding` field.
    MultipleTransferEncoding,
    /// `Transfer-Encoding` whose final coding is not `chunked`.
    ChunkedNotLast,
    /// `chunked` more than once.
    ChunkedRepeated,
    /// `chunked` with parameters.
    ChunkedWithParams,
    /// An empty or syntactically broken `Transfer-Encoding` list.
    InvalidTransferEncoding,
    /// A transfer coding other than `chunked` (501 on a request).
    UnsupportedTransferCoding,
    /// `Transfer-Encoding` on an HTTP/1.0 message.
    TransferEncodingOnHttp10,
    /// A `Content-Length` that is not `1*DIGIT`.
    InvalidContentLength,
    /// More than one `Content-Length` field (even with equal values).
    MultipleContentLength,
    /// A `Content-Length` over `u64::MAX`.
    ContentLengthOverflow,
    /// Content on a GET or HEAD request.
    BodyNotAllowed,
    /// A response that must not have content (1xx, 204) declares some.
    UnexpectedResponseBody,
    /// An `Expect` other than `100-continue` (417).
    UnsupportedExpectation,
    /// `CONNECT` (501: no tunnels).
    ConnectNotSupported,
    /// An `Upgrade` request (501: no protocol switching).
    UpgradeNotSupported,
}

/// A framing error: its kind and whether it was in a request or a response.
///
/// Framing errors are terminal for the connection the message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError {
    kind: FramingErrorKind,
    response: bool,
}

impl FramingError {
    fn request(kind: FramingErrorKind) -> Self {
        FramingError {
            kind,
            response: false,
        }
    }

    fn response(kind: FramingErrorKind) -> Self {
        FramingError {
            kind,
            response: true,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> FramingErrorKind {
        self.kind
    }

    /// True if the faulty message was a response (from an upstream).
    pub fn is_response(&self) -> bool {
        self.response
    }

    /// The status to answer with: for a request 400, 417 (expectation) or 501 (transfer
    /// coding, `CONNECT`, `Upgrade`); for a response always 502.
    pub fn status(&self) -> u16 {
        use FramingErrorKind::*;
        if self.response {
            return 502;
        }
        match self.kind {
            UnsupportedTransferCoding | ConnectNotSupported | UpgradeNotSupported => 501,
            UnsupportedExpectation => 417,
            _ => 400,
        }
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FramingErrorKind::*;
        let what = if self.response { "response" } else { "request" };
        let msg = match self.kind {
            ContentLengthAndTransferEncoding => "both content-length and transfer-encoding",
            MultipleTransferEncoding => "more than one transfer-encoding field",
            ChunkedNotLast => "transfer-encoding does not end in chunked",
            ChunkedRepeated => "chunked applied more than once",
            ChunkedWithParams => "chunked with parameters",
            InvalidTransferEncoding => "invalid transfer-encoding list",
            UnsupportedTransferCoding => "unsupported transfer coding: only chunked is handled",
            TransferEncodingOnHttp10 => "transfer-encoding on an http/1.0 message",
            InvalidContentLength => "invalid content-length: expected digits only",
            MultipleContentLength => "more than one content-length field",
            ContentLengthOverflow => "content-length overflow",
            BodyNotAllowed => "content on a get or head request",
            UnexpectedResponseBody => "content declared on a 1xx or 204 response",
            UnsupportedExpectation => "unsupported expectation: only 100-continue",
            ConnectNotSupported => "connect is not supported",
            UpgradeNotSupported => "upgrade is not supported",
        };
        write!(f, "invalid {what} framing: {msg}")
    }
}

impl std::error::Error for FramingError {}

/// Iterate the non-empty, OWS-trimmed elements of a comma-separated field value list.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
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

/// True if any of `values` (comma lists) holds the token `token` (case-insensitive).
fn has_token<'a>(mut values: impl Iterator<Item = &'a Bytes>, token: &[u8]) -> bool {
    values.any(|v| list_elements(v).any(|e| e.eq_ignore_ascii_case(token)))
}

/// Parse a `Content-Length` value strictly: `1*DIGIT` after OWS trim, checked arithmetic.
fn parse_content_length(v: &[u8]) -> Result<u64, FramingErrorKind> {
    let v = trim_ows(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(FramingErrorKind::InvalidContentLength);
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(FramingErrorKind::ContentLengthOverflow)
    })
}

/// The one `Content-Length` of a message, if any: several fields (even equal) are an error.
fn content_length<'a>(
    mut values: impl Iterator<Item = &'a Bytes>,
) -> Result<Option<u64>, FramingErrorKind> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(FramingErrorKind::MultipleContentLength);
    }
    parse_content_length(first).map(Some)
}

/// Whether a `Transfer-Encoding` list ends in `chunked` (with or without parameters), after
/// checking the list's syntax: every element a coding name (a token), parameters only after a
/// `;`, at least one element.
fn ends_in_chunked(value: &[u8]) -> Result<bool, FramingErrorKind> {
    let mut last_chunked = None;
    for element in list_elements(value) {
        let name_end = element
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(element.len());
        let (name, params) = element.split_at(name_end);
        let params = trim_ows(params);
        if name.is_empty() || (!params.is_empty() && params[0] != b';') {
            return Err(FramingErrorKind::InvalidTransferEncoding);
        }
        last_chunked = Some(name.eq_ignore_ascii_case(b"chunked"));
    }
    last_chunked.ok_or(FramingErrorKind::InvalidTransferEncoding)
}

/// Check a `Transfer-Encoding` list: its final coding must be a bare `chunked` that appears
/// once, and no other coding may be present.
fn check_transfer_encoding(value: &[u8]) -> Result<(), FramingErrorKind> {
    let mut last_chunked = false;
    let mut chunked_seen = false;
    let mut other_seen = false;
    let mut any = false;
    for element in list_elements(value) {
        any = true;
        let name_end = element
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(element.len());
        let (name, params) = element.split_at(name_end);
        if name.is_empty() {
            return Err(FramingErrorKind::InvalidTransferEncoding);
        }
        let params = trim_ows(params);
        if !params.is_empty() && params[0] != b';' {
            return Err(FramingErrorKind::InvalidTransferEncoding);
        }
        if name.eq_ignore_ascii_case(b"chunked") {
            if chunked_seen {
                return Err(FramingErrorKind::ChunkedRepeated);
            }
            if !params.is_empty() {
                return Err(FramingErrorKind::ChunkedWithParams);
            }
            chunked_seen = true;
            last_chunked = true;
        } else {
            other_seen = true;
            last_chunked = false;
        }
    }
    if !any {
        return Err(FramingErrorKind::InvalidTransferEncoding);
    }
    if !last_chunked {
        return Err(FramingErrorKind::ChunkedNotLast);
    }
    if other_seen {
        return Err(FramingErrorKind::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Which message [`transfer_encoded`] looks at: rule 4 of RFC 9112 §6.3 differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// RFC 9112 §6.3 steps 3-4 for a message that has `Transfer-Encoding` (`te_fields` fields, the
/// first with value `te`): refused together with `Content-Length`, on HTTP/1.0 (§6.1), in
/// several fields, or with a broken list. A response whose final coding is not `chunked` is
/// read until close (step 4); a request's must be `chunked` (the only coding decoded).
fn transfer_encoded(
    side: Side,
    version: Version,
    te_fields: usize,
    cl_fields: usize,
    te: &[u8],
) -> Result<BodyFraming, FramingErrorKind> {
    use FramingErrorKind::*;
    if cl_fields > 0 {
        return Err(ContentLengthAndTransferEncoding);
    }
    if version == Version::Http10 {
        return Err(TransferEncodingOnHttp10);
    }
    if te_fields > 1 {
        return Err(MultipleTransferEncoding);
    }
    if side == Side::Response && !ends_in_chunked(te)? {
        return Ok(BodyFraming::Close);
    }
    check_transfer_encoding(te)?;
    Ok(BodyFraming::Chunked)
}

/// Decide how a request body is delimited, and whether the connection persists.
///
/// RFC 9112 §6.3 in order, applied to a request (the strict choices are marked):
/// 1-2. (responses only: HEAD, 1xx, 204, 304 and CONNECT 2xx.) `CONNECT` itself is refused
///      here with 501, and so is an `Upgrade` request: no tunnels.
/// 3.   `Transfer-Encoding` together with `Content-Length`: the RFC lets a server process it
///      by `Transfer-Encoding`; strictly, 400.
/// 4.   `Transfer-Encoding` whose final coding is not `chunked`: 400. Strictly also: several
///      `Transfer-Encoding` fields, `chunked` repeated or with parameters (400), any coding
///      besides `chunked` (501, RFC 9112 §6.1), and any `Transfer-Encoding` on HTTP/1.0 (400,
///      RFC 9112 §6.1: faulty framing).
/// 5.   A `Content-Length` that is not exactly one `1*DIGIT` value: 400 (no lists, no
///      duplicates even when equal, no sign, no overflow).
/// 6.   A valid `Content-Length`: that many bytes.
/// 7.   Neither: no body.
///
/// Then RFC 9110: content on GET or HEAD is refused (400; `Content-Length: 0` is fine), and an
/// expectation other than `100-continue` is 417 (§10.1.1).
pub fn request_meta(head: &RequestHead) -> Result<RequestMeta, FramingError> {
    use FramingErrorKind::*;
    let fail = |k| Err(FramingError::request(k));

    // Steps 1-2 do not apply to requests; refuse what would need a tunnel.
    if head.method.eq_ignore_ascii_case(b"CONNECT") {
        return fail(ConnectNotSupported);
    }
    if head.count("upgrade") > 0 {
        return fail(UpgradeNotSupported);
    }
    let no_body_method = head.is_method("GET") || head.is_method("HEAD");
    let te_fields = head.count("transfer-encoding");
    let cl_fields = head.count("content-length");

    let framing = if te_fields > 0 {
        // Steps 3-4.
        let te = head.get("transfer-encoding").map_or(&[][..], |v| &v[..]);
        let framing = match transfer_encoded(Side::Request, head.version, te_fields, cl_fields, te)
        {
            Ok(f) => f,
            Err(k) => return fail(k),
        };
        if no_body_method {
            return fail(BodyNotAllowed);
        }
        framing
    } else {
        // Steps 5-7.
        match content_length(head.get_all("content-length")) {
            Err(k) => return fail(k),
            Ok(Some(n)) if n > 0 && no_body_method => return fail(BodyNotAllowed),
            Ok(Some(n)) => BodyFraming::Length(n),
            Ok(None) => BodyFraming::None,
        }
    };

    // RFC 9110 §10.1.1: 100-continue is the only expectation; others are 417.
    let mut expects = false;
    for value in head.get_all("expect") {
        let mut any = false;
        for element in list_elements(value) {
            any = true;
            if !element.eq_ignore_ascii_case(b"100-continue") {
                return fail(UnsupportedExpectation);
            }
        }
        if !any {
            return fail(UnsupportedExpectation);
        }
        expects = true;
    }
    let expect_continue = expects && head.version == Version::Http11 && framing.has_body();

    let keep_alive = keep_alive(head.version, &head.headers);
    Ok(RequestMeta {
        framing,
        keep_alive,
        expect_continue,
    })
}

/// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
fn keep_alive(version: Version, headers: &[Header]) -> bool {
    let connection = || {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(b"connection"))
            .map(|h| &h.value)
    };
    if has_token(connection(), b"close") {
        return false;
    }
    match version {
        Version::Http11 => true,
        Version::Http10 => has_token(connection(), b"keep-alive"),
    }
}

/// Decide how a response body is delimited, given the method of the request it answers.
///
/// RFC 9112 §6.3 in order, applied to a response (the strict choices are marked):
/// 1. A response to HEAD, and any 1xx, 204 or 304: no body, whatever the fields say. Strictly,
///    a 1xx or 204 that declares content (`Transfer-Encoding`, or a non-zero
///    `Content-Length`, which RFC 9110 §8.6 forbids there) is an error: the bytes after it
///    could not be trusted as the next response.
/// 2. A 2xx answer to CONNECT: chunkgate never sends CONNECT, so this is an error.
/// 3. `Transfer-Encoding` with `Content-Length`: the RFC lets a client go by
///    `Transfer-Encoding`; strictly, an error.
/// 4. `Transfer-Encoding` ending in `chunked`: chunked. A final coding other than `chunked`
///    (`chunked, deflate`, `gzip`, `chunkedchunked`): read until close, as the RFC says, with
///    [`ResponseMeta::transfer_coded`] set. Strictly: another coding before a final `chunked`
///    (`gzip, chunked`), `chunked` repeated or with parameters, a broken list, several fields,
///    or `Transfer-Encoding` on HTTP/1.0 is an error.
/// 5. A `Content-Length` that is not exactly one `1*DIGIT` value: an error.
/// 6. A valid `Content-Length`: that many bytes.
/// 8. Otherwise: read until the connection closes.
///
/// Every error here is the upstream's fault: [`FramingError::status`] is 502.
pub fn response_meta(
    request_method: &[u8],
    head: &ResponseHead,
) -> Result<ResponseMeta, FramingError> {
    use FramingErrorKind::*;
    let fail = |k| Err(FramingError::response(k));
    let status = head.status;
    let te_fields = head.count("transfer-encoding");
    let conn_keep_alive = keep_alive(head.version, &head.headers);

    // Step 1.
    if (100..200).contains(&status) || status == 204 {
        if te_fields > 0 {
            return fail(UnexpectedResponseBody);
        }
        match content_length(head.get_all("content-length")) {
            Err(k) => return fail(k),
            Ok(Some(n)) if n > 0 => return fail(UnexpectedResponseBody),
            Ok(_) => {}
        }
        return Ok(ResponseMeta {
            framing: BodyFraming::None,
            keep_alive: conn_keep_alive,
            transfer_coded: false,
        });
    }
    if request_method == b"HEAD" || status == 304 {
        return Ok(ResponseMeta {
            framing: BodyFraming::None,
            keep_alive: conn_keep_alive,
            transfer_coded: false,
        });
    }
    // Step 2.
    if request_method.eq_ignore_ascii_case(b"CONNECT") {
        return fail(ConnectNotSupported);
    }
    let framing = if te_fields > 0 {
        // Steps 3-4.
        let te = head.get("transfer-encoding").map_or(&[][..], |v| &v[..]);
        let cl_fields = head.count("content-length");
        match transfer_encoded(Side::Response, head.version, te_fields, cl_fields, te) {
            Ok(f) => f,
            Err(k) => return fail(k),
        }
    } else {
        // Steps 5, 6 and 8.
        match content_length(head.get_all("content-length")) {
            Err(k) => return fail(k),
            Ok(Some(n)) => BodyFraming::Length(n),
            Ok(None) => BodyFraming::Close,
        }
    };
    Ok(ResponseMeta {
        framing,
        keep_alive: conn_keep_alive && framing != BodyFraming::Close,
        transfer_coded: te_fields > 0 && framing == BodyFraming::Close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::head::{HeadLimits, RequestParser, ResponseParser};
    use bytes::BytesMut;
    use BodyFraming::*;
    use FramingErrorKind::*;

    fn request(head: &str) -> Result<RequestMeta, FramingError> {
        let mut buf = BytesMut::from(format!("{head}\r\n").as_bytes());
        let head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap_or_else(|e| panic!("{head:?}: {e}"))
            .unwrap();
        request_meta(&head)
    }

    fn response(method: &str, head: &str) -> Result<ResponseMeta, FramingError> {
        let mut buf = BytesMut::from(format!("{head}\r\n").as_bytes());
        let head = ResponseParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap_or_else(|e| panic!("{head:?}: {e}"))
            .unwrap();
        response_meta(method.as_bytes(), &head)
    }

    /// One row per framing and field rule of the protocol notes: request head (without the final
    /// blank line), then the expected framing, keep-alive and expect-continue, or error and status.
    #[test]
    fn request_meta_table() {
        type Expect = Result<(BodyFraming, bool, bool), (FramingErrorKind, u16)>;
        let h = "Host: h\r\n";
        let rows: Vec<(String, Expect)> = vec![
            // §6.3 rule 7: no framing fields, no body.
            (format!("GET / HTTP/1.1\r\n{h}"), Ok((None, true, false))),
            (format!("POST / HTTP/1.1\r\n{h}"), Ok((None, true, false))),
            // Rule 6: one valid Content-Length; leading zeros and OWS are fine.
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 42\r\n"), Ok((Length(42), true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 007\r\n"), Ok((Length(7), true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length:\t5 \r\n"), Ok((Length(5), true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 18446744073709551615\r\n"), Ok((Length(u64::MAX), true, false))),
            (format!("GET / HTTP/1.1\r\n{h}Content-Length: 0\r\n"), Ok((Length(0), true, false))),
            (format!("HEAD / HTTP/1.1\r\n{h}Content-Length: 0\r\n"), Ok((Length(0), true, false))),
            // Rule 5: broken Content-Length.
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: -5\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 0x10\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 1 0\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length:\r\n"), Err((InvalidContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n"), Err((MultipleContentLength, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 18446744073709551616\r\n"), Err((ContentLengthOverflow, 400))),
            // Rule 4: chunked last, once, bare.
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n"), Ok((Chunked, true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: CHUNKED\r\n"), Ok((Chunked, true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: , chunked ,\r\n"), Ok((Chunked, true, false))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, gzip\r\n"), Err((ChunkedNotLast, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n"), Err((ChunkedNotLast, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, deflate\r\n"), Err((ChunkedNotLast, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunkedchunked\r\n"), Err((ChunkedNotLast, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked\r\n"), Err((ChunkedRepeated, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked;q=1\r\n"), Err((ChunkedWithParams, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked ; a=b\r\n"), Err((ChunkedWithParams, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n"), Err((UnsupportedTransferCoding, 501))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: x-custom, chunked\r\n"), Err((UnsupportedTransferCoding, 501))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding:\r\n"), Err((InvalidTransferEncoding, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: ,\r\n"), Err((InvalidTransferEncoding, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: \"chunked\"\r\n"), Err((InvalidTransferEncoding, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), Err((MultipleTransferEncoding, 400))),
            // Rule 3: CL with TE.
            (format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), Err((ContentLengthAndTransferEncoding, 400))),
            (format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"), Err((ContentLengthAndTransferEncoding, 400))),
            // TE on HTTP/1.0.
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n".into(), Err((TransferEncodingOnHttp10, 400))),
            // No content on GET/HEAD.
            (format!("GET / HTTP/1.1\r\n{h}Content-Length: 1\r\n"), Err((BodyNotAllowed, 400))),
            (format!("HEAD / HTTP/1.1\r\n{h}Content-Length: 1\r\n"), Err((BodyNotAllowed, 400))),
            (format!("GET / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n"), Err((BodyNotAllowed, 400))),
            // Expect.
            (format!("POST / HTTP/1.1\r\n{h}Expect: 100-continue\r\nContent-Length: 3\r\n"), Ok((Length(3), true, true))),
            (format!("POST / HTTP/1.1\r\n{h}Expect: 100-Continue\r\nTransfer-Encoding: chunked\r\n"), Ok((Chunked, true, true))),
            (format!("POST / HTTP/1.1\r\n{h}Expect: 100-continue\r\n"), Ok((None, true, false))),
            ("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n".into(), Ok((Length(3), false, false))),
            (format!("POST / HTTP/1.1\r\n{h}Expect: 200-ok\r\nContent-Length: 3\r\n"), Err((UnsupportedExpectation, 417))),
            (format!("POST / HTTP/1.1\r\n{h}Expect: 100-continue, x\r\n"), Err((UnsupportedExpectation, 417))),
            (format!("POST / HTTP/1.1\r\n{h}Expect:\r\n"), Err((UnsupportedExpectation, 417))),
            // No tunnels.
            (format!("GET / HTTP/1.1\r\n{h}Connection: upgrade\r\nUpgrade: websocket\r\n"), Err((UpgradeNotSupported, 501))),
            // Persistence.
            (format!("GET / HTTP/1.1\r\n{h}Connection: close\r\n"), Ok((None, false, false))),
            (format!("GET / HTTP/1.1\r\n{h}Connection: keep-alive, CLOSE\r\n"), Ok((None, false, false))),
            ("GET / HTTP/1.0\r\n".into(), Ok((None, false, false))),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n".into(), Ok((None, true, false))),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n".into(), Ok((None, false, false))),
        ];
        for (head, expect) in rows {
            let got = request(&head)
                .map(|m| (m.framing, m.keep_alive, m.expect_continue))
                .map_err(|e| (e.kind(), e.status()));
            assert_eq!(got, expect, "{head:?}");
        }
    }

    #[test]
    fn request_meta_refuses_connect() {
        // The head parser refuses CONNECT first; a hand-built head is refused here too.
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..]);
        let mut head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        head.method = Bytes::from_static(b"CONNECT");
        let e = request_meta(&head).unwrap_err();
        assert_eq!((e.kind(), e.status()), (ConnectNotSupported, 501));
    }

    #[test]
    fn response_meta_table() {
        type Expect = Result<(BodyFraming, bool), FramingErrorKind>;
        let rows: &[(&str, &str, Expect)] = &[
            // Rule 1: no body for HEAD, 1xx, 204, 304, whatever the fields say.
            (
                "HEAD",
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
                Ok((None, true)),
            ),
            (
                "HEAD",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
                Ok((None, true)),
            ),
            (
                "GET",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n",
                Ok((None, true)),
            ),
            ("GET", "HTTP/1.1 204 No Content\r\n", Ok((None, true))),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n",
                Ok((None, true)),
            ),
            ("POST", "HTTP/1.1 100 Continue\r\n", Ok((None, true))),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nContent-Length: 1\r\n",
                Err(UnexpectedResponseBody),
            ),
            (
                "GET",
                "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n",
                Err(UnexpectedResponseBody),
            ),
            (
                "GET",
                "HTTP/1.1 103 Early Hints\r\nContent-Length: 1\r\n",
                Err(UnexpectedResponseBody),
            ),
            // Rule 2: we never send CONNECT.
            ("CONNECT", "HTTP/1.1 200 OK\r\n", Err(ConnectNotSupported)),
            // Rules 3-4.
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
                Ok((Chunked, true)),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n",
                Ok((Chunked, false)),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                Err(ContentLengthAndTransferEncoding),
            ),
            // Rule 4: a final coding other than chunked is read until close.
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n",
                Ok((Close, false)),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n",
                Err(UnsupportedTransferCoding),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n",
                Err(ChunkedRepeated),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Err(MultipleTransferEncoding),
            ),
            (
                "POST",
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n",
                Err(TransferEncodingOnHttp10),
            ),
            // Rules 5-6.
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n",
                Ok((Length(12), true)),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
                Ok((Length(0), true)),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n",
                Err(InvalidContentLength),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n",
                Err(MultipleContentLength),
            ),
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n",
                Err(ContentLengthOverflow),
            ),
            // Rule 8: read until close; never reusable.
            ("POST", "HTTP/1.1 200 OK\r\n", Ok((Close, false))),
            // Persistence.
            (
                "POST",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n",
                Ok((Length(1), false)),
            ),
            (
                "POST",
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n",
                Ok((Length(1), false)),
            ),
            (
                "POST",
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n",
                Ok((Length(1), true)),
            ),
        ];
        for (method, head, expect) in rows {
            let got = response(method, head);
            let got = got.map(|m| (m.framing, m.keep_alive)).map_err(|e| {
                assert_eq!(e.status(), 502);
                assert!(e.is_response());
                e.kind()
            });
            assert_eq!(got, *expect, "{method} {head:?}");
        }
    }

    /// RFC 9112 §6.3 rule 4: a response whose final transfer coding is not `chunked` is read
    /// until close (it used to be refused with 502), flagged as still transfer-coded. What is
    /// broken besides stays an error, and requests keep rules 1-2 (see `request_meta_table`).
    #[test]
    fn response_meta_final_coding_not_chunked_is_close_delimited() {
        for te in [
            "chunked, deflate",
            "chunkedchunked",
            "gzip",
            "x-unknown",
            "deflate;q=1",
            "chunked, chunked, gzip",
            "chunked;a=b, gzip",
            "gzip, chunked, br",
        ] {
            for conn in ["", "Connection: keep-alive\r\n"] {
                let head = format!("HTTP/1.1 200 OK\r\n{conn}Transfer-Encoding: {te}\r\n");
                let m = response("POST", &head).unwrap_or_else(|e| panic!("{te}: {e}"));
                assert_eq!(
                    (m.framing, m.keep_alive, m.transfer_coded),
                    (Close, false, true),
                    "{te}"
                );
            }
        }
        let rows: &[(&str, FramingErrorKind)] = &[
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                UnsupportedTransferCoding,
            ),
            ("Transfer-Encoding: chunked, chunked\r\n", ChunkedRepeated),
            (
                "Transfer-Encoding: gzip, chunked;q=1\r\n",
                ChunkedWithParams,
            ),
            ("Transfer-Encoding: \"gzip\"\r\n", InvalidTransferEncoding),
            (
                "Transfer-Encoding: gzip, \"x\"\r\n",
                InvalidTransferEncoding,
            ),
            ("Transfer-Encoding: ,\r\n", InvalidTransferEncoding),
            (
                "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n",
                ContentLengthAndTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                MultipleTransferEncoding,
            ),
        ];
        for (fields, kind) in rows {
            let e = response("POST", &format!("HTTP/1.1 200 OK\r\n{fields}")).unwrap_err();
            assert_eq!((e.kind(), e.status()), (*kind, 502), "{fields:?}");
        }
        let e = response("POST", "HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\n").unwrap_err();
        assert_eq!(e.kind(), TransferEncodingOnHttp10);
        // No body at all still wins over any coding (HEAD, 304), and 1xx/204 stay strict.
        let m = response("HEAD", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n").unwrap();
        assert_eq!((m.framing, m.transfer_coded), (None, false));
        let e = response(
            "GET",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n",
        );
        assert_eq!(e.unwrap_err().kind(), UnexpectedResponseBody);
        // Plain chunked and plain close-delimited responses are not transfer-coded.
        let m = response("POST", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n").unwrap();
        assert_eq!((m.framing, m.transfer_coded), (Chunked, false));
        let m = response("POST", "HTTP/1.1 200 OK\r\n").unwrap();
        assert_eq!((m.framing, m.transfer_coded), (Close, false));
    }

    #[test]
    fn framing_error_display_is_lowercase() {
        let e = FramingError::request(ContentLengthAndTransferEncoding);
        assert_eq!(
            e.to_string(),
            "invalid request framing: both content-length and transfer-encoding"
        );
        let e = FramingError::response(ChunkedNotLast);
        assert_eq!(e.to_string(), e.to_string().to_lowercase());
    }

    #[test]
    fn has_body() {
        assert!(!None.has_body());
        assert!(!Length(0).has_body());
        assert!(Length(1).has_body());
        assert!(Chunked.has_body());
        assert!(Close.has_body());
    }
}
