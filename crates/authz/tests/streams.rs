//! Many concurrent Check streams on one HTTP/2 connection (the request streams are driven
//! inside the connection's task): every one gets its own, correct answer; shutdown with a
//! connection still open finishes in bounded time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_authz::{AuthzServer, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_one_connection() {
    let h = AuthzServer::start(Config::loopback(vec![fixture("guide_v0.rego")])).await.unwrap();
    let c = client(h.grpc_addr()).await;
    for round in 0..3 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..300u32 {
            let mut c = c.clone();
            set.spawn(async move {
                // GET: allowed with the header; POST over http: denied; POST over https: allowed.
                let (method, scheme) = [("GET", "http"), ("POST", "http"), ("POST", "https")][(i % 3) as usize];
                let req = check_request(method, scheme, &format!("/item/{i}"), &[("x-i", &i.to_string())]);
                let r = tokio::time::timeout(Duration::from_secs(10), check(&mut c, req)).await.expect("answer in time").unwrap();
                (i, r)
            });
        }
        let mut ids = std::collections::HashSet::new();
        let mut n = 0;
        while let Some(res) = set.join_next().await {
            let (i, r) = res.unwrap();
            let code = r.status.as_ref().unwrap().code;
            if i % 3 == 1 {
                assert_eq!(code, 7, "round {round}, request {i}");
                assert!(r.http_response.is_none());
            } else {
                assert_eq!(code, 0, "round {round}, request {i}");
                assert_eq!(ok_headers(&r), vec![("x-current-user".to_string(), "OPA".to_string())]);
            }
            assert!(ids.insert(decision_id(&r)), "decision ids must be unique");
            n += 1;
        }
        assert_eq!(n, 300);
    }
    // The connection stays open (c is alive) while the server shuts down.
    let t = Instant::now();
    h.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(8), "shutdown took {:?}", t.elapsed());
    drop(c);
}

#[tokio::test]
async fn messages_larger_than_the_codec_buffer() {
    // The codec starts with a 1000-byte buffer; bigger requests and responses must still work.
    let dir = TempDir::new("big");
    let p = dir.write(
        "p.rego",
        "package envoy.authz\nimport rego.v1\nallow := {\"allowed\": true, \"headers\": {\"x-echo\": input.attributes.request.http.headers[\"x-big\"]}, \"dynamic_metadata\": {\"body\": input.parsed_body}}\n",
    );
    let h = AuthzServer::start(Config::loopback(vec![p])).await.unwrap();
    let mut c = client(h.grpc_addr()).await;
    let big = "b".repeat(20_000);
    let mut req = check_request("POST", "https", "/", &[("x-big", &big), ("content-type", "application/json")]);
    let body = format!("{{\"k\":\"{}\"}}", "v".repeat(5_000));
    req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().body = body;
    let r = check(&mut c, req).await.unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    assert_eq!(ok_headers(&r), vec![("x-echo".to_string(), big)]);
    let md = &r.dynamic_metadata.as_ref().unwrap().fields;
    assert!(format!("{:?}", md["body"]).contains(&"v".repeat(5_000)));
    h.shutdown().await;
}
