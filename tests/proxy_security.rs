//! Attacks on the layers around the parser, each reproduced over real sockets: slow request
//! bodies against the breaker and the connection pool, an early answer that would leave a
//! body prefix on a pooled connection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// An upstream that reads each request whole and answers `200 ok`.
async fn ok_upstream() -> Upstream {
    hyper_upstream(|req| async move {
        let _ = collect_body(req.into_body()).await;
        response(200, &[], TestBody::full("ok"))
    })
    .await
}

#[tokio::test]
async fn slow_request_bodies_never_open_the_breaker() {
    bounded(TEST_LIMIT, async {
        let upstream = ok_upstream().await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.response_head = Duration::from_millis(300);
        cfg.breaker.consecutive_failures = 2;
        cfg.retry.max_attempts = 1;
        let proxy = TestProxy::start(cfg).await;
        // Two clients dribble a chunked body for longer than the response-head timeout.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut c = proxy.connect().await;
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .expect("head");
            c.send(&chunk(b"{\"model\":")).await.expect("chunk");
            slow.push(c);
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        for c in &mut slow {
            c.send(&chunk(b"\"m\"}")).await.expect("chunk");
            c.send(b"0\r\n\r\n").await.expect("end");
            let resp = c.response("POST").await.expect("answer");
            assert_eq!(resp.head.status, 200, "a slow body is not the upstream's fault");
        }
        // Everyone else is still served.
        let mut other = proxy.connect().await;
        other
            .send(b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        assert_eq!(other.response("GET").await.expect("answer").head.status, 200);
    })
    .await;
}

#[tokio::test]
async fn slow_content_length_bodies_hold_no_upstream_connection() {
    bounded(TEST_LIMIT, async {
        let upstream = ok_upstream().await;
        let mut cfg = config(&[upstream.addr]);
        cfg.pool.max_connections_per_upstream = 3;
        let proxy = TestProxy::start(cfg).await;
        // Three clients announce 100 bytes and send 10: as many as the pool has slots.
        let mut slow = Vec::new();
        for _ in 0..3 {
            let mut c = proxy.connect().await;
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n{\"model\":")
                .await
                .expect("send");
            slow.push(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(upstream.accepted(), 0, "no connection for an unfinished body");
        let mut other = proxy.connect().await;
        other
            .send(b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let resp = other.response("GET").await.expect("answer");
        assert_eq!(resp.head.status, 200);
        drop(slow);
    })
    .await;
}

#[tokio::test]
async fn an_answer_before_the_whole_body_is_never_pooled() {
    bounded(TEST_LIMIT, async {
        // Connection 0 answers after the request head, without reading the body, and then
        // records whatever else arrives on it. Later connections answer normally.
        let leftovers = Arc::new(Mutex::new(Vec::<u8>::new()));
        let seen = Arc::clone(&leftovers);
        let upstream = raw_upstream(move |mut peer, index| {
            let seen = Arc::clone(&seen);
            async move {
                if index > 0 {
                    if read_request(&mut peer).await.ok().flatten().is_some() {
                        let _ = peer.send(&ok_response(b"second")).await;
                    }
                    return;
                }
                peer.request_head().await.expect("head");
                peer.send(CHUNKED_HEAD).await.expect("head");
                peer.send(&chunk(b"data: early\n\n")).await.expect("chunk");
                tokio::time::sleep(Duration::from_millis(300)).await;
                peer.send(b"0\r\n\r\n").await.expect("end");
                let rest = peer.read_to_close().await;
                seen.lock().expect("lock").extend_from_slice(&rest);
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut first = proxy.connect().await;
        first
            .send(
                b"POST /v1/upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .expect("head");
        let head = first.response_head().await.expect("early answer");
        assert_eq!(head.status, 200);
        first.send(&chunk(&[b'x'; 41])).await.expect("body");
        first.send(b"0\r\n\r\n").await.expect("end");
        let body = first.chunked_body().await;
        assert!(body.is_clean(), "{:?}", body.end);

        let mut second = proxy.connect().await;
        second
            .send(b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let resp = second.response("GET").await.expect("answer");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"second");
        assert_eq!(
            upstream.accepted(),
            2,
            "the early-answered connection was not reused"
        );
    })
    .await;
}
