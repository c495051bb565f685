//! `chunkgate bench`: load generation for the performance comparison.
//!
//! - `bench upstream`: a fast upstream made for measurement ([`upstream`]).
//! - `bench sse`: concurrent token streams; time to first token, per-token delivery delay
//!   (receive time minus the send time written into each event) at p50/p90/p99/max, streams
//!   failed, and whether any chunk split or merged events.
//! - `bench idle`: many streams held open at once with long gaps between tokens; the proxy's
//!   resident memory is sampled while all of them are open, giving KiB per open stream.
//! - `bench rps`: small POSTs over keep-alive connections; requests per second and latency.
//! - `bench upload`: chunked uploads in 16 KiB chunks; MB/s (10^6 bytes per second).
//! - `bench table`: the markdown table of medians and ratios from a file of `--json` results.
//!
//! With `--pid PID` the proxy process's CPU time (`utime + stime`) and `VmRSS` are read from
//! `/proc` before and after the measured window, giving CPU µs per request or per event and
//! memory per open stream. CPU times come in clock ticks (`getconf CLK_TCK`, 100 if it cannot
//! be run), so runs should burn at least a few hundred milliseconds of proxy CPU.
//!
//! The client runs on one current-thread tokio runtime by default (`--threads 1`), so it costs
//! at most one core and leaves the rest of the machine to the proxy and the upstream.

pub mod hist;
pub mod http;
pub mod procstat;
pub mod rps;
pub mod sse;
pub mod table;
pub mod upload;
pub mod upstream;

use std::io;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hist::Percentiles;
use http::Target;
use procstat::ProcSample;

/// Arguments of `chunkgate bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to run.
    #[command(subcommand)]
    pub mode: BenchMode,
}

/// The modes of `chunkgate bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchMode {
    /// Run the measurement upstream (token streams, small answers, upload sink).
    Upstream(upstream::UpstreamArgs),
    /// Concurrent token streams: time to first token, per-token delay, chunk exactness.
    Sse(LoadArgs),
    /// Many streams held open with long gaps: memory per open stream (use with --pid).
    Idle(LoadArgs),
    /// Small POSTs over keep-alive connections: requests per second and latency.
    Rps(LoadArgs),
    /// Chunked uploads in 16 KiB chunks: MB/s.
    Upload(LoadArgs),
    /// Print the markdown table of medians and ratios from a file of --json results.
    Table(table::TableArgs),
}

/// Which load a [`LoadArgs`] drives (decides the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// See [`BenchMode::Sse`].
    Sse,
    /// See [`BenchMode::Idle`].
    Idle,
    /// See [`BenchMode::Rps`].
    Rps,
    /// See [`BenchMode::Upload`].
    Upload,
}

impl LoadMode {
    fn name(self) -> &'static str {
        match self {
            LoadMode::Sse => "sse",
            LoadMode::Idle => "idle",
            LoadMode::Rps => "rps",
            LoadMode::Upload => "upload",
        }
    }
}

/// Arguments shared by the load modes. Unset options take the mode's default.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL to load (`http://host:port[/prefix]`).
    #[arg(long)]
    pub target: String,
    /// Concurrent connections or streams (default: sse 100, idle 2000, rps 50, upload 1).
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,
    /// Tokens per stream (default: sse 100, idle 20).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Gap between tokens in milliseconds (default: sse 10, idle 500).
    #[arg(long)]
    pub gap_ms: Option<u64>,
    /// Measured seconds of an rps run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of rps load before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// MiB uploaded per connection.
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Upload chunk size in KiB.
    #[arg(long, default_value_t = 16)]
    pub chunk_kib: usize,
    /// Process whose CPU time and resident memory to sample (the proxy under test).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Most streams being opened (connected, not yet answered) at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Client runtime threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Label copied into the report (the comparison script names the proxy with it).
    #[arg(long)]
    pub tag: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    /// Arguments for `target` with every option at its default.
    pub fn new(target: impl Into<String>) -> Self {
        LoadArgs {
            target: target.into(),
            connections: None,
            tokens: None,
            gap_ms: None,
            duration: 10.0,
            warmup: 1.0,
            mib: 256,
            chunk_kib: 16,
            pid: None,
            connect_concurrency: 256,
            threads: 1,
            tag: None,
            json: false,
        }
    }

    fn connections_for(&self, mode: LoadMode) -> usize {
        self.connections
            .unwrap_or(match mode {
                LoadMode::Sse => 100,
                LoadMode::Idle => 2000,
                LoadMode::Rps => 50,
                LoadMode::Upload => 1,
            })
            .max(1)
    }

    fn tokens_for(&self, mode: LoadMode) -> u64 {
        self.tokens
            .unwrap_or(if mode == LoadMode::Idle { 20 } else { 100 })
    }

    fn gap_for(&self, mode: LoadMode) -> u64 {
        self.gap_ms
            .unwrap_or(if mode == LoadMode::Idle { 500 } else { 10 })
    }
}

/// The result of one load run. Fields a mode does not measure are `None`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// `sse`, `idle`, `rps` or `upload`.
    pub mode: String,
    /// The `--tag` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The target URL.
    pub target: String,
    /// Connections or streams.
    pub connections: usize,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    /// Requests, streams or uploads that completed correctly.
    pub ok: u64,
    /// Requests, streams or uploads that failed.
    pub failed: u64,
    /// The first failure seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Tokens per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Gap between tokens, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
    /// Token events received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Chunks that held part of an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_chunks: Option<u64>,
    /// Chunks that held more than one event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_chunks: Option<u64>,
    /// Time to first token, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_us: Option<Percentiles>,
    /// Per-token delivery delay (receive minus send time), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_us: Option<Percentiles>,
    /// Streams open when memory was sampled (idle mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams_open_at_sample: Option<usize>,
    /// Requests per second over the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_per_s: Option<f64>,
    /// Request latency, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    /// Payload bytes uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Upload payload throughput, 10^6 bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    /// The sampled process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its CPU time over the measured window, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// Its resident memory before the run, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    /// Its resident memory with every stream open (idle mode), KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_open_kib: Option<u64>,
    /// Its resident memory after the run, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    /// Its CPU µs per completed request (rps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<f64>,
    /// Its CPU µs per token event (sse, idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_event: Option<f64>,
    /// Its added resident memory per open stream, KiB (idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kib_per_stream: Option<f64>,
    /// CPU time of the load tool itself over the window, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cpu_us: Option<u64>,
}

/// Entry point of `chunkgate bench`.
pub fn main(args: BenchArgs) -> ExitCode {
    let (mode, load) = match args.mode {
        BenchMode::Upstream(a) => return upstream::main(a),
        BenchMode::Table(a) => return table::main(a),
        BenchMode::Sse(a) => (LoadMode::Sse, a),
        BenchMode::Idle(a) => (LoadMode::Idle, a),
        BenchMode::Rps(a) => (LoadMode::Rps, a),
        BenchMode::Upload(a) => (LoadMode::Upload, a),
    };
    let runtime = if load.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(load.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(mode, &load)) {
        Ok(report) => {
            if load.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render_text(&report));
            }
            if report.failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("bench {}: {e}", mode.name());
            ExitCode::FAILURE
        }
    }
}

/// Run one load mode against `args.target` and report. Must be called inside a tokio runtime.
///
/// Every mode is bounded in time: rps by its duration, streams by `tokens × gap + 30 s`,
/// uploads by a timeout proportional to their size.
pub async fn run(mode: LoadMode, args: &LoadArgs) -> io::Result<Report> {
    match mode {
        LoadMode::Sse | LoadMode::Idle => run_streams(mode, args).await,
        LoadMode::Rps => run_rps(args).await,
        LoadMode::Upload => run_upload(args).await,
    }
}

/// Samples the process under test (if any) and the load tool itself.
struct Sampler {
    pid: Option<u32>,
}

impl Sampler {
    fn target(&self) -> io::Result<Option<ProcSample>> {
        self.pid
            .map(|pid| {
                procstat::sample(pid)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/{pid}: {e}")))
            })
            .transpose()
    }

    fn own() -> Option<ProcSample> {
        procstat::sample(std::process::id()).ok()
    }
}

fn base_report(mode: LoadMode, args: &LoadArgs, connections: usize) -> Report {
    Report {
        mode: mode.name().to_string(),
        tag: args.tag.clone(),
        target: args.target.clone(),
        connections,
        pid: args.pid,
        ..Report::default()
    }
}

fn cpu_delta(before: Option<ProcSample>, after: Option<ProcSample>) -> Option<u64> {
    Some(after?.cpu_us.saturating_sub(before?.cpu_us))
}

fn per(total: Option<u64>, count: u64) -> Option<f64> {
    let total = total?;
    (count > 0).then(|| total as f64 / count as f64)
}

async fn run_streams(mode: LoadMode, args: &LoadArgs) -> io::Result<Report> {
    let target = Target::parse(&args.target)?;
    let streams = args.connections_for(mode);
    let plan = sse::StreamPlan {
        target,
        streams,
        tokens: args.tokens_for(mode),
        gap_ms: args.gap_for(mode),
        connect_concurrency: args.connect_concurrency,
        stagger: true,
    };
    let sampler = Sampler { pid: args.pid };
    let stats = Arc::new(sse::StreamStats::default());
    let before = sampler.target()?;
    let own_before = Sampler::own();
    let start = Instant::now();
    let run = {
        let plan = plan.clone();
        let stats = stats.clone();
        tokio::spawn(async move { sse::run_streams(&plan, stats).await })
    };
    let mut open_sample: Option<(usize, u64)> = None;
    if mode == LoadMode::Idle && args.pid.is_some() {
        open_sample = sample_while_open(&sampler, &stats, streams, &run).await?;
    }
    run.await
        .map_err(|e| io::Error::other(format!("stream driver failed: {e}")))?;
    let elapsed = start.elapsed();
    let after = sampler.target()?;
    let own_after = Sampler::own();

    let events = stats.events.load(Ordering::Relaxed);
    let cpu = cpu_delta(before, after);
    let mut report = base_report(mode, args, streams);
    report.elapsed_s = elapsed.as_secs_f64();
    report.ok = stats.completed.load(Ordering::Relaxed);
    report.failed = stats.failed.load(Ordering::Relaxed);
    report.first_error = stats.first_error.lock().ok().and_then(|e| e.clone());
    report.tokens = Some(plan.tokens);
    report.gap_ms = Some(plan.gap_ms);
    report.events = Some(events);
    report.split_chunks = Some(stats.split_chunks.load(Ordering::Relaxed));
    report.merged_chunks = Some(stats.merged_chunks.load(Ordering::Relaxed));
    report.ttft_us = Some(stats.ttft.percentiles_us());
    report.delay_us = Some(stats.delay.percentiles_us());
    report.cpu_us = cpu;
    report.cpu_us_per_event = per(cpu, events);
    report.rss_before_kib = before.map(|s| s.rss_kib);
    report.rss_after_kib = after.map(|s| s.rss_kib);
    report.client_cpu_us = cpu_delta(own_before, own_after);
    if let (Some((open, rss)), Some(before)) = (open_sample, before) {
        report.streams_open_at_sample = Some(open);
        report.rss_open_kib = Some(rss);
        if open > 0 {
            report.kib_per_stream = Some(rss.saturating_sub(before.rss_kib) as f64 / open as f64);
        }
    }
    Ok(report)
}

/// Poll until every stream is open (or the run ends), then read the process's resident memory
/// a few times over one second while all stay open; returns (streams open, largest RSS KiB).
/// If the streams never were all open at once, the reading taken at the most open is used.
async fn sample_while_open(
    sampler: &Sampler,
    stats: &sse::StreamStats,
    streams: usize,
    run: &tokio::task::JoinHandle<()>,
) -> io::Result<Option<(usize, u64)>> {
    let mut best: Option<(usize, u64)> = None;
    let mut all_open_since: Option<Instant> = None;
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let open = stats.open.load(Ordering::Relaxed);
        if open == 0 || best.is_some_and(|(b, _)| open < b) {
            continue;
        }
        let Some(sample) = sampler.target()? else {
            return Ok(None);
        };
        // Count again after the read so the reading never claims more streams than were open.
        let open = open.min(stats.open.load(Ordering::Relaxed));
        best = match best {
            Some((b, rss)) if b == open => Some((b, rss.max(sample.rss_kib))),
            Some((b, rss)) if b > open => Some((b, rss)),
            _ => Some((open, sample.rss_kib)),
        };
        if open >= streams {
            let since = *all_open_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
    }
    Ok(best)
}

async fn run_rps(args: &LoadArgs) -> io::Result<Report> {
    let target = Target::parse(&args.target)?;
    let connections = args.connections_for(LoadMode::Rps);
    let request: Arc<[u8]> = rps::small_request(&target).into();
    let stats = Arc::new(rps::RpsStats::default());
    let sampler = Sampler { pid: args.pid };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(rps::connection_loop(
            target.addr,
            request.clone(),
            stats.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.0))).await;
    let before = sampler.target()?;
    let own_before = Sampler::own();
    let done_before = stats.completed.load(Ordering::Relaxed);
    let errors_before = stats.errors.load(Ordering::Relaxed);
    stats.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration.max(0.01))).await;
    let done_after = stats.completed.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    stats.measuring.store(false, Ordering::Relaxed);
    let after = sampler.target()?;
    let own_after = Sampler::own();
    let errors = stats.errors.load(Ordering::Relaxed) - errors_before;
    stats.stop.store(true, Ordering::Relaxed);
    // Each connection stops after its current request, within the request timeout.
    let _ = tokio::time::timeout(rps::REQUEST_TIMEOUT + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let requests = done_after - done_before;
    let cpu = cpu_delta(before, after);
    let mut report = base_report(LoadMode::Rps, args, connections);
    report.elapsed_s = elapsed.as_secs_f64();
    report.ok = requests;
    report.failed = errors;
    report.first_error = stats.first_error.lock().ok().and_then(|e| e.clone());
    report.req_per_s = Some(requests as f64 / elapsed.as_secs_f64());
    report.latency_us = Some(stats.latency.percentiles_us());
    report.cpu_us = cpu;
    report.cpu_us_per_request = per(cpu, requests);
    report.rss_before_kib = before.map(|s| s.rss_kib);
    report.rss_after_kib = after.map(|s| s.rss_kib);
    report.client_cpu_us = cpu_delta(own_before, own_after);
    Ok(report)
}

async fn run_upload(args: &LoadArgs) -> io::Result<Report> {
    let target = Target::parse(&args.target)?;
    let connections = args.connections_for(LoadMode::Upload);
    let payload = args.mib.saturating_mul(1 << 20);
    let chunk = args.chunk_kib.max(1).saturating_mul(1024);
    // Generous: 10 MB/s at the very least.
    let limit = Duration::from_secs(30 + payload / 10_000_000);
    let sampler = Sampler { pid: args.pid };
    let before = sampler.target()?;
    let own_before = Sampler::own();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let target = target.clone();
        tasks.spawn(async move { upload::upload_once(&target, payload, chunk, limit).await });
    }
    let (mut ok, mut failed, mut bytes, mut first_error) = (0u64, 0u64, 0u64, None);
    while let Some(result) = tasks.join_next().await {
        match result.map_err(|e| io::Error::other(format!("upload task failed: {e}"))) {
            Ok(Ok(n)) => {
                ok += 1;
                bytes += n;
            }
            Ok(Err(e)) | Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let elapsed = start.elapsed();
    let after = sampler.target()?;
    let own_after = Sampler::own();
    let cpu = cpu_delta(before, after);
    let mut report = base_report(LoadMode::Upload, args, connections);
    report.elapsed_s = elapsed.as_secs_f64();
    report.ok = ok;
    report.failed = failed;
    report.first_error = first_error;
    report.bytes = Some(bytes);
    report.mb_per_s = Some(bytes as f64 / 1e6 / elapsed.as_secs_f64());
    report.cpu_us = cpu;
    report.rss_before_kib = before.map(|s| s.rss_kib);
    report.rss_after_kib = after.map(|s| s.rss_kib);
    report.client_cpu_us = cpu_delta(own_before, own_after);
    Ok(report)
}

/// The human-readable form of a report.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let tag = r
        .tag
        .as_deref()
        .map(|t| format!(" [{t}]"))
        .unwrap_or_default();
    // Writing into a String cannot fail.
    let _ = writeln!(
        s,
        "{}{tag} against {}: {} connections, {:.2} s, {} ok, {} failed",
        r.mode, r.target, r.connections, r.elapsed_s, r.ok, r.failed
    );
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first failure: {e}");
    }
    if let (Some(t), Some(g), Some(ev)) = (r.tokens, r.gap_ms, r.events) {
        let _ = writeln!(
            s,
            "  {t} tokens per stream, {g} ms apart; {ev} events received"
        );
    }
    if let (Some(split), Some(merged)) = (r.split_chunks, r.merged_chunks) {
        let verdict = if split == 0 && merged == 0 {
            "exact: one event per chunk"
        } else {
            "NOT exact"
        };
        let _ = writeln!(s, "  chunks: {verdict} ({split} split, {merged} merged)");
    }
    let pct = |p: &Percentiles| {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} µs ({} samples)",
            p.p50, p.p90, p.p99, p.max, p.count
        )
    };
    if let Some(p) = &r.ttft_us {
        let _ = writeln!(s, "  time to first token: {}", pct(p));
    }
    if let Some(p) = &r.delay_us {
        let _ = writeln!(s, "  token delay:         {}", pct(p));
    }
    if let Some(v) = r.req_per_s {
        let _ = writeln!(s, "  {v:.0} requests/s");
    }
    if let Some(p) = &r.latency_us {
        let _ = writeln!(s, "  latency: {}", pct(p));
    }
    if let (Some(b), Some(v)) = (r.bytes, r.mb_per_s) {
        let _ = writeln!(s, "  {b} bytes uploaded, {v:.0} MB/s");
    }
    if let Some(pid) = r.pid {
        let _ = write!(s, "  process {pid}:");
        if let Some(c) = r.cpu_us {
            let _ = write!(s, " {:.3} s CPU", c as f64 / 1e6);
        }
        if let Some(v) = r.cpu_us_per_request {
            let _ = write!(s, ", {v:.2} µs/request");
        }
        if let Some(v) = r.cpu_us_per_event {
            let _ = write!(s, ", {v:.2} µs/event");
        }
        if let (Some(b), Some(a)) = (r.rss_before_kib, r.rss_after_kib) {
            let _ = write!(s, ", RSS {b} → {a} KiB");
        }
        let _ = writeln!(s);
        if let (Some(open), Some(rss), Some(k)) =
            (r.streams_open_at_sample, r.rss_open_kib, r.kib_per_stream)
        {
            let _ = writeln!(
                s,
                "  RSS {rss} KiB with {open} streams open: {k:.2} KiB per stream"
            );
        }
    }
    if let Some(c) = r.client_cpu_us {
        let _ = writeln!(s, "  load tool CPU: {:.3} s", c as f64 / 1e6);
    }
    s
}
