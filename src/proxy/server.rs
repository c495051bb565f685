//! Listeners (plain and TLS), the accept loop with its connection limit, and the drain.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
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
    max_connections: usize,
}

/// Reads the configuration anew for a reload.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// A bound, not yet running proxy.
pub struct Proxy {
    /// The running configuration's state; a reload swaps it.
    live: Arc<ArcSwap<Shared>>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    source: Option<ConfigSource>,
}

impl Proxy {
    /// Validate the configuration's runtime parts and bind every listener (and the admin
    /// listener, if configured). Nothing is served until [`Proxy::run`].
    pub async fn bind(config: Config) -> io::Result<Proxy> {
        Self::bind_with_metrics(config, Arc::new(Metrics::new())).await
    }

    /// [`Proxy::bind`] with a metrics registry supplied by the caller.
    pub async fn bind_with_metrics(config: Config, metrics: Arc<Metrics>) -> io::Result<Proxy> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let tokens = (CancellationToken::new(), CancellationToken::new());
        let shared = build_shared(config, metrics, None, tokens).map_err(invalid)?;
        let mut listeners = Vec::new();
        for l in &shared.config.listeners {
            listeners.push(Listener {
                tcp: TcpListener::bind(l.addr).await?,
                max_connections: l.max_connections.max(1),
            });
        }
        let admin = match shared.config.admin {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let live = Arc::new(ArcSwap::from_pointee(shared));
        let _ = live.load().live.set(Arc::downgrade(&live));
        Ok(Proxy {
            live,
            listeners,
            admin,
            shutdown: CancellationToken::new(),
            ready: Arc::new(AtomicBool::new(true)),
            source: None,
        })
    }

    /// Where [`Reloader::reload`] reads the configuration from (`chunkgate serve`: the file and
    /// flags it started with).
    pub fn set_config_source(&mut self, source: ConfigSource) {
        self.source = Some(source);
    }

    /// A handle that installs a new configuration while the proxy runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            live: Arc::clone(&self.live),
            source: self.source.clone(),
        }
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
        Arc::clone(&self.live.load().metrics)
    }

    /// Serve until the shutdown token is cancelled, then drain for up to the configured drain
    /// deadline. Returns `Ok(true)` if every in-flight exchange finished within it.
    pub async fn run(self) -> io::Result<()> {
        self.run_drained().await.map(|_| ())
    }

    /// Like [`Proxy::run`], reporting whether the drain finished in time.
    pub async fn run_drained(self) -> io::Result<bool> {
        let tracker = TaskTracker::new();
        let admin_stop = CancellationToken::new();
        let reloader = self.reloader();
        if let Some(admin) = self.admin {
            let live = Arc::clone(&self.live);
            let reload = reloader.clone();
            let state = crate::admin::AdminState {
                metrics: Arc::clone(&self.live.load().metrics),
                ready: Arc::clone(&self.ready),
                upstreams: Arc::new(move || {
                    let now = std::time::Instant::now();
                    live.load()
                        .groups
                        .iter()
                        .flat_map(|g| g.upstreams.iter())
                        .map(|u| (u.name().to_string(), u.breaker.state(now).as_str()))
                        .collect()
                }),
                reload: Arc::new(move || reload.reload()),
            };
            tokio::spawn(crate::admin::serve(admin, state, admin_stop.clone()));
        }
        let mut accept_tasks = Vec::new();
        for (index, l) in self.listeners.into_iter().enumerate() {
            let live = Arc::clone(&self.live);
            let tracker = tracker.clone();
            let stop = self.shutdown.clone();
            accept_tasks.push(tokio::spawn(accept_loop(l, index, live, tracker, stop)));
        }
        self.shutdown.cancelled().await;
        // Drain: stop accepting, say not ready, finish what is in flight.
        self.ready.store(false, Ordering::SeqCst);
        let shared = self.live.load_full();
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
    index: usize,
    live: Arc<ArcSwap<Shared>>,
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
        let shared = live.load_full();
        match shared.tls.get(index).cloned().flatten() {
            None => {
                tracker.spawn(async move {
                    conn::serve(shared, stream, peer, local, "http").await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
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
        let mut proxy = match Proxy::bind(config).await {
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
        let source_args = args.clone();
        proxy.set_config_source(Arc::new(move || {
            crate::config::load(&source_args).map_err(|e| e.to_string())
        }));
        let reloader = proxy.reloader();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = reloader.reload();
            }
        });
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

/// Build the state of a configuration: groups and their upstreams (keeping those of `old`
/// whose configuration is unchanged, with their pools and breakers), routes, TLS acceptors.
fn build_shared(
    mut config: Config,
    metrics: Arc<Metrics>,
    old: Option<&Shared>,
    (draining, hard_stop): (CancellationToken, CancellationToken),
) -> Result<Shared, String> {
    let capacity = Capacity::apply(&mut config);
    tracing::info!(
        fd_limit = capacity.fd_limit,
        client_connections = capacity.clients,
        upstream_connections = capacity.per_upstream,
        "capacity: client connections across listeners, connections per upstream"
    );
    for u in config.groups.iter().flat_map(|g| &g.upstreams) {
        crate::codec::path::check_prefix(u.url.path_prefix.as_bytes()).map_err(|e| {
            format!(
                "upstream {}: path prefix {:?} is not a normal path: {e}",
                u.url, u.url.path_prefix
            )
        })?;
        if let Some(rewrite) = &u.rewrite_prefix {
            crate::codec::path::check_prefix(rewrite.as_bytes()).map_err(|e| {
                format!(
                    "upstream {}: rewrite_prefix {rewrite:?} is not a normal path: {e}",
                    u.url
                )
            })?;
        }
    }
    let same_settings = old.is_some_and(|o| {
        o.config.timeouts == config.timeouts
            && o.config.pool == config.pool
            && o.config.breaker == config.breaker
    });
    let old_groups: &[Arc<Group>] = old.map_or(&[], |o| &o.groups);
    let mut groups = Vec::new();
    for g in &config.groups {
        let group = Group::reusing(
            g,
            &config.timeouts,
            &config.pool,
            &config.breaker,
            old_groups,
            same_settings,
        )?;
        groups.push(Arc::new(group));
    }
    let mut routes = Vec::new();
    for r in &config.routes {
        let idx = config
            .groups
            .iter()
            .position(|g| g.name == r.group)
            .ok_or_else(|| format!("route {:?} names unknown group {:?}", r.prefix, r.group))?;
        let mut route = Route::new(r, routes.len(), idx)?;
        route.llm = metrics.route_llm(&route.name);
        routes.push(route);
    }
    let mut tls = Vec::new();
    for l in &config.listeners {
        tls.push(match &l.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls_server::server_config(&t.cert, &t.key)?,
            )),
            None => None,
        });
    }
    metrics.set_max_models(config.metrics.max_models);
    let capture = match old {
        Some(o) if same_capture(&o.config, &config) => o.capture.clone(),
        _ => crate::capture::Capture::start(&config, &metrics)?,
    };
    if let Some(retired) = old.and_then(|o| o.capture.clone()) {
        let kept = capture.as_ref().is_some_and(|c| Arc::ptr_eq(c, &retired));
        if !kept {
            // Sinks changed: the old writers deliver what they were given, then stop.
            let deadline = config.drain_timeout;
            tokio::spawn(async move {
                retired.drain(deadline).await;
            });
        }
    }
    for u in groups.iter().flat_map(|g| &g.upstreams) {
        let kept = old_groups
            .iter()
            .flat_map(|g| &g.upstreams)
            .any(|o| Arc::ptr_eq(o, u));
        if !kept {
            metrics.breaker_state(u.name(), 0);
        }
    }
    Ok(Shared {
        retry: RetryPolicy::from_config(&config.retry, draining.clone()),
        config,
        routes,
        groups,
        metrics,
        draining,
        hard_stop,
        tls,
        live: std::sync::OnceLock::new(),
        capture,
    })
}

/// Whether two configurations capture the same: the same sinks, and the same routes naming
/// the same sinks.
fn same_capture(a: &Config, b: &Config) -> bool {
    let routes = |c: &Config| -> Vec<(String, crate::config::RouteCapture)> {
        c.routes
            .iter()
            .map(|r| (r.prefix.clone(), r.capture.clone()))
            .collect()
    };
    a.sinks == b.sinks && routes(a) == routes(b)
}

/// Installs a new configuration in a running proxy (SIGHUP, `POST /reload`).
///
/// New exchanges use it; exchanges in flight finish on the state they started with.
/// Upstreams whose configuration (and the timeouts, pool and breaker settings) did not change
/// keep their pools and breakers; TLS certificates are read from their files again. Listener
/// addresses and limits and the admin address are not changed by a reload: they need a restart.
/// An invalid configuration is refused with its `file:line:key` error, logged and counted; the
/// running one stays.
#[derive(Clone)]
pub struct Reloader {
    live: Arc<ArcSwap<Shared>>,
    source: Option<ConfigSource>,
}

impl Reloader {
    /// Read the configuration from its source and install it.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = match &self.source {
            Some(source) => source(),
            None => Err("no configuration source to reload from".to_string()),
        };
        match loaded {
            Ok(config) => self.install(config),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Install `config`.
    pub fn install(&self, config: Config) -> Result<(), String> {
        let old = self.live.load_full();
        if !same_addresses(&config, &old.config) {
            tracing::warn!(
                "listener addresses changed: they need a restart; the running listeners stay"
            );
        }
        if config.admin != old.config.admin {
            tracing::warn!("the admin address changed: it needs a restart; the running one stays");
        }
        let mut config = config;
        // What only a restart changes stays as it runs.
        let tls_of: Vec<Option<crate::config::TlsServerConfig>> =
            config.listeners.iter().map(|l| l.tls.clone()).collect();
        config.listeners = old.config.listeners.clone();
        for (l, tls) in config.listeners.iter_mut().zip(tls_of) {
            l.tls = tls;
        }
        config.admin = old.config.admin;
        let tokens = (old.draining.clone(), old.hard_stop.clone());
        let shared = match build_shared(config, Arc::clone(&old.metrics), Some(&old), tokens) {
            Ok(s) => s,
            Err(e) => return Err(self.refused(e)),
        };
        let _ = shared.live.set(Arc::downgrade(&self.live));
        self.live.store(Arc::new(shared));
        old.metrics.config_reload(true);
        tracing::info!("configuration reloaded: new exchanges use it");
        Ok(())
    }

    fn refused(&self, e: String) -> String {
        self.live.load().metrics.config_reload(false);
        tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
        e
    }
}

/// Whether two configurations listen on the same addresses.
fn same_addresses(a: &Config, b: &Config) -> bool {
    a.listeners.len() == b.listeners.len()
        && a.listeners
            .iter()
            .zip(&b.listeners)
            .all(|(x, y)| x.addr == y.addr)
}
