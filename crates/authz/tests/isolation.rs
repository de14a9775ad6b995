//! One request cannot break the server: panics inside an evaluation (a regorus builtin bug, a
//! custom builtin) become that request's gRPC error and leave the engine clean for the next
//! one; pathological policies are refused at load; evaluations have a time budget; random
//! inputs never let a panic escape.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use regorus::Value;
use sluice_authz::{AuthzServer, Config, CustomBuiltin, EvalError, LoadOptions, PolicySet, RegoVersion};

const POISON_POLICY: &str = r#"package envoy.authz

import rego.v1

default allow := false

headers := input.attributes.request.http.headers

allow if {
	input.attributes.request.http.method == "GET"
	not poisoned
}

# regorus 0.14 panicked (byte range out of bounds) when the value is shorter than the
# template's literal prefix; OPA (and sluice) answer false.
poisoned if regex.template_match("urn:foo:{.*}", headers["x-template"], "{", "}")

# A custom builtin that panics on "boom", deep inside the evaluation of `allow`: without
# isolation the engine would keep `allow` and `poisoned` marked as being evaluated and answer
# every later decision with "recursion detected".
poisoned if test.explode(headers["x-explode"])

# strings.count(x, "") panicked in regorus; OPA (and sluice) answer the number of characters + 1.
poisoned if strings.count(headers["x-count"], "") == 6
"#;

fn explode() -> CustomBuiltin {
    CustomBuiltin {
        name: "test.explode".into(),
        arity: 1,
        f: Arc::new(|args: &[Value]| {
            if args[0] == Value::from("boom") {
                panic!("test.explode: boom");
            }
            Ok(Value::Bool(false))
        }),
    }
}

#[tokio::test]
async fn poison_requests_do_not_change_other_answers() {
    let dir = TempDir::new("poison");
    let policy = dir.write("policy.rego", POISON_POLICY);
    let cfg = Config { custom_builtins: vec![explode()], ..Config::loopback(vec![policy]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut panicking = 0u64;
    let started = Instant::now();
    for i in 0..60 {
        assert!(started.elapsed() < Duration::from_secs(60), "took too long");
        // Every third request is a poison request of one of the kinds, the others ordinary.
        let r = match i % 6 {
            1 | 3 => check(&mut c, check_request("GET", "http", "/", &[("x-explode", "boom")])).await,
            5 => {
                // strings.count("dummy", "") == 6: an ordinary deny, no error.
                let r = check(&mut c, check_request("GET", "http", "/", &[("x-count", "dummy")])).await.unwrap();
                assert_eq!(r.status.unwrap().code, 7, "request {i}: strings.count(\"dummy\", \"\") must be 6");
                continue;
            }
            _ => {
                let r = check(&mut c, check_request("GET", "http", "/", &[("x-explode", "fine"), ("x-count", "dummies"), ("x-template", "u")]))
                    .await
                    .unwrap_or_else(|e| panic!("ordinary request {i} failed: {e}"));
                assert_eq!(r.status.unwrap().code, 0, "ordinary request {i} was not allowed");
                continue;
            }
        };
        let e = r.expect_err("a panicking evaluation must be an error (Envoy denies)");
        assert_eq!(e.code(), tonic::Code::Unknown, "{e}");
        assert!(e.message().contains("internal error"), "{e}");
        panicking += 1;
    }
    assert_eq!(panicking, 20);
    let (panics, limits, _) = h.authorizer().failed_decisions();
    assert_eq!(panics, panicking, "each poison request panicked once and was counted");
    assert_eq!(limits, 0);
    // The same connection still works after the burst.
    let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn concurrent_poison_and_ordinary_requests() {
    let dir = TempDir::new("poison-concurrent");
    let policy = dir.write("policy.rego", POISON_POLICY);
    let cfg = Config { custom_builtins: vec![explode()], ..Config::loopback(vec![policy]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let addr = h.grpc_addr();
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut ok = 0;
            for i in 0..40 {
                let poison = (i + t) % 2 == 0;
                let hdr: &[(&str, &str)] = if poison { &[("x-explode", "boom")] } else { &[] };
                match check(&mut c, check_request("GET", "http", "/", hdr)).await {
                    Ok(r) if !poison => {
                        assert_eq!(r.status.unwrap().code, 0);
                        ok += 1;
                    }
                    Err(_) if poison => {}
                    other => panic!("request {i} of task {t} (poison: {poison}): {other:?}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += tokio::time::timeout(Duration::from_secs(60), t).await.unwrap().unwrap();
    }
    assert_eq!(ok, 80);
    assert_eq!(h.authorizer().failed_decisions().0, 80);
    h.shutdown().await;
}

fn sources(text: &str) -> sluice_authz::policy::Sources {
    sluice_authz::policy::Sources { policies: vec![("p.rego".into(), text.to_string())], ..Default::default() }
}

#[test]
fn literals_nested_twenty_deep_are_refused_quickly() {
    let text = format!("package p\n\nx := {}1{}\n", "[".repeat(20), "]".repeat(20));
    let t = Instant::now();
    let e = PolicySet::compile(&sources(&text), RegoVersion::V1, "p/x").unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(e.starts_with("p.rego:3:"), "{e}");
    assert!(e.contains("nested more than 12 deep"), "{e}");
    let text = format!("package p\n\nx := {}\"a\": 1{}\n", "{\"a\": ".repeat(20), "}".repeat(21));
    assert!(PolicySet::compile(&sources(&text), RegoVersion::V1, "p/x").is_err());
}

#[test]
fn long_rule_chains_are_refused_at_load() {
    // A thousand rules each referring to the next overflowed a 2 MiB stack during evaluation
    // (aborting the process); such a policy is refused before it is evaluated.
    let chain = |n: usize| {
        let mut text = String::from("package p\n\nimport rego.v1\n\n");
        for i in 0..n {
            text.push_str(&format!("a{i} := a{} + 1\n", i + 1));
        }
        text.push_str(&format!("a{n} := 0\n"));
        text
    };
    let e = PolicySet::compile(&sources(&chain(1000)), RegoVersion::V1, "p/a0").unwrap_err().to_string();
    assert!(e.contains("chain of more than 200 rules"), "{e}");
    // A chain within the bound evaluates on a 2 MiB thread.
    let text = chain(150);
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || PolicySet::compile(&sources(&text), RegoVersion::V1, "p/a0").unwrap().eval(Value::new_object()))
        .unwrap();
    assert_eq!(h.join().unwrap().unwrap(), Value::from(150u64));
}

#[test]
fn long_operator_chains_load_up_to_a_bound() {
    let sum = |n: usize| format!("package p\n\nimport rego.v1\n\nx := {}\n", vec!["1"; n].join(" +\n\t"));
    // 100 terms: fine, and evaluated on a 2 MiB stack.
    let text = sum(100);
    let h = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || PolicySet::compile(&sources(&text), RegoVersion::V1, "p/x").unwrap().eval(Value::new_object()))
        .unwrap();
    assert_eq!(h.join().unwrap().unwrap(), Value::from(100u64));
    // 2000 terms: refused with the reason, not a crash.
    let e = PolicySet::compile(&sources(&sum(2000)), RegoVersion::V1, "p/x").unwrap_err().to_string();
    assert!(e.contains("nested too deeply"), "{e}");
}

#[test]
fn time_budget_stops_a_runaway_evaluation() {
    let text = "package p\nimport rego.v1\nx := count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); i != j])\n";
    let opts = LoadOptions { eval_timeout: Some(Duration::from_millis(200)), ..LoadOptions::new(RegoVersion::V1, "p/y") };
    let p = PolicySet::compile_with(&sources(text), &opts).unwrap();
    let t = Instant::now();
    let r = p.query("data.p.x", None);
    assert!(matches!(r, Err(EvalError::Limit(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(p.stats().limits.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The thread's engine is clean afterwards.
    assert_eq!(p.query("data.p.y", None), Ok(None));
}

#[test]
fn refused_builtins_and_unknown_functions_fail_at_load() {
    for (src, want) in [
        ("package p\nimport rego.v1\nx := http.send({\"method\": \"get\", \"url\": \"http://x\"})\n", "p.rego:3:6: http.send is not supported by sluice"),
        ("package p\nimport rego.v1\nx := graphql.is_valid(\"q\", \"s\")\n", "graphql.is_valid is not supported by sluice"),
        ("package p\nimport rego.v1\nx := no.such_fn(1)\n", "p.rego:3:6: rego_type_error: undefined function no.such_fn"),
    ] {
        let e = PolicySet::compile(&sources(src), RegoVersion::V1, "p/x").unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    // User functions, imported packages and sluice's builtins are known.
    let ok = "package p\nimport rego.v1\nf(x) := x + 1\nx := [f(1), io.jwt.decode(\"a.b.c\"), crypto.sha256(\"a\")]\n";
    PolicySet::compile(&sources(ok), RegoVersion::V1, "p/x").unwrap();
}

/// xorshift64*: a small deterministic generator for the fuzz loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "", "a", "é", "{", "}", "[", "]", ".", "/", "*", "?", "\\", "\"", "%", "0", "-1", "1e400", "10.0.0.0/8",
            "::1", "urn:foo:", "eyJhbGciOiJIUzI1NiJ9", "\u{0}", "💥", "T", "2024-01-01T00:00:00Z", "1h", "%s", ",",
        ];
        (0..self.below(5)).map(|_| PIECES[self.below(PIECES.len() as u64) as usize]).collect()
    }
    fn json(&mut self, depth: u32) -> serde_json::Value {
        use serde_json::Value as J;
        match self.below(if depth == 0 { 4 } else { 7 }) {
            0 => J::Null,
            1 => J::Bool(self.below(2) == 0),
            2 => serde_json::json!([-1.5, 0, 1, 3, 1e300, -9007199254740993i64])[self.below(6) as usize].clone(),
            3 => J::String(self.string()),
            4 | 5 => J::Array((0..self.below(4)).map(|_| self.json(depth - 1)).collect()),
            _ => J::Object((0..self.below(4)).map(|_| (["a", "b", "c", "x"][self.below(4) as usize].to_string(), self.json(depth - 1))).collect()),
        }
    }
}

/// A policy calling builtins of every family on input-controlled arguments.
const FAMILIES: &str = r#"package fuzz

import rego.v1

a := input.a
b := input.b
c := input.c

f_strings := [concat(a, b), sprintf(a, [b]), strings.count(a, b), split(a, b), substring(a, b, c), indexof(a, b), trim(a, b), replace(a, b, c), strings.replace_n(a, b), format_int(a, b), upper(a), strings.split_n(a, b, c), strings.reverse(a)]
f_regex := [regex.match(a, b), regex.split(a, b), regex.find_n(a, b, c), regex.template_match(a, b, "{", "}"), glob.match(a, [b], c)]
f_numbers := [a + b, a * b, a / b, a % b, abs(a), round(a), numbers.range(a, b), to_number(a), sum(a), max(a), bits.lsh(a, b)]
f_collections := [count(a), array.slice(a, b, c), array.concat(a, b), array.flatten(a), object.get(a, b, c), object.union(a, b), object.subset(a, b), object.remove(a, b), json.patch(a, b), union(a), intersection(a), sort(a), walk(a)]
f_encoding := [json.unmarshal(a), json.marshal(a), base64.decode(a), base64url.decode(a), hex.decode(a), urlquery.decode(a), urlquery.encode_object(a), yaml.unmarshal(a), json.is_valid(a)]
f_time := [time.parse_rfc3339_ns(a), time.parse_duration_ns(a), time.date(a), time.add_date(a, b, c, 1), time.format(a), time.diff(a, b)]
f_net := [net.cidr_contains(a, b), net.cidr_intersects(a, b), net.cidr_merge(a), net.cidr_contains_matches(a, b), net.cidr_is_valid(a), net.cidr_expand(a)]
f_crypto := [crypto.sha256(a), crypto.md5(a), crypto.hmac.sha256(a, b), crypto.hmac.equal(a, b)]
f_jwt := [io.jwt.decode(a), io.jwt.verify_hs256(a, b), io.jwt.decode_verify(a, b), io.jwt.verify_rs256(a, b)]
f_misc := [units.parse(a), units.parse_bytes(a), semver.compare(a, b), semver.is_valid(a), uuid.parse(a), type_name(a), is_string(a)]

check := crypto.md5(a)
"#;

#[test]
fn fuzzed_inputs_never_let_a_panic_escape() {
    let guide = PolicySet::compile(
        &sluice_authz::policy::Sources::read(&[fixture("guide_v0.rego")]).unwrap(),
        RegoVersion::Auto,
        "envoy/authz/allow",
    )
    .unwrap();
    let fam = PolicySet::compile(&sources(FAMILIES), RegoVersion::V1, "fuzz/check").unwrap();
    let families = ["strings", "regex", "numbers", "collections", "encoding", "time", "net", "crypto", "jwt", "misc"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut n = 0;
    while n < 1000 && started.elapsed() < Duration::from_secs(60) {
        let mut input = serde_json::Map::new();
        for k in ["a", "b", "c"] {
            input.insert(k.into(), rng.json(3));
        }
        let input = Value::from(serde_json::Value::Object(input));
        // Whatever the answer, the call returns (a panic would abort the test).
        for f in families {
            let _ = fam.query(&format!("data.fuzz.f_{f}"), Some(input.clone()));
        }
        let _ = guide.eval(input);
        n += 1;
    }
    assert!(n >= 300, "only {n} inputs in the time bound");
    // Panics inside regorus builtins are caught and counted; each is listed by the report.
    let caught = fam.stats().panics.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{n} fuzzed inputs; {caught} evaluations panicked inside the engine and were isolated");
    // After the storm the engine still answers a known input correctly.
    let input = Value::from(serde_json::json!({"a": "dummy", "b": "", "c": 1}));
    assert_eq!(fam.eval(input).unwrap(), Value::from("275876e34cf609db118f3d84b799a790"));
}

#[tokio::test]
async fn fuzzed_check_requests_get_answers() {
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let mut rng = Rng(42);
    let started = Instant::now();
    for i in 0..300 {
        assert!(started.elapsed() < Duration::from_secs(60));
        let method = ["GET", "POST", "", "\u{0}", "get"][rng.below(5) as usize];
        let body = serde_json::to_string(&rng.json(3)).unwrap();
        let mut req = check_request(method, "https", &rng.string(), &[("content-type", "application/json")]);
        if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            http.body = if rng.below(3) == 0 { "{\"truncated\": ".into() } else { body };
        }
        // Any answer is fine (an error for an unparsable body); the server must stay up.
        let _ = check(&mut c, req).await;
        let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap_or_else(|e| panic!("after {i}: {e}"));
        assert_eq!(r.status.unwrap().code, 0);
    }
    assert_eq!(h.authorizer().failed_decisions().0, 0);
    h.shutdown().await;
}
