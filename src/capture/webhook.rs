//! The webhook sink: each record POSTed as JSON to the application, with the configured
//! headers and `Idempotency-Key: <request_id>`, a timeout per attempt, retries with
//! exponential backoff on network errors, timeouts, 408, 429 and 5xx, and at most
//! `max_in_flight` deliveries under way. A new connection per delivery (hyper's HTTP/1.1
//! client over the upstream connector, so `https://` works with the same TLS setup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use super::record::Record;
use super::{Inbox, Msg};
use crate::config::{SinkConfig, Timeouts, UpstreamConfig, WebhookConfig};
use crate::metrics::SinkMetrics;
use crate::upstream::connect::Connector;

/// The first retry's pause; each next one doubles, up to [`BACKOFF_CAP`], with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Most bytes of an answer body read (and thrown away) so the connection ends cleanly.
const MAX_ANSWER_BYTES: usize = 64 << 10;

struct Hook {
    name: String,
    connector: Connector,
    /// `host[:port]` for the Host header.
    authority: String,
    /// Request target: the URL's path, `/` when it has none.
    target: String,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    timeout: Duration,
    retries: u32,
    metrics: SinkMetrics,
}

/// Check the configuration and start the writer task.
pub(super) fn start(
    sink: &SinkConfig,
    cfg: &WebhookConfig,
    timeouts: &Timeouts,
    inbox: Inbox,
) -> Result<(), String> {
    let err = |m: String| format!("capture sink `{}`: {m}", sink.name);
    let upstream = UpstreamConfig::new(cfg.url.clone());
    let connector = Connector::new(&upstream, timeouts).map_err(err)?;
    let mut headers = Vec::with_capacity(cfg.headers.len());
    for (name, value) in &cfg.headers {
        let n = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| err(format!("invalid header name {name:?}")))?;
        let mut v = hyper::header::HeaderValue::from_str(value)
            .map_err(|_| err(format!("header `{name}`: invalid value")))?;
        v.set_sensitive(true);
        headers.push((n, v));
    }
    let target = if cfg.url.path_prefix.is_empty() {
        "/".to_string()
    } else {
        cfg.url.path_prefix.clone()
    };
    let hook = Arc::new(Hook {
        name: sink.name.clone(),
        authority: cfg.url.authority(),
        connector,
        target,
        headers,
        timeout: cfg.timeout,
        retries: cfg.retries,
        metrics: inbox.metrics.clone(),
    });
    tokio::spawn(run(hook, inbox, cfg.max_in_flight));
    Ok(())
}

async fn run(hook: Arc<Hook>, mut inbox: Inbox, max_in_flight: usize) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    while let Some(msg) = inbox.rx.recv().await {
        inbox.took(&msg);
        match msg {
            Msg::Record(record, _) => {
                // Wait for a slot with the record out of the queue: the queue behind it
                // fills, and new records are dropped and counted there.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let hook = Arc::clone(&hook);
                tokio::spawn(async move {
                    hook.deliver(&record).await;
                    drop(slot);
                });
            }
            Msg::Flush(ack) => {
                // Every delivery under way holds a slot: all of them back means all done.
                if let Ok(every) = slots.acquire_many(all).await {
                    drop(every);
                }
                let _ = ack.send(());
            }
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth trying again (network error, timeout, 408, 429, 5xx).
    Again(String),
    /// Refused for good (another 4xx, 3xx).
    Refused(u16),
}

impl Hook {
    async fn deliver(&self, record: &Record) {
        let body = match serde_json::to_vec(record) {
            Ok(b) => Bytes::from(b),
            Err(_) => {
                self.metrics.failed(1);
                return;
            }
        };
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = tokio::time::timeout(self.timeout, self.post(record, body.clone())).await;
            self.metrics.write_took(started.elapsed());
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(_) => Attempt::Again(format!("no answer within {:?}", self.timeout)),
            };
            match outcome {
                Attempt::Delivered => {
                    self.metrics.written(1);
                    return;
                }
                Attempt::Refused(status) => {
                    tracing::warn!(sink = %self.name, request_id = %record.request_id, status, "capture: webhook refused the record");
                    self.metrics.failed(1);
                    return;
                }
                Attempt::Again(why) if attempt < self.retries => {
                    tracing::debug!(sink = %self.name, request_id = %record.request_id, attempt, error = %why, "capture: webhook delivery failed, retrying");
                    self.metrics.retried();
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Attempt::Again(why) => {
                    tracing::warn!(sink = %self.name, request_id = %record.request_id, error = %why, "capture: webhook delivery given up");
                    self.metrics.failed(1);
                    return;
                }
            }
        }
    }

    async fn post(&self, record: &Record, body: Bytes) -> Attempt {
        let stream = match self.connector.connect().await {
            Ok(s) => s,
            Err(e) => return Attempt::Again(e.to_string()),
        };
        let (mut send, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(e) => return Attempt::Again(e.to_string()),
            };
        let conn = tokio::spawn(conn);
        let mut req = Request::post(self.target.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .header("idempotency-key", record.request_id.as_str())
            .header(hyper::header::CONNECTION, "close");
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            // Only a request id that is not a valid header value gets here.
            Err(_) => return Attempt::Refused(0),
        };
        let result = match send.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read (a bounded part of) the answer so the exchange ends cleanly.
                let mut body = resp.into_body();
                let mut read = 0usize;
                while read < MAX_ANSWER_BYTES {
                    match body.frame().await {
                        Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
                match status {
                    200..=299 => Attempt::Delivered,
                    408 | 429 | 500..=599 => Attempt::Again(format!("status {status}")),
                    _ => Attempt::Refused(status),
                }
            }
            Err(e) => Attempt::Again(e.to_string()),
        };
        conn.abort();
        result
    }
}

/// The pause before retry `attempt` (0 for the first retry): doubling from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with up to a quarter of jitter taken off.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP);
    let jitter = full.mul_f64(fastrand::f64() * 0.25);
    full.saturating_sub(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert!(backoff(0) <= BACKOFF_BASE && backoff(0) >= BACKOFF_BASE.mul_f64(0.75));
        assert!(backoff(3) <= Duration::from_millis(800));
        assert!(backoff(3) >= Duration::from_millis(600));
        assert!(backoff(40) <= BACKOFF_CAP);
        assert!(backoff(40) >= BACKOFF_CAP.mul_f64(0.75));
    }
}
