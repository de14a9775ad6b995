//! A quick latency measurement (ignored by default; run with
//! `cargo test -p sluice-authz --release --test latency -- --ignored --nocapture`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_authz::{AuthzServer, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn decision_latency() {
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let req = check_request("GET", "http", "/service/1?x=1", &[("user-agent", "curl/8"), ("accept", "*/*")]);
    let a = h.authorizer().clone();

    let n = 20_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(sluice_authz::input::build_input(&req).unwrap());
    }
    let build = t.elapsed() / n;

    let set = sluice_authz::PolicySet::load(&[fixture("guide_v0.rego")], Default::default(), "envoy/authz/allow").unwrap();
    let input = sluice_authz::input::build_input(&req).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(set.eval(input.clone()).unwrap());
    }
    let eval = t.elapsed() / n;

    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(a.check(&req).unwrap());
    }
    let inproc = t.elapsed() / n;

    let mut c = client(h.grpc_addr()).await;
    let m = 5_000u32;
    let t = Instant::now();
    for _ in 0..m {
        check(&mut c, req.clone()).await.unwrap();
    }
    let grpc = t.elapsed() / m;
    eprintln!(
        "input build {:.2} µs, eval {:.2} µs, in-process check {:.2} µs, gRPC round trip {:.2} µs",
        us(build),
        us(eval),
        us(inproc),
        us(grpc)
    );
    h.shutdown().await;
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}
