//! The HTTP/1.1 forwarding path: listeners, client sessions, exchanges, attempts, the body pump.
//!
//! | module | what it holds |
//! |---|---|
//! | `server` | listeners (plain, TLS), the accept loop, connection limits, drain |
//! | `conn` | one client connection as a session with named states |
//! | `exchange` | admit → attempts → commit → stream → finish; the only place that records |
//! | `attempt` | one upstream attempt: `Committed` or an `AttemptFailure`; the request side |
//! | `pump` | the body pump, written once for both directions, with the stage seam |
//! | `body` | body readers and writers (framing in, framing out, batches) |
//! | `io` | read sizing, idle timers, spare read buffers, vectored writes |
//! | `replay` | the request body held for a retry |
//! | `error` | `ExchangeError`: its answer and its outcome, one mapping each |
//! | `headers` | hop-by-hop removal, Host rewrite, X-Forwarded-*, request id, injection |
//! | `route` | prefix routes, strip/rewrite, auth |
//!
//! [`Proxy::bind`] opens the listeners of a [`Config`]; [`Proxy::run`] serves until the
//! shutdown token is cancelled, then drains: it stops accepting, marks itself not ready, lets
//! in-flight exchanges finish (keep-alive connections close after their current exchange) for
//! up to the drain deadline, and returns.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use chunkgate::config::{Config, UpstreamUrl};
//! let cfg = Config::simple(
//!     "127.0.0.1:8080".parse().unwrap(),
//!     vec![UpstreamUrl::parse("http://127.0.0.1:9000").unwrap()],
//! );
//! let proxy = chunkgate::proxy::Proxy::bind(cfg).await?;
//! let stop = proxy.shutdown_token();
//! tokio::spawn(proxy.run());
//! stop.cancel(); // graceful drain
//! # Ok(()) }
//! ```

mod attempt;
pub mod body;
mod conn;
pub mod error;
mod exchange;
pub mod headers;
mod io;
mod keepalive;
mod pump;
mod replay;
mod response;
pub mod route;
mod server;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::balance::Group;
use crate::upstream::retry::RetryPolicy;
use route::Route;

pub use server::{serve_main, Capacity, ConfigSource, Proxy, Reloader};

/// State shared by every connection of one proxy.
pub(crate) struct Shared {
    pub config: Config,
    pub routes: Vec<Route>,
    pub groups: Vec<Arc<Group>>,
    pub metrics: Arc<Metrics>,
    pub retry: RetryPolicy,
    /// Cancelled when the proxy starts draining: no new exchanges on kept-alive connections.
    pub draining: CancellationToken,
    /// Cancelled when the drain deadline passes: exchanges still running end as `shutdown`.
    pub hard_stop: CancellationToken,
    /// The TLS acceptor of each listener (by its place in `config.listeners`), reloaded with
    /// the configuration.
    pub tls: Vec<Option<tokio_rustls::TlsAcceptor>>,
    /// Where the running configuration is: a connection takes the newest for each exchange.
    pub live: std::sync::OnceLock<std::sync::Weak<arc_swap::ArcSwap<Shared>>>,
    /// Completion capture, when a route names a sink.
    pub capture: Option<Arc<crate::capture::Capture>>,
}

impl Shared {
    /// The running configuration's state: this one, or a newer one a reload installed.
    /// `None` while this one is the newest.
    pub fn newer(self: &Arc<Self>) -> Option<Arc<Shared>> {
        let live = self.live.get()?.upgrade()?;
        let current = live.load();
        (!Arc::ptr_eq(&current, self)).then(|| Arc::clone(&current))
    }
}
