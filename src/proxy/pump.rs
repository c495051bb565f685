//! The body pump, written once for both directions.
//!
//! ```text
//!   source ──read──► BodyReader ──whole pieces──► Flow::stage ──units──► BodyWriter ──► sink
//!                      (chunked decoder,            (identity, or a          (one vectored
//!                       length, close)               stream stage)            write + flush)
//! ```
//!
//! A [`Pump`] reads from its source only when nothing whole is buffered, gathers the pieces
//! that were already whole after one read (up to [`BATCH`]), passes them through its [`Flow`]
//! and writes what the flow emits, each unit a chunk of its own, in one vectored write per
//! [`BATCH`] units. Nothing whole waits for a later read. Backpressure is natural: the source is
//! read only as fast as the sink takes what was read. On any failure nothing more is written:
//! a body cut on one side is never completed on the other (no terminating chunk).
//!
//! The [`Flow`] is what differs between directions: the request side holds what it writes for
//! a replay; the response side runs its stream stage and times what it forwards.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::codec::chunked::Field;
use crate::metrics::{Direction, Metrics};
use crate::proxy::body::{BodyReader, BodyWriter, Next, Piece, ReadError, WriteError, BATCH};
use crate::proxy::io::{BodySource, MinRate, ReadIdle, ReadSize};

/// What a pump does with a body besides moving it: the direction's stage and hooks.
pub(crate) trait Flow {
    /// Whether pieces leave exactly as they come; the pump then skips [`Flow::stage`].
    fn identity(&self) -> bool {
        true
    }

    /// A whole piece from the reader: append to `out` the units to write now.
    fn stage(&mut self, piece: Bytes, out: &mut Vec<Bytes>) {
        out.push(piece);
    }

    /// The body ended cleanly: append to `out` what the stage still holds.
    fn stage_end(&mut self, _trailers: &[Field], _out: &mut Vec<Bytes>) {}

    /// `units` are about to be written.
    fn before_write(&mut self, _units: &[Bytes]) {}

    /// `units` were written and flushed.
    fn written(&mut self, _units: &[Bytes]) {}

    /// The body was read whole (with `trailers`, which the flow may filter); its end is
    /// about to be written.
    fn before_end(&mut self, _trailers: &mut Vec<Field>) {}
}

/// Why a pump stopped short.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// Reading the body failed: bad framing, idle too long, cut, or the transport failed.
    Read(ReadError),
    /// Writing to the next hop failed or stalled.
    Write(WriteError),
}

/// One body moving from `src` to `dst`. The reader, writer and flow are borrowed so their
/// state (counts, what the flow kept) outlives a pump that was cancelled.
pub(crate) struct Pump<'a, R, W, F> {
    pub src: &'a mut R,
    /// Bytes read from `src` and not used yet; bytes after the body stay in it.
    pub buf: &'a mut BytesMut,
    pub dst: &'a mut W,
    pub reader: &'a mut BodyReader,
    pub writer: &'a mut BodyWriter,
    pub flow: &'a mut F,
    /// The longest wait for a read of `src`.
    pub idle: Duration,
    /// The slowest `src` may send, on average (request bodies).
    pub min_rate: Option<MinRate>,
    pub metrics: &'a Metrics,
    pub dir: Direction,
}

/// What the reader gave that the pump has not handled yet.
type Pending = Option<Result<Next, ReadError>>;

impl<R: BodySource, W: AsyncWrite + Unpin, F: Flow> Pump<'_, R, W, F> {
    /// Move the body until its end (`Ok`) or a failure. Cancel safe in the sense the callers
    /// need: a cancelled pump loses no bytes of `src` (they stay in `buf`), and its sink is
    /// left in an unknown state, so the caller closes it.
    pub(crate) async fn run(self) -> Result<(), PumpError> {
        let Pump {
            src,
            buf,
            dst,
            reader,
            writer,
            flow,
            idle,
            min_rate,
            metrics,
            dir,
        } = self;
        let mut trailers = Vec::new();
        let mut reassembled = reader.reassembled();
        let mut read_size = ReadSize::new();
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let mut idle = ReadIdle::new(idle, sleep).with_rate(min_rate);
        let mut carry: Pending = None;
        // Units a non-identity stage emitted; allocated on its first use.
        let mut staged: Vec<Bytes> = Vec::new();
        loop {
            let next = match carry.take() {
                Some(next) => next,
                None => match reader.next_buffered(buf) {
                    Ok(Some(next)) => Ok(next),
                    Ok(None) => {
                        // Nothing at hand: a pending head must not wait for the body.
                        writer.flush_pending(dst).await.map_err(PumpError::Write)?;
                        reader.next(src, buf, &mut idle, &mut read_size).await
                    }
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok(Next::Piece(Piece::Data(d))) => {
                    // Pieces that arrived in the same read leave in the same write.
                    let (mut batch, n) = gather(d, reader, buf, &mut carry);
                    let sizes: [usize; BATCH] = std::array::from_fn(|i| batch[i].len());
                    let units: &[Bytes] = if flow.identity() {
                        &batch[..n]
                    } else {
                        staged.clear();
                        for d in &mut batch[..n] {
                            flow.stage(std::mem::take(d), &mut staged);
                        }
                        &staged
                    };
                    for group in units.chunks(BATCH) {
                        flow.before_write(group);
                        writer
                            .data_batch(dst, group)
                            .await
                            .map_err(PumpError::Write)?;
                        flow.written(group);
                    }
                    // Written: let go of the units now, so the read buffer they share is the
                    // reader's alone again and the next read reuses it instead of allocating.
                    staged.clear();
                    for &size in &sizes[..n] {
                        metrics.chunk_forwarded(dir, size);
                    }
                    let now = reader.reassembled();
                    for _ in reassembled..now {
                        metrics.chunk_reassembled(dir);
                    }
                    reassembled = now;
                }
                Ok(Next::Piece(Piece::Trailers(t))) => trailers = t,
                Ok(Next::End) => {
                    if !flow.identity() {
                        staged.clear();
                        flow.stage_end(&trailers, &mut staged);
                        for units in staged.chunks(BATCH) {
                            write(dst, writer, flow, units).await?;
                        }
                    }
                    flow.before_end(&mut trailers);
                    writer.end(dst, &trailers).await.map_err(PumpError::Write)?;
                    return Ok(());
                }
                Err(e) => return Err(PumpError::Read(e)),
            }
        }
    }
}

/// Write up to [`BATCH`] units in one vectored write, with the flow's hooks around it.
async fn write<W: AsyncWrite + Unpin, F: Flow>(
    dst: &mut W,
    writer: &mut BodyWriter,
    flow: &mut F,
    units: &[Bytes],
) -> Result<(), PumpError> {
    flow.before_write(units);
    writer
        .data_batch(dst, units)
        .await
        .map_err(PumpError::Write)?;
    flow.written(units);
    Ok(())
}

/// After the data piece `first`, take the data pieces already whole in `buf`, up to
/// [`BATCH`] in all, to be written together. The first thing that is not one (trailers, the
/// end, an error) is left in `carry` for the pump's next turn; nothing is read.
fn gather(
    first: Bytes,
    reader: &mut BodyReader,
    buf: &mut BytesMut,
    carry: &mut Pending,
) -> ([Bytes; BATCH], usize) {
    let mut batch: [Bytes; BATCH] = Default::default();
    batch[0] = first;
    let mut n = 1;
    while n < BATCH {
        match reader.next_buffered(buf) {
            Ok(Some(Next::Piece(Piece::Data(d)))) => {
                batch[n] = d;
                n += 1;
            }
            Ok(Some(other)) => {
                *carry = Some(Ok(other));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                *carry = Some(Err(e));
                break;
            }
        }
    }
    (batch, n)
}
