//! The guide's own sidecar config (`examples/guide/service-envoy-1.yaml`) in-process, its
//! STRICT_DNS cluster `service1` resolved by the test DNS server: traffic is spread exactly round
//! robin over the replicas, and a replica added to DNS gets traffic within one refresh, without
//! restarting the proxy.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::client::Conn;
use sluice_testkit::dns::DnsServer;
use sluice_testkit::{EchoOptions, EchoUpstream};

const SIDECAR: &str = include_str!("../../../examples/guide/service-envoy-1.yaml");

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The guide's sidecar, patched for the test: loopback port-0 listener and admin, `service1`'s
/// port set to the replicas' port, a 0.3 s DNS refresh, and the bootstrap resolver pointed at `dns`.
fn patched_sidecar(dns: SocketAddr, service_port: u16) -> Value {
    let mut cfg = sluice_config::parse_tree(SIDECAR, sluice_config::Format::Yaml).expect("guide sidecar parses");
    let loopback0 = json!({"address": "127.0.0.1", "port_value": 0});
    let listeners = cfg["static_resources"]["listeners"].as_array_mut().unwrap();
    assert_eq!(listeners.len(), 1, "the guide sidecar has one listener");
    listeners[0]["address"]["socket_address"] = loopback0.clone();
    cfg["admin"]["address"]["socket_address"] = loopback0;
    let clusters = cfg["static_resources"]["clusters"].as_array_mut().unwrap();
    let service1 = clusters.iter_mut().find(|c| c["name"] == "service1").expect("cluster service1");
    assert_eq!(service1["type"], "STRICT_DNS");
    let sa = &mut service1["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(sa["address"], "service1", "the endpoint is the DNS name");
    sa["port_value"] = json!(service_port);
    service1["dns_refresh_rate"] = json!("0.3s");
    cfg["typed_dns_resolver_config"] = json!({
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": dns.ip().to_string(), "port_value": dns.port()}}],
            "query_timeout_seconds": 1,
            "query_tries": 1
        }
    });
    cfg
}

async fn start(cfg: &Value) -> RunningServer {
    common::start_proxy(cfg, "service-envoy-1.yaml").await
}

async fn counts(conn: &mut Conn, url: &str, n: usize) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let r = conn.get(url).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        *out.entry(r.header("x-upstream-id").expect("x-upstream-id").to_string()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_sidecar_round_robins_dns_replicas_and_follows_scale_up() {
    let dns = DnsServer::start(SocketAddr::new(ip(20), 0)).unwrap();
    let ups = EchoUpstream::start_same_port(&[ip(21), ip(22), ip(23), ip(24)], EchoOptions::default()).await.unwrap();
    let port = ups[0].port();
    dns.set("service1", vec![ip(21), ip(22), ip(23)]);

    let server = start(&patched_sidecar(dns.local_addr(), port)).await;
    assert!(server.admin.is_some(), "admin from the guide config");
    let addr = server.listeners[0].address;
    assert_eq!(server.listeners[0].name, "ingress");
    let url = format!("http://{addr}/service/1");
    let mut conn = Conn::connect(addr).await.unwrap();

    // 200 sequential requests over 3 replicas: exactly round robin.
    let c = counts(&mut conn, &url, 200).await;
    let mut got: Vec<u32> = c.values().copied().collect();
    got.sort_unstable();
    assert_eq!(got, vec![66, 67, 67], "{c:?}");
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), ["127.0.0.21", "127.0.0.22", "127.0.0.23"]);
    assert_eq!(ups[3].requests(), 0);
    // The upstream got the guide's routing unchanged (prefix match, no rewrite).
    let rec = ups[0].recorded();
    assert_eq!(rec.last().unwrap().path, "/service/1");
    assert_eq!(server.stats.gauge("cluster.service1.membership_total").value(), 3);

    // Scale up: a 4th address in DNS. The guide's sidecar health-checks its replicas, so the new
    // one joins the rotation once its first check passed and the cluster's update merge window
    // (1 s) delivered that, as in Envoy: within one refresh plus that (bounded 5 s), a proxied
    // request reaches it. (Its health checks reach it earlier; only answers count here.)
    dns.set("service1", vec![ip(21), ip(22), ip(23), ip(24)]);
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(5);
    let mut sent = 0;
    loop {
        let r = conn.get(&url).await.unwrap();
        assert_eq!(r.status, 200, "no request fails while the cluster grows");
        sent += 1;
        if r.header("x-upstream-id") == Some("127.0.0.24") {
            break;
        }
        assert!(Instant::now() < deadline, "the 4th replica got no traffic within 5 s ({sent} requests)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(server.stats.gauge("cluster.service1.membership_total").value(), 4);

    // And from then on, exactly round robin over four.
    let c = counts(&mut conn, &url, 40).await;
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![10, 10, 10, 10], "{c:?}");
    assert!(dns.query_count() >= 2, "re-resolved");
    assert_eq!(server.stats.counter("http.service_envoy_1.downstream_rq_5xx").value(), 0);
}
