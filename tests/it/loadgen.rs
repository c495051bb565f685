//! Smoke test of `chunkgate bench`: every load mode against the measurement upstream, in-process
//! on 127.0.0.1, plus a re-chunking server that the stream checker must catch. Runs in well
//! under three seconds and needs nothing installed.

use std::net::SocketAddr;
use std::time::Duration;

use chunkgate::harness::peer::Peer;
use chunkgate::loadgen::{self, upstream, LoadArgs, LoadMode, Report};
use tokio_util::sync::CancellationToken;

async fn start_upstream() -> (SocketAddr, CancellationToken) {
    let listener = upstream::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    tokio::spawn(upstream::serve(listener, token.clone()));
    (addr, token)
}

async fn run(mode: LoadMode, args: &LoadArgs) -> Report {
    tokio::time::timeout(Duration::from_secs(10), loadgen::run(mode, args))
        .await
        .expect("load run finished in time")
        .expect("load run succeeded")
}

#[tokio::test]
async fn bench_modes_against_own_upstream() {
    let (addr, token) = start_upstream().await;
    let url = format!("http://{addr}");
    let me = std::process::id();

    let mut sse = LoadArgs::new(url.clone());
    sse.connections = Some(8);
    sse.tokens = Some(5);
    sse.gap_ms = Some(2);
    sse.pid = Some(me);
    let r = run(LoadMode::Sse, &sse).await;
    assert_eq!((r.ok, r.failed), (8, 0), "{r:?}");
    assert_eq!(r.events, Some(40));
    assert_eq!((r.split_chunks, r.merged_chunks), (Some(0), Some(0)));
    let delay = r.delay_us.unwrap();
    assert_eq!(delay.count, 40);
    assert!(delay.p50 > 0.0 && delay.p50 <= delay.p99 && delay.p99 <= delay.max);
    assert_eq!(r.ttft_us.unwrap().count, 8);
    assert!(r.cpu_us_per_event.is_some());

    let mut rps = LoadArgs::new(url.clone());
    rps.connections = Some(2);
    rps.warmup = 0.05;
    rps.duration = 0.3;
    rps.pid = Some(me);
    let r = run(LoadMode::Rps, &rps).await;
    assert_eq!(r.failed, 0, "{r:?}");
    assert!(r.ok > 10, "{r:?}");
    assert!(r.req_per_s.unwrap() > 0.0);
    assert_eq!(r.latency_us.unwrap().count, r.ok);
    assert!(r.cpu_us_per_request.is_some());

    let mut up = LoadArgs::new(url.clone());
    up.mib = 3;
    up.connections = Some(2);
    let r = run(LoadMode::Upload, &up).await;
    assert_eq!((r.ok, r.failed), (2, 0), "{r:?}");
    assert_eq!(r.bytes, Some(2 * (3 << 20)));
    assert!(r.mb_per_s.unwrap() > 0.0);

    let mut idle = LoadArgs::new(url);
    idle.connections = Some(30);
    idle.tokens = Some(3);
    idle.gap_ms = Some(300);
    idle.pid = Some(me);
    let r = run(LoadMode::Idle, &idle).await;
    assert_eq!((r.ok, r.failed), (30, 0), "{r:?}");
    assert_eq!(r.streams_open_at_sample, Some(30), "{r:?}");
    assert!(r.rss_open_kib.is_some() && r.kib_per_stream.is_some());

    token.cancel();
}

/// A server that answers any request with the events of two tokens in one chunk, the way a
/// proxy that re-chunks by read would.
async fn start_merging_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let mut peer = Peer::new(s);
        if peer.request_head().await.is_err() {
            return;
        }
        let now = upstream::unix_nanos();
        let events = format!("data: {{\"i\":0,\"t\":{now}}}\n\ndata: {{\"i\":1,\"t\":{now}}}\n\n");
        let done = "data: [DONE]\n\n";
        let body = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n{:x}\r\n{done}\r\n0\r\n\r\n",
            events.len(),
            done.len()
        );
        let _ = peer.send(body.as_bytes()).await;
        // Let the client read before the socket closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    addr
}

#[tokio::test]
async fn sse_reports_merged_events() {
    let addr = start_merging_server().await;
    let mut args = LoadArgs::new(format!("http://{addr}"));
    args.connections = Some(1);
    args.tokens = Some(2);
    args.gap_ms = Some(1);
    let r = run(LoadMode::Sse, &args).await;
    assert_eq!((r.ok, r.failed), (1, 0), "{r:?}");
    assert_eq!(r.events, Some(2));
    assert_eq!(r.merged_chunks, Some(1));
    assert_eq!(r.split_chunks, Some(0));
    assert!(loadgen::render_text(&r).contains("NOT exact"));
}

#[tokio::test]
async fn table_summarises_reports_from_json() {
    let (addr, token) = start_upstream().await;
    let mut args = LoadArgs::new(format!("http://{addr}"));
    args.connections = Some(2);
    args.tokens = Some(3);
    args.gap_ms = Some(1);
    args.tag = Some("direct".into());
    let r = run(LoadMode::Sse, &args).await;
    let line = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&line).unwrap();
    assert_eq!(back, r);
    let table = loadgen::table::render(&[back], &["direct"], "nginx", "direct");
    assert!(table.contains("| added token delay p50 µs |"), "{table}");
    assert!(
        table.contains("| chunks that split or merged events (sum) | 0 |"),
        "{table}"
    );
    token.cancel();
}
