//! Upstreams: the cluster manager, service discovery (STATIC, STRICT_DNS, LOGICAL_DNS), load
//! balancers, circuit breakers and connection pools (HTTP/1.1 keep-alive, HTTP/2 multiplexed,
//! optional TLS).
//!
//! Request path: [`Cluster::send`] loads the current host snapshot (an `ArcSwap`, no lock), asks
//! the load balancer built for that snapshot for a host, checks the circuit breakers (atomics),
//! takes a pooled connection of that host (a short per-host mutex) or connects, and sends. The
//! response body is wrapped so that the connection returns to the pool when the body ends.
//! Discovery runs in one background task per DNS cluster and never blocks requests.
//!
//! Health: active health checking ([`health_check`]) and outlier detection ([`outlier`]) run on
//! the control runtime and change hosts' health flags ([`host::health_flag`]); the cluster then
//! swaps in load balancers built over its healthy and degraded hosts (Envoy's panic threshold
//! and `update_merge_window` included). The request path reports each attempt's result per host
//! with [`Host::report`] (atomics). Retries pick hosts with [`Cluster::choose_host_with`] and send
//! with [`Cluster::send_to`].

pub mod cluster;
pub mod cluster_manager;
mod discovery;
pub mod health_check;
pub mod host;
pub mod load_balancer;
pub mod outlier;
mod pool;
mod tls;

pub use cluster::{CircuitBreakerThresholds, Cluster, ClusterStats, RetryGuard, RetryStats};
pub use cluster_manager::ClusterManager;
pub use host::{health_flag, Host, HostSet, HostStats, Outcome};
pub use pool::bind_worker_thread;

/// What the router knows that load balancing needs.
#[derive(Debug, Default, Clone)]
pub struct LbContext {
    /// Hash of the request's hash-policy key (RING_HASH / MAGLEV); `None` → random host.
    pub hash: Option<u64>,
    /// The downstream request is HTTP/2 (for `use_downstream_protocol_config`).
    pub downstream_http2: bool,
    /// Put the chosen host in the response's extensions ([`crate::stream_info::UpstreamHost`],
    /// for `%UPSTREAM_HOST%`); off unless something formats it.
    pub report_host: bool,
    /// The route timeout's end: a response body still streaming then fails with
    /// [`RouteTimeout`] (Envoy's route timeout covers the whole response).
    pub response_deadline: Option<tokio::time::Instant>,
    /// The idle timeout of a streaming response body: the route's (or the connection
    /// manager's `stream_idle_timeout`), or the retry policy's `per_try_idle_timeout` when
    /// shorter; with the counter the route's kind is charged to
    /// (`http.<prefix>.downstream_rq_idle_timeout`).
    pub response_idle: Option<ResponseIdle>,
}

/// See [`LbContext::response_idle`].
#[derive(Debug, Clone)]
pub struct ResponseIdle {
    pub after: std::time::Duration,
    /// `per_try_idle_timeout` (else the route's idle timeout).
    pub per_try: bool,
    pub stream_counter: Option<crate::stats::Counter>,
}

/// The error of a response body that stayed idle past the route's idle timeout (`SI`,
/// `stream_idle_timeout`).
#[derive(Debug)]
pub struct StreamIdleTimeout;

impl std::fmt::Display for StreamIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for StreamIdleTimeout {}

/// The error of a response body that stayed idle past `per_try_idle_timeout` (`UT`,
/// `upstream_per_try_idle_timeout`).
#[derive(Debug)]
pub struct PerTryIdleTimeout;

impl std::fmt::Display for PerTryIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream per try idle timeout")
    }
}

impl std::error::Error for PerTryIdleTimeout {}

/// The error of a response body cut by the route timeout (`UT`, `response_timeout`).
#[derive(Debug)]
pub struct RouteTimeout;

impl std::fmt::Display for RouteTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream request timeout")
    }
}

impl std::error::Error for RouteTimeout {}

/// Why a request could not get a response from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No routable host (`503 no healthy upstream`).
    NoHealthyUpstream,
    /// A circuit breaker is open (`503 … reset reason: overflow`, `x-envoy-overloaded: true`).
    Overflow,
    /// The connection could not be established (refused, unreachable, TLS handshake failed).
    ConnectionFailure { transport_reason: Option<String> },
    /// `connect_timeout` expired.
    ConnectTimeout,
    /// The upstream closed or reset the connection before the response headers.
    ConnectionTermination,
    /// An HTTP/2 upstream reset the stream (`RST_STREAM`) before the response headers;
    /// `refused`: with `REFUSED_STREAM` (the request was not processed).
    RemoteReset { refused: bool },
    /// The upstream spoke something that is not the expected HTTP.
    ProtocolError,
}

impl UpstreamFailure {
    /// The reset reason Envoy writes in `upstream connect error or disconnect/reset before
    /// headers. reset reason: <reason>`; empty for [`UpstreamFailure::NoHealthyUpstream`].
    pub fn reset_reason(&self) -> &'static str {
        match self {
            UpstreamFailure::NoHealthyUpstream => "",
            UpstreamFailure::Overflow => "overflow",
            UpstreamFailure::ConnectionFailure { .. } => "remote connection failure",
            UpstreamFailure::ConnectTimeout => "connection timeout",
            UpstreamFailure::ConnectionTermination => "connection termination",
            UpstreamFailure::RemoteReset { refused: true } => "remote refused stream reset",
            UpstreamFailure::RemoteReset { refused: false } => "remote reset",
            UpstreamFailure::ProtocolError => "protocol error",
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamFailure::NoHealthyUpstream => f.write_str("no healthy upstream"),
            UpstreamFailure::ConnectionFailure { transport_reason: Some(r) } => {
                write!(f, "{}, transport failure reason: {r}", self.reset_reason())
            }
            _ => f.write_str(self.reset_reason()),
        }
    }
}

impl std::error::Error for UpstreamFailure {}
