//! Split strategies: how the wire bytes of a chunked body are cut into separate writes.
//!
//! A strategy decides where, inside each chunk's wire bytes (size line, payload, CRLF), a
//! writer stops, flushes and pauses, so that the reader on the other side of a TCP connection
//! sees the chunk arrive in several reads. Everything here is pure: the cuts depend only on the
//! bytes and a seeded random generator, so a harness can reproduce any case from its seed.
//!
//! ```
//! use bytes::Bytes;
//! use chunkgate::harness::split::{split_body, SplitStrategy};
//!
//! let chunks = [Bytes::from_static("안녕".as_bytes())];
//! let mut rng = fastrand::Rng::with_seed(7);
//! let pieces = split_body(SplitStrategy::Utf8, &chunks, true, &mut rng);
//! let wire: Vec<u8> = pieces.iter().flat_map(|p| p.bytes.iter().copied()).collect();
//! assert_eq!(wire, b"6\r\n\xec\x95\x88\xeb\x85\x95\r\n0\r\n\r\n");
//! assert!(pieces.len() >= 3); // the chunk was cut inside a character, the end is its own write
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::chunked::{SizeLine, CRLF, LAST_CHUNK};

/// Where a writer cuts the wire bytes of each chunk into separate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SplitStrategy {
    /// Each chunk's wire bytes in one write.
    None,
    /// Every byte its own write (reads on the other side may still coalesce a few).
    EveryByte,
    /// One to three cuts at seeded random offsets anywhere in the chunk.
    Random,
    /// Cuts inside multi-byte UTF-8 characters of the payload (up to two per chunk).
    Utf8,
    /// Cuts inside the hex size, between the size and its CR, and between CR and LF.
    SizeLine,
    /// Cuts just before the CRLF that ends the payload, and between its CR and LF.
    Crlf,
    /// Every write ends in the middle of one chunk and carries the rest of it together with the
    /// start of the next one: the classic `abc` / `def`+`gh` / `ij` case, where a reader that
    /// forwards each read as a chunk merges and splits chunks at the same time.
    Straddle,
    /// Each chunk cut by a strategy picked at random among `random`, `utf8`, `size-line` and
    /// `crlf`.
    Mixed,
}

impl SplitStrategy {
    /// Every strategy, in table order.
    pub const ALL: [SplitStrategy; 8] = [
        SplitStrategy::None,
        SplitStrategy::EveryByte,
        SplitStrategy::Random,
        SplitStrategy::Utf8,
        SplitStrategy::SizeLine,
        SplitStrategy::Crlf,
        SplitStrategy::Straddle,
        SplitStrategy::Mixed,
    ];

    /// The strategy's name on the command line and in the `x-mock-split` header.
    pub fn name(self) -> &'static str {
        match self {
            SplitStrategy::None => "none",
            SplitStrategy::EveryByte => "every-byte",
            SplitStrategy::Random => "random",
            SplitStrategy::Utf8 => "utf8",
            SplitStrategy::SizeLine => "size-line",
            SplitStrategy::Crlf => "crlf",
            SplitStrategy::Straddle => "straddle",
            SplitStrategy::Mixed => "mixed",
        }
    }

    /// Parse a comma-separated list of strategy names; `all` stands for [`Self::ALL`].
    pub fn parse_list(s: &str) -> Result<Vec<SplitStrategy>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                for st in Self::ALL {
                    if !out.contains(&st) {
                        out.push(st);
                    }
                }
                continue;
            }
            let st: SplitStrategy = name.parse()?;
            if !out.contains(&st) {
                out.push(st);
            }
        }
        if out.is_empty() {
            return Err("no split strategy given".to_string());
        }
        Ok(out)
    }
}

impl fmt::Display for SplitStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SplitStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SplitStrategy::ALL
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = SplitStrategy::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown split strategy {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// What a writer does before writing a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Nothing: the first piece of a body.
    None,
    /// The piece continues a chunk cut by the strategy: pause for the split gap.
    Split,
    /// Each byte its own write: yield to the scheduler only (no timer, so it stays fast).
    Yield,
    /// The piece starts the next chunk (the next token): pause for the token gap.
    Token,
}

/// One write of a split body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The bytes to write (never empty).
    pub bytes: Bytes,
    /// What to do before writing them.
    pub pause: Pause,
}

/// Offsets (strictly inside `0..wire_len`, sorted, deduplicated) at which to cut one chunk's
/// wire bytes. `size_line_len` is the size line's length with its CRLF; the payload follows it
/// and is followed by CRLF (the last chunk has an empty payload and the final CRLF).
pub fn chunk_cuts(
    strategy: SplitStrategy,
    size_line_len: usize,
    payload: &[u8],
    wire_len: usize,
    rng: &mut fastrand::Rng,
) -> Vec<usize> {
    let mut cuts = Vec::new();
    if wire_len < 2 {
        return cuts;
    }
    match strategy {
        SplitStrategy::None | SplitStrategy::Straddle => {}
        SplitStrategy::EveryByte => cuts.extend(1..wire_len),
        SplitStrategy::Random => {
            for _ in 0..rng.usize(1..=3) {
                cuts.push(rng.usize(1..wire_len));
            }
        }
        SplitStrategy::Utf8 => {
            let starts: Vec<(usize, usize)> = payload
                .iter()
                .enumerate()
                .filter_map(|(i, &b)| utf8_len(b).filter(|&n| n > 1).map(|n| (i, n)))
                .filter(|&(i, n)| i + n <= payload.len())
                .collect();
            if starts.is_empty() {
                if payload.len() >= 2 {
                    cuts.push(size_line_len + payload.len() / 2);
                }
            } else {
                for _ in 0..starts.len().min(2) {
                    let (i, n) = starts[rng.usize(..starts.len())];
                    cuts.push(size_line_len + i + rng.usize(1..n));
                }
            }
        }
        SplitStrategy::SizeLine => {
            let digits = size_line_len.saturating_sub(2);
            // Inside the hex digits, between the digits and CR, between CR and LF.
            cuts.extend(1..=digits + 1);
        }
        SplitStrategy::Crlf => {
            cuts.push(wire_len - 2);
            cuts.push(wire_len - 1);
        }
        SplitStrategy::Mixed => {
            const PICK: [SplitStrategy; 4] = [
                SplitStrategy::Random,
                SplitStrategy::Utf8,
                SplitStrategy::SizeLine,
                SplitStrategy::Crlf,
            ];
            let st = PICK[rng.usize(..PICK.len())];
            return chunk_cuts(st, size_line_len, payload, wire_len, rng);
        }
    }
    cuts.retain(|&c| c > 0 && c < wire_len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The length of the UTF-8 sequence a leading byte announces, or `None` for a continuation or
/// invalid byte.
fn utf8_len(b: u8) -> Option<usize> {
    match b {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

/// The wire bytes of one chunk: size line, payload, CRLF.
pub fn chunk_wire(payload: &[u8]) -> Bytes {
    let line = SizeLine::new(payload.len());
    let mut b = BytesMut::with_capacity(line.as_bytes().len() + payload.len() + 2);
    b.put_slice(line.as_bytes());
    b.put_slice(payload);
    b.put_slice(CRLF);
    b.freeze()
}

/// Cut one chunk's wire bytes with `strategy`. The first piece carries `first_pause`.
pub fn split_chunk(
    strategy: SplitStrategy,
    payload: &[u8],
    first_pause: Pause,
    rng: &mut fastrand::Rng,
) -> Vec<Piece> {
    let wire = chunk_wire(payload);
    let line_len = wire.len() - payload.len() - 2;
    let cuts = chunk_cuts(strategy, line_len, payload, wire.len(), rng);
    cut_pieces(&wire, &cuts, first_pause, inner_pause(strategy))
}

/// The pause between the pieces of one chunk under `strategy`.
fn inner_pause(strategy: SplitStrategy) -> Pause {
    if strategy == SplitStrategy::EveryByte {
        Pause::Yield
    } else {
        Pause::Split
    }
}

fn cut_pieces(wire: &Bytes, cuts: &[usize], first: Pause, inner: Pause) -> Vec<Piece> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
        if c > start {
            out.push(Piece {
                bytes: wire.slice(start..c),
                pause: if start == 0 { first } else { inner },
            });
            start = c;
        }
    }
    out
}

/// Cut a whole chunked body (every chunk in `chunks`, then the last chunk if `end`) into
/// writes. Each chunk starts a new write after a [`Pause::Token`] (except under
/// [`SplitStrategy::Straddle`], where every write runs from the middle of one chunk into the
/// middle of the next, after a [`Pause::Split`]); cuts inside a chunk follow the strategy.
pub fn split_body(
    strategy: SplitStrategy,
    chunks: &[Bytes],
    end: bool,
    rng: &mut fastrand::Rng,
) -> Vec<Piece> {
    if strategy == SplitStrategy::Straddle {
        return straddle(chunks, end, rng);
    }
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        let first = if out.is_empty() {
            Pause::None
        } else {
            Pause::Token
        };
        out.extend(split_chunk(strategy, c, first, rng));
    }
    if end {
        let wire = Bytes::from_static(LAST_CHUNK);
        let first = if out.is_empty() {
            Pause::None
        } else {
            Pause::Token
        };
        let cuts = chunk_cuts(strategy, 3, &[], wire.len(), rng);
        out.extend(cut_pieces(&wire, &cuts, first, inner_pause(strategy)));
    }
    out
}

fn straddle(chunks: &[Bytes], end: bool, rng: &mut fastrand::Rng) -> Vec<Piece> {
    let mut wire = BytesMut::new();
    let mut cuts = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        let start = wire.len();
        let line = SizeLine::new(c.len());
        let line_len = line.as_bytes().len();
        wire.put_slice(line.as_bytes());
        wire.put_slice(c);
        wire.put_slice(CRLF);
        // Somewhere inside the payload (or just after the size line for a one-byte chunk).
        let at = if c.len() >= 2 {
            rng.usize(1..c.len())
        } else {
            0
        };
        cuts.push(start + line_len + at);
    }
    if end {
        wire.put_slice(LAST_CHUNK);
    }
    let wire = wire.freeze();
    cut_pieces(&wire, &cuts, Pause::None, Pause::Split)
}

/// The classic request body: chunks `abc`, `defgh`, `ij`, written as `3\r\nabc\r\n5\r\ndef`
/// then `gh\r\n2\r\nij\r\n0\r\n\r\n`. A reader that forwards each read as a chunk turns it into
/// `abc`+`def` (or `abcdef`), `gh`, `ij`.
pub fn classic_body() -> (Vec<Bytes>, Vec<Piece>) {
    let chunks = vec![
        Bytes::from_static(b"abc"),
        Bytes::from_static(b"defgh"),
        Bytes::from_static(b"ij"),
    ];
    let pieces = vec![
        Piece {
            bytes: Bytes::from_static(b"3\r\nabc\r\n5\r\ndef"),
            pause: Pause::None,
        },
        Piece {
            bytes: Bytes::from_static(b"gh\r\n2\r\nij\r\n0\r\n\r\n"),
            pause: Pause::Split,
        },
    ];
    (chunks, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::chunked::{decode_all, Frame, Limits};

    fn join(pieces: &[Piece]) -> Vec<u8> {
        pieces
            .iter()
            .flat_map(|p| p.bytes.iter().copied())
            .collect()
    }

    fn sample_chunks() -> Vec<Bytes> {
        vec![
            Bytes::from("data: {\"c\":\"안녕하세요 🚀\"}\n\n"),
            Bytes::from("x"),
            Bytes::from("plain ascii text only"),
            Bytes::from(vec![b'a'; 300]),
        ]
    }

    #[test]
    fn split_body_every_strategy_preserves_the_wire_bytes() {
        let chunks = sample_chunks();
        let mut expected = Vec::new();
        for c in &chunks {
            expected.extend_from_slice(&chunk_wire(c));
        }
        expected.extend_from_slice(LAST_CHUNK);
        for st in SplitStrategy::ALL {
            for seed in 0..20 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let pieces = split_body(st, &chunks, true, &mut rng);
                assert_eq!(join(&pieces), expected, "{st} seed {seed}");
                assert!(pieces.iter().all(|p| !p.bytes.is_empty()), "{st}");
                assert_eq!(pieces[0].pause, Pause::None, "{st}");
                let frames = decode_all(&join(&pieces), Limits::default()).unwrap();
                assert_eq!(frames.len(), chunks.len() + 1);
            }
        }
    }

    #[test]
    fn split_body_is_deterministic_for_a_seed() {
        let chunks = sample_chunks();
        for st in SplitStrategy::ALL {
            let a = split_body(st, &chunks, true, &mut fastrand::Rng::with_seed(9));
            let b = split_body(st, &chunks, true, &mut fastrand::Rng::with_seed(9));
            assert_eq!(a, b, "{st}");
        }
    }

    #[test]
    fn split_utf8_cuts_inside_a_character() {
        let payload = "가나다".as_bytes();
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let pieces = split_chunk(SplitStrategy::Utf8, payload, Pause::None, &mut rng);
            assert!(pieces.len() >= 2);
            // Every cut inside the payload falls strictly inside a 3-byte character.
            let mut at = 0;
            for p in &pieces[..pieces.len() - 1] {
                at += p.bytes.len();
                let in_payload = at - 3; // size line "9\r\n"
                assert_ne!(
                    in_payload % 3,
                    0,
                    "seed {seed}: cut at a character boundary"
                );
            }
        }
    }

    #[test]
    fn split_size_line_cuts_inside_the_hex_and_around_cr() {
        let payload = vec![b'a'; 0x1ab];
        let pieces = split_chunk(
            SplitStrategy::SizeLine,
            &payload,
            Pause::None,
            &mut fastrand::Rng::with_seed(1),
        );
        let heads: Vec<&[u8]> = pieces.iter().map(|p| &p.bytes[..]).take(4).collect();
        assert_eq!(heads, [&b"1"[..], b"a", b"b", b"\r"]);
        assert!(pieces[4].bytes.starts_with(b"\naaa"));
    }

    #[test]
    fn split_crlf_cuts_before_the_trailing_crlf() {
        let pieces = split_chunk(
            SplitStrategy::Crlf,
            b"hello",
            Pause::None,
            &mut fastrand::Rng::with_seed(1),
        );
        let parts: Vec<&[u8]> = pieces.iter().map(|p| &p.bytes[..]).collect();
        assert_eq!(parts, [&b"5\r\nhello"[..], b"\r", b"\n"]);
        assert_eq!(pieces[1].pause, Pause::Split);
    }

    #[test]
    fn split_straddle_every_write_spans_a_chunk_boundary() {
        let chunks = sample_chunks();
        let pieces = split_body(
            SplitStrategy::Straddle,
            &chunks,
            true,
            &mut fastrand::Rng::with_seed(3),
        );
        assert_eq!(pieces.len(), chunks.len() + 1);
        for p in &pieces[1..] {
            assert_eq!(p.pause, Pause::Split);
            // Each later write carries the end of one payload and the next size line.
            assert!(p.bytes.windows(2).any(|w| w == CRLF));
        }
    }

    #[test]
    fn classic_body_decodes_to_three_chunks() {
        let (chunks, pieces) = classic_body();
        let frames = decode_all(&join(&pieces), Limits::default()).unwrap();
        let data: Vec<Bytes> = frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(data, chunks);
    }

    #[test]
    fn parse_list_accepts_names_and_all() {
        assert_eq!(
            SplitStrategy::parse_list("utf8, crlf,utf8").unwrap(),
            vec![SplitStrategy::Utf8, SplitStrategy::Crlf]
        );
        assert_eq!(SplitStrategy::parse_list("all").unwrap().len(), 8);
        assert!(SplitStrategy::parse_list("bogus").is_err());
        assert!(SplitStrategy::parse_list(" , ").is_err());
    }
}
