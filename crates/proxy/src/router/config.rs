//! The compiled route table: virtual host selection, route matching and route actions, built
//! once from the validated config (the data path never sees YAML).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use sluice_config::core::{HeaderAppendAction, HeaderValueOption, StringMatcher, StringPattern};
use sluice_config::route as cfg;

use super::retry::RetryPolicy;
use crate::config_audit::{refused_at_load, without_effect};

use crate::formatter::Format;

/// A route table (`route_config`).
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    exact: HashMap<String, usize>,
    /// `*.suffix` / `*-suffix` domains, stored without the `*`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix.*` domains, stored without the `*`, longest first.
    prefixes: Vec<(String, usize)>,
    wildcard: Option<usize>,
    pub virtual_hosts: Vec<VirtualHost>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfigs,
    /// Some `*_headers_to_add` value of the table (any level) is formatted per request.
    pub formatted_headers: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Arc<Route>>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfigs,
    pub require_tls: Option<cfg::TlsRequirementType>,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on upstream requests.
    pub attempt_count_in_request: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on responses.
    pub attempt_count_in_response: bool,
}

#[derive(Debug)]
pub struct Route {
    pub name: Option<String>,
    matcher: RouteMatcher,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfigs,
}

/// Per-filter route configuration (`typed_per_filter_config`) that sluice understands.
#[derive(Debug, Default, Clone)]
pub struct PerFilterConfigs {
    pub ext_authz: Option<Arc<crate::filters::ext_authz::PerRoute>>,
}

impl PerFilterConfigs {
    fn build(map: &cfg::TypedPerFilterConfig) -> Self {
        let mut out = PerFilterConfigs::default();
        for value in map.values() {
            match value {
                cfg::PerFilterConfig::ExtAuthz(e) => out.ext_authz = Some(Arc::new(crate::filters::ext_authz::PerRoute::build(e))),
            }
        }
        out
    }
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Option<Bytes> },
}

#[derive(Debug)]
pub enum ClusterSpecifier {
    Name(Arc<str>),
    Header(HeaderName),
    /// (cluster, cumulative weight upper bound); total weight.
    Weighted(Vec<(Arc<str>, u64)>, u64),
}

#[derive(Debug)]
pub struct Forward {
    pub cluster: ClusterSpecifier,
    pub cluster_not_found_status: u16,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HeaderValue>,
    pub host_rewrite_header: Option<HeaderName>,
    pub append_x_forwarded_host: bool,
    pub timeout: Option<Duration>,
    /// The value of `x-envoy-expected-rq-timeout-ms`, precomputed.
    pub timeout_header: Option<HeaderValue>,
    pub idle_timeout: Option<Duration>,
    pub hash_policies: Vec<HashPolicy>,
    /// The header mutations of each weighted cluster (same order as the weighted list); they
    /// apply before the route's.
    pub weighted_headers: Vec<WeightedHeaders>,
    /// Route `upgrade_configs`, over the connection manager's.
    pub upgrades: Vec<RouteUpgrade>,
    /// The route's `retry_policy`, else its virtual host's.
    pub retry: Option<Arc<RetryPolicy>>,
    /// The most request body buffered for retries (`per_request_buffer_limit_bytes`, default
    /// 1 MiB); a larger body is sent once, without retries.
    pub buffer_limit: usize,
}

/// Envoy's default request buffer limit (the listener's `per_connection_buffer_limit_bytes`).
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// `request_headers_to_add` … of one weighted cluster.
#[derive(Debug, Default)]
pub struct WeightedHeaders {
    pub request: HeaderMutations,
    pub response: HeaderMutations,
}

/// One route `upgrade_configs` entry.
#[derive(Debug)]
pub struct RouteUpgrade {
    /// Lower-case upgrade type (`websocket`, `connect`, …).
    pub kind: String,
    pub enabled: bool,
    /// `connect_config`: a CONNECT is terminated here and its payload tunnelled over TCP.
    pub terminate_connect: bool,
}

#[derive(Debug)]
pub enum HashPolicy {
    Header { name: HeaderName, terminal: bool },
    Cookie { name: String, ttl: Option<Duration>, path: Option<String>, terminal: bool },
    SourceIp { terminal: bool },
    QueryParameter { name: String, terminal: bool },
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    SeparatedPrefix(String),
    Regex(Regex),
    /// `connect_matcher`: CONNECT requests only.
    Connect,
}

#[derive(Debug)]
struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    grpc: bool,
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
    Present(bool),
    Range(i64, i64),
}

#[derive(Debug)]
struct StrMatch {
    kind: ValueMatch,
    ignore_case: bool,
}

impl StrMatch {
    fn build(m: &StringMatcher) -> Result<Self, String> {
        let kind = match m.pattern().ok_or("string matcher needs exactly one pattern")? {
            StringPattern::Exact(s) => ValueMatch::Exact(s.to_string()),
            StringPattern::Prefix(s) => ValueMatch::Prefix(s.to_string()),
            StringPattern::Suffix(s) => ValueMatch::Suffix(s.to_string()),
            StringPattern::Contains(s) => ValueMatch::Contains(s.to_string()),
            StringPattern::Regex(r) => ValueMatch::Regex(full_regex(r)?),
        };
        Ok(StrMatch { kind, ignore_case: m.ignore_case })
    }

    fn matches(&self, value: &str) -> bool {
        let eq = |a: &str, b: &str| if self.ignore_case { a.eq_ignore_ascii_case(b) } else { a == b };
        match &self.kind {
            ValueMatch::Exact(s) => eq(value, s),
            ValueMatch::Prefix(s) => value.len() >= s.len() && value.is_char_boundary(s.len()) && eq(&value[..s.len()], s),
            ValueMatch::Suffix(s) => {
                value.len() >= s.len()
                    && value.is_char_boundary(value.len() - s.len())
                    && eq(&value[value.len() - s.len()..], s)
            }
            ValueMatch::Contains(s) => {
                if self.ignore_case {
                    value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    value.contains(s.as_str())
                }
            }
            ValueMatch::Regex(r) => r.is_match(value),
            ValueMatch::Present(p) => *p,
            ValueMatch::Range(start, end) => value.parse::<i64>().is_ok_and(|v| v >= *start && v < *end),
        }
    }
}

/// What a header matcher looks at: a header, or one of the request's pseudo-headers.
#[derive(Debug)]
enum HeaderKey {
    Header(HeaderName),
    Method,
    Authority,
    Path,
    Scheme,
}

/// The request as route matching sees it.
pub struct RouteRequest<'a> {
    /// The authority used for virtual-host selection (lower-case, port stripped as configured).
    pub host: &'a str,
    /// The `:authority` as the request carries it (header matchers on `:authority`).
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct HeaderMatcher {
    name: HeaderKey,
    matcher: StrMatch,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
struct QueryMatcher {
    name: String,
    matcher: Option<StrMatch>,
    /// `present_match: false` (without `string_match`): the parameter must be absent.
    absent: bool,
}

/// An RE2-style pattern that must match the whole input.
pub fn full_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())
}

/// A `*_headers_to_add` value: a literal, or a format evaluated per request (a value with an
/// operator: `%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x)%` …). A formatted value that comes out
/// empty leaves the header out, unless `keep_empty_value`.
#[derive(Debug, Clone)]
pub enum AddedValue {
    Literal(HeaderValue),
    Formatted { format: Arc<Format>, keep_empty: bool },
}

/// Compiled `*_headers_to_add` / `*_headers_to_remove`.
#[derive(Debug, Default, Clone)]
pub struct HeaderMutations {
    pub add: Vec<(HeaderName, AddedValue, HeaderAppendAction)>,
    pub remove: Vec<HeaderName>,
    /// Some value is formatted per request.
    formatted: bool,
}

/// Evaluates a formatted value against the headers being changed.
pub type FormatValue<'a> = &'a dyn Fn(&Format, &HeaderMap) -> Vec<u8>;

impl HeaderMutations {
    /// Compile; values with `%` operators are parsed as formats. Errors are (path below the
    /// `*_headers_to_add` field, message).
    pub fn build(add: &[HeaderValueOption], remove: &[String]) -> Result<Self, (String, String)> {
        let mut out = HeaderMutations::default();
        for (i, opt) in add.iter().enumerate() {
            let name = HeaderName::from_bytes(opt.header.key.to_ascii_lowercase().as_bytes())
                .map_err(|_| (format!("[{i}].header.key"), format!("invalid header name \"{}\"", opt.header.key)))?;
            // Envoy 1.40 adds `value` only: a `raw_value` alone is an empty value (left out unless
            // `keep_empty_value`), as observed.
            let raw = opt.header.value.as_str();
            let format = if raw.contains('%') {
                Some(Format::parse(raw).map_err(|e| (format!("[{i}].header.value"), e))?)
            } else {
                None
            };
            let value = match format {
                Some(f) if f.literal().is_none() => {
                    out.formatted = true;
                    AddedValue::Formatted { format: Arc::new(f), keep_empty: opt.keep_empty_value }
                }
                Some(f) => {
                    let lit = f.literal().unwrap_or_default();
                    let value = HeaderValue::from_bytes(lit)
                        .map_err(|_| (format!("[{i}].header.value"), format!("invalid header value \"{raw}\"")))?;
                    if value.is_empty() && !opt.keep_empty_value {
                        continue;
                    }
                    AddedValue::Literal(value)
                }
                None => {
                    let value = HeaderValue::from_str(raw)
                        .map_err(|_| (format!("[{i}].header.value"), format!("invalid header value \"{raw}\"")))?;
                    if value.is_empty() && !opt.keep_empty_value {
                        continue;
                    }
                    AddedValue::Literal(value)
                }
            };
            out.add.push((name, value, opt.action()));
        }
        for r in remove {
            let name = HeaderName::from_bytes(r.to_ascii_lowercase().as_bytes())
                .map_err(|_| (String::new(), format!("invalid header name \"{r}\"")))?;
            out.remove.push(name);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether some value needs the request's context to be formatted.
    pub fn is_formatted(&self) -> bool {
        self.formatted
    }

    /// Apply to a header map as Envoy's header parser does: removals first; then every value is
    /// decided (and formatted, by `fmt`) against the headers as they are; then overwrites are
    /// applied (old copies removed, the new value appended at the end), then appends, each group
    /// in config order. Removals keep the order of the remaining headers. `fmt` is only called
    /// for formatted values.
    pub fn apply(&self, headers: &mut HeaderMap, fmt: FormatValue<'_>) {
        if !self.remove.is_empty() {
            crate::http::headers::remove_ordered(headers, |n| self.remove.contains(n));
        }
        if self.add.is_empty() {
            return;
        }
        let mut overwrite: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        let mut append: Vec<(&HeaderName, HeaderValue)> = Vec::new();
        for (name, value, action) in &self.add {
            let value = match value {
                AddedValue::Literal(v) => v.clone(),
                AddedValue::Formatted { format, keep_empty } => {
                    let bytes = fmt(format, headers);
                    if bytes.is_empty() && !keep_empty {
                        continue;
                    }
                    match HeaderValue::from_bytes(&bytes) {
                        Ok(v) => v,
                        Err(_) => continue,
                    }
                }
            };
            match action {
                HeaderAppendAction::AppendIfExistsOrAdd => append.push((name, value)),
                HeaderAppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        append.push((name, value));
                    }
                }
                HeaderAppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        overwrite.push((name, value));
                    }
                }
                HeaderAppendAction::OverwriteIfExistsOrAdd => overwrite.push((name, value)),
            }
        }
        for (name, value) in overwrite {
            crate::http::headers::remove_ordered(headers, |n| n == name);
            headers.append(name.clone(), value);
        }
        for (name, value) in append {
            headers.append(name.clone(), value);
        }
    }
}

/// The result of routing one request.
#[derive(Debug, Clone)]
pub struct Selected {
    pub vhost: usize,
    pub route: Arc<Route>,
}

impl RouteTable {
    /// Compile a route table. Errors carry a path relative to the route config.
    pub fn build(rc: &cfg::RouteConfiguration) -> Result<RouteTable, (String, String)> {
        let cfg::RouteConfiguration {
            name,
            virtual_hosts,
            internal_only_headers,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            most_specific_header_mutations_wins,
            validate_clusters,
            max_direct_response_body_size_bytes,
            typed_per_filter_config,
            vhds,
            cluster_specifier_plugins,
        } = rc;
        for refused in [internal_only_headers, most_specific_header_mutations_wins, vhds, cluster_specifier_plugins] {
            refused_at_load(refused);
        }
        without_effect(validate_clusters, "applied at load by the validator (unknown clusters are refused)");
        without_effect(max_direct_response_body_size_bytes, "applied at load by the validator (direct-response bodies are bounded)");
        let mut table = RouteTable {
            name: name.clone().unwrap_or_default(),
            exact: HashMap::new(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            wildcard: None,
            virtual_hosts: Vec::with_capacity(virtual_hosts.len()),
            request_headers: HeaderMutations::build(request_headers_to_add, request_headers_to_remove)
                .map_err(|(p, e)| (format!("request_headers_to_add{p}"), e))?,
            response_headers: HeaderMutations::build(response_headers_to_add, response_headers_to_remove)
                .map_err(|(p, e)| (format!("response_headers_to_add{p}"), e))?,
            per_filter: PerFilterConfigs::build(typed_per_filter_config),
            formatted_headers: false,
        };
        for (vi, vh) in virtual_hosts.iter().enumerate() {
            let cfg::VirtualHost {
                name,
                domains,
                routes,
                require_tls,
                request_headers_to_add,
                request_headers_to_remove,
                response_headers_to_add,
                response_headers_to_remove,
                typed_per_filter_config,
                include_request_attempt_count,
                include_attempt_count_in_response,
                retry_policy,
                cors,
                rate_limits,
                virtual_clusters,
                hedge_policy,
                metadata,
            } = vh;
            for refused in [
                cors,
                rate_limits,
                virtual_clusters,
                hedge_policy,
            ] {
                refused_at_load(refused);
            }
            without_effect(metadata, "read only by features sluice refuses (%VIRTUAL_CLUSTER_NAME%, metadata matchers)");
            let vpath = format!("virtual_hosts[{vi}]");
            for domain in domains {
                let d = domain.to_ascii_lowercase();
                if d == "*" {
                    table.wildcard.get_or_insert(vi);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    table.suffixes.push((suffix.to_string(), vi));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    table.prefixes.push((prefix.to_string(), vi));
                } else {
                    table.exact.entry(d).or_insert(vi);
                }
            }
            let vh_retry = match retry_policy {
                Some(p) => Some(Arc::new(RetryPolicy::build(p).map_err(|(p, e)| (format!("{vpath}.retry_policy.{p}"), e))?)),
                None => None,
            };
            let mut built = Vec::with_capacity(routes.len());
            for (ri, r) in routes.iter().enumerate() {
                let rpath = format!("{vpath}.routes[{ri}]");
                let mut route = Route::build(r).map_err(|(p, e)| (join(&rpath, &p), e))?;
                if let Action::Forward(f) = &mut route.action {
                    if f.retry.is_none() {
                        f.retry = vh_retry.clone();
                    }
                    // A per-try timeout below the route timeout is what the upstream may expect.
                    if let Some(per_try) = f.retry.as_ref().and_then(|p| p.per_try_timeout) {
                        if f.timeout.is_none_or(|t| per_try < t) {
                            f.timeout_header = Some(HeaderValue::from(per_try.as_millis() as u64));
                        }
                    }
                }
                built.push(Arc::new(route));
            }
            table.virtual_hosts.push(VirtualHost {
                name: name.clone(),
                routes: built,
                request_headers: HeaderMutations::build(request_headers_to_add, request_headers_to_remove)
                    .map_err(|(p, e)| (format!("{vpath}.request_headers_to_add{p}"), e))?,
                response_headers: HeaderMutations::build(response_headers_to_add, response_headers_to_remove)
                    .map_err(|(p, e)| (format!("{vpath}.response_headers_to_add{p}"), e))?,
                per_filter: PerFilterConfigs::build(typed_per_filter_config),
                require_tls: *require_tls,
                attempt_count_in_request: *include_request_attempt_count,
                attempt_count_in_response: *include_attempt_count_in_response,
            });
        }
        table.formatted_headers = table.request_headers.is_formatted()
            || table.response_headers.is_formatted()
            || table.virtual_hosts.iter().any(|vh| {
                vh.request_headers.is_formatted()
                    || vh.response_headers.is_formatted()
                    || vh.routes.iter().any(|r| {
                        r.request_headers.is_formatted()
                            || r.response_headers.is_formatted()
                            || r.forward().is_some_and(|f| {
                                f.weighted_headers.iter().any(|w| w.request.is_formatted() || w.response.is_formatted())
                            })
                    })
            });
        // Longest wildcard wins; ties keep config order (stable sort).
        table.suffixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        table.prefixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(table)
    }

    /// Envoy's virtual host selection: exact, then `*.suffix` (longest), then `prefix.*`
    /// (longest), then `*`. `host` must already be lower-case.
    pub fn select_vhost(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        for (suffix, i) in &self.suffixes {
            // The wildcard never matches the empty string.
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(*i);
            }
        }
        self.wildcard
    }

    /// Route a GET over plain HTTP (tests and callers without a request at hand).
    pub fn route(&self, host: &str, path_and_query: &str, headers: &HeaderMap) -> Option<Selected> {
        self.route_request(&RouteRequest { host, authority: host, path_and_query, method: "GET", scheme: "http", headers })
    }

    /// Route a request: vhost by host, then the first matching route.
    pub fn route_request(&self, req: &RouteRequest<'_>) -> Option<Selected> {
        let vhost = self.select_vhost(req.host)?;
        let (path, query) = split_path_query(req.path_and_query);
        let route = self.virtual_hosts[vhost].routes.iter().find(|r| r.matcher.matches(path, query, req))?;
        Some(Selected { vhost, route: route.clone() })
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        format!("{a}.{b}")
    }
}

impl Route {
    fn build(r: &cfg::Route) -> Result<Route, (String, String)> {
        let cfg::Route {
            name,
            match_,
            route,
            redirect,
            direct_response,
            filter_action,
            non_forwarding_action,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            metadata,
            decorator,
            tracing,
            per_request_buffer_limit_bytes,
        } = r;
        for refused in [filter_action, non_forwarding_action, decorator, tracing] {
            refused_at_load(refused);
        }
        without_effect(metadata, "read only by features sluice refuses (%ROUTE_METADATA%, metadata matchers)");
        let cfg::RouteMatch {
            prefix,
            path,
            safe_regex,
            path_separated_prefix,
            connect_matcher,
            path_match_policy,
            case_sensitive,
            headers: header_matchers,
            query_parameters,
            grpc,
            runtime_fraction,
            tls_context,
            dynamic_metadata,
            filter_state,
        } = match_;
        for refused in [path_match_policy, runtime_fraction, tls_context, dynamic_metadata, filter_state] {
            refused_at_load(refused);
        }
        // Default true.
        let case_sensitive = case_sensitive.unwrap_or(true);
        let path = match (prefix, path, safe_regex, path_separated_prefix, connect_matcher) {
            (Some(p), None, None, None, None) => PathMatch::Prefix(p.to_string()),
            (None, Some(p), None, None, None) => PathMatch::Exact(p.to_string()),
            (None, None, None, Some(p), None) => PathMatch::SeparatedPrefix(p.to_string()),
            (None, None, Some(re), None, None) => {
                let re = if case_sensitive { re.regex.to_string() } else { format!("(?i){}", re.regex) };
                PathMatch::Regex(full_regex(&re).map_err(|e| ("match.safe_regex".to_string(), e))?)
            }
            (None, None, None, None, Some(cfg::ConnectMatcher {})) => PathMatch::Connect,
            _ => return Err(("match".to_string(), "exactly one path specifier required".to_string())),
        };
        let mut headers = Vec::new();
        for (i, h) in header_matchers.iter().enumerate() {
            headers.push(header_matcher(h).map_err(|e| (format!("match.headers[{i}]"), e))?);
        }
        let mut query = Vec::new();
        for (i, q) in query_parameters.iter().enumerate() {
            let cfg::QueryParameterMatcher { name, string_match, present_match } = q;
            let matcher = match string_match {
                Some(s) => Some(StrMatch::build(s).map_err(|e| (format!("match.query_parameters[{i}]"), e))?),
                None => None,
            };
            // Without `string_match`, `present_match: false` asks for the parameter's absence
            // (as Envoy 1.40 matches it); `true` or nothing asks for its presence.
            let absent = matcher.is_none() && *present_match == Some(false);
            query.push(QueryMatcher { name: name.clone(), matcher, absent });
        }
        let grpc = match grpc {
            Some(cfg::GrpcRouteMatchOptions {}) => true,
            None => false,
        };
        let matcher = RouteMatcher { path, case_sensitive, headers, query, grpc };
        let action = match (route, redirect, direct_response) {
            (Some(a), None, None) => {
                let mut f = Forward::build(a).map_err(|(p, e)| (join("route", &p), e))?;
                // The body kept for a retry's replay.
                f.buffer_limit = per_request_buffer_limit_bytes.map_or(DEFAULT_BUFFER_LIMIT, |b| b as usize);
                Action::Forward(f)
            }
            (None, Some(a), None) => Action::Redirect(Redirect::build(a).map_err(|(p, e)| (join("redirect", &p), e))?),
            (None, None, Some(cfg::DirectResponseAction { status, body })) => {
                let body = match body {
                    Some(ds) => Some(Bytes::from(crate::data_source::load(ds).map_err(|e| ("direct_response.body".to_string(), e))?)),
                    None => None,
                };
                Action::Direct { status: *status as u16, body }
            }
            _ => return Err(("".to_string(), "exactly one of route, redirect, direct_response required".to_string())),
        };
        Ok(Route {
            name: name.clone(),
            matcher,
            action,
            request_headers: HeaderMutations::build(request_headers_to_add, request_headers_to_remove)
                .map_err(|(p, e)| (format!("request_headers_to_add{p}"), e))?,
            response_headers: HeaderMutations::build(response_headers_to_add, response_headers_to_remove)
                .map_err(|(p, e)| (format!("response_headers_to_add{p}"), e))?,
            per_filter: PerFilterConfigs::build(typed_per_filter_config),
        })
    }

    /// How much of `path` the route's path matcher consumed (the part `prefix_rewrite` replaces).
    fn matched_len(&self, path: &str) -> usize {
        match &self.matcher.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => p.len().min(path.len()),
            PathMatch::Regex(_) => path.len(),
            PathMatch::Connect => 0,
        }
    }

    /// The forward action, if this route forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match &self.action {
            Action::Forward(f) => Some(f),
            _ => None,
        }
    }
}

pub fn header_matcher(h: &cfg::HeaderMatcher) -> Result<HeaderMatcher, String> {
    let name = match h.name.to_ascii_lowercase().as_str() {
        ":method" => HeaderKey::Method,
        ":authority" | "host" => HeaderKey::Authority,
        ":path" => HeaderKey::Path,
        ":scheme" => HeaderKey::Scheme,
        n => HeaderKey::Header(
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name \"{}\"", h.name))?,
        ),
    };
    let plain = |kind| StrMatch { kind, ignore_case: false };
    let matcher = if let Some(s) = &h.string_match {
        StrMatch::build(s)?
    } else if let Some(s) = &h.exact_match {
        plain(ValueMatch::Exact(s.clone()))
    } else if let Some(s) = &h.prefix_match {
        plain(ValueMatch::Prefix(s.clone()))
    } else if let Some(s) = &h.suffix_match {
        plain(ValueMatch::Suffix(s.clone()))
    } else if let Some(s) = &h.contains_match {
        plain(ValueMatch::Contains(s.clone()))
    } else if let Some(r) = &h.safe_regex_match {
        plain(ValueMatch::Regex(full_regex(&r.regex)?))
    } else if let Some(r) = &h.range_match {
        plain(ValueMatch::Range(r.start, r.end))
    } else {
        // `present_match`, or no matcher at all: presence.
        plain(ValueMatch::Present(h.present_match.unwrap_or(true)))
    };
    Ok(HeaderMatcher { name, matcher, invert: h.invert_match, missing_as_empty: h.treat_missing_header_as_empty })
}

impl RouteMatcher {
    fn matches(&self, path: &str, query: Option<&str>, req: &RouteRequest<'_>) -> bool {
        let headers = req.headers;
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, self.case_sensitive)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::Connect => req.method == "CONNECT",
        };
        if !path_ok {
            return false;
        }
        if self.grpc
            && !headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"))
        {
            return false;
        }
        self.headers.iter().all(|h| h.matches(req)) && self.query.iter().all(|q| q.matches(query))
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.is_char_boundary(prefix.len())
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
    }
}

impl HeaderMatcher {
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        let pseudo = match &self.name {
            HeaderKey::Header(name) => return self.matches_values(req.headers.get_all(name).iter().peekable()),
            HeaderKey::Method => req.method,
            HeaderKey::Authority => req.authority,
            HeaderKey::Path => req.path_and_query,
            HeaderKey::Scheme => req.scheme,
        };
        let result = match &self.matcher.kind {
            ValueMatch::Present(p) => *p,
            _ => self.matcher.matches(pseudo),
        };
        result != self.invert
    }

    fn matches_values(&self, mut values: std::iter::Peekable<http::header::ValueIter<'_, HeaderValue>>) -> bool {
        let result = if values.peek().is_none() {
            match &self.matcher.kind {
                ValueMatch::Present(p) => !*p,
                _ if self.missing_as_empty => self.matcher.matches(""),
                _ => {
                    // A missing header never matches, even inverted (Envoy semantics).
                    return false;
                }
            }
        } else {
            match &self.matcher.kind {
                ValueMatch::Present(p) => *p,
                _ => {
                    // Several values are matched joined with ',' as Envoy does.
                    let joined: String = {
                        let parts: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
                        parts.join(",")
                    };
                    self.matcher.matches(&joined)
                }
            }
        };
        result != self.invert
    }
}

impl QueryMatcher {
    fn matches(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| query_param(q, &self.name));
        if self.absent {
            return value.is_none();
        }
        match (&self.matcher, value) {
            (_, None) => false,
            // No string matcher: `present_match` (or nothing) asks only for presence.
            (None, Some(_)) => true,
            (Some(m), Some(v)) => m.matches(v),
        }
    }
}

impl Forward {
    fn build(a: &cfg::RouteAction) -> Result<Forward, (String, String)> {
        let cfg::RouteAction {
            cluster,
            cluster_header,
            weighted_clusters,
            cluster_specifier_plugin,
            cluster_not_found_response_code,
            prefix_rewrite,
            regex_rewrite,
            path_rewrite_policy,
            host_rewrite_literal,
            auto_host_rewrite,
            host_rewrite_header,
            host_rewrite_path_regex,
            append_x_forwarded_host,
            timeout,
            idle_timeout,
            hash_policy,
            retry_policy,
            request_mirror_policies,
            priority,
            rate_limits,
            metadata_match,
            upgrade_configs,
            max_stream_duration,
            cors,
            hedge_policy,
        } = a;
        for refused in [
            cluster_specifier_plugin,
            path_rewrite_policy,
            auto_host_rewrite,
            host_rewrite_path_regex,
            request_mirror_policies,
            priority,
            rate_limits,
            metadata_match,
            max_stream_duration,
            cors,
            hedge_policy,
        ] {
            refused_at_load(refused);
        }
        let mut weighted_headers = Vec::new();
        let cluster = if let Some(c) = cluster {
            ClusterSpecifier::Name(Arc::from(c.as_str()))
        } else if let Some(h) = cluster_header {
            ClusterSpecifier::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ("cluster_header".to_string(), format!("invalid header name \"{h}\"")))?,
            )
        } else if let Some(cfg::WeightedCluster { clusters, total_weight, runtime_key_prefix, header_name }) = weighted_clusters {
            refused_at_load(runtime_key_prefix);
            refused_at_load(header_name);
            // The validator requires the weights to add up to `total_weight` when it is set.
            without_effect(total_weight, "checked at load: the weights must add up to it");
            let mut acc = 0u64;
            let mut list = Vec::new();
            for (i, c) in clusters.iter().enumerate() {
                let cfg::ClusterWeight {
                    name,
                    weight,
                    request_headers_to_add,
                    request_headers_to_remove,
                    response_headers_to_add,
                    response_headers_to_remove,
                    typed_per_filter_config,
                    host_rewrite_literal,
                    metadata_match,
                } = c;
                refused_at_load(typed_per_filter_config);
                refused_at_load(host_rewrite_literal);
                refused_at_load(metadata_match);
                acc += weight.unwrap_or(0) as u64;
                list.push((Arc::from(name.as_str()), acc));
                let p = format!("weighted_clusters.clusters[{i}]");
                weighted_headers.push(WeightedHeaders {
                    request: HeaderMutations::build(request_headers_to_add, request_headers_to_remove)
                        .map_err(|(q, e)| (format!("{p}.request_headers_to_add{q}"), e))?,
                    response: HeaderMutations::build(response_headers_to_add, response_headers_to_remove)
                        .map_err(|(q, e)| (format!("{p}.response_headers_to_add{q}"), e))?,
                });
            }
            ClusterSpecifier::Weighted(list, acc)
        } else {
            return Err((String::new(), "one of cluster, cluster_header, weighted_clusters required".into()));
        };
        let regex_rewrite = match regex_rewrite {
            Some(cfg::RegexMatchAndSubstitute { pattern, substitution }) => Some((
                Regex::new(&pattern.regex).map_err(|e| ("regex_rewrite.pattern".to_string(), e.to_string()))?,
                envoy_substitution(substitution),
            )),
            None => None,
        };
        let host_rewrite = match host_rewrite_literal {
            Some(h) => Some(HeaderValue::from_str(h).map_err(|_| ("host_rewrite_literal".to_string(), "invalid host".to_string()))?),
            None => None,
        };
        let host_rewrite_header = match host_rewrite_header {
            Some(h) => Some(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ("host_rewrite_header".to_string(), "invalid header name".to_string()))?,
            ),
            None => None,
        };
        // Envoy's default route timeout is 15 s; `0s` disables it.
        let timeout = {
            let d = timeout.map_or(Duration::from_secs(15), |d| d.as_std());
            (!d.is_zero()).then_some(d)
        };
        let retry = match retry_policy {
            Some(p) => Some(Arc::new(RetryPolicy::build(p).map_err(|(p, e)| (format!("retry_policy.{p}"), e))?)),
            None => None,
        };
        let mut hash_policies = Vec::new();
        for h in hash_policy {
            let cfg::HashPolicy { header, cookie, connection_properties, query_parameter, filter_state, terminal } = h;
            refused_at_load(filter_state);
            let terminal = *terminal;
            let policy = match (header, cookie, connection_properties, query_parameter) {
                (Some(cfg::HashHeader { header_name, regex_rewrite }), None, None, None) => {
                    refused_at_load(regex_rewrite);
                    HeaderName::from_bytes(header_name.to_ascii_lowercase().as_bytes())
                        .ok()
                        .map(|name| HashPolicy::Header { name, terminal })
                }
                (None, Some(cfg::HashCookie { name, ttl, path, attributes }), None, None) => {
                    refused_at_load(attributes);
                    Some(HashPolicy::Cookie { name: name.clone(), ttl: ttl.map(|d| d.as_std()), path: path.clone(), terminal })
                }
                (None, None, Some(cfg::HashConnectionProperties { source_ip }), None) => {
                    source_ip.then_some(HashPolicy::SourceIp { terminal })
                }
                (None, None, None, Some(cfg::HashQueryParameter { name })) => {
                    Some(HashPolicy::QueryParameter { name: name.clone(), terminal })
                }
                _ => None,
            };
            hash_policies.extend(policy);
        }
        let mut upgrades = Vec::new();
        for (i, u) in upgrade_configs.iter().enumerate() {
            let cfg::RouteUpgradeConfig { upgrade_type, enabled, connect_config } = u;
            let terminate_connect = match connect_config {
                None => false,
                Some(cfg::ConnectConfig { proxy_protocol_config: None, allow_post: false }) => true,
                Some(cfg::ConnectConfig { proxy_protocol_config: None, allow_post: true }) => {
                    return Err((format!("upgrade_configs[{i}].connect_config.allow_post"), "recognised but not supported by sluice".to_string()))
                }
                Some(cfg::ConnectConfig { proxy_protocol_config: Some(_), .. }) => {
                    return Err((format!("upgrade_configs[{i}].connect_config.proxy_protocol_config"), "recognised but not supported by sluice".to_string()))
                }
            };
            upgrades.push(RouteUpgrade { kind: upgrade_type.to_ascii_lowercase(), enabled: enabled.unwrap_or(true), terminate_connect });
        }
        Ok(Forward {
            cluster,
            cluster_not_found_status: match cluster_not_found_response_code {
                Some(cfg::ClusterNotFoundResponseCode::NotFound) => 404,
                Some(cfg::ClusterNotFoundResponseCode::InternalServerError) => 500,
                _ => 503,
            },
            prefix_rewrite: prefix_rewrite.clone(),
            regex_rewrite,
            host_rewrite,
            host_rewrite_header,
            append_x_forwarded_host: *append_x_forwarded_host,
            timeout,
            timeout_header: timeout.map(|t| HeaderValue::from(t.as_millis() as u64)),
            idle_timeout: idle_timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
            hash_policies,
            weighted_headers,
            upgrades,
            retry,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
        })
    }

    /// This route's `upgrade_configs` entry for `kind` (lower-case), if any.
    pub fn upgrade(&self, kind: &str) -> Option<&RouteUpgrade> {
        self.upgrades.iter().find(|u| u.kind == kind)
    }

    /// The upstream path after `prefix_rewrite` / `regex_rewrite`, or `None` when unchanged.
    /// `matched_prefix` is the route's prefix (for prefix_rewrite).
    pub fn rewrite_path(&self, route: &Route, path_and_query: &str) -> Option<String> {
        let (path, query) = split_path_query(path_and_query);
        let new_path = if let Some(rewrite) = &self.prefix_rewrite {
            format!("{rewrite}{}", &path[route.matched_len(path)..])
        } else if let Some((re, sub)) = &self.regex_rewrite {
            re.replace_all(path, sub.as_str()).into_owned()
        } else {
            return None;
        };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

/// Envoy writes `\1` for capture groups; the regex crate wants `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str("${");
                out.push(d);
                out.push('}');
            }
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

impl Redirect {
    fn build(a: &cfg::RedirectAction) -> Result<Redirect, (String, String)> {
        let cfg::RedirectAction {
            https_redirect,
            scheme_redirect,
            host_redirect,
            port_redirect,
            path_redirect,
            prefix_rewrite,
            regex_rewrite,
            response_code,
            strip_query,
        } = a;
        let scheme = if *https_redirect == Some(true) { Some("https".to_string()) } else { scheme_redirect.clone() };
        let regex_rewrite = match regex_rewrite {
            Some(cfg::RegexMatchAndSubstitute { pattern, substitution }) => Some((
                Regex::new(&pattern.regex).map_err(|e| ("regex_rewrite.pattern".to_string(), e.to_string()))?,
                envoy_substitution(substitution),
            )),
            None => None,
        };
        Ok(Redirect {
            scheme,
            host: host_redirect.clone(),
            port: *port_redirect,
            path: path_redirect.clone(),
            prefix_rewrite: prefix_rewrite.clone(),
            regex_rewrite,
            status: response_code.unwrap_or_default().status(),
            strip_query: *strip_query,
        })
    }

    /// The `location` for a request (`scheme` and `host` as the request had them).
    pub fn location(&self, route: &Route, scheme: &str, host: &str, path_and_query: &str) -> String {
        let (path, query) = split_path_query(path_and_query);
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        // Split the request host into name and port.
        let (req_name, req_port) = split_host_port(host);
        let name = self.host.as_deref().unwrap_or(req_name);
        let port: Option<String> = match self.port {
            Some(p) => Some(p.to_string()),
            None if self.host.is_some() => None,
            None => req_port.map(str::to_string),
        };
        // Envoy drops the port when it is the default of the new scheme (80 for http/https
        // switching drops 80 only; 443 is kept, as observed).
        let port = port.filter(|p| !(p == "80" && (scheme_out == "https" || scheme_out == "http") && self.port.is_none())
            && !(p == "443" && scheme_out == "https" && self.port.is_none() && scheme == "https"));
        let (new_path, keep_query) = if let Some(p) = &self.path {
            // path_redirect may carry its own query, which replaces the request's.
            (p.clone(), !p.contains('?'))
        } else if let Some(rewrite) = &self.prefix_rewrite {
            (format!("{rewrite}{}", &path[route.matched_len(path)..]), true)
        } else if let Some((re, sub)) = &self.regex_rewrite {
            (re.replace_all(path, sub.as_str()).into_owned(), true)
        } else {
            (path.to_string(), true)
        };
        let mut out = format!("{scheme_out}://{name}");
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p);
        }
        out.push_str(&new_path);
        if keep_query && !self.strip_query {
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
        }
        out
    }
}

/// `/p?q` → (`/p`, `Some("q")`).
pub fn split_path_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    }
}

/// The value of the first `name` parameter of a query string (`a=1&b` → `b` is `""`).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `host:port` → (`host`, `Some(port)`); IPv6 literals in brackets are handled.
pub fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let rest = &host[end + 1..];
            return (&host[..=end], rest.strip_prefix(':'));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let rc: cfg::RouteConfiguration = serde_yaml_ng::from_str(yaml).unwrap();
        RouteTable::build(&rc).unwrap()
    }

    const VHOSTS: &str = r#"
name: t
virtual_hosts:
- {name: exact, domains: ["exact.test", "port.test:80"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: short, domains: ["*.wild.test"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: long, domains: ["*.a.wild.test"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: pre, domains: ["pre.*"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
- {name: any, domains: ["*"], routes: [{match: {prefix: "/"}, direct_response: {status: 200}}]}
"#;

    #[test]
    fn vhost_precedence() {
        let t = table(VHOSTS);
        let name = |h: &str| t.select_vhost(h).map(|i| t.virtual_hosts[i].name.as_str());
        assert_eq!(name("exact.test"), Some("exact"));
        assert_eq!(name("x.a.wild.test"), Some("long"));
        assert_eq!(name("b.wild.test"), Some("short"));
        assert_eq!(name("wild.test"), Some("any"), "wildcard never matches empty");
        assert_eq!(name("pre.foo:8080"), Some("pre"));
        assert_eq!(name("b.wild.test:8080"), Some("any"), "port is part of the host");
        assert_eq!(name("exact.test:8080"), Some("any"));
        assert_eq!(name("port.test:80"), Some("exact"));
    }

    const ROUTES: &str = r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {match: {path: "/p/exact"}, direct_response: {status: 201}}
  - {match: {path_separated_prefix: "/seg"}, direct_response: {status: 202}}
  - {match: {safe_regex: {regex: "/re/[0-9]+"}}, direct_response: {status: 203}}
  - {match: {prefix: "/ci", case_sensitive: false}, direct_response: {status: 204}}
  - {match: {prefix: "/h", headers: [{name: x-a, string_match: {exact: "1"}}, {name: x-b, present_match: true}]}, direct_response: {status: 205}}
  - {match: {prefix: "/h", headers: [{name: x-c, string_match: {prefix: "ab"}, invert_match: true}]}, direct_response: {status: 206}}
  - {match: {prefix: "/q", query_parameters: [{name: debug, string_match: {exact: "1"}}]}, direct_response: {status: 207}}
  - {match: {prefix: "/service/1"}, direct_response: {status: 208}}
"#;

    fn status(t: &RouteTable, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let s = t.route("any", path, &h)?;
        match &s.route.action {
            Action::Direct { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn route_matchers() {
        let t = table(ROUTES);
        assert_eq!(status(&t, "/p/exact?x=1", &[]), Some(201));
        assert_eq!(status(&t, "/p/exact/", &[]), None);
        assert_eq!(status(&t, "/seg", &[]), Some(202));
        assert_eq!(status(&t, "/seg/x", &[]), Some(202));
        assert_eq!(status(&t, "/seg?q=1", &[]), Some(202));
        assert_eq!(status(&t, "/segment", &[]), None);
        assert_eq!(status(&t, "/re/123?x=1", &[]), Some(203));
        assert_eq!(status(&t, "/re/12a", &[]), None);
        assert_eq!(status(&t, "/CI/x", &[]), Some(204));
        assert_eq!(status(&t, "/h", &[("x-a", "1"), ("x-b", "")]), Some(205));
        assert_eq!(status(&t, "/h", &[("x-a", "1"), ("x-c", "zz")]), Some(206));
        assert_eq!(status(&t, "/h", &[("x-c", "abc")]), None);
        assert_eq!(status(&t, "/q?a=2&debug=1", &[]), Some(207));
        assert_eq!(status(&t, "/q?debug=2", &[]), None);
        assert_eq!(status(&t, "/service/10", &[]), Some(208), "prefix has no segment boundary");
        assert_eq!(status(&t, "/Service/1", &[]), None, "case sensitive by default");
        assert_eq!(status(&t, "/service/%31", &[]), None, "no percent decoding");
    }

    #[test]
    fn rewrites_and_redirects() {
        let t = table(
            r#"
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {match: {prefix: "/rw/"}, route: {cluster: c, prefix_rewrite: "/service/1/"}}
  - {match: {prefix: "/rx/"}, route: {cluster: c, regex_rewrite: {pattern: {regex: "^/rx/([a-z]+)$"}, substitution: "/svc/\\1"}}}
  - {match: {prefix: "/https"}, redirect: {https_redirect: true}}
  - {match: {prefix: "/other"}, redirect: {host_redirect: x.test, prefix_rewrite: "/new", response_code: FOUND}}
"#,
        );
        let h = HeaderMap::new();
        let s = t.route("a", "/rw/abc?echo=1", &h).unwrap();
        assert_eq!(s.route.forward().unwrap().rewrite_path(&s.route, "/rw/abc?echo=1").as_deref(), Some("/service/1/abc?echo=1"));
        let s = t.route("a", "/rx/abc?q", &h).unwrap();
        assert_eq!(s.route.forward().unwrap().rewrite_path(&s.route, "/rx/abc?q").as_deref(), Some("/svc/abc?q"));
        let s = t.route("a", "/https/x?a=1", &h).unwrap();
        let Action::Redirect(r) = &s.route.action else { panic!() };
        assert_eq!(r.location(&s.route, "http", "a:19900", "/https/x?a=1"), "https://a:19900/https/x?a=1");
        assert_eq!(r.location(&s.route, "http", "a:80", "/https/x"), "https://a/https/x");
        assert_eq!(r.status, 301);
        let s = t.route("a", "/other/tail?a=1", &h).unwrap();
        let Action::Redirect(r) = &s.route.action else { panic!() };
        assert_eq!(r.location(&s.route, "http", "a:1", "/other/tail?a=1"), "http://x.test/new/tail?a=1");
        assert_eq!(r.status, 302);
    }

    #[test]
    fn header_mutations_follow_append_actions() {
        let muts = HeaderMutations::build(
            &serde_yaml_ng::from_str::<Vec<HeaderValueOption>>(
                r#"
- {header: {key: x-over, value: new}, append: false}
- {header: {key: x-app, value: two}}
- {header: {key: x-absent, value: v}, append_action: ADD_IF_ABSENT}
"#,
            )
            .unwrap(),
            &["x-gone".to_string()],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-over", HeaderValue::from_static("old"));
        h.insert("x-app", HeaderValue::from_static("one"));
        h.insert("x-absent", HeaderValue::from_static("kept"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        muts.apply(&mut h, &|_, _| unreachable!("no formatted value"));
        assert_eq!(h.get_all("x-over").iter().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(h.get_all("x-app").iter().collect::<Vec<_>>(), vec!["one", "two"]);
        assert_eq!(h.get_all("x-absent").iter().collect::<Vec<_>>(), vec!["kept"]);
        assert!(!h.contains_key("x-gone"));
    }
}
