//! The optional total timeout: off by default, and when set it ends an exchange that runs
//! past it with a 504 before the response, or a cut stream (no clean end) after.

use std::time::{Duration, Instant};

use crate::common::*;

const GET: &[u8] = b"GET /v1/stream HTTP/1.1\r\nHost: gateway.test\r\n\r\n";

#[tokio::test]
async fn total_timeout_before_the_response_is_504() {
    bounded(Duration::from_secs(10), async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request_head().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.response_head = Duration::from_secs(5);
        cfg.timeouts.total = Some(Duration::from_millis(300));
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let t = Instant::now();
        client.send(GET).await.expect("send");
        let resp = client.response("GET").await.expect("response");
        let took = t.elapsed();
        assert_eq!(resp.head.status, 504);
        assert_eq!(resp.error_json().1, "gateway_timeout");
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(2),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn total_timeout_mid_stream_cuts_without_a_clean_end() {
    bounded(Duration::from_secs(10), async {
        let upstream = raw_upstream(|mut peer, _| async move {
            let _ = peer.request_head().await;
            let _ = peer
                .send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            for i in 0..50 {
                let event = format!("data: {i}\n\n");
                if peer.send(&chunk(event.as_bytes())).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = peer.send(b"0\r\n\r\n").await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.timeouts.total = Some(Duration::from_millis(400));
        let proxy = TestProxy::start(cfg).await;
        let mut client = proxy.connect().await;
        let t = Instant::now();
        client.send(GET).await.expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        let body = client.chunked_body().await;
        let took = t.elapsed();
        assert!(!body.is_complete(), "a cut stream must not end cleanly");
        assert!(
            (3..50).contains(&body.chunks.len()),
            "{} chunks arrived",
            body.chunks.len()
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    })
    .await;
}
