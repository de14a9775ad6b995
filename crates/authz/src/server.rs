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
use regorus::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::decision_log::{DecisionLogSink, DecisionLogger, Entry, LogFormat};
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
    /// `--diagnostic-addr`: a second HTTP listener serving only `/health` and `/metrics`.
    pub diagnostic_addr: Option<SocketAddr>,
    /// `plugins.envoy_ext_authz_grpc.skip-request-body-parse`.
    pub skip_body_parse: bool,
    /// `plugins.envoy_ext_authz_grpc.enable-performance-metrics`.
    pub performance_metrics: bool,
    /// `grpc-max-recv-msg-size` (default 4 MiB) and `grpc-max-send-msg-size` (default unlimited).
    pub grpc_max_recv: usize,
    pub grpc_max_send: usize,
    /// The configuration document (`/v1/config`).
    pub config_doc: serde_json::Value,
    /// `--ignore` patterns for directory loading.
    pub ignore: Vec<String>,
    /// Bundles downloaded from bundle services (`services` + `bundles`).
    pub remote_bundles: Vec<crate::bundle_service::RemoteBundle>,
    /// Extra decision log labels (`labels` in the configuration).
    pub labels: Vec<(String, String)>,
    /// gRPC on a Unix domain socket (`unix:///path`, `@name` abstract) instead of `grpc_addr`.
    pub grpc_unix: Option<String>,
    /// Decision logs uploaded to a service (`decision_logs.service`).
    pub decision_upload: Option<crate::decision_upload::UploadConfig>,
    /// The status plugin (`status`): console log and/or uploads.
    pub status: Option<crate::status::StatusConfig>,
    /// The plugin's `proto-descriptor`: a FileDescriptorSet file for decoding gRPC bodies.
    pub proto_descriptor: Option<PathBuf>,
    /// The plugin's `enable-reflection`: gRPC server reflection on the gRPC listener.
    pub enable_reflection: bool,
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
            diagnostic_addr: None,
            skip_body_parse: false,
            performance_metrics: false,
            grpc_max_recv: 4 << 20,
            grpc_max_send: usize::MAX,
            config_doc: serde_json::json!({}),
            ignore: Vec::new(),
            remote_bundles: Vec::new(),
            labels: Vec::new(),
            grpc_unix: None,
            decision_upload: None,
            status: None,
            proto_descriptor: None,
            enable_reflection: false,
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
        return Err(anyhow!("{s}: a unix socket address is only supported for the gRPC listener (plugins.envoy_ext_authz_grpc.addr)"));
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

/// Reads the policy and data paths and the bundles into one set of sources, with the bundles'
/// `(name, revision)`.
fn read_all_with_revisions(
    paths: &[PathBuf],
    bundles: &[PathBuf],
    v: &crate::bundle::Verification,
    ignore: &[String],
) -> anyhow::Result<(Sources, Vec<(String, String)>)> {
    let mut s = Sources::read(paths)?;
    s.drop_ignored(ignore);
    let mut revisions = Vec::new();
    for b in bundles {
        let bundle = crate::bundle::Bundle::read(b, v)?;
        tracing::debug!(bundle = %bundle.name, revision = %bundle.manifest.revision, "bundle read");
        revisions.push((bundle.name.clone(), bundle.manifest.revision.clone()));
        s.policies.extend(bundle.sources.policies);
        s.data.extend(bundle.sources.data);
        s.versions.extend(bundle.sources.versions);
    }
    Ok((s, revisions))
}

/// A change to the data document made through the REST API, replayed over the file data on
/// every recompile (so that a reload of the files keeps it).
#[derive(Clone, Debug)]
pub(crate) enum DataOp {
    /// Set the document at the path (creating parents).
    Put(Vec<String>, serde_json::Value),
    /// JSON patch `add`: like `Put`, but inserts into an array at an index (`-`: at the end).
    Add(Vec<String>, serde_json::Value),
    Delete(Vec<String>),
}

/// Policies and data changed at run time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Runtime {
    pub policies: std::collections::BTreeMap<String, String>,
    pub ops: Vec<DataOp>,
}

fn merge_json(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(x) => merge_json(x, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies `op` to `doc`; `Err` when a deleted path does not exist.
pub(crate) fn apply_op(doc: &mut serde_json::Value, op: &DataOp) -> Result<(), String> {
    let (path, value, insert) = match op {
        DataOp::Put(p, v) => (p, Some(v.clone()), false),
        DataOp::Add(p, v) => (p, Some(v.clone()), true),
        DataOp::Delete(p) => (p, None, false),
    };
    let missing = || format!("storage_not_found_error: /{}: document missing", path.join("/"));
    if path.is_empty() {
        *doc = value.unwrap_or_else(|| serde_json::json!({}));
        return Ok(());
    }
    let mut cur = doc;
    for seg in &path[..path.len() - 1] {
        if let serde_json::Value::Array(a) = cur {
            let i: usize = seg.parse().map_err(|_| missing())?;
            cur = a.get_mut(i).ok_or_else(missing)?;
            continue;
        }
        if !cur.is_object() {
            if value.is_none() {
                return Err(missing());
            }
            *cur = serde_json::json!({});
        }
        let o = cur.as_object_mut().expect("object");
        if value.is_none() && !o.contains_key(seg) {
            return Err(missing());
        }
        cur = o.entry(seg.clone()).or_insert_with(|| serde_json::json!({}));
    }
    let last = &path[path.len() - 1];
    if let serde_json::Value::Array(a) = cur {
        let i = if last == "-" { a.len() } else { last.parse::<usize>().map_err(|_| missing())? };
        match value {
            Some(v) if insert && i <= a.len() => a.insert(i, v),
            Some(v) if i < a.len() => a[i] = v,
            None if i < a.len() => {
                a.remove(i);
            }
            _ => return Err(missing()),
        }
        return Ok(());
    }
    match value {
        Some(v) => {
            if !cur.is_object() {
                *cur = serde_json::json!({});
            }
            cur.as_object_mut().expect("object").insert(last.clone(), v);
        }
        None => {
            if cur.as_object_mut().and_then(|o| o.remove(last)).is_none() {
                return Err(missing());
            }
        }
    }
    Ok(())
}

/// The file sources with the runtime policies and data changes applied.
pub(crate) fn compose(mut s: Sources, rt: &Runtime) -> Result<(Sources, serde_json::Value), String> {
    for (id, text) in &rt.policies {
        s.policies.push((PathBuf::from(id), text.clone()));
    }
    let mut data = serde_json::json!({});
    for (path, prefix, text) in &s.data {
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut v: serde_json::Value = if is_json { serde_json::from_str(text) } else { serde_yaml_ng::from_str(text).map_err(|e| serde_json::Error::io(std::io::Error::other(e.to_string()))) }
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for seg in prefix.iter().rev() {
            v = serde_json::json!({ seg.clone(): v });
        }
        merge_json(&mut data, v);
    }
    if !rt.ops.is_empty() {
        for op in &rt.ops {
            apply_op(&mut data, op)?;
        }
        s.data = vec![(PathBuf::from("data.json"), vec![], data.to_string())];
    }
    Ok((s, data))
}

/// A random (v4) UUID, hyphenated and lower-case, as OPA's decision ids; formatted without
/// going through `fmt`.
fn new_decision_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf).to_owned()
}

/// A REST API decision.
#[derive(Debug)]
pub struct Answer {
    /// The value (`None`: undefined).
    pub value: Option<Value>,
    /// The decision id.
    pub decision_id: String,
    /// Evaluation time.
    pub eval_ns: u64,
}

/// One swapped-in policy generation.
pub struct Generation {
    /// The compiled policies and data.
    pub set: PolicySet,
    /// `(bundle, revision)` of the bundles it was built from.
    pub revisions: Vec<(String, String)>,
    /// Whether the policies define `data.system.log.mask` (found on first use).
    has_mask: std::sync::OnceLock<bool>,
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
    /// Policies and data changed through the REST API (`/v1/policies`, `/v1/data`).
    pub(crate) runtime: Mutex<Runtime>,
    /// Prometheus metrics.
    pub(crate) metrics: crate::api::Metrics,
    /// Whether `/health?bundles` is satisfied (every configured bundle activated once).
    pub(crate) bundles_ready: AtomicBool,
    /// Revisions of the active bundles, by name (decision logs, `/v1/status`).
    pub(crate) bundle_revisions: Mutex<Vec<(String, String)>>,
    /// The effective configuration (`/v1/config`).
    pub(crate) config_doc: serde_json::Value,
    /// `plugins.envoy_ext_authz_grpc.skip-request-body-parse`.
    skip_body_parse: bool,
    /// Descriptors for gRPC bodies (`proto-descriptor`).
    protos: Option<prost_reflect::DescriptorPool>,
    grpc_max_recv: usize,
    grpc_max_send: usize,
    instance_id: String,
    ignore: Vec<String>,
    /// Bundles downloaded from bundle services, by name (the last good one of each).
    remote: Mutex<std::collections::BTreeMap<String, crate::bundle::Bundle>>,
    /// The decision log uploader, when a service is configured.
    pub uploader: Option<Arc<crate::decision_upload::Uploader>>,
    remote_names: Vec<String>,
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
        if config.paths.is_empty() && config.bundles.is_empty() && config.remote_bundles.is_empty() {
            return Err(anyhow!("no policy files given"));
        }
        let (sources, revisions) = read_all_with_revisions(&config.paths, &config.bundles, &config.verification, &config.ignore)?;
        let load = LoadOptions {
            version: config.rego_version,
            decision_path: config.decision_path.clone(),
            bounds: config.bounds,
            eval_timeout: config.eval_timeout,
            strict_builtin_errors: config.strict_builtin_errors,
            custom_builtins: config.custom_builtins.clone(),
        };
        let set = PolicySet::compile_with(&sources, &load)?;
        let instance_id = uuid::Uuid::new_v4().to_string();
        let mut logger = DecisionLogger::new(&config.decision_log, config.log_format, instance_id.clone(), config.label_version.clone())?;
        logger.set_labels(config.labels.clone());
        let uploader = config.decision_upload.clone().map(|c| Arc::new(crate::decision_upload::Uploader::new(c)));
        let protos = match &config.proto_descriptor {
            None => None,
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("plugins.envoy_ext_authz_grpc.proto-descriptor: {}: {e}", p.display()))?;
                Some(crate::input::load_descriptors(&bytes).map_err(|e| anyhow::anyhow!("plugins.envoy_ext_authz_grpc.proto-descriptor: {}: {}", p.display(), e.0))?)
            }
        };
        if let Some(u) = &uploader {
            logger.set_remote(u.clone());
        }
        Ok(Authorizer {
            policy: ArcSwap::from_pointee(Generation { set, first_decision: AtomicBool::new(true), revisions: revisions.clone(), has_mask: Default::default() }),
            logger,
            decision_path: config.decision_path.trim_matches('/').to_string(),
            dry_run: config.dry_run,
            paths: config.paths.clone(),
            bundles: config.bundles.clone(),
            verification: config.verification.clone(),
            load,
            runtime: Mutex::new(Runtime::default()),
            metrics: crate::api::Metrics::new(config.performance_metrics),
            bundles_ready: AtomicBool::new(config.remote_bundles.is_empty()),
            bundle_revisions: Mutex::new(revisions),
            config_doc: config.config_doc.clone(),
            skip_body_parse: config.skip_body_parse,
            protos,
            grpc_max_recv: config.grpc_max_recv,
            grpc_max_send: config.grpc_max_send,
            instance_id,
            ignore: config.ignore.clone(),
            remote: Mutex::default(),
            uploader,
            remote_names: config.remote_bundles.iter().map(|b| b.name.clone()).collect(),
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
        let (sources, revisions) = self.read_sources()?;
        let fp = sources.fingerprint();
        if fp == *last {
            return Ok(false);
        }
        *last = fp;
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (sources, _) = compose(sources, &rt).map_err(|e| anyhow!(e))?;
        let set = PolicySet::compile_with(&sources, &self.load)?;
        *self.bundle_revisions.lock().unwrap_or_else(|p| p.into_inner()) = revisions.clone();
        let generation = set.generation();
        self.policy.store(Arc::new(Generation { set, first_decision: AtomicBool::new(true), revisions, has_mask: Default::default() }));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation, "policies reloaded");
        Ok(true)
    }

    /// Recompiles the files with the runtime state `rt` and swaps the result in; on error
    /// nothing changes (the caller keeps its previous runtime state).
    pub(crate) fn apply_runtime(&self, rt: &Runtime) -> anyhow::Result<()> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (sources, revisions) = self.read_sources()?;
        let (sources, _) = compose(sources, rt).map_err(|e| anyhow!(e))?;
        let set = PolicySet::compile_with(&sources, &self.load)?;
        self.policy.store(Arc::new(Generation { set, first_decision: AtomicBool::new(true), revisions, has_mask: Default::default() }));
        Ok(())
    }

    /// The files, the local bundles and the downloaded bundles, with the bundles' revisions.
    fn read_sources(&self) -> anyhow::Result<(Sources, Vec<(String, String)>)> {
        let (mut s, mut revisions) = read_all_with_revisions(&self.paths, &self.bundles, &self.verification, &self.ignore)?;
        for b in self.remote.lock().unwrap_or_else(|p| p.into_inner()).values() {
            revisions.push((b.name.clone(), b.manifest.revision.clone()));
            s.policies.extend(b.sources.policies.iter().cloned());
            s.data.extend(b.sources.data.iter().cloned());
            s.versions.extend(b.sources.versions.iter().map(|(k, v)| (k.clone(), *v)));
        }
        Ok((s, revisions))
    }

    /// Compiles the policies with `bundle` in place of the previous download of that bundle
    /// and swaps the result in atomically; on error the previous bundle keeps serving.
    /// Returns the new revision.
    pub fn activate_remote(&self, bundle: crate::bundle::Bundle) -> anyhow::Result<String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let name = bundle.name.clone();
        let revision = bundle.manifest.revision.clone();
        let previous = self.remote.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), bundle);
        let built = (|| {
            let (sources, revisions) = self.read_sources()?;
            let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let (sources, _) = compose(sources, &rt).map_err(|e| anyhow!(e))?;
            Ok::<_, anyhow::Error>((PolicySet::compile_with(&sources, &self.load)?, revisions))
        })();
        match built {
            Ok((set, revisions)) => {
                *self.bundle_revisions.lock().unwrap_or_else(|p| p.into_inner()) = revisions.clone();
                self.policy.store(Arc::new(Generation { set, first_decision: AtomicBool::new(true), revisions, has_mask: Default::default() }));
                let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
                if self.remote_names.iter().all(|n| remote.contains_key(n)) {
                    self.bundles_ready.store(true, Ordering::Relaxed);
                }
                Ok(revision)
            }
            Err(e) => {
                let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
                match previous {
                    Some(p) => remote.insert(name, p),
                    None => remote.remove(&name),
                };
                Err(e)
            }
        }
    }

    /// The current generation's policy set.
    pub fn policy_set(&self) -> arc_swap::Guard<Arc<Generation>> {
        self.policy.load()
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
        self.check_api(req, false)
    }

    /// Answers a `Check` of the ext_authz v2 API (a v2 request decoded as v3): the input's
    /// `version.ext_authz` is `v2` and the answer has only the fields v2 has.
    pub fn check_v2(&self, req: &CheckRequest) -> Result<CheckResponse, tonic::Status> {
        let mut r = self.check_api(req, true)?;
        r.dynamic_metadata = None;
        if let Some(HttpResponse::OkResponse(ok)) = &mut r.http_response {
            ok.headers_to_remove.clear();
            ok.response_headers_to_add.clear();
            ok.query_parameters_to_set.clear();
            ok.query_parameters_to_remove.clear();
        }
        Ok(r)
    }

    fn check_api(&self, req: &CheckRequest, v2: bool) -> Result<CheckResponse, tonic::Status> {
        let started = Instant::now();
        let r = self.check_inner(req, started, v2);
        if self.metrics.grpc.is_some() {
            let reason = r.as_ref().err().map(|s| format!("{:?}", s.code()).to_lowercase());
            self.metrics.grpc_check(started.elapsed(), reason.as_deref());
        }
        r
    }

    fn check_inner(&self, req: &CheckRequest, started: Instant, v2: bool) -> Result<CheckResponse, tonic::Status> {
        let generation = self.policy.load();
        let decision_id = new_decision_id();
        let input = match crate::input::build_input_full(req, self.skip_body_parse, v2, self.protos.as_ref()) {
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

    /// The instance id (decision log `labels.id`).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Whether decisions are logged.
    pub fn decision_logging(&self) -> bool {
        self.logger.enabled()
    }

    /// The data document: the files' data with the REST API's changes applied.
    pub fn effective_data(&self) -> serde_json::Value {
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.read_sources()
            .ok()
            .and_then(|(s, _)| compose(s, &rt).ok())
            .map(|(_, d)| d)
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// Evaluates `data.<path>` for the REST API. `Ok(None)`: undefined.
    pub fn query(&self, path: &str, input: Option<Value>, requested_by: Option<String>) -> Result<(Option<Value>, String), String> {
        self.query_with(path, input, requested_by, false).map(|a| (a.value, a.decision_id))
    }

    /// [`Authorizer::query`] with the builtin error mode and the evaluation time.
    pub fn query_with(&self, path: &str, input: Option<Value>, requested_by: Option<String>, strict: bool) -> Result<Answer, String> {
        let started = Instant::now();
        let generation = self.policy.load();
        let decision_id = new_decision_id();
        let t = Instant::now();
        let strict = strict || self.load.strict_builtin_errors;
        let r = generation.set.query_with(&rule_ref(path), input.clone(), strict);
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
        r.map(|value| Answer { value, decision_id, eval_ns }).map_err(|e: EvalError| e.to_string())
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
        let has_mask = *g.has_mask.get_or_init(|| g.set.rules_with_prefix("mask").iter().any(|r| r == "data.system.log.mask"));
        let mask = if has_mask {
            let mut event = serde_json::Map::new();
            event.insert("decision_id".into(), id.into());
            if let Some(i) = input {
                event.insert("input".into(), crate::decision_log::value_json(i));
            }
            event.insert("path".into(), path.into());
            if let Ok(v) = result {
                event.insert("result".into(), crate::decision_log::value_json(v));
            }
            match g.set.query("data.system.log.mask", Some(Value::from(serde_json::Value::Object(event)))) {
                Ok(Some(v)) => Some(crate::decision_log::value_json(&v)),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!("data.system.log.mask failed, the decision is not logged: {e}");
                    return;
                }
            }
        } else {
            None
        };
        self.logger.log(&Entry {
            mask,
            bundles: &g.revisions,
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
/// `V2` serves `envoy.service.auth.v2.Authorization`: v2 messages are a wire-compatible
/// subset of v3 (same field numbers), so the request is decoded as v3, the input says
/// `"ext_authz": "v2"`, and the answer keeps only what v2 has (status, OK headers, the denied
/// status, headers and body), as the plugin converts it.
#[derive(Clone)]
struct CheckService<const V2: bool>(Arc<Authorizer>);

const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const CHECK_PATH_V2: &str = "/envoy.service.auth.v2.Authorization/Check";
const CODEC_BUFFER: usize = 1000;

impl tonic::server::NamedService for CheckService<false> {
    const NAME: &'static str = AUTHORIZATION_SERVICE;
}

impl tonic::server::NamedService for CheckService<true> {
    const NAME: &'static str = "envoy.service.auth.v2.Authorization";
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

struct CheckMethod(Arc<Authorizer>, bool);

impl tonic::server::UnaryService<CheckRequest> for CheckMethod {
    type Response = CheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<CheckResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let r = if self.1 { self.0.check_v2(request.get_ref()) } else { self.0.check(request.get_ref()) };
        std::future::ready(r.map(tonic::Response::new))
    }
}

impl<B, const V2: bool> tonic::codegen::Service<http::Request<B>> for CheckService<V2>
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
        if req.uri().path() == if V2 { CHECK_PATH_V2 } else { CHECK_PATH } {
            let method = CheckMethod(self.0.clone(), V2);
            let (recv, send) = (self.0.grpc_max_recv, self.0.grpc_max_send);
            Box::pin(async move {
                let grpc = tonic::server::Grpc::new(CheckCodec).max_decoding_message_size(recv).max_encoding_message_size(send);
                let mut grpc = grpc;
                Ok(grpc.unary(method, req).await)
            })
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
    diagnostic_addr: Option<SocketAddr>,
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

        let (grpc_listener, grpc_addr) = match &config.grpc_unix {
            Some(path) => (
                crate::grpc_conn::Listener::bind_unix(path).with_context(|| format!("binding gRPC socket unix://{path}"))?,
                config.grpc_addr,
            ),
            None => {
                let l = TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
                let a = l.local_addr()?;
                (crate::grpc_conn::Listener::Tcp(l), a)
            }
        };
        let http_listener = match config.http_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding HTTP address {a}"))?),
            None => None,
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_service_status(AUTHORIZATION_SERVICE, tonic_health::ServingStatus::Serving).await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let svc = CheckService::<false>(authorizer.clone());
        let svc_v2 = CheckService::<true>(authorizer.clone());
        let mut routes = tonic::service::Routes::new(health_svc).add_service(svc).add_service(svc_v2);
        if config.enable_reflection {
            routes = crate::reflection::add_services(routes).context("gRPC server reflection")?;
        }
        let routes = routes.prepare();
        tasks.push(tokio::spawn({
            let rx = rx.clone();
            async move { crate::grpc_conn::serve(grpc_listener, routes, rx).await.context("gRPC server") }
        }));
        let addr = match &config.grpc_unix {
            Some(p) => format!("unix://{p}"),
            None => grpc_addr.to_string(),
        };
        tracing::info!(
            addr = %addr,
            enable_reflection = config.enable_reflection,
            "gRPC server listening (envoy.service.auth.v3/v2.Authorization, grpc.health.v1.Health{})",
            if config.enable_reflection { ", grpc.reflection.v1/v1alpha.ServerReflection" } else { "" }
        );

        if let Some(l) = http_listener {
            tasks.push(tokio::spawn(crate::api::serve(l, authorizer.clone(), rx.clone(), false)));
            tracing::info!(addr = %http_addr.expect("bound"), "HTTP API listening (/health, /metrics, /v1/data, /v1/policies, /v1/query)");
        }
        if let Some(u) = &authorizer.uploader {
            tasks.push(tokio::spawn(u.clone().run(rx.clone())));
        }
        if let Some(s) = &config.status {
            tasks.push(tokio::spawn(crate::status::run(authorizer.clone(), s.clone(), Duration::from_secs(1), rx.clone())));
        }
        for rb in &config.remote_bundles {
            tasks.push(tokio::spawn(crate::bundle_service::poll(authorizer.clone(), rb.clone(), rx.clone())));
            tracing::info!(bundle = %rb.name, url = %rb.url(), "polling bundle");
        }
        let mut diagnostic_addr = None;
        if let Some(d) = config.diagnostic_addr {
            let l = TcpListener::bind(d).await.with_context(|| format!("binding diagnostic address {d}"))?;
            diagnostic_addr = Some(l.local_addr()?);
            tasks.push(tokio::spawn(crate::api::serve(l, authorizer.clone(), rx.clone(), true)));
            tracing::info!(addr = %diagnostic_addr.expect("bound"), "diagnostic HTTP listening (/health, /metrics)");
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

        Ok(Handle { grpc_addr, http_addr, diagnostic_addr, authorizer, shutdown, tasks })
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

    /// The bound diagnostic address (`--diagnostic-addr`), if any.
    pub fn diagnostic_addr(&self) -> Option<SocketAddr> {
        self.diagnostic_addr
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addrs() {
        assert_eq!(parse_listen_addr(":9002").unwrap(), "0.0.0.0:9002".parse().unwrap());
        assert_eq!(parse_listen_addr("grpc://127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(parse_listen_addr("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert!(parse_listen_addr("unix:///tmp/x.sock").is_err()); // only the gRPC listener takes unix://
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

}
