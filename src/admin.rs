//! The admin listener: /healthz, /readyz, /metrics.
