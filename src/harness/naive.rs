//! A naive streaming client: it decodes the chunked framing but hands the application
//! whatever bytes of the current chunk each TCP read delivered, as frameworks that expose
//! partial chunks do, and the application treats every piece as a complete message.
//!
//! [`NaiveView`] is what the user of such a client sees: the text assembled from pieces
//! decoded one by one as UTF-8 (a character cut between two reads becomes `�`), and the
//! messages that were not whole SSE events with JSON data.
//!
//! ```
//! use chunkgate::harness::naive::{NaiveView, PartialChunks};
//!
//! let mut reader = PartialChunks::default();
//! let mut view = NaiveView::default();
//! let event = "data: {\"choices\":[{\"delta\":{\"content\":\"안\"}}]}\n\n".as_bytes();
//! let wire = [format!("{:x}\r\n", event.len()).as_bytes(), event, b"\r\n0\r\n\r\n"].concat();
//! // The read stops inside the character 안.
//! for read in [&wire[..44], &wire[44..]] {
//!     for piece in reader.feed(read).unwrap() {
//!         view.message(&piece);
//!     }
//! }
//! assert!(reader.is_done());
//! assert_eq!(view.messages, 2);
//! assert_eq!(view.broken_messages, 2);
//! assert_eq!(view.events_split, 1);
//! assert!(view.replacement_chars > 0);
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::peer::Peer;
use crate::harness::sse::{check_events, delta_content};

/// Longest size line the naive reader accepts.
const MAX_LINE: usize = 4096;

/// Where the partial-chunk reader is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a size line (bytes so far).
    Size(Vec<u8>),
    /// Inside a payload, this many bytes left.
    Data(u64),
    /// The CRLF after a payload, this many bytes of it left.
    DataEnd(u8),
    /// Reading trailer lines (bytes of the current line).
    Trailer(Vec<u8>),
    /// The body ended.
    Done,
}

/// A chunked-body reader that yields partial chunk payloads: for each read, the bytes of
/// every chunk the read touched, as they arrived.
#[derive(Debug, Clone)]
pub struct PartialChunks {
    state: State,
    /// Whether the piece under way started a new chunk.
    at_chunk_start: bool,
    /// Pieces handed out for the current chunk.
    pieces_in_chunk: u32,
}

impl Default for PartialChunks {
    fn default() -> Self {
        PartialChunks {
            state: State::Size(Vec::new()),
            at_chunk_start: true,
            pieces_in_chunk: 0,
        }
    }
}

/// One piece handed to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialPiece {
    /// The payload bytes this read delivered.
    pub bytes: Bytes,
    /// True when these bytes end their chunk.
    pub ends_chunk: bool,
    /// True when the chunk these bytes end was handed out in more than one piece.
    pub chunk_was_split: bool,
}

impl std::ops::Deref for PartialPiece {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialChunks {
    /// True once the last chunk and the trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed the bytes of one read; returns the payload pieces it delivered.
    pub fn feed(&mut self, mut read: &[u8]) -> Result<Vec<PartialPiece>, String> {
        let mut out = Vec::new();
        while !read.is_empty() {
            match &mut self.state {
                State::Done => break,
                State::Size(line) => {
                    let Some(nl) = read.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(read);
                        if line.len() > MAX_LINE {
                            return Err("chunk size line too long".into());
                        }
                        break;
                    };
                    line.extend_from_slice(&read[..nl]);
                    read = &read[nl + 1..];
                    let text = line
                        .strip_suffix(b"\r")
                        .ok_or("chunk size line without CRLF")?;
                    let digits = text.split(|&b| b == b';').next().unwrap_or(&[]);
                    let digits = std::str::from_utf8(digits)
                        .map_err(|_| "invalid chunk size".to_string())?
                        .trim();
                    let size = u64::from_str_radix(digits, 16)
                        .map_err(|_| format!("invalid chunk size {digits:?}"))?;
                    self.state = if size == 0 {
                        State::Trailer(Vec::new())
                    } else {
                        State::Data(size)
                    };
                    self.at_chunk_start = true;
                    self.pieces_in_chunk = 0;
                }
                State::Data(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(read.len());
                    *left -= n as u64;
                    let ends = *left == 0;
                    self.pieces_in_chunk += 1;
                    out.push(PartialPiece {
                        bytes: Bytes::copy_from_slice(&read[..n]),
                        ends_chunk: ends,
                        chunk_was_split: ends && self.pieces_in_chunk > 1,
                    });
                    self.at_chunk_start = false;
                    read = &read[n..];
                    if ends {
                        self.state = State::DataEnd(2);
                    }
                }
                State::DataEnd(left) => {
                    let want: &[u8] = if *left == 2 { b"\r\n" } else { b"\n" };
                    let n = (*left as usize).min(read.len());
                    if read[..n] != want[..n] {
                        return Err("missing CRLF after chunk data".into());
                    }
                    *left -= n as u8;
                    read = &read[n..];
                    if *left == 0 {
                        self.state = State::Size(Vec::new());
                    }
                }
                State::Trailer(line) => {
                    let Some(nl) = read.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(read);
                        if line.len() > MAX_LINE {
                            return Err("trailer line too long".into());
                        }
                        break;
                    };
                    line.extend_from_slice(&read[..nl]);
                    read = &read[nl + 1..];
                    if line.as_slice() == b"\r" {
                        self.state = State::Done;
                    } else {
                        line.clear();
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What the user of a naive client sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NaiveView {
    /// The text shown: each piece decoded on its own (lossily), events re-assembled from the
    /// decoded text, their `delta.content` concatenated.
    pub text: String,
    /// `�` characters in the decoded pieces: bytes of characters cut between two reads.
    pub replacement_chars: usize,
    /// Pieces handed to the application as messages.
    pub messages: usize,
    /// Messages that were not whole SSE events with JSON data.
    pub broken_messages: usize,
    /// Chunks (events) completed.
    pub events: usize,
    /// Events that reached the application in more than one piece.
    pub events_split: usize,
    /// Decoded text not yet ending an event.
    pending: String,
}

impl NaiveView {
    /// Hand one piece to the application.
    pub fn message(&mut self, piece: &PartialPiece) {
        self.messages += 1;
        if check_events(piece).is_err() {
            self.broken_messages += 1;
        }
        if piece.ends_chunk {
            self.events += 1;
            if piece.chunk_was_split {
                self.events_split += 1;
            }
        }
        let decoded = String::from_utf8_lossy(piece);
        self.replacement_chars += decoded.chars().filter(|&c| c == '\u{fffd}').count();
        self.pending.push_str(&decoded);
        while let Some(end) = self.pending.find("\n\n") {
            let event: String = self.pending.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if let Some(content) = delta_content(data.trim_start()) {
                        self.text.push_str(&content);
                    }
                }
            }
        }
    }
}

/// Stream `POST path` from `addr` with the naive client and return what its user saw.
/// `fields` are extra request header fields; the exchange is bounded by `deadline`.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    fields: &[(&str, String)],
    body: &str,
    deadline: Duration,
) -> io::Result<NaiveView> {
    let fut = async {
        let mut peer = Peer::connect(addr).await?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in fields {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        head.push_str(body);
        peer.stream.write_all(head.as_bytes()).await?;
        let answer = peer.response_head().await?;
        if answer.status != 200 {
            return Err(io::Error::other(format!("status {}", answer.status)));
        }
        if !answer.is_chunked() {
            return Err(io::Error::other("response is not chunked"));
        }
        let mut reader = PartialChunks::default();
        let mut view = NaiveView::default();
        // From here on, each read is handed out as it came, first what came with the head
        // (with the rest of the buffer's room for the reads that follow).
        let mut read = peer.buf.split_off(0);
        loop {
            let pieces = reader.feed(&read).map_err(io::Error::other)?;
            for p in &pieces {
                view.message(p);
            }
            if reader.is_done() {
                break;
            }
            read.clear();
            if peer.stream.read_buf(&mut read).await? == 0 {
                break;
            }
        }
        Ok(view)
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "naive client timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(parts: &[&[u8]]) -> (PartialChunks, Vec<PartialPiece>) {
        let mut r = PartialChunks::default();
        let mut out = Vec::new();
        for p in parts {
            out.extend(r.feed(p).unwrap());
        }
        (r, out)
    }

    #[test]
    fn partial_chunks_hand_out_what_each_read_delivered() {
        let (r, pieces) = feed_all(&[b"3\r\nabc\r\n5\r\nde", b"fgh\r\n2\r\nij\r\n0\r\n\r\n"]);
        assert!(r.is_done());
        let got: Vec<&[u8]> = pieces.iter().map(|p| &p.bytes[..]).collect();
        assert_eq!(got, [&b"abc"[..], b"de", b"fgh", b"ij"]);
        assert!(pieces[2].chunk_was_split && pieces[2].ends_chunk);
        assert!(!pieces[1].ends_chunk);
    }

    #[test]
    fn partial_chunks_handle_framing_split_anywhere() {
        let body = b"a;x=1\r\n0123456789\r\n1\r\nz\r\n0\r\nt: v\r\n\r\n";
        for cut in 1..body.len() {
            let (r, pieces) = feed_all(&[&body[..cut], &body[cut..]]);
            assert!(r.is_done(), "cut {cut}");
            let joined: Vec<u8> = pieces
                .iter()
                .flat_map(|p| p.bytes.iter().copied())
                .collect();
            assert_eq!(joined, b"0123456789z", "cut {cut}");
        }
    }

    #[test]
    fn partial_chunks_reject_bad_framing() {
        assert!(PartialChunks::default().feed(b"zz\r\n").is_err());
        assert!(PartialChunks::default().feed(b"1\r\naXY").is_err());
    }

    #[test]
    fn naive_view_shows_whole_events_cleanly() {
        let mut v = NaiveView::default();
        let e = "data: {\"choices\":[{\"delta\":{\"content\":\"안녕\"}}]}\n\n";
        v.message(&PartialPiece {
            bytes: Bytes::from(e),
            ends_chunk: true,
            chunk_was_split: false,
        });
        assert_eq!(v.text, "안녕");
        assert_eq!(
            (v.replacement_chars, v.broken_messages, v.events_split),
            (0, 0, 0)
        );
    }
}
