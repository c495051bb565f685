//! Opening connections to an upstream: DNS, TCP and TLS, each bounded by its timeout.
//!
//! A [`Connector`] is built once per upstream from its [`UpstreamConfig`]: it holds the
//! upstream's address, the TLS client configuration (webpki roots plus the upstream's
//! `ca_file`, ALPN `http/1.1`, SNI from the URL host) and the connect and handshake timeouts.
//! [`Connector::connect`] then yields an [`UpstreamStream`], plain TCP or TLS, with
//! `TCP_NODELAY` set, or a [`ConnectError`] whose [`ConnectErrorKind`] says what failed:
//!
//! | kind | cause |
//! |---|---|
//! | `Resolve` | the host name did not resolve to any address |
//! | `Refused` | every address refused the TCP connection |
//! | `ConnectTimeout` | name resolution and TCP connect together took longer than `timeouts.connect` |
//! | `TlsHandshakeTimeout` | the TLS handshake took longer than `timeouts.tls_handshake` |
//! | `Tls` | the TLS handshake failed (untrusted certificate, wrong name, protocol error, peer hung up) |
//! | `Io` | any other socket error |
//!
//! Only the `ring` crypto provider is used, passed explicitly, so no process-wide default
//! provider has to be installed.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Timeouts, UpstreamConfig, UpstreamUrl};

/// With several addresses for a host, the least time one address gets before the next is
/// tried (within the overall connect timeout).
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The ALPN protocol chunkgate offers to TLS upstreams: it speaks HTTP/1.1 only.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// A connection to an upstream, plain TCP or TLS over TCP.
///
/// Implements [`AsyncRead`] and [`AsyncWrite`], forwarding vectored writes to the inner
/// stream so a chunk's size line, payload and CRLF leave in one write.
pub enum UpstreamStream {
    /// Plain TCP (`http://` upstream).
    Tcp(TcpStream),
    /// TLS over TCP (`https://` upstream).
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The underlying TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Tcp(s) => s,
            UpstreamStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// The upstream's socket address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The ALPN protocol the upstream agreed to, for TLS connections that negotiated one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            UpstreamStream::Tcp(_) => None,
            UpstreamStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_tls() { "Tls" } else { "Tcp" };
        let mut d = f.debug_struct("UpstreamStream");
        d.field("kind", &kind);
        if let Ok(peer) = self.peer_addr() {
            d.field("peer", &peer);
        }
        d.finish()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Tcp(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl UpstreamStream {
    /// Split into a read half and a write half that can be used at the same time. A TCP
    /// stream splits without a lock, and its read half can wait for input without a buffer
    /// ([`UpstreamRead::poll_read_ready`]).
    pub fn into_split(self) -> (UpstreamRead, UpstreamWrite) {
        match self {
            UpstreamStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpstreamRead::Tcp(r), UpstreamWrite::Tcp(w))
            }
            tls @ UpstreamStream::Tls(_) => {
                let (r, w) = tokio::io::split(tls);
                (UpstreamRead::Tls(r), UpstreamWrite::Tls(w))
            }
        }
    }
}

/// The read half of an [`UpstreamStream`] (see [`UpstreamStream::into_split`]).
#[derive(Debug)]
pub enum UpstreamRead {
    /// Of a plain TCP stream.
    Tcp(tokio::net::tcp::OwnedReadHalf),
    /// Of a TLS stream.
    Tls(tokio::io::ReadHalf<UpstreamStream>),
}

/// The write half of an [`UpstreamStream`]. Dropping a TCP write half shuts the stream's
/// sending side down.
#[derive(Debug)]
pub enum UpstreamWrite {
    /// Of a plain TCP stream.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Of a TLS stream.
    Tls(tokio::io::WriteHalf<UpstreamStream>),
}

impl UpstreamRead {
    /// Put the stream back together; `None` if the halves are not of the same stream.
    pub fn unsplit(self, w: UpstreamWrite) -> Option<UpstreamStream> {
        match (self, w) {
            (UpstreamRead::Tcp(r), UpstreamWrite::Tcp(w)) => {
                r.reunite(w).ok().map(UpstreamStream::Tcp)
            }
            (UpstreamRead::Tls(r), UpstreamWrite::Tls(w)) if r.is_pair_of(&w) => Some(r.unsplit(w)),
            _ => None,
        }
    }

    /// Ready once a read may find input, without reading. Only a TCP half can tell: a TLS
    /// half is always ready (its session may hold decrypted bytes), see
    /// [`UpstreamRead::waits_without_buffer`].
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            UpstreamRead::Tcp(r) => r.as_ref().poll_read_ready(cx),
            UpstreamRead::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    /// Whether [`UpstreamRead::poll_read_ready`] really waits for input.
    pub fn waits_without_buffer(&self) -> bool {
        matches!(self, UpstreamRead::Tcp(_))
    }
}

impl AsyncRead for UpstreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamRead::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            UpstreamRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWrite::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            UpstreamWrite::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWrite::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            UpstreamWrite::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamWrite::Tcp(w) => w.is_write_vectored(),
            UpstreamWrite::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            UpstreamWrite::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            UpstreamWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// What went wrong while opening an upstream connection.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectErrorKind {
    /// The host name did not resolve, or resolved to no address.
    Resolve,
    /// The upstream refused the TCP connection.
    Refused,
    /// Resolution and TCP connect did not finish within `timeouts.connect`.
    ConnectTimeout,
    /// The TLS handshake did not finish within `timeouts.tls_handshake`.
    TlsHandshakeTimeout,
    /// The TLS handshake failed: certificate not trusted or not valid for the host, protocol
    /// error, or the upstream closed the connection during the handshake.
    Tls,
    /// Any other socket error.
    Io,
}

impl ConnectErrorKind {
    /// A short, stable, lowercase label for metrics and logs (`connect_timeout`, `tls`, ...).
    pub fn as_label(self) -> &'static str {
        match self {
            ConnectErrorKind::Resolve => "resolve",
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::ConnectTimeout => "connect_timeout",
            ConnectErrorKind::TlsHandshakeTimeout => "tls_handshake_timeout",
            ConnectErrorKind::Tls => "tls",
            ConnectErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectErrorKind::Resolve => "name resolution failed",
            ConnectErrorKind::Refused => "connection refused",
            ConnectErrorKind::ConnectTimeout => "connect timed out",
            ConnectErrorKind::TlsHandshakeTimeout => "tls handshake timed out",
            ConnectErrorKind::Tls => "tls handshake failed",
            ConnectErrorKind::Io => "connect failed",
        })
    }
}

/// A failure to open a connection to an upstream; its Display names the upstream.
#[derive(Debug)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    upstream: String,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Io(io::Error),
    Text(String),
}

impl ConnectError {
    fn io(kind: ConnectErrorKind, upstream: &str, err: io::Error) -> ConnectError {
        ConnectError {
            kind,
            upstream: upstream.to_string(),
            detail: Detail::Io(err),
        }
    }

    fn text(kind: ConnectErrorKind, upstream: &str, text: String) -> ConnectError {
        ConnectError {
            kind,
            upstream: upstream.to_string(),
            detail: Detail::Text(text),
        }
    }

    /// What failed.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// Whether a timeout fired (connect or TLS handshake): callers answer 504 rather than 502.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ConnectErrorKind::ConnectTimeout | ConnectErrorKind::TlsHandshakeTimeout
        )
    }

    /// The upstream this error is about, as `scheme://authority`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream {}: {}", self.upstream, self.kind)?;
        match &self.detail {
            Detail::Io(e) => write!(f, ": {e}"),
            Detail::Text(t) if t.is_empty() => Ok(()),
            Detail::Text(t) => write!(f, ": {t}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.detail {
            Detail::Io(e) => Some(e),
            Detail::Text(_) => None,
        }
    }
}

/// Opens connections to one upstream. Cheap to clone (the TLS configuration is shared).
#[derive(Clone)]
pub struct Connector {
    url: UpstreamUrl,
    /// `scheme://authority`, for errors and logs.
    name: Arc<str>,
    tls: Option<TlsSetup>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

#[derive(Clone)]
struct TlsSetup {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("upstream", &self.name)
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Connector {
    /// Build the connector for one upstream.
    ///
    /// For `https://` upstreams this builds the TLS client configuration: the webpki roots,
    /// plus every certificate in the upstream's `ca_file` (PEM) when set; ALPN `http/1.1`;
    /// server name (SNI and certificate check) from the URL host, which may be an IP literal
    /// (then no SNI is sent and the certificate must name the IP address).
    ///
    /// Errors (lowercase, naming the file or host) when the CA file cannot be read, holds no
    /// certificate or a certificate rustls rejects, or the host is not a valid server name.
    pub fn new(upstream: &UpstreamConfig, timeouts: &Timeouts) -> Result<Connector, String> {
        let url = upstream.url.clone();
        let scheme = if url.tls { "https" } else { "http" };
        let name: Arc<str> = Arc::from(format!("{scheme}://{}", url.authority()));
        let tls = if url.tls {
            Some(build_tls(upstream)?)
        } else {
            None
        };
        Ok(Connector {
            url,
            name,
            tls,
            connect_timeout: timeouts.connect,
            handshake_timeout: timeouts.tls_handshake,
        })
    }

    /// The upstream's URL.
    pub fn url(&self) -> &UpstreamUrl {
        &self.url
    }

    /// The upstream as `scheme://authority`, as named in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open a new connection: resolve the host (`tokio::net::lookup_host`), connect over TCP
    /// to the addresses in turn until one accepts (each gets an equal share of the time left,
    /// at least two seconds), all within `timeouts.connect`; set
    /// `TCP_NODELAY`; then, for `https://`, run the TLS handshake within
    /// `timeouts.tls_handshake`.
    ///
    /// Cancel safety: dropping the future abandons the attempt and closes any half-open socket.
    pub async fn connect(&self) -> Result<UpstreamStream, ConnectError> {
        let tcp = self.connect_tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Tcp(tcp));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(ConnectError::io(ConnectErrorKind::Tls, &self.name, e)),
            Err(_) => Err(ConnectError::text(
                ConnectErrorKind::TlsHandshakeTimeout,
                &self.name,
                format!("no handshake within {:?}", self.handshake_timeout),
            )),
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let now = Instant::now();
        // An absurdly long timeout means "no timeout", not an overflow.
        let deadline = now
            .checked_add(self.connect_timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        let timed_out = || {
            ConnectError::text(
                ConnectErrorKind::ConnectTimeout,
                &self.name,
                format!("no connection within {:?}", self.connect_timeout),
            )
        };
        let lookup = tokio::net::lookup_host((self.url.host.as_str(), self.url.port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(ConnectError::io(ConnectErrorKind::Resolve, &self.name, e)),
            Err(_) => return Err(timed_out()),
        };
        if addrs.is_empty() {
            return Err(ConnectError::text(
                ConnectErrorKind::Resolve,
                &self.name,
                format!("no address for {:?}", self.url.host),
            ));
        }
        // Each address gets an equal share of the time left, but at least
        // MIN_ATTEMPT_TIMEOUT (within the overall deadline), so one black-holed address does
        // not use up the whole budget when others may answer.
        let mut last_err = None;
        let count = addrs.len();
        for (i, addr) in addrs.into_iter().enumerate() {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let remaining_addrs = u32::try_from(count - i).unwrap_or(u32::MAX);
            let share = (left / remaining_addrs).max(MIN_ATTEMPT_TIMEOUT.min(left));
            match tokio::time::timeout_at(now + share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|e| ConnectError::io(ConnectErrorKind::Io, &self.name, e))?;
                    return Ok(stream);
                }
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => last_err = None,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        // The last attempt decides the kind: it timed out, was refused, or failed otherwise.
        let Some(err) = last_err else {
            return Err(timed_out());
        };
        let kind = if err.kind() == io::ErrorKind::ConnectionRefused {
            ConnectErrorKind::Refused
        } else {
            ConnectErrorKind::Io
        };
        Err(ConnectError::io(kind, &self.name, err))
    }
}

fn build_tls(upstream: &UpstreamConfig) -> Result<TlsSetup, String> {
    let host = &upstream.url.host;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &upstream.ca_file {
        let file =
            File::open(path).map_err(|e| format!("cannot open ca file {}: {e}", path.display()))?;
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
            let cert = cert.map_err(|e| format!("cannot read ca file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca file {}: certificate rejected: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "ca file {} holds no pem certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls configuration for upstream host {host:?}: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| format!("upstream host {host:?} is not a valid tls server name: {e}"))?;
    Ok(TlsSetup {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn upstream(url: &str, ca_file: Option<PathBuf>) -> UpstreamConfig {
        UpstreamConfig {
            url: UpstreamUrl::parse(url).expect("valid url"),
            weight: 1,
            ca_file,
            inject_headers: Vec::new(),
            strip_prefix: None,
            rewrite_prefix: None,
        }
    }

    #[test]
    fn new_plain_and_tls_upstreams() {
        let t = Timeouts::default();
        let c = Connector::new(&upstream("http://127.0.0.1:8080", None), &t).expect("plain");
        assert!(c.tls.is_none());
        assert_eq!(c.name(), "http://127.0.0.1:8080");
        let c = Connector::new(&upstream("https://api.example.com/v1", None), &t).expect("tls");
        assert!(c.tls.is_some());
        assert_eq!(c.name(), "https://api.example.com");
        let c = Connector::new(&upstream("https://[::1]:8443", None), &t).expect("ipv6 literal");
        assert!(c.tls.is_some());
    }

    #[test]
    fn new_rejects_missing_or_empty_ca_file() {
        let t = Timeouts::default();
        let missing = std::env::temp_dir().join(format!(
            "chunkgate-missing-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        let err = Connector::new(&upstream("https://localhost", Some(missing.clone())), &t)
            .expect_err("missing file");
        assert!(err.starts_with("cannot open ca file"), "{err}");

        std::fs::write(&missing, b"not a certificate\n").expect("write temp file");
        let err = Connector::new(&upstream("https://localhost", Some(missing.clone())), &t)
            .expect_err("no certificate");
        let _ = std::fs::remove_file(&missing);
        assert!(err.contains("holds no pem certificate"), "{err}");
    }

    #[tokio::test]
    async fn connect_refused_is_classified() {
        // Bind then drop a listener: the port is (almost certainly) closed right after.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let c = Connector::new(
            &upstream(&format!("http://127.0.0.1:{port}"), None),
            &Timeouts::default(),
        )
        .expect("connector");
        let err = c.connect().await.expect_err("nothing listens");
        assert_eq!(err.kind(), ConnectErrorKind::Refused);
        assert!(!err.is_timeout());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "upstream http://127.0.0.1:{port}: connection refused"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn connect_sets_nodelay_and_survives_huge_timeouts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let timeouts = Timeouts {
            connect: Duration::MAX,
            tls_handshake: Duration::MAX,
            ..Timeouts::default()
        };
        let c = Connector::new(
            &upstream(&format!("http://127.0.0.1:{port}"), None),
            &timeouts,
        )
        .expect("connector");
        let (stream, accepted) = tokio::join!(c.connect(), listener.accept());
        let stream = stream.expect("connect");
        accepted.expect("accept");
        assert!(!stream.is_tls());
        assert!(stream.tcp().nodelay().expect("nodelay"));
    }
}
