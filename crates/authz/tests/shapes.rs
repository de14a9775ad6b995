//! Every result shape of OPA's envoy plugin → the expected CheckResponse, over gRPC.

mod common;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::google::protobuf::value::Kind;
use sluice_authz::{AuthzServer, Config};

#[allow(deprecated)]
fn pairs(h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]) -> Vec<(String, String)> {
    h.iter()
        .map(|o| {
            assert!(o.append.is_none(), "append must stay unset");
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect()
}

fn p(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[tokio::test]
async fn result_shape_table() {
    let cfg = Config::loopback(vec![fixture("shapes.rego"), fixture("shapes.json")]);
    let h = AuthzServer::start(cfg).await.unwrap();
    let c = client(h.grpc_addr()).await;
    let run = |case: &'static str| {
        let req = check_request("GET", "http", "/", &[("x-case", case)]);
        let mut c = c.clone();
        async move { check(&mut c, req).await }
    };

    // true → OK, no http_response.
    let r: CheckResponse = run("true").await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    assert!(r.http_response.is_none());
    assert_eq!(r.dynamic_metadata.as_ref().unwrap().fields.len(), 1);
    decision_id(&r);

    // false → PERMISSION_DENIED, no http_response.
    let r = run("false").await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    assert!(r.http_response.is_none());
    decision_id(&r);

    // {allowed: true, …} → OkHttpResponse with every field.
    let r = run("allow-object").await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("{r:?}") };
    let mut hs = pairs(&ok.headers);
    hs.sort();
    assert_eq!(hs, vec![p("x-multi", "a"), p("x-multi", "b"), p("x-user", "alice")]);
    assert_eq!(ok.headers_to_remove, vec!["x-secret"]);
    assert_eq!(pairs(&ok.response_headers_to_add), vec![p("x-resp", "1"), p("x-resp2", "2")]);
    assert_eq!(ok.query_parameters_to_set.len(), 1);
    assert_eq!((ok.query_parameters_to_set[0].key.as_str(), ok.query_parameters_to_set[0].value.as_str()), ("added", "1"));
    assert_eq!(ok.query_parameters_to_remove, vec!["drop"]);
    let md = &r.dynamic_metadata.as_ref().unwrap().fields;
    assert_eq!(md["tier"].kind, Some(Kind::StringValue("gold".into())));
    assert_eq!(md["score"].kind, Some(Kind::NumberValue(3.0)));
    decision_id(&r);

    // {allowed: false, http_status, body, headers} → DeniedHttpResponse.
    let r = run("deny-object").await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
    assert_eq!(d.status.as_ref().unwrap().code, 401);
    assert_eq!(d.body, "login first");
    assert_eq!(pairs(&d.headers), vec![p("www-authenticate", "Bearer")]);
    decision_id(&r);

    // {allowed: false} → 403, empty body.
    let r = run("deny-default").await.unwrap();
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
    assert_eq!(d.status.as_ref().unwrap().code, 403);
    assert!(d.body.is_empty() && d.headers.is_empty());

    // Invalid shapes → gRPC UNKNOWN.
    for case in ["bad-status", "no-allowed", "a-string"] {
        let e = run(case).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unknown, "{case}: {e:?}");
    }
    let e = run("bad-status").await.unwrap_err();
    assert!(e.message().contains("999"), "{}", e.message());

    // Undefined → gRPC UNKNOWN "undefined decision".
    let e = run("no-such-case").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unknown);
    assert_eq!(e.message(), "undefined decision");
    h.shutdown().await;
}

#[tokio::test]
async fn bad_json_body_is_an_error() {
    // OPA 0.63: an input build error is a gRPC error too.
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut req = check_request("POST", "https", "/", &[("content-type", "application/json")]);
    req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().body = "{oops".into();
    let e = check(&mut c, req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unknown);
    h.shutdown().await;
}

#[tokio::test]
async fn dry_run_answers_ok() {
    let cfg = Config { dry_run: true, ..Config::loopback(vec![fixture("guide_v0.rego")]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let r = check(&mut c, check_request("POST", "http", "/", &[])).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
    h.shutdown().await;
}
