//! Listeners: bind, accept, pick the filter chain (SNI, TLS or plaintext), terminate TLS, and
//! serve the connection manager of the chain: HTTP/1 with sluice's codec (`http::codec`),
//! HTTP/2 with hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_config::core::HeadersWithUnderscoresAction;
use sluice_config::hcm::{CodecType, HttpConnectionManager as HcmConfig};
use sluice_config::listener::{FilterChain, Listener as ListenerConfig, NetworkFilterConfig, TransportSocketConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::access_log::connection::ConnectionLog;
use crate::access_log::AccessLogs;
use crate::filters::{ConnectionInfo, TlsInfo};
use crate::body::Body;
use crate::http::codec::{self, CodecStats, ConnEnd, ParseConfig, Underscores};
use crate::stream_info::ResponseFlags;
use crate::http::conn_manager::{HttpConnectionManager, ListenerHttpStats, ConnContext};
use crate::stats::{Counter, Gauge, Histogram, Store};
use crate::tls::{self, DownstreamTls};
use crate::upstream::ClusterManager;

/// One filter chain, built.
pub struct Chain {
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    tls: Option<DownstreamTls>,
    codec: CodecType,
    hcm: Arc<HttpConnectionManager>,
    listener_http_stats: Arc<ListenerHttpStats>,
    /// The HTTP/1 codec's settings.
    h1: codec::Config,
    /// `http2_protocol_options.allow_connect`: extended CONNECT (RFC 8441) on HTTP/2.
    h2_allow_connect: bool,
}

/// A listener, built from config, not yet bound.
pub struct Listener {
    /// The config name, or a generated UUID as Envoy does for unnamed listeners.
    pub name: String,
    pub address: SocketAddr,
    chains: Vec<Chain>,
    stats: ListenerStats,
    access_logs: Option<Arc<AccessLogs>>,
}

struct ListenerStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_destroy: Counter,
    downstream_cx_length_ms: Histogram,
    no_filter_chain_match: Counter,
    server_total_connections: Gauge,
}

/// `listener.<ip>_<port>.` as Envoy names listener stats.
pub fn listener_stat_prefix(addr: SocketAddr) -> String {
    format!("listener.{}_{}.", addr.ip(), addr.port())
}

impl Listener {
    /// Build a listener; errors are (path relative to the listener, message).
    pub fn build(cfg: &ListenerConfig, clusters: &Arc<ClusterManager>, store: &Store) -> Result<Listener, (String, String)> {
        let address = cfg
            .address
            .socket_address
            .as_ref()
            .and_then(|s| s.to_socket_addr())
            .ok_or_else(|| ("address.socket_address".to_string(), "an IP address and port are required".to_string()))?;
        let lprefix = listener_stat_prefix(address);
        let mut chains = Vec::new();
        let all: Vec<(String, &FilterChain)> = cfg
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("filter_chains[{i}]"), c))
            .chain(cfg.default_filter_chain.iter().map(|c| ("default_filter_chain".to_string(), c)))
            .collect();
        for (path, chain) in all {
            chains.push(build_chain(chain, clusters, store, &lprefix).map_err(|(p, e)| (format!("{path}.{p}"), e))?);
        }
        if chains.is_empty() {
            return Err(("filter_chains".to_string(), "at least one filter chain is required".to_string()));
        }
        let access_logs = AccessLogs::build(&cfg.access_log, store).map_err(|(p, e)| (format!("access_log{p}"), e))?;
        Ok(Listener {
            name: cfg.name.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            address,
            chains,
            access_logs,
            stats: ListenerStats {
                downstream_cx_total: store.counter(format!("{lprefix}downstream_cx_total")),
                downstream_cx_active: store.gauge(format!("{lprefix}downstream_cx_active")),
                downstream_cx_destroy: store.counter(format!("{lprefix}downstream_cx_destroy")),
                downstream_cx_length_ms: store.histogram(format!("{lprefix}downstream_cx_length_ms")),
                no_filter_chain_match: store.counter(format!("{lprefix}no_filter_chain_match")),
                server_total_connections: store.gauge("server.total_connections"),
            },
        })
    }

    /// Accept connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, socket: TcpListener) {
        loop {
            let (stream, peer) = match socket.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %self.name, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                this.stats.downstream_cx_total.inc();
                this.stats.downstream_cx_active.inc();
                this.stats.server_total_connections.inc();
                let start = std::time::Instant::now();
                this.handle(stream, peer).await;
                this.stats.downstream_cx_destroy.inc();
                this.stats.downstream_cx_length_ms.record_int(start.elapsed().as_millis() as u64);
                this.stats.downstream_cx_active.dec();
                this.stats.server_total_connections.dec();
            });
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let local = stream.local_addr().unwrap_or(self.address);
        // Listener access logs: one line when the connection ends (NR when no chain matched).
        let log = ConnectionLog::start(self.access_logs.as_ref());
        let refused = |log: Option<ConnectionLog>, tls: Option<TlsInfo>| {
            self.stats.no_filter_chain_match.inc();
            if let Some(l) = log {
                l.finish(Arc::new(ConnectionInfo::new(peer, local, tls.map(Arc::new))), None, ResponseFlags::NO_ROUTE_FOUND);
            }
        };
        let has_tls = self.chains.iter().any(|c| c.tls.is_some());
        let has_plain = self.chains.iter().any(|c| c.tls.is_none());
        let is_tls = if has_tls && has_plain {
            let mut first = [0u8; 1];
            match tokio::time::timeout(std::time::Duration::from_secs(15), stream.peek(&mut first)).await {
                Ok(Ok(1)) => first[0] == 0x16,
                _ => return,
            }
        } else {
            has_tls
        };
        if !is_tls {
            let Some(chain) = self.chains.iter().find(|c| c.tls.is_none() && c.transport_protocol.as_deref() != Some("tls")) else {
                refused(log, None);
                return;
            };
            let conn = Arc::new(ConnectionInfo::new(peer, local, None));
            // AUTO: decide from the first bytes (`PRI * HTTP/2`), as Envoy does, so the
            // connection is counted as HTTP/1 or HTTP/2 (`downstream_cx_http{1,2}_total`).
            // HTTP2: anything else is closed without an answer (Envoy). HTTP1: an HTTP/2
            // preface gets the codec's 400.
            let codec = match chain.codec {
                CodecType::Auto => match sniff_h2_preface(&stream).await {
                    Sniff::H2 => CodecType::Http2,
                    Sniff::Other => CodecType::Http1,
                    // Closed before a byte: no codec was made (Envoy makes it on first data).
                    Sniff::Closed => {
                        chain.hcm.stats.connection_without_codec();
                        if let Some(l) = log {
                            l.finish(conn, None, ResponseFlags::empty());
                        }
                        return;
                    }
                    // Silent: the HTTP/1 codec waits out its idle timeout.
                    Sniff::Silent => CodecType::Auto,
                },
                CodecType::Http2 => match sniff_h2_preface(&stream).await {
                    Sniff::H2 => CodecType::Http2,
                    _ => {
                        close_unanswered(stream).await;
                        if let Some(l) = log {
                            l.finish(conn, None, ResponseFlags::empty());
                        }
                        return;
                    }
                },
                c => c,
            };
            let stream = chain.hcm.stats.counted(stream, log.as_ref().map(ConnectionLog::counts));
            serve_http(stream, chain, conn.clone(), codec).await;
            if let Some(l) = log {
                l.finish(conn, codec_protocol(codec), ResponseFlags::empty());
            }
            return;
        }
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout(std::time::Duration::from_secs(15), acceptor).await {
            Ok(Ok(s)) => s,
            _ => return,
        };
        let sni = start.client_hello().server_name().map(str::to_string);
        let Some(chain) = self.select_tls_chain(sni.as_deref()) else {
            refused(log, Some(TlsInfo { sni, ..Default::default() }));
            return;
        };
        let Some(tls) = &chain.tls else { return };
        let stream = match start.into_stream(tls.config.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                if let Some(l) = log {
                    l.finish(Arc::new(ConnectionInfo::new(peer, local, None)), None, ResponseFlags::empty());
                }
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let alpn_h2 = session.alpn_protocol() == Some(b"h2");
        let peer_cert = session.peer_certificates().and_then(|c| c.first()).cloned();
        let info = TlsInfo {
            sni,
            local_principal: tls.local_principal.clone(),
            peer_principal: peer_cert.as_ref().and_then(tls::principal),
            peer_certificate: peer_cert.map(|c| c.as_ref().to_vec()),
            alpn_h2,
            version: session.protocol_version().and_then(crate::formatter::tls_version_name),
            cipher: session.negotiated_cipher_suite().and_then(|c| crate::formatter::cipher_name(c.suite())),
            local_certificate: None,
        };
        chain.hcm.stats.downstream_cx_ssl_total.inc();
        let conn = Arc::new(ConnectionInfo::new(peer, local, Some(Arc::new(info))));
        // ALPN decides: h2 if agreed, otherwise HTTP/1.1 only (Envoy without alpn_protocols).
        let codec = if alpn_h2 { CodecType::Http2 } else { CodecType::Http1 };
        let stream = chain.hcm.stats.counted(stream, log.as_ref().map(ConnectionLog::counts));
        serve_http(stream, chain, conn.clone(), codec).await;
        if let Some(l) = log {
            l.finish(conn, codec_protocol(codec), ResponseFlags::empty());
        }
    }

    fn select_tls_chain(&self, sni: Option<&str>) -> Option<&Chain> {
        let tls_chains = || self.chains.iter().filter(|c| c.tls.is_some());
        if let Some(sni) = sni {
            // Exact names beat wildcards, longer wildcards beat shorter.
            let mut best: Option<(&Chain, usize)> = None;
            for c in tls_chains() {
                for name in &c.server_names {
                    if tls::sni_matches(name, sni) {
                        let score = if name.starts_with('*') { name.len() } else { usize::MAX };
                        if best.is_none_or(|(_, s)| score > s) {
                            best = Some((c, score));
                        }
                    }
                }
            }
            if let Some((c, _)) = best {
                return Some(c);
            }
        }
        tls_chains().find(|c| c.server_names.is_empty())
    }
}

/// The protocol a connection spoke, for its listener access log.
fn codec_protocol(codec: CodecType) -> Option<http::Version> {
    match codec {
        CodecType::Http1 => Some(http::Version::HTTP_11),
        CodecType::Http2 => Some(http::Version::HTTP_2),
        _ => None,
    }
}

/// What the first bytes of a plaintext connection say.
enum Sniff {
    /// `PRI * HTTP/2`: HTTP/2 with prior knowledge.
    H2,
    Other,
    /// The peer closed (or the socket failed) before sending anything.
    Closed,
    /// Nothing decisive arrived in time.
    Silent,
}

/// Whether a plaintext connection speaks HTTP/2: its first bytes are `PRI * HTTP/2` (Envoy's
/// test; peeked, not consumed).
async fn sniff_h2_preface(stream: &TcpStream) -> Sniff {
    const PREFIX: &[u8] = b"PRI * HTTP/2";
    let mut buf = [0u8; 12];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    // A partial prefix is re-peeked a bounded number of times (1 ms apart).
    for _ in 0..200 {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Sniff::Silent,
            Ok(Err(_)) | Ok(Ok(0)) => return Sniff::Closed,
            Ok(Ok(n)) => n,
        };
        if buf[..n] != PREFIX[..n] {
            return Sniff::Other;
        }
        if n == PREFIX.len() {
            return Sniff::H2;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    Sniff::Silent
}

/// Close a connection that gets no answer with a FIN, not a reset: shut the write side down and
/// drain what the client sent (bounded), as Envoy does.
async fn close_unanswered(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        for _ in 0..256 {
            if matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {
                break;
            }
        }
    })
    .await;
}

/// The HTTP/1 codec's settings from the connection manager's config.
fn h1_config(cfg: &HcmConfig, store: &Store) -> Result<codec::Config, (String, String)> {
    let server_name = http::HeaderValue::from_str(cfg.server_name())
        .map_err(|_| ("server_name".to_string(), "invalid header value".to_string()))?;
    let common = cfg.common_http_protocol_options.as_ref();
    let h1 = cfg.http_protocol_options.as_ref();
    let underscores = match common.and_then(|c| c.headers_with_underscores_action) {
        None | Some(HeadersWithUnderscoresAction::Allow) => Underscores::Allow,
        Some(HeadersWithUnderscoresAction::RejectRequest) => Underscores::Reject,
        Some(HeadersWithUnderscoresAction::DropHeader) => Underscores::Drop,
    };
    let idle = common.and_then(|c| c.idle_timeout).map_or(std::time::Duration::from_secs(3600), |d| d.as_std());
    Ok(codec::Config {
        parse: ParseConfig {
            max_head_bytes: cfg.max_request_headers_bytes(),
            max_headers: common.and_then(|c| c.max_headers_count).map_or(100, |n| n as usize),
            underscores,
            accept_http_10: cfg.accept_http_10(),
            allow_chunked_length: h1.is_some_and(|o| o.allow_chunked_length),
            allow_absolute_url: h1.and_then(|o| o.allow_absolute_url).unwrap_or(true),
        },
        enable_trailers: h1.is_some_and(|o| o.enable_trailers),
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_requests_per_connection: common.and_then(|c| c.max_requests_per_connection),
        server_name,
        stats: CodecStats {
            dropped_headers_with_underscores: Some(store.counter("http1.dropped_headers_with_underscores")),
            requests_rejected_with_underscores_in_headers: Some(store.counter("http1.requests_rejected_with_underscores_in_headers")),
        },
    })
}

fn build_chain(chain: &FilterChain, clusters: &Arc<ClusterManager>, store: &Store, lprefix: &str) -> Result<Chain, (String, String)> {
    let [filter] = chain.filters.as_slice() else {
        return Err(("filters".to_string(), "exactly one network filter (the HTTP connection manager) is required".to_string()));
    };
    let NetworkFilterConfig::HttpConnectionManager(hcm_cfg) = &filter.typed_config;
    let hcm = HttpConnectionManager::build(hcm_cfg, clusters, store).map_err(|(p, e)| (format!("filters[0].typed_config.{p}"), e))?;
    let tls = match chain.transport_socket.as_ref().map(|t| &t.typed_config) {
        Some(TransportSocketConfig::DownstreamTls(ctx)) => {
            Some(tls::downstream(ctx).map_err(|(p, e)| (format!("transport_socket.typed_config.{p}"), e))?)
        }
        Some(TransportSocketConfig::RawBuffer(_)) | None => None,
        Some(TransportSocketConfig::UpstreamTls(_)) => {
            return Err(("transport_socket".to_string(), "a listener needs a DownstreamTlsContext".to_string()))
        }
    };
    let m = chain.filter_chain_match.as_ref();
    Ok(Chain {
        server_names: m.map(|m| m.server_names.clone()).unwrap_or_default(),
        transport_protocol: m.and_then(|m| m.transport_protocol.clone()),
        tls,
        codec: hcm_cfg.codec_type,
        listener_http_stats: Arc::new(ListenerHttpStats::new(store, lprefix, &hcm_cfg.stat_prefix)),
        h1: h1_config(hcm_cfg, store).map_err(|(p, e)| (format!("filters[0].typed_config.{p}"), e))?,
        h2_allow_connect: hcm_cfg.http2_protocol_options.as_ref().is_some_and(|o| o.allow_connect),
        hcm: Arc::new(hcm),
    })
}

/// The connection manager as the HTTP/1 codec calls it.
struct HcmService {
    hcm: Arc<HttpConnectionManager>,
    ctx: Arc<ConnContext>,
}

impl codec::Service for HcmService {
    fn call(&self, req: http::Request<Body>) -> impl std::future::Future<Output = http::Response<Body>> + Send {
        self.hcm.handle(req, &self.ctx)
    }
    fn codec_reply(&self, status: u16) {
        self.hcm.record_codec_reply(status, &self.ctx.listener_stats);
    }
    fn tunnel(&self, open: bool) {
        let s = &self.hcm.stats;
        if open {
            s.downstream_cx_upgrades_total.inc();
            s.downstream_cx_upgrades_active.inc();
        } else {
            s.downstream_cx_upgrades_active.dec();
        }
    }
    fn early_response(&self) {
        self.hcm.stats.downstream_rq_response_before_rq_complete.inc();
    }
}

async fn serve_http<I>(io: I, chain: &Chain, conn: Arc<ConnectionInfo>, codec: CodecType)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stats = &chain.hcm.stats;
    let start = std::time::Instant::now();
    let tls = conn.tls.is_some();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    if tls {
        stats.downstream_cx_ssl_active.inc();
    }
    let ctx = Arc::new(ConnContext { conn, listener_stats: chain.listener_http_stats.clone() });
    let end = if codec == CodecType::Http2 {
        stats.downstream_cx_http2_total.inc();
        stats.downstream_cx_http2_active.inc();
        let hcm = chain.hcm.clone();
        // The request's future is boxed: hyper spawns every HTTP/2 stream as a task and the
        // runtime moves the task's future (and later its output) around by value; a pointer is
        // cheaper to move than the whole request state machine.
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let hcm = hcm.clone();
            let ctx = ctx.clone();
            Box::pin(async move { Ok::<_, Infallible>(hcm.handle(req.map(Body::incoming), &ctx).await) })
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).max_concurrent_streams(Some(1024));
        if chain.h2_allow_connect {
            builder.enable_connect_protocol();
        }
        let end = match builder.serve_connection(TokioIo::new(io), svc).await {
            Ok(()) => ConnEnd::Remote { active_rq: false },
            Err(e) => {
                tracing::debug!("HTTP/2 connection ended with error: {e}");
                // hyper reports a peer that vanished mid-stream as an I/O or incomplete error;
                // anything else is a protocol violation sluice closed the connection for.
                if e.is_parse() || e.is_user() {
                    ConnEnd::ProtocolError { delayed_close_timeout: false }
                } else {
                    ConnEnd::Remote { active_rq: e.is_incomplete_message() }
                }
            }
        };
        stats.downstream_cx_http2_active.dec();
        end
    } else {
        stats.downstream_cx_http1_total.inc();
        stats.downstream_cx_http1_active.inc();
        let svc = HcmService { hcm: chain.hcm.clone(), ctx };
        let end = codec::serve(io, &chain.h1, &svc).await;
        stats.downstream_cx_http1_active.dec();
        end
    };
    stats.connection_closed(end, start.elapsed());
    if tls {
        stats.downstream_cx_ssl_active.dec();
    }
    stats.downstream_cx_active.dec();
}
