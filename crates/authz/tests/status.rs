//! The status plugin: reports POSTed to `<service>/status/<partition>` at start and again when
//! a bundle is activated, each equal to `GET /v1/status` at that time; a failing status
//! service does not stop the server, and the report is retried.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::Value as Json;
use sluice_authz::bundle::{tar_gz, Verification};
use sluice_authz::bundle_service::{RemoteBundle, Service};
use sluice_authz::status::StatusConfig;
use sluice_authz::{AuthzServer, Config};

const POLICY: &str = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n";

#[derive(Default)]
struct Seen {
    reports: Mutex<Vec<(String, Json)>>,
    /// Answer 500 to this many status uploads first.
    fail_first: AtomicU64,
}

async fn server(seen: Arc<Seen>, bundle: Vec<u8>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (seen, bundle) = (seen.clone(), bundle.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, bundle) = (seen.clone(), bundle.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let resp = if path == "/bundles/authz.tar.gz" {
                            http::Response::builder().status(200).body(Full::new(Bytes::from(bundle))).unwrap()
                        } else if req.method() == http::Method::POST && path.starts_with("/status") {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if seen.fail_first.load(Ordering::Relaxed) > 0 {
                                seen.fail_first.fetch_sub(1, Ordering::Relaxed);
                                http::Response::builder().status(500).body(Full::new(Bytes::new())).unwrap()
                            } else {
                                seen.reports.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap()));
                                http::Response::builder().status(200).body(Full::new(Bytes::new())).unwrap()
                            }
                        } else {
                            http::Response::builder().status(404).body(Full::new(Bytes::new())).unwrap()
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn status_reports_are_uploaded_on_start_and_change() {
    let mut files = BTreeMap::new();
    files.insert(".manifest".to_string(), br#"{"revision": "rev-7", "roots": ["envoy"]}"#.to_vec());
    files.insert("envoy/authz/policy.rego".to_string(), POLICY.as_bytes().to_vec());
    let seen = Arc::new(Seen { fail_first: AtomicU64::new(1), ..Default::default() });
    let addr = server(seen.clone(), tar_gz(&files).unwrap()).await;
    let service = Service { url: format!("http://{addr}"), headers: vec![], bearer: None };
    let cfg = Config {
        remote_bundles: vec![RemoteBundle {
            name: "authz".into(),
            service: service.clone(),
            resource: "bundles/authz.tar.gz".into(),
            min_delay: Duration::from_millis(300),
            max_delay: Duration::from_millis(400),
            verification: Verification::default(),
        }],
        status: Some(StatusConfig { service: Some(service), partition: Some("edge".into()), console: false }),
        watch_interval: None,
        ..Config::loopback(vec![])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let started = Instant::now();
    let last = loop {
        let got = seen.reports.lock().unwrap().clone();
        if let Some(r) = got.iter().find(|(_, r)| r["bundles"]["authz"]["active_revision"] == "rev-7") {
            break (r.clone(), got.len());
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no status report with the activated bundle: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ((path, report), count) = last;
    assert_eq!(path, "/status/edge");
    assert_eq!(seen.fail_first.load(Ordering::Relaxed), 0, "the failed upload was retried");
    assert!(report["labels"]["id"].as_str().is_some_and(|s| !s.is_empty()), "{report}");
    assert_eq!(report["plugins"]["envoy_ext_authz_grpc"]["state"], "OK");
    let (s, body) = http(h.http_addr().unwrap(), "GET", "/v1/status", None).await;
    assert_eq!(s, 200);
    let api: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(api["result"], report, "the upload is GET /v1/status");
    // No change, no new report.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(seen.reports.lock().unwrap().len(), count, "a report is sent only when it changes");
    h.shutdown().await;
}
