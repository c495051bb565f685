//! `chunkgate bench table`: one markdown table of medians and ratios from `--json` results.
//!
//! The input holds one [`Report`] per line, each with a `tag` naming the target (the direct
//! path, each proxy). For every measure the median over the rounds is taken per target, and
//! each proxy is shown next to its ratio to the baseline proxy. Token delay is shown as the
//! delay *added* over the direct path (the proxy's median percentile minus the direct path's).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use super::Report;

/// Arguments of `chunkgate bench table`.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// A file of `--json` reports, one per line.
    pub file: PathBuf,
    /// Column order: the tags to show, comma-separated.
    #[arg(long, default_value = "direct,nginx,haproxy,chunkgate")]
    pub order: String,
    /// The tag every proxy is compared with.
    #[arg(long, default_value = "nginx")]
    pub baseline: String,
    /// The tag of the no-proxy path (its token delay is subtracted; it has no proxy CPU).
    #[arg(long, default_value = "direct")]
    pub direct: String,
}

/// Print the table for `args.file`.
pub fn main(args: TableArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench table: {}: {e}", args.file.display());
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Report>(line) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("bench table: {}:{}: {e}", args.file.display(), n + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    let order: Vec<&str> = args
        .order
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    print!("{}", render(&reports, &order, &args.baseline, &args.direct));
    ExitCode::SUCCESS
}

/// Median of the values (mean of the middle two for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// How a measure reads: whether higher is better decides nothing here, only the format.
#[derive(Clone, Copy)]
enum Unit {
    Rate,
    Micros,
    Kib,
    Mbps,
    Count,
}

fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Rate if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        Unit::Rate => format!("{v:.0}"),
        Unit::Micros | Unit::Kib => {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        Unit::Mbps => format!("{v:.0}"),
        Unit::Count => format!("{v:.0}"),
    }
}

struct Row {
    label: String,
    unit: Unit,
    /// Value per tag, in column order.
    values: Vec<Option<f64>>,
    /// Whether to show the ratio to the baseline.
    ratio: bool,
}

fn values_of(
    reports: &[Report],
    tag: &str,
    filter: impl Fn(&Report) -> bool,
    pick: impl Fn(&Report) -> Option<f64>,
) -> Vec<f64> {
    reports
        .iter()
        .filter(|r| r.tag.as_deref() == Some(tag) && filter(r))
        .filter_map(pick)
        .collect()
}

/// Render the markdown table (one row per measure, one column per tag in `order`).
pub fn render(reports: &[Report], order: &[&str], baseline: &str, direct: &str) -> String {
    let mut rows: Vec<Row> = Vec::new();
    let med = |mode: &str, tag: &str, pick: &dyn Fn(&Report) -> Option<f64>| {
        median(values_of(reports, tag, |r| r.mode == mode, pick))
    };
    let simple = |label: &str,
                  unit: Unit,
                  mode: &str,
                  proxies_only: bool,
                  pick: &dyn Fn(&Report) -> Option<f64>| Row {
        label: label.to_string(),
        unit,
        values: order
            .iter()
            .map(|t| {
                if proxies_only && *t == direct {
                    None
                } else {
                    med(mode, t, pick)
                }
            })
            .collect(),
        ratio: true,
    };
    rows.push(simple("small POST req/s", Unit::Rate, "rps", false, &|r| {
        r.req_per_s
    }));
    rows.push(simple("CPU µs/request", Unit::Micros, "rps", true, &|r| {
        r.cpu_us_per_request
    }));
    rows.push(simple(
        "small POST latency p99 µs",
        Unit::Micros,
        "rps",
        false,
        &|r| r.latency_us.map(|p| p.p99),
    ));
    for (label, pick) in [
        (
            "added token delay p50 µs",
            (|r: &Report| r.delay_us.map(|p| p.p50)) as fn(&Report) -> Option<f64>,
        ),
        ("added token delay p99 µs", |r: &Report| {
            r.delay_us.map(|p| p.p99)
        }),
    ] {
        let direct_value = med("sse", direct, &pick);
        rows.push(Row {
            label: label.to_string(),
            unit: Unit::Micros,
            values: order
                .iter()
                .map(|t| {
                    let v = med("sse", t, &pick)?;
                    if *t == direct {
                        Some(v)
                    } else {
                        Some(v - direct_value?)
                    }
                })
                .collect(),
            ratio: true,
        });
    }
    rows.push(simple("CPU µs/event", Unit::Micros, "sse", true, &|r| {
        r.cpu_us_per_event
    }));
    let idle_sizes: BTreeSet<usize> = reports
        .iter()
        .filter(|r| r.mode == "idle")
        .map(|r| r.connections)
        .collect();
    for size in idle_sizes {
        let of_size = |r: &Report| r.mode == "idle" && r.connections == size;
        rows.push(Row {
            label: format!("KiB/stream, {size} idle streams"),
            unit: Unit::Kib,
            values: order
                .iter()
                .map(|t| {
                    if *t == direct {
                        None
                    } else {
                        median(values_of(reports, t, of_size, |r| r.kib_per_stream))
                    }
                })
                .collect(),
            ratio: true,
        });
        rows.push(Row {
            label: format!("streams failed, {size} idle streams (sum)"),
            unit: Unit::Count,
            values: order
                .iter()
                .map(|t| {
                    let v = values_of(reports, t, of_size, |r| Some(r.failed as f64));
                    (!v.is_empty()).then(|| v.iter().sum())
                })
                .collect(),
            ratio: false,
        });
    }
    rows.push(simple("upload MB/s", Unit::Mbps, "upload", false, &|r| {
        r.mb_per_s
    }));
    rows.push(Row {
        label: "token streams failed (sum)".to_string(),
        unit: Unit::Count,
        values: order
            .iter()
            .map(|t| {
                let v = values_of(reports, t, |r| r.mode == "sse", |r| Some(r.failed as f64));
                (!v.is_empty()).then(|| v.iter().sum())
            })
            .collect(),
        ratio: false,
    });
    rows.push(Row {
        label: "chunks that split or merged events (sum)".to_string(),
        unit: Unit::Count,
        values: order
            .iter()
            .map(|t| {
                let v = values_of(
                    reports,
                    t,
                    |r| r.mode == "sse" || r.mode == "idle",
                    |r| Some((r.split_chunks? + r.merged_chunks?) as f64),
                );
                (!v.is_empty()).then(|| v.iter().sum())
            })
            .collect(),
        ratio: false,
    });

    let base_col = order.iter().position(|t| *t == baseline);
    let mut out = String::new();
    out.push_str("| measure |");
    for t in order {
        out.push_str(&format!(" {t} |"));
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in order {
        out.push_str("---:|");
    }
    out.push('\n');
    for row in &rows {
        if row.values.iter().all(Option::is_none) {
            continue;
        }
        out.push_str(&format!("| {} |", row.label));
        let base = base_col.and_then(|i| row.values[i]);
        for (i, (v, t)) in row.values.iter().zip(order).enumerate() {
            let cell = match v {
                None => "—".to_string(),
                Some(v) => {
                    let mut c = format_value(*v, row.unit);
                    if row.ratio && *t != direct && Some(i) != base_col {
                        if let Some(b) = base.filter(|b| *b != 0.0) {
                            c.push_str(&format!(" ({:.2}×)", v / b));
                        }
                    }
                    c
                }
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    let rounds = order
        .iter()
        .map(|t| {
            reports
                .iter()
                .filter(|r| r.mode == "rps" && r.tag.as_deref() == Some(*t))
                .count()
        })
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "\nMedians of {rounds} round(s); (×) is the ratio to {baseline}; added delay is over the {direct} path.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::hist::Percentiles;

    fn rps(tag: &str, rate: f64, cpu: f64) -> Report {
        Report {
            mode: "rps".into(),
            tag: Some(tag.into()),
            req_per_s: Some(rate),
            cpu_us_per_request: Some(cpu),
            ..Report::default()
        }
    }

    fn sse(tag: &str, p50: f64, p99: f64) -> Report {
        Report {
            mode: "sse".into(),
            tag: Some(tag.into()),
            delay_us: Some(Percentiles {
                count: 1,
                p50,
                p90: p50,
                p99,
                max: p99,
            }),
            split_chunks: Some(0),
            merged_chunks: Some(0),
            ..Report::default()
        }
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn render_takes_medians_ratios_and_added_delay() {
        let reports = vec![
            rps("direct", 90_000.0, 1.0),
            rps("nginx", 40_000.0, 20.0),
            rps("nginx", 50_000.0, 18.0),
            rps("nginx", 45_000.0, 19.0),
            rps("x", 90_000.0, 9.5),
            sse("direct", 50.0, 100.0),
            sse("nginx", 150.0, 600.0),
            sse("x", 70.0, 150.0),
        ];
        let table = render(&reports, &["direct", "nginx", "x"], "nginx", "direct");
        assert!(
            table.contains("| small POST req/s | 90.0k | 45.0k | 90.0k (2.00×) |"),
            "{table}"
        );
        assert!(
            table.contains("| CPU µs/request | — | 19.0 | 9.5 (0.50×) |"),
            "{table}"
        );
        assert!(
            table.contains("| added token delay p99 µs | 100 | 500 | 50.0 (0.10×) |"),
            "{table}"
        );
        assert!(
            !table.contains("upload"),
            "rows without data are left out: {table}"
        );
    }
}
