//! Active health checking, outlier detection and the panic threshold over real loopback sockets:
//! controllable upstreams (`health_common`), a cluster manager (or the whole proxy) in the test.
//! Every wait is bounded; intervals are short (100–300 ms) so each test takes a few seconds.

mod common;
mod health_common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use health_common::{endpoints, wait_for, Upstream};
use sluice_proxy::body::Body;
use sluice_proxy::stats::Store;
use sluice_proxy::upstream::{health_flag, Cluster, ClusterManager, LbContext};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn manager(cluster_yaml: &str, store: &Store) -> Arc<ClusterManager> {
    let yaml = format!("static_resources:\n  clusters:\n{cluster_yaml}");
    let b = sluice_config::parse(&yaml, sluice_config::Format::Yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")).bootstrap;
    let cm = ClusterManager::new(&b, store).unwrap();
    tokio::time::timeout(Duration::from_secs(10), cm.initialized()).await.expect("clusters warm up");
    cm
}

fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n{extra}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{}",
        endpoints(addrs)
    )
}

const HC: &str = "    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      http_health_check: {path: /hc}";

/// Send `n` requests; answers per upstream label (`"503"`-style keys for local replies).
async fn spread(c: &Cluster, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let req = http::Request::builder().uri("/x").header("host", "t").body(Body::empty()).unwrap();
        let key = match tokio::time::timeout(Duration::from_secs(5), c.send(req, &LbContext::default())).await.expect("answer in time") {
            Ok(r) => {
                let id = r.headers().get("x-upstream-id").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                // Read the body: the connection goes back to the pool.
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                id
            }
            Err(e) => format!("error: {e}"),
        };
        *m.entry(key).or_default() += 1;
    }
    m
}

fn flags(c: &Cluster, addr: SocketAddr) -> String {
    c.hosts().hosts.iter().find(|h| h.address == addr).map(|h| h.health_flags()).unwrap_or_else(|| "absent".into())
}

fn stat(store: &Store, name: &str) -> i64 {
    store
        .all()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, m)| match m {
            sluice_proxy::stats::Metric::Counter(c) => c.value() as i64,
            sluice_proxy::stats::Metric::Gauge(g) => g.value(),
            _ => -1,
        })
        .unwrap_or_else(|| panic!("no stat {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstream_leaves_within_two_intervals_and_returns_after_healthy_threshold() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await, Upstream::start(any(), "c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let cm = manager(&cluster("hc", &addrs, HC), &store).await;
    let c = cm.get("hc").unwrap();
    // Warm: every host had its first (passing) check.
    assert!(addrs.iter().all(|a| flags(c, *a) == "healthy"), "{:?}", addrs.iter().map(|a| flags(c, *a)).collect::<Vec<_>>());
    assert_eq!(stat(&store, "cluster.hc.health_check.healthy"), 3);
    assert_eq!(stat(&store, "cluster.hc.membership_healthy"), 3);
    // The health check request Envoy sends.
    let hdrs = ups[0].ctl.last_hc.lock().unwrap().clone();
    assert_eq!(hdrs, vec![("host".to_string(), "hc".to_string()), ("user-agent".to_string(), "Envoy/HC".to_string())]);

    // b answers 503: failed at once on its next check (within two intervals), traffic moves.
    ups[1].set_hc(503);
    let t = wait_for(Duration::from_secs(2), || flags(c, addrs[1]) == "/failed_active_hc").await.expect("b marked failed");
    assert!(t <= Duration::from_millis(400 + 150), "marked after {t:?}");
    let m = spread(c, 30).await;
    assert_eq!((m.get("a"), m.get("b"), m.get("c")), (Some(&15), None, Some(&15)), "{m:?}");
    assert_eq!(stat(&store, "cluster.hc.membership_healthy"), 2);
    assert_eq!(stat(&store, "cluster.hc.health_check.healthy"), 2);

    // b passes again: back after healthy_threshold (2) checks, and gets traffic again.
    let before = ups[1].requests();
    ups[1].set_hc(200);
    let back = Instant::now();
    let t = wait_for(Duration::from_secs(3), || flags(c, addrs[1]) == "healthy").await.expect("b back");
    assert!(t >= Duration::from_millis(150) && t <= Duration::from_millis(700), "back after {t:?}");
    // The time until the returning replica receives traffic again, with requests flowing.
    let mut first = None;
    for _ in 0..600 {
        spread(c, 1).await;
        if ups[1].requests() > before {
            first = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = first.expect("b received traffic again");
    // b's return came within update_merge_window (1 s) of its failure: the load balancer gets it
    // when the window ends, as in Envoy.
    assert!(first >= Duration::from_millis(900), "traffic back after {first:?}");
    println!("returning replica received traffic again after {first:?} (interval 200 ms, healthy_threshold 2, update_merge_window 1 s)");

    // b stops listening: two network failures (unhealthy_threshold 2) fail it.
    ups[1].stop();
    let t = wait_for(Duration::from_secs(3), || flags(c, addrs[1]) == "/failed_active_hc").await.expect("b failed");
    assert!(t <= Duration::from_millis(2 * 200 + 300), "network failures marked after {t:?}");
    assert!(stat(&store, "cluster.hc.health_check.network_failure") >= 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = spread(c, 20).await;
    assert!(!m.contains_key("b") && m.keys().all(|k| k == "a" || k == "c"), "{m:?}");
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_merge_window_a_returning_replica_gets_traffic_after_healthy_threshold_checks() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let extra = format!("{HC}\n    common_lb_config: {{update_merge_window: 0s}}");
    let cm = manager(&cluster("nm", &addrs, &extra), &store).await;
    let c = cm.get("nm").unwrap();
    ups[1].set_hc(503);
    wait_for(Duration::from_secs(2), || flags(c, addrs[1]) == "/failed_active_hc").await.expect("b failed");
    let before = ups[1].requests();
    ups[1].set_hc(200);
    let back = Instant::now();
    let mut first = None;
    for _ in 0..400 {
        spread(c, 1).await;
        if ups[1].requests() > before {
            first = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = first.expect("b received traffic again");
    assert!(first <= Duration::from_millis(700), "{first:?}");
    println!("returning replica received traffic again after {first:?} (interval 200 ms, healthy_threshold 2, no merge window)");
    assert_eq!(stat(&store, "cluster_manager.cluster_updated"), 2);
    assert_eq!(stat(&store, "cluster_manager.update_out_of_merge_window"), 0);
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_updates_within_the_merge_window_reach_the_load_balancer_together() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await, Upstream::start(any(), "c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let cm = manager(&cluster("m", &addrs, HC), &store).await;
    let c = cm.get("m").unwrap();
    // First change: out of any window, delivered at once.
    ups[0].set_hc(503);
    wait_for(Duration::from_secs(2), || flags(c, addrs[0]) == "/failed_active_hc").await.expect("a failed");
    let m = spread(c, 10).await;
    assert_eq!(m.get("a"), None, "{m:?}");
    // Second change right after: gauges follow at once, the load balancer a window later.
    ups[1].set_hc(503);
    let t0 = Instant::now();
    wait_for(Duration::from_secs(2), || flags(c, addrs[1]) == "/failed_active_hc").await.expect("b failed");
    assert_eq!(stat(&store, "cluster.m.membership_healthy"), 1);
    let m = spread(c, 10).await;
    assert_eq!(m.get("b"), Some(&5), "still b, within the window: {m:?}");
    wait_for(Duration::from_secs(3), || stat(&store, "cluster_manager.cluster_updated_via_merge") == 1).await.expect("merged update");
    assert!(t0.elapsed() >= Duration::from_millis(700), "{:?}", t0.elapsed());
    let m = spread(c, 12).await;
    // 1 of 3 healthy: panic mode, all three.
    assert_eq!((m.get("a"), m.get("b"), m.get("c")), (Some(&4), Some(&4), Some(&4)), "{m:?}");
    assert_eq!(stat(&store, "cluster_manager.cluster_updated"), 1);
    assert_eq!(stat(&store, "cluster_manager.update_out_of_merge_window"), 1);
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejects_after_consecutive_5xx_and_returns_after_the_ejection_time() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let od = "    outlier_detection: {consecutive_5xx: 3, interval: 0.1s, base_ejection_time: 1s, max_ejection_percent: 100}";
    let cm = manager(&cluster("od", &addrs, od), &store).await;
    let c = cm.get("od").unwrap();
    ups[1].set_status(500);
    // Round robin: b sees every other request; its third 500 ejects it.
    let m = spread(c, 6).await;
    assert_eq!(m.get("b"), Some(&3), "{m:?}");
    let ejected = Instant::now();
    wait_for(Duration::from_secs(1), || flags(c, addrs[1]) == "/failed_outlier_check").await.expect("b ejected");
    for (s, v) in [
        ("ejections_active", 1),
        ("ejections_enforced_total", 1),
        ("ejections_detected_consecutive_5xx", 1),
        ("ejections_enforced_consecutive_5xx", 1),
        ("ejections_total", 1),
        ("ejections_consecutive_5xx", 1),
    ] {
        assert_eq!(stat(&store, &format!("cluster.od.outlier_detection.{s}")), v, "{s}");
    }
    let m = spread(c, 10).await;
    assert_eq!(m.get("a"), Some(&10), "{m:?}");
    ups[1].set_status(200);
    wait_for(Duration::from_secs(3), || flags(c, addrs[1]) == "healthy").await.expect("b returns");
    let t = ejected.elapsed();
    assert!(t >= Duration::from_millis(950) && t <= Duration::from_millis(1400), "returned after {t:?}");
    assert_eq!(stat(&store, "cluster.od.outlier_detection.ejections_active"), 0);
    let m = spread(c, 10).await;
    assert_eq!(m.get("b"), Some(&5), "{m:?}");
    // A second ejection lasts twice as long (base_ejection_time × 2).
    ups[1].set_status(503);
    spread(c, 6).await;
    let ejected = Instant::now();
    wait_for(Duration::from_secs(1), || flags(c, addrs[1]) == "/failed_outlier_check").await.expect("b ejected again");
    ups[1].set_status(200);
    wait_for(Duration::from_secs(4), || flags(c, addrs[1]) == "healthy").await.expect("b returns again");
    let t = ejected.elapsed();
    assert!(t >= Duration::from_millis(1950) && t <= Duration::from_millis(2500), "second return after {t:?}");
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_traffic_goes_to_all_hosts() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await, Upstream::start(any(), "c").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let extra = format!("{HC}\n    common_lb_config: {{update_merge_window: 0s}}");
    let cm = manager(&cluster("p", &addrs, &extra), &store).await;
    let c = cm.get("p").unwrap();
    ups[0].set_hc(500);
    ups[1].set_hc(500);
    wait_for(Duration::from_secs(2), || flags(c, addrs[0]) != "healthy" && flags(c, addrs[1]) != "healthy").await.expect("two fail");
    // 1 of 3 healthy (33 % < 50 %): panic, all three get traffic, every pick counted.
    let m = spread(c, 30).await;
    assert_eq!((m.get("a"), m.get("b"), m.get("c")), (Some(&10), Some(&10), Some(&10)), "{m:?}");
    assert_eq!(stat(&store, "cluster.p.lb_healthy_panic"), 30);
    // Back above the threshold: only the healthy hosts, no more panic picks.
    ups[1].set_hc(200);
    wait_for(Duration::from_secs(3), || flags(c, addrs[1]) == "healthy").await.expect("b back");
    let m = spread(c, 20).await;
    assert_eq!((m.get("a"), m.get("b"), m.get("c")), (None, Some(&10), Some(&10)), "{m:?}");
    assert_eq!(stat(&store, "cluster.p.lb_healthy_panic"), 30);
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_health_check_fail_excludes_at_once_until_a_check_passes() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let store = Store::new();
    let slow = HC.replace("interval: 0.2s\n      no_traffic_interval: 0.2s", "interval: 30s\n      no_traffic_interval: 30s");
    let cm = manager(&cluster("i", &addrs, &slow), &store).await;
    let c = cm.get("i").unwrap();
    ups[1].ctl.immediate_fail.store(true, std::sync::atomic::Ordering::Relaxed);
    spread(c, 2).await;
    wait_for(Duration::from_secs(1), || flags(c, addrs[1]) == "/failed_active_hc/excluded_via_immediate_hc_fail")
        .await
        .unwrap_or_else(|| panic!("flags {}", flags(c, addrs[1])));
    assert_eq!(stat(&store, "cluster.i.health_check.passive_failure"), 1);
    // The gauges follow once the checker has handed the change to the cluster (a moment after
    // the flags and the counter).
    wait_for(Duration::from_secs(1), || stat(&store, "cluster.i.membership_excluded") == 1)
        .await
        .unwrap_or_else(|| panic!("membership_excluded {}", stat(&store, "cluster.i.membership_excluded")));
    let m = spread(c, 10).await;
    assert_eq!(m.get("a"), Some(&10), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_grpc_and_http2_checks() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    // A TCP service that answers PONG to PING.
    let tcp = tokio::net::TcpListener::bind(any()).await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = tcp.accept().await else { return };
            tokio::spawn(async move {
                let mut b = [0u8; 16];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(if &b[..n] == b"PING" { b"xxPONGxx" } else { b"NOPE" }).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dead = std::net::TcpListener::bind(any()).unwrap().local_addr().unwrap();
    let h2 = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#;
    let check = |kind: &str| {
        format!("    health_checks:\n    - {{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, {kind}}}")
    };
    let yaml = [
        cluster("tcp", &[tcp_addr, dead], &check("tcp_health_check: {send: {text: '50494E47'}, receive: [{text: '504F4E47'}]}")),
        cluster("grpc", &addrs, &format!("{h2}\n{}", check("grpc_health_check: {service_name: svc}"))),
        cluster("h2", &addrs, &check("http_health_check: {path: /hc, codec_client_type: HTTP2, host: h2.test}")),
    ]
    .join("");
    let store = Store::new();
    let cm = manager(&yaml, &store).await;
    let tcp_c = cm.get("tcp").unwrap();
    assert_eq!(flags(tcp_c, tcp_addr), "healthy");
    assert_eq!(flags(tcp_c, dead), "/failed_active_hc");
    let g = cm.get("grpc").unwrap();
    assert!(addrs.iter().all(|a| flags(g, *a) == "healthy"));
    ups[1].ctl.grpc_serving.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_for(Duration::from_secs(2), || flags(g, addrs[1]) == "/failed_active_hc").await.expect("NOT_SERVING fails");
    let h = cm.get("h2").unwrap();
    ups[0].set_hc(503);
    wait_for(Duration::from_secs(2), || flags(h, addrs[0]) == "/failed_active_hc").await.expect("h2 check fails");
    cm.shutdown();
}

/// The health-check filter and `/healthcheck/fail` through the whole proxy, and a sluice peer
/// that health-checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_filter_and_healthcheck_fail() {
    let up = Upstream::start(any(), "u").await;
    let cfg = serde_json::json!({
        "node": {"cluster": "front"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "s",
                    "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
                    "http_filters": [
                        {"name": "envoy.filters.http.health_check", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                            "pass_through_mode": false,
                            "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
                            "cluster_min_healthy_percentages": {"up": {"value": 100}}}},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [{"name": "up", "connect_timeout": "1s",
                "health_checks": [{"timeout": "1s", "interval": "0.1s", "no_traffic_interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1, "http_health_check": {"path": "/hc"}}],
                "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up.addr.port()}}}}]}]}}]
        }
    });
    let server = common::start_proxy(&cfg, "front.yaml").await;
    let base = format!("http://{}", server.listeners[0].address);
    let admin = format!("http://{}", server.admin.unwrap());
    let r = sluice_testkit::client::get(&format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-envoy-upstream-healthchecked-cluster"), Some("front"));
    assert_eq!(up.requests(), 0, "answered by the filter, not the upstream");
    // The upstream cluster below 100 % healthy: 503.
    up.set_hc(503);
    let c = server.clusters.get("up").unwrap().clone();
    wait_for(Duration::from_secs(2), || flags(&c, up.addr) == "/failed_active_hc").await.expect("upstream failed");
    assert_eq!(sluice_testkit::client::get(&format!("{base}/healthz")).await.unwrap().status, 503);
    up.set_hc(200);
    wait_for(Duration::from_secs(2), || flags(&c, up.addr) == "healthy").await.expect("upstream back");

    // A sluice peer health-checks this proxy's /healthz.
    let peer_store = Store::new();
    let peer_yaml = cluster(
        "front",
        &[server.listeners[0].address],
        "    health_checks:\n    - {timeout: 1s, interval: 30s, no_traffic_interval: 30s, unhealthy_threshold: 3, healthy_threshold: 1, http_health_check: {path: /healthz}}",
    );
    let peer = manager(&peer_yaml, &peer_store).await;
    let pc = peer.get("front").unwrap();
    assert_eq!(flags(pc, server.listeners[0].address), "healthy");

    let r = sluice_testkit::client::request("POST", &format!("{admin}/healthcheck/fail"), &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    let r = sluice_testkit::client::get(&format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status, 503);
    // Other answers tell peers to stop sending at once.
    let r = sluice_testkit::client::get(&format!("{base}/other")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("x-envoy-immediate-health-check-fail")), (200, Some("true")));
    // The peer, on its next request, excludes the proxy at once (its checks are 30 s apart).
    let _ = spread(pc, 1).await;
    wait_for(Duration::from_secs(1), || pc.hosts().hosts[0].health_flag(health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL))
        .await
        .expect("peer excluded the failing proxy");
    let r = sluice_testkit::client::request("POST", &format!("{admin}/healthcheck/ok"), &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    let r = sluice_testkit::client::get(&format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sluice_testkit::client::get(&format!("{base}/other")).await.unwrap().header("x-envoy-immediate-health-check-fail"), None);
    peer.shutdown();
    server.shutdown();
}

/// STRICT_DNS with active health checks: a host that leaves DNS stays (as
/// `/pending_dynamic_removal`) while it passes its checks, and leaves when it fails one; with
/// `ignore_health_on_host_removal` it leaves at once. A host that stays keeps its health state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_removed_from_dns_stay_while_healthy() {
    use std::net::{IpAddr, Ipv4Addr};
    let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    let a = Upstream::start(SocketAddr::new(ip(21), 0), "a").await;
    let port = a.addr.port();
    let b = Upstream::start(SocketAddr::new(ip(22), port), "b").await;
    let dns = sluice_testkit::dns::DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    dns.set("svc.test", vec![ip(21), ip(22)]);
    let dns_cluster = |name: &str, extra: &str| {
        format!(
            "  - name: {name}\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 0.2s\n    connect_timeout: 1s\n{HC}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: svc.test, port_value: {port}}}}}}}\n"
        )
    };
    let yaml = format!(
        "typed_dns_resolver_config:\n  name: envoy.network.dns_resolver.cares\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig\n    resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}]\nstatic_resources:\n  clusters:\n{}{}",
        dns.local_addr().port(),
        dns_cluster("keep", "    common_lb_config: {update_merge_window: 0s}\n"),
        dns_cluster("drop", "    ignore_health_on_host_removal: true\n"),
    );
    let store = Store::new();
    let b_cfg = sluice_config::parse(&yaml, sluice_config::Format::Yaml).unwrap_or_else(|e| panic!("{e}")).bootstrap;
    let cm = ClusterManager::new(&b_cfg, &store).unwrap();
    tokio::time::timeout(Duration::from_secs(10), cm.initialized()).await.expect("warm");
    let keep = cm.get("keep").unwrap();
    let drop_ = cm.get("drop").unwrap();
    assert_eq!(flags(keep, b.addr), "healthy");
    let b_host = keep.hosts().hosts.iter().find(|h| h.address == b.addr).unwrap().clone();
    dns.set("svc.test", vec![ip(21)]);
    wait_for(Duration::from_secs(3), || flags(keep, b.addr) == "/pending_dynamic_removal").await.expect("b pending removal");
    wait_for(Duration::from_secs(3), || flags(drop_, b.addr) == "absent")
        .await
        .expect("b dropped at once with ignore_health_on_host_removal");
    // Still in the load balancer while it passes its checks.
    let m = spread(keep, 10).await;
    assert_eq!((m.get("a"), m.get("b")), (Some(&5), Some(&5)), "{m:?}");
    // Back in DNS: the same host (same state), no longer pending.
    dns.set("svc.test", vec![ip(21), ip(22)]);
    wait_for(Duration::from_secs(3), || flags(keep, b.addr) == "healthy").await.expect("b back in DNS");
    assert!(keep.hosts().hosts.iter().any(|h| Arc::ptr_eq(h, &b_host)));
    // Out of DNS again, then failing: it leaves.
    dns.set("svc.test", vec![ip(21)]);
    wait_for(Duration::from_secs(3), || flags(keep, b.addr) == "/pending_dynamic_removal").await.expect("pending again");
    b.set_hc(503);
    wait_for(Duration::from_secs(3), || flags(keep, b.addr) == "absent").await.expect("b removed after failing");
    assert_eq!(stat(&store, "cluster.keep.membership_total"), 1);
    let m = spread(keep, 4).await;
    assert_eq!(m.get("a"), Some(&4), "{m:?}");
    cm.shutdown();
    dns.shutdown();
}

/// `close_connections_on_host_health_failure`: the pooled connections of a host that becomes
/// unhealthy (here: ejected) close; without it they stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_on_health_failure_when_configured() {
    let ups = [Upstream::start(any(), "a").await, Upstream::start(any(), "b").await];
    let others = [Upstream::start(any(), "c").await, Upstream::start(any(), "d").await];
    let store = Store::new();
    let od = "    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 30s, max_ejection_percent: 100}";
    let yaml = cluster("close", &[ups[0].addr, ups[1].addr], &format!("{od}\n    close_connections_on_host_health_failure: true"))
        + &cluster("keep", &[others[0].addr, others[1].addr], od);
    let cm = manager(&yaml, &store).await;
    let (close, keep) = (cm.get("close").unwrap(), cm.get("keep").unwrap());
    let open = |u: &Upstream| u.ctl.open.load(std::sync::atomic::Ordering::Relaxed);
    ups[1].set_status(500);
    others[1].set_status(500);
    spread(close, 4).await;
    spread(keep, 4).await;
    wait_for(Duration::from_secs(2), || flags(close, ups[1].addr) == "/failed_outlier_check" && flags(keep, others[1].addr) == "/failed_outlier_check")
        .await
        .expect("both ejected");
    wait_for(Duration::from_secs(1), || open(&ups[1]) == 0).await.expect("pooled connection closed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(open(&others[1]), 1, "kept without the option");
    assert_eq!(open(&ups[0]), 1, "a healthy host keeps its connection");
    cm.shutdown();
}

/// Until the cluster has opened a connection for traffic, checks run every
/// `no_traffic_interval`; then every `interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_interval_until_the_first_connection() {
    let up = Upstream::start(any(), "a").await;
    let store = Store::new();
    let hc = "    health_checks:\n    - {timeout: 1s, interval: 0.05s, no_traffic_interval: 2s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /hc}}";
    let cm = manager(&cluster("nt", &[up.addr], hc), &store).await;
    let c = cm.get("nt").unwrap();
    let first = up.hc_requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.hc_requests(), first, "no check within no_traffic_interval");
    spread(c, 1).await;
    // The session still sleeps out its current no-traffic wait (up to 2 s), then checks every 50 ms.
    wait_for(Duration::from_secs(3), || up.hc_requests() > first).await.expect("a check after the wait");
    let n = up.hc_requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(up.hc_requests() - n >= 5, "{} checks in 500 ms", up.hc_requests() - n);
    cm.shutdown();
}
