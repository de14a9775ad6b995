//! Routing over real sockets: virtual host precedence, route order, every matcher kind, weighted
//! and header-named clusters, rewrites, redirects, direct responses, header mutations at the
//! three levels, and hash policies (header with RING_HASH, cookie with a TTL).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::client::{self, Response};
use sluice_testkit::EchoUpstream;

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn cluster(name: &str, addrs: &[SocketAddr], extra: Value) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}}}))
        .collect();
    let mut c = json!({"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}});
    merge(&mut c, extra);
    c
}

fn bootstrap(route_config: Value, clusters: Vec<Value>) -> Value {
    json!({"static_resources": {
        "listeners": [{
            "name": "rt",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "rt",
                "route_config": route_config,
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
            }}]}]
        }],
        "clusters": clusters
    }})
}

async fn start(cfg: &Value) -> RunningServer {
    common::start_proxy(cfg, "rt.json").await
}

async fn echo(label: &str) -> EchoUpstream {
    EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), label).await.unwrap()
}

/// GET with a Host and extra headers over a new HTTP/1.1 connection.
async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("host", host)];
    h.extend_from_slice(headers);
    client::request("GET", &format!("http://{addr}{path}"), &h, "").await.unwrap()
}

fn upstream_header(r: &Response, name: &str) -> Option<String> {
    r.json()["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string())
}

fn upstream_names(r: &Response) -> Vec<String> {
    r.json()["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_string()).collect()
}

fn direct(status: u16, body: &str) -> Value {
    json!({"status": status, "body": {"inline_string": body}})
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_precedence() {
    let vh = |name: &str, domains: Value| {
        json!({"name": name, "domains": domains, "routes": [{"match": {"prefix": "/"}, "direct_response": direct(200, name)}]})
    };
    let rc = json!({"name": "r", "virtual_hosts": [
        vh("any", json!(["*"])),
        vh("pre", json!(["pre.*"])),
        vh("longpre", json!(["pre.long.*"])),
        vh("short", json!(["*.wild.test"])),
        vh("long", json!(["*.a.wild.test"])),
        vh("exact", json!(["exact.test", "port.test:8080"])),
        vh("both", json!(["pre.x.wild.test"]))
    ]});
    let server = start(&bootstrap(rc, vec![])).await;
    let addr = server.listeners[0].address;
    for (host, want) in [
        ("exact.test", "exact"),
        ("EXACT.Test", "exact"),
        ("exact.test:99", "any"),
        ("port.test:8080", "exact"),
        ("port.test", "any"),
        ("x.a.wild.test", "long"),
        ("b.wild.test", "short"),
        ("B.WILD.TEST", "short"),
        ("wild.test", "any"),
        ("b.wild.test:80", "any"),
        ("pre.x.wild.test", "both"),
        ("pre.y.wild.test", "short"),
        ("pre.foo", "pre"),
        ("pre.long.foo", "longpre"),
        ("pre.foo:8080", "pre"),
        ("other", "any"),
    ] {
        let r = get(addr, host, "/", &[]).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, want.to_string()), "host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_order_and_matchers() {
    let routes = json!([
        {"match": {"prefix": "/order/a"}, "direct_response": direct(200, "first")},
        {"match": {"prefix": "/order"}, "direct_response": direct(200, "second")},
        {"match": {"prefix": "/order/a/b"}, "direct_response": direct(200, "unreachable")},
        {"match": {"path": "/exact"}, "direct_response": direct(200, "path")},
        {"match": {"path_separated_prefix": "/seg"}, "direct_response": direct(200, "separated")},
        {"match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "direct_response": direct(200, "regex")},
        {"match": {"prefix": "/ci", "case_sensitive": false}, "direct_response": direct(200, "ci")},
        {"match": {"prefix": "/h", "headers": [{"name": "x-a", "string_match": {"exact": "1"}}, {"name": "x-b", "present_match": true}]}, "direct_response": direct(200, "headers")},
        {"match": {"prefix": "/h", "headers": [{"name": "x-c", "string_match": {"prefix": "ab"}, "invert_match": true}]}, "direct_response": direct(200, "inverted")},
        {"match": {"prefix": "/rg", "headers": [{"name": "x-n", "range_match": {"start": 10, "end": 20}}]}, "direct_response": direct(200, "range")},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}}]}, "direct_response": direct(200, "query")},
        {"match": {"prefix": "/qp", "query_parameters": [{"name": "flag", "present_match": true}]}, "direct_response": direct(200, "query-present")},
        {"match": {"prefix": "/"}, "direct_response": direct(200, "fallback")}
    ]);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let server = start(&bootstrap(rc, vec![])).await;
    let addr = server.listeners[0].address;
    for (path, headers, want) in [
        ("/order/a/b", vec![], "first"),
        ("/order/x", vec![], "second"),
        ("/orderly", vec![], "second"),
        ("/exact", vec![], "path"),
        ("/exact?x=1", vec![], "path"),
        ("/exact/", vec![], "fallback"),
        ("/seg", vec![], "separated"),
        ("/seg/x", vec![], "separated"),
        ("/segment", vec![], "fallback"),
        ("/re/123", vec![], "regex"),
        ("/re/123?q=a", vec![], "regex"),
        ("/re/12a", vec![], "fallback"),
        ("/CI/x", vec![], "ci"),
        ("/Exact", vec![], "fallback"),
        ("/h", vec![("x-a", "1"), ("x-b", "")], "headers"),
        // An absent header never matches, even an inverted string matcher (Envoy).
        ("/h", vec![("x-a", "1")], "fallback"),
        ("/h", vec![("x-a", "2"), ("x-b", "1"), ("x-c", "zz")], "inverted"),
        ("/h", vec![("x-c", "abc")], "fallback"),
        ("/rg", vec![("x-n", "15")], "range"),
        ("/rg", vec![("x-n", "20")], "fallback"),
        ("/q?a=2&debug=1", vec![], "query"),
        ("/q?debug=2", vec![], "fallback"),
        ("/qp?flag", vec![], "query-present"),
        ("/qp?other=1", vec![], "fallback"),
    ] {
        let r = get(addr, "m.test", path, &headers).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, want.to_string()), "{path} {headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_and_cluster_header() {
    let a = echo("a").await;
    let b = echo("b").await;
    let routes = json!([
        {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 75}, {"name": "b", "weight": 25}]}}},
        {"match": {"prefix": "/h"}, "route": {"cluster_header": "x-cluster"}}
    ]);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let server = start(&bootstrap(rc, vec![cluster("a", &[a.addr()], json!({})), cluster("b", &[b.addr()], json!({}))])).await;
    let addr = server.listeners[0].address;
    let mut conn = client::Conn::connect(addr).await.unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let r = conn.get(&format!("http://{addr}/w")).await.unwrap();
        assert_eq!(r.status, 200);
        *counts.entry(r.header("x-upstream-id").unwrap().to_string()).or_default() += 1;
    }
    let (ca, cb) = (counts.get("a").copied().unwrap_or(0), counts.get("b").copied().unwrap_or(0));
    assert_eq!(ca + cb, 200);
    // Expected 150/50; ±30 is about five standard deviations.
    assert!((120..=180).contains(&ca), "a got {ca}, b got {cb}");

    for name in ["a", "b", "a"] {
        let r = get(addr, "h.test", "/h", &[("x-cluster", name)]).await;
        assert_eq!((r.status.as_u16(), r.header("x-upstream-id")), (200, Some(name)));
    }
    // Missing header or unknown name: 503, empty (cluster not found).
    for headers in [vec![], vec![("x-cluster", "nope")]] {
        let r = get(addr, "h.test", "/h", &headers).await;
        assert_eq!(r.status, 503, "{headers:?}");
        assert!(r.body.is_empty());
        assert!(r.header("x-upstream-id").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_host_rewrite() {
    let up = echo("up").await;
    let routes = json!([
        {"match": {"prefix": "/old/"}, "route": {"cluster": "up", "prefix_rewrite": "/new/"}},
        {"match": {"prefix": "/rx/"}, "route": {"cluster": "up", "regex_rewrite": {"pattern": {"regex": "^/rx/([a-z]+)/([0-9]+)$"}, "substitution": "/v2/\\2/\\1"}}},
        {"match": {"prefix": "/host"}, "route": {"cluster": "up", "host_rewrite_literal": "backend.internal"}},
        {"match": {"prefix": "/plain"}, "route": {"cluster": "up"}}
    ]);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let server = start(&bootstrap(rc, vec![cluster("up", &[up.addr()], json!({}))])).await;
    let addr = server.listeners[0].address;

    let r = get(addr, "front.test", "/old/thing?a=1", &[]).await;
    assert_eq!(r.json()["path"], "/new/thing?a=1");
    assert_eq!(upstream_header(&r, "x-envoy-original-path").as_deref(), Some("/old/thing?a=1"));
    assert_eq!(upstream_names(&r).last().map(String::as_str), Some("x-envoy-original-path"), "appended last");

    let r = get(addr, "front.test", "/rx/abc/42?z", &[]).await;
    assert_eq!(r.json()["path"], "/v2/42/abc?z");
    assert_eq!(upstream_header(&r, "x-envoy-original-path").as_deref(), Some("/rx/abc/42?z"));

    let r = get(addr, "front.test:81", "/host/x", &[]).await;
    assert_eq!(upstream_header(&r, "host").as_deref(), Some("backend.internal"));
    assert_eq!(upstream_names(&r)[0], "host", "rewritten host keeps its first position");
    assert_eq!(upstream_header(&r, "x-envoy-original-host").as_deref(), Some("front.test:81"));
    assert_eq!(r.json()["path"], "/host/x");
    assert_eq!(upstream_header(&r, "x-envoy-original-path"), None, "no path rewrite");

    let r = get(addr, "front.test", "/plain", &[]).await;
    assert_eq!(upstream_header(&r, "x-envoy-original-path"), None);
    assert_eq!(upstream_header(&r, "x-envoy-original-host"), None);
    assert_eq!(upstream_header(&r, "host").as_deref(), Some("front.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_responses() {
    let routes = json!([
        {"match": {"prefix": "/https"}, "redirect": {"https_redirect": true}},
        {"match": {"prefix": "/moved/"}, "redirect": {"host_redirect": "new.test", "prefix_rewrite": "/landing/", "response_code": "FOUND"}},
        {"match": {"prefix": "/pathr"}, "redirect": {"path_redirect": "/elsewhere"}},
        {"match": {"prefix": "/strip"}, "redirect": {"path_redirect": "/clean", "strip_query": true, "response_code": "TEMPORARY_REDIRECT"}},
        {"match": {"prefix": "/direct/body"}, "direct_response": direct(202, "accepted here")},
        {"match": {"prefix": "/direct/empty"}, "direct_response": {"status": 204}},
        {"match": {"prefix": "/direct/teapot"}, "direct_response": {"status": 418}}
    ]);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let server = start(&bootstrap(rc, vec![])).await;
    let addr = server.listeners[0].address;
    let names = |r: &Response| r.headers.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>();

    let r = get(addr, "r.test:8080", "/https/x?a=1", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://r.test:8080/https/x?a=1"), "non-80 port kept");
    assert_eq!(names(&r), ["location", "date", "server", "content-length"]);
    assert!(r.body.is_empty());
    let r = get(addr, "r.test:80", "/https/x", &[]).await;
    assert_eq!(r.header("location"), Some("https://r.test/https/x"), "port 80 dropped");
    let r = get(addr, "r.test", "/https", &[]).await;
    assert_eq!(r.header("location"), Some("https://r.test/https"));

    let r = get(addr, "r.test:8080", "/moved/page?k=v", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://new.test/landing/page?k=v"), "host replaced (port dropped), prefix rewritten");

    let r = get(addr, "r.test", "/pathr/deep?x=1&y=2", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://r.test/elsewhere?x=1&y=2"), "query kept");

    let r = get(addr, "r.test", "/strip/x?secret=1", &[]).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("http://r.test/clean"), "query stripped");

    let r = get(addr, "r.test", "/direct/body", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (202, "accepted here"));
    assert_eq!(names(&r), ["content-length", "content-type", "date", "server"]);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = get(addr, "r.test", "/direct/teapot", &[]).await;
    assert_eq!(r.status, 418);
    assert!(r.body.is_empty());
    assert_eq!(names(&r), ["date", "server", "content-length"]);
    assert_eq!(r.header("content-length"), Some("0"));
    let r = get(addr, "r.test", "/direct/empty", &[]).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(server.stats.counter("http.rt.rq_direct_response").value(), 9, "redirects count as direct responses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mutations_at_three_levels() {
    let up = echo("up").await;
    let add = |k: &str, v: &str| json!({"header": {"key": k, "value": v}});
    let over = |k: &str, v: &str| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"});
    let rc = json!({
        "name": "r",
        "request_headers_to_add": [add("x-rc-add", "rc"), over("x-over", "from-rc")],
        "request_headers_to_remove": ["x-rc-drop"],
        "response_headers_to_add": [add("x-rc-resp", "rc")],
        "response_headers_to_remove": ["x-upstream-id"],
        "virtual_hosts": [{
            "name": "v", "domains": ["*"],
            "request_headers_to_add": [add("x-vh-add", "vh")],
            "request_headers_to_remove": ["x-vh-drop"],
            "response_headers_to_add": [add("x-vh-resp", "vh")],
            "response_headers_to_remove": ["content-type"],
            "routes": [
                {"match": {"prefix": "/m"}, "route": {"cluster": "up"},
                 "request_headers_to_add": [add("x-route-add", "route"), over("x-over", "from-route"), add("x-app", "route")],
                 "request_headers_to_remove": ["x-route-drop"],
                 "response_headers_to_add": [add("x-route-resp", "route")],
                 "response_headers_to_remove": ["x-envoy-upstream-service-time"]},
                {"match": {"prefix": "/d"}, "direct_response": direct(200, "d"),
                 "response_headers_to_add": [add("x-route-resp", "direct")]}
            ]
        }]
    });
    let server = start(&bootstrap(rc, vec![cluster("up", &[up.addr()], json!({}))])).await;
    let addr = server.listeners[0].address;
    let r = get(
        addr,
        "m.test",
        "/m",
        &[("x-over", "client"), ("x-app", "client"), ("x-rc-drop", "1"), ("x-vh-drop", "1"), ("x-route-drop", "1"), ("x-keep", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        upstream_names(&r),
        [
            // (The echo upstream lists headers as hyper's HeaderMap iterates: repeated names grouped.)
            "host", "x-app", "x-app", "x-keep", "x-forwarded-proto", "x-request-id", "x-envoy-expected-rq-timeout-ms",
            "x-route-add", "x-vh-add", "x-over", "x-rc-add",
        ],
        "removals at three levels; route → vhost → route-config groups; in a group overwrites first, moved to the end"
    );
    let apps: Vec<String> = r.json()["headers"].as_array().unwrap().iter().filter(|h| h[0] == "x-app").map(|h| h[1].as_str().unwrap().to_string()).collect();
    assert_eq!(apps, ["client", "route"], "append keeps the client's copy");
    assert_eq!(upstream_header(&r, "x-over").as_deref(), Some("from-rc"), "route-config overwrite wins");
    // Response: upstream headers minus the removed ones, then route → vhost → route-config.
    assert_eq!(r.header("x-upstream-id"), None);
    assert_eq!(r.header("content-type"), None);
    assert_eq!(r.header("x-envoy-upstream-service-time"), None);
    let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} in {names:?}"));
    assert!(pos("x-route-resp") < pos("x-vh-resp") && pos("x-vh-resp") < pos("x-rc-resp"), "{names:?}");
    assert_eq!((r.header("x-route-resp"), r.header("x-vh-resp"), r.header("x-rc-resp")), (Some("route"), Some("vh"), Some("rc")));

    // Direct responses get the three levels too (after the route's own).
    let r = get(addr, "m.test", "/d", &[]).await;
    let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-route-resp", "x-vh-resp", "x-rc-resp", "content-length", "content-type", "date", "server"]);
    assert_eq!(r.header("x-route-resp"), Some("direct"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_by_header_and_cookie_with_ttl() {
    let ups = [echo("h0").await, echo("h1").await, echo("h2").await];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr()).collect();
    let routes = json!([
        {"match": {"prefix": "/hdr"}, "route": {"cluster": "ring", "hash_policy": [{"header": {"header_name": "x-user"}}]}},
        {"match": {"prefix": "/cookie"}, "route": {"cluster": "ring", "hash_policy": [{"cookie": {"name": "sticky", "ttl": "3600s", "path": "/"}}]}}
    ]);
    let rc = json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]});
    let server = start(&bootstrap(rc, vec![cluster("ring", &addrs, json!({"lb_policy": "RING_HASH"}))])).await;
    let addr = server.listeners[0].address;

    let mut used = HashSet::new();
    for k in 0..30 {
        let key = format!("user-{k}");
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let r = get(addr, "ring.test", "/hdr", &[("x-user", &key)]).await;
            assert_eq!(r.status, 200);
            seen.insert(r.header("x-upstream-id").unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{key} always goes to one upstream: {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "30 keys spread over more than one upstream: {used:?}");

    // Cookie policy with a TTL: absent cookie → generated and set; sending it back is sticky.
    let r = get(addr, "ring.test", "/cookie", &[]).await;
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").expect("set-cookie generated").to_string();
    let value = set
        .strip_prefix("sticky=\"")
        .and_then(|s| s.split_once('"'))
        .map(|(v, rest)| {
            assert_eq!(rest, "; Max-Age=3600; Path=/; HttpOnly", "{set}");
            v.to_string()
        })
        .unwrap_or_else(|| panic!("unexpected set-cookie {set}"));
    assert_eq!(value.len(), 16);
    assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "{value}");
    let first = r.header("x-upstream-id").unwrap().to_string();
    let cookie = format!("sticky={value}");
    for _ in 0..5 {
        let r = get(addr, "ring.test", "/cookie", &[("cookie", &cookie)]).await;
        assert_eq!(r.header("x-upstream-id"), Some(first.as_str()), "sticky");
        assert!(r.header("set-cookie").is_none(), "present cookie: nothing set");
    }
    // Different cookie values spread (bounded: 30 values).
    let mut spread = HashSet::new();
    for k in 0..30 {
        let c = format!("sticky=v{k}");
        spread.insert(get(addr, "ring.test", "/cookie", &[("cookie", &c)]).await.header("x-upstream-id").unwrap().to_string());
    }
    assert!(spread.len() >= 2, "{spread:?}");
}
