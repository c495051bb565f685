//! Chunk-exact forwarding through the proxy, both directions, over real sockets: hostile write
//! splits, flush before the next chunk, Content-Length bodies, keep-alive, pipelining,
//! HTTP/1.0, `Expect: 100-continue`, and many concurrent streams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// A chat-completion request with a Content-Length body.
fn chat_request(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn response_sse_chunks_survive_hostile_splits() {
    bounded(TEST_LIMIT, async {
        let events = sse_events();
        let up_events = events.clone();
        let upstream = raw_upstream(move |mut peer, _| {
            let events = up_events.clone();
            async move {
                let Ok(Some(req)) = peer.request().await else {
                    return;
                };
                assert_eq!(req.head.target, "/v1/chat/completions");
                assert!(
                    req.body.starts_with(b"{\"model\""),
                    "request body reached the upstream"
                );
                peer.send_pieces(&[CHUNKED_HEAD]).await.expect("write head");
                for e in &events {
                    let pieces = hostile_pieces(e.as_bytes());
                    assert!(pieces.len() >= 4, "an event is cut in at least four places");
                    peer.send_pieces(&pieces).await.expect("write a chunk");
                }
                // The terminating chunk, split too.
                peer.send_pieces(&[&b"0\r"[..], &b"\n\r"[..], &b"\n"[..]])
                    .await
                    .expect("write the end");
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(&chat_request(r#"{"model":"gpt-4o-mini","stream":true}"#))
            .await
            .expect("send request");
        let head = client.response_head().await.expect("response head");
        assert_eq!(head.status, 200);
        assert!(head.is_chunked(), "the stream goes out chunked: {head:?}");
        assert_eq!(head.get("content-type"), Some("text/event-stream"));
        let body = client.chunked_body().await;
        assert!(body.is_complete(), "stream ended cleanly: {:?}", body.end);
        body.assert_canonical();
        let got = body.texts();
        assert_eq!(got.len(), events.len(), "one chunk out per chunk in");
        for (g, e) in got.iter().zip(&events) {
            assert_eq!(g, e);
            assert_whole_event(g);
        }
        assert_eq!(upstream.accepted(), 1);
        // The splits really arrived as separate reads: every chunk had to be reassembled.
        assert!(
            proxy.reassembled("response") >= events.len() as u64,
            "only {} of {} chunks arrived split",
            proxy.reassembled("response"),
            events.len()
        );
    })
    .await;
}

#[tokio::test]
async fn response_chunks_from_hyper_upstream_reach_hyper_client() {
    bounded(TEST_LIMIT, async {
        let events = sse_events();
        let up_events = events.clone();
        let upstream = hyper_upstream(move |_req| {
            let events = up_events.clone();
            async move {
                let (tx, body) = TestBody::channel();
                tokio::spawn(async move {
                    for e in events {
                        if tx.send(Bytes::from(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(GAP).await;
                    }
                });
                response(200, &[("content-type", "text/event-stream")], body)
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;

        // A raw client sees hyper's chunks one for one.
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("GET").await.expect("response");
        let body = resp.chunked.expect("a chunked response");
        assert!(body.is_complete());
        assert_eq!(body.texts(), events);

        // hyper as the client reads the same stream as one complete body.
        let mut sender = hyper_client(proxy.addr).await;
        let req = hyper::Request::get("/v1/stream")
            .header("host", "api.test")
            .body(TestBody::empty())
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .expect("hyper gets a response");
        assert_eq!(resp.status(), 200);
        let bytes = collect_body(resp.into_body())
            .await
            .expect("a complete body");
        assert_eq!(bytes, events.concat().as_bytes());
    })
    .await;
}

#[tokio::test]
async fn request_chunks_abc_defgh_ij_arrive_whole() {
    bounded(TEST_LIMIT, async {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let tx = Arc::clone(&tx);
            async move {
                let head = peer.request_head().await.expect("request head");
                let body = peer.chunked_body().await;
                let ok = body.is_complete();
                peer.send(&ok_response(b"ok")).await.expect("answer");
                if let Some(tx) = tx.lock().expect("lock").take() {
                    let _ = tx.send((head, body, ok));
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send_pieces(&[
                &b"POST /v1/upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"3\r\nabc\r\n",
                b"5\r\n",
                b"def",
                b"gh\r\n",
                b"2\r\nij\r\n",
                b"0\r\n\r\n",
            ])
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"ok");
        let (head, body, clean) = rx.await.expect("the upstream saw the request");
        assert!(head.is_chunked(), "forwarded chunked: {head:?}");
        assert!(clean, "request body ended cleanly: {:?}", body.end);
        body.assert_canonical();
        let got: Vec<&[u8]> = body.chunks.iter().map(|c| &c[..]).collect();
        assert_eq!(got, vec![&b"abc"[..], b"defgh", b"ij"]);
        assert!(
            proxy.reassembled("request") >= 1,
            "`defgh` arrived in three reads and was reassembled"
        );
    })
    .await;
}

#[tokio::test]
async fn request_chunk_forwarded_before_the_client_sends_the_next() {
    bounded(TEST_LIMIT, async {
        // The upstream tells the client when it got chunk 1; the client sends chunk 2 only then.
        let (got_first_tx, mut got_first_rx) = mpsc::channel::<Bytes>(1);
        let upstream = raw_upstream(move |mut peer, _| {
            let got_first = got_first_tx.clone();
            async move {
                peer.request_head().await.expect("request head");
                let body = peer
                    .chunked_body_with(|i, c| {
                        if i == 0 {
                            let _ = got_first.try_send(c.clone());
                        }
                    })
                    .await;
                assert!(body.is_complete());
                let answer = body.chunks.concat();
                peer.send(&ok_response(&answer)).await.expect("answer");
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /v1/upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .expect("send chunk 1");
        let first = tokio::time::timeout(Duration::from_secs(2), got_first_rx.recv())
            .await
            .expect("chunk 1 reached the upstream before chunk 2 was sent");
        assert_eq!(first.as_deref(), Some(&b"first"[..]));
        client
            .send(b"6\r\nsecond\r\n0\r\n\r\n")
            .await
            .expect("send chunk 2");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.body, b"firstsecond");
    })
    .await;
}

#[tokio::test]
async fn response_chunk_flushed_before_upstream_writes_the_next() {
    bounded(TEST_LIMIT, async {
        // The upstream writes chunk 2 only after the client has received chunk 1: a proxy that
        // holds chunk 1 back waiting for more would deadlock here.
        let (client_got_tx, client_got_rx) = oneshot::channel::<()>();
        let client_got = Arc::new(tokio::sync::Mutex::new(Some(client_got_rx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let client_got = Arc::clone(&client_got);
            async move {
                peer.request().await.expect("request");
                peer.send(CHUNKED_HEAD).await.expect("head");
                peer.send(&chunk(b"data: one\n\n")).await.expect("chunk 1");
                let rx = client_got.lock().await.take();
                if let Some(rx) = rx {
                    if tokio::time::timeout(Duration::from_secs(2), rx)
                        .await
                        .is_err()
                    {
                        // Never signalled: end without chunk 2 so the client assertion fails.
                        return;
                    }
                }
                peer.send(&chunk(b"data: two\n\n")).await.expect("chunk 2");
                peer.send(b"0\r\n\r\n").await.expect("end");
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        let mut signal = Some(client_got_tx);
        let body = client
            .chunked_body_with(|i, _| {
                if i == 0 {
                    if let Some(tx) = signal.take() {
                        let _ = tx.send(());
                    }
                }
            })
            .await;
        assert!(body.is_complete(), "{:?}", body.end);
        assert_eq!(body.texts(), vec!["data: one\n\n", "data: two\n\n"]);
    })
    .await;
}

#[tokio::test]
async fn content_length_bodies_both_ways() {
    bounded(TEST_LIMIT, async {
        // A hyper upstream echoes the body reversed, with its own Content-Length.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_up = Arc::clone(&seen);
        let upstream = hyper_upstream(move |req| {
            let seen = Arc::clone(&seen_up);
            async move {
                let cl = req
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let te = req.headers().contains_key("transfer-encoding");
                let body = collect_body(req.into_body()).await.expect("request body");
                seen.lock().expect("lock").push((cl, te, body.len()));
                let mut rev = body.to_vec();
                rev.reverse();
                response(
                    200,
                    &[("content-type", "application/octet-stream")],
                    TestBody::full(rev),
                )
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut expected = body.clone();
        expected.reverse();

        // Raw client, written in a few pieces.
        let mut client = proxy.connect().await;
        let head = format!(
            "POST /v1/files HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client
            .send_pieces(&[
                head.as_bytes(),
                &body[..1],
                &body[1..40_000],
                &body[40_000..],
            ])
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.head.content_length(), Some(body.len() as u64));
        assert!(resp.head.get("transfer-encoding").is_none());
        assert!(resp.body == expected, "response body differs");

        // hyper client.
        let mut sender = hyper_client(proxy.addr).await;
        let req = hyper::Request::post("/v1/files")
            .header("host", "api.test")
            .body(TestBody::full(body.clone()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let got = collect_body(resp.into_body()).await.expect("body");
        assert!(got == expected, "hyper client body differs");

        let seen = seen.lock().expect("lock").clone();
        let want = (Some(body.len().to_string()), false, body.len());
        assert_eq!(seen, vec![want.clone(), want]);
    })
    .await;
}

#[tokio::test]
async fn keep_alive_reuses_client_and_upstream_connections() {
    bounded(TEST_LIMIT, async {
        let upstream = hyper_upstream(|req| async move {
            let path = req.uri().path().to_string();
            response(200, &[], TestBody::full(path))
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;

        // hyper client: three sequential requests on one connection.
        let mut sender = hyper_client(proxy.addr).await;
        for i in 0..3 {
            sender.ready().await.expect("the connection stays usable");
            let req = hyper::Request::get(format!("/r/{i}"))
                .header("host", "api.test")
                .body(TestBody::empty())
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            let body = collect_body(resp.into_body()).await.expect("body");
            assert_eq!(body, format!("/r/{i}").as_bytes());
        }
        assert_eq!(
            upstream.accepted(),
            1,
            "one upstream connection for three requests"
        );
        assert_eq!(upstream.requested(), 3);

        // A raw client too: three requests, one after the other, one connection.
        let mut client = proxy.connect().await;
        for i in 0..3 {
            client
                .send(format!("GET /raw/{i} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
                .await
                .expect("send");
            let resp = client.response("GET").await.expect("response");
            assert_eq!(resp.body, format!("/raw/{i}").as_bytes());
            assert!(!resp.head.says_close());
        }
        assert_eq!(
            upstream.accepted(),
            1,
            "the pooled upstream connection is reused"
        );
    })
    .await;
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() {
    bounded(TEST_LIMIT, async {
        let upstream = hyper_upstream(|req| async move {
            let path = req.uri().path().to_string();
            // The first answer is the slow one: order must still hold.
            if path == "/one" {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            response(200, &[], TestBody::full(path))
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"GET /one HTTP/1.1\r\nHost: api.test\r\n\r\nGET /two HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send both in one write");
        let first = client.response("GET").await.expect("first response");
        let second = client.response("GET").await.expect("second response");
        assert_eq!(first.body, b"/one");
        assert_eq!(second.body, b"/two");
        assert_eq!(upstream.requested(), 2);
    })
    .await;
}

#[tokio::test]
async fn http10_client_gets_a_close_delimited_stream() {
    bounded(TEST_LIMIT, async {
        let events = sse_events();
        let up_events = events.clone();
        let upstream = raw_upstream(move |mut peer, _| {
            let events = up_events.clone();
            async move {
                let req = peer.request().await.expect("read").expect("a request");
                assert_eq!(req.head.minor, 1, "the proxy speaks HTTP/1.1 upstream");
                peer.send(CHUNKED_HEAD).await.expect("head");
                for e in &events {
                    peer.send_pieces(&hostile_pieces(e.as_bytes()))
                        .await
                        .expect("chunk");
                }
                peer.send(b"0\r\n\r\n").await.expect("end");
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.0\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        assert!(
            head.get("transfer-encoding").is_none(),
            "no chunked framing for an HTTP/1.0 client: {head:?}"
        );
        let body = client.read_to_close().await;
        assert_eq!(String::from_utf8_lossy(&body), events.concat());
    })
    .await;
}

#[tokio::test]
async fn http10_request_with_content_length() {
    bounded(TEST_LIMIT, async {
        let upstream = hyper_upstream(|req| async move {
            let body = collect_body(req.into_body()).await.expect("body");
            response(200, &[], TestBody::full(body))
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /echo HTTP/1.0\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"hello");
        assert!(
            client.closes_within(CLOSE_WAIT).await,
            "an HTTP/1.0 connection without keep-alive closes after the response"
        );
    })
    .await;
}

#[tokio::test]
async fn expect_100_continue_gets_interim_then_final() {
    bounded(TEST_LIMIT, async {
        let upstream = hyper_upstream(|req| async move {
            let expect = req.headers().contains_key("expect");
            let body = collect_body(req.into_body()).await.expect("body");
            let mut answer = body.to_vec();
            if expect {
                answer.extend_from_slice(b" (expect forwarded)");
            }
            response(200, &[], TestBody::full(answer))
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"POST /v1/upload HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .await
            .expect("send head");
        // Nothing of the body is sent before the interim answer.
        let interim = client.response_head().await.expect("interim head");
        assert_eq!(interim.status, 100, "{interim:?}");
        client.send(b"hello").await.expect("send body");
        let resp = client.response("POST").await.expect("final response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"hello");
    })
    .await;
}

#[tokio::test]
async fn two_hundred_concurrent_streams_are_exact() {
    bounded(Duration::from_secs(20), async {
        const STREAMS: usize = 200;
        const CHUNKS: usize = 4;
        let upstream = raw_upstream(|mut peer, _| async move {
            // Keep-alive upstream connections: serve requests until the proxy closes.
            while let Ok(Some(req)) = peer.request().await {
                let id = req.head.target.trim_start_matches("/s/").to_string();
                if peer.send(CHUNKED_HEAD).await.is_err() {
                    return;
                }
                for c in 0..CHUNKS {
                    let payload =
                        format!("data: {{\"stream\":{id},\"n\":{c},\"t\":\"토큰 ✨\"}}\n\n");
                    if peer
                        .send_pieces(&hostile_pieces(payload.as_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if peer.send(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for id in 0..STREAMS {
            let addr = proxy.addr;
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                let mut client = Peer::connect(addr).await.expect("connect");
                client
                    .send(format!("GET /s/{id} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
                    .await
                    .expect("send");
                let resp = client.response("GET").await.expect("response");
                assert_eq!(resp.head.status, 200);
                let body = resp.chunked.expect("chunked");
                assert!(body.is_complete(), "stream {id}: {:?}", body.end);
                let want: Vec<String> = (0..CHUNKS)
                    .map(|c| format!("data: {{\"stream\":{id},\"n\":{c},\"t\":\"토큰 ✨\"}}\n\n"))
                    .collect();
                assert_eq!(body.texts(), want, "stream {id}");
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.expect("a stream task failed");
        }
        assert_eq!(done.load(Ordering::SeqCst), STREAMS);
    })
    .await;
}

#[tokio::test]
async fn trailers_cross_with_the_body() {
    bounded(TEST_LIMIT, async {
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let upstream = raw_upstream(move |mut peer, _| {
            let tx = Arc::clone(&tx);
            async move {
                while let Ok(Some(req)) = peer.request().await {
                    if let Some(tx) = tx.lock().expect("lock").take() {
                        let _ = tx.send(req.chunked);
                    }
                    let _ = peer.send(CHUNKED_HEAD).await;
                    let _ = peer.send(&chunk(b"data: {}\n\n")).await;
                    let _ = peer.send(b"0\r\nX-Usage-Tokens: 12\r\n\r\n").await;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;

        // Request trailers reach the upstream after the last chunk.
        let mut client = proxy.connect().await;
        client
            .send(b"POST /v1/up HTTP/1.1\r\nHost: api.test\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        let body = resp.chunked.expect("chunked");
        assert!(body.is_complete());
        // This client said `TE: trailers`: the response trailer reaches it.
        assert_eq!(body.trailers, vec![(b"X-Usage-Tokens".to_vec(), b"12".to_vec())]);
        let up_body = rx.await.expect("request").expect("a chunked request body");
        assert_eq!(up_body.chunks, vec![bytes::Bytes::from_static(b"abc")]);
        assert_eq!(
            up_body.trailers,
            vec![(b"X-Checksum".to_vec(), b"900150983cd24fb0".to_vec())]
        );

        // A client that did not ask for trailers gets the body without them.
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("GET").await.expect("response");
        let body = resp.chunked.expect("chunked");
        assert!(body.is_complete());
        body.assert_canonical();
        assert_eq!(body.texts(), vec!["data: {}\n\n"]);
        assert!(body.trailers.is_empty(), "trailers sent to a client that did not accept them");
    })
    .await;
}

#[tokio::test]
async fn stream_running_at_the_drain_deadline_is_cut_and_recorded_as_shutdown() {
    bounded(TEST_LIMIT, async {
        // The upstream sends one chunk and then nothing for longer than the drain deadline.
        let upstream = raw_upstream(move |mut peer, _| async move {
            peer.request().await.expect("request");
            peer.send(CHUNKED_HEAD).await.expect("head");
            peer.send(&chunk(b"data: one\n\n")).await.expect("chunk 1");
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.drain_timeout = Duration::from_millis(300);
        let proxy = TestProxy::start(cfg).await;
        let metrics = Arc::clone(&proxy.metrics);
        let stop = proxy.stop.clone();
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let head = client.response_head().await.expect("head");
        assert_eq!(head.status, 200);
        let mut first = Some(stop);
        let body = client
            .chunked_body_with(|i, _| {
                if i == 0 {
                    if let Some(stop) = first.take() {
                        stop.cancel();
                    }
                }
            })
            .await;
        assert!(!body.is_complete(), "a cut stream has no terminating chunk");
        assert_eq!(body.texts(), vec!["data: one\n\n"]);
        assert!(
            !proxy.join().await.expect("run"),
            "the drain did not finish"
        );
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("chunkgate_exchanges_total") && l.contains("outcome=\"shutdown\"")
            })
            .unwrap_or_else(|| panic!("no shutdown outcome in:\n{text}"));
        assert!(line.ends_with(" 1"), "{line}");
    })
    .await;
}
