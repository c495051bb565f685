//! The request-target path policy (RFC 3986 §2.3, §3.3, §5.2.4; the project's protocol rule 9a):
//! one normal form for the path that routes and auth are decided on and that the upstream
//! receives, or a refusal of whatever stays ambiguous.
//!
//! # Why
//! Routes and `require_bearer` match a path prefix. When the proxy decides on one spelling of a
//! path and the upstream resolves another, a protected route is reached around its check: with
//! an open `/` route and a protected `/secret/` route, `/x/../secret/x`, `/./secret/x`,
//! `/%73ecret/x`, `//secret/x`, `/secret;a/x` and `/secret%2fx` all reach a server that
//! resolves them to `/secret/x`. So the proxy normalises what has exactly one meaning, refuses
//! what has several, matches routes on the result, and forwards that same result.
//!
//! # The policy
//! The path is the target up to its first `?`; the query is everything after it.
//! 1. **Form.** `*` (asterisk-form; the head parser allows it only with `OPTIONS`) is kept as
//!    `*`: it is forwarded as `*`, never rewritten or prefixed. Anything else must be
//!    origin-form, starting with `/`. Absolute-form (`http://host/path`) never reaches this
//!    module: the head parser (`codec::head`, the one place that reads target forms) rewrites
//!    it to origin-form and keeps its authority in `RequestHead::target_authority`, already
//!    required to equal `Host`; the proxy decides there whether that authority is its own
//!    (rule 8).
//! 2. **Bytes.** Visible ASCII only. A raw `\` is refused (some servers read it as `/`), so are
//!    `#` (a fragment) and `"<>^`{|}`, as the head parser does.
//! 3. **Escapes.** Every `%` is followed by two hex digits (`%zz`, `%4` are refused). An
//!    escaped *unreserved* character (ALPHA, DIGIT, `-`, `.`, `_`, `~`; RFC 3986 §2.3) is
//!    decoded: `%73ecret` is `secret`, `%2e` is `.`. Refused, because servers disagree on them:
//!    `%2F` (`/`), `%5C` (`\`), `%3B` (`;`, a parameter delimiter once some server decodes
//!    it), `%00`-`%1F` and `%7F` (NUL and other control bytes), `%C0` and `%C1` (never valid
//!    UTF-8; the overlong spellings of `/`, `.` and `\` that old decoders honour). Every other
//!    escape is kept, its hex digits upper-cased (`%c3%a9` becomes `%C3%A9`).
//! 4. **Segments**, judged after decoding: a `.` or `..` segment, raw or encoded, is refused
//!    (never resolved: the client meant something odd, and a hop that resolves it differently
//!    is the attack). So is an empty segment (`//`, `/a//b`), except the lone root `/` and a
//!    trailing `/` (`/v1/models/`), which are one path each, not two.
//! 5. **Parameters.** A raw `;` is refused unless [`PathOptions::allow_params`]. When allowed,
//!    the part of a segment before its first `;` must itself be neither empty nor a dot segment
//!    (`/..;x/` is `..` to Tomcat), and [`NormalTarget::match_path`] gives the path with every
//!    segment's parameters removed, which is what a server that strips them routes on: routes
//!    and auth must match that.
//! 6. **Query.** Passed through unchanged (its escapes are not rewritten), but it must hold no
//!    raw control byte, space, DEL, byte over 0x7E or `#`.
//!
//! The result ([`NormalTarget`]) is what routes match against, case-sensitively, and what the
//! upstream receives. It is idempotent (normalising it again changes nothing), and full
//! percent-decoding gives the same bytes for it as for the input. [`NormalTarget::rewrite`]
//! puts a route's upstream prefix in front and checks that the result is still a normal path
//! under that prefix (an error, never a panic, if not).
//!
//! A target that needs no change is returned without copying.
//!
//! ```
//! use bytes::Bytes;
//! use chunkgate::codec::path::{normalize_target, PathErrorKind, PathOptions};
//!
//! let t = normalize_target(&Bytes::from_static(b"/v1/%63hat/completions?stream=%2f"), PathOptions::default()).unwrap();
//! assert_eq!(t.path(), b"/v1/chat/completions");
//! assert_eq!(t.query(), Some(&b"stream=%2f"[..]));
//! assert_eq!(t.as_bytes(), b"/v1/chat/completions?stream=%2f");
//!
//! let e = normalize_target(&Bytes::from_static(b"/x/../secret/x"), PathOptions::default()).unwrap_err();
//! assert_eq!(e.kind(), PathErrorKind::DotSegment);
//! assert_eq!(e.status(), 400);
//!
//! // A route `/openai/` whose upstream path prefix is `/v1`: strip the route prefix, add `/v1`.
//! let t = normalize_target(&Bytes::from_static(b"/openai/chat?x=1"), PathOptions::default()).unwrap();
//! let out = t.rewrite(b"/v1", "/openai".len()).unwrap();
//! assert_eq!(out.as_bytes(), b"/v1/chat?x=1");
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::codec::ByteDisplay;

/// Choices the caller makes about paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Accept `;` path parameters (`/a;v=1/b`). Off by default: a `;` is then refused (400).
    /// When on, match routes and auth on [`NormalTarget::match_path`].
    pub allow_params: bool,
}

/// What was wrong with a target, without where. See [`PathError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathErrorKind {
    /// The target is neither origin-form (`/path`) nor `*`.
    NotOriginForm,
    /// A byte that may not appear in a path: not visible ASCII, `#`, or `"<>^`{|}`.
    InvalidByte { found: u8 },
    /// A raw `\`.
    Backslash,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2F`: an encoded `/`.
    EncodedSlash,
    /// `%5C`: an encoded `\`.
    EncodedBackslash,
    /// `%00`-`%1F` or `%7F`: an encoded control byte (NUL included).
    EncodedControl { byte: u8 },
    /// `%3B`: an encoded `;`.
    EncodedSemicolon,
    /// `%C0` or `%C1`: a byte that never occurs in UTF-8, the lead of an overlong spelling.
    OverlongEncoding { byte: u8 },
    /// A `.` or `..` segment, raw or encoded (also before a `;` when parameters are allowed).
    DotSegment,
    /// An empty segment (`//`), or a segment that is empty before its `;`.
    EmptySegment,
    /// A `;` path parameter, not allowed by [`PathOptions::allow_params`].
    Params,
    /// A byte in the query that is not visible ASCII, or a `#`.
    InvalidQueryByte { found: u8 },
    /// A rewrite prefix (from configuration) that is not a normal path without a query.
    InvalidRewritePrefix,
    /// A rewritten path that is not a normal path under its prefix (an internal fault).
    RewriteOutsidePrefix,
}

/// A target refused by the path policy: what was wrong and the byte offset into the target.
///
/// [`PathError::status`] is 400 for what a client sent, 500 for a rewrite that went wrong (the
/// configuration or chunkgate is at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    kind: PathErrorKind,
    offset: usize,
}

impl PathError {
    fn new(kind: PathErrorKind, offset: usize) -> Self {
        PathError { kind, offset }
    }

    /// What was wrong.
    pub fn kind(&self) -> PathErrorKind {
        self.kind
    }

    /// Offset into the target (for a rewrite, into the rewritten target) of the fault.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// 400 for a refused client target; 500 for [`PathErrorKind::InvalidRewritePrefix`] and
    /// [`PathErrorKind::RewriteOutsidePrefix`].
    pub fn status(&self) -> u16 {
        match self.kind {
            PathErrorKind::InvalidRewritePrefix | PathErrorKind::RewriteOutsidePrefix => 500,
            _ => 400,
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PathErrorKind::*;
        let at = self.offset;
        let what: Cow<'static, str> = match self.kind {
            NotOriginForm => "not origin-form (a path starting with '/') or '*'".into(),
            InvalidByte { found } => format!("unexpected {}", ByteDisplay(found)).into(),
            Backslash => "'\\' is not allowed".into(),
            MalformedEscape => "'%' not followed by two hex digits".into(),
            EncodedSlash => "encoded '/' (%2F)".into(),
            EncodedBackslash => "encoded '\\' (%5C)".into(),
            EncodedControl { byte } => format!("encoded control byte %{byte:02X}").into(),
            EncodedSemicolon => "encoded ';' (%3B)".into(),
            OverlongEncoding { byte } => {
                format!("%{byte:02X} is never valid utf-8 (overlong encoding)").into()
            }
            DotSegment => "dot segment ('.' or '..')".into(),
            EmptySegment => "empty path segment".into(),
            Params => "';' path parameters are not allowed".into(),
            InvalidQueryByte { found } => {
                format!("unexpected {} in the query", ByteDisplay(found)).into()
            }
            InvalidRewritePrefix => {
                return write!(
                    f,
                    "invalid rewrite prefix: not a normal path without a query"
                )
            }
            RewriteOutsidePrefix => {
                return write!(
                    f,
                    "rewritten path at byte {at} is not a normal path under its prefix"
                )
            }
        };
        write!(f, "invalid request path at byte {at}: {what}")
    }
}

impl std::error::Error for PathError {}

/// A target that passed the path policy: normalised, ready to route on and to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalTarget {
    /// `/path[?query]`, or `*`.
    bytes: Bytes,
    /// Where the path ends (the `?`, or the end).
    path_end: usize,
    /// The path holds a raw `;` (only possible when parameters are allowed).
    params: bool,
}

impl NormalTarget {
    /// The whole target to forward: `/path` or `/path?query`, or `*`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole target as [`Bytes`] (a cheap clone).
    pub fn to_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The normalised path, without the query (`*` for asterisk-form).
    pub fn path(&self) -> &[u8] {
        &self.bytes[..self.path_end]
    }

    /// The query without its `?`, as received; `None` when the target has no `?`.
    pub fn query(&self) -> Option<&[u8]> {
        self.bytes.get(self.path_end + 1..)
    }

    /// True for `OPTIONS *` (asterisk-form): forward `*` as it is.
    pub fn is_asterisk(&self) -> bool {
        &self.bytes[..] == b"*"
    }

    /// True when the path carries `;` parameters (only with [`PathOptions::allow_params`]).
    pub fn has_params(&self) -> bool {
        self.params
    }

    /// The path routes and auth must match: [`Self::path`] with every segment's `;`
    /// parameters removed (`/secret;a/x` → `/secret/x`), which is what a server that strips
    /// parameters routes on. Without parameters it is [`Self::path`] itself, not a copy.
    pub fn match_path(&self) -> Cow<'_, [u8]> {
        let path = self.path();
        if !self.params {
            return Cow::Borrowed(path);
        }
        let mut out = Vec::with_capacity(path.len());
        for (i, segment) in path.split(|&b| b == b'/').enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            let name_end = segment
                .iter()
                .position(|&b| b == b';')
                .unwrap_or(segment.len());
            out.extend_from_slice(&segment[..name_end]);
        }
        Cow::Owned(out)
    }

    /// The target after a route rewrite: `prefix` (the upstream's path prefix and the route's
    /// rewrite prefix, a normal path or empty; a trailing `/` is dropped) followed by this
    /// target from byte `strip` on (the matched route prefix removed; 0 keeps the whole path),
    /// with a `/` between them when the rest does not start with one. The query is kept.
    ///
    /// The result is checked to be a normal path under `prefix`: a `prefix` that is not a
    /// normal path is [`PathErrorKind::InvalidRewritePrefix`], a `strip` past the path or a
    /// result that left the prefix [`PathErrorKind::RewriteOutsidePrefix`]. Asterisk-form is
    /// returned unchanged.
    pub fn rewrite(&self, prefix: &[u8], strip: usize) -> Result<NormalTarget, PathError> {
        if self.is_asterisk() {
            return Ok(self.clone());
        }
        if strip > self.path_end {
            return Err(PathError::new(PathErrorKind::RewriteOutsidePrefix, strip));
        }
        let bytes = rewrite_path(prefix, &self.bytes[strip..])?;
        let path_end = memchr::memchr(b'?', &bytes).unwrap_or(bytes.len());
        let params = bytes[..path_end].contains(&b';');
        Ok(NormalTarget {
            bytes,
            path_end,
            params,
        })
    }
}

/// Check that `prefix` can stand in front of rewritten paths: empty, or a normal path (what
/// [`normalize_target`] returns unchanged) without `;` or `?`. For validating route and
/// upstream path prefixes when the configuration is loaded.
pub fn check_prefix(prefix: &[u8]) -> Result<(), PathError> {
    let invalid = || Err(PathError::new(PathErrorKind::InvalidRewritePrefix, 0));
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.first() != Some(&b'/') || prefix.contains(&b'?') {
        return invalid();
    }
    match normalize_path(prefix, PathOptions::default()) {
        Ok(None) => Ok(()),
        // Valid but not in normal form (`%7e`, `%41`): it could never match a normal path.
        Ok(Some(_)) | Err(_) => invalid(),
    }
}

/// Build `prefix` + `rest` as [`NormalTarget::rewrite`] does, and check the result: `prefix`
/// with a trailing `/` dropped, then `rest` (a normal path's remainder after a route prefix:
/// empty, `/...`, `?query` or a segment's tail), with a `/` between them when `rest` does not
/// start with one. The result must be a normal target (normalising it changes nothing,
/// parameters allowed) whose path starts with the prefix followed by `/`.
pub fn rewrite_path(prefix: &[u8], rest: &[u8]) -> Result<Bytes, PathError> {
    check_prefix(prefix)?;
    let front = prefix.strip_suffix(b"/").unwrap_or(prefix);
    let mut out = Vec::with_capacity(front.len() + rest.len() + 1);
    out.extend_from_slice(front);
    if rest.first() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    let outside = |at| PathError::new(PathErrorKind::RewriteOutsidePrefix, at);
    let path_end = memchr::memchr(b'?', &out).unwrap_or(out.len());
    match normalize_path(&out[..path_end], PathOptions { allow_params: true }) {
        Ok(None) => {}
        Ok(Some(_)) => return Err(outside(0)),
        Err(e) => return Err(outside(e.offset)),
    }
    check_query(&out[path_end..]).map_err(|e| outside(e.offset + path_end))?;
    // By construction the front is there; checked anyway, as the invariant this exists for.
    if !(out.starts_with(front) && out.get(front.len()) == Some(&b'/')) {
        return Err(outside(0));
    }
    Ok(Bytes::from(out))
}

/// Apply the path policy (see the [module docs](self)) to a request target as the head parser
/// left it (`RequestHead::target`: origin-form, or `*`).
pub fn normalize_target(target: &Bytes, opts: PathOptions) -> Result<NormalTarget, PathError> {
    if &target[..] == b"*" {
        return Ok(NormalTarget {
            bytes: target.clone(),
            path_end: 1,
            params: false,
        });
    }
    if target.first() != Some(&b'/') {
        return Err(PathError::new(PathErrorKind::NotOriginForm, 0));
    }
    let path_end = memchr::memchr(b'?', target).unwrap_or(target.len());
    let rewritten = normalize_path(&target[..path_end], opts)?;
    check_query(&target[path_end..]).map_err(|e| PathError::new(e.kind, e.offset + path_end))?;
    let params = opts.allow_params && target[..path_end].contains(&b';');
    Ok(match rewritten {
        None => NormalTarget {
            bytes: target.clone(),
            path_end,
            params,
        },
        Some(mut path) => {
            let new_end = path.len();
            path.extend_from_slice(&target[path_end..]);
            NormalTarget {
                bytes: Bytes::from(path),
                path_end: new_end,
                params,
            }
        }
    })
}

/// The query part (from its `?` on, or empty): visible ASCII without `#`. Offsets count from
/// the `?`'s position within the part.
fn check_query(query: &[u8]) -> Result<(), PathError> {
    match query
        .iter()
        .position(|&b| !(0x21..0x7f).contains(&b) || b == b'#')
    {
        Some(p) => Err(PathError::new(
            PathErrorKind::InvalidQueryByte { found: query[p] },
            p,
        )),
        None => Ok(()),
    }
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~"` (RFC 3986 §2.3).
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What one segment held, for the checks made when it ends.
#[derive(Debug, Default)]
struct Segment {
    /// Bytes (decoded) before the segment's first `;` (or in all of it).
    name_len: usize,
    /// How many of those are `.`.
    name_dots: usize,
    /// A `;` was seen in this segment.
    params: bool,
}

impl Segment {
    /// Check a finished segment starting at `at`; `last` if the path ends with it.
    fn check(&self, at: usize, last: bool) -> Result<(), PathError> {
        // Only the last segment may be empty (the root `/`, a trailing `/`), and only without
        // parameters.
        let empty_allowed = last && !self.params;
        if self.name_len == 0 && !empty_allowed {
            return Err(PathError::new(PathErrorKind::EmptySegment, at));
        }
        if self.name_len <= 2 && self.name_dots == self.name_len && self.name_len > 0 {
            return Err(PathError::new(PathErrorKind::DotSegment, at));
        }
        Ok(())
    }
}

/// Normalise a path (`/` then segments, no query). `Ok(None)`: already normal, nothing to
/// change; `Ok(Some(path))`: the normal form. Offsets in errors are into `path`.
fn normalize_path(path: &[u8], opts: PathOptions) -> Result<Option<Vec<u8>>, PathError> {
    let err = |kind, at| Err(PathError::new(kind, at));
    debug_assert_eq!(path.first(), Some(&b'/'));
    // Allocated at the first byte that changes; until then the input is its own output.
    let mut out: Option<Vec<u8>> = None;
    let mut segment = Segment::default();
    let mut seg_start = 1;
    let mut i = 1;
    while i < path.len() {
        let b = path[i];
        match b {
            b'/' => {
                segment.check(seg_start, false)?;
                segment = Segment::default();
                if let Some(o) = out.as_mut() {
                    o.push(b);
                }
                i += 1;
                seg_start = i;
                continue;
            }
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    path.get(i + 1).copied().and_then(hex_digit),
                    path.get(i + 2).copied().and_then(hex_digit),
                ) else {
                    return err(PathErrorKind::MalformedEscape, i);
                };
                let v = (hi << 4) | lo;
                match v {
                    b'/' => return err(PathErrorKind::EncodedSlash, i),
                    b'\\' => return err(PathErrorKind::EncodedBackslash, i),
                    b';' => return err(PathErrorKind::EncodedSemicolon, i),
                    0x00..=0x1f | 0x7f => return err(PathErrorKind::EncodedControl { byte: v }, i),
                    0xc0 | 0xc1 => return err(PathErrorKind::OverlongEncoding { byte: v }, i),
                    _ => {}
                }
                if !segment.params {
                    segment.name_len += 1;
                    segment.name_dots += usize::from(v == b'.');
                }
                let escape = &path[i..i + 3];
                if is_unreserved(v) {
                    out.get_or_insert_with(|| path[..i].to_vec()).push(v);
                } else if escape[1..].iter().any(u8::is_ascii_lowercase) {
                    let o = out.get_or_insert_with(|| path[..i].to_vec());
                    o.push(b'%');
                    o.extend(escape[1..].iter().map(u8::to_ascii_uppercase));
                } else if let Some(o) = out.as_mut() {
                    o.extend_from_slice(escape);
                }
                i += 3;
                continue;
            }
            b'\\' => return err(PathErrorKind::Backslash, i),
            b';' if !opts.allow_params => return err(PathErrorKind::Params, i),
            b';' => segment.params = true,
            b'#' | b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                return err(PathErrorKind::InvalidByte { found: b }, i)
            }
            0x21..=0x7e => {
                if !segment.params {
                    segment.name_len += 1;
                    segment.name_dots += usize::from(b == b'.');
                }
            }
            _ => return err(PathErrorKind::InvalidByte { found: b }, i),
        }
        if let Some(o) = out.as_mut() {
            o.push(b);
        }
        i += 1;
    }
    segment.check(seg_start, true)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathErrorKind::*;

    fn norm(target: &str) -> Result<NormalTarget, PathError> {
        normalize_target(
            &Bytes::copy_from_slice(target.as_bytes()),
            PathOptions::default(),
        )
    }

    fn norm_params(target: &str) -> Result<NormalTarget, PathError> {
        normalize_target(
            &Bytes::copy_from_slice(target.as_bytes()),
            PathOptions { allow_params: true },
        )
    }

    fn ok(target: &str) -> String {
        let t = norm(target).unwrap_or_else(|e| panic!("{target:?}: {e}"));
        String::from_utf8(t.as_bytes().to_vec()).expect("ascii")
    }

    fn kind(target: &str) -> PathErrorKind {
        norm(target)
            .map(|t| panic!("{target:?} accepted as {t:?}"))
            .unwrap_err()
            .kind()
    }

    /// Every bypass reported against the raw-target routing, refused or normalised so that a
    /// `/secret/` route sees it.
    #[test]
    fn normalize_reported_bypasses() {
        assert_eq!(kind("/x/../secret/x"), DotSegment);
        assert_eq!(kind("/./secret/x"), DotSegment);
        assert_eq!(ok("/%73ecret/x"), "/secret/x");
        assert_eq!(kind("//secret/x"), EmptySegment);
        assert_eq!(kind("/secret;a/x"), Params);
        assert_eq!(kind("/secret%2fx"), EncodedSlash);
        // With parameters allowed, routing sees what a parameter-stripping server sees.
        let t = norm_params("/secret;a/x").unwrap();
        assert_eq!(t.as_bytes(), b"/secret;a/x");
        assert_eq!(&t.match_path()[..], b"/secret/x");
        assert!(t.has_params());
    }

    #[test]
    fn normalize_accepts_llm_paths_unchanged_without_copying() {
        for target in [
            "/",
            "/v1/chat/completions",
            "/v1/chat/completions?stream=true",
            "/api/chat",
            "/api/chat?model=llama3&keep_alive=5m",
            "/v1/models/",
            "/v1/models/gpt-4o-mini",
            "/v1beta/models/gemini-1.5-pro:streamGenerateContent?alt=sse&key=x",
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "/v1/messages?beta=true",
            "/a.b/..c/...d/.e./~u_v-w",
            "/caf%C3%A9",
            "/a%20b",
            "/a?",
            "/?x=1",
        ] {
            let input = Bytes::copy_from_slice(target.as_bytes());
            let t = normalize_target(&input, PathOptions::default())
                .unwrap_or_else(|e| panic!("{target:?}: {e}"));
            assert_eq!(t.as_bytes(), target.as_bytes());
            assert_eq!(
                t.as_bytes().as_ptr(),
                input.as_ptr(),
                "{target:?} was copied"
            );
        }
        let t = norm("/v1/chat/completions?stream=true").unwrap();
        assert_eq!(t.path(), b"/v1/chat/completions");
        assert_eq!(t.query(), Some(&b"stream=true"[..]));
        assert_eq!(norm("/a?").unwrap().query(), Some(&b""[..]));
        assert_eq!(norm("/a").unwrap().query(), None);
        assert_eq!(norm("/a?b?c").unwrap().query(), Some(&b"b?c"[..]));
    }

    #[test]
    fn normalize_decodes_unreserved_and_uppercases_the_rest() {
        let cases = [
            ("/%76%31/chat", "/v1/chat"),
            ("/%41%5a%61%7A%30%39", "/AZaz09"),
            ("/a%2Db%2eC%5f%7e", "/a-b.C_~"),
            ("/a%2E%2Eb", "/a..b"),
            ("/%c3%a9t%C3%a9", "/%C3%A9t%C3%A9"),
            ("/a%20b%3f%23%25", "/a%20b%3F%23%25"),
            ("/a%2a", "/a%2A"),
            // The query is passed through as received.
            ("/%61?q=%61%2f%2e%2e", "/a?q=%61%2f%2e%2e"),
            ("/x?/../y", "/x?/../y"),
            ("/x?//y;z", "/x?//y;z"),
        ];
        for (input, expect) in cases {
            assert_eq!(ok(input), expect, "{input}");
        }
    }

    #[test]
    fn normalize_refusals() {
        let cases: &[(&str, PathErrorKind, usize)] = &[
            // dot segments, raw and encoded, anywhere
            ("/.", DotSegment, 1),
            ("/..", DotSegment, 1),
            ("/a/.", DotSegment, 3),
            ("/a/..", DotSegment, 3),
            ("/a/./b", DotSegment, 3),
            ("/a/../b", DotSegment, 3),
            ("/a/..?x", DotSegment, 3),
            ("/%2e/x", DotSegment, 1),
            ("/%2E%2e/x", DotSegment, 1),
            ("/.%2e/x", DotSegment, 1),
            ("/a/%2e%2E", DotSegment, 3),
            // empty segments
            ("//", EmptySegment, 1),
            ("//a", EmptySegment, 1),
            ("/a//b", EmptySegment, 3),
            ("/a//", EmptySegment, 3),
            ("/a///b", EmptySegment, 3),
            // encoded separators and controls
            ("/a%2fb", EncodedSlash, 2),
            ("/a%2Fb", EncodedSlash, 2),
            ("/a%5cb", EncodedBackslash, 2),
            ("/a%5Cb", EncodedBackslash, 2),
            ("/a\\b", Backslash, 2),
            ("/a%00b", EncodedControl { byte: 0 }, 2),
            ("/a%0d%0a", EncodedControl { byte: 0x0d }, 2),
            ("/a%1F", EncodedControl { byte: 0x1f }, 2),
            ("/a%7f", EncodedControl { byte: 0x7f }, 2),
            ("/a%3bb", EncodedSemicolon, 2),
            ("/%c0%ae%c0%ae/x", OverlongEncoding { byte: 0xc0 }, 1),
            ("/%C1%9C", OverlongEncoding { byte: 0xc1 }, 1),
            // parameters
            ("/a;b", Params, 2),
            ("/a/b;", Params, 4),
            ("/;", Params, 1),
            // malformed escapes
            ("/%zz", MalformedEscape, 1),
            ("/%4", MalformedEscape, 1),
            ("/%", MalformedEscape, 1),
            ("/a%g0", MalformedEscape, 2),
            ("/a%0g", MalformedEscape, 2),
            ("/a%4?", MalformedEscape, 2),
            // bytes
            ("/a b", InvalidByte { found: b' ' }, 2),
            ("/a\tb", InvalidByte { found: b'\t' }, 2),
            ("/a\x00", InvalidByte { found: 0 }, 2),
            ("/a\x7f", InvalidByte { found: 0x7f }, 2),
            ("/a\u{e9}", InvalidByte { found: 0xc3 }, 2),
            ("/a#f", InvalidByte { found: b'#' }, 2),
            ("/a|b", InvalidByte { found: b'|' }, 2),
            // query bytes
            ("/a?b c", InvalidQueryByte { found: b' ' }, 4),
            ("/a?b\x01", InvalidQueryByte { found: 1 }, 4),
            ("/a?\x7f", InvalidQueryByte { found: 0x7f }, 3),
            ("/a?b#c", InvalidQueryByte { found: b'#' }, 4),
            ("/a?\r\n", InvalidQueryByte { found: b'\r' }, 3),
            // forms
            ("", NotOriginForm, 0),
            ("a/b", NotOriginForm, 0),
            ("?x", NotOriginForm, 0),
            ("**", NotOriginForm, 0),
            ("http://h/x", NotOriginForm, 0),
        ];
        for (input, expect, at) in cases {
            let e = norm(input).expect_err(input);
            assert_eq!(e.kind(), *expect, "{input:?}");
            assert_eq!(e.status(), 400, "{input:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("invalid request path"), "{msg}");
            assert_eq!(e.offset(), *at, "{input:?}");
        }
    }

    #[test]
    fn normalize_params_when_allowed() {
        let t = norm_params("/a;v=1/b;c;d/e?x;y").unwrap();
        assert_eq!(t.path(), b"/a;v=1/b;c;d/e");
        assert_eq!(&t.match_path()[..], b"/a/b/e");
        assert_eq!(t.query(), Some(&b"x;y"[..]));
        // `;` in the query alone is not a path parameter.
        let t = norm_params("/a?x;y").unwrap();
        assert!(!t.has_params());
        assert!(matches!(t.match_path(), Cow::Borrowed(b"/a")));
        // What a parameter-stripping server would read as `..`, `.` or an empty segment.
        for (input, expect) in [
            ("/a/..;x/b", DotSegment),
            ("/a/.;x", DotSegment),
            ("/a/%2e%2e;x", DotSegment),
            ("/;x/secret", EmptySegment),
            ("/a/;x", EmptySegment),
            ("/;", EmptySegment),
            ("/a%3bx", EncodedSemicolon),
        ] {
            let e = norm_params(input).expect_err(input);
            assert_eq!(e.kind(), expect, "{input}");
        }
        // Dots inside the parameters are only bytes.
        assert_eq!(&norm_params("/a;..").unwrap().match_path()[..], b"/a");
    }

    #[test]
    fn normalize_asterisk_form_stays_asterisk() {
        let t = norm("*").unwrap();
        assert!(t.is_asterisk());
        assert_eq!(t.as_bytes(), b"*");
        assert_eq!(t.path(), b"*");
        assert_eq!(t.query(), None);
        // Never prefixed by a rewrite.
        assert_eq!(t.rewrite(b"/v1", 0).unwrap().as_bytes(), b"*");
        assert!(!norm("/").unwrap().is_asterisk());
    }

    #[test]
    fn normalize_absolute_form_arrives_split_by_the_head_parser() {
        use crate::codec::head::{HeadLimits, RequestParser};
        let mut buf = bytes::BytesMut::from(
            &b"GET http://api.test:8080/v1/%6dodels?x=%2f HTTP/1.1\r\nHost: api.test:8080\r\n\r\n"
                [..],
        );
        let head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(
            head.target_authority.as_deref(),
            Some(&b"api.test:8080"[..])
        );
        let t = normalize_target(&head.target, PathOptions::default()).unwrap();
        assert_eq!(t.as_bytes(), b"/v1/models?x=%2f");
        let mut buf = bytes::BytesMut::from(
            &b"GET http://api.test/../secret HTTP/1.1\r\nHost: api.test\r\n\r\n"[..],
        );
        let head = RequestParser::new(HeadLimits::default())
            .parse(&mut buf)
            .unwrap()
            .unwrap();
        let e = normalize_target(&head.target, PathOptions::default()).unwrap_err();
        assert_eq!(e.kind(), DotSegment);
    }

    #[test]
    fn rewrite_strips_prefixes_and_stays_under_the_target() {
        let t = norm("/openai/v1/chat?x=1").unwrap();
        let r = |prefix: &str, strip: usize| {
            let out = t
                .rewrite(prefix.as_bytes(), strip)
                .unwrap_or_else(|e| panic!("{prefix:?} {strip}: {e}"));
            String::from_utf8(out.as_bytes().to_vec()).expect("ascii")
        };
        assert_eq!(r("", 7), "/v1/chat?x=1");
        assert_eq!(r("/base", 7), "/base/v1/chat?x=1");
        assert_eq!(r("/base/", 7), "/base/v1/chat?x=1");
        assert_eq!(r("/api/", 0), "/api/openai/v1/chat?x=1");
        assert_eq!(r("", 0), "/openai/v1/chat?x=1");
        let t = norm("/openai?q").unwrap();
        assert_eq!(t.rewrite(b"", 7).unwrap().as_bytes(), b"/?q");
        assert_eq!(t.rewrite(b"/v1", 7).unwrap().as_bytes(), b"/v1/?q");
        let t = norm("/openai").unwrap();
        let out = t.rewrite(b"/v1/", 7).unwrap();
        assert_eq!(out.as_bytes(), b"/v1/");
        assert_eq!(out.query(), None);
    }

    #[test]
    fn rewrite_refuses_bad_prefixes_and_escapes() {
        let t = norm("/openai/v1").unwrap();
        for prefix in [
            &b"v1"[..],
            b"/v1/../x",
            b"/v1//x",
            b"/v1?x",
            b"/v1;x",
            b"/%7e",
            b"/a%2fb",
            b"//",
            b"*",
        ] {
            let e = t
                .rewrite(prefix, 7)
                .expect_err(&String::from_utf8_lossy(prefix));
            assert_eq!(e.kind(), InvalidRewritePrefix);
            assert_eq!(e.status(), 500);
            assert!(check_prefix(prefix).is_err());
        }
        for prefix in [&b""[..], b"/", b"/v1", b"/v1/", b"/a%20b/c-d"] {
            assert_eq!(check_prefix(prefix), Ok(()), "{prefix:?}");
        }
        // A strip past the path is refused, not a panic.
        let e = t.rewrite(b"/v1", 99).unwrap_err();
        assert_eq!(e.kind(), RewriteOutsidePrefix);
        // A rest that was not normalised cannot leave the prefix: the invariant is checked.
        for rest in [
            &b"/../etc"[..],
            b"/./x",
            b"//x",
            b"/a%2f..",
            b"/..;x/y",
            b"/?\x00",
        ] {
            let e = rewrite_path(b"/v1", rest).expect_err(&String::from_utf8_lossy(rest));
            assert_eq!(e.kind(), RewriteOutsidePrefix, "{rest:?}");
            assert_eq!(e.status(), 500);
        }
        assert_eq!(&rewrite_path(b"/v1", b"chat").unwrap()[..], b"/v1/chat");
    }

    /// Full percent-decoding (every `%XY`), for comparing meanings.
    fn decode_all(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                if let (Some(h), Some(l)) = (
                    s.get(i + 1).copied().and_then(hex_digit),
                    s.get(i + 2).copied().and_then(hex_digit),
                ) {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
            }
            out.push(s[i]);
            i += 1;
        }
        out
    }

    /// Check everything an accepted output promises.
    fn check_output(input: &[u8], t: &NormalTarget, opts: PathOptions) {
        let path = t.path();
        // Idempotent.
        let again = normalize_target(&t.to_bytes(), opts).expect("the output is accepted again");
        assert_eq!(&again, t, "normalising twice changed {input:?}");
        // Same meaning under full decoding.
        assert_eq!(decode_all(t.as_bytes()), decode_all(input), "{input:?}");
        // Nothing ambiguous is left in the path.
        assert!(!path.windows(2).any(|w| w == b"//"), "{path:?}");
        for segment in path.split(|&b| b == b'/').skip(1) {
            let name = segment.split(|&b| b == b';').next().unwrap_or_default();
            assert!(name != b"." && name != b"..", "dot segment in {path:?}");
        }
        for (i, w) in path.windows(3).enumerate() {
            if w[0] == b'%' {
                let esc = w.to_ascii_uppercase();
                assert!(
                    !matches!(&esc[..], b"%2F" | b"%5C" | b"%00" | b"%3B"),
                    "{path:?}"
                );
                assert!(
                    !w[1..].iter().any(u8::is_ascii_lowercase),
                    "lower-case escape at {i} in {path:?}"
                );
                let v = (hex_digit(w[1]).expect("hex") << 4) | hex_digit(w[2]).expect("hex");
                assert!(!is_unreserved(v), "escaped unreserved byte in {path:?}");
            }
        }
        assert!(!path.contains(&b'\\'));
        if !opts.allow_params {
            assert!(!path.contains(&b';'));
            assert!(matches!(t.match_path(), Cow::Borrowed(_)));
        }
    }

    fn target_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = proptest::sample::select(vec![
            &b"/"[..],
            b"/",
            b"/",
            b".",
            b"..",
            b"a",
            b"Z",
            b"0",
            b"-",
            b"_",
            b"~",
            b"secret",
            b"v1",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%2F",
            b"%5c",
            b"%00",
            b"%41",
            b"%61",
            b"%7e",
            b"%7E",
            b"%3b",
            b"%3B",
            b";",
            b";x=1",
            b"%20",
            b"%c3%a9",
            b"%C3%A9",
            b"%25",
            b"%zz",
            b"%4",
            b"%",
            b"\\",
            b"?",
            b"?q=%2f",
            b"&",
            b"=",
            b"#",
            b" ",
            b"\x00",
            b"\x7f",
            b"\xff",
            b"*",
            b":",
            b"@",
            b"+",
            b"%3f",
            b"%c0%ae",
        ]);
        prop_oneof![
            4 => proptest::collection::vec(piece, 0..16).prop_map(|p| {
                let mut v = b"/".to_vec();
                v.extend(p.concat());
                v
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| {
                v.insert(0, b'/');
                v
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn normalize_properties_hold_for_any_target(
            input in target_strategy(),
            allow_params in proptest::bool::ANY,
        ) {
            let opts = PathOptions { allow_params };
            if let Ok(t) = normalize_target(&Bytes::from(input.clone()), opts) {
                check_output(&input, &t, opts);
                // Parameters are the only thing the option changes.
                if !allow_params {
                    let loose = normalize_target(&Bytes::from(input.clone()), PathOptions { allow_params: true });
                    proptest::prop_assert_eq!(loose, Ok(t.clone()));
                }
                // Any rewrite of an accepted target under a valid prefix succeeds and stays under it.
                let out = t.rewrite(b"/up/v1", 0).expect("a normal target rewrites");
                if !t.is_asterisk() {
                    proptest::prop_assert!(out.as_bytes().starts_with(b"/up/v1/"));
                    check_output(out.as_bytes(), &out, PathOptions { allow_params: true });
                }
            }
        }
    }
}
