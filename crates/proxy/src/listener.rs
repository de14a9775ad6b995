//! Listeners: bind, accept, pick the filter chain (SNI, TLS or plaintext), terminate TLS, and
//! serve HTTP/1.1 and HTTP/2 with hyper on the connection manager of the chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_config::hcm::CodecType;
use sluice_config::listener::{FilterChain, Listener as ListenerConfig, NetworkFilterConfig, TransportSocketConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::access_log::connection::{ConnectionLog, Counted};
use crate::access_log::AccessLogs;
use crate::filters::{ConnectionInfo, TlsInfo};
use crate::stream_info::ResponseFlags;
use crate::http::codec_errors::CodecErrorRewrite;
use crate::http::conn_manager::{HttpConnectionManager, ListenerHttpStats, ConnContext};
use crate::stats::{Counter, Gauge, Store};
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
    max_header_bytes: usize,
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
                this.handle(stream, peer).await;
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
            // AUTO: decide from the HTTP/2 preface, as Envoy does, so the connection is counted
            // as HTTP/1 or HTTP/2 (`downstream_cx_http{1,2}_total`).
            let codec = match chain.codec {
                CodecType::Auto => match sniff_h2_preface(&stream).await {
                    Some(true) => CodecType::Http2,
                    Some(false) => CodecType::Http1,
                    None => CodecType::Auto,
                },
                c => c,
            };
            let stream = Counted::new(stream, log.as_ref().map(ConnectionLog::counts));
            let stream = CodecErrorRewrite::new(stream, chain.server_name()).on_reply(chain.codec_reply_counter());
            serve_http(TokioIo::new(stream), chain, conn.clone(), codec).await;
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
        let stream = Counted::new(stream, log.as_ref().map(ConnectionLog::counts));
        let stream = CodecErrorRewrite::new(stream, chain.server_name()).on_reply(chain.codec_reply_counter());
        serve_http(TokioIo::new(stream), chain, conn.clone(), codec).await;
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

impl Chain {
    fn server_name(&self) -> &str {
        self.hcm.server_name().to_str().unwrap_or("envoy")
    }
    fn codec_reply_counter(&self) -> crate::http::codec_errors::OnCodecReply {
        let hcm = self.hcm.clone();
        let listener = self.listener_http_stats.clone();
        Box::new(move |status| hcm.record_codec_reply(status, &listener))
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

/// Whether a plaintext connection starts with the HTTP/2 client preface (peeked, not consumed).
/// `None` when undecided (nothing arrived in time, or the peer closed).
async fn sniff_h2_preface(stream: &TcpStream) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    // A partial preface is re-peeked a bounded number of times (1 ms apart).
    for _ in 0..200 {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    None
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
        max_header_bytes: hcm_cfg.max_request_headers_bytes(),
        hcm: Arc::new(hcm),
    })
}

async fn serve_http<I>(io: TokioIo<I>, chain: &Chain, conn: Arc<ConnectionInfo>, codec: CodecType)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stats = &chain.hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let hcm = chain.hcm.clone();
    let info = Arc::new(ConnContext { conn, listener_stats: chain.listener_http_stats.clone() });
    // The request's future is boxed: hyper spawns every HTTP/2 stream as a task and the runtime
    // moves the task's future (and later its output) around by value; a pointer is cheaper to
    // move than the whole request state machine.
    let svc = service_fn(move |req| {
        let hcm = hcm.clone();
        let info = info.clone();
        Box::pin(async move { Ok::<_, Infallible>(hcm.handle(req.map(crate::body::Body::incoming), &info).await) })
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Headers above Envoy's limit must reach the connection manager (to answer 431 as Envoy
    // does), so hyper's own buffer limit sits well above it.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size((chain.max_header_bytes * 2).max(128 * 1024));
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(Some(1024));
    let result = match codec {
        CodecType::Http1 => {
            stats.downstream_cx_http1_total.inc();
            builder.http1_only().serve_connection_with_upgrades(io, svc).await
        }
        CodecType::Http2 => {
            stats.downstream_cx_http2_total.inc();
            builder.http2_only().serve_connection(io, svc).await
        }
        _ => builder.serve_connection_with_upgrades(io, svc).await,
    };
    if let Err(e) = result {
        tracing::debug!("connection ended with error: {e}");
    }
    stats.downstream_cx_active.dec();
}
