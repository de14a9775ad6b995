//! gRPC server reflection (`enable-reflection`) over a real socket, asked the way `grpcurl`
//! asks: list the services, fetch the file containing a symbol, then every file it imports by
//! name, and build a descriptor pool from the answers that describes the Check method.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{check_request, fixture};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use prost::Message;
use sluice_authz::{AuthzServer, Config};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

async fn start(enable_reflection: bool) -> (sluice_authz::server::Handle, Channel) {
    let cfg = Config { enable_reflection, http_addr: None, ..Config::loopback(vec![fixture("guide_v1.rego")]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let ch = tonic::transport::Endpoint::new(format!("http://{}", h.grpc_addr())).unwrap().connect().await.unwrap();
    (h, ch)
}

/// Sends `reqs` on one reflection stream (v1) and returns the answers in order.
async fn ask_v1(ch: &Channel, reqs: Vec<MessageRequest>) -> Vec<MessageResponse> {
    let n = reqs.len();
    let stream = tokio_stream::iter(
        reqs.into_iter().map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) }),
    );
    let mut answers = ServerReflectionClient::new(ch.clone()).server_reflection_info(stream).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = answers.message().await.unwrap() {
        let ServerReflectionResponse { message_response, .. } = r;
        out.push(message_response.expect("an answer"));
    }
    assert_eq!(out.len(), n);
    out
}

fn service_names(r: &MessageResponse) -> BTreeSet<String> {
    match r {
        MessageResponse::ListServicesResponse(l) => l.service.iter().map(|s| s.name.clone()).collect(),
        other => panic!("not a service list: {other:?}"),
    }
}

fn files(r: &MessageResponse) -> Vec<prost_types::FileDescriptorProto> {
    match r {
        MessageResponse::FileDescriptorResponse(f) => f
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .collect(),
        other => panic!("not a file descriptor answer: {other:?}"),
    }
}

#[tokio::test]
async fn lists_and_describes_the_authorization_service() {
    let (h, ch) = start(true).await;
    let want: BTreeSet<String> = [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = ask_v1(&ch, vec![MessageRequest::ListServices(String::new())]).await;
    assert_eq!(service_names(&r[0]), want);

    // grpcurl describe: the file containing the service, then its imports by name until
    // every import is known.
    let r = ask_v1(&ch, vec![MessageRequest::FileContainingSymbol("envoy.service.auth.v3.Authorization".into())]).await;
    let mut known: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    for f in files(&r[0]) {
        known.insert(f.name().to_string(), f);
    }
    assert!(known.contains_key("envoy/service/auth/v3/external_auth.proto"), "{:?}", known.keys());
    for _round in 0..50 {
        let missing: Vec<String> =
            known.values().flat_map(|f| f.dependency.iter().cloned()).filter(|d| !known.contains_key(d)).collect::<BTreeSet<_>>().into_iter().collect();
        if missing.is_empty() {
            break;
        }
        let answers = ask_v1(&ch, missing.iter().cloned().map(MessageRequest::FileByFilename).collect()).await;
        for a in &answers {
            for f in files(a) {
                known.insert(f.name().to_string(), f);
            }
        }
    }
    assert!(known.contains_key("envoy/service/auth/v3/attribute_context.proto"));
    assert!(known.contains_key("google/rpc/status.proto"));
    let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet { file: known.into_values().collect() })
        .expect("the served files form a complete descriptor pool");
    let svc = pool.get_service_by_name("envoy.service.auth.v3.Authorization").unwrap();
    let check = svc.methods().find(|m| m.name() == "Check").unwrap();
    assert_eq!(check.input().full_name(), "envoy.service.auth.v3.CheckRequest");
    assert_eq!(check.output().full_name(), "envoy.service.auth.v3.CheckResponse");
    let attrs = check.input().get_field_by_name("attributes").unwrap();
    assert_eq!(attrs.kind().as_message().unwrap().full_name(), "envoy.service.auth.v3.AttributeContext");
    // The pool describes the very bytes the server decodes: a CheckRequest encoded by the
    // generated types round-trips through a dynamic message of the served descriptor.
    let req = check_request("GET", "http", "/people", &[]);
    let dynamic = prost_reflect::DynamicMessage::decode(check.input(), req.encode_to_vec().as_slice()).unwrap();
    let back = envoy_types::pb::envoy::service::auth::v3::CheckRequest::decode(dynamic.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, req);
    assert!(dynamic.has_field_by_name("attributes"));

    // Other symbols: a nested message, a method, the health service.
    let r = ask_v1(
        &ch,
        vec![
            MessageRequest::FileContainingSymbol("envoy.service.auth.v3.AttributeContext.HttpRequest".into()),
            MessageRequest::FileContainingSymbol("envoy.service.auth.v3.Authorization.Check".into()),
            MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        ],
    )
    .await;
    assert_eq!(files(&r[0])[0].name(), "envoy/service/auth/v3/attribute_context.proto");
    assert_eq!(files(&r[1])[0].name(), "envoy/service/auth/v3/external_auth.proto");
    assert_eq!(files(&r[2])[0].name(), "grpc/health/v1/health.proto");
    // An unknown symbol or file is NOT_FOUND (tonic's reflection ends the stream with that
    // status, where grpc-go answers an error_response message and keeps the stream open).
    for m in [MessageRequest::FileContainingSymbol("no.such.Service".into()), MessageRequest::FileByFilename("no/such.proto".into())] {
        let stream = tokio_stream::iter(vec![ServerReflectionRequest { host: String::new(), message_request: Some(m) }]);
        let mut answers = ServerReflectionClient::new(ch.clone()).server_reflection_info(stream).await.unwrap().into_inner();
        match answers.message().await {
            Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{e}"),
            Ok(Some(ServerReflectionResponse { message_response: Some(MessageResponse::ErrorResponse(e)), .. })) => {
                assert_eq!(e.error_code, tonic::Code::NotFound as i32)
            }
            Ok(other) => panic!("expected NOT_FOUND, got {other:?}"),
        }
    }

    // v1alpha answers the same list.
    use tonic_reflection::pb::v1alpha as alpha;
    let stream = tokio_stream::iter(vec![alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    }]);
    let mut s = alpha::server_reflection_client::ServerReflectionClient::new(ch.clone()).server_reflection_info(stream).await.unwrap().into_inner();
    match s.message().await.unwrap().unwrap().message_response.unwrap() {
        alpha::server_reflection_response::MessageResponse::ListServicesResponse(l) => {
            assert_eq!(l.service.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>(), want)
        }
        other => panic!("not a service list: {other:?}"),
    }

    // Decisions on the same connection are unaffected.
    let resp = AuthorizationClient::new(ch.clone()).check(check_request("GET", "http", "/people", &[])).await.unwrap().into_inner();
    assert!(resp.status.is_some());
    h.shutdown().await;
}

#[tokio::test]
async fn off_by_default() {
    let (h, ch) = start(false).await;
    let stream = tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]);
    let e = ServerReflectionClient::new(ch).server_reflection_info(stream).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    h.shutdown().await;
}
