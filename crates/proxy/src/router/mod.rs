//! Routing: the compiled route table (`config`), retries (`retry`) and the router filter that
//! forwards to upstream clusters.

pub mod config;
pub mod retry;
