//! The record of one request, Envoy's `StreamInfo`: what the substitution formatter, access logs,
//! local replies and tracing read about a request once it is (or while it is) being handled.
//!
//! The connection manager creates one per request and fills it as the request moves along
//! (route, upstream host, response code and flags, byte counts, timings). It is a plain struct
//! owned by the request: nothing here is shared between requests or locked.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Version;

use crate::filters::ConnectionInfo;

/// Envoy's response flags (`%RESPONSE_FLAGS%`), one bit each. [`ResponseFlags::short_names`]
/// lists the set ones in Envoy's order with Envoy's short names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! response_flags {
    ($($(#[$m:meta])* $name:ident = $bit:expr, $short:literal, $long:literal;)+) => {
        impl ResponseFlags {
            $($(#[$m])* pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)+
            /// Every flag with its short and long name, in Envoy's order.
            pub const ALL: &'static [(ResponseFlags, &'static str, &'static str)] =
                &[$((ResponseFlags::$name, $short, $long)),+];
        }
    };
}

response_flags! {
    /// `LH`: the local service failed its health check.
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH", "FailedLocalHealthCheck";
    /// `UH`: no healthy upstream host.
    NO_HEALTHY_UPSTREAM = 1, "UH", "NoHealthyUpstream";
    /// `UT`: the upstream request timed out.
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT", "UpstreamRequestTimeout";
    /// `LR`: the stream was reset locally.
    LOCAL_RESET = 3, "LR", "LocalReset";
    /// `UR`: the upstream reset the stream.
    UPSTREAM_REMOTE_RESET = 4, "UR", "UpstreamRemoteReset";
    /// `UF`: the upstream connection failed.
    UPSTREAM_CONNECTION_FAILURE = 5, "UF", "UpstreamConnectionFailure";
    /// `UC`: the upstream connection was terminated.
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC", "UpstreamConnectionTermination";
    /// `UO`: upstream overflow (circuit breaker).
    UPSTREAM_OVERFLOW = 7, "UO", "UpstreamOverflow";
    /// `NR`: no route.
    NO_ROUTE_FOUND = 8, "NR", "NoRouteFound";
    /// `DI`: delayed by fault injection.
    DELAY_INJECTED = 9, "DI", "DelayInjected";
    /// `FI`: aborted by fault injection.
    FAULT_INJECTED = 10, "FI", "FaultInjected";
    /// `RL`: rate limited.
    RATE_LIMITED = 11, "RL", "RateLimited";
    /// `UAEX`: denied by the external authorization service.
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX", "UnauthorizedExternalService";
    /// `RLSE`: the rate limit service failed.
    RATE_LIMIT_SERVICE_ERROR = 13, "RLSE", "RateLimitServiceError";
    /// `DC`: the downstream connection was terminated.
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC", "DownstreamConnectionTermination";
    /// `URX`: the retry limit (or the connect attempt limit) was reached.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX", "UpstreamRetryLimitExceeded";
    /// `SI`: the stream idle timeout fired.
    STREAM_IDLE_TIMEOUT = 16, "SI", "StreamIdleTimeout";
    /// `IH`: invalid `x-envoy-*` request headers.
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH", "InvalidEnvoyRequestHeaders";
    /// `DPE`: downstream protocol error.
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE", "DownstreamProtocolError";
    /// `UMSDR`: the upstream max stream duration was reached.
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR", "UpstreamMaxStreamDurationReached";
    /// `RFCF`: served from cache failed.
    RESPONSE_FROM_CACHE_FILTER = 20, "RFCF", "ResponseFromCacheFilter";
    /// `NFCF`: no filter config found.
    NO_FILTER_CONFIG_FOUND = 21, "NFCF", "NoFilterConfigFound";
    /// `DT`: the request or connection exceeded its duration.
    DURATION_TIMEOUT = 22, "DT", "DurationTimeout";
    /// `UPE`: upstream protocol error.
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE", "UpstreamProtocolError";
    /// `NC`: no cluster found for the route.
    NO_CLUSTER_FOUND = 24, "NC", "NoClusterFound";
    /// `OM`: overload manager.
    OVERLOAD_MANAGER = 25, "OM", "OverloadManagerTerminated";
    /// `DF`: DNS resolution failed.
    DNS_RESOLUTION_FAILURE = 26, "DF", "DnsResolutionFailed";
    /// `DO`: drop overload.
    DROP_OVERLOAD = 27, "DO", "DropOverload";
    /// `DR`: downstream remote reset.
    DOWNSTREAM_REMOTE_RESET = 28, "DR", "DownstreamRemoteReset";
    /// `UDO`: unconditional drop overload.
    UNCONDITIONAL_DROP_OVERLOAD = 29, "UDO", "UnconditionalDropOverload";
}

impl ResponseFlags {
    pub const fn empty() -> Self {
        ResponseFlags(0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn intersects(self, other: ResponseFlags) -> bool {
        self.0 & other.0 != 0
    }
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    /// The short names of the set flags, in Envoy's order.
    pub fn short_names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().filter(move |(f, _, _)| self.intersects(*f)).map(|(_, s, _)| *s)
    }
    /// The long names of the set flags, in Envoy's order.
    pub fn long_names(self) -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().filter(move |(f, _, _)| self.intersects(*f)).map(|(_, _, l)| *l)
    }
    /// A flag by its short or long name (access-log `response_flag_filter`).
    pub fn from_name(name: &str) -> Option<ResponseFlags> {
        Self::ALL.iter().find(|(_, s, l)| *s == name || *l == name).map(|(f, _, _)| *f)
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | rhs.0)
    }
}

/// What the upstream side of a request looked like.
#[derive(Debug, Clone, Default)]
pub struct UpstreamInfo {
    /// The chosen host's address (`%UPSTREAM_HOST%`).
    pub host: Option<SocketAddr>,
    /// The chosen host's name (STRICT_DNS name or endpoint `hostname`).
    pub hostname: Option<Arc<str>>,
    /// `%UPSTREAM_CLUSTER%` (the cluster's `alt_stat_name` or name).
    pub cluster: Option<Arc<str>>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub local_address: Option<SocketAddr>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub transport_failure_reason: Option<String>,
    /// The protocol of the upstream response (`%UPSTREAM_PROTOCOL%`).
    pub protocol: Option<Version>,
}

/// The record of one request.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Envoy's stream id (also ext_authz's `http.id`).
    pub stream_id: u64,
    /// Wall-clock start (`%START_TIME%`).
    pub start_time: SystemTime,
    /// Monotonic start; the durations below are measured from it.
    pub start: Instant,
    /// The downstream protocol (`%PROTOCOL%`).
    pub protocol: Version,
    /// The downstream connection (addresses, TLS, connection id).
    pub conn: Arc<ConnectionInfo>,
    /// When the last byte of the request was received (`%REQUEST_DURATION%`).
    pub last_downstream_rx: Option<Duration>,
    /// When the first byte went upstream (`%REQUEST_TX_DURATION%`).
    pub first_upstream_tx: Option<Duration>,
    /// When the first byte of the upstream response arrived (`%RESPONSE_DURATION%`).
    pub first_upstream_rx: Option<Duration>,
    /// When the last byte went downstream (`%DURATION%`).
    pub last_downstream_tx: Option<Duration>,
    /// `%RESPONSE_CODE%` (`None` until a response is sent: Envoy logs 0).
    pub response_code: Option<u16>,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`, `route_not_found`.
    pub response_code_details: Option<Cow<'static, str>>,
    /// `%RESPONSE_FLAGS%`.
    pub response_flags: ResponseFlags,
    /// Flags set before the others: Envoy prints flags in the order they were set, and a retry
    /// verdict (`URX`, `UO`) comes before the failure it ends with (`URX,UF`).
    pub early_flags: ResponseFlags,
    /// Request body bytes received (`%BYTES_RECEIVED%`).
    pub bytes_received: u64,
    /// Response body bytes sent (`%BYTES_SENT%`).
    pub bytes_sent: u64,
    pub upstream: UpstreamInfo,
    /// The selected route's name (`%ROUTE_NAME%`).
    pub route_name: Option<Arc<str>>,
    /// The selected virtual host's name (`%VIRTUAL_CLUSTER_NAME%` is not this; kept for logs).
    pub virtual_host_name: Option<Arc<str>>,
    /// Filter metadata by namespace (`%DYNAMIC_METADATA(ns:key)%`), e.g. ext_authz's.
    pub dynamic_metadata: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// Upstream attempts made (`x-envoy-attempt-count`, `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`).
    pub attempt_count: u32,
    /// The request was answered by the health-check filter.
    pub health_check: bool,
    /// The client address the connection manager trusts when it is not the peer (from
    /// `x-forwarded-for`): `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub downstream_remote: Option<SocketAddr>,
    /// A connection-level record from before any protocol was chosen (a listener access log of
    /// a refused connection): `%PROTOCOL%` is `-`.
    pub protocol_unset: bool,
}

/// The upstream host that served a response, as a response extension set by the upstream
/// layer (`%UPSTREAM_HOST%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamHost(pub SocketAddr);

/// The local address of the upstream connection that carried a response, as a response
/// extension set by the upstream layer (`%UPSTREAM_LOCAL_ADDRESS%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLocalAddress(pub SocketAddr);

impl StreamInfo {
    pub fn new(stream_id: u64, protocol: Version, conn: Arc<ConnectionInfo>) -> StreamInfo {
        Self::starting(stream_id, protocol, conn, Instant::now())
    }

    /// A record for a request that started at `start` (now, on the wall clock).
    pub fn starting(stream_id: u64, protocol: Version, conn: Arc<ConnectionInfo>, start: Instant) -> StreamInfo {
        StreamInfo {
            stream_id,
            start_time: SystemTime::now(),
            start,
            protocol,
            conn,
            last_downstream_rx: None,
            first_upstream_tx: None,
            first_upstream_rx: None,
            last_downstream_tx: None,
            response_code: None,
            response_code_details: None,
            response_flags: ResponseFlags::empty(),
            early_flags: ResponseFlags::empty(),
            bytes_received: 0,
            bytes_sent: 0,
            upstream: UpstreamInfo::default(),
            route_name: None,
            virtual_host_name: None,
            dynamic_metadata: None,
            attempt_count: 0,
            health_check: false,
            protocol_unset: false,
            downstream_remote: None,
        }
    }

    /// Set a response flag.
    pub fn set_flag(&mut self, flag: ResponseFlags) {
        self.response_flags.insert(flag);
    }

    /// Set a flag that prints before the flags set later (see [`StreamInfo::early_flags`]).
    pub fn set_early_flag(&mut self, flag: ResponseFlags) {
        self.response_flags.insert(flag);
        self.early_flags.insert(flag);
    }

    /// The set flags' names in Envoy's printing order: the early ones, then the rest.
    pub fn flag_names(&self, long: bool) -> Vec<&'static str> {
        let rest = ResponseFlags(self.response_flags.0 & !self.early_flags.0);
        let names = |f: ResponseFlags| -> Vec<&'static str> { if long { f.long_names().collect() } else { f.short_names().collect() } };
        let mut out = names(self.early_flags);
        out.extend(names(rest));
        out
    }

    /// The time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Envoy's protocol string: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    pub fn protocol_str(&self) -> &'static str {
        protocol_str(self.protocol)
    }

    /// Store a value under a dynamic-metadata namespace (merging into what is there).
    pub fn set_metadata(&mut self, namespace: &str, key: &str, value: serde_json::Value) {
        let map = self.dynamic_metadata.get_or_insert_with(Default::default);
        let ns = map.entry(namespace.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(fields) = ns {
            fields.insert(key.to_string(), value);
        }
    }
}

/// Envoy's protocol string for an HTTP version.
pub fn protocol_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoy_order() {
        let mut f = ResponseFlags::empty();
        f.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        f.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(f.short_names().collect::<Vec<_>>(), ["UF", "URX"]);
        assert_eq!(ResponseFlags::from_name("UAEX"), Some(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE));
        assert_eq!(ResponseFlags::from_name("NoRouteFound"), Some(ResponseFlags::NO_ROUTE_FOUND));
        assert!(ResponseFlags::empty().short_names().next().is_none());
    }
}
