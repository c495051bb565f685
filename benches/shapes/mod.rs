//! The inputs and decode loops shared by the codec benches: `codec.rs` (criterion, wall time)
//! and `decode_instructions.rs` (a fixed amount of work for instruction counting).

use bytes::{Bytes, BytesMut};
use chunkgate::codec::chunked::{ChunkedDecoder, ChunkedEncoder, Frame, Limits};
use criterion::black_box;
use tokio_util::codec::Decoder;

/// One benchmark input: the payloads and their chunked encoding.
pub struct Shape {
    pub name: &'static str,
    pub payloads: Vec<Bytes>,
    pub wire: Bytes,
}

impl Shape {
    pub fn new(name: &'static str, payloads: Vec<Bytes>) -> Shape {
        let mut enc = ChunkedEncoder::new();
        let mut wire = BytesMut::new();
        for p in &payloads {
            enc.encode_chunk(p, &mut wire);
        }
        enc.encode_end(&[], &mut wire);
        Shape {
            name,
            payloads,
            wire: wire.freeze(),
        }
    }

    /// The first `n` payloads as their own shape (for 1-byte reads).
    pub fn prefix(&self, n: usize) -> Shape {
        Shape::new(
            self.name,
            self.payloads[..n.min(self.payloads.len())].to_vec(),
        )
    }

    /// The smaller input used for 1-byte reads.
    pub fn small(&self) -> Shape {
        match self.name {
            "tokens" => self.prefix(500),
            "4KiB" => self.prefix(16),
            _ => self.prefix(2),
        }
    }
}

/// Token-sized SSE events with seeded sizes, 20–200 bytes each.
pub fn token_stream(chunks: usize) -> Shape {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let payloads = (0..chunks)
        .map(|i| {
            let len = rng.usize(20..=200);
            let mut p = format!("data: {{\"i\":{i},\"delta\":\"").into_bytes();
            p.resize(len.saturating_sub(4).max(p.len()), b'x');
            p.extend_from_slice(b"\"}\n\n");
            p.truncate(len.max(20));
            Bytes::from(p)
        })
        .collect();
    Shape::new("tokens", payloads)
}

/// `chunks` chunks of `size` bytes each.
pub fn fixed(name: &'static str, size: usize, chunks: usize) -> Shape {
    let payloads = (0..chunks)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect();
    Shape::new(name, payloads)
}

/// The three shapes every bench runs: tokens, 4 KiB chunks, 64 KiB chunks.
pub fn all_shapes() -> [Shape; 3] {
    [
        token_stream(10_000),
        fixed("4KiB", 4 << 10, 256),
        fixed("64KiB", 64 << 10, 16),
    ]
}

/// Decode `wire`, delivered in reads of `read` bytes, counting the data frames.
#[inline(never)]
pub fn decode_reads(wire: &[u8], read: usize) -> usize {
    let mut dec = ChunkedDecoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(read.max(8 << 10));
    let mut frames = 0;
    for piece in wire.chunks(read) {
        buf.extend_from_slice(piece);
        while let Some(frame) = dec.decode(&mut buf).expect("valid body") {
            if let Frame::Data(d) = frame {
                black_box(&d);
                frames += 1;
            }
        }
    }
    assert!(dec.is_done());
    frames
}

/// Decode a body already in the read buffer.
#[inline(never)]
pub fn decode_whole(mut buf: BytesMut) -> usize {
    let mut dec = ChunkedDecoder::new(Limits::default());
    let mut frames = 0;
    while let Some(frame) = dec.decode(&mut buf).expect("valid body") {
        match frame {
            Frame::Data(d) => {
                black_box(&d);
                frames += 1;
            }
            Frame::End => break,
            Frame::Trailers(_) => {}
        }
    }
    frames
}
