//! `sluice authz`: the command line. Accepts OPA's `run --server …` command line as the guide's
//! compose file passes it, plus plain flags of our own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use serde_json::Value as Json;

use crate::decision_log::{DecisionLogSink, LogFormat};
use crate::policy::RegoVersion;
use crate::server::{parse_listen_addr, AuthzServer, Config};

const ABOUT: &str = "OPA-compatible ext_authz policy server: answers Envoy's \
envoy.service.auth.v3.Authorization/Check over gRPC with Rego policies (evaluated by regorus).";

const LONG_ABOUT: &str = "\
OPA-compatible ext_authz policy server.

Serves Envoy's envoy.service.auth.v3.Authorization/Check and grpc.health.v1.Health over gRPC
(h2c), and OPA's HTTP API (GET /health, GET|POST /v1/data/{path}). Decisions, input and result
mapping follow OPA's envoy_ext_authz_grpc plugin (OPA 0.63), so a policy written for
`openpolicyagent/opa:*-envoy` works unchanged.

OPA's command line is accepted as is, e.g. the guide's compose file:
  sluice authz run --server --log-format=json-pretty \\
      --set=plugins.envoy_ext_authz_grpc.addr=:9002 --set=decision_logs.console=true \\
      /etc/policy.rego

or with our own flags:
  sluice authz --grpc-addr 127.0.0.1:9002 --http-addr off --decision-log console policy.rego";

const AFTER_HELP: &str = "\
Rego version (without --v0/--v1), decided per .rego file:
  1. a file that imports future.keywords.* is Rego v0;
  2. a file with `import rego.v1` is Rego v1;
  3. a file that uses the keyword `if` or `contains` (outside comments and strings; the v0
     builtin call `contains(…)` does not count) is Rego v1;
  4. anything else is Rego v0 (OPA 0.x's default; the guide's policy.rego).

Every policy is compiled and test-evaluated at start; an error names file:line and the
command exits with status 1. Policy and data files are polled every second and a changed set
that compiles is swapped in atomically; one that does not compile is logged (file:line) and
the previous policies keep serving.

Supported --set / --config-file keys:
  plugins.envoy_ext_authz_grpc.addr      gRPC address (default :9191; `:9002` = all interfaces)
  plugins.envoy_ext_authz_grpc.path      decision path (default envoy/authz/allow)
  plugins.envoy_ext_authz_grpc.query     `data.a.b` queries only (converted to a path)
  plugins.envoy_ext_authz_grpc.dry-run   evaluate and log, but always answer OK
  plugins.envoy_ext_authz_grpc.skip-request-body-parse   no parsed_body/truncated_body in input
  plugins.envoy_ext_authz_grpc.enable-performance-metrics
                                         grpc_request_duration_seconds and error_counter
  plugins.envoy_ext_authz_grpc.grpc-max-recv-msg-size / grpc-max-send-msg-size   bytes
  plugins.envoy_ext_authz_grpc.proto-descriptor   FileDescriptorSet file: gRPC bodies (raw_body,
                                         Envoy's pack_as_bytes) decoded into parsed_body
  plugins.envoy_ext_authz_grpc.enable-reflection   gRPC server reflection (v1 and v1alpha)
  decision_logs.console                  true: decision logs on standard output
  services.NAME.{url,headers,credentials.bearer.token}   http:// bundle services
  bundles.NAME.{service,resource,polling.min_delay_seconds,polling.max_delay_seconds,signing.scope}
  labels.KEY                             extra decision log labels
  decision_logs.{service,resource,reporting.{buffer_size_limit_bytes,upload_size_limit_bytes,
    max_decisions_per_second,min_delay_seconds,max_delay_seconds}}   gzip uploads to a service
  status.{console,service,partition_name}   status reports (GET /v1/status) logged / POSTed to
                                         <service>/status[/partition] at start and on change
(the legacy plugin name envoy.ext_authz.grpc works too; any other key is an error at start:
status.prometheus, distributed_tracing, … are not supported)

Own flags win over --set, which wins over --config-file.";

const SHORT_AFTER_HELP: &str = "Rego v1 is auto-detected per file (`import rego.v1`, or the keywords \
`if`/`contains`); --help gives the exact rule and the supported --set keys.";

/// Arguments of `sluice authz`.
#[derive(clap::Args, Debug)]
#[command(
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    after_help = SHORT_AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Run the policy server (OPA's `opa run --server …` command line).
    #[command(long_about = LONG_ABOUT, after_long_help = AFTER_HELP, after_help = SHORT_AFTER_HELP)]
    Run(RunArgs),
    /// Evaluate a query (OPA's `opa eval`).
    Eval(crate::tools::EvalArgs),
    /// Run the policies' `test_` rules (OPA's `opa test`); exit 2 when a test fails.
    Test(crate::tools::TestArgs),
    /// Parse and compile policies, print the first error (OPA's `opa check`).
    Check(crate::tools::CheckArgs),
    /// Refused: regorus cannot print OPA's canonical Rego layout.
    Fmt(crate::tools::FmtArgs),
    /// Print the version.
    Version,
}

/// The options of `sluice authz [run]`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Policy (.rego) and data (.json, .yaml) files, or directories of them (walked
    /// recursively; data found in a sub-directory is placed under that directory's path).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Run as a server (OPA compatibility; sluice always runs as a server).
    #[arg(short = 's', long)]
    pub server: bool,

    /// Log format: text, json (one object per line) or json-pretty. Applies to the decision
    /// log too (json-pretty indents it).
    #[arg(long, value_enum, default_value = "json", value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Log level: debug, info, warn or error (RUST_LOG overrides it).
    #[arg(short = 'l', long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// OPA configuration override, KEY=VALUE (repeatable); `--help` lists the keys.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// OPA configuration file (YAML or JSON); the same keys as --set.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// HTTP API address (OPA's --addr); default :8181.
    #[arg(short = 'a', long = "addr", value_name = "ADDR")]
    pub addr: Vec<String>,

    /// gRPC address (overrides plugins.envoy_ext_authz_grpc.addr); port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<String>,

    /// HTTP API address (overrides --addr); `off` disables the HTTP API.
    #[arg(long, value_name = "ADDR|off")]
    pub http_addr: Option<String>,

    /// Decision path, slash-separated (overrides plugins.envoy_ext_authz_grpc.path);
    /// default envoy/authz/allow.
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// Decision log: `console` (standard output), `off`, or a FILE to append to.
    /// Default: off, or console with --set=decision_logs.console=true.
    #[arg(long, value_name = "console|off|FILE")]
    pub decision_log: Option<String>,

    /// Parse every .rego file as Rego v1 (OPA 1.x).
    #[arg(long, visible_alias = "v1-compatible", conflicts_with = "v0")]
    pub v1: bool,

    /// Parse every .rego file as Rego v0 (OPA 0.x); `import rego.v1` still selects v1 per file.
    #[arg(long, visible_alias = "v0-compatible")]
    pub v0: bool,

    /// Watch files and reload on change (OPA compatibility: this is the default).
    #[arg(short = 'w', long, conflicts_with = "no_watch")]
    pub watch: bool,

    /// Do not reload policies when files change.
    #[arg(long)]
    pub no_watch: bool,

    /// Bundle directory or .tar.gz (repeatable): `.manifest` (revision, roots, rego_version)
    /// and `.signatures.json` are honoured.
    #[arg(short = 'b', long, value_name = "PATH")]
    pub bundle: Vec<PathBuf>,

    /// Key that bundle signatures must verify with: a PEM public key or certificate file, a
    /// JWK file, or for HS256/384/512 the shared secret itself.
    #[arg(long, value_name = "KEY|FILE")]
    pub verification_key: Option<String>,

    /// Algorithm of bundle signatures (default RS256).
    #[arg(long, value_name = "ALG")]
    pub signing_alg: Option<String>,

    /// Required `scope` of bundle signatures.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,

    /// Load signed bundles without verifying their signatures.
    #[arg(long)]
    pub skip_verify: bool,

    /// Builtin errors end the evaluation with an error (OPA's --strict-builtin-errors).
    #[arg(long)]
    pub strict_builtin_errors: bool,

    /// Time budget of one decision, e.g. 500ms, 2s; `0` for none. Default 1s.
    #[arg(long, value_name = "DURATION")]
    pub eval_timeout: Option<String>,

    /// Second HTTP address serving only /health and /metrics (Kubernetes probes).
    #[arg(long, value_name = "ADDR")]
    pub diagnostic_addr: Option<String>,

    /// Skip files and directories whose name matches this pattern (`*` and `?` wildcards)
    /// when loading directories, e.g. `.*` (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
}

/// Runs `sluice authz`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let run = match args.command {
        Some(Command::Run(r)) => r,
        Some(Command::Eval(e)) => return crate::tools::eval(&e, &mut stdout),
        Some(Command::Test(t)) => return crate::tools::test(&t, &mut stdout),
        Some(Command::Check(c)) => return crate::tools::check(&c, &mut stdout),
        Some(Command::Fmt(f)) => return crate::tools::fmt(&f),
        Some(Command::Version) => return crate::tools::version(&mut stdout),
        None => args.run,
    };
    init_tracing(&run);
    let config = config_from_args(&run)?;
    // Evaluation recurses per rule reference; bounds at load keep it shallow, and a larger
    // stack than tokio's 2 MiB leaves headroom (reserved address space, committed on use).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(16 << 20).build()?;
    rt.block_on(async move {
        let mut handle = AuthzServer::start(config).await?;
        let stopped = tokio::select! {
            r = handle.wait() => Some(r),
            _ = shutdown_signal() => None,
        };
        match stopped {
            Some(Err(e)) => Err(e),
            _ => {
                tracing::info!("shutting down");
                handle.shutdown().await;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_tracing(run: &RunArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let lvl = match run.log_level.to_ascii_lowercase().as_str() {
            "debug" => "debug",
            "warn" | "warning" => "warn",
            "error" => "error",
            _ => "info",
        };
        EnvFilter::new(format!("warn,sluice_authz={lvl}"))
    });
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match run.log_format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.event_format(OpaLogLine { pretty: false }).try_init(),
        LogFormat::JsonPretty => b.event_format(OpaLogLine { pretty: true }).try_init(),
    };
}

/// OPA's server log line: one JSON object with the event's fields, `level` (lower case),
/// `msg` and `time` (RFC 3339, seconds, UTC), keys sorted as Go's logrus prints them.
pub struct OpaLogLine {
    /// `--log-format=json-pretty`: indented.
    pub pretty: bool,
}

struct FieldsToJson(std::collections::BTreeMap<String, Json>);

impl tracing::field::Visit for FieldsToJson {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = if field.name() == "message" { "msg" } else { field.name() };
        self.0.insert(name.to_string(), Json::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let name = if field.name() == "message" { "msg" } else { field.name() };
        self.0.insert(name.to_string(), Json::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl OpaLogLine {
    /// The JSON text of one event's fields at `level`, at `now` (seconds since the epoch).
    pub fn line(&self, level: &tracing::Level, mut fields: std::collections::BTreeMap<String, Json>, now: i64) -> String {
        fields.insert("level".into(), level.as_str().to_ascii_lowercase().into());
        fields.insert("time".into(), format!("{}Z", crate::input::rfc3339_seconds(now)).into());
        fields.entry("msg".into()).or_insert_with(|| "".into());
        let obj: serde_json::Map<String, Json> = fields.into_iter().collect();
        let text = if self.pretty { serde_json::to_string_pretty(&obj) } else { serde_json::to_string(&obj) }.unwrap_or_default();
        crate::decision_log::go_html_escape(text)
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OpaLogLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut v = FieldsToJson(Default::default());
        event.record(&mut v);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        writeln!(writer, "{}", self.line(event.metadata().level(), v.0, now))
    }
}

/// Builds the server [`Config`] from the command line (OPA flags, `--set`, config file and
/// our own flags).
pub fn config_from_args(run: &RunArgs) -> anyhow::Result<Config> {
    let mut tree = Json::Object(Default::default());
    if let Some(f) = &run.config_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("config file {}", f.display()))?;
        tree = serde_yaml_ng::from_str(&text).with_context(|| format!("config file {}", f.display()))?;
        if tree.is_null() {
            tree = Json::Object(Default::default());
        }
    }
    for kv in &run.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--set {kv:?}: expected KEY=VALUE"))?;
        set_path(&mut tree, k, parse_scalar(v));
    }
    let plugin = plugin_config(&tree);
    let get = |k: &str| plugin.and_then(|p| p.get(k));

    let mut cfg = Config { paths: run.paths.clone(), ..Config::default() };
    cfg.bundles = run.bundle.clone();
    let key = match &run.verification_key {
        Some(k) if std::path::Path::new(k).is_file() => {
            Some(std::fs::read_to_string(k).with_context(|| format!("--verification-key {k}"))?)
        }
        other => other.clone(),
    };
    cfg.verification = crate::bundle::Verification {
        key,
        alg: run.signing_alg.clone(),
        scope: run.scope.clone(),
        skip: run.skip_verify,
    };
    cfg.strict_builtin_errors = run.strict_builtin_errors;
    if let Some(t) = &run.eval_timeout {
        cfg.eval_timeout = parse_duration(t)?;
    }

    if let Some(a) = run.grpc_addr.as_deref().or(get("addr").and_then(Json::as_str)) {
        match a.trim().strip_prefix("unix://") {
            Some(path) if !path.is_empty() => cfg.grpc_unix = Some(path.to_string()),
            Some(_) => return Err(anyhow!("{a}: empty unix socket path")),
            None => cfg.grpc_addr = parse_listen_addr(a)?,
        }
    }
    let http = run.http_addr.as_deref().or(run.addr.first().map(String::as_str));
    match http {
        Some("off") | Some("none") => cfg.http_addr = None,
        Some(a) => cfg.http_addr = Some(parse_listen_addr(a)?),
        None => {}
    }
    if let Some(p) = run.path.as_deref().or(get("path").and_then(Json::as_str)) {
        cfg.decision_path = p.trim_matches('/').to_string();
    } else if let Some(q) = get("query").and_then(Json::as_str) {
        let p = q
            .strip_prefix("data.")
            .filter(|r| r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .ok_or_else(|| anyhow!("plugins.envoy_ext_authz_grpc.query {q:?}: only `data.a.b` references are supported; use path"))?;
        cfg.decision_path = p.replace('.', "/");
    }
    if let Some(d) = get("dry-run") {
        cfg.dry_run = d.as_bool().unwrap_or(false);
    }
    let console = tree
        .get("decision_logs")
        .and_then(|d| d.get("console"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    cfg.decision_log = match run.decision_log.as_deref() {
        Some("console") | Some("stdout") | Some("-") => DecisionLogSink::Stdout,
        Some("off") | Some("none") => DecisionLogSink::Off,
        Some(file) => DecisionLogSink::File(PathBuf::from(file)),
        None if console => DecisionLogSink::Stdout,
        None => DecisionLogSink::Off,
    };
    cfg.log_format = run.log_format;
    cfg.rego_version = if run.v1 {
        RegoVersion::V1
    } else if run.v0 {
        RegoVersion::V0
    } else {
        RegoVersion::Auto
    };
    cfg.watch_interval = if run.no_watch { None } else { Some(Duration::from_secs(1)) };
    let flag = |k: &str| -> anyhow::Result<bool> {
        match get(k) {
            None => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(Json::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(other) => Err(anyhow!("plugins.envoy_ext_authz_grpc.{k}: expected true or false, got {other}")),
        }
    };
    let size = |k: &str| -> anyhow::Result<Option<usize>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|n| *n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| anyhow!("plugins.envoy_ext_authz_grpc.{k}: expected a positive number of bytes, got {v}")),
        }
    };
    cfg.skip_body_parse = flag("skip-request-body-parse")?;
    cfg.performance_metrics = flag("enable-performance-metrics")?;
    if let Some(n) = size("grpc-max-recv-msg-size")? {
        cfg.grpc_max_recv = n;
    }
    if let Some(n) = size("grpc-max-send-msg-size")? {
        cfg.grpc_max_send = n;
    }
    cfg.enable_reflection = flag("enable-reflection")?;
    match get("proto-descriptor") {
        None => {}
        Some(Json::String(p)) if !p.is_empty() => cfg.proto_descriptor = Some(PathBuf::from(p)),
        Some(other) => return Err(anyhow!("plugins.envoy_ext_authz_grpc.proto-descriptor: expected a file path, got {other}")),
    }
    if get("path").is_some() && get("query").is_some() {
        return Err(anyhow!("plugins.envoy_ext_authz_grpc: set either path or query, not both"));
    }
    if let Some(d) = &run.diagnostic_addr {
        cfg.diagnostic_addr = Some(parse_listen_addr(d)?);
    }
    cfg.ignore = run.ignore.clone();
    cfg.remote_bundles = crate::bundle_service::from_config(&tree, &cfg.verification)?;
    cfg.decision_upload = crate::decision_upload::from_config(&tree)?;
    cfg.status = crate::status::from_config(&tree)?;
    if let Some(l) = tree.get("labels") {
        let o = l.as_object().ok_or_else(|| anyhow!("labels: expected an object"))?;
        for (k, v) in o {
            let v = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            cfg.labels.push((k.clone(), v));
        }
    }
    cfg.config_doc = tree.clone();
    if let Some(keys) = unknown_keys(&tree).first() {
        return Err(anyhow!("configuration key {keys} is not supported by sluice (supported keys: sluice authz run --help)"));
    }
    Ok(cfg)
}

/// `500ms`, `2s`, `1m`, or `0` (no budget).
fn parse_duration(s: &str) -> anyhow::Result<Option<Duration>> {
    let t = s.trim();
    if t == "0" {
        return Ok(None);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len()));
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(anyhow!("invalid duration {s:?} (use ms, s or m)")),
    };
    Ok(Some(Duration::from_secs_f64(secs)))
}

fn plugin_config(tree: &Json) -> Option<&serde_json::Map<String, Json>> {
    let plugins = tree.get("plugins")?;
    plugins
        .get("envoy_ext_authz_grpc")
        .or_else(|| plugins.get("envoy.ext_authz.grpc"))
        .or_else(|| plugins.get("envoy")?.get("ext_authz")?.get("grpc"))
        .and_then(Json::as_object)
}

fn unknown_keys(tree: &Json) -> Vec<String> {
    let mut out = Vec::new();
    let Some(top) = tree.as_object() else { return out };
    for (k, v) in top {
        match k.as_str() {
            "plugins" => {
                if let Some(p) = v.as_object() {
                    for name in p.keys() {
                        if name != "envoy_ext_authz_grpc" && name != "envoy.ext_authz.grpc" && name != "envoy" {
                            out.push(format!("plugins.{name}"));
                        }
                    }
                }
                if let Some(pc) = plugin_config(tree) {
                    for key in pc.keys() {
                        let known = [
                            "addr", "path", "query", "dry-run", "skip-request-body-parse", "enable-performance-metrics",
                            "grpc-max-recv-msg-size", "grpc-max-send-msg-size", "enable-reflection", "proto-descriptor",
                        ];
                        if !known.contains(&key.as_str()) {
                            out.push(format!("plugins.envoy_ext_authz_grpc.{key}"));
                        }
                    }
                }
            }
            "decision_logs" => {
                if let Some(d) = v.as_object() {
                    let known = ["console", "service", "resource", "reporting"];
                    out.extend(d.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("decision_logs.{k}")));
                }
            }
            "services" | "bundles" | "labels" | "status" => {}
            other => out.push(other.to_string()),
        }
    }
    out
}

fn parse_scalar(v: &str) -> Json {
    match v {
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        "null" => Json::Null,
        _ => v
            .parse::<i64>()
            .map(Json::from)
            .unwrap_or_else(|_| Json::String(v.to_string())),
    }
}

fn set_path(tree: &mut Json, key: &str, value: Json) {
    let mut cur = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Json::Object(Default::default());
        }
        let obj = cur.as_object_mut().expect("object");
        if i + 1 == parts.len() {
            obj.insert(p.to_string(), value);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| Json::Object(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(clap::Subcommand, Debug)]
    enum Top {
        Authz(Args),
    }

    fn parse(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied())).unwrap();
        let Top::Authz(a) = cli.cmd;
        match a.command {
            Some(Command::Run(r)) => r,
            None => a.run,
            Some(other) => panic!("not a run command: {other:?}"),
        }
    }

    #[test]
    fn opa_log_line_shape() {
        let mut f = std::collections::BTreeMap::new();
        f.insert("msg".to_string(), Json::from("Initializing server."));
        f.insert("addrs".to_string(), serde_json::json!([":8181"]));
        let line = OpaLogLine { pretty: false }.line(&tracing::Level::INFO, f, 1_711_965_600);
        assert_eq!(line, r#"{"addrs":[":8181"],"level":"info","msg":"Initializing server.","time":"2024-04-01T10:00:00Z"}"#);
    }

    #[test]
    fn guide_command_line() {
        let r = parse(&[
            "authz",
            "run",
            "--server",
            "--log-format=json-pretty",
            "--set=plugins.envoy_ext_authz_grpc.addr=:9002",
            "--set=decision_logs.console=true",
            "/etc/policy.rego",
        ]);
        let c = config_from_args(&r).unwrap();
        assert_eq!(c.grpc_addr, "0.0.0.0:9002".parse().unwrap());
        assert_eq!(c.http_addr, Some("0.0.0.0:8181".parse().unwrap()));
        assert_eq!(c.decision_path, "envoy/authz/allow");
        assert!(matches!(c.decision_log, DecisionLogSink::Stdout));
        assert_eq!(c.log_format, LogFormat::JsonPretty);
        assert_eq!(c.paths, vec![PathBuf::from("/etc/policy.rego")]);
    }

    #[test]
    fn own_flags_win() {
        let r = parse(&[
            "authz",
            "--set=plugins.envoy.ext_authz.grpc.addr=:9002",
            "--set=plugins.envoy_ext_authz_grpc.path=x/y",
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=off",
            "--path=/a/b",
            "--decision-log=off",
            "--set=decision_logs.console=true",
            "--v1",
            "a.rego",
            "data.json",
        ]);
        let c = config_from_args(&r).unwrap();
        assert_eq!(c.grpc_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.http_addr, None);
        assert_eq!(c.decision_path, "a/b");
        assert!(matches!(c.decision_log, DecisionLogSink::Off));
        assert_eq!(c.rego_version, RegoVersion::V1);
        assert_eq!(c.paths.len(), 2);
        let r = parse(&["authz", "run", "--addr=127.0.0.1:1234", "--set=plugins.envoy_ext_authz_grpc.path=x/y", "p.rego"]);
        let c = config_from_args(&r).unwrap();
        assert_eq!(c.http_addr, Some("127.0.0.1:1234".parse().unwrap()));
        assert_eq!(c.decision_path, "x/y");
    }

    #[test]
    fn run_with_a_broken_policy_fails_naming_file_and_line() {
        let broken = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/broken.rego");
        let cli = Cli::try_parse_from([
            "sluice", "authz", "run", "--server", "--set=plugins.envoy_ext_authz_grpc.addr=127.0.0.1:0",
            "--addr=127.0.0.1:0", broken,
        ])
        .unwrap();
        let Top::Authz(a) = cli.cmd;
        let err = run(a).unwrap_err();
        assert!(format!("{err:#}").contains("broken.rego:6:"), "{err:#}");
    }

    #[test]
    fn help_mentions_detection_rule() {
        let e = Cli::try_parse_from(["sluice", "authz", "run", "--help"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("import rego.v1"), "{text}");
        assert!(text.contains("--set"), "{text}");
        let e = Cli::try_parse_from(["sluice", "authz", "--help"]).unwrap_err();
        assert!(e.to_string().contains("--grpc-addr"));
        assert!(Cli::try_parse_from(["sluice", "authz"]).is_err());
    }
}
