//! `chunkgate capture`: read what the SQLite sink stored.
//!
//! - `show REQUEST_ID --sqlite PATH`: the record(s) of one request, as JSON (one per line).
//! - `tail --sqlite PATH [--lines N] [--follow]`: the latest records as a table; with
//!   `--follow`, new ones as they arrive.
//! - `stats --sqlite PATH`: records, outcomes, tokens by model, p50/p99 time to first token.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::record::Record;
use super::sqlite::{open_for_reading, record_of, COLUMNS};

/// Arguments of `chunkgate capture`.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    #[command(subcommand)]
    command: CaptureCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum CaptureCommand {
    /// Print the record(s) of one request as JSON, one per line.
    Show {
        /// The request id (`x-request-id`).
        request_id: String,
        /// The SQLite capture database.
        #[arg(long, value_name = "PATH")]
        sqlite: PathBuf,
    },
    /// Print the latest records as a table.
    Tail {
        /// The SQLite capture database.
        #[arg(long, value_name = "PATH")]
        sqlite: PathBuf,
        /// How many of the latest records to show first.
        #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
        lines: u32,
        /// Keep printing new records as they are written.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print records, outcomes, tokens by model and time-to-first-token percentiles.
    Stats {
        /// The SQLite capture database.
        #[arg(long, value_name = "PATH")]
        sqlite: PathBuf,
    },
}

/// How often `tail --follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Run `chunkgate capture ...`.
pub fn main(args: CaptureArgs) -> ExitCode {
    let (path, result) = match &args.command {
        CaptureCommand::Show { request_id, sqlite } => (sqlite, show(sqlite, request_id)),
        CaptureCommand::Tail {
            sqlite,
            lines,
            follow,
        } => (sqlite, tail(sqlite, *lines, *follow)),
        CaptureCommand::Stats { sqlite } => (sqlite, stats(sqlite)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chunkgate capture: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn show(path: &std::path::Path, request_id: &str) -> Result<ExitCode, String> {
    let conn = open_for_reading(path)?;
    let records = select(
        &conn,
        &format!("SELECT {COLUMNS} FROM completions WHERE request_id = ?1 ORDER BY id"),
        params![request_id],
    )?;
    if records.is_empty() {
        eprintln!("chunkgate capture: no record of request {request_id:?}");
        return Ok(ExitCode::FAILURE);
    }
    for (_, r) in records {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(ExitCode::SUCCESS)
}

fn select(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(i64, Record)>, String> {
    let mut stmt = conn.prepare(sql).map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(params, record_of)
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn tail(path: &std::path::Path, lines: u32, follow: bool) -> Result<ExitCode, String> {
    let conn = open_for_reading(path)?;
    let mut latest = select(
        &conn,
        &format!("SELECT {COLUMNS} FROM completions ORDER BY id DESC LIMIT ?1"),
        params![lines],
    )?;
    latest.reverse();
    let mut last = latest.last().map_or(0, |(id, _)| *id);
    print!("{}", tail_table(&latest, true));
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let new = select(
            &conn,
            &format!("SELECT {COLUMNS} FROM completions WHERE id > ?1 ORDER BY id LIMIT 1000"),
            params![last],
        )?;
        if let Some((id, _)) = new.last() {
            last = *id;
            print!("{}", tail_table(&new, false));
        }
    }
}

/// Most characters of the answer shown in a `tail` row.
const TEXT_PREVIEW: usize = 40;

/// The `tail` rows, with the header line when `header`.
pub fn tail_table(records: &[(i64, Record)], header: bool) -> String {
    let mut rows: Vec<[String; 9]> = Vec::with_capacity(records.len() + 1);
    if header {
        rows.push(
            [
                "started_at",
                "request_id",
                "route",
                "status",
                "outcome",
                "model",
                "tokens",
                "ttft_ms",
                "text",
            ]
            .map(String::from),
        );
    }
    for (_, r) in records {
        let mut text: String = r
            .text
            .chars()
            .take(TEXT_PREVIEW)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if r.text.chars().count() > TEXT_PREVIEW {
            text.push('…');
        }
        rows.push([
            r.started_at.clone(),
            r.request_id.clone(),
            r.route.clone(),
            r.status.to_string(),
            r.outcome.clone(),
            r.model.clone().unwrap_or_else(|| "-".into()),
            r.usage
                .output_tokens
                .map_or_else(|| "-".into(), |n| n.to_string()),
            r.ttft_ms.map_or_else(|| "-".into(), |t| format!("{t:.1}")),
            text,
        ]);
    }
    columns(&rows)
}

/// Left-aligned columns two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `p`-th percentile (0..=100) of sorted `values`, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn stats(path: &std::path::Path) -> Result<ExitCode, String> {
    let conn = open_for_reading(path)?;
    print!("{}", stats_text(&conn)?);
    Ok(ExitCode::SUCCESS)
}

/// The `stats` report of a capture database.
pub fn stats_text(conn: &Connection) -> Result<String, String> {
    let e = |e: rusqlite::Error| e.to_string();
    let mut out = String::new();
    let (records, first, last): (i64, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT COUNT(*), MIN(started_at), MAX(started_at) FROM completions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(e)?;
    let _ = writeln!(out, "records: {records}");
    if let (Some(first), Some(last)) = (first, last) {
        let _ = writeln!(out, "from:    {first}\nto:      {last}");
    }

    let mut ttft: Vec<f64> = {
        let mut stmt = conn
            .prepare("SELECT ttft_ms FROM completions WHERE ttft_ms IS NOT NULL")
            .map_err(e)?;
        let rows = stmt.query_map([], |r| r.get::<_, f64>(0)).map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)?
    };
    ttft.sort_by(f64::total_cmp);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |t| format!("{t:.1} ms"));
    let _ = writeln!(
        out,
        "time to first token: p50 {}, p99 {} ({} records with a first token)",
        ms(percentile(&ttft, 50.0)),
        ms(percentile(&ttft, 99.0)),
        ttft.len()
    );

    let mut outcomes = vec![["outcome", "records"].map(String::from)];
    {
        let mut stmt = conn
            .prepare(
                "SELECT outcome, COUNT(*) FROM completions GROUP BY outcome ORDER BY COUNT(*) DESC, outcome",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok([r.get::<_, String>(0)?, r.get::<_, i64>(1)?.to_string()])
            })
            .map_err(e)?;
        for row in rows {
            outcomes.push(row.map_err(e)?);
        }
    }
    let _ = writeln!(out, "\n{}", columns(&outcomes).trim_end());

    let mut models = vec![[
        "model",
        "records",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "ttft_p50_ms",
    ]
    .map(String::from)];
    {
        let mut stmt = conn
            .prepare(
                "SELECT COALESCE(model, '-'), COUNT(*), COALESCE(SUM(input_tokens), 0), \
                 COALESCE(SUM(output_tokens), 0), COALESCE(SUM(total_tokens), 0) \
                 FROM completions GROUP BY COALESCE(model, '-') ORDER BY COUNT(*) DESC, 1",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(e)?;
        let mut per_model = conn
            .prepare(
                "SELECT ttft_ms FROM completions WHERE COALESCE(model, '-') = ?1 AND ttft_ms IS NOT NULL",
            )
            .map_err(e)?;
        for row in rows {
            let (model, n, input, output, total) = row.map_err(e)?;
            let mut t: Vec<f64> = per_model
                .query_map(params![model], |r| r.get::<_, f64>(0))
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            t.sort_by(f64::total_cmp);
            let p50 = percentile(&t, 50.0).map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
            models.push([
                model,
                n.to_string(),
                input.to_string(),
                output.to_string(),
                total.to_string(),
                p50,
            ]);
        }
    }
    let _ = writeln!(out, "\n{}", columns(&models).trim_end());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn columns_align() {
        let rows = [
            ["a", "bb"].map(String::from),
            ["ccc", "d"].map(String::from),
        ];
        assert_eq!(columns(&rows), "a    bb\nccc  d\n");
    }
}
