//! The harness's measuring instrument: a small, strict HTTP/1.1 client that writes a request
//! exactly as told (each piece its own write, with pauses) and reads the response recording
//! every chunk boundary exactly, together with the TCP reads each chunk arrived in.
//!
//! The response head is parsed with httparse; a chunked body goes through
//! [`ChunkedDecoder`], so a chunk is recorded as the
//! sender framed it, whatever the reads looked like. Nothing is forgiven: a framing error ends
//! the body with [`BodyEnd::Malformed`], a connection closed before the last chunk with
//! [`BodyEnd::Cut`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::codec::chunked::{ChunkedDecoder, Field, Frame, Limits};
use crate::harness::split::{Pause, Piece};

/// Largest response head the client accepts.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most response header fields the client accepts.
pub const MAX_HEADERS: usize = 100;
/// Largest body the client buffers (Content-Length or close-delimited).
pub const MAX_BODY_BYTES: usize = 64 << 20;
const READ_BUF: usize = 16 << 10;

/// The pauses a writer makes between pieces (see [`Pause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gaps {
    /// Before a piece that continues a chunk cut by a split strategy.
    pub split: Duration,
    /// Before a piece that starts the next chunk.
    pub token: Duration,
    /// Between a request head and the first piece of its body, so that the peer has acted on
    /// the head (a proxy has connected upstream) before the body starts to arrive.
    pub body: Duration,
}

impl Default for Gaps {
    /// 2 ms between the pieces of a chunk, none between chunks, 20 ms before a body.
    fn default() -> Self {
        Gaps {
            split: Duration::from_millis(2),
            token: Duration::ZERO,
            body: Duration::from_millis(20),
        }
    }
}

/// Write `pieces` one write and one flush each, pausing before each as its [`Pause`] says.
///
/// Set `TCP_NODELAY` on the socket first so each write leaves as its own segment.
/// Cancel safety: dropping the future may leave a piece half written.
pub async fn write_pieces<W>(w: &mut W, pieces: &[Piece], gaps: Gaps) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    for p in pieces {
        pause(p.pause, gaps).await;
        w.write_all(&p.bytes).await?;
        w.flush().await?;
    }
    Ok(())
}

/// Wait as `p` says.
pub async fn pause(p: Pause, gaps: Gaps) {
    match p {
        Pause::None => {}
        Pause::Yield => tokio::task::yield_now().await,
        Pause::Split => sleep_or_yield(gaps.split).await,
        Pause::Token => sleep_or_yield(gaps.token).await,
    }
}

async fn sleep_or_yield(d: Duration) {
    if d.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(d).await;
    }
}

/// How the response body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length`.
    Length(u64),
    /// Read until the connection closed.
    Close,
}

/// How the response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// Complete: last chunk and final CRLF, all Content-Length bytes, or EOF of a
    /// close-delimited body.
    Complete,
    /// The connection closed cleanly before the body was complete.
    Cut,
    /// The connection failed (reset) before the body was complete.
    Reset(String),
    /// The chunked framing was invalid.
    Malformed(String),
}

/// One chunk as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedChunk {
    /// The chunk's payload.
    pub payload: Bytes,
    /// How many TCP reads delivered some of its wire bytes (size line to CRLF); 1 means it
    /// arrived whole in one read.
    pub reads: u32,
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order (values decoded lossily as UTF-8; names lowercased).
    pub headers: Vec<(String, String)>,
    /// How the body was delimited.
    pub framing: Framing,
    /// For a chunked body, each chunk as framed by the sender.
    pub chunks: Vec<RecordedChunk>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<Field>,
    /// The body payload (for a chunked body, the chunks concatenated).
    pub body: Bytes,
    /// How the body ended.
    pub end: BodyEnd,
    /// Number of TCP reads that carried body bytes.
    pub body_reads: usize,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Chunks that arrived spread over more than one read.
    pub fn split_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.reads > 1).count()
    }
}

/// Connect to `addr`, write `head` in one write, then `body` as pieces, and read the response.
/// `head_request` says the request was `HEAD` (no body in the answer). The whole exchange is
/// bounded by `deadline`.
pub async fn exchange(
    addr: SocketAddr,
    head: &[u8],
    body: &[Piece],
    gaps: Gaps,
    head_request: bool,
    deadline: Duration,
) -> io::Result<RawResponse> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(head).await?;
        stream.flush().await?;
        if !body.is_empty() && !gaps.body.is_zero() {
            tokio::time::sleep(gaps.body).await;
        }
        // A server may answer (and close) before it has read the body; the answer matters
        // more than the failed write, so read it whatever happened to the body.
        let wrote = write_pieces(&mut stream, body, gaps).await;
        match read_response(&mut stream, head_request).await {
            Ok(r) => Ok(r),
            Err(e) => Err(wrote.err().unwrap_or(e)),
        }
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no complete response within {} ms", deadline.as_millis()),
        )),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parsed head: status, headers, head length in bytes.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp
                .code
                .ok_or_else(|| invalid("response without status"))?;
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((status, headers, n)))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD_BYTES {
                Err(invalid("response head too large"))
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(invalid(format!("invalid response head: {e}"))),
    }
}

fn framing_of(
    status: u16,
    headers: &[(String, String)],
    head_request: bool,
) -> io::Result<Framing> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    let te: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    let cl: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(invalid(
                "response has both content-length and transfer-encoding",
            ));
        }
        let joined = te.join(",");
        let last = joined
            .split(',')
            .map(str::trim)
            .rfind(|s| !s.is_empty())
            .unwrap_or("");
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(invalid(format!("unsupported transfer-encoding {joined:?}")));
        }
        return Ok(Framing::Chunked);
    }
    match cl.as_slice() {
        [] => Ok(Framing::Close),
        [v] => {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(format!("invalid content-length {v:?}")));
            }
            v.parse::<u64>()
                .map(Framing::Length)
                .map_err(|_| invalid(format!("invalid content-length {v:?}")))
        }
        _ => Err(invalid("response has several content-length fields")),
    }
}

/// Read one response from `stream` (skipping `100 Continue` and other 1xx answers).
///
/// Cancel safety: not cancel safe; bytes read are lost if the future is dropped.
pub async fn read_response<R>(stream: &mut R, head_request: bool) -> io::Result<RawResponse>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let (status, headers) = loop {
        let parsed = parse_head(&buf)?;
        let Some((status, headers, n)) = parsed else {
            let got = read_some(stream, &mut buf).await?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response head",
                ));
            }
            continue;
        };
        let _ = buf.split_to(n);
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, headers);
    };
    let framing = framing_of(status, &headers, head_request)?;
    let mut resp = RawResponse {
        status,
        headers,
        framing,
        chunks: Vec::new(),
        trailers: Vec::new(),
        body: Bytes::new(),
        end: BodyEnd::Complete,
        body_reads: 0,
    };
    match framing {
        Framing::None => {}
        Framing::Chunked => read_chunked(stream, buf, &mut resp).await,
        Framing::Length(n) => read_length(stream, buf, n, &mut resp).await?,
        Framing::Close => read_close(stream, buf, &mut resp).await?,
    }
    Ok(resp)
}

async fn read_some<R>(stream: &mut R, buf: &mut BytesMut) -> io::Result<usize>
where
    R: tokio::io::AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_BUF / 2 {
        buf.reserve(READ_BUF);
    }
    stream.read_buf(buf).await
}

async fn read_chunked<R>(stream: &mut R, mut buf: BytesMut, resp: &mut RawResponse)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut dec = ChunkedDecoder::new(Limits::default().max_chunk_size(MAX_BODY_BYTES as u64));
    // Body offsets at which each read ended.
    let mut read_ends: Vec<u64> = Vec::new();
    let mut received: u64 = buf.len() as u64;
    if !buf.is_empty() {
        read_ends.push(received);
        resp.body_reads += 1;
    }
    let mut chunk_start: u64 = 0;
    let mut body = BytesMut::new();
    loop {
        // Drain every frame the buffered bytes hold.
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Frame::Data(p))) => {
                    let end = dec.consumed();
                    let inner = read_ends
                        .iter()
                        .filter(|&&r| r > chunk_start && r < end)
                        .count();
                    chunk_start = end;
                    body.extend_from_slice(&p);
                    resp.chunks.push(RecordedChunk {
                        payload: p,
                        reads: u32::try_from(inner + 1).unwrap_or(u32::MAX),
                    });
                    if body.len() > MAX_BODY_BYTES {
                        resp.end = BodyEnd::Malformed("body over the client's limit".into());
                        resp.body = body.freeze();
                        return;
                    }
                }
                Ok(Some(Frame::Trailers(t))) => resp.trailers = t,
                Ok(Some(Frame::End)) => {
                    resp.end = BodyEnd::Complete;
                    resp.body = body.freeze();
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    resp.end = BodyEnd::Malformed(e.to_string());
                    resp.body = body.freeze();
                    return;
                }
            }
        }
        match read_some(stream, &mut buf).await {
            Ok(0) => {
                resp.end = BodyEnd::Cut;
                break;
            }
            Ok(n) => {
                received += n as u64;
                read_ends.push(received);
                resp.body_reads += 1;
            }
            Err(e) => {
                resp.end = BodyEnd::Reset(e.to_string());
                break;
            }
        }
    }
    resp.body = body.freeze();
}

async fn read_length<R>(
    stream: &mut R,
    mut buf: BytesMut,
    n: u64,
    resp: &mut RawResponse,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_BODY_BYTES)
        .ok_or_else(|| invalid("content-length over the client's limit"))?;
    if !buf.is_empty() {
        resp.body_reads += 1;
    }
    while buf.len() < n {
        match read_some(stream, &mut buf).await {
            Ok(0) => {
                resp.end = BodyEnd::Cut;
                break;
            }
            Ok(_) => resp.body_reads += 1,
            Err(e) => {
                resp.end = BodyEnd::Reset(e.to_string());
                break;
            }
        }
    }
    buf.truncate(n);
    resp.body = buf.freeze();
    Ok(())
}

async fn read_close<R>(stream: &mut R, mut buf: BytesMut, resp: &mut RawResponse) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    if !buf.is_empty() {
        resp.body_reads += 1;
    }
    loop {
        match read_some(stream, &mut buf).await {
            Ok(0) => break,
            Ok(_) => {
                resp.body_reads += 1;
                if buf.len() > MAX_BODY_BYTES {
                    return Err(invalid("body over the client's limit"));
                }
            }
            Err(e) => {
                resp.end = BodyEnd::Reset(e.to_string());
                break;
            }
        }
    }
    resp.body = buf.freeze();
    Ok(())
}

/// A request head: `METHOD path HTTP/1.1`, `host`, the given fields, `connection: close`.
pub fn request_head(method: &str, path: &str, host: &str, fields: &[(&str, String)]) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (n, v) in fields {
        h.push_str(n);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str("connection: close\r\n\r\n");
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_from(parts: Vec<&'static [u8]>) -> RawResponse {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            for p in parts {
                server.write_all(p).await.unwrap();
                server.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        read_response(&mut client, false).await.unwrap()
    }

    #[tokio::test]
    async fn read_response_records_chunks_and_their_reads() {
        let r = read_from(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\nde",
            b"fgh\r\n2\r\nij\r\n",
            b"0\r\n\r\n",
        ])
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.end, BodyEnd::Complete);
        let got: Vec<(&[u8], u32)> = r.chunks.iter().map(|c| (&c.payload[..], c.reads)).collect();
        assert_eq!(got, [(&b"abc"[..], 1), (b"defgh", 2), (b"ij", 1)]);
        assert_eq!(r.split_chunks(), 1);
        assert_eq!(&r.body[..], b"abcdefghij");
    }

    #[tokio::test]
    async fn read_response_reports_cut_and_malformed_bodies() {
        let r = read_from(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ])
        .await;
        assert_eq!(r.end, BodyEnd::Cut);
        assert_eq!(r.chunks.len(), 1);
        let r = read_from(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        ])
        .await;
        assert!(matches!(r.end, BodyEnd::Malformed(_)), "{:?}", r.end);
    }

    #[tokio::test]
    async fn read_response_reads_length_and_skips_continue() {
        let r = read_from(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel",
            b"lo",
        ])
        .await;
        assert_eq!(r.framing, Framing::Length(5));
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.body_reads, 2);
    }

    #[test]
    fn framing_rejects_ambiguous_responses() {
        let h = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(framing_of(
            200,
            &h(&[("content-length", "1"), ("transfer-encoding", "chunked")]),
            false
        )
        .is_err());
        assert!(framing_of(
            200,
            &h(&[("content-length", "1"), ("content-length", "1")]),
            false
        )
        .is_err());
        assert!(framing_of(200, &h(&[("content-length", "+1")]), false).is_err());
        assert_eq!(framing_of(204, &h(&[]), false).unwrap(), Framing::None);
        assert_eq!(framing_of(200, &h(&[]), true).unwrap(), Framing::None);
    }
}
