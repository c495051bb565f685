//! The sans-IO protocol core: chunked coding, message heads, framing decisions and the
//! request-target path policy.
//!
//! Nothing here touches a socket, a clock or a task; the async code elsewhere drives it.

pub mod chunked;
pub mod framing;
pub mod head;
pub mod oracle;
pub mod path;
pub mod sse;

/// A byte shown in an error message: printable ASCII quoted, CR/LF/HTAB escaped, the rest hex.
pub(crate) struct ByteDisplay(pub(crate) u8);

impl std::fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            b'\r' => f.write_str("'\\r'"),
            b'\n' => f.write_str("'\\n'"),
            b'\t' => f.write_str("'\\t'"),
            b @ 0x20..=0x7e => write!(f, "'{}'", b as char),
            b => write!(f, "0x{b:02x}"),
        }
    }
}
