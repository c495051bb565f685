//! The little HTTP/1.1 the load tool needs: target URLs, response heads, vectored writes.
//!
//! The load tool speaks HTTP itself instead of going through a general client so that it adds
//! as little CPU and delay of its own as possible, and so that it sees chunk boundaries exactly
//! as they came off the wire (through [`ChunkedDecoder`](crate::codec::chunked::ChunkedDecoder)).
//! Connections are [`Peer`]s: heads are read with the harness's one head parser, in place,
//! without allocating.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::harness::peer::{Framing, HeadView, Peer};

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

/// What the load tool needs from a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code (never interim: those are skipped).
    pub status: u16,
    /// How the body is delimited.
    pub body: Framing,
    /// The connection closes after this response.
    pub close: bool,
}

impl ResponseHead {
    /// What the tool needs from a parsed head (the tool never sends `HEAD`).
    pub fn of(head: &HeadView<'_, '_>) -> io::Result<ResponseHead> {
        let body = head.response_framing("GET")?;
        Ok(ResponseHead {
            status: head.status,
            body,
            close: body == Framing::Close || !head.keep_alive(),
        })
    }
}

/// Read response heads until a final one and return what the tool needs from it; the head's
/// bytes are consumed and any body bytes that came with it stay in the peer's buffer. Allocates
/// nothing.
///
/// Cancel safety: cancel safe between heads (see [`Peer::final_head_with`]).
pub async fn read_response_head<S: AsyncRead + Unpin>(
    peer: &mut Peer<S>,
) -> io::Result<ResponseHead> {
    peer.final_head_with(ResponseHead::of).await?
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

/// Read and drop a `Content-Length` body, buffered bytes first.
pub async fn skip_length_body<S: AsyncRead + Unpin>(
    peer: &mut Peer<S>,
    mut remaining: u64,
) -> io::Result<()> {
    loop {
        let take = remaining.min(peer.buf.len() as u64) as usize;
        peer.buf.advance(take);
        remaining -= take as u64;
        if remaining == 0 {
            return Ok(());
        }
        peer.read_more_inside("a body").await?;
    }
}

/// Read a whole (small) body of any framing into memory, buffered bytes first; at most `max`
/// bytes.
pub async fn read_body_to_vec<S: AsyncRead + Unpin>(
    peer: &mut Peer<S>,
    kind: Framing,
    max: usize,
) -> io::Result<Vec<u8>> {
    use crate::codec::chunked::{ChunkedDecoder, Frame, Limits};
    use tokio_util::codec::Decoder;
    let too_large = || invalid_data(format!("body over {max} bytes"));
    let mut body = Vec::new();
    match kind {
        Framing::None => {}
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(too_large)?;
            while peer.buf.len() < n {
                peer.read_more_inside("a body").await?;
            }
            body.extend_from_slice(&peer.buf.split_to(n));
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(Limits::default());
            loop {
                match decoder
                    .decode(&mut peer.buf)
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
                        peer.read_more_inside("a chunked body").await?;
                    }
                }
            }
        }
        Framing::Close => loop {
            if peer.buf.len() > max {
                return Err(too_large());
            }
            if peer.read_more().await? == 0 {
                body.extend_from_slice(&peer.buf.split());
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
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::harness::peer::{parse_head_with, HeadKind, PeerLimits};

    #[test]
    fn target_parse_literal_and_prefix() {
        let t = Target::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.prefix, "/api");
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("http:///x").is_err());
    }

    /// The head at the front of `buf` as the tool reads it, and its length.
    fn parse_response_head(buf: &[u8]) -> io::Result<Option<(ResponseHead, usize)>> {
        let limits = PeerLimits::default();
        parse_head_with(buf, HeadKind::Response, &limits, |v| {
            ResponseHead::of(v).map(|h| (h, v.len))
        })?
        .transpose()
    }

    #[test]
    fn response_head_framing() {
        let (h, n) =
            parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx")
                .unwrap()
                .unwrap();
        assert_eq!(n, 47);
        assert_eq!(h.body, Framing::Chunked);
        assert!(!h.close);
        let (h, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, Framing::Length(5));
        assert!(h.close);
        let (h, _) = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Framing::Close);
        assert!(h.close);
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n")
            .unwrap()
            .is_none());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn response_head_skips_interim_answers() {
        let wire: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nrest";
        let mut peer = Peer::new(wire);
        let h = read_response_head(&mut peer).await.unwrap();
        assert_eq!((h.status, h.body), (204, Framing::None));
        assert_eq!(&peer.buf[..], b"rest");
    }

    #[tokio::test]
    async fn body_reader_handles_every_framing() {
        let rest: &[u8] = b"\r\n2\r\nde\r\n0\r\n\r\n";
        let mut peer = Peer::with_buffer(rest, BytesMut::from(&b"3\r\nabc"[..]));
        let body = read_body_to_vec(&mut peer, Framing::Chunked, 100)
            .await
            .unwrap();
        assert_eq!(body, b"abcde");
        let rest: &[u8] = b"cdXY";
        let mut peer = Peer::with_buffer(rest, BytesMut::from(&b"ab"[..]));
        let body = read_body_to_vec(&mut peer, Framing::Length(4), 100)
            .await
            .unwrap();
        assert_eq!(body, b"abcd");
        assert_eq!(&peer.buf[..], b"XY", "bytes after the body stay buffered");
        let mut peer = Peer::new(&b"until close"[..]);
        let body = read_body_to_vec(&mut peer, Framing::Close, 100)
            .await
            .unwrap();
        assert_eq!(body, b"until close");
        let mut peer = Peer::new(&b""[..]);
        assert!(read_body_to_vec(&mut peer, Framing::Length(101), 100)
            .await
            .is_err());
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
