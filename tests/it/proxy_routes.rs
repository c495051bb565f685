//! Routes and operations end to end: prefix stripping and rewriting, header injection that
//! never reaches the client, inbound bearer tokens, and TLS termination on the listener.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chunkgate::config::{Config, ListenerConfig, RouteConfig, TlsServerConfig};
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(10);
const SECRET: &str = "sk-injected-secret-0123456789";

/// A hyper upstream that answers with what it saw: the path, then `name=value` lines for the
/// headers the tests look at.
async fn echo_upstream() -> Upstream {
    hyper_upstream(|req: Request<hyper::body::Incoming>| async move {
        let mut seen = format!("path={}\n", req.uri());
        for name in ["authorization", "x-forwarded-proto", "x-team", "host"] {
            for v in req.headers().get_all(name) {
                seen.push_str(&format!("{name}={}\n", v.to_str().unwrap_or("?")));
            }
        }
        response(200, &[("content-type", "text/plain")], TestBody::full(seen))
    })
    .await
}

fn route(prefix: &str, group: &str) -> RouteConfig {
    RouteConfig {
        prefix: prefix.into(),
        group: group.into(),
        strip_prefix: prefix != "/",
        rewrite_prefix: String::new(),
        inject_headers: Vec::new(),
        require_bearer: Vec::new(),
        stream: Default::default(),
        capture: Default::default(),
    }
}

/// Two groups, `a` and `b`, each one upstream, and no route yet.
fn two_groups(a: &Upstream, b: &Upstream) -> Config {
    let mut cfg = config(&[a.addr]);
    let mut second = cfg.groups[0].clone();
    second.name = "b".into();
    second.upstreams[0].url = http_url(b.addr);
    cfg.groups[0].name = "a".into();
    cfg.groups.push(second);
    cfg.routes.clear();
    cfg
}

async fn get(proxy: &TestProxy, target: &str, extra: &str) -> RawResponse {
    let mut peer = proxy.connect().await;
    let req = format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\n{extra}\r\n");
    peer.send(req.as_bytes()).await.expect("send");
    peer.response("GET").await.expect("response")
}

#[tokio::test]
async fn routes_strip_and_rewrite_prefixes() {
    bounded(LIMIT, async {
        let a = echo_upstream().await;
        let b = echo_upstream().await;
        let mut cfg = two_groups(&a, &b);
        cfg.routes.push(route("/openai/", "a"));
        let mut local = route("/local/", "b");
        local.rewrite_prefix = "/api".into();
        cfg.routes.push(local);
        let proxy = TestProxy::start(cfg).await;

        let r = get(&proxy, "/openai/v1/models?limit=2", "").await;
        assert_eq!(r.head.status, 200);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains("path=/v1/models?limit=2\n"), "{body}");
        assert!(
            body.contains(&format!("host=127.0.0.1:{}\n", a.addr.port())),
            "{body}"
        );

        let r = get(&proxy, "/local/v1/chat", "").await;
        assert_eq!(r.head.status, 200);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains("path=/api/v1/chat\n"), "{body}");
        assert_eq!(a.requested(), 1);
        assert_eq!(b.requested(), 1);

        // No route: 404 with the JSON error, nothing forwarded.
        let r = get(&proxy, "/other/v1", "").await;
        assert_eq!(r.head.status, 404);
        assert_eq!(r.error_json().1, "not_found");
        // `/openaix` is not under `/openai/`.
        let r = get(&proxy, "/openaix", "").await;
        assert_eq!(r.head.status, 404);
        assert_eq!(a.requested() + b.requested(), 2);
    })
    .await;
}

#[tokio::test]
async fn injected_header_reaches_upstream_and_never_the_client() {
    bounded(LIMIT, async {
        let a = echo_upstream().await;
        let b = echo_upstream().await;
        let mut cfg = two_groups(&a, &b);
        let mut r = route("/openai/", "a");
        r.inject_headers = vec![
            ("Authorization".into(), format!("Bearer {SECRET}")),
            ("X-Team".into(), "blue".into()),
        ];
        cfg.routes.push(r);
        let proxy = TestProxy::start(cfg).await;

        // The client's own Authorization and X-Team are replaced, not appended to.
        let resp = get(
            &proxy,
            "/openai/v1/models",
            "Authorization: Bearer client-token\r\nX-Team: red\r\n",
        )
        .await;
        assert_eq!(resp.head.status, 200);
        let seen = String::from_utf8_lossy(&resp.body).into_owned();
        // The upstream echoes what it received; the proxy itself adds nothing of the request
        // to the response. Strip the echo and check the rest of the answer.
        assert!(seen.contains(&format!("authorization=Bearer {SECRET}\n")), "{seen}");
        assert!(seen.contains("x-team=blue\n"), "{seen}");
        assert!(!seen.contains("client-token"), "{seen}");
        assert!(!seen.contains("x-team=red"), "{seen}");
        let head = String::from_utf8_lossy(&resp.head.raw).into_owned();
        assert!(!head.contains(SECRET), "the secret leaked into the response head: {head}");
        assert!(!head.to_ascii_lowercase().contains("authorization"), "{head}");

        // An error answered by the proxy itself carries no request header either.
        let mut peer = proxy.connect().await;
        peer.send(b"GET /openai/v1 HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .expect("send");
        let err = peer.response("GET").await.expect("response");
        assert_eq!(err.head.status, 400);
        assert!(!String::from_utf8_lossy(&err.head.raw).contains(SECRET));
        assert!(!String::from_utf8_lossy(&err.body).contains(SECRET));
    })
    .await;
}

#[tokio::test]
async fn inbound_bearer_tokens_are_required_and_not_forwarded() {
    bounded(LIMIT, async {
        let a = echo_upstream().await;
        let b = echo_upstream().await;
        let mut cfg = two_groups(&a, &b);
        let mut r = route("/", "a");
        r.require_bearer = vec!["app-token-1".into(), "app-token-2".into()];
        cfg.routes.push(r);
        let proxy = TestProxy::start(cfg).await;

        for extra in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Basic app-token-1\r\n",
        ] {
            let resp = get(&proxy, "/v1/models", extra).await;
            assert_eq!(resp.head.status, 401, "{extra:?}");
            let (kind, code) = resp.error_json();
            assert_eq!(
                (kind.as_str(), code.as_str()),
                ("authentication_error", "unauthorized")
            );
        }
        assert_eq!(
            a.requested(),
            0,
            "unauthorized requests must not be forwarded"
        );

        let resp = get(
            &proxy,
            "/v1/models",
            "Authorization: Bearer app-token-2\r\n",
        )
        .await;
        assert_eq!(resp.head.status, 200);
        let seen = String::from_utf8_lossy(&resp.body).into_owned();
        assert!(
            !seen.contains("authorization="),
            "the inbound token was forwarded: {seen}"
        );
        assert_eq!(a.requested(), 1);
    })
    .await;
}

/// A CA and a certificate for `localhost`/`127.0.0.1` in PEM files, plus the CA for clients.
struct ServerPki {
    ca: CertificateDer<'static>,
    cert: tempfile::NamedTempFile,
    key: tempfile::NamedTempFile,
}

fn server_pki() -> ServerPki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chunkgate listener test ca");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let pem_file = |prefix: &str, text: String| {
        let mut f = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(".pem")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write pem");
        f.flush().expect("flush pem");
        f
    };
    ServerPki {
        ca: ca.der().clone(),
        cert: pem_file("chunkgate-listener-cert-", leaf.pem()),
        key: pem_file("chunkgate-listener-key-", leaf_key.serialize_pem()),
    }
}

/// An upstream that needs its own key: 401 unless `Authorization: Bearer <key>`, and then
/// `status` with its name; every Authorization and X-Team it sees is kept in `seen`.
async fn keyed_upstream(
    key: &'static str,
    status: u16,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> Upstream {
    hyper_upstream(move |req: Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let auth: Vec<String> = req
                .headers()
                .get_all("authorization")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect();
            let team = req
                .headers()
                .get("x-team")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let path = req.uri().to_string();
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let mut line = format!("path={path} auth={auth:?} team={team:?}");
            if let Ok(b) = &body {
                line.push_str(&format!(" body={}", String::from_utf8_lossy(b)));
            }
            seen.lock().expect("lock").push(line);
            if auth != [format!("Bearer {key}")] {
                return response(401, &[], TestBody::full("wrong key"));
            }
            response(
                status,
                &[("content-type", "text/plain")],
                TestBody::full(key),
            )
        }
    })
    .await
}

fn keyed(
    url: chunkgate::config::UpstreamUrl,
    weight: u32,
    key: &str,
) -> chunkgate::config::UpstreamConfig {
    let mut u = chunkgate::config::UpstreamConfig::new(url);
    u.weight = weight;
    u.inject_headers = vec![("Authorization".into(), format!("Bearer {key}"))];
    u
}

const KEY_A: &str = "sk-account-a-0001";
const KEY_B: &str = "sk-account-b-0002";
const POST_BODY: &str = "{\"model\":\"m\"}";

fn post(token: &str) -> String {
    format!(
        "POST /openai/v1/chat HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{POST_BODY}",
        POST_BODY.len()
    )
}

/// A route that requires a client token, over a group whose upstreams want different keys.
fn failover_config(
    first: chunkgate::config::UpstreamConfig,
    second: chunkgate::config::UpstreamConfig,
) -> Config {
    let mut cfg = config(&[]);
    // The first upstream weighs far more, so it is almost always tried first.
    cfg.groups[0].upstreams = vec![first, second];
    let mut r = route("/openai/", "default");
    r.require_bearer = vec!["client-token".into()];
    r.inject_headers = vec![
        ("Authorization".into(), "Bearer sk-route-default".into()),
        ("X-Team".into(), "blue".into()),
    ];
    r.rewrite_prefix = "/route".into();
    cfg.routes = vec![r];
    cfg
}

#[tokio::test]
async fn failover_sends_each_upstream_its_own_key() {
    bounded(LIMIT, async {
        let seen_a = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_b = Arc::new(std::sync::Mutex::new(Vec::new()));
        let a = keyed_upstream(KEY_A, 503, Arc::clone(&seen_a)).await;
        let b = keyed_upstream(KEY_B, 200, Arc::clone(&seen_b)).await;
        let mut second = keyed(http_url(b.addr), 1, KEY_B);
        second.rewrite_prefix = Some("/b".into());
        let proxy =
            TestProxy::start(failover_config(keyed(http_url(a.addr), 100, KEY_A), second)).await;
        for i in 0..4 {
            let mut peer = proxy.connect().await;
            peer.send(post("client-token").as_bytes())
                .await
                .expect("send");
            let resp = peer.response("POST").await.expect("response");
            assert_eq!(resp.head.status, 200, "request {i}");
            assert_eq!(resp.body, KEY_B.as_bytes(), "request {i}");
        }
        let seen_a = seen_a.lock().expect("lock").clone();
        let seen_b = seen_b.lock().expect("lock").clone();
        assert!(!seen_a.is_empty(), "the 503 upstream was tried");
        assert_eq!(seen_b.len(), 4, "{seen_b:?}");
        let expect_a = format!(
            "path=/route/v1/chat auth=[\"Bearer {KEY_A}\"] team=Some(\"blue\") body={POST_BODY}"
        );
        let expect_b = format!(
            "path=/b/v1/chat auth=[\"Bearer {KEY_B}\"] team=Some(\"blue\") body={POST_BODY}"
        );
        for line in &seen_a {
            assert_eq!(line, &expect_a, "the first upstream sees its own key only");
        }
        for line in &seen_b {
            assert_eq!(
                line, &expect_b,
                "the retry carries the second key only, and the body"
            );
        }
        // Neither saw the client's token or the route's default key.
        let all = format!("{seen_a:?}{seen_b:?}");
        assert!(
            !all.contains("client-token") && !all.contains("sk-route-default"),
            "{all}"
        );
    })
    .await;
}

#[tokio::test]
async fn failover_from_a_down_upstream_uses_the_second_key() {
    bounded(LIMIT, async {
        let seen_b = Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = keyed_upstream(KEY_B, 200, Arc::clone(&seen_b)).await;
        let down = keyed(http_url(closed_port().await), 100, KEY_A);
        let proxy =
            TestProxy::start(failover_config(down, keyed(http_url(b.addr), 1, KEY_B))).await;
        for i in 0..3 {
            let mut peer = proxy.connect().await;
            peer.send(post("client-token").as_bytes())
                .await
                .expect("send");
            let resp = peer.response("POST").await.expect("response");
            assert_eq!(resp.head.status, 200, "request {i}");
            assert_eq!(resp.body, KEY_B.as_bytes(), "request {i}");
        }
        let seen_b = seen_b.lock().expect("lock").clone();
        assert_eq!(seen_b.len(), 3);
        for line in &seen_b {
            assert!(
                line.contains(&format!("auth=[\"Bearer {KEY_B}\"]")),
                "{line}"
            );
            assert!(
                !line.contains(KEY_A) && !line.contains("client-token"),
                "{line}"
            );
        }
        // A wrong client token never reaches an upstream.
        let mut peer = proxy.connect().await;
        peer.send(post("wrong-token").as_bytes())
            .await
            .expect("send");
        assert_eq!(
            peer.response("POST").await.expect("response").head.status,
            401
        );
        assert_eq!(seen_b.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn tls_termination_streams_chunks_to_a_tls_client() {
    bounded(LIMIT, async {
        let pki = server_pki();
        // An upstream that streams three chunks, each written in two pieces.
        let upstream = raw_upstream(|mut peer, _| async move {
            let head = peer.request_head().await.expect("request head");
            assert_eq!(head.get("x-forwarded-proto"), Some("https"));
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .expect("head");
            for event in ["data: 안녕\n\n", "data: 🦀\n\n", "data: [DONE]\n\n"] {
                let wire = chunk(event.as_bytes());
                let (a, b) = wire.split_at(wire.len() / 2 + 1);
                peer.send_pieces(&[a, b]).await.expect("chunk");
            }
            peer.send(b"0\r\n\r\n").await.expect("end");
        })
        .await;
        let mut cfg = config(&[upstream.addr]);
        cfg.listeners = vec![ListenerConfig {
            addr: "127.0.0.1:0".parse().expect("addr"),
            tls: Some(TlsServerConfig {
                cert: pki.cert.path().to_path_buf(),
                key: pki.key.path().to_path_buf(),
            }),
            max_connections: 100,
        }];
        let proxy = TestProxy::start(cfg).await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).expect("trust the test ca");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("tls handshake with the listener");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let req = Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .body(TestBody::full(Bytes::from_static(b"{\"stream\":true}")))
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                frames.push(data);
            }
        }
        let all: Vec<u8> = frames.concat();
        assert_eq!(
            String::from_utf8(all).expect("utf-8"),
            "data: 안녕\n\ndata: 🦀\n\ndata: [DONE]\n\n"
        );
    })
    .await;
}

#[tokio::test]
async fn head_response_keeps_content_length_and_has_no_body() {
    bounded(LIMIT, async {
        let upstream = raw_upstream(|mut peer, _| async move {
            while let Ok(head) = peer.request_head().await {
                let answer: &[u8] = if head.method == "HEAD" {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                if peer.send(answer).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = TestProxy::to(&[upstream.addr]).await;
        let mut client = proxy.connect().await;
        client
            .send(b"HEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let resp = client.response("HEAD").await.expect("head response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.head.get("content-length"), Some("42"));
        assert!(!resp.head.is_chunked());
        // No body bytes followed: the same connection carries the next exchange.
        client
            .send(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("send");
        let next = client.response("GET").await.expect("next response");
        assert_eq!(next.body, b"ok");
        assert_eq!(upstream.accepted(), 1);
    })
    .await;
}
