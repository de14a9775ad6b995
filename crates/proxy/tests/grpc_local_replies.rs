//! gRPC clients see Envoy's gRPC local replies: every reply the proxy makes itself for a gRPC
//! request is trailers-only with `:status 200` and a `grpc-status` mapped from the HTTP status
//! (404 → UNIMPLEMENTED, 503/504 → UNAVAILABLE, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED,
//! anything else → UNKNOWN) and the reply body as `grpc-message`. A real gRPC client (tonic's
//! health client) calls through the proxy over h2c.

mod common;

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

fn config(refused_port: u16, silent_port: u16) -> serde_json::Value {
    let cluster = |name: &str, port: Option<u16>| {
        let endpoints = match port {
            Some(p) => json!([{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}]}]),
            None => json!([]),
        };
        json!({
            "name": name, "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": name, "endpoints": endpoints}
        })
    };
    let direct = |prefix: &str, status: u16, body: Option<&str>| {
        let mut d = json!({"status": status});
        if let Some(b) = body {
            d["body"] = json!({"inline_string": b});
        }
        json!({"match": {"prefix": prefix}, "direct_response": d})
    };
    json!({
        "static_resources": {
            "listeners": [{
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "grpc",
                        "http_filters": [{"name": "envoy.filters.http.router"}],
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            direct("/unauthenticated.", 401, None),
                            direct("/forbidden.", 403, Some("no entry")),
                            direct("/direct.", 200, Some("not a gRPC answer")),
                            direct("/broken.", 500, Some("caf\u{e9} 100%")),
                            {"match": {"prefix": "/empty."}, "route": {"cluster": "empty"}},
                            {"match": {"prefix": "/refused."}, "route": {"cluster": "refused"}},
                            {"match": {"prefix": "/silent."}, "route": {"cluster": "silent", "timeout": "0.3s"}},
                        ]}]}
                    }
                }]}]
            }],
            "clusters": [cluster("empty", None), cluster("refused", Some(refused_port)), cluster("silent", Some(silent_port))]
        }
    })
}

/// Call `<service>/Check` (a gRPC method path the proxy routes by its service prefix).
async fn check(addr: std::net::SocketAddr, service: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the proxy");
    // The health service's message types, sent to a method path of the case's own service.
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("channel ready");
    let path: http::uri::PathAndQuery = format!("/{service}/Check").parse().unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    match client.unary(tonic::Request::new(HealthCheckRequest { service: String::new() }), path, codec).await {
        Ok(_) => panic!("{service}: the proxy answered OK"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_to_grpc_clients_carry_envoys_grpc_status() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    // Accepts and never answers: the route timeout fires.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let server = common::start_proxy(&config(refused_port, silent_port), "grpc.yaml").await;
    let addr = server.listeners[0].address;

    let cases: &[(&str, Code, &str)] = &[
        ("no.route.Service", Code::Unimplemented, ""),
        ("unauthenticated.Service", Code::Unauthenticated, ""),
        ("forbidden.Service", Code::PermissionDenied, "no entry"),
        ("direct.Service", Code::Unknown, "not a gRPC answer"),
        ("broken.Service", Code::Unknown, "café 100%"),
        ("empty.Service", Code::Unavailable, "no healthy upstream"),
        (
            "refused.Service",
            Code::Unavailable,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        ),
        ("silent.Service", Code::Unavailable, "upstream request timeout"),
    ];
    for (service, code, message) in cases {
        let status = check(addr, service).await;
        assert_eq!(status.code(), *code, "{service}: {status:?}");
        assert_eq!(status.message(), *message, "{service}: {status:?}");
    }
    // Every one of them went out as :status 200.
    let ok = server.stats.counter("http.grpc.downstream_rq_2xx").value();
    assert_eq!(ok, cases.len() as u64, "downstream_rq_2xx counts the gRPC local replies");
    hold.abort();
}
