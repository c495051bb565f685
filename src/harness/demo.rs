//! `chunkgate demo`: what split chunks do to a streaming client, and what chunkgate does.
//!
//! In one process, on ephemeral 127.0.0.1 ports, the demo starts the mock LLM upstream with
//! adversarial splits (every chunk cut into several writes: inside UTF-8 characters, inside
//! size lines, before the CRLF) and a chunkgate proxy in front of it. It runs the same naive
//! streaming client twice, directly against the upstream and through chunkgate, and shows side
//! by side what a user of each would see. Then it runs the harness against both paths and
//! prints the verdicts. No network, no configuration, no other program; a few seconds.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, UpstreamUrl};
use crate::harness::mock::{MockOptions, MockUpstream};
use crate::harness::naive::{self, NaiveView};
use crate::harness::runner::{self, Direction, HarnessConfig, Report};
use crate::harness::split::SplitStrategy;

/// `chunkgate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Tokens in the streamed answer.
    #[arg(long, default_value_t = 40)]
    pub tokens: usize,
    /// Seed of the text and of the split positions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the upstream cuts each chunk into writes.
    #[arg(long, default_value = "mixed")]
    pub split: SplitStrategy,
    /// Never colour the output (colour is used only on a terminal, and never when NO_COLOR is set).
    #[arg(long)]
    pub no_color: bool,
}

/// Width of each of the two columns, in terminal cells.
const COLUMN: usize = 36;
/// Space between the columns.
const GUTTER: &str = "    ";
/// Strategies the verdict runs.
const VERDICT_STRATEGIES: [SplitStrategy; 5] = [
    SplitStrategy::Utf8,
    SplitStrategy::Random,
    SplitStrategy::SizeLine,
    SplitStrategy::Crlf,
    SplitStrategy::Straddle,
];

/// ANSI styling, or none.
#[derive(Debug, Clone, Copy)]
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
    fn red(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn green(self, s: &str) -> String {
        self.wrap("1;32", s)
    }
    /// Green for zero, red otherwise.
    fn count(self, n: usize, s: &str) -> String {
        if n == 0 {
            self.green(s)
        } else {
            self.red(s)
        }
    }
}

/// Entry point of `chunkgate demo`: exit 0 when chunkgate's verdict is a pass.
pub fn main(args: DemoArgs) -> ExitCode {
    let paint = Paint {
        on: !args.no_color
            && std::io::stdout().is_terminal()
            && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty()),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chunkgate demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo(&args, paint)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chunkgate demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A running chunkgate proxy, stopped on drop.
struct ProxyHandle {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start chunkgate on an ephemeral port in front of `upstream`.
async fn start_proxy(upstream: SocketAddr) -> io::Result<ProxyHandle> {
    let url = UpstreamUrl::parse(&format!("http://{upstream}")).map_err(io::Error::other)?;
    let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = Config::simple(listen, vec![url]);
    let proxy = crate::proxy::Proxy::bind(cfg).await?;
    let addr = proxy.local_addr();
    let shutdown = proxy.shutdown_token();
    tokio::spawn(proxy.run());
    Ok(ProxyHandle { addr, shutdown })
}

fn out(s: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(s.as_bytes())?;
    stdout.flush()
}

async fn demo(args: &DemoArgs, paint: Paint) -> io::Result<bool> {
    let started = Instant::now();
    let opts = MockOptions {
        split: args.split,
        seed: args.seed,
        tokens: args.tokens.clamp(1, 400),
        gap: Duration::from_millis(15),
        split_gap: Duration::from_millis(2),
        ..MockOptions::default()
    };
    let mock = MockUpstream::bind(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await?;
    let mock = mock.spawn();
    let proxy = start_proxy(mock.addr()).await?;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}\n",
        paint.bold("chunkgate demo: one LLM stream, two paths")
    );
    let _ = writeln!(
        s,
        "  mock LLM upstream  http://{}  {}",
        mock.addr(),
        paint.dim(&format!(
            "every chunk cut into several writes ({} split)",
            args.split
        ))
    );
    let _ = writeln!(
        s,
        "  chunkgate proxy    http://{}  {}",
        proxy.addr,
        paint.dim("in front of the upstream")
    );
    let _ = writeln!(
        s,
        "\nThe same naive streaming client, which hands each TCP read to the app as a message,\n\
         streams {} tokens of Korean, emoji and ASCII twice...\n",
        args.tokens
    );
    out(&s)?;

    let body = "{\"model\":\"mock-1\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"인사해 주세요\"}]}";
    let deadline = Duration::from_secs(10);
    let (direct, through) = tokio::join!(
        naive::run(mock.addr(), "/v1/chat/completions", &[], body, deadline),
        naive::run(proxy.addr, "/v1/chat/completions", &[], body, deadline),
    );
    let direct = direct.map_err(|e| io::Error::other(format!("direct stream: {e}")))?;
    let through =
        through.map_err(|e| io::Error::other(format!("stream through chunkgate: {e}")))?;
    out(&side_by_side(&direct, &through, paint))?;
    out(&format!(
        "  {}\n",
        paint.dim("Same bytes from the same upstream: the difference is where each read stops.")
    ))?;

    out(&format!(
        "\n{}\n",
        paint.bold(
            "Harness verdict: every chunk as sent and whole in one read, UTF-8, whole SSE events"
        )
    ))?;
    let direct_cfg = HarnessConfig {
        directions: vec![Direction::Response],
        ..verdict_config(mock.addr())
    };
    let through_cfg = HarnessConfig {
        directions: vec![Direction::Response, Direction::Request],
        ..verdict_config(proxy.addr)
    };
    let hidden = ProgressBar::hidden();
    let (direct_report, through_report) = tokio::join!(
        runner::run(&direct_cfg, &hidden),
        runner::run(&through_cfg, &hidden),
    );
    let (direct_line, _) = verdict("directly ", &direct_report, paint);
    let (through_line, through_ok) = verdict("chunkgate", &through_report, paint);
    out(&format!("{direct_line}{through_line}"))?;
    if !through_ok {
        out(&through_report.table())?;
    }
    out(&format!(
        "\n{}\n",
        paint.dim(&format!(
            "done in {:.1} s; run `chunkgate harness --target URL` against any proxy",
            started.elapsed().as_secs_f64()
        ))
    ))?;
    drop(proxy);
    mock.shutdown().await;
    Ok(through_ok)
}

fn verdict_config(target: SocketAddr) -> HarnessConfig {
    HarnessConfig {
        strategies: VERDICT_STRATEGIES.to_vec(),
        iterations: 2,
        tokens: 12,
        request_chunks: 12,
        ..HarnessConfig::new(target)
    }
}

/// One verdict line and whether it is a pass.
fn verdict(name: &str, report: &Report, paint: Paint) -> (String, bool) {
    let chunks: usize = report.rows.iter().map(|r| r.chunks).sum();
    let split: usize = report.rows.iter().map(|r| r.split_reads).sum();
    let directions = if report
        .rows
        .iter()
        .any(|r| r.direction == Direction::Request)
    {
        "responses and requests"
    } else {
        "responses"
    };
    let ok = report.passed && split == 0;
    let mark = if ok {
        paint.green("PASS")
    } else {
        paint.red("FAIL")
    };
    let (detail, more) = if !report.passed {
        let first = report
            .rows
            .iter()
            .find_map(|r| r.first_failure.as_ref())
            .map(|f| f.failure.message.clone())
            .unwrap_or_default();
        (
            format!("{} of {} cases failed", report.failed, report.cases),
            first,
        )
    } else if split > 0 {
        (
            format!(
                "{} of {chunks} chunks reached the client split across reads",
                paint.red(&split.to_string())
            ),
            format!(
                "chunks as sent on the wire, {} cases, {directions}",
                report.cases
            ),
        )
    } else {
        (
            format!(
                "{chunks} chunks as sent, {} split across reads",
                paint.green("0")
            ),
            format!("{} cases, {directions}", report.cases),
        )
    };
    let indent = " ".repeat(name.len() + 10);
    (
        format!(
            "  {name}  {mark}  {detail}\n{indent}{}\n",
            paint.dim(&format!("({more})"))
        ),
        ok,
    )
}

/// The two views next to each other: the text each user saw, then the counts.
fn side_by_side(direct: &NaiveView, through: &NaiveView, paint: Paint) -> String {
    let mut s = String::new();
    let head = |t: &str| pad(&paint.bold(t), display_width(t));
    let _ = writeln!(
        s,
        "  {}{GUTTER}{}",
        head("directly from the upstream"),
        paint.bold("through chunkgate")
    );
    let rule = "─".repeat(COLUMN);
    let _ = writeln!(s, "  {}{GUTTER}{}", paint.dim(&rule), paint.dim(&rule));
    let left = wrap(&direct.text, COLUMN);
    let right = wrap(&through.text, COLUMN);
    for i in 0..left.len().max(right.len()) {
        let l = left.get(i).map(String::as_str).unwrap_or("");
        let r = right.get(i).map(String::as_str).unwrap_or("");
        let shown = highlight_replacements(l, paint);
        let _ = writeln!(
            s,
            "  {}{GUTTER}{}",
            pad(&shown, display_width(l)),
            highlight_replacements(r, paint)
        );
    }
    let _ = writeln!(s, "  {}{GUTTER}{}", paint.dim(&rule), paint.dim(&rule));
    let rows: [(&str, usize, String, usize, String); 3] = [
        (
            "broken characters (�)",
            direct.replacement_chars,
            direct.replacement_chars.to_string(),
            through.replacement_chars,
            through.replacement_chars.to_string(),
        ),
        (
            "events split across reads",
            direct.events_split,
            format!("{} of {}", direct.events_split, direct.events),
            through.events_split,
            format!("{} of {}", through.events_split, through.events),
        ),
        (
            "unparseable messages",
            direct.broken_messages,
            format!("{} of {}", direct.broken_messages, direct.messages),
            through.broken_messages,
            format!("{} of {}", through.broken_messages, through.messages),
        ),
    ];
    for (label, ln, lv, rn, rv) in rows {
        let cell = |n: usize, v: &str| {
            let text = format!("{label:<26}{v:>10}");
            let w = display_width(&text);
            (
                format!("{label:<26}{}", paint.count(n, &format!("{v:>10}"))),
                w,
            )
        };
        let (l, lw) = cell(ln, &lv);
        let (r, _) = cell(rn, &rv);
        let _ = writeln!(s, "  {}{GUTTER}{}", pad(&l, lw), r);
    }
    s
}

/// `s` followed by spaces up to [`COLUMN`] cells, given its visible width.
fn pad(s: &str, width: usize) -> String {
    format!("{s}{}", " ".repeat(COLUMN.saturating_sub(width)))
}

/// Colour every `�` red.
fn highlight_replacements(s: &str, paint: Paint) -> String {
    if !paint.on {
        return s.to_string();
    }
    s.replace('\u{fffd}', &paint.red("\u{fffd}"))
}

/// Greedy wrap at `width` terminal cells (breaking at spaces when possible).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut w = 0;
        for word in para.split_inclusive(' ') {
            let ww = display_width(word);
            if w + ww > width && !line.is_empty() {
                lines.push(line.trim_end().to_string());
                line.clear();
                w = 0;
            }
            if ww > width {
                // A word wider than a line: break it by characters.
                for c in word.chars() {
                    let cw = char_width(c);
                    if w + cw > width {
                        lines.push(std::mem::take(&mut line));
                        w = 0;
                    }
                    line.push(c);
                    w += cw;
                }
            } else {
                line.push_str(word);
                w += ww;
            }
        }
        if !line.trim_end().is_empty() {
            lines.push(line.trim_end().to_string());
        }
    }
    lines
}

/// Terminal cells taken by `s` (ANSI escapes are not expected here).
fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Terminal cells of one character: 2 for Hangul, CJK and emoji, 0 for combining marks and
/// joiners, 1 otherwise.
fn char_width(c: char) -> usize {
    let u = c as u32;
    match u {
        0x0300..=0x036f | 0x200b..=0x200f | 0xfe00..=0xfe0f => 0,
        0x1100..=0x115f
        | 0x2e80..=0x303e
        | 0x3041..=0x33ff
        | 0x3400..=0x4dbf
        | 0x4e00..=0x9fff
        | 0xa960..=0xa97f
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xfe30..=0xfe4f
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1f64f
        | 0x1f680..=0x1f6ff
        | 0x1f900..=0x1f9ff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_counts_hangul_and_emoji_as_two_cells() {
        assert_eq!(display_width("안녕 ab"), 7);
        assert_eq!(display_width("🚀�"), 3);
    }

    #[test]
    fn wrap_keeps_lines_within_the_column() {
        let text = "안녕하세요! 저는 청크게이트입니다. 🚀 한국어 텍스트도, 이모지도 😀 깨지지 않고 그대로 도착합니다. Streaming LLM 응답은";
        let lines = wrap(text, 20);
        assert!(lines.len() > 3);
        assert!(lines.iter().all(|l| display_width(l) <= 20), "{lines:?}");
        assert_eq!(lines.join(" "), text);
        let long = "가".repeat(30);
        assert!(wrap(&long, 20).iter().all(|l| display_width(l) <= 20));
    }

    #[test]
    fn plain_paint_adds_no_escapes() {
        let p = Paint { on: false };
        assert_eq!(p.red("x"), "x");
        assert_eq!(highlight_replacements("a�", p), "a�");
        let p = Paint { on: true };
        assert_eq!(p.red("x"), "\x1b[1;31mx\x1b[0m");
    }
}
