//! Envoy-generated responses (reference §2.3, docs/envoy-observations.md §1) over raw sockets:
//! exact status line, header names in order, exact body, connection handling; plus the request
//! header rules of the connection manager (x-request-id, x-forwarded-*, server_name, header
//! limits, path normalisation, host port stripping).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::client;
use sluice_testkit::EchoUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Config.

fn cluster(name: &str, addrs: &[SocketAddr], extra: Value) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    let endpoints = if eps.is_empty() { json!([]) } else { json!([{"lb_endpoints": eps}]) };
    let mut c = json!({"name": name, "connect_timeout": "0.5s", "load_assignment": {"cluster_name": name, "endpoints": endpoints}});
    merge(&mut c, extra);
    c
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn bootstrap(hcm_extra: Value, route_config: Value, clusters: Vec<Value>) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "lr",
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    merge(&mut hcm, hcm_extra);
    json!({"static_resources": {
        "listeners": [{
            "name": "lr",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
        }],
        "clusters": clusters
    }})
}

async fn start(cfg: &Value) -> RunningServer {
    common::start_proxy(cfg, "lr.json").await
}

/// A port nothing listens on.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// The main fixture: one echo upstream and clusters for every failure.
struct Fixture {
    server: RunningServer,
    addr: SocketAddr,
    echo: EchoUpstream,
}

async fn fixture() -> Fixture {
    let echo = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "echo").await.unwrap();
    let rw = |prefix: &str, cluster: &str, extra: Value| {
        let mut r = json!({"cluster": cluster, "prefix_rewrite": "/"});
        merge(&mut r, extra);
        json!({"match": {"prefix": prefix}, "route": r})
    };
    let mut with_headers = rw("/r/", "echo", json!({}));
    with_headers["response_headers_to_add"] = json!([{"header": {"key": "x-route-resp", "value": "r"}}]);
    let routes = json!([
        rw("/e/", "echo", json!({})),
        with_headers,
        rw("/empty/", "empty", json!({})),
        rw("/refused/", "refused", json!({})),
        rw("/cb/", "cb", json!({})),
        rw("/timeout/", "echo", json!({"timeout": "0.2s"})),
        rw("/idle/", "echo", json!({"idle_timeout": "0.2s"})),
        rw("/unknown/", "nope", json!({})),
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct body"}}},
    ]);
    let rc = json!({"name": "r", "validate_clusters": false, "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let clusters = vec![
        cluster("echo", &[echo.addr()], json!({})),
        cluster("empty", &[], json!({})),
        cluster("refused", &[dead_addr()], json!({})),
        cluster("cb", &[echo.addr()], json!({"circuit_breakers": {"thresholds": [{"max_requests": 1}]}})),
    ];
    let server = start(&bootstrap(json!({}), rc, clusters)).await;
    let addr = server.listeners[0].address;
    Fixture { server, addr, echo }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a socket.

#[derive(Debug)]
struct Raw {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server closed the connection after the response.
    closed: bool,
}

impl Raw {
    fn status(&self) -> u16 {
        self.status_line[9..12].parse().unwrap()
    }
    fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string())
    }
}

/// Send raw bytes, read one response (content-length or chunked), then see whether the server
/// closes within 300 ms. Everything bounded by 10 s.
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// As [`raw`], for a request the codec refuses: the proxy keeps the connection up to its
/// delayed-close time (1 s, as Envoy) before it closes.
async fn raw_refused(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response_within(&mut s, Duration::from_millis(1500)).await
}

async fn read_response(s: &mut tokio::net::TcpStream) -> Raw {
    read_response_within(s, Duration::from_millis(300)).await
}

/// Read one response; `closed` says whether the connection closed within `close_wait` after it.
async fn read_response_within(s: &mut tokio::net::TcpStream, close_wait: Duration) -> Raw {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut eof = false;
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("response in time").unwrap_or(0);
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("body in time").unwrap();
            assert!(n > 0, "closed inside the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some() {
        loop {
            if rest.ends_with(b"0\r\n\r\n") {
                break;
            }
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("body in time").unwrap();
            assert!(n > 0, "closed inside a chunked body");
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else {
        Vec::new()
    };
    if !eof {
        eof = matches!(tokio::time::timeout(close_wait, s.read(&mut chunk)).await, Ok(Ok(0)) | Ok(Err(_)));
    }
    Raw { status_line, headers, body, closed: eof }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + n]);
        b = &b[line_end + 4 + n..];
    }
    out
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: lr.test\r\n\r\n").into_bytes()
}

const EMPTY_LAYOUT: [&str; 3] = ["date", "server", "content-length"];
const BODY_LAYOUT: [&str; 4] = ["content-length", "content-type", "date", "server"];

fn assert_body_reply(r: &Raw, status: u16, body: &str, what: &str) {
    assert_eq!(r.status(), status, "{what}: {r:?}");
    assert_eq!(r.names(), BODY_LAYOUT, "{what}");
    assert_eq!(r.text(), body, "{what}");
    assert_eq!(r.header("content-length"), Some(body.len().to_string().as_str()), "{what}");
    assert_eq!(r.header("content-type"), Some("text/plain"), "{what}");
    assert_eq!(r.header("server"), Some("envoy"), "{what}");
    assert!(httpdate::parse_http_date(r.header("date").unwrap()).is_ok(), "{what}: date is an IMF-fixdate");
    assert!(!r.closed, "{what}: keep-alive");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_404_and_unknown_cluster_503_are_empty() {
    let f = fixture().await;
    let r = raw(f.addr, &get("/nothing/here")).await;
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(r.names(), EMPTY_LAYOUT);
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("server"), Some("envoy"));
    assert!(r.body.is_empty() && !r.closed);

    let r = raw(f.addr, &get("/unknown/x")).await;
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.names(), EMPTY_LAYOUT);
    assert!(r.body.is_empty());
    assert_eq!(f.server.stats.counter("http.lr.no_route").value(), 1);
    assert_eq!(f.server.stats.counter("http.lr.no_cluster").value(), 1);
    assert_eq!(f.echo.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_503_and_504() {
    let f = fixture().await;
    let r = raw(f.addr, &get("/empty/x")).await;
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_body_reply(&r, 503, "no healthy upstream", "empty cluster");
    assert_eq!(f.server.stats.counter("cluster.empty.upstream_cx_none_healthy").value(), 1);

    let r = raw(f.addr, &get("/refused/x")).await;
    assert_body_reply(
        &r,
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        "refused",
    );
    assert_eq!(r.body.len(), 98);

    let r = raw(f.addr, &get("/e/close")).await;
    assert_body_reply(
        &r,
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        "termination",
    );
    assert_eq!(r.body.len(), 95);

    let t = Instant::now();
    let r = raw(f.addr, &get("/timeout/slow/2000")).await;
    let took = t.elapsed();
    assert_eq!(r.status_line, "HTTP/1.1 504 Gateway Timeout");
    assert_body_reply(&r, 504, "upstream request timeout", "route timeout");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(1500), "{took:?}");
    assert!(r.header("x-envoy-upstream-service-time").is_none());
    assert_eq!(f.server.stats.counter("cluster.echo.upstream_rq_timeout").value(), 1);

    let t = Instant::now();
    let r = raw(f.addr, &get("/idle/slow/2000")).await;
    let took = t.elapsed();
    assert_body_reply(&r, 504, "stream timeout", "idle timeout");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_replies_carry_route_response_headers_first() {
    let f = fixture().await;
    let r = raw(f.addr, &get("/r/close")).await;
    assert_eq!(f.echo.requests(), 1);
    assert_eq!(r.status(), 503);
    assert_eq!(r.names(), ["x-route-resp", "content-length", "content-type", "date", "server"]);
    assert_eq!(r.header("x-route-resp"), Some("r"));
    assert_eq!(r.text(), "upstream connect error or disconnect/reset before headers. reset reason: connection termination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_503_with_x_envoy_overloaded() {
    let f = fixture().await;
    let addr = f.addr;
    let slow = tokio::spawn(async move { raw(addr, &get("/cb/slow/1500")).await });
    let echo = &f.echo;
    assert!(sluice_testkit::wait_until(Duration::from_secs(5), || echo.requests() == 1).await, "slow request in flight");
    let r = raw(f.addr, &get("/cb/x")).await;
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.names(), ["x-envoy-overloaded", "content-length", "content-type", "date", "server"]);
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(r.text(), "upstream connect error or disconnect/reset before headers. reset reason: overflow");
    assert_eq!(f.server.stats.counter("cluster.cb.upstream_rq_pending_overflow").value() + f.server.stats.counter("cluster.cb.upstream_rq_active_overflow").value(), 1);
    let first = tokio::time::timeout(Duration::from_secs(5), slow).await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(echo.requests(), 1, "the overflowed request never reached the upstream");
    // Capacity is back once the first finished.
    let r = raw(f.addr, &get("/cb/y")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_level_replies_close_the_connection() {
    let f = fixture().await;
    let r = raw_refused(f.addr, b"GET service/1 HTTP/1.1\r\nhost: lr.test\r\n\r\n").await;
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(r.names(), ["content-length", "content-type", "date", "server", "connection"]);
    assert_eq!((r.text().as_str(), r.header("connection")), ("Bad Request", Some("close")));
    assert!(r.closed, "closed after a codec error");

    let r = raw_refused(f.addr, b"GET /e/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(r.names(), ["date", "server", "connection", "content-length"]);
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.body.is_empty() && r.closed);

    let r = raw_refused(f.addr, b"GET /e/x HTTP/1.0\r\nhost: lr.test\r\n\r\n").await;
    assert_eq!(r.status_line, "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.names(), ["content-length", "content-type", "date", "server", "connection"]);
    assert_eq!(r.text(), "Upgrade Required");
    assert!(r.closed);

    let big = "a".repeat(70_000);
    let r = raw_refused(f.addr, format!("GET /e/x HTTP/1.1\r\nhost: lr.test\r\nx-big: {big}\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status_line, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(r.names(), ["content-length", "content-type", "date", "server", "connection"]);
    assert_eq!(r.text(), "Request Header Fields Too Large");
    assert!(r.closed);

    // WebSocket upgrade on a forwarding route without upgrade_configs: 403, empty, close, with
    // the route's response headers.
    let r = raw(f.addr, b"GET /r/ws HTTP/1.1\r\nhost: lr.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert_eq!(r.status_line, "HTTP/1.1 403 Forbidden");
    assert_eq!(r.names(), ["x-route-resp", "date", "server", "connection", "content-length"]);
    assert!(r.body.is_empty() && r.closed);
    assert_eq!(f.echo.requests(), 0, "none of these reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_passes_through_and_big_post_passes() {
    let f = fixture().await;
    let r = raw(f.addr, &get("/r/status/503")).await;
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.header("content-type"), Some("application/json"), "upstream's own body and type");
    assert_eq!(r.header("x-upstream-id"), Some("echo"));
    assert_eq!(r.json()["path"], "/status/503");
    let ust = r.header("x-envoy-upstream-service-time").expect("x-envoy-upstream-service-time");
    assert!(ust.parse::<u64>().is_ok(), "{ust}");
    assert_eq!(r.header("x-route-resp"), Some("r"));
    assert_eq!(r.header("server"), Some("envoy"));
    // Upstream headers first (in their order), then ours; the upstream's date is kept in place.
    let names = r.names();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} in {names:?}"));
    assert!(pos("content-type") < pos("x-upstream-id"));
    assert!(pos("x-upstream-id") < pos("x-envoy-upstream-service-time"));
    assert!(pos("x-envoy-upstream-service-time") < pos("x-route-resp"));
    assert_eq!(names.iter().filter(|n| **n == "date").count(), 1);
    assert!(!r.closed);
    assert_eq!(f.server.stats.counter("cluster.echo.upstream_rq_503").value(), 1);

    // A 1 MiB POST passes (no 413).
    let body = vec![b'p'; 1024 * 1024];
    let resp = client::request("POST", &format!("http://{}/e/upload", f.addr), &[], body).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], 1024 * 1024);
    assert_eq!(resp.json()["method"], "POST");
}

// ---------------------------------------------------------------------------------------------
// Request header rules.

async fn echo_with(hcm_extra: Value, domains: Value) -> (RunningServer, EchoUpstream) {
    let echo = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "echo").await.unwrap();
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": domains, "routes": [
        {"match": {"prefix": "/ok"}, "route": {"cluster": "echo"}}
    ]}]});
    let server = start(&bootstrap(hcm_extra, rc, vec![cluster("echo", &[echo.addr()], json!({}))])).await;
    (server, echo)
}

fn upstream_header(j: &Value, name: &str) -> Option<String> {
    j["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_forwarded_proto_defaults() {
    let (server, _echo) = echo_with(json!({}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let r = client::get(&format!("http://{addr}/ok")).await.unwrap();
        let j = r.json();
        let id = upstream_header(&j, "x-request-id").expect("x-request-id generated");
        let u = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(u.get_version_num(), 4, "{id}");
        assert_eq!(id, id.to_lowercase());
        assert!(seen.insert(id), "fresh per request");
        assert_eq!(upstream_header(&j, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(upstream_header(&j, "x-forwarded-for"), None, "no XFF without use_remote_address");
        assert_eq!(upstream_header(&j, "x-envoy-external-address"), None);
        assert!(r.header("x-request-id").is_none(), "not in the response by default");
    }
    let r = client::request(
        "GET",
        &format!("http://{addr}/ok"),
        &[("x-request-id", "my-id"), ("x-forwarded-proto", "https"), ("x-forwarded-for", "1.2.3.4")],
        "",
    )
    .await
    .unwrap();
    let j = r.json();
    assert_eq!(upstream_header(&j, "x-request-id").as_deref(), Some("my-id"), "kept");
    assert_eq!(upstream_header(&j, "x-forwarded-proto").as_deref(), Some("https"), "kept");
    assert_eq!(upstream_header(&j, "x-forwarded-for").as_deref(), Some("1.2.3.4"), "untouched");
    let names: Vec<&str> = j["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap()).collect();
    assert_eq!(names, ["host", "x-request-id", "x-forwarded-proto", "x-forwarded-for", "x-envoy-expected-rq-timeout-ms"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_remote_address_appends_xff_and_sets_external_address() {
    let (server, _echo) = echo_with(json!({"use_remote_address": true, "always_set_request_id_in_response": true}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    let r = client::request(
        "GET",
        &format!("http://{addr}/ok"),
        &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")],
        "",
    )
    .await
    .unwrap();
    let j = r.json();
    // A loopback peer is recorded in x-forwarded-for as this host's own address (Envoy's rule).
    let host = sluice_proxy::http::conn_manager::local_host_address(true).map_or("127.0.0.1".to_string(), |a| a.to_string());
    assert_eq!(upstream_header(&j, "x-forwarded-for"), Some(format!("1.2.3.4,{host}")));
    assert_eq!(upstream_header(&j, "x-envoy-external-address").as_deref(), Some("127.0.0.1"));
    assert_eq!(upstream_header(&j, "x-forwarded-proto").as_deref(), Some("http"), "untrusted XFP overwritten");
    let id = upstream_header(&j, "x-request-id").unwrap();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()), "always_set_request_id_in_response");
    let r = client::get(&format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(upstream_header(&r.json(), "x-forwarded-for"), Some(host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_num_trusted_hops_picks_the_client_from_x_forwarded_for() {
    let (server, _echo) = echo_with(json!({"use_remote_address": true, "xff_num_trusted_hops": 1}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    let r = client::request("GET", &format!("http://{addr}/ok"), &[("x-forwarded-for", "9.9.9.9, 1.2.3.4")], "")
        .await
        .unwrap();
    let j = r.json();
    assert_eq!(upstream_header(&j, "x-envoy-external-address").as_deref(), Some("1.2.3.4"), "1 trusted hop: the rightmost XFF entry");
    let host = sluice_proxy::http::conn_manager::local_host_address(true).map_or("127.0.0.1".to_string(), |a| a.to_string());
    assert_eq!(upstream_header(&j, "x-forwarded-for"), Some(format!("9.9.9.9, 1.2.3.4,{host}")));
    // Fewer XFF entries than trusted hops: the peer is the client (as Envoy).
    let r = client::get(&format!("http://{addr}/ok")).await.unwrap();
    assert_eq!(upstream_header(&r.json(), "x-envoy-external-address").as_deref(), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_server_name_and_header_limit() {
    let (server, _echo) = echo_with(json!({"server_name": "sluice-test", "max_request_headers_kb": 2}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    let r = raw(addr, &get("/ok")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("server"), Some("sluice-test"));
    let r = raw(addr, &get("/nope")).await;
    assert_eq!((r.status(), r.header("server")), (404, Some("sluice-test")));
    let v = "b".repeat(1000);
    let r = raw(addr, format!("GET /ok HTTP/1.1\r\nhost: lr.test\r\nx-v: {v}\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status(), 200, "1 KB of headers under a 2 KiB limit");
    let v = "b".repeat(3000);
    let r = raw_refused(addr, format!("GET /ok HTTP/1.1\r\nhost: lr.test\r\nx-v: {v}\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status_line, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(r.text(), "Request Header Fields Too Large");
    assert_eq!(r.header("server"), Some("sluice-test"));
    assert!(r.closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_path_and_merge_slashes() {
    // Off (default): nothing is rewritten.
    let (server, _echo) = echo_with(json!({}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    assert_eq!(raw(addr, &get("//ok/x")).await.status(), 404);
    let r = raw(addr, &get("/ok/../ok/x")).await;
    assert_eq!((r.status(), r.json()["path"].as_str()), (200, Some("/ok/../ok/x")));
    drop(server);

    let (server, _echo) = echo_with(json!({"normalize_path": true, "merge_slashes": true}), json!(["*"])).await;
    let addr = server.listeners[0].address;
    let r = raw(addr, &get("//ok///x?q=1")).await;
    assert_eq!((r.status(), r.json()["path"].as_str()), (200, Some("/ok/x?q=1")));
    let r = raw(addr, &get("/a/../ok/./y")).await;
    assert_eq!((r.status(), r.json()["path"].as_str()), (200, Some("/ok/y")));
    let r = raw(addr, &get("/x/../../nope")).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_any_host_port() {
    let (server, _echo) = echo_with(json!({}), json!(["exact.test"])).await;
    let addr = server.listeners[0].address;
    let r = raw(addr, b"GET /ok HTTP/1.1\r\nhost: exact.test:1234\r\n\r\n").await;
    assert_eq!(r.status(), 404, "the port is part of the host");
    drop(server);

    let (server, _echo) = echo_with(json!({"strip_any_host_port": true}), json!(["exact.test"])).await;
    let addr = server.listeners[0].address;
    let r = raw(addr, b"GET /ok HTTP/1.1\r\nhost: Exact.Test:1234\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.upstream_header("host").as_deref(), Some("Exact.Test"), "the port is stripped from the forwarded host");
    let r = raw(addr, b"GET /ok HTTP/1.1\r\nhost: exact.test\r\n\r\n").await;
    assert_eq!(r.status(), 200);
}
