//! The ext_authz HTTP filter end to end: a scripted fake `envoy.service.auth.v3.Authorization`
//! server (tonic, records every CheckRequest), the sluice proxy in-process on port 0, and an echo
//! upstream. Every config field the filter supports is checked against the recorded CheckRequest,
//! what the upstream received, the response, and the stats.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3 as corepb;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context::HttpRequest, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::client::{self, Conn};
use sluice_testkit::EchoUpstream;

// ---------------------------------------------------------------------------------------------
// The fake authorization server.

#[derive(Clone)]
enum Reply {
    Answer(CheckResponse),
    Delay(Duration, CheckResponse),
    Error(tonic::Code, &'static str),
}

type Script = Arc<dyn Fn(&CheckRequest) -> Reply + Send + Sync>;

#[derive(Clone)]
struct FakeAuthz {
    script: Arc<Mutex<Script>>,
    recorded: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl Authorization for FakeAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = request.into_inner();
        let script = self.script.lock().unwrap().clone();
        let reply = script(&req);
        self.recorded.lock().unwrap().push(req);
        match reply {
            Reply::Answer(r) => Ok(tonic::Response::new(r)),
            Reply::Delay(d, r) => {
                tokio::time::sleep(d).await;
                Ok(tonic::Response::new(r))
            }
            Reply::Error(code, msg) => Err(tonic::Status::new(code, msg)),
        }
    }
}

impl FakeAuthz {
    async fn start() -> (FakeAuthz, SocketAddr) {
        let fake = FakeAuthz {
            script: Arc::new(Mutex::new(Arc::new(|_: &CheckRequest| {
                Reply::Answer(allow())
            }))),
            recorded: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = AuthorizationServer::new(fake.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        (fake, addr)
    }
    fn script(&self, f: impl Fn(&CheckRequest) -> Reply + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(f);
    }
    fn answer(&self, r: CheckResponse) {
        self.script(move |_| Reply::Answer(r.clone()));
    }
    fn recorded(&self) -> Vec<CheckRequest> {
        self.recorded.lock().unwrap().clone()
    }
    fn last(&self) -> CheckRequest {
        self.recorded().pop().expect("no CheckRequest was recorded")
    }
}

fn allow() -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code: 0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn deny(code: i32) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn allow_with(ok: OkHttpResponse) -> CheckResponse {
    CheckResponse {
        http_response: Some(HttpResponse::OkResponse(ok)),
        ..allow()
    }
}

fn hvo(key: &str, value: &str, append: Option<bool>) -> corepb::HeaderValueOption {
    #[allow(deprecated)]
    corepb::HeaderValueOption {
        header: Some(corepb::HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

fn http(r: &CheckRequest) -> &HttpRequest {
    r.attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .http
        .as_ref()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The proxy under test.

struct Harness {
    server: RunningServer,
    addr: SocketAddr,
    authz: FakeAuthz,
    echo: EchoUpstream,
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn counter(&self, name: &str) -> u64 {
        self.server.stats.counter(name).value()
    }
    fn upstream_header(&self, name: &str) -> Vec<String> {
        let last = self
            .echo
            .recorded()
            .pop()
            .expect("the upstream got no request");
        last.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn static_cluster(name: &str, addr: SocketAddr, h2: bool) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]}
    });
    if h2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

/// Options of one harness.
#[derive(Default)]
struct Setup {
    /// Merged into the ext_authz typed_config (defaults: gRPC to the fake, timeout 0.25 s).
    authz: Value,
    /// Point the authz cluster at a closed port.
    authz_down: bool,
    /// Downstream TLS: (server cert PEM, key PEM, CA PEM for client certificates).
    tls: Option<(String, String, String)>,
    /// Extra clusters.
    clusters: Vec<Value>,
}

async fn start(setup: Setup) -> Harness {
    let (authz, authz_addr) = FakeAuthz::start().await;
    let echo = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    let authz_target = if setup.authz_down {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    } else {
        authz_addr
    };
    let mut filter = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.250s"}
    });
    if let Value::Object(extra) = &setup.authz {
        for (k, v) in extra {
            if v.is_null() {
                filter.as_object_mut().unwrap().remove(k);
            } else {
                filter[k] = v.clone();
            }
        }
    }
    let per_route = |v: Value| {
        let mut v = v;
        v["@type"] = json!(
            "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
        );
        json!({"envoy.filters.http.ext_authz": v})
    };
    let routes = json!([
        {"match": {"prefix": "/disabled"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": per_route(json!({"disabled": true}))},
        {"match": {"prefix": "/ctx"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": per_route(json!({"check_settings": {"context_extensions": {"level": "route", "route_only": "r"}}}))},
        {"match": {"prefix": "/nobody"}, "route": {"cluster": "echo"},
         "typed_per_filter_config": per_route(json!({"check_settings": {"disable_request_body_buffering": true}}))},
        {"match": {"prefix": "/cache", "headers": [{"name": "x-route", "string_match": {"exact": "other"}}]},
         "direct_response": {"status": 200, "body": {"inline_string": "rerouted"}}},
        {"match": {"prefix": "/cache"}, "route": {"cluster": "echo"}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/echo"}, "route": {"cluster": "echo"}}
    ]);
    let mut listener = json!({
        "name": "ingress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "codec_type": "AUTO",
                "route_config": {"name": "routes", "virtual_hosts": [{
                    "name": "all", "domains": ["*"], "routes": routes,
                    "typed_per_filter_config": per_route(json!({"check_settings": {"context_extensions": {"level": "vhost", "vhost_only": "v"}}}))
                }]},
                "http_filters": [
                    {"name": "envoy.filters.http.ext_authz", "typed_config": filter},
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }
        }]}]
    });
    if let Some((cert, key, ca)) = &setup.tls {
        listener["filter_chains"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"inline_string": cert}, "private_key": {"inline_string": key}}],
                    "validation_context": {"trusted_ca": {"inline_string": ca}}
                }
            }
        });
    }
    let mut clusters = vec![
        static_cluster("authz", authz_target, true),
        static_cluster("echo", echo.addr(), false),
    ];
    clusters.extend(setup.clusters);
    let config = json!({"static_resources": {"listeners": [listener], "clusters": clusters}});
    let server = common::start_proxy(&config, "ext_authz_filter.json").await;
    let addr = server.listeners[0].address;
    Harness {
        server,
        addr,
        authz,
        echo,
    }
}

async fn get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> client::Response {
    client::request("GET", &h.url(path), headers, bytes::Bytes::new())
        .await
        .expect("request")
}

fn names(r: &client::Response) -> Vec<&str> {
    r.headers.keys().map(|k| k.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// CheckRequest content.

#[tokio::test]
async fn check_request_has_envoys_fields() {
    let h = start(Setup::default()).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let r = get(
        &h,
        "/echo/x?q=1&r=%20",
        &[
            ("user-agent", "test/1"),
            ("x-dup", "1"),
            ("x-dup", "2"),
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = h.authz.recorded();
    assert_eq!(rec.len(), 1);
    let c = &rec[0];
    let a = c.attributes.as_ref().unwrap();
    // Addresses: downstream peer and the listener's local address.
    let sock =
        |p: &Option<envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer>| match p
            .as_ref()
            .unwrap()
            .address
            .as_ref()
            .unwrap()
            .address
            .as_ref()
            .unwrap()
        {
            corepb::address::Address::SocketAddress(s) => {
                (s.address.clone(), s.port_specifier.clone())
            }
            other => panic!("not a socket address: {other:?}"),
        };
    let (src_ip, src_port) = sock(&a.source);
    assert_eq!(src_ip, "127.0.0.1");
    assert!(
        matches!(src_port, Some(corepb::socket_address::PortSpecifier::PortValue(p)) if p != 0 && p != h.addr.port() as u32)
    );
    let (dst_ip, dst_port) = sock(&a.destination);
    assert_eq!(dst_ip, "127.0.0.1");
    assert_eq!(
        dst_port,
        Some(corepb::socket_address::PortSpecifier::PortValue(
            h.addr.port() as u32
        ))
    );
    assert_eq!(
        a.destination.as_ref().unwrap().principal,
        "",
        "plain TCP has no principal"
    );
    assert!(a.metadata_context.is_some() && a.route_metadata_context.is_some());
    assert!(a.tls_session.is_none());
    let req = a.request.as_ref().unwrap();
    let t = req.time.as_ref().expect("request.time");
    assert!((t.seconds - before).abs() <= 5, "time {t:?}");
    let hr = http(c);
    assert!(
        hr.id.parse::<u64>().is_ok(),
        "http.id is a decimal stream id: {:?}",
        hr.id
    );
    assert_ne!(Some(&hr.id), hr.headers.get("x-request-id"));
    assert_eq!(hr.method, "GET");
    assert_eq!(hr.path, "/echo/x?q=1&r=%20");
    assert_eq!(hr.host, h.addr.to_string());
    assert_eq!(hr.scheme, "http");
    assert_eq!(hr.protocol, "HTTP/1.1");
    assert_eq!(hr.query, "");
    assert_eq!(hr.fragment, "");
    assert_eq!(hr.size, 0);
    assert_eq!(hr.body, "");
    let hd = &hr.headers;
    assert_eq!(hd[":method"], "GET");
    assert_eq!(hd[":path"], "/echo/x?q=1&r=%20");
    assert_eq!(hd[":scheme"], "http");
    assert_eq!(hd[":authority"], h.addr.to_string());
    assert!(!hd.contains_key("host"), "host travels as :authority");
    assert_eq!(hd["user-agent"], "test/1");
    assert_eq!(hd["x-dup"], "1,2");
    assert_eq!(hd["cookie"], "a=1,b=2");
    assert_eq!(hd["x-forwarded-proto"], "http");
    assert_eq!(hd["x-request-id"].len(), 36);
    assert!(!hd.contains_key(PARTIAL), "no body buffering configured");
    assert!(a
        .context_extensions
        .iter()
        .all(|(k, _)| k == "level" || k == "vhost_only"));
    // The upstream got the request unchanged.
    assert_eq!(h.echo.recorded().len(), 1);
}

const PARTIAL: &str = "x-envoy-auth-partial-body";

#[tokio::test]
async fn http2_downstream_reports_http2() {
    let h = start(Setup::default()).await;
    let r = client::request_h2("GET", &h.url("/echo/h2"), &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    assert_eq!(http(&c).protocol, "HTTP/2");
    assert_eq!(http(&c).headers[":scheme"], "http");
    assert_eq!(http(&c).headers[":authority"], h.addr.to_string());
}

#[tokio::test]
async fn context_extensions_merge_vhost_then_route() {
    let h = start(Setup::default()).await;
    assert_eq!(get(&h, "/ctx", &[]).await.status, 200);
    let ext = &h.authz.last().attributes.unwrap().context_extensions;
    assert_eq!(ext.len(), 3, "{ext:?}");
    assert_eq!(ext["level"], "route");
    assert_eq!(ext["route_only"], "r");
    assert_eq!(ext["vhost_only"], "v");
    assert_eq!(get(&h, "/echo", &[]).await.status, 200);
    let ext = &h.authz.last().attributes.unwrap().context_extensions;
    assert_eq!(ext.len(), 2);
    assert_eq!(ext["level"], "vhost");
}

#[tokio::test]
async fn allowed_and_disallowed_headers_filter_the_map() {
    let h = start(Setup {
        authz: json!({"allowed_headers": {"patterns": [{"exact": "x-keep"}, {"prefix": "x-authz"}, {"exact": "x-secret"}]},
                      "disallowed_headers": {"patterns": [{"exact": "x-secret"}]}}),
        ..Default::default()
    })
    .await;
    let r = get(
        &h,
        "/echo/f",
        &[
            ("x-keep", "1"),
            ("x-authz-a", "2"),
            ("x-secret", "3"),
            ("x-other", "4"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    let mut keys: Vec<_> = http(&c).headers.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["x-authz-a", "x-keep"],
        "pseudo-headers are filtered too"
    );
    assert_eq!(http(&c).path, "/echo/f");
    assert_eq!(http(&c).method, "GET");
    assert_eq!(http(&c).host, h.addr.to_string());
    // The upstream still gets everything.
    assert_eq!(h.upstream_header("x-secret"), ["3"]);

    let h = start(Setup {
        authz: json!({"disallowed_headers": {"patterns": [{"prefix": "x-s"}]}}),
        ..Default::default()
    })
    .await;
    get(&h, "/echo/f", &[("x-secret", "3"), ("x-other", "4")]).await;
    let c = h.authz.last();
    assert!(!http(&c).headers.contains_key("x-secret"));
    assert_eq!(http(&c).headers["x-other"], "4");
    assert!(http(&c).headers.contains_key(":path"));
}

// ---------------------------------------------------------------------------------------------
// Request bodies.

#[tokio::test]
async fn buffered_body_is_sent_and_forwarded() {
    let h = start(Setup {
        authz: json!({"with_request_body": {"max_request_bytes": 100}}),
        ..Default::default()
    })
    .await;
    let r = client::request("POST", &h.url("/echo/b"), &[], "hello body")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    assert_eq!(http(&c).body, "hello body");
    assert!(http(&c).raw_body.is_empty());
    assert_eq!(http(&c).size, 10);
    assert_eq!(http(&c).headers[PARTIAL], "false");
    assert_eq!(h.echo.recorded().pop().unwrap().body_len, 10);
    // A route may turn buffering off.
    let r = client::request("POST", &h.url("/nobody"), &[], "hello body")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    assert_eq!(http(&c).body, "");
    assert_eq!(http(&c).size, 0);
    assert!(!http(&c).headers.contains_key(PARTIAL));
    assert_eq!(h.echo.recorded().pop().unwrap().body_len, 10);
}

#[tokio::test]
async fn partial_body_is_truncated_for_the_check_only() {
    let h = start(Setup {
        authz: json!({"with_request_body": {"max_request_bytes": 4, "allow_partial_message": true}}),
        ..Default::default()
    })
    .await;
    let body = "x".repeat(3001);
    let r = client::request("POST", &h.url("/echo/p"), &[], body)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    assert_eq!(http(&c).body, "xxxx");
    assert_eq!(http(&c).size, 3001);
    assert_eq!(http(&c).headers[PARTIAL], "true");
    assert_eq!(
        h.echo.recorded().pop().unwrap().body_len,
        3001,
        "the upstream gets the whole body"
    );
}

#[tokio::test]
async fn too_large_body_is_413_before_any_check() {
    let h = start(Setup {
        authz: json!({"with_request_body": {"max_request_bytes": 4}, "failure_mode_allow": true}),
        ..Default::default()
    })
    .await;
    let r = client::request("POST", &h.url("/echo/big"), &[], "12345")
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "Payload Too Large");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        names(&r),
        [
            "content-length",
            "content-type",
            "date",
            "server",
            "connection"
        ]
    );
    assert!(h.authz.recorded().is_empty());
    assert!(h.echo.recorded().is_empty());
    // Exactly max is fine.
    let r = client::request("POST", &h.url("/echo/big"), &[], "1234")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(http(&h.authz.last()).body, "1234");
}

#[tokio::test]
async fn too_large_chunked_body_is_413_while_buffering() {
    let h = start(Setup {
        authz: json!({"with_request_body": {"max_request_bytes": 4}}),
        ..Default::default()
    })
    .await;
    // HTTP/2 without content-length: counted while buffering.
    let r = client::request_h2("POST", &h.url("/echo/big"), &[], "123456")
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert!(h.authz.recorded().is_empty());
}

#[tokio::test]
async fn pack_as_bytes_uses_raw_body() {
    let h = start(Setup {
        authz: json!({"with_request_body": {"max_request_bytes": 100, "pack_as_bytes": true}}),
        ..Default::default()
    })
    .await;
    let body = bytes::Bytes::from_static(&[0xff, 0x00, b'a']);
    let r = client::request("POST", &h.url("/echo/raw"), &[], body.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    assert_eq!(http(&c).raw_body, body.to_vec());
    assert_eq!(http(&c).body, "");
    assert_eq!(http(&c).size, 3);
}

// ---------------------------------------------------------------------------------------------
// Applying the answer.

#[tokio::test]
async fn ok_response_mutates_request_and_response() {
    let h = start(Setup::default()).await;
    h.authz.answer(allow_with(OkHttpResponse {
        headers: vec![
            hvo("x-current-user", "OPA", None),
            hvo("X-Set-False", "s", Some(false)),
            hvo("x-dup", "from-authz", Some(true)),
            hvo("x-new-append", "n", Some(true)),
        ],
        headers_to_remove: vec!["x-remove-me".into(), ":path".into(), "host".into()],
        response_headers_to_add: vec![hvo("x-resp-from-authz", "yes", None)],
        query_parameters_to_set: vec![corepb::QueryParameter {
            key: "added".into(),
            value: "1".into(),
        }],
        query_parameters_to_remove: vec!["drop".into()],
        ..Default::default()
    }));
    let r = get(
        &h,
        "/echo/q?echo=1&drop=2",
        &[
            ("x-current-user", "spoofed"),
            ("x-set-false", "old"),
            ("x-dup", "client"),
            ("x-remove-me", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-resp-from-authz"), Some("yes"));
    let up = h.echo.recorded().pop().unwrap();
    assert_eq!(up.path, "/echo/q?added=1&echo=1");
    assert_eq!(h.upstream_header("x-current-user"), ["OPA"]);
    assert_eq!(h.upstream_header("x-set-false"), ["s"]);
    assert_eq!(h.upstream_header("x-dup"), ["client,from-authz"]);
    assert_eq!(h.upstream_header("x-new-append"), ["n"]);
    assert!(h.upstream_header("x-remove-me").is_empty());
    assert_eq!(h.upstream_header("host"), [h.addr.to_string()]);
    assert_eq!(h.counter("http.ingress.ext_authz.ok"), 1);
    assert_eq!(h.counter("cluster.echo.ext_authz.ok"), 1);
}

#[tokio::test]
async fn clear_route_cache_rematches_after_header_mutation() {
    let h = start(Setup {
        authz: json!({"clear_route_cache": true}),
        ..Default::default()
    })
    .await;
    h.authz.answer(allow_with(OkHttpResponse {
        headers: vec![hvo("x-route", "other", None)],
        ..Default::default()
    }));
    let r = get(&h, "/cache", &[]).await;
    assert_eq!(r.text(), "rerouted");
    let h = start(Setup::default()).await;
    h.authz.answer(allow_with(OkHttpResponse {
        headers: vec![hvo("x-route", "other", None)],
        ..Default::default()
    }));
    let r = get(&h, "/cache", &[]).await;
    assert_eq!(r.status, 200);
    assert_ne!(
        r.text(),
        "rerouted",
        "without clear_route_cache the first route stays"
    );
    assert_eq!(h.upstream_header("x-route"), ["other"]);
}

#[tokio::test]
async fn denial_is_an_empty_403_and_charged_to_the_routed_cluster() {
    let h = start(Setup::default()).await;
    h.authz.answer(deny(7));
    let r = get(&h, "/echo/denied", &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());
    assert_eq!(names(&r), ["date", "server", "content-length"]);
    assert_eq!(r.header("server"), Some("envoy"));
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(h.echo.recorded().is_empty());
    // UNAUTHENTICATED is not mapped to 401.
    h.authz.answer(deny(16));
    assert_eq!(get(&h, "/echo/denied", &[]).await.status, 403);
    assert_eq!(h.counter("http.ingress.ext_authz.denied"), 2);
    assert_eq!(h.counter("cluster.echo.ext_authz.denied"), 2);
    assert_eq!(h.counter("http.ingress.ext_authz.ok"), 0);
    assert_eq!(h.counter("cluster.echo.upstream_rq_403"), 2);
    // Still checked for direct responses.
    assert_eq!(get(&h, "/direct", &[]).await.status, 403);
    assert_eq!(h.counter("http.ingress.ext_authz.denied"), 3);
}

#[tokio::test]
async fn charge_cluster_response_stats_false() {
    let h = start(Setup {
        authz: json!({"charge_cluster_response_stats": false}),
        ..Default::default()
    })
    .await;
    h.authz.answer(deny(7));
    assert_eq!(get(&h, "/echo", &[]).await.status, 403);
    assert_eq!(h.counter("cluster.echo.ext_authz.denied"), 1);
    assert_eq!(h.counter("cluster.echo.upstream_rq_403"), 0);
}

#[tokio::test]
async fn denied_response_status_headers_and_body() {
    let h = start(Setup::default()).await;
    h.authz.answer(CheckResponse {
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![
                hvo("www-authenticate", "Bearer", None),
                hvo("x-deny", "1", None),
            ],
            body: "go away".into(),
        })),
        ..deny(16)
    });
    let r = get(&h, "/echo", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "go away");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.header("x-deny"), Some("1"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("7"));
    // A body without a status: 403 with the body.
    h.authz.answer(CheckResponse {
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            body: "no".into(),
            ..Default::default()
        })),
        ..deny(7)
    });
    let r = get(&h, "/echo", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "no");
    assert_eq!(r.header("content-type"), Some("text/plain"));
}

// ---------------------------------------------------------------------------------------------
// Failures.

#[tokio::test]
async fn slow_server_times_out_into_403() {
    let h = start(Setup::default()).await;
    h.authz
        .script(|_| Reply::Delay(Duration::from_secs(2), allow()));
    let t = Instant::now();
    let r = get(&h, "/echo/slow", &[]).await;
    let took = t.elapsed();
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());
    assert!(
        took >= Duration::from_millis(240),
        "answered before the timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(250 + 300), "took {took:?}");
    assert_eq!(h.counter("http.ingress.ext_authz.error"), 1);
    assert_eq!(h.counter("cluster.echo.ext_authz.error"), 1);
    assert!(h.echo.recorded().is_empty());
}

#[tokio::test]
async fn default_timeout_is_200ms() {
    let h = start(Setup {
        authz: json!({"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}),
        ..Default::default()
    })
    .await;
    h.authz
        .script(|_| Reply::Delay(Duration::from_secs(2), allow()));
    let t = Instant::now();
    assert_eq!(get(&h, "/echo", &[]).await.status, 403);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn server_down_is_403() {
    let h = start(Setup {
        authz_down: true,
        ..Default::default()
    })
    .await;
    let r = get(&h, "/echo", &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());
    assert_eq!(h.counter("http.ingress.ext_authz.error"), 1);
    assert!(h.echo.recorded().is_empty());
}

#[tokio::test]
async fn grpc_error_status_is_403() {
    let h = start(Setup::default()).await;
    h.authz
        .script(|_| Reply::Error(tonic::Code::Unknown, "undefined decision"));
    let r = get(&h, "/echo", &[]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());
    assert_eq!(h.counter("http.ingress.ext_authz.error"), 1);
    assert_eq!(h.counter("http.ingress.ext_authz.denied"), 0);
}

#[tokio::test]
async fn failure_mode_allow_lets_the_request_through() {
    let h = start(Setup {
        authz_down: true,
        authz: json!({"failure_mode_allow": true, "failure_mode_allow_header_add": true}),
        ..Default::default()
    })
    .await;
    let r = get(&h, "/echo/fma", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.upstream_header("x-envoy-auth-failure-mode-allowed"),
        ["true"]
    );
    assert_eq!(h.counter("http.ingress.ext_authz.error"), 1);
    assert_eq!(h.counter("http.ingress.ext_authz.failure_mode_allowed"), 1);
    assert_eq!(h.counter("cluster.echo.ext_authz.failure_mode_allowed"), 1);
    // Without the header option, no header.
    let h = start(Setup {
        authz_down: true,
        authz: json!({"failure_mode_allow": true}),
        ..Default::default()
    })
    .await;
    assert_eq!(get(&h, "/echo/fma", &[]).await.status, 200);
    assert!(h
        .upstream_header("x-envoy-auth-failure-mode-allowed")
        .is_empty());
    // A denial is still a denial.
    let h = start(Setup {
        authz: json!({"failure_mode_allow": true}),
        ..Default::default()
    })
    .await;
    h.authz.answer(deny(7));
    assert_eq!(get(&h, "/echo", &[]).await.status, 403);
}

#[tokio::test]
async fn status_on_error_is_used_for_errors_only() {
    let h = start(Setup {
        authz: json!({"status_on_error": {"code": 503}}),
        ..Default::default()
    })
    .await;
    h.authz
        .script(|_| Reply::Error(tonic::Code::Unavailable, "down"));
    let r = get(&h, "/echo", &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.is_empty());
    h.authz.answer(deny(7));
    assert_eq!(get(&h, "/echo", &[]).await.status, 403);
}

// ---------------------------------------------------------------------------------------------
// When the filter runs.

#[tokio::test]
async fn per_route_disabled_skips_the_check_without_stats() {
    let h = start(Setup::default()).await;
    h.authz.answer(deny(7));
    let r = get(&h, "/disabled/x", &[]).await;
    assert_eq!(r.status, 200);
    assert!(h.authz.recorded().is_empty());
    for s in ["ok", "denied", "error", "failure_mode_allowed", "disabled"] {
        assert_eq!(h.counter(&format!("http.ingress.ext_authz.{s}")), 0, "{s}");
    }
}

#[tokio::test]
async fn no_route_is_404_without_a_check() {
    let h = start(Setup::default()).await;
    let r = get(&h, "/nothing-here", &[]).await;
    assert_eq!(r.status, 404);
    assert!(h.authz.recorded().is_empty());
}

#[tokio::test]
async fn stat_prefix_and_stats_exist_at_start() {
    let h = start(Setup {
        authz: json!({"stat_prefix": "front"}),
        ..Default::default()
    })
    .await;
    let names: Vec<String> = h.server.stats.all().into_iter().map(|(n, _)| n).collect();
    for s in ["ok", "denied", "error", "failure_mode_allowed", "disabled"] {
        let n = format!("http.ingress.ext_authz.front.{s}");
        assert!(names.contains(&n), "{n} missing");
    }
    assert_eq!(get(&h, "/echo", &[]).await.status, 200);
    assert_eq!(h.counter("http.ingress.ext_authz.front.ok"), 1);
    assert_eq!(h.counter("cluster.echo.ext_authz.front.ok"), 1);
}

#[tokio::test]
async fn tls_principals_and_peer_certificate() {
    let pki = sluice_testkit::Pki::generate(
        sluice_testkit::KeyKind::Ecdsa,
        &sluice_testkit::certs::ServerIdentity {
            common_name: Some("front-envoy".into()),
            sans: vec!["localhost".into()],
        },
    );
    let h = start(Setup {
        tls: Some((
            pki.server_cert.clone(),
            pki.server_key.clone(),
            pki.ca_cert.clone(),
        )),
        authz: json!({"include_peer_certificate": true, "include_tls_session": true}),
        ..Default::default()
    })
    .await;
    let mut conn = Conn::connect_tls(h.addr, pki.client_config(&["http/1.1"], true), "localhost")
        .await
        .unwrap();
    let r = conn
        .request(
            "POST",
            &format!("https://localhost:{}/echo/tls", h.addr.port()),
            &[],
            "x",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let c = h.authz.last();
    let a = c.attributes.as_ref().unwrap();
    assert_eq!(
        a.destination.as_ref().unwrap().principal,
        "localhost",
        "DNS SAN of the listener certificate"
    );
    let src = a.source.as_ref().unwrap();
    assert_eq!(src.principal, "spiffe://sluice.test/client");
    assert!(
        src.certificate
            .starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{}",
        src.certificate
    );
    assert!(src.certificate.ends_with("-----END%20CERTIFICATE-----%0A"));
    assert!(
        !src.certificate.contains('\n')
            && !src.certificate.contains('/')
            && !src.certificate.contains('+')
    );
    assert_eq!(a.tls_session.as_ref().unwrap().sni, "localhost");
    assert_eq!(http(&c).scheme, "https");
    assert_eq!(http(&c).headers[":scheme"], "https");
    assert_eq!(http(&c).headers["x-forwarded-proto"], "https");
}

// ---------------------------------------------------------------------------------------------
// The raw HTTP service.

#[tokio::test]
async fn http_service_allows_with_upstream_headers_and_denies_with_its_answer() {
    let svc = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "authsvc")
        .await
        .unwrap();
    let http_service = |prefix: &str| {
        json!({
            "grpc_service": null,
            "transport_api_version": null,
            "http_service": {
                "server_uri": {"uri": "http://authsvc", "cluster": "authsvc", "timeout": "0.5s"},
                "path_prefix": prefix,
                "authorization_request": {"allowed_headers": {"patterns": [{"exact": "x-keep"}]},
                                          "headers_to_add": [{"key": "x-added", "value": "1"}]},
                "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-upstream-id"}]},
                                           "allowed_client_headers": {"patterns": [{"exact": "x-upstream-id"}]}}
            }
        })
    };
    let h = start(Setup {
        authz: http_service("/authz"),
        clusters: vec![static_cluster("authsvc", svc.addr(), false)],
        ..Default::default()
    })
    .await;
    let r = get(
        &h,
        "/echo/x?a=1",
        &[
            ("x-keep", "k"),
            ("x-drop", "d"),
            ("authorization", "Bearer t"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = svc
        .recorded()
        .pop()
        .expect("the auth service got no request");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/authz/echo/x?a=1");
    let hdr = |n: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(hdr("x-keep").as_deref(), Some("k"));
    assert_eq!(hdr("authorization").as_deref(), Some("Bearer t"));
    assert_eq!(hdr("x-added").as_deref(), Some("1"));
    assert_eq!(hdr("x-drop"), None);
    assert_eq!(h.upstream_header("x-upstream-id"), ["authsvc"]);

    let h = start(Setup {
        authz: http_service("/status/401"),
        clusters: vec![static_cluster("authsvc", svc.addr(), false)],
        ..Default::default()
    })
    .await;
    let r = get(&h, "/echo/y", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-upstream-id"), Some("authsvc"));
    assert!(r.json()["path"]
        .as_str()
        .unwrap()
        .starts_with("/status/401/echo/y"));
    assert!(h.echo.recorded().is_empty());
    assert_eq!(h.counter("http.ingress.ext_authz.denied"), 1);
}

// ---------------------------------------------------------------------------------------------
// Cost of the check on the request path.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_latency_report() {
    let h = start(Setup::default()).await;
    let mut conn = Conn::connect(h.addr).await.unwrap();
    let url = h.url("/echo/lat");
    let disabled = h.url("/disabled/lat");
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..400 {
        let (u, v) = if i % 2 == 0 {
            (&url, &mut with)
        } else {
            (&disabled, &mut without)
        };
        let t = Instant::now();
        let r = conn.get(u).await.unwrap();
        v.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    with.sort();
    without.sort();
    let p = |v: &Vec<Duration>, q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    println!(
        "ext_authz latency over 200 requests: with check p50 {:?} p99 {:?}; route without check p50 {:?} p99 {:?}",
        p(&with, 0.5),
        p(&with, 0.99),
        p(&without, 0.5),
        p(&without, 0.99)
    );
    assert_eq!(h.authz.recorded().len(), 200);
    assert!(
        p(&with, 0.5) < Duration::from_millis(50),
        "p50 with check {:?}",
        p(&with, 0.5)
    );
}
