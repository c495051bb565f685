//! Routes: longest path prefix wins, matched on the normalised path (`codec::path`),
//! case-sensitively; the path is rewritten and the upstream's own path prefix put in front,
//! and the result checked to stay under that prefix; a route may require a bearer token and
//! inject headers.

use std::sync::Arc;

use crate::codec::path::{check_prefix, NormalTarget, PathError};
use crate::config::RouteConfig;

/// A route ready for matching.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    /// The route's place in the proxy's list.
    pub index: usize,
    pub group: usize,
    pub name: Arc<str>,
    pub strip_prefix: bool,
    pub rewrite_prefix: String,
    pub inject: Vec<(String, String)>,
    pub require_bearer: Vec<String>,
}

impl Route {
    /// The route of `cfg`, at `index` in the proxy's list, sending to group `group`. Its
    /// prefixes must be normal paths (`codec::path::check_prefix`): another spelling could
    /// never match a normalised path, or would join into one that is not normal.
    pub fn new(cfg: &RouteConfig, index: usize, group: usize) -> Result<Route, String> {
        for (what, p) in [
            ("prefix", &cfg.prefix),
            ("rewrite_prefix", &cfg.rewrite_prefix),
        ] {
            check_prefix(p.as_bytes()).map_err(|e| {
                format!(
                    "route {:?}: {what} {p:?} is not a normal path: {e}",
                    cfg.prefix
                )
            })?;
        }
        Ok(Route {
            prefix: cfg.prefix.clone(),
            index,
            group,
            name: Arc::from(cfg.prefix.as_str()),
            strip_prefix: cfg.strip_prefix,
            rewrite_prefix: cfg.rewrite_prefix.clone(),
            inject: cfg.inject_headers.clone(),
            require_bearer: cfg.require_bearer.clone(),
        })
    }

    /// The prefix without a trailing `/` (`/` itself becomes empty).
    fn bare_prefix(&self) -> &[u8] {
        let prefix = self.prefix.as_bytes();
        prefix.strip_suffix(b"/").unwrap_or(prefix)
    }

    /// Does `path` (a normalised path, without the query) fall under this route? Matching
    /// stops at a segment boundary: `/openai/` and `/openai` both match `/openai` and
    /// `/openai/x`, never `/openaix`; `/` matches everything.
    pub fn matches(&self, path: &[u8]) -> bool {
        let bare = self.bare_prefix();
        if bare.is_empty() {
            return true;
        }
        path.starts_with(bare) && matches!(path.get(bare.len()), None | Some(b'/') | Some(b'?'))
    }

    /// The target the upstream receives: the upstream's path prefix, then the route's
    /// rewrite prefix in place of its own prefix when it strips, then the rest of `target`
    /// (query kept). Checked to lie under the prefix put in front. `*` stays `*`.
    pub fn upstream_target(
        &self,
        upstream_prefix: &str,
        target: &NormalTarget,
    ) -> Result<NormalTarget, PathError> {
        let upstream_prefix = upstream_prefix.trim_end_matches('/');
        if upstream_prefix.is_empty() && !self.strip_prefix {
            // The common case: forwarded as it came, without a copy.
            return Ok(target.clone());
        }
        let mut prefix = String::with_capacity(upstream_prefix.len() + self.rewrite_prefix.len());
        prefix.push_str(upstream_prefix);
        let strip = if self.strip_prefix {
            prefix.push_str(self.rewrite_prefix.trim_end_matches('/'));
            self.bare_prefix().len()
        } else {
            0
        };
        target.rewrite(prefix.as_bytes(), strip)
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
    use crate::codec::path::{normalize_target, PathOptions};
    use bytes::Bytes;

    fn route(prefix: &str, strip: bool, rewrite: &str) -> Route {
        Route::new(
            &RouteConfig {
                prefix: prefix.into(),
                group: "g".into(),
                strip_prefix: strip,
                rewrite_prefix: rewrite.into(),
                inject_headers: vec![],
                require_bearer: vec![],
                capture: Default::default(),
            },
            0,
            0,
        )
        .expect("a valid route")
    }

    fn target(path: &str) -> NormalTarget {
        normalize_target(
            &Bytes::copy_from_slice(path.as_bytes()),
            PathOptions::default(),
        )
        .expect("a normal target")
    }

    fn rewritten(r: &Route, up: &str, path: &str) -> String {
        let out = r.upstream_target(up, &target(path)).expect("rewritten");
        String::from_utf8(out.as_bytes().to_vec()).unwrap()
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
    fn rewritten_paths_stay_under_the_target_prefix() {
        // `/local/../admin` and its encoded spellings never get this far: the path policy
        // refuses them before routing.
        for evil in [
            "/local/../admin",
            "/local/%2e%2e/admin",
            "/local/..%2fadmin",
        ] {
            assert!(
                normalize_target(&Bytes::from(evil), PathOptions::default()).is_err(),
                "{evil}"
            );
        }
        let r = route("/local/", true, "/api");
        assert_eq!(rewritten(&r, "", "/local/v1/models"), "/api/v1/models");
        assert_eq!(rewritten(&r, "", "/local"), "/api/");
        assert_eq!(rewritten(&r, "/base/", "/local/x?q=1"), "/base/api/x?q=1");
        // An asterisk-form target is forwarded as it is.
        assert_eq!(rewritten(&r, "/base", "*"), "*");
    }

    #[test]
    fn prefixes_that_are_not_normal_are_refused() {
        for (prefix, rewrite) in [("/%73ecret/", ""), ("/a//b", ""), ("/ok/", "/x/../y")] {
            let cfg = RouteConfig {
                prefix: prefix.into(),
                group: "g".into(),
                strip_prefix: true,
                rewrite_prefix: rewrite.into(),
                inject_headers: vec![],
                require_bearer: vec![],
                capture: Default::default(),
            };
            assert!(Route::new(&cfg, 0, 0).is_err(), "{prefix} {rewrite}");
        }
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
