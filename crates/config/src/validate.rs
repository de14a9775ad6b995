//! Envoy's semantic rules, applied after typing. Every rule reports the path of the field, and all
//! problems are collected (not just the first).
//!
//! Where Envoy has a message for a rule, its words are kept after our path
//! (`…routes[0].route.cluster: route: unknown cluster 'x'`); proto-validate (PGV) constraints use
//! PGV's wording (`value must be inside range [200, 600)`). Rules checked:
//!
//! * **Data sources** (certificates, keys, trusted CAs, direct-response bodies): exactly one of
//!   `filename` / `inline_string` / `inline_bytes` / `environment_variable`; files and environment
//!   variables must be readable now. PEM is not parsed here.
//! * **Listeners**: unique names; a `socket_address` whose `address` is an IP literal, port ≤ 65535,
//!   TCP; no two listeners on one `ip:port` (port 0 excepted); at least one filter chain; each chain
//!   has exactly one network filter, the HTTP connection manager; chains of one listener have
//!   distinct `filter_chain_match`es (no shared server name / transport / ALPN / port tuple), and
//!   `server_names` wildcards are whole labels (`*.example.com`); listener filters without
//!   `typed_config` must be the TLS inspector; a listener's transport socket is a
//!   `DownstreamTlsContext` (or raw buffer) with at least one certificate.
//! * **HTTP connection manager**: non-empty `stat_prefix`; inline `route_config`; no `HTTP3`
//!   codec; `max_request_headers_kb` in (0, 8192]; a non-empty `http_filters` list whose last (and
//!   only last) filter is the router; a filter without `typed_config` must have a well-known name.
//! * **ext_authz**: exactly one of `grpc_service` / `http_service`; gRPC via `envoy_grpc` to a
//!   cluster of `static_resources` (`transport_api_version` may be absent, AUTO, V2 or V3:
//!   Envoy 1.40 accepts each and speaks V3);
//!   `status_on_error` one of `envoy.type.v3.StatusCode`'s values; `max_request_bytes` > 0; valid string
//!   matchers; the HTTP service's `timeout` below 2^32 s.
//! * **Route tables**: domains unique across the table (case-insensitive), one `*`, wildcards only
//!   as the first or last character; one path specifier per match, `path_separated_prefix` shape,
//!   regexes compile (regex crate ≈ RE2), header/query/string matchers have one pattern; one action
//!   per route; one cluster specifier per route action; weighted clusters non-empty with a
//!   positive sum equal to `total_weight` when given; with `validate_clusters` (default true for
//!   static tables) clusters must exist; redirect and rewrite oneofs; direct-response status in
//!   [200, 600) and body within `max_direct_response_body_size_bytes` (default 4096); hash
//!   policies have one policy; header mutations never touch `:`-pseudo-headers or `host`;
//!   `typed_per_filter_config` keys name an ext_authz filter of the connection manager.
//! * **Clusters**: unique non-empty names; `EDS`/`ORIGINAL_DST` types and the
//!   `CLUSTER_PROVIDED`/`LOAD_BALANCING_POLICY_CONFIG` policies are recognised but unsupported;
//!   STATIC endpoints are IP literals, DNS endpoints have a port, LOGICAL_DNS has exactly one
//!   endpoint; priorities other than 0 are not supported yet; load-balancer config bounds (ring
//!   sizes, prime Maglev table, least-request choice count ≥ 2); `typed_extension_protocol_options`
//!   keyed by the type's name with exactly one protocol selection; one circuit-breaker threshold
//!   per priority; upstream transport socket is an `UpstreamTlsContext` (or raw buffer).
//! * **Admin** and **DNS resolvers** (bootstrap and cluster): IP socket addresses.
//! * **PGV ranges and shapes** Envoy checks at load: `stats_flush_interval` in [1ms, 300s);
//!   HTTP/2 `max_concurrent_streams` and window sizes, keepalive `interval`/`timeout` (≥ 1ms,
//!   timeout required); `max_headers_count` ≥ 1; `destination_port` in [1, 65535]; locality
//!   `priority` ≤ 128; DNS failure refresh intervals > 1ms; socket `address` and regexes non-empty;
//!   upstream `sni` ≤ 255 bytes; header names and values (mutations,
//!   removals, matchers, domains, rewrites, redirects, `server_name`, `via`) without NUL, CR or LF
//!   and at most 16 KiB, at most 1000 headers to add per list. Every `Duration` is range-checked while deserializing (see `core.rs`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::bootstrap::{Bootstrap, DnsResolverConfig};
use crate::cluster::{
    Cluster, DiscoveryType, LbPolicy, ProtocolOptions, UpstreamHttpProtocolOptions,
};
use crate::core::{
    Address, CommonHttpProtocolOptions, DataSource, HeaderValueOption, Http1ProtocolOptions, Http2ProtocolOptions,
    ListStringMatcher, RegexMatcher, SocketProtocol, StringMatcher, TypedExtensionConfig,
};
use crate::error::{join_path, ConfigError, PathError};
use crate::ext_authz::{ExtAuthz, ExtAuthzPerRoute};
use crate::hcm::{CodecType, HttpConnectionManager, HttpFilterConfig};
use crate::listener::{FilterChain, Listener, TransportSocket, TransportSocketConfig};
use crate::route::{
    PerFilterConfig, RegexMatchAndSubstitute, Route, RouteAction, RouteConfiguration, RouteMatch,
    TypedPerFilterConfig, VirtualHost,
};
use crate::tls::{CommonTlsContext, TlsProtocol};

/// The HTTP connection manager's well-known filter names.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
pub const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";
/// The key of `typed_extension_protocol_options` for upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's default `max_direct_response_body_size_bytes`.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 4096;

const NOT_SUPPORTED: &str = "recognised but not supported by sluice";
const MS: std::time::Duration = std::time::Duration::from_millis(1);
const H2_WINDOW: &str = "value must be inside range [65535, 2147483647]";
/// PGV's `HTTP_HEADER_NAME` / `HTTP_HEADER_VALUE` rules (non-strict): no NUL, CR or LF.
const HEADER_TEXT: &str = "value does not match regex pattern \"^[^\\x00\\n\\r]*$\"";
const MAX_HEADER_BYTES: usize = 16384;
/// The values of `envoy.type.v3.StatusCode` (HttpStatus.code is `defined_only`, not 0).
const STATUS_CODES: &[u32] = &[
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
    422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];
const MIN_LEN_1: &str = "value length must be at least 1 characters";
const MIN_ITEMS_1: &str = "value must contain at least 1 item(s)";
const ONLY_HCM: &str =
    "a filter chain has exactly one network filter, the HTTP connection manager \
     (envoy.filters.network.http_connection_manager): sluice runs no other network filter";

/// Check a typed bootstrap; all problems are reported together.
pub fn validate(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    let mut errors = check(bootstrap);
    if errors.is_empty() {
        Ok(())
    } else {
        errors.dedup();
        Err(ConfigError { errors })
    }
}

/// Every problem found in a typed bootstrap, in traversal order (empty when valid).
pub fn check(bootstrap: &Bootstrap) -> Vec<PathError> {
    let sr = &bootstrap.static_resources;
    let mut ctx = Ctx {
        errors: Vec::new(),
        clusters: HashSet::new(),
    };
    let root = P::default();

    let clusters = root.f("static_resources").f("clusters");
    for (i, c) in sr.clusters.iter().enumerate() {
        let p = clusters.i(i);
        if !c.name.is_empty() && !ctx.clusters.insert(c.name.as_str()) {
            ctx.err(
                &p.f("name"),
                format!("cluster manager: duplicate cluster '{}'", c.name),
            );
        }
    }
    for (i, c) in sr.clusters.iter().enumerate() {
        ctx.cluster(&clusters.i(i), c);
    }

    let listeners = root.f("static_resources").f("listeners");
    let mut names = HashSet::new();
    let mut addresses = HashMap::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let p = listeners.i(i);
        if let Some(name) = &l.name {
            if !names.insert(name.as_str()) {
                ctx.err(&p.f("name"), format!("duplicate listener name '{name}'"));
            }
        }
        let addr = l
            .address
            .socket_address
            .as_ref()
            .and_then(|s| s.to_socket_addr());
        if let Some(addr) = addr.filter(|a| a.port() != 0) {
            if addresses.insert(addr, ()).is_some() {
                let name = l.name.clone().unwrap_or_else(|| addr.to_string());
                ctx.err(
                    &p.f("address"),
                    format!(
                        "error adding listener: '{name}' has duplicate address '{addr}' as existing listener, \
                         to check if the listener has duplicated addresses with other listeners or \
                         'enable_reuse_port' is set to 'false' for the listener"
                    ),
                );
            }
        }
        ctx.listener(&p, l);
    }

    if let Some(admin) = &bootstrap.admin {
        if let Some(a) = &admin.address {
            ctx.address(&root.f("admin").f("address"), a, AddrRule::Ip);
        }
    }
    if let Some(dns) = &bootstrap.typed_dns_resolver_config {
        ctx.dns_resolver(&root.f("typed_dns_resolver_config"), dns);
    }
    if let Some(d) = bootstrap.stats_flush_interval {
        let d = d.as_std();
        if d < MS || d >= std::time::Duration::from_secs(300) {
            ctx.err(
                &root.f("stats_flush_interval"),
                "value must be inside range [1ms, 5m0s)",
            );
        }
    }
    ctx.errors
}

/// A path under construction.
#[derive(Debug, Clone, Default)]
struct P(String);

impl P {
    fn f(&self, field: &str) -> P {
        P(join_path(&self.0, field))
    }
    fn i(&self, index: usize) -> P {
        P(format!("{}[{index}]", self.0))
    }
}

/// How an address must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrRule {
    /// An IP literal (listeners, admin, STATIC endpoints, DNS resolvers).
    Ip,
    /// A host name or IP, with a port (DNS cluster endpoints).
    HostWithPort,
}

/// The serialized name of an enum value (`"STRICT_DNS"`).
fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The first line of the regex crate's error that says what is wrong.
fn regex_error_summary(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(s.lines().last().unwrap_or(s))
            .to_string(),
        other => other.to_string(),
    }
}

/// `*` is allowed as the whole domain, or as the first or last character only.
fn domain_wildcard_ok(domain: &str) -> bool {
    let stars = domain.matches('*').count();
    domain == "*"
        || stars == 0
        || (stars == 1 && (domain.starts_with('*') || domain.ends_with('*')))
}

/// Envoy refuses to add, set or remove `:`-pseudo-headers and `host`.
fn modifiable_header(name: &str) -> bool {
    !name.starts_with(':') && !name.eq_ignore_ascii_case("host")
}

struct Ctx<'a> {
    errors: Vec<PathError>,
    clusters: HashSet<&'a str>,
}

/// The header mutation lists of one level (route table, virtual host, route, weighted cluster).
struct Mutations<'b> {
    request_headers_to_add: &'b [HeaderValueOption],
    response_headers_to_add: &'b [HeaderValueOption],
    request_headers_to_remove: &'b [String],
    response_headers_to_remove: &'b [String],
}

macro_rules! mutations {
    ($x:expr) => {
        Mutations {
            request_headers_to_add: &$x.request_headers_to_add,
            response_headers_to_add: &$x.response_headers_to_add,
            request_headers_to_remove: &$x.request_headers_to_remove,
            response_headers_to_remove: &$x.response_headers_to_remove,
        }
    };
}

/// What a route table needs to know about its connection manager.
struct RouteScope<'b> {
    name: &'b str,
    validate_clusters: bool,
    max_body: u32,
    /// Names of the ext_authz filters of the connection manager (per-filter config keys).
    authz_filters: &'b HashSet<&'b str>,
}

impl<'a> Ctx<'a> {
    fn err(&mut self, p: &P, message: impl Into<String>) {
        self.errors.push(PathError {
            path: p.0.clone(),
            message: message.into(),
        });
    }

    /// A proto `oneof` written as sibling fields: at most one set, or exactly one if `required`.
    /// Returns whether the rule holds.
    fn one_of(&mut self, p: &P, fields: &[(&str, bool)], required: bool) -> bool {
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        let set: Vec<&str> = fields.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
        match set.len() {
            0 if required => {
                self.err(p, format!("one of {} is required", names.join(", ")));
                false
            }
            0 | 1 => true,
            _ => {
                self.err(
                    p,
                    format!(
                        "only one of {} may be set (found {})",
                        names.join(", "),
                        set.join(", ")
                    ),
                );
                false
            }
        }
    }

    fn not_supported_value<T: Serialize>(&mut self, p: &P, value: &T) {
        self.err(
            p,
            format!("value \"{}\" is {NOT_SUPPORTED}", enum_name(value)),
        );
    }

    fn non_empty(&mut self, p: &P, s: &str) {
        if s.is_empty() {
            self.err(p, MIN_LEN_1);
        }
    }

    /// A header name or value (PGV `HTTP_HEADER_NAME`/`HTTP_HEADER_VALUE`, non-strict).
    fn header_text(&mut self, p: &P, s: &str) {
        if s.contains(['\0', '\n', '\r']) {
            self.err(p, HEADER_TEXT);
        }
    }

    fn regex(&mut self, p: &P, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            self.err(
                p,
                format!("invalid regex \"{pattern}\": {}", regex_error_summary(&e)),
            );
        }
    }

    fn regex_matcher(&mut self, p: &P, m: &RegexMatcher) {
        if m.regex.is_empty() {
            self.err(&p.f("regex"), MIN_LEN_1);
            return;
        }
        self.regex(&p.f("regex"), &m.regex);
    }

    /// PGV rules of `Http2ProtocolOptions` (stream limits, windows, keepalive).
    fn http2_options(&mut self, p: &P, h: &Http2ProtocolOptions) {
        const MAX: u32 = 2_147_483_647;
        if h.max_concurrent_streams
            .is_some_and(|n| !(1..=MAX).contains(&n))
        {
            self.err(
                &p.f("max_concurrent_streams"),
                "value must be inside range [1, 2147483647]",
            );
        }
        for (field, v) in [
            ("initial_stream_window_size", h.initial_stream_window_size),
            (
                "initial_connection_window_size",
                h.initial_connection_window_size,
            ),
        ] {
            if v.is_some_and(|n| !(65_535..=MAX).contains(&n)) {
                self.err(&p.f(field), H2_WINDOW);
            }
        }
        if let Some(k) = &h.connection_keepalive {
            let kp = p.f("connection_keepalive");
            if k.interval.is_some_and(|d| d.as_std() < MS) {
                self.err(
                    &kp.f("interval"),
                    "value must be greater than or equal to 1ms",
                );
            }
            match k.timeout {
                None => self.err(&kp.f("timeout"), "value is required"),
                Some(d) if d.as_std() < MS => self.err(
                    &kp.f("timeout"),
                    "value must be greater than or equal to 1ms",
                ),
                Some(_) => {}
            }
        }
    }

    /// PGV rules of the common `HttpProtocolOptions`.
    fn common_http_options(&mut self, p: &P, c: &CommonHttpProtocolOptions) {
        if c.max_headers_count == Some(0) {
            self.err(
                &p.f("max_headers_count"),
                "value must be greater than or equal to 1",
            );
        }
    }

    fn regex_rewrite(&mut self, p: &P, r: &RegexMatchAndSubstitute) {
        self.regex_matcher(&p.f("pattern"), &r.pattern);
        self.header_text(&p.f("substitution"), &r.substitution);
    }

    fn data_source(&mut self, p: &P, ds: &DataSource) {
        if !self.one_of(
            p,
            &[
                ("filename", ds.filename.is_some()),
                ("inline_string", ds.inline_string.is_some()),
                ("inline_bytes", ds.inline_bytes.is_some()),
                ("environment_variable", ds.environment_variable.is_some()),
            ],
            true,
        ) {
            return;
        }
        if let Err(e) = ds.load() {
            self.err(p, e);
        }
    }

    fn address(&mut self, p: &P, a: &Address, rule: AddrRule) {
        let Some(sa) = &a.socket_address else {
            self.err(p, "missing field \"socket_address\"");
            return;
        };
        let sp = p.f("socket_address");
        if sa.address.is_empty() {
            self.err(&sp.f("address"), MIN_LEN_1);
            return;
        }
        if sa.port_value > 65535 {
            self.err(
                &sp.f("port_value"),
                "value must be less than or equal to 65535",
            );
        }
        match rule {
            AddrRule::Ip => {
                if sa
                    .address
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_err()
                {
                    self.err(
                        &sp.f("address"),
                        format!("malformed IP address: {}", sa.address),
                    );
                }
            }
            AddrRule::HostWithPort => {
                self.non_empty(&sp.f("address"), &sa.address);
                if sa.port_value == 0 {
                    self.err(
                        &sp.f("port_value"),
                        "a DNS cluster endpoint needs a port_value",
                    );
                }
            }
        }
    }

    fn dns_resolver(&mut self, p: &P, cfg: &TypedExtensionConfig<DnsResolverConfig>) {
        if let DnsResolverConfig::Cares(c) = &cfg.typed_config {
            let rp = p.f("typed_config").f("resolvers");
            for (i, r) in c.resolvers.iter().enumerate() {
                self.address(&rp.i(i), r, AddrRule::Ip);
            }
        }
    }

    fn string_matcher(&mut self, p: &P, m: &StringMatcher) {
        self.one_of(
            p,
            &[
                ("exact", m.exact.is_some()),
                ("prefix", m.prefix.is_some()),
                ("suffix", m.suffix.is_some()),
                ("safe_regex", m.safe_regex.is_some()),
                ("contains", m.contains.is_some()),
            ],
            true,
        );
        for (field, v) in [
            ("prefix", &m.prefix),
            ("suffix", &m.suffix),
            ("contains", &m.contains),
        ] {
            if let Some(v) = v {
                self.non_empty(&p.f(field), v);
            }
        }
        if let Some(r) = &m.safe_regex {
            self.regex_matcher(&p.f("safe_regex"), r);
        }
    }

    fn list_matcher(&mut self, p: &P, l: &Option<ListStringMatcher>) {
        if let Some(l) = l {
            let pp = p.f("patterns");
            if l.patterns.is_empty() {
                self.err(&pp, MIN_ITEMS_1);
            }
            for (i, m) in l.patterns.iter().enumerate() {
                self.string_matcher(&pp.i(i), m);
            }
        }
    }

    fn header_mutations(&mut self, p: &P, m: Mutations<'_>) {
        for (field, list) in [
            ("request_headers_to_add", m.request_headers_to_add),
            ("response_headers_to_add", m.response_headers_to_add),
        ] {
            if list.len() > 1000 {
                self.err(&p.f(field), "value must contain no more than 1000 item(s)");
            }
            for (i, h) in list.iter().enumerate() {
                let hp = p.f(field).i(i);
                let (key, value) = (&h.header.key, &h.header.value);
                if key.len() > MAX_HEADER_BYTES {
                    self.err(
                        &hp.f("header").f("key"),
                        "value length must be at most 16384 bytes",
                    );
                }
                if value.len() > MAX_HEADER_BYTES {
                    self.err(
                        &hp.f("header").f("value"),
                        "value length must be at most 16384 bytes",
                    );
                }
                self.header_text(&hp.f("header").f("key"), key);
                self.header_text(&hp.f("header").f("value"), value);
                if h.header.key.is_empty() {
                    self.err(&hp.f("header").f("key"), MIN_LEN_1);
                } else if !modifiable_header(&h.header.key) {
                    self.err(
                        &hp.f("header").f("key"),
                        ":-prefixed or host headers may not be modified",
                    );
                }
                if h.append.is_some() && h.append_action.is_some() {
                    self.err(
                        &hp,
                        "Both append and append_action are set and it's not allowed",
                    );
                }
            }
        }
        for (field, list) in [
            ("request_headers_to_remove", m.request_headers_to_remove),
            ("response_headers_to_remove", m.response_headers_to_remove),
        ] {
            for (i, h) in list.iter().enumerate() {
                self.header_text(&p.f(field).i(i), h);
                if h.is_empty() {
                    self.err(&p.f(field).i(i), MIN_LEN_1);
                } else if !modifiable_header(h) {
                    self.err(
                        &p.f(field).i(i),
                        ":-prefixed or host headers may not be removed",
                    );
                }
            }
        }
    }

    // ---- TLS and transport sockets ----

    fn transport_socket(&mut self, p: &P, ts: &TransportSocket, on_listener: bool) {
        self.non_empty(&p.f("name"), &ts.name);
        let tp = p.f("typed_config");
        match &ts.typed_config {
            TransportSocketConfig::DownstreamTls(d) if on_listener => {
                self.common_tls(&tp.f("common_tls_context"), &d.common_tls_context, true);
            }
            TransportSocketConfig::UpstreamTls(u) if !on_listener => {
                self.common_tls(&tp.f("common_tls_context"), &u.common_tls_context, false);
                if u.sni.as_ref().is_some_and(|s| s.len() > 255) {
                    self.err(&tp.f("sni"), "value length must be at most 255 bytes");
                }
            }
            TransportSocketConfig::RawBuffer(_) => {}
            TransportSocketConfig::DownstreamTls(_) => self.err(
                &tp,
                "a DownstreamTlsContext belongs on a listener's filter chain, not on a cluster",
            ),
            TransportSocketConfig::UpstreamTls(_) => self.err(
                &tp,
                "an UpstreamTlsContext belongs on a cluster, not on a listener's filter chain",
            ),
        }
    }

    fn common_tls(&mut self, p: &P, c: &CommonTlsContext, server: bool) {
        let cp = p.f("tls_certificates");
        if server && c.tls_certificates.is_empty() {
            self.err(&cp, "No TLS certificates found for server context");
        }
        for (i, cert) in c.tls_certificates.iter().enumerate() {
            let p = cp.i(i);
            for (field, ds) in [
                ("certificate_chain", &cert.certificate_chain),
                ("private_key", &cert.private_key),
            ] {
                match ds {
                    Some(ds) => self.data_source(&p.f(field), ds),
                    None => self.err(&p, format!("missing field \"{field}\"")),
                }
            }
        }
        if let Some(ca) = c
            .validation_context
            .as_ref()
            .and_then(|v| v.trusted_ca.as_ref())
        {
            self.data_source(&p.f("validation_context").f("trusted_ca"), ca);
        }
        if let Some(params) = &c.tls_params {
            if let (Some(min), Some(max)) = (
                params.tls_minimum_protocol_version,
                params.tls_maximum_protocol_version,
            ) {
                if min != TlsProtocol::Auto && max != TlsProtocol::Auto && min > max {
                    self.err(
                        &p.f("tls_params"),
                        format!(
                            "tls_minimum_protocol_version {} is greater than tls_maximum_protocol_version {}",
                            enum_name(&min),
                            enum_name(&max)
                        ),
                    );
                }
            }
            // rustls speaks TLS 1.2 and 1.3 only.
            for (field, v) in [
                ("tls_minimum_protocol_version", params.tls_minimum_protocol_version),
                ("tls_maximum_protocol_version", params.tls_maximum_protocol_version),
            ] {
                if let Some(v @ (TlsProtocol::V1_0 | TlsProtocol::V1_1)) = v {
                    self.not_supported_value(&p.f("tls_params").f(field), &v);
                }
            }
        }
        // One certificate per context (Envoy can pick among several by key type and SNI).
        if c.tls_certificates.len() > 1 {
            self.err(&cp.i(1), format!("{NOT_SUPPORTED} (one certificate per TLS context)"));
        }
        if let Some(v @ crate::tls::TrustChainVerification::AcceptUntrusted) =
            c.validation_context.as_ref().and_then(|v| v.trust_chain_verification)
        {
            self.not_supported_value(&p.f("validation_context").f("trust_chain_verification"), &v);
        }
    }

    // ---- listeners ----

    fn listener(&mut self, p: &P, l: &Listener) {
        let ap = p.f("address");
        self.address(&ap, &l.address, AddrRule::Ip);
        if let Some(sa) = &l.address.socket_address {
            if sa.protocol == Some(SocketProtocol::Udp) {
                self.err(
                    &ap.f("socket_address").f("protocol"),
                    format!("value \"UDP\" is {NOT_SUPPORTED}"),
                );
            }
        }
        let fcp = p.f("filter_chains");
        let chains: Vec<(P, &FilterChain)> = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| (fcp.i(i), c))
            .chain(
                l.default_filter_chain
                    .iter()
                    .map(|c| (p.f("default_filter_chain"), c)),
            )
            .collect();
        if chains.is_empty() {
            self.err(&fcp, "no filter chains specified");
        }
        for (cp, c) in &chains {
            self.filter_chain(cp, c);
        }
        self.filter_chain_matches(&fcp, &l.filter_chains);
        for (i, f) in l.listener_filters.iter().enumerate() {
            if f.typed_config.is_none() && f.name != TLS_INSPECTOR_FILTER {
                self.err(
                    &p.f("listener_filters").i(i),
                    format!(
                        "Didn't find a registered implementation for name: '{}'",
                        f.name
                    ),
                );
            }
        }
    }

    fn filter_chain(&mut self, p: &P, c: &FilterChain) {
        let fp = p.f("filters");
        match c.filters.len() {
            0 => self.err(&fp, ONLY_HCM),
            1 => {}
            _ => self.err(&fp.i(1), ONLY_HCM),
        }
        for (i, f) in c.filters.iter().enumerate() {
            let crate::listener::NetworkFilterConfig::HttpConnectionManager(h) = &f.typed_config;
            self.hcm(&fp.i(i).f("typed_config"), h);
        }
        if let Some(ts) = &c.transport_socket {
            self.transport_socket(&p.f("transport_socket"), ts, true);
        }
    }

    /// Chains of one listener must be told apart: Envoy expands each match into
    /// (port, server name, transport, ALPN) tuples and rejects any tuple claimed twice (ALPN
    /// matching, `application_protocols`, is not supported by sluice).
    fn filter_chain_matches(&mut self, p: &P, chains: &[FilterChain]) {
        type Tuple = (Option<u32>, String, String);
        type Whole = (Option<u32>, Vec<String>, String);
        let mut whole: HashSet<Whole> = HashSet::new();
        let mut tuples: HashSet<Tuple> = HashSet::new();
        for (i, c) in chains.iter().enumerate() {
            let cp = p.i(i);
            let default = Default::default();
            let m = c.filter_chain_match.as_ref().unwrap_or(&default);
            let mp = cp.f("filter_chain_match");
            if m.destination_port
                .is_some_and(|port| !(1..=65535).contains(&port))
            {
                self.err(
                    &mp.f("destination_port"),
                    "value must be inside range [1, 65535]",
                );
            }
            for (k, name) in m.server_names.iter().enumerate() {
                if name.contains('*') && !(name.starts_with("*.") && name.matches('*').count() == 1)
                {
                    self.err(
                        &mp.f("server_names").i(k),
                        "partial wildcards are not supported in \"server_names\"",
                    );
                }
            }
            let sorted = |v: &[String]| {
                let mut v: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
                v.sort();
                v.dedup();
                v
            };
            let names = sorted(&m.server_names);
            let transport = m.transport_protocol.clone().unwrap_or_default();
            let at = if c.filter_chain_match.is_some() {
                mp
            } else {
                cp
            };
            if !whole.insert((m.destination_port, names.clone(), transport.clone())) {
                self.err(
                    &at,
                    "multiple filter chains with the same matching rules are defined",
                );
                continue;
            }
            let any = || vec![String::new()];
            let names = if names.is_empty() { any() } else { names };
            let mut overlap = false;
            for n in &names {
                overlap |= !tuples.insert((m.destination_port, n.clone(), transport.clone()));
            }
            if overlap {
                self.err(
                    &at,
                    "multiple filter chains with overlapping matching rules are defined",
                );
            }
        }
    }

    // ---- HTTP connection manager ----

    fn hcm(&mut self, p: &P, h: &HttpConnectionManager) {
        self.non_empty(&p.f("stat_prefix"), &h.stat_prefix);
        if h.codec_type == CodecType::Http3 {
            self.not_supported_value(&p.f("codec_type"), &h.codec_type);
        }
        if let Some(kb) = h.max_request_headers_kb {
            if kb == 0 || kb > 8192 {
                self.err(
                    &p.f("max_request_headers_kb"),
                    "value must be inside range (0, 8192]",
                );
            }
        }
        if let Some(o) = &h.http2_protocol_options {
            self.http2_options(&p.f("http2_protocol_options"), o);
        }
        if let Some(o) = &h.common_http_protocol_options {
            self.common_http_options(&p.f("common_http_protocol_options"), o);
        }
        for (field, v) in [("server_name", &h.server_name), ("via", &h.via)] {
            if let Some(v) = v {
                self.header_text(&p.f(field), v);
            }
        }
        let fp = p.f("http_filters");
        if h.http_filters.is_empty() {
            self.err(
                &fp,
                format!("{MIN_ITEMS_1}: the last HTTP filter must be the router ({ROUTER_FILTER})"),
            );
        }
        let mut authz_filters: HashSet<&str> = HashSet::new();
        let last = h.http_filters.len().saturating_sub(1);
        for (i, f) in h.http_filters.iter().enumerate() {
            let p = fp.i(i);
            let Some(config) = f.config() else {
                if f.name == EXT_AUTHZ_FILTER {
                    self.err(
                        &p,
                        format!("missing field \"typed_config\" (required for {EXT_AUTHZ_FILTER})"),
                    );
                } else {
                    self.err(
                        &p,
                        format!(
                            "Didn't find a registered implementation for name: '{}'",
                            f.name
                        ),
                    );
                }
                continue;
            };
            let (kind, terminal) = match &config {
                HttpFilterConfig::Router(_) => (ROUTER_FILTER, true),
                HttpFilterConfig::ExtAuthz(_) => (EXT_AUTHZ_FILTER, false),
                HttpFilterConfig::HealthCheck(_) => ("envoy.filters.http.health_check", false),
            };
            if terminal && i != last {
                self.err(
                    &p,
                    format!(
                        "Error: terminal filter named {} of type {kind} must be the last filter in a http filter chain.",
                        f.name
                    ),
                );
            } else if !terminal && i == last {
                self.err(
                    &p,
                    format!(
                        "Error: non-terminal filter named {} of type {kind} is the last filter in a http filter chain.",
                        f.name
                    ),
                );
            }
            if let Some(HttpFilterConfig::HealthCheck(hc)) = &f.typed_config {
                for (field, message) in crate::health_check::check_filter(hc) {
                    self.err(&p.f("typed_config").f(&field), message);
                }
            }
            if let Some(HttpFilterConfig::ExtAuthz(a)) = &f.typed_config {
                authz_filters.insert(f.name.as_str());
                self.ext_authz(&p.f("typed_config"), a);
            }
        }
        match &h.route_config {
            None => self.err(
                &p.f("route_config"),
                "one of route_config, rds, scoped_routes is required (sluice supports an inline route_config only)",
            ),
            Some(rc) => self.route_config(&p.f("route_config"), rc, &authz_filters),
        }
    }

    fn ext_authz(&mut self, p: &P, a: &ExtAuthz) {
        self.one_of(
            p,
            &[
                ("grpc_service", a.grpc_service.is_some()),
                ("http_service", a.http_service.is_some()),
            ],
            true,
        );
        if let Some(g) = &a.grpc_service {
            let gp = p.f("grpc_service");
            match &g.envoy_grpc {
                None => self.err(
                    &gp,
                    "missing field \"envoy_grpc\" (google_grpc is not supported by sluice)",
                ),
                Some(e) => {
                    if let Some(a) = &e.authority {
                        self.header_text(&gp.f("envoy_grpc").f("authority"), a);
                        if a.len() > MAX_HEADER_BYTES {
                            self.err(
                                &gp.f("envoy_grpc").f("authority"),
                                "value length must be at most 16384 bytes",
                            );
                        }
                    }
                    if !self.clusters.contains(e.cluster_name.as_str()) {
                        self.err(
                            &gp.f("envoy_grpc").f("cluster_name"),
                            format!("Unknown gRPC client cluster '{}'", e.cluster_name),
                        );
                    }
                }
            }
        }
        if let Some(h) = &a.http_service {
            let up = p.f("http_service").f("server_uri");
            if h.server_uri.timeout.as_std() >= std::time::Duration::from_secs(1 << 32) {
                self.err(
                    &up.f("timeout"),
                    "value must be inside range [0s, 1193046h28m16s)",
                );
            }
            self.non_empty(&up.f("uri"), &h.server_uri.uri);
            self.non_empty(&up.f("cluster"), &h.server_uri.cluster);
            let hp = p.f("http_service");
            if let Some(r) = &h.authorization_request {
                self.list_matcher(
                    &hp.f("authorization_request").f("allowed_headers"),
                    &r.allowed_headers,
                );
            }
            if let Some(r) = &h.authorization_response {
                let rp = hp.f("authorization_response");
                for (field, l) in [
                    ("allowed_upstream_headers", &r.allowed_upstream_headers),
                    (
                        "allowed_upstream_headers_to_append",
                        &r.allowed_upstream_headers_to_append,
                    ),
                    ("allowed_client_headers", &r.allowed_client_headers),
                    (
                        "allowed_client_headers_on_success",
                        &r.allowed_client_headers_on_success,
                    ),
                ] {
                    self.list_matcher(&rp.f(field), l);
                }
            }
        }
        if let Some(s) = &a.status_on_error {
            if !STATUS_CODES.contains(&s.code) {
                self.err(
                    &p.f("status_on_error").f("code"),
                    "value must be one of the defined enum values",
                );
            }
        }
        if let Some(b) = &a.with_request_body {
            if b.max_request_bytes == 0 {
                self.err(
                    &p.f("with_request_body").f("max_request_bytes"),
                    "value must be greater than 0",
                );
            }
        }
        self.list_matcher(&p.f("allowed_headers"), &a.allowed_headers);
        self.list_matcher(&p.f("disallowed_headers"), &a.disallowed_headers);
    }

    // ---- route tables ----

    fn route_config(&mut self, p: &P, rc: &RouteConfiguration, authz_filters: &HashSet<&str>) {
        let scope = RouteScope {
            name: rc.name.as_deref().unwrap_or(""),
            validate_clusters: rc.validate_clusters.unwrap_or(true),
            max_body: rc
                .max_direct_response_body_size_bytes
                .unwrap_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES),
            authz_filters,
        };
        self.header_mutations(p, mutations!(rc));
        self.per_filter_config(
            &p.f("typed_per_filter_config"),
            &rc.typed_per_filter_config,
            &scope,
        );
        let mut domains: HashSet<String> = HashSet::new();
        let mut wildcard = false;
        let vp = p.f("virtual_hosts");
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let p = vp.i(i);
            let dp = p.f("domains");
            if vh.domains.is_empty() {
                self.err(&dp, MIN_ITEMS_1);
            }
            for (k, d) in vh.domains.iter().enumerate() {
                self.header_text(&dp.i(k), d);
                let lower = d.to_ascii_lowercase();
                if lower == "*" {
                    if wildcard {
                        self.err(
                            &dp.i(k),
                            format!(
                                "Only a single wildcard domain is permitted in route {}",
                                scope.name
                            ),
                        );
                    }
                    wildcard = true;
                } else if !domain_wildcard_ok(&lower) {
                    self.err(
                        &dp.i(k),
                        format!(
                            "invalid domain \"{d}\": a wildcard \"*\" is allowed only as the whole domain or as its \
                             first or last character (\"*.example.com\", \"*-api.example.com\", \"example.*\")"
                        ),
                    );
                } else if !domains.insert(lower.clone()) {
                    self.err(
                        &dp.i(k),
                        format!(
                            "Only unique values for domains are permitted. Duplicate entry of domain {lower} in route {}",
                            scope.name
                        ),
                    );
                }
            }
            self.virtual_host(&p, vh, &scope);
        }
    }

    fn virtual_host(&mut self, p: &P, vh: &VirtualHost, scope: &RouteScope<'_>) {
        self.non_empty(&p.f("name"), &vh.name);
        self.header_mutations(p, mutations!(vh));
        self.per_filter_config(
            &p.f("typed_per_filter_config"),
            &vh.typed_per_filter_config,
            scope,
        );
        let rp = p.f("routes");
        for (i, r) in vh.routes.iter().enumerate() {
            self.route(&rp.i(i), r, scope);
        }
    }

    fn route(&mut self, p: &P, r: &Route, scope: &RouteScope<'_>) {
        self.route_match(&p.f("match"), &r.match_);
        self.one_of(
            p,
            &[
                ("route", r.route.is_some()),
                ("redirect", r.redirect.is_some()),
                ("direct_response", r.direct_response.is_some()),
            ],
            true,
        );
        self.header_mutations(p, mutations!(r));
        self.per_filter_config(
            &p.f("typed_per_filter_config"),
            &r.typed_per_filter_config,
            scope,
        );
        if let Some(a) = &r.route {
            self.route_action(&p.f("route"), a, scope);
        }
        if let Some(rd) = &r.redirect {
            let rp = p.f("redirect");
            self.one_of(
                &rp,
                &[
                    ("https_redirect", rd.https_redirect.is_some()),
                    ("scheme_redirect", rd.scheme_redirect.is_some()),
                ],
                false,
            );
            self.one_of(
                &rp,
                &[
                    ("path_redirect", rd.path_redirect.is_some()),
                    ("prefix_rewrite", rd.prefix_rewrite.is_some()),
                    ("regex_rewrite", rd.regex_rewrite.is_some()),
                ],
                false,
            );
            for (field, v) in [
                ("host_redirect", &rd.host_redirect),
                ("path_redirect", &rd.path_redirect),
                ("prefix_rewrite", &rd.prefix_rewrite),
            ] {
                if let Some(v) = v {
                    self.header_text(&rp.f(field), v);
                }
            }
            if rd.port_redirect.is_some_and(|port| port > 65535) {
                self.err(
                    &rp.f("port_redirect"),
                    "value must be less than or equal to 65535",
                );
            }
            if let Some(rr) = &rd.regex_rewrite {
                self.regex_rewrite(&rp.f("regex_rewrite"), rr);
            }
        }
        if let Some(d) = &r.direct_response {
            let dp = p.f("direct_response");
            if !(200..600).contains(&d.status) {
                self.err(&dp.f("status"), "value must be inside range [200, 600)");
            }
            if let Some(body) = &d.body {
                let before = self.errors.len();
                self.data_source(&dp.f("body"), body);
                if self.errors.len() == before {
                    let size = body.load().map(|b| b.len()).unwrap_or(0);
                    if size > scope.max_body as usize {
                        self.err(
                            &dp.f("body"),
                            format!(
                                "response body size is {size} bytes; maximum is {}",
                                scope.max_body
                            ),
                        );
                    }
                }
            }
        }
    }

    fn route_match(&mut self, p: &P, m: &RouteMatch) {
        self.one_of(
            p,
            &[
                ("prefix", m.prefix.is_some()),
                ("path", m.path.is_some()),
                ("safe_regex", m.safe_regex.is_some()),
                ("path_separated_prefix", m.path_separated_prefix.is_some()),
                ("connect_matcher", m.connect_matcher.is_some()),
            ],
            true,
        );
        if let Some(s) = &m.path_separated_prefix {
            if !s.starts_with('/') || s.ends_with('/') || s.contains(['?', '#']) {
                self.err(
                    &p.f("path_separated_prefix"),
                    format!("invalid path_separated_prefix \"{s}\": it must start with \"/\", must not end with \"/\" and must not contain \"?\" or \"#\""),
                );
            }
        }
        if let Some(r) = &m.safe_regex {
            self.regex_matcher(&p.f("safe_regex"), r);
        }
        let hp = p.f("headers");
        for (i, h) in m.headers.iter().enumerate() {
            let p = hp.i(i);
            self.non_empty(&p.f("name"), &h.name);
            self.header_text(&p.f("name"), &h.name);
            self.one_of(
                &p,
                &[
                    ("exact_match", h.exact_match.is_some()),
                    ("safe_regex_match", h.safe_regex_match.is_some()),
                    ("range_match", h.range_match.is_some()),
                    ("present_match", h.present_match.is_some()),
                    ("prefix_match", h.prefix_match.is_some()),
                    ("suffix_match", h.suffix_match.is_some()),
                    ("contains_match", h.contains_match.is_some()),
                    ("string_match", h.string_match.is_some()),
                ],
                false,
            );
            if let Some(r) = &h.safe_regex_match {
                self.regex_matcher(&p.f("safe_regex_match"), r);
            }
            if let Some(s) = &h.string_match {
                self.string_matcher(&p.f("string_match"), s);
            }
        }
        let qp = p.f("query_parameters");
        for (i, q) in m.query_parameters.iter().enumerate() {
            let p = qp.i(i);
            self.non_empty(&p.f("name"), &q.name);
            if q.name.len() > 1024 {
                self.err(&p.f("name"), "value length must be at most 1024 bytes");
            }
            self.one_of(
                &p,
                &[
                    ("string_match", q.string_match.is_some()),
                    ("present_match", q.present_match.is_some()),
                ],
                false,
            );
            if let Some(s) = &q.string_match {
                self.string_matcher(&p.f("string_match"), s);
            }
        }
    }

    fn route_action(&mut self, p: &P, a: &RouteAction, scope: &RouteScope<'_>) {
        self.one_of(
            p,
            &[
                ("cluster", a.cluster.is_some()),
                ("cluster_header", a.cluster_header.is_some()),
                ("weighted_clusters", a.weighted_clusters.is_some()),
            ],
            true,
        );
        if let Some(c) = &a.cluster {
            if c.is_empty() {
                self.err(&p.f("cluster"), MIN_LEN_1);
            } else if scope.validate_clusters && !self.clusters.contains(c.as_str()) {
                self.err(&p.f("cluster"), format!("route: unknown cluster '{c}'"));
            }
        }
        if let Some(h) = &a.cluster_header {
            self.non_empty(&p.f("cluster_header"), h);
        }
        for (field, v) in [
            ("cluster_header", &a.cluster_header),
            ("prefix_rewrite", &a.prefix_rewrite),
            ("host_rewrite_literal", &a.host_rewrite_literal),
            ("host_rewrite_header", &a.host_rewrite_header),
        ] {
            if let Some(v) = v {
                self.header_text(&p.f(field), v);
            }
        }
        if let Some(w) = &a.weighted_clusters {
            let wp = p.f("weighted_clusters");
            let cp = wp.f("clusters");
            if w.clusters.is_empty() {
                self.err(&cp, MIN_ITEMS_1);
            }
            let mut sum: u64 = 0;
            for (i, c) in w.clusters.iter().enumerate() {
                let p = cp.i(i);
                sum += u64::from(c.weight.unwrap_or(0));
                if c.name.is_empty() {
                    self.err(&p.f("name"), MIN_LEN_1);
                } else if scope.validate_clusters && !self.clusters.contains(c.name.as_str()) {
                    self.err(
                        &p.f("name"),
                        format!("route: unknown weighted cluster '{}'", c.name),
                    );
                }
                self.header_mutations(&p, mutations!(c));
            }
            match w.total_weight {
                Some(t) if u64::from(t) != sum => self.err(
                    &wp.f("total_weight"),
                    format!("Sum of weights in the weighted_cluster should add up to {t}"),
                ),
                _ if sum == 0 && !w.clusters.is_empty() => self.err(
                    &wp,
                    "Sum of weights in the weighted_cluster must be greater than 0.",
                ),
                _ => {}
            }
        }
        if a.prefix_rewrite.is_some() && a.regex_rewrite.is_some() {
            self.err(p, "Cannot specify both prefix_rewrite and regex_rewrite");
        }
        if let Some(r) = &a.regex_rewrite {
            self.regex_rewrite(&p.f("regex_rewrite"), r);
        }
        self.one_of(
            p,
            &[
                ("host_rewrite_literal", a.host_rewrite_literal.is_some()),
                ("auto_host_rewrite", a.auto_host_rewrite.is_some()),
                ("host_rewrite_header", a.host_rewrite_header.is_some()),
            ],
            false,
        );
        let hp = p.f("hash_policy");
        for (i, h) in a.hash_policy.iter().enumerate() {
            let p = hp.i(i);
            self.one_of(
                &p,
                &[
                    ("header", h.header.is_some()),
                    ("cookie", h.cookie.is_some()),
                    ("connection_properties", h.connection_properties.is_some()),
                    ("query_parameter", h.query_parameter.is_some()),
                ],
                true,
            );
            if let Some(hh) = &h.header {
                self.non_empty(&p.f("header").f("header_name"), &hh.header_name);
                self.header_text(&p.f("header").f("header_name"), &hh.header_name);
            }
        }
    }

    fn per_filter_config(&mut self, p: &P, map: &TypedPerFilterConfig, scope: &RouteScope<'_>) {
        for (key, v) in map {
            let kp = p.f(key);
            match v {
                PerFilterConfig::ExtAuthz(per) => {
                    if key != EXT_AUTHZ_FILTER && !scope.authz_filters.contains(key.as_str()) {
                        self.err(
                            &kp,
                            format!(
                                "the key \"{key}\" names no ext_authz filter of this connection manager's http_filters"
                            ),
                        );
                    }
                    self.ext_authz_per_route(&kp, per);
                }
            }
        }
    }

    fn ext_authz_per_route(&mut self, p: &P, per: &ExtAuthzPerRoute) {
        self.one_of(
            p,
            &[
                ("disabled", per.disabled.is_some()),
                ("check_settings", per.check_settings.is_some()),
            ],
            true,
        );
        if per.disabled == Some(false) {
            self.err(&p.f("disabled"), "value must equal true");
        }
        if let Some(b) = per
            .check_settings
            .as_ref()
            .and_then(|c| c.with_request_body.as_ref())
        {
            if b.max_request_bytes == 0 {
                self.err(
                    &p.f("check_settings")
                        .f("with_request_body")
                        .f("max_request_bytes"),
                    "value must be greater than 0",
                );
            }
        }
    }

    // ---- clusters ----

    fn cluster(&mut self, p: &P, c: &Cluster) {
        self.non_empty(&p.f("name"), &c.name);
        if matches!(c.type_, DiscoveryType::Eds | DiscoveryType::OriginalDst) {
            self.not_supported_value(&p.f("type"), &c.type_);
        }
        if matches!(
            c.lb_policy,
            LbPolicy::ClusterProvided | LbPolicy::LoadBalancingPolicyConfig
        ) {
            self.not_supported_value(&p.f("lb_policy"), &c.lb_policy);
        }
        if c.connect_timeout.is_some_and(|d| d.is_zero()) {
            self.err(&p.f("connect_timeout"), "value must be greater than 0s");
        }
        if c.dns_refresh_rate
            .is_some_and(|d| d.as_std() <= std::time::Duration::from_millis(1))
        {
            self.err(&p.f("dns_refresh_rate"), "value must be greater than 1ms");
        }
        if let Some(r) = &c.dns_failure_refresh_rate {
            let rp = p.f("dns_failure_refresh_rate");
            if r.base_interval.as_std() <= MS {
                self.err(&rp.f("base_interval"), "value must be greater than 1ms");
            }
            if r.max_interval.is_some_and(|d| d.as_std() <= MS) {
                self.err(&rp.f("max_interval"), "value must be greater than 1ms");
            }
        }
        if let Some(o) = &c.http2_protocol_options {
            self.http2_options(&p.f("http2_protocol_options"), o);
        }
        if let Some(o) = &c.common_http_protocol_options {
            self.common_http_options(&p.f("common_http_protocol_options"), o);
        }
        self.endpoints(p, c);
        for (field, message) in crate::health_check::check_cluster(c) {
            self.err(&p.f(&field), message);
        }
        self.lb_config(p, c);
        self.protocol_options(p, c);
        self.upstream_protocol_limits(p, c);
        if let Some(cb) = &c.circuit_breakers {
            let tp = p.f("circuit_breakers").f("thresholds");
            let mut seen = HashSet::new();
            for (i, t) in cb.thresholds.iter().enumerate() {
                if !seen.insert(enum_name(&t.priority)) {
                    self.err(
                        &tp.i(i).f("priority"),
                        format!(
                            "at most one threshold per priority; {} appears more than once",
                            enum_name(&t.priority)
                        ),
                    );
                }
            }
        }
        if let Some(ts) = &c.transport_socket {
            self.transport_socket(&p.f("transport_socket"), ts, false);
        }
        if let Some(dns) = &c.typed_dns_resolver_config {
            self.dns_resolver(&p.f("typed_dns_resolver_config"), dns);
        }
    }

    fn endpoints(&mut self, p: &P, c: &Cluster) {
        let lp = p.f("load_assignment");
        let Some(la) = &c.load_assignment else {
            if c.type_ == DiscoveryType::LogicalDns {
                self.err(p, "LOGICAL_DNS clusters must have a single host");
            }
            return;
        };
        self.non_empty(&lp.f("cluster_name"), &la.cluster_name);
        if la.policy.as_ref().is_some_and(|p| p.overprovisioning_factor == Some(0)) {
            self.err(&lp.f("policy").f("overprovisioning_factor"), "value must be greater than 0");
        }
        let rule = match c.type_ {
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => AddrRule::HostWithPort,
            _ => AddrRule::Ip,
        };
        let ep = lp.f("endpoints");
        for (i, group) in la.endpoints.iter().enumerate() {
            let gp = ep.i(i);
            if group.priority > 128 {
                self.err(&gp.f("priority"), "value must be less than or equal to 128");
            }
            if group.load_balancing_weight == Some(0) {
                self.err(
                    &gp.f("load_balancing_weight"),
                    "value must be greater than or equal to 1",
                );
            }
            let lbp = gp.f("lb_endpoints");
            for (k, e) in group.lb_endpoints.iter().enumerate() {
                let p = lbp.i(k);
                if e.load_balancing_weight == Some(0) {
                    self.err(
                        &p.f("load_balancing_weight"),
                        "value must be greater than or equal to 1",
                    );
                }
                match &e.endpoint {
                    Some(endpoint) => {
                        self.address(&p.f("endpoint").f("address"), &endpoint.address, rule)
                    }
                    None => self.err(&p, "missing field \"endpoint\""),
                }
            }
        }
        if c.type_ == DiscoveryType::LogicalDns
            && (la.endpoints.len() != 1 || la.endpoints[0].lb_endpoints.len() != 1)
        {
            self.err(&lp, "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint");
        }
    }

    fn lb_config(&mut self, p: &P, c: &Cluster) {
        if c.common_lb_config.as_ref().is_some_and(|l| l.locality_weighted_lb_config.is_some())
            && matches!(c.lb_policy, crate::cluster::LbPolicy::RingHash | crate::cluster::LbPolicy::Maglev)
        {
            self.err(
                &p.f("common_lb_config").f("locality_weighted_lb_config"),
                format!("{NOT_SUPPORTED} with RING_HASH or MAGLEV"),
            );
        }
        const MAX_RING: u64 = 8_388_608;
        const MAX_MAGLEV: u64 = 5_000_011;
        if let Some(r) = &c.ring_hash_lb_config {
            let rp = p.f("ring_hash_lb_config");
            for (field, v) in [
                ("minimum_ring_size", r.minimum_ring_size),
                ("maximum_ring_size", r.maximum_ring_size),
            ] {
                if v.is_some_and(|v| v > MAX_RING) {
                    self.err(
                        &rp.f(field),
                        format!("value must be less than or equal to {MAX_RING}"),
                    );
                }
            }
            // sluice's ring hashes with xxHash (Envoy's default); MurmurHash2 is not implemented.
            if let Some(f @ crate::cluster::RingHashFunction::MurmurHash2) = r.hash_function {
                self.not_supported_value(&rp.f("hash_function"), &f);
            }
            let min = r.minimum_ring_size.unwrap_or(1024);
            let max = r.maximum_ring_size.unwrap_or(MAX_RING);
            if min > max {
                self.err(
                    &rp,
                    format!("ring hash: minimum_ring_size ({min}) > maximum_ring_size ({max})"),
                );
            }
        }
        if let Some(size) = c.maglev_lb_config.as_ref().and_then(|m| m.table_size) {
            let tp = p.f("maglev_lb_config").f("table_size");
            if size > MAX_MAGLEV {
                self.err(
                    &tp,
                    format!("value must be less than or equal to {MAX_MAGLEV}"),
                );
            } else if !is_prime(size) {
                self.err(&tp, "The table size of maglev must be prime number");
            }
        }
        if c.least_request_lb_config
            .as_ref()
            .and_then(|l| l.choice_count)
            .is_some_and(|n| n < 2)
        {
            self.err(
                &p.f("least_request_lb_config").f("choice_count"),
                "value must be greater than or equal to 2",
            );
        }
    }

    fn protocol_options(&mut self, p: &P, c: &Cluster) {
        let op = p.f("typed_extension_protocol_options");
        for (key, v) in &c.typed_extension_protocol_options {
            let kp = op.f(key);
            if key != v.message_name() {
                self.err(
                    &kp,
                    format!(
                        "Didn't find a registered network or http filter or protocol options implementation for name: '{key}'"
                    ),
                );
            }
            match v {
                ProtocolOptions::Http(h) => self.upstream_http_options(&kp, h),
            }
        }
        if c.upstream_http_options().is_some() {
            for (field, set) in [
                ("http_protocol_options", c.http_protocol_options.is_some()),
                ("http2_protocol_options", c.http2_protocol_options.is_some()),
                (
                    "common_http_protocol_options",
                    c.common_http_protocol_options.is_some(),
                ),
            ] {
                if set {
                    self.err(
                        &p.f(field),
                        format!("this deprecated field cannot be combined with typed_extension_protocol_options \
                                 ({HTTP_PROTOCOL_OPTIONS_KEY}); set it there"),
                    );
                }
            }
        }
    }

    /// The HTTP protocol options a cluster shares with the connection manager but whose upstream
    /// side sluice does not implement: refused at their path when set (the upstream HTTP/1.1 and
    /// HTTP/2 clients are hyper's, with sluice's pool).
    fn upstream_protocol_limits(&mut self, p: &P, c: &Cluster) {
        let mut h1: Vec<(P, &Http1ProtocolOptions)> = Vec::new();
        let mut h2: Vec<(P, &Http2ProtocolOptions)> = Vec::new();
        let mut common: Vec<(P, &CommonHttpProtocolOptions)> = Vec::new();
        if let Some(o) = &c.http_protocol_options {
            h1.push((p.f("http_protocol_options"), o));
        }
        if let Some(o) = &c.http2_protocol_options {
            h2.push((p.f("http2_protocol_options"), o));
        }
        if let Some(o) = &c.common_http_protocol_options {
            common.push((p.f("common_http_protocol_options"), o));
        }
        for (key, v) in &c.typed_extension_protocol_options {
            let kp = p.f("typed_extension_protocol_options").f(key);
            let ProtocolOptions::Http(u) = v;
            if let Some(o) = &u.common_http_protocol_options {
                common.push((kp.f("common_http_protocol_options"), o));
            }
            if let Some(e) = &u.explicit_http_config {
                let ep = kp.f("explicit_http_config");
                if let Some(o) = &e.http_protocol_options {
                    h1.push((ep.f("http_protocol_options"), o));
                }
                if let Some(o) = &e.http2_protocol_options {
                    h2.push((ep.f("http2_protocol_options"), o));
                }
            }
            if let Some(d) = &u.use_downstream_protocol_config {
                let dp = kp.f("use_downstream_protocol_config");
                if let Some(o) = &d.http_protocol_options {
                    h1.push((dp.f("http_protocol_options"), o));
                }
                if let Some(o) = &d.http2_protocol_options {
                    h2.push((dp.f("http2_protocol_options"), o));
                }
            }
        }
        let upstream = format!("{NOT_SUPPORTED} for upstream connections");
        for (hp, o) in h1 {
            for (field, set) in [
                ("accept_http_10", o.accept_http_10),
                ("default_host_for_http_10", o.default_host_for_http_10.is_some()),
                ("allow_absolute_url", o.allow_absolute_url.is_some()),
                ("enable_trailers", o.enable_trailers),
                ("allow_chunked_length", o.allow_chunked_length),
            ] {
                if set {
                    self.err(&hp.f(field), upstream.clone());
                }
            }
        }
        for (hp, o) in h2 {
            for (field, set) in [
                ("max_concurrent_streams", o.max_concurrent_streams.is_some()),
                ("allow_connect", o.allow_connect),
            ] {
                if set {
                    self.err(&hp.f(field), upstream.clone());
                }
            }
        }
        for (cp, o) in &common {
            for (field, set) in [
                ("max_headers_count", o.max_headers_count.is_some()),
                ("headers_with_underscores_action", o.headers_with_underscores_action.is_some()),
                ("max_stream_duration", o.max_stream_duration.is_some()),
            ] {
                if set {
                    self.err(&cp.f(field), upstream.clone());
                }
            }
        }
        // Envoy: the deprecated cluster field and the protocol options' one exclude each other.
        if c.max_requests_per_connection.is_some() && common.iter().any(|(_, o)| o.max_requests_per_connection.is_some()) {
            self.err(
                &p.f("max_requests_per_connection"),
                "Only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified",
            );
        }
        if let Some(u) = &c.upstream_connection_options {
            if u.set_local_interface_name_on_upstream_connections {
                self.err(
                    &p.f("upstream_connection_options").f("set_local_interface_name_on_upstream_connections"),
                    NOT_SUPPORTED,
                );
            }
        }
    }

    fn upstream_http_options(&mut self, p: &P, h: &UpstreamHttpProtocolOptions) {
        self.one_of(
            p,
            &[
                ("explicit_http_config", h.explicit_http_config.is_some()),
                (
                    "use_downstream_protocol_config",
                    h.use_downstream_protocol_config.is_some(),
                ),
            ],
            true,
        );
        if let Some(o) = &h.common_http_protocol_options {
            self.common_http_options(&p.f("common_http_protocol_options"), o);
        }
        for (field, o) in [
            (
                "explicit_http_config",
                h.explicit_http_config
                    .as_ref()
                    .and_then(|e| e.http2_protocol_options.as_ref()),
            ),
            (
                "use_downstream_protocol_config",
                h.use_downstream_protocol_config
                    .as_ref()
                    .and_then(|e| e.http2_protocol_options.as_ref()),
            ),
        ] {
            if let Some(o) = o {
                self.http2_options(&p.f(field).f("http2_protocol_options"), o);
            }
        }
        if let Some(e) = &h.explicit_http_config {
            self.one_of(
                &p.f("explicit_http_config"),
                &[
                    ("http_protocol_options", e.http_protocol_options.is_some()),
                    ("http2_protocol_options", e.http2_protocol_options.is_some()),
                ],
                true,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(5_000_011));
        assert!(is_prime(2));
        assert!(!is_prime(1));
        assert!(!is_prime(65536));
        assert!(!is_prime(0));
    }

    #[test]
    fn domain_wildcards() {
        for ok in ["*", "*.a.test", "*-api.a.test", "a.*", "a-*", "exact.test"] {
            assert!(domain_wildcard_ok(ok), "{ok}");
        }
        for bad in ["a.*.test", "*a*", "**", "a*b"] {
            assert!(!domain_wildcard_ok(bad), "{bad}");
        }
    }

    #[test]
    #[allow(clippy::invalid_regex)]
    fn regex_errors_are_one_line() {
        let e = regex::Regex::new("[0-9+$").unwrap_err();
        let s = regex_error_summary(&e);
        assert!(!s.contains('\n'), "{s}");
        assert_eq!(s, "unclosed character class");
    }

    #[test]
    fn one_of_messages() {
        let mut ctx = Ctx {
            errors: Vec::new(),
            clusters: HashSet::new(),
        };
        let p = P::default().f("x");
        assert!(!ctx.one_of(&p, &[("a", false), ("b", false)], true));
        assert!(ctx.one_of(&p, &[("a", false), ("b", false)], false));
        assert!(!ctx.one_of(&p, &[("a", true), ("b", true), ("c", false)], false));
        assert!(ctx.one_of(&p, &[("a", true), ("b", false)], true));
        let msgs: Vec<String> = ctx.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "x: one of a, b is required",
                "x: only one of a, b, c may be set (found a, b)"
            ]
        );
    }
}
