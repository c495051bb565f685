//! The admin listener over real sockets: `/metrics` parsed by a Prometheus text parser,
//! `/readyz` flipping to 503 while draining, `/healthz`; and the access-log record.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chunkgate::admin::{self, AdminState};
use chunkgate::harness::peer::Peer;
use chunkgate::logging::line::{self, Layout};
use chunkgate::logging::{access_log, ExchangeRecord, Outcome};
use chunkgate::metrics::{Direction, Metrics};
use chunkgate::stream::dialect::Usage;
use chunkgate::stream::tap::Summary;
use prometheus_parse::{Scrape, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const TEST_DEADLINE: Duration = Duration::from_secs(10);

struct Admin {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(metrics: Arc<Metrics>) -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    let shutdown = CancellationToken::new();
    let state = AdminState {
        metrics,
        ready: ready.clone(),
        upstreams: Arc::new(|| {
            vec![
                ("http://127.0.0.1:9000".to_string(), "closed"),
                ("http://127.0.0.1:9001".to_string(), "open"),
            ]
        }),
        reload: Arc::new(|| Err("no configuration source to reload from".to_string())),
    };
    let task = tokio::spawn(admin::serve(listener, state, shutdown.clone()));
    Admin {
        addr,
        ready,
        shutdown,
        task,
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// A deliberately plain HTTP/1.1 client: one request, `Connection: close`, the head, then the
/// rest read to EOF.
async fn get(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    let exchange = async {
        let mut peer = Peer::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}Connection: close\r\n\r\n");
        peer.send(req.as_bytes()).await.unwrap();
        let head = peer.response_head().await.expect("a head");
        (head, peer.read_to_close().await)
    };
    let (head, body) = tokio::time::timeout(TEST_DEADLINE, exchange)
        .await
        .expect("admin answered in time");
    Reply {
        status: head.status,
        head: String::from_utf8(head.raw)
            .expect("utf-8 head")
            .to_ascii_lowercase(),
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

fn record(status: u16, outcome: Outcome) -> ExchangeRecord {
    ExchangeRecord {
        request_id: Bytes::from_static(b"req-0001"),
        method: Bytes::from_static(b"POST"),
        path: Bytes::from_static(b"/openai/v1/chat/completions"),
        route: Arc::from("/openai/"),
        upstream: Arc::from("http://127.0.0.1:9000"),
        status,
        bytes_in: 20,
        bytes_out: 500,
        chunks_in: 2,
        chunks_out: 5,
        reassembled: 2,
        ttfb: Some(Duration::from_millis(50)),
        ttfc: Some(Duration::from_millis(80)),
        duration: Duration::from_millis(1500),
        retries: 1,
        outcome,
        started_at: std::time::SystemTime::now(),
        ttft: None,
        llm: None,
    }
}

/// Feed `Metrics` one known streaming exchange and a failed one, plus connection events.
fn known_events(m: &Metrics) {
    for _ in 0..3 {
        m.connection_opened();
    }
    m.connection_closed();
    m.stream_started();
    m.stream_started();
    m.stream_ended();
    for _ in 0..5 {
        m.chunk_forwarded(Direction::Response, 100);
    }
    for _ in 0..2 {
        m.chunk_forwarded(Direction::Request, 10);
    }
    m.chunk_reassembled(Direction::Response);
    m.chunk_reassembled(Direction::Response);
    for _ in 0..4 {
        m.inter_chunk_gap(Duration::from_millis(10));
    }
    m.rejected("unauthorized");
    m.rejected("unauthorized");
    m.timeout("stream_idle");
    m.retry("http://127.0.0.1:9001");
    m.retry("http://127.0.0.1:9001");
    m.breaker_state("http://127.0.0.1:9001", 1);
    m.breaker_state("http://127.0.0.1:9000", 0);
    m.exchange_done(&record(200, Outcome::Complete));
    let mut failed = record(503, Outcome::UpstreamError);
    failed.bytes_in = 0;
    failed.bytes_out = 0;
    failed.ttfb = None;
    failed.ttfc = None;
    m.exchange_done(&failed);
}

fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(Value::Counter(v)) | Some(Value::Gauge(v)) | Some(Value::Untyped(v)) => *v,
        Some(other) => panic!("{metric}: unexpected value {other:?}"),
        None => panic!("{metric}{labels:?} not in the scrape"),
    }
}

fn bucket(scrape: &Scrape, metric: &str, labels: &[(&str, &str)], le: f64) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                && matches!(s.value, Value::Histogram(_))
        })
        .unwrap_or_else(|| panic!("histogram {metric} missing"));
    let Value::Histogram(buckets) = &sample.value else {
        unreachable!()
    };
    buckets
        .iter()
        .find(|b| (b.less_than - le).abs() < 1e-9)
        .unwrap_or_else(|| panic!("{metric}: no bucket le={le}"))
        .count
}

#[tokio::test]
async fn metrics_scrape_has_the_key_series_with_known_values() {
    let metrics = Arc::new(Metrics::new());
    known_events(&metrics);
    let admin = start(metrics).await;

    let reply = get(admin.addr, "GET", "/metrics", "").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .head
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        reply.head
    );
    let scrape = Scrape::parse(reply.body.lines().map(|l| Ok(l.to_string()))).expect("parses");

    let route = [("route", "/openai/"), ("upstream", "http://127.0.0.1:9000")];
    let with = |class: &'static str| {
        let mut l = route.to_vec();
        l.push(("status_class", class));
        l
    };
    assert_eq!(
        value(&scrape, "chunkgate_requests_total", &with("2xx")),
        1.0
    );
    assert_eq!(
        value(&scrape, "chunkgate_requests_total", &with("5xx")),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_exchanges_total",
            &[("outcome", "complete")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_exchanges_total",
            &[("outcome", "upstream_error")]
        ),
        1.0
    );
    assert_eq!(value(&scrape, "chunkgate_connections_active", &[]), 2.0);
    assert_eq!(value(&scrape, "chunkgate_connections_total", &[]), 3.0);
    assert_eq!(value(&scrape, "chunkgate_streams_active", &[]), 1.0);
    assert_eq!(value(&scrape, "chunkgate_streams_total", &[]), 2.0);
    assert_eq!(
        value(
            &scrape,
            "chunkgate_chunks_total",
            &[("direction", "response")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_chunks_total",
            &[("direction", "request")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_chunks_reassembled_total",
            &[("direction", "response")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_chunks_reassembled_total",
            &[("direction", "request")]
        ),
        0.0,
        "both directions are exported from the start"
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_body_bytes_total",
            &[("direction", "response")]
        ),
        500.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_body_bytes_total",
            &[("direction", "request")]
        ),
        20.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_rejections_total",
            &[("reason", "unauthorized")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_timeouts_total",
            &[("kind", "stream_idle")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_retries_total",
            &[("upstream", "http://127.0.0.1:9001")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_breaker_state",
            &[("upstream", "http://127.0.0.1:9001")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_breaker_state",
            &[("upstream", "http://127.0.0.1:9000")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &scrape,
            "chunkgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Histograms: chunk sizes (5 response chunks of 100 bytes fall in le=256, not le=64).
    let resp = [("direction", "response")];
    assert_eq!(
        bucket(&scrape, "chunkgate_chunk_size_bytes", &resp, 64.0),
        0.0
    );
    assert_eq!(
        bucket(&scrape, "chunkgate_chunk_size_bytes", &resp, 256.0),
        5.0
    );
    assert_eq!(
        value(&scrape, "chunkgate_chunk_size_bytes_sum", &resp),
        500.0
    );
    assert_eq!(
        value(&scrape, "chunkgate_chunk_size_bytes_count", &resp),
        5.0
    );
    // Time to first byte: one observation of 50 ms (the failed exchange had none).
    assert_eq!(
        value(&scrape, "chunkgate_upstream_ttfb_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        bucket(&scrape, "chunkgate_upstream_ttfb_seconds", &[], 0.025),
        0.0
    );
    assert_eq!(
        bucket(&scrape, "chunkgate_upstream_ttfb_seconds", &[], 0.05),
        1.0
    );
    assert_eq!(
        value(&scrape, "chunkgate_upstream_ttfc_seconds_count", &[]),
        1.0
    );
    assert!((value(&scrape, "chunkgate_upstream_ttfc_seconds_sum", &[]) - 0.08).abs() < 1e-9);
    assert_eq!(
        value(&scrape, "chunkgate_inter_chunk_gap_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        bucket(&scrape, "chunkgate_inter_chunk_gap_seconds", &[], 0.01),
        4.0
    );
    assert_eq!(
        value(&scrape, "chunkgate_exchange_duration_seconds_count", &[]),
        2.0
    );
    assert!((value(&scrape, "chunkgate_exchange_duration_seconds_sum", &[]) - 3.0).abs() < 1e-9);

    // Every counter is typed under the name its samples carry.
    assert!(reply
        .body
        .contains("# TYPE chunkgate_requests_total counter"));
    assert!(!reply.body.contains("# EOF"));

    admin.shutdown.cancel();
    let ended = tokio::time::timeout(TEST_DEADLINE, admin.task).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "serve returns after cancel"
    );
}

#[tokio::test]
async fn metrics_speaks_openmetrics_when_asked() {
    let admin = start(Arc::new(Metrics::new())).await;
    let reply = get(
        admin.addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        reply.head
    );
    assert!(reply.body.ends_with("# EOF\n"));
    admin.shutdown.cancel();
}

#[tokio::test]
async fn readyz_flips_to_503_while_draining() {
    let admin = start(Arc::new(Metrics::new())).await;

    let up = get(admin.addr, "GET", "/readyz", "").await;
    assert_eq!(up.status, 200);
    assert!(up.head.contains("content-type: application/json"));
    let body: serde_json::Value = serde_json::from_str(&up.body).unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["upstreams"][0]["name"], "http://127.0.0.1:9000");
    assert_eq!(body["upstreams"][0]["breaker"], "closed");
    assert_eq!(body["upstreams"][1]["breaker"], "open");

    admin.ready.store(false, Ordering::Release);
    let draining = get(admin.addr, "GET", "/readyz", "").await;
    assert_eq!(draining.status, 503);
    let body: serde_json::Value = serde_json::from_str(&draining.body).unwrap();
    assert_eq!(body["status"], "draining");
    assert_eq!(body["upstreams"].as_array().map(Vec::len), Some(2));

    // Liveness and metrics stay up while draining.
    let health = get(admin.addr, "GET", "/healthz", "").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(admin.addr, "GET", "/metrics", "").await.status, 200);
    admin.shutdown.cancel();
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let admin = start(Arc::new(Metrics::new())).await;
    assert_eq!(get(admin.addr, "GET", "/nope", "").await.status, 404);
    let post = get(admin.addr, "POST", "/metrics", "Content-Length: 0\r\n").await;
    assert_eq!(post.status, 405);
    assert!(post.head.contains("allow: get, head"));
    let head = get(admin.addr, "HEAD", "/healthz", "").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    // A query string does not change the endpoint.
    assert_eq!(
        get(admin.addr, "GET", "/healthz?verbose=1", "")
            .await
            .status,
        200
    );
    admin.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let admin = start(Arc::new(Metrics::new())).await;
    assert_eq!(get(admin.addr, "GET", "/healthz", "").await.status, 200);
    admin.shutdown.cancel();
    tokio::time::timeout(TEST_DEADLINE, admin.task)
        .await
        .expect("serve ends")
        .expect("task joins")
        .expect("serve returns ok");
    assert!(
        TcpStream::connect(admin.addr).await.is_err(),
        "listener is closed"
    );
}

/// A `MakeWriter` collecting everything written, for capturing log output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn access_log_json_has_every_field_and_no_secret() {
    let out = Capture::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let mut rec = record(200, Outcome::Timeout("stream_idle"));
    rec.path = Bytes::from_static(b"/openai/v1/chat/completions?api_key=sk-live-secret");
    tracing::subscriber::with_default(subscriber, || access_log(&rec));

    let text = out.text();
    assert_eq!(text.lines().count(), 1, "one line per exchange: {text}");
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["target"], "access");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["request_id"], "req-0001");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/openai/v1/chat/completions");
    assert_eq!(line["route"], "/openai/");
    assert_eq!(line["upstream"], "http://127.0.0.1:9000");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 20);
    assert_eq!(line["bytes_out"], 500);
    assert_eq!(line["chunks_in"], 2);
    assert_eq!(line["chunks_out"], 5);
    assert_eq!(line["reassembled"], 2);
    assert_eq!(line["ttfb_ms"], 50.0);
    assert_eq!(line["ttfc_ms"], 80.0);
    assert_eq!(line["duration_ms"], 1500.0);
    assert_eq!(line["retries"], 1);
    assert_eq!(line["outcome"], "timeout:stream_idle");
    assert!(
        !text.contains("sk-live-secret"),
        "query strings are cut: {text}"
    );
}

#[test]
fn access_log_pretty_omits_absent_timings() {
    let out = Capture::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let mut rec = record(502, Outcome::UpstreamError);
    rec.ttfb = None;
    rec.ttfc = None;
    tracing::subscriber::with_default(subscriber, || access_log(&rec));
    let text = out.text();
    assert!(
        text.contains(" access: exchange request_id=req-0001"),
        "{text}"
    );
    assert!(text.contains("status=502"), "{text}");
    assert!(text.contains("outcome=upstream_error"), "{text}");
    assert!(!text.contains("ttfb_ms"), "{text}");
}

/// A record whose answer the stream tap read: model, token counts, finish reason, first token.
fn record_with_answer() -> ExchangeRecord {
    let mut rec = record(200, Outcome::Complete);
    rec.ttft = Some(Duration::from_micros(61_250));
    rec.llm = Some(Box::new(Summary {
        dialect: None,
        model: Some("gpt-4o-mini".into()),
        text: "hello".into(),
        truncated: false,
        finish_reason: Some("stop".into()),
        usage: Usage {
            input: Some(12),
            output: Some(345),
            ..Usage::default()
        },
        first_token_at: None,
        error: None,
        events: 7,
        complete: true,
        skipped: 0,
        invalid: 0,
    }));
    rec
}

/// What the `tracing` formatter writes for the access event of `rec`, and the line the
/// access writer writes for it, each with its timestamp cut out.
fn both_lines(rec: &ExchangeRecord, layout: Layout) -> (String, String) {
    let out = Capture::default();
    let writer = out.clone();
    match layout {
        Layout::Json => {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || access_log(rec));
        }
        Layout::Text { ansi } => {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(ansi)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || access_log(rec));
        }
    }
    let mut ours = Vec::new();
    line::write(&mut ours, rec, std::time::SystemTime::now(), layout);
    let ours = String::from_utf8(ours).unwrap();
    // Both start with the timestamp, ending in `Z` (dimmed in colour: then the code follows).
    let cut = |s: &str| {
        let at = s.find("Z").expect("a timestamp");
        let start = s.find("20").expect("a year");
        format!("{}{}", &s[..start], &s[at + 1..])
    };
    (cut(&out.text()), cut(&ours))
}

#[test]
fn access_line_is_the_tracing_line_in_every_layout() {
    let mut plain = record(502, Outcome::Rejected("upstream_connection_limit"));
    plain.ttfb = None;
    plain.ttfc = None;
    let mut odd = record(200, Outcome::Timeout("client_write_stall"));
    odd.request_id = Bytes::from_static(b"r\"q\\1\xff");
    odd.path = Bytes::from_static("/v1/안녕?key=sk-secret".as_bytes());
    for rec in [record_with_answer(), plain, odd] {
        for layout in [
            Layout::Json,
            Layout::Text { ansi: false },
            Layout::Text { ansi: true },
        ] {
            let (tracing_line, ours) = both_lines(&rec, layout);
            assert_eq!(ours, tracing_line, "{layout:?}");
            assert_eq!(ours.matches('\n').count(), 1);
            assert!(!ours.contains("sk-secret"));
        }
    }
}

#[test]
fn access_line_carries_what_the_tap_read() {
    let rec = record_with_answer();
    let mut json = Vec::new();
    line::write(&mut json, &rec, std::time::SystemTime::now(), Layout::Json);
    let line: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(line["model"], "gpt-4o-mini");
    assert_eq!(line["input_tokens"], 12);
    assert_eq!(line["output_tokens"], 345);
    assert_eq!(line["ttft_ms"], 61.25);
    assert_eq!(line["finish_reason"], "stop");
    assert_eq!(line["outcome"], "complete");
    let ts = line["timestamp"].as_str().unwrap();
    assert_eq!((ts.len(), &ts[10..11], &ts[26..]), (27, "T", "Z"), "{ts}");

    let mut text = Vec::new();
    let plain = record(200, Outcome::Complete);
    line::write(
        &mut text,
        &plain,
        std::time::SystemTime::now(),
        Layout::Text { ansi: false },
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("  INFO access: exchange request_id=req-0001 method=POST "));
    assert!(text.ends_with(" retries=1 outcome=complete\n"), "{text}");
    for absent in [
        "model",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "finish_reason",
    ] {
        assert!(!text.contains(absent), "{absent} left out: {text}");
    }
}
