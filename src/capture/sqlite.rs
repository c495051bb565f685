//! The SQLite sink: the embedded default store. One connection on a dedicated thread, WAL
//! mode, each batch inserted in one transaction into the table `completions`, one column
//! per record field (`usage` as `input_tokens`, `output_tokens`, `total_tokens`; `request`
//! as JSON text), indexed on `request_id`, `started_at` and `model`. The schema version is
//! the database's `user_version`, for later migrations.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::value::RawValue;

use super::record::{Record, Usage};
use super::{Inbox, Msg};
use crate::config::SinkConfig;

/// The schema this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// How long a writer or reader waits on a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a failed batch waits before it is tried once more.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS completions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    route TEXT NOT NULL,
    upstream TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    dialect TEXT,
    model TEXT,
    text TEXT NOT NULL,
    finish_reason TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    ttfb_ms REAL,
    ttft_ms REAL,
    duration_ms REAL NOT NULL,
    truncated INTEGER NOT NULL,
    request TEXT
);
CREATE INDEX IF NOT EXISTS completions_request_id ON completions (request_id);
CREATE INDEX IF NOT EXISTS completions_started_at ON completions (started_at);
CREATE INDEX IF NOT EXISTS completions_model ON completions (model);
";

const INSERT: &str = "INSERT INTO completions (request_id, started_at, route, upstream, method, \
    path, status, outcome, dialect, model, text, finish_reason, input_tokens, output_tokens, \
    total_tokens, ttfb_ms, ttft_ms, duration_ms, truncated, request) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";

/// The columns read back, in [`record_of`]'s order.
pub const COLUMNS: &str = "id, request_id, started_at, route, upstream, method, path, status, \
    outcome, dialect, model, text, finish_reason, input_tokens, output_tokens, total_tokens, \
    ttfb_ms, ttft_ms, duration_ms, truncated, request";

/// Open (creating if needed) a capture database for writing: WAL mode, the schema, its
/// version checked.
pub fn open_for_writing(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal mode is {mode}, not wal"));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| e.to_string())?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this chunkgate's ({SCHEMA_VERSION})"
        ));
    }
    conn.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Open a capture database for reading (it must exist).
pub fn open_for_reading(path: &Path) -> Result<Connection, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'completions'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    if table.is_none() {
        return Err("no `completions` table: not a chunkgate capture database".to_string());
    }
    Ok(conn)
}

/// A record read back from a row selected with [`COLUMNS`], with its row id.
pub fn record_of(row: &Row<'_>) -> rusqlite::Result<(i64, Record)> {
    let request: Option<String> = row.get(20)?;
    let tokens = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row
            .get::<_, Option<i64>>(i)?
            .and_then(|n| u64::try_from(n).ok()))
    };
    Ok((
        row.get(0)?,
        Record {
            request_id: row.get(1)?,
            started_at: row.get(2)?,
            route: row.get(3)?,
            upstream: row.get(4)?,
            method: row.get(5)?,
            path: row.get(6)?,
            status: row.get(7)?,
            outcome: row.get(8)?,
            dialect: row.get(9)?,
            model: row.get(10)?,
            text: row.get(11)?,
            finish_reason: row.get(12)?,
            usage: Usage {
                input_tokens: tokens(13)?,
                output_tokens: tokens(14)?,
                total_tokens: tokens(15)?,
            },
            ttfb_ms: row.get(16)?,
            ttft_ms: row.get(17)?,
            duration_ms: row.get(18)?,
            truncated: row.get(19)?,
            request: request.and_then(|s| RawValue::from_string(s).ok()),
        },
    ))
}

/// Open the database now (a bad path fails the start) and run the writer thread.
pub(super) fn start(sink: &SinkConfig, path: &Path, inbox: Inbox) -> Result<(), String> {
    let conn = open_for_writing(path).map_err(|e| {
        format!(
            "capture sink `{}`: cannot open {}: {e}",
            sink.name,
            path.display()
        )
    })?;
    let name = sink.name.clone();
    let batch = sink.batch;
    std::thread::Builder::new()
        .name(format!("capture-{}", sink.name))
        .spawn(move || run(&name, conn, batch, inbox))
        .map_err(|e| format!("capture sink `{}`: cannot start: {e}", sink.name))?;
    Ok(())
}

fn run(name: &str, mut conn: Connection, batch: usize, mut inbox: Inbox) {
    let mut msgs = Vec::with_capacity(batch);
    loop {
        inbox.blocking_batch(batch, &mut msgs);
        if msgs.is_empty() {
            return;
        }
        let records: Vec<&Record> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Record(r, _) => Some(&**r),
                Msg::Flush(_) => None,
            })
            .collect();
        if !records.is_empty() {
            let n = u64::try_from(records.len()).unwrap_or(u64::MAX);
            let started = Instant::now();
            let result = insert(&mut conn, &records).or_else(|_| {
                std::thread::sleep(RETRY_PAUSE);
                insert(&mut conn, &records)
            });
            match result {
                Ok(()) => inbox.metrics.written(n),
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "capture: sqlite insert failed");
                    inbox.metrics.failed(n);
                }
            }
            inbox.metrics.write_took(started.elapsed());
        }
        for msg in msgs.drain(..) {
            if let Msg::Flush(ack) = msg {
                let _ = ack.send(());
            }
        }
    }
}

/// Insert `records` in one transaction.
pub fn insert(conn: &mut Connection, records: &[&Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for r in records {
            stmt.execute(params![
                r.request_id,
                r.started_at,
                r.route,
                r.upstream,
                r.method,
                r.path,
                r.status,
                r.outcome,
                r.dialect,
                r.model,
                r.text,
                r.finish_reason,
                r.usage.input_tokens.and_then(|n| i64::try_from(n).ok()),
                r.usage.output_tokens.and_then(|n| i64::try_from(n).ok()),
                r.usage.total_tokens.and_then(|n| i64::try_from(n).ok()),
                r.ttfb_ms,
                r.ttft_ms,
                r.duration_ms,
                r.truncated,
                r.request.as_ref().map(|v| v.get()),
            ])?;
        }
    }
    tx.commit()
}
