//! Replays the committed seeds of the `exchange` fuzz target through
//! `chunkgate::harness::exchange_oracle::check_exchange`: each seed is a whole exchange (one
//! or two clients, a proxy, a scripted upstream) on real sockets on 127.0.0.1, a few
//! milliseconds each unless a seed waits for one of the proxy's 10 ms timeouts.

use std::fs;
use std::path::Path;

use chunkgate::harness::exchange_oracle::{check_exchange, explain_exchange};

#[test]
fn seeds_exchange_pass_the_oracle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/exchange");
    let mut seeds: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 20, "exchange seeds went missing");
    for path in seeds {
        // The same call the fuzz target makes; a panic names the seed through this line.
        eprintln!("seed {}", path.display());
        check_exchange(&fs::read(&path).expect("read seed"));
    }
}

/// What a few seeds do whatever the timing, so that the oracle is known to watch real
/// exchanges (a summary of each is printed with `--nocapture`).
#[test]
fn seeds_exchange_reach_the_upstream() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/exchange");
    let explain = |name: &str| {
        let data = fs::read(dir.join(name)).expect("read seed");
        let summary = explain_exchange(&data).expect("a seed is run");
        eprintln!("=== {name}\n{summary}");
        let upstream_requests = summary.matches("\n  request ").count();
        (summary, upstream_requests)
    };
    let (sse, n) = explain("sse_stream_split_events");
    assert_eq!(n, 1);
    assert!(
        sse.contains("data: [DONE]"),
        "the whole stream reaches the client"
    );
    let (retry, n) = explain("retry_on_503");
    assert_eq!(n, 2, "one retry");
    assert!(retry.contains("x-chunkgate-retries: 1") && retry.contains("\\r\\n\\r\\nfine"));
    let (smuggle, n) = explain("client_cl_and_te");
    assert_eq!(n, 0);
    assert!(smuggle.contains("400 Bad Request"));
    let (big, n) = explain("small_limits_big_chunk");
    assert_eq!(n, 0);
    assert!(big.contains("413 Content Too Large"));
    let (pooled, _) = explain("two_clients_pooled_sequential");
    assert!(pooled.contains("from [\"127.0.0.2\"]") && pooled.contains("from [\"127.0.0.3\"]"));
}
