//! What the agent tells operators about the traffic: `stats` (a table or JSON, once or
//! watched with rates) and the Prometheus metrics, all rendered from snapshots of the counters.

pub mod metrics;
pub mod rates;
pub mod stats;
