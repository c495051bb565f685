//! The upstream keep-alive pool over real sockets on 127.0.0.1: reuse, idle eviction, dead
//! idle connections, the connection cap, and slot accounting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chunkgate::config::{PoolConfig, Timeouts, UpstreamConfig, UpstreamUrl};
use chunkgate::upstream::{ConnectErrorKind, Connector, PooledConn, UpstreamPool};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Every test finishes well within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(10);

/// What the test upstream does after answering a `ping` line with `pong`.
#[derive(Clone, Copy)]
enum After {
    /// Wait for the next line.
    KeepOpen,
    /// Close the connection.
    Close,
    /// Send bytes nobody asked for a little later, then wait.
    Stray,
}

/// A line-based upstream that counts accepted and closed connections.
struct TestUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl TestUpstream {
    async fn start(after: After) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (acc, clo) = (Arc::clone(&accepted), Arc::clone(&closed));
        // Spawned on the test's runtime: it ends with the test.
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let clo = Arc::clone(&clo);
                tokio::spawn(async move {
                    let mut socket = BufReader::new(socket);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match socket.read_line(&mut line).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if socket.get_mut().write_all(b"pong\n").await.is_err() {
                            break;
                        }
                        match after {
                            After::KeepOpen => {}
                            After::Close => break,
                            After::Stray => {
                                // Later than the answer, so it arrives while idle.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                if socket.get_mut().write_all(b"stray").await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    clo.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TestUpstream {
            port,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn pool(&self, cfg: &PoolConfig) -> UpstreamPool {
        pool_to(self.port, cfg)
    }
}

fn pool_to(port: u16, cfg: &PoolConfig) -> UpstreamPool {
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

/// One request/response on a pooled connection, reading through its `read_buf`.
async fn ping(conn: &mut PooledConn) {
    conn.stream.write_all(b"ping\n").await.expect("write");
    loop {
        if let Some(end) = conn.read_buf.iter().position(|&b| b == b'\n') {
            let line = conn.read_buf.split_to(end + 1);
            assert_eq!(&line[..], b"pong\n");
            return;
        }
        let n = conn
            .stream
            .read_buf(&mut conn.read_buf)
            .await
            .expect("read");
        assert_ne!(n, 0, "upstream closed before answering");
    }
}

/// Poll `cond` every 10 ms until it holds or two seconds passed.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn run<F: std::future::Future<Output = ()>>(test: F) {
    runtime().block_on(async {
        tokio::time::timeout(TEST_LIMIT, test)
            .await
            .expect("test took too long");
    });
}

#[test]
fn checkout_reuses_a_returned_connection() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let pool = upstream.pool(&PoolConfig::default());

        let mut conn = pool.checkout().await.expect("checkout");
        assert!(!conn.is_reused());
        let local = conn.stream.tcp().local_addr().expect("addr");
        ping(&mut conn).await;
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.open_count(), 1);

        let mut conn = pool.checkout().await.expect("checkout again");
        assert!(conn.is_reused());
        assert_eq!(conn.stream.tcp().local_addr().expect("addr"), local);
        assert_eq!(pool.idle_count(), 0);
        ping(&mut conn).await;
        pool.checkin(conn);

        assert_eq!(
            upstream.accepted(),
            1,
            "one connection served both exchanges"
        );
    });
}

#[test]
fn idle_connections_are_reaped_after_idle_timeout() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let cfg = PoolConfig {
            idle_timeout: Duration::from_millis(150),
            ..PoolConfig::default()
        };
        let pool = upstream.pool(&cfg);
        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn).await;
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 1);

        // Still idle before the timeout.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.idle_count(), 1);

        // The reaper closes it without any checkout; the upstream sees the close.
        eventually("reaper closed the idle connection", || {
            pool.idle_count() == 0 && pool.open_count() == 0
        })
        .await;
        eventually("upstream saw the close", || upstream.closed() == 1).await;
    });
}

#[test]
fn expired_idle_connection_is_not_handed_out_without_reaper() {
    let rt = runtime();
    let upstream = rt.block_on(TestUpstream::start(After::KeepOpen));
    // A pool made outside any runtime has no reaper: expiry is checked on checkout.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let cfg = PoolConfig {
        idle_timeout: Duration::from_millis(100),
        ..PoolConfig::default()
    };
    let pool = upstream.pool(&cfg);
    let test = async {
        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn).await;
        pool.checkin(conn);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(pool.idle_count(), 1, "no reaper: still listed");

        let mut conn = pool.checkout().await.expect("checkout after expiry");
        assert!(!conn.is_reused(), "the expired connection was not reused");
        ping(&mut conn).await;
        assert_eq!(upstream.accepted(), 2);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(pool.open_count(), 1);
        eventually("upstream saw the expired connection close", || {
            upstream.closed() == 1
        })
        .await;
    };
    rt.block_on(async {
        tokio::time::timeout(TEST_LIMIT, test)
            .await
            .expect("test took too long");
    });
}

#[test]
fn connection_closed_by_upstream_while_idle_is_discarded() {
    run(async {
        let upstream = TestUpstream::start(After::Close).await;
        let pool = upstream.pool(&PoolConfig::default());
        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn).await;
        pool.checkin(conn);
        eventually("upstream closed its side", || upstream.closed() == 1).await;
        // Give the FIN a moment to be seen by the reactor.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let mut conn = pool.checkout().await.expect("checkout");
        assert!(
            !conn.is_reused(),
            "a dead idle connection must not be handed out"
        );
        ping(&mut conn).await;
        assert_eq!(upstream.accepted(), 2);
        assert_eq!(pool.open_count(), 1, "the dead connection's slot was freed");
    });
}

#[test]
fn idle_connection_with_stray_bytes_is_discarded() {
    run(async {
        let upstream = TestUpstream::start(After::Stray).await;
        let pool = upstream.pool(&PoolConfig::default());
        let mut conn = pool.checkout().await.expect("checkout");
        ping(&mut conn).await;
        assert!(conn.read_buf.is_empty());
        pool.checkin(conn);
        assert_eq!(pool.idle_count(), 1);
        // The stray bytes arrive while the connection is idle.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut conn = pool.checkout().await.expect("checkout");
        assert!(!conn.is_reused());
        ping(&mut conn).await;
        assert_eq!(upstream.accepted(), 2);
        assert_eq!(pool.open_count(), 1);
    });
}

#[test]
fn third_checkout_waits_for_a_slot_at_the_cap() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let cfg = PoolConfig {
            max_connections_per_upstream: Some(2),
            ..PoolConfig::default()
        };
        let pool = upstream.pool(&cfg);
        let first = pool.checkout().await.expect("first");
        let _second = pool.checkout().await.expect("second");
        assert_eq!(pool.open_count(), 2);

        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.checkout().await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "third checkout must wait at the cap");
        assert_eq!(upstream.accepted(), 2);

        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter got the freed slot")
            .expect("task")
            .expect("checkout");
        assert!(
            !third.is_reused(),
            "a dropped connection is closed, not reused"
        );
        assert_eq!(pool.open_count(), 2);
        eventually("three accepted", || upstream.accepted() == 3).await;
        eventually("dropped connection closed", || upstream.closed() == 1).await;
    });
}

#[test]
fn waiter_at_the_cap_gets_a_checked_in_connection() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let cfg = PoolConfig {
            max_connections_per_upstream: Some(1),
            ..PoolConfig::default()
        };
        let pool = upstream.pool(&cfg);
        let mut conn = pool.checkout().await.expect("checkout");
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.checkout().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        ping(&mut conn).await;
        pool.checkin(conn);
        let mut conn = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("waiter woke on checkin")
            .expect("task")
            .expect("checkout");
        assert!(conn.is_reused());
        ping(&mut conn).await;
        assert_eq!(upstream.accepted(), 1);
    });
}

#[test]
fn dropped_connection_frees_its_slot() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let cfg = PoolConfig {
            max_connections_per_upstream: Some(1),
            ..PoolConfig::default()
        };
        let pool = upstream.pool(&cfg);
        for round in 1..=3 {
            let mut conn = tokio::time::timeout(Duration::from_secs(2), pool.checkout())
                .await
                .expect("slot free again")
                .expect("checkout");
            assert!(!conn.is_reused());
            ping(&mut conn).await;
            assert_eq!(pool.open_count(), 1);
            drop(conn);
            assert_eq!(pool.open_count(), 0, "round {round}");
            assert_eq!(pool.idle_count(), 0);
        }
        assert_eq!(upstream.accepted(), 3);
        eventually("all three closed", || upstream.closed() == 3).await;
    });
}

#[test]
fn cancelled_checkout_leaks_no_slot() {
    run(async {
        let upstream = TestUpstream::start(After::KeepOpen).await;
        let cfg = PoolConfig {
            max_connections_per_upstream: Some(1),
            ..PoolConfig::default()
        };
        let pool = upstream.pool(&cfg);
        let held = pool.checkout().await.expect("checkout");
        for _ in 0..3 {
            let waited = tokio::time::timeout(Duration::from_millis(50), pool.checkout()).await;
            assert!(waited.is_err(), "must wait while the only slot is held");
        }
        drop(held);
        let conn = tokio::time::timeout(Duration::from_secs(2), pool.checkout())
            .await
            .expect("the cancelled waiters left the slot free")
            .expect("checkout");
        drop(conn);
        assert_eq!(pool.open_count(), 0);
    });
}

#[test]
fn failed_connect_frees_its_slot() {
    run(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let cfg = PoolConfig {
            max_connections_per_upstream: Some(1),
            ..PoolConfig::default()
        };
        let pool = pool_to(port, &cfg);
        for _ in 0..3 {
            let err = tokio::time::timeout(Duration::from_secs(2), pool.checkout())
                .await
                .expect("no wait: the failed attempt released its slot")
                .expect_err("nothing listens");
            assert_eq!(err.kind(), ConnectErrorKind::Refused);
        }
        assert_eq!(pool.open_count(), 0);
    });
}
