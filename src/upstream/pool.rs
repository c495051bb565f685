//! The keep-alive pool of one upstream: a cap on open connections, reuse of idle ones, idle
//! eviction.
//!
//! Every open connection, busy or idle, holds one of `max_connections_per_upstream` slots.
//! [`UpstreamPool::checkout`] hands out the most recently returned idle connection that is
//! still usable, or opens a new one when a slot is free, or waits until either happens.
//! [`UpstreamPool::checkin`] puts a connection back; the exchange code calls it only after a
//! complete request and a complete, valid response (PROTOCOL.md rule 16). Any other way a
//! [`PooledConn`] ends (dropped after an error, a framing problem, a cut body, a cancelled
//! exchange) closes the socket and frees its slot.
//!
//! Idle connections are closed when they have been idle for `idle_timeout` (lazily on
//! checkout, and by a background reaper task when the pool was created inside a tokio
//! runtime) and when more than `max_idle_per_upstream` are idle (the oldest go first). An idle
//! connection that has become readable (the upstream closed it, or sent bytes nobody asked
//! for) is never handed out.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connect::{ConnectError, Connector, UpstreamStream};
use crate::config::PoolConfig;

/// Capacity of the read buffer of a new connection, in bytes.
pub const READ_BUF_CAPACITY: usize = 2 * 1024;

/// A returned connection whose read buffer grew beyond this many bytes gets a fresh buffer of
/// [`READ_BUF_CAPACITY`], so idle connections do not pin large allocations.
pub const MAX_IDLE_READ_BUF_CAPACITY: usize = 64 * 1024;

/// Shortest and longest period of the idle reaper (half the idle timeout, within these bounds).
const MIN_REAP_PERIOD: Duration = Duration::from_millis(10);
const MAX_REAP_PERIOD: Duration = Duration::from_secs(15);

/// The keep-alive pool of one upstream. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct UpstreamPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    connector: Connector,
    /// One permit per open (or opening) connection.
    slots: Arc<Semaphore>,
    /// Idle connections, oldest at the front.
    idle: Mutex<VecDeque<PooledConn>>,
    /// Signalled on every checkin, for checkouts waiting while the cap is reached.
    returned: Notify,
    open: Arc<AtomicUsize>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection checked out of an [`UpstreamPool`].
///
/// Dropping it closes the connection and frees its slot; only [`UpstreamPool::checkin`]
/// keeps it open for reuse.
pub struct PooledConn {
    /// The connection.
    pub stream: UpstreamStream,
    /// Bytes read from `stream` and not consumed yet (starts empty, [`READ_BUF_CAPACITY`]
    /// bytes of capacity). It must be empty when the connection is checked in: leftover
    /// bytes make a connection unusable.
    pub read_buf: BytesMut,
    // Declared after `stream`: the socket closes before the slot is freed.
    slot: Slot,
    reused: bool,
    last_used: Instant,
}

/// A connection's place in its pool: one of the `max_connections_per_upstream` slots, held
/// (and the connection counted as open) until dropped.
///
/// Obtained with [`PooledConn::into_parts`] when an exchange needs the stream by value (to
/// split it into halves); give it back with [`PooledConn::from_parts`], or drop it once the
/// stream is closed.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
    created: Instant,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("age", &self.created.elapsed())
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PooledConn {
    /// Whether this connection served an earlier exchange (it came from the idle list).
    ///
    /// A request that fails on a reused connection before any response byte arrived may have
    /// hit a connection the upstream was closing at that moment.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// When the connection was opened.
    pub fn created(&self) -> std::time::Instant {
        self.slot.created.into_std()
    }

    /// Take the connection apart: the stream, the read buffer and the slot. The slot keeps
    /// counting the connection against the pool's cap until it is dropped or the parts are
    /// put back together with [`PooledConn::from_parts`]; drop it only after the stream.
    pub fn into_parts(self) -> (UpstreamStream, BytesMut, Slot) {
        (self.stream, self.read_buf, self.slot)
    }

    /// Put a connection back together from [`PooledConn::into_parts`], e.g. to check it in.
    /// The stream must be the one that came with the slot.
    pub fn from_parts(stream: UpstreamStream, read_buf: BytesMut, slot: Slot) -> PooledConn {
        PooledConn {
            stream,
            read_buf,
            slot,
            reused: true,
            last_used: Instant::now(),
        }
    }

    /// Whether the connection can serve another exchange: nothing left over in `read_buf`,
    /// and nothing to read on the socket (neither EOF nor stray bytes nor an error).
    ///
    /// Never blocks: the socket is polled once with a no-op waker.
    fn is_usable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let waker = noop_waker();
        let mut cx = Context::from_waker(waker);
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        // Pending: nothing to read, the connection is quiet. Anything else (EOF, stray bytes,
        // an error) means it cannot carry a new exchange.
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("stream", &self.stream)
            .field("buffered", &self.read_buf.len())
            .field("reused", &self.reused)
            .field("age", &self.slot.created.elapsed())
            .finish()
    }
}

impl fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("upstream", &self.inner.connector.name())
            .field("open", &self.open_count())
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl UpstreamPool {
    /// A pool for the upstream `connector` connects to.
    ///
    /// `max_connections_per_upstream` is taken as at least 1. When called inside a tokio
    /// runtime, starts the idle reaper: a task that wakes every half `idle_timeout` (within
    /// 10 ms .. 15 s), closes expired and dead idle connections, and ends once the pool is
    /// dropped (it holds only a weak reference).
    pub fn new(connector: Connector, cfg: &PoolConfig) -> Self {
        // Without a cap (the proxy always derives one), as many as the semaphore holds.
        let max_connections = cfg
            .max_connections_per_upstream
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS);
        let inner = Arc::new(PoolInner {
            connector,
            slots: Arc::new(Semaphore::new(max_connections)),
            idle: Mutex::new(VecDeque::new()),
            returned: Notify::new(),
            open: Arc::new(AtomicUsize::new(0)),
            max_idle: cfg.max_idle_per_upstream,
            idle_timeout: cfg.idle_timeout,
        });
        if inner.keeps_idle() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let period = (inner.idle_timeout / 2).clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD);
                handle.spawn(reap_idle(Arc::downgrade(&inner), period));
            }
        }
        UpstreamPool { inner }
    }

    /// The connector this pool opens connections with.
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// An idle connection if one is ready now, without waiting or connecting: the common
    /// keep-alive case, with none of [`UpstreamPool::checkout`]'s machinery.
    pub fn try_checkout_idle(&self) -> Option<PooledConn> {
        self.inner.take_idle()
    }

    /// Get a connection: the most recently returned idle connection that is still usable,
    /// or else a new one once a slot is free (`max_connections_per_upstream` open at most).
    ///
    /// When the cap is reached this waits until a connection is dropped (its slot is handed
    /// to the waiters in FIFO order) or checked in; it does not bound the wait itself, so the
    /// caller wraps it in its own deadline. Cancel safety:
    /// the future may be dropped at any point (e.g. by the caller's deadline) without leaking
    /// a slot or a connection.
    pub async fn checkout(&self) -> Result<PooledConn, ConnectError> {
        loop {
            // Register for checkin signals before looking at the idle list, so a connection
            // returned between the look and the wait still wakes us.
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();

            if let Some(conn) = self.inner.take_idle() {
                return Ok(conn);
            }
            let permit = match Arc::clone(&self.inner.slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    tokio::select! {
                        biased;
                        _ = &mut returned => continue,
                        permit = Arc::clone(&self.inner.slots).acquire_owned() => match permit {
                            Ok(permit) => permit,
                            // The semaphore is never closed; treat it like a spurious wake.
                            Err(_) => continue,
                        },
                    }
                }
            };
            return self.connect_new(permit).await;
        }
    }

    async fn connect_new(&self, permit: OwnedSemaphorePermit) -> Result<PooledConn, ConnectError> {
        let stream = self.inner.connector.connect().await?;
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        Ok(PooledConn {
            stream,
            read_buf: BytesMut::with_capacity(READ_BUF_CAPACITY),
            slot: Slot {
                _permit: permit,
                open: Arc::clone(&self.inner.open),
                created: now,
            },
            reused: false,
            last_used: now,
        })
    }

    /// Get a connection without waiting for a slot: an idle one, or a new one if a slot is
    /// free now; `Ok(None)` when the upstream is at its connection cap.
    pub async fn checkout_now(&self) -> Result<Option<PooledConn>, ConnectError> {
        if let Some(conn) = self.inner.take_idle() {
            return Ok(Some(conn));
        }
        match Arc::clone(&self.inner.slots).try_acquire_owned() {
            Ok(permit) => self.connect_new(permit).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Return a connection for reuse. Call it only after a complete request and a complete,
    /// valid response; in every other case drop the connection instead.
    ///
    /// A connection with bytes left in `read_buf` is closed, and so is every connection when
    /// the pool keeps no idle connections (`max_idle_per_upstream` or `idle_timeout` zero).
    /// When more than `max_idle_per_upstream` connections are idle, the oldest is closed.
    /// A connection from another pool is closed too.
    pub fn checkin(&self, mut conn: PooledConn) {
        let ours = Arc::ptr_eq(&conn.slot.open, &self.inner.open);
        if !ours || !conn.read_buf.is_empty() || !self.inner.keeps_idle() {
            return;
        }
        if conn.read_buf.capacity() > MAX_IDLE_READ_BUF_CAPACITY {
            conn.read_buf = BytesMut::with_capacity(READ_BUF_CAPACITY);
        }
        conn.last_used = Instant::now();
        let mut evicted = Vec::new();
        {
            let mut idle = self.inner.lock_idle();
            idle.push_back(conn);
            while idle.len() > self.inner.max_idle {
                if let Some(oldest) = idle.pop_front() {
                    evicted.push(oldest);
                }
            }
        }
        self.inner.returned.notify_one();
        // Sockets close here, outside the lock.
        drop(evicted);
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// Open connections now, busy and idle.
    pub fn open_count(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }
}

impl PoolInner {
    fn keeps_idle(&self) -> bool {
        self.max_idle > 0 && !self.idle_timeout.is_zero()
    }

    fn lock_idle(&self) -> MutexGuard<'_, VecDeque<PooledConn>> {
        // The list stays consistent even if a holder panicked: every operation on it is a
        // single push or pop.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_expired(&self, conn: &PooledConn, now: Instant) -> bool {
        now.saturating_duration_since(conn.last_used) >= self.idle_timeout
    }

    /// Pop the most recently returned idle connection that is not expired and still usable,
    /// closing the expired and unusable ones met on the way.
    fn take_idle(&self) -> Option<PooledConn> {
        loop {
            let mut candidate = {
                let mut idle = self.lock_idle();
                let conn = idle.pop_back()?;
                if self.is_expired(&conn, Instant::now()) {
                    // The newest is expired, so every older one is too.
                    let expired: Vec<PooledConn> = idle.drain(..).collect();
                    drop(idle);
                    drop(expired);
                    return None;
                }
                conn
            };
            if candidate.is_usable() {
                candidate.reused = true;
                return Some(candidate);
            }
        }
    }

    /// Close idle connections that are expired or no longer usable.
    fn reap(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.lock_idle();
            let mut kept = VecDeque::with_capacity(idle.len());
            while let Some(mut conn) = idle.pop_front() {
                if self.is_expired(&conn, now) || !conn.is_usable() {
                    closed.push(conn);
                } else {
                    kept.push_back(conn);
                }
            }
            *idle = kept;
        }
        drop(closed);
    }
}

/// The idle reaper: runs until the pool is gone.
async fn reap_idle(pool: Weak<PoolInner>, period: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.reap();
    }
}

/// A waker that does nothing, for polling a socket once without waiting on it.
fn noop_waker() -> &'static Waker {
    Waker::noop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Timeouts, UpstreamConfig, UpstreamUrl};

    fn pool_for(port: u16, cfg: &PoolConfig) -> UpstreamPool {
        let upstream = UpstreamConfig {
            url: UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).expect("url"),
            weight: 1,
            ca_file: None,
            inject_headers: Vec::new(),
            strip_prefix: None,
            rewrite_prefix: None,
        };
        let connector = Connector::new(&upstream, &Timeouts::default()).expect("connector");
        UpstreamPool::new(connector, cfg)
    }

    /// A listener on 127.0.0.1 that accepts `n` connections and holds them: its port, and the
    /// task that hands them back.
    async fn holding_listener(
        n: usize,
    ) -> (u16, tokio::task::JoinHandle<Vec<tokio::net::TcpStream>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(listener.accept().await.expect("accept").0);
            }
            held
        });
        (port, accept)
    }

    #[tokio::test]
    async fn checkin_with_leftover_bytes_closes() {
        let (port, accept) = holding_listener(2).await;
        let pool = pool_for(port, &PoolConfig::default());
        let mut conn = pool.checkout().await.expect("checkout");
        assert!(!conn.is_reused());
        assert_eq!(pool.open_count(), 1);
        conn.read_buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(pool.open_count(), 0);

        let conn = pool.checkout().await.expect("second checkout");
        assert!(!conn.is_reused(), "a fresh connection, not the dirty one");
        drop(conn);
        let held = accept.await.expect("accept task");
        assert_eq!(held.len(), 2);
    }

    #[tokio::test]
    async fn max_idle_zero_keeps_nothing() {
        let (port, accept) = holding_listener(1).await;
        let cfg = PoolConfig {
            max_idle_per_upstream: 0,
            ..PoolConfig::default()
        };
        let pool = pool_for(port, &cfg);
        let conn = pool.checkout().await.expect("checkout");
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(pool.open_count(), 0);
        drop(accept.await.expect("accept task"));
    }

    #[tokio::test]
    async fn oldest_idle_is_evicted_over_max_idle() {
        let (port, accept) = holding_listener(3).await;
        let cfg = PoolConfig {
            max_idle_per_upstream: 2,
            ..PoolConfig::default()
        };
        let pool = pool_for(port, &cfg);
        let a = pool.checkout().await.expect("a");
        let b = pool.checkout().await.expect("b");
        let c = pool.checkout().await.expect("c");
        let a_addr = a.stream.tcp().local_addr().expect("a addr");
        let c_addr = c.stream.tcp().local_addr().expect("c addr");
        assert_eq!(pool.open_count(), 3);
        pool.checkin(a);
        pool.checkin(b);
        pool.checkin(c);
        assert_eq!(pool.idle_count(), 2);
        assert_eq!(pool.open_count(), 2);
        // Most recently returned first; `a` was the oldest and is gone.
        let first = pool.checkout().await.expect("reuse");
        assert!(first.is_reused());
        assert_eq!(first.stream.tcp().local_addr().expect("addr"), c_addr);
        let second = pool.checkout().await.expect("reuse");
        assert_ne!(second.stream.tcp().local_addr().expect("addr"), a_addr);
        drop(accept.await.expect("accept task"));
    }

    #[tokio::test]
    async fn parts_round_trip_and_foreign_checkin() {
        let (port, accept) = holding_listener(2).await;
        let pool = pool_for(port, &PoolConfig::default());
        let other = pool_for(port, &PoolConfig::default());

        let conn = pool.checkout().await.expect("checkout");
        let local = conn.stream.tcp().local_addr().expect("addr");
        let (stream, buf, slot) = conn.into_parts();
        let (rd, wr) = tokio::io::split(stream);
        assert_eq!(pool.open_count(), 1, "the slot still counts the connection");
        let conn = PooledConn::from_parts(rd.unsplit(wr), buf, slot);
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 1);
        let conn = pool.checkout().await.expect("reuse");
        assert!(conn.is_reused());
        assert_eq!(conn.stream.tcp().local_addr().expect("addr"), local);

        // Checked into a pool it does not belong to: closed, counts untouched elsewhere.
        let foreign = other.checkout().await.expect("other checkout");
        pool.checkin(foreign);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(other.open_count(), 0);
        assert_eq!(pool.open_count(), 1);
        drop(conn);
        drop(accept.await.expect("accept task"));
    }
}
