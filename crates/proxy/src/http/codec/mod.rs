//! sluice's HTTP/1 server codec for downstream connections (HTTP/2 is hyper's).
//!
//! - [`parse`]: the request head (`httparse`, plus Envoy's rules and leniencies) and the
//!   replies Envoy's codec makes itself (400, 426, 431, 501);
//! - [`body`]: request body framing (Content-Length, chunked with trailers) and the body the
//!   connection manager receives;
//! - [`encode`]: response serialisation (status line with Envoy's reason phrases, headers in
//!   the connection manager's order, framing) and the vectored output queue;
//! - [`conn`]: the connection loop (keep-alive, pipelining, `100 Continue`, closing rules);
//! - [`tunnel`]: upgrades and CONNECT once the upstream switched protocols.
//!
//! The connection manager sees an `http::Request<crate::body::Body>` and returns an
//! `http::Response<crate::body::Body>`; see [`conn::Service`].

pub mod body;
pub mod conn;
pub mod encode;
pub mod fuzzing;
pub mod parse;
pub mod reason;
pub mod tunnel;

pub use conn::{serve, BodyRefused, CodecReply, CodecStats, Config, ConnEnd, ContinueSent, Service, DEFAULT_DRAIN_TIMEOUT};
pub use parse::{ParseConfig, Underscores};
pub use tunnel::UpstreamTunnel;

#[cfg(test)]
mod tests;
