//! The body pumps: whole chunks in, whole chunks out, with timeouts between reads and natural
//! backpressure (a side is read only as fast as the other side accepts).
//!
//! Every chunk goes out as one vectored write (size line from a stack buffer, the payload `Bytes`
//! as received, CRLF) followed by a flush, so a token leaves the moment its chunk is complete
//! and no payload is copied. Chunks that were complete in the same read share the write (up to
//! four), each still a chunk of its own.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant, Sleep};
use tokio_util::codec::Decoder;

use crate::codec::chunked::{
    self, ChunkedDecoder, DecodeError, Field, Frame, SizeLine, CRLF, LAST_CHUNK,
};

/// How much room to make in a read buffer before a body read: small for token streams (an
/// idle stream should not pin a large buffer), doubling while reads fill the room given
/// (bulk transfers get large reads), halving again when they do not.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSize(usize);

impl ReadSize {
    const MIN: usize = 2 * 1024;
    const MAX: usize = 64 * 1024;

    pub(crate) fn new() -> ReadSize {
        ReadSize(Self::MIN)
    }

    /// Make room in `buf` for the next read; returns the room available.
    fn prepare(&self, buf: &mut BytesMut) -> usize {
        make_room(buf, self.0 / 2, self.0);
        buf.capacity() - buf.len()
    }

    /// Learn from a read of `n` bytes into `room` bytes of space.
    fn learn(&mut self, n: usize, room: usize) {
        if n >= room {
            self.0 = (self.0 * 2).min(Self::MAX);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(Self::MIN);
        }
    }
}

/// The idle limit between reads of one body (or of one connection's heads): a single timer,
/// armed only when a read has to wait and moved forward on each such read. Moving a deadline
/// later only updates the timer's entry, so a long stream of small reads costs no timer-wheel
/// insertion and removal per read, and a read that completes at once costs no timer at all.
pub(crate) struct ReadIdle<'a> {
    limit: Duration,
    sleep: Pin<&'a mut Sleep>,
}

impl<'a> ReadIdle<'a> {
    /// Reads that wait longer than `limit` for a byte fail with [`ReadError::Idle`]. `sleep`
    /// is any pinned timer; its deadline is set before use.
    pub(crate) fn new(limit: Duration, sleep: Pin<&'a mut Sleep>) -> ReadIdle<'a> {
        ReadIdle { limit, sleep }
    }

    /// Read into `buf`: `Ok(0)` at end of input, `Err(None)` when the limit passed first.
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
    ) -> Result<usize, Option<io::Error>> {
        let limit = self.limit;
        read_before(r, buf, &mut self.sleep, || Instant::now() + limit).await
    }
}

/// Read into `buf`, or give up when `sleep` fires. The deadline (from `deadline`) is set
/// only when the read cannot complete at once: `Err(None)` means it passed first.
pub(crate) async fn read_before<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    sleep: &mut Pin<&mut Sleep>,
    deadline: impl FnOnce() -> Instant,
) -> Result<usize, Option<io::Error>> {
    let mut deadline = Some(deadline);
    poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, buf) {
            return Poll::Ready(r.map_err(Some));
        }
        if let Some(at) = deadline.take() {
            sleep.as_mut().reset(at());
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(None)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Make room in `buf` before a read: at least `min` bytes free. An empty buffer gets its
/// whole allocation back when everything split off it was dropped (else a fresh one of
/// `want`), so a message that fits the buffer is read in one call, not partly into the tail
/// left behind by the previous one.
pub(crate) fn make_room(buf: &mut BytesMut, min: usize, want: usize) {
    if buf.capacity() - buf.len() < min || (buf.is_empty() && buf.capacity() < want) {
        buf.reserve(want);
    }
}

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
        let pending = &self.pending;
        let fut = async {
            w.write_all(pending).await?;
            w.flush().await
        };
        match timeout(self.write_stall, fut).await {
            Ok(Ok(())) => {
                // Free the head's buffer: a long stream should not keep it.
                self.pending = BytesMut::new();
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
        match timeout(self.write_stall, fut).await {
            Ok(Ok(())) => {
                if !self.pending.is_empty() {
                    // Free the head's buffer: a long stream should not keep it.
                    self.pending = BytesMut::new();
                }
                for data in pieces.iter().filter(|d| !d.is_empty()) {
                    self.bytes += data.len() as u64;
                    self.chunks += 1;
                }
                Ok(())
            }
            Ok(Err(e)) => Err(WriteError::Io(e)),
            Err(_) => Err(WriteError::Stalled),
        }
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
        match timeout(self.write_stall, fut).await {
            Ok(Ok(())) => {
                // Free the head's buffer: a long stream should not keep it.
                self.pending = BytesMut::new();
                Ok(())
            }
            Ok(Err(e)) => Err(WriteError::Io(e)),
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
    pub(crate) async fn next<R: AsyncRead + Unpin>(
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
            let room = size.prepare(buf);
            let n = match idle.read(r, buf).await {
                Err(None) => return Err(ReadError::Idle),
                Err(Some(e)) => return Err(ReadError::Io(e)),
                Ok(n) => n,
            };
            size.learn(n, room);
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
