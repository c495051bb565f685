//! Hot reload: a new configuration applies to new exchanges while streams in flight finish on
//! the one they started with; unchanged upstreams keep their pools; an invalid file is refused
//! with its file:line:key error, counted, and the running configuration stays.

use std::sync::Arc;
use std::time::Duration;

use chunkgate::config::{Config, UpstreamGroup};

use crate::common::*;
use crate::llm_streams::metric;

/// An upstream that streams `events` events 40 ms apart, each naming `who`.
async fn streaming(who: &'static str, events: usize) -> Upstream {
    raw_upstream(move |mut peer, _| async move {
        while let Ok(Some(_)) = peer.request().await {
            if peer.send(CHUNKED_HEAD).await.is_err() {
                return;
            }
            for n in 0..events {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                let event = format!("data: {who} {n}\n\n");
                if peer.send(&chunk(event.as_bytes())).await.is_err() {
                    return;
                }
            }
            if peer.send(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Groups `a` and `b`; routes `/a/` to `a` and `/` to `root`.
fn two_groups(a: &Upstream, b: &Upstream, root: &str) -> Config {
    let mut cfg = config(&[a.addr]);
    cfg.groups[0].name = "a".into();
    cfg.groups.push(UpstreamGroup {
        name: "b".into(),
        upstreams: config(&[b.addr]).groups[0].upstreams.clone(),
    });
    let mut route_a = cfg.routes[0].clone();
    route_a.prefix = "/a/".into();
    route_a.group = "a".into();
    route_a.strip_prefix = true;
    cfg.routes[0].group = root.into();
    cfg.routes.push(route_a);
    cfg
}

async fn get(proxy: &TestProxy, path: &str) -> chunkgate::harness::peer::RawResponse {
    let mut c = proxy.connect().await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    c.send(req.as_bytes()).await.expect("send");
    c.response("GET").await.expect("response")
}

#[tokio::test]
async fn streams_in_flight_finish_on_their_config_and_new_requests_take_the_new_route() {
    bounded(Duration::from_secs(20), async {
        const STREAMS: usize = 100;
        const EVENTS: usize = 10;
        let a = streaming("a", EVENTS).await;
        let b = streaming("b", 1).await;
        let proxy = TestProxy::start(two_groups(&a, &b, "a")).await;

        let mut clients = Vec::new();
        for _ in 0..STREAMS {
            let mut c = proxy.connect().await;
            c.send(b"GET /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .expect("send");
            clients.push(c);
        }
        for c in &mut clients {
            assert_eq!(c.response_head().await.expect("head").status, 200);
        }
        // Every stream is running on the first configuration: `/` goes to `a`.
        proxy
            .reloader
            .install(two_groups(&a, &b, "b"))
            .expect("the new configuration installs");
        let fresh = get(&proxy, "/v1/chat/completions").await;
        assert_eq!(
            fresh.body, b"data: b 0\n\n",
            "a new request takes the new route"
        );

        let mut cut = 0;
        for mut c in clients {
            let body = c.chunked_body().await;
            let want: Vec<String> = (0..EVENTS).map(|n| format!("data: a {n}\n\n")).collect();
            if !body.is_complete() || body.texts() != want {
                cut += 1;
            }
        }
        assert_eq!(cut, 0, "streams cut by the reload");

        // `a` is unchanged: its pool (the streams' connections, now idle) is kept.
        let accepted = a.accepted();
        let kept = get(&proxy, "/a/x").await;
        assert_eq!(kept.body.len(), "data: a 0\n\n".len() * EVENTS);
        assert_eq!(
            a.accepted(),
            accepted,
            "a pooled connection of `a` was reused"
        );
        let text = proxy.metrics.encode();
        assert_eq!(
            metric(&text, "chunkgate_config_reloads_total{result=\"ok\"}"),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_its_line_and_the_running_config_stays() {
    bounded(TEST_LIMIT, async {
        let a = streaming("a", 1).await;
        let b = streaming("b", 1).await;
        let dir = tempfile::tempdir().unwrap();
        // A port for the admin listener (the file cannot say `:0` twice).
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = dir.path().join("chunkgate.toml");
        let file = |root: &str, extra: &str| {
            format!(
                "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:{admin_port}\"\n\n[log]\naccess_log = false\n\n[[group]]\nname = \"a\"\n[[group.upstream]]\nurl = \"http://{}\"\n\n[[group]]\nname = \"b\"\n[[group.upstream]]\nurl = \"http://{}\"\n\n[[route]]\nprefix = \"/\"\ngroup = \"{root}\"\n{extra}",
                a.addr, b.addr
            )
        };
        std::fs::write(&path, file("a", "")).unwrap();
        let cfg = Config::from_file(&path).expect("valid");
        let mut proxy = chunkgate::proxy::Proxy::bind(cfg).await.expect("bind");
        let source_path = path.clone();
        proxy.set_config_source(Arc::new(move || {
            Config::from_file(&source_path).map_err(|e| e.to_string())
        }));
        let addr = proxy.local_addr();
        let admin = proxy.admin_addr().expect("admin");
        let metrics = proxy.metrics();
        let stop = proxy.shutdown_token();
        let task = tokio::spawn(proxy.run_drained());
        let ask = |path: &'static str| async move {
            let mut c = chunkgate::harness::peer::Peer::connect(addr).await.unwrap();
            c.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                .await
                .unwrap();
            c.response("GET").await.unwrap().body
        };
        let reload = || async move {
            let mut c = chunkgate::harness::peer::Peer::connect(admin).await.unwrap();
            c.send(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let r = c.response("POST").await.unwrap();
            (r.head.status, String::from_utf8(r.body).unwrap())
        };

        // Line 22 names a group that does not exist.
        std::fs::write(&path, file("nope", "")).unwrap();
        let (status, body) = reload().await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("chunkgate.toml:22"), "file:line in {body}");
        assert!(body.contains("route[0].group"), "the key in {body}");
        assert_eq!(ask("/x").await, b"data: a 0\n\n", "the running configuration stays");
        let text = metrics.encode();
        assert_eq!(metric(&text, "chunkgate_config_reloads_total{result=\"error\"}"), 1);

        std::fs::write(&path, file("b", "")).unwrap();
        let (status, body) = reload().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ask("/x").await, b"data: b 0\n\n");
        stop.cancel();
        task.await.unwrap().unwrap();
    })
    .await;
}
