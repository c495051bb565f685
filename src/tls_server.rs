//! TLS termination settings for client listeners: PEM files to a rustls [`ServerConfig`].
//!
//! Only the `ring` provider is used, TLS 1.2 and 1.3 with rustls' safe defaults, and ALPN
//! offers `http/1.1` alone (chunkgate speaks HTTP/1.1; a client asking only for `h2` fails the
//! handshake rather than being answered in the wrong protocol).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The ALPN protocol chunkgate negotiates.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Load every certificate from a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Load the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key found", path.display()))
}

/// Build the server-side TLS configuration from a PEM certificate chain (leaf first) and its
/// private key, with the `ring` provider and ALPN `http/1.1`. Fails, with a lowercase message
/// naming the file, when a file cannot be read, holds no certificate or key, or the key does
/// not belong to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "{} with {}: {}",
                cert.display(),
                key.display(),
                e.to_string().to_lowercase()
            )
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Pki {
        _dir: tempfile::TempDir,
        ca_pem: String,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        other_key: std::path::PathBuf,
    }

    /// A CA, a `localhost` leaf signed by it, and an unrelated key, written to a temp dir.
    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        let other = rcgen::KeyPair::generate().expect("other key");
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        // Chain: leaf first, then the CA.
        let cert = write("tls.crt", format!("{}{}", leaf.pem(), ca.pem()));
        let key = write("tls.key", leaf_key.serialize_pem());
        let other_key = write("other.key", other.serialize_pem());
        Pki {
            ca_pem: ca.pem(),
            cert,
            key,
            other_key,
            _dir: dir,
        }
    }

    fn client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("add root");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    #[tokio::test]
    async fn server_config_terminates_tls_with_alpn_http11() {
        let pki = pki();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(&pki.cert, &pki.key).expect("config"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("server handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP11));
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("read");
            tls.write_all(b"pong").await.expect("write");
            tls.shutdown().await.expect("close");
            buf
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = client(&pki.ca_pem, &[b"h2", ALPN_HTTP11])
            .connect(name, tcp)
            .await
            .expect("client handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP11));
        tls.write_all(b"ping").await.expect("write");
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply, b"pong");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("server in time")
            .expect("server task");
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn h2_only_client_is_refused() {
        let pki = pki();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config(&pki.cert, &pki.key).expect("config"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            acceptor.accept(tcp).await.is_err()
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let result = client(&pki.ca_pem, &[b"h2"]).connect(name, tcp).await;
        assert!(result.is_err(), "no common protocol: handshake fails");
        assert!(server.await.expect("server task"));
    }

    #[test]
    fn server_config_errors_name_the_file() {
        let pki = pki();
        let missing = pki.cert.with_file_name("missing.crt");
        let err = server_config(&missing, &pki.key).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("missing.crt"),
            "{err}"
        );
        // A key file given as the certificate: no certificate in it.
        let err = server_config(&pki.key, &pki.key).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        // A certificate file given as the key: no key in it.
        let err = server_config(&pki.cert, &pki.cert).unwrap_err();
        assert!(err.contains("no private key"), "{err}");
        // A key that does not belong to the certificate.
        let err = server_config(&pki.cert, &pki.other_key).unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
    }
}
