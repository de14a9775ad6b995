//! `envoy.extensions.filters.network.http_connection_manager.v3` and the HTTP filters sluice runs.

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLog;
use crate::core::{
    CommonHttpProtocolOptions, Duration, Http1ProtocolOptions, Http2ProtocolOptions,
};
use crate::de::{typed_enum, NotSupported};
use crate::ext_authz::ExtAuthz;
use crate::format::LocalReplyConfig;
use crate::route::RouteConfiguration;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    #[serde(default)]
    pub codec_type: CodecType,
    pub stat_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<RouteConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoped_routes: Option<NotSupported>,
    #[serde(default)]
    pub http_filters: Vec<HttpFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default)]
    pub server_header_transformation: ServerHeaderTransformation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_remote_address: Option<bool>,
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    #[serde(default)]
    pub skip_xff_append: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_request_id: Option<bool>,
    #[serde(default)]
    pub preserve_external_request_id: bool,
    #[serde(default)]
    pub always_set_request_id_in_response: bool,
    /// Default 60 (KiB), at most 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_kb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed_close_timeout: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<bool>,
    #[serde(default)]
    pub merge_slashes: bool,
    #[serde(default)]
    pub strip_any_host_port: bool,
    #[serde(default)]
    pub strip_matching_host_port: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_user_agent: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_100_continue: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_address_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_reply_config: Option<LocalReplyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_cert_details: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_with_escaped_slashes_action: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_ip_detection_extensions: Option<NotSupported>,
}

impl HttpConnectionManager {
    /// Envoy's default is 60 KiB.
    pub fn max_request_headers_bytes(&self) -> usize {
        self.max_request_headers_kb.unwrap_or(60) as usize * 1024
    }
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or("envoy")
    }
    pub fn use_remote_address(&self) -> bool {
        self.use_remote_address.unwrap_or(false)
    }
    pub fn generate_request_id(&self) -> bool {
        self.generate_request_id.unwrap_or(true)
    }
    pub fn accept_http_10(&self) -> bool {
        self.http_protocol_options
            .as_ref()
            .is_some_and(|o| o.accept_http_10)
    }
    /// Default 5 minutes; zero disables.
    pub fn stream_idle_timeout(&self) -> Option<std::time::Duration> {
        let d = self
            .stream_idle_timeout
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(300));
        (!d.is_zero()).then_some(d)
    }
    /// Whether an `Upgrade: <kind>` request is allowed by `upgrade_configs`.
    pub fn upgrade_enabled(&self, kind: &str) -> bool {
        self.upgrade_configs
            .iter()
            .any(|u| u.upgrade_type.eq_ignore_ascii_case(kind) && u.enabled.unwrap_or(true))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodecType {
    #[default]
    Auto,
    Http1,
    Http2,
    Http3,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerHeaderTransformation {
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<NotSupported>,
}

/// One entry of `http_filters`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilter {
    pub name: String,
    /// Optional for well-known names (Envoy looks the filter up by name then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<HttpFilterConfig>,
    #[serde(default)]
    pub is_optional: bool,
    #[serde(default)]
    pub disabled: bool,
}

impl HttpFilter {
    /// The filter's config: its `typed_config`, or the default config of a well-known name.
    pub fn config(&self) -> Option<HttpFilterConfig> {
        match (&self.typed_config, self.name.as_str()) {
            (Some(c), _) => Some(c.clone()),
            (None, "envoy.filters.http.router" | "envoy.router") => {
                Some(HttpFilterConfig::Router(Router::default()))
            }
            _ => None,
        }
    }
}

typed_enum! {
    pub enum HttpFilterConfig {
        Router(Router) = "envoy.extensions.filters.http.router.v3.Router",
        ExtAuthz(Box<ExtAuthz>) = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        HealthCheck(Box<crate::health_check::HealthCheckFilter>) = "envoy.extensions.filters.http.health_check.v3.HealthCheck",
    }
}

/// `envoy.extensions.filters.http.router.v3.Router`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_stats: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_child_span: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_envoy_headers: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_check_headers: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_expected_rq_timeout: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_grpc_request_failure_code_stats: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_log: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_http_filters: Option<NotSupported>,
}
