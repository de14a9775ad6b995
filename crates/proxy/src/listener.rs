//! Listeners: bind, accept, pick the filter chain (SNI, TLS or plaintext), terminate TLS, and
//! serve the connection manager of the chain: HTTP/1 with sluice's codec (`http::codec`),
//! HTTP/2 with hyper.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_config::core::{
    Address, CommonHttpProtocolOptions, HeadersWithUnderscoresAction, Http1ProtocolOptions, Http2ProtocolOptions,
    KeepaliveSettings, SocketAddress,
};
use sluice_config::hcm::CodecType;
use sluice_config::listener::{
    FilterChain, FilterChainMatch, Listener as ListenerConfig, ListenerFilter, NetworkFilter, NetworkFilterConfig, TransportSocket,
    TransportSocketConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::access_log::connection::ConnectionLog;
use crate::config_audit::{refused_at_load, without_effect};
use crate::access_log::AccessLogs;
use crate::filters::{ConnectionInfo, TlsInfo};
use crate::body::Body;
use crate::http::codec::{self, CodecStats, ParseConfig, Underscores};
use crate::stream_info::ResponseFlags;
use crate::http::conn_manager::{HttpConnectionManager, ListenerHttpStats, ConnContext};
use crate::stats::{Counter, Gauge, Histogram, Store};
use crate::tls::{self, DownstreamTls};
use crate::upstream::ClusterManager;

/// One filter chain, built.
pub struct Chain {
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    /// `filter_chain_match.destination_port`.
    destination_port: Option<u32>,
    /// The listener's `default_filter_chain`: used when no other chain matches.
    is_default: bool,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take (`None`: no
    /// limit, Envoy's default).
    handshake_timeout: Option<std::time::Duration>,
    tls: Option<DownstreamTls>,
    /// The connection manager, with its codec settings (`codec`, `h1`, `h2`).
    hcm: Arc<HttpConnectionManager>,
    listener_http_stats: Arc<ListenerHttpStats>,
}

/// The HTTP/2 server settings of a connection manager (`http2_protocol_options`).
#[derive(Debug, Clone, Default)]
pub struct H2Settings {
    /// `allow_connect`: extended CONNECT (RFC 8441) on HTTP/2.
    pub allow_connect: bool,
    /// `max_concurrent_streams` (sluice's default 1024 when unset).
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
    /// `connection_keepalive`: PING interval and the time to wait for its ACK.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
}

impl H2Settings {
    pub fn build(cfg: Option<&Http2ProtocolOptions>) -> H2Settings {
        let Some(Http2ProtocolOptions {
            max_concurrent_streams,
            initial_stream_window_size,
            initial_connection_window_size,
            allow_connect,
            connection_keepalive,
        }) = cfg
        else {
            return H2Settings::default();
        };
        H2Settings {
            allow_connect: *allow_connect,
            max_concurrent_streams: *max_concurrent_streams,
            initial_stream_window_size: *initial_stream_window_size,
            initial_connection_window_size: *initial_connection_window_size,
            keepalive: connection_keepalive.as_ref().and_then(keepalive),
        }
    }
}

/// `KeepaliveSettings` as (interval, timeout); `None` without an interval (the validator requires
/// a timeout).
pub fn keepalive(k: &KeepaliveSettings) -> Option<(std::time::Duration, std::time::Duration)> {
    let KeepaliveSettings { interval, timeout } = k;
    let interval = interval.map(|d| d.as_std()).filter(|d| !d.is_zero())?;
    Some((interval, timeout.map_or(std::time::Duration::from_secs(20), |d| d.as_std())))
}

/// A listener, built from config, not yet bound.
pub struct Listener {
    /// The config name, or a generated UUID as Envoy does for unnamed listeners.
    pub name: String,
    pub address: SocketAddr,
    /// `enable_reuse_port` (default true, as Envoy).
    pub reuse_port: bool,
    /// For an IPv6 address: accept IPv6 only (Envoy's default), unless `ipv4_compat`.
    pub v6_only: bool,
    /// `listener_filters_timeout` (default 15 s, `None` when 0): how long the first bytes or the
    /// TLS ClientHello may take.
    filters_timeout: Option<std::time::Duration>,
    chains: Vec<Chain>,
    stats: ListenerStats,
    access_logs: Option<Arc<AccessLogs>>,
    /// `listener.<prefix>.`: the per-worker stats are made under it when a worker starts.
    stat_prefix: String,
}

/// A worker's own listener stats (`listener.<prefix>.worker_<N>.*`, as Envoy keeps them).
pub struct WorkerStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
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
        let ListenerConfig {
            name,
            address,
            stat_prefix,
            filter_chains,
            default_filter_chain,
            listener_filters,
            per_connection_buffer_limit_bytes,
            enable_reuse_port,
            traffic_direction,
            connection_balance_config,
            listener_filters_timeout,
            socket_options,
            access_log,
            udp_listener_config,
            additional_addresses,
        } = cfg;
        for refused in [
            per_connection_buffer_limit_bytes,
            traffic_direction,
            connection_balance_config,
            socket_options,
            udp_listener_config,
            additional_addresses,
        ] {
            refused_at_load(refused);
        }
        for ListenerFilter { name, typed_config } in listener_filters {
            // The loader accepts only the TLS inspector; Envoy adds it by itself when a chain
            // matches on `server_names` or `transport_protocol`, and sluice always reads the
            // ClientHello of a TLS connection, so listing it changes nothing.
            without_effect(name, "the TLS inspector is the only listener filter, and it is implicit");
            without_effect(typed_config, "the TLS inspector is the only listener filter, and it is implicit");
        }
        let (address, v6_only) = bind_address(address).map_err(|e| ("address.socket_address".to_string(), e))?;
        let lprefix = match stat_prefix {
            Some(p) => format!("listener.{p}."),
            None => listener_stat_prefix(address),
        };
        let mut chains = Vec::new();
        let all: Vec<(String, &FilterChain, bool)> = filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("filter_chains[{i}]"), c, false))
            .chain(default_filter_chain.iter().map(|c| ("default_filter_chain".to_string(), c, true)))
            .collect();
        for (path, chain, is_default) in all {
            chains.push(build_chain(chain, is_default, clusters, store, &lprefix).map_err(|(p, e)| (format!("{path}.{p}"), e))?);
        }
        if chains.is_empty() {
            return Err(("filter_chains".to_string(), "at least one filter chain is required".to_string()));
        }
        let access_logs = AccessLogs::build(access_log, store).map_err(|(p, e)| (format!("access_log{p}"), e))?;
        let filters_timeout = listener_filters_timeout.map_or(std::time::Duration::from_secs(15), |d| d.as_std());
        Ok(Listener {
            name: name.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            address,
            reuse_port: enable_reuse_port.unwrap_or(true),
            v6_only,
            filters_timeout: (!filters_timeout.is_zero()).then_some(filters_timeout),
            chains,
            access_logs,
            stat_prefix: lprefix.clone(),
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

    /// The chains a connection to `port` may use: those whose `destination_port` is `port`, or
    /// else those without one (Envoy matches the destination port first).
    fn port_chains(&self, port: u16) -> Vec<&Chain> {
        let exact: Vec<&Chain> = self.chains.iter().filter(|c| c.destination_port == Some(u32::from(port))).collect();
        if !exact.is_empty() {
            return exact;
        }
        self.chains.iter().filter(|c| c.destination_port.is_none()).collect()
    }

    /// The stats of worker `index` for this listener.
    pub fn worker_stats(&self, store: &Store, index: usize) -> WorkerStats {
        let p = format!("{}worker_{index}.", self.stat_prefix);
        WorkerStats {
            downstream_cx_total: store.counter(format!("{p}downstream_cx_total")),
            downstream_cx_active: store.gauge(format!("{p}downstream_cx_active")),
        }
    }

    /// Accept connections until the task is dropped (`worker`: the stats of the worker thread
    /// that owns `socket`).
    pub async fn serve(self: Arc<Self>, socket: TcpListener, worker: WorkerStats) {
        let worker = Arc::new(worker);
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
            let worker = worker.clone();
            tokio::spawn(async move {
                this.stats.downstream_cx_total.inc();
                this.stats.downstream_cx_active.inc();
                worker.downstream_cx_total.inc();
                worker.downstream_cx_active.inc();
                this.stats.server_total_connections.inc();
                let start = std::time::Instant::now();
                this.handle(stream, peer).await;
                this.stats.downstream_cx_destroy.inc();
                this.stats.downstream_cx_length_ms.record_int(start.elapsed().as_millis() as u64);
                this.stats.downstream_cx_active.dec();
                worker.downstream_cx_active.dec();
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
        let chains = self.port_chains(local.port());
        let default_chain = self.chains.iter().find(|c| c.is_default);
        let has_tls = chains.iter().chain(default_chain.iter()).any(|c| c.tls.is_some());
        let has_plain = chains.iter().chain(default_chain.iter()).any(|c| c.tls.is_none());
        let is_tls = if has_tls && has_plain {
            let mut first = [0u8; 1];
            match with_timeout(self.filters_timeout, stream.peek(&mut first)).await {
                Some(Ok(1)) => first[0] == 0x16,
                _ => return,
            }
        } else {
            has_tls
        };
        if !is_tls {
            let plain = chains
                .iter()
                .copied()
                .find(|c| c.tls.is_none() && c.transport_protocol.as_deref() != Some("tls"))
                .or(default_chain.filter(|c| c.tls.is_none()));
            let Some(chain) = plain else {
                refused(log, None);
                return;
            };
            let conn = Arc::new(ConnectionInfo::new(peer, local, None));
            // AUTO: decide from the first bytes (`PRI * HTTP/2`), as Envoy does, so the
            // connection is counted as HTTP/1 or HTTP/2 (`downstream_cx_http{1,2}_total`).
            // HTTP2: anything else is closed without an answer (Envoy). HTTP1: an HTTP/2
            // preface gets the codec's 400.
            let codec = match chain.hcm.codec {
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
        let start = match with_timeout(self.filters_timeout, acceptor).await {
            Some(Ok(s)) => s,
            _ => return,
        };
        let sni = start.client_hello().server_name().map(str::to_string);
        let Some(chain) = select_tls_chain(&chains, sni.as_deref()).or(default_chain.filter(|c| c.tls.is_some())) else {
            refused(log, Some(TlsInfo { sni, ..Default::default() }));
            return;
        };
        let Some(tls) = &chain.tls else { return };
        if tls.require_sni && sni.is_none() {
            // `require_sni`: the handshake fails without a server name (no alert sluice can send
            // before the handshake; the connection is closed).
            if let Some(l) = log {
                l.finish(Arc::new(ConnectionInfo::new(peer, local, None)), None, ResponseFlags::empty());
            }
            return;
        }
        let stream = match with_timeout(chain.handshake_timeout, start.into_stream(tls.config.clone())).await {
            Some(Ok(s)) => s,
            failed => {
                match failed {
                    Some(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    _ => tracing::debug!(%peer, "TLS handshake timed out (transport_socket_connect_timeout)"),
                }
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

}

/// `fut` within `limit` (`None` when it ran out), or without a limit.
async fn with_timeout<F: std::future::Future>(limit: Option<std::time::Duration>, fut: F) -> Option<F::Output> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The TLS chain for a ClientHello's SNI among `chains`.
fn select_tls_chain<'c>(chains: &[&'c Chain], sni: Option<&str>) -> Option<&'c Chain> {
    let tls_chains = || chains.iter().copied().filter(|c| c.tls.is_some());
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

/// A listener's (or the admin's) IP address to bind, and whether an IPv6 socket accepts IPv6
/// only (`ipv4_compat: false`, Envoy's default).
pub fn bind_address(address: &Address) -> Result<(SocketAddr, bool), String> {
    let Address { socket_address, pipe, envoy_internal_address } = address;
    refused_at_load(pipe);
    refused_at_load(envoy_internal_address);
    let Some(SocketAddress { protocol, address, port_value, named_port, resolver_name, ipv4_compat }) = socket_address else {
        return Err("an IP address and port are required".to_string());
    };
    refused_at_load(named_port);
    refused_at_load(resolver_name);
    // UDP is refused by the validator; TCP is the default.
    without_effect(protocol, "TCP is the only protocol the loader accepts");
    let ip: std::net::IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "an IP address and port are required".to_string())?;
    let port = u16::try_from(*port_value).map_err(|_| "an IP address and port are required".to_string())?;
    Ok((SocketAddr::new(ip, port), ip.is_ipv6() && !ipv4_compat))
}

/// The HTTP/1 codec's settings from the connection manager's config, its
/// `default_host_for_http_10`, and the common options' `max_stream_duration` (`None`: off).
pub(crate) fn h1_config(
    server_name: &http::HeaderValue,
    max_head_bytes: usize,
    h1: Option<&Http1ProtocolOptions>,
    common: Option<&CommonHttpProtocolOptions>,
    store: &Store,
) -> (codec::Config, Option<String>, Option<std::time::Duration>) {
    let default_h1 = Http1ProtocolOptions::default();
    let Http1ProtocolOptions {
        accept_http_10,
        default_host_for_http_10,
        allow_absolute_url,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
    } = h1.unwrap_or(&default_h1);
    refused_at_load(header_key_format);
    let default_common = CommonHttpProtocolOptions::default();
    let CommonHttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_headers_count,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = common.unwrap_or(&default_common);
    let positive = |d: &Option<sluice_config::core::Duration>| (*d).map(|d| d.as_std()).filter(|d| !d.is_zero());
    let underscores = match headers_with_underscores_action {
        None | Some(HeadersWithUnderscoresAction::Allow) => Underscores::Allow,
        Some(HeadersWithUnderscoresAction::RejectRequest) => Underscores::Reject,
        Some(HeadersWithUnderscoresAction::DropHeader) => Underscores::Drop,
    };
    let idle = idle_timeout.map_or(std::time::Duration::from_secs(3600), |d| d.as_std());
    let config = codec::Config {
        parse: ParseConfig {
            max_head_bytes,
            max_headers: max_headers_count.map_or(100, |n| n as usize),
            underscores,
            accept_http_10: *accept_http_10,
            allow_chunked_length: *allow_chunked_length,
            allow_absolute_url: allow_absolute_url.unwrap_or(true),
        },
        enable_trailers: *enable_trailers,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_requests_per_connection: *max_requests_per_connection,
        max_connection_duration: positive(max_connection_duration),
        request_headers_timeout: None,
        drain_timeout: codec::DEFAULT_DRAIN_TIMEOUT,
        server_name: server_name.clone(),
        stats: CodecStats {
            dropped_headers_with_underscores: Some(store.counter("http1.dropped_headers_with_underscores")),
            requests_rejected_with_underscores_in_headers: Some(store.counter("http1.requests_rejected_with_underscores_in_headers")),
        },
    };
    (config, if *accept_http_10 { default_host_for_http_10.clone() } else { None }, positive(max_stream_duration))
}

fn build_chain(
    chain: &FilterChain,
    is_default: bool,
    clusters: &Arc<ClusterManager>,
    store: &Store,
    lprefix: &str,
) -> Result<Chain, (String, String)> {
    let FilterChain { name, filter_chain_match, filters, transport_socket, transport_socket_connect_timeout } = chain;
    without_effect(name, "a chain's name shows only in /config_dump and %FILTER_CHAIN_NAME%, which sluice refuses");
    let [NetworkFilter { name, typed_config }] = filters.as_slice() else {
        return Err(("filters".to_string(), "exactly one network filter (the HTTP connection manager) is required".to_string()));
    };
    without_effect(name, "the network filter is chosen by its typed_config");
    let NetworkFilterConfig::HttpConnectionManager(hcm_cfg) = typed_config;
    let hcm = HttpConnectionManager::build(hcm_cfg, clusters, store).map_err(|(p, e)| (format!("filters[0].typed_config.{p}"), e))?;
    let tls = match transport_socket {
        Some(TransportSocket { name, typed_config }) => {
            without_effect(name, "the transport socket is chosen by its typed_config");
            match typed_config {
                TransportSocketConfig::DownstreamTls(ctx) => {
                    Some(tls::downstream(ctx).map_err(|(p, e)| (format!("transport_socket.typed_config.{p}"), e))?)
                }
                TransportSocketConfig::RawBuffer(_) => None,
                TransportSocketConfig::UpstreamTls(_) => {
                    return Err(("transport_socket".to_string(), "a listener needs a DownstreamTlsContext".to_string()))
                }
            }
        }
        None => None,
    };
    let default_match = FilterChainMatch::default();
    let FilterChainMatch {
        server_names,
        transport_protocol,
        application_protocols,
        destination_port,
        prefix_ranges,
        source_prefix_ranges,
        source_ports,
        direct_source_prefix_ranges,
        source_type,
    } = filter_chain_match.as_ref().unwrap_or(&default_match);
    for refused in [application_protocols, prefix_ranges, source_prefix_ranges, source_ports, direct_source_prefix_ranges, source_type] {
        refused_at_load(refused);
    }
    Ok(Chain {
        server_names: server_names.clone(),
        transport_protocol: transport_protocol.clone(),
        destination_port: *destination_port,
        is_default,
        handshake_timeout: transport_socket_connect_timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
        tls,
        listener_http_stats: Arc::new(ListenerHttpStats::new(store, lprefix, &hcm.stat_prefix)),
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
    fn codec_reply(&self, reply: &codec::CodecReply) {
        self.hcm.record_codec_reply(reply, &self.ctx);
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
    fn header_timeout(&self) {
        self.hcm.stats.downstream_rq_header_timeout.inc();
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
        let end = crate::http::http2::serve(io, chain.hcm.clone(), ctx).await;
        stats.downstream_cx_http2_active.dec();
        end
    } else {
        stats.downstream_cx_http1_total.inc();
        stats.downstream_cx_http1_active.inc();
        let svc = HcmService { hcm: chain.hcm.clone(), ctx };
        let end = codec::serve(io, &chain.hcm.h1, &svc).await;
        stats.downstream_cx_http1_active.dec();
        end
    };
    stats.connection_closed(end, start.elapsed());
    if tls {
        stats.downstream_cx_ssl_active.dec();
    }
    stats.downstream_cx_active.dec();
}
