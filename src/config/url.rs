//! Upstream URLs: `http://` or `https://`, host, optional port and path prefix.

/// `scheme://host[:port][/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https://`: connect with TLS.
    pub tls: bool,
    /// Host name or IP literal (without brackets), used for DNS and SNI.
    pub host: String,
    /// TCP port (the scheme's default when the URL has none).
    pub port: u16,
    /// Path prefix prepended to every forwarded path; empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
}

impl UpstreamUrl {
    /// Parse `http://host[:port][/prefix]` or `https://...`.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "upstream url {s:?} must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("upstream url {s:?} has no host"));
        }
        if authority.contains('@') {
            return Err(format!(
                "upstream url {s:?}: credentials in the url are not supported"
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "upstream url {s:?}: query and fragment are not allowed"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("upstream url {s:?}: unclosed '['"))?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p, s)?,
                None if after.is_empty() => default_port,
                None => return Err(format!("upstream url {s:?}: bad authority")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("upstream url {s:?} has no host"));
        }
        let path_prefix = path.trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            path_prefix,
        })
    }

    /// `host[:port]` as sent in `Host` (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path_prefix)
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("upstream url {whole:?}: bad port {p:?}"));
    }
    p.parse::<u16>()
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| format!("upstream url {whole:?}: bad port {p:?}"))
}
