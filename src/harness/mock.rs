//! Harness: mock.

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {}

/// Entry point.
pub fn main(_args: MockArgs) -> std::process::ExitCode {
    eprintln!("not available in this build");
    std::process::ExitCode::FAILURE
}
