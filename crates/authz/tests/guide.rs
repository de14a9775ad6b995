//! The guide's decisions over real gRPC, for a Rego v0 and a Rego v1 policy; health and REST.

mod common;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use sluice_authz::{AuthzServer, Config};

async fn guide_decisions(policy: &str) {
    let h = AuthzServer::start(Config::loopback(vec![fixture(policy)])).await.unwrap();
    let mut c = client(h.grpc_addr()).await;

    // GET → OK, header x-current-user: OPA set upstream.
    let r = check(&mut c, check_request("GET", "http", "/service", &[])).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{policy}: GET");
    assert_eq!(ok_headers(&r), vec![("x-current-user".to_string(), "OPA".to_string())]);
    assert!(!decision_id(&r).is_empty());

    // POST over http → PERMISSION_DENIED, no HTTP response (Envoy answers a bare 403).
    let r = check(&mut c, check_request("POST", "http", "/service", &[])).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 7, "{policy}: POST http");
    assert!(r.http_response.is_none(), "{policy}: {r:?}");
    assert!(!decision_id(&r).is_empty());

    // POST over https → OK with the header.
    let r = check(&mut c, check_request("POST", "https", "/service", &[])).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{policy}: POST https");
    assert_eq!(ok_headers(&r), vec![("x-current-user".to_string(), "OPA".to_string())]);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("{r:?}") };
    assert!(ok.headers_to_remove.is_empty());

    // Another method → the default false.
    let r = check(&mut c, check_request("DELETE", "https", "/service", &[])).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    h.shutdown().await;
}

#[tokio::test]
async fn guide_policy_v0() {
    guide_decisions("guide_v0.rego").await;
}

#[tokio::test]
async fn guide_policy_v1() {
    guide_decisions("guide_v1.rego").await;
}

#[tokio::test]
async fn forced_versions() {
    // The v1 text loads with --v1; the v0 text does not.
    let cfg = |p: &str, v| Config { rego_version: v, ..Config::loopback(vec![fixture(p)]) };
    let h = AuthzServer::start(cfg("guide_v1.rego", sluice_authz::RegoVersion::V1)).await.unwrap();
    h.shutdown().await;
    let e = AuthzServer::start(cfg("guide_v0.rego", sluice_authz::RegoVersion::V1)).await.unwrap_err();
    assert!(format!("{e:#}").contains("guide_v0.rego:"), "{e:#}");
}

#[tokio::test]
async fn grpc_health_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let ch = tonic::transport::Endpoint::new(format!("http://{}", h.grpc_addr())).unwrap().connect().await.unwrap();
    let mut hc = HealthClient::new(ch);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let r = hc.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = hc.check(HealthCheckRequest { service: "nope".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    h.shutdown().await;
}

#[tokio::test]
async fn rest_api() {
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let addr = h.http_addr().unwrap();

    let (st, body) = http(addr, "GET", "/health", None).await;
    assert_eq!((st, body.trim()), (200, "{}"));

    let input = r#"{"input":{"attributes":{"request":{"http":{"method":"GET","headers":{}}}}}}"#;
    let (st, body) = http(addr, "POST", "/v1/data/envoy/authz/allow", Some(input)).await;
    assert_eq!(st, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j, serde_json::json!({"result": {"allowed": true, "headers": {"x-current-user": "OPA"}}}));

    let post = r#"{"input":{"attributes":{"request":{"http":{"method":"POST","headers":{":scheme":"http"}}}}}}"#;
    let (_, body) = http(addr, "POST", "/v1/data/envoy/authz/allow", Some(post)).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::json!({"result": false}));

    // Undefined → {} (no result key).
    let (st, body) = http(addr, "POST", "/v1/data/envoy/authz/nothing", Some(input)).await;
    assert_eq!((st, body.trim()), (200, "{}"));

    // GET without input: the default.
    let (st, body) = http(addr, "GET", "/v1/data/envoy/authz/allow", None).await;
    assert_eq!(st, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::json!({"result": false}));

    // GET with ?input=
    let q = "/v1/data/envoy/authz/allow?input=%7B%22attributes%22%3A%7B%22request%22%3A%7B%22http%22%3A%7B%22method%22%3A%22GET%22%7D%7D%7D%7D";
    let (_, body) = http(addr, "GET", q, None).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["result"]["allowed"], true);

    // A package path gives the package document.
    let (_, body) = http(addr, "GET", "/v1/data/envoy/authz", None).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["result"]["allow"], false);

    let (st, _) = http(addr, "POST", "/v1/data/envoy/authz/allow", Some("{nope")).await;
    assert_eq!(st, 400);
    let (st, _) = http(addr, "GET", "/nowhere", None).await;
    assert_eq!(st, 404);
    h.shutdown().await;
}

#[tokio::test]
async fn input_document_reaches_the_policy() {
    // parsed_path, parsed_query and parsed_body are visible to policies.
    let dir = TempDir::new("input");
    let p = dir.write(
        "echo.rego",
        "package echo\nimport rego.v1\nallow := {\"allowed\": true, \"dynamic_metadata\": {\n  \"path\": input.parsed_path, \"query\": input.parsed_query,\n  \"body\": input.parsed_body, \"truncated\": input.truncated_body,\n  \"size\": input.attributes.request.http.size, \"time\": input.attributes.request.time,\n  \"version\": input.version}}\n",
    );
    let cfg = Config { decision_path: "echo/allow".into(), ..Config::loopback(vec![p]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut req = check_request("POST", "https", "/a/b%20c?x=1&x=2", &[("content-type", "application/json")]);
    {
        let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
        http.body = r#"{"k":[1,2]}"#.into();
        http.size = 11;
    }
    let r = check(&mut c, req).await.unwrap();
    let md = r.dynamic_metadata.unwrap();
    let j = |k: &str| {
        let v = &md.fields[k];
        serde_json::to_value(proto_json(v)).unwrap()
    };
    assert_eq!(j("path"), serde_json::json!(["a", "b c"]));
    assert_eq!(j("query"), serde_json::json!({"x": ["1", "2"]}));
    assert_eq!(j("body"), serde_json::json!({"k": [1.0, 2.0]}));
    assert_eq!(j("truncated"), serde_json::json!(false));
    assert_eq!(j("size"), serde_json::json!("11"));
    assert_eq!(j("time"), serde_json::json!("2024-04-01T10:00:00.123456Z"));
    assert_eq!(j("version"), serde_json::json!({"encoding": "protojson", "ext_authz": "v3"}));
    h.shutdown().await;
}

fn proto_json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => serde_json::json!(s),
        Some(Kind::BoolValue(b)) => serde_json::json!(b),
        Some(Kind::StructValue(s)) => {
            serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), proto_json(v))).collect())
        }
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(proto_json).collect()),
    }
}

#[tokio::test]
async fn directories_data_files_and_file_decision_log() {
    // A directory: policies anywhere below it, data namespaced by sub-directory.
    let dir = TempDir::new("dir");
    std::fs::create_dir_all(dir.0.join("users")).unwrap();
    dir.write("policy.rego", "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if data.users.admins[input.attributes.request.http.headers[\"x-user\"]]\n");
    dir.write("users/data.yaml", "admins:\n  alice: true\n");
    let log = TempDir::new("log");
    let log_file = log.0.join("decisions.log");
    let cfg = Config {
        decision_log: sluice_authz::DecisionLogSink::File(log_file.clone()),
        ..Config::loopback(vec![dir.0.clone()])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let r = check(&mut c, check_request("GET", "http", "/", &[("x-user", "alice")])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    let r = check(&mut c, check_request("GET", "http", "/", &[("x-user", "mallory")])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 7);
    h.shutdown().await;
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.contains("\"msg\":\"Decision Log\"")));
}
