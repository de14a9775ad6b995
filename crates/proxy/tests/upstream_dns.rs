//! STRICT_DNS / LOGICAL_DNS clusters against the test DNS server and echo upstreams on 127.0.0.x.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use sluice_proxy::body::Body;
use sluice_proxy::stats::Store;
use sluice_proxy::upstream::{Cluster, ClusterManager, LbContext, UpstreamFailure};
use sluice_testkit::dns::DnsServer;
use sluice_testkit::{wait_until, EchoOptions, EchoUpstream};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn bootstrap(dns: &DnsServer, cluster_yaml: &str) -> sluice_config::Bootstrap {
    let yaml = format!(
        r#"
typed_dns_resolver_config:
  name: envoy.network.dns_resolver.cares
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
    resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}]
    query_timeout_seconds: 1
    query_tries: 1
static_resources:
  clusters:
{cluster_yaml}
"#,
        port = dns.local_addr().port()
    );
    sluice_config::parse(&yaml, sluice_config::Format::Yaml).expect("valid config").bootstrap
}

fn dns_cluster(name: &str, ty: &str, host: &str, port: u16, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    type: {ty}
    connect_timeout: 1s
    dns_refresh_rate: 0.2s
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}
"#
    )
}

async fn get(c: &Cluster, path: &str) -> Result<(u16, String), UpstreamFailure> {
    let req = http::Request::builder().uri(path).header("host", "svc.test").body(Body::empty()).unwrap();
    let resp = c.send(req, &LbContext::default()).await?;
    let status = resp.status().as_u16();
    let id = resp.headers().get("x-upstream-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    resp.into_body().collect().await.expect("body");
    Ok((status, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_grows_shrinks_survives_silence_and_nxdomain() {
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let ups = EchoUpstream::start_same_port(&[ip(11), ip(12), ip(13)], EchoOptions::default()).await.unwrap();
    let port = ups[0].port();
    dns.set("svc.test", vec![ip(11)]);
    let store = Store::new();
    let cm = ClusterManager::new(&bootstrap(&dns, &dns_cluster("svc", "STRICT_DNS", "svc.test", port, "    dns_lookup_family: V4_ONLY")), &store).unwrap();
    tokio::time::timeout(Duration::from_secs(5), cm.initialized()).await.expect("warmed up");
    assert!(cm.is_initialized());
    let c = cm.get("svc").unwrap().clone();
    assert_eq!(c.hosts().hosts.len(), 1);
    assert_eq!(c.hosts().hosts[0].hostname, "svc.test");
    for _ in 0..5 {
        assert_eq!(get(&c, "/").await.unwrap(), (200, "127.0.0.11".into()));
    }
    let first = c.hosts().hosts[0].clone();

    // Grow to 3: within one refresh traffic spreads over all three, exactly round robin.
    dns.set("svc.test", vec![ip(11), ip(12), ip(13)]);
    assert!(wait_until(Duration::from_secs(5), || c.hosts().hosts.len() == 3).await, "grew to 3");
    assert!(Arc::ptr_eq(&first, &c.hosts().hosts[0]), "kept host keeps its Arc");
    let before: Vec<u64> = ups.iter().map(|u| u.requests()).collect();
    for _ in 0..30 {
        assert_eq!(get(&c, "/").await.unwrap().0, 200);
    }
    let delta: Vec<u64> = ups.iter().zip(&before).map(|(u, b)| u.requests() - b).collect();
    assert_eq!(delta, vec![10, 10, 10]);
    assert_eq!(store.gauge("cluster.svc.membership_total").value(), 3);
    assert_eq!(store.gauge("cluster.svc.membership_healthy").value(), 3);

    // Shrink to 2 under continuous traffic: no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let oks = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, stop, failures, oks) = (c.clone(), stop.clone(), failures.clone(), oks.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match get(&c, "/slow/5").await {
                    Ok((200, _)) => oks.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    dns.set("svc.test", vec![ip(11), ip(12)]);
    assert!(wait_until(Duration::from_secs(5), || c.hosts().hosts.len() == 2).await, "shrank to 2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "{} ok", oks.load(Ordering::Relaxed));
    // The removed host drained: its connections are closed once idle.
    assert!(wait_until(Duration::from_secs(5), || ups[2].open_connections() == 0).await, "removed host drained");
    let r13 = ups[2].requests();
    for _ in 0..10 {
        assert_eq!(get(&c, "/").await.unwrap().0, 200);
    }
    assert_eq!(ups[2].requests(), r13, "no traffic to the removed host");

    // Resolver goes silent: hosts are kept, update_failure counts.
    let fail = store.counter("cluster.svc.update_failure");
    dns.set_silent(true);
    assert!(wait_until(Duration::from_secs(5), || fail.value() >= 1).await, "failure counted");
    assert_eq!(c.hosts().hosts.len(), 2);
    assert_eq!(get(&c, "/").await.unwrap().0, 200);
    dns.set_silent(false);

    // SERVFAIL is a failure too.
    let f0 = fail.value();
    dns.set_servfail(true);
    assert!(wait_until(Duration::from_secs(5), || fail.value() > f0).await, "servfail counted");
    assert_eq!(c.hosts().hosts.len(), 2);
    dns.set_servfail(false);

    // NXDOMAIN: authoritative empty answer empties the cluster.
    let empty = store.counter("cluster.svc.update_empty");
    dns.remove("svc.test");
    assert!(wait_until(Duration::from_secs(5), || c.hosts().hosts.is_empty()).await, "emptied");
    assert!(empty.value() >= 1);
    assert_eq!(get(&c, "/").await, Err(UpstreamFailure::NoHealthyUpstream));
    assert_eq!(store.counter("cluster.svc.upstream_cx_none_healthy").value(), 1);
    assert!(store.counter("cluster.svc.update_attempt").value() >= store.counter("cluster.svc.update_success").value());
    assert!(store.counter("cluster.svc.update_success").value() >= 3);
    assert_eq!(store.gauge("cluster_manager.active_clusters").value(), 1);
    assert_eq!(store.counter("cluster_manager.cluster_added").value(), 1);
    cm.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respect_dns_ttl_overrides_refresh_rate() {
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    dns.set_ttl(1);
    dns.set("ttl.test", vec![ip(21)]);
    let store = Store::new();
    let mut y = dns_cluster("ttl", "STRICT_DNS", "ttl.test", 80, "    respect_dns_ttl: true\n    dns_lookup_family: V4_ONLY");
    y = y.replace("dns_refresh_rate: 0.2s", "dns_refresh_rate: 30s");
    let cm = ClusterManager::new(&bootstrap(&dns, &y), &store).unwrap();
    tokio::time::timeout(Duration::from_secs(5), cm.initialized()).await.unwrap();
    let c = cm.get("ttl").unwrap().clone();
    assert_eq!(c.hosts().hosts.len(), 1);
    dns.set("ttl.test", vec![ip(21), ip(22)]);
    // TTL 1 s → re-resolved long before the 30 s refresh rate.
    assert!(wait_until(Duration::from_secs(4), || c.hosts().hosts.len() == 2).await);

    // Without respect_dns_ttl the 30 s refresh rate applies.
    let dns2 = DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    dns2.set("ttl.test", vec![ip(21)]);
    let y = dns_cluster("slow", "STRICT_DNS", "ttl.test", 80, "    dns_lookup_family: V4_ONLY").replace("dns_refresh_rate: 0.2s", "dns_refresh_rate: 30s");
    let cm2 = ClusterManager::new(&bootstrap(&dns2, &y), &Store::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), cm2.initialized()).await.unwrap();
    dns2.set("ttl.test", vec![ip(21), ip(22)]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cm2.get("slow").unwrap().hosts().hosts.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dns_uses_first_address_and_auto_falls_back_to_a() {
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    dns.set("logical.test", vec![ip(31), ip(32), ip(33)]);
    let store = Store::new();
    // AUTO: AAAA first (empty for this name), then A.
    let y = dns_cluster("logical", "LOGICAL_DNS", "logical.test", 80, "");
    let cm = ClusterManager::new(&bootstrap(&dns, &y), &store).unwrap();
    tokio::time::timeout(Duration::from_secs(5), cm.initialized()).await.unwrap();
    let hosts = cm.get("logical").unwrap().hosts();
    assert_eq!(hosts.hosts.len(), 1);
    assert_eq!(hosts.hosts[0].address, "127.0.0.31:80".parse().unwrap());
    assert_eq!(hosts.hosts[0].hostname, "logical.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_name_warms_with_zero_hosts() {
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let store = Store::new();
    let y = dns_cluster("nx", "STRICT_DNS", "nothing.test", 80, "    dns_lookup_family: V4_ONLY");
    let cm = ClusterManager::new(&bootstrap(&dns, &y), &store).unwrap();
    tokio::time::timeout(Duration::from_secs(5), cm.initialized()).await.unwrap();
    let c = cm.get("nx").unwrap();
    assert!(c.hosts().hosts.is_empty());
    assert_eq!(get(c, "/").await, Err(UpstreamFailure::NoHealthyUpstream));
    assert!(store.counter("cluster.nx.update_success").value() >= 1);
    assert!(store.counter("cluster.nx.update_empty").value() >= 1);
}
