//! OPA's management and REST API over real sockets: /v1/policies, /v1/data writes, POST /,
//! /v1/query, ?metrics, ?provenance, ?strict-builtin-errors, gzip bodies, health variants,
//! /metrics, the diagnostic address and the plugin options.

mod common;

use std::io::Write as _;

use common::*;
use sluice_authz::{AuthzServer, Config};

/// A raw HTTP/1.1 request with extra headers and a binary body: (status, body).
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let (_, b) = text.split_once("\r\n\r\n").unwrap();
    (status, b.to_string())
}

#[tokio::test]
async fn management_api() {
    let dir = TempDir::new("rest");
    let p = dir.write("policy.rego", "package app\n\nimport rego.v1\n\nallow if input.user in data.admins\n\nlimit := data.config.limit\n");
    let d = dir.write("data.json", r#"{"admins": ["alice"], "config": {"limit": 1}}"#);
    let h = AuthzServer::start(Config { diagnostic_addr: Some("127.0.0.1:0".parse().unwrap()), ..Config::loopback(vec![p, d]) }).await.unwrap();
    let addr = h.http_addr().unwrap();

    // PUT /v1/policies/{id} adds a module; a broken one is a 400 and changes nothing.
    let (s, _) = http(addr, "PUT", "/v1/policies/extra", Some("package extra\n\nimport rego.v1\n\nx := data.config.limit + 1\n")).await;
    assert_eq!(s, 200);
    let (s, b) = http(addr, "GET", "/v1/data/extra/x", None).await;
    assert_eq!((s, b.trim()), (200, r#"{"result":2}"#));
    let (s, b) = http(addr, "PUT", "/v1/policies/broken", Some("package broken\nx := \n")).await;
    assert_eq!(s, 400, "{b}");
    let (_, b) = http(addr, "GET", "/v1/policies", None).await;
    assert!(b.contains("\"id\":\"extra\"") && !b.contains("broken"), "{b}");

    // PUT/PATCH/DELETE /v1/data change the data the policies see.
    let (s, _) = http(addr, "PUT", "/v1/data/config/limit", Some("5")).await;
    assert_eq!(s, 204);
    let (_, b) = http(addr, "GET", "/v1/data/app/limit", None).await;
    assert_eq!(b.trim(), r#"{"result":5}"#);
    let (s, _) = http(addr, "PATCH", "/v1/data/admins", Some(r#"[{"op": "add", "path": "/1", "value": "bob"}]"#)).await;
    assert_eq!(s, 204);
    let (_, b) = http(addr, "POST", "/v1/data/app/allow", Some(r#"{"input": {"user": "bob"}}"#)).await;
    assert_eq!(b.trim(), r#"{"result":true}"#);
    let (s, _) = http(addr, "DELETE", "/v1/data/config", None).await;
    assert_eq!(s, 204);
    let (s, _) = http(addr, "DELETE", "/v1/data/config", None).await;
    assert_eq!(s, 404);
    let (_, b) = http(addr, "GET", "/v1/data/app/limit", None).await;
    assert_eq!(b.trim(), "{}");
    let (s, _) = http(addr, "DELETE", "/v1/policies/extra", None).await;
    assert_eq!(s, 200);
    let (_, b) = http(addr, "GET", "/v1/data/extra", None).await;
    assert_eq!(b.trim(), "{}");

    // POST / evaluates data.system.main with the raw body as input; undefined is a 404.
    let (s, _) = http(addr, "POST", "/", Some(r#"{"user": "alice"}"#)).await;
    assert_eq!(s, 404);
    http(addr, "PUT", "/v1/policies/main", Some("package system\n\nimport rego.v1\n\nmain := {\"hello\": input.user}\n")).await;
    let (s, b) = http(addr, "POST", "/", Some(r#"{"user": "alice"}"#)).await;
    assert_eq!((s, b.trim()), (200, r#"{"hello":"alice"}"#));

    // /v1/query, ?metrics, ?provenance, ?strict-builtin-errors, ?explain refused.
    let (_, b) = http(addr, "GET", "/v1/query?q=x%20%3A%3D%201%20%2B%201", None).await;
    assert_eq!(b.trim(), r#"{"result":[{"x":2}]}"#);
    let (_, b) = http(addr, "POST", "/v1/query", Some(r#"{"query": "y := input.a", "input": {"a": 3}}"#)).await;
    assert_eq!(b.trim(), r#"{"result":[{"y":3}]}"#);
    let (_, b) = http(addr, "GET", "/v1/data/app/allow?metrics&provenance", None).await;
    assert!(b.contains("timer_rego_query_eval_ns") && b.contains("\"provenance\":{") && b.contains("\"build_commit\""), "{b}");
    http(addr, "PUT", "/v1/policies/div", Some("package div\n\nx := 1 / 0\n")).await;
    let (s, _) = http(addr, "GET", "/v1/data/div/x", None).await;
    assert_eq!(s, 200);
    let (s, b) = http(addr, "GET", "/v1/data/div/x?strict-builtin-errors", None).await;
    assert_eq!(s, 500, "{b}");
    let (s, _) = http(addr, "GET", "/v1/data/app?explain=notes", None).await;
    assert_eq!(s, 400);

    // A gzip request body.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(br#"{"input": {"user": "alice"}}"#).unwrap();
    let body = gz.finish().unwrap();
    let (s, b) = raw(addr, "POST", "/v1/data/app/allow", &[("content-encoding", "gzip"), ("content-type", "application/json")], &body).await;
    assert_eq!((s, b.trim()), (200, r#"{"result":true}"#));

    // Health: /health?plugins, /health/ready needs data.system.health.ready.
    let (s, _) = http(addr, "GET", "/health?plugins&bundles", None).await;
    assert_eq!(s, 200);
    let (s, _) = http(addr, "GET", "/health/ready", None).await;
    assert_eq!(s, 500);
    http(addr, "PUT", "/v1/policies/health", Some("package system.health\n\nimport rego.v1\n\nready if input.plugins_ready\n")).await;
    let (s, _) = http(addr, "GET", "/health/ready", None).await;
    assert_eq!(s, 200);

    // /metrics and the diagnostic address (health and metrics only).
    let (s, b) = http(addr, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    assert!(b.contains("http_request_duration_seconds_bucket{code=\"200\",handler=\"v1/data\",method=\"get\""), "{b}");
    assert!(b.contains("sluice_authz_failed_evaluations_total{kind=\"panic\"} 0"), "{b}");
    let diag = h.diagnostic_addr().unwrap();
    let (s, _) = http(diag, "GET", "/health?plugins", None).await;
    assert_eq!(s, 200);
    let (s, _) = http(diag, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    let (s, _) = http(diag, "GET", "/v1/data", None).await;
    assert_eq!(s, 404);
    h.shutdown().await;
}

#[tokio::test]
async fn plugin_options() {
    use sluice_authz::cli::config_from_args;
    let dir = TempDir::new("options");
    let p = dir.write("policy.rego", "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if not input.parsed_body\n");
    let args = |extra: &[&str]| {
        let mut v = vec!["run".to_string(), "--server".into(), "--addr=127.0.0.1:0".into(), "--set=plugins.envoy_ext_authz_grpc.addr=127.0.0.1:0".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(p.to_string_lossy().into_owned());
        v
    };
    // Unsupported options are errors at start, naming the key.
    for (bad, key) in [
        ("--set=plugins.envoy_ext_authz_grpc.enable-reflection=yes", "plugins.envoy_ext_authz_grpc.enable-reflection: expected true or false"),
        ("--set=status.prometheus=true", "status.prometheus: not supported by sluice"),
        ("--set=services.default.url=https://x", "only http:// bundle services"),
        ("--set=plugins.envoy_ext_authz_grpc.bogus=1", "plugins.envoy_ext_authz_grpc.bogus"),
    ] {
        let e = config_from_args(&parse_run(&args(&[bad]))).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    // proto-descriptor: read at start; a missing file is an error naming the key.
    let cfg = config_from_args(&parse_run(&args(&["--set=plugins.envoy_ext_authz_grpc.proto-descriptor=/nonexistent/x.pb"]))).unwrap();
    assert_eq!(cfg.proto_descriptor.as_deref(), Some(std::path::Path::new("/nonexistent/x.pb")));
    let e = AuthzServer::start(Config { http_addr: None, grpc_addr: "127.0.0.1:0".parse().unwrap(), ..cfg }).await.err().expect("a missing descriptor file fails the start");
    assert!(format!("{e:#}").contains("plugins.envoy_ext_authz_grpc.proto-descriptor: /nonexistent/x.pb"), "{e:#}");
    let bad = dir.write("bad.pb", "not a descriptor set");
    let cfg = config_from_args(&parse_run(&args(&[&format!("--set=plugins.envoy_ext_authz_grpc.proto-descriptor={}", bad.display())]))).unwrap();
    let e = AuthzServer::start(Config { http_addr: None, grpc_addr: "127.0.0.1:0".parse().unwrap(), ..cfg }).await.err().expect("an invalid descriptor set fails the start");
    assert!(format!("{e:#}").contains("not a valid FileDescriptorSet"), "{e:#}");
    // enable-reflection: off by default, on when set (tests/reflection.rs serves it).
    assert!(!config_from_args(&parse_run(&args(&[]))).unwrap().enable_reflection);
    assert!(config_from_args(&parse_run(&args(&["--set=plugins.envoy_ext_authz_grpc.enable-reflection=true"]))).unwrap().enable_reflection);
    // status.console: accepted.
    assert!(config_from_args(&parse_run(&args(&["--set=status.console=true"]))).unwrap().status.is_some_and(|s| s.console));
    // skip-request-body-parse: no parsed_body in the input; performance metrics on.
    let cfg = config_from_args(&parse_run(&args(&[
        "--set=plugins.envoy_ext_authz_grpc.skip-request-body-parse=true",
        "--set=plugins.envoy_ext_authz_grpc.enable-performance-metrics=true",
        "--set=plugins.envoy_ext_authz_grpc.grpc-max-recv-msg-size=2048",
        "--diagnostic-addr=127.0.0.1:0",
        "--ignore=.*",
    ])))
    .unwrap();
    assert!(cfg.skip_body_parse && cfg.performance_metrics && cfg.grpc_max_recv == 2048);
    let h = AuthzServer::start(Config { http_addr: Some("127.0.0.1:0".parse().unwrap()), grpc_addr: "127.0.0.1:0".parse().unwrap(), ..cfg }).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut req = check_request("POST", "http", "/", &[("content-type", "application/json")]);
    req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().body = r#"{"a": 1}"#.into();
    let r = check(&mut c, req.clone()).await.unwrap();
    assert_eq!(r.status.unwrap().code, 0, "parsed_body must be absent");
    // A request larger than grpc-max-recv-msg-size is refused by the gRPC layer.
    req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().body = "x".repeat(4096);
    let e = check(&mut c, req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    let (_, m) = http(h.http_addr().unwrap(), "GET", "/metrics", None).await;
    assert!(m.contains("grpc_request_duration_seconds_count{handler=\"check\"} 1"), "{m}");
    h.shutdown().await;
}

fn parse_run(args: &[String]) -> sluice_authz::cli::RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(clap::Subcommand)]
    enum Top {
        Run(sluice_authz::cli::RunArgs),
    }
    let Top::Run(r) = Cli::try_parse_from(std::iter::once("x".to_string()).chain(args.iter().cloned())).unwrap().cmd;
    r
}

#[tokio::test]
async fn ext_authz_v2_api() {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
    let dir = TempDir::new("v2");
    let p = dir.write(
        "policy.rego",
        "package envoy.authz\n\nimport rego.v1\n\nallow := {\"allowed\": input.version.ext_authz == \"v2\", \"headers\": {\"x-api\": input.version.ext_authz}, \"response_headers_to_add\": {\"x-resp\": \"1\"}}\n",
    );
    let h = AuthzServer::start(Config::loopback(vec![p])).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.grpc_addr())).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.auth.v2.Authorization/Check");
    let codec = tonic_prost::ProstCodec::<CheckRequest, CheckResponse>::default();
    let r = grpc.unary(tonic::Request::new(check_request("GET", "http", "/", &[])), path, codec).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, 0);
    assert!(r.dynamic_metadata.is_none());
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else { panic!("no OK response") };
    assert_eq!(ok.headers[0].header.as_ref().unwrap().value, "v2");
    assert!(ok.response_headers_to_add.is_empty(), "v2 has no response_headers_to_add");
    // The same policy through v3 sees "v3".
    let mut c = client(h.grpc_addr()).await;
    let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 7);
    h.shutdown().await;
}

#[derive(Clone)]
struct UnixConnector(std::path::PathBuf);

impl tonic::codegen::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) })
    }
}

#[tokio::test]
async fn grpc_on_a_unix_socket() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let dir = TempDir::new("uds");
    let sock = dir.0.join("authz.sock");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let cfg = sluice_authz::cli::config_from_args(&parse_run(&[
        "run".into(),
        format!("--set=plugins.envoy_ext_authz_grpc.addr=unix://{}", sock.display()),
        "--addr=127.0.0.1:0".into(),
        fixture("guide_v0.rego").to_string_lossy().into_owned(),
    ]))
    .unwrap();
    let h = AuthzServer::start(cfg).await.unwrap();
    let channel = tonic::transport::Endpoint::from_static("http://uds").connect_with_connector(UnixConnector(sock.clone())).await.unwrap();
    let mut c = AuthorizationClient::new(channel);
    let r = c.check(check_request("GET", "http", "/", &[])).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, 0);
    h.shutdown().await;
}

/// The plugin's Kubernetes quick start: a config file, --addr, --diagnostic-addr, --ignore, and
/// the probes on the diagnostic address (ports 0 on loopback here).
#[tokio::test]
async fn kubernetes_quick_start_command_line() {
    let dir = TempDir::new("quickstart");
    let policy_dir = dir.0.join("policy");
    std::fs::create_dir_all(policy_dir.join(".hidden")).unwrap();
    std::fs::write(policy_dir.join("policy.rego"), "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n").unwrap();
    std::fs::write(policy_dir.join(".hidden").join("broken.rego"), "package nope\nx :=\n").unwrap();
    let config = dir.write(
        "config.yaml",
        "plugins:\n  envoy_ext_authz_grpc:\n    addr: 127.0.0.1:0\n    path: envoy/authz/allow\ndecision_logs:\n  console: true\n",
    );
    let cfg = sluice_authz::cli::config_from_args(&parse_run(&[
        "run".into(),
        "--server".into(),
        format!("--config-file={}", config.display()),
        "--addr=127.0.0.1:0".into(),
        "--diagnostic-addr=127.0.0.1:0".into(),
        "--ignore=.*".into(),
        policy_dir.to_string_lossy().into_owned(),
    ]))
    .unwrap();
    let h = AuthzServer::start(cfg).await.unwrap();
    let (s, _) = http(h.diagnostic_addr().unwrap(), "GET", "/health?plugins", None).await;
    assert_eq!(s, 200);
    let mut c = client(h.grpc_addr()).await;
    assert_eq!(check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap().status.unwrap().code, 0);
    h.shutdown().await;
}

/// A port free on every interface at the time of asking (the literal command lines below bind
/// `:PORT` and `0.0.0.0:PORT`, as the guide and the quick start do).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

/// The command lines exactly in the shapes the guide and the plugin's Kubernetes quick start
/// use — `--set=plugins.envoy_ext_authz_grpc.addr=:PORT` (all interfaces),
/// `--set=decision_logs.console=true`, `--log-format=json-pretty`; a config file with
/// `addr: :PORT`, `--addr=localhost:PORT`, `--diagnostic-addr=0.0.0.0:PORT`, `--ignore=.*`, a
/// policy directory — start, and answer over loopback (free ports instead of 9191/8181/8282).
#[tokio::test]
async fn guide_and_quick_start_literal_command_lines_start() {
    let dir = TempDir::new("literal-lines");
    let policy = dir.write("policy.rego", &std::fs::read_to_string(fixture("guide_v0.rego")).unwrap());

    // The guide: v0 policy, console decision logs, pretty logs, gRPC on all interfaces.
    let (g, a) = (free_port(), free_port());
    let cfg = sluice_authz::cli::config_from_args(&parse_run(&[
        "run".into(),
        "--server".into(),
        "--log-format=json-pretty".into(),
        format!("--set=plugins.envoy_ext_authz_grpc.addr=:{g}"),
        "--set=decision_logs.console=true".into(),
        format!("--addr=localhost:{a}"),
        policy.to_string_lossy().into_owned(),
    ]))
    .unwrap();
    assert_eq!(cfg.grpc_addr, format!("0.0.0.0:{g}").parse().unwrap());
    assert!(matches!(cfg.decision_log, sluice_authz::DecisionLogSink::Stdout));
    let h = AuthzServer::start(Config { decision_log: sluice_authz::DecisionLogSink::Off, ..cfg }).await.unwrap();
    let mut c = client(format!("127.0.0.1:{g}").parse().unwrap()).await;
    let r = check(&mut c, check_request("GET", "http", "/people", &[])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    let (s, _) = http(format!("127.0.0.1:{a}").parse().unwrap(), "GET", "/health", None).await;
    assert_eq!(s, 200);
    h.shutdown().await;

    // The quick start: config file (the plugin's shape), localhost API, diagnostic address on
    // all interfaces, hidden files ignored.
    let policy_dir = dir.0.join("policy");
    std::fs::create_dir_all(policy_dir.join(".hidden")).unwrap();
    std::fs::copy(&policy, policy_dir.join("policy.rego")).unwrap();
    std::fs::write(policy_dir.join(".hidden").join("broken.rego"), "package nope\nx :=\n").unwrap();
    let (g, a, d) = (free_port(), free_port(), free_port());
    let config = dir.write(
        "config.yaml",
        &format!("plugins:\n  envoy_ext_authz_grpc:\n    addr: :{g}\n    path: envoy/authz/allow\ndecision_logs:\n  console: true\n"),
    );
    let cfg = sluice_authz::cli::config_from_args(&parse_run(&[
        "run".into(),
        "--server".into(),
        format!("--config-file={}", config.display()),
        format!("--addr=localhost:{a}"),
        format!("--diagnostic-addr=0.0.0.0:{d}"),
        "--ignore=.*".into(),
        policy_dir.to_string_lossy().into_owned(),
    ]))
    .unwrap();
    assert_eq!(cfg.grpc_addr, format!("0.0.0.0:{g}").parse().unwrap());
    assert_eq!(cfg.diagnostic_addr, Some(format!("0.0.0.0:{d}").parse().unwrap()));
    let h = AuthzServer::start(Config { decision_log: sluice_authz::DecisionLogSink::Off, ..cfg }).await.unwrap();
    for probe in ["/health?plugins", "/health", "/metrics"] {
        let (s, _) = http(format!("127.0.0.1:{d}").parse().unwrap(), "GET", probe, None).await;
        assert_eq!(s, 200, "{probe}");
    }
    let mut c = client(format!("127.0.0.1:{g}").parse().unwrap()).await;
    let r = check(&mut c, check_request("GET", "http", "/people", &[])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    let r = check(&mut c, check_request("DELETE", "http", "/people", &[])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 7);
    h.shutdown().await;
}
