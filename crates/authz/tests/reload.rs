//! Broken policies at start and on reload; reloads under continuous load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sluice_authz::{AuthzServer, Config};

const V0: &str = "package envoy.authz\n\ndefault allow = false\n\nallow = {\"allowed\": true, \"headers\": {\"x-gen\": \"one\"}} {\n\tinput.attributes.request.http.method == \"GET\"\n}\n";
const V1: &str = "package envoy.authz\n\ndefault allow := false\n\nallow := {\"allowed\": true, \"headers\": {\"x-gen\": \"two\"}} if {\n\tinput.attributes.request.http.method == \"GET\"\n}\n";
const BROKEN: &str = "package envoy.authz\n\ndefault allow = false\n\nallow {\n\tinput.attributes.request.http.method == \"GET\" )\n}\n";

fn gen_header(r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> String {
    ok_headers(r).into_iter().find(|(k, _)| k == "x-gen").map(|(_, v)| v).unwrap_or_default()
}

#[tokio::test]
async fn broken_policy_at_start_names_file_and_line() {
    let e = AuthzServer::start(Config::loopback(vec![fixture("broken.rego")])).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("broken.rego:6:"), "{msg}");
    // The CLI entry point gives the same error (the binary prints it and exits 1).
    let e = sluice_authz::Authorizer::new(&Config::loopback(vec![fixture("broken.rego")])).unwrap_err();
    assert!(format!("{e:#}").contains("broken.rego:6:"));
    // A mistake the interpreter would only meet at evaluation is found at load too.
    let e = AuthzServer::start(Config::loopback(vec![fixture("unknown_function.rego")])).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("unknown_function.rego:7:"), "{msg}");
    // A missing file is an error too.
    assert!(AuthzServer::start(Config::loopback(vec![fixture("nope.rego")])).await.is_err());
}

#[tokio::test]
async fn broken_reload_keeps_the_old_policy() {
    let dir = TempDir::new("reload-broken");
    let p = dir.write("policy.rego", V0);
    let cfg = Config { watch_interval: Some(Duration::from_millis(50)), ..Config::loopback(vec![dir.0.clone()]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    assert_eq!(gen_header(&r), "one");
    let g0 = h.authorizer().generation();

    dir.write("policy.rego", BROKEN);
    // A direct reload reports the error with file:line…
    // (or says "nothing new" when the watcher already tried this exact content).
    match h.authorizer().reload() {
        Err(e) => assert!(format!("{e:#}").contains("policy.rego:6:"), "{e:#}"),
        Ok(swapped) => assert!(!swapped, "a broken policy must not be swapped in"),
    }
    // …and after the watcher has seen it too, the old policy still answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.authorizer().generation(), g0);
    let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    assert_eq!(gen_header(&r), "one");

    // A fixed file is picked up by the watcher (bounded wait).
    dir.write("policy.rego", V1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.authorizer().generation() == g0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = check(&mut c, check_request("GET", "http", "/", &[])).await.unwrap();
    assert_eq!(gen_header(&r), "two");
    drop(p);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_has_no_errors() {
    let dir = TempDir::new("reload-load");
    dir.write("policy.rego", V0);
    let cfg = Config { watch_interval: None, ..Config::loopback(vec![dir.0.clone()]) };
    let h = AuthzServer::start(cfg).await.unwrap();
    let addr = h.grpc_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let seen_two = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, total, seen_two) = (stop.clone(), total.clone(), seen_two.clone());
        clients.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && total.load(Ordering::Relaxed) < 20_000 {
                match check(&mut c, check_request("GET", "http", "/", &[])).await {
                    Ok(r) if r.status.as_ref().map(|s| s.code) == Some(0) => {
                        if gen_header(&r) == "two" {
                            seen_two.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => errors.push(format!("{other:?}")),
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
            errors
        }));
    }
    // Swap policies back and forth while the clients run.
    let a = h.authorizer().clone();
    let mut swaps = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        dir.write("policy.rego", if swaps % 2 == 0 { V1 } else { V0 });
        let a2 = a.clone();
        if tokio::task::spawn_blocking(move || a2.reload()).await.unwrap().unwrap() {
            swaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.await.unwrap());
    }
    let total = total.load(Ordering::Relaxed);
    assert!(errors.is_empty(), "{} errors of {total}: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(swaps >= 5, "only {swaps} reloads");
    assert!(total > 100, "only {total} checks");
    eprintln!("{total} checks, {swaps} reloads, 0 errors");
    assert!(seen_two.load(Ordering::Relaxed) > 0, "the new policy never answered");
    assert_eq!(a.reloads(), swaps);
    h.shutdown().await;
}
