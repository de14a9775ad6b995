//! Every failure mode of Cluster::send and the cluster stats it charges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sluice_proxy::body::Body;
use sluice_proxy::stats::Store;
use sluice_proxy::upstream::{ClusterManager, LbContext, UpstreamFailure};
use sluice_testkit::EchoUpstream;

fn manager(cluster_yaml: &str, store: &Store) -> Arc<ClusterManager> {
    let yaml = format!("static_resources:\n  clusters:\n{cluster_yaml}");
    let b = sluice_config::parse(&yaml, sluice_config::Format::Yaml).expect("valid config").bootstrap;
    ClusterManager::new(&b, store).unwrap()
}

fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let mut eps = String::new();
    for a in addrs {
        eps += &format!(
            "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
            a.ip(),
            a.port()
        );
    }
    let eps = if addrs.is_empty() { "      endpoints: []\n".to_string() } else { format!("      endpoints:\n      - lb_endpoints:\n{eps}") };
    format!("  - name: {name}\n    connect_timeout: 0.5s\n{extra}\n    load_assignment:\n      cluster_name: {name}\n{eps}")
}

fn req(path: &str) -> http::Request<Body> {
    http::Request::builder().uri(path).header("host", "f.test").body(Body::empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_no_healthy_upstream() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let store = Store::new();
    let cm = manager(&(cluster("refused", &[dead], "") + &cluster("empty", &[], "")), &store);
    let e = cm.get("refused").unwrap().send(req("/"), &LbContext::default()).await.unwrap_err();
    // Envoy's transport failure reason: the socket error of the connect.
    assert_eq!(e, UpstreamFailure::ConnectionFailure { transport_reason: Some("delayed connect error: Connection refused".into()) });
    assert_eq!(e.reset_reason(), "remote connection failure");
    assert_eq!(store.counter("cluster.refused.upstream_cx_connect_fail").value(), 1);
    assert_eq!(store.counter("cluster.refused.upstream_cx_total").value(), 1);
    assert_eq!(store.gauge("cluster.refused.upstream_cx_active").value(), 0);
    assert_eq!(store.counter("cluster.refused.upstream_rq_total").value(), 0);
    let h = &cm.get("refused").unwrap().hosts().hosts[0];
    assert_eq!(h.stats.cx_connect_fail.load(std::sync::atomic::Ordering::Relaxed), 1);

    let e = cm.get("empty").unwrap().send(req("/"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::NoHealthyUpstream);
    assert_eq!(e.reset_reason(), "");
    assert_eq!(store.counter("cluster.empty.upstream_cx_none_healthy").value(), 1);

    // Unroutable health statuses are excluded from load balancing; with every host unhealthy
    // the cluster is below the panic threshold (Envoy's default 50 %) and routes to all hosts
    // anyway, as Envoy 1.40 does, unless the threshold is 0.
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let y = |name: &str, extra: &str| {
        format!(
            "  - name: {name}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n          health_status: UNHEALTHY\n",
            up.port()
        )
    };
    let store = Store::new();
    let cm = manager(&(y("hs", "") + &y("nopanic", "    common_lb_config: {healthy_panic_threshold: {value: 0}}\n")), &store);
    assert_eq!(cm.get("hs").unwrap().hosts().hosts.len(), 1);
    assert_eq!(cm.get("hs").unwrap().send(req("/"), &LbContext::default()).await.unwrap().status(), 200);
    assert_eq!(store.counter("cluster.hs.lb_healthy_panic").value(), 1);
    assert_eq!(cm.get("nopanic").unwrap().send(req("/"), &LbContext::default()).await.unwrap_err(), UpstreamFailure::NoHealthyUpstream);
    assert_eq!(store.gauge("cluster.hs.membership_total").value(), 1);
    assert_eq!(store.gauge("cluster.hs.membership_healthy").value(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_on_a_listener_with_a_full_backlog() {
    // A listener that never accepts, its accept queue filled: further SYNs are dropped.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            fillers.push(s);
        }
    }
    let store = Store::new();
    let cm = manager(&cluster("slow", &[addr], "").replace("connect_timeout: 0.5s", "connect_timeout: 0.3s"), &store);
    let t = Instant::now();
    let e = cm.get("slow").unwrap().send(req("/"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::ConnectTimeout);
    assert_eq!(e.reset_reason(), "connection timeout");
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(store.counter("cluster.slow.upstream_cx_connect_timeout").value(), 1);
    assert_eq!(store.counter("cluster.slow.upstream_cx_connect_fail").value(), 1);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_before_headers_and_upstream_5xx() {
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let store = Store::new();
    let cm = manager(&cluster("term", &[up.addr()], ""), &store);
    let c = cm.get("term").unwrap();
    let e = c.send(req("/close"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::ConnectionTermination);
    assert_eq!(e.reset_reason(), "connection termination");
    assert_eq!(store.counter("cluster.term.upstream_cx_destroy_remote_with_active_rq").value(), 1);
    // The cluster still works afterwards (new connection).
    let r = c.send(req("/status/503"), &LbContext::default()).await.unwrap();
    assert_eq!(r.status(), 503);
    r.into_body().collect().await.unwrap();
    let h = &c.hosts().hosts[0];
    assert_eq!(h.stats.rq_error.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert!(sluice_testkit::wait_until(Duration::from_secs(5), || store.gauge("cluster.term.upstream_rq_active").value() == 0).await);

    // A non-HTTP upstream → protocol error.
    let junk = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jaddr = junk.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok((mut s, _)) = junk.accept().await {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let store2 = Store::new();
    let cm2 = manager(&cluster("junk", &[jaddr], ""), &store2);
    let e = cm2.get("junk").unwrap().send(req("/"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::ProtocolError);
    assert_eq!(store2.counter("cluster.junk.upstream_cx_protocol_error").value(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_on_max_requests_and_pending_on_max_connections() {
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let store = Store::new();
    let cb = |n: &str| format!("    circuit_breakers:\n      thresholds:\n      - {n}\n");
    let y = cluster("rq1", &[up.addr()], &cb("max_requests: 1"))
        + &cluster("cx1", &[up.addr()], &cb("max_connections: 1"))
        + &cluster("pend0", &[up.addr()], &cb("{max_connections: 1, max_pending_requests: 1}"));
    let cm = manager(&y, &store);
    assert_eq!(cm.get("rq1").unwrap().thresholds()[0].max_requests, 1);
    assert_eq!(cm.get("rq1").unwrap().thresholds()[0].max_connections, 1024);
    assert_eq!(cm.get("rq1").unwrap().thresholds()[1].max_retries, 3);

    // max_requests 1: a second request while a slow one is in flight overflows.
    let c = cm.get("rq1").unwrap().clone();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.send(req("/slow/500"), &LbContext::default()).await.unwrap().into_body().collect().await.unwrap() }
    });
    assert!(sluice_testkit::wait_until(Duration::from_secs(5), || store.gauge("cluster.rq1.upstream_rq_active").value() == 1).await);
    assert_eq!(store.gauge("cluster.rq1.circuit_breakers.default.rq_open").value(), 1);
    let e = c.send(req("/"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::Overflow);
    assert_eq!(e.reset_reason(), "overflow");
    assert_eq!(store.counter("cluster.rq1.upstream_rq_active_overflow").value(), 1);
    slow.await.unwrap();
    assert_eq!(store.gauge("cluster.rq1.circuit_breakers.default.rq_open").value(), 0);
    assert_eq!(c.send(req("/"), &LbContext::default()).await.unwrap().status(), 200);

    // max_connections 1: concurrent requests wait for the one connection (pending), then succeed.
    let c = cm.get("cx1").unwrap().clone();
    let before = up.connections();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.send(req("/slow/100"), &LbContext::default()).await.unwrap();
            r.into_body().collect().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    }
    assert_eq!(up.connections() - before, 1);
    assert!(store.counter("cluster.cx1.upstream_cx_overflow").value() >= 1);
    assert_eq!(store.counter("cluster.cx1.upstream_rq_total").value(), 3);

    // max_connections 1 + max_pending_requests 1: a third concurrent request overflows.
    let c = cm.get("pend0").unwrap().clone();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.send(req("/slow/400"), &LbContext::default()).await.map(|_| ()) }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = c.send(req("/"), &LbContext::default()).await.unwrap_err();
    assert_eq!(e, UpstreamFailure::Overflow);
    assert_eq!(store.counter("cluster.pend0.upstream_rq_pending_overflow").value(), 1);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn charge_response_counts_codes_classes_and_time() {
    let store = Store::new();
    let cm = manager(&cluster("ch", &[], ""), &store);
    let s = cm.get("ch").unwrap().stats();
    assert_eq!(s.prefix(), "cluster.ch.");
    s.charge_response(200, Some(3.0));
    s.charge_response(200, Some(5.0));
    s.charge_response(503, None);
    s.charge_response(403, None);
    s.upstream_rq_timeout().inc();
    let c = |n: &str| store.counter(format!("cluster.ch.{n}")).value();
    assert_eq!(c("upstream_rq_200"), 2);
    assert_eq!(c("upstream_rq_2xx"), 2);
    assert_eq!(c("upstream_rq_503"), 1);
    assert_eq!(c("upstream_rq_5xx"), 1);
    assert_eq!(c("upstream_rq_403"), 1);
    assert_eq!(c("upstream_rq_4xx"), 1);
    assert_eq!(c("upstream_rq_completed"), 4);
    assert_eq!(c("external.upstream_rq_200"), 2);
    assert_eq!(c("external.upstream_rq_completed"), 4);
    assert_eq!(c("upstream_rq_timeout"), 1);
    assert_eq!(store.histogram("cluster.ch.upstream_rq_time").snapshot().count, 2);
    // Registered up front like Envoy's, so /stats lists them with 0.
    assert!(store.all().iter().any(|(n, _)| n == "cluster.ch.upstream_cx_connect_timeout"));
    assert!(store.all().iter().any(|(n, _)| n == "cluster.ch.circuit_breakers.default.rq_pending_open"));
}
