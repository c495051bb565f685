//! The request body held for a retry, accounted by the memory it pins.
//!
//! A piece split off a read buffer keeps that whole buffer alive, so holding small pieces as
//! handles could pin far more than their length (a body of one-byte chunks pinned megabytes
//! under a 1 MiB limit). So pieces under [`COPY_BELOW`] are copied into compact blocks whose
//! whole capacity is counted, and larger ones are held as handles and counted at twice their
//! length (a handle may share its buffer with a neighbour of at most the largest read). Each
//! piece also counts the handle itself. Chunk boundaries are kept: a retry sends the same
//! chunks. The body is held only while its payload fits `retry.max_replay_body` and what it
//! pins fits twice that plus one block; past either, the pieces are let go and the request
//! can no longer be retried once any of it was sent. Once the response is committed nothing
//! is held any more.

use bytes::{Bytes, BytesMut};

use crate::codec::chunked::Field;

/// Pieces shorter than this are copied into a compact block instead of pinning their read
/// buffer (the largest body read is 64 KiB).
pub(crate) const COPY_BELOW: usize = 64 * 1024;

/// The size of a block small pieces are copied into.
const BLOCK: usize = 16 * 1024;

/// The request body kept for a replay while it fits the limit.
#[derive(Debug)]
pub(crate) struct Replay {
    pieces: Vec<Bytes>,
    /// Where small pieces are copied; each piece is split off it.
    block: BytesMut,
    /// Memory the held pieces pin: copied blocks whole, handles, large pieces twice.
    pinned: usize,
    trailers: Vec<Field>,
    size: usize,
    limit: usize,
    overflow: bool,
    finished: bool,
}

impl Replay {
    pub(crate) fn new(limit: usize) -> Replay {
        Replay {
            pieces: Vec::new(),
            block: BytesMut::new(),
            pinned: 0,
            trailers: Vec::new(),
            size: 0,
            limit,
            overflow: false,
            finished: false,
        }
    }

    /// Hold `d`, a piece about to be written upstream.
    pub(crate) fn push(&mut self, d: &Bytes) {
        if self.overflow {
            return;
        }
        let handle = std::mem::size_of::<Bytes>();
        let copy = d.len() < COPY_BELOW;
        let fresh_block = copy && self.block.capacity() - self.block.len() < d.len();
        let pinned = handle
            + if !copy {
                2 * d.len()
            } else if fresh_block {
                BLOCK.max(d.len())
            } else {
                0
            };
        if self.size + d.len() > self.limit || self.pinned + pinned > self.pin_limit() {
            self.overflow = true;
            self.pieces = Vec::new();
            self.block = BytesMut::new();
            return;
        }
        self.size += d.len();
        self.pinned += pinned;
        let piece = if copy {
            if fresh_block {
                self.block = BytesMut::with_capacity(BLOCK.max(d.len()));
            }
            self.block.extend_from_slice(d);
            self.block.split().freeze()
        } else {
            d.clone()
        };
        self.pieces.push(piece);
    }

    /// The most memory the held body may pin: twice its payload limit, plus one block.
    fn pin_limit(&self) -> usize {
        self.limit.saturating_mul(2).saturating_add(BLOCK)
    }

    /// The memory the held pieces pin, as counted.
    #[cfg(test)]
    fn pinned(&self) -> usize {
        self.pinned
    }

    /// The body was read whole, with these trailers.
    pub(crate) fn finish(&mut self, trailers: Vec<Field>) {
        self.finished = true;
        self.trailers = trailers;
    }

    /// The response has started: no retry can happen any more, so let the body go.
    pub(crate) fn release(&mut self) {
        self.overflow = true;
        self.pieces = Vec::new();
        self.block = BytesMut::new();
        self.trailers = Vec::new();
    }

    pub(crate) fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    pub(crate) fn trailers(&self) -> &[Field] {
        &self.trailers
    }

    /// Nothing of the body has been read (and so nothing sent).
    pub(crate) fn untouched(&self) -> bool {
        !self.finished && !self.overflow && self.pieces.is_empty()
    }

    /// The body was read whole.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// The whole body is held: a retry can resend it.
    pub(crate) fn complete(&self) -> bool {
        self.finished && !self.overflow
    }

    /// Part of the body was let go because it did not fit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_pieces_cannot_pin_more_than_the_limit() {
        // One million one-byte chunks, each split off a large shared read buffer.
        let wire = Bytes::from(vec![b'x'; 1 << 20]);
        let mut replay = Replay::new(1 << 20);
        for i in 0..1_000_000 {
            replay.push(&wire.slice(i..i + 1));
            if replay.overflowed() {
                break;
            }
        }
        assert!(replay.overflowed(), "a million handles do not fit in 1 MiB");
        assert!(replay.pieces().is_empty());
    }

    #[test]
    fn held_small_pieces_pin_only_their_copies() {
        let wire = Bytes::from(vec![b'x'; 1 << 20]);
        let mut replay = Replay::new(1 << 20);
        for i in 0..100 {
            replay.push(&wire.slice(i * 10..i * 10 + 10));
        }
        replay.finish(Vec::new());
        assert!(replay.complete());
        assert_eq!(replay.pieces().len(), 100, "chunk boundaries are kept");
        assert!(replay.pieces().iter().all(|p| p.len() == 10));
        drop(wire);
        // What is held is the copies: one block, counted whole, plus the handles.
        assert_eq!(replay.pinned(), BLOCK + 100 * std::mem::size_of::<Bytes>());
        assert!(replay.pinned() <= 2 * (1 << 20) + BLOCK);
    }

    #[test]
    fn large_pieces_are_held_by_handle_and_counted_twice() {
        let big = Bytes::from(vec![b'y'; 300 * 1024]);
        let mut replay = Replay::new(1 << 20);
        replay.push(&big);
        assert!(!replay.overflowed());
        assert_eq!(replay.pieces()[0].as_ptr(), big.as_ptr(), "no copy");
        replay.push(&big);
        replay.push(&big);
        assert!(!replay.overflowed(), "3 x 2 x 300 KiB pins under 2 MiB");
        replay.push(&big);
        assert!(replay.overflowed(), "4 x 300 KiB is over 1 MiB of payload");
    }
}
