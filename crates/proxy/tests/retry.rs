//! Retries in-process over real sockets (no Envoy needed): request bodies replayed to the next
//! host with `previous_hosts`, a body over the buffer limit sent once without retries, and the
//! settings sluice refuses at load, named by their path.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_testkit::EchoUpstream;

fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn endpoint(a: SocketAddr) -> serde_json::Value {
    json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}})
}

/// One listener on port 0, one route to cluster `c` with `route` merged into its action.
fn bootstrap(route: serde_json::Value, route_extra: serde_json::Value, hosts: &[SocketAddr]) -> serde_json::Value {
    let mut action = json!({"cluster": "c"});
    for (k, v) in route.as_object().unwrap() {
        action[k] = v.clone();
    }
    let mut r = json!({"match": {"prefix": "/"}, "route": action});
    for (k, v) in route_extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    json!({
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "t",
                        "route_config": {"virtual_hosts": [{
                            "name": "v", "domains": ["*"],
                            "include_attempt_count_in_response": true,
                            "routes": [r]
                        }]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "c", "type": "STATIC", "connect_timeout": "0.5s",
                "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": hosts.iter().map(|a| endpoint(*a)).collect::<Vec<_>>()}]}
            }]
        }
    })
}

async fn post(addr: SocketAddr, body: &'static [u8]) -> sluice_testkit::client::Response {
    let url = format!("http://{addr}/upload");
    tokio::time::timeout(Duration::from_secs(10), sluice_testkit::client::request("POST", &url, &[], body))
        .await
        .expect("answer within 10 s")
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_replayed_to_the_next_host() {
    let echo = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dead = dead_addr();
    let policy = json!({"retry_policy": {
        "retry_on": "connect-failure", "num_retries": 2,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.001s"}
    }});
    let server = common::start_proxy(&bootstrap(policy, json!({}), &[dead, echo.addr()]), "retry.json").await;
    let addr = server.listeners[0].address;
    for _ in 0..10 {
        let r = post(addr, b"hello replay").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let attempts: u32 = r.header("x-envoy-attempt-count").unwrap().parse().unwrap();
        assert!((1..=2).contains(&attempts), "previous_hosts sends the retry to the live host: {attempts}");
    }
    let seen = echo.recorded();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|r| r.body_len == b"hello replay".len()), "every attempt carried the whole body");
    let retries = server.stats.counter("cluster.c.upstream_rq_retry").value();
    assert!(retries >= 1, "round robin hit the dead host at least once in 10 requests");
    assert_eq!(server.stats.counter("cluster.c.upstream_cx_connect_fail").value(), retries);
    assert_eq!(server.stats.counter("cluster.c.upstream_rq_retry_success").value(), retries);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_buffer_limit_goes_once_without_retries() {
    let dead = dead_addr();
    let policy = json!({"retry_policy": {"retry_on": "connect-failure", "num_retries": 3}});
    let server = common::start_proxy(&bootstrap(policy, json!({"per_request_buffer_limit_bytes": 4}), &[dead]), "retry.json").await;
    let addr = server.listeners[0].address;
    let r = post(addr, b"more than four bytes").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(server.stats.counter("cluster.c.retry_or_shadow_abandoned").value(), 1);
    assert_eq!(server.stats.counter("cluster.c.upstream_rq_retry").value(), 0);
    // Within the limit the same request is retried.
    let r = post(addr, b"tiny").await;
    assert_eq!((r.status.as_u16(), r.header("x-envoy-attempt-count")), (503, Some("4")));
    assert_eq!(server.stats.counter("cluster.c.upstream_rq_retry").value(), 3);
    assert_eq!(server.stats.counter("cluster.c.upstream_rq_retry_limit_exceeded").value(), 1);
    server.shutdown();
}

fn load_error(cfg: &serde_json::Value) -> String {
    let snapshot = match sluice_config::parse(&cfg.to_string(), sluice_config::Format::Json) {
        Err(e) => return e.to_string(),
        Ok(s) => s,
    };
    let rt_err = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let options = sluice_proxy::server::Options { config_path: "retry.json".into(), concurrency: 1, log_level: "warning".into() };
            rt.block_on(sluice_proxy::server::start(Arc::new(snapshot), options)).err().map(|e| format!("{e:#}"))
        })
        .join()
        .unwrap()
    });
    rt_err.expect("the config was refused")
}

#[test]
fn unsupported_or_invalid_retry_settings_are_refused_with_their_path() {
    let h = dead_addr();
    for (policy, path) in [
        (json!({"retry_priority": {"name": "envoy.retry_priorities.previous_priorities"}}), "route.retry_policy.retry_priority"),
        (json!({"rate_limited_retry_back_off": {"reset_headers": []}}), "route.retry_policy.rate_limited_retry_back_off.reset_headers"),
        (json!({"retry_on": "5xx,not-a-condition"}), "route.retry_policy.retry_on"),
        (json!({"retry_on": "http3-post-connect-failure"}), "route.retry_policy.retry_on"),
        (json!({"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}), "route.retry_policy.retry_host_predicate[0].name"),
        (json!({"retry_back_off": {"base_interval": "1s", "max_interval": "0.1s"}}), "route.retry_policy.retry_back_off.max_interval"),
    ] {
        let e = load_error(&bootstrap(json!({"retry_policy": policy}), json!({}), &[h]));
        assert!(e.contains(path), "error names {path}: {e}");
    }
}
