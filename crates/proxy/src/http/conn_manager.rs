//! One HTTP connection manager: everything between a decoded request and the response sent back.
//!
//! Request phases, in order (Envoy's): codec checks (HTTP/1.0, Host, header size) → header
//! sanitising (hop-by-hop, `x-envoy-*` control headers) → `x-forwarded-proto` / `x-request-id` /
//! XFF → route selection (404 when none) → upgrade check → filters (`http_filters` order) →
//! router (direct response, redirect, or forward to a cluster).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use sluice_config::hcm::{HttpConnectionManager as HcmConfig, ServerHeaderTransformation, UpgradeConfig};

use crate::config_audit::refused_at_load;

use crate::access_log::connection::{ConnectionCounts, Counted};
use crate::access_log::{AccessLogs, PendingLog, StreamRecord};
use crate::body::Body;
use crate::filters::{self, ConnectionInfo, FilterContext, FilterFactoryContext, FilterOutcome, HttpFilter};
use crate::http::codec::tunnel::{BoxIo, TunnelFuture};
use crate::http::codec::{self, ConnEnd, ContinueSent, UpstreamTunnel};
use crate::formatter::{Context, Format, RequestView, ResponseView};
use crate::http::headers;
use crate::http::local_reply::{
    http_date, reset_body, IsLocalReply, LocalReply, LocalReplyConfig, LocalReplyInfo, NO_HEALTHY_UPSTREAM, PAYLOAD_TOO_LARGE, STREAM_TIMEOUT,
    UPSTREAM_TIMEOUT,
};
use crate::router::retry::{ResetKind, RetryState, RetryStatus};
use crate::router::config::{query_param, split_path_query, Action, ClusterSpecifier, Forward, HashPolicy, RouteRequest, RouteTable, Selected};
use crate::stream_info::{ResponseFlags, StreamInfo, UpstreamHost, UpstreamLocalAddress};
use crate::stats::{Counter, Gauge, Histogram, Store};
use crate::upstream::{Cluster, ClusterManager, LbContext, UpstreamFailure};

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Process-wide stream ids (Envoy's `http.id` in ext_authz is a stream id, not x-request-id).
static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// `http.<stat_prefix>.*` handles.
pub struct HcmStats {
    pub prefix: Arc<str>,
    pub downstream_rq_total: Counter,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_xx: [Counter; 5],
    pub downstream_rq_completed: Counter,
    pub downstream_rq_time: Histogram,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_ssl_total: Counter,
    pub downstream_cx_http1_active: Gauge,
    pub downstream_cx_http2_active: Gauge,
    pub downstream_cx_ssl_active: Gauge,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub downstream_cx_length_ms: Histogram,
    /// `downstream_cx_destroy`, `_remote`, `_local`, `_active_rq`, `_remote_active_rq`. (sluice
    /// never closes a connection from its side while a request is in flight: a response always
    /// goes first, so there is no `_local_active_rq`.)
    pub downstream_cx_destroy: [Counter; 5],
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_max_requests_reached: Counter,
    pub downstream_cx_max_duration_reached: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_header_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    pub downstream_cx_delayed_close_timeout: Counter,
    pub downstream_cx_drain_close: Counter,
    pub downstream_rq_response_before_rq_complete: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_non_relative_path: Counter,
    pub downstream_rq_too_large: Counter,
    pub rq_total: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
    pub rq_redirect: Counter,
    pub downstream_rq_http1_upgrade_rejected: Counter,
}

impl HcmStats {
    fn new(store: &Store, stat_prefix: &str) -> Self {
        let p = format!("http.{stat_prefix}.");
        let c = |n: &str| store.counter(format!("{p}{n}"));
        HcmStats {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_active: store.gauge(format!("{p}downstream_rq_active")),
            downstream_rq_xx: [c("downstream_rq_1xx"), c("downstream_rq_2xx"), c("downstream_rq_3xx"), c("downstream_rq_4xx"), c("downstream_rq_5xx")],
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_time: store.histogram(format!("{p}downstream_rq_time")),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: store.gauge(format!("{p}downstream_cx_active")),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_ssl_total: c("downstream_cx_ssl_total"),
            downstream_cx_http1_active: store.gauge(format!("{p}downstream_cx_http1_active")),
            downstream_cx_http2_active: store.gauge(format!("{p}downstream_cx_http2_active")),
            downstream_cx_ssl_active: store.gauge(format!("{p}downstream_cx_ssl_active")),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: store.gauge(format!("{p}downstream_cx_upgrades_active")),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_length_ms: store.histogram(format!("{p}downstream_cx_length_ms")),
            downstream_cx_destroy: [
                c("downstream_cx_destroy"),
                c("downstream_cx_destroy_remote"),
                c("downstream_cx_destroy_local"),
                c("downstream_cx_destroy_active_rq"),
                c("downstream_cx_destroy_remote_active_rq"),
            ],
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_cx_delayed_close_timeout: c("downstream_cx_delayed_close_timeout"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_rq_response_before_rq_complete: c("downstream_rq_response_before_rq_complete"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_non_relative_path: c("downstream_rq_non_relative_path"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            rq_total: c("rq_total"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            downstream_rq_http1_upgrade_rejected: c("downstream_rq_ws_on_non_ws_route"),
            prefix: Arc::from(p.as_str()),
        }
    }
}

impl HcmStats {
    /// Count the bytes of a downstream transport (and, with listener access logs, the
    /// connection's own record).
    pub fn counted<T>(&self, io: T, counts: Option<Arc<ConnectionCounts>>) -> Counted<T> {
        Counted::new(io, counts, self.downstream_cx_rx_bytes_total.clone(), self.downstream_cx_tx_bytes_total.clone())
    }

    /// A connection that closed before its first byte: counted as made and destroyed by the
    /// peer, with no codec (Envoy creates the codec on the first data).
    pub fn connection_without_codec(&self) {
        self.downstream_cx_total.inc();
        self.downstream_cx_destroy[0].inc();
        self.downstream_cx_destroy[1].inc();
        self.downstream_cx_length_ms.record_int(0);
    }

    /// Envoy's `downstream_cx_destroy*` and the reason counters for how a connection ended.
    pub fn connection_closed(&self, end: ConnEnd, lifetime: std::time::Duration) {
        let [destroy, remote, local, active, remote_active] = &self.downstream_cx_destroy;
        destroy.inc();
        match end {
            ConnEnd::Remote { active_rq } => {
                remote.inc();
                if active_rq {
                    active.inc();
                    remote_active.inc();
                }
            }
            ConnEnd::Local | ConnEnd::Upgraded => local.inc(),
            ConnEnd::IdleTimeout => {
                self.downstream_cx_idle_timeout.inc();
                local.inc();
            }
            ConnEnd::ProtocolError { delayed_close_timeout } => {
                self.downstream_cx_protocol_error.inc();
                if delayed_close_timeout {
                    self.downstream_cx_delayed_close_timeout.inc();
                }
                local.inc();
            }
            ConnEnd::MaxRequests => {
                self.downstream_cx_max_requests_reached.inc();
                local.inc();
            }
            ConnEnd::MaxDuration => {
                self.downstream_cx_max_duration_reached.inc();
                local.inc();
            }
            ConnEnd::LocalDelayed { delayed_close_timeout } => {
                if delayed_close_timeout {
                    self.downstream_cx_delayed_close_timeout.inc();
                }
                local.inc();
            }
        }
        self.downstream_cx_length_ms.record_int(lifetime.as_millis() as u64);
    }
}

/// Per-listener copies of the response-class counters (`listener.<addr>.http.<prefix>.downstream_rq_<N>xx`).
pub struct ListenerHttpStats {
    pub downstream_rq_xx: [Counter; 5],
    pub downstream_rq_completed: Counter,
}

impl ListenerHttpStats {
    pub fn new(store: &Store, listener_stat_prefix: &str, stat_prefix: &str) -> Self {
        let c = |n: u8| store.counter(format!("{listener_stat_prefix}http.{stat_prefix}.downstream_rq_{n}xx"));
        let completed = store.counter(format!("{listener_stat_prefix}http.{stat_prefix}.downstream_rq_completed"));
        ListenerHttpStats { downstream_rq_xx: [c(1), c(2), c(3), c(4), c(5)], downstream_rq_completed: completed }
    }
}

/// Settings of one connection manager, resolved from config once.
pub struct HttpConnectionManager {
    server_name: HeaderValue,
    server_transformation: ServerHeaderTransformation,
    use_remote_address: bool,
    xff_num_trusted_hops: usize,
    generate_request_id: bool,
    preserve_external_request_id: bool,
    always_set_request_id_in_response: bool,
    max_request_headers_bytes: usize,
    accept_http_10: bool,
    default_host_for_http_10: Option<String>,
    strip_any_host_port: bool,
    strip_matching_host_port: bool,
    normalize_path: bool,
    merge_slashes: bool,
    via: Option<HeaderValue>,
    /// `skip_xff_append`: with `use_remote_address`, leave `x-forwarded-for` as it came.
    skip_xff_append: bool,
    /// `stream_idle_timeout` (default 5 min, `None` when 0): the idle timeout of routes that set
    /// none of their own.
    stream_idle_timeout: Option<std::time::Duration>,
    /// `request_timeout` (`None`: off, Envoy's default): the whole request must have arrived
    /// within it, unless the response started first.
    request_timeout: Option<std::time::Duration>,
    /// `common_http_protocol_options.max_stream_duration` (`None`: off).
    max_stream_duration: Option<std::time::Duration>,
    upgrades: Vec<String>,
    routes: Arc<RouteTable>,
    filters: Vec<Arc<dyn HttpFilter>>,
    clusters: Arc<ClusterManager>,
    pub stats: HcmStats,
    access_logs: Option<Arc<AccessLogs>>,
    local_reply: Option<LocalReplyConfig>,
    /// Something formats after the request went upstream (access logs, `local_reply_config`,
    /// formatted response headers): keep the request head and the route and cluster names.
    record_full: bool,
    /// `codec_type`.
    pub(crate) codec: sluice_config::hcm::CodecType,
    /// `stat_prefix`, for the listener's per-connection-manager stats.
    pub(crate) stat_prefix: String,
    /// The HTTP/1 codec's settings.
    pub(crate) h1: codec::Config,
    /// The HTTP/2 server's settings.
    pub(crate) h2: crate::http::http2::Settings,
}

/// A gauge raised for as long as the guard lives.
struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    fn inc(g: &'a Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything a request needs to know about the connection it arrived on.
pub struct ConnContext {
    pub conn: Arc<ConnectionInfo>,
    pub listener_stats: Arc<ListenerHttpStats>,
}

impl HttpConnectionManager {
    /// Build from config. Errors are `(path relative to the HCM config, message)`.
    pub fn build(
        cfg: &HcmConfig,
        clusters: &Arc<ClusterManager>,
        store: &Store,
    ) -> Result<Self, (String, String)> {
        let HcmConfig {
            codec_type,
            stat_prefix,
            route_config,
            rds,
            scoped_routes,
            http_filters,
            server_name,
            server_header_transformation,
            use_remote_address,
            xff_num_trusted_hops,
            skip_xff_append,
            via,
            generate_request_id,
            preserve_external_request_id,
            always_set_request_id_in_response,
            max_request_headers_kb,
            stream_idle_timeout,
            request_timeout,
            request_headers_timeout,
            drain_timeout,
            delayed_close_timeout,
            normalize_path,
            merge_slashes,
            strip_any_host_port,
            strip_matching_host_port,
            http_protocol_options,
            http2_protocol_options,
            common_http_protocol_options,
            upgrade_configs,
            add_user_agent,
            proxy_100_continue,
            access_log,
            tracing,
            internal_address_config,
            local_reply_config,
            forward_client_cert_details,
            path_with_escaped_slashes_action,
            original_ip_detection_extensions,
        } = cfg;
        for refused in [
            rds,
            scoped_routes,
            delayed_close_timeout,
            add_user_agent,
            proxy_100_continue,
            tracing,
            internal_address_config,
            forward_client_cert_details,
            path_with_escaped_slashes_action,
            original_ip_detection_extensions,
        ] {
            refused_at_load(refused);
        }
        let rc = route_config
            .as_ref()
            .ok_or_else(|| ("route_config".to_string(), "a static route_config is required".to_string()))?;
        let routes = RouteTable::build(rc).map_err(|(p, e)| (format!("route_config.{p}"), e))?;
        let server_name = HeaderValue::from_str(server_name.as_deref().unwrap_or("envoy"))
            .map_err(|_| ("server_name".to_string(), "invalid header value".to_string()))?;
        // Envoy's default is 60 KiB.
        let max_request_headers_bytes = max_request_headers_kb.unwrap_or(60) as usize * 1024;
        let stats = HcmStats::new(store, stat_prefix);
        let fctx = FilterFactoryContext {
            clusters,
            stats: store,
            stat_prefix: &stats.prefix,
            server_name: &server_name,
        };
        let mut filters = Vec::new();
        for (i, f) in http_filters.iter().enumerate() {
            match filters::build(f, &fctx) {
                Ok(Some(filter)) => filters.push(filter),
                Ok(None) => {}
                Err(e) => return Err((format!("http_filters[{i}]"), format!("{e:#}"))),
            }
        }
        let access_logs = AccessLogs::build(access_log, store).map_err(|(p, e)| (format!("access_log{p}"), e))?;
        let local_reply = match local_reply_config {
            Some(c) => Some(LocalReplyConfig::build(c).map_err(|(p, e)| (format!("local_reply_config.{p}"), e))?),
            None => None,
        };
        let (mut h1, default_host_for_http_10, max_stream_duration) = crate::listener::h1_config(
            &server_name,
            max_request_headers_bytes,
            http_protocol_options.as_ref(),
            common_http_protocol_options.as_ref(),
            store,
        );
        let positive = |d: &Option<sluice_config::core::Duration>| (*d).map(|d| d.as_std()).filter(|d| !d.is_zero());
        h1.request_headers_timeout = positive(request_headers_timeout);
        if let Some(d) = drain_timeout {
            h1.drain_timeout = d.as_std();
        }
        let h2 = crate::http::http2::Settings {
            protocol: crate::listener::H2Settings::build(http2_protocol_options.as_ref()),
            limits: crate::http::http2::Limits::new(
                h1.parse.max_headers,
                h1.parse.underscores,
                h1.idle_timeout,
                h1.max_requests_per_connection,
                h1.max_connection_duration,
                h1.drain_timeout,
                store,
            ),
        };
        let mut upgrades = Vec::new();
        for UpgradeConfig { upgrade_type, enabled, filters } in upgrade_configs {
            refused_at_load(filters);
            if enabled.unwrap_or(true) {
                upgrades.push(upgrade_type.to_ascii_lowercase());
            }
        }
        let record_full = access_logs.is_some() || local_reply.is_some() || routes.formatted_headers;
        let idle = stream_idle_timeout.map_or(std::time::Duration::from_secs(300), |d| d.as_std());
        Ok(HttpConnectionManager {
            access_logs,
            local_reply,
            record_full,
            server_name,
            server_transformation: *server_header_transformation,
            use_remote_address: use_remote_address.unwrap_or(false),
            xff_num_trusted_hops: *xff_num_trusted_hops as usize,
            skip_xff_append: *skip_xff_append,
            generate_request_id: generate_request_id.unwrap_or(true),
            preserve_external_request_id: *preserve_external_request_id,
            always_set_request_id_in_response: *always_set_request_id_in_response,
            max_request_headers_bytes,
            accept_http_10: h1.parse.accept_http_10,
            default_host_for_http_10,
            strip_any_host_port: *strip_any_host_port,
            strip_matching_host_port: *strip_matching_host_port,
            normalize_path: normalize_path.unwrap_or(false),
            merge_slashes: *merge_slashes,
            via: via.as_deref().and_then(|v| HeaderValue::from_str(v).ok()),
            // Default 5 minutes; zero disables.
            stream_idle_timeout: (!idle.is_zero()).then_some(idle),
            request_timeout: positive(request_timeout),
            max_stream_duration,
            upgrades,
            routes: Arc::new(routes),
            filters,
            clusters: clusters.clone(),
            stats,
            codec: *codec_type,
            stat_prefix: stat_prefix.clone(),
            h1,
            h2,
        })
    }

    pub fn server_name(&self) -> &HeaderValue {
        &self.server_name
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// Handle one request end to end.
    pub async fn handle(&self, req: Request<Body>, info: &ConnContext) -> Response<Body> {
        let start = Instant::now();
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        if req.version() == Version::HTTP_2 {
            stats.downstream_rq_http2_total.inc();
        } else {
            stats.downstream_rq_http1_total.inc();
        }
        // Decremented when the request ends, also when it is abandoned (the client went away).
        let active = GaugeGuard::inc(&stats.downstream_rq_active);
        let h2 = req.version() == Version::HTTP_2;
        // Envoy answers `Expect: 100-continue` itself (the HTTP/1 codec did) and counts that
        // interim response. A response made before the request body arrived closes the
        // connection: the HTTP/1 codec decides that when it writes the response.
        if req.extensions().get::<ContinueSent>().is_some() {
            stats.downstream_rq_xx[0].inc();
            info.listener_stats.downstream_rq_xx[0].inc();
        }
        let grpc = is_grpc(req.headers());
        let mut request_id = None;
        let stream_id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let si = StreamInfo::starting(stream_id, req.version(), info.conn.clone(), start);
        let mut rec = StreamRecord::new(si, self.access_logs.as_ref(), self.record_full, req.method() == http::Method::HEAD);
        if let Some(codec::BodyRefused(flag)) = req.extensions().get::<codec::BodyRefused>() {
            rec.watch_body_refusal(flag.clone());
        }
        let unread_body = !http_body::Body::is_end_stream(req.body());
        let req = if unread_body {
            req.map(|b| rec.count_request_body(b))
        } else {
            rec.info.last_downstream_rx = Some(start.elapsed());
            req
        };
        let mut resp = if self.request_timeout.is_none() && self.max_stream_duration.is_none() {
            self.process(req, info, &mut rec, &mut request_id).await
        } else {
            self.process_timed(req, info, &mut rec, &mut request_id, unread_body).await
        };
        if let Some(local) = resp.extensions().get::<LocalReplyInfo>() {
            if local.details.as_deref() == Some(PAYLOAD_TOO_LARGE) {
                stats.downstream_rq_too_large.inc();
            }
            if local.details.is_some() {
                rec.info.response_code_details = local.details.clone();
            }
            rec.info.set_flag(local.flags);
            if let Some(lr) = &self.local_reply {
                let request = rec.request.as_ref().map(|r| r.view());
                resp = lr.rewrite(resp, &mut rec.info, request, &self.server_name);
            }
        }
        let local = resp.extensions().get::<IsLocalReply>().is_some();
        if local {
            if grpc {
                resp = grpc_local_reply(resp, h2);
            }
            if self.server_transformation == ServerHeaderTransformation::PassThrough {
                resp.headers_mut().remove(http::header::SERVER);
            }
        }
        if h2 {
            let h = resp.headers_mut();
            h.remove(http::header::CONNECTION);
            if local && h.get(http::header::CONTENT_LENGTH).is_some_and(|v| v == "0") {
                h.remove(http::header::CONTENT_LENGTH);
            }
        }
        // Envoy's last response headers: the request id (when asked for) and `via`.
        if self.always_set_request_id_in_response {
            if let Some(id) = request_id {
                resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            }
        }
        if let Some(via) = &self.via {
            append_joined(resp.headers_mut(), &http::header::VIA, via);
        }
        // While the server's health check is failed (`/healthcheck/fail`), Envoy's drain manager
        // closes HTTP/1 connections after each response (`downstream_cx_drain_close`).
        if !h2 && self.clusters.healthcheck_failed() {
            let h = resp.headers_mut();
            if !h.get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close")) {
                h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                stats.downstream_cx_drain_close.inc();
            }
        }
        // Envoy charges no response-code stats for health checks.
        if !rec.info.health_check {
            let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
            stats.downstream_rq_xx[class].inc();
            info.listener_stats.downstream_rq_xx[class].inc();
            info.listener_stats.downstream_rq_completed.inc();
            stats.downstream_rq_completed.inc();
        }
        drop(active);
        stats.downstream_rq_time.record(start.elapsed().as_secs_f64() * 1000.0);
        rec.info.response_code = Some(resp.status().as_u16());
        rec.finish(resp)
    }

    /// [`Self::process`] under `request_timeout` (`408 request timeout` while the request is
    /// still arriving) and `max_stream_duration` (`504 downstream duration timeout` before the
    /// response, a reset after it started).
    async fn process_timed(
        &self,
        req: Request<Body>,
        info: &ConnContext,
        rec: &mut StreamRecord<'_>,
        request_id: &mut Option<HeaderValue>,
        unread_body: bool,
    ) -> Response<Body> {
        use crate::http::stream_timers::{request_timeout, Arrival, Deadline};
        let deadline = self.max_stream_duration.map(|d| tokio::time::Instant::now() + d);
        let arrival = Arc::new(Arrival::default());
        let req = if unread_body {
            req.map(|b| arrival.watch(b))
        } else {
            arrival.set();
            req
        };
        let request_timer = async {
            match self.request_timeout {
                Some(d) => request_timeout(d, &arrival).await,
                None => std::future::pending().await,
            }
        };
        let duration_timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            resp = self.process(req, info, rec, request_id) => match deadline {
                Some(at) => resp.map(|b| Deadline::wrap(b, at, self.stats.downstream_rq_max_duration_reached.clone())),
                None => resp,
            },
            () = request_timer => {
                self.stats.downstream_rq_timeout.inc();
                self.reply(LocalReply::new(408).body("request timeout").details("request_overall_timeout"))
            }
            () = duration_timer => {
                self.stats.downstream_rq_max_duration_reached.inc();
                // Envoy: 504 once the request is complete, 408 while it is still arriving.
                let status = if arrival.is_set() { 504 } else { 408 };
                self.reply(LocalReply::new(status).body("downstream duration timeout").details("max_duration_timeout"))
            }
        }
    }

    /// Access-log an HTTP/2 stream the codec reset for its headers (Envoy: `- -`, code 0, `DR`).
    pub fn record_refused_stream(&self, details: &'static str, ctx: &ConnContext) {
        self.log_without_request(ctx, Version::HTTP_2, Instant::now(), None, details, 0, Some(ResponseFlags::DOWNSTREAM_REMOTE_RESET));
    }

    /// Access-log a stream the codec ended before a request reached [`Self::handle`] (`- -`
    /// for method and path), as Envoy logs it.
    #[allow(clippy::too_many_arguments)]
    fn log_without_request(
        &self,
        ctx: &ConnContext,
        version: Version,
        started: Instant,
        status: Option<u16>,
        details: &'static str,
        bytes_sent: u64,
        flag: Option<ResponseFlags>,
    ) {
        let Some(logs) = &self.access_logs else { return };
        let stream_id = NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed);
        let mut info = StreamInfo::starting(stream_id, version, ctx.conn.clone(), started);
        info.start_time = std::time::SystemTime::now() - started.elapsed();
        info.response_code = status;
        info.response_code_details = Some(details.into());
        info.bytes_sent = bytes_sent;
        if let Some(f) = flag {
            info.set_flag(f);
        }
        PendingLog { logs: logs.clone(), info, request: None, request_body: None }.log(status, None, None);
    }

    /// Count (and access-log) a reply the HTTP/1 codec made before any request reached
    /// [`Self::handle`].
    pub fn record_codec_reply(&self, reply: &codec::CodecReply, ctx: &ConnContext) {
        let status = reply.status;
        let listener = &ctx.listener_stats;
        if !reply.logged {
            let version = if reply.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
            let flag = reply.protocol_error.then_some(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
            self.log_without_request(ctx, version, reply.started, Some(status), reply.details, reply.body_bytes, flag);
        }
        let class = (status / 100).clamp(1, 5) as usize - 1;
        // A request the connection manager had was counted when it came.
        if !reply.logged {
            self.stats.downstream_rq_total.inc();
            self.stats.downstream_rq_http1_total.inc();
        }
        self.stats.downstream_rq_xx[class].inc();
        listener.downstream_rq_xx[class].inc();
        listener.downstream_rq_completed.inc();
        self.stats.downstream_rq_completed.inc();
    }

    fn reply(&self, r: LocalReply) -> Response<Body> {
        r.build(&self.server_name)
    }

    async fn process(
        &self,
        mut req: Request<Body>,
        info: &ConnContext,
        rec: &mut StreamRecord<'_>,
        request_id: &mut Option<HeaderValue>,
    ) -> Response<Body> {
        let version = req.version();
        let h2 = version == Version::HTTP_2;
        // Codec-level checks.
        if version == Version::HTTP_10 && !self.accept_http_10 {
            return self.reply(LocalReply::new(426).body("Upgrade Required").close().details("low_version").flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR));
        }
        if version == Version::HTTP_09 || version == Version::HTTP_3 {
            return self.reply(LocalReply::new(400).body("Bad Request").close().details("http1.codec_error").flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR));
        }
        let path_and_query = match req.uri().path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
            _ if req.method() == http::Method::OPTIONS && req.uri() == "*" => "*".to_string(),
            _ if req.method() == http::Method::CONNECT => String::new(),
            _ => {
                self.stats.downstream_rq_non_relative_path.inc();
                let r = LocalReply::new(400).body("Bad Request").close();
                return self.reply(r.details("http1.codec_error").flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR));
            }
        };
        // HTTP/1 heads were measured by the codec (raw bytes, as Envoy counts them).
        if h2 && headers::header_bytes(req.headers(), req.method().as_str(), &path_and_query) > self.max_request_headers_bytes {
            let r = LocalReply::new(431).body("Request Header Fields Too Large").close();
            return self.reply(r.details("http1.headers_too_large").flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR));
        }
        // The authority: absolute-form URI (HTTP/1) or :authority (HTTP/2) wins over Host.
        let host: String = match req.uri().authority() {
            Some(a) => a.as_str().to_string(),
            None => match req.headers().get(HOST) {
                Some(h) => {
                    let all: Vec<&str> = req.headers().get_all(HOST).iter().filter_map(|v| v.to_str().ok()).collect();
                    if all.len() > 1 { all.join(",") } else { h.to_str().unwrap_or("").to_string() }
                }
                None if version == Version::HTTP_10 => match &self.default_host_for_http_10 {
                    Some(h) => h.clone(),
                    None => {
                        rec.keep_request(&req);
                        return self.reply(LocalReply::new(400).close().details("missing_host_header"));
                    }
                },
                None => {
                    rec.keep_request(&req);
                    return self.reply(LocalReply::new(400).close().details("missing_host_header"));
                }
            },
        };
        // `strip_any_host_port` / `strip_matching_host_port` rewrite the authority itself before
        // routing and filters (Envoy): the upstream gets it without the port.
        let host = self.strip_host_port(host, info.conn.local);
        // Upstream requests always carry the authority in `host`.
        if let Ok(v) = HeaderValue::from_str(&host) {
            if h2 {
                h2_to_h1_headers(req.headers_mut(), v);
            } else {
                req.headers_mut().insert(HOST, v);
            }
        }
        // An upgrade needs both `Upgrade` and the `upgrade` token in `Connection`; `h2c` is
        // ignored (the request is served as plain HTTP/1.1), as Envoy does. A CONNECT (or an
        // HTTP/2 extended CONNECT) is an upgrade too.
        let upgrade = upgrade_kind(&req);
        let keep_upgrade = !h2 && upgrade.as_deref().is_some_and(|k| k != "connect");
        let headers_mut = req.headers_mut();
        headers::strip_hop_by_hop(headers_mut, keep_upgrade);
        headers::strip_envoy_control(headers_mut);

        let scheme = if info.conn.tls.is_some() { "https" } else { "http" };
        if rec.full {
            rec.info.downstream_remote = trusted_client(headers_mut, self.use_remote_address, self.xff_num_trusted_hops);
        }
        if self.use_remote_address {
            // Envoy's order: x-forwarded-for, then x-forwarded-proto, then the external address.
            let peer = info.conn.peer.ip();
            let prev = headers_mut.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()).map(str::to_string);
            // With `xff_num_trusted_hops: N` the client is the N-th address from the right of the
            // incoming x-forwarded-for followed by the peer (Envoy's rule); the peer itself when
            // the list is too short or N is 0.
            let client = match (&prev, self.xff_num_trusted_hops) {
                (Some(list), n) if n > 0 => {
                    let hops: Vec<&str> = list.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
                    hops.len().checked_sub(n).map(|i| hops[i].to_string())
                }
                _ => None,
            }
            .unwrap_or_else(|| peer.to_string());
            // A loopback peer is recorded as this host's own address, as Envoy does.
            let appended = if peer.is_loopback() { local_host_address(peer.is_ipv4()).unwrap_or(peer) } else { peer };
            let xff = match &prev {
                Some(prev) => format!("{prev},{appended}"),
                None => appended.to_string(),
            };
            if !self.skip_xff_append {
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    headers_mut.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            headers_mut.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme_static(scheme)));
            if let Some(via) = &self.via {
                append_joined(headers_mut, &http::header::VIA, via);
            }
            if let Ok(v) = HeaderValue::from_str(&client) {
                headers_mut.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        } else {
            if !headers_mut.contains_key(&X_FORWARDED_PROTO) {
                headers_mut.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme_static(scheme)));
            }
            if let Some(via) = &self.via {
                append_joined(headers_mut, &http::header::VIA, via);
            }
        }
        let regenerate = self.use_remote_address && !self.preserve_external_request_id;
        if self.generate_request_id && (regenerate || !headers_mut.contains_key(&X_REQUEST_ID)) {
            headers_mut.insert(X_REQUEST_ID.clone(), headers::new_request_id());
        }
        *request_id = headers_mut.get(&X_REQUEST_ID).cloned();

        // Route.
        let route_path = if self.normalize_path || self.merge_slashes {
            let (p, q) = split_path_query(&path_and_query);
            let norm = headers::normalize(p, self.normalize_path, self.merge_slashes);
            let joined = match q {
                Some(q) => format!("{norm}?{q}"),
                None => norm,
            };
            if joined != path_and_query {
                if let Ok(uri) = Uri::try_from(joined.as_str()) {
                    *req.uri_mut() = uri;
                }
            }
            joined
        } else {
            path_and_query
        };
        let route_host = self.route_host(&host, info.conn.local);
        // `OPTIONS *` asks about the server, not a resource: it never reaches the router.
        if route_path == "*" {
            rec.keep_request(&req);
            return self.reply(LocalReply::new(404).details("absolute_path_rejected"));
        }
        let route_req = RouteRequest {
            host: &route_host,
            authority: &host,
            path_and_query: &route_path,
            method: req.method().as_str(),
            scheme,
            headers: req.headers(),
        };
        // No route: the filters still run (Envoy's router answers 404 after them).
        let selected = self.routes.route_request(&route_req);

        // Envoy's rule: a route's `upgrade_configs` entry decides (enabled or not); without one
        // the connection manager's `upgrade_configs` do.
        let mut tunnel = None;
        if let (Some(kind), Some(selected)) = (&upgrade, &selected) {
            let on_route = selected.route.forward().and_then(|f| f.upgrade(kind));
            let allowed = match on_route {
                Some(u) => u.enabled,
                None => self.upgrades.contains(kind),
            };
            let terminate_connect = on_route.is_some_and(|u| u.terminate_connect) && req.method() == http::Method::CONNECT;
            let connect = kind == "connect";
            tunnel = Some(Tunnel { h2, connect, extended: h2 && !connect, terminate_connect });
            if !allowed {
                self.stats.downstream_rq_http1_upgrade_rejected.inc();
                // Envoy decorates this reply with the response headers of a forwarding route
                // (route, virtual host, table), and with none on a direct-response route.
                let reply = LocalReply::new(403).close().details("upgrade_failed");
                rec.keep_request(&req);
                return match selected.route.action {
                    Action::Forward(_) => self.local_with_route(reply, selected, rec),
                    _ => self.reply(reply),
                };
            }
        }

        let cluster = selected
            .as_ref()
            .and_then(|s| s.route.forward())
            .and_then(|f| self.resolve_cluster(f, req.headers(), &mut rec.weighted_cluster));
        if let (true, Some(selected)) = (rec.full, &selected) {
            rec.info.route_name = selected.route.name.as_deref().map(Arc::from);
            rec.info.virtual_host_name = Some(Arc::from(self.routes.virtual_hosts[selected.vhost].name.as_str()));
            rec.info.upstream.cluster = cluster.as_ref().map(|c| Arc::from(c.name()));
        }
        let mut ctx = FilterContext {
            conn: info.conn.clone(),
            routes: self.routes.clone(),
            selected,
            cluster,
            stream_id: rec.info.stream_id,
            start_time: rec.info.start_time,
            stat_prefix: self.stats.prefix.clone(),
            response_headers_to_add: Vec::new(),
            clear_route_cache: false,
            health_check: false,
        };
        for filter in &self.filters {
            let outcome = filter.on_request(&mut req, &mut ctx).await;
            rec.info.health_check |= ctx.health_check;
            match outcome {
                FilterOutcome::Continue => {}
                FilterOutcome::Respond(mut resp) => {
                    rec.keep_request(&req);
                    let h = resp.headers_mut();
                    for (k, v) in ctx.response_headers_to_add.drain(..) {
                        h.append(k, v);
                    }
                    return resp;
                }
            }
            if ctx.clear_route_cache {
                ctx.clear_route_cache = false;
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                let route_req = RouteRequest {
                    host: &route_host,
                    authority: &host,
                    path_and_query: &pq,
                    method: req.method().as_str(),
                    scheme,
                    headers: req.headers(),
                };
                let sel = self.routes.route_request(&route_req);
                ctx.cluster = sel
                    .as_ref()
                    .and_then(|s| s.route.forward())
                    .and_then(|f| self.resolve_cluster(f, req.headers(), &mut rec.weighted_cluster));
                ctx.selected = sel;
            }
        }
        let Some(selected) = ctx.selected.clone() else {
            // Envoy's router filter makes this reply: it counts in `rq_total` too.
            self.stats.rq_total.inc();
            self.stats.no_route.inc();
            rec.keep_request(&req);
            let reply = LocalReply::new(404).details("route_not_found").flag(ResponseFlags::NO_ROUTE_FOUND);
            return self.reply(if upgrade.is_some() { reply.close() } else { reply });
        };

        let mut resp = match self.route_request(req, &ctx, &selected, scheme, &host, info, rec) {
            Routed::Reply(resp) => resp,
            // Upgrades and CONNECT: a rare path, boxed out of every request's state.
            Routed::Upstream(call) if tunnel.is_some() => {
                let t = tunnel.unwrap_or_default();
                Box::pin(self.tunnel(call, t, &selected, rec)).await
            }
            // Retries: a rare path, boxed out of every request's state.
            Routed::Upstream(call) if call.retry.is_some() => Box::pin(self.forward_retrying(call, &selected, rec)).await,
            Routed::Upstream(call) => {
                let UpstreamCall { mut req, cluster, mut lb, deadline, set_cookie, retry: _ } = call;
                headers::frame_request_body(&mut req);
                let sel = &selected;
                let sent = Instant::now();
                rec.info.attempt_count = 1;
                rec.info.first_upstream_tx = Some(rec.info.elapsed());
                let mut resp = match cluster.choose_host(&lb) {
                    Some(host) => {
                        // Known before the attempt: `%UPSTREAM_HOST%` also when connecting fails.
                        rec.info.upstream.host = Some(host.address);
                        // The route timeout covers the whole response, body included (Envoy).
                        if let Some((d, false)) = deadline {
                            lb.response_deadline = Some(tokio::time::Instant::now() + d);
                        }
                        let send = cluster.send_to(host, req, &lb);
                        let result = match deadline {
                            Some((d, idle)) => tokio::time::timeout(d, send).await.map_err(|_| idle),
                            None => Ok(send.await),
                        };
                        self.upstream_response(result, sent, &cluster, sel, rec)
                    }
                    None => {
                        cluster.stats().upstream_cx_none_healthy.inc();
                        self.upstream_response(Ok(Err(UpstreamFailure::NoHealthyUpstream)), sent, &cluster, sel, rec)
                    }
                };
                if let Some(c) = set_cookie {
                    resp.headers_mut().append(http::header::SET_COOKIE, c);
                }
                if self.routes.virtual_hosts[sel.vhost].attempt_count_in_response {
                    resp.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(rec.info.attempt_count));
                }
                resp
            }
        };
        let h = resp.headers_mut();
        if !ctx.response_headers_to_add.is_empty() {
            let server = if rec.server_appended { h.remove(http::header::SERVER) } else { None };
            for (k, v) in ctx.response_headers_to_add.drain(..) {
                h.append(k, v);
            }
            if let Some(server) = server {
                h.insert(http::header::SERVER, server);
            }
        }
        resp
    }

    /// The authority without its port when `strip_any_host_port` (any port) or
    /// `strip_matching_host_port` (the listener's port) says so; case is kept.
    fn strip_host_port(&self, host: String, local: SocketAddr) -> String {
        if self.strip_any_host_port || self.strip_matching_host_port {
            let (name, port) = crate::router::config::split_host_port(&host);
            if let Some(p) = port {
                if self.strip_any_host_port || p == local.port().to_string() {
                    return name.to_string();
                }
            }
        }
        host
    }

    /// The host used for virtual host selection: lower-case, port stripped when configured.
    fn route_host(&self, host: &str, local: SocketAddr) -> String {
        self.strip_host_port(host.to_ascii_lowercase(), local)
    }

    /// The cluster of a forwarding route; `weighted` gets the index of the weighted cluster
    /// picked (for its header mutations).
    fn resolve_cluster(&self, f: &Forward, headers: &http::HeaderMap, weighted: &mut Option<usize>) -> Option<Arc<Cluster>> {
        *weighted = None;
        let name: &str = match &f.cluster {
            ClusterSpecifier::Name(n) => n,
            ClusterSpecifier::Header(h) => headers.get(h)?.to_str().ok()?,
            ClusterSpecifier::Weighted(list, total) => {
                if *total == 0 {
                    return None;
                }
                let pick = rand::random::<u64>() % total;
                let i = list.iter().position(|(_, upper)| pick < *upper)?;
                *weighted = Some(i);
                &list[i].0
            }
        };
        self.clusters.get(name).cloned()
    }

    /// Local reply for a request that selected a route: the route's response headers go first.
    fn local_with_route(&self, mut r: LocalReply, sel: &Selected, rec: &StreamRecord<'_>) -> Response<Body> {
        let mut h = http::HeaderMap::new();
        self.apply_response_mutations(&mut h, sel, rec, r.status.as_u16());
        for (k, v) in h.iter() {
            r.leading.push((k.clone(), v.clone()));
        }
        self.reply(r)
    }

    /// The response headers of the route, its virtual host and the table; formatted values see
    /// the request as it went upstream and the response being changed.
    fn apply_response_mutations(&self, h: &mut http::HeaderMap, sel: &Selected, rec: &StreamRecord<'_>, status: u16) {
        let request = rec.request.as_ref().map(|r| r.view());
        let fmt = |f: &Format, h: &http::HeaderMap| {
            let mut ctx = Context::new(&rec.info).with_response(ResponseView { status, headers: h });
            ctx.request = request;
            f.to_bytes(&ctx)
        };
        let weighted = sel.route.forward().zip(rec.weighted_cluster).and_then(|(f, i)| f.weighted_headers.get(i));
        if let Some(w) = weighted {
            w.response.apply(h, &fmt);
        }
        sel.route.response_headers.apply(h, &fmt);
        self.routes.virtual_hosts[sel.vhost].response_headers.apply(h, &fmt);
        self.routes.response_headers.apply(h, &fmt);
    }

    /// The router's decisions, all synchronous: a local reply, or the request prepared for its
    /// upstream (rewrites, header mutations, hash key, timeouts). The one await, the upstream
    /// call, is made by [`Self::process`] itself: every nested async call would size and copy
    /// its own state machine per request.
    fn route_request(
        &self,
        mut req: Request<Body>,
        ctx: &FilterContext,
        sel: &Selected,
        scheme: &str,
        host: &str,
        info: &ConnContext,
        rec: &mut StreamRecord<'_>,
    ) -> Routed {
        self.stats.rq_total.inc();
        match &sel.route.action {
            Action::Direct { status, body } => {
                self.stats.rq_direct_response.inc();
                let mut r = LocalReply::new(*status);
                // HEAD keeps the announced length and type; hyper sends no body for HEAD.
                if let Some(b) = body {
                    r = r.body(b.clone());
                }
                // Envoy points `location` at the request itself for a 201 or a redirect status.
                if *status == 201 || (300..400).contains(status) {
                    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{pq}")) {
                        r = r.header(http::header::LOCATION, v);
                    }
                }
                rec.keep_request(&req);
                Routed::Reply(self.local_with_route(r.details("direct_response"), sel, rec))
            }
            Action::Redirect(redirect) => {
                // Envoy 1.40 counts redirects as direct responses (`rq_redirect` stays 0).
                self.stats.rq_direct_response.inc();
                let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let location = redirect.location(&sel.route, scheme, host, pq);
                let mut r = LocalReply::new(redirect.status);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r = r.header(http::header::LOCATION, v);
                }
                rec.keep_request(&req);
                Routed::Reply(self.local_with_route(r.details("direct_response"), sel, rec))
            }
            Action::Forward(fwd) => {
                let Some(cluster) = ctx.cluster.clone() else {
                    self.stats.no_cluster.inc();
                    rec.keep_request(&req);
                    let r = LocalReply::new(fwd.cluster_not_found_status).details("cluster_not_found").flag(ResponseFlags::NO_CLUSTER_FOUND);
                    return Routed::Reply(self.local_with_route(r, sel, rec));
                };
                let formatted = rec.weighted_cluster.and_then(|i| fwd.weighted_headers.get(i)).is_some_and(|w| w.request.is_formatted())
                    || sel.route.request_headers.is_formatted()
                    || self.routes.virtual_hosts[sel.vhost].request_headers.is_formatted()
                    || self.routes.request_headers.is_formatted();
                let (method, uri) = if formatted { (req.method().clone(), req.uri().clone()) } else { (http::Method::GET, Uri::default()) };
                // Path and host rewrites.
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                let mut original_path = None;
                let mut original_host = None;
                if let Some(new_pq) = fwd.rewrite_path(&sel.route, &pq) {
                    if let (Ok(uri), Ok(orig)) = (Uri::try_from(new_pq.as_str()), HeaderValue::from_str(&pq)) {
                        *req.uri_mut() = uri;
                        original_path = Some(orig);
                    }
                } else if req.uri().authority().is_some() && req.uri().path_and_query().is_some() {
                    // Absolute-form: upstream gets origin-form (a CONNECT keeps its authority-form).
                    if let Ok(uri) = Uri::try_from(pq.as_str()) {
                        *req.uri_mut() = uri;
                    }
                }
                let new_host = fwd
                    .host_rewrite
                    .clone()
                    .or_else(|| fwd.host_rewrite_header.as_ref().and_then(|h| req.headers().get(h).cloned()));
                if let Some(new_host) = new_host {
                    let old = req.headers().get(HOST).cloned();
                    if fwd.append_x_forwarded_host {
                        if let Some(old) = &old {
                            req.headers_mut().append(X_FORWARDED_HOST.clone(), old.clone());
                        }
                    }
                    req.headers_mut().insert(HOST, new_host);
                    original_host = old;
                }
                if let Some(t) = &fwd.timeout_header {
                    req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), t.clone());
                }
                // Formatted values see the request before its rewrites (Envoy counts the attempt
                // first).
                rec.info.attempt_count = 1;
                let vhost = &self.routes.virtual_hosts[sel.vhost];
                {
                    let si = &rec.info;
                    let fmt = |f: &Format, h: &http::HeaderMap| {
                        f.to_bytes(&Context::new(si).with_request(RequestView { method: &method, uri: &uri, headers: h }))
                    };
                    let headers = req.headers_mut();
                    if let Some(w) = rec.weighted_cluster.and_then(|i| fwd.weighted_headers.get(i)) {
                        w.request.apply(headers, &fmt);
                    }
                    sel.route.request_headers.apply(headers, &fmt);
                    vhost.request_headers.apply(headers, &fmt);
                    self.routes.request_headers.apply(headers, &fmt);
                }
                let headers = req.headers_mut();
                // Set after the mutations: a client's copy is overwritten in place, else appended.
                if let Some(p) = original_path {
                    headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), p);
                }
                if let Some(h) = original_host {
                    headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), h);
                }
                if vhost.attempt_count_in_request {
                    headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
                }
                // Envoy removes a per-try timeout header that reaches this point (one added by
                // the route's header mutations) without applying it; x-envoy-upstream-rq-timeout-ms
                // goes upstream as it is (measured against Envoy 1.40: retry_differential.rs).
                if headers.contains_key(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS) {
                    headers::remove_ordered(headers, |n| *n == X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS);
                }
                let retry = RetryState::new(fwd.retry.as_ref(), headers).map(|state| {
                    Box::new(RetryCall { state, buffer_limit: fwd.buffer_limit, attempt_header: vhost.attempt_count_in_request })
                });
                rec.keep_request(&req);
                let (hash, set_cookie) = compute_hash(&fwd.hash_policies, &req, info.conn.peer);
                let response_idle = fwd.idle_timeout.or(self.stream_idle_timeout).map(|after| crate::upstream::ResponseIdle {
                    after,
                    per_try: false,
                    stream_counter: Some(self.stats.downstream_rq_idle_timeout.clone()),
                });
                let lb = LbContext {
                    hash,
                    downstream_http2: req.version() == Version::HTTP_2,
                    report_host: rec.full,
                    response_deadline: None,
                    response_idle,
                };
                *req.version_mut() = Version::HTTP_11;
                let for_1xx = cluster.clone();
                hyper::ext::on_informational(&mut req, move |res| {
                    for_1xx.stats().charge_informational(res.status().as_u16());
                });
                // The route timeout and the per-route idle timeout (before response headers).
                // A route without an idle timeout of its own has the connection manager's
                // `stream_idle_timeout`.
                let deadline = match (fwd.timeout, fwd.idle_timeout.or(self.stream_idle_timeout)) {
                    (Some(t), Some(i)) if i < t => Some((i, true)),
                    (Some(t), _) => Some((t, false)),
                    (None, Some(i)) => Some((i, true)),
                    (None, None) => None,
                };
                Routed::Upstream(UpstreamCall { req, cluster, lb, deadline, set_cookie, retry })
            }
        }
    }

    /// The downstream response for an upstream call's outcome: the upstream's response with
    /// Envoy's response headers, or the local reply for a timeout (`Err(idle)`) or a failure.
    fn upstream_response(
        &self,
        result: Result<Result<Response<Body>, UpstreamFailure>, bool>,
        sent: Instant,
        cluster: &Cluster,
        sel: &Selected,
        rec: &mut StreamRecord<'_>,
    ) -> Response<Body> {
        let result = match result {
            Ok(r) => r,
            Err(idle) => {
                cluster.stats().upstream_rq_timeout().inc();
                let (status, body) = if idle { (504, STREAM_TIMEOUT) } else { (504, UPSTREAM_TIMEOUT) };
                cluster.stats().charge_response(status, None);
                if idle {
                    self.stats.downstream_rq_idle_timeout.inc();
                }
                let r = if idle {
                    LocalReply::new(status).body(body).details("stream_idle_timeout").flag(ResponseFlags::STREAM_IDLE_TIMEOUT)
                } else {
                    LocalReply::new(status).body(body).details("response_timeout").flag(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)
                };
                return self.local_with_route(r, sel, rec);
            }
        };
        match result {
            Ok(mut resp) => {
                let elapsed_ms = sent.elapsed().as_secs_f64() * 1000.0;
                cluster.stats().charge_response(resp.status().as_u16(), Some(elapsed_ms));
                rec.info.first_upstream_rx = Some(rec.info.elapsed());
                rec.info.upstream.protocol = Some(resp.version());
                if let Some(h) = resp.extensions().get::<UpstreamHost>() {
                    rec.info.upstream.host = Some(h.0);
                }
                if let Some(l) = resp.extensions().get::<UpstreamLocalAddress>() {
                    rec.info.upstream.local_address = Some(l.0);
                }
                rec.info.response_code = Some(resp.status().as_u16());
                rec.info.response_code_details = Some("via_upstream".into());
                let status = resp.status().as_u16();
                *resp.version_mut() = Version::HTTP_11;
                let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let h = resp.headers_mut();
                headers::strip_response_hop_by_hop(h, switching);
                // Envoy overwrites `server` in place; when the upstream sent none it goes last.
                let had_server = h.contains_key(http::header::SERVER);
                if had_server && self.server_transformation == ServerHeaderTransformation::Overwrite {
                    h.insert(http::header::SERVER, self.server_name.clone());
                }
                h.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(elapsed_ms as u64));
                self.apply_response_mutations(h, sel, rec, status);
                if !h.contains_key(http::header::DATE) {
                    h.insert(http::header::DATE, http_date());
                }
                if !had_server && self.server_transformation != ServerHeaderTransformation::PassThrough {
                    h.insert(http::header::SERVER, self.server_name.clone());
                    rec.server_appended = true;
                }
                resp
            }
            Err(failure) => {
                let (flag, reason) = match &failure {
                    UpstreamFailure::NoHealthyUpstream => (ResponseFlags::NO_HEALTHY_UPSTREAM, None),
                    UpstreamFailure::ProtocolError => (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, Some("protocol_error")),
                    UpstreamFailure::Overflow => (ResponseFlags::UPSTREAM_OVERFLOW, Some("overflow")),
                    UpstreamFailure::ConnectionFailure { .. } => {
                        (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Some("remote_connection_failure"))
                    }
                    UpstreamFailure::ConnectTimeout => (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Some("connection_timeout")),
                    UpstreamFailure::ConnectionTermination => {
                        (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, Some("connection_termination"))
                    }
                    UpstreamFailure::RemoteReset { refused: true } => (ResponseFlags::UPSTREAM_REMOTE_RESET, Some("remote_refused_stream_reset")),
                    UpstreamFailure::RemoteReset { refused: false } => (ResponseFlags::UPSTREAM_REMOTE_RESET, Some("remote_reset")),
                };
                let transport = match &failure {
                    UpstreamFailure::ConnectionFailure { transport_reason: Some(r) } => Some(r.clone()),
                    _ => None,
                };
                let details = match (reason, &transport) {
                    (None, _) => std::borrow::Cow::Borrowed("no_healthy_upstream"),
                    (Some(r), None) => format!("upstream_reset_before_response_started{{{r}}}").into(),
                    (Some(r), Some(t)) => format!("upstream_reset_before_response_started{{{r}|{}}}", t.replace(' ', "_")).into(),
                };
                rec.info.upstream.transport_failure_reason = transport;
                let reset_body = |reason: &str| {
                    if rec.info.attempt_count > 1 {
                        crate::http::local_reply::retried_reset_body(reason)
                    } else {
                        reset_body(reason)
                    }
                };
                let reply = match &failure {
                    UpstreamFailure::NoHealthyUpstream => LocalReply::new(503).body(NO_HEALTHY_UPSTREAM),
                    // An upstream that answers something that is not HTTP: 502, as Envoy.
                    UpstreamFailure::ProtocolError => LocalReply::new(502).body(reset_body(failure.reset_reason())),
                    UpstreamFailure::Overflow => LocalReply::new(503)
                        .body(reset_body(failure.reset_reason()))
                        .header(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true")),
                    _ => LocalReply::new(503).body(reset_body(failure.reset_reason())),
                };
                cluster.stats().charge_response(reply.status.as_u16(), None);
                self.local_with_route(reply.details(details).flag(flag), sel, rec)
            }
        }
    }
}

/// How one attempt of a retried request ended.
enum Attempt {
    Done(Result<Response<Body>, UpstreamFailure>),
    PerTryTimeout,
    /// `per_try_idle_timeout` before the response headers.
    PerTryIdleTimeout,
    /// The route timeout (`false`) or the route's idle timeout (`true`).
    Global(bool),
}

impl HttpConnectionManager {
    /// Forward a request that may be retried (Envoy's router with a retry state): the body is
    /// buffered for replays (up to the route's buffer limit; a larger body goes once, without
    /// retries), each attempt picks a host (`previous_hosts` avoids the hosts tried), runs under
    /// the per-try timeout and the route timeout, and a retriable outcome waits the jittered
    /// back-off and goes again while retries and the `max_retries` circuit breaker allow.
    async fn forward_retrying(&self, call: UpstreamCall, sel: &Selected, rec: &mut StreamRecord<'_>) -> Response<Body> {
        let UpstreamCall { mut req, cluster, mut lb, deadline, set_cookie, retry } = call;
        let Some(retry) = retry else { unreachable!("forward_retrying needs a retry state") };
        let RetryCall { mut state, buffer_limit, attempt_header } = *retry;
        headers::frame_request_body(&mut req);
        let (parts, body) = req.into_parts();
        let replay = match ReplayBody::read(body, buffer_limit).await {
            Ok(r) => r,
            Err(()) => {
                rec.info.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                return self.local_with_route(LocalReply::new(400).details("downstream_remote_disconnect"), sel, rec);
            }
        };
        let mut once = None;
        let replay = match replay {
            ReplayBody::Whole(b) => Some(b),
            ReplayBody::TooLarge(body) => {
                cluster.stats().store().counter(format!("{}retry_or_shadow_abandoned", cluster.stats().prefix())).inc();
                once = Some(body);
                None
            }
        };
        let policy = state.policy().cloned();
        let per_try = policy.as_ref().and_then(|p| p.per_try_timeout);
        let per_try_idle = policy.as_ref().and_then(|p| p.per_try_idle_timeout);
        if let Some(after) = per_try_idle {
            if lb.response_idle.as_ref().is_none_or(|i| after < i.after) {
                lb.response_idle = Some(crate::upstream::ResponseIdle { after, per_try: true, stream_counter: None });
            }
        }
        let (previous_hosts, reselections) = policy.as_ref().map_or((false, 0), |p| (p.previous_hosts, p.host_reselections));
        let now = tokio::time::Instant::now();
        let global = deadline.map(|(d, idle)| (now + d, idle));
        if let Some((at, false)) = global {
            lb.response_deadline = Some(at);
        }
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt: u32 = 0;
        rec.info.first_upstream_tx = Some(rec.info.elapsed());
        let mut resp = loop {
            attempt += 1;
            rec.info.attempt_count = attempt;
            let body = match (&replay, once.take()) {
                (Some(b), _) => b.body(),
                (None, Some(b)) => b,
                (None, None) => Body::empty(),
            };
            let mut req = Request::from_parts(parts.clone(), body);
            if attempt_header {
                req.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
            }
            // A retry tells the upstream what is left: the per-try timeout, at most the rest of
            // the route timeout (Envoy's setTimeoutHeaders).
            if attempt > 1 && req.headers().contains_key(&X_ENVOY_EXPECTED_RQ_TIMEOUT_MS) {
                if let Some((at, false)) = global {
                    let left = at.saturating_duration_since(tokio::time::Instant::now());
                    let expected = per_try.map_or(left, |p| p.min(left)).as_millis().max(1) as u64;
                    req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), HeaderValue::from(expected));
                }
            }
            let host = if previous_hosts && !tried.is_empty() {
                cluster.choose_host_with(&lb, reselections, |h| tried.contains(&h.address))
            } else {
                cluster.choose_host(&lb)
            };
            let sent = Instant::now();
            let Some(host) = host else {
                cluster.stats().upstream_cx_none_healthy.inc();
                break self.upstream_response(Ok(Err(UpstreamFailure::NoHealthyUpstream)), sent, &cluster, sel, rec);
            };
            tried.push(host.address);
            rec.info.upstream.host = Some(host.address);
            let outcome = {
                let send = cluster.send_to(host.clone(), req, &lb);
                let per_try_at = per_try.map(|p| tokio::time::Instant::now() + p);
                let per_try_idle_at = per_try_idle.map(|p| tokio::time::Instant::now() + p);
                tokio::select! {
                    r = send => Attempt::Done(r),
                    _ = sleep_until(per_try_at) => Attempt::PerTryTimeout,
                    _ = sleep_until(per_try_idle_at) => Attempt::PerTryIdleTimeout,
                    idle = global_expiry(global) => Attempt::Global(idle),
                }
            };
            let (would, kind) = match &outcome {
                Attempt::Global(_) => (false, None),
                Attempt::PerTryTimeout => {
                    cluster.retry_stats().upstream_rq_per_try_timeout.inc();
                    host.report(crate::upstream::Outcome::Timeout);
                    (state.would_retry_reset(ResetKind::PerTryTimeout), None)
                }
                Attempt::PerTryIdleTimeout => {
                    cluster.retry_stats().upstream_rq_per_try_idle_timeout.inc();
                    host.report(crate::upstream::Outcome::Timeout);
                    (state.would_retry_reset(ResetKind::PerTryTimeout), None)
                }
                Attempt::Done(Ok(r)) => (state.would_retry_response(r.status().as_u16(), r.headers()), None),
                Attempt::Done(Err(f)) => {
                    let k = ResetKind::of(f);
                    (state.would_retry_reset(k), Some(k))
                }
            };
            if let Attempt::Global(idle) = outcome {
                host.report(crate::upstream::Outcome::Timeout);
                break self.upstream_response(Err(idle), sent, &cluster, sel, rec);
            }
            let status = if replay.is_some() && kind != Some(ResetKind::Overflow) {
                state.should_retry(would, &cluster)
            } else {
                RetryStatus::No
            };
            match status {
                RetryStatus::Yes(backoff) => {
                    if let Attempt::Done(Ok(r)) = &outcome {
                        cluster.stats().charge_retried_response(r.status().as_u16());
                    }
                    drop(outcome);
                    let wake = tokio::time::Instant::now() + backoff;
                    if let Some((at, idle)) = global {
                        if at <= wake {
                            tokio::time::sleep_until(at).await;
                            break self.upstream_response(Err(idle), sent, &cluster, sel, rec);
                        }
                    }
                    tokio::time::sleep_until(wake).await;
                    continue;
                }
                RetryStatus::LimitExceeded => rec.info.set_early_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                RetryStatus::Overflow => rec.info.set_early_flag(ResponseFlags::UPSTREAM_OVERFLOW),
                RetryStatus::No => {}
            }
            break match outcome {
                Attempt::Done(r) => self.upstream_response(Ok(r), sent, &cluster, sel, rec),
                other => {
                    // The per-try (idle) timeout ended the last attempt.
                    let details = if matches!(other, Attempt::PerTryIdleTimeout) { "upstream_per_try_idle_timeout" } else { "upstream_per_try_timeout" };
                    cluster.stats().charge_response(504, None);
                    let r = LocalReply::new(504).body(UPSTREAM_TIMEOUT).details(details).flag(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    self.local_with_route(r, sel, rec)
                }
            };
        };
        if let Some(c) = set_cookie {
            resp.headers_mut().append(http::header::SET_COOKIE, c);
        }
        if self.routes.virtual_hosts[sel.vhost].attempt_count_in_response {
            resp.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
        }
        resp
    }
}

/// Sleep until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves with the kind of the route deadline (idle or not) when it expires; never without one.
async fn global_expiry(global: Option<(tokio::time::Instant, bool)>) -> bool {
    match global {
        Some((at, idle)) => {
            tokio::time::sleep_until(at).await;
            idle
        }
        None => std::future::pending().await,
    }
}

/// A request body read for replays.
enum ReplayBody {
    Whole(crate::router::retry::Replay),
    /// Over the buffer limit: what was read, then the rest, sent once.
    TooLarge(Body),
}

impl ReplayBody {
    async fn read(body: Body, limit: usize) -> Result<ReplayBody, ()> {
        crate::router::retry::Replay::read(body, limit).await.map(|r| match r {
            Ok(whole) => ReplayBody::Whole(whole),
            Err(partial) => ReplayBody::TooLarge(partial),
        })
    }
}

/// How an allowed upgrade or CONNECT goes upstream.
#[derive(Debug, Clone, Copy, Default)]
struct Tunnel {
    /// The client speaks HTTP/2: the tunnel is spliced here, the client gets `200`.
    h2: bool,
    /// A CONNECT (a `2xx` switches); else an upgrade (a `101` switches).
    connect: bool,
    /// An HTTP/2 extended CONNECT, sent upstream as an HTTP/1.1 upgrade.
    extended: bool,
    /// A CONNECT on a route with `connect_config`: terminated here (TCP to a host).
    terminate_connect: bool,
}

impl HttpConnectionManager {
    /// Forward an allowed upgrade or CONNECT. The upstream's `101` (or a `2xx` to CONNECT)
    /// comes back with the upstream side of the tunnel: for an HTTP/1 client as a response
    /// extension the codec splices after writing the head; for an HTTP/2 client (extended
    /// CONNECT) answered `200` and spliced in a task. No `x-envoy-upstream-service-time` on
    /// these responses (Envoy adds none).
    async fn tunnel(&self, call: UpstreamCall, t: Tunnel, sel: &Selected, rec: &mut StreamRecord<'_>) -> Response<Body> {
        let UpstreamCall { mut req, cluster, lb, deadline, set_cookie: _, retry: _ } = call;
        let downstream = t.h2.then(|| hyper::upgrade::on(&mut req));
        let mut resp = if t.terminate_connect {
            match self.connect_tcp(&cluster, &lb).await {
                Ok(io) => {
                    let mut r = Response::new(Body::empty());
                    let h = r.headers_mut();
                    self.apply_response_mutations(h, sel, rec, 200);
                    h.insert(http::header::DATE, http_date());
                    if self.server_transformation != ServerHeaderTransformation::PassThrough {
                        h.insert(http::header::SERVER, self.server_name.clone());
                    }
                    r.extensions_mut().insert(UpstreamTunnel::ready(io));
                    return self.finish_tunnel(r, downstream);
                }
                Err(reply) => return self.local_with_route(reply, sel, rec),
            }
        } else {
            if t.extended {
                // RFC 8441 → an HTTP/1.1 upgrade: `GET` with `upgrade: <protocol>` and
                // `connection: upgrade`.
                let protocol = req.extensions_mut().remove::<hyper::ext::Protocol>();
                *req.method_mut() = http::Method::GET;
                if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(p.as_str()).ok()) {
                    let h = req.headers_mut();
                    h.insert(http::header::UPGRADE, p);
                    h.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
                }
            }
            let sent = Instant::now();
            let send = cluster.send(req, &lb);
            let result = match deadline {
                Some((d, idle)) => tokio::time::timeout(d, send).await.map_err(|_| idle),
                None => Ok(send.await),
            };
            self.upstream_response(result, sent, &cluster, sel, rec)
        };
        headers::remove_ordered(resp.headers_mut(), |n| *n == X_ENVOY_UPSTREAM_SERVICE_TIME);
        let switched = if t.connect { resp.status().is_success() } else { resp.status() == StatusCode::SWITCHING_PROTOCOLS };
        if !switched || resp.extensions().get::<IsLocalReply>().is_some() {
            return resp;
        }
        let up = hyper::upgrade::on(&mut resp);
        let up: TunnelFuture = Box::pin(async move {
            let u = up.await.map_err(std::io::Error::other)?;
            Ok(Box::new(TokioIo::new(u)) as BoxIo)
        });
        resp.extensions_mut().insert(UpstreamTunnel::new(up));
        self.finish_tunnel(resp, downstream)
    }

    /// For an HTTP/2 client: `200`, no hop-by-hop headers, and the splice in a task once both
    /// sides have switched. For an HTTP/1 client the codec does this.
    fn finish_tunnel(&self, mut resp: Response<Body>, downstream: Option<hyper::upgrade::OnUpgrade>) -> Response<Body> {
        let Some(down) = downstream else {
            return resp;
        };
        let Some(up) = resp.extensions_mut().remove::<UpstreamTunnel>().and_then(|t| t.take()) else {
            return resp;
        };
        *resp.status_mut() = StatusCode::OK;
        *resp.body_mut() = Body::empty();
        headers::remove_ordered(resp.headers_mut(), |n| *n == http::header::CONNECTION || *n == http::header::UPGRADE);
        tokio::spawn(async move {
            if let (Ok(d), Ok(u)) = tokio::join!(down, up) {
                codec::tunnel::splice(TokioIo::new(d), bytes::Bytes::new(), u).await;
            }
        });
        resp
    }

    /// A TCP connection to the host the cluster's load balancer picks (CONNECT termination),
    /// within the cluster's `connect_timeout`; Envoy's 503 replies when there is none.
    async fn connect_tcp(&self, cluster: &Cluster, lb: &LbContext) -> Result<BoxIo, LocalReply> {
        let Some(host) = cluster.choose_host(lb) else {
            cluster.stats().upstream_cx_none_healthy.inc();
            return Err(LocalReply::new(503).body(NO_HEALTHY_UPSTREAM));
        };
        let failure = |f: UpstreamFailure| LocalReply::new(503).body(reset_body(f.reset_reason()));
        match tokio::time::timeout(cluster.connect_timeout(), tokio::net::TcpStream::connect(host.address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(tcp))
            }
            Ok(Err(_)) => {
                cluster.stats().upstream_cx_connect_fail.inc();
                Err(failure(UpstreamFailure::ConnectionFailure { transport_reason: None }))
            }
            Err(_) => {
                cluster.stats().upstream_cx_connect_timeout.inc();
                Err(failure(UpstreamFailure::ConnectTimeout))
            }
        }
    }
}

/// What the router decided for a request.
// Lives on the stack for one call; boxing the larger variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Routed {
    Reply(Response<Body>),
    Upstream(UpstreamCall),
}

/// A request ready for its upstream cluster.
struct UpstreamCall {
    req: Request<Body>,
    cluster: Arc<Cluster>,
    lb: LbContext,
    /// The route timeout or the per-route idle timeout (`true`), whichever ends first.
    deadline: Option<(std::time::Duration, bool)>,
    /// A generated hash-policy cookie for the response.
    set_cookie: Option<HeaderValue>,
    /// Retries (a route or virtual-host `retry_policy`, or `x-envoy-retry-on`): `None` on the
    /// plain path.
    retry: Option<Box<RetryCall>>,
}

/// What a retried request needs beyond [`UpstreamCall`].
struct RetryCall {
    state: RetryState,
    /// The most request body kept for replays.
    buffer_limit: usize,
    /// Write `x-envoy-attempt-count` on each upstream attempt.
    attempt_header: bool,
}

/// The upgrade a request asks for (lower-case), if it really asks: `Upgrade` plus the `upgrade`
/// token in `Connection` (HTTP/1; `h2c` upgrades are not honoured), `connect` for a CONNECT, the
/// `:protocol` of an HTTP/2 extended CONNECT (RFC 8441).
fn upgrade_kind(req: &Request<Body>) -> Option<String> {
    if req.method() == http::Method::CONNECT {
        return Some(match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) => p.as_str().to_ascii_lowercase(),
            None => "connect".to_string(),
        });
    }
    if req.version() == Version::HTTP_2 {
        return None;
    }
    let headers = req.headers();
    let kind = headers.get(http::header::UPGRADE)?.to_str().ok()?.trim().to_ascii_lowercase();
    let asks = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (asks && kind != "h2c").then_some(kind)
}

/// HTTP/2 → HTTP/1.1 header form, as Envoy's HTTP/2 codec builds it: `host` (from
/// `:authority`) first, and the `cookie` crumbs joined with `; ` into one header after the
/// other request headers.
fn h2_to_h1_headers(headers: &mut http::HeaderMap, host: HeaderValue) {
    let cookies: Vec<&[u8]> = headers.get_all(http::header::COOKIE).iter().map(|v| v.as_bytes()).collect();
    let joined = if cookies.is_empty() { None } else { HeaderValue::from_bytes(&cookies.join(&b"; "[..])).ok() };
    let old = std::mem::take(headers);
    headers.reserve(old.len() + 1);
    headers.insert(HOST, host);
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(n) = name {
            current = Some(n);
        }
        match &current {
            Some(n) if *n != HOST && *n != http::header::COOKIE => {
                headers.append(n.clone(), value);
            }
            _ => {}
        }
    }
    if let Some(j) = joined {
        headers.insert(http::header::COOKIE, j);
    }
}

/// The client address Envoy trusts (`%DOWNSTREAM_REMOTE_ADDRESS%`), from the request as it
/// arrived: without `use_remote_address` the last `x-forwarded-for` address, with it the one
/// `xff_num_trusted_hops` from the right; `None` (the peer) when there is none or it is not an
/// IP address.
fn trusted_client(headers: &http::HeaderMap, use_remote_address: bool, trusted_hops: usize) -> Option<SocketAddr> {
    if use_remote_address && trusted_hops == 0 {
        return None;
    }
    let values: Vec<&str> = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return None;
    }
    let joined = values.join(",");
    let hops: Vec<&str> = joined.split(',').map(str::trim).collect();
    let skip = if use_remote_address { trusted_hops - 1 } else { 0 };
    let entry = hops.len().checked_sub(1 + skip).map(|i| hops[i])?;
    entry.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Whether a request is gRPC (`content-type: application/grpc…`), as Envoy decides it.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status Envoy gives a local reply's HTTP status.
fn http_to_grpc_status(status: u16) -> u16 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A local reply to a gRPC request, as Envoy sends it: trailers-only, `:status 200`,
/// `content-type: application/grpc`, `grpc-status` mapped from the HTTP status and the body as
/// `grpc-message`, after the reply's own headers (route headers, …) and before `date`/`server`.
fn grpc_local_reply(resp: Response<Body>, h2: bool) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let message = body.full_bytes().map(|b| grpc_message(b)).unwrap_or_default();
    let old = std::mem::take(&mut parts.headers);
    let h = &mut parts.headers;
    let mut tail = Vec::new();
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(n) = name {
            current = Some(n);
        }
        let Some(n) = &current else { continue };
        match *n {
            http::header::CONTENT_LENGTH | http::header::CONTENT_TYPE => {}
            http::header::DATE | http::header::SERVER => tail.push((n.clone(), value)),
            _ => {
                h.append(n.clone(), value);
            }
        }
    }
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(http_to_grpc_status(parts.status.as_u16())));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert(GRPC_MESSAGE.clone(), v);
        }
    }
    for (n, v) in tail {
        h.append(n, v);
    }
    if !h2 {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    parts.status = http::StatusCode::OK;
    Response::from_parts(parts, Body::empty())
}

/// `grpc-message` encoding: bytes outside printable ASCII and `%` are percent-encoded.
fn grpc_message(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for &b in body {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Add `value` to a header as Envoy's `appendCopy` does: existing values (several lines joined
/// with `,`) and the new one become one line joined with `, `, in the place of the first line.
fn append_joined(headers: &mut http::HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let existing: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    if existing.is_empty() {
        headers.append(name.clone(), value.clone());
        return;
    }
    let mut joined = existing.join(&b","[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name.clone(), v);
    }
}

/// This host's first non-loopback address of a family (Envoy's local address, which it records
/// in `x-forwarded-for` for loopback peers), looked up once.
pub fn local_host_address(v4: bool) -> Option<std::net::IpAddr> {
    static ADDRS: std::sync::OnceLock<(Option<std::net::IpAddr>, Option<std::net::IpAddr>)> = std::sync::OnceLock::new();
    let (a4, a6) = ADDRS.get_or_init(|| {
        let mut a4 = None;
        let mut a6 = None;
        if let Ok(ifaces) = nix::ifaddrs::getifaddrs() {
            for i in ifaces {
                let Some(addr) = i.address else { continue };
                if let Some(sin) = addr.as_sockaddr_in() {
                    let ip = std::net::IpAddr::V4(sin.ip());
                    if a4.is_none() && !ip.is_loopback() {
                        a4 = Some(ip);
                    }
                } else if let Some(sin6) = addr.as_sockaddr_in6() {
                    let ip = std::net::IpAddr::V6(sin6.ip());
                    if a6.is_none() && !ip.is_loopback() {
                        a6 = Some(ip);
                    }
                }
            }
        }
        (a4, a6)
    });
    if v4 { *a4 } else { *a6 }
}

fn scheme_static(s: &str) -> &'static str {
    if s == "https" {
        "https"
    } else {
        "http"
    }
}


/// Route `hash_policy` → the LB hash key, and a `set-cookie` when a cookie policy with a `ttl`
/// had to generate the cookie (Envoy's behaviour).
fn compute_hash(
    policies: &[HashPolicy],
    req: &Request<Body>,
    peer: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    let mut mix = |h: u64, terminal: bool| -> bool {
        hash = Some(match hash {
            Some(prev) => prev.rotate_left(1) ^ h,
            None => h,
        });
        terminal
    };
    for policy in policies {
        let stop = match policy {
            HashPolicy::Header { name, terminal } => {
                let values: Vec<&[u8]> = req.headers().get_all(name).iter().map(|v| v.as_bytes()).collect();
                if values.is_empty() {
                    false
                } else {
                    mix(key_hash(&values.join(&b","[..])), *terminal)
                }
            }
            HashPolicy::Cookie { name, ttl, path, terminal } => match cookie_value(req.headers(), name) {
                Some(v) => mix(key_hash(v.as_bytes()), *terminal),
                None => match ttl {
                    Some(ttl) => {
                        // Generate a stable value from the peer address, as Envoy does.
                        let value = format!("{:016x}", key_hash(peer.to_string().as_bytes()));
                        let mut c = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if let Some(p) = path {
                            c.push_str(&format!("; Path={p}"));
                        }
                        c.push_str("; HttpOnly");
                        set_cookie = HeaderValue::from_str(&c).ok();
                        mix(key_hash(value.as_bytes()), *terminal)
                    }
                    None => false,
                },
            },
            HashPolicy::SourceIp { terminal } => mix(key_hash(peer.ip().to_string().as_bytes()), *terminal),
            HashPolicy::QueryParameter { name, terminal } => {
                match query_param(req.uri().query().unwrap_or(""), name) {
                    Some(v) => mix(key_hash(v.as_bytes()), *terminal),
                    None => false,
                }
            }
        };
        if stop {
            break;
        }
    }
    (hash, set_cookie)
}

/// The hash of a policy key (xxHash64, seed 0, as Envoy).
fn key_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
    })
}
