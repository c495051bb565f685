//! Any bytes as the start of a client connection: the request head parser must not panic, its
//! verdict (heads, error kind and offset, bytes left) must not depend on how the bytes were
//! split into reads, and every head it accepts must keep the parser's promises about targets.
//! The oracle is `chunkgate::codec::oracle::check_request_head_split_invariance`.
#![no_main]

use chunkgate::codec::oracle::{check_request_head_split_invariance, split_pattern_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_request_head_split_invariance(data, &split_pattern_for(data));
});
