//! The HTTP/1.1 forwarding path: listeners, exchanges, body pumps.

pub mod headers;

/// `chunkgate serve`.
pub fn serve_main(args: crate::config::ServeArgs) -> std::process::ExitCode {
    eprintln!("serve {}: not available in this build", args.listen);
    std::process::ExitCode::FAILURE
}
