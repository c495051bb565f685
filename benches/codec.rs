//! Chunked codec benchmarks on the shapes chunkgate carries: an LLM token stream (10,000
//! chunks of 20–200 bytes), 4 KiB chunks and 64 KiB chunks, each fed whole, in 1,500-byte
//! reads (one Ethernet segment) and in 1-byte reads (on a smaller input).
//!
//! `decode/*` is our decoder. For whole input the read buffer is prepared outside the timed
//! part, so the number is decoder work alone; for split reads each read is copied into the
//! buffer as a socket read would. `hyper/*` is a hyper http1 client reading a response with the
//! same chunked body from a `tokio::io::duplex` written beforehand (only the client's work is
//! timed); hyper yields data as it arrives, so its frames are not chunks. `encode/*` writes the
//! same payloads. Throughput is in wire bytes; ns per chunk is time per iteration divided by the
//! chunk count printed at the start.
//!
//! Run: `cargo bench --bench codec`. The inputs and decode loops live in `shapes/`, shared with
//! `decode_instructions.rs`, which counts instructions for the same work.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chunkgate::codec::chunked::ChunkedEncoder;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

mod shapes;
use shapes::{all_shapes, decode_reads, decode_whole};

/// An I/O object that returns at most `max` bytes per read, like a socket receiving segments.
/// Its peer's answer is written before the bench starts, so reads wait until the request has
/// been written (hyper refuses bytes that arrive before it sent a request).
struct Chopped {
    inner: DuplexStream,
    max: usize,
    scratch: Vec<u8>,
    request_sent: bool,
    reader: Option<Waker>,
}

impl AsyncRead for Chopped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.request_sent {
            this.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.remaining().min(this.max);
        let mut part = ReadBuf::new(&mut this.scratch[..n]);
        match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(part.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Chopped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.request_sent = true;
        if let Some(waker) = this.reader.take() {
            waker.wake();
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const RESPONSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// hyper as the client: read one response with `wire` as its body, `read` bytes per read.
/// Returns the time spent from the handshake to the end of the body.
async fn hyper_reads(wire: &Bytes, read: usize, payload_len: usize) -> Duration {
    let (client, mut server) = tokio::io::duplex(wire.len() + (64 << 10));
    server.write_all(RESPONSE_HEAD).await.expect("prewrite");
    server.write_all(wire).await.expect("prewrite");
    let io = Chopped {
        inner: client,
        max: read,
        scratch: vec![0; read.min(1 << 20)],
        request_sent: false,
        reader: None,
    };
    let start = Instant::now();
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("/v1/stream")
        .header("host", "bench")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let mut body = resp.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("valid body").into_data() {
            bytes += data.len();
            black_box(&data);
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(bytes, payload_len, "hyper delivered the whole payload");
    drop(sender);
    conn.abort();
    drop(server);
    elapsed
}

const READS: [(&str, usize); 3] = [("whole", usize::MAX), ("1500B", 1500), ("1B", 1)];

fn bench_codec(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shapes = all_shapes();
    for shape in &shapes {
        let small = shape.small();
        for (label, read) in READS {
            let input = if read == 1 { &small } else { shape };
            eprintln!(
                "shape {} reads {label}: {} chunks, {} wire bytes",
                shape.name,
                input.payloads.len(),
                input.wire.len()
            );
        }
    }

    let mut group = c.benchmark_group("codec");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for shape in &shapes {
        let small = shape.small();
        for (label, read) in READS {
            let input = if read == 1 { &small } else { shape };
            let chunks = input.payloads.len();
            let payload_len: usize = input.payloads.iter().map(Bytes::len).sum();
            group.throughput(Throughput::Bytes(input.wire.len() as u64));
            let id = format!("decode/{}/{label}", shape.name);
            if read == usize::MAX {
                group.bench_function(&id, |b| {
                    b.iter_batched(
                        || BytesMut::from(&input.wire[..]),
                        |buf| assert_eq!(decode_whole(buf), chunks),
                        BatchSize::LargeInput,
                    )
                });
            } else {
                group.bench_function(&id, |b| {
                    b.iter(|| assert_eq!(decode_reads(&input.wire, read), chunks))
                });
            }
            let id = format!("hyper/{}/{label}", shape.name);
            group.bench_function(&id, |b| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += hyper_reads(&input.wire, read, payload_len).await;
                    }
                    total
                })
            });
        }
        group.throughput(Throughput::Bytes(shape.wire.len() as u64));
        let mut dst = BytesMut::with_capacity(shape.wire.len());
        group.bench_function(format!("encode/{}", shape.name), |b| {
            b.iter(|| {
                dst.clear();
                let mut enc = ChunkedEncoder::new();
                for p in &shape.payloads {
                    enc.encode_chunk(p, &mut dst);
                }
                enc.encode_end(&[], &mut dst);
                black_box(&dst);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
