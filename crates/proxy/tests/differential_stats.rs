//! Differential test of the stats: real Envoy 1.40 and `sluice proxy` run the same config in
//! front of the same upstream, get the same requests (HTTP/1 with keep-alive, separate
//! connections, HTTP/2 prior knowledge, a routed request, a direct response, no route, no healthy
//! upstream, a request body, a request the codec refuses, `connection: close`), then both `/stats` outputs are compared family by family:
//!
//! - every name Envoy shows must exist in sluice, unless it is listed in [`ABSENT`] with the
//!   reason (a feature sluice does not have yet);
//! - sluice shows no name that Envoy does not;
//! - counters and gauges have the same value, except byte counts and durations (they depend on
//!   header bytes such as `server` and on timing), which are compared as zero / non-zero, and
//!   the admin listener's own counters (how often the readiness probe polled differs), compared
//!   by name;
//! - `/stats/prometheus` declares the same `# TYPE` for every family both show.
//!
//! It prints `identical / total` and every difference. Environment as `diff_proxy`.

mod diff_proxy;
mod health_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use diff_proxy::{envoy, sluice, Proxy};
use health_common::{endpoints, Upstream};

/// Stat families Envoy shows that sluice does not have, with the reason. A name matches when it
/// contains the pattern.
const ABSENT: &[(&str, &str)] = &[
    ("http3", "sluice has no HTTP/3"),
    (".tracing.", "tracing is not implemented (issue: Filters, L4 and tracing)"),
    ("downstream_flow_control_", "sluice applies back-pressure through its async I/O; there are no watermark pause/resume events to count"),
    ("overload", "no overload manager"),
    ("http.async-client.", "sluice's own clients (ext_authz, health checks) are not Envoy's async client"),
    ("passthrough_internal_redirect", "internal redirects are not supported (refused at load)"),
    ("downstream_cx_http1_soft_drain", "no soft drain of HTTP/1 connections"),
    ("extension_config_missing", "no extension config discovery (ECDS)"),
    ("connections_accepted_per_socket_event", "sluice accepts one connection per wake-up; the histogram is not kept"),
    ("downstream_pre_cx_", "listener filters are not supported yet"),
    ("downstream_listener_filter_", "listener filters are not supported yet"),
    ("downstream_cx_transport_socket_connect_timeout", "listener transport_socket_connect_timeout is not supported (refused at load)"),
    ("downstream_rq_too_many_premature_resets", "no premature-reset protection counter"),
    ("downstream_rq_rejected_via_ip_detection", "original IP detection extensions are not supported (refused at load)"),
    ("downstream_rq_redirected_with_normalized_path", "path normalisation redirects are not supported"),
    ("_bytes_buffered", "sluice's codecs hold no watermark buffers whose size Envoy's buffered gauges report"),
    ("downstream_cx_destroy_local_active_rq", "sluice never closes a connection from its side while a request is in flight"),
    ("downstream_rq_failed_path_normalization", "Envoy's path normalisation failure (rejecting %2F and similar) is not implemented"),
    ("downstream_rq_rx_reset", "hyper's HTTP/2 server does not report stream resets"),
    ("downstream_rq_tx_reset", "hyper's HTTP/2 server does not report stream resets"),
    ("rq_reset_after_downstream_response_started", "hyper's HTTP/2 server does not report stream resets"),
    ("rs_too_large", "no filter buffers responses yet"),
    ("downstream_cx_overflow", "listener connection limits are not supported"),
    ("downstream_global_cx_overflow", "the overload manager's global connection limit is not supported"),
    (".http1.", "sluice's upstream HTTP/1 client is hyper's; Envoy's codec counters are not kept"),
];

fn absent(name: &str) -> Option<&'static str> {
    ABSENT.iter().find(|(p, _)| name.contains(p)).map(|(_, why)| *why)
}

/// Families compared.
const FAMILIES: &[&str] = &["http.ingress.", "listener.LISTENER.", "http.admin.", "listener.admin.", "cluster.backend.", "cluster.empty."];

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: @ADMIN@}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: @LISTEN@}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["diff.test"]
              routes:
              - match: {{prefix: /direct}}
                direct_response: {{status: 200, body: {{inline_string: "direct"}}}}
              - match: {{prefix: /none}}
                route: {{cluster: empty}}
              - match: {{prefix: /}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http_protocol_options: {{}}}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
{}  - name: empty
    type: STATIC
    load_assignment: {{cluster_name: empty}}
"#,
        endpoints(&[upstream])
    )
}

/// The same requests to one proxy; waits until its connections are closed.
async fn drive(p: &Proxy) {
    let addr: SocketAddr = ([127, 0, 0, 1], p.listen).into();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", p.listen);
    let host = [("host", "diff.test")];
    // One keep-alive HTTP/1 connection with four requests.
    let mut c = sluice_testkit::client::Conn::connect(addr).await.unwrap();
    for path in ["/a", "/b", "/direct", "/none"] {
        c.request("GET", &url(path), &host, "").await.unwrap();
    }
    c.request("POST", &url("/post"), &host, "twelve bytes").await.unwrap();
    drop(c);
    // Separate connections: no route, and a routed request.
    sluice_testkit::client::request("GET", &url("/x"), &[("host", "elsewhere.test")], "").await.unwrap();
    sluice_testkit::client::request("GET", &url("/c"), &host, "").await.unwrap();
    // HTTP/2 with prior knowledge: two streams on one connection.
    let mut h2 = sluice_testkit::client::Conn::connect_h2(addr).await.unwrap();
    // The connection is already open: the URL only gives `:authority`.
    h2.request("GET", "http://diff.test/h2", &[], "").await.unwrap();
    h2.request("GET", "http://diff.test/direct", &[], "").await.unwrap();
    drop(h2);
    // Raw HTTP/1: a request the codec refuses (protocol error, closed by the proxy), and one
    // that asks for `connection: close` (closed by the proxy after its answer).
    for raw in [
        &b"GET /a HTTP/1.1\r\nhost: diff.test\r\nbad header line\r\n\r\n"[..],
        &b"GET /a HTTP/1.1\r\nhost: diff.test\r\nconnection: close\r\n\r\n"[..],
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(raw).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    }
    // Both proxies see the closes asynchronously.
    for _ in 0..100 {
        let s = p.stats("http.ingress.downstream_cx_active").await;
        if s.values().all(|v| v == "0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/stats` names and values of the compared families, listener addresses replaced by `LISTENER`.
async fn snapshot(p: &Proxy) -> BTreeMap<String, String> {
    let listener = format!("127.0.0.1_{}", p.listen);
    p.stats("")
        .await
        .into_iter()
        .map(|(k, v)| (k.replace(&listener, "LISTENER"), v))
        .filter(|(k, _)| FAMILIES.iter().any(|f| k.starts_with(f)))
        .collect()
}

/// `# TYPE` lines of `/stats/prometheus`: family → type.
async fn prometheus_types(p: &Proxy) -> BTreeMap<String, String> {
    let text = p.admin_get("/stats/prometheus").await.map(|r| r.1).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Values that depend on byte counts of headers or on timing.
fn inexact(name: &str) -> bool {
    name.contains("_bytes") || name.ends_with("_ms") || name.contains("_time") || name.contains("upstream_cx_connect_ms")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_envoy() {
    let Some(envoy_bin) = envoy() else { return };
    let upstream = Upstream::start("127.0.0.1:0".parse().unwrap(), "a").await;
    let cfg = config(upstream.addr);
    let e = Proxy::start("envoy", &envoy_bin, true, "stats", &cfg).await;
    let s = Proxy::start("sluice", &sluice(), false, "stats", &cfg).await;
    drive(&e).await;
    drive(&s).await;
    let (es, ss) = (snapshot(&e).await, snapshot(&s).await);

    let mut problems = Vec::new();
    let (mut identical, mut total) = (0, 0);
    let mut known = BTreeMap::<&str, usize>::new();
    for (name, ev) in &es {
        if let Some(why) = absent(name) {
            if !ss.contains_key(name) {
                *known.entry(why).or_default() += 1;
                continue;
            }
        }
        total += 1;
        match ss.get(name) {
            None => problems.push(format!("missing in sluice: {name} (envoy {ev})")),
            Some(sv) => {
                let admin = name.starts_with("http.admin.") || name.starts_with("listener.admin.");
                let same = if admin {
                    true
                } else if inexact(name) { (ev == "0") == (sv == "0") || ev.contains(' ') } else { ev == sv };
                if same {
                    identical += 1;
                } else {
                    problems.push(format!("{name}: envoy {ev}, sluice {sv}"));
                }
            }
        }
    }
    for name in ss.keys().filter(|n| !es.contains_key(*n)) {
        total += 1;
        problems.push(format!("only in sluice: {name}"));
    }
    let (et, st) = (prometheus_types(&e).await, prometheus_types(&s).await);
    for (fam, t) in st.iter().filter(|(f, _)| f.starts_with("envoy_http_") || f.starts_with("envoy_listener_") || f.starts_with("envoy_cluster_")) {
        if let Some(te) = et.get(fam) {
            total += 1;
            if te == t {
                identical += 1;
            } else {
                problems.push(format!("prometheus TYPE of {fam}: envoy {te}, sluice {t}"));
            }
        }
    }
    println!("stats: {identical} / {total} identical");
    for (why, n) in &known {
        println!("KNOWN absent ({n} names): {why}");
    }
    assert!(problems.is_empty(), "stats: {} difference(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn absent_list_does_not_hide_implemented_families() {
    // Families sluice implements must never be swallowed by an ABSENT pattern.
    for name in [
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_cx_destroy",
        "listener.LISTENER.downstream_cx_total",
        "cluster.backend.upstream_rq_total",
        "http.ingress.downstream_cx_tx_bytes_total",
    ] {
        assert_eq!(absent(name), None, "{name}");
    }
    let set: BTreeSet<_> = ABSENT.iter().map(|(p, _)| *p).collect();
    assert_eq!(set.len(), ABSENT.len(), "duplicate ABSENT pattern");
}
