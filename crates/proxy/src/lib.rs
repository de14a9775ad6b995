//! sluice's data plane: Envoy v3 static configs, served with tokio, hyper and rustls.
//!
//! Module names follow Envoy's source tree so an Envoy user finds the code:
//! `listener` (listeners, filter chain selection, TLS), `http` (the HTTP connection manager and
//! local replies), `router` (route tables and the router filter), `filters` (HTTP filters such as
//! ext_authz), `upstream` (cluster manager, discovery, load balancers, connection pools),
//! `admin` and `stats`.
//!
//! The field audit (docs/DESIGN.md): every build function destructures its config struct
//! exhaustively, and the crate denies unused variables, so a deserialized field that nothing
//! reads does not compile (`tests/config_audit.rs` checks the destructurings exist).
#![deny(unused_variables)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod bootstrap;
pub mod cli;
pub mod config_audit;
pub mod data_source;
pub mod filters;
pub mod formatter;
pub mod http;
pub mod listener;
pub mod router;
pub mod server;
pub mod stats;
pub mod stream_info;
pub mod tls;
pub mod upstream;

