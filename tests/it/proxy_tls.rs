//! TLS upstreams: a CA and a server certificate made in the test (rcgen), a tokio-rustls
//! upstream, the proxy trusting the CA through `ca_file`. Chunks stay exact across TLS records.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use chunkgate::config::{Config, UpstreamUrl};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chunkgate test ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("self-signed ca");

    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params
        .extended_key_usages
        .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf signed by the ca");
    Pki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn acceptor(pki: &Pki) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .expect("server certificate");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(cfg))
}

/// Write the CA to a unique temporary file (removed when the handle drops).
fn ca_file(pki: &Pki) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("chunkgate-test-ca-")
        .suffix(".pem")
        .tempfile()
        .expect("temp file");
    f.write_all(pki.ca_pem.as_bytes()).expect("write ca");
    f.flush().expect("flush ca");
    f
}

/// A proxy in front of `https://{host}:{port}`, trusting `ca` when given.
fn tls_config(host: &str, port: u16, ca: Option<&tempfile::NamedTempFile>) -> Config {
    let mut cfg = config(&[]);
    let url = UpstreamUrl::parse(&format!("https://{host}:{port}")).expect("https url");
    cfg.groups[0].upstreams = vec![chunkgate::config::UpstreamConfig {
        url,
        weight: 1,
        ca_file: ca.map(|f| f.path().to_path_buf()),
        inject_headers: Vec::new(),
        strip_prefix: None,
        rewrite_prefix: None,
    }];
    cfg.retry.max_attempts = 1;
    cfg
}

/// A TLS upstream that answers every request with the events as one chunk each, every chunk
/// written in hostile pieces, each piece flushed as its own TLS record.
async fn tls_sse_upstream(
    acceptor: TlsAcceptor,
    events: Vec<String>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut peer = Peer::new(tls);
                loop {
                    // Read one body-less request head.
                    if peer.request_head().await.is_err() {
                        return;
                    }
                    let mut pieces = vec![CHUNKED_HEAD.to_vec()];
                    for e in &events {
                        pieces.extend(hostile_pieces(e.as_bytes()));
                    }
                    pieces.push(b"0\r\n\r\n".to_vec());
                    if peer.send_pieces(&pieces).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tls_upstream_by_name_streams_exact_chunks() {
    bounded(TEST_LIMIT, async {
        let pki = make_pki();
        let ca = ca_file(&pki);
        let events = sse_events();
        let (addr, task) = tls_sse_upstream(acceptor(&pki), events.clone()).await;
        let proxy = TestProxy::start(tls_config("localhost", addr.port(), Some(&ca))).await;
        for round in 0..2 {
            let mut client = proxy.connect().await;
            client
                .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
                .await
                .expect("send");
            let resp = client.response("GET").await.expect("response");
            assert_eq!(resp.head.status, 200, "round {round}");
            let body = resp.chunked.expect("chunked");
            assert!(body.is_complete(), "round {round}: {:?}", body.end);
            body.assert_canonical();
            assert_eq!(body.texts(), events, "round {round}");
        }
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn tls_upstream_by_ip_carries_a_chunked_request_to_hyper() {
    bounded(TEST_LIMIT, async {
        let pki = make_pki();
        let ca = ca_file(&pki);
        let acceptor = acceptor(&pki);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let sni_path = req.uri().path().to_string();
                        let body = collect_body(req.into_body()).await.map(|b| b.to_vec());
                        let mut answer = sni_path.into_bytes();
                        answer.push(b' ');
                        answer.extend(body.unwrap_or_else(|_| b"<broken>".to_vec()));
                        Ok::<_, std::convert::Infallible>(response(200, &[], TestBody::full(Bytes::from(answer))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let proxy = TestProxy::start(tls_config("127.0.0.1", addr.port(), Some(&ca))).await;
        let mut client = proxy.connect().await;
        client
            .send_pieces(&[
                &b"POST /v1/upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"3\r\nabc\r\n",
                b"5\r\n",
                b"def",
                b"gh\r\n",
                b"2\r\nij\r\n0\r\n\r\n",
            ])
            .await
            .expect("send");
        let resp = client.response("POST").await.expect("response");
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.body, b"/v1/upload abcdefghij");
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn tls_upstream_with_untrusted_certificate_is_502() {
    bounded(TEST_LIMIT, async {
        let pki = make_pki();
        let (addr, task) = tls_sse_upstream(acceptor(&pki), sse_events()).await;
        // No ca_file: the test CA is not among the webpki roots.
        let proxy = TestProxy::start(tls_config("localhost", addr.port(), None)).await;
        let mut client = proxy.connect().await;
        client
            .send(b"GET /v1/stream HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .await
            .expect("send");
        let resp = tokio::time::timeout(Duration::from_secs(5), client.response("GET"))
            .await
            .expect("an answer")
            .expect("a response");
        assert_eq!(resp.head.status, 502);
        let (kind, _) = resp.error_json();
        assert_eq!(kind, "upstream_error");
        task.abort();
    })
    .await;
}
