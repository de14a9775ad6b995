//! The bytecode VM (regorus RVM) path must give exactly the interpreter's decisions: every
//! fixture policy, and a set of policies with the constructs where the two engines could
//! differ (conflicts, errors, `else`, partial rules, `with`, builtins), over many inputs.

mod common;

use common::*;
use regorus::Value;
use sluice_authz::input::build_input;
use sluice_authz::{PolicySet, RegoVersion};

fn inputs() -> Vec<Value> {
    let mut v = Vec::new();
    for (m, s) in [("GET", "http"), ("POST", "http"), ("POST", "https"), ("PUT", "https"), ("DELETE", "http")] {
        for path in ["/", "/service/1", "/people?x=1&x=2", "/admin/a%20b"] {
            for case in [
                "true", "false", "allow-object", "deny-object", "deny-default", "bad-status", "no-allowed", "a-string", "nope",
            ] {
                let req = check_request(m, s, path, &[("x-case", case), ("x-n", "7"), ("authorization", "Bearer abc")]);
                v.push(build_input(&req).unwrap());
            }
        }
    }
    v.push(build_input(&Default::default()).unwrap());
    v.push(Value::new_object());
    v.push(Value::from_json_str(r#"{"attributes":{"request":{"http":{"method":1,"headers":[]}}}}"#).unwrap());
    v.push(Value::from_json_str(r#"{"x":"abc","n":"12","list":[1,2,3]}"#).unwrap());
    v.push(Value::from_json_str(r#"{"x":3,"n":12,"list":"no"}"#).unwrap());
    v
}

fn compare(set: &PolicySet, what: &str) -> usize {
    let mismatches = mismatches(set, what);
    assert!(mismatches.1.is_empty(), "{}", mismatches.1.join("\n"));
    mismatches.0
}

fn mismatches(set: &PolicySet, what: &str) -> (usize, Vec<String>) {
    let mut defined = 0;
    let mut bad = Vec::new();
    for (i, input) in inputs().into_iter().enumerate() {
        let fast = set.eval(input.clone());
        let slow = set.eval_interpreted(input.clone());
        if fast != slow {
            bad.push(format!("{what}: input #{i} {}: bytecode {fast:?}, interpreter {slow:?}", input.to_json_str().unwrap_or_default().replace('\n', "")));
        }
        // Twice on the same thread: no state may leak from one evaluation to the next.
        let again = set.eval(input);
        if again != slow {
            bad.push(format!("{what}: input #{i}, second evaluation: {again:?} vs {slow:?}"));
        }
        defined += usize::from(slow.is_ok());
    }
    (defined, bad)
}

#[test]
fn fixtures_agree() {
    for (files, path) in [
        (vec!["guide_v0.rego"], "envoy/authz/allow"),
        (vec!["guide_v1.rego"], "envoy/authz/allow"),
        (vec!["shapes.rego", "shapes.json"], "envoy/authz/allow"),
    ] {
        let paths: Vec<_> = files.iter().map(|f| fixture(f)).collect();
        let set = PolicySet::load(&paths, RegoVersion::Auto, path).unwrap();
        assert!(set.uses_bytecode(), "{files:?}: expected the bytecode path to be used");
        let defined = compare(&set, &format!("{files:?}"));
        assert!(defined > 10, "{files:?}: too few defined decisions ({defined}) to compare");
    }
    let guide = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guide/policy.rego");
    let set = PolicySet::load(&[guide], RegoVersion::Auto, "envoy/authz/allow").unwrap();
    assert!(set.uses_bytecode());
    compare(&set, "examples/guide/policy.rego");
}

#[test]
fn tricky_policies_agree() {
    let dir = TempDir::new("bytecode");
    let policies = [
        // Conflicting complete rules: the interpreter reports an error.
        "package t\nimport rego.v1\nallow := 1 if input.x\nallow := 2 if input.n\n",
        // A conflict in a helper rule, negated.
        "package t\nimport rego.v1\nhelper := 1 if input.x\nhelper := 2 if input.n\ndefault allow := false\nallow if not helper\n",
        // Type errors in arithmetic and builtins.
        "package t\nimport rego.v1\ndefault allow := false\nallow if input.n + 1 > 3\n",
        "package t\nimport rego.v1\ndefault allow := false\nallow if to_number(input.n) > 3\n",
        "package t\nimport rego.v1\ndefault allow := false\nallow if count(input.list) > 2\n",
        "package t\nimport rego.v1\nallow := startswith(input.x, \"a\")\n",
        // else chains, partial sets and objects, comprehensions.
        "package t\nimport rego.v1\nallow := \"a\" if input.x == \"abc\"\nelse := \"b\" if input.n\nelse := \"c\"\n",
        "package t\nimport rego.v1\nreasons contains r if { some r in input.list; r > 1 }\nallow := {\"allowed\": count(reasons) == 0, \"body\": sprintf(\"%v\", [reasons])}\n",
        "package t\nimport rego.v1\nm[k] := v if { some k, v in input.attributes.request.http.headers }\nallow := object.get(m, \":method\", \"none\")\n",
        "package t\nimport rego.v1\nallow := [h | some h, _ in input.attributes.request.http.headers; startswith(h, \"x-\")]\n",
        "package t\nimport rego.v1\nallow := {\"allowed\": true, \"headers\": {\"x-path\": concat(\"/\", input.parsed_path)}} if regex.match(`^/service`, input.attributes.request.http.path)\n",
        // with (not supported by the bytecode compiler: interpreter only).
        "package t\nimport rego.v1\np if input.x == 1\nallow if p with input.x as 1\n",
        // Undefined unless a header is present.
        "package t\nallow { input.attributes.request.http.headers.authorization == \"Bearer abc\" }\n",
        // Functions, including a conflicting one.
        "package t\nimport rego.v1\nf(x) := 1 if x == \"GET\"\nf(x) := 2 if startswith(x, \"G\")\nallow := f(input.attributes.request.http.method)\n",
    ];
    let mut all = Vec::new();
    for (i, text) in policies.iter().enumerate() {
        let p = dir.write(&format!("p{i}.rego"), text);
        let set = match PolicySet::load(&[p], RegoVersion::Auto, "t/allow") {
            Ok(s) => s,
            Err(e) => panic!("policy {i} does not load: {e:#}"),
        };
        // The gate: constructs that could make the two engines differ keep the interpreter.
        let expect_bytecode = matches!(i, 0 | 12);
        let expect_interpreter = matches!(i, 1 | 2 | 3 | 4 | 5 | 7 | 11 | 13);
        if expect_bytecode {
            assert!(set.uses_bytecode(), "policy {i} should use the bytecode VM");
        }
        if expect_interpreter {
            assert!(!set.uses_bytecode(), "policy {i} should use the interpreter only");
        }
        all.extend(mismatches(&set, &format!("policy {i}")).1.into_iter().take(3));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}
