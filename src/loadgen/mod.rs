//! `chunkgate bench`: load generation for the performance comparison.

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}

/// Entry point.
pub fn main(_args: BenchArgs) -> std::process::ExitCode {
    eprintln!("not available in this build");
    std::process::ExitCode::FAILURE
}
