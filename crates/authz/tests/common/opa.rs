//! The real OPA engine as an oracle: the `opa-golib-python-bindings` wheel (OPA v1.20 as a Go
//! shared library), run through Python. Tests read `SLUICE_OPA_PYTHONPATH` (the wheel's
//! directory) and `SLUICE_PYTHON` (the interpreter, default `python3`); without the first they
//! skip the comparison and say so.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value as Json};

const DRIVER: &str = r#"
import json, sys
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError
jobs = json.load(sys.stdin)
out = []
def big_as_text(v):
    # Integers outside 64 bits become decimal text (serde_json cannot read them).
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and (v >= 2**64 or v < -2**63):
        return str(v)
    if isinstance(v, list):
        return [big_as_text(x) for x in v]
    if isinstance(v, dict):
        return {k: big_as_text(x) for k, x in v.items()}
    return v
for job in jobs:
    e = OpaEngine()
    res = []
    try:
        for i, (path, text) in enumerate(job["modules"]):
            e.add_policy(path, text)
        if job.get("data") is not None:
            e.add_data(job["data"])
    except OpaError as err:
        out.append({"load_error": err.message}); e.close(); continue
    for q in job["queries"]:
        if job.get("bindings"):
            try:
                res.append({"bindings": e.eval_query(q, job.get("input"))})
            except OpaError as err:
                res.append({"error": err.message})
            continue
        try:
            rs = e.eval_query("__x__ = " + q, job.get("input"))
            if len(rs) == 0:
                res.append({"undefined": True})
            elif len(rs) > 1:
                res.append({"many": [r["__x__"] for r in rs]})
            else:
                res.append({"value": rs[0]["__x__"]})
        except OpaError as err:
            res.append({"error": err.message})
    out.append({"results": res})
    e.close()
json.dump(big_as_text(out), sys.stdout)
"#;

/// One evaluation job: modules, data, input, and queries (Rego expressions).
pub struct Job {
    pub modules: Vec<(String, String)>,
    pub data: Option<Json>,
    pub input: Option<Json>,
    pub queries: Vec<String>,
    /// Answer each query with its list of variable bindings (`{"bindings": [...]}`) instead
    /// of the value of the expression.
    pub bindings: bool,
}

/// `None` (with a printed reason) when the oracle is not configured.
pub fn available() -> Option<(String, String)> {
    let Ok(path) = std::env::var("SLUICE_OPA_PYTHONPATH") else {
        eprintln!("SLUICE_OPA_PYTHONPATH is not set: skipping the comparison with the real OPA engine");
        return None;
    };
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    Some((python, path))
}

/// Runs the jobs through OPA; each result is `{"value": v}`, `{"undefined": true}`,
/// `{"error": msg}`, `{"many": [...]}`, or the job's `{"load_error": msg}`.
pub fn run(jobs: &[Job]) -> Option<Vec<Json>> {
    let (python, path) = available()?;
    let payload: Vec<Json> = jobs
        .iter()
        .map(|j| json!({"modules": j.modules, "data": j.data, "input": j.input, "queries": j.queries, "bindings": j.bindings}))
        .collect();
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(DRIVER)
        .env("PYTHONPATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let text = serde_json::to_vec(&payload).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&text);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut b);
        b
    });
    let ereader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut b);
        b
    });
    // Bounded: the oracle must answer within two minutes.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        panic!("the OPA oracle did not answer within 120 s");
    }
    let _ = writer.join();
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    let stderr = ereader.join().unwrap();
    assert!(status.success(), "OPA oracle failed: {}", String::from_utf8_lossy(&stderr));
    let v: Json = serde_json::from_slice(&stdout).expect("oracle output");
    Some(v.as_array().unwrap().clone())
}
