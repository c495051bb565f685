//! Payloads and a split pattern from the input (see `oracle::roundtrip_input`): decoding what
//! the encoder wrote, however it is split, must give back exactly the non-empty payloads.
#![no_main]

use chunkgate::codec::oracle::{check_roundtrip, roundtrip_input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (payloads, splits) = roundtrip_input(data);
    check_roundtrip(&payloads, splits);
});
