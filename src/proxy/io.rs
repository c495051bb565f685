//! The I/O under the body pumps and head reads: read sizing, the idle timer between reads,
//! spare read buffers shared by idle streams, and vectored writes.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::upstream::connect::UpstreamRead;

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
    #[inline]
    pub(crate) fn prepare(&self, buf: &mut BytesMut) -> usize {
        if buf.capacity() == 0 && self.0 == Self::MIN {
            if let Some(spare) = spare::take() {
                *buf = spare;
            }
        }
        make_room(buf, self.0 / 2, self.0);
        buf.capacity() - buf.len()
    }

    /// Learn from a read of `n` bytes into `room` bytes of space.
    #[inline]
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
///
/// With a [`MinRate`], a read also fails once the bytes read so far fall below the rate.
pub(crate) struct ReadIdle<'a> {
    limit: Duration,
    sleep: Pin<&'a mut Sleep>,
    rate: Option<MinRate>,
    /// Bytes read through this timer.
    total: u64,
}

/// A minimum data rate for a body a client sends: after `grace` from `start`, the bytes
/// received must keep up with `bytes_per_sec` on average, or the next read fails as idle.
/// (Kestrel's default, 240 B/s after 5 s, is the model: a slow body is the client's fault
/// and must not hold an upstream connection.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    pub start: Instant,
    pub grace: Duration,
    pub bytes_per_sec: u64,
}

impl MinRate {
    /// The latest time the next byte may arrive after `received` bytes.
    pub(crate) fn next_byte_by(&self, received: u64) -> Instant {
        let rate = self.bytes_per_sec.max(1);
        let allowed = Duration::from_secs(received / rate)
            + Duration::from_nanos((received % rate) * 1_000_000_000 / rate);
        self.start + self.grace + allowed
    }
}

impl<'a> ReadIdle<'a> {
    /// Reads that wait longer than `limit` for a byte fail with [`ReadError::Idle`]. `sleep`
    /// is any pinned timer; its deadline is set before use.
    pub(crate) fn new(limit: Duration, sleep: Pin<&'a mut Sleep>) -> ReadIdle<'a> {
        ReadIdle {
            limit,
            sleep,
            rate: None,
            total: 0,
        }
    }

    /// Also hold the reads to a minimum data rate (`None`: none).
    pub(crate) fn with_rate(mut self, rate: Option<MinRate>) -> Self {
        self.rate = rate;
        self
    }

    /// Read into `buf`, with room made as `size` says: `Ok(0)` at end of input, `Err(None)`
    /// when the limit passed first. A source that can wait for input without a buffer does so
    /// with an empty `buf` given back to this thread's spares: an idle stream holds no read
    /// buffer, and takes one only when input is there.
    pub(crate) async fn read<R: BodySource>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
        size: &mut ReadSize,
    ) -> Result<usize, Option<io::Error>> {
        let lend = r.waits_without_buffer();
        let (limit, rate) = (self.limit, self.rate);
        let total = &mut self.total;
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
                        *total += n as u64;
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
                let idle = Instant::now() + limit;
                let at = match &rate {
                    Some(rate) => idle.min(rate.next_byte_by(*total)),
                    None => idle,
                };
                sleep.as_mut().reset(at);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(None)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Resolve once `token` is cancelled, at the cost of one atomic load per poll after the first.
///
/// A `WaitForCancellationFuture` re-registers its waker under the token's lock on every poll;
/// a stream's task polls it on every wake, once per forwarded event (about 90 instructions,
/// 2% of an event, measured with callgrind). This one registers on its first poll only:
/// the waker of the task that polls it does not change while it lives in that task, and the
/// cancellation wakes the task through the registration it made then.
pub(crate) async fn cancelled(token: &tokio_util::sync::CancellationToken) {
    let wait = token.cancelled();
    tokio::pin!(wait);
    let mut registered = false;
    poll_fn(|cx: &mut Context<'_>| {
        if registered && !token.is_cancelled() {
            return Poll::Pending;
        }
        registered = true;
        wait.as_mut().poll(cx)
    })
    .await
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
