//! The conformance suite: cases in OPA's own test-case format (`tests/conformance/*.yaml`:
//! `modules`, `data`, `input`, `query`, `want_result` or `want_error`/`want_error_code`,
//! `strict_error`, `sort_bindings`), written for sluice and covering every builtin family and
//! the language features. The expected answers are the real OPA engine's (filled in by
//! `tests/conformance/fill.py`); with `SLUICE_OPA_PYTHONPATH` set the test also re-asks OPA and
//! fails if a stored answer no longer matches it.
//!
//! Every case where sluice's answer differs must be listed with its reason in
//! `tests/conformance/known_differences.yaml`, and every listed case must still differ, so the
//! list is exactly the set of differences. The pass count is printed.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};
use sluice_authz::policy::Sources;
use sluice_authz::{LoadOptions, PolicySet, RegoVersion};

struct Case {
    file: String,
    note: String,
    modules: Vec<String>,
    data: Option<Json>,
    input: Option<Json>,
    query: String,
    strict: bool,
    sort: bool,
    want: Result<Vec<Json>, String>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("known_differences.yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let doc: Json = serde_yaml_ng::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for c in doc["cases"].as_array().unwrap() {
            let want = if let Some(r) = c.get("want_result") {
                Ok(r.as_array().cloned().unwrap_or_default())
            } else {
                Err(c["want_error"].as_str().unwrap_or("").to_string())
            };
            out.push(Case {
                file: f.file_name().unwrap().to_string_lossy().into_owned(),
                note: c["note"].as_str().unwrap().to_string(),
                modules: c
                    .get("modules")
                    .and_then(Json::as_array)
                    .map(|m| m.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                    .unwrap_or_else(|| vec!["package test\n".to_string()]),
                data: c.get("data").cloned().filter(|d| !d.is_null()),
                input: c.get("input").cloned().filter(|d| !d.is_null()),
                query: c["query"].as_str().unwrap().to_string(),
                strict: c.get("strict_error").and_then(Json::as_bool).unwrap_or(false),
                sort: c.get("sort_bindings").and_then(Json::as_bool).unwrap_or(false),
                want,
            });
        }
    }
    out
}

/// Numbers compared by value (`3` and `3.0` are the same number).
fn norm(v: &Json) -> Json {
    match v {
        Json::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => v.clone(),
        },
        Json::Array(a) => Json::Array(a.iter().map(norm).collect()),
        Json::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.clone(), norm(v))).collect()),
        _ => v.clone(),
    }
}

fn sorted(mut v: Vec<Json>) -> Vec<Json> {
    v.sort_by_key(|x| x.to_string());
    v
}

/// sluice's answer to a case: the bindings, or the error (a load error included).
fn run_sluice(c: &Case) -> Result<Vec<Json>, String> {
    let sources = Sources {
        policies: c.modules.iter().enumerate().map(|(i, m)| (PathBuf::from(format!("test-{i}.rego")), m.clone())).collect(),
        data: c.data.iter().map(|d| (PathBuf::from("data.json"), vec![], d.to_string())).collect(),
        ..Default::default()
    };
    let opts = LoadOptions { strict_builtin_errors: c.strict, ..LoadOptions::new(RegoVersion::V1, "__conformance__") };
    let p = PolicySet::compile_with(&sources, &opts).map_err(|e| format!("{e:#}"))?;
    let input = c.input.clone().map(regorus::Value::from);
    p.query_bindings(&c.query, input, c.strict).map_err(|e| e.to_string())
}

fn same(c: &Case, got: &Result<Vec<Json>, String>, want: &Result<Vec<Json>, String>) -> bool {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            let g: Vec<Json> = g.iter().map(norm).collect();
            let w: Vec<Json> = w.iter().map(norm).collect();
            if c.sort {
                sorted(g) == sorted(w)
            } else {
                g == w
            }
        }
        // An error where OPA reports an error: the same outcome (the texts differ: regorus'
        // messages are not OPA's).
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

fn known_differences() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir().join("known_differences.yaml")).unwrap();
    let doc: Json = serde_yaml_ng::from_str(&text).unwrap();
    doc["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["note"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn conformance_with_opa() {
    let cases = load_cases();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let known = known_differences();
    let mut identical = 0;
    let mut unexpected = Vec::new();
    let mut differing = Vec::new();
    let mut answers = Vec::new();
    for c in &cases {
        let got = run_sluice(c);
        let ok = same(c, &got, &c.want);
        if ok {
            identical += 1;
        } else {
            differing.push(c.note.clone());
            if !known.iter().any(|(n, _)| *n == c.note) {
                unexpected.push(format!("{} ({}): {}\n    sluice: {:?}\n    OPA:    {:?}", c.note, c.file, c.query, got, c.want));
            }
        }
        answers.push(got);
    }
    let stale: Vec<&String> = known.iter().map(|(n, _)| n).filter(|n| !differing.contains(n)).collect();
    eprintln!(
        "conformance: {identical}/{} cases identical to OPA ({:.1} %); {} known differences",
        cases.len(),
        100.0 * identical as f64 / cases.len() as f64,
        differing.len()
    );
    for (n, why) in &known {
        if differing.contains(n) {
            eprintln!("  differs: {n}: {why}");
        }
    }
    assert!(unexpected.is_empty(), "{} cases differ from OPA and are not listed:\n{}", unexpected.len(), unexpected.join("\n"));
    assert!(stale.is_empty(), "listed as differences but now identical to OPA (remove them): {stale:?}");
    assert!(identical * 100 >= cases.len() * 98, "fewer than 98 % of the cases are identical to OPA");

    // The stored answers are OPA's: re-ask the real engine when it is available.
    let jobs: Vec<common::opa::Job> = cases
        .iter()
        .map(|c| common::opa::Job {
            modules: c.modules.iter().enumerate().map(|(i, m)| (format!("test-{i}.rego"), m.clone())).collect(),
            data: c.data.clone(),
            input: c.input.clone(),
            queries: vec![c.query.clone()],
            bindings: true,
        })
        .collect();
    let Some(results) = common::opa::run(&jobs) else { return };
    let mut drift = Vec::new();
    for (c, r) in cases.iter().zip(results.iter()) {
        let lenient_unknowable = !c.strict
            && r["results"][0]["error"].as_str().is_some_and(|m| m.contains("eval_builtin_error") || m.contains("eval_type_error"));
        if lenient_unknowable {
            // The wheel is always strict: a lenient case whose builtin fails cannot be re-asked.
            continue;
        }
        let opa: Result<Vec<Json>, String> = if let Some(e) = r.get("load_error") {
            Err(e.to_string())
        } else {
            let x = &r["results"][0];
            match (x.get("bindings"), x.get("error")) {
                (Some(b), _) => Ok(b.as_array().cloned().unwrap_or_default()),
                (_, Some(e)) => Err(e.as_str().unwrap_or("").to_string()),
                _ => Err("no answer".into()),
            }
        };
        // Non-deterministic builtins (uuid.rfc4122 of a seed, time.now_ns) are written as
        // comparisons whose answer is stable, so any difference here is drift.
        if !same(c, &opa, &c.want) {
            drift.push(format!("{}: stored {:?}, OPA now {:?}", c.note, c.want, opa));
        }
    }
    assert!(drift.is_empty(), "stored answers differ from the real OPA engine:\n{}", drift.join("\n"));
    eprintln!("all {} stored answers re-checked against the real OPA engine", cases.len());
}
