//! How a message body is delimited (RFC 9112 §6.3).
