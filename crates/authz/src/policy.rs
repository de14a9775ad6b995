//! Loading, compiling and evaluating Rego policies with regorus.
//!
//! A [`PolicySet`] is one immutable generation of policies and data. It is built from files and
//! directories ([`PolicySet::load`]), compiled, and test-evaluated once before it is used, so
//! that errors surface at load time with the file and line that caused them. Evaluation never
//! takes a lock: every thread keeps its own clone of the prepared engine (cloning is cheap,
//! modules and compiled state are shared behind `Arc`s), keyed by the generation id.

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroU32;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, LimitError, Value};

use crate::bounds::Bounds;
use crate::builtins::{self, CustomBuiltin};

/// How `.rego` files are parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegoVersion {
    /// Per file: see [`detect_v1`].
    #[default]
    Auto,
    /// Rego v0 (OPA 0.x) for every file, except files with `import rego.v1`.
    V0,
    /// Rego v1 (OPA 1.x) for every file.
    V1,
}

/// The auto-detection rule used with [`RegoVersion::Auto`], per file:
///
/// 1. a file that imports `future.keywords` is v0 (that import only makes sense in v0);
/// 2. a file with `import rego.v1` is v1;
/// 3. a file that uses the keyword `if` or `contains` (outside comments and strings) is v1;
/// 4. anything else is v0 (OPA 0.x's default, which the guide's `policy.rego` needs).
pub fn detect_v1(src: &str) -> bool {
    let toks = tokens(src);
    let mut has_kw = false;
    for w in toks.windows(3) {
        if w[0].0 == "import" && w[1].0.starts_with("future.keywords") {
            return false;
        }
        if w[0].0 == "import" && w[1].0 == "rego.v1" {
            return true;
        }
    }
    for (t, call) in &toks {
        // `contains(…)` is the v0 builtin; the keyword is never followed by `(`.
        if t == "if" || (t == "contains" && !call) {
            has_kw = true;
        }
        if t.starts_with("future.keywords") {
            return false;
        }
    }
    has_kw
}

/// Identifier-ish tokens (dotted names kept together), comments and strings skipped, each with
/// whether a `(` follows it (a call).
fn tokens(src: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == b'`' {
            i += 1;
            while i < b.len() && b[i] != b'`' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            out.push((src[st..i].to_string(), j < b.len() && b[j] == b'('));
        } else {
            i += 1;
        }
    }
    out.push((String::new(), false));
    out.push((String::new(), false));
    out
}

/// Turns an OPA decision path (`envoy/authz/allow`) into a Rego reference (`data.envoy.authz.allow`).
pub fn rule_ref(decision_path: &str) -> String {
    let mut r = String::from("data");
    for seg in decision_path.split('/').filter(|s| !s.is_empty()) {
        let ident = seg.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            r.push('.');
            r.push_str(seg);
        } else if seg.parse::<u64>().is_ok() {
            r.push_str(&format!("[{seg}]"));
        } else {
            r.push_str(&format!("[{}]", serde_json::Value::from(seg)));
        }
    }
    r
}

/// What the loader found for one path given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `(file, text, is_v1)` for each `.rego` file.
    pub policies: Vec<(PathBuf, String)>,
    /// `(file, prefix, text)` for each data file (`.json`, `.yaml`, `.yml`); `prefix` is the
    /// directory path below the root it was found in (OPA namespaces directory data that way).
    pub data: Vec<(PathBuf, Vec<String>, String)>,
    /// Rego versions fixed per policy file (a bundle manifest's `rego_version`), overriding the
    /// load option.
    pub versions: std::collections::BTreeMap<PathBuf, RegoVersion>,
}

impl Sources {
    /// Reads every policy and data file named by `paths` (files, or directories walked
    /// recursively; hidden entries are skipped).
    pub fn read(paths: &[PathBuf]) -> anyhow::Result<Sources> {
        let mut s = Sources::default();
        for p in paths {
            let md = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
            if md.is_dir() {
                walk(p, p, &mut s)?;
            } else {
                add_file(p, Vec::new(), &mut s, true)?;
            }
        }
        Ok(s)
    }

    /// Drops the files whose name matches one of the `--ignore` patterns (`*` and `?`
    /// wildcards). Hidden directories are never walked.
    pub fn drop_ignored(&mut self, patterns: &[String]) {
        if patterns.is_empty() {
            return;
        }
        let ignored = |p: &Path| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            patterns.iter().any(|pat| wildcard(pat, &name))
        };
        self.policies.retain(|(p, _)| !ignored(p));
        self.data.retain(|(p, _, _)| !ignored(p));
    }

    /// A cheap fingerprint of the contents, used by the reload watcher.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.policies.hash(&mut h);
        self.data.hash(&mut h);
        format!("{:?}", self.versions).hash(&mut h);
        h.finish()
    }
}

fn walk(root: &Path, dir: &Path, s: &mut Sources) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            walk(root, &p, s)?;
        } else {
            let prefix = p
                .parent()
                .and_then(|d| d.strip_prefix(root).ok())
                .map(|rel| {
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            add_file(&p, prefix, s, false)?;
        }
    }
    Ok(())
}

fn add_file(p: &Path, prefix: Vec<String>, s: &mut Sources, explicit: bool) -> anyhow::Result<()> {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "rego" => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            s.policies.push((p.to_path_buf(), text));
        }
        "json" | "yaml" | "yml" => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            s.data.push((p.to_path_buf(), prefix, text));
        }
        _ if explicit => {
            return Err(anyhow!(
                "{}: unsupported file type (expected .rego, .json, .yaml or .yml)",
                p.display()
            ))
        }
        _ => {}
    }
    Ok(())
}

/// `*` (any run) and `?` (one character) matching of a whole name.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `eval_rule`: the decision path names a rule (the fast path).
    Rule,
    /// `eval_query`: the decision path names a package, data, or nothing (undefined).
    Query,
}

/// One compiled generation of policies and data, ready to evaluate.
pub struct PolicySet {
    generation: u64,
    engine: Engine,
    /// Whether `engine` raises builtin errors.
    strict: bool,
    /// `engine` with the other builtin error mode, built on first use (REST
    /// `?strict-builtin-errors`).
    strict_twin: std::sync::OnceLock<Engine>,
    stats: Arc<EvalStats>,
    rule: String,
    mode: Mode,
    files: Vec<PathBuf>,
    /// The policy texts (arity of functions replaced by `with` in ad-hoc queries).
    texts: Vec<String>,
    packages: Vec<String>,
    compile_ns: u64,
    /// The decision rule compiled to regorus bytecode (RVM), when the bytecode compiler accepts
    /// the policy and agrees with the interpreter on the load-time probe. Only a *defined*
    /// result of the RVM is used; an undefined result or any RVM error is re-evaluated by the
    /// interpreter, which stays the reference (its errors and undefined decisions are what
    /// OPA reports).
    rvm: Option<Rvm>,
}

#[derive(Clone)]
struct Rvm {
    program: std::sync::Arc<Program>,
    data: Value,
}

impl Rvm {
    fn vm(&self) -> Option<RegoVM> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone()).ok()?;
        Some(vm)
    }
}

/// `SLUICE_AUTHZ_RVM=0` (or `off`/`false`) turns the bytecode path off: every decision is then
/// evaluated by the regorus interpreter.
fn rvm_enabled() -> bool {
    !matches!(
        std::env::var("SLUICE_AUTHZ_RVM").ok().as_deref().map(str::to_ascii_lowercase).as_deref(),
        Some("0") | Some("off") | Some("false") | Some("no")
    )
}

/// Per-thread evaluation state for one policy generation.
struct Worker {
    generation: u64,
    strict: bool,
    engine: Engine,
    vm: Option<RegoVM>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("generation", &self.generation)
            .field("rule", &self.rule)
            .field("files", &self.files)
            .field("packages", &self.packages)
            .finish()
    }
}

/// Errors from [`PolicySet::eval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The decision is undefined (OPA: `undefined decision`).
    Undefined,
    /// Several results (only possible for query-mode paths).
    Multiple,
    /// regorus reported an error while evaluating.
    Eval(String),
    /// The evaluation exceeded a bound (time budget, regex size); the message says which.
    Limit(String),
    /// The evaluation panicked (a bug in the engine or a builtin); the engine state of this
    /// thread was discarded, so the next evaluation starts clean.
    Panic(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Undefined => f.write_str("undefined decision"),
            EvalError::Multiple => f.write_str("multiple evaluation results"),
            EvalError::Eval(e) => f.write_str(e),
            EvalError::Limit(e) => write!(f, "evaluation stopped: {e}"),
            EvalError::Panic(e) => write!(f, "internal error: evaluation failed unexpectedly ({e})"),
        }
    }
}

impl std::error::Error for EvalError {}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

fn is_not_a_rule(e: &anyhow::Error) -> bool {
    let t = format!("{e:#}");
    t.contains("not a valid rule path") || t.contains("not a valid rule")
}

/// How policies are loaded and evaluated (everything but the sources).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// How `.rego` files are parsed.
    pub version: RegoVersion,
    /// Decision path, slash-separated (`envoy/authz/allow`).
    pub decision_path: String,
    /// Size and nesting bounds checked before parsing.
    pub bounds: Bounds,
    /// Time budget of one evaluation (`None`: unbounded, for the command-line tools).
    pub eval_timeout: Option<Duration>,
    /// OPA's `--strict-builtin-errors`: a builtin error is an evaluation error instead of an
    /// undefined expression.
    pub strict_builtin_errors: bool,
    /// Extra builtins (OPA's custom builtins), checked before the standard ones.
    pub custom_builtins: Vec<CustomBuiltin>,
}

/// The default per-decision time budget of the server.
pub const DEFAULT_EVAL_TIMEOUT: Duration = Duration::from_secs(1);

impl LoadOptions {
    /// Defaults for `decision_path`: auto-detected Rego version, default bounds, the default
    /// time budget, OPA's lenient builtin errors.
    pub fn new(version: RegoVersion, decision_path: &str) -> Self {
        LoadOptions {
            version,
            decision_path: decision_path.to_string(),
            bounds: Bounds::default(),
            eval_timeout: Some(DEFAULT_EVAL_TIMEOUT),
            strict_builtin_errors: false,
            custom_builtins: Vec::new(),
        }
    }
}

/// A regorus engine with sluice's builtins, bounds and error mode.
pub(crate) fn new_engine(opts: &LoadOptions) -> anyhow::Result<Engine> {
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(opts.strict_builtin_errors);
    if let Some(limit) = opts.eval_timeout {
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(64).expect("non-zero"),
        });
    }
    builtins::register(&mut engine, &opts.custom_builtins)?;
    Ok(engine)
}

impl PolicySet {
    /// Reads, compiles and test-evaluates the policies and data named by `paths`.
    ///
    /// The error text names the file and line of the first problem (`policy.rego:7:5: …`).
    pub fn load(paths: &[PathBuf], version: RegoVersion, decision_path: &str) -> anyhow::Result<Self> {
        let sources = Sources::read(paths)?;
        Self::compile(&sources, version, decision_path)
    }

    /// Compiles already-read sources (see [`Sources::read`]) with default [`LoadOptions`].
    pub fn compile(sources: &Sources, version: RegoVersion, decision_path: &str) -> anyhow::Result<Self> {
        Self::compile_with(sources, &LoadOptions::new(version, decision_path))
    }

    /// Compiles already-read sources with explicit options.
    pub fn compile_with(sources: &Sources, opts: &LoadOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let decision_path = opts.decision_path.as_str();
        let mut engine = new_engine(opts)?;
        let mut packages = Vec::new();
        let mut withs: Vec<builtins::WithBuiltin> = Vec::new();
        // METADATA annotations of every file (package annotations apply across files).
        let named: Vec<(String, &str)> = sources.policies.iter().map(|(p, t)| (p.display().to_string(), t.as_str())).collect();
        let meta = builtins::metadata::index(&named)?;
        for (path, text) in &sources.policies {
            crate::bounds::check(text, opts.bounds).map_err(|e| anyhow!("{}:{e}", path.display()))?;
            let text = builtins::metadata::rewrite(text, &path.display().to_string(), &meta)?;
            let (rewritten, found) = builtins::rewrite_with_builtins(&text);
            let text = &rewritten;
            for w in found {
                if !withs.contains(&w) {
                    withs.push(w);
                }
            }
            let v1 = match sources.versions.get(path).copied().unwrap_or(opts.version) {
                RegoVersion::V1 => true,
                RegoVersion::V0 => false,
                RegoVersion::Auto => detect_v1(text),
            };
            engine.set_rego_v0(!v1);
            let pkg = engine
                .add_policy(path.display().to_string(), text.clone())
                .map_err(|e| anyhow!("{}", tidy(&e, path)))?;
            packages.push(pkg);
        }
        if !withs.is_empty() {
            // Wrappers for `with f as <builtin>`: one function per builtin, with the arity of
            // the calls of the function it replaces.
            let mut module = format!("package {}\n\n", builtins::WITH_PACKAGE);
            let mut done = Vec::new();
            for w in &withs {
                if done.contains(&w.wrapper) {
                    continue;
                }
                let arity = sources
                    .policies
                    .iter()
                    .find_map(|(_, t)| builtins::call_arity(t, &w.target))
                    .ok_or_else(|| anyhow!("`with {} as {}`: {} is never called, so the replacement's arity is unknown", w.target, w.builtin, w.target))?;
                let params: Vec<String> = (0..arity).map(|i| format!("__a{i}")).collect();
                module.push_str(&format!("{}({}) := {}({})\n", w.wrapper, params.join(", "), w.builtin, params.join(", ")));
                done.push(w.wrapper.clone());
            }
            engine.set_rego_v0(false);
            engine.add_policy("<sluice: with wrappers>".into(), module).map_err(|e| anyhow!("{e:#}"))?;
        }
        builtins::check_calls(&engine, &opts.custom_builtins)?;
        let (chain, start) = builtins::rule_chain_depth(&engine, opts.bounds.max_rule_chain + 1);
        if chain > opts.bounds.max_rule_chain {
            return Err(anyhow!(
                "rule {start} starts a chain of more than {} rules that refer to each other, sluice's bound (each link is a level of recursion during evaluation)",
                opts.bounds.max_rule_chain
            ));
        }
        for (path, prefix, text) in &sources.data {
            let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
            let mut v = if is_json {
                Value::from_json_str(text)
            } else {
                Value::from_yaml_str(text)
            }
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
            for seg in prefix.iter().rev() {
                let mut o = regorus::value::Object::new();
                o.insert(Value::from(seg.as_str()), v);
                v = o.into_value();
            }
            if !matches!(v, Value::Object(_)) {
                return Err(anyhow!("{}: data file must hold an object", path.display()));
            }
            engine.add_data(v).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        }
        let rule = rule_ref(decision_path);
        // Test evaluation: prepares the engine (analysis, scheduling, rule gathering) and
        // surfaces errors that regorus only finds at evaluation, e.g. unsafe variables.
        engine.set_input(Value::new_object());
        let probe = if decision_path.is_empty() {
            // No decision (the policy tools): nothing to probe; queries are evaluated as given.
            Err(anyhow!("not a valid rule path"))
        } else {
            engine.eval_rule(rule.clone())
        };
        let mode = match probe {
            Ok(_) => Mode::Rule,
            Err(_) if decision_path.is_empty() => Mode::Query,
            Err(e) if is_not_a_rule(&e) => {
                engine
                    .eval_query(rule.clone(), false)
                    .map_err(|e| anyhow!("{}", tidy(&e, Path::new(""))))?;
                Mode::Query
            }
            Err(e) => return Err(anyhow!("{}", tidy(&e, Path::new("")))),
        };
        let mut rvm = None;
        if mode == Mode::Rule {
            if let Some(program) = check_statically(&mut engine, &rule)? {
                let r = Rvm { program, data: engine.get_data() };
                if !rvm_enabled() {
                    tracing::debug!("bytecode evaluation disabled by SLUICE_AUTHZ_RVM");
                } else if let Err(why) = rvm_cannot_diverge(&r.program, &rule) {
                    tracing::debug!("the interpreter evaluates every decision: the bytecode VM could differ ({why})");
                } else if rvm_agrees(&r, &mut engine, &rule) {
                    rvm = Some(r);
                }
            }
        }
        if mode == Mode::Query && !decision_path.is_empty() {
            tracing::warn!(
                path = decision_path,
                "decision path {rule} is not a rule in the loaded policies; it is evaluated as a query"
            );
        }
        Ok(PolicySet {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            engine,
            strict: opts.strict_builtin_errors,
            strict_twin: std::sync::OnceLock::new(),
            stats: Arc::new(EvalStats::default()),
            rule,
            mode,
            files: sources.policies.iter().map(|p| p.0.clone()).collect(),
            texts: sources.policies.iter().map(|p| p.1.clone()).collect(),
            packages,
            compile_ns: started.elapsed().as_nanos() as u64,
            rvm,
        })
    }

    /// A process-wide unique id of this generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Rego reference evaluated for decisions, e.g. `data.envoy.authz.allow`.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The policy files of this generation.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Package names, one per policy file.
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// How long loading and compiling took, in nanoseconds.
    pub fn compile_ns(&self) -> u64 {
        self.compile_ns
    }

    /// Evaluates the decision path against `input`. Lock-free: uses this thread's clone of the
    /// engine for this generation. Isolated: a panic inside the engine becomes
    /// [`EvalError::Panic`] and the thread's engine is rebuilt from the pristine copy; any other
    /// error also discards the thread's engine state.
    pub fn eval(&self, input: Value) -> Result<Value, EvalError> {
        let mode = self.mode;
        let rule = &self.rule;
        self.isolated(self.strict, |w| {
            if let Some(vm) = w.vm.as_mut() {
                vm.set_input(input.clone());
                let r = vm.execute();
                // Drop this evaluation's values now rather than at the next one.
                vm.set_input(Value::Null);
                match r {
                    Ok(Value::Undefined) | Err(_) => {}
                    Ok(v) => return Ok(v),
                }
            }
            interpret(&mut w.engine, mode, rule, input)
        })
    }

    /// Evaluates the decision with the regorus interpreter only (never the bytecode VM).
    /// [`PolicySet::eval`] must always agree with it; tests compare the two.
    pub fn eval_interpreted(&self, input: Value) -> Result<Value, EvalError> {
        let mode = self.mode;
        let rule = &self.rule;
        self.isolated(self.strict, |w| interpret(&mut w.engine, mode, rule, input))
    }

    /// Whether decisions are evaluated by the bytecode VM (with the interpreter as fallback).
    pub fn uses_bytecode(&self) -> bool {
        self.rvm.is_some()
    }

    /// Evaluates any `data` reference (REST API): `Ok(None)` when undefined.
    pub fn query(&self, reference: &str, input: Option<Value>) -> Result<Option<Value>, EvalError> {
        self.query_with(reference, input, self.strict)
    }

    /// [`PolicySet::query`] with an explicit builtin error mode (REST `?strict-builtin-errors`).
    pub fn query_with(&self, reference: &str, input: Option<Value>, strict: bool) -> Result<Option<Value>, EvalError> {
        self.isolated(strict, |w| {
            let e = &mut w.engine;
            e.set_input(input.unwrap_or(Value::Undefined));
            match query_value(e, reference) {
                Ok(v) => Ok(Some(v)),
                Err(EvalError::Undefined) => Ok(None),
                Err(x) => Err(x),
            }
        })
    }

    /// Evaluates an arbitrary query (OPA's `/v1/query`, `eval`, the conformance suite): one
    /// JSON object of variable bindings per result (an empty list: undefined).
    pub fn query_bindings(&self, query: &str, input: Option<Value>, strict: bool) -> Result<Vec<serde_json::Value>, EvalError> {
        fn run(e: &mut Engine, query: &str, input: Option<Value>) -> Result<Vec<serde_json::Value>, EvalError> {
            e.set_input(input.unwrap_or(Value::Undefined));
            let r = e.eval_query(query.to_string(), false).map_err(|err| eval_error(&err))?;
            Ok(r.result
                .iter()
                .map(|res| match &res.bindings {
                    Value::Object(_) => crate::decision_log::value_json(&res.bindings),
                    _ => serde_json::Value::Object(Default::default()),
                })
                .collect())
        }
        if let Some((mut e, q)) = self.with_builtin_engine(query, strict)? {
            let _mode = builtins::StrictMode::enter(strict);
            return catch_unwind(AssertUnwindSafe(|| run(&mut e, &q, input))).unwrap_or_else(|p| Err(EvalError::Panic(panic_message(&p))));
        }
        self.isolated(strict, |w| run(&mut w.engine, query, input))
    }

    /// For an ad-hoc query with `with f as <builtin>`: an engine with the wrapper functions
    /// added and the rewritten query (`None` when the query has no such `with`).
    fn with_builtin_engine(&self, query: &str, strict: bool) -> Result<Option<(Engine, String)>, EvalError> {
        let (rewritten, found) = builtins::rewrite_with_builtins(query);
        if found.is_empty() {
            return Ok(None);
        }
        let mut module = format!("package {}\n\n", builtins::WITH_PACKAGE);
        for w in &found {
            let arity = builtins::call_arity(query, &w.target)
                .or_else(|| self.texts.iter().find_map(|t| builtins::call_arity(t, &w.target)))
                .ok_or_else(|| EvalError::Eval(format!("`with {} as {}`: {} is never called", w.target, w.builtin, w.target)))?;
            let params: Vec<String> = (0..arity).map(|i| format!("__a{i}")).collect();
            module.push_str(&format!("{}_q({}) := {}({})\n", w.wrapper, params.join(", "), w.builtin, params.join(", ")));
        }
        let rewritten = found.iter().fold(rewritten, |q, w| {
            q.replace(&format!("data.{}.{} ", builtins::WITH_PACKAGE, w.wrapper), &format!("data.{}.{}_q ", builtins::WITH_PACKAGE, w.wrapper))
                .replace(&format!("data.{}.{}", builtins::WITH_PACKAGE, w.wrapper), &format!("data.{}.{}_q", builtins::WITH_PACKAGE, w.wrapper))
        });
        let mut e = self.pristine(strict).clone();
        e.set_rego_v0(false);
        e.add_policy("<sluice: query with wrappers>".into(), module).map_err(|err| EvalError::Eval(first_line(&format!("{err:#}")).to_string()))?;
        Ok(Some((e, rewritten)))
    }

    /// Evaluates a query and returns OPA's result set as JSON (`{"result": [{"expressions":
    /// [{"value", "text", "location"}], "bindings"}]}`, `{}` when undefined), for `eval`.
    pub fn query_results(&self, query: &str, input: Option<Value>, strict: bool) -> Result<serde_json::Value, EvalError> {
        self.isolated(strict, |w| {
            let e = &mut w.engine;
            e.set_input(input.unwrap_or(Value::Undefined));
            let r = e.eval_query(query.to_string(), false).map_err(|err| eval_error(&err))?;
            serde_json::to_value(&r).map_err(|err| EvalError::Eval(err.to_string()))
        })
    }

    /// References (`data.pkg.rule`) of every rule whose name starts with `prefix`, in file
    /// order (`test_` for `sluice authz test`).
    pub fn rules_with_prefix(&self, prefix: &str) -> Vec<String> {
        builtins::rules_with_prefix(&self.engine, prefix)
    }

    /// Evaluates each rule of `refs` with line coverage recorded: the values (or errors) and
    /// the report of every policy file.
    pub fn eval_with_coverage(&self, refs: &[String]) -> (Vec<Result<Value, EvalError>>, Option<regorus::coverage::Report>) {
        let mut e = self.engine.clone();
        e.set_enable_coverage(true);
        let mut out = Vec::new();
        for r in refs {
            e.set_input(Value::Undefined);
            let v = catch_unwind(AssertUnwindSafe(|| match e.eval_rule(r.clone()) {
                Ok(Value::Undefined) => Err(EvalError::Undefined),
                Ok(v) => Ok(v),
                Err(err) => Err(eval_error(&err)),
            }))
            .unwrap_or_else(|p| Err(EvalError::Panic(panic_message(&p))));
            out.push(v);
        }
        (out, e.get_coverage_report().ok())
    }

    /// Counters of failed evaluations of this generation.
    pub fn stats(&self) -> &EvalStats {
        &self.stats
    }

    fn pristine(&self, strict: bool) -> &Engine {
        if strict == self.strict {
            return &self.engine;
        }
        self.strict_twin.get_or_init(|| {
            let mut e = self.engine.clone();
            e.set_strict_builtin_errors(strict);
            e
        })
    }

    fn new_worker(&self, strict: bool) -> Worker {
        Worker {
            generation: self.generation,
            strict,
            engine: self.pristine(strict).clone(),
            vm: if strict == self.strict { self.rvm.as_ref().and_then(Rvm::vm) } else { None },
        }
    }

    /// Runs `f` on this thread's worker for this generation and error mode, with panics caught
    /// and the worker discarded after any error, so that no evaluation can leave state behind
    /// for the next one.
    fn isolated<R>(&self, strict: bool, f: impl FnOnce(&mut Worker) -> Result<R, EvalError>) -> Result<R, EvalError> {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _mode = builtins::StrictMode::enter(strict);
            self.with_worker(strict, f)
        }));
        let r = match r {
            Ok(r) => r,
            Err(payload) => {
                let msg = panic_message(&payload);
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(generation = self.generation, "evaluation panicked; the engine of this thread is rebuilt: {msg}");
                Err(EvalError::Panic(msg))
            }
        };
        match &r {
            Ok(_) | Err(EvalError::Undefined) | Err(EvalError::Multiple) => {}
            Err(e) => {
                WORKER.with(|cell| {
                    if let Ok(mut slot) = cell.try_borrow_mut() {
                        *slot = None;
                    }
                });
                match e {
                    EvalError::Limit(_) => self.stats.limits.fetch_add(1, Ordering::Relaxed),
                    _ => self.stats.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        r
    }

    fn with_worker<R>(&self, strict: bool, f: impl FnOnce(&mut Worker) -> R) -> R {
        WORKER.with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => {
                if slot.as_ref().map(|w| (w.generation, w.strict)) != Some((self.generation, strict)) {
                    *slot = Some(self.new_worker(strict));
                }
                f(slot.as_mut().expect("just set"))
            }
            // Re-entrant use on this thread (a custom builtin evaluating): a throw-away worker.
            Err(_) => f(&mut self.new_worker(strict)),
        })
    }
}

/// Failed evaluations of one policy generation, by kind.
#[derive(Debug, Default)]
pub struct EvalStats {
    /// Evaluations that panicked (engine rebuilt).
    pub panics: AtomicU64,
    /// Evaluations stopped by a bound (time budget, regex size).
    pub limits: AtomicU64,
    /// Other evaluation errors (conflicts, builtin errors in strict mode, type errors).
    pub errors: AtomicU64,
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Maps a regorus error to an [`EvalError`]: bounds become [`EvalError::Limit`].
fn eval_error(err: &anyhow::Error) -> EvalError {
    if let Some(l) = err.chain().find_map(|c| c.downcast_ref::<LimitError>()) {
        return EvalError::Limit(l.to_string());
    }
    let text = tidy(err, Path::new(""));
    if let Some(i) = text.find(builtins::LIMIT_MARK) {
        return EvalError::Limit(first_line(&text[i + builtins::LIMIT_MARK.len()..]).to_string());
    }
    if text.contains("execution exceeded") || text.contains("time limit") {
        return EvalError::Limit(first_line(&text).to_string());
    }
    EvalError::Eval(first_line(&text).to_string())
}

/// The decision by the regorus interpreter: the rule's value (undefined when the rule does not
/// exist or has no value), or the query's.
fn interpret(e: &mut Engine, mode: Mode, rule: &str, input: Value) -> Result<Value, EvalError> {
    e.set_input(input);
    match mode {
        Mode::Rule => match e.eval_rule(rule.to_string()) {
            Ok(Value::Undefined) => Err(EvalError::Undefined),
            Ok(v) => Ok(v),
            Err(err) if is_not_a_rule(&err) => Err(EvalError::Undefined),
            Err(err) => Err(eval_error(&err)),
        },
        Mode::Query => query_value(e, rule),
    }
}

fn query_value(e: &mut Engine, reference: &str) -> Result<Value, EvalError> {
    let r = e
        .eval_query(reference.to_string(), false)
        .map_err(|err| eval_error(&err))?;
    match r.result.len() {
        0 => Err(EvalError::Undefined),
        1 => match r.result[0].expressions.first().map(|x| &x.value) {
            None | Some(Value::Undefined) => Err(EvalError::Undefined),
            Some(v) => Ok(v.clone()),
        },
        _ => Err(EvalError::Multiple),
    }
}

/// The interpreter only finds some mistakes when evaluation reaches them (an unknown function or
/// an unsafe variable in a rule whose body fails on an empty input). regorus' bytecode compiler
/// checks every rule reachable from the decision, so it is run once at load: its "unknown
/// function" and "undefined/unsafe variable" errors are load errors; anything else it reports
/// (a construct it does not support) is only logged at debug level, since the interpreter, which
/// evaluates the decisions, accepted the policy.
fn check_statically(engine: &mut Engine, rule: &str) -> anyhow::Result<Option<std::sync::Arc<Program>>> {
    use regorus::languages::rego::compiler::Compiler;
    let compiled = match engine.compile_with_entrypoint(&regorus::Rc::from(rule)) {
        Ok(c) => c,
        Err(e) => return Err(anyhow!("{}", tidy(&e, Path::new("")))),
    };
    match Compiler::compile_from_policy(&compiled, &[rule]) {
        Ok(program) => Ok(Some(program)),
        Err(e) => {
            let text = e.to_string();
            let lower = text.to_ascii_lowercase();
            // Unknown functions are found by `builtins::check_calls` (the bytecode compiler does
            // not know sluice's builtins).
            if lower.contains("undefined variable") || lower.contains("unsafe") {
                return Err(anyhow!("{}", tidy(&anyhow!(text), Path::new(""))));
            }
            tracing::debug!("bytecode check skipped, the interpreter evaluates every decision: {text}");
            Ok(None)
        }
    }
}

/// Whether the bytecode VM can be trusted to give the interpreter's result whenever it gives a
/// defined one. The VM turns errors inside a rule body (type errors in arithmetic, builtin
/// errors, iterating a non-collection) and conflicting values of a complete rule into
/// "this body failed" / "undefined", where the interpreter reports an error; behind a `not`,
/// a `default` or a set comprehension that could become a *defined* decision. So the VM is only
/// used for programs made of instructions that cannot fail in the interpreter (loads,
/// references, comparisons, object/array/set literals, rule calls) and whose rules other than
/// the decision itself cannot conflict (one definition, or all definitions the same constant).
/// A conflict of the decision rule itself makes the VM answer undefined, which is re-evaluated
/// by the interpreter. Everything else (most real policies with builtins, loops or
/// arithmetic) is evaluated by the interpreter alone, as before.
fn rvm_cannot_diverge(program: &Program, rule: &str) -> Result<(), String> {
    use regorus::rvm::Instruction as I;
    for ins in &program.instructions {
        let ok = matches!(
            ins,
            I::Load { .. }
                | I::LoadTrue { .. }
                | I::LoadFalse { .. }
                | I::LoadNull { .. }
                | I::LoadBool { .. }
                | I::LoadData { .. }
                | I::LoadInput { .. }
                | I::Move { .. }
                | I::Eq { .. }
                | I::Ne { .. }
                | I::Lt { .. }
                | I::Le { .. }
                | I::Gt { .. }
                | I::Ge { .. }
                | I::Not { .. }
                | I::Return { .. }
                | I::ObjectSet { .. }
                | I::ObjectCreate { .. }
                | I::Index { .. }
                | I::IndexLiteral { .. }
                | I::ChainedIndex { .. }
                | I::ArrayNew { .. }
                | I::ArrayPush { .. }
                | I::ArrayPushDefined { .. }
                | I::ArrayCreate { .. }
                | I::SetNew { .. }
                | I::SetAdd { .. }
                | I::SetCreate { .. }
                | I::AssertEq { .. }
                | I::Guard { .. }
                | I::ReturnUndefinedIfNotTrue { .. }
                | I::CallRule { .. }
                | I::RuleInit { .. }
                | I::VirtualDataDocumentLookup { .. }
                | I::DestructuringSuccess { .. }
                | I::RuleReturn { .. }
                | I::Halt { .. }
        );
        if !ok {
            return Err(format!("instruction {ins:?}"));
        }
    }
    let entry = rule.strip_prefix("data.").unwrap_or(rule);
    for info in &program.rule_infos {
        let is_entry = info.name == rule || info.name == entry;
        let defs = info.definitions.len();
        if info.function_info.is_some() {
            return Err(format!("function {}", info.name));
        }
        if defs > 1 && !info.early_exit_on_first_success && !is_entry {
            return Err(format!("rule {} has {defs} definitions that could conflict", info.name));
        }
    }
    Ok(())
}

/// Load-time probe: the bytecode VM must load the data and give the interpreter's answer on
/// an empty input, else the interpreter alone serves this generation.
fn rvm_agrees(r: &Rvm, engine: &mut Engine, rule: &str) -> bool {
    let Some(mut vm) = r.vm() else {
        tracing::debug!("bytecode VM rejected the data; the interpreter evaluates every decision");
        return false;
    };
    vm.set_input(Value::new_object());
    let by_vm = vm.execute();
    engine.set_input(Value::new_object());
    let by_interpreter = engine.eval_rule(rule.to_string());
    match (by_vm, by_interpreter) {
        (Ok(a), Ok(b)) if a == b => true,
        // An undefined or failed VM result is re-evaluated by the interpreter anyway.
        (Ok(Value::Undefined) | Err(_), _) => true,
        (a, b) => {
            tracing::debug!(?a, ?b, "bytecode VM disagrees with the interpreter; the interpreter evaluates every decision");
            false
        }
    }
}

/// regorus error text reshaped as `file:line:col: message`, followed by regorus' source excerpt;
/// the file is named in front when regorus did not name it.
fn tidy(e: &anyhow::Error, path: &Path) -> String {
    let t = format!("{e:#}");
    let t = t.trim();
    let mut location = None;
    let mut message = None;
    let mut excerpt = Vec::new();
    for line in t.lines() {
        let l = line.trim_start();
        if location.is_none() && l.starts_with("--> ") {
            location = Some(l[4..].trim().to_string());
        } else if message.is_none() && l.starts_with("error: ") {
            message = Some(l[7..].trim().to_string());
        } else if !l.is_empty() {
            excerpt.push(line);
        }
    }
    let mut out = match (location, message) {
        (Some(loc), Some(msg)) => {
            let mut o = format!("{loc}: {msg}");
            if !excerpt.is_empty() {
                o.push('\n');
                o.push_str(&excerpt.join("\n"));
            }
            o
        }
        _ => t.to_string(),
    };
    let name = path.display().to_string();
    if !name.is_empty() && !out.contains(&name) {
        out = format!("{name}: {out}");
    }
    out
}

/// The first line of an error text (for gRPC messages and logs).
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert!(!detect_v1("package a\nallow = true { input.x }\n"));
        assert!(detect_v1("package a\nallow := true if { input.x }\n"));
        assert!(detect_v1("package a\nimport rego.v1\nallow = true { input.x }\n"));
        assert!(!detect_v1("package a\nimport future.keywords.if\nallow if { input.x }\n"));
        assert!(!detect_v1("package a\n# if you like\nallow { input.x == \"if\" }\n"));
        assert!(detect_v1("package a\ndeny contains msg if { msg := \"x\" }\n"));
        // The v0 builtin contains() is not the v1 keyword.
        assert!(!detect_v1("package a\nallow { contains(input.path, \"/admin\") }\n"));
        assert!(!detect_v1("package a\nallow { contains (input.path, \"/admin\") }\n"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(".*", ".git"));
        assert!(!wildcard(".*", "policy.rego"));
        assert!(wildcard("*_test.rego", "a_test.rego"));
        assert!(wildcard("a?c", "abc") && !wildcard("a?c", "abbc"));
    }

    #[test]
    fn rule_refs() {
        assert_eq!(rule_ref("envoy/authz/allow"), "data.envoy.authz.allow");
        assert_eq!(rule_ref("/a/b-c/0"), "data.a[\"b-c\"][0]");
        assert_eq!(rule_ref(""), "data");
    }

    fn sources(name: &str, text: &str) -> Sources {
        Sources { policies: vec![(PathBuf::from(name), text.to_string())], ..Sources::default() }
    }

    #[test]
    fn parse_error_names_file_and_line() {
        let err = PolicySet::compile(
            &sources("dir/broken.rego", "package x\n\nallow = true {\n  input.a ==\n}\n"),
            RegoVersion::Auto,
            "x/allow",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("dir/broken.rego:3:14: expecting }"), "{err}");
    }

    #[test]
    fn unsafe_var_is_a_load_error() {
        let err = PolicySet::compile(
            &sources("u.rego", "package x\n\nallow = true {\n  y == 1\n}\n"),
            RegoVersion::V0,
            "x/allow",
        )
        .unwrap_err()
        .to_string();
        eprintln!("{err}");
        assert!(err.contains("u.rego:4"), "{err}");
    }

    #[test]
    fn eval_rule_and_query_modes() {
        let p = PolicySet::compile(
            &sources("p.rego", "package x\ndefault allow = false\nallow { input.a == 1 }\n"),
            RegoVersion::Auto,
            "x/allow",
        )
        .unwrap();
        let mut o = regorus::value::Object::new();
        o.insert(Value::from("a"), Value::from(1u64));
        assert_eq!(p.eval(o.into_value()).unwrap(), Value::from(true));
        assert_eq!(p.eval(Value::new_object()).unwrap(), Value::from(false));
        let q = PolicySet::compile(&sources("p.rego", "package x\nallow { input.a == 1 }\n"), RegoVersion::V0, "x/missing")
            .unwrap();
        assert_eq!(q.eval(Value::new_object()), Err(EvalError::Undefined));
        assert_eq!(p.query("data.x.nothing", None).unwrap(), None);
    }
}
