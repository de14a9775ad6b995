//! OPA's HTTP API: `/v1/data` (GET/POST, and PUT/PATCH/DELETE of runtime data),
//! `/v1/policies`, `POST /` (the default decision `data.system.main`), `/v1/query`,
//! `/v1/config`, `/v1/status`, `/health` (with `?bundles`, `?plugins`, `/health/live`,
//! `/health/ready` and `/health/<rule>`), and `/metrics` (Prometheus text, OPA's names).
//! The diagnostic listener (`--diagnostic-addr`) serves only `/health*` and `/metrics`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use regorus::Value;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::decision_log::value_json;
use crate::server::{apply_op, Authorizer, DataOp};

type HttpBody = Full<Bytes>;

/// Exponential buckets 1 µs … ~2 s (×5), as the envoy plugin's defaults.
const BUCKETS: [f64; 10] = [1e-6, 5e-6, 2.5e-5, 1.25e-4, 6.25e-4, 3.125e-3, 1.5625e-2, 7.8125e-2, 0.390625, 1.953125];
/// The bucket bounds as Go's Prometheus client prints them (`%g`).
const BUCKET_LABELS: [&str; 10] = ["1e-06", "5e-06", "2.5e-05", "0.000125", "0.000625", "0.003125", "0.015625", "0.078125", "0.390625", "1.953125"];

/// A lock-free Prometheus histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKET_LABELS.iter().enumerate() {
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}\n", self.buckets[i].load(Ordering::Relaxed)));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}\n"));
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        out.push_str(&format!("{name}_sum{braces} {sum}\n{name}_count{braces} {count}\n"));
    }
}

/// The metrics `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    http: Mutex<BTreeMap<(String, String, String), Arc<Histogram>>>,
    /// `grpc_request_duration_seconds{handler="check"}` (with `enable-performance-metrics`).
    pub grpc: Option<Histogram>,
    /// `error_counter{reason}` (with `enable-performance-metrics`).
    grpc_errors: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// `performance`: the plugin's `enable-performance-metrics`.
    pub fn new(performance: bool) -> Self {
        Metrics { http: Mutex::default(), grpc: performance.then(Histogram::default), grpc_errors: Mutex::default() }
    }

    fn http(&self, handler: &str, code: u16, method: &str, d: Duration) {
        let h = self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((code.to_string(), handler.to_string(), method.to_lowercase()))
            .or_default()
            .clone();
        h.observe(d);
    }

    /// Records one `Check` (with `enable-performance-metrics`).
    pub fn grpc_check(&self, d: Duration, error: Option<&str>) {
        if let Some(h) = &self.grpc {
            h.observe(d);
            if let Some(reason) = error {
                *self.grpc_errors.lock().unwrap_or_else(|p| p.into_inner()).entry(reason.to_string()).or_default() += 1;
            }
        }
    }

    fn render(&self, a: &Authorizer) -> String {
        let mut out = String::new();
        out.push_str("# HELP http_request_duration_seconds A histogram of duration for requests.\n# TYPE http_request_duration_seconds histogram\n");
        for ((code, handler, method), h) in self.http.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.render("http_request_duration_seconds", &format!("code=\"{code}\",handler=\"{handler}\",method=\"{method}\""), &mut out);
        }
        if let Some(g) = &self.grpc {
            out.push_str("# HELP grpc_request_duration_seconds A histogram of duration for grpc authz requests.\n# TYPE grpc_request_duration_seconds histogram\n");
            g.render("grpc_request_duration_seconds", "handler=\"check\"", &mut out);
            out.push_str("# HELP error_counter A counter for errors\n# TYPE error_counter counter\n");
            for (reason, n) in self.grpc_errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                out.push_str(&format!("error_counter{{reason=\"{reason}\"}} {n}\n"));
            }
        }
        let (panics, limits, errors) = a.failed_decisions();
        out.push_str("# HELP sluice_authz_failed_evaluations_total Evaluations that failed, by kind (panic: isolated engine panic; limit: time or size bound; error: other evaluation errors).\n# TYPE sluice_authz_failed_evaluations_total counter\n");
        out.push_str(&format!("sluice_authz_failed_evaluations_total{{kind=\"panic\"}} {panics}\n"));
        out.push_str(&format!("sluice_authz_failed_evaluations_total{{kind=\"limit\"}} {limits}\n"));
        out.push_str(&format!("sluice_authz_failed_evaluations_total{{kind=\"error\"}} {errors}\n"));
        out
    }
}

/// Serves the HTTP API (or, with `diagnostic`, only health and metrics) until shutdown.
pub(crate) async fn serve(listener: TcpListener, a: Arc<Authorizer>, mut rx: watch::Receiver<bool>, diagnostic: bool) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = rx.wait_for(|s| *s).await; } => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let a = a.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let a = a.clone();
                async move {
                    let started = Instant::now();
                    let method = req.method().to_string();
                    let (handler, resp) = handle(req, &a, peer, diagnostic).await;
                    a.metrics.http(handler, resp.status().as_u16(), &method, started.elapsed());
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, svc).await;
        });
    }
}

fn json_response(status: u16, body: &Json, pretty: bool) -> http::Response<HttpBody> {
    let text = if pretty { serde_json::to_string_pretty(body) } else { serde_json::to_string(body) }.unwrap_or_default();
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text + "\n")))
        .expect("valid response")
}

fn empty(status: u16) -> http::Response<HttpBody> {
    http::Response::builder().status(status).body(Full::new(Bytes::new())).expect("valid response")
}

fn api_error(status: u16, code: &str, message: &str) -> http::Response<HttpBody> {
    json_response(status, &json!({"code": code, "message": message}), false)
}

/// All values of a query parameter (URL-decoded).
fn params(q: Option<&str>, name: &str) -> Vec<String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (urldecode(k) == name).then(|| urldecode(v))
        })
        .collect()
}

fn flag(q: Option<&str>, name: &str) -> bool {
    params(q, name).iter().any(|v| v.is_empty() || v == "true")
}

fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Largest request body accepted (after gzip decompression).
pub const MAX_BODY: usize = 16 << 20;

async fn read_body(req: http::Request<hyper::body::Incoming>) -> Result<Vec<u8>, http::Response<HttpBody>> {
    let gzip = req.headers().get("content-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(api_error(413, "invalid_parameter", &format!("reading body: {e}"))),
    };
    if !gzip {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    match flate2::read::GzDecoder::new(&bytes[..]).take(MAX_BODY as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > MAX_BODY => Err(api_error(413, "invalid_parameter", "gzip body too large")),
        Ok(_) => Ok(out),
        Err(e) => Err(api_error(400, "invalid_parameter", &format!("could not decompress the body: {e}"))),
    }
}

fn path_segments(p: &str) -> Vec<String> {
    p.split('/').filter(|s| !s.is_empty()).map(urldecode).collect()
}

async fn handle(
    req: http::Request<hyper::body::Incoming>,
    a: &Authorizer,
    peer: SocketAddr,
    diagnostic: bool,
) -> (&'static str, http::Response<HttpBody>) {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    let pretty = flag(q, "pretty");
    let method = req.method().clone();
    if path == "/health" || path.starts_with("/health/") {
        return ("health", health(a, &path, q, &method));
    }
    if path == "/metrics" {
        if method != http::Method::GET {
            return ("metrics", api_error(405, "method_not_allowed", "method not allowed"));
        }
        let r = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(a.metrics.render(a))))
            .expect("valid response");
        return ("metrics", r);
    }
    if diagnostic {
        return ("diagnostic", api_error(404, "resource_not_found", &format!("{path} not found (diagnostic address)")));
    }
    if !params(q, "explain").is_empty() && params(q, "explain").iter().any(|v| v != "off") {
        return ("v1/data", api_error(400, "invalid_parameter", "explain: query explanations are not supported by sluice"));
    }
    if flag(q, "instrument") {
        return ("v1/data", api_error(400, "invalid_parameter", "instrument: instrumentation is not supported by sluice"));
    }
    if path == "/" {
        return ("index", default_decision(req, a, pretty).await);
    }
    if path == "/v1/query" {
        return ("v1/query", adhoc_query(req, a, q, pretty).await);
    }
    if path == "/v1/policies" || path.starts_with("/v1/policies/") {
        return ("v1/policies", policies(req, a, &path, pretty).await);
    }
    if path == "/v1/config" {
        return ("v1/config", json_response(200, &json!({"result": a.config_doc}), pretty));
    }
    if path == "/v1/status" {
        return ("v1/status", json_response(200, &json!({"result": status_report(a)}), pretty));
    }
    let data_path = if path == "/v1/data" { Some("") } else { path.strip_prefix("/v1/data/") };
    let Some(data_path) = data_path else {
        return ("v1/data", api_error(404, "resource_not_found", &format!("{path} not found")));
    };
    let segs = path_segments(data_path);
    let r = match method {
        http::Method::GET | http::Method::POST => data_get(req, a, &segs, q, pretty, peer).await,
        http::Method::PUT | http::Method::PATCH | http::Method::DELETE => data_write(req, a, &segs).await,
        _ => api_error(405, "method_not_allowed", "method not allowed"),
    };
    ("v1/data", r)
}

/// The status report (`GET /v1/status`, the status plugin's uploads and console log).
pub fn status_report(a: &Authorizer) -> Json {
    let bundles: serde_json::Map<String, Json> = a
        .bundle_revisions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(n, r)| (n.clone(), json!({"name": n, "active_revision": r})))
        .collect();
    json!({
        "labels": {"id": a.instance_id(), "version": crate::server::OPA_VERSION},
        "bundles": bundles,
        "plugins": {"envoy_ext_authz_grpc": {"state": "OK"}, "decision_logs": {"state": "OK"}},
    })
}

fn health(a: &Authorizer, path: &str, q: Option<&str>, method: &http::Method) -> http::Response<HttpBody> {
    if method != http::Method::GET {
        return api_error(405, "method_not_allowed", "method not allowed");
    }
    if let Some(rule) = path.strip_prefix("/health/") {
        // Policy-based health: data.system.health.<rule> must be true.
        let reference = format!("data.system.health.{}", rule.replace('/', "."));
        let input = Value::from(json!({"plugins_ready": true, "plugin_state": {"envoy_ext_authz_grpc": "OK", "decision_logs": "OK"}}));
        return match a.policy_set().set.query(&reference, Some(input)) {
            Ok(Some(Value::Bool(true))) => json_response(200, &json!({}), false),
            Ok(_) => json_response(500, &json!({"error": format!("health check ({reference}) was undefined or not true")}), false),
            Err(e) => json_response(500, &json!({"error": format!("health check ({reference}) failed: {e}")}), false),
        };
    }
    if flag(q, "bundles") && !a.bundles_ready.load(Ordering::Relaxed) {
        return json_response(500, &json!({"error": "one or more bundles are not activated"}), false);
    }
    // `?plugins`: the gRPC listener is up once the server answers at all; every plugin is OK.
    json_response(200, &json!({}), false)
}

async fn default_decision(req: http::Request<hyper::body::Incoming>, a: &Authorizer, pretty: bool) -> http::Response<HttpBody> {
    if req.method() != http::Method::POST {
        return api_error(405, "method_not_allowed", "method not allowed");
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let input = if body.iter().all(|c| c.is_ascii_whitespace()) {
        None
    } else {
        match serde_json::from_slice::<Json>(&body) {
            Ok(j) => Some(Value::from(j)),
            Err(e) => return api_error(400, "invalid_parameter", &format!("body contains malformed input document: {e}")),
        }
    };
    match a.policy_set().set.query("data.system.main", input) {
        Ok(Some(v)) => json_response(200, &value_json(&v), pretty),
        Ok(None) => api_error(404, "undefined_document", "document missing: data.system.main"),
        Err(e) => api_error(500, "internal_error", &e.to_string()),
    }
}

async fn adhoc_query(req: http::Request<hyper::body::Incoming>, a: &Authorizer, q: Option<&str>, pretty: bool) -> http::Response<HttpBody> {
    let (query, input) = match *req.method() {
        http::Method::GET => match params(q, "q").pop() {
            Some(text) => (text, None),
            None => return api_error(400, "invalid_parameter", "missing parameter 'q'"),
        },
        http::Method::POST => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match serde_json::from_slice::<Json>(&body) {
                Ok(Json::Object(mut m)) => match m.remove("query") {
                    Some(Json::String(s)) => (s, m.remove("input").map(Value::from)),
                    _ => return api_error(400, "invalid_parameter", "body must have a string \"query\""),
                },
                _ => return api_error(400, "invalid_parameter", "body must be a JSON object"),
            }
        }
        _ => return api_error(405, "method_not_allowed", "method not allowed"),
    };
    match a.policy_set().set.query_bindings(&query, input, flag(q, "strict-builtin-errors")) {
        Ok(rows) => json_response(200, &json!({"result": rows}), pretty),
        Err(e) => api_error(400, "invalid_parameter", &e.to_string()),
    }
}

async fn policies(req: http::Request<hyper::body::Incoming>, a: &Authorizer, path: &str, pretty: bool) -> http::Response<HttpBody> {
    let id = urldecode(path.trim_start_matches("/v1/policies").trim_start_matches('/'));
    let method = req.method().clone();
    let listing = |rt: &crate::server::Runtime, id: &str| json!({"id": id, "raw": rt.policies.get(id)});
    match method {
        http::Method::GET => {
            let rt = a.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if id.is_empty() {
                let all: Vec<Json> = rt.policies.keys().map(|k| listing(&rt, k)).collect();
                json_response(200, &json!({"result": all}), pretty)
            } else if rt.policies.contains_key(&id) {
                json_response(200, &json!({"result": listing(&rt, &id)}), pretty)
            } else {
                api_error(404, "resource_not_found", &format!("storage_not_found_error: policy id {id:?}"))
            }
        }
        http::Method::PUT if !id.is_empty() => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(text) = String::from_utf8(body) else { return api_error(400, "invalid_parameter", "policy is not UTF-8") };
            let mut rt = a.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
            rt.policies.insert(id.clone(), text);
            match apply(a, rt) {
                Ok(()) => json_response(200, &json!({}), pretty),
                Err(e) => api_error(400, "invalid_parameter", &e),
            }
        }
        http::Method::DELETE if !id.is_empty() => {
            let mut rt = a.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if rt.policies.remove(&id).is_none() {
                return api_error(404, "resource_not_found", &format!("storage_not_found_error: policy id {id:?}"));
            }
            match apply(a, rt) {
                Ok(()) => json_response(200, &json!({}), pretty),
                Err(e) => api_error(400, "invalid_parameter", &e),
            }
        }
        _ => api_error(405, "method_not_allowed", "method not allowed"),
    }
}

/// Recompiles with `rt` and makes it the runtime state if it compiles.
fn apply(a: &Authorizer, rt: crate::server::Runtime) -> Result<(), String> {
    a.apply_runtime(&rt).map_err(|e| format!("{e:#}"))?;
    *a.runtime.lock().unwrap_or_else(|p| p.into_inner()) = rt;
    Ok(())
}

async fn data_get(
    req: http::Request<hyper::body::Incoming>,
    a: &Authorizer,
    segs: &[String],
    q: Option<&str>,
    pretty: bool,
    peer: SocketAddr,
) -> http::Response<HttpBody> {
    let input: Option<Value> = if req.method() == http::Method::GET {
        match params(q, "input").pop() {
            None => None,
            Some(text) => match serde_json::from_str::<Json>(&text) {
                Ok(j) => Some(Value::from(j)),
                Err(e) => return api_error(400, "invalid_parameter", &format!("input: {e}")),
            },
        }
    } else {
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if body.iter().all(|c| c.is_ascii_whitespace()) {
            None
        } else {
            match serde_json::from_slice::<Json>(&body) {
                Ok(Json::Object(mut m)) => m.remove("input").map(Value::from),
                Ok(_) => return api_error(400, "invalid_parameter", "body must be a JSON object"),
                Err(e) => return api_error(400, "invalid_parameter", &format!("body: {e}")),
            }
        }
    };
    let started = Instant::now();
    let strict = flag(q, "strict-builtin-errors");
    match a.query_with(&segs.join("/"), input, Some(peer.to_string()), strict) {
        Ok(ans) => {
            let mut m = serde_json::Map::new();
            if a.decision_logging() {
                m.insert("decision_id".into(), ans.decision_id.into());
            }
            if flag(q, "metrics") {
                m.insert(
                    "metrics".into(),
                    json!({"timer_rego_query_eval_ns": ans.eval_ns, "timer_server_handler_ns": started.elapsed().as_nanos() as u64}),
                );
            }
            if flag(q, "provenance") {
                let bundles: serde_json::Map<String, Json> = a
                    .bundle_revisions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(n, r)| (n.clone(), json!({"revision": r})))
                    .collect();
                let mut p = json!({"version": crate::server::OPA_VERSION, "build_commit": "", "build_timestamp": "", "build_hostname": ""});
                if !bundles.is_empty() {
                    p["bundles"] = Json::Object(bundles);
                }
                m.insert("provenance".into(), p);
            }
            if let Some(v) = ans.value {
                m.insert("result".into(), value_json(&v));
            }
            json_response(200, &Json::Object(m), pretty)
        }
        Err(e) => api_error(500, "internal_error", &e),
    }
}

async fn data_write(req: http::Request<hyper::body::Incoming>, a: &Authorizer, segs: &[String]) -> http::Response<HttpBody> {
    let method = req.method().clone();
    let if_none_match = req.headers().get("if-none-match").is_some_and(|v| v.as_bytes() == b"*");
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut rt = a.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match method {
        http::Method::PUT => {
            let v: Json = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return api_error(400, "invalid_parameter", &format!("body: {e}")),
            };
            if if_none_match && lookup(&a.effective_data(), segs).is_some() {
                return empty(304);
            }
            rt.ops.push(DataOp::Put(segs.to_vec(), v));
        }
        http::Method::DELETE => {
            let mut probe = a.effective_data();
            if let Err(e) = apply_op(&mut probe, &DataOp::Delete(segs.to_vec())) {
                return api_error(404, "resource_not_found", &e);
            }
            rt.ops.push(DataOp::Delete(segs.to_vec()));
        }
        _ => {
            // PATCH: a JSON patch (add, remove, replace) relative to the path.
            let ops: Vec<Json> = match serde_json::from_slice(&body) {
                Ok(Json::Array(ops)) => ops,
                _ => return api_error(400, "invalid_parameter", "body must be a JSON patch (an array of operations)"),
            };
            let mut doc = a.effective_data();
            for op in &ops {
                let rel: Vec<String> = op["path"].as_str().unwrap_or("").split('/').filter(|s| !s.is_empty()).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
                let full: Vec<String> = segs.iter().cloned().chain(rel).collect();
                let step = match op["op"].as_str() {
                    Some("add") => match op.get("value") {
                        Some(v) => DataOp::Add(full, v.clone()),
                        None => return api_error(400, "invalid_parameter", "patch operation without value"),
                    },
                    Some("replace") => match op.get("value") {
                        Some(v) => DataOp::Put(full, v.clone()),
                        None => return api_error(400, "invalid_parameter", "patch operation without value"),
                    },
                    Some("remove") => DataOp::Delete(full),
                    other => return api_error(400, "invalid_parameter", &format!("patch operation {other:?} is not supported (add, remove, replace are)")),
                };
                if let Err(e) = apply_op(&mut doc, &step) {
                    return api_error(404, "resource_not_found", &e);
                }
                rt.ops.push(step);
            }
        }
    }
    match apply(a, rt) {
        Ok(()) => empty(204),
        Err(e) => api_error(400, "invalid_parameter", &e),
    }
}

fn lookup<'a>(doc: &'a Json, segs: &[String]) -> Option<&'a Json> {
    let mut cur = doc;
    for s in segs {
        cur = cur.as_object()?.get(s)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_and_params() {
        assert_eq!(urldecode("a%20b+c%zz%4"), "a b c%zz%4");
        assert_eq!(params(Some("pretty=true&input=%7B%7D"), "input"), vec!["{}".to_string()]);
        assert!(flag(Some("pretty"), "pretty") && flag(Some("pretty=true"), "pretty") && !flag(Some("pretty=false"), "pretty"));
    }

    #[test]
    fn histogram_text() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(3));
        let mut out = String::new();
        h.render("x", "a=\"b\"", &mut out);
        assert!(out.contains("x_bucket{a=\"b\",le=\"1e-06\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5e-06\"} 1\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 1\n"), "{out}");
    }
}
