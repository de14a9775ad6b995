//! HTTP/2 downstream (h2c prior knowledge) to HTTP/1.1 and HTTP/2 upstreams, bodies streamed
//! both ways without whole-body buffering (64 MiB, RSS sampled while the transfer runs), request
//! bodies intact with chunked and content-length framing (hash compare), and gRPC trailers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::client;
use sluice_testkit::{EchoOptions, EchoUpstream, Protocol};

const MIB: usize = 1024 * 1024;
const BIG: usize = 64 * MIB;
/// Allowed RSS growth of the whole test process while a 64 MiB body passes through.
const MAX_GROWTH: u64 = 32 * MIB as u64;

// ---------------------------------------------------------------------------------------------
// Config.

fn h2_opts() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}})
}

fn cluster(name: &str, addr: SocketAddr, h2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}
        ]}]}
    });
    if h2 {
        c["typed_extension_protocol_options"] = h2_opts();
    }
    c
}

/// One AUTO-codec listener; routes by prefix: `/h1/…` → cluster `h1`, `/h2/…` → cluster `h2`
/// (prefix stripped), route timeout 120 s so slow debug builds do not trip it.
fn config(h1: SocketAddr, h2: SocketAddr) -> Value {
    json!({"static_resources": {
        "listeners": [{
            "name": "in",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "in",
                    "codec_type": "AUTO",
                    "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1", "prefix_rewrite": "/", "timeout": "120s"}},
                        {"match": {"prefix": "/h2/"}, "route": {"cluster": "h2", "prefix_rewrite": "/", "timeout": "120s"}}
                    ]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }],
        "clusters": [cluster("h1", h1, false), cluster("h2", h2, true)]
    }})
}

async fn start(cfg: &Value) -> RunningServer {
    common::start_proxy(cfg, "h2.json").await
}

// ---------------------------------------------------------------------------------------------
// A counting upstream: consumes the request body frame by frame (never holding it), answers
// JSON {bytes, hash, version, transfer_encoding, content_length}. HTTP/1.1 and h2c.

async fn counting_upstream(protocol: Protocol) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(count_request);
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match protocol {
                    Protocol::Http2 => b.http2_only().serve_connection(TokioIo::new(tcp), svc).await,
                    _ => b.http1_only().serve_connection(TokioIo::new(tcp), svc).await,
                };
            });
        }
    });
    addr
}

async fn count_request(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut n = 0u64;
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(0);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            n += data.len() as u64;
            hasher.update(&data);
        }
    }
    let h = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let out = json!({
        "bytes": n,
        "hash": format!("{:016x}", hasher.digest()),
        "version": format!("{:?}", parts.version),
        "transfer_encoding": h("transfer-encoding"),
        "content_length": h("content-length"),
        "path": parts.uri.path_and_query().map(|p| p.as_str().to_string()),
    });
    Ok(Response::new(Full::new(Bytes::from(out.to_string()))))
}

// ---------------------------------------------------------------------------------------------
// A generated request body: `len` deterministic bytes in 64 KiB frames; with `exact` it announces
// its length (content-length), otherwise not (HTTP/1.1: chunked).

struct GenBody {
    sent: usize,
    len: usize,
    exact: bool,
}

const FRAME: usize = 64 * 1024;

fn pattern_chunk(offset: usize, n: usize) -> Bytes {
    let k = (offset / FRAME) as u32;
    Bytes::from((0..n).map(|j| (k.wrapping_mul(2_654_435_761) >> 24) as u8 ^ (j as u8).wrapping_mul(7)).collect::<Vec<u8>>())
}

impl http_body::Body for GenBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = FRAME.min(self.len - self.sent);
        let chunk = pattern_chunk(self.sent, n);
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }
    fn size_hint(&self) -> http_body::SizeHint {
        if self.exact {
            http_body::SizeHint::with_exact((self.len - self.sent) as u64)
        } else {
            http_body::SizeHint::default()
        }
    }
}

fn expected_hash(len: usize) -> String {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    let mut off = 0;
    while off < len {
        let n = FRAME.min(len - off);
        h.update(&pattern_chunk(off, n));
        off += n;
    }
    format!("{:016x}", h.digest())
}

// ---------------------------------------------------------------------------------------------
// Raw hyper client over one new connection, generic over the body.

async fn send<B>(addr: SocketAddr, h2: bool, req: Request<B>) -> Response<Incoming>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let io = TokioIo::new(tcp);
    if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        s.send_request(req).await.unwrap()
    }
}

fn request(addr: SocketAddr, h2: bool, method: &str, path: &str) -> http::request::Builder {
    let b = Request::builder().method(method);
    if h2 {
        b.uri(format!("http://{addr}{path}"))
    } else {
        b.uri(path).header("host", addr.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Memory: the process RSS, sampled every 2 ms on a plain thread while a transfer runs.

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes of samples.
            for _ in 0..300_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RssPeak { stop, peak, thread: Some(thread) }
    }
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

/// Serialises the memory-measuring transfers of this binary (tests run in parallel threads).
static BIG_TRANSFER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_to_http1_and_h2_upstreams() {
    let up1 = EchoUpstream::start_with("127.0.0.1:0".parse().unwrap(), EchoOptions { label: Some("one".into()), protocol: Protocol::Http1, tls: None }).await.unwrap();
    let up2 = EchoUpstream::start_with("127.0.0.1:0".parse().unwrap(), EchoOptions { label: Some("two".into()), protocol: Protocol::Http2, tls: None }).await.unwrap();
    let server = start(&config(up1.addr(), up2.addr())).await;
    let addr = server.listeners[0].address;

    let mut conn = client::Conn::connect_h2(addr).await.unwrap();
    for i in 0..3 {
        let r = conn.request("GET", &format!("http://{addr}/h1/a?i={i}"), &[("x-c", "1")], "").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.header("x-upstream-id"), Some("one"));
        let j = r.json();
        assert_eq!(j["version"], "HTTP/1.1", "HTTP/1.1 upstream");
        assert_eq!(j["path"], format!("/a?i={i}"));
        assert_eq!(j["headers"][0], json!(["host", addr.to_string()]), "host from :authority, first");
        assert!(r.header("x-envoy-upstream-service-time").is_some());
        assert!(r.header("connection").is_none());

        let r = conn.request("POST", &format!("http://{addr}/h2/b"), &[], "hello").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream-id"), Some("two"));
        let j = r.json();
        assert_eq!(j["version"], "HTTP/2", "HTTP/2 upstream");
        assert_eq!(j["method"], "POST");
        assert_eq!(j["body_len"], 5);
    }
    // One downstream h2 connection carried all six; upstreams saw one connection each.
    assert_eq!(server.stats.counter("http.in.downstream_cx_http2_total").value(), 1);
    assert_eq!(server.stats.counter("http.in.downstream_rq_http2_total").value(), 6);
    assert_eq!(server.stats.counter("cluster.h2.upstream_cx_http2_total").value(), 1);
    assert_eq!(up1.requests(), 3);
    assert_eq!(up2.requests(), 3);
    assert_eq!(up2.connections(), 1);

    // Concurrent streams on one h2c connection, to the h2 upstream (multiplexed there too).
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(tokio::spawn(async move {
            client::request_h2("GET", &format!("http://{addr}/h2/slow/100?n={i}"), &[], "").await.unwrap()
        }));
    }
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-upstream-id")), (200, Some("two")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_arrive_intact_chunked_and_content_length() {
    let c1 = counting_upstream(Protocol::Http1).await;
    let c2 = counting_upstream(Protocol::Http2).await;
    let server = start(&config(c1, c2)).await;
    let addr = server.listeners[0].address;
    let len = 3 * MIB + 12345;
    let want = expected_hash(len);
    for (h2_down, exact, prefix) in [
        (false, false, "/h1/"),
        (false, true, "/h1/"),
        (false, false, "/h2/"),
        (false, true, "/h2/"),
        (true, false, "/h1/"),
        (true, true, "/h1/"),
        (true, true, "/h2/"),
    ] {
        let what = format!("h2 downstream={h2_down} content-length={exact} {prefix}");
        let mut b = request(addr, h2_down, "POST", &format!("{prefix}upload"));
        if exact {
            b = b.header("content-length", len.to_string());
        }
        let req = b.body(GenBody { sent: 0, len, exact }).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), send(addr, h2_down, req)).await.expect(&what);
        assert_eq!(resp.status(), 200, "{what}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["bytes"], len as u64, "{what}");
        assert_eq!(j["hash"], want, "{what}");
        assert_eq!(j["path"], "/upload");
        if prefix == "/h1/" {
            assert_eq!(j["version"], "HTTP/1.1");
            if exact {
                assert_eq!(j["content_length"], len.to_string(), "{what}: length kept");
                assert_eq!(j["transfer_encoding"], Value::Null, "{what}");
            } else {
                assert_eq!(j["transfer_encoding"], "chunked", "{what}: chunked upstream");
                assert_eq!(j["content_length"], Value::Null, "{what}");
            }
        } else {
            assert_eq!(j["version"], "HTTP/2.0");
        }
    }
    // An empty POST and a one-byte POST.
    for len in [0usize, 1] {
        let req = request(addr, false, "POST", "/h1/small").header("content-length", len.to_string()).body(GenBody { sent: 0, len, exact: true }).unwrap();
        let resp = send(addr, false, req).await;
        let j: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!((j["bytes"].as_u64(), j["hash"].as_str()), (Some(len as u64), Some(expected_hash(len).as_str())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_streams_up_and_down_without_buffering() {
    let _guard = BIG_TRANSFER.lock().await;
    let c1 = counting_upstream(Protocol::Http1).await;
    let c2 = counting_upstream(Protocol::Http2).await;
    let server = start(&config(c1, c2)).await;
    let addr = server.listeners[0].address;
    let want = expected_hash(BIG);
    // Warm up allocator arenas and connection setup outside the measurement.
    let _ = client::request_h2("POST", &format!("http://{addr}/h1/warm"), &[], vec![0u8; MIB]).await.unwrap();

    // Uploads.
    for (h2_down, prefix) in [(true, "/h1/"), (true, "/h2/"), (false, "/h1/")] {
        let what = format!("upload h2 downstream={h2_down} {prefix}");
        let before = rss_bytes();
        let peak = RssPeak::start();
        let t = Instant::now();
        let req = request(addr, h2_down, "POST", &format!("{prefix}up")).body(GenBody { sent: 0, len: BIG, exact: false }).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(120), send(addr, h2_down, req)).await.expect(&what);
        assert_eq!(resp.status(), 200, "{what}");
        let j: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let peak = peak.finish();
        assert_eq!(j["bytes"], BIG as u64, "{what}");
        assert_eq!(j["hash"], want, "{what}");
        let growth = peak.saturating_sub(before);
        eprintln!("{what}: {:?}, RSS growth {} KiB", t.elapsed(), growth / 1024);
        assert!(growth < MAX_GROWTH, "{what}: RSS grew by {} MiB", growth / MIB as u64);
    }

    // Downloads: /big/<n> from the echo upstream, consumed frame by frame.
    let e1 = EchoUpstream::start_with("127.0.0.1:0".parse().unwrap(), EchoOptions { protocol: Protocol::Http1, ..Default::default() }).await.unwrap();
    let e2 = EchoUpstream::start_h2("127.0.0.1:0".parse().unwrap()).await.unwrap();
    drop(server);
    let server = start(&config(e1.addr(), e2.addr())).await;
    let addr = server.listeners[0].address;
    for (h2_down, prefix) in [(true, "/h1/"), (true, "/h2/"), (false, "/h1/")] {
        let what = format!("download h2 downstream={h2_down} {prefix}");
        let before = rss_bytes();
        let peak = RssPeak::start();
        let t = Instant::now();
        let req = request(addr, h2_down, "GET", &format!("{prefix}big/{BIG}")).body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), send(addr, h2_down, req)).await.expect(&what);
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["content-length"], BIG.to_string().as_str(), "{what}: length passed through");
        let mut body = resp.into_body();
        let mut n = 0usize;
        let mut all_x = true;
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("body in time") {
            if let Ok(d) = frame.unwrap().into_data() {
                n += d.len();
                all_x &= d.iter().all(|b| *b == b'x');
            }
        }
        let peak = peak.finish();
        assert_eq!(n, BIG, "{what}");
        assert!(all_x, "{what}: content");
        let growth = peak.saturating_sub(before);
        eprintln!("{what}: {:?}, RSS growth {} KiB", t.elapsed(), growth / 1024);
        assert!(growth < MAX_GROWTH, "{what}: RSS grew by {} MiB", growth / MIB as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_keeps_trailers() {
    let up1 = EchoUpstream::start_with("127.0.0.1:0".parse().unwrap(), EchoOptions { protocol: Protocol::Http1, ..Default::default() }).await.unwrap();
    let up2 = EchoUpstream::start_with("127.0.0.1:0".parse().unwrap(), EchoOptions { label: Some("grpc".into()), protocol: Protocol::Http2, tls: None }).await.unwrap();
    let server = start(&config(up1.addr(), up2.addr())).await;
    let addr = server.listeners[0].address;
    // One length-prefixed gRPC message: flag 0, length 3, "abc".
    let msg: &[u8] = &[0, 0, 0, 0, 3, b'a', b'b', b'c'];
    let mut conn = client::Conn::connect_h2(addr).await.unwrap();
    for _ in 0..2 {
        let r = conn
            .request(
                "POST",
                &format!("http://{addr}/h2/grpc/pkg.Svc/Method"),
                &[("content-type", "application/grpc"), ("te", "trailers")],
                msg.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert_eq!(r.header("x-upstream-id"), Some("grpc"));
        assert_eq!(&r.body[..], msg, "message echoed");
        let trailers = r.trailers.as_ref().expect("trailers reach the client");
        assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));
        assert_eq!(trailers.get("grpc-message").map(|v| v.to_str().unwrap()), Some("OK"));
        assert!(r.header("grpc-status").is_none(), "grpc-status stays a trailer");
    }
    let rec = up2.recorded();
    let last = rec.last().unwrap();
    assert_eq!(last.version, "HTTP/2");
    assert_eq!(last.path, "/grpc/pkg.Svc/Method");
    assert!(last.headers.contains(&("te".into(), "trailers".into())), "te: trailers forwarded: {:?}", last.headers);
    assert!(last.headers.contains(&("content-type".into(), "application/grpc".into())));
    assert_eq!(server.stats.counter("cluster.h2.upstream_rq_200").value(), 2);
}
