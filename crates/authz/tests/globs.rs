//! `regex.globs_match` against the real OPA engine on random pattern pairs (and malformed
//! patterns: both must be errors). Without `SLUICE_OPA_PYTHONPATH` only sluice's side runs.
//!
//! sluice computes the intersection exactly (product automaton); OPA's library
//! (glob-intersection) is a backtracking heuristic that misses intersections when one pattern
//! ends in starred elements after the other is used up (`"[b-c]b*"` and `"."` both match
//! `"b"`, OPA answers false). Every pair where the two differ must be such a case: OPA false,
//! sluice true, and a string matching both patterns found by brute force with the `regex`
//! crate (the generated patterns are also valid regexes with the same meaning). The test
//! prints how many pairs are identical.

mod common;

use std::path::PathBuf;

use serde_json::{json, Value as Json};
use sluice_authz::policy::Sources;
use sluice_authz::{LoadOptions, PolicySet, RegoVersion};

fn pairs() -> Vec<(String, String)> {
    let pieces = ["a", "b", "c", ".", "[ab]", "[b-c]", "[a-c]", "\\.", "[xa]"];
    let flags = ["", "", "*", "+"];
    let mut seed: u64 = 0x0b5e_55ed_9e11;
    let mut rnd = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut out = Vec::new();
    for _ in 0..300 {
        let mut pat = || (0..1 + rnd(4)).map(|_| format!("{}{}", pieces[rnd(pieces.len())], flags[rnd(flags.len())])).collect::<String>();
        let (a, b) = (pat(), pat());
        out.push((a, b));
    }
    for bad in ["*a", "a**", "[a", "a]", "[-a]", "[a-]", "[z-a]", "a\\", "[a-c-e]"] {
        out.push((bad.to_string(), "a".to_string()));
    }
    out
}

/// Every non-empty string of up to `n` characters over the patterns' alphabet.
fn words(n: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut frontier = vec![String::new()];
    for _ in 0..n {
        let mut next = Vec::new();
        for w in &frontier {
            for c in ['a', 'b', 'c', 'x', '.'] {
                next.push(format!("{w}{c}"));
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all
}

fn sluice(p: &PolicySet, a: &str, b: &str) -> Result<Json, String> {
    let q = format!("x := regex.globs_match({}, {})", json!(a), json!(b));
    let r = p.query_bindings(&q, None, true).map_err(|e| e.to_string())?;
    Ok(r.first().map(|b| b["x"].clone()).unwrap_or(Json::Null))
}

#[test]
fn globs_match_agrees_with_opa() {
    let sources = Sources { policies: vec![(PathBuf::from("t.rego"), "package t\n".into())], ..Default::default() };
    let opts = LoadOptions { strict_builtin_errors: true, ..LoadOptions::new(RegoVersion::V1, "t") };
    let p = PolicySet::compile_with(&sources, &opts).unwrap();
    let cases = pairs();
    let ours: Vec<Result<Json, String>> = cases.iter().map(|(a, b)| sluice(&p, a, b)).collect();
    let trues = ours.iter().filter(|r| matches!(r, Ok(Json::Bool(true)))).count();
    let falses = ours.iter().filter(|r| matches!(r, Ok(Json::Bool(false)))).count();
    assert!(trues > 50 && falses > 50, "{trues} true, {falses} false");
    assert_eq!(ours.iter().filter(|r| r.is_err()).count(), 9, "the malformed patterns are errors");
    let job = common::opa::Job {
        modules: vec![("t.rego".into(), "package t\n".into())],
        data: None,
        input: None,
        queries: cases.iter().map(|(a, b)| format!("regex.globs_match({}, {})", json!(a), json!(b))).collect(),
        bindings: false,
    };
    let Some(res) = common::opa::run(&[job]) else { return };
    let res = res[0]["results"].as_array().unwrap().clone();
    let words = words(6);
    let (mut identical, mut opa_misses) = (0, 0);
    let mut unexplained = Vec::new();
    for (((a, b), mine), theirs) in cases.iter().zip(&ours).zip(&res) {
        let same = match (mine, theirs.get("value"), theirs.get("error")) {
            (Ok(v), Some(w), _) => v == w,
            (Err(_), _, Some(_)) => true,
            _ => false,
        };
        if same {
            identical += 1;
            continue;
        }
        let opa_false_negative = matches!(mine, Ok(Json::Bool(true))) && theirs.get("value") == Some(&Json::Bool(false));
        let (ra, rb) = (regex::Regex::new(&format!("^(?:{a})$")).unwrap(), regex::Regex::new(&format!("^(?:{b})$")).unwrap());
        let witness = words.iter().find(|w| ra.is_match(w) && rb.is_match(w));
        if opa_false_negative && witness.is_some() {
            opa_misses += 1;
        } else {
            unexplained.push(format!("{a:?} ∩ {b:?}: sluice {mine:?}, OPA {theirs}, common string {witness:?}"));
        }
    }
    eprintln!(
        "regex.globs_match: {identical}/{} pairs identical to OPA; {opa_misses} pairs where OPA's heuristic answers false although a common string exists",
        cases.len()
    );
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
    assert!(identical * 100 >= cases.len() * 70, "fewer than 70 % identical: {identical}/{}", cases.len());
}
