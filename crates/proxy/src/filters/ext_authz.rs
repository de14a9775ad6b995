//! `envoy.filters.http.ext_authz`: ask an external authorization service about every request.
//!
//! The gRPC variant calls `envoy.service.auth.v3.Authorization/Check` over the HTTP/2 cluster
//! named in `grpc_service.envoy_grpc.cluster_name` (through [`Cluster::send`], so the cluster's
//! discovery, load balancing and connection pool apply). The `CheckRequest` is filled the way
//! Envoy 1.40 fills it (see `docs/envoy-observations.md` and the ext_authz tests); the answer is
//! applied as Envoy applies it: OK → request/response header and query mutations, denied → the
//! service's status/headers/body (403 by default), error/timeout → `status_on_error` unless
//! `failure_mode_allow`. The raw-HTTP variant (`http_service`) is supported as well.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3 as corepb;
use envoy_types::pb::envoy::service::auth::v3 as authpb;
use envoy_types::pb::google::protobuf::Timestamp;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use regex::Regex;
use sluice_config::core::{HeaderValue as HeaderValueCfg, ListStringMatcher, RegexMatcher, StringMatcher};
use sluice_config::ext_authz::{
    AuthorizationRequest, AuthorizationResponse, BufferSettings, CheckSettings, EnvoyGrpc, ExtAuthz, ExtAuthzPerRoute, GrpcService,
    HttpService as HttpServiceCfg, HttpStatus, HttpUri,
};

use crate::config_audit::{refused_at_load, without_effect};

use super::{BoxFuture, FilterContext, FilterFactoryContext, FilterOutcome, HttpFilter};
use crate::body::{Body, BoxError};
use crate::http::local_reply::{LocalReply, LocalReplyInfo, PAYLOAD_TOO_LARGE};
use crate::stream_info::ResponseFlags;
use crate::stats::{Counter, Store};
use crate::upstream::{ClusterManager, LbContext};

/// The gRPC method path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Envoy's default `grpc_service.timeout` for ext_authz.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

static PARTIAL_BODY: &str = "x-envoy-auth-partial-body";
static FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");
static HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

// ---------------------------------------------------------------------------------------------
// Configuration, compiled once.

/// `ExtAuthzPerRoute` of one route, virtual host, route table or weighted cluster.
#[derive(Debug, Clone, Default)]
pub struct PerRoute {
    /// `disabled: true`: no check for this route.
    pub disabled: bool,
    /// `check_settings.context_extensions` (the most specific level wins per key).
    pub context_extensions: BTreeMap<String, String>,
    /// The request body settings of this level: `Some(None)` with
    /// `disable_request_body_buffering`, `Some(Some(b))` with its own `with_request_body`,
    /// `None` to keep the filter's.
    pub body: Option<Option<BufferSettings>>,
}

impl PerRoute {
    pub fn build(cfg: &ExtAuthzPerRoute) -> PerRoute {
        let ExtAuthzPerRoute { disabled, check_settings } = cfg;
        let (context_extensions, body) = match check_settings {
            Some(CheckSettings {
                context_extensions,
                disable_request_body_buffering,
                with_request_body,
                grpc_service,
                http_service,
            }) => {
                refused_at_load(grpc_service);
                refused_at_load(http_service);
                let body = if *disable_request_body_buffering { Some(None) } else { with_request_body.clone().map(Some) };
                (context_extensions.clone(), body)
            }
            None => (BTreeMap::new(), None),
        };
        PerRoute { disabled: *disabled == Some(true), context_extensions, body }
    }
}

/// One compiled string pattern of a `ListStringMatcher`, applied to lower-case header names.
#[derive(Debug)]
enum Pat {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled `ListStringMatcher` over header names.
#[derive(Debug, Default)]
pub struct NameMatcher {
    pats: Vec<(Pat, bool)>,
}

impl NameMatcher {
    pub fn build(l: &ListStringMatcher) -> anyhow::Result<Self> {
        let ListStringMatcher { patterns } = l;
        let mut pats = Vec::with_capacity(patterns.len());
        for m in patterns {
            let StringMatcher { exact, prefix, suffix, safe_regex, contains, custom, ignore_case } = m;
            refused_at_load(custom);
            let ic = *ignore_case;
            let norm = |s: &str| {
                if ic {
                    s.to_ascii_lowercase()
                } else {
                    s.to_string()
                }
            };
            let p = match (exact, prefix, suffix, contains, safe_regex) {
                (Some(s), None, None, None, None) => Pat::Exact(norm(s)),
                (None, Some(s), None, None, None) => Pat::Prefix(norm(s)),
                (None, None, Some(s), None, None) => Pat::Suffix(norm(s)),
                (None, None, None, Some(s), None) => Pat::Contains(norm(s)),
                (None, None, None, None, Some(RegexMatcher { google_re2, regex })) => {
                    without_effect(google_re2, "deprecated RE2 program-size settings; sluice's regex engine has its own limits");
                    let src = if ic { format!("(?i)^(?:{regex})$") } else { format!("^(?:{regex})$") };
                    Pat::Regex(Regex::new(&src)?)
                }
                _ => anyhow::bail!("string matcher needs exactly one pattern"),
            };
            pats.push((p, ic));
        }
        Ok(NameMatcher { pats })
    }

    /// `name` is a lower-case header name (or pseudo-header).
    pub fn matches(&self, name: &str) -> bool {
        self.pats.iter().any(|(p, _)| match p {
            Pat::Exact(s) => name == s,
            Pat::Prefix(s) => name.starts_with(s.as_str()),
            Pat::Suffix(s) => name.ends_with(s.as_str()),
            Pat::Contains(s) => name.contains(s.as_str()),
            Pat::Regex(r) => r.is_match(name),
        })
    }
}

fn matcher(l: &Option<ListStringMatcher>) -> anyhow::Result<Option<NameMatcher>> {
    l.as_ref().map(NameMatcher::build).transpose()
}

enum Service {
    Grpc {
        cluster: String,
        authority: HeaderValue,
        timeout: Duration,
        grpc_timeout: HeaderValue,
        /// `grpc_service.initial_metadata`: headers of every check call.
        metadata: Vec<(HeaderName, HeaderValue)>,
    },
    Http(Box<HttpService>),
}

struct HttpService {
    cluster: String,
    path_prefix: String,
    timeout: Duration,
    allowed_headers: Option<NameMatcher>,
    headers_to_add: Vec<(HeaderName, HeaderValue)>,
    upstream: Option<NameMatcher>,
    upstream_append: Option<NameMatcher>,
    client: Option<NameMatcher>,
    client_on_success: Option<NameMatcher>,
}

struct Stats {
    ok: Counter,
    denied: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
    disabled: Counter,
}

/// `cluster.<routed>.ext_authz.[<stat_prefix>.]*`, created on first use per routed cluster.
struct ClusterAuthzStats {
    ok: Counter,
    denied: Counter,
    error: Counter,
    failure_mode_allowed: Counter,
}

/// The ext_authz filter of one connection manager.
pub struct ExtAuthzFilter {
    service: Service,
    clusters: Arc<ClusterManager>,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: u16,
    with_request_body: Option<BufferSettings>,
    clear_route_cache: bool,
    allowed_headers: Option<NameMatcher>,
    disallowed_headers: Option<NameMatcher>,
    include_peer_certificate: bool,
    include_tls_session: bool,
    charge_cluster_response_stats: bool,
    server_name: HeaderValue,
    stats: Stats,
    store: Store,
    /// `ext_authz.` or `ext_authz.<stat_prefix>.`
    stat_infix: String,
    cluster_stats: RwLock<HashMap<String, Arc<ClusterAuthzStats>>>,
}

fn header_name(key: &str) -> anyhow::Result<HeaderName> {
    HeaderName::from_bytes(key.as_bytes())
        .map_err(|_| anyhow::anyhow!("invalid header name \"{key}\""))
}

impl ExtAuthzFilter {
    pub fn build(cfg: &ExtAuthz, ctx: &FilterFactoryContext<'_>) -> anyhow::Result<Self> {
        let ExtAuthz {
            grpc_service,
            http_service,
            transport_api_version,
            failure_mode_allow,
            failure_mode_allow_header_add,
            with_request_body,
            clear_route_cache,
            status_on_error,
            allowed_headers,
            disallowed_headers,
            include_peer_certificate,
            include_tls_session,
            stat_prefix,
            metadata_context_namespaces,
            charge_cluster_response_stats,
            encode_raw_headers,
            validate_mutations,
            filter_enabled,
            filter_enabled_metadata,
            deny_at_disable,
            decoder_header_mutation_rules,
        } = cfg;
        for refused in [
            metadata_context_namespaces,
            encode_raw_headers,
            validate_mutations,
            filter_enabled,
            filter_enabled_metadata,
            deny_at_disable,
            decoder_header_mutation_rules,
        ] {
            refused_at_load(refused);
        }
        // AUTO, V2 and V3 all speak V3 in Envoy 1.40 (the validator refuses nothing else).
        without_effect(transport_api_version, "Envoy 1.40 speaks the V3 API whatever it says");
        let service = match (grpc_service, http_service) {
            (Some(GrpcService { envoy_grpc, google_grpc, timeout, initial_metadata, retry_policy }), None) => {
                refused_at_load(google_grpc);
                refused_at_load(retry_policy);
                let Some(EnvoyGrpc { cluster_name, authority, retry_policy }) = envoy_grpc else {
                    anyhow::bail!("grpc_service: envoy_grpc is required (google_grpc is not supported)")
                };
                refused_at_load(retry_policy);
                let timeout = timeout.map(|d| d.as_std()).unwrap_or(DEFAULT_TIMEOUT);
                let authority = authority.as_deref().filter(|a| !a.is_empty()).unwrap_or(cluster_name);
                let mut metadata = Vec::new();
                for hv in initial_metadata {
                    let HeaderValueCfg { key, value, raw_value } = hv;
                    let raw = raw_value.as_deref().unwrap_or(value);
                    metadata.push((header_name(&key.to_ascii_lowercase())?, HeaderValue::from_str(raw)?));
                }
                Service::Grpc {
                    cluster: cluster_name.clone(),
                    authority: HeaderValue::from_str(authority).map_err(|_| {
                        anyhow::anyhow!("grpc_service.envoy_grpc: invalid authority \"{authority}\"")
                    })?,
                    timeout,
                    grpc_timeout: HeaderValue::from_str(&format!("{}m", timeout.as_millis().max(1)))?,
                    metadata,
                }
            }
            (None, Some(h)) => {
                let HttpServiceCfg { server_uri, path_prefix, authorization_request, authorization_response, retry_policy } = h;
                refused_at_load(retry_policy);
                let HttpUri { uri, cluster, timeout } = server_uri;
                // The check goes to `cluster` with the downstream host and `path_prefix` + the
                // request's path, as Envoy sends it; the URI itself is not used for the request.
                without_effect(uri, "the check goes to `cluster` with the downstream host and path_prefix + path");
                let mut headers_to_add = Vec::new();
                let mut request_allowed = None;
                if let Some(AuthorizationRequest { allowed_headers, headers_to_add: add }) = authorization_request {
                    for hv in add {
                        let HeaderValueCfg { key, value, raw_value } = hv;
                        let raw = raw_value.as_deref().unwrap_or(value);
                        headers_to_add.push((header_name(key)?, HeaderValue::from_str(raw)?));
                    }
                    request_allowed = matcher(allowed_headers)?;
                }
                let (mut upstream, mut upstream_append, mut client, mut client_on_success) = (None, None, None, None);
                if let Some(AuthorizationResponse {
                    allowed_upstream_headers,
                    allowed_upstream_headers_to_append,
                    allowed_client_headers,
                    allowed_client_headers_on_success,
                    dynamic_metadata_from_headers,
                }) = authorization_response
                {
                    refused_at_load(dynamic_metadata_from_headers);
                    upstream = matcher(allowed_upstream_headers)?;
                    upstream_append = matcher(allowed_upstream_headers_to_append)?;
                    client = matcher(allowed_client_headers)?;
                    client_on_success = matcher(allowed_client_headers_on_success)?;
                }
                Service::Http(Box::new(HttpService {
                    cluster: cluster.clone(),
                    path_prefix: path_prefix.clone(),
                    timeout: if timeout.is_zero() { DEFAULT_TIMEOUT } else { timeout.as_std() },
                    allowed_headers: match request_allowed {
                        Some(m) => Some(m),
                        None => matcher(allowed_headers)?,
                    },
                    headers_to_add,
                    upstream,
                    upstream_append,
                    client,
                    client_on_success,
                }))
            }
            _ => anyhow::bail!("exactly one of grpc_service, http_service is required"),
        };
        let stat_infix = match stat_prefix.as_deref() {
            Some(p) if !p.is_empty() => format!("ext_authz.{p}."),
            _ => "ext_authz.".to_string(),
        };
        let c = |n: &str| {
            ctx.stats
                .counter(format!("{}{stat_infix}{n}", ctx.stat_prefix))
        };
        let stats = Stats {
            ok: c("ok"),
            denied: c("denied"),
            error: c("error"),
            failure_mode_allowed: c("failure_mode_allowed"),
            disabled: c("disabled"),
        };
        Ok(ExtAuthzFilter {
            service,
            clusters: ctx.clusters.clone(),
            failure_mode_allow: *failure_mode_allow,
            failure_mode_allow_header_add: *failure_mode_allow_header_add,
            // Envoy's default is 403.
            status_on_error: status_on_error.as_ref().map_or(403, |HttpStatus { code }| *code as u16),
            with_request_body: with_request_body.clone(),
            clear_route_cache: *clear_route_cache,
            allowed_headers: matcher(allowed_headers)?,
            disallowed_headers: matcher(disallowed_headers)?,
            include_peer_certificate: *include_peer_certificate,
            include_tls_session: *include_tls_session,
            charge_cluster_response_stats: charge_cluster_response_stats.unwrap_or(true),
            server_name: ctx.server_name.clone(),
            stats,
            store: ctx.stats.clone(),
            stat_infix,
            cluster_stats: RwLock::new(HashMap::new()),
        })
    }

    /// The `disabled` counter (the filter is never runtime-disabled in sluice; kept for the stat).
    pub fn disabled_counter(&self) -> &Counter {
        &self.stats.disabled
    }

    fn cluster_stats(&self, ctx: &FilterContext) -> Option<Arc<ClusterAuthzStats>> {
        let cluster = ctx.cluster.as_ref()?;
        let prefix = cluster.stats().prefix();
        if let Some(s) = self.cluster_stats.read().unwrap().get(prefix) {
            return Some(s.clone());
        }
        let c = |n: &str| {
            self.store
                .counter(format!("{prefix}{}{n}", self.stat_infix))
        };
        let s = Arc::new(ClusterAuthzStats {
            ok: c("ok"),
            denied: c("denied"),
            error: c("error"),
            failure_mode_allowed: c("failure_mode_allowed"),
        });
        self.cluster_stats
            .write()
            .unwrap()
            .insert(prefix.to_string(), s.clone());
        Some(s)
    }

    fn local(&self, r: LocalReply) -> FilterOutcome {
        FilterOutcome::Respond(r.build(&self.server_name))
    }

    async fn run(&self, req: &mut Request<Body>, ctx: &mut FilterContext) -> FilterOutcome {
        // Envoy checks nothing for a request no route matches (its router answers 404).
        if ctx.selected.is_none() {
            return FilterOutcome::Continue;
        }
        let per = ctx.per_filter(|p| p.ext_authz.as_deref());
        if per.is_some_and(|p| p.disabled) {
            return FilterOutcome::Continue;
        }
        let buffer = match per.and_then(|p| p.body.as_ref()) {
            Some(route) => route.as_ref(),
            None => self.with_request_body.as_ref(),
        };
        let body = match buffer {
            Some(b) => match buffer_body(req, b).await {
                Ok(info) => Some(info),
                Err(BufferError::TooLarge) => {
                    return self.local(LocalReply::new(413).body("Payload Too Large").close().details(PAYLOAD_TOO_LARGE));
                }
                Err(BufferError::Read) => {
                    return self.local(LocalReply::new(400).body("Bad Request").close())
                }
            },
            None => None,
        };

        let decision = match &self.service {
            Service::Grpc {
                cluster,
                authority,
                timeout,
                grpc_timeout,
                metadata,
            } => {
                let check = self.check_request(req, ctx, body.as_ref());
                match tokio::time::timeout(
                    *timeout,
                    self.grpc_check(cluster, authority, grpc_timeout, metadata, &check),
                )
                .await
                {
                    Ok(Ok(resp)) => from_check_response(resp),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ext_authz: check failed");
                        Decision::Error(None)
                    }
                    Err(_) => {
                        tracing::debug!("ext_authz: check timed out after {timeout:?}");
                        Decision::Error(None)
                    }
                }
            }
            Service::Http(h) => {
                let rq = self.http_auth_request(h, req, ctx, body.as_ref());
                match tokio::time::timeout(h.timeout, self.http_check(h, rq)).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ext_authz: HTTP check failed");
                        Decision::Error(None)
                    }
                    Err(_) => Decision::Error(None),
                }
            }
        };
        self.apply(decision, req, ctx)
    }

    fn apply(
        &self,
        decision: Decision,
        req: &mut Request<Body>,
        ctx: &mut FilterContext,
    ) -> FilterOutcome {
        let cstats = self.cluster_stats(ctx);
        match decision {
            Decision::Ok(m) => {
                self.stats.ok.inc();
                if let Some(c) = &cstats {
                    c.ok.inc();
                }
                let mutated = m.apply(req, ctx);
                if mutated && self.clear_route_cache {
                    ctx.clear_route_cache = true;
                }
                FilterOutcome::Continue
            }
            Decision::Denied(d) => {
                self.stats.denied.inc();
                if let Some(c) = &cstats {
                    c.denied.inc();
                }
                let status = d.status.unwrap_or(403);
                if self.charge_cluster_response_stats {
                    if let Some(cluster) = &ctx.cluster {
                        cluster.stats().charge_response(status, None);
                    }
                }
                let mut resp = d.into_response(status, &self.server_name);
                LocalReplyInfo::mark(&mut resp, "ext_authz_denied", ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE);
                FilterOutcome::Respond(resp)
            }
            Decision::Error(custom) => {
                self.stats.error.inc();
                if let Some(c) = &cstats {
                    c.error.inc();
                }
                if self.failure_mode_allow {
                    self.stats.failure_mode_allowed.inc();
                    if let Some(c) = &cstats {
                        c.failure_mode_allowed.inc();
                    }
                    if self.failure_mode_allow_header_add {
                        req.headers_mut().insert(
                            FAILURE_MODE_ALLOWED.clone(),
                            HeaderValue::from_static("true"),
                        );
                    }
                    return FilterOutcome::Continue;
                }
                match custom {
                    Some(d) => {
                        let status = d.status.unwrap_or(self.status_on_error);
                        let mut resp = d.into_response(status, &self.server_name);
                        LocalReplyInfo::mark(&mut resp, "ext_authz_error", ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE);
                        FilterOutcome::Respond(resp)
                    }
                    None => self.local(
                        LocalReply::new(self.status_on_error)
                            .details("ext_authz_error")
                            .flag(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE),
                    ),
                }
            }
        }
    }

    /// The `CheckRequest` as Envoy fills it.
    fn check_request(
        &self,
        req: &Request<Body>,
        ctx: &FilterContext,
        body: Option<&BufferedBody>,
    ) -> authpb::CheckRequest {
        use authpb::attribute_context::{HttpRequest, Peer, Request as AttrRequest, TlsSession};
        let conn = &ctx.conn;
        let tls = conn.tls.as_deref();
        let mut source = Peer {
            address: Some(socket_address(conn.peer)),
            ..Default::default()
        };
        let mut destination = Peer {
            address: Some(socket_address(conn.local)),
            ..Default::default()
        };
        if let Some(t) = tls {
            destination.principal = t.local_principal.clone();
            if let Some(p) = &t.peer_principal {
                source.principal = p.clone();
            }
            if self.include_peer_certificate {
                if let Some(der) = &t.peer_certificate {
                    source.certificate = url_encoded_pem(der);
                }
            }
        }
        let parts = RequestParts::of(req, ctx);
        let mut headers = HashMap::with_capacity(req.headers().keys_len() + 4);
        let mut put = |name: &str, value: String| {
            if self.header_allowed(name) {
                headers.insert(name.to_string(), value);
            }
        };
        put(":authority", parts.host.to_string());
        put(":method", req.method().as_str().to_string());
        put(":path", parts.path.to_string());
        put(":scheme", parts.scheme.to_string());
        for name in req.headers().keys() {
            if *name == HOST {
                continue;
            }
            let mut all = req.headers().get_all(name).iter();
            let first = all.next().map(lossy).unwrap_or_default();
            let value = match all.next() {
                None => first,
                Some(second) => {
                    let mut v = first;
                    v.push(',');
                    v.push_str(&lossy(second));
                    for more in all {
                        v.push(',');
                        v.push_str(&lossy(more));
                    }
                    v
                }
            };
            put(name.as_str(), value);
        }
        let mut http = HttpRequest {
            id: ctx.stream_id.to_string(),
            method: req.method().as_str().to_string(),
            path: parts.path.to_string(),
            host: parts.host.to_string(),
            scheme: parts.scheme.to_string(),
            protocol: protocol(req.version()).to_string(),
            ..Default::default()
        };
        if let Some(b) = body {
            headers.insert(
                PARTIAL_BODY.to_string(),
                if b.partial { "true" } else { "false" }.to_string(),
            );
            http.size = b.size as i64;
            if b.pack_as_bytes {
                http.raw_body = b.sent.to_vec();
            } else {
                http.body = String::from_utf8_lossy(&b.sent).into_owned();
            }
        }
        http.headers = headers;
        let mut context_extensions = HashMap::new();
        for level in ctx.per_filter_levels() {
            if let Some(p) = level.ext_authz.as_ref() {
                for (k, v) in &p.context_extensions {
                    context_extensions.insert(k.clone(), v.clone());
                }
            }
        }
        let since = ctx
            .start_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        authpb::CheckRequest {
            attributes: Some(authpb::AttributeContext {
                source: Some(source),
                destination: Some(destination),
                request: Some(AttrRequest {
                    time: Some(Timestamp {
                        seconds: since.as_secs() as i64,
                        nanos: since.subsec_nanos() as i32,
                    }),
                    http: Some(http),
                }),
                context_extensions,
                metadata_context: Some(Default::default()),
                route_metadata_context: Some(Default::default()),
                tls_session: match tls {
                    Some(t) if self.include_tls_session => Some(TlsSession {
                        sni: t.sni.clone().unwrap_or_default(),
                    }),
                    _ => None,
                },
            }),
        }
    }

    fn header_allowed(&self, name: &str) -> bool {
        if let Some(a) = &self.allowed_headers {
            if !a.matches(name) {
                return false;
            }
        }
        if let Some(d) = &self.disallowed_headers {
            if d.matches(name) {
                return false;
            }
        }
        true
    }

    async fn grpc_check(
        &self,
        cluster_name: &str,
        authority: &HeaderValue,
        grpc_timeout: &HeaderValue,
        metadata: &[(HeaderName, HeaderValue)],
        check: &authpb::CheckRequest,
    ) -> Result<authpb::CheckResponse, String> {
        let cluster = self
            .clusters
            .get(cluster_name)
            .cloned()
            .ok_or_else(|| format!("unknown cluster '{cluster_name}'"))?;
        let len = check.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        check.encode(&mut buf).map_err(|e| e.to_string())?;
        let mut rq = Request::new(Body::full(buf.freeze()));
        *rq.method_mut() = Method::POST;
        *rq.uri_mut() = Uri::from_static(CHECK_PATH);
        *rq.version_mut() = Version::HTTP_2;
        let h = rq.headers_mut();
        h.insert(HOST, authority.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            HeaderName::from_static("grpc-timeout"),
            grpc_timeout.clone(),
        );
        for (name, value) in metadata {
            h.append(name.clone(), value.clone());
        }
        let lb = LbContext::default();
        let resp = cluster
            .send(rq, &lb)
            .await
            .map_err(|e| format!("upstream failure: {e:?}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status()));
        }
        if let Some(s) = resp.headers().get(&GRPC_STATUS) {
            // Trailers-only response.
            let code = s.to_str().unwrap_or("?");
            let msg = resp
                .headers()
                .get(&GRPC_MESSAGE)
                .map(lossy)
                .unwrap_or_default();
            if code != "0" {
                return Err(format!("grpc-status {code}: {msg}"));
            }
            return Err("grpc-status 0 without a message".into());
        }
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let code = trailers
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if code != "0" {
            let msg = trailers.get(&GRPC_MESSAGE).map(lossy).unwrap_or_default();
            return Err(format!("grpc-status {:?}: {msg}", code));
        }
        let mut data = collected.to_bytes();
        if data.len() < 5 {
            return Err("short gRPC message".into());
        }
        if data[0] != 0 {
            return Err("compressed gRPC message".into());
        }
        data.advance(1);
        let n = data.get_u32() as usize;
        if data.len() < n {
            return Err("truncated gRPC message".into());
        }
        authpb::CheckResponse::decode(data.slice(..n))
            .map_err(|e| format!("bad CheckResponse: {e}"))
    }

    /// The request to the raw-HTTP authorization service (built before any await: the
    /// downstream request is not `Sync`).
    fn http_auth_request(
        &self,
        svc: &HttpService,
        req: &Request<Body>,
        ctx: &FilterContext,
        body: Option<&BufferedBody>,
    ) -> Result<Request<Body>, String> {
        let parts = RequestParts::of(req, ctx);
        let path = format!("{}{}", svc.path_prefix, parts.path);
        let sent = body.map(|b| b.sent.clone()).unwrap_or_default();
        let len = sent.len();
        let mut rq = Request::new(Body::full(sent));
        *rq.method_mut() = req.method().clone();
        *rq.uri_mut() = Uri::try_from(path.as_str()).map_err(|e| e.to_string())?;
        *rq.version_mut() = Version::HTTP_11;
        let h = rq.headers_mut();
        h.insert(
            HOST,
            HeaderValue::from_str(parts.host).map_err(|e| e.to_string())?,
        );
        for (name, value) in req.headers() {
            if *name == HOST || *name == CONTENT_LENGTH || *name == http::header::TRANSFER_ENCODING
            {
                continue;
            }
            let default = *name == http::header::AUTHORIZATION;
            let listed = svc
                .allowed_headers
                .as_ref()
                .is_some_and(|m| m.matches(name.as_str()));
            let denied = self
                .disallowed_headers
                .as_ref()
                .is_some_and(|m| m.matches(name.as_str()));
            if (default || listed) && !denied {
                h.append(name.clone(), value.clone());
            }
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(b) = body {
            h.insert(
                HeaderName::from_static(PARTIAL_BODY),
                HeaderValue::from_static(if b.partial { "true" } else { "false" }),
            );
        }
        for (k, v) in &svc.headers_to_add {
            h.insert(k.clone(), v.clone());
        }
        Ok(rq)
    }

    async fn http_check(
        &self,
        svc: &HttpService,
        rq: Result<Request<Body>, String>,
    ) -> Result<Decision, String> {
        let rq = rq?;
        let cluster = self
            .clusters
            .get(&svc.cluster)
            .cloned()
            .ok_or_else(|| format!("unknown cluster '{}'", svc.cluster))?;
        let lb = LbContext::default();
        let resp = cluster
            .send(rq, &lb)
            .await
            .map_err(|e| format!("upstream failure: {e:?}"))?;
        let (head, rbody) = resp.into_parts();
        let rbody = rbody.collect().await.map_err(|e| e.to_string())?.to_bytes();
        // Envoy allows on 200 only; any other status (5xx included) is a denial.
        if head.status == http::StatusCode::OK {
            let mut m = OkMutations::default();
            for (name, value) in head.headers.iter() {
                if svc
                    .upstream
                    .as_ref()
                    .is_some_and(|u| u.matches(name.as_str()))
                {
                    m.headers.push((name.clone(), value.clone(), HeaderOp::Set));
                }
                if svc
                    .upstream_append
                    .as_ref()
                    .is_some_and(|u| u.matches(name.as_str()))
                {
                    m.headers
                        .push((name.clone(), value.clone(), HeaderOp::AppendJoin));
                }
                if svc
                    .client_on_success
                    .as_ref()
                    .is_some_and(|u| u.matches(name.as_str()))
                {
                    m.response_headers.push((name.clone(), value.clone()));
                }
            }
            if let Some(list) = head
                .headers
                .get(&HEADERS_TO_REMOVE)
                .and_then(|v| v.to_str().ok())
            {
                for n in list.split(',') {
                    if let Ok(n) = HeaderName::from_bytes(n.trim().as_bytes()) {
                        m.remove.push(n);
                    }
                }
            }
            Ok(Decision::Ok(m))
        } else {
            let mut headers = Vec::new();
            for (name, value) in head.headers.iter() {
                let pass = match &svc.client {
                    Some(c) => {
                        c.matches(name.as_str())
                            || *name == http::header::WWW_AUTHENTICATE
                            || *name == http::header::LOCATION
                    }
                    None => !matches!(
                        name.as_str(),
                        "host"
                            | "content-length"
                            | "transfer-encoding"
                            | "connection"
                            | "keep-alive"
                            | "date"
                            | "server"
                    ),
                };
                if pass {
                    headers.push((name.clone(), value.clone(), true));
                }
            }
            Ok(Decision::Denied(Denied {
                status: Some(head.status.as_u16()),
                headers,
                body: rbody,
            }))
        }
    }
}

impl HttpFilter for ExtAuthzFilter {
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        ctx: &'a mut FilterContext,
    ) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(self.run(req, ctx))
    }
}

// ---------------------------------------------------------------------------------------------
// The request as the check sees it.

struct RequestParts<'r> {
    path: &'r str,
    host: &'r str,
    scheme: &'r str,
}

impl<'r> RequestParts<'r> {
    fn of(req: &'r Request<Body>, ctx: &FilterContext) -> Self {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let host = match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
            Some(h) => h,
            None => req.uri().authority().map(|a| a.as_str()).unwrap_or(""),
        };
        let scheme = match req.uri().scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ if ctx.conn.tls.is_some() => "https",
            _ => "http",
        };
        RequestParts { path, host, scheme }
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn lossy(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

fn socket_address(addr: std::net::SocketAddr) -> corepb::Address {
    corepb::Address {
        address: Some(corepb::address::Address::SocketAddress(
            corepb::SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(corepb::socket_address::PortSpecifier::PortValue(
                    addr.port() as u32,
                )),
                ..Default::default()
            },
        )),
    }
}

/// The peer certificate as Envoy's `urlEncodedPemEncodedPeerCertificate` (also
/// `%DOWNSTREAM_PEER_CERT%`): PEM with `\n`, space, `+`, `/` and `=` percent-encoded.
pub fn url_encoded_pem(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Request body buffering (`with_request_body`).

struct BufferedBody {
    /// What the check sees (at most `max_request_bytes`).
    sent: Bytes,
    /// `http.size`: the body length (content-length when known, else the bytes received).
    size: u64,
    partial: bool,
    pack_as_bytes: bool,
}

enum BufferError {
    TooLarge,
    Read,
}

async fn buffer_body(
    req: &mut Request<Body>,
    settings: &BufferSettings,
) -> Result<BufferedBody, BufferError> {
    let BufferSettings { max_request_bytes, allow_partial_message, pack_as_bytes } = settings;
    let (allow_partial_message, pack_as_bytes) = (*allow_partial_message, *pack_as_bytes);
    let max = *max_request_bytes as u64;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !allow_partial_message && declared.is_some_and(|n| n > max) {
        return Err(BufferError::TooLarge);
    }
    let mut body = std::mem::take(req.body_mut());
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    let mut trailers = None;
    let mut ended = http_body::Body::is_end_stream(&body);
    while !ended && total < max {
        match body.frame().await {
            None => ended = true,
            Some(Err(_)) => return Err(BufferError::Read),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    total += d.len() as u64;
                    if !d.is_empty() {
                        chunks.push(d);
                    }
                    if !allow_partial_message && total > max {
                        return Err(BufferError::TooLarge);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    ended = true;
                }
            },
        }
        if !ended {
            ended = http_body::Body::is_end_stream(&body);
        }
    }
    if !ended && !allow_partial_message {
        // Exactly `max` bytes so far: one more frame decides.
        match body.frame().await {
            None => ended = true,
            Some(Err(_)) => return Err(BufferError::Read),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if d.is_empty() => chunks.push(d),
                Ok(_) => return Err(BufferError::TooLarge),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
        }
    }
    let all: Bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks[0].clone(),
        _ => {
            let mut b = BytesMut::with_capacity(total as usize);
            for c in &chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    };
    let partial = allow_partial_message && total >= max;
    let sent = if all.len() as u64 > max {
        all.slice(..max as usize)
    } else {
        all.clone()
    };
    // Put the body back for the upstream.
    *req.body_mut() = if ended && trailers.is_none() {
        Body::full(all)
    } else {
        Body::boxed(Replay {
            head: (!all.is_empty()).then_some(all),
            trailers,
            rest: (!ended).then_some(body),
        })
    };
    Ok(BufferedBody {
        sent,
        size: declared.unwrap_or(total),
        partial,
        pack_as_bytes,
    })
}

/// The buffered bytes, then the rest of the original body (or the trailers already read).
struct Replay {
    head: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if let Some(h) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(h))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match self.rest.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none()
            && self.trailers.is_none()
            && self
                .rest
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions.

enum HeaderOp {
    /// Remove every copy, then add (append unset/false).
    Set,
    /// Join to the existing value with `,` (append: true).
    AppendJoin,
    AddIfAbsent,
    OverwriteIfExists,
}

#[derive(Default)]
struct OkMutations {
    headers: Vec<(HeaderName, HeaderValue, HeaderOp)>,
    remove: Vec<HeaderName>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    query_set: Vec<(String, String)>,
    query_remove: Vec<String>,
}

impl OkMutations {
    /// Apply to the request; returns whether the request (headers or query) changed.
    fn apply(self, req: &mut Request<Body>, ctx: &mut FilterContext) -> bool {
        let mutated = !self.headers.is_empty()
            || !self.remove.is_empty()
            || !self.query_set.is_empty()
            || !self.query_remove.is_empty();
        let h = req.headers_mut();
        for (name, value, op) in self.headers {
            match op {
                HeaderOp::Set => {
                    h.insert(name, value);
                }
                HeaderOp::AppendJoin => {
                    let joined = match h.get(&name) {
                        Some(old) if !old.is_empty() => {
                            let mut v = Vec::with_capacity(old.len() + 1 + value.len());
                            v.extend_from_slice(old.as_bytes());
                            v.push(b',');
                            v.extend_from_slice(value.as_bytes());
                            HeaderValue::from_bytes(&v).unwrap_or(value)
                        }
                        _ => value,
                    };
                    h.insert(name, joined);
                }
                HeaderOp::AddIfAbsent => {
                    if !h.contains_key(&name) {
                        h.insert(name, value);
                    }
                }
                HeaderOp::OverwriteIfExists => {
                    if h.contains_key(&name) {
                        h.insert(name, value);
                    }
                }
            }
        }
        for name in self.remove {
            if name != HOST {
                h.remove(&name);
            }
        }
        ctx.response_headers_to_add.extend(self.response_headers);
        if !self.query_set.is_empty() || !self.query_remove.is_empty() {
            rewrite_query(req, &self.query_set, &self.query_remove);
        }
        mutated
    }
}

/// Envoy keeps query parameters in a sorted multimap: set parameters replace all copies,
/// removed ones disappear, and the query is written back sorted by name.
fn rewrite_query(req: &mut Request<Body>, set: &[(String, String)], remove: &[String]) {
    let uri = req.uri();
    let path = uri.path().to_string();
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(q) = uri.query() {
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            params.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    for k in remove {
        params.remove(k);
    }
    for (k, v) in set {
        params.insert(k.clone(), vec![v.clone()]);
    }
    let mut pq = path;
    let mut first = true;
    for (k, vs) in &params {
        for v in vs {
            pq.push(if first { '?' } else { '&' });
            first = false;
            pq.push_str(k);
            pq.push('=');
            pq.push_str(v);
        }
    }
    let mut parts = req.uri().clone().into_parts();
    match http::uri::PathAndQuery::try_from(pq.as_str()) {
        Ok(p) => parts.path_and_query = Some(p),
        Err(_) => return,
    }
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

struct Denied {
    /// `None`: the default (403 for a denial, `status_on_error` for an error response).
    status: Option<u16>,
    /// (name, value, append)
    headers: Vec<(HeaderName, HeaderValue, bool)>,
    body: Bytes,
}

impl Denied {
    fn into_response(self, status: u16, server: &HeaderValue) -> Response<Body> {
        let mut h = HeaderMap::new();
        for (k, v, append) in self.headers {
            if append {
                h.append(k, v);
            } else {
                h.insert(k, v);
            }
        }
        let content_type = h.remove(CONTENT_TYPE);
        h.remove(CONTENT_LENGTH);
        let mut r = LocalReply::new(status).body(self.body);
        let has_body = r.body.is_some();
        for (k, v) in h.iter() {
            r.leading.push((k.clone(), v.clone()));
        }
        let mut resp = r.build(server);
        if let (Some(ct), true) = (content_type, has_body) {
            resp.headers_mut().insert(CONTENT_TYPE, ct);
        }
        resp
    }
}

enum Decision {
    Ok(OkMutations),
    Denied(Denied),
    /// An error; `Some` for a service-supplied `error_response`.
    Error(Option<Denied>),
}

fn header_option(
    o: &corepb::HeaderValueOption,
) -> Option<(HeaderName, HeaderValue, Option<bool>, i32)> {
    let hv = o.header.as_ref()?;
    let name = HeaderName::from_bytes(hv.key.as_bytes()).ok()?;
    let value = if hv.raw_value.is_empty() {
        HeaderValue::from_str(&hv.value).ok()?
    } else {
        HeaderValue::from_bytes(&hv.raw_value).ok()?
    };
    #[allow(deprecated)]
    let append = o.append.as_ref().map(|b| b.value);
    Some((name, value, append, o.append_action))
}

fn denied_from(d: authpb::DeniedHttpResponse) -> Denied {
    let status = d
        .status
        .as_ref()
        .map(|s| s.code as u16)
        .filter(|c| (100..=599).contains(c));
    let headers = d
        .headers
        .iter()
        .filter_map(header_option)
        .map(|(n, v, append, _)| (n, v, append == Some(true)))
        .collect();
    Denied {
        status,
        headers,
        body: Bytes::from(d.body),
    }
}

fn from_check_response(resp: authpb::CheckResponse) -> Decision {
    use authpb::check_response::HttpResponse;
    use corepb::header_value_option::HeaderAppendAction as A;
    let code = resp.status.as_ref().map(|s| s.code).unwrap_or(0);
    match resp.http_response {
        Some(HttpResponse::ErrorResponse(e)) => return Decision::Error(Some(denied_from(e))),
        _ if code != 0 => {
            return Decision::Denied(match resp.http_response {
                Some(HttpResponse::DeniedResponse(d)) => denied_from(d),
                _ => Denied {
                    status: None,
                    headers: Vec::new(),
                    body: Bytes::new(),
                },
            })
        }
        _ => {}
    }
    let mut m = OkMutations::default();
    if let Some(HttpResponse::OkResponse(ok)) = resp.http_response {
        for o in &ok.headers {
            let Some((name, value, append, action)) = header_option(o) else {
                continue;
            };
            if name.as_str().starts_with(':') {
                continue;
            }
            let op = match append {
                Some(true) => HeaderOp::AppendJoin,
                Some(false) => HeaderOp::Set,
                None => match A::try_from(action) {
                    Ok(A::AddIfAbsent) => HeaderOp::AddIfAbsent,
                    Ok(A::OverwriteIfExists) => HeaderOp::OverwriteIfExists,
                    _ => HeaderOp::Set,
                },
            };
            m.headers.push((name, value, op));
        }
        for r in &ok.headers_to_remove {
            if r.starts_with(':') {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(r.as_bytes()) {
                m.remove.push(n);
            }
        }
        for o in &ok.response_headers_to_add {
            if let Some((name, value, _, _)) = header_option(o) {
                m.response_headers.push((name, value));
            }
        }
        m.query_set = ok
            .query_parameters_to_set
            .into_iter()
            .map(|q| (q.key, q.value))
            .collect();
        m.query_remove = ok.query_parameters_to_remove;
    }
    Decision::Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_pem_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        let pem = url_encoded_pem(&[0xfb, 0xff]);
        assert_eq!(
            pem,
            "-----BEGIN%20CERTIFICATE-----%0A%2B%2F8%3D%0A-----END%20CERTIFICATE-----%0A"
        );
    }

    #[test]
    fn name_matcher() {
        let l: ListStringMatcher = serde_json::from_value(serde_json::json!({"patterns": [
            {"exact": "x-a"}, {"prefix": "x-p-"}, {"suffix": "-s"}, {"contains": "mid"},
            {"safe_regex": {"regex": "x-r[0-9]"}}, {"exact": "X-Case", "ignore_case": true}
        ]}))
        .unwrap();
        let m = NameMatcher::build(&l).unwrap();
        for yes in ["x-a", "x-p-1", "a-s", "amidb", "x-r1", "x-case"] {
            assert!(m.matches(yes), "{yes}");
        }
        for no in ["x-ab", "x-p", "x-r12", ":path", "x-cas"] {
            assert!(!m.matches(no), "{no}");
        }
    }

    #[test]
    fn check_response_mapping() {
        use authpb::check_response::HttpResponse;
        let denied = authpb::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let Decision::Denied(d) = from_check_response(denied) else {
            panic!("denied expected")
        };
        assert_eq!(d.status, None);
        let custom = authpb::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 16,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(authpb::DeniedHttpResponse {
                status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                headers: vec![],
                body: "nope".into(),
            })),
            ..Default::default()
        };
        let Decision::Denied(d) = from_check_response(custom) else {
            panic!("denied expected")
        };
        assert_eq!(d.status, Some(401));
        let resp = d.into_response(401, &HeaderValue::from_static("envoy"));
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert!(matches!(
            from_check_response(Default::default()),
            Decision::Ok(_)
        ));
    }
}
