//! What chunkgate understands about the bodies it forwards: the stages a response body passes
//! through between the reader and the writer.
//!
//! A [`Stage`] receives each complete unit the body reader produced (a whole chunk's payload,
//! or the bytes of one read for bodies without chunk boundaries) and decides which units the
//! writer sends: zero, one or several per input. It sees the end of the body and its trailers.
//! A stage never holds back a unit it has completed: whatever it can emit when a unit arrives,
//! it emits in the same call. The writer sends each emitted unit as one chunk (chunked framing)
//! or as raw bytes (other framings), in order.
//!
//! Stages are sans-IO: no sockets, clocks or tasks. They are driven by the one body pump in
//! `proxy::pump`.

pub mod align;
pub mod dialect;
pub(crate) mod json;
pub mod request;
pub mod tap;

use bytes::Bytes;

use crate::codec::chunked::Field;

/// One step a body takes between the reader and the writer.
pub trait Stage {
    /// A complete unit from the reader. Append to `out` the units to send now, in order.
    fn unit(&mut self, unit: Bytes, out: &mut Vec<Bytes>);

    /// The body ended cleanly (after `trailers`, empty when there were none). Append to `out`
    /// whatever is still held (a partial event goes out as a unit of its own).
    fn end(&mut self, trailers: &[Field], out: &mut Vec<Bytes>);
}

/// The identity stage: every unit leaves as it came (chunk-exact forwarding).
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity;

impl Stage for Identity {
    #[inline]
    fn unit(&mut self, unit: Bytes, out: &mut Vec<Bytes>) {
        out.push(unit);
    }

    #[inline]
    fn end(&mut self, _trailers: &[Field], _out: &mut Vec<Bytes>) {}
}
