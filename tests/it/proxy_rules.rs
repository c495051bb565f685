//! The request rules of PROTOCOL.md over real sockets: every malformed or ambiguous request is
//! answered with its status and an OpenAI-style JSON error, the connection is closed, and the
//! upstream never sees a request. Smuggling attempts reach the upstream as exactly one request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// One rejection case: what the client sends and the status it must get.
struct Case {
    name: &'static str,
    request: &'static [u8],
    status: u16,
}

const CASES: &[Case] = &[
    Case {
        name: "content-length with transfer-encoding (CL.TE)",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        status: 400,
    },
    Case {
        name: "transfer-encoding with content-length (TE.CL)",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "two content-length fields, equal",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "two content-length fields, different",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        status: 400,
    },
    Case {
        name: "content-length list",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "content-length with a sign",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "content-length in hex",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "content-length with an inner space",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1 2\r\n\r\nhello world!",
        status: 400,
    },
    Case {
        name: "content-length overflow",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999999999999999999999\r\n\r\nx",
        status: 400,
    },
    Case {
        name: "transfer-encoding not ending in chunked",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "transfer-encoding without chunked",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
        status: 400,
    },
    Case {
        name: "chunked twice in one field",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "two transfer-encoding fields",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "chunked with parameters",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "other coding before chunked",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        status: 501,
    },
    Case {
        name: "transfer-encoding on HTTP/1.0",
        request: b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "obs-fold",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: part one\r\n part two\r\n\r\n",
        status: 400,
    },
    Case {
        name: "obs-fold with a tab",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: part one\r\n\tpart two\r\n\r\n",
        status: 400,
    },
    Case {
        name: "whitespace before the colon",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n",
        status: 400,
    },
    Case {
        name: "whitespace before the first field",
        request: b"GET / HTTP/1.1\r\n Host: a.test\r\n\r\n",
        status: 400,
    },
    Case {
        name: "bare LF line ends",
        request: b"GET / HTTP/1.1\nHost: a.test\n\n",
        status: 400,
    },
    Case {
        name: "bare LF in one field line",
        request: b"GET / HTTP/1.1\r\nHost: a.test\nX-A: b\r\n\r\n",
        status: 400,
    },
    Case {
        name: "bare CR in a value",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\rc\r\n\r\n",
        status: 400,
    },
    Case {
        name: "NUL in a value",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\0c\r\n\r\n",
        status: 400,
    },
    Case {
        name: "DEL in a value",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: b\x7fc\r\n\r\n",
        status: 400,
    },
    Case {
        name: "underscore in a field name",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nX_Forwarded_For: 10.0.0.1\r\n\r\n",
        status: 400,
    },
    Case {
        name: "empty field name",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\n: b\r\n\r\n",
        status: 400,
    },
    Case {
        name: "missing Host",
        request: b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        status: 400,
    },
    Case {
        name: "two Host fields",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        status: 400,
    },
    Case {
        name: "CONNECT",
        request: b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        status: 501,
    },
    Case {
        name: "Upgrade",
        request: b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        status: 501,
    },
    Case {
        name: "Content-Length body on GET",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "chunked body on GET",
        request: b"GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
    },
    Case {
        name: "body on HEAD",
        request: b"HEAD / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
    },
    Case {
        name: "unknown expectation",
        request: b"POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\nhello",
        status: 417,
    },
    Case {
        name: "double space in the request line",
        request: b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        status: 400,
    },
    Case {
        name: "fragment in the target",
        request: b"GET /a#frag HTTP/1.1\r\nHost: a.test\r\n\r\n",
        status: 400,
    },
    Case {
        name: "HTTP/2.0 version",
        request: b"GET / HTTP/2.0\r\nHost: a.test\r\n\r\n",
        status: 505,
    },
];

/// Send `request` on a fresh connection and check the answer: the expected status, a JSON
/// error body, `Connection: close`, and the connection closed after it. Returns a description
/// of what was wrong, if anything.
async fn check_rejected(proxy: &TestProxy, case: &Case) -> Option<String> {
    let mut client = proxy.connect().await;
    if let Err(e) = client.send(case.request).await {
        return Some(format!("send failed: {e}"));
    }
    let resp = match tokio::time::timeout(Duration::from_secs(2), client.response("GET")).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Some(format!("no valid response: {e}")),
        Err(_) => return Some("no response within 2 s".to_string()),
    };
    let mut problems = Vec::new();
    if resp.head.status != case.status {
        problems.push(format!(
            "status {} (want {})",
            resp.head.status, case.status
        ));
    }
    match parse_error_json(&resp.body) {
        Ok((kind, code)) => {
            if kind != "invalid_request_error" {
                problems.push(format!("error type {kind:?}"));
            }
            if code.is_empty() {
                problems.push("empty error code".to_string());
            }
        }
        Err(e) => problems.push(e),
    }
    if !resp.head.says_close() {
        problems.push("no `Connection: close`".to_string());
    }
    if !client.closes_within(CLOSE_WAIT).await {
        problems.push("connection not closed after the answer".to_string());
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[tokio::test]
async fn every_rejection_rule_answers_closes_and_never_reaches_upstream() {
    bounded(Duration::from_secs(30), async {
        let upstream = raw_upstream(|mut peer, _| async move {
            // Answer anything, so a request that slips through shows up as a 200.
            while let Ok(Some(_)) = peer.request().await {
                if peer.send(&ok_response(b"upstream")).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut results = Vec::new();
        for case in CASES {
            results.push((case.name, check_rejected(&proxy, case).await));
        }
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|(name, problem)| problem.map(|p| format!("{name}: {p}")))
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} rules failed:\n  {}",
            failures.len(),
            CASES.len(),
            failures.join("\n  ")
        );
        assert_eq!(
            upstream.accepted(),
            0,
            "a rejected request reached the upstream"
        );
    })
    .await;
}

/// What a hyper upstream saw: every request's method, path and body.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn recording_upstream() -> (Upstream, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let seen_up = Arc::clone(&seen);
    let upstream = hyper_upstream(move |req| {
        let seen = Arc::clone(&seen_up);
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let body = collect_body(req.into_body()).await.map(|b| b.to_vec());
            let body = body.unwrap_or_else(|_| b"<broken body>".to_vec());
            seen.lock().expect("lock").push((method, path, body));
            response(200, &[], TestBody::full("ok"))
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test]
async fn smuggled_request_in_a_chunked_body_stays_one_request() {
    bounded(TEST_LIMIT, async {
        let (upstream, seen) = recording_upstream().await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        // The payload of one chunk looks like the end of a body and a second request.
        let inner: &[u8] = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let mut req =
            b"POST /v1/first HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        req.extend_from_slice(&chunk(inner));
        req.extend_from_slice(b"0\r\n\r\n");
        let mut client = proxy.connect().await;
        client.send(&req).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        // A follow-up request on the same connection is the only other one the upstream sees.
        client
            .send(b"GET /v1/next HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("GET").await.expect("response");
        assert_eq!(resp.head.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![
                ("POST".to_string(), "/v1/first".to_string(), inner.to_vec()),
                ("GET".to_string(), "/v1/next".to_string(), Vec::new()),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn smuggled_request_in_a_content_length_body_stays_one_request() {
    bounded(TEST_LIMIT, async {
        let (upstream, seen) = recording_upstream().await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        // TE.CL style: a body a chunked reader would stop early in, declared by Content-Length.
        let inner: &[u8] = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let mut req = format!(
            "POST /v1/first HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
            inner.len()
        )
        .into_bytes();
        req.extend_from_slice(inner);
        let mut client = proxy.connect().await;
        client.send(&req).await.expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![("POST".to_string(), "/v1/first".to_string(), inner.to_vec())]
        );
        assert_eq!(upstream.requested(), 1);
    })
    .await;
}

#[tokio::test]
async fn chunk_extensions_are_dropped_and_chunks_kept() {
    bounded(TEST_LIMIT, async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let tx = Arc::clone(&tx);
            async move {
                peer.request_head().await.expect("head");
                let body = peer.chunked_body().await;
                peer.send(&ok_response(b"ok")).await.expect("answer");
                if let Some(tx) = tx.lock().expect("lock").take() {
                    let _ = tx.send(body);
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;name=\"v\"\r\nabc\r\n0004 ; x\r\ndefg\r\n0\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        let body = rx.await.expect("upstream body");
        assert!(body.is_complete());
        body.assert_canonical();
        let got: Vec<&[u8]> = body.chunks.iter().map(|c| &c[..]).collect();
        assert_eq!(got, vec![&b"abc"[..], b"defg"]);
    })
    .await;
}

#[tokio::test]
async fn malformed_request_chunks_are_400_and_never_complete_upstream() {
    bounded(TEST_LIMIT, async {
        // The head is forwarded before the body is read; a broken body must then never reach
        // the upstream as a complete one.
        let bodies: &[(&str, &[u8])] = &[
            ("sign in size", b"+3\r\nabc\r\n0\r\n\r\n"),
            ("0x prefix", b"0x3\r\nabc\r\n0\r\n\r\n"),
            ("bare LF after size", b"3\nabc\r\n0\r\n\r\n"),
            ("missing CRLF after data", b"3\r\nabcd\r\n0\r\n\r\n"),
            ("control byte in extension", b"3;a=\x01\r\nabc\r\n0\r\n\r\n"),
            ("space before size", b" 3\r\nabc\r\n0\r\n\r\n"),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(16);
        let upstream = raw_upstream(move |mut peer, _| {
            let tx = tx.clone();
            async move {
                if peer.request_head().await.is_err() {
                    return;
                }
                let body = peer.chunked_body().await;
                let _ = tx.send(body.is_complete()).await;
                if body.is_complete() {
                    let _ = peer.send(&ok_response(b"ok")).await;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        for (name, body) in bodies {
            let mut client = proxy.connect().await;
            let mut req =
                b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            req.extend_from_slice(body);
            client.send(&req).await.expect("send");
            let resp = client.response("POST").await.expect("response");
            assert_eq!(resp.head.status, 400, "{name}");
            let (kind, _) = resp.error_json();
            assert_eq!(kind, "invalid_request_error", "{name}");
            assert!(
                client.closes_within(CLOSE_WAIT).await,
                "{name}: connection closed"
            );
        }
        // Every body the upstream saw (if any) ended without its terminating chunk.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(clean) = rx.try_recv() {
            assert!(
                !clean,
                "a malformed request body reached the upstream complete"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn forwarded_head_is_rewritten_like_a_reverse_proxy() {
    bounded(TEST_LIMIT, async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let tx = Arc::clone(&tx);
            async move {
                let Ok(Some(req)) = peer.request().await else {
                    return;
                };
                let _ = peer
                    .send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Up-Hop\r\nKeep-Alive: timeout=5\r\nX-Up-Hop: 1\r\nX-Kept: yes\r\n\r\nok")
                    .await;
                if let Some(tx) = tx.lock().expect("lock").take() {
                    let _ = tx.send(req.head);
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(
                b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n\
                  Host: api.client.test\r\n\
                  Connection: keep-alive, X-Hop\r\n\
                  X-Hop: secret-hop\r\n\
                  Keep-Alive: timeout=5\r\n\
                  TE: trailers\r\n\
                  Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
                  X-Forwarded-For: 6.6.6.6\r\n\
                  Authorization: Bearer sk-test\r\n\
                  X-Request-Id: req-42\r\n\
                  Content-Length: 2\r\n\
                  \r\n{}",
            )
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"ok");
        assert_eq!(resp.head.get("x-request-id"), Some("req-42"), "request id sent back");
        assert_eq!(resp.head.get("x-kept"), Some("yes"));
        for hop in ["x-up-hop", "keep-alive"] {
            assert_eq!(resp.head.count(hop), 0, "{hop} leaked to the client: {resp:?}");
        }

        let head = rx.await.expect("the upstream saw the request");
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/chat/completions?x=1");
        assert_eq!(head.minor, 1);
        let authority = upstream.addr.to_string();
        assert_eq!(head.get("host"), Some(authority.as_str()), "Host is the upstream's");
        assert_eq!(head.count("host"), 1);
        assert_eq!(head.get("x-forwarded-for"), Some("127.0.0.1"), "the client's claim is replaced");
        assert_eq!(head.get("x-forwarded-proto"), Some("http"));
        assert_eq!(head.get("x-forwarded-host"), Some("api.client.test"));
        assert!(
            head.get("via").is_some_and(|v| v.contains("chunkgate")),
            "Via names the proxy: {head:?}"
        );
        assert_eq!(head.get("authorization"), Some("Bearer sk-test"));
        assert_eq!(head.get("x-request-id"), Some("req-42"));
        assert_eq!(head.content_length(), Some(2));
        for hop in ["x-hop", "keep-alive", "te", "proxy-authorization", "transfer-encoding"] {
            assert_eq!(head.count(hop), 0, "{hop} was forwarded: {head:?}");
        }
        assert!(
            head.headers.iter().all(|(n, v)| !n.eq_ignore_ascii_case("connection")
                || !String::from_utf8_lossy(v).to_ascii_lowercase().contains("x-hop")),
            "Connection still names the client's hop field: {head:?}"
        );
    })
    .await;
}
