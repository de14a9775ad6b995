//! `envoy.extensions.filters.http.ext_authz.v3`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::{Duration, HeaderValue, ListStringMatcher};
use crate::de::NotSupported;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<GrpcService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_service: Option<HttpService>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_api_version: Option<ApiVersion>,
    #[serde(default)]
    pub failure_mode_allow: bool,
    #[serde(default)]
    pub failure_mode_allow_header_add: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_request_body: Option<BufferSettings>,
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_on_error: Option<HttpStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<ListStringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disallowed_headers: Option<ListStringMatcher>,
    #[serde(default)]
    pub include_peer_certificate: bool,
    #[serde(default)]
    pub include_tls_session: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_context_namespaces: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_cluster_response_stats: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_raw_headers: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_mutations: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enabled: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enabled_metadata: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_at_disable: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_header_mutation_rules: Option<NotSupported>,
}

impl ExtAuthz {
    /// HTTP status on error; Envoy's default is 403.
    pub fn status_on_error(&self) -> u16 {
        self.status_on_error
            .as_ref()
            .map(|s| s.code as u16)
            .unwrap_or(403)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiVersion {
    Auto,
    V2,
    V3,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatus {
    pub code: u32,
}

/// `envoy.config.core.v3.GrpcService`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_grpc: Option<EnvoyGrpc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_grpc: Option<NotSupported>,
    /// Default 200 ms for ext_authz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub initial_metadata: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    pub cluster_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<NotSupported>,
}

/// The raw-HTTP authorization service.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpService {
    pub server_uri: HttpUri,
    #[serde(default)]
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_request: Option<AuthorizationRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response: Option<AuthorizationResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<NotSupported>,
}

/// `envoy.config.core.v3.HttpUri`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUri {
    pub uri: String,
    pub cluster: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<ListStringMatcher>,
    #[serde(default)]
    pub headers_to_add: Vec<HeaderValue>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_upstream_headers: Option<ListStringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_upstream_headers_to_append: Option<ListStringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_headers: Option<ListStringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_client_headers_on_success: Option<ListStringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata_from_headers: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSettings {
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// `ExtAuthzPerRoute`: exactly one of `disabled` / `check_settings`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzPerRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_settings: Option<CheckSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
    #[serde(default)]
    pub disable_request_body_buffering: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_request_body: Option<BufferSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_service: Option<NotSupported>,
}
