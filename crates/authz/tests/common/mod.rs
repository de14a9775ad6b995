//! Helpers shared by the integration tests: fixtures, temporary directories, requests, clients.
#![allow(dead_code)]

pub mod opa;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tonic::transport::Channel;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-authz-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        // Write to a side file and rename, so a poller never sees a half-written file.
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = p.with_file_name(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `CheckRequest` like Envoy sends for an HTTP request.
pub fn check_request(method: &str, scheme: &str, path: &str, extra: &[(&str, &str)]) -> CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    headers.insert(":method".into(), method.into());
    headers.insert(":path".into(), path.into());
    headers.insert(":scheme".into(), scheme.into());
    headers.insert(":authority".into(), "localhost:8000".into());
    headers.insert("x-forwarded-proto".into(), scheme.into());
    for (k, v) in extra {
        headers.insert((*k).into(), (*v).into());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: Some(envoy_types::pb::google::protobuf::Timestamp { seconds: 1_711_965_600, nanos: 123_456_000 }),
                http: Some(HttpRequest {
                    id: "16617514055874272263".into(),
                    method: method.into(),
                    headers,
                    path: path.into(),
                    host: "localhost:8000".into(),
                    scheme: scheme.into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            metadata_context: Some(Default::default()),
            ..Default::default()
        }),
    }
}

pub async fn client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}")).await.expect("connect")
}

pub async fn check(c: &mut AuthorizationClient<Channel>, req: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    c.check(req).await.map(|r| r.into_inner())
}

/// Headers of an OK response as (name, value) pairs.
pub fn ok_headers(r: &CheckResponse) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        _ => vec![],
    }
}

pub fn decision_id(r: &CheckResponse) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r.dynamic_metadata.as_ref().and_then(|m| m.fields.get("decision_id")).and_then(|v| v.kind.clone()) {
        Some(Kind::StringValue(s)) => s,
        other => panic!("no decision_id in dynamic metadata: {other:?}"),
    }
}

/// A writer that keeps everything written, for capturing the decision log.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A tiny HTTP/1.1 client over a raw socket: returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let (_, b) = text.split_once("\r\n\r\n").unwrap();
    (status, b.to_string())
}
