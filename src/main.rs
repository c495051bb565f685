//! The `chunkgate` command line. Argument parsing only: every subcommand lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A chunk-exact HTTP/1.1 reverse proxy for streaming LLM APIs.
#[derive(Parser)]
#[command(name = "chunkgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reverse proxy.
    Serve(chunkgate::config::ServeArgs),
    /// Validate a configuration file and print the effective configuration (secrets redacted).
    CheckConfig(chunkgate::config::CheckConfigArgs),
    /// Run an OpenAI-compatible mock LLM upstream that splits its writes adversarially.
    MockUpstream(chunkgate::harness::mock::MockArgs),
    /// Drive adversarial chunk splits through an HTTP endpoint and check what comes out.
    Harness(chunkgate::harness::runner::HarnessArgs),
    /// Show, in ten seconds, what split chunks do to a naive client and what chunkgate does.
    Demo(chunkgate::harness::demo::DemoArgs),
    /// Load generator for the performance comparison (sse, rps, upload).
    Bench(chunkgate::loadgen::BenchArgs),
    /// Read captured completion records (show, tail, stats) from an SQLite capture sink.
    Capture(chunkgate::capture::cli::CaptureArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => chunkgate::proxy::serve_main(args),
        Command::CheckConfig(args) => chunkgate::config::check_config_main(args),
        Command::MockUpstream(args) => chunkgate::harness::mock::main(args),
        Command::Harness(args) => chunkgate::harness::runner::main(args),
        Command::Demo(args) => chunkgate::harness::demo::main(args),
        Command::Bench(args) => chunkgate::loadgen::main(args),
        Command::Capture(args) => chunkgate::capture::cli::main(args),
    }
}
