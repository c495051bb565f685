//! `chunkgate harness`: drive adversarial chunk splits through an HTTP endpoint and check
//! what comes out of the other side.
//!
//! - **Response direction**: request streams through the target from a mock upstream (see
//!   [`mock`](crate::harness::mock)) that cuts every chunk into several writes with a split
//!   strategy; read the client side with the strict recording client and check that the
//!   chunks received are exactly the chunks sent, each valid UTF-8, each a whole SSE event
//!   whose `data:` is JSON.
//! - **Request direction**: send chunked bodies cut by each strategy (and the classic `abc` /
//!   `def`+`gh` / `ij` body) to the target's `/echo` route, and compare the chunks the mock
//!   upstream decoded with the chunks sent.
//!
//! Each case is reproducible from the run seed, its strategy and its index.
//!
//! ```no_run
//! use chunkgate::harness::runner::{run, HarnessConfig};
//! # async fn go() {
//! let cfg = HarnessConfig::new("127.0.0.1:8080".parse().unwrap());
//! let report = run(&cfg, &indicatif::ProgressBar::hidden()).await;
//! assert!(report.passed, "{}", report.table());
//! # }
//! ```

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::UpstreamUrl;
use crate::harness::client::{exchange, request_head_bytes, Gaps};
use crate::harness::mock::{MockOptions, MockUpstream};
use crate::harness::peer::Framing;
use crate::harness::script::{mix_seed, request_chunks, StreamScript};
use crate::harness::split::{classic_body, split_body, Piece, SplitStrategy};
use crate::harness::verify::{compare_chunks, verify_stream, CaseStats, Failure, StreamChecks};

/// Which way the split bodies travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to upstream: chunked request bodies to `/echo`.
    Request,
    /// Upstream to client: streamed chat completions.
    Response,
}

impl Direction {
    /// `request` or `response`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// The endpoint under test.
    pub target: SocketAddr,
    /// `Host` header sent to the target.
    pub host: String,
    /// Prefix of every request path (empty or `/something`).
    pub path_prefix: String,
    /// Directions to test, in report order.
    pub directions: Vec<Direction>,
    /// Strategies to test, in report order.
    pub strategies: Vec<SplitStrategy>,
    /// Cases per strategy and direction.
    pub iterations: usize,
    /// Run seed; each case derives its own.
    pub seed: u64,
    /// Tokens per streamed response.
    pub tokens: usize,
    /// Chunks per request body.
    pub request_chunks: usize,
    /// Cases in flight at once.
    pub concurrency: usize,
    /// Also require every chunk to reach its receiver in a single TCP read.
    pub whole_reads: bool,
    /// Pause between the pieces of a split chunk (whole milliseconds are sent to the mock).
    pub split_gap: Duration,
    /// Pause between chunks, as between the tokens of an LLM (whole milliseconds).
    pub token_gap: Duration,
    /// Bound on one case.
    pub case_timeout: Duration,
}

impl HarnessConfig {
    /// Every direction, the default strategies (all but `mixed`), 5 iterations, seed 1.
    pub fn new(target: SocketAddr) -> HarnessConfig {
        HarnessConfig {
            target,
            host: target.to_string(),
            path_prefix: String::new(),
            directions: vec![Direction::Response, Direction::Request],
            strategies: DEFAULT_STRATEGIES.to_vec(),
            iterations: 5,
            seed: 1,
            tokens: 24,
            request_chunks: 24,
            concurrency: 4,
            whole_reads: false,
            split_gap: Duration::from_millis(2),
            token_gap: Duration::ZERO,
            case_timeout: Duration::from_secs(10),
        }
    }
}

/// The strategies run by default.
pub const DEFAULT_STRATEGIES: [SplitStrategy; 7] = [
    SplitStrategy::None,
    SplitStrategy::EveryByte,
    SplitStrategy::Random,
    SplitStrategy::Utf8,
    SplitStrategy::SizeLine,
    SplitStrategy::Crlf,
    SplitStrategy::Straddle,
];

/// The first failing case of a row.
#[derive(Debug, Clone, Serialize)]
pub struct CaseFailure {
    /// Case index within the row.
    pub case: usize,
    /// The case's seed.
    pub seed: u64,
    /// What went wrong.
    #[serde(flatten)]
    pub failure: Failure,
}

/// Results of one strategy in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Direction.
    pub direction: Direction,
    /// Strategy name.
    pub strategy: String,
    /// Cases run.
    pub cases: usize,
    /// Cases passed.
    pub passed: usize,
    /// Cases failed.
    pub failed: usize,
    /// Chunks received over the passing cases.
    pub chunks: usize,
    /// Chunks (over the passing cases) that reached their receiver over more than one read.
    pub split_reads: usize,
    /// The failing case with the lowest index.
    pub first_failure: Option<CaseFailure>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target address.
    pub target: String,
    /// Run seed.
    pub seed: u64,
    /// Cases per row.
    pub iterations: usize,
    /// Whether every case passed.
    pub passed: bool,
    /// Cases run.
    pub cases: usize,
    /// Cases failed.
    pub failed: usize,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
    /// One row per direction and strategy.
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Copy)]
struct CaseSpec {
    direction: Direction,
    strategy: SplitStrategy,
    row: usize,
    index: usize,
    seed: u64,
}

/// Run every case and build the report. `progress` advances by one per case (pass
/// [`ProgressBar::hidden`] for none).
pub async fn run(cfg: &HarnessConfig, progress: &ProgressBar) -> Report {
    let started = Instant::now();
    let cfg = Arc::new(cfg.clone());
    let mut specs = Vec::new();
    let mut rows = Vec::new();
    for &direction in &cfg.directions {
        for (si, &strategy) in cfg.strategies.iter().enumerate() {
            let row = rows.len();
            rows.push(Row {
                direction,
                strategy: strategy.name().to_string(),
                cases: 0,
                passed: 0,
                failed: 0,
                chunks: 0,
                split_reads: 0,
                first_failure: None,
            });
            let dir_salt = match direction {
                Direction::Response => 0,
                Direction::Request => 1 << 32,
            };
            for index in 0..cfg.iterations {
                specs.push(CaseSpec {
                    direction,
                    strategy,
                    row,
                    index,
                    seed: mix_seed(cfg.seed, dir_salt + si as u64, index as u64),
                });
            }
        }
    }
    progress.set_length(specs.len() as u64);
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut set = JoinSet::new();
    for spec in specs {
        let cfg = cfg.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let outcome = run_case(&cfg, spec).await;
            (spec, outcome)
        });
    }
    while let Some(joined) = set.join_next().await {
        progress.inc(1);
        let Ok((spec, outcome)) = joined else {
            continue;
        };
        let row = &mut rows[spec.row];
        row.cases += 1;
        match outcome {
            Ok(stats) => {
                row.passed += 1;
                row.chunks += stats.chunks;
                row.split_reads += stats.split_reads;
            }
            Err(failure) => {
                row.failed += 1;
                let earlier = row
                    .first_failure
                    .as_ref()
                    .is_some_and(|f| f.case < spec.index);
                if !earlier {
                    row.first_failure = Some(CaseFailure {
                        case: spec.index,
                        seed: spec.seed,
                        failure,
                    });
                }
            }
        }
    }
    progress.finish_and_clear();
    let cases: usize = rows.iter().map(|r| r.cases).sum();
    let failed: usize = rows.iter().map(|r| r.failed).sum();
    let expected = cfg.directions.len() * cfg.strategies.len() * cfg.iterations;
    Report {
        target: cfg.target.to_string(),
        seed: cfg.seed,
        iterations: cfg.iterations,
        passed: failed == 0 && cases == expected,
        cases,
        failed,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        rows,
    }
}

async fn run_case(cfg: &HarnessConfig, spec: CaseSpec) -> Result<CaseStats, Failure> {
    match spec.direction {
        Direction::Response => response_case(cfg, spec).await,
        Direction::Request => request_case(cfg, spec).await,
    }
}

fn gaps(cfg: &HarnessConfig) -> Gaps {
    Gaps {
        split: cfg.split_gap,
        token: cfg.token_gap,
        ..Gaps::default()
    }
}

async fn response_case(cfg: &HarnessConfig, spec: CaseSpec) -> Result<CaseStats, Failure> {
    let mut script = StreamScript::new(spec.seed, cfg.tokens);
    script.include_usage = spec.index % 2 == 1;
    let body = format!(
        "{{\"model\":\"{}\",\"stream\":true,\"stream_options\":{{\"include_usage\":{}}},\
\"messages\":[{{\"role\":\"user\",\"content\":\"안녕하세요, split me\"}}]}}",
        script.model, script.include_usage
    );
    let fields = [
        ("content-type", "application/json".to_string()),
        ("accept", "text/event-stream".to_string()),
        ("content-length", body.len().to_string()),
        ("x-mock-split", spec.strategy.name().to_string()),
        ("x-mock-seed", spec.seed.to_string()),
        ("x-mock-tokens", cfg.tokens.to_string()),
        ("x-mock-gap-ms", cfg.token_gap.as_millis().to_string()),
        ("x-mock-split-gap-ms", cfg.split_gap.as_millis().to_string()),
        ("x-mock-timestamps", "0".to_string()),
    ];
    let path = format!("{}/v1/chat/completions", cfg.path_prefix);
    let mut request = request_head_bytes("POST", &path, &cfg.host, &fields);
    request.extend_from_slice(body.as_bytes());
    let resp = exchange(cfg.target, &request, &[], gaps(cfg), cfg.case_timeout)
        .await
        .map_err(|e| Failure::new(format!("exchange failed: {e}")))?;
    verify_stream(
        &script.events(),
        &resp,
        StreamChecks {
            sse: true,
            whole_reads: cfg.whole_reads,
        },
    )
}

async fn request_case(cfg: &HarnessConfig, spec: CaseSpec) -> Result<CaseStats, Failure> {
    let (chunks, pieces): (Vec<Bytes>, Vec<Piece>) =
        if spec.strategy == SplitStrategy::Straddle && spec.index == 0 {
            classic_body()
        } else {
            let chunks = request_chunks(spec.seed, cfg.request_chunks);
            let mut rng = fastrand::Rng::with_seed(spec.seed);
            let pieces = split_body(spec.strategy, &chunks, true, &mut rng);
            (chunks, pieces)
        };
    let fields = [
        ("content-type", "text/plain; charset=utf-8".to_string()),
        ("transfer-encoding", "chunked".to_string()),
    ];
    let path = format!("{}/echo", cfg.path_prefix);
    let head = request_head_bytes("POST", &path, &cfg.host, &fields);
    let resp = exchange(cfg.target, &head, &pieces, gaps(cfg), cfg.case_timeout)
        .await
        .map_err(|e| Failure::new(format!("exchange failed: {e}")))?;
    if resp.head.status != 200 {
        let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
        return Err(Failure::new(format!(
            "status {} (expected 200): {body}",
            resp.head.status
        )));
    }
    if resp.framing == Framing::None || resp.body.is_empty() {
        return Err(Failure::new("empty answer from /echo"));
    }
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|e| {
        Failure::new(format!(
            "/echo answer is not json ({e}): is the upstream chunkgate's mock?"
        ))
    })?;
    let framing = echo["framing"].as_str().unwrap_or("");
    if framing != "chunked" {
        return Err(Failure::new(format!(
            "the upstream received a {framing:?} body: the request was buffered and every \
chunk boundary lost"
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut seen = Vec::new();
    for c in echo["chunks"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let decoded = c
            .as_str()
            .and_then(|s| b64.decode(s).ok())
            .ok_or_else(|| Failure::new("/echo answer has an invalid chunk entry"))?;
        seen.push(Bytes::from(decoded));
    }
    compare_chunks(&chunks, &seen)?;
    let split_reads = echo["reassembled"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if cfg.whole_reads && split_reads > 0 {
        return Err(Failure::new(format!(
            "{split_reads} of {} chunks reached the upstream split across reads",
            seen.len()
        )));
    }
    Ok(CaseStats {
        chunks: seen.len(),
        split_reads,
    })
}

impl Report {
    /// The human-readable table, then the first failure of each failing row.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<10} {:<11} {:>6} {:>7} {:>7} {:>7} {:>12}",
            "direction", "strategy", "cases", "passed", "failed", "chunks", "split reads"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<10} {:<11} {:>6} {:>7} {:>7} {:>7} {:>12}",
                r.direction.name(),
                r.strategy,
                r.cases,
                r.passed,
                r.failed,
                r.chunks,
                r.split_reads
            );
        }
        let _ = writeln!(
            out,
            "\n{}: {} cases, {} failed, {:.1} s",
            if self.passed { "PASS" } else { "FAIL" },
            self.cases,
            self.failed,
            self.elapsed_ms as f64 / 1000.0
        );
        for r in &self.rows {
            if let Some(f) = &r.first_failure {
                let _ = writeln!(
                    out,
                    "\nfirst failure, {} {} case {} (seed {}):\n  {}",
                    r.direction.name(),
                    r.strategy,
                    f.case,
                    f.seed,
                    f.failure.message
                );
                if !f.failure.dump.is_empty() {
                    let _ = write!(out, "{}", indent(&f.failure.dump, "  "));
                }
            }
        }
        out
    }
}

fn indent(s: &str, pad: &str) -> String {
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// `chunkgate harness`.
#[derive(Debug, Clone, clap::Args)]
pub struct HarnessArgs {
    /// The endpoint under test, `http://host:port[/prefix]` (a proxy in front of the mock
    /// upstream, or the mock itself).
    #[arg(long)]
    pub target: String,
    /// Which way to send split bodies: request, response or both.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: DirectionArg,
    /// Comma-separated split strategies (none, every-byte, random, utf8, size-line, crlf,
    /// straddle, mixed, or all).
    #[arg(
        long,
        default_value = "none,every-byte,random,utf8,size-line,crlf,straddle"
    )]
    pub strategies: String,
    /// Cases per strategy and direction.
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Run seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tokens per streamed response.
    #[arg(long, default_value_t = 24)]
    pub tokens: usize,
    /// A mock upstream already running (`chunkgate mock-upstream`) that the target forwards
    /// to; without it the harness starts its own on `--mock-listen`.
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// Where to start the harness's own mock upstream (the target must forward there).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub mock_listen: SocketAddr,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Also require each chunk to reach its receiver in a single TCP read.
    #[arg(long)]
    pub whole_reads: bool,
    /// Pause between the pieces of a split chunk, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub split_gap_ms: u64,
    /// Pause between chunks (between tokens), in milliseconds; 0 sends them back to back.
    #[arg(long, default_value_t = 0)]
    pub gap_ms: u64,
    /// Bound on each case, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    /// Chunked request bodies to `/echo`.
    Request,
    /// Streamed responses.
    Response,
    /// Both.
    Both,
}

/// Resolve `http://host:port[/prefix]` to an address, a `Host` value and a path prefix.
pub async fn resolve_target(url: &str) -> Result<(SocketAddr, String, String), String> {
    let u = UpstreamUrl::parse(url)?;
    if u.tls {
        return Err(format!(
            "{url}: https targets are not supported by the harness"
        ));
    }
    let mut addrs = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("{url}: cannot resolve {}: {e}", u.host))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("{url}: {} has no address", u.host))?;
    Ok((addr, u.authority(), u.path_prefix))
}

/// Check that a chunkgate mock upstream answers at `addr`.
async fn check_mock(addr: SocketAddr) -> Result<(), String> {
    let head = request_head_bytes("GET", "/v1/models", &addr.to_string(), &[]);
    let resp = exchange(addr, &head, &[], Gaps::default(), Duration::from_secs(5))
        .await
        .map_err(|e| format!("no mock upstream at {addr}: {e}"))?;
    let ok = resp.head.status == 200
        && serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .is_some_and(|v| v["data"][0]["owned_by"] == "chunkgate");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{addr} does not answer like chunkgate's mock upstream (GET /v1/models)"
        ))
    }
}

/// Entry point of `chunkgate harness`: exit 0 when every case passed, 1 on any failure,
/// 2 when the run could not start.
pub fn main(args: HarnessArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chunkgate harness: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        match run_cli(args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("chunkgate harness: {e}");
                ExitCode::from(2)
            }
        }
    })
}

async fn run_cli(args: HarnessArgs) -> Result<bool, String> {
    let strategies = SplitStrategy::parse_list(&args.strategies)?;
    if args.iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    if args.tokens == 0 || args.tokens > crate::harness::mock::MAX_TOKENS {
        return Err(format!(
            "--tokens must be in 1..={}",
            crate::harness::mock::MAX_TOKENS
        ));
    }
    let (target, host, path_prefix) = resolve_target(&args.target).await?;
    // The mock: a running one, or our own for the duration of the run.
    let _mock = match &args.upstream_url {
        Some(url) => {
            let (addr, _, _) = resolve_target(url).await?;
            check_mock(addr).await?;
            None
        }
        None => {
            let mock = MockUpstream::bind(args.mock_listen, MockOptions::default())
                .await
                .map_err(|e| {
                    format!(
                        "cannot start the mock upstream on {}: {e} (pass --upstream-url if one \
is already running there)",
                        args.mock_listen
                    )
                })?;
            if !args.json {
                eprintln!("mock upstream on http://{}", mock.local_addr());
            }
            Some(mock.spawn())
        }
    };
    let directions = match args.direction {
        DirectionArg::Request => vec![Direction::Request],
        DirectionArg::Response => vec![Direction::Response],
        DirectionArg::Both => vec![Direction::Response, Direction::Request],
    };
    let cfg = HarnessConfig {
        target,
        host,
        path_prefix,
        directions,
        strategies,
        iterations: args.iterations,
        seed: args.seed,
        tokens: args.tokens,
        concurrency: args.concurrency.max(1),
        whole_reads: args.whole_reads,
        split_gap: Duration::from_millis(args.split_gap_ms),
        token_gap: Duration::from_millis(args.gap_ms),
        case_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        ..HarnessConfig::new(target)
    };
    let progress = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} cases {elapsed}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = run(&cfg, &progress).await;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot serialise the report: {e}"))?;
        println!("{json}");
    } else {
        println!(
            "chunkgate harness: target {}, seed {}, {} cases per strategy and direction\n",
            args.target, cfg.seed, cfg.iterations
        );
        print!("{}", report.table());
    }
    Ok(report.passed)
}
