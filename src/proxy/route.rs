//! Routes: longest path prefix wins; the path is rewritten and the upstream's own path prefix
//! put in front; a route may require a bearer token and inject headers.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::config::RouteConfig;

/// A route ready for matching.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub group: usize,
    pub name: Arc<str>,
    pub strip_prefix: bool,
    pub rewrite_prefix: String,
    pub inject: Vec<(String, String)>,
    pub require_bearer: Vec<String>,
}

impl Route {
    pub fn new(cfg: &RouteConfig, group: usize) -> Route {
        Route {
            prefix: cfg.prefix.clone(),
            group,
            name: Arc::from(cfg.prefix.as_str()),
            strip_prefix: cfg.strip_prefix,
            rewrite_prefix: cfg.rewrite_prefix.clone(),
            inject: cfg.inject_headers.clone(),
            require_bearer: cfg.require_bearer.clone(),
        }
    }

    /// Does `path` (the origin-form target, query included) fall under this route? Matching
    /// stops at a segment boundary: `/openai/` and `/openai` both match `/openai`,
    /// `/openai/x` and `/openai?x`, never `/openaix`; `/` matches everything.
    pub fn matches(&self, path: &[u8]) -> bool {
        let prefix = self.prefix.as_bytes();
        let bare = prefix.strip_suffix(b"/").unwrap_or(prefix);
        if bare.is_empty() {
            return true;
        }
        path.starts_with(bare) && matches!(path.get(bare.len()), None | Some(b'/') | Some(b'?'))
    }

    /// The forwarded target: upstream path prefix + (rewritten) path, always origin-form.
    pub fn rewrite(&self, upstream_prefix: &str, path: &[u8], dst: &mut BytesMut) {
        dst.clear();
        dst.put_slice(upstream_prefix.as_bytes());
        let rest: &[u8] = if self.strip_prefix {
            let prefix = self.prefix.as_bytes();
            let bare = prefix.strip_suffix(b"/").unwrap_or(prefix);
            let rest = path.strip_prefix(bare).unwrap_or(path);
            dst.put_slice(self.rewrite_prefix.trim_end_matches('/').as_bytes());
            rest
        } else {
            path
        };
        if !rest.starts_with(b"/") {
            dst.put_u8(b'/');
        }
        dst.put_slice(rest);
    }

    /// Check `Authorization: Bearer <token>` against the route's list (constant-time compare).
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        if self.require_bearer.is_empty() {
            return true;
        }
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = strip_bearer(value) else {
            return false;
        };
        self.require_bearer
            .iter()
            .fold(false, |ok, t| ok | ct_eq(t.as_bytes(), token))
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compare without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The longest matching prefix among `routes`.
pub fn select<'a>(routes: &'a [Route], path: &[u8]) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| r.matches(path))
        .max_by_key(|r| r.prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool, rewrite: &str) -> Route {
        Route::new(
            &RouteConfig {
                prefix: prefix.into(),
                group: "g".into(),
                strip_prefix: strip,
                rewrite_prefix: rewrite.into(),
                inject_headers: vec![],
                require_bearer: vec![],
            },
            0,
        )
    }

    fn rewritten(r: &Route, up: &str, path: &str) -> String {
        let mut out = BytesMut::new();
        r.rewrite(up, path.as_bytes(), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn route_select_longest_prefix() {
        let routes = vec![route("/", false, ""), route("/openai/", true, "")];
        assert_eq!(select(&routes, b"/openai/v1/x").unwrap().prefix, "/openai/");
        assert_eq!(select(&routes, b"/openai").unwrap().prefix, "/openai/");
        assert_eq!(select(&routes, b"/openaix").unwrap().prefix, "/");
        assert_eq!(select(&routes, b"/local/x").unwrap().prefix, "/");
        assert!(select(&routes[1..], b"/other").is_none());
        let bare = vec![route("/local", true, "")];
        assert!(select(&bare, b"/local/v1").is_some());
        assert!(select(&bare, b"/local").is_some());
        assert!(select(&bare, b"/localx").is_none());
    }

    #[test]
    fn route_rewrite_strips_and_prefixes() {
        let r = route("/openai/", true, "");
        assert_eq!(rewritten(&r, "", "/openai/v1/chat?x=1"), "/v1/chat?x=1");
        assert_eq!(rewritten(&r, "/base", "/openai/v1"), "/base/v1");
        assert_eq!(rewritten(&r, "", "/openai"), "/");
        assert_eq!(rewritten(&r, "", "/openai?q"), "/?q");
        let r = route("/local/", true, "/api/");
        assert_eq!(rewritten(&r, "", "/local/v1/models"), "/api/v1/models");
        let r = route("/", false, "");
        assert_eq!(rewritten(&r, "/p", "/v1/models"), "/p/v1/models");
    }

    #[test]
    fn route_bearer_auth() {
        let mut r = route("/", false, "");
        assert!(r.authorized(None));
        r.require_bearer = vec!["s3cret".into(), "other".into()];
        assert!(r.authorized(Some(b"Bearer s3cret")));
        assert!(r.authorized(Some(b"bearer other")));
        assert!(!r.authorized(Some(b"Bearer s3cre")));
        assert!(!r.authorized(Some(b"Basic s3cret")));
        assert!(!r.authorized(None));
    }
}
