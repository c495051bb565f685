//! The mock LLM upstream over real sockets: content, splits, routes and every fault mode.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use chunkgate::harness::client::{exchange, request_head_bytes, Gaps};
use chunkgate::harness::mock::{MockHandle, MockOptions, MockUpstream};
use chunkgate::harness::peer::{BodyEnd, Framing, Peer, RawResponse};
use chunkgate::harness::script::StreamScript;
use chunkgate::harness::split::{classic_body, SplitStrategy};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(10);

async fn start(opts: MockOptions) -> MockHandle {
    MockUpstream::bind("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
        .spawn()
}

fn chat_body(stream: bool) -> String {
    format!(
        "{{\"model\":\"mock-1\",\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
    )
}

async fn chat(addr: SocketAddr, stream: bool, extra: &[(&str, String)]) -> RawResponse {
    let body = chat_body(stream);
    let mut fields = vec![
        ("content-type", "application/json".to_string()),
        ("content-length", body.len().to_string()),
    ];
    fields.extend(extra.iter().cloned());
    let mut req = request_head_bytes("POST", "/v1/chat/completions", &addr.to_string(), &fields);
    req.extend_from_slice(body.as_bytes());
    exchange(addr, &req, &[], Gaps::default(), DEADLINE)
        .await
        .unwrap()
}

fn payloads(r: &RawResponse) -> Vec<Bytes> {
    r.chunks().to_vec()
}

#[tokio::test]
async fn stream_sends_the_script_one_event_per_chunk_split_across_reads() {
    let mock = start(MockOptions::default()).await;
    let r = chat(
        mock.addr(),
        true,
        &[
            ("x-mock-split", "utf8".into()),
            ("x-mock-seed", "77".into()),
            ("x-mock-tokens", "12".into()),
        ],
    )
    .await;
    assert_eq!(r.head.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.end, BodyEnd::Complete);
    assert_eq!(
        r.head.get("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(payloads(&r), StreamScript::new(77, 12).events());
    // The split writes reached the client as separate reads.
    assert!(r.split_chunks() > 0, "no chunk arrived split");
}

#[tokio::test]
async fn stream_every_strategy_keeps_the_chunks() {
    let mock = start(MockOptions::default()).await;
    for st in SplitStrategy::ALL {
        let r = chat(
            mock.addr(),
            true,
            &[
                ("x-mock-split", st.name().into()),
                ("x-mock-seed", "5".into()),
                ("x-mock-tokens", "6".into()),
                ("x-mock-split-gap-ms", "1".into()),
            ],
        )
        .await;
        assert_eq!(r.end, BodyEnd::Complete, "{st}");
        assert_eq!(payloads(&r), StreamScript::new(5, 6).events(), "{st}");
    }
}

#[tokio::test]
async fn stream_honours_max_tokens_usage_and_model() {
    let mock = start(MockOptions::default()).await;
    let body = r#"{"model":"m-x","stream":true,"max_tokens":3,"seed":9,"stream_options":{"include_usage":true}}"#;
    let mut req = request_head_bytes(
        "POST",
        "/v1/chat/completions",
        "x",
        &[("content-length", body.len().to_string())],
    );
    req.extend_from_slice(body.as_bytes());
    let r = exchange(mock.addr(), &req, &[], Gaps::default(), DEADLINE)
        .await
        .unwrap();
    let mut script = StreamScript::new(9, 3);
    script.model = "m-x".into();
    script.include_usage = true;
    assert_eq!(payloads(&r), script.events());
}

#[tokio::test]
async fn fast_mode_stamps_every_event_with_its_send_time() {
    let mock = start(MockOptions {
        fast: true,
        tokens: 5,
        ..MockOptions::default()
    })
    .await;
    let r = chat(mock.addr(), true, &[]).await;
    let mut last = 0u64;
    let events = payloads(&r);
    assert_eq!(events.len(), 8);
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_slice(&e[6..]).unwrap();
        let ns = v["sent_ns"].as_u64().expect("sent_ns");
        assert!(ns >= last);
        last = ns;
    }
}

#[tokio::test]
async fn non_stream_completion_has_content_length() {
    let mock = start(MockOptions::default()).await;
    let r = chat(mock.addr(), false, &[("x-mock-seed", "3".into())]).await;
    assert_eq!(r.head.status, 200);
    assert!(matches!(r.framing, Framing::Length(_)));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        StreamScript::new(3, 32).text()
    );
}

#[tokio::test]
async fn models_and_unknown_routes() {
    let mock = start(MockOptions::default()).await;
    let head = request_head_bytes("GET", "/v1/models", "x", &[]);
    let r = exchange(mock.addr(), &head, &[], Gaps::default(), DEADLINE)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["data"][0]["id"], "mock-1");
    let head = request_head_bytes("GET", "/nope", "x", &[]);
    let r = exchange(mock.addr(), &head, &[], Gaps::default(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(r.head.status, 404);
    let head = request_head_bytes("GET", "/echo", "x", &[]);
    let r = exchange(mock.addr(), &head, &[], Gaps::default(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(r.head.status, 405);
}

async fn echo(
    addr: SocketAddr,
    fields: &[(&str, String)],
    pieces: &[chunkgate::harness::split::Piece],
) -> serde_json::Value {
    let head = request_head_bytes("POST", "/echo", "x", fields);
    let r = exchange(addr, &head, pieces, Gaps::default(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(r.head.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn echo_lists_the_chunks_it_decoded() {
    let mock = start(MockOptions::default()).await;
    let (chunks, pieces) = classic_body();
    let v = echo(
        mock.addr(),
        &[("transfer-encoding", "chunked".into())],
        &pieces,
    )
    .await;
    assert_eq!(v["framing"], "chunked");
    assert_eq!(v["chunk_count"], 3);
    assert_eq!(v["bytes"], 10);
    let b64 = base64::engine::general_purpose::STANDARD;
    let got: Vec<Bytes> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Bytes::from(b64.decode(c.as_str().unwrap()).unwrap()))
        .collect();
    assert_eq!(got, chunks);
    // `defgh` arrived over two reads.
    assert!(v["reassembled"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn echo_reports_trailers_and_length_bodies() {
    let mock = start(MockOptions::default()).await;
    let piece = |b: &'static [u8]| chunkgate::harness::split::Piece {
        bytes: Bytes::from_static(b),
        pause: chunkgate::harness::split::Pause::None,
    };
    let v = echo(
        mock.addr(),
        &[("transfer-encoding", "chunked".into())],
        &[piece(b"2\r\nhi\r\n0\r\nx-sum: 7\r\n\r\n")],
    )
    .await;
    assert_eq!(v["trailers"], serde_json::json!([["x-sum", "7"]]));
    let v = echo(
        mock.addr(),
        &[("content-length", "5".into())],
        &[piece(b"hello")],
    )
    .await;
    assert_eq!(v["framing"], "length");
    assert_eq!(v["chunks"], serde_json::json!(["aGVsbG8="]));
}

#[tokio::test]
async fn echo_refuses_malformed_bodies() {
    let mock = start(MockOptions::default()).await;
    let head = request_head_bytes(
        "POST",
        "/echo",
        "x",
        &[("transfer-encoding", "chunked".into())],
    );
    let body = [chunkgate::harness::split::Piece {
        bytes: Bytes::from_static(b"3\nabc\r\n0\r\n\r\n"),
        pause: chunkgate::harness::split::Pause::None,
    }];
    let r = exchange(mock.addr(), &head, &body, Gaps::default(), DEADLINE)
        .await
        .unwrap();
    assert_eq!(r.head.status, 400);
    assert_eq!(r.head.get("connection"), Some("close"));
}

#[tokio::test]
async fn sink_counts_a_large_body_without_keeping_it() {
    let mock = start(MockOptions::default()).await;
    let chunk = vec![b'x'; 16 << 10];
    let mut wire = Vec::new();
    for _ in 0..64 {
        wire.extend_from_slice(&chunkgate::harness::split::chunk_wire(&chunk));
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let head = request_head_bytes(
        "POST",
        "/sink",
        "x",
        &[("transfer-encoding", "chunked".into())],
    );
    let body = [chunkgate::harness::split::Piece {
        bytes: Bytes::from(wire),
        pause: chunkgate::harness::split::Pause::None,
    }];
    let r = exchange(mock.addr(), &head, &body, Gaps::default(), DEADLINE)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["chunk_count"], 64);
    assert_eq!(v["bytes"], 64 * (16 << 10));
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let mock = start(MockOptions::default()).await;
    let mut s = Peer::connect(mock.addr()).await.unwrap();
    for seed in [1u64, 2] {
        let body = chat_body(true);
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nx-mock-seed: {seed}\r\nx-mock-tokens: 3\r\n\r\n{body}",
            body.len()
        );
        s.send(req.as_bytes()).await.unwrap();
        let r = tokio::time::timeout(DEADLINE, s.final_response("POST"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(payloads(&r), StreamScript::new(seed, 3).events());
    }
    assert_eq!(mock.stats().connections(), 1);
    assert_eq!(mock.requests(), 2);
}

#[tokio::test]
async fn fault_status_with_retry_after_and_count() {
    let mock = start(MockOptions::default()).await;
    let fault = [(
        "x-mock-fault",
        "status=429;retry-after=1;count=1".to_string(),
    )];
    let r = chat(mock.addr(), true, &fault).await;
    assert_eq!(r.head.status, 429);
    assert_eq!(r.head.get("retry-after"), Some("1"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // The second identical request is past the count: served normally.
    let r = chat(mock.addr(), true, &fault).await;
    assert_eq!(r.head.status, 200);
    assert_eq!(mock.stats().faults(), 1);
    let r = chat(mock.addr(), true, &[("x-mock-fault", "status=503".into())]).await;
    assert_eq!(r.head.status, 503);
    let r = chat(mock.addr(), true, &[("x-mock-fault", "bogus".into())]).await;
    assert_eq!(r.head.status, 400);
}

#[tokio::test]
async fn fault_reset_after_cuts_mid_chunk_with_rst() {
    let mock = start(MockOptions::default()).await;
    let r = chat(
        mock.addr(),
        true,
        &[("x-mock-fault", "reset-after=2".into())],
    )
    .await;
    assert_eq!(r.chunks().len(), 2);
    assert!(matches!(r.end, BodyEnd::Reset(_)), "{:?}", r.end);
}

#[tokio::test]
async fn fault_close_after_cuts_without_last_chunk() {
    let mock = start(MockOptions::default()).await;
    let r = chat(
        mock.addr(),
        true,
        &[("x-mock-fault", "close-after=3".into())],
    )
    .await;
    assert_eq!(r.chunks().len(), 3);
    assert_eq!(r.end, BodyEnd::Cut);
}

#[tokio::test]
async fn fault_malformed_writes_a_bad_size_line() {
    let mock = start(MockOptions::default()).await;
    let r = chat(mock.addr(), true, &[("x-mock-fault", "malformed=2".into())]).await;
    assert_eq!(r.chunks().len(), 2);
    match &r.end {
        BodyEnd::Malformed(e) => assert!(e.to_string().contains("chunk size"), "{e}"),
        other => panic!("expected a framing error, got {other:?}"),
    }
}

#[tokio::test]
async fn fault_stalls_delay_head_first_chunk_and_middle() {
    let mock = start(MockOptions::default()).await;
    for fault in [
        "stall-ms=250",
        "first-byte-ms=250",
        "stall-mid-ms=250;stall-after=2",
    ] {
        let t = Instant::now();
        let r = chat(
            mock.addr(),
            true,
            &[
                ("x-mock-fault", fault.into()),
                ("x-mock-tokens", "3".into()),
            ],
        )
        .await;
        assert!(t.elapsed() >= Duration::from_millis(250), "{fault}");
        assert_eq!(r.end, BodyEnd::Complete, "{fault}");
        assert_eq!(r.chunks().len(), 6, "{fault}");
    }
}

#[tokio::test]
async fn bad_requests_get_400_and_close() {
    let mock = start(MockOptions::default()).await;
    let mut s = Peer::connect(mock.addr()).await.unwrap();
    s.send(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let r = tokio::time::timeout(DEADLINE, s.final_response("POST"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.head.status, 400);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mock = start(MockOptions::default()).await;
    let addr = mock.addr();
    // A stream in flight is closed by the shutdown.
    let body = chat_body(true);
    let mut req = request_head_bytes(
        "POST",
        "/v1/chat/completions",
        "x",
        &[
            ("content-length", body.len().to_string()),
            ("x-mock-gap-ms", "50".into()),
        ],
    );
    req.extend_from_slice(body.as_bytes());
    let in_flight =
        tokio::spawn(async move { exchange(addr, &req, &[], Gaps::default(), DEADLINE).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), mock.shutdown())
        .await
        .expect("shutdown is bounded");
    let r = in_flight.await.unwrap().unwrap();
    assert_ne!(r.end, BodyEnd::Complete);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drop_stops_the_server() {
    let mock = start(MockOptions::default()).await;
    let addr = mock.addr();
    drop(mock);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener outlived its handle");
}

#[tokio::test]
async fn expect_continue_gets_an_interim_answer() {
    let mock = start(MockOptions::default()).await;
    let mut s = Peer::connect(mock.addr()).await.unwrap();
    s.send(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::io::AsyncReadExt::read_exact(&mut s.stream, &mut interim)
        .await
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.send(b"hi").await.unwrap();
    let r = tokio::time::timeout(DEADLINE, s.final_response("POST"))
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["chunks"], serde_json::json!(["aGk="]));
}
