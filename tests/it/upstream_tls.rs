//! Upstream connections over TLS and their timeouts, on 127.0.0.1, with a test CA made here.
//!
//! Covers: handshake with a private CA (`ca_file`) for a host name and for an IP literal,
//! SNI and ALPN, untrusted and wrongly named certificates, the TLS handshake timeout, the
//! connect timeout (provoked by filling a listener's accept queue), and pooled TLS
//! connections: reuse, and a connection the upstream closed while idle.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chunkgate::config::{PoolConfig, Timeouts, UpstreamConfig, UpstreamUrl};
use chunkgate::upstream::{ConnectErrorKind, Connector, UpstreamPool, UpstreamStream};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// Every test finishes well within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(15);

/// A certificate authority made for one test.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa { cert, key }
    }

    /// A server certificate for `names` (DNS names or IP literals) and its key.
    fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// The CA certificate written to a uniquely named PEM file, removed on drop.
    fn pem_file(&self) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "chunkgate-upstream-tls-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, self.cert.pem()).expect("write ca pem");
        TempFile(path)
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a TLS test server saw of one handshake.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// A TLS server on 127.0.0.1 that reports each handshake, answers each `ping` with `pong`,
/// and closes a connection after `replies` answers (never, if `None`).
async fn tls_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    replies: Option<usize>,
) -> (u16, mpsc::Receiver<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen_tx, seen_rx) = mpsc::channel(16);
    // Spawned on the test's runtime: it ends with the test.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                // A failed handshake (the client rejected us) is part of some tests.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let seen = Seen {
                    sni: conn.server_name().map(str::to_string),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                };
                let _ = seen_tx.send(seen).await;
                let mut answered = 0;
                let mut buf = [0u8; 5];
                while replies.is_none_or(|limit| answered < limit) {
                    if tls.read_exact(&mut buf).await.is_err() || &buf != b"ping\n" {
                        return;
                    }
                    if tls.write_all(b"pong\n").await.is_err() {
                        return;
                    }
                    answered += 1;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, seen_rx)
}

fn upstream(url: &str, ca_file: Option<&TempFile>) -> UpstreamConfig {
    UpstreamConfig {
        url: UpstreamUrl::parse(url).expect("url"),
        weight: 1,
        ca_file: ca_file.map(|f| f.0.clone()),
        inject_headers: Vec::new(),
        strip_prefix: None,
        rewrite_prefix: None,
    }
}

fn timeouts(connect: Duration, tls_handshake: Duration) -> Timeouts {
    Timeouts {
        connect,
        tls_handshake,
        ..Timeouts::default()
    }
}

async fn ping(stream: &mut UpstreamStream) {
    stream.write_all(b"ping\n").await.expect("write");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong\n");
}

async fn limited<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test took too long");
}

#[tokio::test]
async fn handshake_with_private_ca_for_host_name() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["localhost"]);
        let (port, mut seen) = tls_server(chain, key, None).await;
        let ca_file = ca.pem_file();
        let connector = Connector::new(
            &upstream(&format!("https://localhost:{port}"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");

        let mut stream = connector.connect().await.expect("handshake");
        assert!(stream.is_tls());
        assert_eq!(stream.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert!(stream.tcp().nodelay().expect("nodelay"));
        ping(&mut stream).await;

        let seen = seen.recv().await.expect("server saw the handshake");
        assert_eq!(
            seen.sni.as_deref(),
            Some("localhost"),
            "sni from the url host"
        );
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    })
    .await;
}

#[tokio::test]
async fn handshake_with_private_ca_for_ip_literal() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["127.0.0.1"]);
        let (port, mut seen) = tls_server(chain, key, None).await;
        let ca_file = ca.pem_file();
        let connector = Connector::new(
            &upstream(&format!("https://127.0.0.1:{port}/v1"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");

        let mut stream = connector.connect().await.expect("handshake");
        ping(&mut stream).await;
        let seen = seen.recv().await.expect("server saw the handshake");
        // TLS sends no SNI for an IP address; the certificate is checked against the IP.
        assert_eq!(seen.sni, None);
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    })
    .await;
}

#[tokio::test]
async fn untrusted_certificate_fails_with_tls() {
    limited(async {
        let trusted = TestCa::new("trusted ca");
        let other = TestCa::new("some other ca");
        let (chain, key) = other.issue(&["localhost"]);
        let (port, _seen) = tls_server(chain, key, None).await;
        let ca_file = trusted.pem_file();
        let connector = Connector::new(
            &upstream(&format!("https://localhost:{port}"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");

        let err = connector.connect().await.expect_err("untrusted issuer");
        assert_eq!(err.kind(), ConnectErrorKind::Tls);
        assert!(!err.is_timeout());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "upstream https://localhost:{port}: tls handshake failed"
            )),
            "{text}"
        );
        assert!(text.contains("certificate"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn private_ca_is_not_trusted_without_ca_file() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["localhost"]);
        let (port, _seen) = tls_server(chain, key, None).await;
        let connector = Connector::new(
            &upstream(&format!("https://localhost:{port}"), None),
            &Timeouts::default(),
        )
        .expect("connector");
        let err = connector.connect().await.expect_err("webpki roots only");
        assert_eq!(err.kind(), ConnectErrorKind::Tls);
    })
    .await;
}

#[tokio::test]
async fn certificate_for_another_name_fails_with_tls() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["localhost"]);
        let (port, _seen) = tls_server(chain, key, None).await;
        let ca_file = ca.pem_file();
        // Trusted issuer, but the certificate does not name 127.0.0.1.
        let connector = Connector::new(
            &upstream(&format!("https://127.0.0.1:{port}"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");
        let err = connector.connect().await.expect_err("name mismatch");
        assert_eq!(err.kind(), ConnectErrorKind::Tls);
    })
    .await;
}

#[tokio::test]
async fn silent_server_hits_the_handshake_timeout() {
    limited(async {
        // Accepts TCP, then never says a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let ca = TestCa::new("chunkgate test ca");
        let ca_file = ca.pem_file();
        let handshake = Duration::from_millis(300);
        let connector = Connector::new(
            &upstream(&format!("https://127.0.0.1:{port}"), Some(&ca_file)),
            &timeouts(Duration::from_secs(5), handshake),
        )
        .expect("connector");

        let started = Instant::now();
        let err = connector.connect().await.expect_err("no handshake");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), ConnectErrorKind::TlsHandshakeTimeout);
        assert!(err.is_timeout());
        assert!(elapsed >= handshake, "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(err.to_string().contains("tls handshake timed out"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn full_accept_queue_hits_the_connect_timeout() {
    limited(async {
        // A listener that never accepts, with the shortest backlog. Once its accept queue is
        // full, Linux drops further SYNs, so a new connect hangs until its timeout fires.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        let mut queue_full = false;
        for _ in 0..16 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("filler connect failed: {e}"),
                Err(_) => {
                    queue_full = true;
                    break;
                }
            }
        }
        assert!(queue_full, "the accept queue never filled");

        let connect = Duration::from_millis(250);
        let connector = Connector::new(
            &upstream(&format!("http://{addr}"), None),
            &timeouts(connect, Duration::from_secs(5)),
        )
        .expect("connector");
        let started = Instant::now();
        let err = connector.connect().await.expect_err("connect hangs");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), ConnectErrorKind::ConnectTimeout);
        assert!(err.is_timeout());
        assert!(elapsed >= connect, "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert!(err.to_string().contains("connect timed out"), "{err}");
        drop(listener);
    })
    .await;
}

#[tokio::test]
async fn pooled_tls_connection_is_reused() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["localhost"]);
        let (port, mut seen) = tls_server(chain, key, None).await;
        let ca_file = ca.pem_file();
        let connector = Connector::new(
            &upstream(&format!("https://localhost:{port}"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");
        let pool = UpstreamPool::new(connector, &PoolConfig::default());

        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn.stream).await;
        pool.checkin(conn);
        // Long enough for any post-handshake messages (session tickets) to arrive while idle:
        // they are TLS records, not stray bytes, and must not disqualify the connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut conn = pool.checkout().await.expect("checkout again");
        assert!(conn.is_reused());
        ping(&mut conn.stream).await;

        assert!(seen.recv().await.is_some());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), seen.recv())
                .await
                .is_err(),
            "only one handshake"
        );
    })
    .await;
}

#[tokio::test]
async fn pooled_tls_connection_closed_while_idle_is_discarded() {
    limited(async {
        let ca = TestCa::new("chunkgate test ca");
        let (chain, key) = ca.issue(&["localhost"]);
        // One answer per connection, then close_notify and close.
        let (port, mut seen) = tls_server(chain, key, Some(1)).await;
        let ca_file = ca.pem_file();
        let connector = Connector::new(
            &upstream(&format!("https://localhost:{port}"), Some(&ca_file)),
            &Timeouts::default(),
        )
        .expect("connector");
        let pool = UpstreamPool::new(connector, &PoolConfig::default());

        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn.stream).await;
        pool.checkin(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let mut conn = pool.checkout().await.expect("checkout");
        assert!(!conn.is_reused(), "the closed connection was handed out");
        ping(&mut conn.stream).await;
        assert_eq!(pool.open_count(), 1);
        assert!(seen.recv().await.is_some());
        assert!(seen.recv().await.is_some(), "a second handshake");
    })
    .await;
}
