//! Errors of one exchange and the HTTP answer each one gets.
//!
//! [`ExchangeError::answer`] is the one place that maps a failure to a status code. Answers carry
//! an OpenAI-style JSON body (`{"error":{"message":..,"type":..,"code":..}}`) so SDKs show the
//! cause. A failure after the response head went out is never answered: the client connection is
//! closed without the terminating chunk instead.

use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};

use crate::codec::chunked::DecodeError;
use crate::codec::framing::FramingError;
use crate::codec::head::HeadError;
use crate::codec::path::PathError;
use crate::logging::Outcome;
use crate::proxy::body::{ReadError, WriteError};
use crate::upstream::connect::ConnectError;

/// Everything that can end an exchange early.
#[derive(Debug)]
pub enum ExchangeError {
    /// The request head was malformed or over a limit.
    ClientHead(HeadError),
    /// The request's framing headers break the rules.
    ClientFraming(FramingError),
    /// The request body's chunked framing was broken or over a limit.
    ClientBody(DecodeError),
    /// A Content-Length request body over the configured cap.
    ClientBodyTooLarge { limit: u64 },
    /// The client closed or reset before its request body ended.
    ClientGone,
    /// The request head did not arrive within the head-read timeout.
    ClientHeadTimeout,
    /// No request bytes for the stream-idle timeout while reading the body.
    ClientBodyTimeout,
    /// The target's path is refused by the path policy (`codec::path`), or a route's
    /// rewrite would leave its prefix.
    ClientPath(PathError),
    /// An absolute-form target for an authority that is not this proxy's (a request meant
    /// for a forward proxy).
    ForeignAuthority,
    /// No route matches the path.
    NoRoute,
    /// The route requires a bearer token and none or a wrong one was given.
    Unauthorized,
    /// Every upstream of the group has an open circuit breaker.
    BreakerOpen { group: String },
    /// Connecting to the upstream failed.
    Connect(ConnectError),
    /// The upstream connection failed before a response head arrived.
    UpstreamIo(io::Error),
    /// The upstream closed the connection before a response head arrived.
    UpstreamClosed,
    /// The upstream's response head was malformed.
    UpstreamHead(HeadError),
    /// The upstream's response framing was broken.
    UpstreamFraming(FramingError),
    /// No response head within the response-head timeout.
    UpstreamHeadTimeout,
    /// The upstream switched protocols (101) although no upgrade was asked for.
    UpstreamSwitched,
    /// The upstream answered with an error status after keepalive comments had committed
    /// the response to `200`.
    UpstreamStatus(u16),
    /// The overall exchange deadline passed.
    TotalTimeout,
    /// The upstream is at its connection cap and no slot freed in time.
    PoolExhausted,
    /// The upstream's response body broke after the response started.
    UpstreamBroke(ReadError),
    /// Writing the response to the client failed or stalled.
    ClientWrite(WriteError),
    /// The drain deadline passed while the exchange was still running.
    Shutdown,
}

impl ExchangeError {
    /// A short, stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        use ExchangeError::*;
        match self {
            ClientHead(_) => "bad_request_head",
            ClientFraming(_) => "bad_request_framing",
            ClientBody(e) if e.is_too_large() => "request_body_too_large",
            ClientBody(_) => "bad_request_body",
            ClientBodyTooLarge { .. } => "request_body_too_large",
            ClientGone => "client_gone",
            ClientHeadTimeout => "client_head_timeout",
            ClientBodyTimeout => "client_body_timeout",
            ClientPath(e) if e.status() >= 500 => "rewrite_outside_prefix",
            ClientPath(_) => "bad_request_path",
            ForeignAuthority => "foreign_authority",
            NoRoute => "no_route",
            Unauthorized => "unauthorized",
            BreakerOpen { .. } => "breaker_open",
            Connect(e) if e.is_timeout() => "connect_timeout",
            Connect(_) => "connect_failed",
            UpstreamIo(_) => "upstream_io",
            UpstreamClosed => "upstream_closed",
            UpstreamHead(_) => "bad_response_head",
            UpstreamFraming(_) => "bad_response_framing",
            UpstreamHeadTimeout => "response_head_timeout",
            UpstreamSwitched => "unexpected_upgrade",
            UpstreamStatus(_) => "upstream_status",
            TotalTimeout => "total_timeout",
            PoolExhausted => "upstream_connection_limit",
            UpstreamBroke(ReadError::Idle) => "stream_idle_timeout",
            UpstreamBroke(_) => "upstream_broke",
            ClientWrite(WriteError::Stalled) => "client_write_stall",
            ClientWrite(WriteError::Io(_)) => "client_gone",
            Shutdown => "shutdown",
        }
    }

    /// A request body that could not be read: bad framing, too slow, or cut.
    pub fn client_body(e: ReadError) -> ExchangeError {
        match e {
            ReadError::Decode(d) => ExchangeError::ClientBody(d),
            ReadError::Idle => ExchangeError::ClientBodyTimeout,
            ReadError::Eof | ReadError::Io(_) => ExchangeError::ClientGone,
        }
    }

    /// How an exchange that ended with this error is recorded: the one mapping, used by the
    /// access log and the outcome counter.
    pub fn outcome(&self) -> Outcome {
        use ExchangeError::*;
        match self {
            ClientHead(_)
            | ClientFraming(_)
            | ClientBody(_)
            | ClientBodyTooLarge { .. }
            | ClientPath(_)
            | ForeignAuthority
            | NoRoute
            | Unauthorized
            | BreakerOpen { .. }
            | PoolExhausted => Outcome::Rejected(self.reason()),
            ClientGone | ClientWrite(WriteError::Io(_)) => Outcome::ClientGone,
            ClientHeadTimeout => Outcome::Timeout("client_head"),
            ClientBodyTimeout => Outcome::Timeout("client_body"),
            Connect(e) if e.is_timeout() => Outcome::Timeout("connect"),
            UpstreamHeadTimeout => Outcome::Timeout("response_head"),
            TotalTimeout => Outcome::Timeout("total"),
            UpstreamBroke(ReadError::Idle) => Outcome::Timeout("stream_idle"),
            ClientWrite(WriteError::Stalled) => Outcome::Timeout("client_write_stall"),
            Connect(_) | UpstreamIo(_) | UpstreamClosed | UpstreamHead(_) | UpstreamFraming(_)
            | UpstreamSwitched | UpstreamStatus(_) => Outcome::UpstreamError,
            UpstreamBroke(_) => Outcome::UpstreamBroke,
            Shutdown => Outcome::Shutdown,
        }
    }

    /// The message the client reads. Faults of the client's own request say what was wrong;
    /// faults on the upstream side say only what kind of failure it was, never an address,
    /// a group name or the upstream's bytes (those go to the log, under the same request id).
    pub fn client_message(&self) -> std::borrow::Cow<'static, str> {
        use ExchangeError::*;
        match self {
            BreakerOpen { .. } => {
                "every upstream for this route is failing; try again later".into()
            }
            Connect(e) if e.is_timeout() => "connecting to the upstream timed out".into(),
            Connect(_) => "the upstream could not be reached".into(),
            UpstreamIo(_) | UpstreamClosed => "the upstream failed before answering".into(),
            UpstreamHead(_) | UpstreamFraming(_) | UpstreamSwitched => {
                "the upstream sent an invalid response".into()
            }
            UpstreamBroke(_) => "the upstream's response broke off".into(),
            UpstreamStatus(s) => format!("the upstream answered {s}").into(),
            _ => self.to_string().into(),
        }
    }

    /// The `Retry-After` (seconds) of the answer: when chunkgate itself is out of room
    /// (the upstream's connection cap) or every breaker is open.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ExchangeError::PoolExhausted => Some(1),
            ExchangeError::BreakerOpen { .. } => Some(1),
            _ => None,
        }
    }

    /// Whether the client can still be told: a client that is gone gets no answer.
    pub fn answerable(&self) -> bool {
        !matches!(
            self,
            ExchangeError::ClientGone | ExchangeError::ClientWrite(_)
        )
    }

    /// The answer for the client: status, OpenAI error `type`, `code`. The one mapping.
    pub fn answer(&self) -> (u16, &'static str, &'static str) {
        use ExchangeError::*;
        match self {
            ClientHead(e) => (e.status(), "invalid_request_error", code_for(e.status())),
            ClientFraming(e) => (e.status(), "invalid_request_error", code_for(e.status())),
            ClientBody(e) if e.is_too_large() => {
                (413, "invalid_request_error", "payload_too_large")
            }
            ClientBody(_) => (400, "invalid_request_error", "bad_request"),
            ClientBodyTooLarge { .. } => (413, "invalid_request_error", "payload_too_large"),
            ClientGone => (400, "invalid_request_error", "bad_request"),
            ClientHeadTimeout | ClientBodyTimeout => {
                (408, "invalid_request_error", "request_timeout")
            }
            ClientPath(e) if e.status() >= 500 => (500, "server_error", "internal_error"),
            ClientPath(_) => (400, "invalid_request_error", "bad_request"),
            ForeignAuthority => (400, "invalid_request_error", "misdirected_request"),
            NoRoute => (404, "invalid_request_error", "not_found"),
            Unauthorized => (401, "authentication_error", "unauthorized"),
            BreakerOpen { .. } => (503, "upstream_error", "upstream_unavailable"),
            PoolExhausted => (503, "upstream_error", "upstream_connection_limit"),
            Connect(e) if e.is_timeout() => (504, "timeout_error", "gateway_timeout"),
            Connect(_) => (502, "upstream_error", "bad_gateway"),
            UpstreamIo(_) | UpstreamClosed | UpstreamHead(_) | UpstreamFraming(_)
            | UpstreamSwitched | UpstreamStatus(_) => (502, "upstream_error", "bad_gateway"),
            UpstreamHeadTimeout | TotalTimeout => (504, "timeout_error", "gateway_timeout"),
            // Only before the response started; after, the stream is cut instead.
            UpstreamBroke(_) => (502, "upstream_error", "bad_gateway"),
            ClientWrite(_) => (400, "invalid_request_error", "bad_request"),
            Shutdown => (503, "upstream_error", "shutting_down"),
        }
    }
}

fn code_for(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        404 => "not_found",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        417 => "expectation_failed",
        431 => "request_header_fields_too_large",
        501 => "not_implemented",
        505 => "http_version_not_supported",
        _ => "error",
    }
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ExchangeError::*;
        match self {
            ClientHead(e) => write!(f, "bad request head: {e}"),
            ClientFraming(e) => write!(f, "bad request framing: {e}"),
            ClientBody(e) => write!(f, "bad request body: {e}"),
            ClientBodyTooLarge { limit } => {
                write!(f, "request body over the {limit}-byte limit")
            }
            ClientGone => f.write_str("the client closed the connection before its request body ended"),
            ClientHeadTimeout => {
                f.write_str("the request head did not arrive within the head-read timeout")
            }
            ClientBodyTimeout => f.write_str("the client sent no request body bytes within the idle timeout"),
            ClientPath(e) => write!(f, "bad request path: {e}"),
            ForeignAuthority => f.write_str(
                "an absolute-form target for another host: this is a reverse proxy, not a forward proxy",
            ),
            NoRoute => f.write_str("no route matches this path"),
            Unauthorized => f.write_str("missing or invalid bearer token"),
            BreakerOpen { group } => write!(
                f,
                "every upstream of group {group:?} is failing (circuit breaker open); try again later"
            ),
            Connect(e) => write!(f, "upstream connection failed: {e}"),
            UpstreamIo(e) => write!(f, "upstream connection failed before a response: {e}"),
            UpstreamClosed => f.write_str("the upstream closed the connection before a response"),
            UpstreamHead(e) => write!(f, "the upstream sent an invalid response head: {e}"),
            UpstreamFraming(e) => write!(f, "the upstream sent an invalid response framing: {e}"),
            UpstreamHeadTimeout => {
                f.write_str("the upstream did not answer within the response-head timeout")
            }
            TotalTimeout => f.write_str("the exchange did not finish within the total timeout"),
            PoolExhausted => f.write_str(
                "the upstream is at its connection limit; try again later",
            ),
            UpstreamSwitched => f.write_str("the upstream switched protocols without being asked"),
            UpstreamStatus(s) => write!(f, "the upstream answered {s} after the stream started"),
            UpstreamBroke(e) => write!(f, "the upstream's response body broke: {e}"),
            ClientWrite(WriteError::Stalled) => {
                f.write_str("the client stopped reading within the write-stall timeout")
            }
            ClientWrite(WriteError::Io(e)) => write!(f, "writing to the client failed: {e}"),
            Shutdown => f.write_str("chunkgate is shutting down"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl ExchangeError {
    /// The OpenAI-style JSON error object for the client: `{"error":{"message","type","code"}}`,
    /// the message ending with the request id.
    pub fn json_body(&self, request_id: &[u8]) -> String {
        let (_, kind, code) = self.answer();
        let mut message = self.client_message().into_owned();
        if !request_id.is_empty() {
            message.push_str(" (request id ");
            message.push_str(&String::from_utf8_lossy(request_id));
            message.push(')');
        }
        serde_json::json!({
            "error": { "message": message, "type": kind, "code": code }
        })
        .to_string()
    }

    /// Write this error's whole answer (head and OpenAI-style JSON body) to `dst`, with
    /// `Connection: close`: the connection closes after it. `extra` fields follow the
    /// request id.
    pub fn write_answer(&self, request_id: &[u8], extra: &[(&str, &str)], dst: &mut BytesMut) {
        let status = self.answer().0;
        let body = self.json_body(request_id);
        dst.reserve(256 + body.len());
        dst.put_slice(b"HTTP/1.1 ");
        dst.put_slice(status.to_string().as_bytes());
        dst.put_u8(b' ');
        dst.put_slice(reason_phrase(status).as_bytes());
        dst.put_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        dst.put_slice(body.len().to_string().as_bytes());
        dst.put_slice(b"\r\n");
        if !request_id.is_empty() {
            dst.put_slice(b"x-request-id: ");
            dst.put_slice(request_id);
            dst.put_slice(b"\r\n");
        }
        for (k, v) in extra {
            dst.put_slice(k.as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(v.as_bytes());
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"connection: close\r\n\r\n");
        dst.put_slice(body.as_bytes());
    }
}

/// The standard reason phrase of the statuses chunkgate itself sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_openai_json() {
        let mut out = BytesMut::new();
        ExchangeError::UpstreamClosed.write_answer(
            b"abc",
            &[("x-chunkgate-retries", "2")],
            &mut out,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains("connection: close"));
        assert!(head.contains("x-request-id: abc\r\nx-chunkgate-retries: 2\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["code"], "bad_gateway");
        assert_eq!(
            v["error"]["message"],
            "the upstream failed before answering (request id abc)"
        );
    }

    #[test]
    fn answers_map_to_statuses() {
        assert_eq!(ExchangeError::UpstreamHeadTimeout.answer().0, 504);
        assert_eq!(
            ExchangeError::ClientHeadTimeout.answer(),
            (408, "invalid_request_error", "request_timeout")
        );
        assert_eq!(ExchangeError::UpstreamClosed.answer().0, 502);
        assert_eq!(ExchangeError::NoRoute.answer().0, 404);
        assert_eq!(ExchangeError::Unauthorized.answer().0, 401);
        assert_eq!(
            ExchangeError::BreakerOpen { group: "g".into() }.answer().0,
            503
        );
        assert_eq!(
            ExchangeError::ClientBodyTooLarge { limit: 1 }.answer().0,
            413
        );
    }

    #[test]
    fn outcomes_follow_the_table() {
        use crate::codec::head::{HeadLimits, RequestParser};
        use std::io;
        let bad_head = RequestParser::new(HeadLimits::default())
            .parse(&mut BytesMut::from(&b"GET / HTTP/1.1\n\n"[..]))
            .expect_err("a bare LF is refused");
        let io_err = || io::Error::from(io::ErrorKind::ConnectionReset);
        let rows: Vec<(ExchangeError, Outcome)> = vec![
            (
                ExchangeError::ClientHead(bad_head),
                Outcome::Rejected("bad_request_head"),
            ),
            (ExchangeError::NoRoute, Outcome::Rejected("no_route")),
            (
                ExchangeError::Unauthorized,
                Outcome::Rejected("unauthorized"),
            ),
            (
                ExchangeError::ClientBodyTooLarge { limit: 1 },
                Outcome::Rejected("request_body_too_large"),
            ),
            (
                ExchangeError::BreakerOpen { group: "g".into() },
                Outcome::Rejected("breaker_open"),
            ),
            (
                ExchangeError::PoolExhausted,
                Outcome::Rejected("upstream_connection_limit"),
            ),
            (ExchangeError::ClientGone, Outcome::ClientGone),
            (
                ExchangeError::ClientWrite(WriteError::Io(io_err())),
                Outcome::ClientGone,
            ),
            (
                ExchangeError::ClientWrite(WriteError::Stalled),
                Outcome::Timeout("client_write_stall"),
            ),
            (
                ExchangeError::ClientHeadTimeout,
                Outcome::Timeout("client_head"),
            ),
            (
                ExchangeError::ClientBodyTimeout,
                Outcome::Timeout("client_body"),
            ),
            (
                ExchangeError::UpstreamHeadTimeout,
                Outcome::Timeout("response_head"),
            ),
            (ExchangeError::TotalTimeout, Outcome::Timeout("total")),
            (ExchangeError::UpstreamIo(io_err()), Outcome::UpstreamError),
            (ExchangeError::UpstreamClosed, Outcome::UpstreamError),
            (ExchangeError::UpstreamSwitched, Outcome::UpstreamError),
            (ExchangeError::UpstreamStatus(500), Outcome::UpstreamError),
            (
                ExchangeError::UpstreamBroke(ReadError::Eof),
                Outcome::UpstreamBroke,
            ),
            (
                ExchangeError::UpstreamBroke(ReadError::Idle),
                Outcome::Timeout("stream_idle"),
            ),
            (ExchangeError::Shutdown, Outcome::Shutdown),
        ];
        for (err, want) in rows {
            assert_eq!(err.outcome(), want, "{err:?}");
        }
    }

    #[test]
    fn a_client_that_is_gone_gets_no_answer() {
        assert!(!ExchangeError::ClientGone.answerable());
        assert!(!ExchangeError::ClientWrite(WriteError::Stalled).answerable());
        assert!(ExchangeError::NoRoute.answerable());
        assert!(ExchangeError::UpstreamClosed.answerable());
    }

    #[test]
    fn client_body_errors_say_whose_fault() {
        assert!(matches!(
            ExchangeError::client_body(ReadError::Idle),
            ExchangeError::ClientBodyTimeout
        ));
        assert!(matches!(
            ExchangeError::client_body(ReadError::Eof),
            ExchangeError::ClientGone
        ));
    }
}
