//! Attacks on the layers around the parser, each reproduced over real sockets: slow request
//! bodies against the breaker and the connection pool, an early answer that would leave a
//! body prefix on a pooled connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// Send `request` on a new connection to `proxy` and read the answer to `method`.
async fn ask(proxy: &TestProxy, request: &[u8], method: &str) -> RawResponse {
    let mut c = proxy.connect().await;
    c.send(request).await.expect("send");
    c.response(method).await.expect("answer")
}

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
        assert_eq!(ask(&proxy, b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n", "GET").await.head.status, 200);
    })
    .await;
}

#[tokio::test]
async fn slow_content_length_bodies_hold_no_upstream_connection() {
    bounded(TEST_LIMIT, async {
        let upstream = ok_upstream().await;
        let mut cfg = config(&[upstream.addr]);
        cfg.pool.max_connections_per_upstream = Some(3);
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
        let resp = ask(&proxy, b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n", "GET").await;
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
                    if peer.request().await.ok().flatten().is_some() {
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
        assert!(body.is_complete(), "{:?}", body.end);

        let resp = ask(
            &proxy,
            b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "GET",
        )
        .await;
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

/// A proxy with an open `/` route and a `/secret/` route that needs `Bearer tok`, both to
/// `upstream`, and the paths the upstream received.
async fn two_routes() -> (TestProxy, Upstream, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    let upstream = hyper_upstream(move |req| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().expect("lock").push(req.uri().to_string());
            let _ = collect_body(req.into_body()).await;
            response(200, &[], TestBody::full("ok"))
        }
    })
    .await;
    let mut cfg = config(&[upstream.addr]);
    let mut secret = cfg.routes[0].clone();
    secret.prefix = "/secret/".into();
    secret.strip_prefix = false;
    secret.require_bearer = vec!["tok".into()];
    cfg.routes.push(secret);
    (TestProxy::start(cfg).await, upstream, paths)
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_gets_past_its_route() {
    bounded(TEST_LIMIT, async {
        let (proxy, upstream, paths) = two_routes().await;
        for target in [
            "/x/../secret/x",
            "/./secret/x",
            "/%73ecret/x",
            "//secret/x",
            "/secret;a/x",
            "/secret%2fx",
            "/secret/%2e%2e/x",
            "/secret\\x",
        ] {
            let resp = ask(&proxy, format!("GET {target} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes(), "GET").await;
            assert!(
                matches!(resp.head.status, 400 | 401),
                "{target}: {}",
                resp.head.status
            );
        }
        assert_eq!(upstream.requested(), 0, "reached the upstream: {paths:?}");
        // The route is matched on the normalised path, which is what goes upstream.
        assert_eq!(ask(&proxy, b"GET /%73ecret/x?k=%2f HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer tok\r\n\r\n", "GET").await.head.status, 200);
        assert_eq!(paths.lock().expect("lock").as_slice(), ["/secret/x?k=%2f"]);
    })
    .await;
}

#[tokio::test]
async fn a_rewritten_path_never_leaves_the_target_prefix() {
    bounded(TEST_LIMIT, async {
        let (_, upstream, paths) = two_routes().await;
        let mut cfg = config(&[upstream.addr]);
        cfg.routes[0].prefix = "/local/".into();
        cfg.routes[0].strip_prefix = true;
        cfg.routes[0].rewrite_prefix = "/api".into();
        let proxy = TestProxy::start(cfg).await;
        for target in [
            "/local/../admin",
            "/local/%2e%2e/admin",
            "/local/..%2fadmin",
        ] {
            assert_eq!(
                ask(
                    &proxy,
                    format!("GET {target} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes(),
                    "GET"
                )
                .await
                .head
                .status,
                400,
                "{target}"
            );
        }
        assert_eq!(
            ask(
                &proxy,
                b"GET /local/v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n",
                "GET"
            )
            .await
            .head
            .status,
            200
        );
        assert_eq!(paths.lock().expect("lock").as_slice(), ["/api/v1/models"]);
    })
    .await;
}

#[tokio::test]
async fn client_trailers_follow_the_header_rules() {
    bounded(TEST_LIMIT, async {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&got);
        let upstream = raw_upstream(move |mut peer, _| {
            let seen = Arc::clone(&seen);
            async move {
                let Ok(Some(req)) = peer.request().await else {
                    return;
                };
                let chunked = req.chunked.expect("a chunked body");
                *seen.lock().expect("lock") = chunked.trailers;
                let _ = peer.send(&ok_response(b"ok")).await;
            }
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.routes[0].inject_headers = vec![("X-Api-Key".into(), "sk-real".into())];
        let proxy = TestProxy::start(cfg).await;
        assert_eq!(
            ask(
                &proxy,
                b"POST /v1/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\n{}\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nProxy-Authorization: Basic eA==\r\n\
              X_Api_Key: attacker\r\nX-Api-Key: attacker\r\nX-Request-Id: twice\r\n\
              X-Checksum: abc\r\n\r\n",
                "POST"
            )
            .await
            .head
            .status,
            200
        );
        let trailers = got.lock().expect("lock").clone();
        let names: Vec<String> = trailers
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
            .collect();
        assert_eq!(names, ["x-checksum"], "{trailers:?}");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_whole_stream() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            peer.request().await.expect("request");
            // Think a little (the client's FIN arrives meanwhile), then stream.
            tokio::time::sleep(Duration::from_millis(100)).await;
            peer.send(CHUNKED_HEAD).await.expect("head");
            for n in 0..3 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                peer.send(&chunk(format!("data: {n}\n\n").as_bytes()))
                    .await
                    .expect("chunk");
            }
            peer.send(b"0\r\n\r\n").await.expect("end");
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut c = proxy.connect().await;
        c.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .expect("send");
        tokio::io::AsyncWriteExt::shutdown(&mut c.stream)
            .await
            .expect("half-close");
        assert_eq!(c.response_head().await.expect("head").status, 200);
        let body = c.chunked_body().await;
        assert!(body.is_complete(), "{:?}", body.end);
        assert_eq!(body.texts(), ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n"]);
    })
    .await;
}

#[tokio::test]
async fn absolute_form_for_another_host_is_refused_and_options_star_stays_a_star() {
    bounded(TEST_LIMIT, async {
        let (proxy, upstream, paths) = two_routes().await;
        assert_eq!(
            ask(
                &proxy,
                b"GET http://evil.test/v1/models HTTP/1.1\r\nHost: evil.test\r\n\r\n",
                "GET"
            )
            .await
            .head
            .status,
            400
        );
        assert_eq!(upstream.requested(), 0);
        // Our own authority is fine.
        let own = format!(
            "GET http://{0}/v1/models HTTP/1.1\r\nHost: {0}\r\n\r\n",
            proxy.addr
        );
        assert_eq!(ask(&proxy, own.as_bytes(), "GET").await.head.status, 200);
        assert_eq!(
            ask(
                &proxy,
                b"OPTIONS * HTTP/1.1\r\nHost: api.test\r\n\r\n",
                "OPTIONS"
            )
            .await
            .head
            .status,
            200
        );
        assert_eq!(paths.lock().expect("lock").as_slice(), ["/v1/models", "*"]);
    })
    .await;
}

#[tokio::test]
async fn at_the_connection_cap_the_answer_is_503_with_retry_after_at_once() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            peer.request().await.expect("request");
            peer.send(CHUNKED_HEAD).await.expect("head");
            peer.send(&chunk(b"data: 1\n\n")).await.expect("chunk");
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.pool.max_connections_per_upstream = Some(1);
        cfg.retry.max_attempts = 1;
        let proxy = TestProxy::start(cfg).await;
        let mut holder = proxy.connect().await;
        holder
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        assert_eq!(holder.response_head().await.expect("head").status, 200);
        let sent = std::time::Instant::now();
        let resp = ask(
            &proxy,
            b"GET /v1/models HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "GET",
        )
        .await;
        assert_eq!(resp.head.status, 503);
        assert_eq!(resp.head.get("retry-after"), Some("1"));
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
    })
    .await;
}

#[test]
fn the_default_upstream_cap_holds_what_the_listeners_admit() {
    let mut cfg = config(&["127.0.0.1:9".parse().expect("addr")]);
    cfg.pool.max_connections_per_upstream = None;
    cfg.listeners[0].max_connections = 9_200;
    let cap = chunkgate::proxy::Capacity::apply(&mut cfg);
    assert!(cap.fd_limit >= 2 * 9_200 + 64, "fd limit {}", cap.fd_limit);
    assert_eq!(cap.clients, 9_200);
    assert_eq!(cap.per_upstream, 9_200);
    assert_eq!(cfg.pool.max_connections_per_upstream, Some(9_200));
}

#[tokio::test]
async fn a_declared_body_over_the_default_limit_is_413_before_anything_is_forwarded() {
    bounded(TEST_LIMIT, async {
        let upstream = ok_upstream().await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut c = proxy.connect().await;
        // 64 MiB declared, over the 32 MiB default; the client keeps sending while it waits.
        c.send(b"POST /v1/files HTTP/1.1\r\nHost: api.test\r\nContent-Length: 67108864\r\n\r\n")
            .await
            .expect("head");
        let _ = c.send(&vec![b'x'; 256 * 1024]).await;
        let resp = c
            .response("POST")
            .await
            .expect("the answer survives the unread body");
        assert_eq!(resp.head.status, 413);
        assert_eq!(resp.head.get("connection"), Some("close"));
        assert_eq!(upstream.accepted(), 0, "nothing was forwarded");
    })
    .await;
}

#[tokio::test]
async fn a_response_with_a_coding_after_chunked_is_passed_on_until_close() {
    bounded(TEST_LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            peer.request().await.expect("request");
            peer.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, deflate\r\n\r\n\x01\x02coded",
            )
            .await
            .expect("answer");
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut c = proxy.connect().await;
        c.send(b"GET /v1/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let head = c.response_head().await.expect("head");
        assert_eq!(head.status, 200, "not a 502: RFC 9112 section 6.3 rule 4");
        assert_eq!(head.get("transfer-encoding"), Some("chunked, deflate"));
        assert!(head.says_close());
        assert_eq!(c.read_to_close().await, b"\x01\x02coded");
    })
    .await;
}
