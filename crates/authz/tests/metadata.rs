//! `rego.metadata.rule()` / `rego.metadata.chain()` against the real OPA engine: package,
//! subpackages (from another file), document and rule annotations, OPA's normalisation of
//! authors and related resources, rules and functions without annotations, and the error for
//! a call outside a rule. Without `SLUICE_OPA_PYTHONPATH` only sluice's side runs.

mod common;

use std::path::PathBuf;

use serde_json::{json, Value as Json};
use sluice_authz::policy::Sources;
use sluice_authz::{LoadOptions, PolicySet, RegoVersion};

const ROOT: &str = "# METADATA
# scope: subpackages
# title: Everything under acme
# organizations:
# - Acme Corp
package acme

base := rego.metadata.chain()
";

const SVC: &str = "# METADATA
# title: Service policies
# description: >-
#   Decides what callers may do.
# authors:
# - Jane Doe <jane@acme.example>
# - name: Bob
# - email: ops@acme.example
# related_resources:
# - https://acme.example/docs
# - ref: https://acme.example/runbook
#   description: Runbook
# custom:
#   severity: high
#   tags: [a, b]
package acme.svc

import rego.v1

# METADATA
# title: Allow
# description: Allows GETs
# custom:
#   level: 3
allow if input.method == \"GET\"

allow_meta := rego.metadata.rule()

# METADATA
# title: Chain of a rule
chain := rego.metadata.chain()

# METADATA
# title: Rule title
title := rego.metadata.rule().title

# METADATA
# scope: document
# title: All of p
p contains rego.metadata.chain()

# METADATA
# title: One p
p contains rego.metadata.rule()

f(x) := rego.metadata.rule() if x > 0

# METADATA
# title: g
g(x) := [x, rego.metadata.chain()]

# a comment mentioning rego.metadata.rule() is left alone
s := \"rego.metadata.rule()\"
";

fn queries() -> Vec<&'static str> {
    vec![
        "data.acme.base",
        "data.acme.svc.allow_meta",
        "data.acme.svc.chain",
        "data.acme.svc.title",
        "data.acme.svc.p",
        "data.acme.svc.f(1)",
        "data.acme.svc.g(2)",
        "data.acme.svc.s",
        "rego.metadata.rule()",
        "rego.metadata.chain()",
    ]
}

fn sluice(p: &PolicySet, q: &str) -> Json {
    match p.query_bindings(&format!("x := {q}"), None, true) {
        Ok(r) => r.first().map(|b| json!({"value": b["x"]})).unwrap_or(json!({"undefined": true})),
        Err(e) => json!({"error": e.to_string()}),
    }
}

#[test]
fn metadata_agrees_with_opa() {
    let files = [("root.rego", ROOT), ("svc.rego", SVC)];
    let sources = Sources {
        policies: files.iter().map(|(n, t)| (PathBuf::from(n), t.to_string())).collect(),
        ..Default::default()
    };
    let opts = LoadOptions { strict_builtin_errors: true, ..LoadOptions::new(RegoVersion::V1, "acme/svc/allow") };
    let p = PolicySet::compile_with(&sources, &opts).unwrap();
    let qs = queries();
    let ours: Vec<Json> = qs.iter().map(|q| sluice(&p, q)).collect();

    assert_eq!(ours[1]["value"], json!({}), "allow_meta has no block of its own: {}", ours[1]);
    assert_eq!(ours[3]["value"], "Rule title");
    assert_eq!(ours[2]["value"][1]["annotations"]["authors"][0], json!({"name": "Jane Doe", "email": "jane@acme.example"}));
    assert_eq!(ours[2]["value"][2]["path"], json!(["acme"]), "{}", ours[2]);
    assert_eq!(ours[7]["value"], "rego.metadata.rule()");
    assert!(ours[8].get("error").is_some(), "outside a rule: {}", ours[8]);

    let job = common::opa::Job {
        modules: files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
        data: None,
        input: None,
        queries: qs.iter().map(|q| q.to_string()).collect(),
        bindings: false,
    };
    let Some(res) = common::opa::run(&[job]) else { return };
    assert!(res[0].get("load_error").is_none(), "{}", res[0]);
    let res = res[0]["results"].as_array().unwrap().clone();
    let mut differ = Vec::new();
    for ((q, mine), theirs) in qs.iter().zip(&ours).zip(&res) {
        let same = match (mine.get("value"), theirs.get("value")) {
            (Some(a), Some(b)) => a == b,
            _ => mine.get("error").is_some() == theirs.get("error").is_some() && mine.get("undefined") == theirs.get("undefined"),
        };
        if !same {
            differ.push(format!("{q}\n  sluice: {mine}\n  OPA:    {theirs}"));
        }
    }
    eprintln!("rego.metadata: {}/{} queries identical to OPA", qs.len() - differ.len(), qs.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn schemas_are_refused_at_load() {
    let src = "package a\n\n# METADATA\n# schemas:\n# - input: schema.input\np := 1\n";
    let sources = Sources { policies: vec![(PathBuf::from("a.rego"), src.into())], ..Default::default() };
    let err = PolicySet::compile_with(&sources, &LoadOptions::new(RegoVersion::V1, "a/p")).unwrap_err();
    assert!(format!("{err:#}").contains("a.rego:3: METADATA schemas are not supported by sluice"), "{err:#}");
}
