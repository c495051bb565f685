//! Harness: demo.

/// Arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}

/// Entry point.
pub fn main(_args: DemoArgs) -> std::process::ExitCode {
    eprintln!("not available in this build");
    std::process::ExitCode::FAILURE
}
