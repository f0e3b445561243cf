//! What the agent tells operators about the traffic: `stats` (a table or JSON) and the
//! Prometheus metrics, both rendered from one snapshot of the counters.

pub mod metrics;
pub mod stats;
