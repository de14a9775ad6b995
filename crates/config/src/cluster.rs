//! `envoy.config.cluster.v3` and `envoy.config.endpoint.v3`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bootstrap::DnsResolverConfig;
use crate::core::{
    Address, CommonHttpProtocolOptions, Duration, Http1ProtocolOptions, Http2ProtocolOptions,
    Locality, Metadata, Percent, TypedExtensionConfig,
};
use crate::de::{typed_enum, NotSupported};
use crate::health_check::HealthCheck;
use crate::listener::TransportSocket;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_stat_name: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: DiscoveryType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_type: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eds_cluster_config: Option<NotSupported>,
    /// Default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection_buffer_limit_bytes: Option<NotSupported>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_assignment: Option<ClusterLoadAssignment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    /// Deprecated form of `common_http_protocol_options.max_requests_per_connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default)]
    pub typed_extension_protocol_options: BTreeMap<String, ProtocolOptions>,
    /// Deprecated form of `typed_extension_protocol_options` … `http2_protocol_options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    /// Default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_failure_refresh_rate: Option<RefreshRate>,
    #[serde(default)]
    pub respect_dns_ttl: bool,
    #[serde(default)]
    pub dns_lookup_family: DnsLookupFamily,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolvers: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_tcp_for_dns_lookups: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_dns_resolver_config: Option<TypedExtensionConfig<DnsResolverConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket_matches: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_lb_config: Option<MaglevLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request_lb_config: Option<LeastRequestLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin_lb_config: Option<RoundRobinLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_lb_config: Option<CommonLbConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_policy: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connection_options: Option<UpstreamConnectionOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_bind_config: Option<NotSupported>,
    #[serde(default)]
    pub close_connections_on_host_health_failure: bool,
    #[serde(default)]
    pub ignore_health_on_host_removal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl Cluster {
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.connect_timeout
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(5))
    }
    pub fn dns_refresh_rate(&self) -> std::time::Duration {
        self.dns_refresh_rate
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(5))
    }
    /// The name used in stats (`alt_stat_name` or `name`).
    pub fn stat_name(&self) -> &str {
        self.alt_stat_name.as_deref().unwrap_or(&self.name)
    }
    /// The upstream HTTP protocol options, from `typed_extension_protocol_options` if present.
    pub fn upstream_http_options(&self) -> Option<&UpstreamHttpProtocolOptions> {
        self.typed_extension_protocol_options
            .values()
            .map(|o| match o {
                ProtocolOptions::Http(h) => h.as_ref(),
            })
            .next()
    }
    /// Whether requests to this cluster use HTTP/2 (explicit config, or the deprecated field).
    pub fn http2(&self) -> bool {
        self.http2_protocol_options.is_some()
            || self
                .upstream_http_options()
                .and_then(|o| o.explicit_http_config.as_ref())
                .is_some_and(|e| e.http2_protocol_options.is_some())
    }
    /// Whether the upstream protocol follows the downstream one.
    pub fn use_downstream_protocol(&self) -> bool {
        self.upstream_http_options()
            .is_some_and(|o| o.use_downstream_protocol_config.is_some())
    }
}

/// `envoy.config.cluster.v3.OutlierDetection`. Unset numbers take Envoy's defaults (see
/// `sluice_proxy::upstream::outlier`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_success_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_stdev_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_local_origin_success_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage_local_origin: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_active_health_check_uneject_host: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitors: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_eject_one_host: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_degraded_hosts: Option<NotSupported>,
}

/// `envoy.config.cluster.v3.UpstreamConnectionOptions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConnectionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Refused by the validator when `true`.
    #[serde(default)]
    pub set_local_interface_name_on_upstream_connections: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub happy_eyeballs_config: Option<NotSupported>,
}

/// `envoy.config.core.v3.TcpKeepalive`: unset values keep the OS's; any of them `0` disables
/// keepalive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_probes: Option<u32>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<u32>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<u32>,
}

/// `envoy.config.cluster.v3.Cluster.CommonLbConfig`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonLbConfig {
    /// Default 50 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_config: Option<NotSupported>,
    /// Within a priority level, pick a locality by its `load_balancing_weight` (scaled by its
    /// availability), then a host in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_weighted_lb_config: Option<crate::listener::Empty>,
    /// Health-only host updates within this window reach the load balancer together at its end
    /// (default 1 s; 0 disables merging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_merge_window: Option<Duration>,
    /// New hosts stay out of the load balancer (`/pending_active_hc`) until their first check.
    #[serde(default)]
    pub ignore_new_hosts_until_first_hc: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_connections_on_host_set_change: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hashing_lb_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_host_status: Option<NotSupported>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryType {
    #[default]
    Static,
    StrictDns,
    LogicalDns,
    Eds,
    OriginalDst,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
    ClusterProvided,
    LoadBalancingPolicyConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DnsLookupFamily {
    /// IPv6 first, IPv4 if there is no AAAA answer.
    #[default]
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRate {
    pub base_interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default)]
    pub thresholds: Vec<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_thresholds: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default)]
    pub priority: RoutingPriority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_remaining: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// `envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget`: when set, the concurrent
/// retries may reach `budget_percent` of the active and pending requests, at least
/// `min_retry_concurrency` (`max_retries` is then not used).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Default 20 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<Percent>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_interval: Option<NotSupported>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RoutingPriority {
    #[default]
    Default,
    High,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashLbConfig {
    /// Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
    /// Default 8 M.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_ring_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<RingHashFunction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RingHashFunction {
    XxHash,
    #[serde(rename = "MURMUR_HASH_2")]
    MurmurHash2,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevLbConfig {
    /// Default 65537; must be prime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestLbConfig {
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_config: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRobinLbConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_config: Option<NotSupported>,
}

typed_enum! {
    pub enum ProtocolOptions {
        Http(Box<UpstreamHttpProtocolOptions>) = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    }
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttpProtocolOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_http_protocol_options: Option<UpstreamHttpOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_http_config: Option<ExplicitHttpConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_downstream_protocol_config: Option<UseDownstreamHttpConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_filters: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttpOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_sni: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_san_validation: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_auto_sni_header: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitHttpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http3_protocol_options: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UseDownstreamHttpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http3_protocol_options: Option<NotSupported>,
}

/// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    #[serde(default)]
    pub cluster_name: String,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_endpoints: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<LoadAssignmentPolicy>,
}

/// `envoy.config.endpoint.v3.ClusterLoadAssignment.Policy`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAssignmentPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_overloads: Vec<NotSupported>,
    /// Percent; default 140.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_stale_after: Option<NotSupported>,
    /// A priority level's health counts host weights instead of hosts.
    #[serde(default)]
    pub weighted_priority_health: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_name: Option<NotSupported>,
    #[serde(default)]
    pub health_status: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
}

impl LbEndpoint {
    pub fn weight(&self) -> u32 {
        self.load_balancing_weight.unwrap_or(1).max(1)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_addresses: Option<NotSupported>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    /// Envoy routes to UNKNOWN, HEALTHY and DEGRADED hosts.
    pub fn routable(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy | Self::Degraded)
    }
}
