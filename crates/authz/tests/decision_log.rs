//! The decision log's shape, captured through an injected writer.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use sluice_authz::{AuthzServer, Config, DecisionLogSink, LogFormat};

fn entries(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map(|v| v.unwrap())
        .collect()
}

#[tokio::test]
async fn decision_log_shape_pretty() {
    let cap = Capture::default();
    let cfg = Config {
        decision_log: DecisionLogSink::Writer(Arc::new(Mutex::new(cap.clone()))),
        log_format: LogFormat::JsonPretty,
        ..Config::loopback(vec![fixture("guide_v0.rego")])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let ok = check(&mut c, check_request("GET", "http", "/service?x=1", &[])).await.unwrap();
    let denied = check(&mut c, check_request("POST", "http", "/service", &[])).await.unwrap();

    let text = cap.text();
    // Pretty-printed: a multi-line object with a 2-space indent.
    assert!(text.starts_with("{\n  \"decision_id\": "), "{text}");
    let es = entries(&text);
    assert_eq!(es.len(), 2, "{text}");

    let e = &es[0];
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec!["decision_id", "input", "labels", "level", "metrics", "msg", "path", "result", "time", "timestamp", "type"]
    );
    assert_eq!(e["decision_id"], decision_id(&ok).as_str());
    assert_eq!(e["path"], "envoy/authz/allow");
    assert_eq!(e["level"], "info");
    assert_eq!(e["msg"], "Decision Log");
    assert_eq!(e["type"], "openpolicyagent.org/decision_logs");
    assert_eq!(e["result"], serde_json::json!({"allowed": true, "headers": {"x-current-user": "OPA"}}));
    assert_eq!(e["labels"]["version"], "0.63.0-envoy");
    assert_eq!(e["labels"]["id"].as_str().unwrap().len(), 36);
    assert!(e["metrics"]["timer_rego_query_eval_ns"].as_u64().is_some());
    assert!(e["metrics"]["timer_server_handler_ns"].as_u64().unwrap() >= e["metrics"]["timer_rego_query_eval_ns"].as_u64().unwrap());
    assert!(e["metrics"]["timer_rego_query_compile_ns"].as_u64().is_some(), "first decision after a load");
    let t = e["timestamp"].as_str().unwrap();
    assert!(t.ends_with('Z') && t.contains('T') && t.len() > 20, "{t}");
    assert_eq!(e["time"].as_str().unwrap().len(), 20);

    // The input as OPA 0.63 builds it.
    let input = &e["input"];
    assert_eq!(input["parsed_path"], serde_json::json!(["service"]));
    assert_eq!(input["parsed_query"], serde_json::json!({"x": ["1"]}));
    assert_eq!(input["parsed_body"], serde_json::Value::Null);
    assert_eq!(input["truncated_body"], false);
    assert_eq!(input["version"], serde_json::json!({"encoding": "protojson", "ext_authz": "v3"}));
    assert_eq!(input["attributes"]["metadataContext"], serde_json::json!({}));
    assert_eq!(input["attributes"]["request"]["time"], "2024-04-01T10:00:00.123456Z");
    assert_eq!(input["attributes"]["request"]["http"]["headers"][":method"], "GET");

    let e = &es[1];
    assert_eq!(e["decision_id"], decision_id(&denied).as_str());
    assert_eq!(e["result"], false);
    assert!(e["metrics"].get("timer_rego_query_compile_ns").is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn decision_log_errors_and_one_line_json() {
    let cap = Capture::default();
    let cfg = Config {
        decision_log: DecisionLogSink::Writer(Arc::new(Mutex::new(cap.clone()))),
        log_format: LogFormat::Json,
        decision_path: "envoy/authz/missing".into(),
        ..Config::loopback(vec![fixture("guide_v0.rego")])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let err = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap_err();
    assert_eq!(err.message(), "undefined decision");
    let text = cap.text();
    assert_eq!(text.lines().count(), 1, "one line per entry: {text}");
    let e: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(e["error"], serde_json::json!({"message": "undefined decision"}));
    assert!(e.get("result").is_none());
    assert!(e["input"].is_object());
    assert_eq!(e["path"], "envoy/authz/missing");
    h.shutdown().await;
}

#[tokio::test]
async fn decision_log_off_writes_nothing() {
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn mask_policy_erases_and_masks_and_labels_are_added() {
    let dir = TempDir::new("mask");
    let p = dir.write("policy.rego", "package envoy.authz\n\nimport rego.v1\n\nallow if input.attributes.request.http.method == \"GET\"\n");
    let m = dir.write(
        "mask.rego",
        "package system.log\n\nimport rego.v1\n\nmask contains \"/input/attributes/request/http/headers/authorization\"\n\nmask contains {\"op\": \"upsert\", \"path\": \"/input/parsed_path\", \"value\": [\"***\"]}\n",
    );
    let cap = Capture::default();
    let cfg = Config {
        decision_log: DecisionLogSink::Writer(Arc::new(Mutex::new(cap.clone()))),
        labels: vec![("app".into(), "shop".into())],
        ..Config::loopback(vec![p, m])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    check(&mut c, check_request("GET", "http", "/secret/path", &[("authorization", "Bearer xyz")])).await.unwrap();
    let text = cap.text();
    assert!(!text.contains("Bearer xyz"), "{text}");
    let e = &entries(&text)[0];
    assert_eq!(e["erased"], serde_json::json!(["/input/attributes/request/http/headers/authorization"]));
    assert_eq!(e["masked"], serde_json::json!(["/input/parsed_path"]));
    assert_eq!(e["input"]["parsed_path"], serde_json::json!(["***"]));
    assert_eq!(e["labels"]["app"], "shop");
    h.shutdown().await;
}

/// A decision log service inside the test: the first upload fails (500), later ones are
/// stored; each body must be a gzip-compressed JSON array of events.
#[tokio::test]
async fn decisions_are_uploaded_to_a_service() {
    use std::io::Read as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    use http_body_util::BodyExt;
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    {
        let (received, calls) = (received.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let (received, calls) = (received.clone(), calls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (received, calls) = (received.clone(), calls.clone());
                        async move {
                            let n = calls.fetch_add(1, Ordering::Relaxed);
                            let gz = req.headers().get("content-encoding").is_some_and(|v| v == "gzip");
                            let path_ok = req.uri().path() == "/logs";
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = if n == 0 || !gz || !path_ok {
                                500
                            } else {
                                let mut text = String::new();
                                flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).unwrap();
                                let v: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                                received.lock().unwrap().extend(v);
                                200
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                });
            }
        });
    }
    let tree = serde_json::json!({
        "services": {"logs": {"url": format!("http://{addr}")}},
        "decision_logs": {"service": "logs", "reporting": {"min_delay_seconds": 0.05, "max_delay_seconds": 0.1}}
    });
    let cfg = Config {
        decision_upload: sluice_authz::decision_upload::from_config(&tree).unwrap(),
        ..Config::loopback(vec![fixture("guide_v0.rego")])
    };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
        ids.push(decision_id(&r));
    }
    let started = std::time::Instant::now();
    while received.lock().unwrap().len() < 5 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "uploads never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = received.lock().unwrap().clone();
    let got_ids: Vec<&str> = got.iter().map(|e| e["decision_id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>(), "every decision once, in order (the failed upload was retried)");
    assert!(got[0].get("msg").is_none() && got[0].get("level").is_none(), "{}", got[0]);
    assert_eq!(got[0]["path"], "envoy/authz/allow");
    assert!(calls.load(Ordering::Relaxed) >= 2);
    h.shutdown().await;
}
