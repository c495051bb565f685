//! A whole exchange through a running proxy: one or two clients send arbitrary bytes (in
//! arbitrary writes), a scripted upstream answers each request head with arbitrary bytes.
//! No task may panic or hang, every upstream request must be a well-formed request that
//! follows one of the client's own requests (at most once per allowed attempt), and no
//! client's bytes may reach the other's upstream requests or responses. The input format and
//! the oracle are `chunkgate::harness::exchange_oracle`.
#![no_main]

use chunkgate::harness::exchange_oracle::check_exchange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_exchange(data);
});
