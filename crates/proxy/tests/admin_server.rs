//! The admin server over real loopback sockets: exact wire format, state changes, POST-only
//! endpoints, redaction, certificates, the cluster-manager view, quit.
//! Expectations come from real Envoy 1.40 (see docs/envoy-observations.md §6).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_proxy::admin::{
    self, AdminContext, CommandLineOptions, ListenerInfo, ServerState, StaticClusters,
};
use sluice_proxy::stats::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRONT: &str = include_str!("../../../examples/guide/front-envoy.yaml");

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection; reads the (chunked) reply, bounded in time.
async fn send(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nhost: admin\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("reply in time").unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            if method == "HEAD" || text.ends_with("\r\n0\r\n\r\n") || (text[end..].len() == 4 && text.contains("\r\n0\r\n\r\n")) {
                break;
            }
        }
    }
    let text = String::from_utf8(buf).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    // De-chunk.
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    Reply { status, head: head.to_string(), body }
}

async fn start(yaml: &str, live: bool) -> (SocketAddr, Arc<AdminContext>, tokio::task::JoinHandle<()>) {
    let snapshot = sluice_config::parse(yaml, sluice_config::Format::Yaml).unwrap();
    let stats = Store::new();
    admin::register_server_stats(&stats, 2);
    let server = ServerState::new();
    if live {
        admin::mark_initialized(&stats, &server);
    }
    let ctx = Arc::new(AdminContext {
        stats,
        clusters: Arc::new(StaticClusters::from_bootstrap(&snapshot.bootstrap)),
        snapshot: Arc::new(snapshot),
        server,
        listeners: vec![
            ListenerInfo { name: "http".into(), address: "0.0.0.0:8080".parse().unwrap() },
            ListenerInfo { name: "https".into(), address: "0.0.0.0:8443".parse().unwrap() },
        ],
        options: CommandLineOptions { config_path: "front-envoy.yaml".into(), ..Default::default() },
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(admin::serve(listener, ctx.clone()));
    (addr, ctx, task)
}

#[tokio::test]
async fn wire_format_matches_envoy() {
    let (addr, _ctx, _t) = start(FRONT, true).await;
    let r = send(addr, "GET", "/ready").await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.head.lines().skip(1).map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        ["content-type", "cache-control", "x-content-type-options", "date", "server", "transfer-encoding"]
    );
    assert!(r.head.contains("content-type: text/plain; charset=UTF-8\r\n"));
    assert!(r.head.contains("cache-control: no-cache, max-age=0\r\n"));
    assert!(r.head.contains("x-content-type-options: nosniff\r\n"));
    assert!(r.head.contains("server: envoy\r\n"));
    assert!(r.head.ends_with("transfer-encoding: chunked"));
    assert_eq!(r.body, "LIVE\n");

    let r = send(addr, "GET", "/hot_restart_version").await;
    assert_eq!(r.body, "disabled");
    let r = send(addr, "GET", "/server_info").await;
    assert!(r.head.contains("content-type: application/json\r\n"));
    assert!(r.body.starts_with("{\n \"version\": \"sluice/"), "{}", r.body);
    assert!(r.body.contains("\n \"state\": \"LIVE\",\n"));
    assert!(r.body.contains("\"config_path\": \"front-envoy.yaml\""));
    assert!(r.body.ends_with("\n \"hot_restart_initializing\": false\n}\n"));
}

#[tokio::test]
async fn healthcheck_stats_filter_prints_server_state() {
    let (addr, _ctx, _t) = start("{}", true).await;
    let r = send(addr, "GET", "/stats?filter=server.state").await;
    assert_eq!((r.status, r.body.as_str()), (200, "server.state: 0\n"));
    let r = send(addr, "GET", "/stats?filter=server.state&format=json").await;
    assert_eq!(r.body, r#"{"stats":[{"name":"server.state","value":0}]}"#);
    let r = send(addr, "GET", "/stats/prometheus?filter=server.state").await;
    assert_eq!(r.body, "# TYPE envoy_server_state gauge\nenvoy_server_state{} 0\n");
    let r = send(addr, "GET", "/stats?filter=%5B").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn ready_live_draining_live() {
    let (addr, ctx, _t) = start("{}", true).await;
    assert_eq!(send(addr, "GET", "/ready").await.body, "LIVE\n");
    let r = send(addr, "POST", "/healthcheck/fail").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    let r = send(addr, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    assert_eq!(send(addr, "GET", "/stats?filter=server.live").await.body, "server.live: 0\n");
    // server.state follows at the next flush only.
    assert_eq!(send(addr, "GET", "/stats?filter=server.state").await.body, "server.state: 0\n");
    let flush = admin::spawn_stats_flush(ctx.clone(), Duration::from_millis(20));
    let mut seen = false;
    for _ in 0..100 {
        if send(addr, "GET", "/stats?filter=server.state").await.body == "server.state: 1\n" {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "server.state never became 1");
    let r = send(addr, "POST", "/healthcheck/ok").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    let r = send(addr, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    flush.abort();
}

#[tokio::test]
async fn ready_before_initialization() {
    let (addr, ctx, _t) = start("{}", false).await;
    let r = send(addr, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "PRE_INITIALIZING\n"));
    ctx.server.set_state(admin::State::Initializing);
    let r = send(addr, "GET", "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "INITIALIZING\n"));
}

#[tokio::test]
async fn post_only_endpoints_answer_405_to_get() {
    let (addr, ctx, _t) = start("{}", true).await;
    for p in ["/healthcheck/fail", "/healthcheck/ok", "/quitquitquit", "/reset_counters", "/drain_listeners"] {
        let r = send(addr, "GET", p).await;
        assert_eq!(r.status, 405, "{p}");
        assert_eq!(r.body, "Method GET not allowed, POST required.", "{p}");
        assert!(r.head.contains("content-type: text/plain; charset=UTF-8"));
    }
    assert!(!ctx.server.healthcheck_failed() && !ctx.server.is_quit_requested());
    ctx.stats.counter("a.counter").add(5);
    let r = send(addr, "POST", "/reset_counters").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert_eq!(ctx.stats.counter("a.counter").value(), 0);
    let r = send(addr, "POST", "/drain_listeners").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert!(ctx.server.is_drain_requested());
}

#[tokio::test]
async fn unknown_path_and_help() {
    let (addr, _ctx, _t) = start("{}", true).await;
    let help = send(addr, "GET", "/help").await;
    assert_eq!(help.status, 200);
    assert!(help.body.starts_with("admin commands are:\n  /: Admin home page\n"));
    assert!(help.body.contains("\n  /quitquitquit (POST): exit the server\n"));
    assert!(help.body.contains("\n  /stats: print server stats\n      usedonly: Only include stats that have been written by system since restart\n"));
    let r = send(addr, "GET", "/nonexistent").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, format!("invalid path. {}", help.body));
}

#[tokio::test]
async fn config_dump_redacts_private_keys_and_certs_reads_them() {
    let (addr, _ctx, _t) = start(FRONT, true).await;
    let r = send(addr, "GET", "/config_dump").await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("BEGIN PRIVATE KEY"), "private key leaked");
    assert!(r.body.contains("\"private_key\": {\n               \"inline_string\": \"[redacted]\"\n              }"), "{}", r.body);
    assert!(r.body.contains("BEGIN CERTIFICATE"), "certificate chains are shown");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let types: Vec<&str> = v["configs"].as_array().unwrap().iter().map(|c| c["@type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        ]
    );
    let clusters = v["configs"][1]["static_clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 3);
    assert_eq!(clusters[0]["cluster"]["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(clusters[0]["cluster"]["name"], "service1-envoy");
    assert!(clusters[0]["last_updated"].as_str().unwrap().ends_with('Z'));
    let listeners = v["configs"][2]["static_listeners"].as_array().unwrap();
    assert_eq!(listeners[1]["listener"]["name"], "https");
    let routes = v["configs"][4]["static_route_configs"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["route_config"]["name"], "front_routes");

    // Same certificate as real Envoy showed for this config.
    let r = send(addr, "GET", "/certs").await;
    let want_prefix = "{\n \"certificates\": [\n  {\n   \"ca_cert\": [],\n   \"cert_chain\": [\n    {\n     \"path\": \"\\u003cinline\\u003e\",\n     \"serial_number\": \"3c837e737c96a681ed68cd278b55df4dab457f4e\",\n     \"subject_alt_names\": [],\n     \"days_until_expiration\": \"";
    assert!(r.body.starts_with(want_prefix), "{}", r.body);
    assert!(r.body.ends_with("\",\n     \"valid_from\": \"2026-11-24T22:15:55Z\",\n     \"expiration_time\": \"2036-11-21T22:15:55Z\"\n    }\n   ]\n  }\n ]\n}\n"));

    let r = send(addr, "GET", "/runtime").await;
    assert!(r.body.contains("\"envoy.resource_limits.listener.example_listener_name.connection_limit\": {\n   \"final_value\": \"10000\",\n   \"layer_values\": [\n    \"10000\"\n   ]\n  }"), "{}", r.body);
}

#[tokio::test]
async fn listeners_and_memory() {
    let (addr, _ctx, _t) = start("{}", true).await;
    assert_eq!(send(addr, "GET", "/listeners").await.body, "http::0.0.0.0:8080\nhttps::0.0.0.0:8443\n");
    let j = send(addr, "GET", "/listeners?format=json").await.body;
    assert!(j.starts_with("{\n \"listener_statuses\": [\n  {\n   \"name\": \"http\",\n   \"local_address\": {\n    \"socket_address\": {\n     \"address\": \"0.0.0.0\",\n     \"port_value\": 8080\n"));
    let m: serde_json::Value = serde_json::from_str(&send(addr, "GET", "/memory").await.body).unwrap();
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["allocated", "heap_size", "pageheap_unmapped", "pageheap_free", "total_thread_cache", "total_physical_bytes"]);
    assert!(m["total_physical_bytes"].as_str().unwrap().parse::<u64>().unwrap() > 0);
}

#[tokio::test]
async fn admin_counts_its_own_requests() {
    let (addr, ctx, _t) = start("{}", true).await;
    for _ in 0..3 {
        send(addr, "GET", "/ready").await;
    }
    send(addr, "GET", "/nope").await;
    let ok = sluice_testkit::wait_until(Duration::from_secs(2), || {
        ctx.stats.counter("listener.admin.downstream_cx_total").value() == 4
            && ctx.stats.gauge("http.admin.downstream_cx_active").value() == 0
    })
    .await;
    assert!(ok, "connection stats");
    let r = send(addr, "GET", "/stats?filter=%5Ehttp%5C.admin%5C.downstream_rq_%5B24%5Dxx%24").await;
    assert_eq!(r.body, "http.admin.downstream_rq_2xx: 3\nhttp.admin.downstream_rq_4xx: 1\n");
    let r = send(addr, "GET", "/stats?filter=listener.admin.http.admin.downstream_rq_completed").await;
    assert_eq!(r.body, "listener.admin.http.admin.downstream_rq_completed: 5\n");
    let r = send(addr, "GET", "/stats/prometheus?filter=listener.admin.http.admin.downstream_rq_2xx").await;
    assert_eq!(
        r.body,
        "# TYPE envoy_listener_admin_http_downstream_rq_xx counter\nenvoy_listener_admin_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"admin\"} 5\n"
    );
}

#[tokio::test]
async fn clusters_from_the_cluster_manager() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    let yaml = format!(
        "static_resources:\n  clusters:\n  - name: echo\n    connect_timeout: 1s\n    circuit_breakers:\n      thresholds:\n      - max_retries: 5\n    load_assignment:\n      cluster_name: echo\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {port}}}\n"
    );
    let snapshot = sluice_config::parse(&yaml, sluice_config::Format::Yaml).unwrap();
    let stats = Store::new();
    let cm = sluice_proxy::upstream::ClusterManager::new(&snapshot.bootstrap, &stats).unwrap();
    let ctx = Arc::new(AdminContext {
        stats,
        clusters: cm.clone(),
        snapshot: Arc::new(snapshot),
        server: ServerState::new(),
        listeners: vec![],
        options: CommandLineOptions::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _t = tokio::spawn(admin::serve(listener, ctx));
    let r = send(addr, "GET", "/clusters").await;
    let a = format!("127.0.0.1:{port}");
    assert!(r.body.starts_with("echo::observability_name::echo\necho::default_priority::max_connections::1024\n"));
    assert!(r.body.contains("echo::default_priority::max_retries::5\n"));
    assert!(r.body.contains("echo::high_priority::max_retries::3\n"));
    assert!(r.body.contains(&format!("echo::{a}::cx_active::0\necho::{a}::cx_connect_fail::0\n")));
    assert!(r.body.ends_with(&format!("echo::{a}::health_flags::healthy\necho::{a}::weight::1\necho::{a}::region::\necho::{a}::zone::\necho::{a}::sub_zone::\necho::{a}::canary::false\necho::{a}::priority::0\necho::{a}::success_rate::-1\necho::{a}::local_origin_success_rate::-1\n")));
    let j = send(addr, "GET", "/clusters?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
    assert_eq!(v["cluster_statuses"][0]["host_statuses"][0]["address"]["socket_address"]["port_value"], port);
    assert_eq!(v["cluster_statuses"][0]["host_statuses"][0]["stats"][0], serde_json::json!({"name": "cx_connect_fail"}));
    assert_eq!(send(addr, "GET", "/clusters?filter=nomatch").await.body, "");
    cm.shutdown();
}

#[tokio::test]
async fn quitquitquit_stops_the_server() {
    let (addr, ctx, task) = start("{}", true).await;
    let r = send(addr, "POST", "/quitquitquit").await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    tokio::time::timeout(Duration::from_secs(3), ctx.server.quit_requested()).await.expect("quit requested");
    tokio::time::timeout(Duration::from_secs(3), task).await.expect("serve returned").unwrap();
}
