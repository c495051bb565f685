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

use crate::upstream::connect::UpstreamRead;

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
        if buf.capacity() == 0 && self.0 == Self::MIN {
            if let Some(spare) = spare::take() {
                *buf = spare;
            }
        }
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

    /// Read into `buf`, with room made as `size` says: `Ok(0)` at end of input, `Err(None)`
    /// when the limit passed first. A source that can wait for input without a buffer does so
    /// with an empty `buf` given back to this thread's spares: an idle stream holds no read
    /// buffer, and takes one only when input is there.
    async fn read<R: BodySource>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
        size: &mut ReadSize,
    ) -> Result<usize, Option<io::Error>> {
        let lend = r.waits_without_buffer();
        let limit = self.limit;
        let sleep = &mut self.sleep;
        let mut armed = false;
        poll_fn(|cx: &mut Context<'_>| {
            // Twice at most: readiness can be stale once (the read then clears it).
            for _ in 0..2 {
                if lend && buf.is_empty() {
                    match r.poll_input(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Some(e))),
                        Poll::Pending => break,
                    }
                }
                let room = size.prepare(buf);
                match tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, buf) {
                    Poll::Ready(Ok(n)) => {
                        size.learn(n, room);
                        return Poll::Ready(Ok(n));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Some(e))),
                    Poll::Pending if lend && buf.is_empty() => {}
                    Poll::Pending => break,
                }
            }
            if lend && buf.is_empty() {
                spare::give(buf);
            }
            if !armed {
                armed = true;
                sleep.as_mut().reset(Instant::now() + limit);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(None)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Where a body is read from: an async reader, which may be able to wait for input without
/// a buffer (a TCP upstream can; a client half, whatever its transport, is treated as not).
pub(crate) trait BodySource: AsyncRead + Unpin {
    /// Whether [`BodySource::poll_input`] really waits for input.
    fn waits_without_buffer(&self) -> bool {
        false
    }

    /// Ready once a read may find input, without reading.
    fn poll_input(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead> BodySource for tokio::io::ReadHalf<S> {}

impl BodySource for UpstreamRead {
    fn waits_without_buffer(&self) -> bool {
        UpstreamRead::waits_without_buffer(self)
    }

    fn poll_input(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Read buffers of the smallest read size that no stream is using, kept per thread: a stream
/// waiting for input gives its empty buffer back and takes one when input is there, so idle
/// streams hold none and busy ones do not allocate per read.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::ReadSize;

    /// Spares kept per thread; more are freed.
    const KEEP: usize = 256;

    thread_local! {
        static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> Option<BytesMut> {
        SPARES.with(|s| s.borrow_mut().pop())
    }

    /// Take `buf` (empty) for the spares, leaving it without an allocation. Kept only when
    /// nothing else points into it and it has the usual size; freed otherwise.
    pub(super) fn give(buf: &mut BytesMut) {
        let mut b = std::mem::take(buf);
        if !b.try_reclaim(ReadSize::MIN) || b.capacity() > 2 * ReadSize::MIN {
            return;
        }
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP {
                s.push(b);
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_keep_only_free_buffers_of_the_usual_size() {
        // Run on a fresh thread: the spares are per thread.
        std::thread::spawn(|| {
            let mut buf = BytesMut::with_capacity(ReadSize::MIN);
            buf.extend_from_slice(b"5\r\nhello\r\n");
            let chunk = buf.split_to(5).freeze();
            buf.clear();
            // A chunk still points into it: not kept, and the caller's buffer is let go.
            spare::give(&mut buf);
            assert_eq!(buf.capacity(), 0);
            assert!(spare::take().is_none());
            drop(chunk);

            let mut buf = BytesMut::with_capacity(ReadSize::MIN);
            buf.extend_from_slice(b"abc");
            let _ = buf.split();
            spare::give(&mut buf);
            assert_eq!(buf.capacity(), 0);
            let spare = spare::take().expect("a free buffer is kept");
            assert!(spare.is_empty());
            assert!(spare.capacity() >= ReadSize::MIN);
            assert!(spare::take().is_none());

            // A grown buffer is freed, not kept.
            let mut big = BytesMut::with_capacity(16 * ReadSize::MIN);
            spare::give(&mut big);
            assert!(spare::take().is_none());

            // An empty buffer takes a spare before it allocates.
            let mut kept = BytesMut::with_capacity(ReadSize::MIN);
            spare::give(&mut kept);
            let mut empty = BytesMut::new();
            let room = ReadSize::new().prepare(&mut empty);
            assert!(room >= ReadSize::MIN);
            assert!(spare::take().is_none(), "the spare was used");
        })
        .join()
        .unwrap();
    }
}
