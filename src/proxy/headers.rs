//! Hop-by-hop removal, Host rewrite, X-Forwarded-*, Via, request ids, injected headers.
