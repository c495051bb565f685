//! Which upstream failures are retried: a reused keep-alive connection that the upstream closed
//! under the request is (it never saw the request); a fresh connection that closes without an
//! answer is not (it may have processed a POST).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn fresh_connection_closed_without_answer_is_not_retried() {
    bounded(LIMIT, async {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let upstream = raw_upstream(move |mut peer, _| {
            let counter = Arc::clone(&counter);
            async move {
                if let Ok(head) = peer.request_head().await {
                    let n = head.content_length().unwrap_or(0) as usize;
                    let _ = peer.length_body(n).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                // Close without answering.
            }
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.retry.max_attempts = 3;
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 502);
        assert_eq!(resp.error_json().1, "bad_gateway");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "the POST must not be sent twice"
        );
    })
    .await;
}

#[tokio::test]
async fn reused_connection_closed_under_the_request_is_retried() {
    bounded(LIMIT, async {
        let upstream = raw_upstream(|mut peer, index| async move {
            if index == 0 {
                // Answer the first request and keep the connection, then drop the second
                // request on the floor: the proxy sees EOF on a connection it reused.
                if peer.request_head().await.is_err() {
                    return;
                }
                let _ = peer
                    .send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                    .await;
                let _ = peer.request_head().await;
                return;
            }
            while peer.request_head().await.is_ok() {
                if peer
                    .send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let first = client.response("GET").await.expect("first");
        assert_eq!(first.body, b"first");
        client
            .send(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let second = client.response("GET").await.expect("second");
        assert_eq!(second.head.status, 200);
        assert_eq!(second.body, b"second");
        assert_eq!(
            upstream.accepted(),
            2,
            "the retry went out on a new connection"
        );
    })
    .await;
}
