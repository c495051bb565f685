//! Errors a client can read (502, 504, 413, 431, 414), cut streams that never look complete,
//! and a client leaving mid-stream closing the upstream connection at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use chunkgate::codec::chunked::Limits;
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;

/// Send a request and read the error answer: status, a JSON error body of type `kind`, and
/// the connection closed after it.
async fn expect_error(client: &mut Peer, request: &[u8], status: u16, kind: &str) -> RawResponse {
    client.send(request).await.expect("send");
    let resp = client.response("GET").await.expect("an error response");
    assert_eq!(
        resp.head.status,
        status,
        "body: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.head.get("content-type"), Some("application/json"));
    let (got_kind, code) = resp.error_json();
    assert_eq!(got_kind, kind);
    assert!(!code.is_empty());
    assert!(
        client.closes_within(CLOSE_WAIT).await,
        "connection closed after the error"
    );
    resp
}

#[tokio::test]
async fn upstream_port_closed_is_502() {
    bounded(TEST_LIMIT, async {
        let mut cfg = config(&[closed_port().await]);
        cfg.retry.max_attempts = 1;
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let resp = expect_error(
            &mut client,
            b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n",
            502,
            "upstream_error",
        )
        .await;
        assert_eq!(resp.error_json().1, "bad_gateway");
        // The answer names no internal address: details go to the log.
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        assert!(!body.contains("127.0.0.1"), "{body}");
        let request_id = resp.head.get("x-request-id").expect("a request id");
        assert!(body.contains(request_id), "{body}");
    })
    .await;
}

#[tokio::test]
async fn upstream_silent_is_504_after_response_head_timeout() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            // Read the request, then never answer (hold the connection open).
            let _ = peer.request().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.response_head = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let t = Instant::now();
        let resp = expect_error(
            &mut client,
            b"GET /v1/slow HTTP/1.1\r\nHost: api.test\r\n\r\n",
            504,
            "timeout_error",
        )
        .await;
        let took = t.elapsed();
        eprintln!("504 after {took:?} (response_head 300 ms)");
        assert!(
            took >= Duration::from_millis(300),
            "answered before the timeout: {took:?}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "answered late: {took:?}"
        );
        assert_eq!(resp.error_json().1, "gateway_timeout");
        assert_eq!(
            upstream.accepted(),
            1,
            "a response-head timeout is not retried"
        );
    })
    .await;
}

#[tokio::test]
async fn request_chunk_over_the_limit_is_413() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request_head().await;
            let body = peer.chunked_body().await;
            assert!(!body.is_complete(), "an oversized body never completes upstream");
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.limits.chunk = Limits::default().max_chunk_size(16);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        // The first chunk fits, the second declares 32 bytes; the payload is never sent: the
        // size line alone must be enough to refuse it.
        let resp = expect_error(
            &mut client,
            b"POST /v1/up HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfits\r\n20\r\n",
            413,
            "invalid_request_error",
        )
        .await;
        assert_eq!(resp.error_json().1, "payload_too_large");
    })
    .await;
}

#[tokio::test]
async fn content_length_over_the_limit_is_413_without_upstream() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|_, _| async {}).await;
        let mut cfg = config(&[upstream.addr]);
        cfg.limits.max_request_body = Some(10);
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        expect_error(
            &mut client,
            b"POST /v1/up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n",
            413,
            "invalid_request_error",
        )
        .await;
        assert_eq!(upstream.accepted(), 0);
    })
    .await;
}

#[tokio::test]
async fn oversized_heads_are_431_and_414() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|_, _| async {}).await;
        let proxy = TestProxy::to(&[upstream.addr]).await;

        // One huge field (over the 64 KiB head limit).
        let mut huge = b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: ".to_vec();
        huge.extend_from_slice(&vec![b'a'; 70 * 1024]);
        huge.extend_from_slice(b"\r\n\r\n");
        let mut client = proxy.connect().await;
        let resp = expect_error(&mut client, &huge, 431, "invalid_request_error").await;
        assert_eq!(resp.error_json().1, "request_header_fields_too_large");

        // Too many fields (over the default 100).
        let mut many = b"GET / HTTP/1.1\r\nHost: api.test\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut client = proxy.connect().await;
        expect_error(&mut client, &many, 431, "invalid_request_error").await;

        // A request line over its limit.
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "a".repeat(10 * 1024)
        );
        let mut client = proxy.connect().await;
        expect_error(&mut client, long.as_bytes(), 414, "invalid_request_error").await;

        assert_eq!(upstream.accepted(), 0);
    })
    .await;
}

/// How an upstream ends a stream after two good chunks.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// Closes the connection (FIN).
    Close,
    /// Resets the connection (RST).
    Reset,
    /// Sends a malformed size line.
    BadSize,
    /// Sends a chunk whose payload is not followed by CRLF.
    BadDataEnd,
    /// Sends half a chunk, then closes.
    HalfChunk,
    /// Declares a chunk over the proxy's limit.
    Oversized,
}

async fn breaking_upstream(how: Break) -> Upstream {
    raw_upstream(move |mut peer, _| async move {
        let _ = peer.request().await;
        peer.send(CHUNKED_HEAD).await.expect("head");
        peer.send_pieces(&hostile_pieces(b"data: {\"n\":1}\n\n"))
            .await
            .expect("chunk 1");
        peer.send_pieces(&hostile_pieces(b"data: {\"n\":2}\n\n"))
            .await
            .expect("chunk 2");
        match how {
            Break::Close => {}
            Break::Reset => {
                let _ = peer.stream.set_zero_linger();
            }
            Break::BadSize => {
                let _ = peer.send(b"zz\r\ndata\r\n0\r\n\r\n").await;
            }
            Break::BadDataEnd => {
                let _ = peer.send(b"4\r\ndataXY0\r\n\r\n").await;
            }
            Break::HalfChunk => {
                let _ = peer.send(b"10\r\ndata: {\"n\":").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Break::Oversized => {
                let _ = peer.send(b"100000000\r\n").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        drop(peer);
    })
    .await
}

#[tokio::test]
async fn mid_stream_upstream_failure_is_never_a_clean_end() {
    bounded(TEST_LIMIT, async {
        for how in [
            Break::Close,
            Break::Reset,
            Break::BadSize,
            Break::BadDataEnd,
            Break::HalfChunk,
            Break::Oversized,
        ] {
            let upstream = breaking_upstream(how).await;
            let proxy = TestProxy::to(&[upstream.addr]).await;

            // Raw client: exactly the two whole chunks, then the end of the connection.
            let mut client = proxy.connect().await;
            client
                .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
                .await
                .expect("send");
            let head = client.response_head().await.expect("head");
            assert_eq!(head.status, 200, "{how:?}");
            let body = client.chunked_body().await;
            assert!(
                matches!(body.end, BodyEnd::Cut | BodyEnd::Reset(_)),
                "{how:?}: the client must see the connection end without 0\\r\\n\\r\\n, got {:?}",
                body.end
            );
            assert_eq!(
                body.texts(),
                vec!["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"],
                "{how:?}"
            );
            assert!(
                client.buf.is_empty(),
                "{how:?}: stray bytes {:?}",
                client.buf
            );

            // hyper client: the body is an error, never a complete message.
            let mut sender = hyper_client(proxy.addr).await;
            let req = hyper::Request::get("/v1/stream")
                .header("host", "api.test")
                .body(TestBody::empty())
                .expect("request");
            let resp = sender.send_request(req).await.expect("response head");
            assert_eq!(resp.status(), 200);
            let got = collect_body(resp.into_body()).await;
            assert!(got.is_err(), "{how:?}: hyper read a complete body: {got:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_closes_upstream_at_once() {
    bounded(TEST_LIMIT, async {
        let (closed_tx, closed_rx) = oneshot::channel::<Instant>();
        let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let closed_tx = Arc::clone(&closed_tx);
            async move {
                let _ = peer.request().await;
                peer.send(CHUNKED_HEAD).await.expect("head");
                peer.send(&chunk(b"data: {\"n\":1}\n\n")).await.expect("chunk 1");
                // An LLM would keep generating: wait for the proxy to close this connection.
                let mut scratch = [0u8; 64];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut peer.stream, &mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let at = Instant::now();
                if let Some(tx) = closed_tx.lock().expect("lock").take() {
                    let _ = tx.send(at);
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        // Read until the first chunk is whole.
        let mut dec = chunkgate::codec::chunked::ChunkedDecoder::new(Limits::default());
        loop {
            if let Some(f) = dec.decode(&mut client.buf).expect("valid chunks") {
                assert_eq!(
                    f,
                    chunkgate::codec::chunked::Frame::Data("data: {\"n\":1}\n\n".into())
                );
                break;
            }
            assert!(client.read_more().await.expect("read") > 0, "stream ended early");
        }
        let left = Instant::now();
        drop(client);
        let closed_at = tokio::time::timeout(Duration::from_secs(2), closed_rx)
            .await
            .expect("the upstream connection was closed within 2 s")
            .expect("the upstream reported");
        let delay = closed_at.saturating_duration_since(left);
        eprintln!("client disconnect -> upstream connection closed in {delay:?}");
        assert!(delay < Duration::from_millis(200), "cancellation took {delay:?}");
    })
    .await;
}
