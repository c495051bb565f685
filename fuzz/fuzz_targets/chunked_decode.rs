//! Any bytes as a chunked body: the verdict must not depend on how the bytes were split into
//! reads, no frame may be yielded before its whole chunk arrived, and accept/reject must match
//! a plain reading of the grammar. The oracle is `chunkgate::codec::oracle`.
#![no_main]

use chunkgate::codec::oracle::{check_decode_split_invariance, split_pattern_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_decode_split_invariance(data, &split_pattern_for(data));
});
