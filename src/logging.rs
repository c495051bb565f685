//! Log setup (tracing) and the access log.
