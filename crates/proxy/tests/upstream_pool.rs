//! Connection pools: HTTP/1.1 keep-alive, HTTP/2 multiplexing, gRPC trailers, upstream TLS,
//! use_downstream_protocol, and the cost of the shared per-host pool lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sluice_proxy::body::Body;
use sluice_proxy::stats::Store;
use sluice_proxy::upstream::{Cluster, ClusterManager, LbContext};
use sluice_testkit::{EchoUpstream, Pki};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn manager(cluster_yaml: &str, store: &Store) -> Arc<ClusterManager> {
    let yaml = format!("static_resources:\n  clusters:\n{cluster_yaml}");
    let b = sluice_config::parse(&yaml, sluice_config::Format::Yaml).expect("valid config").bootstrap;
    ClusterManager::new(&b, store).unwrap()
}

fn static_cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

const H2: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;

/// Start an echo server on the address a stopped one used (its listener closes asynchronously).
async fn restart(addr: SocketAddr, h2: bool) -> EchoUpstream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = if h2 { EchoUpstream::start_h2(addr).await } else { EchoUpstream::start(addr).await };
        match r {
            Ok(u) => return u,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

async fn send(c: &Cluster, path: &str, ctx: LbContext) -> http::Response<Body> {
    let req = http::Request::builder().uri(path).header("host", "up.test").body(Body::empty()).unwrap();
    c.send(req, &ctx).await.expect("upstream answer")
}

async fn json(resp: http::Response<Body>) -> serde_json::Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_reuses_one_connection() {
    let up = EchoUpstream::start(any()).await.unwrap();
    let store = Store::new();
    let cm = manager(&static_cluster("ka", up.addr(), ""), &store);
    let c = cm.get("ka").unwrap();
    for i in 0..20 {
        let resp = send(c, &format!("/n/{i}"), LbContext::default()).await;
        assert_eq!(resp.status(), 200);
        let j = json(resp).await;
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["path"], format!("/n/{i}"));
        let host = j["headers"].as_array().unwrap().iter().find(|h| h[0] == "host").unwrap()[1].clone();
        assert_eq!(host, "up.test");
    }
    // Big streamed bodies and no-body responses return the connection too.
    let resp = send(c, "/big/300000", LbContext::default()).await;
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 300000);
    let resp = send(c, "/status/204", LbContext::default()).await;
    assert_eq!(resp.status(), 204);
    drop(resp);
    send(c, "/", LbContext::default()).await.into_body().collect().await.unwrap();
    assert_eq!(up.connections(), 1, "one upstream connection for sequential requests");
    assert_eq!(store.counter("cluster.ka.upstream_cx_total").value(), 1);
    assert_eq!(store.counter("cluster.ka.upstream_cx_http1_total").value(), 1);
    assert_eq!(store.counter("cluster.ka.upstream_rq_total").value(), 23);
    assert_eq!(store.gauge("cluster.ka.upstream_cx_active").value(), 1);
    assert_eq!(store.gauge("cluster.ka.upstream_rq_active").value(), 0);
    let h = &c.hosts().hosts[0];
    assert_eq!(h.stats.rq_total.load(std::sync::atomic::Ordering::Relaxed), 23);
    assert_eq!(h.stats.cx_total.load(std::sync::atomic::Ordering::Relaxed), 1);
    // An absolute-form URI goes out origin-form.
    let req = http::Request::builder().uri("http://abs.test/x?y=1").body(Body::empty()).unwrap();
    let j = json(c.send(req, &LbContext::default()).await.unwrap()).await;
    assert_eq!(j["path"], "/x?y=1");
    // A dropped (unread) body does not return its connection: the next request still works.
    let resp = send(c, "/big/1000000", LbContext::default()).await;
    drop(resp);
    assert_eq!(send(c, "/", LbContext::default()).await.status(), 200);
    // Upstream closes idle keep-alive connections: the pool notices and reconnects.
    up.stop();
    let up2 = restart(up.addr(), false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(c, "/", LbContext::default()).await.status(), 200);
    assert_eq!(up2.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexes_on_one_connection_and_keeps_grpc_trailers() {
    let up = EchoUpstream::start_h2(any()).await.unwrap();
    let store = Store::new();
    let cm = manager(&static_cluster("h2", up.addr(), H2), &store);
    let c = cm.get("h2").unwrap().clone();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { json(send(&c, "/slow/300", LbContext::default()).await).await }));
    }
    for t in tasks {
        let j = t.await.unwrap();
        assert_eq!(j["version"], "HTTP/2");
        let auth = j["headers"].as_array().unwrap().iter().any(|h| h[0] == "host");
        assert!(!auth, "no host header on h2: {j}");
    }
    assert!(start.elapsed() < Duration::from_secs(3), "concurrent, not serialised");
    assert_eq!(up.connections(), 1);
    assert_eq!(store.counter("cluster.h2.upstream_cx_http2_total").value(), 1);

    // gRPC: trailers pass through Cluster::send.
    let req = http::Request::builder()
        .method("POST")
        .uri("/grpc/pkg.Svc/Method")
        .header("host", "up.test")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::full(&b"\0\0\0\0\x02hi"[..]))
        .unwrap();
    let resp = c.send(req, &LbContext::default()).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    let r = up.recorded();
    let last = r.last().unwrap();
    assert_eq!(last.path, "/grpc/pkg.Svc/Method");
    assert!(last.headers.iter().any(|(k, v)| k == "te" && v == "trailers"));

    // Upstream restarts: the closed h2 connection is replaced.
    up.stop();
    let up2 = restart(up.addr(), true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(&c, "/", LbContext::default()).await.status(), 200);
    assert_eq!(up2.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_downstream_protocol_follows_the_request() {
    let up = EchoUpstream::start(any()).await.unwrap();
    let extra = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {}"#;
    let cm = manager(&static_cluster("ds", up.addr(), extra), &Store::new());
    let c = cm.get("ds").unwrap();
    let j = json(send(c, "/", LbContext { downstream_http2: true, ..Default::default() }).await).await;
    assert_eq!(j["version"], "HTTP/2");
    let j = json(send(c, "/", LbContext::default()).await).await;
    assert_eq!(j["version"], "HTTP/1.1");
}

fn tls_extra(pki: &Pki, sni: &str, ca: bool, client_cert: bool, http2: bool) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("            {l}")).collect::<Vec<_>>().join("\n");
    let mut common = String::new();
    if ca {
        common += &format!("          validation_context:\n            trusted_ca:\n              inline_string: |\n{}\n", indent(&pki.ca_cert).replace("            ", "                "));
    }
    if client_cert {
        common += &format!(
            "          tls_certificates:\n          - certificate_chain:\n              inline_string: |\n{}\n            private_key:\n              inline_string: |\n{}\n",
            indent(&pki.client_cert).replace("            ", "                "),
            indent(&pki.client_key).replace("            ", "                ")
        );
    }
    let common = if common.is_empty() { "        common_tls_context: {}\n".to_string() } else { format!("        common_tls_context:\n{common}") };
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
{common}{h2}"#,
        h2 = if http2 { format!("\n{H2}") } else { String::new() }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_h1_h2_mtls_and_untrusted() {
    for pki in [Pki::new(), Pki::rsa()] {
        // TLS with trusted CA, HTTP/1.1 (no ALPN) and HTTP/2 (ALPN h2).
        let up = EchoUpstream::start_tls(any(), &pki).await.unwrap();
        let y = static_cluster("t1", up.addr(), &tls_extra(&pki, "upstream.test", true, false, false))
            + &static_cluster("t2", up.addr(), &tls_extra(&pki, "upstream.test", true, false, true));
        let cm = manager(&y, &Store::new());
        let j = json(send(cm.get("t1").unwrap(), "/", LbContext::default()).await).await;
        assert_eq!(j["version"], "HTTP/1.1");
        let j = json(send(cm.get("t2").unwrap(), "/", LbContext::default()).await).await;
        assert_eq!(j["version"], "HTTP/2");

        // mTLS: the upstream requires a client certificate.
        let mtls = EchoUpstream::start_with(
            any(),
            sluice_testkit::EchoOptions { tls: Some(pki.server_config(&["http/1.1"], true)), ..Default::default() },
        )
        .await
        .unwrap();
        let y = static_cluster("m", mtls.addr(), &tls_extra(&pki, "upstream.test", true, true, false))
            + &static_cluster("nocert", mtls.addr(), &tls_extra(&pki, "upstream.test", true, false, false));
        let store = Store::new();
        let cm = manager(&y, &store);
        assert_eq!(send(cm.get("m").unwrap(), "/", LbContext::default()).await.status(), 200);
        let req = http::Request::builder().uri("/").header("host", "x").body(Body::empty()).unwrap();
        let r = cm.get("nocert").unwrap().send(req, &LbContext::default()).await;
        assert!(r.is_err(), "no client cert must fail");

        // A CA that did not sign the server certificate → connection failure with a TLS reason.
        let other = Pki::new();
        let y = static_cluster("bad", up.addr(), &tls_extra(&other, "upstream.test", true, false, false));
        let store = Store::new();
        let cm = manager(&y, &store);
        let req = http::Request::builder().uri("/").header("host", "x").body(Body::empty()).unwrap();
        match cm.get("bad").unwrap().send(req, &LbContext::default()).await {
            Err(sluice_proxy::upstream::UpstreamFailure::ConnectionFailure { transport_reason: Some(r) }) => {
                assert!(r.starts_with("TLS_error"), "{r}")
            }
            other => panic!("expected a TLS connection failure, got {:?}", other.map(|r| r.status())),
        }
        assert_eq!(store.counter("cluster.bad.upstream_cx_connect_fail").value(), 1);

        // No validation context: like Envoy, the server certificate is not verified.
        let y = static_cluster("noverify", up.addr(), &tls_extra(&other, "upstream.test", false, false, false));
        let cm = manager(&y, &Store::new());
        assert_eq!(send(cm.get("noverify").unwrap(), "/", LbContext::default()).await.status(), 200);
    }
}

/// Measures the shared per-host pool: concurrent keep-alive requests from many tasks on a
/// 2-worker runtime. Prints requests/s and the time spent inside the pool's lock operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_lock_cost() {
    let up = EchoUpstream::start(any()).await.unwrap();
    let cm = manager(&static_cluster("bench", up.addr(), ""), &Store::new());
    let c = cm.get("bench").unwrap().clone();
    let n_tasks = 16;
    let per_task = 150;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n_tasks {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                send(&c, "/", LbContext::default()).await.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    let total = n_tasks * per_task;
    let el = start.elapsed();
    println!(
        "shared pool: {total} requests, {n_tasks} tasks, {:.0} rq/s, {} upstream connections",
        total as f64 / el.as_secs_f64(),
        up.connections()
    );
    // Connections are reused: at most one per concurrent task.
    assert!(up.connections() <= n_tasks as u64, "{} connections", up.connections());
    // Uncontended lock cost: push/pop of an idle sender.
    let m = std::sync::Mutex::new(Vec::<u64>::with_capacity(16));
    let t = Instant::now();
    for i in 0..1_000_000u64 {
        m.lock().unwrap().push(i);
        std::hint::black_box(m.lock().unwrap().pop());
    }
    println!("mutex push+pop: {:.0} ns", t.elapsed().as_nanos() as f64 / 1e6);
}
