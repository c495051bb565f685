//! The little HTTP/1.1 the load tool needs: target URLs, response heads, vectored writes.
//!
//! The load tool speaks HTTP itself instead of going through a general client so that it adds
//! as little CPU and delay of its own as possible, and so that it sees chunk boundaries exactly
//! as they came off the wire (through [`ChunkedDecoder`](crate::codec::chunked::ChunkedDecoder)).

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response or request head the tool accepts: 64 KiB.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most header fields in a head the tool accepts.
pub const MAX_HEADERS: usize = 64;

/// A parsed `http://host:port/prefix` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (the URL's authority).
    pub authority: String,
    /// Path prefix without a trailing slash (empty for none).
    pub prefix: String,
}

impl Target {
    /// Parse `http://authority[/prefix]` and resolve the authority (a literal address or a
    /// name the system resolver knows). Only plain `http` is supported.
    pub fn parse(url: &str) -> io::Result<Target> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            invalid_input(format!("target {url:?}: only http:// urls are supported"))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(invalid_input(format!("target {url:?}: missing host")));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)?
            .next()
            .ok_or_else(|| invalid_input(format!("target {url:?}: host did not resolve")))?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// What the load tool needs from a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code (never 1xx: interim responses are skipped).
    pub status: u16,
    /// How the body is delimited.
    pub body: BodyKind,
    /// The connection closes after this response.
    pub close: bool,
}

/// Read and parse one response head into `buf`, skipping interim (1xx) responses; the head's
/// bytes are consumed and any body bytes that came with it stay in `buf`.
///
/// Cancel safety: not cancel safe (a partly read head is lost with the future).
pub async fn read_response_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> io::Result<ResponseHead> {
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = parse_response_head(buf)? {
                buf.advance(len);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(invalid_data("response head too large"));
            }
        }
        buf.reserve(4096);
        if r.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response head",
            ));
        }
    }
}

fn parse_response_head(buf: &[u8]) -> io::Result<Option<(ResponseHead, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid_data(format!("invalid response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut close = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| invalid_data("invalid content-length in response"))?;
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        close = true;
        BodyKind::Close
    };
    Ok(Some((
        ResponseHead {
            status,
            body,
            close,
        },
        len,
    )))
}

/// Write all of `parts` with vectored writes, retrying after short writes, so a chunk's size
/// line, payload and CRLF normally leave in one system call without being copied together.
///
/// Cancel safety: not cancel safe (an unknown prefix may have been written).
pub async fn write_all_vectored<W: AsyncWrite + Unpin, const N: usize>(
    w: &mut W,
    parts: [&[u8]; N],
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut iov = [IoSlice::new(&[]); N];
        let mut used = 0;
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov[used] = IoSlice::new(&p[skip..]);
            skip = 0;
            used += 1;
        }
        let n = w.write_vectored(&iov[..used]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// Read and drop a `Content-Length` body, `buf` first.
pub async fn skip_length_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    mut remaining: u64,
) -> io::Result<()> {
    loop {
        let take = remaining.min(buf.len() as u64) as usize;
        buf.advance(take);
        remaining -= take as u64;
        if remaining == 0 {
            return Ok(());
        }
        buf.reserve(16 << 10);
        if r.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a body",
            ));
        }
    }
}

/// Read a whole (small) body of any framing into memory, `buf` first; at most `max` bytes.
pub async fn read_body_to_vec<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    kind: BodyKind,
    max: usize,
) -> io::Result<Vec<u8>> {
    use crate::codec::chunked::{ChunkedDecoder, Frame, Limits};
    use tokio_util::codec::Decoder;
    let too_large = || invalid_data(format!("body over {max} bytes"));
    let mut body = Vec::new();
    match kind {
        BodyKind::None => {}
        BodyKind::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(too_large)?;
            while buf.len() < n {
                buf.reserve(n - buf.len());
                if r.read_buf(buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a body",
                    ));
                }
            }
            body.extend_from_slice(&buf.split_to(n));
        }
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(Limits::default());
            loop {
                match decoder
                    .decode(buf)
                    .map_err(|e| invalid_data(e.to_string()))?
                {
                    Some(Frame::Data(d)) => {
                        if body.len() + d.len() > max {
                            return Err(too_large());
                        }
                        body.extend_from_slice(&d);
                    }
                    Some(Frame::Trailers(_)) => {}
                    Some(Frame::End) => break,
                    None => {
                        buf.reserve(4096);
                        if r.read_buf(buf).await? == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside a chunked body",
                            ));
                        }
                    }
                }
            }
        }
        BodyKind::Close => loop {
            if buf.len() > max {
                return Err(too_large());
            }
            buf.reserve(4096);
            if r.read_buf(buf).await? == 0 {
                body.extend_from_slice(&buf.split());
                break;
            }
        },
    }
    Ok(body)
}

/// Write a whole buffer (a thin wrapper so callers need not import the extension trait).
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await
}

pub(crate) fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub(crate) fn invalid_input(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parse_literal_and_prefix() {
        let t = Target::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.prefix, "/api");
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("http:///x").is_err());
    }

    #[test]
    fn response_head_framing() {
        let (h, n) =
            parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx")
                .unwrap()
                .unwrap();
        assert_eq!(n, 47);
        assert_eq!(h.body, BodyKind::Chunked);
        assert!(!h.close);
        let (h, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, BodyKind::Length(5));
        assert!(h.close);
        let (h, _) = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyKind::Close);
        assert!(h.close);
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n")
            .unwrap()
            .is_none());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn body_reader_handles_every_framing() {
        let mut buf = BytesMut::from(&b"3\r\nabc"[..]);
        let mut rest: &[u8] = b"\r\n2\r\nde\r\n0\r\n\r\n";
        let body = read_body_to_vec(&mut rest, &mut buf, BodyKind::Chunked, 100)
            .await
            .unwrap();
        assert_eq!(body, b"abcde");
        let mut buf = BytesMut::from(&b"ab"[..]);
        let mut rest: &[u8] = b"cdXY";
        let body = read_body_to_vec(&mut rest, &mut buf, BodyKind::Length(4), 100)
            .await
            .unwrap();
        assert_eq!(body, b"abcd");
        assert_eq!(&buf[..], b"XY", "bytes after the body stay buffered");
        let mut buf = BytesMut::new();
        let mut rest: &[u8] = b"until close";
        let body = read_body_to_vec(&mut rest, &mut buf, BodyKind::Close, 100)
            .await
            .unwrap();
        assert_eq!(body, b"until close");
        let mut rest: &[u8] = b"";
        assert!(
            read_body_to_vec(&mut rest, &mut BytesMut::new(), BodyKind::Length(101), 100)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn vectored_write_survives_short_writes() {
        let (mut a, mut b) = tokio::io::duplex(3);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out
        });
        write_all_vectored(&mut a, [&b"5\r\n"[..], b"hello", b"\r\n"])
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), b"5\r\nhello\r\n");
    }
}
