//! The response direction's [`Flow`]: chunk-exact or aligned to whole events, timed, and read
//! by the stream tap.
//!
//! What a response gets is decided once, from its head and the route ([`ResponsePlan::new`]):
//! - `align = "events"` on a `text/event-stream` or NDJSON answer: the [`Aligner`] stage, and
//!   the answer reaches an HTTP/1.1 client chunked whatever the upstream's framing;
//! - the tap on answers it can read (event streams, NDJSON, and JSON on an LLM path): it reads
//!   each unit after it was written, so it never delays one;
//! - neither on answers whose bytes are not the payload (a `Content-Encoding`, or a transfer
//!   coding other than chunked).
//!
//! When `inject_include_usage` added `stream_options.include_usage` to the request, the
//! usage-only event the client did not ask for is read by the tap and not written.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::chunked::Field;
use crate::codec::framing::BodyFraming;
use crate::codec::head::ResponseHead;
use crate::codec::sse::StreamFormat;
use crate::config::Align;
use crate::metrics::{Metrics, RouteLlmMetrics};
use crate::proxy::pump::Flow;
use crate::proxy::route::Route;
use crate::stream::align::Aligner;
use crate::stream::dialect::{self, Dialect};
use crate::stream::tap::{Tap, TapLimits};
use crate::stream::Stage;

/// What the response direction does besides moving bytes, decided from the head.
pub(crate) struct ResponsePlan {
    pub stage: Option<Box<Aligner>>,
    pub tap: Option<Box<Tap>>,
}

impl ResponsePlan {
    /// The plan for `head`, an answer to `path` on `route`, read as `framing`. `hide_usage`:
    /// the request was given `include_usage` by chunkgate.
    pub fn new(
        route: &Route,
        path: &[u8],
        head: &ResponseHead,
        framing: &BodyFraming,
        transfer_coded: bool,
        hide_usage: bool,
    ) -> ResponsePlan {
        let none = ResponsePlan {
            stage: None,
            tap: None,
        };
        if matches!(framing, BodyFraming::None) || transfer_coded {
            return none;
        }
        let encoded = head
            .get_all("content-encoding")
            .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return none;
        }
        let content_type = head.get("content-type").map(|v| &v[..]);
        let cfg = &route.stream;
        let stage = if cfg.align == Align::Events || hide_usage {
            content_type
                .and_then(Aligner::for_content_type)
                .map(|a| Box::new(a.max_event(cfg.max_event)))
        } else {
            None
        };
        let tap = if cfg.tap && readable(path, content_type) {
            let mut limits = TapLimits::default().max_event(cfg.max_event);
            if !route.keeps_text {
                // Nothing reads the text: a stream's memory does not grow with its answer.
                limits = limits.max_text(0);
            }
            Some(Box::new(Tap::with_limits(path, content_type, limits)))
        } else {
            None
        };
        ResponsePlan { stage, tap }
    }
}

/// Whether the tap has anything to read in an answer: an event stream or JSON lines, or a
/// JSON document on a path of a known dialect.
fn readable(path: &[u8], content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    if StreamFormat::from_content_type(ct).is_some() {
        return true;
    }
    let essence = ct.split(|&b| b == b';').next().unwrap_or(ct).trim_ascii();
    let json = essence.eq_ignore_ascii_case(b"application/json");
    json && Dialect::from_path(path).is_some()
}

/// The response direction's flow: its stage, the tap, and the timing of what it forwards.
pub(crate) struct ResponseFlow<'a> {
    pub metrics: &'a Metrics,
    pub llm: &'a RouteLlmMetrics,
    pub started: Instant,
    pub last: Option<Instant>,
    /// Time to the first forwarded piece.
    pub ttfc: Option<Duration>,
    pub stage: Option<Box<Aligner>>,
    pub tap: Option<Box<Tap>>,
    /// Keep usage-only events from the client (they were not asked for).
    pub hide_usage: bool,
}

impl ResponseFlow<'_> {
    /// Read and drop the usage-only events among `out[from..]`.
    fn hide_usage(&mut self, out: &mut Vec<Bytes>, from: usize) {
        let mut i = from;
        while i < out.len() {
            if is_usage_only_event(&out[i]) {
                let event = out.remove(i);
                if let Some(tap) = &mut self.tap {
                    tap.observe(&event, Instant::now());
                }
                self.llm.usage_hidden();
            } else {
                i += 1;
            }
        }
    }
}

impl Flow for ResponseFlow<'_> {
    fn identity(&self) -> bool {
        self.stage.is_none()
    }

    fn stage(&mut self, piece: Bytes, out: &mut Vec<Bytes>) {
        let from = out.len();
        match &mut self.stage {
            Some(stage) => stage.unit(piece, out),
            None => out.push(piece),
        }
        if self.hide_usage {
            self.hide_usage(out, from);
        }
    }

    fn stage_end(&mut self, trailers: &[Field], out: &mut Vec<Bytes>) {
        let from = out.len();
        if let Some(stage) = &mut self.stage {
            stage.end(trailers, out);
        }
        if self.hide_usage {
            self.hide_usage(out, from);
        }
    }

    fn written(&mut self, units: &[Bytes]) {
        let now = Instant::now();
        match self.last {
            None => self.ttfc = Some(now - self.started),
            Some(prev) => self.metrics.inter_chunk_gap(now - prev),
        }
        self.last = Some(now);
        if let Some(tap) = &mut self.tap {
            for unit in units {
                tap.observe(unit, now);
            }
        }
    }
}

/// Whether one whole SSE event is an OpenAI usage-only chunk. Only events that hold `"usage"`
/// are read.
fn is_usage_only_event(event: &[u8]) -> bool {
    memchr::memmem::find(event, b"\"usage\"").is_some() && dialect::is_usage_only_event(event)
}
