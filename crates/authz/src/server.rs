//! The policy server: gRPC `envoy.service.auth.v3.Authorization/Check` and
//! `grpc.health.v1.Health`, an OPA-style HTTP API, decision logging and hot reload.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use arc_swap::ArcSwap;
use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http_body_util::{BodyExt, Full};
use regorus::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::decision_log::{value_json, DecisionLogSink, DecisionLogger, Entry, LogFormat};
use crate::input::build_input;
use crate::policy::{rule_ref, EvalError, LoadOptions, PolicySet, RegoVersion, Sources};
use crate::response::{check_response, CODE_OK};

/// The `labels.version` written in decision logs by default: the OPA envoy plugin build the
/// guide runs, so log consumers written for it keep working.
pub const DEFAULT_LABEL_VERSION: &str = "0.63.0-envoy";

/// The OPA release whose behaviour sluice follows (builtins, REST API, tools).
pub const OPA_VERSION: &str = "1.20.0";

/// Everything [`AuthzServer::start`] needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Policy (`.rego`) and data (`.json`, `.yaml`) files, or directories holding them.
    pub paths: Vec<PathBuf>,
    /// How `.rego` files are parsed (default: per-file auto-detection).
    pub rego_version: RegoVersion,
    /// Decision path, slash-separated (default `envoy/authz/allow`).
    pub decision_path: String,
    /// gRPC listen address (port 0 picks a free port). Default `0.0.0.0:9191`.
    pub grpc_addr: SocketAddr,
    /// HTTP API listen address, `None` for no HTTP API. Default `0.0.0.0:8181`.
    pub http_addr: Option<SocketAddr>,
    /// Where decision logs go (default: off).
    pub decision_log: DecisionLogSink,
    /// Decision log layout (`JsonPretty` indents).
    pub log_format: LogFormat,
    /// Poll interval of the reload watcher; `None` disables hot reload. Default 1 s.
    pub watch_interval: Option<Duration>,
    /// OPA's `dry-run`: evaluate and log, but always answer OK.
    pub dry_run: bool,
    /// `labels.version` in decision logs (default [`DEFAULT_LABEL_VERSION`]).
    pub label_version: String,
    /// Time budget of one decision (`None`: unbounded). Default 1 s.
    pub eval_timeout: Option<Duration>,
    /// OPA's `--strict-builtin-errors`.
    pub strict_builtin_errors: bool,
    /// Size and nesting bounds of policy files.
    pub bounds: crate::bounds::Bounds,
    /// Extra builtins (OPA's custom builtins) for library users.
    pub custom_builtins: Vec<crate::builtins::CustomBuiltin>,
    /// Bundles (directories or `.tar.gz` files), loaded with the paths.
    pub bundles: Vec<PathBuf>,
    /// How bundle signatures are verified.
    pub verification: crate::bundle::Verification,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            paths: Vec::new(),
            rego_version: RegoVersion::Auto,
            decision_path: "envoy/authz/allow".into(),
            grpc_addr: ([0, 0, 0, 0], 9191).into(),
            http_addr: Some(([0, 0, 0, 0], 8181).into()),
            decision_log: DecisionLogSink::Off,
            log_format: LogFormat::Json,
            watch_interval: Some(Duration::from_secs(1)),
            dry_run: false,
            label_version: DEFAULT_LABEL_VERSION.into(),
            eval_timeout: Some(crate::policy::DEFAULT_EVAL_TIMEOUT),
            strict_builtin_errors: false,
            bounds: crate::bounds::Bounds::default(),
            custom_builtins: Vec::new(),
            bundles: Vec::new(),
            verification: crate::bundle::Verification::default(),
        }
    }
}

impl Config {
    /// A configuration for tests and in-process use: both listeners on `127.0.0.1:0`.
    pub fn loopback(paths: Vec<PathBuf>) -> Self {
        Config {
            paths,
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: Some(([127, 0, 0, 1], 0).into()),
            ..Config::default()
        }
    }
}

/// Parses an OPA-style listen address: `:9002` (all interfaces), `host:port`,
/// `grpc://host:port`, `http://host:port`, `localhost:port`.
pub fn parse_listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let t = s.trim();
    let t = ["grpc://", "tcp://", "http://"].iter().find_map(|p| t.strip_prefix(p)).unwrap_or(t);
    if t.starts_with("unix://") {
        return Err(anyhow!("{s}: unix domain sockets are not supported"));
    }
    if let Some(port) = t.strip_prefix(':') {
        let port: u16 = port.parse().with_context(|| format!("invalid port in address {s:?}"))?;
        return Ok(([0, 0, 0, 0], port).into());
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    t.to_socket_addrs()
        .with_context(|| format!("invalid listen address {s:?}"))?
        .next()
        .ok_or_else(|| anyhow!("invalid listen address {s:?}"))
}

/// Reads the policy and data paths and the bundles into one set of sources.
fn read_all(paths: &[PathBuf], bundles: &[PathBuf], v: &crate::bundle::Verification) -> anyhow::Result<Sources> {
    let mut s = Sources::read(paths)?;
    for b in bundles {
        let bundle = crate::bundle::Bundle::read(b, v)?;
        tracing::info!(bundle = %bundle.name, revision = %bundle.manifest.revision, "bundle loaded");
        s.policies.extend(bundle.sources.policies);
        s.data.extend(bundle.sources.data);
        s.versions.extend(bundle.sources.versions);
    }
    Ok(s)
}

/// A random (v4) UUID, hyphenated and lower-case, as OPA's decision ids; formatted without
/// going through `fmt`.
fn new_decision_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf).to_owned()
}

struct Generation {
    set: PolicySet,
    first_decision: AtomicBool,
}

/// The decision engine without any sockets: builds the input, evaluates, maps the result and
/// writes the decision log. Cheap to share (`Arc`) and lock-free on the evaluation path.
pub struct Authorizer {
    policy: ArcSwap<Generation>,
    logger: DecisionLogger,
    decision_path: String,
    dry_run: bool,
    paths: Vec<PathBuf>,
    bundles: Vec<PathBuf>,
    verification: crate::bundle::Verification,
    load: LoadOptions,
    reload_lock: Mutex<u64>,
    /// Decisions that failed by kind, over all generations: panics, bounds, other errors.
    failed: [AtomicU64; 3],
    reloads: AtomicU64,
    req_ids: AtomicU64,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("policy", &self.policy.load().set).finish()
    }
}

impl Authorizer {
    /// Loads and compiles the configured policies. The error names file and line.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        if config.paths.is_empty() && config.bundles.is_empty() {
            return Err(anyhow!("no policy files given"));
        }
        let sources = read_all(&config.paths, &config.bundles, &config.verification)?;
        let load = LoadOptions {
            version: config.rego_version,
            decision_path: config.decision_path.clone(),
            bounds: config.bounds,
            eval_timeout: config.eval_timeout,
            strict_builtin_errors: config.strict_builtin_errors,
            custom_builtins: config.custom_builtins.clone(),
        };
        let set = PolicySet::compile_with(&sources, &load)?;
        let logger = DecisionLogger::new(
            &config.decision_log,
            config.log_format,
            uuid::Uuid::new_v4().to_string(),
            config.label_version.clone(),
        )?;
        Ok(Authorizer {
            policy: ArcSwap::from_pointee(Generation { set, first_decision: AtomicBool::new(true) }),
            logger,
            decision_path: config.decision_path.trim_matches('/').to_string(),
            dry_run: config.dry_run,
            paths: config.paths.clone(),
            bundles: config.bundles.clone(),
            verification: config.verification.clone(),
            load,
            failed: Default::default(),
            reload_lock: Mutex::new(sources.fingerprint()),
            reloads: AtomicU64::new(0),
            req_ids: AtomicU64::new(0),
        })
    }

    /// The id of the policy generation currently serving.
    pub fn generation(&self) -> u64 {
        self.policy.load().set.generation()
    }

    /// How many reloads were swapped in since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the policy files. `Ok(true)`: a new generation is serving; `Ok(false)`: nothing
    /// changed (or the change was already tried); `Err`: the new files do not compile (the
    /// error names file and line) and the previous generation keeps serving.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let mut last = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sources = read_all(&self.paths, &self.bundles, &self.verification)?;
        let fp = sources.fingerprint();
        if fp == *last {
            return Ok(false);
        }
        *last = fp;
        let set = PolicySet::compile_with(&sources, &self.load)?;
        let generation = set.generation();
        self.policy.store(Arc::new(Generation { set, first_decision: AtomicBool::new(true) }));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation, "policies reloaded");
        Ok(true)
    }

    fn count_failure<T>(&self, r: &Result<T, EvalError>) {
        let i = match r {
            Err(EvalError::Panic(_)) => 0,
            Err(EvalError::Limit(_)) => 1,
            Err(EvalError::Eval(_)) => 2,
            _ => return,
        };
        self.failed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions (gRPC and REST) that failed since start: `(panicked, stopped by a bound,
    /// other evaluation errors)`. A panicked evaluation is answered with an error (Envoy
    /// denies) and leaves no state behind.
    pub fn failed_decisions(&self) -> (u64, u64, u64) {
        let g = |i: usize| self.failed[i].load(Ordering::Relaxed);
        (g(0), g(1), g(2))
    }

    /// Answers one `Check` as OPA's envoy plugin does. `Err` is the gRPC error (UNKNOWN with
    /// the message, e.g. `undefined decision`).
    pub fn check(&self, req: &CheckRequest) -> Result<CheckResponse, tonic::Status> {
        let started = Instant::now();
        let generation = self.policy.load();
        let decision_id = new_decision_id();
        let input = match build_input(req) {
            Ok(i) => i,
            Err(e) => {
                let msg = e.to_string();
                self.log(&generation, &decision_id, None, Err(&msg), 0, started, None, None);
                return Err(tonic::Status::unknown(msg));
            }
        };
        let t = Instant::now();
        let decision = generation.set.eval(input.clone());
        let eval_ns = t.elapsed().as_nanos() as u64;
        self.count_failure(&decision);
        let outcome = match &decision {
            Ok(v) => check_response(v, &decision_id),
            Err(e) => Err(e.to_string()),
        };
        match (&decision, &outcome) {
            (Ok(v), Ok(_)) => self.log(&generation, &decision_id, Some(&input), Ok(v), eval_ns, started, None, None),
            (_, Err(msg)) => self.log(&generation, &decision_id, Some(&input), Err(msg), eval_ns, started, None, None),
            _ => {}
        }
        let mut resp = outcome.map_err(tonic::Status::unknown)?;
        if self.dry_run && resp.status.as_ref().is_some_and(|s| s.code != CODE_OK) {
            resp.status = Some(RpcStatus { code: CODE_OK, message: String::new(), details: vec![] });
            resp.http_response = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
        }
        Ok(resp)
    }

    /// Evaluates `data.<path>` for the REST API. `Ok(None)`: undefined.
    pub fn query(&self, path: &str, input: Option<Value>, requested_by: Option<String>) -> Result<(Option<Value>, String), String> {
        let started = Instant::now();
        let generation = self.policy.load();
        let decision_id = new_decision_id();
        let t = Instant::now();
        let r = generation.set.query(&rule_ref(path), input.clone());
        let eval_ns = t.elapsed().as_nanos() as u64;
        self.count_failure(&r);
        let req_id = Some(self.req_ids.fetch_add(1, Ordering::Relaxed) + 1);
        let path = path.trim_matches('/');
        match &r {
            Ok(v) => {
                let undefined = Value::Undefined;
                let shown = v.as_ref().unwrap_or(&undefined);
                self.log_at(path, &generation, &decision_id, input.as_ref(), Ok(shown), eval_ns, started, requested_by, req_id)
            }
            Err(e) => {
                let msg = e.to_string();
                self.log_at(path, &generation, &decision_id, input.as_ref(), Err(&msg), eval_ns, started, requested_by, req_id)
            }
        }
        r.map(|v| (v, decision_id)).map_err(|e: EvalError| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        g: &Generation,
        id: &str,
        input: Option<&Value>,
        result: Result<&Value, &str>,
        eval_ns: u64,
        started: Instant,
        requested_by: Option<String>,
        req_id: Option<u64>,
    ) {
        self.log_at(&self.decision_path, g, id, input, result, eval_ns, started, requested_by, req_id)
    }

    #[allow(clippy::too_many_arguments)]
    fn log_at(
        &self,
        path: &str,
        g: &Generation,
        id: &str,
        input: Option<&Value>,
        result: Result<&Value, &str>,
        eval_ns: u64,
        started: Instant,
        requested_by: Option<String>,
        req_id: Option<u64>,
    ) {
        if !self.logger.enabled() {
            return;
        }
        let compile_ns = if g.first_decision.swap(false, Ordering::Relaxed) { Some(g.set.compile_ns()) } else { None };
        self.logger.log(&Entry {
            decision_id: id,
            input,
            result,
            path,
            eval_ns,
            handler_ns: started.elapsed().as_nanos() as u64,
            compile_ns,
            requested_by,
            req_id,
        });
    }
}

/// `envoy.service.auth.v3.Authorization` (the one method, `Check`). The same as the service
/// envoy-types generates, except for the codec's buffers: tonic's default allocates 8 KiB per
/// request and per response, which made glibc consolidate its free lists on every response;
/// a Check and its answer are usually well under 1 KiB (a larger message grows the buffer).
#[derive(Clone)]
struct CheckService(Arc<Authorizer>);

const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const CODEC_BUFFER: usize = 1000;

impl tonic::server::NamedService for CheckService {
    const NAME: &'static str = AUTHORIZATION_SERVICE;
}

#[derive(Default)]
struct CheckCodec;

impl tonic::codec::Codec for CheckCodec {
    type Encode = CheckResponse;
    type Decode = CheckRequest;
    type Encoder = tonic_prost::ProstEncoder<CheckResponse>;
    type Decoder = tonic_prost::ProstDecoder<CheckRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::new(CODEC_BUFFER, 32 * 1024))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::new(CODEC_BUFFER, 32 * 1024))
    }
}

struct CheckMethod(Arc<Authorizer>);

impl tonic::server::UnaryService<CheckRequest> for CheckMethod {
    type Response = CheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<CheckResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        std::future::ready(self.0.check(request.get_ref()).map(tonic::Response::new))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CheckService
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == CHECK_PATH {
            let method = CheckMethod(self.0.clone());
            Box::pin(async move { Ok(tonic::server::Grpc::new(CheckCodec).unary(method, req).await) })
        } else {
            Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            })
        }
    }
}

/// Starts policy servers. See [`AuthzServer::start`].
#[derive(Debug)]
pub struct AuthzServer;

/// A running server: its bound addresses and a way to stop it.
#[derive(Debug)]
pub struct Handle {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    authorizer: Arc<Authorizer>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl AuthzServer {
    /// Loads and compiles the policies (an error names file and line), binds the gRPC and
    /// HTTP listeners (port 0 is allowed), and serves until [`Handle::shutdown`].
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// use sluice_authz::{AuthzServer, Config};
    /// let handle = AuthzServer::start(Config::loopback(vec!["policy.rego".into()])).await?;
    /// println!("gRPC on {}", handle.grpc_addr());
    /// handle.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(config: Config) -> anyhow::Result<Handle> {
        let authorizer = Arc::new(Authorizer::new(&config)?);
        {
            let p = authorizer.policy.load();
            tracing::info!(
                files = ?p.set.files(),
                packages = ?p.set.packages(),
                decision = p.set.rule(),
                "policies loaded"
            );
        }
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_listener = match config.http_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding HTTP address {a}"))?),
            None => None,
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_service_status(AUTHORIZATION_SERVICE, tonic_health::ServingStatus::Serving).await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let svc = CheckService(authorizer.clone());
        let routes = tonic::service::Routes::new(health_svc).add_service(svc).prepare();
        tasks.push(tokio::spawn({
            let rx = rx.clone();
            async move { crate::grpc_conn::serve(grpc_listener, routes, rx).await.context("gRPC server") }
        }));
        tracing::info!(addr = %grpc_addr, "gRPC server listening (envoy.service.auth.v3.Authorization, grpc.health.v1.Health)");

        if let Some(l) = http_listener {
            tasks.push(tokio::spawn(serve_http(l, authorizer.clone(), rx.clone())));
            tracing::info!(addr = %http_addr.expect("bound"), "HTTP API listening (/health, /v1/data)");
        }

        if let Some(every) = config.watch_interval {
            let a = authorizer.clone();
            let mut wrx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = async { let _ = wrx.wait_for(|s| *s).await; } => return Ok(()),
                    }
                    let a2 = a.clone();
                    let before = a.generation();
                    match tokio::task::spawn_blocking(move || a2.reload()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(
                            generation = before,
                            "policy reload failed, the previous policies keep serving: {e:#}"
                        ),
                        Err(e) => tracing::error!("policy reload task failed: {e}"),
                    }
                }
            }));
        }

        Ok(Handle { grpc_addr, http_addr, authorizer, shutdown, tasks })
    }
}

impl Handle {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP API address, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The in-process decision engine behind the sockets.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// Stops accepting connections and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Waits until a server task ends on its own (an error), or forever.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            std::future::pending::<()>().await;
        }
        let (res, _, rest) = futures_select_all(std::mem::take(&mut self.tasks)).await;
        self.tasks = rest;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow!("server task failed: {e}")),
        }
    }
}

impl Drop for Handle {
    /// Dropping a handle without [`Handle::shutdown`] still stops the listeners.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn futures_select_all(
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
) -> (Result<anyhow::Result<()>, tokio::task::JoinError>, usize, Vec<JoinHandle<anyhow::Result<()>>>) {
    let mut tasks = tasks;
    loop {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            let t = tasks.remove(i);
            return (t.await, i, tasks);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type HttpBody = Full<Bytes>;

async fn serve_http(listener: TcpListener, a: Arc<Authorizer>, mut rx: watch::Receiver<bool>) -> anyhow::Result<()> {
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
                async move { Ok::<_, std::convert::Infallible>(handle_http(req, &a, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn json_response(status: u16, body: &serde_json::Value, pretty: bool) -> http::Response<HttpBody> {
    let text = if pretty { serde_json::to_string_pretty(body) } else { serde_json::to_string(body) }.unwrap_or_default();
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text + "\n")))
        .expect("valid response")
}

fn api_error(status: u16, code: &str, message: &str) -> http::Response<HttpBody> {
    json_response(status, &serde_json::json!({"code": code, "message": message}), false)
}

fn query_param(q: Option<&str>, name: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| urldecode(v))
    })
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

async fn handle_http(req: http::Request<hyper::body::Incoming>, a: &Authorizer, peer: SocketAddr) -> http::Response<HttpBody> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let pretty = query_param(query.as_deref(), "pretty").is_some_and(|v| v.is_empty() || v == "true");
    let method = req.method().clone();
    if path == "/health" || path.starts_with("/health/") {
        return if method == http::Method::GET {
            json_response(200, &serde_json::json!({}), false)
        } else {
            api_error(405, "method_not_allowed", "method not allowed")
        };
    }
    let data_path = if path == "/v1/data" { Some("") } else { path.strip_prefix("/v1/data/") };
    let Some(data_path) = data_path else {
        return api_error(404, "resource_not_found", &format!("{path} not found"));
    };
    let data_path = urldecode(data_path);
    let input: Option<Value> = match method {
        http::Method::GET => match query_param(query.as_deref(), "input") {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(j) => Some(Value::from(j)),
                Err(e) => return api_error(400, "invalid_parameter", &format!("input: {e}")),
            },
        },
        http::Method::POST => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return api_error(400, "invalid_parameter", &format!("reading body: {e}")),
            };
            if body.iter().all(|c| c.is_ascii_whitespace()) {
                None
            } else {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(serde_json::Value::Object(mut m)) => m.remove("input").map(Value::from),
                    Ok(_) => return api_error(400, "invalid_parameter", "body must be a JSON object"),
                    Err(e) => return api_error(400, "invalid_parameter", &format!("body: {e}")),
                }
            }
        }
        _ => return api_error(405, "method_not_allowed", "method not allowed"),
    };
    match a.query(&data_path, input, Some(peer.to_string())) {
        Ok((Some(v), id)) => {
            let mut m = serde_json::Map::new();
            if a.logger.enabled() {
                m.insert("decision_id".into(), id.into());
            }
            m.insert("result".into(), value_json(&v));
            json_response(200, &serde_json::Value::Object(m), pretty)
        }
        Ok((None, id)) => {
            let mut m = serde_json::Map::new();
            if a.logger.enabled() {
                m.insert("decision_id".into(), id.into());
            }
            json_response(200, &serde_json::Value::Object(m), pretty)
        }
        Err(e) => api_error(500, "internal_error", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addrs() {
        assert_eq!(parse_listen_addr(":9002").unwrap(), "0.0.0.0:9002".parse().unwrap());
        assert_eq!(parse_listen_addr("grpc://127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(parse_listen_addr("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert!(parse_listen_addr("unix:///tmp/x.sock").is_err());
        assert!(parse_listen_addr(":nope").is_err());
    }

    #[test]
    fn decision_ids() {
        let a = new_decision_id();
        let b = new_decision_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(u.hyphenated().to_string(), a);
    }

    #[test]
    fn url_decoding() {
        assert_eq!(urldecode("a%20b+c%zz%4"), "a b c%zz%4");
        assert_eq!(query_param(Some("pretty=true&input=%7B%7D"), "input").as_deref(), Some("{}"));
    }
}
