//! A fixed amount of decoder work per case, for counting instructions instead of timing them
//! (wall time on a shared machine is noisy; instruction counts are not). Each case decodes its
//! input exactly once, through the same `decode_whole` / `decode_reads` loops `codec.rs` times,
//! so the count inside those functions divided by the chunk count is instructions per chunk.
//!
//! The cases are ignored tests, so `cargo bench` and `cargo test` do not run them. Run one
//! under callgrind, collecting only inside the decode loop:
//!
//! ```text
//! cargo bench --bench decode_instructions --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*decode_whole*' \
//!     --callgrind-out-file=/tmp/cg.out \
//!     target/release/deps/decode_instructions-<hash> --ignored --exact tokens_whole
//! callgrind_annotate --inclusive=yes /tmp/cg.out
//! ```
//!
//! (`--toggle-collect='*decode_reads*'` for the split-read cases.) The chunk counts are the
//! ones `codec.rs` prints: 10,000 for tokens, 500 for tokens in 1-byte reads, 256 for 4 KiB.

use bytes::BytesMut;

mod shapes;
use shapes::{all_shapes, decode_reads, decode_whole};

/// Decode the named shape once, in reads of `read` bytes (`usize::MAX`: already buffered).
fn run(name: &str, read: usize) {
    let shapes = all_shapes();
    let Some(shape) = shapes.iter().find(|s| s.name == name) else {
        panic!("no shape named {name}");
    };
    let small;
    let input = if read == 1 {
        small = shape.small();
        &small
    } else {
        shape
    };
    let chunks = input.payloads.len();
    let frames = if read == usize::MAX {
        decode_whole(BytesMut::from(&input.wire[..]))
    } else {
        decode_reads(&input.wire, read)
    };
    assert_eq!(frames, chunks);
    eprintln!("{name}: {chunks} chunks decoded");
}

#[test]
#[ignore = "a measurement: run under callgrind"]
fn tokens_whole() {
    run("tokens", usize::MAX);
}

#[test]
#[ignore = "a measurement: run under callgrind"]
fn tokens_1500b() {
    run("tokens", 1500);
}

#[test]
#[ignore = "a measurement: run under callgrind"]
fn tokens_1b() {
    run("tokens", 1);
}

#[test]
#[ignore = "a measurement: run under callgrind"]
fn kib4_whole() {
    run("4KiB", usize::MAX);
}
