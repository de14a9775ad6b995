//! `envoy.config.listener.v3`.

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLog;
use crate::core::{Address, Duration};
use crate::de::{typed_enum, NotSupported};
use crate::hcm::HttpConnectionManager;
use crate::tls::{DownstreamTlsContext, UpstreamTlsContext};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    #[serde(default)]
    pub listener_filters: Vec<ListenerFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_connection_buffer_limit_bytes: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_reuse_port: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_direction: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_balance_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_filters_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_options: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_listener_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_addresses: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain_match: Option<FilterChainMatch>,
    #[serde(default)]
    pub filters: Vec<NetworkFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket_connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_protocols: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_ranges: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_ranges: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_source_prefix_ranges: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<NotSupported>,
}

/// A network filter; sluice runs the HTTP connection manager.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFilter {
    pub name: String,
    pub typed_config: NetworkFilterConfig,
}

typed_enum! {
    pub enum NetworkFilterConfig {
        HttpConnectionManager(Box<HttpConnectionManager>) = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    }
}

/// Listener filters: the TLS inspector is accepted (sluice always inspects the ClientHello when a
/// chain needs it); others are errors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFilter {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<ListenerFilterConfig>,
}

typed_enum! {
    pub enum ListenerFilterConfig {
        TlsInspector(Empty) = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    }
}

/// A message sluice accepts with no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocket {
    pub name: String,
    pub typed_config: TransportSocketConfig,
}

typed_enum! {
    pub enum TransportSocketConfig {
        DownstreamTls(Box<DownstreamTlsContext>) = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        UpstreamTls(Box<UpstreamTlsContext>) = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        RawBuffer(Empty) = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    }
}
