//! `sluice authz eval|test|check|fmt|version` and bundles on the command line.

mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Parser;
use common::TempDir;
use sluice_authz::tools;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    Eval(tools::EvalArgs),
    Test(tools::TestArgs),
    Check(tools::CheckArgs),
}

fn run(args: &[&str]) -> (ExitCode, String) {
    let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let code = match cli.cmd {
        Sub::Eval(a) => tools::eval(&a, &mut out),
        Sub::Test(a) => tools::test(&a, &mut out),
        Sub::Check(a) => tools::check(&a, &mut out),
    }
    .unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
    (code, String::from_utf8(out).unwrap())
}

const POLICY: &str = "package app\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user == data.admins[_]\n\ntest_admin if allow with input as {\"user\": \"alice\"}\n\ntest_guest if not allow with input as {\"user\": \"bob\"}\n\ntest_broken if allow with input as {\"user\": \"bob\"}\n";

#[test]
fn eval_formats_and_fail_flags() {
    let d = TempDir::new("eval");
    let p = d.write("policy.rego", POLICY);
    let data = d.write("data.json", r#"{"admins": ["alice"]}"#);
    let input = d.write("input.json", r#"{"user": "alice"}"#);
    let (p, data, input) = (p.to_str().unwrap(), data.to_str().unwrap(), input.to_str().unwrap());
    let (code, out) = run(&["eval", "-d", p, "-d", data, "-i", input, "data.app.allow"]);
    assert_eq!(code, ExitCode::SUCCESS);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"][0]["expressions"][0]["value"], serde_json::json!(true), "{out}");
    assert_eq!(v["result"][0]["expressions"][0]["text"], "data.app.allow", "{out}");
    let (_, out) = run(&["eval", "-d", p, "-d", data, "--format", "raw", "concat(\",\", data.admins)"]);
    assert_eq!(out, "alice\n");
    let (_, out) = run(&["eval", "-f", "bindings", "x := 1 + 1"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!([{"x": 2}]));
    let (code, out) = run(&["eval", "--fail", "-d", p, "data.app.nothing"]);
    assert_eq!((code, out.trim()), (ExitCode::from(1), "{}"));
    let (code, _) = run(&["eval", "--fail-defined", "-d", p, "-d", data, "-i", input, "data.app.allow"]);
    assert_eq!(code, ExitCode::from(1));
    let (code, out) = run(&["eval", "--strict-builtin-errors", "1/0"]);
    assert_eq!(code, ExitCode::from(1));
    assert!(out.contains("errors"), "{out}");
    let (code, out) = run(&["eval", "-f", "pretty", "1/0"]);
    assert_eq!((code, out.trim()), (ExitCode::SUCCESS, "undefined"));
}

#[test]
fn test_command_reports_and_exit_codes() {
    let d = TempDir::new("test");
    d.write("policy.rego", POLICY);
    d.write("data.json", r#"{"admins": ["alice"]}"#);
    let dir = d.0.to_str().unwrap();
    let (code, out) = run(&["test", dir]);
    assert_eq!(code, ExitCode::from(2), "{out}");
    assert!(out.contains("data.app.test_broken: FAIL"), "{out}");
    assert!(out.contains("PASS: 2/3") && out.contains("FAIL: 1/3"), "{out}");
    let (code, out) = run(&["test", "--run", "test_(admin|guest)", "-v", dir]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("data.app.test_admin: PASS") && out.contains("PASS: 2/2"), "{out}");
    let (_, out) = run(&["test", "--format", "json", dir]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[2]["name"], "test_broken");
    assert_eq!(v[2]["fail"], true);
    let (_, out) = run(&["test", "--coverage", dir]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["coverage"].as_f64().unwrap() > 0.0, "{out}");
}

#[test]
fn check_reports_errors() {
    let d = TempDir::new("check");
    let good = d.write("good.rego", POLICY);
    let bad = d.write("bad.rego", "package bad\n\nimport rego.v1\n\nx := nope(1)\n");
    assert_eq!(run(&["check", good.to_str().unwrap()]).0, ExitCode::SUCCESS);
    let (code, out) = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(1));
    assert!(out.contains("bad.rego:5:6") && out.contains("undefined function nope"), "{out}");
}

#[test]
fn eval_with_a_tar_gz_bundle() {
    let d = TempDir::new("bundle-eval");
    let mut files = BTreeMap::new();
    files.insert(".manifest".to_string(), br#"{"revision": "7", "roots": ["app"], "rego_version": 0}"#.to_vec());
    files.insert("app/policy.rego".to_string(), b"package app\nallow { contains(input.path, \"/ok\") }\n".to_vec());
    files.insert("app/data.json".to_string(), br#"{"limit": 3}"#.to_vec());
    let tgz = d.0.join("bundle.tar.gz");
    std::fs::write(&tgz, sluice_authz::bundle::tar_gz(&files).unwrap()).unwrap();
    let (_, out) = run(&["eval", "-b", tgz.to_str().unwrap(), "-f", "raw", "[data.app.allow, data.app.limit] with input as {\"path\": \"/ok/1\"}"]);
    assert_eq!(out.trim(), "[true,3]");
}
