//! A bundle served over HTTP (a bundle server inside the test, on a loopback port) is picked
//! up, re-polled with ETags, swapped under load without a failed decision, and a broken
//! bundle leaves the last good one serving.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use sluice_authz::bundle::{tar_gz, Verification};
use sluice_authz::bundle_service::{RemoteBundle, Service};
use sluice_authz::{AuthzServer, Config, DecisionLogSink};

struct Served {
    bytes: Vec<u8>,
    etag: String,
}

#[derive(Default)]
struct Counts {
    full: AtomicU64,
    not_modified: AtomicU64,
}

fn bundle(revision: &str, policy: &str) -> Vec<u8> {
    let mut f = BTreeMap::new();
    f.insert(".manifest".to_string(), format!(r#"{{"revision": "{revision}", "roots": ["envoy"]}}"#).into_bytes());
    f.insert("envoy/authz/policy.rego".to_string(), policy.as_bytes().to_vec());
    tar_gz(&f).unwrap()
}

const V1: &str = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n";
const V2: &str = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.attributes.request.http.method in {\"GET\", \"POST\"}\n";

async fn bundle_server(state: Arc<Mutex<Served>>, counts: Arc<Counts>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (state, counts) = (state.clone(), counts.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (state, counts) = (state.clone(), counts.clone());
                    async move {
                        let st = state.lock().unwrap();
                        let resp = if req.uri().path() != "/bundles/authz.tar.gz" {
                            http::Response::builder().status(404).body(Full::new(Bytes::new())).unwrap()
                        } else if req.headers().get("if-none-match").and_then(|v| v.to_str().ok()) == Some(st.etag.as_str()) {
                            counts.not_modified.fetch_add(1, Ordering::Relaxed);
                            http::Response::builder().status(304).body(Full::new(Bytes::new())).unwrap()
                        } else {
                            counts.full.fetch_add(1, Ordering::Relaxed);
                            http::Response::builder().status(200).header("etag", st.etag.clone()).body(Full::new(Bytes::from(st.bytes.clone()))).unwrap()
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
async fn http_bundle_is_activated_and_swapped_under_load() {
    let state = Arc::new(Mutex::new(Served { bytes: bundle("v1", V1), etag: "\"e1\"".into() }));
    let counts = Arc::new(Counts::default());
    let server = bundle_server(state.clone(), counts.clone()).await;
    let log = Capture::default();
    let cfg = Config {
        remote_bundles: vec![RemoteBundle {
            name: "authz".into(),
            service: Service { url: format!("http://{server}"), headers: vec![], bearer: None },
            resource: "bundles/authz.tar.gz".into(),
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            verification: Verification::default(),
        }],
        decision_log: DecisionLogSink::Writer(Arc::new(Mutex::new(log.clone()))),
        watch_interval: None,
        ..Config::loopback(vec![])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let http_addr = h.http_addr().unwrap();

    // Ready once the bundle is activated.
    let started = Instant::now();
    loop {
        let (s, _) = http(http_addr, "GET", "/health?bundles", None).await;
        if s == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "bundle never activated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = client(h.grpc_addr()).await;
    assert_eq!(check(&mut c, check_request("POST", "http", "/", &[])).await.unwrap().status.unwrap().code, 7);

    // Load: four clients alternate GET and POST; every answer must be a decision (no error),
    // GET always allowed, POST denied before the swap and allowed after.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failures, answered, addr) = (stop.clone(), failures.clone(), answered.clone(), h.grpc_addr());
        load.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let t = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) && i < 100_000 {
                let method = if i.is_multiple_of(2) { "GET" } else { "POST" };
                match check(&mut c, check_request(method, "http", "/", &[])).await {
                    Ok(r) if method == "GET" && r.status.as_ref().unwrap().code != 0 => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                answered.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(counts.not_modified.load(Ordering::Relaxed) > 0, "the poller must send If-None-Match and get 304s");

    // Swap to v2 under load.
    *state.lock().unwrap() = Served { bytes: bundle("v2", V2), etag: "\"e2\"".into() };
    let started = Instant::now();
    loop {
        let r = check(&mut c, check_request("POST", "http", "/", &[])).await.unwrap();
        if r.status.unwrap().code == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "v2 never activated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken v3 is refused; v2 keeps serving.
    *state.lock().unwrap() = Served { bytes: bundle("v3", "package envoy.authz\nallow := \n"), etag: "\"e3\"".into() };
    let full_before = counts.full.load(Ordering::Relaxed);
    let started = Instant::now();
    while counts.full.load(Ordering::Relaxed) < full_before + 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "v3 never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check(&mut c, check_request("POST", "http", "/", &[])).await.unwrap().status.unwrap().code, 0);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed decisions during the swaps");
    assert!(answered.load(Ordering::Relaxed) > 50, "load too small: {}", answered.load(Ordering::Relaxed));
    let (_, status) = http(http_addr, "GET", "/v1/status", None).await;
    assert!(status.contains("\"active_revision\":\"v2\""), "{status}");
    assert!(log.text().contains("\"bundles\":{\"authz\":{\"revision\":\"v2\"}}"), "decision log without the bundle revision");
    h.shutdown().await;
}
