//! Bodies in and out: [`BodyReader`] turns bytes read into whole pieces (chunks, or the bytes
//! of a read for bodies without chunk boundaries) and [`BodyWriter`] writes pieces in the
//! outgoing framing.
//!
//! Every chunk goes out as one vectored write (size line from a stack buffer, the payload `Bytes`
//! as received, CRLF) followed by a flush, so a token leaves the moment its chunk is complete
//! and no payload is copied. Chunks that were complete in the same read share the write (up to
//! four), each still a chunk of its own.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::Decoder;

use crate::codec::chunked::{
    self, ChunkedDecoder, DecodeError, Field, Frame, SizeLine, CRLF, LAST_CHUNK,
};
use crate::proxy::io::{write_all_vectored, BodySource, ReadIdle, ReadSize};

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

impl From<crate::codec::framing::BodyFraming> for OutFraming {
    fn from(f: crate::codec::framing::BodyFraming) -> Self {
        use crate::codec::framing::BodyFraming;
        match f {
            BodyFraming::None => OutFraming::None,
            BodyFraming::Length(n) => OutFraming::Length(n),
            BodyFraming::Chunked => OutFraming::Chunked,
            BodyFraming::Close => OutFraming::Close,
        }
    }
}

/// A piece of a body as it travels.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Data(Bytes),
    Trailers(Vec<Field>),
}

/// Most data pieces written together by [`BodyWriter::data_batch`].
pub(crate) const BATCH: usize = 4;

/// Writes body pieces in the outgoing framing and keeps count.
///
/// Bytes set with [`BodyWriter::set_pending`] (a message head) go out in the same vectored
/// write as the next piece, saving a system call per message when the head and the start of
/// its body are at hand together; [`BodyWriter::flush_pending`] sends them alone when the body
/// is not (a streaming client must get its head without waiting for the first token).
#[derive(Debug)]
pub(crate) struct BodyWriter {
    pub framing: OutFraming,
    pub forward_trailers: bool,
    pub bytes: u64,
    pub chunks: u64,
    pub write_stall: Duration,
    pending: BytesMut,
}

impl BodyWriter {
    pub(crate) fn new(framing: OutFraming, forward_trailers: bool, write_stall: Duration) -> Self {
        BodyWriter {
            framing,
            forward_trailers,
            bytes: 0,
            chunks: 0,
            write_stall,
            pending: BytesMut::new(),
        }
    }

    /// Bytes to write in front of the next piece (or end).
    pub(crate) fn set_pending(&mut self, head: BytesMut) {
        self.pending = head;
    }

    /// Write the pending bytes alone, now.
    pub(crate) async fn flush_pending<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.data_batch(w, &[]).await
    }

    /// The outcome of a write bounded by the write-stall timeout; after a success the pending
    /// head is written, and its buffer is freed (a long stream should not keep it).
    fn written(
        &mut self,
        r: Result<io::Result<()>, tokio::time::error::Elapsed>,
    ) -> Result<(), WriteError> {
        match r {
            Ok(Ok(())) => {
                if !self.pending.is_empty() {
                    self.pending = BytesMut::new();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(WriteError::Io(e)),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Write one piece of data: a whole chunk in chunked framing, raw bytes otherwise, behind
    /// any pending head, in one vectored write.
    pub(crate) async fn data<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        data: &Bytes,
    ) -> Result<(), WriteError> {
        self.data_batch(w, std::slice::from_ref(data)).await
    }

    /// Write up to [`BATCH`] pieces of data, each a whole chunk of its own in chunked framing
    /// (raw bytes otherwise), behind any pending head, in one vectored write and one flush.
    /// The pieces were all complete when taken, so none waits for another; the chunks leave
    /// exactly as they came. Empty pieces are skipped.
    pub(crate) async fn data_batch<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        pieces: &[Bytes],
    ) -> Result<(), WriteError> {
        let pieces = &pieces[..pieces.len().min(BATCH)];
        let lines: [SizeLine; BATCH] =
            std::array::from_fn(|i| SizeLine::new(pieces.get(i).map_or(0, Bytes::len)));
        let chunked = self.framing == OutFraming::Chunked;
        let pending = &self.pending;
        let fut = async {
            let mut slices = [IoSlice::new(&[]); 1 + 3 * BATCH];
            let mut n = 0;
            if !pending.is_empty() {
                slices[n] = IoSlice::new(pending);
                n += 1;
            }
            for (data, line) in pieces.iter().zip(&lines) {
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    slices[n] = IoSlice::new(line.as_bytes());
                    slices[n + 1] = IoSlice::new(data);
                    slices[n + 2] = IoSlice::new(CRLF);
                    n += 3;
                } else {
                    slices[n] = IoSlice::new(data);
                    n += 1;
                }
            }
            if n == 0 {
                return Ok(());
            }
            write_all_vectored(w, &mut slices[..n]).await?;
            w.flush().await
        };
        let r = timeout(self.write_stall, fut).await;
        self.written(r)?;
        for data in pieces.iter().filter(|d| !d.is_empty()) {
            self.bytes += data.len() as u64;
            self.chunks += 1;
        }
        Ok(())
    }

    /// Write the end of the body (behind any pending head): the last chunk with trailers (if
    /// forwarded) in chunked framing; nothing more for the others.
    pub(crate) async fn end<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        trailers: &[Field],
    ) -> Result<(), WriteError> {
        if self.framing != OutFraming::Chunked {
            return self.flush_pending(w).await;
        }
        let mut last = BytesMut::new();
        let end: &[u8] = if trailers.is_empty() || !self.forward_trailers {
            LAST_CHUNK
        } else {
            last.extend_from_slice(b"0\r\n");
            chunked::write_fields(trailers, &mut last);
            last.extend_from_slice(CRLF);
            &last
        };
        let pending = &self.pending;
        let fut = async {
            let mut slices = [IoSlice::new(pending), IoSlice::new(end)];
            let from = usize::from(pending.is_empty());
            write_all_vectored(w, &mut slices[from..]).await?;
            w.flush().await
        };
        let r = timeout(self.write_stall, fut).await;
        self.written(r)
    }
}

/// A write to the next hop failed.
#[derive(Debug)]
pub enum WriteError {
    Io(io::Error),
    /// No progress for the write-stall timeout.
    Stalled,
}

/// Why reading a body stopped short.
#[derive(Debug)]
pub enum ReadError {
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

    /// The next piece if `buf` already holds it (or the end): no read. `Ok(None)` when more
    /// bytes are needed.
    pub(crate) fn next_buffered(&mut self, buf: &mut BytesMut) -> Result<Option<Next>, ReadError> {
        match self {
            BodyReader::None => Ok(Some(Next::End)),
            BodyReader::Length { remaining } => {
                if *remaining == 0 {
                    return Ok(Some(Next::End));
                }
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= n as u64;
                Ok(Some(Next::Piece(Piece::Data(buf.split_to(n).freeze()))))
            }
            BodyReader::Chunked(dec) => match dec.decode(buf) {
                Ok(Some(Frame::Data(d))) => Ok(Some(Next::Piece(Piece::Data(d)))),
                Ok(Some(Frame::Trailers(t))) => Ok(Some(Next::Piece(Piece::Trailers(t)))),
                Ok(Some(Frame::End)) => Ok(Some(Next::End)),
                Ok(None) if dec.is_done() => Ok(Some(Next::End)),
                Ok(None) => Ok(None),
                Err(e) => Err(ReadError::Decode(e)),
            },
            BodyReader::Close { ended } => {
                if !buf.is_empty() {
                    Ok(Some(Next::Piece(Piece::Data(buf.split().freeze()))))
                } else if *ended {
                    Ok(Some(Next::End))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The next piece of the body, reading from `r` into `buf` as needed. Bytes after the body
    /// stay in `buf`. Cancel safe: a cancelled call loses no bytes (they stay in `buf`).
    pub(crate) async fn next<R: BodySource>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
        idle: &mut ReadIdle<'_>,
        size: &mut ReadSize,
    ) -> Result<Next, ReadError> {
        loop {
            if let Some(next) = self.next_buffered(buf)? {
                return Ok(next);
            }
            // Need more bytes.
            let n = match idle.read(r, buf, size).await {
                Err(None) => return Err(ReadError::Idle),
                Err(Some(e)) => return Err(ReadError::Io(e)),
                Ok(n) => n,
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
                    BodyReader::Length { .. } => return Err(ReadError::Eof),
                    BodyReader::None => return Ok(Next::End),
                }
            }
        }
    }
}
