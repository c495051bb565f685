//! Routes: longest path prefix wins, matched on the normalised path (`codec::path`),
//! case-sensitively; the path is rewritten and the upstream's own path prefix put in front,
//! and the result checked to stay under that prefix; a route may require a bearer token and
//! inject headers.

use std::sync::Arc;

use crate::codec::path::{check_prefix, NormalTarget, PathError};
use crate::config::{RouteConfig, StreamRouteConfig, UpstreamConfig};
use crate::metrics::RouteLlmMetrics;

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
    /// How answers are framed and read as LLM streams.
    pub stream: StreamRouteConfig,
    /// The route's LLM-stream series (detached until the proxy registers them).
    pub llm: RouteLlmMetrics,
    /// A capture sink wants the answer text: only then does the tap assemble it.
    pub keeps_text: bool,
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
            stream: cfg.stream.clone(),
            llm: RouteLlmMetrics::default(),
            keeps_text: !cfg.capture.sinks.is_empty(),
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

    /// The target `upstream` receives: its path prefix, then the rewrite prefix in place of
    /// the route's own prefix when stripping, then the rest of `target` (query kept). The
    /// upstream's `strip_prefix` and `rewrite_prefix`, when set, replace the route's. Checked
    /// to lie under the prefix put in front. `*` stays `*`.
    pub fn upstream_target(
        &self,
        upstream: &UpstreamConfig,
        target: &NormalTarget,
    ) -> Result<NormalTarget, PathError> {
        let upstream_prefix = upstream.url.path_prefix.trim_end_matches('/');
        let strip_prefix = upstream.strip_prefix.unwrap_or(self.strip_prefix);
        let rewrite_prefix = upstream
            .rewrite_prefix
            .as_deref()
            .unwrap_or(&self.rewrite_prefix);
        if upstream_prefix.is_empty() && !strip_prefix {
            // The common case: forwarded as it came, without a copy.
            return Ok(target.clone());
        }
        let mut prefix = String::with_capacity(upstream_prefix.len() + rewrite_prefix.len());
        prefix.push_str(upstream_prefix);
        let strip = if strip_prefix {
            prefix.push_str(rewrite_prefix.trim_end_matches('/'));
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
                stream: Default::default(),
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

    fn upstream(prefix: &str) -> UpstreamConfig {
        let url = crate::config::UpstreamUrl::parse(&format!("http://127.0.0.1:1{prefix}"));
        UpstreamConfig::new(url.expect("a valid url"))
    }

    fn rewritten(r: &Route, up: &str, path: &str) -> String {
        rewritten_for(r, &upstream(up), path)
    }

    fn rewritten_for(r: &Route, up: &UpstreamConfig, path: &str) -> String {
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
    fn an_upstream_replaces_the_route_rewriting() {
        let r = route("/openai/", true, "/v1");
        let mut up = upstream("/base");
        assert_eq!(rewritten_for(&r, &up, "/openai/chat"), "/base/v1/chat");
        up.rewrite_prefix = Some("/openai/v1".into());
        assert_eq!(
            rewritten_for(&r, &up, "/openai/chat"),
            "/base/openai/v1/chat"
        );
        up.rewrite_prefix = Some(String::new());
        assert_eq!(rewritten_for(&r, &up, "/openai/chat"), "/base/chat");
        up.strip_prefix = Some(false);
        assert_eq!(rewritten_for(&r, &up, "/openai/chat"), "/base/openai/chat");
        let keep = route("/", false, "");
        let mut up = upstream("");
        up.strip_prefix = Some(true);
        up.rewrite_prefix = Some("/api".into());
        assert_eq!(rewritten_for(&keep, &up, "/v1/models"), "/api/v1/models");
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
                stream: Default::default(),
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
