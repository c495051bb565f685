//! Completion capture: one [`Record`] per exchange of a route that names sinks, delivered to
//! a JSON-lines file, an SQLite database or an application's webhook, never on the
//! forwarding path.
//!
//! # Contract
//! - **Never waits.** [`Capture::submit`] builds the record and offers it to each of the
//!   route's sinks with a non-blocking send into that sink's own bounded queue (bounded in
//!   records and in bytes). A full queue drops the record for that sink and counts it
//!   (`chunkgate_capture_dropped_total{sink}`); a stalled sink never slows a stream or the
//!   other sinks.
//! - **Writers run apart.** The JSONL and SQLite writers each run on a dedicated thread and
//!   write in batches (one write and flush, one transaction); the webhook runs on its own
//!   task with a bounded number of deliveries in flight, each with a timeout and retries
//!   with backoff.
//! - **Nothing lost at shutdown.** [`Capture::drain`] (called once streams have drained)
//!   waits until every record queued before it is written by every sink, within the
//!   deadline it is given.
//! - **Never a credential.** A record has no field for a header, and its path has no query
//!   string: no `Authorization`, API key or injected header value reaches a sink.
//!
//! ```
//! use chunkgate::capture::record::rfc3339;
//! use std::time::{Duration, UNIX_EPOCH};
//! assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1500)), "1970-01-01T00:00:01.500Z");
//! ```

pub mod cli;
mod jsonl;
pub mod record;
pub mod sqlite;
mod webhook;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, SinkKind};
use crate::logging::ExchangeRecord;
use crate::metrics::{Metrics, SinkMetrics};

pub use record::{Record, Usage};

/// What a sink's queue carries.
enum Msg {
    /// A record and the bytes it counts for in the queue.
    Record(Arc<Record>, u64),
    /// Answer once everything queued before this is written.
    Flush(oneshot::Sender<()>),
}

/// The sending side of one sink's queue.
struct SinkQueue {
    name: String,
    tx: mpsc::Sender<Msg>,
    /// Bytes of the records in the queue.
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
    metrics: SinkMetrics,
    /// Set on SIGHUP for a JSONL sink: reopen the file before the next batch.
    reopen: Option<Arc<AtomicBool>>,
}

impl SinkQueue {
    /// Queue `record` without waiting; drop and count it when the queue is full.
    fn offer(&self, record: &Arc<Record>, weight: u64) {
        let before = self.bytes.fetch_add(weight, Ordering::Relaxed);
        if before.saturating_add(weight) > self.max_bytes {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
            self.metrics.dropped();
            return;
        }
        match self.tx.try_send(Msg::Record(Arc::clone(record), weight)) {
            Ok(()) => self.metrics.queued(),
            Err(_) => {
                self.bytes.fetch_sub(weight, Ordering::Relaxed);
                self.metrics.dropped();
            }
        }
    }
}

/// The receiving side of one sink's queue, as its writer holds it.
struct Inbox {
    rx: mpsc::Receiver<Msg>,
    bytes: Arc<AtomicU64>,
    metrics: SinkMetrics,
}

impl Inbox {
    /// A message taken off the queue: its record's bytes and depth are given back.
    fn took(&self, msg: &Msg) {
        if let Msg::Record(_, weight) = msg {
            self.bytes.fetch_sub(*weight, Ordering::Relaxed);
            self.metrics.dequeued(1);
        }
    }

    /// Block for the next message, then take up to `max - 1` more that are already there.
    /// Empty when every sender is gone.
    fn blocking_batch(&mut self, max: usize, out: &mut Vec<Msg>) {
        out.clear();
        let Some(first) = self.rx.blocking_recv() else {
            return;
        };
        self.took(&first);
        out.push(first);
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(msg) => {
                    self.took(&msg);
                    out.push(msg);
                }
                Err(_) => break,
            }
        }
    }
}

/// The sinks of one route.
struct RouteSinks {
    prefix: String,
    sinks: Vec<usize>,
    request: bool,
    request_max: usize,
}

/// The capture of one proxy: each used sink's queue and writer, and which routes feed which
/// sinks.
pub struct Capture {
    sinks: Vec<SinkQueue>,
    routes: Vec<RouteSinks>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Capture").field("sinks", &names).finish()
    }
}

impl Capture {
    /// Start the writer of every sink a route names (opening files and databases now, so a
    /// bad path fails the start), or `None` when no route names one. JSONL files are
    /// reopened on SIGHUP. Must run inside a Tokio runtime (the webhook writer is a task).
    pub fn start(config: &Config, metrics: &Metrics) -> Result<Option<Arc<Capture>>, String> {
        let used: Vec<&crate::config::SinkConfig> = config
            .sinks
            .iter()
            .filter(|s| {
                config
                    .routes
                    .iter()
                    .any(|r| r.capture.sinks.contains(&s.name))
            })
            .collect();
        if used.is_empty() {
            return Ok(None);
        }
        let mut sinks = Vec::with_capacity(used.len());
        for sink in &used {
            let (tx, rx) = mpsc::channel(sink.queue_records);
            let bytes = Arc::new(AtomicU64::new(0));
            let m = metrics.capture_sink(&sink.name);
            let inbox = Inbox {
                rx,
                bytes: Arc::clone(&bytes),
                metrics: m.clone(),
            };
            let reopen = match &sink.kind {
                SinkKind::Jsonl { path, fsync } => {
                    let flag = Arc::new(AtomicBool::new(false));
                    jsonl::start(sink, path, *fsync, inbox, Arc::clone(&flag))?;
                    Some(flag)
                }
                SinkKind::Sqlite { path } => {
                    sqlite::start(sink, path, inbox)?;
                    None
                }
                SinkKind::Webhook(w) => {
                    webhook::start(sink, w, &config.timeouts, inbox)?;
                    None
                }
            };
            sinks.push(SinkQueue {
                name: sink.name.clone(),
                tx,
                bytes,
                max_bytes: sink.queue_bytes,
                metrics: m,
                reopen,
            });
        }
        let routes = config
            .routes
            .iter()
            .filter(|r| !r.capture.sinks.is_empty())
            .map(|r| RouteSinks {
                prefix: r.prefix.clone(),
                sinks: r
                    .capture
                    .sinks
                    .iter()
                    .filter_map(|n| sinks.iter().position(|s| &s.name == n))
                    .collect(),
                request: r.capture.request,
                request_max: r.capture.request_max,
            })
            .collect();
        let capture = Arc::new(Capture { sinks, routes });
        if capture.sinks.iter().any(|s| s.reopen.is_some()) {
            let weak = Arc::downgrade(&capture);
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    let Some(capture) = weak.upgrade() else {
                        return;
                    };
                    tracing::info!("SIGHUP: reopening capture files");
                    capture.reopen();
                }
            });
        }
        Ok(Some(capture))
    }

    /// Whether exchanges of the route with this prefix are captured, and if so whether its
    /// request body is wanted and up to how many bytes.
    pub fn wants(&self, route: &str) -> Option<Option<usize>> {
        let r = self.routes.iter().find(|r| r.prefix == route)?;
        Some(r.request.then_some(r.request_max))
    }

    /// Hand the record of `rec` to the sinks of its route, never waiting: a sink whose queue
    /// is full drops it and counts the drop. `request` is the request body, kept when the
    /// route captures requests and it fits `capture_request_max`. Does nothing for a route
    /// that names no sink.
    pub fn submit(&self, rec: &ExchangeRecord, request: Option<&[u8]>) {
        let Some(route) = self.routes.iter().find(|r| *r.prefix == *rec.route) else {
            return;
        };
        let request = request.filter(|b| route.request && b.len() <= route.request_max);
        let record = Arc::new(Record::from_exchange(rec, request));
        let weight = record.weight();
        for &i in &route.sinks {
            if let Some(sink) = self.sinks.get(i) {
                sink.offer(&record, weight);
            }
        }
    }

    /// Reopen every JSONL file before its next batch (what SIGHUP does, for logrotate).
    pub fn reopen(&self) {
        for flag in self.sinks.iter().filter_map(|s| s.reopen.as_ref()) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Records waiting in the queues now, over every sink.
    pub fn queued(&self) -> usize {
        self.sinks
            .iter()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum()
    }

    /// Wait until every record queued so far is written by every sink (delivered, for a
    /// webhook, or given up after its retries), for at most `deadline`. Returns whether all
    /// were. Call it once no exchange submits any more. Cancel safety: dropping the future
    /// stops waiting; the writers go on.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let all = async {
            let mut acks = Vec::with_capacity(self.sinks.len());
            for sink in &self.sinks {
                let (tx, rx) = oneshot::channel();
                if sink.tx.send(Msg::Flush(tx)).await.is_ok() {
                    acks.push(rx);
                }
            }
            for ack in acks {
                let _ = ack.await;
            }
        };
        let done = tokio::time::timeout(deadline, all).await.is_ok();
        if done {
            tracing::info!("capture drained: every queued record written");
        } else {
            tracing::warn!(
                queued = self.queued(),
                "capture drain deadline passed with records still queued"
            );
        }
        done
    }
}
