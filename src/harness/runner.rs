//! Harness: runner.

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct HarnessArgs {}

/// Entry point.
pub fn main(_args: HarnessArgs) -> std::process::ExitCode {
    eprintln!("not available in this build");
    std::process::ExitCode::FAILURE
}
