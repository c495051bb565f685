//! The `upload` mode: large chunked request bodies, measured in MB/s.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::http::{invalid_data, read_body_to_vec, read_response_head, Target};
use crate::codec::chunked::{SizeLine, CRLF, LAST_CHUNK};
use crate::harness::peer::Peer;

/// Chunks framed into one write block (so the client's own cost is one large write per block).
const CHUNKS_PER_BLOCK: usize = 64;

/// Upload `payload_bytes` as one chunked `POST /upload` in chunks of `chunk_bytes`, then read
/// the answer and check that the upstream counted every byte. Bounded by `limit`.
pub async fn upload_once(
    target: &Target,
    payload_bytes: u64,
    chunk_bytes: usize,
    limit: Duration,
) -> io::Result<u64> {
    tokio::time::timeout(limit, upload_inner(target, payload_bytes, chunk_bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upload timed out"))?
}

async fn upload_inner(target: &Target, payload_bytes: u64, chunk_bytes: usize) -> io::Result<u64> {
    if chunk_bytes == 0 {
        return Err(invalid_data("chunk size must be positive"));
    }
    let mut stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST {}/upload HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        target.prefix, target.authority
    );
    stream.write_all(head.as_bytes()).await?;

    let block = framed_block(chunk_bytes, CHUNKS_PER_BLOCK);
    let block_payload = (chunk_bytes * CHUNKS_PER_BLOCK) as u64;
    let mut remaining = payload_bytes;
    while remaining >= block_payload {
        stream.write_all(&block).await?;
        remaining -= block_payload;
    }
    // The tail: whole chunks, then one short chunk.
    while remaining > 0 {
        let n = remaining.min(chunk_bytes as u64) as usize;
        let line = SizeLine::new(n);
        let payload = &block[line.as_bytes().len().min(block.len())..];
        let piece = payload
            .get(..n)
            .ok_or_else(|| invalid_data("upload block too small"))?;
        super::http::write_all_vectored(&mut stream, [line.as_bytes(), piece, CRLF]).await?;
        remaining -= n as u64;
    }
    stream.write_all(LAST_CHUNK).await?;

    let mut peer = Peer::with_buffer(stream, BytesMut::with_capacity(1024));
    let head = read_response_head(&mut peer).await?;
    if head.status != 200 {
        return Err(invalid_data(format!(
            "upload answered status {}",
            head.status
        )));
    }
    let body = read_body_to_vec(&mut peer, head.body, 4096).await?;
    let counted = super::sse::number_after(&body, b"\"bytes\":")
        .ok_or_else(|| invalid_data("upload answer without a byte count"))?;
    if counted != payload_bytes {
        return Err(invalid_data(format!(
            "upstream counted {counted} bytes of {payload_bytes} sent"
        )));
    }
    Ok(counted)
}

/// `count` chunks of `size` bytes each, framed, back to back.
fn framed_block(size: usize, count: usize) -> Vec<u8> {
    let line = SizeLine::new(size);
    let mut block = Vec::with_capacity(count * (size + line.as_bytes().len() + CRLF.len()));
    for i in 0..count {
        block.extend_from_slice(line.as_bytes());
        block.extend((0..size).map(|j| b'a' + ((i + j) % 26) as u8));
        block.extend_from_slice(CRLF);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunked::{decode_all, Frame, Limits};

    #[test]
    fn framed_block_decodes_to_whole_chunks() {
        let mut block = framed_block(16, 4);
        block.extend_from_slice(LAST_CHUNK);
        let frames = decode_all(&block, Limits::default()).unwrap();
        assert_eq!(frames.len(), 5);
        assert!(frames[..4]
            .iter()
            .all(|f| matches!(f, Frame::Data(d) if d.len() == 16)));
    }
}
