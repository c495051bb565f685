//! Hop-by-hop removal, Host rewrite, X-Forwarded-*, Via, request ids, injected headers.
//!
//! The two writers turn a parsed head into the head chunkgate sends on, straight into the
//! output buffer: no per-field allocation, no string formatting but for the client address.
//!
//! # What is removed
//! Hop-by-hop fields (RFC 9110 §7.6.1) never cross the proxy: `Connection` and every field it
//! names, `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, and every `Proxy-*` field (including
//! `Proxy-Authorization`). Framing fields (`Content-Length`, `Transfer-Encoding`) are removed
//! and replaced by the framing chunkgate writes for the body it actually sends. On requests
//! `Host` is replaced by the upstream's authority and `Expect` is dropped (chunkgate answers
//! `100-continue` itself).
//!
//! # Forwarding fields
//! chunkgate is the edge: what a client says about earlier hops cannot be checked, so the
//! client's `X-Forwarded-*`, `Forwarded` and `X-Real-IP` fields are dropped and replaced, not
//! appended to. `X-Forwarded-For` holds exactly the address of the peer chunkgate accepted the
//! connection from; `X-Forwarded-Proto` the scheme it was accepted on; `X-Forwarded-Host` the
//! client's `Host`. `Via` is kept and chunkgate's own entry is appended (RFC 9110 §7.6.3), with
//! the protocol version chunkgate received.
//!
//! # Credentials
//! `Authorization` and `x-api-key` values are copied into the forwarded head and nowhere else.
//! An injected field replaces every client field of the same name. An upstream's injected
//! field replaces the route's of the same name ([`Injected`]): a group can send each of its
//! upstreams its own credentials.

use crate::codec::chunked::Field;
use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::framing::BodyFraming;
use crate::codec::head::{
    is_valid_field_name, is_valid_field_value, Header, RequestHead, ResponseHead, Version,
};

/// The `Via` pseudonym chunkgate appends.
pub const VIA_PSEUDONYM: &[u8] = b"chunkgate";

/// Longest client-sent `X-Request-Id` that is kept (bytes).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What [`write_request_head`] needs besides the client's head.
#[derive(Debug, Clone, Copy)]
pub struct ForwardContext<'a> {
    /// Address of the client peer as text (goes into `X-Forwarded-For`); formatted once
    /// per connection, not per request.
    pub client_ip: &'a str,
    /// Scheme the client connected with: `"http"` or `"https"`.
    pub proto: &'a str,
    /// `host[:port]` of the upstream, written as `Host`.
    pub upstream_authority: &'a str,
    /// The origin-form target to send upstream (already rewritten by the route).
    pub path: &'a [u8],
    /// The exchange's request id (written as `X-Request-Id`).
    pub request_id: &'a [u8],
    /// Fields set on every forwarded request; each replaces client fields of the same name.
    /// A pair that is not a valid field (bad name, control characters in the value) is skipped.
    pub inject: Injected<'a>,
    /// Do not forward the client's `Authorization` (it is then only sent if injected).
    pub drop_authorization: bool,
}

/// The fields injected into a request: the route's, and the upstream's on top (an upstream
/// field replaces the route's of the same name).
#[derive(Debug, Clone, Copy, Default)]
pub struct Injected<'a> {
    /// The route's `inject_headers`.
    pub route: &'a [(String, String)],
    /// The upstream's `inject_headers`.
    pub upstream: &'a [(String, String)],
}

impl<'a> Injected<'a> {
    /// Only the route's fields.
    pub fn route(route: &'a [(String, String)]) -> Self {
        Injected {
            route,
            upstream: &[],
        }
    }

    /// True if `name` is injected, by the route or the upstream.
    pub fn names(&self, name: &[u8]) -> bool {
        let named = |list: &[(String, String)]| {
            list.iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        };
        named(self.route) || named(self.upstream)
    }

    /// The fields sent, route's first (less those the upstream replaces), then the
    /// upstream's.
    pub fn fields(&self) -> impl Iterator<Item = &'a (String, String)> + '_ {
        let upstream = self.upstream;
        let route = self
            .route
            .iter()
            .filter(move |(n, _)| !upstream.iter().any(|(u, _)| u.eq_ignore_ascii_case(n)));
        route.chain(upstream)
    }
}

/// Fields removed from every forwarded message (requests and responses), compared
/// case-insensitively; `Proxy-*` is matched by prefix separately.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"content-length",
    b"transfer-encoding",
];

/// Fields removed from forwarded requests besides [`HOP_BY_HOP`]: routing and expectations
/// chunkgate handles itself, and client claims about earlier hops, which it replaces.
const REQUEST_REPLACED: &[&[u8]] = &[
    b"host",
    b"expect",
    b"forwarded",
    b"x-real-ip",
    b"x-request-id",
];

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn is_listed(name: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// The values of a head's `Connection` fields, found once per head so the per-field check
/// does not rescan the head. Up to [`Connection::INLINE`] values are kept on the stack; a head
/// with more falls back to scanning.
struct Connection<'a> {
    values: [&'a [u8]; Connection::INLINE],
    len: usize,
    all: &'a [Header],
    overflow: bool,
}

impl<'a> Connection<'a> {
    const INLINE: usize = 4;

    fn of(headers: &'a [Header]) -> Self {
        let mut c = Connection {
            values: [&[]; Connection::INLINE],
            len: 0,
            all: headers,
            overflow: false,
        };
        for h in headers {
            if h.name.eq_ignore_ascii_case(b"connection") {
                if c.len == Connection::INLINE {
                    c.overflow = true;
                    break;
                }
                c.values[c.len] = &h.value;
                c.len += 1;
            }
        }
        c
    }

    /// True if `name` is one of the tokens of any `Connection` field.
    fn names(&self, name: &[u8]) -> bool {
        let listed = |v: &[u8]| {
            v.split(|&b| b == b',')
                .any(|t| trim_ows(t).eq_ignore_ascii_case(name))
        };
        if self.overflow {
            self.all
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(b"connection"))
                .any(|h| listed(&h.value))
        } else {
            self.values[..self.len].iter().any(|v| listed(v))
        }
    }
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

/// True for a client field chunkgate sets itself or refuses to pass on: routing and
/// expectations it handles, claims about earlier hops, the request id, injected names, and
/// `Authorization` on a route that checked it.
fn is_replaced(name: &[u8], inject: Injected<'_>, drop_authorization: bool) -> bool {
    is_listed(name, REQUEST_REPLACED)
        || starts_with_ignore_case(name, b"x-forwarded-")
        || (drop_authorization && name.eq_ignore_ascii_case(b"authorization"))
        || inject.names(name)
}

/// Keep only the client trailer fields that may reach the upstream: the rules of the head
/// apply (no hop-by-hop or `Proxy-*` field, nothing chunkgate sets or injects), and a name
/// with `_` is dropped (some servers read `_` as `-`, so it could stand for a name that was
/// just refused).
pub fn filter_request_trailers(
    trailers: &mut Vec<Field>,
    inject: Injected<'_>,
    drop_authorization: bool,
) {
    trailers.retain(|f| {
        let name = &f.name[..];
        !(is_listed(name, HOP_BY_HOP)
            || starts_with_ignore_case(name, b"proxy-")
            || name.contains(&b'_')
            || is_replaced(name, inject, drop_authorization))
    });
}

/// True for a field that never crosses the proxy in either direction.
fn is_hop_by_hop(connection: &Connection<'_>, name: &[u8]) -> bool {
    is_listed(name, HOP_BY_HOP)
        || starts_with_ignore_case(name, b"proxy-")
        || connection.names(name)
}

fn put_field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// Decimal digits of `n`, without allocating.
fn put_decimal(dst: &mut BytesMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&buf[i..]);
}

fn put_framing(dst: &mut BytesMut, out: &BodyFraming) {
    match out {
        BodyFraming::Length(n) => {
            dst.put_slice(b"Content-Length: ");
            put_decimal(dst, *n);
            dst.put_slice(b"\r\n");
        }
        BodyFraming::Chunked => dst.put_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::Close => {}
    }
}

fn put_via(dst: &mut BytesMut, received: Version) {
    dst.put_slice(b"Via: ");
    dst.put_slice(received.via_bytes());
    dst.put_u8(b' ');
    dst.put_slice(VIA_PSEUDONYM);
    dst.put_slice(b"\r\n");
}

fn valid_pair(name: &str, value: &str) -> bool {
    is_valid_field_name(name.as_bytes()) && is_valid_field_value(value.as_bytes())
}

/// Write the request head for the upstream into `dst`:
///
/// 1. `METHOD SP path SP HTTP/1.1`
/// 2. `Host: upstream_authority`
/// 3. the client's end-to-end fields in received order, without hop-by-hop fields (see the
///    [module docs](self)), `Host`, `Expect`, framing fields, forwarding claims
///    (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`), `X-Request-Id`, fields named by an injected
///    pair, and `Authorization` if `ctx.drop_authorization`;
/// 4. `X-Forwarded-For: client_ip` (replacing, never appending: see the module docs),
///    `X-Forwarded-Proto`, `X-Forwarded-Host` (the client's `Host`, or the authority of its
///    absolute-form target; omitted if it sent neither),
///    `Via: <received version> chunkgate`, `X-Request-Id`;
/// 5. the injected fields;
/// 6. the framing line for `out` (`Content-Length: n`, `Transfer-Encoding: chunked`, or nothing
///    for [`BodyFraming::None`]), then the blank line.
pub fn write_request_head(
    head: &RequestHead,
    ctx: &ForwardContext<'_>,
    out: &BodyFraming,
    dst: &mut BytesMut,
) {
    dst.reserve(256 + ctx.path.len() + head.headers.len() * 32);
    dst.put_slice(&head.method);
    dst.put_u8(b' ');
    dst.put_slice(ctx.path);
    dst.put_slice(b" HTTP/1.1\r\n");
    put_field(dst, b"Host", ctx.upstream_authority.as_bytes());

    let connection = Connection::of(&head.headers);
    for h in &head.headers {
        let name = &h.name[..];
        if is_hop_by_hop(&connection, name) || is_replaced(name, ctx.inject, ctx.drop_authorization)
        {
            continue;
        }
        put_field(dst, name, &h.value);
    }

    put_field(dst, b"X-Forwarded-For", ctx.client_ip.as_bytes());
    put_field(dst, b"X-Forwarded-Proto", ctx.proto.as_bytes());
    if let Some(host) = head.get("host").or(head.target_authority.as_ref()) {
        put_field(dst, b"X-Forwarded-Host", host);
    }
    put_via(dst, head.version);
    if is_valid_field_value(ctx.request_id) {
        put_field(dst, b"X-Request-Id", ctx.request_id);
    }
    for (name, value) in ctx.inject.fields() {
        if valid_pair(name, value) {
            put_field(dst, name.as_bytes(), value.as_bytes());
        }
    }
    put_framing(dst, out);
    dst.put_slice(b"\r\n");
}

/// Write the response head for the client into `dst`:
///
/// 1. `HTTP/1.1 status reason` (`HTTP/1.0` for an HTTP/1.0 client);
/// 2. the upstream's end-to-end fields without hop-by-hop fields, framing fields,
///    `X-Request-Id`, and fields named in `extra`;
/// 3. `Via: <received version> chunkgate`, `X-Request-Id: request_id`, the `extra` fields
///    (pairs that are not valid fields are skipped);
/// 4. `Connection: close` when `!keep_alive`, or `Connection: keep-alive` for a persistent
///    HTTP/1.0 client;
/// 5. the framing line for `out`, then the blank line. With [`BodyFraming::None`] on a status
///    other than 1xx and 204 (a response to HEAD, a 304), the upstream's `Content-Length` is
///    kept if it is a single valid value: it describes the representation, no body follows.
///
/// The caller chooses `out` for the client: an HTTP/1.0 client cannot take
/// [`BodyFraming::Chunked`] (use [`BodyFraming::Close`] and `keep_alive = false`).
pub fn write_response_head(
    head: &ResponseHead,
    client_version: Version,
    out: &BodyFraming,
    keep_alive: bool,
    request_id: &[u8],
    extra: &[(&str, &str)],
    dst: &mut BytesMut,
) {
    dst.reserve(256 + head.reason.len() + head.headers.len() * 32);
    dst.put_slice(client_version.as_bytes());
    dst.put_u8(b' ');
    put_decimal(dst, u64::from(head.status));
    dst.put_u8(b' ');
    dst.put_slice(&head.reason);
    dst.put_slice(b"\r\n");

    let connection = Connection::of(&head.headers);
    for h in &head.headers {
        let name = &h.name[..];
        if is_hop_by_hop(&connection, name)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || extra
                .iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        put_field(dst, name, &h.value);
    }

    put_via(dst, head.version);
    if is_valid_field_value(request_id) {
        put_field(dst, b"X-Request-Id", request_id);
    }
    for (name, value) in extra {
        if valid_pair(name, value) {
            put_field(dst, name.as_bytes(), value.as_bytes());
        }
    }
    if !keep_alive {
        dst.put_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        dst.put_slice(b"Connection: keep-alive\r\n");
    }
    if *out == BodyFraming::None && head.status >= 200 && head.status != 204 {
        // A response without a body (to HEAD, or a 304) may carry the Content-Length of the
        // representation it describes (RFC 9110 §8.6); keep it when it is a single valid one.
        if let (1, Some(n)) = (head.count("content-length"), head.get("content-length")) {
            if !n.is_empty() && n.iter().all(u8::is_ascii_digit) {
                put_field(dst, b"Content-Length", n);
            }
        }
    }
    put_framing(dst, out);
    dst.put_slice(b"\r\n");
}

/// The client's `X-Request-Id`, if it sent one that is safe to reuse: 1 to
/// [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII. Otherwise `None` (make one with
/// [`new_request_id`]).
pub fn request_id_of(head: &RequestHead) -> Option<Bytes> {
    let id = head.get("x-request-id")?;
    let sane = !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|&b| (0x21..0x7f).contains(&b));
    sane.then(|| id.clone())
}

/// A fresh request id: 32 lowercase hex characters (128 random bits from `fastrand`).
pub fn new_request_id() -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for b in id.iter_mut().rev() {
        *b = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Owned as is: one allocation, and clones (the access record) only count references.
    Bytes::from_owner(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::head::{HeadLimits, RequestParser, ResponseParser};

    fn request(input: &[u8]) -> RequestHead {
        let mut buf = BytesMut::from(input);
        RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap()
    }

    fn response(input: &[u8]) -> ResponseHead {
        let mut buf = BytesMut::from(input);
        ResponseParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap()
    }

    /// The written head parsed back, so the output is also proven to be a valid head.
    fn reparse_request(dst: &BytesMut) -> RequestHead {
        let mut buf = dst.clone();
        let head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        head
    }

    fn names(headers: &[Header]) -> Vec<String> {
        headers
            .iter()
            .map(|h| String::from_utf8_lossy(&h.name).to_lowercase())
            .collect()
    }

    fn ctx<'a>(inject: &'a [(String, String)]) -> ForwardContext<'a> {
        ForwardContext {
            client_ip: "203.0.113.7",
            proto: "https",
            upstream_authority: "api.upstream.test:443",
            path: b"/v1/chat/completions",
            request_id: b"0123456789abcdef0123456789abcdef",
            inject: Injected::route(inject),
            drop_authorization: false,
        }
    }

    const CLIENT: &[u8] = b"POST /openai/v1/chat/completions HTTP/1.1\r\n\
        Host: proxy.example\r\n\
        Connection: keep-alive, X-Secret-Hop\r\n\
        X-Secret-Hop: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: X-Checksum\r\n\
        Proxy-Authorization: Basic abc\r\n\
        Proxy-Connection: keep-alive\r\n\
        Expect: 100-continue\r\n\
        Transfer-Encoding: chunked\r\n\
        X-Forwarded-For: 10.0.0.1\r\n\
        X-Forwarded-Proto: http\r\n\
        X-Forwarded-Host: evil\r\n\
        X-Forwarded-Port: 1\r\n\
        Forwarded: for=10.0.0.1\r\n\
        X-Real-IP: 10.0.0.1\r\n\
        X-Request-Id: client-id\r\n\
        Via: 1.1 edge\r\n\
        Authorization: Bearer sk-client\r\n\
        OpenAI-Organization: org-1\r\n\
        Content-Type: application/json\r\n\r\n";

    #[test]
    fn write_request_head_rewrites_fields() {
        let mut dst = BytesMut::new();
        write_request_head(&request(CLIENT), &ctx(&[]), &BodyFraming::Chunked, &mut dst);
        let text = String::from_utf8(dst.to_vec()).unwrap();
        assert!(text
            .starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: api.upstream.test:443\r\n"));
        assert!(text.ends_with("Transfer-Encoding: chunked\r\n\r\n"));
        let out = reparse_request(&dst);
        assert_eq!(
            names(&out.headers),
            [
                "host",
                "via",
                "authorization",
                "openai-organization",
                "content-type",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "via",
                "x-request-id",
                "transfer-encoding",
            ]
        );
        assert_eq!(out.get("x-forwarded-for").unwrap(), "203.0.113.7");
        assert_eq!(out.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(out.get("x-forwarded-host").unwrap(), "proxy.example");
        let via: Vec<_> = out.get_all("via").collect();
        assert_eq!(via, ["1.1 edge", "1.1 chunkgate"]);
        assert_eq!(
            out.get("x-request-id").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(out.get("authorization").unwrap(), "Bearer sk-client");
    }

    #[test]
    fn write_request_head_upstream_field_replaces_the_route_field() {
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        let route = vec![
            pair("Authorization", "Bearer sk-route"),
            pair("X-Team", "a"),
        ];
        let upstream = vec![pair("authorization", "Bearer sk-second-account")];
        let mut c = ctx(&route);
        c.inject.upstream = &upstream;
        let mut dst = BytesMut::new();
        write_request_head(&request(CLIENT), &c, &BodyFraming::None, &mut dst);
        let out = reparse_request(&dst);
        assert_eq!(out.count("authorization"), 1);
        assert_eq!(
            out.get("authorization").unwrap(),
            "Bearer sk-second-account"
        );
        assert_eq!(out.get("x-team").unwrap(), "a");
        let text = String::from_utf8_lossy(&dst);
        assert!(!text.contains("sk-route"), "{text}");
        assert!(!text.contains("sk-client"), "{text}");

        let mut trailers = vec![
            Field {
                name: Bytes::from_static(b"Authorization"),
                value: Bytes::from_static(b"Bearer sk-client"),
            },
            Field {
                name: Bytes::from_static(b"X-Checksum"),
                value: Bytes::from_static(b"1"),
            },
        ];
        filter_request_trailers(&mut trailers, c.inject, false);
        assert_eq!(trailers.len(), 1);
        assert_eq!(&trailers[0].name[..], b"X-Checksum");
    }

    #[test]
    fn write_request_head_injected_field_replaces_client_field() {
        let inject = vec![
            (
                "Authorization".to_string(),
                "Bearer sk-operator".to_string(),
            ),
            ("X-Team".to_string(), "a".to_string()),
            ("Bad Name".to_string(), "x".to_string()),
            ("X-Bad-Value".to_string(), "a\r\nInjected: 1".to_string()),
        ];
        let mut dst = BytesMut::new();
        write_request_head(
            &request(CLIENT),
            &ctx(&inject),
            &BodyFraming::Length(12),
            &mut dst,
        );
        let out = reparse_request(&dst);
        assert_eq!(out.count("authorization"), 1);
        assert_eq!(out.get("authorization").unwrap(), "Bearer sk-operator");
        assert_eq!(out.get("x-team").unwrap(), "a");
        assert_eq!(out.count("injected"), 0);
        assert_eq!(out.count("x-bad-value"), 0);
        assert_eq!(out.get("content-length").unwrap(), "12");
        assert_eq!(out.count("transfer-encoding"), 0);
    }

    #[test]
    fn write_request_head_drops_authorization_when_asked() {
        let inject: Vec<(String, String)> = Vec::new();
        let mut c = ctx(&inject);
        c.drop_authorization = true;
        let mut dst = BytesMut::new();
        write_request_head(&request(CLIENT), &c, &BodyFraming::None, &mut dst);
        let out = reparse_request(&dst);
        assert_eq!(out.count("authorization"), 0);
        assert_eq!(out.count("content-length"), 0);
        assert_eq!(out.count("transfer-encoding"), 0);
        assert!(!dst.windows(9).any(|w| w == b"sk-client"));
    }

    #[test]
    fn write_request_head_ipv6_client_and_http10_without_host() {
        let inject: Vec<(String, String)> = Vec::new();
        let mut c = ctx(&inject);
        c.client_ip = "2001:db8::1";
        c.path = b"/";
        let mut dst = BytesMut::new();
        write_request_head(
            &request(b"GET / HTTP/1.0\r\n\r\n"),
            &c,
            &BodyFraming::Length(0),
            &mut dst,
        );
        let out = reparse_request(&dst);
        assert_eq!(out.version, Version::Http11);
        assert_eq!(out.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert_eq!(out.count("x-forwarded-host"), 0);
        assert_eq!(out.get("via").unwrap(), "1.0 chunkgate");
        assert_eq!(out.get("content-length").unwrap(), "0");
    }

    #[test]
    fn write_request_head_forwarded_host_from_absolute_form() {
        let inject: Vec<(String, String)> = Vec::new();
        let mut dst = BytesMut::new();
        let head = request(b"GET http://proxy.example:8080/x HTTP/1.0\r\n\r\n");
        write_request_head(&head, &ctx(&inject), &BodyFraming::None, &mut dst);
        let out = reparse_request(&dst);
        assert_eq!(out.get("x-forwarded-host").unwrap(), "proxy.example:8080");
        assert_eq!(out.get("host").unwrap(), "api.upstream.test:443");
    }

    #[test]
    fn write_response_head_rewrites_fields() {
        let head = response(
            b"HTTP/1.1 200 OK\r\n\
            Content-Type: text/event-stream\r\n\
            Connection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\n\
            Keep-Alive: timeout=5\r\n\
            Transfer-Encoding: chunked\r\n\
            Trailer: X-Usage\r\n\
            Upgrade: h2c\r\n\
            Proxy-Authenticate: Basic\r\n\
            X-Request-Id: upstream-id\r\n\
            Server: up\r\n\
            Via: 1.1 cdn\r\n\r\n",
        );
        let mut dst = BytesMut::new();
        write_response_head(
            &head,
            Version::Http11,
            &BodyFraming::Chunked,
            true,
            b"rid",
            &[("X-Chunkgate-Upstream", "u1"), ("Server", "chunkgate")],
            &mut dst,
        );
        assert_eq!(
            &dst[..],
            &b"HTTP/1.1 200 OK\r\n\
            Content-Type: text/event-stream\r\n\
            Via: 1.1 cdn\r\n\
            Via: 1.1 chunkgate\r\n\
            X-Request-Id: rid\r\n\
            X-Chunkgate-Upstream: u1\r\n\
            Server: chunkgate\r\n\
            Transfer-Encoding: chunked\r\n\r\n"[..]
        );
    }

    #[test]
    fn write_response_head_connection_and_framing() {
        let head = response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 9\r\n\r\n");
        let cases: &[(Version, BodyFraming, bool, &[u8])] = &[
            (
                Version::Http11,
                BodyFraming::Length(9),
                false,
                b"HTTP/1.1 404 Not Found\r\nVia: 1.0 chunkgate\r\nX-Request-Id: r\r\nConnection: close\r\nContent-Length: 9\r\n\r\n",
            ),
            (
                Version::Http10,
                BodyFraming::Length(9),
                true,
                b"HTTP/1.0 404 Not Found\r\nVia: 1.0 chunkgate\r\nX-Request-Id: r\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\n",
            ),
            (
                Version::Http10,
                BodyFraming::Close,
                false,
                b"HTTP/1.0 404 Not Found\r\nVia: 1.0 chunkgate\r\nX-Request-Id: r\r\nConnection: close\r\n\r\n",
            ),
            (
                Version::Http11,
                BodyFraming::None,
                true,
                // A response to HEAD keeps the representation's length.
                b"HTTP/1.1 404 Not Found\r\nVia: 1.0 chunkgate\r\nX-Request-Id: r\r\nContent-Length: 9\r\n\r\n",
            ),
        ];
        for (version, out, keep_alive, expect) in cases {
            let mut dst = BytesMut::new();
            write_response_head(&head, *version, out, *keep_alive, b"r", &[], &mut dst);
            assert_eq!(
                String::from_utf8_lossy(&dst),
                String::from_utf8_lossy(expect),
                "{version:?} {out:?} {keep_alive}"
            );
        }
    }

    #[test]
    fn write_response_head_without_body_keeps_only_valid_representation_length() {
        let write = |input: &[u8]| {
            let mut dst = BytesMut::new();
            let head = response(input);
            write_response_head(
                &head,
                Version::Http11,
                &BodyFraming::None,
                true,
                b"r",
                &[],
                &mut dst,
            );
            reparse_response(&dst)
        };
        let out = write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n");
        assert_eq!(out.get("content-length").unwrap(), "5");
        let out = write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(out.count("content-length"), 0);
        let out = write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(out.count("content-length"), 0);
        let out = write(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(out.count("content-length"), 0);
        let out = write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(out.count("transfer-encoding"), 0);
    }

    fn reparse_response(dst: &BytesMut) -> ResponseHead {
        let mut buf = dst.clone();
        let head = ResponseParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        head
    }

    #[test]
    fn write_response_head_empty_reason_and_large_length() {
        let head = response(b"HTTP/1.1 204 \r\n\r\n");
        let mut dst = BytesMut::new();
        let out = BodyFraming::Length(u64::MAX);
        write_response_head(&head, Version::Http11, &out, true, b"r", &[], &mut dst);
        assert!(dst.starts_with(b"HTTP/1.1 204 \r\n"));
        assert!(dst.ends_with(b"Content-Length: 18446744073709551615\r\n\r\n"));
    }

    #[test]
    fn request_id_of_accepts_only_sane_tokens() {
        let with = |v: &str| {
            request(format!("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: {v}\r\n\r\n").as_bytes())
        };
        assert_eq!(request_id_of(&with("abc-123")).unwrap(), "abc-123");
        assert_eq!(request_id_of(&with(&"a".repeat(128))).unwrap().len(), 128);
        assert_eq!(request_id_of(&with(&"a".repeat(129))), None);
        assert_eq!(request_id_of(&with("a b")), None);
        assert_eq!(request_id_of(&with("caf\u{e9}")), None);
        assert_eq!(request_id_of(&with("")), None);
        assert_eq!(
            request_id_of(&request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")),
            None
        );
    }

    #[test]
    fn new_request_id_is_32_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
