//! Listeners (plain and TLS), the accept loop with its connection limit, and the drain.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::conn;
use crate::proxy::route::Route;
use crate::proxy::Shared;
use crate::upstream::balance::Group;
use crate::upstream::retry::RetryPolicy;

struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
}

/// A bound, not yet running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
}

impl Proxy {
    /// Validate the configuration's runtime parts and bind every listener (and the admin
    /// listener, if configured). Nothing is served until [`Proxy::run`].
    pub async fn bind(config: Config) -> io::Result<Proxy> {
        Self::bind_with_metrics(config, Arc::new(Metrics::new())).await
    }

    /// [`Proxy::bind`] with a metrics registry supplied by the caller.
    pub async fn bind_with_metrics(mut config: Config, metrics: Arc<Metrics>) -> io::Result<Proxy> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let capacity = Capacity::apply(&mut config);
        tracing::info!(
            fd_limit = capacity.fd_limit,
            client_connections = capacity.clients,
            upstream_connections = capacity.per_upstream,
            "capacity: client connections across listeners, connections per upstream"
        );
        let mut groups = Vec::new();
        for u in config.groups.iter().flat_map(|g| &g.upstreams) {
            crate::codec::path::check_prefix(u.url.path_prefix.as_bytes()).map_err(|e| {
                invalid(format!(
                    "upstream {}: path prefix {:?} is not a normal path: {e}",
                    u.url, u.url.path_prefix
                ))
            })?;
        }
        for g in &config.groups {
            groups.push(Arc::new(
                Group::new(g, &config.timeouts, &config.pool, &config.breaker).map_err(invalid)?,
            ));
        }
        let mut routes = Vec::new();
        for r in &config.routes {
            let idx = config
                .groups
                .iter()
                .position(|g| g.name == r.group)
                .ok_or_else(|| {
                    invalid(format!(
                        "route {:?} names unknown group {:?}",
                        r.prefix, r.group
                    ))
                })?;
            routes.push(Route::new(r, routes.len(), idx).map_err(invalid)?);
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let tcp = TcpListener::bind(l.addr).await?;
            let tls = match &l.tls {
                Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                    crate::tls_server::server_config(&t.cert, &t.key).map_err(invalid)?,
                )),
                None => None,
            };
            listeners.push(Listener {
                tcp,
                tls,
                max_connections: l.max_connections.max(1),
            });
        }
        let admin = match config.admin {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        for g in &groups {
            for u in &g.upstreams {
                metrics.breaker_state(u.name(), 0);
            }
        }
        let capture = crate::capture::Capture::start(&config, &metrics).map_err(invalid)?;
        let draining = CancellationToken::new();
        let shared = Arc::new(Shared {
            retry: RetryPolicy::from_config(&config.retry, draining.clone()),
            config,
            routes,
            groups,
            metrics,
            draining,
            hard_stop: CancellationToken::new(),
            capture,
        });
        Ok(Proxy {
            shared,
            listeners,
            admin,
            shutdown: CancellationToken::new(),
            ready: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The address of the first client listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0]
            .tcp
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The addresses of every client listener.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Cancel this token to start a graceful drain; [`Proxy::run`] returns when it is over.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Serve until the shutdown token is cancelled, then drain for up to the configured drain
    /// deadline. Returns `Ok(true)` if every in-flight exchange finished within it.
    pub async fn run(self) -> io::Result<()> {
        self.run_drained().await.map(|_| ())
    }

    /// Like [`Proxy::run`], reporting whether the drain finished in time.
    pub async fn run_drained(self) -> io::Result<bool> {
        let tracker = TaskTracker::new();
        let shared = self.shared;
        let admin_stop = CancellationToken::new();
        if let Some(admin) = self.admin {
            let groups = shared.groups.clone();
            let state = crate::admin::AdminState {
                metrics: Arc::clone(&shared.metrics),
                ready: Arc::clone(&self.ready),
                upstreams: Arc::new(move || {
                    let now = std::time::Instant::now();
                    groups
                        .iter()
                        .flat_map(|g| g.upstreams.iter())
                        .map(|u| (u.name().to_string(), u.breaker.state(now).as_str()))
                        .collect()
                }),
            };
            tokio::spawn(crate::admin::serve(admin, state, admin_stop.clone()));
        }
        let mut accept_tasks = Vec::new();
        for l in self.listeners {
            let shared = Arc::clone(&shared);
            let tracker = tracker.clone();
            let stop = self.shutdown.clone();
            accept_tasks.push(tokio::spawn(accept_loop(l, shared, tracker, stop)));
        }
        self.shutdown.cancelled().await;
        // Drain: stop accepting, say not ready, finish what is in flight.
        self.ready.store(false, Ordering::SeqCst);
        shared.draining.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        tracker.close();
        let deadline = tokio::time::Instant::now() + shared.config.drain_timeout;
        let drained = tokio::time::timeout(shared.config.drain_timeout, tracker.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained: every in-flight exchange finished");
        } else {
            tracing::warn!(
                deadline_s = shared.config.drain_timeout.as_secs_f64(),
                "drain deadline passed with exchanges still in flight: cutting them"
            );
            // Exchanges still running end now, each recorded with the outcome `shutdown`.
            shared.hard_stop.cancel();
            let _ = tokio::time::timeout(HARD_STOP_GRACE, tracker.wait()).await;
        }
        // Streams are done: deliver every queued capture record within what is left of the
        // drain deadline (at least the hard-stop grace).
        if let Some(capture) = &shared.capture {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            capture.drain(left.max(HARD_STOP_GRACE)).await;
        }
        admin_stop.cancel();
        Ok(drained)
    }
}

/// What the proxy can hold at once, as [`Capacity::apply`] set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The process's open-file limit after raising it to the hard limit.
    pub fd_limit: u64,
    /// Client connections across every listener.
    pub clients: usize,
    /// Connections per upstream.
    pub per_upstream: usize,
}

/// Descriptors kept for everything but exchanges: listeners, the admin port, log files,
/// the runtime.
const FD_RESERVE: u64 = 64;

impl Capacity {
    /// Raise the open-file limit to its hard limit, hold the listeners' client caps to what
    /// it allows (a streaming exchange needs two descriptors: the client's and the
    /// upstream's), and derive the per-upstream connection cap from the client cap when it is
    /// not set: one upstream never needs more connections than there are clients.
    pub fn apply(config: &mut Config) -> Capacity {
        let fd_limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
        };
        let exchanges = usize::try_from(fd_limit.saturating_sub(FD_RESERVE) / 2)
            .unwrap_or(usize::MAX)
            .max(1);
        let mut left = exchanges;
        for l in &mut config.listeners {
            if l.max_connections > left {
                tracing::warn!(
                    listen = %l.addr,
                    configured = l.max_connections,
                    allowed = left,
                    fd_limit,
                    "max_connections lowered to what the open-file limit allows"
                );
                l.max_connections = left.max(1);
            }
            left = left.saturating_sub(l.max_connections);
        }
        let clients: usize = config.listeners.iter().map(|l| l.max_connections).sum();
        let per_upstream = *config
            .pool
            .max_connections_per_upstream
            .get_or_insert(clients.max(1));
        Capacity {
            fd_limit,
            clients,
            per_upstream,
        }
    }
}

/// How long exchanges cut at the drain deadline get to record their end.
const HARD_STOP_GRACE: Duration = Duration::from_secs(1);

async fn accept_loop(
    l: Listener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(l.max_connections));
    loop {
        // Wait for a connection slot first: past the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = l.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let shared = Arc::clone(&shared);
        match &l.tls {
            None => {
                tracker.spawn(async move {
                    conn::serve(shared, stream, peer, local, "http").await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    let hs = shared.config.timeouts.client_head;
                    match tokio::time::timeout(hs, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            conn::serve(shared, tls, peer, local, "https").await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "client tls handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "client tls handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// `chunkgate serve`: load the configuration, start logging, serve, drain on SIGTERM/SIGINT
/// (a second signal exits at once).
pub fn serve_main(args: crate::config::ServeArgs) -> ExitCode {
    let config = match crate::config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chunkgate: {e}");
            return ExitCode::from(2);
        }
    };
    let _log = crate::logging::init(&config.log);
    let mut builder = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chunkgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let proxy = match Proxy::bind(config).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("chunkgate: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        for a in proxy.local_addrs() {
            tracing::info!(listen = %a, "chunkgate listening");
        }
        if let Some(a) = proxy.admin_addr() {
            tracing::info!(admin = %a, "admin listening");
        }
        let stop = proxy.shutdown_token();
        tokio::spawn(async move {
            wait_signal().await;
            tracing::info!("signal received: draining (a second signal exits at once)");
            stop.cancel();
            wait_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        match proxy.run_drained().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "proxy failed");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
