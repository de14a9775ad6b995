//! HTTP filters that run before the router, in `http_filters` order. A filter sees the request
//! after the connection manager's header changes and either lets it continue (possibly mutated)
//! or answers it with a local reply.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};

use crate::body::Body;
use crate::router::config::{PerFilterConfigs, RouteTable, Selected};
use crate::upstream::{Cluster, ClusterManager};

pub mod ext_authz;
pub mod health_check;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a filter decided.
pub enum FilterOutcome {
    Continue,
    Respond(Response<Body>),
}

/// The downstream connection as filters see it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Envoy's connection id (`%CONNECTION_ID%`), unique in the process.
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<Arc<TlsInfo>>,
}

impl ConnectionInfo {
    /// A new connection record with the next connection id.
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: Option<Arc<TlsInfo>>) -> ConnectionInfo {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionInfo { id, peer, local, tls }
    }
}

/// TLS facts of a downstream connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// The identity of the listener's own certificate (URI SAN, else DNS SAN, else subject `CN=…`).
    pub local_principal: String,
    /// The client certificate's identity, with mTLS.
    pub peer_principal: Option<String>,
    /// The client certificate (DER) with mTLS.
    pub peer_certificate: Option<Vec<u8>>,
    /// "HTTP/2" when ALPN chose h2.
    pub alpn_h2: bool,
    /// The negotiated version in OpenSSL's spelling (`TLSv1.3`), `%DOWNSTREAM_TLS_VERSION%`.
    pub version: Option<&'static str>,
    /// The negotiated cipher suite, OpenSSL's name (`%DOWNSTREAM_TLS_CIPHER%`).
    pub cipher: Option<&'static str>,
    /// The listener's certificate (DER) presented on this connection (`%DOWNSTREAM_LOCAL_*%`).
    pub local_certificate: Option<Arc<[u8]>>,
}

/// Per-request state shared between the connection manager, the filters and the router.
pub struct FilterContext {
    pub conn: Arc<ConnectionInfo>,
    pub routes: Arc<RouteTable>,
    /// The route the request matched; `None`: no route (the filters still run, as in Envoy,
    /// and the router answers 404 after them).
    pub selected: Option<Selected>,
    /// The cluster the route points at, when it forwards to a known cluster.
    pub cluster: Option<Arc<Cluster>>,
    pub stream_id: u64,
    pub start_time: SystemTime,
    /// `http.<stat_prefix>.` of the connection manager.
    pub stat_prefix: Arc<str>,
    /// Headers to add to the downstream response (e.g. ext_authz `response_headers_to_add`).
    pub response_headers_to_add: Vec<(HeaderName, HeaderValue)>,
    /// Set by a filter that changed headers which may change the route.
    pub clear_route_cache: bool,
    /// The health-check filter recognised the request as a health check (Envoy's stream info
    /// flag: no response-code stats, `not_health_check_filter`).
    pub health_check: bool,
}

impl FilterContext {
    /// The most specific per-filter config: route, else virtual host, else route table.
    /// Without a route there is none (Envoy looks per-filter configs up through the route).
    pub fn per_filter<T>(&self, get: impl Fn(&PerFilterConfigs) -> Option<&T>) -> Option<&T> {
        let sel = self.selected.as_ref()?;
        get(&sel.route.per_filter)
            .or_else(|| get(&self.routes.virtual_hosts[sel.vhost].per_filter))
            .or_else(|| get(&self.routes.per_filter))
    }
    /// All levels from least to most specific (for merging `context_extensions`); none without
    /// a route.
    pub fn per_filter_levels(&self) -> impl Iterator<Item = &PerFilterConfigs> {
        self.selected
            .iter()
            .flat_map(|sel| [&self.routes.per_filter, &self.routes.virtual_hosts[sel.vhost].per_filter, &sel.route.per_filter])
    }
}

/// An HTTP filter.
pub trait HttpFilter: Send + Sync {
    /// Runs at request headers (a filter that needs the body buffers it from `req`).
    fn on_request<'a>(
        &'a self,
        req: &'a mut Request<Body>,
        ctx: &'a mut FilterContext,
    ) -> BoxFuture<'a, FilterOutcome>;
}

/// What filter factories may use.
pub struct FilterFactoryContext<'a> {
    pub clusters: &'a Arc<ClusterManager>,
    pub stats: &'a crate::stats::Store,
    /// `http.<stat_prefix>.`
    pub stat_prefix: &'a str,
    pub server_name: &'a HeaderValue,
}

/// Build the filter for one `http_filters` entry; the router (always last) and disabled filters
/// yield `None`.
pub fn build(
    filter: &sluice_config::hcm::HttpFilter,
    ctx: &FilterFactoryContext<'_>,
) -> anyhow::Result<Option<Arc<dyn HttpFilter>>> {
    use sluice_config::hcm::{HttpFilter as HttpFilterCfg, HttpFilterConfig, Router};
    let HttpFilterCfg { name, typed_config, is_optional, disabled } = filter;
    // `is_optional` lets Envoy skip a filter it does not know; sluice refuses an unknown filter's
    // `typed_config` at load, and every filter it knows is built whatever the flag says.
    crate::config_audit::without_effect(is_optional, "only matters for filters sluice does not have, which are refused at load");
    if *disabled {
        return Ok(None);
    }
    let default_router;
    let config = match (typed_config, name.as_str()) {
        (Some(c), _) => c,
        (None, "envoy.filters.http.router" | "envoy.router") => {
            default_router = HttpFilterConfig::Router(Router::default());
            &default_router
        }
        (None, _) => anyhow::bail!("unknown HTTP filter \"{name}\" without typed_config"),
    };
    match config {
        HttpFilterConfig::Router(router) => {
            let Router {
                dynamic_stats,
                start_child_span,
                suppress_envoy_headers,
                strict_check_headers,
                respect_expected_rq_timeout,
                suppress_grpc_request_failure_code_stats,
                upstream_log,
                upstream_http_filters,
            } = router;
            for refused in [
                dynamic_stats,
                start_child_span,
                suppress_envoy_headers,
                strict_check_headers,
                respect_expected_rq_timeout,
                suppress_grpc_request_failure_code_stats,
                upstream_log,
                upstream_http_filters,
            ] {
                crate::config_audit::refused_at_load(refused);
            }
            Ok(None)
        }
        HttpFilterConfig::ExtAuthz(cfg) => Ok(Some(Arc::new(ext_authz::ExtAuthzFilter::build(cfg, ctx)?))),
        HttpFilterConfig::HealthCheck(cfg) => Ok(Some(Arc::new(health_check::HealthCheckFilter::build(cfg, ctx)?))),
    }
}
