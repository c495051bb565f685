//! Resilience under injected faults, over real sockets: retries (Retry-After honoured, failover,
//! connect errors), the circuit breaker, what is never retried, the layered timeouts, graceful
//! drain, and bounded memory under a slow reader.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use chunkgate::config::UpstreamConfig;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const GET: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n";

/// A small chat-completion request (its body fits the replay limit).
const POST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"model\":\"m\",\"stream\":true}";

/// A hyper upstream answering request `n` (from 0) with `script(n)`, recording when each
/// request arrived.
async fn scripted<F>(script: F) -> (Upstream, Arc<Mutex<Vec<Instant>>>)
where
    F: Fn(usize) -> (u16, Vec<(&'static str, &'static str)>, &'static str) + Send + Sync + 'static,
{
    let times = Arc::new(Mutex::new(Vec::new()));
    let times_up = Arc::clone(&times);
    let script = Arc::new(script);
    let upstream = hyper_upstream(move |req| {
        let times = Arc::clone(&times_up);
        let script = Arc::clone(&script);
        async move {
            let _ = collect_body(req.into_body()).await;
            let n = {
                let mut t = times.lock().expect("lock");
                t.push(Instant::now());
                t.len() - 1
            };
            let (status, headers, body) = script(n);
            response(status, &headers, TestBody::full(body))
        }
    })
    .await;
    (upstream, times)
}

/// The gap between the first two requests an upstream received.
fn first_gap(times: &Mutex<Vec<Instant>>) -> Duration {
    let t = times.lock().expect("lock");
    assert!(t.len() >= 2, "expected a retry, got {} request(s)", t.len());
    t[1] - t[0]
}

#[tokio::test]
async fn retry_after_over_the_cap_goes_to_the_client_unretried() {
    bounded(TEST_LIMIT, async {
        // `Retry-After: 1` (seconds) with a 300 ms cap: a shorter wait than the upstream asked
        // for is never taken, so its answer goes to the client as it is.
        let (upstream, times) = scripted(|n| match n {
            0 => (429, vec![("retry-after", "1")], "{\"error\":\"slow down\"}"),
            _ => (200, vec![], "success"),
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.cap = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let sent = Instant::now();
        client.send(POST).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        let took = sent.elapsed();
        assert_eq!(resp.head.status, 429);
        assert_eq!(resp.head.get("retry-after"), Some("1"));
        assert_eq!(resp.body, b"{\"error\":\"slow down\"}");
        assert_eq!(resp.head.get("x-chunkgate-retries"), None);
        assert_eq!(times.lock().expect("lock").len(), 1, "not retried");
        assert!(
            took < Duration::from_millis(290),
            "answered without waiting: {took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn retry_after_within_the_cap_is_waited_in_full() {
    bounded(TEST_LIMIT, async {
        // `Retry-After: 1` under a 2 s cap: the retry waits the whole second, never less.
        let (upstream, times) = scripted(|n| match n {
            0 => (503, vec![("retry-after", "1")], "{}"),
            _ => (200, vec![], "success"),
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.cap = Duration::from_secs(2);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(POST).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"success");
        assert_eq!(resp.head.get("x-chunkgate-retries"), Some("1"));
        let gap = first_gap(&times);
        assert!(
            gap >= Duration::from_millis(990),
            "waited less than asked: {gap:?}"
        );
        assert!(
            gap < Duration::from_millis(1900),
            "waited far more than asked: {gap:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    bounded(TEST_LIMIT, async {
        let (upstream, times) = scripted(|n| match n {
            0 => (429, vec![("retry-after-ms", "250")], "{}"),
            _ => (200, vec![], "success"),
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.cap = Duration::from_secs(10);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(POST).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"success");
        let gap = first_gap(&times);
        eprintln!("retry-after-ms: 250: retried after {gap:?}");
        assert!(
            gap >= Duration::from_millis(240),
            "delay not honoured: {gap:?}"
        );
        assert!(
            gap < Duration::from_millis(800),
            "delay far over the hint: {gap:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn retry_of_a_bodiless_get_after_429() {
    bounded(TEST_LIMIT, async {
        // A GET has nothing to replay: it is as safe to retry as a small body.
        let (upstream, times) = scripted(|n| match n {
            0 => (429, vec![("retry-after-ms", "50")], "{}"),
            _ => (200, vec![], "success"),
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        let resp = client.response("GET").await.expect("response");
        assert_eq!(
            resp.head.status,
            200,
            "a GET answered 429 is retried ({} upstream request(s))",
            times.lock().expect("lock").len()
        );
        assert_eq!(resp.body, b"success");
        assert!(first_gap(&times) >= Duration::from_millis(45));
    })
    .await;
}

#[tokio::test]
async fn failover_from_a_503_upstream_to_the_other() {
    bounded(TEST_LIMIT, async {
        let (bad, _) = scripted(|_| (503, vec![], "overloaded")).await;
        let (good, _) = scripted(|_| (200, vec![], "from good")).await;
        let mut cfg = config(&[]);
        // The failing upstream weighs far more, so it is almost always tried first.
        cfg.groups[0].upstreams = vec![
            UpstreamConfig {
                url: http_url(bad.addr),
                weight: 100,
                ca_file: None,
                inject_headers: Vec::new(),
                strip_prefix: None,
                rewrite_prefix: None,
            },
            UpstreamConfig {
                url: http_url(good.addr),
                weight: 1,
                ca_file: None,
                inject_headers: Vec::new(),
                strip_prefix: None,
                rewrite_prefix: None,
            },
        ];
        let proxy = TestProxy::start(cfg).await;
        for i in 0..4 {
            let mut client = proxy.connect().await;
            client.send(POST).await.expect("send");
            let resp = client.response("POST").await.expect("response");
            assert_eq!(resp.head.status, 200, "request {i}");
            assert_eq!(resp.body, b"from good", "request {i}");
        }
        assert!(bad.requested() >= 1, "the 503 upstream was tried");
        assert_eq!(good.requested(), 4);
    })
    .await;
}

#[tokio::test]
async fn connect_refused_fails_over_to_the_other_upstream() {
    bounded(TEST_LIMIT, async {
        let (good, _) = scripted(|_| (200, vec![], "from good")).await;
        let mut cfg = config(&[]);
        cfg.groups[0].upstreams = vec![
            UpstreamConfig {
                url: http_url(closed_port().await),
                weight: 100,
                ca_file: None,
                inject_headers: Vec::new(),
                strip_prefix: None,
                rewrite_prefix: None,
            },
            UpstreamConfig {
                url: http_url(good.addr),
                weight: 1,
                ca_file: None,
                inject_headers: Vec::new(),
                strip_prefix: None,
                rewrite_prefix: None,
            },
        ];
        let proxy = TestProxy::start(cfg).await;
        let mut retried = 0;
        for i in 0..3 {
            let mut client = proxy.connect().await;
            client.send(POST).await.expect("send");
            let resp = client.response("POST").await.expect("response");
            assert_eq!(resp.head.status, 200, "request {i}");
            assert_eq!(resp.body, b"from good", "request {i}");
            if resp.head.get("x-chunkgate-retries") == Some("1") {
                retried += 1;
            }
        }
        assert!(
            retried >= 1,
            "the refused upstream was tried first at least once"
        );
        assert_eq!(good.requested(), 3);
    })
    .await;
}

#[tokio::test]
async fn connect_refused_everywhere_is_502_with_retry_count() {
    bounded(TEST_LIMIT, async {
        let a = closed_port().await;
        let b = closed_port().await;
        let mut cfg = config(&[a, b]);
        cfg.retry.max_attempts = 3;
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        let resp = client.response("GET").await.expect("response");
        assert_eq!(resp.head.status, 502);
        let (kind, _) = resp.error_json();
        assert_eq!(kind, "upstream_error");
        let retries: u32 = resp
            .head
            .get("x-chunkgate-retries")
            .expect("x-chunkgate-retries on the 502")
            .trim()
            .parse()
            .expect("a retry count");
        assert_eq!(retries, 2, "three attempts: two retries");
    })
    .await;
}

#[tokio::test]
async fn breaker_opens_fails_fast_then_half_opens_and_closes() {
    bounded(TEST_LIMIT, async {
        let healthy = Arc::new(AtomicBool::new(false));
        let healthy_up = Arc::clone(&healthy);
        let (upstream, _) = scripted(move |_| {
            if healthy_up.load(Ordering::SeqCst) {
                (200, vec![], "ok")
            } else {
                (503, vec![], "down")
            }
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.max_attempts = 1;
        cfg.breaker.consecutive_failures = 3;
        cfg.breaker.open_for = Duration::from_millis(300);
        cfg.breaker.half_open_probes = 1;
        let proxy = TestProxy::start(cfg).await;
        let ask = |expect: u16| {
            let addr = proxy.addr;
            async move {
                let mut client = Peer::connect(addr).await.expect("connect");
                client.send(GET).await.expect("send");
                let resp = client.response("GET").await.expect("response");
                assert_eq!(resp.head.status, expect);
                resp
            }
        };
        for _ in 0..3 {
            let resp = ask(503).await;
            assert_eq!(resp.body, b"down", "the upstream's own 503 is forwarded");
        }
        assert_eq!(upstream.requested(), 3);

        // Open: fails fast without touching the upstream.
        let t = Instant::now();
        let resp = ask(503).await;
        let fast = t.elapsed();
        let (kind, code) = resp.error_json();
        assert_eq!(
            (kind.as_str(), code.as_str()),
            ("upstream_error", "upstream_unavailable")
        );
        assert_eq!(
            upstream.requested(),
            3,
            "an open breaker does not reach the upstream"
        );
        eprintln!("breaker open: failed fast in {fast:?}");
        assert!(fast < Duration::from_millis(100), "fail fast took {fast:?}");

        // After open_for: one probe goes through, succeeds, and the breaker closes.
        healthy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let resp = ask(200).await;
        assert_eq!(resp.body, b"ok");
        assert_eq!(upstream.requested(), 4);
        for _ in 0..2 {
            ask(200).await;
        }
        assert_eq!(
            upstream.requested(),
            6,
            "closed again: every request goes through"
        );
    })
    .await;
}

#[tokio::test]
async fn no_retry_after_the_first_response_byte() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request().await;
            let _ = peer.send(CHUNKED_HEAD).await;
            let _ = peer.send(&chunk(b"data: {\"n\":1}\n\n")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = peer.stream.set_zero_linger();
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        let body = client.chunked_body().await;
        assert!(!body.is_complete(), "a cut stream never ends cleanly");
        assert_eq!(body.texts(), vec!["data: {\"n\":1}\n\n"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            upstream.accepted(),
            1,
            "a started response is never retried"
        );
    })
    .await;
}

#[tokio::test]
async fn body_over_the_replay_limit_is_not_retried() {
    bounded(TEST_LIMIT, async {
        let (upstream, _) = scripted(|_| (503, vec![], "busy")).await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.max_attempts = 2;
        cfg.retry.max_replay_body = 16;
        let proxy = TestProxy::start(cfg).await;
        let post = |body: &[u8]| {
            let mut req = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body);
            req
        };

        // Small body: kept, replayed once.
        let mut client = proxy.connect().await;
        client.send(&post(b"{\"small\":1}")).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 503);
        assert_eq!(upstream.requested(), 2, "a replayable body is retried");

        // Large body: not kept, not retried, and the response says why.
        let big = vec![b'x'; 100];
        let mut client = proxy.connect().await;
        client.send(&post(&big)).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 503);
        assert_eq!(resp.body, b"busy");
        assert_eq!(upstream.requested(), 3, "a body over the replay limit is sent once");
        let note = resp.head.get("x-chunkgate-retries").unwrap_or_default();
        assert!(note.contains("too large"), "x-chunkgate-retries: {note:?}");
    })
    .await;
}

#[tokio::test]
async fn stream_idle_timeout_cuts_the_stream() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request().await;
            let _ = peer.send(CHUNKED_HEAD).await;
            let _ = peer.send(&chunk(b"data: {\"n\":1}\n\n")).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.stream_idle = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        client.response_head().await.expect("head");
        let t = Instant::now();
        let body = client.chunked_body().await;
        let took = t.elapsed();
        eprintln!("stream_idle 300 ms: stream cut after {took:?}");
        assert!(!body.is_complete(), "an idle stream is cut, not ended");
        assert_eq!(body.texts(), vec!["data: {\"n\":1}\n\n"]);
        assert!(
            took >= Duration::from_millis(250),
            "cut too early: {took:?}"
        );
        assert!(took < Duration::from_millis(1500), "cut too late: {took:?}");
    })
    .await;
}

#[tokio::test]
async fn response_head_timeout_is_504() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.response_head = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let t = Instant::now();
        client.send(GET).await.expect("send");
        let resp = client.response("GET").await.expect("response");
        let took = t.elapsed();
        assert_eq!(resp.head.status, 504);
        assert_eq!(resp.error_json().0, "timeout_error");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn slow_client_head_gets_408_or_is_closed() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|_, _| async {}).await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.client_head = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let t = Instant::now();
        client
            .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.te")
            .await
            .expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(2), client.read_to_close())
            .await
            .expect("the proxy gives up on a slow head");
        let took = t.elapsed();
        eprintln!("client_head 300 ms: slow head dropped after {took:?}");
        assert!(
            took >= Duration::from_millis(250),
            "gave up too early: {took:?}"
        );
        if !answer.is_empty() {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
            let body_at = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
            assert_error_json(&answer[body_at..]);
        }
        assert_eq!(upstream.accepted(), 0);
    })
    .await;
}

#[tokio::test]
async fn idle_keep_alive_client_is_closed() {
    bounded(TEST_LIMIT, async {
        let (upstream, _) = scripted(|_| (200, vec![], "ok")).await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.client_idle = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        let resp = client.response("GET").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert!(!resp.head.says_close());
        let took = client
            .time_to_close(Duration::from_secs(2))
            .await
            .expect("an idle keep-alive connection is closed");
        eprintln!("client_idle 300 ms: idle connection closed after {took:?}");
        assert!(
            took >= Duration::from_millis(250),
            "closed too early: {took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn stalled_client_is_cut_after_write_stall() {
    bounded(TEST_LIMIT, async {
        const CHUNK: usize = 64 * 1024;
        const MAX_CHUNKS: usize = 1024; // 64 MiB, far more than the socket buffers hold
        let (done_tx, mut done_rx) = mpsc::channel::<(usize, Instant)>(1);
        let upstream = raw_upstream(move |mut peer, _| {
            let done = done_tx.clone();
            async move {
                let _ = peer.request().await;
                let one = chunk(&vec![b'y'; CHUNK]);
                let _ = peer.send(CHUNKED_HEAD).await;
                let mut sent = 0;
                while sent < MAX_CHUNKS {
                    if tokio::io::AsyncWriteExt::write_all(&mut peer.stream, &one)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                let _ = done.send((sent, Instant::now())).await;
            }
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.client_write_stall = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client.send(GET).await.expect("send");
        let t = Instant::now();
        // Never read: the proxy's writes stall once the socket buffers are full.
        let (sent, at) = tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
            .await
            .expect("the upstream connection is closed after the write stall")
            .expect("the upstream reported");
        eprintln!(
            "client_write_stall 300 ms: upstream cut after {:?}, {} MiB sent",
            at - t,
            (sent * CHUNK) >> 20
        );
        assert!(sent < MAX_CHUNKS, "the upstream was never stopped");
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_in_flight() {
    bounded(Duration::from_secs(15), async {
        const STREAMS: usize = 20;
        const CHUNKS: usize = 6;
        let upstream = raw_upstream(|mut peer, _| async move {
            while let Ok(Some(_)) = peer.request().await {
                if peer.send(CHUNKED_HEAD).await.is_err() {
                    return;
                }
                for n in 0..CHUNKS {
                    let e = format!("data: {{\"n\":{n}}}\n\n");
                    if peer.send(&chunk(e.as_bytes())).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                if peer.send(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let (started_tx, mut started_rx) = mpsc::channel::<()>(STREAMS);
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let addr = proxy.addr;
            let started = started_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = Peer::connect(addr).await.expect("connect");
                client.send(GET).await.expect("send");
                let head = client.response_head().await.expect("head");
                assert_eq!(head.status, 200);
                let body = client
                    .chunked_body_with(|i, _| {
                        if i == 0 {
                            let _ = started.try_send(());
                        }
                    })
                    .await;
                let closed = client.closes_within(CLOSE_WAIT).await;
                (body, closed)
            }));
        }
        for _ in 0..STREAMS {
            started_rx.recv().await.expect("a stream started");
        }
        proxy.stop.cancel();
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // New connections are refused (or, if the kernel still took one, never served).
        match tokio::net::TcpStream::connect(proxy.addr).await {
            Err(_) => {}
            Ok(s) => {
                let mut late = Peer::new(s);
                let _ = late.send(GET).await;
                let got = tokio::time::timeout(Duration::from_secs(2), late.read_to_close())
                    .await
                    .expect("a late connection is closed");
                assert!(
                    got.is_empty(),
                    "a new connection was served during the drain"
                );
            }
        }
        let want: Vec<String> = (0..CHUNKS)
            .map(|n| format!("data: {{\"n\":{n}}}\n\n"))
            .collect();
        let mut lost = 0;
        for task in tasks {
            let (body, closed) = task.await.expect("stream task");
            if !body.is_complete() || body.texts() != want {
                lost += 1;
            }
            assert!(
                closed,
                "a kept-alive connection closes after its exchange while draining"
            );
        }
        let drained = proxy.join().await.expect("run_drained");
        eprintln!(
            "drain: {STREAMS} streams in flight, {lost} lost, run_drained returned after {:?}",
            t.elapsed()
        );
        assert_eq!(lost, 0, "streams lost at shutdown");
        assert!(drained, "run_drained reports the drain finished in time");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_keeps_proxy_memory_flat() {
    // It measures the whole process's memory: it runs in a process of its own.
    if !alone("proxy_resilience::slow_reader_keeps_proxy_memory_flat") {
        return;
    }
    bounded(Duration::from_secs(30), async {
        const CHUNK: usize = 16 * 1024;
        const CHUNKS: usize = 6400; // 100 MiB
        let one = chunk(&vec![b'x'; CHUNK]);
        let written = Arc::new(AtomicUsize::new(0));
        let written_up = Arc::clone(&written);
        let upstream = raw_upstream(move |mut peer, _| {
            let one = one.clone();
            let written = Arc::clone(&written_up);
            async move {
                let _ = peer.request().await;
                let _ = peer.send(CHUNKED_HEAD).await;
                for _ in 0..CHUNKS {
                    if tokio::io::AsyncWriteExt::write_all(&mut peer.stream, &one).await.is_err() {
                        return;
                    }
                    written.fetch_add(one.len(), Ordering::Relaxed);
                }
                let _ = peer.send(b"0\r\n\r\n").await;
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        // A small receive buffer, so the kernel cannot absorb the stream for the client.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(proxy.addr).await.expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut client = Peer::new(stream);
        client.send(GET).await.expect("send");
        let head = client.response_head().await.expect("head");
        assert!(head.is_chunked());

        let expected = CHUNKS * (CHUNK + "4000\r\n\r\n".len()) + b"0\r\n\r\n".len();
        let mut received = client.buf.len();
        let mut tail = client.buf.split().to_vec();
        let mut buf = vec![0u8; 64 * 1024];
        let mut baseline = None;
        let mut peak = 0u64;
        let t = Instant::now();
        let mut reads = 0u64;
        let mut max_ahead = 0usize;
        // The connection stays open after the stream (keep-alive): stop at its expected end.
        while received < expected {
            let n = client.stream.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            received += n;
            reads += 1;
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 16 {
                tail.drain(..tail.len() - 16);
            }
            // Warm up on the first MiB, then measure.
            if received > (1 << 20) {
                let rss = rss_kib().unwrap_or(0);
                baseline.get_or_insert(rss);
                peak = peak.max(rss);
            }
            let ahead = written.load(Ordering::Relaxed).saturating_sub(received);
            max_ahead = max_ahead.max(ahead);
            // A slow reader: about 64 KiB per 2 ms.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = t.elapsed();
        assert_eq!(received, expected, "the whole stream arrived");
        assert!(tail.ends_with(b"\r\n0\r\n\r\n"), "it ended cleanly");
        let baseline = baseline.expect("measured");
        let growth_kib = peak.saturating_sub(baseline);
        eprintln!(
            "slow reader: {} MiB in {took:?} over {reads} reads; upstream at most {} KiB ahead of the client; VmRSS baseline {baseline} KiB, peak {peak} KiB, growth {growth_kib} KiB",
            expected >> 20,
            max_ahead >> 10
        );
        assert!(
            growth_kib < 6 * 1024,
            "proxy memory grew by {growth_kib} KiB while a slow client read 20 MiB"
        );
        assert_eq!(written.load(Ordering::Relaxed), CHUNKS * one_len(CHUNK));
    })
    .await;
}

fn one_len(chunk: usize) -> usize {
    format!("{chunk:x}\r\n").len() + chunk + 2
}
