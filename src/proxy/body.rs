//! The body pumps: whole chunks in, whole chunks out, with timeouts between reads and natural
//! backpressure (a side is read only as fast as the other side accepts).
//!
//! Every chunk goes out as one vectored write (size line from a stack buffer, the payload `Bytes`
//! as received, CRLF) followed by a flush, so a token leaves the moment its chunk is complete
//! and no payload is copied.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::Decoder;

use crate::codec::chunked::{
    self, ChunkedDecoder, DecodeError, Field, Frame, SizeLine, CRLF, LAST_CHUNK,
};

/// Read buffer growth step for body reads.
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// Write every byte of `bufs` with vectored writes. Cancel safe only in the sense that a
/// cancelled call leaves the stream in an unknown state: callers close it on cancellation.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// How a body is written to the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: one chunk per received chunk (or per read for re-framed bodies).
    Chunked,
    /// Raw bytes, the end marked by closing the connection (HTTP/1.0 clients).
    Close,
}

/// A piece of a body as it travels.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Data(Bytes),
    Trailers(Vec<Field>),
}

/// Writes body pieces in the outgoing framing and keeps count.
#[derive(Debug)]
pub(crate) struct BodyWriter {
    pub framing: OutFraming,
    pub forward_trailers: bool,
    pub bytes: u64,
    pub chunks: u64,
    pub write_stall: Duration,
}

impl BodyWriter {
    pub(crate) fn new(framing: OutFraming, forward_trailers: bool, write_stall: Duration) -> Self {
        BodyWriter {
            framing,
            forward_trailers,
            bytes: 0,
            chunks: 0,
            write_stall,
        }
    }

    /// Write one piece of data: a whole chunk in chunked framing, raw bytes otherwise.
    pub(crate) async fn data<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        data: &Bytes,
    ) -> Result<(), WriteError> {
        if data.is_empty() {
            return Ok(());
        }
        let fut = async {
            match self.framing {
                OutFraming::Chunked => {
                    let line = SizeLine::new(data.len());
                    let mut bufs = [
                        IoSlice::new(line.as_bytes()),
                        IoSlice::new(data),
                        IoSlice::new(CRLF),
                    ];
                    write_all_vectored(w, &mut bufs).await?;
                }
                OutFraming::Length(_) | OutFraming::Close | OutFraming::None => {
                    w.write_all(data).await?;
                }
            }
            w.flush().await
        };
        match timeout(self.write_stall, fut).await {
            Ok(Ok(())) => {
                self.bytes += data.len() as u64;
                self.chunks += 1;
                Ok(())
            }
            Ok(Err(e)) => Err(WriteError::Io(e)),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Write the end of the body: the last chunk with trailers (if forwarded) in chunked
    /// framing; nothing for the others.
    pub(crate) async fn end<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        trailers: &[Field],
    ) -> Result<(), WriteError> {
        if self.framing != OutFraming::Chunked {
            return Ok(());
        }
        let fut = async {
            if trailers.is_empty() || !self.forward_trailers {
                w.write_all(LAST_CHUNK).await?;
            } else {
                let mut out = BytesMut::with_capacity(64);
                out.extend_from_slice(b"0\r\n");
                chunked::write_fields(trailers, &mut out);
                out.extend_from_slice(CRLF);
                w.write_all(&out).await?;
            }
            w.flush().await
        };
        match timeout(self.write_stall, fut).await {
            Ok(r) => r.map_err(WriteError::Io),
            Err(_) => Err(WriteError::Stalled),
        }
    }
}

/// A write to the next hop failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    Io(io::Error),
    /// No progress for the write-stall timeout.
    Stalled,
}

/// Why reading a body stopped short.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The framing was broken.
    Decode(DecodeError),
    /// The peer closed before the body ended.
    Eof,
    /// Nothing arrived for the stream-idle timeout.
    Idle,
    /// The transport failed.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Decode(e) => write!(f, "{e}"),
            ReadError::Eof => f.write_str("the connection closed before the body ended"),
            ReadError::Idle => f.write_str("no body bytes within the stream-idle timeout"),
            ReadError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// How an incoming body is delimited, with the state to read it.
#[derive(Debug)]
pub(crate) enum BodyReader {
    None,
    Length { remaining: u64 },
    Chunked(Box<ChunkedDecoder>),
    Close { ended: bool },
}

/// What one call to [`BodyReader::next`] produced.
#[derive(Debug)]
pub(crate) enum Next {
    Piece(Piece),
    End,
}

impl BodyReader {
    /// Chunks that had to be reassembled from several reads (chunked bodies only).
    pub(crate) fn reassembled(&self) -> u64 {
        match self {
            BodyReader::Chunked(d) => d.reassembled_chunks(),
            _ => 0,
        }
    }

    /// The next piece of the body, reading from `r` into `buf` as needed. Bytes after the body
    /// stay in `buf`. Cancel safe: a cancelled call loses no bytes (they stay in `buf`).
    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
        idle: Duration,
    ) -> Result<Next, ReadError> {
        loop {
            match self {
                BodyReader::None => return Ok(Next::End),
                BodyReader::Length { remaining } => {
                    if *remaining == 0 {
                        return Ok(Next::End);
                    }
                    if !buf.is_empty() {
                        let n = (*remaining).min(buf.len() as u64) as usize;
                        *remaining -= n as u64;
                        return Ok(Next::Piece(Piece::Data(buf.split_to(n).freeze())));
                    }
                }
                BodyReader::Chunked(dec) => match dec.decode(buf) {
                    Ok(Some(Frame::Data(d))) => return Ok(Next::Piece(Piece::Data(d))),
                    Ok(Some(Frame::Trailers(t))) => return Ok(Next::Piece(Piece::Trailers(t))),
                    Ok(Some(Frame::End)) => return Ok(Next::End),
                    Ok(None) if dec.is_done() => return Ok(Next::End),
                    Ok(None) => {}
                    Err(e) => return Err(ReadError::Decode(e)),
                },
                BodyReader::Close { ended } => {
                    if !buf.is_empty() {
                        return Ok(Next::Piece(Piece::Data(buf.split().freeze())));
                    }
                    if *ended {
                        return Ok(Next::End);
                    }
                }
            }
            // Need more bytes.
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            let n = match timeout(idle, r.read_buf(buf)).await {
                Err(_) => return Err(ReadError::Idle),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                match self {
                    BodyReader::Close { ended } => *ended = true,
                    BodyReader::Chunked(dec) => {
                        return match dec.decode_eof(buf) {
                            Ok(Some(Frame::Data(d))) => Ok(Next::Piece(Piece::Data(d))),
                            Ok(Some(Frame::Trailers(t))) => Ok(Next::Piece(Piece::Trailers(t))),
                            Ok(Some(Frame::End)) | Ok(None) => Ok(Next::End),
                            Err(e) => Err(ReadError::Decode(e)),
                        };
                    }
                    BodyReader::Length { .. } => {
                        return Err(ReadError::Eof);
                    }
                    BodyReader::None => return Ok(Next::End),
                }
            }
        }
    }
}
