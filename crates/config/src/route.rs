//! `envoy.config.route.v3`: route tables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::{DataSource, Duration, HeaderValueOption, Metadata, RegexMatcher, StringMatcher};
use crate::de::{typed_enum, NotSupported};
use crate::ext_authz::ExtAuthzPerRoute;

/// Per-filter configuration on a route, virtual host, route table or weighted cluster, keyed by
/// filter name.
pub type TypedPerFilterConfig = BTreeMap<String, PerFilterConfig>;

typed_enum! {
    pub enum PerFilterConfig {
        ExtAuthz(ExtAuthzPerRoute) = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_only_headers: Option<NotSupported>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub most_specific_header_mutations_wins: Option<NotSupported>,
    /// Default true for static route tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_clusters: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_direct_response_body_size_bytes: Option<u32>,
    #[serde(default)]
    pub typed_per_filter_config: TypedPerFilterConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhds: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_specifier_plugins: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<TlsRequirementType>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub typed_per_filter_config: TypedPerFilterConfig,
    #[serde(default)]
    pub include_request_attempt_count: bool,
    #[serde(default)]
    pub include_attempt_count_in_response: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_clusters: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_policy: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsRequirementType {
    None,
    ExternalOnly,
    All,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_action: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_forwarding_action: Option<NotSupported>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub typed_per_filter_config: TypedPerFilterConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decorator: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request_buffer_limit_bytes: Option<u32>,
}

/// The action of a route (exactly one of `route`, `redirect`, `direct_response`).
#[derive(Debug, Clone, Copy)]
pub enum RouteKind<'a> {
    Forward(&'a RouteAction),
    Redirect(&'a RedirectAction),
    DirectResponse(&'a DirectResponseAction),
}

impl Route {
    /// The route's action; `None` only for configs that failed validation.
    pub fn kind(&self) -> Option<RouteKind<'_>> {
        match (&self.route, &self.redirect, &self.direct_response) {
            (Some(r), None, None) => Some(RouteKind::Forward(r)),
            (None, Some(r), None) => Some(RouteKind::Redirect(r)),
            (None, None, Some(r)) => Some(RouteKind::DirectResponse(r)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_separated_prefix: Option<String>,
    /// Matches `CONNECT` requests (and only them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_matcher: Option<ConnectMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_match_policy: Option<NotSupported>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRouteMatchOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_context: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<NotSupported>,
}

/// The path part of a [`RouteMatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSpecifier<'a> {
    Prefix(&'a str),
    Path(&'a str),
    SafeRegex(&'a str),
    PathSeparatedPrefix(&'a str),
    Connect,
}

impl RouteMatch {
    /// The one path specifier; `None` when zero or several are set (a validation error).
    pub fn path_specifier(&self) -> Option<PathSpecifier<'_>> {
        let all = [
            self.prefix.as_deref().map(PathSpecifier::Prefix),
            self.path.as_deref().map(PathSpecifier::Path),
            self.safe_regex
                .as_ref()
                .map(|r| PathSpecifier::SafeRegex(r.regex.as_str())),
            self.path_separated_prefix
                .as_deref()
                .map(PathSpecifier::PathSeparatedPrefix),
            self.connect_matcher.as_ref().map(|_| PathSpecifier::Connect),
        ];
        let mut set = all.into_iter().flatten();
        let first = set.next()?;
        set.next().is_none().then_some(first)
    }
    pub fn case_sensitive(&self) -> bool {
        self.case_sensitive.unwrap_or(true)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRouteMatchOptions {}

/// `envoy.config.route.v3.RouteMatch.ConnectMatcher` (no fields).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectMatcher {}

/// `envoy.config.route.v3.RouteAction.UpgradeConfig`: allows (or, with `enabled: false`,
/// forbids) an upgrade type on one route, over the connection manager's `upgrade_configs`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgradeConfig {
    pub upgrade_type: String,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// For `CONNECT`: terminate it here and tunnel the payload as raw TCP to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_config: Option<ConnectConfig>,
}

/// `envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol_config: Option<NotSupported>,
    /// Forwarding POST payloads as raw TCP: refused at load when true.
    #[serde(default)]
    pub allow_post: bool,
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex_match: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_match: Option<Int64Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_match: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(default)]
    pub invert_match: bool,
    #[serde(default)]
    pub treat_missing_header_as_empty: bool,
}

/// `envoy.type.v3.Int64Range`: `[start, end)`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Int64Range {
    #[serde(default)]
    pub start: i64,
    #[serde(default)]
    pub end: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_specifier_plugin: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_not_found_response_code: Option<ClusterNotFoundResponseCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexMatchAndSubstitute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_rewrite_policy: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_host_rewrite: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_path_regex: Option<NotSupported>,
    #[serde(default)]
    pub append_x_forwarded_host: bool,
    /// Default 15 s; zero disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror_policies: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_match: Option<NotSupported>,
    #[serde(default)]
    pub upgrade_configs: Vec<RouteUpgradeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_policy: Option<NotSupported>,
}

impl RouteAction {
    /// Envoy's default route timeout is 15 s; `0s` disables it (`None`).
    pub fn timeout(&self) -> Option<std::time::Duration> {
        let d = self
            .timeout
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(15));
        (!d.is_zero()).then_some(d)
    }
}

/// `envoy.config.route.v3.RetryPolicy` (route or virtual host; the route's replaces the
/// virtual host's).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Comma-separated conditions (`5xx,reset,…`), as in `x-envoy-retry-on` /
    /// `x-envoy-retry-grpc-on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_priority: Option<NotSupported>,
    #[serde(default)]
    pub retry_host_predicate: Vec<RetryHostPredicate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_options_predicates: Option<NotSupported>,
    /// Default 1 (one pick, no re-pick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_retry_max_attempts: Option<i64>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_back_off: Option<RetryBackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_retry_back_off: Option<RateLimitedRetryBackOff>,
    #[serde(default)]
    pub retriable_headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub retriable_request_headers: Vec<HeaderMatcher>,
}

/// `envoy.config.route.v3.RetryPolicy.RateLimitedRetryBackOff`: the back-off a retriable
/// response asks for in its reset headers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitedRetryBackOff {
    #[serde(default)]
    pub reset_headers: Vec<ResetHeader>,
    /// Default 300 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// `envoy.config.route.v3.RetryPolicy.ResetHeader`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResetHeader {
    pub name: String,
    #[serde(default)]
    pub format: ResetHeaderFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResetHeaderFormat {
    #[default]
    Seconds,
    UnixTimestamp,
}

/// `envoy.config.route.v3.RetryPolicy.RetryBackOff`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    pub base_interval: Duration,
    /// Default 10 × `base_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// `envoy.config.route.v3.RetryPolicy.RetryHostPredicate`: sluice knows
/// `envoy.retry_host_predicates.previous_hosts`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryHostPredicate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<RetryHostPredicateConfig>,
}

typed_enum! {
    pub enum RetryHostPredicateConfig {
        PreviousHosts(PreviousHostsPredicate) = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    }
}

/// `envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousHostsPredicate {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterNotFoundResponseCode {
    ServiceUnavailable,
    NotFound,
    InternalServerError,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub clusters: Vec<ClusterWeight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_key_prefix: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_per_filter_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_match: Option<NotSupported>,
}

/// `envoy.type.matcher.v3.RegexMatchAndSubstitute`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatchAndSubstitute {
    pub pattern: RegexMatcher,
    #[serde(default)]
    pub substitution: String,
}

/// `envoy.config.route.v3.RouteAction.HashPolicy`: exactly one policy per entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HashHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_properties: Option<HashConnectionProperties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<HashQueryParameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<NotSupported>,
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashHeader {
    pub header_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashConnectionProperties {
    #[serde(default)]
    pub source_ip: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashQueryParameter {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexMatchAndSubstitute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<RedirectResponseCode>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectResponseCode {
    #[default]
    MovedPermanently,
    Found,
    SeeOther,
    TemporaryRedirect,
    PermanentRedirect,
}

impl RedirectResponseCode {
    pub fn status(self) -> u16 {
        match self {
            Self::MovedPermanently => 301,
            Self::Found => 302,
            Self::SeeOther => 303,
            Self::TemporaryRedirect => 307,
            Self::PermanentRedirect => 308,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
}
