//! Request and response heads (RFC 9112 §2-§5), parsed with httparse and validated strictly.

/// Limits on message heads. Every field has a bounded default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head (start line, fields, final CRLF) in bytes; past it 431 (default 64 KiB).
    pub max_head_bytes: usize,
    /// Most header fields; past it 431 (default 100).
    pub max_headers: usize,
    /// Longest request line; past it 414 (default 8 KiB).
    pub max_request_line: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 << 10,
            max_headers: 100,
            max_request_line: 8 << 10,
        }
    }
}
