//! Priority levels, locality weights and the health-check event log, differential: real Envoy 1.40 and `sluice
//! proxy` run the same config (a cluster with two hosts at priority 0 and two at priority 1,
//! active health checks, `event_log_path`) in front of the same controllable upstreams, and go
//! through the same steps: all healthy, one P0 host failing its checks, both P0 hosts failing.
//! After each step both proxies settle (bounded wait on `/clusters`), then each gets the same
//! number of requests and the test compares the share that reached priority 1 (Envoy picks the
//! level at random, so each share must lie in the band around Envoy's priority load that both
//! proxies must hit), the hosts' `priority` in `/clusters`, and at the end the event logs (lines
//! without their timestamps, sorted: which events, for which host, with which fields).
//!
//! Environment: `SLUICE_ENVOY` (real Envoy 1.40; without it the test says SKIPPED) and
//! `SLUICE_BIN` (the `sluice` binary). Both proxies are killed by PID when the test ends.

mod diff_proxy;
mod health_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diff_proxy::{envoy, sluice, Proxy};
use health_common::{endpoints, Upstream};

fn config(p0: &[SocketAddr], p1: &[SocketAddr], events: &Path) -> String {
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: @ADMIN@}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: @LISTEN@}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: d
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/loc/"}}
                route: {{cluster: loc}}
              - match: {{prefix: "/"}}
                route: {{cluster: prio}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: prio
    connect_timeout: 1s
    common_lb_config: {{update_merge_window: 0s}}
    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /hc}}
      event_log_path: {events}
    load_assignment:
      cluster_name: prio
      endpoints:
      - locality: {{zone: z0}}
        lb_endpoints:
{p0}      - priority: 1
        locality: {{zone: z1}}
        lb_endpoints:
{p1}  - name: loc
    connect_timeout: 1s
    common_lb_config: {{update_merge_window: 0s, locality_weighted_lb_config: {{}}}}
    health_checks:
    - timeout: 1s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /hc}}
    load_assignment:
      cluster_name: loc
      endpoints:
      - locality: {{zone: z1}}
        load_balancing_weight: 1
        lb_endpoints:
{p0}      - locality: {{zone: z2}}
        load_balancing_weight: 3
        lb_endpoints:
{p1}"#,
        p0 = endpoints(p0),
        p1 = endpoints(p1),
        events = events.display()
    )
}

impl Proxy {
    /// `address → (health_flags, priority)` of the `prio` cluster's hosts in `/clusters`.
    async fn hosts(&self) -> Vec<(String, String, String)> {
        self.cluster_hosts("prio").await
    }

    async fn cluster_hosts(&self, cluster: &str) -> Vec<(String, String, String)> {
        let text = self.admin_get("/clusters").await.map(|r| r.1).unwrap_or_default();
        let mut out: Vec<(String, String, String)> = Vec::new();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix(&format!("{cluster}::")) else { continue };
            let Some((addr, kv)) = rest.split_once("::") else { continue };
            if !addr.contains(':') {
                continue;
            }
            let Some((k, v)) = kv.split_once("::") else { continue };
            let i = match out.iter().position(|(a, _, _)| a == addr) {
                Some(i) => i,
                None => {
                    out.push((addr.to_string(), String::new(), String::new()));
                    out.len() - 1
                }
            };
            match k {
                "health_flags" => out[i].1 = v.to_string(),
                "priority" => out[i].2 = v.to_string(),
                _ => {}
            }
        }
        out.sort();
        out
    }

    async fn get(&self, path: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.listen);
        sluice_testkit::client::get(&url).await.map(|r| r.status.as_u16()).unwrap_or(0)
    }
}

/// Wait (bounded) until `/clusters` shows the failed hosts as `/failed_active_hc` and the
/// others healthy.
async fn settle(p: &Proxy, failed: &[SocketAddr]) {
    settle_cluster(p, "prio", failed).await
}

async fn settle_cluster(p: &Proxy, cluster: &str, failed: &[SocketAddr]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let hosts = p.cluster_hosts(cluster).await;
        let ok = hosts.len() == 4
            && hosts.iter().all(|(a, flags, _)| {
                let should_fail = failed.iter().any(|f| f.to_string() == *a);
                flags.contains("failed_active_hc") == should_fail
            });
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "never settled: {hosts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `n` requests through `p`; the percent that reached the priority-1 hosts.
async fn p1_share(p: &Proxy, ups: &[Upstream], n: u64) -> f64 {
    share(p, ups, n, "/r").await
}

/// Send `n` requests under `prefix` through `p`; the percent that reached upstreams 2 and 3.
async fn share(p: &Proxy, ups: &[Upstream], n: u64, prefix: &str) -> f64 {
    let before: Vec<u64> = ups.iter().map(|u| u.requests()).collect();
    for i in 0..n {
        assert_eq!(p.get(&format!("{prefix}/{i}")).await, 200);
    }
    let d: Vec<u64> = ups.iter().zip(&before).map(|(u, b)| u.requests() - b).collect();
    assert_eq!(d.iter().sum::<u64>(), n);
    100.0 * (d[2] + d[3]) as f64 / n as f64
}

/// The event log without timestamps, sorted.
fn events(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v.as_object_mut().unwrap().remove("timestamp");
            v.to_string()
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_failover_and_event_log_match_envoy() {
    let Some(envoy_bin) = envoy() else { return };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut ups = Vec::new();
    for i in 0..4 {
        ups.push(Upstream::start(any, &format!("u{i}")).await);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("prio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ev_e, ev_s) = (dir.join("envoy-events.log"), dir.join("sluice-events.log"));
    for f in [&ev_e, &ev_s] {
        let _ = std::fs::remove_file(f);
    }
    let envoy = Proxy::start("envoy", &envoy_bin, true, "prio", &config(&addrs[..2], &addrs[2..], &ev_e)).await;
    let sluice = Proxy::start("sluice", &sluice(), false, "prio", &config(&addrs[..2], &addrs[2..], &ev_s)).await;
    let n = 400;
    // (failed hosts, band of the P1 share: Envoy's priority load ± 4 standard deviations).
    let steps: [(&[usize], (f64, f64)); 3] = [(&[], (0.0, 0.0)), (&[0], (20.0, 40.0)), (&[0, 1], (100.0, 100.0))];
    let mut report = Vec::new();
    for (failed, (lo, hi)) in steps {
        for (i, u) in ups.iter().enumerate() {
            u.set_hc(if failed.contains(&i) { 503 } else { 200 });
        }
        let failed_addrs: Vec<SocketAddr> = failed.iter().map(|i| addrs[*i]).collect();
        settle(&envoy, &failed_addrs).await;
        settle(&sluice, &failed_addrs).await;
        let (e, s) = (p1_share(&envoy, &ups, n).await, p1_share(&sluice, &ups, n).await);
        println!("P0 hosts failing: {failed:?}: share of priority 1: envoy {e:.1} %, sluice {s:.1} % (band {lo}..={hi})");
        report.push((failed.len(), e, s));
        assert!((lo..=hi).contains(&e), "envoy's share {e} outside {lo}..={hi}: the band is wrong");
        assert!((lo..=hi).contains(&s), "sluice's share {s} outside {lo}..={hi} (envoy {e})");
        let (he, hs) = (envoy.hosts().await, sluice.hosts().await);
        assert_eq!(he, hs, "/clusters host flags and priorities");
    }
    // Locality weights (cluster `loc`: z1 = upstreams 0 and 1 weighing 1, z2 = 2 and 3 weighing
    // 3): all healthy, z2 gets 75 %; then upstream 3 fails its checks and z2's availability
    // drops to min(1, 1.4 × 1/2) = 0.7: 2.1 / 3.1 = 67.7 %. Envoy picks localities in a fixed
    // weighted order, sluice at random with the same weights: the bands allow for that.
    for (failed, (lo, hi)) in [(&[][..], (67.0, 83.0)), (&[3][..], (59.0, 76.0))] {
        for (i, u) in ups.iter().enumerate() {
            u.set_hc(if failed.contains(&i) { 503 } else { 200 });
        }
        let failed_addrs: Vec<SocketAddr> = failed.iter().map(|i| addrs[*i]).collect();
        settle_cluster(&envoy, "loc", &failed_addrs).await;
        settle_cluster(&sluice, "loc", &failed_addrs).await;
        let (e, s) = (share(&envoy, &ups, n, "/loc").await, share(&sluice, &ups, n, "/loc").await);
        println!("locality weights, failing {failed:?}: share of z2: envoy {e:.1} %, sluice {s:.1} % (band {lo}..={hi})");
        assert!((lo..=hi).contains(&e), "envoy's share {e} outside {lo}..={hi}: the band is wrong");
        assert!((lo..=hi).contains(&s), "sluice's share {s} outside {lo}..={hi} (envoy {e})");
        report.push((failed.len(), e, s));
    }
    // Event logs: Envoy flushes its file every 10 s (its default): wait (bounded) until it has
    // the six events every run produces (four first passes, two ejections), then stop both.
    let deadline = Instant::now() + Duration::from_secs(25);
    while events(&ev_e).len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(envoy);
    drop(sluice);
    let (e, s) = (events(&ev_e), events(&ev_s));
    println!("event log: envoy {} lines, sluice {} lines", e.len(), s.len());
    for l in &e {
        println!("  envoy  {l}");
    }
    for l in &s {
        println!("  sluice {l}");
    }
    assert!(!e.is_empty(), "envoy wrote no event");
    // Envoy writes its events on a 10 s flush and is stopped once the six events every run
    // produces are in its file: a later event (a locality host the last phase failed) may still be
    // in its buffer, where sluice has written it. Envoy's lines are compared, in order, with
    // sluice's; sluice may have written later ones beyond them.
    let mut rest = s.iter();
    for line in &e {
        assert!(rest.any(|l| l == line), "event logs differ: Envoy's line is not in sluice's log, in order: {line}\nsluice: {s:#?}");
    }
    assert!(s.len() <= e.len() + 3, "sluice wrote more events than Envoy's unflushed ones can explain: {s:#?}");
    println!("identical: {} / {}", report.len() + 1, report.len() + 1);
}
