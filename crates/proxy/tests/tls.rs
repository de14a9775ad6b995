//! Downstream TLS end to end over loopback: certificates from inline PEM and from files (RSA and
//! ECDSA), ALPN, protocol versions, mTLS, SNI filter-chain selection and a listener that serves
//! plaintext and TLS on one port. Clients are tokio-rustls built from testkit's `Pki`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::certs::{parse_certs, parse_key, ServerIdentity};
use sluice_testkit::client::{self, Conn};
use sluice_testkit::{EchoUpstream, KeyKind, Pki};

// ---------------------------------------------------------------------------------------------
// Config helpers (JSON built with serde_json, parsed as the proxy parses files).

fn hcm(cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("in_{cluster}"),
            "codec_type": "AUTO",
            "route_config": {
                "name": "r",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
                ]}]
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }
    })
}

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}
        ]}]}
    })
}

fn inline(pem: &str) -> Value {
    json!({"inline_string": pem})
}

static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A PEM written to a fresh file in the temp dir (removed by the guard).
struct TempPem(std::path::PathBuf);
impl TempPem {
    fn new(pem: &str) -> TempPem {
        let n = FILE_SEQ.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("sluice-tls-test-{}-{n}.pem", std::process::id()));
        std::fs::write(&p, pem).unwrap();
        TempPem(p)
    }
    fn source(&self) -> Value {
        json!({"filename": self.0.to_str().unwrap()})
    }
}
impl Drop for TempPem {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A DownstreamTlsContext transport socket; `extra_common` is merged into `common_tls_context`,
/// `extra` into the context itself.
fn tls_socket(cert: Value, key: Value, extra_common: Value, extra: Value) -> Value {
    let mut common = json!({"tls_certificates": [{"certificate_chain": cert, "private_key": key}]});
    merge(&mut common, extra_common);
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common
    });
    merge(&mut ctx, extra);
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn bootstrap(chains: Vec<Value>, listener_extra: Value, clusters: Vec<Value>) -> Value {
    let mut listener = json!({
        "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": chains
    });
    merge(&mut listener, listener_extra);
    json!({"static_resources": {"listeners": [listener], "clusters": clusters}})
}

async fn start(cfg: &Value) -> RunningServer {
    common::start_proxy(cfg, "tls.json").await
}

/// A one-chain TLS listener in front of one echo upstream.
async fn simple(pki: &Pki, extra_common: Value, extra: Value) -> (RunningServer, EchoUpstream) {
    let up = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "up").await.unwrap();
    let mut chain = json!({"filters": [hcm("up")]});
    chain["transport_socket"] = tls_socket(inline(&pki.server_cert), inline(&pki.server_key), extra_common, extra);
    let server = start(&bootstrap(vec![chain], json!({}), vec![cluster("up", up.addr())])).await;
    (server, up)
}

// ---------------------------------------------------------------------------------------------
// Client helpers.

type Versions = &'static [&'static rustls::SupportedProtocolVersion];
const ANY: Versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
const V12: Versions = &[&rustls::version::TLS12];
const V13: Versions = &[&rustls::version::TLS13];

/// A client trusting `ca`, offering `alpn`, limited to `versions`, optionally with a client
/// certificate (cert PEM, key PEM).
fn client_cfg(ca: &str, alpn: &[&str], versions: Versions, client_cert: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certs(ca) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some((cert, key)) => b.with_client_auth_cert(parse_certs(cert), parse_key(key)).unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// What one TLS connection saw.
#[derive(Debug)]
struct Session {
    alpn: Option<Vec<u8>>,
    version: rustls::ProtocolVersion,
    peer_cert: Vec<u8>,
    status: u16,
    http_version: http::Version,
    upstream: String,
    upstream_saw: Value,
}

/// TLS handshake + one GET / (HTTP/2 if ALPN agreed h2, else HTTP/1.1). Any failure is an Err.
async fn tls_get(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, sni: &str) -> anyhow::Result<Session> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from(sni.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let version = conn.protocol_version().expect("negotiated version");
        let peer_cert = conn.peer_certificates().expect("server certificate")[0].as_ref().to_vec();
        let h2 = alpn.as_deref() == Some(b"h2");
        let io = TokioIo::new(tls);
        let resp = if h2 {
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(c);
            let req = http::Request::builder().uri(format!("https://{sni}/tls")).body(Empty::<bytes::Bytes>::new())?;
            s.send_request(req).await?
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(c);
            let req = http::Request::builder().uri("/tls").header("host", sni).body(Empty::<bytes::Bytes>::new())?;
            s.send_request(req).await?
        };
        let status = resp.status().as_u16();
        let http_version = resp.version();
        let upstream = resp.headers().get("x-upstream-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let body = resp.into_body().collect().await?.to_bytes();
        let upstream_saw = serde_json::from_slice(&body).unwrap_or(Value::Null);
        anyhow::Ok(Session { alpn, version, peer_cert, status, http_version, upstream, upstream_saw })
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| anyhow::anyhow!("timed out"))?
}

fn upstream_header(saw: &Value, name: &str) -> Option<String> {
    saw["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string())
}

/// (CN, DNS SANs) of a DER certificate.
fn cert_names(der: &[u8]) -> (Option<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = c.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let sans = c
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cn, sans)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_inline_and_from_files_rsa_and_ecdsa() {
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let pki = Pki::generate(kind, &ServerIdentity::default());
        let cert_file = TempPem::new(&pki.server_cert);
        let key_file = TempPem::new(&pki.server_key);
        for from_file in [false, true] {
            let (cert, key) = if from_file {
                (cert_file.source(), key_file.source())
            } else {
                (inline(&pki.server_cert), inline(&pki.server_key))
            };
            let up = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "up").await.unwrap();
            let mut chain = json!({"filters": [hcm("up")]});
            chain["transport_socket"] = tls_socket(cert, key, json!({}), json!({}));
            let server = start(&bootstrap(vec![chain], json!({}), vec![cluster("up", up.addr())])).await;
            let addr = server.listeners[0].address;
            let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], ANY, None), "localhost").await.unwrap_or_else(|e| {
                panic!("{kind:?} from_file={from_file}: {e:#}");
            });
            assert_eq!(s.status, 200, "{kind:?} from_file={from_file}");
            assert_eq!(s.upstream, "up");
            assert_eq!(s.peer_cert, parse_certs(&pki.server_cert)[0].as_ref(), "the configured certificate is served");
            assert_eq!(s.version, rustls::ProtocolVersion::TLSv1_3, "TLS 1.3 preferred by default");
            // The upstream sees the request as https.
            assert_eq!(upstream_header(&s.upstream_saw, "x-forwarded-proto").as_deref(), Some("https"));
            assert_eq!(server.stats.counter("http.in_up.downstream_cx_ssl_total").value(), 1);
            // A client that does not trust the CA fails the handshake.
            let other = Pki::new();
            assert!(tls_get(addr, client_cfg(&other.ca_cert, &[], ANY, None), "localhost").await.is_err());
            // Plaintext HTTP to a TLS-only listener gets no HTTP answer.
            assert!(client::get(&format!("http://{addr}/")).await.is_err());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_without_protocols_is_http11_with_protocols_negotiates() {
    let pki = Pki::new();
    // No alpn_protocols: an h2-capable client gets no ALPN and speaks HTTP/1.1.
    let (server, _up) = simple(&pki, json!({}), json!({})).await;
    let addr = server.listeners[0].address;
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &["h2", "http/1.1"], ANY, None), "localhost").await.unwrap();
    assert_eq!(s.alpn, None, "no ALPN agreed");
    assert_eq!(s.status, 200);
    assert_eq!(s.http_version, http::Version::HTTP_11);
    assert_eq!(s.upstream_saw["version"], "HTTP/1.1");
    assert_eq!(server.stats.counter("http.in_up.downstream_cx_http1_total").value(), 1);
    assert_eq!(server.stats.counter("http.in_up.downstream_cx_http2_total").value(), 0);
    drop(server);

    // alpn_protocols [h2, http/1.1]: h2 client → h2; HTTP/1.1-only client → HTTP/1.1.
    let (server, _up) = simple(&pki, json!({"alpn_protocols": ["h2", "http/1.1"]}), json!({})).await;
    let addr = server.listeners[0].address;
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &["h2", "http/1.1"], ANY, None), "localhost").await.unwrap();
    assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(s.status, 200);
    assert_eq!(s.http_version, http::Version::HTTP_2);
    // The upstream still gets HTTP/1.1 (no http2_protocol_options on the cluster).
    assert_eq!(s.upstream_saw["version"], "HTTP/1.1");
    assert_eq!(s.upstream_saw["headers"][0][0], "host");
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &["http/1.1"], ANY, None), "localhost").await.unwrap();
    assert_eq!(s.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(s.http_version, http::Version::HTTP_11);
    assert_eq!(s.status, 200);
    // A client without ALPN at all: HTTP/1.1.
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], ANY, None), "localhost").await.unwrap();
    assert_eq!(s.alpn, None);
    assert_eq!(s.http_version, http::Version::HTTP_11);
    assert_eq!(server.stats.counter("http.in_up.downstream_cx_http2_total").value(), 1);
    assert_eq!(server.stats.counter("http.in_up.downstream_cx_http1_total").value(), 2);

    // The testkit's keep-alive client works over it too (ALPN decides).
    let mut c = Conn::connect_tls(addr, pki.client_config(&["h2"], false), "localhost").await.unwrap();
    for _ in 0..3 {
        let r = c.get("https://localhost/x").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_default_and_minimum_tls13() {
    let pki = Pki::new();
    let (server, _up) = simple(&pki, json!({}), json!({})).await;
    let addr = server.listeners[0].address;
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], V12, None), "localhost").await.unwrap();
    assert_eq!((s.version, s.status), (rustls::ProtocolVersion::TLSv1_2, 200));
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], V13, None), "localhost").await.unwrap();
    assert_eq!((s.version, s.status), (rustls::ProtocolVersion::TLSv1_3, 200));
    drop(server);

    let (server, _up) = simple(&pki, json!({"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}}), json!({})).await;
    let addr = server.listeners[0].address;
    let e = tls_get(addr, client_cfg(&pki.ca_cert, &[], V12, None), "localhost").await;
    assert!(e.is_err(), "TLS 1.2 client must be rejected: {e:?}");
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], V13, None), "localhost").await.unwrap();
    assert_eq!((s.version, s.status), (rustls::ProtocolVersion::TLSv1_3, 200));
    drop(server);

    // And the maximum: TLSv1_2 max makes a TLS 1.3-only client fail, a default client use 1.2.
    let (server, _up) = simple(&pki, json!({"tls_params": {"tls_maximum_protocol_version": "TLSv1_2"}}), json!({})).await;
    let addr = server.listeners[0].address;
    assert!(tls_get(addr, client_cfg(&pki.ca_cert, &[], V13, None), "localhost").await.is_err());
    let s = tls_get(addr, client_cfg(&pki.ca_cert, &[], ANY, None), "localhost").await.unwrap();
    assert_eq!((s.version, s.status), (rustls::ProtocolVersion::TLSv1_2, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_certificate_from_the_trusted_ca() {
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let pki = Pki::generate(kind, &ServerIdentity::default());
        let (server, up) = simple(
            &pki,
            json!({"validation_context": {"trusted_ca": {"inline_string": pki.ca_cert}}}),
            json!({"require_client_certificate": true}),
        )
        .await;
        let addr = server.listeners[0].address;
        for versions in [V12, V13] {
            let good = client_cfg(&pki.ca_cert, &[], versions, Some((&pki.client_cert, &pki.client_key)));
            let s = tls_get(addr, good, "localhost").await.unwrap_or_else(|e| panic!("{kind:?}: good client: {e:#}"));
            assert_eq!(s.status, 200);
            assert_eq!(s.upstream, "up");

            let before = up.requests();
            let none = client_cfg(&pki.ca_cert, &[], versions, None);
            let e = tls_get(addr, none, "localhost").await;
            assert!(e.is_err(), "{kind:?}: no client certificate must be rejected: {e:?}");

            // (ECDSA: the RSA test PKIs share fixed keys, so a second RSA CA would be the same CA.)
            let other = Pki::new();
            let foreign = client_cfg(&pki.ca_cert, &[], versions, Some((&other.client_cert, &other.client_key)));
            let e = tls_get(addr, foreign, "localhost").await;
            assert!(e.is_err(), "{kind:?}: certificate from another CA must be rejected: {e:?}");
            assert_eq!(up.requests(), before, "rejected clients never reach the upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_filter_chain_certificate_and_upstream() {
    let a_pki = Pki::generate(KeyKind::Ecdsa, &ServerIdentity { common_name: Some("a-cert".into()), sans: vec!["a.test".into()] });
    let b_pki = Pki::generate(KeyKind::Rsa, &ServerIdentity { common_name: Some("b-cert".into()), sans: vec!["*.b.test".into(), "deep.y.b.test".into()] });
    let up_a = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "up-a").await.unwrap();
    let up_b = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "up-b").await.unwrap();
    let chain = |pki: &Pki, name: &str, cluster: &str| {
        json!({
            "filter_chain_match": {"server_names": [name]},
            "filters": [hcm(cluster)],
            "transport_socket": tls_socket(inline(&pki.server_cert), inline(&pki.server_key), json!({}), json!({}))
        })
    };
    let cfg = bootstrap(
        vec![chain(&a_pki, "a.test", "a"), chain(&b_pki, "*.b.test", "b")],
        json!({"listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]}),
        vec![cluster("a", up_a.addr()), cluster("b", up_b.addr())],
    );
    let server = start(&cfg).await;
    let addr = server.listeners[0].address;

    let s = tls_get(addr, client_cfg(&a_pki.ca_cert, &[], ANY, None), "a.test").await.unwrap();
    assert_eq!(cert_names(&s.peer_cert), (Some("a-cert".into()), vec!["a.test".to_string()]));
    assert_eq!((s.status, s.upstream.as_str()), (200, "up-a"));
    assert_eq!(upstream_header(&s.upstream_saw, "host").as_deref(), Some("a.test"));

    for name in ["x.b.test", "deep.y.b.test", "X.B.TEST"] {
        let s = tls_get(addr, client_cfg(&b_pki.ca_cert, &[], ANY, None), name).await.unwrap();
        assert_eq!(cert_names(&s.peer_cert), (Some("b-cert".into()), vec!["*.b.test".to_string(), "deep.y.b.test".to_string()]), "{name}");
        assert_eq!((s.status, s.upstream.as_str()), (200, "up-b"), "{name}");
    }
    // A client trusting only a.test's CA but asking for b: fails verification (b's cert served).
    assert!(tls_get(addr, client_cfg(&a_pki.ca_cert, &[], ANY, None), "x.b.test").await.is_err());
    // No chain matches this name (and there is no chain without server_names): connection refused.
    assert!(tls_get(addr, client_cfg(&a_pki.ca_cert, &[], ANY, None), "c.test").await.is_err());
    assert!(tls_get(addr, client_cfg(&b_pki.ca_cert, &[], ANY, None), "b.test").await.is_err(), "*.b.test does not match b.test");
    assert_eq!(up_a.requests(), 1);
    assert_eq!(up_b.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_chains_share_one_port() {
    let pki = Pki::new();
    let up_plain = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "plain").await.unwrap();
    let up_tls = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "secure").await.unwrap();
    let cfg = bootstrap(
        vec![
            json!({
                "filter_chain_match": {"transport_protocol": "tls"},
                "filters": [hcm("secure")],
                "transport_socket": tls_socket(inline(&pki.server_cert), inline(&pki.server_key), json!({"alpn_protocols": ["h2", "http/1.1"]}), json!({}))
            }),
            json!({"filters": [hcm("plain")]}),
        ],
        json!({"listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]}),
        vec![cluster("plain", up_plain.addr()), cluster("secure", up_tls.addr())],
    );
    let server = start(&cfg).await;
    let addr = server.listeners[0].address;
    for round in 0..2 {
        let r = client::get(&format!("http://{addr}/p")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-upstream-id")), (200, Some("plain")), "round {round}");
        assert_eq!(upstream_header(&r.json(), "x-forwarded-proto").as_deref(), Some("http"));
        let r = client::request_h2("GET", &format!("http://{addr}/p2"), &[], "").await.unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-upstream-id")), (200, Some("plain")), "h2c on the plaintext chain");
        let s = tls_get(addr, client_cfg(&pki.ca_cert, &["h2", "http/1.1"], ANY, None), "localhost").await.unwrap();
        assert_eq!((s.status, s.upstream.as_str()), (200, "secure"));
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(upstream_header(&s.upstream_saw, "x-forwarded-proto").as_deref(), Some("https"));
    }
    assert_eq!(up_plain.requests(), 4);
    assert_eq!(up_tls.requests(), 2);
}
