//! The partial-chunk harness over real sockets: it passes against a chunk-exact path and
//! fails, with the re-chunking shown, against a naive pass-through proxy that forwards each
//! read as its own chunk.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use chunkgate::codec::chunked::LAST_CHUNK;
use chunkgate::harness::mock::{MockHandle, MockOptions, MockUpstream};
use chunkgate::harness::naive::PartialChunks;
use chunkgate::harness::peer::Peer;
use chunkgate::harness::runner::{run, Direction, HarnessConfig, Report};
use chunkgate::harness::split::{chunk_wire, SplitStrategy};
use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

async fn start_mock() -> MockHandle {
    MockUpstream::bind("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap()
        .spawn()
}

/// A pass-through proxy of the kind the harness exists to catch: it forwards heads as they
/// are, and re-encodes whatever payload bytes each read delivered as a chunk of its own.
struct NaiveProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for NaiveProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_naive_proxy(upstream: SocketAddr) -> NaiveProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            conns.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), naive_exchange(client, upstream))
                        .await;
            });
        }
    });
    NaiveProxy { addr, task }
}

/// Forward a chunked body, one chunk out per piece of payload each read delivered.
async fn rechunk(from: &mut TcpStream, to: &mut TcpStream, mut data: BytesMut) -> io::Result<()> {
    let mut reader = PartialChunks::default();
    loop {
        for piece in reader.feed(&data).map_err(io::Error::other)? {
            to.write_all(&chunk_wire(&piece)).await?;
        }
        if reader.is_done() {
            return to.write_all(LAST_CHUNK).await;
        }
        data.clear();
        if from.read_buf(&mut data).await? == 0 {
            return Ok(());
        }
    }
}

async fn copy_length(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut data: BytesMut,
    n: u64,
) -> io::Result<()> {
    let mut left = n;
    loop {
        let take = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        to.write_all(&data[..take]).await?;
        left -= take as u64;
        if left == 0 {
            return Ok(());
        }
        data.clear();
        if from.read_buf(&mut data).await? == 0 {
            return Ok(());
        }
    }
}

async fn naive_exchange(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut client = Peer::new(client);
    let head = client.request_head().await?;
    let mut up = Peer::connect(upstream).await?;
    up.send(&head.raw).await?;
    let rest = client.buf.split_off(0);
    if head.is_chunked() {
        rechunk(&mut client.stream, &mut up.stream, rest).await?;
    } else if let Some(len) = head.content_length() {
        copy_length(&mut client.stream, &mut up.stream, rest, len).await?;
    }
    let head = up.response_head().await?;
    client.send(&head.raw).await?;
    let rest = up.buf.split_off(0);
    if head.is_chunked() {
        rechunk(&mut up.stream, &mut client.stream, rest).await
    } else if let Some(len) = head.content_length() {
        copy_length(&mut up.stream, &mut client.stream, rest, len).await
    } else {
        client.send(&rest).await?;
        tokio::io::copy(&mut up.stream, &mut client.stream)
            .await
            .map(|_| ())
    }
}

fn config(target: SocketAddr, strategies: &[SplitStrategy], iterations: usize) -> HarnessConfig {
    HarnessConfig {
        strategies: strategies.to_vec(),
        iterations,
        tokens: 12,
        request_chunks: 12,
        case_timeout: Duration::from_secs(10),
        ..HarnessConfig::new(target)
    }
}

fn row(
    report: &Report,
    direction: Direction,
    strategy: SplitStrategy,
) -> &chunkgate::harness::runner::Row {
    report
        .rows
        .iter()
        .find(|r| r.direction == direction && r.strategy == strategy.name())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_passes_against_the_mock_directly() {
    let mock = start_mock().await;
    let cfg = config(mock.addr(), &SplitStrategy::ALL, 2);
    let report = run(&cfg, &ProgressBar::hidden()).await;
    assert!(report.passed, "{}", report.table());
    assert_eq!(report.cases, 2 * SplitStrategy::ALL.len() * 2);
    // Straight from the mock, the split writes reach the client as split reads: the
    // harness measures them, and fails on them when asked to.
    let utf8 = row(&report, Direction::Response, SplitStrategy::Utf8);
    assert!(utf8.split_reads > 0, "{}", report.table());
    let cfg = HarnessConfig {
        whole_reads: true,
        directions: vec![Direction::Response],
        ..config(mock.addr(), &[SplitStrategy::Utf8], 1)
    };
    let report = run(&cfg, &ProgressBar::hidden()).await;
    assert!(!report.passed);
    let f = row(&report, Direction::Response, SplitStrategy::Utf8)
        .first_failure
        .as_ref()
        .unwrap();
    assert!(
        f.failure.message.contains("split across reads"),
        "{}",
        f.failure.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_fails_against_a_naive_proxy_and_shows_the_rechunking() {
    let mock = start_mock().await;
    let proxy = start_naive_proxy(mock.addr()).await;
    let adversarial = [
        SplitStrategy::Random,
        SplitStrategy::Utf8,
        SplitStrategy::SizeLine,
        SplitStrategy::Crlf,
        SplitStrategy::Straddle,
    ];
    let cfg = config(proxy.addr, &adversarial, 2);
    let report = run(&cfg, &ProgressBar::hidden()).await;
    assert!(!report.passed, "{}", report.table());
    for st in [
        SplitStrategy::Utf8,
        SplitStrategy::Random,
        SplitStrategy::Straddle,
    ] {
        for dir in [Direction::Response, Direction::Request] {
            let r = row(&report, dir, st);
            assert!(
                r.failed > 0,
                "{} {st} passed:\n{}",
                dir.name(),
                report.table()
            );
            let f = r.first_failure.as_ref().unwrap();
            assert!(
                f.failure.message.contains("re-chunked"),
                "{}",
                f.failure.message
            );
            assert!(f.failure.dump.contains('|'), "{}", f.failure.dump);
        }
    }
    // The response side also sees what a user would: pieces of events and characters.
    let f = row(&report, Direction::Response, SplitStrategy::Utf8)
        .first_failure
        .as_ref()
        .unwrap();
    assert!(
        f.failure.message.contains("not valid utf-8"),
        "{}",
        f.failure.message
    );
    assert!(
        f.failure.message.contains("not whole sse events"),
        "{}",
        f.failure.message
    );
    // The classic abc / def+gh / ij body is request case 0 of `straddle`.
    let classic = row(&report, Direction::Request, SplitStrategy::Straddle)
        .first_failure
        .as_ref()
        .unwrap();
    assert_eq!(classic.case, 0);
    let table = report.table();
    assert!(table.contains("FAIL"), "{table}");
    assert!(
        table.contains("first failure, request straddle case 0"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_report_serialises_to_json() {
    let mock = start_mock().await;
    let cfg = HarnessConfig {
        directions: vec![Direction::Request],
        ..config(mock.addr(), &[SplitStrategy::None], 1)
    };
    let report = run(&cfg, &ProgressBar::hidden()).await;
    let v: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["rows"][0]["direction"], "request");
    assert_eq!(v["rows"][0]["strategy"], "none");
    assert_eq!(v["rows"][0]["cases"], 1);
    assert!(v["rows"][0]["first_failure"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_reports_an_unreachable_target_as_failures() {
    // Bind then drop: nothing listens there any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config(addr, &[SplitStrategy::None], 1);
    let report = run(&cfg, &ProgressBar::hidden()).await;
    assert!(!report.passed);
    assert_eq!(report.failed, 2);
    let f = report.rows[0].first_failure.as_ref().unwrap();
    assert!(
        f.failure.message.starts_with("exchange failed"),
        "{}",
        f.failure.message
    );
}

/// Run the built `chunkgate harness` with `args`; exit code and parsed `--json` report.
async fn harness_cli(args: Vec<String>) -> (Option<i32>, serde_json::Value) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chunkgate"))
            .arg("harness")
            .args(&args)
            .arg("--json")
            .output()
            .expect("run chunkgate harness")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no json report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cli_exit_status_follows_the_verdict() {
    let mock = start_mock().await;
    let proxy = start_naive_proxy(mock.addr()).await;
    let common = |target: SocketAddr| {
        vec![
            "--target".to_string(),
            format!("http://{target}"),
            "--upstream-url".to_string(),
            mock.url(),
            "--strategies".to_string(),
            "utf8,straddle".to_string(),
            "--iterations".to_string(),
            "2".to_string(),
        ]
    };
    let (code, report) = harness_cli(common(mock.addr())).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["cases"], 8);
    let (code, report) = harness_cli(common(proxy.addr)).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["passed"], false);
    assert!(report["rows"][0]["first_failure"]["dump"]
        .as_str()
        .unwrap()
        .contains('|'));
}

#[tokio::test]
async fn harness_cli_refuses_a_missing_mock() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chunkgate"))
            .args(["harness", "--target"])
            .arg(format!("http://{addr}"))
            .arg("--upstream-url")
            .arg(format!("http://{addr}"))
            .output()
            .expect("run chunkgate harness")
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no mock upstream"), "{stderr}");
}

/// chunkgate in front of `upstream` on an ephemeral port; stopped when the token is cancelled.
async fn start_chunkgate(
    upstream: SocketAddr,
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    use chunkgate::config::{Config, UpstreamUrl};
    let cfg = Config::simple(
        "127.0.0.1:0".parse().unwrap(),
        vec![UpstreamUrl::parse(&format!("http://{upstream}")).unwrap()],
    );
    let proxy = chunkgate::proxy::Proxy::bind(cfg).await.unwrap();
    let addr = proxy.local_addr();
    let shutdown = proxy.shutdown_token();
    tokio::spawn(proxy.run());
    (addr, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_passes_against_chunkgate_every_strategy_both_directions() {
    let mock = start_mock().await;
    let (addr, shutdown) = start_chunkgate(mock.addr()).await;
    // Chunk-exact, and each chunk whole in one read on the far side.
    let cfg = HarnessConfig {
        whole_reads: true,
        ..config(addr, &SplitStrategy::ALL, 3)
    };
    let report = run(&cfg, &ProgressBar::hidden()).await;
    shutdown.cancel();
    assert!(report.passed, "{}", report.table());
    assert_eq!(report.cases, 2 * SplitStrategy::ALL.len() * 3);
    for r in &report.rows {
        assert!(r.chunks > 0, "{} {}", r.direction.name(), r.strategy);
        assert_eq!(r.split_reads, 0, "{} {}", r.direction.name(), r.strategy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_passes_against_chunkgate_with_token_gaps_and_long_streams() {
    let mock = start_mock().await;
    let (addr, shutdown) = start_chunkgate(mock.addr()).await;
    let cfg = HarnessConfig {
        tokens: 60,
        request_chunks: 40,
        token_gap: Duration::from_millis(1),
        ..config(addr, &[SplitStrategy::Mixed, SplitStrategy::Straddle], 2)
    };
    let report = run(&cfg, &ProgressBar::hidden()).await;
    shutdown.cancel();
    assert!(report.passed, "{}", report.table());
}
