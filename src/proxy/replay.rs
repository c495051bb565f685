//! The request body held for a retry.
//!
//! Pieces are `Bytes` handles to what was received: keeping them copies nothing. The body is
//! held only while it fits `retry.max_replay_body`; past that the pieces are let go and the
//! request can no longer be retried once any of it was sent. Once the response is committed
//! nothing is held any more.

use bytes::Bytes;

use crate::codec::chunked::Field;

/// The request body kept for a replay while it fits the limit.
#[derive(Debug)]
pub(crate) struct Replay {
    pieces: Vec<Bytes>,
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
        if self.size + d.len() > self.limit {
            self.overflow = true;
            self.pieces = Vec::new();
            return;
        }
        self.size += d.len();
        self.pieces.push(d.clone());
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
