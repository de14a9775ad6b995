//! OPA's policy tools: `sluice authz eval`, `test`, `check`, `fmt`, `version`.

use std::io::{Read as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use regorus::Value;
use serde_json::{json, Value as Json};

use crate::decision_log::value_json;
use crate::policy::{LoadOptions, PolicySet, RegoVersion, Sources};

/// Rego version flags shared by the tools.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VersionFlags {
    /// Parse every .rego file as Rego v0 (OPA 0.x).
    #[arg(long = "v0-compatible", conflicts_with = "v1_compatible")]
    pub v0_compatible: bool,
    /// Parse every .rego file as Rego v1 (OPA 1.x).
    #[arg(long = "v1-compatible")]
    pub v1_compatible: bool,
}

impl VersionFlags {
    fn version(&self) -> RegoVersion {
        if self.v0_compatible {
            RegoVersion::V0
        } else if self.v1_compatible {
            RegoVersion::V1
        } else {
            RegoVersion::Auto
        }
    }
}

/// `sluice authz eval`: evaluates a query (OPA's `opa eval`).
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// The query, e.g. `data.envoy.authz.allow` or `x := 1 + 1`.
    pub query: String,
    /// Policy or data file or directory (repeatable).
    #[arg(short = 'd', long = "data", value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// Bundle directory or .tar.gz (repeatable).
    #[arg(short = 'b', long = "bundle", value_name = "PATH")]
    pub bundle: Vec<PathBuf>,
    /// Input document file (JSON or YAML).
    #[arg(short = 'i', long = "input", value_name = "FILE", conflicts_with = "stdin_input")]
    pub input: Option<PathBuf>,
    /// Read the input document from standard input.
    #[arg(short = 'I', long = "stdin-input")]
    pub stdin_input: bool,
    /// Output format: json (OPA's result set), pretty, raw (values only), values, bindings.
    #[arg(short = 'f', long = "format", default_value = "json", value_parser = ["json", "pretty", "raw", "values", "bindings"])]
    pub format: String,
    /// Exit with status 1 when the result is undefined.
    #[arg(long, conflicts_with = "fail_defined")]
    pub fail: bool,
    /// Exit with status 1 when the result is defined.
    #[arg(long)]
    pub fail_defined: bool,
    /// Builtin errors end the evaluation (instead of making the expression undefined).
    #[arg(long)]
    pub strict_builtin_errors: bool,
    #[command(flatten)]
    pub versions: VersionFlags,
}

/// `sluice authz test`: runs the `test_` rules (OPA's `opa test`).
#[derive(clap::Args, Debug, Clone)]
pub struct TestArgs {
    /// Policy, data and test files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Bundle directory or .tar.gz (repeatable).
    #[arg(short = 'b', long = "bundle", value_name = "PATH")]
    pub bundle: Vec<PathBuf>,
    /// Print every test's result.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Run only the tests whose reference matches this regular expression.
    #[arg(short = 'r', long = "run", value_name = "REGEX")]
    pub run: Option<String>,
    /// Output format: pretty or json.
    #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub format: String,
    /// Report line coverage (JSON) instead of the results.
    #[arg(short = 'c', long)]
    pub coverage: bool,
    #[command(flatten)]
    pub versions: VersionFlags,
}

/// `sluice authz check`: parses and compiles policies, printing the errors.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Policy files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Bundle directory or .tar.gz (repeatable).
    #[arg(short = 'b', long = "bundle", value_name = "PATH")]
    pub bundle: Vec<PathBuf>,
    #[command(flatten)]
    pub versions: VersionFlags,
}

/// `sluice authz fmt` (refused: regorus has no Rego formatter).
#[derive(clap::Args, Debug, Clone)]
pub struct FmtArgs {
    /// Files (ignored: the command is refused).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

fn read_sources(paths: &[PathBuf], bundles: &[PathBuf]) -> anyhow::Result<(Sources, Option<RegoVersion>)> {
    let mut s = Sources::read(paths)?;
    for b in bundles {
        let bundle = crate::bundle::Bundle::read(b, &crate::bundle::Verification { skip: true, ..Default::default() })?;
        s.policies.extend(bundle.sources.policies);
        s.data.extend(bundle.sources.data);
        s.versions.extend(bundle.sources.versions);
    }
    Ok((s, None))
}

fn read_input(args: &EvalArgs) -> anyhow::Result<Option<Value>> {
    let text = if args.stdin_input {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t).context("reading input from standard input")?;
        t
    } else if let Some(f) = &args.input {
        std::fs::read_to_string(f).with_context(|| format!("input {}", f.display()))?
    } else {
        return Ok(None);
    };
    let j: Json = serde_yaml_ng::from_str(&text).context("input is neither JSON nor YAML")?;
    Ok(Some(Value::from(j)))
}

/// Runs `eval`, writing to `out`. The exit code follows OPA: 1 on errors, and with `--fail` /
/// `--fail-defined` when the result is undefined / defined.
pub fn eval(args: &EvalArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (sources, forced) = read_sources(&args.data, &args.bundle)?;
    let opts = LoadOptions {
        strict_builtin_errors: args.strict_builtin_errors,
        eval_timeout: None,
        ..LoadOptions::new(forced.unwrap_or(args.versions.version()), "")
    };
    let set = PolicySet::compile_with(&sources, &opts)?;
    let input = read_input(args)?;
    let rs = match set.query_results(&args.query, input, args.strict_builtin_errors) {
        Ok(rs) => rs,
        Err(e) => {
            if args.format == "json" {
                writeln!(out, "{}", serde_json::to_string_pretty(&json!({"errors": [{"message": e.to_string()}]}))?)?;
            } else {
                writeln!(out, "{e}")?;
            }
            return Ok(ExitCode::from(1));
        }
    };
    let results = rs.get("result").and_then(Json::as_array).cloned().unwrap_or_default();
    let defined = !results.is_empty();
    match args.format.as_str() {
        "json" => writeln!(out, "{}", serde_json::to_string_pretty(&rs)?)?,
        "values" => {
            let v: Vec<Json> = results
                .iter()
                .map(|r| Json::Array(r["expressions"].as_array().into_iter().flatten().map(|e| e["value"].clone()).collect()))
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?
        }
        "bindings" => {
            let v: Vec<Json> = results.iter().map(|r| r.get("bindings").cloned().unwrap_or(json!({}))).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?
        }
        "raw" => {
            for r in &results {
                for e in r["expressions"].as_array().into_iter().flatten() {
                    match &e["value"] {
                        Json::String(s) => writeln!(out, "{s}")?,
                        v => writeln!(out, "{}", serde_json::to_string(v)?)?,
                    }
                }
            }
        }
        _ => {
            // pretty: a single value is printed as indented JSON; otherwise one line per result.
            if !defined {
                writeln!(out, "undefined")?;
            } else if results.len() == 1 && results[0].get("bindings").is_none() && results[0]["expressions"].as_array().is_some_and(|e| e.len() == 1) {
                writeln!(out, "{}", serde_json::to_string_pretty(&results[0]["expressions"][0]["value"])?)?;
            } else {
                for r in &results {
                    let b = r.get("bindings").cloned().unwrap_or(json!({}));
                    writeln!(out, "{}", serde_json::to_string(&b)?)?;
                }
            }
        }
    }
    Ok(if (args.fail && !defined) || (args.fail_defined && defined) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn duration_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// Runs `test`: exit 0 when every test passes, 2 when one fails or errors, 1 when the
/// policies do not load.
pub fn test(args: &TestArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (sources, forced) = read_sources(&args.paths, &args.bundle)?;
    let opts = LoadOptions { eval_timeout: None, ..LoadOptions::new(forced.unwrap_or(args.versions.version()), "") };
    let set = PolicySet::compile_with(&sources, &opts)?;
    let filter = args.run.as_deref().map(regex::Regex::new).transpose().context("--run")?;
    let tests: Vec<String> = set
        .rules_with_prefix("test_")
        .into_iter()
        .filter(|r| filter.as_ref().is_none_or(|f| f.is_match(r)))
        .collect();
    if args.coverage {
        let (_, report) = set.eval_with_coverage(&tests);
        let report = report.ok_or_else(|| anyhow!("no coverage report"))?;
        let (mut covered_n, mut not_n) = (0usize, 0usize);
        let mut files = serde_json::Map::new();
        for f in &report.files {
            covered_n += f.covered.len();
            not_n += f.not_covered.len();
            let total = f.covered.len() + f.not_covered.len();
            let pct = if total == 0 { 100.0 } else { 100.0 * f.covered.len() as f64 / total as f64 };
            files.insert(
                f.path.clone(),
                json!({
                    "covered": ranges(&f.covered),
                    "not_covered": ranges(&f.not_covered),
                    "covered_lines": f.covered.len(),
                    "not_covered_lines": f.not_covered.len(),
                    "coverage": round1(pct),
                }),
            );
        }
        let total = covered_n + not_n;
        let pct = if total == 0 { 100.0 } else { 100.0 * covered_n as f64 / total as f64 };
        let doc = json!({"files": files, "covered_lines": covered_n, "not_covered_lines": not_n, "coverage": round1(pct)});
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut results = Vec::new();
    for t in &tests {
        let started = Instant::now();
        let r = set.query(t, None);
        let ns = duration_ns(started);
        let (pkg, name) = t.rsplit_once('.').unwrap_or(("data", t));
        let outcome = match &r {
            Ok(Some(Value::Bool(true))) => "PASS",
            Ok(_) => "FAIL",
            Err(_) => "ERROR",
        };
        results.push((pkg.to_string(), name.to_string(), outcome, ns, r.err().map(|e| e.to_string())));
    }
    let pass = results.iter().filter(|r| r.2 == "PASS").count();
    let fail = results.iter().filter(|r| r.2 == "FAIL").count();
    let err = results.iter().filter(|r| r.2 == "ERROR").count();
    if args.format == "json" {
        let v: Vec<Json> = results
            .iter()
            .map(|(pkg, name, outcome, ns, e)| {
                let mut o = json!({"location": {}, "package": pkg, "name": name, "duration": ns});
                if *outcome == "FAIL" {
                    o["fail"] = json!(true);
                }
                if let Some(e) = e {
                    o["error"] = json!({"message": e});
                }
                o
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let show_all = args.verbose;
        let mut last_file = None;
        for (pkg, name, outcome, ns, e) in &results {
            if show_all || *outcome != "PASS" {
                if last_file.as_deref() != Some(pkg.as_str()) {
                    writeln!(out, "{pkg}:")?;
                    last_file = Some(pkg.clone());
                }
                let ms = *ns as f64 / 1e6;
                match e {
                    Some(e) => writeln!(out, "{pkg}.{name}: {outcome} ({ms:.3}ms)\n  {e}")?,
                    None => writeln!(out, "{pkg}.{name}: {outcome} ({ms:.3}ms)")?,
                }
            }
        }
        if show_all || fail + err > 0 {
            writeln!(out, "{}", "-".repeat(80))?;
        }
        let total = results.len();
        if pass > 0 {
            writeln!(out, "PASS: {pass}/{total}")?;
        }
        if fail > 0 {
            writeln!(out, "FAIL: {fail}/{total}")?;
        }
        if err > 0 {
            writeln!(out, "ERROR: {err}/{total}")?;
        }
        if total == 0 {
            writeln!(out, "no tests found")?;
        }
    }
    Ok(if fail + err > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Lines as OPA's `[{"start": {"row"}, "end": {"row"}}]` ranges.
fn ranges(lines: &std::collections::BTreeSet<u32>) -> Json {
    let mut out = Vec::new();
    let mut it = lines.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().expect("peeked");
        }
        out.push(json!({"start": {"row": start}, "end": {"row": end}}));
    }
    Json::Array(out)
}

/// Runs `check`: nothing on success (exit 0), the first error and exit 1 otherwise.
pub fn check(args: &CheckArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let r = read_sources(&args.paths, &args.bundle).and_then(|(s, forced)| {
        let opts = LoadOptions { eval_timeout: None, ..LoadOptions::new(forced.unwrap_or(args.versions.version()), "") };
        PolicySet::compile_with(&s, &opts)
    });
    match r {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            writeln!(out, "1 error occurred: {e:#}")?;
            Ok(ExitCode::from(1))
        }
    }
}

/// `fmt` is refused: regorus cannot print Rego back in OPA's canonical layout.
pub fn fmt(_args: &FmtArgs) -> anyhow::Result<ExitCode> {
    bail!("sluice authz fmt: not supported: regorus has no Rego formatter, so sluice cannot produce OPA's canonical layout; use `opa fmt`")
}

/// `version`: sluice's version, the OPA version it follows, and the Rego engine.
pub fn version(out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    writeln!(out, "Version: {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "Compatible with: OPA {} (envoy plugin)", crate::server::OPA_VERSION)?;
    writeln!(out, "Rego engine: regorus 0.14")?;
    writeln!(out, "Platform: {}/{}", std::env::consts::OS, std::env::consts::ARCH)?;
    writeln!(out, "WebAssembly: unavailable")?;
    Ok(ExitCode::SUCCESS)
}

/// A value as JSON (sets as arrays).
pub fn to_json(v: &Value) -> Json {
    value_json(v)
}
