//! `io.jwt.*` against tokens signed by OpenSSL (the reference signer; see
//! `fixtures/jwt/generate.py`), one per algorithm: accepted with every key form (certificate,
//! public key, JWK, JWK set), rejected for a bad signature, a wrong key, expiry, not-before,
//! audience, issuer and algorithm constraints, and tokens signed by sluice's `encode_sign`
//! verified again. Each expected answer is written here; when `SLUICE_OPA_PYTHONPATH` is set
//! every answer is also compared with the real OPA engine's.

mod common;

use serde_json::{json, Value as Json};
use sluice_authz::policy::Sources;
use sluice_authz::{LoadOptions, PolicySet, RegoVersion};

fn material() -> Json {
    let text = std::fs::read_to_string(common::fixture("jwt/material.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// (algorithm, key name in the material).
const ALGS: &[(&str, &str)] = &[
    ("HS256", "hmac"),
    ("HS384", "hmac"),
    ("HS512", "hmac"),
    ("RS256", "rsa"),
    ("RS384", "rsa"),
    ("RS512", "rsa"),
    ("PS256", "rsa"),
    ("PS384", "rsa"),
    ("PS512", "rsa"),
    ("ES256", "p256"),
    ("ES384", "p384"),
    ("ES512", "p521"),
    ("EdDSA", "ed25519"),
];

/// Every case: a Rego expression over `data.m` (the material) and its expected value.
fn cases() -> Vec<(String, Json)> {
    let mut out = Vec::new();
    let valid_time = "1800000000000000000";
    for (alg, kind) in ALGS {
        let tok = format!("data.m.tokens.{alg}");
        let f = format!("io.jwt.verify_{}", alg.to_ascii_lowercase());
        let (good, bad) = if *kind == "hmac" {
            ("data.m.secret".to_string(), "\"wrong-secret\"".to_string())
        } else {
            let other = if *kind == "rsa" { "p256" } else { "rsa" };
            (format!("data.m.keys.{kind}.cert"), format!("data.m.keys.{other}.cert"))
        };
        out.push((format!("{f}({tok}, {good})"), json!(true)));
        out.push((format!("{f}({tok}, {bad})"), json!(false)));
        out.push((format!("{f}(concat(\".\", array.concat(array.slice(split({tok}, \".\"), 0, 2), [\"AAAA\"])), {good})"), json!(false)));
        if *kind != "hmac" {
            out.push((format!("{f}({tok}, data.m.keys.{kind}.public_pem)"), json!(true)));
            out.push((format!("{f}({tok}, json.marshal(data.m.keys.{kind}.jwk))"), json!(true)));
            out.push((format!("{f}({tok}, json.marshal({{\"keys\": [data.m.keys.rsa.jwk, data.m.keys.{kind}.jwk]}}))"), json!(true)));
            // A JWK set whose only key is restricted to another algorithm is not tried.
            let other_alg = if alg.starts_with("ES") { "RS256" } else { "ES256" };
            out.push((
                format!("{f}({tok}, json.marshal({{\"keys\": [object.union(data.m.keys.{kind}.jwk, {{\"alg\": \"{other_alg}\"}})]}}))"),
                json!(false),
            ));
        }
        let key = if *kind == "hmac" { format!("\"secret\": {good}") } else { format!("\"cert\": {good}") };
        let dv = |extra: &str| format!("io.jwt.decode_verify({tok}, {{{key}{extra}}})");
        let header = json!({"alg": alg, "typ": "JWT", "kid": format!("k-{kind}")});
        let payload = json!({"iss": "reference", "aud": "sluice", "sub": "alice", "nbf": 1700000000, "exp": 1900000000});
        let no = json!([false, {}, {}]);
        out.push((dv(&format!(", \"time\": {valid_time}, \"aud\": \"sluice\", \"iss\": \"reference\"")), json!([true, header, payload])));
        out.push((dv(&format!(", \"time\": {valid_time}, \"aud\": \"sluice\", \"alg\": \"{alg}\"")), json!([true, header, payload])));
        out.push((dv(", \"time\": 1950000000000000000, \"aud\": \"sluice\""), no.clone()));
        out.push((dv(", \"time\": 1600000000000000000, \"aud\": \"sluice\""), no.clone()));
        out.push((dv(&format!(", \"time\": {valid_time}, \"aud\": \"someone-else\"")), no.clone()));
        out.push((dv(&format!(", \"time\": {valid_time}")), no.clone()));
        out.push((dv(&format!(", \"time\": {valid_time}, \"aud\": \"sluice\", \"iss\": \"mallory\"")), no.clone()));
        let wrong_alg = if *alg == "HS256" { "HS384" } else { "HS256" };
        out.push((dv(&format!(", \"time\": {valid_time}, \"aud\": \"sluice\", \"alg\": \"{wrong_alg}\"")), no.clone()));
        out.push((format!("io.jwt.decode({tok})[1]"), payload.clone()));
        // A token signed by sluice verifies (with sluice and with OPA).
        let jwk = if *kind == "hmac" {
            "{\"kty\": \"oct\", \"k\": base64url.encode_no_pad(data.m.secret)}".to_string()
        } else {
            format!("data.m.keys.{kind}.jwk_private")
        };
        out.push((format!("{f}(io.jwt.encode_sign({{\"alg\": \"{alg}\"}}, {{\"sub\": \"bob\"}}, {jwk}), {good})"), json!(true)));
        out.push((format!("io.jwt.decode(io.jwt.encode_sign_raw(\"{{\\\"alg\\\":\\\"{alg}\\\"}}\", \"{{\\\"n\\\":1}}\", json.marshal({jwk})))[1]"), json!({"n": 1})));
    }
    out
}

#[test]
fn tokens_signed_by_openssl_verify_as_in_opa() {
    let m = material();
    let module = "package jwtcases\n".to_string();
    let cases = cases();
    let sources = Sources {
        policies: vec![("jwt.rego".into(), module.clone())],
        data: vec![("m.json".into(), vec!["m".into()], m.to_string())],
        ..Default::default()
    };
    let opts = LoadOptions { strict_builtin_errors: true, ..LoadOptions::new(RegoVersion::V1, "jwtcases/none") };
    let p = PolicySet::compile_with(&sources, &opts).unwrap();
    let mut failures = Vec::new();
    let mut ours = Vec::new();
    for (q, want) in &cases {
        let got = match p.query(q, None) {
            Ok(Some(v)) => sluice_authz::decision_log::value_json(&v),
            Ok(None) => json!("<undefined>"),
            Err(e) => json!(format!("<error: {e}>")),
        };
        if &got != want {
            failures.push(format!("{q}\n    sluice: {got}\n    want:   {want}"));
        }
        ours.push(got);
    }
    assert!(failures.is_empty(), "{} of {} JWT cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("{} JWT cases as expected", cases.len());

    let job = common::opa::Job {
        modules: vec![("jwt.rego".into(), module)],
        data: Some(json!({"m": m})),
        input: None,
        queries: cases.iter().map(|c| c.0.clone()).collect(),
        bindings: false,
    };
    let Some(results) = common::opa::run(&[job]) else { return };
    let results = results[0]["results"].as_array().expect("OPA results").clone();
    let mut differ = Vec::new();
    for ((q, _), (mine, theirs)) in cases.iter().zip(ours.iter().zip(results.iter())) {
        let theirs = theirs.get("value").cloned().unwrap_or_else(|| json!(format!("<{theirs}>")));
        if *mine != theirs {
            differ.push(format!("{q}\n    sluice: {mine}\n    OPA:    {theirs}"));
        }
    }
    assert!(differ.is_empty(), "{} of {} JWT answers differ from OPA's:\n{}", differ.len(), cases.len(), differ.join("\n"));
    eprintln!("{} JWT answers identical to OPA's", cases.len());
}

#[test]
fn malformed_tokens_and_keys_are_builtin_errors() {
    let sources = Sources { policies: vec![("p.rego".into(), "package p\n".into())], ..Default::default() };
    let strict = PolicySet::compile_with(
        &sources,
        &LoadOptions { strict_builtin_errors: true, ..LoadOptions::new(RegoVersion::V1, "p/none") },
    )
    .unwrap();
    let lenient = PolicySet::compile(&sources, RegoVersion::V1, "p/none").unwrap();
    for q in [
        "io.jwt.decode(\"nodots\")",
        "io.jwt.decode(\"a.b\")",
        "io.jwt.verify_rs256(\"a.b.c\", \"not a key\")",
        "io.jwt.decode_verify(\"a.b.c\", {\"bogus\": 1})",
        "io.jwt.decode_verify(\"a.b.c\", {})",
    ] {
        let e = strict.query(q, None).unwrap_err().to_string();
        assert!(e.contains("io.jwt."), "{q}: {e}");
        // Without strict builtin errors the expression is undefined, as in OPA.
        assert_eq!(lenient.query(q, None), Ok(None), "{q}");
    }
}
