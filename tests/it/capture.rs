//! Completion capture over real sockets and a real SQLite file: one record per exchange in
//! the JSONL file, the SQLite table and at the webhook; never a credential in any of them; a
//! stalled webhook never slows a stream (its records are dropped and counted); the queue is
//! delivered at shutdown; the `capture` subcommands read the database; SIGTERM on the binary
//! with 200 streams in flight leaves 200 records in every sink.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chunkgate::capture::record::Record;
use chunkgate::config::{Config, SinkConfig, SinkKind, WebhookConfig};
use chunkgate::harness::mock::{MockHandle, MockOptions, MockUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, bounded, collect_body, hyper_upstream, response, TestBody, TestProxy};

/// Secrets that must never reach a sink.
const CLIENT_KEY: &str = "sk-client-secret-4242";
const INJECTED_KEY: &str = "injected-upstream-key-9191";
const QUERY_KEY: &str = "query-key-7373";

async fn mock(tokens: usize, gap: Duration) -> MockHandle {
    let opts = MockOptions {
        tokens,
        gap,
        ..MockOptions::default()
    };
    MockUpstream::bind("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("bind the mock")
        .spawn()
}

/// A POST the webhook received: its headers (name, value) and body.
type Hit = (Vec<(String, String)>, Vec<u8>);

/// A webhook that answers `status` to every POST and keeps what it received.
async fn webhook(status: u16) -> (common::Upstream, Arc<Mutex<Vec<Hit>>>) {
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let kept = Arc::clone(&hits);
    let up = hyper_upstream(move |req| {
        let kept = Arc::clone(&kept);
        async move {
            let headers = req
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let body = collect_body(req.into_body()).await.unwrap_or_default();
            kept.lock().unwrap().push((headers, body.to_vec()));
            response(status, &[], TestBody::empty())
        }
    })
    .await;
    (up, hits)
}

fn sink(name: &str, kind: SinkKind) -> SinkConfig {
    SinkConfig::new(name, kind)
}

fn webhook_sink(addr: SocketAddr) -> SinkConfig {
    let url = common::http_url(addr).to_string() + "/hooks/completions";
    let mut w = WebhookConfig::new(chunkgate::config::UpstreamUrl::parse(&url).unwrap());
    w.headers = vec![("Authorization".into(), "Bearer app-own-token".into())];
    w.timeout = Duration::from_secs(2);
    w.retries = 2;
    sink("hook", SinkKind::Webhook(w))
}

/// One streaming completion through the proxy on a new connection, read to its end:
/// the response bytes and how long it took.
async fn stream_once(proxy: SocketAddr, id: &str) -> (Vec<u8>, Duration) {
    stream_counted(proxy, id, &AtomicUsize::new(0)).await
}

/// [`stream_once`], counting in `sent` once the request is written.
async fn stream_counted(proxy: SocketAddr, id: &str, sent: &AtomicUsize) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let body = r#"{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions?key={QUERY_KEY} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {CLIENT_KEY}\r\nx-request-id: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    sent.fetch_add(1, Ordering::SeqCst);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    (out, started.elapsed())
}

fn assert_complete(out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(out.ends_with(b"\r\n0\r\n\r\n"), "no clean end: {text}");
}

fn jsonl_records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is one record"))
        .collect()
}

fn sqlite_records(path: &Path) -> Vec<Record> {
    let conn = chunkgate::capture::sqlite::open_for_reading(path).expect("the database opens");
    let sql = format!(
        "SELECT {} FROM completions ORDER BY id",
        chunkgate::capture::sqlite::COLUMNS
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([], chunkgate::capture::sqlite::record_of)
        .unwrap();
    rows.map(|r| r.unwrap().1).collect()
}

/// Wait until `f` holds, for at most five seconds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(proxy: &TestProxy, name: &str, sink: &str) -> f64 {
    let text = proxy.metrics.encode();
    let label = format!("{{sink=\"{sink}\"}}");
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&label))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{label} in:\n{text}"))
}

/// A proxy in front of `upstream` whose only route captures into `sinks`, injecting a
/// credential upstream.
fn capture_config(upstream: SocketAddr, sinks: Vec<SinkConfig>) -> Config {
    let mut cfg = common::config(&[upstream]);
    cfg.routes[0].inject_headers = vec![("x-api-key".into(), INJECTED_KEY.into())];
    cfg.routes[0].capture.sinks = sinks.iter().map(|s| s.name.clone()).collect();
    cfg.sinks = sinks;
    cfg
}

#[tokio::test]
async fn capture_one_record_per_exchange_in_every_sink_and_never_a_credential() {
    bounded(common::TEST_LIMIT, async {
        let up = mock(8, Duration::ZERO).await;
        let (hook, hits) = webhook(200).await;
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("answers.jsonl");
        let db = dir.path().join("answers.db");
        let sinks = vec![
            sink(
                "file",
                SinkKind::Jsonl {
                    path: jsonl.clone(),
                    fsync: true,
                },
            ),
            sink("db", SinkKind::Sqlite { path: db.clone() }),
            webhook_sink(hook.addr),
        ];
        let proxy = TestProxy::start(capture_config(up.addr(), sinks)).await;
        for i in 0..3 {
            let (out, _) = stream_once(proxy.addr, &format!("req-{i}")).await;
            assert_complete(&out);
        }
        eventually("three records in every sink", || {
            jsonl_records(&jsonl).len() == 3
                && sqlite_records(&db).len() == 3
                && hits.lock().unwrap().len() == 3
        })
        .await;

        let from_hook: Vec<(Vec<(String, String)>, Record)> = hits
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_slice(b).expect("a record")))
            .collect();
        for records in [
            jsonl_records(&jsonl),
            sqlite_records(&db),
            from_hook.iter().map(|(_, r)| r.clone()).collect(),
        ] {
            let mut ids: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
            ids.sort_unstable();
            assert_eq!(ids, ["req-0", "req-1", "req-2"]);
            for r in &records {
                assert_eq!(r.status, 200);
                assert_eq!(r.outcome, "complete");
                assert_eq!(r.method, "POST");
                assert_eq!(r.path, "/v1/chat/completions", "the query is never kept");
                assert_eq!(r.route, "/");
                assert!(
                    r.upstream.starts_with("http://127.0.0.1:"),
                    "{}",
                    r.upstream
                );
                assert!(r.started_at.ends_with('Z') && r.started_at.len() == 24);
                assert!(r.ttfb_ms.is_some() && r.duration_ms > 0.0);
                assert!(r.request.is_none(), "capture_request is off by default");
            }
        }
        for (headers, record) in &from_hook {
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("idempotency-key"), Some(record.request_id.as_str()));
            assert_eq!(get("content-type"), Some("application/json"));
            assert_eq!(get("authorization"), Some("Bearer app-own-token"));
        }

        // Never a credential, anywhere: the file, the database file, the webhook's requests.
        let mut stored: Vec<u8> = std::fs::read(&jsonl).unwrap();
        stored.extend(std::fs::read(&db).unwrap());
        if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
            stored.extend(wal);
        }
        for (headers, body) in hits.lock().unwrap().iter() {
            for (n, v) in headers {
                stored.extend(format!("{n}: {v}\n").bytes());
            }
            stored.extend(body);
        }
        let stored = String::from_utf8_lossy(&stored);
        for secret in [CLIENT_KEY, INJECTED_KEY, QUERY_KEY] {
            assert!(!stored.contains(secret), "{secret} reached a sink");
        }
        assert_eq!(metric(&proxy, "chunkgate_capture_written_total", "db"), 3.0);
        assert_eq!(metric(&proxy, "chunkgate_capture_dropped_total", "db"), 0.0);
        assert_eq!(metric(&proxy, "chunkgate_capture_queue_depth", "hook"), 0.0);
    })
    .await;
}

#[tokio::test]
async fn capture_is_off_unless_a_route_names_a_sink() {
    bounded(common::TEST_LIMIT, async {
        let up = mock(2, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("unused.db");
        let mut cfg = common::config(&[up.addr()]);
        cfg.sinks = vec![sink("db", SinkKind::Sqlite { path: db.clone() })];
        let proxy = TestProxy::start(cfg).await;
        let (out, _) = stream_once(proxy.addr, "quiet").await;
        assert_complete(&out);
        assert!(!db.exists(), "a sink no route names is never opened");
        assert!(!proxy.metrics.encode().contains("sink=\"db\""));
    })
    .await;
}

/// A webhook that accepts connections, reads what comes and never answers. Dropping the
/// handle stops it.
struct BlackHole {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn black_hole() -> BlackHole {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 << 10];
            let _ = s.read(&mut buf).await;
            held.push(s);
        }
    });
    BlackHole { addr, task }
}

#[tokio::test]
async fn capture_stalled_webhook_never_slows_a_stream() {
    bounded(Duration::from_secs(30), async {
        // 20 tokens 20 ms apart: a stream takes about 400 ms whatever capture does.
        let up = mock(20, Duration::from_millis(20)).await;
        let hole = black_hole().await;
        let mut hook = webhook_sink(hole.addr);
        hook.queue_records = 2;
        if let SinkKind::Webhook(w) = &mut hook.kind {
            w.max_in_flight = 1;
            w.timeout = Duration::from_secs(60);
        }
        let captured = TestProxy::start(capture_config(up.addr(), vec![hook])).await;
        let plain = TestProxy::to(&[up.addr()]).await;

        // Five streams at once through each proxy, twice: the webhook holds one delivery,
        // the queue two records, the rest are dropped.
        let mut with = Vec::new();
        let mut without = Vec::new();
        for round in 0..2 {
            let a = (0..5).map(|i| {
                let addr = captured.addr;
                tokio::spawn(async move { stream_once(addr, &format!("s-{round}-{i}")).await })
            });
            let b = (0..5).map(|i| {
                let addr = plain.addr;
                tokio::spawn(async move { stream_once(addr, &format!("p-{round}-{i}")).await })
            });
            let a: Vec<_> = a.collect();
            let b: Vec<_> = b.collect();
            for h in a {
                let (out, took) = h.await.unwrap();
                assert_complete(&out);
                with.push(took);
            }
            for h in b {
                let (out, took) = h.await.unwrap();
                assert_complete(&out);
                without.push(took);
            }
        }
        with.sort();
        without.sort();
        let median = |v: &[Duration]| v[v.len() / 2];
        let (w, wo) = (median(&with), median(&without));
        eprintln!("median stream time: with a stalled webhook {w:?}, without capture {wo:?}");
        assert!(
            w < wo + Duration::from_millis(100),
            "a stalled webhook slowed streams: {w:?} against {wo:?}"
        );
        assert!(*with.last().unwrap() < Duration::from_secs(2), "{with:?}");
        // 10 records: one delivery under way, one taken by the writer waiting for a
        // delivery slot, two queued; the other six dropped and counted.
        eventually("drops counted", || {
            metric(&captured, "chunkgate_capture_dropped_total", "hook") == 6.0
        })
        .await;
        assert_eq!(
            metric(&captured, "chunkgate_capture_queue_depth", "hook"),
            2.0
        );
        assert_eq!(
            metric(&captured, "chunkgate_capture_written_total", "hook"),
            0.0
        );
    })
    .await;
}

#[tokio::test]
async fn capture_webhook_retries_a_failing_answer_then_gives_up() {
    bounded(common::TEST_LIMIT, async {
        let up = mock(2, Duration::ZERO).await;
        let (hook, hits) = webhook(503).await;
        let proxy =
            TestProxy::start(capture_config(up.addr(), vec![webhook_sink(hook.addr)])).await;
        let (out, _) = stream_once(proxy.addr, "retry-me").await;
        assert_complete(&out);
        // One attempt and two retries, each with the same idempotency key.
        eventually("three attempts", || hits.lock().unwrap().len() == 3).await;
        eventually("given up", || {
            metric(&proxy, "chunkgate_capture_failed_total", "hook") == 1.0
        })
        .await;
        assert_eq!(
            metric(&proxy, "chunkgate_capture_retried_total", "hook"),
            2.0
        );
        for (headers, _) in hits.lock().unwrap().iter() {
            assert!(headers.contains(&("idempotency-key".into(), "retry-me".into())));
        }
    })
    .await;
}

#[tokio::test]
async fn capture_drain_delivers_queued_records_before_the_proxy_returns() {
    bounded(Duration::from_secs(20), async {
        let up = mock(4, Duration::ZERO).await;
        // A webhook that takes 200 ms per answer, one at a time: records pile up in the queue.
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = Arc::clone(&hits);
        let slow = hyper_upstream(move |req| {
            let kept = Arc::clone(&kept);
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let id = req
                    .headers()
                    .get("idempotency-key")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default();
                kept.lock().unwrap().push(id);
                response(204, &[], TestBody::empty())
            }
        })
        .await;
        let mut hook = webhook_sink(slow.addr);
        if let SinkKind::Webhook(w) = &mut hook.kind {
            w.max_in_flight = 1;
        }
        let proxy = TestProxy::start(capture_config(up.addr(), vec![hook])).await;
        for i in 0..6 {
            let (out, _) = stream_once(proxy.addr, &format!("d-{i}")).await;
            assert_complete(&out);
        }
        assert!(
            hits.lock().unwrap().len() < 6,
            "the test needs records still queued"
        );
        proxy.stop.cancel();
        let drained = proxy.join().await.expect("the proxy stops");
        assert!(drained);
        let mut got = hits.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, ["d-0", "d-1", "d-2", "d-3", "d-4", "d-5"]);
    })
    .await;
}

#[test]
fn capture_config_rejects_unknown_sinks_and_foreign_keys() {
    let base = r#"
[[group]]
name = "g"
[[group.upstream]]
url = "http://127.0.0.1:9000"

[[sink]]
name = "db"
kind = "sqlite"
path = "/tmp/x.db"
"#;
    let parse = |extra: &str| {
        Config::from_toml_str_with_env(&format!("{base}{extra}"), "t.toml", &|_| None)
    };
    let cfg = parse(
        "[[route]]\nprefix = \"/\"\ngroup = \"g\"\ncapture = [\"db\"]\ncapture_request = true\n",
    )
    .expect("a route naming a defined sink");
    assert_eq!(cfg.routes[0].capture.sinks, ["db"]);
    assert!(cfg.routes[0].capture.request);
    assert_eq!(cfg.routes[0].capture.request_max, 64 << 10);

    let e = parse("[[route]]\nprefix = \"/\"\ngroup = \"g\"\ncapture = [\"db\", \"nope\"]\n")
        .unwrap_err();
    assert_eq!(e.subject(), Some("route[0].capture[1]"));
    assert_eq!(e.line(), Some(14));
    assert_eq!(e.message(), "no sink named `nope` (defined: db)");

    let e = parse("[[sink]]\nname = \"f\"\nkind = \"jsonl\"\npath = \"a\"\nurl = \"http://x\"\n")
        .unwrap_err();
    assert_eq!(e.subject(), Some("sink[1].url"));
    assert_eq!(e.message(), "`url` does not apply to a jsonl sink");

    let e = parse("[[sink]]\nname = \"db\"\nkind = \"jsonl\"\npath = \"a\"\n").unwrap_err();
    assert_eq!(e.message(), "sink `db` is defined twice");

    let e = parse(
        "[[sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\nmax_in_flight = 0\n",
    )
    .unwrap_err();
    assert_eq!(e.subject(), Some("sink[1].max_in_flight"));

    let e = parse("[[sink]]\nname = \"w\"\nkind = \"kafka\"\n").unwrap_err();
    assert_eq!(e.subject(), Some("sink[1].kind"));

    // check-config never shows a webhook header's value.
    let cfg = Config::from_toml_str_with_env(
        &format!("{base}[[sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\nheaders = {{ Authorization = \"Bearer ${{APP}}\" }}\n[[route]]\nprefix = \"/\"\ngroup = \"g\"\ncapture = [\"w\", \"db\"]\n"),
        "t.toml",
        &|k| (k == "APP").then(|| "app-secret".to_string()),
    )
    .unwrap();
    assert!(!cfg.to_toml(true).contains("app-secret"));
    let round = Config::from_toml_str_with_env(&cfg.to_toml(false), "again", &|_| None).unwrap();
    assert_eq!(round, cfg, "check-config output reads back the same");
}

// ---------------------------------------------------------------------------------------------
// The binary: SIGTERM with streams in flight, SIGHUP, the `capture` subcommands
// ---------------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_chunkgate");

/// A child process, killed if the test ends before it exits.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Wait for the exit, for at most `limit`.
    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        std::process::Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn chunkgate"),
    )
}

/// `chunkgate capture ...`: its exit status and standard output.
fn capture_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .arg("capture")
        .args(args)
        .output()
        .expect("run chunkgate capture");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_sigterm_with_200_streams_delivers_200_records_to_every_sink() {
    bounded(Duration::from_secs(60), async {
        let up = free_port();
        let listen = free_port();
        let _mock = spawn(&[
            "mock-upstream",
            "--listen",
            &up.to_string(),
            "--tokens",
            "20",
            "--gap-ms",
            "50",
        ]);
        wait_listening(up).await;
        let (hook, hits) = webhook(200).await;
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("answers.jsonl");
        let db = dir.path().join("answers.db");
        let mut proxy = spawn(&[
            "serve",
            "--listen",
            &listen.to_string(),
            "--upstream",
            &format!("http://{up}"),
            "--drain-timeout",
            "20s",
            "--no-access-log",
            "--capture-jsonl",
            jsonl.to_str().unwrap(),
            "--capture-sqlite",
            db.to_str().unwrap(),
            "--capture-webhook",
            &format!("http://{}/hook", hook.addr),
        ]);
        wait_listening(listen).await;

        let sent = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let sent = Arc::clone(&sent);
                tokio::spawn(
                    async move { stream_counted(listen, &format!("sig-{i:03}"), &sent).await },
                )
            })
            .collect();
        // Every stream is under way (20 tokens 50 ms apart: about a second each), then stop.
        eventually("200 requests sent", || sent.load(Ordering::SeqCst) == 200).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.signal("TERM");
        for c in clients {
            let (out, _) = c.await.unwrap();
            assert_complete(&out);
        }
        let code = proxy.exit(Duration::from_secs(30)).await;
        assert!(code.success(), "exit status {code:?}");

        let expected: Vec<String> = (0..200).map(|i| format!("sig-{i:03}")).collect();
        let ids = |records: Vec<Record>| {
            let mut ids: Vec<String> = records.into_iter().map(|r| r.request_id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(jsonl_records(&jsonl)), expected, "the JSONL file");
        assert_eq!(ids(sqlite_records(&db)), expected, "the SQLite table");
        let mut keys: Vec<String> = hits
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(h, _)| h.iter().find(|(n, _)| n == "idempotency-key"))
            .map(|(_, v)| v.clone())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys, expected, "the webhook");

        // The capture subcommands read the database.
        let (ok, shown) = capture_cli(&["show", "sig-007", "--sqlite", db.to_str().unwrap()]);
        assert!(ok);
        let record: Record = serde_json::from_str(shown.trim()).expect("show prints a record");
        assert_eq!(
            (record.request_id.as_str(), record.status),
            ("sig-007", 200)
        );
        assert_eq!(record.outcome, "complete");
        let (ok, _) = capture_cli(&["show", "nope", "--sqlite", db.to_str().unwrap()]);
        assert!(!ok, "an unknown request id fails");
        let (ok, tail) = capture_cli(&["tail", "-n", "5", "--sqlite", db.to_str().unwrap()]);
        assert!(ok);
        assert_eq!(tail.lines().count(), 6, "{tail}");
        assert!(tail.starts_with("started_at"), "{tail}");
        let (ok, stats) = capture_cli(&["stats", "--sqlite", db.to_str().unwrap()]);
        assert!(ok);
        assert!(stats.contains("records: 200"), "{stats}");
        assert!(
            stats
                .lines()
                .any(|l| l.split_whitespace().eq(["complete", "200"])),
            "{stats}"
        );
        assert!(stats.contains("time to first token: p50"), "{stats}");
    })
    .await;
}

#[tokio::test]
async fn capture_jsonl_reopens_on_sighup() {
    bounded(Duration::from_secs(30), async {
        let up = mock(2, Duration::ZERO).await;
        let listen = free_port();
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("answers.jsonl");
        let rotated = dir.path().join("answers.jsonl.1");
        let mut proxy = spawn(&[
            "serve",
            "--listen",
            &listen.to_string(),
            "--upstream",
            &format!("http://{}", up.addr()),
            "--no-access-log",
            "--capture-jsonl",
            jsonl.to_str().unwrap(),
        ]);
        wait_listening(listen).await;
        let (out, _) = stream_once(listen, "before").await;
        assert_complete(&out);
        eventually("the first record", || jsonl_records(&jsonl).len() == 1).await;
        std::fs::rename(&jsonl, &rotated).unwrap();
        proxy.signal("HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (out, _) = stream_once(listen, "after").await;
        assert_complete(&out);
        eventually("the second record in a new file", || {
            jsonl_records(&jsonl).len() == 1
        })
        .await;
        assert_eq!(jsonl_records(&rotated)[0].request_id, "before");
        assert_eq!(jsonl_records(&jsonl)[0].request_id, "after");
        proxy.signal("TERM");
        assert!(proxy.exit(Duration::from_secs(10)).await.success());
    })
    .await;
}
